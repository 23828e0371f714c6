"""WooCommerce reconciliation: what its webhooks cannot promise.

WooCommerce never re-sends a failed delivery and disables a webhook after more than 5 consecutive
failures. A scheduled job therefore queues one task per connected WooCommerce store, which re-creates
our webhooks if they are missing, re-activates the disabled ones, and polls the products modified since
the last run (with an overlap, as clocks differ) into the same mirror the webhooks use.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict

from shared import logging as log
from shared.catalog.ports import StaleWrite
from shared.errors import EpoxError
from shared.scheduled import ScheduledReport
from shared.stores.connections import (
    WOO_TOPICS,
    StoreNeedsReauthorization,
    open_secrets,
    watching_authorization,
    webhook_url,
    woo_keys,
)
from shared.stores.keeping import WebhookServices
from shared.stores.mirror import mirror_product
from shared.stores.models import ConnectionStatus
from shared.stores.ports import StorePlatform
from shared.stores.webhooks import WORKER_TARGET
from shared.tasks import TaskQueue, TaskRequest, task_name

logger = log.get_logger("epox.stores.reconcile")

RECONCILE_JOB = "reconcile-stores"
RECONCILE_PATH = "/tasks/reconcile-store"
OVERLAP = timedelta(minutes=10)
MAX_PAGES = 50  # per run: 5,000 changed products; the rest come on the next run


class ReconcileStoreTask(BaseModel):
    model_config = ConfigDict(extra="forbid")

    client_id: str
    connection_id: str


class ReconcileReport(ScheduledReport):
    stores: int = 0


def queue_reconciliations(services: WebhookServices, queue: TaskQueue, now: datetime) -> ReconcileReport:
    """One task per active WooCommerce connection, named by the hour (a rerun within it adds nothing)."""
    report = ReconcileReport()
    window = now.strftime("%Y%m%d%H")
    for connection in services.stores.connections(StorePlatform.WOOCOMMERCE):
        if connection.status is not ConnectionStatus.ACTIVE:
            continue
        task = ReconcileStoreTask(client_id=connection.client_id, connection_id=connection.id)
        queue.enqueue(
            TaskRequest(
                target=WORKER_TARGET,
                path=RECONCILE_PATH,
                payload=task,
                name=task_name("reconcile", connection.client_id, connection.id, window),
            )
        )
        report.stores += 1
    return report


def reconcile_store(services: WebhookServices, task: ReconcileStoreTask) -> str:
    """Repair our webhooks and mirror the products changed since the last run (keys the store refuses
    mark the connection ``needs_reauth``)."""
    try:
        with watching_authorization(services.stores, task.client_id, services.clock):
            return _reconcile(services, task)
    except StoreNeedsReauthorization as error:
        return f"the store needs reauthorization: {error.detail}"


def _reconcile(services: WebhookServices, task: ReconcileStoreTask) -> str:
    now = services.clock()
    loaded = services.stores.load(task.client_id)
    if loaded is None or loaded.value.id != task.connection_id or loaded.value.status is not ConnectionStatus.ACTIVE:
        return "the store is not connected: nothing to do"
    connection = loaded.value
    plain = open_secrets(services.cipher, connection)
    keys = woo_keys(plain)
    woo = services.woocommerce()
    secret = plain.webhook_secret.get_secret_value() if plain.webhook_secret else None
    ours = webhook_url(services.policy, connection)
    hook_ids: list[str] = []
    repaired = 0
    existing = [hook for hook in woo.webhooks(connection.shop, keys) if hook.delivery_url == ours]
    for topic in WOO_TOPICS:
        hook = next((hook for hook in existing if hook.topic == topic), None)
        try:
            if hook is None and secret is not None:
                hook = woo.create_webhook(
                    connection.shop,
                    keys,
                    name=f"{services.policy.app_name} {topic}",
                    topic=topic,
                    delivery_url=ours,
                    secret=secret,
                )
                repaired += 1
            elif hook is not None and hook.status != "active":
                hook = woo.activate_webhook(connection.shop, keys, hook.id)
                repaired += 1
        except EpoxError as error:
            logger.warning("repairing the %s webhook of %s failed: %s", topic, connection.id, error.code)
        if hook is not None:
            hook_ids.append(hook.id)
    since = (connection.reconciled_at or connection.connected_at) - OVERLAP
    mirrored = 0
    page: int | None = 1
    for _ in range(MAX_PAGES):
        if page is None:
            break
        result = woo.products_page(connection.shop, keys, page=page, per_page=100, modified_after=since)
        for product in result.products:
            mirror_product(services.mirror, connection, product, now, create_missing=True)
            mirrored += 1
        page = int(result.next_cursor) if result.next_cursor else None
    changes = {"webhook_ids": hook_ids, "updated_at": now}
    if page is None:
        changes["reconciled_at"] = now  # only when every changed product was seen
    for _ in range(5):
        try:
            services.stores.update(loaded, changes)
            break
        except StaleWrite:
            # Webhooks touch the connection (last_webhook_at) while we read the store: write over those,
            # but not over a disconnect or a new connection.
            current = services.stores.load(task.client_id)
            if (
                current is None
                or current.value.id != connection.id
                or current.value.status is not ConnectionStatus.ACTIVE
            ):
                logger.info("connection %s changed during its reconciliation: not recorded", connection.id)
                break
            loaded = current
    return f"{repaired} webhooks repaired, {mirrored} changed products mirrored"
