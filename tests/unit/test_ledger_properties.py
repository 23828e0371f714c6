"""Property-based tests of the credit ledger: a hypothesis state machine runs random sequences of
grant / reserve / capture / release / expire / sweep / adjust calls, duplicates (the same idempotency
key again), key reuse with another body, out-of-order resolutions (a hold resolved already, or one
that never existed) and clock jumps (buckets expire, hold deadlines pass).

The machine keeps a reference model of its own — per-bucket balances, pending holds, resolved
outcomes and running totals, computed from what succeeded — and after every step checks that the
ledger agrees with it and that the ledger's invariants hold:

* available ≥ 0 and every bucket's remaining ≥ 0;
* ``ledger.verify(client) == []`` (the cached state equals what the entries say);
* reserved == the sum of pending holds;
* each hold is resolved at most once (a second resolution replays the first outcome or is refused);
* conservation: granted + positive adjustments == available + reserved + captured + expired +
  |negative adjustments|, both in the model and summed from the entries;
* entry sequence numbers are contiguous from 1.

The machine is parametrised by a store factory (:func:`machine_for`), so the same rules run against
the in-memory fake here and against the Firestore adapter on the emulator in
``tests/integration/test_ledger_properties_emulator.py``.

Budget: 400 examples x up to 40 steps in CI. ``EPOX_PROPERTY_EXAMPLES=<n>`` selects a heavier soak
profile (n examples x up to 100 steps), e.g. ``EPOX_PROPERTY_EXAMPLES=5000``.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from shared.errors import IdempotencyKeyReused, InsufficientCredits, ValidationFailed
from shared.ledger.model import (
    DEFAULT_PRIORITY,
    Actor,
    EntryType,
    GrantSource,
    HoldAlreadyResolved,
    HoldNotFound,
    HoldOutcome,
    HoldStatus,
)
from shared.ledger.service import Ledger
from shared.ledger.store import LedgerStore, Snapshot
from tests.fakes import InMemoryLedgerStore

START = datetime(2026, 1, 1, tzinfo=UTC)
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)
THRESHOLD = 10
USER = Actor(kind="user", id="u_prop")
WORKER = Actor(kind="task", id="worker")
ADMIN = Actor(kind="admin", id="a_prop")
SYSTEM = Actor(kind="system", id="sweeper")

# Steps executed per rule, across every example (read by the tests to report and check the budget).
STEPS: Counter[str] = Counter()


def property_settings(*, examples: int = 400, steps: int = 40, soak: bool = True) -> settings:
    """The CI budget, or the soak profile when ``EPOX_PROPERTY_EXAMPLES`` is set (and ``soak`` allows)."""
    soak_examples = os.environ.get("EPOX_PROPERTY_EXAMPLES")
    if soak and soak_examples:
        examples, steps = int(soak_examples), 100
    return settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


class FakeClock:
    """The ledger's clock; only the machine moves it."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


# -- the reference model ----------------------------------------------------------------------------


