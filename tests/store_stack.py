"""What the store integration tests share: every entry point served over real HTTP (the stores call our
callbacks and webhooks, and fetch our presigned images) and the settings that point a platform at the
store stubs."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dev.stubs.shopify import ShopifyStub

APP_URL = "https://app.epox.test"
LOCAL_KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # one local key for every platform a test installs


@contextmanager
def serving(function_apps: dict[str, Any]) -> Iterator[str]:
    """Every entry point under ``/<entry point>`` on a real HTTP server; yields its base URL."""
    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    from werkzeug.serving import make_server
    from werkzeug.wrappers import Response

    root = Response("not found", status=404)
    wsgi = DispatcherMiddleware(root, {f"/{name}": app for name, app in function_apps.items()})
    server = make_server("127.0.0.1", 0, wsgi, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def store_settings(served: str, shopify: ShopifyStub | None = None) -> dict[str, Any]:
    """Settings for ``tests.platforms.install``: the store functions reached at ``served``, WooCommerce over
    plain http (the stub), Shopify's admin API at the stub's address when given."""
    from pydantic import SecretStr

    values: dict[str, Any] = {
        "woocommerce_allow_http": True,
        "store_credential_keys": SecretStr(json.dumps({"v1": LOCAL_KEY})),
        "store_credential_key_version": "v1",
        "store_callback_base_url": f"{served}/store_oauth",
        "store_webhook_base_url": f"{served}/store_webhook",
        "app_url": APP_URL,
        "import_chunk_rows": 10,
    }
    if shopify is not None:
        values.update(
            shopify_client_id=shopify.client_id,
            shopify_client_secret=SecretStr(shopify.client_secret),
            shopify_admin_base_url=shopify.url,
        )
    return values
