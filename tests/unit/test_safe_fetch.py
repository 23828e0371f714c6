"""Tests for shared.safe_fetch.

Real sockets are only ever opened to 127.0.0.1. Every fetcher that may touch the network gets a
transport that refuses any other destination, so a test that let a blocked address through would
fail loudly instead of sending traffic anywhere.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import functools
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import UnprocessableContent, UpstreamUnavailable
from shared.safe_fetch import (
    USER_AGENT,
    AddressPolicy,
    FetchBadContentType,
    FetchedResource,
    FetchFailed,
    FetchLimits,
    FetchTemporarilyFailed,
    FetchTooLarge,
    FetchTooManyRedirects,
    IPAddress,
    Resolver,
    SafeFetcher,
    SystemResolver,
    UrlNotAllowed,
    fetch_with_retries,
)

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"
LOOPBACK_ONLY = AddressPolicy([ipaddress.ip_network("127.0.0.1/32")])
FAST = FetchLimits(connect_timeout=1.0, read_timeout=1.0, total_timeout=3.0)


# --------------------------------------------------------------------------------------------------
# Loopback test server


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


@dataclass
class ServerState:
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: list[Seen] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    sni: list[str | None] = field(default_factory=list)

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.failures.clear()
            self.sni.clear()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: ServerState


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        state = self.server.state
        with state.lock:
            state.requests.append(Seen(parts.path, {k.lower(): v for k, v in self.headers.items()}))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # clients that give up early
            self._route(parts.path, query)

    def _send(self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _route(self, path: str, query: dict[str, str]) -> None:
        if path == "/image.png":
            self._send(200, PNG, {"Content-Type": "image/png"})
        elif path == "/image-params":
            self._send(200, PNG, {"Content-Type": "Image/PNG; foo=bar"})
        elif path == "/page.html":
            self._send(200, b"<html></html>", {"Content-Type": "text/html; charset=utf-8"})
        elif path == "/large":
            self._send(200, b"x" * 100_000, {"Content-Type": "image/png"})
        elif path == "/large-stream":
            # No Content-Length: the body ends when the connection closes (HTTP/1.0).
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            for _ in range(32):
                self.wfile.write(b"x" * 65536)
        elif path == "/gzip":
            self._send(200, b"\x1f\x8b", {"Content-Type": "image/png", "Content-Encoding": "gzip"})
        elif path == "/redirect":
            self._send(int(query.get("status", "302")), headers={"Location": query["to"]})
        elif path == "/no-location":
            self._send(302)
        elif path.startswith("/chain/"):
            remaining = int(path.rsplit("/", 1)[1])
            if remaining == 0:
                self._send(200, PNG, {"Content-Type": "image/png"})
            else:  # relative-path reference, resolved against the current URL
                self._send(302, headers={"Location": f"{remaining - 1}"})
        elif path == "/unavailable":
            self._send(503, b"busy", {"Retry-After": "7"})
        elif path == "/rate-limited":
            later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120)
            self._send(429, headers={"Retry-After": email.utils.format_datetime(later, usegmt=True)})
        elif path == "/missing":
            self._send(404, b"nope")
        elif path == "/slow":
            time.sleep(0.5)
            self._send(200, PNG, {"Content-Type": "image/png"})
        elif path.startswith("/flaky/"):
            with self.server.state.lock:
                count = self.server.state.failures.get(path, 0)
                self.server.state.failures[path] = count + 1
            if count < int(query["fail"]):
                self._send(503, b"try again")
            else:
                self._send(200, PNG, {"Content-Type": "image/png"})
        else:
            self._send(404)


@dataclass
class LoopbackServer:
    port: int
    state: ServerState

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    @property
    def requests(self) -> list[Seen]:
        with self.state.lock:
            return list(self.state.requests)


def _serve(server: _Server) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)


@pytest.fixture(scope="module")
def _http_server() -> Iterator[LoopbackServer]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.state = ServerState()
    for _ in _serve(server):
        yield LoopbackServer(server.server_address[1], server.state)


@pytest.fixture
def server(_http_server: LoopbackServer) -> LoopbackServer:
    _http_server.state.reset()
    return _http_server


# --------------------------------------------------------------------------------------------------
# Fakes


class FakeResolver(Resolver):
    """A name table; unknown names fail like NXDOMAIN."""

    def __init__(self, table: Mapping[str, list[str]]) -> None:
        self.table = table
        self.calls: list[tuple[str, int]] = []

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        self.calls.append((host, port))
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ipaddress.ip_address(a) for a in self.table[host]]


class NoResolver(Resolver):
    """For IP literals, which must never be looked up."""

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        raise AssertionError(f"unexpected DNS lookup for {host!r}")


NAMES: dict[str, list[str]] = {
    "images.example.test": ["127.0.0.1"],
    "cdn.example.test": ["127.0.0.1"],
    "other.example.test": ["127.0.0.1"],
    "localhost": ["127.0.0.1", "::1"],
    "loopback2.example.test": ["127.0.0.2"],
    "private.example.test": ["10.0.0.5"],
    "metadata.example.test": ["169.254.169.254"],
    "mixed.example.test": ["93.184.216.34", "10.0.0.1"],
    "public.example.test": ["93.184.216.34"],
    "dual.example.test": ["93.184.216.34", "93.184.216.35"],
}


@functools.cache
def _plain_http_context() -> ssl.SSLContext:
    # Shared so each transport does not reload the CA bundle; plain-HTTP tests never use it.
    return ssl.create_default_context()


class LoopbackOnlyTransport(httpx.BaseTransport):
    """Real HTTP, but only to 127.0.0.1; records every destination it is asked for."""

    def __init__(self, verify: ssl.SSLContext | None = None) -> None:
        self.verify = verify or _plain_http_context()
        self.inner: httpx.HTTPTransport | None = None  # built lazily: loading CA certs is slow
        self.hosts: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.hosts.append(request.url.host)
        if request.url.host != "127.0.0.1":
            raise AssertionError(f"refusing to send traffic to {request.url.host}")
        if self.inner is None:
            self.inner = httpx.HTTPTransport(verify=self.verify, retries=0)
        return self.inner.handle_request(request)

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()


@pytest.fixture
def resolver() -> FakeResolver:
    return FakeResolver(NAMES)


@pytest.fixture
def transport() -> LoopbackOnlyTransport:
    return LoopbackOnlyTransport()


@pytest.fixture
def dev_fetcher(resolver: FakeResolver, transport: LoopbackOnlyTransport) -> Iterator[SafeFetcher]:
    with SafeFetcher(resolver, LOOPBACK_ONLY, FAST, transport) as fetcher:
        yield fetcher


@pytest.fixture
def default_fetcher(resolver: FakeResolver, transport: LoopbackOnlyTransport) -> Iterator[SafeFetcher]:
    with SafeFetcher(resolver, None, FAST, transport) as fetcher:
        yield fetcher


def _mock_fetcher(
    handler: Callable[[httpx.Request], httpx.Response],
    resolver: Resolver | None = None,
) -> SafeFetcher:
    """A fetcher whose transport never opens a socket, for addresses we must not really contact."""
    return SafeFetcher(resolver or NoResolver(), transport=httpx.MockTransport(handler))


def _png(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, headers={"Content-Type": "image/png"}, content=PNG)


# --------------------------------------------------------------------------------------------------
# Happy path


def test_fetches_through_vetted_ip_with_original_host_header(
    server: LoopbackServer, dev_fetcher: SafeFetcher, resolver: FakeResolver
) -> None:
    result = dev_fetcher.fetch(server.url("/image.png", host="images.example.test"))

    assert result == FetchedResource(
        url=server.url("/image.png", host="images.example.test"),
        status=200,
        content_type="image/png",
        body=PNG,
    )
    assert resolver.calls == [("images.example.test", server.port)]
    [seen] = server.requests
    assert seen.headers["host"] == f"images.example.test:{server.port}"
    assert seen.headers["user-agent"] == USER_AGENT
    assert seen.headers["accept-encoding"] == "identity"


def test_default_transport_works_on_loopback(server: LoopbackServer, resolver: FakeResolver) -> None:
    with SafeFetcher(resolver, LOOPBACK_ONLY, FAST) as fetcher:
        first = fetcher.fetch(server.url("/image.png", host="images.example.test"))
        second = fetcher.fetch(server.url("/image.png"), headers={"X-Trace": "abc"})

    assert first.body == second.body == PNG
    assert [s.headers["host"] for s in server.requests] == [
        f"images.example.test:{server.port}",
        f"127.0.0.1:{server.port}",
    ]
    assert server.requests[1].headers["x-trace"] == "abc"


def test_content_type_is_matched_without_parameters_and_case(server: LoopbackServer, dev_fetcher: SafeFetcher) -> None:
    limits = FetchLimits(allowed_content_types=frozenset({"IMAGE/png"}))
    result = dev_fetcher.fetch(server.url("/image-params"), limits=limits)

    assert result.content_type == "Image/PNG; foo=bar"
    assert result.media_type == "image/png"


def test_body_exactly_at_the_limit_is_accepted(server: LoopbackServer, dev_fetcher: SafeFetcher) -> None:
    result = dev_fetcher.fetch(server.url("/image.png"), limits=FetchLimits(max_bytes=len(PNG)))
    assert result.body == PNG


def test_https_connects_to_ip_but_uses_host_for_sni(resolver: FakeResolver) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return _png(request)

    with _mock_fetcher(handler, resolver) as fetcher:
        result = fetcher.fetch("https://public.example.test/a/b.png?x=1#frag")

    [request] = seen
    assert str(request.url) == "https://93.184.216.34/a/b.png?x=1"
    assert request.headers["host"] == "public.example.test"
    assert request.extensions["sni_hostname"] == "public.example.test"
    assert result.url == "https://public.example.test/a/b.png?x=1"


def test_ip_literal_https_does_not_override_sni() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return _png(request)

    with _mock_fetcher(handler) as fetcher:
        fetcher.fetch("https://[2606:4700:4700::1111]:8443/x")

    assert str(seen[0].url) == "https://[2606:4700:4700::1111]:8443/x"
    assert seen[0].headers["host"] == "[2606:4700:4700::1111]:8443"
    assert "sni_hostname" not in seen[0].extensions


def test_falls_back_to_the_next_vetted_address_on_connect_error(resolver: FakeResolver) -> None:
    tried: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        tried.append(request.url.host)
        if request.url.host == "93.184.216.34":
            raise httpx.ConnectError("refused", request=request)
        return _png(request)

    with _mock_fetcher(handler, resolver) as fetcher:
        assert fetcher.fetch("http://dual.example.test/").body == PNG
    assert tried == ["93.184.216.34", "93.184.216.35"]


# --------------------------------------------------------------------------------------------------
# TLS on loopback: SNI and certificate verification use the real name, not the IP


@dataclass
class TlsSetup:
    server: LoopbackServer
    client_context: ssl.SSLContext


def _make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Epox test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "images.example.test")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("images.example.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "leaf.pem", directory / "key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


@pytest.fixture(scope="module")
def _tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsSetup]:
    ca_path, cert_path, key_path = _make_certificates(tmp_path_factory.mktemp("tls"))
    state = ServerState()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_path, key_path)

    def record_sni(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        with state.lock:
            state.sni.append(name)

    server_context.sni_callback = record_sni
    server = _Server(("127.0.0.1", 0), _Handler)
    server.state = state
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    client_context = ssl.create_default_context(cafile=str(ca_path))
    for _ in _serve(server):
        yield TlsSetup(LoopbackServer(server.server_address[1], state), client_context)


@pytest.fixture
def tls(_tls_server: TlsSetup) -> TlsSetup:
    _tls_server.server.state.reset()
    return _tls_server


def test_https_verifies_certificate_against_original_host(tls: TlsSetup, resolver: FakeResolver) -> None:
    transport = LoopbackOnlyTransport(verify=tls.client_context)
    with SafeFetcher(resolver, LOOPBACK_ONLY, FAST, transport) as fetcher:
        result = fetcher.fetch(tls.server.url("/image.png", "images.example.test", "https"))

    assert result.body == PNG
    assert transport.hosts == ["127.0.0.1"]
    assert tls.server.state.sni == ["images.example.test"]
    assert tls.server.requests[0].headers["host"] == f"images.example.test:{tls.server.port}"


def test_https_certificate_for_another_name_is_a_permanent_failure(tls: TlsSetup, resolver: FakeResolver) -> None:
    transport = LoopbackOnlyTransport(verify=tls.client_context)
    fetcher = SafeFetcher(resolver, LOOPBACK_ONLY, FAST, transport)
    with fetcher, pytest.raises(FetchFailed) as caught:
        fetcher.fetch(tls.server.url("/image.png", "other.example.test", "https"))

    assert caught.value.retryable is False
    assert "certificate" in caught.value.detail
    assert tls.server.requests == []


# --------------------------------------------------------------------------------------------------
# Blocked destinations: rejected before any connection


BLOCKED_BY_DEFAULT = [
    "127.0.0.1",
    "127.0.0.2",
    "localhost",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "0.0.0.0",  # noqa: S104 - a destination here, not a bind address
    "[::]",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[::127.0.0.1]",
    "[2002:7f00:1::]",
    "[64:ff9b::a9fe:a9fe]",
    "[::ffff:169.254.169.254]",
    "[fe80::1]",
    "[fe80::1%25eth0]",
    "[fec0::1]",
    "[fd00::1]",
    "[ff02::1]",
    "2130706433",
    "0x7f000001",
    "017700000001",
    "0177.0.0.1",
    "0x7f.0.0.1",
    "0x7f.1",
    "127.1",
    "127.0.0.1.",
    "0",
    "private.example.test",
    "metadata.example.test",
    "mixed.example.test",
    "loopback2.example.test",
]


@pytest.mark.parametrize("host", BLOCKED_BY_DEFAULT)
def test_default_policy_blocks_before_connecting(
    host: str,
    server: LoopbackServer,
    default_fetcher: SafeFetcher,
    transport: LoopbackOnlyTransport,
) -> None:
    with pytest.raises(UrlNotAllowed) as caught:
        default_fetcher.fetch(server.url("/image.png", host=host))

    assert caught.value.code == "url_not_allowed"
    assert caught.value.retryable is False
    assert transport.hosts == []
    assert server.requests == []


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.2",
        "127.1.2.3",
        "[::1]",
        "10.0.0.1",
        "169.254.169.254",
        "loopback2.example.test",
        "localhost",  # also resolves to ::1, which is not in the allow-list
    ],
)
def test_extra_allowed_networks_do_not_open_neighbours(
    host: str,
    server: LoopbackServer,
    dev_fetcher: SafeFetcher,
    transport: LoopbackOnlyTransport,
) -> None:
    with pytest.raises(UrlNotAllowed):
        dev_fetcher.fetch(server.url("/image.png", host=host))
    assert transport.hosts == []
    assert server.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/image.png",
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/_x",
        "javascript:alert(1)",
        "//images.example.test/image.png",
        "images.example.test/image.png",
        "http:///image.png",
        "http://user:pass@images.example.test/image.png",
        "http://user@images.example.test/image.png",
        "http://@images.example.test/image.png",
        "http://images.example.test\\@127.0.0.1/",
        "http://images.example.test:0/",
        "http://images.example.test:99999/",
        "http://images example.test/",
        "http://images.example.test/a\nb",
        "http://127%2e0%2e0%2e1/",
        "http://1.2.3.4.5/",
        "http://example.256/",
        "http://" + "a" * 64 + ".example.test/",
        "http://images.example.test/" + "a" * 2048,
    ],
)
def test_malformed_or_forbidden_urls_are_refused(
    url: str, dev_fetcher: SafeFetcher, transport: LoopbackOnlyTransport, resolver: FakeResolver
) -> None:
    with pytest.raises(UrlNotAllowed) as caught:
        dev_fetcher.fetch(url)
    assert "pass" not in caught.value.detail  # the detail never echoes credentials
    assert transport.hosts == []
    assert resolver.calls == []


def test_unknown_host_is_a_permanent_failure(dev_fetcher: SafeFetcher, transport: LoopbackOnlyTransport) -> None:
    with pytest.raises(UrlNotAllowed) as caught:
        dev_fetcher.fetch("http://nowhere.example.test/")
    assert caught.value.retryable is False
    assert transport.hosts == []


@pytest.mark.parametrize("host", ["private.example.test", "metadata.example.test", "mixed.example.test"])
def test_a_missing_host_and_a_forbidden_one_answer_alike(
    host: str, default_fetcher: SafeFetcher, transport: LoopbackOnlyTransport
) -> None:
    """No internal-DNS oracle: whether a name exists in (private) DNS cannot be read off the error."""
    with pytest.raises(UrlNotAllowed) as missing:
        default_fetcher.fetch("http://nowhere.example.test/x.png")
    with pytest.raises(UrlNotAllowed) as forbidden:
        default_fetcher.fetch(f"http://{host}/x.png")
    assert (type(missing.value), missing.value.code, missing.value.detail) == (
        type(forbidden.value),
        forbidden.value.code,
        forbidden.value.detail,
    )
    assert missing.value.extensions == forbidden.value.extensions == {}
    assert transport.hosts == []


@pytest.mark.parametrize(
    "url", ["http://public.example.test:22/", "https://public.example.test:6379/", "http://8.8.8.8:25/"]
)
def test_other_ports_are_refused_before_any_lookup(url: str) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return _png(request)

    resolver = FakeResolver(NAMES)
    with SafeFetcher(resolver, transport=httpx.MockTransport(handler)) as fetcher:
        with pytest.raises(UrlNotAllowed) as caught:
            fetcher.fetch(url)
        assert "port" in caught.value.detail
        assert resolver.calls == [] and seen == []
        # The ports of web servers are fetched.
        for scheme, port in (("http", 80), ("https", 443), ("http", 8080), ("https", 8443)):
            assert fetcher.fetch(f"{scheme}://public.example.test:{port}/x.png").body == PNG
    assert len(seen) == 4


def test_extra_networks_open_any_port_for_themselves_only() -> None:
    """The dev/test hole (127.0.0.1 on a random port) does not open other ports of public hosts."""
    resolver = FakeResolver(NAMES)
    with SafeFetcher(resolver, LOOPBACK_ONLY, transport=httpx.MockTransport(_png)) as fetcher:
        assert fetcher.fetch("http://images.example.test:5555/x.png").body == PNG
        with pytest.raises(UrlNotAllowed, match="port"):
            fetcher.fetch("http://public.example.test:5555/x.png")


def test_a_redirect_to_another_port_is_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": "http://public.example.test:11211/"})

    fetcher = SafeFetcher(FakeResolver(NAMES), transport=httpx.MockTransport(handler))
    with fetcher, pytest.raises(UrlNotAllowed, match="port"):
        fetcher.fetch("http://public.example.test/x.png")


# --------------------------------------------------------------------------------------------------
# The total deadline holds while the response arrives, and covers DNS


@dataclass
class Dripper:
    """A server that accepts and then sends ``payload`` one byte every ``interval`` seconds."""

    port: int
    stop: threading.Event


@contextlib.contextmanager
def dripping_server(payload: bytes, interval: float) -> Iterator[Dripper]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.1)
    stop = threading.Event()

    def drip(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)  # the request
            for byte in payload:
                if stop.wait(interval):
                    return
                conn.sendall(bytes([byte]))

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield Dripper(listener.getsockname()[1], stop)
    finally:
        stop.set()
        thread.join(timeout=2)
        listener.close()


SLOW_HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nX-Padding: " + b"a" * 200 + b"\r\n\r\n"


def test_a_server_dripping_its_status_line_and_headers_cannot_outlast_the_total_timeout(
    resolver: FakeResolver,
) -> None:
    # Each byte comes well inside the read timeout; all of them would take about 8 s.
    limits = FetchLimits(connect_timeout=1.0, read_timeout=1.0, total_timeout=1.0)
    with (
        dripping_server(SLOW_HEADERS, interval=8 / len(SLOW_HEADERS)) as server,
        SafeFetcher(resolver, LOOPBACK_ONLY, limits) as fetcher,
    ):
        started = time.monotonic()
        with pytest.raises(FetchTemporarilyFailed):
            fetcher.fetch(f"http://images.example.test:{server.port}/x.png")
        elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 1.5, elapsed


class SlowResolver(Resolver):
    """A resolver that answers only when released (a DNS server that does not answer)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        self.release.wait(10)
        return [ipaddress.ip_address("127.0.0.1")]


