"""In-memory fakes of the store side's ports: real subclasses with the adapters' semantics (versions
checked on guarded writes, the shop index of the Firestore adapter, single-use states) and vendor
fakes with switches for the failures the services must handle."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import SecretStr

from shared.catalog.ports import StaleWrite, Versioned
from shared.credentials import LocalKeyring
from shared.events.model import DomainEvent
from shared.stores.models import OAuthStateDoc, ShopRedaction, StoreConnectionDoc
from shared.stores.ports import (
    BulkOperation,
    BulkStatus,
    MediaState,
    ShopifyAdmin,
    ShopifyTokens,
    StoreAuthorizationLost,
    StoreCategory,
    StoreImage,
    StoreImageRejected,
    StoreMedia,
    StoreNotReachable,
    StorePage,
    StorePlatform,
    StoreProduct,
    StoreProductGone,
    StoreRequestFailed,
    StoreUnavailable,
    StoreVariant,
    WooCommerceApi,
    WooImageRef,
    WooKeys,
    WooWebhook,
)
from shared.stores.repository import ShopTaken, StoreRepository

_versions = itertools.count(1)


def new_cipher() -> LocalKeyring:
    """A local keyring with a key of its own (each test seals with a fresh key)."""
    return LocalKeyring({"v1": os.urandom(32)}, "v1")


class Clock:
    """A settable clock (the services take ``clock()``)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


class InMemoryStoreRepository(StoreRepository):
    """Connections per client with versions, the shop → client index, states, deliveries; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.docs: dict[str, tuple[StoreConnectionDoc, int]] = {}
        self.shops: dict[tuple[StorePlatform, str], str] = {}
        self.states: dict[str, OAuthStateDoc] = {}
        self.deliveries: dict[tuple[StorePlatform, str], datetime] = {}
        self.redactions: list[ShopRedaction] = []
        self.events: list[DomainEvent] = []
        self.before_update: list[Callable[[], None]] = []  # hooks run before a guarded update

    def load(self, client_id: str) -> Versioned[StoreConnectionDoc] | None:
        with self._lock:
            entry = self.docs.get(client_id)
            return Versioned(entry[0], entry[1]) if entry else None

    def owner_of(self, platform: StorePlatform, shop: str) -> str | None:
        with self._lock:
            return self.shops.get((platform, shop))

    def save(
        self,
        doc: StoreConnectionDoc,
        previous: Versioned[StoreConnectionDoc] | None,
        events: Sequence[DomainEvent] = (),
    ) -> None:
        with self._lock:
            current = self.docs.get(doc.client_id)
            if previous is None and current is not None:
                raise StaleWrite()
            if previous is not None and (current is None or current[1] != previous.version):
                raise StaleWrite()
            holder = self.shops.get((doc.platform, doc.shop))
            if holder and holder != doc.client_id:
                other = self.docs.get(holder)
                if other is not None and other[0].shop == doc.shop and other[0].status.value != "disconnected":
                    raise ShopTaken(holder)
            if previous is not None and previous.value.shop != doc.shop:
                self.shops.pop((previous.value.platform, previous.value.shop), None)
            self.docs[doc.client_id] = (StoreConnectionDoc.model_validate(doc.model_dump()), next(_versions))
            self.shops[(doc.platform, doc.shop)] = doc.client_id
            self.events.extend(events)

    def update(
        self, loaded: Versioned[StoreConnectionDoc], changes: dict[str, Any], events: Sequence[DomainEvent] = ()
    ) -> None:
        while self.before_update:
            self.before_update.pop(0)()
        with self._lock:
            entry = self.docs.get(loaded.value.client_id)
            if entry is None or entry[1] != loaded.version:
                raise StaleWrite()
            self.docs[loaded.value.client_id] = (_changed(entry[0], changes), next(_versions))
            self.events.extend(events)

    def touch(self, client_id: str, changes: dict[str, Any]) -> None:
        with self._lock:
            entry = self.docs.get(client_id)
            if entry is not None:
                self.docs[client_id] = (_changed(entry[0], changes), next(_versions))

    def erase(self, client_id: str, platform: StorePlatform, shop: str, redaction: ShopRedaction) -> None:
        with self._lock:
            entry = self.docs.get(client_id)
            if entry is not None and entry[0].shop == shop:
                del self.docs[client_id]
            self.shops.pop((platform, shop), None)
            self.redactions.append(redaction)

    def connections(self, platform: StorePlatform | None = None) -> Iterator[StoreConnectionDoc]:
        with self._lock:
            docs = [doc for doc, _ in self.docs.values() if platform is None or doc.platform is platform]
        yield from docs

    def create_state(self, key: str, doc: OAuthStateDoc) -> None:
        with self._lock:
            if key in self.states:
                raise StaleWrite()
            self.states[key] = doc

    def consume_state(self, key: str, now: datetime) -> OAuthStateDoc | None:
        with self._lock:
            state = self.states.get(key)
            if state is None or state.used_at is not None or state.expires_at <= now:
                return None
            self.states[key] = state.model_copy(update={"used_at": now})
            return state

    def first_delivery(self, platform: StorePlatform, webhook_id: str, now: datetime, keep_until: datetime) -> bool:
        with self._lock:
            if (platform, webhook_id) in self.deliveries:
                return False
            self.deliveries[(platform, webhook_id)] = keep_until
            return True

    def forget_delivery(self, platform: StorePlatform, webhook_id: str) -> None:
        with self._lock:
            self.deliveries.pop((platform, webhook_id), None)

    def event_types(self) -> list[str]:
        return [event.type.value for event in self.events]


def _changed(doc: StoreConnectionDoc, changes: dict[str, Any]) -> StoreConnectionDoc:
    """The document with ``changes`` applied as a read would give them (stored values validated)."""
    return StoreConnectionDoc.model_validate({**doc.model_dump(), **changes})


# -- catalogs --------------------------------------------------------------------------------------


def store_product(
    number: int,
    *,
    images: int = 1,
    category: str | None = "Dresses",
    updated_at: datetime | None = None,
    title: str | None = None,
) -> StoreProduct:
    """A store product with ``images`` images whose media ids derive from the product's number."""
    pid = str(1000 + number)
    return StoreProduct(
        id=pid,
        title=title if title is not None else f"Product {number}",
        handle=f"product-{number}",
        description_html=f"<p>About product {number}</p>" if number % 2 == 0 else None,
        product_type="Apparel",
        vendor="Acme",
        tags=["summer", "linen", "summer"],
        categories=[StoreCategory(id="77", name=category)] if category else [],
        variants=[StoreVariant(id=f"{pid}01", sku=f"SKU-{number}", price="19.90")],
        images=[
            StoreImage(media_id=f"{pid}{i:02d}", url=f"https://cdn.store.test/{pid}/{i}.png", position=i)
            for i in range(images)
        ],
        status="active",
        updated_at=updated_at,
    )


