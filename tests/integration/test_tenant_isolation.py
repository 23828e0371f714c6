"""Tenant isolation: client B can neither see nor change anything of client A's.

B gets 404 for every id of A's (never 403, never 200: ids are no oracle), B's lists are empty,
and A's products, uploads, assets and imports are exactly as before B's attempts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests import images

CSV = b"name,sku,price,category\nWalnut Bowl,WB-1,24.50,Kitchen\nMaple Board,MB-2,39.00,Kitchen\n"


@dataclass
class TenantA:
    headers: dict[str, str]
    product_id: str
    asset_id: str
    completed_upload_id: str
    pending_upload_id: str
    csv_upload_id: str
    import_id: str
    idempotency_key: str


def _slot(api: Any, headers: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    response = api.post("/uploads", json=body, headers=headers)
    assert response.status_code == 201, response.json
    slot: dict[str, Any] = response.json
    return slot


def _put(http: httpx.Client, slot: dict[str, Any], data: bytes) -> None:
    response = http.put(slot["upload"]["url"], content=data, headers=slot["upload"]["headers"])
    assert response.status_code == 200, response.text


def _image_slot(api: Any, http: httpx.Client, headers: dict[str, str], product_id: str, data: bytes) -> str:
    slot = _slot(
        api,
        headers,
        {"filename": "a.jpg", "content_type": "image/jpeg", "size_bytes": len(data), "product_id": product_id},
    )
    _put(http, slot, data)
    return str(slot["id"])


@pytest.fixture
def tenant_a(stack: Any, http: httpx.Client, client_id: str) -> TenantA:
    api = stack.client("catalog_api")
    headers = stack.headers(client_id)
    key = "a-create-product-1"
    created = api.post(
        "/products",
        json={"name": "Walnut Chair", "sku": "WC-9", "category": "Chairs", "price": "120.00", "tags": ["wood"]},
        headers={**headers, "Idempotency-Key": key},
    )
    assert created.status_code == 201, created.json
    product_id = created.json["id"]

    completed = _image_slot(api, http, headers, product_id, images.jpeg((200, 150)))
    done = api.post(f"/uploads/{completed}/complete", headers=headers)
    assert done.status_code == 200, done.json
    # Uploaded but not completed yet: if B could complete it, it would become an image.
    pending = _image_slot(api, http, headers, product_id, images.png((120, 120)))

    csv_slot = _slot(
        api, headers, {"filename": "p.csv", "content_type": "text/csv", "size_bytes": len(CSV), "purpose": "csv_import"}
    )
    _put(http, csv_slot, CSV)
    assert api.post(f"/uploads/{csv_slot['id']}/complete", headers=headers).json["status"] == "completed"
    imported = api.post("/imports", json={"upload_id": csv_slot["id"]}, headers=headers)
    assert imported.status_code == 201, imported.json
    assert imported.json["status"] == "draft"

    return TenantA(
        headers=headers,
        product_id=product_id,
        asset_id=done.json["asset_id"],
        completed_upload_id=completed,
        pending_upload_id=pending,
        csv_upload_id=csv_slot["id"],
        import_id=imported.json["id"],
        idempotency_key=key,
    )


def _without_urls(value: Any) -> Any:
    """Presigned URLs are signed per request; everything else must not change."""
    if isinstance(value, dict):
        return {k: _without_urls(v) for k, v in value.items() if not k.endswith("url")}
    if isinstance(value, list):
        return [_without_urls(v) for v in value]
    return value


def _snapshot(api: Any, a: TenantA) -> dict[str, Any]:
    paths = [
        "/products",
        f"/products/{a.product_id}",
        "/assets",
        f"/assets/{a.asset_id}",
        f"/uploads/{a.completed_upload_id}",
        f"/uploads/{a.pending_upload_id}",
        f"/uploads/{a.csv_upload_id}",
        f"/imports/{a.import_id}",
    ]
    state: dict[str, Any] = {}
    for path in paths:
        response = api.get(path, headers=a.headers)
        assert response.status_code == 200, (path, response.json)
        state[path] = _without_urls(response.json)
    errors = api.get(f"/imports/{a.import_id}/errors.csv", headers=a.headers)
    assert errors.status_code == 200
    state["errors.csv"] = errors.data
    return state


def _assert_not_found(response: Any, what: str) -> None:
    assert response.status_code == 404, (what, response.status_code, response.get_data(as_text=True))
    assert response.content_type == "application/problem+json", what
    assert response.json["code"] == "not_found", what


def test_other_client_sees_404_and_changes_nothing(
    stack: Any, http: httpx.Client, tenant_a: TenantA, other_client_id: str, client_id: str
) -> None:
    api = stack.client("catalog_api")
    a = tenant_a
    b = stack.headers(other_client_id)
    store = stack.platform.object_store
    pending_key = f"uploads/{client_id}/{a.pending_upload_id}"
    before = _snapshot(api, a)
    assert len(before[f"/products/{a.product_id}"]["images"]) == 1
    assert store.head(pending_key) is not None
    assert stack.run_tasks() == 0

    attempts = {
        "GET product": api.get(f"/products/{a.product_id}", headers=b),
        "PATCH product": api.patch(f"/products/{a.product_id}", json={"name": "Stolen"}, headers=b),
        "DELETE product": api.delete(f"/products/{a.product_id}", headers=b),
        "GET upload": api.get(f"/uploads/{a.completed_upload_id}", headers=b),
        "GET pending upload": api.get(f"/uploads/{a.pending_upload_id}", headers=b),
        "complete pending upload": api.post(f"/uploads/{a.pending_upload_id}/complete", headers=b),
        "complete completed upload": api.post(f"/uploads/{a.completed_upload_id}/complete", headers=b),
        "GET asset": api.get(f"/assets/{a.asset_id}", headers=b),
        "PATCH asset": api.patch(f"/assets/{a.asset_id}", json={"pinned": True}, headers=b),
        "DELETE asset": api.delete(f"/assets/{a.asset_id}", headers=b),
        "GET import": api.get(f"/imports/{a.import_id}", headers=b),
        "PATCH import": api.patch(
            f"/imports/{a.import_id}", json={"mapping": before[f"/imports/{a.import_id}"]["mapping"]}, headers=b
        ),
        "start import": api.post(f"/imports/{a.import_id}/start", headers=b),
        "GET errors.csv": api.get(f"/imports/{a.import_id}/errors.csv", headers=b),
        "slot for A's product": api.post(
            "/uploads",
            json={"filename": "b.jpg", "content_type": "image/jpeg", "size_bytes": 100, "product_id": a.product_id},
            headers=b,
        ),
        "import from A's upload": api.post("/imports", json={"upload_id": a.csv_upload_id}, headers=b),
    }
    for what, response in attempts.items():
        _assert_not_found(response, what)

    # A foreign id answers exactly like an id that exists nowhere: no oracle.
    foreign = api.get(f"/products/{a.product_id}", headers=b).json
    unknown = api.get(f"/products/{a.product_id}x", headers=b).json
    assert (foreign["title"], foreign["status"]) == (unknown["title"], unknown["status"])

    # B's lists and searches are empty.
    for path in (
        "/products",
        "/products?q=walnut",
        "/products?category=Chairs",
        "/assets",
        f"/assets?product_id={a.product_id}",
    ):
        response = api.get(path, headers=b)
        assert response.status_code == 200, path
        assert response.json == {"items": [], "next_cursor": None}, path

    # The same Idempotency-Key in B's hands is B's own key: no replay of A's response.
    own = api.post("/products", json={"name": "B's Stool"}, headers={**b, "Idempotency-Key": a.idempotency_key})
    assert own.status_code == 201, own.json
    assert own.json["id"] != a.product_id
    assert own.json["name"] == "B's Stool"
    assert [p["id"] for p in api.get("/products", headers=b).json["items"]] == [own.json["id"]]

    # Nothing of A's changed, nothing was started, the pending file is still there for A.
    assert stack.run_tasks() == 0
    assert _snapshot(api, a) == before
    assert store.head(pending_key) is not None
    assert store.head(f"clients/{client_id}/csv/{a.csv_upload_id}") is not None

    # And A can still use all of it.
    done = api.post(f"/uploads/{a.pending_upload_id}/complete", headers=a.headers)
    assert done.status_code == 200, done.json
    assert len(api.get(f"/products/{a.product_id}", headers=a.headers).json["images"]) == 2
    assert api.patch(f"/assets/{a.asset_id}", json={"favorite": True}, headers=a.headers).json["favorite"] is True
    replay = api.post(
        "/products", json={"name": "B's Stool"}, headers={**a.headers, "Idempotency-Key": a.idempotency_key}
    )
    assert replay.status_code == 409  # A's key stays bound to A's own first request
    assert replay.json["code"] == "idempotency_key_reused"


def test_b_cannot_use_a_product_id_it_guessed_in_its_own_subtree(
    stack: Any, http: httpx.Client, tenant_a: TenantA, other_client_id: str
) -> None:
    """B's writes land in B's tenant only: the product id of A's does not exist for B afterwards either."""
    api = stack.client("catalog_api")
    b = stack.headers(other_client_id)
    data = images.jpeg((50, 50))
    _assert_not_found(
        api.post(
            "/uploads",
            json={
                "filename": "b.jpg",
                "content_type": "image/jpeg",
                "size_bytes": len(data),
                "product_id": tenant_a.product_id,
            },
            headers=b,
        ),
        "slot",
    )
    mine = api.post("/products", json={"name": "B's Lamp"}, headers=b).json
    slot = _slot(
        api, b, {"filename": "b.jpg", "content_type": "image/jpeg", "size_bytes": len(data), "product_id": mine["id"]}
    )
    _put(http, slot, data)
    done = api.post(f"/uploads/{slot['id']}/complete", headers=b)
    assert done.status_code == 200, done.json
    # A's views do not show B's upload, asset or product.
    _assert_not_found(api.get(f"/uploads/{slot['id']}", headers=tenant_a.headers), "A reads B's upload")
    _assert_not_found(api.get(f"/assets/{done.json['asset_id']}", headers=tenant_a.headers), "A reads B's asset")
    _assert_not_found(api.get(f"/products/{mine['id']}", headers=tenant_a.headers), "A reads B's product")
    assert [x["id"] for x in api.get("/assets", headers=tenant_a.headers).json["items"]] == [tenant_a.asset_id]
    assert [x["id"] for x in api.get("/products", headers=tenant_a.headers).json["items"]] == [tenant_a.product_id]
