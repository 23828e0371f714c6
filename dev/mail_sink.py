"""The local SMTP sink of ``make dev``: every email the functions send is kept as a file.

An aiosmtpd server on 127.0.0.1 accepts any message and writes it to ``.dev/mail/<timestamp>.eml``
(open it in a mail client, or read it as text); ``GET /_dev/mail`` lists them newest first.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class _Keep:
    """aiosmtpd's handler: one .eml file per message."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's hook
        with self._lock:
            self._count += 1
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            path = self.directory / f"{stamp}-{self._count:04d}.eml"
        path.write_bytes(envelope.content)
        return "250 Message kept"


class MailSink:
    """An SMTP server on 127.0.0.1:``port`` keeping what it receives in ``directory``."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        directory.mkdir(parents=True, exist_ok=True)
        self._controller = Controller(_Keep(directory), hostname="127.0.0.1", port=port)

    def start(self) -> MailSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def messages(self, limit: int = 200) -> list[dict[str, str]]:
        """The kept messages, newest first: subject, recipient and file."""
        listed = []
        for path in sorted(self.directory.glob("*.eml"), reverse=True)[:limit]:
            message = message_from_bytes(path.read_bytes(), policy=policy.default)
            listed.append({"subject": str(message["Subject"] or ""), "to": str(message["To"] or ""), "file": str(path)})
        return listed
