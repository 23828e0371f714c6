"""The Veo and Gemini TTS adapters on the real ``google-genai`` SDK in Vertex mode, against the local stub
of Vertex AI's ``:predictLongRunning`` / ``:fetchPredictOperation`` / ``:generateContent`` and the GCS
JSON API (tests/stubs/veo.py). What the SDK sent is read from the stub's records of the HTTP requests."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator

import pytest
from google.oauth2.credentials import Credentials

from shared.engines.base import ContentBlocked, EnginePermanentError, EngineRetryableError, InputImage
from shared.engines.veo import GeminiSpeechEngine, VeoConfig, VeoEngine, veo_engines
from shared.engines.video import (
    VEO_QUALITY_MODEL,
    VideoFiltered,
    VideoOperation,
    VideoOutputTooLarge,
    VideoRequest,
    VideoResult,
)
from shared.video import media
from tests.images import jpeg, png_with_alpha
from tests.stubs.gemini import decode_b64
from tests.stubs.veo import STUB_TOKEN, VeoStub, VideoScenario

PROJECT, LOCATION = "epox-test", "us-central1"
MODEL_PATH = f"/v1beta1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models"


@pytest.fixture
def stub(clean_gemini_env: None) -> Iterator[VeoStub]:
    with VeoStub(bearer_token=STUB_TOKEN) as running:
        yield running


def _config(stub: VeoStub, **changes: object) -> VeoConfig:
    config = VeoConfig(
        project=PROJECT,
        location=LOCATION,
        base_url=stub.url,
        storage_base_url=stub.url,
        credentials=Credentials(token=STUB_TOKEN),
    )
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def _engines(stub: VeoStub, **changes: object) -> tuple[VeoEngine, GeminiSpeechEngine]:
    return veo_engines(_config(stub, **changes))


PRODUCT = png_with_alpha((300, 200))


def _request(**changes: object) -> VideoRequest:
    fields: dict[str, object] = {
        "prompt": "the mug turns on a marble counter",
        "image": InputImage(PRODUCT, "image/png"),
    }
    fields.update(changes)
    return VideoRequest(**fields)  # type: ignore[arg-type]


# -- the happy paths ----------------------------------------------------------------------------------


def test_a_video_after_several_polls_comes_inline(stub: VeoStub) -> None:
    veo, _ = _engines(stub)
    stub.push(VideoScenario(polls=3))
    operation = veo.start(_request(duration_seconds=4))
    assert operation.engine == "veo" and operation.model == "veo-3.1-fast-generate-001"
    assert operation.name.startswith(f"projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/")
    restored = VideoOperation.from_payload(operation.to_payload())  # what a follow-up task holds
    states = [veo.poll(restored).state for _ in range(3)]
    assert states == ["pending"] * 3
    final = veo.poll(restored)
    assert final.state == "done" and final.result is not None and final.result.data is not None
    data = veo.fetch(final.result)
    assert data == stub.clip("16:9", 4, True)
    info = media.probe(data)
    assert (info.duration_seconds, info.width, info.height, info.has_audio) == (4.0, 128, 72, True)
    polls = stub.calls_to("fetchPredictOperation")
    assert len(polls) == 4
    assert {r.path for r in polls} == {f"{MODEL_PATH}/veo-3.1-fast-generate-001:fetchPredictOperation"}
    assert all(r.wire == {"operationName": operation.name} for r in polls)
    assert all(r.headers["authorization"] == f"Bearer {STUB_TOKEN}" for r in stub.requests)


def test_the_request_on_the_wire(stub: VeoStub) -> None:
    veo, _ = _engines(stub)
    last = jpeg((64, 48))
    veo.start(
        _request(
            aspect_ratio="9:16",
            resolution="1080p",
            duration_seconds=6,
            audio=False,
            negative_prompt="blurry, text",
            seed=42,
            last_frame=InputImage(last, "image/jpeg"),
        )
    )
    (call,) = stub.calls_to("predictLongRunning")
    assert call.path == f"{MODEL_PATH}/veo-3.1-fast-generate-001:predictLongRunning"
    assert call.status == 200
    (instance,) = call.wire["instances"]
    assert instance["prompt"] == "the mug turns on a marble counter"
    assert instance["image"]["mimeType"] == "image/png"
    assert decode_b64(instance["image"]["bytesBase64Encoded"]) == PRODUCT
    assert instance["lastFrame"]["mimeType"] == "image/jpeg"
    assert decode_b64(instance["lastFrame"]["bytesBase64Encoded"]) == last
    assert call.wire["parameters"] == {
        "sampleCount": 1,
        "durationSeconds": 6,
        "aspectRatio": "9:16",
        "resolution": "1080p",
        "generateAudio": False,
        "negativePrompt": "blurry, text",
        "seed": 42,
    }


def test_reference_images_and_the_quality_model(stub: VeoStub) -> None:
    veo, _ = _engines(stub)
    references = (InputImage(PRODUCT, "image/png"), InputImage(jpeg((40, 40)), "image/jpeg"))
    operation = veo.start(_request(image=None, reference_images=references, model=VEO_QUALITY_MODEL))
    assert operation.model == VEO_QUALITY_MODEL
    (call,) = stub.calls_to("predictLongRunning")
    assert call.path == f"{MODEL_PATH}/{VEO_QUALITY_MODEL}:predictLongRunning"
    (instance,) = call.wire["instances"]
    assert "image" not in instance
    assert [r["referenceType"] for r in instance["referenceImages"]] == ["ASSET", "ASSET"]
    assert [decode_b64(r["image"]["bytesBase64Encoded"]) for r in instance["referenceImages"]] == [
        image.data for image in references
    ]
    assert veo.poll(operation).state == "done"


def test_a_video_written_to_cloud_storage_is_downloaded(stub: VeoStub) -> None:
    veo, _ = _engines(stub, output_gcs_uri="gs://epox-veo/renders")
    operation = veo.start(_request(duration_seconds=8, aspect_ratio="9:16"))
    assert stub.calls_to("predictLongRunning")[0].wire["parameters"]["storageUri"] == "gs://epox-veo/renders"
    poll = veo.poll(operation)
    assert poll.state == "done" and poll.result is not None and poll.result.data is None
    op_id = operation.name.rsplit("/", 1)[-1]
    assert poll.result.gcs_uri == f"gs://epox-veo/renders/{op_id}/sample_0.mp4"
    data = veo.fetch(poll.result)
    assert data == stub.clip("9:16", 8, True)
    (download,) = stub.calls_to("gcs")
    assert download.method == "GET"
    assert download.path == f"/storage/v1/b/epox-veo/o/renders%2F{op_id}%2Fsample_0.mp4?alt=media"
    assert download.headers["authorization"] == f"Bearer {STUB_TOKEN}"
    assert (media.probe(data).width, media.probe(data).height) == (72, 128)


# -- outcomes without a video -------------------------------------------------------------------------


def test_filtered_output_is_a_filtered_poll_with_the_reasons(stub: VeoStub) -> None:
    veo, _ = _engines(stub)
    stub.push(VideoScenario("filtered", polls=1, reasons=("Unsafe image. Support codes: 58061214",), filtered_count=1))
    operation = veo.start(_request())
    assert veo.poll(operation).state == "pending"
    poll = veo.poll(operation)
    assert (poll.state, poll.filtered_count, poll.filtered_reasons) == (
        "filtered",
        1,
        ("Unsafe image. Support codes: 58061214",),
    )
    with pytest.raises(VideoFiltered) as caught:
        poll.raise_for_outcome()
    assert caught.value.status == 422 and "58061214" in caught.value.detail


@pytest.mark.parametrize(("code", "restartable"), [(13, True), (8, True), (3, False)])
def test_an_operation_that_ends_in_error_is_a_failed_poll(stub: VeoStub, code: int, restartable: bool) -> None:
    veo, _ = _engines(stub)
    stub.push(VideoScenario("op_error", error_code=code, message="the render failed"))
    poll = veo.poll(veo.start(_request()))
    assert poll.state == "failed" and poll.restartable is restartable
    assert poll.error is not None and "the render failed" in poll.error


# -- vendor errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "retry_after"),
    [(VideoScenario("rate_limited", retry_after="37"), 37), (VideoScenario("server_error"), 10), ("unavailable", 10)],
)
def test_busy_or_failing_starts_are_retryable(stub: VeoStub, scenario: object, retry_after: int) -> None:
    veo, _ = _engines(stub)
    stub.push(scenario)
    with pytest.raises(EngineRetryableError) as caught:
        veo.start(_request())
    assert caught.value.retry_after == retry_after and caught.value.headers["Retry-After"] == str(retry_after)
    assert not stub.operations  # nothing was started


@pytest.mark.parametrize("scenario", ["invalid_argument", "permission_denied"])
def test_refused_starts_are_permanent(stub: VeoStub, scenario: str) -> None:
    veo, _ = _engines(stub)
    stub.push(scenario)
    with pytest.raises(EnginePermanentError) as caught:
        veo.start(_request())
    assert caught.value.extensions["upstream_status"] in (400, 403)


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"duration_seconds": 5}, "durationSeconds must be 4, 6 or 8"),
        ({"aspect_ratio": "1:1"}, "Unsupported aspect ratio"),
        ({"resolution": "480p"}, "Unsupported resolution"),
    ],
)
def test_parameters_the_service_refuses_are_permanent(
    stub: VeoStub, changes: dict[str, object], complaint: str
) -> None:
    """Our request model refuses these before the call; built around it, the service's 400 is permanent."""
    veo, _ = _engines(stub)
    request = _request().model_copy(update=changes)
    with pytest.raises(EnginePermanentError) as caught:
        veo.start(request)
    assert caught.value.extensions["upstream_status"] == 400 and complaint in caught.value.detail


