"""SSRF-safe outbound HTTP fetching for user-supplied URLs (CSV image URLs, store image URLs).

The fetcher validates the URL, resolves the host once through a :class:`Resolver`, checks *every*
resolved address against an :class:`AddressPolicy` and then connects to the vetted IP itself, sending
the original name only in the ``Host`` header and as TLS SNI. Because the hostname is never resolved
a second time there is no DNS-rebinding window. Redirects are followed by hand so each hop goes
through the same checks. Every failure surfaces as one of the errors below; no httpx exception
escapes :meth:`SafeFetcher.fetch`. :meth:`SafeFetcher.request` is the same for other methods and JSON
bodies (store REST APIs): it never follows a redirect but for GET, and can hand back 4xx/5xx answers
with their status and headers for the caller to translate.

``FetchLimits.total_timeout`` is one wall-clock deadline for the whole fetch: the DNS lookup runs
under it, and the fetcher's own transport caps every connect, TLS handshake, read and write at the
time left, so a server that drips its status line or headers a byte at a time cannot outlast it.
A host that does not resolve and one that resolves to a forbidden address get the same answer, so
the error text says nothing about internal names; only the ports of ordinary web servers are used.
"""

from __future__ import annotations

import contextvars
import ipaddress
import json as _json
import math
import random
import re
import socket
import ssl
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http.cookiejar import CookieJar, DefaultCookiePolicy
from types import TracebackType
from typing import Any, ClassVar, Final, Self, TypeAlias

import httpcore
import httpx

from shared.errors import UnprocessableContent, UpstreamUnavailable

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

USER_AGENT: Final = "EpoxFetcher/1.0"
MAX_URL_LENGTH: Final = 2048

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# Ports of ordinary web servers. Any other port would let a URL probe (or talk another protocol
# to) services of third parties; addresses in ``extra_allowed_networks`` (dev, tests) may use any.
WEB_PORTS: Final = frozenset({80, 443, 8080, 8443})
# One answer for "no such host" and "resolves to an address we refuse": telling them apart would let
# a tenant map internal DNS names (on Google Cloud the resolver also answers for private zones).
_UNRESOLVABLE_OR_FORBIDDEN: Final = "The URL's host does not resolve to an address that may be fetched."
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
# Longer server-requested waits are not worth honouring in-process; cap what we report.
_MAX_RETRY_AFTER: Final = 24 * 60 * 60

# Headers the fetcher owns: letting a caller set them would break the IP pinning or the size checks.
_RESERVED_HEADERS: Final = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "accept-encoding", "te", "upgrade"}
)
# Credentials must not follow a redirect to another origin (same rule browsers and httpx apply).
_CREDENTIAL_HEADERS: Final = frozenset({"authorization", "proxy-authorization", "cookie"})

_CONTROL_OR_SPACE: Final = re.compile(r"[\x00-\x20\x7f]")
_AUTHORITY: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:(?://)?([^/?#]*)")
_HOSTNAME: Final = re.compile(
    r"(?=.{1,253}\.?$)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
    r"(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*\.?"
)
_IPV4_PART: Final = re.compile(r"0[xX][0-9a-fA-F]*|0[0-7]+|0|[1-9][0-9]*")

# Blocked whatever the ``ipaddress`` flags say: their meaning has shifted between Python releases
# (e.g. fec0::/10 and 100.64/10), so the important ranges are pinned here explicitly.
_ALWAYS_BLOCKED: Final[tuple[IPNetwork, ...]] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "64:ff9b:1::/48",
        "100::/64",
        "2001::/32",
        "2001:db8::/32",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)
_IPV4_COMPATIBLE: Final = ipaddress.IPv6Network("::/96")
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")

# "No such name" is an answer, not an outage; every other resolver failure may clear up.
_PERMANENT_GAI_ERRORS: Final = frozenset(
    e for e in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)) if e is not None
)


# --------------------------------------------------------------------------------------------------
# Errors


class UrlNotAllowed(UnprocessableContent):
    """The URL is malformed, uses a forbidden scheme or credentials, or points at a blocked address."""

    code = "url_not_allowed"
    title = "The URL may not be fetched"
    retryable: ClassVar[bool] = False


