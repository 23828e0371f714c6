"""The image engine port: what generation and editing ask of an AI model, and how it fails.

Adapters (Gemini, the offline engine) translate their vendor's behaviour into these types, so the
services never see a vendor exception: a safety block or an unusable answer is an
:class:`EnginePermanentError` (refunded, not retried); rate limits, 5xx and timeouts are
:class:`EngineRetryableError` (the queue retries).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from shared.errors import EpoxError

AspectRatio = Literal["1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"]
ImageSize = Literal["1K", "2K", "4K"]
ASPECT_RATIOS: tuple[str, ...] = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
LONG_SIDE = {"1K": 1024, "2K": 2048, "4K": 4096}


def output_dimensions(aspect_ratio: str, size: str) -> tuple[int, int]:
    """Pixel size for an aspect ratio at a size class (the long side is 1024/2048/4096)."""
    w, h = (int(part) for part in aspect_ratio.split(":"))
    long_side = LONG_SIDE[size]
    if w >= h:
        return long_side, max(1, round(long_side * h / w))
    return max(1, round(long_side * w / h)), long_side


@dataclass(frozen=True)
class InputImage:
    data: bytes
    mime_type: str
    role: str = "product"  # product | reference | mask


@dataclass(frozen=True)
class ImageRequest:
    prompt: str
    aspect_ratio: str = "1:1"
    size: str = "1K"
    images: tuple[InputImage, ...] = ()
    negative_prompt: str | None = None
    seed: int | None = None
    style: str | None = None


@dataclass(frozen=True)
class EngineImage:
    data: bytes
    mime_type: str
    engine: str
    model: str
    text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TextRequest:
    instruction: str
    prompt: str
    context: dict[str, Any] = field(default_factory=dict)


class EngineError(EpoxError):
    retryable: ClassVar[bool] = False


class EnginePermanentError(EngineError):
    """The model refused or answered unusably; retrying the same request will not help."""

    status = 422
    code = "generation_failed"
    title = "The image could not be generated"


class ContentBlocked(EnginePermanentError):
    code = "content_blocked"
    title = "The request or its result was blocked by the model's safety filters"


class EngineRetryableError(EngineError):
    """Busy, rate-limited or timed out: try again later."""

    retryable = True
    status = 503
    code = "engine_unavailable"
    title = "The AI engine is temporarily unavailable"

    def __init__(self, detail: str | None = None, retry_after: int = 10, **extensions: Any) -> None:
        super().__init__(detail, **extensions)
        self.retry_after = retry_after
        self.headers["Retry-After"] = str(retry_after)


# What a call to an engine can answer a caller with (a route's contract lists them together).
ENGINE_ERRORS = (EnginePermanentError, ContentBlocked, EngineRetryableError)


class ImageEngine(ABC):
    """Port: an image model."""

    name: ClassVar[str]

    @abstractmethod
    def generate(self, request: ImageRequest) -> EngineImage:
        """Create (text-to-image) or transform (image-to-image) one image."""

    @abstractmethod
    def complete_text(self, request: TextRequest) -> str:
        """A short text answer (prompt enhancement)."""
