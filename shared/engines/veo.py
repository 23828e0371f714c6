"""Veo (video) and Gemini TTS (speech) through ``google-genai`` in Vertex AI mode — the only mode in which
google-genai 3.x offers ``generate_videos``.

A generation is a long-running operation: :meth:`VeoEngine.start` calls ``models.generate_videos`` and
keeps only the operation's name; :meth:`VeoEngine.poll` rebuilds the SDK's operation from that name
(``types.GenerateVideosOperation(name=...)``, which is all ``operations.get`` reads: in Vertex mode it posts
``{operationName}`` to ``{model}:fetchPredictOperation``) and reads where it stands. A finished video comes
inline or as a ``gs://`` URI (when ``output_gcs_uri`` is set), which :meth:`VeoEngine.fetch` downloads
through the GCS JSON API with the same credentials, size-capped.

As in :mod:`shared.engines.gemini`, the SDK's own retries are off and every vendor outcome is translated:
429/5xx/timeouts → :class:`EngineRetryableError` (with Retry-After), other 4xx →
:class:`EnginePermanentError`; an operation that ends without a video is a ``filtered`` or ``failed`` poll.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar
from urllib.parse import quote

from shared.config import require_vendor_settings
from shared.engines.base import (
    ContentBlocked,
    EnginePermanentError,
    EngineRetryableError,
    InputImage,
)
from shared.engines.gemini import (
    BLOCKING_FINISH_REASONS,
    RETRYABLE_STATUS,
    _enum_name,
    _is_transport_error,
    _raise_if_prompt_blocked,
    _retry_after,
)
from shared.engines.video import (
    VEO_FAST_MODEL,
    AudioClip,
    SpeechEngine,
    VideoEngine,
    VideoOperation,
    VideoOutputTooLarge,
    VideoPoll,
    VideoRequest,
    VideoResult,
    audio_clip_from,
)

if TYPE_CHECKING:
    from shared.config import Settings

T = TypeVar("T")
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
# google.rpc.Code values of a failed operation after which a new attempt may succeed.
RESTARTABLE_RPC_CODES = frozenset({2, 4, 8, 10, 13, 14})  # UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED…


@dataclass
class VeoConfig:
    """Vertex AI settings for Veo and for Gemini TTS (which may live in another location)."""

    project: str = ""
    location: str = "us-central1"
    model: str = VEO_FAST_MODEL
    speech_model: str = "gemini-3.8-flash-tts"
    speech_location: str = "global"
    voice: str = "Kore"
    output_gcs_uri: str | None = None  # gs://bucket/prefix: Veo writes there instead of answering bytes
    base_url: str | None = None  # tests: the stub (the SDK's Vertex endpoint otherwise)
    api_version: str | None = None
    storage_base_url: str = "https://storage.googleapis.com"
    timeout_seconds: float = 60.0
    download_timeout_seconds: float = 120.0
    max_video_bytes: int = 300 * 1024 * 1024
    credentials: Any = None  # None: the function's service account (application default credentials)
    use_vertex: bool = True  # google-genai offers generate_videos in Vertex AI mode only


def veo_config(settings: Settings) -> VeoConfig:
    """The engines' settings: Vertex AI in ``VEO_LOCATION`` (TTS in ``TTS_LOCATION``) of ``GCP_PROJECT``, with
    the function's own service account; ``GEMINI_BASE_URL``/``GEMINI_API_VERSION`` point them at a stub."""
    return VeoConfig(
        project=settings.gcp_project,
        location=settings.veo_location,
        model=settings.video_model,
        speech_model=settings.tts_model,
        speech_location=settings.tts_location,
        voice=settings.tts_voice,
        output_gcs_uri=settings.video_output_gcs_uri or None,
        base_url=settings.gemini_base_url or None,
        api_version=settings.gemini_api_version or None,
        timeout_seconds=settings.gemini_timeout_seconds,
        use_vertex=settings.gemini_use_vertex,
    )


