"""A spreadsheet whose rows are generation requests, end to end: the preview prices them, one start
imports the products and, once they are in, starts ONE generation job on ONE credit hold; errors.csv
reports import and generation failures together. Too few credits: 402 before anything happens."""

from __future__ import annotations

import csv
import io
from typing import Any

from tests import xlsx_files
from tests.catalog_helpers import problem
from tests.csv_import_helpers import Api
from tests.engines import ScriptedEngine
from tests.integration.test_csv_import import ImageServer, images  # noqa: F401  (the image server fixture)
from tests.platforms import available, grant, install

HEADER = ["Name", "SKU", "Price", "Image", "Style", "Prompt", "Variants", "Base image"]


def _sheet(server: ImageServer) -> list[list[str]]:
    u = server.url
    return [
        HEADER,
        ["Mug", "M-1", "10", u("/img/1.png"), "studio", "on an oak table", "2", ""],  # row 2: 2 images
        ["Cup", "C-1", "5", u("/img/2.png"), "", "", "", ""],  # row 3: no generation cells
        ["", "N-1", "5", "", "studio", "", "", ""],  # row 4: no name, not imported
        ["Bowl", "B-1", "3", "", "lifestyle", "", "1", u("/missing.png")],  # row 5: base image 404
        ["Plate", "P-1", "4", u("/img/3.png"), "minimalist", "FAIL please", "", ""],  # row 6: the engine fails
        ["Jug", "J-1", "6", "", "no-such-style", "", "", ""],  # row 7: unknown style
    ]


