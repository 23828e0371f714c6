"""``Idempotency-Key`` for POSTs: same key + same request → the first response again;
same key + another request → 409; a key whose first request is still running → 409 (retry later).

The record lives in the client's own subtree, so keys never collide across tenants. Only successful
responses are stored: after an error the caller may retry with the same key.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.errors import BadRequest, IdempotencyKeyReused, IdempotencyRequestInProgress

if TYPE_CHECKING:
    from flask import Request, Response
    from google.cloud.firestore import Client

_KEY = re.compile(r"[\x21-\x7e]{1,255}")
_REPLAYED_HEADERS = ("Content-Type", "Location")
PENDING_TIMEOUT = timedelta(minutes=2)


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: str
    headers: dict[str, str]


@dataclass(frozen=True)
class Begun:
    """The key is new: run the request, then complete or abandon it."""


class IdempotencyStore(ABC):
    """Port: where idempotency records live."""

    @abstractmethod
    def begin(self, client_id: str, key_hash: str, fingerprint: str) -> StoredResponse | Begun:
        """Claim the key, or return the stored response; raise 409 errors on mismatch or in-flight."""

    @abstractmethod
    def complete(self, client_id: str, key_hash: str, response: StoredResponse) -> None: ...

    @abstractmethod
    def abandon(self, client_id: str, key_hash: str) -> None: ...


class FirestoreIdempotencyStore(IdempotencyStore):
    """Records in ``clients/{client}/idempotency_keys/{sha256(key)}`` with an ``expires_at`` for TTL."""

    def __init__(self, db: Client, ttl: timedelta, clock: Callable[[], datetime]) -> None:
        self.db = db
        self.ttl = ttl
        self.clock = clock

    def _ref(self, client_id: str, key_hash: str) -> Any:
        return self.db.collection("clients").document(client_id).collection("idempotency_keys").document(key_hash)

    def begin(self, client_id: str, key_hash: str, fingerprint: str) -> StoredResponse | Begun:
        from google.api_core.exceptions import AlreadyExists, FailedPrecondition

        ref = self._ref(client_id, key_hash)
        now = self.clock()
        fresh = {"fingerprint": fingerprint, "state": "pending", "created_at": now, "expires_at": now + self.ttl}
        try:
            ref.create(fresh)
            return Begun()
        except AlreadyExists:
            pass
        snapshot = ref.get()
        record = snapshot.to_dict() or {}
        expired = record.get("expires_at") is not None and record["expires_at"] <= now
        # A pending record whose request died (process killed mid-request) must not block the key
        # until the TTL sweep: after PENDING_TIMEOUT another attempt may take it over.
        stale = (
            record.get("state") == "pending"
            and record.get("created_at") is not None
            and (now - record["created_at"] > PENDING_TIMEOUT)
        )
        if snapshot.exists and (expired or stale):
            try:
                from google.cloud.firestore import DELETE_FIELD

                takeover = {**fresh, "status": DELETE_FIELD, "body": DELETE_FIELD, "headers": DELETE_FIELD}
                ref.update(takeover, option=self.db.write_option(last_update_time=snapshot.update_time))
                return Begun()
            except FailedPrecondition:
                snapshot = ref.get()  # another attempt took it over first
                record = snapshot.to_dict() or {}
        if record.get("fingerprint") != fingerprint:
            raise IdempotencyKeyReused("This Idempotency-Key was used with a different request")
        if record.get("state") != "completed":
            # IdempotencyRequestInProgress takes no retry_after (it became a body member); send the header.
            in_progress = IdempotencyRequestInProgress()
            in_progress.headers["Retry-After"] = "1"
            raise in_progress
        return StoredResponse(
            status=int(record["status"]), body=str(record.get("body", "")), headers=dict(record.get("headers", {}))
        )

    def complete(self, client_id: str, key_hash: str, response: StoredResponse) -> None:
        self._ref(client_id, key_hash).update(
            {"state": "completed", "status": response.status, "body": response.body, "headers": response.headers}
        )

    def abandon(self, client_id: str, key_hash: str) -> None:
        self._ref(client_id, key_hash).delete()


def fingerprint_request(request: Request, raw_body: bytes) -> str:
    """Hash of what makes two requests "the same": method, path, query and the parsed JSON body."""
    try:
        canonical = json.dumps(json.loads(raw_body), sort_keys=True, separators=(",", ":")) if raw_body else ""
    except ValueError:
        canonical = raw_body.decode("latin-1")
    query = "&".join(f"{k}={v}" for k, v in sorted(request.args.items(multi=True)))
    material = f"{request.method}\n{request.path}\n{query}\n{canonical}"
    return hashlib.sha256(material.encode()).hexdigest()


def run_idempotent(
    store: IdempotencyStore,
    *,
    client_id: str,
    key: str,
    request: Request,
    raw_body: bytes,
    execute: Callable[[], Response],
) -> Response:
    """Run ``execute`` at most once per (client, key); replay its stored response afterwards."""
    from flask import Response

    if not _KEY.fullmatch(key):
        raise BadRequest("Idempotency-Key must be 1-255 printable ASCII characters")
    key_hash = hashlib.sha256(f"{request.path}\n{key}".encode()).hexdigest()
    outcome = store.begin(client_id, key_hash, fingerprint_request(request, raw_body))
    if isinstance(outcome, StoredResponse):
        replay = Response(outcome.body, status=outcome.status)
        for name, value in outcome.headers.items():
            replay.headers[name] = value
        replay.headers["Idempotency-Replayed"] = "true"
        return replay
    # Like Stripe: only a request that succeeded is remembered. Errors free the key, so a caller
    # who fixes the cause (tops up credits, corrects a field) can retry with the same key.
    try:
        response = execute()
    except Exception:
        store.abandon(client_id, key_hash)
        raise
    if response.status_code >= 300:
        store.abandon(client_id, key_hash)
        return response
    headers = {name: response.headers[name] for name in _REPLAYED_HEADERS if name in response.headers}
    store.complete(
        client_id,
        key_hash,
        StoredResponse(status=response.status_code, body=response.get_data(as_text=True), headers=headers),
    )
    return response
