"""Products through the catalog API: CRUD, price handling, PATCH semantics, filters, search, paging.

Everything runs through the functions-framework test client against the Firestore emulator.
"""

from __future__ import annotations

from typing import Any

import pytest

FULL = {
    "name": "Linen Summer Dress",
    "sku": "LSD-042",
    "description": "Light dress in washed linen.",
    "category": "Dresses",
    "price": "79.50",
    "currency": "EUR",
    "tags": ["summer", "linen"],
    "external_id": "shop-123",
}


@pytest.fixture
def api(stack: Any) -> Any:
    return stack.client("catalog_api")


def create(api: Any, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    response = api.post("/products", json=fields, headers=headers)
    assert response.status_code == 201, response.json
    body: dict[str, Any] = response.json
    return body


def list_ids(api: Any, headers: dict[str, str], query: str = "") -> list[str]:
    response = api.get(f"/products{query}", headers=headers)
    assert response.status_code == 200, response.json
    return [item["id"] for item in response.json["items"]]


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.json)
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = response.json
    assert body["status"] == status
    return body


# -- create / read / update / delete ---------------------------------------------------------------


def test_create_with_all_fields_then_read(api: Any, headers: dict[str, str]) -> None:
    response = api.post("/products", json=FULL, headers=headers)
    assert response.status_code == 201, response.json
    body = response.json
    assert response.headers["Location"] == f"/products/{body['id']}"
    assert body["id"].startswith("prod_")
    for field, value in FULL.items():
        assert body[field] == value, field
    assert body["source"] == "manual"
    assert body["images"] == []
    assert body["created_at"] == body["updated_at"]

    got = api.get(response.headers["Location"], headers=headers)
    assert got.status_code == 200
    assert got.json == body


def test_create_needs_a_name_and_refuses_unknown_fields(api: Any, headers: dict[str, str]) -> None:
    missing = problem(api.post("/products", json={"sku": "X"}, headers=headers), 422)
    assert missing["code"] == "validation_failed"
    assert [e["field"] for e in missing["errors"]] == ["name"]
    extra = problem(api.post("/products", json={"name": "A", "colour": "red"}, headers=headers), 422)
    assert [e["field"] for e in extra["errors"]] == ["colour"]
    assert list_ids(api, headers) == []


@pytest.mark.parametrize("price", ["19.90", "0", "0.05", "100000000"])
def test_price_round_trips_exactly(api: Any, headers: dict[str, str], price: str) -> None:
    created = create(api, headers, name="Priced", price=price)
    assert created["price"] == price
    assert api.get(f"/products/{created['id']}", headers=headers).json["price"] == price


@pytest.mark.parametrize("price", ["19.999", "-1", "-0.01", "100000000.01", "abc"])
def test_invalid_prices_are_refused(api: Any, headers: dict[str, str], price: str) -> None:
    body = problem(api.post("/products", json={"name": "Priced", "price": price}, headers=headers), 422)
    assert body["code"] == "validation_failed"
    assert [e["field"] for e in body["errors"]] == ["price"]
    assert list_ids(api, headers) == []


def test_patch_changes_only_the_fields_sent(api: Any, headers: dict[str, str]) -> None:
    created = create(api, headers, **FULL)
    response = api.patch(f"/products/{created['id']}", json={"description": "Now in blue."}, headers=headers)
    assert response.status_code == 200, response.json
    updated = response.json
    assert updated["description"] == "Now in blue."
    unchanged = {k: v for k, v in created.items() if k not in ("description", "updated_at")}
    assert {k: v for k, v in updated.items() if k not in ("description", "updated_at")} == unchanged
    assert updated["updated_at"] > created["updated_at"]
    assert api.get(f"/products/{created['id']}", headers=headers).json == updated


def test_patch_null_clears_optional_fields_and_replaces_tags(api: Any, headers: dict[str, str]) -> None:
    created = create(api, headers, **FULL)
    response = api.patch(
        f"/products/{created['id']}",
        json={"category": None, "price": None, "currency": None, "tags": ["autumn"], "name": None},
        headers=headers,
    )
    assert response.status_code == 200, response.json
    stored = api.get(f"/products/{created['id']}", headers=headers).json
    assert stored == response.json
    assert stored["category"] is None
    assert stored["price"] is None
    assert stored["currency"] is None
    assert stored["tags"] == ["autumn"]
    assert stored["name"] == FULL["name"]  # null never clears the name
    assert stored["sku"] == FULL["sku"]
    assert list_ids(api, headers, "?category=Dresses") == []


