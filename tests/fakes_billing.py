"""In-memory fakes of the billing ports: real subclasses, with the Firestore adapter's semantics
(merges, preconditions, the customer index)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.billing.models import BillingState
from shared.billing.store import BillingAccounts, BillingChanged, BillingSnapshot
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
