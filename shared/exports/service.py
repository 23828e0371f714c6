"""ZIP exports: ask for one (``POST /exports``), build it in the background, read its progress.

**One export per source.** The export's id is derived from the client and the job id, or the sorted
selection of asset ids, so asking again finds it: while it is queued or building it is answered as
it is (and its current task enqueued again, a name Cloud Tasks drops as a duplicate: a lost task
comes back this way); a ready archive is reused while it holds what the source holds now (the
fingerprint of its rows: every asset's current revision key, the names, the failed items) and its
retention leaves a day; otherwise (changed, expiring, failed) the next *build* is queued.

**Building** (``/tasks/build-export`` on ``catalog_tasks``). A delivery takes the build with a
lease (a guarded write; a live lease of another delivery is a retry later). Its first segment
aborts any upload an earlier delivery left, reads the rows (:mod:`shared.exports.sources`), lays
them out (:mod:`shared.exports.layout`), saves them beside the archive and starts the multipart
upload; then each file is read in chunks and streamed into the ZIP (:mod:`shared.exports.archive`),
one at a time. A delivery past its time budget stops at a file boundary once everything written has
been uploaded as whole parts, saves a checkpoint, hands the build on to segment n+1 and enqueues its
task; a redelivery of segment n resumes from segment n's checkpoint (parts uploaded again replace
the same part numbers). The last segment adds ``manifest.csv``, completes the upload and marks the
export ready. On the queue's last attempt a delivery that fails records the export as failed and
aborts its upload.

Archives, rows and checkpoints live under ``exports/``, which an R2 lifecycle rule deletes after
:data:`EXPORT_RETENTION_DAYS` days; a ready export says when (``expires_at``).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import chain
from typing import TYPE_CHECKING, Any

from shared import logging as log
from shared.errors import EpoxError, NotFound, UpstreamUnavailable
from shared.exports.archive import ArchiveWriter, Checkpoint, PartSink
from shared.exports.layout import MANIFEST, Row, fingerprint, lay_out, manifest_csv
from shared.exports.models import (
    ExportCreate,
    ExportDoc,
    ExportOut,
    ExportSource,
    ExportStatus,
    ExportTask,
)
from shared.exports.ports import ExportRepository, StaleWrite, Versioned
from shared.exports.sources import check_job, job_wanted, resolve, selection_wanted
from shared.ids import derived_id
from shared.retry import CONTENDED_COMMIT, attempts
from shared.storage import MIN_PART_BYTES, ObjectNotFound, UploadedPart
from shared.tasks import RetryTask, TaskRequest, task_name

if TYPE_CHECKING:
    from shared.batch.store import JobStore
    from shared.catalog.ports import CatalogRepositories
    from shared.config import Settings
    from shared.platform import Platform
    from shared.storage import ObjectStore
    from shared.tasks import TaskCall, TaskQueue

logger = log.get_logger("epox.exports")

EXPORT_PREFIX = "exports/"
EXPORT_RETENTION_DAYS = 7  # the R2 lifecycle rule on EXPORT_PREFIX (infra/terraform/r2.tf)
BUILD_PATH = "/tasks/build-export"
WORKER = "catalog_tasks"
# A ready archive is reused only while it has at least this long before the lifecycle may delete it.
REUSE_MARGIN = timedelta(days=1)
LEASE_MARGIN = timedelta(seconds=60)  # a delivery's lease outlives its deadline by this much
PROGRESS_SECONDS = 2.0  # how often a delivery writes files_done


class ExportNotFound(NotFound):
    code = "export_not_found"
    title = "Export not found"


@dataclass(frozen=True)
class ExportPolicy:
    part_bytes: int
    budget_seconds: float  # a delivery hands the rest on after this long
    link_seconds: int  # a download URL's validity
    task_deadline: timedelta  # catalog_tasks' timeout, asked of Cloud Tasks as the dispatch deadline
    max_attempts: int
    min_part_bytes: int = MIN_PART_BYTES

    @property
    def lease(self) -> timedelta:
        return self.task_deadline + LEASE_MARGIN


def export_policy(settings: Settings) -> ExportPolicy:
    return ExportPolicy(
        part_bytes=settings.export_part_mib * 1024 * 1024,
        budget_seconds=settings.export_budget_seconds,
        link_seconds=settings.export_link_seconds,
        task_deadline=timedelta(seconds=settings.catalog_tasks_timeout_seconds),
        max_attempts=settings.tasks_max_attempts,
    )


@dataclass(frozen=True, kw_only=True)
class ExportServices:
    """What exports run with: their documents, the catalog, the object store, the queue, and the
    job store of the kind a job id names (by its prefix: ``job_``, ``edj_``, ``vid_``)."""

    exports: ExportRepository
    catalog: CatalogRepositories
    store: ObjectStore
    queue: TaskQueue
    policy: ExportPolicy
    clock: Callable[[], datetime]
    job_stores: Callable[[str], JobStore[Any, Any] | None]
    monotonic: Callable[[], float] = field(default=time.monotonic)


@dataclass(frozen=True)
class JobShelfOf:
    """A job kind's documents, named without loading the kind (its work reaches model SDKs and media
    libraries a ZIP export has no use for); a test holds each one to its kind."""

    collection: str
    noun: str
    job_model: type[Any]
    item_model: type[Any]


def exportable_jobs() -> dict[str, JobShelfOf]:
    """The kinds whose results export, by job id prefix (their models imported on first use)."""
    from shared.editing.models import EditItemDoc, EditJobDoc
    from shared.generation.models import ItemDoc, JobDoc
    from shared.videos.models import VideoItemDoc, VideoJobDoc

    return {
        "job": JobShelfOf("jobs", "job", JobDoc, ItemDoc),
        "edj": JobShelfOf("edit_jobs", "edit job", EditJobDoc, EditItemDoc),
        "vid": JobShelfOf("video_jobs", "video job", VideoJobDoc, VideoItemDoc),
    }


def export_services(platform: Platform) -> ExportServices:
    """The services from the platform (the job kinds are imported only here, when an export needs them)."""

    def job_stores(job_id: str) -> JobStore[Any, Any] | None:
        shelf = exportable_jobs().get(job_id.split("_", 1)[0])
        return None if shelf is None else platform.job_store(shelf)

    return ExportServices(
        exports=platform.exports,
        catalog=platform.catalog,
        store=platform.object_store,
        queue=platform.task_queue,
        policy=export_policy(platform.settings),
        clock=platform.clock,
        job_stores=job_stores,
    )


# -- keys ---------------------------------------------------------------------------------------------


def _base(client_id: str, export_id: str) -> str:
    return f"{EXPORT_PREFIX}{client_id}/{export_id}"


def archive_key(client_id: str, export_id: str, build: int) -> str:
    return f"{_base(client_id, export_id)}/b{build}.zip"


def rows_key(client_id: str, export_id: str, build: int) -> str:
    return f"{_base(client_id, export_id)}/b{build}/rows.json"


def checkpoint_key(client_id: str, export_id: str, build: int, segment: int) -> str:
    return f"{_base(client_id, export_id)}/b{build}/s{segment}.json"


# -- asking for an export -------------------------------------------------------------------------------


def _jobs_of(services: ExportServices, job_id: str) -> JobStore[Any, Any]:
    jobs = services.job_stores(job_id)
    if jobs is None:
        raise NotFound(f"No job {job_id}")
    return jobs


def _rows(services: ExportServices, client_id: str, source: ExportSource) -> list[Row]:
    """The source's rows as they are now, laid out."""
    if source.kind == "job":
        job_id = str(source.job_id)
        jobs = _jobs_of(services, job_id)
        wanted = job_wanted(jobs, client_id, check_job(jobs, client_id, job_id))
    else:
        wanted = selection_wanted(services.catalog, client_id, source.asset_ids)
    return lay_out(resolve(services.catalog, client_id, wanted))


