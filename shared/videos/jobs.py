"""Video jobs on the batch engine: product videos made with Veo, and edits of video assets.

A **generate** job has one item per product or prompt, all with the job's settings; its cost (each
item's clips at the price list's per-clip prices, plus the voiceover) is reserved as one hold. An item
is one video of ``duration_seconds``, made of 4/6/8 s clips (:mod:`shared.videos.plan`):

1. Its first delivery builds the prompt (the style's template about the product, optionally expanded
   with the brand profile) and the voiceover script, starts every clip's operation
   (:meth:`VideoEngine.start`: image-to-video from the product's image, or a prompt guided by up to three
   reference images of the product: those clips are 8 s each) and raises
   :class:`~shared.batch.kind.ContinueLater`: the operations go into the item, and the item is
   delivered again after :func:`~shared.engines.video.poll_delay_seconds`. No worker waits for Veo.
2. Each later delivery polls the clips still pending; a finished clip is copied at once to the object
   store (``video-clips/…``, where the next delivery finds it); while any is pending, continue later.
   A restartable failure starts the clip again (twice at most); filtered or failed output fails the
   item with the model's reason (refunded); a clip pending for ``MAX_OPERATION_MINUTES`` fails it too.
3. The delivery that finds every clip ready joins them, cuts the result to length, gives it its sound
   (the model's, a Gemini TTS voiceover, or none), reframes it into each deliverable (9:16, 1:1, 16:9)
   and stores one video asset per deliverable (poster frame, thumbnail, the probed facts), under ids
   derived from job, item and deliverable: a redelivery stores nothing twice.

Transient engine failures go back to the queue (after saving any progress). The settlement charges the
succeeded items and releases the rest.

An **edit** job has one item: a video asset; its work applies the edit (trim, reframe, mute or voice over,
poster frame) to the current revision and commits a NEW revision together with the item's success.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.batch import lifecycle
from shared.batch.kind import (
    BatchPolicy,
    ContinueLater,
    Finish,
    Finished,
    ItemRun,
    ItemTakenOver,
    JobKind,
    JobOrder,
    JobServices,
    RequestKey,
    Totals,
    failure_of,
)
from shared.batch.models import ItemListQuery, ItemStatus
from shared.catalog.assets import NewAsset, commit_revision, create_asset, delete_objects, write_objects, write_poster
from shared.catalog.models import AssetDoc, AssetKind, AssetOrigin, AssetRevision, MediaKind
from shared.catalog.ports import ItemTaken, RevisionConflict
from shared.engines.base import EnginePermanentError, EngineRetryableError, InputImage
from shared.engines.video import (
    MAX_OPERATION_MINUTES,
    VideoOperation,
    VideoRequest,
    poll_delay_seconds,
)
from shared.errors import EpoxError, NotFound, UnprocessableContent, ValidationFailed
from shared.events.model import EventType
from shared.pagination import Page
from shared.retry import RetryPolicy, attempts
from shared.tasks import RetryTask
from shared.video.media import VideoRangeInvalid
from shared.videos import scripts
from shared.videos.models import (
    ClipState,
    VideoEditRequest,
    VideoItemDoc,
    VideoItemIn,
    VideoItemOut,
    VideoJobCreate,
    VideoJobDoc,
    VideoJobOut,
    VideoResultOut,
    VideoSettings,
    deliverable_asset_id,
    model_sound,
    voiced,
)
from shared.videos.plan import clip_prices, item_costs, plan_clips
from shared.videos.styles import VideoStyle, get_style

if TYPE_CHECKING:
    from shared.batch.store import JobStore
    from shared.billing.store import BillingReader
    from shared.catalog.models import ProductDoc
    from shared.catalog.ports import CatalogRepositories
    from shared.config import Settings
    from shared.engines.base import ImageEngine
    from shared.engines.video import SpeechEngine, VideoEngine
    from shared.generation.store import GenerationSettingsStore
    from shared.ledger.pricing import PriceList
    from shared.platform import Platform
    from shared.storage import ObjectStore

logger = logging.getLogger("epox.video")

REFERENCE_CLIP_SECONDS = 8  # Veo makes clips guided by reference images 8 s long, never 4 or 6
MAX_RESTARTS = 2  # new operations for a clip whose operation failed in a way a new one may not
MAX_PROMPT_CHARS = 3600  # Veo takes 4,000; the shot's words are added per clip
FRAME_SIDE = 1920  # first and last frames are sent at most this large (Veo renders at most 1080p)
CLIP_PREFIX = "video-clips/"  # the raw clips as the model gave them (an R2 lifecycle rule expires them)
# A lost race with another edit of the same asset is recomputed on top of it, a few times.
RECOMPUTE = RetryPolicy(attempts=3, base=0.05, cap=0.5, deadline=600.0)


class VideoTimedOut(EpoxError):
    """A clip's operation was still running after MAX_OPERATION_MINUTES: the item is given up (refunded)."""

    status = 504
    code = "video_timed_out"
    title = "The video model did not finish in time"


