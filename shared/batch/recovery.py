"""Recovery (Cloud Scheduler, ``/jobs/reap-stuck-items``): finish what no task will finish.

Cloud Tasks delivers each task a bounded number of times. Work whose task is gone without an outcome
would wait forever; :func:`reap` finds each case within a bounded time and either enqueues the
missing task again (by the same name, so a task that still exists is not duplicated) or gives the
work up with a reason, so that every job settles: what succeeded is charged, the rest released.

* An item still ``running`` longer than the lease: its delivery was killed (a timeout, out of
  memory). It is given up through the same guarded write a delivery uses (failed and refunded,
  except what the kind says the customer already has).
* An item still ``queued`` in a started job, untouched (item and job) for :data:`STALL_GRACE`: its
  task used up its attempts before any delivery took the item (no worker instance, a failed token
  check, Firestore failing before the take). Its task is created again; once
  :data:`MAX_REQUEUES` re-created tasks were lost as well, the item fails (``item_not_started``).
* A paged job whose fan-out pages were not all written (a page task used up its attempts): the first
  missing page is enqueued again (the chain goes on from there); after :data:`MAX_REQUEUES` lost
  re-enqueues the unwritten items are written failed (``fanout_page_failed``) and counted.
* A job still ``queued`` after :data:`FANOUT_GRACE` lost its fan-out task: enqueued again (a
  cancelled one too: its items are then cancelled). A job whose items have all finished but which
  is not settled lost its settle task: enqueued again.
* A ``paused`` job waits, for days if need be: its queued items have no task on purpose (a resume
  enqueues them), so neither they nor the job are touched. Its running items are still given up
  when their delivery died (they were running when it was paused, and finish as usual).

The job pass resumes where the previous run stopped (a cursor per kind in ``batch_reaper/{kind's
collection}``), so old jobs that need nothing cannot use up every run's limit while newer ones wait.
Every run is safe to repeat; each item and job is handled on its own (a failure is logged and
reported per client).
"""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from shared.batch.kind import Finish, ItemRun, JobKind, JobServices, failure_of
from shared.batch.lifecycle import _record, increments, new_token, totals
from shared.batch.models import STOPPED_JOB, ItemStatus, JobStatus, PagedJobDoc, ReapReport
from shared.batch.store import ReaperCursor, StaleWrite, StoredItem
from shared.errors import EpoxError
from shared.scheduled import isolated

if TYPE_CHECKING:
    from shared.batch.store import JobStore

logger = logging.getLogger("epox.batch")

# A fan-out runs seconds after its job is accepted, and a settle task seconds after the item that
# asked for it: a job older than this that is still queued lost its fan-out task, and one whose
# items have all finished but which is not settled lost its settle task.
FANOUT_GRACE = timedelta(minutes=10)
# How long a queued item (and its job), or a paged job with unwritten pages, may stay untouched before
# its task is presumed lost. Enqueuing again by the same name is harmless while the task still exists
# (Cloud Tasks answers "duplicate"), so this only keeps the reaper from checking too eagerly; only a
# task that was really created again counts towards MAX_REQUEUES.
STALL_GRACE = timedelta(minutes=30)
# Lost tasks re-created for one item (or fan-out pages for one job) before the work is given up:
# with STALL_GRACE and a 15-minute schedule, a few hours at most, within the shortest hold TTL.
MAX_REQUEUES = 3
ITEM_BATCH = 400  # items given up per commit (Firestore allows 500 writes)


class ItemTimedOut(EpoxError):
    """No delivery of the item finished within the lease: it was given up (and refunded)."""

    status = 504
    code = "item_timed_out"
    title = "The item did not finish in time"


class ItemNotStarted(EpoxError):
    """The item's task was lost again and again before any delivery started the item."""

    status = 503
    code = "item_not_started"
    title = "The item could not be started"


class FanoutPageFailed(EpoxError):
    """The fan-out page that should have written the item failed every time it was enqueued."""

    status = 503
    code = "fanout_page_failed"
    title = "The item could not be written"


