"""Upload slots against the in-memory repositories: the pending cap, completion, rejection, expiry
and the sweep (no emulator)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.catalog import products, uploads
from shared.catalog.models import ProductCreate, UploadCreate, UploadPurpose, UploadStatus
from shared.catalog.ports import CatalogRepositories
from shared.errors import NotFound, ValidationFailed
from shared.imaging import ImageLimits
from tests import images
from tests.fakes import InMemoryObjectStore
from tests.fakes_catalog import InMemoryProductRepository, InMemoryUploadRepository, in_memory_catalog

CLIENT = "client_a"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = uploads.UploadPolicy(
    image_max_bytes=1_000_000,
    csv_max_bytes=100_000,
    presign_expiry_seconds=600,
    image_limits=ImageLimits(),
    thumbnail_max_side=32,
    max_pending=2,
)


def setup() -> tuple[CatalogRepositories, InMemoryObjectStore, str]:
    repos = in_memory_catalog()
    assert isinstance(repos.products, InMemoryProductRepository)
    repos.products.billing[CLIENT] = {"plan": "starter", "product_slots": 5}
    product = products.create_product(repos.products, CLIENT, ProductCreate(name="Lamp"), NOW)
    return repos, InMemoryObjectStore(), product.id


def image_slot(repos: CatalogRepositories, store: InMemoryObjectStore, product_id: str, size: int) -> str:
    data = UploadCreate(filename="a.png", content_type="image/png", size_bytes=size, product_id=product_id)
    return uploads.create_upload(repos, store, CLIENT, data, POLICY, NOW).id


def test_pending_slots_are_capped_and_a_slot_that_goes_past_the_cap_is_withdrawn() -> None:
    repos, store, product_id = setup()
    image_slot(repos, store, product_id, 10)
    image_slot(repos, store, product_id, 10)
    with pytest.raises(uploads.TooManyPendingUploads) as refused:
        image_slot(repos, store, product_id, 10)
    assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "600"
    assert isinstance(repos.uploads, InMemoryUploadRepository) and len(repos.uploads.uploads) == 2
    # Once their URLs have expired, slots no longer count.
    later = NOW + timedelta(seconds=601)
    data = UploadCreate(filename="b.png", content_type="image/png", size_bytes=10, product_id=product_id)
    assert uploads.create_upload(repos, store, CLIENT, data, POLICY, later).status is UploadStatus.PENDING


def test_an_image_slot_needs_a_product_of_the_client() -> None:
    repos, store, _ = setup()
    with pytest.raises(NotFound):
        image_slot(repos, store, "prod_other", 10)
    data = UploadCreate(filename="a.png", content_type="image/png", size_bytes=10)
    with pytest.raises(ValidationFailed):
        uploads.create_upload(repos, store, CLIENT, data, POLICY, NOW)


def test_a_completed_image_becomes_an_asset_and_completing_again_answers_the_same() -> None:
    repos, store, product_id = setup()
    photo = images.png((20, 10))
    upload_id = image_slot(repos, store, product_id, len(photo))
    with pytest.raises(uploads.UploadNotReceived):
        uploads.complete_upload(repos, store, CLIENT, upload_id, POLICY, NOW)
    store.put(uploads.raw_upload_key(CLIENT, upload_id), photo, "image/png")
    done = uploads.complete_upload(repos, store, CLIENT, upload_id, POLICY, NOW)
    assert done.status is UploadStatus.COMPLETED and done.asset_id == upload_id.replace("upl_", "ast_", 1)
    asset = repos.assets.get(CLIENT, done.asset_id)
    assert asset is not None and (asset.width, asset.height, asset.source) == (20, 10, "upload")
    assert uploads.raw_upload_key(CLIENT, upload_id) not in store.objects  # the raw upload is not kept
    assert uploads.complete_upload(repos, store, CLIENT, upload_id, POLICY, NOW) == done


def test_a_file_of_another_size_is_rejected_and_stays_rejected() -> None:
    repos, store, product_id = setup()
    upload_id = image_slot(repos, store, product_id, 50)
    store.put(uploads.raw_upload_key(CLIENT, upload_id), b"x" * 51, "image/png")
    with pytest.raises(uploads.UploadRejected) as first:
        uploads.complete_upload(repos, store, CLIENT, upload_id, POLICY, NOW)
    with pytest.raises(uploads.UploadRejected) as again:
        uploads.complete_upload(repos, store, CLIENT, upload_id, POLICY, NOW)
    assert (again.value.code, again.value.detail) == (first.value.code, first.value.detail)
    assert store.objects == {}


def test_a_csv_is_copied_where_imports_read_it() -> None:
    repos, store, _ = setup()
    body = b"name,sku\nLamp,L-1\n"
    data = UploadCreate(
        filename="p.csv", content_type="text/csv", size_bytes=len(body), purpose=UploadPurpose.CSV_IMPORT
    )
    upload_id = uploads.create_upload(repos, store, CLIENT, data, POLICY, NOW).id
    store.put(uploads.raw_upload_key(CLIENT, upload_id), body, "text/csv")
    uploads.complete_upload(repos, store, CLIENT, upload_id, POLICY, NOW)
    doc = uploads.get_upload(repos.uploads, CLIENT, upload_id)
    assert doc.file_key == uploads.stored_csv_key(CLIENT, upload_id) and store.get(doc.file_key) == body


def test_the_sweep_expires_slots_never_completed_and_removes_late_puts() -> None:
    repos, store, product_id = setup()
    photo = images.png((8, 8))
    pending = image_slot(repos, store, product_id, len(photo))
    completed = image_slot(repos, store, product_id, len(photo))
    store.put(uploads.raw_upload_key(CLIENT, completed), photo, "image/png")
    uploads.complete_upload(repos, store, CLIENT, completed, POLICY, NOW)
    store.put(uploads.raw_upload_key(CLIENT, completed), photo, "image/png")  # a late PUT with the URL
    store.put(uploads.raw_upload_key(CLIENT, pending), photo, "image/png")

    assert uploads.sweep_uploads(repos.uploads, store, NOW, client_id=CLIENT).swept == 0  # not due yet
    later = NOW + timedelta(seconds=600) + uploads.SWEEP_GRACE + timedelta(seconds=1)
    report = uploads.sweep_uploads(repos.uploads, store, later, client_id=CLIENT)
    assert report.swept == 2 and report.expired == {CLIENT: [pending]} and not report.more
    assert uploads.get_upload(repos.uploads, CLIENT, pending).status is UploadStatus.EXPIRED
    assert uploads.get_upload(repos.uploads, CLIENT, completed).status is UploadStatus.COMPLETED
    assert not [key for key in store.objects if key.startswith("uploads/")]
    with pytest.raises(uploads.UploadExpired):
        uploads.complete_upload(repos, store, CLIENT, pending, POLICY, later)
    assert uploads.sweep_uploads(repos.uploads, store, later, client_id=CLIENT).swept == 0  # done once


def test_a_completion_that_gets_in_before_the_sweep_keeps_its_status() -> None:
    repos, store, product_id = setup()
    upload_id = image_slot(repos, store, product_id, 10)
    later = NOW + timedelta(hours=1)
    [due] = repos.uploads.due_for_sweep(later, 10, CLIENT)
    repos.uploads.update(CLIENT, upload_id, {"status": UploadStatus.COMPLETED.value})  # after the sweep read it
    from shared.catalog.models import UploadDoc
    from shared.catalog.ports import StaleWrite, Versioned

    read = Versioned(UploadDoc.model_validate(due.data), due.version)
    with pytest.raises(StaleWrite):
        repos.uploads.update_if_unchanged(read, {"status": UploadStatus.EXPIRED.value})
    assert uploads.get_upload(repos.uploads, CLIENT, upload_id).status is UploadStatus.COMPLETED
