"""The lifecycle every batch job goes through, whatever its kind.

* Accept: the job id is derived from the Idempotency-Key (a retried create finds the job, and the
  same key with another request is a 409), the whole cost is reserved as ONE hold (402 when
  unaffordable; free jobs hold nothing), the job document is written (with its items when there
  are few) and one fan-out task is enqueued. The balance document is written once per job. A job
  that cannot be recorded (the object store or Firestore failed) releases its hold again.
* Fan-out: one named task per item, so a redelivered fan-out enqueues nothing twice. Large jobs
  write their items page by page here instead of at accept time.
* Item: the worker leaves a finished item alone, cancels a queued item of a stopped job, marks the
  item running and runs the kind's work. Transient errors are retried by the queue while attempts
  remain; anything else (and the last attempt) finishes the item as failed, so the job always
  settles. Taking the item and finishing it are both guarded by the item's update time: of two
  deliveries racing (or a delivery and the reaper), exactly one runs the work to its recorded
  outcome (and adds it to the counters in the same commit); the other answers 2xx and does nothing.
* Settle: once every item has finished, ONE capture charges what succeeded and releases the rest of
  the hold; failed and cancelled items are refunded, visibly in the credit history. Settle tasks
  are named after the window the triggering item finished in, so a late item is never swallowed
  by a settle task that already ran.
* Cancel: stop starting new items; running ones finish; the rest are released at settlement.
* Recover (Cloud Scheduler, :func:`reap`): an item whose delivery was killed (a timeout, out of
  memory) stays running with no delivery to come; once it has been running longer than the lease it
  is given up through the same guarded write (failed and refunded, except what the kind says the
  customer already has), and the job settles. A job whose fan-out task was never enqueued is started
  again, cancelled or not; a job whose items have all finished but whose settle task was lost is
  settled. A job the hold sweeper reached first (it ran past its hold's deadline) still settles:
  nothing is charged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, Literal

from shared.batch.kind import Finish, Finished, ItemT, ItemTakenOver, JobKind, JobT, Totals, derived_id
from shared.batch.models import (
    STOPPED_JOB,
    TERMINAL_ITEM,
    FanoutPageTask,
    ItemCounts,
    ItemListQuery,
    ItemStatus,
    ItemTask,
    JobListQuery,
    JobStatus,
    JobTask,
    PagedJobDoc,
    ReapReport,
)
from shared.catalog.products import new_id
from shared.errors import EpoxError, IdempotencyKeyReused, NotFound, UpstreamUnavailable
from shared.http.pagination import Page, cursor_datetime, cursor_int, cursor_str, decode_cursor, encode_cursor
from shared.ledger.model import Actor, HoldAlreadyResolved, HoldOutcome
from shared.scheduled import isolated
from shared.tasks import RetryTask, TaskCall, TaskQueue

if TYPE_CHECKING:
    from google.cloud.firestore import Client

    from shared.ledger.service import Ledger

logger = logging.getLogger("epox.batch")

TAKEN_OVER = "another delivery finished this item"


@dataclass(frozen=True)
class BatchPolicy:
    """The lifecycle's limits, from settings."""

    max_attempts: int
    hold_ttl: timedelta
    fanout_page: int = 200  # items written and enqueued per fan-out task (paged kinds)
    counter_shards: int = 1  # counter documents per job (counted kinds)


@dataclass(frozen=True)
class RequestKey:
    """The caller's Idempotency-Key and a fingerprint of the request it came with."""

    key: str
    fingerprint: str


# -- accept -----------------------------------------------------------------------------------------


def job_id_for(kind: JobKind[Any, Any], client_id: str, request_key: RequestKey | None, *scope: str) -> str:
    """A keyed request names its job (``scope`` tells apart endpoints sharing a key), else a new id."""
    if request_key is None:
        return new_id(kind.id_prefix)
    return derived_id(kind.id_prefix, client_id, request_key.key, *scope)


def existing_job(
    kind: JobKind[JobT, Any], db: Client, client_id: str, job_id: str, request_key: RequestKey | None
) -> JobT | None:
    """The job a keyed request already created (nothing more is reserved), or None."""
    snapshot = kind.jobs_ref(db, client_id).document(job_id).get()
    if not snapshot.exists:
        return None
    fingerprint = request_key.fingerprint if request_key is not None else None
    return _same_request(kind.job_model.model_validate(snapshot.to_dict()), fingerprint)


def _same_request(job: JobT, fingerprint: str | None) -> JobT:
    """``job``, unless it was created by another request under the same key (409)."""
    # Jobs written before fingerprints were stored have none: they are taken on trust, as before.
    if fingerprint is not None and job.request_fingerprint not in (None, fingerprint):
        raise IdempotencyKeyReused("This Idempotency-Key was used with a different request")
    return job


