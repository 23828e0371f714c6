"""The batch engine end to end without Firestore: a small kind driven through accept → fan-out →
items → settle on the in-memory job store, a real ledger on its in-memory store and a recording
queue delivered by hand. What is charged is exactly what succeeded; a redelivered item (or one whose
commit answer was lost) runs once; an item whose delivery died is given up by the reaper and the job
settles; a cancelled job refunds the items it never started; a paused job's items wait (for the
caller, or for its kind, which paused it from an item's work) until a resume runs them under new task
names."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from shared.batch import lifecycle, recovery
from shared.batch.kind import (
    BatchPolicy,
    ContinueLater,
    Finish,
    ItemRun,
    JobKind,
    JobOrder,
    JobServices,
    PauseJob,
    Totals,
)
from shared.batch.models import (
    BatchItemDoc,
    FanoutPageTask,
    ItemStatus,
    ItemTask,
    JobStatus,
    JobTask,
    PagedJobDoc,
)
from shared.batch.store import StaleWrite, StoredJob
from shared.errors import EpoxError
from shared.events.model import EventType
from shared.ledger.model import Actor, GrantSource
from shared.ledger.service import Ledger
from shared.tasks import TaskCall, TaskRequest
from tests.fakes import InMemoryLedgerStore, InMemoryObjectStore, RecordingTaskQueue
from tests.fakes_batch import InMemoryJobStore

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
LEASE = timedelta(minutes=30)
POLICY = BatchPolicy(max_attempts=3, hold_ttl=timedelta(hours=6), fanout_page=2, counter_shards=2)
PRICE = 3  # credits per word


class WordJob(PagedJobDoc):
    pass


class WordItem(BatchItemDoc):
    word: str = ""
    operation: str | None = None  # a long-running operation its work started (ContinueLater)


class Refused(EpoxError):
    status = 422
    code = "refused"


class Died(BaseException):
    """The worker process dies mid-item: nothing after it runs, nothing answers the queue."""


@dataclass(frozen=True, kw_only=True)
class WordOrder(JobOrder):
    words: list[str]


@dataclass(frozen=True, kw_only=True)
class WordServices(JobServices):
    runs: list[int] = field(default_factory=list)  # the item indexes whose work ran, in order
    dies: set[int] = field(default_factory=set)  # items whose next delivery dies mid-work
    revoked: set[int] = field(default_factory=set)  # items whose next delivery finds the store's token revoked
    cancels: set[int] = field(default_factory=set)  # items whose next delivery sees the job cancelled meanwhile
    slow: dict[int, int] = field(default_factory=dict)  # items whose operation needs this many more polls


class Words(JobKind[WordJob, WordItem, WordServices, WordOrder]):
    """A paged, counted kind: one item per word, the word list kept in the object store; "no" is
    refused (failed, refunded); every other word costs PRICE."""

    collection = "word_jobs"
    id_prefix = "wrd"
    noun = "word job"
    label = "word job"
    worker = "word_tasks"
    task_prefix = "word-"
    hold_prefix = "word"
    operation = "word"
    completed_event = EventType.GENERATION_JOB_COMPLETED  # any type: a test kind
    job_model = WordJob
    item_model = WordItem
    counted = True

    def prepare(self, services: WordServices, order: WordOrder, job_id: str) -> WordOrder:
        return WordOrder(
            client_id=order.client_id,
            user_id=order.user_id,
            request_key=order.request_key,
            words=order.words,
            amount=PRICE * len(order.words),
        )

    def record(
        self, services: WordServices, order: WordOrder, job_id: str, hold_id: str
    ) -> tuple[WordJob, Sequence[WordItem]]:
        services.store.put(f"{job_id}.json", json.dumps(order.words).encode(), "application/json")
        now = services.clock()
        job = WordJob(
            id=job_id,
            client_id=order.client_id,
            item_count=len(order.words),
            cost=order.amount,
            hold_id=hold_id,
            created_by=order.user_id,
            created_at=now,
            updated_at=now,
        )
        return job, []

    def page_items(
        self, services: WordServices, job: WordJob, start: int, stop: int, status: ItemStatus
    ) -> list[WordItem]:
        words = json.loads(services.store.get(f"{job.id}.json"))[start:stop]
        now = services.clock()
        return [WordItem(index=start + i, word=w, status=status, updated_at=now) for i, w in enumerate(words)]

    def work(self, services: WordServices, run: ItemRun[WordJob, WordItem]) -> Finish:
        services.runs.append(run.item.index)
        if run.item.index in services.dies:
            services.dies.discard(run.item.index)
            raise Died()
        if run.item.index in services.cancels:
            services.cancels.discard(run.item.index)
            lifecycle.cancel_job(self, services.jobs, services.queue, run.job.client_id, run.job.id, run.now)
            raise PauseJob(REAUTHORIZE)
        if run.item.index in services.revoked:
            services.revoked.discard(run.item.index)
            raise PauseJob(REAUTHORIZE)
        if run.item.index in services.slow:
            if run.item.operation is None:
                assert run.item.waits == 0  # started once, however often polled
            polls_left = services.slow[run.item.index]
            if polls_left > 0:
                services.slow[run.item.index] = polls_left - 1
                operation = run.item.operation or f"op-{run.item.index}"
                raise ContinueLater(timedelta(seconds=30), "operation running", {"operation": operation})
        if run.item.word == "no":
            raise Refused("refused")
        return Finish(ItemStatus.SUCCEEDED)

    def charge(self, job: WordJob, totals: Totals) -> int:
        return PRICE * totals.succeeded

    def settle_reason(self, job: WordJob, totals: Totals) -> str:
        return f"word job {job.id}: {totals.succeeded} words"


WORDS = Words()
REAUTHORIZE = "store_needs_reauthorization"


class Engine:
    """One tenant, the in-memory store, a real ledger and a queue delivered by hand."""

    def __init__(self, credits: int = 100, jobs: InMemoryJobStore[WordJob, WordItem] | None = None) -> None:
        self.jobs: InMemoryJobStore[WordJob, WordItem] = jobs or InMemoryJobStore(WORDS)
        self.queue = RecordingTaskQueue()
        self.ledger = Ledger(InMemoryLedgerStore(), clock=lambda: NOW)
        self.ledger.grant(
            "c1", key="g", amount=credits, source=GrantSource.PACK, actor=Actor(kind="admin", id="t"), reason="t"
        )
        self.services = WordServices(
            jobs=self.jobs,
            store=InMemoryObjectStore(),
            queue=self.queue,
            ledger=self.ledger,
            policy=POLICY,
            clock=lambda: self.now,
        )
        self.now = NOW  # when the workers finish items (which names their settle tasks)
        self.delivered: set[int] = set()

    def accept(self, *words: str) -> WordJob:
        order = WordOrder(client_id="c1", user_id="u1", request_key=None, words=list(words))
        return lifecycle.accept(WORDS, self.services, order)

    def deliver(self, task: TaskRequest, retry_count: int = 0, at: datetime = NOW) -> str:
        self.delivered.add(id(task))
        payload = task.payload
        if isinstance(payload, FanoutPageTask):
            return lifecycle.run_fanout_page(WORDS, self.services, payload, at)
        if isinstance(payload, ItemTask):
            call = TaskCall(queue="q", name=task.name or "", retry_count=retry_count, execution_count=retry_count)
            return lifecycle.run_item(WORDS, self.services, payload, call, at)
        assert isinstance(payload, JobTask)
        return lifecycle.run_settle(WORDS, self.services, payload, at)

    def run(self, only: Callable[[TaskRequest], bool] = lambda task: True) -> list[str]:
        """Deliver every task not delivered yet (and those enqueued on the way) that ``only`` lets
        through: those due now in order, then the scheduled ones (settle tasks, after their window)."""
        outcomes = []
        while waiting := [t for t in self.queue.tasks if id(t) not in self.delivered and only(t)]:
            outcomes.append(self.deliver(min(waiting, key=lambda t: t.schedule_time is not None)))
        return outcomes

    def job(self, job_id: str) -> WordJob:
        return self.jobs.get_job("c1", job_id)

    def credits(self) -> tuple[int, int]:
        state = self.ledger.state("c1")
        return state.available, state.reserved


def is_fanout(task: TaskRequest) -> bool:
    return task.path == "/tasks/fanout"


def test_a_job_charges_exactly_the_items_that_succeeded() -> None:
    engine = Engine()
    job = engine.accept("a", "no", "b", "c", "no")
    assert engine.credits() == (100 - 5 * PRICE, 5 * PRICE)  # one hold for the whole job
    assert job.fanout_pages == 3 and engine.jobs.all_items("c1", job.id) == []  # paged: written by the fan-out

    engine.run()

    done = engine.job(job.id)
    assert done.settled and done.status is JobStatus.COMPLETED
    assert done.settlement == {"captured": 3 * PRICE, "released": 2 * PRICE}
    assert engine.credits() == (100 - 3 * PRICE, 0)
    assert sorted(engine.services.runs) == [0, 1, 2, 3, 4]
    progress = lifecycle.progress(WORDS, engine.jobs, done)
    assert (progress.counts.succeeded, progress.counts.failed, progress.fraction) == (3, 2, 1.0)
    failed = lifecycle.items_with_status(engine.jobs, "c1", job.id, ItemStatus.FAILED)
    assert [(i.index, (i.failure or {}).get("code")) for i in failed] == [(1, "refused"), (4, "refused")]
    assert engine.ledger.verify("c1") == []


def test_a_redelivered_item_runs_once() -> None:
    engine = Engine()
    job = engine.accept("a", "b")
    engine.run(only=is_fanout)
    item_task = next(t for t in engine.queue.tasks if t.path == "/tasks/item")
    assert engine.deliver(item_task) == "item 0 succeeded"
    # Cloud Tasks delivers the same task again (its first answer was lost): nothing runs twice.
    assert engine.deliver(item_task, retry_count=1) == "item already succeeded"
    engine.run()
    assert engine.services.runs == [0, 1]
    assert engine.job(job.id).settlement == {"captured": 2 * PRICE, "released": 0}


def test_a_delivery_that_read_the_item_before_another_took_it_does_nothing() -> None:
    engine = Engine()
    job = engine.accept("a")
    engine.run(only=is_fanout)
    stale = engine.jobs.read_item("c1", job.id, 0)
    assert stale is not None
    engine.run()  # another delivery took, ran and recorded the item
    # The slower delivery's guarded writes are refused: the take, and a plain guarded update alike.
    assert lifecycle._take(engine.jobs, stale, NOW, "slow") is None
    with pytest.raises(StaleWrite):
        engine.jobs.update_item(stale, {"requeues": 1})
    assert engine.services.runs == [0]
    assert engine.job(job.id).settlement == {"captured": PRICE, "released": 0}


def test_commits_whose_answers_were_lost_are_recognised_as_ours() -> None:
    engine = Engine()
    engine.jobs.lose_answer("create_job")
    job = engine.accept("a", "b")
    assert engine.job(job.id).submission == job.submission  # recorded, not taken for another request's job
    assert engine.jobs.losses_pending == 0
    engine.run(only=is_fanout)
    # The take lands and answers "unavailable", then the finish does: both are recognised by the token.
    engine.jobs.lose_answer("commit_item", times=2)
    engine.run()
    assert engine.jobs.losses_pending == 0
    assert engine.services.runs == [0, 1]
    totals = lifecycle.totals(WORDS, engine.jobs, engine.job(job.id))
    assert (totals.done, totals.succeeded) == (2, 2)  # counted once each
    assert engine.job(job.id).settlement == {"captured": 2 * PRICE, "released": 0}


def test_an_item_whose_delivery_died_is_reaped_and_the_job_settles() -> None:
    engine = Engine()
    job = engine.accept("a", "b", "c")
    engine.services.dies.add(1)
    engine.run(only=is_fanout)
    items = [t for t in engine.queue.tasks if t.path == "/tasks/item"]
    with pytest.raises(Died):
        engine.deliver(items[1])  # the item is left running, its task never answered
    engine.run(only=lambda task: task.path == "/tasks/item")
    assert engine.jobs.items_with_status("c1", job.id, ItemStatus.RUNNING)[0].index == 1
    assert not engine.job(job.id).settled  # waits for the running item

    later = NOW + LEASE + timedelta(minutes=1)
    report = recovery.reap(WORDS, engine.services, later, lease=LEASE)
    assert report.items_failed == {"c1": [f"{job.id}/000001"]}
    engine.run()

    done = engine.job(job.id)
    assert done.settled and done.settlement == {"captured": 2 * PRICE, "released": PRICE}
    failed = engine.jobs.items_with_status("c1", job.id, ItemStatus.FAILED)
    assert [(i.index, (i.failure or {}).get("code")) for i in failed] == [(1, "item_timed_out")]
    assert sorted(engine.services.runs) == [0, 1, 2]  # the dead item was not run again
    assert engine.ledger.verify("c1") == [] and engine.ledger.state("c1").holds == {}


def test_a_cancelled_job_refunds_the_items_it_never_started() -> None:
    engine = Engine()
    job = engine.accept("a", "b", "c", "d", "e")
    first_page = next(t for t in engine.queue.tasks if is_fanout(t))
    engine.deliver(first_page)  # items 0 and 1 written and enqueued; the next page is enqueued
    item_0 = next(t for t in engine.queue.tasks if t.path == "/tasks/item")
    engine.deliver(item_0)

    stopping = lifecycle.cancel_job(WORDS, engine.jobs, engine.queue, "c1", job.id, NOW)
    assert stopping.status is JobStatus.CANCELLING
    # Cancelling again answers the same; the store's guard makes it a no-op.
    assert lifecycle.cancel_job(WORDS, engine.jobs, engine.queue, "c1", job.id, NOW).status is JobStatus.CANCELLING
    engine.run()

    done = engine.job(job.id)
    assert done.settled and done.status is JobStatus.CANCELLED
    assert done.settlement == {"captured": PRICE, "released": 4 * PRICE}
    assert engine.services.runs == [0]
    statuses = [i.status for i in engine.jobs.all_items("c1", job.id)]
    assert statuses == [ItemStatus.SUCCEEDED] + [ItemStatus.CANCELLED] * 4
    assert engine.credits() == (100 - PRICE, 0)


def test_a_job_is_listed_and_read_through_the_store() -> None:
    engine = Engine()
    first = engine.accept("a")
    second = engine.accept("b", "c")
    engine.run()
    from shared.batch.models import ItemListQuery, JobListQuery

    page = lifecycle.list_jobs(engine.jobs, "c1", JobListQuery(limit=1))
    assert [j.id for j in page.items] == [max(first.id, second.id)] and page.next_cursor is not None
    rest = lifecycle.list_jobs(engine.jobs, "c1", JobListQuery(limit=1, cursor=page.next_cursor))
    assert [j.id for j in rest.items] == [min(first.id, second.id)] and rest.next_cursor is None
    items = lifecycle.list_items(engine.jobs, "c1", second.id, ItemListQuery(limit=10))
    assert [(i.index, i.word) for i in items.items] == [(0, "b"), (1, "c")]
    with pytest.raises(EpoxError) as missing:
        lifecycle.list_items(engine.jobs, "c2", second.id, ItemListQuery(limit=10))
    assert missing.value.status == 404


def test_a_corrupt_item_fails_alone_in_the_reapers_run() -> None:
    engine = Engine()
    job = engine.accept("a", "b")
    engine.services.dies.update({0, 1})
    engine.run(only=is_fanout)
    for task in [t for t in engine.queue.tasks if t.path == "/tasks/item"]:
        with pytest.raises(Died):
            engine.deliver(task)
    # Another client's stuck item whose document no longer validates.
    other = job.model_copy(update={"client_id": "c2"})
    engine.jobs.create_job(other, [WordItem(index=0, word="x", status=ItemStatus.RUNNING, updated_at=NOW)])
    engine.jobs.items[("c2", job.id)][0]["attempts"] = "many"

    report = recovery.reap(WORDS, engine.services, NOW + LEASE + timedelta(minutes=1), lease=LEASE)

    assert set(report.failed) == {"c2"}
    assert report.items_failed == {"c1": [f"{job.id}/000000", f"{job.id}/000001"]}


# -- pause and resume ---------------------------------------------------------------------------------


def item_tasks(engine: Engine) -> list[TaskRequest]:
    return [t for t in engine.queue.tasks if t.path == "/tasks/item"]


def statuses(engine: Engine, job_id: str) -> list[ItemStatus]:
    return [i.status for i in engine.jobs.all_items("c1", job_id)]


def test_a_paused_jobs_items_wait_and_a_resume_runs_them_under_new_task_names() -> None:
    engine = Engine()
    job = engine.accept("a", "b", "c")
    engine.deliver(next(t for t in engine.queue.tasks if is_fanout(t)))  # items 0 and 1 written and enqueued
    paused = lifecycle.pause_job(WORDS, engine.jobs, "c1", job.id, NOW, "paused by user")
    assert (paused.status, paused.paused_reason) == (JobStatus.PAUSED, "paused by user")

    outcomes = engine.run()  # the next page writes item 2; every item delivery leaves its item queued
    assert outcomes.count(lifecycle.ITEM_WAITS) == 3
    assert engine.services.runs == [] and statuses(engine, job.id) == [ItemStatus.QUEUED] * 3
    assert [i.attempts for i in engine.jobs.all_items("c1", job.id)] == [0, 0, 0]  # nothing written
    assert engine.job(job.id).status is JobStatus.PAUSED and not engine.job(job.id).settled
    assert engine.credits() == (100 - 3 * PRICE, 3 * PRICE)  # the hold waits with the job

    before = len(item_tasks(engine))
    resumed = lifecycle.resume_job(WORDS, engine.jobs, engine.queue, "c1", job.id, NOW)
    assert (resumed.status, resumed.resumes, resumed.paused_reason) == (JobStatus.RUNNING, 1, None)
    again = item_tasks(engine)[before:]
    # Exactly the queued items, under names the consumed tasks (reserved for an hour) do not hold.
    assert [t.payload.index for t in again if isinstance(t.payload, ItemTask)] == [0, 1, 2]
    assert all(t.name and t.name.endswith("-r1") for t in again)
    assert not {t.name for t in again} & {t.name for t in item_tasks(engine)[:before]}
    engine.run()

    done = engine.job(job.id)
    assert done.settled and done.status is JobStatus.COMPLETED and done.resumes == 1
    assert sorted(engine.services.runs) == [0, 1, 2]  # each item ran once
    assert done.settlement == {"captured": 3 * PRICE, "released": 0}
    assert engine.credits() == (100 - 3 * PRICE, 0) and engine.ledger.verify("c1") == []


def test_pausing_and_resuming_are_idempotent_and_leave_stopped_jobs_alone() -> None:
    engine = Engine()
    job = engine.accept("a", "b")
    engine.run(only=is_fanout)
    assert lifecycle.resume_job(WORDS, engine.jobs, engine.queue, "c1", job.id, NOW).status is JobStatus.RUNNING
    assert engine.job(job.id).resumes == 0  # a job that is not paused is not resumed
    lifecycle.pause_job(WORDS, engine.jobs, "c1", job.id, NOW, "paused by user")
    version = engine.jobs.versions[("job", "c1", job.id)]
    again = lifecycle.pause_job(WORDS, engine.jobs, "c1", job.id, NOW, REAUTHORIZE)
    assert (again.status, again.paused_reason) == (JobStatus.PAUSED, "paused by user")
    assert engine.jobs.versions[("job", "c1", job.id)] == version  # nothing written

    other = engine.accept("c")
    lifecycle.cancel_job(WORDS, engine.jobs, engine.queue, "c1", other.id, NOW)
    assert lifecycle.pause_job(WORDS, engine.jobs, "c1", other.id, NOW, "paused by user").status is (
        JobStatus.CANCELLING
    )
    engine.run(only=lambda task: isinstance(task.payload, JobTask) and task.payload.job_id == other.id)
    settled = engine.job(other.id)
    assert settled.settled and lifecycle.pause_job(WORDS, engine.jobs, "c1", other.id, NOW, "x") == settled
    assert lifecycle.resume_job(WORDS, engine.jobs, engine.queue, "c1", other.id, NOW) == settled
    with pytest.raises(EpoxError) as missing:
        lifecycle.pause_job(WORDS, engine.jobs, "c2", job.id, NOW, "paused by user")
    assert missing.value.status == 404


class CancelledMeanwhile(InMemoryJobStore[WordJob, WordItem]):
    """Once armed, a cancel lands between the next read of a job and the write decided on it."""

    armed = False

    def read_job(self, client_id: str, job_id: str) -> StoredJob[WordJob] | None:
        stored = super().read_job(client_id, job_id)
        if self.armed and stored is not None:
            self.armed = False
            self.update_job(client_id, job_id, {"status": JobStatus.CANCELLING.value})
        return stored


def test_a_pause_that_lost_a_race_with_a_cancel_answers_the_cancel() -> None:
    racing = CancelledMeanwhile(WORDS)
    engine = Engine(jobs=racing)
    job = engine.accept("a")
    engine.run(only=is_fanout)
    racing.armed = True
    assert lifecycle.pause_job(WORDS, racing, "c1", job.id, NOW, "paused by user").status is JobStatus.CANCELLING
    assert racing.get_job("c1", job.id).paused_reason is None


def test_a_resume_or_cancel_whose_answer_was_lost_still_enqueues_the_waiting_items() -> None:
    engine = Engine()
    job = engine.accept("a", "b")
    other = engine.accept("c")
    engine.run(only=is_fanout)
    for paused in (job, other):
        lifecycle.pause_job(WORDS, engine.jobs, "c1", paused.id, NOW, "paused by user")
    engine.run()  # every item waits
    engine.jobs.lose_answer("update_job")
    resumed = lifecycle.resume_job(WORDS, engine.jobs, engine.queue, "c1", job.id, NOW)
    engine.jobs.lose_answer("update_job")
    stopping = lifecycle.cancel_job(WORDS, engine.jobs, engine.queue, "c1", other.id, NOW)
    assert engine.jobs.losses_pending == 0
    assert (resumed.status, resumed.resumes, stopping.status, stopping.resumes) == (
        JobStatus.RUNNING,
        1,
        JobStatus.CANCELLING,
        1,
    )
    assert [t.name for t in item_tasks(engine) if (t.name or "").endswith("-r1")] == [
        WORDS.item_task("c1", job.id, 0, 1).name,
        WORDS.item_task("c1", job.id, 1, 1).name,
        WORDS.item_task("c1", other.id, 0, 1).name,
    ]
    engine.run()
    assert engine.job(job.id).status is JobStatus.COMPLETED and engine.job(other.id).status is JobStatus.CANCELLED


def test_cancelling_a_paused_job_cancels_its_waiting_items_and_releases_their_hold() -> None:
    engine = Engine()
    job = engine.accept("a", "b", "c")
    engine.run(only=is_fanout)
    engine.deliver(item_tasks(engine)[0])  # item 0 succeeds before the pause
    lifecycle.pause_job(WORDS, engine.jobs, "c1", job.id, NOW, "paused by user")
    engine.run()  # items 1 and 2 wait; their tasks are consumed
    engine.now = NOW + timedelta(hours=1)
    assert statuses(engine, job.id) == [ItemStatus.SUCCEEDED, ItemStatus.QUEUED, ItemStatus.QUEUED]

    stopping = lifecycle.cancel_job(WORDS, engine.jobs, engine.queue, "c1", job.id, engine.now)
    assert (stopping.status, stopping.resumes, stopping.paused_reason) == (JobStatus.CANCELLING, 1, None)
    engine.run()  # the waiting items' tasks, enqueued anew, cancel them; the job settles

    done = engine.job(job.id)
    assert done.settled and done.status is JobStatus.CANCELLED
    assert statuses(engine, job.id) == [ItemStatus.SUCCEEDED, ItemStatus.CANCELLED, ItemStatus.CANCELLED]
    assert lifecycle.totals(WORDS, engine.jobs, done).cancelled == 2  # counted
    assert done.settlement == {"captured": PRICE, "released": 2 * PRICE}
    assert engine.credits() == (100 - PRICE, 0) and engine.ledger.state("c1").holds == {}
    assert engine.services.runs == [0]


def test_the_reaper_leaves_a_paused_job_and_its_waiting_items_alone() -> None:
    engine = Engine()
    job = engine.accept("a", "b", "c")
    engine.run(only=is_fanout)
    lifecycle.pause_job(WORDS, engine.jobs, "c1", job.id, NOW, REAUTHORIZE)
    engine.run()
    tasks = len(engine.queue.tasks)

    days_later = NOW + timedelta(days=3)
    report = recovery.reap(WORDS, engine.services, days_later, lease=LEASE)
    acted = (report.items_failed, report.items_requeued, report.jobs_started, report.settles_enqueued)
    assert acted == ({}, {}, {}, {})
    assert len(engine.queue.tasks) == tasks
    stored = engine.jobs.read_item("c1", job.id, 0)
    assert stored is not None
    assert recovery.requeue_stalled_item(WORDS, engine.services, stored, days_later) is None
    assert statuses(engine, job.id) == [ItemStatus.QUEUED] * 3 and engine.job(job.id).status is JobStatus.PAUSED

    # Resumed, the job runs again; a resume whose tasks were lost is completed by the reaper later on.
    lifecycle.resume_job(WORDS, engine.jobs, engine.queue, "c1", job.id, days_later)
    for task in item_tasks(engine)[-3:]:
        engine.delivered.add(id(task))
        engine.queue.names.discard(task.name or "")
    report = recovery.reap(WORDS, engine.services, days_later + timedelta(hours=1), lease=LEASE)
    assert report.items_requeued == {"c1": [f"{job.id}/{i:06d}" for i in range(3)]}
    assert all((t.name or "").endswith("-r1") for t in item_tasks(engine)[-3:])
    engine.run()
    assert engine.job(job.id).settled and sorted(engine.services.runs) == [0, 1, 2]


def test_a_kind_that_pauses_its_job_from_an_items_work_leaves_the_item_queued_until_resumed() -> None:
    engine = Engine()
    job = engine.accept("a", "b", "c")
    engine.services.revoked.add(1)
    engine.run(only=is_fanout)
    tasks = item_tasks(engine)
    assert engine.deliver(tasks[0]) == "item 0 succeeded"
    # Even on its last attempt, the item is put back, not failed.
    outcome = engine.deliver(tasks[1], retry_count=POLICY.max_attempts - 1)
    assert outcome == f"{lifecycle.ITEM_WAITS} ({REAUTHORIZE})"
    paused = engine.job(job.id)
    assert (paused.status, paused.paused_reason) == (JobStatus.PAUSED, REAUTHORIZE)
    item = engine.jobs.read_item("c1", job.id, 1)
    assert item is not None and (item.item.status, item.item.attempts) == (ItemStatus.QUEUED, 0)
    assert lifecycle.totals(WORDS, engine.jobs, paused).done == 1  # the put-back item is not counted
    assert engine.deliver(tasks[2]) == lifecycle.ITEM_WAITS
    engine.run()
    assert not engine.job(job.id).settled

    engine.now = NOW + timedelta(hours=1)  # the merchant authorized the store again
    lifecycle.resume_job(WORDS, engine.jobs, engine.queue, "c1", job.id, engine.now)
    engine.run()
    done = engine.job(job.id)
    assert done.settled and done.status is JobStatus.COMPLETED
    assert engine.services.runs == [0, 1, 1, 2]  # the paused item's work ran once more, after the resume
    assert lifecycle.totals(WORDS, engine.jobs, done).values["succeeded_items"] == 3
    assert done.settlement == {"captured": 3 * PRICE, "released": 0}


def test_a_kind_pausing_a_job_cancelled_meanwhile_cancels_the_item() -> None:
    engine = Engine()
    job = engine.accept("a", "b")
    engine.services.cancels.add(0)
    engine.run(only=is_fanout)
    assert engine.deliver(item_tasks(engine)[0]) == "item 0 cancelled"
    engine.run()
    done = engine.job(job.id)
    assert done.settled and done.status is JobStatus.CANCELLED and done.paused_reason is None
    assert statuses(engine, job.id) == [ItemStatus.CANCELLED] * 2
    assert done.settlement == {"captured": 0, "released": 2 * PRICE}


def test_an_item_waiting_on_an_operation_continues_in_new_tasks_without_using_attempts() -> None:
    engine = Engine()
    job = engine.accept("a", "b")
    engine.services.slow[1] = 3  # the operation item 1 starts is done at the fourth look
    engine.run(only=is_fanout)
    first = item_tasks(engine)[1]
    # Even a delivery on its last attempt waits rather than failing.
    outcome = engine.deliver(first, retry_count=POLICY.max_attempts - 1)
    assert outcome.startswith("item 1 continues at 2026-03-01T12:00:30") and "operation running" in outcome
    stored = engine.jobs.read_item("c1", job.id, 1)
    assert stored is not None
    assert (stored.item.status, stored.item.attempts, stored.item.waits) == (ItemStatus.QUEUED, 0, 1)
    assert stored.item.operation == "op-1"
    later = [t for t in engine.queue.tasks if t.path == "/tasks/item" and t.name and t.name.endswith("-w1")]
    assert len(later) == 1 and later[0].schedule_time == NOW + timedelta(seconds=30)
    # The consumed task delivered again (its answer was lost) runs the work again: the kind sees its
    # operation and polls it; the next wait is named anew.
    assert "continues" in engine.deliver(first, retry_count=1)
    engine.run()
    done = engine.job(job.id)
    assert done.settled and done.settlement == {"captured": 2 * PRICE, "released": 0}
    item = engine.jobs.read_item("c1", job.id, 1)
    assert item is not None and (item.item.status, item.item.waits) == (ItemStatus.SUCCEEDED, 3)
    names = [t.name for t in engine.queue.tasks if t.path == "/tasks/item" and t.payload.index == 1]  # type: ignore[attr-defined]
    assert len(names) == len(set(names)) == 4  # the first task, then one per wait


def test_a_waiting_item_of_a_cancelled_job_is_cancelled_and_refunded() -> None:
    engine = Engine()
    job = engine.accept("a")
    engine.services.slow[0] = 5
    engine.run(only=is_fanout)
    assert "continues" in engine.deliver(item_tasks(engine)[0])
    lifecycle.cancel_job(WORDS, engine.jobs, engine.queue, "c1", job.id, NOW)
    engine.run()
    done = engine.job(job.id)
    assert done.settled and done.status is JobStatus.CANCELLED
    assert done.settlement == {"captured": 0, "released": PRICE}
    assert statuses(engine, job.id) == [ItemStatus.CANCELLED]


def test_the_reaper_enqueues_a_lost_wait_under_the_items_wait_name() -> None:
    engine = Engine()
    job = engine.accept("a")
    engine.services.slow[0] = 1
    engine.run(only=is_fanout)
    engine.deliver(item_tasks(engine)[0])
    waiting = next(t for t in engine.queue.tasks if t.name and t.name.endswith("-w1"))
    engine.queue.tasks.remove(waiting)  # the scheduled task was never created
    engine.queue.names.discard(waiting.name or "")
    later = NOW + recovery.STALL_GRACE + timedelta(minutes=1)
    report = recovery.reap(WORDS, engine.services, later, lease=LEASE)
    assert report.items_requeued == {"c1": [f"{job.id}/000000"]}
    again = [t for t in engine.queue.tasks if t.name and t.name.endswith("-w1")]
    assert len(again) == 1
    engine.run()
    assert engine.job(job.id).settled and statuses(engine, job.id) == [ItemStatus.SUCCEEDED]
