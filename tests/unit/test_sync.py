"""Sync-back without Firestore or a store: the push's state machine, replace in place, remove only ours,
restore, webhooks, auto-sync and whole sync jobs on the batch engine (in-memory job store, a recording
queue delivered by hand), against an in-memory store gallery."""

from __future__ import annotations

import io
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from PIL import Image
from pydantic import SecretStr

from shared.batch import lifecycle
from shared.batch.kind import BatchPolicy, RequestKey
from shared.batch.models import FanoutPageTask, ItemStatus, ItemTask, JobStatus, JobTask
from shared.catalog.models import AssetDoc, AssetKind, AssetRevision, MediaKind, ProductDoc
from shared.catalog.store_link import StoreLink
from shared.config import Settings
from shared.errors import NotFound
from shared.events.model import AssetApproval, EventType, Subject, new_event
from shared.imaging import ImageLimits
from shared.ledger.service import Ledger
from shared.stores.connections import StoreNotConnected, seal_secrets
from shared.stores.models import ConnectionStatus, StoreConnectionDoc, StoreSecrets
from shared.stores.ports import StorePlatform
from shared.sync import auto, service
from shared.sync.gallery import StoreAccess
from shared.sync.jobs import SYNCS, NothingToSync, SyncServices, create_sync
from shared.sync.models import Placement, RecordStatus, SyncAction, SyncRequest, SyncSettingsDoc, record_id
from shared.sync.prepare import STORE_MAX_PIXELS, SYNC_COPY_PREFIX, SYNC_COPY_RETENTION_DAYS, push_copy
from shared.sync.push import (
    AssetNotApproved,
    MediaFailed,
    MediaStillProcessing,
    ProductNotLinked,
    PushPolicy,
    PushServices,
    VideoNotSyncable,
    push_asset,
)
from shared.tasks import TaskCall, TaskRequest
from tests.fakes import InMemoryLedgerStore, InMemoryObjectStore, RecordingTaskQueue
from tests.fakes_batch import InMemoryJobStore
from tests.fakes_catalog import in_memory_catalog
from tests.fakes_stores import InMemoryStoreRepository, new_cipher
from tests.fakes_sync import FakeGallery, InMemorySyncRepository
from tests.images import png

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
CLIENT = "c1"
SHOP = "sync-test.myshopify.com"
LIMITS = ImageLimits(max_pixels=60_000_000)
PUSH = PushPolicy(
    source_ttl=timedelta(hours=24), poll_budget=2.0, push_lease=timedelta(minutes=10), image_limits=LIMITS
)
BATCH = BatchPolicy(max_attempts=4, hold_ttl=timedelta(days=30), fanout_page=2, counter_shards=2)
_ids = itertools.count(1)


