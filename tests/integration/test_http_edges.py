"""Edges of the HTTP layer: stale idempotency claims, HEAD, Vary, RFC 6750 challenges, empty subjects."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from flask import Flask, request

from shared.http.idempotency import PENDING_TIMEOUT, fingerprint_request


def _claim(stack: Any, client_id: str, key: str, raw: bytes, age: timedelta) -> None:
    """Leave a pending record as a request that died mid-way would, ``age`` ago."""
    with Flask("claim").test_request_context("/products", method="POST", data=raw):
        fingerprint = fingerprint_request(request, raw)
    key_hash = hashlib.sha256(f"/products\n{key}".encode()).hexdigest()
    created = stack.platform.clock() - age
    stack.platform.db.collection("clients").document(client_id).collection("idempotency_keys").document(key_hash).set(
        {
            "fingerprint": fingerprint,
            "state": "pending",
            "created_at": created,
            "expires_at": created + timedelta(hours=24),
        }
    )


def test_a_pending_claim_from_a_dead_request_is_taken_over(stack: Any, client_id: str) -> None:
    raw = b'{"name": "Survivor"}'
    _claim(stack, client_id, "dead-key", raw, PENDING_TIMEOUT + timedelta(seconds=5))
    api = stack.client("catalog_api")
    headers = stack.headers(client_id, **{"Idempotency-Key": "dead-key", "Content-Type": "application/json"})
    first = api.post("/products", data=raw, headers=headers)
    assert first.status_code == 201, first.json
    replay = api.post("/products", data=raw, headers=headers)
    assert replay.status_code == 201 and replay.json["id"] == first.json["id"]
    assert replay.headers["Idempotency-Replayed"] == "true"


def test_a_fresh_pending_claim_still_blocks(stack: Any, client_id: str) -> None:
    raw = b'{"name": "Racer"}'
    _claim(stack, client_id, "live-key", raw, timedelta(seconds=5))
    headers = stack.headers(client_id, **{"Idempotency-Key": "live-key", "Content-Type": "application/json"})
    assert stack.client("catalog_api").post("/products", data=raw, headers=headers).status_code == 409


def test_query_parameter_order_does_not_change_the_fingerprint() -> None:
    raw = b'{"a": 1}'
    prints = []
    for query in ("x=1&y=2", "y=2&x=1"):
        with Flask("fp").test_request_context(f"/products?{query}", method="POST", data=raw):
            prints.append(fingerprint_request(request, raw))
    assert prints[0] == prints[1]
    with Flask("fp").test_request_context("/products?x=2&y=1", method="POST", data=raw):
        assert fingerprint_request(request, raw) != prints[0]


def test_head_answers_like_get_without_a_body(stack: Any) -> None:
    response = stack.client("catalog_api").head("/health")
    assert response.status_code == 200
    assert response.data == b""


def test_vary_origin_on_every_answer_when_cors_is_on(stack: Any, client_id: str) -> None:
    api = stack.client("catalog_api")
    foreign = api.get("/products", headers=stack.headers(client_id, Origin="https://evil.example"))
    assert "Origin" in foreign.headers.get("Vary", "")
    assert "Access-Control-Allow-Origin" not in foreign.headers


def test_missing_credentials_get_a_bare_bearer_challenge(stack: Any) -> None:
    api = stack.client("catalog_api")
    assert api.get("/products").headers["WWW-Authenticate"] == "Bearer"
    bad = api.get("/products", headers={"Authorization": "Bearer not-a-jwt"})
    assert bad.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


def test_a_token_with_an_empty_subject_is_refused(stack: Any, client_id: str) -> None:
    token = stack.issuer.mint(client_id, extra={"sub": "  "})
    response = stack.client("catalog_api").get("/products", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
