"""Edit jobs whose model steps run on the real ``google-genai`` SDK against the local Gemini stub.

Every test goes through the edit API (``edit_api``) and its Cloud Tasks worker (``edit_tasks``,
delivered by the local dispatcher), with a :class:`GeminiEngine` pointed at :class:`GeminiStub`.
What Gemini was asked is read from the stub's record of the HTTP requests the SDK really sent;
what was stored is read back through the catalog API's presigned download URLs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image, ImageDraw

from tests import images
from tests.catalog_helpers import asset_ref, new_asset, revision_doc, revision_numbers
from tests.edit_helpers import b64, run_job, stored_revision
from tests.platforms import GEMINI_IMAGE_MODEL, GEMINI_STUB_KEY, available, gemini_engine, grant, install
from tests.stubs.gemini import GeminiStub, RecordedRequest, Scenario

GRANT = 20
STUB_FIELD = (236, 236, 240)  # the stub's picture: this light field ...
STUB_BLOCK = (200, 40, 40)  # ... with a block of this colour over its middle half
NEUTRAL = (200, 200, 200)  # what a cutout's transparent area shows a model (RGB only)


# -- fixtures and helpers ---------------------------------------------------------------------------


@pytest.fixture
def gemini(stack: Any, clean_gemini_env: None) -> Iterator[GeminiStub]:
    """The stub, and the stack's platform with a Gemini engine that talks to it (the pattern of
    ``test_prompt_edit_through_gemini_against_the_stub`` in test_edit.py)."""
    with GeminiStub(api_key=GEMINI_STUB_KEY) as stub:
        install(stack, engine=gemini_engine(stub))
        yield stub


def price(stack: Any, headers: dict[str, str], operation: str, variant: str | None = None) -> int:
    """The configured price, as the credits API publishes it."""
    response = stack.client("credits_api").get("/prices", headers=headers)
    assert response.status_code == 200, response.json
    entry = response.json["operations"][operation]
    amount = entry[variant or "default"]
    assert isinstance(amount, int) and amount > 0, entry
    return amount


def cutout(size: tuple[int, int] = (400, 300)) -> Image.Image:
    """RGBA: a noisy opaque subject over the middle half, fully transparent around it."""
    w, h = size
    img = Image.new("RGBA", size, (0, 0, 0, 0))
    img.paste(images.photo((w // 2, h // 2), "RGBA"), (w // 4, h // 4))
    return img


def subject_box(size: tuple[int, int]) -> tuple[int, int, int, int]:
    w, h = size
    return w // 4, h // 4, w // 4 + w // 2, h // 4 + h // 2


def submit(edit: Any, headers: dict[str, str], asset_id: str, operations: list[dict[str, Any]]) -> dict[str, Any]:
    """Quote, then submit; the job must be accepted at the quoted cost."""
    body = {"asset_ids": [asset_id], "operations": operations}
    quote = edit.post("/edits/quote", json=body, headers=headers)
    assert quote.status_code == 200, quote.json
    assert quote.json["mode"] == "job"
    response = edit.post("/edits", json=body, headers=headers)
    assert response.status_code == 202, response.json
    assert response.json["cost"] == quote.json["total"]
    accepted: dict[str, Any] = {**response.json, "quote": quote.json}
    return accepted


def only_call(stub: GeminiStub) -> RecordedRequest:
    """The one generateContent request of the job, checked against the wire format the SDK sends."""
    (call,) = stub.calls
    assert call.status == 200
    assert call.path == f"/v1beta/models/{GEMINI_IMAGE_MODEL}:generateContent"
    assert call.headers.get("x-goog-api-key") == GEMINI_STUB_KEY
    assert "IMAGE" in [str(m).upper() for m in call.generation_config["responseModalities"]]
    return call


def masked(img: Image.Image, region: Image.Image) -> bytes:
    """The bytes of ``img`` where ``region`` is 255, zero elsewhere."""
    return Image.composite(img, Image.new(img.mode, img.size), region).tobytes()


# -- upscale ----------------------------------------------------------------------------------------


def test_upscale_2k_calls_gemini_at_2k_and_stores_a_2048_long_side(
    stack: Any, gemini: GeminiStub, edit: Any, catalog: Any, headers: dict[str, str], client_id: str
) -> None:
    """500x300 is not a ratio Gemini offers: the photo goes out letterboxed to 16:9 at 2K, and the
    answer is mapped back to 2048x1229 (the source's ratio), charged at the 2K upscale price."""
    grant(stack, client_id, GRANT)
    source = images.photo((500, 300))
    asset_id = new_asset(stack, catalog, headers, client_id, source)
    cost = price(stack, headers, "upscale", "2K")
    job = submit(edit, headers, asset_id, [{"op": "upscale", "size": "2K"}])
    assert [(ln["operation"], ln["variant"], ln["amount"]) for ln in job["quote"]["lines"]] == [("upscale", "2K", cost)]
    assert job["cost"] == cost
    done = run_job(stack, edit, headers, job["id"])

    call = only_call(gemini)
    assert call.generation_config["imageConfig"] == {"aspectRatio": "16:9", "imageSize": "2K"}
    ((mime, sent),) = call.inline_images
    shown = images.decode(sent)
    assert mime == "image/png" and shown.mode == "RGB"
    assert shown.height == 300 and abs(shown.width / shown.height - 16 / 9) < 0.01
    left = (shown.width - 500) // 2
    assert shown.crop((left, 0, left + 500, 300)).tobytes() == source.tobytes()  # the photo itself, centred
    assert images.decode(gemini.sent_images[0]).size == (2048, 1152)

    assert done["status"] == "completed" and done["items"][0]["status"] == "succeeded"
    assert done["settlement"]["captured"] == cost and done["settlement"]["released"] == 0
    assert available(stack, client_id) == (GRANT - cost, 0)
    out, content_type = stored_revision(catalog, headers, asset_id, 2)
    assert (out.format, content_type) == ("PNG", "image/png")
    assert out.size == (2048, 1229) and max(out.size) == 2048 and out.mode == "RGB"  # opaque stays opaque
    assert out.convert("RGB").getpixel((1024, 614)) == STUB_BLOCK  # the model's picture, not a resampled photo
    revision = revision_doc(stack, client_id, asset_id, 2)
    assert (revision["width"], revision["height"], revision["content_type"]) == (2048, 1229, "image/png")
    (step,) = revision["metadata"]["steps"]
    assert step["op"] == "upscale" and step["engine"] == "gemini" and step["model"] == GEMINI_IMAGE_MODEL
    assert step["size"] == "2K" and step["offline"] is False
    assert revision["metadata"]["offline"] is False and "fallback" not in revision["metadata"]


def test_upscale_4k_of_a_cutout_keeps_its_alpha(
    stack: Any, gemini: GeminiStub, edit: Any, catalog: Any, headers: dict[str, str], client_id: str
) -> None:
    """A transparent image is shown to the model flattened on neutral grey; the stored 4K result
    (4096x3072) gets the source's alpha back."""
    grant(stack, client_id, GRANT)
    source = cutout((400, 300))
    asset_id = new_asset(stack, catalog, headers, client_id, source)
    cost = price(stack, headers, "upscale", "4K")
    job = submit(edit, headers, asset_id, [{"op": "upscale", "size": "4K"}])
    assert job["cost"] == cost
    done = run_job(stack, edit, headers, job["id"])

    call = only_call(gemini)
    assert call.generation_config["imageConfig"] == {"aspectRatio": "4:3", "imageSize": "4K"}
    ((_, sent),) = call.inline_images
    shown = images.decode(sent)
    assert shown.mode == "RGB" and shown.size == (400, 300)
    assert shown.getpixel((10, 10)) == NEUTRAL
    box = subject_box(source.size)
    assert shown.crop(box).tobytes() == source.convert("RGB").crop(box).tobytes()

    assert done["settlement"]["captured"] == cost
    out, content_type = stored_revision(catalog, headers, asset_id, 2)
    assert (out.format, content_type) == ("PNG", "image/png")
    assert out.size == (4096, 3072) and out.mode == "RGBA"
    assert out.getchannel("A").getpixel((40, 40)) == 0  # transparent where the source was
    assert out.getpixel((2048, 1536)) == (*STUB_BLOCK, 255)  # the model's pixels, opaque where the subject was
    # Away from the subject's edge (resampling softens it), the alpha is the source's: 255 over the
    # subject (scaled 10.24x: 1024..3072 x 768..2304), 0 everywhere around it.
    alpha = out.getchannel("A")
    margin = 40  # Lanczos reaches 3 source pixels (about 31 here) across the edge
    assert alpha.crop((1024 + margin, 768 + margin, 3072 - margin, 2304 - margin)).getextrema() == (255, 255)
    around = Image.new("L", out.size, 255)
    around.paste(0, (1024 - margin, 768 - margin, 3072 + margin, 2304 + margin))
    assert masked(alpha, around) == bytes(out.width * out.height)
    revision = revision_doc(stack, client_id, asset_id, 2)
    assert revision["metadata"]["has_alpha"] is True
    assert revision["metadata"]["steps"][0]["size"] == "4K"
    doc = asset_ref(stack, client_id, asset_id).get().to_dict()
    assert (doc["current_revision"], doc["width"], doc["height"]) == (2, 4096, 3072)


# -- inpaint ----------------------------------------------------------------------------------------


def _ellipse_mask(size: tuple[int, int]) -> Image.Image:
    w, h = size
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse((w * 3 // 10, h // 4, w * 7 // 10, h * 3 // 4), fill=255)
    mask.paste(100, (w * 4 // 5, h * 4 // 5, w * 9 // 10, h * 9 // 10))  # a soft patch: blended, not kept
    return mask


@pytest.mark.parametrize(
    ("source_kind", "answer", "mask_scale"),
    [
        ("photo", Scenario("image", size=(1024, 1024)), 1),  # a square answer to a 4:3 request
        ("photo", Scenario("image", size=(640, 480), image_format="JPEG"), 2),  # a JPEG; mask at half size
        ("cutout", Scenario("image", size=(1536, 1152), image_format="WEBP"), 1),  # alpha outside the mask too
    ],
    ids=["square-png-answer", "small-jpeg-answer-half-mask", "cutout-webp-answer"],
)
def test_inpaint_keeps_every_pixel_outside_the_mask_whatever_size_gemini_answers(
    stack: Any,
    gemini: GeminiStub,
    edit: Any,
    catalog: Any,
    headers: dict[str, str],
    client_id: str,
    source_kind: str,
    answer: Scenario,
    mask_scale: int,
) -> None:
    grant(stack, client_id, GRANT)
    size = (400, 300)
    source = images.photo(size) if source_kind == "photo" else cutout(size)
    asset_id = new_asset(stack, catalog, headers, client_id, source)
    mask = _ellipse_mask((size[0] // mask_scale, size[1] // mask_scale))
    gemini.push(answer)
    job = submit(
        edit,
        headers,
        asset_id,
        [
            {
                "op": "inpaint",
                "prompt": "replace the label",
                "mask": "data:image/png;base64," + b64(images.encode(mask, "PNG")),
            }
        ],
    )
    cost = price(stack, headers, "inpaint")
    assert job["cost"] == cost
    done = run_job(stack, edit, headers, job["id"])
    assert done["items"][0]["status"] == "succeeded", done["items"][0]
    assert done["settlement"]["captured"] == cost and available(stack, client_id) == (GRANT - cost, 0)

    call = only_call(gemini)
    assert call.generation_config["imageConfig"] == {"aspectRatio": "4:3", "imageSize": "1K"}
    assert any("replace the label" in text for text in call.texts)
    (image_mime, image_sent), (mask_mime, mask_sent) = call.inline_images
    assert (image_mime, mask_mime) == ("image/png", "image/png")
    shown, shown_mask = images.decode(image_sent), images.decode(mask_sent)
    assert shown.size == shown_mask.size == size and shown_mask.mode == "L"
    if mask_scale == 1:
        assert shown_mask.tobytes() == mask.tobytes()  # the caller's mask, exactly
    else:  # scaled to the image: the same shape
        bbox, asked = shown_mask.getbbox(), mask.getbbox()
        assert bbox is not None and asked is not None
        assert all(abs(a - b * mask_scale) <= 2 for a, b in zip(bbox, asked, strict=True))
    assert images.decode(gemini.sent_images[0]).size == answer.size

    before, _ = stored_revision(catalog, headers, asset_id, 1)
    after, content_type = stored_revision(catalog, headers, asset_id, 2)
    assert (after.format, content_type) == ("PNG", "image/png")  # lossless, so the guarantee survives storage
    assert after.size == before.size == size and after.mode == before.mode
    # Wherever the mask the model was shown (the one composited with) is 0, the bytes are the source's.
    outside = shown_mask.point(lambda v: 255 if v == 0 else 0)
    assert masked(after, outside) == masked(before, outside)
    if source_kind == "cutout":
        assert after.mode == "RGBA" and after.getpixel((5, 5)) == (0, 0, 0, 0)
    # Where the mask is 255 the pixels are the model's (its block covers the middle of the picture).
    inside = after.convert("RGB").getpixel((200, 150))
    assert isinstance(inside, tuple)
    assert max(abs(a - b) for a, b in zip(inside, STUB_BLOCK, strict=True)) <= 3  # JPEG/WebP answers are lossy
    assert after.convert("RGB").getpixel((200, 150)) != before.convert("RGB").getpixel((200, 150))
    revision = revision_doc(stack, client_id, asset_id, 2)
    assert revision["metadata"]["engines"] == ["gemini"] and revision["metadata"]["offline"] is False


# -- scene background -------------------------------------------------------------------------------


def test_scene_background_is_generated_behind_the_untouched_cutout(
    stack: Any, gemini: GeminiStub, edit: Any, catalog: Any, headers: dict[str, str], client_id: str
) -> None:
    """The model sees the product on grey with a mask of the background, at the 1K size class; the
    stored result is opaque, the product's pixels byte-identical, the rest the model's scene."""
    grant(stack, client_id, GRANT)
    source = cutout((400, 300))
    asset_id = new_asset(stack, catalog, headers, client_id, source)
    cost = price(stack, headers, "generate_image", "1K")
    job = submit(edit, headers, asset_id, [{"op": "background", "type": "scene", "prompt": "a marble kitchen counter"}])
    assert [(ln["operation"], ln["variant"], ln["amount"]) for ln in job["quote"]["lines"]] == [
        ("generate_image", "1K", cost)
    ]
    done = run_job(stack, edit, headers, job["id"])
    assert done["items"][0]["status"] == "succeeded", done["items"][0]
    assert done["settlement"]["captured"] == cost

    call = only_call(gemini)
    assert call.generation_config["imageConfig"] == {"aspectRatio": "4:3", "imageSize": "1K"}
    assert any("a marble kitchen counter" in text for text in call.texts)
    (_, image_sent), (_, mask_sent) = call.inline_images
    shown, shown_mask = images.decode(image_sent), images.decode(mask_sent)
    box = subject_box(source.size)
    assert shown.mode == "RGB" and shown.getpixel((5, 5)) == NEUTRAL
    assert shown.crop(box).tobytes() == source.convert("RGB").crop(box).tobytes()
    assert shown_mask.mode == "L" and shown_mask.getpixel((5, 5)) == 255 and shown_mask.getpixel((200, 150)) == 0

    out, content_type = stored_revision(catalog, headers, asset_id, 2)
    assert (out.format, content_type) == ("PNG", "image/png") and out.size == source.size
    assert out.mode == "RGB"  # the scene fills the transparent area
    assert out.crop(box).tobytes() == source.convert("RGB").crop(box).tobytes()  # the product, untouched
    assert out.getpixel((5, 5)) == STUB_FIELD  # the model's scene behind it
    revision = revision_doc(stack, client_id, asset_id, 2)
    (step,) = revision["metadata"]["steps"]
    assert (step["op"], step["engine"], step["size"]) == ("background", "gemini", "1K")
    assert revision["metadata"]["has_alpha"] is False


# -- the model refuses or is busy ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "code"),
    [
        ("image_safety", "content_blocked"),
        ("prompt_blocked", "content_blocked"),
        ("invalid_argument", "generation_failed"),
    ],
)
def test_a_refusal_fails_the_asset_once_refunds_it_and_writes_no_revision(
    stack: Any,
    gemini: GeminiStub,
    edit: Any,
    catalog: Any,
    headers: dict[str, str],
    client_id: str,
    scenario: str,
    code: str,
) -> None:
    grant(stack, client_id, GRANT)
    asset_id = new_asset(stack, catalog, headers, client_id, images.photo((400, 300)))
    gemini.push(scenario)
    job = submit(edit, headers, asset_id, [{"op": "upscale", "size": "2K"}])
    done = run_job(stack, edit, headers, job["id"])
    assert len(gemini.calls) == 1  # permanent: not retried
    (item,) = done["items"]
    assert item["status"] == "failed" and item["failure"]["code"] == code, item
    assert done["settlement"]["captured"] == 0 and done["settlement"]["released"] == job["cost"]
    assert available(stack, client_id) == (GRANT, 0)
    assert revision_numbers(stack, client_id, asset_id) == [1]


def test_rate_limited_then_answered_is_retried_by_the_queue_and_charged_once(
    stack: Any, gemini: GeminiStub, edit: Any, catalog: Any, headers: dict[str, str], client_id: str
) -> None:
    grant(stack, client_id, GRANT)
    asset_id = new_asset(stack, catalog, headers, client_id, images.photo((400, 300)))
    gemini.push("rate_limited", "unavailable")  # then the default: an image
    job = submit(edit, headers, asset_id, [{"op": "upscale", "size": "2K"}])
    done = run_job(stack, edit, headers, job["id"])
    assert [c.status for c in gemini.calls] == [429, 503, 200]
    assert done["items"][0]["status"] == "succeeded" and done["items"][0]["revision"] == 2
    assert done["settlement"]["captured"] == job["cost"] and done["settlement"]["released"] == 0
    assert available(stack, client_id) == (GRANT - job["cost"], 0)
    assert revision_numbers(stack, client_id, asset_id) == [1, 2]


def test_gemini_down_for_every_attempt_gives_up_and_refunds(
    stack: Any, gemini: GeminiStub, edit: Any, catalog: Any, headers: dict[str, str], client_id: str
) -> None:
    grant(stack, client_id, GRANT)
    asset_id = new_asset(stack, catalog, headers, client_id, images.photo((400, 300)))
    attempts = stack.platform.settings.tasks_max_attempts
    gemini.push(*["server_error"] * (attempts + 2))
    job = submit(edit, headers, asset_id, [{"op": "prompt_edit", "prompt": "warmer light"}])
    done = run_job(stack, edit, headers, job["id"])
    assert len(gemini.calls) == attempts
    (item,) = done["items"]
    assert item["status"] == "failed" and item["failure"]["retryable"] is True, item
    assert done["settlement"]["released"] == job["cost"] and available(stack, client_id) == (GRANT, 0)
    assert revision_numbers(stack, client_id, asset_id) == [1]