class FetchFailed(UnprocessableContent):
    """The fetch failed for a reason that retrying will not fix."""

    code = "fetch_failed"
    title = "The URL could not be fetched"
    retryable: ClassVar[bool] = False

    def __init__(self, detail: str | None = None, *, upstream_status: int | None = None, **extensions: Any) -> None:
        # Not ``status``: that name is the problem document's own status member (RFC 9457).
        if upstream_status is not None:
            extensions["upstream_status"] = upstream_status
        super().__init__(detail, **extensions)
        self.upstream_status = upstream_status


class FetchTooLarge(FetchFailed):
    """The body is larger than ``FetchLimits.max_bytes``."""

    code = "fetch_too_large"
    title = "The fetched content is too large"


class FetchBadContentType(FetchFailed):
    """The response's media type is not in ``FetchLimits.allowed_content_types``."""

    code = "fetch_bad_content_type"
    title = "The fetched content has an unexpected type"


class FetchTooManyRedirects(FetchFailed):
    """The server redirected more than ``FetchLimits.max_redirects`` times."""

    code = "fetch_too_many_redirects"
    title = "The URL redirected too many times"


class FetchTemporarilyFailed(UpstreamUnavailable):
    """A transient failure (connect error, timeout, 408/429/5xx); worth retrying later."""

    code = "fetch_temporarily_failed"
    title = "The URL could not be fetched right now"
    retryable: ClassVar[bool] = True

    def __init__(
        self,
        detail: str | None = None,
        *,
        retry_after: int | None = None,
        upstream_status: int | None = None,
        **extensions: Any,
    ) -> None:
        if upstream_status is not None:
            extensions["upstream_status"] = upstream_status
        super().__init__(detail, retry_after=5 if retry_after is None else retry_after, **extensions)
        self.retry_after = retry_after
        self.upstream_status = upstream_status


# --------------------------------------------------------------------------------------------------
# Value objects


@dataclass(frozen=True, slots=True)
class FetchLimits:
    """Per-fetch limits. ``total_timeout`` is wall-clock time across all redirects and the body."""

    max_bytes: int = 20 * 1024 * 1024
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    total_timeout: float = 30.0
    max_redirects: int = 5
    allowed_content_types: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if self.max_bytes < 0 or self.max_redirects < 0:
            raise ValueError("max_bytes and max_redirects must not be negative")
        if min(self.connect_timeout, self.read_timeout, self.total_timeout) <= 0:
            raise ValueError("timeouts must be positive")
        if self.allowed_content_types is not None:
            normalised = frozenset(_media_type(t) for t in self.allowed_content_types)
            object.__setattr__(self, "allowed_content_types", normalised)


