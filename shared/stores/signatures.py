"""Signatures of what Shopify and WooCommerce send us, checked on the raw input in constant time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from datetime import datetime, timedelta

SHOP_DOMAIN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9-]*\.myshopify\.com$")
# Shopify's callback carries a timestamp; older than this (or this far in the future) is a replay.
CALLBACK_MAX_AGE = timedelta(minutes=10)


def valid_shop_domain(shop: str) -> bool:
    """Whether ``shop`` is a ``{name}.myshopify.com`` domain (anchored: nothing before, nothing after)."""
    return len(shop) <= 255 and SHOP_DOMAIN.fullmatch(shop) is not None


def shopify_query_digest(params: Mapping[str, str], secret: str) -> str:
    """Hex HMAC-SHA256 of the query without ``hmac``/``signature``, sorted by key, joined ``k=v`` by ``&``."""
    message = "&".join(f"{key}={params[key]}" for key in sorted(params) if key not in ("hmac", "signature"))
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def shopify_query_is_authentic(params: Mapping[str, str], secret: str, now: datetime) -> bool:
    """The OAuth callback's ``hmac`` matches and its ``timestamp`` is recent."""
    sent = params.get("hmac", "")
    expected = shopify_query_digest(params, secret).encode()
    # Bytes, not str: compare_digest refuses non-ASCII strings, and a caller may send any.
    if not secret or not sent or not hmac.compare_digest(expected, sent.lower().encode("utf-8", "replace")):
        return False
    try:
        stamp = int(params.get("timestamp", ""))
    except ValueError:
        return False
    return abs(now.timestamp() - stamp) <= CALLBACK_MAX_AGE.total_seconds()


def body_digest(raw: bytes, secret: str) -> str:
    """Base64 HMAC-SHA256 of a raw body (Shopify's and WooCommerce's webhook signature)."""
    return base64.b64encode(hmac.new(secret.encode(), raw, hashlib.sha256).digest()).decode()


def body_is_authentic(raw: bytes, signature: str | None, secret: str) -> bool:
    """The webhook's signature header matches its raw body (constant-time)."""
    if not secret or not signature:
        return False
    return hmac.compare_digest(body_digest(raw, secret).encode(), signature.strip().encode("utf-8", "replace"))
