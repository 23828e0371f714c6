"""Firestore as batch-job tests need it: a project of the test's own on the shared emulator (the
reaper works across tenants, so it must see only the test's jobs), and a client whose commits can
land and then fail the way a lost answer fails.

:class:`FaultyClient` is the real ``google.cloud.firestore.Client`` whose write batches (which
``DocumentReference.update``/``create`` use too) can be told to apply a commit and then report it
failed: with ``retry=None`` the caller sees ServiceUnavailable; otherwise the client's own automatic
retry is played, sending the same writes again, and the emulator answers what it answers to that
(FailedPrecondition for a guarded update, AlreadyExists for a create).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.api_core import gapic_v1
from google.api_core.exceptions import ServiceUnavailable
from google.cloud import firestore
from google.cloud.firestore_v1.batch import WriteBatch

PROJECT_PREFIX = "epox-iso-"


def isolated_project() -> str:
    return PROJECT_PREFIX + uuid.uuid4().hex[:12]


def isolated_client() -> firestore.Client:
    """A plain client on a fresh project of the emulator (FIRESTORE_EMULATOR_HOST)."""
    return firestore.Client(project=isolated_project())


def _paths(writes: list[Any]) -> list[str]:
    paths = []
    for write in writes:
        name = write.update.name or write.delete or write.transform.document
        paths.append(name.split("/documents/", 1)[-1])
    return paths


@dataclass
class Fault:
    """Land the next ``times`` commits whose written paths ``match``, then answer them failed."""

    match: Callable[[list[str]], bool]
    times: int = 1
    hits: int = 0


class LandThenFail(WriteBatch):
    """A write batch of a :class:`FaultyClient`."""

    _client: FaultyClient

    def commit(self, retry: Any = gapic_v1.method.DEFAULT, timeout: float | None = None) -> list[Any]:
        writes = list(self._write_pbs)
        fault = self._client.fault_for(_paths(writes))
        results: list[Any] = super().commit(retry=retry, timeout=timeout)
        if fault is None:
            return results
        if retry is None:
            raise ServiceUnavailable("the commit was applied but its answer was lost")
        # The client library's automatic retry (UNAVAILABLE is retried by default) sends it again.
        self._write_pbs = writes
        again: list[Any] = super().commit(retry=None, timeout=timeout)
        return again


class FaultyClient(firestore.Client):
    """A Firestore client (on a fresh project unless told) whose commits can land then fail."""

    def __init__(self, project: str | None = None) -> None:
        super().__init__(project=project or isolated_project())
        self.faults: list[Fault] = []
        self.committed: list[list[str]] = []  # paths of every batch commit, in order

    def batch(self) -> LandThenFail:
        return LandThenFail(self)

    def land_then_fail(self, match: Callable[[list[str]], bool], times: int = 1) -> Fault:
        fault = Fault(match, times)
        self.faults.append(fault)
        return fault

    def fault_for(self, paths: list[str]) -> Fault | None:
        self.committed.append(paths)
        for fault in self.faults:
            if fault.hits < fault.times and fault.match(paths):
                fault.hits += 1
                return fault
        return None


def writes_to(*fragments: str) -> Callable[[list[str]], bool]:
    """A match: some written path contains every fragment (e.g. "/items/000001")."""

    def match(paths: list[str]) -> bool:
        return any(all(fragment in path for fragment in fragments) for path in paths)

    return match
