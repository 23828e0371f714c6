"""Sync-back's documents on Firestore (see :mod:`shared.sync.models` for the paths).

Record writes are guarded by the document's ``update_time`` (or created only if absent) and carry their
history entries in the same batch, so a record and what the history says of it never disagree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from shared.catalog.ports import StaleWrite, Versioned
from shared.pagination import InvalidCursor, Page, cursor_datetime, cursor_str, decode_cursor, encode_cursor
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

if TYPE_CHECKING:
    from google.cloud.firestore import Client

RECORDS = "synced_images"
SNAPSHOTS = "store_snapshots"
PRODUCTS = "sync_products"
HISTORY = "sync_history"


class FirestoreSyncRepository(SyncRepository):
    def __init__(self, db: Client) -> None:
        self.db = db

    def _client(self, client_id: str) -> Any:
        return self.db.collection("clients").document(client_id)

    def _records(self, client_id: str) -> Any:
        return self._client(client_id).collection(RECORDS)

    # -- records ----------------------------------------------------------------------------------

    def load_record(self, client_id: str, record_id: str) -> Versioned[SyncRecordDoc] | None:
        snapshot = self._records(client_id).document(record_id).get()
        if not snapshot.exists:
            return None
        return Versioned(SyncRecordDoc.model_validate(snapshot.to_dict()), snapshot.update_time)

    def save_record(self, record: SyncRecordDoc, version: Any | None, history: Sequence[HistoryDoc] = ()) -> Any:
        from google.api_core.exceptions import Aborted, AlreadyExists, Conflict, FailedPrecondition
        from google.api_core.exceptions import NotFound as GNotFound

        ref = self._records(record.client_id).document(record.id)
        batch = self.db.batch()
        data = record.model_dump(mode="python")
        if version is None:
            batch.create(ref, data)
        else:
            batch.update(ref, data, option=self.db.write_option(last_update_time=version))
        for entry in history:
            batch.set(
                self._client(record.client_id).collection(HISTORY).document(entry.id), entry.model_dump(mode="python")
            )
        try:
            results = batch.commit()
        except (AlreadyExists, Conflict, FailedPrecondition, GNotFound, Aborted) as exc:
            raise StaleWrite() from exc
        return results[0].update_time

    def records_of_product(self, client_id: str, platform: str, store_product_id: str) -> list[SyncRecordDoc]:
        query = (
            self._records(client_id)
            .where(filter=_field("platform", "==", platform))
            .where(filter=_field("store_product_id", "==", store_product_id))
        )
        return [SyncRecordDoc.model_validate(s.to_dict()) for s in query.stream()]

    def records_of_assets(self, client_id: str, asset_ids: Sequence[str]) -> list[SyncRecordDoc]:
        if not asset_ids:
            return []
        query = self._records(client_id).where(filter=_field("asset_id", "in", list(asset_ids)[:30]))
        return [SyncRecordDoc.model_validate(s.to_dict()) for s in query.stream()]

    def list_records(self, client_id: str, query: RecordListQuery) -> Page[SyncRecordDoc]:
        q = self._records(client_id)
        if query.product_id is not None:
            q = q.where(filter=_field("product_id", "==", query.product_id))
        if query.asset_id is not None:
            q = q.where(filter=_field("asset_id", "==", query.asset_id))
        if query.status is not None:
            q = q.where(filter=_field("status", "==", query.status.value))
        docs = _page_by_id(self._records(client_id), q, query.cursor, query.limit)
        items = [SyncRecordDoc.model_validate(s.to_dict()) for s in docs[: query.limit]]
        return Page[SyncRecordDoc](items=items, next_cursor=_id_cursor(docs, query.limit))

    # -- snapshots --------------------------------------------------------------------------------

    def snapshot(self, client_id: str, snapshot_id: str) -> ProductSnapshotDoc | None:
        found = self._client(client_id).collection(SNAPSHOTS).document(snapshot_id).get()
        return ProductSnapshotDoc.model_validate(found.to_dict()) if found.exists else None

    def keep_snapshot(self, client_id: str, snapshot: ProductSnapshotDoc) -> ProductSnapshotDoc:
        from google.api_core.exceptions import AlreadyExists, Conflict

        sid = f"{snapshot.platform}_{snapshot.store_product_id}"
        ref = self._client(client_id).collection(SNAPSHOTS).document(sid)
        try:
            ref.create(snapshot.model_dump(mode="python"))
        except (AlreadyExists, Conflict):
            stored = ref.get()
            return ProductSnapshotDoc.model_validate(stored.to_dict())
        return snapshot

    # -- per-product counts -----------------------------------------------------------------------

    def product_summary(self, client_id: str, product_id: str) -> Versioned[ProductSyncDoc] | None:
        found = self._client(client_id).collection(PRODUCTS).document(product_id).get()
        if not found.exists:
            return None
        return Versioned(ProductSyncDoc.model_validate(found.to_dict()), found.update_time)

    def save_product_summary(self, client_id: str, summary: ProductSyncDoc, version: Any | None) -> None:
        from google.api_core.exceptions import Aborted, AlreadyExists, Conflict, FailedPrecondition
        from google.api_core.exceptions import NotFound as GNotFound

        ref = self._client(client_id).collection(PRODUCTS).document(summary.product_id)
        data = summary.model_dump(mode="python")
        try:
            if version is None:
                ref.create(data)
            else:
                ref.update(data, option=self.db.write_option(last_update_time=version))
        except (AlreadyExists, Conflict, FailedPrecondition, GNotFound, Aborted) as exc:
            raise StaleWrite() from exc

    def list_products(self, client_id: str, query: ProductSyncQuery) -> Page[ProductSyncDoc]:
        from shared.catalog.products import search_tokens

        q = self._client(client_id).collection(PRODUCTS)
        if query.state is not None:
            q = q.where(filter=_field("state", "==", query.state))
        if query.q is not None:
            tokens = search_tokens(query.q, None)
            if not tokens:
                return Page[ProductSyncDoc](items=[])
            # The longest word of the search (every product carries every prefix of its words).
            q = q.where(filter=_field("search_tokens", "array_contains", max(tokens, key=len)))
        docs = _page_by_id(self._client(client_id).collection(PRODUCTS), q, query.cursor, query.limit)
        items = [ProductSyncDoc.model_validate(s.to_dict()) for s in docs[: query.limit]]
        return Page[ProductSyncDoc](items=items, next_cursor=_id_cursor(docs, query.limit))

    # -- history ----------------------------------------------------------------------------------

    def add_history(self, client_id: str, entries: Sequence[HistoryDoc]) -> None:
        batch = self.db.batch()
        for entry in entries:
            batch.set(self._client(client_id).collection(HISTORY).document(entry.id), entry.model_dump(mode="python"))
        batch.commit()

    def history(
        self,
        client_id: str,
        *,
        product_id: str | None,
        action: SyncAction | None,
        cursor: str | None,
        limit: int,
    ) -> Page[HistoryDoc]:
        from google.cloud import firestore

        q = self._client(client_id).collection(HISTORY)
        if product_id is not None:
            q = q.where(filter=_field("product_id", "==", product_id))
        if action is not None:
            q = q.where(filter=_field("action", "==", action.value))
        q = q.order_by("at", direction=firestore.Query.DESCENDING).order_by(
            "__name__", direction=firestore.Query.DESCENDING
        )
        if cursor is not None:
            values = decode_cursor(cursor)
            at = cursor_datetime(values, "at")
            last = cursor_document_id(values)
            q = q.start_after({"at": at, "__name__": self._client(client_id).collection(HISTORY).document(last)})
        docs = list(q.limit(limit + 1).stream())
        items = [HistoryDoc.model_validate(s.to_dict()) for s in docs[:limit]]
        next_cursor = None
        if len(docs) > limit:
            tail = items[-1]
            next_cursor = encode_cursor({"at": tail.at.isoformat(), "id": tail.id})
        return Page[HistoryDoc](items=items, next_cursor=next_cursor)

    # -- settings ---------------------------------------------------------------------------------

    def settings(self, client_id: str) -> SyncSettingsDoc:
        found = self._client(client_id).collection("settings").document("sync").get()
        return SyncSettingsDoc.model_validate(found.to_dict()) if found.exists else SyncSettingsDoc()

    def save_settings(self, client_id: str, settings: SyncSettingsDoc) -> None:
        self._client(client_id).collection("settings").document("sync").set(settings.model_dump(mode="python"))


# Document ids Firestore reserves: a cursor naming one fails the query itself (a 500, not a 400).
_RESERVED_ID = re.compile(r"__.*__", re.DOTALL)


def cursor_document_id(values: Mapping[str, Any]) -> str:
    """The document id under ``id`` of a decoded cursor, used as a path: one Firestore can name (not a
    path of several segments, not ``.``/``..`` or a reserved ``__…__`` id); anything else is a 400."""
    last = cursor_str(values, "id")
    if "/" in last or last in (".", "..") or _RESERVED_ID.fullmatch(last):
        raise InvalidCursor()
    return last


def _page_by_id(collection: Any, query: Any, cursor: str | None, limit: int) -> list[Any]:
    q = query.order_by("__name__")
    if cursor is not None:
        q = q.start_after({"__name__": collection.document(cursor_document_id(decode_cursor(cursor)))})
    return list(q.limit(limit + 1).stream())


def _id_cursor(docs: list[Any], limit: int) -> str | None:
    if len(docs) <= limit:
        return None
    return encode_cursor({"id": docs[limit - 1].id})


def _field(path: str, op: str, value: Any) -> Any:
    """A field filter, passed by keyword (positional ``where`` arguments are deprecated and warn)."""
    from google.cloud.firestore import FieldFilter

    return FieldFilter(path, op, value)