class _VertexClients:
    """google-genai clients (one per location) and the credentials they share with GCS downloads."""

    def __init__(self, config: VeoConfig) -> None:
        self.config = config
        self._clients: dict[str, Any] = {}
        self._credentials: Any = config.credentials

    @property
    def credentials(self) -> Any:
        if self._credentials is None:
            import google.auth
            from google.auth.exceptions import DefaultCredentialsError

            from shared.errors import VendorNotConfigured

            try:
                self._credentials, _ = google.auth.default(scopes=list(SCOPES))
            except DefaultCredentialsError as exc:
                raise VendorNotConfigured("Vertex AI", ["GOOGLE_APPLICATION_CREDENTIALS"]) from exc
        return self._credentials

    def client(self, location: str) -> Any:
        if location not in self._clients:
            from google import genai
            from google.genai import types

            if not self.config.use_vertex:
                from shared.errors import VendorNotConfigured

                raise VendorNotConfigured("Veo (Vertex AI)", ["GEMINI_USE_VERTEX"])
            require_vendor_settings("Veo (Vertex AI)", {"GCP_PROJECT": self.config.project})
            http_options = types.HttpOptions(
                base_url=self.config.base_url,
                api_version=self.config.api_version,
                timeout=int(self.config.timeout_seconds * 1000),
                retry_options=types.HttpRetryOptions(attempts=1),
            )
            self._clients[location] = genai.Client(
                vertexai=True,
                project=self.config.project,
                location=location,
                credentials=self.credentials,
                http_options=http_options,
            )
        return self._clients[location]

    def call(self, vendor: str, call: Callable[[], T]) -> T:
        """Run one SDK call, translating its failures into the engine port's errors."""
        from google.genai import errors

        try:
            return call()
        except errors.APIError as exc:
            code = int(getattr(exc, "code", 0) or 0)
            message = str(getattr(exc, "message", "") or exc)[:300]
            if code in RETRYABLE_STATUS or code >= 500:
                raise EngineRetryableError(
                    f"{vendor} answered {code}: {message}", retry_after=_retry_after(exc)
                ) from exc
            raise EnginePermanentError(
                f"{vendor} refused the request ({code}): {message}", upstream_status=code
            ) from exc
        except (json.JSONDecodeError, errors.UnknownApiResponseError) as exc:
            raise EngineRetryableError(f"{vendor}'s answer could not be read ({type(exc).__name__})") from exc
        except Exception as exc:
            if _is_transport_error(exc):
                raise EngineRetryableError(f"{vendor} call failed: {type(exc).__name__}: {str(exc)[:200]}") from exc
            raise


