"""One contract for the ledger's read port, run on the Firestore adapter (emulator) and on the
in-memory fake: the same ordering, cursors, ranges and filters, so the unit tests of the views on the
fake say something about production."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.adapters.firestore.ledger import FirestoreLedgerReader, FirestoreLedgerStore
from shared.ledger.model import Actor, EntryType, GrantSource
from shared.ledger.service import Ledger
from shared.ledger.store import EntryFilter, LedgerReader, LedgerStore
from tests.fakes import InMemoryLedgerStore
from tests.fakes_ledger import InMemoryLedgerReader

USER = Actor(kind="user", id="u-contract")
T0 = datetime(2025, 6, 1, 8, 0, tzinfo=UTC)
EVERY = EntryFilter()

# (store, reader, write a client record)
Backend = tuple[LedgerStore, LedgerReader, Callable[[dict[str, Any]], None]]


@pytest.fixture(params=["memory", "firestore"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "memory":
        store = InMemoryLedgerStore()
        reader = InMemoryLedgerReader(store)
        return store, reader, lambda record: reader.clients.__setitem__(record["id"], record)
    db = request.getfixturevalue("db")
    return (
        FirestoreLedgerStore(db),
        FirestoreLedgerReader(db),
        lambda record: db.collection("clients").document(record["id"]).set(record),
    )


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def test_history_order_cursor_and_filters(backend: Backend) -> None:
    store, reader, _ = backend
    clock = Clock()
    ledger = Ledger(store, clock=clock, sleep=lambda _: None)
    client_id = f"rc-{uuid.uuid4().hex[:12]}"
    for n in range(3):  # seq 1-3, one instant: only seq orders them
        ledger.grant(client_id, key=f"g{n}", amount=10, source=GrantSource.ADMIN, actor=USER, reason="r")
    clock.now = T0 + timedelta(hours=1)
    hold = ledger.reserve(  # seq 4
        client_id, key="r", amount=4, actor=USER, purpose="p", ttl=timedelta(minutes=5), operation="generate_image"
    )
    clock.now = T0 + timedelta(hours=2)
    ledger.capture(client_id, hold["hold_id"], amount=4, actor=USER, reason="done")  # seq 5

    def seqs(where: EntryFilter = EVERY, **kw: Any) -> list[int]:
        return [e.seq for e in reader.history(client_id, where, **kw)]

    assert seqs() == [5, 4, 3, 2, 1]
    assert seqs(limit=2) == [5, 4]
    assert seqs(after=(T0, 3)) == [2, 1]  # inside the tie
    assert seqs(after=(T0 + timedelta(hours=1), 4), limit=2) == [3, 2]
    assert seqs(EntryFilter(type=EntryType.GRANT)) == [3, 2, 1]
    assert seqs(EntryFilter(operation="generate_image")) == [5, 4]
    assert seqs(EntryFilter(since=T0 + timedelta(hours=1), until=T0 + timedelta(hours=2))) == [4]
    captured = reader.entries_between(client_id, EntryType.CAPTURE, T0, T0 + timedelta(hours=3))
    assert [e.seq for e in captured] == [5]
    assert list(reader.entries_between(client_id, EntryType.CAPTURE, T0, T0 + timedelta(hours=2))) == []
    assert seqs(EVERY, limit=None) == seqs()


def test_client_records_by_prefix_and_cursor(backend: Backend) -> None:
    _, reader, write = backend
    prefix = f"rc-{uuid.uuid4().hex[:12]}"
    for suffix in ("b", "a", "c"):
        write({"id": f"{prefix}-{suffix}", "plan": "free", "created_at": T0})
    write({"id": f"{prefix}x", "plan": "pro", "created_at": T0})

    def ids(**kw: Any) -> list[str]:
        return [r["id"] for r in reader.client_records(**kw)]

    assert ids(prefix=f"{prefix}-", limit=2) == [f"{prefix}-a", f"{prefix}-b"]
    assert ids(prefix=f"{prefix}-", after=f"{prefix}-b", limit=5) == [f"{prefix}-c"]
    assert ids(prefix=prefix, limit=10) == [f"{prefix}-a", f"{prefix}-b", f"{prefix}-c", f"{prefix}x"]
    assert ids(prefix=f"{prefix}-zz", limit=10) == []
    assert reader.client_record(f"{prefix}x") == {"id": f"{prefix}x", "plan": "pro", "created_at": T0}
    assert reader.client_record(f"{prefix}-nobody") is None


def test_ledger_clients_due(backend: Backend) -> None:
    store, reader, _ = backend
    clock = Clock()
    ledger = Ledger(store, clock=clock, sleep=lambda _: None)
    due, later, idle = (f"rc-{uuid.uuid4().hex[:12]}" for _ in range(3))
    for client_id in (due, later, idle):
        ledger.grant(client_id, key="g", amount=10, source=GrantSource.ADMIN, actor=USER, reason="r")
    ledger.reserve(due, key="r", amount=1, actor=USER, purpose="p", ttl=timedelta(minutes=5))
    ledger.reserve(later, key="r", amount=1, actor=USER, purpose="p", ttl=timedelta(hours=5))
    now = T0 + timedelta(minutes=10)

    holds_due = set(reader.ledger_clients("next_hold_deadline", now))
    assert due in holds_due and later not in holds_due and idle not in holds_due
    assert {due, later, idle} <= set(reader.ledger_clients())
    assert not {due, later, idle} & set(reader.ledger_clients("next_bucket_expiry", now))
