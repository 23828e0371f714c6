"""ZIP exports on the in-memory fakes: the multipart sink, the resumable archive, the layout and
manifest, and the service (job and selection exports, reuse, rebuilds, hand-overs between
deliveries, redeliveries, refusals)."""

from __future__ import annotations

import csv
import io
import zipfile
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from shared.batch.models import ItemStatus, JobStatus
from shared.catalog import assets, products
from shared.catalog.models import AssetKind, AssetOrigin, ProductCreate
from shared.errors import NotFound, UpstreamUnavailable
from shared.exports import service
from shared.exports.archive import ArchiveWriter, Checkpoint, PartSink
from shared.exports.layout import Row, lay_out, manifest_csv
from shared.exports.models import MAX_EXPORT_ASSETS, ExportCreate, ExportStatus, ExportTask
from shared.exports.sources import JobStillRunning
from shared.generation.jobs import GENERATION
from shared.generation.models import GenerationSettings, ItemDoc, JobDoc
from shared.storage import UploadedPart
from shared.tasks import RetryTask, TaskCall
from tests.fakes import InMemoryObjectStore, RecordingTaskQueue
from tests.fakes_batch import InMemoryJobStore
from tests.fakes_catalog import InMemoryAssetRepository, InMemoryProductRepository, in_memory_catalog
from tests.fakes_exports import InMemoryExportRepository

CLIENT, OTHER = "client_a", "client_b"
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
KIB = 1024
CALL = TaskCall(queue="q", name="t", retry_count=0, execution_count=0)


# -- the multipart sink and the archive -------------------------------------------------------------


def upload(store: InMemoryObjectStore, key: str = "exports/a.zip") -> tuple[str, str]:
    return key, store.start_multipart(key, "application/zip")


def test_the_sink_uploads_a_part_whenever_it_holds_one_and_never_holds_two() -> None:
    store = InMemoryObjectStore(min_part_bytes=10 * KIB)
    key, upload_id = upload(store)
    sink = PartSink(store, key, upload_id, part_bytes=10 * KIB, min_part_bytes=10 * KIB)
    for _ in range(100):
        sink.write(b"x" * 3 * KIB)  # 300 KiB in writes smaller than a part
    assert len(sink.parts) == 25 and sink.offset == 25 * 12 * KIB
    assert sink.tell() == 300 * KIB and sink.peak_buffer < 10 * KIB + 3 * KIB
    with pytest.raises(OSError):
        sink.seek(0)
    store.complete_multipart(key, upload_id, sink.finish())
    assert store.objects[key][0] == b"x" * 300 * KIB
    with pytest.raises(ValueError, match="at least"):
        PartSink(store, key, upload_id, part_bytes=KIB, min_part_bytes=10 * KIB)


def test_cut_uploads_only_what_can_be_a_part() -> None:
    store = InMemoryObjectStore(min_part_bytes=10 * KIB)
    key, upload_id = upload(store)
    sink = PartSink(store, key, upload_id, part_bytes=64 * KIB, min_part_bytes=10 * KIB)
    sink.write(b"y" * 4 * KIB)
    assert sink.cut() == b"y" * 4 * KIB and sink.parts == []  # 4 KiB cannot be a part that is not the last
    sink.write(b"y" * 8 * KIB)
    assert sink.cut() == b"" and len(sink.parts) == 1 and sink.offset == 12 * KIB


def big(n: int, size: int = 40 * KIB) -> bytes:
    return bytes((n * 7 + i) % 251 for i in range(size))


