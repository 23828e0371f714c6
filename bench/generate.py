"""``python -m bench.generate``: numbers for the generation pipeline against the Firestore emulator.

* time to accept a 1,000-item job (the HTTP request, through the functions-framework app);
* per-item worker overhead excluding engine time (an instant stub engine);
* Firestore writes per item, and the most writes any single document received during the job
  (every commit is recorded by wrapping the client's WriteBatch.commit — measurement only).
"""

from __future__ import annotations

import io
import os
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parent.parent
ITEMS = 1000


class InstantEngine:
    """A stub engine: a tiny PNG at once, so timings show our overhead, not a model's."""

    name: ClassVar[str] = "stub"

    def __init__(self) -> None:
        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (120, 90, 200)).save(buffer, "PNG")
        self.png = buffer.getvalue()

    def generate(self, request: Any) -> Any:
        from shared.engines.base import EngineImage

        return EngineImage(data=self.png, mime_type="image/png", engine="stub", model="stub-1")

    def complete_text(self, request: Any) -> str:
        return str(request.prompt)


def _record_writes() -> tuple[Counter[str], dict[str, list[float]]]:
    """Count writes per document path (and when) by wrapping the Firestore client's batch commit."""
    from google.cloud.firestore_v1 import batch as batch_module

    writes: Counter[str] = Counter()
    times: dict[str, list[float]] = {}
    original = batch_module.WriteBatch.commit

    def commit(self: Any, *args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        for write in self._write_pbs:
            name = write.update.name if write.update.name else write.delete
            path = str(name).split("/documents/", 1)[-1]
            writes[path] += 1
            times.setdefault(path, []).append(now)
        return original(self, *args, **kwargs)

    batch_module.WriteBatch.commit = commit  # type: ignore[method-assign]

    from google.cloud.firestore_v1 import transaction as transaction_module

    original_txn = transaction_module.Transaction._commit

    def txn_commit(self: Any, *args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        for write in self._write_pbs:
            name = write.update.name if write.update.name else write.delete
            path = str(name).split("/documents/", 1)[-1]
            writes[path] += 1
            times.setdefault(path, []).append(now)
        return original_txn(self, *args, **kwargs)

    transaction_module.Transaction._commit = txn_commit  # type: ignore[method-assign]
    return writes, times


def _peak_per_second(stamps: list[float]) -> int:
    """The most writes inside any one-second window."""
    peak, start = 0, 0
    for end, stamp in enumerate(stamps):
        while stamp - stamps[start] > 1.0:
            start += 1
        peak = max(peak, end - start + 1)
    return peak


def main() -> int:
    from dev.emulator import FirestoreEmulator

    emulator = FirestoreEmulator().start()
    os.environ["FIRESTORE_EMULATOR_HOST"] = emulator.host
    try:
        return _run()
    finally:
        emulator.stop()


def _run() -> int:
    from google.cloud import firestore

    from dev.dispatcher import TaskDispatcher
    from dev.functions import load_function_apps
    from dev.jwt_issuer import DevIssuer
    from shared.auth import JwtVerifier
    from shared.config import Settings
    from shared.engines.base import ImageEngine
    from shared.ledger.model import Actor, GrantSource
    from shared.platform import Platform, set_platform
    from tests.fakes import InMemoryObjectStore

    ImageEngine.register(InstantEngine)
    issuer = DevIssuer(issuer="https://auth.bench", audience="bench")

    apps = load_function_apps(ROOT / "functions")
    worker_times: list[float] = []

    def transport(url: str, headers: dict[str, str], body: bytes) -> tuple[int, float | None]:
        entry, _, path = url.split("://", 1)[1].split("/", 1)[1].partition("/")
        started = time.perf_counter()
        response = apps[entry].test_client().post("/" + path, data=body, headers=headers)
        if path.startswith("tasks/item"):
            worker_times.append(time.perf_counter() - started)
        return response.status_code, None

    settings = Settings(
        epox_env="test",
        gcp_project="epox-bench",
        auth_issuer=issuer.issuer,
        auth_audience="bench",
        tasks_dev_secret="bench",
        tasks_auth_mode="shared_secret",
        ai_engine="offline",
    )
    dispatcher = TaskDispatcher(transport, secret="bench", target_base_url="http://bench", min_backoff=0, max_backoff=0)
    db = firestore.Client(project="epox-bench")
    platform = Platform(
        settings,
        db=db,
        object_store=InMemoryObjectStore(),
        task_queue=dispatcher,
        engine=InstantEngine(),  # type: ignore[arg-type]
        jwt_verifier=JwtVerifier(
            jwks_url="memory://", issuer=issuer.issuer, audience="bench", algorithms=["EdDSA"], jwks_fetch=issuer.jwks
        ),
    )
    set_platform(platform)
    client_id = "bench-client"
    platform.ledger.grant(
        client_id,
        key="bench-grant",
        amount=10 * ITEMS,
        source=GrantSource.ADMIN,
        actor=Actor(kind="system", id="bench"),
        reason="benchmark",
    )
    api = apps["generate_api"].test_client()
    headers = {"Authorization": f"Bearer {issuer.mint(client_id)}"}
    api.get("/presets", headers=headers)  # provision + warm caches
    body = {"items": [{"prompt": f"product shot {i}"} for i in range(ITEMS)], "size": "1K"}

    writes, stamps = _record_writes()
    started = time.perf_counter()
    response = api.post("/jobs", json=body, headers=headers)
    accept = time.perf_counter() - started
    assert response.status_code == 202, response.data
    job_id = response.json["id"]
    accept_writes = sum(writes.values())

    started = time.perf_counter()
    deliveries = dispatcher.run_until_idle(fast_forward=True)
    run_time = time.perf_counter() - started
    job = api.get(f"/jobs/{job_id}", headers=headers).json
    set_platform(None)

    state_path = f"clients/{client_id}/ledger/state"
    job_path = f"clients/{client_id}/jobs/{job_id}"
    busiest, busiest_count = writes.most_common(1)[0]
    hottest = max(stamps, key=lambda path: _peak_per_second(stamps[path]))
    total = sum(writes.values())
    print(f"== generation pipeline, {ITEMS}-item job, instant stub engine, Firestore emulator ==")
    print(f"  accept (POST /jobs → 202)              {accept * 1000:8.1f} ms   ({accept_writes} Firestore writes)")
    print(f"  whole job through the task queue       {run_time:8.1f} s    ({deliveries} task deliveries)")
    print(
        f"  per-item worker overhead p50 / p99     {statistics.median(worker_times) * 1000:8.1f} ms / "
        f"{sorted(worker_times)[int(len(worker_times) * 0.99) - 1] * 1000:.1f} ms"
    )
    print(f"  Firestore writes per item              {total / ITEMS:8.2f}    ({total} in all)")
    print(f"  most writes to one document            {busiest_count:8d}    ({busiest})")
    print(f"  peak writes/second to one document     {_peak_per_second(stamps[hottest]):8d}    ({hottest})")
    print(f"  writes to the balance document         {writes[state_path]:8d}    (reserve once, settle once)")
    print(f"  writes to the job document             {writes[job_path]:8d}")
    event_writes = sum(count for path, count in writes.items() if path.startswith("outbox/"))
    print(f"  writes the job's events cost           {event_writes:8d}    (target <= 2 per job: outbox + relay mark)")
    print(f"  job status {job['status']}, images {job['images_succeeded']}, settlement {job['settlement']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
