"""What distinguishes one kind of batch job from another: its names, its rules and its steps.

:mod:`shared.batch.lifecycle` is the only orchestrator: it accepts a job, fans it out, runs each
item once, settles it, and :mod:`shared.batch.recovery` finishes what no task will. At each step it
calls a method of the job's kind with the kind's :class:`JobServices` (the one bundle of adapters
and limits the kind's steps use, built from the platform by :meth:`JobKind.dependencies`):

* accept: :meth:`JobKind.prepare` checks an order against stored state and prices it (after a keyed
  request was found to be new), :meth:`JobKind.record` stores what the job needs and returns the job
  and, unless paged, its items;
* fan-out (paged kinds): :meth:`JobKind.page_items` builds one page's items, :meth:`JobKind.after_page`
  does what follows a written page (e.g. remember the products' defaults);
* item: :meth:`JobKind.work` runs one item; :meth:`JobKind.failed` and :meth:`JobKind.given_up` say what
  a failure leaves; :meth:`JobKind.transient` which errors are worth another delivery; :class:`PauseJob`
  raised from the work pauses the whole job (see below); :class:`ContinueLater` puts the item back to
  wait for an outside operation (a video model's) and delivers it again later, without a worker sleeping;
* settle: :meth:`JobKind.tally` says what a finished item adds up to, :meth:`JobKind.charge` what the
  job costs (:meth:`JobKind.charge_breakdown`, :meth:`JobKind.settle_reason`, :meth:`JobKind.settlement`).

Pausing: a job is paused and resumed by the caller (:func:`shared.batch.lifecycle.pause_job`,
:func:`shared.batch.lifecycle.resume_job`), or by its kind when nothing can be done until someone acts
(the store revoked our token): the kind's work raises ``PauseJob(reason)``. The lifecycle then pauses the
job and puts the item back to queued, unstarted and uncounted (its attempts as before this delivery),
in guarded commits; the delivery answers 2xx. While a job is paused its queued items wait (their
deliveries leave them queued and consume their tasks; the reaper leaves them alone), items already
running finish, and a resume enqueues the task of every item still queued again, named after the
job's ``resumes`` (Cloud Tasks keeps the consumed names reserved for about an hour). An exception
rather than a verdict: the work that finds out is often deep in an adapter call, and the lifecycle
alone orders the two writes (the job paused before its item is queued again: an item queued again in
a job still running would wait for a task that no longer exists).

Adding a job kind (store sync-back, video):

1. Models: a job document (:class:`~shared.batch.models.BatchJobDoc`, or
   :class:`~shared.batch.models.PagedJobDoc` for jobs too large to write with their items) and an item
   document (:class:`~shared.batch.models.BatchItemDoc`).
2. A :class:`JobOrder` subclass carrying the request, and, when the kind needs more than
   :class:`JobServices` holds (an engine, its own limits), a :class:`JobServices` subclass.
3. One ``JobKind[Job, Item, Services, Order]`` subclass: the names (collection, ids, tasks, hold), the
   rules above, :meth:`JobKind.store` (its documents: ``platform.job_store(self)``) and
   :meth:`JobKind.dependencies` building its services (``jobs=self.store(platform)``) from the platform.
4. Routes: the API entry point calls :func:`shared.batch.lifecycle.accept` (and the status reads);
   the Cloud Tasks entry point only calls ``add_worker_routes(tasks, KIND)``
   (:mod:`shared.http.batch_routes`), which serves the fan-out, item, settle and reaper routes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, TypedDict

from pydantic import BaseModel
from typing_extensions import TypeVar  # PEP 696 defaults (Python 3.13's typing.TypeVar)

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
from shared.errors import EpoxError
from shared.events.model import EventType
from shared.tasks import TaskRequest, task_name, windowed_task

if TYPE_CHECKING:
    from shared.batch.store import JobStore
    from shared.engines.base import ImageEngine
    from shared.ledger.service import Ledger
    from shared.platform import Platform
    from shared.storage import ObjectStore
    from shared.tasks import TaskQueue


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


@dataclass(frozen=True, kw_only=True)
class JobServices:
    """Everything the lifecycle and a kind's steps use, in one bundle: the adapters, the clock and the
    lifecycle's limits. A kind that needs more (an engine, its own limits) subclasses it.

    ``jobs`` holds the kind's own documents (the lifecycle reads and writes only through it); ``db``
    is left for the kinds' steps that still read other aggregates through it."""

    jobs: JobStore[Any, Any]
    store: ObjectStore
    queue: TaskQueue
    ledger: Ledger
    policy: BatchPolicy
    clock: Callable[[], datetime]


