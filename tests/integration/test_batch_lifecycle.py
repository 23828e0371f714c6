"""The batch-job lifecycle on the Firestore emulator with two toy kinds, the way the next kinds
(videos, store sync-back) will use it: a large one (items written page by page, progress counted in
shards) and a small one (items written with the job, progress read from them). Tasks are delivered by
hand from a recording queue, so each test decides what is redelivered and when; the ledger is the
real one on an in-memory store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.adapters.firestore.batch import FirestoreJobStore, jobs_collection
from shared.batch import lifecycle, recovery
from shared.batch.kind import (
    BatchPolicy,
    Finish,
    ItemRun,
    JobKind,
    JobOrder,
    JobServices,
    PauseJob,
    RequestKey,
    Totals,
)
from shared.batch.models import (
    BatchItemDoc,
    BatchJobDoc,
    FanoutPageTask,
    ItemStatus,
    ItemTask,
    JobStatus,
    JobTask,
    PagedJobDoc,
)
from shared.errors import EpoxError, IdempotencyKeyReused, UpstreamUnavailable
from shared.events.model import EventType
from shared.ledger.model import Actor, EntryType, GrantSource
from shared.ledger.service import Ledger
from shared.tasks import RetryTask, TaskCall, TaskRequest
from tests.fakes import InMemoryLedgerStore, InMemoryObjectStore, RecordingTaskQueue
from tests.firestore_faults import FaultyClient, writes_to

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def db(firestore_emulator: str) -> Any:
    """A Firestore project of this test's own: the reaper works across tenants, so it sees only this
    test's jobs (and never another test's)."""
    return FaultyClient()


POLICY = BatchPolicy(max_attempts=3, hold_ttl=timedelta(hours=1), fanout_page=2, counter_shards=2)
LEASE = timedelta(minutes=45)


@dataclass(frozen=True, kw_only=True)
class HarnessServices(JobServices):
    """The test kinds' services: their steps are what the harness's test gives them."""

    harness: Harness


@dataclass(frozen=True, kw_only=True)
class HarnessOrder(JobOrder):
    items: list[Any]
    at: datetime
    fields: dict[str, Any] = field(default_factory=dict)


class ByHarness:
    """The test kinds' steps: recorded, paged and worked by the harness."""

    def record(self, services: HarnessServices, order: HarnessOrder, job_id: str, hold_id: str) -> Any:
        return services.harness.record(order, job_id, hold_id)

    def page_items(self, services: HarnessServices, job: Any, start: int, stop: int, status: ItemStatus) -> list[Any]:
        return [s.model_copy(update={"status": status}) for s in services.harness.specs[start:stop]]

    def work(self, services: HarnessServices, run: ItemRun[Any, Any]) -> Finish:
        return services.harness.work(run)


class ClipJob(PagedJobDoc):
    unit_price: int


class ClipItem(BatchItemDoc):
    prompt: str = ""
    seconds: int = 0


class Clips(ByHarness, JobKind[ClipJob, ClipItem, HarnessServices, HarnessOrder]):
    """A large kind, like video generation: each item makes up to 8 seconds, paid per second."""

    collection = "clip_jobs"
    id_prefix = "clp"
    noun = "clip job"
    label = "clip job"
    worker = "clip_tasks"
    task_prefix = "clip-"
    hold_prefix = "clip"
    operation = "generate_video"
    completed_event = EventType.GENERATION_JOB_COMPLETED  # any type: a test kind
    job_model = ClipJob
    item_model = ClipItem
    counted = True

    def tally(self, job: ClipJob, item: ClipItem) -> dict[str, int]:
        return {"seconds": item.seconds}

    def charge(self, job: ClipJob, totals: Totals) -> int:
        return totals["seconds"] * job.unit_price

    def settle_reason(self, job: ClipJob, totals: Totals) -> str:
        return f"clip job {job.id}: {totals['seconds']} s"


class SyncItem(BatchItemDoc):
    image: str
    cost: int


class Syncs(ByHarness, JobKind[BatchJobDoc, SyncItem, HarnessServices, HarnessOrder]):
    """A small kind, like store sync-back: one item per image, written with the job."""

    collection = "sync_jobs"
    id_prefix = "syn"
    noun = "sync job"
    label = "sync job"
    worker = "sync_tasks"
    task_prefix = "sync-"
    hold_prefix = "sync"
    operation = "sync"
    completed_event = EventType.GENERATION_JOB_COMPLETED  # any type: a test kind
    job_model = BatchJobDoc
    item_model = SyncItem

    def tally(self, job: BatchJobDoc, item: SyncItem) -> dict[str, int]:
        return {"earned": item.cost} if item.status is ItemStatus.SUCCEEDED else {}

    def charge(self, job: BatchJobDoc, totals: Totals) -> int:
        return totals["earned"]

    def settle_reason(self, job: BatchJobDoc, totals: Totals) -> str:
        return f"sync job {job.id}"


CLIPS, SYNCS = Clips(), Syncs()


def store(db: Any, kind: JobKind[Any, Any, Any, Any]) -> FirestoreJobStore[Any, Any]:
    """The kind's documents on the test's Firestore."""
    return FirestoreJobStore(db, kind)


Work = Callable[[ItemRun[Any, Any]], Finish]


