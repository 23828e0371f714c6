"""The video toolkit: read a clip's facts, trim it, reframe it to another aspect, replace or mute its
sound, join clips, take a poster frame. PyAV (FFmpeg inside its wheels; never a system ffmpeg) does the
work; it and numpy are imported inside the functions, so only the video worker ever loads them.

Every function takes and returns bytes. Frames are streamed through FFmpeg filter graphs (trim, fps,
crop, pad, scale) and encoded as they come — a clip is never decoded into memory as a whole; the output
goes to a temporary file (the MP4 muxer's ``faststart`` pass rewrites it by name) and is read back once.
What comes out is always an MP4 of H.264 (yuv420p, even dimensions) and, when there is sound, AAC
stereo at 48 kHz. Output keeps the input's ``comment`` tag (the offline engine's mark survives edits).

A file we cannot use is a 422 problem with a stable code (:data:`VIDEO_ERRORS`): not a video at all or
empty (``video_unreadable``), a video whose data is cut short or damaged (``video_corrupt``), a codec we
do not take (``video_codec_not_allowed``), too long (``video_too_long``), too big (``video_too_large``),
or an edit outside the clip (``video_range_invalid``).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import struct
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Final, Literal

from shared.errors import UnprocessableContent

if TYPE_CHECKING:
    import numpy as np
    from av.container import InputContainer
    from av.packet import Packet
    from av.video.frame import VideoFrame

# ---------------------------------------------------------------------------------
# Errors


class InvalidVideo(UnprocessableContent):
    code = "invalid_video"
    title = "The file is not a usable video"


class VideoUnreadable(InvalidVideo):
    """Empty, not a video container we know, or a container without a video track."""

    code = "video_unreadable"
    title = "The file is not a readable video"


class VideoCorrupt(InvalidVideo):
    """Recognisably a video, but its data is cut short or damaged."""

    code = "video_corrupt"
    title = "The video data is truncated or corrupt"


class VideoCodecNotAllowed(InvalidVideo):
    code = "video_codec_not_allowed"
    title = "This video or audio codec is not accepted"


class VideoTooLong(InvalidVideo):
    code = "video_too_long"
    title = "The video is longer than allowed"


class VideoTooLarge(InvalidVideo):
    code = "video_too_large"
    title = "The video is too large"


class VideoRangeInvalid(InvalidVideo):
    """A trim, poster time or other edit that falls outside the clip."""

    code = "video_range_invalid"
    title = "The requested time range is outside the video"


VIDEO_ERRORS: Final = (
    VideoUnreadable,
    VideoCorrupt,
    VideoCodecNotAllowed,
    VideoTooLong,
    VideoTooLarge,
    VideoRangeInvalid,
)

# ---------------------------------------------------------------------------------
# Value types

AUDIO_RATE: Final = 48_000
OFFLINE_COMMENT: Final = "epox offline video engine"
# Deliverable aspects; crop or pad to these.
REFRAME_ASPECTS: Final[dict[str, tuple[int, int]]] = {"1:1": (1, 1), "4:5": (4, 5), "9:16": (9, 16), "16:9": (16, 9)}
ReframeMode = Literal["crop", "pad"]

_MP4_BRANDS: Final = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot")
_EBML: Final = b"\x1a\x45\xdf\xa3"  # WebM / Matroska
_CARRIED_TAGS: Final = ("comment", "title")


@dataclass(frozen=True, slots=True)
class VideoLimits:
    """What an input clip may be. Codecs are FFmpeg's names."""

    max_bytes: int = 300 * 1024 * 1024
    max_seconds: float = 30.0
    max_side: int = 4096
    video_codecs: frozenset[str] = frozenset({"h264", "hevc", "vp8", "vp9", "av1"})
    audio_codecs: frozenset[str] = frozenset({"aac", "mp3", "opus", "vorbis", "alac", "flac", "pcm_s16le"})


DEFAULT_LIMITS: Final = VideoLimits()


