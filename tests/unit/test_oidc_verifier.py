"""The production worker check: a Google-signed OIDC token, verified by google-auth itself.

google-auth fetches Google's certificates through a transport; ours serves a self-signed
certificate instead, so the real signature, expiry, issuer and audience checks run offline. A
local certificate server with Cache-Control (and a fetch counter) shows the certificates are
fetched once per cache lifetime, not once per delivery.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from flask import Request
from google.auth import crypt, transport
from google.auth import jwt as google_jwt
from werkzeug.test import EnvironBuilder

from shared.errors import ConfigurationError, Forbidden, Unauthenticated, UpstreamUnavailable
from shared.google_certs import CachingTransport, freshness_seconds
from shared.tasks import GOOGLE_OAUTH2_CERTS_URL, OidcTaskVerifier

SERVICE_ACCOUNT = "epox-tasks@epox-prod.iam.gserviceaccount.com"
BASE = "https://europe-west1-epox-prod.cloudfunctions.net"
KID = "test-kid-1"


def _key_and_cert() -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-google-certs")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM)


KEY, CERT = _key_and_cert()
OTHER_KEY, _ = _key_and_cert()


class _Response(transport.Response):
    def __init__(self, body: bytes) -> None:
        self._body = body

    @property
    def status(self) -> int:
        return 200

    @property
    def headers(self) -> dict[str, str]:
        return {"content-type": "application/json"}

    @property
    def data(self) -> bytes:
        return self._body


class CertsTransport(transport.Request):
    """Serves our certificate where google-auth looks for Google's."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def __call__(
        self, url: str, method: str = "GET", body: Any = None, headers: Any = None, timeout: Any = None, **kwargs: Any
    ) -> transport.Response:
        self.urls.append(url)
        return _Response(json.dumps({KID: CERT.decode()}).encode())


def _token(key: rsa.RSAPrivateKey = KEY, **overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": "https://accounts.google.com",
        "aud": f"{BASE}/catalog_tasks",
        "email": SERVICE_ACCOUNT,
        "email_verified": True,
        "sub": "1234567890",
        "iat": now,
        "exp": now + 600,
        **overrides,
    }
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    signer = crypt.RSASigner.from_string(pem, key_id=KID)
    return google_jwt.encode(signer, claims).decode()


def _request(token: str | None, *, task_headers: bool = True) -> Request:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if task_headers:
        headers |= {
            "X-CloudTasks-QueueName": "epox-default",
            "X-CloudTasks-TaskName": "t1",
            "X-CloudTasks-TaskRetryCount": "1",
        }
    return Request(EnvironBuilder(path="/tasks/import-chunk", method="POST", headers=headers).get_environ())


@pytest.fixture
def verifier() -> OidcTaskVerifier:
    v = OidcTaskVerifier.for_function(SERVICE_ACCOUNT, BASE + "/", "catalog_tasks")
    v._transport = CertsTransport()
    return v


def test_a_google_signed_token_for_our_service_account_is_accepted(verifier: OidcTaskVerifier) -> None:
    call = verifier.verify(_request(_token()))
    assert (call.queue, call.name, call.retry_count) == ("epox-default", "t1", 1)
    assert verifier._transport.urls == [GOOGLE_OAUTH2_CERTS_URL]


def test_scheduler_calls_need_the_token_but_no_queue_headers(verifier: OidcTaskVerifier) -> None:
    verifier.authenticate(_request(_token(), task_headers=False))
    with pytest.raises(Forbidden):
        verifier.verify(_request(_token(), task_headers=False))


def test_a_token_minted_for_another_of_our_functions_is_refused(verifier: OidcTaskVerifier) -> None:
    with pytest.raises(Unauthenticated):
        verifier.authenticate(_request(_token(aud=f"{BASE}/credits_jobs"), task_headers=False))
    with pytest.raises(Unauthenticated):
        verifier.authenticate(_request(_token(aud=f"{BASE}/catalog_tasks/extra"), task_headers=False))


def test_oidc_mode_without_the_function_target_refuses_to_start() -> None:
    with pytest.raises(ConfigurationError, match="FUNCTION_TARGET"):
        OidcTaskVerifier.for_function(SERVICE_ACCOUNT, BASE, "")


