"""Direct uploads through real presigned URLs (moto), image checks on completion, the asset library.

The browser's part is played by httpx: it PUTs to the presigned URL and downloads the presigned
GET URLs the API hands out, so the keys, signatures and content types are the real ones.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from PIL import Image

from tests import images, platforms
from tests.catalog_helpers import problem

IMAGE_MAX_BYTES = 25 * 1024 * 1024


@pytest.fixture
def api(stack: Any) -> Any:
    return stack.client("catalog_api")


@pytest.fixture
def store(stack: Any) -> Any:
    return stack.platform.object_store


def keys_under(store: Any, prefix: str) -> list[str]:
    """The stored objects whose key starts with ``prefix`` (a writer's keys carry a random part)."""
    listed = store.client.list_objects_v2(Bucket=store.bucket, Prefix=prefix)
    return sorted(item["Key"] for item in listed.get("Contents", []))


@pytest.fixture
def product(api: Any, headers: dict[str, str]) -> dict[str, Any]:
    response = api.post("/products", json={"name": "Ceramic Vase", "sku": "CV-1"}, headers=headers)
    assert response.status_code == 201, response.json
    body: dict[str, Any] = response.json
    return body


# -- helpers --------------------------------------------------------------------------------------


def create_slot(
    api: Any,
    headers: dict[str, str],
    product_id: str | None,
    size: int,
    content_type: str = "image/jpeg",
    purpose: str = "product_image",
    filename: str = "photo.jpg",
) -> Any:
    body: dict[str, Any] = {"filename": filename, "content_type": content_type, "size_bytes": size, "purpose": purpose}
    if product_id is not None:
        body["product_id"] = product_id
    return api.post("/uploads", json=body, headers=headers)


def put(http: httpx.Client, slot: dict[str, Any], data: bytes, *, signed_headers: bool = True) -> None:
    instructions = slot["upload"]
    assert instructions["method"] == "PUT"
    sent = dict(instructions["headers"]) if signed_headers else {"Content-Type": slot["content_type"]}
    response = http.put(instructions["url"], content=data, headers=sent)
    assert response.status_code == 200, response.text


def upload(
    api: Any,
    http: httpx.Client,
    headers: dict[str, str],
    product_id: str,
    data: bytes,
    content_type: str = "image/jpeg",
) -> Any:
    """Slot, PUT, complete: the whole browser flow. Returns the complete response."""
    slot = create_slot(api, headers, product_id, len(data), content_type)
    assert slot.status_code == 201, slot.json
    put(http, slot.json, data)
    return api.post(f"/uploads/{slot.json['id']}/complete", headers=headers)


def download(http: httpx.Client, url: str) -> httpx.Response:
    response = http.get(url)
    assert response.status_code == 200, response.text
    return response


def download_image(http: httpx.Client, url: str) -> Image.Image:
    return images.decode(download(http, url).content)


def upload_key(client_id: str, upload_id: str) -> str:
    return f"uploads/{client_id}/{upload_id}"


def get_product(api: Any, headers: dict[str, str], product_id: str) -> dict[str, Any]:
    response = api.get(f"/products/{product_id}", headers=headers)
    assert response.status_code == 200, response.json
    body: dict[str, Any] = response.json
    return body


def asset_ids(api: Any, headers: dict[str, str], query: str = "") -> list[str]:
    response = api.get(f"/assets{query}", headers=headers)
    assert response.status_code == 200, response.json
    return [item["id"] for item in response.json["items"]]


def stable(product: dict[str, Any]) -> dict[str, Any]:
    """A product without its presigned URLs, which change with every read."""
    return {
        **product,
        "images": [{k: v for k, v in image.items() if not k.endswith("url")} for image in product["images"]],
    }


# -- happy path -----------------------------------------------------------------------------------


def test_upload_becomes_a_product_image(
    api: Any, http: httpx.Client, headers: dict[str, str], store: Any, client_id: str, product: dict[str, Any]
) -> None:
    data = images.jpeg((1024, 768))
    slot = create_slot(api, headers, product["id"], len(data))
    assert slot.status_code == 201, slot.json
    body = slot.json
    assert body["status"] == "pending"
    assert body["product_id"] == product["id"]
    assert body["asset_id"] is None
    assert body["upload"]["method"] == "PUT"
    assert body["upload"]["headers"] == {"Content-Type": "image/jpeg", "Content-Length": str(len(data))}
    assert api.get(f"/uploads/{body['id']}", headers=headers).json["status"] == "pending"

    put(http, body, data)
    key = upload_key(client_id, body["id"])
    assert store.head(key).size == len(data)

    done = api.post(f"/uploads/{body['id']}/complete", headers=headers)
    assert done.status_code == 200, done.json
    assert done.json["status"] == "completed"
    asset_id = done.json["asset_id"]
    assert asset_id and asset_id.startswith("ast_")
    assert done.json["upload"] is None
    assert api.get(f"/uploads/{body['id']}", headers=headers).json == done.json

    # The raw upload (with whatever metadata it carried) is gone; the normalised copy is kept.
    assert store.head(key) is None

    stored = get_product(api, headers, product["id"])
    assert len(stored["images"]) == 1
    image = stored["images"][0]
    assert image["asset_id"] == asset_id
    assert (image["width"], image["height"], image["content_type"]) == (1024, 768, "image/jpeg")
    full = download(http, image["url"])
    assert full.headers["content-type"] == "image/jpeg"
    assert images.decode(full.content).size == (1024, 768)
    thumb = download(http, image["thumbnail_url"])
    assert thumb.headers["content-type"] == "image/webp"
    thumbnail = images.decode(thumb.content)
    assert thumbnail.format == "WEBP"
    assert thumbnail.size == (512, 384)

    # Completing again answers the same and adds nothing.
    again = api.post(f"/uploads/{body['id']}/complete", headers=headers)
    assert again.status_code == 200, again.json
    assert again.json == done.json
    assert stable(get_product(api, headers, product["id"])) == stable(stored)
    assert asset_ids(api, headers) == [asset_id]


@pytest.mark.parametrize(
    ("data", "content_type", "stored_type", "size"),
    [
        (images.png((700, 300)), "image/png", "image/png", (700, 300)),
        (images.webp((300, 700)), "image/webp", "image/webp", (300, 700)),
        (images.jpeg((200, 100)), "image/jpeg", "image/jpeg", (200, 100)),
    ],
    ids=["png", "webp", "small-jpeg"],
)
def test_accepted_formats(
    api: Any,
    http: httpx.Client,
    headers: dict[str, str],
    product: dict[str, Any],
    data: bytes,
    content_type: str,
    stored_type: str,
    size: tuple[int, int],
) -> None:
    done = upload(api, http, headers, product["id"], data, content_type)
    assert done.status_code == 200, done.json
    image = get_product(api, headers, product["id"])["images"][0]
    assert image["content_type"] == stored_type
    assert (image["width"], image["height"]) == size
    assert download_image(http, image["url"]).size == size
    thumb = download_image(http, image["thumbnail_url"])
    assert max(thumb.size) == min(512, max(size))  # never upscaled, never over 512


def test_cmyk_jpeg_is_stored_as_rgb(
    api: Any, http: httpx.Client, headers: dict[str, str], product: dict[str, Any]
) -> None:
    done = upload(api, http, headers, product["id"], images.cmyk_jpeg((200, 100)))
    assert done.status_code == 200, done.json
    image = get_product(api, headers, product["id"])["images"][0]
    stored = download_image(http, image["url"])
    assert stored.mode == "RGB"
    assert stored.size == (200, 100)
    red, green, blue = stored.convert("RGB").getpixel((100, 50))  # type: ignore[misc]
    assert red > 200 and green < 60 and blue < 60
    assert download_image(http, image["thumbnail_url"]).mode in ("RGB", "RGBA")


def test_exif_rotated_jpeg_is_stored_upright(
    api: Any, http: httpx.Client, headers: dict[str, str], product: dict[str, Any]
) -> None:
    done = upload(api, http, headers, product["id"], images.exif_rotated_jpeg((400, 200), orientation=6))
    assert done.status_code == 200, done.json
    image = get_product(api, headers, product["id"])["images"][0]
    assert (image["width"], image["height"]) == (200, 400)
    stored = download_image(http, image["url"])
    assert stored.size == (200, 400)
    assert stored.getexif().get(0x0112) is None  # no orientation left to apply twice
    assert download_image(http, image["thumbnail_url"]).size == (200, 400)


def test_png_with_alpha_keeps_alpha(
    api: Any, http: httpx.Client, headers: dict[str, str], product: dict[str, Any]
) -> None:
    done = upload(api, http, headers, product["id"], images.png_with_alpha((300, 200)), "image/png")
    assert done.status_code == 200, done.json
    image = get_product(api, headers, product["id"])["images"][0]
    assert image["content_type"] == "image/png"
    stored = download_image(http, image["url"])
    assert stored.mode == "RGBA"
    assert stored.getpixel((10, 10)) == (255, 0, 0, 255)
    assert stored.getpixel((290, 10))[3] == 0  # type: ignore[index]
    thumb = download_image(http, image["thumbnail_url"])
    assert thumb.mode == "RGBA"
    assert thumb.getpixel((thumb.width - 2, 2))[3] == 0  # type: ignore[index]


def test_several_uploads_add_several_images(
    api: Any, http: httpx.Client, headers: dict[str, str], product: dict[str, Any]
) -> None:
    first = upload(api, http, headers, product["id"], images.jpeg((100, 100))).json["asset_id"]
    second = upload(api, http, headers, product["id"], images.png((120, 80)), "image/png").json["asset_id"]
    assert [img["asset_id"] for img in get_product(api, headers, product["id"])["images"]] == [first, second]


# -- rejected files -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "content_type", "code"),
    [
        (images.truncated_png(), "image/png", "image_truncated"),
        (images.TEXT_BYTES, "image/jpeg", "image_unreadable"),
        (images.bomb_png(20_000, 20_000), "image/png", "image_too_large"),
    ],
    ids=["truncated-png", "text-as-jpeg", "decompression-bomb"],
)
def test_bad_files_are_rejected(
    api: Any,
    http: httpx.Client,
    headers: dict[str, str],
    store: Any,
    client_id: str,
    product: dict[str, Any],
    data: bytes,
    content_type: str,
    code: str,
) -> None:
    before = stable(get_product(api, headers, product["id"]))
    slot = create_slot(api, headers, product["id"], len(data), content_type).json
    put(http, slot, data)
    key = upload_key(client_id, slot["id"])
    assert store.head(key) is not None

    body = problem(api.post(f"/uploads/{slot['id']}/complete", headers=headers), 422)
    assert body["code"] == code
    assert store.head(key) is None  # deleted, not left lying around

    recorded = api.get(f"/uploads/{slot['id']}", headers=headers).json
    assert recorded["status"] == "rejected"
    assert recorded["asset_id"] is None
    assert recorded["rejection"]["code"] == code
    assert recorded["rejection"]["detail"] == body["detail"]
    assert stable(get_product(api, headers, product["id"])) == before
    assert asset_ids(api, headers) == []

    # Asking again gives the same answer, and still creates nothing.
    again = problem(api.post(f"/uploads/{slot['id']}/complete", headers=headers), 422)
    assert (again["code"], again["detail"]) == (body["code"], body["detail"])
    assert asset_ids(api, headers) == []


