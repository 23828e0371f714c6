"""In-memory sync-back repository and store gallery: real subclasses of the ports, for unit tests."""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel

from shared.catalog.ports import StaleWrite, Versioned
from shared.catalog.products import search_tokens
from shared.pagination import InvalidCursor, Page, cursor_datetime, cursor_str, decode_cursor, encode_cursor
from shared.stores.models import StoreConnectionDoc
from shared.stores.ports import (
    MediaState,
    StoreAuthorizationLost,
    StoreImage,
    StoreImageRejected,
    StoreMedia,
    StoreProductGone,
    StoreUnavailable,
)
from shared.sync.gallery import Gallery, StoreAccess
from shared.sync.models import (
    HistoryDoc,
    ProductSnapshotDoc,
    ProductSyncDoc,
    ProductSyncQuery,
    RecordListQuery,
    SyncAction,
    SyncRecordDoc,
    SyncSettingsDoc,
)
from shared.sync.repository import SyncRepository

_versions = itertools.count(1)
M = TypeVar("M", bound=BaseModel)
_RESERVED_ID = re.compile(r"__.*__", re.DOTALL)


def _utc(value: Any) -> Any:
    """A stored value as Firestore gives it back: every instant in UTC (a naive one taken as UTC)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, dict):
        return {k: _utc(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_utc(v) for v in value]
    return value


def _stored(doc: M) -> M:
    """A copy of ``doc`` as written and read back: the caller's object never aliases the store."""
    return type(doc).model_validate(_utc(doc.model_dump(mode="python")))


def _cursor_id(values: Mapping[str, Any]) -> str:
    """The id a cursor continues after, refused (400) where the Firestore adapter refuses it: the id
    names a document there, so a path, ``.``/``..`` or a reserved ``__…__`` id is no cursor of ours."""
    last = cursor_str(values, "id")
    if "/" in last or last in (".", "..") or _RESERVED_ID.fullmatch(last):
        raise InvalidCursor()
    return last


