"""Generated images are stored as PNG or WebP, as ``OUTPUT_FORMAT`` says, whatever the engine sent.

End to end: a job through the generate API (``generate_api``), its Cloud Tasks workers delivered by
the local dispatcher, the engine (the offline one, or the real ``google-genai`` SDK against the local
Gemini stub answering PNG, JPEG or WebP), then the stored object read back from the object store
and through the catalog API's presigned download URL, and decoded with Pillow.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from PIL import Image

from tests import images
from tests.platforms import GEMINI_STUB_KEY, gemini_engine, grant, install
from tests.stubs.gemini import GeminiStub, Scenario, image_dimensions

GRANT = 100
STUB_BLOCK = (200, 40, 40)  # the colour of the block over the middle of the stub's picture
PILLOW_FORMAT = {"png": "PNG", "webp": "WEBP"}


def install_output_format(stack: Any, output_format: str, engine: Any = None) -> None:
    """The stack's platform with ``OUTPUT_FORMAT`` set (and optionally another engine)."""
    platform = install(stack, engine=engine, output_format=output_format)
    assert platform.settings.output_format == output_format


def generate(stack: Any, gen: Any, headers: dict[str, str], *, variants: int = 2) -> list[str]:
    """One prompt item, ``variants`` images, 4:5 at 1K; runs every task; the new assets' ids."""
    body = {
        "items": [{"prompt": "a ceramic mug on an oak desk"}],
        "style": "studio",
        "aspect_ratio": "4:5",
        "size": "1K",
        "variants": variants,
    }
    response = gen.post("/jobs", json=body, headers=headers)
    assert response.status_code == 202, response.json
    job_id = response.json["id"]
    stack.run_tasks()
    job = gen.get(f"/jobs/{job_id}", headers=headers)
    assert job.status_code == 200, job.json
    assert job.json["status"] == "completed" and job.json["images_succeeded"] == variants, job.json
    items = gen.get(f"/jobs/{job_id}/items", headers=headers)
    assert items.status_code == 200, items.json
    (item,) = items.json["items"]
    assert item["status"] == "succeeded", item
    asset_ids: list[str] = item["asset_ids"]
    assert len(asset_ids) == variants
    return asset_ids


def check_stored(
    stack: Any, catalog: Any, headers: dict[str, str], client_id: str, asset_id: str, output_format: str
) -> Image.Image:
    """Every place that says what the stored image is agrees with ``output_format``, and so do its bytes."""
    content_type = f"image/{output_format}"
    doc = (
        stack.platform.db.collection("clients")
        .document(client_id)
        .collection("assets")
        .document(asset_id)
        .get()
        .to_dict()
    )
    assert doc["content_type"] == content_type
    assert doc["key"].endswith(f".{output_format}"), doc["key"]
    store = stack.platform.object_store
    head = store.head(doc["key"])
    assert head is not None and head.content_type == content_type
    stored = images.decode(store.get(doc["key"]))
    assert stored.format == PILLOW_FORMAT[output_format]
    assert stored.size == (doc["width"], doc["height"])

    detail = catalog.get(f"/assets/{asset_id}", headers=headers)
    assert detail.status_code == 200, detail.json
    assert detail.json["content_type"] == content_type
    assert [r["content_type"] for r in detail.json["revisions"]] == [content_type]
    download = httpx.get(detail.json["download_url"], trust_env=False)
    assert download.status_code == 200, download.text[:300]
    assert download.headers["content-type"] == content_type
    served = images.decode(download.content)
    assert served.format == PILLOW_FORMAT[output_format]
    assert served.tobytes() == stored.tobytes()

    thumb = images.decode(store.get(doc["thumbnail_key"]))
    assert thumb.format == "WEBP" and doc["thumbnail_key"].endswith("_thumb.webp")
    return stored


@pytest.mark.parametrize("output_format", ["png", "webp"])
def test_offline_engine_output_is_stored_in_the_configured_format(
    stack: Any, gen: Any, catalog: Any, headers: dict[str, str], client_id: str, output_format: str
) -> None:
    install_output_format(stack, output_format)  # the offline engine (it answers PNG)
    grant(stack, client_id, GRANT)
    for asset_id in generate(stack, gen, headers):
        stored = check_stored(stack, catalog, headers, client_id, asset_id, output_format)
        assert stored.size == (819, 1024)  # 4:5 at 1K


@pytest.mark.parametrize("output_format", ["png", "webp"])
@pytest.mark.parametrize("answer_format", ["PNG", "JPEG", "WEBP"])
def test_gemini_output_is_stored_in_the_configured_format_whatever_it_answers(
    stack: Any,
    gen: Any,
    catalog: Any,
    headers: dict[str, str],
    client_id: str,
    clean_gemini_env: None,
    output_format: str,
    answer_format: str,
) -> None:
    with GeminiStub(api_key=GEMINI_STUB_KEY, default=Scenario("image", image_format=answer_format)) as stub:
        install_output_format(stack, output_format, gemini_engine(stub))
        grant(stack, client_id, GRANT)
        asset_ids = generate(stack, gen, headers)
        calls = stub.calls
        sent = stub.sent_images

    assert len(calls) == 2 and all(call.status == 200 for call in calls)
    assert all(call.generation_config["imageConfig"] == {"aspectRatio": "4:5", "imageSize": "1K"} for call in calls)
    answer_size = image_dimensions("4:5", "1K")
    assert [images.decode(data).format for data in sent] == [answer_format] * 2  # what the model really answered
    for asset_id in asset_ids:
        stored = check_stored(stack, catalog, headers, client_id, asset_id, output_format)
        assert stored.size == answer_size
        middle = stored.convert("RGB").getpixel((answer_size[0] // 2, answer_size[1] // 2))
        assert isinstance(middle, tuple)
        assert max(abs(a - b) for a, b in zip(middle, STUB_BLOCK, strict=True)) <= 3  # the model's picture


def test_a_jpeg_answer_stored_as_png_keeps_the_models_pixels(
    stack: Any, gen: Any, catalog: Any, headers: dict[str, str], client_id: str, clean_gemini_env: None
) -> None:
    """PNG is lossless: what is stored must be exactly what the model's JPEG decodes to."""
    with GeminiStub(api_key=GEMINI_STUB_KEY, default=Scenario("image", image_format="JPEG")) as stub:
        install_output_format(stack, "png", gemini_engine(stub))
        grant(stack, client_id, GRANT)
        (asset_id,) = generate(stack, gen, headers, variants=1)
        (answer,) = stub.sent_images
    stored = check_stored(stack, catalog, headers, client_id, asset_id, "png")
    assert stored.convert("RGB").tobytes() == images.decode(answer).convert("RGB").tobytes()
