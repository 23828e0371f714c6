"""A small recording HTTP server standing in for our functions when a stub POSTs to us (webhooks, key
callbacks): it keeps every POST and answers ``status`` (or the next of ``statuses``). It also serves
``files`` to GETs (a 404 for any other path), standing in for the object store a vendor fetches our
images from."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # by lowercase name
    body: bytes


@dataclass
class Receiver:
    status: int = 200
    statuses: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # path -> (body, Content-Type)
    fetched: list[str] = field(default_factory=list)  # the paths GETs asked for, query included
    port: int = 0

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(self) -> int:
        return self.statuses.pop(0) if self.statuses else self.status


@contextmanager
def receiving() -> Iterator[Receiver]:
    """Serve a :class:`Receiver` on 127.0.0.1 for the ``with`` block."""
    sink = Receiver()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            sink.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(sink.answer())
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            sink.fetched.append(self.path)
            body, content_type = sink.files.get(self.path.split("?", 1)[0], (b"Not Found", "text/plain"))
            found = self.path.split("?", 1)[0] in sink.files
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    sink.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()
