"""Firestore adapter of the email sent-markers: ``clients/{client}/emails/{key}``."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.notifications.email import EmailInFlight, EmailLog, EmailRecord, EmailStatus
from shared.notifications.preferences import NotificationType

if TYPE_CHECKING:
    from google.cloud.firestore import Client


class FirestoreEmailLog(EmailLog):
    def __init__(self, db: Client) -> None:
        self.db = db

    def _doc(self, client_id: str, key: str) -> Any:
        return self.db.collection("clients").document(client_id).collection("emails").document(key)

    def claim(self, client_id: str, key: str, kind: NotificationType, now: datetime, lease: timedelta) -> bool:
        from google.api_core.exceptions import AlreadyExists, FailedPrecondition

        doc = self._doc(client_id, key)
        claim = EmailRecord(kind=kind, status=EmailStatus.SENDING, claimed_at=now).model_dump(mode="json")
        try:
            doc.create(claim)  # create-if-absent: the first delivery wins
            return True
        except AlreadyExists:
            pass
        snapshot = doc.get()
        if not snapshot.exists:  # released between our create and our read: try once more
            try:
                doc.create(claim)
                return True
            except AlreadyExists as exc:
                raise EmailInFlight() from exc
        record = EmailRecord.model_validate(snapshot.to_dict() or {})
        if record.status is not EmailStatus.SENDING:
            return False
        if now - record.claimed_at < lease:
            raise EmailInFlight()
        try:  # take over a dead delivery's claim, unless someone else just did
            doc.update(claim, option=self.db.write_option(last_update_time=snapshot.update_time))
        except FailedPrecondition as exc:
            raise EmailInFlight() from exc
        return True

    def finish(self, client_id: str, key: str, status: EmailStatus, now: datetime) -> None:
        self._doc(client_id, key).update({"status": status.value, "sent_at": now})

    def release(self, client_id: str, key: str) -> None:
        self._doc(client_id, key).delete()