def request_export(services: ExportServices, client_id: str, data: ExportCreate) -> ExportOut:
    """Queue the export of a finished job of the client or of a selection of its assets (404 for
    anything not the client's, 409 while the job runs: nothing written); the same source again is
    the same export, rebuilt only when what it holds has changed, expires soon or failed."""
    if data.job_id is not None:
        jobs = _jobs_of(services, data.job_id)
        check_job(jobs, client_id, data.job_id)
        source = ExportSource(kind="job", job_id=data.job_id)
        export_id = derived_id("exp", client_id, "job", data.job_id)
        filename = f"epox-{data.job_id}.zip"
    else:
        ids = sorted(data.asset_ids or [])
        selection_wanted(services.catalog, client_id, ids)  # every one the client's, or 404
        source = ExportSource(kind="selection", asset_ids=ids)
        export_id = derived_id("exp", client_id, "selection", *ids)
        filename = f"epox-{len(ids)}-assets-{export_id[-8:]}.zip"
    for _attempt in attempts(CONTENDED_COMMIT, f"export {export_id}"):
        now = services.clock()
        loaded = services.exports.load(client_id, export_id)
        if loaded is None:
            doc = ExportDoc(
                id=export_id, client_id=client_id, source=source, filename=filename, created_at=now, updated_at=now
            )
            if not services.exports.create(doc):
                continue  # a concurrent request created it: answer what it did
            _enqueue(services, doc, 0)
            return export_out(doc, services.store, services.policy.link_seconds, now)
        doc = loaded.value
        if doc.status in (ExportStatus.QUEUED, ExportStatus.BUILDING):
            _enqueue(services, doc, doc.segment)  # a duplicate name unless its task was lost
            return export_out(doc, services.store, services.policy.link_seconds, now)
        if doc.status is ExportStatus.READY and _reusable(services, doc, now):
            return export_out(doc, services.store, services.policy.link_seconds, now)
        try:
            again = services.exports.update(loaded, _fresh_build(doc, now)).value
        except StaleWrite:
            continue
        _enqueue(services, again, 0)
        return export_out(again, services.store, services.policy.link_seconds, now)
    raise UpstreamUnavailable("The export kept changing; try again", retry_after=1)


