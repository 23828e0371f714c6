"""Direct-to-R2 uploads: the browser asks for a slot, PUTs the file with a presigned URL, then
calls "complete"; only then is the file checked and turned into a product image (or kept as a CSV).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from shared.catalog.assets import NewProductImage, store_product_image
from shared.catalog.models import (
    CSV_CONTENT_TYPES,
    IMAGE_CONTENT_TYPES,
    UploadCreate,
    UploadDoc,
    UploadInstructions,
    UploadOut,
    UploadPurpose,
    UploadStatus,
)
from shared.catalog.products import get_product, new_id
from shared.errors import (
    Conflict,
    EpoxError,
    NotFound,
    PayloadTooLarge,
    UnprocessableContent,
    ValidationFailed,
)

if TYPE_CHECKING:
    from google.cloud.firestore import Client

    from shared.imaging import ImageLimits
    from shared.storage import ObjectStore


@dataclass(frozen=True)
class UploadPolicy:
    image_max_bytes: int
    csv_max_bytes: int
    presign_expiry_seconds: int
    image_limits: ImageLimits
    thumbnail_max_side: int


class UploadNotReceived(Conflict):
    code = "upload_not_received"
    title = "The file has not been uploaded yet"


class UploadRejected(EpoxError):
    status = 422
    code = "upload_rejected"
    title = "The uploaded file was rejected"


def uploads_ref(db: Client, client_id: str) -> Any:
    return db.collection("clients").document(client_id).collection("uploads")


def _field_error(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, errors=[{"field": field, "in": "body", "message": message, "type": "value_error"}])


def create_upload(
    db: Client, store: ObjectStore, client_id: str, data: UploadCreate, policy: UploadPolicy, now: datetime
) -> UploadOut:
    """Record a pending upload and presign a PUT bound to its content type and exact size."""
    if data.purpose is UploadPurpose.PRODUCT_IMAGE:
        if data.content_type not in IMAGE_CONTENT_TYPES:
            raise _field_error("content_type", f"Images must be one of {', '.join(IMAGE_CONTENT_TYPES)}")
        if data.size_bytes > policy.image_max_bytes:
            raise PayloadTooLarge(f"Images may be at most {policy.image_max_bytes} bytes", limit=policy.image_max_bytes)
        if not data.product_id:
            raise _field_error("product_id", "A product image upload needs product_id")
        get_product(db, client_id, data.product_id)  # 404 for unknown or foreign products
    else:
        if data.content_type not in CSV_CONTENT_TYPES:
            raise _field_error("content_type", f"CSV files must be one of {', '.join(CSV_CONTENT_TYPES)}")
        if data.size_bytes > policy.csv_max_bytes:
            raise PayloadTooLarge(f"CSV files may be at most {policy.csv_max_bytes} bytes", limit=policy.csv_max_bytes)
        if data.product_id:
            raise _field_error("product_id", "A CSV upload is not tied to a product")
    upload_id = new_id("upl")
    doc = UploadDoc(
        id=upload_id,
        client_id=client_id,
        purpose=data.purpose,
        filename=data.filename,
        content_type=data.content_type,
        size_bytes=data.size_bytes,
        product_id=data.product_id,
        key=f"clients/{client_id}/uploads/{upload_id}",
        created_at=now,
        expires_at=now + timedelta(seconds=policy.presign_expiry_seconds),
    )
    uploads_ref(db, client_id).document(upload_id).create(doc.model_dump(mode="python"))
    presigned = store.presigned_put(
        doc.key, content_type=doc.content_type, content_length=doc.size_bytes, expires_in=policy.presign_expiry_seconds
    )
    out = upload_out(doc)
    out.upload = UploadInstructions(url=presigned.url, method=presigned.method, headers=presigned.headers)
    return out


def upload_out(doc: UploadDoc) -> UploadOut:
    return UploadOut(**doc.model_dump(include=set(UploadOut.model_fields) - {"upload"}))


def get_upload(db: Client, client_id: str, upload_id: str) -> UploadDoc:
    snapshot = uploads_ref(db, client_id).document(upload_id).get()
    if not snapshot.exists:
        raise NotFound(f"No upload {upload_id}")
    return UploadDoc.model_validate(snapshot.to_dict())


def complete_upload(
    db: Client, store: ObjectStore, client_id: str, upload_id: str, policy: UploadPolicy, now: datetime
) -> UploadOut:
    """Check the uploaded object; turn it into a product image or accept it as a CSV.

    Completing twice returns the first result. A rejected file is deleted from storage and the
    upload records why, so the answer stays the same when asked again.
    """
    doc = get_upload(db, client_id, upload_id)
    if doc.status is UploadStatus.COMPLETED:
        return upload_out(doc)
    if doc.status is UploadStatus.REJECTED:
        raise _rejection_error(doc.rejection or {})
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
            return _complete_image(db, store, doc, data, policy, now)
        return _complete_csv(db, doc, data, now)
    except (UnprocessableContent, UploadRejected) as error:
        _reject(db, store, doc, error, now)
        raise


def _complete_image(
    db: Client, store: ObjectStore, doc: UploadDoc, data: bytes, policy: UploadPolicy, now: datetime
) -> UploadOut:
    assert doc.product_id is not None
    asset = store_product_image(
        db,
        store,
        client_id=doc.client_id,
        product_id=doc.product_id,
        image_bytes=data,
        origin=NewProductImage(asset_id=doc.id.replace("upl_", "ast_", 1), source="upload"),
        limits=policy.image_limits,
        thumbnail_max_side=policy.thumbnail_max_side,
        now=now,
    )
    changes = {"status": UploadStatus.COMPLETED.value, "asset_id": asset.id, "completed_at": now}
    uploads_ref(db, doc.client_id).document(doc.id).update(changes)
    # The normalised copy lives with the asset; the raw upload (with its EXIF) is not kept.
    store.delete(doc.key)
    return upload_out(doc.model_copy(update={**changes, "status": UploadStatus.COMPLETED}))


def _complete_csv(db: Client, doc: UploadDoc, data: bytes, now: datetime) -> UploadOut:
    from shared.catalog.csv_parsing import decode_csv

    decode_csv(data)  # refuses binary files early, before an import is created from them
    changes = {"status": UploadStatus.COMPLETED.value, "completed_at": now}
    uploads_ref(db, doc.client_id).document(doc.id).update(changes)
    return upload_out(doc.model_copy(update={**changes, "status": UploadStatus.COMPLETED}))


def _reject(db: Client, store: ObjectStore, doc: UploadDoc, error: EpoxError, now: datetime) -> None:
    store.delete(doc.key)
    rejection = {
        "code": error.code,
        "title": error.title,
        "detail": error.detail,
        **{k: v for k, v in error.extensions.items() if k != "errors"},
    }
    uploads_ref(db, doc.client_id).document(doc.id).update(
        {"status": UploadStatus.REJECTED.value, "rejection": rejection, "completed_at": now}
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
