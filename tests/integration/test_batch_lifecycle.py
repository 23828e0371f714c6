"""The batch-job lifecycle on the Firestore emulator with two toy kinds, the way the next kinds
(videos, store sync-back) will use it: a large one (items written page by page, progress counted in
shards) and a small one (items written with the job, progress read from them). Tasks are delivered by
hand from a recording queue, so each test decides what is redelivered and when; the ledger is the
real one on an in-memory store.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.batch import lifecycle
from shared.batch.kind import Finish, JobKind, Totals
from shared.batch.lifecycle import BatchPolicy, ItemRun, RequestKey
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
from shared.errors import EpoxError, IdempotencyKeyReused
from shared.ledger.model import Actor, GrantSource
from shared.ledger.service import Ledger
from shared.tasks import RetryTask, TaskCall, TaskRequest
from tests.fakes import InMemoryLedgerStore, RecordingTaskQueue

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
POLICY = BatchPolicy(max_attempts=3, hold_ttl=timedelta(hours=1), fanout_page=2, counter_shards=2)


class ClipJob(PagedJobDoc):
    unit_price: int


class ClipItem(BatchItemDoc):
    prompt: str
    seconds: int = 0


class Clips(JobKind[ClipJob, ClipItem]):
    """A large kind, like video generation: each item makes up to 8 seconds, paid per second."""

    collection = "clip_jobs"
    id_prefix = "clp"
    noun = "clip job"
    label = "clip job"
    worker = "clip_tasks"
    task_prefix = "clip-"
    hold_prefix = "clip"
    operation = "generate_video"
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


class Syncs(JobKind[BatchJobDoc, SyncItem]):
    """A small kind, like store sync-back: one item per image, written with the job."""

    collection = "sync_jobs"
    id_prefix = "syn"
    noun = "sync job"
    label = "sync job"
    worker = "sync_tasks"
    task_prefix = "sync-"
    hold_prefix = "sync"
    operation = "sync"
    job_model = BatchJobDoc
    item_model = SyncItem

    def tally(self, job: BatchJobDoc, item: SyncItem) -> dict[str, int]:
        return {"earned": item.cost} if item.status is ItemStatus.SUCCEEDED else {}

    def charge(self, job: BatchJobDoc, totals: Totals) -> int:
        return totals["earned"]

    def settle_reason(self, job: BatchJobDoc, totals: Totals) -> str:
        return f"sync job {job.id}"


CLIPS, SYNCS = Clips(), Syncs()
Work = Callable[[ItemRun[Any, Any]], Finish]


class Harness:
    """One tenant's jobs of one kind, a recording queue delivered by hand, and a ledger."""

    def __init__(self, db: Any, client_id: str, kind: JobKind[Any, Any], work: Work) -> None:
        self.db, self.client_id, self.kind, self.work = db, client_id, kind, work
        self.queue = RecordingTaskQueue()
        self.ledger = Ledger(InMemoryLedgerStore(), clock=lambda: NOW)
        self.ledger.grant(
            client_id, key="g", amount=100, source=GrantSource.PACK, actor=Actor(kind="admin", id="t"), reason="t"
        )
        self.delivered: set[int] = set()
        self.outcomes: list[str] = []

    def accept(self, items: list[Any], cost: int, key: RequestKey | None = None, **fields: Any) -> Any:
        kind = self.kind
        job_id = lifecycle.job_id_for(kind, self.client_id, key)
        found = lifecycle.existing_job(kind, self.db, self.client_id, job_id, key)
        if found is not None:
            return found
        hold_id = lifecycle.reserve(kind, self.ledger, self.client_id, job_id, amount=cost, user_id="u1", policy=POLICY)
        if kind.paged:
            fields["fanout_pages"] = lifecycle.fanout_pages(len(items), POLICY)
        job = kind.job_model(
            id=job_id,
            client_id=self.client_id,
            item_count=len(items),
            cost=cost,
            hold_id=hold_id,
            created_by="u1",
            created_at=NOW,
            updated_at=NOW,
            request_fingerprint=key.fingerprint if key else None,
            **fields,
        )
        self.specs = items
        return lifecycle.submit(kind, self.db, self.queue, job, () if kind.paged else items)

    def deliver(self, task: TaskRequest, retry_count: int = 0) -> str:
        self.delivered.add(id(task))
        call = TaskCall(queue="q", name=task.name or "", retry_count=retry_count, execution_count=retry_count)
        payload = task.payload
        if task.path == "/tasks/fanout" and isinstance(payload, FanoutPageTask):

            def page(job: Any, start: int, stop: int, status: ItemStatus) -> list[Any]:
                return [s.model_copy(update={"status": status}) for s in self.specs[start:stop]]

            outcome = lifecycle.run_fanout_page(self.kind, self.db, self.queue, payload, POLICY, NOW, page_items=page)
        elif task.path == "/tasks/fanout":
            assert isinstance(payload, JobTask)
            outcome = lifecycle.run_fanout(self.kind, self.db, self.queue, payload, NOW)
        elif task.path == "/tasks/item":
            assert isinstance(payload, ItemTask)
            outcome = lifecycle.run_item(self.kind, self.db, self.queue, payload, call, POLICY, NOW, work=self.work)
        else:
            assert isinstance(payload, JobTask)
            outcome = lifecycle.run_settle(self.kind, self.db, self.ledger, payload, NOW)
        self.outcomes.append(outcome)
        return outcome

    def run(self) -> None:
        """Deliver every task not delivered yet, including the ones enqueued on the way: those due now
        in order, then the scheduled ones (settle tasks, after their window; the clock stands still)."""
        while waiting := [t for t in self.queue.tasks if id(t) not in self.delivered]:
            self.deliver(min(waiting, key=lambda t: t.schedule_time is not None))

    def job(self, job_id: str) -> Any:
        return self.kind.get_job(self.db, self.client_id, job_id)

    def credits(self) -> tuple[int, int]:
        state = self.ledger.state(self.client_id)
        return state.available, state.reserved


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
    progress = lifecycle.progress(CLIPS, db, done)
    assert progress.totals.values == {
        "done_items": 5,
        "succeeded_items": 4,
        "failed_items": 1,
        "seconds": 20,
    }
    assert (progress.queued, progress.running, progress.fraction) == (0, 0, 1.0)
    shards = list(CLIPS.jobs_ref(db, client_id).document(job.id).collection("counters").stream())
    assert len(shards) == POLICY.counter_shards
    failed = lifecycle.items_with_status(CLIPS, db, client_id, job.id, ItemStatus.FAILED)
    assert [(i.index, i.failure["code"]) for i in failed] == [(1, "internal_error")]
    assert [t.name for t in h.queue.tasks if t.path == "/tasks/fanout"] == [
        f"clip-fanout-{client_id}-{job.id}-{page}" for page in range(3)
    ]


