"""Property: whatever Cloud Tasks does to a generation job's tasks, the job ends settled, and the
money and the library add up.

Real parts: the generation kind and the batch lifecycle, Firestore (the emulator, a fresh project per
example, so the reaper sees that example's job only) with the Firestore ledger, R2 (moto). What
Hypothesis controls:

* the task queue (:class:`ChaosQueue`, a :class:`TaskQueue` with Cloud Tasks' contract: named tasks
  are refused while they exist and for an hour after they end, failed deliveries are retried up to
  MAX_ATTEMPTS times): every fan-out, item and settle task is delivered normally, lost (every attempt
  fails before the worker: no instance, a token check), delivered twice (the worker's answer is
  lost), delayed past reaper runs, failed once before the worker, refused at enqueue, or delivered
  while one of its Firestore commits lands but answers "unavailable";
* the order in which due tasks are delivered;
* the image engine: each call works, is busy (retried), refuses (fails the image for good) or the
  worker dies mid-call (the delivery never answers);
* the job: 1 to 5 items of 1 or 2 images, on fan-out pages of 2.

Time moves 15 minutes per reaper run. Chaos lasts CHAOS_PASSES runs; then every job must be settled
within SETTLE_PASSES more, each image charged once and only if it is in the library, the hold
resolved once, every asset's files in the store.

Budget: EXAMPLES examples; ``EPOX_BATCH_CHAOS_EXAMPLES=<n>`` runs a soak of n examples.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as budget
from hypothesis import strategies as st

from shared.adapters.firestore.batch import FirestoreJobStore
from shared.adapters.firestore.billing import FirestoreBillingStore
from shared.adapters.firestore.catalog import firestore_catalog
from shared.adapters.firestore.ledger import FirestoreLedgerStore
from shared.adapters.firestore.settings import FirestoreGenerationSettings
from shared.batch import lifecycle, recovery
from shared.batch.models import FanoutPageTask, ItemStatus, ItemTask, JobTask
from shared.engines.base import (
    EngineImage,
    EnginePermanentError,
    EngineRetryableError,
    ImageEngine,
    ImageRequest,
    TextRequest,
)
from shared.engines.offline import OfflineEngine
from shared.generation import jobs
from shared.generation.jobs import GENERATION, GenerationServices
from shared.generation.models import GenerationSettings, JobCreate, JobItemIn
from shared.ledger.model import Actor, EntryType, GrantSource
from shared.ledger.pricing import load_default_prices
from shared.ledger.service import Ledger
from shared.tasks import TaskCall, TaskRequest
from tests.chaos_tasks import ChaosQueue, Clock, Handler, Killed
from tests.firestore_faults import FaultyClient

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("EPOX_BATCH_CHAOS_EXAMPLES", "12"))
START = datetime(2026, 5, 4, 9, 0, 0, tzinfo=UTC)
RUN_EVERY = timedelta(minutes=15)  # the reaper's schedule
LEASE = timedelta(minutes=45)
MAX_ATTEMPTS = 3
CHAOS_PASSES = 4
SETTLE_PASSES = 16
FATES = ("normal", "lost", "twice", "delayed", "flaky", "refused", "commit_fault")
CALLS = ("ok", "busy", "refused", "killed")
PASSES_NEEDED: Counter[int] = Counter()  # reaper runs after the chaos, per example (printed at the end)
SEEN: Counter[str] = Counter()  # task fates and engine calls over every example


class ChaosEngine(ImageEngine):
    """The offline engine; while ``chaos``, each call's outcome is drawn by Hypothesis."""

    name: ClassVar[str] = "chaos"

    def __init__(self, draw: Callable[[Any], Any]) -> None:
        self.inner = OfflineEngine()
        self.draw = draw
        self.chaos = True
        self.calls: Counter[str] = Counter()

    def generate(self, request: ImageRequest) -> EngineImage:
        call = self.draw(st.one_of(st.just("ok"), st.sampled_from(CALLS))) if self.chaos else "ok"
        self.calls[call] += 1
        if call == "busy":
            raise EngineRetryableError("chaos: busy", retry_after=0)
        if call == "refused":
            raise EnginePermanentError("chaos: no image")
        if call == "killed":
            raise Killed()
        return self.inner.generate(request)

    def complete_text(self, request: TextRequest) -> str:
        return self.inner.complete_text(request)


def commits_to(client_id: str) -> Callable[[list[str]], bool]:
    """A ``commit_fault`` loses the answer of one commit to the client's jobs or assets."""
    prefix = f"clients/{client_id}/"
    return lambda paths: any(p.startswith(prefix) and ("/jobs/" in p or "/assets/" in p) for p in paths)


