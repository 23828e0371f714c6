"""Property: whatever Cloud Tasks does to a CSV import's chunk tasks, the import ends ``completed`` or
``failed`` within a few reaper runs, every row is imported once and counted once, and no asset is
without its files.

Real parts: the import service (``start_import``, ``run_import_chunk``, ``reap_stuck_imports``),
Firestore (the emulator, a fresh project per example, so the reaper sees that example's import only),
R2 (moto) and the SSRF-safe fetcher against a local image server. What Hypothesis controls:

* each chunk task's fate (:class:`ChaosQueue`, Cloud Tasks' contract: named tasks are refused while
  they exist and for an hour after they end, failed deliveries are retried up to MAX_ATTEMPTS
  times): delivered normally, lost (never reaches a worker), delivered twice (the answer is lost),
  delayed past reaper runs, failing once before the worker, exhausted (the worker crashes on every
  attempt, or cannot read the chunk's rows), or delivered while its part commit lands but answers
  "unavailable";
* the order in which due tasks are delivered, and whether a delivery's time budget runs out before
  each image (so chunks go on in tasks of their own);
* the file: 1 to 8 rows of 0 to 2 images, chunks of 3 rows, a window of 1 or 2 chunks.

Time moves 15 minutes per reaper run. Chaos lasts CHAOS_PASSES runs; then the import must end within
SETTLE_PASSES more. Budget: EXAMPLES examples; ``EPOX_IMPORT_CHAOS_EXAMPLES=<n>`` runs a soak.
"""

from __future__ import annotations

import io
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as budget
from hypothesis import strategies as st
from PIL import Image

from shared.catalog import imports
from shared.catalog.models import ImportChunkTask, ImportCreate, ImportStatus, UploadCreate, UploadPurpose
from shared.catalog.policies import import_policy, upload_policy
from shared.catalog.uploads import complete_upload, create_upload
from shared.errors import UpstreamUnavailable
from shared.storage import ObjectInfo, ObjectStore, PresignedUpload
from shared.tasks import TaskCall, TaskRequest
from tests.chaos_tasks import ChaosQueue, Clock
from tests.firestore_faults import FaultyClient

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("EPOX_IMPORT_CHAOS_EXAMPLES", "20"))
START = datetime(2026, 5, 4, 9, 0, 0, tzinfo=UTC)
RUN_EVERY = timedelta(minutes=15)  # the reaper's schedule
MAX_ATTEMPTS = 3
CHAOS_PASSES = 4
SETTLE_PASSES = 6
CLIENT = "c_import_chaos"
FATES = ("normal", "lost", "twice", "delayed", "flaky", "crash", "unreadable", "commit_fault")
PASSES_NEEDED: Counter[int] = Counter()  # reaper runs after the chaos, per example (printed at the end)
SEEN: Counter[str] = Counter()


# -- the image host -------------------------------------------------------------------------------