class World:
    """One client with a connected store, linked products and approved images."""

    def __init__(self, *, async_media: bool = True, platform: StorePlatform = StorePlatform.SHOPIFY) -> None:
        self.now = NOW
        self.catalog = in_memory_catalog()
        self.objects = InMemoryObjectStore()
        self.stores = InMemoryStoreRepository()
        self.cipher = new_cipher()
        self.sync = InMemorySyncRepository()
        self.queue = RecordingTaskQueue()
        self.platform = platform
        self.connection = StoreConnectionDoc(
            id="store_1",
            client_id=CLIENT,
            platform=platform,
            shop=SHOP,
            connected_at=NOW,
            updated_at=NOW,
            access_expires_at=NOW + timedelta(days=1),
        )
        plain = StoreSecrets(access_token=SecretStr("shpat"), refresh_token=SecretStr("shprt"))
        self.stores.save(seal_secrets(self.cipher, self.connection, plain), None)
        self.access = StoreAccess(
            stores=self.stores,
            cipher=self.cipher,
            shopify=lambda: None,  # type: ignore[arg-type,return-value]  # the fake gallery calls no adapter
            woocommerce=lambda: None,  # type: ignore[arg-type,return-value]
            policy=None,  # type: ignore[arg-type]  # no token refresh: the fake gallery calls no adapter
            clock=lambda: self.now,
        )
        self.gallery = FakeGallery(self.access, self.connection, async_media=async_media)
        self.sleeps: list[float] = []
        self.jobs: InMemoryJobStore[Any, Any] = InMemoryJobStore(SYNCS)
        self.services = SyncServices(
            jobs=self.jobs,
            store=self.objects,
            queue=self.queue,
            ledger=Ledger(InMemoryLedgerStore(), clock=lambda: self.now),
            policy=BATCH,
            clock=lambda: self.now,
            catalog=self.catalog,
            sync=self.sync,
            access=self.access,
            push=PUSH,
            galleries=lambda connection: self.gallery,
            sleep=self.sleeps.append,
        )
        self.delivered: set[int] = set()

    @property
    def pushing(self) -> PushServices:
        return self.services.pushing()

    # -- data --------------------------------------------------------------------------------------

    def product(self, store_pid: str = "101", *merchant: tuple[str, str], linked: bool = True) -> ProductDoc:
        pid = f"prod_{next(_ids)}"
        link = StoreLink(
            platform=self.platform.value, shop=SHOP, product_id=store_pid, media_ids=[m for m, _ in merchant]
        )
        doc = ProductDoc(
            id=pid,
            client_id=CLIENT,
            name="Blue Ceramic Mug",
            search_tokens=["blue", "mug", "ceramic"],
            store=link if linked else None,
            created_at=self.now,
            updated_at=self.now,
        )
        self.catalog.products.products.setdefault(CLIENT, {})[pid] = (doc, next(_ids))  # type: ignore[attr-defined]
        self.gallery.product(store_pid, *merchant)
        return doc

    def asset(
        self,
        product: ProductDoc | None,
        *,
        approved: bool = True,
        media: MediaKind = MediaKind.IMAGE,
        size: tuple[int, int] = (64, 48),
        client_id: str = CLIENT,
        data: bytes | None = None,
    ) -> AssetDoc:
        aid = f"ast_{next(_ids)}"
        key = f"clients/{client_id}/assets/{aid}/r1.png"
        self.objects.put(key, data or png(size), "image/png")
        asset = AssetDoc(
            id=aid,
            client_id=client_id,
            product_id=product.id if product else None,
            kind=AssetKind.GENERATED,
            source="offline",
            key=key,
            thumbnail_key=key,
            content_type="image/png",
            width=size[0],
            height=size[1],
            approved=approved,
            media=media,
            metadata={"style": "lifestyle"},
            created_at=self.now,
            updated_at=self.now,
        )
        revision = AssetRevision(
            number=1,
            key=key,
            thumbnail_key=key,
            content_type="image/png",
            width=size[0],
            height=size[1],
            size_bytes=1,
            operation="generate",
            created_at=self.now,
            metadata={"style": "lifestyle"},
        )
        self.catalog.assets.create(asset, revision)
        return asset

    def new_revision(self, asset: AssetDoc) -> None:
        current = self.catalog.assets.get(CLIENT, asset.id)
        assert current is not None
        number = current.current_revision + 1
        key = f"clients/{CLIENT}/assets/{asset.id}/r{number}.png"
        self.objects.put(key, png((80, 60)), "image/png")
        revision = AssetRevision(
            number=number,
            key=key,
            thumbnail_key=key,
            content_type="image/png",
            width=80,
            height=60,
            size_bytes=1,
            operation="edit",
            created_at=self.now,
        )
        self.catalog.assets.stored_revisions[(CLIENT, asset.id)][number] = revision  # type: ignore[attr-defined]
        self.catalog.assets._of(CLIENT)[asset.id] = current.model_copy(  # type: ignore[attr-defined]
            update={"current_revision": number, "key": key}
        )

    def push(self, asset: AssetDoc, placement: Placement = Placement.APPEND, pusher: str = "job/0") -> Any:
        return push_asset(
            self.pushing,
            self.connection,
            client_id=CLIENT,
            asset_id=asset.id,
            placement=placement,
            job_id="job",
            pusher=pusher,
            by="u1",
        )

    def record(self, asset: AssetDoc, store_pid: str = "101") -> Any:
        loaded = self.sync.load_record(CLIENT, record_id(asset.id, self.platform.value, store_pid))
        assert loaded is not None
        return loaded.value

    # -- jobs --------------------------------------------------------------------------------------

    def start(self, request: SyncRequest, key: str | None = None) -> Any:
        request_key = RequestKey(key=key, fingerprint="f") if key else None
        return create_sync(self.services, client_id=CLIENT, user_id="u1", request=request, request_key=request_key)

    def deliver(self, task: TaskRequest, retry_count: int = 0) -> str:
        self.delivered.add(id(task))
        payload = task.payload
        if isinstance(payload, FanoutPageTask):
            return lifecycle.run_fanout_page(SYNCS, self.services, payload, self.now)
        if isinstance(payload, ItemTask):
            call = TaskCall(queue="q", name=task.name or "", retry_count=retry_count, execution_count=retry_count)
            try:
                return lifecycle.run_item(SYNCS, self.services, payload, call, self.now)
            except Exception as error:  # the queue delivers a retried item again
                self.delivered.discard(id(task))
                return f"retry: {type(error).__name__}"
        assert isinstance(payload, JobTask)
        return lifecycle.run_settle(SYNCS, self.services, payload, self.now)

    def run(self, rounds: int = 20) -> list[str]:
        outcomes: list[str] = []
        for _ in range(rounds):
            waiting = [t for t in self.queue.tasks if id(t) not in self.delivered]
            if not waiting:
                break
            for task in sorted(waiting, key=lambda t: t.schedule_time is not None):
                outcomes.append(self.deliver(task))
        return outcomes