def test_an_archive_written_in_two_deliveries_is_one_valid_zip() -> None:
    store = InMemoryObjectStore(min_part_bytes=16 * KIB)
    key, upload_id = upload(store)
    first = PartSink(store, key, upload_id, part_bytes=32 * KIB, min_part_bytes=16 * KIB)
    writer = ArchiveWriter(first)
    for n in range(3):  # 20 KiB each: the third leaves 20 KiB held, enough for a part that is not the last
        writer.add_stream(f"p/{n}.png", iter([big(n, 20 * KIB)[: 10 * KIB], big(n, 20 * KIB)[10 * KIB :]]), NOW)
    assert len(first.parts) == 1 and first.cut() == b"" and len(first.parts) == 2
    saved = Checkpoint(
        upload_id=upload_id,
        key=key,
        parts=[(p.number, p.etag) for p in first.parts],
        offset=first.offset,
        members=writer.states(),
    )
    # Another delivery, another process: only the checkpoint (as JSON) goes over.
    restored = Checkpoint.model_validate_json(saved.model_dump_json())
    second = PartSink(
        store,
        key,
        upload_id,
        part_bytes=32 * KIB,
        parts=[UploadedPart(n, e) for n, e in restored.parts],
        offset=restored.offset,
        min_part_bytes=16 * KIB,
    )
    resumed = ArchiveWriter(second, restored.members)
    resumed.add_stream("q/3.png", iter([big(3)]), NOW)
    resumed.add_bytes("manifest.csv", b"row\r\n1\r\n", NOW)
    store.complete_multipart(key, upload_id, resumed.close())
    with zipfile.ZipFile(io.BytesIO(store.objects[key][0])) as archive:
        assert archive.testzip() is None
        assert archive.namelist() == ["p/0.png", "p/1.png", "p/2.png", "q/3.png", "manifest.csv"]
        assert [archive.read(f"p/{n}.png") for n in range(3)] == [big(n, 20 * KIB) for n in range(3)]
        assert archive.read("q/3.png") == big(3)
        assert archive.getinfo("p/0.png").compress_type == zipfile.ZIP_STORED
        assert archive.getinfo("manifest.csv").compress_type == zipfile.ZIP_DEFLATED


# -- layout and manifest ----------------------------------------------------------------------------


def row(asset: str, product: str | None, name: str | None, sku: str | None = None, style: str = "studio") -> Row:
    return Row(
        status="ok",
        asset_id=asset,
        product_id=product,
        product=name,
        sku=sku,
        style=style,
        key=f"k/{asset}.png",
        content_type="image/png",
    )


def test_layout_folders_per_product_and_names_per_style() -> None:
    rows = lay_out(
        [
            row("a1", "p1", "Vase", sku="CV/1"),
            row("a2", "p1", "Vase", sku="CV/1"),
            row("a3", "p2", "Crème Mug"),
            row("a4", "p3", "Crème Mug"),  # another product, the same name
            row("a5", None, None, style="lifestyle"),
            row("a6", "p4", "Unassigned"),
            row("a7", "p2", "Crème Mug", style="Luxury / Gold"),
            Row(status="failed", product_id="p1", product="Vase", reason="generation_failed: no image"),
        ]
    )
    assert [r.file for r in rows] == [
        "CV-1/studio-1.png",
        "CV-1/studio-2.png",
        "Creme-Mug/studio-1.png",
        "Creme-Mug-2/studio-1.png",
        "unassigned/lifestyle-1.png",
        "Unassigned-2/studio-1.png",
        "Creme-Mug/Luxury-Gold-1.png",
        None,
    ]


def test_the_manifest_lists_every_row_and_defuses_formulas() -> None:
    rows = lay_out(
        [
            row("a1", "p1", "=HYPERLINK(1)", sku="S1"),
            row("a2", "p1", "=HYPERLINK(1)", sku="S1"),
            Row(status="failed", product="Vase", reason="content_blocked: blocked"),
        ]
    )
    text = manifest_csv(rows, missing=[1]).decode("utf-8-sig")
    lines = list(csv.reader(io.StringIO(text)))
    assert lines == [
        ["row", "product", "sku", "asset_id", "file", "status", "failure_reason"],
        ["1", "'=HYPERLINK(1)", "S1", "a1", "S1/studio-1.png", "ok", ""],
        ["2", "'=HYPERLINK(1)", "S1", "a2", "", "missing", "the stored file was not found"],
        ["3", "Vase", "", "", "", "failed", "content_blocked: blocked"],
    ]


# -- the service ------------------------------------------------------------------------------------


class Media:
    def __init__(self, data: bytes) -> None:
        self.data, self.content_type, self.extension, self.width, self.height = data, "image/png", "png", 8, 8


class Thumb:
    data = b"thumb"
    content_type = "image/webp"


