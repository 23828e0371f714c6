"""A local stand-in for Veo on Vertex AI (and Gemini TTS, and the GCS JSON API Veo writes to), over real
HTTP, so the real ``google-genai`` SDK in Vertex mode can be pointed at it with
``types.HttpOptions(base_url=stub.url)`` and a static-token credential.

It shares the Gemini stub's server (:class:`tests.stubs.gemini.GeminiStub`: lifecycle, request records,
error bodies) and serves, under ``/{version}/projects/{p}/locations/{l}/publishers/google/models/{m}``:

``:predictLongRunning``     starts a video; answers ``{"name": ".../models/{m}/operations/{uuid}"}``
``:fetchPredictOperation``  ``{"operationName": name}``: ``{"name"}`` while pending, then
                            ``{"name", "done": true, "response": {"@type", "videos": [{"bytesBase64Encoded" |
                            "gcsUri", "mimeType"}], "raiMediaFilteredCount", "raiMediaFilteredReasons"}}`` or
                            ``{"name", "done": true, "error": {"code", "message"}}``
``:generateContent``        text-to-speech (``responseModalities: ["AUDIO"]``): WAV or raw 24 kHz PCM

and ``GET /storage/v1/b/{bucket}/o/{object}?alt=media`` for the videos it "wrote" to ``storageUri``. The
bearer token is checked everywhere (401 UNAUTHENTICATED otherwise).

The wire format is what google-genai 3.4 sends (``_GenerateVideosParameters_to_vertex``)::

    {"instances": [{"prompt": "...", "image": {"bytesBase64Encoded": "<b64>", "mimeType": "image/png"},
                    "lastFrame": {...}, "referenceImages": [{"image": {...}, "referenceType": "ASSET"}]}],
     "parameters": {"sampleCount": 1, "durationSeconds": 8, "aspectRatio": "16:9", "resolution": "720p",
                    "generateAudio": true, "negativePrompt": "...", "seed": 7, "storageUri": "gs://b/p"}}

Like the service, it answers 400 INVALID_ARGUMENT for an unknown field, a duration other than 4, 6 or 8,
an aspect ratio other than 16:9 or 9:16, an unknown resolution, a last frame without a first, reference
images with a first/last frame or without a prompt or for other than 8 s, more than three of them, a
non-image MIME type or bad base64; 404 NOT_FOUND for an unknown model or operation.

Scripts: :meth:`VeoStub.push` queues how the next started operations go (:class:`VideoScenario`);
:meth:`push_poll`, :meth:`push_download` and :meth:`push_speech` queue faults (or speech answers) for the
next poll, download and TTS calls.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from tests.stubs.gemini import GeminiStub, RecordedRequest, _json, decode_b64, google_error, normalise

ROUTE = re.compile(
    r"^/(?P<version>[^/?]+)/projects/(?P<project>[^/?]+)/locations/(?P<location>[^/?]+)/publishers/google/"
    r"models/(?P<model>[^/:?]+):(?P<method>predictLongRunning|fetchPredictOperation|generateContent)$"
)
GCS_ROUTE = re.compile(r"^/storage/v1/b/(?P<bucket>[^/?]+)/o/(?P<object>[^?]+)$")
VIDEO_MODELS = frozenset({"veo-3.1-generate-001", "veo-3.1-fast-generate-001", "veo-3.1-generate-preview"})
TTS_MODELS = frozenset({"gemini-3.8-flash-tts", "gemini-2.5-flash-preview-tts", "gemini-2.5-pro-preview-tts"})
INSTANCE_FIELDS = frozenset({"prompt", "image", "lastFrame", "video", "referenceImages", "mask"})
PARAMETER_FIELDS = frozenset(
    {
        "sampleCount",
        "storageUri",
        "fps",
        "durationSeconds",
        "seed",
        "aspectRatio",
        "resolution",
        "personGeneration",
        "pubsubTopic",
        "negativePrompt",
        "enhancePrompt",
        "generateAudio",
        "compressionQuality",
        "resizeMode",
    }
)
IMAGE_MIME_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})
RESPONSE_TYPE = "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse"
DEFAULT_BUCKET = "stub-veo-output"
STUB_TOKEN = "stub-token"  # the static bearer token tests give the SDK
FILTER_REASON = (
    "Unable to generate videos because the input image violates Vertex AI's usage guidelines. "
    "Try rephrasing the prompt. Support codes: 17301594"
)
# Small real clips: the stub's answers are MP4s of the requested shape, not the requested pixels.
CLIP_SIZES = {"16:9": (128, 72), "9:16": (72, 128)}


@dataclass(frozen=True)
class VideoScenario:
    """How one started operation goes.

    ``kind``: ``video`` (done with a video after ``polls`` pending answers), ``filtered`` (done, no video,
    ``raiMediaFilteredCount``/``Reasons``), ``op_error`` (done with ``error``), or a fault answered to the
    start call itself: ``rate_limited`` (429 + Retry-After), ``server_error`` (500), ``unavailable`` (503),
    ``invalid_argument`` (400), ``permission_denied`` (403).
    """

    kind: str = "video"
    polls: int = 0
    result: str = "auto"  # video: "bytes", "gcs", or "auto" (gcs when the request named a storageUri)
    video: bytes | None = None  # video: the clip (default: a small real MP4 of the requested shape)
    reasons: tuple[str, ...] = (FILTER_REASON,)
    filtered_count: int = 1
    error_code: int = 13  # op_error: google.rpc.Code (3 INVALID_ARGUMENT, 8 RESOURCE_EXHAUSTED, 13 INTERNAL…)
    message: str | None = None
    retry_after: str | None = "7"


@dataclass
class StubOperation:
    name: str
    model: str
    scenario: VideoScenario
    request: dict[str, Any]
    polls: int = 0  # fetchPredictOperation calls answered so far
    gcs_uri: str | None = None


@dataclass
class _Queues:
    start: deque[VideoScenario] = field(default_factory=deque)
    poll: deque[VideoScenario] = field(default_factory=deque)
    download: deque[VideoScenario] = field(default_factory=deque)
    speech: deque[str] = field(default_factory=deque)


class _BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status
        self.reason = "NOT_FOUND" if status == 404 else "INVALID_ARGUMENT"


class VeoStub(GeminiStub):
    """``with VeoStub(bearer_token="t") as stub: ...``; ``stub.url`` is the SDK's ``base_url``."""

    def __init__(self, *, bearer_token: str | None = STUB_TOKEN, speech_format: str = "wav") -> None:
        super().__init__(bearer_token=bearer_token)
        self.speech_format = speech_format  # "wav" (gemini-3.8 TTS) or "pcm" (older TTS models)
        self.operations: dict[str, StubOperation] = {}
        self.objects: dict[tuple[str, str], bytes] = {}
        self._queues = _Queues()
        self._clips: dict[tuple[str, int, bool], bytes] = {}
        self._clip_lock = threading.Lock()

    # -- script -------------------------------------------------------------------------------

    def push(self, *scenarios: Any) -> VeoStub:
        """How the next started operations go (:class:`VideoScenario` or a kind)."""
        with self._lock:
            self._queues.start.extend(s if isinstance(s, VideoScenario) else VideoScenario(s) for s in scenarios)
        return self

    def push_poll(self, *kinds: str | VideoScenario) -> VeoStub:
        """Faults for the next fetchPredictOperation calls (rate_limited, server_error, unavailable)."""
        with self._lock:
            self._queues.poll.extend(k if isinstance(k, VideoScenario) else VideoScenario(k) for k in kinds)
        return self

    def push_download(self, *kinds: str | VideoScenario) -> VeoStub:
        """Faults for the next GCS downloads (rate_limited, server_error, permission_denied)."""
        with self._lock:
            self._queues.download.extend(k if isinstance(k, VideoScenario) else VideoScenario(k) for k in kinds)
        return self

    def push_speech(self, *kinds: str) -> VeoStub:
        """Answers for the next TTS calls: wav, pcm, prompt_blocked, no_audio, rate_limited, server_error."""
        with self._lock:
            self._queues.speech.extend(kinds)
        return self

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self._queues = _Queues()
            self.operations.clear()
            self.objects.clear()

    def calls_to(self, method: str) -> list[RecordedRequest]:
        """Recorded requests to one method (predictLongRunning, fetchPredictOperation, generateContent, gcs)."""
        if method == "gcs":
            return [r for r in self.requests if urlsplit(r.path).path.startswith("/storage/v1/")]
        return [r for r in self.requests if urlsplit(r.path).path.endswith(":" + method)]

    def clip(self, aspect_ratio: str, seconds: int, audio: bool) -> bytes:
        """The default answer: a small real MP4 of that aspect and length."""
        from tests.videos import make_clip

        key = (aspect_ratio, seconds, audio)
        with self._clip_lock:
            if key not in self._clips:
                width, height = CLIP_SIZES.get(aspect_ratio, (128, 72))
                self._clips[key] = make_clip(width, height, 24, float(seconds), audio=audio)
            return self._clips[key]

    # -- answering ----------------------------------------------------------------------------

    def _answer(self, record: RecordedRequest) -> tuple[int, dict[str, str], bytes]:
        path = urlsplit(record.path).path
        if self.bearer_token is not None and record.headers.get("authorization") != f"Bearer {self.bearer_token}":
            return _json(401, google_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."))
        gcs = GCS_ROUTE.match(path)
        if gcs is not None and record.method == "GET":
            return self._download(gcs["bucket"], unquote(gcs["object"]), record)
        route = ROUTE.match(path)
        if record.method != "POST" or route is None:
            return _json(404, google_error(404, "NOT_FOUND", f"Method not found: {record.method} {record.path}"))
        record.api_version, record.model = route["version"], route["model"]
        record.vertex_resource = f"projects/{route['project']}/locations/{route['location']}"
        try:
            try:
                record.wire = json.loads(record.raw or b"{}")
            except ValueError as exc:
                raise _BadRequest(f"Invalid JSON payload received. {exc}") from exc
            record.body = normalise(record.wire)
            if route["method"] == "generateContent":
                return self._speech(record)
            if route["model"] not in VIDEO_MODELS:
                resource = f"{record.vertex_resource}/publishers/google/models/{route['model']}"
                raise _BadRequest(
                    f"Publisher Model `{resource}` was not found or your project does not have access", status=404
                )
            if route["method"] == "predictLongRunning":
                return self._start(record, route)
            return self._poll(record, route)
        except _BadRequest as exc:
            return _json(exc.status, google_error(exc.status, exc.reason, exc.message))

    def _start(self, record: RecordedRequest, route: re.Match[str]) -> tuple[int, dict[str, str], bytes]:
        _validate_video_request(record.body)
        with self._lock:
            scenario = self._queues.start.popleft() if self._queues.start else VideoScenario()
        fault = _fault(scenario)
        if fault is not None:
            return fault
        resource = f"{record.vertex_resource}/publishers/google/models/{route['model']}"
        name = f"{resource}/operations/{uuid.uuid4()}"
        with self._lock:
            self.operations[name] = StubOperation(
                name=name, model=route["model"], scenario=scenario, request=record.body
            )
        return _json(200, {"name": name})

    def _poll(self, record: RecordedRequest, route: re.Match[str]) -> tuple[int, dict[str, str], bytes]:
        body = record.body
        if not isinstance(body, dict) or set(body) != {"operationName"}:
            raise _BadRequest("fetchPredictOperation takes exactly one field, operationName")
        name = str(body["operationName"])
        with self._lock:
            operation = self.operations.get(name)
            fault_scenario = self._queues.poll.popleft() if self._queues.poll else None
        if operation is None or operation.model != route["model"]:
            raise _BadRequest(f"Operation {name} was not found", status=404)
        if fault_scenario is not None:
            fault = _fault(fault_scenario)
            if fault is not None:
                return fault
        with self._lock:
            operation.polls += 1
            pending = operation.polls <= operation.scenario.polls
        if pending:
            return _json(200, {"name": name})
        return _json(200, self._done(operation))

    def _done(self, operation: StubOperation) -> dict[str, Any]:
        scenario = operation.scenario
        if scenario.kind == "op_error":
            return {
                "name": operation.name,
                "done": True,
                "error": {"code": scenario.error_code, "message": scenario.message or "Internal error encountered."},
            }
        if scenario.kind == "filtered":
            response: dict[str, Any] = {
                "@type": RESPONSE_TYPE,
                "raiMediaFilteredCount": scenario.filtered_count,
                "raiMediaFilteredReasons": list(scenario.reasons),
            }
            return {"name": operation.name, "done": True, "response": response}
        parameters = operation.request.get("parameters") or {}
        data = scenario.video or self.clip(
            str(parameters.get("aspectRatio", "16:9")),
            int(parameters.get("durationSeconds", 8)),
            bool(parameters.get("generateAudio", True)),
        )
        storage = parameters.get("storageUri")
        use_gcs = scenario.result == "gcs" or (scenario.result == "auto" and bool(storage))
        if use_gcs:
            if operation.gcs_uri is None:
                base = str(storage or f"gs://{DEFAULT_BUCKET}/veo").rstrip("/")
                bucket, _, prefix = base.removeprefix("gs://").partition("/")
                op_id = operation.name.rsplit("/", 1)[-1]
                obj = f"{prefix}/{op_id}/sample_0.mp4" if prefix else f"{op_id}/sample_0.mp4"
                with self._lock:
                    self.objects[(bucket, obj)] = data
                operation.gcs_uri = f"gs://{bucket}/{obj}"
            video: dict[str, Any] = {"gcsUri": operation.gcs_uri, "mimeType": "video/mp4"}
        else:
            video = {"bytesBase64Encoded": base64.b64encode(data).decode("ascii"), "mimeType": "video/mp4"}
        return {
            "name": operation.name,
            "done": True,
            "response": {"@type": RESPONSE_TYPE, "raiMediaFilteredCount": 0, "videos": [video]},
        }

    def _download(self, bucket: str, obj: str, record: RecordedRequest) -> tuple[int, dict[str, str], bytes]:
        if "alt=media" not in (urlsplit(record.path).query or ""):
            return _json(400, google_error(400, "INVALID_ARGUMENT", "this stub serves object data only (alt=media)"))
        with self._lock:
            fault_scenario = self._queues.download.popleft() if self._queues.download else None
            data = self.objects.get((bucket, obj))
        if fault_scenario is not None:
            fault = _fault(fault_scenario)
            if fault is not None:
                return fault
        if data is None:
            return _json(404, google_error(404, "NOT_FOUND", f"No such object: {bucket}/{obj}"))
        return 200, {"Content-Type": "video/mp4"}, data

    def _speech(self, record: RecordedRequest) -> tuple[int, dict[str, str], bytes]:
        body = record.body if isinstance(record.body, dict) else {}
        if record.model not in TTS_MODELS:
            raise _BadRequest(f"Publisher Model `{record.model}` was not found", status=404)
        config = body.get("generationConfig") or {}
        if [str(m).upper() for m in config.get("responseModalities") or []] != ["AUDIO"]:
            raise _BadRequest("A text-to-speech model answers with responseModalities [AUDIO] only")
        voice = (((config.get("speechConfig") or {}).get("voiceConfig") or {}).get("prebuiltVoiceConfig") or {}).get(
            "voiceName"
        )
        if not voice:
            raise _BadRequest("speechConfig.voiceConfig.prebuiltVoiceConfig.voiceName is required")
        texts = [p.get("text", "") for c in body.get("contents") or [] for p in c.get("parts") or []]
        if not "".join(texts).strip():
            raise _BadRequest("* GenerateContentRequest.contents: contents is not specified")
        with self._lock:
            kind = self._queues.speech.popleft() if self._queues.speech else self.speech_format
        fault = _fault(VideoScenario(kind))
        if fault is not None:
            return fault
        model = record.model or ""
        if kind == "prompt_blocked":
            return _json(200, {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "modelVersion": model})
        if kind == "no_audio":
            candidate = {"finishReason": "OTHER", "index": 0}
            return _json(200, {"candidates": [candidate], "modelVersion": model})
        seconds = max(0.5, 0.06 * len("".join(texts)))
        pcm = _speech_pcm(seconds)
        if kind == "pcm":
            inline = {"mimeType": "audio/L16;codec=pcm;rate=24000", "data": base64.b64encode(pcm).decode("ascii")}
        else:
            from shared.engines.video import wav_bytes

            inline = {"mimeType": "audio/wav", "data": base64.b64encode(wav_bytes(pcm, 24_000)).decode("ascii")}
        candidate = {
            "content": {"role": "model", "parts": [{"inlineData": inline}]},
            "finishReason": "STOP",
            "index": 0,
        }
        return _json(200, {"candidates": [candidate], "modelVersion": model})


def _fault(scenario: VideoScenario) -> tuple[int, dict[str, str], bytes] | None:
    kind = scenario.kind
    if kind == "rate_limited":
        status, headers, payload = _json(
            429, google_error(429, "RESOURCE_EXHAUSTED", scenario.message or "Quota exceeded for aiplatform.")
        )
        if scenario.retry_after is not None:
            headers["Retry-After"] = scenario.retry_after
        return status, headers, payload
    if kind == "server_error":
        return _json(500, google_error(500, "INTERNAL", scenario.message or "Internal error encountered."))
    if kind == "unavailable":
        return _json(503, google_error(503, "UNAVAILABLE", scenario.message or "The service is currently unavailable."))
    if kind == "invalid_argument":
        return _json(
            400, google_error(400, "INVALID_ARGUMENT", scenario.message or "Request contains an invalid argument.")
        )
    if kind == "permission_denied":
        return _json(403, google_error(403, "PERMISSION_DENIED", scenario.message or "Permission denied."))
    return None


def _image_field(value: Any, where: str) -> None:
    if not isinstance(value, dict) or not (set(value) <= {"bytesBase64Encoded", "gcsUri", "mimeType"}):
        raise _BadRequest(f"{where}: an image is {{bytesBase64Encoded | gcsUri, mimeType}}")
    if ("bytesBase64Encoded" in value) == ("gcsUri" in value):
        raise _BadRequest(f"{where}: exactly one of bytesBase64Encoded and gcsUri")
    if value.get("mimeType") not in IMAGE_MIME_TYPES:
        raise _BadRequest(f"{where}: mimeType {value.get('mimeType')!r} is not supported")
    if "bytesBase64Encoded" in value:
        try:
            decode_b64(str(value["bytesBase64Encoded"]))
        except (binascii.Error, ValueError) as exc:
            raise _BadRequest(f"{where}: bytesBase64Encoded is not base64") from exc


def _validate_video_request(body: Any) -> None:
    if not isinstance(body, dict):
        raise _BadRequest("Invalid JSON payload received. Expected an object.")
    unknown = set(body) - {"instances", "parameters", "labels"}
    if unknown:
        raise _BadRequest(f'Invalid JSON payload received. Unknown name "{sorted(unknown)[0]}": Cannot find field.')
    instances = body.get("instances")
    if not isinstance(instances, list) or len(instances) != 1 or not isinstance(instances[0], dict):
        raise _BadRequest("instances must hold exactly one instance")
    instance = instances[0]
    unknown = set(instance) - INSTANCE_FIELDS
    if unknown:
        raise _BadRequest(f'Invalid JSON payload received. Unknown name "{sorted(unknown)[0]}" at instances[0].')
    prompt = str(instance.get("prompt") or "").strip()
    if not prompt and "image" not in instance and "video" not in instance:
        raise _BadRequest("A prompt or an image is required")
    if "image" in instance:
        _image_field(instance["image"], "instances[0].image")
    if "lastFrame" in instance:
        if "image" not in instance:
            raise _BadRequest("lastFrame needs image (the first frame)")
        _image_field(instance["lastFrame"], "instances[0].lastFrame")
    parameters = body.get("parameters") or {}
    unknown = set(parameters) - PARAMETER_FIELDS
    if unknown:
        raise _BadRequest(f'Invalid JSON payload received. Unknown name "{sorted(unknown)[0]}" at parameters.')
    references = instance.get("referenceImages")
    if references is not None:
        if not isinstance(references, list) or not 1 <= len(references) <= 3:
            raise _BadRequest("referenceImages: one to three images")
        if "image" in instance or "lastFrame" in instance:
            raise _BadRequest("referenceImages cannot be combined with image or lastFrame")
        if not prompt:
            raise _BadRequest("referenceImages need a prompt")
        for index, reference in enumerate(references):
            if not isinstance(reference, dict) or str(reference.get("referenceType", "")).lower() not in (
                "asset",
                "style",
            ):
                raise _BadRequest(f"referenceImages[{index}].referenceType must be asset or style")
            _image_field(reference.get("image"), f"referenceImages[{index}].image")
        if parameters.get("durationSeconds", 8) != 8:
            raise _BadRequest("Videos with reference images must be 8 seconds long")
    if "durationSeconds" in parameters and parameters["durationSeconds"] not in (4, 6, 8):
        raise _BadRequest(f"Unsupported duration {parameters['durationSeconds']}: durationSeconds must be 4, 6 or 8")
    if "aspectRatio" in parameters and parameters["aspectRatio"] not in ("16:9", "9:16"):
        raise _BadRequest(f"Unsupported aspect ratio {parameters['aspectRatio']}: use 16:9 or 9:16")
    if "resolution" in parameters and parameters["resolution"] not in ("720p", "1080p", "4k"):
        raise _BadRequest(f"Unsupported resolution {parameters['resolution']}")
    if "sampleCount" in parameters and parameters["sampleCount"] not in (1, 2, 3, 4):
        raise _BadRequest("sampleCount must be between 1 and 4")
    seed = parameters.get("seed")
    if seed is not None and (not isinstance(seed, int) or not 0 <= seed <= 4_294_967_295):
        raise _BadRequest("seed must be an unsigned 32-bit integer")
    if "generateAudio" in parameters and not isinstance(parameters["generateAudio"], bool):
        raise _BadRequest("generateAudio must be a boolean")
    if "storageUri" in parameters and not str(parameters["storageUri"]).startswith("gs://"):
        raise _BadRequest("storageUri must be a gs:// URI")


def _speech_pcm(seconds: float) -> bytes:
    """16-bit little-endian mono PCM at 24 kHz: a 180 Hz tone, as long as asked."""
    import math
    from array import array

    count = round(seconds * 24_000)
    samples = array("h", (round(5000 * math.sin(2 * math.pi * 180 * n / 24_000)) for n in range(count)))
    return samples.tobytes()


__all__ = ["StubOperation", "VeoStub", "VideoScenario"]
