"""Notifications function: the event relay and what reacts to events.

Entry points: ``notifications_api`` (the frontend: in-app notifications, preferences; the public
one-click unsubscribe; operators: parked event deliveries) and ``notifications_tasks`` (Cloud Tasks:
relay an event to its consumers, run one consumer; Cloud Scheduler: the relay sweep, the weekly summary).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import functions_framework
from pydantic import BaseModel, ConfigDict, Field

from shared.errors import Conflict
from shared.events import relay
from shared.events.outbox import ParkedDelivery
from shared.http.app import Access, HttpApp, NoBody, NoQuery, RequestContext, answer_framework_errors_as_problems
from shared.mail.tokens import InvalidUnsubscribeToken
from shared.needs import Need
from shared.notifications import inbox
from shared.notifications import unsubscribe as unsubscribing
from shared.notifications.inbox import (
    MarkAllReadResult,
    MarkReadRequest,
    MarkReadResult,
    NotificationOut,
    NotificationQuery,
    PreferencesView,
    UnreadCount,
)
from shared.notifications.preferences import NotificationPreferences
from shared.notifications.weekly import WeeklyReport, send_weekly_summaries
from shared.pagination import Page, PageQuery
from shared.scheduled import finish
from shared.tasks import TaskOutcome

if TYPE_CHECKING:
    import flask

api = HttpApp("notifications_api", needs=(Need.MAIL, Need.TASK_QUEUE))  # replays parked events
tasks = HttpApp("notifications_tasks", needs=(Need.TASK_QUEUE, Need.MAIL))
answer_framework_errors_as_problems(api, tasks)  # a path the framework cannot route: a problem, not HTML


# -- in-app notifications and preferences (notifications_api) ---------------------------------------


@api.get("/notifications", query=NotificationQuery)
def list_notifications(ctx: RequestContext[NoBody, NotificationQuery]) -> Page[NotificationOut]:
    return inbox.list_notifications(ctx.platform.notifications, ctx.client_id, ctx.query)


@api.get("/notifications/unread-count")
def unread_count(ctx: RequestContext[NoBody, NoQuery]) -> UnreadCount:
    return inbox.unread_count(ctx.platform.notifications, ctx.client_id)


@api.post("/notifications/read", body=MarkReadRequest)
def mark_several_read(ctx: RequestContext[MarkReadRequest, NoQuery]) -> MarkReadResult:
    return inbox.mark_several_read(ctx.platform.notifications, ctx.client_id, ctx.body)


@api.post("/notifications/read-all")
def mark_all_read(ctx: RequestContext[NoBody, NoQuery]) -> MarkAllReadResult:
    return inbox.mark_all_read(ctx.platform.notifications, ctx.client_id)


@api.post("/notifications/<notification_id>/read")
def mark_read(ctx: RequestContext[NoBody, NoQuery]) -> NotificationOut:
    return inbox.mark_one_read(ctx.platform.notifications, ctx.client_id, ctx.path_params["notification_id"])


@api.get("/notification-preferences")
def get_preferences(ctx: RequestContext[NoBody, NoQuery]) -> PreferencesView:
    return inbox.get_preferences(ctx.platform.notification_preferences, ctx.client_id)


@api.put("/notification-preferences", body=NotificationPreferences)
def put_preferences(ctx: RequestContext[NotificationPreferences, NoQuery]) -> PreferencesView:
    return inbox.save_preferences(ctx.platform.notification_preferences, ctx.client_id, ctx.body)


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


@api.get("/admin/parked-deliveries", query=PageQuery, access=Access.ADMIN)
def parked_deliveries(ctx: RequestContext[NoBody, PageQuery]) -> Page[ParkedDelivery]:
    """Event deliveries the queue gave up on, with why, oldest id first."""
    items, cursor = relay.list_parked(ctx.platform.outbox, ctx.query.cursor, ctx.query.limit)
    return Page[ParkedDelivery](items=items, next_cursor=cursor)


@api.post("/admin/parked-deliveries/<parked_id>/replay", access=Access.ADMIN, status=202, errors=(Conflict,))
def replay_parked(ctx: RequestContext[NoBody, NoQuery]) -> relay.ParkedReplayOut:
    """Deliver a parked event to its consumer again (after the fix)."""
    p = ctx.platform
    return relay.replay(p.outbox, p.task_queue, ctx.path_params["parked_id"], p.clock())


# -- the relay (notifications_tasks) ----------------------------------------------------------------


@tasks.post(relay.RELAY_PATH, body=relay.RelayTask, access=Access.TASK)
def relay_event(ctx: RequestContext[relay.RelayTask, NoQuery]) -> TaskOutcome:
    """Queue one event's delivery to each of its consumers."""
    p = ctx.platform
    return TaskOutcome(outcome=relay.relay(p.outbox, p.task_queue, p.event_consumers(), ctx.body.event_id, p.clock()))


@tasks.post(relay.CONSUME_PATH, body=relay.ConsumeTask, access=Access.TASK)
def consume_event(ctx: RequestContext[relay.ConsumeTask, NoQuery]) -> TaskOutcome:
    """Run one consumer on one event (idempotent; parked on the queue's last attempt)."""
    p = ctx.platform
    if ctx.task is None:  # Access.TASK routes always carry the delivery's headers
        raise AssertionError("a task route without a task call")
    consumers = {consumer.name: consumer for consumer in p.event_consumers()}
    outcome = relay.consume(
        p.outbox, consumers, ctx.body, ctx.task, max_attempts=p.settings.tasks_max_attempts, now=p.clock()
    )
    return TaskOutcome(outcome=outcome)


@tasks.post("/jobs/sweep-events", access=Access.SCHEDULER)
def sweep_events(ctx: RequestContext[NoBody, NoQuery]) -> relay.SweepReport:
    """Relay the events whose kick was lost (older than two minutes and still due)."""
    p = ctx.platform
    return finish(relay.sweep(p.outbox, p.task_queue, p.clock()), "sweep-events")


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
