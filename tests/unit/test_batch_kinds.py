"""A job kind's steps and wiring without Firestore: what generation records at accept and pages back at
fan-out, how each kind builds its services from the platform, and the routes a worker entry point
gets from its kind alone."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.batch.kind import (
    BatchPolicy,
    Finish,
    ItemRun,
    JobKind,
    JobOrder,
    JobServices,
    RequestKey,
    Totals,
)
from shared.batch.models import BatchItemDoc, BatchJobDoc, FanoutPageTask, ItemStatus, ItemTask, JobTask
from shared.config import Settings
from shared.editing.service import EDITS, EditServices, edit_policy
from shared.engines.offline import OfflineEngine
from shared.events.model import EventType
from shared.generation.jobs import GENERATION, GenerationOrder, GenerationServices, generation_policy
from shared.generation.models import GenerationSettings, JobCreate, JobItemIn
from shared.http.app import Access, HttpApp
from shared.http.batch_routes import add_worker_routes
from shared.ledger.pricing import QuoteItem, load_default_prices, quote
from shared.ledger.service import Ledger
from shared.platform import Platform
from tests.fakes import InMemoryLedgerStore, InMemoryObjectStore, RecordingTaskQueue
from tests.fakes_batch import InMemoryJobStore
from tests.fakes_catalog import in_memory_catalog
from tests.fakes_settings import InMemoryGenerationSettings

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
DB: Any = object()  # stands for the Firestore client: none of these steps may touch it


@pytest.fixture
def settings() -> Settings:
    return Settings(epox_env="test")


@pytest.fixture
def platform(settings: Settings) -> Platform:
    return Platform(
        settings,
        db=DB,
        object_store=InMemoryObjectStore(),
        task_queue=RecordingTaskQueue(),
        ledger=Ledger(InMemoryLedgerStore(), clock=lambda: NOW),
        engine=OfflineEngine(),
        clock=lambda: NOW,
    )


def test_each_kind_builds_its_services_from_the_platform(platform: Platform, settings: Settings) -> None:
    generation = GENERATION.dependencies(platform)
    edits = EDITS.dependencies(platform)
    for services in (generation, edits):
        assert services.store is platform.object_store
        assert services.queue is platform.task_queue and services.ledger is platform.ledger
        assert services.clock() == NOW
        assert services.engine is platform.engine
    assert isinstance(generation, GenerationServices) and generation.generation == generation_policy(settings)
    assert generation.catalog.assets.db is DB and generation.settings.db is DB  # type: ignore[attr-defined]
    assert edits.assets.db is DB  # type: ignore[attr-defined]
    assert generation.policy == generation_policy(settings).batch
    assert isinstance(edits, EditServices) and edits.edit == edit_policy(settings)
    assert edits.policy == edit_policy(settings).batch


def test_each_kinds_services_hold_its_own_job_store(platform: Platform) -> None:
    from shared.adapters.firestore.batch import FirestoreJobStore

    for kind in (GENERATION, EDITS):
        jobs = kind.dependencies(platform).jobs
        assert isinstance(jobs, FirestoreJobStore) and jobs.kind is kind and jobs.db is DB


def generation_services(store: InMemoryObjectStore, fanout_page: int = 2) -> GenerationServices:
    policy = BatchPolicy(max_attempts=3, hold_ttl=timedelta(hours=1), fanout_page=fanout_page)
    return GenerationServices(
        jobs=InMemoryJobStore(GENERATION),
        store=store,
        queue=RecordingTaskQueue(),
        ledger=Ledger(InMemoryLedgerStore(), clock=lambda: NOW),
        policy=policy,
        clock=lambda: NOW,
        generation=generation_policy(Settings(epox_env="test")),
        catalog=in_memory_catalog(),
        settings=InMemoryGenerationSettings(),
        engines=OfflineEngine,
    )


def test_a_generation_job_is_priced_recorded_with_its_item_list_and_fanned_out_from_it() -> None:
    store = InMemoryObjectStore()
    services = generation_services(store)
    data = JobCreate(items=[JobItemIn(prompt=f"a mug, take {i}") for i in range(3)], variants=2, size="1K")
    prices = load_default_prices()
    order = GenerationOrder(
        client_id="c1",
        user_id="u1",
        request_key=RequestKey(key="k1", fingerprint="fp"),
        data=data,
        settings=GenerationSettings.model_validate(data.overrides()),
        prices=prices,
    )

    # Prompt-only items name no product or asset: pricing them reads nothing.
    priced = GENERATION.prepare(services, order, "job_1")
    line = quote(prices, [QuoteItem(operation="generate_image", variant="1K", quantity=6)]).lines[0]
    assert (priced.amount, priced.unit_price) == (line.amount, line.unit_price) and line.amount == 6 * line.unit_price

    job, items = GENERATION.record(services, priced, "job_1", "hold_1")
    assert list(items) == []  # paged: the fan-out writes them
    assert (job.id, job.client_id, job.hold_id, job.created_by) == ("job_1", "c1", "hold_1", "u1")
    assert (job.item_count, job.slot_count, job.cost, job.unit_price) == (3, 6, line.amount, line.unit_price)
    assert (job.fanout_pages, job.fanout_page_size, job.request_fingerprint) == (2, 2, "fp")
    assert job.created_at == job.updated_at == NOW

    # Each fan-out page reads its slice of the stored item list back, in the status the lifecycle asks.
    first = GENERATION.page_items(services, job, 0, 2, ItemStatus.QUEUED)
    last = GENERATION.page_items(services, job, 2, 3, ItemStatus.CANCELLED)
    assert [(i.index, i.prompt, i.status) for i in first + last] == [
        (0, "a mug, take 0", ItemStatus.QUEUED),
        (1, "a mug, take 1", ItemStatus.QUEUED),
        (2, "a mug, take 2", ItemStatus.CANCELLED),
    ]


class Notes(JobKind[BatchJobDoc, BatchItemDoc]):
    """The least a kind is: names, a charge, how it records a job and runs an item."""

    collection = "note_jobs"
    id_prefix = "not"
    noun = "note job"
    label = "note job"
    worker = "note_tasks"
    task_prefix = "note-"
    hold_prefix = "note"
    operation = "note"
    completed_event = EventType.GENERATION_JOB_COMPLETED  # any type: a test kind
    job_model = BatchJobDoc
    item_model = BatchItemDoc

    def record(
        self, services: JobServices, order: JobOrder, job_id: str, hold_id: str
    ) -> tuple[BatchJobDoc, Sequence[BatchItemDoc]]:
        raise AssertionError("not accepted here")

    def work(self, services: JobServices, run: ItemRun[BatchJobDoc, BatchItemDoc]) -> Finish:
        return Finish(ItemStatus.SUCCEEDED)

    def charge(self, job: BatchJobDoc, totals: Totals) -> int:
        return 0

    def settle_reason(self, job: BatchJobDoc, totals: Totals) -> str:
        return "notes"


def test_a_kind_has_defaults_for_the_steps_it_does_not_take(platform: Platform) -> None:
    kind = Notes()
    services = generation_services(InMemoryObjectStore())
    order = JobOrder(client_id="c1", user_id="u1", request_key=None, amount=3)
    assert kind.prepare(services, order, "not_1") is order  # priced by whoever ordered it
    job = BatchJobDoc(
        id="not_1", client_id="c1", item_count=1, cost=3, hold_id="", created_by="u1", created_at=NOW, updated_at=NOW
    )
    with pytest.raises(TypeError, match="note jobs are not paged"):
        kind.page_items(services, job, 0, 1, ItemStatus.QUEUED)
    kind.after_page(services, job, [])  # nothing follows a page
    with pytest.raises(NotImplementedError):
        kind.dependencies(platform)  # not wired to worker routes


def test_a_worker_entry_point_gets_its_routes_from_the_kind_alone() -> None:
    def routes(kind: JobKind[Any, Any, Any, Any]) -> dict[tuple[str, str], tuple[Access, Any]]:
        app = HttpApp("tasks")
        add_worker_routes(app, kind)
        return {
            (r.method, r.template): (r.access, r.body_model)
            for r in app.routes
            if r.template not in ("/health", "/openapi.json")
        }

    assert routes(GENERATION) == {
        ("POST", "/tasks/fanout"): (Access.TASK, FanoutPageTask),  # paged: one page per fan-out task
        ("POST", "/tasks/item"): (Access.TASK, ItemTask),
        ("POST", "/tasks/settle"): (Access.TASK, JobTask),
        ("POST", "/jobs/reap-stuck-items"): (Access.SCHEDULER, None),
    }
    assert routes(EDITS)[("POST", "/tasks/fanout")] == (Access.TASK, JobTask)
