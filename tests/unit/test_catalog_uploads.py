"""Upload slots against the in-memory repositories: the pending cap, completion, rejection, expiry
and the sweep (no emulator)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from shared.catalog import products, uploads
from shared.catalog.models import ProductCreate, UploadCreate, UploadPurpose, UploadStatus
from shared.catalog.ports import CatalogRepositories
from shared.errors import EpoxError, NotFound, ValidationFailed
from shared.imaging import ImageLimits
from tests import images, xlsx_files
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
    assert (doc.file_format, doc.sheets) == ("csv", [])


XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def spreadsheet_slot(repos: CatalogRepositories, store: InMemoryObjectStore, filename: str, content_type: str) -> str:
    data = UploadCreate(filename=filename, content_type=content_type, size_bytes=10, purpose=UploadPurpose.CSV_IMPORT)
    return uploads.create_upload(repos, store, CLIENT, data, POLICY, NOW).id


@pytest.mark.parametrize(
    ("filename", "content_type", "field", "message"),
    [
        ("p.xlsm", XLSX, "filename", "Macro-enabled workbooks (.xlsm)"),
        ("p.xlsx", "application/vnd.ms-excel.sheet.macroenabled.12", "content_type", "Macro-enabled"),
        ("p.xls", "application/vnd.ms-excel", "filename", "Old Excel workbooks (.xls)"),
        ("p.xlsb", "application/vnd.ms-excel.sheet.binary.macroenabled.12", "filename", ".xlsb"),
        ("p.ods", "application/vnd.oasis.opendocument.spreadsheet", "filename", ".ods"),
        ("p.csv", "application/octet-stream", "content_type", "must be one of"),
    ],
)
def test_spreadsheets_the_import_cannot_read_are_refused_when_the_slot_is_asked_for(
    filename: str, content_type: str, field: str, message: str
) -> None:
    repos, store, _ = setup()
    with pytest.raises(ValidationFailed, match=re.escape(message)) as refused:
        spreadsheet_slot(repos, store, filename, content_type)
    assert refused.value.extensions["errors"][0]["field"] == field


@pytest.mark.parametrize(
    ("filename", "content_type"),
    [("p.xlsx", XLSX), ("p.xlsx", "application/octet-stream"), ("p.csv", "application/vnd.ms-excel")],
)
def test_xlsx_and_windows_csv_slots_are_accepted(filename: str, content_type: str) -> None:
    repos, store, _ = setup()
    assert spreadsheet_slot(repos, store, filename, content_type).startswith("upl_")


def complete_spreadsheet(body: bytes, filename: str = "p.xlsx") -> tuple[str, CatalogRepositories, InMemoryObjectStore]:
    repos, store, _ = setup()
    data = UploadCreate(filename=filename, content_type=XLSX, size_bytes=len(body), purpose=UploadPurpose.CSV_IMPORT)
    upload_id = uploads.create_upload(repos, store, CLIENT, data, POLICY, NOW).id
    store.put(uploads.raw_upload_key(CLIENT, upload_id), body, XLSX)
    return upload_id, repos, store


def test_a_workbook_is_checked_and_kept_with_its_sheets() -> None:
    body = xlsx_files.workbook([["Name"], ["Lamp"]], more_sheets={"Hoodies": [["Name"], ["Hoodie"]]})
    upload_id, repos, store = complete_spreadsheet(body)
    done = uploads.complete_upload(repos, store, CLIENT, upload_id, POLICY, NOW)
    assert (done.status, done.file_format, done.sheets) == (UploadStatus.COMPLETED, "xlsx", ["Products", "Hoodies"])
    assert store.get(uploads.stored_csv_key(CLIENT, upload_id)) == body


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (xlsx_files.bomb(xlsx_files.workbook([["Name"], ["Lamp"]]), size=5 * 1024 * 1024), "xlsx_too_large"),
        (xlsx_files.encrypted(xlsx_files.workbook([["Name"], ["Lamp"]])), "xlsx_unreadable"),
        (b"name\nLamp\n", "xlsx_unreadable"),  # announced as a workbook, but it is not one
    ],
)
def test_a_bad_workbook_is_rejected_at_completion_and_not_kept(body: bytes, code: str) -> None:
    upload_id, repos, store = complete_spreadsheet(body)
    with pytest.raises(EpoxError) as refused:
        uploads.complete_upload(repos, store, CLIENT, upload_id, POLICY, NOW)
    assert (refused.value.status, refused.value.code) == (422, code)
    doc = uploads.get_upload(repos.uploads, CLIENT, upload_id)
    assert doc.status is UploadStatus.REJECTED and doc.rejection is not None and doc.rejection["code"] == code
    assert not store.objects  # neither the raw upload nor a kept copy


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
