"""IMG-03 end to end: a job with the default settings (1:1 at 1K) delivers at least 1080 x 1080 for
e-commerce listings, at the 1K price, and every generated asset records what was delivered."""

from __future__ import annotations

from typing import Any

from tests import images
from tests.catalog_helpers import asset_doc
from tests.platforms import grant


def made(stack: Any, gen: Any, headers: dict[str, str], body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    response = gen.post("/jobs", json=body, headers=headers)
    assert response.status_code == 202, response.json
    stack.run_tasks()
    (item,) = gen.get(f"/jobs/{response.json['id']}/items", headers=headers).json["items"]
    return response.json, item["asset_ids"]


def test_the_default_output_meets_the_listing_minimum_and_says_so(
    stack: Any, gen: Any, headers: dict[str, str], client_id: str
) -> None:
    grant(stack, client_id, 10)
    job, (asset_id,) = made(stack, gen, headers, {"items": [{"prompt": "a ceramic mug"}]})
    assert job["settings"]["aspect_ratio"] == "1:1" and job["settings"]["size"] == "1K"
    assert job["unit_price"] == 1  # the 1K price: the top-up costs nothing
    doc = asset_doc(stack, client_id, asset_id)
    assert (doc["width"], doc["height"]) == (1080, 1080)
    assert images.decode(stack.platform.object_store.get(doc["key"])).size == (1080, 1080)
    assert doc["metadata"]["delivered"] == {
        "width": 1080,
        "height": 1080,
        "listing_min_side": 1080,
        "meets_listing_minimum": True,
        "upscaled_from": [1024, 1024],
    }

    _, (portrait,) = made(stack, gen, headers, {"items": [{"prompt": "a vase"}], "aspect_ratio": "4:5"})
    delivered = asset_doc(stack, client_id, portrait)["metadata"]["delivered"]
    assert delivered["meets_listing_minimum"] is False and (delivered["width"], delivered["height"]) == (819, 1024)
