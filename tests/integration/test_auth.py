"""JWT authentication end to end: real EdDSA tokens from the dev issuer, a JWKS served over HTTP,
the verifier in ``shared.auth`` and client provisioning in Firestore on the first call."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.auth import JwtVerifier, Principal
from shared.errors import Forbidden, Unauthenticated
from tests.conftest import AUDIENCE, ISSUER, _JwksHandler


def claims_for(tenant: str, /, **overrides: Any) -> dict[str, Any]:
    """Valid claims for ``tenant``; an override of None removes the claim."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": f"user-{tenant}",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "client_id": tenant,
        "role": "user",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def sign(issuer: Any, claims: dict[str, Any], *, kid: str | None = None, key: Any = None) -> str:
    return jwt.encode(claims, key or issuer.key, algorithm="EdDSA", headers={"kid": kid or issuer.kid})


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def hmac_token(issuer: Any, claims: dict[str, Any], alg: str) -> str:
    """The classic confusion attack: an HMAC token keyed with the server's public key bytes."""
    public = issuer.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    header = _b64(json.dumps({"alg": alg, "kid": issuer.kid, "typ": "JWT"}).encode())
    payload = _b64(json.dumps(claims).encode())
    signature = hmac.new(public, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


def unsigned_token(issuer: Any, claims: dict[str, Any]) -> str:
    header = _b64(json.dumps({"alg": "none", "kid": issuer.kid, "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}."


def call(stack: Any, authorization: str | None) -> Any:
    headers = {} if authorization is None else {"Authorization": authorization}
    return stack.client("catalog_api").get("/products", headers=headers)


def assert_401(response: Any) -> None:
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    assert response.json["code"] == "unauthenticated"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def assert_403(response: Any) -> None:
    assert response.status_code == 403, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    assert response.json["code"] == "forbidden"


def client_doc(stack: Any, client_id: str) -> Any:
    return stack.platform.db.collection("clients").document(client_id).get()


# -- the Authorization header -------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer   ", "Basic dXNlcjpwYXNz", "Token abc", "Bearer garbage", "Bearer a.b.c"],
)
def test_missing_or_malformed_authorization_is_401(stack: Any, authorization: str | None) -> None:
    assert_401(call(stack, authorization))


def test_a_valid_token_is_accepted_with_any_scheme_case(stack: Any, client_id: str) -> None:
    token = stack.issuer.mint(client_id)
    assert call(stack, f"Bearer {token}").status_code == 200
    assert call(stack, f"bearer {token}").status_code == 200


def test_a_rejected_token_provisions_nothing(stack: Any, client_id: str) -> None:
    assert_401(call(stack, f"Bearer {stack.issuer.mint(client_id, audience='https://other.test')}"))
    assert not client_doc(stack, client_id).exists


# -- signature, key and algorithm ---------------------------------------------------------------


def test_token_signed_by_another_key_with_the_same_kid_is_401(stack: Any, client_id: str) -> None:
    forged = stack.issuer.mint(client_id, key=Ed25519PrivateKey.generate())
    assert jwt.get_unverified_header(forged)["kid"] == stack.issuer.kid
    assert_401(call(stack, f"Bearer {forged}"))


def test_tampered_payload_is_401(stack: Any, client_id: str, other_client_id: str) -> None:
    header, _, signature = stack.issuer.mint(client_id).split(".")
    payload = _b64(json.dumps(claims_for(other_client_id)).encode())
    assert_401(call(stack, f"Bearer {header}.{payload}.{signature}"))


def test_unknown_kid_is_401(stack: Any, client_id: str) -> None:
    token = sign(stack.issuer, claims_for(client_id), kid="no-such-kid")
    assert_401(call(stack, f"Bearer {token}"))


def test_token_without_kid_is_401(stack: Any, client_id: str) -> None:
    token = jwt.encode(claims_for(client_id), stack.issuer.key, algorithm="EdDSA")
    assert_401(call(stack, f"Bearer {token}"))


def test_alg_none_is_401(stack: Any, client_id: str) -> None:
    assert_401(call(stack, f"Bearer {unsigned_token(stack.issuer, claims_for(client_id))}"))


def test_hs256_signed_with_the_public_key_is_401(stack: Any, client_id: str) -> None:
    assert_401(call(stack, f"Bearer {hmac_token(stack.issuer, claims_for(client_id), 'HS256')}"))


def test_accepted_algorithm_that_does_not_match_the_key_is_401(stack: Any, client_id: str) -> None:
    """RS256 is an accepted algorithm, but the kid names an Ed25519 key: 401, never a 500."""
    assert "RS256" in stack.platform.settings.auth_algorithms
    assert_401(call(stack, f"Bearer {hmac_token(stack.issuer, claims_for(client_id), 'RS256')}"))


# -- claims -------------------------------------------------------------------------------------


def test_expired_token_is_401(stack: Any, client_id: str) -> None:
    token = stack.issuer.mint(client_id, now=time.time() - 7200, ttl=60)
    response = call(stack, f"Bearer {token}")
    assert_401(response)
    assert "expired" in response.json["detail"]


def test_token_expired_within_the_leeway_is_accepted(stack: Any, client_id: str) -> None:
    leeway = stack.platform.settings.auth_leeway_seconds
    token = sign(stack.issuer, claims_for(client_id, exp=int(time.time()) - leeway // 2))
    assert call(stack, f"Bearer {token}").status_code == 200


def test_wrong_audience_is_401(stack: Any, client_id: str) -> None:
    assert_401(call(stack, f"Bearer {stack.issuer.mint(client_id, audience='https://other-api.test')}"))


def test_wrong_issuer_is_401(stack: Any, client_id: str) -> None:
    assert_401(call(stack, f"Bearer {stack.issuer.mint(client_id, issuer='https://evil.test')}"))


def test_not_yet_valid_token_is_401(stack: Any, client_id: str) -> None:
    leeway = stack.platform.settings.auth_leeway_seconds
    token = sign(stack.issuer, claims_for(client_id, nbf=int(time.time()) + leeway + 120))
    assert_401(call(stack, f"Bearer {token}"))


def test_nbf_within_the_leeway_is_accepted(stack: Any, client_id: str) -> None:
    leeway = stack.platform.settings.auth_leeway_seconds
    token = sign(stack.issuer, claims_for(client_id, nbf=int(time.time()) + leeway // 2))
    assert call(stack, f"Bearer {token}").status_code == 200


@pytest.mark.parametrize("missing", ["exp", "iat", "iss", "aud", "sub"])
def test_a_required_claim_missing_is_401(stack: Any, client_id: str, missing: str) -> None:
    claims = claims_for(client_id)
    del claims[missing]
    assert_401(call(stack, f"Bearer {sign(stack.issuer, claims)}"))


def test_token_without_client_id_is_403(stack: Any, client_id: str) -> None:
    token = sign(stack.issuer, claims_for(client_id, client_id=None))
    assert_403(call(stack, f"Bearer {token}"))


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "a b", "x" * 129, 42, ["c1"], {"id": "c1"}])
def test_unusable_client_id_is_403_and_provisions_nothing(stack: Any, bad: Any) -> None:
    token = sign(stack.issuer, claims_for("placeholder", client_id=bad))
    assert_403(call(stack, f"Bearer {token}"))
    if isinstance(bad, str) and bad:
        assert not client_doc(stack, bad.replace("/", "_")).exists


# -- roles --------------------------------------------------------------------------------------


@pytest.fixture
def verifier(jwks_url: str) -> JwtVerifier:
    return JwtVerifier(jwks_url=jwks_url, issuer=ISSUER, audience=AUDIENCE, algorithms=["EdDSA"])


@pytest.mark.parametrize(
    "claims",
    [
        {"role": "user"},
        {"role": "admin"},  # a tenant's admin: admin of their own organisation only
        {"role": ["user", "admin"]},
        {"role": "user,admin"},
        {"role": "platform_admin"},  # role names never reach beyond the tenant, whatever they say
        {"epox_platform_admin": "true"},  # only a JSON true counts
        {"epox_platform_admin": 1},
        {"epox_platform_admin": [True]},
        {"epox_platform_admin": {"enabled": True}},
        {"epox_platform_admin": False},
        {"epox_platform_admin": None},
    ],
)
def test_only_the_platform_admin_claim_makes_a_platform_admin(
    verifier: JwtVerifier, issuer: Any, claims: dict[str, Any]
) -> None:
    principal = verifier.verify(sign(issuer, claims_for("c-role", **claims)))
    assert not principal.platform_admin
    with pytest.raises(Forbidden):
        principal.require_platform_admin()


@pytest.mark.parametrize("role", ["user", "admin", None])
def test_the_platform_admin_claim_true_makes_a_platform_admin(verifier: JwtVerifier, issuer: Any, role: Any) -> None:
    principal = verifier.verify(sign(issuer, claims_for("ops", role=role, epox_platform_admin=True)))
    assert principal.platform_admin
    principal.require_platform_admin()


def test_verify_returns_the_principal(verifier: JwtVerifier, issuer: Any) -> None:
    principal = verifier.verify(issuer.mint("c-123", user_id="u-9", role="admin"))
    assert principal == Principal(user_id="u-9", client_id="c-123", roles=frozenset({"admin"}), platform_admin=False)
    operator = verifier.verify(issuer.mint("ops", user_id="u-1", role="user", platform_admin=True))
    assert operator == Principal(user_id="u-1", client_id="ops", roles=frozenset({"user"}), platform_admin=True)


def test_verifier_raises_unauthenticated_for_a_forged_token(verifier: JwtVerifier, issuer: Any) -> None:
    with pytest.raises(Unauthenticated):
        verifier.verify(issuer.mint("c-123", key=Ed25519PrivateKey.generate()))


def test_custom_claim_paths(jwks_url: str, issuer: Any) -> None:
    nested = JwtVerifier(
        jwks_url=jwks_url,
        issuer=ISSUER,
        audience=AUDIENCE,
        algorithms=["EdDSA"],
        client_id_claim="org.id",
        role_claim="org.roles",
    )
    token = sign(issuer, claims_for("ignored", client_id=None, role=None, org={"id": "c-org", "roles": ["admin"]}))
    principal = nested.verify(token)
    assert principal.client_id == "c-org"
    assert principal.roles == {"admin"}
    assert not principal.platform_admin  # an organisation's admin is not the platform's


def test_the_platform_admin_claim_path_is_configurable(jwks_url: str, issuer: Any) -> None:
    nested = JwtVerifier(
        jwks_url=jwks_url,
        issuer=ISSUER,
        audience=AUDIENCE,
        algorithms=["EdDSA"],
        platform_admin_claim="app_metadata.epox_platform_admin",
    )
    operator = sign(issuer, claims_for("ops", app_metadata={"epox_platform_admin": True}))
    assert nested.verify(operator).platform_admin
    top_level = sign(issuer, claims_for("ops", epox_platform_admin=True))  # not the configured path
    assert not nested.verify(top_level).platform_admin
    nobody = JwtVerifier(
        jwks_url=jwks_url, issuer=ISSUER, audience=AUDIENCE, algorithms=["EdDSA"], platform_admin_claim=""
    )
    assert not nobody.verify(top_level).platform_admin


# -- admin routes: platform operators only --------------------------------------------------------

ADMIN_ROUTES = [
    ("get", "/admin/clients?prefix=c", None),
    ("get", "/admin/clients/{client}/balance", None),
    ("get", "/admin/clients/{client}/history", None),
    ("post", "/admin/clients/{client}/grants", {"amount": 5, "reason": "escalation"}),
    ("post", "/admin/clients/{client}/adjustments", {"amount": 5, "reason": "escalation"}),
    ("put", "/admin/prices", {"prices": {}}),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
def test_an_organisation_admin_token_gets_403_on_admin_routes(
    stack: Any, client_id: str, other_client_id: str, method: str, path: str, body: Any
) -> None:
    """An org owner can make any member an org `admin` in the identity provider: that role (in
    `role` or as `org.roles`) must not act on other tenants, or change everyone's prices."""
    api = stack.client("credits_api")
    tenant_admins = [
        stack.headers(client_id, role="admin", platform_admin=False),
        {"Authorization": f"Bearer {sign(stack.issuer, claims_for(client_id, role=['admin', 'owner']))}"},
        {"Authorization": f"Bearer {sign(stack.issuer, claims_for(client_id, epox_platform_admin='true'))}"},
    ]
    for headers in tenant_admins:
        response = getattr(api, method)(
            path.format(client=other_client_id), json=body, headers={**headers, "Idempotency-Key": "k-" + client_id}
        )
        assert_403(response)
    assert not client_doc(stack, other_client_id).exists  # nothing was granted to (or provisioned for) it


def test_a_platform_admin_token_reaches_admin_routes(stack: Any, client_id: str, other_client_id: str) -> None:
    assert call(stack, f"Bearer {stack.issuer.mint(other_client_id)}").status_code == 200  # the tenant exists
    api = stack.client("credits_api")
    path = f"/admin/clients/{other_client_id}/balance"
    operator = stack.headers("ops-" + client_id, role="user", platform_admin=True)
    response = api.get(path, headers=operator)
    assert response.status_code == 200, response.get_data(as_text=True)
    # The dev issuer and the test stack mint the claim for role "admin", as `make dev` does.
    assert api.get(path, headers=stack.headers(client_id, role="admin")).status_code == 200


# -- JWKS caching -------------------------------------------------------------------------------


def test_jwks_is_fetched_once_for_many_requests(stack: Any, client_id: str, other_client_id: str) -> None:
    before = _JwksHandler.hits
    for index in range(12):
        tenant = client_id if index % 2 else other_client_id
        response = call(stack, f"Bearer {stack.issuer.mint(tenant, user_id=f'u-{index}')}")
        assert response.status_code == 200
    fetched = _JwksHandler.hits - before
    assert 1 <= fetched <= 2


def test_unknown_kids_do_not_hammer_the_jwks_endpoint(stack: Any, client_id: str) -> None:
    assert call(stack, f"Bearer {stack.issuer.mint(client_id)}").status_code == 200
    before = _JwksHandler.hits
    for index in range(10):
        assert_401(call(stack, f"Bearer {sign(stack.issuer, claims_for(client_id), kid=f'rotated-{index}')}"))
    assert _JwksHandler.hits - before <= 1


# -- client provisioning ------------------------------------------------------------------------


def test_first_call_provisions_the_client(stack: Any, client_id: str) -> None:
    from shared.platform import Platform, set_platform

    assert not client_doc(stack, client_id).exists
    token = stack.issuer.mint(client_id, user_id="user-first")
    assert call(stack, f"Bearer {token}").status_code == 200
    first = client_doc(stack, client_id)
    assert first.exists
    record = first.to_dict()
    assert record["id"] == client_id
    assert record["plan"] == "free"
    assert record["status"] == "active"
    assert record["created_by"] == "user-first"
    assert record["created_at"] is not None

    # A later call from another user, in a fresh process (no per-process cache), changes nothing.
    fresh = Platform(stack.platform.settings, db=stack.platform.db, object_store=stack.platform.object_store)
    set_platform(fresh)
    assert call(stack, f"Bearer {stack.issuer.mint(client_id, user_id='user-second')}").status_code == 200
    second = client_doc(stack, client_id)
    assert second.to_dict()["created_at"] == record["created_at"]
    assert second.to_dict()["created_by"] == "user-first"
    assert second.update_time == first.update_time


def test_each_client_is_provisioned_separately(stack: Any, client_id: str, other_client_id: str) -> None:
    assert call(stack, f"Bearer {stack.issuer.mint(client_id)}").status_code == 200
    assert not client_doc(stack, other_client_id).exists
    assert call(stack, f"Bearer {stack.issuer.mint(other_client_id)}").status_code == 200
    assert client_doc(stack, other_client_id).to_dict()["created_by"] == f"user-{other_client_id}"