@dataclass(frozen=True, slots=True)
class VideoInfo:
    """The facts of a clip (what a video asset records). ``width``/``height`` are as displayed, after
    the rotation the file asks for; ``frame_rate`` is exact, ``fps`` its float."""

    duration_seconds: float
    width: int
    height: int
    fps: float
    frames: int
    video_codec: str
    audio_codec: str | None
    size_bytes: int
    container: str  # "mp4" (MP4/MOV) or "webm" (WebM/Matroska)
    frame_rate: tuple[int, int] = (24, 1)
    rotation: int = 0  # clockwise degrees the frames must be turned to display them
    audio_sample_rate: int | None = None
    audio_channels: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    pixel_format: str | None = None  # FFmpeg's name, e.g. yuv420p

    @property
    def has_audio(self) -> bool:
        return self.audio_codec is not None

    @property
    def offline(self) -> bool:
        """Made by the offline engine (a stand-in, not a model's video)."""
        return OFFLINE_COMMENT in self.tags.get("comment", "")

    def as_metadata(self) -> dict[str, Any]:
        """The fields a video asset stores."""
        return {
            "kind": "video",
            "duration_seconds": round(self.duration_seconds, 3),
            "width": self.width,
            "height": self.height,
            "fps": round(self.fps, 3),
            "video_codec": self.video_codec,
            "audio_codec": self.audio_codec,
            "size_bytes": self.size_bytes,
            "offline": self.offline,
        }


@dataclass(frozen=True, slots=True)
class EncodeSettings:
    """x264/AAC settings of every output. ``threads`` 0 lets x264 choose (fixed for reproducible bytes)."""

    crf: int = 20
    preset: str = "veryfast"
    audio_bit_rate: int = 128_000
    threads: int = 0
    keyframe_seconds: float = 2.0


DEFAULT_ENCODE: Final = EncodeSettings()

# ---------------------------------------------------------------------------------
# Probe


def probe(data: bytes, limits: VideoLimits = DEFAULT_LIMITS) -> VideoInfo:
    """Read and check a clip: container, codecs, duration, size. Reads every packet (cheap: no decoding
    beyond the first frame), so a file cut short is caught here rather than halfway through an edit."""
    import av

    if not data:
        raise VideoUnreadable("The file is empty")
    if len(data) > limits.max_bytes:
        raise VideoTooLarge(
            f"The video is {len(data)} bytes; at most {limits.max_bytes} are accepted", max_bytes=limits.max_bytes
        )
    kind = _sniff(data)
    if kind is None:
        raise VideoUnreadable("The file is not a video (MP4, MOV or WebM expected)")
    if kind == "mp4":
        _check_mp4_boxes(data)
    with _open(data) as container:
        if not container.streams.video:
            raise VideoUnreadable("The file has no video track")
        vstream = container.streams.video[0]
        astream = container.streams.audio[0] if container.streams.audio else None
        video_codec = vstream.codec_context.name
        pixel_format = vstream.codec_context.pix_fmt
        if video_codec not in limits.video_codecs:
            raise VideoCodecNotAllowed(
                f"Video codec {video_codec!r} is not accepted ({', '.join(sorted(limits.video_codecs))})",
                codec=video_codec,
            )
        audio_codec = astream.codec_context.name if astream is not None else None
        if audio_codec is not None and audio_codec not in limits.audio_codecs:
            raise VideoCodecNotAllowed(f"Audio codec {audio_codec!r} is not accepted", codec=audio_codec)
        width, height = vstream.codec_context.width, vstream.codec_context.height
        if width <= 0 or height <= 0:
            raise VideoCorrupt("The video track has no picture size")
        rate = vstream.average_rate or vstream.guessed_rate or Fraction(24)
        tb = vstream.time_base or Fraction(1, 90_000)
        first_pts: int | None = None
        last_end: int | None = None
        packets = 0
        try:
            for packet in container.demux(vstream):
                if packet.size == 0 or packet.pts is None:
                    continue
                packets += 1
                first_pts = packet.pts if first_pts is None else min(first_pts, packet.pts)
                end = packet.pts + (packet.duration or 0)
                last_end = end if last_end is None else max(last_end, end)
        except av.FFmpegError as exc:
            raise VideoCorrupt(f"The video data is damaged: {exc}") from exc
        if packets == 0:
            raise VideoCorrupt("The video track holds no frames")
        if vstream.frames and packets < vstream.frames:
            raise VideoCorrupt(f"The video is cut short: {packets} of {vstream.frames} frames are present")
        rotation = _first_frame_rotation(data)
        # The packets' own times, not the track header: MP4 headers round the duration to the movie's
        # time scale (often milliseconds), so 23 frames at 24 fps would read 0.958 s instead of 0.9583.
        if first_pts is not None and last_end is not None and last_end > first_pts:
            duration = float((last_end - first_pts) * tb)
        elif vstream.duration:
            duration = float(vstream.duration * tb)
        else:
            duration = (container.duration or 0) / 1_000_000
        tags = {str(k): str(v) for k, v in container.metadata.items()}
        sample_rate = astream.codec_context.sample_rate if astream is not None else None
        channels = astream.codec_context.channels if astream is not None else None
    if duration <= 0:
        raise VideoCorrupt("The video has no duration")
    if duration > limits.max_seconds + 0.05:
        raise VideoTooLong(
            f"The video is {duration:.2f} s long; at most {limits.max_seconds:g} s are accepted",
            duration_seconds=round(duration, 3),
            max_seconds=limits.max_seconds,
        )
    if max(width, height) > limits.max_side:
        raise VideoTooLarge(f"The video is {width}x{height}; the longest side may be {limits.max_side}")
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(
        duration_seconds=duration,
        width=width,
        height=height,
        fps=float(rate),
        frames=packets,
        video_codec=video_codec,
        audio_codec=audio_codec,
        size_bytes=len(data),
        container=kind,
        frame_rate=(rate.numerator, rate.denominator),
        rotation=rotation,
        audio_sample_rate=sample_rate,
        audio_channels=channels,
        tags=tags,
        pixel_format=pixel_format,
    )


