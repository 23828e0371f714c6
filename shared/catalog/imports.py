"""CSV import: preview with an adjustable column mapping, then a background run in chunks.

Starting an import parses the CSV once and writes each chunk's rows to the object store; named
tasks process the chunks in a sliding window. Products and image assets get ids derived from the
import, the row and the image's position, so a redelivered or re-run task creates no duplicates; a
chunk's new products and their product slots are claimed in one commit (``create_products``), so
products that exist already take no slot twice.

Every piece of work is bounded and ends:

* A delivery has a time budget (``IMPORT_CHUNK_BUDGET_SECONDS``): past it, it starts no new image
  download, records what it finished as a *part* of its chunk and hands the rest to a task that
  starts where it stopped (row and image). Each image download has its own deadline
  (``FETCH_TIMEOUT_SECONDS``), so a delivery lasts at most the budget plus one download, well inside
  the dispatch deadline its task asks for (``CATALOG_TASKS_TIMEOUT_SECONDS``).
* Each part is recorded exactly once, together with the progress counters, in one atomic commit
  (its document id is the chunk and the position it starts at); the part that ends a chunk counts
  the chunk done and queues the chunk one window ahead, and the chunk that brings ``chunks_done`` to
  ``chunks_total`` finishes the import.
* On the last attempt a delivery that keeps failing records its part as failed (rows whose product
  exists count as created, the others as failed, every one listed in errors.csv), so the chain goes
  on and the import completes with errors.
* ``/jobs/reap-stuck-imports`` finds imports without progress for ``IMPORT_STALE_MINUTES`` and
  re-enqueues the chunks that should be running (their task was lost); a chunk re-enqueued twice
  without finishing is recorded as failed. An import whose every chunk failed ends ``failed``.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError

from shared import logging as log
from shared.catalog.assets import NewProductImage, store_product_image
from shared.catalog.generation_rows import (
    GenerationCostChanged,
    GenerationPlan,
    GenerationPricing,
    GenerationStart,
    wants_generation,
)
from shared.catalog.models import (
    AssetOrigin,
    ImportChunkTask,
    ImportCreate,
    ImportDoc,
    ImportGeneration,
    ImportGenerationTask,
    ImportOut,
    ImportProgress,
    ImportSource,
    ImportStatus,
    ImportUpdate,
    ProductCreate,
    ProductDoc,
    ProductSource,
    UploadDoc,
    UploadPurpose,
    UploadStatus,
)
from shared.catalog.ports import CatalogRepositories, DocumentTooLarge, ImportRepository, StaleWrite
from shared.catalog.products import build_product, create_products
from shared.catalog.uploads import get_upload
from shared.errors import Conflict, EpoxError, NotFound, UnprocessableContent, ValidationFailed, validation_problem
from shared.events.model import EventType, ImportCompleted, Subject, new_event
from shared.ids import derived_id, new_id
from shared.scheduled import ScheduledReport, isolated
from shared.tasks import MAX_DISPATCH_DEADLINE, MIN_DISPATCH_DEADLINE, RetryTask, TaskCall, TaskQueue, TaskRequest
from shared.tasks import task_name as make_task_name

if TYPE_CHECKING:
    from shared.catalog.csv_parsing import ColumnMapping, ParsedCsv, ProductDraft, RowResult
    from shared.imaging import ImageLimits
    from shared.safe_fetch import FetchLimits, SafeFetcher
    from shared.storage import ObjectStore

logger = log.get_logger("epox.catalog.imports")

WORKER_TARGET = "catalog_tasks"
CHUNK_PATH = "/tasks/import-chunk"
REAP_JOB = "reap-stuck-imports"
# A stuck chunk is re-enqueued this often (one reaper pass each, a stale window apart) before it is
# recorded as failed: a lost task gets a second chance, a chunk that can never run does not hold
# its import (and the chunks after it in its lane) forever.
MAX_REQUEUES = 2
# What the stored preview may take of the import document (Firestore's limit is 1 MiB).
PREVIEW_MAX_BYTES = 800_000


@dataclass(frozen=True)
class ImportPolicy:
    chunk_rows: int
    max_rows: int
    csv_max_bytes: int
    image_limits: ImageLimits
    thumbnail_max_side: int
    max_attempts: int
    fetch_limits: FetchLimits
    xlsx_max_uncompressed_bytes: int = 100 * 1024 * 1024
    parallel_chunks: int = 8  # chunks in flight at once (a sliding window over the chunk numbers)
    # A delivery starts no image download after this long (it hands the rest to a new task).
    chunk_budget_seconds: float = 120.0
    # The worker's timeout: the dispatch deadline chunk tasks ask Cloud Tasks for.
    task_timeout: timedelta = timedelta(minutes=5)
    # An import without progress for this long is looked at by the reaper.
    stale_after: timedelta = timedelta(minutes=30)


class ImportNotEditable(Conflict):
    code = "import_not_editable"
    title = "The import has already started"


class ImportNotReady(Conflict):
    code = "import_not_ready"
    title = "The import's preview is not ready yet"


class CsvPreviewTooLarge(UnprocessableContent):
    code = "csv_preview_too_large"
    title = "The file's preview is too large to keep"


def _load_csv(
    store: ObjectStore,
    upload: UploadDoc,
    policy: ImportPolicy,
    encoding: str | None,
    delimiter: str | None,
    sheet: str | None = None,
) -> ParsedCsv:
    """The uploaded table: a CSV file, or one worksheet of an .xlsx workbook (told by the bytes)."""
    from shared.catalog.xlsx import is_zip

    data = store.get(upload.file_key, max_bytes=policy.csv_max_bytes)
    if is_zip(data):
        from shared.catalog.xlsx import parse_xlsx

        _not_for(encoding=encoding, delimiter=delimiter, kind="an Excel workbook (.xlsx)")
        return parse_xlsx(
            data, sheet=sheet, max_uncompressed_bytes=policy.xlsx_max_uncompressed_bytes, max_rows=policy.max_rows
        )
    from shared.catalog.csv_parsing import parse_csv

    _not_for(sheet=sheet, kind="a CSV file")
    return parse_csv(data, max_rows=policy.max_rows, encoding=encoding, delimiter=delimiter)


def _not_for(*, kind: str, **chosen: str | None) -> None:
    """A choice that does not apply to the file (an encoding for a workbook, a sheet for a CSV): 422."""
    errors = [
        {"field": name, "in": "body", "message": f"does not apply to {kind}", "type": "value_error"}
        for name, value in chosen.items()
        if value is not None
    ]
    if errors:
        names = " and ".join(error["field"] for error in errors)
        raise ValidationFailed(f"The file is {kind}: {names} cannot be chosen for it.", errors=errors)


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


def _preview(
    parsed: ParsedCsv,
    mapping: ColumnMapping,
    generation: dict[str, Any] | None = None,
    pricing: Callable[[], GenerationPricing] | None = None,
) -> dict[str, Any]:
    """The preview as stored on the import: long sample values are cut already; should it still be
    too large for the document (hundreds of long column names), sample rows are dropped, with a note.
    An import that generates (settings chosen, or generation columns mapped) gets its plan and cost
    under ``generation`` (when ``pricing`` is given)."""
    from shared.catalog.csv_parsing import build_preview

    preview: dict[str, Any] = build_preview(parsed, mapping).model_dump(mode="json")
    if pricing is not None and wants_generation(generation, mapping.generation_headers().values()):
        preview["generation"] = _plan(parsed, mapping, generation, pricing()).summary()
    shown = len(preview["sample"])
    while len(json.dumps(preview).encode()) > PREVIEW_MAX_BYTES:
        if not preview["sample"]:
            raise CsvPreviewTooLarge("The file's column names and warnings are too large to preview; shorten them.")
        preview["sample"].pop()
    if len(preview["sample"]) < shown:
        preview["notes"] = [
            *preview["notes"],
            f"Only {len(preview['sample'])} sample rows are shown: the rows are long.",
        ]
    return preview


def _plan(
    parsed: ParsedCsv, mapping: ColumnMapping, generation: dict[str, Any] | None, pricing: GenerationPricing
) -> GenerationPlan:
    from shared.catalog.csv_parsing import group_rows, row_to_draft
    from shared.catalog.generation_rows import plan

    drafts = (row_to_draft(row, mapping).draft for row in group_rows(parsed, mapping))
    settings = ImportGeneration.model_validate(generation or {})
    return plan((d for d in drafts if d is not None), settings, pricing)


def _write(write: Callable[[], Any]) -> None:
    """A write of the import document; a preview Firestore still refuses is a 422, not a 500."""
    try:
        write()
    except DocumentTooLarge as exc:
        raise CsvPreviewTooLarge("The file's preview is too large to keep; shorten long values.") from exc


def create_import(
    repos: CatalogRepositories,
    store: ObjectStore,
    client_id: str,
    data: ImportCreate,
    policy: ImportPolicy,
    now: datetime,
    *,
    pricing: Callable[[], GenerationPricing] | None = None,
) -> ImportDoc:
    """Parse an uploaded CSV (or workbook) and return a draft import with its preview and detected
    mapping (and, given ``pricing``, the cost of its generation, see :mod:`shared.catalog.generation_rows`)."""
    upload = get_upload(repos.uploads, client_id, data.upload_id)
    if upload.purpose is not UploadPurpose.CSV_IMPORT:
        raise ValidationFailed(
            "The upload is not a CSV upload",
            errors=[{"field": "upload_id", "in": "body", "message": "not a csv_import upload", "type": "value_error"}],
        )
    if upload.status is not UploadStatus.COMPLETED:
        raise Conflict("Complete the upload before importing it")
    parsed = _load_csv(store, upload, policy, data.encoding, data.delimiter, data.sheet)
    mapping = _mapping(parsed, data.mapping)
    generation = data.generation.model_dump(mode="json") if data.generation is not None else None
    preview = _preview(parsed, mapping, generation, pricing)
    doc = ImportDoc(
        id=new_id("imp"),
        client_id=client_id,
        upload_id=upload.id,
        mapping=mapping.model_dump(mode="json"),
        preview=preview,
        encoding=data.encoding,
        delimiter=data.delimiter,
        sheet=data.sheet,
        generation=generation,
        progress=ImportProgress(total_rows=int(preview.get("total_rows", len(parsed.rows)))),
        created_at=now,
        updated_at=now,
    )
    _write(lambda: repos.imports.create(doc))
    return doc


def get_import(imports: ImportRepository, client_id: str, import_id: str) -> ImportDoc:
    """The import, or 404."""
    doc = imports.get(client_id, import_id)
    if doc is None:
        raise NotFound(f"No import {import_id}")
    return doc


def update_import(
    repos: CatalogRepositories,
    store: ObjectStore,
    client_id: str,
    import_id: str,
    data: ImportUpdate,
    policy: ImportPolicy,
    now: datetime,
    *,
    pricing: Callable[[], GenerationPricing] | None = None,
) -> ImportDoc:
    """Change a draft's mapping and/or how its file is read (encoding, delimiter; a workbook's sheet; null: detect
    or the first sheet).

    Without a new mapping the draft keeps its mapping if the file's columns still fit it (another
    encoding can change how they are spelled), else it gets the one detected anew."""
    from shared.catalog.csv_parsing import ColumnMapping, auto_map, validate_mapping

    doc = get_import(repos.imports, client_id, import_id)
    if doc.status is not ImportStatus.DRAFT:
        raise ImportNotEditable("The mapping can only change before the import starts")
    if doc.upload_id is None:
        raise ImportNotEditable("A store import has no file mapping to change")
    sent = data.model_fields_set
    encoding = data.encoding if "encoding" in sent else doc.encoding
    delimiter = data.delimiter if "delimiter" in sent else doc.delimiter
    sheet = data.sheet if "sheet" in sent else doc.sheet
    if "generation" in sent:
        generation = data.generation.model_dump(mode="json") if data.generation is not None else None
    else:
        generation = doc.generation
    upload = get_upload(repos.uploads, client_id, doc.upload_id)
    parsed = _load_csv(store, upload, policy, encoding, delimiter, sheet)
    if data.mapping is not None:
        mapping = _mapping(parsed, data.mapping)
    else:
        mapping = ColumnMapping.model_validate(doc.mapping)
        try:
            validate_mapping(mapping, parsed.headers)
        except ValidationFailed:
            mapping = auto_map(parsed.headers)
    changes = {
        "mapping": mapping.model_dump(mode="json"),
        "preview": _preview(parsed, mapping, generation, pricing),
        "encoding": encoding,
        "delimiter": delimiter,
        "sheet": sheet,
        "generation": generation,
        "updated_at": now,
    }
    _write(lambda: repos.imports.update(client_id, import_id, changes))
    return doc.model_copy(update=changes)


def write_chunk(store: ObjectStore, client_id: str, import_id: str, chunk: int, results: list[RowResult]) -> None:
    """Keep one chunk's rows for the workers (the chunk engine reads them back by number)."""
    payload = json.dumps([result.model_dump(mode="json") for result in results]).encode()
    store.put(chunk_key(client_id, import_id, chunk), payload, "application/json")


