"""In-memory idempotency records: the Firestore adapter's rules (create fails on an existing record,
replace only at the version that was read, delete is idempotent), for unit tests of the key rules."""

from __future__ import annotations

import threading
from dataclasses import replace

from shared.idempotency import IdempotencyRecord, IdempotencyStore, StoredResponse


class InMemoryIdempotencyStore(IdempotencyStore):
    """Records per (client, key hash), each with a version that every write bumps (Firestore's update time)."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], IdempotencyRecord] = {}
        self.versions: dict[tuple[str, str], int] = {}
        self._next_version = 0
        self._lock = threading.Lock()

    def _put(self, where: tuple[str, str], record: IdempotencyRecord) -> None:
        self._next_version += 1
        self.records[where] = record
        self.versions[where] = self._next_version

    def create(self, client_id: str, key_hash: str, record: IdempotencyRecord) -> bool:
        with self._lock:
            if (client_id, key_hash) in self.records:
                return False
            self._put((client_id, key_hash), record)
            return True

    def get(self, client_id: str, key_hash: str) -> tuple[IdempotencyRecord, object] | None:
        with self._lock:
            record = self.records.get((client_id, key_hash))
            return None if record is None else (record, self.versions[(client_id, key_hash)])

    def replace(self, client_id: str, key_hash: str, record: IdempotencyRecord, version: object) -> bool:
        with self._lock:
            if self.versions.get((client_id, key_hash)) != version or (client_id, key_hash) not in self.records:
                return False
            self._put((client_id, key_hash), record)
            return True

    def complete(self, client_id: str, key_hash: str, response: StoredResponse) -> None:
        with self._lock:
            where = (client_id, key_hash)
            if where not in self.records:  # Firestore's update() of a missing document fails too
                raise KeyError(where)
            self._put(where, replace(self.records[where], state="completed", response=response))

    def delete(self, client_id: str, key_hash: str) -> None:
        with self._lock:
            self.records.pop((client_id, key_hash), None)
            self.versions.pop((client_id, key_hash), None)