def _sniff(data: bytes) -> str | None:
    if data[:4] == _EBML:
        return "webm"
    if len(data) >= 8 and data[4:8] in _MP4_BRANDS:
        return "mp4"
    return None


def _check_mp4_boxes(data: bytes) -> None:
    """The top-level boxes of an MP4/MOV must tile the file: a box that runs past the end means the file
    was cut short (FFmpeg would quietly read what is there)."""
    offset, total = 0, len(data)
    seen: set[bytes] = set()
    while offset + 8 <= total:
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if size == 1:
            if offset + 16 > total:
                raise VideoCorrupt("The video is cut short (a box header is incomplete)")
            size = struct.unpack(">Q", data[offset + 8 : offset + 16])[0]
        elif size == 0:
            size = total - offset  # the last box runs to the end of the file
        if size < 8:
            raise VideoCorrupt(f"The video is damaged (box {kind!r} has size {size})")
        if offset + size > total:
            raise VideoCorrupt(f"The video is cut short (box {kind.decode('latin-1')!r} is incomplete)")
        seen.add(kind)
        offset += size
    if b"moov" not in seen:
        raise VideoCorrupt("The video has no index (moov box): it was cut short or never finished")


class _Opened:
    """``with _open(data) as container``: errors opening a recognised file mean it is corrupt."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._container: InputContainer | None = None

    def __enter__(self) -> InputContainer:
        import av

        try:
            self._container = av.open(io.BytesIO(self._data), "r")
        except (av.FFmpegError, UnicodeDecodeError) as exc:
            raise VideoCorrupt(f"The video could not be opened: {exc}") from exc
        return self._container

    def __exit__(self, *exc: object) -> None:
        if self._container is not None:
            self._container.close()


def _open(data: bytes) -> _Opened:
    return _Opened(data)


def _first_frame_rotation(data: bytes) -> int:
    """Clockwise degrees to turn the frames (from the display matrix), from the first decoded frame."""
    import av

    with _open(data) as container:
        try:
            for frame in container.decode(video=0):
                return _clockwise(frame.rotation)
        except av.FFmpegError as exc:
            raise VideoCorrupt(f"The video's frames cannot be decoded: {exc}") from exc
    raise VideoCorrupt("The video's frames cannot be decoded")


def _clockwise(rotation: float) -> int:
    # FFmpeg reports the display matrix's rotation counter-clockwise; players turn frames the other way.
    return round(-rotation / 90.0) % 4 * 90


# ---------------------------------------------------------------------------------
# Operations


def trim(
    data: bytes,
    start: float,
    end: float,
    *,
    limits: VideoLimits = DEFAULT_LIMITS,
    encode: EncodeSettings = DEFAULT_ENCODE,
) -> bytes:
    """The frames shown from ``start`` up to (not including) ``end`` seconds, re-encoded so the cut is
    exact to the frame; the sound is cut at the same times."""
    info = probe(data, limits)
    half_frame = 0.5 / info.fps
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end <= start:
        raise VideoRangeInvalid(f"Trim needs 0 <= start < end (got {start}..{end})", start=start, end=end)
    if end > info.duration_seconds + half_frame:
        raise VideoRangeInvalid(
            f"Trim end {end:g} s is past the end of the video ({info.duration_seconds:.3f} s)",
            start=start,
            end=end,
            duration_seconds=round(info.duration_seconds, 3),
        )
    if (end - start) * info.fps < 0.5:
        raise VideoRangeInvalid("The trimmed clip would hold no frame", start=start, end=end)
    return _render([_Segment(data, info, start=start, end=end)], info.width, info.height, info, encode)


def reframe(
    data: bytes,
    aspect: str,
    mode: ReframeMode = "crop",
    *,
    size: tuple[int, int] | None = None,
    limits: VideoLimits = DEFAULT_LIMITS,
    encode: EncodeSettings = DEFAULT_ENCODE,
) -> bytes:
    """Another aspect (1:1, 4:5, 9:16, 16:9): ``crop`` keeps the centre at full resolution, ``pad`` keeps
    everything on black bars. ``size`` scales the result to exactly that many pixels (even numbers)."""
    if aspect not in REFRAME_ASPECTS:
        raise VideoRangeInvalid(f"Aspect {aspect!r} is not one of {', '.join(REFRAME_ASPECTS)}")
    if mode not in ("crop", "pad"):
        raise VideoRangeInvalid(f"Mode {mode!r} is not crop or pad")
    info = probe(data, limits)
    width, height, filters = reframe_plan(info.width, info.height, aspect, mode, size)
    return _render([_Segment(data, info, filters=filters)], width, height, info, encode)


def reframe_plan(
    width: int, height: int, aspect: str, mode: ReframeMode, size: tuple[int, int] | None = None
) -> tuple[int, int, list[tuple[str, str]]]:
    """(output width, output height, FFmpeg filters) to take a ``width`` x ``height`` picture to ``aspect``."""
    aw, ah = REFRAME_ASPECTS[aspect]
    if mode == "crop":
        if width * ah > height * aw:  # too wide: keep the full height
            out_h = _even_down(height)
            out_w = _even_down(out_h * aw / ah)
        else:
            out_w = _even_down(width)
            out_h = _even_down(out_w * ah / aw)
        filters = [("crop", f"{out_w}:{out_h}:{(width - out_w) // 2}:{(height - out_h) // 2}")]
    else:
        if width * ah > height * aw:  # too wide: bars above and below
            out_w = _even_up(width)
            out_h = _even_up(out_w * ah / aw)
        else:
            out_h = _even_up(height)
            out_w = _even_up(out_h * aw / ah)
        filters = [("pad", f"{out_w}:{out_h}:{(out_w - width) // 2}:{(out_h - height) // 2}:color=black")]
    if size is not None:
        target_w, target_h = size
        if target_w <= 0 or target_h <= 0 or target_w % 2 or target_h % 2:
            raise VideoRangeInvalid(f"Output size {target_w}x{target_h} must be positive even numbers")
        filters.append(("scale", f"{target_w}:{target_h}:flags=bicubic"))
        out_w, out_h = target_w, target_h
    filters.append(("setsar", "1"))
    return out_w, out_h, filters


def set_audio(
    data: bytes,
    audio: bytes | None,
    *,
    original_volume: float = 0.0,
    voice_volume: float = 1.0,
    limits: VideoLimits = DEFAULT_LIMITS,
    encode: EncodeSettings = DEFAULT_ENCODE,
) -> bytes:
    """Mute the clip (``audio=None``: the sound track is removed) or give it another one (a WAV or any
    audio file FFmpeg reads, e.g. a voiceover), cut or padded with silence to the clip's length; with
    ``original_volume`` > 0 the clip's own sound stays underneath at that gain. An H.264 picture is copied
    untouched (no re-encoding); any other codec is re-encoded to H.264."""
    info = probe(data, limits)
    copy_video = info.video_codec == "h264" and info.container == "mp4" and info.rotation == 0
    segment = _Segment(
        data,
        info,
        audio="drop" if audio is None else "replace",
        voice=_decode_audio_file(audio, info.duration_seconds + 1.0) if audio is not None else None,
        original_volume=original_volume if info.has_audio else 0.0,
        voice_volume=voice_volume,
        copy_video=copy_video,
    )
    return _render([segment], info.width, info.height, info, encode, with_audio=audio is not None)


def playable(data: bytes, *, limits: VideoLimits = DEFAULT_LIMITS, encode: EncodeSettings = DEFAULT_ENCODE) -> bytes:
    """The clip as an MP4 every browser plays. One that is already (an MP4, not a QuickTime movie, of
    H.264 in yuv420p at even dimensions, with AAC sound or none) comes back as it is; anything else the
    limits accept (HEVC, VP8/9, AV1, a MOV or WebM, other sound) is re-encoded once to H.264/AAC at its
    displayed size: turned upright, an odd width or height cropped by one pixel."""
    info = probe(data, limits)
    if is_playable(data, info):
        return data
    width, height = _even_down(info.width), _even_down(info.height)
    filters = [("crop", f"{width}:{height}:0:0")] if (width, height) != (info.width, info.height) else []
    return _render([_Segment(data, info, filters=filters)], width, height, info, encode)


def is_playable(data: bytes, info: VideoInfo) -> bool:
    """Whether ``data`` (probed as ``info``) is an MP4 every browser plays as it is."""
    brand = data[8:12] if data[4:8] == b"ftyp" else None
    return (
        info.container == "mp4"
        and brand is not None
        and brand != b"qt  "
        and info.video_codec == "h264"
        and info.pixel_format == "yuv420p"
        and info.audio_codec in (None, "aac")
        and info.width % 2 == 0
        and info.height % 2 == 0
    )


def concat(
    clips: Sequence[bytes],
    *,
    size: tuple[int, int] | None = None,
    limits: VideoLimits = DEFAULT_LIMITS,
    encode: EncodeSettings = DEFAULT_ENCODE,
) -> bytes:
    """One clip from several, in order (at most ``limits.max_seconds`` in all). Each is fitted into the
    first clip's size (or ``size``) with black bars where its aspect differs, at the first clip's frame
    rate; if any clip has sound, the silent ones get silence so the sound stays in step."""
    if not clips:
        raise VideoRangeInvalid("Nothing to join")
    infos = [probe(clip, limits) for clip in clips]
    total = sum(info.duration_seconds for info in infos)
    if total > limits.max_seconds + 0.05:
        raise VideoTooLong(
            f"The joined video would be {total:.2f} s long; at most {limits.max_seconds:g} s are accepted",
            duration_seconds=round(total, 3),
            max_seconds=limits.max_seconds,
        )
    width, height = size if size is not None else (_even_down(infos[0].width), _even_down(infos[0].height))
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise VideoRangeInvalid(f"Output size {width}x{height} must be positive even numbers")
    fit = [
        ("scale", f"{width}:{height}:force_original_aspect_ratio=decrease:force_divisible_by=2"),
        ("pad", f"{width}:{height}:(ow-iw)/2:(oh-ih)/2:color=black"),
        ("setsar", "1"),
    ]
    with_audio = any(info.has_audio for info in infos)
    segments = [_Segment(clip, info, filters=fit) for clip, info in zip(clips, infos, strict=True)]
    return _render(segments, width, height, infos[0], encode, with_audio=with_audio)


def poster(
    data: bytes,
    at_seconds: float | None = None,
    *,
    max_side: int | None = None,
    quality: int = 82,
    limits: VideoLimits = DEFAULT_LIMITS,
) -> bytes:
    """The frame shown at ``at_seconds`` (default: 1 s in, or the middle of a shorter clip) as WebP,
    turned as the file asks, scaled down to ``max_side`` if given."""
    import av
    from PIL import Image

    info = probe(data, limits)
    at = min(1.0, info.duration_seconds / 2) if at_seconds is None else at_seconds
    if not math.isfinite(at) or at < 0 or at > info.duration_seconds:
        raise VideoRangeInvalid(
            f"Poster time {at:g} s is outside the video (0..{info.duration_seconds:.3f} s)",
            at_seconds=at,
            duration_seconds=round(info.duration_seconds, 3),
        )
    half_frame = 0.5 / info.fps
    chosen = None
    with _open(data) as container:
        stream = container.streams.video[0]
        start = float((stream.start_time or 0) * (stream.time_base or 1))
        if at > 1.0 and stream.time_base:
            container.seek(int((start + at) / stream.time_base), stream=stream, backward=True, any_frame=False)
        try:
            for frame in container.decode(stream):
                chosen = frame
                if frame.time is not None and frame.time - start >= at - half_frame:
                    break
        except av.FFmpegError as exc:
            raise VideoCorrupt(f"The video's frames cannot be decoded: {exc}") from exc
        if chosen is None:
            raise VideoCorrupt("No frame could be decoded at that time")
        image = chosen.to_image()  # type: ignore[no-untyped-call]
    turn = {90: Image.Transpose.ROTATE_270, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_90}
    if info.rotation in turn:
        image = image.transpose(turn[info.rotation])
    if max_side is not None and max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "WEBP", quality=quality, method=4)
    return buffer.getvalue()


def thumbnail(
    data: bytes, at_seconds: float | None = None, *, max_side: int = 512, limits: VideoLimits = DEFAULT_LIMITS
) -> bytes:
    """A small WebP of the poster frame (the longest side ``max_side``)."""
    return poster(data, at_seconds, max_side=max_side, quality=75, limits=limits)


# ---------------------------------------------------------------------------------
# Writing


class VideoWriter:
    """An MP4 being written: H.264 frames (numpy RGB arrays or decoded frames) and AAC sound (float32
    arrays of shape (2, n) at 48 kHz), both stamped in order. ``with VideoWriter(...) as writer: ...;
    data = writer.finish()``; leaving the block without ``finish`` discards the file."""

    def __init__(
        self,
        width: int,
        height: int,
        rate: Fraction | int,
        *,
        audio: bool,
        tags: dict[str, str] | None = None,
        encode: EncodeSettings = DEFAULT_ENCODE,
    ) -> None:
        import av

        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise ValueError(f"H.264 needs positive even dimensions, not {width}x{height}")
        self.width, self.height = width, height
        self.rate = Fraction(rate)
        handle, self._path = tempfile.mkstemp(prefix="epox-video-", suffix=".mp4")
        os.close(handle)
        self._out = av.open(self._path, "w", format="mp4", options={"movflags": "+faststart"})
        for key, value in (tags or {}).items():
            self._out.metadata[key] = value
        self._video_stream: Any = None
        self._template: Any = None
        self._encode = encode
        self._audio_stream: Any = None
        if audio:
            self._audio_stream = self._out.add_stream("aac", rate=AUDIO_RATE)
            self._audio_stream.layout = "stereo"
            self._audio_stream.bit_rate = encode.audio_bit_rate
        self.frames = 0
        self.samples = 0
        self._copied_end = Fraction(0)  # end time of the copied packets so far
        self._closed = False

    # -- video --------------------------------------------------------------------------------

    def _h264(self) -> Any:
        if self._video_stream is None:
            encode = self._encode
            stream = self._out.add_stream(
                "libx264", rate=self.rate, options={"crf": str(encode.crf), "preset": encode.preset}
            )
            stream.width, stream.height, stream.pix_fmt = self.width, self.height, "yuv420p"
            stream.gop_size = max(1, round(float(self.rate) * encode.keyframe_seconds))
            stream.time_base = 1 / self.rate
            if encode.threads:
                stream.codec_context.thread_count = encode.threads
            self._video_stream = stream
        return self._video_stream

    def add_frame(self, frame: VideoFrame) -> None:
        """A decoded (or built) frame at the writer's size; stamped as the next frame."""
        if frame.width != self.width or frame.height != self.height or frame.format.name != "yuv420p":
            frame = frame.reformat(width=self.width, height=self.height, format="yuv420p")
        stream = self._h264()
        frame.pts = self.frames
        frame.time_base = 1 / self.rate
        self.frames += 1
        self._out.mux(stream.encode(frame))

    def add_rgb(self, array: np.ndarray) -> None:
        """A frame from an (height, width, 3) uint8 array."""
        import av

        self.add_frame(av.VideoFrame.from_ndarray(array, format="rgb24"))

    def add_packet(self, packet: Packet[Any], template: Any) -> None:
        """An encoded H.264 packet copied from ``template`` (the input stream it was read from)."""
        if self._video_stream is None:
            self._video_stream = self._out.add_stream_from_template(template)
            self._template = template
        if packet.pts is None or packet.dts is None:
            return
        tb = packet.time_base or template.time_base
        origin = template.start_time or 0
        self._copied_end = max(self._copied_end, Fraction((packet.pts - origin + (packet.duration or 0)) * tb))
        self.frames += 1
        packet.stream = self._video_stream
        self._out.mux(packet)

    @property
    def video_seconds(self) -> float:
        return float(self._copied_end) if self._template is not None else self.frames / float(self.rate)

    # -- audio --------------------------------------------------------------------------------

    @property
    def audio_seconds(self) -> float:
        return self.samples / AUDIO_RATE

    def add_audio(self, samples: np.ndarray) -> None:
        """float32 samples, shape (2, n), 48 kHz."""
        import av
        import numpy as np

        if self._audio_stream is None or samples.shape[1] == 0:
            return
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, dtype=np.float32), format="fltp", layout="stereo"
        )
        frame.sample_rate = AUDIO_RATE
        frame.pts = self.samples
        frame.time_base = Fraction(1, AUDIO_RATE)
        self.samples += samples.shape[1]
        self._out.mux(self._audio_stream.encode(frame))

    def add_silence(self, seconds: float) -> None:
        import numpy as np

        remaining = round(seconds * AUDIO_RATE)
        while remaining > 0:
            count = min(remaining, 4096)
            self.add_audio(np.zeros((2, count), dtype=np.float32))
            remaining -= count

    @property
    def has_audio(self) -> bool:
        return self._audio_stream is not None

    # -- end ----------------------------------------------------------------------------------

    def finish(self) -> bytes:
        """Flush the encoders, close the file and return its bytes."""
        if self._video_stream is not None and self._template is None:
            self._out.mux(self._video_stream.encode(None))
        if self._audio_stream is not None:
            self._out.mux(self._audio_stream.encode(None))
        self._out.close()
        self._closed = True
        with open(self._path, "rb") as handle:
            return handle.read()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._closed:
            with contextlib.suppress(Exception):  # the file is discarded; the original error matters
                self._out.close()
            self._closed = True
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)


