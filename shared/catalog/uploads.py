"""Direct-to-R2 uploads: the browser asks for a slot, PUTs the file with a presigned URL, then
calls "complete"; only then is the file checked and turned into a product image (or kept as a CSV).

Slots are bounded and collected:

* A client has at most ``UPLOAD_MAX_PENDING`` slots pending (not completed, not expired) at once;
  past that ``POST /uploads`` answers 429 ``too_many_pending_uploads``.
* The browser PUTs to ``uploads/{client}/{upload}``, a key nothing reads after completion: an
  image becomes an asset (normalised copies under the asset's keys), a CSV is copied to
  ``clients/{client}/csv/{upload}`` and imported from there. Re-using the presigned URL after
  completion (it stays valid until it expires) writes only that raw key again.
* The raw key is deleted at completion and again by ``/jobs/sweep-uploads`` once the presigned URL
  has expired (a slot never completed becomes ``expired``); an R2 lifecycle rule on the ``uploads/``
  prefix (delete after a day) catches whatever a missed sweep leaves.

Videos use the same slots (purpose ``video``), opened and completed by the video API
(``shared/videos/uploads.py``): completion hands the file to the video worker, the slot is
``processing`` until it is ``completed`` (a video asset) or ``rejected``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from pydantic import Field

from shared.catalog.assets import NewProductImage, store_product_image
from shared.catalog.models import (
    IMAGE_CONTENT_TYPES,
    SPREADSHEET_CONTENT_TYPES,
    XLSX_CONTENT_TYPES,
    AssetOrigin,
    UploadCreate,
    UploadDoc,
    UploadInstructions,
    UploadOut,
    UploadPurpose,
    UploadStatus,
)
from shared.catalog.ports import CatalogRepositories, StaleWrite, UploadRepository, Versioned
from shared.catalog.products import get_product
from shared.errors import (
    Conflict,
    EpoxError,
    NotFound,
    PayloadTooLarge,
    UnprocessableContent,
    ValidationFailed,
)
from shared.ids import new_id
from shared.scheduled import ScheduledReport, isolated

if TYPE_CHECKING:
    from shared.imaging import ImageLimits
    from shared.storage import ObjectStore


SWEEP_JOB = "sweep-uploads"
# What a video upload the video worker never finished (every delivery failed) records when swept.
PROCESSING_ABANDONED: dict[str, Any] = {
    "code": "upload_processing_failed",
    "title": "The upload could not be processed",
    "detail": "The video could not be processed; upload it again",
}
# The sweep waits this long past a presigned URL's expiry (clock skew between us and R2).
SWEEP_GRACE = timedelta(minutes=5)


@dataclass(frozen=True)
class UploadPolicy:
    image_max_bytes: int
    csv_max_bytes: int
    presign_expiry_seconds: int
    image_limits: ImageLimits
    thumbnail_max_side: int
    max_pending: int = 50  # pending, unexpired slots per client
    xlsx_max_uncompressed_bytes: int = 100 * 1024 * 1024


class UploadNotReceived(Conflict):
    code = "upload_not_received"
    title = "The file has not been uploaded yet"


class UploadExpired(Conflict):
    code = "upload_expired"
    title = "The upload slot has expired"


class TooManyPendingUploads(EpoxError):
    status = 429
    code = "too_many_pending_uploads"
    title = "Too many uploads are pending"

    def __init__(self, detail: str | None = None, retry_after: int = 60, **extensions: Any) -> None:
        super().__init__(detail, **extensions)
        self.headers["Retry-After"] = str(retry_after)


def raw_upload_key(client_id: str, upload_id: str) -> str:
    """Where the browser PUTs an upload: under ``uploads/``, the prefix an R2 lifecycle rule expires."""
    return f"uploads/{client_id}/{upload_id}"


def stored_csv_key(client_id: str, upload_id: str) -> str:
    """Where an accepted CSV is kept for its imports (never written by a presigned URL)."""
    return f"clients/{client_id}/csv/{upload_id}"


class UploadRejected(EpoxError):
    status = 422
    code = "upload_rejected"
    title = "The uploaded file was rejected"


def _field_error(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, errors=[{"field": field, "in": "body", "message": message, "type": "value_error"}])


def create_upload(
    repos: CatalogRepositories,
    store: ObjectStore,
    client_id: str,
    data: UploadCreate,
    policy: UploadPolicy,
    now: datetime,
) -> UploadOut:
    """Record a pending upload and presign a PUT bound to its content type and exact size."""
    if data.purpose is UploadPurpose.VIDEO:
        raise _field_error("purpose", "Videos are uploaded with POST /videos/uploads")
    if data.purpose is UploadPurpose.PRODUCT_IMAGE:
        if data.content_type not in IMAGE_CONTENT_TYPES:
            raise _field_error("content_type", f"Images must be one of {', '.join(IMAGE_CONTENT_TYPES)}")
        if data.size_bytes > policy.image_max_bytes:
            raise PayloadTooLarge(f"Images may be at most {policy.image_max_bytes} bytes", limit=policy.image_max_bytes)
        if not data.product_id:
            raise _field_error("product_id", "A product image upload needs product_id")
        get_product(repos.products, client_id, data.product_id)  # 404 for unknown or foreign products
    else:
        _check_spreadsheet(data)
        if data.size_bytes > policy.csv_max_bytes:
            raise PayloadTooLarge(f"CSV files may be at most {policy.csv_max_bytes} bytes", limit=policy.csv_max_bytes)
        if data.product_id:
            raise _field_error("product_id", "A CSV upload is not tied to a product")
    return open_slot(repos.uploads, store, client_id, data, policy, now)


def open_slot(
    uploads: UploadRepository,
    store: ObjectStore,
    client_id: str,
    data: UploadCreate,
    policy: UploadPolicy,
    now: datetime,
) -> UploadOut:
    """A pending slot for ``data`` (checked by the caller: the video API opens its own) and a PUT presigned
    for its content type and exact size; 429 once the client has ``max_pending`` slots pending, of any purpose."""
    _check_pending(uploads, client_id, policy, now, limit=policy.max_pending)
    upload_id = new_id("upl")
    expires_at = now + timedelta(seconds=policy.presign_expiry_seconds)
    doc = UploadDoc(
        id=upload_id,
        client_id=client_id,
        purpose=data.purpose,
        filename=data.filename,
        content_type=data.content_type,
        size_bytes=data.size_bytes,
        product_id=data.product_id,
        key=raw_upload_key(client_id, upload_id),
        created_at=now,
        expires_at=expires_at,
        sweep_at=expires_at + SWEEP_GRACE,
    )
    uploads.create(doc)
    # Counted again with this slot in: concurrent requests that together went past the cap all give
    # their slot up (none was presigned yet), so the cap holds without a lock.
    try:
        _check_pending(uploads, client_id, policy, now, limit=policy.max_pending + 1)
    except TooManyPendingUploads:
        uploads.delete(client_id, upload_id)
        raise
    presigned = store.presigned_put(
        doc.key, content_type=doc.content_type, content_length=doc.size_bytes, expires_in=policy.presign_expiry_seconds
    )
    out = upload_out(doc)
    out.upload = UploadInstructions(url=presigned.url, method=presigned.method, headers=presigned.headers)
    return out


# Spreadsheet files the import does not read, by extension: why, and what to upload instead.
_REFUSED_SPREADSHEETS = {
    ".xlsm": "Macro-enabled workbooks (.xlsm) are not accepted",
    ".xltm": "Macro-enabled templates (.xltm) are not accepted",
    ".xlsb": "Binary workbooks (.xlsb) are not read",
    ".xls": "Old Excel workbooks (.xls) are not read",
    ".ods": "OpenDocument spreadsheets (.ods) are not read",
    ".numbers": "Numbers spreadsheets are not read",
}
_OCTET_STREAM = "application/octet-stream"


def _check_spreadsheet(data: UploadCreate) -> None:
    """A csv_import upload is a CSV file or an .xlsx workbook; other spreadsheets get a 422 that says
    what to upload instead. Browsers send .xlsx files as octet-stream now and then: that is taken for
    a file named .xlsx (its bytes decide at completion)."""
    name = data.filename.lower()
    for extension, why in _REFUSED_SPREADSHEETS.items():
        if name.endswith(extension):
            raise _field_error("filename", f"{why}; save the sheet as .xlsx or CSV and upload that.")
    if "macroenabled" in data.content_type:
        raise _field_error("content_type", "Macro-enabled workbooks are not accepted; save the sheet as .xlsx.")
    if data.content_type == _OCTET_STREAM and name.endswith(".xlsx"):
        return
    if data.content_type not in SPREADSHEET_CONTENT_TYPES:
        raise _field_error(
            "content_type", f"CSV files and .xlsx workbooks must be one of {', '.join(SPREADSHEET_CONTENT_TYPES)}"
        )


def _check_pending(
    uploads: UploadRepository, client_id: str, policy: UploadPolicy, now: datetime, *, limit: int
) -> None:
    """429 once the client has ``limit`` slots pending (not completed) whose URL has not expired."""
    pending = uploads.count_pending(client_id, now)
    if pending >= limit:
        raise TooManyPendingUploads(
            f"{policy.max_pending} uploads are waiting to be completed; complete them or wait until they expire",
            limit=policy.max_pending,
            retry_after=policy.presign_expiry_seconds,
        )


def upload_out(doc: UploadDoc) -> UploadOut:
    return UploadOut(**doc.model_dump(include=set(UploadOut.model_fields) - {"upload"}))


def get_upload(uploads: UploadRepository, client_id: str, upload_id: str) -> UploadDoc:
    """The upload slot, or 404."""
    doc = uploads.get(client_id, upload_id)
    if doc is None:
        raise NotFound(f"No upload {upload_id}")
    return doc


def complete_upload(
    repos: CatalogRepositories, store: ObjectStore, client_id: str, upload_id: str, policy: UploadPolicy, now: datetime
) -> UploadOut:
    """Check the uploaded object; turn it into a product image or accept it as a CSV.

    Completing twice returns the first result. A rejected file is deleted from storage and the
    upload records why, so the answer stays the same when asked again.
    """
    doc = get_upload(repos.uploads, client_id, upload_id)
    if doc.purpose is UploadPurpose.VIDEO:
        raise Conflict(f"Upload {upload_id} is a video: complete it with POST /videos/uploads/{upload_id}/complete")
    if doc.status is UploadStatus.COMPLETED:
        return upload_out(doc)
    if doc.status is UploadStatus.REJECTED:
        raise _rejection_error(doc.rejection or {})
    if doc.status is UploadStatus.EXPIRED:
        raise UploadExpired("The upload slot expired before it was completed; ask for a new one")
    info = store.head(doc.key)
    if info is None:
        raise UploadNotReceived("PUT the file to the upload URL before completing the upload")
    limit = policy.image_max_bytes if doc.purpose is UploadPurpose.PRODUCT_IMAGE else policy.csv_max_bytes
    try:
        if info.size > limit or info.size != doc.size_bytes:
            raise UploadRejected(
                f"The stored file has {info.size} bytes; {doc.size_bytes} were announced (limit {limit})",
                reason="size_mismatch",
            )
        data = store.get(doc.key, max_bytes=limit)
        if doc.purpose is UploadPurpose.PRODUCT_IMAGE:
            return _complete_image(repos, store, doc, data, policy, now)
        return _complete_csv(repos.uploads, store, doc, data, policy, now)
    except (UnprocessableContent, UploadRejected) as error:
        reject_upload(repos.uploads, store, doc, error, now)
        raise


def _complete_image(
    repos: CatalogRepositories, store: ObjectStore, doc: UploadDoc, data: bytes, policy: UploadPolicy, now: datetime
) -> UploadOut:
    assert doc.product_id is not None
    asset = store_product_image(
        repos.assets,
        store,
        client_id=doc.client_id,
        product_id=doc.product_id,
        image_bytes=data,
        origin=NewProductImage(asset_id=doc.id.replace("upl_", "ast_", 1), origin=AssetOrigin.UPLOAD),
        limits=policy.image_limits,
        thumbnail_max_side=policy.thumbnail_max_side,
        now=now,
    )
    changes = {"status": UploadStatus.COMPLETED.value, "asset_id": asset.id, "completed_at": now}
    repos.uploads.update(doc.client_id, doc.id, changes)
    # The normalised copy lives with the asset; the raw upload (with its EXIF) is not kept.
    store.delete(doc.key)
    return upload_out(doc.model_copy(update={**changes, "status": UploadStatus.COMPLETED}))


def _complete_csv(
    uploads: UploadRepository, store: ObjectStore, doc: UploadDoc, data: bytes, policy: UploadPolicy, now: datetime
) -> UploadOut:
    """Accept a CSV file or an .xlsx workbook (its bytes tell which, whatever its name or type said)."""
    from shared.catalog.xlsx import is_zip, workbook_sheets

    sheets: list[str] = []
    if is_zip(data) or doc.content_type in XLSX_CONTENT_TYPES:
        # The archive is checked (zip bombs, encryption) and the workbook opened, before an import exists.
        _, names = workbook_sheets(data, max_uncompressed_bytes=policy.xlsx_max_uncompressed_bytes)
        file_format, sheets = "xlsx", list(names)
    else:
        from shared.catalog.csv_parsing import decode_csv

        decode_csv(data)  # refuses binary files early, before an import is created from them
        file_format = "csv"
    # Imports read the copy: a later PUT with the still-valid URL cannot change the checked file.
    stored_key = stored_csv_key(doc.client_id, doc.id)
    store.put(stored_key, data, doc.content_type)
    changes = {
        "status": UploadStatus.COMPLETED.value,
        "completed_at": now,
        "stored_key": stored_key,
        "file_format": file_format,
        "sheets": sheets,
    }
    uploads.update(doc.client_id, doc.id, changes)
    store.delete(doc.key)
    return upload_out(doc.model_copy(update={**changes, "status": UploadStatus.COMPLETED}))


def reject_upload(
    uploads: UploadRepository, store: ObjectStore, doc: UploadDoc, error: EpoxError, now: datetime
) -> None:
    """The upload is ``rejected`` with ``error``'s code, title, detail and members; its file is deleted."""
    store.delete(doc.key)
    rejection = {
        "code": error.code,
        "title": error.title,
        "detail": error.detail,
        **{k: v for k, v in error.extensions.items() if k != "errors"},
    }
    uploads.update(
        doc.client_id, doc.id, {"status": UploadStatus.REJECTED.value, "rejection": rejection, "completed_at": now}
    )


