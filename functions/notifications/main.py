"""Notifications function: the event relay and what reacts to events.

Entry points: ``notifications_api`` (the frontend: in-app notifications, preferences; the public
one-click unsubscribe; operators: parked event deliveries) and ``notifications_tasks`` (Cloud Tasks:
relay an event to its consumers, run one consumer; Cloud Scheduler: the relay sweep, the weekly summary).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import functions_framework
from pydantic import BaseModel, ConfigDict, Field

from shared.http.app import HttpApp, answer_framework_errors_as_problems
from shared.http.routes import Access, NoBody, NoQuery, RequestContext
from shared.mail.tokens import InvalidUnsubscribeToken
from shared.needs import Need
from shared.notifications import unsubscribe as unsubscribing
from shared.notifications.weekly import WeeklyReport, send_weekly_summaries
from shared.scheduled import finish

if TYPE_CHECKING:
    import flask

api = HttpApp("notifications_api", needs=(Need.MAIL,))
tasks = HttpApp("notifications_tasks", needs=(Need.TASK_QUEUE, Need.MAIL))
answer_framework_errors_as_problems(api, tasks)  # a path the framework cannot route: a problem, not HTML


# -- in-app notifications and preferences (notifications_api) ---------------------------------------


# -- email: unsubscribe (notifications_api, public) -------------------------------------------------
# The link in every email (and its List-Unsubscribe header). GET shows a confirmation page and changes
# nothing (scanners fetch links); POST — its button, or a mail client's RFC 8058 one-click POST with the
# body "List-Unsubscribe=One-Click" (raw: the form body is not JSON) — turns that type's email off. A
# bad token gets an HTML page with status 400, not a problem: a person in a browser reads it.


class UnsubscribeQuery(BaseModel):
    # Link trackers append their own parameters: ignored, not refused.
    model_config = ConfigDict(extra="ignore")

    token: str = Field(default="", max_length=2000)


def _html(page: str, status: int = 200) -> flask.Response:
    from flask import Response

    response = Response(page, status=status, content_type="text/html; charset=utf-8")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"  # the token never leaks to another site
    return response


_PAGES = {200: None, 400: None}  # text/html: the page, or the error page of a bad token


@api.get("/unsubscribe", query=UnsubscribeQuery, access=Access.PUBLIC, produces="text/html", responses=_PAGES)
def unsubscribe_page(ctx: RequestContext[NoBody, UnsubscribeQuery]) -> flask.Response:
    p = ctx.platform
    try:
        _, kind = unsubscribing.verify(p.mail_links.unsubscribe_secret, ctx.query.token, p.clock())
    except InvalidUnsubscribeToken as exc:
        return _html(unsubscribing.error_page(exc), 400)
    return _html(unsubscribing.confirmation_page(kind, ctx.query.token))


@api.post(
    "/unsubscribe",
    query=UnsubscribeQuery,
    access=Access.PUBLIC,
    raw=True,
    max_body_bytes=1024,
    produces="text/html",
    responses=_PAGES,
)
def unsubscribe(ctx: RequestContext[NoBody, UnsubscribeQuery]) -> flask.Response:
    p = ctx.platform
    secret = p.mail_links.unsubscribe_secret
    try:
        kind = unsubscribing.unsubscribe(p.notification_preferences, secret, ctx.query.token, p.clock())
    except InvalidUnsubscribeToken as exc:
        return _html(unsubscribing.error_page(exc), 400)
    return _html(unsubscribing.done_page(kind))


# -- operators: parked deliveries (notifications_api, admin) -----------------------------------------


# -- the relay (notifications_tasks) ----------------------------------------------------------------


# -- email: the weekly summary (notifications_tasks, Cloud Scheduler; once a week) --------------------


@tasks.post("/jobs/weekly-summary", access=Access.SCHEDULER)
def weekly_summary(ctx: RequestContext[NoBody, NoQuery]) -> WeeklyReport:
    p = ctx.platform
    report = send_weekly_summaries(
        reader=p.ledger_reader,
        ledger=p.ledger,
        images=p.generated_images,
        preferences=p.notification_preferences,
        directory=p.client_directory,
        emails=p.email_log,
        mailer=lambda: p.mailer,
        links=p.mail_links,
        now=p.clock(),
    )
    return finish(report, "weekly-summary")


@functions_framework.http
def notifications_api(request: flask.Request) -> flask.Response:
    return api.handle(request)


@functions_framework.http
def notifications_tasks(request: flask.Request) -> flask.Response:
    return tasks.handle(request)
