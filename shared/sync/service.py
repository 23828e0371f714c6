"""Sync-back's use cases besides pushing: remove our images, restore a product's original gallery, the
per-product status, the history (and its CSV), the settings, and what follows store webhooks and
approvals (auto-sync)."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime

from shared import logging as log
from shared.catalog.models import AssetKind
from shared.catalog.ports import AssetFilter, CatalogRepositories, StaleWrite
from shared.catalog.store_link import StoreLinkStatus
from shared.errors import Conflict, EpoxError, NotFound, UpstreamUnavailable
from shared.ids import new_id
from shared.pagination import Page
from shared.stores.connections import StoreNeedsReauthorization, StoreNotConnected, live_connection
from shared.stores.mirror import StoreProductWatcher
from shared.stores.models import StoreConnectionDoc
from shared.stores.repository import StoreRepository
from shared.sync.auto import AutoSyncTask
from shared.sync.gallery import Gallery
from shared.sync.models import (
    HistoryDoc,
    HistoryOut,
    ProductSyncOut,
    ProductSyncQuery,
    RecordListQuery,
    RecordStatus,
    RestoreOut,
    SyncAction,
    SyncRecordDoc,
    SyncRecordOut,
    SyncRequest,
    SyncSettingsDoc,
    SyncSettingsOut,
    SyncSettingsUpdate,
    snapshot_id,
)
from shared.sync.push import forget_pushed, history_entry, refresh_product
from shared.sync.repository import SyncRepository

logger = log.get_logger("epox.sync")

LIVE = frozenset({RecordStatus.SYNCED, RecordStatus.PROCESSING})  # records with an image in the store


class NothingToRestore(Conflict):
    code = "nothing_to_restore"
    title = "Nothing was pushed to this product's store product"


# -- reads ---------------------------------------------------------------------------------------------


def record_out(record: SyncRecordDoc) -> SyncRecordOut:
    return SyncRecordOut(
        id=record.id,
        asset_id=record.asset_id,
        product_id=record.product_id,
        platform=record.platform,
        store_product_id=record.store_product_id,
        status=record.status,
        reason=record.reason,
        error_code=record.error_code,
        media_id=record.media_id,
        url=record.url,
        position=record.position,
        revision=record.revision,
        converted=record.converted,
        synced_at=record.synced_at,
        synced_by=record.synced_by,
        updated_at=record.updated_at,
    )


def list_records(repo: SyncRepository, client_id: str, query: RecordListQuery) -> Page[SyncRecordOut]:
    page = repo.list_records(client_id, query)
    return Page[SyncRecordOut](items=[record_out(r) for r in page.items], next_cursor=page.next_cursor)


def product_status(
    repo: SyncRepository, catalog: CatalogRepositories, client_id: str, query: ProductSyncQuery
) -> Page[ProductSyncOut]:
    """The store-management page: each synced-to product's counts (generated and approved images are
    counted from the library at read time; pushed ones from the records)."""
    page = repo.list_products(client_id, query)
    rows = []
    for summary in page.items:
        generated = approved = 0
        after = None
        while True:
            assets = catalog.assets.scan(client_id, AssetFilter(product_id=summary.product_id), after, 300)
            for asset in assets:
                generated += asset.kind in (AssetKind.GENERATED, AssetKind.EDITED)
                approved += asset.approved
            if len(assets) < 300:
                break
            after = (assets[-1].created_at, assets[-1].id)
        rows.append(
            ProductSyncOut(
                product_id=summary.product_id,
                name=summary.name,
                store_product_id=summary.store_product_id,
                generated=generated,
                approved=approved,
                synced=summary.synced,
                pending=summary.pending,
                failed=summary.failed,
                removed=summary.removed,
                state=summary.state,
                last_synced_at=summary.last_synced_at,
            )
        )
    return Page[ProductSyncOut](items=rows, next_cursor=page.next_cursor)


def history_out(entry: HistoryDoc) -> HistoryOut:
    return HistoryOut(
        id=entry.id,
        at=entry.at,
        action=entry.action,
        asset_id=entry.asset_id,
        product_id=entry.product_id,
        store_product_id=entry.store_product_id,
        platform=entry.platform,
        revision=entry.revision,
        media_id=entry.media_id,
        result=entry.result,
        job_id=entry.job_id,
    )


HISTORY_COLUMNS = (
    "at",
    "action",
    "result",
    "asset_id",
    "product_id",
    "platform",
    "store_product_id",
    "media_id",
    "revision",
    "job_id",
)


def history_csv(entries: Iterator[HistoryDoc]) -> Iterator[str]:
    """The history as CSV, one line at a time (streamed: memory stays flat). Cells that a spreadsheet
    would run as a formula are quoted with a leading apostrophe."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def line(values: Sequence[object]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow([_cell(v) for v in values])
        return buffer.getvalue()

    yield line(HISTORY_COLUMNS)
    for e in entries:
        yield line(
            (
                e.at.isoformat(),
                e.action.value,
                e.result,
                e.asset_id or "",
                e.product_id or "",
                e.platform,
                e.store_product_id,
                e.media_id or "",
                "" if e.revision is None else e.revision,
                e.job_id or "",
            )
        )


