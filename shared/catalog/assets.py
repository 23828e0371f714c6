"""The one asset path: every image we host (uploaded, imported from a CSV, generated, edited,
reverted) becomes an asset here, and every later version of it a revision appended here.

Object keys follow one scheme, ``clients/{client}/assets/{asset}/r{n}-{random}.{ext}`` (and
``…_thumb.webp``): a writer's keys are its own, so two writers racing for the same asset or the
same revision n never overwrite each other's pixels (objects are cached as immutable), and the
loser's objects are deleted. Objects are written before the documents that point at them, so a
crash leaves unreferenced objects, never a reference to a missing one. (Assets stored before this
scheme have keys without the random part; they are read through their documents and stay valid.)

The documents are written through :class:`~shared.catalog.ports.AssetRepository`: an asset with its
revision 1 in one atomic write (:func:`create_asset`), revision n+1 together with the asset's
current revision in another (:func:`commit_revision`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from shared.catalog.models import AssetDoc, AssetKind, AssetOrigin, AssetRevision, MediaKind, ProductImage
from shared.catalog.ports import (
    AssetExists,
    AssetRepository,
    ItemGuard,
    ItemTaken,
    ProductGone,
    RevisionConflict,
)
from shared.errors import NotFound

if TYPE_CHECKING:
    from shared.imaging import ImageLimits
    from shared.storage import ObjectStore

__all__ = [
    "IMMUTABLE_CACHE",
    "ItemGuard",
    "ItemTaken",
    "NewProductImage",
    "RevisionConflict",
    "commit_revision",
    "create_asset",
    "discard_objects",
    "get_revision",
    "object_keys",
    "poster_key",
    "revert",
    "store_product_image",
    "write_objects",
    "write_poster",
]

IMMUTABLE_CACHE = "private, max-age=31536000, immutable"


class Pixels(Protocol):
    """Encoded media ready to store (a normalised upload, an engine's output, an edit's result)."""

    @property
    def data(self) -> bytes: ...
    @property
    def content_type(self) -> str: ...
    @property
    def extension(self) -> str: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...


class Preview(Protocol):
    """The thumbnail stored next to the media."""

    @property
    def data(self) -> bytes: ...
    @property
    def content_type(self) -> str: ...


def object_keys(client_id: str, asset_id: str, number: int, extension: str) -> tuple[str, str]:
    """Fresh keys of revision ``number``: (media key, thumbnail key), unique to this writer."""
    base = f"clients/{client_id}/assets/{asset_id}/r{number}-{secrets.token_hex(4)}"
    return f"{base}.{extension}", f"{base}_thumb.webp"


def write_objects(
    store: ObjectStore, client_id: str, asset_id: str, number: int, media: Pixels, thumbnail: Preview
) -> tuple[str, str]:
    """Put revision ``number``'s media and thumbnail under fresh keys; returns (key, thumbnail key)."""
    key, thumb_key = object_keys(client_id, asset_id, number, media.extension)
    store.put(key, media.data, media.content_type, cache_control=IMMUTABLE_CACHE)
    store.put(thumb_key, thumbnail.data, thumbnail.content_type, cache_control=IMMUTABLE_CACHE)
    return key, thumb_key


def poster_key(thumbnail_key: str) -> str:
    """Where a video revision's poster frame goes: beside its thumbnail, under the same writer's keys."""
    return thumbnail_key.removesuffix("_thumb.webp") + "_poster.webp"


def write_poster(store: ObjectStore, thumbnail_key: str, poster: Preview) -> str:
    """Put a video revision's poster frame next to its thumbnail; returns its key."""
    key = poster_key(thumbnail_key)
    store.put(key, poster.data, poster.content_type, cache_control=IMMUTABLE_CACHE)
    return key


def delete_objects(store: ObjectStore, *keys: str) -> None:
    """Delete objects nobody references; garbage left behind is harmless, so failures are ignored."""
    for key in keys:
        try:
            store.delete(key)
        except Exception:  # noqa: S112 - garbage left behind is harmless; the outcome stands
            continue


