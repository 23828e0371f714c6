"""Keeping imported products in step with their store products.

A store product's name, description, category, tags, store data (handle, vendor, variants, collections)
and the store's own images are mirrored onto the product linked to it; our generated assets are never
touched. A product deleted in the store is marked ``deleted_in_store`` and keeps everything we made for
it. Products are found by their store link (imported or linked by hand). Used by webhooks, by the
WooCommerce reconciliation and by linking a manual product.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from shared import logging as log
from shared.catalog.assets import NewProductImage, store_product_image
from shared.catalog.imports import store_asset_id, store_product_id
from shared.catalog.library import delete_asset
from shared.catalog.models import AssetOrigin, ProductCreate, ProductDoc, ProductSource
from shared.catalog.ports import CatalogRepositories, StaleWrite
from shared.catalog.products import build_product, create_products, search_tokens
from shared.catalog.store_link import StoreLinkStatus
from shared.errors import Conflict, EpoxError, NotFound, UpstreamUnavailable
from shared.stores.imports import store_row
from shared.stores.models import StoreConnectionDoc
from shared.stores.ports import StoreProduct

if TYPE_CHECKING:
    from shared.catalog.csv_parsing import ProductDraft
    from shared.imaging import ImageLimits
    from shared.safe_fetch import FetchLimits, SafeFetcher
    from shared.storage import ObjectStore

logger = log.get_logger("epox.stores.mirror")


class StoreProductWatcher(ABC):
    """What else follows a store product's changes the mirror learns of (sync-back's records of the
    images it pushed there). Called after the mirror applied the change; idempotent."""

    @abstractmethod
    def changed(
        self, client_id: str, platform: str, store_product_id: str, media_ids: Sequence[str], now: datetime
    ) -> str:
        """The store product now has these images (media / attachment ids)."""

    @abstractmethod
    def deleted(self, client_id: str, platform: str, store_product_id: str, now: datetime) -> str:
        """The store product was deleted."""


@dataclass
class MirrorServices:
    repos: CatalogRepositories
    object_store: ObjectStore
    fetcher: SafeFetcher
    image_limits: ImageLimits
    fetch_limits: FetchLimits
    thumbnail_max_side: int
    watchers: tuple[StoreProductWatcher, ...] = ()


class ProductAlreadyLinked(Conflict):
    code = "product_already_linked"
    title = "Another product is already linked to this store product"


def linked_product(services: MirrorServices, connection: StoreConnectionDoc, store_id: str) -> ProductDoc | None:
    """Our product for a store product: the imported one (its id is derived) or one linked by hand."""
    products = services.repos.products
    derived = products.get(
        connection.client_id,
        store_product_id(connection.client_id, connection.platform.value, connection.shop, store_id),
    )
    if derived is not None and derived.store is not None:
        return derived
    return products.find_linked(connection.client_id, connection.platform.value, store_id)


def mirror_product(
    services: MirrorServices,
    connection: StoreConnectionDoc,
    product: StoreProduct,
    now: datetime,
    *,
    create_missing: bool,
    into: ProductDoc | None = None,
) -> str:
    """Bring our product in step with ``product`` (creating it when ``create_missing`` and a product slot
    is free); ``into`` links a manual product. Returns what happened."""
    row = store_row(product, 1, connection.platform, connection.shop, now)
    draft = row.draft
    if draft is None or draft.store is None:
        return f"store product {product.id} skipped: {row.problems[0].message if row.problems else 'invalid'}"
    current = into or linked_product(services, connection, product.id)
    if current is None:
        if not create_missing:
            return f"store product {product.id} is not imported: left alone"
        try:
            data = ProductCreate(
                name=draft.name,
                sku=draft.sku,
                description=draft.description,
                category=draft.category,
                price=draft.price,
                tags=list(draft.tags),
                external_id=draft.external_id,
            )
        except ValidationError:
            return f"store product {product.id} skipped: its values are not valid for a product"
        doc = build_product(
            connection.client_id,
            data,
            now,
            product_id=store_product_id(connection.client_id, connection.platform.value, connection.shop, product.id),
            source=ProductSource(connection.platform.value),
        ).model_copy(update={"store": draft.store})
        done = create_products(services.repos.products, connection.client_id, [doc], now, all_or_nothing=False)
        if done.refused:
            logger.warning("store product %s of %s not created: no free product slot", product.id, connection.id)
            return f"store product {product.id} not created: the plan's product slots are all used"
        current = doc
        outcome = "created"
    else:
        _update_fields(services, current, draft, now)
        outcome = "updated"
    images = _mirror_images(services, connection, current, draft.image_urls, draft.image_media_ids, now)
    media = [image.media_id for image in product.images]
    seen = [
        w.changed(connection.client_id, connection.platform.value, product.id, media, now) for w in services.watchers
    ]
    return f"store product {product.id} {outcome} ({images})" + "".join(f"; {note}" for note in seen)


def _update_fields(services: MirrorServices, current: ProductDoc, draft: ProductDraft, now: datetime) -> None:
    products = services.repos.products
    assert draft.store is not None
    for _ in range(5):
        loaded = products.load(current.client_id, current.id)
        if loaded is None:
            raise NotFound(f"No product {current.id}")
        kept = loaded.value.store.pushed_media_ids if loaded.value.store is not None else []
        link = {
            **draft.store.model_dump(mode="python"),
            "status": StoreLinkStatus.LINKED.value,
            "synced_at": now,
            "pushed_media_ids": kept,
        }
        changes: dict[str, Any] = {
            "name": draft.name,
            "description": draft.description,
            "category": draft.category,
            "tags": list(draft.tags),
            "search_tokens": search_tokens(draft.name, draft.sku or current.sku),
            "store": link,
            "updated_at": now,
        }
        if draft.sku:
            changes["sku"] = draft.sku
        try:
            products.update(current.client_id, current.id, changes, loaded.version)
        except StaleWrite:
            continue
        return
    raise UpstreamUnavailable("The product is busy; try again", retry_after=2)


def _mirror_images(
    services: MirrorServices,
    connection: StoreConnectionDoc,
    product: ProductDoc,
    urls: tuple[str, ...],
    media_ids: tuple[str, ...],
    now: datetime,
) -> str:
    """Add the store's new images, drop the store images it no longer has (only images that came from the
    store: generated and uploaded assets stay)."""
    from shared.safe_fetch import FetchTemporarilyFailed

    repos = services.repos
    added = failed = removed = 0
    wanted = set(media_ids)
    ours = set(product.store.pushed_media_ids) if product.store is not None else set()
    for url, media_id in zip(urls, media_ids, strict=False):
        if media_id in ours:
            continue  # an image sync-back pushed: ours already, not the store's
        asset_id = store_asset_id(connection.client_id, connection.platform.value, connection.shop, media_id)
        if repos.assets.existing(connection.client_id, [asset_id]):
            continue
        try:
            fetched = services.fetcher.fetch(url, limits=services.fetch_limits)
            store_product_image(
                repos.assets,
                services.object_store,
                client_id=connection.client_id,
                product_id=product.id,
                image_bytes=fetched.body,
                origin=NewProductImage(
                    asset_id=asset_id, origin=AssetOrigin.STORE_IMPORT, source_url=url, origin_media_id=media_id
                ),
                limits=services.image_limits,
                thumbnail_max_side=services.thumbnail_max_side,
                now=now,
            )
            added += 1
        except FetchTemporarilyFailed:
            raise
        except EpoxError as error:
            failed += 1
            logger.warning("store image %s of product %s not imported: %s", media_id, product.id, error.code)
    current = repos.products.get(connection.client_id, product.id) or product
    owned = repos.assets.get_many(connection.client_id, [image.asset_id for image in current.images])
    for asset in owned.values():
        if asset.origin is AssetOrigin.STORE_IMPORT and asset.origin_media_id and asset.origin_media_id not in wanted:
            delete_asset(repos.assets, services.object_store, connection.client_id, asset.id)
            removed += 1
    return f"{added} images added, {removed} removed, {failed} failed"


def mark_deleted_in_store(
    services: MirrorServices, connection: StoreConnectionDoc, store_id: str, now: datetime
) -> str:
    """The store deleted the product: ours stays, with its generated assets, marked deleted-in-store."""
    for watcher in services.watchers:
        watcher.deleted(connection.client_id, connection.platform.value, store_id, now)
    product = linked_product(services, connection, store_id)
    if product is None or product.store is None:
        return f"store product {store_id} is not imported: nothing to mark"
    link = product.store.model_copy(update={"status": StoreLinkStatus.DELETED_IN_STORE, "synced_at": now})
    for _ in range(5):
        loaded = services.repos.products.load(connection.client_id, product.id)
        if loaded is None:
            return f"product {product.id} is gone"
        try:
            services.repos.products.update(
                connection.client_id,
                product.id,
                {"store": link.model_dump(mode="python"), "updated_at": now},
                loaded.version,
            )
        except StaleWrite:
            continue
        return f"product {product.id} marked deleted in store"
    raise UpstreamUnavailable("The product is busy; try again", retry_after=2)


def unlink_products(repos: CatalogRepositories, client_id: str, now: datetime, *, page: int = 200) -> int:
    """Mark every live store link of the client unlinked (after a disconnect); returns how many."""
    count = 0
    for _ in range(10_000):  # bounded: a product that keeps changing under us is left for the next run
        batch = repos.products.linked(client_id, page)
        if not batch:
            return count
        for product in batch:
            assert product.store is not None
            link = product.store.model_copy(update={"status": StoreLinkStatus.UNLINKED, "synced_at": now})
            loaded = repos.products.load(client_id, product.id)
            if loaded is None:
                continue
            try:
                repos.products.update(
                    client_id, product.id, {"store": link.model_dump(mode="python"), "updated_at": now}, loaded.version
                )
                count += 1
            except StaleWrite:
                continue  # changed meanwhile: the next page reads it again
    return count


def link_product(
    services: MirrorServices,
    connection: StoreConnectionDoc,
    product_id: str,
    store_product: StoreProduct,
    now: datetime,
) -> str:
    """Link a manual product to a store product (and mirror the store's data onto it)."""
    product = services.repos.products.get(connection.client_id, product_id)
    if product is None:
        raise NotFound(f"No product {product_id}")
    other = linked_product(services, connection, store_product.id)
    if other is not None and other.id != product.id and other.store and other.store.status is StoreLinkStatus.LINKED:
        raise ProductAlreadyLinked(f"Product {other.id} is already linked to store product {store_product.id}.")
    return mirror_product(services, connection, store_product, now, create_missing=False, into=product)