def test_bomb_below_pillows_own_guard_is_rejected_by_ours(
    api: Any, http: httpx.Client, headers: dict[str, str], product: dict[str, Any]
) -> None:
    # 8000x8000 = 64 Mpx: under Pillow's default guard (89 Mpx), over our limit (50 Mpx).
    body = problem(upload(api, http, headers, product["id"], images.bomb_png(8_000, 8_000), "image/png"), 422)
    assert body["code"] == "image_too_large"
    assert (body["width"], body["height"], body["max_pixels"]) == (8_000, 8_000, 50_000_000)
    assert get_product(api, headers, product["id"])["images"] == []


def test_size_different_from_the_announced_one_is_rejected(
    api: Any, http: httpx.Client, headers: dict[str, str], store: Any, client_id: str, product: dict[str, Any]
) -> None:
    data = images.jpeg((300, 300))
    slot = create_slot(api, headers, product["id"], len(data) + 100).json
    put(http, slot, data, signed_headers=False)  # a store that does not enforce the signed length
    key = upload_key(client_id, slot["id"])
    assert store.head(key).size == len(data)

    body = problem(api.post(f"/uploads/{slot['id']}/complete", headers=headers), 422)
    assert body["code"] == "upload_rejected"
    assert body["reason"] == "size_mismatch"
    assert store.head(key) is None
    recorded = api.get(f"/uploads/{slot['id']}", headers=headers).json
    assert recorded["status"] == "rejected"
    assert recorded["rejection"]["reason"] == "size_mismatch"
    again = problem(api.post(f"/uploads/{slot['id']}/complete", headers=headers), 422)
    assert {k: v for k, v in again.items() if k != "request_id"} == {k: v for k, v in body.items() if k != "request_id"}
    assert get_product(api, headers, product["id"])["images"] == []
    assert asset_ids(api, headers) == []


