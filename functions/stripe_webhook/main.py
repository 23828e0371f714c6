"""Stripe webhook: the signature is verified on the raw body before anything is read; each event
is applied once (its id is recorded in the same commit as its effect) and answered fast.

2xx: applied, a duplicate, a type we deliberately ignore, or a poison event (signed, but a shape we
cannot apply: quarantined in ``stripe_dead_letters`` for an operator's replay, see
``shared/billing/deadletters.py``). 400: a bad signature (a forged or corrupt delivery). 5xx: a
transient failure (Firestore unavailable) or a plan price this deployment does not know yet — Stripe
retries for days, and the retry is safe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import functions_framework

from shared.billing.deadletters import WebhookReceipt
from shared.billing.deadletters import receive as receive_event
from shared.billing.events import StripePriceNotConfigured, WebhookSignatureInvalid, verify_signature
from shared.billing.policies import webhook_processor
from shared.http.app import Access, HttpApp, NoBody, NoQuery, RequestContext, answer_framework_errors_as_problems
from shared.needs import Need

if TYPE_CHECKING:
    import flask

# Its commits kick the relay of their events (subscription changes, failed payments): Cloud Tasks too.
app = HttpApp("stripe_webhook", needs=(Need.STRIPE, Need.STRIPE_WEBHOOK, Need.TASK_QUEUE))
answer_framework_errors_as_problems(app)  # a path the framework cannot route: a problem, not HTML


@app.post(
    "/",
    access=Access.PUBLIC,
    raw=True,
    max_body_bytes=512 * 1024,
    errors=(WebhookSignatureInvalid, StripePriceNotConfigured),
)
def receive(ctx: RequestContext[NoBody, NoQuery]) -> WebhookReceipt:
    p = ctx.platform
    secret = p.settings.stripe_webhook_secret.get_secret_value()
    verify_signature(ctx.raw_body, ctx.request.headers.get("Stripe-Signature"), secret)
    now = p.clock()
    return receive_event(ctx.raw_body, lambda: webhook_processor(p, now), p.stripe_dead_letters, now)


@functions_framework.http
def stripe_webhook(request: flask.Request) -> flask.Response:
    return app.handle(request)
