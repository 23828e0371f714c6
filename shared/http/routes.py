"""What a route is: its declaration (method, path, models, access, contract) and the context its
handler gets. :mod:`shared.http.app` serves routes; :mod:`shared.http.openapi` documents them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypedDict

from pydantic import BaseModel
from typing_extensions import TypeVar

from shared.errors import EpoxError, Unauthenticated

if TYPE_CHECKING:
    from flask import Request

    from shared.auth import Principal
    from shared.platform import Platform
    from shared.tasks import TaskCall


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
OutT = TypeVar("OutT", bound=BaseModel)


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
class JsonResponse(Generic[OutT]):
    """A handler result with a non-default status or extra headers; ``JsonResponse[Model]`` as the
    handler's return type documents the body (see :mod:`shared.http.openapi`)."""

    body: OutT
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
    # The contract (GET /openapi.json): the problems this route's own use case can answer with, beyond
    # the ones its declaration implies (validation, auth, idempotency, size, availability)…
    errors: Sequence[type[EpoxError]]
    # …the success answers when the handler's return annotation does not name one model…
    responses: Mapping[int, type[BaseModel] | None]
    # …and the media type of a success that is not JSON (a CSV download).
    produces: str


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
    errors: tuple[type[EpoxError], ...] = ()
    responses: Mapping[int, type[BaseModel] | None] = field(default_factory=dict)
    produces: str | None = None

    @property
    def path_params(self) -> list[str]:
        return _PARAM.findall(self.template)


_PARAM = re.compile(r"<([a-z_][a-z0-9_]*)>")


def compile_template(template: str) -> re.Pattern[str]:
    parts = []
    last = 0
    for match in _PARAM.finditer(template):
        parts.append(re.escape(template[last : match.start()]))
        # First character alphanumeric: ".", ".." and "__x__" are ids Firestore rejects (a 500), so never route them.
        parts.append(f"(?P<{match.group(1)}>[A-Za-z0-9][A-Za-z0-9_.~-]{{0,199}})")
        last = match.end()
    parts.append(re.escape(template[last:]))
    return re.compile("^" + "".join(parts) + r"/?\Z")  # \Z, not $: "$" also matches before a trailing "\n"