class _Images(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        buffer = io.BytesIO()
        Image.new("RGB", (24, 16), (len(self.path) * 7 % 256, 90, 160)).save(buffer, format="PNG")
        body = buffer.getvalue()
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture(scope="module")
def image_host() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def fetcher() -> Iterator[Any]:
    from ipaddress import ip_network

    from shared.safe_fetch import AddressPolicy, SafeFetcher

    with SafeFetcher(policy=AddressPolicy(extra_allowed_networks=[ip_network("127.0.0.1/32")])) as safe:
        yield safe


# -- what Hypothesis controls ---------------------------------------------------------------------


class BudgetClock:
    """The monotonic clock a delivery's time budget is measured on: while ``chaos``, each look at it
    may find the budget spent (so the delivery hands the rest of its chunk on)."""

    def __init__(self, draw: Callable[[Any], Any]) -> None:
        self.draw = draw
        self.chaos = True
        self.value = 0.0

    def __call__(self) -> float:
        if self.chaos and self.draw(st.booleans()):
            self.value += 10_000.0
        return self.value


class Faults:
    """Which failures the current delivery meets: the worker crashing, the chunk rows unreadable."""

    crash = False
    unreadable = False


class ChaosFetcher:
    """The real fetcher; while the delivery is a crashing one, the worker dies at its first download."""

    def __init__(self, inner: Any, faults: Faults) -> None:
        self.inner = inner
        self.faults = faults

    def fetch(self, url: str, **kwargs: Any) -> Any:
        if self.faults.crash:
            raise RuntimeError("the worker crashed")
        return self.inner.fetch(url, **kwargs)


class ChaosStore(ObjectStore):
    """The real (moto) store; while the delivery's fate says so, chunk files cannot be read."""

    def __init__(self, inner: ObjectStore, faults: Faults) -> None:
        self.inner = inner
        self.faults = faults

    def put(self, key: str, data: bytes, content_type: str, *, cache_control: str | None = None) -> None:
        self.inner.put(key, data, content_type, cache_control=cache_control)

    def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        if self.faults.unreadable and "/chunk-" in key:
            raise UpstreamUnavailable("the object store is unavailable")
        return self.inner.get(key, max_bytes=max_bytes)

    def head(self, key: str) -> ObjectInfo | None:
        return self.inner.head(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def presigned_get(self, key: str, *, expires_in: int, download_name: str | None = None) -> str:
        return self.inner.presigned_get(key, expires_in=expires_in, download_name=download_name)

    def presigned_put(self, key: str, *, content_type: str, content_length: int, expires_in: int) -> PresignedUpload:
        return self.inner.presigned_put(
            key, content_type=content_type, content_length=content_length, expires_in=expires_in
        )

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Any:
        return self.inner.iter_chunks(key, chunk_size)

    def start_multipart(self, key: str, content_type: str) -> str:
        return self.inner.start_multipart(key, content_type)

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> Any:
        return self.inner.upload_part(key, upload_id, number, data)

    def complete_multipart(self, key: str, upload_id: str, parts: Any) -> None:
        self.inner.complete_multipart(key, upload_id, parts)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        self.inner.abort_multipart(key, upload_id)


@pytest.fixture(scope="module", autouse=True)
def report_passes() -> Iterator[None]:
    yield
    needed = dict(sorted(PASSES_NEEDED.items()))
    print(f"\nimport chaos: reaper runs needed after the chaos (runs: examples) {needed}; fates seen: {dict(SEEN)}")


# -- the property ---------------------------------------------------------------------------------


def _csv(image_host: str, images_per_row: list[int]) -> bytes:
    lines = ["name,sku,images"]
    for row, count in enumerate(images_per_row):
        urls = " ".join(f"{image_host}/img/{row}-{k}.png" for k in range(count))
        lines.append(f"Product {row},SKU-{row},{urls}")
    return ("\n".join(lines) + "\n").encode()


@budget(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), images_per_row=st.lists(st.integers(0, 2), min_size=1, max_size=8), window=st.integers(1, 2))
def test_every_import_ends_with_each_row_imported_once(
    data: st.DataObject,
    images_per_row: list[int],
    window: int,
    settings: Any,
    object_store: Any,
    image_host: str,
    fetcher: Any,
) -> None:
    from shared.adapters.firestore.catalog import assets_ref, firestore_catalog, products_ref

    clock = Clock(START)
    db = FaultyClient()
    faults = Faults()
    store = ChaosStore(object_store, faults)
    chunk_commits: Callable[[list[str]], bool] = lambda paths: any("/chunks/" in p for p in paths)  # noqa: E731
    queue = ChaosQueue(clock, data.draw, db, FATES, faulty_commit=chunk_commits, max_attempts=MAX_ATTEMPTS)
    budget_clock = BudgetClock(data.draw)
    chaos_fetcher = ChaosFetcher(fetcher, faults)
    policy = import_policy(
        settings.model_copy(
            update={"import_chunk_rows": 3, "import_parallel_chunks": window, "tasks_max_attempts": MAX_ATTEMPTS}
        )
    )

    repos = firestore_catalog(db)

    def handle(task: TaskRequest, retry_count: int, fate: str) -> object:
        payload = task.payload
        assert isinstance(payload, ImportChunkTask) and task.path == imports.CHUNK_PATH
        faults.crash, faults.unreadable = fate == "crash", fate == "unreadable"
        try:
            call = TaskCall(queue="q", name=task.name or "", retry_count=retry_count, execution_count=retry_count)
            return imports.run_import_chunk(
                repos, store, queue, chaos_fetcher, payload, call, policy, clock.now, clock=budget_clock
            )
        finally:
            faults.crash = faults.unreadable = False

    # The merchant's steps: upload the CSV, preview, start.
    data_csv = _csv(image_host, images_per_row)
    uploads = upload_policy(settings)
    slot = create_upload(
        repos,
        store,
        CLIENT,
        UploadCreate(
            filename="p.csv", content_type="text/csv", size_bytes=len(data_csv), purpose=UploadPurpose.CSV_IMPORT
        ),
        uploads,
        clock.now,
    )
    store.put(f"uploads/{CLIENT}/{slot.id}", data_csv, "text/csv")
    complete_upload(repos, store, CLIENT, slot.id, uploads, clock.now)
    draft = imports.create_import(repos, store, CLIENT, ImportCreate(upload_id=slot.id), policy, clock.now)
    imports.start_import(repos, store, queue, CLIENT, draft.id, policy, clock.now)

    for run in range(CHAOS_PASSES + SETTLE_PASSES):
        if run == CHAOS_PASSES:
            queue.chaos = budget_clock.chaos = False
        queue.deliver_until(clock.now + RUN_EVERY, handle)
        clock.now = max(clock.now, START + RUN_EVERY * (run + 1))
        imports.reap_stuck_imports(repos, store, queue, policy, clock.now)
        if imports.get_import(repos.imports, CLIENT, draft.id).status in (ImportStatus.COMPLETED, ImportStatus.FAILED):
            PASSES_NEEDED[max(0, run + 1 - CHAOS_PASSES)] += 1
            break
    SEEN.update(queue.fates)

    done = imports.get_import(repos.imports, CLIENT, draft.id)
    progress = done.progress
    assert done.status in (ImportStatus.COMPLETED, ImportStatus.FAILED), (queue.fates, progress)
    rows = len(images_per_row)
    assert (progress.processed_rows, progress.total_rows) == (rows, rows)
    assert progress.chunks_done == progress.chunks_total == -(-rows // 3)
    # Each row imported once: products have ids derived from the row, and the counts match them.
    products = {s.id: s.to_dict() for s in products_ref(db, CLIENT).stream()}
    assert {p["import_id"] for p in products.values()} <= {draft.id}
    assert len(products) == progress.created_products
    assert progress.created_products + progress.failed_rows == rows
    # Each image of an imported row counted once, as imported (it is in the library) or failed.
    library = {s.id: s.to_dict() for s in assets_ref(db, CLIENT).stream()}
    sku_images = {f"SKU-{row}": count for row, count in enumerate(images_per_row)}
    expected_images = sum(sku_images[p["sku"]] for p in products.values())
    assert len(library) == progress.images_imported
    assert progress.images_imported + progress.images_failed == expected_images
    assert {a["product_id"] for a in library.values()} <= set(products)
    # No asset without its files.
    for asset in library.values():
        assert object_store.head(asset["key"]) is not None and object_store.head(asset["thumbnail_key"]) is not None
    # A row that was not imported is in the report (by its row, unless its rows could not even be read).
    report = imports.error_report_csv(repos.imports, CLIENT, draft.id).splitlines()[1:]
    reported = {line.split(",", 1)[0] for line in report}
    missing = {str(row + 2) for row in range(rows) if f"SKU-{row}" not in {p["sku"] for p in products.values()}}
    assert missing <= reported or "" in reported, (missing, report)
    if done.status is ImportStatus.FAILED:
        assert progress.chunks_failed == progress.chunks_total and not products
