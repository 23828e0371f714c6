"""The WooCommerce adapter against the WooCommerce stub over real HTTP, through a real SafeFetcher that
may reach loopback (as FETCH_ALLOWED_NETWORKS lets the dev stack) and nothing else private."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from ipaddress import ip_network
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from pydantic import SecretStr

from dev.stubs.woocommerce import API, UPLOADS, WooStub, png, running
from shared.adapters.woocommerce import WooCommerceClient, woocommerce_api
from shared.config import Settings
from shared.retry import RetryPolicy
from shared.safe_fetch import AddressPolicy, SafeFetcher
from shared.stores.ports import (
    StoreAuthorizationLost,
    StoreImageRejected,
    StoreNotReachable,
    StoreProduct,
    StoreProductGone,
    StoreRequestFailed,
    StoreUnavailable,
    WooImageRef,
    WooKeys,
)
from shared.stores.signatures import body_is_authentic
from tests.http_receiver import Receiver, receiving

SECRET = "our-webhook-secret"
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)  # the demo store's product i was modified at EPOCH + i hours
DEAD = "http://127.0.0.1:9/hook"  # nothing listens (the discard port): a creation ping fails at once
NO_WAIT = RetryPolicy(attempts=3, base=0.0, cap=0.0, deadline=10.0)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as sink:
        yield sink


@pytest.fixture
def store() -> Iterator[WooStub]:
    with running() as stub:
        yield stub


@pytest.fixture
def fetcher() -> Iterator[SafeFetcher]:
    # The platform's fetcher with FETCH_ALLOWED_NETWORKS=127.0.0.0/8: loopback on any port, nothing else private.
    with SafeFetcher(policy=AddressPolicy(extra_allowed_networks=[ip_network("127.0.0.0/8")])) as safe:
        yield safe


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def woo(fetcher: SafeFetcher, sleeps: list[float]) -> WooCommerceClient:
    return WooCommerceClient(fetcher, allow_http=True, retry=NO_WAIT, sleep=sleeps.append)


@pytest.fixture
def keys(store: WooStub) -> WooKeys:
    key = store.add_key()
    return WooKeys(key_id=key.key_id, consumer_key=key.consumer_key, consumer_secret=key.consumer_secret)


def every_product(woo: WooCommerceClient, store: WooStub, keys: WooKeys, **filters: Any) -> list[StoreProduct]:
    products: list[StoreProduct] = []
    cursor: str | None = "1"
    while cursor is not None:
        page = woo.products_page(store.url, keys, page=int(cursor), **filters)
        products.extend(page.products)
        cursor = page.next_cursor
    return products


def api_requests(store: WooStub) -> list[str]:
    return [f"{r.method} {r.path}" for r in store.requests if r.path.startswith(API)]


# -- addresses -------------------------------------------------------------------------------------


def test_the_store_url_is_normalised(woo: WooCommerceClient, store: WooStub) -> None:
    assert woo.check_store_url(store.url + "/?utm=1#top") == store.url
    assert woo.check_store_url(f" HTTP://127.0.0.1:{store.port}/shop/ ") == f"http://127.0.0.1:{store.port}/shop"
    assert store.requests == []  # checked without contacting the store


@pytest.mark.parametrize(
    "url",
    [
        "http://user:pw@127.0.0.1:{port}",
        "ftp://127.0.0.1:{port}",
        "http://10.0.0.1:{port}",
        "http://[::1]:{port}",
        "http://127.0.0.1:99999",
    ],
)
def test_addresses_that_may_not_be_contacted(woo: WooCommerceClient, store: WooStub, url: str) -> None:
    with pytest.raises(StoreNotReachable) as caught:
        woo.check_store_url(url.format(port=store.port))
    assert "pw" not in str(caught.value)
    assert store.requests == []


def test_http_needs_the_development_setting(fetcher: SafeFetcher, store: WooStub, keys: WooKeys) -> None:
    strict = WooCommerceClient(fetcher)
    with pytest.raises(StoreNotReachable, match="https"):
        strict.check_store_url(store.url)
    with pytest.raises(StoreNotReachable):
        strict.check_keys(store.url, keys)
    assert store.requests == []
    dev = Settings(epox_env="development", woocommerce_allow_http=True)
    woocommerce_api(dev, fetcher).check_keys(store.url, keys)
    with pytest.raises(StoreNotReachable):
        woocommerce_api(Settings(epox_env="development"), fetcher).check_store_url(store.url)


def test_a_private_address_needs_the_allowed_network(store: WooStub, keys: WooKeys) -> None:
    with SafeFetcher() as production_fetcher:  # the default policy: public addresses only
        woo = WooCommerceClient(production_fetcher, allow_http=True)
        with pytest.raises(StoreNotReachable):
            woo.check_store_url(store.url)
        with pytest.raises(StoreNotReachable):
            woo.check_keys(store.url, keys)
        with pytest.raises(StoreNotReachable):
            woo.create_webhook(store.url, keys, name="x", topic="product.updated", delivery_url=DEAD, secret="s")
    assert store.requests == []


# -- wc-auth and keys ------------------------------------------------------------------------------


def test_authorize_url_grants_read_write_keys_that_work(
    woo: WooCommerceClient, store: WooStub, receiver: Receiver
) -> None:
    url = woo.authorize_url(
        store.url + "/",
        app_name="Epox",
        user_id="nonce 1&2",
        return_url="https://app.example/back?x=1",
        callback_url=receiver.url("/callback"),
    )
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == store.url + "/wc-auth/v1/authorize"
    assert dict(parse_qsl(parts.query)) == {
        "app_name": "Epox",
        "scope": "read_write",
        "user_id": "nonce 1&2",
        "return_url": "https://app.example/back?x=1",
        "callback_url": receiver.url("/callback"),
    }

    landed = httpx.get(url, follow_redirects=False, trust_env=False)  # the merchant's browser; approved at once
    assert landed.status_code == 302
    assert dict(parse_qsl(urlsplit(landed.headers["location"]).query))["success"] == "1"
    [body] = [item.body for item in receiver.received]
    granted = json.loads(body)
    keys = WooKeys(
        key_id=granted["key_id"],
        consumer_key=granted["consumer_key"],
        consumer_secret=granted["consumer_secret"],
        permissions=granted["key_permissions"],
    )
    woo.check_keys(store.url, keys)


def test_keys_go_in_basic_auth_never_in_the_url(woo: WooCommerceClient, store: WooStub, keys: WooKeys) -> None:
    woo.check_keys(store.url, keys)
    [seen] = store.seen("GET", API + "/products")
    assert seen.headers["authorization"].startswith("Basic ")
    assert "consumer_key" not in seen.query and "consumer_secret" not in seen.query


def test_refused_keys_lose_the_authorization_without_naming_them(
    woo: WooCommerceClient, store: WooStub, keys: WooKeys
) -> None:
    wrong_secret = keys.model_copy(update={"consumer_secret": SecretStr("cs_wrong_secret")})
    with pytest.raises(StoreAuthorizationLost) as caught:
        woo.check_keys(store.url, wrong_secret)
    assert "woocommerce_rest_authentication_error" in str(caught.value)

    store.keys.clear()  # the merchant revoked the key in WooCommerce → Settings → Advanced → REST API
    for call in (
        lambda: woo.check_keys(store.url, keys),
        lambda: woo.categories(store.url, keys),
        lambda: woo.products_page(store.url, keys),
        lambda: woo.create_webhook(store.url, keys, name="n", topic="product.updated", delivery_url=DEAD, secret="s"),
    ):
        with pytest.raises(StoreAuthorizationLost) as caught:
            call()
        text = f"{caught.value} {caught.value.detail} {caught.value.extensions}"
        for secret in (keys.consumer_key, keys.consumer_secret, wrong_secret.consumer_secret):
            assert secret.get_secret_value() not in text
    assert all(r.status == 401 for r in store.requests)  # never retried


def test_a_read_only_key_cannot_create_webhooks(woo: WooCommerceClient, store: WooStub, receiver: Receiver) -> None:
    key = store.add_key("read")
    read_only = WooKeys(consumer_key=key.consumer_key, consumer_secret=key.consumer_secret, permissions="read")
    woo.check_keys(store.url, read_only)
    with pytest.raises(StoreAuthorizationLost):
        woo.create_webhook(
            store.url, read_only, name="n", topic="product.updated", delivery_url=receiver.url(), secret=SECRET
        )


# -- products --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("per_page", "pages"), [(100, 1), (20, 3), (50, 1), (7, 8)])
def test_paging_through_the_whole_demo_store(
    woo: WooCommerceClient, store: WooStub, keys: WooKeys, per_page: int, pages: int
) -> None:
    first = woo.products_page(store.url, keys, per_page=per_page)
    assert first.total == 50
    assert first.next_cursor == ("2" if pages > 1 else None)

    products = every_product(woo, store, keys, per_page=per_page)

    assert sorted(int(p.id) for p in products) == list(range(100, 150))
    listed = [r for r in store.requests if r.path == API + "/products"]
    assert len(listed) == pages + 1  # the first page twice
    assert {r.query["orderby"] for r in listed} == {"id"} and {r.query["per_page"] for r in listed} == {str(per_page)}
    variable = {p.id: p for p in products if p.variants}
    assert sorted(variable) == ["100", "101", "110", "111", "120"]
    assert all(len(p.variants) == 3 for p in variable.values())


def test_products_are_mapped(woo: WooCommerceClient, store: WooStub, keys: WooKeys) -> None:
    products = {p.id: p for p in woo.products_page(store.url, keys, include=["101", "102"]).products}

    hoodie = products["101"]  # the demo store's second product: variable, two images
    raw = store.products[101]
    assert hoodie.title == raw["name"] == "Classic Hoodie"
    assert hoodie.handle == "classic-hoodie"
    assert hoodie.description_html == raw["description"]
    assert hoodie.product_type is None and hoodie.vendor is None
    assert hoodie.status == "publish"
    assert hoodie.sku == "DEMO-002" and hoodie.price == "11.00"
    assert hoodie.updated_at == EPOCH + timedelta(hours=1)
    assert [(c.id, c.name) for c in hoodie.categories] == [(str(c["id"]), c["name"]) for c in raw["categories"]]
    assert hoodie.tags == [t["name"] for t in raw["tags"]]
    assert [(i.media_id, i.url, i.alt, i.position) for i in hoodie.images] == [
        ("1002", f"{store.url}{UPLOADS}classic-hoodie-1.png", "Classic Hoodie", 0),
        ("1003", f"{store.url}{UPLOADS}classic-hoodie-2.png", "Classic Hoodie", 1),
    ]
    assert [(v.id, v.sku, v.price, v.options, v.title) for v in hoodie.variants] == [
        ("503", "DEMO-002-S", "11.00", {"Size": "S"}, "S"),
        ("504", "DEMO-002-M", "11.00", {"Size": "M"}, "M"),
        ("505", "DEMO-002-L", "11.00", {"Size": "L"}, "L"),
    ]
    simple = products["102"]
    assert simple.variants == [] and len(simple.images) == 1
    assert not store.seen("GET", API + "/products/102/variations")  # no request for a simple product


def test_filters(woo: WooCommerceClient, store: WooStub, keys: WooKeys) -> None:
    clothing = every_product(woo, store, keys, category="16", per_page=4)
    assert sorted(p.id for p in clothing) == [str(100 + i) for i in range(0, 50, 5)]
    assert all(p.categories[0].id == "16" for p in clothing)

    included = woo.products_page(store.url, keys, include=["105", "149", "999"])
    assert sorted(p.id for p in included.products) == ["105", "149"]
    assert (included.total, included.next_cursor) == (2, None)

    before = len(store.requests)
    nothing = woo.products_page(store.url, keys, include=[])
    assert (nothing.products, nothing.total) == ([], 0)
    assert len(store.requests) == before  # an empty include would mean "everything" to WooCommerce

    changed = woo.products_page(store.url, keys, modified_after=EPOCH + timedelta(hours=45, minutes=30))
    assert sorted(p.id for p in changed.products) == ["146", "147", "148", "149"]
    [seen] = [r for r in store.requests if "modified_after" in r.query]
    assert (seen.query["modified_after"], seen.query["dates_are_gmt"]) == ("2026-01-02T21:30:00", "true")
    naive = woo.products_page(store.url, keys, modified_after=datetime(2026, 1, 3, 0, 30))  # read as UTC
    assert sorted(p.id for p in naive.products) == ["149"]

    assert [p.id for p in woo.products_page(store.url, keys, search="hoodie", category="16").products] == []
    assert sorted(p.title for p in woo.products_page(store.url, keys, search="linen mug").products) == ["Linen Mug"]

    for bad in ({"per_page": 101}, {"per_page": 0}, {"page": 0}, {"include": ["1,2"]}, {"category": "../x"}):
        with pytest.raises(ValueError):
            woo.products_page(store.url, keys, **bad)


def test_categories_with_their_counts(woo: WooCommerceClient, store: WooStub, keys: WooKeys) -> None:
    categories = {c.name: c for c in woo.categories(store.url, keys)}
    assert {name: c.product_count for name, c in categories.items()} == {
        "Uncategorized": 0,
        "Clothing": 10,
        "Accessories": 10,
        "Home": 10,
        "Kitchen": 10,
        "Outdoor": 10,
    }
    assert categories["Clothing"].id == "16"


def test_a_wordpress_without_woocommerce_is_a_failed_request(
    woo: WooCommerceClient, store: WooStub, keys: WooKeys
) -> None:
    with pytest.raises(StoreRequestFailed, match="no WooCommerce REST API"):
        woo.check_keys(store.url + "/blog", keys)


# -- webhooks --------------------------------------------------------------------------------------


def test_webhooks_are_created_listed_reactivated_and_deleted(
    woo: WooCommerceClient, store: WooStub, keys: WooKeys, receiver: Receiver
) -> None:
    hook = woo.create_webhook(
        store.url, keys, name="Epox products", topic="product.updated", delivery_url=receiver.url(), secret=SECRET
    )
    assert (hook.topic, hook.status, hook.delivery_url) == ("product.updated", "active", receiver.url())
    assert store.webhooks[int(hook.id)]["secret"] == SECRET
    assert [item.body for item in receiver.received] == [f"webhook_id={hook.id}".encode()]  # the creation ping
    assert woo.webhooks(store.url, keys) == [hook]

    receiver.status = 500  # our endpoint fails six times in a row: WooCommerce disables the webhook
    for n in range(6):
        store.update_product(103, name=f"Renamed {n}")
    [disabled] = woo.webhooks(store.url, keys)
    assert disabled.status == "disabled"

    assert woo.activate_webhook(store.url, keys, hook.id).status == "active"
    assert [h.status for h in woo.webhooks(store.url, keys)] == ["active"]

    woo.delete_webhook(store.url, keys, hook.id)
    assert woo.webhooks(store.url, keys) == []
    woo.delete_webhook(store.url, keys, hook.id)  # gone already: done
    with pytest.raises(StoreRequestFailed):
        woo.activate_webhook(store.url, keys, hook.id)
    with pytest.raises(ValueError):
        woo.delete_webhook(store.url, keys, "1/../../products")


def test_many_webhooks_are_paged(woo: WooCommerceClient, store: WooStub, keys: WooKeys) -> None:
    for n in range(105):  # paused: no creation pings
        store.webhooks[20_000 + n] = {
            "id": 20_000 + n,
            "name": f"h{n}",
            "status": "paused",
            "topic": "product.updated",
            "resource": "product",
            "event": "updated",
            "delivery_url": "https://app.example/hook",
            "secret": "x",
            "failure_count": 0,
        }
    assert len(woo.webhooks(store.url, keys)) == 105
    assert len(store.seen("GET", API + "/webhooks")) == 2


def test_product_from_the_delivered_webhook(
    woo: WooCommerceClient, store: WooStub, keys: WooKeys, receiver: Receiver
) -> None:
    woo.create_webhook(
        store.url, keys, name="Epox", topic="product.updated", delivery_url=receiver.url(), secret=SECRET
    )
    store.update_product(101, name="Classic Hoodie (new)")
    headers, body = receiver.received[-1].headers, receiver.received[-1].body
    assert body_is_authentic(body, headers["x-wc-webhook-signature"], SECRET)

    product = woo.product_from_webhook(json.loads(body))

    assert (product.id, product.title, product.handle) == ("101", "Classic Hoodie (new)", "classic-hoodie")
    assert [i.media_id for i in product.images] == ["1002", "1003"]
    assert product.variants == []  # not fetched for a webhook
    assert product.updated_at is not None and product.updated_at.tzinfo is not None


@pytest.mark.parametrize(
    "payload",
    [
        {"id": 101},
        {"name": "No id"},
        {"id": "101", "name": "A string id"},
        {"id": True, "name": "A boolean id"},
        {"id": 0, "name": "Zero"},
        {"id": 101, "name": None},
        {"id": 101, "name": "x", "images": "not a list"},
        {"webhook_id": "7"},
    ],
)
def test_a_webhook_body_that_is_not_a_product(woo: WooCommerceClient, payload: dict[str, Any]) -> None:
    with pytest.raises(StoreRequestFailed):
        woo.product_from_webhook(payload)


# -- product images (sync-back) --------------------------------------------------------------------


@pytest.fixture
def renders(receiver: Receiver) -> Receiver:
    """Our object store: approved renders the store sideloads (a presigned-looking query on each URL)."""
    receiver.files["/renders/101-front.png"] = (png(7, size=16), "image/png")
    receiver.files["/renders/101-back.png"] = (png(8, size=16), "image/png")
    receiver.files["/renders/101-front"] = (png(7, size=16), "image/png")  # the same bytes, no extension
    return receiver


def ours(renders: Receiver, path: str, alt: str) -> WooImageRef:
    return WooImageRef(src=renders.url(path) + "?X-Amz-Signature=abc", alt=alt, name="AI " + alt)


def test_ours_are_added_by_src_keeping_the_merchant_s_by_id(
    woo: WooCommerceClient, store: WooStub, keys: WooKeys, renders: Receiver
) -> None:
    before = woo.product(store.url, keys, "101")
    assert [(i.media_id, i.position) for i in before.images] == [("1002", 0), ("1003", 1)]

    answered = woo.set_product_images(
        store.url,
        keys,
        "101",
        [ours(renders, "/renders/101-front.png", "Front"), WooImageRef(id="1002"), WooImageRef(id="1003")],
    )

    front = answered[0]
    assert front.media_id not in ("1002", "1003") and front.position == 0  # ours is the featured image now
    assert [(i.media_id, i.position) for i in answered[1:]] == [("1002", 1), ("1003", 2)]
    assert front.alt == "Front" and front.url.startswith(store.url + "/wp-content/uploads/")
    assert front.url.endswith("/101-front.png")
    assert renders.fetched == ["/renders/101-front.png?X-Amz-Signature=abc"]  # the store fetched our render
    assert httpx.get(front.url, trust_env=False).content == png(7, size=16)
    featured = store.gallery(101)[0]
    assert (featured["id"], featured["name"]) == (int(front.media_id), "AI Front")
    assert woo.product(store.url, keys, "101").images == answered  # read back: new attachment ids, same order
    [put] = store.seen("PUT", API + "/products/101")
    assert json.loads(put.raw) == {
        "images": [
            {"src": renders.url("/renders/101-front.png") + "?X-Amz-Signature=abc", "name": "AI Front", "alt": "Front"},
            {"id": 1002},
            {"id": 1003},
        ]
    }


def test_a_removed_image_stays_in_the_media_library(
    woo: WooCommerceClient, store: WooStub, keys: WooKeys, renders: Receiver
) -> None:
    front, *_ = woo.set_product_images(
        store.url, keys, "101", [ours(renders, "/renders/101-front.png", "Front"), WooImageRef(id="1002")]
    )
    assert [i.media_id for i in woo.product(store.url, keys, "101").images] == [front.media_id, "1002"]
    assert store.library_image(1003) is not None  # off the product, not deleted

    back = woo.set_product_images(
        store.url, keys, "101", [WooImageRef(id="1002"), ours(renders, "/renders/101-back.png", "Back")]
    )
    assert back[0].media_id == "1002"  # the merchant's image featured again
    assert store.library_image(int(front.media_id)) is not None

    store.merchant_removes_image(101, 1002)  # the merchant takes one off in wp-admin
    assert [i.media_id for i in woo.product(store.url, keys, "101").images] == [back[1].media_id]
    assert store.library_image(1002) is not None


def test_a_source_without_an_image_extension_is_rejected_and_the_product_is_unchanged(
    woo: WooCommerceClient, store: WooStub, keys: WooKeys, renders: Receiver
) -> None:
    before = store.products[101]["date_modified"], store.gallery(101)
    with pytest.raises(StoreImageRejected) as caught:
        woo.set_product_images(
            store.url, keys, "101", [ours(renders, "/renders/101-front", "Front"), WooImageRef(id="1002")]
        )
    assert caught.value.extensions["store_code"] == "woocommerce_product_image_upload_error"
    assert "not allowed to upload this file type" in caught.value.detail
    assert (store.products[101]["date_modified"], store.gallery(101)) == before
    assert len(store.seen("PUT", API + "/products/101")) == 1  # refused for good: not retried

    with pytest.raises(StoreImageRejected, match="Not Found") as missing:
        woo.set_product_images(store.url, keys, "101", [ours(renders, "/renders/gone.png", "Gone")])
    assert "X-Amz-Signature" not in missing.value.detail
    with pytest.raises(StoreImageRejected, match="invalid image ID"):
        woo.set_product_images(store.url, keys, "101", [WooImageRef(id="987654")])
    assert (store.products[101]["date_modified"], store.gallery(101)) == before


def test_a_429_is_waited_for_then_the_gallery_is_written_once(
    woo: WooCommerceClient, store: WooStub, keys: WooKeys, renders: Receiver, sleeps: list[float]
) -> None:
    store.fail("429", times=1, path=API + "/products/101", method="PUT")
    images = woo.set_product_images(store.url, keys, "101", [ours(renders, "/renders/101-front.png", "Front")])
    assert [r.status for r in store.seen("PUT", API + "/products/101")] == [429, 200]
    assert 1 in sleeps  # the stub's Retry-After: 1
    assert [i["id"] for i in store.gallery(101)] == [int(images[0].media_id)]
    assert len(renders.fetched) == 1  # sideloaded once


def test_a_long_429_or_a_503_is_left_to_the_queue(
    woo: WooCommerceClient, store: WooStub, keys: WooKeys, renders: Receiver
) -> None:
    before = store.gallery(101)
    store.fail("429", times=1, path=API + "/products/101", method="PUT", retry_after=60)
    with pytest.raises(StoreUnavailable) as caught:
        woo.set_product_images(store.url, keys, "101", [ours(renders, "/renders/101-front.png", "Front")])
    assert caught.value.headers["Retry-After"] == "60"

    store.fail("503", times=3, path=API + "/products/101", method="PUT")
    with pytest.raises(StoreUnavailable):
        woo.set_product_images(store.url, keys, "101", [ours(renders, "/renders/101-front.png", "Front")])
    assert [r.status for r in store.seen("PUT", API + "/products/101")] == [429, 503, 503, 503]
    assert store.gallery(101) == before and renders.fetched == []


def test_a_product_deleted_or_trashed_is_gone(
    woo: WooCommerceClient, store: WooStub, keys: WooKeys, renders: Receiver
) -> None:
    store.delete_product(104)
    store.trash_product(105)
    for product_id in ("104", "105"):
        with pytest.raises(StoreProductGone):
            woo.product(store.url, keys, product_id)
    with pytest.raises(StoreProductGone):
        woo.set_product_images(store.url, keys, "104", [ours(renders, "/renders/101-front.png", "Front")])
    assert renders.fetched == []  # the store looks the product up before it fetches anything
    with pytest.raises(StoreProductGone):
        woo.set_product_images(store.url, keys, "105", [WooImageRef(id="1010")])


# -- failures --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["500", "502", "503", "drop"])
def test_transient_failures_are_retried_twice(
    woo: WooCommerceClient, store: WooStub, keys: WooKeys, sleeps: list[float], kind: str
) -> None:
    store.fail(kind, times=2)
    assert woo.products_page(store.url, keys, include=["104"]).total == 1
    assert len(store.requests) == 3 and len(sleeps) == 2

    store.fail(kind, times=3)
    with pytest.raises(StoreUnavailable) as caught:
        woo.check_keys(store.url, keys)
    assert caught.value.status == 503
    assert len(store.requests) == 6


def test_429_waits_for_retry_after(woo: WooCommerceClient, store: WooStub, keys: WooKeys, sleeps: list[float]) -> None:
    store.fail("429", times=3)
    with pytest.raises(StoreUnavailable) as caught:
        woo.categories(store.url, keys)
    assert caught.value.headers["Retry-After"] == "1"
    assert sleeps.count(1) == 2  # the stub's Retry-After: 1, before each retry
    assert len(store.requests) == 3


def test_variations_failing_fail_the_page(
    woo: WooCommerceClient, store: WooStub, keys: WooKeys, sleeps: list[float]
) -> None:
    store.fail("503", times=3, path=API + "/products/100/variations")
    with pytest.raises(StoreUnavailable):
        woo.products_page(store.url, keys, include=["100"])


def test_a_webhook_creation_is_not_replayed_after_a_server_error(
    woo: WooCommerceClient, store: WooStub, keys: WooKeys, receiver: Receiver
) -> None:
    store.fail("500", times=1)
    with pytest.raises(StoreUnavailable):
        woo.create_webhook(store.url, keys, name="n", topic="product.updated", delivery_url=receiver.url(), secret="s")
    assert len(store.requests) == 1

    store.fail("429", times=1)  # a rate limiter turned it away: safe to send again
    woo.create_webhook(store.url, keys, name="n", topic="product.updated", delivery_url=receiver.url(), secret="s")
    assert [r.status for r in store.requests[1:]] == [429, 201]


def test_malformed_json_is_a_failed_request(woo: WooCommerceClient, store: WooStub, keys: WooKeys) -> None:
    store.fail("malformed", times=1)
    with pytest.raises(StoreRequestFailed, match="not JSON"):
        woo.products_page(store.url, keys)
    assert len(store.requests) == 1  # not retried
    store.fail("malformed", times=1, path=API + "/webhooks")
    with pytest.raises(StoreRequestFailed):
        woo.webhooks(store.url, keys)
