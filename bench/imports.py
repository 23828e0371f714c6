"""``python -m bench.imports``: numbers for CSV imports.

1. Parse memory: the peak of Python allocations (tracemalloc) while ``parse_csv`` and the preview
   run on a Shopify-style export of 1 MB and of 10 MB (UTF-8, and the 10 MB one also in cp1250,
   which goes through encoding detection), and on the security review's 100 KB file (200 columns,
   50,000 one-cell rows, which padding turned into ~350 MiB; now refused by the cells cap). Each in a
   fresh interpreter. tracemalloc sees every allocation here: the csv module, str and dict all use
   Python's allocator.
2. One import chunk delivery against an image host that answers each image after 20 s: a chunk of
   25 rows with one image each, the default fetch limits (each download gives up after its 10 s read
   timeout, within FETCH_TIMEOUT_SECONDS) and ``IMPORT_CHUNK_BUDGET_SECONDS=30`` (the default, 120,
   only makes the wait longer). Without a budget the delivery took every download in turn (25 x 10 s
   here; hours for 20 images a row and retries); with it, the delivery ends after the budget plus
   the download in flight. Against the Firestore emulator (started here), an in-memory object store
   and the real SSRF-safe fetcher on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
IMAGE_DELAY_SECONDS = 20.0
CHUNK_BUDGET_SECONDS = 30.0
CHUNK_ROWS = 25

_COLUMNS = [
    "Handle", "Title", "Body (HTML)", "Vendor", "Product Category", "Type", "Tags", "Published",
    "Option1 Name", "Option1 Value", "Variant SKU", "Variant Grams", "Variant Inventory Qty",
    "Variant Price", "Variant Compare At Price", "Variant Requires Shipping", "Variant Taxable",
    "Variant Barcode", "Image Src", "Image Position", "Image Alt Text", "SEO Title", "SEO Description",
    "Status",
]  # fmt: skip


def shopify_csv(target_bytes: int, text: str = "Handmade stoneware mug") -> str:
    """A Shopify-style product export of about ``target_bytes`` (as UTF-8)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(_COLUMNS)
    row = 0
    while buffer.tell() < target_bytes:
        description = f"<p>{text} no. {row}, glazed by hand; dishwasher safe, 350 ml.</p>" * 4
        writer.writerow(
            [
                f"mug-{row}", f"{text} {row}", description, "Epox Ceramics", "Home > Kitchen", "Mug",
                "ceramic, handmade, kitchen", "TRUE", "Colour", "Blue", f"MUG-{row:06d}", "350", "12",
                "24.90", "29.90", "TRUE", "TRUE", f"40{row:011d}", f"https://cdn.example.com/p/{row}/1.jpg",
                "1", f"{text} {row}", f"{text} {row} | Epox", "A mug for every morning.", "active",
            ]
        )  # fmt: skip
        row += 1
    return buffer.getvalue()


def reviewed_ragged_csv() -> bytes:
    """The security review's file: a 200-column header, then 50,000 rows of one cell (~100 KB)."""
    return ",".join(f"c{i}" for i in range(200)).encode() + b"\n" + b"x\n" * 49_999


_PROBE = """
import json, sys, time, tracemalloc
sys.path.insert(0, sys.argv[1])
from shared.catalog.csv_parsing import auto_map, build_preview, parse_csv
from shared.errors import EpoxError
data = open(sys.argv[2], "rb").read()
tracemalloc.start()
started = time.perf_counter()
try:
    parsed = parse_csv(data)
    preview = build_preview(parsed, auto_map(parsed.headers))
    outcome = f"{len(parsed.rows)} rows, {parsed.encoding}"
except EpoxError as error:
    outcome = f"refused: {error.code} ({error.detail[:60]})"
elapsed = time.perf_counter() - started
peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({"peak": peak, "seconds": elapsed, "outcome": outcome}))
"""


def parse_memory(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(ROOT), str(path)], capture_output=True, text=True, check=True, cwd=ROOT
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def parse_numbers() -> None:
    import tempfile

    print("== CSV parse + preview memory (tracemalloc peak, fresh interpreter each) ==")
    files = {
        "1 MB Shopify export (UTF-8)": shopify_csv(1_000_000).encode(),
        "10 MB Shopify export (UTF-8)": shopify_csv(10_000_000).encode(),
        "10 MB Shopify export (cp1250, detected)": shopify_csv(10_000_000, "Žluťoučký hrnek").encode("cp1250"),
        "review's 100 KB ragged file": reviewed_ragged_csv(),
    }
    with tempfile.TemporaryDirectory() as folder:
        for label, data in files.items():
            path = Path(folder) / "file.csv"
            path.write_bytes(data)
            result = parse_memory(path)
            size = len(data)
            print(
                f"  {label:<42} {size / 1e6:6.2f} MB  peak {result['peak'] / 2**20:7.1f} MiB "
                f"({result['peak'] / size:5.1f}x the file)  {result['seconds']:5.2f} s  {result['outcome']}"
            )