def catalog(count: int, *, images: int = 1, updated_at: datetime | None = None) -> dict[str, StoreProduct]:
    products = [store_product(n, images=images, updated_at=updated_at) for n in range(count)]
    return {product.id: product for product in products}


# -- Shopify ---------------------------------------------------------------------------------------


@dataclass
class FakeShopifyAdmin(ShopifyAdmin):
    """One shop's Admin API: rotating tokens, a catalog, bulk operations that need ``bulk_polls`` polls, and
    product images with Shopify's semantics: a pushed image is appended UPLOADED, reads of its state answer
    PROCESSING ``media_reads_until_ready`` times, then READY (or FAILED with ``fail_media_with``, or gone
    with ``drop_next_media``: over 20 megapixels); reorders move ids to zero-based positions; removing takes
    media off the product (the files stay in ``media``); a product in ``gone_products`` (or not in
    ``products``) is :class:`StoreProductGone`. Every call is recorded (``pushed``, ``reorders``,
    ``removals``, ``state_reads``)."""

    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    products: dict[str, StoreProduct] = field(default_factory=dict)
    collection_members: dict[str, set[str]] = field(default_factory=dict)
    access_ttl: timedelta = timedelta(hours=1)
    refuse_refresh: bool = False
    unavailable: bool = False
    refresh_delay: float = 0.0  # seconds a refresh takes (concurrency tests)
    bulk_polls: int = 1  # polls answered RUNNING before COMPLETED
    bulk_fails: bool = False
    refresh_calls: int = 0
    exchanges: int = 0
    during_refresh: list[Callable[[], object]] = field(default_factory=list)  # run once while refreshing
    queries: list[str | None] = field(default_factory=list)  # the search queries products_page was given
    uninstalled: bool = False  # the app called appUninstall (every token refused afterwards)
    media_reads_until_ready: int = 1  # media_states reads answering PROCESSING before a pushed image is done
    fail_media_with: str | None = None  # pushed images end FAILED with this media error code
    drop_next_media: bool = False  # the next pushed image disappears when processed (Shopify's > 20 MP)
    reject_images: str | None = None  # add_product_image raises StoreImageRejected with this message
    gone_products: set[str] = field(default_factory=set)
    media: dict[str, StoreMedia] = field(default_factory=dict)  # every file by media id, on a product or not
    galleries: dict[str, list[str]] = field(default_factory=dict)  # product id -> media ids in store order
    pushed: list[tuple[str, str, str]] = field(default_factory=list)  # (product id, source URL, alt)
    reorders: list[tuple[str, list[tuple[str, int]]]] = field(default_factory=list)
    removals: list[tuple[str, list[str]]] = field(default_factory=list)
    state_reads: list[list[str]] = field(default_factory=list)
    _processing: dict[str, tuple[int, str | None, bool]] = field(default_factory=dict)  # id -> (reads, code, drop)
    _media_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(900_000_001))
    _tokens: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _valid_refresh: set[str] = field(default_factory=set)
    _bulk: dict[str, dict[str, Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _issue(self) -> ShopifyTokens:
        n = next(self._tokens)
        refresh = f"shprt_{n:04d}"
        self._valid_refresh.add(refresh)
        now = self.clock()
        return ShopifyTokens(
            access_token=SecretStr(f"shpat_{n:04d}"),
            refresh_token=SecretStr(refresh),
            access_expires_at=now + self.access_ttl,
            refresh_expires_at=now + timedelta(days=90),
            scopes=["read_products", "write_products"],
        )

    def authorize_url(self, shop: str, state: str, redirect_uri: str) -> str:
        return f"https://{shop}/admin/oauth/authorize?client_id=app&state={state}&redirect_uri={redirect_uri}"

    def exchange_code(self, shop: str, code: str) -> ShopifyTokens:
        self._check()
        self.exchanges += 1
        return self._issue()

    def refresh(self, shop: str, refresh_token: str) -> ShopifyTokens:
        with self._lock:
            self.refresh_calls += 1
        if self.refresh_delay:
            time.sleep(self.refresh_delay)
        while self.during_refresh:
            self.during_refresh.pop(0)()
        self._check()
        with self._lock:
            if self.refuse_refresh or refresh_token not in self._valid_refresh:
                raise StoreAuthorizationLost("invalid_grant")
            self._valid_refresh.discard(refresh_token)  # rotation: a refresh token is used once
            return self._issue()

    def _check(self) -> None:
        if self.unavailable:
            raise StoreUnavailable("Shopify answered 503", retry_after=2)

    def products_page(
        self, shop: str, token: str, *, after: str | None = None, query: str | None = None, first: int = 50
    ) -> StorePage:
        self._check()
        self.queries.append(query)
        ordered = sorted(self.products.values(), key=lambda p: int(p.id))
        start = int(after or 0)
        page = ordered[start : start + first]
        more = start + first < len(ordered)
        return StorePage(products=page, next_cursor=str(start + first) if more else None)

    def products_by_ids(self, shop: str, token: str, product_ids: Sequence[str]) -> list[StoreProduct]:
        self._check()
        return [self.products[pid] for pid in product_ids if pid in self.products]

    def collections(self, shop: str, token: str) -> list[StoreCategory]:
        return [
            StoreCategory(id=cid, name=f"Collection {cid}", product_count=len(m))
            for cid, m in self.collection_members.items()
        ]

    def start_bulk_products(self, shop: str, token: str, collection_id: str | None = None) -> BulkOperation:
        self._check()
        op_id = f"gid://shopify/BulkOperation/{len(self._bulk) + 1}"
        self._bulk[op_id] = {"polls": 0, "collection": collection_id}
        return BulkOperation(id=op_id, status=BulkStatus.CREATED)

    def bulk_operation(self, shop: str, token: str, operation_id: str) -> BulkOperation:
        self._check()
        state = self._bulk[operation_id]
        state["polls"] += 1
        if state["polls"] <= self.bulk_polls:
            return BulkOperation(id=operation_id, status=BulkStatus.RUNNING)
        if self.bulk_fails:
            return BulkOperation(id=operation_id, status=BulkStatus.FAILED, error_code="INTERNAL_SERVER_ERROR")
        return BulkOperation(
            id=operation_id,
            status=BulkStatus.COMPLETED,
            url=f"memory://bulk/{operation_id}",
            root_object_count=len(self.products),
        )

    def stream_bulk_products(self, url: str) -> Iterator[StoreProduct]:
        op_id = url.removeprefix("memory://bulk/")
        collection = self._bulk[op_id]["collection"]
        members = self.collection_members.get(collection) if collection else None
        for product in sorted(self.products.values(), key=lambda p: int(p.id)):
            if members is None or product.id in members:
                yield product

    def uninstall(self, shop: str, token: str) -> None:
        self._check()
        with self._lock:
            self.uninstalled = True
            self._valid_refresh.clear()

    def product_from_webhook(self, payload: Mapping[str, Any]) -> StoreProduct:
        if "id" not in payload or "title" not in payload:
            raise StoreRequestFailed("not a product")
        return StoreProduct(id=str(payload["id"]), title=str(payload["title"]))

    # -- images (sync-back) -----------------------------------------------------------------------
    def _gallery(self, product_id: str) -> list[str]:
        """The product's media ids (its catalog images first seen as READY files); StoreProductGone."""
        product = self.products.get(product_id)
        if product is None or product_id in self.gone_products:
            raise StoreProductGone("no such product")
        if product_id not in self.galleries:
            for image in product.images:
                self.media.setdefault(
                    image.media_id,
                    StoreMedia(media_id=image.media_id, state=MediaState.READY, url=image.url, alt=image.alt),
                )
            self.galleries[product_id] = [i.media_id for i in sorted(product.images, key=lambda i: i.position)]
        return self.galleries[product_id]

    def product_images(self, shop: str, token: str, product_id: str) -> list[StoreImage]:
        self._check()
        with self._lock:
            images = []
            for position, media_id in enumerate(self._gallery(product_id)):
                medium = self.media[media_id]
                if medium.state is MediaState.READY and medium.url:
                    images.append(StoreImage(media_id=media_id, url=medium.url, alt=medium.alt, position=position))
            return images

    def add_product_image(self, shop: str, token: str, product_id: str, *, source_url: str, alt: str) -> StoreMedia:
        self._check()
        with self._lock:
            gallery = self._gallery(product_id)
            if self.reject_images is not None:
                raise StoreImageRejected(self.reject_images)
            self.pushed.append((product_id, source_url, alt))
            media_id = str(next(self._media_ids))
            medium = StoreMedia(media_id=media_id, state=MediaState.UPLOADED, alt=alt or None)
            self.media[media_id] = medium
            gallery.append(media_id)
            self._processing[media_id] = (0, self.fail_media_with, self.drop_next_media)
            self.drop_next_media = False
            return medium

    def media_states(self, shop: str, token: str, media_ids: Sequence[str]) -> dict[str, StoreMedia]:
        self._check()
        with self._lock:
            self.state_reads.append(list(media_ids))
            for media_id in media_ids:
                if media_id in self._processing:
                    self._advance(media_id)
            return {m: self.media[m] for m in media_ids if m in self.media}

    def _advance(self, media_id: str) -> None:
        reads, code, drop = self._processing[media_id]
        if reads < self.media_reads_until_ready:
            self._processing[media_id] = (reads + 1, code, drop)
            self.media[media_id] = self.media[media_id].model_copy(update={"state": MediaState.PROCESSING})
            return
        del self._processing[media_id]
        if drop:
            del self.media[media_id]
            for gallery in self.galleries.values():
                if media_id in gallery:
                    gallery.remove(media_id)
            return
        update: dict[str, Any] = (
            {"state": MediaState.FAILED, "error_code": code, "error_message": f"Media failed ({code})"}
            if code
            else {"state": MediaState.READY, "url": f"https://cdn.shopify.test/s/files/{media_id}.png"}
        )
        self.media[media_id] = self.media[media_id].model_copy(update=update)

    def reorder_product_images(self, shop: str, token: str, product_id: str, moves: Sequence[tuple[str, int]]) -> None:
        self._check()
        with self._lock:
            gallery = self._gallery(product_id)
            if any(media_id not in gallery for media_id, _ in moves):
                raise StoreImageRejected("Media does not exist on the given product.")
            self.reorders.append((product_id, list(moves)))
            for media_id, position in moves:
                gallery.remove(media_id)
                gallery.insert(min(position, len(gallery)), media_id)

    def remove_product_images(self, shop: str, token: str, product_id: str, media_ids: Sequence[str]) -> None:
        self._check()
        with self._lock:
            try:
                gallery = self._gallery(product_id)
            except StoreProductGone:
                return
            states = [self.media[m].state for m in media_ids if m in self.media]
            if any(state in (MediaState.UPLOADED, MediaState.PROCESSING) for state in states):
                raise StoreUnavailable("a medium is still processing", retry_after=5)
            if MediaState.FAILED in states:
                raise StoreImageRejected("Files in a failed state cannot be updated.")
            self.removals.append((product_id, list(media_ids)))
            gallery[:] = [m for m in gallery if m not in media_ids]


# -- WooCommerce -----------------------------------------------------------------------------------


@dataclass
class FakeWooCommerce(WooCommerceApi):
    """One WooCommerce store: keys, a catalog paged by ``per_page``, webhooks with their secrets, and
    product galleries as the REST API writes them: ``images`` replaces the gallery, kept by id (an id
    that is in no gallery nor in ``media`` is refused), added by src with a new attachment id (a src
    whose basename has no image extension, or one in ``unfetchable``, is refused and nothing changes);
    images taken off a product stay in ``media``; a product in ``trashed`` or missing is gone."""

    products: dict[str, StoreProduct] = field(default_factory=dict)
    bad_keys: bool = False
    unavailable: bool = False
    failing_topics: set[str] = field(default_factory=set)  # creating these webhooks fails
    hooks: dict[str, WooWebhook] = field(default_factory=dict)
    hook_secrets: dict[str, str] = field(default_factory=dict)
    deleted_hooks: list[str] = field(default_factory=list)
    page_calls: int = 0
    during_pages: list[Callable[[], object]] = field(default_factory=list)  # run once while a page is read
    media: dict[str, StoreImage] = field(default_factory=dict)  # attachments taken off a product or sideloaded
    trashed: set[str] = field(default_factory=set)  # product ids in the store's trash
    unfetchable: set[str] = field(default_factory=set)  # srcs the store cannot download
    product_reads: list[str] = field(default_factory=list)  # product ids product() was asked for
    image_writes: list[tuple[str, list[WooImageRef]]] = field(default_factory=list)  # set_product_images calls
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _media_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(90_001))

    def check_store_url(self, store_url: str) -> str:
        url = store_url.strip().rstrip("/")
        if not url.lower().startswith("https://"):
            raise StoreNotReachable("The store must be reached over https.")
        if "127.0.0.1" in url or "localhost" in url:
            raise StoreNotReachable("The store's address is private.")
        return url.lower()

    def authorize_url(self, store_url: str, *, app_name: str, user_id: str, return_url: str, callback_url: str) -> str:
        return f"{store_url}/wc-auth/v1/authorize?app_name={app_name}&scope=read_write&user_id={user_id}"

    def _check(self, keys: WooKeys) -> None:
        if self.unavailable:
            raise StoreUnavailable("WooCommerce answered 503", retry_after=2)
        if self.bad_keys:
            raise StoreAuthorizationLost("woocommerce_rest_cannot_view")

    def check_keys(self, store_url: str, keys: WooKeys) -> None:
        self._check(keys)

    def products_page(
        self,
        store_url: str,
        keys: WooKeys,
        *,
        page: int = 1,
        per_page: int = 100,
        category: str | None = None,
        include: Sequence[str] | None = None,
        modified_after: datetime | None = None,
        search: str | None = None,
    ) -> StorePage:
        self._check(keys)
        self.page_calls += 1
        while self.during_pages:
            self.during_pages.pop(0)()
        ordered = sorted(self.products.values(), key=lambda p: int(p.id))
        chosen = [
            p
            for p in ordered
            if (include is None or p.id in include)
            and (category is None or any(c.id == category for c in p.categories))
            and (modified_after is None or (p.updated_at is not None and p.updated_at > modified_after))
            and (search is None or search.lower() in p.title.lower())
        ]
        start = (page - 1) * per_page
        more = start + per_page < len(chosen)
        return StorePage(
            products=chosen[start : start + per_page], next_cursor=str(page + 1) if more else None, total=len(chosen)
        )

    def categories(self, store_url: str, keys: WooKeys) -> list[StoreCategory]:
        self._check(keys)
        found: dict[str, StoreCategory] = {}
        for product in self.products.values():
            for category in product.categories:
                found.setdefault(category.id, category)
        return list(found.values())

    def webhooks(self, store_url: str, keys: WooKeys) -> list[WooWebhook]:
        self._check(keys)
        return list(self.hooks.values())

    def create_webhook(
        self, store_url: str, keys: WooKeys, *, name: str, topic: str, delivery_url: str, secret: str
    ) -> WooWebhook:
        self._check(keys)
        if topic in self.failing_topics:
            raise StoreUnavailable(f"creating the {topic} webhook failed")
        hook = WooWebhook(id=str(next(self._ids)), topic=topic, status="active", delivery_url=delivery_url)
        self.hooks[hook.id] = hook
        self.hook_secrets[hook.id] = secret
        return hook

    def activate_webhook(self, store_url: str, keys: WooKeys, webhook_id: str) -> WooWebhook:
        self._check(keys)
        hook = self.hooks[webhook_id].model_copy(update={"status": "active"})
        self.hooks[webhook_id] = hook
        return hook

    def delete_webhook(self, store_url: str, keys: WooKeys, webhook_id: str) -> None:
        self._check(keys)
        self.hooks.pop(webhook_id, None)
        self.hook_secrets.pop(webhook_id, None)
        self.deleted_hooks.append(webhook_id)

    def product_from_webhook(self, payload: Mapping[str, Any]) -> StoreProduct:
        if "id" not in payload or "name" not in payload:
            raise StoreRequestFailed("not a product")
        return StoreProduct(id=str(payload["id"]), title=str(payload["name"]))

    def _live(self, product_id: str) -> StoreProduct:
        product = self.products.get(product_id)
        if product is None or product_id in self.trashed:
            raise StoreProductGone(f"The store has no product {product_id}.")
        return product

    def product(self, store_url: str, keys: WooKeys, product_id: str) -> StoreProduct:
        self._check(keys)
        self.product_reads.append(product_id)
        return self._live(product_id)

    def set_product_images(
        self, store_url: str, keys: WooKeys, product_id: str, images: Sequence[WooImageRef]
    ) -> list[StoreImage]:
        self._check(keys)
        self.image_writes.append((product_id, list(images)))
        product = self._live(product_id)
        known = {image.media_id: image for image in product.images} | self.media
        gallery: list[StoreImage] = []
        added: list[StoreImage] = []
        for position, ref in enumerate(images):
            if ref.id is not None:
                image = known.get(ref.id)
                if image is None:
                    raise StoreImageRejected(
                        f"#{ref.id} is an invalid image ID.", store_code="woocommerce_product_invalid_image_id"
                    )
            elif ref.src is not None:
                image = self._sideload(ref.src)
                added.append(image)
            else:
                raise StoreImageRejected(
                    "#0 is an invalid image ID.", store_code="woocommerce_product_invalid_image_id"
                )
            changes: dict[str, Any] = {"position": position}
            if ref.alt:
                changes["alt"] = ref.alt
            gallery.append(image.model_copy(update=changes))
        for image in [*product.images, *added]:  # off the product, still in the media library
            self.media.setdefault(image.media_id, image)
        self.products[product_id] = product.model_copy(update={"images": gallery})
        return gallery

    def _sideload(self, src: str) -> StoreImage:
        file_name = src.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        stem, dot, extension = file_name.rpartition(".")
        if src in self.unfetchable:
            message = f"Error getting remote image {src.split('?', 1)[0]}. Error: Not Found"
            raise StoreImageRejected(message, store_code="woocommerce_product_image_upload_error")
        allowed = {"jpg", "jpeg", "jpe", "gif", "png", "bmp", "tif", "tiff", "ico", "webp"}  # WooCommerce's list
        if not (dot and stem and extension.lower() in allowed):
            message = "Invalid image: Sorry, you are not allowed to upload this file type."
            raise StoreImageRejected(message, store_code="woocommerce_product_image_upload_error")
        media_id = str(next(self._media_ids))
        return StoreImage(media_id=media_id, url=f"https://woo.store.test/wp-content/uploads/{media_id}/{file_name}")
