"""Excel workbooks end to end: uploaded like the frontend uploads a CSV, checked at completion, previewed,
a sheet chosen, imported by the chunk tasks; bad workbooks answered with a 4xx and nothing changed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tests import xlsx_files
from tests.catalog_helpers import problem
from tests.csv_import_helpers import XLSX, Api


def _products(api: Api) -> dict[str, dict[str, Any]]:
    return {p["sku"]: p for p in api.products()}


def _stored_products(stack: Any, client_id: str) -> int:
    return len(list(stack.platform.db.collection("clients").document(client_id).collection("products").stream()))


def _catalog() -> bytes:
    """Two sheets: a notes sheet first (as merchants keep them), the products on "Catalog"."""
    data = xlsx_files.workbook(
        [["Read me"], ["The products are on the next sheet."]],
        title="Notes",
        more_sheets={
            "Catalog": [
                ["Product Name", "SKU", "Price", "Category", "Added", "Total"],
                ["Mug", 123, 19.900000000000002, "Kitchen", datetime(2024, 3, 1), "=C2*2"],
                [],
                ["Cup", "C-1", 7, None, datetime(2024, 3, 2), None],
                ["Bowl", "B-1", "zwölf", None, None, None],
                ["Plate", "P-1", 12.5, "Dishes", None, None],
            ]
        },
    )
    # Category "Kitchen" merged over the Mug, the blank row and the Cup (rows 2-4 of "Catalog").
    return xlsx_files.rewrite(
        data,
        lambda name, body: (
            body.replace(b"</sheetData>", b'</sheetData><mergeCells count="1"><mergeCell ref="D2:D4"/></mergeCells>')
            if name == "xl/worksheets/sheet2.xml"
            else body
        ),
    )


def test_a_workbook_is_uploaded_previewed_and_imported(stack: Any, client_id: str) -> None:
    api = Api(stack, client_id)
    upload_id, completed = api.upload(_catalog(), "catalog.xlsx", XLSX)
    assert completed.status_code == 200, completed.json
    assert (completed.json["file_format"], completed.json["sheets"]) == ("xlsx", ["Notes", "Catalog"])

    # The first sheet is read unless another is chosen: it has no product names; the merchant picks "Catalog".
    first = problem(api.post("/imports", {"upload_id": upload_id}), 422, "validation_failed")
    assert first["errors"][0]["field"] == "mapping.name"
    created = api.post("/imports", {"upload_id": upload_id, "sheet": "Catalog"})
    assert created.status_code == 201, created.json
    draft = created.json
    preview = draft["preview"]
    assert (draft["sheet"], preview["format"], preview["sheet"], preview["sheets"]) == (
        "Catalog",
        "xlsx",
        "Catalog",
        ["Notes", "Catalog"],
    )
    assert preview["mapping"]["name"] == "Product Name" and preview["mapping"]["price"] == "Price"
    assert (preview["total_rows"], preview["importable_rows"]) == (4, 3)  # "zwölf" is no price
    assert [row["row_number"] for row in preview["sample"]] == [2, 4, 5, 6]
    assert preview["sample"][1]["values"]["category"] == "Kitchen"  # merged into row 4

    # A sheet that does not exist, an encoding for a workbook: 422, the draft as it was.
    problem(api.patch(f"/imports/{draft['id']}", {"sheet": "Nope"}), 422, "validation_failed")
    refused = problem(api.patch(f"/imports/{draft['id']}", {"encoding": "cp1252"}), 422, "validation_failed")
    assert refused["errors"][0]["field"] == "encoding"
    assert api.import_(draft["id"])["preview"] == preview

    api.start(draft["id"])
    stack.run_tasks()
    done = api.import_(draft["id"])
    assert done["status"] == "completed"
    assert (done["progress"]["created_products"], done["progress"]["failed_rows"]) == (3, 1)
    products = _products(api)
    assert set(products) == {"123", "C-1", "P-1"}
    assert (products["123"]["name"], products["123"]["price"], products["123"]["category"]) == (
        "Mug",
        "19.90",
        "Kitchen",
    )
    assert products["C-1"]["category"] == "Kitchen"
    assert products["P-1"]["price"] == "12.50"
    report = api.report(draft["id"])
    assert [(r["row"], r["code"]) for r in report] == [("5", "invalid_price")]


def test_bad_workbooks_are_refused_with_a_4xx_and_nothing_changes(stack: Any, client_id: str) -> None:
    api = Api(stack, client_id)
    small = xlsx_files.workbook([["Name", "SKU"], ["Mug", "M-1"]])

    # Macro-enabled and old workbooks: refused when the slot is asked for.
    for filename, content_type in (("p.xlsm", XLSX), ("p.xls", "application/vnd.ms-excel")):
        response = api.post(
            "/uploads", {"filename": filename, "content_type": content_type, "size_bytes": 10, "purpose": "csv_import"}
        )
        assert problem(response, 422, "validation_failed")["errors"][0]["field"] == "filename"

    # A zip bomb and an encrypted workbook: rejected at completion, nothing kept.
    for body, code in (
        (xlsx_files.bomb(small, size=8 * 1024 * 1024), "xlsx_too_large"),
        (xlsx_files.encrypted(small), "xlsx_unreadable"),
    ):
        upload_id, completed = api.upload(body, "p.xlsx", XLSX)
        problem(completed, 422, code)
        assert api.get(f"/uploads/{upload_id}").json["status"] == "rejected"
        problem(api.post("/imports", {"upload_id": upload_id}), 409)

    # 100,000 rows: the import's row limit, found while the sheet streams in.
    many = xlsx_files.workbook([["Name", "SKU"], *([f"P{n}", f"S{n}"] for n in range(100_000))], write_only=True)
    upload_id, completed = api.upload(many, "many.xlsx", XLSX)
    assert completed.status_code == 200, completed.json
    refused = problem(api.post("/imports", {"upload_id": upload_id}), 422, "csv_too_large")
    assert refused["limit"] == 50_000

    # Wrong columns: a mapping that names a column the sheet does not have.
    upload_id, completed = api.upload(small, "p.xlsx", XLSX)
    wrong = api.post("/imports", {"upload_id": upload_id, "mapping": {"name": "Title"}})
    assert problem(wrong, 422, "validation_failed")["errors"][0]["field"] == "mapping.name"

    assert api.products() == [] and _stored_products(stack, client_id) == 0
