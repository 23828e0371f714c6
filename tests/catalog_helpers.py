"""Catalog steps and reads shared by integration tests: products and images made through the catalog
API's upload flow, asset documents and their revisions read straight from Firestore, and the checks
on the API's answers that every test file makes the same way.
"""

from __future__ import annotations

from typing import Any

from PIL import Image, ImageDraw

from tests import images


def problem(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The ``application/problem+json`` body of an error answer with ``status`` (and ``code``, if given)."""
    assert response.status_code == status, (response.status_code, response.json)
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = response.json
    if code is not None:
        assert body["code"] == code, body
    return body


def make_product(
    catalog: Any, headers: dict[str, str], name: str, category: str | None = None, description: str | None = None
) -> str:
    """A new product through the catalog API; its id."""
    body: dict[str, Any] = {"name": name}
    if category:
        body["category"] = category
    if description:
        body["description"] = description
    response = catalog.post("/products", json=body, headers=headers)
    assert response.status_code == 201, response.json
    return str(response.json["id"])


def upload_image(
    stack: Any,
    catalog: Any,
    headers: dict[str, str],
    client_id: str,
    product_id: str,
    data: bytes,
    *,
    content_type: str = "image/png",
    filename: str = "photo.png",
) -> str:
    """The catalog's upload flow (the browser's PUT to the presigned URL is played by a direct store put);
    the new asset's id."""
    slot = catalog.post(
        "/uploads",
        json={
            "filename": filename,
            "content_type": content_type,
            "size_bytes": len(data),
            "purpose": "product_image",
            "product_id": product_id,
        },
        headers=headers,
    )
    assert slot.status_code == 201, slot.json
    stack.platform.object_store.put(f"uploads/{client_id}/{slot.json['id']}", data, content_type)
    done = catalog.post(f"/uploads/{slot.json['id']}/complete", headers=headers)
    assert done.status_code == 200, done.json
    return str(done.json["asset_id"])


def subject_photo(size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A bright subject (light grey box with a pale yellow logo) on a dark studio background."""
    img = Image.new("RGB", size, (12, 14, 16))
    w, h = size
    draw = ImageDraw.Draw(img)
    draw.rectangle((w // 4, h // 4, w * 3 // 4, h * 3 // 4), fill=(235, 235, 240))
    draw.ellipse((w // 2 - 20, h // 2 - 20, w // 2 + 20, h // 2 + 20), fill=(250, 250, 120))
    return img


def new_asset(
    stack: Any, catalog: Any, headers: dict[str, str], client_id: str, img: Image.Image | None = None, fmt: str = "PNG"
) -> str:
    """A product with one uploaded image (``img``, or :func:`subject_photo`, as ``fmt``); the asset's id."""
    product_id = make_product(catalog, headers, "Mug")
    content_type = {"PNG": "image/png", "JPEG": "image/jpeg"}[fmt]
    data = images.encode(img or subject_photo(), fmt)
    return upload_image(
        stack, catalog, headers, client_id, product_id, data, content_type=content_type, filename=f"p.{fmt.lower()}"
    )


def product_doc(stack: Any, client_id: str, product_id: str) -> dict[str, Any]:
    ref = stack.platform.db.collection("clients").document(client_id).collection("products").document(product_id)
    doc: dict[str, Any] = ref.get().to_dict()
    return doc


def asset_ref(stack: Any, client_id: str, asset_id: str) -> Any:
    return stack.platform.db.collection("clients").document(client_id).collection("assets").document(asset_id)


def asset_doc(stack: Any, client_id: str, asset_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = asset_ref(stack, client_id, asset_id).get().to_dict()
    return doc


def revision_doc(stack: Any, client_id: str, asset_id: str, number: int) -> dict[str, Any]:
    snapshot = asset_ref(stack, client_id, asset_id).collection("revisions").document(str(number)).get()
    doc: dict[str, Any] = snapshot.to_dict()
    return doc


def revision_numbers(stack: Any, client_id: str, asset_id: str) -> list[int]:
    return sorted(int(s.id) for s in asset_ref(stack, client_id, asset_id).collection("revisions").stream())
