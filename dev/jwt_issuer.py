"""A stand-in for the Better Auth server: an Ed25519 key, its JWKS, and token minting.

Used by the local stack and the tests so that the real JWT verification code runs everywhere.
Platform administrators get the operator claim (``epox_platform_admin: true``, the default of
AUTH_PLATFORM_ADMIN_CLAIM) the way an operator-only setting in the identity provider would add it;
the tenant ``role`` claim alone grants nothing beyond the tenant.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


@dataclass
class DevIssuer:
    issuer: str
    audience: str
    client_id_claim: str = "client_id"
    role_claim: str = "role"
    platform_admin_claim: str = "epox_platform_admin"
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    kid: str = field(default_factory=lambda: uuid.uuid4().hex[:16])

    def jwks(self) -> dict[str, Any]:
        from jwt.algorithms import OKPAlgorithm

        jwk = json.loads(OKPAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": self.kid, "alg": "EdDSA", "use": "sig"})
        return {"keys": [jwk]}

    def mint(
        self,
        client_id: str,
        *,
        user_id: str | None = None,
        role: str | None = "user",
        platform_admin: bool = False,
        ttl: int = 3600,
        audience: str | None = None,
        issuer: str | None = None,
        extra: dict[str, Any] | None = None,
        now: float | None = None,
        key: Ed25519PrivateKey | None = None,
    ) -> str:
        import jwt

        issued = int(now if now is not None else time.time())
        claims: dict[str, Any] = {
            "sub": user_id or f"user-{client_id}",
            "iss": issuer or self.issuer,
            "aud": audience or self.audience,
            "iat": issued,
            "nbf": issued,
            "exp": issued + ttl,
            self.client_id_claim: client_id,
        }
        if role is not None:
            claims[self.role_claim] = role
        if platform_admin:
            claims[self.platform_admin_claim] = True
        claims.update(extra or {})
        return jwt.encode(claims, key or self.key, algorithm="EdDSA", headers={"kid": self.kid})