def reserve(
    kind: JobKind[Any, Any],
    ledger: Ledger,
    client_id: str,
    job_id: str,
    *,
    amount: int,
    user_id: str,
    policy: BatchPolicy,
    renewal: int = 0,
) -> str:
    """The hold for the whole job ("" when it is free); keyed by the job, so a retry reserves nothing more.
    ``renewal`` n > 0 keys the n-th fresh hold of a job whose earlier holds were released unused."""
    key = f"{kind.hold_prefix}:{job_id}" + (f":{renewal}" if renewal else "")
    return ledger.reserve_for_job(
        client_id,
        key=key,
        amount=amount,
        user_id=user_id,
        purpose=f"{kind.label} {job_id}",
        ttl=policy.hold_ttl,
        operation=kind.operation,
    )


HOLD_RENEWALS = 5  # fresh holds one keyed request may take after its earlier tries were released


def accept(
    kind: JobKind[JobT, ItemT],
    db: Client,
    queue: TaskQueue,
    ledger: Ledger,
    client_id: str,
    job_id: str,
    *,
    amount: int,
    user_id: str,
    policy: BatchPolicy,
    request_key: RequestKey | None,
    record: Callable[[str], tuple[JobT, Sequence[ItemT]]],
) -> JobT:
    """Reserve the job's cost, let the kind prepare the job (``record(hold_id)`` stores what the job
    needs in the object store and returns the job and, unless paged, its items), then :func:`submit` it.

    A job that cannot be recorded (the object store or Firestore failed) releases its hold before
    the error is answered, so no credits stay locked for hours with no job to show for them; a retry
    with the same key then reserves afresh."""
    hold_id = _pending_hold(kind, ledger, client_id, job_id, amount, user_id, policy, keyed=request_key is not None)
    try:
        job, items = record(hold_id)
        accepted = submit(kind, db, queue, job, items)
    except Exception:
        if hold_id:
            _release_unowned(kind, db, ledger, client_id, job_id, hold_id)
        raise
    if hold_id and accepted.hold_id != hold_id:
        # A concurrent request with the same key recorded the job first, holding other credits.
        _release_unowned(kind, db, ledger, client_id, job_id, hold_id)
    return accepted


def _pending_hold(
    kind: JobKind[Any, Any],
    ledger: Ledger,
    client_id: str,
    job_id: str,
    amount: int,
    user_id: str,
    policy: BatchPolicy,
    *,
    keyed: bool,
) -> str:
    """A pending hold for a job that does not exist yet. A keyed job's reservation replays an earlier
    try of the same request; if that try's hold was released since (its job could not be recorded,
    or the sweeper took it), it can pay for nothing: reserve anew under the next key."""
    for renewal in range(HOLD_RENEWALS + 1):
        hold_id = reserve(
            kind, ledger, client_id, job_id, amount=amount, user_id=user_id, policy=policy, renewal=renewal
        )
        if not keyed or not hold_id or hold_id in ledger.state(client_id).holds:
            return hold_id
    raise UpstreamUnavailable(f"The {kind.noun} could not be accepted; try again later")


def _release_unowned(
    kind: JobKind[Any, Any], db: Client, ledger: Ledger, client_id: str, job_id: str, hold_id: str
) -> None:
    """Release ``hold_id`` unless the recorded job owns it. When that cannot be told (Firestore is
    failing), the hold is left to the sweeper: releasing a hold a job still needs would give its work away."""
    try:
        snapshot = kind.jobs_ref(db, client_id).document(job_id).get()
        if snapshot.exists and (snapshot.to_dict() or {}).get("hold_id") == hold_id:
            return  # recorded after all (the failure came after the commit): its settlement resolves the hold
        ledger.release(
            client_id,
            hold_id,
            actor=Actor(kind="system", id=f"accept:{job_id}"),
            reason=f"{kind.label} {job_id} could not be accepted; nothing was charged",
            key=f"unrecorded:{hold_id}",
        )
        logger.warning("%s %s could not be recorded: hold %s released", kind.noun, job_id, hold_id)
    except HoldAlreadyResolved:
        return  # the sweeper released it already
    except Exception:
        logger.exception("hold %s of %s %s, which was not recorded, is left to the sweeper", hold_id, kind.noun, job_id)


def fanout_pages(item_count: int, policy: BatchPolicy) -> int:
    return max(1, math.ceil(item_count / policy.fanout_page))


