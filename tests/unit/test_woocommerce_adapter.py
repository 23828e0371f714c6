"""The WooCommerce adapter's translation of answers the stub does not give (a firewall's 403, a redirect,
a long Retry-After, a product deleted between its page and its variations, odd shapes): a real
SafeFetcher whose transport answers in memory, for a store on a public address."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from shared.adapters.woocommerce import API, WooCommerceClient
from shared.retry import RetryPolicy
from shared.safe_fetch import IPAddress, Resolver, SafeFetcher
from shared.stores.ports import (
    StoreAuthorizationLost,
    StoreImageRejected,
    StoreNotReachable,
    StoreProductGone,
    StoreRequestFailed,
    StoreUnavailable,
    WooImageRef,
    WooKeys,
)

STORE = "https://shop.example.test"
KEYS = WooKeys(consumer_key="ck_live_key", consumer_secret="cs_live_secret")
Handler = Callable[[httpx.Request], httpx.Response]


class PublicResolver(Resolver):
    """shop.example.test is a public address; private.example.test a private one."""

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("10.0.0.7" if host == "private.example.test" else "93.184.216.34")]


class Store:
    """The in-memory store: ``answer`` decides, every request is kept."""

    def __init__(self) -> None:
        self.answer: Handler = lambda request: httpx.Response(200, json=[])
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        return self.answer(request)


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def woo(store: Store, sleeps: list[float]) -> Iterator[WooCommerceClient]:
    with SafeFetcher(PublicResolver(), transport=httpx.MockTransport(store)) as fetcher:
        yield WooCommerceClient(
            fetcher, retry=RetryPolicy(attempts=3, base=0.0, cap=0.0, deadline=10.0), sleep=sleeps.append
        )


def product(product_id: int, **fields: Any) -> dict[str, Any]:
    return {"id": product_id, "name": f"P{product_id}", "type": "simple", "variations": [], **fields}


def test_requests_go_to_the_vetted_address_with_the_store_s_name(woo: WooCommerceClient, store: Store) -> None:
    assert woo.check_store_url("Shop.Example.test/") == STORE
    woo.check_keys(STORE, KEYS)
    [sent] = store.requests
    assert (sent.url.host, sent.headers["host"], sent.url.path) == (
        "93.184.216.34",
        "shop.example.test",
        API + "/products",
    )
    assert "ck_live_key" not in str(sent.url)


def test_a_store_on_a_private_address_is_not_contacted(woo: WooCommerceClient, store: Store) -> None:
    with pytest.raises(StoreNotReachable):
        woo.check_store_url("https://private.example.test")
    with pytest.raises(StoreNotReachable):
        woo.check_keys("https://private.example.test", KEYS)
    assert store.requests == []


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (httpx.Response(403, json={"code": "woocommerce_rest_cannot_view", "message": "no"}), StoreAuthorizationLost),
        (httpx.Response(403, text="<html>Blocked by the firewall</html>"), StoreRequestFailed),
        (
            httpx.Response(301, headers={"Location": "https://www.shop.example.test/wp-json/wc/v3/products"}),
            StoreRequestFailed,
        ),
        (httpx.Response(400, json={"code": "rest_invalid_param", "message": "bad"}), StoreRequestFailed),
        (httpx.Response(404, text="Not found"), StoreRequestFailed),
        (httpx.Response(200, json={"not": "a list"}), StoreRequestFailed),
        (httpx.Response(200, json=["not a product"]), StoreRequestFailed),
        (httpx.Response(200, json=[{"id": 5, "name": "x", "categories": [{"name": "no id"}]}]), StoreRequestFailed),
    ],
)
def test_answers_are_translated(
    woo: WooCommerceClient, store: Store, answer: httpx.Response, expected: type[Exception]
) -> None:
    store.answer = lambda request: answer
    with pytest.raises(expected) as caught:
        woo.products_page(STORE, KEYS)
    assert len(store.requests) == 1  # none of these is retried
    assert "cs_live_secret" not in str(caught.value) and "ck_live_key" not in str(caught.value)


def test_a_redirect_is_not_followed_with_our_keys(woo: WooCommerceClient, store: Store) -> None:
    store.answer = lambda request: httpx.Response(302, headers={"Location": "https://elsewhere.example.test/"})
    with pytest.raises(StoreRequestFailed, match="redirected"):
        woo.check_keys(STORE, KEYS)
    assert [r.url.path for r in store.requests] == [API + "/products"]


def test_a_long_retry_after_is_left_to_the_queue(woo: WooCommerceClient, store: Store, sleeps: list[float]) -> None:
    store.answer = lambda request: httpx.Response(429, headers={"Retry-After": "120"})
    with pytest.raises(StoreUnavailable) as caught:
        woo.categories(STORE, KEYS)
    assert caught.value.headers["Retry-After"] == "120"
    assert len(store.requests) == 1 and sleeps == []


def test_a_product_deleted_before_its_variations_are_read_is_left_out(woo: WooCommerceClient, store: Store) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/variations"):
            return httpx.Response(404, json={"code": "woocommerce_rest_product_invalid_id", "message": "Invalid ID."})
        rows = [product(1, type="variable", variations=[7]), product(2)]
        return httpx.Response(200, json=rows, headers={"X-WP-Total": "2", "X-WP-TotalPages": "1"})

    store.answer = answer
    page = woo.products_page(STORE, KEYS)
    assert [p.id for p in page.products] == ["2"]
    assert (page.total, page.next_cursor) == (2, None)


def test_without_paging_headers_a_full_page_means_more(woo: WooCommerceClient, store: Store) -> None:
    store.answer = lambda request: httpx.Response(200, json=[product(1), product(2)])
    assert woo.products_page(STORE, KEYS, per_page=2).next_cursor == "2"
    assert woo.products_page(STORE, KEYS, per_page=3).next_cursor is None


def test_escaped_names_and_numbers_as_text(woo: WooCommerceClient, store: Store) -> None:
    row = product(
        3,
        name="Salt &amp; Pepper",
        price=12.5,
        sku=None,
        status="Publish",
        categories=[{"id": 9, "name": "Home &amp; Garden"}],
        tags=[{"id": 4, "name": "eco"}],
        images=[{"id": 0, "src": ""}, {"id": 11, "src": "https://cdn.example.test/a.png", "alt": ""}],
        date_modified_gmt="2026-03-01T10:00:00",
    )
    store.answer = lambda request: httpx.Response(200, json=[row])
    [mapped] = woo.products_page(STORE, KEYS).products
    assert (mapped.title, mapped.price, mapped.sku, mapped.status) == ("Salt & Pepper", "12.5", None, "publish")
    assert [c.name for c in mapped.categories] == ["Home & Garden"]
    assert [(i.media_id, i.alt, i.position) for i in mapped.images] == [("11", None, 0)]
    assert mapped.updated_at is not None and mapped.updated_at.isoformat() == "2026-03-01T10:00:00+00:00"


def test_webhook_writes_send_json(woo: WooCommerceClient, store: Store) -> None:
    hook = {"id": 42, "topic": "product.updated", "status": "active", "delivery_url": "https://app.example/h"}
    store.answer = lambda request: httpx.Response(201 if request.method == "POST" else 200, json=hook)
    woo.create_webhook(STORE, KEYS, name="Epox", topic="product.updated", delivery_url=hook["delivery_url"], secret="s")
    woo.activate_webhook(STORE, KEYS, "42")
    woo.delete_webhook(STORE, KEYS, "42")
    post, put, delete = store.requests
    assert json.loads(post.content) == {
        "name": "Epox",
        "topic": "product.updated",
        "delivery_url": "https://app.example/h",
        "secret": "s",
        "status": "active",
    }
    assert (put.method, put.url.path, json.loads(put.content)) == ("PUT", API + "/webhooks/42", {"status": "active"})
    assert (delete.method, delete.url.params["force"]) == ("DELETE", "true")
    with pytest.raises(ValueError):
        woo.create_webhook(STORE, KEYS, name="n", topic="product.updated", delivery_url="https://x", secret="")


# -- product images (sync-back) --------------------------------------------------------------------


def wp_error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"code": code, "message": message, "data": {"status": status}})


def gallery(*ids: int) -> list[dict[str, Any]]:
    return [{"id": i, "src": f"https://shop.example.test/wp-content/uploads/{i}.png", "alt": f"a{i}"} for i in ids]


def test_the_product_is_read_with_its_gallery_in_order(woo: WooCommerceClient, store: Store) -> None:
    placeholder = {"id": 0, "src": "https://shop.example.test/placeholder.png", "alt": "Placeholder"}
    store.answer = lambda request: httpx.Response(200, json=product(7, images=[*gallery(31, 12), placeholder]))
    read = woo.product(STORE, KEYS, "7")
    assert [(i.media_id, i.position, i.alt) for i in read.images] == [("31", 0, "a31"), ("12", 1, "a12")]
    [sent] = store.requests
    assert (sent.method, sent.url.path) == ("GET", API + "/products/7")
    with pytest.raises(ValueError):
        woo.product(STORE, KEYS, "7/../../webhooks")


@pytest.mark.parametrize(
    "answer",
    [
        wp_error(404, "woocommerce_rest_product_invalid_id", "Invalid ID."),
        httpx.Response(200, json=product(7, status="trash")),
    ],
)
def test_a_deleted_or_trashed_product_is_gone(woo: WooCommerceClient, store: Store, answer: httpx.Response) -> None:
    store.answer = lambda request: answer
    with pytest.raises(StoreProductGone):
        woo.product(STORE, KEYS, "7")
    with pytest.raises(StoreProductGone):
        woo.set_product_images(STORE, KEYS, "7", [WooImageRef(id="31")])


def test_no_woocommerce_api_is_not_a_gone_product(woo: WooCommerceClient, store: Store) -> None:
    store.answer = lambda request: wp_error(404, "rest_no_route", "No route was found.")
    with pytest.raises(StoreRequestFailed) as caught:
        woo.product(STORE, KEYS, "7")
    assert not isinstance(caught.value, StoreProductGone)


def test_the_gallery_is_sent_with_only_the_keys_given(woo: WooCommerceClient, store: Store) -> None:
    store.answer = lambda request: httpx.Response(200, json=product(7, images=gallery(90, 31)))
    images = woo.set_product_images(
        STORE,
        KEYS,
        "7",
        [
            WooImageRef(src="https://r2.example.test/ai/7-front.png?X-Amz-Signature=s", alt="Front"),
            WooImageRef(id="31"),
        ],
    )
    [sent] = store.requests
    assert (sent.method, sent.url.path) == ("PUT", API + "/products/7")
    assert json.loads(sent.content) == {
        "images": [{"src": "https://r2.example.test/ai/7-front.png?X-Amz-Signature=s", "alt": "Front"}, {"id": 31}]
    }
    assert [(i.media_id, i.position, i.url) for i in images] == [
        ("90", 0, "https://shop.example.test/wp-content/uploads/90.png"),
        ("31", 1, "https://shop.example.test/wp-content/uploads/31.png"),
    ]


@pytest.mark.parametrize(
    "image",
    [
        WooImageRef(),
        WooImageRef(id="31", src="https://r2.example.test/a.png"),
        WooImageRef(id="thirty-one"),
        WooImageRef(src="/relative/a.png"),
        WooImageRef(src="file:///etc/passwd.png"),
    ],
)
def test_an_image_must_be_kept_by_id_or_added_by_src(woo: WooCommerceClient, store: Store, image: WooImageRef) -> None:
    with pytest.raises(ValueError):
        woo.set_product_images(STORE, KEYS, "7", [image])
    assert store.requests == []


@pytest.mark.parametrize(
    ("code", "message", "kept"),
    [
        (
            "woocommerce_product_image_upload_error",
            "Error getting remote image https://r2.example.test/ai/a.png?X-Amz-Signature=secret. Error: Not Found",
            "Error getting remote image https://r2.example.test/ai/a.png. Error: Not Found",
        ),
        (
            "woocommerce_product_image_upload_error",
            "Invalid image: Sorry, you are not allowed to upload this file type.",
            "Invalid image: Sorry, you are not allowed to upload this file type.",
        ),
        ("woocommerce_product_invalid_image_id", "#31 is an invalid image ID.", "#31 is an invalid image ID."),
    ],
)
def test_an_image_the_store_refuses_keeps_the_store_s_message(
    woo: WooCommerceClient, store: Store, code: str, message: str, kept: str
) -> None:
    store.answer = lambda request: wp_error(400, code, message)
    with pytest.raises(StoreImageRejected) as caught:
        woo.set_product_images(
            STORE, KEYS, "7", [WooImageRef(src="https://r2.example.test/ai/a.png?X-Amz-Signature=s")]
        )
    assert caught.value.extensions["store_code"] == code
    assert caught.value.extensions["store_message"] == kept
    assert kept in caught.value.detail and "secret" not in caught.value.detail
    assert (caught.value.status, caught.value.code) == (422, "store_image_rejected")
    assert len(store.requests) == 1  # refused for good: not retried


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (wp_error(400, "rest_invalid_param", "Invalid parameter(s): images"), StoreRequestFailed),
        (wp_error(401, "woocommerce_rest_authentication_error", "Consumer key is invalid."), StoreAuthorizationLost),
        (
            wp_error(403, "woocommerce_rest_cannot_edit", "Sorry, you are not allowed to edit this resource."),
            StoreAuthorizationLost,
        ),
        (httpx.Response(200, text="<br /><b>Notice</b>"), StoreRequestFailed),
    ],
)
def test_other_gallery_failures_are_translated(
    woo: WooCommerceClient, store: Store, answer: httpx.Response, expected: type[Exception]
) -> None:
    store.answer = lambda request: answer
    with pytest.raises(expected) as caught:
        woo.set_product_images(STORE, KEYS, "7", [WooImageRef(id="31")])
    assert not isinstance(caught.value, StoreImageRejected | StoreProductGone)


def test_a_throttled_gallery_update_leaves_a_long_wait_to_the_queue(
    woo: WooCommerceClient, store: Store, sleeps: list[float]
) -> None:
    store.answer = lambda request: httpx.Response(429, headers={"Retry-After": "90"})
    with pytest.raises(StoreUnavailable) as caught:
        woo.set_product_images(STORE, KEYS, "7", [WooImageRef(src="https://r2.example.test/a.png")])
    assert caught.value.headers["Retry-After"] == "90"
    assert len(store.requests) == 1 and sleeps == []


@pytest.mark.parametrize("failure", ["500", "timeout"])
def test_a_sideloading_update_is_not_replayed_once_the_store_may_have_acted(
    woo: WooCommerceClient, store: Store, failure: str
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if failure == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        return httpx.Response(500, text="Internal Server Error")

    store.answer = answer
    with pytest.raises(StoreUnavailable):
        woo.set_product_images(STORE, KEYS, "7", [WooImageRef(src="https://r2.example.test/a.png")])
    assert len(store.requests) == 1  # a replay would sideload another copy into the media library

    store.requests.clear()
    with pytest.raises(StoreUnavailable):
        woo.set_product_images(STORE, KEYS, "7", [WooImageRef(id="31")])  # ids only: replaying is harmless
    assert len(store.requests) == 3


def test_a_503_before_sideloading_is_retried(woo: WooCommerceClient, store: Store, sleeps: list[float]) -> None:
    answers = [
        httpx.Response(503, headers={"Retry-After": "2"}),
        httpx.Response(200, json=product(7, images=gallery(90))),
    ]
    store.answer = lambda request: answers.pop(0)
    images = woo.set_product_images(STORE, KEYS, "7", [WooImageRef(src="https://r2.example.test/a.png")])
    assert [i.media_id for i in images] == ["90"]
    assert len(store.requests) == 2 and 2 in sleeps
