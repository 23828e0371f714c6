"""Generate function: AI product images, single and batch, on Cloud Tasks.

Entry points: ``generate_api`` (jobs, prompt enhancement, brand profile, presets, defaults) and
``generate_tasks`` (Cloud Tasks workers: fan-out, one item, settle).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import functions_framework

from shared.batch import lifecycle
from shared.batch.models import ItemListQuery, JobListQuery
from shared.batch.routes import accepted, add_worker_routes, request_key
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
    PresetOut,
    PresetUpdate,
)
from shared.http.app import HttpApp, JsonResponse, RequestContext
from shared.pagination import Page

if TYPE_CHECKING:
    import flask

api = HttpApp("generate_api")
tasks = HttpApp("generate_tasks")

Ctx = RequestContext[Any, Any]


def _create(ctx: Ctx, data: JobCreate, retry_of: str | None = None) -> JsonResponse:
    p = ctx.platform
    assert ctx.principal is not None
    from shared.billing.catalog import load_catalog
    from shared.billing.service import require_good_standing

    require_good_standing(p.db, load_catalog(), ctx.client_id, p.clock())
    base = prompts.get_preset(p.db, ctx.client_id, data.preset_id).settings if data.preset_id else GenerationSettings()
    job = jobs.create_job(
        GENERATION.dependencies(p),
        p.price_book.current(),
        client_id=ctx.client_id,
        user_id=ctx.principal.user_id,
        data=data,
        base=base,
        request_key=request_key(ctx),
        retry_of=retry_of,
    )
    return accepted(jobs.job_out(p.db, job), f"/jobs/{job.id}")


@api.post("/jobs", body=JobCreate, status=202, idempotent=True)
def create_job(ctx: Ctx) -> JsonResponse:
    return _create(ctx, ctx.body)


@api.get("/jobs", query=JobListQuery)
def list_jobs(ctx: Ctx) -> Page[JobOut]:
    db = ctx.platform.db
    page = lifecycle.list_jobs(GENERATION, db, ctx.client_id, ctx.query)
    return Page[JobOut](items=[jobs.job_out(db, job) for job in page.items], next_cursor=page.next_cursor)


@api.get("/jobs/<job_id>")
def get_job(ctx: Ctx) -> JobOut:
    db = ctx.platform.db
    return jobs.job_out(db, GENERATION.get_job(db, ctx.client_id, ctx.path_params["job_id"]))


@api.get("/jobs/<job_id>/items", query=ItemListQuery)
def list_items(ctx: Ctx) -> Page[ItemOut]:
    return jobs.list_items(ctx.platform.db, ctx.client_id, ctx.path_params["job_id"], ctx.query)


@api.post("/jobs/<job_id>/cancel", status=202)
def cancel_job(ctx: Ctx) -> JobOut:
    p = ctx.platform
    job = lifecycle.cancel_job(GENERATION, p.db, p.task_queue, ctx.client_id, ctx.path_params["job_id"], p.clock())
    return jobs.job_out(p.db, job)


@api.post("/jobs/<job_id>/retry", status=202, idempotent=True)
def retry_job(ctx: Ctx) -> JsonResponse:
    p = ctx.platform
    old = GENERATION.get_job(p.db, ctx.client_id, ctx.path_params["job_id"])
    failed = jobs.failed_items(p.db, ctx.client_id, old.id)
    if not failed:
        from shared.errors import Conflict

        raise Conflict("The job has no failed items to retry")
    data = JobCreate(
        items=[JobItemIn(product_id=i.product_id, image_asset_ids=i.image_asset_ids, prompt=i.prompt) for i in failed],
        **old.settings.model_dump(),
    )
    return _create(ctx, data, retry_of=old.id)


@api.post("/prompts/enhance", body=EnhanceRequest)
def enhance_prompt(ctx: Ctx) -> EnhanceOut:
    p = ctx.platform
    return prompts.enhance(p.db, p.engine, ctx.client_id, ctx.body)


@api.get("/brand")
def get_brand(ctx: Ctx) -> BrandProfile:
    return prompts.get_brand(ctx.platform.db, ctx.client_id)


@api.put("/brand", body=BrandProfile)
def put_brand(ctx: Ctx) -> BrandProfile:
    return prompts.put_brand(ctx.platform.db, ctx.client_id, ctx.body)


@api.get("/presets")
def list_presets(ctx: Ctx) -> dict[str, list[dict[str, Any]]]:
    # Dumped here: a plain dict is serialised with json.dumps(default=str), which would turn models into reprs.
    return {"items": [p.model_dump(mode="json") for p in prompts.list_presets(ctx.platform.db, ctx.client_id)]}


@api.post("/presets", body=PresetIn, status=201)
def create_preset(ctx: Ctx) -> PresetOut:
    p = ctx.platform
    return prompts.create_preset(p.db, ctx.client_id, ctx.body, p.clock())


@api.get("/presets/<preset_id>")
def get_preset(ctx: Ctx) -> PresetOut:
    return prompts.get_preset(ctx.platform.db, ctx.client_id, ctx.path_params["preset_id"])


@api.patch("/presets/<preset_id>", body=PresetUpdate)
def update_preset(ctx: Ctx) -> PresetOut:
    p = ctx.platform
    return prompts.update_preset(p.db, ctx.client_id, ctx.path_params["preset_id"], ctx.body, p.clock())


@api.delete("/presets/<preset_id>", status=204)
def delete_preset(ctx: Ctx) -> None:
    prompts.delete_preset(ctx.platform.db, ctx.client_id, ctx.path_params["preset_id"])


@api.get("/defaults", query=DefaultsQuery)
def get_defaults(ctx: Ctx) -> DefaultsOut:
    return prompts.defaults(ctx.platform.db, ctx.client_id, ctx.query.product_id, ctx.query.category)


# -- workers ----------------------------------------------------------------------------------------

add_worker_routes(tasks, GENERATION)


@functions_framework.http
def generate_api(request: flask.Request) -> flask.Response:
    return api.handle(request)


@functions_framework.http
def generate_tasks(request: flask.Request) -> flask.Response:
    return tasks.handle(request)