def _reusable(services: ExportServices, doc: ExportDoc, now: datetime) -> bool:
    if doc.expires_at is None or doc.expires_at - now < REUSE_MARGIN:
        return False
    return fingerprint(_rows(services, doc.client_id, doc.source)) == doc.fingerprint


def _fresh_build(doc: ExportDoc, now: datetime) -> dict[str, Any]:
    return {
        "status": ExportStatus.QUEUED.value,
        "build": doc.build + 1,
        "segment": 0,
        "files_done": 0,
        "files_total": 0,
        "rows_total": 0,
        "failure": None,
        "run": None,
        "lease_until": None,
        "started_at": None,
        "updated_at": now,
    }


def _enqueue(services: ExportServices, doc: ExportDoc, segment: int) -> None:
    services.queue.enqueue(
        TaskRequest(
            target=WORKER,
            path=BUILD_PATH,
            payload=ExportTask(client_id=doc.client_id, export_id=doc.id, build=doc.build, segment=segment),
            name=task_name("export", doc.client_id, doc.id, f"b{doc.build}", f"s{segment}"),
            dispatch_deadline=services.policy.task_deadline,
        )
    )


def get_export(exports: ExportRepository, client_id: str, export_id: str) -> ExportDoc:
    loaded = exports.load(client_id, export_id)
    if loaded is None:
        raise ExportNotFound(f"No export {export_id}")
    return loaded.value


def export_out(doc: ExportDoc, store: ObjectStore, link_seconds: int, now: datetime) -> ExportOut:
    """The export as the API shows it; a ready one with a fresh presigned download URL."""
    status, url, url_expires = doc.status, None, None
    if status is ExportStatus.READY and doc.expires_at is not None and now >= doc.expires_at:
        status = ExportStatus.EXPIRED
    elif status is ExportStatus.READY and doc.archive_key:
        seconds = link_seconds
        if doc.expires_at is not None:
            seconds = max(1, min(seconds, int((doc.expires_at - now).total_seconds())))
        url = store.presigned_get(doc.archive_key, expires_in=seconds, download_name=doc.filename)
        url_expires = now + timedelta(seconds=seconds)
    finished = 1.0 if doc.status is ExportStatus.READY else 0.0
    progress = doc.files_done / doc.files_total if doc.files_total else finished
    return ExportOut(
        id=doc.id,
        status=status,
        job_id=doc.source.job_id,
        asset_count=len(doc.source.asset_ids) if doc.source.kind == "selection" else None,
        files_total=doc.files_total,
        files_done=doc.files_done,
        progress=round(progress, 4),
        size_bytes=doc.size_bytes,
        filename=doc.filename,
        download_url=url,
        url_expires_at=url_expires,
        expires_at=doc.expires_at,
        created_at=doc.created_at,
        ready_at=doc.ready_at,
        failure=doc.failure,
    )


# -- building -------------------------------------------------------------------------------------------


