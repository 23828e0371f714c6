"""Editing end to end: the edit API and its Cloud Tasks workers (delivered by the local dispatcher),
the credit ledger, Firestore and the object store; rembg on a tiny ONNX model; the offline engine,
scripted test engines, and the real google-genai SDK against the local Gemini stub.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from shared.batch.models import ItemTask as EditItemTask
from shared.tasks import TaskRequest
from tests import images
from tests.catalog_helpers import asset_doc, new_asset, problem, revision_doc, revision_numbers, subject_photo
from tests.edit_helpers import b64, download, revision_image, run_job
from tests.engines import ScriptedEngine
from tests.platforms import (
    GEMINI_STUB_KEY,
    available,
    expire_idempotency_records,
    gemini_engine,
    grant,
    install,
)
from tests.rembg_model import build_tiny_u2net

GRANT = 20


# -- fixtures and helpers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Clipped: the dark studio background is exactly transparent, the bright subject exactly opaque.
    return build_tiny_u2net(tmp_path_factory.mktemp("rembg") / "tiny_u2net.onnx", clip=(-1.0, 1.0))


@pytest.fixture
def rembg(stack: Any, model_path: Path) -> Any:
    return install(stack, rembg_model_path=str(model_path))


def edit_jobs(stack: Any, client_id: str) -> list[Any]:
    return list(stack.platform.db.collection("clients").document(client_id).collection("edit_jobs").stream())


def rectangle_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


# -- the synchronous path ------------------------------------------------------------------------------


def test_sync_crop_resize_output_creates_revision_2_free(
    stack: Any, edit: Any, catalog: Any, headers: dict[str, str], client_id: str
) -> None:
    grant(stack, client_id, GRANT)
    asset_id = new_asset(stack, catalog, headers, client_id, fmt="JPEG")
    body = {
        "asset_ids": [asset_id],
        "operations": [
            {"op": "crop", "aspect": "1:1"},
            {"op": "resize", "width": 200},
            {"op": "output", "format": "webp", "quality": 80},
        ],
    }
    response = edit.post("/edits", json=body, headers=headers)
    assert response.status_code == 200, response.json
    assert response.json["charged"] == 0
    (revision,) = response.json["revisions"]
    assert (revision["revision"], revision["width"], revision["height"]) == (2, 200, 200)
    assert revision["content_type"] == "image/webp"
    assert revision["operation"] == "crop 1:1, resize 200, output webp"
    assert revision["metadata"]["output"]["quality"] == 80
    assert download(revision["url"]).size == (200, 200)
    assert available(stack, client_id) == (GRANT, 0)
    doc = asset_doc(stack, client_id, asset_id)
    assert doc["current_revision"] == 2 and doc["content_type"] == "image/webp" and doc["width"] == 200
    assert revision_numbers(stack, client_id, asset_id) == [1, 2]
    assert edit_jobs(stack, client_id) == []
    # The product's image entry now shows the new revision, in place.
    product = catalog.get(f"/products/{doc['product_id']}", headers=headers).json
    assert [(i["asset_id"], i["content_type"], i["width"]) for i in product["images"]] == [
        (asset_id, "image/webp", 200)
    ]
    # The catalog's asset detail lists both revisions.
    detail = catalog.get(f"/assets/{asset_id}", headers=headers).json
    assert [r["number"] for r in detail["revisions"]] == [1, 2]
    assert detail["revisions"][0]["width"] == 320


def test_sync_pad_and_exact_crop_geometry(
    stack: Any, edit: Any, catalog: Any, headers: dict[str, str], client_id: str
) -> None:
    source = images.photo((320, 240))
    asset_id = new_asset(stack, catalog, headers, client_id, img=source)
    response = edit.post(
        "/edits",
        json={
            "asset_ids": [asset_id],
            "operations": [
                {"op": "crop", "box": {"x": 10, "y": 20, "width": 100, "height": 50}},
                {"op": "pad", "width": 120, "height": 90, "color": "#FF0000", "align": "bottom_right"},
            ],
        },
        headers=headers,
    )
    assert response.status_code == 200, response.json
    out = download(response.json["revisions"][0]["url"]).convert("RGB")
    assert out.size == (120, 90) and response.json["revisions"][0]["content_type"] == "image/png"
    assert out.crop((20, 40, 120, 90)).tobytes() == source.crop((10, 20, 110, 70)).tobytes()  # lossless, exact
    assert out.getpixel((0, 0)) == (255, 0, 0)


# -- jobs ------------------------------------------------------------------------------------------------


def test_remove_background_and_solid_background_as_a_job(
    stack: Any, rembg: Any, edit: Any, catalog: Any, headers: dict[str, str], client_id: str
) -> None:
    grant(stack, client_id, GRANT)
    assets = [new_asset(stack, catalog, headers, client_id) for _ in range(2)]
    body = {
        "asset_ids": assets,
        "operations": [
            {"op": "remove_background"},
            {"op": "background", "type": "solid", "color": "#FF0000"},
        ],
    }
    quote = edit.post("/edits/quote", json=body, headers=headers)
    assert quote.status_code == 200, quote.json
    assert (quote.json["total"], quote.json["mode"]) == (2, "job")
    assert [(line["asset_id"], line["operation"], line["amount"]) for line in quote.json["lines"]] == [
        (assets[0], "remove_background", 1),
        (assets[1], "remove_background", 1),
    ]
    response = edit.post("/edits", json=body, headers=headers)
    assert response.status_code == 202, response.json
    assert response.headers["Location"] == f"/edits/{response.json['id']}"
    assert response.json["status"] == "queued" and response.json["cost"] == 2
    assert available(stack, client_id) == (GRANT - 2, 2)  # one hold for the whole request
    job = run_job(stack, edit, headers, response.json["id"])
    assert job["status"] == "completed" and job["counts"]["succeeded"] == 2
    assert job["settlement"]["captured"] == 2 and job["settlement"]["released"] == 0
    assert available(stack, client_id) == (GRANT - 2, 0)
    for asset_id in assets:
        assert asset_doc(stack, client_id, asset_id)["current_revision"] == 2
        out = revision_image(catalog, headers, asset_id, 2).convert("RGB")
        assert out.getpixel((5, 5)) == (255, 0, 0)  # the dark studio background was removed, then red
        assert out.getpixel((160, 120)) == subject_photo().getpixel((160, 120))  # the subject is untouched
    detail = catalog.get(f"/assets/{assets[0]}", headers=headers).json
    assert detail["revisions"][1]["operation"] == "remove_background, background solid"


def test_usage_shows_an_edit_jobs_charge_by_operation(
    stack: Any, rembg: Any, edit: Any, catalog: Any, headers: dict[str, str], client_id: str
) -> None:
    """One capture pays for a whole pipeline; the usage view still says what each operation cost."""
    from datetime import UTC, datetime

    grant(stack, client_id, GRANT)
    assets = [new_asset(stack, catalog, headers, client_id) for _ in range(2)]
    body = {"asset_ids": assets, "operations": [{"op": "remove_background"}, {"op": "upscale", "size": "2K"}]}
    quote = edit.post("/edits/quote", json=body, headers=headers).json
    expected: dict[str, int] = {}
    for line in quote["lines"]:
        expected[line["operation"]] = expected.get(line["operation"], 0) + line["amount"]
    assert set(expected) == {"remove_background", "upscale"}, quote["lines"]

    response = edit.post("/edits", json=body, headers=headers)
    assert response.status_code == 202, response.json
    job = run_job(stack, edit, headers, response.json["id"])
    assert job["settlement"]["captured"] == quote["total"] == sum(expected.values())

    today = datetime.now(UTC).date().isoformat()
    usage = stack.client("credits_api").get("/usage", query_string={"from": today, "to": today}, headers=headers)
    assert usage.status_code == 200, usage.json
    assert usage.json["by_operation"] == expected
    assert usage.json["total"] == quote["total"]
    assert usage.json["by_day_and_operation"] == {today: expected}
    assert stack.platform.ledger.verify(client_id) == []


def test_transparent_cutout_then_scene_keeps_the_product_pixels(
    stack: Any, rembg: Any, edit: Any, catalog: Any, headers: dict[str, str], client_id: str
) -> None:
    grant(stack, client_id, GRANT)
    asset_id = new_asset(stack, catalog, headers, client_id)
    response = edit.post(
        "/edits",
        json={
            "asset_ids": [asset_id],
            "operations": [
                {"op": "remove_background"},
                {"op": "background", "type": "scene", "prompt": "a marble kitchen counter"},
            ],
        },
        headers=headers,
    )
    assert response.status_code == 202, response.json
    assert response.json["cost"] == 2  # remove_background 1 + a 1K generated scene 1
    job = run_job(stack, edit, headers, response.json["id"])
    assert job["settlement"]["captured"] == 2
    out = revision_image(catalog, headers, asset_id, 2).convert("RGB")
    source = subject_photo()
    inner = (100, 80, 220, 160)  # well inside the subject, where the cutout is fully opaque
    assert out.crop(inner).tobytes() == source.crop(inner).tobytes()
    assert out.getpixel((5, 5)) != source.getpixel((5, 5))  # a new background
    meta = catalog.get(f"/assets/{asset_id}", headers=headers).json
    assert meta["current_revision"] == 2


def test_inpaint_keeps_every_pixel_outside_the_mask(
    stack: Any, edit: Any, catalog: Any, headers: dict[str, str], client_id: str
) -> None:
    grant(stack, client_id, GRANT)
    source = images.photo((320, 240))
    asset_id = new_asset(stack, catalog, headers, client_id, img=source)
    mask = Image.new("L", source.size, 0)
    ImageDraw.Draw(mask).ellipse((60, 40, 200, 160), fill=255)
    mask.paste(100, (250, 180, 300, 220))  # a soft corner too
    response = edit.post(
        "/edits",
        json={
            "asset_ids": [asset_id],
            "operations": [
                {
                    "op": "inpaint",
                    "prompt": "remove the scratch",
                    "mask": "data:image/png;base64," + b64(images.encode(mask, "PNG")),
                },
            ],
        },
        headers=headers,
    )
    assert response.status_code == 202, response.json
    job = run_job(stack, edit, headers, response.json["id"])
    assert job["counts"]["succeeded"] == 1 and job["settlement"]["captured"] == 1
    before = revision_image(catalog, headers, asset_id, 1).convert("RGB")
    after = revision_image(catalog, headers, asset_id, 2)
    assert after.format == "PNG" and after.size == before.size  # lossless by default: the guarantee survives
    after = after.convert("RGB")
    outside = mask.point(lambda v: 255 if v == 0 else 0)
    blank = Image.new("RGB", before.size)
    assert Image.composite(after, blank, outside).tobytes() == Image.composite(before, blank, outside).tobytes()
    inside = rectangle_mask(before.size, (110, 90, 150, 110))
    assert Image.composite(after, blank, inside).tobytes() != Image.composite(before, blank, inside).tobytes()
    steps = catalog.get(f"/assets/{asset_id}", headers=headers).json
    assert steps["current_revision"] == 2
    assert available(stack, client_id) == (GRANT - 1, 0)


def test_upscale_offline_falls_back_to_lanczos_and_says_so(
    stack: Any, edit: Any, catalog: Any, headers: dict[str, str], client_id: str
) -> None:
    grant(stack, client_id, GRANT)
    asset_id = new_asset(stack, catalog, headers, client_id)
    response = edit.post(
        "/edits", json={"asset_ids": [asset_id], "operations": [{"op": "upscale", "size": "2K"}]}, headers=headers
    )
    assert response.status_code == 202 and response.json["cost"] == 1
    run_job(stack, edit, headers, response.json["id"])
    doc = asset_doc(stack, client_id, asset_id)
    assert (doc["width"], doc["height"]) == (2048, 1536)
    revision = revision_doc(stack, client_id, asset_id, 2)
    assert revision["metadata"]["offline"] is True and revision["metadata"]["fallback"] == "lanczos"


def test_batch_with_one_failure_refunds_that_asset(
    stack: Any, edit: Any, catalog: Any, headers: dict[str, str], client_id: str
) -> None:
    grant(stack, client_id, GRANT)
    assets = [new_asset(stack, catalog, headers, client_id) for _ in range(3)]
    response = edit.post(
        "/edits",
        json={
            "asset_ids": assets,
            "operations": [
                {"op": "prompt_edit", "prompt": "make the lighting warmer"},
            ],
        },
        headers=headers,
    )
    assert response.status_code == 202 and response.json["cost"] == 3
    # The stored image of the second asset disappears after the job was accepted.
    stack.platform.object_store.delete(asset_doc(stack, client_id, assets[1])["key"])
    job = run_job(stack, edit, headers, response.json["id"])
    assert job["status"] == "completed"
    assert [item["status"] for item in job["items"]] == ["succeeded", "failed", "succeeded"]
    assert job["items"][1]["failure"]["code"] == "asset_image_missing"
    assert job["settlement"] == {"captured": 2, "released": 1, "succeeded": 2, "failed": 1}
    assert available(stack, client_id) == (GRANT - 2, 0)
    assert [asset_doc(stack, client_id, a)["current_revision"] for a in assets] == [2, 1, 2]


def test_engine_failures_retry_then_refund_and_redelivery_changes_nothing(
    stack: Any, edit: Any, catalog: Any, headers: dict[str, str], client_id: str
) -> None:
    engine = ScriptedEngine()
    install(stack, engine=engine)
    grant(stack, client_id, GRANT)
    flaky, down = (new_asset(stack, catalog, headers, client_id) for _ in range(2))
    first = edit.post(
        "/edits",
        json={"asset_ids": [flaky], "operations": [{"op": "prompt_edit", "prompt": "warmer FLAKY:2"}]},
        headers=headers,
    )
    second = edit.post(
        "/edits",
        json={"asset_ids": [down], "operations": [{"op": "prompt_edit", "prompt": "warmer DOWN"}]},
        headers=headers,
    )
    assert first.status_code == second.status_code == 202
    stack.run_tasks()
    ok = edit.get(f"/edits/{first.json['id']}", headers=headers).json
    failed = edit.get(f"/edits/{second.json['id']}", headers=headers).json
    assert ok["items"][0]["status"] == "succeeded" and ok["settlement"]["captured"] == 1
    assert failed["items"][0]["failure"]["code"] == "engine_unavailable" and failed["settlement"]["released"] == 1
    assert len(engine.calls_with("FLAKY")) == 3 and len(engine.calls_with("DOWN")) == 4  # tasks_max_attempts
    assert available(stack, client_id) == (GRANT - 1, 0)
    assert revision_numbers(stack, client_id, flaky) == [1, 2]
    # A redelivered item task (Cloud Tasks is at-least-once) finds the item done: no second revision.
    stack.dispatcher.enqueue(
        TaskRequest(
            target="edit_tasks",
            path="/tasks/item",
            payload=EditItemTask(client_id=client_id, job_id=first.json["id"], index=0),
        )
    )
    stack.run_tasks()
    assert revision_numbers(stack, client_id, flaky) == [1, 2]
    assert available(stack, client_id) == (GRANT - 1, 0)


def test_an_object_store_outage_is_retried_not_refunded(
    stack: Any, edit: Any, catalog: Any, headers: dict[str, str], client_id: str
) -> None:
    from shared.errors import UpstreamUnavailable
    from shared.storage import ObjectStore

    class FlakyStore(ObjectStore):
        """The real store, whose reads of asset images fail the first two times (R2 having a bad minute)."""

        def __init__(self, inner: ObjectStore) -> None:
            self.inner, self.failures = inner, 0

        def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
            if "/assets/" in key and self.failures < 2:
                self.failures += 1
                raise UpstreamUnavailable("The object store is unavailable", retry_after=0)
            return self.inner.get(key, max_bytes=max_bytes)

        def put(self, key: str, data: bytes, content_type: str, *, cache_control: str | None = None) -> None:
            self.inner.put(key, data, content_type, cache_control=cache_control)

        def head(self, key: str) -> Any:
            return self.inner.head(key)

        def delete(self, key: str) -> None:
            self.inner.delete(key)

        def presigned_get(self, key: str, *, expires_in: int, download_name: str | None = None) -> str:
            return self.inner.presigned_get(key, expires_in=expires_in, download_name=download_name)

        def presigned_put(self, key: str, *, content_type: str, content_length: int, expires_in: int) -> Any:
            return self.inner.presigned_put(
                key, content_type=content_type, content_length=content_length, expires_in=expires_in
            )

        def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Any:
            return self.inner.iter_chunks(key, chunk_size)

        def start_multipart(self, key: str, content_type: str) -> str:
            return self.inner.start_multipart(key, content_type)

        def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> Any:
            return self.inner.upload_part(key, upload_id, number, data)

        def complete_multipart(self, key: str, upload_id: str, parts: Any) -> None:
            self.inner.complete_multipart(key, upload_id, parts)

        def abort_multipart(self, key: str, upload_id: str) -> None:
            self.inner.abort_multipart(key, upload_id)

    grant(stack, client_id, GRANT)
    asset_id = new_asset(stack, catalog, headers, client_id)
    flaky = FlakyStore(stack.platform.object_store)
    install(stack, object_store=flaky)
    response = edit.post(
        "/edits",
        json={"asset_ids": [asset_id], "operations": [{"op": "prompt_edit", "prompt": "brighter"}]},
        headers=headers,
    )
    assert response.status_code == 202, response.json
    job = run_job(stack, edit, headers, response.json["id"])
    assert flaky.failures == 2
    assert job["items"][0]["status"] == "succeeded" and job["settlement"]["captured"] == 1


def test_non_image_assets_are_refused(
    stack: Any, edit: Any, catalog: Any, headers: dict[str, str], client_id: str
) -> None:
    asset_id = new_asset(stack, catalog, headers, client_id)
    assets = stack.platform.db.collection("clients").document(client_id).collection("assets")
    video = {**asset_doc(stack, client_id, asset_id), "id": "vid_1", "kind": "video", "content_type": "video/mp4"}
    assets.document("vid_1").set(video)
    problem(
        edit.post(
            "/edits", json={"asset_ids": ["vid_1"], "operations": [{"op": "resize", "width": 9}]}, headers=headers
        ),
        422,
        "asset_not_an_image",
    )


def test_idempotency_key_makes_one_job_and_one_hold(
    stack: Any, edit: Any, catalog: Any, headers: dict[str, str], client_id: str
) -> None:
    grant(stack, client_id, GRANT)
    asset_id = new_asset(stack, catalog, headers, client_id)
    body = {"asset_ids": [asset_id], "operations": [{"op": "prompt_edit", "prompt": "brighter"}]}
    keyed = {**headers, "Idempotency-Key": "edit-once-1"}
    a = edit.post("/edits", json=body, headers=keyed)
    b = edit.post("/edits", json=body, headers=keyed)
    assert a.status_code == b.status_code == 202 and a.json["id"] == b.json["id"]
    assert available(stack, client_id) == (GRANT - 1, 1)
    assert len(edit_jobs(stack, client_id)) == 1


def test_a_key_reused_with_another_body_is_409_after_the_http_record_expired(
    stack: Any, edit: Any, catalog: Any, headers: dict[str, str], client_id: str
) -> None:
    grant(stack, client_id, GRANT)
    asset_id = new_asset(stack, catalog, headers, client_id)
    body = {"asset_ids": [asset_id], "operations": [{"op": "prompt_edit", "prompt": "brighter"}]}
    keyed = {**headers, "Idempotency-Key": "edit-reuse-1"}
    first = edit.post("/edits", json=body, headers=keyed)
    assert first.status_code == 202, first.json
    expire_idempotency_records(stack, client_id)

    other = {"asset_ids": [asset_id], "operations": [{"op": "prompt_edit", "prompt": "darker"}]}
    problem(edit.post("/edits", json=other, headers=keyed), 409, "idempotency_key_reused")
    assert len(edit_jobs(stack, client_id)) == 1 and available(stack, client_id) == (GRANT - 1, 1)

    expire_idempotency_records(stack, client_id)
    again = edit.post("/edits", json=body, headers=keyed)
    assert again.status_code == 202 and again.json["id"] == first.json["id"]
    assert len(edit_jobs(stack, client_id)) == 1 and available(stack, client_id) == (GRANT - 1, 1)


def test_revert_appends_a_copy_of_an_old_revision(
    stack: Any, edit: Any, catalog: Any, headers: dict[str, str], client_id: str
) -> None:
    asset_id = new_asset(stack, catalog, headers, client_id)
    first = asset_doc(stack, client_id, asset_id)
    assert (
        edit.post(
            "/edits", json={"asset_ids": [asset_id], "operations": [{"op": "resize", "width": 100}]}, headers=headers
        ).status_code
        == 200
    )
    reverted = edit.post(f"/assets/{asset_id}/revert", json={"revision": 1}, headers=headers)
    assert reverted.status_code == 200, reverted.json
    assert (reverted.json["revision"], reverted.json["width"], reverted.json["operation"]) == (3, 320, "revert to r1")
    doc = asset_doc(stack, client_id, asset_id)
    assert (doc["current_revision"], doc["key"], doc["width"]) == (3, first["key"], 320)
    assert revision_numbers(stack, client_id, asset_id) == [1, 2, 3]
    assert download(reverted.json["url"]).size == (320, 240)
    problem(edit.post(f"/assets/{asset_id}/revert", json={"revision": 9}, headers=headers), 404, "not_found")
    problem(edit.post(f"/assets/{asset_id}/revert", json={"revision": 0}, headers=headers), 422, "validation_failed")


def test_concurrent_edits_of_one_asset_never_share_a_revision_number(
    stack: Any, edit: Any, catalog: Any, headers: dict[str, str], client_id: str
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from shared.adapters.firestore.catalog import FirestoreAssetRepository
    from shared.catalog.models import AssetRevision
    from shared.editing.revisions import RevisionConflict, commit_revision

    asset_id = new_asset(stack, catalog, headers, client_id)
    widths = [300, 290, 280, 270, 260, 250]

    def resize(width: int) -> Any:
        client = stack.client("edit_api")  # one client per thread
        return client.post(
            "/edits", json={"asset_ids": [asset_id], "operations": [{"op": "resize", "width": width}]}, headers=headers
        )

    with ThreadPoolExecutor(len(widths)) as pool:
        responses = list(pool.map(resize, widths))
    assert {r.status_code for r in responses} <= {200, 409}
    won = sorted(r.json["revisions"][0]["revision"] for r in responses if r.status_code == 200)
    assert won == list(range(2, 2 + len(won))) and won  # each success its own number, no gaps
    assert revision_numbers(stack, client_id, asset_id) == [1, *won]
    doc = asset_doc(stack, client_id, asset_id)
    assert doc["current_revision"] == won[-1]
    # Edits applied on top of each other: every revision is a resize of the one before it.
    ref = stack.platform.db.collection("clients").document(client_id).collection("assets").document(asset_id)
    sources = [ref.collection("revisions").document(str(n)).get().to_dict()["metadata"]["source_revision"] for n in won]
    assert sources == [n - 1 for n in won]
    # And at the lowest level: a second commit of the same number is a conflict, not a second revision.
    latest = ref.collection("revisions").document(str(won[-1])).get().to_dict()
    stale = AssetRevision.model_validate({**latest, "number": won[-1]})
    with pytest.raises(RevisionConflict):
        commit_revision(
            FirestoreAssetRepository(stack.platform.db),
            client_id=client_id,
            asset_id=asset_id,
            revision=stale,
            now=stack.platform.clock(),
        )
    assert revision_numbers(stack, client_id, asset_id) == [1, *won]


def test_prompt_edit_through_gemini_against_the_stub(
    stack: Any, edit: Any, catalog: Any, headers: dict[str, str], client_id: str, clean_gemini_env: None
) -> None:
    from tests.stubs.gemini import GeminiStub

    grant(stack, client_id, GRANT)
    asset_id = new_asset(stack, catalog, headers, client_id, img=images.photo((400, 300)))
    with GeminiStub(api_key=GEMINI_STUB_KEY) as stub:
        install(stack, engine=gemini_engine(stub))
        response = edit.post(
            "/edits",
            json={"asset_ids": [asset_id], "operations": [{"op": "prompt_edit", "prompt": "make the lighting warmer"}]},
            headers=headers,
        )
        assert response.status_code == 202, response.json
        job = run_job(stack, edit, headers, response.json["id"])
        call = stub.last
    assert job["settlement"]["captured"] == 1
    assert "make the lighting warmer" in " ".join(call.texts)
    assert call.generation_config["imageConfig"] == {"aspectRatio": "4:3", "imageSize": "1K"}
    ((mime, sent),) = call.inline_images
    assert mime == "image/png" and Image.open(io.BytesIO(sent)).size == (400, 300)
    doc = asset_doc(stack, client_id, asset_id)
    assert (doc["current_revision"], doc["width"], doc["height"]) == (2, 400, 300)  # mapped back onto the image
    revision = revision_doc(stack, client_id, asset_id, 2)
    assert revision["metadata"]["engines"] == ["gemini"] and revision["metadata"]["offline"] is False
    out = revision_image(catalog, headers, asset_id, 2).convert("RGB")
    assert out.getpixel((200, 150)) == (200, 40, 40)  # the stub's picture: a red block in the middle


# -- refusals: 4xx, nothing charged, nothing written ---------------------------------------------------------


def _png(img: Image.Image, **params: Any) -> bytes:
    return images.encode(img, "PNG", **params)


def _animated_mask() -> bytes:
    frames = [Image.new("L", (320, 240), v) for v in (255, 128)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "PNG", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def _rotated_mask() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 320x240 like the image, but upright it is 240x320
    return _png(rectangle_mask((320, 240), (0, 0, 50, 50)), exif=exif.tobytes())


def _inpaint(mask: bytes) -> list[dict[str, Any]]:
    return [{"op": "inpaint", "prompt": "fix it", "mask": b64(mask)}]


BAD_REQUESTS = [
    ("unknown operation", [{"op": "sharpen", "amount": 2}], 422, "validation_failed"),
    ("extra field", [{"op": "resize", "width": 10, "dpi": 300}], 422, "validation_failed"),
    ("crop outside", [{"op": "crop", "box": {"x": 300, "y": 0, "width": 50, "height": 50}}], 422, "crop_out_of_bounds"),
    (
        "background without cutout",
        [{"op": "background", "type": "solid", "color": "#FFFFFF"}],
        422,
        "background_needs_cutout",
    ),
    (
        "upscale too small",
        [{"op": "resize", "width": 3000}, {"op": "upscale", "size": "2K"}],
        422,
        "upscale_not_needed",
    ),
    ("mask not an image", _inpaint(images.TEXT_BYTES), 422, "image_unreadable"),
    ("mask truncated", _inpaint(_png(images.photo((320, 240), "L"))[:-500]), 422, "image_truncated"),
    (
        "mask bomb",
        _inpaint(images.with_png_size(_png(Image.new("L", (8, 8), 255)), 50_000, 50_000)),
        422,
        "image_too_large",
    ),
    ("mask animated", _inpaint(_animated_mask()), 422, "image_animated"),
    ("mask palette", _inpaint(_png(Image.new("P", (320, 240), 3))), 422, "mask_mode_invalid"),
    ("mask 16-bit", _inpaint(_png(Image.new("I;16", (320, 240), 3000))), 422, "mask_mode_invalid"),
    ("mask RGB", _inpaint(_png(Image.new("RGB", (320, 240), (255, 255, 255)))), 422, "mask_mode_invalid"),
    ("mask CMYK JPEG", _inpaint(images.cmyk_jpeg((320, 240))), 422, "image_format_not_allowed"),
    ("mask empty", _inpaint(_png(Image.new("L", (320, 240), 0))), 422, "mask_empty"),
    ("mask wrong size", _inpaint(_png(rectangle_mask((300, 300), (0, 0, 10, 10)))), 422, "mask_size_mismatch"),
    ("mask EXIF-rotated", _inpaint(_rotated_mask()), 422, "mask_size_mismatch"),
    ("mask not base64", [{"op": "inpaint", "prompt": "x", "mask": "%%%"}], 422, "validation_failed"),
    ("no model configured", [{"op": "remove_background"}], 503, "background_removal_unavailable"),
]


@pytest.mark.parametrize(("name", "operations", "status", "code"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_is_refused_before_anything_happens(
    stack: Any,
    edit: Any,
    catalog: Any,
    headers: dict[str, str],
    client_id: str,
    name: str,
    operations: list[dict[str, Any]],
    status: int,
    code: str,
) -> None:
    grant(stack, client_id, GRANT)
    asset_id = new_asset(stack, catalog, headers, client_id, fmt="JPEG")
    before = asset_doc(stack, client_id, asset_id)
    body = {"asset_ids": [asset_id], "operations": operations}
    for path in ("/edits/quote", "/edits"):
        refused = problem(edit.post(path, json=body, headers=headers), status, code)
        if status == 422 and code != "validation_failed":
            assert refused["errors"][0]["field"].startswith("operations."), refused
    assert available(stack, client_id) == (GRANT, 0)
    assert asset_doc(stack, client_id, asset_id) == before
    assert revision_numbers(stack, client_id, asset_id) == [1]
    assert edit_jobs(stack, client_id) == []
    assert stack.dispatcher.pending == 0


@pytest.mark.parametrize(
    ("damage", "code"),
    [("truncate", "image_truncated"), ("text", "image_unreadable"), ("delete", "asset_image_missing")],
)
def test_a_damaged_source_image_is_refused_in_the_sync_path(
    stack: Any, edit: Any, catalog: Any, headers: dict[str, str], client_id: str, damage: str, code: str
) -> None:
    assets = [new_asset(stack, catalog, headers, client_id) for _ in range(2)]
    store = stack.platform.object_store
    key = asset_doc(stack, client_id, assets[1])["key"]
    if damage == "delete":
        store.delete(key)
    else:
        data = store.get(key)
        store.put(key, data[: len(data) // 2] if damage == "truncate" else images.TEXT_BYTES, "image/png")
    response = edit.post(
        "/edits", json={"asset_ids": assets, "operations": [{"op": "resize", "width": 50}]}, headers=headers
    )
    assert problem(response, 422, code)["asset_id"] == assets[1]
    # The first asset was computed too, but nothing is written until every asset is known to work.
    assert [revision_numbers(stack, client_id, a) for a in assets] == [[1], [1]]


def test_unaffordable_edit_is_402_and_writes_nothing(
    stack: Any, edit: Any, catalog: Any, headers: dict[str, str], client_id: str
) -> None:
    grant(stack, client_id, 1)
    assets = [new_asset(stack, catalog, headers, client_id) for _ in range(2)]
    response = edit.post(
        "/edits", json={"asset_ids": assets, "operations": [{"op": "prompt_edit", "prompt": "x"}]}, headers=headers
    )
    body = problem(response, 402, "insufficient_credits")
    assert body["required"] == 2 and body["available"] == 1
    assert edit_jobs(stack, client_id) == [] and available(stack, client_id) == (1, 0)


def test_other_tenants_assets_and_jobs_are_404(
    stack: Any, edit: Any, catalog: Any, headers: dict[str, str], client_id: str, other_client_id: str
) -> None:
    grant(stack, client_id, GRANT)
    asset_id = new_asset(stack, catalog, headers, client_id)
    job = edit.post(
        "/edits", json={"asset_ids": [asset_id], "operations": [{"op": "prompt_edit", "prompt": "x"}]}, headers=headers
    )
    assert job.status_code == 202
    other = stack.headers(other_client_id)
    grant(stack, other_client_id, GRANT)
    problem(
        edit.post(
            "/edits", json={"asset_ids": [asset_id], "operations": [{"op": "resize", "width": 9}]}, headers=other
        ),
        404,
        "not_found",
    )
    problem(
        edit.post(
            "/edits/quote", json={"asset_ids": [asset_id], "operations": [{"op": "resize", "width": 9}]}, headers=other
        ),
        404,
        "not_found",
    )
    problem(edit.get(f"/edits/{job.json['id']}", headers=other), 404, "not_found")
    problem(edit.post(f"/assets/{asset_id}/revert", json={"revision": 1}, headers=other), 404, "not_found")
    assert available(stack, other_client_id) == (GRANT, 0)


def test_workers_refuse_callers_without_task_credentials(stack: Any, headers: dict[str, str]) -> None:
    tasks = stack.client("edit_tasks")
    response = tasks.post("/tasks/item", json={"client_id": "x", "job_id": "y", "index": 0}, headers=headers)
    assert response.status_code in (401, 403)


@pytest.fixture(autouse=True)
def _no_leftover_tasks(stack: Any) -> Iterator[None]:
    yield
    stack.run_tasks()


def test_edit_jobs_are_listed_newest_first_and_can_be_cancelled_before_they_run(
    stack: Any, edit: Any, catalog: Any, headers: dict[str, str], client_id: str, other_client_id: str
) -> None:
    grant(stack, client_id, GRANT)
    asset_id = new_asset(stack, catalog, headers, client_id)
    body = {"asset_ids": [asset_id], "operations": [{"op": "upscale", "size": "2K"}]}
    first = edit.post("/edits", json=body, headers=headers).json
    second = edit.post("/edits", json=body, headers=headers).json
    assert available(stack, client_id) == (GRANT - first["cost"] - second["cost"], first["cost"] + second["cost"])

    other = stack.headers(other_client_id)
    assert edit.post(f"/edits/{second['id']}/cancel", headers=other).status_code == 404  # another tenant's job
    cancelled = edit.post(f"/edits/{second['id']}/cancel", headers=headers)
    assert cancelled.status_code == 202, cancelled.json
    assert cancelled.json["status"] == "cancelling"
    stack.run_tasks()

    listed = edit.get("/edits", headers=headers)
    assert listed.status_code == 200, listed.json
    assert [job["id"] for job in listed.json["items"]] == [second["id"], first["id"]]
    done, stopped = listed.json["items"][1], listed.json["items"][0]
    assert done["status"] == "completed" and done["settlement"]["captured"] == first["cost"]
    assert stopped["status"] == "cancelled" and stopped["counts"]["cancelled"] == 1
    assert stopped["settlement"] == {"captured": 0, "released": second["cost"], "succeeded": 0, "failed": 0}
    assert available(stack, client_id) == (GRANT - first["cost"], 0)
    assert revision_numbers(stack, client_id, asset_id) == [1, 2]  # only the first job made a revision

    only = edit.get("/edits", query_string={"status": "cancelled"}, headers=headers).json
    assert [job["id"] for job in only["items"]] == [second["id"]]
    assert edit.get("/edits", headers=other).json["items"] == []
    assert edit.post(f"/edits/{second['id']}/cancel", headers=headers).json["status"] == "cancelled"  # again: as is
    assert stack.platform.ledger.verify(client_id) == []
