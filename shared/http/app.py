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
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypedDict, Unpack

from pydantic import BaseModel, ValidationError
from typing_extensions import TypeVar

from shared import logging as log
from shared.errors import (
    EpoxError,
    MalformedJson,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthenticated,
    UnsupportedMediaType,
    ValidationFailed,
    validation_problem,
)
from shared.http.problems import problem_response
from shared.needs import Need

if TYPE_CHECKING:
    from flask import Request, Response

    from shared.auth import Principal
    from shared.platform import Platform
    from shared.tasks import TaskCall

logger = log.get_logger("epox.http")


class NoBody(BaseModel):
    """The body of a route that takes none (``ctx.body`` of a route declared without ``body=``)."""

    model_config = {"extra": "forbid"}


class NoQuery(BaseModel):
    """The query of a route that takes none (``ctx.query`` of a route declared without ``query=``)."""

    model_config = {"extra": "forbid"}


# The defaults are what a route declared without ``body=`` / ``query=`` hands its handler: with them a
# decorator call that passes None (or nothing) still solves the handler's context type.
BodyT = TypeVar("BodyT", bound=BaseModel, default=NoBody)
QueryT = TypeVar("QueryT", bound=BaseModel, default=NoQuery)
ResultT = TypeVar("ResultT")


class Access(str, Enum):
    """Who may call a route."""

    PUBLIC = "public"  # health checks; webhooks that verify their own signatures
    USER = "user"  # a signed-in user of a client (tenant)
    ADMIN = "admin"  # a platform operator: the AUTH_PLATFORM_ADMIN_CLAIM is true (no tenant role grants it)
    TASK = "task"  # Cloud Tasks (OIDC in production, a shared secret locally)
    SCHEDULER = "scheduler"  # Cloud Scheduler jobs (same credentials as tasks, no queue headers)


@dataclass
class RequestContext(Generic[BodyT, QueryT]):
    """Everything a handler may need about the current request."""

    request: Request
    platform: Platform
    request_id: str
    path_params: dict[str, str]
    body: BodyT
    query: QueryT
    principal: Principal | None = None
    task: TaskCall | None = None
    raw_body: bytes = b""

    @property
    def client_id(self) -> str:
        if self.principal is None:
            raise Unauthenticated()
        return self.principal.client_id


@dataclass
class JsonResponse:
    """A handler result with a non-default status or extra headers."""

    body: BaseModel | dict[str, Any] | list[Any] | None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


# How the router stores a handler, whatever its models; declaring one goes through the typed decorators.
Handler = Callable[[RequestContext[Any, Any]], Any]


class RouteDecorator(Protocol[BodyT, QueryT]):
    """What ``app.post(path, body=B, query=Q)`` returns: it registers a handler of ``RequestContext[B, Q]``
    and hands it back unchanged, so mypy checks the handler against the models the route validates."""

    def __call__(
        self, handler: Callable[[RequestContext[BodyT, QueryT]], ResultT]
    ) -> Callable[[RequestContext[BodyT, QueryT]], ResultT]: ...


class RouteOptions(TypedDict, total=False):
    """How a route is served, besides its models."""

    status: int  # the status of a plain result (default 200)
    access: Access  # who may call it (default USER)
    idempotent: bool  # honour Idempotency-Key (signed-in callers)
    max_body_bytes: int | None  # instead of MAX_BODY_BYTES
    raw: bool  # hand the handler the unparsed body (signed webhooks)


@dataclass
class Route:
    method: str
    template: str
    pattern: re.Pattern[str]
    handler: Handler
    body_model: type[BaseModel] | None
    query_model: type[BaseModel] | None
    status: int
    access: Access
    idempotent: bool
    max_body_bytes: int | None
    raw: bool = False


_PARAM = re.compile(r"<([a-z_][a-z0-9_]*)>")


def _compile(template: str) -> re.Pattern[str]:
    parts = []
    last = 0
    for match in _PARAM.finditer(template):
        parts.append(re.escape(template[last : match.start()]))
        # First character alphanumeric: ".", ".." and "__x__" are ids Firestore rejects (a 500), so never route them.
        parts.append(f"(?P<{match.group(1)}>[A-Za-z0-9][A-Za-z0-9_.~-]{{0,199}})")
        last = match.end()
    parts.append(re.escape(template[last:]))
    return re.compile("^" + "".join(parts) + r"/?\Z")  # \Z, not $: "$" also matches before a trailing "\n"


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
        self.get("/health", access=Access.PUBLIC)(self._health)

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
                    pattern=_compile(path),
                    handler=handler,
                    body_model=body,
                    query_model=query,
                    status=options.get("status", 200),
                    access=options.get("access", Access.USER),
                    idempotent=options.get("idempotent", False),
                    max_body_bytes=options.get("max_body_bytes"),
                    raw=options.get("raw", False),
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
        response: Response
        try:
            try:
                platform = self._platform()
                response = self._dispatch(request, platform, request_id)
            except EpoxError as error:
                response = problem_response(error, instance=request.path, request_id=request_id)
            except Exception:
                logger.exception("unhandled error in %s %s", request.method, request.path)
                response = problem_response(EpoxError(), instance=request.path, request_id=request_id)
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

    def _dispatch(self, request: Request, platform: Platform, request_id: str) -> Response:
        if request.method == "OPTIONS":
            return _preflight(request, self, platform.settings.cors_allowed_origins)
        route, params = self._match(request)
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

    def _health(self, ctx: RequestContext[NoBody, NoQuery]) -> dict[str, str]:
        return {"status": "ok", "service": self.service}


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
