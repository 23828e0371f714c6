"""Stripe webhook: the signature is verified on the raw body before anything is read; each event
is applied once (its id is recorded in the same commit as its effect) and answered fast.

2xx: applied, a duplicate, or an event we do not handle. 400: bad signature or not an event (a
forged or corrupt delivery). 5xx: processing failed or the event names a plan price this deployment
does not know yet — Stripe retries for days, and the retry is safe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import functions_framework

from shared.billing.events import (
    StripePriceNotConfigured,
    WebhookPayloadInvalid,
    WebhookSignatureInvalid,
    verify_event,
)
from shared.billing.models import WebhookReceipt
from shared.billing.policies import webhook_processor
from shared.http.app import Access, HttpApp, NoBody, NoQuery, RequestContext, answer_framework_errors_as_problems
from shared.needs import Need

if TYPE_CHECKING:
    import flask

app = HttpApp("stripe_webhook", needs=(Need.STRIPE, Need.STRIPE_WEBHOOK))
answer_framework_errors_as_problems()  # a path its router cannot match is a problem, not an HTML page


@app.post(
    "/",
    access=Access.PUBLIC,
    raw=True,
    max_body_bytes=512 * 1024,
    errors=(WebhookSignatureInvalid, WebhookPayloadInvalid, StripePriceNotConfigured),
)
def receive(ctx: RequestContext[NoBody, NoQuery]) -> WebhookReceipt:
    p = ctx.platform
    event = verify_event(
        ctx.raw_body, ctx.request.headers.get("Stripe-Signature"), p.settings.stripe_webhook_secret.get_secret_value()
    )
    outcome = webhook_processor(p, p.clock()).handle(event)
    return WebhookReceipt(id=event.id, type=event.type, outcome=outcome)


@functions_framework.http
def stripe_webhook(request: flask.Request) -> flask.Response:
    return app.handle(request)