def test_dns_resolution_is_inside_the_total_timeout(transport: LoopbackOnlyTransport) -> None:
    slow = SlowResolver()
    limits = FetchLimits(connect_timeout=1.0, read_timeout=1.0, total_timeout=0.5)
    try:
        with SafeFetcher(slow, LOOPBACK_ONLY, limits, transport) as fetcher:
            started = time.monotonic()
            with pytest.raises(FetchTemporarilyFailed, match="resolved"):
                fetcher.fetch("http://images.example.test:8080/x.png")
            elapsed = time.monotonic() - started
    finally:
        slow.release.set()
    assert 0.4 <= elapsed < 1.0, elapsed
    assert transport.hosts == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    address=st.one_of(
        st.ip_addresses(v=4),
        st.sampled_from(
            [
                ipaddress.IPv4Network(n)
                for n in (
                    "127.0.0.0/8",
                    "10.0.0.0/8",
                    "169.254.0.0/16",
                    "172.16.0.0/12",
                    "192.168.0.0/16",
                    "100.64.0.0/10",
                    "0.0.0.0/8",
                )
            ]
        ).flatmap(lambda n: st.integers(0, n.num_addresses - 1).map(lambda i: n[i])),
    )
)
def test_every_ipv4_spelling_names_the_same_address(address: ipaddress.IPv4Address) -> None:
    octets = address.packed
    value = int(address)
    spellings = [
        str(address),
        str(value),
        hex(value),
        ".".join(hex(b) for b in octets),
        ".".join(f"0{b:o}" for b in octets),
        f"{octets[0]}.{octets[1]}.{(octets[2] << 8) | octets[3]}",
        f"0x{octets[0]:x}.{int.from_bytes(octets[1:], 'big')}",
        f"[::ffff:{address}]",
    ]
    allowed = AddressPolicy().is_allowed(address)
    contacted: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        contacted.append(request.url.host)
        return _png(request)

    with _mock_fetcher(handler) as fetcher:
        for spelling in spellings:
            try:
                fetcher.fetch(f"http://{spelling}/")
            except UrlNotAllowed:
                continue
            assert allowed, spelling
    # Whatever the spelling, the only address ever contacted is the canonical one.
    assert set(contacted) <= {str(address)}
    if allowed:  # the unambiguous spellings must all get through
        assert len(contacted) >= 4