class FlakyObjectStore(InMemoryObjectStore):
    """The object store having a bad minute: every write fails while ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def put(self, key: str, data: bytes, content_type: str, *, cache_control: str | None = None) -> None:
        if self.down:
            raise UpstreamUnavailable("The object store is unavailable")
        super().put(key, data, content_type, cache_control=cache_control)


class Killed(BaseException):
    """The worker process dies mid-item (function timeout, out of memory): nothing after it runs, and
    nothing answers the queue (not an Exception, so no handler of ours sees it)."""


class Harness:
    """One tenant's jobs of one kind, a recording queue delivered by hand, a ledger whose clock the
    test moves (``now``), and an object store where accepting a job keeps its item list. Tasks see
    time stand still at NOW, unless a test gives the workers a ``clock`` (when items finish)."""

    def __init__(self, db: Any, client_id: str, kind: JobKind[Any, Any], work: Work) -> None:
        self.db, self.client_id, self.kind, self.work = db, client_id, kind, work
        self.jobs: FirestoreJobStore[Any, Any] = store(db, kind)
        self.queue = RecordingTaskQueue()
        self.store = FlakyObjectStore()
        self.now = NOW
        self.ledger = Ledger(InMemoryLedgerStore(), clock=lambda: self.now)
        self.ledger.grant(
            client_id, key="g", amount=100, source=GrantSource.PACK, actor=Actor(kind="admin", id="t"), reason="t"
        )
        self.delivered: set[int] = set()
        self.outcomes: list[str] = []
        self.clock: Callable[[], datetime] | None = None
        self.policy = POLICY  # what the workers run with (accept always uses POLICY)

    def services(self, at: datetime | None = None, policy: BatchPolicy | None = None) -> HarnessServices:
        """What the lifecycle runs with now: the harness's queue and policy, time standing still at NOW
        (or at ``at``), unless the test gave the workers a ``clock``."""
        clock = (lambda: at) if at is not None else (self.clock or (lambda: NOW))
        return HarnessServices(
            jobs=self.jobs,
            store=self.store,
            queue=self.queue,
            ledger=self.ledger,
            policy=policy or self.policy,
            clock=clock,
            harness=self,
        )

    def accept(
        self, items: list[Any], cost: int, key: RequestKey | None = None, at: datetime = NOW, **fields: Any
    ) -> Any:
        if self.kind.paged:
            fields["fanout_pages"] = lifecycle.fanout_pages(len(items), POLICY)
        order = HarnessOrder(
            client_id=self.client_id, user_id="u1", request_key=key, amount=cost, items=items, at=at, fields=fields
        )
        return lifecycle.accept(self.kind, self.services(policy=POLICY), order)

    def record(self, order: HarnessOrder, job_id: str, hold_id: str) -> tuple[Any, Sequence[Any]]:
        kind, key = self.kind, order.request_key
        self.specs = order.items
        # What a kind stores besides the job document (generation's item list, edit masks).
        self.store.put(f"clients/{self.client_id}/{kind.collection}/{job_id}/items.json", b"[]", "application/json")
        job = kind.job_model(
            id=job_id,
            client_id=self.client_id,
            item_count=len(order.items),
            cost=order.amount,
            hold_id=hold_id,
            created_by="u1",
            created_at=order.at,
            updated_at=order.at,
            request_fingerprint=key.fingerprint if key else None,
            **order.fields,
        )
        return job, [] if kind.paged else order.items

    def deliver(self, task: TaskRequest, retry_count: int = 0) -> str:
        self.delivered.add(id(task))
        call = TaskCall(queue="q", name=task.name or "", retry_count=retry_count, execution_count=retry_count)
        payload = task.payload
        if task.path == "/tasks/fanout" and isinstance(payload, FanoutPageTask):
            outcome = lifecycle.run_fanout_page(self.kind, self.services(), payload, NOW)
        elif task.path == "/tasks/fanout":
            assert isinstance(payload, JobTask)
            outcome = lifecycle.run_fanout(self.kind, self.services(), payload, NOW)
        elif task.path == "/tasks/item":
            assert isinstance(payload, ItemTask)
            outcome = lifecycle.run_item(self.kind, self.services(), payload, call, NOW)
        else:
            assert isinstance(payload, JobTask)
            outcome = lifecycle.run_settle(self.kind, self.services(), payload, NOW)
        self.outcomes.append(outcome)
        return outcome

    def lose(self, task: TaskRequest) -> None:
        """Cloud Tasks gives ``task`` up without a delivery reaching the worker (every attempt failed
        before it: no instance, a token check), and, an hour later, frees its name."""
        self.delivered.add(id(task))
        if task.name is not None:
            self.queue.names.discard(task.name)

    def pending(self, path: str) -> list[TaskRequest]:
        """This tenant's tasks for ``path`` not delivered (or lost) yet."""
        return [t for t in self.queue.tasks if t.path == path and id(t) not in self.delivered and self.ours(t)]

    def ours(self, task: TaskRequest) -> bool:
        """The reaper works for every tenant: what it enqueues for other tests' jobs is not delivered here."""
        return isinstance(task.payload, JobTask) and task.payload.client_id == self.client_id

    def run(self) -> None:
        """Deliver every task not delivered yet, including the ones enqueued on the way: those due now
        in order, then the scheduled ones (settle tasks, after their window; the clock stands still)."""
        while waiting := [t for t in self.queue.tasks if id(t) not in self.delivered and self.ours(t)]:
            self.deliver(min(waiting, key=lambda t: t.schedule_time is not None))

    def job(self, job_id: str) -> Any:
        return self.jobs.get_job(self.client_id, job_id)

    def item(self, job_id: str, index: int) -> dict[str, Any]:
        doc: dict[str, Any] = self.jobs.item_ref(self.client_id, job_id, index).get().to_dict()
        return doc

    def credits(self) -> tuple[int, int]:
        state = self.ledger.state(self.client_id)
        return state.available, state.reserved

    def reap(self, at: datetime) -> list[str]:
        """The reaper's run at ``at``: this tenant's items it failed ("{job}/{index}")."""
        return self.reap_report(at).items_failed.get(self.client_id, [])

    def reap_run(self, at: datetime, **options: Any) -> Any:
        """The reaper's run at ``at`` (settle tasks named after ``at``), with the harness's queue."""
        return recovery.reap(self.kind, self.services(at=at), at, lease=LEASE, **options)

    def reap_report(self, at: datetime, **options: Any) -> Any:
        report = self.reap_run(at, **options)
        assert not report.failed.get(self.client_id), report
        return report

    def exact(self) -> None:
        """Balances equal what the entries say and no hold is left pending."""
        assert self.ledger.verify(self.client_id) == []
        assert self.ledger.state(self.client_id).holds == {}


def clips(*seconds: int) -> list[ClipItem]:
    return [ClipItem(index=i, prompt=f"clip {s}", updated_at=NOW) for i, s in enumerate(seconds)]


def make_clips(run: ItemRun[ClipJob, ClipItem]) -> Finish:
    """Seconds from the prompt; 0 fails the item."""
    seconds = int(run.item.prompt.split()[1])
    if not seconds:
        raise EpoxError("nothing to render")
    return Finish(ItemStatus.SUCCEEDED, {"seconds": seconds})


def test_a_paged_counted_kind_runs_reserves_once_and_charges_what_was_made(db: Any, client_id: str) -> None:
    h = Harness(db, client_id, CLIPS, make_clips)
    job = h.accept(clips(4, 0, 8, 2, 6), cost=5 * 8, unit_price=1)
    assert h.credits() == (60, 40)
    h.run()

    done = h.job(job.id)
    assert done.status is JobStatus.COMPLETED and done.fanout_pages_done == 3
    assert done.settlement == {"captured": 20, "released": 20}
    assert h.credits() == (80, 0)
    progress = lifecycle.progress(CLIPS, store(db, CLIPS), done)
    assert progress.totals.values == {
        "done_items": 5,
        "succeeded_items": 4,
        "failed_items": 1,
        "seconds": 20,
    }
    assert (progress.queued, progress.running, progress.fraction) == (0, 0, 1.0)
    shards = list(jobs_collection(db, CLIPS.collection, client_id).document(job.id).collection("counters").stream())
    assert len(shards) == POLICY.counter_shards
    failed = lifecycle.items_with_status(store(db, CLIPS), client_id, job.id, ItemStatus.FAILED)
    assert [(i.index, i.failure["code"]) for i in failed] == [(1, "internal_error")]
    assert [t.name for t in h.queue.tasks if t.path == "/tasks/fanout"] == [
        f"clip-fanout-{client_id}-{job.id}-{page}" for page in range(3)
    ]


def test_redelivered_tasks_change_nothing(db: Any, client_id: str) -> None:
    h = Harness(db, client_id, CLIPS, make_clips)
    job = h.accept(clips(3, 5), cost=16, unit_price=2)
    h.run()
    settled = h.job(job.id)
    counters_ref = jobs_collection(db, CLIPS.collection, client_id).document(job.id).collection("counters")
    counters = sorted(str(s.to_dict()) for s in counters_ref.stream())
    for task in list(h.queue.tasks):
        h.deliver(task, retry_count=1)
    assert h.outcomes[-4:] == [
        "job already settled",
        "item already succeeded",
        "item already succeeded",
        "already settled",
    ]
    assert sorted(str(s.to_dict()) for s in counters_ref.stream()) == counters
    assert h.job(job.id).settlement == settled.settlement == {"captured": 16, "released": 0}


def test_only_one_of_two_racing_deliveries_records_the_item(db: Any, client_id: str) -> None:
    racing: list[str] = []

    def work(run: ItemRun[ClipJob, ClipItem]) -> Finish:
        if run.item.attempts == 0:  # while this delivery works, another delivery of the same task runs to the end
            racing.append(h.deliver(h.queue.tasks[-1]))
        return make_clips(run)

    h = Harness(db, client_id, CLIPS, work)
    job = h.accept(clips(7), cost=8, unit_price=1)
    h.deliver(h.queue.tasks[0])  # the fan-out
    outcome = h.deliver(h.queue.tasks[-1])
    assert racing == ["item 0 succeeded"]
    assert outcome == "another delivery finished this item"
    h.run()
    assert lifecycle.progress(CLIPS, store(db, CLIPS), h.job(job.id)).totals.values["seconds"] == 7
    assert h.job(job.id).settlement == {"captured": 7, "released": 1}


