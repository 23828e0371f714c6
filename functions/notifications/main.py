"""Notifications function: the event relay and what reacts to events.

Entry points: ``notifications_api`` (the frontend: in-app notifications, preferences; the public
one-click unsubscribe; operators: parked event deliveries) and ``notifications_tasks`` (Cloud Tasks:
relay an event to its consumers, run one consumer; Cloud Scheduler: the relay sweep, the weekly summary).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import functions_framework

from shared.http.app import HttpApp, NoBody, NoQuery, RequestContext, answer_framework_errors_as_problems
from shared.needs import Need
from shared.notifications import inbox
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
from shared.pagination import Page

if TYPE_CHECKING:
    import flask

api = HttpApp("notifications_api")
tasks = HttpApp("notifications_tasks", needs=(Need.TASK_QUEUE,))
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


# -- operators: parked deliveries (notifications_api, admin) -----------------------------------------


# -- the relay (notifications_tasks) ----------------------------------------------------------------


@functions_framework.http
def notifications_api(request: flask.Request) -> flask.Response:
    return api.handle(request)


@functions_framework.http
def notifications_tasks(request: flask.Request) -> flask.Response:
    return tasks.handle(request)
