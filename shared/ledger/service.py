"""The ledger service: idempotent, concurrency-safe credit operations for one client at a time.

Each call reads the client's state (plus its idempotency marker and, for capture/release, the
hold's record) in one round trip, computes the change with the pure rules in
:mod:`shared.ledger.model`, and commits it under an optimistic precondition. A lost race is retried
under the project's one retry policy (:mod:`shared.retry`, ``CONTENDED_COMMIT`` unless the ledger is
built with other limits); a key seen before returns the first result without writing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from shared.errors import IdempotencyKeyReused, UpstreamUnavailable
from shared.ids import derived_id
from shared.ledger import model
from shared.ledger.model import Actor, GrantSource, HoldOutcome, LedgerState, Mutation
from shared.ledger.store import (
    HoldRecord,
    KeyAlreadyUsed,
    LedgerStore,
    Snapshot,
    StaleState,
    hold_pending_record,
    hold_resolved_record,
)
from shared.retry import CONTENDED_COMMIT, attempts


@dataclass
class CommitStats:
    """Counters for benchmarks and tests: commits, lost races, replays."""

    commits: int = 0
    conflicts: int = 0
    replays: int = 0
    by_client: dict[str, int] = field(default_factory=dict)


LOCK_STRIPES = 256


def _fingerprint(operation: str, params: dict[str, Any]) -> str:
    material = json.dumps({"op": operation, **params}, sort_keys=True, default=str)
    return hashlib.sha256(material.encode()).hexdigest()


class Ledger:
    def __init__(
        self,
        store: LedgerStore,
        *,
        clock: Callable[[], datetime],
        low_balance_threshold: int = 10,
        max_attempts: int = CONTENDED_COMMIT.attempts,
        base_backoff: float = CONTENDED_COMMIT.base,
        max_backoff: float = CONTENDED_COMMIT.cap,
        deadline: float = CONTENDED_COMMIT.deadline,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.low_threshold = low_balance_threshold
        # The shared optimistic-commit policy; tests and benchmarks may widen its limits.
        self.retry = dataclasses.replace(
            CONTENDED_COMMIT, attempts=max_attempts, base=base_backoff, cap=max_backoff, deadline=deadline
        )
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.stats = CommitStats()
        # Requests for one client inside this instance take turns: a race between them can only
        # be lost, so it would be wasted work. Across instances the optimistic commit decides.
        self._stripes = [threading.Lock() for _ in range(LOCK_STRIPES)]

    def _client_lock(self, client_id: str) -> threading.Lock:
        digest = hashlib.blake2b(client_id.encode(), digest_size=4).digest()
        return self._stripes[int.from_bytes(digest, "big") % LOCK_STRIPES]

    def _run(
        self,
        client_id: str,
        key: str,
        fingerprint: str,
        compute: Callable[[Snapshot, datetime], Mutation],
        *,
        hold_id: str | None = None,
        hold_record: Callable[[Mutation, datetime], HoldRecord | None] = lambda m, n: None,
    ) -> dict[str, Any]:
        with self._client_lock(client_id):
            return self._attempt(client_id, key, fingerprint, compute, hold_id, hold_record)

    def _attempt(
        self,
        client_id: str,
        key: str,
        fingerprint: str,
        compute: Callable[[Snapshot, datetime], Mutation],
        hold_id: str | None,
        hold_record: Callable[[Mutation, datetime], HoldRecord | None],
    ) -> dict[str, Any]:
        for _ in attempts(self.retry, "ledger commit", sleep=self.sleep, rng=self.rng):
            snapshot = self.store.load(client_id, key, hold_id)
            if snapshot.marker is not None:
                if snapshot.marker.fingerprint != fingerprint:
                    raise IdempotencyKeyReused("This idempotency key was used for a different credit operation")
                self.stats.replays += 1
                return snapshot.marker.result
            now = self.clock()
            mutation = compute(snapshot, now)
            if not mutation.entries:
                return mutation.result  # e.g. a hold resolved again the same way: nothing to write
            try:
                self.store.commit(
                    client_id, snapshot, mutation, key=key, fingerprint=fingerprint, hold=hold_record(mutation, now)
                )
            except StaleState:
                self.stats.conflicts += 1
                continue  # another writer won: read again (after the policy's jittered wait)
            except KeyAlreadyUsed:
                continue  # the next load returns the stored result
            self.stats.commits += 1
            self.stats.by_client[client_id] = self.stats.by_client.get(client_id, 0) + 1
            return mutation.result
        raise UpstreamUnavailable("The credit ledger is busy; try again", retry_after=1)

    # -- operations ------------------------------------------------------------------------------
    def grant(
        self,
        client_id: str,
        *,
        key: str,
        amount: int,
        source: GrantSource,
        actor: Actor,
        reason: str,
        expires_at: datetime | None = None,
        priority: int | None = None,
        reference: str | None = None,
    ) -> dict[str, Any]:
        bucket_id = derived_id("bkt", key)
        params = {"amount": amount, "source": source.value, "expires_at": expires_at, "priority": priority}
        return self._run(
            client_id,
            key,
            _fingerprint("grant", params),
            lambda snap, now: model.grant(
                snap.state,
                key=key,
                bucket_id=bucket_id,
                source=source,
                amount=amount,
                now=now,
                actor=actor,
                reason=reason,
                expires_at=expires_at,
                priority=priority,
                reference=reference,
                low_threshold=self.low_threshold,
            ),
        )

    def reserve(
        self,
        client_id: str,
        *,
        key: str,
        amount: int,
        actor: Actor,
        purpose: str,
        ttl: timedelta,
        operation: str | None = None,
    ) -> dict[str, Any]:
        """Reserve credits; returns ``{"hold_id", "amount", "draws"}``; 402 when not affordable."""
        hold_id = derived_id("hold", key)
        return self._run(
            client_id,
            key,
            _fingerprint("reserve", {"amount": amount, "purpose": purpose, "operation": operation}),
            lambda snap, now: model.reserve(
                snap.state,
                key=key,
                hold_id=hold_id,
                amount=amount,
                now=now,
                deadline=now + ttl,
                actor=actor,
                purpose=purpose,
                operation=operation,
                low_threshold=self.low_threshold,
            ),
            hold_record=lambda m, now: hold_pending_record(m, hold_id, client_id, key),
        )

    def capture(
        self,
        client_id: str,
        hold_id: str,
        *,
        amount: int,
        actor: Actor,
        reason: str,
        key: str | None = None,
        breakdown: dict[str, int] | None = None,
    ) -> HoldOutcome:
        """Charge ``amount`` of the hold and release the rest; a second capture returns the first result.
        ``breakdown`` (credits per priced operation) is what the usage view groups the charge by."""
        key = key or f"capture:{hold_id}"
        params: dict[str, Any] = {"hold_id": hold_id, "amount": amount}
        if breakdown:
            params["breakdown"] = breakdown
        return self._resolve(
            client_id,
            hold_id,
            key,
            _fingerprint("capture", params),
            lambda snap, now: model.capture(
                snap.state,
                key=key,
                hold_id=hold_id,
                amount=amount,
                now=now,
                actor=actor,
                reason=reason,
                resolved=snap.hold,
                low_threshold=self.low_threshold,
                breakdown=breakdown,
            ),
        )

    def release(
        self, client_id: str, hold_id: str, *, actor: Actor, reason: str, key: str | None = None
    ) -> HoldOutcome:
        """Return the hold's credits; a second release returns the first result."""
        key = key or f"release:{hold_id}"
        return self._resolve(
            client_id,
            hold_id,
            key,
            _fingerprint("release", {"hold_id": hold_id}),
            lambda snap, now: model.release(
                snap.state,
                key=key,
                hold_id=hold_id,
                now=now,
                actor=actor,
                reason=reason,
                resolved=snap.hold,
                low_threshold=self.low_threshold,
            ),
        )

    def _resolve(
        self,
        client_id: str,
        hold_id: str,
        key: str,
        fingerprint: str,
        compute: Callable[[Snapshot, datetime], Mutation],
    ) -> HoldOutcome:
        result = self._run(
            client_id,
            key,
            fingerprint,
            compute,
            hold_id=hold_id,
            hold_record=lambda m, now: hold_resolved_record(m, hold_id, now),
        )
        return HoldOutcome.model_validate(result["hold"])

    def reserve_for_job(
        self, client_id: str, *, key: str, amount: int, user_id: str, purpose: str, ttl: timedelta, operation: str
    ) -> str:
        """The hold id for a job's whole cost, or "" when the job is free (nothing to reserve)."""
        if amount <= 0:
            return ""
        hold = self.reserve(
            client_id,
            key=key,
            amount=amount,
            actor=Actor(kind="user", id=user_id),
            purpose=purpose,
            ttl=ttl,
            operation=operation,
        )
        return str(hold["hold_id"])

    def expire_due(self, client_id: str, *, key: str, actor: Actor) -> dict[str, Any]:
        return self._run(
            client_id,
            key,
            _fingerprint("expire", {}),
            lambda snap, now: model.expire_due(
                snap.state, key=key, now=now, actor=actor, low_threshold=self.low_threshold
            ),
        )

    def adjust(self, client_id: str, *, key: str, amount: int, actor: Actor, reason: str) -> dict[str, Any]:
        bucket_id = derived_id("adj", key)
        return self._run(
            client_id,
            key,
            _fingerprint("adjust", {"amount": amount, "reason": reason}),
            lambda snap, now: model.adjust(
                snap.state,
                key=key,
                bucket_id=bucket_id,
                amount=amount,
                now=now,
                actor=actor,
                reason=reason,
                low_threshold=self.low_threshold,
            ),
        )

    def revoke(
        self, client_id: str, *, key: str, bucket_id: str, target: int, actor: Actor, reason: str
    ) -> dict[str, Any]:
        """Take back from one bucket (a refunded pack) up to ``target`` credits in total, cumulatively:
        see :func:`shared.ledger.model.revoke`. Returns what this call claimed and removed."""
        return self._run(
            client_id,
            key,
            _fingerprint("revoke", {"bucket_id": bucket_id, "target": target}),
            lambda snap, now: model.revoke(
                snap.state,
                key=key,
                bucket_id=bucket_id,
                target=target,
                now=now,
                actor=actor,
                reason=reason,
                low_threshold=self.low_threshold,
            ),
        )

    def granted(self, client_id: str, key: str) -> int | None:
        """The credits the grant with idempotency key ``key`` gave (``None``: no such grant yet)."""
        bucket = self.store.state(client_id).buckets.get(derived_id("bkt", key))
        return bucket.granted if bucket is not None else None

    def sweep_expired_holds(self, client_id: str, *, actor: Actor) -> list[str]:
        """Release every hold of the client whose deadline has passed (the worker died or hung)."""
        state = self.store.state(client_id)
        now = self.clock()
        released = []
        for hold in sorted(state.holds.values(), key=lambda h: h.deadline):
            if hold.deadline <= now:
                reason = "hold deadline passed; released by the sweeper"
                try:
                    self.release(client_id, hold.id, actor=actor, reason=reason)
                except (model.HoldAlreadyResolved, model.HoldNotFound):
                    continue  # resolved (e.g. captured by a late worker) since the state was read: it stands
                released.append(hold.id)
        return released

    # -- reads ------------------------------------------------------------------------------------
    def state(self, client_id: str) -> LedgerState:
        return self.store.state(client_id)

    def verify(self, client_id: str) -> list[str]:
        """Every disagreement between the cached state and the entries (empty when consistent)."""
        state = self.store.state(client_id)
        return model.drift(state, self._as_of(client_id, state, self.store.entries(client_id)))

    def verify_from_checkpoint(self, client_id: str, *, full: bool = False) -> list[str]:
        """:meth:`verify` reading only the entries after the last clean verification (a checkpoint keeps
        what the earlier ones add up to); a clean result moves the checkpoint up to the state.
        ``full`` reads every entry again (an audit of the old entries too) and renews the checkpoint."""
        opening = None if full else self.store.verify_checkpoint(client_id)
        state = self.store.state(client_id)
        if opening is not None and opening.seq > state.seq:
            opening = None  # a state behind its checkpoint (reset, or tampered): replay everything
        start = opening.seq if opening else 0
        entries = self._as_of(client_id, state, self.store.entries_after(client_id, start))
        problems = model.drift(state, entries, opening=opening)
        # Only a clean result becomes the checkpoint: a drift stays reported until it is repaired.
        if not problems and state.seq > start and all(e.seq <= state.seq for e in entries):
            self.store.save_verify_checkpoint(client_id, model.advance(opening, entries))
        return problems

    def _as_of(self, client_id: str, state: LedgerState, entries: list[model.Entry]) -> list[model.Entry]:
        """The entries the state had seen when it was read."""
        later = [e.seq for e in entries if e.seq > state.seq]
        if later and self.store.state(client_id).seq >= max(later):
            # Committed (atomically, with a newer state) after the state was read: not drift.
            return [e for e in entries if e.seq <= state.seq]
        return entries