# -- a new asset ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewAsset:
    """Who an asset is and where it comes from; its pixels are given separately."""

    asset_id: str
    client_id: str
    kind: AssetKind
    source: str
    origin: AssetOrigin
    operation: str  # what revision 1 records: "original", "generate", …
    product_id: str | None = None
    job_id: str | None = None
    import_id: str | None = None
    source_url: str | None = None
    origin_media_id: str | None = None
    metadata: dict[str, Any] | None = None  # on the asset
    revision_metadata: dict[str, Any] | None = None  # on revision 1
    media: MediaKind = MediaKind.IMAGE
    duration_seconds: float | None = None  # videos


def create_asset(
    assets: AssetRepository,
    store: ObjectStore,
    new: NewAsset,
    media: Pixels,
    thumbnail: Preview,
    now: datetime,
    *,
    attach_to_product: bool = False,
    source_url: str | None = None,
    poster: Preview | None = None,
) -> tuple[AssetDoc, bool]:
    """Store the media under fresh keys, then the asset with its revision 1 (and, with
    ``attach_to_product``, its entry in the product's images) in one atomic write. A video comes with
    its ``poster`` frame (stored beside the thumbnail).

    Returns the asset and whether this call created it. When the asset is stored already (a
    redelivery, or a concurrent writer first) that one stands and our objects are deleted; when the
    product to attach to is gone, nothing is stored and ``NotFound`` is raised.
    """
    key, thumb_key = write_objects(store, new.client_id, new.asset_id, 1, media, thumbnail)
    poster_at = write_poster(store, thumb_key, poster) if poster is not None else None
    asset = AssetDoc(
        id=new.asset_id,
        client_id=new.client_id,
        product_id=new.product_id,
        kind=new.kind,
        source=new.source,
        key=key,
        thumbnail_key=thumb_key,
        content_type=media.content_type,
        width=media.width,
        height=media.height,
        job_id=new.job_id,
        import_id=new.import_id,
        source_url=new.source_url,
        metadata=new.metadata or {},
        created_at=now,
        updated_at=now,
        origin=new.origin,
        origin_media_id=new.origin_media_id,
        media=new.media,
        duration_seconds=new.duration_seconds,
        poster_key=poster_at,
    )
    first = AssetRevision(
        number=1,
        key=key,
        thumbnail_key=thumb_key,
        content_type=media.content_type,
        width=media.width,
        height=media.height,
        size_bytes=len(media.data),
        operation=new.operation,
        created_at=now,
        metadata=new.revision_metadata or {},
        duration_seconds=new.duration_seconds,
        poster_key=poster_at,
    )
    image = None
    if attach_to_product:
        image = ProductImage(
            asset_id=asset.id,
            key=key,
            thumbnail_key=thumb_key,
            content_type=media.content_type,
            width=media.width,
            height=media.height,
            source_url=source_url,
        )
    try:
        assets.create(asset, first, product_image=image)
    except AssetExists:
        # Another delivery stored it first: its asset stands, our objects are nobody's.
        delete_objects(store, key, thumb_key, *([poster_at] if poster_at else []))
        stored = assets.get(new.client_id, new.asset_id)
        if stored is None:  # stored and deleted again since: nothing of ours to return
            raise NotFound(f"No asset {new.asset_id}") from None
        return stored, False
    except ProductGone as exc:
        delete_objects(store, key, thumb_key, *([poster_at] if poster_at else []))
        raise NotFound(f"No product {new.product_id}") from exc
    return asset, True


@dataclass(frozen=True)
class NewProductImage:
    """Where a product image comes from; the asset id makes storing it idempotent."""

    asset_id: str
    origin: AssetOrigin
    source_url: str | None = None
    import_id: str | None = None
    origin_media_id: str | None = None  # the store's media id (store imports)


