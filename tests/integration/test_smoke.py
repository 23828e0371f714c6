from __future__ import annotations

from typing import Any


def test_product_roundtrip(stack: Any, client_id: str) -> None:
    api = stack.client("catalog_api")
    headers = stack.headers(client_id)
    created = api.post("/products", json={"name": "Blue Shirt", "sku": "BS-1", "price": "19.90"}, headers=headers)
    assert created.status_code == 201, created.json
    product_id = created.json["id"]
    got = api.get(f"/products/{product_id}", headers=headers)
    assert got.status_code == 200
    assert got.json["name"] == "Blue Shirt"
    assert got.json["price"] == "19.90"
    listed = api.get("/products?q=shi", headers=headers)
    assert [p["id"] for p in listed.json["items"]] == [product_id]
