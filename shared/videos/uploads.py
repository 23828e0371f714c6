"""Videos a merchant brings: uploaded like images (a slot, a presigned PUT, then "complete"), checked and
stored by the video worker, then edited like any video asset (``POST /videos/assets/{id}/edits``).

* ``POST /videos/uploads`` opens one of the catalog's upload slots (purpose ``video``: the same documents,
  the same cap on pending slots and the same sweep) for an MP4, MOV or WebM of at most
  ``VIDEO_UPLOAD_MAX_BYTES``, optionally for one of the client's products (another client's is a 404).
* ``POST /videos/uploads/{id}/complete`` finds the file PUT and hands it to ``video_tasks`` (only the worker
  loads PyAV): the slot is ``processing`` and one task, named after the upload, is enqueued.
* The task probes the file. One that is not a video, empty, cut short or damaged, in a codec we do not take
  (video H.264, HEVC, VP8, VP9 or AV1; sound AAC, MP3, Opus, Vorbis, ALAC, FLAC or PCM), longer than
  ``VIDEO_MAX_SECONDS`` or larger than allowed is ``rejected`` with that problem's code and detail
  (``GET /videos/uploads/{id}`` shows it) and nothing is stored. Otherwise it becomes a video asset
  (``origin: upload``, under an id derived from the upload's, so a redelivery stores nothing twice): kept
  as uploaded when it is an MP4 every browser plays (H.264 yuv420p, AAC or no sound), else re-encoded once
  to one; with its poster frame, thumbnail and probed facts. The slot is then ``completed`` with its
  ``asset_id``. Uploads are free.

A video the worker never finishes (every delivery failed) is rejected by the catalog's upload sweep once
``PROCESSING_WINDOW`` has passed, so no slot stays ``processing`` for ever.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, Field, StringConstraints

from shared.catalog.assets import NewAsset, create_asset
from shared.catalog.models import (
    VIDEO_CONTENT_TYPES,
    AssetKind,
    AssetOrigin,
    Id,
    MediaKind,
    StrictModel,
    UploadCreate,
    UploadDoc,
    UploadOut,
    UploadPurpose,
    UploadStatus,
)
from shared.catalog.products import get_product
from shared.catalog.uploads import (
    UploadExpired,
    UploadNotReceived,
    UploadPolicy,
    UploadRejected,
    open_slot,
    reject_upload,
    upload_out,
)
from shared.errors import EpoxError, NotFound, PayloadTooLarge, ValidationFailed
from shared.tasks import TaskRequest, task_name
from shared.text import SINGLE_LINE

if TYPE_CHECKING:
    from shared.catalog.ports import CatalogRepositories, UploadRepository
    from shared.config import Settings
    from shared.storage import ObjectStore
    from shared.tasks import TaskQueue

logger = logging.getLogger("epox.video")

WORKER = "video_tasks"
TASK_PATH = "/tasks/upload"
# Past the queue's whole retry schedule (8 attempts, up to 10 minutes apart, each up to 15 minutes): a
# video still processing this long after completion was given up on, and the sweep rejects it.
PROCESSING_WINDOW = timedelta(hours=3)
TASK_DEADLINE = timedelta(minutes=15)  # re-encoding a 30 s 4K clip on video_tasks' 2 vCPUs takes minutes


class VideoUploadCreate(StrictModel):
    """``POST /videos/uploads``: the file to come (its exact size, the PUT is bound to it)."""

    filename: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255), SINGLE_LINE]
    content_type: Annotated[str, StringConstraints(strip_whitespace=True, to_lower=True, max_length=100), SINGLE_LINE]
    size_bytes: int = Field(gt=0)
    product_id: Id | None = None  # one of the client's products: the video asset is linked to it


class VideoUploadTask(BaseModel):
    """The video worker's task: probe and store one completed upload."""

    client_id: str
    upload_id: str


@dataclass(frozen=True)
class VideoUploadPolicy:
    max_bytes: int
    max_seconds: int
    slots: UploadPolicy  # the catalog's: presigned URL lifetime, pending slots per client


def video_upload_policy(settings: Settings) -> VideoUploadPolicy:
    from shared.catalog.policies import upload_policy

    return VideoUploadPolicy(
        max_bytes=settings.video_upload_max_bytes,
        max_seconds=settings.video_max_seconds,
        slots=upload_policy(settings),
    )