def submit(kind: JobKind[JobT, ItemT], db: Client, queue: TaskQueue, job: JobT, items: Sequence[ItemT] = ()) -> JobT:
    """Write the job (and, for a kind that is not paged, all its items) in one commit and enqueue its
    fan-out. When a concurrent request with the same key won the race, its job is the answer."""
    from google.api_core.exceptions import AlreadyExists

    ref = kind.jobs_ref(db, job.client_id).document(job.id)
    batch = db.batch()
    batch.create(ref, job.model_dump(mode="python"))
    for item in items:
        batch.create(ref.collection("items").document(f"{item.index:06d}"), item.model_dump(mode="python"))
    try:
        batch.commit()
    except AlreadyExists:
        return _same_request(kind.job_model.model_validate(ref.get().to_dict()), job.request_fingerprint)
    try:
        queue.enqueue(kind.fanout_task(job.client_id, job.id))
    except Exception:
        # The job is recorded and owns its hold: it is the answer (a 503 would invite a second job).
        # The reaper enqueues the fan-out of a job still queued after FANOUT_GRACE.
        logger.exception("the fan-out of %s %s was not enqueued; the reaper will start it", kind.noun, job.id)
    return job


# -- fan-out ----------------------------------------------------------------------------------------


def run_fanout(kind: JobKind[Any, Any], db: Client, queue: TaskQueue, task: JobTask, now: datetime) -> str:
    """Fan out a job whose items were written with it: one named task per item."""
    job = kind.get_job(db, task.client_id, task.job_id)
    if job.settled:
        return "job already settled"
    for index in range(job.item_count):
        queue.enqueue(kind.item_task(task.client_id, task.job_id, index))
    _mark_fanned_out(db, kind.jobs_ref(db, task.client_id).document(task.job_id), page_done=False, now=now)
    return f"{job.item_count} item tasks"


def run_fanout_page(
    kind: JobKind[JobT, ItemT],
    db: Client,
    queue: TaskQueue,
    task: FanoutPageTask,
    policy: BatchPolicy,
    now: datetime,
    *,
    page_items: Callable[[JobT, int, int, ItemStatus], list[ItemT]],
    after_page: Callable[[JobT, list[ItemT]], None] | None = None,
    clock: Callable[[], datetime] | None = None,
) -> str:
    """Write one page of a paged job's items and enqueue their tasks, then the next page.

    ``page_items(job, start, stop, status)`` builds the item documents of indexes start..stop-1. A
    redelivered page creates nothing twice; the items of a job cancelled before its fan-out are
    written cancelled (and counted), and the last page then asks for the settlement."""
    from google.api_core.exceptions import AlreadyExists

    job = kind.get_job(db, task.client_id, task.job_id)
    if job.settled:
        return "job already settled"
    if not isinstance(job, PagedJobDoc):
        raise TypeError(f"{kind.noun} jobs are not paged")
    pages = job.fanout_pages
    start = task.page * policy.fanout_page
    stopped = job.status in STOPPED_JOB
    docs = page_items(job, start, start + policy.fanout_page, ItemStatus.CANCELLED if stopped else ItemStatus.QUEUED)
    items_ref = kind.items_ref(db, task.client_id, task.job_id)
    created: list[ItemT] = []
    for doc in docs:
        batch = db.batch()
        batch.create(items_ref.document(f"{doc.index:06d}"), doc.model_dump(mode="python"))
        if stopped:
            _count(batch, kind, db, job, doc, policy.counter_shards)
        try:
            batch.commit()
            created.append(doc)
        except AlreadyExists:
            continue  # a redelivered page: this item exists (and may already be running)
    # A stopped job's new items were written cancelled, but items an earlier delivery of this page
    # wrote before the job was stopped may still be queued (that delivery failed while enqueuing
    # their tasks): each needs its task, which cancels it, or the job never settles.
    written = {doc.index for doc in created}
    pending = _still_queued(kind, db, task, [d for d in docs if d.index not in written]) if stopped else docs
    for doc in pending:
        queue.enqueue(kind.item_task(task.client_id, task.job_id, doc.index))
    if after_page is not None:
        after_page(job, docs)
    _mark_fanned_out(db, kind.jobs_ref(db, task.client_id).document(task.job_id), page_done=bool(created), now=now)
    if task.page + 1 < pages:
        queue.enqueue(kind.fanout_task(task.client_id, task.job_id, task.page + 1))
    elif stopped:
        queue.enqueue(kind.settle_task(task.client_id, task.job_id, clock() if clock is not None else now))
    return f"fan-out page {task.page + 1}/{pages}: {len(created)} items"


def _still_queued(kind: JobKind[Any, ItemT], db: Client, task: JobTask, docs: Sequence[ItemT]) -> list[ItemT]:
    """Those of ``docs`` whose stored item is still queued."""
    if not docs:
        return []
    refs = [kind.item_ref(db, task.client_id, task.job_id, doc.index) for doc in docs]
    queued = {
        snap.id
        for snap in db.get_all(refs, field_paths=["status"])
        if snap.exists and (snap.to_dict() or {}).get("status") == ItemStatus.QUEUED.value
    }
    return [doc for doc, ref in zip(docs, refs, strict=True) if ref.id in queued]