def test_complete_before_put_is_409_and_changes_nothing(
    api: Any, http: httpx.Client, headers: dict[str, str], product: dict[str, Any]
) -> None:
    data = images.jpeg((64, 64))
    slot = create_slot(api, headers, product["id"], len(data)).json
    body = problem(api.post(f"/uploads/{slot['id']}/complete", headers=headers), 409)
    assert body["code"] == "upload_not_received"
    assert api.get(f"/uploads/{slot['id']}", headers=headers).json["status"] == "pending"

    put(http, slot, data)  # the slot still works afterwards
    done = api.post(f"/uploads/{slot['id']}/complete", headers=headers)
    assert done.status_code == 200, done.json
    assert done.json["status"] == "completed"


def test_product_deleted_before_completion(
    api: Any, http: httpx.Client, headers: dict[str, str], store: Any, client_id: str, product: dict[str, Any]
) -> None:
    data = images.jpeg((64, 64))
    slot = create_slot(api, headers, product["id"], len(data)).json
    put(http, slot, data)
    assert api.delete(f"/products/{product['id']}", headers=headers).status_code == 204

    body = problem(api.post(f"/uploads/{slot['id']}/complete", headers=headers), 404)
    assert body["code"] == "not_found"
    assert asset_ids(api, headers) == []
    asset_prefix = f"clients/{client_id}/assets/{slot['id'].replace('upl_', 'ast_', 1)}/r1"
    assert keys_under(store, asset_prefix) == []  # no orphaned objects either
    assert problem(api.get(f"/products/{product['id']}", headers=headers), 404)  # not recreated