# ---------------------------------------------------------------------------------
# The streaming pipeline behind every operation


@dataclass
class _Segment:
    """One input clip of a render: which part, through which filters, with which sound."""

    data: bytes
    info: VideoInfo
    start: float = 0.0
    end: float | None = None
    filters: list[tuple[str, str]] = field(default_factory=list)
    audio: Literal["keep", "drop", "replace"] = "keep"
    voice: np.ndarray | None = None  # replace: (2, n) float32 at 48 kHz
    original_volume: float = 0.0
    voice_volume: float = 1.0
    copy_video: bool = False


def _render(
    segments: list[_Segment],
    width: int,
    height: int,
    first: VideoInfo,
    encode: EncodeSettings,
    *,
    with_audio: bool | None = None,
) -> bytes:
    rate = Fraction(*first.frame_rate)
    if with_audio is None:
        with_audio = first.has_audio
    tags: dict[str, str] = {key: first.tags[key] for key in _CARRIED_TAGS if key in first.tags}
    with VideoWriter(width, height, rate, audio=with_audio, tags=tags, encode=encode) as writer:
        for segment in segments:
            _write_segment(writer, segment, rate)
        return writer.finish()


def _write_segment(writer: VideoWriter, segment: _Segment, rate: Fraction) -> None:
    """Interleave the segment's pictures and sound into ``writer`` (whichever is behind goes next), then
    end its sound exactly where its pictures end."""
    video_start, audio_start = writer.video_seconds, writer.audio_seconds
    pictures: Iterator[Any] = _copied_packets(segment) if segment.copy_video else _filtered_frames(segment, rate)
    sound = _segment_audio(segment) if writer.has_audio else iter(())
    picture = next(pictures, None)
    chunk = next(sound, None)
    while picture is not None:
        # Sound goes in only while it stays behind the pictures, so none is written past where they end.
        ahead = writer.audio_seconds - audio_start + (chunk.shape[1] / AUDIO_RATE if chunk is not None else 0)
        if chunk is not None and ahead <= writer.video_seconds - video_start:
            writer.add_audio(chunk)
            chunk = next(sound, None)
            continue
        if segment.copy_video:
            writer.add_packet(*picture)
        else:
            writer.add_frame(picture)
        picture = next(pictures, None)
    if writer.has_audio:
        target = round((writer.video_seconds - video_start) * AUDIO_RATE)  # samples this segment must have
        written = writer.samples - round(audio_start * AUDIO_RATE)
        while chunk is not None and written < target:
            part = chunk[:, : target - written]
            writer.add_audio(part)
            written += part.shape[1]
            chunk = next(sound, None)
        if written < target:
            writer.add_silence((target - written) / AUDIO_RATE)
    for iterator in (pictures, sound):
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


