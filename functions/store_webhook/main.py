"""Store webhooks: Shopify (products, app/uninstalled, the mandatory compliance topics) and WooCommerce
(product created / updated / deleted, the creation ping).

The signature is checked on the raw body before anything is parsed (401 when it does not match); a
delivery id seen before is acknowledged and dropped; the work goes to a named task on ``store_tasks``,
so the answer comes well within Shopify's 5 seconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import functions_framework

from shared.credentials import CredentialKeyUnavailable, CredentialsUnreadable
from shared.http.app import Access, HttpApp, NoBody, NoQuery, RequestContext, answer_framework_errors_as_problems
from shared.needs import Need
from shared.stores import webhooks
from shared.stores.connections import open_secrets
from shared.stores.models import StoreConnectionDoc, WebhookAck

if TYPE_CHECKING:
    import flask

app = HttpApp("store_webhook", needs=(Need.STORE_CREDENTIALS, Need.STORES, Need.TASK_QUEUE))
answer_framework_errors_as_problems(app)  # a path the framework cannot route: a problem, not HTML


def _headers(ctx: RequestContext[NoBody, NoQuery]) -> dict[str, str]:
    return {name.lower(): value for name, value in ctx.request.headers.items()}


WEBHOOK_ERRORS = (webhooks.InvalidWebhookSignature, webhooks.GarbledWebhook)


@app.post(
    "/webhooks/shopify",
    access=Access.PUBLIC,
    raw=True,
    max_body_bytes=webhooks.MAX_WEBHOOK_BYTES,
    errors=WEBHOOK_ERRORS,
)
def shopify(ctx: RequestContext[NoBody, NoQuery]) -> WebhookAck:
    p = ctx.platform
    secret = p.settings.shopify_client_secret.get_secret_value()
    return webhooks.receive_shopify(p.stores, p.task_queue, ctx.raw_body, _headers(ctx), secret, p.clock())


@app.post(
    "/webhooks/woocommerce/<client_id>/<connection_id>",
    access=Access.PUBLIC,
    raw=True,
    max_body_bytes=webhooks.MAX_WEBHOOK_BYTES,
    errors=(*WEBHOOK_ERRORS, CredentialsUnreadable, CredentialKeyUnavailable),
)
def woocommerce(ctx: RequestContext[NoBody, NoQuery]) -> WebhookAck:
    p = ctx.platform

    def secret_of(connection: StoreConnectionDoc) -> str:
        plain = open_secrets(p.credential_cipher, connection)
        return plain.webhook_secret.get_secret_value() if plain.webhook_secret else ""

    return webhooks.receive_woocommerce(
        p.stores,
        secret_of,
        p.task_queue,
        ctx.raw_body,
        _headers(ctx),
        ctx.path_params["client_id"],
        ctx.path_params["connection_id"],
        p.clock(),
    )


@functions_framework.http
def store_webhook(request: flask.Request) -> flask.Response:
    return app.handle(request)
