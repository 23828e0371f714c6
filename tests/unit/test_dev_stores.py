"""``make dev``'s store stubs: the settings that point the functions at them, the local credential key
kept across runs, and the ``/_dev/shopify`` and ``/_dev/woocommerce`` routes that make a merchant's edit
reach a webhook endpoint, signed as the platforms sign it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from dev.jwt_issuer import DevIssuer
from dev.stack import (
    DEV_CREDENTIAL_KEY_VERSION,
    build_dev_app,
    load_or_create_credential_keys,
    shopify_stub,
    store_environment,
)
from dev.stores import DevStores
from dev.stubs import shopify, woocommerce
from shared.credentials import LocalKeyring


@contextmanager
def receiver() -> Iterator[tuple[str, list[tuple[str, dict[str, str], bytes]]]]:
    """A webhook endpoint on a free port: ``(url, [(path, lower-cased headers, body)])``."""
    received: list[tuple[str, dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def test_the_store_settings_point_at_the_stubs_and_this_stack(tmp_path: Path) -> None:
    shop = shopify_stub("http://127.0.0.1:8000")
    shop.port = 4321
    keys = load_or_create_credential_keys(tmp_path / "keys.json")
    values = store_environment("http://127.0.0.1:8000", shop, keys)
    assert values["SHOPIFY_CLIENT_ID"] == shop.client_id and values["SHOPIFY_CLIENT_SECRET"] == shop.client_secret
    assert values["SHOPIFY_ADMIN_BASE_URL"] == "http://127.0.0.1:4321"
    assert values["WOOCOMMERCE_ALLOW_HTTP"] == "true"
    assert values["STORE_CALLBACK_BASE_URL"] == "http://127.0.0.1:8000/store_oauth"
    assert values["STORE_WEBHOOK_BASE_URL"] == "http://127.0.0.1:8000/store_webhook"
    # The shop accepts only our callback, as a Shopify app's allowed redirection URLs do.
    assert shop.redirect_uris == ["http://127.0.0.1:8000/store_oauth/oauth/shopify/callback"]
    keyring = LocalKeyring.from_setting(values["STORE_CREDENTIAL_KEYS"], values["STORE_CREDENTIAL_KEY_VERSION"])
    assert keyring.current == DEV_CREDENTIAL_KEY_VERSION


def test_the_local_credential_key_is_made_once_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "store-credential-keys.json"
    first = load_or_create_credential_keys(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_credential_keys(path) == first  # sealed credentials keep opening
    path.write_text(json.dumps({"v0": LocalKeyring.generate_key()}))
    kept = json.loads(load_or_create_credential_keys(path))
    assert set(kept) == {"v0", DEV_CREDENTIAL_KEY_VERSION}  # an older version is kept, not overwritten


def test_a_shopify_edit_is_delivered_signed_to_the_webhook(tmp_path: Path) -> None:
    with receiver() as (url, received), shopify.running() as shop, woocommerce.running() as woo:
        app = build_dev_app(
            DevIssuer(issuer="i", audience="a"), None, tmp_path, stores=DevStores(shop, woo, f"{url}/hook")
        )
        client = app.test_client()
        product = shop.product(3)
        answer = client.post(
            "/_dev/shopify/deliver",
            json={"topic": "products/update", "product_id": product.id, "changes": {"title": "Renamed"}},
        )
        assert answer.status_code == 200, answer.json
        delivery = answer.json["delivery"]
        assert (delivery["topic"], delivery["status"]) == ("products/update", 200)
        path, headers, body = received[-1]
        assert path == "/hook" and headers["x-shopify-topic"] == "products/update"
        assert headers["x-shopify-hmac-sha256"] == shopify.sign_webhook(body, shop.client_secret)
        assert json.loads(body)["title"] == "Renamed" and shop.product(product.id).title == "Renamed"

        again = client.post("/_dev/shopify/deliver", json={"redeliver": delivery["webhook_id"]})
        assert again.json["delivery"]["webhook_id"] == delivery["webhook_id"] and len(received) == 2

        refused = client.post("/_dev/shopify/deliver", json={"topic": "products/update", "product_id": 3,
                                                             "changes": {"media": []}})  # fmt: skip
        assert refused.status_code == 400 and "media" in refused.json["error"]
        missing = client.post("/_dev/shopify/deliver", json={"topic": "products/delete", "product_id": 99_999_999})
        assert missing.status_code == 404
        assert client.post("/_dev/shopify/deliver", json={"topic": "orders/create"}).status_code == 400

        uninstalled = client.post("/_dev/shopify/deliver", json={"topic": "app/uninstalled"})
        assert uninstalled.json["delivery"]["topic"] == "app/uninstalled"
        assert all(token.revoked for token in shop.access_tokens.values())
        state = client.get("/_dev/shopify").json
        assert state["url"] == shop.url and state["products"] == 50
        assert [d["topic"] for d in state["deliveries"]][-1] == "app/uninstalled"


def test_a_woocommerce_edit_fires_the_stores_webhooks(tmp_path: Path) -> None:
    with receiver() as (url, received), shopify.running() as shop, woocommerce.running() as woo:
        app = build_dev_app(
            DevIssuer(issuer="i", audience="a"), None, tmp_path, stores=DevStores(shop, woo, f"{url}/hook")
        )
        client = app.test_client()
        key = woo.add_key()
        created = httpx.post(
            f"{woo.url}/wp-json/wc/v3/webhooks",
            json={"topic": "product.updated", "delivery_url": f"{url}/woo", "secret": "s3cret"},
            auth=(key.consumer_key, key.consumer_secret),
            trust_env=False,
        )
        assert created.status_code == 201, created.text
        answer = client.put("/_dev/woocommerce/products/101", json={"name": "Renamed"})
        assert answer.status_code == 200, answer.json
        assert answer.json["product"]["name"] == "Renamed"
        assert [(d["topic"], d["status"]) for d in answer.json["deliveries"]] == [("product.updated", 200)]
        path, headers, body = received[-1]
        assert path == "/woo" and headers["x-wc-webhook-topic"] == "product.updated"
        assert json.loads(body)["name"] == "Renamed"

        assert client.put("/_dev/woocommerce/products/1", json={"name": "x"}).status_code == 404
        assert client.put("/_dev/woocommerce/products/101", json={"id": 5}).status_code == 400
        made = client.post("/_dev/woocommerce/products", json={"name": "Fresh"})
        assert made.status_code == 201 and made.json["deliveries"] == []  # no product.created webhook
        assert client.delete(f"/_dev/woocommerce/products/{made.json['product']['id']}").status_code == 200
        state = client.get("/_dev/woocommerce").json
        assert state["url"] == woo.url and state["products"] == 50
        assert [hook["topic"] for hook in state["webhooks"]] == ["product.updated"]
