"""A small router for one Cloud Function: method + path routing, validation, auth, problems.

Modelled on Powertools' event handler: an :class:`HttpApp` collects routes declared with decorators
and ``handle(request)`` runs one request through the same pipeline every time — request id and
trace binding, CORS, body size limit, authentication, pydantic validation of body and query,
``Idempotency-Key`` replay, the handler, and RFC 9457 problems for every error.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, Unpack

from pydantic import BaseModel, ValidationError

from shared import logging as log
from shared.errors import (
    BadRequest,
    EpoxError,
    MalformedJson,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
    validation_problem,
)
from shared.http.problems import PROBLEM_CONTENT_TYPE, problem_response

# The declarations are re-exported: a function's main.py imports everything HTTP from here.
from shared.http.routes import (
    Access,
    BodyT,
    Handler,
    JsonResponse,
    NoBody,
    NoQuery,
    OutT,
    QueryT,
    RequestContext,
    ResultT,
    Route,
    RouteDecorator,
    RouteOptions,
    compile_template,
)
from shared.needs import Need

if TYPE_CHECKING:
    from flask import Request, Response

    from shared.auth import Principal
    from shared.platform import Platform
    from shared.tasks import TaskCall

__all__ = [
    "Access",
    "BodyT",
    "Handler",
    "HttpApp",
    "JsonResponse",
    "NoBody",
    "NoQuery",
    "OutT",
    "QueryT",
    "RequestContext",
    "ResultT",
    "Route",
    "RouteDecorator",
    "RouteOptions",
    "to_response",
]

logger = log.get_logger("epox.http")


class HttpApp:
    """The routes of one deployable entry point and the pipeline that serves them."""

    def __init__(
        self,
        service: str,
        *,
        needs: Collection[Need] = (),
        platform_factory: Callable[[], Platform] | None = None,
    ) -> None:
        """``service``: the entry point's name; ``needs``: the groups of settings its routes use beyond
        what their access implies (R2, Stripe, Gemini, the task queue…), all that production demands."""
        self.service = service
        self.routes: list[Route] = []
        self.declared_needs = frozenset(needs)
        self._platform_factory = platform_factory
        self._openapi: dict[str, Any] | None = None
        self.get("/health", access=Access.PUBLIC)(self._health)
        self.get("/openapi.json", access=Access.PUBLIC)(self._openapi_document)

    @property
    def needs(self) -> frozenset[Need]:
        """The settings groups this entry point needs: the declared ones, user JWTs for USER/ADMIN routes,
        OIDC task credentials for TASK/SCHEDULER routes."""
        needs = set(self.declared_needs)
        accesses = {route.access for route in self.routes}
        if accesses & {Access.USER, Access.ADMIN}:
            needs.add(Need.AUTH)
        if accesses & {Access.TASK, Access.SCHEDULER}:
            needs.add(Need.TASK_CALLS)
        return frozenset(needs)

    # -- declaration -------------------------------------------------------------------------
    def route(
        self,
        method: str,
        path: str,
        *,
        body: type[BodyT] | None = None,
        query: type[QueryT] | None = None,
        **options: Unpack[RouteOptions],
    ) -> RouteDecorator[BodyT, QueryT]:
        """Declare a route whose handler takes ``RequestContext[body, query]`` (``NoBody`` / ``NoQuery``
        when omitted); ``raw`` hands the handler the unparsed body (signed webhooks)."""

        def register(
            handler: Callable[[RequestContext[BodyT, QueryT]], ResultT],
        ) -> Callable[[RequestContext[BodyT, QueryT]], ResultT]:
            self.routes.append(
                Route(
                    method=method.upper(),
                    template=path,
                    pattern=compile_template(path),
                    handler=handler,
                    body_model=body,
                    query_model=query,
                    status=options.get("status", 200),
                    access=options.get("access", Access.USER),
                    idempotent=options.get("idempotent", False),
                    max_body_bytes=options.get("max_body_bytes"),
                    raw=options.get("raw", False),
                    errors=tuple(options.get("errors", ())),
                    responses=dict(options.get("responses", {})),
                    produces=options.get("produces"),
                )
            )
            return handler

        return register

    def get(
        self,
        path: str,
        *,
        body: type[BodyT] | None = None,
        query: type[QueryT] | None = None,
        **options: Unpack[RouteOptions],
    ) -> RouteDecorator[BodyT, QueryT]:
        """Declare a GET route (see :meth:`route`)."""
        return self.route("GET", path, body=body, query=query, **options)

    def post(
        self,
        path: str,
        *,
        body: type[BodyT] | None = None,
        query: type[QueryT] | None = None,
        **options: Unpack[RouteOptions],
    ) -> RouteDecorator[BodyT, QueryT]:
        """Declare a POST route (see :meth:`route`)."""
        return self.route("POST", path, body=body, query=query, **options)

    def patch(
        self,
        path: str,
        *,
        body: type[BodyT] | None = None,
        query: type[QueryT] | None = None,
        **options: Unpack[RouteOptions],
    ) -> RouteDecorator[BodyT, QueryT]:
        """Declare a PATCH route (see :meth:`route`)."""
        return self.route("PATCH", path, body=body, query=query, **options)

    def put(
        self,
        path: str,
        *,
        body: type[BodyT] | None = None,
        query: type[QueryT] | None = None,
        **options: Unpack[RouteOptions],
    ) -> RouteDecorator[BodyT, QueryT]:
        """Declare a PUT route (see :meth:`route`)."""
        return self.route("PUT", path, body=body, query=query, **options)

    def delete(
        self,
        path: str,
        *,
        body: type[BodyT] | None = None,
        query: type[QueryT] | None = None,
        **options: Unpack[RouteOptions],
    ) -> RouteDecorator[BodyT, QueryT]:
        """Declare a DELETE route (see :meth:`route`)."""
        return self.route("DELETE", path, body=body, query=query, **options)

    # -- serving -----------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        """Serve one request; never raises."""
        request_id = _request_id(request)
        trace = log.trace_from_headers(request.headers)
        token = log.bind(request_id=request_id, service=self.service, **(trace.log_fields() if trace else {}))
        started = time.perf_counter()
        platform: Platform | None = None
        route: Route | None = None
        response: Response
        try:
            try:
                platform = self._platform()
                if request.method == "OPTIONS":
                    response = _preflight(request, self, platform.settings.cors_allowed_origins)
                else:
                    route, params = self._match(request)
                    response = self._dispatch(route, params, request, platform, request_id)
            except EpoxError as error:
                response = problem_response(error, instance=request.path, request_id=request_id)
            except Exception:
                logger.exception("unhandled error in %s %s", request.method, request.path)
                response = problem_response(EpoxError(), instance=request.path, request_id=request_id)
            if route is not None and response.status_code >= 400:
                self._check_documented(route, response)
            response.headers["X-Request-Id"] = request_id
            if platform is not None:
                _apply_cors(request, response, platform.settings.cors_allowed_origins)
            logger.info(
                "%s %s -> %s",
                request.method,
                request.path,
                response.status_code,
                extra={
                    "fields": {
                        "httpRequest": {
                            "requestMethod": request.method,
                            "requestUrl": request.path,
                            "status": response.status_code,
                            "latency": f"{time.perf_counter() - started:.4f}s",
                        },
                    }
                },
            )
        finally:
            log.reset(token)
        return response

    def _platform(self) -> Platform:
        if self._platform_factory is not None:
            return self._platform_factory()
        from shared.platform import get_platform

        return get_platform(self.needs)

    def _match(self, request: Request) -> tuple[Route, dict[str, str]]:
        path = request.path or "/"
        allowed: list[str] = []
        for route in self.routes:
            match = route.pattern.match(path)
            if match is None:
                continue
            if route.method == request.method or (request.method == "HEAD" and route.method == "GET"):
                return route, match.groupdict()
            allowed.append(route.method)
        if allowed:
            error = MethodNotAllowed(f"{request.method} is not allowed on {path}")
            error.headers["Allow"] = ", ".join(sorted(set(allowed)))
            raise error
        raise NotFound(f"No route for {path}")

    def _check_documented(self, route: Route, response: Response) -> None:
        """Log at ERROR a problem the route's contract does not list, so the contract stays true: the
        test suite fails on these logs, and in production an operator sees the drift."""
        from shared.http.openapi import documented_problems

        code = _problem_code(response)
        if code is None or code == EpoxError.code:  # an unhandled error is logged as one already
            return
        if code not in documented_problems(self, route).get(response.status_code, ()):
            logger.error(
                "undocumented problem %s %s on %s %s",
                response.status_code,
                code,
                route.method,
                route.template,
                extra={"fields": {"undocumented_problem": {"status": response.status_code, "code": code}}},
            )

    def _dispatch(
        self, route: Route, params: dict[str, str], request: Request, platform: Platform, request_id: str
    ) -> Response:
        limit = route.max_body_bytes or platform.settings.max_body_bytes
        raw_body = _read_body(request, limit)

        principal: Principal | None = None
        task: TaskCall | None = None
        if route.access in (Access.USER, Access.ADMIN):
            principal = platform.authenticate(request.headers.get("Authorization"))
            if route.access is Access.ADMIN:
                principal.require_platform_admin()
            log.bind(client_id=principal.client_id, user_id=principal.user_id)
            platform.onboarding.ensure(principal)  # tenancy: a new client's record, plan and bonus
        elif route.access is Access.TASK:
            task = platform.verify_task_call(request)
        elif route.access is Access.SCHEDULER:
            platform.verify_scheduler_call(request)

        body = NoBody() if route.raw else _parse_body(route, request, raw_body)
        query = _parse_query(route, request)
        ctx: RequestContext[Any, Any] = RequestContext(
            request=request,
            platform=platform,
            request_id=request_id,
            path_params=params,
            body=body,
            query=query,
            principal=principal,
            task=task,
            raw_body=raw_body,
        )
        key = request.headers.get("Idempotency-Key")
        if route.idempotent and key is not None and principal is not None:
            from shared.http.idempotency import run_idempotent

            return run_idempotent(
                platform.idempotency_keys(),
                client_id=principal.client_id,
                key=key,
                request=request,
                raw_body=raw_body,
                execute=lambda: self._run(route, ctx),
            )
        return self._run(route, ctx)

    def _run(self, route: Route, ctx: RequestContext[Any, Any]) -> Response:
        result = route.handler(ctx)
        return to_response(result, route.status)

    def _health(self, ctx: RequestContext[NoBody, NoQuery]) -> Health:
        """Liveness: the function is deployed and answers."""
        return Health(status="ok", service=self.service)

    def _openapi_document(self, ctx: RequestContext[NoBody, NoQuery]) -> JsonResponse[OpenApiDocument]:
        """This function's API contract: OpenAPI 3.1 built from its routes and their models."""
        if self._openapi is None:  # built on first use (no work at import time), then served as is
            from shared.http.openapi import function_document

            self._openapi = function_document(self)
        return JsonResponse(OpenApiDocument.model_validate(self._openapi), headers={"Cache-Control": "max-age=300"})