@pytest.fixture
def world() -> World:
    return World()


# -- one push --------------------------------------------------------------------------------------


def test_a_push_polls_to_ready_records_it_and_snapshots_the_merchants_images_first(world: World) -> None:
    product = world.product("101", ("m1", "https://cdn/m1.jpg"), ("m2", "https://cdn/m2.jpg"))
    asset = world.asset(product)
    world.gallery.processing_reads = 2

    outcome = world.push(asset)

    assert outcome.action == "pushed"
    record = world.record(asset)
    assert record.status is RecordStatus.SYNCED and record.revision == 1
    assert world.gallery.ids("101") == ["m1", "m2", record.media_id]
    assert record.position == 2 and record.url and "blue-ceramic-mug-lifestyle" in record.url
    assert [c for c, _ in world.gallery.calls].count("push") == 1
    assert len(world.sleeps) == 2  # two reads still PROCESSING, then READY
    snapshot = world.sync.snapshot(CLIENT, "shopify_101")
    assert snapshot is not None and [i.media_id for i in snapshot.images] == ["m1", "m2"]
    assert snapshot.images[0].featured
    product_now = world.catalog.products.get(CLIENT, product.id)
    assert product_now is not None and product_now.store is not None
    assert product_now.store.pushed_media_ids == [record.media_id]
    entries = world.sync.entries[CLIENT]
    assert [e.action for e in entries] == [SyncAction.PUSHED]
    summary = world.sync.product_summary(CLIENT, product.id)
    assert summary is not None and (summary.value.synced, summary.value.state) == (1, "synced")


def test_the_same_revision_is_never_pushed_twice(world: World) -> None:
    product = world.product("101")
    asset = world.asset(product)
    world.push(asset)
    again = world.push(asset, pusher="another-job/3")
    assert again.action == "already_synced"
    assert [c for c, _ in world.gallery.calls].count("push") == 1
    assert len(world.gallery.ids("101")) == 1


def test_a_push_whose_answer_was_lost_is_found_in_the_gallery_and_not_repeated(world: World) -> None:
    product = world.product("101", ("m1", "https://cdn/m1.jpg"))
    asset = world.asset(product)
    world.gallery.lose_next_push_answer = True
    with pytest.raises(Exception, match="lost"):
        world.push(asset)
    assert world.record(asset).status is RecordStatus.PROCESSING

    outcome = world.push(asset)  # the redelivery

    assert outcome.action == "pushed"
    assert [c for c, _ in world.gallery.calls].count("push") == 1
    assert len(world.gallery.ids("101")) == 2
    assert world.record(asset).media_id == world.gallery.ids("101")[1]