def _csv(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue().encode()


def _unit(stack: Any, client_id: str) -> int:
    response = stack.client("credits_api").get("/prices", headers=stack.headers(client_id))
    assert response.status_code == 200, response.json
    return int(response.json["operations"]["generate_image"]["1K"])


def _jobs(stack: Any, client_id: str) -> list[dict[str, Any]]:
    ref = stack.platform.db.collection("clients").document(client_id).collection("jobs")
    return [snapshot.to_dict() for snapshot in ref.stream()]


def _holds(stack: Any, client_id: str) -> list[dict[str, Any]]:
    history = stack.client("credits_api").get("/history?limit=100", headers=stack.headers(client_id))
    assert history.status_code == 200, history.json
    return [entry for entry in history.json["items"] if entry["type"] == "reserve"]


def test_rows_generate_in_one_job_on_one_hold_with_one_report(
    stack: Any,
    client_id: str,
    images: ImageServer,  # noqa: F811
) -> None:
    engine = ScriptedEngine()
    install(stack, engine=engine)
    api = Api(stack, client_id)
    unit = _unit(stack, client_id)
    draft = api.draft(_csv(_sheet(images)))
    mapping = draft["mapping"]
    assert {field: mapping[field] for field in ("style", "prompt", "variants", "base_image_url")} == {
        "style": "Style",
        "prompt": "Prompt",
        "variants": "Variants",
        "base_image_url": "Base image",
    }
    assert mapping["image_urls"] == ["Image"]

    # The merchant picks the defaults; the preview prices the rows that generate before anything is charged.
    patched = api.patch(f"/imports/{draft['id']}", {"generation": {"rows": "with_settings", "aspect_ratio": "4:5"}})
    assert patched.status_code == 200, patched.json
    plan = patched.json["preview"]["generation"]
    assert (plan["rows"], plan["images"], plan["cost"]) == (3, 4, 4 * unit)  # rows 2 (x2), 5, 6
    assert plan["unit_prices"] == {"1K": unit}
    assert plan["skipped"] == [{"row": 7, "reason": "unknown style 'no-such-style'"}]

    # Too few credits: 402 before anything is imported or reserved.
    grant(stack, client_id, 4 * unit - 1)
    refused = problem(api.post(f"/imports/{draft['id']}/generate"), 402, "insufficient_credits")
    assert refused["required"] == 4 * unit
    assert api.import_(draft["id"])["status"] == "draft"
    assert available(stack, client_id) == (4 * unit - 1, 0)
    assert stack.dispatcher.history == [] and api.products() == [] and _jobs(stack, client_id) == []

    grant(stack, client_id, 10 * unit)
    started = api.post(f"/imports/{draft['id']}/generate")
    assert started.status_code == 202, started.json
    assert started.json["status"] == "queued"
    assert started.json["generation_job"]["status"] == "reserved"
    assert started.json["generation_job"]["amount"] == 4 * unit
    assert available(stack, client_id) == (14 * unit - 1 - 4 * unit, 4 * unit)  # reserved now, once
    again = api.post(f"/imports/{draft['id']}/generate")  # a double click: the same import, the same hold
    assert again.status_code == 202, again.json
    assert available(stack, client_id) == (10 * unit - 1, 4 * unit)

    stack.run_tasks()
    done = api.import_(draft["id"])
    assert done["status"] == "completed"
    run = done["generation_job"]
    assert run["status"] == "started" and run["items"] == 2 and run["rows"] == [2, 6]
    jobs = _jobs(stack, client_id)
    assert len(jobs) == 1 and jobs[0]["id"] == run["job_id"]
    assert jobs[0]["settlement"]["captured"] == 2 * unit and jobs[0]["settlement"]["released"] == 2 * unit
    assert len(_holds(stack, client_id)) == 1  # one credit hold for the whole import
    # Row 2 made 2 images (charged); row 6's failed and the rest of the hold came back.
    assert available(stack, client_id) == (14 * unit - 1 - 2 * unit, 0)
    mug = next(p for p in api.products() if p["sku"] == "M-1")
    generated = [a for a in api.assets() if a["kind"] == "generated"]
    assert len(generated) == 2 and {a["product_id"] for a in generated} == {mug["id"]}
    mug_requests = engine.calls_with("on an oak table")
    assert len(mug_requests) == 2 and all(r.aspect_ratio == "4:5" and r.style == "studio" for r in mug_requests)

    report = [(r["row"], r["code"]) for r in api.report(draft["id"])]
    assert ("4", "missing_name") in report  # an import failure
    assert ("5", "generation_skipped") in report  # its base image could not be imported
    assert any(row == "6" and code not in ("missing_name", "generation_skipped") for row, code in report)  # engine
    assert ("7", "generation_skipped") in report
    assert [int(row) for row, _ in report] == sorted(int(row) for row, _ in report)  # by row, import and generation


def test_a_workbook_with_generation_columns_prices_and_starts(
    stack: Any,
    client_id: str,
    images: ImageServer,  # noqa: F811
) -> None:
    api = Api(stack, client_id)
    unit = _unit(stack, client_id)
    rows: list[list[Any]] = [
        ["Name", "SKU", "Image", "Style", "Image size", "Variants"],
        ["Mug", "M-1", images.url("/img/1.png"), "studio", "1K", 1],
        ["Cup", "C-1", images.url("/img/2.png"), None, None, None],
    ]
    draft = api.draft(xlsx_files.workbook(rows), generation={"rows": "all", "style": "flatlay"})
    plan = draft["preview"]["generation"]
    assert (plan["rows"], plan["images"], plan["cost"]) == (2, 2, 2 * unit)
    grant(stack, client_id, 2 * unit)
    started = api.post(f"/imports/{draft['id']}/generate")
    assert started.status_code == 202, started.json
    stack.run_tasks()
    done = api.import_(draft["id"])
    assert done["generation_job"]["status"] == "started" and done["generation_job"]["rows"] == [2, 3]
    assert available(stack, client_id) == (0, 0)
    styles = sorted(a["metadata"]["style"] for a in _generated_assets(stack, client_id))
    assert styles == ["flatlay", "studio"]  # the row's own style, and the default for the empty cell


def test_generation_that_cannot_start_changes_nothing(stack: Any, client_id: str, images: ImageServer) -> None:  # noqa: F811
    api = Api(stack, client_id)
    grant(stack, client_id, 1000)
    plain = api.draft(_csv([["Name", "SKU"], ["Mug", "M-1"]]))
    problem(api.post(f"/imports/{plain['id']}/generate"), 422, "nothing_to_generate")  # no row asks for images
    no_rows = api.patch(f"/imports/{plain['id']}", {"generation": {"rows": "with_settings"}})
    assert no_rows.json["preview"]["generation"]["rows"] == 0
    problem(api.post(f"/imports/{plain['id']}/generate"), 422, "nothing_to_generate")
    problem(api.patch(f"/imports/{plain['id']}", {"generation": {"style": "Not A Style"}}), 422, "validation_failed")
    assert api.import_(plain["id"])["status"] == "draft"
    assert api.products() == [] and _jobs(stack, client_id) == []
    assert available(stack, client_id) == (1000, 0)
    # Started without generation: generating afterwards is refused.
    api.start(plain["id"])
    problem(api.post(f"/imports/{plain['id']}/generate"), 409, "import_not_editable")


def _generated_assets(stack: Any, client_id: str) -> list[dict[str, Any]]:
    ref = stack.platform.db.collection("clients").document(client_id).collection("assets")
    return [s.to_dict() for s in ref.stream() if (s.to_dict() or {}).get("kind") == "generated"]
