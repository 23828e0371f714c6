"""The video and speech engine ports: what the video worker asks of a video model (Veo) and of a
text-to-speech model, and the value types that cross the boundary.

A video takes minutes, so the port is a long-running operation and never blocks: :meth:`VideoEngine.start`
returns a :class:`VideoOperation` (small, JSON-serialisable: it goes into a task payload and Firestore);
follow-up tasks call :meth:`VideoEngine.poll` with it (delays from :func:`poll_delay_seconds`) until the
answer is no longer pending; :meth:`VideoEngine.fetch` then gives the MP4's bytes (inline, or downloaded
from the URI the model wrote to).

Failures follow the image engine's rules (:mod:`shared.engines.base`): a call that may work later raises
:class:`EngineRetryableError` (the queue retries, honouring ``retry_after``); a request the model refuses
raises :class:`EnginePermanentError`. An operation that *finished* without a video is not an exception of
``poll`` (polling again would not change it): it is a :class:`VideoPoll` in state ``filtered`` (the safety
filters removed the output; Google does not charge for it, refund ours) or ``failed``.
"""

from __future__ import annotations

import io
import re
import wave
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.engines.base import ContentBlocked, EnginePermanentError, InputImage

VEO_FAST_MODEL = "veo-3.1-fast-generate-001"
VEO_QUALITY_MODEL = "veo-3.1-generate-001"
VIDEO_ASPECT_RATIOS: tuple[str, ...] = ("16:9", "9:16")
VIDEO_RESOLUTIONS: tuple[str, ...] = ("720p", "1080p")
CLIP_SECONDS: tuple[int, ...] = (4, 6, 8)
MAX_REFERENCE_IMAGES = 3  # Veo: up to three "asset" images of one subject (the product)

VideoAspect = Literal["16:9", "9:16"]
VideoResolution = Literal["720p", "1080p"]
ClipSeconds = Literal[4, 6, 8]
PollState = Literal["pending", "done", "filtered", "failed"]

_SHORT_SIDE = {"720p": 720, "1080p": 1080}


def video_dimensions(aspect_ratio: str, resolution: str) -> tuple[int, int]:
    """Pixel size of a clip: 16:9 at 720p is 1280x720, 9:16 at 1080p is 1080x1920."""
    short = _SHORT_SIDE[resolution]
    long = short * 16 // 9
    return (long, short) if aspect_ratio == "16:9" else (short, long)


