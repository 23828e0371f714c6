"""Credits function: balance, history, usage, quotes and admin tools over the credit ledger.

Entry points: ``credits_api`` (frontend and admins, user JWTs) and ``credits_jobs`` (Cloud
Scheduler targets: sweep expired holds, expire buckets, verify balances; each safe to run twice,
each client in isolation, a 500 problem listing the failed clients so the scheduler retries).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import functions_framework

from shared.errors import BadRequest, IdempotencyKeyReused, InsufficientCredits
from shared.http.app import (
    Access,
    BodyT,
    HttpApp,
    JsonResponse,
    NoBody,
    NoQuery,
    QueryT,
    RequestContext,
    answer_framework_errors_as_problems,
)
from shared.ledger import admin as ledger_admin
from shared.ledger import views
from shared.ledger.model import Actor, GrantSource
from shared.ledger.pricing import PriceList, Quote, QuoteRequest, quote
from shared.ledger.views import (
    BalanceView,
    EntryView,
    HistoryQuery,
    JobReport,
    UsageQuery,
    UsageView,
    VerifyQuery,
)
from shared.needs import Need
from shared.pagination import Page
from shared.scheduled import finish

if TYPE_CHECKING:
    import flask

# The ledger's commits kick the relay of their events (balance crossings): both enqueue tasks.
api = HttpApp("credits_api", needs=(Need.TASK_QUEUE,))
jobs = HttpApp("credits_jobs", needs=(Need.TASK_QUEUE,))
logger = logging.getLogger("epox.credits")
answer_framework_errors_as_problems(api, jobs)  # a path the framework cannot route: a problem, not HTML


def _balance(ctx: RequestContext[BodyT, QueryT], client_id: str) -> BalanceView:
    p = ctx.platform
    return views.balance_view(p.ledger_reader, p.ledger.state(client_id), p.settings.low_credit_threshold, p.clock())


def _csv_response(ctx: RequestContext[BodyT, QueryT], client_id: str, query: HistoryQuery) -> flask.Response:
    from flask import Response

    return Response(
        views.history_csv(ctx.platform.ledger_reader, client_id, query),
        content_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="credits-{client_id}.csv"'},
    )


# -- the client's own credits -----------------------------------------------------------------------


@api.get("/balance")
def balance(ctx: RequestContext[NoBody, NoQuery]) -> BalanceView:
    return _balance(ctx, ctx.client_id)


@api.get("/history", query=HistoryQuery)
def history(ctx: RequestContext[NoBody, HistoryQuery]) -> Page[EntryView]:
    return views.history(ctx.platform.ledger_reader, ctx.client_id, ctx.query)


@api.get("/history.csv", query=HistoryQuery, produces="text/csv")
def history_csv(ctx: RequestContext[NoBody, HistoryQuery]) -> flask.Response:
    return _csv_response(ctx, ctx.client_id, ctx.query)


@api.get("/usage", query=UsageQuery)
def usage(ctx: RequestContext[NoBody, UsageQuery]) -> UsageView:
    return views.usage(ctx.platform.ledger_reader, ctx.client_id, ctx.query)


@api.get("/prices")
def prices(ctx: RequestContext[NoBody, NoQuery]) -> PriceList:
    return ctx.platform.price_book.current()


@api.post("/quote", body=QuoteRequest)
def get_quote(ctx: RequestContext[QuoteRequest, NoQuery]) -> Quote:
    return quote(ctx.platform.price_book.current(), ctx.body.items)


# -- admin --------------------------------------------------------------------------------------------


@api.get("/admin/clients", query=ledger_admin.ClientSearch, access=Access.ADMIN)
def find_clients(ctx: RequestContext[NoBody, ledger_admin.ClientSearch]) -> Page[ledger_admin.ClientSummary]:
    items, cursor = ledger_admin.find_clients(ctx.platform.ledger_reader, ctx.query)
    return Page[ledger_admin.ClientSummary](items=items, next_cursor=cursor)


@api.get("/admin/clients/<client_id>/balance", access=Access.ADMIN)
def admin_balance(ctx: RequestContext[NoBody, NoQuery]) -> BalanceView:
    return _balance(ctx, _existing_client(ctx))


@api.get("/admin/clients/<client_id>/history", query=HistoryQuery, access=Access.ADMIN)
def admin_history(ctx: RequestContext[NoBody, HistoryQuery]) -> Page[EntryView]:
    return views.history(ctx.platform.ledger_reader, _existing_client(ctx), ctx.query)


def _existing_client(ctx: RequestContext[BodyT, QueryT]) -> str:
    return ledger_admin.existing_client(ctx.platform.ledger_reader, ctx.path_params["client_id"])


def _admin_key(ctx: RequestContext[BodyT, QueryT], action: str) -> str:
    key = ctx.request.headers.get("Idempotency-Key")
    if not key:
        raise BadRequest("Admin credit changes need an Idempotency-Key header (so a retry cannot apply twice)")
    return f"admin:{action}:{ctx.principal.user_id if ctx.principal else ''}:{key}"


@api.post(
    "/admin/clients/<client_id>/grants",
    body=ledger_admin.AdminGrant,
    access=Access.ADMIN,
    status=201,
    errors=(BadRequest, IdempotencyKeyReused),
)
def admin_grant(ctx: RequestContext[ledger_admin.AdminGrant, NoQuery]) -> JsonResponse[ledger_admin.AdminChangeOut]:
    assert ctx.principal is not None
    target, body = _existing_client(ctx), ctx.body
    result = ctx.platform.ledger.grant(
        target,
        key=_admin_key(ctx, "grant"),
        amount=body.amount,
        source=GrantSource(body.source),
        actor=Actor(kind="admin", id=ctx.principal.user_id),
        reason=body.reason,
        expires_at=body.expires_at,
    )
    logger.info("admin %s granted %s credits to %s: %s", ctx.principal.user_id, body.amount, target, body.reason)
    return JsonResponse(ledger_admin.AdminChangeOut(result=result, balance=_balance(ctx, target)), status=201)


@api.post(
    "/admin/clients/<client_id>/adjustments",
    body=ledger_admin.AdminAdjustment,
    access=Access.ADMIN,
    status=201,
    errors=(BadRequest, IdempotencyKeyReused, InsufficientCredits),
)
def admin_adjust(
    ctx: RequestContext[ledger_admin.AdminAdjustment, NoQuery],
) -> JsonResponse[ledger_admin.AdminChangeOut]:
    assert ctx.principal is not None
    target, body = _existing_client(ctx), ctx.body
    result = ctx.platform.ledger.adjust(
        target,
        key=_admin_key(ctx, "adjust"),
        amount=body.amount,
        actor=Actor(kind="admin", id=ctx.principal.user_id),
        reason=body.reason,
    )
    logger.info("admin %s adjusted %s by %s: %s", ctx.principal.user_id, target, body.amount, body.reason)
    return JsonResponse(ledger_admin.AdminChangeOut(result=result, balance=_balance(ctx, target)), status=201)


@api.put("/admin/prices", body=PriceList, access=Access.ADMIN)
def admin_prices(ctx: RequestContext[PriceList, NoQuery]) -> PriceList:
    assert ctx.principal is not None
    return ctx.platform.price_book.replace(ctx.body, admin_id=ctx.principal.user_id, now=ctx.platform.clock())


# -- Cloud Scheduler jobs ----------------------------------------------------------------------------
# A client that fails is logged and listed in ``failed``; the others are still processed, and then the
# run answers a 500 problem carrying the report, so Cloud Scheduler retries it (the jobs are idempotent).


@jobs.post("/jobs/sweep-holds", access=Access.SCHEDULER)
def sweep_holds(ctx: RequestContext[NoBody, NoQuery]) -> JobReport:
    p = ctx.platform
    return finish(views.sweep_holds(p.ledger_reader, p.ledger, p.clock()), "sweep-holds")


@jobs.post("/jobs/expire-buckets", access=Access.SCHEDULER)
def expire_buckets(ctx: RequestContext[NoBody, NoQuery]) -> JobReport:
    p = ctx.platform
    return finish(views.expire_buckets(p.ledger_reader, p.ledger, p.clock()), "expire-buckets")


@jobs.post("/jobs/verify-balances", query=VerifyQuery, access=Access.SCHEDULER)
def verify_balances(ctx: RequestContext[NoBody, VerifyQuery]) -> JobReport:
    p = ctx.platform
    report = views.verify_balances(p.ledger_reader, p.ledger, full=ctx.query.full)
    for client_id, problems in report.problems.items():
        # CRITICAL so a log-based alert fires: a balance that disagrees with its entries is a money bug.
        logger.critical(
            "ledger drift for client %s: %s",
            client_id,
            "; ".join(problems),
            extra={"fields": {"ledger_drift": {"client_id": client_id, "problems": problems}}},
        )
    # A drift is a finding, not a failed run (a retry cannot fix it); a client that could not be checked is.
    return finish(report, "verify-balances")


@functions_framework.http
def credits_api(request: flask.Request) -> flask.Response:
    return api.handle(request)


@functions_framework.http
def credits_jobs(request: flask.Request) -> flask.Response:
    return jobs.handle(request)
