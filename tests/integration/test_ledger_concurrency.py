"""The credit ledger under real concurrency, against the Firestore emulator.

Many threads hit one client's balance document at once through ``Ledger(FirestoreLedgerStore(db))``;
the optimistic ``update_time`` precondition must keep every balance exact, never go below zero,
apply an idempotency key once and resolve a hold exactly once.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.adapters.firestore.ledger import FirestoreLedgerStore
from shared.errors import EpoxError, InsufficientCredits
from shared.ledger.model import Actor, EntryType, GrantSource, HoldAlreadyResolved, HoldStatus
from shared.ledger.service import Ledger

pytestmark = pytest.mark.integration

USER = Actor(kind="user", id="u1")
WORKER = Actor(kind="task", id="worker")
TTL = timedelta(hours=1)


class Clock:
    """A controllable clock (thread-safe reads; tests move it by hand)."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def ledger(db: Any) -> Ledger:
    # The production retry policy (jittered backoff), with a retry budget big enough that 50 threads on a
    # loaded machine never run out of attempts: what is tested here is exactness, not the 503 when busy.
    return Ledger(FirestoreLedgerStore(db), clock=Clock(), max_attempts=1000)


@pytest.fixture
def fleet(db: Any) -> list[Ledger]:
    """Ten Ledger instances on one store, as ten function instances would be: within an instance a
    client's requests take turns, across instances only the optimistic commit keeps them apart."""
    return [Ledger(FirestoreLedgerStore(db), clock=Clock(), max_attempts=1000) for _ in range(10)]


def _parallel(calls: list[Callable[[], Any]], workers: int) -> list[Any]:
    """Run every call at once (released together by a barrier); each result or the EpoxError it raised."""
    barrier = threading.Barrier(min(workers, len(calls)))

    def run(call: Callable[[], Any]) -> Any:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=10)
        try:
            return call()
        except EpoxError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run, calls))


def _grant(ledger: Ledger, client_id: str, amount: int) -> None:
    ledger.grant(
        client_id,
        key=f"grant:{client_id}",
        amount=amount,
        source=GrantSource.PACK,
        actor=Actor(kind="admin", id="a1"),
        reason="test credits",
    )


def _entry_types(ledger: Ledger, client_id: str) -> Counter[EntryType]:
    return Counter(e.type for e in ledger.store.entries(client_id))


@pytest.mark.parametrize("instances", [1, 10], ids=["one-instance", "ten-instances"])
def test_fifty_parallel_reservations_never_overdraw(
    ledger: Ledger, fleet: list[Ledger], client_id: str, instances: int
) -> None:
    _grant(ledger, client_id, 100)
    ledgers = [ledger] if instances == 1 else fleet
    calls = [
        (
            lambda i=i: ledgers[i % len(ledgers)].reserve(
                client_id, key=f"r{i}", amount=3, actor=USER, purpose="generate", ttl=TTL
            )
        )
        for i in range(50)
    ]
    results = _parallel(calls, workers=50)

    ok = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, InsufficientCredits)]
    assert [r for r in results if not isinstance(r, dict | InsufficientCredits)] == []
    assert (len(ok), len(refused)) == (33, 17)
    assert all(r.status == 402 and r.code == "insufficient_credits" for r in refused)
    assert all(r.extensions["required"] == 3 and r.extensions["available"] < 3 for r in refused)
    assert len({r["hold_id"] for r in ok}) == 33

    state = ledger.state(client_id)
    assert (state.available, state.reserved) == (1, 99)
    assert len(state.holds) == 33
    assert ledger.verify(client_id) == []
    assert _entry_types(ledger, client_id) == Counter({EntryType.GRANT: 1, EntryType.RESERVE: 33})
    conflicts = sum(each.stats.conflicts for each in ledgers)
    if instances == 1:
        assert conflicts == 0  # one instance serialises its own requests: no race is wasted
    else:
        assert conflicts > 0  # across instances the race really happened, and the commit settled it


def test_mixed_reserve_capture_release_keeps_exact_balance(ledger: Ledger, client_id: str) -> None:
    _grant(ledger, client_id, 1000)
    # Holds made beforehand, released concurrently with the pairs below.
    to_release = [
        ledger.reserve(client_id, key=f"pre{i}", amount=5 + i, actor=USER, purpose="edit", ttl=TTL)["hold_id"]
        for i in range(10)
    ]
    pairs = [(4 + i % 7, i % 5) for i in range(30)]  # (reserve, capture ≤ reserve): partial and zero captures too
    pairs = [(amount, min(amount, amount - shortfall)) for amount, shortfall in pairs]

    def pair(i: int, amount: int, charge: int) -> tuple[str, int]:
        hold = ledger.reserve(client_id, key=f"pair{i}", amount=amount, actor=USER, purpose="generate", ttl=TTL)
        outcome = ledger.capture(client_id, hold["hold_id"], amount=charge, actor=WORKER, reason="done")
        assert (outcome.captured, outcome.released) == (charge, amount - charge)
        return "captured", outcome.captured

    def release(hold_id: str) -> tuple[str, int]:
        outcome = ledger.release(client_id, hold_id, actor=WORKER, reason="cancelled")
        assert outcome.status is HoldStatus.RELEASED
        return "released", 0

    calls: list[Callable[[], Any]] = [lambda i=i, a=a, c=c: pair(i, a, c) for i, (a, c) in enumerate(pairs)]
    calls += [lambda h=h: release(h) for h in to_release]
    results = _parallel(calls, workers=20)

    assert all(isinstance(r, tuple) for r in results), [r for r in results if not isinstance(r, tuple)][:3]
    charged = sum(r[1] for r in results)
    assert charged == sum(c for _, c in pairs)
    state = ledger.state(client_id)
    assert (state.available, state.reserved, state.holds) == (1000 - charged, 0, {})
    assert ledger.verify(client_id) == []
    types = _entry_types(ledger, client_id)
    assert types[EntryType.RESERVE] == 40
    assert types[EntryType.CAPTURE] == sum(1 for _, c in pairs if c > 0)
    assert types[EntryType.RELEASE] == 10 + sum(1 for a, c in pairs if c < a)