def test_a_first_push_reads_the_gallery_only_for_the_snapshot(world: World) -> None:
    product = world.product("101", ("m1", "https://cdn/m1.jpg"))
    first, second = world.asset(product), world.asset(product)
    world.push(first)
    calls = len(world.gallery.calls)

    world.push(second)

    # No push of the second image was ever sent, so no lost answer is looked for (Shopify charges that read).
    assert [c for c, _ in world.gallery.calls[calls:]] == ["push", "states"]
    assert len(world.gallery.ids("101")) == 3


def test_an_image_still_processing_goes_back_to_the_queue_and_is_not_pushed_again(world: World) -> None:
    product = world.product("101")
    asset = world.asset(product)
    world.gallery.processing_reads = 100
    with pytest.raises(MediaStillProcessing) as raised:
        world.push(asset)
    assert raised.value.status == 503
    world.gallery.processing_reads = 0
    assert world.push(asset).action == "pushed"
    assert [c for c, _ in world.gallery.calls].count("push") == 1


def test_failed_media_keeps_the_stores_code_and_the_merchants_images_stay(world: World) -> None:
    product = world.product("101", ("m1", "https://cdn/m1.jpg"))
    asset = world.asset(product)
    world.gallery.fail_next = "IMAGE_DOWNLOAD_FAILURE"
    with pytest.raises(MediaFailed) as raised:
        world.push(asset)
    assert "IMAGE_DOWNLOAD_FAILURE" in (raised.value.detail or "")
    record = world.record(asset)
    assert (record.status, record.error_code) == (RecordStatus.FAILED, "IMAGE_DOWNLOAD_FAILURE")
    # The failed medium stays on the product, marked failed (Shopify updates only READY files).
    merchant, failed = world.gallery.ids("101")
    assert merchant == "m1" and world.gallery.states_of[failed].state.value == "failed"
    assert ("remove", "101") not in world.gallery.calls
    assert [e.action for e in world.sync.entries[CLIENT]] == [SyncAction.FAILED]
    summary = world.sync.product_summary(CLIENT, product.id)
    assert summary is not None and summary.value.state == "failed"


def test_featured_placement_moves_our_image_to_position_zero(world: World) -> None:
    product = world.product("101", ("m1", "u1"), ("m2", "u2"))
    asset = world.asset(product)
    world.push(asset, Placement.FEATURED)
    record = world.record(asset)
    assert world.gallery.ids("101")[0] == record.media_id and record.position == 0
    assert world.gallery.ids("101")[1:] == ["m1", "m2"]


def test_a_new_revision_replaces_our_image_in_place(world: World) -> None:
    product = world.product("101", ("m1", "u1"), ("m2", "u2"))
    asset = world.asset(product)
    world.push(asset)
    world.gallery.place("101", world.record(asset).media_id, 1)  # placed between the merchant's
    first = world.record(asset).model_copy(update={"position": 1})
    world.sync.records[(CLIENT, first.id)] = (first, world.sync.records[(CLIENT, first.id)][1])
    world.new_revision(asset)

    outcome = world.push(asset, pusher="job2/0")

    assert outcome.action == "replaced"
    record = world.record(asset)
    assert record.revision == 2 and record.media_id != first.media_id
    assert world.gallery.ids("101") == ["m1", record.media_id, "m2"]  # same position, no duplicate
    product_now = world.catalog.products.get(CLIENT, product.id)
    assert product_now is not None and product_now.store is not None
    assert product_now.store.pushed_media_ids == [record.media_id]
    assert [e.action for e in world.sync.entries[CLIENT]] == [SyncAction.PUSHED, SyncAction.REPLACED]


def test_woocommerce_like_galleries_place_the_image_as_they_take_it() -> None:
    world = World(async_media=False, platform=StorePlatform.WOOCOMMERCE)
    product = world.product("77", ("a1", "u1"))
    asset = world.asset(product)
    world.push(asset, Placement.FEATURED)
    record = world.record(asset, "77")
    assert world.gallery.ids("77") == [record.media_id, "a1"]
    assert not world.sleeps and ("place", "77") not in world.gallery.calls
    assert ("states", "77") not in world.gallery.calls  # answered READY: no poll


# -- what cannot be pushed ---------------------------------------------------------------------------


