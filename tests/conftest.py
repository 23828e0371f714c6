"""Shared fixtures: one Firestore emulator and one moto S3 server per test session, a dev JWT
issuer with a JWKS served over HTTP, and the functions served through functions-framework test
clients with a synchronous local task dispatcher.

Every test works in its own client (tenant) id, so tests never see each other's data.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "epox-test"
TASK_SECRET = "test-task-secret"
FUNCTIONS_BASE = "http://functions.test"
ISSUER = "https://auth.epox.test"
AUDIENCE = "https://api.epox.test"


@pytest.fixture(scope="session")
def firestore_emulator() -> Iterator[str]:
    """The emulator host: one we start ourselves, or FIRESTORE_EMULATOR_HOST if already given."""
    from dev.emulator import FirestoreEmulator

    given = os.environ.get("EPOX_TEST_FIRESTORE_HOST")
    if given:
        os.environ["FIRESTORE_EMULATOR_HOST"] = given
        yield given
        return
    emulator = FirestoreEmulator(log_path=ROOT / ".dev" / "test-firestore.log")
    (ROOT / ".dev").mkdir(exist_ok=True)
    emulator.start()
    os.environ["FIRESTORE_EMULATOR_HOST"] = emulator.host
    emulator.wipe(PROJECT)
    try:
        yield emulator.host
    finally:
        emulator.stop()


@pytest.fixture(scope="session")
def db(firestore_emulator: str) -> Any:
    from google.cloud import firestore

    return firestore.Client(project=PROJECT)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    from dev.emulator import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def object_store(s3_endpoint: str) -> Any:
    from shared.storage import R2ObjectStore

    store = R2ObjectStore(
        endpoint_url=s3_endpoint,
        access_key_id="test",
        secret_access_key="test",
        bucket="epox-test",
        region="us-east-1",
    )
    store.ensure_bucket()
    return store


class _JwksHandler(BaseHTTPRequestHandler):
    jwks: dict[str, Any] = {}
    hits = 0

    def do_GET(self) -> None:
        _JwksHandler.hits += 1  # counted on the base class so tests can read _JwksHandler.hits
        body = json.dumps(self.jwks).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture(scope="session")
def issuer() -> Any:
    from dev.jwt_issuer import DevIssuer

    return DevIssuer(issuer=ISSUER, audience=AUDIENCE)


@pytest.fixture(scope="session")
def jwks_url(issuer: Any) -> Iterator[str]:
    handler = type("JwksHandler", (_JwksHandler,), {"jwks": issuer.jwks()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/auth/jwks"
    finally:
        server.shutdown()


@pytest.fixture(scope="session")
def settings(firestore_emulator: str, s3_endpoint: str, jwks_url: str) -> Any:
    from shared.config import Settings

    return Settings(
        epox_env="test",
        gcp_project=PROJECT,
        auth_jwks_url=jwks_url,
        auth_issuer=ISSUER,
        auth_audience=AUDIENCE,
        cors_allowed_origins=["https://app.epox.test"],
        r2_endpoint_url=s3_endpoint,
        r2_access_key_id="test",
        r2_secret_access_key="test",
        r2_bucket="epox-test",
        r2_region="us-east-1",
        tasks_backend="local",
        tasks_auth_mode="shared_secret",
        tasks_dev_secret=TASK_SECRET,
        tasks_target_base_url=FUNCTIONS_BASE,
        tasks_max_attempts=4,
        fetch_allowed_networks=["127.0.0.1/32"],
        import_chunk_rows=3,
        ai_engine="offline",
        # Tests count credits from zero; onboarding's bonus has its own tests.
        signup_bonus_credits=0,
        stripe_webhook_secret="whsec_test_secret",
        stripe_api_key="sk_test_epox",
        stripe_price_ids={
            "starter:monthly": "price_starter_m",
            "starter:annual": "price_starter_y",
            "growth:monthly": "price_growth_m",
            "growth:annual": "price_growth_y",
            "pro:monthly": "price_pro_m",
            "pro:annual": "price_pro_y",
            "scale:monthly": "price_scale_m",
            "scale:annual": "price_scale_y",
            "pack_100": "price_pack_100",
            "pack_500": "price_pack_500",
            "pack_2000": "price_pack_2000",
        },
        generation_fanout_page=4,
        generation_counter_shards=3,
    )


@pytest.fixture(scope="session")
def function_apps() -> dict[str, Any]:
    """Every entry point of every function folder, loaded once through functions-framework."""
    from dev.functions import load_function_apps

    return load_function_apps(ROOT / "functions")


@dataclass
class Stack:
    """The functions, their platform and the task dispatcher, as one test sees them."""

    apps: dict[str, Any]
    platform: Any
    dispatcher: Any
    issuer: Any

    def client(self, entry: str) -> Any:
        return self.apps[entry].test_client()

    def headers(
        self, client_id: str, *, role: str = "user", platform_admin: bool | None = None, **extra: str
    ) -> dict[str, str]:
        """A user's headers; ``role="admin"`` is a platform operator (the operator claim) unless
        ``platform_admin=False`` asks for a tenant admin only."""
        operator = role == "admin" if platform_admin is None else platform_admin
        token = self.issuer.mint(client_id, role=role, platform_admin=operator)
        return {"Authorization": f"Bearer {token}", **extra}

    def run_tasks(self, *, fast_forward: bool = True) -> int:
        """Deliver every queued task, including ones scheduled for later (settlement windows)."""
        return int(self.dispatcher.run_until_idle(fast_forward=fast_forward))


def _manifest_checked_dispatcher(violations: list[str], **options: Any) -> Any:
    """The dispatcher, checking every task a served function enqueues against the function manifest: the
    target worker has a queue and the function lists it (Terraform grants it nothing else)."""
    from dev.dispatcher import TaskDispatcher
    from dev.manifest import load
    from shared.logging import current_context
    from shared.tasks import TaskRequest

    manifest = load()
    entries = {entry.name: entry for entry in manifest.entry_points}

    class ManifestCheckedDispatcher(TaskDispatcher):
        def enqueue(self, task: TaskRequest) -> bool:
            service = current_context().get("service")
            if service in entries:  # enqueued while serving a function (not by the test itself)
                queue = manifest.queue_of(task.target)
                if queue is None:
                    violations.append(f"{service} enqueued to {task.target}, which has no queue in the manifest")
                elif queue.name not in entries[service].queues:
                    violations.append(f"{service} enqueued to {task.target}: add {queue.name} to its queues")
            return bool(super().enqueue(task))

    return ManifestCheckedDispatcher(**options)


@pytest.fixture
def stack(function_apps: dict[str, Any], settings: Any, db: Any, object_store: Any, issuer: Any) -> Iterator[Stack]:
    from ipaddress import ip_network

    from shared.platform import Platform, set_platform
    from shared.safe_fetch import AddressPolicy, SafeFetcher

    def transport(url: str, headers: dict[str, str], body: bytes) -> tuple[int, float | None]:
        parts = urlsplit(url)
        entry, _, path = parts.path.lstrip("/").partition("/")
        response = function_apps[entry].test_client().post("/" + path, data=body, headers=headers)
        retry_after = response.headers.get("Retry-After")
        return response.status_code, float(retry_after) if retry_after else None

    violations: list[str] = []
    dispatcher = _manifest_checked_dispatcher(
        violations,
        transport=transport,
        secret=TASK_SECRET,
        target_base_url=FUNCTIONS_BASE,
        max_attempts=4,
        min_backoff=0,
        max_backoff=0,
    )
    fetcher = SafeFetcher(policy=AddressPolicy(extra_allowed_networks=[ip_network("127.0.0.1/32")]))
    platform = Platform(settings, db=db, object_store=object_store, task_queue=dispatcher, fetcher=fetcher)
    set_platform(platform)
    try:
        yield Stack(apps=function_apps, platform=platform, dispatcher=dispatcher, issuer=issuer)
    finally:
        set_platform(None)
        fetcher.close()
    assert not violations, sorted(set(violations))


@pytest.fixture
def client_id() -> str:
    return "c" + uuid.uuid4().hex[:16]


@pytest.fixture
def other_client_id() -> str:
    return "c" + uuid.uuid4().hex[:16]


class _UndocumentedProblems(logging.Handler):
    """Collects the router's "undocumented problem" errors (see HttpApp._check_documented)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("undocumented problem"):
            self.seen.append(record.getMessage())


@pytest.fixture(autouse=True)
def problems_are_documented(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test doubles as a contract test: a route that answers with a problem its OpenAPI document
    does not list (``errors=`` on the route, or what its declaration implies) fails the test."""
    handler = _UndocumentedProblems()
    logger = logging.getLogger("epox.http")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    if handler.seen and request.node.get_closest_marker("undocumented_problems") is None:
        pytest.fail(
            "the API contract misses problems the routes answered with:\n" + "\n".join(sorted(set(handler.seen)))
        )