class VeoEngine(VideoEngine):
    name: ClassVar[str] = "veo"

    def __init__(self, config: VeoConfig, clients: _VertexClients | None = None) -> None:
        self.config = config
        self._vertex = clients or _VertexClients(config)

    def start(self, request: VideoRequest) -> VideoOperation:
        from google.genai import types

        model = request.model or self.config.model
        source = types.GenerateVideosSource(
            prompt=request.prompt.strip() or None,
            image=_image(request.image) if request.image is not None else None,
        )
        config = types.GenerateVideosConfig(
            number_of_videos=1,
            duration_seconds=request.duration_seconds,
            aspect_ratio=request.aspect_ratio,
            resolution=request.resolution,
            generate_audio=request.audio,
            negative_prompt=request.negative_prompt or None,
            seed=request.seed,
            last_frame=_image(request.last_frame) if request.last_frame is not None else None,
            reference_images=[
                types.VideoGenerationReferenceImage(
                    image=_image(image), reference_type=types.VideoGenerationReferenceType.ASSET
                )
                for image in request.reference_images
            ]
            or None,
            output_gcs_uri=self.config.output_gcs_uri or None,
        )
        client = self._vertex.client(self.config.location)
        operation = self._vertex.call(
            "Veo", lambda: client.models.generate_videos(model=model, source=source, config=config)
        )
        name = getattr(operation, "name", None)
        if not name:
            raise EngineRetryableError("Veo started no operation (its answer had no name)")
        return VideoOperation(name=str(name), engine=self.name, model=model)

    def poll(self, operation: VideoOperation) -> VideoPoll:
        from google.genai import types

        if operation.engine != self.name:
            raise EnginePermanentError(f"Veo cannot poll a {operation.engine!r} operation")
        client = self._vertex.client(self.config.location)
        # All operations.get reads of the operation is its name (Vertex: POST {model}:fetchPredictOperation
        # {operationName}); the field is declared on the SDK's Operation mixin, hence model_validate.
        sdk_operation = types.GenerateVideosOperation.model_validate({"name": operation.name})
        current = self._vertex.call("Veo", lambda: client.operations.get(sdk_operation))
        return _poll_from(current)

    def fetch(self, result: VideoResult) -> bytes:
        if result.data is not None:
            if len(result.data) > self.config.max_video_bytes:
                raise VideoOutputTooLarge(
                    f"The video is {len(result.data)} bytes", max_bytes=self.config.max_video_bytes
                )
            return result.data
        return self._download(str(result.gcs_uri))

    def _download(self, uri: str) -> bytes:
        import httpx
        from google.auth.exceptions import RefreshError, TransportError

        bucket, _, obj = uri.removeprefix("gs://").partition("/")
        if not uri.startswith("gs://") or not bucket or not obj:
            raise EnginePermanentError(f"Veo gave a video location that is not a gs:// object: {uri[:200]}")
        credentials = self._vertex.credentials
        try:
            if not credentials.valid:
                from google.auth.transport.requests import Request

                credentials.refresh(Request())
        except TransportError as exc:
            raise EngineRetryableError(f"Could not refresh the Google credentials: {exc}") from exc
        except RefreshError as exc:
            raise EnginePermanentError(f"Google refused our credentials: {exc}") from exc
        url = (
            f"{self.config.storage_base_url.rstrip('/')}/storage/v1/b/{quote(bucket, safe='')}"
            f"/o/{quote(obj, safe='')}?alt=media"
        )
        cap = self.config.max_video_bytes
        try:
            with (
                httpx.Client(timeout=self.config.download_timeout_seconds) as http,
                http.stream("GET", url, headers={"Authorization": f"Bearer {credentials.token}"}) as response,
            ):
                if response.status_code != 200:
                    response.read()
                    _raise_for_storage(response.status_code, response.headers.get("retry-after"), response.text)
                declared = int(response.headers.get("content-length") or 0)
                if declared > cap:
                    raise VideoOutputTooLarge(f"The video is {declared} bytes", max_bytes=cap)
                chunks, total = [], 0
                for chunk in response.iter_bytes():
                    total += len(chunk)
                    if total > cap:
                        raise VideoOutputTooLarge(f"The video is over {cap} bytes", max_bytes=cap)
                    chunks.append(chunk)
        except httpx.TransportError as exc:
            raise EngineRetryableError(f"Downloading the video failed: {type(exc).__name__}: {exc}") from exc
        return b"".join(chunks)


def _raise_for_storage(status: int, retry_after: str | None, text: str) -> None:
    detail = f"Cloud Storage answered {status} for the video: {text[:200]}"
    if status in RETRYABLE_STATUS or status >= 500:
        wait = int(retry_after) if retry_after and retry_after.isdigit() else 10
        raise EngineRetryableError(detail, retry_after=max(1, min(wait, 600)))
    raise EnginePermanentError(detail, upstream_status=status)


def _image(image: InputImage) -> Any:
    from google.genai import types

    return types.Image(image_bytes=image.data, mime_type=image.mime_type)