def test_same_idempotency_key_from_ten_threads_reserves_once(ledger: Ledger, db: Any, client_id: str) -> None:
    _grant(ledger, client_id, 50)
    calls = [
        lambda: ledger.reserve(client_id, key="job-42:reserve", amount=7, actor=USER, purpose="batch", ttl=TTL)
        for _ in range(10)
    ]
    results = _parallel(calls, workers=10)

    assert all(isinstance(r, dict) for r in results), results
    assert all(r == results[0] for r in results)
    state = ledger.state(client_id)
    assert list(state.holds) == [results[0]["hold_id"]]
    assert (state.available, state.reserved) == (43, 7)
    assert _entry_types(ledger, client_id) == Counter({EntryType.GRANT: 1, EntryType.RESERVE: 1})
    holds = list(db.collection("clients").document(client_id).collection("ledger_holds").stream())
    assert [h.id for h in holds] == [results[0]["hold_id"]]
    assert ledger.verify(client_id) == []


@pytest.mark.parametrize("round_", range(3))
def test_concurrent_capture_and_release_resolve_a_hold_once(ledger: Ledger, client_id: str, round_: int) -> None:
    _grant(ledger, client_id, 100)
    hold_id = ledger.reserve(client_id, key="h", amount=10, actor=USER, purpose="generate", ttl=TTL)["hold_id"]
    captures = [lambda: ledger.capture(client_id, hold_id, amount=6, actor=WORKER, reason="done") for _ in range(8)]
    releases = [lambda: ledger.release(client_id, hold_id, actor=WORKER, reason="failed") for _ in range(8)]
    calls = [c for pair in zip(captures, releases, strict=True) for c in pair]
    if round_ % 2:
        calls.reverse()
    results = _parallel(calls, workers=16)

    outcomes = [r for r in results if not isinstance(r, Exception)]
    errors = [r for r in results if isinstance(r, Exception)]
    assert outcomes, errors
    # Every success reports the one winning outcome; every loser of the other kind gets 409.
    assert all(o == outcomes[0] for o in outcomes)
    winner = outcomes[0].status
    assert all(
        isinstance(e, HoldAlreadyResolved) and e.status == 409 and e.code == "hold_already_resolved" for e in errors
    ), errors
    assert len(outcomes) == 8 and len(errors) == 8

    state = ledger.state(client_id)
    expected = 94 if winner is HoldStatus.CAPTURED else 100
    assert (state.available, state.reserved, state.holds) == (expected, 0, {})
    types = _entry_types(ledger, client_id)
    if winner is HoldStatus.CAPTURED:
        assert types == Counter({EntryType.GRANT: 1, EntryType.RESERVE: 1, EntryType.CAPTURE: 1, EntryType.RELEASE: 1})
    else:
        assert types == Counter({EntryType.GRANT: 1, EntryType.RESERVE: 1, EntryType.RELEASE: 1})
    assert ledger.verify(client_id) == []


def test_verify_reports_no_drift_while_writes_are_in_flight(ledger: Ledger, client_id: str) -> None:
    """The verify job runs under live traffic: entries committed after it read the state are not drift."""
    _grant(ledger, client_id, 10_000)
    stop = threading.Event()

    def traffic(writer: int) -> int:
        done = 0
        while not stop.is_set() and done < 200:
            hold = ledger.reserve(client_id, key=f"t{writer}-{done}", amount=3, actor=USER, purpose="p", ttl=TTL)
            ledger.capture(client_id, hold["hold_id"], amount=2, actor=WORKER, reason="done")
            done += 1
        return done

    with ThreadPoolExecutor(max_workers=2) as pool:
        writers = [pool.submit(traffic, n) for n in range(2)]
        try:
            reports = [ledger.verify(client_id) for _ in range(15)]
        finally:
            stop.set()
        pairs = sum(w.result() for w in writers)

    assert reports == [[]] * 15
    assert pairs > 0
    assert ledger.state(client_id).available == 10_000 - 2 * pairs
    assert ledger.verify(client_id) == []
