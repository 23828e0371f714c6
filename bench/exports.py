"""``python -m bench.exports``: a ZIP export of 100 and of 1,000 images — wall time and peak memory.

The object store is moto's S3 server in a process of its own (R2 is another service: its objects are
not this process's memory), reached through the real R2 adapter (boto3): the images are read from it
in 1 MiB chunks and the archive goes back to it as a multipart upload in parts of EXPORT_PART_MIB
(8). The export's documents and the catalog are the in-memory fakes (the build reads each asset
document once; Firestore's latency is not what is measured here). Each size runs in a fresh
interpreter, twice: once for the wall time and the growth of the process's peak RSS (ru_maxrss)
across the build, once under tracemalloc for the peak of Python allocations during the build (tracing
slows it down, so its time is not reported). Memory must stay flat as the count grows: the build holds
one part and one chunk, never the archive.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SIZES = (100, 1000)
IMAGE_SIDE = 370  # an incompressible RGB PNG of ~400 KB
CLIENT = "bench-client"


def _noise_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.frombytes("RGB", (IMAGE_SIDE, IMAGE_SIDE), os.urandom(IMAGE_SIDE * IMAGE_SIDE * 3)).save(buffer, "PNG")
    return buffer.getvalue()


def _world(endpoint: str, count: int) -> tuple[Any, list[str]]:
    """The export services on the moto store and the in-memory fakes, with ``count`` image assets."""
    from datetime import UTC, datetime, timedelta

    from shared.catalog.models import AssetDoc, AssetKind, AssetOrigin, ProductDoc
    from shared.exports.service import ExportPolicy, ExportServices
    from shared.storage import R2ObjectStore
    from tests.fakes import RecordingTaskQueue
    from tests.fakes_catalog import in_memory_catalog
    from tests.fakes_exports import InMemoryExportRepository

    now = datetime(2026, 3, 1, tzinfo=UTC)
    store = R2ObjectStore(
        endpoint_url=endpoint,
        access_key_id="bench",
        secret_access_key="bench",
        bucket=f"bench-{count}",
        region="us-east-1",
    )
    store.ensure_bucket()
    catalog = in_memory_catalog()
    image = _noise_png()
    ids: list[str] = []
    for n in range(count):
        product_id = f"prod_{n // 4:04d}"  # four images a product: 25 and 250 folders
        if n % 4 == 0:
            product = ProductDoc(id=product_id, client_id=CLIENT, name=f"Product {n // 4}", sku=f"SKU-{n // 4:04d}",
                                 created_at=now, updated_at=now)  # fmt: skip
            catalog.products.products.setdefault(CLIENT, {})[product_id] = (product, 1)  # type: ignore[attr-defined]
        asset_id = f"ast_{n:05d}"
        key = f"clients/{CLIENT}/assets/{asset_id}/r1.png"
        store.put(key, image, "image/png")
        catalog.assets.assets.setdefault(CLIENT, {})[asset_id] = AssetDoc(  # type: ignore[attr-defined]
            id=asset_id,
            client_id=CLIENT,
            product_id=product_id,
            kind=AssetKind.GENERATED,
            source="offline",
            key=key,
            thumbnail_key=key + "_thumb.webp",
            content_type="image/png",
            width=IMAGE_SIDE,
            height=IMAGE_SIDE,
            metadata={"style": "studio"},
            created_at=now + timedelta(seconds=n),
            updated_at=now,
            origin=AssetOrigin.GENERATED,
        )
        ids.append(asset_id)
    services = ExportServices(
        exports=InMemoryExportRepository(),
        catalog=catalog,
        store=store,
        queue=RecordingTaskQueue(),
        policy=ExportPolicy(
            part_bytes=8 * 1024 * 1024,
            budget_seconds=3600.0,
            link_seconds=3600,
            task_deadline=timedelta(minutes=30),
            max_attempts=8,
        ),
        clock=lambda: now,
        job_stores=lambda job_id: None,
    )
    return services, ids


def _build(services: Any) -> str:
    """Deliver the export's tasks until none is left; the last outcome."""
    from shared.exports import service
    from shared.exports.models import ExportTask
    from shared.tasks import TaskCall

    outcome = ""
    while services.queue.tasks:
        task = services.queue.tasks.pop(0)
        payload = ExportTask.model_validate(task.payload.model_dump())
        outcome = service.build_export(services, payload, TaskCall("q", "t", 0, 0))
    return outcome


def one(endpoint: str, count: int) -> dict[str, Any]:
    """Both runs for ``count`` images, in this (fresh) interpreter."""
    from shared.exports import service
    from shared.exports.models import ExportCreate

    services, ids = _world(endpoint, count)
    out = service.request_export(services, CLIENT, ExportCreate(asset_ids=ids))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    outcome = _build(services)
    wall = time.perf_counter() - started
    rss_growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    doc = service.get_export(services.exports, CLIENT, out.id)
    assert doc.status.value == "ready", outcome
    size = doc.size_bytes or 0

    # Again under tracemalloc: a rebuild (the export is marked failed, then asked for again).
    loaded = services.exports.load(CLIENT, out.id)
    services.exports.update(loaded, {"status": "failed"})
    service.request_export(services, CLIENT, ExportCreate(asset_ids=ids))
    tracemalloc.start()
    tracemalloc.reset_peak()
    _build(services)
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "images": count,
        "archive_mib": size / 2**20,
        "wall_s": wall,
        "mib_per_s": size / 2**20 / wall,
        "rss_growth_mib": rss_growth_kib / 1024,
        "traced_peak_mib": peak / 2**20,
        "outcome": outcome,
    }


def main() -> int:
    from dev.emulator import free_port

    port = free_port()
    moto = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        _wait(endpoint)
        kb = IMAGE_SIDE * IMAGE_SIDE * 3 // 1000
        print(f"\n== ZIP export: images of ~{kb} KB from moto (its own process), 8 MiB parts ==")
        for count in SIZES:
            out = subprocess.run(
                [sys.executable, "-m", "bench.exports", "--one", str(count), endpoint],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"  {row['images']:5d} images  archive {row['archive_mib']:7.1f} MiB  wall {row['wall_s']:6.2f} s "
                f"({row['mib_per_s']:5.1f} MiB/s)  peak RSS growth {row['rss_growth_mib']:6.1f} MiB  "
                f"traced peak {row['traced_peak_mib']:5.1f} MiB"
            )
    finally:
        moto.terminate()
        moto.wait(timeout=10)
    return 0


def _wait(endpoint: str) -> None:
    import httpx

    for _ in range(100):
        try:
            httpx.get(endpoint, timeout=1, trust_env=False)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("moto did not start")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--one":
        print(json.dumps(one(sys.argv[3], int(sys.argv[2]))))
        sys.exit(0)
    sys.exit(main())
