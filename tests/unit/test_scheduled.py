"""Per-client isolation of the scheduled jobs (``shared.scheduled``) and the balance verification's
checkpoint (``model.drift`` with an opening checkpoint, ``Ledger.verify_from_checkpoint``)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.api_core.exceptions import Aborted, ServiceUnavailable
from pydantic import ValidationError

from shared.errors import EpoxError, UpstreamUnavailable
from shared.ledger import model
from shared.ledger.model import Actor, Checkpoint, Entry, GrantSource, LedgerState
from shared.ledger.service import Ledger
from shared.scheduled import JobIncomplete, ScheduledReport, failure_code, finish, isolated
from tests.fakes import InMemoryLedgerStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ADMIN = Actor(kind="admin", id="a1")


def corrupt_document_error() -> ValidationError:
    with pytest.raises(ValidationError) as raised:
        LedgerState.model_validate({"client_id": "c1", "available": "sk_live_0123456789abcdef"})
    return raised.value


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UpstreamUnavailable("The credit ledger is busy; try again"), "upstream_unavailable"),
        (model.HoldNotFound("gone"), "hold_not_found"),
        (ServiceUnavailable("backend down"), "upstream_unavailable"),
        (Aborted("Transaction lock timeout."), "upstream_aborted"),
        (KeyError("billing"), "internal_error"),
    ],
)
def test_failure_codes(error: Exception, code: str) -> None:
    assert failure_code(error) == code


def test_a_corrupt_document_has_its_own_code() -> None:
    assert failure_code(corrupt_document_error()) == "corrupt_document"


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Any:
    handler = Records()
    logging.getLogger("epox.jobs").addHandler(handler)
    try:
        yield handler
    finally:
        logging.getLogger("epox.jobs").removeHandler(handler)


def test_isolated_records_logs_and_goes_on(records: Records) -> None:
    failed: dict[str, str] = {}
    done = []
    for client_id in ("a", "b", "c"):
        with isolated("test-job", client_id, failed, step="grant"):
            if client_id == "b":
                raise corrupt_document_error()
            done.append(client_id)
    assert done == ["a", "c"]
    assert failed == {"b": "corrupt_document"}
    [record] = records.records
    assert record.levelno == logging.ERROR
    message = record.getMessage()
    assert "client b" in message and "corrupt_document" in message and "test-job (grant)" in message
    assert "available: int_parsing" in message  # where the document is wrong ...
    assert "sk_live" not in message and not record.exc_info  # ... never what it holds
    assert record.fields["job_failure"] == {  # type: ignore[attr-defined]
        "job": "test-job",
        "step": "grant",
        "client_id": "b",
        "code": "corrupt_document",
    }


def test_isolated_keeps_a_clients_first_code_and_traces_only_the_unexpected(records: Records) -> None:
    failed: dict[str, str] = {}
    with isolated("j", "a", failed, step="one"):
        raise UpstreamUnavailable("busy")
    with isolated("j", "a", failed, step="two"):
        raise RuntimeError("boom")
    assert failed == {"a": "upstream_unavailable"}
    first, second = records.records
    assert not first.exc_info and "busy" in first.getMessage()
    assert second.exc_info and "RuntimeError: boom" in second.getMessage()


def test_isolated_lets_interrupts_through() -> None:
    with pytest.raises(KeyboardInterrupt), isolated("j", "a", {}):
        raise KeyboardInterrupt


class Report(ScheduledReport):
    job: str = "test-job"
    changed: dict[str, int] = {}


def test_finish_returns_a_clean_report_and_raises_the_whole_report_otherwise() -> None:
    clean = Report(changed={"a": 1})
    assert finish(clean, "test-job") is clean
    with pytest.raises(JobIncomplete) as raised:
        finish(Report(changed={"a": 1}, failed={"b": "corrupt_document"}), "test-job")
    error = raised.value
    assert isinstance(error, EpoxError) and error.status >= 500
    assert error.extensions == {"failed": {"b": "corrupt_document"}, "job": "test-job", "changed": {"a": 1}}
    assert "1 client(s) failed" in error.detail


# -- the verification checkpoint ----------------------------------------------------------------------


def history() -> tuple[list[LedgerState], list[Entry]]:
    """Every state along a history of grants, holds, captures and releases, and all its entries."""
    state = LedgerState(client_id="c1")
    states, entries = [state], []
    now = T0

    def apply(mutation: model.Mutation) -> None:
        nonlocal state
        state = mutation.state
        states.append(state)
        entries.extend(mutation.entries)

    for index, amount in enumerate((5, 10, 3)):
        apply(
            model.grant(
                state,
                key=f"g{index}",
                bucket_id=f"b{index}",
                source=GrantSource.PACK,
                amount=amount,
                now=now,
                actor=ADMIN,
                reason="t",
            )
        )
    deadline = now + timedelta(hours=1)
    for hold, amount in (("h1", 8), ("h2", 4)):
        apply(
            model.reserve(
                state, key=hold, hold_id=hold, amount=amount, now=now, deadline=deadline, actor=ADMIN, purpose="p"
            )
        )
    apply(model.capture(state, key="c", hold_id="h1", amount=6, now=now, actor=ADMIN, reason="t", resolved=None))
    apply(model.release(state, key="r", hold_id="h2", now=now, actor=ADMIN, reason="t", resolved=None))
    return states, entries


def test_a_checkpoint_stands_exactly_for_the_entries_before_it() -> None:
    states, entries = history()
    final = states[-1]
    assert model.drift(final, entries) == []
    for split in range(len(entries) + 1):
        opening = model.advance(None, entries[:split])
        assert opening.seq == split
        assert model.drift(final, entries[split:], opening=opening) == []
        assert model.advance(opening, entries[split:]) == model.advance(None, entries)
    assert all(model.advance(None, entries).buckets.values())  # zero totals are left out


def test_drift_from_a_checkpoint_matches_the_full_replay() -> None:
    states, entries = history()
    opening = model.advance(None, entries[:3])
    tampered = states[-1].model_copy(deep=True)
    tampered.available += 2
    tampered.buckets["b1"].remaining += 2
    assert model.drift(tampered, entries[3:], opening=opening) == model.drift(tampered, entries)
    # A lost entry after the checkpoint is counted as missing, like in the full replay.
    assert model.drift(states[-1], entries[3:-1], opening=opening) == model.drift(states[-1], entries[:-1])
    # A wrong checkpoint is a drift too: it cannot hide one.
    wrong = opening.model_copy(update={"available": opening.available + 1})
    assert "available: state 12, entries 13" in model.drift(states[-1], entries[3:], opening=wrong)
    assert model.drift(states[-1], entries, opening=Checkpoint()) == []


class CheckpointingStore(InMemoryLedgerStore):
    """The in-memory store with a checkpoint, counting the entries it hands out."""

    def __init__(self) -> None:
        super().__init__()
        self.checkpoints: dict[str, Checkpoint] = {}
        self.entries_read = 0

    def entries_after(self, client_id: str, seq: int) -> list[Entry]:
        found = super().entries_after(client_id, seq)
        self.entries_read += len(found)
        return found

    def verify_checkpoint(self, client_id: str) -> Checkpoint | None:
        return self.checkpoints.get(client_id)

    def save_verify_checkpoint(self, client_id: str, checkpoint: Checkpoint) -> None:
        self.checkpoints[client_id] = checkpoint


def test_verify_from_checkpoint_reads_only_newer_entries() -> None:
    store = CheckpointingStore()
    ledger = Ledger(store, clock=lambda: T0)
    for index in range(5):
        ledger.grant("c1", key=f"g{index}", amount=3, source=GrantSource.PACK, actor=ADMIN, reason="t")
    assert ledger.verify_from_checkpoint("c1") == [] and store.entries_read == 5
    assert ledger.verify_from_checkpoint("c1") == [] and store.entries_read == 5  # nothing new, nothing read
    ledger.grant("c1", key="g5", amount=3, source=GrantSource.PACK, actor=ADMIN, reason="t")
    assert ledger.verify_from_checkpoint("c1") == [] and store.entries_read == 6
    assert store.checkpoints["c1"] == model.advance(None, store.entries("c1"))
    assert ledger.verify_from_checkpoint("c1", full=True) == [] and store.entries_read == 12


def test_a_store_without_checkpoints_verifies_every_entry() -> None:
    store = InMemoryLedgerStore()
    ledger = Ledger(store, clock=lambda: T0)
    ledger.grant("c1", key="g", amount=3, source=GrantSource.PACK, actor=ADMIN, reason="t")
    assert ledger.verify_from_checkpoint("c1") == ledger.verify("c1") == []
    store.states["c1"][0].available += 1  # tampered in place
    assert ledger.verify_from_checkpoint("c1") == ledger.verify("c1") != []