class World:
    """The fakes an export runs on, a clock and a monotonic clock the tests move."""

    def __init__(self, *, part_kib: int = 32, budget: float = 1000.0) -> None:
        self.catalog = in_memory_catalog()
        assert isinstance(self.catalog.products, InMemoryProductRepository)
        assert isinstance(self.catalog.assets, InMemoryAssetRepository)
        self.products, self.assets = self.catalog.products, self.catalog.assets
        for client in (CLIENT, OTHER):
            self.products.billing[client] = {"plan": "starter", "product_slots": 50}
        self.store = InMemoryObjectStore(min_part_bytes=16 * KIB)
        self.queue = RecordingTaskQueue()
        self.exports = InMemoryExportRepository()
        self.jobs: InMemoryJobStore[JobDoc, ItemDoc] = InMemoryJobStore(GENERATION)
        self.now = NOW
        self.ticks = 0.0
        self.tick = 0.0  # monotonic seconds each reading advances
        policy = service.ExportPolicy(
            part_bytes=part_kib * KIB,
            budget_seconds=budget,
            link_seconds=3600,
            task_deadline=timedelta(minutes=5),
            max_attempts=3,
            min_part_bytes=16 * KIB,
        )
        self.services = service.ExportServices(
            exports=self.exports,
            catalog=self.catalog,
            store=self.store,
            queue=self.queue,
            policy=policy,
            clock=lambda: self.now,
            job_stores=lambda job_id: self.jobs if job_id.startswith("job_") else None,
            monotonic=self._monotonic,
        )

    def _monotonic(self) -> float:
        self.ticks += self.tick
        return self.ticks

    def product(self, name: str, sku: str | None = None, client: str = CLIENT) -> str:
        return products.create_product(self.products, client, ProductCreate(name=name, sku=sku), self.now).id

    def asset(self, asset_id: str, product_id: str | None, *, client: str = CLIENT, size: int = 40 * KIB,
              job_id: str | None = None, style: str | None = None) -> str:  # fmt: skip
        new = assets.NewAsset(
            asset_id=asset_id,
            client_id=client,
            kind=AssetKind.GENERATED,
            source="offline",
            origin=AssetOrigin.GENERATED,
            operation="generate",
            product_id=product_id,
            job_id=job_id,
            metadata={"style": style} if style else None,
        )
        assets.create_asset(self.assets, self.store, new, Media(big(len(asset_id), size)), Thumb(), self.now)
        return asset_id

    def request(self, **body: Any) -> Any:
        return service.request_export(self.services, CLIENT, ExportCreate.model_validate(body))

    def run(self, *, retry_count: int = 0) -> list[str]:
        """Deliver the queued export tasks (and the ones they enqueue) until none is left."""
        outcomes = []
        while self.queue.tasks:
            task = self.queue.tasks.pop(0)
            payload = ExportTask.model_validate(task.payload.model_dump())
            call = TaskCall(queue="q", name=task.name or "", retry_count=retry_count, execution_count=0)
            outcomes.append(service.build_export(self.services, payload, call))
        return outcomes

    def archive(self, export_id: str) -> zipfile.ZipFile:
        doc = service.get_export(self.exports, CLIENT, export_id)
        assert doc.archive_key is not None
        return zipfile.ZipFile(io.BytesIO(self.store.objects[doc.archive_key][0]))


def manifest(archive: zipfile.ZipFile) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode("utf-8-sig"))))


def finished_job(world: World, product_id: str) -> str:
    """A completed generation job: item 0 made two images, item 1 failed, item 2 made one of two."""
    job = JobDoc(
        id="job_1",
        client_id=CLIENT,
        status=JobStatus.COMPLETED,
        item_count=3,
        cost=6,
        hold_id="",
        created_by="u",
        created_at=NOW,
        updated_at=NOW,
        settings=GenerationSettings(style="studio", variants=2),
        slot_count=6,
        unit_price=1,
    )
    failure = {"code": "generation_failed", "message": "The model answered without an image", "retryable": False}
    items = [
        ItemDoc(index=0, status=ItemStatus.SUCCEEDED, product_id=product_id, asset_ids=["ast_g0", "ast_g1"]),
        ItemDoc(index=1, status=ItemStatus.FAILED, product_id=product_id, failed_variants=2, failure=failure),
        ItemDoc(
            index=2,
            status=ItemStatus.SUCCEEDED,
            prompt="a kettle",
            asset_ids=["ast_g4"],
            failed_variants=1,
            failure=failure,
        ),
    ]
    assert world.jobs.create_job(job, items)
    for asset_id, owner in (("ast_g0", product_id), ("ast_g1", product_id), ("ast_g4", None)):
        world.asset(asset_id, owner, job_id="job_1")
    return job.id


