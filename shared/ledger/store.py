"""Where ledger state lives: the port (Firestore adapter: ``shared.adapters.firestore.ledger``).

One commit writes, atomically: the client's state document (guarded by its ``update_time`` — an
optimistic precondition, which stays live under contention where read-modify-write transactions
collapse), the idempotency marker (``create``, so a second commit with the same key fails), the new
entries, the hold's record and any notifications. Apart from those, the balance verification keeps
its checkpoint (what the entries verified so far add up to).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from shared.ledger.model import Checkpoint, Entry, EntryType, HoldOutcome, HoldStatus, LedgerState, Mutation


class StaleState(Exception):
    """The state changed since it was read (another writer won); read again and retry."""


class KeyAlreadyUsed(Exception):
    """The idempotency marker exists: the mutation was applied before."""


@dataclass(frozen=True)
class Marker:
    fingerprint: str
    result: dict[str, Any]


@dataclass
class Snapshot:
    state: LedgerState
    version: Any  # opaque: Firestore update_time, or a counter in memory; None when new
    marker: Marker | None = None
    hold: HoldOutcome | None = None


@dataclass
class HoldRecord:
    """The hold document written along with a mutation (pending at reserve, resolved later)."""

    hold_id: str
    data: dict[str, Any] = field(default_factory=dict)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class LedgerStore(ABC):
    """Port for the ledger's persistence."""

    @abstractmethod
    def load(self, client_id: str, key: str, hold_id: str | None = None) -> Snapshot: ...

    @abstractmethod
    def commit(
        self,
        client_id: str,
        snapshot: Snapshot,
        mutation: Mutation,
        *,
        key: str,
        fingerprint: str,
        hold: HoldRecord | None,
    ) -> None:
        """Write everything or nothing; raise StaleState or KeyAlreadyUsed."""

    @abstractmethod
    def entries(self, client_id: str) -> list[Entry]: ...

    @abstractmethod
    def state(self, client_id: str) -> LedgerState: ...

    # The verification checkpoint. These defaults keep none, so a store without one verifies every entry.
    def entries_after(self, client_id: str, seq: int) -> list[Entry]:
        """The entries with a ``seq`` above ``seq``, in order."""
        return [e for e in self.entries(client_id) if e.seq > seq]

    def verify_checkpoint(self, client_id: str) -> Checkpoint | None:
        return None

    def save_verify_checkpoint(self, client_id: str, checkpoint: Checkpoint) -> None:
        return None


@dataclass(frozen=True)
class EntryFilter:
    """Which entries a history read returns: every field set must match; ``created_at`` in [since, until)."""

    type: EntryType | None = None
    operation: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, entry: Entry) -> bool:
        return (
            (self.type is None or entry.type == self.type)
            and (self.operation is None or entry.operation == self.operation)
            and (self.since is None or entry.created_at >= self.since)
            and (self.until is None or entry.created_at < self.until)
        )


# The ``LedgerState`` fields the scheduled jobs ask "due by now?" of (kept on the state for this query).
DueField = Literal["next_hold_deadline", "next_bucket_expiry"]


class LedgerReader(ABC):
    """Port for the ledger's read side: history, usage, the client records the views and admin tools
    show, and the clients the scheduled jobs visit (Firestore adapter: ``shared.adapters.firestore.ledger``)."""

    @abstractmethod
    def history(
        self, client_id: str, where: EntryFilter, *, after: tuple[datetime, int] | None = None, limit: int | None = None
    ) -> Iterator[Entry]:
        """Matching entries newest first (``created_at``, then ``seq``, both descending), strictly after
        the position ``after`` = (created_at, seq) of the last one seen, at most ``limit``."""

    @abstractmethod
    def entries_between(self, client_id: str, type: EntryType, since: datetime, until: datetime) -> Iterator[Entry]:
        """The entries of one type with ``created_at`` in [since, until), in no particular order."""

    @abstractmethod
    def client_record(self, client_id: str) -> dict[str, Any] | None:
        """The client's record, or None when the client has none."""

    @abstractmethod
    def client_records(self, *, prefix: str = "", after: str | None = None, limit: int) -> list[dict[str, Any]]:
        """Client records in id order whose id starts with ``prefix``; from ``prefix`` on, or strictly
        after the id ``after`` (a page's cursor) when given; at most ``limit``."""

    @abstractmethod
    def ledger_clients(self, due: DueField | None = None, now: datetime | None = None) -> list[str]:
        """The ids of the clients with a ledger state (with ``due`` at or before ``now`` when given)."""


def hold_pending_record(mutation: Mutation, hold_id: str, client_id: str, key: str) -> HoldRecord:
    hold = mutation.state.holds[hold_id]
    return HoldRecord(
        hold_id=hold_id,
        data={
            "id": hold_id,
            "client_id": client_id,
            "status": HoldStatus.PENDING.value,
            "amount": hold.amount,
            "purpose": hold.purpose,
            "operation": hold.operation,
            "deadline": hold.deadline,
            "created_at": hold.created_at,
            "reserve_key": key,
        },
    )


def hold_resolved_record(mutation: Mutation, hold_id: str, now: datetime) -> HoldRecord:
    outcome = HoldOutcome.model_validate(mutation.result["hold"])
    return HoldRecord(
        hold_id=hold_id,
        data={"status": outcome.status.value, "outcome": outcome.model_dump(mode="python"), "resolved_at": now},
    )
