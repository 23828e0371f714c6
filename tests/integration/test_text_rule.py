"""The text rule (shared/text.py) through the real functions on the emulator: free text with NUL,
bidi overrides, lone surrogates or other refused characters is a 422 ``validation_failed`` naming
the field and the character, and nothing is stored; a CSV row with such text is a ``bad_text`` row
error in the import's report. Tabs and newlines stay allowed where text is multi-line.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.catalog_helpers import problem
from tests.csv_import_helpers import Api
from tests.platforms import grant

HEBREW = "\u05e2\u05d1\u05e8\u05d9\u05ea"  # right-to-left text, with an RLM mark beside it below


def send(client: Any, method: str, path: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
    """``body`` as JSON with every non-ASCII character escaped: how a browser sends a lone surrogate."""
    data = json.dumps(body, ensure_ascii=True)
    return getattr(client, method)(path, data=data, content_type="application/json", headers=headers)


def refused(response: Any, field: str, code_point: str) -> dict[str, Any]:
    """A 422 whose one error is the text rule's, on ``field``, naming ``code_point``."""
    body = problem(response, 422, "validation_failed")
    [error] = body["errors"]
    assert (error["field"], error["type"]) == (field, "bad_text"), error
    assert error["message"].startswith(code_point), error
    assert "at character" in error["message"]
    return error


def products(catalog: Any, headers: dict[str, str]) -> list[dict[str, Any]]:
    listed = catalog.get("/products", headers=headers)
    assert listed.status_code == 200, listed.json
    return list(listed.json["items"])


# -- products -------------------------------------------------------------------------------------


def test_a_product_name_with_nul_is_refused_and_not_stored(catalog: Any, headers: dict[str, str]) -> None:
    error = refused(send(catalog, "post", "/products", {"name": "Mug\x00"}, headers), "name", "U+0000 (NULL)")
    assert "character 4" in error["message"]
    assert products(catalog, headers) == []


