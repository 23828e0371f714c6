"""Logs that correlate in Cloud Logging: the functions read a request's trace from ``traceparent``
(first) or ``X-Cloud-Trace-Context``, write it in Cloud Logging's fields, ignore malformed trace
headers, and hand it on to the tasks they enqueue, so a merchant's CSV import reads as one trace
across ``catalog_api`` and every ``catalog_tasks`` delivery it causes (through the real dispatcher).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from shared import logging as log
from tests.conftest import PROJECT
from tests.csv_import_helpers import Api, chunk_tasks, simple_csv

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
TRACE_FIELD = "logging.googleapis.com/trace"
SPAN_FIELD = "logging.googleapis.com/spanId"


class JsonLines(logging.Handler):
    """The lines the functions would write to stdout, formatted while their request is running."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(log.CloudJsonFormatter(PROJECT))
        self.entries: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.entries.append(json.loads(self.format(record)))

    def requests(self, url: str) -> list[dict[str, Any]]:
        """The access-log line of every request to ``url``."""
        return [e for e in self.entries if e.get("httpRequest", {}).get("requestUrl") == url]


@pytest.fixture
def lines() -> Iterator[JsonLines]:
    logger = logging.getLogger("epox.http")
    handler, level = JsonLines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def products(stack: Any, client_id: str, **headers: str) -> Any:
    return stack.client("catalog_api").get("/products", headers=stack.headers(client_id, **headers))


def test_traceparent_is_logged_as_cloud_loggings_trace_and_span(stack: Any, client_id: str, lines: JsonLines) -> None:
    assert products(stack, client_id, traceparent=f"00-{TRACE}-{SPAN}-01").status_code == 200
    [entry] = lines.requests("/products")
    assert entry[TRACE_FIELD] == f"projects/{PROJECT}/traces/{TRACE}"
    assert entry[SPAN_FIELD] == SPAN
    assert entry["logging.googleapis.com/trace_sampled"] is True


def test_x_cloud_trace_context_is_read_and_its_decimal_span_converted(
    stack: Any, client_id: str, lines: JsonLines
) -> None:
    header = {"X-Cloud-Trace-Context": f"{TRACE}/{int(SPAN, 16)};o=1"}
    assert products(stack, client_id, **header).status_code == 200
    [entry] = lines.requests("/products")
    assert entry[TRACE_FIELD] == f"projects/{PROJECT}/traces/{TRACE}"
    assert entry[SPAN_FIELD] == SPAN


def test_traceparent_wins_over_x_cloud_trace_context(stack: Any, client_id: str, lines: JsonLines) -> None:
    other = "0af7651916cd43dd8448eb211c80319c"
    both = {"traceparent": f"00-{TRACE}-{SPAN}-01", "X-Cloud-Trace-Context": f"{other}/1;o=1"}
    assert products(stack, client_id, **both).status_code == 200
    [entry] = lines.requests("/products")
    assert entry[TRACE_FIELD].endswith(TRACE)


@pytest.mark.parametrize(
    "headers",
    [
        {"traceparent": "garbage"},
        {"traceparent": f"ff-{TRACE}-{SPAN}-01"},
        {"traceparent": f"00-{'0' * 32}-{SPAN}-01"},
        {"traceparent": "00-" + "é" * 32 + f"-{SPAN}-01"},
        {"traceparent": "x" * 10_000},
        {"X-Cloud-Trace-Context": "not-a-trace/1;o=1"},
        {"X-Cloud-Trace-Context": f"{TRACE[:-2]}/1"},
        {"traceparent": "", "X-Cloud-Trace-Context": ";;;"},
    ],
)
def test_malformed_trace_headers_are_ignored_never_a_500(
    stack: Any, client_id: str, lines: JsonLines, headers: dict[str, str]
) -> None:
    response = products(stack, client_id, **headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    [entry] = lines.requests("/products")
    assert TRACE_FIELD not in entry and SPAN_FIELD not in entry


def test_a_malformed_traceparent_falls_back_to_x_cloud_trace_context(
    stack: Any, client_id: str, lines: JsonLines
) -> None:
    headers = {"traceparent": "00-nope", "X-Cloud-Trace-Context": f"{TRACE}/7"}
    assert products(stack, client_id, **headers).status_code == 200
    [entry] = lines.requests("/products")
    assert entry[TRACE_FIELD].endswith(TRACE) and entry[SPAN_FIELD] == "0000000000000007"


def test_a_csv_import_reads_as_one_trace_across_the_api_and_its_workers(
    stack: Any, client_id: str, lines: JsonLines
) -> None:
    api = Api(stack, client_id)
    # 30 rows in chunks of 3: ten chunks, eight started by the API request, the last two enqueued by
    # chunk workers as the sliding window moves (a second hop).
    csv = simple_csv([(f"Mug {n}", f"SKU-{n}", "") for n in range(30)])
    import_id = api.draft(csv)["id"]
    started = stack.client("catalog_api").post(
        f"/imports/{import_id}/start", headers={**api.headers, "traceparent": f"00-{TRACE}-{SPAN}-01"}
    )
    assert started.status_code == 202, started.json
    stack.run_tasks()
    assert api.import_(import_id)["status"] == "completed"

    tasks = [task for attempts in chunk_tasks(stack.dispatcher, import_id).values() for task in attempts]
    assert len(tasks) == 10
    for task in tasks:
        carried = log.parse_traceparent(task.headers["traceparent"])
        assert carried is not None and carried.trace_id == TRACE and carried.sampled is True

    [api_line] = lines.requests(f"/imports/{import_id}/start")
    worker_lines = lines.requests("/tasks/import-chunk")
    assert len(worker_lines) == 10
    expected = f"projects/{PROJECT}/traces/{TRACE}"
    assert api_line[TRACE_FIELD] == expected
    assert all(line[TRACE_FIELD] == expected for line in worker_lines)
    # One trace, and each delivery is a span of its own (not the API request's).
    spans = {line[SPAN_FIELD] for line in worker_lines}
    assert SPAN not in spans and len(spans) == 10


def test_work_enqueued_without_a_trace_carries_none(stack: Any, client_id: str) -> None:
    api = Api(stack, client_id)
    import_id = api.draft(simple_csv([("Mug", "SKU-1", "")]))["id"]
    api.start(import_id)
    stack.run_tasks()
    [[task]] = chunk_tasks(stack.dispatcher, import_id).values()
    assert "traceparent" not in task.headers
