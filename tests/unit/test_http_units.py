"""The HTTP layer's pure parts, without the emulator: cursors, problems, validation errors, routing,
the request pipeline on a tiny app, and Idempotency-Key logic against an in-memory store."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from werkzeug.routing import Rule

from shared.config import Settings
from shared.errors import (
    EpoxError,
    IdempotencyKeyReused,
    IdempotencyRequestInProgress,
    InsufficientCredits,
    NotFound,
    Unauthenticated,
    UpstreamUnavailable,
    ValidationFailed,
    validation_problem,
)
from shared.http.app import Access, HttpApp, JsonResponse, NoBody, NoQuery, RequestContext
from shared.http.idempotency import IdempotencyKeys, IdempotencyStore, fingerprint_request, run_idempotent
from shared.http.problems import PROBLEM_CONTENT_TYPE, problem_body, problem_response
from shared.http.routes import compile_template as _compile
from shared.pagination import (
    InvalidCursor,
    PageQuery,
    cursor_datetime,
    cursor_int,
    cursor_str,
    decode_cursor,
    encode_cursor,
)
from shared.platform import Platform
from shared.tasks import SharedSecretTaskVerifier
from tests.fakes import InMemoryObjectStore, RecordingTaskQueue
from tests.fakes_http import InMemoryIdempotencyStore

ORIGIN = "https://app.example.test"
SECRET = "unit-secret"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# -- cursors ------------------------------------------------------------------------------------


def test_cursor_roundtrip() -> None:
    values = {"created_at": "2024-05-01T10:00:00+00:00", "id": "prod_\u00e9\u00e8", "n": 3}
    cursor = encode_cursor(values)
    assert decode_cursor(cursor) == values
    assert "=" not in cursor and "+" not in cursor and "/" not in cursor


def test_cursor_is_canonical() -> None:
    assert encode_cursor({"a": 1, "b": 2}) == encode_cursor({"b": 2, "a": 1})


def test_cursor_encodes_datetimes_as_text() -> None:
    moment = datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert decode_cursor(encode_cursor({"at": moment})) == {"at": str(moment)}


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!!",
        "not base64 at all",
        _b64(b"[1, 2]"),
        _b64(b'"a string"'),
        _b64(b"42"),
        _b64(b"null"),
        _b64(b"{not json"),
        _b64(b"\xff\xfe\xfd"),
        _b64(b"[" * 1500),  # nests past the JSON decoder's recursion limit
        _b64(b"[" * 1500)[:-1],
        "a",  # one base64 char: an impossible length
    ],
)
def test_invalid_cursor_is_400_invalid_cursor(cursor: str) -> None:
    with pytest.raises(InvalidCursor) as caught:
        decode_cursor(cursor)
    assert caught.value.status == 400
    assert caught.value.code == "invalid_cursor"


@pytest.mark.parametrize(
    "raw",
    ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "2024-13-01T00:00:00", "", 5, None, ["2024-05-01"]],
)
def test_cursor_datetime_refuses_what_cannot_become_a_utc_instant(raw: Any) -> None:
    with pytest.raises(InvalidCursor):
        cursor_datetime({"t": raw}, "t")


def test_cursor_datetime_is_utc_and_reads_a_naive_time_as_utc() -> None:
    assert cursor_datetime({"t": "2024-05-01T12:00:00+02:00"}, "t") == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert cursor_datetime({"t": "2024-05-01T12:00:00+02:00"}, "t").utcoffset() == timedelta(0)
    assert cursor_datetime({"t": "0001-01-01T00:00:00"}, "t") == datetime(1, 1, 1, tzinfo=UTC)
    with pytest.raises(InvalidCursor):
        cursor_datetime({}, "t")


@pytest.mark.parametrize("raw", [float("inf"), float("nan"), 2**63, -1, 1.0, True, "3", [1], None])
def test_cursor_int_refuses_what_is_not_an_int64_position(raw: Any) -> None:
    with pytest.raises(InvalidCursor):
        cursor_int({"i": raw}, "i")


def test_cursor_int_and_str_accept_their_own_cursors() -> None:
    values = decode_cursor(encode_cursor({"i": 2**63 - 1, "id": "job_1"}))
    assert cursor_int(values, "i") == 2**63 - 1 and cursor_int({"i": 0}, "i") == 0
    assert cursor_str(values, "id") == "job_1"
    for bad in (5, "", None, ["x"]):
        with pytest.raises(InvalidCursor):
            cursor_str({"id": bad}, "id")


@pytest.mark.parametrize("limit", [0, -1, 101])
def test_page_query_limits(limit: int) -> None:
    with pytest.raises(ValidationError):
        PageQuery.model_validate({"limit": limit})


def test_page_query_defaults_and_extra_fields() -> None:
    assert PageQuery.model_validate({}).limit == 20
    assert PageQuery.model_validate({"limit": "100"}).limit == 100
    with pytest.raises(ValidationError):
        PageQuery.model_validate({"offset": "3"})
    with pytest.raises(ValidationError):
        PageQuery.model_validate({"cursor": "x" * 2049})


# -- problems -----------------------------------------------------------------------------------


def test_problem_body_members_in_order() -> None:
    body = problem_body(NotFound("No product p1"), instance="/products/p1", request_id="req-12345678")
    assert list(body) == ["type", "title", "status", "detail", "code", "instance", "request_id"]
    assert body == {
        "type": "https://docs.epox.ai/problems/not-found",
        "title": "Not found",
        "status": 404,
        "detail": "No product p1",
        "code": "not_found",
        "instance": "/products/p1",
        "request_id": "req-12345678",
    }


def test_problem_body_without_instance_or_request_id() -> None:
    body = problem_body(EpoxError())
    assert "instance" not in body and "request_id" not in body
    assert body["detail"] == body["title"] == "Internal error"
    assert body["status"] == 500
    assert body["type"] == "https://docs.epox.ai/problems/internal-error"


def test_problem_extensions_follow_but_never_override_standard_members() -> None:
    error = InsufficientCredits("Need 5", required=5, available=2, status=200, code="ok", type="x")
    body = problem_body(error, request_id="req-12345678")
    assert body["required"] == 5 and body["available"] == 2
    assert body["status"] == 402
    assert body["code"] == "insufficient_credits"
    assert body["type"] == "https://docs.epox.ai/problems/insufficient-credits"


def test_problem_response_shape_and_headers() -> None:
    response = problem_response(Unauthenticated(), instance="/x", request_id="req-12345678")
    assert response.status_code == 401
    assert response.content_type == PROBLEM_CONTENT_TYPE
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert json.loads(response.get_data(as_text=True))["code"] == "unauthenticated"

    busy = problem_response(UpstreamUnavailable(retry_after=7))
    assert busy.status_code == 503
    assert busy.headers["Retry-After"] == "7"


class _Line(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: str
    quantity: int = Field(ge=1)


class _Order(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    lines: list[_Line]
    meta: dict[str, int] = Field(default_factory=dict)


def _validation_error(data: Any) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        _Order.model_validate(data)
    return caught.value


def test_validation_problem_names_nested_field_paths() -> None:
    exc = _validation_error(
        {"name": 5, "lines": [{"sku": "a", "quantity": 1}, {"sku": "b", "quantity": 0, "x": 1}], "meta": {"k": "v"}}
    )
    problem = validation_problem(exc, location="body")
    assert isinstance(problem, ValidationFailed)
    assert problem.status == 422
    errors = problem.extensions["errors"]
    assert [e["field"] for e in errors] == ["name", "lines.1.quantity", "lines.1.x", "meta.k"]
    assert {e["in"] for e in errors} == {"body"}
    assert [e["type"] for e in errors] == ["string_type", "greater_than_equal", "extra_forbidden", "int_parsing"]
    assert problem.detail == "4 invalid fields in the request body"


def test_validation_problem_never_echoes_the_input() -> None:
    secret = "sk_live_do_not_echo"
    problem = validation_problem(_validation_error({"name": secret, "lines": secret}), location="query")
    assert secret not in json.dumps(problem_body(problem))
    assert problem.detail == "1 invalid field in the request query"
    assert problem.extensions["errors"][0]["in"] == "query"
    assert problem.extensions["errors"][0]["field"] == "lines"


def test_validation_problem_for_a_model_level_error_uses_the_location() -> None:
    with pytest.raises(ValidationError) as caught:
        _Order.model_validate([1, 2])
    errors = validation_problem(caught.value, location="body").extensions["errors"]
    assert errors[0]["field"] == "body"


# -- route templates ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/products/prod_1", {"product_id": "prod_1"}),
        ("/products/prod_1/", {"product_id": "prod_1"}),
        ("/products/a.b~c-d", {"product_id": "a.b~c-d"}),
        ("/products/" + "x" * 200, {"product_id": "x" * 200}),
    ],
)
def test_template_matches_and_extracts(path: str, params: dict[str, str]) -> None:
    match = _compile("/products/<product_id>").match(path)
    assert match is not None and match.groupdict() == params


@pytest.mark.parametrize(
    "path",
    [
        "/products",
        "/products/",
        "/products/a/b",
        "/products/a%2Fb",
        "/products/a b",
        "/products/" + "x" * 201,
        "/products/..",
        "/products/.",
        "/products/__reserved__",
        "/xproducts/a",
        "/products/a\n",
    ],
)
def test_template_rejects(path: str) -> None:
    assert _compile("/products/<product_id>").match(path) is None


def test_template_escapes_literal_text() -> None:
    pattern = _compile("/imports/<import_id>/errors.csv")
    assert pattern.match("/imports/imp_1/errors.csv").groupdict() == {"import_id": "imp_1"}
    assert pattern.match("/imports/imp_1/errorsXcsv") is None


def test_template_with_two_parameters() -> None:
    pattern = _compile("/a/<first>/b/<second>")
    assert pattern.match("/a/1/b/2").groupdict() == {"first": "1", "second": "2"}


# -- the pipeline on a tiny app -----------------------------------------------------------------


class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    count: int = 1


class _Search(PageQuery):
    q: str | None = None


class _BoomError(Exception):
    pass


def _build_app(platform: Platform) -> HttpApp:
    app = HttpApp("unit_api", platform_factory=lambda: platform)

    @app.get("/things/<thing_id>", access=Access.PUBLIC)
    def get_thing(ctx: RequestContext[NoBody, NoQuery]) -> dict[str, Any]:
        return {"id": ctx.path_params["thing_id"], "request_id": ctx.request_id}

    @app.delete("/things/<thing_id>", access=Access.PUBLIC, status=204)
    def delete_thing(ctx: RequestContext[NoBody, NoQuery]) -> None:
        return None

    @app.post("/things", body=_Item, status=201, access=Access.PUBLIC)
    def create_thing(ctx: RequestContext[_Item, NoQuery]) -> JsonResponse:
        return JsonResponse({"name": ctx.body.name, "count": ctx.body.count}, status=201, headers={"Location": "/t/1"})

    @app.post("/small", body=_Item, access=Access.PUBLIC, max_body_bytes=64)
    def small(ctx: RequestContext[_Item, NoQuery]) -> _Item:
        return ctx.body

    @app.get("/search", query=_Search, access=Access.PUBLIC)
    def search(ctx: RequestContext[NoBody, _Search]) -> dict[str, Any]:
        return {"q": ctx.query.q, "limit": ctx.query.limit}

    @app.post("/nobody", access=Access.PUBLIC)
    def nobody(ctx: RequestContext[NoBody, NoQuery]) -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/models", access=Access.PUBLIC)
    def models(ctx: RequestContext[NoBody, NoQuery]) -> dict[str, str]:
        return {"body": type(ctx.body).__name__, "query": type(ctx.query).__name__}

    @app.get("/boom", access=Access.PUBLIC)
    def boom(ctx: RequestContext[NoBody, NoQuery]) -> None:
        raise _BoomError("secret internals /etc/passwd")

    @app.get("/gone", access=Access.PUBLIC, errors=(NotFound,))
    def gone(ctx: RequestContext[NoBody, NoQuery]) -> None:
        raise NotFound("No such thing", thing="x")

    @app.get("/whoami", access=Access.PUBLIC, errors=(Unauthenticated,))
    def whoami(ctx: RequestContext[NoBody, NoQuery]) -> str:
        return ctx.client_id

    @app.post("/work", access=Access.TASK)
    def work(ctx: RequestContext[NoBody, NoQuery]) -> dict[str, Any]:
        assert ctx.task is not None
        return {"queue": ctx.task.queue, "name": ctx.task.name, "retry": ctx.task.retry_count}

    return app


@pytest.fixture
def platform() -> Platform:
    settings = Settings(epox_env="test", cors_allowed_origins=[ORIGIN], max_body_bytes=1024)
    return Platform(
        settings,
        object_store=InMemoryObjectStore(),
        task_queue=RecordingTaskQueue(),
        task_verifier=SharedSecretTaskVerifier(SECRET),
    )


@pytest.fixture
def client(platform: Platform) -> Any:
    """A Flask app that sends every path and method to the HttpApp, like functions-framework does."""
    app = _build_app(platform)
    flask_app = Flask("unit")
    flask_app.url_map.add(Rule("/", defaults={"path": ""}, endpoint="run"))
    flask_app.url_map.add(Rule("/<path:path>", endpoint="run"))
    flask_app.view_functions["run"] = lambda path: app.handle(request)
    return flask_app.test_client()


def _problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = json.loads(response.get_data(as_text=True))
    assert body["code"] == code and body["status"] == status
    assert body["request_id"] == response.headers["X-Request-Id"]
    return body


def test_path_params_reach_the_handler(client: Any) -> None:
    response = client.get("/things/t-1", headers={"X-Request-Id": "req-unit-0001"})
    assert response.status_code == 200
    assert response.json == {"id": "t-1", "request_id": "req-unit-0001"}
    assert response.headers["X-Request-Id"] == "req-unit-0001"


def test_a_route_without_models_hands_its_handler_the_empty_ones(client: Any) -> None:
    # What RequestContext[NoBody, NoQuery] promises the type checker is what the handler gets.
    assert client.get("/models").json == {"body": "NoBody", "query": "NoQuery"}


def test_health_is_always_there(client: Any) -> None:
    assert client.get("/health").json == {"status": "ok", "service": "unit_api"}


def test_unknown_path_is_404(client: Any) -> None:
    assert _problem(client.get("/nothing/here"), 404, "not_found")["instance"] == "/nothing/here"
    _problem(client.get("/"), 404, "not_found")


def test_wrong_method_is_405_listing_allowed_methods(client: Any) -> None:
    response = client.put("/things/t-1")
    _problem(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "DELETE, GET"


def test_handler_returning_none_is_204(client: Any) -> None:
    response = client.delete("/things/t-1")
    assert response.status_code == 204
    assert response.get_data() == b""


def test_json_response_status_and_headers(client: Any) -> None:
    response = client.post("/things", json={"name": "a"})
    assert response.status_code == 201
    assert response.headers["Location"] == "/t/1"
    assert response.json == {"name": "a", "count": 1}


def test_body_errors(client: Any) -> None:
    _problem(client.post("/things", data="{", content_type="application/json"), 400, "malformed_json")
    _problem(client.post("/things", data="", content_type="application/json"), 400, "malformed_json")
    _problem(client.post("/things", data='{"name": "a"}', content_type="text/plain"), 415, "unsupported_media_type")
    _problem(client.post("/things", data=b"\xff\xfe{}", content_type="application/json"), 400, "malformed_json")
    deep = '{"name": ' + "[" * 50_000 + "]" * 50_000 + "}"
    big = _problem(client.post("/things", data=deep, content_type="application/json"), 413, "payload_too_large")
    assert big["limit"] == 1024
    nested = '{"name": ' + "[" * 400 + "]" * 400 + "}"
    assert len(nested) < 1024
    body = _problem(client.post("/things", data=nested, content_type="application/json"), 422, "validation_failed")
    assert body["errors"][0]["field"] == "name"


def test_deep_json_within_the_size_limit_is_malformed_not_a_crash(platform: Platform) -> None:
    platform.settings.max_body_bytes = 1_000_000
    app = _build_app(platform)
    flask_app = Flask("unit-deep")
    with flask_app.test_request_context(
        "/things",
        method="POST",
        data='{"name": ' + "[" * 100_000 + "]" * 100_000 + "}",
        content_type="application/json",
    ):
        response = app.handle(request)
    _problem(response, 400, "malformed_json")


def test_route_body_limit_overrides_the_default(client: Any) -> None:
    ok = client.post("/small", json={"name": "a"})
    assert ok.status_code == 200
    _problem(client.post("/small", json={"name": "a" * 100}), 413, "payload_too_large")


def test_body_and_query_on_routes_that_take_none(client: Any) -> None:
    body = _problem(client.post("/nobody", json={"a": 1}), 422, "validation_failed")
    assert body["errors"][0]["type"] == "extra_forbidden"
    assert client.post("/nobody").status_code == 200
    body = _problem(client.get("/things/t-1?debug=1"), 422, "validation_failed")
    assert body["errors"] == [
        {"field": "debug", "in": "query", "message": "unknown parameter", "type": "extra_forbidden"}
    ]


def test_query_validation(client: Any) -> None:
    assert client.get("/search?q=shirt&limit=5").json == {"q": "shirt", "limit": 5}
    body = _problem(client.get("/search?limit=0"), 422, "validation_failed")
    assert body["errors"][0]["field"] == "limit" and body["errors"][0]["in"] == "query"
    body = _problem(client.get("/search?q=a&q=b"), 422, "validation_failed")
    assert body["errors"][0]["field"] == "q"


def test_unhandled_error_is_a_500_problem_without_internals(client: Any) -> None:
    response = client.get("/boom")
    body = _problem(response, 500, "internal_error")
    assert "passwd" not in response.get_data(as_text=True)
    assert body["detail"] == "Internal error"


def test_epox_error_from_a_handler_keeps_its_extensions(client: Any) -> None:
    body = _problem(client.get("/gone"), 404, "not_found")
    assert body["thing"] == "x"
    assert body["detail"] == "No such thing"


def test_client_id_without_a_principal_is_401(client: Any) -> None:
    _problem(client.get("/whoami"), 401, "unauthenticated")


def test_request_ids(client: Any) -> None:
    assert client.get("/health", headers={"X-Request-Id": "abc-DEF_123.x"}).headers["X-Request-Id"] == "abc-DEF_123.x"
    for bad in ("short", "with space ok", "x" * 129, "<script>alert</script>"):
        generated = client.get("/health", headers={"X-Request-Id": bad}).headers["X-Request-Id"]
        assert generated != bad and len(generated) == 32


def test_task_route_checks_secret_then_queue_headers(client: Any) -> None:
    queue = {"X-CloudTasks-QueueName": "q", "X-CloudTasks-TaskName": "t", "X-CloudTasks-TaskRetryCount": "2"}
    _problem(client.post("/work", headers=queue), 401, "unauthenticated")
    _problem(client.post("/work", headers={**queue, "Authorization": "Bearer wrong"}), 401, "unauthenticated")
    _problem(client.post("/work", headers={"Authorization": f"Bearer {SECRET}"}), 403, "forbidden")
    ok = client.post("/work", headers={**queue, "Authorization": f"Bearer {SECRET}"})
    assert ok.status_code == 200
    assert ok.json == {"queue": "q", "name": "t", "retry": 2}


def test_cors(client: Any) -> None:
    preflight = client.options("/things/t-1", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "DELETE"})
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert preflight.headers["Access-Control-Allow-Methods"] == "DELETE, GET, OPTIONS"
    assert "Idempotency-Key" in preflight.headers["Access-Control-Allow-Headers"]
    _problem(client.options("/nothing", headers={"Origin": ORIGIN}), 404, "not_found")
    other = client.options("/things/t-1", headers={"Origin": "https://other.test"})
    assert "Access-Control-Allow-Origin" not in other.headers
    assert "Access-Control-Allow-Methods" not in other.headers
    normal = client.get("/things/t-1", headers={"Origin": ORIGIN})
    assert normal.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Origin" in normal.headers.get_all("Vary")


# -- Idempotency-Key against an in-memory store --------------------------------------------------


def _run(
    store: IdempotencyStore, key: str, body: bytes, execute: Any, *, client_id: str = "c1", path: str = "/things"
) -> Any:
    keys = IdempotencyKeys(store, timedelta(hours=24), lambda: datetime(2026, 1, 1, tzinfo=UTC))
    with Flask("idem").test_request_context(path, method="POST", data=body, content_type="application/json"):
        return run_idempotent(keys, client_id=client_id, key=key, request=request, raw_body=body, execute=execute)


class _Counter:
    def __init__(self, status: int = 201) -> None:
        self.calls = 0
        self.status = status

    def __call__(self) -> Any:
        from flask import Response

        self.calls += 1
        return Response(
            json.dumps({"n": self.calls}),
            status=self.status,
            content_type="application/json",
            headers={"Location": "/t/1", "X-Other": "no"},
        )


def test_replay_returns_the_stored_response_without_running_again() -> None:
    store, execute = InMemoryIdempotencyStore(), _Counter()
    first = _run(store, "k", b'{"a": 1, "b": 2}', execute)
    again = _run(store, "k", b'{"b":2,"a":1}', execute)
    assert execute.calls == 1
    assert again.status_code == 201
    assert again.json == first.json == {"n": 1}
    assert again.headers["Idempotency-Replayed"] == "true"
    assert again.headers["Location"] == "/t/1"
    assert again.mimetype == "application/json"
    assert "X-Other" not in again.headers


def test_other_body_other_client_other_path() -> None:
    store, execute = InMemoryIdempotencyStore(), _Counter()
    _run(store, "k", b'{"a": 1}', execute)
    with pytest.raises(IdempotencyKeyReused):
        _run(store, "k", b'{"a": 2}', execute)
    assert _run(store, "k", b'{"a": 2}', execute, client_id="c2").status_code == 201
    assert _run(store, "k", b'{"a": 1}', execute, path="/other").status_code == 201
    assert execute.calls == 3


def test_in_flight_key_is_409_in_progress() -> None:
    store = InMemoryIdempotencyStore()
    seen: list[Any] = []

    def execute() -> Any:
        with pytest.raises(IdempotencyRequestInProgress) as caught:
            _run(store, "k", b"{}", _Counter())
        seen.append(caught.value)
        return _Counter()()

    assert _run(store, "k", b"{}", execute).status_code == 201
    assert seen and seen[0].status == 409


def test_errors_free_the_key() -> None:
    store = InMemoryIdempotencyStore()
    failing = _Counter(status=402)
    assert _run(store, "k", b"{}", failing).status_code == 402
    assert store.records == {}

    def explode() -> Any:
        raise _BoomError()

    with pytest.raises(_BoomError):
        _run(store, "k", b"{}", explode)
    assert store.records == {}
    ok = _Counter()
    assert _run(store, "k", b"{}", ok).status_code == 201
    assert "Idempotency-Replayed" not in _run(store, "k2", b"{}", ok).headers


@pytest.mark.parametrize("key", ["", "x" * 256, "sp ace", "tab\t", "caf\u00e9", "new\nline"])
def test_invalid_keys_are_400(key: str) -> None:
    from shared.errors import BadRequest

    store = InMemoryIdempotencyStore()
    with pytest.raises(BadRequest):
        _run(store, key, b"{}", _Counter())
    assert store.records == {}


def test_fingerprint_covers_method_path_query_and_canonical_body() -> None:
    flask_app = Flask("fp")

    def fingerprint(path: str, body: bytes, method: str = "POST") -> str:
        with flask_app.test_request_context(path, method=method, data=body):
            return fingerprint_request(request, body)

    base = fingerprint("/things", b'{"a": 1, "b": [1, 2]}')
    assert fingerprint("/things", b'{"b":[1,2],"a":1}') == base
    assert fingerprint("/things", b'{"a": 1, "b": [2, 1]}') != base
    assert fingerprint("/things?x=1", b'{"a": 1, "b": [1, 2]}') != base
    assert fingerprint("/other", b'{"a": 1, "b": [1, 2]}') != base
    assert fingerprint("/things", b'{"a": 1, "b": [1, 2]}', method="PUT") != base
    assert fingerprint("/things", b"not json") != fingerprint("/things", b"not json!")