class VideoRequest(BaseModel):
    """One clip to generate. ``image`` animates a product image (image-to-video), optionally towards
    ``last_frame``; ``reference_images`` ("asset" images of the product) keep it consistent in a
    text-to-video clip instead — Veo takes them only with a prompt, without a first/last frame, for 8 s."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    prompt: str = Field(default="", max_length=4000)
    model: str | None = None  # None: the engine's default (the fast model)
    aspect_ratio: VideoAspect = "16:9"
    resolution: VideoResolution = "720p"
    duration_seconds: ClipSeconds = 8
    audio: bool = True  # the model's own soundtrack (Veo 3 generates audio)
    negative_prompt: str | None = Field(default=None, max_length=2000)
    seed: int | None = Field(default=None, ge=0, le=4_294_967_295)
    image: InputImage | None = None
    last_frame: InputImage | None = None
    reference_images: tuple[InputImage, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> VideoRequest:
        if not self.prompt.strip() and self.image is None:
            raise ValueError("a video needs a prompt or a first-frame image")
        if self.last_frame is not None and self.image is None:
            raise ValueError("last_frame needs image (the first frame)")
        if self.reference_images:
            if len(self.reference_images) > MAX_REFERENCE_IMAGES:
                raise ValueError(f"at most {MAX_REFERENCE_IMAGES} reference images")
            if self.image is not None or self.last_frame is not None:
                raise ValueError("reference_images cannot be combined with image or last_frame")
            if not self.prompt.strip():
                raise ValueError("reference_images need a prompt")
            if self.duration_seconds != 8:
                raise ValueError("clips guided by reference images are 8 seconds long")
        return self

    @property
    def dimensions(self) -> tuple[int, int]:
        return video_dimensions(self.aspect_ratio, self.resolution)


class VideoOperation(BaseModel):
    """A started generation: what a follow-up task needs to poll it. ``name`` is the vendor's operation
    name (opaque); ``data`` is engine-private state needed to poll (empty for Veo; the offline engine's
    render recipe), JSON-serialisable and small (a task payload holds it)."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1)
    engine: str
    model: str
    data: dict[str, Any] = Field(default_factory=dict)

    def to_payload(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> VideoOperation:
        return cls.model_validate(payload)


@dataclass(frozen=True)
class VideoResult:
    """A finished clip: inline bytes, or a ``gs://bucket/object`` URI the model wrote to."""

    mime_type: str = "video/mp4"
    data: bytes | None = None
    gcs_uri: str | None = None

    def __post_init__(self) -> None:
        if (self.data is None) == (self.gcs_uri is None):
            raise ValueError("a video result has either data or a gcs_uri")


@dataclass(frozen=True)
class VideoPoll:
    """Where an operation stands. ``filtered``: done without a video because the safety filters
    removed it (``filtered_reasons`` as the model gave them); ``failed``: the operation ended with an
    error — ``restartable`` when starting a new operation may succeed (the service was busy or failed
    inside), not when the request itself was refused."""

    state: PollState
    result: VideoResult | None = None
    filtered_reasons: tuple[str, ...] = ()
    filtered_count: int = 0
    error: str | None = None
    restartable: bool = False
    progress: int | None = None  # percent, when the engine reports it

    @classmethod
    def pending(cls, progress: int | None = None) -> VideoPoll:
        return cls("pending", progress=progress)

    @classmethod
    def done(cls, result: VideoResult) -> VideoPoll:
        return cls("done", result=result, progress=100)

    @classmethod
    def filtered(cls, reasons: tuple[str, ...] | list[str], count: int) -> VideoPoll:
        return cls("filtered", filtered_reasons=tuple(reasons), filtered_count=max(count, 1))

    @classmethod
    def failed(cls, error: str, *, restartable: bool = False) -> VideoPoll:
        return cls("failed", error=error, restartable=restartable)

    def raise_for_outcome(self) -> None:
        """Raise the problem a finished-without-video operation is (the item fails, refunded)."""
        if self.state == "filtered":
            reasons = "; ".join(self.filtered_reasons) or "no reason given"
            raise VideoFiltered(
                f"The model's safety filters removed the video ({reasons})",
                reasons=list(self.filtered_reasons),
                filtered_count=self.filtered_count,
            )
        if self.state == "failed":
            raise VideoGenerationFailed(self.error, restartable=self.restartable)


class VideoFiltered(ContentBlocked):
    code = "video_filtered"
    title = "The video was removed by the model's safety filters"


class VideoGenerationFailed(EnginePermanentError):
    code = "video_generation_failed"
    title = "The video could not be generated"


class VideoOutputTooLarge(EnginePermanentError):
    code = "video_output_too_large"
    title = "The generated video is larger than allowed"


# Seconds before the next poll of an operation that has been polled ``polls`` times: Veo takes one to a
# few minutes, so early polls are a waste and late ones should not wait long once it is nearly done.
_POLL_DELAYS = (20, 15, 15, 20, 30, 30, 45)
MAX_POLL_DELAY = 60
MAX_OPERATION_MINUTES = 20  # give up (fail, refund) on an operation still pending after this long


def poll_delay_seconds(polls: int) -> int:
    """The wait before poll number ``polls + 1`` (``polls`` = polls made so far, 0 after start)."""
    return _POLL_DELAYS[polls] if 0 <= polls < len(_POLL_DELAYS) else MAX_POLL_DELAY


class VideoEngine(ABC):
    """Port: a video model behind a long-running operation."""

    name: ClassVar[str]

    @abstractmethod
    def start(self, request: VideoRequest) -> VideoOperation:
        """Start generating one clip; returns at once with the operation to poll."""

    @abstractmethod
    def poll(self, operation: VideoOperation) -> VideoPoll:
        """One look at the operation (never waits for it)."""

    @abstractmethod
    def fetch(self, result: VideoResult) -> bytes:
        """The clip's bytes: inline ones, or downloaded from its URI (size-capped)."""


# -- speech -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioClip:
    """Speech as a WAV file (16-bit PCM) and its shape."""

    data: bytes
    sample_rate: int
    channels: int
    duration_seconds: float
    mime_type: str = "audio/wav"


class SpeechEngine(ABC):
    """Port: text-to-speech."""

    name: ClassVar[str]

    @abstractmethod
    def speak(self, text: str, voice: str | None = None) -> AudioClip:
        """Voice ``text`` (``voice``: the engine's voice name; None: its default)."""


_RATE = re.compile(r"rate=(\d+)")
_CHANNELS = re.compile(r"channels=(\d+)")
PCM_DEFAULT_RATE = 24_000  # Gemini TTS's raw PCM: 24 kHz, 16-bit little-endian, mono


def audio_clip_from(data: bytes, mime_type: str) -> AudioClip:
    """Normalise a TTS answer to WAV: a WAV is checked and kept; raw PCM (``audio/L16;codec=pcm;rate=24000``,
    ``audio/pcm``) is wrapped in a WAV header. Anything else is an :class:`EnginePermanentError`."""
    kind = mime_type.split(";", 1)[0].strip().lower()
    if kind in ("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave") or data[:4] == b"RIFF":
        try:
            with wave.open(io.BytesIO(data)) as reader:
                rate, channels, width = reader.getframerate(), reader.getnchannels(), reader.getsampwidth()
                frames = reader.getnframes()
        except (wave.Error, EOFError) as exc:
            raise EnginePermanentError(f"The speech model returned an unreadable WAV: {exc}") from exc
        if width != 2 or rate <= 0 or channels not in (1, 2):
            raise EnginePermanentError(f"The speech model returned {width * 8}-bit/{channels}-channel audio")
        return AudioClip(data=data, sample_rate=rate, channels=channels, duration_seconds=frames / rate)
    if kind in ("audio/l16", "audio/pcm", "audio/raw", "audio/s16le"):
        rate_match, channels_match = _RATE.search(mime_type), _CHANNELS.search(mime_type)
        rate = int(rate_match.group(1)) if rate_match else PCM_DEFAULT_RATE
        channels = int(channels_match.group(1)) if channels_match else 1
        usable = len(data) - len(data) % (2 * channels)
        return AudioClip(
            data=wav_bytes(data[:usable], rate, channels),
            sample_rate=rate,
            channels=channels,
            duration_seconds=usable / (2 * channels * rate),
        )
    raise EnginePermanentError(f"The speech model returned {mime_type!r}, not WAV or PCM audio")


def wav_bytes(pcm: bytes, sample_rate: int, channels: int = 1) -> bytes:
    """16-bit little-endian PCM in a WAV container."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(2)
        writer.setframerate(sample_rate)
        writer.writeframes(pcm)
    return buffer.getvalue()