class InMemorySyncRepository(SyncRepository):
    """Behaves as :class:`~shared.adapters.firestore.sync.FirestoreSyncRepository` on the emulator
    (tests/integration/test_sync_repository.py runs one contract on both)."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], tuple[SyncRecordDoc, int]] = {}
        self.snapshots: dict[tuple[str, str], ProductSnapshotDoc] = {}
        self.summaries: dict[tuple[str, str], tuple[ProductSyncDoc, int]] = {}
        # Per client, by entry id: an entry written again replaces the first (Firestore's set).
        self.history_by_id: dict[str, dict[str, HistoryDoc]] = {}
        self.sync_settings: dict[str, SyncSettingsDoc] = {}

    @property
    def entries(self) -> dict[str, list[HistoryDoc]]:
        """Each client's history entries in the order first written (what tests inspect)."""
        return {client: list(by_id.values()) for client, by_id in self.history_by_id.items()}

    def load_record(self, client_id: str, record_id: str) -> Versioned[SyncRecordDoc] | None:
        found = self.records.get((client_id, record_id))
        return Versioned(found[0].model_copy(deep=True), found[1]) if found else None

    def save_record(self, record: SyncRecordDoc, version: Any | None, history: Sequence[HistoryDoc] = ()) -> Any:
        key = (record.client_id, record.id)
        current = self.records.get(key)
        if (version is None and current is not None) or (
            version is not None and (current is None or current[1] != version)
        ):
            raise StaleWrite()
        new_version = next(_versions)
        self.records[key] = (_stored(record), new_version)
        self.add_history(record.client_id, history)
        return new_version

    def _of(self, client_id: str) -> list[SyncRecordDoc]:
        return [doc.model_copy(deep=True) for (c, _), (doc, _) in sorted(self.records.items()) if c == client_id]

    def records_of_product(self, client_id: str, platform: str, store_product_id: str) -> list[SyncRecordDoc]:
        return [r for r in self._of(client_id) if r.platform == platform and r.store_product_id == store_product_id]

    def records_of_assets(self, client_id: str, asset_ids: Sequence[str]) -> list[SyncRecordDoc]:
        wanted = set(asset_ids[:30])
        return [r for r in self._of(client_id) if r.asset_id in wanted]

    def list_records(self, client_id: str, query: RecordListQuery) -> Page[SyncRecordDoc]:
        rows = [
            r
            for r in self._of(client_id)
            if (query.product_id is None or r.product_id == query.product_id)
            and (query.asset_id is None or r.asset_id == query.asset_id)
            and (query.status is None or r.status is query.status)
        ]
        return _by_id(rows, lambda r: r.id, query.cursor, query.limit)

    def snapshot(self, client_id: str, snapshot_id: str) -> ProductSnapshotDoc | None:
        found = self.snapshots.get((client_id, snapshot_id))
        return found.model_copy(deep=True) if found else None

    def keep_snapshot(self, client_id: str, snapshot: ProductSnapshotDoc) -> ProductSnapshotDoc:
        key = (client_id, f"{snapshot.platform}_{snapshot.store_product_id}")
        if key in self.snapshots:
            return self.snapshots[key].model_copy(deep=True)
        self.snapshots[key] = _stored(snapshot)
        return snapshot  # as the adapter: the one given, when it is the one kept

    def product_summary(self, client_id: str, product_id: str) -> Versioned[ProductSyncDoc] | None:
        found = self.summaries.get((client_id, product_id))
        return Versioned(found[0].model_copy(deep=True), found[1]) if found else None

    def save_product_summary(self, client_id: str, summary: ProductSyncDoc, version: Any | None) -> None:
        key = (client_id, summary.product_id)
        current = self.summaries.get(key)
        if (version is None and current is not None) or (
            version is not None and (current is None or current[1] != version)
        ):
            raise StaleWrite()
        self.summaries[key] = (_stored(summary), next(_versions))

    def list_products(self, client_id: str, query: ProductSyncQuery) -> Page[ProductSyncDoc]:
        token: str | None = None
        if query.q is not None:
            # The adapter's token: the longest word of the search, as the product's search tokens cut it.
            tokens = search_tokens(query.q, None)
            if not tokens:
                return Page[ProductSyncDoc](items=[])
            token = max(tokens, key=len)
        rows = [
            doc.model_copy(deep=True)
            for (c, _), (doc, _) in sorted(self.summaries.items())
            if c == client_id
            and (query.state is None or doc.state == query.state)
            and (token is None or token in doc.search_tokens)
        ]
        return _by_id(rows, lambda d: d.product_id, query.cursor, query.limit)

    def add_history(self, client_id: str, entries: Sequence[HistoryDoc]) -> None:
        mine = self.history_by_id.setdefault(client_id, {})
        for entry in entries:
            mine[entry.id] = _stored(entry)

    def history(
        self,
        client_id: str,
        *,
        product_id: str | None,
        action: SyncAction | None,
        cursor: str | None,
        limit: int,
    ) -> Page[HistoryDoc]:
        # Newest first by (at, id), continued after the last entry's (at, id) as the adapter's cursor.
        rows = sorted(self.history_by_id.get(client_id, {}).values(), key=lambda e: (e.at, e.id), reverse=True)
        rows = [
            e
            for e in rows
            if (product_id is None or e.product_id == product_id) and (action is None or e.action is action)
        ]
        if cursor is not None:
            values = decode_cursor(cursor)
            after = (cursor_datetime(values, "at"), _cursor_id(values))
            rows = [e for e in rows if (e.at, e.id) < after]
        page = [e.model_copy(deep=True) for e in rows[:limit]]
        more = len(rows) > limit
        next_cursor = encode_cursor({"at": page[-1].at.isoformat(), "id": page[-1].id}) if more else None
        return Page[HistoryDoc](items=page, next_cursor=next_cursor)

    def settings(self, client_id: str) -> SyncSettingsDoc:
        found = self.sync_settings.get(client_id)
        return found.model_copy(deep=True) if found else SyncSettingsDoc()

    def save_settings(self, client_id: str, settings: SyncSettingsDoc) -> None:
        self.sync_settings[client_id] = _stored(settings)


def _by_id(rows: list[Any], key: Any, cursor: str | None, limit: int) -> Page[Any]:
    after = _cursor_id(decode_cursor(cursor)) if cursor is not None else None
    rows = [r for r in rows if after is None or key(r) > after]
    page = rows[:limit]
    more = len(rows) > limit
    return Page[Any](items=page, next_cursor=encode_cursor({"id": key(page[-1])}) if more else None)


