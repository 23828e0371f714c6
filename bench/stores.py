"""``python -m bench.stores``: importing a Shopify catalog through the bulk path, against the Shopify stub
and the Firestore emulator, with the real httpx adapter and the functions-framework apps.

* reading the catalog (bulk operation run → polled → JSONL streamed into chunk files and the preview):
  wall time and peak traced memory for 1,000 and 5,000 products — memory must stay flat as the catalog
  grows (the JSONL is streamed, never held);
* the whole import of 5,000 products with their images (chunks through the task queue): wall time,
  products per second, Firestore writes per product.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SIZES = (1000, 5000)


def main() -> int:
    from dev.emulator import FirestoreEmulator

    emulator = FirestoreEmulator().start()
    os.environ["FIRESTORE_EMULATOR_HOST"] = emulator.host
    try:
        return _run()
    finally:
        emulator.stop()


def _run() -> int:
    from bench.generate import _record_writes

    apps = _apps()
    print("== store import through Shopify's bulk path (stub shop, Firestore emulator, real httpx adapter) ==")
    full: dict[str, Any] = {}
    for size in SIZES:
        numbers = _import_catalog(
            apps, size, run_import=size == SIZES[-1], record=_record_writes if size == SIZES[-1] else None
        )
        print(
            f"  read {size:>5} products (bulk → JSONL → chunks)  {numbers['prepare_s']:7.2f} s   "
            f"peak traced memory {numbers['prepare_peak_mib']:6.2f} MiB   ({numbers['chunks']} chunk files)"
        )
        if "import_s" in numbers:
            full = numbers
    if full:
        print(
            f"  import {SIZES[-1]} products with {full['images']} images   {full['import_s']:7.2f} s   "
            f"({SIZES[-1] / full['import_s']:.0f} products/s, {full['deliveries']} task deliveries)"
        )
        print(
            f"  Firestore writes per product              {full['writes'] / SIZES[-1]:7.2f}    "
            f"({full['writes']} in all, import status {full['status']})"
        )
    return 0


def _apps() -> dict[str, Any]:
    from dev.functions import load_function_apps

    return load_function_apps(ROOT / "functions")


def _disk_store(directory: Path) -> Any:
    """The object store on disk (R2 is another service: its objects are not this process's memory)."""
    from tests.fakes import InMemoryObjectStore

    class DiskObjectStore(InMemoryObjectStore):
        def _path(self, key: str) -> Path:
            return directory / key.replace("/", "__")

        def put(self, key: str, data: bytes, content_type: str, *, cache_control: str | None = None) -> None:
            self._path(key).write_bytes(data)
            self.objects[key] = (b"", content_type)

        def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
            if key not in self.objects:
                return super().get(key)
            data = self._path(key).read_bytes()
            return data if max_bytes is None else data[: max_bytes + 1]

    return DiskObjectStore()


class _RemoteShop:
    def __init__(self, url: str, shop: str, client_id: str) -> None:
        self.url, self.shop, self.client_id = url, shop, client_id


@contextmanager
def _stub_process(size: int) -> Iterator[_RemoteShop]:
    """The Shopify stub in a process of its own: its catalog, GraphQL execution and JSONL stay out of the
    memory traced here and off this process's CPU."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dev.stubs.shopify", "--products", str(size), "--image-size", "32", "--bulk-polls", "2"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        yield _RemoteShop(ready["url"], ready["shop"], ready["client_id"])
    finally:
        process.terminate()
        process.wait(timeout=10)


def bench_settings(project: str, issuer: str, shopify_client_id: str, shopify_url: str) -> Any:
    """The settings the store benches run the functions with: offline AI, shared-secret tasks, the
    Shopify stub's app and address, a fresh local credential key."""
    from dev.stubs.shopify import CLIENT_SECRET
    from shared.config import Settings
    from shared.credentials import LocalKeyring

    return Settings(
        epox_env="test",
        gcp_project=project,
        auth_issuer=issuer,
        auth_audience="bench",
        tasks_dev_secret="bench",
        tasks_auth_mode="shared_secret",
        ai_engine="offline",
        shopify_client_id=shopify_client_id,
        shopify_client_secret=CLIENT_SECRET,
        shopify_admin_base_url=shopify_url,
        store_credential_keys=json.dumps({"v1": LocalKeyring.generate_key()}),
        store_credential_key_version="v1",
        store_callback_base_url="http://bench/store_oauth",
        import_chunk_rows=50,
        import_parallel_chunks=8,
    )


def _import_catalog(apps: dict[str, Any], size: int, *, run_import: bool, record: Any) -> dict[str, Any]:
    import tempfile

    import httpx
    from google.cloud import firestore

    from dev.dispatcher import TaskDispatcher
    from dev.jwt_issuer import DevIssuer
    from shared.auth import JwtVerifier
    from shared.platform import Platform, set_platform
    from shared.safe_fetch import AddressPolicy, SafeFetcher

    issuer = DevIssuer(issuer="https://auth.bench", audience="bench")
    deliveries = 0

    def transport(url: str, headers: dict[str, str], body: bytes) -> tuple[int, float | None]:
        entry, _, path = url.split("://", 1)[1].split("/", 1)[1].partition("/")
        response = apps[entry].test_client().post("/" + path, data=body, headers=headers)
        return response.status_code, None

    with _stub_process(size) as stub, tempfile.TemporaryDirectory() as scratch:
        from ipaddress import ip_network

        settings = bench_settings(f"epox-bench-stores-{size}", issuer.issuer, stub.client_id, stub.url)
        dispatcher = TaskDispatcher(
            transport, secret="bench", target_base_url="http://bench", min_backoff=0, max_backoff=0
        )
        fetcher = SafeFetcher(policy=AddressPolicy(extra_allowed_networks=[ip_network("127.0.0.1/32")]))
        platform = Platform(
            settings,
            db=firestore.Client(project=settings.gcp_project),
            object_store=_disk_store(Path(scratch)),
            task_queue=dispatcher,
            fetcher=fetcher,
            jwt_verifier=JwtVerifier(
                jwks_url="memory://",
                issuer=issuer.issuer,
                audience="bench",
                algorithms=["EdDSA"],
                jwks_fetch=issuer.jwks,
            ),
        )
        set_platform(platform)
        try:
            client_id = f"bench-store-{size}"
            headers = {"Authorization": f"Bearer {issuer.mint(client_id)}"}
            platform.db.collection("clients").document(client_id).set(
                {"billing": {"plan": "scale", "product_slots": 10 * size}}, merge=True
            )
            oauth = apps["store_oauth"].test_client()
            started = oauth.post("/stores/shopify/connect", json={"shop": stub.shop}, headers=headers)
            assert started.status_code == 200, started.data
            location = httpx.get(started.json["authorize_url"], follow_redirects=False).headers["location"]
            landed = oauth.get(location.removeprefix("http://bench/store_oauth"))
            assert landed.status_code == 302, landed.data

            tracemalloc.start()
            began = time.perf_counter()
            created = oauth.post("/stores/imports", json={}, headers=headers)
            assert created.status_code == 202, created.data
            import_id = created.json["id"]
            deliveries += dispatcher.run_until_idle(fast_forward=True)
            prepare_s = time.perf_counter() - began
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            catalog = apps["catalog_api"].test_client()
            draft = catalog.get(f"/imports/{import_id}", headers=headers).json
            assert draft["status"] == "draft", draft
            numbers: dict[str, Any] = {
                "prepare_s": prepare_s,
                "prepare_peak_mib": peak / 2**20,
                "chunks": draft["progress"]["chunks_total"],
            }
            if run_import:
                writes, _ = record()
                began = time.perf_counter()
                assert catalog.post(f"/imports/{import_id}/start", headers=headers).status_code == 202
                deliveries += dispatcher.run_until_idle(fast_forward=True)
                numbers["import_s"] = time.perf_counter() - began
                done = catalog.get(f"/imports/{import_id}", headers=headers).json
                numbers.update(
                    status=done["status"],
                    images=done["progress"]["images_imported"],
                    writes=sum(writes.values()),
                    deliveries=deliveries,
                )
            return numbers
        finally:
            set_platform(None)
            fetcher.close()


if __name__ == "__main__":
    raise SystemExit(main())
