"""A store product's image gallery, the same for Shopify and WooCommerce: what sync-back does to it.

Shopify processes a pushed image asynchronously (UPLOADED → PROCESSING → READY | FAILED) and reorders
with ``productReorderMedia``; WooCommerce sideloads while it answers and takes the whole gallery on
every write (kept images by id, new ones by src). Every call runs under the connection's current
credentials: a refusal marks the connection ``needs_reauth`` (see ``watching_authorization``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.stores.connections import (
    ConnectionPolicy,
    live_connection,
    open_secrets,
    shopify_token,
    watching_authorization,
    woo_keys,
)
from shared.stores.models import StoreConnectionDoc
from shared.stores.ports import (
    MediaState,
    ShopifyAdmin,
    StoreImage,
    StoreMedia,
    StorePlatform,
    WooCommerceApi,
    WooImageRef,
)
from shared.stores.repository import StoreRepository


@dataclass
class StoreAccess:
    """How sync reaches the client's store (the store function's adapters, built lazily)."""

    stores: StoreRepository
    cipher: Any  # CredentialCipher
    shopify: Callable[[], ShopifyAdmin]
    woocommerce: Callable[[], WooCommerceApi]
    policy: ConnectionPolicy
    clock: Callable[[], datetime]


class Gallery(ABC):
    """One connected store's product galleries."""

    def __init__(self, access: StoreAccess, connection: StoreConnectionDoc) -> None:
        self.access = access
        self.connection = connection

    @contextmanager
    def _watching(self) -> Iterator[None]:
        with watching_authorization(self.access.stores, self.connection.client_id, self.access.clock):
            yield

    @abstractmethod
    def images(self, product_id: str) -> list[StoreImage]:
        """The product's images in order (position 0 featured)."""

    @abstractmethod
    def push(self, product_id: str, *, source_url: str, name: str, alt: str, position: int | None) -> StoreMedia:
        """Add one image at ``position`` (None: the end). Shopify answers before processing it; the
        position is applied once it is READY (:meth:`place`)."""

    @abstractmethod
    def states(self, product_id: str, media_ids: Sequence[str]) -> dict[str, StoreMedia]:
        """The pushed media's states; media no longer on the product are left out."""

    @abstractmethod
    def place(self, product_id: str, media_id: str, position: int) -> None:
        """Move one image to ``position``."""

    @abstractmethod
    def remove(self, product_id: str, media_ids: Sequence[str]) -> None:
        """Take these images off the product (files and attachments stay in the store's library)."""

    @abstractmethod
    def arrange(self, product_id: str, order: Sequence[str]) -> None:
        """Put these images first, in this order (the rest keep their relative order after them)."""

    @property
    def processes_later(self) -> bool:
        """Whether pushed images need polling before they are READY."""
        return False


class ShopifyGallery(Gallery):
    def _call(self) -> tuple[ShopifyAdmin, str, str]:
        a = self.access
        shopify = a.shopify()
        doc, token = shopify_token(a.stores, shopify, a.cipher, self.connection.client_id, a.policy, a.clock)
        return shopify, doc.shop, token

    @property
    def processes_later(self) -> bool:
        return True

    def images(self, product_id: str) -> list[StoreImage]:
        with self._watching():
            shopify, shop, token = self._call()
            return shopify.product_images(shop, token, product_id)

    def push(self, product_id: str, *, source_url: str, name: str, alt: str, position: int | None) -> StoreMedia:
        with self._watching():
            shopify, shop, token = self._call()
            return shopify.add_product_image(shop, token, product_id, source_url=source_url, alt=alt)

    def states(self, product_id: str, media_ids: Sequence[str]) -> dict[str, StoreMedia]:
        with self._watching():
            shopify, shop, token = self._call()
            return shopify.media_states(shop, token, media_ids)

    def place(self, product_id: str, media_id: str, position: int) -> None:
        with self._watching():
            shopify, shop, token = self._call()
            shopify.reorder_product_images(shop, token, product_id, [(media_id, position)])

    def remove(self, product_id: str, media_ids: Sequence[str]) -> None:
        if not media_ids:
            return
        with self._watching():
            shopify, shop, token = self._call()
            shopify.remove_product_images(shop, token, product_id, media_ids)

    def arrange(self, product_id: str, order: Sequence[str]) -> None:
        if not order:
            return
        with self._watching():
            shopify, shop, token = self._call()
            shopify.reorder_product_images(shop, token, product_id, [(m, i) for i, m in enumerate(order)])


class WooGallery(Gallery):
    def _call(self) -> tuple[WooCommerceApi, str, Any]:
        a = self.access
        doc = live_connection(a.stores, self.connection.client_id)
        return a.woocommerce(), doc.shop, woo_keys(open_secrets(a.cipher, doc))

    def images(self, product_id: str) -> list[StoreImage]:
        with self._watching():
            woo, url, keys = self._call()
            return list(woo.product(url, keys, product_id).images)

    def _write(self, product_id: str, refs: list[WooImageRef]) -> list[StoreImage]:
        woo, url, keys = self._call()
        return woo.set_product_images(url, keys, product_id, refs)

    def push(self, product_id: str, *, source_url: str, name: str, alt: str, position: int | None) -> StoreMedia:
        with self._watching():
            current = self.images(product_id)
            refs = [WooImageRef(id=image.media_id) for image in current]
            at = len(refs) if position is None else max(0, min(position, len(refs)))
            refs.insert(at, WooImageRef(src=source_url, name=name, alt=alt))
            answered = self._write(product_id, refs)
        before = {image.media_id for image in current}
        new = [image for image in answered if image.media_id not in before]
        if not new:
            from shared.stores.ports import StoreRequestFailed

            raise StoreRequestFailed("The store answered the gallery without the new image")
        image = new[0]
        return StoreMedia(media_id=image.media_id, state=MediaState.READY, url=image.url, alt=image.alt)

    def states(self, product_id: str, media_ids: Sequence[str]) -> dict[str, StoreMedia]:
        wanted = set(media_ids)
        return {
            image.media_id: StoreMedia(media_id=image.media_id, state=MediaState.READY, url=image.url, alt=image.alt)
            for image in self.images(product_id)
            if image.media_id in wanted
        }

    def place(self, product_id: str, media_id: str, position: int) -> None:
        with self._watching():
            ids = [image.media_id for image in self.images(product_id)]
            if media_id not in ids or ids.index(media_id) == position:
                return
            ids.remove(media_id)
            ids.insert(min(position, len(ids)), media_id)
            self._write(product_id, [WooImageRef(id=m) for m in ids])

    def remove(self, product_id: str, media_ids: Sequence[str]) -> None:
        gone = set(media_ids)
        with self._watching():
            ids = [image.media_id for image in self.images(product_id)]
            if not gone & set(ids):
                return
            self._write(product_id, [WooImageRef(id=m) for m in ids if m not in gone])

    def arrange(self, product_id: str, order: Sequence[str]) -> None:
        with self._watching():
            ids = [image.media_id for image in self.images(product_id)]
            first = [m for m in order if m in ids]
            arranged = first + [m for m in ids if m not in first]
            if arranged != ids:
                self._write(product_id, [WooImageRef(id=m) for m in arranged])


def gallery(access: StoreAccess, connection: StoreConnectionDoc) -> Gallery:
    """The gallery of the client's connected store."""
    if connection.platform is StorePlatform.SHOPIFY:
        return ShopifyGallery(access, connection)
    return WooGallery(access, connection)
