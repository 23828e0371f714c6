from __future__ import annotations

import json
import logging

import pytest

from shared import logging as log


def _format(message: str, *args: object, project: str = "epox-prod", **fields: object) -> dict[str, object]:
    formatter = log.CloudJsonFormatter(project)
    record = logging.LogRecord("epox.test", logging.WARNING, __file__, 1, message, args, None)
    if fields:
        record.fields = fields
    return json.loads(formatter.format(record))


def test_cloud_logging_shape_with_trace_and_context() -> None:
    token = log.bind(request_id="req-123", client_id="acme", trace="0" * 31 + "1", span_id="42")
    try:
        entry = _format("hello %s", "world")
    finally:
        log.reset(token)
    assert entry["severity"] == "WARNING"
    assert entry["message"] == "hello world"
    assert entry["logging.googleapis.com/trace"] == "projects/epox-prod/traces/" + "0" * 31 + "1"
    assert entry["logging.googleapis.com/spanId"] == "42"
    assert entry["request_id"] == "req-123"
    assert entry["client_id"] == "acme"


def test_context_does_not_leak_after_reset() -> None:
    token = log.bind(client_id="acme")
    log.reset(token)
    assert "client_id" not in _format("x")


@pytest.mark.parametrize(
    "secret_text",
    [
        "Authorization: Bearer eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl",
        "token=sk_live_abcdef123456",
        'api_key: "AKIA1234567890"',
        "https://r2/obj?X-Amz-Signature=0123456789abcdef0123",
        "jwt eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl here",
    ],
)
def test_secrets_are_scrubbed(secret_text: str) -> None:
    entry = _format(secret_text, secret="password=hunter2")
    serialized = json.dumps(entry)
    for fragment in ("eyJzdWIi", "sk_live_abcdef", "AKIA1234567890", "0123456789abcdef0123", "hunter2"):
        assert fragment not in serialized
    assert "[redacted]" in serialized


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("105445aa7843bc8bf206b12000100000/1;o=1", ("105445aa7843bc8bf206b12000100000", "1")),
        ("105445aa7843bc8bf206b12000100000", ("105445aa7843bc8bf206b12000100000", None)),
        ("not-a-trace/1", (None, None)),
        (None, (None, None)),
    ],
)
def test_parse_cloud_trace(header: str | None, expected: tuple[str | None, str | None]) -> None:
    assert log.parse_cloud_trace(header) == expected
