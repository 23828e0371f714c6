"""Structured JSON logs in the shape Cloud Logging understands.

One JSON object per line on stdout with ``severity`` and ``message``; the request's trace, request id
and client id ride along from a context variable set by the HTTP layer. Bearer tokens, API keys and
signatures are scrubbed from messages so secrets never reach the log sink.

Traces: the HTTP layer reads the W3C ``traceparent`` header (or, failing that, Google's
``X-Cloud-Trace-Context``), and tasks enqueued while serving a request carry the trace on in their own
``traceparent``, so one merchant action is one trace across the API function and its workers.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("epox_log_context", default=None)

_SECRET_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(
        r"(?i)((?:token|secret|password|api[_-]?key|signature|authorization)[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&]+"
    ),
    re.compile(r"(X-Amz-Signature=)[0-9a-fA-F]+"),
    re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
)

_SEVERITY = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARNING",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "CRITICAL",
}


def scrub(text: str) -> str:
    """Remove anything that looks like a credential from a log message."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "[redacted]", text)
    return text


def bind(**fields: str | None) -> contextvars.Token[dict[str, str] | None]:
    """Attach fields (request_id, client_id, trace, …) to every log line of the current context."""
    current = dict(_context.get() or {})
    current.update({k: v for k, v in fields.items() if v})
    return _context.set(current)


def reset(token: contextvars.Token[dict[str, str] | None]) -> None:
    _context.reset(token)


def current_context() -> dict[str, str]:
    return dict(_context.get() or {})


class CloudJsonFormatter(logging.Formatter):
    """Formats a record as one Cloud Logging structured-log JSON line."""

    def __init__(self, project: str = "") -> None:
        super().__init__()
        self.project = project

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": _SEVERITY.get(record.levelno, "DEFAULT"),
            "message": scrub(record.getMessage()),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
        }
        context = current_context()
        trace = context.pop("trace", None)
        span = context.pop("span_id", None)
        sampled = context.pop("trace_sampled", None)
        if trace:
            entry["logging.googleapis.com/trace"] = f"projects/{self.project}/traces/{trace}" if self.project else trace
            if span:
                entry["logging.googleapis.com/spanId"] = span
            if sampled:
                entry["logging.googleapis.com/trace_sampled"] = sampled == "1"
        entry.update(context)
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update({k: scrub(v) if isinstance(v, str) else v for k, v in extra.items()})
        if record.exc_info:
            entry["stack_trace"] = scrub(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


_configured = False


def configure(level: str = "INFO", project: str = "") -> None:
    """Install the JSON formatter on the root logger once per process."""
    global _configured
    if _configured:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(CloudJsonFormatter(project))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    _configured = True


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


_HEX32 = re.compile(r"[0-9a-f]{32}")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_CLOUD_TRACE = re.compile(r"([0-9a-fA-F]{32})(?:/([^;]*))?(?:;o=([0-9]+))?")
_MAX_TRACE_HEADER = 512  # both formats are far shorter; anything longer is not worth a look
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


@dataclass(frozen=True)
class TraceContext:
    """A request's place in a distributed trace, in the forms Cloud Logging wants.

    ``trace_id`` is 32 lowercase hex characters, ``span_id`` 16 (or None), ``sampled`` None when
    the caller did not say.
    """

    trace_id: str
    span_id: str | None = None
    sampled: bool | None = None

    def log_fields(self) -> dict[str, str | None]:
        """What :func:`bind` needs so every log line of the request carries the trace."""
        flag = None if self.sampled is None else ("1" if self.sampled else "0")
        return {"trace": self.trace_id, "span_id": self.span_id, "trace_sampled": flag}


def parse_traceparent(header: str | None) -> TraceContext | None:
    """``traceparent: VERSION-TRACE_ID-PARENT_ID-FLAGS`` (W3C Trace Context); None when malformed."""
    if not header or len(header) > _MAX_TRACE_HEADER:
        return None
    header = header.strip(" \t")
    match = _TRACEPARENT.match(header)
    if match is None:
        return None
    version, trace, span, flags = match.groups()
    rest = header[match.end() :]
    # Version ff is invalid; version 00 has exactly four fields; a later version may append fields.
    if version == "ff" or (version == "00" and rest) or (rest and not rest.startswith("-")):
        return None
    if trace == _ZERO_TRACE or span == _ZERO_SPAN:
        return None
    return TraceContext(trace, span, bool(int(flags, 16) & 1))


def parse_cloud_trace(header: str | None) -> TraceContext | None:
    """``X-Cloud-Trace-Context: TRACE_ID/SPAN_ID;o=OPTIONS``; None when malformed.

    The span id travels in decimal (an unsigned 64-bit number) and is logged as 16 hex characters;
    a span id that is not a usable number is dropped and the trace kept.
    """
    if not header or len(header) > _MAX_TRACE_HEADER:
        return None
    match = _CLOUD_TRACE.fullmatch(header.strip(" \t"))
    if match is None:
        return None
    trace, span, option = match.groups()
    trace = trace.lower()
    if trace == _ZERO_TRACE:
        return None
    span_id = None
    if span is not None and span.isascii() and span.isdigit() and len(span) <= 20 and 0 < int(span) < 2**64:
        span_id = f"{int(span):016x}"
    return TraceContext(trace, span_id, None if option is None else bool(int(option) & 1))


class _Headers(Protocol):
    def get(self, key: str) -> str | None: ...


def trace_from_headers(headers: _Headers) -> TraceContext | None:
    """The caller's trace: ``traceparent`` first, ``X-Cloud-Trace-Context`` second; malformed
    headers are ignored (a request is never refused for its trace headers)."""
    return parse_traceparent(headers.get("traceparent")) or parse_cloud_trace(headers.get("X-Cloud-Trace-Context"))


def outgoing_traceparent() -> str | None:
    """A ``traceparent`` for work this request hands on (a task), continuing its trace.

    The hop gets a span id of its own, so a worker's log lines stay apart from the request's while
    sharing its trace. None outside a traced request.
    """
    context = current_context()
    trace = context.get("trace")
    if not trace or not _HEX32.fullmatch(trace):
        return None
    span = secrets.token_hex(8)
    while span == _ZERO_SPAN:  # pragma: no cover - one chance in 2**64
        span = secrets.token_hex(8)
    flags = "01" if context.get("trace_sampled") == "1" else "00"
    return f"00-{trace}-{span}-{flags}"
