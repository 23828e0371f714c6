"""Bulk asset actions, tags and the library's new filters against the in-memory repositories."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from shared.catalog import assets, bulk, library, products
from shared.catalog.models import (
    MAX_ASSET_TAGS,
    MAX_BULK_IDS,
    AssetBulkRequest,
    AssetDoc,
    AssetKind,
    AssetListQuery,
    AssetOrigin,
    AssetUpdate,
    ProductCreate,
)
from shared.events.model import EventType
from shared.imaging import ImageLimits
from tests import images
from tests.fakes import InMemoryObjectStore
from tests.fakes_catalog import InMemoryAssetRepository, InMemoryProductRepository, in_memory_catalog

CLIENT = "client_a"
OTHER = "client_b"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def setup(count: int = 3) -> tuple[InMemoryProductRepository, InMemoryAssetRepository, InMemoryObjectStore, str]:
    repos = in_memory_catalog()
    assert isinstance(repos.products, InMemoryProductRepository)
    assert isinstance(repos.assets, InMemoryAssetRepository)
    store = InMemoryObjectStore()
    for client in (CLIENT, OTHER):
        repos.products.billing[client] = {"plan": "starter", "product_slots": 10}
    product = products.create_product(repos.products, CLIENT, ProductCreate(name="Vase"), NOW)
    for index in range(count):
        add(repos.assets, store, CLIENT, product.id, f"ast_{index}", NOW + timedelta(minutes=index))
    other = products.create_product(repos.products, OTHER, ProductCreate(name="Theirs"), NOW)
    add(repos.assets, store, OTHER, other.id, "ast_theirs", NOW)
    return repos.products, repos.assets, store, product.id


def add(repo: InMemoryAssetRepository, store: InMemoryObjectStore, client: str, product_id: str, asset_id: str,
        created: datetime) -> AssetDoc:  # fmt: skip
    return assets.store_product_image(
        repo,
        store,
        client_id=client,
        product_id=product_id,
        image_bytes=images.png((8, 6)),
        origin=assets.NewProductImage(asset_id=asset_id, origin=AssetOrigin.UPLOAD),
        limits=ImageLimits(),
        thumbnail_max_side=8,
        now=created,
    )


def run(repo: InMemoryAssetRepository, store: InMemoryObjectStore, **body: object) -> dict[str, str]:
    out = bulk.bulk_assets(repo, store, CLIENT, AssetBulkRequest.model_validate(body), NOW, parallel=1)
    return {result.id: result.status.value for result in out.results}


def test_bulk_approve_answers_per_id_and_writes_one_numbered_event_per_change() -> None:
    _, repo, store, _ = setup()
    out = bulk.bulk_assets(
        repo,
        store,
        CLIENT,
        AssetBulkRequest(action="approve", ids=["ast_0", "ast_1", "ast_missing", "ast_theirs", "ast_0"]),
        NOW,
    )
    assert [(r.id, r.status.value) for r in out.results] == [
        ("ast_0", "ok"),
        ("ast_1", "ok"),
        ("ast_missing", "not_found"),
        ("ast_theirs", "not_found"),
    ]
    assert out.counts == {"not_found": 2, "ok": 2}
    assert [a.approved for a in (repo.get(CLIENT, "ast_0"), repo.get(CLIENT, "ast_1"), repo.get(CLIENT, "ast_2"))] == [
        True,
        True,
        False,
    ]
    theirs = repo.get(OTHER, "ast_theirs")
    assert theirs is not None and not theirs.approved
    assert [(e.type, e.subject.id) for e in repo.events] == [
        (EventType.ASSET_APPROVED, "ast_0"),
        (EventType.ASSET_APPROVED, "ast_1"),
    ]
    # Approving again is fine and changes nothing (no second event); unapproving is numbered after it.
    assert run(repo, store, action="approve", ids=["ast_0"]) == {"ast_0": "ok"}
    assert len(repo.events) == 2
    assert run(repo, store, action="unapprove", ids=["ast_0"]) == {"ast_0": "ok"}
    assert repo.events[-1].type is EventType.ASSET_UNAPPROVED and repo.events[-1].sequence == 2


@pytest.mark.parametrize(
    ("action", "flag", "value"),
    [("favorite", "favorite", True), ("pin", "pinned", True), ("unfavorite", "favorite", False)],
)
def test_bulk_flags(action: str, flag: str, value: bool) -> None:
    _, repo, store, _ = setup()
    repo.update_flags(CLIENT, "ast_0", {"favorite": True})
    assert run(repo, store, action=action, ids=["ast_0", "ast_1"]) == {"ast_0": "ok", "ast_1": "ok"}
    assert all(getattr(repo.get(CLIENT, aid), flag) is value for aid in ("ast_0", "ast_1"))


def test_an_asset_that_keeps_changing_is_a_conflict_and_the_rest_is_written() -> None:
    _, repo, store, _ = setup()
    original = repo.update_many

    def racing(client_id: str, writes: list) -> set[str]:  # type: ignore[type-arg]
        # Someone else writes ast_1 between every read and write of ours.
        repo.update_flags(CLIENT, "ast_1", {"pinned": not repo.get(CLIENT, "ast_1").pinned})  # type: ignore[union-attr]
        return original(client_id, writes)

    repo.update_many = racing  # type: ignore[method-assign]
    assert run(repo, store, action="approve", ids=["ast_0", "ast_1"]) == {"ast_0": "ok", "ast_1": "conflict"}
    assert repo.get(CLIENT, "ast_0").approved and not repo.get(CLIENT, "ast_1").approved  # type: ignore[union-attr]


def test_one_lost_race_is_read_and_written_again() -> None:
    _, repo, store, _ = setup()
    original = repo.update_many
    raced: list[int] = []

    def racing_once(client_id: str, writes: list) -> set[str]:  # type: ignore[type-arg]
        if not raced:
            raced.append(1)
            repo.update_flags(CLIENT, "ast_1", {"pinned": True})
        return original(client_id, writes)

    repo.update_many = racing_once  # type: ignore[method-assign]
    assert run(repo, store, action="favorite", ids=["ast_1"]) == {"ast_1": "ok"}
    stored = repo.get(CLIENT, "ast_1")
    assert stored is not None and stored.favorite and stored.pinned  # the other writer's change is kept


def test_tags_are_normalised_deduplicated_bounded_and_removable() -> None:
    _, repo, store, _ = setup()
    assert run(repo, store, action="tag", ids=["ast_0", "ast_1"], tags=["Summer  Sale", "hero", "summer sale"]) == {
        "ast_0": "ok",
        "ast_1": "ok",
    }
    assert repo.get(CLIENT, "ast_0").tags == ["summer sale", "hero"]  # type: ignore[union-attr]
    assert run(repo, store, action="untag", ids=["ast_0"], tags=["HERO"]) == {"ast_0": "ok"}
    assert repo.get(CLIENT, "ast_0").tags == ["summer sale"]  # type: ignore[union-attr]
    # The cap: an asset that would carry too many tags is refused, the others are tagged.
    many = [f"t{n}" for n in range(MAX_ASSET_TAGS - 1)]
    assert run(repo, store, action="tag", ids=["ast_1"], tags=many[:10]) == {"ast_1": "ok"}
    out = bulk.bulk_assets(
        repo, store, CLIENT, AssetBulkRequest(action="tag", ids=["ast_1", "ast_2"], tags=many[10:]), NOW, parallel=1
    )
    assert [(r.id, r.status.value) for r in out.results] == [("ast_1", "refused"), ("ast_2", "ok")]
    assert "at most 20" in (out.results[0].detail or "")
    assert len(repo.get(CLIENT, "ast_1").tags) == 12  # type: ignore[union-attr]


def test_bulk_delete_removes_documents_product_entries_and_objects() -> None:
    product_repo, repo, store, product_id = setup()
    kept = repo.get(CLIENT, "ast_2")
    theirs = repo.get(OTHER, "ast_theirs")
    assert kept is not None and theirs is not None
    result = run(repo, store, action="delete", ids=["ast_0", "ast_1", "ast_theirs", "nope"])
    assert result == {"ast_0": "ok", "ast_1": "ok", "ast_theirs": "not_found", "nope": "not_found"}
    assert repo.get(CLIENT, "ast_0") is None and repo.get(CLIENT, "ast_1") is None
    assert repo.get(OTHER, "ast_theirs") is not None
    product = product_repo.get(CLIENT, product_id)
    assert product is not None and [image.asset_id for image in product.images] == ["ast_2"]
    assert set(store.objects) == {kept.key, kept.thumbnail_key, theirs.key, theirs.thumbnail_key}


def test_the_request_limits() -> None:
    with pytest.raises(ValidationError, match="at most 1000"):
        AssetBulkRequest(action="approve", ids=[f"a{n}" for n in range(10_000)])
    AssetBulkRequest(action="approve", ids=[f"a{n}" for n in range(MAX_BULK_IDS)])
    with pytest.raises(ValidationError, match="needs tags"):
        AssetBulkRequest(action="tag", ids=["a"])
    with pytest.raises(ValidationError, match="takes no tags"):
        AssetBulkRequest(action="pin", ids=["a"], tags=["x"])
    with pytest.raises(ValidationError):
        AssetBulkRequest(action="tag", ids=["a"], tags=["x" * 41])
    with pytest.raises(ValidationError):
        AssetBulkRequest(action="tag", ids=["a"], tags=["   "])
    with pytest.raises(ValidationError):
        AssetBulkRequest(action="explode", ids=["a"])  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        AssetBulkRequest(action="pin", ids=[])


def test_patch_replaces_tags() -> None:
    _, repo, _, _ = setup()
    doc = library.update_asset(repo, CLIENT, "ast_0", AssetUpdate(tags=["A", "b", "a"]), NOW)
    assert doc.tags == ["a", "b"] and repo.get(CLIENT, "ast_0").tags == ["a", "b"]  # type: ignore[union-attr]
    library.update_asset(repo, CLIENT, "ast_0", AssetUpdate(tags=[]), NOW)
    assert repo.get(CLIENT, "ast_0").tags == []  # type: ignore[union-attr]


def test_library_filters_on_job_tag_origin_and_created_range() -> None:
    _, repo, store, product_id = setup(count=4)
    new = assets.NewAsset(
        asset_id="ast_gen",
        client_id=CLIENT,
        kind=AssetKind.GENERATED,
        source="offline",
        origin=AssetOrigin.GENERATED,
        operation="generate",
        product_id=product_id,
        job_id="job_1",
    )
    assets.create_asset(repo, store, new, _Media(), _Thumb(), NOW + timedelta(hours=1))
    repo.update_flags(CLIENT, "ast_1", {"tags": ["hero"]})

    def ids(**query: object) -> list[str]:
        page = library.list_assets(repo, CLIENT, AssetListQuery.model_validate(query))
        return [doc.id for doc in page.items]

    assert ids(job_id="job_1") == ["ast_gen"]
    assert ids(origin="generated") == ["ast_gen"]
    assert ids(origin="upload") == ["ast_3", "ast_2", "ast_1", "ast_0"]
    assert ids(tag="HERO") == ["ast_1"]
    start, end = NOW + timedelta(minutes=1), NOW + timedelta(minutes=3)
    assert ids(created_from=start.isoformat(), created_to=end.isoformat()) == ["ast_2", "ast_1"]
    assert ids(created_from=start.isoformat(), limit=2) == ["ast_gen", "ast_3"]
    with pytest.raises(ValidationError, match="before created_to"):
        AssetListQuery.model_validate({"created_from": end.isoformat(), "created_to": start.isoformat()})
    with pytest.raises(ValidationError, match="time zone"):
        AssetListQuery.model_validate({"created_from": "2026-01-01T00:00:00"})


class _Media:
    data = images.png((8, 8))
    content_type = "image/png"
    extension = "png"
    width = 8
    height = 8


class _Thumb:
    data = b"thumb"
    content_type = "image/webp"