def test_a_poll_that_hits_a_rate_limit_is_retried_later(stub: VeoStub) -> None:
    veo, _ = _engines(stub)
    operation = veo.start(_request())
    stub.push_poll(VideoScenario("rate_limited", retry_after="12"), "server_error")
    with pytest.raises(EngineRetryableError) as first:
        veo.poll(operation)
    assert first.value.retry_after == 12
    with pytest.raises(EngineRetryableError):
        veo.poll(operation)
    assert veo.poll(operation).state == "done"  # the operation went on regardless


def test_unknown_operations_and_bad_credentials_are_permanent(stub: VeoStub) -> None:
    veo, _ = _engines(stub)
    operation = veo.start(_request())
    ghost = operation.model_copy(update={"name": operation.name.rsplit("/", 1)[0] + "/0000"})
    with pytest.raises(EnginePermanentError) as missing:
        veo.poll(ghost)
    assert missing.value.extensions["upstream_status"] == 404
    wrong, _ = _engines(stub, credentials=Credentials(token="someone-else"))
    with pytest.raises(EnginePermanentError) as refused:
        wrong.poll(operation)
    assert refused.value.extensions["upstream_status"] == 401
    with pytest.raises(EnginePermanentError):
        veo.poll(VideoOperation(name="offline/operations/1", engine="offline", model="offline-pan-zoom-1"))


