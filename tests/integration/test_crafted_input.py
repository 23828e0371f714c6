"""Crafted pagination cursors and reserved document ids, through the real HTTP functions on the emulator.

A cursor is opaque but not trusted: whatever a caller puts in it (an offset that carries a date past
year 1 or 9999, JSON ``Infinity``/``NaN``, integers past int64, wrong types) answers 400
``invalid_cursor`` at every list route, never a 500. An id in a body or query must not be one of the
forms Firestore reserves (``__x__``), just as the router never routes them in paths.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tests.catalog_helpers import make_product, problem
from tests.platforms import grant

# -- cursors ------------------------------------------------------------------------------------------


def _cursor(raw_json: str) -> str:
    """A cursor as a caller could craft it: any JSON text, base64url without padding like ours."""
    return base64.urlsafe_b64encode(raw_json.encode()).decode().rstrip("=")


VALID_TIME = '"2024-05-01T12:00:00+00:00"'
CRAFTED_TIMES = [
    '"0001-01-01T00:00:00+05:00"',  # parses, but is before year 1 in UTC
    '"9999-12-31T23:59:59-05:00"',  # parses, but is after year 9999 in UTC
    "5",
    "null",
    '["2024-05-01"]',
    '"yesterday"',
]
# Not finite, past int64, negative, or not an integer at all.
CRAFTED_INTS = ["Infinity", "-Infinity", "NaN", str(2**63), str(10**19), "-1", "1.5", "true", '"3"', "[1]", "null"]
NOT_OBJECTS = ["[1, 2]", '"x"', "7", "null", "Infinity", "{}"]


def _time_and_position(time_key: str, position_key: str, position: str, crafted_positions: list[str]) -> list[str]:
    """JSON texts of crafted cursors for a list ordered by ``time_key`` then ``position_key``."""
    return [
        *(f'{{"{time_key}": {t}, "{position_key}": {position}}}' for t in CRAFTED_TIMES),
        *(f'{{"{time_key}": {VALID_TIME}, "{position_key}": {p}}}' for p in crafted_positions),
        f'{{"{position_key}": {position}}}',
        f'{{"{time_key}": {VALID_TIME}}}',
        *NOT_OBJECTS,
    ]


# A lone surrogate in an id would fail Firestore's encoding of the query (the text rule refuses it).
BAD_IDS = ['"\\ud800"', '"a\\u0000b"']
BY_TIME_AND_ID = _time_and_position("created_at", "id", '"x"', ["5", '["x"]', '""', "null", *BAD_IDS])
JOBS = _time_and_position("t", "id", '"x"', ["5", '{"a": 1}', *BAD_IDS])
HISTORY = _time_and_position("t", "s", "1", CRAFTED_INTS)
ITEMS = [*(f'{{"i": {value}}}' for value in CRAFTED_INTS), *NOT_OBJECTS]


@pytest.fixture
def job_id(stack: Any, client_id: str, headers: dict[str, str]) -> str:
    """A generation job that is accepted but not run (its items list can be asked for)."""
    grant(stack, client_id, 100)
    response = stack.client("generate_api").post("/jobs", json={"items": [{"prompt": "a jug"}]}, headers=headers)
    assert response.status_code == 202, response.json
    return str(response.json["id"])


def _list(stack: Any, headers: dict[str, str], entry: str, path: str, raw_json: str, **query: str) -> Any:
    return stack.client(entry).get(path, query_string={"cursor": _cursor(raw_json), **query}, headers=headers)


@pytest.mark.parametrize("raw", BY_TIME_AND_ID)
def test_products_refuse_crafted_cursors(stack: Any, headers: dict[str, str], raw: str) -> None:
    problem(_list(stack, headers, "catalog_api", "/products", raw), 400, "invalid_cursor")


@pytest.mark.parametrize("raw", BY_TIME_AND_ID[:2])
def test_filtered_products_refuse_crafted_cursors(stack: Any, headers: dict[str, str], raw: str) -> None:
    response = _list(stack, headers, "catalog_api", "/products", raw, q="mug", category="kitchen")
    problem(response, 400, "invalid_cursor")


@pytest.mark.parametrize("raw", BY_TIME_AND_ID)
def test_assets_refuse_crafted_cursors(stack: Any, headers: dict[str, str], raw: str) -> None:
    problem(_list(stack, headers, "catalog_api", "/assets", raw), 400, "invalid_cursor")


@pytest.mark.parametrize("raw", HISTORY)
def test_credit_history_refuses_crafted_cursors(stack: Any, headers: dict[str, str], raw: str) -> None:
    problem(_list(stack, headers, "credits_api", "/history", raw), 400, "invalid_cursor")


@pytest.mark.parametrize("raw", JOBS)
def test_generation_jobs_refuse_crafted_cursors(stack: Any, headers: dict[str, str], raw: str) -> None:
    problem(_list(stack, headers, "generate_api", "/jobs", raw), 400, "invalid_cursor")


@pytest.mark.parametrize("raw", ITEMS)
def test_job_items_refuse_crafted_cursors(stack: Any, headers: dict[str, str], job_id: str, raw: str) -> None:
    problem(_list(stack, headers, "generate_api", f"/jobs/{job_id}/items", raw), 400, "invalid_cursor")


@pytest.mark.parametrize("raw", JOBS)
def test_edit_jobs_refuse_crafted_cursors(stack: Any, headers: dict[str, str], raw: str) -> None:
    problem(_list(stack, headers, "edit_api", "/edits", raw), 400, "invalid_cursor")


def test_only_positions_firestore_cannot_hold_are_refused(stack: Any, headers: dict[str, str], job_id: str) -> None:
    """Either end of the calendar in UTC (or without an offset, read as UTC) and the largest int64
    are valid positions (empty pages); one step past them is a 400, not a 500."""

    def status(entry: str, path: str, values: dict[str, Any]) -> int:
        response = _list(stack, headers, entry, path, json.dumps(values))
        assert response.status_code in (200, 400), response.json
        return int(response.status_code)

    for moment in ("0001-01-01T00:00:00+00:00", "0001-01-01T00:00:00", "9999-12-31T23:59:59.999999+00:00"):
        assert status("catalog_api", "/products", {"created_at": moment, "id": "x"}) == 200
        assert status("credits_api", "/history", {"t": moment, "s": 2**63 - 1}) == 200
        assert status("edit_api", "/edits", {"t": moment, "id": "x"}) == 200
    for moment in ("0001-01-01T00:00:00+00:01", "9999-12-31T23:59:59.999999-00:01"):
        assert status("catalog_api", "/products", {"created_at": moment, "id": "x"}) == 400
        assert status("credits_api", "/history", {"t": moment, "s": 1}) == 400
        assert status("edit_api", "/edits", {"t": moment, "id": "x"}) == 400
    assert status("generate_api", f"/jobs/{job_id}/items", {"i": 2**63 - 1}) == 200
    assert status("generate_api", f"/jobs/{job_id}/items", {"i": 2**63}) == 400


@pytest.mark.parametrize("bound", ["from", "to"])
def test_history_time_filters_past_the_calendar_are_422(stack: Any, headers: dict[str, str], bound: str) -> None:
    """Not a cursor, but the same trap: a filter instant whose offset leaves the calendar in UTC."""
    credits_api = stack.client("credits_api")
    for moment in ("0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"):
        response = credits_api.get("/history", query_string={bound: moment}, headers=headers)
        problem(response, 422, "validation_failed")
    edge = "0001-01-01T00:00:00+00:00" if bound == "from" else "9999-12-31T23:59:59+00:00"
    assert credits_api.get("/history", query_string={bound: edge}, headers=headers).status_code == 200


# -- ids Firestore reserves -------------------------------------------------------------------------------

RESERVED = ["__x__", "__name__"]


@pytest.mark.parametrize("reserved", RESERVED)
def test_an_upload_for_a_reserved_product_id_is_422(stack: Any, headers: dict[str, str], reserved: str) -> None:
    body = {"filename": "a.png", "content_type": "image/png", "size_bytes": 10, "product_id": reserved}
    problem(stack.client("catalog_api").post("/uploads", json=body, headers=headers), 422, "validation_failed")


@pytest.mark.parametrize("reserved", RESERVED)
def test_an_import_of_a_reserved_upload_id_is_422(stack: Any, headers: dict[str, str], reserved: str) -> None:
    response = stack.client("catalog_api").post("/imports", json={"upload_id": reserved}, headers=headers)
    problem(response, 422, "validation_failed")


@pytest.mark.parametrize(
    "body",
    [
        {"items": [{"product_id": "__x__"}]},
        {"items": [{"prompt": "a jug"}], "preset_id": "__x__"},
        {"items": [{"product_id": "{product}", "image_asset_ids": ["__x__"]}]},
    ],
    ids=["product_id", "preset_id", "image_asset_ids"],
)
def test_a_job_naming_a_reserved_id_is_422(
    stack: Any, client_id: str, headers: dict[str, str], body: dict[str, Any]
) -> None:
    grant(stack, client_id, 100)
    product_id = make_product(stack.client("catalog_api"), headers, "Jug")
    body = json.loads(json.dumps(body).replace("{product}", product_id))
    problem(stack.client("generate_api").post("/jobs", json=body, headers=headers), 422, "validation_failed")


def test_generation_helpers_refuse_a_reserved_product_id(stack: Any, headers: dict[str, str]) -> None:
    gen = stack.client("generate_api")
    enhance = gen.post("/prompts/enhance", json={"prompt": "a jug", "product_id": "__x__"}, headers=headers)
    problem(enhance, 422, "validation_failed")
    defaults = gen.get("/defaults", query_string={"product_id": "__x__"}, headers=headers)
    problem(defaults, 422, "validation_failed")


def test_an_edit_of_a_reserved_asset_id_is_422(stack: Any, headers: dict[str, str]) -> None:
    body = {"asset_ids": ["__x__"], "operations": [{"op": "resize", "width": 10}]}
    problem(stack.client("edit_api").post("/edits", json=body, headers=headers), 422, "validation_failed")


def test_a_token_for_a_reserved_client_id_is_403(stack: Any) -> None:
    response = stack.client("catalog_api").get("/products", headers=stack.headers("__x__"))
    problem(response, 403)
