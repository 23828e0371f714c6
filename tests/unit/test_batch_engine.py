"""The batch engine end to end without Firestore: a small kind driven through accept → fan-out →
items → settle on the in-memory job store, a real ledger on its in-memory store and a recording
queue delivered by hand. What is charged is exactly what succeeded; a redelivered item (or one whose
commit answer was lost) runs once; an item whose delivery died is given up by the reaper and the job
settles; a cancelled job refunds the items it never started."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from shared.batch import lifecycle, recovery
from shared.batch.kind import BatchPolicy, Finish, ItemRun, JobKind, JobOrder, JobServices, Totals
from shared.batch.models import (
    BatchItemDoc,
    FanoutPageTask,
    ItemStatus,
    ItemTask,
    JobStatus,
    JobTask,
    PagedJobDoc,
)
from shared.batch.store import StaleWrite
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
        if run.item.word == "no":
            raise Refused("refused")
        return Finish(ItemStatus.SUCCEEDED)

    def charge(self, job: WordJob, totals: Totals) -> int:
        return PRICE * totals.succeeded

    def settle_reason(self, job: WordJob, totals: Totals) -> str:
        return f"word job {job.id}: {totals.succeeded} words"


WORDS = Words()


class Engine:
    """One tenant, the in-memory store, a real ledger and a queue delivered by hand."""

    def __init__(self, credits: int = 100) -> None:
        self.jobs: InMemoryJobStore[WordJob, WordItem] = InMemoryJobStore(WORDS)
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
            clock=lambda: NOW,
        )
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
