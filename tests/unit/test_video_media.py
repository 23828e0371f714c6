"""The video toolkit on clips made in the test (tests/videos.py writes them with PyAV directly): trims
exact to the frame, crop/pad dimensions exact, sound replaced/muted/mixed, joins, poster frames, and the
422 problems bad files get."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from shared.errors import UnprocessableContent
from shared.video import media
from shared.video.media import VideoLimits
from tests.conftest import ROOT
from tests.videos import (
    decoded_audio,
    decoded_frames,
    frame_index,
    make_clip,
    stream_facts,
    wav_tone,
)

np = pytest.importorskip("numpy")


@pytest.fixture(scope="module")
def clip() -> bytes:
    """3 s, 320x180, 24 fps, 72 numbered frames, a 440 Hz tone."""
    return make_clip(seconds=3.0)


@pytest.fixture(scope="module")
def long_clip() -> bytes:
    """6 s: long enough that trims seek instead of decoding from the start."""
    return make_clip(seconds=6.0, audio=True)


def _rms(samples: object) -> float:
    return float(np.sqrt(np.mean(np.square(samples))))


# -- probe --------------------------------------------------------------------------------------------


def test_probe_reads_the_facts_an_asset_records(clip: bytes) -> None:
    info = media.probe(clip)
    assert (info.width, info.height, info.frames) == (320, 180, 72)
    assert info.duration_seconds == pytest.approx(3.0, abs=1e-6)
    assert info.fps == 24.0 and info.frame_rate == (24, 1)
    assert (info.video_codec, info.audio_codec, info.container) == ("h264", "aac", "mp4")
    assert info.has_audio and info.audio_sample_rate == 48_000 and info.audio_channels == 2
    assert info.size_bytes == len(clip)
    assert not info.offline
    assert info.as_metadata() == {
        "kind": "video",
        "duration_seconds": 3.0,
        "width": 320,
        "height": 180,
        "fps": 24.0,
        "video_codec": "h264",
        "audio_codec": "aac",
        "size_bytes": len(clip),
        "offline": False,
    }


def test_probe_accepts_webm_vp9_and_silent_clips() -> None:
    info = media.probe(make_clip(seconds=1.0, codec="libvpx-vp9", container="webm", audio_codec="libopus"))
    assert (info.container, info.video_codec, info.audio_codec) == ("webm", "vp9", "opus")
    assert info.duration_seconds == pytest.approx(1.0, abs=0.05)
    silent = media.probe(make_clip(seconds=1.0, audio=False))
    assert not silent.has_audio and silent.audio_codec is None


def test_probe_reports_the_displayed_size_of_a_rotated_clip() -> None:
    info = media.probe(make_clip(seconds=0.5, rotation=90, audio=False))
    assert (info.width, info.height, info.rotation) == (180, 320, 270)


# -- bad input ----------------------------------------------------------------------------------------


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buffer, "PNG")
    return buffer.getvalue()


def _m4a() -> bytes:
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="ipod") as out:
        stream = out.add_stream("aac", rate=48_000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 2048), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 48_000, 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda: b"", "video_unreadable"),
        (lambda: b"just some text, certainly not a video" * 10, "video_unreadable"),
        (_png, "video_unreadable"),
        (lambda: wav_tone(0.5), "video_unreadable"),
        (_m4a, "video_unreadable"),  # an MP4 container with sound only
        (lambda: make_clip(seconds=1.0)[:-3000], "video_corrupt"),  # index first, media data cut
        (lambda: make_clip(seconds=1.0, faststart=False)[:-200], "video_corrupt"),  # the index itself cut
        (lambda: b"\x00\x00\x00\x18ftypisom" + b"\x00" * 200, "video_corrupt"),  # an MP4 header, nothing else
        (lambda: make_clip(seconds=0.5, codec="mpeg4", audio=False), "video_codec_not_allowed"),
        (lambda: make_clip(seconds=0.5, audio_codec="mp2"), "video_codec_not_allowed"),
    ],
    ids=[
        "empty",
        "text",
        "png",
        "wav",
        "audio-only-mp4",
        "truncated-data",
        "truncated-index",
        "header-only",
        "mpeg4-video",
        "mp2-audio",
    ],
)
def test_bad_files_are_clear_422_problems(make: object, code: str) -> None:
    data = make()  # type: ignore[operator]
    with pytest.raises(UnprocessableContent) as caught:
        media.probe(data)
    assert caught.value.code == code
    assert caught.value.status == 422
    # Every operation checks its input the same way.
    with pytest.raises(UnprocessableContent) as again:
        media.trim(data, 0.0, 0.2)
    assert again.value.code == code


def test_clips_over_the_limits_are_refused(clip: bytes) -> None:
    with pytest.raises(media.VideoTooLong) as long:
        media.probe(clip, VideoLimits(max_seconds=2.0))
    assert long.value.extensions["duration_seconds"] == 3.0
    with pytest.raises(media.VideoTooLarge):
        media.probe(clip, VideoLimits(max_bytes=len(clip) - 1))
    with pytest.raises(media.VideoTooLarge):
        media.probe(clip, VideoLimits(max_side=300))


# -- trim ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "first", "count"),
    [
        (0.5, 2.0, 12, 36),  # on frame boundaries
        (1.01, 2.0, 25, 23),  # starts with the first frame shown at or after 1.01 s (1.0417 s)
        (0.0, 3.0, 0, 72),  # the whole clip
        (2.5, 3.0, 60, 12),  # the tail
    ],
)
def test_trim_is_exact_to_the_frame(clip: bytes, start: float, end: float, first: int, count: int) -> None:
    out = media.trim(clip, start, end)
    frames = decoded_frames(out)
    assert len(frames) == count
    assert [frame_index(f) for f in frames] == list(range(first, first + count))
    facts = stream_facts(out)
    assert facts["video_seconds"] == pytest.approx(count / 24, abs=1e-6)
    assert (facts["video_codec"], facts["pix_fmt"], facts["audio_codec"]) == ("h264", "yuv420p", "aac")
    samples, rate = decoded_audio(out)
    # AAC works in blocks of 1024 samples: the sound ends within one block of the picture.
    assert samples.shape[1] / rate == pytest.approx(count / 24, abs=1024 / 48_000)


def test_trim_late_in_a_longer_clip_seeks_and_stays_exact(long_clip: bytes) -> None:
    out = media.trim(long_clip, 4.0, 5.5)
    assert [frame_index(f) for f in decoded_frames(out)] == list(range(96, 132))
    samples, rate = decoded_audio(out)
    assert samples.shape[1] / rate == pytest.approx(1.5, abs=1024 / 48_000)
    # The tone goes on through the cut (an audio trim that lost its place would start with silence).
    assert _rms(samples[:, 2048:4096]) == pytest.approx(0.2 / np.sqrt(2), rel=0.1)


@pytest.mark.parametrize(("start", "end"), [(1.0, 3.5), (-0.5, 1.0), (2.0, 2.0), (2.0, 1.0), (0.0, 0.01)])
def test_trim_outside_the_clip_is_refused(clip: bytes, start: float, end: float) -> None:
    with pytest.raises(media.VideoRangeInvalid) as caught:
        media.trim(clip, start, end)
    assert caught.value.status == 422 and caught.value.code == "video_range_invalid"


def test_outputs_keep_the_comment_tag() -> None:
    import av

    with av.open(io.BytesIO(make_clip(seconds=1.0))) as container:
        assert "comment" not in container.metadata
    source = media.concat([make_clip(seconds=1.0)])  # no tag in, none out
    assert "comment" not in stream_facts(source)["tags"]
    with media.VideoWriter(64, 64, 24, audio=False, tags={"comment": media.OFFLINE_COMMENT}) as writer:
        for _ in range(24):
            writer.add_rgb(np.zeros((64, 64, 3), dtype=np.uint8))
        tagged = writer.finish()
    assert media.probe(tagged).offline
    assert media.probe(media.trim(tagged, 0.0, 0.5)).offline


# -- reframe ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("aspect", "mode", "size"),
    [
        ("1:1", "crop", (180, 180)),
        ("9:16", "crop", (100, 180)),  # 180 * 9/16 = 101.25, down to an even 100
        ("4:5", "crop", (144, 180)),
        ("16:9", "crop", (320, 180)),
        ("1:1", "pad", (320, 320)),
        ("9:16", "pad", (320, 570)),  # 320 * 16/9 = 568.9, up to an even 570
        ("4:5", "pad", (320, 400)),
        ("16:9", "pad", (320, 180)),
    ],
)
def test_reframe_dimensions_are_exact(clip: bytes, aspect: str, mode: str, size: tuple[int, int]) -> None:
    out = media.reframe(clip, aspect, mode)  # type: ignore[arg-type]
    facts = stream_facts(out)
    assert (facts["width"], facts["height"]) == size
    assert facts["frames"] == 72 and facts["video_seconds"] == pytest.approx(3.0, abs=1e-6)
    assert facts["audio_codec"] == "aac"


def test_crop_keeps_the_centre_and_pad_adds_bars(clip: bytes) -> None:
    cropped = decoded_frames(media.reframe(clip, "1:1", "crop"))[0]
    # The source is red on the left half, blue on the right: a centred square keeps both halves.
    assert cropped[90, 10, 0] > 150 and cropped[90, 10, 2] < 80
    assert cropped[90, 170, 2] > 150 and cropped[90, 170, 0] < 80
    padded = decoded_frames(media.reframe(clip, "9:16", "pad"))[0]
    assert padded[:100].mean() < 20 and padded[-100:].mean() < 20  # black bars above and below
    assert padded[285, 10, 0] > 150  # the picture in the middle


def test_reframe_to_an_exact_deliverable_size(clip: bytes) -> None:
    out = media.reframe(clip, "9:16", "crop", size=(360, 640))
    facts = stream_facts(out)
    assert (facts["width"], facts["height"], facts["frames"]) == (360, 640, 72)
    with pytest.raises(media.VideoRangeInvalid):
        media.reframe(clip, "9:16", "crop", size=(361, 640))
    with pytest.raises(media.VideoRangeInvalid):
        media.reframe(clip, "2:1", "crop")


def test_reframe_turns_a_rotated_clip_upright() -> None:
    rotated = make_clip(seconds=0.5, rotation=90, audio=False)  # stored 320x180, shown 180x320
    out = media.reframe(rotated, "9:16", "crop")
    facts = stream_facts(out)
    assert (facts["width"], facts["height"]) == (180, 320)
    frame = decoded_frames(out)[0]
    # Turned a quarter counter-clockwise: the source's left (red) half is now the bottom half.
    assert frame[300, 90, 0] > 150 and frame[20, 90, 2] > 150


# -- sound --------------------------------------------------------------------------------------------


def test_mute_removes_the_track_and_copies_the_picture(clip: bytes) -> None:
    out = media.set_audio(clip, None)
    facts = stream_facts(out)
    assert facts["audio_codec"] is None
    assert facts["frames"] == 72 and facts["video_seconds"] == pytest.approx(3.0, abs=1e-6)
    assert [frame_index(f) for f in decoded_frames(out)] == list(range(72))


def test_replace_pads_a_short_voiceover_to_the_clip(clip: bytes) -> None:
    out = media.set_audio(clip, wav_tone(1.0, rate=24_000))
    samples, rate = decoded_audio(out)
    assert rate == 48_000
    assert samples.shape[1] / rate == pytest.approx(3.0, abs=1024 / rate)
    assert _rms(samples[:, 4800:43200]) > 0.1  # the voice (24 kHz mono, resampled) in the first second
    assert _rms(samples[:, 60000:140000]) < 1e-3  # then silence: the clip's own tone is gone
    assert stream_facts(out)["frames"] == 72


def test_replace_cuts_a_long_voiceover_at_the_clip_end(clip: bytes) -> None:
    out = media.set_audio(clip, wav_tone(5.0))
    samples, rate = decoded_audio(out)
    assert samples.shape[1] / rate == pytest.approx(3.0, abs=1024 / rate)


def test_mix_keeps_the_clip_sound_under_the_voice(clip: bytes) -> None:
    out = media.set_audio(clip, wav_tone(1.0), original_volume=0.5)
    samples, _ = decoded_audio(out)
    under = _rms(samples[:, 60000:140000])  # after the voice: the clip's tone at half volume
    assert under == pytest.approx(0.1 / np.sqrt(2), rel=0.15)
    assert _rms(samples[:, 4800:43200]) > under * 1.5


def test_a_silent_clip_gets_a_voiceover() -> None:
    silent = make_clip(seconds=2.0, audio=False)
    out = media.set_audio(silent, wav_tone(0.5), original_volume=0.5)
    samples, rate = decoded_audio(out)
    assert samples.shape[1] / rate == pytest.approx(2.0, abs=1024 / rate)


def test_a_replacement_that_is_not_audio_is_refused(clip: bytes) -> None:
    with pytest.raises(UnprocessableContent):
        media.set_audio(clip, b"not audio at all" * 20)


# -- concat -------------------------------------------------------------------------------------------


def test_concat_joins_in_order_with_sound_in_step(clip: bytes) -> None:
    silent = make_clip(seconds=1.0, audio=False)
    tall = make_clip(180, 320, seconds=2.0)
    out = media.concat([clip, silent, tall])
    facts = stream_facts(out)
    assert (facts["width"], facts["height"]) == (320, 180)
    assert facts["frames"] == 72 + 24 + 48 and facts["video_seconds"] == pytest.approx(6.0, abs=1e-6)
    indices = [frame_index(f) for f in decoded_frames(out)]
    assert indices[:72] == list(range(72)) and indices[72:96] == list(range(24))
    samples, rate = decoded_audio(out)
    assert samples.shape[1] / rate == pytest.approx(6.0, abs=1024 / rate)
    assert _rms(samples[:, 3 * rate + 4800 : 4 * rate - 4800]) < 1e-3  # the silent clip's second
    assert _rms(samples[:, 4 * rate + 4800 : 6 * rate - 4800]) > 0.1  # the tall clip's tone


def test_concat_over_the_limit_is_refused(clip: bytes) -> None:
    with pytest.raises(media.VideoTooLong) as caught:
        media.concat([clip, clip], limits=VideoLimits(max_seconds=5.0))
    assert caught.value.extensions["duration_seconds"] == 6.0


# -- poster -------------------------------------------------------------------------------------------


def test_poster_is_the_frame_at_that_time_as_webp(long_clip: bytes) -> None:
    from PIL import Image

    for at, index in ((0.0, 0), (1.5, 36), (4.25, 102)):
        image = Image.open(io.BytesIO(media.poster(long_clip, at)))
        assert image.format == "WEBP" and image.size == (320, 180)
        assert frame_index(np.asarray(image.convert("RGB"))) == index
    thumb = Image.open(io.BytesIO(media.thumbnail(long_clip, max_side=160)))
    assert thumb.format == "WEBP" and thumb.size == (160, 90)
    with pytest.raises(media.VideoRangeInvalid):
        media.poster(long_clip, 6.5)


def test_poster_of_a_rotated_clip_is_upright() -> None:
    from PIL import Image

    image = Image.open(io.BytesIO(media.poster(make_clip(seconds=0.5, rotation=90, audio=False), 0.0)))
    assert image.size == (180, 320)


# -- cold imports -------------------------------------------------------------------------------------


def test_importing_the_video_modules_loads_neither_pyav_nor_numpy() -> None:
    probe = (
        "import sys; import shared.video.media, shared.engines.video, shared.engines.offline_video, "
        "shared.engines.veo; "
        "loaded = [m for m in ('av', 'numpy', 'PIL', 'google.genai', 'httpx') if m in sys.modules]; "
        "print(','.join(loaded))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""