def _filtered_frames(segment: _Segment, rate: Fraction) -> Iterator[VideoFrame]:
    """Decoded pictures of the segment through trim -> fps -> the segment's filters -> yuv420p."""
    import av

    info = segment.info
    with _open(segment.data) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb = stream.time_base or Fraction(1, 90_000)
        origin = float((stream.start_time or 0) * tb)
        if segment.start > 1.0:
            container.seek(int((origin + segment.start) / tb), stream=stream, backward=True, any_frame=False)
        graph = av.filter.Graph()
        nodes = [graph.add_buffer(template=stream)]
        chain: list[tuple[str, str]] = list(_rotation_filters(info.rotation))
        trim_args = f"start={origin + segment.start:.6f}"
        if segment.end is not None:
            trim_args += f":end={origin + segment.end:.6f}"
        chain += [("trim", trim_args), ("setpts", "PTS-STARTPTS"), ("fps", f"{rate.numerator}/{rate.denominator}")]
        chain += segment.filters
        chain += [("format", "yuv420p")]
        nodes += [graph.add(name, args) for name, args in chain]
        nodes.append(graph.add("buffersink"))
        graph.link_nodes(*nodes)
        graph.configure()
        try:
            yield from _through(graph, container.demux(stream))
        except av.FFmpegError as exc:
            raise VideoCorrupt(f"The video's frames cannot be decoded: {exc}") from exc


