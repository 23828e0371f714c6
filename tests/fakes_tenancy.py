"""In-memory tenancy port: the same rule as the Firestore adapter (create never overwrites)."""

from __future__ import annotations

import threading

from shared.tenancy import ClientDirectory, ClientRecord


class InMemoryClientDirectory(ClientDirectory):
    """``clients/{id}`` records in a dict; ``create`` fails over to False like Firestore's exists precondition."""

    def __init__(self) -> None:
        self.records: dict[str, ClientRecord] = {}
        self.create_calls = 0
        self.contacts: dict[str, str] = {}  # set_contact_email on a client without a record
        self._lock = threading.Lock()

    def create(self, record: ClientRecord) -> bool:
        with self._lock:
            self.create_calls += 1
            if record.id in self.records:
                return False
            self.records[record.id] = record.model_copy()
            return True

    def set_contact_email(self, client_id: str, email: str) -> None:
        with self._lock:
            record = self.records.get(client_id)
            if record is None:  # Firestore's merge creates a bare document; keep it readable here too
                self.contacts[client_id] = email
            else:
                self.records[client_id] = record.model_copy(update={"contact_email": email})

    def contact_email(self, client_id: str) -> str | None:
        record = self.records.get(client_id)
        return record.contact_email if record is not None else self.contacts.get(client_id)
