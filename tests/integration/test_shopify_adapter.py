"""The Shopify Admin adapter against the Shopify stub over real HTTP: OAuth tokens, cursor paging, lookups,
collections, the cost-based rate limit, transient and permanent failures, bulk operations streamed with
flat memory, and product webhooks. Time is the stub's clock: the adapter's ``sleep`` advances it."""

from __future__ import annotations

import io
import json
import logging
import socket
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr

from dev.stubs.shopify import API_VERSION, Clock, ShopifyStub, running
from shared.adapters.shopify import (
    _PRODUCTS_PAGE,
    PRODUCT_COST,
    PRODUCTS_PER_QUERY,
    ShopifyAdminClient,
    shopify_admin,
)
from shared.config import Settings
from shared.errors import EpoxError, UpstreamRejectedCredentials, VendorNotConfigured
from shared.stores.ports import (
    BulkOperation,
    BulkStatus,
    MediaState,
    StoreAuthorizationLost,
    StoreImageRejected,
    StoreMedia,
    StoreNotReachable,
    StoreProduct,
    StoreProductGone,
    StoreRequestFailed,
    StoreUnavailable,
)
from tests.http_receiver import receiving

T0 = 1_800_000_000.0
NOW = datetime.fromtimestamp(T0, UTC)
GRAPHQL = f"/admin/api/{API_VERSION}/graphql.json"


class World:
    """A stub shop, an adapter pointed at it whose sleeps advance the stub's clock, and every error raised."""

    def __init__(self, stub: ShopifyStub, **options: Any) -> None:
        self.stub = stub
        self.sleeps: list[float] = []
        self.admin = ShopifyAdminClient(
            stub.client_id,
            stub.client_secret,
            API_VERSION,
            "read_products,write_products,write_files",
            base_url_override=stub.url,
            sleep=self.sleep,
            now=lambda: NOW,
            clock=stub.clock.now,
            timeout=5.0,
            **options,
        )
        self.token = str(stub.issue_tokens()["access_token"])
        self.errors: list[EpoxError] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.stub.clock.advance(seconds)

    def raises(self, kind: type[EpoxError], call: Callable[[], Any]) -> EpoxError:
        with pytest.raises(kind) as raised:
            call()
        self.errors.append(raised.value)
        return raised.value

    def graphql_calls(self) -> int:
        return len(self.stub.seen("POST", GRAPHQL))

    def all_pages(self, first: int = 50) -> list[StoreProduct]:
        products: list[StoreProduct] = []
        cursor: str | None = None
        while True:
            page = self.admin.products_page(self.stub.shop, self.token, after=cursor, first=first)
            products += page.products
            cursor = page.next_cursor
            if cursor is None:
                return products

    def finished_bulk(self, collection_id: str | None = None) -> BulkOperation:
        operation = self.admin.start_bulk_products(self.stub.shop, self.token, collection_id)
        assert operation.status is BulkStatus.CREATED
        for _ in range(10):
            operation = self.admin.bulk_operation(self.stub.shop, self.token, operation.id)
            if operation.status not in (BulkStatus.CREATED, BulkStatus.RUNNING):
                return operation
        raise AssertionError("the bulk operation never finished")


@pytest.fixture
def world() -> Iterator[World]:
    with running(ShopifyStub(clock=Clock(frozen=T0))) as stub:
        built = World(stub)
        yield built
        built.admin.close()
        secrets = [stub.client_secret, built.token, *stub.access_tokens, *stub.refresh_tokens]
        for error in built.errors:  # no error message ever carries a credential
            text = f"{error} {error.detail} {error.extensions} {error.headers}"
            assert not [s for s in secrets if s in text], text