def _mark_fanned_out(db: Client, ref: Any, *, page_done: bool, now: datetime) -> None:
    """Count the page and move a queued job to running, in a transaction: a cancel that lands while
    the page is being fanned out must not be overwritten by a status read before it."""
    from google.cloud import firestore

    @firestore.transactional  # type: ignore[misc]
    def apply(transaction: Any) -> None:
        current = JobStatus((ref.get(transaction=transaction).to_dict() or {}).get("status", JobStatus.QUEUED.value))
        changes: dict[str, Any] = {}
        if page_done:
            changes["fanout_pages_done"] = firestore.Increment(1)
        if current is JobStatus.QUEUED:
            changes["status"] = JobStatus.RUNNING.value
        if changes:
            transaction.update(ref, {**changes, "updated_at": now})

    apply(db.transaction())


# -- item -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemRun(Generic[JobT, ItemT]):
    """One delivery of an item task, as the kind's work function sees it."""

    job: JobT
    item: ItemT  # as it was before this delivery took it
    ref: Any  # the item document
    # What guards the finishing commit: anything with the item's ``update_time`` as this delivery left
    # it (the write that marked it running, or the read the reaper or a cancellation acted on).
    snapshot: Any
    last_attempt: bool  # the queue will not deliver again: finish the item, whatever happens
    now: datetime

    def changes(self, status: ItemStatus, **fields: Any) -> dict[str, Any]:
        """The item update recording ``status`` (for a kind that commits it with its result)."""
        return {"status": status.value, **fields, "updated_at": self.now}


ItemWork = Callable[[ItemRun[JobT, ItemT]], Finish | Finished]


def run_item(
    kind: JobKind[JobT, ItemT],
    db: Client,
    queue: TaskQueue,
    task: ItemTask,
    call: TaskCall,
    policy: BatchPolicy,
    now: datetime,
    *,
    work: ItemWork[JobT, ItemT],
    clock: Callable[[], datetime] | None = None,
) -> str:
    """Run one item once, however often its task is delivered. ``now`` is when the delivery started;
    ``clock`` tells when the item finished, which names its settle task (work can outlast a window)."""
    finished_at = clock or (lambda: now)
    item_ref = kind.item_ref(db, task.client_id, task.job_id, task.index)
    snapshot = item_ref.get()
    if not snapshot.exists:
        return "item not found: dropped"
    item = kind.item_model.model_validate(snapshot.to_dict())
    if item.status in TERMINAL_ITEM:
        queue.enqueue(kind.settle_task(task.client_id, task.job_id, finished_at()))
        return f"item already {item.status.value}"
    job = kind.get_job(db, task.client_id, task.job_id)
    result: Finish | Finished
    if job.status in STOPPED_JOB and item.status is ItemStatus.QUEUED:
        run = ItemRun(job, item, item_ref, snapshot, last_attempt=False, now=now)
        result = Finish(ItemStatus.CANCELLED, {"failure": None})
    else:
        taken = _take(db, item_ref, snapshot, {"attempts": item.attempts + 1, "updated_at": now})
        if taken is None:
            return TAKEN_OVER
        last_attempt = call.retry_count + 1 >= policy.max_attempts
        run = ItemRun(job, item, item_ref, taken, last_attempt=last_attempt, now=now)
        try:
            result = _attempt(kind, run, work, give_up=lambda error: kind.given_up(db, run.job, run.item, error))
        except ItemTakenOver:
            return TAKEN_OVER
    if isinstance(result, Finish):
        if not _record(kind, db, run, result, policy.counter_shards):
            return TAKEN_OVER
        outcome = result.outcome or f"item {task.index} {result.status.value}"
    elif kind.counted:
        # The item is finished but was never counted: its job would never settle.
        raise TypeError(f"the work of a counted kind ({kind.noun}) must return Finish, not Finished")
    else:
        outcome = result.outcome
    queue.enqueue(kind.settle_task(task.client_id, task.job_id, finished_at()))
    return outcome


def _take(db: Client, ref: Any, snapshot: Any, changes: dict[str, Any]) -> Any:
    """Mark the item running, unless it changed since ``snapshot`` was read: then another delivery
    (or the reaper) finished or took it, owns the outcome, and this one must neither run the work
    again nor record it a second time (None). Returns the write, whose update time guards the finish."""
    from google.api_core.exceptions import FailedPrecondition

    try:
        return ref.update(
            {"status": ItemStatus.RUNNING.value, **changes},
            option=db.write_option(last_update_time=snapshot.update_time),
        )
    except FailedPrecondition:
        return None


