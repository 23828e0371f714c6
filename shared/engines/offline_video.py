"""The offline video and speech engines: deterministic stand-ins for Veo and Gemini TTS, for ``make dev``,
the demo and tests. No AI service is called.

:class:`OfflineVideoEngine` answers like a long-running operation: ``start`` returns at once with an
operation whose ``data`` carries the render recipe (the request's settings and the product image scaled
down to a few kilobytes, so any process can poll it); ``poll`` answers ``pending`` the first
``pending_polls`` times, then renders a slow pan and zoom over the offline image engine's product
composite at the requested aspect, resolution and length — H.264, and AAC (a quiet chord) when sound
is asked for — labelled "OFFLINE PREVIEW" in the picture and tagged :data:`OFFLINE_COMMENT` in the file.
The same request always gives the same bytes. A prompt containing :data:`OFFLINE_FILTER_MARKER` is
"filtered", so the refund path can be exercised without a model.

:class:`OfflineSpeechEngine` voices text as a WAV of tone bursts, one per word, as long as the text.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import threading
from array import array
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, ClassVar

from shared.engines.base import EnginePermanentError, ImageRequest, InputImage
from shared.engines.video import (
    AudioClip,
    SpeechEngine,
    VideoEngine,
    VideoOperation,
    VideoPoll,
    VideoRequest,
    VideoResult,
    audio_clip_from,
    video_dimensions,
    wav_bytes,
)
from shared.video.media import AUDIO_RATE, OFFLINE_COMMENT, EncodeSettings

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

OFFLINE_FILTER_MARKER = "#offline-filtered"
OFFLINE_FILTER_REASON = (
    "The offline engine filtered this prompt on request (it contains #offline-filtered). Support codes: 00000000"
)
FPS = 24
EMBEDDED_SIDE = 384  # the product image travels in the operation at most this big...
EMBEDDED_BYTES = 24_000  # ...and this heavy (a task payload holds the operation)
ZOOM = 0.12  # the picture grows by this much over the clip
# One x264 thread: with two, the first clip a process encodes can differ from the next ones (seen with
# FFmpeg 8.1 in av 18.1), and the same request must give the same bytes everywhere.
OFFLINE_ENCODE = EncodeSettings(crf=23, preset="veryfast", threads=1)


class OfflineVideoEngine(VideoEngine):
    name: ClassVar[str] = "offline"
    model: ClassVar[str] = "offline-pan-zoom-1"

    def __init__(self, *, pending_polls: int = 0, fps: int = FPS) -> None:
        self.pending_polls = pending_polls
        self.fps = fps
        self._polls: dict[str, int] = {}
        self._rendered: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, request: VideoRequest) -> VideoOperation:
        product = request.image or (request.reference_images[0] if request.reference_images else None)
        recipe: dict[str, Any] = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt or "",
            "aspect_ratio": request.aspect_ratio,
            "resolution": request.resolution,
            "duration_seconds": request.duration_seconds,
            "audio": request.audio,
            "seed": request.seed,
            "image": _embedded(product.data) if product is not None else None,
        }
        digest = hashlib.sha256(repr(sorted(recipe.items())).encode()).hexdigest()
        return VideoOperation(
            name=f"offline/operations/{digest[:32]}",
            engine=self.name,
            model=request.model or self.model,
            data=recipe,
        )

    def poll(self, operation: VideoOperation) -> VideoPoll:
        if operation.engine != self.name:
            raise EnginePermanentError(f"The offline engine cannot poll a {operation.engine!r} operation")
        with self._lock:
            polls = self._polls.get(operation.name, 0)
            self._polls[operation.name] = polls + 1
        if polls < self.pending_polls:
            return VideoPoll.pending(progress=round(100 * polls / (self.pending_polls + 1)))
        recipe = operation.data
        if OFFLINE_FILTER_MARKER in str(recipe.get("prompt", "")):
            return VideoPoll.filtered([OFFLINE_FILTER_REASON], 1)
        with self._lock:
            cached = self._rendered.get(operation.name)
        if cached is None:
            cached = render(recipe, fps=self.fps)
            with self._lock:
                self._rendered[operation.name] = cached
                while len(self._rendered) > 4:
                    self._rendered.popitem(last=False)
        return VideoPoll.done(VideoResult(data=cached))

    def fetch(self, result: VideoResult) -> bytes:
        if result.data is None:
            raise EnginePermanentError("The offline engine has no storage to fetch a video from")
        return result.data


def render(recipe: dict[str, Any], *, fps: int = FPS) -> bytes:
    """The offline clip for a recipe (see :meth:`OfflineVideoEngine.start`)."""
    import numpy as np

    from shared.video.media import VideoWriter

    width, height = video_dimensions(recipe["aspect_ratio"], recipe["resolution"])
    digest = hashlib.sha256(repr(sorted(recipe.items())).encode()).digest()
    source = np.asarray(_backdrop(recipe, width, height).convert("RGB"))
    frames = int(recipe["duration_seconds"]) * fps
    direction = 1 if digest[0] % 2 else -1
    src_h, src_w = source.shape[:2]
    with VideoWriter(
        width, height, fps, audio=bool(recipe["audio"]), tags={"comment": OFFLINE_COMMENT}, encode=OFFLINE_ENCODE
    ) as writer:
        for index in range(frames):
            t = index / max(1, frames - 1)
            eased = t * t * (3 - 2 * t)
            zoom = 1.0 + ZOOM * eased
            crop_w, crop_h = round(src_w / zoom), round(src_h / zoom)
            spare_x, spare_y = src_w - crop_w, src_h - crop_h
            left = round(spare_x / 2 + direction * (eased - 0.5) * spare_x * 0.8)
            top = round(spare_y / 2)
            left = min(max(left, 0), spare_x)
            window = np.ascontiguousarray(source[top : top + crop_h, left : left + crop_w])
            writer.add_frame(_frame(window, width, height))
        if recipe["audio"]:
            _chord(writer, frames / fps)
        return writer.finish()


def _frame(window: np.ndarray, width: int, height: int) -> Any:
    import av

    return av.VideoFrame.from_ndarray(window, format="rgb24").reformat(
        width=width, height=height, format="yuv420p", interpolation="BILINEAR"
    )


def _backdrop(recipe: dict[str, Any], width: int, height: int) -> Image.Image:
    """The offline image engine's product composite (or abstract scene), a little larger than the clip
    so the camera has room to move, labelled as an offline preview."""
    from PIL import Image, ImageDraw, ImageFont

    from shared.engines.offline import OfflineEngine

    images: tuple[InputImage, ...] = ()
    if recipe.get("image"):
        images = (InputImage(data=base64.b64decode(recipe["image"]), mime_type="image/webp"),)
    size = "2K" if max(width, height) > 1024 else "1K"
    still = OfflineEngine().generate(
        ImageRequest(
            prompt=str(recipe["prompt"]),
            aspect_ratio=str(recipe["aspect_ratio"]),
            size=size,
            images=images,
            negative_prompt=str(recipe.get("negative_prompt") or "") or None,
            seed=recipe.get("seed"),
            style="studio",
        )
    )
    picture = Image.open(io.BytesIO(still.data)).convert("RGB")
    scale = max(width / picture.width, height / picture.height)
    if scale > 1:
        picture = picture.resize((math.ceil(picture.width * scale), math.ceil(picture.height * scale)))
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(14, picture.height // 36))
    margin = picture.height // 12
    label = "OFFLINE PREVIEW"
    box = draw.textbbox((0, 0), label, font=font)
    x = (picture.width - (box[2] - box[0])) // 2
    y = picture.height - margin - (box[3] - box[1])
    pad = max(4, (box[3] - box[1]) // 3)
    draw.rectangle((x - pad, y - pad, x + box[2] - box[0] + pad, y + box[3] + pad), fill=(20, 20, 24))
    draw.text((x, y - box[1] // 2), label, fill=(240, 240, 240), font=font)
    return picture


def _chord(writer: Any, seconds: float) -> None:
    """A quiet A-minor chord with half-second fades: something to hear, nothing to mistake for a model's sound."""
    import numpy as np

    total = round(seconds * AUDIO_RATE)
    fade = AUDIO_RATE // 2
    for start in range(0, total, 4096):
        index = np.arange(start, min(start + 4096, total))
        t = index / AUDIO_RATE
        tone = sum(np.sin(2 * np.pi * hz * t) for hz in (220.0, 261.63, 329.63)) * (0.04 / 3)
        envelope = np.minimum(1.0, np.minimum(index / fade, (total - index) / fade))
        mono = (tone * envelope).astype(np.float32)
        writer.add_audio(np.stack([mono, mono]))