def test_redelivered_tasks_change_nothing(db: Any, client_id: str) -> None:
    h = Harness(db, client_id, CLIPS, make_clips)
    job = h.accept(clips(3, 5), cost=16, unit_price=2)
    h.run()
    settled = h.job(job.id)
    counters_ref = CLIPS.jobs_ref(db, client_id).document(job.id).collection("counters")
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
    assert lifecycle.progress(CLIPS, db, h.job(job.id)).totals.values["seconds"] == 7
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
    item = SYNCS.item_ref(db, client_id, job.id, 0).get().to_dict()
    assert (item["status"], item["attempts"]) == ("failed", POLICY.max_attempts)
    assert h.job(job.id).settlement == {"captured": 0, "released": 2}
    assert h.credits() == (100, 0)


def test_a_cancelled_job_runs_no_more_items_and_releases_them(db: Any, client_id: str) -> None:
    h = Harness(db, client_id, SYNCS, lambda run: Finish(ItemStatus.SUCCEEDED))
    images = [SyncItem(index=i, image=f"img{i}", cost=3, updated_at=NOW) for i in range(3)]
    job = h.accept(images, cost=9)
    assert [i.status for i in lifecycle.all_items(SYNCS, db, job)] == [ItemStatus.QUEUED] * 3
    h.deliver(h.queue.tasks[0])  # fan-out: three item tasks
    h.deliver(h.queue.tasks[1])  # the first item runs
    stopping = lifecycle.cancel_job(SYNCS, db, h.queue, client_id, job.id, NOW)
    assert stopping.status is JobStatus.CANCELLING
    assert lifecycle.cancel_job(SYNCS, db, h.queue, client_id, job.id, NOW).status is JobStatus.CANCELLING
    h.run()

    done = h.job(job.id)
    assert done.status is JobStatus.CANCELLED
    assert [i.status for i in lifecycle.all_items(SYNCS, db, done)] == [
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
    assert lifecycle.submit(SYNCS, db, h.queue, late, images).cost == 4
    with pytest.raises(IdempotencyKeyReused):
        lifecycle.submit(SYNCS, db, h.queue, late.model_copy(update={"request_fingerprint": "body-b"}), images)
    assert [t.path for t in h.queue.tasks] == ["/tasks/fanout"]