def test_what_cannot_be_synced_is_refused_and_nothing_is_pushed(world: World) -> None:
    linked = world.product("101")
    unlinked = world.product("102", linked=False)
    cases = [
        (world.asset(linked, approved=False), AssetNotApproved),
        (world.asset(linked, media=MediaKind.VIDEO), VideoNotSyncable),
        (world.asset(unlinked), ProductNotLinked),
        (world.asset(None), ProductNotLinked),
    ]
    for asset, error in cases:
        with pytest.raises(error):
            world.start(SyncRequest(asset_ids=[asset.id]))
    other = world.asset(linked, client_id="someone-else")
    with pytest.raises(NotFound):
        world.start(SyncRequest(asset_ids=[other.id]))
    assert ("push", "101") not in world.gallery.calls and not world.queue.tasks


def test_a_disconnected_store_refuses_a_sync(world: World) -> None:
    product = world.product("101")
    asset = world.asset(product)
    loaded = world.stores.load(CLIENT)
    assert loaded is not None
    world.stores.update(loaded, {"status": ConnectionStatus.DISCONNECTED.value})
    with pytest.raises(StoreNotConnected):
        world.start(SyncRequest(asset_ids=[asset.id]))


def test_unsynced_selects_approved_images_not_in_the_store_at_their_current_revision(world: World) -> None:
    product = world.product("101")
    synced, waiting, _unapproved = world.asset(product), world.asset(product), world.asset(product, approved=False)
    world.push(synced)
    job = world.start(SyncRequest(unsynced=True))
    assert job.item_count == 1
    world.run()
    assert world.record(waiting).status is RecordStatus.SYNCED
    with pytest.raises(NothingToSync):
        world.start(SyncRequest(unsynced=True))


# -- jobs --------------------------------------------------------------------------------------------


def test_a_sync_job_pushes_each_image_once_and_says_so_in_its_event(world: World) -> None:
    product = world.product("101", ("m1", "u1"))
    assets = [world.asset(product) for _ in range(3)]
    job = world.start(SyncRequest(asset_ids=[a.id for a in assets]), key="k1")
    assert world.start(SyncRequest(asset_ids=[a.id for a in assets]), key="k1").id == job.id  # same key

    world.run()
    # A redelivered item task pushes nothing more.
    item_tasks = [t for t in world.queue.tasks if isinstance(t.payload, ItemTask)]
    world.deliver(item_tasks[0])

    done = world.jobs.get_job(CLIENT, job.id)
    assert done.status is JobStatus.COMPLETED and done.settled
    assert [c for c, _ in world.gallery.calls].count("push") == 3
    assert len(world.gallery.ids("101")) == 4
    (event,) = [e for e in world.jobs.events if e.type in (EventType.SYNC_COMPLETED, EventType.SYNC_FAILED)]
    assert event.type is EventType.SYNC_COMPLETED and event.payload["pushed"] == 3


def test_a_revoked_token_mid_job_pauses_it_and_a_resume_after_reconnecting_finishes_it(world: World) -> None:
    product = world.product("101")
    assets = [world.asset(product) for _ in range(4)]
    job = world.start(SyncRequest(asset_ids=[a.id for a in assets]))
    world.deliver(world.queue.tasks[0])  # fan-out page 1 of 2
    first_item = next(t for t in world.queue.tasks if isinstance(t.payload, ItemTask))
    world.deliver(first_item)
    world.gallery.revoked = True

    world.run()

    paused = world.jobs.get_job(CLIENT, job.id)
    assert paused.status is JobStatus.PAUSED and paused.paused_reason == "store_needs_reauthorization"
    loaded = world.stores.load(CLIENT)
    assert loaded is not None and loaded.value.status is ConnectionStatus.NEEDS_REAUTH
    assert any(e.type is EventType.STORE_NEEDS_REAUTHORIZATION for e in world.stores.events)
    queued = world.jobs.items_with_status(CLIENT, job.id, ItemStatus.QUEUED)
    assert len(queued) == 3  # none failed: they wait

    world.gallery.revoked = False
    world.stores.update(loaded, {"status": ConnectionStatus.ACTIVE.value})  # the merchant reconnected
    world.now += timedelta(hours=2)  # settle tasks are named after their window: a later one runs
    lifecycle.resume_job(SYNCS, world.jobs, world.queue, CLIENT, job.id, world.now)
    world.run()

    done = world.jobs.get_job(CLIENT, job.id)
    assert done.status is JobStatus.COMPLETED
    # Each image is in the store once (the push the revoked token refused added nothing).
    assert len(world.gallery.ids("101")) == 4


