"""In-memory fakes of the billing ports: real subclasses, with the Firestore adapter's semantics
(merges, preconditions, the customer index)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.billing.deadletters import DeadLetter, DeadLetterNotFound, DeadLetters
from shared.billing.models import BillingState
from shared.billing.store import BillingAccounts, BillingChanged, BillingSnapshot
from shared.pagination import cursor_datetime, cursor_str, decode_cursor, encode_cursor
from tests.fakes import InMemoryBillingStore, RecordingPaymentGateway


class InMemoryBilling(InMemoryBillingStore, BillingAccounts):
    """Both billing ports on one in-memory record per client, as ``FirestoreBillingStore`` is both on
    ``clients/{client}``: the webhook fake plus the customer link and onboarding. Every write bumps the
    record's version, as every Firestore write moves its update time."""

    def _write(self, client_id: str, record: dict[str, Any]) -> None:
        _, version = self.clients.get(client_id, ({}, 0))
        self.clients[client_id] = (record, version + 1)

    def _merged_billing(self, client_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        record = dict(self.clients.get(client_id, ({}, 0))[0])
        record["billing"] = {**(record.get("billing") or {}), **fields}
        return record

    def read(self, client_id: str) -> BillingSnapshot:
        with self._lock:
            if client_id not in self.clients:
                return BillingSnapshot(state=BillingState(), version=None)
            record, version = self.clients[client_id]
            billing = dict(record.get("billing") or {})
            return BillingSnapshot(
                state=BillingState.model_validate(billing),
                version=version,
                customer_key_attempt=int(billing.get("customer_key_attempt") or 0),
                onboarded=bool(record.get("onboarded_at")),
                has_billing="billing" in record,
            )

    def note_customer_attempt(self, client_id: str, attempt: int) -> None:
        with self._lock:
            self._write(client_id, self._merged_billing(client_id, {"customer_key_attempt": attempt}))

    def link_customer(self, client_id: str, customer_id: str, version: Any) -> None:
        with self._lock:
            # A guarded update when the record was read; a merge when there was none (Firestore's
            # ``set(merge=True)`` has no precondition either).
            if version is not None and self.clients.get(client_id, ({}, None))[1] != version:
                raise BillingChanged()
            self._write(client_id, self._merged_billing(client_id, {"stripe_customer_id": customer_id}))
            self.customers[customer_id] = client_id

    def record_onboarding(self, client_id: str, now: datetime, billing: dict[str, Any] | None) -> None:
        with self._lock:
            record = dict(self.clients.get(client_id, ({}, 0))[0])
            if billing is not None:  # merged into the billing map, as ``set(merge=True)`` does
                record["billing"] = {**(record.get("billing") or {}), **billing}
            record["onboarded_at"] = now
            self._write(client_id, record)

    def seed(self, client_id: str, **billing: Any) -> None:
        """Give a client a stored billing record (what earlier events left), as a write would."""
        with self._lock:
            self._write(client_id, self._merged_billing(client_id, billing))

    def record(self, client_id: str) -> dict[str, Any]:
        """The raw client record (what ``clients/{client}`` would hold)."""
        with self._lock:
            return dict(self.clients.get(client_id, ({}, 0))[0])


class CustomerGateway(RecordingPaymentGateway):
    """The payment port for the billing API: counts customer creations (failing the first
    ``failures`` with Stripe's 5xx) and keeps the Checkout Sessions it was asked for."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__()
        self.failures = failures
        self.customer_calls: list[tuple[str, int]] = []  # (client id, idempotency-key attempt)
        self.checkouts: list[dict[str, Any]] = []

    def create_customer(self, client_id: str, email: str | None, attempt: int = 0) -> str:
        from shared.errors import UpstreamUnavailable

        self.customer_calls.append((client_id, attempt))
        if self.failures > 0:
            self.failures -= 1
            raise UpstreamUnavailable("Stripe answered 500", retry_after=1)
        return super().create_customer(client_id, email, attempt)

    def create_checkout(self, **kwargs: Any) -> tuple[str, str]:
        self.checkouts.append(kwargs)
        return super().create_checkout(**kwargs)


class InMemoryDeadLetters(DeadLetters):
    """The dead-letter port in memory, with the Firestore adapter's semantics: one letter per id (a
    redelivery counts a delivery), newest first with an opaque cursor, a replayed letter keeps its
    first outcome."""

    def __init__(self) -> None:
        self.letters: dict[str, DeadLetter] = {}

    def quarantine(self, letter: DeadLetter) -> DeadLetter:
        stored = self.letters.get(letter.id)
        if stored is None:
            self.letters[letter.id] = letter
            return letter
        updated = stored.model_copy(
            update={"deliveries": stored.deliveries + 1, "last_seen_at": letter.last_seen_at, "reason": letter.reason}
        )
        self.letters[letter.id] = updated
        return updated

    def get(self, letter_id: str) -> DeadLetter | None:
        return self.letters.get(letter_id)

    def page(self, limit: int, cursor: str | None) -> tuple[list[DeadLetter], str | None]:
        ordered = sorted(self.letters.values(), key=lambda x: (x.first_seen_at, x.id), reverse=True)
        if cursor:
            values = decode_cursor(cursor)
            after = (cursor_datetime(values, "t"), cursor_str(values, "id"))
            ordered = [x for x in ordered if (x.first_seen_at, x.id) < after]
        if len(ordered) <= limit:
            return ordered, None
        page = ordered[:limit]
        return page, encode_cursor({"t": page[-1].first_seen_at.isoformat(), "id": page[-1].id})

    def _change(self, letter_id: str, fields: dict[str, Any]) -> DeadLetter:
        stored = self.letters.get(letter_id)
        if stored is None:
            raise DeadLetterNotFound(letter_id)
        if stored.status == "replayed":
            return stored
        self.letters[letter_id] = stored.model_copy(update={**fields, "replay_attempts": stored.replay_attempts + 1})
        return self.letters[letter_id]

    def mark_replayed(self, letter_id: str, outcome: str, now: datetime) -> DeadLetter:
        return self._change(
            letter_id, {"status": "replayed", "replayed_at": now, "replay_outcome": outcome, "last_replay_at": now}
        )

    def note_replay_failed(self, letter_id: str, reason: str, now: datetime) -> DeadLetter:
        return self._change(letter_id, {"last_replay_error": reason, "last_replay_at": now})