def test_a_job_export_holds_its_images_by_product_and_its_failures_in_the_manifest() -> None:
    world = World()
    job_id = finished_job(world, world.product("Ceramic Vase", sku="CV-1"))
    out = world.request(job_id=job_id)
    assert out.status is ExportStatus.QUEUED and out.download_url is None
    assert world.run() == [
        "ready: 3 files, " + str(world.exports.docs[(CLIENT, out.id)][0].size_bytes) + " bytes, 0 missing"
    ]
    ready = service.export_out(service.get_export(world.exports, CLIENT, out.id), world.store, 3600, world.now)
    assert ready.status is ExportStatus.READY and (ready.files_done, ready.files_total, ready.progress) == (3, 3, 1.0)
    assert ready.download_url and ready.expires_at == NOW + timedelta(days=7)
    with world.archive(out.id) as archive:
        assert archive.namelist() == [
            "CV-1/studio-1.png",
            "CV-1/studio-2.png",
            "unassigned/studio-1.png",
            "manifest.csv",
        ]
        assert archive.read("CV-1/studio-2.png") == world.store.get(world.assets.get(CLIENT, "ast_g1").key)  # type: ignore[union-attr]
        rows = manifest(archive)
    assert [(r["row"], r["asset_id"], r["file"], r["status"]) for r in rows] == [
        ("1", "ast_g0", "CV-1/studio-1.png", "ok"),
        ("2", "ast_g1", "CV-1/studio-2.png", "ok"),
        ("3", "", "", "failed"),
        ("4", "ast_g4", "unassigned/studio-1.png", "ok"),
        ("5", "", "", "failed"),
    ]
    assert rows[2]["product"] == "Ceramic Vase" and rows[2]["sku"] == "CV-1"
    assert rows[2]["failure_reason"] == "generation_failed: The model answered without an image"
    assert rows[4]["failure_reason"].endswith("(1 of 2)")
    # Nothing of the build is left but the archive.
    assert [k for k in world.store.objects if k.startswith("exports/")] == [f"exports/{CLIENT}/{out.id}/b1.zip"]
    assert world.store.uploads == {}


def test_asking_again_reuses_the_archive_until_an_asset_changes() -> None:
    world = World()
    job_id = finished_job(world, world.product("Vase"))
    first = world.request(job_id=job_id)
    world.run()
    writes = world.exports.writes
    again = world.request(job_id=job_id)
    assert again.id == first.id and again.status is ExportStatus.READY and world.queue.tasks == []
    assert world.exports.writes == writes  # nothing rebuilt, nothing written
    # An edit of one image (a new revision) changes what the archive would hold: the next build.
    asset = world.assets.get(CLIENT, "ast_g0")
    assert asset is not None
    key, thumb = assets.write_objects(world.store, CLIENT, "ast_g0", 2, Media(b"edited" * 100), Thumb())
    revision = world.assets.revision(CLIENT, "ast_g0", 1)
    assert revision is not None
    assets.commit_revision(
        world.assets,
        client_id=CLIENT,
        asset_id="ast_g0",
        revision=revision.model_copy(update={"number": 2, "key": key, "thumbnail_key": thumb}),
        now=world.now,
    )
    rebuilt = world.request(job_id=job_id)
    assert rebuilt.status is ExportStatus.QUEUED and rebuilt.id == first.id
    world.run()
    doc = service.get_export(world.exports, CLIENT, first.id)
    assert doc.build == 2 and doc.status is ExportStatus.READY
    with world.archive(first.id) as archive:
        assert archive.read("Vase/studio-1.png") == b"edited" * 100
    assert f"exports/{CLIENT}/{first.id}/b1.zip" not in world.store.objects  # the old archive is gone
    # An archive close to its deletion by the lifecycle rule is built again too.
    world.now += timedelta(days=6, hours=1)
    assert world.request(job_id=job_id).status is ExportStatus.QUEUED


