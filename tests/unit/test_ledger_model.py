"""Example-based tests of the credit ledger's rules (``shared.ledger.model``), plus the few that need
the service's idempotency markers and hold records (run over the in-memory store)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.errors import InsufficientCredits, ValidationFailed
from shared.ledger import model
from shared.ledger.model import (
    Actor,
    EntryType,
    GrantSource,
    HoldAlreadyResolved,
    HoldNotFound,
    HoldOutcome,
    HoldStatus,
    LedgerState,
    Mutation,
)
from shared.ledger.service import Ledger
from shared.ledger.store import LedgerStore
from tests.fakes import InMemoryLedgerStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
ADMIN = Actor(kind="admin", id="a1")
USER = Actor(kind="user", id="u1")
WORKER = Actor(kind="task", id="t1")


# -- helpers over the pure rules --------------------------------------------------------------------


def empty() -> LedgerState:
    return LedgerState(client_id="c1")


def grant(
    state: LedgerState,
    bucket_id: str,
    amount: int,
    *,
    source: GrantSource = GrantSource.PACK,
    at: datetime = T0,
    expires_at: datetime | None = None,
    low_threshold: int = 0,
) -> Mutation:
    return model.grant(
        state,
        key=f"grant:{bucket_id}",
        bucket_id=bucket_id,
        source=source,
        amount=amount,
        now=at,
        actor=ADMIN,
        reason="test grant",
        expires_at=expires_at,
        low_threshold=low_threshold,
    )


def reserve(state: LedgerState, hold_id: str, amount: int, *, at: datetime = T0, low_threshold: int = 0) -> Mutation:
    return model.reserve(
        state,
        key=f"reserve:{hold_id}",
        hold_id=hold_id,
        amount=amount,
        now=at,
        deadline=at + HOUR,
        actor=USER,
        purpose="generate",
        low_threshold=low_threshold,
    )


def capture(
    state: LedgerState, hold_id: str, amount: int, *, at: datetime = T0, resolved: HoldOutcome | None = None
) -> Mutation:
    return model.capture(
        state,
        key=f"capture:{hold_id}",
        hold_id=hold_id,
        amount=amount,
        now=at,
        actor=WORKER,
        reason="done",
        resolved=resolved,
    )


def release(state: LedgerState, hold_id: str, *, at: datetime = T0, resolved: HoldOutcome | None = None) -> Mutation:
    return model.release(
        state, key=f"release:{hold_id}", hold_id=hold_id, now=at, actor=WORKER, reason="failed", resolved=resolved
    )


def remaining(state: LedgerState) -> dict[str, int]:
    return {bucket_id: bucket.remaining for bucket_id, bucket in state.buckets.items()}


def draws(mutation: Mutation) -> list[tuple[str, int]]:
    return list(mutation.result["draws"].items())


# -- burn order -------------------------------------------------------------------------------------


def test_burn_order_takes_the_lowest_priority_first() -> None:
    s = grant(empty(), "pack", 10, source=GrantSource.PACK).state  # priority 50
    s = grant(s, "sub", 10, source=GrantSource.SUBSCRIPTION, expires_at=T0 + 30 * DAY).state  # 30
    s = grant(s, "promo", 10, source=GrantSource.PROMO, expires_at=T0 + 60 * DAY).state  # 10

    m = reserve(s, "h1", 25)

    assert draws(m) == [("promo", 10), ("sub", 10), ("pack", 5)]
    assert remaining(m.state) == {"pack": 5, "sub": 0, "promo": 0}
    assert (m.state.available, m.state.reserved) == (5, 25)


def test_burn_order_within_a_priority_takes_the_soonest_expiry_and_never_expiring_last() -> None:
    s = grant(empty(), "never", 5, source=GrantSource.SUBSCRIPTION).state
    s = grant(s, "in20d", 5, source=GrantSource.SUBSCRIPTION, expires_at=T0 + 20 * DAY).state
    s = grant(s, "in5d", 5, source=GrantSource.SUBSCRIPTION, expires_at=T0 + 5 * DAY).state

    assert [b.id for b in model.burn_order(s.buckets, T0)] == ["in5d", "in20d", "never"]
    assert draws(reserve(s, "h1", 12)) == [("in5d", 5), ("in20d", 5), ("never", 2)]


def test_burn_order_with_equal_priority_and_expiry_takes_the_oldest() -> None:
    s = grant(empty(), "newest", 5, at=T0).state
    s = grant(s, "oldest", 5, at=T0 - 2 * DAY).state
    s = grant(s, "middle", 5, at=T0 - DAY).state
    expiry = T0 + 10 * DAY
    s = grant(s, "exp-new", 5, source=GrantSource.SIGNUP, at=T0, expires_at=expiry).state
    s = grant(s, "exp-old", 5, source=GrantSource.SIGNUP, at=T0 - DAY, expires_at=expiry).state

    assert [b.id for b in model.burn_order(s.buckets, T0)] == ["exp-old", "exp-new", "oldest", "middle", "newest"]


def test_expired_buckets_are_skipped_and_expired_with_an_entry_before_drawing() -> None:
    s = grant(empty(), "promo", 10, source=GrantSource.PROMO, at=T0 - DAY, expires_at=T0 - HOUR).state
    s = grant(s, "pack", 10, at=T0 - 2 * HOUR).state
    assert s.available == 20 and not s.buckets["promo"].expired  # not swept yet: still on the books
    assert [b.id for b in model.burn_order(s.buckets, T0)] == ["pack"]
    assert model.spendable(s, T0) == 10

    m = reserve(s, "h1", 4)

    assert draws(m) == [("pack", 4)]
    assert [(e.type, e.bucket_deltas) for e in m.entries] == [
        (EntryType.EXPIRE, {"promo": -10}),
        (EntryType.RESERVE, {"pack": -4}),
    ]
    assert m.state.buckets["promo"].expired
    assert (m.state.available, m.state.reserved) == (6, 4)


# -- holds ------------------------------------------------------------------------------------------


def three_buckets() -> LedgerState:
    s = grant(empty(), "promo", 5, source=GrantSource.PROMO).state
    s = grant(s, "signup", 5, source=GrantSource.SIGNUP).state
    return grant(s, "pack", 10, source=GrantSource.PACK).state


def test_partial_capture_returns_the_remainder_to_the_last_drawn_buckets() -> None:
    m = reserve(three_buckets(), "h1", 12)
    assert draws(m) == [("promo", 5), ("signup", 5), ("pack", 2)]

    c = capture(m.state, "h1", 4)

    assert [(e.type, e.amount, e.bucket_deltas) for e in c.entries] == [
        (EntryType.CAPTURE, 4, {}),
        (EntryType.RELEASE, 8, {"pack": 2, "signup": 5, "promo": 1}),
    ]
    assert remaining(c.state) == {"promo": 1, "signup": 5, "pack": 10}
    assert (c.state.available, c.state.reserved, c.state.holds) == (16, 0, {})
    assert c.result["hold"]["status"] == "captured"
    assert (c.result["hold"]["captured"], c.result["hold"]["released"]) == (4, 8)


def test_partial_capture_does_not_depend_on_the_stored_order_of_the_draws() -> None:
    """Firestore hands maps back in its own key order; the remainder must still go to the last drawn."""
    m = reserve(three_buckets(), "h1", 12)
    scrambled = m.state.model_copy(deep=True)
    hold = scrambled.holds["h1"]
    hold.draws = dict(sorted(hold.draws.items()))  # pack, promo, signup: not the burn order

    c = capture(scrambled, "h1", 4)

    assert remaining(c.state) == {"promo": 1, "signup": 5, "pack": 10}


def test_full_capture_writes_one_entry_and_capture_of_zero_releases_everything() -> None:
    m = reserve(three_buckets(), "h1", 7)

    full = capture(m.state, "h1", 7)
    assert [e.type for e in full.entries] == [EntryType.CAPTURE]
    assert (full.state.available, full.state.reserved) == (13, 0)

    nothing = capture(m.state, "h1", 0)
    assert [e.type for e in nothing.entries] == [EntryType.RELEASE]
    assert remaining(nothing.state) == remaining(three_buckets())


def test_release_into_an_expired_bucket_expires_the_credits_again_with_an_entry() -> None:
    s = grant(empty(), "promo", 10, source=GrantSource.PROMO, expires_at=T0 + HOUR).state
    s = grant(s, "pack", 10).state
    m = reserve(s, "h1", 15)
    assert draws(m) == [("promo", 10), ("pack", 5)]

    r = release(m.state, "h1", at=T0 + 2 * HOUR)

    assert [(e.type, e.bucket_deltas) for e in r.entries] == [
        (EntryType.RELEASE, {"pack": 5, "promo": 10}),
        (EntryType.EXPIRE, {"promo": -10}),
    ]
    assert r.entries[-1].reason == "returned to an expired bucket"
    assert remaining(r.state) == {"promo": 0, "pack": 10}
    assert r.state.buckets["promo"].expired
    assert (r.state.available, r.state.reserved) == (10, 0)


def test_release_into_a_bucket_the_sweep_already_expired() -> None:
    s = grant(empty(), "promo", 10, source=GrantSource.PROMO, expires_at=T0 + HOUR).state
    m = reserve(s, "h1", 6)
    swept = model.expire_due(m.state, key="expire-1", now=T0 + 2 * HOUR, actor=ADMIN)
    assert [e.amount for e in swept.entries] == [4]
    assert swept.state.buckets["promo"].expired

    c = capture(swept.state, "h1", 2, at=T0 + 3 * HOUR)

    assert [(e.type, e.amount) for e in c.entries] == [
        (EntryType.CAPTURE, 2),
        (EntryType.RELEASE, 4),
        (EntryType.EXPIRE, 4),
    ]
    assert (c.state.available, c.state.reserved) == (0, 0)


def test_a_hard_block_at_zero_refuses_with_402_and_says_how_to_get_more() -> None:
    s = grant(empty(), "pack", 5).state
    s = grant(s, "old-promo", 50, source=GrantSource.PROMO, at=T0 - DAY, expires_at=T0).state

    with pytest.raises(InsufficientCredits) as refused:
        reserve(s, "h1", 6)

    err = refused.value
    assert (err.status, err.code) == (402, "insufficient_credits")
    assert err.extensions["required"] == 6
    assert err.extensions["available"] == 5  # the bucket that expired at T0 does not count
    assert "credit pack" in err.extensions["how_to_get_more"]

    spent = reserve(s, "h2", 5).state
    with pytest.raises(InsufficientCredits) as at_zero:
        reserve(spent, "h3", 1)
    assert at_zero.value.extensions["available"] == 0


def test_capture_of_more_than_was_reserved_is_422() -> None:
    m = reserve(three_buckets(), "h1", 5)
    for amount in (6, -1):
        with pytest.raises(ValidationFailed) as invalid:
            capture(m.state, "h1", amount)
        assert invalid.value.status == 422
        assert invalid.value.extensions["errors"][0]["field"] == "amount"


def test_a_capture_records_its_breakdown_by_operation_only_if_it_adds_up() -> None:
    m = reserve(three_buckets(), "h1", 7)
    split = {"remove_background": 2, "upscale": 4}
    common = {"key": "c1", "hold_id": "h1", "now": T0, "actor": WORKER, "reason": "edit", "resolved": None}
    resolve = model.capture(m.state, amount=6, breakdown=split, **common)  # type: ignore[arg-type]
    [captured, _released] = resolve.entries
    assert (captured.type, captured.amount, captured.breakdown) == (EntryType.CAPTURE, 6, split)
    with pytest.raises(ValueError, match="add up"):
        model.capture(m.state, amount=7, breakdown=split, **common)  # type: ignore[arg-type]


def test_capture_or_release_of_an_unknown_hold_is_404() -> None:
    with pytest.raises(HoldNotFound) as missing:
        capture(three_buckets(), "nope", 1)
    assert missing.value.status == 404
    with pytest.raises(HoldNotFound):
        release(three_buckets(), "nope")


def test_capture_after_release_and_release_after_capture_are_409_hold_already_resolved() -> None:
    m = reserve(three_buckets(), "h1", 5)
    released = HoldOutcome.model_validate(release(m.state, "h1").result["hold"])
    captured = HoldOutcome.model_validate(capture(m.state, "h1", 3).result["hold"])

    with pytest.raises(HoldAlreadyResolved) as conflict:
        capture(m.state, "h1", 3, resolved=released)
    assert (conflict.value.status, conflict.value.code) == (409, "hold_already_resolved")
    with pytest.raises(HoldAlreadyResolved):
        release(m.state, "h1", resolved=captured)

    # Resolving the same way again replays the first outcome and writes nothing.
    again = capture(m.state, "h1", 5, resolved=captured)
    assert again.entries == [] and again.result["hold"] == captured.model_dump(mode="json")
    assert release(m.state, "h1", resolved=released).entries == []


# -- grants and adjustments -------------------------------------------------------------------------


def test_grant_with_an_expiry_in_the_past_is_recorded_and_expired_at_once() -> None:
    g = grant(empty(), "late", 10, source=GrantSource.SUBSCRIPTION, expires_at=T0 - DAY)

    assert [(e.type, e.amount, e.bucket_deltas) for e in g.entries] == [
        (EntryType.GRANT, 10, {"late": 10}),
        (EntryType.EXPIRE, 10, {"late": -10}),
    ]
    assert g.entries[1].reason == "granted already expired"
    assert g.state.buckets["late"].expired and g.state.buckets["late"].granted == 10
    assert (g.state.available, g.state.seq) == (0, 2)
    assert g.state.next_bucket_expiry is None
    assert [e.key for e in g.entries] == ["grant:late", "grant:late#1"]

    at_now = grant(empty(), "now", 10, expires_at=T0)  # expiring at this very moment counts as past
    assert [e.type for e in at_now.entries] == [EntryType.GRANT, EntryType.EXPIRE]


def test_grant_and_adjust_refuse_non_positive_and_zero_amounts() -> None:
    for amount in (0, -5):
        with pytest.raises(ValidationFailed):
            grant(empty(), "b", amount)
        with pytest.raises(ValidationFailed):
            reserve(three_buckets(), "h", amount)
    with pytest.raises(ValidationFailed):
        model.adjust(three_buckets(), key="a", bucket_id="adj", amount=0, now=T0, actor=ADMIN, reason="zero")


def test_adjust_adds_an_admin_bucket_or_removes_spendable_credits_in_burn_order() -> None:
    s = three_buckets()
    up = model.adjust(s, key="a1", bucket_id="adj1", amount=7, now=T0, actor=ADMIN, reason="goodwill")
    assert up.state.buckets["adj1"].source is GrantSource.ADMIN
    assert up.state.available == 27
    assert up.result == {"amount": 7, "buckets": {"adj1": 7}}

    down = model.adjust(s, key="a2", bucket_id="adj2", amount=-8, now=T0, actor=ADMIN, reason="clawback")
    assert down.result == {"amount": -8, "buckets": {"promo": -5, "signup": -3}}
    assert [(e.type, e.amount, e.available_delta) for e in down.entries] == [(EntryType.ADJUST, 8, -8)]
    assert "adj2" not in down.state.buckets


def test_adjust_negative_beyond_available_is_402() -> None:
    s = reserve(three_buckets(), "h1", 15).state  # 5 left; reserved credits cannot be removed

    with pytest.raises(InsufficientCredits) as refused:
        model.adjust(s, key="a", bucket_id="adj", amount=-6, now=T0, actor=ADMIN, reason="too much")

    assert refused.value.status == 402
    assert (refused.value.extensions["required"], refused.value.extensions["available"]) == (6, 5)
    assert model.adjust(s, key="a", bucket_id="adj", amount=-5, now=T0, actor=ADMIN, reason="ok").state.available == 0


# -- low balance ------------------------------------------------------------------------------------


def new_ledger(store: LedgerStore | None = None, *, threshold: int = 10) -> tuple[Ledger, InMemoryLedgerStore]:
    store = store or InMemoryLedgerStore()
    assert isinstance(store, InMemoryLedgerStore)
    return Ledger(store, clock=lambda: T0, low_balance_threshold=threshold, sleep=lambda _: None), store


def kinds(store: InMemoryLedgerStore, client_id: str = "c1") -> list[str]:
    return [note.kind for note in store.notifications.get(client_id, [])]


def test_low_balance_is_notified_once_per_crossing_and_again_after_recovering() -> None:
    ledger, store = new_ledger()
    ledger.grant("c1", key="g1", amount=30, source=GrantSource.PACK, actor=ADMIN, reason="pack")
    ledger.reserve("c1", key="r1", amount=15, actor=USER, purpose="p", ttl=HOUR)
    assert kinds(store) == []  # 15 left: above the threshold

    ledger.reserve("c1", key="r2", amount=6, actor=USER, purpose="p", ttl=HOUR)  # 9 left: crosses
    assert kinds(store) == ["low_balance"]
    note = store.notifications["c1"][0]
    assert (note.available, note.threshold) == (9, 10)

    hold = ledger.reserve("c1", key="r3", amount=2, actor=USER, purpose="p", ttl=HOUR)  # 7
    ledger.reserve("c1", key="r4", amount=1, actor=USER, purpose="p", ttl=HOUR)  # 6
    ledger.release("c1", hold["hold_id"], actor=WORKER, reason="failed")  # 8: still below
    ledger.reserve("c1", key="r3", amount=2, actor=USER, purpose="p", ttl=HOUR)  # a retry: replayed
    assert kinds(store) == ["low_balance"]  # once per crossing, not per request

    ledger.grant("c1", key="g2", amount=20, source=GrantSource.PACK, actor=ADMIN, reason="pack")  # 28: recovered
    assert kinds(store) == ["low_balance"]
    assert not ledger.state("c1").low_balance

    ledger.reserve("c1", key="r5", amount=25, actor=USER, purpose="p", ttl=HOUR)  # 3: crosses again
    assert kinds(store) == ["low_balance", "low_balance"]


def test_dropping_to_zero_is_notified_as_depleted() -> None:
    ledger, store = new_ledger()
    ledger.grant("c1", key="g1", amount=20, source=GrantSource.PACK, actor=ADMIN, reason="pack")

    ledger.reserve("c1", key="r1", amount=20, actor=USER, purpose="p", ttl=HOUR)

    assert kinds(store) == ["depleted"]
    assert store.notifications["c1"][0].available == 0
    with pytest.raises(InsufficientCredits):
        ledger.reserve("c1", key="r2", amount=1, actor=USER, purpose="p", ttl=HOUR)
    assert kinds(store) == ["depleted"]


def test_low_balance_crossing_in_the_pure_rules() -> None:
    s = grant(empty(), "pack", 12, low_threshold=10).state
    crossing = reserve(s, "h1", 3, low_threshold=10)
    assert [n.kind for n in crossing.notifications] == ["low_balance"]
    assert crossing.state.low_balance
    assert reserve(crossing.state, "h2", 1, low_threshold=10).notifications == []


# -- service: markers and hold records --------------------------------------------------------------


def test_a_second_capture_with_the_same_amount_returns_the_same_outcome_and_writes_nothing() -> None:
    ledger, store = new_ledger()
    ledger.grant("c1", key="g1", amount=30, source=GrantSource.PACK, actor=ADMIN, reason="pack")
    hold = ledger.reserve("c1", key="r1", amount=10, actor=USER, purpose="p", ttl=HOUR)
    first = ledger.capture("c1", hold["hold_id"], amount=6, actor=WORKER, reason="done")
    entries, state = store.entries("c1"), ledger.state("c1")

    again = ledger.capture("c1", hold["hold_id"], amount=6, actor=WORKER, reason="done")  # redelivered task
    other_key = ledger.capture("c1", hold["hold_id"], amount=6, actor=WORKER, reason="done", key="another")

    assert again == first == other_key
    assert (first.status, first.captured, first.released) == (HoldStatus.CAPTURED, 6, 4)
    assert store.entries("c1") == entries
    assert ledger.state("c1") == state
    assert ledger.stats.replays == 1
    assert ledger.verify("c1") == []


def test_capture_after_release_and_release_after_capture_through_the_service() -> None:
    ledger, _ = new_ledger()
    ledger.grant("c1", key="g1", amount=30, source=GrantSource.PACK, actor=ADMIN, reason="pack")
    a = ledger.reserve("c1", key="r1", amount=5, actor=USER, purpose="p", ttl=HOUR)["hold_id"]
    b = ledger.reserve("c1", key="r2", amount=5, actor=USER, purpose="p", ttl=HOUR)["hold_id"]
    ledger.release("c1", a, actor=WORKER, reason="failed")
    ledger.capture("c1", b, amount=5, actor=WORKER, reason="done")

    with pytest.raises(HoldAlreadyResolved) as conflict:
        ledger.capture("c1", a, amount=5, actor=WORKER, reason="late success")
    assert conflict.value.status == 409
    with pytest.raises(HoldAlreadyResolved):
        ledger.release("c1", b, actor=WORKER, reason="late failure")
    assert ledger.state("c1").available == 25
    assert ledger.verify("c1") == []


def test_the_sweeper_releases_holds_past_their_deadline_only() -> None:
    now = [T0]
    store = InMemoryLedgerStore()
    ledger = Ledger(store, clock=lambda: now[0], sleep=lambda _: None)
    ledger.grant("c1", key="g1", amount=30, source=GrantSource.PACK, actor=ADMIN, reason="pack")
    short = ledger.reserve("c1", key="r1", amount=5, actor=USER, purpose="p", ttl=HOUR)["hold_id"]
    long = ledger.reserve("c1", key="r2", amount=5, actor=USER, purpose="p", ttl=3 * HOUR)["hold_id"]

    now[0] = T0 + 2 * HOUR
    assert ledger.sweep_expired_holds("c1", actor=ADMIN) == [short]
    assert ledger.sweep_expired_holds("c1", actor=ADMIN) == []
    assert set(ledger.state("c1").holds) == {long}
    assert ledger.state("c1").available == 25
    with pytest.raises(HoldAlreadyResolved):  # the worker comes back too late
        ledger.capture("c1", short, amount=5, actor=WORKER, reason="done")


def test_the_sweeper_skips_a_hold_its_worker_captured_since_the_sweep_read_the_state() -> None:
    class RacingStore(InMemoryLedgerStore):
        """The worker captures the hold between the sweeper's read and its release."""

        race: Ledger | None = None

        def state(self, client_id: str) -> LedgerState:
            state = super().state(client_id)
            if self.race is not None:
                racer, self.race = self.race, None
                for hold_id in state.holds:
                    racer.capture(client_id, hold_id, amount=1, actor=WORKER, reason="just in time")
            return state

    now = [T0]
    store = RacingStore()
    ledger = Ledger(store, clock=lambda: now[0], sleep=lambda _: None)
    ledger.grant("c1", key="g1", amount=30, source=GrantSource.PACK, actor=ADMIN, reason="pack")
    ledger.reserve("c1", key="r1", amount=5, actor=USER, purpose="p", ttl=HOUR)
    now[0] = T0 + 2 * HOUR
    store.race = ledger

    assert ledger.sweep_expired_holds("c1", actor=ADMIN) == []
    assert ledger.state("c1").available == 29
    assert ledger.verify("c1") == []


