"""Catalog function: products, uploads, CSV and .xlsx imports (that may also generate images) and the asset library.

Two entry points are deployed from this folder: ``catalog_api`` (the frontend's API, user JWTs)
and ``catalog_tasks`` (Cloud Tasks workers). Each route parses and validates, calls one service
function from ``shared.catalog`` and returns its result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import functions_framework

from shared.billing.errors import PaymentPastDue
from shared.catalog import bulk, imports, library, products, uploads
from shared.catalog.csv_parsing import CSV_ERRORS
from shared.catalog.generation_rows import (
    GenerationCostChanged,
    GenerationPricing,
    NothingToGenerate,
    TooManyGenerationRows,
)
from shared.catalog.imports import CsvPreviewTooLarge, ImportNotEditable
from shared.catalog.models import (
    AssetBulkOut,
    AssetBulkRequest,
    AssetDetailOut,
    AssetListQuery,
    AssetOut,
    AssetUpdate,
    ImportChunkTask,
    ImportCreate,
    ImportDoc,
    ImportOut,
    ImportUpdate,
    ProductCreate,
    ProductListQuery,
    ProductOut,
    ProductUpdate,
    UploadCreate,
    UploadOut,
)
from shared.catalog.policies import import_policy, upload_policy
from shared.catalog.ports import CatalogRepositories
from shared.catalog.slots import ProductSlotLimit
from shared.catalog.uploads import TooManyPendingUploads, UploadExpired, UploadNotReceived, UploadRejected
from shared.catalog.xlsx import XLSX_ERRORS
from shared.errors import Conflict, InsufficientCredits, NotFound
from shared.exports import service as exports
from shared.exports.models import ExportCreate, ExportOut, ExportTask
from shared.exports.sources import JobStillRunning
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
from shared.imaging import IMAGE_ERRORS
from shared.needs import Need
from shared.pagination import Page
from shared.scheduled import finish
from shared.tasks import TaskOutcome

if TYPE_CHECKING:
    import flask

api = HttpApp("catalog_api", needs=(Need.R2, Need.TASK_QUEUE))
tasks = HttpApp("catalog_tasks", needs=(Need.R2, Need.TASK_QUEUE))
answer_framework_errors_as_problems(api, tasks)  # a path the framework cannot route: a problem, not HTML


def _repos(ctx: RequestContext[BodyT, QueryT]) -> CatalogRepositories:
    return ctx.platform.catalog


def _expiry(ctx: RequestContext[BodyT, QueryT]) -> int:
    return ctx.platform.settings.presign_expiry_seconds


# -- products -------------------------------------------------------------------------------------


@api.post("/products", body=ProductCreate, status=201, idempotent=True, errors=(ProductSlotLimit, Conflict))
def create_product(ctx: RequestContext[ProductCreate, NoQuery]) -> JsonResponse[ProductOut]:
    p = ctx.platform
    doc = products.create_product(
        _repos(ctx).products, ctx.client_id, ctx.body, p.clock()
    )  # takes a slot or answers 402
    out = products.to_out(doc, p.object_store, _expiry(ctx))
    return JsonResponse(out, status=201, headers={"Location": f"/products/{doc.id}"})


@api.get("/products", query=ProductListQuery)
def list_products(ctx: RequestContext[NoBody, ProductListQuery]) -> Page[ProductOut]:
    p = ctx.platform
    page = products.list_products(_repos(ctx).products, ctx.client_id, ctx.query)
    items = [products.to_out(doc, p.object_store, _expiry(ctx)) for doc in page.items]
    return Page[ProductOut](items=items, next_cursor=page.next_cursor)


@api.get("/products/<product_id>")
def get_product(ctx: RequestContext[NoBody, NoQuery]) -> ProductOut:
    p = ctx.platform
    doc = products.get_product(_repos(ctx).products, ctx.client_id, ctx.path_params["product_id"])
    return products.to_out(doc, p.object_store, _expiry(ctx))


@api.patch("/products/<product_id>", body=ProductUpdate, errors=(Conflict,))
def update_product(ctx: RequestContext[ProductUpdate, NoQuery]) -> ProductOut:
    p = ctx.platform
    doc = products.update_product(
        _repos(ctx).products, ctx.client_id, ctx.path_params["product_id"], ctx.body, p.clock()
    )
    return products.to_out(doc, p.object_store, _expiry(ctx))


@api.delete("/products/<product_id>", status=204, errors=(Conflict,))
def delete_product(ctx: RequestContext[NoBody, NoQuery]) -> None:
    p = ctx.platform
    products.delete_product(_repos(ctx).products, ctx.client_id, ctx.path_params["product_id"], p.clock())


# -- uploads --------------------------------------------------------------------------------------


@api.post(
    "/uploads",
    body=UploadCreate,
    status=201,
    idempotent=True,
    errors=(NotFound, TooManyPendingUploads, ProductSlotLimit),
)
def create_upload(ctx: RequestContext[UploadCreate, NoQuery]) -> UploadOut:
    p = ctx.platform
    return uploads.create_upload(
        _repos(ctx), p.object_store, ctx.client_id, ctx.body, upload_policy(p.settings), p.clock()
    )


@api.get("/uploads/<upload_id>")
def get_upload(ctx: RequestContext[NoBody, NoQuery]) -> UploadOut:
    return uploads.upload_out(uploads.get_upload(_repos(ctx).uploads, ctx.client_id, ctx.path_params["upload_id"]))


@api.post(
    "/uploads/<upload_id>/complete",
    errors=(UploadNotReceived, UploadExpired, UploadRejected, Conflict, *IMAGE_ERRORS, *CSV_ERRORS, *XLSX_ERRORS),
)
def complete_upload(ctx: RequestContext[NoBody, NoQuery]) -> UploadOut:
    p = ctx.platform
    return uploads.complete_upload(
        _repos(ctx), p.object_store, ctx.client_id, ctx.path_params["upload_id"], upload_policy(p.settings), p.clock()
    )


# -- CSV imports ----------------------------------------------------------------------------------


def _pricing(ctx: RequestContext[BodyT, QueryT]) -> Callable[[], GenerationPricing]:
    """Generation's styles and prices, for an import that generates (loaded only when it does)."""

    def pricing() -> GenerationPricing:
        from shared.generation.import_jobs import generation_pricing

        return generation_pricing(ctx.platform.price_book.current())

    return pricing


