"""The sync-back repository port: synced-image records, snapshots, per-product counts, history, settings."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

from shared.catalog.ports import Versioned
from shared.pagination import Page
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


class SyncRepository(ABC):
    """``clients/{client}/synced_images``, ``store_snapshots``, ``sync_products``, ``sync_history`` and
    ``settings/sync``."""

    # -- records ----------------------------------------------------------------------------------

    @abstractmethod
    def load_record(self, client_id: str, record_id: str) -> Versioned[SyncRecordDoc] | None: ...

    @abstractmethod
    def save_record(self, record: SyncRecordDoc, version: Any | None, history: Sequence[HistoryDoc] = ()) -> Any:
        """Create (``version`` None) or update the record over ``version``, with its history entries, in
        one commit; returns the new version. :class:`~shared.catalog.ports.StaleWrite` when the record
        appeared or changed since it was read (nothing written)."""

    @abstractmethod
    def records_of_product(self, client_id: str, platform: str, store_product_id: str) -> list[SyncRecordDoc]:
        """Every record on one store product."""

    @abstractmethod
    def records_of_assets(self, client_id: str, asset_ids: Sequence[str]) -> list[SyncRecordDoc]:
        """Every record of these assets (at most 30 ids a call)."""

    @abstractmethod
    def list_records(self, client_id: str, query: RecordListQuery) -> Page[SyncRecordDoc]:
        """Most recently changed first."""

    # -- snapshots --------------------------------------------------------------------------------

    @abstractmethod
    def snapshot(self, client_id: str, snapshot_id: str) -> ProductSnapshotDoc | None: ...

    @abstractmethod
    def keep_snapshot(self, client_id: str, snapshot: ProductSnapshotDoc) -> ProductSnapshotDoc:
        """Store the snapshot unless one exists (the first one is the original): the stored one."""

    # -- per-product counts -----------------------------------------------------------------------

    @abstractmethod
    def product_summary(self, client_id: str, product_id: str) -> Versioned[ProductSyncDoc] | None: ...

    @abstractmethod
    def save_product_summary(self, client_id: str, summary: ProductSyncDoc, version: Any | None) -> None:
        """Write the counts over ``version`` (None: it must not exist); StaleWrite when it moved."""

    @abstractmethod
    def list_products(self, client_id: str, query: ProductSyncQuery) -> Page[ProductSyncDoc]:
        """By product id, filtered by ``state`` and the search token ``q``."""

    # -- history ----------------------------------------------------------------------------------

    @abstractmethod
    def add_history(self, client_id: str, entries: Sequence[HistoryDoc]) -> None: ...

    @abstractmethod
    def history(
        self,
        client_id: str,
        *,
        product_id: str | None,
        action: SyncAction | None,
        cursor: str | None,
        limit: int,
    ) -> Page[HistoryDoc]:
        """Newest first."""

    def all_history(self, client_id: str, *, product_id: str | None, action: SyncAction | None) -> Iterator[HistoryDoc]:
        """Every entry, newest first, page by page (for the CSV export)."""
        cursor: str | None = None
        while True:
            page = self.history(client_id, product_id=product_id, action=action, cursor=cursor, limit=500)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    # -- settings ---------------------------------------------------------------------------------

    @abstractmethod
    def settings(self, client_id: str) -> SyncSettingsDoc: ...

    @abstractmethod
    def save_settings(self, client_id: str, settings: SyncSettingsDoc) -> None: ...
