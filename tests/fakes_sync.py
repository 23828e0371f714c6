"""In-memory sync-back repository and store gallery: real subclasses of the ports, for unit tests."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from shared.catalog.ports import StaleWrite, Versioned
from shared.pagination import Page, decode_cursor, encode_cursor
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


class InMemorySyncRepository(SyncRepository):
    def __init__(self) -> None:
        self.records: dict[tuple[str, str], tuple[SyncRecordDoc, int]] = {}
        self.snapshots: dict[tuple[str, str], ProductSnapshotDoc] = {}
        self.summaries: dict[tuple[str, str], tuple[ProductSyncDoc, int]] = {}
        self.entries: dict[str, list[HistoryDoc]] = {}
        self.sync_settings: dict[str, SyncSettingsDoc] = {}

    def load_record(self, client_id: str, record_id: str) -> Versioned[SyncRecordDoc] | None:
        found = self.records.get((client_id, record_id))
        return Versioned(found[0], found[1]) if found else None

    def save_record(self, record: SyncRecordDoc, version: Any | None, history: Sequence[HistoryDoc] = ()) -> Any:
        key = (record.client_id, record.id)
        current = self.records.get(key)
        if (version is None and current is not None) or (
            version is not None and (current is None or current[1] != version)
        ):
            raise StaleWrite()
        new_version = next(_versions)
        self.records[key] = (SyncRecordDoc.model_validate(record.model_dump()), new_version)
        self.entries.setdefault(record.client_id, []).extend(history)
        return new_version

    def _of(self, client_id: str) -> list[SyncRecordDoc]:
        return [doc for (c, _), (doc, _) in sorted(self.records.items()) if c == client_id]

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
        return self.snapshots.get((client_id, snapshot_id))

    def keep_snapshot(self, client_id: str, snapshot: ProductSnapshotDoc) -> ProductSnapshotDoc:
        return self.snapshots.setdefault((client_id, f"{snapshot.platform}_{snapshot.store_product_id}"), snapshot)

    def product_summary(self, client_id: str, product_id: str) -> Versioned[ProductSyncDoc] | None:
        found = self.summaries.get((client_id, product_id))
        return Versioned(found[0], found[1]) if found else None

    def save_product_summary(self, client_id: str, summary: ProductSyncDoc, version: Any | None) -> None:
        key = (client_id, summary.product_id)
        current = self.summaries.get(key)
        if (version is None and current is not None) or (
            version is not None and (current is None or current[1] != version)
        ):
            raise StaleWrite()
        self.summaries[key] = (summary, next(_versions))

    def list_products(self, client_id: str, query: ProductSyncQuery) -> Page[ProductSyncDoc]:
        token = max(query.q.lower().split(), key=len) if query.q else None
        rows = [
            doc
            for (c, _), (doc, _) in sorted(self.summaries.items())
            if c == client_id
            and (query.state is None or doc.state == query.state)
            and (token is None or token in doc.search_tokens)
        ]
        return _by_id(rows, lambda d: d.product_id, query.cursor, query.limit)

    def add_history(self, client_id: str, entries: Sequence[HistoryDoc]) -> None:
        self.entries.setdefault(client_id, []).extend(entries)

    def history(
        self,
        client_id: str,
        *,
        product_id: str | None,
        action: SyncAction | None,
        cursor: str | None,
        limit: int,
    ) -> Page[HistoryDoc]:
        rows = sorted(self.entries.get(client_id, []), key=lambda e: (e.at, e.id), reverse=True)
        rows = [
            e
            for e in rows
            if (product_id is None or e.product_id == product_id) and (action is None or e.action is action)
        ]
        start = int(decode_cursor(cursor)["n"]) if cursor else 0
        page = rows[start : start + limit]
        more = start + limit < len(rows)
        return Page[HistoryDoc](items=page, next_cursor=encode_cursor({"n": start + limit}) if more else None)

    def settings(self, client_id: str) -> SyncSettingsDoc:
        return self.sync_settings.get(client_id, SyncSettingsDoc())

    def save_settings(self, client_id: str, settings: SyncSettingsDoc) -> None:
        self.sync_settings[client_id] = settings


def _by_id(rows: list[Any], key: Any, cursor: str | None, limit: int) -> Page[Any]:
    after = decode_cursor(cursor)["id"] if cursor else None
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
