"""`make dev` as a user runs it: the stack starts, the demo passes against it, Ctrl-C stops it all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from dev.emulator import free_port

ROOT = Path(__file__).resolve().parents[2]


def _wait_for(url: str, process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the stack exited early with {process.returncode}")
        try:
            if httpx.get(url, timeout=1, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} never answered")


def _settled_tasks(base: str, timeout: float = 30) -> list[dict[str, object]]:
    """The dispatcher's history once every task is done. A batch job's follow-up settle tasks are
    scheduled after their window closes, so one may still be waiting when the job reports done."""
    deadline = time.monotonic() + timeout
    while True:
        tasks: list[dict[str, object]] = httpx.get(f"{base}/_dev/tasks", trust_env=False).json()
        if all(task["done"] for task in tasks) or time.monotonic() > deadline:
            return tasks
        time.sleep(0.5)


def test_stack_serves_every_function_runs_the_demo_and_stops_cleanly(tmp_path: Path) -> None:
    from dev.demo import run
    from dev.functions import discover_entry_points

    port, firestore_port, s3_port, smtp_port = free_port(), free_port(), free_port(), free_port()
    shopify_port, woo_port = free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("FIRESTORE_EMULATOR_HOST", None)
    # A file, not a pipe: nobody reads a pipe while the demo runs, and a full one blocks the stack's logging.
    log = (tmp_path / "stack.log").open("w+")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dev.stack",
            "--port",
            str(port),
            "--firestore-port",
            str(firestore_port),
            "--s3-port",
            str(s3_port),
            "--smtp-port",
            str(smtp_port),
            "--shopify-port",
            str(shopify_port),
            "--woo-port",
            str(woo_port),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for entry in discover_entry_points(ROOT / "functions"):
            _wait_for(f"{base}/{entry}/health", process)
        answer = httpx.get(f"{base}/_dev/openapi.json", timeout=30, trust_env=False)
        assert answer.status_code == 200, answer.text[:500]
        contract = answer.json()
        assert contract["servers"] == [{"url": base, "description": "this stack"}]
        assert "/catalog_api/products" in contract["paths"]
        shop = httpx.get(f"{base}/_dev/shopify", timeout=30, trust_env=False).json()
        assert shop["url"] == f"http://127.0.0.1:{shopify_port}" and shop["products"] == 50
        assert shop["webhook_url"] == f"{base}/store_webhook/webhooks/shopify"
        woo = httpx.get(f"{base}/_dev/woocommerce", timeout=30, trust_env=False).json()
        assert woo["url"] == f"http://127.0.0.1:{woo_port}" and woo["products"] == 50
        mails = httpx.get(f"{base}/_dev/mail", timeout=30, trust_env=False)
        assert mails.status_code == 200 and isinstance(mails.json(), list)
        result = run(base)
        assert result["import"]["status"] == "completed"
        assert len(result["assets"]) == 3
        tasks = _settled_tasks(base)
        assert tasks and all(task["succeeded"] for task in tasks), [t for t in tasks if not t["succeeded"]]
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        log.seek(0)
        output = log.read()
        log.close()
    assert process.returncode == 0, output[-3000:]
    assert "Epox local platform is up" in output and "stopped." in output
    assert f"Shopify (local stub)     http://127.0.0.1:{shopify_port}" in output
    assert f"WooCommerce (local stub) http://127.0.0.1:{woo_port}" in output
    for busy_port in (port, firestore_port, s3_port, shopify_port, woo_port):
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{busy_port}/", timeout=1, trust_env=False)
    assert f"SMTP sink (email)        127.0.0.1:{smtp_port}" in output
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", smtp_port), timeout=1).close()  # the SMTP sink stopped too