def test_transient_errors_are_retried_and_the_last_attempt_fails_the_item(db: Any, client_id: str) -> None:
    def busy(run: ItemRun[BatchJobDoc, SyncItem]) -> Finish:
        raise RetryTask("store busy", retry_after=3)

    h = Harness(db, client_id, SYNCS, busy)
    job = h.accept([SyncItem(index=0, image="a", cost=2, updated_at=NOW)], cost=2)
    h.deliver(h.queue.tasks[0])
    item_task = h.queue.tasks[-1]
    for retry in range(POLICY.max_attempts - 1):
        with pytest.raises(RetryTask):
            h.deliver(item_task, retry_count=retry)
    assert h.deliver(item_task, retry_count=POLICY.max_attempts - 1) == "item failed: retry_task"
    h.run()
    item = store(db, SYNCS).item_ref(client_id, job.id, 0).get().to_dict()
    assert (item["status"], item["attempts"]) == ("failed", POLICY.max_attempts)
    assert h.job(job.id).settlement == {"captured": 0, "released": 2}
    assert h.credits() == (100, 0)


def test_a_cancelled_job_runs_no_more_items_and_releases_them(db: Any, client_id: str) -> None:
    h = Harness(db, client_id, SYNCS, lambda run: Finish(ItemStatus.SUCCEEDED))
    images = [SyncItem(index=i, image=f"img{i}", cost=3, updated_at=NOW) for i in range(3)]
    job = h.accept(images, cost=9)
    assert [i.status for i in lifecycle.all_items(store(db, SYNCS), job)] == [ItemStatus.QUEUED] * 3
    h.deliver(h.queue.tasks[0])  # fan-out: three item tasks
    h.deliver(h.queue.tasks[1])  # the first item runs
    stopping = lifecycle.cancel_job(SYNCS, store(db, SYNCS), h.queue, client_id, job.id, NOW)
    assert stopping.status is JobStatus.CANCELLING
    assert lifecycle.cancel_job(SYNCS, store(db, SYNCS), h.queue, client_id, job.id, NOW).status is JobStatus.CANCELLING
    h.run()

    done = h.job(job.id)
    assert done.status is JobStatus.CANCELLED
    assert [i.status for i in lifecycle.all_items(store(db, SYNCS), done)] == [
        ItemStatus.SUCCEEDED,
        ItemStatus.CANCELLED,
        ItemStatus.CANCELLED,
    ]
    assert done.settlement == {"captured": 3, "released": 6}
    assert h.credits() == (97, 0)


def test_a_key_names_one_job_and_one_request(db: Any, client_id: str) -> None:
    h = Harness(db, client_id, SYNCS, lambda run: Finish(ItemStatus.SUCCEEDED))
    key = RequestKey(key="k1", fingerprint="body-a")
    images = [SyncItem(index=0, image="a", cost=4, updated_at=NOW)]
    first = h.accept(images, cost=4, key=key)
    again = h.accept(images, cost=4, key=key)
    assert again.id == first.id and h.credits() == (96, 4)
    with pytest.raises(IdempotencyKeyReused):
        h.accept(images, cost=4, key=RequestKey(key="k1", fingerprint="body-b"))
    # Two requests racing past the lookup: the second write loses and answers the first job.
    late = BatchJobDoc.model_validate({**first.model_dump(), "cost": 99})
    assert lifecycle.submit(SYNCS, store(db, SYNCS), h.queue, late, images).cost == 4
    with pytest.raises(IdempotencyKeyReused):
        lifecycle.submit(
            SYNCS, store(db, SYNCS), h.queue, late.model_copy(update={"request_fingerprint": "body-b"}), images
        )
    assert [t.path for t in h.queue.tasks] == ["/tasks/fanout"]


# -- recovery: killed deliveries, holds the sweeper took, jobs that could not be recorded -----------


def killing(prompt: str) -> Work:
    """``make_clips``, except that the delivery of the item with ``prompt`` dies mid-work."""

    def work(run: ItemRun[ClipJob, ClipItem]) -> Finish:
        if run.item.prompt == prompt:
            raise Killed()
        return make_clips(run)

    return work


def test_an_item_whose_delivery_was_killed_is_failed_by_the_reaper_and_refunded(db: Any, client_id: str) -> None:
    h = Harness(db, client_id, CLIPS, killing("clip 5"))
    job = h.accept(clips(4, 5, 3), cost=24, unit_price=1)
    with pytest.raises(Killed):
        h.run()  # the fan-out, item 0, then item 1's delivery dies with the item marked running
    h.run()  # no delivery of item 1 will come again: the job cannot settle on its own
    assert h.outcomes[-1] == "2/3 items finished"
    assert h.item(job.id, 1)["status"] == "running" and h.job(job.id).status is JobStatus.RUNNING
    assert h.credits() == (76, 24)

    assert h.reap(NOW + LEASE - timedelta(seconds=1)) == []  # still within its lease: it may yet finish
    at = NOW + LEASE + timedelta(seconds=1)
    capped = recovery.reap(CLIPS, h.services(at=at), at, lease=LEASE, limit=0)
    assert capped.more and capped.items_failed == {}  # a run stops at its limit; the next one goes on
    assert h.reap(NOW + LEASE + timedelta(seconds=1)) == [f"{job.id}/000001"]
    item = h.item(job.id, 1)
    assert (item["status"], item["failure"]["code"], item["failure"]["retryable"]) == (
        "failed",
        "item_timed_out",
        False,
    )
    h.run()  # the settlement the reaper enqueued

    done = h.job(job.id)
    assert done.status is JobStatus.COMPLETED and done.settlement == {"captured": 7, "released": 17}
    totals = lifecycle.progress(CLIPS, store(db, CLIPS), done).totals.values
    assert totals == {"done_items": 3, "succeeded_items": 2, "failed_items": 1, "seconds": 7}
    assert h.credits() == (93, 0)
    h.exact()
    # A second run finds nothing, and a late redelivery of the item's task changes nothing.
    assert h.reap(NOW + LEASE * 3) == []
    assert h.deliver(CLIPS.item_task(client_id, job.id, 1), retry_count=2) == "item already failed"
    assert lifecycle.progress(CLIPS, store(db, CLIPS), h.job(job.id)).totals.values == totals


def test_the_reaper_and_a_late_delivery_never_both_record_an_item(db: Any, client_id: str) -> None:
    stale: list[Any] = []

    def work(run: ItemRun[ClipJob, ClipItem]) -> Finish:
        if run.item.index == 0:
            # Item 0's delivery outlives the lease: the reaper fails the item while it is still working.
            assert h.reap(NOW + LEASE + timedelta(minutes=1)) == [f"{run.job.id}/000000"]
        else:
            stale.append(
                h.jobs.read_item(client_id, run.job.id, run.item.index)
            )  # the running item as a reaper's query found it a moment ago
        return make_clips(run)

    h = Harness(db, client_id, CLIPS, work)
    job = h.accept(clips(4, 6), cost=16, unit_price=1)
    h.run()
    # The reaper won item 0: the delivery that came back afterwards recorded nothing.
    assert "another delivery finished this item" in h.outcomes
    assert h.item(job.id, 0)["status"] == "failed"
    # Item 1's delivery won: the reaper's write, guarded by what it read, changes nothing.
    assert h.item(job.id, 1)["status"] == "succeeded"
    assert not recovery.fail_stuck_item(CLIPS, h.services(at=NOW + LEASE * 2), stale[0], NOW + LEASE * 2, LEASE)
    assert h.item(job.id, 1)["status"] == "succeeded"
    h.run()

    done = h.job(job.id)
    totals = lifecycle.progress(CLIPS, store(db, CLIPS), done).totals.values
    assert totals == {"done_items": 2, "succeeded_items": 1, "failed_items": 1, "seconds": 6}
    assert done.settlement == {"captured": 6, "released": 10}
    assert h.credits() == (94, 0)
    h.exact()


