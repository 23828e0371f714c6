"""Verification of the frontend's Better Auth JWTs against a cached JWKS.

Signature, issuer, audience, expiry and not-before are all checked; the tenant (client) id and the
tenant roles come from configurable claims. Platform administration (the ``/admin/*`` routes, which
act on every tenant) comes from one separate boolean claim that only operators can set in the
identity provider; a tenant role never grants it. The same code runs locally: the dev stack serves
its own JWKS and mints tokens, so there is no bypass switch.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared import logging as log
from shared.errors import Forbidden, Unauthenticated, UpstreamUnavailable

if TYPE_CHECKING:
    from jwt import PyJWK

logger = log.get_logger("epox.auth")

# Starts alphanumeric: it names the tenant's document, and Firestore reserves ids like "__x__".
_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user acting for one client (tenant)."""

    user_id: str
    client_id: str
    roles: frozenset[str]  # roles inside the tenant; none of them reaches beyond it
    platform_admin: bool = False  # the operator claim (AUTH_PLATFORM_ADMIN_CLAIM) is boolean true
    email: str | None = None  # the token's ``email`` claim when it looks like an address (the client's contact)

    def require_platform_admin(self) -> None:
        """Refuse anyone but an operator: these routes act on every tenant."""
        if not self.platform_admin:
            raise Forbidden("This endpoint is for platform administrators")


# An address worth mailing (the identity provider verified it); anything else is ignored, never refused.
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,189}\.[^@\s]{1,60}")


def _claim(payload: dict[str, Any], path: str) -> Any:
    value: Any = payload
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


class JwksUnavailable(Exception):
    """The key set could not be fetched (or was unusable) and no recent good set is at hand."""


