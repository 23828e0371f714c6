"""The Shopify adapter's pure parts: the throttle wait, GIDs, how bulk JSONL rows become products
(grouped output held one product at a time, ungrouped output refused or buffered on request), and how
media nodes and mutation user errors translate into the port's types."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import pytest

from shared.adapters.shopify import (
    ShopifyAdminClient,
    gid_number,
    media_state,
    missing_files,
    throttle_wait,
    user_errors_failure,
)
from shared.stores.ports import (
    MediaState,
    StoreImageRejected,
    StoreProductGone,
    StoreRequestFailed,
    StoreUnavailable,
)

URL = "https://storage.example/bulk/1.jsonl"


def test_throttle_wait_is_the_missing_points_over_the_restore_rate() -> None:
    assert throttle_wait(990, 0, 100) == pytest.approx(9.9)
    assert throttle_wait(990, 582, 100) == pytest.approx(4.08)
    assert throttle_wait(100, 40, 200) == pytest.approx(0.3)
    assert throttle_wait(50, 50, 100) == 0.0
    assert throttle_wait(10, 900, 100) == 0.0
    assert math.isinf(throttle_wait(10, 0, 0))


def test_gid_numbers() -> None:
    assert gid_number("gid://shopify/Product/7000000001") == "7000000001"
    assert gid_number("gid://shopify/MediaImage/30?v=2", "MediaImage") == "30"
    assert gid_number("gid://shopify/Video/30", "MediaImage") is None
    assert gid_number("gid://shopify/Product/abc") is None
    assert gid_number(42) is None


def product_row(number: int) -> dict[str, Any]:
    return {"id": f"gid://shopify/Product/{number}", "title": f"P{number}", "status": "ACTIVE", "tags": ["a"]}


def variant_row(number: int, parent: int) -> dict[str, Any]:
    return {
        "id": f"gid://shopify/ProductVariant/{number}",
        "title": "S",
        "sku": f"SKU-{number}",
        "price": "1.00",
        "selectedOptions": [{"name": "Size", "value": "S"}],
        "__parentId": f"gid://shopify/Product/{parent}",
    }


def media_rows(parent: int) -> list[dict[str, Any]]:
    of = f"gid://shopify/Product/{parent}"
    return [
        {"id": "gid://shopify/Video/1", "mediaContentType": "VIDEO", "status": "READY", "alt": None, "__parentId": of},
        {"id": f"gid://shopify/MediaImage/{parent}1", "mediaContentType": "IMAGE", "status": "READY", "alt": "a",
         "image": {"url": "https://cdn.example/a.png", "width": 10, "height": 10}, "__parentId": of},
        {"id": f"gid://shopify/MediaImage/{parent}2", "mediaContentType": "IMAGE", "status": "PROCESSING",
         "alt": None, "image": None, "__parentId": of},
    ]  # fmt: skip


def client_serving(rows: list[dict[str, Any]], status: int = 200) -> ShopifyAdminClient:
    body = b"".join(json.dumps(row).encode() + b"\n" for row in rows)

    def answer(request: httpx.Request) -> httpx.Response:
        assert "X-Shopify-Access-Token" not in request.headers  # the signed URL needs no token
        return httpx.Response(status, content=body)

    return ShopifyAdminClient("id", "secret", "2026-10", "", transport=httpx.MockTransport(answer))


def test_grouped_rows_make_products_with_their_children() -> None:
    rows = [product_row(1), variant_row(11, 1), *media_rows(1), product_row(2), variant_row(21, 2),
            {"id": "gid://shopify/Collection/5", "title": "C", "__parentId": "gid://shopify/Product/2"}]  # fmt: skip
    products = list(client_serving(rows).stream_bulk_products(URL))
    assert [p.id for p in products] == ["1", "2"]
    first, second = products
    assert [v.sku for v in first.variants] == ["SKU-11"] and first.variants[0].options == {"Size": "S"}
    assert [(i.media_id, i.position) for i in first.images] == [("11", 1)]  # the video is position 0
    assert first.status == "active" and first.sku == "SKU-11"
    assert [(c.id, c.name) for c in second.categories] == [("5", "C")]


def test_ungrouped_rows_are_refused_unless_buffering_is_asked_for() -> None:
    rows = [product_row(1), product_row(2), variant_row(11, 1), variant_row(21, 2), variant_row(22, 2)]
    with pytest.raises(StoreRequestFailed):
        list(client_serving(rows).stream_bulk_products(URL))
    products = list(client_serving(rows).stream_bulk_products(URL, grouped=False))
    assert [[v.id for v in p.variants] for p in products] == [["11"], ["21", "22"]]


def test_broken_results() -> None:
    with pytest.raises(StoreRequestFailed):
        list(client_serving([product_row(1)], status=403).stream_bulk_products(URL))
    with pytest.raises(StoreUnavailable):
        list(client_serving([product_row(1)], status=503).stream_bulk_products(URL))
    with pytest.raises(StoreRequestFailed):
        list(client_serving([{"id": "gid://shopify/Product/1"}]).stream_bulk_products(URL))  # no title


def test_media_nodes_become_store_media() -> None:
    ready = media_state(
        {"id": "gid://shopify/MediaImage/31", "alt": "Front", "status": "READY", "mediaErrors": [],
         "image": {"url": "https://cdn.shopify.com/s/files/front.png"}}
    )  # fmt: skip
    assert (ready.media_id, ready.state, ready.url, ready.alt) == ("31", MediaState.READY, ready.url, "Front")
    assert ready.url == "https://cdn.shopify.com/s/files/front.png" and ready.error_code is None
    failed = media_state(
        {"id": "gid://shopify/MediaImage/32", "alt": "", "status": "FAILED", "image": None,
         "mediaErrors": [{"code": "IMAGE_DOWNLOAD_FAILURE", "message": "could not be downloaded", "details": None},
                         {"code": "UNKNOWN", "message": "second"}]}
    )  # fmt: skip
    assert (failed.state, failed.url, failed.alt) == (MediaState.FAILED, None, None)
    assert (failed.error_code, failed.error_message) == ("IMAGE_DOWNLOAD_FAILURE", "could not be downloaded")
    processing = media_state({"id": "gid://shopify/MediaImage/33", "status": "PROCESSING"})
    assert processing.state is MediaState.PROCESSING and processing.url is None
    for garbled in ({"id": "gid://shopify/Video/1", "status": "READY"}, {"id": "gid://shopify/MediaImage/1"}):
        with pytest.raises(StoreRequestFailed):
            media_state(garbled)


def test_user_errors_translate_to_the_port_s_errors() -> None:
    assert user_errors_failure([], "add the image") is None
    assert user_errors_failure(None, "add the image") is None
    gone = user_errors_failure([{"field": ["id"], "message": "Product does not exist"}], "add the image")
    assert isinstance(gone, StoreProductGone)
    coded = user_errors_failure([{"code": "PRODUCT_DOES_NOT_EXIST", "field": ["id"], "message": "x"}], "reorder")
    assert isinstance(coded, StoreProductGone)
    media = user_errors_failure(
        [{"field": ["media", "0", "originalSource"], "message": "Image URL is invalid"}], "add the image"
    )
    assert isinstance(media, StoreImageRejected) and "Image URL is invalid" in str(media)
    moved = user_errors_failure(
        [{"code": "MEDIA_DOES_NOT_EXIST_ON_PRODUCT", "field": ["moves", "0", "id"], "message": "no"}], "reorder"
    )
    assert isinstance(moved, StoreImageRejected)
    other = user_errors_failure([{"field": ["title"], "message": "Title can't be blank" + "!" * 500}], "update")
    assert type(other) is StoreRequestFailed and len(str(other)) <= 200


def test_only_missing_files_are_dropped_from_a_file_update() -> None:
    def missing(n: int) -> dict[str, Any]:
        return {"code": "FILE_DOES_NOT_EXIST", "field": ["files", str(n), "id"], "message": "does not exist"}

    assert missing_files([missing(0), missing(2)], 3) == {0, 2}
    assert missing_files([], 3) is None
    assert missing_files([missing(0), {"code": "NON_READY_STATE", "field": ["files", "1", "id"]}], 2) is None
    assert missing_files([missing(5)], 2) is None  # an index we did not send: not ours to drop
    assert missing_files([{"code": "FILE_DOES_NOT_EXIST", "field": None, "message": "?"}], 1) is None
