"""Stored documents, requests and responses of sync-back: pushing approved images to the store.

* ``clients/{c}/sync_jobs/{job}`` (+ ``items/{index}``): a sync job on the batch engine, one item per
  (asset, product) to push.
* ``clients/{c}/synced_images/{record}``: what we put in the store for one (asset, store product), its
  store media id, position, pushed revision and status. The record is the push's state machine: a
  redelivered item reads it and never pushes the same revision twice.
* ``clients/{c}/store_snapshots/{platform}_{store product}``: the product's own images before our first
  push (ids, URLs, alt, order, featured), so they are known as the merchant's and can be restored.
* ``clients/{c}/sync_products/{product}``: per-product counts for the store-management page.
* ``clients/{c}/sync_history/{id}``: every push, replacement, removal, failure and restore.
* ``clients/{c}/settings/sync``: the client's sync settings (auto-sync on approval, placement).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import Enum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from shared.batch.models import BatchItemDoc, ItemCounts, ItemStatus, JobStatus, PagedJobDoc
from shared.catalog.models import Id, StrictModel
from shared.pagination import PageQuery
from shared.text import SINGLE_LINE

MAX_SYNC_ASSETS = 5000  # assets one sync job pushes (a larger selection is several jobs)
MAX_SELECTION_IDS = 500  # ids named in one request


class Placement(str, Enum):
    """Where a pushed image goes in the product's gallery."""

    APPEND = "append"  # after the product's images
    FEATURED = "featured"  # position 0: the product's main image


class RecordStatus(str, Enum):
    PENDING = "pending"  # asked for, not pushed yet
    PROCESSING = "processing"  # pushed; the store is still fetching / processing it
    SYNCED = "synced"  # in the store (READY)
    FAILED = "failed"  # the store refused it or the push failed for good (see ``reason``)
    REMOVED = "removed"  # taken off the product (by us, or by the merchant in the store)
    ORPHANED = "orphaned"  # the store product was deleted


class SyncAction(str, Enum):
    """What a history entry records."""

    PUSHED = "pushed"
    REPLACED = "replaced"
    REMOVED = "removed"
    FAILED = "failed"
    RESTORED = "restored"
    REMOVED_IN_STORE = "removed_in_store"
    ORPHANED = "orphaned"


def record_id(asset_id: str, platform: str, store_product_id: str) -> str:
    """One record per (asset, store product), whatever its revision."""
    return f"{asset_id}__{platform}_{store_product_id}"


def snapshot_id(platform: str, store_product_id: str) -> str:
    return f"{platform}_{store_product_id}"


def push_stem(asset_id: str, revision: int) -> str:
    """A short mark of one (asset, revision) carried in the pushed file's name: a push whose answer was
    lost is found again in the store's gallery by it."""
    return hashlib.sha256(f"{asset_id}:{revision}".encode()).hexdigest()[:10]


# -- stored -----------------------------------------------------------------------------------------


class SnapshotImage(BaseModel):
    model_config = ConfigDict(extra="ignore", defer_build=True)

    media_id: str
    url: str
    alt: str | None = None
    position: int
    featured: bool = False


class ProductSnapshotDoc(BaseModel):
    """The store product's images before our first push to it."""

    model_config = ConfigDict(extra="ignore", defer_build=True)

    platform: str
    shop: str
    store_product_id: str
    product_id: str
    images: list[SnapshotImage] = Field(default_factory=list)
    taken_at: datetime


class SyncRecordDoc(BaseModel):
    """One (asset, store product): what we pushed there and where it stands."""

    model_config = ConfigDict(extra="ignore", defer_build=True)

    id: str
    client_id: str
    asset_id: str
    product_id: str
    platform: str
    shop: str
    store_product_id: str
    status: RecordStatus = RecordStatus.PENDING
    reason: str | None = None  # why it failed / was removed
    error_code: str | None = None  # the store's code (e.g. Shopify's IMAGE_DOWNLOAD_FAILURE)
    media_id: str | None = None  # the store's media / attachment id of the image in the store now
    url: str | None = None
    position: int | None = None
    revision: int | None = None  # the revision in the store (synced)
    # A push under way: the revision being pushed, its media id once the store answered, and the media
    # it replaces (the previous revision's, removed once the new one is READY).
    pushing_revision: int | None = None
    pushing_media_id: str | None = None
    replaces_media_id: str | None = None
    pushing_by: str | None = None  # the push (job item) under way
    push_sent_at: datetime | None = None  # when the store was last asked to add the image being pushed
    push_lease_until: datetime | None = None  # until then, other pushes of this image wait for it
    placement: Placement = Placement.APPEND
    converted: str | None = None  # what was changed for the store (format, size), if anything
    job_id: str | None = None
    synced_at: datetime | None = None
    synced_by: str | None = None
    created_at: datetime
    updated_at: datetime


class ProductSyncDoc(BaseModel):
    """``sync_products/{product}``: counts of the product's records by status (rewritten with them)."""

    model_config = ConfigDict(extra="ignore", defer_build=True)

    product_id: str
    name: str
    search_tokens: list[str] = Field(default_factory=list)
    platform: str
    store_product_id: str
    pending: int = 0
    synced: int = 0
    failed: int = 0
    removed: int = 0
    state: str = "none"  # failed > pending > synced > none: what the filter matches
    last_synced_at: datetime | None = None
    updated_at: datetime