# -- slot refusals --------------------------------------------------------------------------------


def test_slot_refusals(api: Any, headers: dict[str, str], product: dict[str, Any]) -> None:
    gif = problem(create_slot(api, headers, product["id"], 1000, "image/gif"), 422)
    assert gif["code"] == "validation_failed"
    assert [e["field"] for e in gif["errors"]] == ["content_type"]

    too_big = problem(create_slot(api, headers, product["id"], IMAGE_MAX_BYTES + 1), 413)
    assert too_big["code"] == "payload_too_large"
    assert too_big["limit"] == IMAGE_MAX_BYTES
    assert create_slot(api, headers, product["id"], IMAGE_MAX_BYTES).status_code == 201  # the limit itself is fine

    no_product = problem(create_slot(api, headers, None, 1000), 422)
    assert [e["field"] for e in no_product["errors"]] == ["product_id"]

    unknown = problem(create_slot(api, headers, "prod_doesnotexist", 1000), 404)
    assert unknown["code"] == "not_found"

    for size in (0, -5):
        assert problem(create_slot(api, headers, product["id"], size), 422)["errors"][0]["field"] == "size_bytes"
    csv_for_product = problem(
        create_slot(api, headers, product["id"], 100, "text/csv", purpose="csv_import", filename="p.csv"), 422
    )
    assert [e["field"] for e in csv_for_product["errors"]] == ["product_id"]


