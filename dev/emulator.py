"""Start, wait for, wipe and stop a Firestore emulator (``gcloud emulators firestore start``)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FirestoreEmulator:
    """One emulator process (and its Java child) in its own process group."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> FirestoreEmulator:
        if self._is_up():
            raise RuntimeError(f"something already listens on {self.host}")
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._process = subprocess.Popen(
            ["gcloud", "emulators", "firestore", "start", f"--host-port={self.host}", "--quiet"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the Firestore emulator exited early (code {self._process.returncode})")
            if self._is_up():
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the Firestore emulator did not start within {timeout:.0f}s")

    def _is_up(self) -> bool:
        try:
            return httpx.get(f"http://{self.host}/", timeout=1, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    def wipe(self, project: str) -> None:
        httpx.delete(
            f"http://{self.host}/emulator/v1/projects/{project}/databases/(default)/documents",
            timeout=30,
            trust_env=False,
        ).raise_for_status()

    def stop(self) -> None:
        if self._process is None:
            return
        try:
            os.killpg(self._process.pid, signal.SIGTERM)
            self._process.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
        self._process = None