# --------------------------------------------------------------------------------------------------
# Redirects


def test_follows_relative_redirects_within_the_limit(server: LoopbackServer, dev_fetcher: SafeFetcher) -> None:
    result = dev_fetcher.fetch(server.url("/chain/5"))

    assert result.url == server.url("/chain/0")
    assert [s.path for s in server.requests] == [f"/chain/{n}" for n in range(5, -1, -1)]


def test_redirect_limit(server: LoopbackServer, dev_fetcher: SafeFetcher) -> None:
    with pytest.raises(FetchTooManyRedirects) as caught:
        dev_fetcher.fetch(server.url("/chain/6"))
    assert caught.value.code == "fetch_too_many_redirects"
    assert caught.value.retryable is False
    assert len(server.requests) == 6

    with pytest.raises(FetchTooManyRedirects):
        dev_fetcher.fetch(server.url("/chain/1"), limits=FetchLimits(max_redirects=0))


def test_redirect_target_is_resolved_again_and_credentials_dropped_across_origins(
    server: LoopbackServer, dev_fetcher: SafeFetcher, resolver: FakeResolver
) -> None:
    target = server.url("/image.png", host="cdn.example.test")
    result = dev_fetcher.fetch(
        server.url(f"/redirect?status=307&to={target}", host="images.example.test"),
        headers={"Authorization": "Bearer secret", "X-Keep": "1"},
    )

    assert result.url == target
    assert [host for host, _ in resolver.calls] == ["images.example.test", "cdn.example.test"]
    first, second = server.requests
    assert first.headers["authorization"] == "Bearer secret"
    assert second.headers["host"] == f"cdn.example.test:{server.port}"
    assert "authorization" not in second.headers
    assert second.headers["x-keep"] == "1"


