"""Billing function: plans and packs, the current subscription, Stripe Checkout and the customer
portal, invoices; and the daily billing job.

Entry points: ``billing_api`` (frontend, user JWTs) and ``billing_jobs`` (Cloud Scheduler: monthly
allotments for annual and free plans, plan changes that fall due; safe to run twice, each client in
isolation, a 500 problem listing the failed clients so the scheduler retries).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import functions_framework

from shared.billing import deadletters, service
from shared.billing.allotments import JOB, BillingJobReport, run_daily
from shared.billing.catalog import load_catalog
from shared.billing.events import StripePriceNotConfigured
from shared.billing.models import (
    CatalogOut,
    CheckoutRequest,
    InvoiceListQuery,
    InvoicePage,
    PortalRequest,
    RedirectOut,
    SubscriptionOut,
)
from shared.billing.policies import billing_accounts, billing_store, price_ids, webhook_processor
from shared.catalog.products import product_usage
from shared.errors import BadRequest, UpstreamRejectedCredentials
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
from shared.pagination import Page
from shared.scheduled import finish

if TYPE_CHECKING:
    import flask

# Stripe refused the request (400) or our key (502); busy or down is the 503 every route documents.
STRIPE_ERRORS = (BadRequest, UpstreamRejectedCredentials)

api = HttpApp("billing_api", needs=(Need.STRIPE, Need.BILLING_PAGES))
jobs = HttpApp("billing_jobs", needs=(Need.TASK_QUEUE,))  # plan changes kick their events' relay
answer_framework_errors_as_problems(api, jobs)  # a path the framework cannot route: a problem, not HTML


@api.get("/plans")
def plans(ctx: RequestContext[NoBody, NoQuery]) -> CatalogOut:
    return service.catalog_out(load_catalog(), price_ids(ctx.platform))


@api.get("/subscription")
def subscription(ctx: RequestContext[NoBody, NoQuery]) -> SubscriptionOut:
    p = ctx.platform
    used = product_usage(p.catalog.products, ctx.client_id).used
    return service.subscription_out(billing_accounts(p), load_catalog(), ctx.client_id, p.clock(), products_used=used)


@api.post("/checkout", body=CheckoutRequest, status=201, idempotent=True, errors=STRIPE_ERRORS)
def checkout(ctx: RequestContext[CheckoutRequest, NoQuery]) -> JsonResponse[RedirectOut]:
    p = ctx.platform
    redirect = service.start_checkout(
        billing_accounts(p),
        p.payment_gateway,
        load_catalog(),
        price_ids(p),
        client_id=ctx.client_id,
        request=ctx.body,
        default_success_url=p.settings.billing_success_url,
        default_cancel_url=p.settings.billing_cancel_url,
        idempotency_key=ctx.request.headers.get("Idempotency-Key"),
    )
    return JsonResponse(redirect, status=201)


@api.post("/portal", body=PortalRequest, status=201, errors=STRIPE_ERRORS)
def portal(ctx: RequestContext[PortalRequest, NoQuery]) -> RedirectOut:
    p = ctx.platform
    return service.open_portal(
        billing_accounts(p),
        p.payment_gateway,
        ctx.client_id,
        str(ctx.body.return_url or p.settings.billing_portal_return_url),
    )


@api.get("/invoices", query=InvoiceListQuery, errors=STRIPE_ERRORS)
def invoices(ctx: RequestContext[NoBody, InvoiceListQuery]) -> InvoicePage:
    p = ctx.platform
    return service.invoices(billing_accounts(p), p.payment_gateway, ctx.client_id, ctx.query.limit, ctx.query.cursor)


# -- admin: poison Stripe events (shared/billing/deadletters.py) --------------------------------------


@api.get("/admin/dead-letters", query=deadletters.DeadLetterQuery, access=Access.ADMIN)
def dead_letters(ctx: RequestContext[NoBody, deadletters.DeadLetterQuery]) -> Page[deadletters.DeadLetterOut]:
    return deadletters.list_letters(ctx.platform.stripe_dead_letters, ctx.query)


@api.post(
    "/admin/dead-letters/<letter_id>/replay",
    access=Access.ADMIN,
    errors=(deadletters.DeadLetterNotFound, deadletters.DeadLetterReplayFailed, StripePriceNotConfigured),
)
def replay_dead_letter(ctx: RequestContext[NoBody, NoQuery]) -> deadletters.ReplayOut:
    p = ctx.platform
    now = p.clock()
    letter_id = ctx.path_params["letter_id"]
    return deadletters.replay(p.stripe_dead_letters, lambda: webhook_processor(p, now), letter_id, now)


@jobs.post("/jobs/daily", access=Access.SCHEDULER)
def daily(ctx: RequestContext[NoBody, NoQuery]) -> BillingJobReport:
    p = ctx.platform
    # Clients that failed are listed in a 500 problem after the others were processed: the scheduler retries.
    return finish(run_daily(billing_store(p), p.ledger, load_catalog(), p.clock()), JOB)


@functions_framework.http
def billing_api(request: flask.Request) -> flask.Response:
    return api.handle(request)


@functions_framework.http
def billing_jobs(request: flask.Request) -> flask.Response:
    return jobs.handle(request)
