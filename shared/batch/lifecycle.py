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
  settles. Taking the item and finishing it are both guarded by the item's version: of two
  deliveries racing (or a delivery and the reaper), exactly one runs the work to its recorded
  outcome (and adds it to the counters in the same commit); the other answers 2xx and does nothing.
* Settle: once every item has finished, ONE capture charges what succeeded and releases the rest of
  the hold; failed and cancelled items are refunded, visibly in the credit history. Settle tasks
  are named after the window the triggering item finished in, so a late item is never swallowed
  by a settle task that already ran.
* Cancel: stop starting new items; running ones finish; the rest are released at settlement.
* Pause and resume: a paused job's queued items wait (their deliveries leave them queued and consume
  their tasks), running ones finish; a resume enqueues the task of every item still queued again,
  under a new name (the job's ``resumes``). A kind pauses its own job by raising
  :class:`~shared.batch.kind.PauseJob` from its work: the item goes back to queued, uncounted.
* Lost answers: a guarded commit that went through but answered "unavailable" is recognised by the
  writer's token when re-read (:mod:`shared.batch.commits`), never taken for a lost race.
* Recover (Cloud Scheduler): :mod:`shared.batch.recovery` finishes what no task will finish.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic

from shared.batch.kind import (
    BatchPolicy,
    ContinueLater,
    Finish,
    Finished,
    ItemRun,
    ItemT,
    ItemTakenOver,
    JobKind,
    JobT,
    OrderT,
    PauseJob,
    RequestKey,
    ServicesT,
    Totals,
)
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
)
from shared.batch.store import StaleWrite, StoredItem
from shared.errors import EpoxError, IdempotencyKeyReused, NotFound, UpstreamUnavailable
from shared.events.model import Subject, new_event
from shared.ids import derived_id, new_id
from shared.ledger.model import Actor, HoldAlreadyResolved, HoldOutcome
from shared.pagination import Page
from shared.retry import CONTENDED_COMMIT, attempts
from shared.tasks import RetryTask, TaskCall, TaskQueue

if TYPE_CHECKING:
    from shared.batch.store import JobStore
    from shared.ledger.service import Ledger

logger = logging.getLogger("epox.batch")

TAKEN_OVER = "another delivery finished this item"
ITEM_WAITS = "job paused: item waits"

# -- accept -----------------------------------------------------------------------------------------


def job_id_for(kind: JobKind[Any, Any, Any, Any], client_id: str, request_key: RequestKey | None, *scope: str) -> str:
    """A keyed request names its job (``scope`` tells apart endpoints sharing a key), else a new id."""
    if request_key is None:
        return new_id(kind.id_prefix)
    return derived_id(kind.id_prefix, client_id, request_key.key, *scope)


def existing_job(jobs: JobStore[JobT, Any], client_id: str, job_id: str, request_key: RequestKey | None) -> JobT | None:
    """The job a keyed request already created (nothing more is reserved), or None."""
    job = jobs.find_job(client_id, job_id)
    if job is None:
        return None
    fingerprint = request_key.fingerprint if request_key is not None else None
    return _same_request(job, fingerprint)


def _same_request(job: JobT, fingerprint: str | None) -> JobT:
    """``job``, unless it was created by another request under the same key (409)."""
    # Jobs written before fingerprints were stored have none: they are taken on trust, as before.
    if fingerprint is not None and job.request_fingerprint not in (None, fingerprint):
        raise IdempotencyKeyReused("This Idempotency-Key was used with a different request")
    return job