@pytest.mark.parametrize(
    "location",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://127.0.0.2:{port}/image.png",
        "http://[::1]:{port}/image.png",
        "http://2130706434:{port}/image.png",  # 127.0.0.2
        "http://metadata.example.test/latest/meta-data",
        "http://private.example.test/",
        "http://user:pass@images.example.test:{port}/image.png",
        "file:///etc/passwd",
        "ftp://images.example.test/x",
        "http://[::1",
    ],
)
def test_redirect_to_a_blocked_destination_is_refused(
    location: str,
    server: LoopbackServer,
    dev_fetcher: SafeFetcher,
    transport: LoopbackOnlyTransport,
) -> None:
    url = str(httpx.URL(server.url("/redirect"), params={"to": location.format(port=server.port)}))
    with pytest.raises(UrlNotAllowed) as caught:
        dev_fetcher.fetch(url)

    assert "pass" not in caught.value.detail
    assert transport.hosts == ["127.0.0.1"]  # only the first hop
    assert [s.path for s in server.requests] == ["/redirect"]


def test_redirect_without_location_is_permanent(server: LoopbackServer, dev_fetcher: SafeFetcher) -> None:
    with pytest.raises(FetchFailed) as caught:
        dev_fetcher.fetch(server.url("/no-location"))
    assert caught.value.upstream_status == 302


