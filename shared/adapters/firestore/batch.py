"""Firestore adapter of :class:`shared.batch.store.JobStore`: one job kind's documents.

Layout (unchanged)::

    clients/{client}/{kind's collection}/{job}                 the job
        items/{index:06d}                                      one item each
        counters/{shard:03d}                                   counted kinds' totals, incremented
        fanout_pages/{page:06d}                                a paged job's written (or given-up) pages
    batch_reaper/{kind's collection}                           where the reaper's job pass stopped

Guarded writes use ``update_time`` preconditions; versions handed out are the snapshots read or the
write results of our own writes (both carry ``update_time``). Commits whose answer may be lost go
through :func:`shared.batch.commits.commit_once` with the client's own retry turned off. The SDK
is imported on first use (cold starts of functions that never touch a job pay nothing for it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic

from shared.adapters.firestore.outbox import write_events
from shared.batch.commits import commit_once
from shared.batch.models import ItemListQuery, ItemStatus, JobListQuery, JobStatus
from shared.batch.store import (
    I,
    ItemRow,
    J,
    JobRow,
    JobShelf,
    JobStore,
    ReaperCursor,
    StaleWrite,
    StoredItem,
    StoredJob,
)
from shared.events.model import DomainEvent
from shared.events.outbox import EventKicker, NoKick
from shared.pagination import Page, cursor_datetime, cursor_int, cursor_str, decode_cursor, encode_cursor

if TYPE_CHECKING:
    from google.cloud.firestore import Client

    from shared.catalog.ports import ItemGuard

CURSORS = "batch_reaper"  # top level: {kind's collection} → where the job pass stopped
SCAN_PAGE = 200  # documents read per query page (no long-lived stream while writing)


def jobs_collection(db: Client, collection: str, client_id: str) -> Any:
    """``clients/{client}/{collection}``."""
    return db.collection("clients").document(client_id).collection(collection)


def _scan(query: Any, after: Any = None) -> Iterator[Any]:
    """Every result of ``query`` (ordered), read a page at a time after ``after`` (a snapshot)."""
    while True:
        page = (query.start_after(after) if after is not None else query).limit(SCAN_PAGE).get()
        yield from page
        if len(page) < SCAN_PAGE:
            return
        after = page[-1]


class FirestoreJobStore(JobStore[J, I], Generic[J, I]):
    """The documents of ``kind``'s jobs in Firestore."""

    def __init__(self, db: Client, kind: JobShelf[J, I], kicker: EventKicker | None = None) -> None:
        self.db = db
        self.kind = kind
        self.kicker = kicker or NoKick()

    # -- where things live ------------------------------------------------------------------------

    def job_ref(self, client_id: str, job_id: str) -> Any:
        return jobs_collection(self.db, self.kind.collection, client_id).document(job_id)

    def items_ref(self, client_id: str, job_id: str) -> Any:
        return self.job_ref(client_id, job_id).collection("items")

    def item_ref(self, client_id: str, job_id: str, index: int) -> Any:
        return self.items_ref(client_id, job_id).document(f"{index:06d}")

    def _marker(self, client_id: str, job_id: str, page: int) -> Any:
        return self.job_ref(client_id, job_id).collection("fanout_pages").document(f"{page:06d}")

    def _shard(self, client_id: str, job_id: str, shard: int) -> Any:
        return self.job_ref(client_id, job_id).collection("counters").document(f"{shard:03d}")

    def _count(self, batch: Any, client_id: str, job_id: str, counts: dict[str, int], shard: int) -> None:
        from google.cloud import firestore

        increments = {name: firestore.Increment(value) for name, value in counts.items()}
        batch.set(self._shard(client_id, job_id, shard), increments, merge=True)

    def _item(self, data: Any) -> I:
        return self.kind.item_model.model_validate(data)

    # -- jobs -------------------------------------------------------------------------------------

    def read_job(self, client_id: str, job_id: str) -> StoredJob[J] | None:
        snapshot = self.job_ref(client_id, job_id).get()
        if not snapshot.exists:
            return None
        return StoredJob(self.kind.job_model.model_validate(snapshot.to_dict()), snapshot)

    def create_job(self, job: J, items: list[I]) -> bool:
        ref = self.job_ref(job.client_id, job.id)
        batch = self.db.batch()
        batch.create(ref, job.model_dump(mode="python"))
        for item in items:
            batch.create(ref.collection("items").document(f"{item.index:06d}"), item.model_dump(mode="python"))

        def ours() -> bool | None:
            stored = ref.get()
            return True if stored.exists and (stored.to_dict() or {}).get("submission") == job.submission else None

        return commit_once(lambda: batch.commit(retry=None), ours, f"record {self.kind.noun}") is not None

    def update_job(
        self,
        client_id: str,
        job_id: str,
        changes: dict[str, Any],
        version: Any = None,
        events: Sequence[DomainEvent] = (),
    ) -> None:
        from google.api_core.exceptions import FailedPrecondition
        from google.api_core.exceptions import NotFound as GNotFound

        ref = self.job_ref(client_id, job_id)
        option = None if version is None else self.db.write_option(last_update_time=version.update_time)
        if not events:
            try:
                ref.update(changes, option=option)
            except (FailedPrecondition, GNotFound) as error:
                if version is None:
                    raise
                raise StaleWrite(f"{self.kind.noun} {job_id} changed") from error
            return
        batch = self.db.batch()
        batch.update(ref, changes, option=option)
        write_events(self.db, batch, list(events))
        try:
            batch.commit()
        except (FailedPrecondition, GNotFound) as error:
            if version is None:
                raise
            raise StaleWrite(f"{self.kind.noun} {job_id} changed") from error
        self.kicker.kick(list(events))

    def list_jobs(self, client_id: str, query: JobListQuery) -> Page[J]:
        from google.cloud.firestore import FieldFilter, Query

        q = jobs_collection(self.db, self.kind.collection, client_id)
        if query.status:
            q = q.where(filter=FieldFilter("status", "==", query.status.value))
        q = q.order_by("created_at", direction=Query.DESCENDING).order_by("id", direction=Query.DESCENDING)
        if query.cursor:
            values = decode_cursor(query.cursor)
            q = q.start_after({"created_at": cursor_datetime(values, "t"), "id": cursor_str(values, "id")})
        docs = [self.kind.job_model.model_validate(s.to_dict()) for s in q.limit(query.limit + 1).stream()]
        cursor = None
        if len(docs) > query.limit:
            docs = docs[: query.limit]
            cursor = encode_cursor({"t": docs[-1].created_at.isoformat(), "id": docs[-1].id})
        return Page(items=docs, next_cursor=cursor)

    # -- fan-out ----------------------------------------------------------------------------------

    def mark_fanned_out(self, client_id: str, job_id: str, page: int | None, now: datetime) -> None:
        from google.cloud import firestore

        ref = self.job_ref(client_id, job_id)
        marker = self._marker(client_id, job_id, page) if page is not None else None

        @firestore.transactional  # type: ignore[misc]
        def apply(transaction: Any) -> None:
            current = JobStatus(
                (ref.get(transaction=transaction).to_dict() or {}).get("status", JobStatus.QUEUED.value)
            )
            changes: dict[str, Any] = {}
            if marker is not None and not marker.get(transaction=transaction).exists:
                transaction.create(marker, {"page": page, "at": now})
                changes["fanout_pages_done"] = firestore.Increment(1)
            if current is JobStatus.QUEUED:
                changes["status"] = JobStatus.RUNNING.value
            if changes:
                transaction.update(ref, {**changes, "updated_at": now})

        apply(self.db.transaction())

    def page_given_up(self, client_id: str, job_id: str, page: int) -> bool:
        return bool((self._marker(client_id, job_id, page).get().to_dict() or {}).get("given_up"))

    def give_up_page(self, client_id: str, job_id: str, page: int, failure: dict[str, Any]) -> None:
        self._marker(client_id, job_id, page).set({"given_up": True, "failure": failure}, merge=True)

    def marked_pages(self, client_id: str, job_id: str) -> set[int]:
        markers = self.job_ref(client_id, job_id).collection("fanout_pages")
        return {int(snapshot.id) for snapshot in markers.select(["page"]).stream()}

    def count_fanout_requeue(self, client_id: str, job_id: str, created: int, now: datetime) -> None:
        from google.cloud import firestore

        # No automatic retry: a resent increment whose first answer was lost would count twice.
        self.job_ref(client_id, job_id).update(
            {"updated_at": now, "fanout_requeues": firestore.Increment(created)}, retry=None
        )

    # -- items ------------------------------------------------------------------------------------

    def read_item(self, client_id: str, job_id: str, index: int) -> StoredItem[I] | None:
        snapshot = self.item_ref(client_id, job_id, index).get()
        if not snapshot.exists:
            return None
        return StoredItem(client_id, job_id, self._item(snapshot.to_dict()), snapshot)

    def create_item(self, job: J, item: I, counts: dict[str, int] | None = None, shard: int = 0) -> bool:
        from google.api_core.exceptions import AlreadyExists

        batch = self.db.batch()
        batch.create(self.item_ref(job.client_id, job.id, item.index), item.model_dump(mode="python"))
        if counts:
            self._count(batch, job.client_id, job.id, counts, shard)
        try:
            batch.commit()
        except AlreadyExists:
            return False
        return True

    def create_items(self, job: J, items: list[I], counts: dict[str, int]) -> bool:
        from google.api_core.exceptions import AlreadyExists

        batch = self.db.batch()
        for item in items:
            batch.create(self.item_ref(job.client_id, job.id, item.index), item.model_dump(mode="python"))
        self._count(batch, job.client_id, job.id, counts, 0)
        try:
            batch.commit()
        except AlreadyExists:
            return False
        return True

    def commit_item(
        self, stored: StoredItem[I], changes: dict[str, Any], counts: dict[str, int] | None = None, shard: int = 0
    ) -> Any | None:
        ref = self.item_ref(stored.client_id, stored.job_id, stored.item.index)
        batch = self.db.batch()
        batch.update(ref, changes, option=self.db.write_option(last_update_time=stored.version.update_time))
        if counts:
            self._count(batch, stored.client_id, stored.job_id, counts, shard)

        def ours() -> Any | None:
            fresh = ref.get()
            data = fresh.to_dict() or {}
            mine = data.get("delivery") == changes["delivery"] and data.get("status") == changes["status"]
            return fresh if mine else None

        def commit() -> Any:
            return batch.commit(retry=None)[0]

        return commit_once(commit, ours, f"write a {self.kind.noun} item")

    def update_item(self, stored: StoredItem[I], changes: dict[str, Any]) -> None:
        from google.api_core.exceptions import FailedPrecondition
        from google.api_core.exceptions import NotFound as GNotFound

        ref = self.item_ref(stored.client_id, stored.job_id, stored.item.index)
        try:
            ref.update(changes, option=self.db.write_option(last_update_time=stored.version.update_time))
        except (FailedPrecondition, GNotFound) as error:
            raise StaleWrite(f"item {stored.item.index} of {self.kind.noun} {stored.job_id} changed") from error

    def item_moved(self, client_id: str, job_id: str, index: int, version: Any) -> bool:
        return bool(self.item_ref(client_id, job_id, index).get().update_time != version.update_time)

    def item_guard(self, client_id: str, job_id: str, index: int, version: Any, changes: dict[str, Any]) -> ItemGuard:
        from shared.catalog.ports import ItemGuard

        return ItemGuard(self.item_ref(client_id, job_id, index), version, changes)

    def existing_items(
        self, client_id: str, job_id: str, indexes: list[int], status: ItemStatus | None = None
    ) -> set[int]:
        if not indexes:
            return set()
        refs = [self.item_ref(client_id, job_id, index) for index in indexes]
        field = "status" if status is not None else "index"
        found = set()
        for snapshot in self.db.get_all(refs, field_paths=[field]):
            if snapshot.exists and (status is None or (snapshot.to_dict() or {}).get("status") == status.value):
                found.add(int(snapshot.id))
        return found

    def all_items(self, client_id: str, job_id: str) -> list[I]:
        stream = self.items_ref(client_id, job_id).stream()
        return sorted((self._item(s.to_dict()) for s in stream), key=lambda item: item.index)

    def _with_status(self, client_id: str, job_id: str, status: ItemStatus) -> Any:
        from google.cloud.firestore import FieldFilter

        return self.items_ref(client_id, job_id).where(filter=FieldFilter("status", "==", status.value))

    def items_with_status(self, client_id: str, job_id: str, status: ItemStatus) -> list[I]:
        return [self._item(s.to_dict()) for s in self._with_status(client_id, job_id, status).stream()]

    def count_items(self, client_id: str, job_id: str, status: ItemStatus, limit: int | None = None) -> int:
        query = self._with_status(client_id, job_id, status)
        if limit is not None:
            return sum(1 for _ in query.limit(limit).stream())
        return int(query.count().get()[0][0].value)

    def list_items(self, client_id: str, job_id: str, query: ItemListQuery) -> Page[I]:
        from google.cloud.firestore import FieldFilter

        q = self.items_ref(client_id, job_id)
        if query.status:
            q = q.where(filter=FieldFilter("status", "==", query.status.value))
        q = q.order_by("index")
        if query.cursor:
            q = q.start_after({"index": cursor_int(decode_cursor(query.cursor), "i")})
        docs = [self._item(s.to_dict()) for s in q.limit(query.limit + 1).stream()]
        cursor = None
        if len(docs) > query.limit:
            docs = docs[: query.limit]
            cursor = encode_cursor({"i": docs[-1].index})
        return Page(items=docs, next_cursor=cursor)

    def counter_totals(self, client_id: str, job_id: str) -> dict[str, int]:
        totals: dict[str, int] = {}
        for snapshot in self.job_ref(client_id, job_id).collection("counters").stream():
            for name, value in (snapshot.to_dict() or {}).items():
                totals[name] = totals.get(name, 0) + int(value)
        return totals

    # -- the reaper's scans -----------------------------------------------------------------------

    def stale_items(self, status: ItemStatus, updated_before: datetime) -> Iterator[ItemRow[I]]:
        from google.cloud.firestore import FieldFilter

        # Collection-group index on ``items``: status, updated_at. Other kinds' items live in
        # collections named alike: skipped by their path.
        query = (
            self.db.collection_group("items")
            .where(filter=FieldFilter("status", "==", status.value))
            .where(filter=FieldFilter("updated_at", "<", updated_before))
            .order_by("updated_at")
        )
        for snapshot in _scan(query):
            parts = snapshot.reference.path.split("/")
            if len(parts) == 6 and parts[0] == "clients" and parts[2] == self.kind.collection:
                data = snapshot.to_dict() or {}
                yield ItemRow(parts[1], parts[3], int(parts[5]), data, snapshot, self.kind.item_model)

    def unsettled_jobs(self, status: str, created_before: datetime, after: str | None) -> Iterator[JobRow[J]]:
        from google.cloud.firestore import FieldFilter

        query = (
            self.db.collection_group(self.kind.collection)
            .where(filter=FieldFilter("status", "==", status))
            .where(filter=FieldFilter("created_at", "<", created_before))
            .order_by("created_at")
        )
        start = self.db.document(after).get() if after else None
        for snapshot in _scan(query, start if start is not None and start.exists else None):
            parts = snapshot.reference.path.split("/")
            if len(parts) != 4 or parts[0] != "clients":
                continue
            data = snapshot.to_dict() or {}
            yield JobRow(parts[1], snapshot.reference.path, bool(data.get("settled")), data, self.kind.job_model)

    def _cursor_ref(self) -> Any:
        return self.db.collection(CURSORS).document(self.kind.collection)

    def reaper_cursor(self) -> ReaperCursor | None:
        data = self._cursor_ref().get().to_dict()
        if not data:
            return None
        return ReaperCursor(status=str(data.get("status") or ""), position=str(data.get("path") or ""))

    def save_reaper_cursor(self, cursor: ReaperCursor, now: datetime) -> None:
        self._cursor_ref().set({"status": cursor.status, "path": cursor.position, "at": now})

    def clear_reaper_cursor(self) -> None:
        self._cursor_ref().delete()