def build_export(services: ExportServices, task: ExportTask, call: TaskCall) -> str:
    """One delivery of a build's segment: write what the time budget allows (or all of it)."""
    started = services.monotonic()
    now = services.clock()
    loaded = services.exports.load(task.client_id, task.export_id)
    if loaded is None:
        return "no such export"
    doc = loaded.value
    if doc.build != task.build or doc.status in (ExportStatus.READY, ExportStatus.FAILED):
        return f"stale: the export is at build {doc.build}, {doc.status.value}"
    if doc.segment != task.segment:
        if doc.segment > task.segment:
            # Handed on already: its next task may have been lost between the hand-over and its enqueue.
            _enqueue(services, doc, doc.segment)
        return f"stale: the build is at segment {doc.segment}"
    if doc.run is not None and doc.lease_until is not None and doc.lease_until > now:
        wait = max(1, int((doc.lease_until - now).total_seconds()))
        raise RetryTask("Another delivery is writing this export", retry_after=min(wait, 600))
    run = secrets.token_hex(8)
    claim = {
        "status": ExportStatus.BUILDING.value,
        "run": run,
        "lease_until": now + services.policy.lease,
        "started_at": doc.started_at or now,
        "updated_at": now,
    }
    try:
        loaded = services.exports.update(loaded, claim)
    except StaleWrite:
        raise RetryTask("The export changed while this delivery took it", retry_after=1) from None
    last_attempt = call.retry_count + 1 >= services.policy.max_attempts
    try:
        return _write(services, loaded, task.segment, started)
    except StaleWrite:
        return "superseded: another delivery took the build over"
    except Exception as exc:
        if not last_attempt:
            _release(services, task, run)  # the queue's next delivery need not wait for our lease
            raise
        reason = exc.detail if isinstance(exc, EpoxError) else f"internal error: {type(exc).__name__}"
        logger.exception("export %s build %s failed for good", task.export_id, task.build)
        _fail(services, task, reason)
        return f"failed: {reason}"


@dataclass
class _Progress:
    """Writes files_done every few seconds, each write guarded by the last one."""

    services: ExportServices
    loaded: Versioned[ExportDoc]
    files_done: int
    written_at: float

    def file_done(self) -> None:
        self.files_done += 1
        clock = self.services.monotonic()
        if clock - self.written_at >= PROGRESS_SECONDS:
            self.save({})
            self.written_at = clock

    def save(self, changes: dict[str, Any]) -> None:
        update = {"files_done": self.files_done, "updated_at": self.services.clock(), **changes}
        self.loaded = self.services.exports.update(self.loaded, update)


def _write(services: ExportServices, loaded: Versioned[ExportDoc], segment: int, started: float) -> str:
    store, doc = services.store, loaded.value
    client_id, export_id, build = doc.client_id, doc.id, doc.build
    if segment == 0:
        if doc.upload_id and doc.archive_key:
            store.abort_multipart(doc.archive_key, doc.upload_id)  # what an earlier delivery left half-built
        rows = _rows(services, client_id, doc.source)
        store.put(
            rows_key(client_id, export_id, build),
            json.dumps([row.model_dump(mode="json") for row in rows]).encode(),
            "application/json",
        )
        key = archive_key(client_id, export_id, build)
        upload_id = store.start_multipart(key, "application/zip")
        loaded = services.exports.update(
            loaded,
            {
                "upload_id": upload_id,
                "archive_key": key,
                "fingerprint": fingerprint(rows),
                "files_total": sum(1 for row in rows if row.has_file),
                "rows_total": len(rows),
                "files_done": 0,
                "updated_at": services.clock(),
            },
        )
        checkpoint = Checkpoint(upload_id=upload_id, key=key)
    else:
        raw = json.loads(store.get(rows_key(client_id, export_id, build)))
        rows = [Row.model_validate(row) for row in raw]
        checkpoint = Checkpoint.model_validate_json(store.get(checkpoint_key(client_id, export_id, build, segment)))
    sink = PartSink(
        store,
        checkpoint.key,
        checkpoint.upload_id,
        part_bytes=services.policy.part_bytes,
        parts=[UploadedPart(number, etag) for number, etag in checkpoint.parts],
        offset=checkpoint.offset,
        tail=store.get(checkpoint.tail_key) if checkpoint.tail_key else b"",
        min_part_bytes=services.policy.min_part_bytes,
    )
    writer = ArchiveWriter(sink, checkpoint.members)
    done = sum(1 for row in rows[: checkpoint.next_row] if row.has_file)
    progress = _Progress(services, loaded, done, services.monotonic())
    try:
        return _stream(services, progress, writer, rows, checkpoint, segment, started)
    except BaseException:
        writer.abandon()  # nothing this delivery wrote after its last part is uploaded
        raise


