"""Video function: product videos made with Veo (image-to-video from a product's photo), voiced over with
Gemini TTS, delivered in 9:16, 1:1 and 16:9; scripts to review before the paid generation; video edits;
merchants' own videos uploaded (checked and stored by the worker) to edit like the others.

Entry points: ``video_api`` (the frontend's API) and ``video_tasks`` (Cloud Tasks: the video jobs' fan-out,
items and settlement; Cloud Scheduler: the reaper). Both are deployed from this folder; only the
worker's item steps load PyAV and numpy (``shared.video.media``), never the API's routes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import functions_framework

from shared.batch import lifecycle
from shared.batch.models import ItemListQuery, JobListQuery
from shared.billing.service import PaymentPastDue
from shared.catalog.models import UploadOut
from shared.catalog.uploads import TooManyPendingUploads, UploadExpired, UploadNotReceived, upload_out
from shared.engines.base import ENGINE_ERRORS
from shared.errors import InsufficientCredits, NotFound, UpstreamRejectedCredentials
from shared.generation.models import EnhanceOut
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
from shared.tasks import TaskOutcome
from shared.video.media import VideoRangeInvalid
from shared.videos import jobs, scripts
from shared.videos import uploads as video_uploads
from shared.videos.jobs import VIDEOS, AssetNotAVideo, FrameNotAnImage
from shared.videos.models import (
    ScriptOut,
    ScriptRequest,
    VideoEditRequest,
    VideoEnhanceRequest,
    VideoItemOut,
    VideoJobCreate,
    VideoJobOut,
    VideoStyleList,
    VideoStyleOut,
)
from shared.videos.styles import styles
from shared.videos.uploads import VideoUploadCreate, VideoUploadTask

if TYPE_CHECKING:
    import flask

api = HttpApp("video_api", needs=(Need.R2, Need.TASK_QUEUE, Need.GEMINI))
tasks = HttpApp("video_tasks", needs=(Need.R2, Need.TASK_QUEUE, Need.GEMINI))
answer_framework_errors_as_problems(api, tasks)  # a path the framework cannot route: a problem, not HTML

# Accepting paid work: a product or asset that is not the client's, a frame that is no image, no credits.
JOB_ERRORS = (NotFound, FrameNotAnImage, InsufficientCredits, PaymentPastDue)
TEXT_ERRORS = (NotFound, UpstreamRejectedCredentials, *ENGINE_ERRORS)


@api.post("/videos/jobs", body=VideoJobCreate, status=202, idempotent=True, errors=JOB_ERRORS)
def create_job(ctx: RequestContext[VideoJobCreate, NoQuery]) -> JsonResponse[VideoJobOut]:
    """Make a video of each item (a product, or a prompt): the whole cost is reserved at once, failed
    videos are refunded. Settings not given come from the style."""
    from shared.billing.policies import billing_store

    p = ctx.platform
    assert ctx.principal is not None
    services = VIDEOS.dependencies(p)
    job = jobs.create_job(
        services,
        p.price_book.current(),
        client_id=ctx.client_id,
        user_id=ctx.principal.user_id,
        data=ctx.body,
        request_key=request_key(ctx),
        billing=billing_store(p),
    )
    return accepted(jobs.job_out(services.jobs, job), f"/videos/jobs/{job.id}")


@api.get("/videos/jobs", query=JobListQuery)
def list_jobs(ctx: RequestContext[NoBody, JobListQuery]) -> Page[VideoJobOut]:
    store = VIDEOS.store(ctx.platform)
    page = lifecycle.list_jobs(store, ctx.client_id, ctx.query)
    return Page[VideoJobOut](items=[jobs.job_out(store, job) for job in page.items], next_cursor=page.next_cursor)


@api.get("/videos/jobs/<job_id>", errors=(NotFound,))
def get_job(ctx: RequestContext[NoBody, NoQuery]) -> VideoJobOut:
    store = VIDEOS.store(ctx.platform)
    return jobs.job_out(store, store.get_job(ctx.client_id, ctx.path_params["job_id"]))


@api.get("/videos/jobs/<job_id>/items", query=ItemListQuery, errors=(NotFound,))
def list_items(ctx: RequestContext[NoBody, ItemListQuery]) -> Page[VideoItemOut]:
    """Each video with what it delivered: the assets, their download and poster URLs."""
    p = ctx.platform
    return jobs.list_items(
        VIDEOS.store(p),
        p.catalog,
        p.object_store,
        ctx.client_id,
        ctx.path_params["job_id"],
        ctx.query,
        p.settings.presign_expiry_seconds,
    )


@api.post("/videos/jobs/<job_id>/cancel", status=202, errors=(NotFound,))
def cancel_job(ctx: RequestContext[NoBody, NoQuery]) -> VideoJobOut:
    """Videos not started, or waiting for the model, are cancelled and refunded; running deliveries finish."""
    p = ctx.platform
    store = VIDEOS.store(p)
    job = lifecycle.cancel_job(VIDEOS, store, p.task_queue, ctx.client_id, ctx.path_params["job_id"], p.clock())
    return jobs.job_out(store, job)


@api.post("/videos/scripts", body=ScriptRequest, errors=TEXT_ERRORS)
def write_script(ctx: RequestContext[ScriptRequest, NoQuery]) -> ScriptOut:
    """A voiceover script from the product's data and selling points, to review and edit before the paid
    generation (send it back as ``script``). Free; nothing is stored."""
    p = ctx.platform
    return scripts.script(p.engine, p.catalog.products, ctx.client_id, ctx.body)


@api.post("/videos/prompts/enhance", body=VideoEnhanceRequest, errors=TEXT_ERRORS)
def enhance_prompt(ctx: RequestContext[VideoEnhanceRequest, NoQuery]) -> EnhanceOut:
    """A short idea expanded into a detailed video prompt, with the product and the brand profile."""
    p = ctx.platform
    return scripts.enhance(p.generation_settings, p.catalog.products, p.engine, ctx.client_id, ctx.body)


@api.get("/videos/styles")
def list_styles(ctx: RequestContext[NoBody, NoQuery]) -> VideoStyleList:
    """The nine video styles with their defaults."""
    return VideoStyleList(
        items=[
            VideoStyleOut.model_validate(style.model_dump(exclude={"shots", "negative_prompt", "script_tone"}))
            for style in styles().values()
        ]
    )


@api.post(
    "/videos/assets/<asset_id>/edits",
    body=VideoEditRequest,
    status=202,
    idempotent=True,
    errors=(NotFound, AssetNotAVideo, VideoRangeInvalid, InsufficientCredits, PaymentPastDue),
)
def edit_video(ctx: RequestContext[VideoEditRequest, NoQuery]) -> JsonResponse[VideoJobOut]:
    """Trim, reframe (crop or pad to 1:1, 4:5, 9:16, 16:9), mute or voice over, or choose the poster frame:
    a job whose result is a NEW revision of the video asset (its history stays)."""
    from shared.billing.policies import billing_store

    p = ctx.platform
    assert ctx.principal is not None
    services = VIDEOS.dependencies(p)
    job = jobs.create_edit(
        services,
        p.price_book.current(),
        client_id=ctx.client_id,
        user_id=ctx.principal.user_id,
        asset_id=ctx.path_params["asset_id"],
        edit=ctx.body,
        request_key=request_key(ctx),
        billing=billing_store(p),
    )
    return accepted(jobs.job_out(services.jobs, job), f"/videos/jobs/{job.id}")


# -- uploads ----------------------------------------------------------------------------------------


@api.post(
    "/videos/uploads", body=VideoUploadCreate, status=201, idempotent=True, errors=(NotFound, TooManyPendingUploads)
)
def create_upload(ctx: RequestContext[VideoUploadCreate, NoQuery]) -> UploadOut:
    """A slot for a video of the merchant's own (MP4, MOV or WebM, at most VIDEO_UPLOAD_MAX_BYTES; 413
    above), optionally of one of their products: PUT the file to ``upload.url`` with ``upload.headers``,
    then complete it."""
    p = ctx.platform
    policy = video_uploads.video_upload_policy(p.settings)
    return video_uploads.create_video_upload(p.catalog, p.object_store, ctx.client_id, ctx.body, policy, p.clock())


@api.get("/videos/uploads/<upload_id>", errors=(NotFound,))
def get_upload(ctx: RequestContext[NoBody, NoQuery]) -> UploadOut:
    """``pending``, ``processing``, ``completed`` (``asset_id``: the video asset) or ``rejected``
    (``rejection``: the problem the file is, e.g. ``video_codec_not_allowed``)."""
    doc = video_uploads.get_video_upload(ctx.platform.catalog.uploads, ctx.client_id, ctx.path_params["upload_id"])
    return upload_out(doc)


@api.post("/videos/uploads/<upload_id>/complete", status=202, errors=(NotFound, UploadNotReceived, UploadExpired))
def complete_upload(ctx: RequestContext[NoBody, NoQuery]) -> UploadOut:
    """The file was PUT: the video worker checks it (``processing``) and stores it as a video asset, or
    rejects it; poll ``GET /videos/uploads/{id}``. Free."""
    p = ctx.platform
    upload_id = ctx.path_params["upload_id"]
    return video_uploads.complete_video_upload(
        p.catalog, p.object_store, p.task_queue, ctx.client_id, upload_id, p.clock()
    )


# -- workers ----------------------------------------------------------------------------------------

add_worker_routes(tasks, VIDEOS)


@tasks.post(video_uploads.TASK_PATH, body=VideoUploadTask, access=Access.TASK)
def process_upload(ctx: RequestContext[VideoUploadTask, NoQuery]) -> TaskOutcome:
    """Probe an uploaded video: a video asset, or the upload rejected with the problem the file is."""
    p = ctx.platform
    assert ctx.task is not None
    policy = video_uploads.video_upload_policy(p.settings)
    last_attempt = ctx.task.retry_count + 1 >= p.settings.tasks_max_attempts
    outcome = video_uploads.process_video_upload(
        p.catalog, p.object_store, ctx.body, policy, p.clock(), last_attempt=last_attempt
    )
    return TaskOutcome(outcome=outcome)


@functions_framework.http
def video_api(request: flask.Request) -> flask.Response:
    return api.handle(request)


@functions_framework.http
def video_tasks(request: flask.Request) -> flask.Response:
    return tasks.handle(request)
