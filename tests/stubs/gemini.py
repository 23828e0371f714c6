"""A local stand-in for the Gemini Developer API, spoken over real HTTP so the real ``google-genai``
SDK can be pointed at it with ``types.HttpOptions(base_url=stub.url, api_version="v1beta")``.

It serves exactly one method, ``POST /{api_version}/models/{model}:generateContent`` (or Vertex AI's
``/{api_version}/projects/{p}/locations/{l}/publishers/google/models/{model}:generateContent``, where
``bearer_token`` is checked; 404 for anything else), records every request that arrives (method,
path, lower-cased headers, raw and parsed body) and answers from a script: scenarios pushed with
:meth:`GeminiStub.push` are used first, in order, then the default (``"auto"``: an image when
``responseModalities`` asks for one, text otherwise).

The wire format is the Developer API's camelCase JSON, as the SDK (3.x) sends it::

    POST /v1beta/models/gemini-3.1-flash-image:generateContent
    x-goog-api-key: <key>          content-type: application/json
    {"contents": [{"role": "user", "parts": [{"inlineData": {"mime_type": "image/jpeg", "data": "<b64>"}},
                                             {"text": "..."}]}],
     "systemInstruction": {"role": "user", "parts": [{"text": "..."}]},
     "generationConfig": {"responseModalities": ["TEXT", "IMAGE"], "candidateCount": 1, "seed": 7,
                          "imageConfig": {"aspectRatio": "16:9", "imageSize": "2K"}}}

Note ``inlineData.mime_type``: the SDK writes that one field under its proto name, which Google's
JSON parser accepts as readily as ``mimeType``. The stub does the same: every key is folded to
camelCase before it is read (``RecordedRequest.body``; the exact JSON is ``RecordedRequest.wire``).
Likewise ``data`` is URL-safe base64 (pydantic's ``ser_json_bytes="base64"``); proto JSON accepts
either alphabet, with or without padding, and so does :func:`decode_b64`.

Like the real service, a body that is not JSON, an unknown request field, undecodable base64, an
unknown aspect ratio or a lower-case image size are answered 400 INVALID_ARGUMENT; with ``api_key`` set, a
missing or different ``x-goog-api-key`` is answered 400 (key not valid) as well.

Scenarios (a name, or a :class:`Scenario` with options):

``image``           200, parts ``[{text}, {inlineData: PNG}]`` at the size implied by ``imageConfig``
                    (``image_format="JPEG"``/``"WEBP"``: that format and MIME type instead of PNG)
``text``            200, parts ``[{text}]``: a text model's answer (prompt enhancement)
``text_only``       200, an image model that answered with words only (finish reason STOP)
``prompt_blocked``  200, no candidates, ``promptFeedback.blockReason`` (``SAFETY``)
``image_safety``    200, a candidate with finish reason ``IMAGE_SAFETY`` and no content
``no_image``        200, a candidate with finish reason ``NO_IMAGE`` and no content
``rate_limited``    429 RESOURCE_EXHAUSTED, ``Retry-After`` header and/or a ``RetryInfo`` detail
``server_error``    500 INTERNAL
``unavailable``     503 UNAVAILABLE (model overloaded)
``invalid_argument`` 400 INVALID_ARGUMENT
``malformed``       200 with a body that is not JSON (a truncated answer)
``slow``            waits ``delay`` seconds (longer than the client's timeout), then answers an image
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import re
import socket
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

# The Developer API's route, and Vertex AI's (``vertexai=True``), which names the project and location.
ROUTE = re.compile(
    r"^/(?P<version>[^/?]+)/(?:projects/(?P<project>[^/?]+)/locations/(?P<location>[^/?]+)/publishers/google/)?"
    r"models/(?P<model>[^/:?]+):generateContent$"
)
KINDS = frozenset(
    {
        "auto",
        "image",
        "text",
        "text_only",
        "prompt_blocked",
        "image_safety",
        "no_image",
        "rate_limited",
        "server_error",
        "unavailable",
        "invalid_argument",
        "malformed",
        "slow",
    }
)
REQUEST_FIELDS = frozenset(
    {
        "model",
        "contents",
        "systemInstruction",
        "generationConfig",
        "safetySettings",
        "tools",
        "toolConfig",
        "cachedContent",
        "serviceTier",
        "store",
    }
)
ASPECT_RATIOS = frozenset({"1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"})
LONG_SIDE = {"1K": 1024, "2K": 2048, "4K": 4096}
IMAGE_MIME_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
TEXT_MODEL_ANSWER = "A crisp studio shot of the product on a seamless backdrop, soft key light."
IMAGE_MODEL_TEXT = "Here is the product photo you asked for."
REFUSAL_TEXT = "I can describe this scene, but I cannot draw it for you."


@dataclass(frozen=True)
class Scenario:
    """One scripted answer. Only the options that matter for ``kind`` are used."""

    kind: str
    text: str | None = None  # the text part (image/text/text_only/no_image)
    retry_after: str | None = "7"  # rate_limited: the Retry-After header; None sends none
    retry_delay: str | None = None  # rate_limited: RetryInfo.retryDelay in the error details, e.g. "37s"
    delay: float = 2.0  # slow: seconds before answering
    size: tuple[int, int] | None = None  # image: force the pixel size instead of imageConfig's
    colour: tuple[int, int, int] = (200, 40, 40)  # image: the picture's main colour
    image_format: str = "PNG"  # image: PNG, JPEG or WEBP (the inlineData's bytes and mimeType)
    block_reason: str = "SAFETY"  # prompt_blocked
    thought_image: bool = False  # image: precede the answer with a thought (interim) text and image
    message: str | None = None  # error kinds: the error message

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown scenario {self.kind!r}; expected one of {sorted(KINDS)}")
        if self.image_format not in IMAGE_MIME_TYPES:
            raise ValueError(f"unknown image format {self.image_format!r}; expected one of {sorted(IMAGE_MIME_TYPES)}")


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    raw: bytes
    wire: Any = None  # the JSON exactly as sent (None when empty or not JSON)
    body: Any = None  # the same, keys folded to camelCase (what the service reads): assert on this
    api_version: str | None = None
    model: str | None = None
    vertex_resource: str | None = None  # "projects/P/locations/L" on Vertex AI's route
    status: int | None = None  # what the stub answered (None if the client left first)
    response: bytes = b""

    @property
    def parts(self) -> list[dict[str, Any]]:
        """The parts of every content, in order."""
        contents = (self.body or {}).get("contents") or []
        return [part for content in contents for part in content.get("parts") or []]

    @property
    def texts(self) -> list[str]:
        return [part["text"] for part in self.parts if "text" in part]

    @property
    def inline_images(self) -> list[tuple[str, bytes]]:
        """(mime type, decoded bytes) of every inlineData part, in order."""
        return [
            (part["inlineData"]["mimeType"], decode_b64(part["inlineData"]["data"]))
            for part in self.parts
            if "inlineData" in part
        ]

    @property
    def generation_config(self) -> dict[str, Any]:
        return dict((self.body or {}).get("generationConfig") or {})


def decode_b64(text: str) -> bytes:
    """Proto JSON ``bytes``: standard or URL-safe alphabet, padded or not (the SDK sends URL-safe)."""
    cleaned = text.replace("-", "+").replace("_", "/")
    return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)


def image_dimensions(aspect_ratio: str, image_size: str) -> tuple[int, int]:
    """The stub's pixel size for an imageConfig: the long side 1024/2048/4096, the short side to
    the ratio rounded to a multiple of 16 (the service's own sizes are close to these)."""
    w, h = (int(value) for value in aspect_ratio.split(":"))
    long_side = LONG_SIDE[image_size]
    short = max(16, round(long_side * min(w, h) / max(w, h) / 16) * 16)
    return (long_side, short) if w >= h else (short, long_side)


def png_bytes(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    """A real PNG: a light field with a coloured block in the middle (cheap to encode even at 4K)."""
    return image_bytes(size, colour, "PNG")


def image_bytes(size: tuple[int, int], colour: tuple[int, int, int], image_format: str = "PNG") -> bytes:
    """The stub's picture (see :func:`png_bytes`) encoded as PNG, JPEG or WebP."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, (236, 236, 240))
    width, height = size
    ImageDraw.Draw(image).rectangle((width // 4, height // 4, width * 3 // 4, height * 3 // 4), fill=colour)
    buffer = io.BytesIO()
    if image_format == "PNG":
        image.save(buffer, "PNG", compress_level=1)
    else:
        image.save(buffer, image_format, quality=90)
    return buffer.getvalue()


def google_error(code: int, status: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return {"error": error}


class _BadRequest(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class GeminiStub:
    """``with GeminiStub() as stub: ...`` — or :meth:`start`/:meth:`stop`. ``stub.url`` is the
    base URL to give the SDK; ``stub.requests`` is everything that arrived."""

    def __init__(
        self, *, default: str | Scenario = "auto", api_key: str | None = None, bearer_token: str | None = None
    ) -> None:
        self.default = default if isinstance(default, Scenario) else Scenario(default)
        self.api_key = api_key
        self.bearer_token = bearer_token  # Vertex AI: the OAuth access token the client must present
        self._queue: deque[Scenario] = deque()
        self._requests: list[RecordedRequest] = []
        self._sent_images: list[bytes] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> GeminiStub:
        stub = self

        class Handler(_Handler):
            owner = stub

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def process_request(self, request: Any, client_address: Any) -> None:
                with stub._lock:
                    stub._connections.add(request)
                super().process_request(request, client_address)

            def shutdown_request(self, request: Any) -> None:
                with stub._lock:
                    stub._connections.discard(request)
                super().shutdown_request(request)

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # clients that time out and hang up are part of the script

        self._stopping.clear()
        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="gemini-stub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes "slow" handlers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            with self._lock:
                connections = list(self._connections)
            for connection in connections:  # idle keep-alive connections: end their threads now
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> GeminiStub:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the stub is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- script and records ------------------------------------------------------------------

    def push(self, *scenarios: str | Scenario) -> GeminiStub:
        """Queue answers for the next generateContent calls, in order."""
        with self._lock:
            self._queue.extend(s if isinstance(s, Scenario) else Scenario(s) for s in scenarios)
        return self

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request that arrived, in order (including ones answered 404/400)."""
        with self._lock:
            return list(self._requests)

    @property
    def calls(self) -> list[RecordedRequest]:
        """The generateContent requests only."""
        return [r for r in self.requests if r.model is not None]

    @property
    def last(self) -> RecordedRequest:
        calls = self.calls
        if not calls:
            raise AssertionError("the stub received no generateContent request")
        return calls[-1]

    @property
    def sent_images(self) -> list[bytes]:
        """The bytes of every image the stub answered with (thought images excluded)."""
        with self._lock:
            return list(self._sent_images)

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self._requests.clear()
            self._sent_images.clear()

    # -- answering ---------------------------------------------------------------------------

    def _next(self) -> Scenario:
        with self._lock:
            return self._queue.popleft() if self._queue else self.default

    def _record(self, record: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(record)

    def _answer(self, record: RecordedRequest) -> tuple[int, dict[str, str], bytes]:
        """(status, extra headers, body) for one request."""
        route = ROUTE.match(record.path)
        if record.method != "POST" or route is None:
            return _json(404, google_error(404, "NOT_FOUND", f"Method not found: {record.method} {record.path}"))
        record.api_version, record.model = route["version"], route["model"]
        if route["project"]:
            record.vertex_resource = f"projects/{route['project']}/locations/{route['location']}"
            if self.bearer_token is not None and record.headers.get("authorization") != f"Bearer {self.bearer_token}":
                unauthenticated = "Request had invalid authentication credentials."
                return _json(401, google_error(401, "UNAUTHENTICATED", unauthenticated))
        try:
            if self.api_key is not None and record.headers.get("x-goog-api-key") != self.api_key:
                raise _BadRequest("API key not valid. Please pass a valid API key.")
            try:
                record.wire = json.loads(record.raw)
            except ValueError as exc:
                raise _BadRequest(f"Invalid JSON payload received. {exc}") from exc
            record.body = normalise(record.wire)
            _validate(record.body)
        except _BadRequest as exc:
            return _json(400, google_error(400, "INVALID_ARGUMENT", exc.message))
        scenario = self._next()
        if scenario.kind == "slow":
            self._stopping.wait(scenario.delay)
            scenario = Scenario("image", text=scenario.text, size=scenario.size, colour=scenario.colour)
        return self._respond(scenario, record)

    def _respond(self, s: Scenario, record: RecordedRequest) -> tuple[int, dict[str, str], bytes]:
        model = record.model or ""
        kind = s.kind
        if kind == "auto":
            modalities = [str(m).upper() for m in record.generation_config.get("responseModalities") or []]
            kind = "image" if "IMAGE" in modalities else "text"
        if kind == "image":
            image_config = record.generation_config.get("imageConfig") or {}
            size = s.size or image_dimensions(
                image_config.get("aspectRatio", "1:1"), image_config.get("imageSize", "1K")
            )
            data = image_bytes(size, s.colour, s.image_format)
            with self._lock:
                self._sent_images.append(data)
            parts: list[dict[str, Any]] = []
            if s.thought_image:
                draft = png_bytes((64, 64), (20, 200, 20))
                parts += [
                    {"text": "Composing the shot: product centred, soft shadow.", "thought": True},
                    {"inlineData": {"mimeType": "image/png", "data": _b64(draft)}, "thought": True},
                ]
            parts += [
                {"text": s.text if s.text is not None else IMAGE_MODEL_TEXT},
                {
                    "inlineData": {"mimeType": IMAGE_MIME_TYPES[s.image_format], "data": _b64(data)},
                    "thoughtSignature": _b64(b"sig"),
                },
            ]
            return _json(200, _content_response(model, parts, "STOP", image_tokens=1120))
        if kind in ("text", "text_only"):
            default = TEXT_MODEL_ANSWER if kind == "text" else REFUSAL_TEXT
            parts = [{"text": s.text if s.text is not None else default}]
            return _json(200, _content_response(model, parts, "STOP"))
        if kind in ("image_safety", "no_image"):
            reason = "IMAGE_SAFETY" if kind == "image_safety" else "NO_IMAGE"
            candidate: dict[str, Any] = {"finishReason": reason, "index": 0}
            if s.text is not None:
                candidate["content"] = {"role": "model", "parts": [{"text": s.text}]}
            return _json(200, {"candidates": [candidate], "usageMetadata": _usage(), "modelVersion": model})
        if kind == "prompt_blocked":
            body = {
                "promptFeedback": {
                    "blockReason": s.block_reason,
                    "safetyRatings": [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}],
                },
                "usageMetadata": _usage(),
                "modelVersion": model,
            }
            return _json(200, body)
        if kind == "rate_limited":
            details: list[dict[str, Any]] = [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_requests"}],
                }
            ]
            if s.retry_delay is not None:
                details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": s.retry_delay})
            message = s.message or "You exceeded your current quota, please check your plan and billing details."
            status, headers, payload = _json(429, google_error(429, "RESOURCE_EXHAUSTED", message, details))
            if s.retry_after is not None:
                headers["Retry-After"] = s.retry_after
            return status, headers, payload
        if kind == "server_error":
            message = (
                s.message or "An internal error has occurred. Please retry or report in the troubleshooting guide."
            )
            return _json(500, google_error(500, "INTERNAL", message))
        if kind == "unavailable":
            return _json(
                503, google_error(503, "UNAVAILABLE", s.message or "The model is overloaded. Try again later.")
            )
        if kind == "invalid_argument":
            return _json(
                400, google_error(400, "INVALID_ARGUMENT", s.message or "Request contains an invalid argument.")
            )
        if kind == "malformed":
            return 200, {"Content-Type": "application/json; charset=UTF-8"}, b'{"candidates": [{"content": {"par'
        raise AssertionError(f"unhandled scenario {kind}")


class _Handler(BaseHTTPRequestHandler):
    owner: GeminiStub
    protocol_version = "HTTP/1.1"
    server_version = "GeminiStub/1"

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        record = RecordedRequest(
            method=self.command,
            path=self.path,
            headers={name.lower(): value for name, value in self.headers.items()},
            raw=raw,
        )
        self.owner._record(record)
        status, headers, payload = self.owner._answer(record)
        record.status, record.response = status, payload
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:  # the client gave up (timeout) before the answer
            record.status = None
            self.close_connection = True

    def do_POST(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _json(status: int, body: Any) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json; charset=UTF-8"}, json.dumps(body).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _usage() -> dict[str, Any]:
    return {
        "promptTokenCount": 12,
        "totalTokenCount": 12,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 12}],
    }