# -- slot limits, expiry and cleanup (security review finding 9) ----------------------------------


def sweep(stack: Any, client_id: str, now: datetime) -> Any:
    """The scheduled sweep as of ``now``, for this test's client only (the emulator is shared)."""
    from shared.adapters.firestore.catalog import FirestoreUploadRepository
    from shared.catalog.uploads import sweep_uploads

    return sweep_uploads(
        FirestoreUploadRepository(stack.platform.db), stack.platform.object_store, now, client_id=client_id
    )


def test_pending_slots_are_capped_per_client(
    stack: Any, api: Any, http: httpx.Client, headers: dict[str, str], client_id: str, product: dict[str, Any]
) -> None:
    platforms.install(stack, upload_max_pending=3)
    data = images.jpeg((64, 64))
    slots = [create_slot(api, headers, product["id"], len(data)) for _ in range(3)]
    assert [slot.status_code for slot in slots] == [201, 201, 201]
    refused = create_slot(api, headers, product["id"], len(data))
    body = problem(refused, 429, "too_many_pending_uploads")
    assert body["limit"] == 3
    assert refused.headers["Retry-After"]
    stored = stack.platform.db.collection("clients").document(client_id).collection("uploads").stream()
    assert len(list(stored)) == 3  # the refused slot left nothing behind

    # A completed slot is not pending any more.
    put(http, slots[0].json, data)
    assert api.post(f"/uploads/{slots[0].json['id']}/complete", headers=headers).status_code == 200
    assert create_slot(api, headers, product["id"], len(data)).status_code == 201
    problem(create_slot(api, headers, product["id"], len(data)), 429, "too_many_pending_uploads")

    # Nor is one whose URL has expired: an hour later the client may ask again.
    later = datetime.now(UTC) + timedelta(hours=1)
    platforms.install(stack, upload_max_pending=3, clock=lambda: later)
    assert create_slot(api, headers, product["id"], len(data)).status_code == 201


def test_concurrent_slot_requests_never_go_past_the_cap(
    stack: Any, api: Any, client_id: str, product: dict[str, Any]
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    platforms.install(stack, upload_max_pending=4)

    def ask(index: int) -> int:
        response = stack.client("catalog_api").post(
            "/uploads",
            json={
                "filename": f"p{index}.jpg",
                "content_type": "image/jpeg",
                "size_bytes": 10,
                "product_id": product["id"],
            },
            headers=stack.headers(client_id),
        )
        return int(response.status_code)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(12)))
    assert set(answers) <= {201, 429}
    pending = stack.platform.db.collection("clients").document(client_id).collection("uploads").stream()
    assert answers.count(201) == len(list(pending)) <= 4


def test_an_unused_slot_expires_and_its_file_is_swept(
    stack: Any,
    api: Any,
    http: httpx.Client,
    headers: dict[str, str],
    store: Any,
    client_id: str,
    product: dict[str, Any],
) -> None:
    data = images.jpeg((64, 64))
    slot = create_slot(api, headers, product["id"], len(data)).json
    put(http, slot, data)  # uploaded, never completed
    key = upload_key(client_id, slot["id"])
    assert key.startswith("uploads/")  # the prefix an R2 lifecycle rule expires
    assert store.head(key) is not None

    expiry = datetime.fromisoformat(slot["expires_at"])
    assert sweep(stack, client_id, expiry).swept == 0  # its URL may still be used: nothing to do yet
    assert store.head(key) is not None
    report = sweep(stack, client_id, expiry + timedelta(minutes=10))
    assert report.expired == {client_id: [slot["id"]]}
    assert store.head(key) is None
    assert api.get(f"/uploads/{slot['id']}", headers=headers).json["status"] == "expired"
    assert problem(api.post(f"/uploads/{slot['id']}/complete", headers=headers), 409, "upload_expired")
    assert sweep(stack, client_id, expiry + timedelta(hours=1)).swept == 0  # done once
    assert get_product(api, headers, product["id"])["images"] == []