class LifecycleServices(TypedDict):
    """The :class:`JobServices` fields, as keywords (see :meth:`JobKind.lifecycle_services`)."""

    jobs: JobStore[Any, Any]
    store: ObjectStore
    queue: TaskQueue
    ledger: Ledger
    policy: BatchPolicy
    clock: Callable[[], datetime]


@dataclass(frozen=True, kw_only=True)
class EngineJobServices(JobServices):
    """The services of a kind whose items call the image engine."""

    # Resolved on first use: accepting a job (on the API function) never builds the engine.
    engines: Callable[[], ImageEngine]

    @property
    def engine(self) -> ImageEngine:
        return self.engines()


@dataclass(frozen=True, kw_only=True)
class JobOrder:
    """A request to accept a job: who asks, under which key. A kind subclasses it with its request;
    :meth:`JobKind.prepare` sets what it costs."""

    client_id: str
    user_id: str
    request_key: RequestKey | None
    # Tells apart endpoints sharing one Idempotency-Key (a create and a retry name two jobs).
    scope: tuple[str, ...] = ()
    amount: int = 0  # the credits to reserve for the whole job


JobT = TypeVar("JobT", bound=BatchJobDoc)
ItemT = TypeVar("ItemT", bound=BatchItemDoc)
ServicesT = TypeVar("ServicesT", bound=JobServices, default=JobServices)
OrderT = TypeVar("OrderT", bound=JobOrder, default=JobOrder)


def failure_of(error: EpoxError, **extra: Any) -> dict[str, Any]:
    """How an item's final failure is stored and shown."""
    return {"code": error.code, "message": error.detail, **extra, "retryable": bool(getattr(error, "retryable", False))}


@dataclass(frozen=True)
class Totals:
    """What a job's finished items add up to: ``{status}_items`` and ``done_items`` for every kind,
    plus whatever a kind tallies (images made, credits earned)."""

    values: Mapping[str, int] = field(default_factory=dict)

    def __getitem__(self, name: str) -> int:
        return int(self.values.get(name, 0))

    @property
    def done(self) -> int:
        return self["done_items"]

    @property
    def succeeded(self) -> int:
        return self["succeeded_items"]

    @property
    def failed(self) -> int:
        return self["failed_items"]

    @property
    def cancelled(self) -> int:
        return self["cancelled_items"]


@dataclass(frozen=True)
class Finish:
    """A kind's verdict on one item, for the lifecycle to record (guarded by the delivery, counted, once)."""

    status: ItemStatus
    fields: dict[str, Any] = field(default_factory=dict)
    outcome: str = ""  # what the worker answers; default "item {index} {status}"


@dataclass(frozen=True)
class Finished:
    """The kind recorded the item's outcome itself, atomically with its result (e.g. a new revision).
    Only for kinds without counters: the lifecycle cannot add the counts to that commit."""

    outcome: str


class ItemTakenOver(Exception):
    """Another delivery of the same item task changed the item first: it owns the outcome."""