def test_a_long_build_hands_on_between_deliveries_and_resumes_after_a_crash() -> None:
    world = World(part_kib=16, budget=0.5)
    world.tick = 1.0  # every file takes "a second": past the budget after the first one
    product_id = world.product("Lamp")
    ids = [world.asset(f"ast_{n:02d}", product_id, size=30 * KIB) for n in range(8)]
    out = world.request(asset_ids=ids)
    outcomes = world.run()
    assert outcomes[0].startswith("handed on to segment 1") and outcomes[-1].startswith("ready: 8 files")
    assert len(outcomes) > 3
    with world.archive(out.id) as archive:
        assert archive.testzip() is None
        assert sorted(archive.namelist()) == sorted([f"Lamp/generated-{n}.png" for n in range(1, 9)] + ["manifest.csv"])
        for n, asset_id in enumerate(sorted(ids)):
            doc = world.assets.get(CLIENT, asset_id)
            assert doc is not None and archive.read(f"Lamp/generated-{n + 1}.png") == world.store.get(doc.key)

    # A delivery that fails mid-segment (a part upload fails) is redelivered and resumes from its
    # checkpoint: the parts it uploaded after the checkpoint are uploaded again under the same numbers.
    world2 = World(part_kib=16, budget=0.5)
    world2.tick = 1.0
    product_id = world2.product("Lamp")
    ids = [world2.asset(f"ast_{n:02d}", product_id, size=30 * KIB) for n in range(8)]
    out = world2.request(asset_ids=ids)
    original, calls = world2.store.upload_part, [0]

    def flaky(key: str, upload_id: str, number: int, data: bytes) -> UploadedPart:
        calls[0] += 1
        if calls[0] == 6:
            raise UpstreamUnavailable("R2 had a bad second")
        return original(key, upload_id, number, data)

    world2.store.upload_part = flaky  # type: ignore[method-assign]
    outcomes, failures = [], 0
    while world2.queue.tasks:
        task = world2.queue.tasks[0]
        payload = ExportTask.model_validate(task.payload.model_dump())
        try:
            outcomes.append(service.build_export(world2.services, payload, CALL))
        except UpstreamUnavailable:
            failures += 1  # the queue delivers the same task again
            continue
        world2.queue.tasks.pop(0)
    assert failures == 1 and outcomes[-1].startswith("ready: 8 files")
    with world2.archive(out.id) as archive:
        assert archive.testzip() is None and len(archive.namelist()) == 9
        for n, asset_id in enumerate(sorted(ids)):
            doc = world2.assets.get(CLIENT, asset_id)
            assert doc is not None and archive.read(f"Lamp/generated-{n + 1}.png") == world2.store.get(doc.key)
    # The first task delivered again after the build finished changes nothing.
    world2.queue.tasks.append(task)
    assert world2.run() == ["stale: the export is at build 1, ready"]
    assert [k for k in world2.store.objects if k.startswith("exports/")] == [f"exports/{CLIENT}/{out.id}/b1.zip"]


def test_a_redelivery_while_another_delivery_holds_the_lease_retries_later() -> None:
    world = World()
    product_id = world.product("Lamp")
    out = world.request(asset_ids=[world.asset("ast_1", product_id)])
    task = ExportTask(client_id=CLIENT, export_id=out.id, build=1, segment=0)
    loaded = world.exports.load(CLIENT, out.id)
    assert loaded is not None
    world.exports.update(loaded, {"run": "someone", "lease_until": NOW + timedelta(minutes=3), "upload_id": None})
    with pytest.raises(RetryTask):
        service.build_export(world.services, task, CALL)
    # The lease lapses (that delivery died): this one takes over, aborting what the other left.
    key, upload_id = upload(world.store, service.archive_key(CLIENT, out.id, 1))
    loaded = world.exports.load(CLIENT, out.id)
    assert loaded is not None
    world.exports.update(loaded, {"upload_id": upload_id, "archive_key": key})
    world.now += timedelta(minutes=10)
    assert service.build_export(world.services, task, CALL).startswith("ready: 1 files")
    assert upload_id in world.store.aborted