def test_a_completed_image_upload_url_cannot_change_the_image(
    stack: Any,
    api: Any,
    http: httpx.Client,
    headers: dict[str, str],
    store: Any,
    client_id: str,
    product: dict[str, Any],
) -> None:
    data = images.jpeg((200, 100))
    slot = create_slot(api, headers, product["id"], len(data)).json
    put(http, slot, data)
    done = api.post(f"/uploads/{slot['id']}/complete", headers=headers)
    assert done.status_code == 200, done.json
    asset = api.get(f"/assets/{done.json['asset_id']}", headers=headers).json
    before = download(http, asset["download_url"]).content
    key = upload_key(client_id, slot["id"])
    assert store.head(key) is None  # the raw upload is gone at completion

    # The presigned URL is still valid: a second PUT (same length, other bytes) lands on the raw key
    # only, which nothing reads; the asset and a repeated completion are unchanged.
    put(http, slot, b"\xff" * len(data))
    assert store.head(key) is not None
    again = api.post(f"/uploads/{slot['id']}/complete", headers=headers)
    assert again.json == done.json
    assert download(http, api.get(f"/assets/{asset['id']}", headers=headers).json["download_url"]).content == before
    assert len(get_product(api, headers, product["id"])["images"]) == 1

    # Once the URL has expired the sweep deletes what the late PUT wrote.
    expiry = datetime.fromisoformat(slot["expires_at"])
    assert sweep(stack, client_id, expiry + timedelta(minutes=10)).swept == 1
    assert store.head(key) is None
    assert api.get(f"/uploads/{slot['id']}", headers=headers).json["status"] == "completed"


def test_a_completed_csv_upload_url_cannot_change_what_is_imported(
    stack: Any, api: Any, http: httpx.Client, headers: dict[str, str], store: Any, client_id: str
) -> None:
    first = b"name,sku\nMug,M-1\nCup,C-1\n"
    slot = create_slot(api, headers, None, len(first), "text/csv", purpose="csv_import", filename="p.csv").json
    put(http, slot, first)
    assert api.post(f"/uploads/{slot['id']}/complete", headers=headers).json["status"] == "completed"
    assert store.head(upload_key(client_id, slot["id"])) is None
    # Same length, other content: a PUT after the check must not become what is imported.
    put(http, slot, b"name,sku\nEvi,E-1\nBad,B-2\n")
    created = api.post("/imports", json={"upload_id": slot["id"]}, headers=headers)
    assert created.status_code == 201, created.json
    assert [row["values"]["name"] for row in created.json["preview"]["sample"]] == ["Mug", "Cup"]
    expiry = datetime.fromisoformat(slot["expires_at"])
    sweep(stack, client_id, expiry + timedelta(minutes=10))
    assert store.head(upload_key(client_id, slot["id"])) is None
    again = api.post("/imports", json={"upload_id": slot["id"]}, headers=headers)  # still importable
    assert [row["values"]["name"] for row in again.json["preview"]["sample"]] == ["Mug", "Cup"]


def test_the_sweep_answers_only_the_scheduler(stack: Any, headers: dict[str, str]) -> None:
    from tests.conftest import TASK_SECRET

    # A clock long ago: the run (across every client of the shared emulator) finds nothing due.
    platforms.install(stack, clock=lambda: datetime(2001, 1, 1, tzinfo=UTC))
    worker = stack.client("catalog_tasks")
    assert worker.post("/jobs/sweep-uploads", headers=headers).status_code in (401, 403)
    swept = worker.post("/jobs/sweep-uploads", headers={"Authorization": f"Bearer {TASK_SECRET}"})
    assert swept.status_code == 200, swept.json
    assert swept.json["swept"] == 0
    assert set(swept.json) >= {"expired", "failed", "more"}


def test_unknown_upload_is_404(api: Any, headers: dict[str, str]) -> None:
    assert problem(api.get("/uploads/upl_doesnotexist", headers=headers), 404)["code"] == "not_found"
    assert problem(api.post("/uploads/upl_doesnotexist/complete", headers=headers), 404)["code"] == "not_found"