@dataclass
class RefBucket:
    id: str
    priority: int
    granted_at: datetime
    expires_at: datetime | None
    remaining: int

    def past_due(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


@dataclass
class RefHold:
    id: str
    amount: int
    draws: list[tuple[str, int]]  # in the order credits left the buckets
    deadline: datetime


@dataclass
class Committed:
    """A call whose idempotency key now has a marker: replaying it must return ``result``."""

    fingerprint: tuple[Any, ...]
    call: Callable[[], Any]
    result: Any


@dataclass
class Reference:
    buckets: dict[str, RefBucket] = field(default_factory=dict)
    holds: dict[str, RefHold] = field(default_factory=dict)
    outcomes: dict[str, HoldOutcome] = field(default_factory=dict)
    granted: int = 0
    adjusted_in: int = 0
    adjusted_out: int = 0
    captured: int = 0
    expired: int = 0

    def available(self) -> int:
        return sum(b.remaining for b in self.buckets.values())

    def reserved(self) -> int:
        return sum(h.amount for h in self.holds.values())

    def spendable(self, now: datetime) -> int:
        return sum(b.remaining for b in self.buckets.values() if not b.past_due(now))

    def expire_due(self, now: datetime) -> list[tuple[str, int]]:
        """What a committed operation expires first: every past-due bucket that still has credits."""
        done = []
        for bucket in sorted(self.buckets.values(), key=lambda b: b.id):
            if bucket.past_due(now) and bucket.remaining > 0:
                done.append((bucket.id, bucket.remaining))
                self.expired += bucket.remaining
                bucket.remaining = 0
        return done

    def draw(self, amount: int, now: datetime) -> list[tuple[str, int]]:
        # Priority, then buckets that expire (soonest first) before those that never do, then oldest.
        live = [b for b in self.buckets.values() if b.remaining > 0 and not b.past_due(now)]
        live.sort(key=lambda b: (b.priority, b.expires_at or FAR_FUTURE, b.granted_at, b.id))
        draws, left = [], amount
        for bucket in live:
            if left == 0:
                break
            take = min(bucket.remaining, left)
            bucket.remaining -= take
            draws.append((bucket.id, take))
            left -= take
        assert left == 0, "the model drew more than it could spend"
        return draws

    def give_back(self, hold: RefHold, amount: int, now: datetime) -> None:
        """Return ``amount`` to the last-drawn buckets; a past-due bucket expires it again."""
        left = amount
        for bucket_id, drawn in reversed(hold.draws):
            if left == 0:
                break
            back = min(drawn, left)
            left -= back
            bucket = self.buckets[bucket_id]
            if bucket.past_due(now):
                self.expired += back
            else:
                bucket.remaining += back


# -- the state machine ------------------------------------------------------------------------------


class LedgerMachine(RuleBasedStateMachine):
    """Random ledger calls against a store from ``store_factory``, checked against :class:`Reference`."""

    store_factory: Callable[[], LedgerStore] = InMemoryLedgerStore

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.client_id = "c" + uuid.uuid4().hex[:16]
        self.store = type(self).store_factory()
        self.ledger = Ledger(self.store, clock=self.clock, low_balance_threshold=THRESHOLD, sleep=lambda _: None)
        self.ref = Reference()
        self.committed: dict[str, Committed] = {}
        self.counter = 0

    # helpers ------------------------------------------------------------------------------------
    def new_key(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter}"

    def remember(self, key: str, fingerprint: tuple[Any, ...], call: Callable[[], Any], result: Any) -> None:
        assert key not in self.committed
        self.committed[key] = Committed(fingerprint, call, result)

    def entry_count(self) -> int:
        return len(self.store.entries(self.client_id))

    @contextmanager
    def no_writes(self) -> Iterator[None]:
        """The block must leave the state and the entries exactly as they were."""
        before = (self.ledger.state(self.client_id).model_dump(), self.entry_count())
        yield
        assert (self.ledger.state(self.client_id).model_dump(), self.entry_count()) == before

    def seen_key(self, key: str, fingerprint: tuple[Any, ...], call: Callable[[], Any]) -> bool:
        """A key with a marker replays its first result, or is refused for another body."""
        seen = self.committed.get(key)
        if seen is None:
            return False
        with self.no_writes():
            if seen.fingerprint == fingerprint:
                assert call() == seen.result
            else:
                with pytest.raises(IdempotencyKeyReused):
                    call()
        return True

    def pick_hold(self, data: st.DataObject) -> str:
        kinds = ["unknown"]
        if self.ref.holds:
            kinds += ["pending", "pending"]
        if self.ref.outcomes:
            kinds.append("resolved")
        kind = data.draw(st.sampled_from(kinds), label="hold kind")
        if kind == "pending":
            return data.draw(st.sampled_from(sorted(self.ref.holds)), label="pending hold")
        if kind == "resolved":
            return data.draw(st.sampled_from(sorted(self.ref.outcomes)), label="resolved hold")
        return f"hold_unknown{data.draw(st.integers(0, 3), label='unknown hold')}"

    def hold_amount(self, hold_id: str) -> int:
        if hold_id in self.ref.holds:
            return self.ref.holds[hold_id].amount
        if hold_id in self.ref.outcomes:
            return self.ref.outcomes[hold_id].amount
        return 10

    def resolve(self, hold_id: str, captured: int, status: HoldStatus, now: datetime) -> HoldOutcome:
        """Apply a capture of ``captured`` credits, or a release (0), to the model."""
        self.ref.expire_due(now)
        hold = self.ref.holds.pop(hold_id)
        self.ref.captured += captured
        self.ref.give_back(hold, hold.amount - captured, now)
        outcome = HoldOutcome(
            id=hold_id,
            status=status,
            amount=hold.amount,
            captured=captured,
            released=hold.amount - captured,
            resolved_at=now,
        )
        self.ref.outcomes[hold_id] = outcome
        return outcome

    # rules --------------------------------------------------------------------------------------
    @initialize(
        grants=st.lists(
            st.tuples(
                st.sampled_from(list(GrantSource)), st.integers(1, 50), st.one_of(st.none(), st.integers(30, 600))
            ),
            max_size=3,
        )
    )
    def opening_balance(self, grants: list[tuple[GrantSource, int, int | None]]) -> None:
        for source, amount, expires_in in grants:
            self.grant(source, amount, expires_in, None)

    @rule(
        source=st.sampled_from(list(GrantSource)),
        amount=st.integers(1, 50),
        expires_in=st.one_of(st.none(), st.integers(-120, 12 * 60)),
        priority=st.one_of(st.none(), st.none(), st.integers(0, 60)),
    )
    def grant(self, source: GrantSource, amount: int, expires_in: int | None, priority: int | None) -> None:
        STEPS["grant"] += 1
        now = self.clock.now
        key = self.new_key("grant")
        expires_at = None if expires_in is None else now + timedelta(minutes=expires_in)

        def call() -> Any:
            return self.ledger.grant(
                self.client_id,
                key=key,
                amount=amount,
                source=source,
                actor=ADMIN,
                reason="property grant",
                expires_at=expires_at,
                priority=priority,
            )

        result = call()
        bucket_id = result["bucket_id"]
        assert result == {"bucket_id": bucket_id, "amount": amount}
        assert bucket_id not in self.ref.buckets
        self.ref.expire_due(now)
        bucket = RefBucket(
            id=bucket_id,
            priority=DEFAULT_PRIORITY[source] if priority is None else priority,
            granted_at=now,
            expires_at=expires_at,
            remaining=amount,
        )
        self.ref.buckets[bucket_id] = bucket
        self.ref.granted += amount
        self.ref.expire_due(now)  # granted already expired: expires at once, with an entry
        self.remember(key, ("grant", amount, source, expires_at, priority), call, result)

    @rule(amount=st.integers(1, 60), ttl=st.integers(10, 6 * 60))
    def reserve(self, amount: int, ttl: int) -> None:
        STEPS["reserve"] += 1
        now = self.clock.now
        key = self.new_key("reserve")

        def call() -> Any:
            return self.ledger.reserve(
                self.client_id,
                key=key,
                amount=amount,
                actor=USER,
                purpose="generate",
                ttl=timedelta(minutes=ttl),
                operation="generate.image",
            )

        spendable = self.ref.spendable(now)
        if amount > spendable:
            with self.no_writes(), pytest.raises(InsufficientCredits) as refused:
                call()
            assert refused.value.status == 402
            assert refused.value.extensions["required"] == amount
            assert refused.value.extensions["available"] == spendable
            assert refused.value.extensions["how_to_get_more"]
            return
        result = call()
        self.ref.expire_due(now)
        draws = self.ref.draw(amount, now)
        hold_id = result["hold_id"]
        assert hold_id not in self.ref.holds and hold_id not in self.ref.outcomes
        assert result["amount"] == amount
        assert list(result["draws"].items()) == draws  # burn order, as drawn
        self.ref.holds[hold_id] = RefHold(hold_id, amount, draws, now + timedelta(minutes=ttl))
        self.remember(key, ("reserve", amount), call, result)

    @rule(data=st.data())
    def capture(self, data: st.DataObject) -> None:
        STEPS["capture"] += 1
        now = self.clock.now
        hold_id = self.pick_hold(data)
        reserved = self.hold_amount(hold_id)
        amount = data.draw(
            st.one_of(st.integers(0, reserved), st.just(reserved), st.integers(reserved + 1, reserved + 5)),
            label="capture amount",
        )
        key = None if data.draw(st.booleans(), label="default key") else self.new_key("capture")
        effective = key or f"capture:{hold_id}"
        fingerprint = ("capture", hold_id, amount)

        def call() -> Any:
            return self.ledger.capture(self.client_id, hold_id, amount=amount, actor=WORKER, reason="done", key=key)

        if self.seen_key(effective, fingerprint, call):
            return
        if hold_id in self.ref.outcomes:  # out of order: resolved already
            first = self.ref.outcomes[hold_id]
            with self.no_writes():
                if first.status is HoldStatus.CAPTURED:
                    assert call() == first
                else:
                    with pytest.raises(HoldAlreadyResolved):
                        call()
            return
        hold = self.ref.holds.get(hold_id)
        if hold is None:
            with self.no_writes(), pytest.raises(HoldNotFound):
                call()
            return
        if amount > hold.amount:
            with self.no_writes(), pytest.raises(ValidationFailed):
                call()
            return
        outcome = call()
        assert outcome == self.resolve(hold_id, amount, HoldStatus.CAPTURED, now)
        self.remember(effective, fingerprint, call, outcome)

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        STEPS["release"] += 1
        now = self.clock.now
        hold_id = self.pick_hold(data)
        key = None if data.draw(st.booleans(), label="default key") else self.new_key("release")
        effective = key or f"release:{hold_id}"
        fingerprint = ("release", hold_id)

        def call() -> Any:
            return self.ledger.release(self.client_id, hold_id, actor=WORKER, reason="job failed", key=key)

        if self.seen_key(effective, fingerprint, call):
            return
        if hold_id in self.ref.outcomes:
            first = self.ref.outcomes[hold_id]
            with self.no_writes():
                if first.status is HoldStatus.RELEASED:
                    assert call() == first
                else:
                    with pytest.raises(HoldAlreadyResolved):
                        call()
            return
        if hold_id not in self.ref.holds:
            with self.no_writes(), pytest.raises(HoldNotFound):
                call()
            return
        outcome = call()
        assert outcome == self.resolve(hold_id, 0, HoldStatus.RELEASED, now)
        self.remember(effective, fingerprint, call, outcome)

    @rule(minutes=st.integers(1, 8 * 60))
    def advance_clock(self, minutes: int) -> None:
        STEPS["advance_clock"] += 1
        self.clock.now += timedelta(minutes=minutes)

    @rule()
    def expire_due(self) -> None:
        STEPS["expire_due"] += 1
        now = self.clock.now
        key = self.new_key("expire")

        def call() -> Any:
            return self.ledger.expire_due(self.client_id, key=key, actor=SYSTEM)

        due = [
            (b.id, b.remaining)
            for b in sorted(self.ref.buckets.values(), key=lambda b: b.id)
            if b.past_due(now) and b.remaining > 0
        ]
        if not due:
            with self.no_writes():
                result = call()
            assert [x for x in result["expired"] if x["amount"]] == []
            return
        result = call()
        assert [(x["bucket_id"], x["amount"]) for x in result["expired"] if x["amount"]] == due
        assert self.ref.expire_due(now) == due
        self.remember(key, ("expire",), call, result)

    @rule()
    def sweep_expired_holds(self) -> None:
        STEPS["sweep_expired_holds"] += 1
        now = self.clock.now
        due = sorted(h.id for h in self.ref.holds.values() if h.deadline <= now)
        released = self.ledger.sweep_expired_holds(self.client_id, actor=SYSTEM)
        assert sorted(released) == due
        for hold_id in due:
            outcome = self.resolve(hold_id, 0, HoldStatus.RELEASED, now)

            def call(hold_id: str = hold_id) -> Any:
                return self.ledger.release(self.client_id, hold_id, actor=SYSTEM, reason="swept")

            self.remember(f"release:{hold_id}", ("release", hold_id), call, outcome)

    @rule(amount=st.integers(-40, 40).filter(bool))
    def adjust(self, amount: int) -> None:
        STEPS["adjust"] += 1
        now = self.clock.now
        key = self.new_key("adjust")

        def call() -> Any:
            return self.ledger.adjust(self.client_id, key=key, amount=amount, actor=ADMIN, reason="correction")

        if amount < 0 and -amount > self.ref.spendable(now):
            with self.no_writes(), pytest.raises(InsufficientCredits) as refused:
                call()
            assert refused.value.extensions["available"] == self.ref.spendable(now)
            return
        result = call()
        self.ref.expire_due(now)
        if amount > 0:
            (bucket_id,) = result["buckets"]
            assert bucket_id not in self.ref.buckets
            assert result == {"amount": amount, "buckets": {bucket_id: amount}}
            self.ref.buckets[bucket_id] = RefBucket(bucket_id, DEFAULT_PRIORITY[GrantSource.ADMIN], now, None, amount)
            self.ref.adjusted_in += amount
        else:
            draws = self.ref.draw(-amount, now)
            assert result == {"amount": amount, "buckets": {bucket_id: -n for bucket_id, n in draws}}
            self.ref.adjusted_out += -amount
        self.remember(key, ("adjust", amount), call, result)

    @rule(which=st.sampled_from(["grant", "reserve", "adjust", "capture"]), amount=st.integers(-5, 0))
    def invalid_amount(self, which: str, amount: int) -> None:
        """Zero or negative amounts are refused with 422 before anything is read or written."""
        STEPS["invalid_amount"] += 1
        key = self.new_key("invalid")
        with self.no_writes(), pytest.raises(ValidationFailed):
            if which == "grant":
                self.ledger.grant(
                    self.client_id, key=key, amount=amount, source=GrantSource.PACK, actor=ADMIN, reason="bad"
                )
            elif which == "reserve":
                self.ledger.reserve(
                    self.client_id, key=key, amount=amount, actor=USER, purpose="bad", ttl=timedelta(minutes=5)
                )
            elif which == "adjust" or not self.ref.holds:
                self.ledger.adjust(self.client_id, key=key, amount=0, actor=ADMIN, reason="bad")
            else:
                hold_id = min(self.ref.holds)
                self.ledger.capture(self.client_id, hold_id, amount=amount - 1, actor=WORKER, reason="bad", key=key)

    @precondition(lambda self: bool(self.committed))
    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        """A retried request, a redelivered task or webhook: the same key and body again."""
        STEPS["duplicate"] += 1
        key = data.draw(st.sampled_from(sorted(self.committed)), label="replayed key")
        seen = self.committed[key]
        with self.no_writes():
            assert seen.call() == seen.result

    @precondition(lambda self: bool(self.committed))
    @rule(data=st.data())
    def reuse_key_for_another_body(self, data: st.DataObject) -> None:
        STEPS["reuse_key_for_another_body"] += 1
        key = data.draw(st.sampled_from(sorted(self.committed)), label="reused key")
        with self.no_writes(), pytest.raises(IdempotencyKeyReused):
            self.ledger.adjust(self.client_id, key=key, amount=7, actor=ADMIN, reason="another body")

    # invariants ---------------------------------------------------------------------------------
    @invariant()
    def ledger_is_consistent(self) -> None:
        state = self.ledger.state(self.client_id)
        entries = self.store.entries(self.client_id)
        ref = self.ref

        assert state.available >= 0
        assert all(b.remaining >= 0 for b in state.buckets.values())
        assert self.ledger.verify(self.client_id) == []
        assert state.reserved == sum(h.amount for h in state.holds.values())

        # The ledger agrees with the reference model, bucket by bucket and hold by hold.
        assert state.available == ref.available()
        assert state.reserved == ref.reserved()
        assert {i: b.remaining for i, b in state.buckets.items()} == {i: b.remaining for i, b in ref.buckets.items()}
        assert {i: h.amount for i, h in state.holds.items()} == {i: h.amount for i, h in ref.holds.items()}
        assert not set(state.holds) & set(ref.outcomes)

        # No credit created or lost: in the model, and summed from the entries.
        assert ref.granted + ref.adjusted_in == (
            ref.available() + ref.reserved() + ref.captured + ref.expired + ref.adjusted_out
        )
        totals: Counter[str] = Counter()
        for entry in entries:
            if entry.type is EntryType.ADJUST:
                totals["adjust_in" if entry.available_delta > 0 else "adjust_out"] += entry.amount
            else:
                totals[entry.type.value] += entry.amount
        assert totals["grant"] == ref.granted
        assert totals["adjust_in"] == ref.adjusted_in
        assert totals["adjust_out"] == ref.adjusted_out
        assert totals["capture"] == ref.captured
        assert totals["expire"] == ref.expired
        assert totals["grant"] + totals["adjust_in"] == (
            state.available + state.reserved + totals["capture"] + totals["expire"] + totals["adjust_out"]
        )

        # Sequence numbers are contiguous and strictly increasing.
        assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
        assert state.seq == len(entries)

        # Each hold resolved at most once: one request (one base key) wrote its capture/release entries.
        resolutions: dict[str, set[str]] = {}
        for entry in entries:
            if entry.type in (EntryType.CAPTURE, EntryType.RELEASE):
                assert entry.hold_id is not None
                resolutions.setdefault(entry.hold_id, set()).add(entry.key.split("#")[0])
        assert all(len(keys) == 1 for keys in resolutions.values()), resolutions
        assert set(resolutions) == set(ref.outcomes)


class MapScramblingStore(InMemoryLedgerStore):
    """The fake, but handing maps back in another key order, as Firestore does (it keeps no order)."""

    def load(self, client_id: str, key: str, hold_id: str | None = None) -> Snapshot:
        snapshot = super().load(client_id, key, hold_id)
        for hold in snapshot.state.holds.values():
            hold.draws = dict(sorted(hold.draws.items(), key=lambda item: hashlib.sha256(item[0].encode()).digest()))
        return snapshot


def machine_for(store_factory: Callable[[], LedgerStore], name: str = "LedgerMachineOn") -> type[LedgerMachine]:
    """The same machine over another store (a fresh store object per example)."""
    return type(name, (LedgerMachine,), {"store_factory": staticmethod(store_factory)})


# A soak run may take as long as it needs (the suite's default per-test timeout would cut it short).
soak_timeout = pytest.mark.timeout(0 if os.environ.get("EPOX_PROPERTY_EXAMPLES") else 300)


@soak_timeout
def test_ledger_keeps_its_invariants_in_memory() -> None:
    STEPS.clear()
    budget = property_settings()
    run_state_machine_as_test(LedgerMachine, settings=budget)
    total = sum(STEPS.values())
    print(f"\nledger state machine (in memory): {total} steps: {dict(sorted(STEPS.items()))}")
    assert total >= 5 * budget.max_examples, STEPS
    for rule_name in ("grant", "reserve", "capture", "release", "duplicate", "expire_due", "sweep_expired_holds"):
        assert STEPS[rule_name] > 0, rule_name


@soak_timeout
def test_ledger_does_not_depend_on_the_stored_order_of_maps() -> None:
    STEPS.clear()
    machine = machine_for(MapScramblingStore, name="LedgerMachineOnScrambledMaps")
    run_state_machine_as_test(machine, settings=property_settings(examples=100, steps=40))
    assert sum(STEPS.values()) >= 500, STEPS