def test_authorize_url_is_accepted_and_the_code_buys_an_expiring_pair(world: World) -> None:
    stub, admin = world.stub, world.admin
    url = admin.authorize_url(stub.shop, "nonce & more", "https://app.test/shopify/callback?x=1")
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    assert parts.path == "/admin/oauth/authorize" and "grant_options" not in url
    assert query == {
        "client_id": stub.client_id,
        "scope": "read_products,write_products,write_files",
        "redirect_uri": "https://app.test/shopify/callback?x=1",
        "state": "nonce & more",
    }
    answer = httpx.get(url, trust_env=False)
    assert answer.status_code == 302
    callback = dict(parse_qsl(urlsplit(answer.headers["Location"]).query))
    assert callback["state"] == "nonce & more"

    tokens = admin.exchange_code(stub.shop, callback["code"])
    access = tokens.access_token.get_secret_value()
    assert stub.token_valid(access) and tokens.refresh_token is not None
    assert tokens.access_expires_at == NOW + timedelta(seconds=3600)
    assert tokens.refresh_expires_at == NOW + timedelta(days=90)
    assert tokens.scopes == ["read_products", "write_products", "write_files"]
    [sent] = stub.seen("POST", "/admin/oauth/access_token")
    assert json.loads(sent.body)["expiring"] == 1

    world.raises(StoreRequestFailed, lambda: admin.exchange_code(stub.shop, callback["code"]))  # single use


def test_refresh_rotates_and_the_used_token_lasts_until_its_replacement_is_used(world: World) -> None:
    stub, admin = world.stub, world.admin
    first = str(stub.issue_tokens()["refresh_token"])
    second = admin.refresh(stub.shop, first)
    assert second.refresh_token is not None
    second_refresh = second.refresh_token.get_secret_value()
    assert second_refresh != first and stub.token_valid(second.access_token.get_secret_value())
    retried = admin.refresh(stub.shop, first)  # a lost answer: the old token still works
    assert retried.refresh_token is not None and retried.refresh_token.get_secret_value() == second_refresh
    third = admin.refresh(stub.shop, second_refresh)
    assert third.refresh_token is not None and third.refresh_token.get_secret_value() not in (first, second_refresh)
    world.raises(StoreAuthorizationLost, lambda: admin.refresh(stub.shop, first))  # retired by its replacement's use


def test_a_revoked_shop_refuses_the_refresh_and_the_api(world: World) -> None:
    stub, admin = world.stub, world.admin
    refresh = str(stub.issue_tokens()["refresh_token"])
    stub.revoke()
    world.raises(StoreAuthorizationLost, lambda: admin.refresh(stub.shop, refresh))
    world.raises(StoreAuthorizationLost, lambda: admin.products_page(stub.shop, world.token))
    world.raises(StoreAuthorizationLost, lambda: admin.collections(stub.shop, "shpat_unknown"))


def test_token_endpoint_failures_are_classified(world: World) -> None:
    stub = world.stub
    wrong = ShopifyAdminClient(
        stub.client_id, "not-the-secret", API_VERSION, "read_products", base_url_override=stub.url
    )
    error = world.raises(UpstreamRejectedCredentials, lambda: wrong.refresh(stub.shop, "shprt_x"))
    assert "not-the-secret" not in str(error)
    refresh = str(stub.issue_tokens()["refresh_token"])
    stub.fail("503", path="/admin/oauth/access_token")
    world.raises(StoreUnavailable, lambda: world.admin.refresh(stub.shop, refresh))
    stub.fail("malformed", path="/admin/oauth/access_token")
    world.raises(StoreRequestFailed, lambda: world.admin.refresh(stub.shop, refresh))
    world.raises(StoreNotReachable, lambda: world.admin.refresh("evil.example.com", refresh))