# -- asset library --------------------------------------------------------------------------------


def test_asset_library(
    api: Any, http: httpx.Client, headers: dict[str, str], store: Any, client_id: str, product: dict[str, Any]
) -> None:
    other = api.post("/products", json={"name": "Oak Table"}, headers=headers).json
    first = upload(api, http, headers, product["id"], images.jpeg((300, 200))).json["asset_id"]
    second = upload(api, http, headers, other["id"], images.png((120, 90)), "image/png").json["asset_id"]
    third = upload(api, http, headers, product["id"], images.webp((90, 120)), "image/webp").json["asset_id"]

    listed = api.get("/assets", headers=headers).json
    assert [a["id"] for a in listed["items"]] == [third, second, first]  # newest first
    assert listed["next_cursor"] is None
    summary = listed["items"][2]
    assert summary["product_id"] == product["id"]
    assert (summary["kind"], summary["status"], summary["source"]) == ("product_image", "ready", "upload")
    assert (summary["width"], summary["height"], summary["content_type"]) == (300, 200, "image/jpeg")
    assert (summary["pinned"], summary["favorite"], summary["approved"]) == (False, False, False)
    assert summary["current_revision"] == 1
    assert images.decode(download(http, summary["thumbnail_url"]).content).format == "WEBP"

    assert asset_ids(api, headers, f"?product_id={product['id']}") == [third, first]
    assert asset_ids(api, headers, f"?product_id={other['id']}") == [second]
    assert asset_ids(api, headers, "?product_id=prod_none") == []
    assert asset_ids(api, headers, "?kind=product_image") == [third, second, first]
    assert asset_ids(api, headers, "?kind=generated") == []
    assert asset_ids(api, headers, "?status=ready") == [third, second, first]

    # Flags: PATCH one at a time, each filter finds exactly the flagged asset.
    for flag, asset_id in (("pinned", first), ("favorite", second), ("approved", third)):
        assert asset_ids(api, headers, f"?{flag}=true") == []
        response = api.patch(f"/assets/{asset_id}", json={flag: True}, headers=headers)
        assert response.status_code == 200, response.json
        assert response.json[flag] is True
        assert response.json["updated_at"] > response.json["created_at"]
        assert asset_ids(api, headers, f"?{flag}=true") == [asset_id]
        assert asset_id not in asset_ids(api, headers, f"?{flag}=false")
        assert len(asset_ids(api, headers, f"?{flag}=false")) == 2
    assert asset_ids(api, headers, f"?pinned=true&product_id={product['id']}") == [first]
    assert asset_ids(api, headers, f"?pinned=true&product_id={other['id']}") == []

    unpinned = api.patch(f"/assets/{first}", json={"pinned": False, "approved": True}, headers=headers).json
    assert (unpinned["pinned"], unpinned["approved"], unpinned["favorite"]) == (False, True, False)
    assert asset_ids(api, headers, "?pinned=true") == []
    assert asset_ids(api, headers, "?approved=true") == [third, first]

    assert problem(api.patch(f"/assets/{first}", json={}, headers=headers), 422)["code"] == "validation_failed"
    assert problem(api.patch(f"/assets/{first}", json={"pinned": None}, headers=headers), 422)
    assert problem(api.patch(f"/assets/{first}", json={"hidden": True}, headers=headers), 422)
    assert problem(api.patch("/assets/ast_doesnotexist", json={"pinned": True}, headers=headers), 404)
    assert problem(api.get("/assets?pinned=maybe", headers=headers), 422)["errors"][0]["field"] == "pinned"

    # Detail: one revision, the original, with working URLs.
    detail = api.get(f"/assets/{first}", headers=headers)
    assert detail.status_code == 200, detail.json
    revisions = detail.json["revisions"]
    assert [(r["number"], r["operation"]) for r in revisions] == [(1, "original")]
    assert (revisions[0]["width"], revisions[0]["height"]) == (300, 200)
    downloaded = download(http, detail.json["download_url"])
    assert downloaded.headers["content-disposition"] == f'attachment; filename="{first}.jpg"'
    assert images.decode(downloaded.content).size == (300, 200)
    assert revisions[0]["size_bytes"] == len(downloaded.content)
    assert download_image(http, revisions[0]["url"]).size == (300, 200)
    assert max(download_image(http, revisions[0]["thumbnail_url"]).size) == 300


