"""The local Cloud Tasks dispatcher's delivery contract, the task-call verifiers, and the tasks the
Cloud Tasks adapter creates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Request
from pydantic import BaseModel
from werkzeug.test import EnvironBuilder

from dev.dispatcher import TaskDispatcher
from shared import logging as log
from shared.errors import Forbidden, Unauthenticated, UpstreamUnavailable
from shared.retry import TRANSIENT_UPSTREAM
from shared.tasks import (
    CloudTasksQueue,
    LocalDispatcherQueue,
    SharedSecretTaskVerifier,
    TaskRequest,
    task_call_from_headers,
    task_name,
)


class Payload(BaseModel):
    item: str


class ScriptedWorker:
    """Answers a scripted status per delivery and records the headers it saw."""

    def __init__(self, statuses: list[int], retry_after: float | None = None) -> None:
        self.statuses = statuses
        self.retry_after = retry_after
        self.calls: list[tuple[str, dict[str, str], bytes]] = []

    def __call__(self, url: str, headers: dict[str, str], body: bytes) -> tuple[int, float | None]:
        self.calls.append((url, headers, body))
        status = self.statuses[min(len(self.calls) - 1, len(self.statuses) - 1)]
        return status, self.retry_after


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _task(name: str | None = "t1") -> TaskRequest:
    return TaskRequest(target="catalog_tasks", path="/tasks/x", payload=Payload(item="a"), name=name)


def test_delivers_with_cloud_tasks_headers() -> None:
    worker = ScriptedWorker([200])
    dispatcher = TaskDispatcher(worker, secret="s3cret", target_base_url="http://fn.test", min_backoff=0)
    assert dispatcher.enqueue(_task())
    assert dispatcher.run_until_idle() == 1
    url, headers, body = worker.calls[0]
    assert url == "http://fn.test/catalog_tasks/tasks/x"
    assert body == b'{"item":"a"}'
    assert headers["Authorization"] == "Bearer s3cret"
    assert headers["X-CloudTasks-QueueName"] == "epox-default"
    assert headers["X-CloudTasks-TaskName"] == "t1"
    assert headers["X-CloudTasks-TaskRetryCount"] == "0"


def test_retries_non_2xx_with_growing_backoff_then_succeeds() -> None:
    clock = FakeClock()
    worker = ScriptedWorker([503, 500, 200])
    dispatcher = TaskDispatcher(worker, secret="s", min_backoff=1.0, max_backoff=60, clock=clock)
    dispatcher.enqueue(_task())
    assert dispatcher.run_until_idle() == 1  # the retry is not due yet
    assert dispatcher._heap[0].due == pytest.approx(1001.0)
    clock.now += 1.0
    dispatcher.run_until_idle()
    assert dispatcher._heap[0].due == pytest.approx(1003.0)  # 1 s, then 2 s
    clock.now += 2.0
    dispatcher.run_until_idle()
    task = dispatcher.history[0]
    assert task.succeeded and task.outcomes == [503, 500, 200]
    assert [c[1]["X-CloudTasks-TaskRetryCount"] for c in worker.calls] == ["0", "1", "2"]


def test_gives_up_after_max_attempts() -> None:
    worker = ScriptedWorker([503])
    dispatcher = TaskDispatcher(worker, secret="s", max_attempts=3, min_backoff=0, max_backoff=0)
    dispatcher.enqueue(_task())
    dispatcher.run_until_idle()
    task = dispatcher.history[0]
    assert task.done and not task.succeeded
    assert task.attempts == 3 and len(worker.calls) == 3


def test_retry_after_stretches_the_backoff() -> None:
    clock = FakeClock()
    dispatcher = TaskDispatcher(ScriptedWorker([429, 200], retry_after=7), secret="s", min_backoff=1, clock=clock)
    dispatcher.enqueue(_task())
    dispatcher.run_until_idle()
    assert dispatcher._heap[0].due == pytest.approx(1007.0)


def test_named_tasks_are_deduplicated_for_an_hour() -> None:
    clock = FakeClock()
    worker = ScriptedWorker([200])
    dispatcher = TaskDispatcher(worker, secret="s", clock=clock)
    assert dispatcher.enqueue(_task("same"))
    assert not dispatcher.enqueue(_task("same"))
    dispatcher.run_until_idle()
    assert not dispatcher.enqueue(_task("same"))  # still reserved after completion
    clock.now += 3601
    assert dispatcher.enqueue(_task("same"))
    assert dispatcher.enqueue(_task(None)) and dispatcher.enqueue(_task(None))  # unnamed: never deduplicated


def test_schedule_time_delays_delivery() -> None:
    worker = ScriptedWorker([200])
    dispatcher = TaskDispatcher(worker, secret="s")
    later = TaskRequest(
        target="t", path="/p", payload=Payload(item="a"), schedule_time=datetime.now(UTC) + timedelta(hours=1)
    )
    dispatcher.enqueue(later)
    assert dispatcher.run_until_idle() == 0
    assert dispatcher.pending == 1
    assert worker.calls == []


def test_unreachable_worker_counts_as_failure() -> None:
    def broken(url: str, headers: dict[str, str], body: bytes) -> tuple[int, float | None]:
        raise ConnectionError("refused")

    dispatcher = TaskDispatcher(broken, secret="s", max_attempts=2, min_backoff=0, max_backoff=0)
    dispatcher.enqueue(_task())
    dispatcher.run_until_idle()
    assert dispatcher.history[0].outcomes == [0, 0]


def test_task_names_are_valid_and_deterministic() -> None:
    name = task_name("import", "client/with slash", "x" * 600)
    assert name == task_name("import", "client/with slash", "x" * 600)
    assert len(name) <= 500
    assert all(ch.isalnum() or ch in "-_" for ch in name)
    assert task_name("a", "b") != task_name("a", "c")


def _request(headers: dict[str, str]) -> Request:
    return Request(EnvironBuilder(path="/tasks/x", method="POST", headers=headers).get_environ())


CLOUD_TASKS_HEADERS = {
    "X-CloudTasks-QueueName": "q",
    "X-CloudTasks-TaskName": "n",
    "X-CloudTasks-TaskRetryCount": "2",
    "X-CloudTasks-TaskExecutionCount": "1",
}


def test_shared_secret_verifier_accepts_the_secret_only() -> None:
    verifier = SharedSecretTaskVerifier("right")
    call = verifier.verify(_request({"Authorization": "Bearer right", **CLOUD_TASKS_HEADERS}))
    assert (call.queue, call.name, call.retry_count, call.execution_count) == ("q", "n", 2, 1)
    with pytest.raises(Unauthenticated):
        verifier.verify(_request({"Authorization": "Bearer wrong", **CLOUD_TASKS_HEADERS}))
    with pytest.raises(Unauthenticated):
        verifier.verify(_request(CLOUD_TASKS_HEADERS))
    with pytest.raises(Forbidden):
        verifier.verify(_request({"Authorization": "Bearer right"}))
    with pytest.raises(Forbidden):
        SharedSecretTaskVerifier("").verify(_request({"Authorization": "Bearer ", **CLOUD_TASKS_HEADERS}))


def test_task_headers_tolerate_garbage_counts() -> None:
    call = task_call_from_headers(_request({**CLOUD_TASKS_HEADERS, "X-CloudTasks-TaskRetryCount": "many"}))
    assert call.retry_count == 0


def test_windowed_tasks_share_a_name_within_a_window_and_run_after_it() -> None:
    from shared.tasks import SETTLE_WINDOW_SECONDS, windowed_task

    base = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)

    def make(offset: float) -> TaskRequest:
        return windowed_task(
            target="t",
            path="/p",
            payload=Payload(item="x"),
            name_parts=("settle", "c", "j"),
            finished_at=base + timedelta(seconds=offset),
        )

    first, same, later = make(0.1), make(SETTLE_WINDOW_SECONDS - 0.2), make(SETTLE_WINDOW_SECONDS + 0.1)
    assert first.name == same.name != later.name
    assert first.schedule_time is not None and first.schedule_time > base + timedelta(
        seconds=SETTLE_WINDOW_SECONDS - 0.2
    )
    assert later.schedule_time is not None and later.schedule_time > first.schedule_time


class RecordingTasksClient:
    """Stands in for ``tasks_v2.CloudTasksClient``: keeps the tasks it is asked to create."""

    def __init__(self) -> None:
        self.created: list[tuple[str, dict[str, object]]] = []

    def queue_path(self, project: str, location: str, queue: str) -> str:
        return f"projects/{project}/locations/{location}/queues/{queue}"

    def create_task(self, *, parent: str, task: dict[str, object], timeout: float | None = None) -> None:
        self.created.append((parent, task))


class FlakyTasksClient(RecordingTasksClient):
    """Cloud Tasks as seen through a bad network: each call first raises the next scripted error.

    ``lands`` marks the errors raised *after* the task was created (the answer was lost), so a
    retry of a named task meets AlreadyExists, as the real service answers.
    """

    def __init__(self, errors: list[Exception], *, lands: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.errors = errors
        self.lands = lands
        self.calls = 0
        self.names: set[str] = set()
        self.timeouts: list[float | None] = []

    def create_task(self, *, parent: str, task: dict[str, object], timeout: float | None = None) -> None:
        from google.api_core import exceptions as gexc

        call, self.calls = self.calls, self.calls + 1
        self.timeouts.append(timeout)
        name = task.get("name")
        if isinstance(name, str) and name in self.names:
            raise gexc.AlreadyExists(f"{name} exists")
        if call < len(self.errors):
            if call in self.lands and isinstance(name, str):
                self.names.add(name)
            raise self.errors[call]
        if isinstance(name, str):
            self.names.add(name)
        super().create_task(parent=parent, task=task, timeout=timeout)


def _cloud_queue(client: RecordingTasksClient | None = None) -> tuple[CloudTasksQueue, RecordingTasksClient]:
    client = client or RecordingTasksClient()
    queue = CloudTasksQueue(
        project="p",
        location="europe-west1",
        default_queue="epox-default",
        target_base_url="https://fn.test",
        service_account="tasks@p.iam.gserviceaccount.com",
        _client=client,
    )
    return queue, client


def test_cloud_tasks_gets_the_dispatch_deadline_a_task_asks_for() -> None:
    from google.cloud import tasks_v2

    queue, client = _cloud_queue()
    slow = TaskRequest(
        target="generate_tasks",
        path="/tasks/item",
        payload=Payload(item="a"),
        name="item-1",
        dispatch_deadline=timedelta(minutes=30),
    )
    assert queue.enqueue(slow) and queue.enqueue(_task())
    # The messages are real Task messages (field names checked by the library), with and without a deadline.
    created = [tasks_v2.Task(message) for _, message in client.created]
    assert created[0].dispatch_deadline == timedelta(minutes=30)
    assert created[0].name == "projects/p/locations/europe-west1/queues/epox-default/tasks/item-1"
    assert created[0].http_request.url == "https://fn.test/generate_tasks/tasks/item"
    assert created[0].http_request.oidc_token.audience == "https://fn.test/generate_tasks"
    assert "dispatch_deadline" not in client.created[1][1]  # the queue's default (10 minutes)


def test_a_dispatch_deadline_must_be_one_cloud_tasks_accepts() -> None:
    for deadline in (timedelta(seconds=15), timedelta(minutes=30)):
        assert TaskRequest(target="t", path="/p", payload=Payload(item="a"), dispatch_deadline=deadline)
    for deadline in (timedelta(seconds=14), timedelta(minutes=30, seconds=1)):
        with pytest.raises(ValueError, match="dispatch deadline"):
            TaskRequest(target="t", path="/p", payload=Payload(item="a"), dispatch_deadline=deadline)


def test_the_local_dispatcher_keeps_a_tasks_dispatch_deadline() -> None:
    dispatcher = TaskDispatcher(ScriptedWorker([200]), secret="s")
    dispatcher.enqueue(
        TaskRequest(target="t", path="/p", payload=Payload(item="a"), dispatch_deadline=timedelta(minutes=20))
    )
    dispatcher.enqueue(_task())
    assert [t.dispatch_deadline for t in dispatcher.history] == [1200.0, None]


# -- creating a Cloud Task through transient errors -------------------------------------------------


def _flaky_queue(client: FlakyTasksClient) -> tuple[CloudTasksQueue, list[float]]:
    queue, _ = _cloud_queue(client)
    slept: list[float] = []
    queue._sleep = slept.append
    return queue, slept


def test_creating_a_task_retries_transient_errors_instead_of_answering_503() -> None:
    from google.api_core import exceptions as gexc

    errors: list[Exception] = [
        gexc.ServiceUnavailable("blip"),
        gexc.DeadlineExceeded("slow"),
        gexc.InternalServerError("oops"),
    ]
    client = FlakyTasksClient(errors)
    queue, slept = _flaky_queue(client)
    assert queue.enqueue(_task("named")) is True
    assert client.calls == 4 and len(client.created) == 1
    assert len(slept) == 3 and all(0 <= wait <= TRANSIENT_UPSTREAM.cap for wait in slept)
    assert all(timeout is not None for timeout in client.timeouts)  # every try is bounded


def test_already_exists_on_a_retry_is_the_task_an_earlier_try_created() -> None:
    from google.api_core import exceptions as gexc

    # The first create went through but its answer was lost: the retry meets the task it made.
    client = FlakyTasksClient([gexc.ServiceUnavailable("answer lost")], lands=(0,))
    queue, _ = _flaky_queue(client)
    assert queue.enqueue(_task("item-7")) is True
    assert client.calls == 2 and client.names == {"projects/p/locations/europe-west1/queues/epox-default/tasks/item-7"}


def test_already_exists_on_the_first_try_is_still_a_duplicate() -> None:
    client = FlakyTasksClient([])
    queue, slept = _flaky_queue(client)
    assert queue.enqueue(_task("once")) is True
    assert queue.enqueue(_task("once")) is False
    assert slept == []


def test_a_queue_that_stays_down_is_503_after_the_policys_attempts() -> None:
    from google.api_core import exceptions as gexc

    client = FlakyTasksClient([gexc.ServiceUnavailable("down")] * 10)
    queue, slept = _flaky_queue(client)
    with pytest.raises(UpstreamUnavailable):
        queue.enqueue(_task())
    assert client.calls == TRANSIENT_UPSTREAM.attempts
    assert len(slept) == TRANSIENT_UPSTREAM.attempts - 1


def test_a_permanent_error_is_not_retried() -> None:
    from google.api_core import exceptions as gexc

    client = FlakyTasksClient([gexc.PermissionDenied("no enqueuer role")])
    queue, slept = _flaky_queue(client)
    with pytest.raises(gexc.PermissionDenied):
        queue.enqueue(_task())
    assert client.calls == 1 and slept == []


# -- the trace travels with the task ----------------------------------------------------------------

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def _traced() -> Any:
    return log.bind(**log.TraceContext(TRACE, "00f067aa0ba902b7", sampled=True).log_fields())


def test_cloud_tasks_requests_carry_the_trace_of_the_request_that_enqueued_them() -> None:
    from google.cloud import tasks_v2

    queue, client = _cloud_queue()
    token = _traced()
    try:
        queue.enqueue(_task("traced"))
    finally:
        log.reset(token)
    queue.enqueue(_task("untraced"))
    traced, untraced = (tasks_v2.Task(message) for _, message in client.created)
    context = log.parse_traceparent(traced.http_request.headers["traceparent"])
    assert context is not None and context.trace_id == TRACE and context.sampled is True
    assert traced.http_request.headers["Content-Type"] == "application/json"
    assert "traceparent" not in untraced.http_request.headers


def test_the_local_dispatcher_delivers_the_trace_with_every_attempt() -> None:
    worker = ScriptedWorker([503, 200])
    dispatcher = TaskDispatcher(worker, secret="s", min_backoff=0, max_backoff=0)
    token = _traced()
    try:
        dispatcher.enqueue(_task())
    finally:
        log.reset(token)
    dispatcher.run_until_idle()
    sent = [headers.get("traceparent") for _, headers, _ in worker.calls]
    assert len(sent) == 2 and sent[0] == sent[1] and sent[0] is not None
    assert sent[0].split("-")[1] == TRACE
    assert worker.calls[0][1]["Authorization"] == "Bearer s"  # a task header never replaces the queue's


def test_the_dev_stacks_http_dispatcher_carries_the_trace_too(tmp_path: object) -> None:
    """LocalDispatcherQueue (what `make dev` functions use) -> /_dev/tasks -> the dispatcher -> the worker."""
    import threading
    from pathlib import Path

    from werkzeug.serving import make_server

    from dev.jwt_issuer import DevIssuer
    from dev.stack import build_dev_app

    worker = ScriptedWorker([200])
    dispatcher = TaskDispatcher(worker, secret="s", target_base_url="http://fn.test", min_backoff=0)
    app = build_dev_app(DevIssuer(issuer="i", audience="a"), dispatcher, Path(str(tmp_path)))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        queue = LocalDispatcherQueue(
            dispatcher_url=f"http://127.0.0.1:{server.server_port}/_dev/tasks",
            target_base_url="http://fn.test",
            default_queue="epox-default",
        )
        token = _traced()
        try:
            assert queue.enqueue(_task("via-http"))
        finally:
            log.reset(token)
    finally:
        server.shutdown()
    dispatcher.run_until_idle()
    [(url, headers, _)] = worker.calls
    assert url == "http://fn.test/catalog_tasks/tasks/x"
    assert headers["traceparent"].split("-")[1] == TRACE


def test_each_worker_has_its_own_queue_and_unmapped_targets_use_the_default() -> None:
    client = RecordingTasksClient()
    queue = CloudTasksQueue(
        project="p",
        location="europe-west1",
        default_queue="epox-default",
        target_base_url="https://fn.test",
        service_account="tasks@p.iam.gserviceaccount.com",
        queues={"generate_tasks": "epox-generate-tasks", "sync_tasks": "epox-sync-tasks"},
        _client=client,
    )
    for target in ("generate_tasks", "sync_tasks", "catalog_tasks"):
        queue.enqueue(TaskRequest(target=target, path="/tasks/x", payload=Payload(item="a")))
    pinned = TaskRequest(target="generate_tasks", path="/tasks/x", payload=Payload(item="a"), queue="epox-special")
    queue.enqueue(pinned)
    assert [parent.rsplit("/", 1)[1] for parent, _ in client.created] == [
        "epox-generate-tasks",
        "epox-sync-tasks",
        "epox-default",
        "epox-special",
    ]


def test_the_queue_map_is_read_from_tasks_queues(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.config import Settings

    monkeypatch.setenv("EPOX_ENV", "test")
    monkeypatch.setenv("TASKS_QUEUES", '{"generate_tasks": "epox-generate-tasks"}')
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert CloudTasksQueue.from_settings(settings).queues == {"generate_tasks": "epox-generate-tasks"}