@pytest.mark.parametrize(
    ("field", "value", "code_point"),
    [
        ("description", "Nice \u202egpj.exe", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
        ("description", "broken \ud83d half", "U+D83D"),
        ("sku", "A\tB", "U+0009"),
        ("category", "Kitchen\u2067", "U+2067 (RIGHT-TO-LEFT ISOLATE)"),
        ("external_id", "\ufeffshop-1", "U+FEFF"),
    ],
)
def test_product_text_fields_follow_the_rule(
    catalog: Any, headers: dict[str, str], field: str, value: str, code_point: str
) -> None:
    refused(send(catalog, "post", "/products", {"name": "Mug", field: value}, headers), field, code_point)
    assert products(catalog, headers) == []


def test_a_tag_and_a_patch_follow_the_rule(catalog: Any, headers: dict[str, str]) -> None:
    refused(send(catalog, "post", "/products", {"name": "Mug", "tags": ["ok", "b\x1bad"]}, headers), "tags.1", "U+001B")
    created = send(catalog, "post", "/products", {"name": "Mug", "description": "plain"}, headers)
    assert created.status_code == 201, created.json
    path = f"/products/{created.json['id']}"
    refused(send(catalog, "patch", path, {"description": "x\u202ey"}, headers), "description", "U+202E")
    refused(send(catalog, "patch", path, {"name": "Mug\nJug"}, headers), "name", "U+000A")
    got = catalog.get(path, headers=headers).json
    assert (got["name"], got["description"]) == ("Mug", "plain")


def test_tabs_and_newlines_in_a_description_are_accepted(catalog: Any, headers: dict[str, str]) -> None:
    description = "Hand-thrown mug.\n\n\tDishwasher safe.\r\n" + HEBREW + "\u200f and 👩\u200d👩\u200d👧"
    created = send(catalog, "post", "/products", {"name": "Mug", "description": description}, headers)
    assert created.status_code == 201, created.json
    assert catalog.get(f"/products/{created.json['id']}", headers=headers).json["description"] == description


def test_a_search_filter_follows_the_rule(catalog: Any, headers: dict[str, str]) -> None:
    body = problem(catalog.get("/products", query_string={"q": "mug\x00"}, headers=headers), 422)
    assert [(e["field"], e["in"], e["type"]) for e in body["errors"]] == [("q", "query", "bad_text")]
    body = problem(catalog.get("/products", query_string={"category": "\u202ex"}, headers=headers), 422)
    assert [(e["field"], e["type"]) for e in body["errors"]] == [("category", "bad_text")]


def test_an_upload_filename_follows_the_rule(catalog: Any, headers: dict[str, str]) -> None:
    body = {"filename": "photo\u202egnp.exe", "content_type": "image/png", "size_bytes": 10}
    refused(send(catalog, "post", "/uploads", body, headers), "filename", "U+202E")


# -- generation ------------------------------------------------------------------------------------


def test_a_prompt_with_a_lone_surrogate_is_refused_and_nothing_is_held(
    stack: Any, gen: Any, client_id: str, headers: dict[str, str]
) -> None:
    grant(stack, client_id, 100)
    before = stack.platform.ledger.state(client_id)
    response = send(gen, "post", "/jobs", {"items": [{"prompt": "a jug \udc00 on a table"}]}, headers)
    refused(response, "items.0.prompt", "U+DC00")
    response = send(gen, "post", "/jobs", {"items": [{"prompt": "a jug"}], "negative_prompt": "\x00"}, headers)
    refused(response, "negative_prompt", "U+0000")
    assert gen.get("/jobs", headers=headers).json["items"] == []
    after = stack.platform.ledger.state(client_id)
    assert (after.available, after.reserved, after.seq) == (before.available, before.reserved, before.seq)


def test_a_multi_line_prompt_is_accepted(stack: Any, gen: Any, client_id: str, headers: dict[str, str]) -> None:
    grant(stack, client_id, 100)
    response = send(gen, "post", "/jobs", {"items": [{"prompt": "a jug\n\ton a table, \u200f" + HEBREW}]}, headers)
    assert response.status_code == 202, response.json
    assert response.json["id"]


def test_a_preset_name_follows_the_rule(gen: Any, headers: dict[str, str]) -> None:
    response = send(gen, "post", "/presets", {"name": "Summer\u202d", "settings": {"style": "studio"}}, headers)
    refused(response, "name", "U+202D (LEFT-TO-RIGHT OVERRIDE)")
    listed = gen.get("/presets", headers=headers).json["items"]
    assert not [p for p in listed if not p.get("built_in")]
    created = send(gen, "post", "/presets", {"name": "Summer", "settings": {"style": "studio"}}, headers)
    assert created.status_code == 201, created.json
    path = f"/presets/{created.json['id']}"
    refused(send(gen, "patch", path, {"name": "Sum\x7fmer"}, headers), "name", "U+007F (DELETE)")
    assert gen.get(path, headers=headers).json["name"] == "Summer"


def test_brand_and_edit_prompts_follow_the_rule(gen: Any, edit: Any, headers: dict[str, str]) -> None:
    refused(send(gen, "put", "/brand", {"style_keywords": ["calm", "\u2066x"]}, headers), "style_keywords.1", "U+2066")
    operations = [{"op": "prompt_edit", "prompt": "brighter\x00"}]
    response = send(edit, "post", "/edits", {"asset_ids": ["asset1"], "operations": operations}, headers)
    refused(response, "operations.0.prompt_edit.prompt", "U+0000")


# -- admin ---------------------------------------------------------------------------------------------


def test_an_admin_reason_follows_the_rule(stack: Any, client_id: str, other_client_id: str) -> None:
    api = stack.client("credits_api")
    api.get("/balance", headers=stack.headers(client_id))  # the client exists
    admin = stack.headers(other_client_id, role="admin", **{"Idempotency-Key": "k-" + client_id})
    response = send(api, "post", f"/admin/clients/{client_id}/grants", {"amount": 5, "reason": "ok\u202e"}, admin)
    refused(response, "reason", "U+202E")
    assert stack.platform.ledger.state(client_id).seq == 0


# -- CSV import ------------------------------------------------------------------------------------------


def test_a_csv_row_with_refused_text_is_a_row_error_and_not_stored(stack: Any, client_id: str) -> None:
    api = Api(stack, client_id)
    data = (
        "name,sku,description\n"
        'Good mug,A1,"Two lines\n\tand a tab"\n'
        "Evil \u202egpj.exe,A2,fine\n"
        "Bell,A3,ding\x07\n"
        "Jug,A4,plain\n"
    ).encode()
    draft = api.draft(data)
    preview = draft["preview"]
    assert preview["importable_rows"] == 2
    assert preview["sample"][1]["values"]["name"] == "Evil \ufffdgpj.exe"  # the stored preview is masked
    api.start(draft["id"])
    stack.run_tasks()
    done = api.import_(draft["id"])
    assert done["status"] == "completed", done
    assert (done["progress"]["created_products"], done["progress"]["failed_rows"]) == (2, 2)
    by_sku = api.products_by_sku()
    assert sorted(by_sku) == ["A1", "A4"]
    assert by_sku["A1"]["description"] == "Two lines\n\tand a tab"
    report = [r for r in api.report(draft["id"]) if r["level"] == "error"]
    assert [(r["row"], r["code"]) for r in report] == [("3", "bad_text"), ("4", "bad_text")]
    assert "U+202E (RIGHT-TO-LEFT OVERRIDE) at character 6" in report[0]["message"]
    assert "U+0007" in report[1]["message"]


def test_a_csv_column_name_or_mapping_with_refused_text_is_a_422(stack: Any, client_id: str) -> None:
    api = Api(stack, client_id)
    upload_id, completed = api.upload("name,sku\u202e\nMug,A1\n".encode())
    assert completed.status_code == 200, completed.json
    body = problem(api.post("/imports", {"upload_id": upload_id}), 422, "csv_bad_header")
    assert "column 2" in body["detail"]
    assert "U+202E" in body["detail"]

    upload_id, completed = api.upload(b"name,sku\nMug,A1\n")
    assert completed.status_code == 200, completed.json
    response = send(
        api.http, "post", "/imports", {"upload_id": upload_id, "mapping": {"name": "name\x00"}}, api.headers
    )
    refused(response, "mapping.name", "U+0000")
    assert api.products() == []