def test_delete_asset(
    api: Any, http: httpx.Client, headers: dict[str, str], store: Any, client_id: str, product: dict[str, Any]
) -> None:
    kept = upload(api, http, headers, product["id"], images.jpeg((100, 100))).json["asset_id"]
    gone = upload(api, http, headers, product["id"], images.png((100, 80)), "image/png").json["asset_id"]
    prefix = f"clients/{client_id}/assets/{gone}/r1"
    keys = keys_under(store, prefix)
    assert len(keys) == 2 and [k for k in keys if k.endswith(".png")] and [k for k in keys if k.endswith("_thumb.webp")]
    assert all(store.head(key) is not None for key in keys)

    response = api.delete(f"/assets/{gone}", headers=headers)
    assert response.status_code == 204
    assert all(store.head(key) is None for key in keys)
    assert [img["asset_id"] for img in get_product(api, headers, product["id"])["images"]] == [kept]
    assert problem(api.get(f"/assets/{gone}", headers=headers), 404)["code"] == "not_found"
    assert problem(api.delete(f"/assets/{gone}", headers=headers), 404)["code"] == "not_found"
    assert problem(api.patch(f"/assets/{gone}", json={"pinned": True}, headers=headers), 404)
    assert asset_ids(api, headers) == [kept]
    assert api.get(f"/assets/{kept}", headers=headers).status_code == 200


def test_deleting_the_product_keeps_its_assets(
    api: Any, http: httpx.Client, headers: dict[str, str], product: dict[str, Any]
) -> None:
    asset_id = upload(api, http, headers, product["id"], images.jpeg((80, 80))).json["asset_id"]
    assert api.delete(f"/products/{product['id']}", headers=headers).status_code == 204
    assert asset_ids(api, headers) == [asset_id]
    # Deleting the asset of a deleted product still works.
    assert api.delete(f"/assets/{asset_id}", headers=headers).status_code == 204
    assert asset_ids(api, headers) == []


def test_asset_pagination(
    api: Any, stack: Any, headers: dict[str, str], client_id: str, product: dict[str, Any]
) -> None:
    # Assets written the way uploads write them, without paying for 7 image round trips.
    from datetime import timedelta

    from shared.adapters.firestore.catalog import FirestoreAssetRepository
    from shared.catalog.assets import NewProductImage, store_product_image
    from shared.catalog.models import AssetOrigin
    from shared.imaging import ImageLimits

    start = stack.platform.clock()
    created = []
    for i in range(7):
        asset = store_product_image(
            FirestoreAssetRepository(stack.platform.db),
            stack.platform.object_store,
            client_id=client_id,
            product_id=product["id"],
            image_bytes=images.jpeg((32, 32)),
            origin=NewProductImage(asset_id=f"ast_page{i}", origin=AssetOrigin.UPLOAD),
            limits=ImageLimits(),
            thumbnail_max_side=512,
            now=start + timedelta(seconds=i),
        )
        created.append(asset.id)

    seen: list[list[str]] = []
    cursor = None
    for _ in range(5):
        query = "?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = api.get(f"/assets{query}", headers=headers).json
        seen.append([item["id"] for item in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [len(page) for page in seen] == [3, 3, 1]
    assert [a for page in seen for a in page] == list(reversed(created))

    seen = []
    cursor = None
    for _ in range(5):
        query = "?limit=7" + (f"&cursor={cursor}" if cursor else "")
        page = api.get(f"/assets{query}", headers=headers).json
        seen.append([item["id"] for item in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [len(page) for page in seen] == [7]  # an exact fit ends without an empty page
    assert problem(api.get("/assets?cursor=%%%", headers=headers), 400)["code"] == "invalid_cursor"