def run_to_settlement(
    kind: Any,
    services: Any,
    engine: ChaosEngine,
    client_id: str,
    job_id: str,
    handle: Handler,
) -> Any:
    """Deliver, let time pass and run the reaper every RUN_EVERY, the chaos stopping after
    CHAOS_PASSES runs: the job, which must be settled within SETTLE_PASSES more."""
    job_store, queue = services.jobs, services.queue
    clock = queue.clock
    for run in range(CHAOS_PASSES + SETTLE_PASSES):
        if run == CHAOS_PASSES:
            queue.chaos = engine.chaos = False
        queue.deliver_until(clock.now + RUN_EVERY, handle)
        clock.now = max(clock.now, START + RUN_EVERY * (run + 1))
        recovery.reap(kind, services, clock.now, lease=LEASE)
        if job_store.get_job(client_id, job_id).settled:
            PASSES_NEEDED[max(0, run + 1 - CHAOS_PASSES)] += 1
            break
    SEEN.update(queue.fates)
    SEEN.update(f"engine {call}" for call in engine.calls.elements())
    done = job_store.get_job(client_id, job_id)
    assert done.settled, (queue.fates, engine.calls, lifecycle.progress(kind, job_store, done).totals)
    return done


@pytest.fixture(scope="module", autouse=True)
def report_passes() -> Any:
    yield
    needed = dict(sorted(PASSES_NEEDED.items()))
    print(f"\nbatch chaos: reaper runs needed after the chaos (runs: examples) {needed}; seen: {dict(SEEN)}")


@budget(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), items=st.integers(1, 5), variants=st.integers(1, 2))
def test_every_job_settles_and_charges_exactly_what_is_in_the_library(
    data: st.DataObject, items: int, variants: int, settings: Any, object_store: Any
) -> None:
    from shared.adapters.firestore.catalog import assets_ref
    from shared.generation.jobs import generation_policy

    clock = Clock(START)
    db = FaultyClient()
    client_id = "c_chaos"
    queue = ChaosQueue(clock, data.draw, db, FATES, faulty_commit=commits_to(client_id), max_attempts=MAX_ATTEMPTS)
    engine = ChaosEngine(data.draw)
    ledger = Ledger(FirestoreLedgerStore(db), clock=clock, low_balance_threshold=0)
    ledger.grant(
        client_id, key="g", amount=1000, source=GrantSource.PACK, actor=Actor(kind="admin", id="t"), reason="t"
    )
    policy = generation_policy(
        settings.model_copy(update={"generation_fanout_page": 2, "tasks_max_attempts": MAX_ATTEMPTS})
    )

    services = GenerationServices(
        jobs=FirestoreJobStore(db, GENERATION),
        store=object_store,
        queue=queue,
        ledger=ledger,
        policy=policy.batch,
        clock=clock,
        generation=policy,
        catalog=firestore_catalog(db),
        settings=FirestoreGenerationSettings(db),
        engines=lambda: engine,
    )

    def handle(task: TaskRequest, retry_count: int, fate: str) -> object:
        payload = task.payload
        now = clock.now
        if isinstance(payload, FanoutPageTask):
            return lifecycle.run_fanout_page(GENERATION, services, payload, now)
        if isinstance(payload, ItemTask):
            call = TaskCall(queue="q", name=task.name or "", retry_count=retry_count, execution_count=retry_count)
            return lifecycle.run_item(GENERATION, services, payload, call, now)
        assert isinstance(payload, JobTask) and task.path == "/tasks/settle"
        return lifecycle.run_settle(GENERATION, services, payload, now)

    request = JobCreate(
        items=[JobItemIn(prompt=f"a mug, take {i}") for i in range(items)], variants=variants, size="1K"
    )
    job = jobs.create_job(
        services,
        load_default_prices(),
        client_id=client_id,
        user_id="u1",
        data=request,
        base=GenerationSettings(),
        request_key=None,
        billing=FirestoreBillingStore(db),
    )

    done = run_to_settlement(GENERATION, services, engine, client_id, job.id, handle)

    # Each image is charged once, and only if it is in the customer's library.
    item_docs = lifecycle.items_with_status(services.jobs, client_id, job.id, ItemStatus.SUCCEEDED)
    charged = [asset_id for item in item_docs for asset_id in item.asset_ids]
    library = {s.id: s.to_dict() for s in assets_ref(db, client_id).stream()}
    assert sorted(charged) == sorted(library), (charged, sorted(library))
    assert done.settlement == {
        "captured": len(charged) * job.unit_price,
        "released": job.cost - len(charged) * job.unit_price,
    }
    totals = lifecycle.progress(GENERATION, services.jobs, done).totals
    assert (totals.done, totals["succeeded_slots"]) == (job.item_count, len(charged))
    # The hold was resolved once: one reservation, at most one capture and one release, nothing pending.
    entries = Counter(e.type for e in ledger.store.entries(client_id) if e.hold_id == job.hold_id)
    assert entries[EntryType.RESERVE] == 1 and entries[EntryType.CAPTURE] <= 1 and entries[EntryType.RELEASE] <= 1
    assert ledger.state(client_id).holds == {} and ledger.verify(client_id) == []
    assert ledger.state(client_id).available == 1000 - len(charged) * job.unit_price
    # No asset without its files.
    for asset in library.values():
        assert object_store.head(asset["key"]) is not None and object_store.head(asset["thumbnail_key"]) is not None


