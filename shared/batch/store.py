"""The port to where one job kind's documents live: jobs, their items, counters, fan-out page
markers and the reaper's cursor.

The lifecycle (:mod:`shared.batch.lifecycle`) and the reaper (:mod:`shared.batch.recovery`) decide
what to write; a :class:`JobStore` decides where and how: document paths, queries, and the guards
that make a write conditional on the version it was decided on. Versions are opaque (the Firestore
adapter's are snapshots and write results, with their ``update_time``); a guarded write against a
version that moved raises :class:`StaleWrite`, or, for the writes recognised by the writer's token
(:meth:`JobStore.commit_item`, :meth:`JobStore.create_job`), answers that someone else won.

A commit that went through but answered "unavailable" is recognised by the writer's token when
re-read (:mod:`shared.batch.commits`), never taken for a lost race: both the Firestore adapter and
the in-memory fake (``tests/fakes_batch.py``) go through :func:`shared.batch.commits.commit_once`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from shared.batch.models import BatchItemDoc, BatchJobDoc, ItemListQuery, ItemStatus, JobListQuery
from shared.errors import NotFound
from shared.events.model import DomainEvent
from shared.pagination import Page

if TYPE_CHECKING:
    from shared.catalog.ports import ItemGuard

J = TypeVar("J", bound=BatchJobDoc)
I = TypeVar("I", bound=BatchItemDoc)  # noqa: E741


J_co = TypeVar("J_co", bound=BatchJobDoc, covariant=True)
I_co = TypeVar("I_co", bound=BatchItemDoc, covariant=True)


class JobShelf(Protocol[J_co, I_co]):
    """Where a kind's documents live and what they are: all a job store needs of its kind. Every
    :class:`~shared.batch.kind.JobKind` is one; a reader that must not load a kind's work (a ZIP export
    reading a video job) names the shelf alone."""

    @property
    def collection(self) -> str: ...

    @property
    def noun(self) -> str: ...

    @property
    def job_model(self) -> type[J_co]: ...

    @property
    def item_model(self) -> type[I_co]: ...


class StaleWrite(Exception):
    """A guarded write found its document changed (or gone) since the version it was decided on."""


@dataclass(frozen=True)
class StoredJob(Generic[J]):
    """A job as read, with the opaque version a guarded write of it is conditioned on."""

    job: J
    version: Any


@dataclass(frozen=True)
class StoredItem(Generic[I]):
    """An item as read (or as a write left it), with the opaque version a guarded write of it is
    conditioned on."""

    client_id: str
    job_id: str
    item: I
    version: Any


@dataclass(frozen=True)
class ItemRow(Generic[I]):
    """One item the reaper's scan found, as stored: read on demand (a malformed document fails its own
    check, not the whole run)."""

    client_id: str
    job_id: str
    index: int
    raw: Mapping[str, Any]
    version: Any
    model: type[I]

    def load(self) -> StoredItem[I]:
        return StoredItem(self.client_id, self.job_id, self.model.model_validate(dict(self.raw)), self.version)


@dataclass(frozen=True)
class JobRow(Generic[J]):
    """One job the reaper's scan found: its client, its position in the scan (to resume after it),
    whether it is settled, and the job itself (read on demand: a malformed document fails its own
    check, not the whole run)."""

    client_id: str
    position: str
    settled: bool
    raw: Mapping[str, Any]
    model: type[J]

    def load(self) -> J:
        return self.model.model_validate(dict(self.raw))


@dataclass(frozen=True)
class ReaperCursor:
    """Where the previous reaper run stopped: the status it was scanning and the last job it checked."""

    status: str
    position: str


class JobStore(ABC, Generic[J, I]):
    """One job kind's documents (``clients/{client}/{kind's collection}/{job}`` with ``items``,
    ``counters`` and ``fanout_pages`` in the Firestore layout)."""

    kind: JobShelf[J, I]

    # -- jobs ---------------------------------------------------------------------------------------

    @abstractmethod
    def read_job(self, client_id: str, job_id: str) -> StoredJob[J] | None:
        """The job and its version, or None."""

    def find_job(self, client_id: str, job_id: str) -> J | None:
        stored = self.read_job(client_id, job_id)
        return stored.job if stored is not None else None

    def get_job(self, client_id: str, job_id: str) -> J:
        """The job, or 404 (also for another client's id)."""
        job = self.find_job(client_id, job_id)
        if job is None:
            raise NotFound(f"No {self.kind.noun} {job_id}")
        return job

    @abstractmethod
    def create_job(self, job: J, items: list[I]) -> bool:
        """Write the job and ``items`` in one commit. False when a job of that id exists that this
        call did not write (its ``submission`` token tells); a commit of ours whose answer was lost is
        True."""

    @abstractmethod
    def update_job(
        self,
        client_id: str,
        job_id: str,
        changes: dict[str, Any],
        version: Any = None,
        events: Sequence[DomainEvent] = (),
    ) -> None:
        """Apply ``changes`` to the job; with ``version``, only if it has not moved since (else
        :class:`StaleWrite`); ``events`` are written in the same commit (the outbox) and then kicked."""

    @abstractmethod
    def list_jobs(self, client_id: str, query: JobListQuery) -> Page[J]:
        """Newest first, optionally of one status."""

    # -- fan-out ------------------------------------------------------------------------------------

    @abstractmethod
    def mark_fanned_out(self, client_id: str, job_id: str, page: int | None, now: datetime) -> None:
        """Atomically: create ``page``'s marker and count it in ``fanout_pages_done`` (once), and move
        a queued job to running (a cancel landing meanwhile is not overwritten)."""

    @abstractmethod
    def page_given_up(self, client_id: str, job_id: str, page: int) -> bool:
        """Whether the reaper gave ``page`` up."""

    @abstractmethod
    def give_up_page(self, client_id: str, job_id: str, page: int, failure: dict[str, Any]) -> None:
        """Mark ``page`` given up (its marker, with the failure)."""

    @abstractmethod
    def marked_pages(self, client_id: str, job_id: str) -> set[int]:
        """The pages with a marker."""

    @abstractmethod
    def count_fanout_requeue(self, client_id: str, job_id: str, created: int, now: datetime) -> None:
        """Touch the job and add ``created`` to its ``fanout_requeues`` (sent once: a resent increment
        whose first answer was lost would count twice)."""

    # -- items --------------------------------------------------------------------------------------

    @abstractmethod
    def read_item(self, client_id: str, job_id: str, index: int) -> StoredItem[I] | None:
        """The item and its version, or None."""

    @abstractmethod
    def create_item(self, job: J, item: I, counts: dict[str, int] | None = None, shard: int = 0) -> bool:
        """Create the item (and add ``counts`` to counter ``shard`` in the same commit); False when it
        exists already."""

    @abstractmethod
    def create_items(self, job: J, items: list[I], counts: dict[str, int]) -> bool:
        """Create every one of ``items`` and add ``counts`` to counter shard 0, all or nothing; False
        when one of them exists already (nothing written)."""

    @abstractmethod
    def commit_item(
        self, stored: StoredItem[I], changes: dict[str, Any], counts: dict[str, int] | None = None, shard: int = 0
    ) -> Any | None:
        """Apply ``changes`` (with the writer's ``delivery`` token and a ``status``) to the item, only
        if it has not moved since ``stored``, adding ``counts`` to counter ``shard`` in the same
        commit. Returns the item's new version; None when someone else changed it first. A commit of
        ours whose answer was lost is recognised by the token and status (its fresh read is returned)."""

    @abstractmethod
    def update_item(self, stored: StoredItem[I], changes: dict[str, Any]) -> None:
        """Apply ``changes`` only if the item has not moved since ``stored`` (else :class:`StaleWrite`)."""

    @abstractmethod
    def item_moved(self, client_id: str, job_id: str, index: int, version: Any) -> bool:
        """Whether the item changed since ``version``."""

    @abstractmethod
    def item_guard(self, client_id: str, job_id: str, index: int, version: Any, changes: dict[str, Any]) -> ItemGuard:
        """What another repository needs to finish the item in its own commit (e.g. a new revision),
        guarded by ``version``."""

    @abstractmethod
    def existing_items(
        self, client_id: str, job_id: str, indexes: list[int], status: ItemStatus | None = None
    ) -> set[int]:
        """Those of ``indexes`` whose item exists (and, given ``status``, is in it)."""

    @abstractmethod
    def all_items(self, client_id: str, job_id: str) -> list[I]:
        """Every item, in index order (jobs that are not paged: at most a hundred or so)."""

    @abstractmethod
    def items_with_status(self, client_id: str, job_id: str, status: ItemStatus) -> list[I]: ...

    @abstractmethod
    def count_items(self, client_id: str, job_id: str, status: ItemStatus, limit: int | None = None) -> int:
        """How many items are in ``status`` (at most ``limit``)."""

    @abstractmethod
    def list_items(self, client_id: str, job_id: str, query: ItemListQuery) -> Page[I]:
        """In index order, optionally of one status."""

    @abstractmethod
    def counter_totals(self, client_id: str, job_id: str) -> dict[str, int]:
        """Every counter shard added up."""

    # -- the reaper's scans (every client) ------------------------------------------------------------

    @abstractmethod
    def stale_items(self, status: ItemStatus, updated_before: datetime) -> Iterator[ItemRow[I]]:
        """Every item of this kind, of any client, in ``status`` since before ``updated_before``, oldest
        first."""

    @abstractmethod
    def unsettled_jobs(self, status: str, created_before: datetime, after: str | None) -> Iterator[JobRow[J]]:
        """Jobs of this kind, of any client, in ``status`` and created before ``created_before``, oldest
        first, after the one at ``after`` (a :attr:`JobRow.position`; from the start when it is gone)."""

    @abstractmethod
    def reaper_cursor(self) -> ReaperCursor | None: ...

    @abstractmethod
    def save_reaper_cursor(self, cursor: ReaperCursor, now: datetime) -> None: ...

    @abstractmethod
    def clear_reaper_cursor(self) -> None: ...
