"""The outbox on Firestore: ``outbox/{event id}``, ``event_positions/{…}``, ``event_parking/{…}``.

An event waiting for the relay carries ``relay_due_at`` (a single-field range the sweep queries, so no
composite index); the relay deletes it and sets ``relayed_at``. Producers' adapters call
:func:`write_events` inside their own batch or transaction: the event commits with the change or not
at all.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.events.model import DomainEvent, Subject
from shared.events.outbox import Outbox, ParkedDelivery

if TYPE_CHECKING:
    from google.cloud.firestore import Client

OUTBOX = "outbox"
POSITIONS = "event_positions"
PARKING = "event_parking"


def write_events(db: Client, writer: Any, events: list[DomainEvent]) -> None:
    """Add ``events`` to a WriteBatch or Transaction (``set``: a retried commit rewrites the same ids)."""
    for event in events:
        writer.set(db.collection(OUTBOX).document(event.id), _document(event))


def _document(event: DomainEvent) -> dict[str, Any]:
    return {**event.model_dump(mode="python"), "relay_due_at": event.occurred_at, "relayed_at": None}


class FirestoreOutbox(Outbox):
    def __init__(self, db: Client) -> None:
        self.db = db

    def get(self, event_id: str) -> DomainEvent | None:
        snapshot = self.db.collection(OUTBOX).document(event_id).get()
        if not snapshot.exists:
            return None
        data = snapshot.to_dict() or {}
        return DomainEvent.model_validate({k: v for k, v in data.items() if k in DomainEvent.model_fields})

    def due(self, before: datetime, limit: int) -> list[str]:
        from google.cloud.firestore import FieldFilter

        query = (
            self.db.collection(OUTBOX)
            .where(filter=FieldFilter("relay_due_at", "<", before))
            .order_by("relay_due_at")
            .limit(limit)
            .select([])
        )
        return [snapshot.id for snapshot in query.stream()]

    def mark_relayed(self, event_id: str, at: datetime) -> None:
        from google.cloud.firestore import DELETE_FIELD

        self.db.collection(OUTBOX).document(event_id).update({"relay_due_at": DELETE_FIELD, "relayed_at": at})

    def _position_ref(self, consumer: str, client_id: str, subject: Subject) -> Any:
        key = hashlib.sha256(f"{consumer}\n{client_id}\n{subject.kind}\n{subject.id}".encode()).hexdigest()
        return self.db.collection(POSITIONS).document(key)

    def position(self, consumer: str, client_id: str, subject: Subject) -> int | None:
        snapshot = self._position_ref(consumer, client_id, subject).get()
        return int((snapshot.to_dict() or {})["sequence"]) if snapshot.exists else None

    def advance(self, consumer: str, client_id: str, subject: Subject, sequence: int) -> None:
        from google.cloud.firestore_v1 import transforms

        self._position_ref(consumer, client_id, subject).set(
            {"consumer": consumer, "client_id": client_id, "sequence": transforms.Maximum(sequence)}, merge=True
        )

    def park(self, parked: ParkedDelivery) -> None:
        self.db.collection(PARKING).document(parked.id).set(parked.model_dump(mode="python"))

    def parked(self, after: str | None, limit: int) -> list[ParkedDelivery]:
        query = self.db.collection(PARKING).order_by("id")
        if after:
            query = query.start_after({"id": after})
        return [ParkedDelivery.model_validate(s.to_dict()) for s in query.limit(limit).stream()]

    def get_parked(self, parked_id: str) -> ParkedDelivery | None:
        snapshot = self.db.collection(PARKING).document(parked_id).get()
        return ParkedDelivery.model_validate(snapshot.to_dict()) if snapshot.exists else None

    def mark_replayed(self, parked_id: str, at: datetime) -> None:
        self.db.collection(PARKING).document(parked_id).update({"replayed_at": at})
