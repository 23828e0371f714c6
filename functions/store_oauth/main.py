"""Store connections: connect Shopify or WooCommerce, the OAuth callbacks, status, disconnect, imports.

Entry points: ``store_oauth`` (the frontend's store API with user JWTs, and the public callbacks the
stores and the merchant's browser come back to) and ``store_tasks`` (Cloud Tasks: preparing store
imports, working webhooks, reconciling a WooCommerce store, unlinking products after a disconnect;
Cloud Scheduler: queueing the reconciliations).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlencode

import functions_framework
from pydantic import BaseModel, ConfigDict

from shared.catalog.imports import import_out
from shared.catalog.models import ImportOut, ProductOut
from shared.catalog.products import to_out
from shared.credentials import CredentialKeyUnavailable, CredentialsUnreadable
from shared.errors import NotFound
from shared.http.app import (
    Access,
    HttpApp,
    JsonResponse,
    NoBody,
    NoQuery,
    RequestContext,
    answer_framework_errors_as_problems,
)
from shared.needs import Need
from shared.scheduled import finish
from shared.stores import connections, imports, keeping, mirror, reconcile, webhooks
from shared.stores.connections import (
    InvalidCallbackSignature,
    InvalidShopDomain,
    OAuthStateRefused,
    ShopConnectedElsewhere,
    StoreAlreadyConnected,
    StoreNeedsReauthorization,
    StoreNotConnected,
)
from shared.stores.models import (
    CategoryCount,
    ConnectionOut,
    ConnectStarted,
    ShopifyConnectRequest,
    StoreCategoriesOut,
    StoreImportRequest,
    StoreImportSummary,
    StoreLinkRequest,
    StoreProductSummary,
    StoreSearchQuery,
    StoreSearchResult,
    WooCommerceConnectRequest,
    WooCommerceKeys,
)
from shared.stores.policies import connection_policy, store_import_policy, store_services, webhook_services
from shared.stores.ports import (
    StoreAuthorizationLost,
    StoreNotReachable,
    StorePlatform,
    StoreRequestFailed,
    StoreUnavailable,
)
from shared.stores.reader import StoreReader
from shared.tasks import TaskOutcome

if TYPE_CHECKING:
    import flask

    from shared.platform import Platform

STORE_NEEDS = (Need.STORE_CREDENTIALS, Need.STORES, Need.TASK_QUEUE, Need.R2)
api = HttpApp("store_oauth", needs=STORE_NEEDS)
tasks = HttpApp("store_tasks", needs=STORE_NEEDS)
answer_framework_errors_as_problems(api, tasks)  # a path the framework cannot route: a problem, not HTML

STORE_ERRORS = (StoreUnavailable, StoreRequestFailed, StoreAuthorizationLost, StoreNeedsReauthorization)
CREDENTIAL_ERRORS = (CredentialsUnreadable, CredentialKeyUnavailable)


class ShopifyCallbackQuery(BaseModel):
    """What Shopify appends to the redirect URI; every parameter counts for the HMAC, known or not."""

    model_config = ConfigDict(extra="allow")

    code: str | None = None
    hmac: str | None = None
    shop: str | None = None
    state: str | None = None
    timestamp: str | None = None
    host: str | None = None


class WooReturnQuery(BaseModel):
    model_config = ConfigDict(extra="allow")

    success: str | None = None
    user_id: str | None = None


class CallbackAccepted(BaseModel):
    """wc-auth deletes the keys unless our callback answers exactly 200."""

    accepted: bool


def _redirect(location: str) -> flask.Response:
    from flask import Response

    return Response(status=302, headers={"Location": location, "Cache-Control": "no-store"})


def _frontend(p: Platform, **params: str) -> str:
    return p.settings.app_url.rstrip("/") + "/stores?" + urlencode(params)


# -- connecting ------------------------------------------------------------------------------------


@api.post(
    "/stores/shopify/connect",
    body=ShopifyConnectRequest,
    errors=(InvalidShopDomain, StoreAlreadyConnected, ShopConnectedElsewhere),
)
def connect_shopify(ctx: RequestContext[ShopifyConnectRequest, NoQuery]) -> ConnectStarted:
    p = ctx.platform
    policy = connection_policy(p.settings)
    return connections.start_shopify(p.stores, p.shopify_admin, ctx.client_id, ctx.body.shop, policy, p.clock())


@api.get(
    "/oauth/shopify/callback",
    query=ShopifyCallbackQuery,
    access=Access.PUBLIC,
    responses={302: None},
    errors=(InvalidCallbackSignature, OAuthStateRefused, StoreAlreadyConnected, ShopConnectedElsewhere, *STORE_ERRORS),
)
def shopify_callback(ctx: RequestContext[NoBody, ShopifyCallbackQuery]) -> flask.Response:
    p = ctx.platform
    params = {name: ctx.request.args.get(name, "") for name in ctx.request.args}
    secret = p.settings.shopify_client_secret.get_secret_value()
    doc = connections.finish_shopify(p.stores, p.shopify_admin, p.credential_cipher, params, secret, p.clock())
    return _redirect(_frontend(p, connected=StorePlatform.SHOPIFY.value, shop=doc.shop))


@api.post(
    "/stores/woocommerce/connect",
    body=WooCommerceConnectRequest,
    errors=(StoreNotReachable, StoreAlreadyConnected, ShopConnectedElsewhere),
)
def connect_woocommerce(ctx: RequestContext[WooCommerceConnectRequest, NoQuery]) -> ConnectStarted:
    p = ctx.platform
    policy = connection_policy(p.settings)
    return connections.start_woocommerce(p.stores, p.woocommerce, ctx.client_id, ctx.body.store_url, policy, p.clock())


@api.post(
    "/oauth/woocommerce/callback",
    body=WooCommerceKeys,
    access=Access.PUBLIC,
    max_body_bytes=16 * 1024,
    errors=(OAuthStateRefused, StoreAlreadyConnected, ShopConnectedElsewhere, StoreNotReachable, *STORE_ERRORS),
)
def woocommerce_callback(ctx: RequestContext[WooCommerceKeys, NoQuery]) -> CallbackAccepted:
    # Unsigned: the keys count only if they come with a nonce we issued (and work). Anything but a 200
    # makes WooCommerce delete the keys.
    p = ctx.platform
    policy = connection_policy(p.settings)
    connections.finish_woocommerce(p.stores, p.woocommerce, p.credential_cipher, ctx.body, policy, p.clock())
    return CallbackAccepted(accepted=True)


@api.get("/oauth/woocommerce/return", query=WooReturnQuery, access=Access.PUBLIC, responses={302: None})
def woocommerce_return(ctx: RequestContext[NoBody, WooReturnQuery]) -> flask.Response:
    # The browser's landing after wc-auth; the keys came (or not) through the callback already.
    approved = ctx.query.success == "1"
    outcome = {"connected": "woocommerce"} if approved else {"error": "woocommerce_denied"}
    return _redirect(_frontend(ctx.platform, **outcome))


# -- status and disconnect -------------------------------------------------------------------------


def _last_import(p: Platform, client_id: str, import_id: str | None) -> StoreImportSummary | None:
    if import_id is None:
        return None
    doc = p.catalog.imports.get(client_id, import_id)
    if doc is None:
        return None
    return StoreImportSummary(
        id=doc.id, status=doc.status.value, created_at=doc.created_at, finished_at=doc.finished_at
    )


@api.get("/stores/connection", errors=(NotFound,))
def get_connection(ctx: RequestContext[NoBody, NoQuery]) -> ConnectionOut:
    p = ctx.platform
    doc = connections.get_connection(p.stores, ctx.client_id)
    return connections.connection_out(doc, _last_import(p, ctx.client_id, doc.last_import_id))


@api.delete("/stores/connection", errors=(NotFound, *CREDENTIAL_ERRORS))
def disconnect(ctx: RequestContext[NoBody, NoQuery]) -> ConnectionOut:
    p = ctx.platform
    doc = keeping.disconnect_store(webhook_services(p), ctx.client_id, p.task_queue)
    return connections.connection_out(doc, _last_import(p, ctx.client_id, doc.last_import_id))


# -- importing and linking -------------------------------------------------------------------------


@api.post(
    "/stores/imports",
    body=StoreImportRequest,
    status=202,
    idempotent=True,
    errors=(StoreNotConnected, StoreNeedsReauthorization),
)
def create_store_import(ctx: RequestContext[StoreImportRequest, NoQuery]) -> JsonResponse[ImportOut]:
    p = ctx.platform
    doc = imports.create_store_import(
        p.catalog,
        store_services(p),
        p.task_queue,
        ctx.client_id,
        ctx.body,
        store_import_policy(p.settings),
        p.clock(),
    )
    return JsonResponse(import_out(doc), status=202, headers={"Location": f"/imports/{doc.id}"})


@api.get(
    "/stores/categories",
    errors=(StoreNotConnected, *STORE_ERRORS, *CREDENTIAL_ERRORS),
)
def store_categories(ctx: RequestContext[NoBody, NoQuery]) -> StoreCategoriesOut:
    p = ctx.platform
    found = _store_reader(p, ctx.client_id).categories()
    return StoreCategoriesOut(
        categories=[CategoryCount(name=category.name, products=category.product_count or 0) for category in found]
    )


@api.get(
    "/stores/products/search",
    query=StoreSearchQuery,
    errors=(StoreNotConnected, *STORE_ERRORS, *CREDENTIAL_ERRORS),
)
def search_store(ctx: RequestContext[NoBody, StoreSearchQuery]) -> StoreSearchResult:
    p = ctx.platform
    reader = _store_reader(p, ctx.client_id)
    services = webhook_services(p)
    found = []
    for product in reader.search(ctx.query.q):
        linked = mirror.linked_product(services.mirror, reader.connection, product.id)
        found.append(
            StoreProductSummary(
                id=product.id,
                title=product.title,
                sku=product.sku or next((v.sku for v in product.variants if v.sku), None),
                image_url=product.images[0].url if product.images else None,
                linked_product_id=linked.id if linked else None,
            )
        )
    return StoreSearchResult(products=found)


@api.put(
    "/products/<product_id>/store-link",
    body=StoreLinkRequest,
    errors=(NotFound, StoreNotConnected, mirror.ProductAlreadyLinked, *STORE_ERRORS, *CREDENTIAL_ERRORS),
)
def link_product(ctx: RequestContext[StoreLinkRequest, NoQuery]) -> ProductOut:
    p = ctx.platform
    reader = _store_reader(p, ctx.client_id)
    store_product = reader.product(ctx.body.store_product_id)
    if store_product is None:
        raise NotFound(f"The store has no product {ctx.body.store_product_id}")
    product_id = ctx.path_params["product_id"]
    mirror.link_product(webhook_services(p).mirror, reader.connection, product_id, store_product, p.clock())
    doc = p.catalog.products.get(ctx.client_id, product_id)
    if doc is None:
        raise NotFound(f"No product {product_id}")
    return to_out(doc, p.object_store, p.settings.presign_expiry_seconds)


def _store_reader(p: Platform, client_id: str) -> StoreReader:
    return StoreReader.for_client(store_services(p), client_id, p.clock)


# -- workers ---------------------------------------------------------------------------------------


# A store that does not answer (a timeout, 5xx, throttling past the adapter's wait) is a 503: the queue
# delivers the task again with its backoff.
RETRIED = (StoreUnavailable,)


@tasks.post(imports.PREPARE_PATH, body=imports.PrepareImportTask, access=Access.TASK, errors=RETRIED)
def prepare_import(ctx: RequestContext[imports.PrepareImportTask, NoQuery]) -> TaskOutcome:
    p = ctx.platform
    assert ctx.task is not None
    policy = store_import_policy(p.settings)
    outcome = imports.prepare_store_import(
        p.catalog,
        store_services(p),
        p.object_store,
        p.task_queue,
        ctx.body,
        policy,
        p.clock,
        last_attempt=ctx.task.retry_count + 1 >= policy.max_attempts,
    )
    return TaskOutcome(outcome=outcome)


@tasks.post(webhooks.WEBHOOK_PATH, body=webhooks.StoreWebhookTask, access=Access.TASK, errors=RETRIED)
def work_webhook(ctx: RequestContext[webhooks.StoreWebhookTask, NoQuery]) -> TaskOutcome:
    assert ctx.task is not None  # a TASK route
    last_attempt = ctx.task.retry_count + 1 >= ctx.platform.settings.tasks_max_attempts
    services = webhook_services(ctx.platform)
    return TaskOutcome(outcome=keeping.work_webhook_delivery(services, ctx.body, last_attempt=last_attempt))


@tasks.post(reconcile.RECONCILE_PATH, body=reconcile.ReconcileStoreTask, access=Access.TASK, errors=RETRIED)
def reconcile_store(ctx: RequestContext[reconcile.ReconcileStoreTask, NoQuery]) -> TaskOutcome:
    return TaskOutcome(outcome=reconcile.reconcile_store(webhook_services(ctx.platform), ctx.body))


@tasks.post(keeping.UNLINK_PATH, body=keeping.UnlinkProductsTask, access=Access.TASK)
def unlink_products(ctx: RequestContext[keeping.UnlinkProductsTask, NoQuery]) -> TaskOutcome:
    return TaskOutcome(outcome=keeping.unlink_after_disconnect(webhook_services(ctx.platform), ctx.body))


@tasks.post("/jobs/reconcile-stores", access=Access.SCHEDULER)
def reconcile_stores(ctx: RequestContext[NoBody, NoQuery]) -> reconcile.ReconcileReport:
    p = ctx.platform
    report = reconcile.queue_reconciliations(webhook_services(p), p.task_queue, p.clock())
    return finish(report, reconcile.RECONCILE_JOB)


@functions_framework.http
def store_oauth(request: flask.Request) -> flask.Response:
    return api.handle(request)


@functions_framework.http
def store_tasks(request: flask.Request) -> flask.Response:
    return tasks.handle(request)
