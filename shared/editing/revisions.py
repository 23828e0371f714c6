"""Append-only asset revisions: store new pixels, commit revision n+1 atomically, revert.

A new revision is written in two steps. First its objects, under keys no other writer can use
(``r{n}-{random}.ext``: two concurrent edits of the same asset both compute a revision n, and the
loser must not overwrite the winner's pixels). Then ONE atomic commit: create
``assets/{id}/revisions/{n}`` (fails if it exists), update the asset's current revision, key,
thumbnail, type and size (guarded by the asset's update time, so ``current_revision`` was n-1 at the
moment of the commit), replace the asset's entry in its product's image list (guarded the same way),
and, for a job item, finish the item (guarded by the item's update time, so only one delivery can).
A lost race leaves only unreferenced objects, which are deleted.

A commit that went through but answered "unavailable" (the client's own retry then fails as if the
race were lost) is recognised by the token it writes on the revision: it is our revision, made
current, and its objects are never deleted (:func:`discard_objects` checks again before deleting).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from shared.adapters.firestore.catalog import products_ref
from shared.batch.commits import commit_once
from shared.catalog.assets import IMMUTABLE_CACHE, assets_ref
from shared.catalog.models import AssetDoc, AssetRevision
from shared.errors import NotFound
from shared.retry import CONTENDED_COMMIT, attempts

if TYPE_CHECKING:
    from google.cloud.firestore import Client

    from shared.editing.pipeline import Encoded
    from shared.imaging import Thumbnail
    from shared.storage import ObjectStore


class RevisionConflict(Exception):
    """Another edit became revision n first: recompute from the new current revision."""


class ItemTaken(Exception):
    """Another delivery of the same task changed the job item: it owns the outcome."""


@dataclass(frozen=True)
class ItemGuard:
    """A job item to finish in the same commit, if nobody else touched it since ``snapshot``."""

    ref: Any
    snapshot: Any
    changes: dict[str, Any]


def revision_ref(db: Client, client_id: str, asset_id: str, number: int) -> Any:
    return assets_ref(db, client_id).document(asset_id).collection("revisions").document(str(number))


def write_objects(
    store: ObjectStore, client_id: str, asset_id: str, number: int, encoded: Encoded, thumbnail: Thumbnail
) -> tuple[str, str]:
    """Put the revision's image and thumbnail under fresh keys; returns (key, thumbnail key)."""
    base = f"clients/{client_id}/assets/{asset_id}/r{number}-{secrets.token_hex(4)}"
    key, thumb_key = f"{base}.{encoded.extension}", f"{base}_thumb.webp"
    store.put(key, encoded.data, encoded.content_type, cache_control=IMMUTABLE_CACHE)
    store.put(thumb_key, thumbnail.data, thumbnail.content_type, cache_control=IMMUTABLE_CACHE)
    return key, thumb_key


def delete_objects(store: ObjectStore, *keys: str) -> None:
    for key in keys:
        try:
            store.delete(key)
        except Exception:  # noqa: S112 - garbage left behind is harmless; the outcome stands
            continue


def discard_objects(
    db: Client, store: ObjectStore, client_id: str, asset_id: str, number: int, key: str, thumb_key: str
) -> None:
    """Delete the objects of a revision ``number`` that lost its commit, unless revision ``number``
    is ours after all (its key is ours: keys are unique to the writer): those are referenced."""
    stored = revision_ref(db, client_id, asset_id, number).get()
    if stored.exists and (stored.to_dict() or {}).get("key") == key:
        return
    delete_objects(store, key, thumb_key)


