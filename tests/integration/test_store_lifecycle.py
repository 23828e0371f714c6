"""Store connections end to end: the functions served over real HTTP, the real httpx adapters talking to
the Shopify and WooCommerce stubs, Firestore on the emulator, tasks run by the dispatcher.

Shopify: connect (authorize → signed callback → expiring token), import 50 products with images through
the bulk path, import again (no duplicates), product webhooks (update, redelivery, forged, delete), a
refresh that rotates, a revoked refresh (needs re-authorisation, notified), uninstall, shop/redact,
reconnect. WooCommerce: connect through wc-auth (unsigned keys bound to the nonce), webhooks created with
our secret (the creation ping answered), import, product webhooks, reconciliation after missed
deliveries and a disabled webhook, disconnect.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from dev.stubs.shopify import ShopifyStub, sign_query
from dev.stubs.shopify import running as shopify_running
from dev.stubs.woocommerce import WooStub
from tests.platforms import install
from tests.store_stack import APP_URL, store_settings


@pytest.fixture
def shopify() -> Iterator[ShopifyStub]:
    # A shop of its own per test: a shop one client holds live cannot be connected by another.
    shop = f"demo-{uuid.uuid4().hex[:10]}.myshopify.com"
    with shopify_running(ShopifyStub(shop=shop, product_count=50, image_size=64)) as stub:
        yield stub


def _connect_shopify(stack: Any, headers: dict[str, str], shopify: ShopifyStub) -> str:
    """The merchant's journey: start → Shopify's authorize page (approves at once) → our callback URL."""
    answer = stack.client("store_oauth").post("/stores/shopify/connect", json={"shop": shopify.shop}, headers=headers)
    assert answer.status_code == 200, answer.get_json()
    authorize = answer.get_json()["authorize_url"]
    assert authorize.startswith(shopify.url + "/admin/oauth/authorize?")
    redirect = httpx.get(authorize, follow_redirects=False)
    assert redirect.status_code == 302
    return str(redirect.headers["location"])


def _finish(callback_url: str) -> httpx.Response:
    return httpx.get(callback_url, follow_redirects=False, timeout=30)


def _products(stack: Any, headers: dict[str, str]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        page = stack.client("catalog_api").get("/products", query_string=query, headers=headers).get_json()
        found += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return found


def _import(stack: Any, headers: dict[str, str], body: dict[str, Any] | None = None) -> dict[str, Any]:
    created = stack.client("store_oauth").post("/stores/imports", json=body or {}, headers=headers)
    assert created.status_code == 202, created.get_json()
    import_id = created.get_json()["id"]
    assert created.get_json()["status"] == "preparing"
    stack.run_tasks()
    draft = stack.client("catalog_api").get(f"/imports/{import_id}", headers=headers).get_json()
    assert draft["status"] == "draft", draft
    started = stack.client("catalog_api").post(f"/imports/{import_id}/start", headers=headers)
    assert started.status_code == 202, started.get_json()
    stack.run_tasks()
    done = stack.client("catalog_api").get(f"/imports/{import_id}", headers=headers).get_json()
    done["draft_preview"] = draft["preview"]
    return done


def _grant_slots(stack: Any, client_id: str, slots: int) -> None:
    """Enough product slots for the catalog (the Free plan has fewer than the demo shop's 50)."""
    stack.platform.db.collection("clients").document(client_id).set(
        {"billing": {"plan": "growth", "product_slots": slots}}, merge=True
    )


# -- Shopify ---------------------------------------------------------------------------------------


def test_shopify_connect_import_keep_in_step_and_let_go(
    stack: Any, shop_platform: Any, shopify: ShopifyStub, served: str, headers: dict[str, str], client_id: str
) -> None:
    callback = _connect_shopify(stack, headers, shopify)
    # A forged HMAC is a 401 and changes nothing; the real callback connects and sends the browser home.
    forged = callback.replace("hmac=", "hmac=00")
    assert _finish(forged).status_code == 401
    landed = _finish(callback)
    assert landed.status_code == 302, landed.text
    assert landed.headers["location"].startswith(f"{APP_URL}/stores?connected=shopify")
    # The same callback again is a replay: its state was used.
    replay = _finish(callback)
    assert replay.status_code == 400 and replay.json()["code"] == "oauth_state_refused"

    status = stack.client("store_oauth").get("/stores/connection", headers=headers).get_json()
    assert status["health"] == "ok" and status["platform"] == "shopify" and status["shop"] == shopify.shop
    assert "write_products" in status["scopes"]
    stored = stack.platform.db.document(f"clients/{client_id}/store_connection/current").get().to_dict()
    token_values = [t for t in shopify.access_tokens]
    assert token_values and not any(token in json.dumps(stored, default=str) for token in token_values)
    assert not any(token in json.dumps(status) for token in token_values)

    _grant_slots(stack, client_id, 200)
    first = _import(stack, headers)
    preview = first["draft_preview"]
    assert preview["total_products"] == 50 and preview["slots"]["new_products"] == 50
    assert sum(entry["products"] for entry in preview["categories"]) >= 50
    assert first["status"] == "completed", first
    assert first["progress"]["created_products"] == 50 and first["progress"]["failed_rows"] == 0
    products = _products(stack, headers)
    assert len(products) == 50
    assert all(product["source"] == "shopify" and product["store"]["status"] == "linked" for product in products)
    assert sum(len(product["images"]) for product in products) == first["progress"]["images_imported"] > 0

    # Importing again maps every store product to the same product: nothing new, no slot taken twice.
    again = _import(stack, headers)
    assert again["status"] == "completed" and again["draft_preview"]["slots"]["already_imported"] == 50
    assert len(_products(stack, headers)) == 50
    assert sum(len(product["images"]) for product in _products(stack, headers)) == first["progress"]["images_imported"]

    # A products/update webhook: signed, acknowledged at once, worked in a task from the store's fresh state.
    target = products[0]["store"]["product_id"]
    hook_url = f"{served}/store_webhook/webhooks/shopify"
    delivery = shopify.update_product(int(target), url=hook_url, title="Renamed in Shopify", tags=["summer"])
    assert delivery is not None and delivery.status == 200
    stack.run_tasks()
    ours = next(p for p in _products(stack, headers) if p["store"]["product_id"] == target)
    assert ours["name"] == "Renamed in Shopify" and ours["tags"] == ["summer"]
    # Shopify's retry of the same delivery is acknowledged and dropped; a forged one is a 401.
    redelivered = shopify.deliver(
        "products/update", json.loads(delivery.body), hook_url, webhook_id=delivery.webhook_id
    )
    assert redelivered.status == 200
    assert stack.run_tasks() == 0
    forged_hook = shopify.deliver("products/update", json.loads(delivery.body), hook_url, secret="not-the-secret")
    assert forged_hook.status == 401

    # Deleted in the store: ours stays, marked.
    deleted = shopify.delete_product(int(target), url=hook_url)
    assert deleted is not None and deleted.status == 200
    stack.run_tasks()
    ours = next(p for p in _products(stack, headers) if p["store"]["product_id"] == target)
    assert ours["store"]["status"] == "deleted_in_store"

    # The token expires: the next use refreshes it, and the refresh token rotates.
    later = datetime.now(UTC) + timedelta(hours=2)
    shopify.clock.advance(2 * 3600)
    install(stack, clock=lambda: later, **store_settings(served, shopify))
    version_before = stack_connection(stack, client_id)["secrets_version"]
    categories = stack.client("store_oauth").get("/stores/categories", headers=headers)
    assert categories.status_code == 200, categories.get_json()
    assert stack_connection(stack, client_id)["secrets_version"] == version_before + 1
    assert len(shopify.seen("POST", "/admin/oauth/access_token")) >= 2

    # Revoked: the next refresh is refused; the connection needs re-authorisation, and the merchant is told.
    shopify.revoke()
    much_later = later + timedelta(hours=2)
    shopify.clock.advance(2 * 3600)
    install(stack, clock=lambda: much_later, **store_settings(served, shopify))
    refused = stack.client("store_oauth").get("/stores/categories", headers=headers)
    assert refused.status_code == 409 and refused.get_json()["code"] == "store_needs_reauthorization"
    status = stack.client("store_oauth").get("/stores/connection", headers=headers).get_json()
    assert status["health"] == "needs_reauth"
    stack.run_tasks()
    inbox = stack.client("notifications_api").get("/notifications", headers=headers).get_json()
    assert any(item["type"] == "store_needs_reauthorization" for item in inbox["items"]), inbox

    # Reconnect: a new authorisation makes the connection healthy again.
    landed = _finish(_connect_shopify(stack, headers, shopify))
    assert landed.status_code == 302
    assert stack.client("store_oauth").get("/stores/connection", headers=headers).get_json()["health"] == "ok"

    # Uninstalled: disconnected, tokens gone, products kept and unlinked.
    uninstalled = shopify.uninstall(url=hook_url)
    assert uninstalled is not None and uninstalled.status == 200
    stack.run_tasks()
    status = stack.client("store_oauth").get("/stores/connection", headers=headers).get_json()
    assert status["health"] == "disconnected"
    assert stack_connection(stack, client_id)["secrets"] is None
    kept = _products(stack, headers)
    assert len(kept) == 50 and all(p["store"]["status"] in ("unlinked", "deleted_in_store") for p in kept)

    # shop/redact (48 h later): what we hold of the shop is erased and the erasure recorded.
    redact = shopify.shop_redact(hook_url)
    assert redact.status == 200
    stack.run_tasks()
    assert not stack.platform.db.document(f"clients/{client_id}/store_connection/current").get().exists
    assert all(product["store"] is None for product in _products(stack, headers))
    records = [doc.to_dict() for doc in stack.platform.db.collection("store_redactions").stream()]
    assert any(record["shop"] == shopify.shop and record["client_id"] == client_id for record in records)


def stack_connection(stack: Any, client_id: str) -> dict[str, Any]:
    snapshot = stack.platform.db.document(f"clients/{client_id}/store_connection/current").get()
    return dict(snapshot.to_dict() or {})


def test_shopify_callback_refuses_stale_and_foreign_states(
    stack: Any, shop_platform: Any, shopify: ShopifyStub, headers: dict[str, str], other_client_id: str
) -> None:
    callback = _connect_shopify(stack, headers, shopify)
    params = {key: values[0] for key, values in parse_qs(urlsplit(callback).query).items()}
    # Re-signed with a timestamp an hour old: a replay outside the window.
    old = dict(params, timestamp=str(int(datetime.now(UTC).timestamp()) - 3600))
    old.pop("hmac")
    old["hmac"] = sign_query(old, shopify.client_secret)
    stale = httpx.get(callback.split("?")[0], params=old, follow_redirects=False)
    assert stale.status_code == 401
    # A state that was never issued, signed correctly: refused.
    unknown = dict(params, state="never-issued")
    unknown.pop("hmac")
    unknown["hmac"] = sign_query(unknown, shopify.client_secret)
    assert httpx.get(callback.split("?")[0], params=unknown, follow_redirects=False).status_code == 400
    # Nothing was connected by either.
    assert stack.client("store_oauth").get("/stores/connection", headers=headers).status_code == 404
    # Bad domains never reach Shopify.
    for shop in ("evil.com", "shop.myshopify.com.evil.com", "-x.myshopify.com", "a/b.myshopify.com"):
        answer = stack.client("store_oauth").post("/stores/shopify/connect", json={"shop": shop}, headers=headers)
        assert answer.status_code == 422, (shop, answer.get_json())


# -- WooCommerce -----------------------------------------------------------------------------------


def _connect_woo(stack: Any, headers: dict[str, str], woo: WooStub) -> httpx.Response:
    answer = stack.client("store_oauth").post(
        "/stores/woocommerce/connect", json={"store_url": woo.url}, headers=headers
    )
    assert answer.status_code == 200, answer.get_json()
    authorize = answer.get_json()["authorize_url"]
    assert "/wc-auth/v1/authorize?" in authorize
    # The stub approves at once: it posts the keys to our callback, then sends the browser to return_url.
    return httpx.get(authorize, follow_redirects=False, timeout=60)


def test_woocommerce_connect_import_webhooks_reconcile_disconnect(
    stack: Any, woo_platform: Any, woo: WooStub, served: str, headers: dict[str, str], client_id: str
) -> None:
    approved = _connect_woo(stack, headers, woo)
    assert approved.status_code == 302
    assert woo.callbacks and woo.callbacks[-1][2] == 200  # our callback answered exactly 200
    landing = httpx.get(approved.headers["location"], follow_redirects=False)
    assert landing.status_code == 302 and "connected=woocommerce" in landing.headers["location"]
    status = stack.client("store_oauth").get("/stores/connection", headers=headers).get_json()
    assert status["health"] == "ok" and status["platform"] == "woocommerce" and status["webhooks"] == 3
    assert all(ping_status == 200 for _, ping_status in woo.pings)
    stored = json.dumps(stack_connection(stack, client_id), default=str)
    assert not any(key.consumer_secret in stored or key.consumer_key in stored for key in woo.keys.values())

    _grant_slots(stack, client_id, 200)
    done = _import(stack, headers)
    assert done["status"] == "completed", done
    total = len(woo.products)
    assert done["draft_preview"]["total_products"] == total
    products = _products(stack, headers)
    assert len(products) == done["progress"]["created_products"] == total
    assert all(p["source"] == "woocommerce" for p in products)
    variable = [p for p in products if p["store"]["variants"]]
    assert variable, "variable products keep their variations as product data"

    # A product.updated webhook, signed with our secret.
    target = int(products[0]["store"]["product_id"])
    woo.update_product(target, name="Renamed in WooCommerce")
    stack.run_tasks()
    ours = next(p for p in _products(stack, headers) if p["store"]["product_id"] == str(target))
    assert ours["name"] == "Renamed in WooCommerce"

    # Deliveries fail (our endpoint down): WooCommerce never retries and disables the webhook after > 5
    # failures. Reconciliation re-activates it and catches the change it missed.
    woo_hooks = list(woo.webhooks.values())
    for hook in woo_hooks:
        hook["delivery_url"] = hook["delivery_url"].replace(served, "http://127.0.0.1:9")
    for attempt in range(6):
        woo.update_product(target, name=f"Missed change {attempt}")
    assert any(hook["status"] == "disabled" for hook in woo.webhooks.values())
    for hook in woo.webhooks.values():
        hook["delivery_url"] = hook["delivery_url"].replace("http://127.0.0.1:9", served)
    later = datetime.now(UTC) + timedelta(minutes=1)
    install(stack, clock=lambda: later, **store_settings(served))
    job = stack.client("store_tasks").post("/jobs/reconcile-stores", headers=_scheduler_headers())
    assert job.status_code == 200, job.get_json()
    stack.run_tasks()
    assert all(hook["status"] == "active" for hook in woo.webhooks.values())
    ours = next(p for p in _products(stack, headers) if p["store"]["product_id"] == str(target))
    assert ours["name"] == "Missed change 5"

    # A forged webhook is a 401; the creation ping is a 200.
    hook_url = next(iter(woo.webhooks.values()))["delivery_url"]
    forged = httpx.post(
        hook_url,
        content=b'{"id": 1}',
        headers={"X-WC-Webhook-Signature": "AAAA", "X-WC-Webhook-Topic": "product.updated"},
    )
    assert forged.status_code == 401
    ping = httpx.post(hook_url, content=b"webhook_id=1", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert ping.status_code == 200

    # Disconnect: our webhooks deleted in the store, keys gone, products kept and unlinked.
    gone = stack.client("store_oauth").delete("/stores/connection", headers=headers)
    assert gone.status_code == 200 and gone.get_json()["health"] == "disconnected"
    stack.run_tasks()
    assert not woo.webhooks
    assert stack_connection(stack, client_id)["secrets"] is None
    kept = _products(stack, headers)
    assert len(kept) == total and all(p["store"]["status"] == "unlinked" for p in kept)


def test_woocommerce_refuses_unknown_nonces_and_private_stores(
    stack: Any, woo_platform: Any, woo: WooStub, served: str, headers: dict[str, str]
) -> None:
    key = woo.add_key()
    forged = httpx.post(
        f"{served}/store_oauth/oauth/woocommerce/callback",
        json={
            "key_id": key.key_id,
            "user_id": "x" * 32,
            "consumer_key": key.consumer_key,
            "consumer_secret": key.consumer_secret,
            "key_permissions": "read_write",
        },
    )
    assert forged.status_code == 400 and forged.json()["code"] == "oauth_state_refused"
    assert stack.client("store_oauth").get("/stores/connection", headers=headers).status_code == 404
    install(stack, **{**store_settings(served), "woocommerce_allow_http": False})
    # (127.0.0.1 is open to the test fetcher: the stub lives there; other private addresses are not.)
    for url in (woo.url, "https://10.0.0.1", "https://169.254.169.254", "https://[::1]", "ftp://shop.example"):
        answer = stack.client("store_oauth").post(
            "/stores/woocommerce/connect", json={"store_url": url}, headers=headers
        )
        assert answer.status_code == 422, (url, answer.get_json())


def _scheduler_headers() -> dict[str, str]:
    from tests.conftest import TASK_SECRET

    return {"Authorization": f"Bearer {TASK_SECRET}"}


def test_disconnecting_a_shopify_store_uninstalls_the_app(
    stack: Any, shop_platform: Any, shopify: ShopifyStub, headers: dict[str, str], client_id: str
) -> None:
    assert _finish(_connect_shopify(stack, headers, shopify)).status_code == 302
    gone = stack.client("store_oauth").delete("/stores/connection", headers=headers)
    assert gone.status_code == 200 and gone.get_json()["health"] == "disconnected"
    # Revoked where the platform allows: the app uninstalled itself, so its tokens are refused now.
    assert shopify.uninstalled_by_app
    assert all(token.revoked for token in shopify.access_tokens.values())
    assert stack_connection(stack, client_id)["secrets"] is None
    again = stack.client("store_oauth").delete("/stores/connection", headers=headers)
    assert again.status_code == 200 and again.get_json()["health"] == "disconnected"
    # Oversized and garbled webhook bodies are refused before anything is read.
    hook = stack.client("store_webhook")
    big = hook.post("/webhooks/shopify", data=b"{" + b" " * (1024 * 1024 + 10) + b"}")
    assert big.status_code == 413
    from dev.stubs.shopify import sign_webhook

    garbled = b"[not json"
    answer = hook.post(
        "/webhooks/shopify",
        data=garbled,
        headers={
            "X-Shopify-Hmac-Sha256": sign_webhook(garbled, shopify.client_secret),
            "X-Shopify-Topic": "products/update",
            "X-Shopify-Shop-Domain": shopify.shop,
            "X-Shopify-Webhook-Id": "w-garbled",
        },
    )
    assert answer.status_code == 400 and answer.get_json()["code"] == "garbled_webhook"


def test_a_manual_product_is_linked_to_a_store_product_found_by_search(
    stack: Any, shop_platform: Any, shopify: ShopifyStub, headers: dict[str, str], client_id: str
) -> None:
    assert _finish(_connect_shopify(stack, headers, shopify)).status_code == 302
    target = next(iter(shopify.catalog.products.values()))
    manual = stack.client("catalog_api").post("/products", json={"name": "My own mug"}, headers=headers)
    assert manual.status_code == 201
    product_id = manual.get_json()["id"]
    found = stack.client("store_oauth").get(
        "/stores/products/search", query_string={"q": target.title}, headers=headers
    )
    assert found.status_code == 200, found.get_json()
    hits = found.get_json()["products"]
    assert any(hit["id"] == str(target.id) and hit["linked_product_id"] is None for hit in hits)
    linked = stack.client("store_oauth").put(
        f"/products/{product_id}/store-link", json={"store_product_id": str(target.id)}, headers=headers
    )
    assert linked.status_code == 200, linked.get_json()
    body = linked.get_json()
    assert body["store"]["product_id"] == str(target.id) and body["store"]["status"] == "linked"
    assert body["name"] == target.title  # the store's data mirrored onto it
    again = stack.client("store_oauth").get(
        "/stores/products/search", query_string={"q": target.title}, headers=headers
    )
    assert any(hit["linked_product_id"] == product_id for hit in again.get_json()["products"])
    # Another product cannot take the same store product; an unknown store product is a 404.
    other = stack.client("catalog_api").post("/products", json={"name": "Another"}, headers=headers).get_json()
    taken = stack.client("store_oauth").put(
        f"/products/{other['id']}/store-link", json={"store_product_id": str(target.id)}, headers=headers
    )
    assert taken.status_code == 409 and taken.get_json()["code"] == "product_already_linked"
    missing = stack.client("store_oauth").put(
        f"/products/{other['id']}/store-link", json={"store_product_id": "1"}, headers=headers
    )
    assert missing.status_code == 404
