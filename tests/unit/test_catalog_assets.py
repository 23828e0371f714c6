"""The one asset path against the in-memory repositories: create with revision 1, append, revert,
conflicts, and the library views (no emulator)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from shared.catalog import assets, library, products
from shared.catalog.models import (
    AssetDoc,
    AssetKind,
    AssetListQuery,
    AssetOrigin,
    AssetRevision,
    AssetUpdate,
    MediaKind,
    ProductCreate,
)
from shared.catalog.ports import RevisionConflict
from shared.errors import Conflict, NotFound, ValidationFailed
from shared.imaging import ImageLimits
from tests import images
from tests.fakes import InMemoryObjectStore
from tests.fakes_catalog import InMemoryAssetRepository, InMemoryProductRepository, in_memory_catalog

CLIENT = "client_a"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
KEY_FORM = r"^clients/client_a/assets/{asset}/r{n}-[0-9a-f]{{8}}\.{ext}$"


@dataclass(frozen=True)
class Media:
    data: bytes
    content_type: str = "image/png"
    extension: str = "png"
    width: int = 4
    height: int = 3


@dataclass(frozen=True)
class Thumb:
    data: bytes = b"thumb"
    content_type: str = "image/webp"


def setup() -> tuple[InMemoryProductRepository, InMemoryAssetRepository, InMemoryObjectStore, str]:
    repos = in_memory_catalog()
    assert isinstance(repos.products, InMemoryProductRepository)
    assert isinstance(repos.assets, InMemoryAssetRepository)
    repos.products.billing[CLIENT] = {"plan": "starter", "product_slots": 10}
    product = products.create_product(repos.products, CLIENT, ProductCreate(name="Vase"), NOW)
    return repos.products, repos.assets, InMemoryObjectStore(), product.id


def upload(repo: InMemoryAssetRepository, store: InMemoryObjectStore, product_id: str, asset_id: str) -> AssetDoc:
    return assets.store_product_image(
        repo,
        store,
        client_id=CLIENT,
        product_id=product_id,
        image_bytes=images.png((40, 30)),
        origin=assets.NewProductImage(asset_id=asset_id, origin=AssetOrigin.UPLOAD),
        limits=ImageLimits(),
        thumbnail_max_side=16,
        now=NOW,
    )


def revision(number: int, key: str, operation: str = "edit") -> AssetRevision:
    return AssetRevision(
        number=number,
        key=key,
        thumbnail_key=key + "_thumb",
        content_type="image/png",
        width=4,
        height=3,
        size_bytes=10,
        operation=operation,
        created_at=NOW,
    )


def test_an_upload_becomes_an_asset_with_revision_1_attached_to_its_product() -> None:
    product_repo, repo, store, product_id = setup()
    asset = upload(repo, store, product_id, "ast_1")
    assert asset.origin is AssetOrigin.UPLOAD and asset.source == "upload" and asset.media is MediaKind.IMAGE
    assert (asset.width, asset.height, asset.current_revision) == (40, 30, 1)
    assert re.match(KEY_FORM.format(asset="ast_1", n=1, ext="png"), asset.key)
    assert asset.thumbnail_key.endswith("_thumb.webp") and set(store.objects) == {asset.key, asset.thumbnail_key}
    [first] = repo.revisions(CLIENT, "ast_1")
    assert (first.number, first.operation, first.key) == (1, "original", asset.key)
    stored = product_repo.get(CLIENT, product_id)
    assert stored is not None and [(i.asset_id, i.key) for i in stored.images] == [("ast_1", asset.key)]


def test_storing_the_same_asset_again_changes_nothing() -> None:
    product_repo, repo, store, product_id = setup()
    first = upload(repo, store, product_id, "ast_1")
    assert upload(repo, store, product_id, "ast_1") == first
    stored = product_repo.get(CLIENT, product_id)
    assert stored is not None and len(stored.images) == 1 and len(store.objects) == 2


def test_a_concurrent_writer_of_the_same_asset_wins_and_our_objects_are_deleted() -> None:
    _, repo, store, product_id = setup()
    new = assets.NewAsset(
        asset_id="ast_g",
        client_id=CLIENT,
        kind=AssetKind.GENERATED,
        source="offline",
        origin=AssetOrigin.GENERATED,
        operation="generate",
        product_id=product_id,
        job_id="job_1",
    )
    theirs: list[AssetDoc] = []
    repo.before_write.append(lambda: theirs.append(assets.create_asset(repo, store, new, Media(b"a"), Thumb(), NOW)[0]))
    ours, created = assets.create_asset(repo, store, new, Media(b"b"), Thumb(), NOW)
    assert not created and ours == theirs[0]
    assert set(store.objects) == {ours.key, ours.thumbnail_key}  # only the winner's objects are left
    assert ours.origin is AssetOrigin.GENERATED and ours.job_id == "job_1"


def test_a_product_deleted_before_its_image_is_stored_leaves_nothing() -> None:
    product_repo, repo, store, product_id = setup()
    products.delete_product(product_repo, CLIENT, product_id, NOW)
    with pytest.raises(NotFound):
        upload(repo, store, product_id, "ast_1")
    assert repo.get(CLIENT, "ast_1") is None and store.objects == {}


def test_revisions_append_and_the_product_image_follows() -> None:
    product_repo, repo, store, product_id = setup()
    upload(repo, store, product_id, "ast_1")
    key, thumb = assets.write_objects(store, CLIENT, "ast_1", 2, Media(b"edited"), Thumb())
    assets.commit_revision(repo, client_id=CLIENT, asset_id="ast_1", revision=revision(2, key), now=NOW)
    asset = assets.get_asset(repo, CLIENT, "ast_1")
    assert (asset.current_revision, asset.key) == (2, key)
    assert [r.number for r in repo.revisions(CLIENT, "ast_1")] == [1, 2]
    stored = product_repo.get(CLIENT, product_id)
    assert stored is not None and stored.images[0].key == key
    assert thumb.endswith("_thumb.webp")


def test_two_edits_of_one_asset_never_share_a_revision_number() -> None:
    _, repo, store, product_id = setup()
    upload(repo, store, product_id, "ast_1")
    # Another edit commits revision 2 between our read of the asset and our write.
    repo.before_write.append(
        lambda: assets.commit_revision(
            repo, client_id=CLIENT, asset_id="ast_1", revision=revision(2, "theirs"), now=NOW
        )
    )
    key, thumb = assets.write_objects(store, CLIENT, "ast_1", 2, Media(b"ours"), Thumb())
    with pytest.raises(RevisionConflict):
        assets.commit_revision(repo, client_id=CLIENT, asset_id="ast_1", revision=revision(2, key), now=NOW)
    assets.discard_objects(repo, store, CLIENT, "ast_1", 2, key, thumb)
    assert key not in store.objects and thumb not in store.objects
    assert [r.key for r in repo.revisions(CLIENT, "ast_1")][1:] == ["theirs"]
    # A stale revision number is a conflict too, never a second revision.
    with pytest.raises(RevisionConflict):
        assets.commit_revision(repo, client_id=CLIENT, asset_id="ast_1", revision=revision(2, "late"), now=NOW)


def test_discard_keeps_the_objects_of_a_revision_that_is_ours_after_all() -> None:
    _, repo, store, product_id = setup()
    upload(repo, store, product_id, "ast_1")
    key, thumb = assets.write_objects(store, CLIENT, "ast_1", 2, Media(b"ours"), Thumb())
    assets.commit_revision(repo, client_id=CLIENT, asset_id="ast_1", revision=revision(2, key), now=NOW)
    assets.discard_objects(repo, store, CLIENT, "ast_1", 2, key, thumb)
    assert key in store.objects and thumb in store.objects


def test_revert_appends_a_revision_pointing_at_the_old_pixels() -> None:
    _, repo, store, product_id = setup()
    original = upload(repo, store, product_id, "ast_1")
    assets.commit_revision(repo, client_id=CLIENT, asset_id="ast_1", revision=revision(2, "k2"), now=NOW)
    later = NOW + timedelta(minutes=1)
    reverted = assets.revert(repo, CLIENT, "ast_1", 1, later)
    assert (reverted.number, reverted.key, reverted.operation) == (3, original.key, "revert to r1")
    assert reverted.metadata["source_revision"] == 2
    assert assets.get_asset(repo, CLIENT, "ast_1").key == original.key
    with pytest.raises(NotFound):
        assets.revert(repo, CLIENT, "ast_1", 9, later)
    with pytest.raises(NotFound):
        assets.revert(repo, CLIENT, "ast_missing", 1, later)


def test_a_revert_that_loses_to_an_edit_is_applied_on_top_of_it() -> None:
    _, repo, store, product_id = setup()
    upload(repo, store, product_id, "ast_1")
    repo.before_write.append(
        lambda: assets.commit_revision(repo, client_id=CLIENT, asset_id="ast_1", revision=revision(2, "e"), now=NOW)
    )
    reverted = assets.revert(repo, CLIENT, "ast_1", 1, NOW)
    assert reverted.number == 3 and [r.number for r in repo.revisions(CLIENT, "ast_1")] == [1, 2, 3]


def test_a_revert_that_always_loses_is_a_conflict() -> None:
    _, repo, store, product_id = setup()
    upload(repo, store, product_id, "ast_1")

    class Contended(InMemoryAssetRepository):
        def append_revision(self, *args: object, **kwargs: object) -> None:
            raise RevisionConflict("always")

    contended = Contended(InMemoryProductRepository())
    contended.assets, contended.stored_revisions = repo.assets, repo.stored_revisions
    with pytest.raises(Conflict):
        assets.revert(contended, CLIENT, "ast_1", 1, NOW)


def test_the_library_lists_updates_and_deletes() -> None:
    product_repo, repo, store, product_id = setup()
    for index in range(3):
        asset = upload(repo, store, product_id, f"ast_{index}")
        repo.assets[CLIENT][asset.id] = asset.model_copy(update={"created_at": NOW + timedelta(seconds=index)})
    page = library.list_assets(repo, CLIENT, AssetListQuery(limit=2))
    assert [a.id for a in page.items] == ["ast_2", "ast_1"] and page.next_cursor
    rest = library.list_assets(repo, CLIENT, AssetListQuery(limit=2, cursor=page.next_cursor))
    assert [a.id for a in rest.items] == ["ast_0"] and rest.next_cursor is None
    library.update_asset(repo, CLIENT, "ast_1", AssetUpdate(pinned=True), NOW)
    assert [a.id for a in library.list_assets(repo, CLIENT, AssetListQuery(pinned=True)).items] == ["ast_1"]
    with pytest.raises(ValidationFailed):
        library.update_asset(repo, CLIENT, "ast_1", AssetUpdate(), NOW)
    gone = repo.get(CLIENT, "ast_0")
    assert gone is not None
    library.delete_asset(repo, store, CLIENT, "ast_0")
    assert gone.key not in store.objects and repo.get(CLIENT, "ast_0") is None
    stored = product_repo.get(CLIENT, product_id)
    assert stored is not None and [i.asset_id for i in stored.images] == ["ast_1", "ast_2"]
    with pytest.raises(NotFound):
        library.delete_asset(repo, store, CLIENT, "ast_0")
    detail = library.asset_detail(repo, store, CLIENT, "ast_1", 60)
    assert [r.number for r in detail.revisions] == [1]


def test_documents_stored_before_the_media_fields_still_load() -> None:
    old = AssetDoc.model_validate(
        {
            "id": "ast_old",
            "client_id": CLIENT,
            "kind": "product_image",
            "source": "upload",
            "key": "clients/client_a/assets/ast_old/r1.jpg",
            "thumbnail_key": "clients/client_a/assets/ast_old/r1_thumb.webp",
            "content_type": "image/jpeg",
            "width": 1,
            "height": 1,
            "created_at": NOW,
            "updated_at": NOW,
        }
    )
    assert (old.media, old.origin, old.origin_media_id, old.duration_seconds, old.poster_key) == (
        MediaKind.IMAGE,
        None,
        None,
        None,
        None,
    )