def _stream(
    services: ExportServices,
    progress: _Progress,
    writer: ArchiveWriter,
    rows: Sequence[Row],
    checkpoint: Checkpoint,
    segment: int,
    started: float,
) -> str:
    """Write the rows from the checkpoint on: all of them (then the manifest, and the export is ready),
    or those the time budget allows (then a checkpoint and the next segment's task)."""
    store, sink, doc = services.store, writer.sink, progress.loaded.value
    client_id, export_id, build = doc.client_id, doc.id, doc.build
    missing = list(checkpoint.missing)
    when = services.clock()
    for index in range(checkpoint.next_row, len(rows)):
        row = rows[index]
        if row.has_file:
            if not _add_file(store, writer, row, when):
                missing.append(index)
            progress.file_done()
        out_of_time = services.monotonic() - started > services.policy.budget_seconds
        if index + 1 < len(rows) and out_of_time:
            tail = sink.cut()
            tail_key = None
            if tail:
                tail_key = checkpoint_key(client_id, export_id, build, segment + 1) + ".tail"
                store.put(tail_key, tail, "application/octet-stream")
            after = Checkpoint(
                upload_id=checkpoint.upload_id,
                key=checkpoint.key,
                parts=[(part.number, part.etag) for part in sink.parts],
                offset=sink.offset,
                next_row=index + 1,
                members=writer.states(),
                missing=missing,
                tail_key=tail_key,
            )
            store.put(
                checkpoint_key(client_id, export_id, build, segment + 1),
                after.model_dump_json().encode(),
                "application/json",
            )
            progress.save({"segment": segment + 1, "run": None, "lease_until": None})
            _enqueue(services, progress.loaded.value, segment + 1)
            return f"handed on to segment {segment + 1} after {progress.files_done} files"
    writer.add_bytes(MANIFEST, manifest_csv(rows, missing), when)
    parts = writer.close()
    _complete(store, checkpoint.key, checkpoint.upload_id, parts, sink.offset)
    now = services.clock()
    progress.save(
        {
            "status": ExportStatus.READY.value,
            "size_bytes": sink.offset,
            "ready_at": now,
            "expires_at": now + timedelta(days=EXPORT_RETENTION_DAYS),
            "upload_id": None,
            "run": None,
            "lease_until": None,
            "failure": None,
        }
    )
    _clean_up(store, client_id, export_id, build, segment)
    return f"ready: {progress.files_done} files, {sink.offset} bytes, {len(missing)} missing"


def _add_file(store: ObjectStore, writer: ArchiveWriter, row: Row, when: datetime) -> bool:
    """Stream the row's object into the archive; False when the object is gone."""
    assert row.key is not None and row.file is not None
    chunks: Iterator[bytes] = store.iter_chunks(row.key)
    try:
        first = next(chunks, b"")  # the read starts here: a missing object is known before the member is
    except ObjectNotFound:
        return False
    writer.add_stream(row.file, chain([first], chunks), when)
    return True


def _complete(store: ObjectStore, key: str, upload_id: str, parts: Sequence[UploadedPart], size: int) -> None:
    try:
        store.complete_multipart(key, upload_id, parts)
    except EpoxError:
        # A completion whose answer was lost: the archive is there, whole.
        info = store.head(key)
        if info is None or info.size != size:
            raise


def _clean_up(store: ObjectStore, client_id: str, export_id: str, build: int, segments: int) -> None:
    """The build's rows and checkpoints, and the archives of earlier builds (the lifecycle rule deletes
    whatever this misses)."""
    keys = [rows_key(client_id, export_id, build)]
    for n in range(1, segments + 1):
        keys += [
            checkpoint_key(client_id, export_id, build, n),
            checkpoint_key(client_id, export_id, build, n) + ".tail",
        ]
    keys += [archive_key(client_id, export_id, n) for n in range(max(1, build - 3), build)]
    try:
        store.delete_many(keys)
    except EpoxError:
        logger.warning("export %s: could not delete the leftovers of build %s", export_id, build)


def _release(services: ExportServices, task: ExportTask, run: str) -> None:
    try:
        loaded = services.exports.load(task.client_id, task.export_id)
        if loaded is not None and loaded.value.run == run:
            services.exports.update(loaded, {"run": None, "lease_until": None})
    except (StaleWrite, EpoxError):
        logger.warning("export %s: could not release the lease of run %s", task.export_id, run)


def _fail(services: ExportServices, task: ExportTask, reason: str) -> None:
    for _attempt in attempts(CONTENDED_COMMIT, f"fail export {task.export_id}"):
        loaded = services.exports.load(task.client_id, task.export_id)
        if loaded is None or loaded.value.build != task.build or loaded.value.status is ExportStatus.READY:
            return
        doc = loaded.value
        try:
            services.exports.update(
                loaded,
                {
                    "status": ExportStatus.FAILED.value,
                    "failure": reason,
                    "run": None,
                    "lease_until": None,
                    "upload_id": None,
                    "updated_at": services.clock(),
                },
            )
        except StaleWrite:
            continue
        if doc.upload_id and doc.archive_key:
            try:
                services.store.abort_multipart(doc.archive_key, doc.upload_id)
            except EpoxError:
                logger.warning("export %s: could not abort upload %s", task.export_id, doc.upload_id)
        return