def _poll_from(operation: Any) -> VideoPoll:
    """Where an SDK ``GenerateVideosOperation`` stands, in the port's terms."""
    if not getattr(operation, "done", None):
        metadata = getattr(operation, "metadata", None) or {}
        progress = metadata.get("progressPercent") if isinstance(metadata, dict) else None
        return VideoPoll.pending(progress=int(progress) if isinstance(progress, (int, float)) else None)
    error = getattr(operation, "error", None)
    if error:
        code = int(error.get("code", 0) or 0) if isinstance(error, dict) else 0
        message = str(error.get("message", "") if isinstance(error, dict) else error)[:300]
        return VideoPoll.failed(f"Veo failed ({code}): {message}", restartable=code in RESTARTABLE_RPC_CODES)
    response = getattr(operation, "response", None) or getattr(operation, "result", None)
    videos = list(getattr(response, "generated_videos", None) or [])
    for generated in videos:
        video = getattr(generated, "video", None)
        if video is None:
            continue
        mime = str(getattr(video, "mime_type", None) or "video/mp4")
        data = getattr(video, "video_bytes", None)
        if data:
            return VideoPoll.done(
                VideoResult(mime_type=mime, data=data if isinstance(data, bytes) else base64.b64decode(data))
            )
        uri = getattr(video, "uri", None)
        if uri:
            return VideoPoll.done(VideoResult(mime_type=mime, gcs_uri=str(uri)))
    count = int(getattr(response, "rai_media_filtered_count", None) or 0)
    reasons = [str(r) for r in getattr(response, "rai_media_filtered_reasons", None) or []]
    if count or reasons:
        return VideoPoll.filtered(reasons, count)
    return VideoPoll.failed("Veo finished without a video and without saying why")


class GeminiSpeechEngine(SpeechEngine):
    """Gemini TTS on Vertex AI: ``generate_content`` with ``response_modalities=["AUDIO"]``. Newer models
    answer WAV, older ones raw 24 kHz PCM; both come back as WAV (:func:`audio_clip_from`)."""

    name: ClassVar[str] = "gemini"

    def __init__(self, config: VeoConfig, clients: _VertexClients | None = None) -> None:
        self.config = config
        self._vertex = clients or _VertexClients(config)

    def speak(self, text: str, voice: str | None = None) -> AudioClip:
        from google.genai import types

        if not text.strip():
            raise EnginePermanentError("There is no text to speak")
        config = types.GenerateContentConfig(
            response_modalities=["AUDIO"],
            speech_config=types.SpeechConfig(
                voice_config=types.VoiceConfig(
                    prebuilt_voice_config=types.PrebuiltVoiceConfig(voice_name=voice or self.config.voice)
                )
            ),
        )
        client = self._vertex.client(self.config.speech_location)
        response = self._vertex.call(
            "Gemini TTS",
            lambda: client.models.generate_content(model=self.config.speech_model, contents=text, config=config),
        )
        _raise_if_prompt_blocked(response)
        candidates = getattr(response, "candidates", None) or []
        candidate = candidates[0] if candidates else None
        content = getattr(candidate, "content", None)
        for part in getattr(content, "parts", None) or []:
            inline = getattr(part, "inline_data", None)
            if inline is not None and getattr(inline, "data", None):
                data = inline.data if isinstance(inline.data, bytes) else base64.b64decode(inline.data)
                return audio_clip_from(data, str(getattr(inline, "mime_type", None) or "audio/wav"))
        finish = _enum_name(getattr(candidate, "finish_reason", None)) if candidate is not None else None
        if finish in BLOCKING_FINISH_REASONS:
            raise ContentBlocked(f"The speech model stopped without audio ({finish})", finish_reason=finish)
        raise EnginePermanentError(f"The speech model returned no audio (finish reason {finish or 'none'})")


def veo_engines(config: VeoConfig) -> tuple[VeoEngine, GeminiSpeechEngine]:
    """Both engines over one set of clients and credentials (what a composition root builds)."""
    clients = _VertexClients(config)
    return VeoEngine(config, clients), GeminiSpeechEngine(config, clients)