def test_patch_tags_null_clears_them(api: Any, headers: dict[str, str]) -> None:
    created = create(api, headers, name="Tagged", tags=["a", "b"])
    response = api.patch(f"/products/{created['id']}", json={"tags": None}, headers=headers)
    assert response.status_code == 200, response.json
    assert response.json["tags"] == []
    got = api.get(f"/products/{created['id']}", headers=headers)
    assert got.status_code == 200, got.json
    assert got.json["tags"] == []
    assert list_ids(api, headers) == [created["id"]]


def test_tags_are_deduplicated_on_create_and_patch(api: Any, headers: dict[str, str]) -> None:
    created = create(api, headers, name="Tagged", tags=["a", "b", "a"])
    assert created["tags"] == ["a", "b"]
    patched = api.patch(f"/products/{created['id']}", json={"tags": ["c", "c", "d"]}, headers=headers)
    assert patched.json["tags"] == ["c", "d"]
    assert api.get(f"/products/{created['id']}", headers=headers).json["tags"] == ["c", "d"]


def test_patch_refuses_invalid_values(api: Any, headers: dict[str, str]) -> None:
    created = create(api, headers, **FULL)
    for body in ({"price": "1.234"}, {"price": "-5"}, {"currency": "eur"}, {"name": ""}, {"unknown": 1}):
        problem(api.patch(f"/products/{created['id']}", json=body, headers=headers), 422)
    assert api.get(f"/products/{created['id']}", headers=headers).json == created


def test_rename_updates_search(api: Any, headers: dict[str, str]) -> None:
    created = create(api, headers, name="Velvet Cushion", sku="VC-1")
    assert list_ids(api, headers, "?q=velvet") == [created["id"]]
    response = api.patch(f"/products/{created['id']}", json={"name": "Satin Pillow"}, headers=headers)
    assert response.status_code == 200
    assert list_ids(api, headers, "?q=satin") == [created["id"]]
    assert list_ids(api, headers, "?q=pillow") == [created["id"]]
    assert list_ids(api, headers, "?q=velvet") == []
    assert list_ids(api, headers, "?q=cushion") == []
    assert list_ids(api, headers, "?q=VC-1") == [created["id"]]  # the SKU still finds it


def test_delete_then_404(api: Any, headers: dict[str, str]) -> None:
    created = create(api, headers, **FULL)
    response = api.delete(f"/products/{created['id']}", headers=headers)
    assert response.status_code == 204
    assert response.data == b""
    assert problem(api.get(f"/products/{created['id']}", headers=headers), 404)["code"] == "not_found"
    assert problem(api.delete(f"/products/{created['id']}", headers=headers), 404)["code"] == "not_found"
    assert problem(api.patch(f"/products/{created['id']}", json={"name": "X"}, headers=headers), 404)
    assert list_ids(api, headers) == []


def test_unknown_product_is_404(api: Any, headers: dict[str, str]) -> None:
    for response in (
        api.get("/products/prod_doesnotexist", headers=headers),
        api.patch("/products/prod_doesnotexist", json={"name": "X"}, headers=headers),
        api.delete("/products/prod_doesnotexist", headers=headers),
    ):
        assert problem(response, 404)["code"] == "not_found"


def test_requires_authentication(api: Any) -> None:
    assert problem(api.get("/products"), 401)["code"] == "unauthenticated"
    assert problem(api.post("/products", json={"name": "X"}), 401)["code"] == "unauthenticated"


# -- listing -------------------------------------------------------------------------------------


def test_filter_by_category_and_source(api: Any, headers: dict[str, str], stack: Any, client_id: str) -> None:
    shoe = create(api, headers, name="Runner", category="Shoes")
    boot = create(api, headers, name="Boot", category="Shoes")
    hat = create(api, headers, name="Cap", category="Hats")
    assert list_ids(api, headers, "?category=Shoes") == [boot["id"], shoe["id"]]
    assert list_ids(api, headers, "?category=Hats") == [hat["id"]]
    assert list_ids(api, headers, "?category=Bags") == []

    # A product from a CSV import, written the way the import writes it.
    from shared.adapters.firestore.catalog import products_ref
    from shared.catalog.models import ProductCreate, ProductSource
    from shared.catalog.products import build_product

    imported = build_product(
        client_id,
        ProductCreate(name="Imported Shoe", category="Shoes"),
        stack.platform.clock(),
        source=ProductSource.CSV,
        import_id="imp_x",
    )
    products_ref(stack.platform.db, client_id).document(imported.id).create(imported.model_dump(mode="python"))
    assert list_ids(api, headers, "?source=csv") == [imported.id]
    assert list_ids(api, headers, "?source=manual") == [hat["id"], boot["id"], shoe["id"]]
    assert list_ids(api, headers, "?source=manual&category=Shoes") == [boot["id"], shoe["id"]]
    assert list_ids(api, headers, "?source=shopify") == []
    assert problem(api.get("/products?source=etsy", headers=headers), 422)["errors"][0]["field"] == "source"