def test_cursor_paging_reads_the_fifty_products_with_their_fields(world: World) -> None:
    stub = world.stub
    products = world.all_pages(first=50)
    assert [p.id for p in products] == [str(p.id) for p in stub.catalog.products.values()]
    assert world.graphql_calls() == -(-50 // PRODUCTS_PER_QUERY)
    source = stub.product(7)
    got = products[7]
    assert (got.title, got.handle, got.description_html, got.product_type, got.vendor, got.status) == (
        source.title,
        source.handle,
        source.description_html,
        source.product_type,
        source.vendor,
        "active",
    )
    assert got.tags == source.tags and got.updated_at == datetime.fromisoformat(source.updated_at)
    assert [(v.id, v.sku, v.price, v.title) for v in got.variants] == [
        (str(v.id), v.sku, v.price, v.title) for v in source.variants
    ]
    assert all(len(v.options) == 1 for v in got.variants)
    assert [(i.media_id, i.position, i.alt, i.width) for i in got.images] == [
        (str(m.id), n, m.alt, m.width) for n, m in enumerate(source.media)
    ]
    assert got.images[0].url == f"{stub.url}{source.media[0].path}?v=1"
    assert [c.id for c in got.categories] == [str(c.id) for c in stub.catalog.collections_of(source.id)]
    single = next(p for p in products if len(p.variants) == 1)
    assert single.sku == single.variants[0].sku and single.price == single.variants[0].price
    cost = stub.graphql({"query": _PRODUCTS_PAGE, "variables": {"first": PRODUCTS_PER_QUERY}})["extensions"]["cost"]
    assert cost["requestedQueryCost"] == 2 + PRODUCTS_PER_QUERY * PRODUCT_COST <= 1000  # our pacing's estimate


def test_search_lookups_and_collections(world: World) -> None:
    stub, admin = world.stub, world.admin
    gifts = admin.products_page(stub.shop, world.token, query="collection_id:500001 tag:demo", first=19)
    assert [p.id for p in gifts.products] == [str(i) for i in sorted(stub.catalog.collections[500001].product_ids)]
    wanted = [str(stub.product(3).id), "999", "not-a-number", str(stub.product(40).id), str(stub.product(21).id)]
    found = admin.products_by_ids(stub.shop, world.token, wanted)
    assert [p.id for p in found] == [wanted[0], wanted[3], wanted[4]]
    many = admin.products_by_ids(stub.shop, world.token, [str(p) for p in stub.catalog.products])
    assert len(many) == 50 and many == world.all_pages()

    collections = admin.collections(stub.shop, world.token)
    assert [(c.id, c.name, c.product_count) for c in collections] == [
        (str(c.id), c.title, len(c.product_ids)) for c in stub.catalog.collections.values()
    ]


def test_a_drained_bucket_is_waited_out(world: World) -> None:
    stub = world.stub
    stub.drain(1000)
    page = world.admin.products_page(stub.shop, world.token, first=PRODUCTS_PER_QUERY)
    assert len(page.products) == PRODUCTS_PER_QUERY
    expected = (2 + PRODUCTS_PER_QUERY * PRODUCT_COST) / stub.restore_rate
    assert world.sleeps == [pytest.approx(expected)]
    assert world.graphql_calls() == 2  # one THROTTLED answer, then the page


def test_pages_are_paced_before_the_bucket_runs_dry(world: World) -> None:
    world.all_pages()
    assert world.graphql_calls() == 3  # no THROTTLED answer: the adapter waited for the restore first
    assert len(world.sleeps) == 2 and all(0 < s < 10 for s in world.sleeps)


def test_concurrent_callers_take_their_points_as_they_send_instead_of_hammering_the_bucket() -> None:
    import threading

    # Real time: six threads share one adapter against a small bucket (100 points, 100/s).
    with running(ShopifyStub(bucket_size=100, restore_rate=100)) as stub:
        admin = ShopifyAdminClient(
            stub.client_id, stub.client_secret, API_VERSION, "read_products", base_url_override=stub.url
        )
        token = str(stub.issue_tokens()["access_token"])
        admin.products_page(stub.shop, token, first=1)  # the adapter learns the bucket
        pages: list[int] = []

        def read() -> None:
            for _ in range(2):
                pages.append(len(admin.products_page(stub.shop, token, first=1).products))

        threads = [threading.Thread(target=read) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        admin.close()
        assert pages == [1] * 12
        # Each call waits for points the others have not taken; an answer's status (which does not know of
        # requests still in flight) can let one through early, never the herd of six.
        assert stub.throttled <= 2


def test_throttling_beyond_the_allowed_wait_is_unavailable() -> None:
    with running(ShopifyStub(clock=Clock(frozen=T0))) as stub:
        world = World(stub, max_throttle_wait=2.0)
        stub.drain(1000)
        error = world.raises(StoreUnavailable, lambda: world.admin.products_page(stub.shop, world.token, first=19))
        assert error.headers["Retry-After"] == "10"  # 990 points at 100/s
        assert sum(world.sleeps) <= 2.0


def test_transient_failures_are_retried_then_unavailable(world: World) -> None:
    stub, admin = world.stub, world.admin
    stub.fail("503", times=1, path=GRAPHQL)
    assert len(admin.products_page(stub.shop, world.token, first=5).products) == 5
    assert world.graphql_calls() == 2

    stub.fail("503", times=3, path=GRAPHQL)
    world.raises(StoreUnavailable, lambda: admin.collections(stub.shop, world.token))
    assert world.graphql_calls() == 2 + 3

    stub.fail("429", times=3, path=GRAPHQL)
    error = world.raises(StoreUnavailable, lambda: admin.collections(stub.shop, world.token))
    assert error.headers["Retry-After"] == "2"

    stub.fail("drop", times=3, path=GRAPHQL)
    world.raises(StoreUnavailable, lambda: admin.collections(stub.shop, world.token))

    stub.fail("malformed", times=1, path=GRAPHQL)
    world.raises(StoreRequestFailed, lambda: admin.collections(stub.shop, world.token))


def test_permanent_graphql_failures(world: World) -> None:
    stub = world.stub
    stale = ShopifyAdminClient(stub.client_id, stub.client_secret, "1999-01", "", base_url_override=stub.url)
    world.raises(StoreRequestFailed, lambda: stale.collections(stub.shop, world.token))  # 404: no such version
    bare = str(stub.issue_tokens(scope="write_files")["access_token"])
    world.raises(StoreAuthorizationLost, lambda: world.admin.products_page(stub.shop, bare))  # ACCESS_DENIED
    error = world.raises(StoreRequestFailed, lambda: world.admin.products_page(stub.shop, world.token, after="junk"))
    assert "cursor" in str(error)


def test_a_bulk_operation_streams_what_paging_reads(world: World) -> None:
    operation = world.finished_bulk()
    assert operation.status is BulkStatus.COMPLETED and operation.url
    assert operation.root_object_count == 50 and operation.object_count > 50
    streamed = list(world.admin.stream_bulk_products(operation.url))
    assert streamed == world.all_pages()

    gifts = world.finished_bulk(collection_id="500001")
    assert gifts.url is not None
    ids = [p.id for p in world.admin.stream_bulk_products(gifts.url)]
    assert ids == [str(i) for i in sorted(world.stub.catalog.collections[500001].product_ids)]


def test_a_failed_bulk_operation_keeps_its_error_code(world: World) -> None:
    world.stub.fail_next_bulk("TIMEOUT")
    operation = world.finished_bulk()
    assert (operation.status, operation.error_code, operation.url) == (BulkStatus.FAILED, "TIMEOUT", None)
    world.raises(StoreRequestFailed, lambda: world.admin.bulk_operation(world.stub.shop, world.token, "nope"))


def test_an_expired_bulk_result_is_a_failed_request(world: World) -> None:
    operation = world.finished_bulk()
    assert operation.url is not None
    world.stub.clock.advance(8 * 24 * 3600)
    world.raises(StoreRequestFailed, lambda: list(world.admin.stream_bulk_products(operation.url or "")))


def test_a_large_catalog_streams_in_flat_memory() -> None:
    with running(ShopifyStub(clock=Clock(frozen=T0), product_count=5000)) as stub:
        world = World(stub)
        operation = world.finished_bulk()
        assert operation.url is not None and operation.root_object_count == 5000
        size = len(stub.bulk_operations[max(stub.bulk_operations)].jsonl or b"")
        assert size > 3 * 1024 * 1024  # reading the file whole would not fit the bound below
        tracemalloc.start()
        try:
            count = 0
            variants = 0
            for product in world.admin.stream_bulk_products(operation.url):
                count += 1
                variants += len(product.variants)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert count == 5000 and variants == sum(len(p.variants) for p in stub.catalog.products.values())
        assert peak < 3 * 1024 * 1024, peak


def test_product_webhooks_map_to_the_same_product(world: World) -> None:
    stub, admin = world.stub, world.admin
    sink = f"{stub.url}/hooks"  # nobody answers there; the delivered body is recorded all the same
    delivery = stub.update_product(4, sink, title="Renamed Mug", tags=["renamed", "demo"])
    assert delivery is not None and delivery.topic == "products/update"
    hooked = admin.product_from_webhook(json.loads(delivery.body))
    [read] = admin.products_by_ids(stub.shop, world.token, [hooked.id])
    assert hooked.title == "Renamed Mug" and hooked.tags == ["renamed", "demo"]
    assert hooked.model_dump(exclude={"categories"}) == read.model_dump(exclude={"categories"})

    image = stub.add_image(4, alt="processing", status="PROCESSING")
    delivery = stub.update_product(4, sink)
    assert delivery is not None
    hooked = admin.product_from_webhook(json.loads(delivery.body))
    assert str(image.id) not in [i.media_id for i in hooked.images]  # only READY images count

    created, delivery = stub.create_product("Gift Card Holder", sink)
    assert delivery is not None and delivery.topic == "products/create"
    fresh = admin.product_from_webhook(json.loads(delivery.body))
    assert (fresh.id, fresh.title, fresh.sku, fresh.variants[0].options) == (
        str(created.id),
        "Gift Card Holder",
        created.variants[0].sku,
        {"Title": "Default Title"},
    )
    for garbage in ({}, {"id": "x", "title": "t"}, {"id": 1, "title": 5}, {"id": 1, "title": "t", "variants": [5]}):
        world.raises(StoreRequestFailed, lambda garbage=garbage: admin.product_from_webhook(garbage))


def test_no_credential_reaches_the_logs(world: World, caplog: pytest.LogCaptureFixture) -> None:
    stub, admin = world.stub, world.admin
    refresh = str(stub.issue_tokens()["refresh_token"])
    with caplog.at_level(logging.DEBUG):
        stub.fail("503", times=1 + 3)  # the refresh is not retried, the read is tried three times
        world.raises(StoreUnavailable, lambda: admin.refresh(stub.shop, refresh))
        world.raises(StoreUnavailable, lambda: admin.products_page(stub.shop, world.token))
        stub.revoke()
        world.raises(StoreAuthorizationLost, lambda: admin.refresh(stub.shop, refresh))
    logged = " ".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records)
    assert "shopify" in logged.lower()
    for secret in (stub.client_secret, world.token, refresh):
        assert secret not in logged


def test_the_factory_needs_the_app_credentials() -> None:
    with pytest.raises(VendorNotConfigured) as raised:
        shopify_admin(Settings(epox_env="development", shopify_client_id="id"))
    assert raised.value.extensions["settings"] == ["SHOPIFY_CLIENT_SECRET"]
    built = shopify_admin(
        Settings(epox_env="development", shopify_client_id="id", shopify_client_secret=SecretStr("s3cret-value"))
    )
    assert built.api_version == "2026-10" and "s3cret-value" not in repr(built)


# -- images (sync-back): pushed by URL from our object store, polled, ordered, taken off ------------------


def png_bytes(width: int, height: int, mode: str = "RGB") -> bytes:
    picture = Image.new(mode, (width, height), 128 if mode == "L" else (30, 90, 160))
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def source(object_store: Any) -> Callable[..., str]:
    """Upload bytes to the local object store and answer their presigned GET URL (what we hand Shopify)."""

    def presigned(data: bytes | None, name: str = "ai-image.png", content_type: str = "image/png") -> str:
        key = f"tests/shopify-sync/{uuid.uuid4().hex}/{name}"
        if data is not None:  # None: a key that was never written (the store answers 404)
            object_store.put(key, data, content_type)
        return str(object_store.presigned_get(key, expires_in=3600))

    return presigned


def ready(world: World, media_id: str, reads: int = 5) -> StoreMedia | None:
    """Poll the media until it is no longer UPLOADED/PROCESSING (None: it disappeared)."""
    for _ in range(reads):
        states = world.admin.media_states(world.stub.shop, world.token, [media_id])
        if media_id not in states or states[media_id].state in (MediaState.READY, MediaState.FAILED):
            return states.get(media_id)
    raise AssertionError("the media never finished processing")


def test_a_pushed_image_is_appended_and_polled_to_ready(world: World, source: Callable[..., str]) -> None:
    stub, admin = world.stub, world.admin
    product = stub.product(1)
    before = [m.id for m in product.media]
    picture = png_bytes(64, 48)
    pushed = admin.add_product_image(
        stub.shop, world.token, str(product.id), source_url=source(picture, "linen-tote-ai.png"), alt="A linen tote"
    )
    assert (pushed.state, pushed.alt, pushed.url) == (MediaState.UPLOADED, "A linen tote", None)
    assert [m.id for m in stub.product_media(product.id)] == [*before, int(pushed.media_id)]  # appended, not replaced

    first = admin.media_states(stub.shop, world.token, [pushed.media_id, "not-a-number"])
    assert list(first) == [pushed.media_id] and first[pushed.media_id].state is MediaState.PROCESSING
    done = admin.media_states(stub.shop, world.token, [pushed.media_id])[pushed.media_id]
    assert done.state is MediaState.READY and done.error_code is None and done.url is not None
    assert done.url.startswith(f"{stub.url}/cdn/shop/files/linen-tote-ai")
    assert httpx.get(done.url, trust_env=False).content == picture  # the stub CDN serves what it downloaded

    images = admin.product_images(stub.shop, world.token, str(product.id))
    assert [i.media_id for i in images] == [*map(str, before), pushed.media_id]
    last = images[-1]
    assert (last.alt, last.position, last.width, last.height) == ("A linen tote", len(before), 64, 48)
    assert [m.status for m in stub.product_media(product.id)] == ["READY"] * (len(before) + 1)


def test_failed_downloads_keep_shopify_s_error_code(world: World, source: Callable[..., str]) -> None:
    stub, admin = world.stub, world.admin
    product = str(stub.product(2).id)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{closed.getsockname()[1]}/gone.png"  # nothing listens there
    sources = [source(None), source(b"<html>not an image</html>", "page.png", "text/html"), refused]
    pushed = [admin.add_product_image(stub.shop, world.token, product, source_url=s, alt="x") for s in sources]
    for media in pushed:
        failed = ready(world, media.media_id)
        assert failed is not None and failed.state is MediaState.FAILED
        assert failed.error_code == "IMAGE_DOWNLOAD_FAILURE" and failed.error_message and failed.url is None
    stub.fail_next_media("IMAGE_PROCESSING_FAILURE")
    broken = admin.add_product_image(stub.shop, world.token, product, source_url=source(png_bytes(8, 8)), alt="y")
    failed = ready(world, broken.media_id)
    assert failed is not None and failed.error_code == "IMAGE_PROCESSING_FAILURE"
    # failed media stay on the product (as on Shopify), but they are not images of it
    statuses = [m.status for m in stub.product_media(product)]
    assert statuses[-4:] == ["FAILED"] * 4
    assert all(
        i.media_id not in {m.media_id for m in pushed} for i in admin.product_images(stub.shop, world.token, product)
    )


def test_an_image_over_twenty_megapixels_is_dropped(world: World, source: Callable[..., str]) -> None:
    stub, admin = world.stub, world.admin
    product = str(stub.product(3).id)
    huge = admin.add_product_image(
        stub.shop, world.token, product, source_url=source(png_bytes(5000, 4001, "L")), alt="too big"
    )
    assert ready(world, huge.media_id) is None  # gone: media_states leaves it out
    assert int(huge.media_id) not in [m.id for m in stub.product_media(product)]
    assert stub.file(huge.media_id) is None


def test_a_reorder_makes_our_image_the_featured_one(world: World, source: Callable[..., str]) -> None:
    stub, admin = world.stub, world.admin
    product = stub.product(4)
    pushed = admin.add_product_image(
        stub.shop, world.token, str(product.id), source_url=source(png_bytes(32, 32)), alt="ours"
    )
    assert ready(world, pushed.media_id) is not None
    admin.reorder_product_images(stub.shop, world.token, str(product.id), [(pushed.media_id, 0)])
    [sent] = [json.loads(r.body) for r in stub.seen("POST", GRAPHQL) if b"productReorderMedia" in r.body]
    assert sent["variables"]["moves"] == [{"id": f"gid://shopify/MediaImage/{pushed.media_id}", "newPosition": "0"}]
    images = admin.product_images(stub.shop, world.token, str(product.id))
    assert (images[0].media_id, images[0].position) == (pushed.media_id, 0)
    [looked_up] = admin.products_by_ids(stub.shop, world.token, [str(product.id)])
    assert looked_up.images[0].media_id == pushed.media_id  # featuredMedia / first media follow
    featured = stub.graphql({"query": "query($id: ID!) { product(id: $id) { featuredMedia { id } } }",
                             "variables": {"id": product.gid}})  # fmt: skip
    assert featured["data"]["product"]["featuredMedia"]["id"] == f"gid://shopify/MediaImage/{pushed.media_id}"
    admin.reorder_product_images(stub.shop, world.token, str(product.id), [(pushed.media_id, 99)])  # past the end
    assert stub.product_media(product.id)[-1].id == int(pushed.media_id)
    admin.reorder_product_images(stub.shop, world.token, str(product.id), [])  # nothing to move: no call
    error = world.raises(
        StoreImageRejected,
        lambda: admin.reorder_product_images(stub.shop, world.token, str(product.id), [("123", 0)]),
    )
    assert "does not exist" in str(error)


def test_removing_ours_leaves_the_merchant_s_images_and_the_file(world: World, source: Callable[..., str]) -> None:
    stub, admin = world.stub, world.admin
    product = stub.product(5)
    merchant = [m.id for m in product.media]
    pushed = admin.add_product_image(
        stub.shop, world.token, str(product.id), source_url=source(png_bytes(16, 16)), alt="ours"
    )
    error = world.raises(
        StoreUnavailable,
        lambda: admin.remove_product_images(stub.shop, world.token, str(product.id), [pushed.media_id]),
    )
    assert "processing" in str(error)  # NON_READY_STATE: Shopify updates READY files only
    assert ready(world, pushed.media_id) is not None
    admin.remove_product_images(stub.shop, world.token, str(product.id), ["999999", pushed.media_id])
    assert [m.id for m in stub.product_media(product.id)] == merchant
    kept = stub.file(pushed.media_id)
    assert kept is not None and kept.status == "READY"  # fileUpdate takes it off the product; Files keep it
    assert admin.media_states(stub.shop, world.token, [pushed.media_id])[pushed.media_id].state is MediaState.READY
    admin.remove_product_images(stub.shop, world.token, str(product.id), [pushed.media_id])  # again: done
    calls = [json.loads(r.body) for r in stub.seen("POST", GRAPHQL) if b"fileUpdate" in r.body]
    assert calls[-1]["variables"]["files"] == [
        {"id": f"gid://shopify/MediaImage/{pushed.media_id}", "referencesToRemove": [product.gid]}
    ]


def test_a_failed_media_cannot_be_taken_off_with_file_update(world: World, source: Callable[..., str]) -> None:
    stub, admin = world.stub, world.admin
    product = str(stub.product(6).id)
    failed = admin.add_product_image(stub.shop, world.token, product, source_url=source(None), alt="x")
    assert ready(world, failed.media_id) is not None
    world.raises(
        StoreImageRejected, lambda: admin.remove_product_images(stub.shop, world.token, product, [failed.media_id])
    )


def test_image_calls_wait_out_throttling_and_retry_reads(world: World, source: Callable[..., str]) -> None:
    stub, admin = world.stub, world.admin
    product = str(stub.product(8).id)
    stub.drain(stub.currently_available)
    pushed = admin.add_product_image(stub.shop, world.token, product, source_url=source(png_bytes(8, 8)), alt="z")
    assert world.sleeps and pushed.state is MediaState.UPLOADED
    stub.drain(stub.currently_available)
    images = admin.product_images(stub.shop, world.token, product)  # 503 points: paced or THROTTLED, then read
    assert len(images) == len(stub.product(8).media) - 1
    stub.fail("503", path=GRAPHQL)
    assert pushed.media_id in admin.media_states(stub.shop, world.token, [pushed.media_id])
    calls = world.graphql_calls()
    stub.fail("503", path=GRAPHQL)  # a push is not retried: a second try could append the image twice
    world.raises(
        StoreUnavailable,
        lambda: admin.add_product_image(stub.shop, world.token, product, source_url=source(png_bytes(8, 8)), alt="z"),
    )
    assert world.graphql_calls() == calls + 1 and len(stub.product_media(product)) == len(images) + 1


def test_many_media_states_are_read_fifty_at_a_time(world: World, source: Callable[..., str]) -> None:
    stub, admin = world.stub, world.admin
    known = [str(m.id) for p in list(stub.catalog.products.values())[:30] for m in p.media]
    calls = world.graphql_calls()
    states = admin.media_states(stub.shop, world.token, [*known, "42"])
    assert sorted(states) == sorted(known) and all(s.state is MediaState.READY for s in states.values())
    assert world.graphql_calls() == calls + -(-(len(known) + 1) // 50)


def test_a_deleted_product_is_gone_for_every_image_call(world: World, source: Callable[..., str]) -> None:
    stub, admin = world.stub, world.admin
    product = stub.product(9)
    media = str(product.media[0].id)
    stub.delete_product(product.id)
    pid = str(product.id)
    world.raises(StoreProductGone, lambda: admin.product_images(stub.shop, world.token, pid))
    world.raises(
        StoreProductGone,
        lambda: admin.add_product_image(stub.shop, world.token, pid, source_url=source(png_bytes(8, 8)), alt="a"),
    )
    world.raises(StoreProductGone, lambda: admin.reorder_product_images(stub.shop, world.token, pid, [(media, 0)]))
    world.raises(StoreProductGone, lambda: admin.product_images(stub.shop, world.token, "not-a-product"))
    admin.remove_product_images(stub.shop, world.token, pid, [media])  # nothing left to take off: done
    assert admin.media_states(stub.shop, world.token, [media]) == {}


def test_a_merchant_removal_reaches_us_as_a_products_update(world: World, source: Callable[..., str]) -> None:
    stub, admin = world.stub, world.admin
    product = stub.product(10)
    pushed = admin.add_product_image(
        stub.shop, world.token, str(product.id), source_url=source(png_bytes(8, 8)), alt="ours"
    )
    assert ready(world, pushed.media_id) is not None
    with receiving() as endpoint:
        delivery = stub.merchant_removes_media(product.id, pushed.media_id, url=endpoint.url())
    assert delivery is not None and delivery.status == 200
    [received] = endpoint.received
    assert received.headers["x-shopify-topic"] == "products/update"
    payload = json.loads(received.body)
    assert int(pushed.media_id) not in [m["id"] for m in payload["media"]] + [i["id"] for i in payload["images"]]
    assert pushed.media_id not in [i.media_id for i in admin.product_from_webhook(payload).images]
    assert stub.file(pushed.media_id) is not None  # the merchant took it off the product; the file stays