def _cell(value: object) -> str:
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


# -- settings ------------------------------------------------------------------------------------------


def settings_out(doc: SyncSettingsDoc) -> SyncSettingsOut:
    return SyncSettingsOut(auto_sync=doc.auto_sync, placement=doc.placement)


def update_settings(
    repo: SyncRepository, client_id: str, update: SyncSettingsUpdate, user_id: str, now: datetime
) -> SyncSettingsOut:
    current = repo.settings(client_id)
    changes = update.model_dump(exclude_none=True)
    doc = current.model_copy(update={**changes, "updated_at": now, "updated_by": user_id})
    repo.save_settings(client_id, doc)
    return settings_out(doc)


# -- remove and restore --------------------------------------------------------------------------------


def remove_assets(
    repo: SyncRepository,
    catalog: CatalogRepositories,
    galleries: Callable[[StoreConnectionDoc], Gallery],
    connection: StoreConnectionDoc,
    client_id: str,
    asset_ids: Sequence[str],
    by: str,
    now: datetime,
) -> list[SyncRecordOut]:
    """Take our images of these assets off their store products. Only media we pushed (named by our
    records) are ever removed, never one of the merchant's own images (the snapshot's)."""
    found = catalog.assets.existing(client_id, asset_ids)
    missing = [a for a in asset_ids if a not in found]
    if missing:
        raise NotFound(f"No asset {missing[0]}")
    gallery = galleries(connection)
    removed: list[SyncRecordOut] = []
    records = [
        r
        for start in range(0, len(asset_ids), 30)
        for r in repo.records_of_assets(client_id, list(asset_ids[start : start + 30]))
        if r.platform == connection.platform.value and r.shop == connection.shop and r.status in LIVE and r.media_id
    ]
    for record in records:
        assert record.media_id is not None
        snapshot = repo.snapshot(client_id, snapshot_id(record.platform, record.store_product_id))
        merchant = {image.media_id for image in snapshot.images} if snapshot else set()
        if record.media_id in merchant:  # never: our records name our media; kept as a last guard
            logger.error("record %s names the merchant's media %s: not removed", record.id, record.media_id)
            continue
        gallery.remove(record.store_product_id, [record.media_id])
        done = _mark(repo, record, RecordStatus.REMOVED, now, f"removed by {by}", SyncAction.REMOVED, by)
        if done is not None:
            forget_pushed(catalog, client_id, record.product_id, [record.media_id])
            refresh_product(repo, catalog, client_id, record.product_id, now)
            removed.append(record_out(done))
    return removed


def restore_product(
    repo: SyncRepository,
    catalog: CatalogRepositories,
    galleries: Callable[[StoreConnectionDoc], Gallery],
    connection: StoreConnectionDoc,
    client_id: str,
    product_id: str,
    by: str,
    now: datetime,
) -> RestoreOut:
    """Put the store product back as it was before our first push: our images off, the merchant's in
    the snapshot's order (its featured image first). Images the merchant deleted since stay deleted."""
    product = catalog.products.get(client_id, product_id)
    if product is None:
        raise NotFound(f"No product {product_id}")
    link = product.store
    if link is None or link.platform != connection.platform.value or link.shop != connection.shop:
        raise NothingToRestore(f"Product {product_id} is not linked to the connected store.")
    snapshot = repo.snapshot(client_id, snapshot_id(link.platform, link.product_id))
    if snapshot is None:
        raise NothingToRestore(f"Nothing was pushed to product {product_id}'s store product.")
    gallery = galleries(connection)
    ours = [r for r in repo.records_of_product(client_id, link.platform, link.product_id) if r.status in LIVE]
    merchant = {image.media_id for image in snapshot.images}
    media = [r.media_id for r in ours if r.media_id and r.media_id not in merchant]
    gallery.remove(link.product_id, media)
    present = {image.media_id for image in gallery.images(link.product_id)}
    order = [i.media_id for i in sorted(snapshot.images, key=lambda i: i.position) if i.media_id in present]
    gallery.arrange(link.product_id, order)
    for record in ours:
        _mark(repo, record, RecordStatus.REMOVED, now, "restored the original images", SyncAction.REMOVED, by)
    forget_pushed(catalog, client_id, product_id, media)
    entry = HistoryDoc(
        id=new_id("sh"),
        at=now,
        action=SyncAction.RESTORED,
        product_id=product_id,
        store_product_id=link.product_id,
        platform=link.platform,
        result=f"ok: {len(media)} of our images removed, {len(order)} original images in their order",
        by=by,
    )
    repo.add_history(client_id, [entry])
    refresh_product(repo, catalog, client_id, product_id, now)
    return RestoreOut(product_id=product_id, removed=len(media), order=order)


