"""A google-auth transport that keeps Google's public certificates for as long as Google says.

``google.oauth2.id_token.verify_token`` fetches the certificate endpoint through the transport it
is given on every call. Wrapped in :class:`CachingTransport`, every worker delivery after the first
is answered from memory until the response's ``Cache-Control: max-age`` (minus its ``Age``) runs
out, so verifying a Cloud Tasks or Cloud Scheduler token costs no network call on the hot path.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from google.auth import exceptions, transport

from shared import logging as log

logger = log.get_logger("epox.tasks")

_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d{1,10})\"?\s*(?:,|$)", re.IGNORECASE)
_NO_STORE = re.compile(r"(?:^|,)\s*(?:no-store|no-cache)\s*(?:[=,]|$)", re.IGNORECASE)


def freshness_seconds(headers: Mapping[str, str]) -> int:
    """How long a response may be reused (RFC 9111): ``max-age`` minus ``Age``; 0 when the
    response says ``no-store``/``no-cache`` or gives no ``max-age`` (then it is not kept)."""
    lowered = {str(name).lower(): str(value) for name, value in headers.items()}
    control = lowered.get("cache-control", "")
    if _NO_STORE.search(control):
        return 0
    match = _MAX_AGE.search(control)
    if match is None:
        return 0
    age = lowered.get("age", "0").strip()
    return max(0, int(match.group(1)) - (int(age) if age.isdigit() else 0))


class _StoredResponse(transport.Response):
    """A response kept in memory (its body read once)."""

    def __init__(self, status: int, headers: Mapping[str, str], data: bytes) -> None:
        self._status = status
        self._headers = dict(headers)
        self._data = data

    @property
    def status(self) -> int:
        return self._status

    @property
    def headers(self) -> dict[str, str]:
        return self._headers

    @property
    def data(self) -> bytes:
        return self._data


@dataclass
class _Entry:
    response: _StoredResponse
    fresh_until: float


class CachingTransport(transport.Request):
    """Answers GETs from memory while the cached answer is fresh; everything else goes through.

    - One fetch at a time per process (a lock), so a cold instance under load fetches once.
    - When a refresh fails (no connection, a non-200 answer) the stale answer is served for up to
      ``stale_if_error_seconds`` more: Google publishes new keys well before it signs with them and
      keeps old ones for days, so a short outage of the certificate endpoint fails no delivery.
    - Each fetch is bounded by ``timeout`` seconds (google-auth passes none).
    """

    def __init__(
        self,
        inner: transport.Request,
        *,
        timeout: float = 5.0,
        stale_if_error_seconds: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self._timeout = timeout
        self._stale_if_error = stale_if_error_seconds
        self._clock = clock
        self._cache: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: Any = None,
        headers: Any = None,
        timeout: Any = None,
        **kwargs: Any,
    ) -> transport.Response:
        if method.upper() != "GET" or body is not None:
            passed: transport.Response = self._inner(
                url, method=method, body=body, headers=headers, timeout=timeout, **kwargs
            )
            return passed
        with self._lock:
            entry = self._cache.get(url)
            if entry is not None and self._clock() < entry.fresh_until:
                return entry.response
            try:
                response: transport.Response = self._inner(
                    url, method="GET", headers=headers, timeout=timeout or self._timeout, **kwargs
                )
            except exceptions.TransportError as exc:
                stale = self._stale(entry)
                if stale is None:
                    raise
                logger.warning("certificate refresh failed (%s); serving the cached answer: %s", exc, url)
                return stale
            if response.status != 200:
                stale = self._stale(entry)
                if stale is None:
                    return response
                logger.warning("certificate refresh answered %s; serving the cached answer: %s", response.status, url)
                return stale
            stored = _StoredResponse(response.status, response.headers, response.data)
            lifetime = freshness_seconds(stored.headers)
            if lifetime > 0:
                self._cache[url] = _Entry(stored, self._clock() + lifetime)
            else:
                self._cache.pop(url, None)
            return stored

    def _stale(self, entry: _Entry | None) -> _StoredResponse | None:
        """The expired answer, while it is still within the outage grace."""
        if entry is not None and self._clock() < entry.fresh_until + self._stale_if_error:
            return entry.response
        return None