@budget(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), assets=st.integers(1, 4))
def test_every_edit_job_settles_and_charges_exactly_the_revisions_it_made(
    data: st.DataObject, assets: int, settings: Any, object_store: Any
) -> None:
    from shared.adapters.firestore.catalog import FirestoreAssetRepository, assets_ref
    from shared.catalog.models import AssetDoc, AssetKind, AssetRevision
    from shared.editing import service
    from shared.editing.models import EditRequest
    from shared.editing.service import EDITS, EditServices
    from tests import images

    clock = Clock(START)
    db = FaultyClient()
    client_id = "c_chaos"
    queue = ChaosQueue(clock, data.draw, db, FATES, faulty_commit=commits_to(client_id), max_attempts=MAX_ATTEMPTS)
    engine = ChaosEngine(data.draw)
    ledger = Ledger(FirestoreLedgerStore(db), clock=clock, low_balance_threshold=0)
    admin = Actor(kind="admin", id="t")
    ledger.grant(client_id, key="g", amount=1000, source=GrantSource.PACK, actor=admin, reason="t")
    policy = service.edit_policy(settings.model_copy(update={"tasks_max_attempts": MAX_ATTEMPTS}))
    photo = images.png((64, 48))
    asset_ids = []
    for index in range(assets):
        key = f"clients/{client_id}/chaos/{db.project}/photo-{index}.png"
        object_store.put(key, photo, "image/png")
        asset = AssetDoc(
            id=f"ast_{index}",
            client_id=client_id,
            kind=AssetKind.PRODUCT_IMAGE,
            source="upload",
            key=key,
            thumbnail_key=key,
            content_type="image/png",
            width=64,
            height=48,
            created_at=clock.now,
            updated_at=clock.now,
        )
        first = AssetRevision(
            number=1,
            key=key,
            thumbnail_key=key,
            content_type="image/png",
            width=64,
            height=48,
            size_bytes=len(photo),
            operation="upload",
            created_at=clock.now,
        )
        FirestoreAssetRepository(db).create(asset, first)
        asset_ids.append(asset.id)

    def no_remover() -> Any:
        raise AssertionError("no background removal in these jobs")

    services = EditServices(
        jobs=FirestoreJobStore(db, EDITS),
        store=object_store,
        queue=queue,
        ledger=ledger,
        policy=policy.batch,
        clock=clock,
        edit=policy,
        assets=FirestoreAssetRepository(db),
        engines=lambda: engine,
        remover=no_remover,
    )

    def handle(task: TaskRequest, retry_count: int, fate: str) -> object:
        payload = task.payload
        now = clock.now
        if isinstance(payload, ItemTask):
            call = TaskCall(queue="q", name=task.name or "", retry_count=retry_count, execution_count=retry_count)
            return lifecycle.run_item(EDITS, services, payload, call, now)
        assert isinstance(payload, JobTask)
        if task.path == "/tasks/fanout":
            return lifecycle.run_fanout(EDITS, services, payload, now)
        return lifecycle.run_settle(EDITS, services, payload, now)

    request = EditRequest.model_validate(
        {"asset_ids": asset_ids, "operations": [{"op": "prompt_edit", "prompt": "warmer light"}]}
    )
    prepared = service.prepare(services.assets, load_default_prices(), client_id, request, policy)
    job = service.create_job(
        services, prepared, client_id=client_id, user_id="u1", request_key=None, billing=FirestoreBillingStore(db)
    )
    done = run_to_settlement(EDITS, services, engine, client_id, job.id, handle)

    # Each edited asset has exactly the one revision its item recorded, with its files; only those are charged.
    item_docs = lifecycle.all_items(services.jobs, done)
    edited = [item for item in item_docs if item.status is ItemStatus.SUCCEEDED]
    for item in item_docs:
        stored = assets_ref(db, client_id).document(item.asset_id)
        asset = stored.get().to_dict()
        revisions = sorted(int(r.id) for r in stored.collection("revisions").stream())
        assert revisions == ([1, 2] if item in edited else [1]), (item, revisions)
        assert asset["current_revision"] == revisions[-1] and (item.revision or 1) == revisions[-1]
        assert object_store.head(asset["key"]) is not None and object_store.head(asset["thumbnail_key"]) is not None
    price = sum(item.cost for item in edited)
    assert done.settlement is not None and (done.settlement["captured"], done.settlement["released"]) == (
        price,
        job.cost - price,
    )
    entries = Counter(e.type for e in ledger.store.entries(client_id) if e.hold_id == job.hold_id)
    assert entries[EntryType.RESERVE] == 1 and entries[EntryType.CAPTURE] <= 1 and entries[EntryType.RELEASE] <= 1
    assert ledger.state(client_id).holds == {} and ledger.verify(client_id) == []
    assert ledger.state(client_id).available == 1000 - price
