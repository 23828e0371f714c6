"""Editing service: validate, quote, then either edit synchronously or run a job on Cloud Tasks.

Order of every request: validate everything (the body, every asset is the caller's, masks, the
whole pipeline's geometry on every asset), then quote, then reserve, then act. Every refusal is a
4xx before anything is reserved or written.

* Sync: a pipeline of free, local operations (crop, resize, pad, solid/transparent background,
  output) on at most ``EDIT_SYNC_MAX_ASSETS`` assets: every result is computed (and can still be
  refused) before the first revision is written; 200 with the new revisions.
* Job: any model step (remove_background, scene background, upscale, prompt_edit, inpaint) makes
  the request a job, as do free pipelines on more assets: 202 and a readable status, on the
  batch-job lifecycle shared with generation (:mod:`shared.batch`). The whole quote is reserved
  as ONE hold; one named task per asset; each worker is idempotent (the item
  document says whether the asset is done; the revision commit finishes the item atomically, so a
  redelivery never makes a second revision); the settle task captures the successful assets'
  cost once and releases the rest. remove_background is CPU-local but heavy (rembg, ~1 GB of
  libraries, seconds per image) and paid: it runs in the worker like the AI steps, which keeps the
  API instances small and the hold/capture/release rules uniform.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from shared.batch import lifecycle
from shared.batch.kind import (
    BatchPolicy,
    EngineJobServices,
    Finished,
    ItemRun,
    ItemTakenOver,
    JobKind,
    JobOrder,
    RequestKey,
    Totals,
)
from shared.batch.models import ItemStatus
from shared.catalog.assets import revert as revert_asset
from shared.catalog.models import AssetDoc, AssetKind, AssetRevision
from shared.editing import pipeline as px
from shared.editing.background import BackgroundRemovalUnavailable, BackgroundRemover, check_model_path
from shared.editing.models import (
    Background,
    Crop,
    EditItemDoc,
    EditItemOut,
    EditJobDoc,
    EditJobOut,
    EditQuoteOut,
    EditRequest,
    EditResultOut,
    Inpaint,
    Operation,
    Output,
    Pad,
    PromptEdit,
    QuoteLineOut,
    RemoveBackground,
    Resize,
    RevisionOut,
    Upscale,
)
from shared.editing.revisions import (
    ItemTaken,
    RevisionConflict,
    commit_revision,
    discard_objects,
    write_objects,
)
from shared.engines.base import EnginePermanentError, ImageRequest, InputImage
from shared.errors import Conflict, EpoxError, InvalidImage, NotFound, UnprocessableContent, ValidationFailed
from shared.events.model import EventType
from shared.retry import RetryPolicy, attempts
from shared.storage import ObjectNotFound
from shared.tasks import MAX_DISPATCH_DEADLINE, RetryTask

if TYPE_CHECKING:
    from PIL import Image

    from shared.batch.store import JobStore
    from shared.billing.store import BillingReader
    from shared.catalog.ports import AssetRepository
    from shared.config import Settings
    from shared.engines.base import ImageEngine
    from shared.imaging import ImageLimits, Thumbnail
    from shared.ledger.pricing import PriceList
    from shared.platform import Platform
    from shared.storage import ObjectStore

RECOMPUTE_ATTEMPTS = 3
# A lost race with another edit of the same asset is recomputed on top of it: few tries (each runs
# the pipeline again, model steps included), short waits, and none started past a job item's
# dispatch deadline (a synchronous edit never gets near it).
RECOMPUTE = RetryPolicy(attempts=RECOMPUTE_ATTEMPTS, base=0.05, cap=0.5, deadline=MAX_DISPATCH_DEADLINE.total_seconds())
# Model size for prompt edits and inpainting: the result is mapped back onto the image anyway, and
# a 4K call costs far more than the flat price of these operations.
EDIT_SIZE_CAP = "2K"

PROMPT_EDIT = (
    "Edit this product photo: {prompt}. Change only what the instruction asks. Keep the product's shape, "
    "proportions, logo, text and colours exactly as they are, and keep the framing."
)
INPAINT = (
    "Edit only the region of the first image that the second image (the mask) marks in white: {prompt}. "
    "Leave everything outside the mask exactly as it is and blend the edit seamlessly into it."
)
SCENE = (
    "Replace the background of this product photo (the area the mask marks in white) with: {prompt}. "
    "Photorealistic e-commerce photography with natural light and a soft contact shadow. Do not change, "
    "move or redraw the product."
)
UPSCALE = (
    "Upscale this image to a higher resolution. Keep every detail, colour, text, logo and shape exactly "
    "as it is; add no new content and do not change the framing."
)


class AssetNotAnImage(UnprocessableContent):
    code = "asset_not_an_image"
    title = "Only image assets can be edited"


class AssetImageMissing(UnprocessableContent):
    code = "asset_image_missing"
    title = "The asset's stored image is missing"


@dataclass(frozen=True)
class EditPolicy:
    image_limits: ImageLimits
    mask_limits: ImageLimits
    thumbnail_max_side: int
    max_assets: int
    sync_max_assets: int
    hold_ttl: timedelta
    max_attempts: int
    rembg_model_path: str
    alpha_matting: bool

    @property
    def batch(self) -> BatchPolicy:
        return BatchPolicy(max_attempts=self.max_attempts, hold_ttl=self.hold_ttl)


def edit_policy(settings: Settings) -> EditPolicy:
    from shared.imaging import ImageLimits

    limits = ImageLimits(max_bytes=settings.upload_max_bytes, max_pixels=settings.image_max_pixels)
    return EditPolicy(
        image_limits=limits,
        mask_limits=ImageLimits(
            max_bytes=settings.upload_max_bytes,
            max_pixels=settings.image_max_pixels,
            allowed_formats=frozenset({"PNG"}),
        ),
        thumbnail_max_side=settings.thumbnail_max_side,
        max_assets=settings.edit_max_assets,
        sync_max_assets=settings.edit_sync_max_assets,
        hold_ttl=timedelta(hours=settings.edit_hold_ttl_hours),
        max_attempts=settings.tasks_max_attempts,
        rembg_model_path=settings.rembg_model_path,
        alpha_matting=settings.rembg_alpha_matting,
    )


# -- validation and quoting -------------------------------------------------------------------------


@dataclass
class PreparedAsset:
    asset: AssetDoc
    start: px.Frame
    frames: list[px.Frame]
    lines: list[QuoteLineOut]

    @property
    def cost(self) -> int:
        return sum(line.amount for line in self.lines)

    @property
    def costs_by_operation(self) -> dict[str, int]:
        costs: dict[str, int] = {}
        for line in self.lines:
            if line.amount:
                costs[line.operation] = costs.get(line.operation, 0) + line.amount
        return costs


@dataclass
class Prepared:
    request: EditRequest
    masks: dict[int, Image.Image]
    assets: list[PreparedAsset]
    quote: EditQuoteOut

    @property
    def mode(self) -> Literal["sync", "job"]:
        return self.quote.mode


def prepare(
    assets: AssetRepository, prices: PriceList, client_id: str, data: EditRequest, policy: EditPolicy
) -> Prepared:
    """Everything that can be refused, refused now: nothing is read from the object store and
    nothing is written. The pipeline is planned on each asset's recorded size."""
    if len(data.asset_ids) > policy.max_assets:
        message = f"at most {policy.max_assets} assets per request"
        raise ValidationFailed(
            message, errors=[{"field": "asset_ids", "in": "body", "message": message, "type": "too_long"}]
        )
    masks = _decode_masks(data.operations, policy)
    if any(isinstance(op, RemoveBackground) for op in data.operations):
        check_model_path(policy.rembg_model_path)  # 503 now rather than a refunded failure later
    found = assets.get_many(client_id, data.asset_ids)
    missing = [asset_id for asset_id in data.asset_ids if asset_id not in found]
    if missing:
        raise NotFound(f"No asset {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    mask_sizes = {index: mask.size for index, mask in masks.items()}
    prepared: list[PreparedAsset] = []
    for asset_id in data.asset_ids:
        asset = found[asset_id]
        if asset.kind is AssetKind.VIDEO or asset.content_type not in px.CONTENT_TYPES.values():
            raise AssetNotAnImage(f"Asset {asset_id} is a {asset.content_type} {asset.kind.value}", asset_id=asset_id)
        start = px.Frame(asset.width, asset.height, _may_have_alpha(asset))
        try:
            frames = px.plan(data.operations, start, limits=policy.image_limits, mask_sizes=mask_sizes)
        except px.EditRefused as error:
            error.extensions["asset_id"] = asset_id
            raise
        lines = [
            QuoteLineOut(asset_id=asset_id, operation_index=index, operation=name, variant=variant, amount=amount)
            for index, name, variant, amount in _priced(prices, data.operations, start, frames)
        ]
        prepared.append(PreparedAsset(asset, start, frames, lines))
    total = sum(item.cost for item in prepared)
    job = data.is_ai or len(prepared) > policy.sync_max_assets
    quote = EditQuoteOut(
        lines=[line for item in prepared for line in item.lines],
        total=total,
        price_list_version=prices.version,
        mode="job" if job else "sync",
    )
    return Prepared(data, masks, prepared, quote)


def _decode_masks(operations: Sequence[Operation], policy: EditPolicy) -> dict[int, Image.Image]:
    masks: dict[int, Image.Image] = {}
    for index, op in enumerate(operations):
        if isinstance(op, Inpaint):
            try:
                masks[index] = px.decode_mask(op.mask, policy.mask_limits, index=index)
            except InvalidImage as error:  # not an image, truncated, a bomb, animated, not a PNG…
                if "errors" not in error.extensions:
                    error.extensions["operation_index"] = index
                    error.extensions["errors"] = [
                        {"field": f"operations.{index}.mask", "in": "body", "message": error.detail, "type": error.code}
                    ]
                raise
    return masks


def _may_have_alpha(asset: AssetDoc) -> bool:
    """What planning assumes before the pixels are read: recorded by edits, else by format."""
    recorded = asset.metadata.get("has_alpha")
    if isinstance(recorded, bool):
        return recorded
    return asset.content_type != "image/jpeg"


def _priced(
    prices: PriceList, operations: Sequence[Operation], start: px.Frame, frames: Sequence[px.Frame]
) -> list[tuple[int, str, str | None, int]]:
    """(operation index, price-list operation, variant, credits) for every model step."""
    lines = []
    for index, op in enumerate(operations):
        before = frames[index - 1] if index else start
        priced: tuple[str, str | None] | None = None
        if isinstance(op, RemoveBackground | PromptEdit | Inpaint):
            priced = (op.op, None)
        elif isinstance(op, Upscale):
            priced = ("upscale", op.size)
        elif isinstance(op, Background) and op.type == "scene":
            # A scene is a generated image at the size class that covers the picture.
            priced = ("generate_image", px.size_class(max(before.size)))
        if priced is not None:
            lines.append((index, priced[0], priced[1], prices.price(*priced)))
    return lines


def quote_edit(
    assets: AssetRepository, prices: PriceList, client_id: str, data: EditRequest, policy: EditPolicy
) -> EditQuoteOut:
    return prepare(assets, prices, client_id, data, policy).quote


# -- computing one asset's result -------------------------------------------------------------------


@dataclass
class Computed:
    base_revision: int
    encoded: px.Encoded
    thumbnail: Thumbnail
    metadata: dict[str, Any]


@dataclass
class Runtime:
    """What executing a pipeline needs besides pixels; the remover is created only when used."""

    policy: EditPolicy
    engine: ImageEngine | None
    remover: Callable[[], BackgroundRemover]
    steps: list[dict[str, Any]] = field(default_factory=list)


def compute(
    store: ObjectStore,
    asset: AssetDoc,
    operations: Sequence[Operation],
    masks: dict[int, Image.Image],
    runtime: Runtime,
) -> Computed:
    """Read the asset's current image, validate it, run the pipeline and encode the result."""
    policy = runtime.policy
    try:
        data = store.get(asset.key, max_bytes=policy.image_limits.max_bytes)
    except ObjectNotFound as exc:
        raise AssetImageMissing(f"The stored image of asset {asset.id} is missing", asset_id=asset.id) from exc
    start = px.Frame(asset.width, asset.height, _may_have_alpha(asset))
    frames = px.plan(operations, start, limits=policy.image_limits, mask_sizes={i: m.size for i, m in masks.items()})
    draft = px.draft_plan(operations, frames, start)
    try:
        decoded = px.decode_image(
            data, policy.image_limits, draft_to=px.draft_size(start, draft[1], draft[2]) if draft else None
        )
    except InvalidImage as error:
        error.extensions.setdefault("asset_id", asset.id)
        raise
    width, height = decoded.info.upright_size
    exact = px.Frame(width, height, px.has_transparency(decoded.image))
    if exact != start:  # the record was approximate (alpha unknown) or stale: plan on the truth
        frames = px.plan(
            operations, exact, limits=policy.image_limits, mask_sizes={i: m.size for i, m in masks.items()}
        )
        draft = px.draft_plan(operations, frames, exact) if decoded.scale > 1 else None
        if decoded.scale > 1 and draft is None:
            decoded = px.decode_image(data, policy.image_limits)
    runtime.steps = []
    image = _run(decoded, operations, masks, frames, draft, runtime)
    return _encode(asset, operations, image, decoded.icc_profile, decoded.scale, runtime)


def _run(
    decoded: px.Decoded,
    operations: Sequence[Operation],
    masks: dict[int, Image.Image],
    frames: Sequence[px.Frame],
    draft: tuple[int, tuple[float, float, float, float], tuple[int, int]] | None,
    runtime: Runtime,
) -> Image.Image:
    image = decoded.image
    first = 0
    if decoded.scale > 1 and draft is not None:
        # The leading crop + resize on the reduced decode, in one resampling pass.
        count, region, dims = draft
        s = decoded.scale
        resize_op = operations[count - 1]
        assert isinstance(resize_op, Resize)
        image = px.resize_region(
            image, (region[0] / s, region[1] / s, region[2] / s, region[3] / s), dims, resize_op.quality
        )
        first = count
    for index in range(first, len(operations)):
        image = _apply(index, operations[index], image, masks, runtime)
        expected = frames[index].size
        if image.size != expected:  # a bug, never the caller's fault: fail loudly, write nothing
            raise AssertionError(f"operation {index} produced {image.size}, planned {expected}")
    return image


def _apply(
    index: int, op: Operation, image: Image.Image, masks: dict[int, Image.Image], runtime: Runtime
) -> Image.Image:
    if isinstance(op, Crop):
        return px.crop(image, op)
    if isinstance(op, Resize):
        return px.resize(image, op)
    if isinstance(op, Pad):
        return px.pad(image, op)
    if isinstance(op, Output):
        return image
    if isinstance(op, RemoveBackground):
        remover = runtime.remover()
        matting = runtime.policy.alpha_matting if op.alpha_matting is None else op.alpha_matting
        runtime.steps.append({"op": op.op, "engine": remover.name, "alpha_matting": matting, "offline": False})
        return remover.remove(image, alpha_matting=matting)
    if isinstance(op, Background):
        if op.type != "scene":
            return px.background(image, op)
        return _scene(index, op, image, runtime)
    if isinstance(op, Upscale):
        return _upscale(op, image, runtime)
    if isinstance(op, PromptEdit):
        frame = px.engine_input(image)
        size = px.size_class(max(image.size), EDIT_SIZE_CAP)
        result = _generate(
            runtime,
            op.op,
            ImageRequest(
                prompt=PROMPT_EDIT.format(prompt=op.prompt),
                aspect_ratio=frame.aspect_ratio,
                size=size,
                images=(InputImage(px.png_bytes(frame.canvas), "image/png", "edit"),),
            ),
        )
        return px.with_alpha_of(px.from_engine(result, frame, image.size), image)
    if isinstance(op, Inpaint):
        mask = px.fit_mask(masks[index], image.size, index)
        frame = px.engine_input(image)
        mask_frame = px.letterbox(mask, frame.aspect_ratio, 0)
        size = px.size_class(max(image.size), EDIT_SIZE_CAP)
        result = _generate(
            runtime,
            op.op,
            ImageRequest(
                prompt=INPAINT.format(prompt=op.prompt),
                aspect_ratio=frame.aspect_ratio,
                size=size,
                images=(
                    InputImage(px.png_bytes(frame.canvas), "image/png", "edit"),
                    InputImage(px.png_bytes(mask_frame.canvas), "image/png", "mask"),
                ),
            ),
        )
        return px.composite_masked(image, px.from_engine(result, frame, image.size), mask)
    raise AssertionError(f"unhandled operation {op!r}")  # pragma: no cover - the union is closed


def _scene(index: int, op: Background, image: Image.Image, runtime: Runtime) -> Image.Image:
    """A generated scene is an inpaint of the background: the model sees the product in place and
    paints around it; the cutout is then laid over the result, so its opaque pixels are exact."""
    from PIL import ImageOps

    rgba = image.convert("RGBA")
    frame = px.engine_input(rgba)
    background_mask = ImageOps.invert(rgba.getchannel("A"))
    mask_frame = px.letterbox(background_mask, frame.aspect_ratio, 255)
    result = _generate(
        runtime,
        "background",
        ImageRequest(
            prompt=SCENE.format(prompt=op.prompt),
            aspect_ratio=frame.aspect_ratio,
            size=px.size_class(max(image.size)),
            images=(
                InputImage(px.png_bytes(frame.canvas), "image/png", "edit"),
                InputImage(px.png_bytes(mask_frame.canvas), "image/png", "mask"),
            ),
        ),
    )
    return px.composite_scene(rgba, px.from_engine(result, frame, image.size))


def _upscale(op: Upscale, image: Image.Image, runtime: Runtime) -> Image.Image:
    from PIL import Image

    from shared.engines.base import LONG_SIDE

    target = px.upscale_dims(image.size, LONG_SIDE[op.size])
    engine = runtime.engine
    if engine is None or engine.name == "offline":
        # No model offline: high-quality resampling, and the revision says so.
        runtime.steps.append(
            {"op": op.op, "engine": "offline", "fallback": "lanczos", "offline": True, "size": op.size}
        )
        return image.resize(target, Image.Resampling.LANCZOS)
    frame = px.engine_input(image)
    result = _generate(
        runtime,
        op.op,
        ImageRequest(
            prompt=UPSCALE,
            aspect_ratio=frame.aspect_ratio,
            size=op.size,
            images=(InputImage(px.png_bytes(frame.canvas), "image/png", "edit"),),
        ),
    )
    return px.with_alpha_of(px.from_engine(result, frame, target), image)


def _generate(runtime: Runtime, step: str, request: ImageRequest) -> Image.Image:
    """One engine call; its image is validated like any upload (a model's output is input too)."""
    engine = runtime.engine
    if engine is None:
        raise AssertionError("a model step reached a runtime without an engine")
    result = engine.generate(request)
    try:
        decoded = px.decode_image(result.data, runtime.policy.image_limits)
    except InvalidImage as error:
        raise EnginePermanentError(f"The model returned an unusable image: {error.detail}") from error
    offline = result.engine == "offline" or bool(result.metadata.get("offline"))
    runtime.steps.append(
        {
            "op": step,
            "engine": result.engine,
            "model": result.model,
            "offline": offline,
            "size": request.size,
            "aspect_ratio": request.aspect_ratio,
        }
    )
    return decoded.image


def _encode(
    asset: AssetDoc,
    operations: Sequence[Operation],
    image: Image.Image,
    icc: bytes | None,
    scale: int,
    runtime: Runtime,
) -> Computed:
    from shared.imaging import thumbnail_from_image

    if image.mode == "RGBA" and not px.has_transparency(image):
        image = image.convert("RGB")  # opaque after all: no alpha channel to store
    last = operations[-1]
    if isinstance(last, Output):
        fmt, quality, max_bytes = last.format.upper(), last.quality, last.max_bytes
    else:
        lossless = image.mode == "RGBA" or any(isinstance(op, Inpaint) for op in operations)
        fmt = "PNG" if lossless else {"image/jpeg": "JPEG", "image/webp": "WEBP"}.get(asset.content_type, "PNG")
        quality, max_bytes = None, None
    pixels = px.prepare_for(image, fmt)
    try:
        encoded = px.encode(pixels, fmt, quality=quality, max_bytes=max_bytes, icc_profile=icc)
    except px.EditRefused as error:
        error.extensions.update(asset_id=asset.id, operation_index=len(operations) - 1)
        raise
    thumbnail = thumbnail_from_image(pixels, runtime.policy.thumbnail_max_side)
    steps = list(runtime.steps)
    metadata = {
        "operations": [_stored_op(op) for op in operations],
        "steps": steps,
        "engines": sorted({str(step["engine"]) for step in steps}),
        "offline": any(step.get("offline") for step in steps),
        "output": {"format": encoded.format.lower(), "quality": encoded.quality, "bytes": len(encoded.data)},
        "has_alpha": encoded.has_alpha,
        "source_revision": asset.current_revision,
    }
    if scale > 1:
        metadata["decode_scale"] = scale
    if any(step.get("fallback") for step in steps):
        metadata["fallback"] = next(step["fallback"] for step in steps if step.get("fallback"))
    return Computed(asset.current_revision, encoded, thumbnail, metadata)


def _stored_op(op: Operation) -> dict[str, Any]:
    return op.model_dump(mode="json", exclude={"mask"} if isinstance(op, Inpaint) else None)


def describe(operations: Sequence[Operation]) -> str:
    """A short label of the pipeline, for the revision list ("remove_background, crop 1:1, output webp")."""
    parts = []
    for op in operations:
        if isinstance(op, Crop):
            parts.append(
                f"crop {op.aspect}" if op.aspect else f"crop {op.box.width}x{op.box.height}" if op.box else "crop"
            )
        elif isinstance(op, Resize):
            parts.append(f"resize {op.width or ''}x{op.height or ''}".rstrip("x"))
        elif isinstance(op, Background):
            parts.append(f"background {op.type}")
        elif isinstance(op, Upscale):
            parts.append(f"upscale {op.size}")
        elif isinstance(op, Output):
            parts.append(f"output {op.format}")
        else:
            parts.append(op.op)
    return ", ".join(parts)[:300]


def _revision(
    number: int,
    key: str,
    thumb_key: str,
    computed: Computed,
    operation: str,
    now: datetime,
    extra: dict[str, Any] | None = None,
) -> AssetRevision:
    return AssetRevision(
        number=number,
        key=key,
        thumbnail_key=thumb_key,
        content_type=computed.encoded.content_type,
        width=computed.encoded.width,
        height=computed.encoded.height,
        size_bytes=len(computed.encoded.data),
        operation=operation,
        created_at=now,
        metadata={**computed.metadata, **(extra or {})},
    )


def revision_out(asset_id: str, revision: AssetRevision, store: ObjectStore, expires_in: int) -> RevisionOut:
    return RevisionOut(
        asset_id=asset_id,
        revision=revision.number,
        operation=revision.operation,
        content_type=revision.content_type,
        width=revision.width,
        height=revision.height,
        size_bytes=revision.size_bytes,
        url=store.presigned_get(revision.key, expires_in=expires_in),
        thumbnail_url=store.presigned_get(revision.thumbnail_key, expires_in=expires_in),
        metadata=revision.metadata,
        created_at=revision.created_at,
    )


def _get_asset(assets: AssetRepository, client_id: str, asset_id: str) -> AssetDoc:
    asset = assets.get(client_id, asset_id)
    if asset is None:
        raise NotFound(f"No asset {asset_id}")
    return asset


# -- the synchronous path ---------------------------------------------------------------------------


def run_sync(
    assets: AssetRepository,
    store: ObjectStore,
    prepared: Prepared,
    *,
    client_id: str,
    policy: EditPolicy,
    now: datetime,
    expires_in: int,
) -> EditResultOut:
    """Compute every asset's result first (any refusal still writes nothing), then commit each."""
    operations = prepared.request.operations
    runtime = Runtime(policy, engine=None, remover=_no_remover)
    results = [
        (item.asset, compute(store, item.asset, operations, prepared.masks, runtime)) for item in prepared.assets
    ]
    revisions = []
    label = describe(operations)
    for asset, first in results:
        revision = _commit_sync(assets, store, client_id, asset, first, prepared, runtime, label, now)
        revisions.append(revision_out(asset.id, revision, store, expires_in))
    return EditResultOut(revisions=revisions)


def _commit_sync(
    assets: AssetRepository,
    store: ObjectStore,
    client_id: str,
    asset: AssetDoc,
    computed: Computed,
    prepared: Prepared,
    runtime: Runtime,
    label: str,
    now: datetime,
) -> AssetRevision:
    """One asset's new revision; recomputed on top of another edit that landed first."""
    for attempt in attempts(RECOMPUTE, f"edit asset {asset.id}"):
        if attempt:
            # Someone else's edit landed first: apply this pipeline on top of it.
            asset = _get_asset(assets, client_id, asset.id)
            computed = compute(store, asset, prepared.request.operations, prepared.masks, runtime)
        number = computed.base_revision + 1
        key, thumb_key = write_objects(store, client_id, asset.id, number, computed.encoded, computed.thumbnail)
        try:
            return commit_revision(
                assets,
                client_id=client_id,
                asset_id=asset.id,
                now=now,
                revision=_revision(number, key, thumb_key, computed, label, now),
            )
        except RevisionConflict:
            discard_objects(assets, store, client_id, asset.id, number, key, thumb_key)
    raise Conflict(f"Asset {asset.id} was edited concurrently; try again", asset_id=asset.id)


def _no_remover() -> BackgroundRemover:
    raise AssertionError("the synchronous path never removes backgrounds")


# -- jobs -------------------------------------------------------------------------------------------


_OPERATION_COST = "cost_of_"  # the totals' per-operation keys: "cost_of_upscale"


@dataclass(frozen=True, kw_only=True)
class EditServices(EngineJobServices):
    """What edit jobs run with besides the lifecycle's services."""

    edit: EditPolicy
    assets: AssetRepository
    # Resolved on first use: rembg is loaded only when a job removes a background.
    remover: Callable[[], BackgroundRemover]


@dataclass(frozen=True, kw_only=True)
class EditOrder(JobOrder):
    """A request for an edit job: the validated and quoted pipeline (``amount`` is its quote)."""

    prepared: Prepared


class EditJobs(JobKind[EditJobDoc, EditItemDoc, EditServices, EditOrder]):
    """``clients/{c}/edit_jobs``: one item per asset (at most ``EDIT_MAX_ASSETS``), written with the
    job; progress is read from the items. Settlement charges each edited asset's own quote."""

    collection = "edit_jobs"
    id_prefix = "edj"
    noun = "edit job"
    label = "edit job"
    completed_event = EventType.EDIT_JOB_COMPLETED
    worker = "edit_tasks"
    task_prefix = "edit-"
    hold_prefix = "edit"
    operation = "edit"
    job_model = EditJobDoc
    item_model = EditItemDoc
    # A pipeline may hold several model steps (each up to GEMINI_TIMEOUT_SECONDS) and background
    # removal on the worker's CPU: the most Cloud Tasks allows.
    item_deadline = MAX_DISPATCH_DEADLINE

    def store(self, platform: Platform) -> JobStore[EditJobDoc, EditItemDoc]:
        return platform.job_store(self)

    def dependencies(self, platform: Platform) -> EditServices:
        policy = edit_policy(platform.settings)

        def remover() -> BackgroundRemover:
            from shared.editing.background import shared_remover

            return shared_remover(policy.rembg_model_path)

        return EditServices(
            **self.lifecycle_services(platform, policy.batch),
            edit=policy,
            assets=platform.catalog.assets,
            engines=lambda: platform.engine,
            remover=remover,
        )

    # -- steps ------------------------------------------------------------------------------------

    def record(
        self, services: EditServices, order: EditOrder, job_id: str, hold_id: str
    ) -> tuple[EditJobDoc, Sequence[EditItemDoc]]:
        """The masks go to the object store; the job is written with one item per asset."""
        client_id, prepared, now = order.client_id, order.prepared, services.clock()
        mask_keys = {}
        for index, mask in prepared.masks.items():
            mask_keys[str(index)] = _mask_key(client_id, job_id, index)
            services.store.put(mask_keys[str(index)], px.png_bytes(mask, compress_level=6), "image/png")
        job = EditJobDoc(
            id=job_id,
            client_id=client_id,
            operations=[_stored_op(op) for op in prepared.request.operations],
            mask_keys=mask_keys,
            asset_ids=[item.asset.id for item in prepared.assets],
            item_count=len(prepared.assets),
            cost=order.amount,
            hold_id=hold_id,
            price_list_version=prepared.quote.price_list_version,
            created_by=order.user_id,
            created_at=now,
            updated_at=now,
            request_fingerprint=order.request_key.fingerprint if order.request_key is not None else None,
        )
        items = [
            EditItemDoc(
                index=index, asset_id=item.asset.id, cost=item.cost, costs=item.costs_by_operation, updated_at=now
            )
            for index, item in enumerate(prepared.assets)
        ]
        return job, items

    def work(self, services: EditServices, run: ItemRun[EditJobDoc, EditItemDoc]) -> Finished:
        return _edit_item(services, run)

    # -- rules ------------------------------------------------------------------------------------

    def tally(self, job: EditJobDoc, item: EditItemDoc) -> dict[str, int]:
        if item.status is not ItemStatus.SUCCEEDED:
            return {}
        return {"succeeded_cost": item.cost} | {_OPERATION_COST + op: amount for op, amount in item.costs.items()}

    def charge(self, job: EditJobDoc, totals: Totals) -> int:
        return totals["succeeded_cost"]

    def charge_breakdown(self, job: EditJobDoc, totals: Totals) -> dict[str, int]:
        by_operation = {
            name.removeprefix(_OPERATION_COST): amount
            for name, amount in totals.values.items()
            if name.startswith(_OPERATION_COST) and amount
        }
        # Items from before costs were recorded per operation: keep the job's own total exact.
        return by_operation if sum(by_operation.values()) == self.charge(job, totals) else {}

    def settle_reason(self, job: EditJobDoc, totals: Totals) -> str:
        return f"edit job {job.id}: {totals.succeeded} of {job.item_count} assets edited; failures refunded"

    def settlement(self, totals: Totals, captured: int, released: int) -> dict[str, int]:
        return {"captured": captured, "released": released, "succeeded": totals.succeeded, "failed": totals.failed}

    def transient(self, error: EpoxError) -> bool:
        # A missing background-removal model is a deployment problem that retrying will not fix.
        return not isinstance(error, BackgroundRemovalUnavailable) and super().transient(error)


EDITS = EditJobs()


def _mask_key(client_id: str, job_id: str, index: int) -> str:
    return f"clients/{client_id}/edit_jobs/{job_id}/mask-{index}.png"


def create_job(
    services: EditServices,
    prepared: Prepared,
    *,
    client_id: str,
    user_id: str,
    request_key: RequestKey | None,
    billing: BillingReader,
) -> EditJobDoc:
    """Reserve the quote as one hold, keep the masks, write the job and its items in one commit,
    and enqueue one fan-out task. The same Idempotency-Key returns the same job, reserving nothing;
    with another request it is a 409. Paid edits of a client past the payment grace period are a 402."""
    if prepared.quote.total > 0:
        from shared.billing.catalog import load_catalog
        from shared.billing.service import require_good_standing

        require_good_standing(billing, load_catalog(), client_id, services.clock())
    order = EditOrder(
        client_id=client_id,
        user_id=user_id,
        request_key=request_key,
        amount=prepared.quote.total,
        prepared=prepared,
    )
    return lifecycle.accept(EDITS, services, order)


def job_out(jobs: JobStore[EditJobDoc, EditItemDoc], job: EditJobDoc) -> EditJobOut:
    progress = lifecycle.progress(EDITS, jobs, job)  # at most EDIT_MAX_ASSETS (100) items: all of them
    return EditJobOut(
        id=job.id,
        status=job.status,
        operations=job.operations,
        asset_count=job.item_count,
        cost=job.cost,
        counts=progress.counts,
        progress=progress.fraction,
        items=[EditItemOut(**item.model_dump(include=set(EditItemOut.model_fields))) for item in progress.items],
        settlement=job.settlement,
        created_at=job.created_at,
        finished_at=job.finished_at,
    )


def _operations(store: ObjectStore, job: EditJobDoc) -> tuple[list[Operation], dict[int, Image.Image]]:
    """The job's pipeline as models again, with its masks read back from the object store."""
    from pydantic import TypeAdapter

    from shared.imaging import ImageLimits

    masks: dict[int, Image.Image] = {}
    stored = []
    for index, raw in enumerate(job.operations):
        key = job.mask_keys.get(str(index))
        if key is not None:
            data = store.get(key)
            raw = {**raw, "mask": data}
            masks[index] = px.decode_mask(data, ImageLimits(allowed_formats=frozenset({"PNG"})), index=index)
        stored.append(raw)
    operations: list[Operation] = TypeAdapter(list[Operation]).validate_python(stored)
    return operations, masks


def _edit_item(services: EditServices, run: ItemRun[EditJobDoc, EditItemDoc]) -> Finished:
    """The new revision, committed together with the item's success (so a redelivery never makes a
    second one); a lost race with another edit of the asset is recomputed on top of it."""
    assets, store, policy, jobs = services.assets, services.store, services.edit, services.jobs
    engine, remover = services.engine, services.remover
    job, item = run.job, run.item
    if any(op.get("op") == "remove_background" for op in job.operations):
        check_model_path(policy.rembg_model_path)
    operations, masks = _operations(store, job)
    runtime = Runtime(policy, engine=engine, remover=remover)
    label = describe(operations)
    for _attempt in attempts(RECOMPUTE, f"edit asset {item.asset_id} for {job.id}"):
        asset = _get_asset(assets, job.client_id, item.asset_id)
        computed = compute(store, asset, operations, masks, runtime)
        number = computed.base_revision + 1
        key, thumb_key = write_objects(store, job.client_id, asset.id, number, computed.encoded, computed.thumbnail)
        revision = _revision(number, key, thumb_key, computed, label, run.now, {"job_id": job.id})
        # The store's handle on the item, guarded by this delivery's version: finished in the same
        # commit as the revision.
        changes = run.changes(ItemStatus.SUCCEEDED, revision=number, failure=None)
        guard = jobs.item_guard(job.client_id, job.id, item.index, run.version, changes)
        try:
            commit_revision(
                assets,
                client_id=job.client_id,
                asset_id=asset.id,
                revision=revision,
                now=run.now,
                item=guard,
            )
            return Finished(f"item {item.index} succeeded: revision {number}")
        except (RevisionConflict, ItemTaken):
            # Lost for certain (commit_revision recognises a commit of ours whose answer was lost).
            discard_objects(assets, store, job.client_id, asset.id, number, key, thumb_key)
            if jobs.item_moved(job.client_id, job.id, item.index, run.version):
                raise ItemTakenOver(f"{item.index:06d}") from None
    raise RetryTask("the asset kept changing while it was being edited", retry_after=5)


# -- revert -----------------------------------------------------------------------------------------


def revert(
    assets: AssetRepository,
    store: ObjectStore,
    *,
    client_id: str,
    asset_id: str,
    number: int,
    now: datetime,
    expires_in: int,
) -> RevisionOut:
    """A NEW revision with the pixels of revision ``number`` (history stays append-only); it points at
    the same immutable objects, so nothing is copied."""
    new = revert_asset(assets, client_id, asset_id, number, now)
    return revision_out(asset_id, new, store, expires_in)
