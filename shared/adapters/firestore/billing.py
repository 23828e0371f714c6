"""Firestore adapter of the billing ports (:mod:`shared.billing.store`): every document path, query and
precondition of billing state lives here.

Documents: ``clients/{client}`` (``billing``, the ``plan`` mirror older readers use, ``onboarded_at``),
``stripe_events/{event}``, ``stripe_customers/{customer}``, ``stripe_payments/{payment intent}``,
``clients/{client}/purchases/{session}`` and ``clients/{client}/notifications/{id}``.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.adapters.firestore.outbox import write_events
from shared.billing.models import BillingState
from shared.billing.store import (
    DELETE,
    BillingAccounts,
    BillingChanged,
    BillingSnapshot,
    BillingStore,
    EventWrite,
    PackPurchase,
    nested,
)
from shared.events.outbox import EventKicker, NoKick

if TYPE_CHECKING:
    from google.cloud.firestore import Client


class FirestoreBillingStore(BillingStore, BillingAccounts):
    """Both billing ports on one Firestore client (the webhook, the daily job and the billing API)."""

    def __init__(self, db: Client, kicker: EventKicker | None = None) -> None:
        self.db = db
        self.kicker = kicker or NoKick()

    def _client(self, client_id: str) -> Any:
        return self.db.collection("clients").document(client_id)

    def event_recorded(self, event_id: str) -> bool:
        return bool(self.db.collection("stripe_events").document(event_id).get().exists)

    def client_of_customer(self, customer_id: str) -> str | None:
        snapshot = self.db.collection("stripe_customers").document(customer_id).get()
        return str((snapshot.to_dict() or {}).get("client_id")) if snapshot.exists else None

    def read(self, client_id: str) -> BillingSnapshot:
        snapshot = self._client(client_id).get()
        data = (snapshot.to_dict() or {}) if snapshot.exists else {}
        billing = data.get("billing") or {}
        return BillingSnapshot(
            state=BillingState.model_validate(billing),
            version=snapshot.update_time if snapshot.exists else None,
            customer_key_attempt=int(billing.get("customer_key_attempt") or 0),
            onboarded=bool(data.get("onboarded_at")),
            has_billing="billing" in data,
        )

    def pack_purchase(self, payment_intent: str) -> PackPurchase | None:
        link = self.db.collection("stripe_payments").document(payment_intent).get()
        if not link.exists:
            return None
        found = link.to_dict() or {}
        client_id, session_id = str(found["client_id"]), str(found["session_id"])
        purchase = self._client(client_id).collection("purchases").document(session_id).get().to_dict() or {}
        if "bucket_id" not in purchase:
            return None
        return PackPurchase(client_id, session_id, int(purchase.get("credits", 0)), str(purchase["bucket_id"]))

    def commit(self, write: EventWrite) -> bool:
        from google.api_core.exceptions import AlreadyExists, FailedPrecondition
        from google.cloud.firestore import DELETE_FIELD
        from google.cloud.firestore_v1 import transforms

        batch = self.db.batch()
        batch.create(
            self.db.collection("stripe_events").document(write.event_id),
            {
                "type": write.event_type,
                "client_id": write.client_id,
                "outcome": write.outcome,
                "created": write.event_created,
                "processed_at": write.processed_at,
                "livemode": write.livemode,
            },
        )
        client_id = write.client_id
        if client_id and write.changes:
            ref = self._client(client_id)
            if write.version is not None:
                dotted = {
                    f"billing.{name}": DELETE_FIELD if value is DELETE else value
                    for name, value in write.changes.items()
                }
                if "plan" in write.changes:
                    dotted["plan"] = write.changes["plan"]
                batch.update(ref, dotted, option=self.db.write_option(last_update_time=write.version))
            else:
                # No record yet: a concurrent first write makes this merge, not a lost update (every
                # field it sets was decided on an empty state, and events arrive in any order anyway).
                fields = {name: value for name, value in write.changes.items() if value is not DELETE}
                batch.set(ref, nested(fields), merge=True)
        if client_id and write.customer_link:
            batch.set(self.db.collection("stripe_customers").document(write.customer_link), {"client_id": client_id})
        if client_id and write.purchase is not None:
            session = str(write.purchase["session_id"])
            batch.set(self._client(client_id).collection("purchases").document(session), write.purchase, merge=True)
        if client_id and write.payment_link is not None:
            payment_intent, session = write.payment_link
            batch.set(
                self.db.collection("stripe_payments").document(payment_intent),
                {"client_id": client_id, "session_id": session},
            )
        if client_id and write.refund is not None:
            session, refunded, revoked = write.refund
            # Kept at the largest values seen: a slower, older refund event never writes its numbers over a newer one's.
            batch.set(
                self._client(client_id).collection("purchases").document(session),
                {"refunded_amount": transforms.Maximum(refunded), "revoked_credits": transforms.Maximum(revoked)},
                merge=True,
            )
        for doc_id, notice in write.notices:
            if client_id:
                batch.set(
                    self._client(client_id).collection("notifications").document(doc_id),
                    {**notice.model_dump(mode="python"), "read": False},
                )
        write_events(self.db, batch, write.events)
        try:
            batch.commit()
        except AlreadyExists:
            return False  # a concurrent delivery of the same event won
        except FailedPrecondition as exc:
            raise BillingChanged() from exc
        self.kicker.kick(write.events)
        return True

    def _listed(self, query: Any, field_name: str | None = None) -> list[tuple[str, Any]]:
        """(client id, raw ``field_name``) of every match, read up front: the listing is one short query and
        the slow per-client work does not hold it open. Parsing is each client's own step."""
        from google.cloud.firestore_v1.field_path import FieldPath

        snapshots = query.select([field_name or FieldPath.document_id()]).stream()
        return [
            (snapshot.id, (snapshot.to_dict() or {}).get(field_name) if field_name else None) for snapshot in snapshots
        ]

    def due_plan_changes(self, now: datetime) -> list[tuple[str, Any]]:
        from google.cloud.firestore import FieldFilter

        query = self.db.collection("clients").where(filter=FieldFilter("billing.pending_plan_at", "<=", now))
        return self._listed(query, "billing")

    def annual_clients(self) -> list[tuple[str, Any]]:
        from google.cloud.firestore import FieldFilter

        query = self.db.collection("clients").where(filter=FieldFilter("billing.interval", "==", "annual"))
        return self._listed(query, "billing")

    def free_clients(self) -> list[str]:
        from google.cloud.firestore import FieldFilter

        query = self.db.collection("clients").where(filter=FieldFilter("billing.plan", "==", "free"))
        return [client_id for client_id, _ in self._listed(query)]

    def update_billing(self, client_id: str, changes: dict[str, Any], version: Any) -> None:
        from google.api_core.exceptions import FailedPrecondition
        from google.cloud.firestore import DELETE_FIELD

        dotted = {f"billing.{name}": DELETE_FIELD if value is DELETE else value for name, value in changes.items()}
        if "plan" in changes:
            dotted["plan"] = changes["plan"]
        try:
            self._client(client_id).update(dotted, option=self.db.write_option(last_update_time=version))
        except FailedPrecondition as exc:
            raise BillingChanged() from exc

    # -- the billing API ----------------------------------------------------------------------------
    def note_customer_attempt(self, client_id: str, attempt: int) -> None:
        self._client(client_id).set({"billing": {"customer_key_attempt": attempt}}, merge=True)

    def link_customer(self, client_id: str, customer_id: str, version: Any) -> None:
        from google.api_core.exceptions import FailedPrecondition

        ref = self._client(client_id)
        batch = self.db.batch()
        if version is not None:
            batch.update(
                ref,
                {"billing.stripe_customer_id": customer_id},
                option=self.db.write_option(last_update_time=version),
            )
        else:
            batch.set(ref, {"billing": {"stripe_customer_id": customer_id}}, merge=True)
        batch.set(self.db.collection("stripe_customers").document(customer_id), {"client_id": client_id})
        try:
            batch.commit()
        except FailedPrecondition as exc:
            raise BillingChanged() from exc

    def record_onboarding(self, client_id: str, now: datetime, billing: dict[str, Any] | None) -> None:
        update: dict[str, Any] = {"onboarded_at": now}
        if billing is not None:
            update["billing"] = billing
        self._client(client_id).set(update, merge=True)
