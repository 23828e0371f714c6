"""Bulk asset actions and the library's filters through catalog_api, on the Firestore emulator and moto:
a result per id for mixed own, foreign and missing ids, approvals with their events, tags, deletes that
leave the product's images and the objects as the single delete does, and the limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests import images
from tests.catalog_helpers import asset_doc, make_product, problem, product_doc, upload_image


@pytest.fixture
def other_headers(stack: Any, other_client_id: str) -> dict[str, str]:
    minted: dict[str, str] = stack.headers(other_client_id)
    return minted


def new_images(stack: Any, catalog: Any, headers: dict[str, str], client_id: str, count: int) -> tuple[str, list[str]]:
    product_id = make_product(catalog, headers, "Lamp")
    ids = [
        upload_image(stack, catalog, headers, client_id, product_id, images.png((24 + n, 20)), filename=f"{n}.png")
        for n in range(count)
    ]
    return product_id, ids


def bulk(catalog: Any, headers: dict[str, str], body: dict[str, Any]) -> dict[str, str]:
    response = catalog.post("/assets/bulk", json=body, headers=headers)
    assert response.status_code == 200, response.json
    return {result["id"]: result["status"] for result in response.json["results"]}


def listed(catalog: Any, headers: dict[str, str], query: str) -> list[str]:
    response = catalog.get(f"/assets?{query}", headers=headers)
    assert response.status_code == 200, response.json
    return [item["id"] for item in response.json["items"]]


def outbox_types(stack: Any, client_id: str) -> list[tuple[str, str]]:
    from google.cloud.firestore import FieldFilter

    query = stack.platform.db.collection("outbox").where(filter=FieldFilter("client_id", "==", client_id))
    events = sorted((s.to_dict() for s in query.stream()), key=lambda e: (e["subject"]["id"], e["sequence"]))
    return [(e["type"], e["subject"]["id"]) for e in events]


def test_bulk_approve_tag_and_delete_of_own_foreign_and_missing_ids(
    stack: Any,
    catalog: Any,
    headers: dict[str, str],
    other_headers: dict[str, str],
    client_id: str,
    other_client_id: str,
) -> None:
    product_id, (a, b, c) = new_images(stack, catalog, headers, client_id, 3)
    _, (theirs,) = new_images(stack, catalog, other_headers, other_client_id, 1)

    approved = bulk(catalog, headers, {"action": "approve", "ids": [a, b, theirs, "ast_missing"]})
    assert approved == {a: "ok", b: "ok", theirs: "not_found", "ast_missing": "not_found"}
    assert asset_doc(stack, client_id, a)["approved"] and asset_doc(stack, client_id, b)["approved"]
    assert not asset_doc(stack, client_id, c)["approved"]
    assert not asset_doc(stack, other_client_id, theirs)["approved"]
    # One numbered event per approval, written with it (the single PATCH's rule).
    assert sorted(outbox_types(stack, client_id)) == sorted(
        [("catalog.asset_approved", a), ("catalog.asset_approved", b)]
    )
    assert asset_doc(stack, client_id, a)["event_seq"] == 1

    tagged = bulk(catalog, headers, {"action": "tag", "ids": [a, c, theirs], "tags": ["Hero Shot", "summer"]})
    assert tagged == {a: "ok", c: "ok", theirs: "not_found"}
    assert asset_doc(stack, client_id, a)["tags"] == ["hero shot", "summer"]
    assert asset_doc(stack, other_client_id, theirs).get("tags", []) == []
    assert listed(catalog, headers, "tag=hero%20shot") == [c, a]
    assert bulk(catalog, headers, {"action": "untag", "ids": [a], "tags": ["summer"]}) == {a: "ok"}
    assert listed(catalog, headers, "tag=summer") == [c]

    stored = asset_doc(stack, client_id, b)
    deleted = bulk(catalog, headers, {"action": "delete", "ids": [b, theirs, "ast_missing"]})
    assert deleted == {b: "ok", theirs: "not_found", "ast_missing": "not_found"}
    assert catalog.get(f"/assets/{b}", headers=headers).status_code == 404
    assert [image["asset_id"] for image in product_doc(stack, client_id, product_id)["images"]] == [a, c]
    store = stack.platform.object_store
    assert store.head(stored["key"]) is None and store.head(stored["thumbnail_key"]) is None
    assert catalog.get(f"/assets/{theirs}", headers=other_headers).status_code == 200


def test_ten_thousand_ids_are_a_422_and_nothing_changes(
    stack: Any, catalog: Any, headers: dict[str, str], client_id: str
) -> None:
    _, (a,) = new_images(stack, catalog, headers, client_id, 1)
    ids = [a] + [f"ast_{n}" for n in range(9_999)]
    for action in ("approve", "delete"):
        body = problem(catalog.post("/assets/bulk", json={"action": action, "ids": ids}, headers=headers), 422)
        assert body["code"] == "validation_failed"
        assert [error["field"] for error in body["errors"]] == ["ids"]
    assert catalog.get(f"/assets/{a}", headers=headers).json["approved"] is False
    problem(catalog.post("/assets/bulk", json={"action": "tag", "ids": [a]}, headers=headers), 422)
    problem(catalog.post("/assets/bulk", json={"action": "approve", "ids": []}, headers=headers), 422)


def test_filters_by_job_origin_tag_and_creation_time(
    stack: Any, catalog: Any, headers: dict[str, str], client_id: str
) -> None:
    _, (a, b) = new_images(stack, catalog, headers, client_id, 2)
    ref = stack.platform.db.collection("clients").document(client_id).collection("assets")
    early = datetime(2025, 1, 1, tzinfo=UTC)
    ref.document(a).update({"created_at": early, "job_id": "job_x", "origin": "generated"})
    assert listed(catalog, headers, "job_id=job_x") == [a]
    assert listed(catalog, headers, "origin=generated") == [a]
    assert listed(catalog, headers, "origin=upload") == [b]
    start = (early + timedelta(days=1)).isoformat().replace("+00:00", "Z")
    assert listed(catalog, headers, f"created_from={start}") == [b]
    assert listed(catalog, headers, f"created_to={start}") == [a]
    assert listed(catalog, headers, f"created_to={start}&job_id=job_x&origin=generated") == [a]
    bulk(catalog, headers, {"action": "tag", "ids": [a, b], "tags": ["x"]})
    assert listed(catalog, headers, f"tag=x&created_from={start}") == [b]
    assert listed(catalog, headers, "tag=x&limit=1") == [b]
    problem(catalog.get("/assets?created_from=2026-01-01T00:00:00", headers=headers), 422)


def test_the_adapter_writes_the_rest_of_a_batch_when_one_asset_moved(
    stack: Any, catalog: Any, headers: dict[str, str], client_id: str
) -> None:
    """Firestore refuses the whole batch for one stale precondition; the adapter then writes one by one
    and answers which asset moved (the use case reads it again)."""
    from shared.adapters.firestore.catalog import FirestoreAssetRepository

    _, ids = new_images(stack, catalog, headers, client_id, 3)
    repo = FirestoreAssetRepository(stack.platform.db)
    loaded = repo.load_many(client_id, [*ids, "ast_missing"])
    assert sorted(loaded) == sorted(ids)
    # Another writer changes the second asset between our read and our write.
    assert bulk(catalog, headers, {"action": "pin", "ids": [ids[1]]}) == {ids[1]: "ok"}
    moved = repo.update_many(client_id, [(loaded[a], {"approved": True}) for a in ids])
    assert moved == {ids[1]}
    assert [asset_doc(stack, client_id, a)["approved"] for a in ids] == [True, False, True]
    assert asset_doc(stack, client_id, ids[1])["pinned"] is True  # the other writer's change stands
    assert sorted(outbox_types(stack, client_id)) == sorted(
        [("catalog.asset_approved", ids[0]), ("catalog.asset_approved", ids[2])]
    )