def _attempt(
    kind: JobKind[JobT, ItemT],
    run: ItemRun[JobT, ItemT],
    work: ItemWork[JobT, ItemT],
    give_up: Callable[[EpoxError], Finish] | None = None,
) -> Finish | Finished:
    """The kind's work, with the one retry rule: transient errors go back to the queue while attempts
    remain; anything else, and anything on the last attempt, is the item's final failure, decided by
    ``give_up`` (default: the kind's plain failure)."""
    final = give_up or (lambda error: kind.failed(run.job, error))
    try:
        return work(run)
    except ItemTakenOver:
        raise
    except EpoxError as error:
        if not kind.transient(error) or run.last_attempt:
            return final(error)
        if isinstance(error, RetryTask):
            raise
        retry_after = int(getattr(error, "retry_after", 0) or error.headers.get("Retry-After", 10))
        raise RetryTask(f"{error.code}: {error.detail}", retry_after=retry_after) from error
    except Exception as error:
        if not run.last_attempt:
            raise  # a crash (500): the queue delivers again
        # The last attempt must still finish the item, or the job would never settle.
        logger.exception("item %s of %s %s crashed on its last attempt", run.item.index, kind.noun, run.job.id)
        return final(EpoxError(f"unexpected {type(error).__name__}"))


def _record(kind: JobKind[JobT, ItemT], db: Client, run: ItemRun[JobT, ItemT], result: Finish, shards: int) -> bool:
    """Finish the item and count it in one commit, unless another delivery (or the reaper) changed it
    since this one took it (then that one owns the outcome: False)."""
    from google.api_core.exceptions import FailedPrecondition

    changes = run.changes(result.status, **result.fields)
    batch = db.batch()
    batch.update(run.ref, changes, option=db.write_option(last_update_time=run.snapshot.update_time))
    if kind.counted:
        finished = kind.item_model.model_validate({**run.item.model_dump(), **changes})
        _count(batch, kind, db, run.job, finished, shards)
    try:
        batch.commit()
    except FailedPrecondition:
        return False
    return True


# -- counting ---------------------------------------------------------------------------------------


def increments(kind: JobKind[JobT, ItemT], job: JobT, item: ItemT) -> dict[str, int]:
    """What a finished item adds to its job's totals."""
    return {"done_items": 1, f"{item.status.value}_items": 1, **kind.tally(job, item)}


def _count(batch: Any, kind: JobKind[JobT, ItemT], db: Client, job: JobT, item: ItemT, shards: int) -> None:
    """Add a finished item to one of the job's ``shards`` counter shards (no document is written by
    every item; totals add up every shard there is)."""
    from google.cloud import firestore

    shard = (
        kind.jobs_ref(db, job.client_id).document(job.id).collection("counters").document(f"{item.index % shards:03d}")
    )
    values = increments(kind, job, item)
    batch.set(shard, {name: firestore.Increment(value) for name, value in values.items()}, merge=True)


def _counter_totals(kind: JobKind[JobT, Any], db: Client, job: JobT) -> Totals:
    totals: dict[str, int] = {}
    for snapshot in kind.jobs_ref(db, job.client_id).document(job.id).collection("counters").stream():
        for name, value in (snapshot.to_dict() or {}).items():
            totals[name] = totals.get(name, 0) + int(value)
    return Totals(totals)


def totals_of_items(kind: JobKind[JobT, ItemT], job: JobT, items: Sequence[ItemT]) -> Totals:
    """What the finished ones of ``items`` add up to."""
    totals: dict[str, int] = {}
    for item in items:
        if item.status in TERMINAL_ITEM:
            for name, value in increments(kind, job, item).items():
                totals[name] = totals.get(name, 0) + value
    return Totals(totals)


def all_items(kind: JobKind[JobT, ItemT], db: Client, job: JobT) -> list[ItemT]:
    """Every item of a job that is not paged (at most a hundred or so), in order."""
    stream = kind.items_ref(db, job.client_id, job.id).stream()
    return sorted((kind.item_model.model_validate(s.to_dict()) for s in stream), key=lambda item: item.index)


def totals(kind: JobKind[JobT, ItemT], db: Client, job: JobT) -> Totals:
    """The job's totals: from its counters, or (uncounted kinds) from its items."""
    if kind.counted:
        return _counter_totals(kind, db, job)
    return totals_of_items(kind, job, all_items(kind, db, job))


@dataclass(frozen=True)
class Progress(Generic[ItemT]):
    """A job's state for its status views."""

    totals: Totals
    queued: int
    running: int
    fraction: float
    items: list[ItemT]  # every item, for uncounted kinds (their views list them); else empty

    @property
    def counts(self) -> ItemCounts:
        t = self.totals
        return ItemCounts(
            queued=self.queued, running=self.running, succeeded=t.succeeded, failed=t.failed, cancelled=t.cancelled
        )


