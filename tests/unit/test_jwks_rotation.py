"""User JWTs against a rotating identity provider: a local JWKS server whose keys the tests add and
remove, and which counts every fetch.

What is pinned: a flood of forged ``kid``s costs at most one key-set fetch per refresh interval; a
key rotated in is picked up within that interval; a key removed from the JWKS stops verifying once
the set's lifetime is over; an unreachable provider is bridged by the last good set for a bounded
grace, and costs one attempt per interval, not one per request.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dev.jwt_issuer import DevIssuer
from shared.auth import JwtVerifier
from shared.errors import Unauthenticated, UpstreamUnavailable

ISSUER = "https://auth.rotation.test"
AUDIENCE = "https://api.rotation.test"
LIFESPAN = 600
INTERVAL = 30
GRACE = 3600


class Jwks:
    """The provider's JWKS endpoint: serves the current keys, counts fetches, can go down."""

    def __init__(self) -> None:
        self.keys: list[DevIssuer] = []
        self.hits = 0
        self.down = False
        self.delay = 0.0
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                state.hits += 1
                time.sleep(state.delay)
                if state.down:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps({"keys": [k.jwks()["keys"][0] for k in state.keys]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/auth/jwks"


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def idp() -> Iterator[Jwks]:
    server = Jwks()
    thread = threading.Thread(target=server.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


def key(kid: str) -> DevIssuer:
    return DevIssuer(issuer=ISSUER, audience=AUDIENCE, kid=kid)


def verifier(idp: Jwks, clock: Clock, **overrides: Any) -> JwtVerifier:
    settings: dict[str, Any] = {
        "jwks_cache_seconds": LIFESPAN,
        "jwks_refresh_min_seconds": INTERVAL,
        "jwks_outage_grace_seconds": GRACE,
        **overrides,
    }
    return JwtVerifier(
        jwks_url=idp.url, issuer=ISSUER, audience=AUDIENCE, algorithms=["EdDSA"], clock=clock, **settings
    )


def forged(kid: str) -> str:
    """A well-formed token under a kid the provider never published, signed by the attacker."""
    return key(kid).mint("acme", key=Ed25519PrivateKey.generate())


def test_a_flood_of_forged_kids_costs_at_most_one_fetch_per_interval(idp: Jwks) -> None:
    clock = Clock()
    signer = key("k1")
    idp.keys = [signer]
    v = verifier(idp, clock)
    assert v.verify(signer.mint("acme")).client_id == "acme"
    assert idp.hits == 1
    for n in range(100):  # right after a fetch: the throttle answers without asking
        with pytest.raises(Unauthenticated):
            v.verify(forged(f"forged-{n}"))
    assert idp.hits == 1
    clock.now += INTERVAL
    for n in range(100):  # one interval later: one refresh for the whole flood
        with pytest.raises(Unauthenticated):
            v.verify(forged(f"forged-again-{n}"))
    assert idp.hits == 2
    assert v.verify(signer.mint("acme")).client_id == "acme"  # real users are unaffected
    print(f"\n200 forged unknown-kid tokens over two refresh intervals: {idp.hits - 1} key-set refresh(es)")


def test_a_rotated_in_key_is_picked_up_within_the_interval(idp: Jwks) -> None:
    clock = Clock()
    old, new = key("old"), key("new")
    idp.keys = [old]
    v = verifier(idp, clock)
    v.verify(old.mint("acme"))
    idp.keys = [old, new]  # the provider rotates: it publishes the new key, then signs with it
    clock.now += INTERVAL
    assert v.verify(new.mint("acme")).client_id == "acme"
    assert v.verify(old.mint("acme")).client_id == "acme"
    assert idp.hits == 2


def test_a_key_is_never_fetched_for_more_often_than_the_interval_even_when_real(idp: Jwks) -> None:
    clock = Clock()
    old, new = key("old"), key("new")
    idp.keys = [old, new]
    v = verifier(idp, clock)
    idp.keys = [old]
    v.verify(old.mint("acme"))  # the first fetch sees only "old"
    idp.keys = [old, new]
    clock.now += INTERVAL - 1
    with pytest.raises(Unauthenticated):  # too soon after the last fetch: the bound holds
        v.verify(new.mint("acme"))
    clock.now += 1
    assert v.verify(new.mint("acme")).client_id == "acme"
    assert idp.hits == 2


def test_a_key_removed_from_the_jwks_stops_verifying_once_the_set_expires(idp: Jwks) -> None:
    clock = Clock()
    leaked, current = key("leaked"), key("current")
    idp.keys = [leaked, current]
    v = verifier(idp, clock)
    stolen = leaked.mint("victim", platform_admin=True)
    assert v.verify(stolen).platform_admin
    idp.keys = [current]  # the operator removes the leaked key
    clock.now += LIFESPAN - 1
    assert v.verify(stolen).client_id == "victim"  # still within the set's lifetime (as documented)
    clock.now += 1
    with pytest.raises(Unauthenticated):
        v.verify(stolen)
    with pytest.raises(Unauthenticated):
        v.verify(leaked.mint("victim"))
    assert v.verify(current.mint("acme")).client_id == "acme"


def test_a_removed_key_stops_verifying_in_real_time_with_the_default_settings(idp: Jwks) -> None:
    """The same through the real clock and only the settings that always existed: PyJWKClient's
    per-kid LRU (cache_keys=True) kept a removed key for the life of the process."""
    leaked, current = key("leaked"), key("current")
    idp.keys = [leaked, current]
    v = JwtVerifier(jwks_url=idp.url, issuer=ISSUER, audience=AUDIENCE, algorithms=["EdDSA"], jwks_cache_seconds=1)
    stolen = leaked.mint("victim")
    v.verify(stolen)
    idp.keys = [current]
    time.sleep(1.2)
    assert v.verify(current.mint("acme")).client_id == "acme"  # refetched: the new set lacks "leaked"
    with pytest.raises(Unauthenticated):
        v.verify(stolen)


def test_an_unreachable_provider_is_bridged_by_the_last_good_set_then_503(idp: Jwks) -> None:
    clock = Clock()
    signer = key("k1")
    idp.keys = [signer]
    v = verifier(idp, clock)
    v.verify(signer.mint("acme"))
    idp.down = True
    clock.now += LIFESPAN  # the set expired while the provider is down
    for _ in range(50):
        assert v.verify(signer.mint("acme")).client_id == "acme"
    assert idp.hits == 2  # one attempt, not fifty
    clock.now += INTERVAL
    v.verify(signer.mint("acme"))
    assert idp.hits == 3  # the next attempt waits for the next interval
    clock.now = 5000.0 + LIFESPAN + GRACE  # grace over: nothing trustworthy to verify with
    with pytest.raises(UpstreamUnavailable):
        v.verify(signer.mint("acme"))
    idp.down = False
    clock.now += INTERVAL
    assert v.verify(signer.mint("acme")).client_id == "acme"  # back: fresh set, normal service


def test_a_cold_instance_with_the_provider_down_answers_503_without_hammering_it(idp: Jwks) -> None:
    clock = Clock()
    signer = key("k1")
    idp.keys = [signer]
    idp.down = True
    v = verifier(idp, clock)
    for _ in range(20):
        with pytest.raises(UpstreamUnavailable):
            v.verify(signer.mint("acme"))
    assert idp.hits == 1
    idp.down = False
    clock.now += INTERVAL
    assert v.verify(signer.mint("acme")).client_id == "acme"


@pytest.mark.parametrize("answer", [{"keys": []}, {"keys": "nope"}, ["not", "an", "object"], {"keys": [{"kty": "X"}]}])
def test_a_provider_serving_garbage_is_503_not_500(idp: Jwks, answer: Any) -> None:
    clock = Clock()
    v = verifier(idp, clock)
    v.jwks._fetch = lambda: answer  # what the endpoint answered, parsed
    with pytest.raises(UpstreamUnavailable):
        v.verify(key("k1").mint("acme"))


def test_concurrent_requests_on_a_cold_instance_share_one_fetch(idp: Jwks) -> None:
    clock = Clock()
    signer = key("k1")
    idp.keys = [signer]
    idp.delay = 0.3  # a slow provider: every request arrives while the first fetch is in flight
    v = verifier(idp, clock)
    tokens = [signer.mint(f"c{n}") for n in range(16)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        principals = list(pool.map(v.verify, tokens))
    assert [p.client_id for p in principals] == [f"c{n}" for n in range(16)]
    assert idp.hits == 1


@pytest.mark.parametrize("kid", [123, ["k1"], {"k": 1}, None, ""])
def test_a_kid_that_is_not_a_string_is_401_not_500(idp: Jwks, kid: Any) -> None:
    import base64

    def b64(data: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    clock = Clock()
    signer = key("k1")
    idp.keys = [signer]
    v = verifier(idp, clock)
    _, payload, signature = signer.mint("acme").split(".")
    header = {"alg": "EdDSA", "typ": "JWT"} | ({} if kid is None else {"kid": kid})
    with pytest.raises(Unauthenticated):
        v.verify(f"{b64(header)}.{payload}.{signature}")