class Health(BaseModel):
    status: str
    service: str


class OpenApiDocument(BaseModel):
    """An OpenAPI 3.1 document (its members are passed through as they are)."""

    model_config = {"extra": "allow"}

    openapi: str


def answer_framework_errors_as_problems(*apps: HttpApp) -> None:
    """Make functions-framework's own answers problems too: its router sends every path to the entry
    point except ones it cannot match (a path with a line break, ``/robots.txt``, ``/favicon.ico``),
    which Flask would answer with an HTML page. Call it from a function's ``main.py`` with its apps: while
    functions-framework loads the module for one of them, the Flask app it is creating is the current
    app, and the handler goes there; imported anywhere else (a test, ``make openapi``) it does nothing."""
    from flask import current_app, has_app_context

    if not has_app_context() or current_app.name not in {app.service for app in apps}:
        return
    from werkzeug.exceptions import HTTPException

    current_app.register_error_handler(HTTPException, _framework_problem)


def _framework_problem(error: Exception) -> Response:
    from flask import request
    from werkzeug.exceptions import HTTPException

    status = error.code if isinstance(error, HTTPException) and error.code else 500
    problem: EpoxError
    if status == 404:
        problem = NotFound("No route for this path")
    elif status == 405:
        problem = MethodNotAllowed(f"{request.method} is not allowed here")
    elif status == 413:
        problem = PayloadTooLarge("The request is too large")
    elif 400 <= status < 500:
        problem = BadRequest("The request could not be read")
    else:
        logger.error("functions-framework answered %s for %s %s", status, request.method, request.path)
        problem = EpoxError()
    return problem_response(problem, instance=request.path, request_id=_request_id(request))


