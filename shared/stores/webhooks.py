"""Store webhooks: verified on the raw body, acknowledged at once, worked in a task.

Shopify wants an answer within 5 s and retries 8 times over 4 hours; WooCommerce never retries and
disables a webhook after more than 5 failed deliveries. So receiving only checks the signature (401
when it does not match, constant-time), records the delivery id (a redelivery is acknowledged and
dropped) and queues a named task. The task reads the product fresh from the store before it changes
ours, so deliveries that arrive out of order cannot leave an old state behind.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict

from shared import logging as log
from shared.errors import BadRequest, EpoxError
from shared.stores.models import ConnectionStatus, StoreConnectionDoc, WebhookAck
from shared.stores.ports import StorePlatform
from shared.stores.repository import StoreRepository
from shared.stores.signatures import body_is_authentic, valid_shop_domain
from shared.tasks import TaskQueue, TaskRequest, task_name

logger = log.get_logger("epox.stores.webhooks")

WORKER_TARGET = "store_tasks"
WEBHOOK_PATH = "/tasks/webhook"
MAX_WEBHOOK_BYTES = 1024 * 1024
# How long a delivery id is remembered (Shopify retries for 4 hours; a day is plenty).
KEEP_DELIVERY_IDS = timedelta(days=2)

SHOPIFY_PRODUCT_TOPICS = ("products/create", "products/update", "products/delete")
SHOPIFY_COMPLIANCE_TOPICS = ("customers/data_request", "customers/redact", "shop/redact")
WOO_TOPICS = ("product.created", "product.updated", "product.deleted", "product.restored")


class InvalidWebhookSignature(EpoxError):
    status = 401
    code = "invalid_signature"
    title = "The webhook's signature does not match its body"


class GarbledWebhook(BadRequest):
    code = "garbled_webhook"
    title = "The webhook's body is not the JSON object its topic carries"


class StoreWebhookTask(BaseModel):
    """Cloud Tasks payload: one store webhook to work."""

    model_config = ConfigDict(extra="forbid")

    platform: StorePlatform
    client_id: str | None
    shop: str
    topic: str
    webhook_id: str
    store_product_id: str | None = None


def _task(task: StoreWebhookTask) -> TaskRequest:
    return TaskRequest(
        target=WORKER_TARGET,
        path=WEBHOOK_PATH,
        payload=task,
        name=task_name("store-webhook", task.platform.value, task.webhook_id),
    )


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise GarbledWebhook("The body is not JSON.") from None
    if not isinstance(body, dict):
        raise GarbledWebhook("The body is not a JSON object.")
    return body


def _product_id(body: Mapping[str, Any]) -> str | None:
    value = body.get("id")
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    text = str(value)
    return text if text.isdigit() and len(text) <= 20 else None


def _queue_once(stores: StoreRepository, queue: TaskQueue, task: StoreWebhookTask, now: datetime) -> WebhookAck:
    if not stores.first_delivery(task.platform, task.webhook_id, now, now + KEEP_DELIVERY_IDS):
        return WebhookAck(received=True, duplicate=True, note="duplicate")
    try:
        queue.enqueue(_task(task))
    except Exception:
        # Not queued: forget the id, so the store's redelivery (Shopify retries on our 5xx) is worked.
        stores.forget_delivery(task.platform, task.webhook_id)
        raise
    return WebhookAck(received=True)


def receive_shopify(
    stores: StoreRepository,
    queue: TaskQueue,
    raw: bytes,
    headers: Mapping[str, str],
    client_secret: str,
    now: datetime,
) -> WebhookAck:
    """A Shopify webhook (products, app/uninstalled, the compliance topics); ``headers`` by lowercase name."""
    if not body_is_authentic(raw, headers.get("x-shopify-hmac-sha256"), client_secret):
        raise InvalidWebhookSignature("X-Shopify-Hmac-Sha256 does not match the body.")
    topic = headers.get("x-shopify-topic", "")
    shop = headers.get("x-shopify-shop-domain", "").lower()
    webhook_id = headers.get("x-shopify-webhook-id", "")
    if not valid_shop_domain(shop) or not webhook_id or len(webhook_id) > 200:
        raise GarbledWebhook("The webhook's shop domain or id header is missing or invalid.")
    body = _json_object(raw)
    if topic in ("customers/data_request", "customers/redact"):
        # We hold no shopper data: product catalogs only. Logged as the record of the answer.
        logger.info(
            "shopify %s for %s (event %s): we hold no customer data", topic, shop, headers.get("x-shopify-event-id")
        )
        return WebhookAck(received=True, note="ignored")
    client_id = stores.owner_of(StorePlatform.SHOPIFY, shop)
    if client_id is None and topic != "shop/redact":
        logger.warning("shopify %s webhook for unknown shop %s: acknowledged and dropped", topic, shop)
        return WebhookAck(received=True, note="ignored")
    if topic not in (*SHOPIFY_PRODUCT_TOPICS, "app/uninstalled", "shop/redact"):
        logger.info("shopify %s webhook for %s: not a topic we work", topic, shop)
        return WebhookAck(received=True, note="ignored")
    product_id = _product_id(body) if topic in SHOPIFY_PRODUCT_TOPICS else None
    if topic in SHOPIFY_PRODUCT_TOPICS and product_id is None:
        raise GarbledWebhook("The product webhook carries no product id.")
    task = StoreWebhookTask(
        platform=StorePlatform.SHOPIFY,
        client_id=client_id,
        shop=shop,
        topic=topic,
        webhook_id=webhook_id,
        store_product_id=product_id,
    )
    return _queue_once(stores, queue, task, now)


def receive_woocommerce(
    stores: StoreRepository,
    open_webhook_secret: Callable[[StoreConnectionDoc], str],
    queue: TaskQueue,
    raw: bytes,
    headers: Mapping[str, str],
    client_id: str,
    connection_id: str,
    now: datetime,
) -> WebhookAck:
    """A WooCommerce webhook to ``/webhooks/woocommerce/{client}/{connection}``; the creation ping
    (form body ``webhook_id=N``, unsigned) is answered 200 and nothing else. ``headers`` by lowercase name."""
    signature = headers.get("x-wc-webhook-signature")
    if signature is None and raw.startswith(b"webhook_id="):
        return WebhookAck(received=True, note="ping")
    body = _json_object(raw)  # garbled bodies are refused before anything is looked up
    loaded = stores.load(client_id)
    if loaded is None or loaded.value.id != connection_id or loaded.value.status is ConnectionStatus.DISCONNECTED:
        logger.warning("woocommerce webhook for unknown connection %s: acknowledged and dropped", connection_id)
        return WebhookAck(received=True, note="ignored")
    connection = loaded.value
    if not body_is_authentic(raw, signature, open_webhook_secret(connection)):
        raise InvalidWebhookSignature("X-WC-Webhook-Signature does not match the body.")
    topic = headers.get("x-wc-webhook-topic", "")
    delivery = headers.get("x-wc-webhook-delivery-id", "")
    if topic not in WOO_TOPICS:
        return WebhookAck(received=True, note="ignored")
    product_id = _product_id(body)
    if product_id is None or not delivery or len(delivery) > 200:
        raise GarbledWebhook("The webhook carries no product id or delivery id.")
    task = StoreWebhookTask(
        platform=StorePlatform.WOOCOMMERCE,
        client_id=client_id,
        shop=connection.shop,
        topic=topic,
        webhook_id=f"{connection.id}-{delivery}",
        store_product_id=product_id,
    )
    return _queue_once(stores, queue, task, now)
