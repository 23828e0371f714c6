"""Sync-back: push approved images to the connected store, track what we put there, remove only our own.

Entry points: ``sync_api`` (the frontend's API: start, follow, pause, resume and cancel sync jobs; remove
our images; restore a product's original images; per-product status; history and its CSV; settings) and
``sync_tasks`` (Cloud Tasks: the sync jobs' fan-out, items and settlement; Cloud Scheduler: the reaper).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import functions_framework

from shared.batch import lifecycle
from shared.batch.models import ItemListQuery, JobListQuery
from shared.credentials import CredentialKeyUnavailable, CredentialsUnreadable
from shared.errors import NotFound, UpstreamUnavailable
from shared.http.app import (
    Access,
    HttpApp,
    JsonResponse,
    NoBody,
    NoQuery,
    RequestContext,
    answer_framework_errors_as_problems,
)
from shared.http.batch_routes import accepted, add_worker_routes, request_key
from shared.needs import Need
from shared.pagination import Page
from shared.stores.connections import StoreNeedsReauthorization, StoreNotConnected, live_connection
from shared.stores.ports import StoreAuthorizationLost, StoreProductGone, StoreRequestFailed, StoreUnavailable
from shared.sync import service
from shared.sync.auto import AUTO_SYNC_PATH, AutoSyncTask
from shared.sync.gallery import gallery
from shared.sync.jobs import (
    SYNCS,
    NothingToSync,
    SelectionTooLarge,
    create_sync,
    item_out,
    job_out,
    start_auto_sync,
)
from shared.sync.models import (
    HistoryExportQuery,
    HistoryOut,
    HistoryQuery,
    ProductSyncOut,
    ProductSyncQuery,
    RecordListQuery,
    RemoveOut,
    RemoveRequest,
    RestoreOut,
    SyncItemOut,
    SyncJobOut,
    SyncRecordOut,
    SyncRequest,
    SyncSettingsOut,
    SyncSettingsUpdate,
)
from shared.sync.policies import store_access
from shared.sync.push import AssetNotApproved, ProductNotLinked, VideoNotSyncable
from shared.tasks import TaskOutcome

if TYPE_CHECKING:
    import flask

SYNC_NEEDS = (Need.STORE_CREDENTIALS, Need.STORES, Need.TASK_QUEUE, Need.R2)
api = HttpApp("sync_api", needs=SYNC_NEEDS)
tasks = HttpApp("sync_tasks", needs=SYNC_NEEDS)
answer_framework_errors_as_problems(api, tasks)  # a path the framework cannot route: a problem, not HTML

CONNECTION_ERRORS = (StoreNotConnected, StoreNeedsReauthorization, CredentialsUnreadable, CredentialKeyUnavailable)
STORE_ERRORS = (StoreUnavailable, StoreRequestFailed, StoreAuthorizationLost, StoreProductGone)
SELECTION_ERRORS = (NotFound, AssetNotApproved, VideoNotSyncable, ProductNotLinked, NothingToSync, SelectionTooLarge)


# -- sync jobs ----------------------------------------------------------------------------------------


@api.post(
    "/sync",
    body=SyncRequest,
    idempotent=True,
    status=202,
    errors=(*SELECTION_ERRORS, *CONNECTION_ERRORS),
)
def start_sync(ctx: RequestContext[SyncRequest, NoQuery]) -> JsonResponse[SyncJobOut]:
    """Push approved images to the store: the named assets, or every approved image not yet synced."""
    p = ctx.platform
    assert ctx.principal is not None
    services = SYNCS.dependencies(p)
    job = create_sync(
        services,
        client_id=ctx.client_id,
        user_id=ctx.principal.user_id,
        request=ctx.body,
        request_key=request_key(ctx),
    )
    return accepted(job_out(services.jobs, job), f"/sync/jobs/{job.id}")


@api.get("/sync/jobs", query=JobListQuery)
def list_syncs(ctx: RequestContext[NoBody, JobListQuery]) -> Page[SyncJobOut]:
    store = SYNCS.store(ctx.platform)
    page = lifecycle.list_jobs(store, ctx.client_id, ctx.query)
    return Page[SyncJobOut](items=[job_out(store, job) for job in page.items], next_cursor=page.next_cursor)


@api.get("/sync/jobs/<job_id>", errors=(NotFound,))
def get_sync(ctx: RequestContext[NoBody, NoQuery]) -> SyncJobOut:
    store = SYNCS.store(ctx.platform)
    return job_out(store, store.get_job(ctx.client_id, ctx.path_params["job_id"]))


@api.get("/sync/jobs/<job_id>/items", query=ItemListQuery, errors=(NotFound,))
def list_sync_items(ctx: RequestContext[NoBody, ItemListQuery]) -> Page[SyncItemOut]:
    store = SYNCS.store(ctx.platform)
    page = lifecycle.list_items(store, ctx.client_id, ctx.path_params["job_id"], ctx.query)
    return Page[SyncItemOut](items=[item_out(item) for item in page.items], next_cursor=page.next_cursor)


@api.post("/sync/jobs/<job_id>/cancel", status=202, errors=(NotFound,))
def cancel_sync(ctx: RequestContext[NoBody, NoQuery]) -> SyncJobOut:
    p = ctx.platform
    store = SYNCS.store(p)
    job = lifecycle.cancel_job(SYNCS, store, p.task_queue, ctx.client_id, ctx.path_params["job_id"], p.clock())
    return job_out(store, job)


@api.post("/sync/jobs/<job_id>/pause", errors=(NotFound,))
def pause_sync(ctx: RequestContext[NoBody, NoQuery]) -> SyncJobOut:
    """Stop starting new pushes (those under way finish); resume goes on where it stopped."""
    p = ctx.platform
    store = SYNCS.store(p)
    job = lifecycle.pause_job(SYNCS, store, ctx.client_id, ctx.path_params["job_id"], p.clock(), "paused by user")
    return job_out(store, job)


@api.post("/sync/jobs/<job_id>/resume", status=202, errors=(NotFound, *CONNECTION_ERRORS))
def resume_sync(ctx: RequestContext[NoBody, NoQuery]) -> SyncJobOut:
    """Run a paused job's remaining pushes (a job paused for a revoked token needs the store reconnected)."""
    p = ctx.platform
    store = SYNCS.store(p)
    job_id = ctx.path_params["job_id"]
    job = store.get_job(ctx.client_id, job_id)
    if job.paused_reason is not None:
        live_connection(p.stores, ctx.client_id)  # 409 while the store still needs reconnecting
    job = lifecycle.resume_job(SYNCS, store, p.task_queue, ctx.client_id, job_id, p.clock())
    return job_out(store, job)


