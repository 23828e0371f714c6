"""Store imports against in-memory fakes: store products as chunk rows, the preparing steps (Shopify's
bulk operation polled through delayed tasks, WooCommerce pages within a time budget), the preview, and
the chunk engine creating products keyed by the store's ids — once, however often the store is imported."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from shared.catalog import imports
from shared.catalog.csv_parsing import RowResult
from shared.catalog.imports import store_asset_id, store_product_id
from shared.catalog.models import AssetOrigin, ImportChunkTask, ImportDoc, ImportStatus, ProductSource
from shared.catalog.ports import CatalogRepositories
from shared.catalog.products import product_usage
from shared.catalog.store_link import StoreLinkStatus
from shared.imaging import ImageLimits
from shared.safe_fetch import FetchedResource, FetchLimits, SafeFetcher
from shared.stores import imports as store_imports
from shared.stores.connections import ConnectionPolicy, seal_secrets
from shared.stores.imports import PrepareImportTask, StoreImportPolicy, StoreServices, store_row
from shared.stores.models import StoreConnectionDoc, StoreImportRequest, StoreImportScope, StoreSecrets
from shared.stores.ports import StoreCategory, StoreImage, StorePlatform, StoreProduct, StoreVariant
from shared.tasks import TaskCall
from tests import images
from tests.fakes import InMemoryObjectStore, RecordingTaskQueue
from tests.fakes_catalog import InMemoryAssetRepository, InMemoryProductRepository, in_memory_catalog
from tests.fakes_stores import (
    Clock,
    FakeShopifyAdmin,
    FakeWooCommerce,
    InMemoryStoreRepository,
    catalog,
    new_cipher,
    store_product,
)

CLIENT = "client_a"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SHOP = "demo-shop.myshopify.com"
WOO_SHOP = "https://shop.example"
CONNECTION_POLICY = ConnectionPolicy(callback_base_url="https://api.epox.test", app_url="https://app.epox.test")
PREPARE = StoreImportPolicy(chunk_rows=2, budget_seconds=1.0)
CHUNKS = imports.ImportPolicy(
    chunk_rows=2,
    max_rows=1000,
    csv_max_bytes=1_000_000,
    image_limits=ImageLimits(),
    thumbnail_max_side=16,
    max_attempts=3,
    fetch_limits=FetchLimits(),
    parallel_chunks=2,
    stale_after=timedelta(minutes=30),
)
PHOTO = images.png((12, 8))


class StoreCdn(SafeFetcher):
    """Serves a small PNG for every store image URL (and counts the fetches)."""

    def __init__(self) -> None:
        super().__init__()
        self.fetched: list[str] = []

    def fetch(
        self, url: str, *, limits: FetchLimits | None = None, headers: Mapping[str, str] | None = None
    ) -> FetchedResource:
        self.fetched.append(url)
        return FetchedResource(url=url, status=200, content_type="image/png", body=PHOTO)


class World:
    def __init__(self, platform: StorePlatform, products: dict[str, StoreProduct], slots: int = 100) -> None:
        self.repos: CatalogRepositories = in_memory_catalog()
        assert isinstance(self.repos.products, InMemoryProductRepository)
        self.repos.products.billing[CLIENT] = {"plan": "starter", "product_slots": slots}
        self.object_store = InMemoryObjectStore()
        self.queue = RecordingTaskQueue()
        self.clock = Clock(NOW)
        self.stores = InMemoryStoreRepository()
        self.cipher = new_cipher()
        self.shopify = FakeShopifyAdmin(clock=self.clock, products=products)
        self.woo = FakeWooCommerce(products=products)
        self.fetcher = StoreCdn()
        self.ticks = itertools.count()
        self.services = StoreServices(
            stores=self.stores,
            cipher=self.cipher,
            shopify=lambda: self.shopify,
            woocommerce=lambda: self.woo,
            policy=CONNECTION_POLICY,
        )
        shop = SHOP if platform is StorePlatform.SHOPIFY else WOO_SHOP
        doc = StoreConnectionDoc(
            id="store_1",
            client_id=CLIENT,
            platform=platform,
            shop=shop,
            connected_at=NOW,
            updated_at=NOW,
            access_expires_at=NOW + timedelta(days=1) if platform is StorePlatform.SHOPIFY else None,
        )
        plain = (
            StoreSecrets(access_token=SecretStr("shpat_live"), refresh_token=SecretStr("shprt_live"))
            if platform is StorePlatform.SHOPIFY
            else StoreSecrets(consumer_key=SecretStr("ck_1"), consumer_secret=SecretStr("cs_1"))
        )
        self.stores.save(seal_secrets(self.cipher, doc, plain), None)
        self.connection = doc

    def monotonic(self) -> float:
        return float(next(self.ticks))

    def create(self, request: StoreImportRequest | None = None) -> ImportDoc:
        return store_imports.create_store_import(
            self.repos, self.services, self.queue, CLIENT, request or StoreImportRequest(), PREPARE, self.clock()
        )

    def prepare_all(self) -> list[str]:
        """Deliver the preparing steps (delayed ones too: the clock moves to their time)."""
        notes = []
        while self.queue.tasks:
            task = self.queue.tasks.pop(0)
            assert isinstance(task.payload, PrepareImportTask)
            if task.schedule_time is not None:
                self.clock.now = max(self.clock.now, task.schedule_time)
            notes.append(
                store_imports.prepare_store_import(
                    self.repos,
                    self.services,
                    self.object_store,
                    self.queue,
                    task.payload,
                    PREPARE,
                    self.clock,
                    monotonic=self.monotonic,
                )
            )
        return notes

    def run_all(self, import_id: str) -> ImportDoc:
        imports.start_import(self.repos, self.object_store, self.queue, CLIENT, import_id, CHUNKS, self.clock())
        while self.queue.tasks:
            task = self.queue.tasks.pop(0)
            assert isinstance(task.payload, ImportChunkTask)
            call = TaskCall(queue="q", name=task.name or "", retry_count=0, execution_count=0)
            imports.run_import_chunk(
                self.repos, self.object_store, self.queue, self.fetcher, task.payload, call, CHUNKS, self.clock()
            )
        return imports.get_import(self.repos.imports, CLIENT, import_id)

    def import_everything(self) -> ImportDoc:
        doc = self.create()
        self.prepare_all()
        return self.run_all(doc.id)

    def doc(self, import_id: str) -> ImportDoc:
        return imports.get_import(self.repos.imports, CLIENT, import_id)


# -- store products as rows --------------------------------------------------------------------------


def _row(product: StoreProduct) -> RowResult:
    return store_row(product, 3, StorePlatform.SHOPIFY, SHOP, NOW)


def test_a_store_product_becomes_a_draft_with_its_store_link() -> None:
    product = store_product(2, images=2)
    result = _row(product)
    draft = result.draft
    assert draft is not None and result.problems == ()
    assert (draft.row_number, draft.name, draft.sku, draft.price) == (3, "Product 2", "SKU-2", Decimal("19.90"))
    assert (draft.category, draft.description, draft.external_id) == ("Dresses", "<p>About product 2</p>", "1002")
    assert draft.tags == ("summer", "linen")
    assert draft.image_media_ids == ("100200", "100201") and len(draft.image_urls) == 2
    assert draft.store is not None
    assert (draft.store.platform, draft.store.shop, draft.store.product_id) == ("shopify", SHOP, "1002")
    assert draft.store.media_ids == ["100200", "100201"] and draft.store.synced_at == NOW
    assert draft.store.status is StoreLinkStatus.LINKED


def test_a_long_title_is_cut_and_a_missing_one_is_a_problem() -> None:
    long = _row(store_product(1, title="x" * 400)).draft
    assert long is not None and len(long.name) == 300
    missing = _row(store_product(1, title="   "))
    assert missing.draft is None and [p.code for p in missing.problems] == ["missing_name"]


def test_more_than_twenty_images_keep_the_first_twenty_with_a_warning() -> None:
    result = _row(store_product(1, images=23))
    assert result.draft is not None and len(result.draft.image_urls) == 20
    assert result.draft.image_media_ids[-1] == "100119"
    assert [(p.code, p.severity) for p in result.problems] == [("too_long", "warning")]


@pytest.mark.parametrize(
    ("price", "expected"),
    [
        ("19.9", Decimal("19.90")),
        ("0", Decimal("0.00")),
        ("12.345", Decimal("12.34")),  # quantized (banker's rounding)
        ("abc", None),
        ("-1", None),
        ("1e9", None),
        ("", None),
        (None, None),
    ],
)
def test_prices(price: str | None, expected: Decimal | None) -> None:
    product = StoreProduct(id="1", title="A", price=price)
    draft = _row(product).draft
    assert draft is not None and draft.price == expected


def test_the_variant_gives_sku_and_price_and_the_type_stands_in_for_a_category() -> None:
    product = StoreProduct(
        id="9",
        title="A",
        product_type="Shoes",
        tags=[" a ", "", "b", "a", "  "],
        variants=[StoreVariant(id="1"), StoreVariant(id="2", sku="S-2", price="5")],
        images=[StoreImage(media_id="m1", url=""), StoreImage(media_id="m2", url="https://cdn.test/2.png")],
    )
    draft = _row(product).draft
    assert draft is not None
    assert (draft.sku, draft.price, draft.category, draft.tags) == ("S-2", Decimal("5.00"), "Shoes", ("a", "b"))
    assert draft.image_media_ids == ("m2",)  # an image without a URL is left out


# -- Shopify: the bulk path --------------------------------------------------------------------------


def test_shopify_bulk_import_polls_with_delayed_tasks_and_ends_in_a_draft_with_a_preview() -> None:
    products = catalog(5, images=2)
    products["1003"] = products["1003"].model_copy(update={"categories": [StoreCategory(id="8", name="Shoes")]})
    world = World(StorePlatform.SHOPIFY, products, slots=4)
    world.shopify.bulk_polls = 2
    doc = world.create()
    assert doc.status is ImportStatus.PREPARING and doc.source.value == "store"
    first = world.queue.tasks[0]
    assert first.schedule_time is None and first.target == "store_tasks"

    steps: list[datetime | None] = []
    while world.queue.tasks:
        steps.append(world.queue.tasks[0].schedule_time)
        task = world.queue.tasks.pop(0)
        if task.schedule_time is not None:
            world.clock.now = task.schedule_time
        assert isinstance(task.payload, PrepareImportTask)
        store_imports.prepare_store_import(
            world.repos, world.services, world.object_store, world.queue, task.payload, PREPARE, world.clock
        )
    # step 0 starts the operation; steps 1-2 find it running; step 3 reads it: each poll a delayed task.
    assert steps[0] is None and len(steps) == 4
    assert [s - NOW for s in steps[1:] if s is not None] == [
        timedelta(seconds=1),
        timedelta(seconds=3),
        timedelta(seconds=8),
    ]

    done = world.doc(doc.id)
    assert done.status is ImportStatus.DRAFT
    assert (done.fetch["rows"], done.fetch["chunks"], done.progress.chunks_total) == (5, 3, 3)
    preview = done.preview
    assert (preview["total_products"], preview["total_images"], preview["invalid_products"]) == (5, 10, 0)
    assert preview["categories"] == [
        {"name": "Dresses", "products": 4, "images": 8},
        {"name": "Shoes", "products": 1, "images": 2},
    ]
    assert preview["completeness"] == {
        "with_description": 3,
        "with_sku": 5,
        "with_images": 5,
        "with_category": 5,
        "with_price": 5,
    }
    assert preview["slots"] == {
        "limit": 4,
        "used": 0,
        "free": 4,
        "already_imported": 0,
        "new_products": 5,
        "cost_in_slots": 5,
        "fit": 4,
        "over_limit": 1,
    }
    assert world.stores.load(CLIENT) is not None
    loaded = world.stores.load(CLIENT)
    assert loaded is not None and loaded.value.last_import_id == doc.id


def test_a_redelivered_step_does_nothing() -> None:
    world = World(StorePlatform.SHOPIFY, catalog(3))
    doc = world.create()
    step0 = world.queue.tasks[0].payload
    assert isinstance(step0, PrepareImportTask)
    world.prepare_all()
    before = world.doc(doc.id)
    note = store_imports.prepare_store_import(
        world.repos, world.services, world.object_store, world.queue, step0, PREPARE, world.clock
    )
    assert "nothing" in note
    assert world.doc(doc.id) == before and world.queue.tasks == []
    assert len(world.shopify._bulk) == 1  # no second bulk operation was started


def test_a_failed_bulk_operation_fails_the_import_with_a_reason() -> None:
    world = World(StorePlatform.SHOPIFY, catalog(3))
    world.shopify.bulk_fails = True
    doc = world.create()
    world.prepare_all()
    failed = world.doc(doc.id)
    assert failed.status is ImportStatus.FAILED
    assert failed.failure is not None and "failed" in failed.failure and "INTERNAL_SERVER_ERROR" in failed.failure
    assert failed.finished_at is not None
    # A failed import cannot be started: nothing is queued.
    imports.start_import(world.repos, world.object_store, world.queue, CLIENT, doc.id, CHUNKS, NOW)
    assert world.queue.tasks == [] and world.doc(doc.id).status is ImportStatus.FAILED


def test_a_shopify_import_of_chosen_products_reads_them_directly() -> None:
    world = World(StorePlatform.SHOPIFY, catalog(6))
    request = StoreImportRequest(scope=StoreImportScope.PRODUCTS, product_ids=["1001", "1004", "9999"])
    doc = world.create(request)
    world.prepare_all()
    done = world.doc(doc.id)
    assert done.status is ImportStatus.DRAFT and done.preview["total_products"] == 2
    assert world.shopify._bulk == {}


def test_preparing_an_import_of_a_disconnected_store_fails_it() -> None:
    world = World(StorePlatform.SHOPIFY, catalog(2))
    doc = world.create()
    loaded = world.stores.load(CLIENT)
    assert loaded is not None
    world.stores.update(loaded, {"status": "disconnected"})
    world.prepare_all()
    assert world.doc(doc.id).status is ImportStatus.FAILED


# -- WooCommerce: pages within a budget --------------------------------------------------------------


def test_woocommerce_pages_are_read_across_steps_within_the_budget() -> None:
    world = World(StorePlatform.WOOCOMMERCE, catalog(250, images=0))
    doc = world.create()
    notes = world.prepare_all()
    assert world.woo.page_calls == 3 and len(notes) == 3  # one page per step with a one-tick budget
    done = world.doc(doc.id)
    assert done.status is ImportStatus.DRAFT
    assert (done.fetch["rows"], done.fetch["chunks"]) == (250, 125)
    assert done.preview["total_products"] == 250


def test_an_unavailable_store_retries_the_step() -> None:
    world = World(StorePlatform.WOOCOMMERCE, catalog(2))
    doc = world.create()
    world.woo.unavailable = True
    task = world.queue.tasks.pop(0)
    assert isinstance(task.payload, PrepareImportTask)
    from shared.tasks import RetryTask

    with pytest.raises(RetryTask):
        store_imports.prepare_store_import(
            world.repos, world.services, world.object_store, world.queue, task.payload, PREPARE, world.clock
        )
    assert world.doc(doc.id).status is ImportStatus.PREPARING
    note = store_imports.prepare_store_import(
        world.repos,
        world.services,
        world.object_store,
        world.queue,
        task.payload,
        PREPARE,
        world.clock,
        last_attempt=True,
    )
    assert note.startswith("failed") and world.doc(doc.id).status is ImportStatus.FAILED


# -- running the chunks --------------------------------------------------------------------------------


@pytest.mark.parametrize("platform", [StorePlatform.SHOPIFY, StorePlatform.WOOCOMMERCE])
def test_the_chunks_create_products_keyed_by_the_store_with_their_images(platform: StorePlatform) -> None:
    world = World(platform, catalog(5, images=2))
    doc = world.create()
    with pytest.raises(imports.ImportNotReady):  # the catalog is still being read
        imports.start_import(world.repos, world.object_store, RecordingTaskQueue(), CLIENT, doc.id, CHUNKS, NOW)
    world.prepare_all()
    done = world.run_all(doc.id)
    assert done.status is ImportStatus.COMPLETED
    assert (done.progress.created_products, done.progress.images_imported) == (5, 10)
    shop = world.connection.shop
    for number in range(5):
        pid = str(1000 + number)
        product = world.repos.products.get(CLIENT, store_product_id(CLIENT, platform.value, shop, pid))
        assert product is not None and product.store is not None
        assert (product.store.product_id, product.store.shop, product.source) == (
            pid,
            shop,
            ProductSource(platform.value),
        )
        assert [image.asset_id for image in product.images] == [
            store_asset_id(CLIENT, platform.value, shop, f"{pid}{i:02d}") for i in range(2)
        ]
        for image in product.images:
            asset = world.repos.assets.get(CLIENT, image.asset_id)
            assert asset is not None and asset.origin is AssetOrigin.STORE_IMPORT
            assert asset.origin_media_id is not None and asset.origin_media_id.startswith(pid)


def test_importing_the_store_again_creates_no_duplicates() -> None:
    world = World(StorePlatform.SHOPIFY, catalog(4, images=2))
    first = world.import_everything()
    fetched = len(world.fetcher.fetched)
    second_doc = world.create()
    world.prepare_all()
    assert world.doc(second_doc.id).preview["slots"]["already_imported"] == 4
    assert world.doc(second_doc.id).preview["slots"]["new_products"] == 0
    second = world.run_all(second_doc.id)
    assert first.progress.created_products == 4 and second.status is ImportStatus.COMPLETED
    # Nothing new: no product, no slot, no image twice. (The second import's progress still counts the
    # four existing products as "created": the chunk engine counts rows whose product exists.)
    assert world.repos.products.count(CLIENT) == 4
    assert product_usage(world.repos.products, CLIENT).used == 4
    assert isinstance(world.repos.assets, InMemoryAssetRepository)
    assert len(world.repos.assets.assets[CLIENT]) == 8
    assert len(world.fetcher.fetched) == fetched  # stored images are not fetched again


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=30), st.integers(min_value=0, max_value=3)),
        min_size=0,
        max_size=7,
        unique_by=lambda pair: pair[0],
    ),
    st.sampled_from([StorePlatform.SHOPIFY, StorePlatform.WOOCOMMERCE]),
)
def test_any_catalog_imported_twice_is_imported_once(pairs: list[tuple[int, int]], platform: StorePlatform) -> None:
    products = {p.id: p for p in (store_product(n, images=k) for n, k in pairs)}
    world = World(platform, products)
    world.import_everything()
    world.import_everything()
    assert world.repos.products.count(CLIENT) == len(products)
    assert isinstance(world.repos.assets, InMemoryAssetRepository)
    assert len(world.repos.assets.assets.get(CLIENT, {})) == sum(k for _, k in pairs)


def test_a_store_product_linked_by_hand_is_not_imported_again() -> None:
    from shared.catalog.models import ProductCreate
    from shared.catalog.products import create_product
    from shared.stores.mirror import MirrorServices, link_product

    world = World(StorePlatform.SHOPIFY, catalog(2, images=0))
    manual = create_product(world.repos.products, CLIENT, ProductCreate(name="Mine"), NOW)
    mirror = MirrorServices(world.repos, world.object_store, world.fetcher, ImageLimits(), FetchLimits(), 16)
    link_product(mirror, world.connection, manual.id, world.shopify.products["1000"], NOW)
    world.import_everything()
    linked_to_1000 = [
        doc
        for doc in world.repos.products.linked(CLIENT, 100)
        if doc.store is not None and doc.store.product_id == "1000"
    ]
    assert [doc.id for doc in linked_to_1000] == [manual.id]