def upload_asset_id(upload_id: str) -> str:
    """The asset an upload becomes (the catalog derives its images' ids the same way)."""
    return upload_id.replace("upl_", "ast_", 1)


def upload_task(client_id: str, upload_id: str) -> TaskRequest:
    """Named after the upload: completing twice enqueues one task."""
    return TaskRequest(
        target=WORKER,
        path=TASK_PATH,
        payload=VideoUploadTask(client_id=client_id, upload_id=upload_id),
        name=task_name("video-upload", client_id, upload_id),
        dispatch_deadline=TASK_DEADLINE,
    )


def _field_error(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, errors=[{"field": field, "in": "body", "message": message, "type": "value_error"}])


# -- the API's side ---------------------------------------------------------------------------------------


def create_video_upload(
    repos: CatalogRepositories,
    store: ObjectStore,
    client_id: str,
    data: VideoUploadCreate,
    policy: VideoUploadPolicy,
    now: datetime,
) -> UploadOut:
    """A slot for a video of at most ``max_bytes`` (413 above), of one of the client's products (404
    otherwise), with its presigned PUT."""
    if data.content_type not in VIDEO_CONTENT_TYPES:
        raise _field_error("content_type", f"Videos must be one of {', '.join(VIDEO_CONTENT_TYPES)}")
    if data.size_bytes > policy.max_bytes:
        raise PayloadTooLarge(f"Videos may be at most {policy.max_bytes} bytes", limit=policy.max_bytes)
    if data.product_id:
        get_product(repos.products, client_id, data.product_id)
    slot = UploadCreate(
        filename=data.filename,
        content_type=data.content_type,
        size_bytes=data.size_bytes,
        purpose=UploadPurpose.VIDEO,
        product_id=data.product_id,
    )
    return open_slot(repos.uploads, store, client_id, slot, policy.slots, now)


def get_video_upload(uploads: UploadRepository, client_id: str, upload_id: str) -> UploadDoc:
    """The client's video upload, or 404 (also for an image or CSV upload's id)."""
    doc = uploads.get(client_id, upload_id)
    if doc is None or doc.purpose is not UploadPurpose.VIDEO:
        raise NotFound(f"No video upload {upload_id}")
    return doc


def complete_video_upload(
    repos: CatalogRepositories, store: ObjectStore, queue: TaskQueue, client_id: str, upload_id: str, now: datetime
) -> UploadOut:
    """Hand the uploaded file to the video worker: the slot is ``processing`` (409 before the PUT or once
    the slot expired). Completing again returns the slot as it stands (and enqueues nothing new while its
    task is known to the queue)."""
    doc = get_video_upload(repos.uploads, client_id, upload_id)
    if doc.status in (UploadStatus.COMPLETED, UploadStatus.REJECTED):
        return upload_out(doc)
    if doc.status is UploadStatus.EXPIRED:
        raise UploadExpired("The upload slot expired before it was completed; ask for a new one")
    if doc.status is UploadStatus.PENDING:
        if store.head(doc.key) is None:
            raise UploadNotReceived("PUT the file to the upload URL before completing the upload")
        # The worker reads the raw object: the sweep leaves it until the worker has had its chance.
        sweep_at = max(doc.sweep_at or now, now + PROCESSING_WINDOW)
        changes: dict[str, Any] = {"status": UploadStatus.PROCESSING.value, "sweep_at": sweep_at}
        repos.uploads.update(client_id, doc.id, changes)
        doc = doc.model_copy(update={"status": UploadStatus.PROCESSING, "sweep_at": sweep_at})
    queue.enqueue(upload_task(client_id, doc.id))
    return upload_out(doc)


# -- the worker's side ------------------------------------------------------------------------------------


class UploadProcessingFailed(EpoxError):
    """Recorded (never answered) when the worker's last delivery failed for a reason of ours."""

    status = 500
    code = "upload_processing_failed"
    title = "The upload could not be processed"