class _SlowImages(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    body = b""

    def do_GET(self) -> None:
        time.sleep(IMAGE_DELAY_SECONDS)
        with contextlib.suppress(OSError):  # the fetcher gave up long ago
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(self.body)))
            self.end_headers()
            self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        return


def chunk_delivery() -> None:
    from dev.emulator import FirestoreEmulator

    print(
        f"\n== one import chunk delivery, image host answering in {IMAGE_DELAY_SECONDS:.0f} s per image "
        f"({CHUNK_ROWS} rows x 1 image, budget {CHUNK_BUDGET_SECONDS:.0f} s, default fetch limits) =="
    )
    emulator = FirestoreEmulator().start()
    os.environ["FIRESTORE_EMULATOR_HOST"] = emulator.host
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowImages)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _chunk_delivery(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
        emulator.stop()


def _chunk_delivery(host: str) -> None:
    from datetime import UTC, datetime
    from ipaddress import ip_network

    from google.cloud import firestore
    from PIL import Image

    from shared.adapters.firestore.catalog import firestore_catalog
    from shared.catalog import imports
    from shared.catalog.models import ImportChunkTask, ImportCreate, UploadCreate, UploadPurpose
    from shared.catalog.policies import import_policy, upload_policy
    from shared.catalog.uploads import complete_upload, create_upload
    from shared.config import Settings
    from shared.safe_fetch import AddressPolicy, SafeFetcher
    from shared.tasks import RetryTask, TaskCall
    from tests.fakes import InMemoryObjectStore, RecordingTaskQueue

    image = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 90, 160)).save(image, format="PNG")
    _SlowImages.body = image.getvalue()
    settings = Settings(
        epox_env="test",
        gcp_project="epox-bench",
        import_chunk_rows=CHUNK_ROWS,
        import_chunk_budget_seconds=CHUNK_BUDGET_SECONDS,
    )
    db = firestore.Client(project="epox-bench")
    catalog = firestore_catalog(db)
    store = InMemoryObjectStore()
    queue = RecordingTaskQueue()
    client_id = "bench-import"
    now = datetime.now(UTC)
    data = ("name,sku,image\n" + "".join(f"Mug {r},M-{r},{host}/{r}.png\n" for r in range(CHUNK_ROWS))).encode()
    uploads = upload_policy(settings)
    request = UploadCreate(
        filename="p.csv", content_type="text/csv", size_bytes=len(data), purpose=UploadPurpose.CSV_IMPORT
    )
    slot = create_upload(catalog, store, client_id, request, uploads, now)
    store.put(f"uploads/{client_id}/{slot.id}", data, "text/csv")
    complete_upload(catalog, store, client_id, slot.id, uploads, now)
    policy = import_policy(settings)
    draft = imports.create_import(catalog, store, client_id, ImportCreate(upload_id=slot.id), policy, now)
    imports.start_import(catalog, store, queue, client_id, draft.id, policy, now)
    db.collection("clients").document(client_id).set({"billing": {"plan": "scale", "product_slots": 5000}}, merge=True)
    with SafeFetcher(policy=AddressPolicy(extra_allowed_networks=[ip_network("127.0.0.1/32")])) as fetcher:
        task = ImportChunkTask(client_id=client_id, import_id=draft.id, chunk=0)
        call = TaskCall(queue="bench", name="bench", retry_count=0, execution_count=0)
        started = time.perf_counter()
        try:
            outcome = imports.run_import_chunk(catalog, store, queue, fetcher, task, call, policy, now)
        except RetryTask as retry:
            outcome = f"answered 503, the queue retries: {retry.detail}"
        elapsed = time.perf_counter() - started
        limits = policy.fetch_limits
    progress = imports.get_import(catalog.imports, client_id, draft.id).progress
    follow_up = [t.payload for t in queue.tasks if isinstance(t.payload, ImportChunkTask) and t.payload.row]
    download = min(limits.read_timeout, limits.total_timeout, IMAGE_DELAY_SECONDS)
    print(
        f"  delivery wall time {elapsed:6.1f} s (bound: budget + one download = "
        f"{CHUNK_BUDGET_SECONDS + download:.0f} s; every download in turn: {CHUNK_ROWS * download:.0f} s)"
    )
    print(f"  rows recorded {progress.processed_rows}/{progress.total_rows}, images {progress.images_imported}")
    continues = f"row {follow_up[0].row + 1}" if follow_up else "the same position"
    print(f"  next: the chunk goes on from {continues} ({outcome})")
    dispatch = {t.dispatch_deadline for t in queue.tasks}
    print(f"  chunk tasks ask for a dispatch deadline of {', '.join(str(d) for d in dispatch)}")


def main() -> int:
    parse_numbers()
    chunk_delivery()
    return 0


if __name__ == "__main__":
    sys.exit(main())
