"""The credit ledger's pure domain: state, entries and the rules that change them. No I/O.

One :class:`LedgerState` per client holds the live buckets and pending holds; every mutation is a
pure function ``state → (new state, entries, result)``. Storage (Firestore, or memory in tests)
commits the new state together with the entries and the idempotency marker atomically.

Credits are whole numbers. ``available`` is what can be spent now; ``reserved`` is what pending
holds have set aside. A bucket's ``remaining`` is its unreserved credits, so at all times
``available == sum(bucket.remaining)`` and ``reserved == sum(hold.amount)``.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.errors import Conflict, InsufficientCredits, NotFound, ValidationFailed
from shared.events.model import CreditsThreshold, DomainEvent, EventType, Subject, new_event


class GrantSource(str, Enum):
    SIGNUP = "signup"
    SUBSCRIPTION = "subscription"
    PACK = "pack"
    ADMIN = "admin"
    PROMO = "promo"
    REFUND = "refund"


# Lower burns first: promotional and plan credits (which expire) go before paid packs.
DEFAULT_PRIORITY: dict[GrantSource, int] = {
    GrantSource.PROMO: 10,
    GrantSource.SIGNUP: 20,
    GrantSource.SUBSCRIPTION: 30,
    GrantSource.REFUND: 40,
    GrantSource.ADMIN: 40,
    GrantSource.PACK: 50,
}


class EntryType(str, Enum):
    GRANT = "grant"
    RESERVE = "reserve"
    CAPTURE = "capture"
    RELEASE = "release"
    EXPIRE = "expire"
    ADJUST = "adjust"


class HoldStatus(str, Enum):
    PENDING = "pending"
    CAPTURED = "captured"
    RELEASED = "released"


class Actor(BaseModel):
    """Who caused a change: a user, an admin, the system, a Stripe event, a task."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str  # user | admin | system | stripe | task
    id: str