def reserve(
    kind: JobKind[Any, Any, Any, Any],
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


def accept(kind: JobKind[JobT, ItemT, ServicesT, OrderT], services: ServicesT, order: OrderT) -> JobT:
    """Accept a job: the job a keyed request already created is the answer (nothing more is
    reserved; the same key with another request is a 409); else the kind prepares the order (checks
    and prices it), its cost is reserved as one hold, the kind records the job (:meth:`JobKind.record`)
    and it is :func:`submit`-ted.

    A job that cannot be recorded (the object store or Firestore failed) releases its hold before
    the error is answered, so no credits stay locked for hours with no job to show for them; a retry
    with the same key then reserves afresh."""
    client_id, policy = order.client_id, services.policy
    jobs: JobStore[JobT, ItemT] = services.jobs
    job_id = job_id_for(kind, client_id, order.request_key, *order.scope)
    existing = existing_job(jobs, client_id, job_id, order.request_key)
    if existing is not None:
        return existing
    order = kind.prepare(services, order, job_id)
    hold_id = _pending_hold(
        kind,
        services.ledger,
        client_id,
        job_id,
        order.amount,
        order.user_id,
        policy,
        keyed=order.request_key is not None,
    )
    try:
        job, items = kind.record(services, order, job_id, hold_id)
        if isinstance(job, PagedJobDoc) and job.fanout_page_size is None:
            # The page size is fixed with the number of pages: a fan-out running under another setting
            # (a changed GENERATION_FANOUT_PAGE, a rollout) must not skip or repeat items.
            job = job.model_copy(
                update={"fanout_page_size": policy.fanout_page, "fanout_pages": fanout_pages(job.item_count, policy)}
            )
        accepted = submit(kind, jobs, services.queue, job, items)
    except Exception:
        if hold_id:
            _release_unowned(kind, jobs, services.ledger, client_id, job_id, hold_id)
        raise
    if hold_id and accepted.hold_id != hold_id:
        # A concurrent request with the same key recorded the job first, holding other credits.
        _release_unowned(kind, jobs, services.ledger, client_id, job_id, hold_id)
    return accepted


def _pending_hold(
    kind: JobKind[Any, Any, Any, Any],
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
    kind: JobKind[Any, Any, Any, Any],
    jobs: JobStore[Any, Any],
    ledger: Ledger,
    client_id: str,
    job_id: str,
    hold_id: str,
) -> None:
    """Release ``hold_id`` unless the recorded job owns it. When that cannot be told (Firestore is
    failing), the hold is left to the sweeper: releasing a hold a job still needs would give its work away."""
    try:
        recorded = jobs.find_job(client_id, job_id)
        if recorded is not None and recorded.hold_id == hold_id:
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


def submit(
    kind: JobKind[JobT, ItemT, Any, Any],
    jobs: JobStore[JobT, ItemT],
    queue: TaskQueue,
    job: JobT,
    items: Sequence[ItemT] = (),
) -> JobT:
    """Write the job (and, for a kind that is not paged, all its items) in one commit and enqueue its
    fan-out. When a concurrent request with the same key won the race, its job is the answer; a commit
    of ours whose answer was lost is recognised by the job's ``submission`` token and goes on."""
    job = job.model_copy(update={"submission": new_token()})
    if not jobs.create_job(job, list(items)):
        return _same_request(jobs.get_job(job.client_id, job.id), job.request_fingerprint)
    try:
        queue.enqueue(kind.fanout_task(job.client_id, job.id))
    except Exception:
        # The job is recorded and owns its hold: it is the answer (a 503 would invite a second job).
        # The reaper enqueues the fan-out of a job still queued after FANOUT_GRACE.
        logger.exception("the fan-out of %s %s was not enqueued; the reaper will start it", kind.noun, job.id)
    return job


# -- fan-out ----------------------------------------------------------------------------------------


def fan_out(kind: JobKind[Any, Any, ServicesT, Any], services: ServicesT, task: JobTask) -> str:
    """The fan-out task of a job: one page of a paged kind's items, or every item task of another."""
    if isinstance(task, FanoutPageTask):
        return run_fanout_page(kind, services, task)
    return run_fanout(kind, services, task)


def run_fanout(
    kind: JobKind[Any, Any, ServicesT, Any], services: ServicesT, task: JobTask, now: datetime | None = None
) -> str:
    """Fan out a job whose items were written with it: one named task per item."""
    jobs, queue, now = services.jobs, services.queue, now or services.clock()
    job = jobs.get_job(task.client_id, task.job_id)
    if job.settled:
        return "job already settled"
    for index in range(job.item_count):
        queue.enqueue(kind.item_task(task.client_id, task.job_id, index, job.resumes))
    jobs.mark_fanned_out(task.client_id, task.job_id, None, now)
    return f"{job.item_count} item tasks"


def run_fanout_page(
    kind: JobKind[JobT, ItemT, ServicesT, Any], services: ServicesT, task: FanoutPageTask, now: datetime | None = None
) -> str:
    """Write one page of a paged job's items and enqueue their tasks, then the next page.

    :meth:`JobKind.page_items` builds the item documents of the page. A redelivered page creates
    nothing twice; the items of a job cancelled before its fan-out are written cancelled (and
    counted), and the last page then asks for the settlement (named after the services' clock). The
    page size is the one the job was accepted with; a page the reaper gave up writes nothing.
    ``now`` is when the delivery started (by default, the services' clock)."""
    queue, policy = services.queue, services.policy
    jobs: JobStore[JobT, ItemT] = services.jobs
    now = now or services.clock()
    job = jobs.get_job(task.client_id, task.job_id)
    if job.settled:
        return "job already settled"
    if not isinstance(job, PagedJobDoc):
        raise TypeError(f"{kind.noun} jobs are not paged")
    pages = job.fanout_pages
    size = job.fanout_page_size or policy.fanout_page  # jobs from before the size was stored: the setting
    if jobs.page_given_up(task.client_id, task.job_id, task.page):
        return f"fan-out page {task.page + 1}/{pages}: given up"
    start = task.page * size
    stopped = job.status in STOPPED_JOB
    docs = kind.page_items(
        services, job, start, min(start + size, job.item_count), ItemStatus.CANCELLED if stopped else ItemStatus.QUEUED
    )
    created: list[ItemT] = []
    for doc in docs:
        counts = increments(kind, job, doc) if stopped else None
        # Not created: a redelivered page, this item exists (and may already be running).
        if jobs.create_item(job, doc, counts, doc.index % policy.counter_shards):
            created.append(doc)
    # A stopped job's new items were written cancelled, but items an earlier delivery of this page
    # wrote before the job was stopped may still be queued (that delivery failed while enqueuing
    # their tasks): each needs its task, which cancels it, or the job never settles.
    written = {doc.index for doc in created}
    pending = _still_queued(jobs, task, [d for d in docs if d.index not in written]) if stopped else docs
    for doc in pending:
        queue.enqueue(kind.item_task(task.client_id, task.job_id, doc.index, job.resumes))
    if not stopped:
        # A cancelled job's settings are not what the customer last chose for these products.
        kind.after_page(services, job, docs)
    # Counted by its own marker, whether this delivery or an earlier one wrote the items.
    jobs.mark_fanned_out(task.client_id, task.job_id, task.page, now)
    if task.page + 1 < pages:
        queue.enqueue(kind.fanout_task(task.client_id, task.job_id, task.page + 1))
    elif stopped:
        queue.enqueue(kind.settle_task(task.client_id, task.job_id, services.clock()))
    return f"fan-out page {task.page + 1}/{pages}: {len(created)} items"


def _still_queued(jobs: JobStore[Any, ItemT], task: JobTask, docs: Sequence[ItemT]) -> list[ItemT]:
    """Those of ``docs`` whose stored item is still queued."""
    queued = jobs.existing_items(task.client_id, task.job_id, [doc.index for doc in docs], ItemStatus.QUEUED)
    return [doc for doc in docs if doc.index in queued]


# -- item -------------------------------------------------------------------------------------------


ItemWork = Callable[[ItemRun[JobT, ItemT]], Finish | Finished]


def run_item(
    kind: JobKind[JobT, ItemT, ServicesT, Any],
    services: ServicesT,
    task: ItemTask,
    call: TaskCall,
    now: datetime | None = None,
) -> str:
    """Run one item once (the kind's :meth:`JobKind.work`), however often its task is delivered.
    ``now`` is when the delivery started (by default, the services' clock); the services' clock
    tells when the item finished, which names its settle task (work can outlast a window)."""
    jobs, queue, policy = services.jobs, services.queue, services.policy
    now = now or services.clock()
    stored = jobs.read_item(task.client_id, task.job_id, task.index)
    if stored is None:
        return "item not found: dropped"
    item = stored.item
    if item.status in TERMINAL_ITEM:
        queue.enqueue(kind.settle_task(task.client_id, task.job_id, services.clock()))
        return f"item already {item.status.value}"
    job = jobs.get_job(task.client_id, task.job_id)
    if job.status is JobStatus.PAUSED and item.status is ItemStatus.QUEUED:
        # Nothing written: the item waits for the resume, which enqueues its task again (anew: this
        # one is consumed by our 2xx). A running item (a redelivery) goes on below and finishes.
        return ITEM_WAITS
    result: Finish | Finished
    token = new_token()
    if job.status in STOPPED_JOB and item.status is ItemStatus.QUEUED:
        run = ItemRun(job, item, stored.version, last_attempt=False, now=now, token=token)
        result = Finish(ItemStatus.CANCELLED, {"failure": None})
    else:
        taken = _take(jobs, stored, now, token)
        if taken is None:
            return TAKEN_OVER
        version, item = taken
        last_attempt = call.retry_count + 1 >= policy.max_attempts
        run = ItemRun(job, item, version, last_attempt=last_attempt, now=now, token=token)
        try:
            result = _attempt(
                kind,
                run,
                lambda current: kind.work(services, current),
                give_up=lambda error: kind.given_up(services, run.job, run.item, error),
            )
        except ItemTakenOver:
            return TAKEN_OVER
        except PauseJob as pause:
            return _pause_from_work(kind, services, run, pause.reason)
        except ContinueLater as later:
            return _continue_later(kind, services, run, later)
    if isinstance(result, Finish):
        if not _record(kind, jobs, run, result, policy.counter_shards):
            return TAKEN_OVER
        outcome = result.outcome or f"item {task.index} {result.status.value}"
    elif kind.counted:
        # The item is finished but was never counted: its job would never settle.
        raise TypeError(f"the work of a counted kind ({kind.noun}) must return Finish, not Finished")
    else:
        outcome = result.outcome
    queue.enqueue(kind.settle_task(task.client_id, task.job_id, services.clock()))
    return outcome


def new_token() -> str:
    """A fresh mark for one writer (a delivery, a reaper run, an accept call)."""
    return secrets.token_hex(8)


def _take(jobs: JobStore[Any, ItemT], stored: StoredItem[ItemT], now: datetime, token: str) -> tuple[Any, ItemT] | None:
    """Mark the item running with ``token``, unless another delivery (or the reaper) took or finished
    it since ``stored`` was read: that one owns the outcome, and this one must neither run the work
    again nor record it a second time (None). Returns what guards the finish (the version the write
    left) and the item as it was before this delivery took it.

    A take whose answer was lost is recognised by the token (the store's guarded commit). An item
    still queued was only touched by the reaper (which re-enqueues lost tasks): it is taken from the
    fresh read."""
    current = stored
    for _attempt in attempts(CONTENDED_COMMIT, "take a batch item"):
        item = current.item
        changes = {
            "status": ItemStatus.RUNNING.value,
            "attempts": item.attempts + 1,
            "delivery": token,
            "updated_at": now,
        }
        version = jobs.commit_item(current, changes)
        if version is not None:
            return version, item
        fresh = jobs.read_item(current.client_id, current.job_id, item.index)
        if fresh is None or fresh.item.status is not ItemStatus.QUEUED:
            return None
        current = fresh
    return None


def _pause_from_work(
    kind: JobKind[JobT, ItemT, ServicesT, Any], services: ServicesT, run: ItemRun[JobT, ItemT], reason: str
) -> str:
    """The kind's work raised :class:`PauseJob`: pause the job, then put the item back to queued as it
    was before this delivery took it (uncounted; guarded by the take's version). The job first: an
    item queued again in a job still running would wait for no task. A job stopped meanwhile cancels
    the item instead (counted), like any queued item of a stopped job."""
    jobs, queue, policy = services.jobs, services.queue, services.policy
    job = pause_job(kind, jobs, run.job.client_id, run.job.id, run.now, reason)
    if job.status is JobStatus.PAUSED:
        changes = {
            "status": ItemStatus.QUEUED.value,
            "attempts": run.item.attempts,
            "delivery": run.token,
            "updated_at": run.now,
        }
        stored = StoredItem(run.job.client_id, run.job.id, run.item, run.version)
        if jobs.commit_item(stored, changes) is None:
            return TAKEN_OVER
        logger.warning("%s %s paused by item %s: %s", kind.noun, run.job.id, run.item.index, reason)
        return f"{ITEM_WAITS} ({reason})"
    if job.status not in STOPPED_JOB:  # the pause lost every race: the queue delivers again
        raise RetryTask(f"the {kind.noun} could not be paused")
    if not _record(kind, jobs, run, Finish(ItemStatus.CANCELLED, {"failure": None}), policy.counter_shards):
        return TAKEN_OVER
    queue.enqueue(kind.settle_task(run.job.client_id, run.job.id, services.clock()))
    return f"item {run.item.index} cancelled"


def _continue_later(
    kind: JobKind[JobT, ItemT, ServicesT, Any], services: ServicesT, run: ItemRun[JobT, ItemT], later: ContinueLater
) -> str:
    """The kind's work raised :class:`ContinueLater`: write what it learned into the item, put it back to
    queued as this delivery found it (its attempts unchanged), then enqueue its next task for later. The
    write first: a task delivered before it would find the item running and be taken over. Should the
    enqueue fail, this delivery answers 5xx and its redelivery takes the queued item again."""
    jobs, queue = services.jobs, services.queue
    waits = run.item.waits + 1
    changes = {
        **later.fields,
        "status": ItemStatus.QUEUED.value,
        "attempts": run.item.attempts,
        "delivery": run.token,
        "updated_at": run.now,
        "waits": waits,
    }
    stored = StoredItem(run.job.client_id, run.job.id, run.item, run.version)
    if jobs.commit_item(stored, changes) is None:
        return TAKEN_OVER
    when = services.clock() + later.delay
    queue.enqueue(
        kind.item_task(run.job.client_id, run.job.id, run.item.index, run.job.resumes, waits=waits, schedule_time=when)
    )
    return f"item {run.item.index} continues at {when.isoformat(timespec='seconds')} ({later.reason})"


def _attempt(
    kind: JobKind[JobT, ItemT, Any, Any],
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
    except (ItemTakenOver, PauseJob, ContinueLater):
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


def _record(
    kind: JobKind[JobT, ItemT, Any, Any],
    jobs: JobStore[JobT, ItemT],
    run: ItemRun[JobT, ItemT],
    result: Finish,
    shards: int,
) -> bool:
    """Finish the item and count it in one commit, unless another delivery (or the reaper) changed it
    since this one took it (then that one owns the outcome: False). A commit of ours whose answer was
    lost is recognised by the run's token (True)."""
    changes = run.changes(result.status, **result.fields)
    counts: dict[str, int] | None = None
    if kind.counted:
        finished = kind.item_model.model_validate({**run.item.model_dump(), **changes})
        counts = increments(kind, run.job, finished)
    stored = StoredItem(run.job.client_id, run.job.id, run.item, run.version)
    # One of ``shards`` counter shards (no document is written by every item; totals add up every
    # shard there is).
    return jobs.commit_item(stored, changes, counts, run.item.index % shards) is not None


# -- counting ---------------------------------------------------------------------------------------


def increments(kind: JobKind[JobT, ItemT, Any, Any], job: JobT, item: ItemT) -> dict[str, int]:
    """What a finished item adds to its job's totals."""
    return {"done_items": 1, f"{item.status.value}_items": 1, **kind.tally(job, item)}


def totals_of_items(kind: JobKind[JobT, ItemT, Any, Any], job: JobT, items: Sequence[ItemT]) -> Totals:
    """What the finished ones of ``items`` add up to."""
    totals: dict[str, int] = {}
    for item in items:
        if item.status in TERMINAL_ITEM:
            for name, value in increments(kind, job, item).items():
                totals[name] = totals.get(name, 0) + value
    return Totals(totals)


def all_items(jobs: JobStore[JobT, ItemT], job: JobT) -> list[ItemT]:
    """Every item of a job that is not paged (at most a hundred or so), in order."""
    return jobs.all_items(job.client_id, job.id)


def totals(kind: JobKind[JobT, ItemT, Any, Any], jobs: JobStore[JobT, ItemT], job: JobT) -> Totals:
    """The job's totals: from its counters, or (uncounted kinds) from its items."""
    if kind.counted:
        return Totals(jobs.counter_totals(job.client_id, job.id))
    return totals_of_items(kind, job, all_items(jobs, job))


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


def progress(kind: JobKind[JobT, ItemT, Any, Any], jobs: JobStore[JobT, ItemT], job: JobT) -> Progress[ItemT]:
    """Counts and totals of a job (one counter read, or one read of its items)."""
    items: list[ItemT] = []
    if kind.counted:
        sums = Totals(jobs.counter_totals(job.client_id, job.id))
        running = 0
        if not job.settled:
            running = jobs.count_items(job.client_id, job.id, ItemStatus.RUNNING)
    else:
        items = all_items(jobs, job)
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


def run_settle(
    kind: JobKind[Any, Any, ServicesT, Any], services: ServicesT, task: JobTask, now: datetime | None = None
) -> str:
    """Once every item has finished: capture what the kind charges, release the rest (one ledger commit).
    ``now`` (by default, the services' clock) is when the job is marked settled."""
    jobs, ledger, now = services.jobs, services.ledger, now or services.clock()
    job = jobs.get_job(task.client_id, task.job_id)
    if job.settled:
        return "already settled"
    sums = totals(kind, jobs, job)
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
    event_type, payload = kind.completion(job, sums, final, captured, released)
    completed = new_event(
        task.client_id,
        event_type,
        Subject(kind=kind.collection, id=job.id),
        payload,
        occurred_at=now,
        sequence=1,
    )
    jobs.update_job(
        task.client_id,
        task.job_id,
        {
            "status": final.value,
            "settled": True,
            "settlement": kind.settlement(sums, captured, released),
            "finished_at": now,
            "updated_at": now,
        },
        events=[completed],  # one event per job, in the settle's commit: never one per item
    )
    return f"settled: captured {captured}, released {released}"


def _released_before_settle(kind: JobKind[Any, Any, Any, Any], ledger: Ledger, job: Any, actor: Actor) -> HoldOutcome:
    """The outcome of a hold resolved before settlement, read through the ledger: releasing a released
    hold again writes nothing and answers the first release (a captured one is still a 409)."""
    return ledger.release(
        job.client_id,
        job.hold_id,
        actor=actor,
        reason=f"{kind.label} {job.id} settled after its hold was released",
        key=f"settle-released:{job.id}",
    )


# -- commands and reads -----------------------------------------------------------------------------


def cancel_job(
    kind: JobKind[JobT, Any, Any, Any],
    jobs: JobStore[JobT, Any],
    queue: TaskQueue,
    client_id: str,
    job_id: str,
    now: datetime,
) -> JobT:
    """Stop starting new items; items already running finish; unstarted ones are released at settle.

    A paused job's queued items have no task left (their deliveries consumed them): cancelling it
    names their tasks anew (``resumes`` + 1) and enqueues them, and each cancels its item (counted)."""
    generation: int | None = None  # the ``resumes`` our write of a paused job set (its answer may be lost)
    for _attempt in attempts(CONTENDED_COMMIT, f"cancel a {kind.noun}"):
        stored = jobs.read_job(client_id, job_id)
        if stored is None:
            raise NotFound(f"No {kind.noun} {job_id}")
        job = stored.job
        if job.settled:
            return job
        # A paused job's, or one whose cancel from paused we wrote (or a concurrent call did) though
        # it answered "changed": the items' new tasks are enqueued (again, harmlessly: names dedupe).
        paused = job.status is JobStatus.PAUSED or (generation is not None and job.resumes == generation)
        if job.status not in STOPPED_JOB:
            changes: dict[str, Any] = {"status": JobStatus.CANCELLING.value, "updated_at": now}
            if paused:
                generation = job.resumes + 1
                changes.update(resumes=generation, paused_reason=None)
            try:
                # Guarded by the read: a settle that finishes in between wins, and we answer its state.
                jobs.update_job(client_id, job_id, changes, stored.version)
            except StaleWrite:
                continue  # the job moved (a page, a settle, our own update answered late): read it again
            job = job.model_copy(update={**changes, "status": JobStatus.CANCELLING})
        if paused:
            # Should this call fail before every task is enqueued, the reaper finds the cancelling
            # job's queued items and has their tasks enqueued (under the same new names).
            _enqueue_queued(kind, jobs, queue, job)
        # Stopped, by this call or an earlier one whose answer was lost: its settlement is asked for
        # (settling is idempotent, and waits for running items).
        queue.enqueue(kind.settle_task(client_id, job_id, now))
        return job
    return jobs.get_job(client_id, job_id)


PAUSABLE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})