# --------------------------------------------------------------------------------------------------
# Size and content-type limits


def test_declared_oversize_body_is_refused_early(server: LoopbackServer, dev_fetcher: SafeFetcher) -> None:
    with pytest.raises(FetchTooLarge) as caught:
        dev_fetcher.fetch(server.url("/large"), limits=FetchLimits(max_bytes=1000))
    assert caught.value.code == "fetch_too_large"
    assert caught.value.retryable is False
    assert caught.value.extensions["upstream_status"] == 200


def test_streamed_oversize_body_is_aborted(server: LoopbackServer, dev_fetcher: SafeFetcher) -> None:
    started = time.monotonic()
    with pytest.raises(FetchTooLarge):
        dev_fetcher.fetch(server.url("/large-stream"), limits=FetchLimits(max_bytes=100_000))
    assert time.monotonic() - started < 1.0


def test_content_type_mismatch_is_refused(server: LoopbackServer, dev_fetcher: SafeFetcher) -> None:
    limits = FetchLimits(allowed_content_types=frozenset({"image/png", "image/jpeg"}))
    with pytest.raises(FetchBadContentType) as caught:
        dev_fetcher.fetch(server.url("/page.html"), limits=limits)
    assert caught.value.code == "fetch_bad_content_type"
    assert "text/html" in caught.value.detail


