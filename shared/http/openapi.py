"""The API contract: an OpenAPI 3.1 document built from an :class:`HttpApp`'s route table.

Everything comes from the declarations the router already enforces, so the document cannot drift from
what is served: paths and path parameters from the templates, query parameters and request bodies from
the routes' pydantic models, the success body from the handler's return annotation (``Model``,
``JsonResponse[Model]``, ``None`` for 204) or the route's ``responses=``, and the problems each route
can answer with — the ones its declaration implies (validation, authentication, ``Idempotency-Key``,
size, availability) plus its own ``errors=`` — grouped by status with their stable ``code`` values.

:func:`function_document` is what ``GET /openapi.json`` serves; :func:`merged_document` joins every
entry point under ``/<entry point>`` (the URL each has in the dev stack and on Cloud Functions) for
``docs/openapi.json``. :func:`documented_problems` is what the router checks every problem it sends
against (an undocumented one is logged at ERROR).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from shared.errors import (
    BadRequest,
    EpoxError,
    Forbidden,
    IdempotencyKeyReused,
    IdempotencyRequestInProgress,
    MalformedJson,
    NotFound,
    PayloadTooLarge,
    Unauthenticated,
    UnsupportedMediaType,
    UpstreamUnavailable,
    ValidationFailed,
    VendorNotConfigured,
)
from shared.http.problems import PROBLEM_CONTENT_TYPE
from shared.http.routes import Access, JsonResponse
from shared.pagination import InvalidCursor, PageQuery
from shared.scheduled import JobIncomplete
from shared.tasks import RetryTask

if TYPE_CHECKING:
    from shared.http.app import HttpApp
    from shared.http.routes import Route

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1"
# The router's path parameter pattern (shared.http.app._compile), stated for callers.
PATH_PARAMETER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.~-]{0,199}$"
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
_REF = "#/components/schemas/{model}"
_INTERNAL = frozenset({Access.TASK, Access.SCHEDULER})
_PLUMBING = frozenset({"/health", "/openapi.json"})  # answered without touching any dependency

_STATUS_TEXT = {
    400: "Bad request",
    401: "Not signed in, or the credentials are not valid",
    402: "Payment required",
    403: "Not allowed",
    404: "Not found (also another tenant's id)",
    405: "Method not allowed",
    409: "Conflict with the current state",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "The request or its content is not valid",
    429: "Too many requests",
    500: "Server error",
    502: "A provider refused the request",
    503: "A dependency is unavailable; retry after Retry-After seconds",
}


# -- problems ---------------------------------------------------------------------------------------


def _implied_errors(app: HttpApp, route: Route) -> list[type[EpoxError]]:
    """The problems the pipeline itself answers with for a route declared like this one."""
    errors: list[type[EpoxError]] = [ValidationFailed, PayloadTooLarge]  # unknown fields/parameters; size
    if route.body_model is not None:
        errors += [MalformedJson, UnsupportedMediaType]
    if route.path_params:
        errors.append(NotFound)
    if route.query_model is not None and issubclass(route.query_model, PageQuery):
        errors.append(InvalidCursor)
    if route.access is not Access.PUBLIC:
        # 401 bad or missing credentials; 403 a token without a client, a non-operator on an admin route,
        # a task call from elsewhere; 503 the identity provider's keys cannot be fetched.
        errors += [Unauthenticated, Forbidden, UpstreamUnavailable]
    if route.idempotent:
        errors += [BadRequest, IdempotencyKeyReused, IdempotencyRequestInProgress]
    if route.template not in _PLUMBING:
        errors += [UpstreamUnavailable]  # Firestore, R2 or a vendor busy or down
        if app.declared_needs:
            errors.append(VendorNotConfigured)
    if route.access is Access.SCHEDULER:
        errors.append(JobIncomplete)
    if route.access is Access.TASK:
        errors.append(RetryTask)  # 503 + Retry-After: Cloud Tasks delivers the task again later
    return errors


# Keyed by id() with the route kept alive beside its entry: a freed route's id is reused by the next
# object, which must not inherit its problems (seen in the tests, where apps come and go).
_DOCUMENTED: dict[int, tuple[Route, dict[int, frozenset[str]]]] = {}


def documented_problems(app: HttpApp, route: Route) -> dict[int, frozenset[str]]:
    """Status → the problem ``code`` values the contract lists for ``route``."""
    entry = _DOCUMENTED.get(id(route))
    if entry is not None and entry[0] is route:
        return entry[1]
    by_status: dict[int, set[str]] = {}
    for error in [*_implied_errors(app, route), *route.errors]:
        by_status.setdefault(error.status, set()).add(error.code)
    cached = {status: frozenset(codes) for status, codes in by_status.items()}
    _DOCUMENTED[id(route)] = (route, cached)
    return cached


def _problem_response(status: int, codes: Iterable[str]) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _STATUS_TEXT.get(status, "Error"),
        "content": {
            PROBLEM_CONTENT_TYPE: {
                "schema": {
                    "allOf": [
                        {"$ref": _REF.format(model="Problem")},
                        {"properties": {"status": {"const": status}, "code": {"enum": sorted(codes)}}},
                    ]
                }
            }
        },
    }
    if status == 401:
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "RFC 6750"}}
    if status == 503:
        response["headers"] = {
            "Retry-After": {"schema": {"type": "string"}, "description": "Seconds to wait before retrying"}
        }
    return response


_PROBLEM_SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details; `code` is stable, `detail` is for people.",
        "required": ["type", "title", "status", "detail", "code"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "code": {"type": "string"},
            "instance": {"type": "string"},
            "request_id": {"type": "string"},
            "errors": {"type": "array", "items": {"$ref": _REF.format(model="FieldError")}},
        },
        "additionalProperties": True,
    },
    "FieldError": {
        "type": "object",
        "description": "One invalid field of a 422 `validation_failed`.",
        "required": ["field", "in", "message", "type"],
        "properties": {
            "field": {"type": "string"},
            "in": {"type": "string", "enum": ["body", "query"]},
            "message": {"type": "string"},
            "type": {"type": "string"},
        },
    },
}


# -- success answers --------------------------------------------------------------------------------


class ContractError(TypeError):
    """A route whose success answer the document cannot state (raised while building it)."""


def success_responses(route: Route) -> dict[int, type[BaseModel] | None]:
    """Status → the model of the body (None: no body) a route answers with when it succeeds."""
    if route.responses:
        return dict(route.responses)
    if route.status == 204:
        return {204: None}
    if route.produces is not None:
        return {route.status: None}
    hint = _return_hint(route)
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return {route.status: hint}
    if typing.get_origin(hint) is JsonResponse:
        (model,) = typing.get_args(hint)
        if isinstance(model, type) and issubclass(model, BaseModel):
            return {route.status: model}
    raise ContractError(
        f"{route.method} {route.template}: the handler's return type ({hint!r}) names no response model; "
        "return a pydantic model or JsonResponse[Model], or declare responses= / produces="
    )


def _return_hint(route: Route) -> Any:
    handler = route.handler
    annotation = inspect.get_annotations(handler).get("return")
    if isinstance(annotation, str):  # postponed annotations: evaluate in the handler's module
        namespace = {**getattr(handler, "__globals__", {}), "JsonResponse": JsonResponse}
        try:
            return eval(annotation, namespace)  # noqa: S307 - a type expression from our own source
        except NameError:
            return annotation
    return annotation


# -- the document -----------------------------------------------------------------------------------


def _summary(route: Route) -> tuple[str, str | None]:
    doc = inspect.getdoc(route.handler)
    name = route.handler.__name__.strip("_").removesuffix("_route").replace("_", " ")
    if not doc:
        return name[:1].upper() + name[1:], None
    first, _, rest = doc.partition("\n\n")
    return " ".join(first.split()), rest.strip() or None


def _security(access: Access) -> list[dict[str, list[str]]]:
    if access is Access.PUBLIC:
        return []
    if access in _INTERNAL:
        return [{"taskAuth": []}]
    return [{"bearerAuth": []}]


def _parameters(route: Route, components: dict[str, Any], query_ref: dict[str, Any] | None) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string", "pattern": PATH_PARAMETER_PATTERN},
        }
        for name in route.path_params
    ]
    if query_ref is not None:
        schema = components[query_ref["$ref"].rsplit("/", 1)[1]]
        required = set(schema.get("required", ()))
        for name, prop in schema.get("properties", {}).items():
            parameter: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
            if "description" in prop:
                parameter["description"] = prop["description"]
            parameters.append(parameter)
    if route.idempotent:
        parameters.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "Run the request at most once per key (24 h): a retry with the same key and "
                "body replays the first success; another body under the key is a 409.",
                "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
            }
        )
    if route.raw and route.template == "/":
        parameters.append(
            {
                "name": "Stripe-Signature",
                "in": "header",
                "required": True,
                "description": "Stripe's signature of the raw body (t=…,v1=…), verified before anything is read.",
                "schema": {"type": "string"},
            }
        )
    return parameters


def _operation(
    app: HttpApp, route: Route, refs: dict[tuple[Any, str], dict[str, Any]], components: dict[str, Any]
) -> dict[str, Any]:
    summary, description = _summary(route)
    notes = [description] if description else []
    if route.access is Access.ADMIN:
        notes.append("Platform operators only: the token must carry the operator claim (a tenant role is not enough).")
    if route.access in _INTERNAL:
        who = "Cloud Tasks" if route.access is Access.TASK else "Cloud Scheduler"
        notes.append(f"Internal: called by {who} with an OIDC token, not by the frontend.")
    operation: dict[str, Any] = {
        "operationId": f"{app.service}.{route.handler.__name__.strip('_')}",
        "summary": summary,
        "tags": [app.service],
        "security": _security(route.access),
    }
    if notes:
        operation["description"] = "\n\n".join(notes)
    if route.access in _INTERNAL:
        operation["x-internal"] = True
    operation["x-epox-access"] = route.access.value
    query_ref = refs.get((route.query_model, "validation")) if route.query_model is not None else None
    parameters = _parameters(route, components, query_ref)
    if parameters:
        operation["parameters"] = parameters
    if route.body_model is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(route.body_model, "validation")]}},
        }
    elif route.raw:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    responses: dict[str, Any] = {}
    for status, model in success_responses(route).items():
        # A declared 4xx "success" is a page a handler answers itself (an HTML error page), not a problem.
        description = "Done; no body" if status == 204 else "Success" if status < 400 else "An error page"
        answer: dict[str, Any] = {"description": description}
        if model is not None:
            answer["content"] = {"application/json": {"schema": refs[(model, "serialization")]}}
        elif route.produces is not None:
            answer["content"] = {route.produces: {"schema": {"type": "string"}}}
        headers: dict[str, Any] = {}
        if status in (201, 202):
            headers["Location"] = {"schema": {"type": "string"}, "description": "Where the resource can be read"}
        if route.idempotent:
            headers["Idempotency-Replayed"] = {
                "schema": {"type": "string", "enum": ["true"]},
                "description": "Present when this answer is the replay of an earlier request with the same key",
            }
        if headers:
            answer["headers"] = headers
        responses[str(status)] = answer
    for status, codes in sorted(documented_problems(app, route).items()):
        responses[str(status)] = _problem_response(status, codes)
    operation["responses"] = responses
    return operation


def _models(routes: Iterable[Route]) -> list[tuple[type[BaseModel], typing.Literal["validation", "serialization"]]]:
    wanted: list[tuple[type[BaseModel], typing.Literal["validation", "serialization"]]] = []
    for route in routes:
        if route.body_model is not None:
            wanted.append((route.body_model, "validation"))
        if route.query_model is not None:
            wanted.append((route.query_model, "validation"))
        for model in success_responses(route).values():
            if model is not None:
                wanted.append((model, "serialization"))
    return list(dict.fromkeys(wanted))


def build_document(
    apps: Iterable[HttpApp], *, title: str, prefix_paths: bool, servers: list[dict[str, Any]]
) -> dict[str, Any]:
    """OpenAPI 3.1 for ``apps``; with ``prefix_paths`` each path is served under ``/<entry point>``."""
    apps = list(apps)
    pairs = [(app, route) for app in apps for route in app.routes]
    refs_by_key, definitions = models_json_schema(_models(r for _, r in pairs), ref_template=_REF)
    components: dict[str, Any] = {**definitions.get("$defs", {}), **_PROBLEM_SCHEMAS}
    refs: dict[tuple[Any, str], dict[str, Any]] = {key: dict(schema) for key, schema in refs_by_key.items()}
    paths: dict[str, dict[str, Any]] = {}
    for app, route in pairs:
        path = route.template
        for name in route.path_params:
            path = path.replace(f"<{name}>", "{" + name + "}")
        if prefix_paths:
            path = f"/{app.service}" + ("" if path == "/" else path)
        paths.setdefault(path, {})[route.method.lower()] = _operation(app, route, refs, components)
    tags = [
        {
            "name": app.service,
            **({"x-internal": True} if _is_internal(app) else {}),
            "description": _tag_description(app),
        }
        for app in apps
    ]
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": API_VERSION,
            "description": (
                "Epox's HTTP API. Errors are RFC 9457 problems (`application/problem+json`) with a stable "
                "`code`; lists are cursor-paginated (`limit`, `cursor` in; `items`, `next_cursor` out); "
                "ids of another tenant answer 404. Operations marked `x-internal` are called by Cloud Tasks "
                "and Cloud Scheduler only."
            ),
        },
        "servers": servers,
        "tags": tags,
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "The identity provider's JWT (AUTH_ISSUER / AUTH_AUDIENCE; EdDSA, RS256 or "
                    "ES256). Admin operations also need the operator claim (AUTH_PLATFORM_ADMIN_CLAIM).",
                },
                "taskAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Google-signed OIDC token of the tasks service account (Cloud Tasks, "
                    "Cloud Scheduler); a shared secret in the local stack.",
                },
            },
        },
    }


def _is_internal(app: HttpApp) -> bool:
    return all(route.access in _INTERNAL or route.template in _PLUMBING for route in app.routes)


def _tag_description(app: HttpApp) -> str:
    if _is_internal(app):
        return f"Internal: the workers and scheduled jobs of {app.service.rsplit('_', 1)[0]}."
    return f"The {app.service} function."


def function_document(app: HttpApp) -> dict[str, Any]:
    """What ``GET /openapi.json`` of one function serves: its routes, relative to the function's URL."""
    return build_document(
        [app], title=f"Epox {app.service}", prefix_paths=False, servers=[{"url": ".", "description": "this function"}]
    )


def merged_document(apps: Iterable[HttpApp]) -> dict[str, Any]:
    """Every entry point in one document (``docs/openapi.json``), each under ``/<entry point>``."""
    return build_document(
        sorted(apps, key=lambda app: app.service),
        title="Epox API",
        prefix_paths=True,
        servers=[
            {"url": "http://127.0.0.1:8000", "description": "the local stack (make dev)"},
            {
                "url": "https://{region}-{project}.cloudfunctions.net",
                "description": "a deployment (Cloud Functions)",
                "variables": {"region": {"default": "europe-west1"}, "project": {"default": "epox-prod"}},
            },
        ],
    )
