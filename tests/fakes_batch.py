"""An in-memory :class:`~shared.batch.store.JobStore` with the Firestore adapter's semantics.

Versions are integers bumped by every write of a document; a guarded write against a version that
moved raises :class:`~shared.batch.store.StaleWrite` (or, for the token-recognised commits, answers
that someone else won), exactly as the adapter does. :meth:`InMemoryJobStore.lose_answer` makes the
next commits of one kind land and then answer "unavailable", the way a Firestore commit whose answer
was lost fails: the store recognises its own write by the writer's token, through the same
:func:`shared.batch.commits.commit_once` the adapter uses.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, Generic

from google.api_core.exceptions import AlreadyExists, FailedPrecondition, ServiceUnavailable

from shared.batch.commits import commit_once
from shared.batch.kind import JobKind
from shared.batch.models import ItemListQuery, ItemStatus, JobListQuery, JobStatus
from shared.batch.store import I, ItemRow, J, JobRow, JobStore, ReaperCursor, StaleWrite, StoredItem, StoredJob
from shared.catalog.ports import ItemGuard
from shared.events.model import DomainEvent
from shared.pagination import Page, cursor_datetime, cursor_int, cursor_str, decode_cursor, encode_cursor

Key = tuple[str, str]  # (client id, job id)


class InMemoryJobStore(JobStore[J, I], Generic[J, I]):
    """One kind's jobs, items, counters, page markers and reaper cursor, in dicts."""

    def __init__(self, kind: JobKind[J, I, Any, Any]) -> None:
        self.kind = kind
        self.jobs: dict[Key, dict[str, Any]] = {}
        self.items: dict[Key, dict[int, dict[str, Any]]] = {}
        self.counters: dict[Key, dict[int, dict[str, int]]] = {}
        self.markers: dict[Key, dict[int, dict[str, Any]]] = {}
        self.cursor: dict[str, Any] | None = None
        self.versions: dict[tuple[str, ...], int] = {}
        self._clock = 0
        self.events: list[DomainEvent] = []
        self._lost: Counter[str] = Counter()

    # -- the fake's own controls --------------------------------------------------------------------

    def lose_answer(self, operation: str, times: int = 1) -> None:
        """The next ``times`` commits of ``operation`` ("create_job", "commit_item") land, then answer
        "unavailable". For "update_job" (guarded ones), what the adapter answers then: the client
        library sent the update again by itself, and its precondition failed (:class:`StaleWrite`)."""
        self._lost[operation] += times

    @property
    def losses_pending(self) -> int:
        """Lost answers asked for that no commit has played yet."""
        return sum(self._lost.values())

    def _answer(self, operation: str) -> None:
        if self._lost[operation] > 0:
            self._lost[operation] -= 1
            raise ServiceUnavailable(f"{operation}: the commit landed, its answer was lost")

    def _bump(self, *key: str) -> int:
        self._clock += 1
        self.versions[key] = self._clock
        return self._clock

    @staticmethod
    def _item_key(client_id: str, job_id: str, index: int) -> tuple[str, ...]:
        return ("item", client_id, job_id, str(index))

    def _count(self, key: Key, counts: dict[str, int], shard: int) -> None:
        shard_doc = self.counters.setdefault(key, {}).setdefault(shard, {})
        for name, value in counts.items():
            shard_doc[name] = shard_doc.get(name, 0) + value

    # -- jobs ---------------------------------------------------------------------------------------

    def read_job(self, client_id: str, job_id: str) -> StoredJob[J] | None:
        data = self.jobs.get((client_id, job_id))
        if data is None:
            return None
        version = self.versions[("job", client_id, job_id)]
        return StoredJob(self.kind.job_model.model_validate(data), version)

    def create_job(self, job: J, items: list[I]) -> bool:
        key = (job.client_id, job.id)

        def commit() -> bool:
            if key in self.jobs:
                raise AlreadyExists(f"job {job.id}")
            self.jobs[key] = job.model_dump(mode="python")
            self._bump("job", *key)
            for item in items:
                self.items.setdefault(key, {})[item.index] = item.model_dump(mode="python")
                self._bump(*self._item_key(*key, item.index))
            self._answer("create_job")
            return True

        def ours() -> bool | None:
            stored = self.jobs.get(key)
            return True if stored is not None and stored.get("submission") == job.submission else None

        return commit_once(commit, ours, f"record {self.kind.noun}") is not None

    def update_job(
        self,
        client_id: str,
        job_id: str,
        changes: dict[str, Any],
        version: Any = None,
        events: Sequence[DomainEvent] = (),
    ) -> None:
        key = (client_id, job_id)
        if key not in self.jobs or (version is not None and self.versions[("job", *key)] != version):
            if version is None:
                raise KeyError(f"no {self.kind.noun} {job_id}")
            raise StaleWrite(f"{self.kind.noun} {job_id} changed")
        self.jobs[key].update(changes)
        self.events.extend(events)  # the outbox: written with the change, never without it
        self._bump("job", *key)
        if version is not None and self._lost["update_job"] > 0:
            self._lost["update_job"] -= 1
            raise StaleWrite(f"{self.kind.noun} {job_id} changed (by our own write, whose answer was lost)")

    def list_jobs(self, client_id: str, query: JobListQuery) -> Page[J]:
        rows = [data for (client, _), data in self.jobs.items() if client == client_id]
        if query.status:
            rows = [data for data in rows if data["status"] == query.status.value]
        rows.sort(key=lambda data: (data["created_at"], data["id"]), reverse=True)
        if query.cursor:
            values = decode_cursor(query.cursor)
            after = (cursor_datetime(values, "t"), cursor_str(values, "id"))
            rows = [data for data in rows if (data["created_at"], data["id"]) < after]
        docs = [self.kind.job_model.model_validate(data) for data in rows[: query.limit + 1]]
        cursor = None
        if len(docs) > query.limit:
            docs = docs[: query.limit]
            cursor = encode_cursor({"t": docs[-1].created_at.isoformat(), "id": docs[-1].id})
        return Page(items=docs, next_cursor=cursor)

    # -- fan-out ------------------------------------------------------------------------------------

    def mark_fanned_out(self, client_id: str, job_id: str, page: int | None, now: datetime) -> None:
        key = (client_id, job_id)
        job = self.jobs[key]
        changes: dict[str, Any] = {}
        markers = self.markers.setdefault(key, {})
        if page is not None and page not in markers:
            markers[page] = {"page": page, "at": now}
            changes["fanout_pages_done"] = int(job.get("fanout_pages_done", 0)) + 1
        if job.get("status", JobStatus.QUEUED.value) == JobStatus.QUEUED.value:
            changes["status"] = JobStatus.RUNNING.value
        if changes:
            self.update_job(client_id, job_id, {**changes, "updated_at": now})

    def page_given_up(self, client_id: str, job_id: str, page: int) -> bool:
        return bool(self.markers.get((client_id, job_id), {}).get(page, {}).get("given_up"))

    def give_up_page(self, client_id: str, job_id: str, page: int, failure: dict[str, Any]) -> None:
        marker = self.markers.setdefault((client_id, job_id), {}).setdefault(page, {})
        marker.update({"given_up": True, "failure": failure})

    def marked_pages(self, client_id: str, job_id: str) -> set[int]:
        return set(self.markers.get((client_id, job_id), {}))

    def count_fanout_requeue(self, client_id: str, job_id: str, created: int, now: datetime) -> None:
        requeues = int(self.jobs[(client_id, job_id)].get("fanout_requeues", 0)) + created
        self.update_job(client_id, job_id, {"updated_at": now, "fanout_requeues": requeues})

    # -- items --------------------------------------------------------------------------------------

    def read_item(self, client_id: str, job_id: str, index: int) -> StoredItem[I] | None:
        data = self.items.get((client_id, job_id), {}).get(index)
        if data is None:
            return None
        version = self.versions[self._item_key(client_id, job_id, index)]
        return StoredItem(client_id, job_id, self.kind.item_model.model_validate(data), version)

    def create_item(self, job: J, item: I, counts: dict[str, int] | None = None, shard: int = 0) -> bool:
        return self.create_items(job, [item], counts or {}, shard)

    def create_items(self, job: J, items: list[I], counts: dict[str, int], shard: int = 0) -> bool:
        key = (job.client_id, job.id)
        stored = self.items.setdefault(key, {})
        if any(item.index in stored for item in items):
            return False
        for item in items:
            stored[item.index] = item.model_dump(mode="python")
            self._bump(*self._item_key(*key, item.index))
        if counts:
            self._count(key, counts, shard)
        return True

    def commit_item(
        self, stored: StoredItem[I], changes: dict[str, Any], counts: dict[str, int] | None = None, shard: int = 0
    ) -> Any | None:
        key = (stored.client_id, stored.job_id)
        version_key = self._item_key(*key, stored.item.index)

        def commit() -> int:
            if self.versions.get(version_key) != stored.version:
                raise FailedPrecondition(f"item {stored.item.index} changed")
            self.items[key][stored.item.index].update(changes)
            version = self._bump(*version_key)
            if counts:
                self._count(key, counts, shard)
            self._answer("commit_item")
            return version

        def ours() -> int | None:
            data = self.items[key][stored.item.index]
            mine = data.get("delivery") == changes["delivery"] and data.get("status") == changes["status"]
            return self.versions[version_key] if mine else None

        return commit_once(commit, ours, f"write a {self.kind.noun} item")

    def update_item(self, stored: StoredItem[I], changes: dict[str, Any]) -> None:
        key = (stored.client_id, stored.job_id)
        version_key = self._item_key(*key, stored.item.index)
        if self.versions.get(version_key) != stored.version:
            raise StaleWrite(f"item {stored.item.index} changed")
        self.items[key][stored.item.index].update(changes)
        self._bump(*version_key)

    def item_moved(self, client_id: str, job_id: str, index: int, version: Any) -> bool:
        return self.versions.get(self._item_key(client_id, job_id, index)) != version

    def item_guard(self, client_id: str, job_id: str, index: int, version: Any, changes: dict[str, Any]) -> ItemGuard:
        return ItemGuard(self._item_key(client_id, job_id, index), version, changes)

    def existing_items(
        self, client_id: str, job_id: str, indexes: list[int], status: ItemStatus | None = None
    ) -> set[int]:
        stored = self.items.get((client_id, job_id), {})
        return {
            index
            for index in indexes
            if index in stored and (status is None or stored[index].get("status") == status.value)
        }

    def all_items(self, client_id: str, job_id: str) -> list[I]:
        stored = self.items.get((client_id, job_id), {})
        return [self.kind.item_model.model_validate(stored[index]) for index in sorted(stored)]

    def items_with_status(self, client_id: str, job_id: str, status: ItemStatus) -> list[I]:
        return [item for item in self.all_items(client_id, job_id) if item.status is status]

    def count_items(self, client_id: str, job_id: str, status: ItemStatus, limit: int | None = None) -> int:
        count = len(self.items_with_status(client_id, job_id, status))
        return min(count, limit) if limit is not None else count

    def list_items(self, client_id: str, job_id: str, query: ItemListQuery) -> Page[I]:
        items = self.all_items(client_id, job_id)
        if query.status:
            items = [item for item in items if item.status is query.status]
        if query.cursor:
            after = cursor_int(decode_cursor(query.cursor), "i")
            items = [item for item in items if item.index > after]
        docs = items[: query.limit + 1]
        cursor = None
        if len(docs) > query.limit:
            docs = docs[: query.limit]
            cursor = encode_cursor({"i": docs[-1].index})
        return Page(items=docs, next_cursor=cursor)

    def counter_totals(self, client_id: str, job_id: str) -> dict[str, int]:
        totals: dict[str, int] = {}
        for shard in self.counters.get((client_id, job_id), {}).values():
            for name, value in shard.items():
                totals[name] = totals.get(name, 0) + value
        return totals

    # -- the reaper's scans -------------------------------------------------------------------------

    def stale_items(self, status: ItemStatus, updated_before: datetime) -> Iterator[ItemRow[I]]:
        found = [
            (data["updated_at"], client_id, job_id, index)
            for (client_id, job_id), items in self.items.items()
            for index, data in items.items()
            if data.get("status") == status.value and data.get("updated_at") and data["updated_at"] < updated_before
        ]
        for _, client_id, job_id, index in sorted(found):
            data = self.items.get((client_id, job_id), {}).get(index)
            if data is not None:
                version = self.versions[self._item_key(client_id, job_id, index)]
                yield ItemRow(client_id, job_id, index, dict(data), version, self.kind.item_model)

    def unsettled_jobs(self, status: str, created_before: datetime, after: str | None) -> Iterator[JobRow[J]]:
        rows = sorted(
            (data["created_at"], f"{client_id}/{job_id}", client_id, data)
            for (client_id, job_id), data in self.jobs.items()
            if data.get("status") == status and data["created_at"] < created_before
        )
        positions = [position for _, position, _, _ in rows]
        start = positions.index(after) + 1 if after in positions else 0
        for _, position, client_id, data in rows[start:]:
            yield JobRow(client_id, position, bool(data.get("settled")), dict(data), self.kind.job_model)

    def reaper_cursor(self) -> ReaperCursor | None:
        if not self.cursor:
            return None
        return ReaperCursor(status=str(self.cursor.get("status") or ""), position=str(self.cursor.get("path") or ""))

    def save_reaper_cursor(self, cursor: ReaperCursor, now: datetime) -> None:
        self.cursor = {"status": cursor.status, "path": cursor.position, "at": now}

    def clear_reaper_cursor(self) -> None:
        self.cursor = None
