"""Video uploads on the in-memory catalog and object store: one task per completion, a redelivery that
stores nothing twice, failures of ours retried then given up on the last attempt, the sweep rejecting a
video its worker never finished, and the catalog's routes keeping out of video slots. (The files
themselves, good and bad, go through the served functions in tests/integration/test_video_uploads.py.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.catalog import products, uploads
from shared.catalog.models import MediaKind, ProductCreate, UploadCreate, UploadPurpose, UploadStatus
from shared.catalog.ports import CatalogRepositories
from shared.errors import Conflict, NotFound, UpstreamUnavailable, ValidationFailed
from shared.imaging import ImageLimits
from shared.videos import uploads as video_uploads
from shared.videos.uploads import VideoUploadCreate, VideoUploadPolicy, VideoUploadTask
from tests.fakes import InMemoryObjectStore, RecordingTaskQueue
from tests.fakes_catalog import InMemoryAssetRepository, InMemoryProductRepository, in_memory_catalog
from tests.videos import make_clip

CLIENT, OTHER = "client_a", "client_b"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = VideoUploadPolicy(
    max_bytes=1_000_000,
    max_seconds=30,
    slots=uploads.UploadPolicy(
        image_max_bytes=1_000_000,
        csv_max_bytes=100_000,
        presign_expiry_seconds=600,
        image_limits=ImageLimits(),
        thumbnail_max_side=32,
        max_pending=5,
    ),
)
CLIP = make_clip(64, 36, 24, 1.0, audio=False)


class FlakyStore(InMemoryObjectStore):
    """R2 down for reads."""

    def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        raise UpstreamUnavailable("R2 is down")


def catalog() -> tuple[CatalogRepositories, str]:
    repos = in_memory_catalog()
    assert isinstance(repos.products, InMemoryProductRepository)
    repos.products.billing[CLIENT] = {"plan": "starter", "product_slots": 5}
    product = products.create_product(repos.products, CLIENT, ProductCreate(name="Lamp"), NOW)
    return repos, product.id


def completed(repos: CatalogRepositories, store: InMemoryObjectStore, queue: RecordingTaskQueue) -> str:
    """A video slot whose file was PUT, completed: its id (the task is in ``queue``)."""
    data = VideoUploadCreate(filename="clip.mp4", content_type="video/mp4", size_bytes=len(CLIP))
    slot = video_uploads.create_video_upload(repos, store, CLIENT, data, POLICY, NOW)
    store.put(uploads.raw_upload_key(CLIENT, slot.id), CLIP, "video/mp4")
    out = video_uploads.complete_video_upload(repos, store, queue, CLIENT, slot.id, NOW)
    assert out.status is UploadStatus.PROCESSING
    return slot.id


def process(
    repos: CatalogRepositories, store: InMemoryObjectStore, upload_id: str, *, last_attempt: bool = False
) -> str:
    task = VideoUploadTask(client_id=CLIENT, upload_id=upload_id)
    return video_uploads.process_video_upload(repos, store, task, POLICY, NOW, last_attempt=last_attempt)


def test_completing_twice_enqueues_one_task_and_a_redelivery_stores_nothing_twice() -> None:
    repos, _ = catalog()
    store, queue = InMemoryObjectStore(), RecordingTaskQueue()
    upload_id = completed(repos, store, queue)
    video_uploads.complete_video_upload(repos, store, queue, CLIENT, upload_id, NOW)
    (task,) = queue.tasks
    assert (task.target, task.path, task.payload) == (
        "video_tasks",
        "/tasks/upload",
        VideoUploadTask(client_id=CLIENT, upload_id=upload_id),
    )
    asset_id = upload_id.replace("upl_", "ast_", 1)
    assert process(repos, store, upload_id) == f"upload stored as {asset_id}"
    assert process(repos, store, upload_id) == "upload already completed"
    # A delivery that stored the asset, then died before recording the upload: the next one records it.
    repos.uploads.update(CLIENT, upload_id, {"status": UploadStatus.PROCESSING.value, "asset_id": None})
    assert process(repos, store, upload_id) == f"upload stored as {asset_id}"
    assets = repos.assets
    assert isinstance(assets, InMemoryAssetRepository)
    assert [(doc.id, doc.media) for doc in assets.assets[CLIENT].values()] == [(asset_id, MediaKind.VIDEO)]
    done = video_uploads.get_video_upload(repos.uploads, CLIENT, upload_id)
    assert (done.status, done.asset_id) == (UploadStatus.COMPLETED, asset_id)
    assert store.head(uploads.raw_upload_key(CLIENT, upload_id)) is None


def test_a_failure_of_ours_goes_back_to_the_queue_until_the_last_attempt_rejects_the_upload() -> None:
    repos, _ = catalog()
    store, queue = FlakyStore(), RecordingTaskQueue()
    upload_id = completed(repos, store, queue)
    with pytest.raises(UpstreamUnavailable):
        process(repos, store, upload_id)
    assert video_uploads.get_video_upload(repos.uploads, CLIENT, upload_id).status is UploadStatus.PROCESSING
    assert process(repos, store, upload_id, last_attempt=True) == "upload rejected: upload_processing_failed"
    doc = video_uploads.get_video_upload(repos.uploads, CLIENT, upload_id)
    assert doc.status is UploadStatus.REJECTED and doc.rejection is not None
    assert doc.rejection["code"] == "upload_processing_failed" and doc.asset_id is None


def test_the_sweep_rejects_a_video_its_worker_never_finished_and_leaves_one_in_time() -> None:
    repos, _ = catalog()
    store, queue = InMemoryObjectStore(), RecordingTaskQueue()
    upload_id = completed(repos, store, queue)
    raw = uploads.raw_upload_key(CLIENT, upload_id)
    # Past the presigned URL's expiry (when a slot's raw object is usually swept): the worker still needs it.
    report = uploads.sweep_uploads(repos.uploads, store, NOW + timedelta(hours=1), client_id=CLIENT)
    assert report.swept == 0 and store.head(raw) is not None
    report = uploads.sweep_uploads(
        repos.uploads, store, NOW + video_uploads.PROCESSING_WINDOW + timedelta(minutes=1), client_id=CLIENT
    )
    assert report.abandoned == {CLIENT: [upload_id]} and report.expired == {}
    doc = video_uploads.get_video_upload(repos.uploads, CLIENT, upload_id)
    assert doc.status is UploadStatus.REJECTED and doc.rejection is not None
    assert doc.rejection["code"] == "upload_processing_failed"
    assert store.head(raw) is None
    assert process(repos, store, upload_id) == "upload already rejected"


def test_video_slots_are_the_video_apis_and_the_product_must_be_the_clients() -> None:
    repos, product_id = catalog()
    store, queue = InMemoryObjectStore(), RecordingTaskQueue()
    data = UploadCreate(filename="a.mp4", content_type="video/mp4", size_bytes=10, purpose=UploadPurpose.VIDEO)
    with pytest.raises(ValidationFailed, match="/videos/uploads"):
        uploads.create_upload(repos, store, CLIENT, data, POLICY.slots, NOW)
    upload_id = completed(repos, store, queue)
    with pytest.raises(Conflict, match="/videos/uploads"):
        uploads.complete_upload(repos, store, CLIENT, upload_id, POLICY.slots, NOW)
    photo = UploadCreate(filename="a.png", content_type="image/png", size_bytes=10, product_id=product_id)
    image = uploads.create_upload(repos, store, CLIENT, photo, POLICY.slots, NOW)
    with pytest.raises(NotFound):
        video_uploads.get_video_upload(repos.uploads, CLIENT, image.id)
    with pytest.raises(NotFound):
        video_uploads.get_video_upload(repos.uploads, OTHER, upload_id)
    mine = VideoUploadCreate(filename="a.mp4", content_type="video/mp4", size_bytes=10, product_id=product_id)
    assert video_uploads.create_video_upload(repos, store, CLIENT, mine, POLICY, NOW).product_id == product_id
    with pytest.raises(NotFound):
        video_uploads.create_video_upload(repos, store, OTHER, mine, POLICY, NOW)
