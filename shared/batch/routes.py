"""The HTTP side every batch-job function shares: worker routes, idempotency keys, the 202 answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from shared.batch.lifecycle import RequestKey, run_settle
from shared.batch.models import ItemTask, JobTask, ReapReport
from shared.batch.recovery import reap
from shared.http.app import Access, HttpApp, JsonResponse, RequestContext

if TYPE_CHECKING:
    from shared.batch.kind import JobKind
    from shared.platform import Platform
    from shared.tasks import TaskCall

Ctx = RequestContext[Any, Any]


def request_key(ctx: Ctx) -> RequestKey | None:
    """The request's Idempotency-Key with the fingerprint the HTTP layer compares for it (method,
    path, query and JSON body), so a job compares requests the same way once that record expired."""
    from shared.http.idempotency import fingerprint_request

    key = ctx.request.headers.get("Idempotency-Key")
    if key is None:
        return None
    return RequestKey(key=key, fingerprint=fingerprint_request(ctx.request, ctx.raw_body))


def accepted(body: BaseModel, location: str) -> JsonResponse:
    """202 for a job that was accepted (or found again under its key), pointing at its status."""
    return JsonResponse(body, status=202, headers={"Location": location})


def add_worker_routes(
    app: HttpApp,
    kind: JobKind[Any, Any],
    *,
    fanout: Callable[[Platform, Any], str],
    item: Callable[[Platform, ItemTask, TaskCall], str],
) -> None:
    """POST /tasks/fanout, /tasks/item and /tasks/settle on a kind's Cloud Tasks entry point, and
    /jobs/reap-stuck-items for Cloud Scheduler.

    ``fanout`` and ``item`` run the kind's steps with the platform's adapters; settling and reaping
    are the same for every kind."""

    def fanout_route(ctx: Ctx) -> dict[str, str]:
        return {"outcome": fanout(ctx.platform, ctx.body)}

    def item_route(ctx: Ctx) -> dict[str, str]:
        if ctx.task is None:  # Access.TASK routes always carry the delivery's headers
            raise AssertionError("a task route without a task call")
        return {"outcome": item(ctx.platform, ctx.body, ctx.task)}

    def settle_route(ctx: Ctx) -> dict[str, str]:
        p = ctx.platform
        return {"outcome": run_settle(kind, p.db, p.ledger, ctx.body, p.clock())}

    def reap_route(ctx: Ctx) -> ReapReport:
        from datetime import timedelta

        from shared.scheduled import finish

        p = ctx.platform
        lease = timedelta(minutes=p.settings.batch_item_lease_minutes)
        report = reap(kind, p.db, p.task_queue, p.clock(), lease=lease, clock=p.clock)
        return finish(report, "reap-stuck-items")

    app.post("/tasks/fanout", body=kind.fanout_model, access=Access.TASK)(fanout_route)
    app.post("/tasks/item", body=ItemTask, access=Access.TASK)(item_route)
    app.post("/tasks/settle", body=JobTask, access=Access.TASK)(settle_route)
    app.post("/jobs/reap-stuck-items", access=Access.SCHEDULER)(reap_route)
