"""Notifications function: the event relay and what reacts to events.

Entry points: ``notifications_api`` (the frontend: in-app notifications, preferences; the public
one-click unsubscribe; operators: parked event deliveries) and ``notifications_tasks`` (Cloud Tasks:
relay an event to its consumers, run one consumer; Cloud Scheduler: the relay sweep, the weekly summary).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import functions_framework

from shared.http.app import HttpApp, answer_framework_errors_as_problems
from shared.needs import Need

if TYPE_CHECKING:
    import flask

api = HttpApp("notifications_api")
tasks = HttpApp("notifications_tasks", needs=(Need.TASK_QUEUE,))
answer_framework_errors_as_problems(api, tasks)  # a path the framework cannot route: a problem, not HTML


# -- in-app notifications and preferences (notifications_api) ---------------------------------------


# -- email: unsubscribe (notifications_api, public) -------------------------------------------------


# -- operators: parked deliveries (notifications_api, admin) -----------------------------------------


# -- the relay (notifications_tasks) ----------------------------------------------------------------


@functions_framework.http
def notifications_api(request: flask.Request) -> flask.Response:
    return api.handle(request)


@functions_framework.http
def notifications_tasks(request: flask.Request) -> flask.Response:
    return tasks.handle(request)
