"""Cursor pagination: ``limit`` and an opaque ``cursor`` in, ``items`` and ``next_cursor`` out."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from shared.errors import BadRequest
from shared.text import forbidden_char

T = TypeVar("T")

MAX_PAGE_SIZE = 100
# Firestore integers are signed 64-bit; a larger position fails the query itself (a 500).
_INT64_LIMIT = 2**63


class InvalidCursor(BadRequest):
    code = "invalid_cursor"
    title = "The pagination cursor is not valid"


class PageQuery(BaseModel):
    """Query parameters every list endpoint accepts; subclass to add filters."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=20, ge=1, le=MAX_PAGE_SIZE)
    cursor: str | None = Field(default=None, max_length=2048)


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


def encode_cursor(values: dict[str, Any]) -> str:
    raw = json.dumps(values, separators=(",", ":"), sort_keys=True, default=str).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> dict[str, Any]:
    """Decode a cursor made by :func:`encode_cursor`; anything else is a 400 ``invalid_cursor``."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidCursor() from exc
    if not isinstance(value, dict):
        raise InvalidCursor()
    return value


def cursor_datetime(values: Mapping[str, Any], key: str) -> datetime:
    """The instant under ``key`` of a decoded cursor, in UTC; anything else is a 400 ``invalid_cursor``.

    Converted here, inside the check: an offset can carry year 1 or 9999 past the calendar
    (``0001-01-01T00:00:00+05:00``), which parses but fails when Firestore converts it to UTC.
    A time without an offset is read as UTC, as every cursor we write carries one.
    """
    raw = values.get(key)
    if not isinstance(raw, str):
        raise InvalidCursor()
    try:
        parsed = datetime.fromisoformat(raw)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidCursor() from exc


def cursor_int(values: Mapping[str, Any], key: str) -> int:
    """The position under ``key`` of a decoded cursor: an integer Firestore can compare (0 <= v < 2**63)."""
    raw = values.get(key)
    # JSON Infinity/NaN arrive as floats and true/false as bools: none of them is a position.
    if type(raw) is not int or not 0 <= raw < _INT64_LIMIT:
        raise InvalidCursor()
    return raw


def cursor_str(values: Mapping[str, Any], key: str) -> str:
    """The id under ``key`` of a decoded cursor (compared as a field value, never used as a path).

    A lone surrogate (JSON can carry ``"\\ud800"``) would fail Firestore's encoding of the query: it
    and the text rule's other characters never occur in an id we wrote."""
    raw = values.get(key)
    if not isinstance(raw, str) or not raw or forbidden_char(raw) is not None:
        raise InvalidCursor()
    return raw