@pytest.mark.parametrize(
    ("token", "error"),
    [
        (lambda: _token(key=OTHER_KEY), Unauthenticated),  # forged: not signed by the served cert
        (lambda: _token(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200), Unauthenticated),
        (lambda: _token(iss="https://evil.example"), Unauthenticated),
        (lambda: _token(aud="https://other-project.cloudfunctions.net/x"), Unauthenticated),
        (lambda: _token(email="someone@else.iam.gserviceaccount.com"), Forbidden),
        (lambda: _token(email_verified=False), Forbidden),
        (lambda: "not-a-jwt", Unauthenticated),
    ],
    ids=["forged", "expired", "wrong-issuer", "wrong-audience", "wrong-account", "unverified-email", "garbage"],
)
def test_anything_else_is_refused(verifier: OidcTaskVerifier, token: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        verifier.verify(_request(token()))


def test_no_bearer_token_is_refused(verifier: OidcTaskVerifier) -> None:
    with pytest.raises(Unauthenticated):
        verifier.verify(_request(None))


# -- Google's certificates, cached as long as Cache-Control allows -----------------------------------


class CertServer:
    """A stand-in for https://www.googleapis.com/oauth2/v1/certs that counts its fetches."""

    def __init__(self) -> None:
        self.hits = 0
        self.status = 200
        self.cache_control = "public, max-age=600, must-revalidate, no-transform"
        self.age: str | None = None
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                state.hits += 1
                body = json.dumps({KID: CERT.decode()}).encode() if state.status == 200 else b"{}"
                self.send_response(state.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if state.cache_control:
                    self.send_header("Cache-Control", state.cache_control)
                if state.age is not None:
                    self.send_header("Age", state.age)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/oauth2/v1/certs"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def certs() -> Iterator[CertServer]:
    server = CertServer()
    thread = threading.Thread(target=server.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


def _cached_verifier(certs: CertServer, clock: Clock) -> OidcTaskVerifier:
    """The production verifier (real requests transport, real cache) pointed at the local server."""
    from google.auth.transport.requests import Request as RequestsTransport

    verifier = OidcTaskVerifier.for_function(SERVICE_ACCOUNT, BASE, "catalog_tasks")
    verifier.certs_url = certs.url
    verifier._transport = CachingTransport(RequestsTransport(), clock=clock)
    return verifier


def test_a_thousand_deliveries_fetch_the_certificates_once_per_cache_lifetime(certs: CertServer) -> None:
    clock = Clock()
    verifier = _cached_verifier(certs, clock)
    tokens = [_token(sub=str(n)) for n in range(10)]
    for n in range(1000):
        verifier.verify(_request(tokens[n % len(tokens)]))
    assert certs.hits == 1
    clock.now += 599  # still fresh
    verifier.verify(_request(tokens[0]))
    assert certs.hits == 1
    clock.now += 2  # max-age=600 has run out: one fetch for the next lifetime
    for n in range(1000):
        verifier.verify(_request(tokens[n % len(tokens)]))
    assert certs.hits == 2
    print(f"\n2,000 task verifications over two certificate lifetimes: {certs.hits} certificate fetches")


def test_the_age_header_shortens_the_lifetime_and_no_store_is_not_kept(certs: CertServer) -> None:
    clock = Clock()
    verifier = _cached_verifier(certs, clock)
    certs.age = "590"  # a shared cache already held it for 590 of its 600 seconds
    verifier.verify(_request(_token()))
    clock.now += 11
    verifier.verify(_request(_token()))
    assert certs.hits == 2
    certs.age, certs.cache_control = None, "no-store"
    clock.now += 1000
    for _ in range(3):
        verifier.verify(_request(_token()))
    assert certs.hits == 5
    assert freshness_seconds({"cache-control": "public, max-age=100"}) == 100
    assert freshness_seconds({"Cache-Control": "max-age=100, no-cache"}) == 0
    assert freshness_seconds({"Cache-Control": "public", "Age": "3"}) == 0
    assert freshness_seconds({"Cache-Control": "max-age=10", "Age": "30"}) == 0


def test_cached_certificates_still_refuse_every_bad_token(certs: CertServer) -> None:
    clock = Clock()
    verifier = _cached_verifier(certs, clock)
    verifier.verify(_request(_token()))
    now = int(time.time())
    refused: list[tuple[str, type[Exception]]] = [
        (_token(exp=now - 3600, iat=now - 7200), Unauthenticated),  # expired
        (_token(aud=f"{BASE}/credits_jobs"), Unauthenticated),  # another of our functions
        (_token(aud="https://other-project.cloudfunctions.net/x"), Unauthenticated),
        (_token(iss="https://evil.example"), Unauthenticated),
        (_token(key=OTHER_KEY), Unauthenticated),  # not signed by Google's key
        (_token(email="someone@else.iam.gserviceaccount.com"), Forbidden),  # wrong account
        (_token(email_verified=False), Forbidden),
        (_token(email_verified="true"), Forbidden),  # only a real boolean counts
    ]
    for token, error in refused:
        with pytest.raises(error):
            verifier.verify(_request(token))
    assert certs.hits == 1


def test_an_unreachable_certificate_endpoint_serves_the_last_answer_for_a_while_then_503(certs: CertServer) -> None:
    clock = Clock()
    verifier = _cached_verifier(certs, clock)
    verifier.verify(_request(_token()))
    certs.status = 503
    clock.now += 601 + 1800  # expired, within the hour of grace
    verifier.verify(_request(_token()))
    assert certs.hits == 2
    clock.now += 1800  # past the grace: no certificates to verify with
    with pytest.raises(UpstreamUnavailable):
        verifier.verify(_request(_token()))


def test_no_certificates_at_all_is_503_not_401(certs: CertServer) -> None:
    clock = Clock()
    verifier = _cached_verifier(certs, clock)
    certs.server.shutdown()
    certs.server.server_close()
    with pytest.raises(UpstreamUnavailable):
        verifier.verify(_request(_token()))