def _embedded(data: bytes) -> str:
    """The product image as a small WebP in base64 (what the operation carries): at most
    :data:`EMBEDDED_BYTES`, smaller and softer until it fits (a busy photo compresses badly)."""
    from PIL import Image, UnidentifiedImageError

    try:
        source = Image.open(io.BytesIO(data))
        source.draft("RGB", (EMBEDDED_SIDE, EMBEDDED_SIDE))
        image = source.convert("RGBA")
    except (UnidentifiedImageError, OSError) as exc:
        raise EnginePermanentError("The product image could not be read") from exc
    encoded = b""
    for side in (EMBEDDED_SIDE, EMBEDDED_SIDE * 2 // 3, EMBEDDED_SIDE // 2, EMBEDDED_SIDE // 3):
        small = image.copy()
        small.thumbnail((side, side))
        for quality in (80, 60, 40):
            buffer = io.BytesIO()
            small.save(buffer, "WEBP", quality=quality, method=4)
            encoded = buffer.getvalue()
            if len(encoded) <= EMBEDDED_BYTES:
                return base64.b64encode(encoded).decode("ascii")
    return base64.b64encode(encoded).decode("ascii")


class OfflineSpeechEngine(SpeechEngine):
    """Tone bursts, one per word (pitch from the word and voice), 16-bit mono WAV at 24 kHz."""

    name: ClassVar[str] = "offline"
    rate: ClassVar[int] = 24_000

    def speak(self, text: str, voice: str | None = None) -> AudioClip:
        words = text.split()
        if not words:
            raise EnginePermanentError("There is no text to speak")
        samples = array("h")
        gap = [0] * round(self.rate * 0.09)
        for word in words:
            seed = hashlib.sha256(f"{voice or 'default'}:{word.lower()}".encode()).digest()
            pitch = 140 + seed[0] % 120
            count = round(self.rate * (0.05 + 0.055 * len(word)))
            for n in range(count):
                envelope = math.sin(math.pi * n / count)
                samples.append(round(6000 * envelope * math.sin(2 * math.pi * pitch * n / self.rate)))
            samples.extend(gap)
        if samples.itemsize != 2:  # pragma: no cover - 'h' is 16-bit on every platform we run on
            raise RuntimeError("array('h') is not 16-bit here")
        return audio_clip_from(wav_bytes(samples.tobytes(), self.rate), "audio/wav")