# -- drift ------------------------------------------------------------------------------------------


def consistent() -> tuple[LedgerState, list[model.Entry]]:
    entries: list[model.Entry] = []
    s = empty()
    for mutation in (
        lambda st: grant(st, "promo", 5, source=GrantSource.PROMO),
        lambda st: grant(st, "pack", 10),
        lambda st: reserve(st, "h1", 8),
        lambda st: capture(st, "h1", 3),
        lambda st: reserve(st, "h2", 2),
    ):
        m = mutation(s)
        s = m.state
        entries.extend(m.entries)
    return s, entries


def test_drift_is_empty_for_a_consistent_state() -> None:
    state, entries = consistent()
    assert model.drift(state, entries) == []
    assert model.replay("c1", entries) == (10, 2, {"promo": 0, "pack": 10})


def test_drift_detects_a_tampered_state() -> None:
    state, entries = consistent()

    more = state.model_copy(deep=True)
    more.available += 5
    more.buckets["pack"].remaining += 5
    assert model.drift(more, entries) == ["available: state 15, entries 10", "bucket pack: state 15, entries 10"]

    uncached = state.model_copy(deep=True)
    uncached.available += 1
    assert "available differs from the sum of bucket balances" in model.drift(uncached, entries)

    lost_hold = state.model_copy(deep=True)
    del lost_hold.holds["h2"]
    assert model.drift(lost_hold, entries) == ["reserved differs from the sum of pending holds"]

    negative = state.model_copy(deep=True)
    negative.buckets["promo"].remaining = -1
    negative.buckets["pack"].remaining = 11
    assert "bucket promo is negative" in model.drift(negative, entries)

    assert model.drift(state, entries[:-1]) == [
        "available: state 10, entries 12",
        "reserved: state 2, entries 0",
        "bucket promo: state 0, entries 2",
        f"entry count {len(entries) - 1} differs from seq {state.seq}",
    ]