def pause_job(
    kind: JobKind[JobT, Any, Any, Any],
    jobs: JobStore[JobT, Any],
    client_id: str,
    job_id: str,
    now: datetime,
    reason: str,
) -> JobT:
    """Stop starting new items until :func:`resume_job`: queued items wait (their deliveries leave
    them queued), running ones finish. A job already paused, stopping or settled is answered as it is.

    A paused job keeps its hold: a kind that reserves credits must be resumed (or cancelled) within
    its hold's TTL, or the sweeper releases the hold and the job settles with nothing charged."""
    for _attempt in attempts(CONTENDED_COMMIT, f"pause a {kind.noun}"):
        stored = jobs.read_job(client_id, job_id)
        if stored is None:
            raise NotFound(f"No {kind.noun} {job_id}")
        job = stored.job
        if job.settled or job.status not in PAUSABLE:
            return job
        changes = {"status": JobStatus.PAUSED.value, "paused_reason": reason, "updated_at": now}
        try:
            # Guarded by the read: a cancel (or a settle) landing in between wins.
            jobs.update_job(client_id, job_id, changes, stored.version)
        except StaleWrite:
            continue
        return job.model_copy(update={**changes, "status": JobStatus.PAUSED})
    return jobs.get_job(client_id, job_id)


def resume_job(
    kind: JobKind[JobT, Any, Any, Any],
    jobs: JobStore[JobT, Any],
    queue: TaskQueue,
    client_id: str,
    job_id: str,
    now: datetime,
) -> JobT:
    """Run a paused job again: running, ``resumes`` + 1, and the task of every item still queued
    enqueued under its new name (a paged job's pages not written yet write and enqueue theirs as
    usual). A job that is not paused is answered as it is.

    Should this call fail before every task is enqueued, the reaper enqueues the tasks of the items
    left queued (under the same names) once the job has been running for its stall grace."""
    generation: int | None = None  # the ``resumes`` our write set (its answer may be lost)
    for _attempt in attempts(CONTENDED_COMMIT, f"resume a {kind.noun}"):
        stored = jobs.read_job(client_id, job_id)
        if stored is None:
            raise NotFound(f"No {kind.noun} {job_id}")
        job = stored.job
        if job.settled:
            return job
        # Our write landed though it answered "changed" (or a concurrent resume did the same): the
        # tasks are enqueued all the same (again, harmlessly: names dedupe).
        ours = job.status is JobStatus.RUNNING and generation is not None and job.resumes == generation
        if job.status is JobStatus.PAUSED:
            generation = job.resumes + 1
            changes = {
                "status": JobStatus.RUNNING.value,
                "resumes": generation,
                "paused_reason": None,
                "updated_at": now,
            }
            try:
                jobs.update_job(client_id, job_id, changes, stored.version)
            except StaleWrite:
                continue
            job = job.model_copy(update={**changes, "status": JobStatus.RUNNING})
        elif not ours:
            return job
        if not _enqueue_queued(kind, jobs, queue, job):
            # Nothing queued: every item finished while the job was paused (or was running), and a
            # settle task lost meanwhile would not be enqueued again by the reaper, which skips paused jobs.
            queue.enqueue(kind.settle_task(client_id, job_id, now))
        return job
    return jobs.get_job(client_id, job_id)


def _enqueue_queued(kind: JobKind[JobT, Any, Any, Any], jobs: JobStore[JobT, Any], queue: TaskQueue, job: JobT) -> int:
    """Enqueue the task of every written item of ``job`` still queued, named after its ``resumes``;
    how many items were queued."""
    queued = jobs.items_with_status(job.client_id, job.id, ItemStatus.QUEUED)
    for item in queued:
        queue.enqueue(kind.item_task(job.client_id, job.id, item.index, job.resumes, waits=item.waits))
    return len(queued)


def list_jobs(jobs: JobStore[JobT, Any], client_id: str, query: JobListQuery) -> Page[JobT]:
    """Newest first, optionally of one status."""
    return jobs.list_jobs(client_id, query)


def list_items(jobs: JobStore[Any, ItemT], client_id: str, job_id: str, query: ItemListQuery) -> Page[ItemT]:
    """In index order, optionally of one status (404 for a job that is not the client's)."""
    jobs.get_job(client_id, job_id)
    return jobs.list_items(client_id, job_id, query)


def items_with_status(jobs: JobStore[Any, ItemT], client_id: str, job_id: str, status: ItemStatus) -> list[ItemT]:
    return jobs.items_with_status(client_id, job_id, status)