@dataclass(frozen=True, slots=True)
class FetchedResource:
    """A fetched body. ``url`` is the final URL after redirects (without fragment); ``headers`` the
    response's headers with lower-cased names (repeated ones joined with ``", "``)."""

    url: str
    status: int
    content_type: str
    body: bytes = field(repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def media_type(self) -> str:
        """``content_type`` lower-cased and without parameters, e.g. ``image/png``."""
        return _media_type(self.content_type)

    def header(self, name: str) -> str | None:
        """The response header ``name`` (any case), or None."""
        return self.headers.get(name.lower())


# --------------------------------------------------------------------------------------------------
# Ports and policy


class Resolver(ABC):
    """Port: turns a hostname into the addresses the fetcher may connect to."""

    @abstractmethod
    def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Return the host's addresses; raise :class:`OSError` (e.g. ``socket.gaierror``) on failure."""


class SystemResolver(Resolver):
    """Resolves through the operating system's ``getaddrinfo``."""

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        addresses: list[IPAddress] = []
        for family, _, _, _, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            address = ipaddress.ip_address(sockaddr[0])
            if address not in addresses:
                addresses.append(address)
        return addresses


class AddressPolicy:
    """Decides which IP addresses may be contacted.

    By default only globally routable unicast addresses are allowed; IPv6 forms that embed an IPv4
    address (mapped, compatible, 6to4, NAT64) are judged by the embedded address.
    ``extra_allowed_networks`` punches explicit holes and exists for the dev stack and tests only.
    """

    def __init__(
        self, extra_allowed_networks: Iterable[IPNetwork] = (), *, allowed_ports: Iterable[int] = WEB_PORTS
    ) -> None:
        self._extra: tuple[IPNetwork, ...] = tuple(extra_allowed_networks)
        self._ports = frozenset(allowed_ports)

    @property
    def extra_allowed_networks(self) -> tuple[IPNetwork, ...]:
        """The explicitly allowed networks."""
        return self._extra

    @property
    def allowed_ports(self) -> frozenset[int]:
        """The ports public addresses may be contacted on (any port for the extra networks)."""
        return self._ports

    def port_may_be_allowed(self, port: int) -> bool:
        """Whether ``port`` can be allowed for some address (checked before any DNS lookup)."""
        return port in self._ports or bool(self._extra)

    def port_allowed(self, port: int, addresses: Iterable[IPAddress]) -> bool:
        """Whether ``port`` may be used with all of ``addresses`` (already allowed by :meth:`is_allowed`)."""
        return port in self._ports or all(self._in_extra(a) for a in addresses)

    def _in_extra(self, address: IPAddress) -> bool:
        return any(a in net for a in (address, *_embedded_ipv4(address)) for net in self._extra)

    def is_allowed(self, address: IPAddress) -> bool:
        """Whether a connection to ``address`` is permitted."""
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            return False
        if self._in_extra(address):
            return True
        embedded = _embedded_ipv4(address)
        if embedded:
            return all(_is_public(a) for a in embedded)
        return _is_public(address)


def _embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    if isinstance(address, ipaddress.IPv4Address):
        return []
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address in _IPV4_COMPATIBLE or address in _NAT64:
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    if address.sixtofour is not None:
        return [address.sixtofour]
    return []


def _is_public(address: IPAddress) -> bool:
    if any(address in net for net in _ALWAYS_BLOCKED):
        return False
    return address.is_global and not (
        address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or address.is_loopback
        or address.is_link_local
        or address.is_private
    )


# --------------------------------------------------------------------------------------------------
# URL handling


@dataclass(frozen=True, slots=True)
class _Call:
    """What one request sends and how its answer is taken."""

    method: str
    content: bytes | None
    raise_for_status: bool
    follow_redirects: bool


@dataclass(frozen=True, slots=True)
class _Target:
    url: httpx.URL  # logical URL: the real host name (canonical IP for literals), no fragment
    scheme: str
    host: str  # ASCII, lower-case, without brackets
    port: int
    literal: IPAddress | None

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.url.port is None else f"{host}:{self.port}"

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


def _parse_target(raw: str, what: str = "The URL") -> _Target:
    raw = raw.strip()
    if len(raw) > MAX_URL_LENGTH:
        raise UrlNotAllowed(f"{what} is longer than {MAX_URL_LENGTH} characters.")
    if _CONTROL_OR_SPACE.search(raw):
        raise UrlNotAllowed(f"{what} contains whitespace or control characters.")
    try:
        url = httpx.URL(raw)
    except httpx.InvalidURL:
        raise UrlNotAllowed(f"{what} is not a valid URL.") from None
    if url.scheme not in _DEFAULT_PORTS:
        raise UrlNotAllowed(f"{what} must use http or https.")
    authority = _AUTHORITY.match(raw)
    # '@' anywhere in the authority means credentials (even empty ones); '\' is treated as '/' by
    # browsers but not by httpx, a classic parser-confusion trick.
    if url.userinfo or authority is None or "@" in authority[1] or "\\" in authority[1]:
        raise UrlNotAllowed(f"{what} must not contain credentials.")
    host = url.raw_host.decode("ascii")
    if not host:
        raise UrlNotAllowed(f"{what} has no host.")
    if url.port is not None and not 0 < url.port < 65536:
        raise UrlNotAllowed(f"{what} has an invalid port.")
    literal = _parse_ip_literal(host, what)
    if literal is not None:
        host = str(literal)
        url = url.copy_with(host=host)
    elif not _HOSTNAME.fullmatch(host):
        raise UrlNotAllowed(f"{what} has an invalid host name.")
    return _Target(
        url=url.copy_with(fragment=None),
        scheme=url.scheme,
        host=host,
        port=url.port or _DEFAULT_PORTS[url.scheme],
        literal=literal,
    )


def _parse_ip_literal(host: str, what: str) -> IPAddress | None:
    """Parse the host as an IP address the way browsers and ``inet_aton`` would.

    Decimal (``2130706433``), octal (``0177.0.0.1``), hex (``0x7f.1``) and short forms all name an
    IPv4 address; following the WHATWG URL rules, a host whose last label is numeric *is* an IPv4
    address and is rejected if it does not parse, rather than being sent to DNS.
    """
    if ":" in host:  # httpx only lets ':' through inside [brackets]
        try:
            address = ipaddress.IPv6Address(host.replace("%25", "%"))
        except ValueError:
            raise UrlNotAllowed(f"{what} has an invalid IPv6 address.") from None
        if address.scope_id:
            raise UrlNotAllowed(f"{what} must not use an IPv6 zone identifier.")
        return address
    labels = host.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()
    if not (labels[-1].isdigit() or _IPV4_PART.fullmatch(labels[-1])):
        return None
    try:
        numbers = [_parse_ipv4_part(label) for label in labels]
    except ValueError:
        raise UrlNotAllowed(f"{what} has an invalid IPv4 address.") from None
    if len(numbers) > 4 or any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise UrlNotAllowed(f"{what} has an invalid IPv4 address.")
    value = numbers[-1] + sum(n << (8 * (3 - i)) for i, n in enumerate(numbers[:-1]))
    return ipaddress.IPv4Address(value)


def _parse_ipv4_part(label: str) -> int:
    if not _IPV4_PART.fullmatch(label):
        raise ValueError(label)
    if label[:2].lower() == "0x":
        return int(label[2:] or "0", 16)
    if len(label) > 1 and label[0] == "0":
        return int(label, 8)
    return int(label)


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _parse_retry_after(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return min(int(value), _MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = math.ceil((when - datetime.now(UTC)).total_seconds())
    return min(max(seconds, 0), _MAX_RETRY_AFTER)


def _check_caller_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    if not headers:
        return {}
    reserved = sorted(name for name in headers if name.lower() in _RESERVED_HEADERS)
    if reserved:
        raise ValueError(f"headers set by the fetcher itself cannot be overridden: {reserved}")
    return dict(headers)


def _is_certificate_error(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _translate(exc: Exception) -> FetchFailed | FetchTemporarilyFailed:
    """Map an httpx exception onto the fetcher's error model."""
    if isinstance(exc, httpx.TimeoutException):
        return FetchTemporarilyFailed("The request timed out.")
    if isinstance(exc, httpx.ConnectError) and _is_certificate_error(exc):
        return FetchFailed("The server's TLS certificate could not be verified.")
    if isinstance(exc, (httpx.LocalProtocolError, httpx.UnsupportedProtocol)):
        return FetchFailed("The request could not be sent.")
    if isinstance(exc, httpx.TransportError):
        return FetchTemporarilyFailed("The connection to the server failed.")
    if isinstance(exc, httpx.DecodingError):
        return FetchFailed("The response could not be decoded.")
    return FetchFailed("The URL could not be fetched.")


# --------------------------------------------------------------------------------------------------
# Fetcher


class SafeFetcher:
    """Fetches user-supplied URLs without letting them reach internal addresses.

    The fetcher never retries (the caller or queue owns retries; see :func:`fetch_with_retries`).
    It holds one ``httpx.Client``, created on first use; call :meth:`close` or use it as a context
    manager. Closing also closes an injected ``transport``.
    """

    def __init__(
        self,
        resolver: Resolver | None = None,
        policy: AddressPolicy | None = None,
        limits: FetchLimits | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._resolver = resolver or SystemResolver()
        self._policy = policy or AddressPolicy()
        self._limits = limits or FetchLimits()
        self._transport = transport
        self._client: httpx.Client | None = None
        self._closed = False
        self._lock = threading.Lock()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the underlying client; the fetcher cannot be used afterwards."""
        with self._lock:
            self._closed = True
            if self._client is not None:
                self._client.close()
                self._client = None

    def fetch(
        self,
        url: str,
        *,
        limits: FetchLimits | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> FetchedResource:
        """GET ``url`` and return its body, following up to ``limits.max_redirects`` redirects.

        Raises :class:`UrlNotAllowed`, :class:`FetchFailed` (and subclasses) or
        :class:`FetchTemporarilyFailed`; ``ValueError`` if ``headers`` tries to set a header the
        fetcher owns (``Host``, ``Accept-Encoding``, ...).
        """
        return self.request("GET", url, limits=limits, headers=headers)

    def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        limits: FetchLimits | None = None,
        raise_for_status: bool = True,
        follow_redirects: bool | None = None,
    ) -> FetchedResource:
        """Send ``method`` to ``url`` (with ``json`` as its body, if given) under the same vetting as
        :meth:`fetch`.

        Redirects are followed only for GET (``follow_redirects`` may turn that off); a method with a
        body is never replayed to another address. With ``raise_for_status=False`` every answer the
        server gives comes back with its status and headers (a 3xx that is not followed, a 4xx, a 5xx:
        the size limit still applies, the content-type check only to 2xx); transport failures and
        refused addresses still raise as in :meth:`fetch`.
        """
        method = method.upper()
        if follow_redirects is None:
            follow_redirects = method == "GET"
        elif follow_redirects and method != "GET":
            raise ValueError("only GET requests follow redirects")
        limits = limits or self._limits
        request_headers = _check_caller_headers(headers)
        content: bytes | None = None
        if json is not None:
            content = _json.dumps(json, separators=(",", ":"), ensure_ascii=False).encode()
            request_headers.setdefault("Content-Type", "application/json")
        deadline = time.monotonic() + limits.total_timeout
        target = _parse_target(url)
        token = _DEADLINE.set(deadline)  # read by the transport's network streams (this thread only)
        try:
            return self._fetch(
                _Call(method, content, raise_for_status, follow_redirects), target, limits, request_headers, deadline
            )
        finally:
            _DEADLINE.reset(token)

    def vet(self, url: str, *, limits: FetchLimits | None = None) -> str:
        """Check ``url`` as a request would (its form, its port, every address its host resolves to)
        without contacting it; the URL as it would be requested (without fragment).

        Raises :class:`UrlNotAllowed`, or :class:`FetchTemporarilyFailed` when DNS does not answer.
        """
        limits = limits or self._limits
        target = _parse_target(url)
        self._vetted_addresses(target, time.monotonic() + limits.total_timeout)
        return str(target.url)

    def _fetch(
        self,
        call: _Call,
        target: _Target,
        limits: FetchLimits,
        request_headers: dict[str, str],
        deadline: float,
    ) -> FetchedResource:
        redirects = 0
        try:
            while True:
                addresses = self._vetted_addresses(target, deadline)
                response = self._send(call, target, addresses, request_headers, limits, deadline)
                try:
                    if response.status_code not in _REDIRECT_STATUSES or not call.follow_redirects:
                        return self._accept(call, target, response, limits, deadline)
                    location = response.headers.get("location")
                    if not location:
                        raise FetchFailed(
                            "The server redirected without a Location.",
                            upstream_status=response.status_code,
                        )
                    if redirects >= limits.max_redirects:
                        raise FetchTooManyRedirects(
                            f"The URL redirected more than {limits.max_redirects} times.",
                            upstream_status=response.status_code,
                        )
                    redirects += 1
                    try:
                        joined = str(target.url.join(location))
                    except httpx.InvalidURL:
                        raise UrlNotAllowed("The redirect target is not a valid URL.") from None
                    next_target = _parse_target(joined, "The redirect target")
                    if next_target.origin != target.origin:
                        request_headers = {
                            k: v for k, v in request_headers.items() if k.lower() not in _CREDENTIAL_HEADERS
                        }
                    target = next_target
                finally:
                    response.close()
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, httpx.CookieConflict) as exc:
            raise _translate(exc) from exc

    def _client_for_use(self) -> httpx.Client:
        with self._lock:
            if self._closed:
                raise RuntimeError("SafeFetcher is closed")
            if self._client is None:
                transport = self._transport or _DeadlineTransport()
                self._client = httpx.Client(
                    transport=transport,
                    follow_redirects=False,
                    trust_env=False,
                    # Cookies from one user's URL must never be replayed on another's fetch.
                    cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
                    headers={
                        "User-Agent": USER_AGENT,
                        "Accept": "*/*",
                        # Uncompressed only: a small gzip/brotli body could expand far past
                        # max_bytes inside a single decoder call.
                        "Accept-Encoding": "identity",
                    },
                )
            return self._client

    def _vetted_addresses(self, target: _Target, deadline: float) -> list[IPAddress]:
        ports = self._policy.allowed_ports
        port_refused = UrlNotAllowed(
            f"The URL's port {target.port} may not be used (only {', '.join(str(p) for p in sorted(ports))})."
        )
        if not self._policy.port_may_be_allowed(target.port):
            raise port_refused  # before any lookup: a refused port teaches nothing about the host
        if target.literal is not None:
            if not self._policy.is_allowed(target.literal):
                raise UrlNotAllowed("The URL points at an address that may not be contacted.")
            addresses = [target.literal]
        else:
            addresses = self._resolve(target, deadline)
            # All must pass: which address a connection ends up using is not ours to predict.
            if not addresses or not all(self._policy.is_allowed(a) for a in addresses):
                raise UrlNotAllowed(_UNRESOLVABLE_OR_FORBIDDEN)
        if not self._policy.port_allowed(target.port, addresses):
            raise port_refused
        return addresses

    def _resolve(self, target: _Target, deadline: float) -> list[IPAddress]:
        """The resolver's answer, waited for no longer than the fetch's deadline.

        ``getaddrinfo`` cannot be interrupted, so it runs in a daemon thread that is abandoned (and
        ends with the system resolver's own timeout) when the deadline passes first.
        """
        outcome: list[list[IPAddress] | BaseException] = []

        def lookup() -> None:
            try:
                outcome.append(self._resolver.resolve(target.host, target.port))
            except BaseException as exc:  # handed to the waiting thread, which raises it there
                outcome.append(exc)

        worker = threading.Thread(target=lookup, name="safe-fetch-dns", daemon=True)
        worker.start()
        worker.join(max(0.0, deadline - time.monotonic()))
        if not outcome:
            raise FetchTemporarilyFailed("The URL's host could not be resolved in time.")
        result = outcome[0]
        if isinstance(result, socket.gaierror):
            if result.errno in _PERMANENT_GAI_ERRORS:
                raise UrlNotAllowed(_UNRESOLVABLE_OR_FORBIDDEN) from result
            raise FetchTemporarilyFailed("The URL's host could not be resolved.") from result
        if isinstance(result, OSError):
            raise FetchTemporarilyFailed("The URL's host could not be resolved.") from result
        if isinstance(result, BaseException):
            raise result
        return result

    def _send(
        self,
        call: _Call,
        target: _Target,
        addresses: list[IPAddress],
        headers: dict[str, str],
        limits: FetchLimits,
        deadline: float,
    ) -> httpx.Response:
        client = self._client_for_use()
        extensions: dict[str, Any] = {}
        if target.scheme == "https" and target.literal is None:
            # httpcore uses this for SNI and certificate hostname checks instead of the URL's IP.
            extensions["sni_hostname"] = target.host
        last_error: httpx.ConnectError | None = None
        for address in addresses:
            connect_to = _connectable(address)
            request = client.build_request(
                call.method,
                target.url.copy_with(host=str(connect_to)),
                headers={**headers, "Host": target.host_header},
                content=call.content,
                timeout=_timeout(limits, deadline),
                extensions=extensions,
            )
            try:
                return client.send(request, stream=True, follow_redirects=False)
            except httpx.ConnectError as exc:
                if _is_certificate_error(exc):
                    raise
                last_error = exc  # nothing was sent: try the host's next address, whatever the method
            except httpx.RemoteProtocolError as exc:
                # Even with follow_redirects=False httpx parses Location and fails the whole
                # response on a malformed one; that is the server's permanent fault, not a blip.
                if str(exc).startswith("Invalid URL in location header"):
                    raise UrlNotAllowed("The redirect target is not a valid URL.") from exc
                raise
        raise FetchTemporarilyFailed("Could not connect to the URL's host.") from last_error

    def _accept(
        self, call: _Call, target: _Target, response: httpx.Response, limits: FetchLimits, deadline: float
    ) -> FetchedResource:
        status = response.status_code
        succeeded = 200 <= status < 300
        if not succeeded and call.raise_for_status:
            if status in (408, 429) or 500 <= status < 600:
                raise FetchTemporarilyFailed(
                    f"The server answered {status}.",
                    retry_after=_parse_retry_after(response.headers.get("retry-after")),
                    upstream_status=status,
                )
            raise FetchFailed(f"The server answered {status}.", upstream_status=status)
        content_type = response.headers.get("content-type", "").strip()
        allowed = limits.allowed_content_types
        if succeeded and allowed is not None and _media_type(content_type) not in allowed:
            raise FetchBadContentType(
                f"The content type {_media_type(content_type) or '(none)'!r} is not accepted.",
                upstream_status=status,
            )
        declared = response.headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > limits.max_bytes:
            raise FetchTooLarge(f"The content is larger than {limits.max_bytes} bytes.", upstream_status=status)
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise FetchFailed(f"The content encoding {encoding!r} is not supported.", upstream_status=status)
        body = bytearray()
        # iter_bytes, not iter_raw: it also copes with transports that hand back an already-read
        # response, and with the encoding pinned to identity above it decodes nothing.
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > limits.max_bytes:
                raise FetchTooLarge(f"The content is larger than {limits.max_bytes} bytes.", upstream_status=status)
            if time.monotonic() > deadline:
                raise FetchTemporarilyFailed("The fetch took longer than the total time limit.")
        return FetchedResource(
            url=str(target.url),
            status=status,
            content_type=content_type,
            body=bytes(body),
            headers={name.lower(): value for name, value in response.headers.items()},
        )


# --------------------------------------------------------------------------------------------------
# Transport: every socket operation is bounded by the fetch's deadline

# The monotonic deadline of the fetch running in this thread (set by SafeFetcher.fetch).
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("safe_fetch_deadline", default=None)


def _capped(timeout: float | None, expired: type[Exception]) -> float | None:
    """``timeout`` shortened to what is left of the current fetch's deadline; ``expired`` once it passed."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise expired("The fetch took longer than the total time limit.")
    return remaining if timeout is None else min(timeout, remaining)


class _DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every read, write and TLS handshake ends by the fetch's deadline.

    httpcore applies the read timeout to each ``recv``; a server sending one byte just inside it
    would otherwise keep a response's status line and headers coming for as long as it likes."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _capped(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _capped(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname, _capped(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(inner)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        capped = _capped(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_tcp(host, port, capped, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not fetched")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _DeadlineTransport(httpx.HTTPTransport):
    """httpx's own transport (certificates, exception mapping) on a pool whose sockets keep the deadline.

    Keep-alive is off: the pool is keyed by IP, so a kept connection verified for one TLS name
    could otherwise serve another name."""

    def __init__(self) -> None:
        # Not HTTPTransport.__init__: it only builds the pool (loading the CA bundle) that this replaces;
        # handle_request and close use nothing else.
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_keepalive_connections=0,
            retries=0,
            network_backend=_DeadlineBackend(),
        )


def _connectable(address: IPAddress) -> IPAddress:
    # Connect to a mapped address over IPv4 so it works on hosts without dual-stack sockets.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _timeout(limits: FetchLimits, deadline: float) -> httpx.Timeout:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FetchTemporarilyFailed("The fetch took longer than the total time limit.")
    connect = min(limits.connect_timeout, remaining)
    read = min(limits.read_timeout, remaining)
    return httpx.Timeout(connect=connect, read=read, write=read, pool=connect)


def fetch_with_retries(
    fetcher: SafeFetcher,
    url: str,
    attempts: int = 3,
    backoff: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
    *,
    max_backoff: float = 10.0,
    limits: FetchLimits | None = None,
    headers: Mapping[str, str] | None = None,
    jitter: Callable[[float, float], float] = random.uniform,
) -> FetchedResource:
    """Fetch, retrying only :class:`FetchTemporarilyFailed` with full-jitter exponential backoff.

    The n-th retry waits ``jitter(0, min(max_backoff, backoff * 2**n))`` seconds, or the server's
    Retry-After if that is longer. A Retry-After beyond ``max_backoff`` is re-raised at once so a
    queue, not this thread, does the long wait.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    for attempt in range(attempts):
        try:
            return fetcher.fetch(url, limits=limits, headers=headers)
        except FetchTemporarilyFailed as exc:
            if attempt == attempts - 1:
                raise
            delay = jitter(0.0, min(max_backoff, backoff * 2**attempt))
            if exc.retry_after is not None:
                if exc.retry_after > max_backoff:
                    raise
                delay = max(delay, float(exc.retry_after))
            sleep(delay)
    raise AssertionError("unreachable")