def test_compressed_bodies_are_refused(server: LoopbackServer, dev_fetcher: SafeFetcher) -> None:
    with pytest.raises(FetchFailed, match="encoding"):
        dev_fetcher.fetch(server.url("/gzip"))


# --------------------------------------------------------------------------------------------------
# Upstream failures


def test_503_is_retryable_with_retry_after(server: LoopbackServer, dev_fetcher: SafeFetcher) -> None:
    with pytest.raises(FetchTemporarilyFailed) as caught:
        dev_fetcher.fetch(server.url("/unavailable"))

    error = caught.value
    assert isinstance(error, UpstreamUnavailable)
    assert error.code == "fetch_temporarily_failed"
    assert error.retryable is True
    assert error.retry_after == 7
    assert error.headers["Retry-After"] == "7"
    assert error.upstream_status == 503


def test_429_with_http_date_retry_after(server: LoopbackServer, dev_fetcher: SafeFetcher) -> None:
    with pytest.raises(FetchTemporarilyFailed) as caught:
        dev_fetcher.fetch(server.url("/rate-limited"))
    assert caught.value.retry_after is not None
    assert 100 <= caught.value.retry_after <= 121


def test_404_is_permanent(server: LoopbackServer, dev_fetcher: SafeFetcher) -> None:
    with pytest.raises(FetchFailed) as caught:
        dev_fetcher.fetch(server.url("/missing"))

    error = caught.value
    assert isinstance(error, UnprocessableContent)
    assert not isinstance(error, FetchTemporarilyFailed)
    assert error.code == "fetch_failed"
    assert error.retryable is False
    assert error.extensions == {"upstream_status": 404}


def test_read_timeout_is_retryable(server: LoopbackServer, dev_fetcher: SafeFetcher) -> None:
    limits = FetchLimits(connect_timeout=0.5, read_timeout=0.1, total_timeout=2.0)
    started = time.monotonic()
    with pytest.raises(FetchTemporarilyFailed) as caught:
        dev_fetcher.fetch(server.url("/slow"), limits=limits)
    assert caught.value.retryable is True
    assert time.monotonic() - started < 0.4


def test_total_timeout_caps_a_generous_read_timeout(server: LoopbackServer, dev_fetcher: SafeFetcher) -> None:
    limits = FetchLimits(read_timeout=10.0, total_timeout=0.15)
    started = time.monotonic()
    with pytest.raises(FetchTemporarilyFailed):
        dev_fetcher.fetch(server.url("/slow"), limits=limits)
    assert time.monotonic() - started < 0.4


