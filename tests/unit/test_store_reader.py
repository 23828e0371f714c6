"""Reading the connected store for the API (categories, search, one product) on either platform, with
the Shopify token refreshed on the way when it is near its expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from shared.stores.connections import ConnectionPolicy, StoreNotConnected, seal_secrets
from shared.stores.imports import StoreServices
from shared.stores.models import StoreConnectionDoc, StoreSecrets
from shared.stores.ports import StorePlatform
from shared.stores.reader import StoreReader
from tests.fakes_stores import Clock, FakeShopifyAdmin, FakeWooCommerce, InMemoryStoreRepository, catalog, new_cipher

CLIENT = "client_a"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
POLICY = ConnectionPolicy(callback_base_url="https://api.epox.test", app_url="https://app.epox.test")


def reader(platform: StorePlatform) -> tuple[StoreReader, FakeShopifyAdmin, FakeWooCommerce]:
    clock = Clock(NOW)
    stores = InMemoryStoreRepository()
    cipher = new_cipher()
    products = catalog(3)
    shopify = FakeShopifyAdmin(clock=clock, products=products, collection_members={"77": set(products)})
    woo = FakeWooCommerce(products=products)
    services = StoreServices(stores, cipher, lambda: shopify, lambda: woo, POLICY)
    shopify_platform = platform is StorePlatform.SHOPIFY
    doc = StoreConnectionDoc(
        id="store_1",
        client_id=CLIENT,
        platform=platform,
        shop="demo.myshopify.com" if shopify_platform else "https://shop.example",
        connected_at=NOW,
        updated_at=NOW,
        access_expires_at=NOW + timedelta(days=1) if shopify_platform else None,
    )
    plain = (
        StoreSecrets(access_token=SecretStr("shpat_x"), refresh_token=SecretStr("shprt_x"))
        if shopify_platform
        else StoreSecrets(consumer_key=SecretStr("ck"), consumer_secret=SecretStr("cs"))
    )
    stores.save(seal_secrets(cipher, doc, plain), None)
    return StoreReader.for_client(services, CLIENT, clock), shopify, woo


@pytest.mark.parametrize("platform", [StorePlatform.SHOPIFY, StorePlatform.WOOCOMMERCE])
def test_the_reader_answers_categories_search_and_one_product(platform: StorePlatform) -> None:
    found, _, _ = reader(platform)
    categories = found.categories()
    assert [category.id for category in categories] == ["77"]
    assert [product.id for product in found.search("Product")] == ["1000", "1001", "1002"]
    one = found.product("1001")
    assert one is not None and one.title == "Product 1"
    assert found.product("9999") is None


def test_the_reader_needs_a_live_connection() -> None:
    found, _, _ = reader(StorePlatform.SHOPIFY)
    with pytest.raises(StoreNotConnected):
        StoreReader.for_client(found.services, "client_without_store", found.clock)


def test_a_shopify_search_escapes_quotes_and_backslashes() -> None:
    found, shopify, _ = reader(StorePlatform.SHOPIFY)
    found.search('12" \\ pipe')
    assert shopify.queries == ['"12\\" \\\\ pipe"']
