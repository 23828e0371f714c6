"""The offline video and speech engines, and the port's value types: deterministic clips of the requested
shape marked offline, operations that survive a task payload, pending/filtered polls, WAV/PCM speech."""

from __future__ import annotations

import io
import json
import wave

import pytest
from pydantic import ValidationError

from shared.engines.base import EnginePermanentError, InputImage
from shared.engines.offline_video import (
    OFFLINE_FILTER_MARKER,
    OfflineSpeechEngine,
    OfflineVideoEngine,
)
from shared.engines.video import (
    VideoFiltered,
    VideoGenerationFailed,
    VideoOperation,
    VideoPoll,
    VideoRequest,
    VideoResult,
    audio_clip_from,
    poll_delay_seconds,
    video_dimensions,
    wav_bytes,
)
from shared.video import media
from tests.images import jpeg, png_with_alpha
from tests.videos import stream_facts


def _request(**changes: object) -> VideoRequest:
    fields: dict[str, object] = {
        "prompt": "the mug turns slowly on a marble counter",
        "image": InputImage(png_with_alpha((400, 300)), "image/png"),
        "aspect_ratio": "9:16",
        "resolution": "720p",
        "duration_seconds": 4,
        "seed": 7,
    }
    fields.update(changes)
    return VideoRequest(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def rendered() -> tuple[VideoOperation, bytes]:
    engine = OfflineVideoEngine()
    operation = engine.start(_request())
    poll = engine.poll(operation)
    assert poll.state == "done" and poll.result is not None
    return operation, engine.fetch(poll.result)


def test_the_clip_has_the_requested_shape_and_is_marked_offline(rendered: tuple[VideoOperation, bytes]) -> None:
    _, data = rendered
    info = media.probe(data)
    assert (info.width, info.height) == (720, 1280)
    assert info.duration_seconds == pytest.approx(4.0, abs=1e-6) and info.frames == 96 and info.fps == 24
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert info.offline and info.as_metadata()["offline"] is True
    assert stream_facts(data)["pix_fmt"] == "yuv420p"


def test_the_same_request_gives_the_same_bytes_in_another_process(rendered: tuple[VideoOperation, bytes]) -> None:
    operation, data = rendered
    # What a follow-up task sees: the operation through JSON, polled by another engine instance.
    payload = json.dumps(operation.to_payload())
    assert len(payload) < 40_000
    again = OfflineVideoEngine().poll(VideoOperation.from_payload(json.loads(payload)))
    assert again.result is not None and again.result.data == data
    assert OfflineVideoEngine().start(_request()) == operation


def test_a_different_request_gives_a_different_clip(rendered: tuple[VideoOperation, bytes]) -> None:
    operation, data = rendered
    other = OfflineVideoEngine().start(_request(seed=8, audio=False, aspect_ratio="16:9"))
    assert other.name != operation.name
    poll = OfflineVideoEngine().poll(other)
    assert poll.result is not None and poll.result.data != data
    info = media.probe(poll.result.data)
    assert (info.width, info.height, info.has_audio) == (1280, 720, False)


def test_a_busy_photo_still_fits_a_task_payload() -> None:
    operation = OfflineVideoEngine().start(_request(image=InputImage(jpeg((2000, 1500)), "image/jpeg")))
    assert len(json.dumps(operation.to_payload())) < 40_000


def test_polls_are_pending_the_configured_number_of_times() -> None:
    engine = OfflineVideoEngine(pending_polls=2)
    operation = engine.start(_request(prompt=f"a mug {OFFLINE_FILTER_MARKER}"))
    first, second = engine.poll(operation), engine.poll(operation)
    assert (first.state, second.state) == ("pending", "pending")
    assert first.progress is not None and second.progress is not None and first.progress < second.progress
    final = engine.poll(operation)
    assert final.state == "filtered" and final.filtered_count == 1
    with pytest.raises(VideoFiltered) as caught:
        final.raise_for_outcome()
    assert caught.value.code == "video_filtered" and caught.value.status == 422
    assert caught.value.extensions["reasons"] == list(final.filtered_reasons)


def test_the_offline_engine_refuses_what_is_not_its_own() -> None:
    engine = OfflineVideoEngine()
    with pytest.raises(EnginePermanentError):
        engine.poll(VideoOperation(name="projects/p/operations/1", engine="veo", model="veo-3.1-fast-generate-001"))
    with pytest.raises(EnginePermanentError):
        engine.fetch(VideoResult(gcs_uri="gs://bucket/clip.mp4"))


# -- the port's value types ---------------------------------------------------------------------------


def test_video_dimensions() -> None:
    assert video_dimensions("16:9", "720p") == (1280, 720)
    assert video_dimensions("9:16", "1080p") == (1080, 1920)


@pytest.mark.parametrize(
    "changes",
    [
        {"prompt": "", "image": None},  # nothing to go on
        {"last_frame": InputImage(b"x", "image/png"), "image": None},  # a last frame needs a first
        {"image": None, "reference_images": (InputImage(b"x", "image/png"),) * 4, "duration_seconds": 8},
        {"reference_images": (InputImage(b"x", "image/png"),), "duration_seconds": 8},  # with image
        {"image": None, "reference_images": (InputImage(b"x", "image/png"),)},  # 4 s with references
        {"duration_seconds": 5},
        {"aspect_ratio": "1:1"},
        {"resolution": "4k"},
        {"seed": -1},
    ],
)
def test_video_requests_the_model_would_refuse_are_invalid(changes: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        _request(**changes)


def test_a_result_is_bytes_or_a_uri_never_both() -> None:
    with pytest.raises(ValueError):
        VideoResult()
    with pytest.raises(ValueError):
        VideoResult(data=b"x", gcs_uri="gs://b/o")


def test_failed_polls_raise_the_generation_failure() -> None:
    with pytest.raises(VideoGenerationFailed) as caught:
        VideoPoll.failed("the service failed inside", restartable=True).raise_for_outcome()
    assert caught.value.extensions == {"restartable": True}
    VideoPoll.pending().raise_for_outcome()  # nothing to raise
    VideoPoll.done(VideoResult(data=b"x")).raise_for_outcome()


def test_poll_delays_back_off_and_are_capped() -> None:
    delays = [poll_delay_seconds(n) for n in range(12)]
    assert delays[0] >= 15 and max(delays) == 60 and delays[-1] == 60
    assert sum(delays) < 20 * 60


# -- speech -------------------------------------------------------------------------------------------


def test_offline_speech_is_a_deterministic_wav_as_long_as_the_text() -> None:
    engine = OfflineSpeechEngine()
    short = engine.speak("A mug.", "Kore")
    long = engine.speak("A mug, glazed by hand, that keeps your coffee hot for an hour.", "Kore")
    assert short.duration_seconds < long.duration_seconds
    assert engine.speak("A mug.", "Kore") == short
    assert engine.speak("A mug.", "Puck").data != short.data
    with wave.open(io.BytesIO(long.data)) as reader:
        assert (reader.getframerate(), reader.getnchannels(), reader.getsampwidth()) == (24_000, 1, 2)
        assert reader.getnframes() / 24_000 == pytest.approx(long.duration_seconds)
    with pytest.raises(EnginePermanentError):
        engine.speak("   ")


def test_raw_pcm_is_wrapped_in_a_wav_header() -> None:
    pcm = b"\x01\x00\xff\x7f" * 12_000  # 24 000 samples of 16-bit mono
    clip = audio_clip_from(pcm, "audio/L16;codec=pcm;rate=24000")
    assert (clip.sample_rate, clip.channels, clip.duration_seconds, clip.mime_type) == (24_000, 1, 1.0, "audio/wav")
    with wave.open(io.BytesIO(clip.data)) as reader:
        assert reader.readframes(reader.getnframes()) == pcm
    odd = audio_clip_from(pcm + b"\x01", "audio/pcm;rate=16000")  # a stray byte is dropped
    assert (odd.sample_rate, odd.duration_seconds) == (16_000, 1.5)


def test_a_wav_answer_is_kept_and_checked() -> None:
    data = wav_bytes(b"\x00\x00" * 48_000, 48_000)
    clip = audio_clip_from(data, "audio/wav")
    assert clip.data == data and clip.duration_seconds == 1.0 and clip.sample_rate == 48_000
    with pytest.raises(EnginePermanentError):
        audio_clip_from(b"RIFF\x00\x00\x00\x00WAVEjunk", "audio/wav")
    with pytest.raises(EnginePermanentError):
        audio_clip_from(b"ID3...", "audio/mpeg")