def test_connection_refused_is_retryable(dev_fetcher: SafeFetcher) -> None:
    with socket.socket() as sock:  # grab a free port, then close it so nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(FetchTemporarilyFailed):
        dev_fetcher.fetch(f"http://127.0.0.1:{port}/")


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (httpx.ReadError("boom"), FetchTemporarilyFailed),
        (httpx.RemoteProtocolError("boom"), FetchTemporarilyFailed),
        (httpx.WriteTimeout("boom"), FetchTemporarilyFailed),
        (httpx.PoolTimeout("boom"), FetchTemporarilyFailed),
        (httpx.LocalProtocolError("boom"), FetchFailed),
        (httpx.DecodingError("boom"), FetchFailed),
        (httpx.TooManyRedirects("boom"), FetchFailed),
    ],
)
def test_no_httpx_exception_escapes(raised: Exception, expected: type[Exception]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise raised

    with _mock_fetcher(handler) as fetcher, pytest.raises(expected) as caught:
        fetcher.fetch("http://93.184.216.34/")
    assert caught.value.__cause__ is raised


# --------------------------------------------------------------------------------------------------
# request: other methods, bodies, statuses and headers


class Recorder:
    """A MockTransport handler answering with ``answer`` and keeping every request it got."""

    def __init__(self, answer: Callable[[httpx.Request], httpx.Response]) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        return self.answer(request)


def test_request_sends_json_to_the_vetted_ip_and_returns_status_and_headers() -> None:
    recorder = Recorder(
        lambda r: httpx.Response(201, headers={"X-WP-Total": "5", "Content-Type": "application/json"}, json={"id": 7})
    )
    with SafeFetcher(FakeResolver(NAMES), transport=httpx.MockTransport(recorder)) as fetcher:
        result = fetcher.request(
            "post", "https://public.example.test/wp-json/x", json={"name": "é"}, headers={"Authorization": "Basic x"}
        )

    assert (result.status, result.body, result.media_type) == (201, b'{"id":7}', "application/json")
    assert result.header("X-WP-Total") == result.headers["x-wp-total"] == "5"
    [sent] = recorder.requests
    assert (sent.method, sent.url.host, sent.headers["host"]) == ("POST", "93.184.216.34", "public.example.test")
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["authorization"] == "Basic x"
    assert sent.content == '{"name":"é"}'.encode()


@pytest.mark.parametrize(
    "url", ["http://private.example.test/hooks", "http://127.0.0.1/hooks", "http://[::1]/", "http://10.1.2.3/"]
)
def test_request_to_a_private_address_is_refused_before_sending(url: str) -> None:
    recorder = Recorder(lambda r: httpx.Response(200))
    with SafeFetcher(FakeResolver(NAMES), transport=httpx.MockTransport(recorder)) as fetcher:
        with pytest.raises(UrlNotAllowed):
            fetcher.request("POST", url, json={"x": 1}, raise_for_status=False)
        with pytest.raises(UrlNotAllowed):
            fetcher.vet(url)
    assert recorder.requests == []


def test_vet_checks_without_contacting() -> None:
    recorder = Recorder(lambda r: httpx.Response(200))
    resolver = FakeResolver(NAMES)
    with SafeFetcher(resolver, transport=httpx.MockTransport(recorder)) as fetcher:
        assert fetcher.vet("https://Public.Example.test/shop#top") == "https://public.example.test/shop"
        with pytest.raises(UrlNotAllowed):
            fetcher.vet("https://nowhere.example.test/")
    assert resolver.calls == [("public.example.test", 443), ("nowhere.example.test", 443)]
    assert recorder.requests == []


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_a_redirect_is_not_followed_for_other_methods(method: str) -> None:
    recorder = Recorder(lambda r: httpx.Response(307, headers={"Location": "https://dual.example.test/elsewhere"}))
    with SafeFetcher(FakeResolver(NAMES), transport=httpx.MockTransport(recorder)) as fetcher:
        answered = fetcher.request(method, "https://public.example.test/a", json={"a": 1}, raise_for_status=False)
        with pytest.raises(FetchFailed) as caught:
            fetcher.request(method, "https://public.example.test/a", json={"a": 1})
        with pytest.raises(ValueError):
            fetcher.request(method, "https://public.example.test/a", follow_redirects=True)

    assert answered.status == 307
    assert answered.header("location") == "https://dual.example.test/elsewhere"
    assert caught.value.upstream_status == 307
    assert [r.url.path for r in recorder.requests] == ["/a", "/a"]


def test_a_get_may_decline_redirects(server: LoopbackServer, dev_fetcher: SafeFetcher) -> None:
    target = server.url("/image.png")
    url = str(httpx.URL(server.url("/redirect"), params={"to": target}))
    answered = dev_fetcher.request("GET", url, follow_redirects=False, raise_for_status=False)
    assert (answered.status, answered.header("Location")) == (302, target)
    assert dev_fetcher.request("GET", url).body == PNG  # followed by default, as fetch does
    assert [s.path for s in server.requests] == ["/redirect", "/redirect", "/image.png"]


@pytest.mark.parametrize(("path", "status"), [("/unavailable", 503), ("/missing", 404), ("/rate-limited", 429)])
def test_error_statuses_come_back_when_asked(
    path: str, status: int, server: LoopbackServer, dev_fetcher: SafeFetcher
) -> None:
    answered = dev_fetcher.request("GET", server.url(path), raise_for_status=False)
    assert answered.status == status
    if status == 503:
        assert (answered.body, answered.header("retry-after")) == (b"busy", "7")
    # The size limit holds for error bodies too.
    if status != 429:
        with pytest.raises(FetchTooLarge):
            dev_fetcher.request("GET", server.url(path), raise_for_status=False, limits=FetchLimits(max_bytes=2))


def test_error_bodies_skip_the_content_type_check(server: LoopbackServer, dev_fetcher: SafeFetcher) -> None:
    limits = FetchLimits(allowed_content_types=frozenset({"application/json"}))
    assert dev_fetcher.request("GET", server.url("/missing"), limits=limits, raise_for_status=False).status == 404
    with pytest.raises(FetchBadContentType):
        dev_fetcher.request("GET", server.url("/image.png"), limits=limits, raise_for_status=False)


# --------------------------------------------------------------------------------------------------
# fetch_with_retries


def test_retries_transient_failures_then_succeeds(server: LoopbackServer, dev_fetcher: SafeFetcher) -> None:
    sleeps: list[float] = []
    result = fetch_with_retries(
        dev_fetcher,
        server.url("/flaky/a?fail=2"),
        attempts=3,
        backoff=0.5,
        sleep=sleeps.append,
        jitter=lambda low, high: high,
    )

    assert result.body == PNG
    assert len(server.requests) == 3
    assert sleeps == [0.5, 1.0]


def test_gives_up_after_the_last_attempt(server: LoopbackServer, dev_fetcher: SafeFetcher) -> None:
    sleeps: list[float] = []
    with pytest.raises(FetchTemporarilyFailed):
        fetch_with_retries(dev_fetcher, server.url("/flaky/b?fail=5"), 3, sleep=sleeps.append)
    assert len(server.requests) == 3
    assert len(sleeps) == 2
    assert all(0.0 <= s <= 1.0 for s in sleeps)


def test_does_not_retry_permanent_errors(server: LoopbackServer, dev_fetcher: SafeFetcher) -> None:
    sleeps: list[float] = []
    with pytest.raises(FetchFailed):
        fetch_with_retries(dev_fetcher, server.url("/missing"), sleep=sleeps.append)
    with pytest.raises(UrlNotAllowed):
        fetch_with_retries(dev_fetcher, server.url("/missing", host="10.0.0.1"), sleep=sleeps.append)
    assert len(server.requests) == 1
    assert sleeps == []


def test_honours_retry_after_up_to_the_cap(server: LoopbackServer, dev_fetcher: SafeFetcher) -> None:
    sleeps: list[float] = []
    with pytest.raises(FetchTemporarilyFailed):
        fetch_with_retries(dev_fetcher, server.url("/unavailable"), attempts=2, sleep=sleeps.append)
    assert sleeps == [7.0]

    sleeps.clear()
    with pytest.raises(FetchTemporarilyFailed):
        fetch_with_retries(dev_fetcher, server.url("/unavailable"), sleep=sleeps.append, max_backoff=1.0)
    assert sleeps == []  # a longer wait is left to the queue


def test_fetch_with_retries_rejects_zero_attempts(dev_fetcher: SafeFetcher) -> None:
    with pytest.raises(ValueError):
        fetch_with_retries(dev_fetcher, "http://images.example.test/", attempts=0)


# --------------------------------------------------------------------------------------------------
# Policy, value objects and lifecycle


@pytest.mark.parametrize(
    "address",
    [
        "93.184.216.34",
        "8.8.8.8",
        "2606:4700:4700::1111",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
    ],
)
def test_default_policy_allows_public_unicast(address: str) -> None:
    assert AddressPolicy().is_allowed(ipaddress.ip_address(address))


def test_extra_allowed_networks_are_exact() -> None:
    policy = AddressPolicy([ipaddress.ip_network("127.0.0.1/32")])
    assert policy.is_allowed(ipaddress.ip_address("127.0.0.1"))
    assert policy.is_allowed(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert not policy.is_allowed(ipaddress.ip_address("127.0.0.2"))
    assert not policy.is_allowed(ipaddress.ip_address("::1"))
    assert policy.extra_allowed_networks == (ipaddress.ip_network("127.0.0.1/32"),)


def test_system_resolver_handles_literals_without_dns() -> None:
    assert SystemResolver().resolve("127.0.0.1", 80) == [ipaddress.ip_address("127.0.0.1")]


def test_limits_validate_and_normalise() -> None:
    limits = FetchLimits(allowed_content_types=frozenset({" Image/PNG "}))
    assert limits.allowed_content_types == frozenset({"image/png"})
    assert FetchLimits().max_bytes == 20 * 1024 * 1024
    with pytest.raises(ValueError):
        FetchLimits(total_timeout=0)
    with pytest.raises(ValueError):
        FetchLimits(max_bytes=-1)


def test_resource_repr_omits_body() -> None:
    resource = FetchedResource("http://x.test/", 200, "image/png", b"\x00" * 1000)
    assert "\\x00" not in repr(resource)


def test_reserved_headers_cannot_be_overridden(dev_fetcher: SafeFetcher) -> None:
    with pytest.raises(ValueError, match="Host"):
        dev_fetcher.fetch("http://images.example.test/", headers={"Host": "evil.test"})


def test_closed_fetcher_cannot_be_used(server: LoopbackServer, resolver: FakeResolver) -> None:
    fetcher = SafeFetcher(resolver, LOOPBACK_ONLY, FAST, LoopbackOnlyTransport())
    with fetcher:
        fetcher.fetch(server.url("/image.png"))
    with pytest.raises(RuntimeError):
        fetcher.fetch(server.url("/image.png"))


def test_error_codes_are_stable() -> None:
    assert (UrlNotAllowed.code, UrlNotAllowed.retryable) == ("url_not_allowed", False)
    assert (FetchFailed.code, FetchFailed.retryable) == ("fetch_failed", False)
    assert (FetchTemporarilyFailed.code, FetchTemporarilyFailed.retryable) == (
        "fetch_temporarily_failed",
        True,
    )
    assert issubclass(FetchTooLarge, FetchFailed)
    assert issubclass(FetchBadContentType, FetchFailed)
    assert issubclass(FetchTooManyRedirects, FetchFailed)
    assert FetchTemporarilyFailed().headers["Retry-After"] == "5"
