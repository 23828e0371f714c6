"""Gemini through ``google-genai``: the Developer API (API key) or Vertex AI (project/location with
application default credentials), chosen by configuration.

The SDK's own retries are off (one attempt): retries belong to the queue, which knows how many
attempts a task has left. Every SDK outcome is translated into the engine port's types.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from shared.config import require_vendor_settings
from shared.engines.base import (
    ContentBlocked,
    EngineImage,
    EnginePermanentError,
    EngineRetryableError,
    ImageEngine,
    ImageRequest,
    TextRequest,
)

if TYPE_CHECKING:
    from shared.config import Settings

# Finish reasons that mean "the model chose not to give an image": permanent, refunded.
BLOCKING_FINISH_REASONS = frozenset(
    {
        "SAFETY",
        "IMAGE_SAFETY",
        "PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
        "NO_IMAGE",
        "IMAGE_OTHER",
        "OTHER",
        "LANGUAGE",
        "MALFORMED_FUNCTION_CALL",
    }
)
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclass
class GeminiConfig:
    image_model: str = "gemini-3.1-flash-image"
    text_model: str = "gemini-3.1-flash-lite"
    api_key: str = ""
    use_vertex: bool = False
    project: str = ""
    location: str = "global"
    base_url: str | None = None
    api_version: str | None = None
    timeout_seconds: float = 120.0
    credentials: Any = None  # Vertex AI: None = the function's service account (ADC)

    @classmethod
    def from_settings(cls, settings: Settings) -> GeminiConfig:
        return cls(
            image_model=settings.gemini_image_model,
            text_model=settings.gemini_text_model,
            api_key=settings.gemini_api_key.get_secret_value(),
            use_vertex=settings.gemini_use_vertex,
            project=settings.gcp_project,
            location=settings.gemini_location,
            base_url=settings.gemini_base_url or None,
            api_version=settings.gemini_api_version or None,
            timeout_seconds=settings.gemini_timeout_seconds,
        )


class GeminiEngine(ImageEngine):
    name: ClassVar[str] = "gemini"

    def __init__(self, config: GeminiConfig) -> None:
        self.config = config
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from google import genai
            from google.genai import types

            if self.config.use_vertex:
                require_vendor_settings("Gemini (Vertex AI)", {"GCP_PROJECT": self.config.project})
            else:
                require_vendor_settings("Gemini", {"GEMINI_API_KEY": self.config.api_key})
            http_options = types.HttpOptions(
                base_url=self.config.base_url,
                api_version=self.config.api_version,
                timeout=int(self.config.timeout_seconds * 1000),
                retry_options=types.HttpRetryOptions(attempts=1),
            )
            if self.config.use_vertex:
                self._client = genai.Client(
                    vertexai=True,
                    project=self.config.project,
                    location=self.config.location,
                    credentials=self.config.credentials,
                    http_options=http_options,
                )
            else:
                # vertexai=False explicitly: left unset, GOOGLE_GENAI_USE_VERTEXAI in the environment
                # would switch the client to Vertex AI behind the configuration's back.
                self._client = genai.Client(vertexai=False, api_key=self.config.api_key, http_options=http_options)
        return self._client

    def generate(self, request: ImageRequest) -> EngineImage:
        from google.genai import types

        parts: list[Any] = [
            types.Part.from_bytes(data=image.data, mime_type=image.mime_type) for image in request.images
        ]
        parts.append(types.Part.from_text(text=_prompt_text(request)))
        config = types.GenerateContentConfig(
            response_modalities=["TEXT", "IMAGE"],
            image_config=types.ImageConfig(aspect_ratio=request.aspect_ratio, image_size=request.size),
            candidate_count=1,
            seed=request.seed,
        )
        response = self._call(
            lambda: self.client.models.generate_content(
                model=self.config.image_model, contents=[types.Content(role="user", parts=parts)], config=config
            )
        )
        return self._image_from(response)

    def complete_text(self, request: TextRequest) -> str:
        from google.genai import types

        config = types.GenerateContentConfig(
            system_instruction=request.instruction, response_modalities=["TEXT"], temperature=0.7, candidate_count=1
        )
        response = self._call(
            lambda: self.client.models.generate_content(
                model=self.config.text_model, contents=request.prompt, config=config
            )
        )
        _raise_if_prompt_blocked(response)
        text = (getattr(response, "text", None) or "").strip()
        if not text:
            raise EnginePermanentError("The text model returned no text")
        return text

    def _call(self, call: Any) -> Any:
        import json

        from google.genai import errors

        client = self.client  # built outside the try: a configuration error is not "busy, retry"
        del client
        try:
            return call()
        except errors.APIError as exc:
            code = int(getattr(exc, "code", 0) or 0)
            message = str(getattr(exc, "message", "") or exc)[:300]
            if code in RETRYABLE_STATUS or code >= 500:
                raise EngineRetryableError(f"Gemini answered {code}: {message}", retry_after=_retry_after(exc)) from exc
            raise EnginePermanentError(f"Gemini refused the request ({code}): {message}", upstream_status=code) from exc
        except (json.JSONDecodeError, errors.UnknownApiResponseError) as exc:
            # An answer we cannot read is the service's fault; the next attempt may be fine.
            raise EngineRetryableError(
                f"Gemini's answer could not be read ({type(exc).__name__}): {str(exc)[:200]}"
            ) from exc
        except Exception as exc:
            if _is_transport_error(exc):
                raise EngineRetryableError(f"Gemini call failed: {type(exc).__name__}: {str(exc)[:200]}") from exc
            raise

    def _image_from(self, response: Any) -> EngineImage:
        _raise_if_prompt_blocked(response)
        candidates = getattr(response, "candidates", None) or []
        if not candidates:
            raise EnginePermanentError("Gemini returned no candidates")
        candidate = candidates[0]
        finish = _enum_name(getattr(candidate, "finish_reason", None))
        texts: list[str] = []
        content = getattr(candidate, "content", None)
        for part in getattr(content, "parts", None) or []:
            if getattr(part, "thought", None):
                continue  # a thinking model's interim draft (text or image), not the answer
            inline = getattr(part, "inline_data", None)
            if inline is not None and getattr(inline, "data", None):
                data = inline.data if isinstance(inline.data, bytes) else base64.b64decode(inline.data)
                return EngineImage(
                    data=data,
                    mime_type=str(getattr(inline, "mime_type", None) or "image/png"),
                    engine=self.name,
                    model=self.config.image_model,
                    text=" ".join(texts) or None,
                    metadata={"finish_reason": finish},
                )
            if getattr(part, "text", None):
                texts.append(str(part.text))
        if finish in BLOCKING_FINISH_REASONS:
            raise ContentBlocked(f"The model stopped without an image ({finish})", finish_reason=finish)
        said = (" The model said: " + " ".join(texts)[:300]) if texts else ""
        raise EnginePermanentError(
            f"The model returned no image (finish reason {finish or 'none'}).{said}", finish_reason=finish
        )


def _prompt_text(request: ImageRequest) -> str:
    text = request.prompt
    if request.negative_prompt:
        text += f"\n\nAvoid: {request.negative_prompt}"
    return text


def _enum_name(value: Any) -> str | None:
    if value is None:
        return None
    return str(getattr(value, "name", value)).split(".")[-1]


def _raise_if_prompt_blocked(response: Any) -> None:
    feedback = getattr(response, "prompt_feedback", None)
    reason = _enum_name(getattr(feedback, "block_reason", None)) if feedback is not None else None
    if reason and reason != "BLOCKED_REASON_UNSPECIFIED":
        message = getattr(feedback, "block_reason_message", None)
        raise ContentBlocked(
            f"The prompt was blocked ({reason}){': ' + message if message else ''}", block_reason=reason
        )


def _is_transport_error(exc: BaseException) -> bool:
    """Timeouts and connection failures, from httpx or the SDK's vendored httpx fork."""
    for cls in type(exc).__mro__:
        module = cls.__module__.split(".", 1)[0]
        if module in ("httpx", "httpx2", "httpcore", "httpcore2") and cls.__name__ in (
            "TransportError",
            "TimeoutException",
            "NetworkError",
            "RemoteProtocolError",
            "ProtocolError",
        ):
            return True
    return isinstance(exc, (TimeoutError, ConnectionError))


def _retry_after(exc: Any) -> int:
    """Seconds to wait: the Retry-After header, else the google.rpc.RetryInfo ``retryDelay`` ("37s")
    that the Gemini API puts in a 429's error details, else 10."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is not None:
        value = headers.get("retry-after")
        if value and str(value).isdigit():
            return max(1, min(int(value), 600))
    details = getattr(exc, "details", None)
    error = details.get("error", details) if isinstance(details, dict) else {}
    for item in (error.get("details") if isinstance(error, dict) else None) or []:
        delay = item.get("retryDelay") if isinstance(item, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return max(1, min(math.ceil(float(delay[:-1])), 600))
            except ValueError:
                pass
    return 10
