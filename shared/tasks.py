"""Cloud Tasks: the queue port, its adapters, and verification of calls made by the queue.

Task bodies carry ids, not data. A task may carry a name: a second task with the same name is a
duplicate and is dropped (``enqueue`` returns False), which is how fan-out stays idempotent.
Locally, :class:`LocalDispatcherQueue` hands tasks to the dev stack's dispatcher, which delivers them
with the same headers and retry behaviour as Cloud Tasks. A task enqueued while serving a traced
request carries the trace on (a ``traceparent`` header), so its worker logs under the same trace.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from shared import logging as log
from shared.errors import ConfigurationError, EpoxError, Forbidden, Unauthenticated, UpstreamUnavailable
from shared.retry import TRANSIENT_UPSTREAM, attempts

if TYPE_CHECKING:
    from flask import Request

    from shared.config import Settings

_NAME = re.compile(r"[A-Za-z0-9_-]{1,500}")


def task_name(*parts: str) -> str:
    """A valid, deterministic Cloud Tasks name from arbitrary parts (long ones are hashed)."""
    raw = "-".join(parts)
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "_", raw)
    if len(cleaned) <= 400:
        return cleaned
    return cleaned[:300] + "-" + hashlib.sha256(raw.encode()).hexdigest()


SETTLE_WINDOW_SECONDS = 5

# The dispatch deadlines Cloud Tasks accepts for HTTP targets (its default is 10 minutes).
MIN_DISPATCH_DEADLINE = timedelta(seconds=15)
MAX_DISPATCH_DEADLINE = timedelta(minutes=30)


@dataclass(frozen=True)
class TaskRequest:
    """One unit of background work: POST ``payload`` to ``path`` of the ``target`` entry point."""

    target: str
    path: str
    payload: BaseModel
    name: str | None = None
    schedule_time: datetime | None = None
    queue: str | None = None
    # How long the queue waits for the worker's answer before the attempt counts as failed and is
    # retried; None: the queue's default. Work that can run longer must ask for more, or the queue
    # delivers it again while the first delivery is still running.
    dispatch_deadline: timedelta | None = None

    def __post_init__(self) -> None:
        deadline = self.dispatch_deadline
        if deadline is not None and not MIN_DISPATCH_DEADLINE <= deadline <= MAX_DISPATCH_DEADLINE:
            raise ValueError(f"a dispatch deadline must be between 15 s and 30 min, not {deadline}")

    def body(self) -> bytes:
        return self.payload.model_dump_json().encode()


def windowed_task(
    *, target: str, path: str, payload: BaseModel, name_parts: tuple[str, ...], finished_at: datetime
) -> TaskRequest:
    """A follow-up task (e.g. settling a batch job) named after the time window the triggering work
    *finished* in and scheduled after that window closes.

    Every completion inside a window is seen by its one task, a burst of completions enqueues one
    task, and a task that already ran for an earlier window cannot swallow a later completion as a
    duplicate name (which would leave the job unsettled).
    """
    from datetime import UTC

    window = int(finished_at.timestamp()) // SETTLE_WINDOW_SECONDS + 1
    return TaskRequest(
        target=target,
        path=path,
        payload=payload,
        name=task_name(*name_parts, str(window)),
        schedule_time=datetime.fromtimestamp(window * SETTLE_WINDOW_SECONDS + 1, UTC),
    )


def propagation_headers() -> dict[str, str]:
    """Headers every task's HTTP request carries besides the body: the current trace, if any."""
    traceparent = log.outgoing_traceparent()
    return {"traceparent": traceparent} if traceparent else {}


# How long one CreateTask call may take before it counts as failed and is retried.
CREATE_TASK_TIMEOUT_SECONDS = 10.0


class TaskQueue(ABC):
    """Port for enqueuing background work."""

    @abstractmethod
    def enqueue(self, task: TaskRequest) -> bool:
        """Enqueue; return False when a task of the same name already exists (a duplicate)."""


def queue_for(task: TaskRequest, queues: Mapping[str, str], default_queue: str) -> str:
    """The queue a task goes to: the one it names, else its target worker's (``TASKS_QUEUES``), else the
    default (``TASKS_QUEUE``)."""
    return task.queue or queues.get(task.target) or default_queue