def commit_revision(
    db: Client,
    *,
    client_id: str,
    asset_id: str,
    revision: AssetRevision,
    now: datetime,
    item: ItemGuard | None = None,
) -> AssetRevision:
    """Make ``revision`` the asset's current one in one atomic commit (see the module docstring).

    Raises :class:`RevisionConflict` when revision n already exists or the asset has moved past
    n-1, :class:`ItemTaken` when ``item`` changed, ``NotFound`` when the asset is gone. A commit of
    ours whose answer was lost is recognised (revision n carries our token) and returned.
    """
    from google.api_core.exceptions import AlreadyExists, FailedPrecondition
    from google.api_core.exceptions import NotFound as GNotFound

    asset_ref = assets_ref(db, client_id).document(asset_id)
    new_ref = revision_ref(db, client_id, asset_id, revision.number)
    token = secrets.token_hex(8)

    def ours() -> AssetRevision | None:
        stored = new_ref.get()
        return revision if stored.exists and (stored.to_dict() or {}).get("commit_token") == token else None

    for _attempt in attempts(CONTENDED_COMMIT, "commit an asset revision"):
        snapshot = asset_ref.get()
        if not snapshot.exists:
            raise NotFound(f"No asset {asset_id}")
        asset = AssetDoc.model_validate(snapshot.to_dict())
        if asset.current_revision != revision.number - 1:
            raise RevisionConflict(f"asset {asset_id} is at revision {asset.current_revision}")
        batch = db.batch()
        batch.create(new_ref, {**revision.model_dump(mode="python"), "commit_token": token})
        batch.update(
            asset_ref,
            {
                "current_revision": revision.number,
                "key": revision.key,
                "thumbnail_key": revision.thumbnail_key,
                "content_type": revision.content_type,
                "width": revision.width,
                "height": revision.height,
                "metadata.has_alpha": bool(revision.metadata.get("has_alpha", False)),
                "updated_at": now,
            },
            option=db.write_option(last_update_time=snapshot.update_time),
        )
        _replace_product_image(db, batch, client_id, asset, revision, now)
        if item is not None:
            batch.update(item.ref, item.changes, option=db.write_option(last_update_time=item.snapshot.update_time))
        committed = commit_once(
            partial(batch.commit, retry=None),
            ours,
            "commit an asset revision",
            conflicts=(AlreadyExists, FailedPrecondition, GNotFound),
        )
        if committed is not None:
            return revision
        # Not ours. Revision n exists: another edit got there first. Otherwise the asset, its product
        # or the item changed (or the product went) between our reads and the commit; nothing was
        # written, and the item decides whether to try again.
        if new_ref.get().exists:
            raise RevisionConflict(f"revision {revision.number} of {asset_id} exists")
        if item is not None and item.ref.get().update_time != item.snapshot.update_time:
            raise ItemTaken(f"another delivery finished item {item.ref.id}")
    raise RevisionConflict(f"asset {asset_id} kept changing during the commit")


def _replace_product_image(
    db: Client, batch: Any, client_id: str, asset: AssetDoc, revision: AssetRevision, now: datetime
) -> None:
    """The product's image entry for this asset shows the new revision, in place (its position is
    its meaning: the first image is the main one)."""
    if not asset.product_id:
        return
    product_ref = products_ref(db, client_id).document(asset.product_id)
    snapshot = product_ref.get()
    if not snapshot.exists:
        return
    images = list((snapshot.to_dict() or {}).get("images") or [])
    if not any(image.get("asset_id") == asset.id for image in images):
        return
    changes = {
        "key": revision.key,
        "thumbnail_key": revision.thumbnail_key,
        "content_type": revision.content_type,
        "width": revision.width,
        "height": revision.height,
    }
    updated = [{**image, **changes} if image.get("asset_id") == asset.id else image for image in images]
    batch.update(
        product_ref,
        {"images": updated, "updated_at": now},
        option=db.write_option(last_update_time=snapshot.update_time),
    )


def get_revision(db: Client, client_id: str, asset_id: str, number: int) -> AssetRevision:
    snapshot = revision_ref(db, client_id, asset_id, number).get()
    if not snapshot.exists:
        raise NotFound(f"Asset {asset_id} has no revision {number}")
    return AssetRevision.model_validate(snapshot.to_dict())
