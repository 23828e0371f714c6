"""Working store webhooks in the ``store_tasks`` worker (receiving them is ``shared.stores.webhooks``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from shared import logging as log
from shared.catalog.ports import CatalogRepositories, StaleWrite
from shared.errors import EpoxError
from shared.stores.connections import (
    ConnectionPolicy,
    StoreNeedsReauthorization,
    StoreNotConnected,
    disconnect,
    live_connection,
    open_secrets,
    shopify_token,
    watching_authorization,
    woo_keys,
)
from shared.stores.mirror import MirrorServices, mark_deleted_in_store, mirror_product, unlink_products
from shared.stores.models import ConnectionStatus, ShopRedaction, StoreConnectionDoc
from shared.stores.ports import ShopifyAdmin, StorePlatform, StoreProduct, StoreUnavailable, WooCommerceApi
from shared.stores.repository import StoreRepository
from shared.stores.webhooks import WORKER_TARGET, StoreWebhookTask
from shared.tasks import TaskQueue, TaskRequest, task_name

logger = log.get_logger("epox.stores.keeping")


@dataclass
class WebhookServices:
    stores: StoreRepository
    cipher: Any  # CredentialCipher
    shopify: Callable[[], ShopifyAdmin]
    woocommerce: Callable[[], WooCommerceApi]
    policy: ConnectionPolicy
    mirror: MirrorServices
    clock: Callable[[], datetime]


UNLINK_PATH = "/tasks/unlink-products"


class UnlinkProductsTask(BaseModel):
    """Cloud Tasks payload: mark a disconnected client's products unlinked."""

    model_config = ConfigDict(extra="forbid")

    client_id: str


def unlink_after_disconnect(services: WebhookServices, task: UnlinkProductsTask) -> str:
    """Unlink the products of a store that is still disconnected (a reconnect since keeps them linked)."""
    loaded = services.stores.load(task.client_id)
    if loaded is not None and loaded.value.status is not ConnectionStatus.DISCONNECTED:
        return "the store is connected again: nothing to unlink"
    count = unlink_products(services.mirror.repos, task.client_id, services.clock())
    return f"{count} products unlinked"


def disconnect_store(services: WebhookServices, client_id: str, queue: TaskQueue) -> StoreConnectionDoc:
    """The merchant disconnects: revoke our access where the platform allows (Shopify: the app uninstalls
    itself, which revokes its tokens; WooCommerce keys cannot be revoked through the REST API, so our
    webhooks are deleted and the keys forgotten), then the connection is disconnected."""
    loaded = services.stores.load(client_id)
    if (
        loaded is not None
        and loaded.value.platform is StorePlatform.SHOPIFY
        and loaded.value.status is ConnectionStatus.ACTIVE
    ):
        try:
            shopify = services.shopify()
            doc, token = shopify_token(
                services.stores, shopify, services.cipher, client_id, services.policy, services.clock
            )
            shopify.uninstall(doc.shop, token)
        except EpoxError as error:
            # Disconnecting must work when Shopify does not answer: the tokens are deleted either way.
            logger.warning("uninstalling from %s failed (%s); disconnecting anyway", loaded.value.shop, error.code)
    now = services.clock()
    gone = disconnect(services.stores, services.woocommerce, services.cipher, client_id, now)
    queue.enqueue(
        TaskRequest(
            target=WORKER_TARGET,
            path=UNLINK_PATH,
            payload=UnlinkProductsTask(client_id=client_id),
            name=task_name("unlink", client_id, gone.id),
        )
    )
    return gone


def work_webhook_delivery(services: WebhookServices, task: StoreWebhookTask, *, last_attempt: bool) -> str:
    """One delivery of a webhook task: :func:`work_webhook`, retried by the queue while the store is
    unavailable; on the queue's last attempt the webhook is abandoned — logged at ERROR with
    ``store_webhook_abandoned`` fields (an alert watches them) and answered 2xx — since the hourly
    ``/jobs/reconcile-stores`` and the next webhook for the product bring the mirror up to date anyway."""
    try:
        return work_webhook(services, task)
    except StoreUnavailable as error:
        if not last_attempt:
            raise
        logger.error(
            "store webhook abandoned after the queue's last attempt: %s",
            error.detail,
            extra={
                "fields": {
                    "store_webhook_abandoned": {
                        "platform": task.platform.value,
                        "shop": task.shop,
                        "client_id": task.client_id,
                        "topic": task.topic,
                        "webhook_id": task.webhook_id,
                        "store_product_id": task.store_product_id,
                    }
                }
            },
        )
        return f"abandoned after the last attempt ({error.code}): the store reconciliation repairs it"


