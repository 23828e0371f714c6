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


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def test_cloud_logging_shape_with_trace_and_context() -> None:
    trace = log.TraceContext(TRACE, SPAN, sampled=True)
    token = log.bind(request_id="req-123", client_id="acme", **trace.log_fields())
    try:
        entry = _format("hello %s", "world")
    finally:
        log.reset(token)
    assert entry["severity"] == "WARNING"
    assert entry["message"] == "hello world"
    assert entry["logging.googleapis.com/trace"] == f"projects/epox-prod/traces/{TRACE}"
    assert entry["logging.googleapis.com/spanId"] == SPAN
    assert entry["logging.googleapis.com/trace_sampled"] is True
    assert entry["request_id"] == "req-123"
    assert entry["client_id"] == "acme"
    assert not {"trace", "span_id", "trace_sampled"} & set(entry)


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


# -- trace headers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"00-{TRACE}-{SPAN}-01", log.TraceContext(TRACE, SPAN, True)),
        (f"00-{TRACE}-{SPAN}-00", log.TraceContext(TRACE, SPAN, False)),
        (f" 00-{TRACE}-{SPAN}-03\t", log.TraceContext(TRACE, SPAN, True)),  # optional whitespace; bit 0 = sampled
        (f"cc-{TRACE}-{SPAN}-01-what-the-future-holds", log.TraceContext(TRACE, SPAN, True)),  # later version
    ],
)
def test_traceparent_is_read(header: str, expected: log.TraceContext) -> None:
    assert log.parse_traceparent(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        f"00-{TRACE.upper()}-{SPAN}-01",  # hex must be lowercase
        f"ff-{TRACE}-{SPAN}-01",  # version ff is invalid
        f"00-{TRACE}-{SPAN}-01-extra",  # version 00 has exactly four fields
        f"01-{TRACE}-{SPAN}-01extra",  # a later version's extra fields start with a dash
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE[:-1]}-{SPAN}-01",
        f"00-{TRACE}-{SPAN}0-01",
        f"00-{TRACE}-{SPAN}-1",
        f"00_{TRACE}_{SPAN}_01",
        f"00-{TRACE}-{SPAN}-01" + " " * 600,  # absurdly long
    ],
)
def test_malformed_traceparent_is_ignored(header: str | None) -> None:
    assert log.parse_traceparent(header) is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        # The span id travels in decimal; Cloud Logging wants 16 hex characters.
        (f"{TRACE}/1;o=1", log.TraceContext(TRACE, "0000000000000001", True)),
        (f"{TRACE}/67667974448284343;o=0", log.TraceContext(TRACE, SPAN, False)),
        (f"{TRACE}/18446744073709551615", log.TraceContext(TRACE, "ffffffffffffffff", None)),
        (f"{TRACE.upper()}/10", log.TraceContext(TRACE, "000000000000000a", None)),
        (TRACE, log.TraceContext(TRACE, None, None)),
        # A span id that is no usable 64-bit number is dropped; the trace still correlates.
        (f"{TRACE}/18446744073709551616;o=1", log.TraceContext(TRACE, None, True)),
        (f"{TRACE}/0", log.TraceContext(TRACE, None, None)),
        (f"{TRACE}/12ab;o=1", log.TraceContext(TRACE, None, True)),
        (f"{TRACE}/;o=1", log.TraceContext(TRACE, None, True)),
    ],
)
def test_cloud_trace_context_is_read_and_its_span_converted(header: str, expected: log.TraceContext) -> None:
    assert log.parse_cloud_trace(header) == expected


@pytest.mark.parametrize(
    "header", [None, "", "not-a-trace/1", f"{'0' * 32}/1", f"{TRACE[:-1]}/1", f"{TRACE}x/1", f"{TRACE}/1;o=x"]
)
def test_malformed_cloud_trace_context_is_ignored(header: str | None) -> None:
    assert log.parse_cloud_trace(header) is None


def test_traceparent_comes_first_and_a_malformed_one_falls_back() -> None:
    other = "0af7651916cd43dd8448eb211c80319c"
    both = {"traceparent": f"00-{TRACE}-{SPAN}-01", "X-Cloud-Trace-Context": f"{other}/7;o=1"}
    assert log.trace_from_headers(both) == log.TraceContext(TRACE, SPAN, True)
    broken = {"traceparent": "00-nonsense", "X-Cloud-Trace-Context": f"{other}/7;o=1"}
    assert log.trace_from_headers(broken) == log.TraceContext(other, "0000000000000007", True)
    assert log.trace_from_headers({"traceparent": "x", "X-Cloud-Trace-Context": "y"}) is None
    assert log.trace_from_headers({}) is None


def test_outgoing_traceparent_continues_the_trace_with_a_span_of_its_own() -> None:
    assert log.outgoing_traceparent() is None  # nothing to continue outside a traced request
    token = log.bind(**log.TraceContext(TRACE, SPAN, sampled=True).log_fields())
    try:
        first, second = log.outgoing_traceparent(), log.outgoing_traceparent()
    finally:
        log.reset(token)
    assert first is not None and second is not None
    parsed = log.parse_traceparent(first)
    assert parsed is not None and parsed.trace_id == TRACE and parsed.sampled is True
    assert parsed.span_id not in (SPAN, None)
    assert first != second  # every hop its own span
    token = log.bind(**log.TraceContext(TRACE, None, sampled=None).log_fields())
    try:
        unsampled = log.outgoing_traceparent()
    finally:
        log.reset(token)
    assert unsampled is not None and unsampled.endswith("-00")
