"""In-memory tenancy port: the same rule as the Firestore adapter (create never overwrites)."""

from __future__ import annotations

import threading

from shared.tenancy import ClientDirectory, ClientRecord


class InMemoryClientDirectory(ClientDirectory):
    """``clients/{id}`` records in a dict; ``create`` fails over to False like Firestore's exists precondition."""

    def __init__(self) -> None:
        self.records: dict[str, ClientRecord] = {}
        self.create_calls = 0
        self._lock = threading.Lock()

    def create(self, record: ClientRecord) -> bool:
        with self._lock:
            self.create_calls += 1
            if record.id in self.records:
                return False
            self.records[record.id] = record.model_copy()
            return True