def test_an_uncounted_kinds_stuck_item_is_reaped_too(db: Any, client_id: str) -> None:
    def work(run: ItemRun[BatchJobDoc, SyncItem]) -> Finish:
        if run.item.image == "huge":
            raise Killed()
        return Finish(ItemStatus.SUCCEEDED)

    h = Harness(db, client_id, SYNCS, work)
    images = [
        SyncItem(index=0, image="a", cost=3, updated_at=NOW),
        SyncItem(index=1, image="huge", cost=5, updated_at=NOW),
    ]
    job = h.accept(images, cost=8)
    # A clip job of another tenant's kind is not this kind's to reap: each kind's worker reaps its own.
    clip_run = Harness(db, client_id, CLIPS, killing("clip 2"))
    clip_job = clip_run.accept(clips(2), cost=8, unit_price=1)
    with pytest.raises(Killed):
        clip_run.run()
    with pytest.raises(Killed):
        h.run()
    h.run()
    assert h.reap(NOW + LEASE + timedelta(minutes=1)) == [f"{job.id}/000001"]
    assert clip_run.item(clip_job.id, 0)["status"] == "running"
    h.run()
    done = h.job(job.id)
    assert done.settlement == {"captured": 3, "released": 5}
    assert [i.status for i in lifecycle.all_items(store(db, SYNCS), done)] == [ItemStatus.SUCCEEDED, ItemStatus.FAILED]
    assert h.credits() == (97, 0)
    h.exact()


def test_a_job_settling_after_the_sweeper_released_its_hold_charges_nothing(db: Any, client_id: str) -> None:
    h = Harness(db, client_id, SYNCS, lambda run: Finish(ItemStatus.SUCCEEDED))
    images = [SyncItem(index=i, image=f"img{i}", cost=3, updated_at=NOW) for i in range(2)]
    job = h.accept(images, cost=6)
    h.deliver(h.queue.tasks[0])  # fan-out
    h.deliver(h.queue.tasks[1])  # item 0
    # The job runs past its hold's deadline: the sweeper gives the credits back.
    h.now = NOW + POLICY.hold_ttl + timedelta(minutes=1)
    assert h.ledger.sweep_expired_holds(client_id, actor=Actor(kind="system", id="sweeper")) == [job.hold_id]
    assert h.credits() == (100, 0)
    h.run()  # item 1, then the settlement: the hold can no longer be captured

    done = h.job(job.id)
    assert done.settled and done.status is JobStatus.COMPLETED
    assert done.settlement == {"captured": 0, "released": 6}
    assert h.outcomes[-1] == "settled: captured 0, released 6"
    assert h.credits() == (100, 0)
    entries = [e.type for e in h.ledger.store.entries(client_id)]
    assert EntryType.CAPTURE not in entries and entries.count(EntryType.RELEASE) == 1
    h.exact()
    assert h.deliver(SYNCS.settle_task(client_id, job.id, NOW)) == "already settled"


def test_a_settlement_repeated_after_its_capture_charges_once(db: Any, client_id: str) -> None:
    h = Harness(db, client_id, SYNCS, lambda run: Finish(ItemStatus.SUCCEEDED))
    job = h.accept([SyncItem(index=0, image="a", cost=4, updated_at=NOW)], cost=4)
    h.run()
    assert h.job(job.id).settlement == {"captured": 4, "released": 0}
    entries = len(h.ledger.store.entries(client_id))
    # A settlement that died between its capture and its job write runs again, even past the deadline:
    # the capture replays (it is not mistaken for a hold the sweeper released).
    jobs_collection(db, SYNCS.collection, client_id).document(job.id).update({"settled": False})
    h.now = NOW + POLICY.hold_ttl * 2
    assert h.ledger.sweep_expired_holds(client_id, actor=Actor(kind="system", id="sweeper")) == []
    assert h.deliver(SYNCS.settle_task(client_id, job.id, NOW)) == "settled: captured 4, released 0"
    assert h.job(job.id).settled and len(h.ledger.store.entries(client_id)) == entries
    assert h.credits() == (96, 0)
    h.exact()


def test_a_job_whose_objects_cannot_be_stored_releases_its_hold_and_a_retry_reserves_afresh(
    db: Any, client_id: str
) -> None:
    h = Harness(db, client_id, CLIPS, make_clips)
    key = RequestKey(key="k-store", fingerprint="body")
    h.store.down = True
    with pytest.raises(UpstreamUnavailable):
        h.accept(clips(3, 4), cost=16, key=key, unit_price=1)
    job_id = lifecycle.job_id_for(CLIPS, client_id, key)
    assert not jobs_collection(db, CLIPS.collection, client_id).document(job_id).get().exists
    assert h.credits() == (100, 0) and h.queue.tasks == []
    h.exact()

    # The caller retries with the same key once the store is back: the released hold is not reused.
    h.store.down = False
    job = h.accept(clips(3, 4), cost=16, key=key, unit_price=1)
    assert job.id == job_id and h.credits() == (84, 16)
    assert h.accept(clips(3, 4), cost=16, key=key, unit_price=1).hold_id == job.hold_id  # and once only
    assert h.credits() == (84, 16)
    h.run()
    assert h.job(job.id).settlement == {"captured": 7, "released": 9}
    assert h.credits() == (93, 0)
    reserves = [e for e in h.ledger.store.entries(client_id) if e.type is EntryType.RESERVE]
    assert len(reserves) == 2 and len({e.hold_id for e in reserves}) == 2
    h.exact()


def test_a_job_firestore_refuses_to_record_releases_its_hold(db: Any, client_id: str) -> None:
    from google.api_core.exceptions import InvalidArgument

    h = Harness(db, client_id, SYNCS, lambda run: Finish(ItemStatus.SUCCEEDED))
    # An item over Firestore's 1 MiB document limit: the job's commit is refused after the reservation.
    images = [SyncItem(index=0, image="a", cost=2, updated_at=NOW), SyncItem(index=1, image="x" * 1_100_000, cost=2)]
    with pytest.raises(InvalidArgument):
        h.accept(images, cost=4)
    assert list(jobs_collection(db, SYNCS.collection, client_id).stream()) == []
    assert h.credits() == (100, 0) and h.queue.tasks == []
    h.exact()


class DownQueue(RecordingTaskQueue):
    """Cloud Tasks refusing every task."""

    def enqueue(self, task: TaskRequest) -> bool:
        raise UpstreamUnavailable("The task queue is unavailable")


def test_a_recorded_job_whose_fan_out_was_lost_is_started_by_the_reaper(db: Any, client_id: str) -> None:
    h = Harness(db, client_id, SYNCS, lambda run: Finish(ItemStatus.SUCCEEDED))
    h.queue = DownQueue()
    job = h.accept([SyncItem(index=0, image="a", cost=5, updated_at=NOW)], cost=5)
    # Recorded, and holding its credits: the caller gets the job, not a 503 inviting a second one.
    assert h.job(job.id).status is JobStatus.QUEUED and h.credits() == (95, 5)
    h.queue = RecordingTaskQueue()
    assert h.reap_run(NOW + timedelta(minutes=5)).jobs_started == {}
    report = h.reap_run(NOW + recovery.FANOUT_GRACE + timedelta(seconds=1))
    assert report.jobs_started.get(client_id) == [job.id]
    h.run()
    assert h.job(job.id).settlement == {"captured": 5, "released": 0}
    assert h.credits() == (95, 0)
    h.exact()


# -- recovery: settlements that were lost, cancelled jobs whose items never got a task --------------


def killing_all(*prompts: str) -> Work:
    """``make_clips``, except that the delivery of every item with one of ``prompts`` dies mid-work."""

    def work(run: ItemRun[ClipJob, ClipItem]) -> Finish:
        if run.item.prompt in prompts:
            raise Killed()
        return make_clips(run)

    return work


