"""Structured JSON logs in the shape Cloud Logging understands.

One JSON object per line on stdout with ``severity`` and ``message``; the request's trace, request id
and client id ride along from a context variable set by the HTTP layer. Bearer tokens, API keys and
signatures are scrubbed from messages so secrets never reach the log sink.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

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
        if trace:
            entry["logging.googleapis.com/trace"] = f"projects/{self.project}/traces/{trace}" if self.project else trace
        if span:
            entry["logging.googleapis.com/spanId"] = span
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


def parse_cloud_trace(header: str | None) -> tuple[str | None, str | None]:
    """Split ``X-Cloud-Trace-Context: TRACE_ID/SPAN_ID;o=1`` into (trace id, span id)."""
    if not header:
        return None, None
    trace, _, rest = header.partition("/")
    span = rest.split(";", 1)[0] if rest else None
    if not re.fullmatch(r"[0-9a-fA-F]{32}", trace):
        return None, None
    return trace, (span if span and span.isdigit() else None)