class AssetNotAVideo(UnprocessableContent):
    code = "asset_not_a_video"
    title = "Only video assets can be edited as videos"


class FrameNotAnImage(UnprocessableContent):
    code = "video_frame_not_an_image"
    title = "A first or last frame, or a reference image, must be an image asset"


# -- policy and services ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoPolicy:
    max_seconds: int
    max_items: int
    hold_ttl: timedelta
    max_attempts: int
    fast_model: str
    quality_model: str

    @property
    def batch(self) -> BatchPolicy:
        return BatchPolicy(max_attempts=self.max_attempts, hold_ttl=self.hold_ttl)


def video_policy(settings: Settings) -> VideoPolicy:
    return VideoPolicy(
        max_seconds=settings.video_max_seconds,
        max_items=settings.video_max_items,
        hold_ttl=timedelta(hours=settings.video_hold_ttl_hours),
        max_attempts=settings.tasks_max_attempts,
        fast_model=settings.video_model,
        quality_model=settings.video_quality_model,
    )


@dataclass(frozen=True, kw_only=True)
class VideoServices(JobServices):
    """What video jobs run with besides the lifecycle's services. The engines are resolved on first use:
    accepting a job (on the API function) never builds them."""

    video: VideoPolicy
    catalog: CatalogRepositories
    settings: GenerationSettingsStore  # the brand profile
    videos: Callable[[], VideoEngine]
    speech: Callable[[], SpeechEngine]
    texts: Callable[[], ImageEngine]  # the text model (prompt enhancement, scripts)


@dataclass(frozen=True, kw_only=True)
class VideoOrder(JobOrder):
    """A video job (``request``) or a video edit (``edit`` of ``asset_id``); :meth:`VideoJobs.prepare`
    resolves the settings and prices it."""

    prices: PriceList
    request: VideoJobCreate | None = None
    edit: VideoEditRequest | None = None
    asset_id: str | None = None
    settings: VideoSettings | None = None
    costs: dict[str, int] = field(default_factory=dict)  # one item's price by operation