def _copied_packets(segment: _Segment) -> Iterator[tuple[Packet[Any], Any]]:
    with _open(segment.data) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if packet.size:
                yield packet, stream


def _segment_audio(segment: _Segment) -> Iterator[np.ndarray]:
    """The segment's sound as (2, n) float32 chunks at 48 kHz: its own (trimmed), a replacement
    (optionally over its own at ``original_volume``), or nothing (silence is added by the caller)."""
    if segment.audio == "drop":
        return
    if segment.audio == "keep":
        if segment.info.has_audio:
            yield from _decoded_audio(segment)
        return
    voice = segment.voice
    if voice is None:
        return
    gain = segment.voice_volume
    position = 0
    if segment.original_volume > 0:
        for chunk in _decoded_audio(segment):
            count = chunk.shape[1]
            mixed = chunk * segment.original_volume
            part = voice[:, position : position + count]
            mixed[:, : part.shape[1]] += part * gain
            position += count
            yield mixed
    step = 4096
    while position < voice.shape[1]:
        yield voice[:, position : position + step] * gain
        position += step


def _decoded_audio(segment: _Segment) -> Iterator[np.ndarray]:
    import av

    with _open(segment.data) as container:
        if not container.streams.audio:
            return
        stream = container.streams.audio[0]
        tb = stream.time_base or Fraction(1, AUDIO_RATE)
        origin = float((stream.start_time or 0) * tb)
        if segment.start > 1.0:
            container.seek(int((origin + segment.start) / tb), stream=stream, backward=True, any_frame=False)
        graph = av.filter.Graph()
        trim_args = f"start={origin + segment.start:.6f}"
        if segment.end is not None:
            trim_args += f":end={origin + segment.end:.6f}"
        chain = [
            ("atrim", trim_args),
            ("asetpts", "PTS-STARTPTS"),
            ("aresample", str(AUDIO_RATE)),
            ("aformat", f"sample_fmts=fltp:sample_rates={AUDIO_RATE}:channel_layouts=stereo"),
        ]
        nodes = [graph.add_abuffer(template=stream)]
        nodes += [graph.add(name, args) for name, args in chain]
        nodes.append(graph.add("abuffersink"))
        graph.link_nodes(*nodes)
        graph.configure()
        try:
            for out in _through(graph, container.demux(stream)):
                yield out.to_ndarray()
        except av.FFmpegError as exc:
            raise VideoCorrupt(f"The video's sound cannot be decoded: {exc}") from exc