class HistoryDoc(BaseModel):
    model_config = ConfigDict(extra="ignore", defer_build=True)

    id: str
    at: datetime
    action: SyncAction
    asset_id: str | None = None
    product_id: str | None = None
    store_product_id: str
    platform: str
    revision: int | None = None
    media_id: str | None = None
    result: str  # "ok", or the reason it failed
    job_id: str | None = None
    by: str | None = None


class SyncSettingsDoc(BaseModel):
    model_config = ConfigDict(extra="ignore", defer_build=True)

    auto_sync: bool = False
    placement: Placement = Placement.APPEND
    updated_at: datetime | None = None
    updated_by: str | None = None


class SyncJobDoc(PagedJobDoc):
    """A sync job: push ``item_count`` assets (listed in the object store) to the connected store."""

    platform: str
    shop: str
    store_id: str  # the connection's id
    placement: Placement = Placement.APPEND
    trigger: str = "manual"  # manual | auto (asset approved)


class SyncItemDoc(BatchItemDoc):
    """One asset to push to its product."""

    asset_id: str = ""
    product_id: str = ""
    action: str | None = None  # pushed | replaced | already_synced
    revision: int | None = None
    media_id: str | None = None
    converted: str | None = None


# -- requests ---------------------------------------------------------------------------------------

IdList = Annotated[list[Id], Field(min_length=1, max_length=MAX_SELECTION_IDS)]
CategoryName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), SINGLE_LINE]


class SyncRequest(StrictModel):
    """What to push: ``asset_ids`` (one or a selection), or every approved image not yet synced
    (``unsynced: true``), optionally only of ``product_ids`` or of one ``category``."""

    asset_ids: IdList | None = None
    unsynced: bool = False
    product_ids: IdList | None = None
    category: CategoryName | None = None
    placement: Placement | None = None  # default: the client's sync setting

    @model_validator(mode="after")
    def _one_selection(self) -> SyncRequest:
        if (self.asset_ids is None) == (not self.unsynced):
            raise ValueError("name asset_ids, or set unsynced to push every approved image not yet synced")
        if self.asset_ids is not None and (self.product_ids is not None or self.category is not None):
            raise ValueError("product_ids and category narrow unsynced only")
        return self


class RemoveRequest(StrictModel):
    """Take our images of these assets off their store products (the merchant's images stay)."""

    asset_ids: Annotated[list[Id], Field(min_length=1, max_length=50)]


class SyncSettingsUpdate(StrictModel):
    auto_sync: bool | None = None
    placement: Placement | None = None


class RecordListQuery(PageQuery):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    product_id: Id | None = None
    asset_id: Id | None = None
    status: RecordStatus | None = None


class ProductSyncQuery(PageQuery):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    state: Annotated[str, StringConstraints(pattern=r"^(failed|pending|synced|none)$")] | None = None
    q: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), SINGLE_LINE] | None = None


class HistoryQuery(PageQuery):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    product_id: Id | None = None
    action: SyncAction | None = None


class HistoryExportQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    product_id: Id | None = None
    action: SyncAction | None = None


# -- responses --------------------------------------------------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(defer_build=True)  # built on first use: cold starts import many models


class SyncJobOut(_Out):
    id: str
    status: JobStatus
    paused_reason: str | None = None
    platform: str
    placement: Placement
    trigger: str
    asset_count: int
    counts: ItemCounts
    pushed: int
    replaced: int
    already_synced: int
    created_at: datetime
    finished_at: datetime | None = None


class SyncItemOut(_Out):
    index: int
    status: ItemStatus
    asset_id: str
    product_id: str
    action: str | None = None
    revision: int | None = None
    media_id: str | None = None
    converted: str | None = None
    failure: dict[str, Any] | None = None


class SyncRecordOut(_Out):
    id: str
    asset_id: str
    product_id: str
    platform: str
    store_product_id: str
    status: RecordStatus
    reason: str | None = None
    error_code: str | None = None
    media_id: str | None = None
    url: str | None = None
    position: int | None = None
    revision: int | None = None
    converted: str | None = None
    synced_at: datetime | None = None
    synced_by: str | None = None
    updated_at: datetime


class ProductSyncOut(_Out):
    product_id: str
    name: str
    store_product_id: str
    generated: int
    approved: int
    synced: int
    pending: int
    failed: int
    removed: int
    state: str
    last_synced_at: datetime | None = None


class HistoryOut(_Out):
    id: str
    at: datetime
    action: SyncAction
    asset_id: str | None = None
    product_id: str | None = None
    store_product_id: str
    platform: str
    revision: int | None = None
    media_id: str | None = None
    result: str
    job_id: str | None = None


class SyncSettingsOut(_Out):
    auto_sync: bool
    placement: Placement


class RemoveOut(_Out):
    removed: list[SyncRecordOut]


class RestoreOut(_Out):
    product_id: str
    removed: int  # our images taken off
    order: list[str]  # the store's media ids in the restored order