class JwksCache:
    """The identity provider's signing keys, shared by every request of the process.

    - The whole set is refetched once it is ``lifespan`` seconds old, so a key removed from the
      JWKS stops verifying within that time (no per-key cache outlives the set).
    - A token naming an unknown ``kid`` triggers a refetch (a key rotation), but fetches of any kind
      start at most once per ``refresh_min_seconds``: a flood of forged ``kid``s costs one fetch per
      interval, and a genuinely new key is picked up within it.
    - When the provider cannot be reached (or serves no usable key), the last good set keeps
      verifying for ``outage_grace_seconds`` past its lifetime; after that, 503. Failed fetches are
      throttled like successful ones, so an outage costs one attempt per interval, not one per
      request.
    - One fetch at a time: other requests use the set at hand meanwhile, or wait for the fetch
      when they cannot be answered without it.
    """

    def __init__(
        self,
        fetch: Callable[[], Any],
        *,
        lifespan: float,
        refresh_min_seconds: float,
        outage_grace_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self.lifespan = lifespan
        # A throttle longer than the lifetime would keep an expired set (and a removed key) alive.
        self.refresh_min_seconds = min(refresh_min_seconds, lifespan)
        self.outage_grace_seconds = outage_grace_seconds
        self._clock = clock
        self._keys: dict[str, PyJWK] | None = None
        self._fetched_at = 0.0
        self._attempted_at: float | None = None
        self._fetching = False
        self._last_error = ""
        self._changed = threading.Condition()
        self.fetches = 0  # fetch attempts made (successful or not): the cost the throttle bounds

    def signing_key(self, kid: str) -> PyJWK | None:
        """The key named ``kid``, or None when the provider does not (or no longer) publish it.

        Raises :class:`JwksUnavailable` when no usable key set can be had.
        """
        may_fetch_here = True  # one fetch per call at most: the one it made or waited for answers it
        while True:
            with self._changed:
                now = self._clock()
                keys = self._keys
                fresh = keys is not None and now < self._fetched_at + self.lifespan
                usable = keys is not None and now < self._fetched_at + self.lifespan + self.outage_grace_seconds
                known = keys is not None and kid in keys
                throttled = self._attempted_at is not None and now - self._attempted_at < self.refresh_min_seconds
                if (not fresh or not known) and may_fetch_here and not self._fetching and not throttled:
                    self._fetching = True
                    self._attempted_at = now
                    self.fetches += 1
                elif usable and keys is not None and known:
                    return keys[kid]
                elif self._fetching:  # the answer depends on the fetch in flight
                    may_fetch_here = False
                    self._changed.wait(timeout=1.0)
                    continue
                elif not usable:
                    raise JwksUnavailable(self._last_error or "no key set has been fetched yet")
                else:
                    return None
            may_fetch_here = False
            self._refresh()

    def _refresh(self) -> None:
        """Fetch and parse the set outside the lock; keep the last good set if that fails."""
        import jwt

        keys: dict[str, PyJWK] | None = None
        error = ""
        try:
            parsed = jwt.PyJWKSet.from_dict(self._fetch())
            keys = {k.key_id: k for k in parsed.keys if isinstance(k.key_id, str) and k.public_key_use in ("sig", None)}
            if not keys:
                error = "the key set has no signing key with a kid"
        # Anything the provider answers (no connection, not JSON, no usable key) is a failed refresh,
        # never a 500 for the request that happened to trigger it.
        except Exception as exc:
            error = str(exc) or type(exc).__name__
        finally:
            with self._changed:
                if keys and not error:
                    self._keys = keys
                    self._fetched_at = self._clock()
                self._last_error = error
                self._fetching = False
                self._changed.notify_all()
        if error:
            logger.warning("the identity provider's key set could not be refreshed: %s", error)


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
        platform_admin_claim: str = "epox_platform_admin",
        leeway_seconds: int = 30,
        jwks_cache_seconds: float = 600,
        jwks_refresh_min_seconds: float = 30,
        jwks_outage_grace_seconds: float = 3600,
        jwks_fetch: Callable[[], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``jwks_fetch`` returns the parsed JWKS document; the default GETs ``jwks_url``."""
        self.jwks_url = jwks_url
        self.issuer = issuer
        self.audience = audience
        self.algorithms = algorithms
        self.client_id_claim = client_id_claim
        self.role_claim = role_claim
        self.platform_admin_claim = platform_admin_claim
        self.leeway = leeway_seconds
        self.cache_seconds = jwks_cache_seconds
        self.refresh_min_seconds = jwks_refresh_min_seconds
        self.outage_grace_seconds = jwks_outage_grace_seconds
        self._jwks_fetch = jwks_fetch
        self._clock = clock
        self._jwks: JwksCache | None = None
        self._jwks_lock = threading.Lock()

    @property
    def jwks(self) -> JwksCache:
        """The process's key set cache (built on first use: no I/O at import or construction)."""
        with self._jwks_lock:
            if self._jwks is None:
                fetch = self._jwks_fetch
                if fetch is None:
                    from jwt import PyJWKClient

                    # PyJWKClient only fetches here (no redirects, http(s) only, a timeout); the caching
                    # is JwksCache's, because PyJWKClient's per-kid cache never expires a removed key.
                    fetch = PyJWKClient(self.jwks_url, cache_jwk_set=False, timeout=5).fetch_data
                self._jwks = JwksCache(
                    fetch,
                    lifespan=self.cache_seconds,
                    refresh_min_seconds=self.refresh_min_seconds,
                    outage_grace_seconds=self.outage_grace_seconds,
                    clock=self._clock,
                )
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
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("The token was not signed by a known key")
        try:
            signing_key = self.jwks.signing_key(kid)
        except JwksUnavailable as exc:
            raise UpstreamUnavailable("The identity provider's keys could not be fetched") from exc
        if signing_key is None:
            raise Unauthenticated("The token was not signed by a known key")
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
        # Only a JSON true counts: not "true", not 1, not a role name, and never the tenant role claim.
        platform_admin = bool(self.platform_admin_claim) and _claim(payload, self.platform_admin_claim) is True
        email = payload.get("email")
        contact = email.strip() if isinstance(email, str) and _EMAIL.fullmatch(email.strip()) else None
        return Principal(
            user_id=subject, client_id=client_id, roles=roles, platform_admin=platform_admin, email=contact
        )
