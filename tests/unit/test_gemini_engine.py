"""The Gemini adapter, run through the real ``google-genai`` SDK against a local stub of the Gemini
Developer API (tests/stubs/gemini.py), and the offline engine.

Nothing here reaches Google: the SDK is pointed at the stub with ``base_url``/``api_version``. The
assertions are on what actually crosses the wire (path, headers, body) and on how every answer the
service can give is translated into the engine port's types.

Decisions these tests pin down:
- The SDK's own retries are off: a 429/500/503 is ONE request, then EngineRetryableError (the
  queue owns retries).
- A 200 whose body is not JSON (a truncated or proxy-mangled answer) is retryable: nothing was
  generated, and the same request may well succeed next time; the queue's attempt cap bounds it.
- A client-side timeout is retryable.
- Safety blocks (prompt or output) and NO_IMAGE are ContentBlocked (permanent, refunded); an image
  model that only talks is EnginePermanentError carrying the model's words.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator

import pytest
from PIL import Image

from shared.engines.base import (
    ContentBlocked,
    EngineImage,
    EnginePermanentError,
    EngineRetryableError,
    ImageRequest,
    InputImage,
    TextRequest,
    output_dimensions,
)
from shared.engines.gemini import GeminiConfig, GeminiEngine
from shared.engines.offline import BACKDROPS, OfflineEngine
from tests.stubs.gemini import (
    IMAGE_MODEL_TEXT,
    REFUSAL_TEXT,
    GeminiStub,
    Scenario,
    decode_b64,
    image_dimensions,
)

API_KEY = "test-key"
TIMEOUT = 0.5

# Environment the SDK reads on its own; none of it may steer these tests (or production).
SDK_ENV = (
    "GOOGLE_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_GENAI_USE_VERTEXAI",
    "GOOGLE_GENAI_USE_ENTERPRISE",
    "GOOGLE_GENAI_API_VERSION",
    "GOOGLE_GEMINI_BASE_URL",
    "GOOGLE_CLOUD_PROJECT",
    "GOOGLE_CLOUD_LOCATION",
)


@pytest.fixture(autouse=True)
def _clean_sdk_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SDK_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def stub() -> Iterator[GeminiStub]:
    with GeminiStub() as running:
        yield running


def make_engine(stub: GeminiStub, **overrides: object) -> GeminiEngine:
    settings: dict[str, object] = {
        "api_key": API_KEY,
        "base_url": stub.url,
        "api_version": "v1beta",
        "timeout_seconds": TIMEOUT,
    }
    settings.update(overrides)
    return GeminiEngine(GeminiConfig(**settings))  # type: ignore[arg-type]


@pytest.fixture
def engine(stub: GeminiStub) -> GeminiEngine:
    return make_engine(stub)


def png_photo(size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (10, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg_photo(size: tuple[int, int] = (80, 60)) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 40).convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def decoded_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.size


# -- text-to-image and image-to-image -------------------------------------------------------------


def test_text_to_image_returns_the_png_the_service_sent(stub: GeminiStub, engine: GeminiEngine) -> None:
    stub.push("image")

    result = engine.generate(ImageRequest(prompt="A ceramic mug on a marble counter"))

    assert isinstance(result, EngineImage)
    assert result.data == stub.sent_images[0]
    assert result.data.startswith(b"\x89PNG\r\n\x1a\n")
    assert decoded_size(result.data) == (1024, 1024)
    assert result.mime_type == "image/png"
    assert result.engine == "gemini"
    assert result.model == "gemini-3.1-flash-image"
    assert result.text == IMAGE_MODEL_TEXT
    assert result.metadata["finish_reason"] == "STOP"
    assert len(stub.calls) == 1


def test_request_wire_format(stub: GeminiStub, engine: GeminiEngine) -> None:
    engine.generate(ImageRequest(prompt="A ceramic mug", aspect_ratio="16:9", size="2K", seed=42))

    call = stub.last
    assert call.method == "POST"
    assert call.path == "/v1beta/models/gemini-3.1-flash-image:generateContent"
    assert call.headers["x-goog-api-key"] == API_KEY
    assert call.headers["content-type"] == "application/json"
    assert "authorization" not in call.headers
    assert call.body == {
        "contents": [{"role": "user", "parts": [{"text": "A ceramic mug"}]}],
        "generationConfig": {
            "responseModalities": ["TEXT", "IMAGE"],
            "imageConfig": {"aspectRatio": "16:9", "imageSize": "2K"},
            "candidateCount": 1,
            "seed": 42,
        },
    }
    assert "seed" in call.wire["generationConfig"]  # camelCase on the wire already


def test_no_seed_is_not_sent(stub: GeminiStub, engine: GeminiEngine) -> None:
    engine.generate(ImageRequest(prompt="A mug"))

    assert "seed" not in stub.last.generation_config
    assert stub.last.inline_images == []


def test_image_to_image_sends_every_photo_then_the_prompt(stub: GeminiStub, engine: GeminiEngine) -> None:
    product = jpeg_photo()
    reference = png_photo()
    request = ImageRequest(
        prompt="Place the product on a beach at sunset",
        negative_prompt="text, watermark",
        images=(InputImage(product, "image/jpeg"), InputImage(reference, "image/png", role="reference")),
    )

    engine.generate(request)

    call = stub.last
    assert call.inline_images == [("image/jpeg", product), ("image/png", reference)]
    wire_parts = call.wire["contents"][0]["parts"]
    for part, original in zip(wire_parts[:2], (product, reference), strict=True):
        # The SDK writes bytes as URL-safe base64 (the service accepts either alphabet).
        sent = part["inlineData"]["data"]
        assert sent in (base64.urlsafe_b64encode(original).decode(), base64.b64encode(original).decode())
        assert decode_b64(sent) == original
    assert call.parts[-1] == {"text": "Place the product on a beach at sunset\n\nAvoid: text, watermark"}
    assert len(call.parts) == 3


@pytest.mark.parametrize(("aspect_ratio", "size"), [("1:1", "1K"), ("16:9", "1K"), ("9:16", "2K"), ("4:5", "1K")])
def test_image_config_is_carried_through(stub: GeminiStub, engine: GeminiEngine, aspect_ratio: str, size: str) -> None:
    result = engine.generate(ImageRequest(prompt="A mug", aspect_ratio=aspect_ratio, size=size))

    assert stub.last.generation_config["imageConfig"] == {"aspectRatio": aspect_ratio, "imageSize": size}
    assert decoded_size(result.data) == image_dimensions(aspect_ratio, size)


def test_image_model_is_configurable(stub: GeminiStub) -> None:
    engine = make_engine(stub, image_model="gemini-3-pro-image")

    result = engine.generate(ImageRequest(prompt="A mug"))

    assert stub.last.model == "gemini-3-pro-image"
    assert stub.last.path == "/v1beta/models/gemini-3-pro-image:generateContent"
    assert result.model == "gemini-3-pro-image"


def test_thought_parts_are_not_the_answer(stub: GeminiStub, engine: GeminiEngine) -> None:
    """A thinking image model may send interim drafts marked ``thought``; the final image is the answer."""
    stub.push(Scenario("image", thought_image=True))

    result = engine.generate(ImageRequest(prompt="A mug"))

    assert result.data == stub.sent_images[0]
    assert result.text == IMAGE_MODEL_TEXT


def test_environment_cannot_switch_the_client_to_vertex(stub: GeminiStub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_GENAI_USE_VERTEXAI", "true")

    make_engine(stub).generate(ImageRequest(prompt="A mug"))

    assert stub.last.path == "/v1beta/models/gemini-3.1-flash-image:generateContent"
    assert stub.last.status == 200


def vertex_engine(stub: GeminiStub, token: str) -> GeminiEngine:
    from google.oauth2.credentials import Credentials

    return GeminiEngine(
        GeminiConfig(
            use_vertex=True,
            project="epox-prod",
            location="europe-west1",
            base_url=stub.url,
            api_version="v1beta1",
            timeout_seconds=TIMEOUT,
            credentials=Credentials(token=token),
        )
    )


def test_vertex_mode_is_chosen_by_configuration_and_uses_the_service_account_token() -> None:
    with GeminiStub(bearer_token="ya29.service-account-token") as vertex:
        result = vertex_engine(vertex, "ya29.service-account-token").generate(
            ImageRequest(prompt="A mug", aspect_ratio="16:9", size="2K")
        )

        assert vertex.last.status == 200
        assert vertex.last.vertex_resource == "projects/epox-prod/locations/europe-west1"
        assert vertex.last.path.endswith("/publishers/google/models/gemini-3.1-flash-image:generateContent")
        assert "x-goog-api-key" not in vertex.last.headers
        assert vertex.last.generation_config["imageConfig"] == {"aspectRatio": "16:9", "imageSize": "2K"}
        assert result.data == vertex.sent_images[0]

        with pytest.raises(EnginePermanentError):
            vertex_engine(vertex, "ya29.revoked").generate(ImageRequest(prompt="A mug"))
        assert vertex.last.status == 401


# -- refusals: permanent ---------------------------------------------------------------------------


def test_blocked_prompt_is_content_blocked(stub: GeminiStub, engine: GeminiEngine) -> None:
    stub.push("prompt_blocked")

    with pytest.raises(ContentBlocked) as caught:
        engine.generate(ImageRequest(prompt="something unsafe"))

    error = caught.value
    assert isinstance(error, EnginePermanentError)
    assert not error.retryable
    assert error.code == "content_blocked"
    assert "prompt was blocked" in error.detail
    assert "SAFETY" in error.detail
    assert error.extensions["block_reason"] == "SAFETY"


@pytest.mark.parametrize(("scenario", "reason"), [("image_safety", "IMAGE_SAFETY"), ("no_image", "NO_IMAGE")])
def test_output_without_image_is_content_blocked(
    stub: GeminiStub, engine: GeminiEngine, scenario: str, reason: str
) -> None:
    stub.push(scenario)

    with pytest.raises(ContentBlocked) as caught:
        engine.generate(ImageRequest(prompt="A mug"))

    assert not caught.value.retryable
    assert reason in caught.value.detail
    assert "without an image" in caught.value.detail
    assert caught.value.extensions["finish_reason"] == reason


def test_text_only_answer_is_permanent_and_says_what_the_model_said(stub: GeminiStub, engine: GeminiEngine) -> None:
    stub.push("text_only")

    with pytest.raises(EnginePermanentError) as caught:
        engine.generate(ImageRequest(prompt="A mug"))

    assert not isinstance(caught.value, ContentBlocked)
    assert not caught.value.retryable
    assert REFUSAL_TEXT in caught.value.detail
    assert caught.value.extensions["finish_reason"] == "STOP"


def test_invalid_argument_is_permanent(stub: GeminiStub, engine: GeminiEngine) -> None:
    stub.push("invalid_argument")

    with pytest.raises(EnginePermanentError) as caught:
        engine.generate(ImageRequest(prompt="A mug"))

    assert not caught.value.retryable
    assert caught.value.extensions["upstream_status"] == 400
    assert len(stub.calls) == 1


def test_wrong_api_key_is_permanent() -> None:
    with GeminiStub(api_key="the-real-key") as stub:
        with pytest.raises(EnginePermanentError) as caught:
            make_engine(stub, api_key="not-it").generate(ImageRequest(prompt="A mug"))

        assert "API key not valid" in caught.value.detail
        assert stub.last.headers["x-goog-api-key"] == "not-it"


# -- transient failures: retryable, and tried once ------------------------------------------------


def test_rate_limit_is_retryable_with_retry_after_and_sent_once(stub: GeminiStub, engine: GeminiEngine) -> None:
    stub.push(Scenario("rate_limited", retry_after="7"), "image")

    with pytest.raises(EngineRetryableError) as caught:
        engine.generate(ImageRequest(prompt="A mug"))

    assert caught.value.retryable
    assert caught.value.retry_after == 7
    assert caught.value.headers["Retry-After"] == "7"
    assert "429" in caught.value.detail
    assert len(stub.calls) == 1
    assert stub.pending == 1  # the SDK did not come back for the image


def test_rate_limit_retry_delay_from_error_details(stub: GeminiStub, engine: GeminiEngine) -> None:
    """The Gemini API says when to come back in a google.rpc.RetryInfo detail, not a header."""
    stub.push(Scenario("rate_limited", retry_after=None, retry_delay="36.5s"))

    with pytest.raises(EngineRetryableError) as caught:
        engine.generate(ImageRequest(prompt="A mug"))

    assert caught.value.retry_after == 37


@pytest.mark.parametrize(("scenario", "status"), [("server_error", 500), ("unavailable", 503)])
def test_server_errors_are_retryable_and_sent_once(
    stub: GeminiStub, engine: GeminiEngine, scenario: str, status: int
) -> None:
    stub.push(scenario, "image")

    with pytest.raises(EngineRetryableError) as caught:
        engine.generate(ImageRequest(prompt="A mug"))

    assert str(status) in caught.value.detail
    assert len(stub.calls) == 1
    assert stub.calls[0].status == status


def test_malformed_answer_is_retryable(stub: GeminiStub, engine: GeminiEngine) -> None:
    stub.push("malformed")

    with pytest.raises(EngineRetryableError) as caught:
        engine.generate(ImageRequest(prompt="A mug"))

    assert "JSONDecodeError" in caught.value.detail
    assert len(stub.calls) == 1


def test_timeout_is_retryable_and_quick(stub: GeminiStub, engine: GeminiEngine) -> None:
    stub.push(Scenario("slow", delay=2.0))
    started = time.monotonic()

    with pytest.raises(EngineRetryableError) as caught:
        engine.generate(ImageRequest(prompt="A mug"))

    assert time.monotonic() - started < 1.8
    assert "Timeout" in caught.value.detail
    assert len(stub.calls) == 1


def test_rate_limited_then_success(stub: GeminiStub, engine: GeminiEngine) -> None:
    stub.push("rate_limited", "image")
    request = ImageRequest(prompt="A mug", seed=3)

    with pytest.raises(EngineRetryableError):
        engine.generate(request)
    result = engine.generate(request)

    assert result.data == stub.sent_images[0]
    assert [call.status for call in stub.calls] == [429, 200]
    assert stub.calls[0].body == stub.calls[1].body


# -- text (prompt enhancement) --------------------------------------------------------------------


def test_complete_text_returns_the_text_and_sends_the_instruction(stub: GeminiStub, engine: GeminiEngine) -> None:
    stub.push(Scenario("text", text="  A bright studio shot of the mug.\n"))

    answer = engine.complete_text(TextRequest(instruction="Rewrite as a photo brief.", prompt="mug on a table"))

    assert answer == "A bright studio shot of the mug."
    call = stub.last
    assert call.path == "/v1beta/models/gemini-3.1-flash-lite:generateContent"
    assert call.headers["x-goog-api-key"] == API_KEY
    assert call.body["systemInstruction"]["parts"] == [{"text": "Rewrite as a photo brief."}]
    assert call.body["contents"] == [{"role": "user", "parts": [{"text": "mug on a table"}]}]
    assert call.generation_config["responseModalities"] == ["TEXT"]
    assert "imageConfig" not in call.generation_config


def test_text_model_is_configurable(stub: GeminiStub) -> None:
    make_engine(stub, text_model="gemini-3-flash").complete_text(TextRequest(instruction="i", prompt="p"))

    assert stub.last.model == "gemini-3-flash"


def test_complete_text_blocked_prompt(stub: GeminiStub, engine: GeminiEngine) -> None:
    stub.push("prompt_blocked")

    with pytest.raises(ContentBlocked):
        engine.complete_text(TextRequest(instruction="i", prompt="p"))


def test_complete_text_rate_limited_is_retryable(stub: GeminiStub, engine: GeminiEngine) -> None:
    stub.push("rate_limited")

    with pytest.raises(EngineRetryableError):
        engine.complete_text(TextRequest(instruction="i", prompt="p"))
    assert len(stub.calls) == 1


# -- the stub itself --------------------------------------------------------------------------------


def test_stub_serves_nothing_else(stub: GeminiStub) -> None:
    import httpx

    assert httpx.get(f"{stub.url}/v1beta/models").status_code == 404
    assert httpx.post(f"{stub.url}/v1beta/models/x:streamGenerateContent", json={}).status_code == 404
    assert httpx.get(f"{stub.url}/v1beta/models/x:generateContent").status_code == 404
    assert stub.calls == []
    assert len(stub.requests) == 3


# -- offline engine ---------------------------------------------------------------------------------


def product_on_white(colour: tuple[int, int, int] = (220, 30, 30)) -> bytes:
    image = Image.new("RGB", (400, 300), (255, 255, 255))
    image.paste(colour, (120, 90, 280, 210))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_offline_is_deterministic() -> None:
    engine = OfflineEngine()
    photo = (InputImage(product_on_white(), "image/png"),)
    request = ImageRequest(prompt="A mug", images=photo, seed=1, style="studio")

    first = engine.generate(request)

    assert engine.generate(request).data == first.data
    assert OfflineEngine().generate(request).data == first.data
    assert engine.generate(ImageRequest(prompt="A mug", images=photo, seed=1, style="luxury")).data != first.data
    assert (
        engine.generate(ImageRequest(prompt="A mug", images=photo, seed=2, style="studio")).metadata != first.metadata
    )
    # Without a product photo the seed shapes the picture itself.
    abstract = engine.generate(ImageRequest(prompt="A mug", seed=1))
    assert engine.generate(ImageRequest(prompt="A mug", seed=1)).data == abstract.data
    assert engine.generate(ImageRequest(prompt="A mug", seed=2)).data != abstract.data
    assert first.engine == "offline"
    assert first.mime_type == "image/png"
    assert first.metadata["offline"] is True


@pytest.mark.parametrize(
    ("aspect_ratio", "size", "expected"),
    [
        ("1:1", "1K", (1024, 1024)),
        ("16:9", "1K", (1024, 576)),
        ("9:16", "1K", (576, 1024)),
        ("4:5", "1K", (819, 1024)),
        ("3:2", "4K", (4096, 2731)),
    ],
)
def test_offline_dimensions(aspect_ratio: str, size: str, expected: tuple[int, int]) -> None:
    result = OfflineEngine().generate(ImageRequest(prompt="A mug", aspect_ratio=aspect_ratio, size=size))

    assert decoded_size(result.data) == expected == output_dimensions(aspect_ratio, size)
    assert result.metadata["offline"] is True
    assert tuple(result.metadata["size"]) == expected


def test_offline_cuts_the_product_out_of_a_white_background() -> None:
    red = (220, 30, 30)
    result = OfflineEngine().generate(
        ImageRequest(prompt="A red box", style="luxury", images=(InputImage(product_on_white(red), "image/png"),))
    )

    with Image.open(io.BytesIO(result.data)) as opened:
        image = opened.convert("RGB")
    width, height = image.size
    top, _bottom = BACKDROPS["luxury"]

    def near(actual: tuple[int, ...], wanted: tuple[int, ...], tolerance: int = 4) -> bool:
        return all(abs(a - b) <= tolerance for a, b in zip(actual, wanted, strict=True))

    assert near(image.getpixel((width // 2, height // 2)), red)
    assert near(image.getpixel((0, 0)), top)
    # The photo's white surround is gone: on the dark backdrop, nothing is near-white.
    assert image.convert("L").point(lambda v: 255 if v > 240 else 0).getbbox() is None


def test_a_programming_or_configuration_error_is_not_retried() -> None:
    """Only transport failures and unreadable answers are 'busy, try again'; a bug surfaces as itself."""
    from shared.engines.base import ImageRequest
    from shared.engines.gemini import GeminiConfig, GeminiEngine

    engine = GeminiEngine(GeminiConfig(api_key="k", base_url="http://127.0.0.1:9", api_version="v1beta"))

    def broken() -> None:
        raise KeyError("a bug, not an outage")

    with pytest.raises(KeyError):
        engine._call(broken)
    assert isinstance(ImageRequest(prompt="x"), ImageRequest)