# -- what is in the store -------------------------------------------------------------------------------


@api.get("/sync/records", query=RecordListQuery)
def list_records(ctx: RequestContext[NoBody, RecordListQuery]) -> Page[SyncRecordOut]:
    """The synced-image records: what we pushed where, and where it stands."""
    return service.list_records(ctx.platform.sync, ctx.client_id, ctx.query)


@api.get("/sync/products", query=ProductSyncQuery)
def product_status(ctx: RequestContext[NoBody, ProductSyncQuery]) -> Page[ProductSyncOut]:
    """Per-product counts for the store-management page (filter by ``state``, search with ``q``)."""
    p = ctx.platform
    return service.product_status(p.sync, p.catalog, ctx.client_id, ctx.query)


@api.post("/sync/remove", body=RemoveRequest, errors=(NotFound, *CONNECTION_ERRORS, *STORE_ERRORS))
def remove_images(ctx: RequestContext[RemoveRequest, NoQuery]) -> RemoveOut:
    """Take our images of these assets off their store products; the merchant's own images stay."""
    p = ctx.platform
    assert ctx.principal is not None
    access = store_access(p)
    connection = live_connection(p.stores, ctx.client_id)
    removed = service.remove_assets(
        p.sync,
        p.catalog,
        lambda c: gallery(access, c),
        connection,
        ctx.client_id,
        ctx.body.asset_ids,
        ctx.principal.user_id,
        p.clock(),
    )
    return RemoveOut(removed=removed)


@api.post(
    "/products/<product_id>/sync/restore",
    errors=(NotFound, service.NothingToRestore, *CONNECTION_ERRORS, *STORE_ERRORS),
)
def restore_product(ctx: RequestContext[NoBody, NoQuery]) -> RestoreOut:
    """Put the store product's original images back in their order (ours off, the featured image first)."""
    p = ctx.platform
    assert ctx.principal is not None
    access = store_access(p)
    connection = live_connection(p.stores, ctx.client_id)
    return service.restore_product(
        p.sync,
        p.catalog,
        lambda c: gallery(access, c),
        connection,
        ctx.client_id,
        ctx.path_params["product_id"],
        ctx.principal.user_id,
        p.clock(),
    )


@api.get("/sync/history", query=HistoryQuery)
def history(ctx: RequestContext[NoBody, HistoryQuery]) -> Page[HistoryOut]:
    q = ctx.query
    page = ctx.platform.sync.history(
        ctx.client_id, product_id=q.product_id, action=q.action, cursor=q.cursor, limit=q.limit
    )
    return Page[HistoryOut](items=[service.history_out(e) for e in page.items], next_cursor=page.next_cursor)


@api.get("/sync/history.csv", query=HistoryExportQuery, produces="text/csv")
def history_csv(ctx: RequestContext[NoBody, HistoryExportQuery]) -> flask.Response:
    from flask import Response

    entries = ctx.platform.sync.all_history(ctx.client_id, product_id=ctx.query.product_id, action=ctx.query.action)
    return Response(
        service.history_csv(entries),
        content_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="sync-history.csv"'},
    )


@api.get("/sync/settings")
def get_settings(ctx: RequestContext[NoBody, NoQuery]) -> SyncSettingsOut:
    return service.settings_out(ctx.platform.sync.settings(ctx.client_id))


@api.put("/sync/settings", body=SyncSettingsUpdate)
def put_settings(ctx: RequestContext[SyncSettingsUpdate, NoQuery]) -> SyncSettingsOut:
    p = ctx.platform
    assert ctx.principal is not None
    return service.update_settings(p.sync, ctx.client_id, ctx.body, ctx.principal.user_id, p.clock())


# -- workers ------------------------------------------------------------------------------------------

add_worker_routes(tasks, SYNCS)


@tasks.post(AUTO_SYNC_PATH, body=AutoSyncTask, access=Access.TASK, errors=(UpstreamUnavailable,))
def auto_sync(ctx: RequestContext[AutoSyncTask, NoQuery]) -> TaskOutcome:
    """Start the sync job of an image approved while auto-sync is on (queued by the ``auto_sync`` consumer)."""
    p = ctx.platform
    start = start_auto_sync(p, ctx.body.client_id)
    return TaskOutcome(outcome=service.auto_sync(p.catalog, p.stores, ctx.body, start))


@functions_framework.http
def sync_api(request: flask.Request) -> flask.Response:
    return api.handle(request)


@functions_framework.http
def sync_tasks(request: flask.Request) -> flask.Response:
    return tasks.handle(request)
