"""The production worker check: a Google-signed OIDC token, verified by google-auth itself.

google-auth fetches Google's certificates through a transport; ours serves a self-signed
certificate instead, so the real signature, expiry, issuer and audience checks run offline.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
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

from shared.errors import ConfigurationError, Forbidden, Unauthenticated
from shared.tasks import OidcTaskVerifier

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
    assert any("googleapis.com" in url for url in verifier._transport.urls)


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