def _through(graph: Any, packets: Iterator[Any]) -> Iterator[Any]:
    """Decode ``packets`` into ``graph`` and yield what comes out, stopping early once the graph has
    all it wants (a trim's end)."""
    for packet in packets:
        for frame in packet.decode():
            if not _push(graph, frame):
                yield from _drain(graph)
                return
            yield from _drain(graph)
    _push(graph, None)
    yield from _drain(graph)


def _push(graph: Any, frame: Any) -> bool:
    """Push a frame (None: end of input); False once the graph wants no more (a trim has ended)."""
    import av

    try:
        graph.push(frame)
    except av.EOFError:
        return False
    return True


def _drain(graph: Any) -> Iterator[Any]:
    import av

    while True:
        try:
            yield graph.pull()
        except (av.BlockingIOError, av.EOFError):
            return


def _rotation_filters(rotation: int) -> list[tuple[str, str]]:
    if rotation == 90:
        return [("transpose", "clock")]
    if rotation == 180:
        return [("hflip", ""), ("vflip", "")]
    if rotation == 270:
        return [("transpose", "cclock")]
    return []


def _decode_audio_file(data: bytes, max_seconds: float) -> np.ndarray:
    """Any audio file FFmpeg reads (WAV above all) as (2, n) float32 at 48 kHz, at most ``max_seconds``."""
    import av
    import numpy as np

    if not data:
        raise InvalidVideo("The audio file is empty")
    limit = round(max_seconds * AUDIO_RATE)
    chunks: list[np.ndarray] = []
    total = 0
    try:
        with av.open(io.BytesIO(data), "r") as container:
            if not container.streams.audio:
                raise InvalidVideo("The audio file has no sound track")
            resampler = av.AudioResampler(format="fltp", layout="stereo", rate=AUDIO_RATE)
            for frame in container.decode(container.streams.audio[0]):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
                    total += out.samples
                if total >= limit:
                    break
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
    except av.FFmpegError as exc:
        raise InvalidVideo(f"The audio file cannot be read: {exc}") from exc
    if not chunks:
        return np.zeros((2, 0), dtype=np.float32)
    return np.concatenate(chunks, axis=1)[:, :limit].astype(np.float32, copy=False)


def _even_down(value: float) -> int:
    return max(2, int(value) // 2 * 2)


def _even_up(value: float) -> int:
    return max(2, math.ceil(value / 2) * 2)