def to_response(result: Any, default_status: int) -> Response:
    """Turn what a handler returned into a Flask response."""
    from flask import Response

    if isinstance(result, Response):
        return result
    status = default_status
    headers: dict[str, str] = {}
    if isinstance(result, JsonResponse):
        status, headers, result = result.status, result.headers, result.body
    if result is None or status == 204:
        response = Response(status=status if result is None and status != 200 else 204)
    else:
        payload = result.model_dump(mode="json") if isinstance(result, BaseModel) else result
        response = Response(json.dumps(payload, default=str), status=status, content_type="application/json")
    for name, value in headers.items():
        response.headers[name] = value
    return response


def _problem_code(response: Response) -> str | None:
    if response.mimetype != PROBLEM_CONTENT_TYPE:
        return None
    try:
        code = json.loads(response.get_data()).get("code")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, str) else None


def _request_id(request: Request) -> str:
    supplied = request.headers.get("X-Request-Id", "")
    if re.fullmatch(r"[A-Za-z0-9._-]{8,128}", supplied):
        return supplied
    return uuid.uuid4().hex


def _read_body(request: Request, limit: int) -> bytes:
    from werkzeug.exceptions import RequestEntityTooLarge

    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"The body is larger than {limit} bytes", limit=limit)
    # Without Content-Length (chunked), werkzeug stops reading at max_content_length and returns the
    # truncated body without an error; allow one byte more so an over-long body shows itself.
    request.max_content_length = limit + 1
    try:
        data = request.get_data(cache=True)
    except RequestEntityTooLarge as exc:
        raise PayloadTooLarge(f"The body is larger than {limit} bytes", limit=limit) from exc
    if len(data) > limit:
        raise PayloadTooLarge(f"The body is larger than {limit} bytes", limit=limit)
    return data


