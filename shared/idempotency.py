"""The rules of idempotency keys, apart from HTTP: same key + same request → the first response again;
same key + another request → 409; a key whose first request is still running → 409 (retry later).

The record lives in the client's own subtree, so keys never collide across tenants. Only successful
responses are stored: after an error the caller may retry with the same key. The rules are
:class:`IdempotencyKeys`; the records sit behind the :class:`IdempotencyStore` port (Firestore adapter:
``shared.adapters.firestore.idempotency``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.errors import IdempotencyKeyReused, IdempotencyRequestInProgress

PENDING_TIMEOUT = timedelta(minutes=2)


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: str
    headers: dict[str, str]


@dataclass(frozen=True)
class Begun:
    """The key is new: run the request, then complete or abandon it."""


@dataclass(frozen=True)
class IdempotencyRecord:
    """One key's record: a claim (``pending``) until its request succeeded, then the response (``completed``)."""

    fingerprint: str
    state: str  # "pending" | "completed"
    created_at: datetime
    expires_at: datetime
    response: StoredResponse | None = None


class IdempotencyStore(ABC):
    """Port: where idempotency records live, per client and key hash, with a precondition for takeovers."""

    @abstractmethod
    def create(self, client_id: str, key_hash: str, record: IdempotencyRecord) -> bool:
        """Store ``record`` unless the key has one; False when it has."""

    @abstractmethod
    def get(self, client_id: str, key_hash: str) -> tuple[IdempotencyRecord, object] | None:
        """The key's record and its version (an opaque precondition for :meth:`replace`), or None."""

    @abstractmethod
    def replace(self, client_id: str, key_hash: str, record: IdempotencyRecord, version: object) -> bool:
        """Put ``record`` in place of the one read at ``version``; False when it changed or vanished since."""

    @abstractmethod
    def complete(self, client_id: str, key_hash: str, response: StoredResponse) -> None:
        """Mark the key's claim completed with the response to replay."""

    @abstractmethod
    def delete(self, client_id: str, key_hash: str) -> None:
        """Drop the key's record (a failed request frees its key)."""


class IdempotencyKeys:
    """The rules of a key: new → claimed; same request → replay (or 409 while it runs); another request →
    409 reused; an expired record, or a claim whose request died (pending past PENDING_TIMEOUT), is taken
    over by the next attempt, once (the store's precondition decides between racing attempts)."""

    def __init__(self, store: IdempotencyStore, ttl: timedelta, clock: Callable[[], datetime]) -> None:
        self.store = store
        self.ttl = ttl
        self.clock = clock

    def begin(self, client_id: str, key_hash: str, fingerprint: str) -> StoredResponse | Begun:
        """Claim the key, or return the stored response; raise 409 errors on mismatch or in-flight."""
        now = self.clock()
        fresh = IdempotencyRecord(fingerprint=fingerprint, state="pending", created_at=now, expires_at=now + self.ttl)
        for _ in range(_CLAIM_ATTEMPTS):
            if self.store.create(client_id, key_hash, fresh):
                return Begun()
            found = self.store.get(client_id, key_hash)
            if found is None:
                continue  # the record was abandoned between our two reads: claim the key again
            record, version = found
            # A pending record whose request died (process killed mid-request) must not block the key
            # until the TTL sweep: after PENDING_TIMEOUT another attempt may take it over.
            expired = record.expires_at <= now
            stale = record.state == "pending" and now - record.created_at > PENDING_TIMEOUT
            if expired or stale:
                if self.store.replace(client_id, key_hash, fresh, version):
                    return Begun()
                continue  # another attempt took it over first: judge what it left
            return _verdict(record, fingerprint)
        raise _in_progress()  # the key keeps changing under us: the caller retries shortly

    def complete(self, client_id: str, key_hash: str, response: StoredResponse) -> None:
        """Remember the successful response of the claimed key."""
        self.store.complete(client_id, key_hash, response)

    def abandon(self, client_id: str, key_hash: str) -> None:
        """Free the key after a failed request, so the caller may retry with it."""
        self.store.delete(client_id, key_hash)


_CLAIM_ATTEMPTS = 3


def _verdict(record: IdempotencyRecord, fingerprint: str) -> StoredResponse:
    if record.fingerprint != fingerprint:
        raise IdempotencyKeyReused("This Idempotency-Key was used with a different request")
    if record.state != "completed" or record.response is None:
        raise _in_progress()
    return record.response


def _in_progress() -> IdempotencyRequestInProgress:
    # IdempotencyRequestInProgress takes no retry_after (it became a body member); send the header.
    error = IdempotencyRequestInProgress()
    error.headers["Retry-After"] = "1"
    return error