def test_the_last_attempt_records_the_failure_and_aborts_the_upload() -> None:
    world = World()
    product_id = world.product("Lamp")
    out = world.request(asset_ids=[world.asset("ast_1", product_id)])
    original = world.store.upload_part

    def broken(*args: Any) -> Any:
        raise NotFound("the bucket is gone")

    world.store.upload_part = broken  # type: ignore[method-assign]
    task = world.queue.tasks[0]
    with pytest.raises(NotFound):
        world.run()  # not the last attempt: the queue retries
    world.queue.tasks.append(task)
    assert world.run(retry_count=2) == ["failed: the bucket is gone"]
    doc = service.get_export(world.exports, CLIENT, out.id)
    assert doc.status is ExportStatus.FAILED and doc.failure == "the bucket is gone"
    assert world.store.uploads == {}
    # Asking again builds it again.
    world.store.upload_part = original  # type: ignore[method-assign]
    assert world.request(asset_ids=["ast_1"]).status is ExportStatus.QUEUED
    world.run()
    assert service.get_export(world.exports, CLIENT, out.id).status is ExportStatus.READY


def test_a_file_gone_before_it_is_read_is_missing_in_the_manifest() -> None:
    world = World()
    product_id = world.product("Lamp")
    ids = [world.asset("ast_1", product_id), world.asset("ast_2", product_id)]
    out = world.request(asset_ids=ids)
    gone = world.assets.get(CLIENT, "ast_2")
    assert gone is not None
    world.store.delete(gone.key)
    assert world.run()[0].endswith("1 missing")
    with world.archive(out.id) as archive:
        assert archive.namelist() == ["Lamp/generated-1.png", "manifest.csv"]
        assert [(r["asset_id"], r["status"]) for r in manifest(archive)] == [("ast_1", "ok"), ("ast_2", "missing")]


def test_refusals_write_nothing() -> None:
    world = World()
    mine = world.asset("ast_mine", world.product("Lamp"))
    theirs = world.asset("ast_theirs", world.product("Theirs", client=OTHER), client=OTHER)
    with pytest.raises(NotFound) as refused:
        world.request(asset_ids=[mine, theirs])
    assert refused.value.extensions["missing"] == [theirs]
    with pytest.raises(NotFound):
        world.request(job_id="job_unknown")
    with pytest.raises(NotFound):
        world.request(job_id="edj_other_kind_not_wired_here")
    running = finished_job(world, world.product("Vase"))
    stored = world.jobs.read_job(CLIENT, running)
    assert stored is not None
    world.jobs.update_job(CLIENT, running, {"status": JobStatus.RUNNING.value})
    with pytest.raises(JobStillRunning):
        world.request(job_id=running)
    assert world.exports.docs == {} and world.queue.tasks == []
    with pytest.raises(ValidationError, match=f"at most {MAX_EXPORT_ASSETS}"):
        ExportCreate(asset_ids=[f"ast_{n}" for n in range(MAX_EXPORT_ASSETS + 1)])
    with pytest.raises(ValidationError, match="either job_id or asset_ids"):
        ExportCreate(job_id="job_1", asset_ids=["ast_1"])
    with pytest.raises(ValidationError, match="either job_id or asset_ids"):
        ExportCreate()


def test_the_same_selection_in_any_order_is_the_same_export() -> None:
    world = World()
    product_id = world.product("Lamp")
    a, b = world.asset("ast_a", product_id), world.asset("ast_b", product_id)
    first = world.request(asset_ids=[a, b])
    assert world.request(asset_ids=[b, a, b]).id == first.id
    assert len(world.queue.tasks) == 1  # asking again while queued enqueues the same named task: dropped
    assert world.request(asset_ids=[a]).id != first.id


def _job_fields(job_id: str) -> dict[str, Any]:
    return {
        "id": job_id,
        "client_id": CLIENT,
        "status": JobStatus.COMPLETED,
        "item_count": 2,
        "cost": 2,
        "hold_id": "",
        "created_by": "u",
        "created_at": NOW,
        "updated_at": NOW,
    }