def _parse_body(route: Route, request: Request, raw: bytes) -> BaseModel:
    if route.body_model is None:
        if raw.strip() and request.method in ("POST", "PUT", "PATCH"):
            raise ValidationFailed(
                "This endpoint takes no request body",
                errors=[{"field": "body", "in": "body", "message": "no body expected", "type": "extra_forbidden"}],
            )
        return NoBody()
    if not raw.strip():
        raise MalformedJson("A JSON request body is required")
    mimetype = (request.mimetype or "").lower()
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType("Send the body as application/json")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedJson(f"The body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # e.g. 100k nested arrays: the decoder's recursion limit, not a 500
        raise MalformedJson("The body's JSON is nested too deeply") from exc
    if not isinstance(data, dict):
        raise ValidationFailed(
            "The body must be a JSON object",
            errors=[{"field": "body", "in": "body", "message": "expected an object", "type": "model_type"}],
        )
    try:
        return route.body_model.model_validate(data)
    except ValidationError as exc:
        raise validation_problem(exc, location="body") from exc


def _parse_query(route: Route, request: Request) -> BaseModel:
    args = request.args
    if route.query_model is None:
        if args:
            raise ValidationFailed(
                "This endpoint takes no query parameters",
                errors=[
                    {"field": name, "in": "query", "message": "unknown parameter", "type": "extra_forbidden"}
                    for name in args
                ],
            )
        return NoQuery()
    data: dict[str, Any] = {}
    for name in args:
        values = args.getlist(name)
        data[name] = values if len(values) > 1 else values[0]
    try:
        return route.query_model.model_validate(data)
    except ValidationError as exc:
        raise validation_problem(exc, location="query") from exc


_CORS_ALLOW_HEADERS = "Authorization, Content-Type, Idempotency-Key, X-Request-Id"
_CORS_EXPOSE_HEADERS = "Location, Retry-After, X-Request-Id, Idempotency-Replayed"


def _apply_cors(request: Request, response: Response, allowed: list[str]) -> None:
    if not allowed:
        return
    # Every answer depends on Origin once CORS is on, allowed or not: caches must key on it.
    response.vary.add("Origin")
    origin = request.headers.get("Origin")
    if not origin or origin not in allowed:
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Expose-Headers"] = _CORS_EXPOSE_HEADERS


def _preflight(request: Request, app: HttpApp, allowed: list[str]) -> Response:
    from flask import Response

    methods = sorted({r.method for r in app.routes if r.pattern.match(request.path or "/")})
    if not methods:
        raise NotFound(f"No route for {request.path}")
    response = Response(status=204)
    origin = request.headers.get("Origin")
    if origin and origin in allowed:
        response.headers["Access-Control-Allow-Methods"] = ", ".join([*methods, "OPTIONS"])
        response.headers["Access-Control-Allow-Headers"] = _CORS_ALLOW_HEADERS
        response.headers["Access-Control-Max-Age"] = "600"
    return response