class VideoJobs(JobKind[VideoJobDoc, VideoItemDoc, VideoServices, VideoOrder]):
    """``clients/{c}/video_jobs``: up to VIDEO_MAX_ITEMS videos (or one edit), written with the job;
    progress is read from the items."""

    collection = "video_jobs"
    id_prefix = "vid"
    noun = "video job"
    label = "video job"
    completed_event = EventType.VIDEO_JOB_COMPLETED
    worker = "video_tasks"
    task_prefix = "video-"
    hold_prefix = "video"
    operation = "video"
    job_model = VideoJobDoc
    item_model = VideoItemDoc
    # A delivery never waits for the model; the longest is the one that joins, voices and reframes a
    # 30-second 1080p video into three deliverables (about a minute of CPU per deliverable on one core).
    item_deadline = timedelta(minutes=15)

    def store(self, platform: Platform) -> JobStore[VideoJobDoc, VideoItemDoc]:
        return platform.job_store(self)

    def dependencies(self, platform: Platform) -> VideoServices:
        policy = video_policy(platform.settings)
        return VideoServices(
            **self.lifecycle_services(platform, policy.batch),
            video=policy,
            catalog=platform.catalog,
            settings=platform.generation_settings,
            videos=lambda: platform.video_engine,
            speech=lambda: platform.speech_engine,
            texts=lambda: platform.engine,
        )

    # -- steps ------------------------------------------------------------------------------------

    def prepare(self, services: VideoServices, order: VideoOrder, job_id: str) -> VideoOrder:
        """Every product and asset named is the client's own (404 otherwise), the settings are resolved
        against the style and the deployment's limits (422), and one item is priced."""
        if order.edit is not None:
            return _prepare_edit(services, order)
        assert order.request is not None
        return _prepare_generate(services, order, order.request)

    def record(
        self, services: VideoServices, order: VideoOrder, job_id: str, hold_id: str
    ) -> tuple[VideoJobDoc, Sequence[VideoItemDoc]]:
        now = services.clock()
        job = VideoJobDoc(
            id=job_id,
            client_id=order.client_id,
            kind="edit" if order.edit is not None else "generate",
            settings=order.settings,
            edit=order.edit,
            item_count=1 if order.edit is not None else len(order.request.items if order.request else []),
            cost=order.amount,
            item_cost=sum(order.costs.values()),
            costs={name: amount for name, amount in order.costs.items() if amount},
            hold_id=hold_id,
            created_by=order.user_id,
            created_at=now,
            updated_at=now,
            request_fingerprint=order.request_key.fingerprint if order.request_key is not None else None,
        )
        if order.edit is not None:
            return job, [VideoItemDoc(index=0, asset_id=order.asset_id, updated_at=now)]
        assert order.request is not None
        items = [
            VideoItemDoc(
                index=index,
                product_id=item.product_id,
                prompt=item.prompt,
                image_asset_id=item.image_asset_id,
                last_frame_asset_id=item.last_frame_asset_id,
                reference_asset_ids=list(item.reference_asset_ids),
                script=item.script,
                updated_at=now,
            )
            for index, item in enumerate(order.request.items)
        ]
        return job, items

    def work(self, services: VideoServices, run: ItemRun[VideoJobDoc, VideoItemDoc]) -> Finish | Finished:
        if run.job.kind == "edit":
            return _edit_item(services, run)
        return _generate_item(services, run)

    # -- rules ------------------------------------------------------------------------------------

    def charge(self, job: VideoJobDoc, totals: Totals) -> int:
        return totals.succeeded * job.item_cost

    def charge_breakdown(self, job: VideoJobDoc, totals: Totals) -> dict[str, int]:
        if len(job.costs) < 2 or not totals.succeeded:
            return {}
        return {name: amount * totals.succeeded for name, amount in job.costs.items()}

    def settle_reason(self, job: VideoJobDoc, totals: Totals) -> str:
        if job.kind == "edit":
            return f"video edit {job.id}: " + ("done" if totals.succeeded else "failed, refunded")
        return f"video job {job.id}: {totals.succeeded} of {job.item_count} videos made; failures refunded"

    def settlement(self, totals: Totals, captured: int, released: int) -> dict[str, int]:
        return {"captured": captured, "released": released, "succeeded": totals.succeeded, "failed": totals.failed}

    def failed(self, job: VideoJobDoc, error: EpoxError) -> Finish:
        return Finish(ItemStatus.FAILED, {"failure": failure_of(error)}, outcome=f"item failed: {error.code}")

    def given_up(self, services: VideoServices, job: VideoJobDoc, item: VideoItemDoc, error: EpoxError) -> Finish:
        """A video whose deliverables were stored before its delivery died is in the library: kept and
        charged; otherwise failed and refunded."""
        if job.kind == "generate" and job.settings is not None:
            wanted = [deliverable_asset_id(job, item, aspect) for aspect in job.settings.deliverables]
            stored = services.catalog.assets.existing(job.client_id, wanted)
            if stored:
                kept = [asset_id for asset_id in wanted if asset_id in stored]
                return Finish(
                    ItemStatus.SUCCEEDED,
                    {"asset_ids": kept, "failure": None},
                    outcome=f"item given up: {len(kept)} videos kept",
                )
        return self.failed(job, error)


VIDEOS = VideoJobs()


def clip_key(job: VideoJobDoc, item: VideoItemDoc, clip: ClipState) -> str:
    """Where a finished clip is copied as the model gave it (found there by a later delivery)."""
    return f"{CLIP_PREFIX}{job.client_id}/{job.id}/{item.index:06d}/clip-{clip.index}-{clip.restarts}.mp4"


# -- accepting ----------------------------------------------------------------------------------------


def _invalid(field_name: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, errors=[{"field": field_name, "in": "body", "message": message, "type": "value"}])


