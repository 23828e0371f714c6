"""The event catalog: ids derive from what happened, payloads are checked against their type's model."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.events.model import (
    PAYLOADS,
    CreditsThreshold,
    EventType,
    JobCompleted,
    Subject,
    event_id,
    new_event,
)

NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)
LEDGER = Subject(kind="ledger", id="c1")


def test_every_event_type_has_a_payload_model() -> None:
    assert set(PAYLOADS) == set(EventType)


def test_the_same_fact_has_the_same_id_and_another_fact_another() -> None:
    first = event_id("c1", EventType.CREDITS_LOW, LEDGER, 7)
    assert first == event_id("c1", EventType.CREDITS_LOW, LEDGER, 7)  # a retried commit rewrites, never adds
    others = {
        event_id("c2", EventType.CREDITS_LOW, LEDGER, 7),
        event_id("c1", EventType.CREDITS_DEPLETED, LEDGER, 7),
        event_id("c1", EventType.CREDITS_LOW, Subject(kind="ledger", id="c2"), 7),
        event_id("c1", EventType.CREDITS_LOW, LEDGER, 8),
    }
    assert first not in others and len(others) == 4
    assert first.startswith("evt_") and len(first) == 36


def test_a_payload_of_another_type_is_refused() -> None:
    payload = JobCompleted(job_id="j", status="completed", items=1, succeeded=1, failed=0, charged=1, refunded=0)
    with pytest.raises(TypeError, match=r"credits\.low carries CreditsThreshold"):
        new_event("c1", EventType.CREDITS_LOW, LEDGER, payload, occurred_at=NOW)


def test_an_event_parses_back_to_its_payload_model() -> None:
    event = new_event(
        "c1", EventType.CREDITS_LOW, LEDGER, CreditsThreshold(available=9, threshold=10), occurred_at=NOW, sequence=3
    )
    assert event.parsed() == CreditsThreshold(available=9, threshold=10)
    assert event.payload == {"available": 9, "threshold": 10} and event.sequence == 3