def progress(kind: JobKind[JobT, ItemT], db: Client, job: JobT) -> Progress[ItemT]:
    """Counts and totals of a job (one counter read, or one read of its items)."""
    from google.cloud.firestore import FieldFilter

    items: list[ItemT] = []
    if kind.counted:
        sums = _counter_totals(kind, db, job)
        running = 0
        if not job.settled:
            query = kind.items_ref(db, job.client_id, job.id).where(
                filter=FieldFilter("status", "==", ItemStatus.RUNNING.value)
            )
            running = int(query.count().get()[0][0].value)
    else:
        items = all_items(kind, db, job)
        sums = totals_of_items(kind, job, items)
        running = sum(1 for item in items if item.status is ItemStatus.RUNNING)
    return Progress(
        totals=sums,
        queued=max(0, job.item_count - sums.done - running),
        running=running,
        fraction=round(sums.done / job.item_count, 4) if job.item_count else 1.0,
        items=items,
    )


# -- settle -----------------------------------------------------------------------------------------


def run_settle(kind: JobKind[Any, Any], db: Client, ledger: Ledger, task: JobTask, now: datetime) -> str:
    """Once every item has finished: capture what the kind charges, release the rest (one ledger commit)."""
    job = kind.get_job(db, task.client_id, task.job_id)
    if job.settled:
        return "already settled"
    sums = totals(kind, db, job)
    if sums.done < job.item_count:
        return f"{sums.done}/{job.item_count} items finished"
    captured = released = 0
    if job.hold_id:
        charge = kind.charge(job, sums)
        actor = Actor(kind="task", id=f"settle:{job.id}")
        try:
            outcome = ledger.capture(
                task.client_id,
                job.hold_id,
                amount=charge,
                actor=actor,
                reason=kind.settle_reason(job, sums),
                key=f"settle:{job.id}",
                breakdown=kind.charge_breakdown(job, sums),
            )
        except HoldAlreadyResolved:
            # The sweeper released the hold: the job ran past its deadline. Those credits are back
            # with the customer and cannot be taken again, so the job settles with nothing charged.
            # (A capture by an earlier settle replays above instead of landing here.)
            outcome = _released_before_settle(kind, ledger, job, actor)
            logger.warning(
                "%s %s settled after its hold %s was released by the sweeper: %s credits not charged",
                kind.noun,
                job.id,
                job.hold_id,
                charge,
            )
        captured, released = outcome.captured, outcome.released
    final = JobStatus.CANCELLED if job.status in STOPPED_JOB else JobStatus.COMPLETED
    kind.jobs_ref(db, task.client_id).document(task.job_id).update(
        {
            "status": final.value,
            "settled": True,
            "settlement": kind.settlement(sums, captured, released),
            "finished_at": now,
            "updated_at": now,
        }
    )
    return f"settled: captured {captured}, released {released}"


def _released_before_settle(kind: JobKind[Any, Any], ledger: Ledger, job: Any, actor: Actor) -> HoldOutcome:
    """The outcome of a hold resolved before settlement, read through the ledger: releasing a released
    hold again writes nothing and answers the first release (a captured one is still a 409)."""
    return ledger.release(
        job.client_id,
        job.hold_id,
        actor=actor,
        reason=f"{kind.label} {job.id} settled after its hold was released",
        key=f"settle-released:{job.id}",
    )


# -- recovery (Cloud Scheduler) ---------------------------------------------------------------------

# A fan-out runs seconds after its job is accepted, and a settle task seconds after the item that
# asked for it: a job older than this that is still queued lost its fan-out task, and one whose
# items have all finished but which is not settled lost its settle task.
FANOUT_GRACE = timedelta(minutes=10)


class ItemTimedOut(EpoxError):
    """No delivery of the item finished within the lease: it was given up (and refunded)."""

    status = 504
    code = "item_timed_out"
    title = "The item did not finish in time"


def reap(
    kind: JobKind[Any, Any],
    db: Client,
    queue: TaskQueue,
    now: datetime,
    *,
    lease: timedelta,
    limit: int = 500,
    clock: Callable[[], datetime] | None = None,
) -> ReapReport:
    """Finish what no task will finish, for every client: give up the kind's items running longer
    than ``lease`` (their delivery was killed: refunded at settlement, which is enqueued), start the
    jobs whose fan-out was never enqueued (queued ones, and cancelled ones with items no task will
    cancel), and settle the jobs whose items have all finished but whose settle task was lost.

    ``now`` is when the run started (what it compares against); ``clock`` tells the time each settle
    task is enqueued at, which names it (a long run outlives settle windows). Safe to run twice; at
    most ``limit`` items and ``limit`` jobs per run, the rest the next run. Each item and job is
    handled on its own (a failure is logged and reported per client)."""
    finished_at = clock or (lambda: now)
    report = ReapReport(job="reap-stuck-items")
    reaped = 0
    for snapshot in _stuck_items(kind, db, now - lease):
        if reaped >= limit:
            report.more = True
            break
        client_id, job_id = _owner(snapshot.reference)
        with isolated(report.job, client_id, report.failed, step="items"):
            if fail_stuck_item(kind, db, queue, snapshot, now, lease, clock=finished_at):
                reaped += 1
                report.items_failed.setdefault(client_id, []).append(f"{job_id}/{snapshot.reference.id}")
    for checked, snapshot in enumerate(_unsettled_jobs(kind, db, now - FANOUT_GRACE)):
        if checked >= limit:
            report.more = True
            break
        client_id = snapshot.reference.parent.parent.id
        with isolated(report.job, client_id, report.failed, step="jobs"):
            recovered = _recover_job(kind, db, queue, kind.job_model.model_validate(snapshot.to_dict()), finished_at)
            if recovered == "fanout":
                report.jobs_started.setdefault(client_id, []).append(snapshot.id)
            elif recovered == "settle":
                report.settles_enqueued.setdefault(client_id, []).append(snapshot.id)
    return report


