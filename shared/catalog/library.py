"""The asset library as the API shows it: list, detail with revisions, flags, delete.

Assets are created and revised only through :mod:`shared.catalog.assets`.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from shared.catalog.assets import get_asset
from shared.catalog.models import (
    AssetDetailOut,
    AssetDoc,
    AssetListQuery,
    AssetOut,
    AssetRevisionOut,
    AssetUpdate,
    MediaKind,
    VideoFactsOut,
)
from shared.catalog.ports import AssetFilter, AssetRepository
from shared.errors import ValidationFailed
from shared.events.model import AssetApproval, DomainEvent, EventType, Subject, new_event
from shared.pagination import Page, cursor_datetime, cursor_str, decode_cursor, encode_cursor

if TYPE_CHECKING:
    from shared.storage import ObjectStore


_COMPUTED = {"thumbnail_url", "poster_url", "video"}


def asset_out(asset: AssetDoc, store: ObjectStore, expires_in: int) -> AssetOut:
    facts = asset.metadata.get("video") if asset.media is MediaKind.VIDEO else None
    return AssetOut(
        **asset.model_dump(include=set(AssetOut.model_fields) - _COMPUTED),
        thumbnail_url=store.presigned_get(asset.thumbnail_key, expires_in=expires_in),
        poster_url=store.presigned_get(asset.poster_key, expires_in=expires_in) if asset.poster_key else None,
        video=VideoFactsOut.model_validate(facts) if isinstance(facts, dict) else None,
    )


def asset_detail(
    assets: AssetRepository, store: ObjectStore, client_id: str, asset_id: str, expires_in: int
) -> AssetDetailOut:
    """The asset with a download URL and every revision (oldest first)."""
    asset = get_asset(assets, client_id, asset_id)
    revisions = assets.revisions(client_id, asset_id)
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
                duration_seconds=r.duration_seconds,
                poster_url=store.presigned_get(r.poster_key, expires_in=expires_in) if r.poster_key else None,
            )
            for r in revisions
        ],
    )


def list_assets(assets: AssetRepository, client_id: str, query: AssetListQuery) -> Page[AssetDoc]:
    """A page of the library, newest first, filtered on the query's fields."""
    where = AssetFilter(
        product_id=query.product_id,
        kind=query.kind.value if query.kind is not None else None,
        status=query.status.value if query.status is not None else None,
        pinned=query.pinned,
        favorite=query.favorite,
        approved=query.approved,
        job_id=query.job_id,
        origin=query.origin.value if query.origin is not None else None,
        tag=query.tag,
        created_from=query.created_from,
        created_to=query.created_to,
    )
    after = None
    if query.cursor:
        values = decode_cursor(query.cursor)
        after = (cursor_datetime(values, "created_at"), cursor_str(values, "id"))
    docs = assets.scan(client_id, where, after, query.limit + 1)
    next_cursor = None
    if len(docs) > query.limit:
        docs = docs[: query.limit]
        last = docs[-1]
        next_cursor = encode_cursor({"created_at": last.created_at.isoformat(), "id": last.id})
    return Page(items=docs, next_cursor=next_cursor)


def update_asset(assets: AssetRepository, client_id: str, asset_id: str, data: AssetUpdate, now: datetime) -> AssetDoc:
    """Set the flags sent (pinned, favorite, approved) and the tags (replaced when sent)."""
    changes = {field: getattr(data, field) for field in data.model_fields_set if getattr(data, field) is not None}
    if not changes:
        raise ValidationFailed(
            "Send at least one of pinned, favorite, approved, tags",
            errors=[{"field": "body", "in": "body", "message": "no change requested", "type": "missing"}],
        )
    asset = get_asset(assets, client_id, asset_id)
    changes["updated_at"] = now
    assets.update_flags(client_id, asset_id, changes)
    return asset.model_copy(update=changes)


def delete_asset(assets: AssetRepository, store: ObjectStore, client_id: str, asset_id: str) -> None:
    """Remove the asset, its revisions, its objects, and its place in the product's images."""
    # Objects go after the references: a failure here leaves garbage, never a dangling link.
    for key in sorted(delete_asset_documents(assets, client_id, asset_id)):
        store.delete(key)


def delete_asset_documents(assets: AssetRepository, client_id: str, asset_id: str) -> set[str]:
    """Remove the asset, its revisions and its place in the product's images (404 when it is not the
    client's); returns the keys of the objects nobody references any more, the caller's to delete."""
    asset = get_asset(assets, client_id, asset_id)
    revisions = assets.delete(client_id, asset_id)
    keys = {k for k in (asset.key, asset.thumbnail_key, asset.poster_key) if k}
    for revision in revisions:
        keys.update(k for k in (revision.key, revision.thumbnail_key, revision.poster_key) if k)
    return keys


def approval_event(client_id: str, asset: AssetDoc, approved: bool, sequence: int, now: datetime) -> DomainEvent:
    """The event of an asset's approval changing: numbered per asset, so a consumer that syncs
    approvals to a store never applies an approval after the unapproval that followed it."""
    return new_event(
        client_id,
        EventType.ASSET_APPROVED if approved else EventType.ASSET_UNAPPROVED,
        Subject(kind="asset", id=asset.id),
        AssetApproval(asset_id=asset.id, product_id=asset.product_id, approved=approved),
        occurred_at=now,
        sequence=sequence,
        discriminator=sequence,
    )