def reap(
    kind: JobKind[Any, Any, Any, Any],
    services: JobServices,
    now: datetime | None = None,
    *,
    lease: timedelta,
    limit: int = 500,
    stall_grace: timedelta = STALL_GRACE,
) -> ReapReport:
    """One run over every client (see the module docstring).

    ``now`` is when the run started (what it compares against; by default, the services' clock); the
    services' clock tells the time each settle task is enqueued at, which names it (a long run
    outlives settle windows). At most ``limit`` items acted on per item pass and ``limit`` jobs
    checked, the rest the next run (``more``)."""
    store = services.jobs
    now = now if now is not None else services.clock()
    report = ReapReport(job="reap-stuck-items")
    acted = 0
    for row in store.stale_items(ItemStatus.RUNNING, now - lease):
        if acted >= limit:
            report.more = True
            break
        client_id, job_id = row.client_id, row.job_id
        with isolated(report.job, client_id, report.failed, step="running items"):
            if fail_stuck_item(kind, services, row.load(), now, lease):
                acted += 1
                report.items_failed.setdefault(client_id, []).append(f"{job_id}/{row.index:06d}")
    acted = 0
    jobs: dict[str, Any] = {}  # a large job's queued items are many: its document is read once per run
    for row in store.stale_items(ItemStatus.QUEUED, now - stall_grace):
        if acted >= limit:
            report.more = True
            break
        client_id, job_id = row.client_id, row.job_id
        with isolated(report.job, client_id, report.failed, step="queued items"):
            done = requeue_stalled_item(kind, services, row.load(), now, stall_grace, jobs=jobs)
            if done is not None:
                acted += 1
                found = report.items_failed if done == "failed" else report.items_requeued
                if done != "waiting":
                    found.setdefault(client_id, []).append(f"{job_id}/{row.index:06d}")
    _reap_jobs(kind, services, now, report, limit=limit, stall_grace=stall_grace)
    return report


# -- items ------------------------------------------------------------------------------------------


def fail_stuck_item(
    kind: JobKind[Any, Any, Any, Any], services: JobServices, stored: StoredItem[Any], now: datetime, lease: timedelta
) -> bool:
    """Give up the running item ``stored`` for good (the kind's verdict: failed, or what of it the
    customer already has) and enqueue its job's settlement. The write is guarded by the snapshot's
    version like a delivery's: a delivery that finished the item or started again since then
    owns it, and nothing changes (False)."""
    client_id, job_id, item = stored.client_id, stored.job_id, stored.item
    job = services.jobs.get_job(client_id, job_id)
    if item.status is not ItemStatus.RUNNING or job.settled:
        return False
    error = ItemTimedOut(
        f"No delivery of this item finished within {int(lease.total_seconds() // 60)} minutes; it was given up"
    )
    run = ItemRun(job, item, stored.version, last_attempt=True, now=now, token=new_token())
    # One counter shard is enough: reaping is rare, and the totals add up every shard.
    if not _record(kind, services.jobs, run, kind.given_up(services, job, item, error), shards=1):
        return False
    logger.warning("item %s of %s %s was running since %s: given up", item.index, kind.noun, job_id, item.updated_at)
    # Named after the time the item was recorded, not when the run started: a settle task of this job
    # that ran since (for an item reaped earlier in this run) must not swallow this one as a duplicate.
    # Should the enqueue fail, the next run settles the job (see _recover_job).
    services.queue.enqueue(kind.settle_task(client_id, job_id, services.clock()))
    return True