def test_an_unreachable_service_is_retryable(stub: VeoStub) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    veo, _ = _engines(stub, base_url=closed, timeout_seconds=2.0)
    with pytest.raises(EngineRetryableError):
        veo.start(_request())


@pytest.mark.parametrize(
    ("fault", "error", "status"),
    [
        (VideoScenario("rate_limited", retry_after="9"), EngineRetryableError, None),
        ("server_error", EngineRetryableError, None),
        ("permission_denied", EnginePermanentError, 403),
    ],
)
def test_download_failures_are_translated(
    stub: VeoStub, fault: object, error: type[Exception], status: int | None
) -> None:
    veo, _ = _engines(stub, output_gcs_uri="gs://epox-veo/renders")
    poll = veo.poll(veo.start(_request()))
    assert poll.result is not None
    stub.push_download(fault)
    with pytest.raises(error) as caught:
        veo.fetch(poll.result)
    if isinstance(caught.value, EngineRetryableError) and isinstance(fault, VideoScenario):
        assert caught.value.retry_after == 9
    if status is not None:
        assert caught.value.extensions["upstream_status"] == status  # type: ignore[attr-defined]
    assert veo.fetch(poll.result) == stub.clip("16:9", 8, True)  # the next attempt gets it


def test_downloads_are_capped_and_missing_objects_are_permanent(stub: VeoStub) -> None:
    veo, _ = _engines(stub, output_gcs_uri="gs://epox-veo/renders", max_video_bytes=10_000)
    poll = veo.poll(veo.start(_request()))
    assert poll.result is not None
    with pytest.raises(VideoOutputTooLarge):
        veo.fetch(poll.result)
    with pytest.raises(VideoOutputTooLarge):
        veo.fetch(VideoResult(data=b"x" * 10_001))
    with pytest.raises(EnginePermanentError) as missing:
        veo.fetch(VideoResult(gcs_uri="gs://epox-veo/renders/nothing-here.mp4"))
    assert missing.value.extensions["upstream_status"] == 404
    with pytest.raises(EnginePermanentError):
        veo.fetch(VideoResult(gcs_uri="https://example.com/clip.mp4"))