class PauseJob(Exception):
    """Raised by a kind's :meth:`JobKind.work`: nothing more of this job can run until someone acts
    (e.g. the store needs to be authorized again). The lifecycle pauses the job with ``reason`` and
    puts the item back to queued (not counted, its attempts as they were); a resume runs it again.
    Not an error: no attempt is used up and nothing fails, on the last attempt too."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ContinueLater(Exception):
    """Raised by a kind's :meth:`JobKind.work` when its item waits on something outside (a long-running
    model operation started by this or an earlier delivery): the lifecycle writes ``fields`` into the
    item (what the work learned, e.g. the operation's name), puts it back to queued with its attempts as
    they were before this delivery, and enqueues its task again ``delay`` from now under a new name (the
    item's ``waits``). No worker sleeps while a model works; no attempt is used up by waiting. The kind
    bounds the total wait itself (e.g. fails the item once its operation is older than a deadline)."""

    def __init__(self, delay: timedelta, reason: str, fields: Mapping[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.delay = delay
        self.reason = reason
        self.fields = dict(fields or {})


@dataclass(frozen=True)
class ItemRun(Generic[JobT, ItemT]):
    """One delivery of an item task, as the kind's :meth:`JobKind.work` sees it."""

    job: JobT
    item: ItemT  # as it was before this delivery took it
    # What guards the finishing commit: the store's opaque version of the item as this delivery left
    # it (the write that marked it running, or the read the reaper or a cancellation acted on).
    version: Any
    last_attempt: bool  # the queue will not deliver again: finish the item, whatever happens
    now: datetime
    # This delivery's own mark on the item (written when it takes and when it finishes the item): a
    # commit of ours whose answer was lost is recognised by it.
    token: str = ""

    def changes(self, status: ItemStatus, **fields: Any) -> dict[str, Any]:
        """The item update recording ``status`` (for a kind that commits it with its result)."""
        return {"status": status.value, **fields, "delivery": self.token, "updated_at": self.now}


class JobKind(ABC, Generic[JobT, ItemT, ServicesT, OrderT]):
    """One kind of batch job. Subclasses set the names and implement the rules and steps; the
    lifecycle calls them (see the module docstring)."""

    collection: str  # clients/{client}/{collection}/{job id}
    id_prefix: str  # job ids: "{prefix}_…"
    noun: str  # in messages: "No {noun} {id}"
    label: str  # the hold's purpose and the settlement's reason: "{label} {id}"
    worker: str  # the Cloud Tasks entry point serving /tasks/fanout, /tasks/item, /tasks/settle
    task_prefix: str  # task names: "{prefix}fanout-…", "{prefix}item-…", "{prefix}settle-…"
    hold_prefix: str  # the hold's ledger key: "{prefix}:{job id}"
    operation: str  # the ledger operation the hold is for
    completed_event: EventType  # written with the settled job (the outbox): what consumers react to
    job_model: type[JobT]
    item_model: type[ItemT]
    # Progress kept in sharded counters, written by the commit that finishes each item: for jobs
    # too large to read every item on each status read. Otherwise progress is read from the items.
    counted: bool = False
    # How long one delivery of an item task may take before Cloud Tasks gives up on it and retries:
    # the item's worst case (None: the queue's default of 10 minutes). Too short, and the queue runs
    # an item a second time while the first delivery is still working (and paying for the model).
    item_deadline: timedelta | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        job_model, item_model = getattr(cls, "job_model", None), getattr(cls, "item_model", None)
        if job_model is None or item_model is None or not issubclass(job_model, PagedJobDoc):
            return
        # The reaper may have to give up a fan-out page it cannot rebuild (its items were never
        # written): it counts and writes those items from the lifecycle's fields alone.
        if not cls.counted:
            raise TypeError(f"{cls.__name__}: a paged kind must be counted")
        own = set(item_model.model_fields) - set(BatchItemDoc.model_fields)
        required = sorted(name for name in own if item_model.model_fields[name].is_required())
        if required:
            raise TypeError(f"{cls.__name__}: a paged kind's item fields need defaults ({', '.join(required)})")

    @property
    def paged(self) -> bool:
        """Whether the fan-out writes the items page by page (else they are written with the job)."""
        return issubclass(self.job_model, PagedJobDoc)

    @property
    def fanout_model(self) -> type[JobTask]:
        return FanoutPageTask if self.paged else JobTask

    # -- wiring -----------------------------------------------------------------------------------

    def dependencies(self, platform: Platform) -> ServicesT:
        """The kind's services built from the platform's adapters and settings (what its worker
        routes run with)."""
        raise NotImplementedError(f"{type(self).__name__} is not served by worker routes")

    def lifecycle_services(self, platform: Platform, policy: BatchPolicy) -> LifecycleServices:
        """The part of every kind's services the lifecycle itself uses (its jobs, the object store, the
        queue, the ledger, ``policy`` and the clock), as keywords for the kind's services class."""
        return {
            "jobs": self.store(platform),
            "store": platform.object_store,
            "queue": platform.task_queue,
            "ledger": platform.ledger,
            "policy": policy,
            "clock": platform.clock,
        }

    def store(self, platform: Platform) -> JobStore[JobT, ItemT]:
        """Where the kind's jobs live (the adapter the kind is wired to, e.g.
        :class:`~shared.adapters.firestore.batch.FirestoreJobStore` on the platform's Firestore): what
        its services and its status reads use."""
        raise NotImplementedError(f"{type(self).__name__} has no job store")

    # -- steps ------------------------------------------------------------------------------------

    def prepare(self, services: ServicesT, order: OrderT, job_id: str) -> OrderT:
        """Check a new job's order against stored state and price it (``order.amount``): called once a
        keyed request is known to be new, before anything is reserved. By default, as ordered."""
        return order

    @abstractmethod
    def record(self, services: ServicesT, order: OrderT, job_id: str, hold_id: str) -> tuple[JobT, Sequence[ItemT]]:
        """Store what the job needs besides its documents (e.g. in the object store) and return the
        job and, unless the kind is paged, all its items (the lifecycle writes them)."""

    def page_items(self, services: ServicesT, job: JobT, start: int, stop: int, status: ItemStatus) -> list[ItemT]:
        """A paged kind's item documents of indexes ``start``..``stop - 1``, in ``status``."""
        raise TypeError(f"{self.noun}s are not paged")

    def after_page(self, services: ServicesT, job: JobT, items: list[ItemT]) -> None:
        """What follows a written fan-out page of a job still running (nothing by default)."""

    @abstractmethod
    def work(self, services: ServicesT, run: ItemRun[JobT, ItemT]) -> Finish | Finished:
        """Run one item (one delivery of its task): the item's verdict for the lifecycle to record
        (:class:`Finish`), or :class:`Finished` when the kind recorded it with its result. Errors are
        the lifecycle's to retry or fail (see :meth:`transient`); :class:`PauseJob` pauses the job and
        leaves the item queued."""

    # -- rules ------------------------------------------------------------------------------------

    def tally(self, job: JobT, item: ItemT) -> dict[str, int]:
        """What a finished item adds to the job's totals besides being counted by status."""
        return {}

    @abstractmethod
    def charge(self, job: JobT, totals: Totals) -> int:
        """The credits to capture at settlement (the rest of the hold is released)."""

    def charge_breakdown(self, job: JobT, totals: Totals) -> dict[str, int]:
        """The charge split by priced operation, for usage reports; empty when the hold's one
        operation covers it all."""
        return {}

    @abstractmethod
    def settle_reason(self, job: JobT, totals: Totals) -> str:
        """The capture's reason in the credit history."""

    def images(self, totals: Totals) -> int:
        """How many images the job delivered (its completed event says so)."""
        return totals.succeeded

    def completion(
        self, job: JobT, totals: Totals, final: JobStatus, captured: int, released: int
    ) -> tuple[EventType, BaseModel]:
        """The event written with the settled job (the outbox): by default ``completed_event`` with
        the job's counts; a kind may tell success from failure with events of its own."""
        from shared.events.model import JobCompleted

        return self.completed_event, JobCompleted(
            job_id=job.id,
            status=final.value,
            items=job.item_count,
            succeeded=totals.succeeded,
            failed=totals.failed,
            cancelled=totals.cancelled,
            charged=captured,
            refunded=released,
            images=self.images(totals),
        )

    def settlement(self, totals: Totals, captured: int, released: int) -> dict[str, int]:
        """What the settled job document records."""
        return {"captured": captured, "released": released}

    def transient(self, error: EpoxError) -> bool:
        """Worth another delivery (while attempts remain): a dependency that said "later"."""
        return error.status in (429, 503)

    def failed(self, job: JobT, error: EpoxError) -> Finish:
        """The item's final failure (refunded at settlement)."""
        return Finish(ItemStatus.FAILED, {"failure": failure_of(error)}, outcome=f"item failed: {error.code}")

    def given_up(self, services: ServicesT, job: JobT, item: ItemT, error: EpoxError) -> Finish:
        """The verdict on an item no delivery will try again (its last attempt failed, or the reaper
        found its delivery killed mid-work): failed, unless a kind keeps what earlier deliveries
        already delivered to the customer (and charges it)."""
        return self.failed(job, error)

    # -- what things are called --------------------------------------------------------------------

    def fanout_task(self, client_id: str, job_id: str, page: int = 0) -> TaskRequest:
        if self.paged:
            payload: JobTask = FanoutPageTask(client_id=client_id, job_id=job_id, page=page)
            name = task_name(f"{self.task_prefix}fanout", client_id, job_id, str(page))
        else:
            payload = JobTask(client_id=client_id, job_id=job_id)
            name = task_name(f"{self.task_prefix}fanout", client_id, job_id)
        return TaskRequest(target=self.worker, path="/tasks/fanout", payload=payload, name=name)

    def item_task(
        self,
        client_id: str,
        job_id: str,
        index: int,
        generation: int = 0,
        *,
        waits: int = 0,
        schedule_time: datetime | None = None,
    ) -> TaskRequest:
        """``generation``: the job's ``resumes``; ``waits``: the item's (see :class:`ContinueLater`). Each
        resume and each wait names the item's task anew: consumed task names stay reserved for about an
        hour."""
        parts = [f"{self.task_prefix}item", client_id, job_id, str(index)]
        if generation > 0:
            parts.append(f"r{generation}")
        if waits > 0:
            parts.append(f"w{waits}")
        return TaskRequest(
            target=self.worker,
            path="/tasks/item",
            payload=ItemTask(client_id=client_id, job_id=job_id, index=index),
            name=task_name(*parts),
            schedule_time=schedule_time,
            dispatch_deadline=self.item_deadline,
        )

    def settle_task(self, client_id: str, job_id: str, finished_at: datetime) -> TaskRequest:
        """Named after the window the triggering work finished in (see :func:`shared.tasks.windowed_task`)."""
        return windowed_task(
            target=self.worker,
            path="/tasks/settle",
            payload=JobTask(client_id=client_id, job_id=job_id),
            name_parts=(f"{self.task_prefix}settle", client_id, job_id),
            finished_at=finished_at,
        )