def work_webhook(services: WebhookServices, task: StoreWebhookTask) -> str:
    """Apply one webhook; returns what happened (for the log)."""
    now = services.clock()
    if task.topic == "shop/redact":
        return redact_shop(services, task.shop, now)
    if task.client_id is None:
        return "no client: dropped"
    loaded = services.stores.load(task.client_id)
    if loaded is None or loaded.value.shop != task.shop or loaded.value.status is ConnectionStatus.DISCONNECTED:
        return "the store is not connected: dropped"
    connection = loaded.value
    services.stores.touch(task.client_id, {"last_webhook_at": now})
    if task.topic == "app/uninstalled":
        disconnect(
            services.stores,
            services.woocommerce,
            services.cipher,
            task.client_id,
            now,
            reason="the app was uninstalled",
        )
        unlinked = unlink_products(services.mirror.repos, task.client_id, now)
        return f"app uninstalled: disconnected, {unlinked} products unlinked"
    if connection.status is ConnectionStatus.NEEDS_REAUTH:
        return "the store needs reauthorization: dropped"
    assert task.store_product_id is not None
    if task.topic in ("products/delete", "product.deleted"):
        return mark_deleted_in_store(services.mirror, connection, task.store_product_id, now)
    try:
        with watching_authorization(services.stores, connection.client_id, services.clock):
            product = _fresh_product(services, connection, task.store_product_id)
    except (StoreNeedsReauthorization, StoreNotConnected) as error:
        return f"dropped: {error.detail}"
    if product is None:
        return mark_deleted_in_store(services.mirror, connection, task.store_product_id, now)
    create = task.topic in ("products/create", "product.created", "product.restored")
    return mirror_product(services.mirror, connection, product, now, create_missing=create)


def _fresh_product(services: WebhookServices, connection: StoreConnectionDoc, store_id: str) -> StoreProduct | None:
    """The product as the store has it now (None: gone)."""
    if connection.platform is StorePlatform.SHOPIFY:
        shopify = services.shopify()
        _, token = shopify_token(
            services.stores, shopify, services.cipher, connection.client_id, services.policy, services.clock
        )
        found = shopify.products_by_ids(connection.shop, token, [store_id])
    else:
        keys = woo_keys(open_secrets(services.cipher, connection))
        found = services.woocommerce().products_page(connection.shop, keys, include=[store_id], per_page=1).products
    return next((product for product in found if product.id == store_id), None)


def redact_shop(services: WebhookServices, shop: str, now: datetime) -> str:
    """shop/redact (48 h after an uninstall): erase what we hold of the shop — its tokens, its connection,
    the index entry and the store links of its products (the products and images the merchant made stay
    theirs until they delete their account) — and record that we did."""
    client_id = services.stores.owner_of(StorePlatform.SHOPIFY, shop)
    erased = {"connections": 0, "store_links": 0}
    if client_id is not None:
        loaded = services.stores.load(client_id)
        if loaded is not None and loaded.value.shop == shop:
            erased["connections"] = 1
        erased["store_links"] = _erase_links(services.mirror.repos, client_id, shop, now)
    redaction = ShopRedaction(
        platform=StorePlatform.SHOPIFY, shop=shop, client_id=client_id, erased=erased, requested_at=now, done_at=now
    )
    services.stores.erase(client_id or "", StorePlatform.SHOPIFY, shop, redaction)
    logger.info("shop/redact for %s: erased %s", shop, erased)
    return f"shop {shop} redacted: {erased}"


def _erase_links(repos: CatalogRepositories, client_id: str, shop: str, now: datetime) -> int:
    """Drop the store link (the shop's ids, handles, vendors, variants) from every product of the shop."""
    count = 0
    for _ in range(10_000):
        batch = repos.products.from_shop(client_id, shop, 200)
        if not batch:
            return count
        for product in batch:
            loaded = repos.products.load(client_id, product.id)
            if loaded is None:
                continue
            try:
                repos.products.update(client_id, product.id, {"store": None, "updated_at": now}, loaded.version)
                count += 1
            except StaleWrite:
                continue
    return count


def live_or_none(stores: StoreRepository, client_id: str) -> StoreConnectionDoc | None:
    try:
        return live_connection(stores, client_id)
    except (StoreNotConnected, StoreNeedsReauthorization):
        return None