def fail_stuck_item(
    kind: JobKind[Any, Any],
    db: Client,
    queue: TaskQueue,
    snapshot: Any,
    now: datetime,
    lease: timedelta,
    *,
    clock: Callable[[], datetime] | None = None,
) -> bool:
    """Give up the running item ``snapshot`` for good (the kind's verdict: failed, or what of it the
    customer already has) and enqueue its job's settlement. The write is guarded by the snapshot's
    update time like a delivery's: a delivery that finished the item or started again since then
    owns it, and nothing changes (False)."""
    client_id, job_id = _owner(snapshot.reference)
    item = kind.item_model.model_validate(snapshot.to_dict())
    job = kind.get_job(db, client_id, job_id)
    if item.status is not ItemStatus.RUNNING or job.settled:
        return False
    error = ItemTimedOut(
        f"No delivery of this item finished within {int(lease.total_seconds() // 60)} minutes; it was given up"
    )
    run = ItemRun(job, item, snapshot.reference, snapshot, last_attempt=True, now=now)
    # One counter shard is enough: reaping is rare, and the totals add up every shard.
    if not _record(kind, db, run, kind.given_up(db, job, item, error), shards=1):
        return False
    logger.warning("item %s of %s %s was running since %s: given up", item.index, kind.noun, job_id, item.updated_at)
    # Named after the time the item was recorded, not when the run started: a settle task of this job
    # that ran since (for an item reaped earlier in this run) must not swallow this one as a duplicate.
    # Should the enqueue fail, the next run settles the job (see _recover_job).
    queue.enqueue(kind.settle_task(client_id, job_id, (clock or (lambda: now))()))
    return True


def _owner(item_ref: Any) -> tuple[str, str]:
    """(client id, job id) of an item document ``clients/{c}/{collection}/{job}/items/{index}``."""
    job_ref = item_ref.parent.parent
    return str(job_ref.parent.parent.id), str(job_ref.id)


def _stuck_items(kind: JobKind[Any, Any], db: Client, cutoff: datetime) -> Iterator[Any]:
    """Every item of this kind, of any client, running since before ``cutoff`` (collection-group index
    on ``items``: status, updated_at). Other kinds' items live in collections named alike: skipped."""
    from google.cloud.firestore import FieldFilter

    query = (
        db.collection_group("items")
        .where(filter=FieldFilter("status", "==", ItemStatus.RUNNING.value))
        .where(filter=FieldFilter("updated_at", "<", cutoff))
    )
    for snapshot in query.stream():
        parts = snapshot.reference.path.split("/")
        if len(parts) == 6 and parts[0] == "clients" and parts[2] == kind.collection:
            yield snapshot


def _unsettled_jobs(kind: JobKind[Any, Any], db: Client, cutoff: datetime) -> Iterator[Any]:
    """Every unsettled job of this kind created before ``cutoff``: queued, then cancelling, then
    running (collection-group index on the kind's collection: status, created_at)."""
    from google.cloud.firestore import FieldFilter

    for status in (JobStatus.QUEUED, JobStatus.CANCELLING, JobStatus.RUNNING):
        query = (
            db.collection_group(kind.collection)
            .where(filter=FieldFilter("status", "==", status.value))
            .where(filter=FieldFilter("created_at", "<", cutoff))
        )
        for snapshot in query.stream():
            parts = snapshot.reference.path.split("/")
            if len(parts) == 4 and parts[0] == "clients" and not (snapshot.to_dict() or {}).get("settled"):
                yield snapshot


