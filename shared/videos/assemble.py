"""The file work of a video: the clips joined and cut to length, the sound chosen (the model's, a voiceover,
or none), each deliverable reframed to its exact size, the poster frame and thumbnail; and a video edit
applied to a stored revision. Everything goes through :mod:`shared.video.media` (PyAV, loaded on first
use): only the video worker runs this module's functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.engines.video import video_dimensions
from shared.video.media import VideoInfo, VideoLimits

if TYPE_CHECKING:
    from shared.videos.models import VideoEditRequest

# The joined clips may run a few seconds past the length asked for before they are cut to it.
WORK_LIMITS = VideoLimits(max_seconds=40.0)
THUMBNAIL_SIDE = 512


@dataclass(frozen=True)
class EncodedVideo:
    """An MP4 ready to store as an asset's media (the catalog's ``Pixels``)."""

    data: bytes
    info: VideoInfo
    content_type: str = "video/mp4"
    extension: str = "mp4"

    @property
    def width(self) -> int:
        return self.info.width

    @property
    def height(self) -> int:
        return self.info.height


@dataclass(frozen=True)
class Still:
    """A poster frame or thumbnail (WebP)."""

    data: bytes
    content_type: str = "image/webp"


def deliverable_size(aspect: str, resolution: str) -> tuple[int, int]:
    """Exact pixels of a deliverable: 9:16 at 720p is 720x1280, 1:1 is 720x720, 16:9 is 1280x720."""
    if aspect == "1:1":
        short = min(video_dimensions("16:9", resolution))
        return short, short
    return video_dimensions(aspect, resolution)


def assemble(
    clips: list[bytes],
    *,
    size: tuple[int, int],
    seconds: float,
    audio: str,
    voiceover: bytes | None = None,
) -> bytes:
    """One video from the clips in order, at ``size``, cut to ``seconds``, with the model's own sound
    (``native``), ``voiceover`` (a WAV) in its place, the voiceover over the model's sound played under it
    (``native_voiceover``), or no sound track (``none``)."""
    from shared.video import media
    from shared.videos.models import NATIVE_UNDER_VOICE

    joined = clips[0] if len(clips) == 1 else media.concat(clips, size=size, limits=WORK_LIMITS)
    info = media.probe(joined, WORK_LIMITS)
    if info.duration_seconds > seconds + 0.5 / info.fps:
        joined = media.trim(joined, 0.0, float(seconds), limits=WORK_LIMITS)
        info = media.probe(joined, WORK_LIMITS)
    if audio == "native_voiceover" and voiceover is not None:
        return media.set_audio(joined, voiceover, original_volume=NATIVE_UNDER_VOICE, limits=WORK_LIMITS)
    if audio == "voiceover" and voiceover is not None:
        return media.set_audio(joined, voiceover, limits=WORK_LIMITS)
    if audio not in ("native", "native_voiceover") and info.has_audio:
        return media.set_audio(joined, None, limits=WORK_LIMITS)
    return joined


def deliverable(video: bytes, aspect: str, resolution: str, fit: str) -> bytes:
    """``video`` as the ``aspect`` deliverable at ``resolution``: exactly :func:`deliverable_size`, its
    centre cropped or its whole picture padded with bars (``fit``)."""
    from shared.video import media

    size = deliverable_size(aspect, resolution)
    info = media.probe(video, WORK_LIMITS)
    if (info.width, info.height) == size and info.rotation == 0:
        return video
    return media.reframe(video, aspect, "pad" if fit == "pad" else "crop", size=size, limits=WORK_LIMITS)


def stills(video: bytes, at_seconds: float | None = None) -> tuple[Still, Still]:
    """(poster frame, thumbnail) at ``at_seconds`` (default: 1 s in, or the middle of a shorter video)."""
    from shared.video import media

    poster = media.poster(video, at_seconds, limits=WORK_LIMITS)
    thumbnail = media.thumbnail(video, at_seconds, max_side=THUMBNAIL_SIDE, limits=WORK_LIMITS)
    return Still(poster), Still(thumbnail)


def probe(video: bytes) -> VideoInfo:
    from shared.video import media

    return media.probe(video, WORK_LIMITS)


def uploaded(data: bytes, limits: VideoLimits) -> tuple[bytes, VideoInfo, VideoInfo]:
    """An uploaded file checked against ``limits`` (a 422 :data:`~shared.video.media.VIDEO_ERRORS` problem
    when it is no usable video) and made playable everywhere: (the MP4 to store, its facts, the upload's)."""
    from shared.video import media

    original = media.probe(data, limits)
    out = media.playable(data, limits=limits)
    return out, (original if out is data else media.probe(out, WORK_LIMITS)), original


def apply_edit(data: bytes, edit: VideoEditRequest, voiceover: bytes | None) -> tuple[bytes, bool]:
    """The stored video with ``edit`` applied (trim, reframe, sound; the poster is chosen by the caller),
    and whether the video itself changed (a poster alone keeps it)."""
    from shared.video import media

    out = data
    media.probe(out)  # a stored file we cannot use is a 422 before any work
    if edit.trim is not None:
        out = media.trim(out, edit.trim.start, edit.trim.end)
    if edit.reframe is not None:
        out = media.reframe(out, edit.reframe.aspect, edit.reframe.mode)
    if edit.audio is not None:
        out = media.set_audio(out, None if edit.audio.mute else voiceover, original_volume=edit.audio.original_volume)
    return out, out is not data
