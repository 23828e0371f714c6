"""What distinguishes one kind of batch job from another, and the names derived from it.

A kind is a stateless description: where its documents live, how its tasks, hold and ids are
named, and the few rules that differ between kinds (what a finished item is worth, how the job is
charged). Everything with I/O that only one kind does (generating an image, editing an asset) is
passed to the lifecycle functions as a callable instead, so a kind needs no adapters to exist.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from shared.batch.models import (
    BatchItemDoc,
    BatchJobDoc,
    FanoutPageTask,
    ItemStatus,
    ItemTask,
    JobTask,
    PagedJobDoc,
)
from shared.errors import EpoxError, NotFound
from shared.tasks import TaskRequest, task_name, windowed_task

if TYPE_CHECKING:
    from google.cloud.firestore import Client

JobT = TypeVar("JobT", bound=BatchJobDoc)
ItemT = TypeVar("ItemT", bound=BatchItemDoc)


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


class JobKind(ABC, Generic[JobT, ItemT]):
    """One kind of batch job. Subclasses set the names and implement the rules."""

    collection: str  # clients/{client}/{collection}/{job id}
    id_prefix: str  # job ids: "{prefix}_…"
    noun: str  # in messages: "No {noun} {id}"
    label: str  # the hold's purpose and the settlement's reason: "{label} {id}"
    worker: str  # the Cloud Tasks entry point serving /tasks/fanout, /tasks/item, /tasks/settle
    task_prefix: str  # task names: "{prefix}fanout-…", "{prefix}item-…", "{prefix}settle-…"
    hold_prefix: str  # the hold's ledger key: "{prefix}:{job id}"
    operation: str  # the ledger operation the hold is for
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

    def settlement(self, totals: Totals, captured: int, released: int) -> dict[str, int]:
        """What the settled job document records."""
        return {"captured": captured, "released": released}

    def transient(self, error: EpoxError) -> bool:
        """Worth another delivery (while attempts remain): a dependency that said "later"."""
        return error.status in (429, 503)

    def failed(self, job: JobT, error: EpoxError) -> Finish:
        """The item's final failure (refunded at settlement)."""
        return Finish(ItemStatus.FAILED, {"failure": failure_of(error)}, outcome=f"item failed: {error.code}")

    def given_up(self, db: Client, job: JobT, item: ItemT, error: EpoxError) -> Finish:
        """The verdict on an item no delivery will try again (its last attempt failed, or the reaper
        found its delivery killed mid-work): failed, unless a kind keeps what earlier deliveries
        already delivered to the customer (and charges it)."""
        return self.failed(job, error)

    # -- where things live, what things are called ------------------------------------------------

    def jobs_ref(self, db: Client, client_id: str) -> Any:
        return db.collection("clients").document(client_id).collection(self.collection)

    def items_ref(self, db: Client, client_id: str, job_id: str) -> Any:
        return self.jobs_ref(db, client_id).document(job_id).collection("items")

    def item_ref(self, db: Client, client_id: str, job_id: str, index: int) -> Any:
        return self.items_ref(db, client_id, job_id).document(f"{index:06d}")

    def fanout_task(self, client_id: str, job_id: str, page: int = 0) -> TaskRequest:
        if self.paged:
            payload: JobTask = FanoutPageTask(client_id=client_id, job_id=job_id, page=page)
            name = task_name(f"{self.task_prefix}fanout", client_id, job_id, str(page))
        else:
            payload = JobTask(client_id=client_id, job_id=job_id)
            name = task_name(f"{self.task_prefix}fanout", client_id, job_id)
        return TaskRequest(target=self.worker, path="/tasks/fanout", payload=payload, name=name)

    def item_task(self, client_id: str, job_id: str, index: int) -> TaskRequest:
        return TaskRequest(
            target=self.worker,
            path="/tasks/item",
            payload=ItemTask(client_id=client_id, job_id=job_id, index=index),
            name=task_name(f"{self.task_prefix}item", client_id, job_id, str(index)),
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

    def get_job(self, db: Client, client_id: str, job_id: str) -> JobT:
        snapshot = self.jobs_ref(db, client_id).document(job_id).get()
        if not snapshot.exists:
            raise NotFound(f"No {self.noun} {job_id}")
        return self.job_model.model_validate(snapshot.to_dict())