def _recover_job(
    kind: JobKind[JobT, Any], db: Client, queue: TaskQueue, job: JobT, clock: Callable[[], datetime]
) -> Literal["fanout", "settle"] | None:
    """Enqueue what an unsettled job is waiting for that no task will bring: its fan-out or its
    settlement (which one was enqueued; None when nothing was)."""
    if job.status is JobStatus.QUEUED or (job.status is JobStatus.CANCELLING and _unstarted(kind, db, job)):
        # A cancelled job too: its unwritten items are written cancelled, and its queued items get the
        # tasks that cancel them (an item task cancels a queued item of a stopped job), so it settles.
        if queue.enqueue(kind.fanout_task(job.client_id, job.id)):
            logger.warning(
                "%s %s (%s) was never fanned out: fan-out enqueued again", kind.noun, job.id, job.status.value
            )
            return "fanout"
        return None
    if totals(kind, db, job).done < job.item_count:
        return None  # items still to finish: their deliveries (or the item reaper) ask for the settlement
    # Every item finished, and the job is still unsettled: the settle task that should have followed
    # was lost (its enqueue failed after the item was recorded). Settling is idempotent.
    if queue.enqueue(kind.settle_task(job.client_id, job.id, clock())):
        logger.warning("%s %s has finished but was never settled: settlement enqueued", kind.noun, job.id)
        return "settle"
    return None


def _unstarted(kind: JobKind[Any, Any], db: Client, job: Any) -> bool:
    """Whether the job has items no item task may ever have been enqueued for: pages never written,
    or items still queued."""
    from google.cloud.firestore import FieldFilter

    if isinstance(job, PagedJobDoc) and job.fanout_pages_done < job.fanout_pages:
        return True
    query = kind.items_ref(db, job.client_id, job.id).where(filter=FieldFilter("status", "==", ItemStatus.QUEUED.value))
    return any(True for _ in query.limit(1).stream())


# -- commands and reads -----------------------------------------------------------------------------


def cancel_job(
    kind: JobKind[JobT, Any], db: Client, queue: TaskQueue, client_id: str, job_id: str, now: datetime
) -> JobT:
    """Stop starting new items; items already running finish; unstarted ones are released at settle."""
    from google.api_core.exceptions import FailedPrecondition

    ref = kind.jobs_ref(db, client_id).document(job_id)
    for _ in range(5):
        snapshot = ref.get()
        if not snapshot.exists:
            raise NotFound(f"No {kind.noun} {job_id}")
        job = kind.job_model.model_validate(snapshot.to_dict())
        if job.settled or job.status in STOPPED_JOB:
            return job
        try:
            # Guarded by the read: a settle that finishes in between wins, and we answer its state.
            ref.update(
                {"status": JobStatus.CANCELLING.value, "updated_at": now},
                option=db.write_option(last_update_time=snapshot.update_time),
            )
        except FailedPrecondition:
            continue
        queue.enqueue(kind.settle_task(client_id, job_id, now))
        return job.model_copy(update={"status": JobStatus.CANCELLING})
    return kind.get_job(db, client_id, job_id)


def list_jobs(kind: JobKind[JobT, Any], db: Client, client_id: str, query: JobListQuery) -> Page[JobT]:
    """Newest first, optionally of one status."""
    from google.cloud.firestore import FieldFilter, Query

    q = kind.jobs_ref(db, client_id)
    if query.status:
        q = q.where(filter=FieldFilter("status", "==", query.status.value))
    q = q.order_by("created_at", direction=Query.DESCENDING).order_by("id", direction=Query.DESCENDING)
    if query.cursor:
        values = decode_cursor(query.cursor)
        q = q.start_after({"created_at": cursor_datetime(values, "t"), "id": cursor_str(values, "id")})
    docs = [kind.job_model.model_validate(s.to_dict()) for s in q.limit(query.limit + 1).stream()]
    cursor = None
    if len(docs) > query.limit:
        docs = docs[: query.limit]
        cursor = encode_cursor({"t": docs[-1].created_at.isoformat(), "id": docs[-1].id})
    return Page(items=docs, next_cursor=cursor)


def list_items(kind: JobKind[Any, ItemT], db: Client, client_id: str, job_id: str, query: ItemListQuery) -> Page[ItemT]:
    """In index order, optionally of one status."""
    from google.cloud.firestore import FieldFilter

    kind.get_job(db, client_id, job_id)
    q = kind.items_ref(db, client_id, job_id)
    if query.status:
        q = q.where(filter=FieldFilter("status", "==", query.status.value))
    q = q.order_by("index")
    if query.cursor:
        q = q.start_after({"index": cursor_int(decode_cursor(query.cursor), "i")})
    docs = [kind.item_model.model_validate(s.to_dict()) for s in q.limit(query.limit + 1).stream()]
    cursor = None
    if len(docs) > query.limit:
        docs = docs[: query.limit]
        cursor = encode_cursor({"i": docs[-1].index})
    return Page(items=docs, next_cursor=cursor)


def items_with_status(
    kind: JobKind[Any, ItemT], db: Client, client_id: str, job_id: str, status: ItemStatus
) -> list[ItemT]:
    from google.cloud.firestore import FieldFilter

    q = kind.items_ref(db, client_id, job_id).where(filter=FieldFilter("status", "==", status.value))
    return [kind.item_model.model_validate(s.to_dict()) for s in q.stream()]