def test_revoked_pack_credits_on_hold_are_taken_back_when_returned_not_when_spent() -> None:
    from datetime import UTC, datetime, timedelta

    from shared.ledger import model as m

    now = datetime(2026, 1, 1, tzinfo=UTC)
    actor = m.Actor(kind="system", id="t")
    entries: list[m.Entry] = []

    def step(mutation: m.Mutation) -> m.LedgerState:
        entries.extend(mutation.entries)
        return mutation.state

    state = step(
        m.grant(
            m.LedgerState(client_id="c"),
            key="g",
            bucket_id="pack",
            source=m.GrantSource.PACK,
            amount=500,
            now=now,
            actor=actor,
            reason="pack",
        )
    )
    state = step(
        m.reserve(
            state,
            key="r",
            hold_id="h",
            amount=300,
            now=now,
            deadline=now + timedelta(hours=1),
            actor=actor,
            purpose="job",
        )
    )
    revoked = m.revoke(state, key="x", bucket_id="pack", target=500, now=now, actor=actor, reason="refund")
    assert (revoked.result["removed"], revoked.result["on_hold"]) == (200, 300)
    assert "300 on hold, taken back when released" in revoked.entries[0].reason
    state = step(revoked)
    assert state.buckets["pack"].revoke_outstanding == 300
    # 100 of the hold is spent (stays spent); the 200 that come back are taken back at once.
    state = step(m.capture(state, key="c", hold_id="h", amount=100, now=now, actor=actor, reason="done", resolved=None))
    assert (state.available, state.reserved) == (0, 0)
    assert state.buckets["pack"].remaining == 0
    assert state.buckets["pack"].revoke_outstanding == 100  # nothing pending can return it any more
    assert state.buckets["pack"].revoked == 400  # 200 at once, 200 when the hold returned them
    assert m.drift(state, entries) == []


