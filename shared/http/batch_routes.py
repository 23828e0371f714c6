"""The HTTP side every batch-job function shares: worker routes, idempotency keys, the 202 answer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.batch.kind import RequestKey
from shared.batch.lifecycle import fan_out, run_item, run_settle
from shared.batch.models import ItemTask, JobTask, ReapReport
from shared.batch.recovery import reap
from shared.http.app import Access, BodyT, HttpApp, JsonResponse, NoBody, NoQuery, OutT, QueryT, RequestContext
from shared.tasks import TaskOutcome

if TYPE_CHECKING:
    from shared.batch.kind import JobKind


def request_key(ctx: RequestContext[BodyT, QueryT]) -> RequestKey | None:
    """The request's Idempotency-Key with the fingerprint the HTTP layer compares for it (method,
    path, query and JSON body), so a job compares requests the same way once that record expired."""
    from shared.http.idempotency import fingerprint_request

    key = ctx.request.headers.get("Idempotency-Key")
    if key is None:
        return None
    return RequestKey(key=key, fingerprint=fingerprint_request(ctx.request, ctx.raw_body))


def accepted(body: OutT, location: str) -> JsonResponse[OutT]:
    """202 for a job that was accepted (or found again under its key), pointing at its status."""
    return JsonResponse(body, status=202, headers={"Location": location})


def add_worker_routes(app: HttpApp, kind: JobKind[Any, Any, Any, Any]) -> None:
    """POST /tasks/fanout, /tasks/item and /tasks/settle on a kind's Cloud Tasks entry point, and
    /jobs/reap-stuck-items for Cloud Scheduler: each builds the kind's services from the platform
    (:meth:`JobKind.dependencies`) and runs the lifecycle's step, which calls the kind's methods."""

    # The fan-out body is the kind's own task model (paged kinds carry a page number).
    def fanout_route(ctx: RequestContext[JobTask, NoQuery]) -> TaskOutcome:
        return TaskOutcome(outcome=fan_out(kind, kind.dependencies(ctx.platform), ctx.body))

    def item_route(ctx: RequestContext[ItemTask, NoQuery]) -> TaskOutcome:
        if ctx.task is None:  # Access.TASK routes always carry the delivery's headers
            raise AssertionError("a task route without a task call")
        return TaskOutcome(outcome=run_item(kind, kind.dependencies(ctx.platform), ctx.body, ctx.task))

    def settle_route(ctx: RequestContext[JobTask, NoQuery]) -> TaskOutcome:
        return TaskOutcome(outcome=run_settle(kind, kind.dependencies(ctx.platform), ctx.body))

    def reap_route(ctx: RequestContext[NoBody, NoQuery]) -> ReapReport:
        from datetime import timedelta

        from shared.scheduled import finish

        lease = timedelta(minutes=ctx.platform.settings.batch_item_lease_minutes)
        report = reap(kind, kind.dependencies(ctx.platform), lease=lease)
        return finish(report, "reap-stuck-items")

    app.post("/tasks/fanout", body=kind.fanout_model, access=Access.TASK)(fanout_route)
    app.post("/tasks/item", body=ItemTask, access=Access.TASK)(item_route)
    app.post("/tasks/settle", body=JobTask, access=Access.TASK)(settle_route)
    app.post("/jobs/reap-stuck-items", access=Access.SCHEDULER)(reap_route)
