"""A local stand-in for Cloud Tasks.

It delivers tasks as Cloud Tasks does: POST to the worker URL with the ``X-CloudTasks-*`` headers,
a bearer credential (the dev shared secret in place of an OIDC token), the task's own headers (its
``traceparent``), retries with exponential
backoff on any non-2xx answer up to a bounded number of attempts, and de-duplication of named tasks
for an hour. The same class serves the dev stack (a background thread delivering over HTTP) and the
tests (delivering synchronously through a Flask test client with :meth:`run_until_idle`). A task's
dispatch deadline is kept on its record but not enforced: the dev stack's transport waits for every
answer (up to its own timeout), like a queue with a generous deadline.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from shared.tasks import TaskQueue, TaskRequest, propagation_headers

# (url, headers, body) -> status code and Retry-After seconds (None when absent)
Transport = Callable[[str, dict[str, str], bytes], tuple[int, float | None]]

NAME_RESERVATION_SECONDS = 3600.0


@dataclass(order=True)
class _Pending:
    due: float
    seq: int
    task: LocalTask = field(compare=False)


@dataclass
class LocalTask:
    queue: str
    name: str
    url: str
    body: bytes
    dispatch_deadline: float | None = None  # seconds; recorded, not enforced
    headers: dict[str, str] = field(default_factory=dict)  # the task's own (traceparent), sent every delivery
    attempts: int = 0
    outcomes: list[int] = field(default_factory=list)
    done: bool = False
    succeeded: bool = False


class TaskDispatcher(TaskQueue):
    """In-memory queue with Cloud Tasks' delivery contract."""

    def __init__(
        self,
        transport: Transport,
        *,
        secret: str,
        target_base_url: str = "",
        default_queue: str = "epox-default",
        max_attempts: int = 5,
        min_backoff: float = 0.2,
        max_backoff: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.transport = transport
        self.secret = secret
        self.target_base_url = target_base_url.rstrip("/")
        self.default_queue = default_queue
        self.max_attempts = max_attempts
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.clock = clock
        self._heap: list[_Pending] = []
        self._names: dict[str, float] = {}
        self._seq = itertools.count()
        self._lock = threading.Condition()
        self.history: list[LocalTask] = []
        self._in_flight = 0
        self._stopping = False

    # -- the TaskQueue port (in-process callers) ------------------------------------------------------
    def enqueue(self, task: TaskRequest) -> bool:
        return self.submit(
            queue=task.queue or self.default_queue,
            name=task.name,
            url=f"{self.target_base_url}/{task.target}{task.path}",
            body=task.body(),
            schedule_time=task.schedule_time,
            dispatch_deadline=task.dispatch_deadline.total_seconds() if task.dispatch_deadline else None,
            headers=propagation_headers(),
        )

    # -- submission (also reached over HTTP from LocalDispatcherQueue) -------------------------------
    def submit(
        self,
        *,
        queue: str,
        name: str | None,
        url: str,
        body: bytes,
        schedule_time: datetime | None = None,
        dispatch_deadline: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> bool:
        """Queue a task; False when a task of that name was submitted within the last hour."""
        now = self.clock()
        with self._lock:
            task_name = name or uuid.uuid4().hex
            reserved_until = self._names.get(task_name)
            if reserved_until is not None and reserved_until > now:
                return False
            self._names[task_name] = now + NAME_RESERVATION_SECONDS
            delay = 0.0
            if schedule_time is not None:
                delay = max(0.0, (schedule_time - datetime.now(UTC)).total_seconds())
            local = LocalTask(
                queue=queue,
                name=task_name,
                url=url,
                body=body,
                dispatch_deadline=dispatch_deadline,
                headers=dict(headers or {}),
            )
            self.history.append(local)
            heapq.heappush(self._heap, _Pending(now + delay, next(self._seq), local))
            self._lock.notify_all()
        return True

    # -- delivery ------------------------------------------------------------------------------------
    def _headers(self, task: LocalTask) -> dict[str, str]:
        # The queue's own headers win over a task's, as in Cloud Tasks.
        return {
            **task.headers,
            "Content-Type": "application/json",
            "Authorization": f"Bearer {self.secret}",
            "User-Agent": "Google-Cloud-Tasks",
            "X-CloudTasks-QueueName": task.queue,
            "X-CloudTasks-TaskName": task.name,
            "X-CloudTasks-TaskRetryCount": str(task.attempts),
            "X-CloudTasks-TaskExecutionCount": str(len([s for s in task.outcomes if s != 0])),
            "X-CloudTasks-TaskETA": f"{time.time():.6f}",
        }

    def _deliver(self, task: LocalTask) -> None:
        try:
            status, retry_after = self.transport(task.url, self._headers(task), task.body)
        except Exception:  # a worker that cannot be reached is retried like a 503
            status, retry_after = 0, None
        task.attempts += 1
        task.outcomes.append(status)
        with self._lock:
            if 200 <= status < 300:
                task.done = task.succeeded = True
            elif task.attempts >= self.max_attempts:
                task.done = True
            else:
                backoff = min(self.max_backoff, self.min_backoff * 2 ** (task.attempts - 1))
                if retry_after is not None:
                    backoff = min(self.max_backoff, max(backoff, retry_after))
                heapq.heappush(self._heap, _Pending(self.clock() + backoff, next(self._seq), task))
            self._in_flight -= 1
            self._lock.notify_all()

    def _next_due(self, wait: bool, fast_forward: bool = False) -> LocalTask | None:
        """The next task that is due; with ``wait`` block until one is (or the dispatcher stops)."""
        with self._lock:
            while not self._stopping:
                if self._heap and (fast_forward or self._heap[0].due <= self.clock()):
                    self._in_flight += 1
                    return heapq.heappop(self._heap).task
                if not wait:
                    return None
                delay = self._heap[0].due - self.clock() if self._heap else 0.5
                self._lock.wait(timeout=min(max(delay, 0.01), 0.5))
            return None

    def run_until_idle(self, max_deliveries: int = 10_000, *, fast_forward: bool = False) -> int:
        """Deliver due tasks synchronously until none is due or ``max_deliveries`` were made (tests).

        Tasks scheduled for later (or waiting out a retry backoff) stay queued unless
        ``fast_forward``, which delivers them as if their time had come; returns the number of
        deliveries made.
        """
        count = 0
        while count < max_deliveries:
            task = self._next_due(wait=False, fast_forward=fast_forward)
            if task is None:
                break
            self._deliver(task)
            count += 1
        return count

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._heap) + self._in_flight

    # -- background mode (dev stack) ------------------------------------------------------------------
    def start(self, workers: int = 4) -> None:
        for index in range(workers):
            threading.Thread(target=self._loop, name=f"task-dispatcher-{index}", daemon=True).start()

    def _loop(self) -> None:
        while True:
            task = self._next_due(wait=True)
            if task is None:
                return
            self._deliver(task)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until every task has succeeded or used up its attempts."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._heap or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(timeout=min(remaining, 0.2))
        return True

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