@api.post(
    "/imports",
    body=ImportCreate,
    status=201,
    idempotent=True,
    errors=(NotFound, Conflict, CsvPreviewTooLarge, *CSV_ERRORS, *XLSX_ERRORS),
)
def create_import(ctx: RequestContext[ImportCreate, NoQuery]) -> ImportOut:
    p = ctx.platform
    doc = imports.create_import(
        _repos(ctx),
        p.object_store,
        ctx.client_id,
        ctx.body,
        import_policy(p.settings),
        p.clock(),
        pricing=_pricing(ctx),
    )
    return imports.import_out(doc)


@api.get("/imports/<import_id>")
def get_import(ctx: RequestContext[NoBody, NoQuery]) -> ImportOut:
    return imports.import_out(imports.get_import(_repos(ctx).imports, ctx.client_id, ctx.path_params["import_id"]))


@api.patch(
    "/imports/<import_id>",
    body=ImportUpdate,
    errors=(ImportNotEditable, CsvPreviewTooLarge, *CSV_ERRORS, *XLSX_ERRORS),
)
def update_import(ctx: RequestContext[ImportUpdate, NoQuery]) -> ImportOut:
    p = ctx.platform
    doc = imports.update_import(
        _repos(ctx),
        p.object_store,
        ctx.client_id,
        ctx.path_params["import_id"],
        ctx.body,
        import_policy(p.settings),
        p.clock(),
        pricing=_pricing(ctx),
    )
    return imports.import_out(doc)


@api.post("/imports/<import_id>/start", status=202, errors=(ImportNotEditable, Conflict, *CSV_ERRORS, *XLSX_ERRORS))
def start_import(ctx: RequestContext[NoBody, NoQuery]) -> ImportOut:
    p = ctx.platform
    doc = imports.start_import(
        _repos(ctx),
        p.object_store,
        p.task_queue,
        ctx.client_id,
        ctx.path_params["import_id"],
        import_policy(p.settings),
        p.clock(),
    )
    return imports.import_out(doc)


@api.post(
    "/imports/<import_id>/generate",
    status=202,
    idempotent=True,
    errors=(
        ImportNotEditable,
        Conflict,
        GenerationCostChanged,
        NothingToGenerate,
        TooManyGenerationRows,
        InsufficientCredits,
        PaymentPastDue,
        *CSV_ERRORS,
        *XLSX_ERRORS,
    ),
)
def generate_import(ctx: RequestContext[NoBody, NoQuery]) -> ImportOut:
    """Start the import and, once its rows are imported, one generation job for the rows that generate:
    its cost (the preview's) is reserved now, or 402 and nothing starts."""
    from shared.billing.policies import billing_store
    from shared.generation.import_jobs import catalog_services, generation_start

    p = ctx.platform
    assert ctx.principal is not None
    start = generation_start(
        catalog_services(p),
        p.price_book.current(),
        billing_store(p),
        client_id=ctx.client_id,
        user_id=ctx.principal.user_id,
    )
    doc = imports.start_import(
        _repos(ctx),
        p.object_store,
        p.task_queue,
        ctx.client_id,
        ctx.path_params["import_id"],
        import_policy(p.settings),
        p.clock(),
        generation=start,
    )
    return imports.import_out(doc)


