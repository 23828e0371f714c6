"""In-memory fakes of the email ports: preferences, sent-markers, and a mailer that keeps or refuses."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

from shared.errors import UpstreamUnavailable
from shared.mail.port import EmailMessage, Mailer
from shared.notifications.email import EmailInFlight, EmailLog, EmailRecord, EmailStatus
from shared.notifications.preferences import NotificationPreferences, NotificationType, PreferencesStore


class InMemoryPreferences(PreferencesStore):
    def __init__(self) -> None:
        self.stored: dict[str, NotificationPreferences] = {}

    def get(self, client_id: str) -> NotificationPreferences:
        stored = self.stored.get(client_id)
        return stored.model_copy(deep=True) if stored is not None else NotificationPreferences()

    def save(self, client_id: str, preferences: NotificationPreferences) -> None:
        self.stored[client_id] = preferences.model_copy(deep=True)


class InMemoryEmailLog(EmailLog):
    """Same rules as the Firestore adapter: create-if-absent, a live claim refused, a stale one taken over."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], EmailRecord] = {}
        self._lock = threading.Lock()

    def claim(self, client_id: str, key: str, kind: NotificationType, now: datetime, lease: timedelta) -> bool:
        with self._lock:
            record = self.records.get((client_id, key))
            if record is not None:
                if record.status is not EmailStatus.SENDING:
                    return False
                if now - record.claimed_at < lease:
                    raise EmailInFlight()
            self.records[(client_id, key)] = EmailRecord(kind=kind, status=EmailStatus.SENDING, claimed_at=now)
            return True

    def finish(self, client_id: str, key: str, status: EmailStatus, now: datetime) -> None:
        with self._lock:
            record = self.records[(client_id, key)]
            self.records[(client_id, key)] = record.model_copy(update={"status": status, "sent_at": now})

    def release(self, client_id: str, key: str) -> None:
        with self._lock:
            self.records.pop((client_id, key), None)


class RecordingMailer(Mailer):
    """Keeps what it is given; ``down`` makes it refuse like a relay that cannot be reached."""

    def __init__(self) -> None:
        self.sent: list[EmailMessage] = []
        self.down = False

    def send(self, message: EmailMessage) -> None:
        if self.down:
            raise UpstreamUnavailable("The mail relay cannot be reached: ConnectionRefusedError")
        self.sent.append(message)