def _mark(
    repo: SyncRepository,
    record: SyncRecordDoc,
    status: RecordStatus,
    now: datetime,
    reason: str,
    action: SyncAction,
    by: str | None,
) -> SyncRecordDoc | None:
    """Set the record's status with its history entry (guarded; a record that moved is read again)."""
    for _ in range(5):
        loaded = repo.load_record(record.client_id, record.id)
        if loaded is None:
            return None
        current = loaded.value
        if current.status is status:
            return current
        changed = current.model_copy(
            update={
                "status": status,
                "reason": reason,
                "pushing_revision": None,
                "pushing_media_id": None,
                "pushing_by": None,
                "push_lease_until": None,
                "push_sent_at": None,
                "replaces_media_id": None,
                "updated_at": now,
            }
        )
        try:
            repo.save_record(changed, loaded.version, [history_entry(current, action, now, result=reason, by=by)])
        except StaleWrite:
            continue
        return changed
    raise UpstreamUnavailable("The sync record is busy; try again", retry_after=2)


# -- store webhooks --------------------------------------------------------------------------------------


class SyncWatcher(StoreProductWatcher):
    """Store webhooks keep our records true: our image gone from the product is ``removed`` (by the
    merchant, in the store); a deleted store product leaves its records ``orphaned``."""

    def __init__(self, repo: SyncRepository, catalog: CatalogRepositories) -> None:
        self.repo = repo
        self.catalog = catalog

    def changed(
        self, client_id: str, platform: str, store_product_id: str, media_ids: Sequence[str], now: datetime
    ) -> str:
        present = set(media_ids)
        gone = [
            r
            for r in self.repo.records_of_product(client_id, platform, store_product_id)
            # A push under way changes its media itself (a replacement removes the old one).
            if r.status is RecordStatus.SYNCED and r.pushing_revision is None and r.media_id not in present
        ]
        for record in gone:
            reason = "removed in the store"
            _mark(self.repo, record, RecordStatus.REMOVED, now, reason, SyncAction.REMOVED_IN_STORE, None)
            forget_pushed(self.catalog, client_id, record.product_id, [record.media_id or ""])
        for product_id in {r.product_id for r in gone}:
            refresh_product(self.repo, self.catalog, client_id, product_id, now)
        return f"{len(gone)} synced images removed in the store" if gone else "synced images in place"

    def deleted(self, client_id: str, platform: str, store_product_id: str, now: datetime) -> str:
        records = [
            r
            for r in self.repo.records_of_product(client_id, platform, store_product_id)
            if r.status is not RecordStatus.ORPHANED
        ]
        for record in records:
            _mark(
                self.repo,
                record,
                RecordStatus.ORPHANED,
                now,
                "the store product was deleted",
                SyncAction.ORPHANED,
                None,
            )
        for product_id in {r.product_id for r in records}:
            refresh_product(self.repo, self.catalog, client_id, product_id, now)
        return f"{len(records)} sync records orphaned"


# -- auto-sync -----------------------------------------------------------------------------------------


def auto_sync(
    catalog: CatalogRepositories,
    stores: StoreRepository,
    task: AutoSyncTask,
    start: Callable[[SyncRequest, str], object],
) -> str:
    """Start the sync job of an approval (``start(request, idempotency key)``), unless the image is no
    longer approved, its product is not linked or the store is not connected (nothing to retry)."""
    asset = catalog.assets.get(task.client_id, task.asset_id)
    if asset is None or not asset.approved:
        return "skipped: the asset is gone or no longer approved"
    product = catalog.products.get(task.client_id, asset.product_id) if asset.product_id else None
    if product is None or product.store is None or product.store.status is not StoreLinkStatus.LINKED:
        return "skipped: the asset's product is not linked to the store"
    try:
        connection = live_connection(stores, task.client_id)
    except (StoreNotConnected, StoreNeedsReauthorization) as error:
        return f"skipped: {error.detail}"
    if product.store.shop != connection.shop:
        return "skipped: the product is linked to another store"
    try:
        # Keyed by the approval event: a redelivered task finds the job it started.
        job = start(SyncRequest(asset_ids=[asset.id]), f"auto-sync:{task.event_id}")
    except EpoxError as error:
        if error.status >= 500:
            raise  # the queue tries again
        return f"skipped: {error.code}"
    return f"sync started: {getattr(job, 'id', job)}"
