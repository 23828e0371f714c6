"""CSV import: preview with an adjustable column mapping, then a background run in chunks.

Starting an import parses the CSV once and writes each chunk's rows to the object store; a chain
of named tasks processes one chunk each. Products and image assets get ids derived from the import,
the row and the image's position, so a redelivered or re-run task creates no duplicates; a chunk's
new products and their product slots are claimed in one commit (``create_products``), so products
that exist already take no slot twice; and each chunk's outcome is recorded together with the
progress counters in one atomic commit.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from shared.catalog.assets import NewProductImage, assets_ref, store_product_image
from shared.catalog.models import (
    ImportChunkTask,
    ImportCreate,
    ImportDoc,
    ImportOut,
    ImportProgress,
    ImportStatus,
    ImportUpdate,
    ProductCreate,
    ProductDoc,
    ProductSource,
    UploadPurpose,
    UploadStatus,
)
from shared.catalog.products import build_product, create_products, new_id
from shared.catalog.uploads import get_upload
from shared.errors import Conflict, EpoxError, NotFound, ValidationFailed
from shared.http.problems import validation_problem
from shared.tasks import RetryTask, TaskCall, TaskQueue, TaskRequest, task_name

if TYPE_CHECKING:
    from google.cloud.firestore import Client

    from shared.adapters.safe_fetch import FetchLimits, SafeFetcher
    from shared.catalog.csv_parsing import ColumnMapping, ParsedCsv, ProductDraft, RowResult
    from shared.imaging import ImageLimits
    from shared.storage import ObjectStore

WORKER_TARGET = "catalog_tasks"
CHUNK_PATH = "/tasks/import-chunk"


@dataclass(frozen=True)
class ImportPolicy:
    chunk_rows: int
    max_rows: int
    csv_max_bytes: int
    image_limits: ImageLimits
    thumbnail_max_side: int
    max_attempts: int
    fetch_limits: FetchLimits
    parallel_chunks: int = 8  # chunks in flight at once (a sliding window over the chunk numbers)


class ImportNotEditable(Conflict):
    code = "import_not_editable"
    title = "The import has already started"


def imports_ref(db: Client, client_id: str) -> Any:
    return db.collection("clients").document(client_id).collection("imports")


def _load_csv(store: ObjectStore, key: str, policy: ImportPolicy) -> ParsedCsv:
    from shared.catalog.csv_parsing import parse_csv

    return parse_csv(store.get(key, max_bytes=policy.csv_max_bytes), max_rows=policy.max_rows)


def _mapping(parsed: ParsedCsv, raw: dict[str, Any] | None) -> ColumnMapping:
    from shared.catalog.csv_parsing import ColumnMapping, auto_map, validate_mapping

    if raw is None:
        mapping = auto_map(parsed.headers)
    else:
        try:
            mapping = ColumnMapping.model_validate(raw)
        except ValidationError as exc:
            error = validation_problem(exc, location="body")
            for item in error.extensions.get("errors", []):
                item["field"] = "mapping." + item["field"]
            raise error from exc
    validate_mapping(mapping, parsed.headers)
    return mapping


def _preview(parsed: ParsedCsv, mapping: ColumnMapping) -> dict[str, Any]:
    from shared.catalog.csv_parsing import build_preview

    preview: dict[str, Any] = build_preview(parsed, mapping).model_dump(mode="json")
    return preview


def create_import(
    db: Client, store: ObjectStore, client_id: str, data: ImportCreate, policy: ImportPolicy, now: datetime
) -> ImportDoc:
    """Parse an uploaded CSV and return a draft import with its preview and detected mapping."""
    upload = get_upload(db, client_id, data.upload_id)
    if upload.purpose is not UploadPurpose.CSV_IMPORT:
        raise ValidationFailed(
            "The upload is not a CSV upload",
            errors=[{"field": "upload_id", "in": "body", "message": "not a csv_import upload", "type": "value_error"}],
        )
    if upload.status is not UploadStatus.COMPLETED:
        raise Conflict("Complete the upload before importing it")
    parsed = _load_csv(store, upload.key, policy)
    mapping = _mapping(parsed, data.mapping)
    preview = _preview(parsed, mapping)
    doc = ImportDoc(
        id=new_id("imp"),
        client_id=client_id,
        upload_id=upload.id,
        mapping=mapping.model_dump(mode="json"),
        preview=preview,
        progress=ImportProgress(total_rows=int(preview.get("total_rows", len(parsed.rows)))),
        created_at=now,
        updated_at=now,
    )
    imports_ref(db, client_id).document(doc.id).create(doc.model_dump(mode="python"))
    return doc


def get_import(db: Client, client_id: str, import_id: str) -> ImportDoc:
    snapshot = imports_ref(db, client_id).document(import_id).get()
    if not snapshot.exists:
        raise NotFound(f"No import {import_id}")
    return ImportDoc.model_validate(snapshot.to_dict())


def update_mapping(
    db: Client,
    store: ObjectStore,
    client_id: str,
    import_id: str,
    data: ImportUpdate,
    policy: ImportPolicy,
    now: datetime,
) -> ImportDoc:
    doc = get_import(db, client_id, import_id)
    if doc.status is not ImportStatus.DRAFT:
        raise ImportNotEditable("The mapping can only change before the import starts")
    upload = get_upload(db, client_id, doc.upload_id)
    parsed = _load_csv(store, upload.key, policy)
    mapping = _mapping(parsed, data.mapping)
    changes = {"mapping": mapping.model_dump(mode="json"), "preview": _preview(parsed, mapping), "updated_at": now}
    imports_ref(db, client_id).document(import_id).update(changes)
    return doc.model_copy(update=changes)


def _chunk_key(client_id: str, import_id: str, chunk: int) -> str:
    return f"clients/{client_id}/imports/{import_id}/chunk-{chunk:05d}.json"


def _chunk_task(client_id: str, import_id: str, chunk: int) -> TaskRequest:
    return TaskRequest(
        target=WORKER_TARGET,
        path=CHUNK_PATH,
        payload=ImportChunkTask(client_id=client_id, import_id=import_id, chunk=chunk),
        name=task_name("import", client_id, import_id, str(chunk)),
    )


def start_import(
    db: Client,
    store: ObjectStore,
    queue: TaskQueue,
    client_id: str,
    import_id: str,
    policy: ImportPolicy,
    now: datetime,
) -> ImportDoc:
    """Split the CSV into chunk files and enqueue the first window of chunks. Starting again is harmless."""
    from shared.catalog.csv_parsing import ColumnMapping, group_rows, row_to_draft

    doc = get_import(db, client_id, import_id)
    if doc.status in (ImportStatus.QUEUED, ImportStatus.RUNNING):
        # A retried start re-sends the first window: the queue drops names it has seen, and a chunk
        # already recorded only passes its slot in the window on.
        _enqueue_window(queue, client_id, import_id, doc.progress.chunks_total, doc.parallel_chunks)
        return doc
    if doc.status is not ImportStatus.DRAFT:
        return doc
    upload = get_upload(db, client_id, doc.upload_id)
    parsed = _load_csv(store, upload.key, policy)
    mapping = ColumnMapping.model_validate(doc.mapping)
    rows = group_rows(parsed, mapping, None)
    results = [row_to_draft(row, mapping) for row in rows]
    chunks = [results[i : i + policy.chunk_rows] for i in range(0, len(results), policy.chunk_rows)] or [[]]
    for number, chunk in enumerate(chunks):
        payload = json.dumps([result.model_dump(mode="json") for result in chunk]).encode()
        store.put(_chunk_key(client_id, import_id, number), payload, "application/json")
    progress = ImportProgress(total_rows=len(results), chunks_total=len(chunks))
    window = max(1, policy.parallel_chunks)
    changes = {
        "status": ImportStatus.QUEUED.value,
        "parallel_chunks": window,
        "progress": progress.model_dump(),
        "started_at": now,
        "updated_at": now,
    }
    imports_ref(db, client_id).document(import_id).update(changes)
    _enqueue_window(queue, client_id, import_id, len(chunks), window)
    return doc.model_copy(update={**changes, "status": ImportStatus.QUEUED, "progress": progress})


def _enqueue_window(queue: TaskQueue, client_id: str, import_id: str, chunks_total: int, window: int) -> None:
    for chunk in range(min(chunks_total, max(1, window))):
        queue.enqueue(_chunk_task(client_id, import_id, chunk))


def import_out(doc: ImportDoc) -> ImportOut:
    progress = doc.progress
    if doc.status is ImportStatus.COMPLETED:
        percent = 100.0
    elif progress.total_rows:
        percent = round(100.0 * progress.processed_rows / progress.total_rows, 1)
    else:
        percent = 0.0
    return ImportOut(
        id=doc.id,
        upload_id=doc.upload_id,
        status=doc.status,
        mapping=doc.mapping,
        preview=doc.preview,
        progress=progress,
        percent=percent,
        created_at=doc.created_at,
        started_at=doc.started_at,
        finished_at=doc.finished_at,
        failure=doc.failure,
    )


@dataclass
class _ChunkOutcome:
    created: int = 0
    failed_rows: int = 0
    images_imported: int = 0
    images_failed: int = 0

    def __post_init__(self) -> None:
        self.errors: list[dict[str, Any]] = []
        self.transient: list[tuple[int, str]] = []  # (row, message)


def _derived_id(prefix: str, *parts: object) -> str:
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:24]
    return f"{prefix}_{digest}"


def run_import_chunk(
    db: Client,
    store: ObjectStore,
    queue: TaskQueue,
    fetcher: SafeFetcher,
    task: ImportChunkTask,
    call: TaskCall,
    policy: ImportPolicy,
    now: datetime,
) -> str:
    """Process one chunk exactly once, then queue the chunk one window ahead; the chunk that brings
    ``chunks_done`` to ``chunks_total`` completes the import. Returns what happened (for the log)."""
    from google.api_core.exceptions import AlreadyExists
    from google.cloud import firestore

    from shared.catalog.csv_parsing import RowResult

    try:
        doc = get_import(db, task.client_id, task.import_id)
    except NotFound:
        return "import not found: dropped"
    if doc.status in (ImportStatus.COMPLETED, ImportStatus.FAILED, ImportStatus.DRAFT):
        return f"import is {doc.status.value}: nothing to do"
    import_ref = imports_ref(db, task.client_id).document(task.import_id)
    chunk_ref = import_ref.collection("chunks").document(f"{task.chunk:05d}")
    if not chunk_ref.get().exists:
        raw = json.loads(store.get(_chunk_key(task.client_id, task.import_id, task.chunk)))
        results = [RowResult.model_validate(item) for item in raw]
        outcome = _process_rows(db, store, fetcher, doc, results, policy, now)
        if outcome.transient and call.retry_count + 1 < policy.max_attempts:
            raise RetryTask(f"{len(outcome.transient)} image downloads failed temporarily; retrying the chunk")
        for row_number, message in outcome.transient:
            outcome.images_failed += 1
            outcome.errors.append(
                {"row": row_number, "level": "error", "code": "fetch_temporarily_failed", "message": message}
            )
        batch = db.batch()
        batch.create(
            chunk_ref,
            {
                "chunk": task.chunk,
                "rows": len(results),
                "created_products": outcome.created,
                "failed_rows": outcome.failed_rows,
                "images_imported": outcome.images_imported,
                "images_failed": outcome.images_failed,
                "errors": outcome.errors,
                "completed_at": now,
            },
        )
        update: dict[str, Any] = {
            "progress.processed_rows": firestore.Increment(len(results)),
            "progress.created_products": firestore.Increment(outcome.created),
            "progress.failed_rows": firestore.Increment(outcome.failed_rows),
            "progress.images_imported": firestore.Increment(outcome.images_imported),
            "progress.images_failed": firestore.Increment(outcome.images_failed),
            "progress.chunks_done": firestore.Increment(1),
            "status": ImportStatus.RUNNING.value,
            "updated_at": now,
        }
        batch.update(import_ref, update)
        # A concurrent delivery may have recorded this chunk first; its counts stand.
        with contextlib.suppress(AlreadyExists):
            batch.commit()
    ahead = task.chunk + max(1, doc.parallel_chunks)
    if ahead < doc.progress.chunks_total:
        queue.enqueue(_chunk_task(task.client_id, task.import_id, ahead))
    _complete_when_every_chunk_is_done(db, import_ref, now)
    return f"chunk {task.chunk + 1}/{doc.progress.chunks_total} done"


def _complete_when_every_chunk_is_done(db: Client, import_ref: Any, now: datetime) -> None:
    """Mark the import completed once all its chunks are recorded. Any chunk may be the last to
    finish, and two may see the count complete at once: the ``update_time`` precondition lets
    exactly one of them write ``finished_at``."""
    from google.api_core.exceptions import FailedPrecondition

    snapshot = import_ref.get()
    doc = ImportDoc.model_validate(snapshot.to_dict())
    if doc.status is not ImportStatus.RUNNING or doc.progress.chunks_done < doc.progress.chunks_total:
        return
    with contextlib.suppress(FailedPrecondition):
        import_ref.update(
            {"status": ImportStatus.COMPLETED.value, "finished_at": now, "updated_at": now},
            option=db.write_option(last_update_time=snapshot.update_time),
        )


def _process_rows(
    db: Client,
    store: ObjectStore,
    fetcher: SafeFetcher,
    doc: ImportDoc,
    results: list[RowResult],
    policy: ImportPolicy,
    now: datetime,
) -> _ChunkOutcome:
    outcome = _ChunkOutcome()
    rows: list[tuple[ProductDraft, ProductDoc]] = []
    for result in results:
        for problem in result.problems:
            outcome.errors.append(
                {
                    "row": problem.row_number,
                    "level": problem.severity,
                    "code": problem.code,
                    "message": problem.message,
                }
            )
        draft = result.draft
        if draft is None:
            outcome.failed_rows += 1
            continue
        try:
            data = ProductCreate(
                name=draft.name,
                sku=draft.sku,
                description=draft.description,
                category=draft.category,
                price=draft.price,
                tags=list(draft.tags),
                external_id=draft.external_id,
            )
        except ValidationError as exc:
            outcome.failed_rows += 1
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first.get("loc", ()))
            outcome.errors.append(
                {
                    "row": draft.row_number,
                    "level": "error",
                    "code": "invalid_row",
                    "message": f"{field}: {first.get('msg')}",
                }
            )
            continue
        # The id is derived from the import and the row, so a redelivered chunk finds the products it
        # created before: they are not new and take no slot a second time.
        product_id = _derived_id("prod", doc.id, draft.row_number)
        product = build_product(
            doc.client_id, data, now, product_id=product_id, source=ProductSource.CSV, import_id=doc.id
        )
        rows.append((draft, product))
    # One commit claims the slots and creates the chunk's new products; rows past the free slots wait.
    done = create_products(db, doc.client_id, [product for _, product in rows], now, all_or_nothing=False)
    refused = {product.id for product in done.refused}
    for draft, product in rows:
        if product.id in refused:
            outcome.failed_rows += 1
            outcome.errors.append(
                {
                    "row": draft.row_number,
                    "level": "error",
                    "code": "product_slot_limit",
                    "message": "The plan's product slots are all used; upgrade in Billing to import more products",
                }
            )
            continue
        outcome.created += 1
        for index, url in enumerate(draft.image_urls):
            _import_image(db, store, fetcher, doc, draft.row_number, product.id, index, url, policy, now, outcome)
    # The report lists a row's problems together, in row order (a row's own order is kept).
    outcome.errors.sort(key=lambda error: int(error.get("row") or 0))
    return outcome


def _import_image(
    db: Client,
    store: ObjectStore,
    fetcher: SafeFetcher,
    doc: ImportDoc,
    row_number: int,
    product_id: str,
    index: int,
    url: str,
    policy: ImportPolicy,
    now: datetime,
    outcome: _ChunkOutcome,
) -> None:
    from shared.adapters.safe_fetch import FetchTemporarilyFailed, fetch_with_retries

    asset_id = _derived_id("ast", doc.id, row_number, index)
    if assets_ref(db, doc.client_id).document(asset_id).get().exists:
        outcome.images_imported += 1
        return
    try:
        fetched = fetch_with_retries(
            fetcher,
            url,
            attempts=2,
            limits=policy.fetch_limits,
        )
        store_product_image(
            db,
            store,
            client_id=doc.client_id,
            product_id=product_id,
            image_bytes=fetched.body,
            origin=NewProductImage(asset_id=asset_id, source="csv", source_url=url, import_id=doc.id),
            limits=policy.image_limits,
            thumbnail_max_side=policy.thumbnail_max_side,
            now=now,
        )
        outcome.images_imported += 1
    except FetchTemporarilyFailed as error:
        outcome.transient.append((row_number, f"image {index + 1} ({_short(url)}): {error.detail}"))
    except EpoxError as error:
        outcome.images_failed += 1
        outcome.errors.append(
            {
                "row": row_number,
                "level": "error",
                "code": error.code,
                "message": f"image {index + 1} ({_short(url)}): {error.detail}",
            }
        )


def _short(url: str) -> str:
    return url if len(url) <= 120 else url[:117] + "..."


def error_report_csv(db: Client, client_id: str, import_id: str) -> str:
    """The import's problems as CSV: row, level, code, message (warnings from parsing included)."""
    get_import(db, client_id, import_id)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["row", "level", "code", "message"])
    chunks = imports_ref(db, client_id).document(import_id).collection("chunks").order_by("chunk").stream()
    for snapshot in chunks:
        for error in (snapshot.to_dict() or {}).get("errors", []):
            writer.writerow(
                [error.get("row") or "", error.get("level", "error"), error.get("code", ""), error.get("message", "")]
            )
    return buffer.getvalue()