def test_revocation_is_cumulative_to_the_largest_target() -> None:
    """Refunds name the total refunded so far: each asks for a total, and only what it adds is taken."""
    from datetime import UTC, datetime

    from shared.ledger import model as m

    now = datetime(2026, 1, 1, tzinfo=UTC)
    actor = m.Actor(kind="stripe", id="evt")
    state = m.grant(
        m.LedgerState(client_id="c"), key="g", bucket_id="pack", source=m.GrantSource.PACK, amount=100, now=now,
        actor=actor, reason="pack",
    ).state  # fmt: skip

    def revoke(state: m.LedgerState, target: int) -> m.Mutation:
        return m.revoke(state, key=f"r{target}", bucket_id="pack", target=target, now=now, actor=actor, reason="refund")

    first = revoke(state, 29)
    assert (first.result["removed"], first.result["applied"]) == (29, True)
    second = revoke(first.state, 58)
    assert second.result["removed"] == 29 and second.state.buckets["pack"].remaining == 42
    # An older, smaller target after a larger one (reordered) or the same one again changes nothing.
    for target in (29, 58):
        again = revoke(second.state, target)
        assert again.entries == [] and again.result["applied"] is False
    # Two targets decided on the same state (concurrent): the later commit re-reads and adds only its rest.
    larger_first = revoke(revoke(first.state, 58).state, 40)
    assert larger_first.entries == [] and larger_first.state.buckets["pack"].revoked == 58


def test_revoking_an_expired_or_spent_bucket_says_so() -> None:
    from datetime import UTC, datetime, timedelta

    from shared.ledger import model as m

    now = datetime(2026, 1, 1, tzinfo=UTC)
    actor = m.Actor(kind="stripe", id="evt")
    state = m.grant(
        m.LedgerState(client_id="c"), key="g", bucket_id="pack", source=m.GrantSource.PACK, amount=100, now=now,
        actor=actor, reason="pack", expires_at=now + timedelta(days=1),
    ).state  # fmt: skip
    later = now + timedelta(days=2)
    expired = m.revoke(state, key="r", bucket_id="pack", target=100, now=later, actor=actor, reason="refund")
    assert expired.result["removed"] == 0 and "had expired" in expired.entries[-1].reason
