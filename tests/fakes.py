"""Fakes for unit tests: real subclasses of the ports, holding state in memory."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import quote

from shared.adapters.safe_fetch import Resolver
from shared.ledger.model import Entry, HoldOutcome, LedgerState, Mutation
from shared.ledger.store import HoldRecord, KeyAlreadyUsed, LedgerStore, Marker, Snapshot, StaleState, key_hash
from shared.storage import ObjectInfo, ObjectNotFound, ObjectStore, PresignedUpload
from shared.tasks import TaskQueue, TaskRequest


class InMemoryObjectStore(ObjectStore):
    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}

    def put(self, key: str, data: bytes, content_type: str, *, cache_control: str | None = None) -> None:
        self.objects[key] = (data, content_type)

    def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        if key not in self.objects:
            raise ObjectNotFound(f"No object at {key}")
        data = self.objects[key][0]
        return data if max_bytes is None else data[: max_bytes + 1]

    def head(self, key: str) -> ObjectInfo | None:
        if key not in self.objects:
            return None
        data, content_type = self.objects[key]
        return ObjectInfo(key=key, size=len(data), content_type=content_type, etag=str(hash(data)))

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    def presigned_get(self, key: str, *, expires_in: int, download_name: str | None = None) -> str:
        return f"memory://{quote(key)}?expires={expires_in}"

    def presigned_put(self, key: str, *, content_type: str, content_length: int, expires_in: int) -> PresignedUpload:
        return PresignedUpload(
            url=f"memory://{quote(key)}",
            method="PUT",
            headers={"Content-Type": content_type, "Content-Length": str(content_length)},
            expires_in=expires_in,
        )


class RecordingTaskQueue(TaskQueue):
    """Keeps tasks; drops a second task with a name it has seen, like Cloud Tasks."""

    def __init__(self) -> None:
        self.tasks: list[TaskRequest] = []
        self.names: set[str] = set()

    def enqueue(self, task: TaskRequest) -> bool:
        if task.name is not None:
            if task.name in self.names:
                return False
            self.names.add(task.name)
        self.tasks.append(task)
        return True


class StaticResolver(Resolver):
    """DNS from a dict, so tests can point names at loopback or at private addresses."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table

    def resolve(self, host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        if host not in self.table:
            from shared.adapters.safe_fetch import FetchFailed

            raise FetchFailed(f"cannot resolve {host}")
        return [ipaddress.ip_address(address) for address in self.table[host]]


class InMemoryLedgerStore(LedgerStore):
    """The ledger port in memory, with the same all-or-nothing and precondition semantics."""

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self.states: dict[str, tuple[LedgerState, int]] = {}
        self.markers: dict[tuple[str, str], Marker] = {}
        self.entry_log: dict[str, list[Entry]] = {}
        self.holds: dict[tuple[str, str], dict[str, Any]] = {}
        self.notifications: dict[str, list[Any]] = {}
        self.state_writes: dict[str, int] = {}

    def load(self, client_id: str, key: str, hold_id: str | None = None) -> Snapshot:
        with self._lock:
            state, version = self.states.get(client_id, (LedgerState(client_id=client_id), 0))
            hold = None
            record = self.holds.get((client_id, hold_id)) if hold_id else None
            if record and record.get("status") in ("captured", "released"):
                hold = HoldOutcome.model_validate(record["outcome"])
            return Snapshot(
                state=state.model_copy(deep=True),
                version=version,
                marker=self.markers.get((client_id, key_hash(key))),
                hold=hold,
            )

    def commit(
        self,
        client_id: str,
        snapshot: Snapshot,
        mutation: Mutation,
        *,
        key: str,
        fingerprint: str,
        hold: HoldRecord | None,
    ) -> None:
        with self._lock:
            if (client_id, key_hash(key)) in self.markers:
                raise KeyAlreadyUsed()
            _, version = self.states.get(client_id, (None, 0))
            if version != snapshot.version:
                raise StaleState()
            self.states[client_id] = (mutation.state.model_copy(deep=True), version + 1)
            self.state_writes[client_id] = self.state_writes.get(client_id, 0) + 1
            self.markers[(client_id, key_hash(key))] = Marker(fingerprint=fingerprint, result=mutation.result)
            self.entry_log.setdefault(client_id, []).extend(mutation.entries)
            if hold is not None:
                self.holds.setdefault((client_id, hold.hold_id), {}).update(hold.data)
            self.notifications.setdefault(client_id, []).extend(mutation.notifications)

    def entries(self, client_id: str) -> list[Entry]:
        with self._lock:
            return list(self.entry_log.get(client_id, []))

    def state(self, client_id: str) -> LedgerState:
        with self._lock:
            return self.states.get(client_id, (LedgerState(client_id=client_id), 0))[0].model_copy(deep=True)