def requeue_stalled_item(
    kind: JobKind[Any, Any, Any, Any],
    services: JobServices,
    stored: StoredItem[Any],
    now: datetime,
    stall_grace: timedelta = STALL_GRACE,
    *,
    jobs: dict[str, Any] | None = None,
) -> Literal["requeued", "waiting", "failed"] | None:
    """Enqueue the task of the queued item ``stored`` again ("requeued": it was lost; "waiting": a
    task of that name still exists, or its name is still reserved after it ended), or, once
    :data:`MAX_REQUEUES` re-created tasks were lost too, fail it ("failed"; cancelled when its job was
    stopped) and enqueue the settlement. None when there is nothing to do: the item was taken since,
    its job is settled, not fanned out yet (the job pass sees to that), paused (a resume enqueues it)
    or was touched recently. ``jobs`` caches the job documents read during one run, by job id."""
    store, queue = services.jobs, services.queue
    client_id, job_id, item = stored.client_id, stored.job_id, stored.item
    if item.status is not ItemStatus.QUEUED:
        return None
    cache = jobs if jobs is not None else {}
    if f"{client_id}/{job_id}" not in cache:
        cache[f"{client_id}/{job_id}"] = store.get_job(client_id, job_id)
    job = cache[f"{client_id}/{job_id}"]
    if job.settled or job.status in (JobStatus.QUEUED, JobStatus.PAUSED) or job.updated_at > now - stall_grace:
        return None
    if item.requeues >= MAX_REQUEUES:
        if job.status in STOPPED_JOB:
            result = Finish(ItemStatus.CANCELLED, {"failure": None})
        else:
            error = ItemNotStarted(f"The task of this item was lost {item.requeues + 1} times before it could start")
            result = kind.given_up(services, job, item, error)
        run = ItemRun(job, item, stored.version, last_attempt=True, now=now, token=new_token())
        if not _record(kind, store, run, result, shards=1):
            return None
        logger.warning("item %s of %s %s never started: %s", item.index, kind.noun, job_id, result.status.value)
        queue.enqueue(kind.settle_task(client_id, job_id, services.clock()))
        return "failed"
    # Named after the job's resumes: a resume whose enqueues failed part way is completed here.
    created = queue.enqueue(kind.item_task(client_id, job_id, item.index, job.resumes, waits=item.waits))
    # Guarded: a delivery that took the item meanwhile is not overwritten (a take that read the item
    # before this write reads it again and takes it).
    with contextlib.suppress(StaleWrite):
        store.update_item(stored, {"updated_at": now, "requeues": item.requeues + int(created)})
    if created:
        logger.warning("the task of item %s of %s %s was lost: enqueued again", item.index, kind.noun, job_id)
    return "requeued" if created else "waiting"


# -- jobs -------------------------------------------------------------------------------------------

# Paused jobs are left alone: nothing of theirs is lost while they wait (see the module docstring).
_JOB_ORDER = (JobStatus.QUEUED, JobStatus.CANCELLING, JobStatus.RUNNING)


def _reap_jobs(
    kind: JobKind[Any, Any, Any, Any],
    services: JobServices,
    now: datetime,
    report: ReapReport,
    *,
    limit: int,
    stall_grace: timedelta,
) -> None:
    """Check at most ``limit`` unsettled jobs created before ``now - FANOUT_GRACE`` (queued, then
    cancelling, then running, each oldest first), starting after the last job the previous run
    checked; the position is kept until a run gets to the end."""
    store = services.jobs
    cursor = store.reaper_cursor()
    statuses = list(_JOB_ORDER)
    after: str | None = None
    if cursor is not None and cursor.status in {s.value for s in statuses} and cursor.position:
        statuses = statuses[[s.value for s in statuses].index(cursor.status) :]
        after = cursor.position
    checked = 0
    last: ReaperCursor | None = None
    for status in statuses:
        rows = store.unsettled_jobs(status.value, now - FANOUT_GRACE, after)
        after = None
        for row in rows:
            if row.settled:
                continue
            if checked >= limit:
                report.more = True
                if last is not None:
                    store.save_reaper_cursor(last, now)
                return
            checked += 1
            last = ReaperCursor(status=status.value, position=row.position)
            with isolated(report.job, row.client_id, report.failed, step="jobs"):
                job = row.load()
                for field, entry in _recover_job(kind, services, job, now, stall_grace):
                    getattr(report, field).setdefault(row.client_id, []).append(entry)
    if cursor is not None:
        store.clear_reaper_cursor()  # every job was checked: the next run starts from the oldest again


