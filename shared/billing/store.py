"""Where billing state lives, for the Stripe webhook and the daily billing job: the port and its
Firestore adapter (an in-memory fake with the same semantics is in ``tests/fakes.py``).

Documents: ``clients/{client}`` (``billing`` and the ``plan`` mirror older readers use),
``stripe_events/{event}`` (one marker per applied event), ``stripe_customers/{customer}`` (customer →
client), ``stripe_payments/{payment intent}`` (→ the pack purchase), ``clients/{client}/purchases/
{session}`` and ``clients/{client}/notifications/{id}``.

An event's effect is one atomic commit (:meth:`BillingStore.commit`): the event marker (``create``,
so a concurrent delivery of the same event loses), the change to the client's billing guarded by the
version it was decided on (a concurrent change to that client makes it :class:`BillingChanged`, and
the event is decided again on fresh state), and the documents that go with it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.billing.models import BillingNotice, BillingState

if TYPE_CHECKING:
    from google.cloud.firestore import Client


class BillingChanged(Exception):
    """The client's billing changed between the read and the commit: decide again on fresh state."""


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


DELETE: Any = _Delete()  # a change that removes the field


@dataclass
class BillingSnapshot:
    state: BillingState
    version: Any  # opaque: Firestore's update_time, a counter in memory; None when there is no record


@dataclass(frozen=True)
class PackPurchase:
    client_id: str
    session_id: str
    credits: int
    bucket_id: str


@dataclass
class EventWrite:
    """Everything one Stripe event changes, committed at once."""

    event_id: str
    event_type: str
    event_created: int
    livemode: bool
    outcome: str
    processed_at: datetime
    client_id: str | None = None
    changes: dict[str, Any] = field(default_factory=dict)  # BillingState fields (DELETE removes one)
    version: Any = None  # the billing version ``changes`` were decided on
    customer_link: str | None = None  # Stripe customer id → ``client_id``
    purchase: dict[str, Any] | None = None  # a pack purchase (merged into purchases/{session_id})
    payment_link: tuple[str, str] | None = None  # (payment intent, session id) of a pack purchase
    refund: tuple[str, int, int] | None = None  # (session id, amount refunded, credits revoked): kept at the max
    notices: list[tuple[str, BillingNotice]] = field(default_factory=list)  # (document id, notice)


class BillingStore(ABC):
    """Port: billing state for the webhook processor and the daily job."""

    # -- the webhook --------------------------------------------------------------------------------
    @abstractmethod
    def event_recorded(self, event_id: str) -> bool:
        """Whether the event was applied before (its marker exists)."""

    @abstractmethod
    def client_of_customer(self, customer_id: str) -> str | None: ...

    @abstractmethod
    def read(self, client_id: str) -> BillingSnapshot:
        """The client's billing and the version a later write is guarded by."""

    @abstractmethod
    def pack_purchase(self, payment_intent: str) -> PackPurchase | None:
        """The pack a payment intent bought, if it bought one."""

    @abstractmethod
    def commit(self, write: EventWrite) -> bool:
        """Record the event with its effect, atomically. False: the event was recorded concurrently
        (nothing written). Raises :class:`BillingChanged` when the client's billing changed since
        ``write.version``."""

    # -- the daily job ------------------------------------------------------------------------------
    @abstractmethod
    def due_plan_changes(self, now: datetime) -> list[tuple[str, Any]]:
        """(client id, raw billing) of every client whose pending plan change is due by ``now``."""

    @abstractmethod
    def annual_clients(self) -> list[tuple[str, Any]]:
        """(client id, raw billing) of every client on an annual plan."""

    @abstractmethod
    def free_clients(self) -> list[str]: ...

    @abstractmethod
    def update_billing(self, client_id: str, changes: dict[str, Any], version: Any) -> None:
        """Change the client's billing if it is still at ``version``; else :class:`BillingChanged`."""


def nested(changes: dict[str, Any]) -> dict[str, Any]:
    """Billing fields live under ``billing``; ``plan`` is mirrored at the top for older readers."""
    data: dict[str, Any] = {"billing": dict(changes)}
    if "plan" in changes:
        data["plan"] = changes["plan"]
    return data


class FirestoreBillingStore(BillingStore):
    def __init__(self, db: Client) -> None:
        self.db = db

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
        state = BillingState.model_validate(data.get("billing") or {})
        return BillingSnapshot(state=state, version=snapshot.update_time if snapshot.exists else None)

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
        try:
            batch.commit()
        except AlreadyExists:
            return False  # a concurrent delivery of the same event won
        except FailedPrecondition as exc:
            raise BillingChanged() from exc
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