class PromptQueue(RecordingTaskQueue):
    """Cloud Tasks running each of the harness's settle tasks as soon as its window has closed, while
    whoever enqueued it goes on working: the clock moves to the task's schedule time and it runs."""

    def __init__(self, harness: Harness, clock: list[datetime]) -> None:
        super().__init__()
        self.harness, self.clock = harness, clock

    def enqueue(self, task: TaskRequest) -> bool:
        added = super().enqueue(task)
        if added and task.path == "/tasks/settle" and self.harness.ours(task):
            assert task.schedule_time is not None
            self.clock[0] = max(self.clock[0], task.schedule_time)
            self.harness.deliver(task)
        return added


class RefusingQueue(RecordingTaskQueue):
    """Cloud Tasks refusing the settle tasks while ``down`` (everything else is enqueued)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def enqueue(self, task: TaskRequest) -> bool:
        if self.down and task.path == "/tasks/settle":
            raise UpstreamUnavailable("The task queue is unavailable")
        return super().enqueue(task)


def test_a_reaper_run_that_fails_several_items_of_one_job_still_settles_it(db: Any, client_id: str) -> None:
    h = Harness(db, client_id, CLIPS, killing_all("clip 3", "clip 4"))
    job = h.accept(clips(3, 4), cost=16, unit_price=1)
    for _ in range(2):
        with pytest.raises(Killed):
            h.run()  # the fan-out and item 0, then item 1: both deliveries die with their item running
    assert [h.item(job.id, i)["status"] for i in range(2)] == ["running", "running"]

    # The reaper fails item 0 and goes on; item 0's settle runs once its window closes and finds
    # 1 of 2 finished; only then does the reaper fail item 1, whose settle must not be that one again.
    at = NOW + LEASE + timedelta(minutes=1)
    clock = [at]
    h.queue = PromptQueue(h, clock)
    report = recovery.reap(CLIPS, replace(h.services(), clock=lambda: clock[0]), at, lease=LEASE)
    assert sorted(report.items_failed[client_id]) == [f"{job.id}/000000", f"{job.id}/000001"]
    assert h.outcomes[-2:] == ["1/2 items finished", "settled: captured 0, released 16"]
    assert client_id not in report.settles_enqueued  # item 1's own settle task settled the job
    h.run()

    done = h.job(job.id)
    assert done.status is JobStatus.COMPLETED and done.settlement == {"captured": 0, "released": 16}
    totals = lifecycle.progress(CLIPS, store(db, CLIPS), done).totals.values
    assert totals == {"done_items": 2, "failed_items": 2, "seconds": 0}
    assert h.credits() == (100, 0)
    h.exact()


def test_a_settlement_that_could_not_be_enqueued_is_enqueued_by_the_reaper(db: Any, client_id: str) -> None:
    # The item worker's last attempt records the item, then Cloud Tasks refuses its settle task: no
    # delivery of the item will come again to ask for one.
    h = Harness(db, client_id, SYNCS, lambda run: Finish(ItemStatus.SUCCEEDED))
    h.queue = queue = RefusingQueue()
    job = h.accept([SyncItem(index=0, image="a", cost=4, updated_at=NOW)], cost=4)
    h.deliver(queue.tasks[0])  # the fan-out
    queue.down = True
    with pytest.raises(UpstreamUnavailable):
        h.deliver(queue.tasks[-1], retry_count=POLICY.max_attempts - 1)
    assert h.item(job.id, 0)["status"] == "succeeded" and h.job(job.id).status is JobStatus.RUNNING
    queue.down = False
    h.run()  # nothing left to deliver
    assert not h.job(job.id).settled and h.credits() == (96, 4)

    early = h.reap_run(NOW + timedelta(minutes=5))
    assert client_id not in early.settles_enqueued  # young jobs are left to their own settle tasks
    report = h.reap_run(NOW + recovery.FANOUT_GRACE + timedelta(seconds=1))
    assert report.settles_enqueued.get(client_id) == [job.id]
    h.run()
    assert h.job(job.id).settlement == {"captured": 4, "released": 0}
    assert h.credits() == (96, 0)
    h.exact()


def test_a_reaped_item_whose_settle_could_not_be_enqueued_settles_on_the_next_run(db: Any, client_id: str) -> None:
    h = Harness(db, client_id, CLIPS, killing("clip 5"))
    h.queue = queue = RefusingQueue()
    job = h.accept(clips(4, 5), cost=16, unit_price=1)
    with pytest.raises(Killed):
        h.run()
    h.run()
    assert h.outcomes[-1] == "1/2 items finished"

    at = NOW + LEASE + timedelta(minutes=1)
    queue.down = True
    failing = h.reap_run(at)
    assert failing.failed.get(client_id) == "upstream_unavailable"  # reported: the scheduler runs it again
    assert h.item(job.id, 1)["status"] == "failed"  # recorded before the enqueue failed
    queue.down = False
    again = h.reap_run(at + timedelta(minutes=15))
    assert client_id not in again.failed and client_id not in again.items_failed
    assert again.settles_enqueued.get(client_id) == [job.id]
    h.run()

    done = h.job(job.id)
    assert done.status is JobStatus.COMPLETED and done.settlement == {"captured": 4, "released": 12}
    assert h.credits() == (96, 0)
    h.exact()


@pytest.mark.parametrize("paged", [False, True], ids=["items-written-with-the-job", "paged"])
def test_a_job_cancelled_before_its_lost_fan_out_ran_is_settled_by_the_reaper(
    db: Any, client_id: str, paged: bool
) -> None:
    h = Harness(db, client_id, CLIPS if paged else SYNCS, make_clips)
    h.queue = DownQueue()
    if paged:
        job = h.accept(clips(1, 2, 3), cost=9, unit_price=1)
    else:
        job = h.accept([SyncItem(index=i, image=f"img{i}", cost=3, updated_at=NOW) for i in range(3)], cost=9)
    h.queue = RecordingTaskQueue()
    # The caller cancels the job before the reaper restarted its fan-out: no item has a task.
    assert (
        lifecycle.cancel_job(h.kind, store(db, h.kind), h.queue, client_id, job.id, NOW).status is JobStatus.CANCELLING
    )
    h.run()
    assert h.outcomes == ["0/3 items finished"]

    # Later, the reaper starts the fan-out, and the items are cancelled in a later settle window.
    h.now = NOW + recovery.FANOUT_GRACE + timedelta(seconds=1)
    h.clock = lambda: h.now
    report = h.reap_run(h.now)
    assert report.jobs_started.get(client_id) == [job.id]
    h.run()

    done = h.job(job.id)
    assert done.status is JobStatus.CANCELLED and done.settlement == {"captured": 0, "released": 9}
    items = lifecycle.items_with_status(store(db, h.kind), client_id, job.id, ItemStatus.CANCELLED)
    assert sorted(i.index for i in items) == [0, 1, 2]
    assert h.credits() == (100, 0)
    h.exact()
    # Settled: the next run starts nothing.
    later = h.reap_run(NOW + recovery.FANOUT_GRACE * 2)
    assert client_id not in later.jobs_started and client_id not in later.settles_enqueued


def test_a_fan_out_page_redelivered_after_its_job_was_cancelled_gives_every_queued_item_a_task(
    db: Any, client_id: str
) -> None:
    class LosesOneItemTask(RecordingTaskQueue):
        """Cloud Tasks refusing item 1's task once."""

        lost = False

        def enqueue(self, task: TaskRequest) -> bool:
            if isinstance(task.payload, ItemTask) and task.payload.index == 1 and not self.lost:
                self.lost = True
                raise UpstreamUnavailable("The task queue is unavailable")
            return super().enqueue(task)

    h = Harness(db, client_id, CLIPS, make_clips)
    h.queue = LosesOneItemTask()
    job = h.accept(clips(3, 4, 5), cost=24, unit_price=1)
    page = h.queue.tasks[0]
    with pytest.raises(UpstreamUnavailable):
        h.deliver(page)  # writes items 0 and 1 and enqueues item 0's task; item 1's fails: a 503
    lifecycle.cancel_job(CLIPS, store(db, CLIPS), h.queue, client_id, job.id, NOW)
    h.deliver(page, retry_count=1)  # the queue delivers the page again, now that the job is stopped
    h.run()

    done = h.job(job.id)
    assert done.status is JobStatus.CANCELLED and done.settlement == {"captured": 0, "released": 24}
    items = lifecycle.items_with_status(store(db, CLIPS), client_id, job.id, ItemStatus.CANCELLED)
    assert sorted(i.index for i in items) == [0, 1, 2]
    assert h.credits() == (100, 0)
    h.exact()