def _prepare_generate(services: VideoServices, order: VideoOrder, data: VideoJobCreate) -> VideoOrder:
    policy = services.video
    style = get_style(data.style)
    if len(data.items) > policy.max_items:
        raise _invalid("items", f"at most {policy.max_items} videos per job")
    duration = data.duration_seconds or min(style.duration_seconds, policy.max_seconds)
    # Veo takes reference images only in 8-second clips: such a job's videos are whole 8 s clips.
    referenced = any(item.reference_asset_ids for item in data.items)
    if referenced and data.duration_seconds is None:
        duration = max(REFERENCE_CLIP_SECONDS, duration // REFERENCE_CLIP_SECONDS * REFERENCE_CLIP_SECONDS)
    if duration > policy.max_seconds:
        raise _invalid("duration_seconds", f"a video is at most {policy.max_seconds} s long")
    if referenced and duration % REFERENCE_CLIP_SECONDS:
        message = "videos guided by reference images are made of 8-second clips: duration_seconds must be 8, 16 or 24"
        raise _invalid("duration_seconds", message)
    aspect = data.aspect_ratio or style.aspect_ratio
    audio = data.audio or style.audio
    if referenced:
        clips = [REFERENCE_CLIP_SECONDS] * (duration // REFERENCE_CLIP_SECONDS)
    else:
        clips = plan_clips(duration, clip_prices(order.prices, data.quality, data.resolution))
    costs = item_costs(
        order.prices, quality=data.quality, resolution=data.resolution, clips=clips, voiceover=voiced(audio)
    )
    _check_references(services.catalog, order.client_id, data.items)
    settings = VideoSettings(
        style=style.id,
        duration_seconds=duration,
        resolution=data.resolution,
        aspect_ratio=aspect,
        deliverables=list(data.deliverables or [aspect]),
        audio=audio,
        fit=data.fit,
        prompt=data.prompt,
        selling_points=list(data.selling_points),
        script=data.script,
        voice=data.voice,
        negative_prompt=data.negative_prompt,
        seed=data.seed,
        quality=data.quality,
        model=policy.quality_model if data.quality == "quality" else policy.fast_model,
        enhance_prompt=data.enhance_prompt,
        clips=clips,
    )
    return replace(order, settings=settings, costs=costs, amount=sum(costs.values()) * len(data.items))


def _check_references(catalog: CatalogRepositories, client_id: str, items: list[VideoItemIn]) -> None:
    """Every product, frame and reference image named must be the client's own (404, nothing reserved);
    frames and references are images; a last frame has a first one to start from."""
    product_ids = sorted({item.product_id for item in items if item.product_id})
    products = catalog.products.get_many(client_id, product_ids) if product_ids else {}
    missing = [pid for pid in product_ids if pid not in products]
    if missing:
        raise NotFound(f"No product {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    frame_ids = sorted(
        {
            aid
            for item in items
            for aid in (item.image_asset_id, item.last_frame_asset_id, *item.reference_asset_ids)
            if aid is not None
        }
    )
    frames = catalog.assets.get_many(client_id, frame_ids) if frame_ids else {}
    for asset_id in frame_ids:
        asset = frames.get(asset_id)
        if asset is None:
            raise NotFound(f"No asset {asset_id}")
        if asset.media is MediaKind.VIDEO or not asset.content_type.startswith("image/"):
            raise FrameNotAnImage(f"Asset {asset_id} is a {asset.content_type}, not an image", asset_id=asset_id)
    for index, item in enumerate(items):
        if item.last_frame_asset_id and not item.image_asset_id:
            product = products.get(item.product_id or "")
            if product is None or not product.images:
                message = "a last frame needs a first: the product has no image"
                raise _invalid(f"items.{index}.last_frame_asset_id", message)


def _prepare_edit(services: VideoServices, order: VideoOrder) -> VideoOrder:
    """The asset is the client's video (404, 422), and the edit falls inside it (422 video_range_invalid)."""
    edit, asset_id = order.edit, order.asset_id
    assert edit is not None and asset_id is not None
    asset = services.catalog.assets.get(order.client_id, asset_id)
    if asset is None:
        raise NotFound(f"No asset {asset_id}")
    if asset.media is not MediaKind.VIDEO:
        raise AssetNotAVideo(f"Asset {asset_id} is a {asset.content_type} {asset.kind.value}", asset_id=asset_id)
    duration = asset.duration_seconds or 0.0
    tolerance = 0.05  # half a frame at 10 fps: the edit itself checks to the frame
    if edit.trim is not None and edit.trim.end > duration + tolerance:
        raise VideoRangeInvalid(
            f"Trim end {edit.trim.end:g} s is past the end of the video ({duration:.3f} s)",
            start=edit.trim.start,
            end=edit.trim.end,
            duration_seconds=round(duration, 3),
        )
    length = (edit.trim.end - edit.trim.start) if edit.trim is not None else duration
    if edit.poster is not None and edit.poster.at_seconds > length + tolerance:
        raise VideoRangeInvalid(
            f"Poster time {edit.poster.at_seconds:g} s is outside the edited video (0..{length:.3f} s)",
            at_seconds=edit.poster.at_seconds,
            duration_seconds=round(length, 3),
        )
    costs = {"video_edit": order.prices.price("video_edit", None)}
    if edit.audio is not None and edit.audio.voiceover is not None:
        costs["voiceover"] = order.prices.price("voiceover", None)
    return replace(order, costs=costs, amount=sum(costs.values()))


def create_job(
    services: VideoServices,
    prices: PriceList,
    *,
    client_id: str,
    user_id: str,
    data: VideoJobCreate,
    request_key: RequestKey | None,
    billing: BillingReader,
) -> VideoJobDoc:
    """Accept a video job: one hold for all of it, one fan-out task. The same Idempotency-Key returns the
    same job (with another request, 409); a client past the payment grace period starts nothing (402)."""
    from shared.billing.catalog import load_catalog
    from shared.billing.service import require_good_standing

    require_good_standing(billing, load_catalog(), client_id, services.clock())
    order = VideoOrder(client_id=client_id, user_id=user_id, request_key=request_key, prices=prices, request=data)
    return lifecycle.accept(VIDEOS, services, order)


def create_edit(
    services: VideoServices,
    prices: PriceList,
    *,
    client_id: str,
    user_id: str,
    asset_id: str,
    edit: VideoEditRequest,
    request_key: RequestKey | None,
    billing: BillingReader,
) -> VideoJobDoc:
    """Accept a video edit (a job of one item); paid ones (a voiceover) need good standing."""
    order = VideoOrder(
        client_id=client_id,
        user_id=user_id,
        request_key=request_key,
        scope=("edit", asset_id),
        prices=prices,
        edit=edit,
        asset_id=asset_id,
    )
    paid = prices.price("video_edit", None) > 0
    if edit.audio is not None and edit.audio.voiceover is not None:
        paid = paid or prices.price("voiceover", None) > 0
    if paid:
        from shared.billing.catalog import load_catalog
        from shared.billing.service import require_good_standing

        require_good_standing(billing, load_catalog(), client_id, services.clock())
    return lifecycle.accept(VIDEOS, services, order)


# -- making a video -----------------------------------------------------------------------------------


@dataclass
class _Context:
    """What starting a clip needs (built once per delivery, only when a clip must be started)."""

    style: VideoStyle
    product: ProductDoc | None
    first: InputImage | None
    last: InputImage | None
    prompt: str
    script: str | None
    references: tuple[InputImage, ...] = ()


def _generate_item(services: VideoServices, run: ItemRun[VideoJobDoc, VideoItemDoc]) -> Finish:
    job, item, now = run.job, run.item, run.now
    settings = job.settings
    assert settings is not None
    wanted: dict[str, str] = {aspect: deliverable_asset_id(job, item, aspect) for aspect in settings.deliverables}
    stored = services.catalog.assets.existing(job.client_id, list(wanted.values()))
    if len(stored) == len(wanted):  # a delivery stored them all, then died before recording the item
        return _succeeded(list(wanted.values()), item)
    clips = [clip.model_copy() for clip in item.clips] or [
        ClipState(index=index, seconds=seconds) for index, seconds in enumerate(settings.clips)
    ]
    engine, store = services.videos(), services.store
    context: _Context | None = None
    progressed = False  # this delivery started or fetched a clip (saved even if the model gets busy after)
    try:
        for clip in clips:
            if clip.raw_key is not None:
                continue
            key = clip_key(job, item, clip)
            if clip.operation is not None and store.head(key) is not None:
                clip.raw_key = key  # fetched by a delivery whose progress was not recorded
                progressed = True
                continue
            if clip.operation is None:
                context = context or _context(services, job, item)
                _start(engine, settings, context, clip, len(clips), now)
                progressed = True
                continue
            if clip.started_at is not None and now - clip.started_at > timedelta(minutes=MAX_OPERATION_MINUTES):
                raise VideoTimedOut(
                    f"Clip {clip.index + 1} of {len(clips)} was still being generated after "
                    f"{MAX_OPERATION_MINUTES} minutes; it was given up",
                    clip=clip.index,
                )
            poll = engine.poll(VideoOperation.from_payload(clip.operation))
            if poll.state == "pending":
                clip.polls += 1
                clip.progress = poll.progress
            elif poll.state == "done" and poll.result is not None:
                store.put(key, engine.fetch(poll.result), poll.result.mime_type or "video/mp4")
                clip.raw_key = key
                progressed = True
            elif poll.state == "failed" and poll.restartable and clip.restarts < MAX_RESTARTS:
                logger.warning(
                    "clip %s of item %s of %s failed (%s): started again", clip.index, item.index, job.id, poll.error
                )
                clip.restarts += 1
                context = context or _context(services, job, item)
                _start(engine, settings, context, clip, len(clips), now)
                progressed = True
            else:
                poll.raise_for_outcome()  # filtered or failed: the item fails with the model's reason
                raise EnginePermanentError("The video model answered without a video")
    except EngineRetryableError as error:
        if not progressed:
            raise  # nothing learned: the queue delivers again (an attempt used)
        # Operations started (or clips fetched) before the model got busy are kept.
        wait = timedelta(seconds=max(error.retry_after, 5))
        raise ContinueLater(wait, f"engine busy: {error.detail}", _fields(item, clips, context, now)) from error
    pending = [clip for clip in clips if clip.raw_key is None]
    if pending:
        delay = poll_delay_seconds(min(clip.polls for clip in pending))
        reason = f"{len(pending)} of {len(clips)} clips being generated"
        raise ContinueLater(timedelta(seconds=delay), reason, _fields(item, clips, context, now))
    return _deliver(services, run, clips, wanted, stored, context)


def _fields(item: VideoItemDoc, clips: list[ClipState], context: _Context | None, now: datetime) -> dict[str, Any]:
    """What a delivery learned, written into the item when it continues later."""
    fields: dict[str, Any] = {
        "clips": [clip.model_dump(mode="json") for clip in clips],
        "started_at": item.started_at or now,
    }
    if context is not None:
        fields["prompt_used"] = context.prompt
        fields["script_used"] = context.script
    return fields


def _succeeded(asset_ids: list[str], item: VideoItemDoc, **more: Any) -> Finish:
    return Finish(
        ItemStatus.SUCCEEDED,
        {"asset_ids": asset_ids, "failure": None, **more},
        outcome=f"item {item.index} succeeded: {len(asset_ids)} videos",
    )


def _context(services: VideoServices, job: VideoJobDoc, item: VideoItemDoc) -> _Context:
    """The product, its frames, the prompt and the script (those of an earlier delivery when it chose them)."""
    settings = job.settings
    assert settings is not None
    catalog, store = services.catalog, services.store
    style = get_style(settings.style)
    product = catalog.products.get(job.client_id, item.product_id) if item.product_id else None
    first = last = None
    # Reference images replace the first frame (the model takes no frame with them); those deleted since
    # the job was accepted are left out, and with none left the video starts from the product's photo.
    found = (_frame(catalog, store, job.client_id, asset_id) for asset_id in item.reference_asset_ids)
    references = tuple(image for image in found if image is not None)
    if not references and item.image_asset_id:
        first = _frame(catalog, store, job.client_id, item.image_asset_id)
    elif not references and product is not None and product.images:
        first = _image(store.get(product.images[0].key))
    if first is not None and item.last_frame_asset_id:
        last = _frame(catalog, store, job.client_id, item.last_frame_asset_id)
    prompt = item.prompt_used
    points = scripts.selling_points(product, settings.selling_points)
    if prompt is None:
        prompt = scripts.build_prompt(
            style, product, points, settings.prompt, item.prompt, first_frame=first is not None
        )
        if settings.enhance_prompt:
            brand = services.settings.brand(job.client_id)
            prompt = scripts.enhance_prompt(services.texts(), prompt, product, style, brand)
        prompt = prompt[:MAX_PROMPT_CHARS]
    script = item.script_used
    if script is None and voiced(settings.audio):
        script = item.script or settings.script
        if script is None:
            script = scripts.write_script(
                services.texts(), style, product, points, item.prompt, settings.duration_seconds
            )
    return _Context(
        style=style, product=product, first=first, last=last, prompt=prompt, script=script, references=references
    )


def _frame(catalog: CatalogRepositories, store: ObjectStore, client_id: str, asset_id: str) -> InputImage | None:
    """An image asset as a frame (None when it was deleted since the job was accepted)."""
    found = catalog.assets.get(client_id, asset_id)
    return _image(store.get(found.key)) if found is not None else None


def _image(data: bytes) -> InputImage:
    """A frame as the model takes it: upright, at most FRAME_SIDE, transparency flattened onto white
    (a cutout would otherwise start the video on black), JPEG."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.draft("RGB", (FRAME_SIDE, FRAME_SIDE))
            image = ImageOps.exif_transpose(opened)
            image.thumbnail((FRAME_SIDE, FRAME_SIDE))
            if image.mode in ("RGBA", "LA", "P"):
                rgba = image.convert("RGBA")
                image = Image.new("RGB", rgba.size, (255, 255, 255))
                image.paste(rgba, mask=rgba.getchannel("A"))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, "JPEG", quality=92)
    except (UnidentifiedImageError, OSError) as exc:
        raise EnginePermanentError("The product image could not be read") from exc
    return InputImage(data=buffer.getvalue(), mime_type="image/jpeg")


def _start(
    engine: VideoEngine, settings: VideoSettings, context: _Context, clip: ClipState, count: int, now: datetime
) -> None:
    """Start ``clip``'s operation (image-to-video from the first frame; the last clip ends on the last frame)."""
    request = VideoRequest(
        prompt=scripts.clip_prompt(context.prompt, context.style, clip.index, count, context.product),
        model=settings.model,
        aspect_ratio=settings.aspect_ratio,
        resolution=settings.resolution,
        duration_seconds=clip.seconds,  # type: ignore[arg-type]  # 4, 6 or 8: the plan's
        audio=model_sound(settings.audio),
        negative_prompt=settings.negative_prompt or context.style.negative_prompt,
        seed=(settings.seed + clip.index) % 4_294_967_296 if settings.seed is not None else None,
        image=context.first,
        last_frame=context.last if clip.index == count - 1 else None,
        reference_images=context.references,
    )
    operation = engine.start(request)
    clip.operation = operation.to_payload()
    clip.started_at = now
    clip.polls = 0
    clip.progress = None


def _deliver(
    services: VideoServices,
    run: ItemRun[VideoJobDoc, VideoItemDoc],
    clips: list[ClipState],
    wanted: dict[str, str],
    stored: set[str],
    context: _Context | None,
) -> Finish:
    """Join, voice and reframe the clips; store one video asset per deliverable not stored yet."""
    from shared.videos import assemble

    job, item, store = run.job, run.item, services.store
    settings = job.settings
    assert settings is not None
    prompt = context.prompt if context is not None else item.prompt_used
    script = context.script if context is not None else item.script_used
    voiceover = None
    if voiced(settings.audio) and script:
        voiceover = services.speech().speak(script, settings.voice).data
    raw = [store.get(clip.raw_key) for clip in clips if clip.raw_key is not None]
    size = assemble.deliverable_size(settings.aspect_ratio, settings.resolution)
    base = assemble.assemble(
        raw, size=size, seconds=settings.duration_seconds, audio=settings.audio, voiceover=voiceover
    )
    operations = [VideoOperation.from_payload(clip.operation) for clip in clips if clip.operation is not None]
    engine_name = operations[0].engine if operations else "unknown"
    for aspect, asset_id in wanted.items():
        if asset_id in stored:
            continue
        data = assemble.deliverable(base, aspect, settings.resolution, settings.fit)
        info = assemble.probe(data)
        poster, thumbnail = assemble.stills(data)
        metadata = {
            "video": info.as_metadata(),
            "offline": info.offline,
            "style": settings.style,
            "prompt": prompt,
            "negative_prompt": settings.negative_prompt,
            "script": script if voiced(settings.audio) else None,
            "audio": settings.audio,
            "deliverable": aspect,
            "source_aspect_ratio": settings.aspect_ratio,
            "fit": settings.fit if aspect != settings.aspect_ratio else None,
            "resolution": settings.resolution,
            "clips": [clip.seconds for clip in clips],
            "engine": engine_name,
            "model": operations[0].model if operations else settings.model,
            "item_index": item.index,
        }
        new = NewAsset(
            asset_id=asset_id,
            client_id=job.client_id,
            kind=AssetKind.VIDEO,
            source=engine_name,
            origin=AssetOrigin.GENERATED,
            operation="generate_video",
            product_id=item.product_id,
            job_id=job.id,
            metadata=metadata,
            revision_metadata=metadata,
            media=MediaKind.VIDEO,
            duration_seconds=round(info.duration_seconds, 3),
        )
        create_asset(
            services.catalog.assets, store, new, assemble.EncodedVideo(data, info), thumbnail, run.now, poster=poster
        )
    delete_objects(store, *(clip.raw_key for clip in clips if clip.raw_key is not None))
    return _succeeded(
        list(wanted.values()),
        item,
        clips=[clip.model_dump(mode="json") for clip in clips],
        prompt_used=prompt,
        script_used=script,
    )


# -- editing a video ----------------------------------------------------------------------------------


def _edit_item(services: VideoServices, run: ItemRun[VideoJobDoc, VideoItemDoc]) -> Finished:
    """The edited video as a NEW revision, committed together with the item's success (a redelivery
    never makes a second one); a lost race with another edit of the asset is recomputed on top of it."""
    from shared.catalog.assets import object_keys
    from shared.videos import assemble

    job, item, store, assets = run.job, run.item, services.store, services.catalog.assets
    edit = job.edit
    assert edit is not None and item.asset_id is not None
    voiceover = None
    if edit.audio is not None and edit.audio.voiceover is not None:
        voiceover = services.speech().speak(edit.audio.voiceover, edit.audio.voice).data
    for _attempt in attempts(RECOMPUTE, f"edit video {item.asset_id} for {job.id}"):
        asset = _video_asset(services, job.client_id, item.asset_id)
        out, changed = assemble.apply_edit(store.get(asset.key), edit, voiceover)
        info = assemble.probe(out)
        poster, thumbnail = assemble.stills(out, edit.poster.at_seconds if edit.poster is not None else None)
        number = asset.current_revision + 1
        if changed:
            key, thumb_key = write_objects(
                store, job.client_id, asset.id, number, assemble.EncodedVideo(out, info), thumbnail
            )
        else:  # a new poster frame: the same video object, a new still
            key, thumb_key = asset.key, object_keys(job.client_id, asset.id, number, "mp4")[1]
            store.put(thumb_key, thumbnail.data, thumbnail.content_type)
        poster_key = write_poster(store, thumb_key, poster)
        revision = AssetRevision(
            number=number,
            key=key,
            thumbnail_key=thumb_key,
            content_type="video/mp4",
            width=info.width,
            height=info.height,
            size_bytes=info.size_bytes,
            operation=edit.describe(),
            created_at=run.now,
            metadata={
                "video": info.as_metadata(),
                "edit": edit.model_dump(mode="json", exclude_none=True),
                "source_revision": asset.current_revision,
                "job_id": job.id,
            },
            duration_seconds=round(info.duration_seconds, 3),
            poster_key=poster_key,
        )
        changes = run.changes(ItemStatus.SUCCEEDED, revision=number, asset_ids=[asset.id], failure=None)
        guard = services.jobs.item_guard(job.client_id, job.id, item.index, run.version, changes)
        try:
            commit_revision(
                assets, client_id=job.client_id, asset_id=asset.id, revision=revision, now=run.now, item=guard
            )
            return Finished(f"item {item.index} succeeded: revision {number}")
        except (RevisionConflict, ItemTaken):
            stored = assets.revision(job.client_id, asset.id, number)
            if stored is None or stored.thumbnail_key != thumb_key:  # not ours: our objects are nobody's
                delete_objects(store, thumb_key, poster_key, *([key] if changed else []))
            if services.jobs.item_moved(job.client_id, job.id, item.index, run.version):
                raise ItemTakenOver(f"{item.index:06d}") from None
    raise RetryTask("the video kept changing while it was being edited", retry_after=5)


def _video_asset(services: VideoServices, client_id: str, asset_id: str) -> AssetDoc:
    asset = services.catalog.assets.get(client_id, asset_id)
    if asset is None:
        raise NotFound(f"No asset {asset_id}")
    if asset.media is not MediaKind.VIDEO:
        raise AssetNotAVideo(f"Asset {asset_id} is not a video", asset_id=asset_id)
    return asset


# -- reads --------------------------------------------------------------------------------------------


def item_out(item: VideoItemDoc, videos: list[VideoResultOut] | None = None) -> VideoItemOut:
    return VideoItemOut(
        index=item.index,
        status=item.status,
        product_id=item.product_id,
        prompt=item.prompt,
        asset_id=item.asset_id,
        clips_total=len(item.clips),
        clips_ready=sum(1 for clip in item.clips if clip.raw_key is not None),
        asset_ids=item.asset_ids,
        revision=item.revision,
        failure=item.failure,
        videos=videos or [],
    )


def job_out(jobs: JobStore[VideoJobDoc, VideoItemDoc], job: VideoJobDoc) -> VideoJobOut:
    progress = lifecycle.progress(VIDEOS, jobs, job)  # at most VIDEO_MAX_ITEMS items: all of them
    return VideoJobOut(
        id=job.id,
        kind=job.kind,
        status=job.status,
        settings=job.settings,
        edit=job.edit,
        item_count=job.item_count,
        cost=job.cost,
        item_cost=job.item_cost,
        counts=progress.counts,
        progress=progress.fraction,
        items=[item_out(item) for item in progress.items],
        settlement=job.settlement,
        created_at=job.created_at,
        finished_at=job.finished_at,
    )


def list_items(
    jobs: JobStore[VideoJobDoc, VideoItemDoc],
    catalog: CatalogRepositories,
    store: ObjectStore,
    client_id: str,
    job_id: str,
    query: ItemListQuery,
    expires_in: int,
) -> Page[VideoItemOut]:
    """A page of the job's items, each with its delivered videos (presigned download and poster URLs)."""
    page = lifecycle.list_items(jobs, client_id, job_id, query)
    ids = [asset_id for item in page.items for asset_id in item.asset_ids]
    assets = catalog.assets.get_many(client_id, ids) if ids else {}
    items = []
    for item in page.items:
        videos = [_video_out(assets[a], store, expires_in) for a in item.asset_ids if a in assets]
        items.append(item_out(item, videos))
    return Page(items=items, next_cursor=page.next_cursor)


def _video_out(asset: AssetDoc, store: ObjectStore, expires_in: int) -> VideoResultOut:
    facts = asset.metadata.get("video") or {}
    return VideoResultOut(
        asset_id=asset.id,
        aspect_ratio=str(asset.metadata.get("deliverable") or f"{asset.width}x{asset.height}"),
        width=asset.width,
        height=asset.height,
        duration_seconds=asset.duration_seconds,
        size_bytes=facts.get("size_bytes") if isinstance(facts, dict) else None,
        download_url=store.presigned_get(asset.key, expires_in=expires_in, download_name=f"{asset.id}.mp4"),
        poster_url=store.presigned_get(asset.poster_key, expires_in=expires_in) if asset.poster_key else None,
    )
