"""``make bench``: numbers, not pass/fail.

1. Cold import of every entry module in a fresh interpreter: total (with functions-framework, as a
   cold start pays it) and on top of functions-framework (what our code adds; target <= 150 ms),
   median of 7 runs after one discarded run that compiles any stale bytecode, plus which heavy
   libraries the import dragged in (should be none).
2. p50/p99 latency of create-product and list-products through the functions-framework app against
   the Firestore emulator (started here on a free port).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HEAVY = (
    "google.cloud.firestore",
    "google.cloud.tasks_v2",
    "boto3",
    "PIL",
    "jwt",
    "httpx",
    "grpc",
    "rembg",
    "onnxruntime",
)

_IMPORT_PROBE = """
import importlib.util, json, sys, time
t0 = time.perf_counter()
import functions_framework
t1 = time.perf_counter()
spec = importlib.util.spec_from_file_location("main", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
t2 = time.perf_counter()
heavy = [name for name in json.loads(sys.argv[2]) if name in sys.modules]
print(json.dumps({"framework_ms": (t1 - t0) * 1000, "ours_ms": (t2 - t1) * 1000, "heavy": heavy}))
"""


IMPORT_TARGET_MS = 150.0  # issue #9: each entry module's own import, median


def cold_imports(runs: int = 7) -> list[dict[str, Any]]:
    results = []
    # Bytecode may be written: any value of PYTHONDONTWRITEBYTECODE (even "0") stops it, and then
    # every run of a just-edited module would time the compiler, not the import.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(ROOT)
    for main in sorted((ROOT / "functions").glob("*/main.py")):
        samples = []
        for _ in range(runs + 1):
            out = subprocess.run(
                [sys.executable, "-c", _IMPORT_PROBE, str(main), json.dumps(HEAVY)],
                capture_output=True,
                text=True,
                check=True,
                env=env,
                cwd=ROOT,
            )
            samples.append(json.loads(out.stdout.strip().splitlines()[-1]))
        samples = samples[1:]  # the first run wrote any missing bytecode
        total = statistics.median(s["framework_ms"] + s["ours_ms"] for s in samples)
        ours = statistics.median(s["ours_ms"] for s in samples)
        results.append(
            {"function": main.parent.name, "total_ms": total, "ours_ms": ours, "heavy": samples[-1]["heavy"]}
        )
    return results


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def api_latency(requests: int = 200) -> dict[str, dict[str, float]]:
    from dev.emulator import FirestoreEmulator
    from tests.fakes import InMemoryObjectStore, RecordingTaskQueue

    emulator = FirestoreEmulator().start()
    os.environ["FIRESTORE_EMULATOR_HOST"] = emulator.host
    try:
        from google.cloud import firestore

        from dev.functions import load_function_apps
        from dev.jwt_issuer import DevIssuer
        from shared.auth import JwtVerifier
        from shared.config import Settings
        from shared.platform import Platform, set_platform

        issuer = DevIssuer(issuer="https://auth.bench", audience="bench")

        settings = Settings(epox_env="test", gcp_project="epox-bench", auth_issuer=issuer.issuer, auth_audience="bench")
        # The JWKS comes from memory here: the benchmark measures the API, not an HTTP fetch.
        verifier = JwtVerifier(
            jwks_url="memory://", issuer=issuer.issuer, audience="bench", algorithms=["EdDSA"], jwks_fetch=issuer.jwks
        )
        set_platform(
            Platform(
                settings,
                db=firestore.Client(project="epox-bench"),
                object_store=InMemoryObjectStore(),
                task_queue=RecordingTaskQueue(),
                jwt_verifier=verifier,
            )
        )
        app = load_function_apps(ROOT / "functions")["catalog_api"].test_client()
        headers = {"Authorization": f"Bearer {issuer.mint('bench-client')}"}
        app.get("/products", headers=headers)  # provision the client, warm the caches
        # A Scale-sized catalogue, so the benchmark measures the API and not the Free plan's 25 slots.
        firestore.Client(project="epox-bench").collection("clients").document("bench-client").set(
            {"billing": {"plan": "scale", "product_slots": 5000}}, merge=True
        )
        timings: dict[str, list[float]] = {"create_product": [], "list_products": []}
        for index in range(requests):
            started = time.perf_counter()
            response = app.post(
                "/products",
                json={"name": f"Product {index}", "sku": f"SKU-{index}", "category": "bench", "price": "9.99"},
                headers=headers,
            )
            timings["create_product"].append((time.perf_counter() - started) * 1000)
            assert response.status_code == 201, response.data
        for _ in range(requests):
            started = time.perf_counter()
            response = app.get("/products?limit=20&category=bench", headers=headers)
            timings["list_products"].append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200 and len(response.json["items"]) == 20
        set_platform(None)
        return {
            name: {"p50_ms": _percentile(values, 50), "p99_ms": _percentile(values, 99), "n": float(len(values))}
            for name, values in timings.items()
        }
    finally:
        emulator.stop()


def main() -> int:
    print(
        f"== cold import of entry modules (median of 7 fresh interpreters; ours target <= {IMPORT_TARGET_MS:.0f} ms) =="
    )
    for row in cold_imports():
        heavy = ", ".join(row["heavy"]) or "none"
        verdict = "ok" if row["ours_ms"] <= IMPORT_TARGET_MS else "OVER TARGET"
        print(
            f"  {row['function']:<14} total {row['total_ms']:6.1f} ms   ours (beyond functions-framework) "
            f"{row['ours_ms']:6.1f} ms {verdict:<11}  heavy libraries imported: {heavy}"
        )
    print("\n== catalog API latency against the Firestore emulator (in-process app, 200 requests each) ==")
    for name, stats in api_latency().items():
        print(f"  {name:<15} p50 {stats['p50_ms']:6.1f} ms   p99 {stats['p99_ms']:6.1f} ms   (n={int(stats['n'])})")
    from bench import ledger

    ledger.main([])
    from bench import generate

    generate.main()
    from bench import edit

    edit.main()
    from bench import imports

    imports.main()
    from bench import xlsx

    xlsx.main()
    from bench import events

    events.main()
    from bench import stores

    stores.main()
    from bench import sync

    sync.main()
    from bench import video

    video.main()
    from bench import exports

    exports.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