def _recover_job(
    kind: JobKind[Any, Any, Any, Any], services: JobServices, job: Any, now: datetime, stall_grace: timedelta
) -> list[tuple[str, str]]:
    """Enqueue what an unsettled job is waiting for that no task will bring (its fan-out, a lost
    fan-out page, its settlement), or give up pages that keep getting lost. Returns the report's
    entries: (field, what)."""
    store, queue, clock = services.jobs, services.queue, services.clock
    if job.status is JobStatus.QUEUED:
        # Its fan-out task was never enqueued (or was lost before it ran).
        if queue.enqueue(kind.fanout_task(job.client_id, job.id)):
            logger.warning("%s %s was never fanned out: fan-out enqueued again", kind.noun, job.id)
            return [("jobs_started", job.id)]
        return []
    stopped = job.status in STOPPED_JOB
    if isinstance(job, PagedJobDoc):
        missing = _missing_pages(store, job)
        if missing and (stopped or job.updated_at <= now - stall_grace):
            if job.fanout_requeues >= MAX_REQUEUES:
                _give_up_pages(kind, store, job, missing, now)
                queue.enqueue(kind.settle_task(job.client_id, job.id, clock()))
                return [("pages_failed", f"{job.id}/{page}") for page in missing]
            created = queue.enqueue(kind.fanout_task(job.client_id, job.id, missing[0]))
            store.count_fanout_requeue(job.client_id, job.id, int(created), now)
            if created:
                logger.warning("%s %s lost fan-out page %s: enqueued again", kind.noun, job.id, missing[0])
                return [("jobs_started", job.id)]
            return []
    if stopped and store.count_items(job.client_id, job.id, ItemStatus.QUEUED, limit=1):
        # A cancelled job's queued items are cancelled by their item tasks, which the fan-out
        # enqueues (again) for every item still queued.
        if queue.enqueue(kind.fanout_task(job.client_id, job.id)):
            logger.warning("%s %s (cancelling) has items no task will cancel: fan-out enqueued", kind.noun, job.id)
            return [("jobs_started", job.id)]
        return []
    if totals(kind, store, job).done < job.item_count:
        return []  # items still to finish: their deliveries (or the item passes) ask for the settlement
    # Every item finished, and the job is still unsettled: the settle task that should have followed
    # was lost (its enqueue failed after the item was recorded). Settling is idempotent.
    if queue.enqueue(kind.settle_task(job.client_id, job.id, clock())):
        logger.warning("%s %s has finished but was never settled: settlement enqueued", kind.noun, job.id)
        return [("settles_enqueued", job.id)]
    return []


def _missing_pages(store: JobStore[Any, Any], job: PagedJobDoc) -> list[int]:
    """The job's fan-out pages without a marker, in order."""
    if job.fanout_pages_done >= job.fanout_pages:
        return []
    done = store.marked_pages(job.client_id, job.id)
    return [page for page in range(job.fanout_pages) if page not in done]


def _give_up_pages(
    kind: JobKind[Any, Any, Any, Any], store: JobStore[Any, Any], job: PagedJobDoc, pages: list[int], now: datetime
) -> None:
    """Write every item of the given-up pages that no delivery wrote as failed (cancelled, for a
    stopped job), counted in the same commits, then mark the pages. Creates: a page delivery that
    comes after all finds its items written, and counts nothing twice."""
    if not kind.counted:  # JobKind refuses paged kinds that are not counted; kept for the type checker
        raise TypeError(f"{kind.noun} jobs are paged but not counted")
    stopped = job.status in STOPPED_JOB
    error = FanoutPageFailed(f"The fan-out page was lost {job.fanout_requeues + 1} times; the item was never written")
    finish = Finish(ItemStatus.CANCELLED, {"failure": None}) if stopped else kind.failed(job, error)
    size = job.fanout_page_size or -(-job.item_count // job.fanout_pages)  # old jobs: the pages' average
    # From the first lost page to the end: a lost page stops the chain, so every later page is lost too.
    indexes = range(min(pages) * size, job.item_count)
    token = new_token()
    for start in range(indexes.start, indexes.stop, ITEM_BATCH):
        wanted = list(range(start, min(start + ITEM_BATCH, indexes.stop)))
        existing = store.existing_items(job.client_id, job.id, wanted)
        missing = [index for index in wanted if index not in existing]
        if not missing:
            continue
        items = []
        sums: dict[str, int] = {}
        for index in missing:
            item = kind.item_model.model_validate(
                {
                    "index": index,
                    "status": finish.status.value,
                    **finish.fields,
                    "delivery": token,
                    "updated_at": now,
                }
            )
            items.append(item)
            for name, value in increments(kind, job, item).items():
                sums[name] = sums.get(name, 0) + value
        if not store.create_items(job, items, sums):
            # A late page delivery wrote some of them meanwhile: the next run gives up what is left.
            logger.warning("%s %s: a page was written while it was given up", kind.noun, job.id)
            return
    failure = failure_of(error)
    for page in pages:
        store.mark_fanned_out(job.client_id, job.id, page, now)
        store.give_up_page(job.client_id, job.id, page, failure)
    logger.warning("%s %s: fan-out pages %s given up", kind.noun, job.id, pages)
