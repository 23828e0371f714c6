"""Statuses, stored documents, task payloads and queries every kind of batch job shares.

A kind's own job and item documents extend :class:`BatchJobDoc` and :class:`BatchItemDoc` with what
it needs (settings, the operations, the produced asset ids…); the fields here are the lifecycle's.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.pagination import PageQuery
from shared.scheduled import ScheduledReport


class JobStatus(str, Enum):
    """queued → running → completed, or → cancelling → cancelled when the caller stops the job.
    A queued or running job may be paused (by the caller, or by the job itself when it cannot go on
    until someone acts, e.g. the store must be authorized again) and resumed (→ running); a paused
    job may be cancelled too."""

    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class ItemStatus(str, Enum):
    """queued → running → succeeded | failed; a queued item of a stopped job → cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_ITEM = frozenset({ItemStatus.SUCCEEDED, ItemStatus.FAILED, ItemStatus.CANCELLED})
STOPPED_JOB = frozenset({JobStatus.CANCELLING, JobStatus.CANCELLED})


class BatchJobDoc(BaseModel):
    """``clients/{client}/{kind's collection}/{id}``: what the lifecycle reads and writes."""

    model_config = ConfigDict(extra="ignore", defer_build=True)

    id: str
    client_id: str
    status: JobStatus = JobStatus.QUEUED
    item_count: int
    cost: int
    hold_id: str  # "" when the job is free (nothing reserved)
    created_by: str
    created_at: datetime
    updated_at: datetime
    settled: bool = False
    settlement: dict[str, int] | None = None
    finished_at: datetime | None = None
    # The request a keyed job was created by: the same Idempotency-Key with another request is a 409
    # even after the HTTP layer's 24 h record has expired (the job id is derived from the key).
    request_fingerprint: str | None = None
    # A token of the accept call that wrote the job: a commit whose answer was lost (the client's own
    # retry then finds the job) is recognised as ours, not taken for a concurrent request's job.
    submission: str | None = None
    # Why the job is paused ("store_needs_reauthorization", "paused by user"; None unless it is).
    paused_reason: str | None = None
    # How many times the job was resumed (or cancelled while paused): item task names carry it, since
    # a paused job's deliveries consumed their tasks and Cloud Tasks keeps those names for about an hour.
    resumes: int = 0


class PagedJobDoc(BatchJobDoc):
    """A job whose items are written page by page by its fan-out tasks (up to thousands of items)."""

    fanout_pages: int = 1
    fanout_pages_done: int = 0  # pages marked done (``fanout_pages/{page}``), each counted once
    # Items per page, fixed at accept with the number of pages (None: a job from before it was
    # stored, paged by the current setting).
    fanout_page_size: int | None = None
    fanout_requeues: int = 0  # fan-out pages the reaper had to enqueue again (it gives up after a few)


class BatchItemDoc(BaseModel):
    """``…/{job}/items/{index:06d}``: one unit of work."""

    model_config = ConfigDict(extra="ignore", defer_build=True)

    index: int
    status: ItemStatus = ItemStatus.QUEUED
    failure: dict[str, Any] | None = None
    attempts: int = 0
    updated_at: datetime | None = None
    # The delivery (or reaper run) that last took or finished the item: a commit whose answer was lost
    # is recognised by this token when re-read, never taken for another delivery's.
    delivery: str | None = None
    requeues: int = 0  # tasks the reaper created again for this queued item (it gives up after a few)
    waits: int = 0  # times its work asked to continue later (ContinueLater): its task names carry it


class ItemCounts(BaseModel):
    """How many of a job's items are in each state (views)."""

    model_config = ConfigDict(defer_build=True)

    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int


# -- task payloads: ids only ----------------------------------------------------------------------


class JobTask(BaseModel):
    """Settle a job, or fan out a job whose items were written with it."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    client_id: str
    job_id: str


class FanoutPageTask(JobTask):
    """Write and enqueue one page of a paged job's items."""

    page: int = Field(ge=0)


class ItemTask(JobTask):
    """Run one item."""

    index: int = Field(ge=0)


# -- queries ----------------------------------------------------------------------------------------


class JobListQuery(PageQuery):
    model_config = ConfigDict(defer_build=True)

    status: JobStatus | None = None


class ItemListQuery(PageQuery):
    model_config = ConfigDict(defer_build=True)

    status: ItemStatus | None = None


# -- scheduled jobs ---------------------------------------------------------------------------------


class ReapReport(ScheduledReport):
    """What ``/jobs/reap-stuck-items`` did, by client: items given up ("{job}/{index}"), queued items
    whose lost task was created again, jobs whose fan-out (or a lost fan-out page) was enqueued again,
    fan-out pages given up ("{job}/{page}"), finished jobs whose lost settlement was enqueued again."""

    model_config = ConfigDict(defer_build=True)

    job: str
    items_failed: dict[str, list[str]] = Field(default_factory=dict)
    items_requeued: dict[str, list[str]] = Field(default_factory=dict)
    jobs_started: dict[str, list[str]] = Field(default_factory=dict)
    pages_failed: dict[str, list[str]] = Field(default_factory=dict)
    settles_enqueued: dict[str, list[str]] = Field(default_factory=dict)
    more: bool = False  # the run stopped at its limit: the next run goes on (jobs: where this one stopped)
