"""``Idempotency-Key`` on the HTTP side: which requests are "the same" (:func:`fingerprint_request`)
and running a handler at most once per key (:func:`run_idempotent`). The rules and the store port are
:mod:`shared.idempotency` (Firestore adapter: ``shared.adapters.firestore.idempotency``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from shared.errors import BadRequest
from shared.idempotency import (
    PENDING_TIMEOUT,
    Begun,
    IdempotencyKeys,
    IdempotencyRecord,
    IdempotencyStore,
    StoredResponse,
)

if TYPE_CHECKING:
    from flask import Request, Response

__all__ = [
    "PENDING_TIMEOUT",
    "Begun",
    "IdempotencyKeys",
    "IdempotencyRecord",
    "IdempotencyStore",
    "StoredResponse",
    "fingerprint_request",
    "run_idempotent",
]

_KEY = re.compile(r"[\x21-\x7e]{1,255}")
_REPLAYED_HEADERS = ("Content-Type", "Location")


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
    keys: IdempotencyKeys,
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
    outcome = keys.begin(client_id, key_hash, fingerprint_request(request, raw_body))
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
        keys.abandon(client_id, key_hash)
        raise
    if response.status_code >= 300:
        keys.abandon(client_id, key_hash)
        return response
    headers = {name: response.headers[name] for name in _REPLAYED_HEADERS if name in response.headers}
    keys.complete(
        client_id,
        key_hash,
        StoredResponse(status=response.status_code, body=response.get_data(as_text=True), headers=headers),
    )
    return response
