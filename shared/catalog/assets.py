"""The asset library: every image we host (uploaded, imported, generated, edited) is an asset with
revisions; product documents point at their image assets.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.adapters.firestore.catalog import products_ref
from shared.catalog.models import (
    AssetDetailOut,
    AssetDoc,
    AssetKind,
    AssetListQuery,
    AssetOut,
    AssetRevision,
    AssetRevisionOut,
    AssetUpdate,
    ProductImage,
)
from shared.errors import NotFound, ValidationFailed
from shared.pagination import Page, cursor_datetime, cursor_str, decode_cursor, encode_cursor

if TYPE_CHECKING:
    from google.cloud.firestore import Client

    from shared.imaging import ImageLimits
    from shared.storage import ObjectStore

IMMUTABLE_CACHE = "private, max-age=31536000, immutable"


def assets_ref(db: Client, client_id: str) -> Any:
    return db.collection("clients").document(client_id).collection("assets")


def revision_keys(client_id: str, asset_id: str, number: int, extension: str) -> tuple[str, str]:
    base = f"clients/{client_id}/assets/{asset_id}/r{number}"
    return f"{base}.{extension}", f"{base}_thumb.webp"


@dataclass(frozen=True)
class NewProductImage:
    """Where a product image comes from; the asset id makes storing it idempotent."""

    asset_id: str
    source: str
    source_url: str | None = None
    import_id: str | None = None


def store_product_image(
    db: Client,
    store: ObjectStore,
    *,
    client_id: str,
    product_id: str,
    image_bytes: bytes,
    origin: NewProductImage,
    limits: ImageLimits,
    thumbnail_max_side: int,
    now: datetime,
) -> AssetDoc:
    """Validate and normalise an image, store it with a thumbnail, and attach it to the product.

    The asset, its first revision and the product's image list change in one atomic batch; the
    objects are written first, so a crash in between leaves only unreferenced objects, never a
    reference to a missing object. Storing the same ``origin.asset_id`` twice changes nothing.
    """
    from google.cloud import firestore

    from shared.imaging import normalize_with_thumbnail

    existing = assets_ref(db, client_id).document(origin.asset_id).get()
    if existing.exists:
        return AssetDoc.model_validate(existing.to_dict())
    normalized, thumbnail = normalize_with_thumbnail(image_bytes, limits, thumb_max_side=thumbnail_max_side)
    key, thumb_key = revision_keys(client_id, origin.asset_id, 1, normalized.extension)
    store.put(key, normalized.data, normalized.content_type, cache_control=IMMUTABLE_CACHE)
    store.put(thumb_key, thumbnail.data, thumbnail.content_type, cache_control=IMMUTABLE_CACHE)
    asset = AssetDoc(
        id=origin.asset_id,
        client_id=client_id,
        product_id=product_id,
        kind=AssetKind.PRODUCT_IMAGE,
        source=origin.source,
        key=key,
        thumbnail_key=thumb_key,
        content_type=normalized.content_type,
        width=normalized.width,
        height=normalized.height,
        import_id=origin.import_id,
        source_url=origin.source_url,
        metadata={
            "source_format": normalized.source_format,
            "source_mode": normalized.source_mode,
            "rotated": normalized.was_rotated,
        },
        created_at=now,
        updated_at=now,
    )
    image = ProductImage(
        asset_id=asset.id,
        key=key,
        thumbnail_key=thumb_key,
        content_type=normalized.content_type,
        width=normalized.width,
        height=normalized.height,
        source_url=origin.source_url,
    )
    batch = db.batch()
    asset_ref = stage_new_asset(batch, db, asset, size_bytes=len(normalized.data), operation="original")
    batch.update(
        products_ref(db, client_id).document(product_id),
        {"images": firestore.ArrayUnion([image.model_dump(mode="python")]), "updated_at": now},
    )
    from google.api_core.exceptions import AlreadyExists
    from google.api_core.exceptions import NotFound as GNotFound

    try:
        batch.commit()
    except AlreadyExists:
        # A concurrent delivery stored it first; its objects are the same bytes under the same keys.
        return AssetDoc.model_validate(asset_ref.get().to_dict())
    except GNotFound as exc:
        # The product was deleted meanwhile (nothing was committed): no asset, and no objects left
        # behind, unless a concurrent delivery stored this asset before the product went.
        stored = asset_ref.get()
        if stored.exists:
            return AssetDoc.model_validate(stored.to_dict())
        store.delete(key)
        store.delete(thumb_key)
        raise NotFound(f"No product {product_id}") from exc
    return asset


def stage_new_asset(
    batch: Any, db: Client, asset: AssetDoc, *, size_bytes: int, operation: str, metadata: dict[str, Any] | None = None
) -> Any:
    """Add a new asset and its revision 1 (the same pixels) to ``batch``; returns the asset's ref.

    Both are creates, so committing twice (a redelivered task) fails with AlreadyExists instead
    of writing a second copy.
    """
    revision = AssetRevision(
        number=1,
        key=asset.key,
        thumbnail_key=asset.thumbnail_key,
        content_type=asset.content_type,
        width=asset.width,
        height=asset.height,
        size_bytes=size_bytes,
        operation=operation,
        created_at=asset.created_at,
        metadata=metadata or {},
    )
    ref = assets_ref(db, asset.client_id).document(asset.id)
    batch.create(ref, asset.model_dump(mode="python"))
    batch.create(ref.collection("revisions").document("1"), revision.model_dump(mode="python"))
    return ref


def get_asset(db: Client, client_id: str, asset_id: str) -> AssetDoc:
    snapshot = assets_ref(db, client_id).document(asset_id).get()
    if not snapshot.exists:
        raise NotFound(f"No asset {asset_id}")
    return AssetDoc.model_validate(snapshot.to_dict())


def asset_out(asset: AssetDoc, store: ObjectStore, expires_in: int) -> AssetOut:
    return AssetOut(
        **asset.model_dump(include=set(AssetOut.model_fields) - {"thumbnail_url"}),
        thumbnail_url=store.presigned_get(asset.thumbnail_key, expires_in=expires_in),
    )


def asset_detail(db: Client, store: ObjectStore, client_id: str, asset_id: str, expires_in: int) -> AssetDetailOut:
    asset = get_asset(db, client_id, asset_id)
    revisions = [
        AssetRevision.model_validate(s.to_dict())
        for s in assets_ref(db, client_id).document(asset_id).collection("revisions").stream()
    ]
    revisions.sort(key=lambda r: r.number)
    summary = asset_out(asset, store, expires_in)
    return AssetDetailOut(
        **summary.model_dump(),
        download_url=store.presigned_get(
            asset.key, expires_in=expires_in, download_name=f"{asset.id}.{asset.key.rsplit('.', 1)[-1]}"
        ),
        revisions=[
            AssetRevisionOut(
                number=r.number,
                operation=r.operation,
                content_type=r.content_type,
                width=r.width,
                height=r.height,
                size_bytes=r.size_bytes,
                url=store.presigned_get(r.key, expires_in=expires_in),
                thumbnail_url=store.presigned_get(r.thumbnail_key, expires_in=expires_in),
                created_at=r.created_at,
            )
            for r in revisions
        ],
    )


def list_assets(db: Client, client_id: str, query: AssetListQuery) -> Page[AssetDoc]:
    from google.cloud.firestore import FieldFilter, Query

    q = assets_ref(db, client_id)
    for field in ("product_id", "kind", "status", "pinned", "favorite", "approved"):
        value = getattr(query, field)
        if value is not None:
            q = q.where(filter=FieldFilter(field, "==", getattr(value, "value", value)))
    q = q.order_by("created_at", direction=Query.DESCENDING).order_by("id", direction=Query.DESCENDING)
    if query.cursor:
        values = decode_cursor(query.cursor)
        q = q.start_after({"created_at": cursor_datetime(values, "created_at"), "id": cursor_str(values, "id")})
    docs = [AssetDoc.model_validate(s.to_dict()) for s in q.limit(query.limit + 1).stream()]
    next_cursor = None
    if len(docs) > query.limit:
        docs = docs[: query.limit]
        last = docs[-1]
        next_cursor = encode_cursor({"created_at": last.created_at.isoformat(), "id": last.id})
    return Page(items=docs, next_cursor=next_cursor)


def update_asset(db: Client, client_id: str, asset_id: str, data: AssetUpdate, now: datetime) -> AssetDoc:
    changes = {field: getattr(data, field) for field in data.model_fields_set if getattr(data, field) is not None}
    if not changes:
        raise ValidationFailed(
            "Send at least one of pinned, favorite, approved",
            errors=[{"field": "body", "in": "body", "message": "no change requested", "type": "missing"}],
        )
    asset = get_asset(db, client_id, asset_id)
    changes["updated_at"] = now
    assets_ref(db, client_id).document(asset_id).update(changes)
    return asset.model_copy(update=changes)


def delete_asset(db: Client, store: ObjectStore, client_id: str, asset_id: str) -> None:
    """Remove the asset, its revisions, its objects, and its place in the product's images."""
    from google.cloud import firestore

    asset = get_asset(db, client_id, asset_id)
    asset_ref = assets_ref(db, client_id).document(asset_id)
    revisions = list(asset_ref.collection("revisions").stream())
    batch = db.batch()
    if asset.product_id:
        product_ref = products_ref(db, client_id).document(asset.product_id)
        product = product_ref.get()
        if product.exists:
            # ArrayRemove of the exact stored entries: an image added concurrently is not lost.
            stale = [img for img in (product.to_dict() or {}).get("images", []) if img.get("asset_id") == asset_id]
            if stale:
                batch.update(product_ref, {"images": firestore.ArrayRemove(stale)})
    for revision in revisions:
        batch.delete(revision.reference)
    batch.delete(asset_ref)
    batch.commit()
    # Objects go after the references: a failure here leaves garbage, never a dangling link.
    keys = {asset.key, asset.thumbnail_key}
    for revision in revisions:
        data = revision.to_dict() or {}
        keys.update(k for k in (data.get("key"), data.get("thumbnail_key")) if k)
    for key in keys:
        store.delete(key)
