"""How every vendor stub is served: its handler on 127.0.0.1 in a background thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, Protocol, TypeVar


class Stub(Protocol):
    port: int


StubT = TypeVar("StubT", bound=Stub)


class StubServer(Generic[StubT]):
    """``stub`` served by ``handler`` on 127.0.0.1 (``port`` 0: a free one, written to ``stub.port``);
    :meth:`stop` ends it."""

    def __init__(self, stub: StubT, handler: type[BaseHTTPRequestHandler], port: int = 0) -> None:
        self.stub = stub
        self._server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._server.daemon_threads = True
        stub.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class StubHandler(BaseHTTPRequestHandler):
    """What every stub's request handler shares: HTTP/1.1, every method to ``_serve``, writing an
    answer, and no request log on stderr."""

    protocol_version = "HTTP/1.1"

    def _serve(self, method: str) -> None:
        raise NotImplementedError

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def write_answer(self, status: int, data: bytes, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return


@contextmanager
def serving(stub: StubT, handler: type[BaseHTTPRequestHandler], port: int = 0) -> Iterator[StubT]:
    """Serve ``stub`` for the ``with`` block."""
    server = StubServer(stub, handler, port)
    try:
        yield server.stub
    finally:
        server.stop()