# -- speech -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("answer", ["wav", "pcm"])
def test_speech_comes_back_as_wav_whatever_the_model_answers(stub: VeoStub, answer: str) -> None:
    _, tts = _engines(stub)
    stub.push_speech(answer)
    clip = tts.speak("Meet the mug that keeps your coffee hot.", "Puck")
    assert clip.mime_type == "audio/wav" and clip.data[:4] == b"RIFF"
    assert (clip.sample_rate, clip.channels) == (24_000, 1)
    assert clip.duration_seconds == pytest.approx(0.06 * 40, abs=0.01)
    (call,) = stub.calls_to("generateContent")
    assert (
        call.path
        == f"/v1beta1/projects/{PROJECT}/locations/global/publishers/google/models/gemini-3.8-flash-tts:generateContent"
    )
    assert call.body["generationConfig"]["responseModalities"] == ["AUDIO"]
    assert call.body["generationConfig"]["speechConfig"]["voiceConfig"]["prebuiltVoiceConfig"]["voiceName"] == "Puck"
    assert call.texts == ["Meet the mug that keeps your coffee hot."]
    # The stub really answered in the format under test (the adapter took that branch).
    part = json.loads(call.response)["candidates"][0]["content"]["parts"][0]["inlineData"]
    assert part["mimeType"] == {"wav": "audio/wav", "pcm": "audio/L16;codec=pcm;rate=24000"}[answer]
    assert (base64.b64decode(part["data"])[:4] == b"RIFF") is (answer == "wav")


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ("prompt_blocked", ContentBlocked),
        ("no_audio", ContentBlocked),
        ("rate_limited", EngineRetryableError),
        ("server_error", EngineRetryableError),
    ],
)
def test_speech_failures_are_translated(stub: VeoStub, answer: str, error: type[Exception]) -> None:
    _, tts = _engines(stub)
    stub.push_speech(answer)
    with pytest.raises(error):
        tts.speak("Meet the mug.")
    assert (
        stub.calls_to("generateContent")[0].body["generationConfig"]["speechConfig"]["voiceConfig"][
            "prebuiltVoiceConfig"
        ]["voiceName"]
        == "Kore"
    )  # the configured default voice