def store_product_image(
    assets: AssetRepository,
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
    """Validate and normalise an image (an upload, a CSV row's URL), and store it as a new asset
    attached to the product. Storing the same ``origin.asset_id`` twice changes nothing."""
    from shared.imaging import normalize_with_thumbnail

    existing = assets.get(client_id, origin.asset_id)
    if existing is not None:
        return existing
    normalized, thumbnail = normalize_with_thumbnail(image_bytes, limits, thumb_max_side=thumbnail_max_side)
    new = NewAsset(
        asset_id=origin.asset_id,
        client_id=client_id,
        product_id=product_id,
        kind=AssetKind.PRODUCT_IMAGE,
        source=origin.origin.value,  # "upload" | "csv": what ``source`` always said for these
        origin=origin.origin,
        operation="original",
        import_id=origin.import_id,
        source_url=origin.source_url,
        origin_media_id=origin.origin_media_id,
        metadata={
            "source_format": normalized.source_format,
            "source_mode": normalized.source_mode,
            "rotated": normalized.was_rotated,
        },
    )
    asset, _created = create_asset(
        assets, store, new, normalized, thumbnail, now, attach_to_product=True, source_url=origin.source_url
    )
    return asset


# -- revisions ------------------------------------------------------------------------------------


def commit_revision(
    assets: AssetRepository,
    *,
    client_id: str,
    asset_id: str,
    revision: AssetRevision,
    now: datetime,
    item: ItemGuard | None = None,
) -> AssetRevision:
    """Make ``revision`` (number n, its objects written) the asset's current one in one atomic write:
    revision n is created, the asset (then at n-1) and its product's image entry point at it, and
    ``item`` is finished, all or nothing.

    Raises :class:`RevisionConflict` when revision n exists or the asset has moved past n-1,
    :class:`ItemTaken` when ``item`` changed, ``NotFound`` when the asset is gone.
    """
    assets.append_revision(client_id, asset_id, revision, now, item)
    return revision


def discard_objects(
    assets: AssetRepository, store: ObjectStore, client_id: str, asset_id: str, number: int, key: str, thumb_key: str
) -> None:
    """Delete the objects of a revision ``number`` that lost its commit, unless revision ``number``
    is ours after all (its key is ours: keys are unique to the writer): those are referenced."""
    stored = assets.revision(client_id, asset_id, number)
    if stored is not None and stored.key == key:
        return
    delete_objects(store, key, thumb_key)


def get_revision(assets: AssetRepository, client_id: str, asset_id: str, number: int) -> AssetRevision:
    """Revision ``number`` of the asset, or 404."""
    revision = assets.revision(client_id, asset_id, number)
    if revision is None:
        raise NotFound(f"Asset {asset_id} has no revision {number}")
    return revision


def get_asset(assets: AssetRepository, client_id: str, asset_id: str) -> AssetDoc:
    """The asset, or 404 (also for another client's id)."""
    asset = assets.get(client_id, asset_id)
    if asset is None:
        raise NotFound(f"No asset {asset_id}")
    return asset


def revert(assets: AssetRepository, client_id: str, asset_id: str, number: int, now: datetime) -> AssetRevision:
    """A NEW revision with the pixels of revision ``number`` (history stays append-only); it points at
    the same immutable objects, so nothing is copied. An edit that lands first is reverted on top of."""
    from shared.errors import Conflict
    from shared.retry import CONTENDED_COMMIT, attempts

    for _attempt in attempts(CONTENDED_COMMIT, f"revert asset {asset_id}"):
        asset = get_asset(assets, client_id, asset_id)
        old = get_revision(assets, client_id, asset_id, number)
        new = AssetRevision(
            number=asset.current_revision + 1,
            key=old.key,
            thumbnail_key=old.thumbnail_key,
            content_type=old.content_type,
            width=old.width,
            height=old.height,
            size_bytes=old.size_bytes,
            operation=f"revert to r{number}",
            created_at=now,
            metadata={
                "reverted_to": number,
                "has_alpha": bool(old.metadata.get("has_alpha", False)),
                "source_revision": asset.current_revision,
            },
            duration_seconds=old.duration_seconds,
            poster_key=old.poster_key,
        )
        try:
            return commit_revision(assets, client_id=client_id, asset_id=asset_id, revision=new, now=now)
        except RevisionConflict:
            continue
    raise Conflict(f"Asset {asset_id} was edited concurrently; try again")