def process_video_upload(
    repos: CatalogRepositories,
    store: ObjectStore,
    task: VideoUploadTask,
    policy: VideoUploadPolicy,
    now: datetime,
    *,
    last_attempt: bool,
) -> str:
    """Probe the uploaded file: a video asset, or the upload rejected with the problem the file is.
    Transient failures go back to the queue; on the last attempt the upload is rejected instead."""
    doc = repos.uploads.get(task.client_id, task.upload_id)
    if doc is None or doc.purpose is not UploadPurpose.VIDEO:
        return "no such video upload"
    if doc.status is not UploadStatus.PROCESSING:
        return f"upload already {doc.status.value}"
    asset_id = upload_asset_id(doc.id)
    try:
        if repos.assets.get(doc.client_id, asset_id) is None:  # else stored by a delivery that died after
            _store(repos, store, doc, asset_id, policy, now)
    except EpoxError as error:
        if error.status >= 500 and not last_attempt:
            raise
        recorded = error if error.status < 500 else _failed()
        _reject(repos.uploads, store, doc, recorded, now)
        return f"upload rejected: {recorded.code}"
    except Exception:
        if not last_attempt:
            raise
        logger.exception("video upload %s of %s failed on its last attempt", doc.id, doc.client_id)
        _reject(repos.uploads, store, doc, _failed(), now)
        return "upload rejected: upload_processing_failed"
    changes = {"status": UploadStatus.COMPLETED.value, "asset_id": asset_id, "completed_at": now}
    repos.uploads.update(doc.client_id, doc.id, changes)
    store.delete(doc.key)  # the asset has its own copy; a late PUT to the raw key is swept
    return f"upload stored as {asset_id}"


def _failed() -> UploadProcessingFailed:
    return UploadProcessingFailed("The video could not be processed; upload it again")


def _reject(uploads: UploadRepository, store: ObjectStore, doc: UploadDoc, error: EpoxError, now: datetime) -> None:
    logger.info("video upload %s of %s rejected: %s", doc.id, doc.client_id, error.code)
    reject_upload(uploads, store, doc, error, now)


def _store(
    repos: CatalogRepositories,
    store: ObjectStore,
    doc: UploadDoc,
    asset_id: str,
    policy: VideoUploadPolicy,
    now: datetime,
) -> None:
    from shared.video.media import VideoLimits, VideoTooLarge
    from shared.videos import assemble

    found = store.head(doc.key)
    if found is None:
        raise UploadRejected("The uploaded file is gone; upload it again", reason="missing")
    if found.size > policy.max_bytes:
        raise VideoTooLarge(
            f"The video is {found.size} bytes; at most {policy.max_bytes} are accepted", max_bytes=policy.max_bytes
        )
    data = store.get(doc.key, max_bytes=policy.max_bytes)
    if data and len(data) != doc.size_bytes:  # an empty file is the probe's to name
        raise UploadRejected(
            f"The stored file has {len(data)} bytes; {doc.size_bytes} were announced", reason="size_mismatch"
        )
    limits = VideoLimits(max_bytes=policy.max_bytes, max_seconds=float(policy.max_seconds))
    video, info, original = assemble.uploaded(data, limits)
    poster, thumbnail = assemble.stills(video)
    product_id = doc.product_id
    if product_id is not None and repos.products.get(doc.client_id, product_id) is None:
        product_id = None  # deleted since the slot was opened: the video stays, unlinked
    metadata: dict[str, Any] = {
        "video": info.as_metadata(),
        "upload": {
            "upload_id": doc.id,
            "filename": doc.filename,
            "content_type": doc.content_type,
            "size_bytes": original.size_bytes,
            "video_codec": original.video_codec,
            "audio_codec": original.audio_codec,
            "width": original.width,
            "height": original.height,
            "re_encoded": video is not data,
        },
    }
    new = NewAsset(
        asset_id=asset_id,
        client_id=doc.client_id,
        kind=AssetKind.VIDEO,
        source=AssetOrigin.UPLOAD.value,
        origin=AssetOrigin.UPLOAD,
        operation="upload",
        product_id=product_id,
        metadata=metadata,
        revision_metadata=metadata,
        media=MediaKind.VIDEO,
        duration_seconds=round(info.duration_seconds, 3),
    )
    create_asset(repos.assets, store, new, assemble.EncodedVideo(video, info), thumbnail, now, poster=poster)
