"""The dev stack's store stubs as a merchant works them: ``/_dev/shopify/…`` and ``/_dev/woocommerce/…``
change the stubs' catalogs (or uninstall the app), and each change is delivered to this stack's
``store_webhook`` signed as the platform signs it, so the demo and a developer can watch a store edit
travel through the webhook, its task and the mirror.

Shopify delivers to the one address the app declares (``STORE_WEBHOOK_BASE_URL/webhooks/shopify``);
WooCommerce delivers to the webhooks ``store_oauth`` created on the store when it connected (none
before), so a WooCommerce edit reaches us only once a store is connected.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import flask

    from dev.stubs.shopify import Delivery as ShopifyDelivery
    from dev.stubs.shopify import ShopifyStub
    from dev.stubs.woocommerce import WooStub

# What /_dev/shopify/deliver may change on a product: its plain fields (variants and media are objects).
SHOPIFY_PRODUCT_FIELDS = frozenset({"title", "description_html", "product_type", "vendor", "tags", "status"})
SHOPIFY_TOPICS = (
    "products/create",
    "products/update",
    "products/delete",
    "app/uninstalled",
    "shop/redact",
    "customers/redact",
    "customers/data_request",
)
RECENT = 50  # deliveries listed by GET /_dev/shopify and /_dev/woocommerce


@dataclass(frozen=True)
class DevStores:
    """The running store stubs and where Shopify delivers its webhooks."""

    shopify: ShopifyStub
    woocommerce: WooStub
    shopify_webhook_url: str


class _Refused(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _shopify_delivery(delivery: ShopifyDelivery | None) -> dict[str, Any] | None:
    if delivery is None:
        return None
    return {
        "topic": delivery.topic,
        "url": delivery.url,
        "webhook_id": delivery.webhook_id,
        "event_id": delivery.event_id,
        "status": delivery.status,
    }


def _product_ref(body: dict[str, Any]) -> int | str:
    ref = body.get("product_id")
    if isinstance(ref, bool) or not isinstance(ref, int | str) or ref == "":
        raise _Refused("product_id is required: a numeric id, a gid://shopify/Product/… or a position below 10000")
    return int(ref) if isinstance(ref, str) and ref.isdigit() else ref


def _changes(body: dict[str, Any]) -> dict[str, Any]:
    changes = body.get("changes") or {}
    if not isinstance(changes, dict):
        raise _Refused("changes must be an object")
    unknown = sorted(set(changes) - SHOPIFY_PRODUCT_FIELDS)
    if unknown:
        raise _Refused(f"changes may name {', '.join(sorted(SHOPIFY_PRODUCT_FIELDS))}; not {', '.join(unknown)}")
    tags = changes.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise _Refused("changes.tags must be a list of strings")
    if not all(isinstance(value, str) for name, value in changes.items() if name != "tags"):
        raise _Refused("changes other than tags must be strings")
    return changes


def deliver_shopify(stores: DevStores, body: dict[str, Any]) -> dict[str, Any]:
    """Do what ``body`` asks of the shop and deliver its topic (see ``POST /_dev/shopify/deliver``)."""
    import json

    shop, url = stores.shopify, stores.shopify_webhook_url
    redeliver = body.get("redeliver")
    if redeliver is not None:
        # Shopify retries with the same webhook id: the receiver must drop the repeat.
        with shop.lock:
            earlier = next((d for d in shop.deliveries if d.webhook_id == redeliver), None)
        if earlier is None:
            raise _Refused(f"no delivery {redeliver!r}", 404)
        again = shop.deliver(earlier.topic, json.loads(earlier.body), earlier.url, webhook_id=earlier.webhook_id)
        return {"delivery": _shopify_delivery(again)}
    topic = body.get("topic")
    if topic not in SHOPIFY_TOPICS:
        raise _Refused(f"topic must be one of {', '.join(SHOPIFY_TOPICS)}")
    try:
        if topic == "products/update":
            delivery = shop.update_product(_product_ref(body), url, **_changes(body))
        elif topic == "products/delete":
            delivery = shop.delete_product(_product_ref(body), url)
        elif topic == "products/create":
            fields = _changes(body)
            title = str(fields.pop("title", "") or body.get("title") or "New product")
            product, delivery = shop.create_product(title, url, **fields)
            return {"product_id": product.id, "delivery": _shopify_delivery(delivery)}
        elif topic == "app/uninstalled":
            delivery = shop.uninstall(url)
        elif topic == "shop/redact":
            delivery = shop.shop_redact(url)
        elif topic == "customers/redact":
            delivery = shop.customers_redact(url)
        else:
            delivery = shop.customers_data_request(url)
    except (KeyError, IndexError):
        raise _Refused("the shop has no such product", 404) from None
    return {"delivery": _shopify_delivery(delivery)}


def _woo_deliveries(store: WooStub, since: int) -> list[dict[str, Any]]:
    with store.lock:
        made = store.deliveries[since:]
    return [{k: v for k, v in asdict(d).items() if k != "body"} for d in made]


def _woo_fields(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _Refused("the body must be a JSON object of product fields")
    if "id" in body:
        raise _Refused("a product's id cannot change")
    return body


def add_store_routes(app: flask.Flask, stores: DevStores) -> None:
    """``/_dev/shopify`` and ``/_dev/woocommerce`` on the dev app."""
    from flask import jsonify, request

    def refused(error: _Refused) -> Any:
        return jsonify({"error": str(error)}), error.status

    app.register_error_handler(_Refused, refused)

    @app.get("/_dev/shopify")
    def shopify_state() -> Any:
        """The Shopify stub: its address, shop, app credentials' id and the latest webhook deliveries."""
        shop = stores.shopify
        with shop.lock:
            recent = [_shopify_delivery(d) for d in shop.deliveries[-RECENT:]]
            products = len(shop.catalog.products)
        return jsonify(
            {
                "url": shop.url,
                "shop": shop.shop,
                "client_id": shop.client_id,
                "products": products,
                "webhook_url": stores.shopify_webhook_url,
                "deliveries": recent,
            }
        )

    @app.post("/_dev/shopify/deliver")
    def shopify_deliver() -> Any:
        """``{topic, product_id, changes}``: change the shop and deliver the topic to ``store_webhook``;
        ``{redeliver: webhook_id}`` delivers an earlier one again, as Shopify's retries do."""
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise _Refused("the body must be a JSON object: {topic, product_id, changes} or {redeliver}")
        return jsonify(deliver_shopify(stores, body))

    @app.get("/_dev/shopify/products/<product_id>/media")
    def shopify_media(product_id: str) -> Any:
        """What the stub shop's product shows now, in order (position 0 is featured): what sync-back put
        there reads back from here as a merchant's admin would show it."""
        shop = stores.shopify
        if not product_id.isdigit():
            raise _Refused("the product id is the store's number", status=404)
        try:
            media = shop.product_media(product_id)  # a string of digits: the numeric id, never a position
        except (KeyError, LookupError) as error:
            raise _Refused(f"no product {product_id}", status=404) from error
        return jsonify(
            {
                "product_id": product_id,
                "media": [
                    {
                        "id": str(m.id),
                        "position": n,
                        "alt": m.alt,
                        "status": m.status,
                        "url": f"{shop.url}{m.path}",
                        "width": m.width,
                        "height": m.height,
                    }
                    for n, m in enumerate(media)
                ],
            }
        )

    @app.get("/_dev/woocommerce")
    def woocommerce_state() -> Any:
        """The WooCommerce stub: its address, its webhooks, key callbacks and latest deliveries."""
        store = stores.woocommerce
        with store.lock:
            hooks = [
                {k: v for k, v in hook.items() if k in ("id", "topic", "status", "delivery_url", "failure_count")}
                for hook in store.webhooks.values()
            ]
            callbacks = [{"url": url, "status": status} for url, _, status in store.callbacks[-RECENT:]]
            products = len(store.products)
            since = max(0, len(store.deliveries) - RECENT)
        return jsonify(
            {
                "url": store.url,
                "products": products,
                "webhooks": hooks,
                "key_callbacks": callbacks,
                "deliveries": _woo_deliveries(store, since),
            }
        )

    @app.post("/_dev/woocommerce/products")
    def woocommerce_create() -> Any:
        """``{name, …fields}``: the merchant adds a product (``product.created`` is delivered)."""
        store = stores.woocommerce
        fields = dict(_woo_fields(request.get_json(silent=True)))
        name = str(fields.pop("name", "") or "New product")
        since = len(store.deliveries)
        product = store.create_product(name, **fields)
        return jsonify({"product": product, "deliveries": _woo_deliveries(store, since)}), 201

    @app.put("/_dev/woocommerce/products/<int:product_id>")
    def woocommerce_update(product_id: int) -> Any:
        """``{…fields}`` (e.g. ``{"name": "…"}``): the merchant edits a product (``product.updated``)."""
        store = stores.woocommerce
        fields = _woo_fields(request.get_json(silent=True))
        if product_id not in store.products:
            raise _Refused(f"the store has no product {product_id}", 404)
        since = len(store.deliveries)
        product = store.update_product(product_id, **fields)
        return jsonify({"product": product, "deliveries": _woo_deliveries(store, since)})

    @app.delete("/_dev/woocommerce/products/<int:product_id>")
    def woocommerce_delete(product_id: int) -> Any:
        """The merchant deletes a product for good (``product.deleted``)."""
        store = stores.woocommerce
        if product_id not in store.products:
            raise _Refused(f"the store has no product {product_id}", 404)
        since = len(store.deliveries)
        store.delete_product(product_id)
        return jsonify({"deleted": product_id, "deliveries": _woo_deliveries(store, since)})
