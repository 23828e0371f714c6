"""Generated images are stored as PNG or WebP, as ``OUTPUT_FORMAT`` says, whatever the engine sent.

End to end: a job through the generate API (``generate_api``), its Cloud Tasks workers delivered by
the local dispatcher, the engine (the offline one, or the real ``google-genai`` SDK against the local
Gemini stub answering PNG, JPEG or WebP), then the stored object read back from the object store
and through the catalog API's presigned download URL, and decoded with Pillow.
"""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.stubs.gemini import GeminiStub, Scenario, image_dimensions

GRANT = 100
API_KEY = "stub-key"
IMAGE_MODEL = "gemini-3.1-flash-image"
STUB_BLOCK = (200, 40, 40)  # the colour of the block over the middle of the stub's picture
PILLOW_FORMAT = {"png": "PNG", "webp": "WEBP"}


@pytest.fixture
def gen(stack: Any) -> Any:
    return stack.client("generate_api")


@pytest.fixture
def catalog(stack: Any) -> Any:
    return stack.client("catalog_api")


@pytest.fixture
def headers(stack: Any, client_id: str) -> dict[str, str]:
    minted: dict[str, str] = stack.headers(client_id)
    return minted


@pytest.fixture
def clean_gemini_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GOOGLE_API_KEY", "GEMINI_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GEMINI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


def install(stack: Any, *, output_format: str, engine: Any = None) -> Any:
    """The stack's platform with ``OUTPUT_FORMAT`` set (and optionally another engine)."""
    from shared.platform import Platform, set_platform

    p = stack.platform
    settings = p.settings.model_copy(update={"output_format": output_format})
    assert settings.output_format == output_format
    extra = {"engine": engine} if engine is not None else {}
    platform = Platform(
        settings,
        db=p.db,
        object_store=p.object_store,
        task_queue=stack.dispatcher,
        fetcher=p.fetcher,
        ledger=p.ledger,
        **extra,
    )
    set_platform(platform)  # the stack fixture resets the platform afterwards
    return platform


def grant(stack: Any, client_id: str, amount: int = GRANT) -> None:
    from shared.ledger.model import Actor, GrantSource

    stack.platform.ledger.grant(
        client_id,
        key=f"grant-{client_id}-{amount}",
        amount=amount,
        source=GrantSource.PACK,
        actor=Actor(kind="admin", id="tester"),
        reason="test credits",
    )


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


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


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
    stored = decode(store.get(doc["key"]))
    assert stored.format == PILLOW_FORMAT[output_format]
    assert stored.size == (doc["width"], doc["height"])

    detail = catalog.get(f"/assets/{asset_id}", headers=headers)
    assert detail.status_code == 200, detail.json
    assert detail.json["content_type"] == content_type
    assert [r["content_type"] for r in detail.json["revisions"]] == [content_type]
    download = httpx.get(detail.json["download_url"], trust_env=False)
    assert download.status_code == 200, download.text[:300]
    assert download.headers["content-type"] == content_type
    served = decode(download.content)
    assert served.format == PILLOW_FORMAT[output_format]
    assert served.tobytes() == stored.tobytes()

    thumb = decode(store.get(doc["thumbnail_key"]))
    assert thumb.format == "WEBP" and doc["thumbnail_key"].endswith("_thumb.webp")
    return stored


@pytest.mark.parametrize("output_format", ["png", "webp"])
def test_offline_engine_output_is_stored_in_the_configured_format(
    stack: Any, gen: Any, catalog: Any, headers: dict[str, str], client_id: str, output_format: str
) -> None:
    install(stack, output_format=output_format)  # the offline engine (it answers PNG)
    grant(stack, client_id)
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
    from shared.engines.gemini import GeminiConfig, GeminiEngine

    with GeminiStub(api_key=API_KEY, default=Scenario("image", image_format=answer_format)) as stub:
        engine = GeminiEngine(
            GeminiConfig(api_key=API_KEY, base_url=stub.url, api_version="v1beta", image_model=IMAGE_MODEL)
        )
        install(stack, output_format=output_format, engine=engine)
        grant(stack, client_id)
        asset_ids = generate(stack, gen, headers)
        calls = stub.calls
        sent = stub.sent_images

    assert len(calls) == 2 and all(call.status == 200 for call in calls)
    assert all(call.generation_config["imageConfig"] == {"aspectRatio": "4:5", "imageSize": "1K"} for call in calls)
    answer_size = image_dimensions("4:5", "1K")
    assert [decode(data).format for data in sent] == [answer_format] * 2  # what the model really answered
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
    from shared.engines.gemini import GeminiConfig, GeminiEngine

    with GeminiStub(api_key=API_KEY, default=Scenario("image", image_format="JPEG")) as stub:
        engine = GeminiEngine(
            GeminiConfig(api_key=API_KEY, base_url=stub.url, api_version="v1beta", image_model=IMAGE_MODEL)
        )
        install(stack, output_format="png", engine=engine)
        grant(stack, client_id)
        (asset_id,) = generate(stack, gen, headers, variants=1)
        (answer,) = stub.sent_images
    stored = check_stored(stack, catalog, headers, client_id, asset_id, "png")
    assert stored.convert("RGB").tobytes() == decode(answer).convert("RGB").tobytes()
