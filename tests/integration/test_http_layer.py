"""The HTTP pipeline as the frontend sees it, through the real ``catalog_api`` / ``catalog_tasks`` entry points.

Problems (RFC 9457), request ids, body/query validation, size limits, Idempotency-Key, CORS, task-call
authentication and structured logs. Every rejected write is followed by a look at Firestore to prove
that nothing was stored.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
from typing import Any

import pytest

from tests.conftest import TASK_SECRET

ORIGIN = "https://app.epox.test"
PROBLEM_MEMBERS = {"type", "title", "status", "detail", "code", "instance", "request_id"}


def stored_products(stack: Any, client_id: str) -> list[dict[str, Any]]:
    """What Firestore really holds for the client (no API filtering in between)."""
    ref = stack.platform.db.collection("clients").document(client_id).collection("products")
    return [snapshot.to_dict() for snapshot in ref.stream()]


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = json.loads(response.get_data(as_text=True))
    assert body.keys() >= PROBLEM_MEMBERS, body
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == "https://docs.epox.ai/problems/" + code.replace("_", "-")
    assert body["request_id"] == response.headers["X-Request-Id"]
    return body


# -- problems and request ids -------------------------------------------------------------------


def test_problem_response_has_every_member_and_echoes_a_valid_request_id(stack: Any, client_id: str) -> None:
    api = stack.client("catalog_api")
    supplied = "req-abc.123_XYZ"
    response = api.get("/products/prod_missing", headers=stack.headers(client_id, **{"X-Request-Id": supplied}))
    body = assert_problem(response, 404, "not_found")
    assert response.headers["X-Request-Id"] == supplied
    assert body["request_id"] == supplied
    assert body["instance"] == "/products/prod_missing"
    assert body["title"] == "Not found"
    assert "prod_missing" in body["detail"]


@pytest.mark.parametrize("supplied", ["short", "has spaces in it", "x" * 129, "bad\u00e9chars-1234", "a/b/c/d/e/f"])
def test_an_invalid_request_id_is_replaced(stack: Any, client_id: str, supplied: str) -> None:
    api = stack.client("catalog_api")
    response = api.get("/products/prod_missing", headers=stack.headers(client_id, **{"X-Request-Id": supplied}))
    body = assert_problem(response, 404, "not_found")
    generated = response.headers["X-Request-Id"]
    assert generated != supplied
    assert len(generated) == 32 and int(generated, 16) >= 0
    assert body["request_id"] == generated


def test_successful_responses_also_carry_a_request_id(stack: Any, client_id: str) -> None:
    api = stack.client("catalog_api")
    first = api.get("/products", headers=stack.headers(client_id))
    second = api.get("/products", headers=stack.headers(client_id))
    assert first.status_code == second.status_code == 200
    assert first.headers["X-Request-Id"] != second.headers["X-Request-Id"]


# -- bodies -------------------------------------------------------------------------------------


def post_raw(stack: Any, client_id: str, data: bytes | str, content_type: str = "application/json") -> Any:
    api = stack.client("catalog_api")
    return api.post("/products", data=data, headers=stack.headers(client_id, **{"Content-Type": content_type}))


def test_malformed_json_is_400_and_stores_nothing(stack: Any, client_id: str) -> None:
    response = post_raw(stack, client_id, b'{"name": "x",')
    body = assert_problem(response, 400, "malformed_json")
    assert "not valid JSON" in body["detail"]
    assert stored_products(stack, client_id) == []


def test_empty_body_is_400(stack: Any, client_id: str) -> None:
    for empty in (b"", b"   \n"):
        assert_problem(post_raw(stack, client_id, empty), 400, "malformed_json")
    assert stored_products(stack, client_id) == []


def test_deeply_nested_json_is_a_400_not_a_crash(stack: Any, client_id: str) -> None:
    depth = 100_000
    response = post_raw(stack, client_id, '{"name": ' + "[" * depth + "]" * depth + "}")
    assert_problem(response, 400, "malformed_json")
    assert stored_products(stack, client_id) == []


def test_json_array_body_is_422(stack: Any, client_id: str) -> None:
    response = post_raw(stack, client_id, b'[{"name": "x"}]')
    body = assert_problem(response, 422, "validation_failed")
    assert body["errors"][0]["field"] == "body"
    assert body["errors"][0]["type"] == "model_type"
    assert stored_products(stack, client_id) == []


def test_wrong_types_are_422_naming_each_field(stack: Any, client_id: str) -> None:
    api = stack.client("catalog_api")
    response = api.post("/products", json={"name": 5, "price": "abc", "tags": "x"}, headers=stack.headers(client_id))
    body = assert_problem(response, 422, "validation_failed")
    fields = {error["field"] for error in body["errors"]}
    assert fields == {"name", "price", "tags"}
    assert all(error["in"] == "body" for error in body["errors"])
    assert all("input" not in error for error in body["errors"])
    assert body["detail"] == "3 invalid fields in the request body"
    assert stored_products(stack, client_id) == []


def test_nested_field_errors_carry_their_path(stack: Any, client_id: str) -> None:
    api = stack.client("catalog_api")
    response = api.post("/products", json={"name": "ok", "tags": ["fine", 7]}, headers=stack.headers(client_id))
    body = assert_problem(response, 422, "validation_failed")
    assert [error["field"] for error in body["errors"]] == ["tags.1"]
    assert stored_products(stack, client_id) == []


def test_unknown_field_is_422_extra_forbidden(stack: Any, client_id: str) -> None:
    api = stack.client("catalog_api")
    response = api.post("/products", json={"name": "Shirt", "owner": "someone"}, headers=stack.headers(client_id))
    body = assert_problem(response, 422, "validation_failed")
    assert body["errors"] == [
        {"field": "owner", "in": "body", "message": body["errors"][0]["message"], "type": "extra_forbidden"}
    ]
    assert stored_products(stack, client_id) == []


def test_wrong_content_type_is_415(stack: Any, client_id: str) -> None:
    response = post_raw(stack, client_id, b'{"name": "Shirt"}', content_type="text/plain")
    assert_problem(response, 415, "unsupported_media_type")
    response = post_raw(stack, client_id, b"name=Shirt", content_type="application/x-www-form-urlencoded")
    assert_problem(response, 415, "unsupported_media_type")
    assert stored_products(stack, client_id) == []


def test_json_with_charset_and_vendor_json_types_are_accepted(stack: Any, client_id: str) -> None:
    assert post_raw(stack, client_id, b'{"name": "A"}', "application/json; charset=utf-8").status_code == 201
    assert post_raw(stack, client_id, b'{"name": "B"}', "application/merge-patch+json").status_code == 201
    assert sorted(p["name"] for p in stored_products(stack, client_id)) == ["A", "B"]


def big_body(stack: Any) -> bytes:
    size = stack.platform.settings.max_body_bytes + stack.platform.settings.max_body_bytes // 10
    body = json.dumps({"name": "Shirt", "description": "x" * size}).encode()
    assert len(body) > stack.platform.settings.max_body_bytes
    return body


def test_body_over_the_limit_is_413(stack: Any, client_id: str) -> None:
    body = assert_problem(post_raw(stack, client_id, big_body(stack)), 413, "payload_too_large")
    assert body["limit"] == stack.platform.settings.max_body_bytes
    assert stored_products(stack, client_id) == []


def test_body_over_the_limit_is_413_even_unauthenticated(stack: Any) -> None:
    api = stack.client("catalog_api")
    response = api.post("/products", data=big_body(stack), content_type="application/json")
    assert_problem(response, 413, "payload_too_large")


def post_chunked(stack: Any, client_id: str, body: bytes) -> Any:
    """A POST with ``Transfer-Encoding: chunked`` and no Content-Length, as gunicorn hands it over
    (it de-chunks the body and sets ``wsgi.input_terminated``)."""
    from werkzeug.test import EnvironBuilder
    from werkzeug.wrappers import Request

    headers = stack.headers(client_id, **{"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    environ = EnvironBuilder(path="/products", method="POST", headers=headers).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["wsgi.input_terminated"] = True
    return stack.client("catalog_api").open(Request(environ))


def test_chunked_body_over_the_limit_is_413(stack: Any, client_id: str) -> None:
    """No Content-Length to reject up front: the limit must hold while the body is read."""
    response = post_chunked(stack, client_id, big_body(stack))
    assert "CONTENT_LENGTH" not in response.request.environ
    assert_problem(response, 413, "payload_too_large")
    assert stored_products(stack, client_id) == []


def test_chunked_body_within_the_limit_is_read(stack: Any, client_id: str) -> None:
    response = post_chunked(stack, client_id, b'{"name": "Chunked"}')
    assert response.status_code == 201, response.json
    assert [p["name"] for p in stored_products(stack, client_id)] == ["Chunked"]


def test_body_on_a_route_without_one_is_422(stack: Any, client_id: str) -> None:
    api = stack.client("catalog_api")
    response = api.post("/imports/imp_x/start", json={"x": 1}, headers=stack.headers(client_id))
    body = assert_problem(response, 422, "validation_failed")
    assert body["errors"][0]["type"] == "extra_forbidden"


# -- queries ------------------------------------------------------------------------------------


def test_unknown_query_parameter_is_422(stack: Any, client_id: str) -> None:
    api = stack.client("catalog_api")
    body = assert_problem(api.get("/products?colour=red", headers=stack.headers(client_id)), 422, "validation_failed")
    assert body["errors"][0]["field"] == "colour"
    assert body["errors"][0]["in"] == "query"
    assert body["errors"][0]["type"] == "extra_forbidden"


@pytest.mark.parametrize("limit", ["0", "101", "-1", "ten", "1.5"])
def test_limit_out_of_range_is_422(stack: Any, client_id: str, limit: str) -> None:
    api = stack.client("catalog_api")
    response = api.get(f"/products?limit={limit}", headers=stack.headers(client_id))
    body = assert_problem(response, 422, "validation_failed")
    assert [error["field"] for error in body["errors"]] == ["limit"]


def test_limit_bounds_are_accepted(stack: Any, client_id: str) -> None:
    api = stack.client("catalog_api")
    for limit in ("1", "100"):
        assert api.get(f"/products?limit={limit}", headers=stack.headers(client_id)).status_code == 200


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor!",
        _b64(b"[1, 2]"),
        _b64(b'{"id": "x"}'),
        _b64(b'{"created_at": "yesterday", "id": "x"}'),
        _b64(b"\xff\xfe\x00garbage"),
        _b64(b"[" * 1500),
    ],
)
def test_bad_cursor_is_400_invalid_cursor(stack: Any, client_id: str, cursor: str) -> None:
    api = stack.client("catalog_api")
    response = api.get("/products", query_string={"cursor": cursor}, headers=stack.headers(client_id))
    assert_problem(response, 400, "invalid_cursor")


def test_cursor_pages_through_products(stack: Any, client_id: str) -> None:
    api = stack.client("catalog_api")
    headers = stack.headers(client_id)
    ids = {api.post("/products", json={"name": f"P{i}"}, headers=headers).json["id"] for i in range(3)}
    first = api.get("/products?limit=2", headers=headers).json
    assert len(first["items"]) == 2 and first["next_cursor"]
    second = api.get("/products", query_string={"limit": 2, "cursor": first["next_cursor"]}, headers=headers).json
    assert {p["id"] for p in first["items"] + second["items"]} == ids
    assert second["next_cursor"] is None


# -- routing ------------------------------------------------------------------------------------


def test_unknown_path_is_a_404_problem(stack: Any, client_id: str) -> None:
    api = stack.client("catalog_api")
    body = assert_problem(api.get("/nope", headers=stack.headers(client_id)), 404, "not_found")
    assert body["instance"] == "/nope"
    assert_problem(api.get("/products/a/b", headers=stack.headers(client_id)), 404, "not_found")


@pytest.mark.parametrize("product_id", ["..", ".", "__reserved__"])
def test_ids_firestore_cannot_store_are_404_not_500(stack: Any, client_id: str, product_id: str) -> None:
    api = stack.client("catalog_api")
    response = api.get(f"/products/{product_id}", headers=stack.headers(client_id))
    assert_problem(response, 404, "not_found")


def test_wrong_method_is_405_with_allow(stack: Any, client_id: str) -> None:
    api = stack.client("catalog_api")
    response = api.put("/products", json={"name": "x"}, headers=stack.headers(client_id))
    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "GET, POST"
    response = api.post("/products/prod_x", json={"name": "x"}, headers=stack.headers(client_id))
    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "DELETE, GET, PATCH"
    assert stored_products(stack, client_id) == []


def test_health_needs_no_auth(stack: Any) -> None:
    for entry in ("catalog_api", "catalog_tasks"):
        response = stack.client(entry).get("/health")
        assert response.status_code == 200
        assert response.json == {"status": "ok", "service": entry}


def test_another_clients_product_is_404(stack: Any, client_id: str, other_client_id: str) -> None:
    api = stack.client("catalog_api")
    created = api.post("/products", json={"name": "Mine"}, headers=stack.headers(client_id))
    assert created.status_code == 201
    theirs = api.get(f"/products/{created.json['id']}", headers=stack.headers(other_client_id))
    assert_problem(theirs, 404, "not_found")
    assert api.get("/products", headers=stack.headers(other_client_id)).json["items"] == []


# -- Idempotency-Key ----------------------------------------------------------------------------


def test_same_key_same_body_replays_the_first_response(stack: Any, client_id: str) -> None:
    api = stack.client("catalog_api")
    headers = stack.headers(client_id, **{"Idempotency-Key": "create-shirt-1"})
    first = api.post("/products", json={"name": "Shirt", "price": "9.90"}, headers=headers)
    assert first.status_code == 201
    assert "Idempotency-Replayed" not in first.headers
    # Same JSON with other key order and spacing is the same request.
    again = api.post(
        "/products", data='{ "price": "9.90",  "name": "Shirt" }', content_type="application/json", headers=headers
    )
    assert again.status_code == 201
    assert again.headers["Idempotency-Replayed"] == "true"
    assert again.json == first.json
    assert again.headers["Location"] == first.headers["Location"] == f"/products/{first.json['id']}"
    assert again.mimetype == "application/json"
    assert [p["id"] for p in stored_products(stack, client_id)] == [first.json["id"]]


def test_same_key_different_body_is_409(stack: Any, client_id: str) -> None:
    api = stack.client("catalog_api")
    headers = stack.headers(client_id, **{"Idempotency-Key": "k-1"})
    first = api.post("/products", json={"name": "Shirt"}, headers=headers)
    assert first.status_code == 201
    reused = api.post("/products", json={"name": "Trousers"}, headers=headers)
    assert_problem(reused, 409, "idempotency_key_reused")
    assert [p["name"] for p in stored_products(stack, client_id)] == ["Shirt"]


@pytest.mark.parametrize("key", ["k" * 256, "has space", "caf\u00e9"])
def test_invalid_key_is_400(stack: Any, client_id: str, key: str) -> None:
    api = stack.client("catalog_api")
    headers = stack.headers(client_id)
    headers["Idempotency-Key"] = key
    response = api.post("/products", json={"name": "Shirt"}, headers=headers)
    assert_problem(response, 400, "bad_request")
    assert stored_products(stack, client_id) == []


def test_key_of_255_chars_is_accepted(stack: Any, client_id: str) -> None:
    api = stack.client("catalog_api")
    headers = stack.headers(client_id, **{"Idempotency-Key": "k" * 255})
    assert api.post("/products", json={"name": "Shirt"}, headers=headers).status_code == 201
    assert api.post("/products", json={"name": "Shirt"}, headers=headers).headers["Idempotency-Replayed"] == "true"
    assert len(stored_products(stack, client_id)) == 1


def test_a_rejected_request_does_not_burn_the_key(stack: Any, client_id: str) -> None:
    api = stack.client("catalog_api")
    headers = stack.headers(client_id, **{"Idempotency-Key": "retry-me"})
    assert_problem(api.post("/products", json={"name": 5}, headers=headers), 422, "validation_failed")
    assert stored_products(stack, client_id) == []
    fixed = api.post("/products", json={"name": "Shirt"}, headers=headers)
    assert fixed.status_code == 201
    assert "Idempotency-Replayed" not in fixed.headers
    assert [p["id"] for p in stored_products(stack, client_id)] == [fixed.json["id"]]


def test_keys_are_per_tenant(stack: Any, client_id: str, other_client_id: str) -> None:
    api = stack.client("catalog_api")
    mine = api.post("/products", json={"name": "Shirt"}, headers=stack.headers(client_id, **{"Idempotency-Key": "k"}))
    theirs = api.post(
        "/products", json={"name": "Shirt"}, headers=stack.headers(other_client_id, **{"Idempotency-Key": "k"})
    )
    assert mine.status_code == theirs.status_code == 201
    assert "Idempotency-Replayed" not in theirs.headers
    assert mine.json["id"] != theirs.json["id"]
    assert [p["id"] for p in stored_products(stack, client_id)] == [mine.json["id"]]
    assert [p["id"] for p in stored_products(stack, other_client_id)] == [theirs.json["id"]]


def test_a_key_whose_first_request_is_still_running_is_409_with_retry_after(stack: Any, client_id: str) -> None:
    """Claim the key as an in-flight request would (a pending record), then retry with it."""
    import hashlib

    from flask import Flask, request

    from shared.http.idempotency import Begun, fingerprint_request

    raw = b'{"name": "Slow"}'
    with Flask("claim").test_request_context("/products", method="POST", data=raw):
        fingerprint = fingerprint_request(request, raw)
    key_hash = hashlib.sha256(b"/products\nslow-key").hexdigest()
    assert isinstance(stack.platform.idempotency_keys().begin(client_id, key_hash, fingerprint), Begun)

    api = stack.client("catalog_api")
    headers = stack.headers(client_id, **{"Idempotency-Key": "slow-key", "Content-Type": "application/json"})
    response = api.post("/products", data=raw, headers=headers)
    assert_problem(response, 409, "idempotency_request_in_progress")
    assert response.headers["Retry-After"] == "1"
    assert stored_products(stack, client_id) == []
    # The same key with another body is still a reuse, not "in progress".
    other = api.post("/products", data=b'{"name": "Other"}', headers=headers)
    assert_problem(other, 409, "idempotency_key_reused")


def test_concurrent_requests_with_one_key_create_one_product(stack: Any, client_id: str) -> None:
    workers = 8
    barrier = threading.Barrier(workers)
    headers = stack.headers(client_id, **{"Idempotency-Key": "race"})
    stack.client("catalog_api").get("/products", headers=headers)  # provision the client outside the race
    results: list[Any] = []
    lock = threading.Lock()

    def attempt() -> None:
        api = stack.client("catalog_api")
        barrier.wait()
        response = api.post("/products", json={"name": "Raced"}, headers=headers)
        with lock:
            results.append(response)

    threads = [threading.Thread(target=attempt) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == workers
    stored = stored_products(stack, client_id)
    assert len(stored) == 1
    created = [r for r in results if r.status_code == 201]
    assert created and {r.json["id"] for r in created} == {stored[0]["id"]}
    for response in results:
        if response.status_code != 201:
            assert_problem(response, 409, "idempotency_request_in_progress")
            assert response.headers["Retry-After"] == "1"
    assert sum("Idempotency-Replayed" not in r.headers for r in created) == 1


# -- CORS ---------------------------------------------------------------------------------------


def test_preflight_from_the_app_origin(stack: Any) -> None:
    api = stack.client("catalog_api")
    response = api.options(
        "/products",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
    )
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    methods = {m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")}
    assert {"GET", "POST", "OPTIONS"} <= methods
    allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "idempotency-key"} <= allowed
    assert "Origin" in response.headers.get_all("Vary")


def test_preflight_from_an_unknown_origin_gets_no_cors_headers(stack: Any) -> None:
    api = stack.client("catalog_api")
    response = api.options(
        "/products", headers={"Origin": "https://evil.test", "Access-Control-Request-Method": "POST"}
    )
    assert not [name for name, _ in response.headers if name.lower().startswith("access-control-")]


def test_get_from_the_app_origin_gets_cors_headers(stack: Any, client_id: str) -> None:
    api = stack.client("catalog_api")
    response = api.get("/products", headers=stack.headers(client_id, Origin=ORIGIN))
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Origin" in response.headers.get_all("Vary")
    exposed = {h.strip() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"X-Request-Id", "Idempotency-Replayed", "Location"} <= exposed
    # Errors must be readable by the app too.
    error = api.get("/products/prod_missing", headers=stack.headers(client_id, Origin=ORIGIN))
    assert error.status_code == 404
    assert error.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_unknown_origin_gets_no_cors_headers(stack: Any, client_id: str) -> None:
    api = stack.client("catalog_api")
    for origin in ("https://evil.test", "https://app.epox.test.evil.test", "null"):
        response = api.get("/products", headers=stack.headers(client_id, Origin=origin))
        assert response.status_code == 200
        assert "Access-Control-Allow-Origin" not in response.headers
        assert "Access-Control-Expose-Headers" not in response.headers


# -- task endpoints -----------------------------------------------------------------------------

CHUNK = "/tasks/import-chunk"
TASK_BODY = {"client_id": "cx", "import_id": "imp_x", "chunk": 0}
QUEUE_HEADERS = {"X-CloudTasks-QueueName": "epox-default", "X-CloudTasks-TaskName": "t-1"}


def test_task_without_authorization_is_401(stack: Any) -> None:
    response = stack.client("catalog_tasks").post(CHUNK, json=TASK_BODY, headers=QUEUE_HEADERS)
    assert_problem(response, 401, "unauthenticated")


def test_task_with_wrong_secret_is_401(stack: Any) -> None:
    headers = {"Authorization": "Bearer not-the-secret", **QUEUE_HEADERS}
    response = stack.client("catalog_tasks").post(CHUNK, json=TASK_BODY, headers=headers)
    assert_problem(response, 401, "unauthenticated")


def test_task_with_secret_but_no_queue_headers_is_403(stack: Any) -> None:
    for partial in ({}, {"X-CloudTasks-QueueName": "epox-default"}, {"X-CloudTasks-TaskName": "t-1"}):
        headers = {"Authorization": f"Bearer {TASK_SECRET}", **partial}
        response = stack.client("catalog_tasks").post(CHUNK, json=TASK_BODY, headers=headers)
        assert_problem(response, 403, "forbidden")


def test_task_with_a_user_jwt_is_401(stack: Any, client_id: str) -> None:
    headers = {**stack.headers(client_id, role="admin"), **QUEUE_HEADERS}
    response = stack.client("catalog_tasks").post(CHUNK, json=TASK_BODY, headers=headers)
    assert_problem(response, 401, "unauthenticated")


def test_task_secret_does_not_open_the_user_api(stack: Any) -> None:
    response = stack.client("catalog_api").get("/products", headers={"Authorization": f"Bearer {TASK_SECRET}"})
    assert_problem(response, 401, "unauthenticated")


def test_task_with_secret_and_queue_headers_reaches_the_worker(stack: Any, client_id: str) -> None:
    headers = {"Authorization": f"Bearer {TASK_SECRET}", **QUEUE_HEADERS}
    response = stack.client("catalog_tasks").post(CHUNK, json={"client_id": client_id}, headers=headers)
    # Past authentication: the body is validated (import_id and chunk are missing).
    body = assert_problem(response, 422, "validation_failed")
    assert {error["field"] for error in body["errors"]} == {"import_id", "chunk"}


# -- structured logs ----------------------------------------------------------------------------


@pytest.fixture
def json_logs() -> Any:
    """Every log record of the process during the test, formatted as Cloud Logging JSON lines."""
    from shared.logging import CloudJsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(CloudJsonFormatter("epox-test"))
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def test_request_log_line_is_structured_and_has_no_token(stack: Any, client_id: str, json_logs: io.StringIO) -> None:
    api = stack.client("catalog_api")
    trace = "0123456789abcdef0123456789abcdef"
    headers = stack.headers(
        client_id, **{"X-Cloud-Trace-Context": f"{trace}/123;o=1", "X-Request-Id": "req-log-test-1"}
    )
    token = headers["Authorization"].removeprefix("Bearer ")
    assert api.get("/products", headers=headers).status_code == 200
    # A token in places it should never be: the query string and a rejected body.
    api.get("/products", query_string={"token": token}, headers=headers)
    api.post("/products", json={"name": token, "x": token}, headers=headers)
    api.get("/products", headers={"Authorization": f"Bearer {token}x"})

    output = json_logs.getvalue()
    assert token not in output
    assert token.split(".")[2] not in output  # not even the signature alone
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    request_lines = [line for line in lines if line.get("message") == "GET /products -> 200"]
    assert request_lines, lines
    line = request_lines[0]
    assert line["severity"] == "INFO"
    assert line["logging.googleapis.com/trace"] == f"projects/epox-test/traces/{trace}"
    assert line["logging.googleapis.com/spanId"] == "000000000000007b"  # decimal 123 as 16 hex characters
    assert line["request_id"] == "req-log-test-1"
    assert line["client_id"] == client_id
    assert line["service"] == "catalog_api"
    assert line["httpRequest"]["status"] == 200
    assert line["httpRequest"]["requestMethod"] == "GET"


def test_log_context_does_not_leak_into_the_next_request(stack: Any, client_id: str, json_logs: io.StringIO) -> None:
    api = stack.client("catalog_api")
    assert api.get("/products", headers=stack.headers(client_id)).status_code == 200
    assert api.get("/health").status_code == 200
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines() if line.strip()]
    health = [line for line in lines if line.get("message") == "GET /health -> 200"]
    assert health and "client_id" not in health[-1]
    assert "logging.googleapis.com/trace" not in health[-1]