def test_text_search(api: Any, headers: dict[str, str]) -> None:
    shirt = create(api, headers, name="Blue Cotton Shirt", sku="BCS-100")
    dress = create(api, headers, name="Blue Silk Dress", sku="BSD-200")
    scarf = create(api, headers, name="Red Silk Scarf", sku="RSS-300")

    assert list_ids(api, headers, "?q=blu") == [dress["id"], shirt["id"]]  # word prefix
    assert list_ids(api, headers, "?q=shirt") == [shirt["id"]]
    assert list_ids(api, headers, "?q=SILK") == [scarf["id"], dress["id"]]  # case-insensitive
    assert list_ids(api, headers, "?q=blue%20silk") == [dress["id"]]  # every word must match
    assert list_ids(api, headers, "?q=silk%20blue") == [dress["id"]]
    assert list_ids(api, headers, "?q=red%20cotton") == []
    assert list_ids(api, headers, "?q=BSD-200") == [dress["id"]]  # by SKU
    assert list_ids(api, headers, "?q=rss") == [scarf["id"]]
    assert list_ids(api, headers, "?q=otton") == []  # prefixes only, not infixes
    assert list_ids(api, headers, "?q=green") == []


def test_search_combines_with_filters(api: Any, headers: dict[str, str]) -> None:
    create(api, headers, name="Blue Shirt", category="Tops")
    skirt = create(api, headers, name="Blue Skirt", category="Bottoms")
    assert list_ids(api, headers, "?q=blue&category=Bottoms") == [skirt["id"]]


def _all_pages(api: Any, headers: dict[str, str], query: str) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor: str | None = None
    for _ in range(10):
        suffix = f"&cursor={cursor}" if cursor else ""
        response = api.get(f"/products?{query}{suffix}", headers=headers)
        assert response.status_code == 200, response.json
        pages.append([item["id"] for item in response.json["items"]])
        cursor = response.json["next_cursor"]
        if cursor is None:
            return pages
    raise AssertionError("pagination did not end")


def test_pagination_newest_first_without_gaps_or_duplicates(api: Any, headers: dict[str, str]) -> None:
    created = [create(api, headers, name=f"Item {i:02d}", category="Paged")["id"] for i in range(25)]
    newest_first = list(reversed(created))

    pages = _all_pages(api, headers, "limit=10")
    assert [len(page) for page in pages] == [10, 10, 5]
    assert [pid for page in pages for pid in page] == newest_first

    # The same with a filter and a search that match every product.
    assert _all_pages(api, headers, "limit=10&category=Paged") == pages
    assert _all_pages(api, headers, "limit=10&q=item") == pages

    # An exact multiple of the page size: the last full page says there is nothing more.
    pages = _all_pages(api, headers, "limit=5")
    assert [len(page) for page in pages] == [5, 5, 5, 5, 5]
    assert [pid for page in pages for pid in page] == newest_first


def test_pagination_with_a_selective_search(api: Any, headers: dict[str, str]) -> None:
    # Every third product matches a two-word search: the second word is checked after the query,
    # so pages must still be full and in order.
    matching = []
    for i in range(24):
        name = f"Green Lamp {i}" if i % 3 == 0 else f"Green Chair {i}"
        pid = create(api, headers, name=name)["id"]
        if i % 3 == 0:
            matching.append(pid)
    pages = _all_pages(api, headers, "limit=3&q=green%20lamp")
    assert [pid for page in pages for pid in page] == list(reversed(matching))
    assert all(len(page) == 3 for page in pages[:-1])


def test_invalid_list_parameters(api: Any, headers: dict[str, str]) -> None:
    assert problem(api.get("/products?limit=0", headers=headers), 422)["errors"][0]["field"] == "limit"
    assert problem(api.get("/products?limit=101", headers=headers), 422)["errors"][0]["field"] == "limit"
    assert problem(api.get("/products?cursor=not-a-cursor", headers=headers), 400)["code"] == "invalid_cursor"
    assert problem(api.get("/products?colour=red", headers=headers), 422)["errors"][0]["field"] == "colour"