def test_a_store_unavailable_item_is_retried_and_pushed_once(world: World) -> None:
    product = world.product("101")
    asset = world.asset(product)
    job = world.start(SyncRequest(asset_ids=[asset.id]))
    world.gallery.unavailable = 1
    outcomes = world.run()
    assert any(o.startswith("retry") for o in outcomes)
    assert world.jobs.get_job(CLIENT, job.id).status is JobStatus.COMPLETED
    assert [c for c, _ in world.gallery.calls].count("push") == 1


def test_cancelling_mid_job_leaves_the_unstarted_images_out_of_the_store(world: World) -> None:
    product = world.product("101")
    assets = [world.asset(product) for _ in range(4)]
    job = world.start(SyncRequest(asset_ids=[a.id for a in assets]))
    world.deliver(world.queue.tasks[0])
    world.deliver(next(t for t in world.queue.tasks if isinstance(t.payload, ItemTask)))
    lifecycle.cancel_job(SYNCS, world.jobs, world.queue, CLIENT, job.id, world.now)
    world.run()
    done = world.jobs.get_job(CLIENT, job.id)
    assert done.status is JobStatus.CANCELLED and done.settled
    assert [c for c, _ in world.gallery.calls].count("push") == 1


# -- remove, restore, webhooks -----------------------------------------------------------------------


def test_remove_takes_off_only_our_image_and_restore_puts_the_original_order_back(world: World) -> None:
    product = world.product("101", ("m1", "u1"), ("m2", "u2"))
    first, second = world.asset(product), world.asset(product)
    world.push(first, Placement.FEATURED)
    world.push(second)
    world.gallery.place("101", "m2", 0)  # the merchant shuffles too

    removed = service.remove_assets(
        world.sync, world.catalog, lambda c: world.gallery, world.connection, CLIENT, [first.id], "u1", world.now
    )
    assert [r.asset_id for r in removed] == [first.id]
    assert "m1" in world.gallery.ids("101") and "m2" in world.gallery.ids("101")
    assert world.record(first).status is RecordStatus.REMOVED

    restored = service.restore_product(
        world.sync, world.catalog, lambda c: world.gallery, world.connection, CLIENT, product.id, "u1", world.now
    )
    assert world.gallery.ids("101") == ["m1", "m2"] and restored.order == ["m1", "m2"]
    assert world.record(second).status is RecordStatus.REMOVED
    product_now = world.catalog.products.get(CLIENT, product.id)
    assert product_now is not None and product_now.store is not None and product_now.store.pushed_media_ids == []
    actions = [e.action for e in world.sync.entries[CLIENT]]
    assert actions.count(SyncAction.REMOVED) == 2 and actions[-1] is SyncAction.RESTORED


def test_webhooks_mark_our_image_removed_in_the_store_and_a_deleted_product_orphaned(world: World) -> None:
    product = world.product("101", ("m1", "u1"))
    first, second = world.asset(product), world.asset(product)
    world.push(first)
    world.push(second)
    watcher = service.SyncWatcher(world.sync, world.catalog)

    kept = world.record(second).media_id
    note = watcher.changed(CLIENT, "shopify", "101", ["m1", kept], world.now)
    assert "1 synced images removed" in note
    assert world.record(first).status is RecordStatus.REMOVED
    assert world.record(second).status is RecordStatus.SYNCED

    watcher.deleted(CLIENT, "shopify", "101", world.now)
    assert world.record(second).status is RecordStatus.ORPHANED
    actions = [e.action for e in world.sync.entries[CLIENT]]
    assert SyncAction.REMOVED_IN_STORE in actions and SyncAction.ORPHANED in actions


# -- auto-sync, history, conversion ------------------------------------------------------------------


