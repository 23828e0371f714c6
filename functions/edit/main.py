"""Edit function: declarative edit pipelines on assets, saved as new revisions; revert.

Entry points: ``edit_api`` (the frontend's API) and ``edit_tasks`` (Cloud Tasks workers: fan-out,
one asset, settle). Both are deployed from this folder; only the workers ever load rembg, and only
when a job removes a background.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import functions_framework

from shared.editing import service
from shared.editing.models import (
    EditFanoutTask,
    EditItemTask,
    EditJobOut,
    EditQuoteOut,
    EditRequest,
    EditSettleTask,
    RevertRequest,
    RevisionOut,
)
from shared.http.app import Access, HttpApp, JsonResponse, RequestContext

if TYPE_CHECKING:
    import flask

api = HttpApp("edit_api")
tasks = HttpApp("edit_tasks")

Ctx = RequestContext[Any, Any]
# Inpaint masks travel in the body as base64 PNG.
EDIT_MAX_BODY_BYTES = 8 * 1024 * 1024


@api.post("/edits", body=EditRequest, idempotent=True, max_body_bytes=EDIT_MAX_BODY_BYTES)
def create_edit(ctx: Ctx) -> JsonResponse:
    p = ctx.platform
    assert ctx.principal is not None
    policy = service.edit_policy(p.settings)
    prepared = service.prepare(p.db, p.price_book.current(), ctx.client_id, ctx.body, policy)
    if prepared.mode == "sync":
        result = service.run_sync(
            p.db,
            p.object_store,
            prepared,
            client_id=ctx.client_id,
            policy=policy,
            now=p.clock(),
            expires_in=p.settings.presign_expiry_seconds,
        )
        return JsonResponse(result, status=200)
    job = service.create_job(
        p.db,
        p.object_store,
        p.task_queue,
        p.ledger,
        prepared,
        client_id=ctx.client_id,
        user_id=ctx.principal.user_id,
        policy=policy,
        now=p.clock(),
        idempotency_key=ctx.request.headers.get("Idempotency-Key"),
    )
    return JsonResponse(service.job_out(p.db, job), status=202, headers={"Location": f"/edits/{job.id}"})


@api.post("/edits/quote", body=EditRequest, max_body_bytes=EDIT_MAX_BODY_BYTES)
def quote_edit(ctx: Ctx) -> EditQuoteOut:
    p = ctx.platform
    return service.quote_edit(p.db, p.price_book.current(), ctx.client_id, ctx.body, service.edit_policy(p.settings))


@api.get("/edits/<job_id>")
def get_edit(ctx: Ctx) -> EditJobOut:
    db = ctx.platform.db
    return service.job_out(db, service.get_job(db, ctx.client_id, ctx.path_params["job_id"]))


@api.post("/assets/<asset_id>/revert", body=RevertRequest, idempotent=True)
def revert_asset(ctx: Ctx) -> RevisionOut:
    p = ctx.platform
    return service.revert(
        p.db,
        p.object_store,
        client_id=ctx.client_id,
        asset_id=ctx.path_params["asset_id"],
        number=ctx.body.revision,
        now=p.clock(),
        expires_in=p.settings.presign_expiry_seconds,
    )


# -- workers ------------------------------------------------------------------------------------------


@tasks.post("/tasks/fanout", body=EditFanoutTask, access=Access.TASK)
def fanout(ctx: Ctx) -> dict[str, str]:
    p = ctx.platform
    return {"outcome": service.run_fanout(p.db, p.task_queue, ctx.body, p.clock())}


@tasks.post("/tasks/item", body=EditItemTask, access=Access.TASK)
def item(ctx: Ctx) -> dict[str, str]:
    from shared.editing.background import shared_remover

    p = ctx.platform
    assert ctx.task is not None
    policy = service.edit_policy(p.settings)
    outcome = service.run_item(
        p.db,
        p.object_store,
        p.task_queue,
        p.engine,
        lambda: shared_remover(policy.rembg_model_path),
        ctx.body,
        ctx.task,
        policy,
        p.clock(),
        clock=p.clock,
    )
    return {"outcome": outcome}


@tasks.post("/tasks/settle", body=EditSettleTask, access=Access.TASK)
def settle(ctx: Ctx) -> dict[str, str]:
    p = ctx.platform
    return {"outcome": service.run_settle(p.db, p.ledger, ctx.body, p.clock())}


@functions_framework.http
def edit_api(request: flask.Request) -> flask.Response:
    return api.handle(request)


@functions_framework.http
def edit_tasks(request: flask.Request) -> flask.Response:
    return tasks.handle(request)