def test_an_edit_job_exports_the_revisions_it_made_and_its_failures() -> None:
    from shared.editing.models import EditItemDoc, EditJobDoc
    from shared.editing.service import EDITS
    from shared.exports.sources import job_wanted, resolve

    world = World()
    product_id = world.product("Lamp")
    world.asset("ast_e1", product_id)
    world.asset("ast_e2", product_id)
    first = world.assets.get(CLIENT, "ast_e1")
    assert first is not None
    # The job made revision 2 of ast_e1; a later edit made revision 3: the export holds the job's revision 2.
    for number, data in ((2, b"by the job"), (3, b"later")):
        key, thumb = assets.write_objects(world.store, CLIENT, "ast_e1", number, Media(data), Thumb())
        revision = world.assets.revision(CLIENT, "ast_e1", 1)
        assert revision is not None
        assets.commit_revision(
            world.assets,
            client_id=CLIENT,
            asset_id="ast_e1",
            revision=revision.model_copy(update={"number": number, "key": key, "thumbnail_key": thumb}),
            now=NOW,
        )
    jobs: InMemoryJobStore[Any, Any] = InMemoryJobStore(EDITS)
    job = EditJobDoc(**_job_fields("edj_1"), operations=[], asset_ids=["ast_e1", "ast_e2"], price_list_version=1)
    failure = {"code": "background_removal_failed", "message": "no subject found"}
    items = [
        EditItemDoc(index=0, asset_id="ast_e1", cost=1, status=ItemStatus.SUCCEEDED, revision=2),
        EditItemDoc(index=1, asset_id="ast_e2", cost=1, status=ItemStatus.FAILED, failure=failure),
    ]
    assert jobs.create_job(job, items)
    rows = lay_out(resolve(world.catalog, CLIENT, job_wanted(jobs, CLIENT, job)))
    assert [(r.asset_id, r.status, r.file, r.reason) for r in rows] == [
        ("ast_e1", "ok", "Lamp/edited-1.png", None),
        ("ast_e2", "failed", None, "background_removal_failed: no subject found"),
    ]
    assert world.store.get(rows[0].key or "") == b"by the job"


def test_a_video_job_exports_each_deliverable_named_by_style_and_aspect() -> None:
    from shared.exports.sources import job_wanted, resolve
    from shared.videos.jobs import VIDEOS
    from shared.videos.models import VideoItemDoc, VideoJobDoc, VideoSettings, deliverable_asset_id

    world = World()
    product_id = world.product("Lamp", sku="LP-9")
    settings = VideoSettings(
        style="showcase",
        duration_seconds=4,
        resolution="720p",
        aspect_ratio="16:9",
        deliverables=["16:9", "9:16"],
        audio="none",
        fit="crop",
        quality="fast",
        model="veo",
        clips=[4],
    )
    job = VideoJobDoc(**_job_fields("vid_1"), settings=settings)
    item = VideoItemDoc(index=0, product_id=product_id, status=ItemStatus.SUCCEEDED)
    made = [deliverable_asset_id(job, item, aspect) for aspect in ("16:9", "9:16")]
    item = item.model_copy(update={"asset_ids": made})
    lost = VideoItemDoc(index=1, prompt="x", status=ItemStatus.CANCELLED)
    jobs: InMemoryJobStore[Any, Any] = InMemoryJobStore(VIDEOS)
    assert jobs.create_job(job, [item, lost])
    for asset_id in made:
        world.asset(asset_id, product_id)
    rows = lay_out(resolve(world.catalog, CLIENT, job_wanted(jobs, CLIENT, job)))
    assert [(r.file, r.status) for r in rows] == [
        ("LP-9/showcase-16x9-1.png", "ok"),
        ("LP-9/showcase-9x16-1.png", "ok"),
        (None, "cancelled"),
    ]


def test_the_exportable_job_shelves_are_their_kinds_documents() -> None:
    """Exports read jobs through shelves that name a kind's documents without loading its work: each
    must stay what its kind says (collection, id prefix, models, noun)."""
    from shared.editing.service import EDITS
    from shared.exports.service import exportable_jobs
    from shared.generation.jobs import GENERATION
    from shared.videos.jobs import VIDEOS

    shelves = exportable_jobs()
    assert set(shelves) == {kind.id_prefix for kind in (GENERATION, EDITS, VIDEOS)}
    for kind in (GENERATION, EDITS, VIDEOS):
        shelf = shelves[kind.id_prefix]
        assert (shelf.collection, shelf.noun) == (kind.collection, kind.noun)
        assert (shelf.job_model, shelf.item_model) == (kind.job_model, kind.item_model)