# -- a delivery that read its item before someone else finished it ----------------------------------


class RacingClips(Clips):
    """Clips whose next job read first runs ``meanwhile``: what another party does between an item
    delivery's read of its item and its write marking the item running."""

    def __init__(self) -> None:
        self.meanwhile: Callable[[], None] | None = None


class RacingStore(FirestoreJobStore[ClipJob, ClipItem]):
    """The store of :class:`RacingClips` jobs: the next job read first runs the kind's ``meanwhile``."""

    kind: RacingClips

    def get_job(self, client_id: str, job_id: str) -> ClipJob:
        hook, self.kind.meanwhile = self.kind.meanwhile, None
        if hook is not None:
            hook()
        return super().get_job(client_id, job_id)


def _a_delivery_died(db: Any, client_id: str) -> tuple[RacingClips, Harness, ClipJob, Any, list[int]]:
    """A one-item job whose first delivery dies with the item running; later deliveries work. Returns
    the kind, the harness, the job, the item's task (to deliver again) and the attempts the work saw."""
    kind = RacingClips()
    runs: list[int] = []

    def work(run: ItemRun[ClipJob, ClipItem]) -> Finish:
        runs.append(run.item.attempts)
        if run.item.attempts == 0:
            raise Killed()
        return make_clips(run)

    h = Harness(db, client_id, kind, work)
    h.jobs = RacingStore(db, kind)
    job = h.accept(clips(7), cost=8, unit_price=1)
    with pytest.raises(Killed):
        h.run()
    return kind, h, job, h.queue.tasks[-1], runs


def test_a_delivery_that_read_its_item_before_the_reaper_failed_it_neither_runs_nor_counts_it(
    db: Any, client_id: str
) -> None:
    kind, h, job, item_task, runs = _a_delivery_died(db, client_id)

    # Past the lease, the queue delivers the item again just as the reaper gives it up: the delivery
    # read the item as running, the reaper's failure is committed before the delivery's next write.
    reaped: list[str] = []
    kind.meanwhile = lambda: reaped.extend(h.reap(NOW + LEASE + timedelta(minutes=1)))
    assert h.deliver(item_task, retry_count=1) == "another delivery finished this item"
    assert reaped == [f"{job.id}/000000"] and runs == [0]  # the work did not run again
    assert h.item(job.id, 0)["status"] == "failed"
    h.run()

    done = h.job(job.id)
    totals = lifecycle.progress(kind, store(db, kind), done).totals.values
    assert totals == {"done_items": 1, "failed_items": 1, "seconds": 0}
    assert done.settlement == {"captured": 0, "released": 8}
    assert h.credits() == (100, 0)
    h.exact()


def test_a_delivery_that_read_its_item_before_another_delivery_finished_it_changes_nothing(
    db: Any, client_id: str
) -> None:
    kind, h, job, item_task, runs = _a_delivery_died(db, client_id)

    # Two more deliveries of the item task: the later one reads the item (running) while the earlier
    # one runs it to the end; its own write comes after that success was committed.
    first: list[str] = []
    kind.meanwhile = lambda: first.append(h.deliver(item_task, retry_count=1))
    assert h.deliver(item_task, retry_count=2) == "another delivery finished this item"
    assert first == ["item 0 succeeded"] and runs == [0, 1]  # the work ran once more, not twice
    assert h.item(job.id, 0)["status"] == "succeeded"
    h.run()

    done = h.job(job.id)
    totals = lifecycle.progress(kind, store(db, kind), done).totals.values
    assert totals == {"done_items": 1, "succeeded_items": 1, "seconds": 7}
    assert done.settlement == {"captured": 7, "released": 1}
    assert h.credits() == (93, 0)
    h.exact()


# -- liveness: work whose task is gone is found, enqueued again or given up, and the job settles ----


def succeed(run: ItemRun[Any, Any]) -> Finish:
    return Finish(ItemStatus.SUCCEEDED)


def syncs(count: int, cost: int = 3) -> list[SyncItem]:
    return [SyncItem(index=i, image=f"img{i}", cost=cost, updated_at=NOW) for i in range(count)]


STALLED = NOW + recovery.STALL_GRACE + timedelta(minutes=1)


def test_an_item_whose_task_ran_out_of_attempts_before_it_started_is_enqueued_again(db: Any, client_id: str) -> None:
    h = Harness(db, client_id, SYNCS, succeed)
    job = h.accept(syncs(3), cost=9)
    h.deliver(h.queue.tasks[0])  # the fan-out: three item tasks
    [lost] = [t for t in h.pending("/tasks/item") if isinstance(t.payload, ItemTask) and t.payload.index == 2]
    h.lose(lost)  # every attempt failed before the worker took the item
    h.run()
    assert h.outcomes[-1] == "2/3 items finished"
    assert h.item(job.id, 2)["status"] == "queued" and h.job(job.id).status is JobStatus.RUNNING

    early = h.reap_report(NOW + recovery.STALL_GRACE - timedelta(seconds=1))
    assert client_id not in early.items_requeued  # its task may still be retrying
    report = h.reap_report(STALLED)
    assert report.items_requeued[client_id] == [f"{job.id}/000002"]
    h.clock = lambda: STALLED  # the item finishes then: its settle task is for that window
    h.run()

    done = h.job(job.id)
    assert done.status is JobStatus.COMPLETED and done.settlement == {"captured": 9, "released": 0}
    assert h.credits() == (91, 0)
    h.exact()


def test_an_item_whose_tasks_keep_getting_lost_fails_and_the_job_charges_what_succeeded(
    db: Any, client_id: str
) -> None:
    h = Harness(db, client_id, SYNCS, succeed)
    job = h.accept(syncs(2), cost=6)
    h.deliver(h.queue.tasks[0])

    def lose_item_1() -> None:
        for task in h.pending("/tasks/item"):
            if isinstance(task.payload, ItemTask) and task.payload.index == 1:
                h.lose(task)

    lose_item_1()
    h.run()
    at = NOW
    for _ in range(recovery.MAX_REQUEUES):
        at += recovery.STALL_GRACE + timedelta(minutes=1)
        assert h.reap_report(at).items_requeued[client_id] == [f"{job.id}/000001"]
        lose_item_1()
        h.run()
    at += recovery.STALL_GRACE + timedelta(minutes=1)
    report = h.reap_report(at)
    assert report.items_failed[client_id] == [f"{job.id}/000001"] and client_id not in report.items_requeued
    h.run()

    item = h.item(job.id, 1)
    assert (item["status"], item["failure"]["code"], item["requeues"]) == (
        "failed",
        "item_not_started",
        recovery.MAX_REQUEUES,
    )
    done = h.job(job.id)
    assert done.status is JobStatus.COMPLETED and done.settlement == {"captured": 3, "released": 3}
    assert h.credits() == (97, 0)
    h.exact()


