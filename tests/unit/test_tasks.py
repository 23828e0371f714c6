"""The local Cloud Tasks dispatcher's delivery contract, the task-call verifiers, and the tasks the
Cloud Tasks adapter creates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from flask import Request
from pydantic import BaseModel
from werkzeug.test import EnvironBuilder

from dev.dispatcher import TaskDispatcher
from shared.errors import Forbidden, Unauthenticated
from shared.tasks import (
    CloudTasksQueue,
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

    def create_task(self, *, parent: str, task: dict[str, object]) -> None:
        self.created.append((parent, task))


def _cloud_queue() -> tuple[CloudTasksQueue, RecordingTasksClient]:
    client = RecordingTasksClient()
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