def _content_response(model: str, parts: list[dict[str, Any]], finish: str, image_tokens: int = 0) -> dict[str, Any]:
    usage = _usage()
    output_tokens = 9 + image_tokens
    usage.update(candidatesTokenCount=output_tokens, totalTokenCount=usage["promptTokenCount"] + output_tokens)
    if image_tokens:
        usage["candidatesTokensDetails"] = [{"modality": "IMAGE", "tokenCount": image_tokens}]
    return {
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}],
        "usageMetadata": usage,
        "modelVersion": model,
        "responseId": "stub-response-1",
    }


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def normalise(value: Any) -> Any:
    """The body as the service reads it: Google's JSON parser takes a field's proto name
    (``mime_type``) or its JSON name (``mimeType``) alike, so both are folded to camelCase."""
    if isinstance(value, dict):
        return {(_camel(k) if not k.startswith("@") else k): normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise(item) for item in value]
    return value


def _validate(body: Any) -> None:
    if not isinstance(body, dict):
        raise _BadRequest("Invalid JSON payload received. Expected an object.")
    unknown = set(body) - REQUEST_FIELDS
    if unknown:
        raise _BadRequest(f'Invalid JSON payload received. Unknown name "{sorted(unknown)[0]}": Cannot find field.')
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _BadRequest("* GenerateContentRequest.contents: contents is not specified")
    for index, content in enumerate(contents):
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list) or not parts:
            raise _BadRequest(f"* GenerateContentRequest.contents[{index}].parts: contents.parts must not be empty.")
        for part in parts:
            if not isinstance(part, dict) or ("text" not in part) == ("inlineData" not in part):
                raise _BadRequest(f"contents[{index}]: each part must hold exactly one of text or inlineData")
            inline = part.get("inlineData")
            if inline is not None:
                if set(inline) - {"mimeType", "data", "displayName"} or not inline.get("mimeType"):
                    raise _BadRequest(f"contents[{index}]: inlineData needs mimeType and data")
                try:
                    decode_b64(inline.get("data") or "")
                except (binascii.Error, ValueError) as exc:
                    raise _BadRequest(f"contents[{index}]: inlineData.data is not base64") from exc
    image_config = (body.get("generationConfig") or {}).get("imageConfig") or {}
    unknown = set(image_config) - {"aspectRatio", "imageSize"}
    if unknown:
        raise _BadRequest(f'Invalid JSON payload received. Unknown name "{sorted(unknown)[0]}" at imageConfig.')
    if "aspectRatio" in image_config and image_config["aspectRatio"] not in ASPECT_RATIOS:
        raise _BadRequest(f"Unsupported aspect ratio: {image_config['aspectRatio']}")
    if "imageSize" in image_config and image_config["imageSize"] not in LONG_SIDE:
        raise _BadRequest(f"Unsupported image size: {image_config['imageSize']} (use 1K, 2K or 4K)")


__all__ = [
    "GeminiStub",
    "RecordedRequest",
    "Scenario",
    "decode_b64",
    "image_bytes",
    "image_dimensions",
    "normalise",
    "png_bytes",
]
