"""Edit function: declarative edit pipelines on assets, saved as new revisions; revert.

Entry points: ``edit_api`` (the frontend's API) and ``edit_tasks`` (Cloud Tasks workers: fan-out,
one asset, settle). Both are deployed from this folder; only the workers ever load rembg, and only
when a job removes a background.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import functions_framework

from shared.batch import lifecycle
from shared.batch.models import JobListQuery
from shared.billing.service import PaymentPastDue
from shared.editing import service
from shared.editing.background import BackgroundRemovalUnavailable
from shared.editing.models import EditJobOut, EditQuoteOut, EditRequest, EditResultOut, RevertRequest, RevisionOut
from shared.editing.pipeline import EDIT_REFUSALS
from shared.editing.service import EDITS, AssetImageMissing, AssetNotAnImage
from shared.errors import Conflict, InsufficientCredits, NotFound
from shared.http.app import HttpApp, JsonResponse, NoBody, NoQuery, RequestContext, answer_framework_errors_as_problems
from shared.http.batch_routes import accepted, add_worker_routes, request_key
from shared.imaging import IMAGE_ERRORS
from shared.needs import Need
from shared.pagination import Page

if TYPE_CHECKING:
    import flask


api = HttpApp("edit_api", needs=(Need.R2, Need.TASK_QUEUE))
tasks = HttpApp("edit_tasks", needs=(Need.R2, Need.TASK_QUEUE, Need.GEMINI))

# What planning an edit can refuse: assets that are missing or not images, unreadable pixels, operations
# that do not fit the image, background removal that cannot run here.
EDIT_ERRORS = (
    NotFound,
    AssetNotAnImage,
    AssetImageMissing,
    BackgroundRemovalUnavailable,
    *EDIT_REFUSALS,
    *IMAGE_ERRORS,
)

# Inpaint masks travel in the body as base64 PNG.
EDIT_MAX_BODY_BYTES = 8 * 1024 * 1024
answer_framework_errors_as_problems(api, tasks)  # a path the framework cannot route: a problem, not HTML


@api.post(
    "/edits",
    body=EditRequest,
    idempotent=True,
    max_body_bytes=EDIT_MAX_BODY_BYTES,
    responses={200: EditResultOut, 202: EditJobOut},
    errors=(*EDIT_ERRORS, InsufficientCredits, PaymentPastDue, Conflict),
)
def create_edit(ctx: RequestContext[EditRequest, NoQuery]) -> JsonResponse[EditResultOut] | JsonResponse[EditJobOut]:
    p = ctx.platform
    assert ctx.principal is not None
    policy = service.edit_policy(p.settings)
    prepared = service.prepare(p.catalog.assets, p.price_book.current(), ctx.client_id, ctx.body, policy)
    if prepared.mode == "sync":
        result = service.run_sync(
            p.catalog.assets,
            p.object_store,
            prepared,
            client_id=ctx.client_id,
            policy=policy,
            now=p.clock(),
            expires_in=p.settings.presign_expiry_seconds,
        )
        return JsonResponse(result, status=200)
    from shared.billing.policies import billing_store

    job = service.create_job(
        EDITS.dependencies(p),
        prepared,
        client_id=ctx.client_id,
        user_id=ctx.principal.user_id,
        request_key=request_key(ctx),
        billing=billing_store(p),
    )
    return accepted(service.job_out(EDITS.store(p), job), f"/edits/{job.id}")


@api.post("/edits/quote", body=EditRequest, max_body_bytes=EDIT_MAX_BODY_BYTES, errors=EDIT_ERRORS)
def quote_edit(ctx: RequestContext[EditRequest, NoQuery]) -> EditQuoteOut:
    p = ctx.platform
    return service.quote_edit(
        p.catalog.assets, p.price_book.current(), ctx.client_id, ctx.body, service.edit_policy(p.settings)
    )


@api.get("/edits", query=JobListQuery)
def list_edits(ctx: RequestContext[NoBody, JobListQuery]) -> Page[EditJobOut]:
    store = EDITS.store(ctx.platform)
    page = lifecycle.list_jobs(store, ctx.client_id, ctx.query)
    return Page[EditJobOut](items=[service.job_out(store, job) for job in page.items], next_cursor=page.next_cursor)


@api.get("/edits/<job_id>")
def get_edit(ctx: RequestContext[NoBody, NoQuery]) -> EditJobOut:
    store = EDITS.store(ctx.platform)
    return service.job_out(store, store.get_job(ctx.client_id, ctx.path_params["job_id"]))


@api.post("/edits/<job_id>/cancel", status=202)
def cancel_edit(ctx: RequestContext[NoBody, NoQuery]) -> EditJobOut:
    p = ctx.platform
    store = EDITS.store(p)
    job = lifecycle.cancel_job(EDITS, store, p.task_queue, ctx.client_id, ctx.path_params["job_id"], p.clock())
    return service.job_out(store, job)


@api.post("/assets/<asset_id>/revert", body=RevertRequest, idempotent=True, errors=(Conflict,))
def revert_asset(ctx: RequestContext[RevertRequest, NoQuery]) -> RevisionOut:
    p = ctx.platform
    return service.revert(
        p.catalog.assets,
        p.object_store,
        client_id=ctx.client_id,
        asset_id=ctx.path_params["asset_id"],
        number=ctx.body.revision,
        now=p.clock(),
        expires_in=p.settings.presign_expiry_seconds,
    )


# -- workers ------------------------------------------------------------------------------------------

add_worker_routes(tasks, EDITS)


@functions_framework.http
def edit_api(request: flask.Request) -> flask.Response:
    return api.handle(request)


@functions_framework.http
def edit_tasks(request: flask.Request) -> flask.Response:
    return tasks.handle(request)
