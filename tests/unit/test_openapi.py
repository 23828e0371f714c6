"""The API contract document: built from the route table, valid OpenAPI 3.1, current in the repository,
served by every function, and checked against every problem the router sends."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from flask import Flask, request
from openapi_spec_validator import validate as validate_spec
from pydantic import BaseModel, ConfigDict
from werkzeug.routing import Rule

from dev.openapi import DOCUMENT, build, entry_point_apps, render
from shared.config import Settings
from shared.errors import Conflict, InsufficientCredits, NotFound
from shared.http.app import Access, HttpApp, JsonResponse, NoBody, NoQuery, RequestContext
from shared.http.openapi import ContractError, documented_problems, function_document, merged_document
from shared.pagination import Page, PageQuery
from shared.platform import Platform
from tests.fakes import InMemoryObjectStore, RecordingTaskQueue


class _Widget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class _WidgetOut(BaseModel):
    id: str
    name: str


class _WidgetSearch(PageQuery):
    colour: str | None = None


def _app(platform: Platform | None = None) -> HttpApp:
    app = HttpApp("widget_api", platform_factory=(lambda: platform) if platform else None)

    @app.post("/widgets", body=_Widget, status=201, idempotent=True, errors=(InsufficientCredits,))
    def create_widget(ctx: RequestContext[_Widget, NoQuery]) -> JsonResponse[_WidgetOut]:
        """Create a widget.

        Costs one credit."""
        if ctx.body.name == "poor":
            raise InsufficientCredits()
        if ctx.body.name == "taken":
            raise Conflict("undocumented on purpose")
        return JsonResponse(_WidgetOut(id="w1", name=ctx.body.name), status=201, headers={"Location": "/widgets/w1"})

    @app.get("/widgets", query=_WidgetSearch)
    def list_widgets(ctx: RequestContext[NoBody, _WidgetSearch]) -> Page[_WidgetOut]:
        return Page[_WidgetOut](items=[])

    @app.get("/widgets/<widget_id>", access=Access.ADMIN)
    def get_widget(ctx: RequestContext[NoBody, NoQuery]) -> _WidgetOut:
        raise NotFound()

    @app.delete("/widgets/<widget_id>", status=204)
    def delete_widget(ctx: RequestContext[NoBody, NoQuery]) -> None:
        return None

    @app.post("/tasks/polish", body=_Widget, access=Access.TASK)
    def polish(ctx: RequestContext[_Widget, NoQuery]) -> _WidgetOut:
        return _WidgetOut(id="w1", name="shiny")

    return app


def test_the_repository_document_is_current_and_valid() -> None:
    """docs/openapi.json is what the routes say now (run `make openapi` after changing a route)."""
    document = build()
    validate_spec(document)  # type: ignore[arg-type]
    assert DOCUMENT.read_text() == render(document), "docs/openapi.json is stale: run `make openapi` and commit it"


def test_every_function_serves_its_own_valid_document() -> None:
    apps = entry_point_apps()
    assert {app.service for app in apps} >= {"catalog_api", "billing_api", "stripe_webhook", "generate_tasks"}
    for app in apps:
        document = function_document(app)
        validate_spec(document)  # type: ignore[arg-type]
        served = {(path, method) for path, methods in document["paths"].items() for method in methods}
        declared = {(_openapi_path(r.template), r.method.lower()) for r in app.routes}
        assert served == declared, app.service


def _openapi_path(template: str) -> str:
    return template.replace("<", "{").replace(">", "}")


def test_operations_state_their_models_security_and_problems() -> None:
    document = function_document(_app())
    validate_spec(document)  # type: ignore[arg-type]
    create = document["paths"]["/widgets"]["post"]
    assert create["operationId"] == "widget_api.create_widget"
    assert create["summary"] == "Create a widget." and create["description"] == "Costs one credit."
    assert create["security"] == [{"bearerAuth": []}]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/_Widget"}
    created = create["responses"]["201"]
    assert created["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/_WidgetOut"}
    assert set(created["headers"]) == {"Location", "Idempotency-Replayed"}
    [key] = [p for p in create["parameters"] if p["in"] == "header"]
    assert key["name"] == "Idempotency-Key" and not key["required"]
    codes = {status: _codes(answer) for status, answer in create["responses"].items() if int(status) >= 400}
    assert codes["402"] == ["insufficient_credits"]
    assert codes["409"] == ["idempotency_key_reused", "idempotency_request_in_progress"]
    assert set(codes["400"]) == {"bad_request", "malformed_json"}
    assert codes["401"] == ["unauthenticated"] and codes["415"] == ["unsupported_media_type"]
    assert set(codes["503"]) == {"upstream_unavailable"}
    assert "404" not in codes  # no path parameter, no use-case 404

    listing = document["paths"]["/widgets"]["get"]
    query = {p["name"]: p for p in listing["parameters"]}
    assert set(query) == {"limit", "cursor", "colour"}
    assert query["limit"]["schema"]["maximum"] == 100 and not query["limit"]["required"]

    admin = document["paths"]["/widgets/{widget_id}"]["get"]
    assert admin["x-epox-access"] == "admin" and "operator" in admin["description"]
    [path_param] = admin["parameters"]
    assert path_param["in"] == "path" and path_param["schema"]["pattern"].startswith("^[A-Za-z0-9]")
    assert _codes(admin["responses"]["404"]) == ["not_found"]
    assert _codes(admin["responses"]["403"]) == ["forbidden"]

    deleted = document["paths"]["/widgets/{widget_id}"]["delete"]["responses"]["204"]
    assert "content" not in deleted

    internal = document["paths"]["/tasks/polish"]["post"]
    assert internal["x-internal"] is True and internal["security"] == [{"taskAuth": []}]
    assert document["paths"]["/health"]["get"]["security"] == []


def _codes(answer: dict[str, Any]) -> list[str]:
    schema = answer["content"]["application/problem+json"]["schema"]
    return list(schema["allOf"][1]["properties"]["code"]["enum"])


def test_the_merged_document_prefixes_each_entry_point() -> None:
    other = HttpApp("gadget_tasks")

    @other.post("/jobs/sweep", access=Access.SCHEDULER)
    def sweep(ctx: RequestContext[NoBody, NoQuery]) -> _WidgetOut:
        return _WidgetOut(id="x", name="y")

    document = merged_document([_app(), other])
    validate_spec(document)  # type: ignore[arg-type]
    assert "/widget_api/widgets/{widget_id}" in document["paths"]
    assert "/gadget_tasks/jobs/sweep" in document["paths"]
    sweep_codes = _codes(document["paths"]["/gadget_tasks/jobs/sweep"]["post"]["responses"]["500"])
    assert sweep_codes == ["scheduled_job_incomplete"]
    tags = {tag["name"]: tag for tag in document["tags"]}
    assert tags["gadget_tasks"]["x-internal"] is True and "x-internal" not in tags["widget_api"]


def test_a_route_without_a_response_model_cannot_be_documented() -> None:
    app = HttpApp("loose_api")

    @app.get("/loose")
    def loose(ctx: RequestContext[NoBody, NoQuery]) -> dict[str, str]:
        return {}

    with pytest.raises(ContractError, match="GET /loose"):
        function_document(app)


@pytest.fixture
def widget_client() -> Any:
    settings = Settings(epox_env="test", auth_jwks_url="", cors_allowed_origins=[])
    platform = Platform(settings, object_store=InMemoryObjectStore(), task_queue=RecordingTaskQueue())
    app = _app(platform)
    flask_app = Flask("widgets")
    flask_app.url_map.add(Rule("/", defaults={"path": ""}, endpoint="run"))
    flask_app.url_map.add(Rule("/<path:path>", endpoint="run"))
    flask_app.view_functions["run"] = lambda path: app.handle(request)
    return app, flask_app.test_client()


def test_openapi_json_is_served_without_credentials(widget_client: Any) -> None:
    app, client = widget_client
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.get_json() == json.loads(json.dumps(function_document(app)))


def test_documented_problems_are_the_implied_ones_and_the_routes_own(widget_client: Any) -> None:
    app, _ = widget_client
    [route] = [r for r in app.routes if r.template == "/widgets" and r.method == "POST"]
    problems = documented_problems(app, route)
    assert problems[402] == {"insufficient_credits"}
    assert "conflict" not in problems[409]
    assert problems[422] == {"validation_failed"}


@pytest.mark.undocumented_problems
def test_the_router_logs_an_undocumented_problem() -> None:
    from tests.conftest import _UndocumentedProblems

    settings = Settings(epox_env="test", cors_allowed_origins=[])
    platform = Platform(settings, object_store=InMemoryObjectStore(), task_queue=RecordingTaskQueue())
    app = HttpApp("widget_api", platform_factory=lambda: platform)

    @app.get("/conflict", access=Access.PUBLIC)
    def conflict(ctx: RequestContext[NoBody, NoQuery]) -> _WidgetOut:
        raise Conflict("not in the contract")

    @app.get("/documented", access=Access.PUBLIC, errors=(Conflict,))
    def documented(ctx: RequestContext[NoBody, NoQuery]) -> _WidgetOut:
        raise Conflict("in the contract")

    collector = _UndocumentedProblems()
    logger = logging.getLogger("epox.http")
    logger.addHandler(collector)
    try:
        with Flask("c").test_request_context("/documented"):
            assert app.handle(request).status_code == 409
        assert collector.seen == []
        with Flask("c").test_request_context("/conflict"):
            assert app.handle(request).status_code == 409
    finally:
        logger.removeHandler(collector)
    assert collector.seen == ["undocumented problem 409 conflict on GET /conflict"]


@pytest.mark.parametrize("path", ["/jobs/a%0Ab", "/robots.txt", "/favicon.ico"])
def test_a_path_the_framework_cannot_route_is_a_problem(function_apps: dict[str, Any], path: str) -> None:
    """functions-framework answers these itself (its rule does not match a line break); Flask's HTML
    page would break every client that reads problems."""
    response = function_apps["generate_api"].test_client().get(path)
    assert response.status_code == 404 and response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == "not_found"


def test_importing_a_function_outside_the_framework_registers_nothing(function_apps: dict[str, Any]) -> None:
    """make openapi and the dev stack import every main.py after the framework built its apps: the
    handler must not land on whichever app the framework made last (Flask refuses once it has served)."""
    import importlib

    import functions.billing.main as billing_main

    for app in function_apps.values():  # every app has served: Flask now refuses new handlers on it
        assert app.test_client().get("/robots.txt").mimetype == "application/problem+json"
    importlib.reload(billing_main)  # no app context here: a no-op, not an AssertionError
