"""Store webhooks against in-memory fakes: receiving (signatures on the raw body, unknown shops and
compliance topics acknowledged, deliveries deduplicated, an enqueue failure forgetting the id), working
them (mirroring a product, deletions, uninstall, shop/redact) and WooCommerce reconciliation."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from dev.stubs.shopify import sign_webhook
from shared.catalog.assets import NewProductImage, store_product_image
from shared.catalog.imports import store_asset_id, store_product_id
from shared.catalog.models import AssetOrigin, ProductDoc
from shared.catalog.ports import CatalogRepositories
from shared.catalog.store_link import StoreLinkStatus
from shared.imaging import ImageLimits
from shared.safe_fetch import FetchedResource, FetchLimits, SafeFetcher
from shared.stores import keeping, reconcile, webhooks
from shared.stores.connections import ConnectionPolicy, open_secrets, seal_secrets, webhook_url
from shared.stores.mirror import MirrorServices, mirror_product
from shared.stores.models import ConnectionStatus, StoreConnectionDoc, StoreSecrets, WebhookAck
from shared.stores.ports import StoreCategory, StoreImage, StorePlatform, StoreProduct, StoreUnavailable, WooKeys
from shared.stores.webhooks import StoreWebhookTask
from shared.tasks import TaskQueue, TaskRequest
from tests import images
from tests.fakes import InMemoryObjectStore, RecordingTaskQueue
from tests.fakes_catalog import InMemoryProductRepository, in_memory_catalog
from tests.fakes_stores import (
    Clock,
    FakeShopifyAdmin,
    FakeWooCommerce,
    InMemoryStoreRepository,
    new_cipher,
    store_product,
)

CLIENT = "client_a"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SHOP = "demo-shop.myshopify.com"
WOO_SHOP = "https://shop.example"
APP_SECRET = "shpss_app_secret"
HOOK_SECRET = "woo-hook-secret"
POLICY = ConnectionPolicy(callback_base_url="https://api.epox.test", app_url="https://app.epox.test")
PHOTO = images.png((12, 8))


class StoreCdn(SafeFetcher):
    def __init__(self) -> None:
        super().__init__()

    def fetch(
        self, url: str, *, limits: FetchLimits | None = None, headers: Mapping[str, str] | None = None
    ) -> FetchedResource:
        return FetchedResource(url=url, status=200, content_type="image/png", body=PHOTO)


class BrokenQueue(TaskQueue):
    def enqueue(self, task: TaskRequest) -> bool:
        raise ConnectionError("Cloud Tasks is unreachable")


class World:
    def __init__(self, platform: StorePlatform) -> None:
        self.platform = platform
        self.repos: CatalogRepositories = in_memory_catalog()
        assert isinstance(self.repos.products, InMemoryProductRepository)
        self.repos.products.billing[CLIENT] = {"plan": "starter", "product_slots": 100}
        self.object_store = InMemoryObjectStore()
        self.queue = RecordingTaskQueue()
        self.clock = Clock(NOW)
        self.stores = InMemoryStoreRepository()
        self.cipher = new_cipher()
        self.shopify = FakeShopifyAdmin(clock=self.clock)
        self.woo = FakeWooCommerce()
        self.mirror = MirrorServices(
            repos=self.repos,
            object_store=self.object_store,
            fetcher=StoreCdn(),
            image_limits=ImageLimits(),
            fetch_limits=FetchLimits(),
            thumbnail_max_side=16,
        )
        self.services = keeping.WebhookServices(
            stores=self.stores,
            cipher=self.cipher,
            shopify=lambda: self.shopify,
            woocommerce=lambda: self.woo,
            policy=POLICY,
            mirror=self.mirror,
            clock=self.clock,
        )
        shopify = platform is StorePlatform.SHOPIFY
        doc = StoreConnectionDoc(
            id="store_1",
            client_id=CLIENT,
            platform=platform,
            shop=SHOP if shopify else WOO_SHOP,
            connected_at=NOW - timedelta(days=1),
            updated_at=NOW,
            access_expires_at=NOW + timedelta(days=1) if shopify else None,
            reconciled_at=None if shopify else NOW - timedelta(hours=1),
        )
        plain = (
            StoreSecrets(access_token=SecretStr("shpat_live"), refresh_token=SecretStr("shprt_live"))
            if shopify
            else StoreSecrets(
                consumer_key=SecretStr("ck_1"), consumer_secret=SecretStr("cs_1"), webhook_secret=SecretStr(HOOK_SECRET)
            )
        )
        self.stores.save(seal_secrets(self.cipher, doc, plain), None)
        self.connection = doc

    @property
    def shop(self) -> str:
        return self.connection.shop

    def set_product(self, product: StoreProduct) -> None:
        self.shopify.products[product.id] = product
        self.woo.products[product.id] = product

    def imported(self, product: StoreProduct) -> ProductDoc:
        """The product as an earlier import made it (mirrored with creation)."""
        self.set_product(product)
        mirror_product(self.mirror, self.connection, product, NOW, create_missing=True)
        found = self.product(product.id)
        assert found is not None
        return found

    def product(self, store_id: str) -> ProductDoc | None:
        return self.repos.products.get(CLIENT, store_product_id(CLIENT, self.platform.value, self.shop, store_id))

    def work(self, topic: str, store_id: str | None, webhook_id: str = "w-1") -> str:
        task = StoreWebhookTask(
            platform=self.platform,
            client_id=CLIENT,
            shop=self.shop,
            topic=topic,
            webhook_id=webhook_id,
            store_product_id=store_id,
        )
        return keeping.work_webhook(self.services, task)

    def origins(self, product: ProductDoc) -> dict[str, tuple[AssetOrigin | None, str | None]]:
        assets = self.repos.assets.get_many(CLIENT, [image.asset_id for image in product.images])
        return {asset.id: (asset.origin, asset.origin_media_id) for asset in assets.values()}

    def add_own_asset(self, product: ProductDoc, origin: AssetOrigin, asset_id: str) -> None:
        store_product_image(
            self.repos.assets,
            self.object_store,
            client_id=CLIENT,
            product_id=product.id,
            image_bytes=PHOTO,
            origin=NewProductImage(asset_id=asset_id, origin=origin),
            limits=ImageLimits(),
            thumbnail_max_side=16,
            now=NOW,
        )


def shopify_headers(
    raw: bytes, topic: str = "products/update", shop: str = SHOP, webhook_id: str = "wh-1"
) -> dict[str, str]:
    return {
        "x-shopify-hmac-sha256": sign_webhook(raw, APP_SECRET),
        "x-shopify-topic": topic,
        "x-shopify-shop-domain": shop,
        "x-shopify-webhook-id": webhook_id,
        "x-shopify-event-id": "ev-1",
    }


def receive_shopify(world: World, raw: bytes, headers: dict[str, str], queue: TaskQueue | None = None) -> WebhookAck:
    return webhooks.receive_shopify(world.stores, queue or world.queue, raw, headers, APP_SECRET, NOW)


PRODUCT = json.dumps({"id": 1001, "title": "Product 1"}).encode()


# -- receiving Shopify ----------------------------------------------------------------------------------


def test_a_product_webhook_is_queued_once() -> None:
    world = World(StorePlatform.SHOPIFY)
    ack = receive_shopify(world, PRODUCT, shopify_headers(PRODUCT))
    assert (ack.received, ack.duplicate, ack.note) == (True, False, "queued")
    [task] = world.queue.tasks
    assert isinstance(task.payload, StoreWebhookTask) and task.target == "store_tasks"
    assert (task.payload.client_id, task.payload.store_product_id, task.payload.topic) == (
        CLIENT,
        "1001",
        "products/update",
    )
    again = receive_shopify(world, PRODUCT, shopify_headers(PRODUCT))
    assert (again.duplicate, again.note) == (True, "duplicate") and len(world.queue.tasks) == 1


@pytest.mark.parametrize("signature", ["", "bm90IGl0", None, "wrong-secret"])
def test_a_bad_signature_is_a_401(signature: str | None) -> None:
    world = World(StorePlatform.SHOPIFY)
    headers = shopify_headers(PRODUCT)
    if signature is None:
        del headers["x-shopify-hmac-sha256"]
    elif signature == "wrong-secret":
        headers["x-shopify-hmac-sha256"] = sign_webhook(PRODUCT, "not-the-app-secret")
    else:
        headers["x-shopify-hmac-sha256"] = signature
    with pytest.raises(webhooks.InvalidWebhookSignature) as caught:
        receive_shopify(world, PRODUCT, headers)
    assert caught.value.status == 401 and world.queue.tasks == [] and world.stores.deliveries == {}


def test_a_body_changed_after_signing_is_refused() -> None:
    world = World(StorePlatform.SHOPIFY)
    with pytest.raises(webhooks.InvalidWebhookSignature):
        receive_shopify(world, PRODUCT + b" ", shopify_headers(PRODUCT))


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b"\xff\xfe", b'{"title": "no id"}', b'{"id": true}'])
def test_a_garbled_body_is_a_400(raw: bytes) -> None:
    world = World(StorePlatform.SHOPIFY)
    with pytest.raises(webhooks.GarbledWebhook):
        receive_shopify(world, raw, shopify_headers(raw))
    assert world.queue.tasks == []


@pytest.mark.parametrize("shop", ["evil.com", ""])
def test_a_bad_shop_header_is_a_400(shop: str) -> None:
    world = World(StorePlatform.SHOPIFY)
    with pytest.raises(webhooks.GarbledWebhook):
        receive_shopify(world, PRODUCT, shopify_headers(PRODUCT, shop=shop))


def test_an_unknown_shop_is_acknowledged_and_ignored() -> None:
    world = World(StorePlatform.SHOPIFY)
    ack = receive_shopify(world, PRODUCT, shopify_headers(PRODUCT, shop="stranger.myshopify.com"))
    assert (ack.received, ack.note) == (True, "ignored") and world.queue.tasks == []


@pytest.mark.parametrize("topic", ["customers/data_request", "customers/redact"])
def test_customer_compliance_webhooks_are_acknowledged(topic: str) -> None:
    world = World(StorePlatform.SHOPIFY)
    raw = json.dumps({"shop_id": 1, "shop_domain": SHOP, "customer": {"id": 7}}).encode()
    for shop in (SHOP, "stranger.myshopify.com"):
        ack = receive_shopify(world, raw, shopify_headers(raw, topic=topic, shop=shop))
        assert (ack.received, ack.note) == (True, "ignored")
    assert world.queue.tasks == []


def test_shop_redact_for_an_unknown_shop_is_still_queued() -> None:
    world = World(StorePlatform.SHOPIFY)
    raw = json.dumps({"shop_id": 1, "shop_domain": "gone.myshopify.com"}).encode()
    ack = receive_shopify(world, raw, shopify_headers(raw, topic="shop/redact", shop="gone.myshopify.com"))
    assert ack.note == "queued"
    [task] = world.queue.tasks
    assert isinstance(task.payload, StoreWebhookTask) and task.payload.client_id is None


def test_a_topic_we_do_not_work_is_ignored() -> None:
    world = World(StorePlatform.SHOPIFY)
    ack = receive_shopify(world, PRODUCT, shopify_headers(PRODUCT, topic="orders/create"))
    assert ack.note == "ignored" and world.queue.tasks == []


def test_an_enqueue_failure_forgets_the_delivery_so_the_retry_counts() -> None:
    world = World(StorePlatform.SHOPIFY)
    with pytest.raises(ConnectionError):
        receive_shopify(world, PRODUCT, shopify_headers(PRODUCT), queue=BrokenQueue())
    assert world.stores.deliveries == {}
    ack = receive_shopify(world, PRODUCT, shopify_headers(PRODUCT))
    assert ack.note == "queued" and len(world.queue.tasks) == 1


# -- receiving WooCommerce ----------------------------------------------------------------------------


def woo_headers(
    raw: bytes, topic: str = "product.updated", delivery: str = "d-1", secret: str = HOOK_SECRET
) -> dict[str, str]:
    return {
        "x-wc-webhook-signature": sign_webhook(raw, secret),
        "x-wc-webhook-topic": topic,
        "x-wc-webhook-delivery-id": delivery,
        "x-wc-webhook-source": WOO_SHOP + "/",
    }


def receive_woo(world: World, raw: bytes, headers: dict[str, str], connection_id: str = "store_1") -> WebhookAck:
    def secret(doc: StoreConnectionDoc) -> str:
        plain = open_secrets(world.cipher, doc)
        assert plain.webhook_secret is not None
        return plain.webhook_secret.get_secret_value()

    return webhooks.receive_woocommerce(world.stores, secret, world.queue, raw, headers, CLIENT, connection_id, NOW)


WOO_PRODUCT = json.dumps({"id": 1001, "name": "Product 1"}).encode()


def test_the_creation_ping_is_answered_without_a_signature() -> None:
    world = World(StorePlatform.WOOCOMMERCE)
    ack = receive_woo(world, b"webhook_id=12", {})
    assert ack.note == "ping" and world.queue.tasks == []


def test_a_woocommerce_webhook_is_queued_once_per_delivery() -> None:
    world = World(StorePlatform.WOOCOMMERCE)
    ack = receive_woo(world, WOO_PRODUCT, woo_headers(WOO_PRODUCT))
    assert ack.note == "queued"
    [task] = world.queue.tasks
    assert isinstance(task.payload, StoreWebhookTask)
    assert (task.payload.store_product_id, task.payload.webhook_id) == ("1001", "store_1-d-1")
    again = receive_woo(world, WOO_PRODUCT, woo_headers(WOO_PRODUCT))
    assert again.note == "duplicate" and len(world.queue.tasks) == 1


def test_a_woocommerce_webhook_with_a_bad_signature_is_a_401() -> None:
    world = World(StorePlatform.WOOCOMMERCE)
    with pytest.raises(webhooks.InvalidWebhookSignature):
        receive_woo(world, WOO_PRODUCT, woo_headers(WOO_PRODUCT, secret="not-ours"))
    unsigned = woo_headers(WOO_PRODUCT)
    del unsigned["x-wc-webhook-signature"]
    with pytest.raises(webhooks.InvalidWebhookSignature):
        receive_woo(world, WOO_PRODUCT, unsigned)


def test_a_woocommerce_webhook_for_an_unknown_connection_is_ignored() -> None:
    world = World(StorePlatform.WOOCOMMERCE)
    ack = receive_woo(world, WOO_PRODUCT, woo_headers(WOO_PRODUCT), connection_id="store_old")
    assert ack.note == "ignored" and world.queue.tasks == []


def test_a_woocommerce_topic_we_do_not_work_is_ignored() -> None:
    world = World(StorePlatform.WOOCOMMERCE)
    ack = receive_woo(world, WOO_PRODUCT, woo_headers(WOO_PRODUCT, topic="order.created"))
    assert ack.note == "ignored" and world.queue.tasks == []


# -- working webhooks -----------------------------------------------------------------------------------


def _images(store_id: str, media: list[str]) -> list[StoreImage]:
    return [
        StoreImage(media_id=m, url=f"https://cdn.store.test/{store_id}/{m}.png", position=i)
        for i, m in enumerate(media)
    ]


@pytest.mark.parametrize("platform", [StorePlatform.SHOPIFY, StorePlatform.WOOCOMMERCE])
def test_an_update_mirrors_fields_and_store_images_and_leaves_our_assets(platform: StorePlatform) -> None:
    world = World(platform)
    original = store_product(1).model_copy(update={"images": _images("1001", ["m1", "m2"])})
    product = world.imported(original)
    assert [origin for origin, _ in world.origins(product).values()] == [AssetOrigin.STORE_IMPORT] * 2
    world.add_own_asset(product, AssetOrigin.GENERATED, "ast_generated")
    world.add_own_asset(product, AssetOrigin.UPLOAD, "ast_uploaded")

    changed = original.model_copy(
        update={
            "title": "Renamed",
            "description_html": "<p>new</p>",
            "tags": ["autumn"],
            "categories": [StoreCategory(id="9", name="Coats")],
            "images": _images("1001", ["m2", "m3"]),
        }
    )
    world.set_product(changed)
    note = world.work("products/update" if platform is StorePlatform.SHOPIFY else "product.updated", "1001")
    assert "updated" in note and "1 images added, 1 removed" in note
    after = world.product("1001")
    assert after is not None and after.store is not None
    assert (after.name, after.description, after.tags, after.category) == ("Renamed", "<p>new</p>", ["autumn"], "Coats")
    assert after.store.status is StoreLinkStatus.LINKED and after.store.categories == ["Coats"]
    media = {media_id for origin, media_id in world.origins(after).values() if origin is AssetOrigin.STORE_IMPORT}
    assert media == {"m2", "m3"}
    assert store_asset_id(CLIENT, platform.value, world.shop, "m1") not in world.origins(after)
    assert {"ast_generated", "ast_uploaded"} <= set(world.origins(after))
    loaded = world.stores.load(CLIENT)
    assert loaded is not None and loaded.value.last_webhook_at == NOW


def test_an_update_of_a_product_never_imported_is_left_alone_and_a_create_creates_it() -> None:
    world = World(StorePlatform.SHOPIFY)
    world.set_product(store_product(4))
    assert "left alone" in world.work("products/update", "1004") and world.product("1004") is None
    assert "created" in world.work("products/create", "1004", webhook_id="w-2")
    created = world.product("1004")
    assert created is not None and created.store is not None and created.store.product_id == "1004"


@pytest.mark.parametrize("platform", [StorePlatform.SHOPIFY, StorePlatform.WOOCOMMERCE])
def test_a_deletion_marks_the_product_and_keeps_its_assets(platform: StorePlatform) -> None:
    world = World(platform)
    product = world.imported(store_product(1, images=2))
    world.add_own_asset(product, AssetOrigin.GENERATED, "ast_generated")
    topic = "products/delete" if platform is StorePlatform.SHOPIFY else "product.deleted"
    assert "marked deleted" in world.work(topic, "1001")
    after = world.product("1001")
    assert after is not None and after.store is not None
    assert after.store.status is StoreLinkStatus.DELETED_IN_STORE
    assert len(after.images) == 3 and len(world.origins(after)) == 3


def test_an_update_for_a_product_gone_from_the_store_marks_it_deleted() -> None:
    world = World(StorePlatform.SHOPIFY)
    world.imported(store_product(1))
    del world.shopify.products["1001"]
    world.work("products/update", "1001")
    after = world.product("1001")
    assert after is not None and after.store is not None and after.store.status is StoreLinkStatus.DELETED_IN_STORE


def test_app_uninstalled_disconnects_and_unlinks_the_products() -> None:
    world = World(StorePlatform.SHOPIFY)
    for n in range(3):
        world.imported(store_product(n))
    note = world.work("app/uninstalled", None)
    assert "3 products unlinked" in note
    loaded = world.stores.load(CLIENT)
    assert loaded is not None and loaded.value.status is ConnectionStatus.DISCONNECTED and loaded.value.secrets is None
    assert world.stores.event_types() == ["store.disconnected"]
    for n in range(3):
        product = world.product(str(1000 + n))
        assert product is not None and product.store is not None
        assert product.store.status is StoreLinkStatus.UNLINKED
    # Later webhooks for the shop are dropped.
    assert "not connected" in world.work("products/update", "1001", webhook_id="w-3")


def test_shop_redact_erases_the_connection_and_the_store_links() -> None:
    world = World(StorePlatform.SHOPIFY)
    for n in range(2):
        world.imported(store_product(n))
    task = StoreWebhookTask(
        platform=StorePlatform.SHOPIFY, client_id=CLIENT, shop=SHOP, topic="shop/redact", webhook_id="w-9"
    )
    keeping.work_webhook(world.services, task)
    assert world.stores.load(CLIENT) is None
    assert world.stores.owner_of(StorePlatform.SHOPIFY, SHOP) is None
    [redaction] = world.stores.redactions
    assert (redaction.shop, redaction.client_id, redaction.erased) == (
        SHOP,
        CLIENT,
        {"connections": 1, "store_links": 2},
    )
    for n in range(2):
        product = world.product(str(1000 + n))
        assert product is not None and product.store is None  # the product stays the merchant's
        assert len(product.images) == 1


def test_shop_redact_for_an_unknown_shop_records_a_redaction() -> None:
    world = World(StorePlatform.SHOPIFY)
    task = StoreWebhookTask(
        platform=StorePlatform.SHOPIFY, client_id=None, shop="gone.myshopify.com", topic="shop/redact", webhook_id="w"
    )
    keeping.work_webhook(world.services, task)
    [redaction] = world.stores.redactions
    assert redaction.client_id is None and redaction.erased == {"connections": 0, "store_links": 0}
    assert world.stores.load(CLIENT) is not None


def test_webhooks_of_a_store_that_needs_reauthorization_are_dropped() -> None:
    world = World(StorePlatform.SHOPIFY)
    world.imported(store_product(1))
    loaded = world.stores.load(CLIENT)
    assert loaded is not None
    world.stores.update(loaded, {"status": "needs_reauth", "secrets": None})
    assert "reauthorization" in world.work("products/update", "1001")


# -- WooCommerce reconciliation ---------------------------------------------------------------------------


def test_reconciliation_repairs_webhooks_and_mirrors_products_changed_since_the_last_run() -> None:
    world = World(StorePlatform.WOOCOMMERCE)
    keys_url = webhook_url(POLICY, world.connection)
    # Our product.created webhook is gone; product.updated was disabled by the store; product.deleted is fine.
    keys = WooKeys(consumer_key=SecretStr("ck_1"), consumer_secret=SecretStr("cs_1"))
    updated = world.woo.create_webhook(
        WOO_SHOP, keys, name="u", topic="product.updated", delivery_url=keys_url, secret=HOOK_SECRET
    )
    deleted = world.woo.create_webhook(
        WOO_SHOP, keys, name="d", topic="product.deleted", delivery_url=keys_url, secret=HOOK_SECRET
    )
    world.woo.hooks[updated.id] = updated.model_copy(update={"status": "disabled"})
    world.woo.create_webhook(WOO_SHOP, keys, name="x", topic="product.created", delivery_url="https://else", secret="s")

    stale = store_product(1, updated_at=NOW - timedelta(days=2))
    world.imported(stale)
    renamed = stale.model_copy(update={"title": "Renamed in store", "updated_at": NOW - timedelta(minutes=5)})
    world.set_product(renamed)
    world.set_product(store_product(2, updated_at=NOW - timedelta(minutes=65)))  # inside the overlap: created
    world.set_product(store_product(3, updated_at=NOW - timedelta(hours=3)))  # older: not looked at

    note = reconcile.reconcile_store(
        world.services, reconcile.ReconcileStoreTask(client_id=CLIENT, connection_id="store_1")
    )
    assert note == "2 webhooks repaired, 2 changed products mirrored"
    ours = [hook for hook in world.woo.hooks.values() if hook.delivery_url == keys_url]
    assert sorted(hook.topic for hook in ours) == sorted(("product.created", "product.updated", "product.deleted"))
    assert all(hook.status == "active" for hook in ours)
    created = next(hook for hook in ours if hook.topic == "product.created")
    assert world.woo.hook_secrets[created.id] == HOOK_SECRET
    loaded = world.stores.load(CLIENT)
    assert loaded is not None
    assert (
        sorted(loaded.value.webhook_ids) == sorted(hook.id for hook in ours) and deleted.id in loaded.value.webhook_ids
    )
    assert loaded.value.reconciled_at == NOW
    renamed_doc = world.product("1001")
    assert renamed_doc is not None and renamed_doc.name == "Renamed in store"
    assert world.product("1002") is not None and world.product("1003") is None


def test_a_webhook_arriving_during_reconciliation_does_not_lose_its_record() -> None:
    world = World(StorePlatform.WOOCOMMERCE)
    world.set_product(store_product(1, updated_at=NOW - timedelta(minutes=5)))
    world.woo.during_pages.append(lambda: world.stores.touch(CLIENT, {"last_webhook_at": NOW}))
    reconcile.reconcile_store(world.services, reconcile.ReconcileStoreTask(client_id=CLIENT, connection_id="store_1"))
    loaded = world.stores.load(CLIENT)
    assert loaded is not None and loaded.value.reconciled_at == NOW and len(loaded.value.webhook_ids) == 3
    assert loaded.value.last_webhook_at == NOW


def test_a_disconnect_during_reconciliation_wins() -> None:
    from shared.stores.connections import disconnect

    world = World(StorePlatform.WOOCOMMERCE)
    world.woo.during_pages.append(lambda: disconnect(world.stores, lambda: world.woo, world.cipher, CLIENT, NOW))
    reconcile.reconcile_store(world.services, reconcile.ReconcileStoreTask(client_id=CLIENT, connection_id="store_1"))
    loaded = world.stores.load(CLIENT)
    assert loaded is not None and loaded.value.status is ConnectionStatus.DISCONNECTED
    assert loaded.value.webhook_ids == [] and loaded.value.reconciled_at == NOW - timedelta(hours=1)


def test_reconciliation_of_a_gone_connection_does_nothing() -> None:
    world = World(StorePlatform.WOOCOMMERCE)
    task = reconcile.ReconcileStoreTask(client_id=CLIENT, connection_id="store_other")
    assert "not connected" in reconcile.reconcile_store(world.services, task)
    assert world.woo.page_calls == 0


def test_reconciliations_are_queued_for_active_woocommerce_stores_once_an_hour() -> None:
    world = World(StorePlatform.WOOCOMMERCE)
    report = reconcile.queue_reconciliations(world.services, world.queue, NOW)
    again = reconcile.queue_reconciliations(world.services, world.queue, NOW + timedelta(minutes=30))
    assert report.stores == 1 and again.stores == 1 and len(world.queue.tasks) == 1


# -- linking a manual product ------------------------------------------------------------------------------


def test_a_manual_product_is_linked_and_mirrored_and_a_second_link_is_refused() -> None:
    from shared.catalog.models import ProductCreate
    from shared.catalog.products import create_product
    from shared.stores.mirror import ProductAlreadyLinked, link_product, linked_product

    world = World(StorePlatform.SHOPIFY)
    manual = create_product(world.repos.products, CLIENT, ProductCreate(name="My dress"), NOW)
    store = store_product(7, images=1)
    note = link_product(world.mirror, world.connection, manual.id, store, NOW)
    assert "updated" in note and "1 images added" in note
    linked = world.repos.products.get(CLIENT, manual.id)
    assert linked is not None and linked.store is not None and linked.store.product_id == "1007"
    assert linked.name == "Product 7"
    found = linked_product(world.mirror, world.connection, "1007")
    assert found is not None and found.id == manual.id
    other = create_product(world.repos.products, CLIENT, ProductCreate(name="Another"), NOW)
    with pytest.raises(ProductAlreadyLinked):
        link_product(world.mirror, world.connection, other.id, store, NOW)
    # Webhooks now reach the manual product.
    world.set_product(store.model_copy(update={"title": "Renamed"}))
    world.work("products/update", "1007")
    renamed = world.repos.products.get(CLIENT, manual.id)
    assert renamed is not None and renamed.name == "Renamed"


def test_disconnecting_shopify_uninstalls_the_app_and_still_disconnects_when_shopify_is_down() -> None:
    world = World(StorePlatform.SHOPIFY)
    gone = keeping.disconnect_store(world.services, CLIENT, world.queue)
    assert world.shopify.uninstalled and gone.status is ConnectionStatus.DISCONNECTED and gone.secrets is None

    down = World(StorePlatform.SHOPIFY)
    down.shopify.unavailable = True
    gone = keeping.disconnect_store(down.services, CLIENT, down.queue)
    assert not down.shopify.uninstalled and gone.status is ConnectionStatus.DISCONNECTED and gone.secrets is None


def test_a_webhook_the_store_keeps_refusing_is_retried_then_abandoned_with_an_error_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = World(StorePlatform.SHOPIFY)
    world.imported(store_product(1))
    world.shopify.unavailable = True
    task = StoreWebhookTask(
        platform=StorePlatform.SHOPIFY,
        client_id=CLIENT,
        shop=world.shop,
        topic="products/update",
        webhook_id="w-9",
        store_product_id="1001",
    )
    with pytest.raises(StoreUnavailable):  # the queue delivers it again
        keeping.work_webhook_delivery(world.services, task, last_attempt=False)
    with caplog.at_level("ERROR", logger="epox.stores.keeping"):
        outcome = keeping.work_webhook_delivery(world.services, task, last_attempt=True)
    assert outcome.startswith("abandoned after the last attempt")
    [line] = [r for r in caplog.records if r.levelname == "ERROR"]
    fields = line.fields["store_webhook_abandoned"]  # type: ignore[attr-defined]
    assert (fields["shop"], fields["topic"], fields["webhook_id"]) == (world.shop, "products/update", "w-9")
    world.shopify.unavailable = False  # the store is back: the same webhook works
    assert "abandoned" not in keeping.work_webhook_delivery(world.services, task, last_attempt=True)