class FakeGallery(Gallery):
    """A store's galleries in memory: ``processing_reads`` state reads a pushed image stays PROCESSING,
    ``fail_next`` makes the next pushed image FAILED with that code, ``gone`` products raise
    StoreProductGone, ``revoked`` raises StoreAuthorizationLost (as the adapters do), ``unavailable`` N
    calls raise StoreUnavailable. Every call is recorded in ``calls``."""

    def __init__(self, access: StoreAccess, connection: StoreConnectionDoc, *, async_media: bool = True) -> None:
        super().__init__(access, connection)
        self.galleries: dict[str, list[StoreImage]] = {}
        self.states_of: dict[str, StoreMedia] = {}
        self.reads: dict[str, int] = {}
        self.processing_reads = 0
        self.fail_next: str | None = None
        self.reject_next: str | None = None
        self.lose_next_push_answer = False
        self.gone: set[str] = set()
        self.revoked = False
        self.unavailable = 0
        self.async_media = async_media
        self.calls: list[tuple[str, str]] = []
        self._ids = itertools.count(9000)

    @property
    def processes_later(self) -> bool:
        return self.async_media

    def product(self, product_id: str, *images: tuple[str, str]) -> None:
        """A store product with the merchant's images (media id, url)."""
        self.galleries[product_id] = [
            StoreImage(media_id=m, url=u, alt=f"merchant {m}", position=i) for i, (m, u) in enumerate(images)
        ]

    def ids(self, product_id: str) -> list[str]:
        return [image.media_id for image in self.galleries[product_id]]

    def _enter(self, name: str, product_id: str) -> list[StoreImage]:
        self.calls.append((name, product_id))
        if self.revoked:
            with self._watching():
                raise StoreAuthorizationLost("revoked")
        if self.unavailable:
            self.unavailable -= 1
            raise StoreUnavailable("503 from the store", retry_after=3)
        if product_id in self.gone or product_id not in self.galleries:
            raise StoreProductGone(f"No product {product_id}")
        return self.galleries[product_id]

    def _renumber(self, product_id: str, images: list[StoreImage]) -> None:
        self.galleries[product_id] = [image.model_copy(update={"position": i}) for i, image in enumerate(images)]

    def images(self, product_id: str) -> list[StoreImage]:
        return list(self._enter("images", product_id))

    def push(self, product_id: str, *, source_url: str, name: str, alt: str, position: int | None) -> StoreMedia:
        current = list(self._enter("push", product_id))
        if self.reject_next:
            code, self.reject_next = self.reject_next, None
            raise StoreImageRejected(f"the store refused the image: {code}")
        media_id = str(next(self._ids))
        image = StoreImage(media_id=media_id, url=f"https://cdn.example/{name}", alt=alt, position=len(current))
        at = len(current) if position is None or self.async_media else position
        current.insert(at, image)
        self._renumber(product_id, current)
        state = MediaState.UPLOADED if self.async_media else MediaState.READY
        media = StoreMedia(media_id=media_id, state=state, url=image.url, alt=alt)
        if self.fail_next:
            media = media.model_copy(update={"error_code": self.fail_next})
            self.fail_next = None
        self.states_of[media_id] = media
        self.reads[media_id] = 0
        if self.lose_next_push_answer:
            self.lose_next_push_answer = False
            raise StoreUnavailable("the answer was lost", retry_after=1)
        return media

    def states(self, product_id: str, media_ids: Sequence[str]) -> dict[str, StoreMedia]:
        present = {image.media_id for image in self._enter("states", product_id)}
        found: dict[str, StoreMedia] = {}
        for media_id in media_ids:
            media = self.states_of.get(media_id)
            if media is None or media_id not in present:
                continue
            self.reads[media_id] += 1
            if media.state in (MediaState.UPLOADED, MediaState.PROCESSING):
                if self.reads[media_id] > self.processing_reads:
                    failed = media.error_code is not None
                    media = media.model_copy(update={"state": MediaState.FAILED if failed else MediaState.READY})
                else:
                    media = media.model_copy(update={"state": MediaState.PROCESSING})
                self.states_of[media_id] = media
            found[media_id] = media
        return found

    def place(self, product_id: str, media_id: str, position: int) -> None:
        current = list(self._enter("place", product_id))
        moving = next(image for image in current if image.media_id == media_id)
        current.remove(moving)
        current.insert(position, moving)
        self._renumber(product_id, current)

    def remove(self, product_id: str, media_ids: Sequence[str]) -> None:
        if not media_ids:
            return
        gone = set(media_ids)
        current = self._enter("remove", product_id)
        self._renumber(product_id, [image for image in current if image.media_id not in gone])

    def arrange(self, product_id: str, order: Sequence[str]) -> None:
        current = list(self._enter("arrange", product_id))
        first = [image for m in order for image in current if image.media_id == m]
        self._renumber(product_id, first + [image for image in current if image not in first])
