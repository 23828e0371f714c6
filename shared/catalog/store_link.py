"""A product's link to the store product it mirrors (kept apart: models and CSV parsing both use it)."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class StoreLinkStatus(str, Enum):
    LINKED = "linked"  # kept in step with the store's product
    UNLINKED = "unlinked"  # the store was disconnected; the product stays ours
    DELETED_IN_STORE = "deleted_in_store"  # the store deleted it; its generated assets stay


class StoreLink(BaseModel):
    """Which store product a product mirrors, and the store's data that has no field of our own."""

    model_config = ConfigDict(extra="ignore", defer_build=True)

    platform: str  # shopify | woocommerce
    shop: str
    product_id: str  # the store's numeric product id
    status: StoreLinkStatus = StoreLinkStatus.LINKED
    handle: str | None = None
    vendor: str | None = None
    product_type: str | None = None
    status_in_store: str | None = None
    categories: list[str] = Field(default_factory=list)
    variants: list[dict[str, Any]] = Field(default_factory=list)
    # The store's own images we imported (its media / attachment ids), never our generated assets.
    media_ids: list[str] = Field(default_factory=list)
    # The images sync-back pushed to the store product (their media / attachment ids): the store's
    # webhooks and re-imports bring them back as the store's images, and they are not imported.
    pushed_media_ids: list[str] = Field(default_factory=list)
    store_updated_at: datetime | None = None
    synced_at: datetime | None = None
    import_id_seen: str | None = None  # the last store import that refreshed this link
