"""Ids every package names things with: random ones for new things, derived ones for retries."""

from __future__ import annotations

import hashlib
import secrets


def new_id(prefix: str) -> str:
    """Random, URL-safe ids such as ``prod_3kq9…`` (no ``-`` or ``_`` after the prefix)."""
    return f"{prefix}_{secrets.token_urlsafe(12).replace('-', 'a').replace('_', 'b')}"


def derived_id(prefix: str, *parts: object) -> str:
    """A stable id from its parts (an idempotency key, a job and an index…): a retry names the same thing."""
    return f"{prefix}_{hashlib.sha256('|'.join(map(str, parts)).encode()).hexdigest()[:24]}"