def test_a_fan_out_page_that_ran_out_of_attempts_is_enqueued_again(db: Any, client_id: str) -> None:
    h = Harness(db, client_id, CLIPS, make_clips)
    job = h.accept(clips(4, 5, 3, 2, 6), cost=40, unit_price=1)  # pages of 2: three pages
    h.deliver(h.queue.tasks[0])  # page 0: items 0 and 1, then page 1's task
    [page_1] = h.pending("/tasks/fanout")
    h.lose(page_1)
    h.run()
    assert h.job(job.id).status is JobStatus.RUNNING and h.job(job.id).fanout_pages_done == 1

    assert client_id not in h.reap_report(NOW + recovery.STALL_GRACE - timedelta(seconds=1)).jobs_started
    assert h.reap_report(STALLED).jobs_started[client_id] == [job.id]
    h.clock = lambda: STALLED
    h.run()

    done = h.job(job.id)
    assert done.status is JobStatus.COMPLETED and done.fanout_pages_done == 3
    assert done.settlement == {"captured": 20, "released": 20}
    assert h.credits() == (80, 0)
    h.exact()


def test_fan_out_pages_that_keep_getting_lost_are_given_up_and_their_items_refunded(db: Any, client_id: str) -> None:
    h = Harness(db, client_id, CLIPS, make_clips)
    job = h.accept(clips(4, 5, 3, 2, 6), cost=40, unit_price=1)
    h.deliver(h.queue.tasks[0])
    at = NOW
    for _ in range(recovery.MAX_REQUEUES + 1):
        for task in h.pending("/tasks/fanout"):
            h.lose(task)
        h.run()
        if at > NOW:
            assert h.job(job.id).fanout_pages_done == 1
        at += recovery.STALL_GRACE + timedelta(minutes=1)
        report = h.reap_report(at)
    assert report.pages_failed[client_id] == [f"{job.id}/1", f"{job.id}/2"]
    # A page delivery that comes after all writes nothing and counts nothing.
    assert h.deliver(CLIPS.fanout_task(client_id, job.id, 1), retry_count=1) == "fan-out page 2/3: given up"
    h.run()

    done = h.job(job.id)
    assert done.status is JobStatus.COMPLETED and done.fanout_pages_done == 3
    assert done.settlement == {"captured": 9, "released": 31}
    failed = lifecycle.items_with_status(store(db, CLIPS), client_id, job.id, ItemStatus.FAILED)
    assert [(i.index, i.failure["code"]) for i in failed] == [(i, "fanout_page_failed") for i in (2, 3, 4)]
    totals = lifecycle.progress(CLIPS, store(db, CLIPS), done).totals.values
    assert totals == {"done_items": 5, "succeeded_items": 2, "failed_items": 3, "seconds": 9}
    assert h.credits() == (91, 0)
    h.exact()


def test_the_fan_out_pages_with_the_page_size_the_job_was_accepted_with(db: Any, client_id: str) -> None:
    h = Harness(db, client_id, CLIPS, make_clips)
    job = h.accept(clips(1, 2, 3, 4, 5), cost=40, unit_price=1)  # three pages of 2
    h.policy = replace(POLICY, fanout_page=1)  # an instance configured otherwise runs the fan-out
    h.run()

    done = h.job(job.id)
    assert len(lifecycle.all_items(store(db, CLIPS), done)) == 5
    assert (done.fanout_pages, done.fanout_page_size) == (3, 2)
    assert done.status is JobStatus.COMPLETED and done.settlement == {"captured": 15, "released": 25}
    h.exact()


class LosesOneItemTask(RecordingTaskQueue):
    """Cloud Tasks refusing item 1's task once."""

    lost = False

    def enqueue(self, task: TaskRequest) -> bool:
        if isinstance(task.payload, ItemTask) and task.payload.index == 1 and not self.lost:
            self.lost = True
            raise UpstreamUnavailable("The task queue is unavailable")
        return super().enqueue(task)


def test_a_fan_out_page_is_counted_once_whichever_delivery_wrote_its_items(db: Any, client_id: str) -> None:
    h = Harness(db, client_id, CLIPS, make_clips)
    h.queue = LosesOneItemTask()
    job = h.accept(clips(3, 4), cost=16, unit_price=1)  # one page
    page = h.queue.tasks[0]
    with pytest.raises(UpstreamUnavailable):
        h.deliver(page)  # writes both items, then item 1's task is refused
    assert h.job(job.id).fanout_pages_done == 0
    assert h.deliver(page, retry_count=1) == "fan-out page 1/1: 0 items"  # nothing new to write: counted
    assert h.deliver(page, retry_count=2) == "fan-out page 1/1: 0 items"  # and once only
    assert h.job(job.id).fanout_pages_done == 1
    h.run()
    assert h.job(job.id).settlement == {"captured": 7, "released": 9}
    h.exact()


def test_old_jobs_that_need_nothing_do_not_keep_the_reaper_from_newer_ones(db: Any, client_id: str) -> None:
    def work(run: ItemRun[BatchJobDoc, SyncItem]) -> Finish:
        if run.item.image == "busy":
            raise Killed()  # a long item, still within its lease when the reaper runs
        return Finish(ItemStatus.SUCCEEDED)

    h = Harness(db, client_id, SYNCS, work)
    older = [h.accept([SyncItem(index=0, image="busy", cost=1)], cost=1, at=NOW - timedelta(hours=1)) for _ in "ab"]
    for _ in older:
        h.deliver(h.pending("/tasks/fanout")[0])
        with pytest.raises(Killed):
            h.deliver(h.pending("/tasks/item")[0])
    newer = h.accept([SyncItem(index=0, image="ok", cost=2)], cost=2)
    h.deliver(h.pending("/tasks/fanout")[0])
    assert h.deliver(h.pending("/tasks/item")[0]) == "item 0 succeeded"
    [settle] = h.pending("/tasks/settle")
    h.lose(settle)

    at = NOW + recovery.FANOUT_GRACE + timedelta(seconds=1)
    first = h.reap_report(at, limit=2)  # stands for 500: it checks the two older jobs, which need nothing
    assert first.more and client_id not in first.settles_enqueued
    second = h.reap_report(at, limit=2)  # goes on where the first stopped
    assert second.settles_enqueued[client_id] == [newer.id] and not second.more
    h.run()
    assert h.job(newer.id).settlement == {"captured": 2, "released": 0}
    third = h.reap_report(at, limit=2)  # from the oldest again
    assert not third.more and client_id not in third.settles_enqueued
    assert [h.job(job.id).status for job in older] == [JobStatus.RUNNING] * 2


# -- a commit that went through but answered "unavailable" is ours, not a lost race -----------------


def test_a_take_whose_answer_was_lost_runs_the_item(db: Any, client_id: str) -> None:
    runs: list[int] = []

    def work(run: ItemRun[ClipJob, ClipItem]) -> Finish:
        runs.append(run.item.index)
        return make_clips(run)

    h = Harness(db, client_id, CLIPS, work)
    job = h.accept(clips(7), cost=8, unit_price=1)
    h.deliver(h.queue.tasks[0])
    fault = db.land_then_fail(writes_to(f"{job.id}/items/000000"))  # the take lands, its answer is lost
    h.run()
    assert fault.hits == 1 and runs == [0] and "item 0 succeeded" in h.outcomes
    done = h.job(job.id)
    assert done.status is JobStatus.COMPLETED and done.settlement == {"captured": 7, "released": 1}
    h.exact()


def test_an_outcome_whose_answer_was_lost_is_recorded_once_and_settles(db: Any, client_id: str) -> None:
    h = Harness(db, client_id, CLIPS, make_clips)
    job = h.accept(clips(7), cost=8, unit_price=1)
    h.deliver(h.queue.tasks[0])
    fault = db.land_then_fail(writes_to(f"{job.id}/counters/"))  # the commit finishing and counting the item
    assert h.deliver(h.pending("/tasks/item")[0]) == "item 0 succeeded"
    assert fault.hits == 1 and len(h.pending("/tasks/settle")) == 1
    h.run()
    done = h.job(job.id)
    assert lifecycle.progress(CLIPS, store(db, CLIPS), done).totals.values == {
        "done_items": 1,
        "succeeded_items": 1,
        "seconds": 7,
    }
    assert done.status is JobStatus.COMPLETED and done.settlement == {"captured": 7, "released": 1}
    h.exact()