def chunk_key(client_id: str, import_id: str, chunk: int) -> str:
    return f"clients/{client_id}/imports/{import_id}/chunk-{chunk:05d}.json"


def _chunk_task(task: ImportChunkTask, policy: ImportPolicy, *, attempt: str | None = None) -> TaskRequest:
    """The task of one chunk (from a row and image inside it); ``attempt`` names a re-enqueue by the
    reaper, so the queue does not drop it as the lost task's duplicate."""
    parts = [task.client_id, task.import_id, str(task.chunk)]
    if task.row or task.image:
        parts.append(f"r{task.row}i{task.image}")
    if attempt:
        parts.append(attempt)
    deadline = min(max(policy.task_timeout, MIN_DISPATCH_DEADLINE), MAX_DISPATCH_DEADLINE)
    return TaskRequest(
        target=WORKER_TARGET,
        path=CHUNK_PATH,
        payload=task,
        name=make_task_name("import", *parts),
        dispatch_deadline=deadline,
    )


def start_import(
    repos: CatalogRepositories,
    store: ObjectStore,
    queue: TaskQueue,
    client_id: str,
    import_id: str,
    policy: ImportPolicy,
    now: datetime,
    *,
    generation: GenerationStart | None = None,
) -> ImportDoc:
    """Split the CSV into chunk files and enqueue the first window of chunks. Starting again is harmless.

    With ``generation`` (``POST /imports/{id}/generate``), the rows that generate are planned and priced
    as the preview showed them (a plan that changed since is a 409 with the new cost), their whole cost
    is reserved as one hold (402 when the credits are not there: nothing is queued, the import stays a
    draft) and kept on the import; its completion starts their one job (:func:`_complete_when_every_chunk_is_done`)."""
    from shared.catalog.csv_parsing import ColumnMapping, group_rows, row_to_draft

    doc = get_import(repos.imports, client_id, import_id)
    if generation is not None and doc.status is not ImportStatus.DRAFT and doc.generation_job is None:
        raise ImportNotEditable("The import started without generating images; generate from its products instead")
    if doc.status in (ImportStatus.QUEUED, ImportStatus.RUNNING):
        # A retried start re-sends the first window: the queue drops names it has seen, and a chunk
        # already recorded only passes its slot in the window on.
        _enqueue_window(queue, doc, policy)
        return doc
    if doc.status is ImportStatus.PREPARING:
        raise ImportNotReady("The store's catalog is still being read; start the import once its preview is ready")
    if doc.status is not ImportStatus.DRAFT:
        return doc
    if doc.upload_id is None:
        # A store import wrote its chunks while preparing its preview.
        fetched, written = int(doc.fetch.get("rows", 0)), int(doc.fetch.get("chunks", 0))
        return _queue_chunks(repos, queue, doc, fetched, written, policy, now)
    upload = get_upload(repos.uploads, client_id, doc.upload_id)
    parsed = _load_csv(store, upload, policy, doc.encoding, doc.delimiter, doc.sheet)
    mapping = ColumnMapping.model_validate(doc.mapping)
    rows = group_rows(parsed, mapping, None)
    del parsed  # the grouped rows are all that is needed (memory: a 10 MB file)
    size = max(1, policy.chunk_rows)
    chunks = max(1, -(-len(rows) // size))
    drafts: list[ProductDraft] = []  # only the generating import keeps them (for its plan)
    for number in range(chunks):
        # One chunk's drafts at a time: the whole file's would cost far more than the file.
        results = [row_to_draft(row, mapping) for row in rows[number * size : (number + 1) * size]]
        if generation is not None:
            drafts += [result.draft for result in results if result.draft is not None]
        write_chunk(store, client_id, import_id, number, results)
    extra: dict[str, Any] = {}
    if generation is not None:
        from shared.catalog.generation_rows import check_startable, plan

        settings = ImportGeneration.model_validate(doc.generation or {})
        planned = plan(drafts, settings, generation.pricing)
        shown = doc.preview.get("generation")
        try:
            check_startable(planned, shown if isinstance(shown, dict) else None)
        except GenerationCostChanged:
            # The merchant sees the new cost in the preview before starting again.
            preview = {**doc.preview, "generation": planned.summary()}
            repos.imports.update(client_id, import_id, {"preview": preview, "updated_at": now})
            raise
        # The hold comes last: a refused plan reserves nothing, and a 402 leaves the import a draft.
        extra["generation_job"] = generation.reserve(doc, planned)
    return _queue_chunks(repos, queue, doc, len(rows), chunks, policy, now, extra)


def _queue_chunks(
    repos: CatalogRepositories,
    queue: TaskQueue,
    doc: ImportDoc,
    rows: int,
    chunks: int,
    policy: ImportPolicy,
    now: datetime,
    extra: dict[str, Any] | None = None,
) -> ImportDoc:
    progress = ImportProgress(total_rows=rows, chunks_total=chunks)
    window = max(1, policy.parallel_chunks)
    changes = {
        **(extra or {}),
        "status": ImportStatus.QUEUED.value,
        "parallel_chunks": window,
        "progress": progress.model_dump(),
        "started_at": now,
        "updated_at": now,
    }
    if chunks == 0:
        # Nothing to import (the store had no products in scope): done at once.
        changes.update(status=ImportStatus.COMPLETED.value, finished_at=now)
    repos.imports.update(doc.client_id, doc.id, changes)
    started = doc.model_copy(update={**changes, "status": ImportStatus(changes["status"]), "progress": progress})
    if chunks:
        _enqueue_window(queue, started, policy)
    return started


def _enqueue_window(queue: TaskQueue, doc: ImportDoc, policy: ImportPolicy) -> None:
    for chunk in range(min(doc.progress.chunks_total, max(1, doc.parallel_chunks))):
        queue.enqueue(_chunk_task(ImportChunkTask(client_id=doc.client_id, import_id=doc.id, chunk=chunk), policy))


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
        source=doc.source,
        store=doc.store,
        status=doc.status,
        mapping=doc.mapping,
        encoding=doc.encoding,
        delimiter=doc.delimiter,
        sheet=doc.sheet,
        generation=doc.generation,
        generation_job=doc.generation_job,
        preview=doc.preview,
        progress=progress,
        percent=percent,
        created_at=doc.created_at,
        started_at=doc.started_at,
        finished_at=doc.finished_at,
        failure=doc.failure,
    )


# -- chunk parts -----------------------------------------------------------------------------------

Position = tuple[int, int]  # (row index in the chunk, image index in that row)


@dataclass
class _Part:
    """What one delivery did with its chunk from ``start`` up to ``end`` (``last``: the chunk's end).

    Every row is counted (created or failed, with its problems) by the chunk's first part, and as
    processed by the part that finishes it; each image by the part that handles it."""

    chunk: int
    start: Position
    end: Position = (0, 0)
    last: bool = True
    rows: int = 0
    created: int = 0
    failed_rows: int = 0
    images_imported: int = 0
    images_failed: int = 0
    failed: bool = False  # recorded without processing: every attempt failed, or the task was lost
    errors: list[dict[str, Any]] = field(default_factory=list)
    transient: list[tuple[int, str]] = field(default_factory=list)  # (row, message); never stored

    def stored(self, now: datetime) -> dict[str, Any]:
        return {
            "chunk": self.chunk,
            "start_row": self.start[0],
            "start_image": self.start[1],
            "end_row": self.end[0],
            "end_image": self.end[1],
            "last": self.last,
            "rows": self.rows,
            "created_products": self.created,
            "failed_rows": self.failed_rows,
            "images_imported": self.images_imported,
            "images_failed": self.images_failed,
            "failed": self.failed,
            "errors": sorted(self.errors, key=lambda error: int(error.get("row") or 0)),
            "completed_at": now,
        }

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> _Part:
        # Chunks recorded before parts existed were recorded whole: they end their chunk.
        return cls(
            chunk=int(data["chunk"]),
            start=(int(data.get("start_row", 0)), int(data.get("start_image", 0))),
            end=(int(data.get("end_row", 0)), int(data.get("end_image", 0))),
            last=bool(data.get("last", True)),
            failed=bool(data.get("failed", False)),
        )


def _part_id(chunk: int, start: Position) -> str:
    # Document ids sort like the positions (a chunk's first part keeps the pre-parts id).
    return f"{chunk:05d}" if start == (0, 0) else f"{chunk:05d}-{start[0]:05d}-{start[1]:02d}"


def run_import_chunk(
    repos: CatalogRepositories,
    store: ObjectStore,
    queue: TaskQueue,
    fetcher: SafeFetcher,
    task: ImportChunkTask,
    call: TaskCall,
    policy: ImportPolicy,
    now: datetime,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Process the chunk from the task's position within the time budget and record that part once;
    then queue the rest of the chunk, or the chunk one window ahead when this part ended the chunk.
    Returns what happened (for the log)."""
    try:
        doc = get_import(repos.imports, task.client_id, task.import_id)
    except NotFound:
        return "import not found: dropped"
    if doc.status in (ImportStatus.COMPLETED, ImportStatus.FAILED, ImportStatus.DRAFT, ImportStatus.PREPARING):
        return f"import is {doc.status.value}: nothing to do"
    start = (task.row, task.image)
    stored = repos.imports.part(task.client_id, task.import_id, _part_id(task.chunk, start))
    if stored is not None:
        part = _Part.from_stored(stored)
    else:
        last_attempt = call.retry_count + 1 >= policy.max_attempts
        part = _run_part(repos, store, fetcher, doc, task, policy, now, last_attempt=last_attempt, clock=clock)
        part = _record_part(repos.imports, doc, part, now)
    return _pass_on(repos.imports, queue, doc, task, part, policy, now)


def _run_part(
    repos: CatalogRepositories,
    store: ObjectStore,
    fetcher: SafeFetcher,
    doc: ImportDoc,
    task: ImportChunkTask,
    policy: ImportPolicy,
    now: datetime,
    *,
    last_attempt: bool,
    clock: Callable[[], float],
) -> _Part:
    deadline = clock() + policy.chunk_budget_seconds
    try:
        results = _chunk_results(store, doc, task.chunk)
        part = _process_rows(repos, store, fetcher, doc, task, results, policy, now, lambda: clock() >= deadline)
    except Exception:
        if not last_attempt:
            raise  # a 5xx: the queue delivers the chunk again
        logger.exception("chunk %s of import %s failed on its last attempt: recorded as failed", task.chunk, doc.id)
        return _failed_part(repos, store, doc, task, now, "the import worker failed on every attempt")
    if part.transient and not last_attempt:
        # Images already stored are skipped by the next delivery.
        raise RetryTask(f"{len(part.transient)} image downloads failed temporarily; retrying the chunk")
    for row_number, message in part.transient:
        part.images_failed += 1
        part.errors.append(
            {"row": row_number, "level": "error", "code": "fetch_temporarily_failed", "message": message}
        )
    return part


def chunk_results(store: ObjectStore, doc: ImportDoc, chunk: int) -> list[RowResult]:
    """One chunk's rows as the import wrote them (what its generation reads back once it is done)."""
    return _chunk_results(store, doc, chunk)


def row_product_id(doc: ImportDoc, draft: ProductDraft) -> str:
    """The product a row of the import created (or would have)."""
    return _product_id(doc, draft)


def row_asset_id(doc: ImportDoc, draft: ProductDraft, image: int) -> str:
    """The asset the ``image``-th image URL of a row became (or would have)."""
    return _asset_id(doc, draft, image)


def _chunk_results(store: ObjectStore, doc: ImportDoc, chunk: int) -> list[RowResult]:
    from shared.catalog.csv_parsing import RowResult

    raw = json.loads(store.get(chunk_key(doc.client_id, doc.id, chunk)))
    return [RowResult.model_validate(item) for item in raw]


def _record_part(imports: ImportRepository, doc: ImportDoc, part: _Part, now: datetime) -> _Part:
    """Record the part and count it in one atomic write; a part another delivery recorded first stands."""
    counts = {
        "processed_rows": part.rows,
        "created_products": part.created,
        "failed_rows": part.failed_rows,
        "images_imported": part.images_imported,
        "images_failed": part.images_failed,
    }
    if part.last:
        counts["chunks_done"] = 1
    if part.failed:
        counts["chunks_failed"] = 1
    changes = {"status": ImportStatus.RUNNING.value, "updated_at": now}
    earlier = imports.record_part(
        doc.client_id, doc.id, _part_id(part.chunk, part.start), part.stored(now), counts, changes
    )
    return part if earlier is None else _Part.from_stored(earlier)


def _pass_on(
    imports: ImportRepository,
    queue: TaskQueue,
    doc: ImportDoc,
    task: ImportChunkTask,
    part: _Part,
    policy: ImportPolicy,
    now: datetime,
) -> str:
    """Queue what follows a recorded part: the rest of its chunk, or the chunk one window ahead."""
    total = doc.progress.chunks_total
    if not part.last:
        row, image = part.end
        queue.enqueue(_chunk_task(task.model_copy(update={"row": row, "image": image}), policy))
        return f"chunk {task.chunk + 1}/{total}: its time budget ran out at row {row + 1}; the rest continues"
    ahead = task.chunk + max(1, doc.parallel_chunks)
    if ahead < total:
        queue.enqueue(_chunk_task(ImportChunkTask(client_id=doc.client_id, import_id=doc.id, chunk=ahead), policy))
    _complete_when_every_chunk_is_done(imports, queue, doc.client_id, doc.id, now)
    return f"chunk {task.chunk + 1}/{total} {'failed' if part.failed else 'done'}"


GENERATION_WORKER = "generate_tasks"
GENERATION_PATH = "/tasks/import-generation"


def generation_task(client_id: str, import_id: str) -> TaskRequest:
    """The task that starts a finished import's generation job (served by generation's worker)."""
    return TaskRequest(
        target=GENERATION_WORKER,
        path=GENERATION_PATH,
        payload=ImportGenerationTask(client_id=client_id, import_id=import_id),
        name=make_task_name("importgen", client_id, import_id),
    )


def _complete_when_every_chunk_is_done(
    imports: ImportRepository, queue: TaskQueue, client_id: str, import_id: str, now: datetime
) -> None:
    """Finish the import once all its chunks are recorded: ``completed``, or ``failed`` when every
    chunk failed and nothing was imported. Any chunk may be the last to finish, and two may see the count
    complete at once: the version precondition lets exactly one of them write ``finished_at``.

    An import that generates hands its rows to generation's worker first: a task named after the import
    (so the two finishers, or a redelivery, enqueue it once), which starts the job once the import is
    finished (it retries while the finishing commit is not there yet)."""
    loaded = imports.load(client_id, import_id)
    if loaded is None:
        return
    doc = loaded.value
    progress = doc.progress
    if doc.status not in (ImportStatus.QUEUED, ImportStatus.RUNNING) or progress.chunks_done < progress.chunks_total:
        return
    if doc.generation_job is not None and doc.generation_job.get("status") == "reserved":
        queue.enqueue(generation_task(client_id, import_id))
    changes: dict[str, Any] = {"status": ImportStatus.COMPLETED.value, "finished_at": now, "updated_at": now}
    if progress.chunks_failed >= progress.chunks_total and not (progress.created_products or progress.images_imported):
        changes["status"] = ImportStatus.FAILED.value
        changes["failure"] = "No part of the file could be imported; errors.csv lists what was lost."
    completed = new_event(
        client_id,
        EventType.IMPORT_COMPLETED,
        Subject(kind="import", id=import_id),
        ImportCompleted(
            import_id=import_id,
            status=changes["status"],
            total_rows=progress.total_rows,
            created_products=progress.created_products,
            failed_rows=progress.failed_rows,
            images_imported=progress.images_imported,
            images_failed=progress.images_failed,
            source=doc.source.value,
        ),
        occurred_at=now,
        sequence=1,
    )
    try:
        imports.update_if_unchanged(loaded, changes, events=[completed])
    except StaleWrite:
        return


@dataclass
class _Candidates:
    """The products a chunk's rows would create, and the rows whose values a product refuses."""

    products: dict[int, tuple[ProductDraft, ProductDoc]]  # row index -> draft and product
    invalid: dict[int, dict[str, Any]]  # row index -> its error


def _candidates(
    doc: ImportDoc,
    results: list[RowResult],
    start_row: int,
    now: datetime,
    linked: dict[str, str] | None = None,
) -> _Candidates:
    """``linked``: store product id -> the product a merchant linked it to by hand (store imports)."""
    found = _Candidates(products={}, invalid={})
    for index in range(start_row, len(results)):
        draft = results[index].draft
        if draft is None:
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
            first = exc.errors()[0]
            field_name = ".".join(str(p) for p in first.get("loc", ()))
            found.invalid[index] = {
                "row": draft.row_number,
                "level": "error",
                "code": "invalid_row",
                "message": f"{field_name}: {first.get('msg')}",
            }
            continue
        hand_linked = (linked or {}).get(draft.store.product_id) if draft.store is not None else None
        product = build_product(
            doc.client_id,
            data,
            now,
            product_id=hand_linked or _product_id(doc, draft),
            source=_product_source(draft),
            import_id=doc.id,
        )
        if draft.store is not None:
            product = product.model_copy(update={"store": draft.store.model_copy(update={"synced_at": now})})
        found.products[index] = (draft, product)
    return found


def _hand_linked(repos: CatalogRepositories, doc: ImportDoc, results: list[RowResult]) -> dict[str, str]:
    """The chunk's store products a merchant linked to a product of their own: those are imported into
    that product, never as a second one."""
    if doc.source is not ImportSource.STORE:
        return {}
    drafts = [result.draft for result in results if result.draft is not None and result.draft.store is not None]
    if not drafts:
        return {}
    platform = drafts[0].store.platform if drafts[0].store is not None else ""
    store_ids = [draft.store.product_id for draft in drafts if draft.store is not None]
    return repos.products.linked_ids(doc.client_id, platform, store_ids)


def _product_id(doc: ImportDoc, draft: ProductDraft) -> str:
    """CSV rows: derived from the import and the row, so a redelivered chunk finds the products it
    created before (they are not new and take no slot a second time). Store products: derived from
    the store's product id, so any later import of the same store maps to the same products."""
    if draft.store is not None:
        return store_product_id(doc.client_id, draft.store.platform, draft.store.shop, draft.store.product_id)
    return derived_id("prod", doc.id, draft.row_number)


def _product_source(draft: ProductDraft) -> ProductSource:
    if draft.store is None:
        return ProductSource.CSV
    return ProductSource(draft.store.platform)


def store_product_id(client_id: str, platform: str, shop: str, store_product: str) -> str:
    """Our product id for a store's product (the same for every import of that store)."""
    return derived_id("prod", client_id, platform, shop, store_product)


def store_asset_id(client_id: str, platform: str, shop: str, media_id: str) -> str:
    """Our asset id for a store's image (its media or attachment id): imported once, whatever imports it."""
    return derived_id("ast", client_id, platform, shop, "media", media_id)


def _asset_id(doc: ImportDoc, draft: ProductDraft, image: int) -> str:
    if draft.store is not None and image < len(draft.image_media_ids):
        return store_asset_id(doc.client_id, draft.store.platform, draft.store.shop, draft.image_media_ids[image])
    return derived_id("ast", doc.id, draft.row_number, image)


def _problems(result: RowResult) -> list[dict[str, Any]]:
    return [{"row": p.row_number, "level": p.severity, "code": p.code, "message": p.message} for p in result.problems]


SLOT_LIMIT_ERROR = "The plan's product slots are all used; upgrade in Billing to import more products"


def _count_rows(
    part: _Part, results: list[RowResult], candidates: _Candidates, created: set[str], code: str, message: str
) -> None:
    """Count every row of the chunk as created (its product is in ``created``) or failed (``code`` and
    ``message`` say why a product is missing), with its problems. Only a chunk's first part does
    this: it is the one that creates the chunk's products, so what a later part (or a failure record
    of one) counts never overlaps it."""
    for index, result in enumerate(results):
        part.errors += _problems(result)
        entry = candidates.products.get(index)
        if entry is not None and entry[1].id in created:
            part.created += 1
            continue
        part.failed_rows += 1
        if index in candidates.invalid:
            part.errors.append(candidates.invalid[index])
        elif entry is not None:
            part.errors.append({"row": entry[0].row_number, "level": "error", "code": code, "message": message})


def _process_rows(
    repos: CatalogRepositories,
    store: ObjectStore,
    fetcher: SafeFetcher,
    doc: ImportDoc,
    task: ImportChunkTask,
    results: list[RowResult],
    policy: ImportPolicy,
    now: datetime,
    out_of_time: Callable[[], bool],
) -> _Part:
    """Import the chunk's rows from the task's position until the end or ``out_of_time()``.

    The chunk's first part creates the products of all its rows (one commit claims their slots;
    rows past the free slots are refused) and counts every row; every part then downloads the
    images of the rows from its position on. No download starts once the time is up, except that a
    delivery always handles at least one image (so every part makes progress); the part then ends
    before that image, and a task for the rest of the chunk follows."""
    start_row, start_image = task.row, task.image
    part = _Part(chunk=task.chunk, start=(start_row, start_image), end=(len(results), 0))
    candidates = _candidates(doc, results, start_row, now, _hand_linked(repos, doc, results))
    products = [product for _, product in candidates.products.values()]
    if (start_row, start_image) == (0, 0):
        done = create_products(repos.products, doc.client_id, products, now, all_or_nothing=False)
        if doc.source is ImportSource.STORE and done.existing:
            _relink(repos, doc, [product for product in products if product.id in set(done.existing)], now)
        refused = {product.id for product in done.refused}
        created = {product.id for product in products} - refused
        _count_rows(part, results, candidates, created, "product_slot_limit", SLOT_LIMIT_ERROR)
        pushed = _pushed_media(repos, doc, list(done.existing))
    else:
        created = repos.products.existing(doc.client_id, [product.id for product in products])
        pushed = _pushed_media(repos, doc, list(created))
    progressed = False
    for index in range(start_row, len(results)):
        first_image = start_image if index == start_row else 0
        entry = candidates.products.get(index)
        urls = entry[0].image_urls if entry is not None and entry[1].id in created else ()
        ours = pushed.get(entry[1].id, frozenset()) if entry is not None else frozenset()
        if progressed and first_image < len(urls) and out_of_time():
            part.end, part.last = (index, first_image), False
            return part
        for image in range(first_image, len(urls)):
            if image > first_image and out_of_time():
                part.end, part.last = (index, image), False
                return part
            assert entry is not None
            draft, product = entry
            if image < len(draft.image_media_ids) and draft.image_media_ids[image] in ours:
                continue  # an image sync-back pushed: it is ours already, not the store's
            _import_image(repos, store, fetcher, doc, draft, product.id, image, policy, now, part)
        part.rows += 1
        progressed = True
    return part


def _pushed_media(repos: CatalogRepositories, doc: ImportDoc, product_ids: list[str]) -> dict[str, frozenset[str]]:
    """The media sync-back pushed to these products' store products (a store import skips them)."""
    if doc.source is not ImportSource.STORE or not product_ids:
        return {}
    found = repos.products.get_many(doc.client_id, product_ids)
    return {
        pid: frozenset(p.store.pushed_media_ids)
        for pid, p in found.items()
        if p.store is not None and p.store.pushed_media_ids
    }


def _relink(repos: CatalogRepositories, doc: ImportDoc, products: list[ProductDoc], now: datetime) -> None:
    """Products a store import finds already made (an earlier import, a reconnect) get the store's data
    again and a live link; their own fields the merchant may have edited stay as they are."""
    for product in products:
        loaded = repos.products.load(doc.client_id, product.id)
        if loaded is None or product.store is None:
            continue
        current = loaded.value.store
        if current is not None and current.import_id_seen == doc.id:
            continue
        pushed = current.pushed_media_ids if current is not None else []
        link = product.store.model_copy(update={"import_id_seen": doc.id, "pushed_media_ids": pushed})
        try:
            repos.products.update(
                doc.client_id, product.id, {"store": link.model_dump(mode="python"), "updated_at": now}, loaded.version
            )
        except StaleWrite:
            continue  # changed meanwhile: its webhook or the next import brings it in step


def _failed_part(
    repos: CatalogRepositories, store: ObjectStore, doc: ImportDoc, task: ImportChunkTask, now: datetime, reason: str
) -> _Part:
    """The rest of the chunk (from the task's position) recorded without processing it: products and
    images an earlier attempt made count as imported, the rest as failed, each in errors.csv. Raises
    when the chunk's rows cannot be read (the object store is down): then nothing can be counted
    right, and the reaper tries again on its next run."""
    part = _Part(chunk=task.chunk, start=(task.row, task.image), failed=True)
    results = _chunk_results(store, doc, task.chunk)
    part.end = (len(results), 0)
    candidates = _candidates(doc, results, task.row, now, _hand_linked(repos, doc, results))
    asset_ids = {
        (index, image): _asset_id(doc, draft, image)
        for index, (draft, _) in candidates.products.items()
        for image in range(len(draft.image_urls))
    }
    created = repos.products.existing(doc.client_id, [product.id for _, product in candidates.products.values()])
    stored_assets = repos.assets.existing(doc.client_id, asset_ids.values())
    if (task.row, task.image) == (0, 0):
        message = f"The product was not created: {reason}."
        _count_rows(part, results, candidates, created, "import_chunk_failed", message)
    for index in range(task.row, len(results)):
        first_image = task.image if index == task.row else 0
        entry = candidates.products.get(index)
        if entry is not None and entry[1].id in created:
            draft = entry[0]
            for image in range(first_image, len(draft.image_urls)):
                if asset_ids[(index, image)] in stored_assets:
                    part.images_imported += 1
                    continue
                part.images_failed += 1
                url = _short(draft.image_urls[image])
                part.errors.append(
                    {
                        "row": draft.row_number,
                        "level": "error",
                        "code": "import_chunk_failed",
                        "message": f"image {image + 1} ({url}): not imported: {reason}.",
                    }
                )
        part.rows += 1
    return part


def _import_image(
    repos: CatalogRepositories,
    store: ObjectStore,
    fetcher: SafeFetcher,
    doc: ImportDoc,
    draft: ProductDraft,
    product_id: str,
    index: int,
    policy: ImportPolicy,
    now: datetime,
    part: _Part,
) -> None:
    from shared.safe_fetch import FetchTemporarilyFailed

    row_number, url = draft.row_number, draft.image_urls[index]
    asset_id = _asset_id(doc, draft, index)
    media_id = draft.image_media_ids[index] if index < len(draft.image_media_ids) else None
    if repos.assets.existing(doc.client_id, [asset_id]):
        part.images_imported += 1
        return
    try:
        # One try, bounded by FETCH_TIMEOUT_SECONDS: the queue retries the chunk (stored images are
        # skipped then), so a retry here would only stretch the delivery past its budget.
        fetched = fetcher.fetch(url, limits=policy.fetch_limits)
        store_product_image(
            repos.assets,
            store,
            client_id=doc.client_id,
            product_id=product_id,
            image_bytes=fetched.body,
            origin=NewProductImage(
                asset_id=asset_id,
                origin=AssetOrigin.CSV if draft.store is None else AssetOrigin.STORE_IMPORT,
                source_url=url,
                import_id=doc.id,
                origin_media_id=media_id if draft.store is not None else None,
            ),
            limits=policy.image_limits,
            thumbnail_max_side=policy.thumbnail_max_side,
            now=now,
        )
        part.images_imported += 1
    except FetchTemporarilyFailed as error:
        part.transient.append((row_number, f"image {index + 1} ({_short(url)}): {error.detail}"))
    except EpoxError as error:
        part.images_failed += 1
        part.errors.append(
            {
                "row": row_number,
                "level": "error",
                "code": error.code,
                "message": f"image {index + 1} ({_short(url)}): {error.detail}",
            }
        )


def _short(url: str) -> str:
    return url if len(url) <= 120 else url[:117] + "..."


def error_report_csv(
    imports: ImportRepository,
    client_id: str,
    import_id: str,
    more: Callable[[ImportDoc], list[dict[str, Any]]] | None = None,
) -> str:
    """The import's problems as CSV: row, level, code, message (warnings from parsing included); ``more``
    adds what happened later to the import's rows (its generation job's failed images), in row order
    with the rest."""
    doc = get_import(imports, client_id, import_id)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["row", "level", "code", "message"])
    # Part ids sort like their chunk and position, so the report reads in file order.
    errors = [error for stored in imports.parts(client_id, import_id) for error in stored.get("errors", [])]
    if more is not None:
        errors += more(doc)
        errors.sort(key=lambda error: int(error.get("row") or 0))  # stable: each row's import problems first
    for error in errors:
        writer.writerow(
            [error.get("row") or "", error.get("level", "error"), error.get("code", ""), error.get("message", "")]
        )
    return buffer.getvalue()


# -- recovery (Cloud Scheduler) --------------------------------------------------------------------


class ImportReapReport(ScheduledReport):
    """``/jobs/reap-stuck-imports``: what it found stuck and did (``client -> ["import/chunk"]``)."""

    imports_checked: int = 0
    chunks_requeued: dict[str, list[str]] = Field(default_factory=dict)
    chunks_failed: dict[str, list[str]] = Field(default_factory=dict)
    more: bool = False  # the run stopped at its limit; the next one goes on from there


def reap_stuck_imports(
    repos: CatalogRepositories,
    store: ObjectStore,
    queue: TaskQueue,
    policy: ImportPolicy,
    now: datetime,
    *,
    limit: int = 200,
    client_id: str | None = None,
) -> ImportReapReport:
    """Re-enqueue (or, after ``MAX_REQUEUES`` times, record as failed) the chunks of imports without
    progress for ``policy.stale_after`` that should be running: queued or running imports whose due
    chunks' tasks were lost. Safe to run twice; each import is handled on its own.

    At most ``limit`` imports per run, oldest progress first, continuing after where the previous
    run stopped (the reaper's cursor), so imports that keep failing cannot hold back the others.
    ``client_id``: one client only (tests)."""
    report = ImportReapReport()
    cursor = repos.imports.reaper_cursor(client_id)
    last_seen = None
    for found in repos.imports.stale(now - policy.stale_after, limit, after=cursor, client_id=client_id):
        report.imports_checked += 1
        last_seen = found.data.get("updated_at")
        with isolated(REAP_JOB, found.client_id, report.failed):
            # Validated here: a corrupt import is reported on its own and the run goes on after it.
            _reap_import(repos, store, queue, policy, ImportDoc.model_validate(found.data), now, report)
    report.more = report.imports_checked >= limit
    # A full page: the next run goes on after it; a short one: the next run starts again from the oldest.
    repos.imports.save_reaper_cursor(client_id, last_seen if report.more else None, now)
    return report


def _reap_import(
    repos: CatalogRepositories,
    store: ObjectStore,
    queue: TaskQueue,
    policy: ImportPolicy,
    doc: ImportDoc,
    now: datetime,
    report: ImportReapReport,
) -> None:
    window = max(1, doc.parallel_chunks)
    done: set[int] = set()
    reached: dict[int, Position] = {}  # chunk -> where its recorded parts end
    for stored in repos.imports.parts(doc.client_id, doc.id):
        part = _Part.from_stored(stored)
        if part.last:
            done.add(part.chunk)
        else:
            reached[part.chunk] = max(reached.get(part.chunk, (0, 0)), part.end)
    reaped = dict(doc.reaped)
    give_up: list[ImportChunkTask] = []
    for chunk in range(doc.progress.chunks_total):
        # A chunk is due once the chunk one window behind it is done (or it is in the first window).
        if chunk in done or (chunk >= window and chunk - window not in done):
            continue
        row, image = reached.get(chunk, (0, 0))
        task = ImportChunkTask(client_id=doc.client_id, import_id=doc.id, chunk=chunk, row=row, image=image)
        count = reaped.get(str(chunk), 0)
        if count >= MAX_REQUEUES:
            give_up.append(task)
            continue
        queue.enqueue(_chunk_task(task, policy, attempt=f"reap{count + 1}"))
        reaped[str(chunk)] = count + 1
        report.chunks_requeued.setdefault(doc.client_id, []).append(f"{doc.id}/{chunk}")
        logger.warning("chunk %s of import %s made no progress: enqueued again", chunk, doc.id)
    # Touched: the import leaves the stale set for a while, and the next pass sees what this one did.
    repos.imports.update(doc.client_id, doc.id, {"reaped": reaped, "updated_at": now})
    for task in give_up:
        part = _record_part(repos.imports, doc, _failed_part(repos, store, doc, task, now, "its task was lost"), now)
        report.chunks_failed.setdefault(doc.client_id, []).append(f"{doc.id}/{task.chunk}")
        logger.warning("chunk %s of import %s never finished: recorded as failed", task.chunk, doc.id)
        _pass_on(repos.imports, queue, doc, task, part, policy, now)  # the chunk one window ahead, or the end
    _complete_when_every_chunk_is_done(repos.imports, queue, doc.client_id, doc.id, now)