def _rejection_error(rejection: dict[str, Any]) -> UploadRejected:
    """The recorded rejection as the same problem (code, title, detail, members) as the first answer."""
    recorded = cast(
        "type[UploadRejected]",
        type(
            "RecordedRejection",
            (UploadRejected,),
            {
                "code": str(rejection.get("code") or UploadRejected.code),
                "title": str(rejection.get("title") or UploadRejected.title),
            },
        ),
    )
    extensions = {k: v for k, v in rejection.items() if k not in ("code", "title", "detail")}
    return recorded(str(rejection.get("detail") or UploadRejected.title), **extensions)


# -- sweep (Cloud Scheduler) -----------------------------------------------------------------------


class UploadSweepReport(ScheduledReport):
    """``/jobs/sweep-uploads``: raw upload objects deleted, and the slots that expired uncompleted."""

    swept: int = 0
    expired: dict[str, list[str]] = Field(default_factory=dict)  # client -> upload ids
    abandoned: dict[str, list[str]] = Field(default_factory=dict)  # client -> videos never processed
    more: bool = False


def sweep_uploads(
    uploads: UploadRepository, store: ObjectStore, now: datetime, *, limit: int = 1000, client_id: str | None = None
) -> UploadSweepReport:
    """Delete the raw objects of upload slots whose presigned URL has expired (``sweep_at`` passed):
    a slot never completed becomes ``expired``; a completed or rejected one loses what a late PUT
    with its URL may have written; a video still ``processing`` when its (later) ``sweep_at`` passed
    was never finished by the video worker and is rejected (``upload_processing_failed``). Safe to run
    twice; at most ``limit`` slots a run (oldest first; the next run goes on). ``client_id``: one
    client only (tests)."""
    report = UploadSweepReport()
    for found in uploads.due_for_sweep(now, limit, client_id):
        report.swept += 1
        with isolated(SWEEP_JOB, found.client_id, report.failed):
            doc = UploadDoc.model_validate(found.data)
            changes: dict[str, Any] = {"sweep_at": None}
            if doc.status is UploadStatus.PENDING:
                changes["status"] = UploadStatus.EXPIRED.value
            elif doc.status is UploadStatus.PROCESSING:
                changes.update(status=UploadStatus.REJECTED.value, rejection=PROCESSING_ABANDONED, completed_at=now)
            try:
                # Guarded: a completion that got in first keeps its status (the next run sweeps again).
                uploads.update_if_unchanged(Versioned(doc, found.version), changes)
            except StaleWrite:
                continue
            store.delete(doc.key)
            if doc.status is UploadStatus.PENDING:
                report.expired.setdefault(doc.client_id, []).append(doc.id)
            elif doc.status is UploadStatus.PROCESSING:
                report.abandoned.setdefault(doc.client_id, []).append(doc.id)
    report.more = report.swept >= limit
    return report