def test_a_job_whose_recording_answer_was_lost_is_fanned_out(db: Any, client_id: str) -> None:
    h = Harness(db, client_id, SYNCS, succeed)
    fault = db.land_then_fail(writes_to(client_id, "/sync_jobs/"))
    job = h.accept(syncs(2), cost=6)
    assert fault.hits == 1 and [t.path for t in h.queue.tasks] == ["/tasks/fanout"]
    h.run()
    assert h.job(job.id).settlement == {"captured": 6, "released": 0}
    assert h.credits() == (94, 0)
    h.exact()


# -- pause and resume: guarded writes on Firestore ---------------------------------------------------

REAUTHORIZE = "store_needs_reauthorization"


def item_names(h: Harness, job_id: str) -> list[str]:
    """The names of the job's item tasks not delivered yet, by index."""
    tasks = [t for t in h.pending("/tasks/item") if isinstance(t.payload, ItemTask) and t.payload.job_id == job_id]
    return [
        t.name or "" for t in sorted(tasks, key=lambda t: t.payload.index if isinstance(t.payload, ItemTask) else 0)
    ]


def test_a_job_paused_by_its_kind_and_its_caller_waits_resumes_and_is_cancelled(db: Any, client_id: str) -> None:
    revoked = {1}  # the store revokes our token while item 1 runs

    def work(run: ItemRun[Any, Any]) -> Finish:
        if run.item.index in revoked:
            revoked.discard(run.item.index)
            raise PauseJob(REAUTHORIZE)
        return Finish(ItemStatus.SUCCEEDED)

    h = Harness(db, client_id, SYNCS, work)
    job = h.accept(syncs(4), cost=12)
    h.deliver(h.queue.tasks[0])  # fan-out: four item tasks
    first = h.pending("/tasks/item")
    assert h.deliver(first[0]) == "item 0 succeeded"
    assert h.deliver(first[1]) == f"{lifecycle.ITEM_WAITS} ({REAUTHORIZE})"
    assert (h.job(job.id).status, h.job(job.id).paused_reason) == (JobStatus.PAUSED, REAUTHORIZE)
    assert (h.item(job.id, 1)["status"], h.item(job.id, 1)["attempts"]) == ("queued", 0)
    assert [h.deliver(task) for task in first[2:]] == [lifecycle.ITEM_WAITS] * 2
    assert [h.item(job.id, i)["status"] for i in range(4)] == ["succeeded", "queued", "queued", "queued"]
    # Pausing again changes nothing; the reaper, days later, leaves the job and its items alone.
    assert lifecycle.pause_job(SYNCS, h.jobs, client_id, job.id, NOW, "paused by user").paused_reason == REAUTHORIZE
    report = h.reap_report(NOW + timedelta(days=3))
    assert client_id not in report.items_requeued and client_id not in report.jobs_started
    assert h.pending("/tasks/item") == []

    resumed = lifecycle.resume_job(SYNCS, h.jobs, h.queue, client_id, job.id, NOW)
    assert (resumed.status, resumed.resumes, h.job(job.id).paused_reason) == (JobStatus.RUNNING, 1, None)
    assert item_names(h, job.id) == [SYNCS.item_task(client_id, job.id, i, 1).name for i in (1, 2, 3)]
    assert h.deliver(h.pending("/tasks/item")[0]) == "item 1 succeeded"

    lifecycle.pause_job(SYNCS, h.jobs, client_id, job.id, NOW, "paused by user")
    assert [h.deliver(task) for task in h.pending("/tasks/item")] == [lifecycle.ITEM_WAITS] * 2
    stopping = lifecycle.cancel_job(SYNCS, h.jobs, h.queue, client_id, job.id, NOW)
    assert (stopping.status, h.job(job.id).resumes) == (JobStatus.CANCELLING, 2)
    assert item_names(h, job.id) == [SYNCS.item_task(client_id, job.id, i, 2).name for i in (2, 3)]
    h.run()

    done = h.job(job.id)
    assert done.settled and done.status is JobStatus.CANCELLED
    assert [h.item(job.id, i)["status"] for i in range(4)] == ["succeeded", "succeeded", "cancelled", "cancelled"]
    assert done.settlement == {"captured": 6, "released": 6}
    assert h.credits() == (94, 0)
    h.exact()


class MovedMeanwhile(FirestoreJobStore[Any, Any]):
    """Once armed, another writer changes the job between the next read of it and the write decided
    on that read (through a store of its own)."""

    def __init__(self, db: Any, kind: JobKind[Any, Any, Any, Any]) -> None:
        super().__init__(db, kind)
        self.meanwhile: Callable[[], Any] | None = None

    def read_job(self, client_id: str, job_id: str) -> Any:
        stored = super().read_job(client_id, job_id)
        if self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            meanwhile()
        return stored


def test_pause_resume_and_cancel_are_guarded_by_the_jobs_version(db: Any, client_id: str) -> None:
    h = Harness(db, client_id, SYNCS, succeed)
    racing = MovedMeanwhile(db, SYNCS)
    other = store(db, SYNCS)
    job = h.accept(syncs(2), cost=6)
    h.deliver(h.queue.tasks[0])

    # A cancel lands between the pause's read and its write: the pause answers the cancel.
    racing.meanwhile = lambda: lifecycle.cancel_job(SYNCS, other, h.queue, client_id, job.id, NOW)
    assert lifecycle.pause_job(SYNCS, racing, client_id, job.id, NOW, "paused by user").status is (JobStatus.CANCELLING)
    assert h.job(job.id).paused_reason is None
    h.run()
    assert h.job(job.id).status is JobStatus.CANCELLED

    second = h.accept(syncs(2), cost=6)
    h.deliver(h.pending("/tasks/fanout")[0])
    lifecycle.pause_job(SYNCS, h.jobs, client_id, second.id, NOW, "paused by user")
    assert [h.deliver(task) for task in h.pending("/tasks/item")] == [lifecycle.ITEM_WAITS] * 2
    # A cancel lands between the resume's read and its write: nothing is resumed, the cancel's
    # tasks (named anew) cancel the waiting items.
    racing.meanwhile = lambda: lifecycle.cancel_job(SYNCS, other, h.queue, client_id, second.id, NOW)
    assert lifecycle.resume_job(SYNCS, racing, h.queue, client_id, second.id, NOW).status is JobStatus.CANCELLING
    assert h.job(second.id).resumes == 1
    assert item_names(h, second.id) == [SYNCS.item_task(client_id, second.id, i, 1).name for i in (0, 1)]
    h.run()
    assert h.job(second.id).settlement == {"captured": 0, "released": 6}

    third = h.accept(syncs(1), cost=3)
    h.deliver(h.pending("/tasks/fanout")[0])
    lifecycle.pause_job(SYNCS, h.jobs, client_id, third.id, NOW, "paused by user")
    assert h.deliver(h.pending("/tasks/item")[0]) == lifecycle.ITEM_WAITS
    # The resume's write lands but its answer is lost (the client sends it again, and its guard
    # fails on our own write): the resume is recognised as ours and the item's task enqueued.
    fault = db.land_then_fail(writes_to(client_id, f"/sync_jobs/{third.id}"))
    resumed = lifecycle.resume_job(SYNCS, h.jobs, h.queue, client_id, third.id, NOW)
    assert fault.hits == 1 and (resumed.status, resumed.resumes) == (JobStatus.RUNNING, 1)
    assert item_names(h, third.id) == [SYNCS.item_task(client_id, third.id, 0, 1).name]
    h.run()
    assert h.job(third.id).settlement == {"captured": 3, "released": 0}
    h.exact()
