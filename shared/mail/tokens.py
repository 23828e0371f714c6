"""One-click unsubscribe tokens: who (client), what (a notification type), when (issued at), signed.

``base64url(payload) "." base64url(HMAC-SHA256(secret, payload))`` with payload
``v1|client|type|issued-at-unix``: no login is needed to use one, and none can be made or altered
without ``MAIL_UNSUBSCRIBE_SECRET``. A token is good for :data:`TOKEN_LIFETIME` (an old email's link
then shows the error page and points to the settings).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shared.errors import BadRequest

TOKEN_LIFETIME = timedelta(days=90)
_VERSION = "v1"
_PART = re.compile(r"^[A-Za-z0-9_-]{1,400}$")
_MAX_TOKEN = 900


class InvalidUnsubscribeToken(BadRequest):
    """Forged, altered, expired or malformed: nothing is changed."""

    code = "invalid_unsubscribe_token"
    title = "This unsubscribe link is not valid"


@dataclass(frozen=True)
class Unsubscribe:
    """What a verified token asks for."""

    client_id: str
    kind: str
    issued_at: datetime


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, payload: bytes) -> bytes:
    return hmac.new(secret.encode(), payload, hashlib.sha256).digest()


def sign(secret: str, client_id: str, kind: str, issued_at: datetime) -> str:
    """The token for unsubscribing ``client_id`` from ``kind`` email, issued at ``issued_at``."""
    if not secret:
        raise ValueError("MAIL_UNSUBSCRIBE_SECRET is empty")
    if "|" in client_id or "|" in kind:
        raise ValueError("client ids and types never hold '|'")
    payload = f"{_VERSION}|{client_id}|{kind}|{int(issued_at.timestamp())}".encode()
    return f"{_b64(payload)}.{_b64(_mac(secret, payload))}"


def verify(secret: str, token: str, now: datetime, *, lifetime: timedelta = TOKEN_LIFETIME) -> Unsubscribe:
    """The request a genuine, unexpired token carries; :class:`InvalidUnsubscribeToken` otherwise."""
    if not secret or len(token) > _MAX_TOKEN:
        raise InvalidUnsubscribeToken()
    encoded, _, signature = token.partition(".")
    if not _PART.match(encoded) or not _PART.match(signature):
        raise InvalidUnsubscribeToken()
    try:
        payload, mac = _unb64(encoded), _unb64(signature)
    except (binascii.Error, ValueError) as exc:
        raise InvalidUnsubscribeToken() from exc
    # The signature first, in constant time: nothing of an unsigned payload is looked at.
    if not hmac.compare_digest(mac, _mac(secret, payload)):
        raise InvalidUnsubscribeToken()
    try:
        version, client_id, kind, issued = payload.decode().split("|")
        issued_at = datetime.fromtimestamp(int(issued), UTC)
    except (UnicodeDecodeError, ValueError, OverflowError, OSError) as exc:
        raise InvalidUnsubscribeToken() from exc
    if version != _VERSION or not client_id or not kind:
        raise InvalidUnsubscribeToken()
    if issued_at > now + timedelta(minutes=5) or now - issued_at > lifetime:
        raise InvalidUnsubscribeToken("This unsubscribe link has expired")
    return Unsubscribe(client_id=client_id, kind=kind, issued_at=issued_at)
