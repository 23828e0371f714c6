"""The local WooCommerce stub speaks WooCommerce's wire format: wc-auth's unsigned key callback, REST v3
with Basic auth and paging headers, and webhooks signed with the webhook's secret that are never retried.

Everything goes over real HTTP (httpx to the stub, the stub to a small recording server standing in for
our functions)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from PIL import Image

from dev.stubs.woocommerce import API, ApiKey, WooStub, running
from tests.http_receiver import Receiver, receiving


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as sink:
        yield sink


@pytest.fixture
def store() -> Iterator[WooStub]:
    with running() as stub:
        yield stub


def client(stub: WooStub, key: ApiKey | None = None) -> httpx.Client:
    auth = (key.consumer_key, key.consumer_secret) if key else None
    return httpx.Client(base_url=stub.url + API, auth=auth, trust_env=False, timeout=10)


def authorize_query(receiver: Receiver, user_id: str = "nonce-1", scope: str = "read_write") -> dict[str, str]:
    return {
        "app_name": "Epox",
        "scope": scope,
        "user_id": user_id,
        "return_url": "https://app.example/stores/return?from=woo",
        "callback_url": receiver.url("/store_oauth/woocommerce/callback"),
    }


# -- the demo catalog over REST ------------------------------------------------------------------------


def test_products_are_paged_with_wordpress_headers(store: WooStub) -> None:
    with client(store, store.add_key("read")) as http:
        first = http.get("/products", params={"per_page": 20})
        last = http.get("/products", params={"per_page": 20, "page": 3})
        past = http.get("/products", params={"per_page": 20, "page": 4})
        everything = http.get("/products", params={"per_page": 100})

    assert first.status_code == 200
    assert (first.headers["X-WP-Total"], first.headers["X-WP-TotalPages"]) == ("50", "3")
    assert 'rel="next"' in first.headers["Link"] and "page=2" in first.headers["Link"]
    assert 'rel="prev"' in last.headers["Link"] and 'rel="next"' not in last.headers["Link"]
    assert (len(first.json()), len(last.json()), past.json()) == (20, 10, [])
    ids = [p["id"] for p in everything.json()]
    assert len(ids) == len(set(ids)) == 50
    product = everything.json()[0]
    assert {"name", "slug", "sku", "description", "categories", "tags", "images", "date_modified_gmt"} <= set(product)


@pytest.mark.parametrize("per_page", ["0", "101", "ten"])
def test_per_page_outside_1_to_100_is_refused(store: WooStub, per_page: str) -> None:
    with client(store, store.add_key("read")) as http:
        answer = http.get("/products", params={"per_page": per_page})
    assert answer.status_code == 400
    assert answer.json()["code"] == "rest_invalid_param"
    assert "per_page" in answer.json()["data"]["params"]


def test_the_demo_store_is_deterministic() -> None:
    with running() as one, running() as two:
        a = client(one, one.add_key()).get("/products", params={"per_page": 100}).json()
        b = client(two, two.add_key()).get("/products", params={"per_page": 100}).json()
    strip = ("permalink", "_links")
    for left, right in zip(a, b, strict=True):
        assert {k: v for k, v in left.items() if k not in strip and k != "images"} == {
            k: v for k, v in right.items() if k not in strip and k != "images"
        }
        assert [i["id"] for i in left["images"]] == [i["id"] for i in right["images"]]


def test_variable_products_have_variations_with_skus_and_images(store: WooStub) -> None:
    with client(store, store.add_key("read")) as http:
        products = http.get("/products", params={"per_page": 100}).json()
        variable = [p for p in products if p["type"] == "variable"]
        simple = next(p for p in products if p["type"] == "simple")
        variations = http.get(f"/products/{variable[0]['id']}/variations").json()
        none = http.get(f"/products/{simple['id']}/variations").json()
        missing = http.get("/products/999999/variations")

    assert len(variable) == 5
    assert [v["id"] for v in variations] == variable[0]["variations"]
    assert all(v["sku"].startswith(variable[0]["sku"] + "-") for v in variations)
    assert all(v["image"]["src"].startswith(store.url) for v in variations)
    assert none == []
    assert missing.status_code == 404


def test_one_product_and_an_unknown_one(store: WooStub) -> None:
    with client(store, store.add_key("read")) as http:
        one = http.get("/products/100")
        unknown = http.get("/products/99999")
    assert one.json()["sku"] == "DEMO-001"
    assert unknown.status_code == 404
    assert unknown.json() == {
        "code": "woocommerce_rest_product_invalid_id",
        "message": "Invalid ID.",
        "data": {"status": 404},
    }


def test_categories_count_their_products(store: WooStub) -> None:
    with client(store, store.add_key("read")) as http:
        categories = http.get("/products/categories", params={"per_page": 100})
        non_empty = http.get("/products/categories", params={"hide_empty": "true"}).json()
    assert categories.headers["X-WP-Total"] == "6"
    assert sum(c["count"] for c in categories.json()) == 50
    assert "uncategorized" not in {c["slug"] for c in non_empty}


def test_images_are_served_as_real_pngs(store: WooStub) -> None:
    with client(store, store.add_key("read")) as http:
        product = http.get("/products/101").json()
    assert len(product["images"]) == 2
    with httpx.Client(trust_env=False) as http:
        for image in product["images"]:
            answer = http.get(image["src"])
            assert answer.headers["Content-Type"] == "image/png"
            assert Image.open(io.BytesIO(answer.content)).size == (8, 8)
        assert http.get(store.url + "/wp-content/uploads/2026/01/nothing.png").status_code == 404


def test_modified_after_returns_only_what_changed(store: WooStub) -> None:
    before = "2026-02-01T00:00:00"  # after every demo product's last change (January 2026)
    store.update_product(120, name="Renamed")
    with client(store, store.add_key("read")) as http:
        changed = http.get("/products", params={"modified_after": before, "per_page": 100})
        garbled = http.get("/products", params={"modified_after": "yesterday"})
    assert [p["id"] for p in changed.json()] == [120]
    assert changed.headers["X-WP-Total"] == "1"
    assert garbled.status_code == 400


# -- authentication -----------------------------------------------------------------------------------


def test_rest_needs_a_valid_key(store: WooStub) -> None:
    key = store.add_key("read")
    with client(store) as anonymous:
        assert anonymous.get("/products").json()["code"] == "woocommerce_rest_cannot_view"
    wrong_key = ApiKey(0, "1", "ck_" + "0" * 40, key.consumer_secret, "read", "")
    wrong_secret = ApiKey(0, "1", key.consumer_key, "cs_" + "0" * 40, "read", "")
    with client(store, wrong_key) as http:
        refused = http.get("/products")
        assert (refused.status_code, refused.json()["message"]) == (401, "Consumer key is invalid.")
    with client(store, wrong_secret) as http:
        assert http.get("/products").json()["message"] == "Consumer secret is invalid."
    with client(store) as http:
        by_query = http.get(
            "/products", params={"consumer_key": key.consumer_key, "consumer_secret": key.consumer_secret}
        )
        assert by_query.status_code == 200


def test_a_read_key_cannot_write_and_a_write_key_cannot_read(store: WooStub, receiver: Receiver) -> None:
    hook = {"name": "x", "topic": "product.updated", "delivery_url": receiver.url(), "secret": "s"}
    with client(store, store.add_key("read")) as http:
        refused = http.post("/webhooks", json=hook)
    with client(store, store.add_key("write")) as http:
        blind = http.get("/products")
    assert refused.status_code == 401 and "write permissions" in refused.json()["message"]
    assert blind.status_code == 401 and "read permissions" in blind.json()["message"]
    assert store.webhooks == {}


# -- wc-auth ------------------------------------------------------------------------------------------


def test_wc_auth_posts_the_keys_unsigned_and_redirects_with_success(store: WooStub, receiver: Receiver) -> None:
    query = authorize_query(receiver)
    with httpx.Client(trust_env=False, timeout=10) as browser:
        landing = browser.get(store.url + "/wc-auth/v1/authorize", params=query)

    assert landing.status_code == 302
    location = urlsplit(landing.headers["Location"])
    assert (location.netloc, location.path) == ("app.example", "/stores/return")
    assert dict(parse_qsl(location.query)) == {"from": "woo", "success": "1", "user_id": "nonce-1"}
    [callback] = receiver.received
    assert callback.path == "/store_oauth/woocommerce/callback"
    assert callback.headers["content-type"].startswith("application/json")
    assert not any(name.startswith("x-wc-webhook") for name in callback.headers)  # unsigned
    keys = json.loads(callback.body)
    assert set(keys) == {"key_id", "user_id", "consumer_key", "consumer_secret", "key_permissions"}
    assert (keys["user_id"], keys["key_permissions"]) == ("nonce-1", "read_write")
    assert keys["consumer_key"].startswith("ck_") and keys["consumer_secret"].startswith("cs_")
    with httpx.Client(base_url=store.url + API, auth=(keys["consumer_key"], keys["consumer_secret"])) as http:
        assert http.get("/products/100").status_code == 200


@pytest.mark.parametrize("answer", [201, 204, 302, 500])
def test_a_callback_not_answered_exactly_200_deletes_the_key(store: WooStub, receiver: Receiver, answer: int) -> None:
    receiver.status = answer
    with httpx.Client(trust_env=False, timeout=10) as browser:
        landing = browser.get(store.url + "/wc-auth/v1/authorize", params=authorize_query(receiver))
    keys = json.loads(receiver.received[0].body)

    assert landing.status_code == 401 and "Location" not in landing.headers
    assert store.keys == {}
    assert store.add_key().key_id == keys["key_id"] + 1  # a deleted key's id is not given out again
    with httpx.Client(base_url=store.url + API, auth=(keys["consumer_key"], keys["consumer_secret"])) as http:
        assert http.get("/products").status_code == 401


def test_an_unreachable_callback_deletes_the_key(store: WooStub) -> None:
    query = {**authorize_query(Receiver(port=1)), "callback_url": "http://127.0.0.1:1/callback"}
    with httpx.Client(trust_env=False, timeout=10) as browser:
        assert browser.get(store.url + "/wc-auth/v1/authorize", params=query).status_code == 401
    assert store.keys == {}
    assert store.callbacks[0][2] == 0


def test_the_merchant_approves_or_denies_on_the_page(receiver: Receiver) -> None:
    with running(WooStub(auto_approve=False)) as store, httpx.Client(trust_env=False, timeout=10) as browser:
        page = browser.get(store.url + "/wc-auth/v1/authorize", params=authorize_query(receiver, "u-1"))
        assert page.status_code == 200 and "Approve" in page.text and receiver.received == []
        approve = page.text.split('href="')[1].split('"')[0].replace("&amp;", "&")
        granted = browser.get(store.url + approve)
        assert granted.status_code == 302 and "success=1" in granted.headers["Location"]
        assert browser.get(store.url + approve).status_code == 403  # the link is single-use

        browser.get(store.url + "/wc-auth/v1/authorize", params=authorize_query(receiver, "u-2"))
        denied = store.deny("u-2")
        browser.get(store.url + "/wc-auth/v1/authorize", params=authorize_query(receiver, "u-3"))
        helper = store.approve("u-3")

    assert denied.location is not None and "success=0" in denied.location and denied.key is None
    assert helper.status == 302 and helper.key is not None and helper.callback_status == 200
    assert [json.loads(r.body)["user_id"] for r in receiver.received] == ["u-1", "u-3"]
    assert len(store.keys) == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"scope": "admin"}, "Invalid scope admin"),
        ({"app_name": ""}, "Missing parameter app_name"),
        ({"callback_url": "not a url"}, "callback_url is not a valid URL"),
    ],
)
def test_wc_auth_refuses_bad_parameters(
    store: WooStub, receiver: Receiver, change: dict[str, str], message: str
) -> None:
    with httpx.Client(trust_env=False, timeout=10) as browser:
        answer = browser.get(store.url + "/wc-auth/v1/authorize", params={**authorize_query(receiver), **change})
    assert answer.status_code == 400 and message in answer.text
    assert receiver.received == [] and store.keys == {}


def test_wc_auth_can_demand_an_https_callback(receiver: Receiver) -> None:
    with running(WooStub(https_callbacks_only=True)) as store, httpx.Client(trust_env=False) as browser:
        answer = browser.get(store.url + "/wc-auth/v1/authorize", params=authorize_query(receiver))
    assert answer.status_code == 400 and "over SSL" in answer.text


# -- webhooks -----------------------------------------------------------------------------------------


SECRET = "our-secret"


def create_hooks(store: WooStub, receiver: Receiver, secret: str = SECRET) -> dict[str, int]:
    ids = {}
    with client(store, store.add_key()) as http:
        for topic in ("product.created", "product.updated", "product.deleted"):
            answer = http.post(
                "/webhooks",
                json={"name": f"Epox {topic}", "topic": topic, "delivery_url": receiver.url(), "secret": secret},
            )
            assert answer.status_code == 201, answer.text
            assert "secret" not in answer.json()
            ids[topic] = answer.json()["id"]
    return ids


def signature(body: bytes, secret: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def test_creating_a_webhook_sends_an_unsigned_ping(store: WooStub, receiver: Receiver) -> None:
    ids = create_hooks(store, receiver)
    pings = receiver.received
    assert [dict(parse_qsl(p.body.decode())) for p in pings] == [{"webhook_id": str(i)} for i in ids.values()]
    assert all(p.headers["content-type"] == "application/x-www-form-urlencoded" for p in pings)
    assert not any("x-wc-webhook-signature" in p.headers for p in pings)


def test_product_changes_are_delivered_signed(store: WooStub, receiver: Receiver) -> None:
    ids = create_hooks(store, receiver)
    receiver.received.clear()
    created = store.create_product("Glass Vase", sku="VASE-1")
    store.update_product(created["id"], name="Tall Glass Vase")
    store.delete_product(created["id"])

    topics = [r.headers["x-wc-webhook-topic"] for r in receiver.received]
    assert topics == ["product.created", "product.updated", "product.deleted"]
    for delivery in receiver.received:
        topic = delivery.headers["x-wc-webhook-topic"]
        assert delivery.headers["x-wc-webhook-signature"] == signature(delivery.body, "our-secret")
        assert delivery.headers["x-wc-webhook-id"] == str(ids[topic])
        assert (delivery.headers["x-wc-webhook-resource"], delivery.headers["x-wc-webhook-event"]) == (
            "product",
            topic.split(".")[1],
        )
        assert delivery.headers["x-wc-webhook-delivery-id"]
        assert delivery.headers["x-wc-webhook-source"] == store.url + "/"
    assert json.loads(receiver.received[1].body)["name"] == "Tall Glass Vase"
    assert json.loads(receiver.received[2].body) == {"id": created["id"]}
    assert (
        signature(receiver.received[0].body, "another secret") != receiver.received[0].headers["x-wc-webhook-signature"]
    )


def test_a_failed_delivery_is_never_retried_and_six_in_a_row_disable_the_webhook(
    store: WooStub, receiver: Receiver
) -> None:
    ids = create_hooks(store, receiver)
    receiver.received.clear()
    receiver.status = 500
    for n in range(5):
        store.update_product(100, name=f"Try {n}")
    assert store.webhooks[ids["product.updated"]]["status"] == "active"  # 5 failures: not more than 5 yet
    store.update_product(100, name="Sixth")
    assert len(receiver.received) == 6  # one attempt each, no retries
    with client(store, store.add_key()) as http:
        disabled = http.get("/webhooks", params={"status": "disabled"}).json()
        active = http.get("/webhooks", params={"status": "active"}).json()
    assert [h["id"] for h in disabled] == [ids["product.updated"]]
    assert len(active) == 2

    store.update_product(100, name="Nobody hears this")
    assert len(receiver.received) == 6

    receiver.status = 200
    with client(store, store.add_key()) as http:
        enabled = http.put(f"/webhooks/{ids['product.updated']}", json={"status": "active"})
    assert enabled.json()["status"] == "active"
    store.update_product(100, name="Heard again")
    assert json.loads(receiver.received[-1].body)["name"] == "Heard again"


def test_a_success_resets_the_failure_count(store: WooStub, receiver: Receiver) -> None:
    ids = create_hooks(store, receiver)
    receiver.statuses = [500] * 5 + [302] + [404] * 5
    for n in range(11):
        store.update_product(100, name=f"Edit {n}")
    assert store.webhooks[ids["product.updated"]]["status"] == "active"
    assert [d.status for d in store.deliveries][-6:] == [302, 404, 404, 404, 404, 404]


def test_webhooks_are_deleted_only_with_force(store: WooStub, receiver: Receiver) -> None:
    ids = create_hooks(store, receiver)
    with client(store, store.add_key()) as http:
        trashed = http.delete(f"/webhooks/{ids['product.created']}")
        deleted = http.delete(f"/webhooks/{ids['product.created']}", params={"force": "true"})
        gone = http.get(f"/webhooks/{ids['product.created']}")
    assert trashed.status_code == 501
    assert deleted.status_code == 200 and gone.status_code == 404


def test_a_webhook_needs_a_valid_topic_and_url(store: WooStub, receiver: Receiver) -> None:
    with client(store, store.add_key()) as http:
        topic = http.post("/webhooks", json={"topic": "product.exploded.x", "delivery_url": "ftp://x"})
        no_topic = http.post("/webhooks", json={"delivery_url": receiver.url()})
        garbled = http.post("/webhooks", content=b"{not json", headers={"Content-Type": "application/json"})
    assert topic.status_code == 400
    assert no_topic.json()["code"] == "woocommerce_rest_webhook_invalid_topic"
    assert garbled.json()["code"] == "rest_invalid_json"
    assert store.webhooks == {}


# -- product images ---------------------------------------------------------------------------------------


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(out, "JPEG")
    return out.getvalue()


def test_images_replace_the_gallery_keeping_by_id_and_sideloading_by_src(store: WooStub, receiver: Receiver) -> None:
    create_hooks(store, receiver)
    receiver.received.clear()
    receiver.files["/renders/hoodie-front.jpg"] = (jpeg(), "image/jpeg")
    before = store.gallery(101)
    assert [i["id"] for i in before] == [1002, 1003]

    with client(store, store.add_key()) as http:
        answer = http.put(
            "/products/101",
            json={
                "images": [
                    {"src": receiver.url("/renders/hoodie-front.jpg") + "?X-Amz-Signature=abc", "alt": "Front"},
                    {"id": 1002},
                    {"id": "1003", "alt": "Back, new alt"},
                ]
            },
        )
        read = http.get("/products/101").json()

    assert answer.status_code == 200, answer.text
    new, kept, renamed = answer.json()["images"]
    assert (kept["id"], renamed["id"], renamed["alt"]) == (1002, 1003, "Back, new alt")
    assert new["id"] not in (1002, 1003) and new["alt"] == "Front" and new["name"] == "hoodie-front"
    assert new["src"].startswith(store.url + "/wp-content/uploads/") and new["src"].endswith("/hoodie-front.jpg")
    assert read["images"] == answer.json()["images"]  # element 0 is the featured image, in order
    assert receiver.fetched == ["/renders/hoodie-front.jpg?X-Amz-Signature=abc"]  # really fetched
    with httpx.Client(trust_env=False) as http:
        served = http.get(new["src"])
    assert (served.content, served.headers["Content-Type"]) == (jpeg(), "image/jpeg")
    [delivery] = receiver.received
    assert delivery.headers["x-wc-webhook-topic"] == "product.updated"
    assert [i["id"] for i in json.loads(delivery.body)["images"]] == [new["id"], 1002, 1003]

    with client(store, store.add_key()) as http:
        trimmed = http.put("/products/101", json={"images": [{"id": 1003}]}).json()
        emptied = http.put("/products/102", json={"images": []}).json()
    assert [i["id"] for i in trimmed["images"]] == [1003]
    assert emptied["images"] == []
    # Off the product, still in the media library.
    assert store.library_image(new["id"]) == {k: new[k] for k in ("id", "src", "name", "alt")}
    assert store.library_image(1002) is not None and store.library_image(1004) is not None


@pytest.mark.parametrize(
    ("path", "served", "message"),
    [
        ("/renders/shot", (b"\x89PNG\r\n\x1a\n" + b"0" * 32, "image/png"), "Invalid image: Sorry, you are not allowed"),
        ("/renders/shot.txt", (b"hello", "text/plain"), "Invalid image: Sorry, you are not allowed"),
        ("/renders/shot.png", (b"<html>not an image</html>", "text/html"), "Invalid image: Sorry, you are not allowed"),
        ("/renders/missing.png", None, "Error getting remote image http://127.0.0.1:"),
    ],
)
def test_a_source_that_cannot_be_sideloaded_changes_nothing(
    store: WooStub, receiver: Receiver, path: str, served: tuple[bytes, str] | None, message: str
) -> None:
    ids = create_hooks(store, receiver)
    receiver.received.clear()
    if served is not None:
        receiver.files[path] = served
    before = store.products[101]["date_modified"], store.gallery(101)
    with client(store, store.add_key()) as http:
        answer = http.put("/products/101", json={"images": [{"id": 1002}, {"src": receiver.url(path)}]})
    assert answer.status_code == 400
    assert answer.json()["code"] == "woocommerce_product_image_upload_error"
    assert answer.json()["message"].startswith(message)
    assert answer.json()["data"] == {"status": 400}
    assert (store.products[101]["date_modified"], store.gallery(101)) == before
    assert receiver.received == [] and ids  # no product.updated
    if served is None:
        assert answer.json()["message"].endswith("Error: Not Found")


def test_an_unreachable_source_and_an_unknown_attachment(store: WooStub, receiver: Receiver) -> None:
    with client(store, store.add_key()) as http:
        unreachable = http.put("/products/101", json={"images": [{"src": "http://127.0.0.1:9/a.png"}]})
        unknown = http.put("/products/101", json={"images": [{"id": 987654}]})
        neither = http.put("/products/101", json={"images": [{"alt": "no id, no src"}]})
        malformed = http.put("/products/101", json={"images": "https://x.test/a.png"})
    assert unreachable.json()["code"] == "woocommerce_product_image_upload_error"
    assert "cURL error 7" in unreachable.json()["message"]
    assert (unknown.status_code, unknown.json()["code"]) == (400, "woocommerce_product_invalid_image_id")
    assert unknown.json()["message"] == "#987654 is an invalid image ID."
    assert neither.json()["message"] == "#0 is an invalid image ID."
    assert (malformed.status_code, malformed.json()["code"]) == (400, "rest_invalid_param")
    assert [i["id"] for i in store.gallery(101)] == [1002, 1003]


def test_private_sources_are_refused_like_wp_safe_remote_get(receiver: Receiver) -> None:
    receiver.files["/a.png"] = (b"\x89PNG\r\n\x1a\n", "image/png")
    with running(WooStub(safe_remote_only=True)) as store, client(store, store.add_key()) as http:
        answer = http.put("/products/101", json={"images": [{"src": receiver.url("/a.png")}]})
    assert answer.json()["message"].endswith("Error: A valid URL was not provided.")
    assert receiver.fetched == []


def test_sideloaded_files_are_named_as_wordpress_names_them(store: WooStub, receiver: Receiver) -> None:
    png_bytes = io.BytesIO()
    Image.new("RGB", (2, 2)).save(png_bytes, "PNG")
    receiver.files["/a/shot.jpg"] = (png_bytes.getvalue(), "image/jpeg")  # a PNG sent as .jpg
    receiver.files["/b/shot.jpg"] = (jpeg(), "image/jpeg")
    receiver.files["/c/shot.jpg"] = (jpeg(), "image/jpeg")
    with client(store, store.add_key()) as http:
        images = http.put(
            "/products/105",
            json={
                "images": [
                    {"src": receiver.url("/a/shot.jpg"), "name": "AI shot"},
                    {"src": receiver.url("/b/shot.jpg")},
                    {"src": receiver.url("/c/shot.jpg")},
                ]
            },
        ).json()["images"]
    assert [i["src"].rsplit("/", 1)[1] for i in images] == ["shot.png", "shot.jpg", "shot-1.jpg"]
    assert [i["name"] for i in images] == ["AI shot", "shot", "shot-1"]


def test_the_merchant_removes_an_image_in_wp_admin(store: WooStub, receiver: Receiver) -> None:
    create_hooks(store, receiver)
    receiver.received.clear()
    shown = store.merchant_removes_image(101, 1002)
    assert [i["id"] for i in shown["images"]] == [1003]
    assert store.library_image(1002) is not None
    [delivery] = receiver.received
    assert delivery.headers["x-wc-webhook-topic"] == "product.updated"
    assert [i["id"] for i in json.loads(delivery.body)["images"]] == [1003]
    with pytest.raises(ValueError):
        store.merchant_removes_image(101, 1002)


def test_a_trashed_product_is_read_with_its_status_and_a_deleted_one_is_gone(store: WooStub) -> None:
    store.trash_product(104)
    store.delete_product(105)
    with client(store, store.add_key()) as http:
        trashed = http.get("/products/104")
        listed = http.get("/products", params={"per_page": 100}).json()
        deleted = http.get("/products/105")
        written = http.put("/products/105", json={"images": []})
    assert (trashed.status_code, trashed.json()["status"]) == (200, "trash")
    assert {p["id"] for p in listed}.isdisjoint({104, 105}) and len(listed) == 48
    assert (deleted.status_code, deleted.json()["code"]) == (404, "woocommerce_rest_product_invalid_id")
    assert (written.status_code, written.json()["code"]) == (404, "woocommerce_rest_product_invalid_id")


# -- programmable failures ------------------------------------------------------------------------------


def test_failures_are_programmable(store: WooStub) -> None:
    key = store.add_key("read")
    store.fail("429", path=API + "/products")
    store.fail("503")
    store.fail("malformed")
    store.fail("drop")
    with client(store, key) as http:
        limited = http.get("/products")
        unavailable = http.get("/products")
        malformed = http.get("/products")
        with pytest.raises(httpx.HTTPError):
            http.get("/products")
        fine = http.get("/products")

    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "1")
    assert unavailable.status_code == 503
    assert malformed.status_code == 200
    with pytest.raises(ValueError):
        malformed.json()
    assert fine.status_code == 200 and len(fine.json()) == 10
    assert [r.status for r in store.seen("GET", API + "/products")] == [429, 503, 200, 0, 200]


def test_a_failure_for_one_method_on_one_path(store: WooStub) -> None:
    store.fail("429", times=1, path=API + "/products/101", method="PUT", retry_after=30)
    store.fail("503", times=1, path=API + "/products/101", method="PUT")
    with client(store, store.add_key()) as http:
        read = http.get("/products/101")
        limited = http.put("/products/101", json={"images": [{"id": 1003}]})
        unavailable = http.put("/products/101", json={"images": [{"id": 1003}]})
        written = http.put("/products/101", json={"images": [{"id": 1003}]})
    assert read.status_code == 200
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "30")
    assert unavailable.status_code == 503
    assert written.status_code == 200 and [i["id"] for i in store.gallery(101)] == [1003]


def test_a_failure_for_one_path_leaves_the_others_alone(store: WooStub) -> None:
    store.fail("500", times=2, path=API + "/products/categories")
    with client(store, store.add_key("read")) as http:
        assert http.get("/products").status_code == 200
        assert http.get("/products/categories").status_code == 500
        assert http.get("/products/categories").status_code == 500
        assert http.get("/products/categories").status_code == 200
