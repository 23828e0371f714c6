"""How every vendor stub is served: its handler on 127.0.0.1 in a background thread."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Generic, Protocol, TypeVar


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