@api.get("/imports/<import_id>/errors.csv", produces="text/csv")
def import_errors(ctx: RequestContext[NoBody, NoQuery]) -> flask.Response:
    """The import's problems, and its generation job's failed images, by row."""
    from flask import Response

    def generation_rows(doc: ImportDoc) -> list[dict[str, Any]]:
        if not doc.generation_job:
            return []
        from shared.generation.import_jobs import catalog_services, report_rows

        return report_rows(catalog_services(ctx.platform), doc)

    report = imports.error_report_csv(_repos(ctx).imports, ctx.client_id, ctx.path_params["import_id"], generation_rows)
    filename = f"{ctx.path_params['import_id']}-errors.csv"
    return Response(
        report,
        content_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


# -- asset library --------------------------------------------------------------------------------


@api.get("/assets", query=AssetListQuery)
def list_assets(ctx: RequestContext[NoBody, AssetListQuery]) -> Page[AssetOut]:
    p = ctx.platform
    page = library.list_assets(_repos(ctx).assets, ctx.client_id, ctx.query)
    items = [library.asset_out(doc, p.object_store, _expiry(ctx)) for doc in page.items]
    return Page[AssetOut](items=items, next_cursor=page.next_cursor)


@api.post("/assets/bulk", body=AssetBulkRequest)
def bulk_assets(ctx: RequestContext[AssetBulkRequest, NoQuery]) -> AssetBulkOut:
    p = ctx.platform
    return bulk.bulk_assets(_repos(ctx).assets, p.object_store, ctx.client_id, ctx.body, p.clock())


@api.get("/assets/<asset_id>")
def get_asset(ctx: RequestContext[NoBody, NoQuery]) -> AssetDetailOut:
    p = ctx.platform
    return library.asset_detail(
        _repos(ctx).assets, p.object_store, ctx.client_id, ctx.path_params["asset_id"], _expiry(ctx)
    )


@api.patch("/assets/<asset_id>", body=AssetUpdate, errors=(Conflict,))
def update_asset(ctx: RequestContext[AssetUpdate, NoQuery]) -> AssetOut:
    p = ctx.platform
    doc = library.update_asset(_repos(ctx).assets, ctx.client_id, ctx.path_params["asset_id"], ctx.body, p.clock())
    return library.asset_out(doc, p.object_store, _expiry(ctx))


@api.delete("/assets/<asset_id>", status=204, errors=(Conflict,))
def delete_asset(ctx: RequestContext[NoBody, NoQuery]) -> None:
    p = ctx.platform
    library.delete_asset(_repos(ctx).assets, p.object_store, ctx.client_id, ctx.path_params["asset_id"])


# -- ZIP exports ----------------------------------------------------------------------------------


@api.post("/exports", body=ExportCreate, status=202, errors=(NotFound, JobStillRunning))
def create_export(ctx: RequestContext[ExportCreate, NoQuery]) -> ExportOut:
    return exports.request_export(exports.export_services(ctx.platform), ctx.client_id, ctx.body)


@api.get("/exports/<export_id>", errors=(exports.ExportNotFound,))
def get_export(ctx: RequestContext[NoBody, NoQuery]) -> ExportOut:
    p = ctx.platform
    doc = exports.get_export(p.exports, ctx.client_id, ctx.path_params["export_id"])
    return exports.export_out(doc, p.object_store, p.settings.export_link_seconds, p.clock())


# -- workers --------------------------------------------------------------------------------------


@tasks.post(imports.CHUNK_PATH, body=ImportChunkTask, access=Access.TASK)
def import_chunk(ctx: RequestContext[ImportChunkTask, NoQuery]) -> TaskOutcome:
    p = ctx.platform
    assert ctx.task is not None
    outcome = imports.run_import_chunk(
        _repos(ctx), p.object_store, p.task_queue, p.fetcher, ctx.body, ctx.task, import_policy(p.settings), p.clock()
    )
    return TaskOutcome(outcome=outcome)


@tasks.post(exports.BUILD_PATH, body=ExportTask, access=Access.TASK)
def build_export(ctx: RequestContext[ExportTask, NoQuery]) -> TaskOutcome:
    assert ctx.task is not None
    return TaskOutcome(outcome=exports.build_export(exports.export_services(ctx.platform), ctx.body, ctx.task))


@tasks.post("/jobs/reap-stuck-imports", access=Access.SCHEDULER)
def reap_stuck_imports(ctx: RequestContext[NoBody, NoQuery]) -> imports.ImportReapReport:
    p = ctx.platform
    report = imports.reap_stuck_imports(_repos(ctx), p.object_store, p.task_queue, import_policy(p.settings), p.clock())
    return finish(report, imports.REAP_JOB)


@tasks.post("/jobs/sweep-uploads", access=Access.SCHEDULER)
def sweep_uploads(ctx: RequestContext[NoBody, NoQuery]) -> uploads.UploadSweepReport:
    p = ctx.platform
    return finish(uploads.sweep_uploads(_repos(ctx).uploads, p.object_store, p.clock()), uploads.SWEEP_JOB)


@tasks.post("/jobs/recount-product-usage", access=Access.SCHEDULER)
def recount_product_usage(ctx: RequestContext[NoBody, NoQuery]) -> products.UsageRecountReport:
    p = ctx.platform
    return finish(products.recount_every_client(_repos(ctx).products, p.clock()), products.RECOUNT_JOB)


@functions_framework.http
def catalog_api(request: flask.Request) -> flask.Response:
    return api.handle(request)


@functions_framework.http
def catalog_tasks(request: flask.Request) -> flask.Response:
    return tasks.handle(request)
