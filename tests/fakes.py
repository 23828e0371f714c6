"""Fakes for unit tests: real subclasses of the ports, holding state in memory."""

from __future__ import annotations

import ipaddress
from urllib.parse import quote

from shared.adapters.safe_fetch import Resolver
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