class Bucket(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    source: GrantSource
    granted: int
    remaining: int
    priority: int
    granted_at: datetime
    expires_at: datetime | None = None
    expired: bool = False
    reference: str | None = None  # e.g. a Stripe invoice id or pack purchase
    # A refunded pack: the largest total of credits its refunds claimed back (cumulative, like
    # Stripe's ``amount_refunded``), what was actually taken, and what is still to take back when
    # pending holds return credits they drew from it. Spent credits are never clawed back.
    revoke_target: int = 0
    revoked: int = 0
    revoke_outstanding: int = 0


class Hold(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    amount: int
    draws: dict[str, int]  # bucket id → credits taken from it, in burn order
    purpose: str
    operation: str | None = None
    deadline: datetime
    created_at: datetime
    actor: Actor


class HoldOutcome(BaseModel):
    """A resolved hold, kept so a second capture/release returns the first result."""

    model_config = ConfigDict(extra="forbid")

    id: str
    status: HoldStatus
    amount: int
    captured: int
    released: int
    resolved_at: datetime


class LedgerState(BaseModel):
    """``clients/{client}/ledger/state``: the cache of everything the entries say."""

    model_config = ConfigDict(extra="forbid")

    client_id: str
    available: int = 0
    reserved: int = 0
    buckets: dict[str, Bucket] = Field(default_factory=dict)
    holds: dict[str, Hold] = Field(default_factory=dict)
    seq: int = 0
    # A new client starts at zero, i.e. already "low" and "depleted": notices are for crossings,
    # and a first small grant is not one.
    low_balance: bool = True
    depleted: bool = True
    next_hold_deadline: datetime | None = None
    next_bucket_expiry: datetime | None = None
    updated_at: datetime | None = None


class Entry(BaseModel):
    """One append-only ledger entry. Deltas are signed; buckets lists per-bucket deltas."""

    model_config = ConfigDict(extra="forbid")

    seq: int
    type: EntryType
    amount: int
    available_delta: int
    reserved_delta: int
    bucket_deltas: dict[str, int] = Field(default_factory=dict)
    hold_id: str | None = None
    bucket_id: str | None = None
    operation: str | None = None
    # A capture that paid for several priced operations at once (an edit pipeline): credits per
    # operation, summing to ``amount``; empty when ``operation`` says it all.
    breakdown: dict[str, int] = Field(default_factory=dict)
    purpose: str | None = None
    actor: Actor
    reason: str
    key: str
    available_after: int
    reserved_after: int
    created_at: datetime


class Notification(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str  # low_balance | depleted
    available: int
    threshold: int
    created_at: datetime


def threshold_events(client_id: str, mutation: Mutation) -> list[DomainEvent]:
    """The balance crossings of ``mutation`` as the events its commit carries (``credits.low``,
    ``credits.depleted``), ordered by the ledger entry that crossed."""
    seq = mutation.entries[-1].seq if mutation.entries else mutation.state.seq
    return [
        new_event(
            client_id,
            EventType.CREDITS_DEPLETED if note.kind == "depleted" else EventType.CREDITS_LOW,
            Subject(kind="ledger", id=client_id),
            CreditsThreshold(available=note.available, threshold=note.threshold),
            occurred_at=note.created_at,
            sequence=seq,
            discriminator=f"{seq}-{index}",
        )
        for index, note in enumerate(mutation.notifications)
    ]


class Mutation(BaseModel):
    """What one ledger operation produced; committed atomically by the store."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    state: LedgerState
    entries: list[Entry]
    result: dict[str, Any]
    notifications: list[Notification] = Field(default_factory=list)


class HoldNotFound(NotFound):
    code = "hold_not_found"
    title = "No such hold"


class HoldAlreadyResolved(Conflict):
    code = "hold_already_resolved"
    title = "The hold was already resolved another way"


def _burn_key(b: Bucket) -> tuple[Any, ...]:
    return (b.priority, b.expires_at is None, b.expires_at or b.granted_at, b.granted_at, b.id)


def burn_order(buckets: dict[str, Bucket], now: datetime) -> list[Bucket]:
    """Spendable buckets in the order credits leave them: priority, soonest expiry, oldest."""
    live = [b for b in buckets.values() if b.remaining > 0 and not b.expired and not _is_past(b.expires_at, now)]
    return sorted(live, key=_burn_key)


def _is_past(moment: datetime | None, now: datetime) -> bool:
    return moment is not None and moment <= now


def spendable(state: LedgerState, now: datetime) -> int:
    """Credits that can be spent now: buckets past their expiry do not count even before the sweep."""
    return sum(b.remaining for b in burn_order(state.buckets, now))


class _Builder:
    """Accumulates entries against a working copy of the state."""

    def __init__(self, state: LedgerState, key: str, actor: Actor, now: datetime) -> None:
        self.state = state.model_copy(deep=True)
        self.key = key
        self.actor = actor
        self.now = now
        self.entries: list[Entry] = []

    def expire_past_due(self) -> None:
        """Buckets past their expiry expire before anything else happens (the sweep may lag)."""
        for bucket in sorted(self.state.buckets.values(), key=lambda x: x.id):
            if not bucket.expired and _is_past(bucket.expires_at, self.now):
                self.expire_bucket(bucket, "bucket reached its expiry date")

    def entry(
        self,
        type_: EntryType,
        *,
        amount: int,
        available_delta: int,
        reserved_delta: int,
        bucket_deltas: dict[str, int] | None = None,
        reason: str,
        hold_id: str | None = None,
        bucket_id: str | None = None,
        operation: str | None = None,
        purpose: str | None = None,
        breakdown: dict[str, int] | None = None,
    ) -> Entry:
        s = self.state
        s.available += available_delta
        s.reserved += reserved_delta
        for bucket_id_, delta in (bucket_deltas or {}).items():
            s.buckets[bucket_id_].remaining += delta
        s.seq += 1
        entry = Entry(
            seq=s.seq,
            type=type_,
            amount=amount,
            available_delta=available_delta,
            reserved_delta=reserved_delta,
            bucket_deltas=dict(bucket_deltas or {}),
            hold_id=hold_id,
            bucket_id=bucket_id,
            operation=operation,
            breakdown=dict(breakdown or {}),
            purpose=purpose,
            actor=self.actor,
            reason=reason,
            key=self.key if not self.entries else f"{self.key}#{len(self.entries)}",
            available_after=s.available,
            reserved_after=s.reserved,
            created_at=self.now,
        )
        self.entries.append(entry)
        return entry

    def expire_bucket(self, bucket: Bucket, reason: str) -> None:
        if bucket.remaining > 0:
            amount = bucket.remaining
            self.entry(
                EntryType.EXPIRE,
                amount=amount,
                available_delta=-amount,
                reserved_delta=0,
                bucket_deltas={bucket.id: -amount},
                bucket_id=bucket.id,
                reason=reason,
            )
        self.state.buckets[bucket.id].expired = True

    def finish(self, result: dict[str, Any], low_threshold: int) -> Mutation:
        s = self.state
        notifications = []
        # Two crossings, each noticed once until the balance recovers: below the threshold, and to 0.
        crossed_low = s.available < low_threshold and not s.low_balance
        crossed_zero = s.available == 0 and not s.depleted
        if crossed_zero:
            notifications.append(
                Notification(kind="depleted", available=0, threshold=low_threshold, created_at=self.now)
            )
        elif crossed_low:
            notifications.append(
                Notification(kind="low_balance", available=s.available, threshold=low_threshold, created_at=self.now)
            )
        s.low_balance = s.available < low_threshold
        s.depleted = s.available == 0
        s.next_hold_deadline = min((h.deadline for h in s.holds.values()), default=None)
        s.next_bucket_expiry = min(
            (b.expires_at for b in s.buckets.values() if b.expires_at and not b.expired and b.remaining > 0),
            default=None,
        )
        s.updated_at = self.now
        return Mutation(state=s, entries=self.entries, result=result, notifications=notifications)


def _positive(amount: int, field: str = "amount") -> None:
    if amount <= 0:
        raise ValidationFailed(
            f"{field} must be a positive whole number of credits",
            errors=[{"field": field, "in": "body", "message": "must be > 0", "type": "greater_than"}],
        )


def grant(
    state: LedgerState,
    *,
    key: str,
    bucket_id: str,
    source: GrantSource,
    amount: int,
    now: datetime,
    actor: Actor,
    reason: str,
    expires_at: datetime | None = None,
    priority: int | None = None,
    reference: str | None = None,
    low_threshold: int = 0,
) -> Mutation:
    """Add a bucket of credits."""
    _positive(amount)
    if bucket_id in state.buckets:
        raise Conflict(f"bucket {bucket_id} exists already")
    b = _Builder(state, key, actor, now)
    b.expire_past_due()
    b.state.buckets[bucket_id] = Bucket(
        id=bucket_id,
        source=source,
        granted=amount,
        remaining=0,
        priority=DEFAULT_PRIORITY[source] if priority is None else priority,
        granted_at=now,
        expires_at=expires_at,
        reference=reference,
    )
    b.entry(
        EntryType.GRANT,
        amount=amount,
        available_delta=amount,
        reserved_delta=0,
        bucket_deltas={bucket_id: amount},
        bucket_id=bucket_id,
        reason=reason,
    )
    if _is_past(expires_at, now):
        b.expire_bucket(b.state.buckets[bucket_id], "granted already expired")
    return b.finish({"bucket_id": bucket_id, "amount": amount}, low_threshold)


def _draw(b: _Builder, amount: int) -> dict[str, int]:
    draws: dict[str, int] = {}
    left = amount
    for bucket in burn_order(b.state.buckets, b.now):
        if left == 0:
            break
        take = min(bucket.remaining, left)
        draws[bucket.id] = take
        left -= take
    return draws


def reserve(
    state: LedgerState,
    *,
    key: str,
    hold_id: str,
    amount: int,
    now: datetime,
    deadline: datetime,
    actor: Actor,
    purpose: str,
    operation: str | None = None,
    low_threshold: int = 0,
) -> Mutation:
    """Set credits aside for work about to happen; 402 when they are not there (hard block)."""
    _positive(amount)
    if hold_id in state.holds:
        raise Conflict(f"hold {hold_id} exists already")
    available = spendable(state, now)
    if amount > available:
        raise InsufficientCredits(
            f"This needs {amount} credits; {available} are available",
            required=amount,
            available=available,
            how_to_get_more="Buy a credit pack or upgrade your plan in Billing.",
        )
    b = _Builder(state, key, actor, now)
    b.expire_past_due()
    draws = _draw(b, amount)
    b.state.holds[hold_id] = Hold(
        id=hold_id,
        amount=amount,
        draws=draws,
        purpose=purpose,
        operation=operation,
        deadline=deadline,
        created_at=now,
        actor=actor,
    )
    b.entry(
        EntryType.RESERVE,
        amount=amount,
        available_delta=-amount,
        reserved_delta=amount,
        bucket_deltas={bid: -n for bid, n in draws.items()},
        hold_id=hold_id,
        operation=operation,
        purpose=purpose,
        reason=purpose,
    )
    return b.finish({"hold_id": hold_id, "amount": amount, "draws": draws}, low_threshold)


def _return_to_buckets(b: _Builder, hold: Hold, amount: int, reason: str, entry_type: EntryType) -> None:
    """Give ``amount`` back to the hold's buckets, last-drawn first; expired buckets expire it again."""
    if amount == 0:
        return
    returns: dict[str, int] = {}
    left = amount
    # A stored hold need not keep its draws in order (Firestore maps do not): rebuild the burn order.
    drawn_in_order = sorted(hold.draws.items(), key=lambda item: _burn_key(b.state.buckets[item[0]]))
    for bucket_id, drawn in reversed(drawn_in_order):
        if left == 0:
            break
        back = min(drawn, left)
        returns[bucket_id] = back
        left -= back
    b.entry(
        entry_type,
        amount=amount,
        available_delta=amount,
        reserved_delta=-amount,
        bucket_deltas=returns,
        hold_id=hold.id,
        operation=hold.operation,
        purpose=hold.purpose,
        reason=reason,
    )
    for bucket_id, back in returns.items():
        bucket = b.state.buckets[bucket_id]
        if bucket.revoke_outstanding > 0:
            take = min(back, bucket.revoke_outstanding, bucket.remaining)
            bucket.revoke_outstanding -= take
            bucket.revoked += take
            if take:
                b.entry(
                    EntryType.ADJUST,
                    amount=take,
                    available_delta=-take,
                    reserved_delta=0,
                    bucket_deltas={bucket_id: -take},
                    bucket_id=bucket_id,
                    hold_id=hold.id,
                    reason="returned to a revoked bucket: taken back",
                )
        if bucket.expired or _is_past(bucket.expires_at, b.now):
            b.expire_bucket(bucket, "returned to an expired bucket")


def capture(
    state: LedgerState,
    *,
    key: str,
    hold_id: str,
    amount: int,
    now: datetime,
    actor: Actor,
    reason: str,
    resolved: HoldOutcome | None,
    low_threshold: int = 0,
    breakdown: dict[str, int] | None = None,
) -> Mutation:
    """Charge ``amount`` (≤ reserved) of a hold; the rest goes back to its buckets. ``breakdown``
    splits the charge by priced operation (it must add up to ``amount``)."""
    if breakdown and (sum(breakdown.values()) != amount or min(breakdown.values()) < 0):
        raise ValueError(f"a capture's breakdown {breakdown} must add up to its amount {amount}")
    return _resolve(
        state,
        key=key,
        hold_id=hold_id,
        status=HoldStatus.CAPTURED,
        captured=amount,
        now=now,
        actor=actor,
        reason=reason,
        return_reason="remainder of a partial capture",
        resolved=resolved,
        low_threshold=low_threshold,
        breakdown=breakdown,
    )


def release(
    state: LedgerState,
    *,
    key: str,
    hold_id: str,
    now: datetime,
    actor: Actor,
    reason: str,
    resolved: HoldOutcome | None,
    low_threshold: int = 0,
) -> Mutation:
    """Give a hold's credits back in full."""
    return _resolve(
        state,
        key=key,
        hold_id=hold_id,
        status=HoldStatus.RELEASED,
        captured=0,
        now=now,
        actor=actor,
        reason=reason,
        return_reason=reason,
        resolved=resolved,
        low_threshold=low_threshold,
    )


def _resolve(
    state: LedgerState,
    *,
    key: str,
    hold_id: str,
    status: HoldStatus,
    captured: int,
    now: datetime,
    actor: Actor,
    reason: str,
    return_reason: str,
    resolved: HoldOutcome | None,
    low_threshold: int,
    breakdown: dict[str, int] | None = None,
) -> Mutation:
    """Resolve a pending hold exactly once: charge ``captured``, return the rest to its buckets.

    Resolving again the same way replays the first outcome; the other way is a 409.
    """
    if resolved is not None:
        if resolved.status is status:
            return _noop(state, resolved)
        raise HoldAlreadyResolved(f"Hold {hold_id} was already {resolved.status.value}")
    hold = state.holds.get(hold_id)
    if hold is None:
        raise HoldNotFound(f"No pending hold {hold_id}")
    if captured < 0 or captured > hold.amount:
        raise ValidationFailed(
            f"Capture between 0 and {hold.amount} credits",
            errors=[{"field": "amount", "in": "body", "message": f"must be 0..{hold.amount}", "type": "range"}],
        )
    b = _Builder(state, key, actor, now)
    b.expire_past_due()
    del b.state.holds[hold_id]
    if captured:
        b.entry(
            EntryType.CAPTURE,
            amount=captured,
            available_delta=0,
            reserved_delta=-captured,
            hold_id=hold_id,
            operation=hold.operation,
            purpose=hold.purpose,
            reason=reason,
            breakdown=breakdown,
        )
    # Captured credits are the first ones drawn; the rest returns to the last-drawn buckets.
    _return_to_buckets(b, hold, hold.amount - captured, return_reason, EntryType.RELEASE)
    outcome = HoldOutcome(
        id=hold_id,
        status=status,
        amount=hold.amount,
        captured=captured,
        released=hold.amount - captured,
        resolved_at=now,
    )
    return b.finish({"hold": outcome.model_dump(mode="json")}, low_threshold)


def _noop(state: LedgerState, resolved: HoldOutcome) -> Mutation:
    return Mutation(state=state, entries=[], result={"hold": resolved.model_dump(mode="json")})


def expire_due(state: LedgerState, *, key: str, now: datetime, actor: Actor, low_threshold: int = 0) -> Mutation:
    """Expire every bucket past ``expires_at`` that still has credits (recorded as entries)."""
    b = _Builder(state, key, actor, now)
    expired = [
        {"bucket_id": x.id, "amount": x.remaining}
        for x in sorted(b.state.buckets.values(), key=lambda x: x.id)
        if not x.expired and _is_past(x.expires_at, now)
    ]
    b.expire_past_due()
    return b.finish({"expired": expired}, low_threshold)


def adjust(
    state: LedgerState,
    *,
    key: str,
    bucket_id: str,
    amount: int,
    now: datetime,
    actor: Actor,
    reason: str,
    low_threshold: int = 0,
) -> Mutation:
    """An admin correction: positive adds an admin bucket, negative removes spendable credits."""
    if amount == 0:
        raise ValidationFailed(
            "amount must not be 0", errors=[{"field": "amount", "in": "body", "message": "non-zero", "type": "value"}]
        )
    b = _Builder(state, key, actor, now)
    b.expire_past_due()
    if amount > 0:
        b.state.buckets[bucket_id] = Bucket(
            id=bucket_id,
            source=GrantSource.ADMIN,
            granted=amount,
            remaining=0,
            priority=DEFAULT_PRIORITY[GrantSource.ADMIN],
            granted_at=now,
        )
        deltas = {bucket_id: amount}
    else:
        available = spendable(state, now)
        if -amount > available:
            raise InsufficientCredits(
                f"Cannot remove {-amount} credits; {available} are available",
                required=-amount,
                available=available,
                how_to_get_more="Release pending holds first or adjust by a smaller amount.",
            )
        deltas = {bid: -n for bid, n in _draw(b, -amount).items()}
    b.entry(
        EntryType.ADJUST,
        amount=abs(amount),
        available_delta=amount,
        reserved_delta=0,
        bucket_deltas=deltas,
        bucket_id=bucket_id if amount > 0 else None,
        reason=reason,
    )
    return b.finish({"amount": amount, "buckets": deltas}, low_threshold)


def replay(client_id: str, entries: list[Entry]) -> tuple[int, int, dict[str, int]]:
    """What the entries say: (available, reserved, remaining per bucket)."""
    available = reserved = 0
    buckets: dict[str, int] = {}
    for entry in sorted(entries, key=lambda e: e.seq):
        available += entry.available_delta
        reserved += entry.reserved_delta
        for bucket_id, delta in entry.bucket_deltas.items():
            buckets[bucket_id] = buckets.get(bucket_id, 0) + delta
    return available, reserved, buckets


class Checkpoint(BaseModel):
    """What the entries 1..``seq`` add up to, as verified against the state: a later verification
    replays only the entries after it. Exact because entries are append-only."""

    seq: int = 0
    available: int = 0
    reserved: int = 0
    buckets: dict[str, int] = Field(default_factory=dict)  # non-zero totals only (absent means 0)


def advance(opening: Checkpoint | None, entries: list[Entry]) -> Checkpoint:
    """The checkpoint after ``entries``: exactly the entries that follow ``opening``, without gaps."""
    start = opening or Checkpoint()
    available, reserved, buckets = replay("", entries)
    totals = dict(start.buckets)
    for bucket_id, delta in buckets.items():
        totals[bucket_id] = totals.get(bucket_id, 0) + delta
    return Checkpoint(
        seq=start.seq + len(entries),
        available=start.available + available,
        reserved=start.reserved + reserved,
        buckets={bucket_id: total for bucket_id, total in sorted(totals.items()) if total},
    )


def drift(state: LedgerState, entries: list[Entry], *, opening: Checkpoint | None = None) -> list[str]:
    """Every way the cached state disagrees with its entries (empty when consistent); with ``opening``,
    ``entries`` are the ones after that checkpoint, which stands for the earlier ones."""
    totals = advance(opening, entries)
    available, reserved, buckets = totals.available, totals.reserved, totals.buckets
    problems = []
    if available != state.available:
        problems.append(f"available: state {state.available}, entries {available}")
    if reserved != state.reserved:
        problems.append(f"reserved: state {state.reserved}, entries {reserved}")
    if state.available != sum(b.remaining for b in state.buckets.values()):
        problems.append("available differs from the sum of bucket balances")
    if state.reserved != sum(h.amount for h in state.holds.values()):
        problems.append("reserved differs from the sum of pending holds")
    for bucket_id, bucket in state.buckets.items():
        if buckets.get(bucket_id, 0) != bucket.remaining:
            problems.append(f"bucket {bucket_id}: state {bucket.remaining}, entries {buckets.get(bucket_id, 0)}")
        if bucket.remaining < 0:
            problems.append(f"bucket {bucket_id} is negative")
    if state.available < 0:
        problems.append("available is negative")
    if totals.seq != state.seq:
        problems.append(f"entry count {totals.seq} differs from seq {state.seq}")
    return problems


def revoke(
    state: LedgerState,
    *,
    key: str,
    bucket_id: str,
    target: int,
    now: datetime,
    actor: Actor,
    reason: str,
    low_threshold: int = 0,
) -> Mutation:
    """Bring what a refunded pack's bucket gives back up to ``target`` credits in total.

    Refunds are cumulative (each one names the total refunded so far), so the bucket keeps the largest
    target it was asked for and only the part of a new target above it is claimed: a redelivered,
    reordered or concurrent refund asks for a target already reached and changes nothing, and
    concurrent ones converge on the largest. Of a claim, the bucket's unspent credits go at once,
    credits pending holds drew from it go when the holds return them, and spent credits stay spent
    (the entry says how many). Nothing is written when the claim is empty.
    """
    _positive(target, "target")
    b = _Builder(state, key, actor, now)
    b.expire_past_due()
    bucket = b.state.buckets.get(bucket_id)
    if bucket is None:
        raise NotFound(f"No bucket {bucket_id}")
    claim = max(0, target - bucket.revoke_target)
    if claim == 0:
        return b.finish(_revoke_result(bucket, 0, 0, 0, applied=False), low_threshold)
    bucket.revoke_target = target
    if bucket.expired:
        removed = on_hold = 0
        detail = f"nothing to remove: the {claim} credits had expired"
    else:
        removed = min(claim, bucket.remaining)
        # What pending holds drew from this bucket is not spent yet: take it back when it returns.
        held = sum(hold.draws.get(bucket_id, 0) for hold in b.state.holds.values())
        on_hold = min(claim - removed, max(0, held - bucket.revoke_outstanding))
        bucket.revoke_outstanding += on_hold
        bucket.revoked += removed
        spent = claim - removed - on_hold
        notes = [f"{on_hold} on hold, taken back when released"] if on_hold else []
        notes += [f"{spent} already spent"] if spent else []
        detail = f"{removed} unspent credits removed" + (f" ({'; '.join(notes)})" if notes else "")
    b.entry(
        EntryType.ADJUST,
        amount=removed,
        available_delta=-removed,
        reserved_delta=0,
        bucket_deltas={bucket_id: -removed} if removed else {},
        bucket_id=bucket_id,
        reason=f"{reason}: {detail}",
    )
    return b.finish(_revoke_result(bucket, claim, removed, on_hold, applied=True), low_threshold)


def _revoke_result(bucket: Bucket, claimed: int, removed: int, on_hold: int, *, applied: bool) -> dict[str, Any]:
    return {
        "bucket_id": bucket.id,
        "target": bucket.revoke_target,
        "claimed": claimed,
        "removed": removed,
        "on_hold": on_hold,
        "revoked": bucket.revoked,
        "applied": applied,
    }
