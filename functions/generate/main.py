"""Generate function: AI product images, single and batch, on Cloud Tasks.

Entry points: ``generate_api`` (jobs, prompt enhancement, brand profile, presets, defaults) and
``generate_tasks`` (Cloud Tasks workers: fan-out, one item, settle).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import functions_framework

from shared.batch import lifecycle
from shared.batch.models import ItemListQuery, JobListQuery
from shared.billing.service import PaymentPastDue
from shared.catalog.imports import GENERATION_PATH
from shared.catalog.models import ImportGenerationTask
from shared.engines.base import ENGINE_ERRORS
from shared.errors import Conflict, InsufficientCredits, NotFound, UpstreamRejectedCredentials
from shared.generation import jobs, prompts
from shared.generation.jobs import GENERATION
from shared.generation.models import (
    BrandProfile,
    DefaultsOut,
    DefaultsQuery,
    EnhanceOut,
    EnhanceRequest,
    GenerationSettings,
    ItemOut,
    JobCreate,
    JobItemIn,
    JobOut,
    PresetIn,
    PresetList,
    PresetOut,
    PresetUpdate,
)
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
from shared.http.batch_routes import accepted, add_worker_routes, request_key
from shared.needs import Need
from shared.pagination import Page
from shared.tasks import TaskOutcome

if TYPE_CHECKING:
    import flask

    from shared.generation.store import GenerationSettingsStore, ProductLookup
    from shared.platform import Platform

# Creating a job (or retrying one): its products, assets or preset may be missing; it holds credits.
JOB_ERRORS = (NotFound, InsufficientCredits, PaymentPastDue, Conflict)

api = HttpApp("generate_api", needs=(Need.R2, Need.TASK_QUEUE, Need.GEMINI))
tasks = HttpApp("generate_tasks", needs=(Need.R2, Need.TASK_QUEUE, Need.GEMINI))
answer_framework_errors_as_problems(api, tasks)  # a path the framework cannot route: a problem, not HTML


def _settings(p: Platform) -> GenerationSettingsStore:
    return p.generation_settings


def _products(p: Platform) -> ProductLookup:
    return p.catalog.products


def _create(ctx: RequestContext[BodyT, QueryT], data: JobCreate, retry_of: str | None = None) -> JsonResponse[JobOut]:
    p = ctx.platform
    assert ctx.principal is not None
    from shared.billing.policies import billing_store

    base = (
        prompts.get_preset(_settings(p), ctx.client_id, data.preset_id).settings
        if data.preset_id
        else GenerationSettings()
    )
    job = jobs.create_job(
        GENERATION.dependencies(p),
        p.price_book.current(),
        client_id=ctx.client_id,
        user_id=ctx.principal.user_id,
        data=data,
        base=base,
        request_key=request_key(ctx),
        retry_of=retry_of,
        billing=billing_store(p),
    )
    return accepted(jobs.job_out(GENERATION.store(p), job), f"/jobs/{job.id}")


@api.post("/jobs", body=JobCreate, status=202, idempotent=True, errors=JOB_ERRORS)
def create_job(ctx: RequestContext[JobCreate, NoQuery]) -> JsonResponse[JobOut]:
    return _create(ctx, ctx.body)


@api.get("/jobs", query=JobListQuery)
def list_jobs(ctx: RequestContext[NoBody, JobListQuery]) -> Page[JobOut]:
    store = GENERATION.store(ctx.platform)
    page = lifecycle.list_jobs(store, ctx.client_id, ctx.query)
    return Page[JobOut](items=[jobs.job_out(store, job) for job in page.items], next_cursor=page.next_cursor)


@api.get("/jobs/<job_id>")
def get_job(ctx: RequestContext[NoBody, NoQuery]) -> JobOut:
    store = GENERATION.store(ctx.platform)
    return jobs.job_out(store, store.get_job(ctx.client_id, ctx.path_params["job_id"]))


@api.get("/jobs/<job_id>/items", query=ItemListQuery)
def list_items(ctx: RequestContext[NoBody, ItemListQuery]) -> Page[ItemOut]:
    return jobs.list_items(GENERATION.store(ctx.platform), ctx.client_id, ctx.path_params["job_id"], ctx.query)


@api.post("/jobs/<job_id>/cancel", status=202)
def cancel_job(ctx: RequestContext[NoBody, NoQuery]) -> JobOut:
    p = ctx.platform
    store = GENERATION.store(p)
    job = lifecycle.cancel_job(GENERATION, store, p.task_queue, ctx.client_id, ctx.path_params["job_id"], p.clock())
    return jobs.job_out(store, job)


@api.post("/jobs/<job_id>/retry", status=202, idempotent=True, errors=JOB_ERRORS)
def retry_job(ctx: RequestContext[NoBody, NoQuery]) -> JsonResponse[JobOut]:
    p = ctx.platform
    store = GENERATION.store(p)
    old = store.get_job(ctx.client_id, ctx.path_params["job_id"])
    failed = jobs.failed_items(store, ctx.client_id, old.id)
    if not failed:
        from shared.errors import Conflict

        raise Conflict("The job has no failed items to retry")
    data = JobCreate(
        items=[
            JobItemIn(
                product_id=i.product_id,
                image_asset_ids=i.image_asset_ids,
                prompt=i.prompt,
                style=i.style,
                negative_prompt=i.negative_prompt,
                aspect_ratio=i.aspect_ratio,  # type: ignore[arg-type]  # as the item was accepted
                size=i.size,  # type: ignore[arg-type]
                variants=i.variants,
            )
            for i in failed
        ],
        **old.settings.model_dump(),
    )
    return _create(ctx, data, retry_of=old.id)


@api.post("/prompts/enhance", body=EnhanceRequest, errors=(NotFound, UpstreamRejectedCredentials, *ENGINE_ERRORS))
def enhance_prompt(ctx: RequestContext[EnhanceRequest, NoQuery]) -> EnhanceOut:
    p = ctx.platform
    return prompts.enhance(_settings(p), _products(p), p.engine, ctx.client_id, ctx.body)


@api.get("/brand")
def get_brand(ctx: RequestContext[NoBody, NoQuery]) -> BrandProfile:
    return prompts.get_brand(_settings(ctx.platform), ctx.client_id)


@api.put("/brand", body=BrandProfile)
def put_brand(ctx: RequestContext[BrandProfile, NoQuery]) -> BrandProfile:
    return prompts.put_brand(_settings(ctx.platform), ctx.client_id, ctx.body)


@api.get("/presets")
def list_presets(ctx: RequestContext[NoBody, NoQuery]) -> PresetList:
    return PresetList(items=prompts.list_presets(_settings(ctx.platform), ctx.client_id))


@api.post("/presets", body=PresetIn, status=201)
def create_preset(ctx: RequestContext[PresetIn, NoQuery]) -> PresetOut:
    p = ctx.platform
    return prompts.create_preset(_settings(p), ctx.client_id, ctx.body, p.clock())


@api.get("/presets/<preset_id>")
def get_preset(ctx: RequestContext[NoBody, NoQuery]) -> PresetOut:
    return prompts.get_preset(_settings(ctx.platform), ctx.client_id, ctx.path_params["preset_id"])


@api.patch("/presets/<preset_id>", body=PresetUpdate)
def update_preset(ctx: RequestContext[PresetUpdate, NoQuery]) -> PresetOut:
    p = ctx.platform
    return prompts.update_preset(_settings(p), ctx.client_id, ctx.path_params["preset_id"], ctx.body, p.clock())


@api.delete("/presets/<preset_id>", status=204)
def delete_preset(ctx: RequestContext[NoBody, NoQuery]) -> None:
    prompts.delete_preset(_settings(ctx.platform), ctx.client_id, ctx.path_params["preset_id"])


@api.get("/defaults", query=DefaultsQuery, errors=(NotFound,))
def get_defaults(ctx: RequestContext[NoBody, DefaultsQuery]) -> DefaultsOut:
    p = ctx.platform
    return prompts.defaults(_settings(p), _products(p), ctx.client_id, ctx.query.product_id, ctx.query.category)


# -- workers ----------------------------------------------------------------------------------------

add_worker_routes(tasks, GENERATION)


@tasks.post(GENERATION_PATH, body=ImportGenerationTask, access=Access.TASK)
def import_generation(ctx: RequestContext[ImportGenerationTask, NoQuery]) -> TaskOutcome:
    """A finished spreadsheet import's generating rows: their one job (shared.generation.import_jobs)."""
    from shared.generation.import_jobs import run_import_generation

    p = ctx.platform
    return TaskOutcome(outcome=run_import_generation(GENERATION.dependencies(p), ctx.body, p.clock()))


@functions_framework.http
def generate_api(request: flask.Request) -> flask.Response:
    return api.handle(request)


@functions_framework.http
def generate_tasks(request: flask.Request) -> flask.Response:
    return tasks.handle(request)
