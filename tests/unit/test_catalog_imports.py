"""CSV import bookkeeping against the in-memory repositories: chunks recorded once with exact
progress, slots shared with the import, failed chunks, the reaper, and oversized previews (no
emulator)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import pytest

from shared.catalog import imports, products, uploads
from shared.catalog.models import (
    ImportChunkTask,
    ImportCreate,
    ImportStatus,
    ProductCreate,
    UploadCreate,
    UploadPurpose,
)
from shared.catalog.ports import CatalogRepositories, Found
from shared.imaging import ImageLimits
from shared.safe_fetch import FetchedResource, FetchLimits, FetchTemporarilyFailed, SafeFetcher
from shared.tasks import RetryTask, TaskCall
from tests import images
from tests.fakes import InMemoryObjectStore, RecordingTaskQueue
from tests.fakes_catalog import InMemoryImportRepository, InMemoryProductRepository, in_memory_catalog

CLIENT = "client_a"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = imports.ImportPolicy(
    chunk_rows=2,
    max_rows=1000,
    csv_max_bytes=1_000_000,
    image_limits=ImageLimits(),
    thumbnail_max_side=16,
    max_attempts=3,
    fetch_limits=FetchLimits(),
    parallel_chunks=2,
    stale_after=timedelta(minutes=30),
)
UPLOADS = uploads.UploadPolicy(
    image_max_bytes=1_000_000,
    csv_max_bytes=1_000_000,
    presign_expiry_seconds=600,
    image_limits=ImageLimits(),
    thumbnail_max_side=16,
)


class TableFetcher(SafeFetcher):
    """Answers from a table of URLs; a URL in ``flaky`` fails temporarily."""

    def __init__(self, table: dict[str, bytes], flaky: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.table, self.flaky = table, flaky

    def fetch(
        self, url: str, *, limits: FetchLimits | None = None, headers: Mapping[str, str] | None = None
    ) -> FetchedResource:
        if url in self.flaky:
            raise FetchTemporarilyFailed(f"{url} is busy")
        return FetchedResource(url=url, status=200, content_type="image/png", body=self.table[url])


def setup(slots: int = 100) -> tuple[CatalogRepositories, InMemoryObjectStore, RecordingTaskQueue]:
    repos = in_memory_catalog()
    assert isinstance(repos.products, InMemoryProductRepository)
    repos.products.billing[CLIENT] = {"plan": "starter", "product_slots": slots}
    return repos, InMemoryObjectStore(), RecordingTaskQueue()


def draft(repos: CatalogRepositories, store: InMemoryObjectStore, body: bytes) -> str:
    data = UploadCreate(
        filename="p.csv", content_type="text/csv", size_bytes=len(body), purpose=UploadPurpose.CSV_IMPORT
    )
    upload_id = uploads.create_upload(repos, store, CLIENT, data, UPLOADS, NOW).id
    store.put(uploads.raw_upload_key(CLIENT, upload_id), body, "text/csv")
    uploads.complete_upload(repos, store, CLIENT, upload_id, UPLOADS, NOW)
    return imports.create_import(repos, store, CLIENT, ImportCreate(upload_id=upload_id), POLICY, NOW).id


def csv(rows: list[tuple[str, str]]) -> bytes:
    return ("name,image_url\n" + "".join(f"{name},{url}\n" for name, url in rows)).encode()


def deliver_all(
    repos: CatalogRepositories,
    store: InMemoryObjectStore,
    queue: RecordingTaskQueue,
    fetcher: SafeFetcher,
    *,
    retry_count: int = 0,
) -> list[str]:
    outcomes = []
    while queue.tasks:
        task = queue.tasks.pop(0)
        payload = task.payload
        assert isinstance(payload, ImportChunkTask)
        call = TaskCall(queue="q", name=task.name or "", retry_count=retry_count, execution_count=retry_count)
        outcomes.append(imports.run_import_chunk(repos, store, queue, fetcher, payload, call, POLICY, NOW))
    return outcomes


def test_an_import_records_every_chunk_once_and_completes_with_exact_progress() -> None:
    repos, store, queue = setup(slots=4)
    products.create_product(repos.products, CLIENT, ProductCreate(name="Manual"), NOW)
    photo = images.png((12, 8))
    rows = [(f"Item {n}", f"https://img.test/{n}.png" if n < 2 else "") for n in range(5)]
    import_id = draft(repos, store, csv(rows))
    started = imports.start_import(repos, store, queue, CLIENT, import_id, POLICY, NOW)
    assert (started.status, started.progress.chunks_total, len(queue.tasks)) == (ImportStatus.QUEUED, 3, 2)

    fetcher = TableFetcher({f"https://img.test/{n}.png": photo for n in range(2)})
    deliver_all(repos, store, queue, fetcher)

    done = imports.get_import(repos.imports, CLIENT, import_id)
    assert done.status is ImportStatus.COMPLETED and done.finished_at == NOW
    progress = done.progress
    assert (progress.processed_rows, progress.created_products, progress.failed_rows) == (5, 3, 2)
    assert (progress.images_imported, progress.images_failed, progress.chunks_done) == (2, 0, 3)
    assert products.product_usage(repos.products, CLIENT).used == 4  # the plan's slots, exactly
    refused = [
        line for line in imports.error_report_csv(repos.imports, CLIENT, import_id).splitlines() if "slot" in line
    ]
    assert [line.split(",")[0] for line in refused] == ["5", "6"]  # spreadsheet rows of the last two items

    # A redelivered chunk finds its part recorded: nothing is counted or created twice.
    again = ImportChunkTask(client_id=CLIENT, import_id=import_id, chunk=0)
    call = TaskCall(queue="q", name="again", retry_count=0, execution_count=0)
    imports.run_import_chunk(repos, store, queue, fetcher, again, call, POLICY, NOW)
    assert imports.get_import(repos.imports, CLIENT, import_id).progress == progress


def test_a_part_recorded_by_another_delivery_stands() -> None:
    repos, store, queue = setup()
    import_id = draft(repos, store, csv([("A", "")]))
    imports.start_import(repos, store, queue, CLIENT, import_id, POLICY, NOW)
    assert isinstance(repos.imports, InMemoryImportRepository)
    doc = imports.get_import(repos.imports, CLIENT, import_id)
    theirs = imports._Part(chunk=0, start=(0, 0), end=(1, 0), rows=1, created=1)
    ours = imports._Part(chunk=0, start=(0, 0), end=(1, 0), rows=1, failed_rows=1, failed=True)
    assert imports._record_part(repos.imports, doc, theirs, NOW) is theirs
    kept = imports._record_part(repos.imports, doc, ours, NOW)
    assert not kept.failed
    progress = imports.get_import(repos.imports, CLIENT, import_id).progress
    assert (progress.processed_rows, progress.created_products, progress.failed_rows) == (1, 1, 0)


def test_transient_image_failures_retry_the_chunk_and_are_reported_on_the_last_attempt() -> None:
    repos, store, queue = setup()
    import_id = draft(repos, store, csv([("A", "https://img.test/a.png")]))
    imports.start_import(repos, store, queue, CLIENT, import_id, POLICY, NOW)
    fetcher = TableFetcher({}, flaky=frozenset({"https://img.test/a.png"}))
    task = queue.tasks[0]
    with pytest.raises(RetryTask):
        deliver_all(repos, store, queue, fetcher)
    queue.tasks.insert(0, task)
    deliver_all(repos, store, queue, fetcher, retry_count=POLICY.max_attempts - 1)
    done = imports.get_import(repos.imports, CLIENT, import_id)
    assert done.status is ImportStatus.COMPLETED
    assert (done.progress.created_products, done.progress.images_failed) == (1, 1)
    assert "fetch_temporarily_failed" in imports.error_report_csv(repos.imports, CLIENT, import_id)


def test_an_import_whose_every_chunk_failed_ends_failed() -> None:
    repos, store, queue = setup()
    import_id = draft(repos, store, csv([("A", ""), ("B", ""), ("C", "")]))
    imports.start_import(repos, store, queue, CLIENT, import_id, POLICY, NOW)

    class Broken(InMemoryProductRepository):
        def read_slots(self, client_id: str, product_ids: object) -> object:  # type: ignore[override]
            raise ConnectionError("products unreachable")

        def existing(self, client_id: str, product_ids: object) -> set[str]:  # type: ignore[override]
            return set()

    broken = CatalogRepositories(products=Broken(), assets=repos.assets, uploads=repos.uploads, imports=repos.imports)
    deliver_all(broken, store, queue, TableFetcher({}), retry_count=POLICY.max_attempts - 1)
    done = imports.get_import(repos.imports, CLIENT, import_id)
    assert done.status is ImportStatus.FAILED and done.failure
    assert (done.progress.chunks_failed, done.progress.failed_rows) == (2, 3)


def test_the_reaper_enqueues_a_lost_chunk_again_then_records_it_failed() -> None:
    repos, store, queue = setup()
    import_id = draft(repos, store, csv([("A", ""), ("B", "")]))
    imports.start_import(repos, store, queue, CLIENT, import_id, POLICY, NOW)
    queue.tasks.clear()  # the task was lost
    assert imports.reap_stuck_imports(repos, store, queue, POLICY, NOW + timedelta(minutes=5)).imports_checked == 0
    when = NOW
    for attempt in range(imports.MAX_REQUEUES):
        when += timedelta(hours=1)
        report = imports.reap_stuck_imports(repos, store, queue, POLICY, when)
        assert report.chunks_requeued == {CLIENT: [f"{import_id}/0"]} and len(queue.tasks) == attempt + 1
    queue.tasks.clear()  # lost again, every time
    report = imports.reap_stuck_imports(repos, store, queue, POLICY, when + timedelta(hours=1))
    assert report.chunks_failed == {CLIENT: [f"{import_id}/0"]}
    done = imports.get_import(repos.imports, CLIENT, import_id)
    assert done.status is ImportStatus.FAILED and done.progress.chunks_failed == 1


def test_a_preview_the_store_refuses_is_a_422() -> None:
    repos, store, _ = setup()
    assert isinstance(repos.imports, InMemoryImportRepository)
    repos.imports.too_large = 200
    with pytest.raises(imports.CsvPreviewTooLarge):
        draft(repos, store, csv([("A", "")]))


def test_a_corrupt_import_fails_alone_and_the_reaper_goes_on_after_it() -> None:
    repos, store, queue = setup()
    import_id = draft(repos, store, csv([("A", "")]))
    imports.start_import(repos, store, queue, CLIENT, import_id, POLICY, NOW)
    queue.tasks.clear()  # the task was lost

    class WithCorrupt(InMemoryImportRepository):
        def stale(
            self, before: datetime, limit: int, *, after: datetime | None = None, client_id: str | None = None
        ) -> list[Found]:
            # Older than every other stale import: the first in line, until the cursor passes it.
            when = NOW - timedelta(minutes=1)
            corrupt = [Found("client_b", "imp_corrupt", {"progress": "not a progress", "updated_at": when}, None)]
            return [*(corrupt if after is None or when > after else []), *super().stale(before, limit, after=after)][
                :limit
            ]

    assert isinstance(repos.imports, InMemoryImportRepository)
    reaping = WithCorrupt()
    reaping.imports, reaping.stored_parts = repos.imports.imports, repos.imports.stored_parts
    bundle = CatalogRepositories(products=repos.products, assets=repos.assets, uploads=repos.uploads, imports=reaping)
    first = imports.reap_stuck_imports(bundle, store, queue, POLICY, NOW + timedelta(hours=1), limit=1)
    assert (first.failed, first.chunks_requeued, first.more) == ({"client_b": "corrupt_document"}, {}, True)
    second = imports.reap_stuck_imports(bundle, store, queue, POLICY, NOW + timedelta(hours=1), limit=1)
    assert second.chunks_requeued == {CLIENT: [f"{import_id}/0"]}
