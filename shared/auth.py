"""Verification of the frontend's Better Auth JWTs against a cached JWKS.

Signature, issuer, audience, expiry and not-before are all checked; the tenant (client) id and the
role come from configurable claims. The same code runs locally: the dev stack serves its own JWKS
and mints tokens, so there is no bypass switch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.errors import Forbidden, Unauthenticated, UpstreamUnavailable

if TYPE_CHECKING:
    from jwt import PyJWKClient

# Starts alphanumeric: it names the tenant's document, and Firestore reserves ids like "__x__".
_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user acting for one client (tenant)."""

    user_id: str
    client_id: str
    roles: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden("This endpoint needs the admin role")


def _claim(payload: dict[str, Any], path: str) -> Any:
    value: Any = payload
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


class JwtVerifier:
    """Verifies bearer tokens; one instance per process so the JWKS cache is shared."""

    def __init__(
        self,
        *,
        jwks_url: str,
        issuer: str,
        audience: str,
        algorithms: list[str],
        client_id_claim: str = "client_id",
        role_claim: str = "role",
        leeway_seconds: int = 30,
        jwks_cache_seconds: int = 600,
    ) -> None:
        self.jwks_url = jwks_url
        self.issuer = issuer
        self.audience = audience
        self.algorithms = algorithms
        self.client_id_claim = client_id_claim
        self.role_claim = role_claim
        self.leeway = leeway_seconds
        self.cache_seconds = jwks_cache_seconds
        self._jwks: PyJWKClient | None = None

    def _jwks_client(self) -> PyJWKClient:
        if self._jwks is None:
            from jwt import PyJWKClient

            self._jwks = PyJWKClient(self.jwks_url, cache_keys=True, lifespan=self.cache_seconds, timeout=5)
        return self._jwks

    def verify_authorization(self, header: str | None) -> Principal:
        """Verify an ``Authorization: Bearer …`` header value and return the principal."""
        if not header:
            raise Unauthenticated("Send Authorization: Bearer <token>", credentials_sent=False)
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("Send Authorization: Bearer <token>")
        return self.verify(token.strip())

    def verify(self, token: str) -> Principal:
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated("The token is not a valid JWT") from exc
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            raise Unauthenticated("The token's algorithm is not accepted")
        try:
            signing_key = self._jwks_client().get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            raise UpstreamUnavailable("The identity provider's keys could not be fetched") from exc
        except jwt.PyJWKClientError as exc:
            raise Unauthenticated("The token was not signed by a known key") from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated("The token is not a valid JWT") from exc
        # The header's alg must be the key's: an "RS256" token naming an Ed25519 key would otherwise
        # reach PyJWT with the wrong key type and raise TypeError (a 500), or worse, confuse algorithms.
        if signing_key.algorithm_name != algorithm:
            raise Unauthenticated("The token's algorithm does not match its key")
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                key=signing_key.key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("The token has expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthenticated("The token is not meant for this API") from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthenticated("The token was issued by an unknown issuer") from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated("The token is not valid") from exc
        return self._principal(payload)

    def _principal(self, payload: dict[str, Any]) -> Principal:
        client_id = _claim(payload, self.client_id_claim)
        if not isinstance(client_id, str) or not _CLIENT_ID.fullmatch(client_id):
            raise Forbidden("The token carries no usable client id")
        raw_roles = _claim(payload, self.role_claim)
        if isinstance(raw_roles, str):
            roles = frozenset(part.strip() for part in raw_roles.split(",") if part.strip())
        elif isinstance(raw_roles, list):
            roles = frozenset(str(role) for role in raw_roles)
        else:
            roles = frozenset()
        subject = payload.get("sub")
        if not isinstance(subject, str) or not subject.strip():
            raise Unauthenticated("The token has no subject")
        return Principal(user_id=subject, client_id=client_id, roles=roles)