def test_auto_sync_queues_the_approval_and_the_worker_starts_a_job_keyed_by_it(world: World) -> None:
    product = world.product("101")
    asset = world.asset(product)
    queue = RecordingTaskQueue()
    consumer = auto.AutoSync(world.sync, queue)
    approved = new_event(
        CLIENT,
        EventType.ASSET_APPROVED,
        Subject(kind="asset", id=asset.id),
        AssetApproval(asset_id=asset.id, product_id=product.id, approved=True),
        occurred_at=world.now,
        sequence=1,
    )
    assert consumer.handle(approved) == "skipped: auto-sync is off" and not queue.tasks
    world.sync.save_settings(CLIENT, SyncSettingsDoc(auto_sync=True))
    assert consumer.handle(approved) == "sync queued"
    assert consumer.handle(approved) == "sync queued"  # a redelivered event: the same task name
    (task,) = queue.tasks
    assert task.target == "sync_tasks" and task.path == auto.AUTO_SYNC_PATH
    payload = task.payload
    assert isinstance(payload, auto.AutoSyncTask)

    def start(request: SyncRequest, key: str) -> Any:
        return create_sync(
            world.services,
            client_id=CLIENT,
            user_id=auto.AUTO_SYNC_USER,
            request=request,
            request_key=RequestKey(key=key, fingerprint="f"),
            trigger="auto",
        )

    first = service.auto_sync(world.catalog, world.stores, payload, start)
    again = service.auto_sync(world.catalog, world.stores, payload, start)
    assert first.startswith("sync started") and first == again  # the same job
    world.run()
    assert world.record(asset).status is RecordStatus.SYNCED
    unapproved = world.asset(product, approved=False)
    late = payload.model_copy(update={"asset_id": unapproved.id, "event_id": "e2"})
    assert service.auto_sync(world.catalog, world.stores, late, start).startswith("skipped")


def test_the_history_csv_defuses_formulas(world: World) -> None:
    product = world.product("101")
    asset = world.asset(product)
    world.push(asset)
    entry = world.sync.entries[CLIENT][0].model_copy(update={"result": "=HYPERLINK(1)"})
    lines = list(service.history_csv(iter([entry])))
    assert lines[0].startswith("at,action,result")
    assert ",'=HYPERLINK(1)," in lines[1]


def test_images_over_twenty_megapixels_are_scaled_down_and_the_record_says_so(world: World) -> None:
    product = world.product("101")
    flat = io.BytesIO()
    Image.new("RGB", (5200, 4000), (20, 90, 200)).save(flat, "PNG")  # large in pixels, small in bytes
    asset = world.asset(product, size=(5200, 4000), data=flat.getvalue())
    revision = world.catalog.assets.revision(CLIENT, asset.id, 1)
    assert revision is not None
    copy = push_copy(world.objects, asset, revision, product, LIMITS)
    assert copy.converted is not None and "scaled down from 5200x4000" in copy.converted
    pushed = Image.open(io.BytesIO(world.objects.get(copy.key)))
    assert pushed.width * pushed.height <= STORE_MAX_PIXELS
    assert copy.name.startswith("blue-ceramic-mug-lifestyle-") and copy.name.endswith(".png")
    assert copy.alt == "Blue Ceramic Mug, lifestyle photo"


def test_the_copy_a_store_fetches_lives_under_the_prefix_the_r2_lifecycle_rule_expires(world: World) -> None:
    product = world.product("101")
    asset = world.asset(product)
    revision = world.catalog.assets.revision(CLIENT, asset.id, 1)
    assert revision is not None
    copy = push_copy(world.objects, asset, revision, product, LIMITS)
    assert copy.key.startswith(f"{SYNC_COPY_PREFIX}{CLIENT}/{asset.id}/r1/")
    # The rule must outlive the longest presigned URL handed to a store.
    bounds = Settings.model_fields["sync_source_url_hours"].metadata
    assert any(getattr(bound, "le", None) == 168 for bound in bounds)
    assert SYNC_COPY_RETENTION_DAYS * 24 > 168
    # Written again on every push, so its age (what the rule counts) restarts with each URL handed out.
    pushed = world.objects.get(copy.key)
    world.objects.put(copy.key, b"stale", "image/png")
    again = push_copy(world.objects, asset, revision, product, LIMITS)
    assert again.key == copy.key and world.objects.get(again.key) == pushed