@dataclass
class CloudTasksQueue(TaskQueue):
    """google-cloud-tasks adapter: HTTP target tasks with an OIDC token for the worker."""

    project: str
    location: str
    default_queue: str
    target_base_url: str
    service_account: str
    queues: Mapping[str, str] = field(default_factory=dict)
    _client: Any = field(default=None, repr=False)
    _sleep: Callable[[float], None] = field(default_factory=lambda: time.sleep, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> CloudTasksQueue:
        return cls(
            project=settings.gcp_project,
            location=settings.tasks_location,
            default_queue=settings.tasks_queue,
            target_base_url=settings.tasks_target_base_url.rstrip("/"),
            service_account=settings.tasks_service_account,
            queues=dict(settings.tasks_queues),
        )

    def enqueue(self, task: TaskRequest) -> bool:
        """Create the task, retrying transient errors (TRANSIENT_UPSTREAM) before answering 503.

        A retried create may have gone through the first time: for a named task the retry then
        answers AlreadyExists, which is this very task (True). Unnamed tasks may be created twice
        that way, which workers already tolerate (Cloud Tasks delivers at least once).
        """
        from google.api_core import exceptions as gexc
        from google.cloud import tasks_v2
        from google.protobuf import duration_pb2, timestamp_pb2

        transient = (
            gexc.ServiceUnavailable,
            gexc.DeadlineExceeded,
            gexc.GatewayTimeout,
            gexc.InternalServerError,
            gexc.BadGateway,
            gexc.Unknown,
            gexc.TooManyRequests,  # RESOURCE_EXHAUSTED: the queue's create quota
            gexc.Aborted,
        )

        if self._client is None:
            self._client = tasks_v2.CloudTasksClient()
        parent = self._client.queue_path(self.project, self.location, queue_for(task, self.queues, self.default_queue))
        function_url = f"{self.target_base_url}/{task.target}"
        message: dict[str, Any] = {
            "http_request": {
                "http_method": tasks_v2.HttpMethod.POST,
                "url": function_url + task.path,
                "headers": {"Content-Type": "application/json", **propagation_headers()},
                "body": task.body(),
                "oidc_token": {"service_account_email": self.service_account, "audience": function_url},
            }
        }
        if task.name:
            message["name"] = f"{parent}/tasks/{task.name}"
        if task.schedule_time is not None:
            stamp = timestamp_pb2.Timestamp()
            stamp.FromDatetime(task.schedule_time)
            message["schedule_time"] = stamp
        if task.dispatch_deadline is not None:
            deadline = duration_pb2.Duration()
            deadline.FromTimedelta(task.dispatch_deadline)
            message["dispatch_deadline"] = deadline
        failure: Exception | None = None
        for _ in attempts(TRANSIENT_UPSTREAM, "create Cloud Task", sleep=self._sleep):
            try:
                self._client.create_task(parent=parent, task=message, timeout=CREATE_TASK_TIMEOUT_SECONDS)
            except gexc.AlreadyExists:
                return failure is not None  # after a failed try: our own earlier create went through
            except transient as exc:
                failure = exc
                continue
            return True
        raise UpstreamUnavailable("The task queue is unavailable") from failure


@dataclass
class LocalDispatcherQueue(TaskQueue):
    """Hands tasks to the dev stack's dispatcher over HTTP (see dev/stack.py)."""

    dispatcher_url: str
    target_base_url: str
    default_queue: str
    queues: Mapping[str, str] = field(default_factory=dict)

    def enqueue(self, task: TaskRequest) -> bool:
        import httpx

        document = {
            "queue": queue_for(task, self.queues, self.default_queue),
            "name": task.name,
            "url": f"{self.target_base_url.rstrip('/')}/{task.target}{task.path}",
            "body": task.body().decode(),
            "schedule_time": task.schedule_time.isoformat() if task.schedule_time else None,
            "headers": propagation_headers(),
        }
        try:
            response = httpx.post(self.dispatcher_url, json=document, timeout=5, trust_env=False)
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable("The local task dispatcher is not reachable") from exc
        if response.status_code == 409:
            return False
        if response.status_code >= 300:
            raise UpstreamUnavailable(f"The local task dispatcher answered {response.status_code}")
        return True


class TaskOutcome(BaseModel):
    """What a worker route answers Cloud Tasks with when it is done (the status code is what counts)."""

    outcome: str


@dataclass(frozen=True)
class TaskCall:
    """What Cloud Tasks tells a worker about the delivery it is handling."""

    queue: str
    name: str
    retry_count: int
    execution_count: int

    @property
    def is_first_attempt(self) -> bool:
        return self.retry_count == 0


def task_call_from_headers(request: Request) -> TaskCall:
    headers = request.headers
    queue = headers.get("X-CloudTasks-QueueName")
    name = headers.get("X-CloudTasks-TaskName")
    if not queue or not name:
        raise Forbidden("Only Cloud Tasks may call this endpoint")

    def number(header: str) -> int:
        try:
            return max(0, int(headers.get(header, "0")))
        except ValueError:
            return 0

    return TaskCall(
        queue=queue,
        name=name,
        retry_count=number("X-CloudTasks-TaskRetryCount"),
        execution_count=number("X-CloudTasks-TaskExecutionCount"),
    )


class TaskCallVerifier(ABC):
    """Port: decides whether a request really comes from our task queue (or our scheduler)."""

    @abstractmethod
    def authenticate(self, request: Request) -> None:
        """Check the caller's credential only (Cloud Scheduler sends no queue headers)."""

    def verify(self, request: Request) -> TaskCall:
        """A Cloud Tasks delivery: the credential and the queue's headers."""
        self.authenticate(request)
        return task_call_from_headers(request)


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("Task calls must carry a bearer token")
    return token.strip()


# Where Google publishes the keys that sign its OIDC tokens (PEM certificates, Cache-Control: max-age).
GOOGLE_OAUTH2_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
_GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")


@dataclass
class OidcTaskVerifier(TaskCallVerifier):
    """Production: Google-signed OIDC token for our tasks service account whose audience is this
    very function's URL (a token minted for another of our workers is refused here).

    Google's certificates are kept for as long as their Cache-Control allows (see
    :mod:`shared.google_certs`), so a delivery costs no certificate fetch once warm.
    """

    service_account: str
    audience: str
    certs_url: str = GOOGLE_OAUTH2_CERTS_URL
    # The google-auth transport certificates are fetched through (a caching one unless a test sets it).
    _transport: Any = field(default=None, repr=False)

    @classmethod
    def for_function(cls, service_account: str, target_base_url: str, function_target: str) -> OidcTaskVerifier:
        """The verifier of the function serving ``function_target`` (the runtime's ``FUNCTION_TARGET``).

        CloudTasksQueue.enqueue and the scheduler jobs mint tokens for ``BASE/<entry point>``.
        """
        if not function_target or not target_base_url:
            raise ConfigurationError(
                "OIDC task calls need TASKS_TARGET_BASE_URL and FUNCTION_TARGET (set by the Cloud Functions runtime)"
            )
        return cls(service_account, f"{target_base_url.rstrip('/')}/{function_target}")

    def _certs_transport(self) -> Any:
        if self._transport is None:
            from google.auth.transport import requests as gauth_requests

            from shared.google_certs import CachingTransport

            self._transport = CachingTransport(gauth_requests.Request())
        return self._transport

    def authenticate(self, request: Request) -> None:
        from google.auth import exceptions as gauth_exceptions
        from google.oauth2 import id_token

        token = _bearer(request)
        try:
            # The library checks signature, expiry and the audience (this function's own URL).
            claims = id_token.verify_token(  # type: ignore[no-untyped-call]
                token, self._certs_transport(), audience=self.audience, certs_url=self.certs_url
            )
        except gauth_exceptions.TransportError as exc:
            raise UpstreamUnavailable("Google's token certificates could not be fetched") from exc
        except (ValueError, gauth_exceptions.GoogleAuthError) as exc:
            raise Unauthenticated("The task token is not valid") from exc
        if claims.get("iss") not in _GOOGLE_ISSUERS:
            raise Unauthenticated("The task token was not issued by Google")
        if claims.get("email") != self.service_account or claims.get("email_verified") is not True:
            raise Forbidden("The task token belongs to another service account")


@dataclass
class SharedSecretTaskVerifier(TaskCallVerifier):
    """Local stack and tests: the dispatcher presents a shared secret instead of an OIDC token."""

    secret: str

    def authenticate(self, request: Request) -> None:
        if not self.secret:
            raise Forbidden("Task calls are disabled: no TASKS_DEV_SECRET configured")
        if not hmac.compare_digest(_bearer(request).encode(), self.secret.encode()):
            raise Unauthenticated("The task secret is wrong")


class RetryTask(EpoxError):
    """Raised by a worker when the work should be tried again later (the queue retries)."""

    status = 503
    code = "retry_task"
    title = "The task will be retried"

    def __init__(self, detail: str | None = None, retry_after: int = 10, **extensions: Any) -> None:
        super().__init__(detail, **extensions)
        self.headers["Retry-After"] = str(retry_after)
