"""Sync jobs: approved images pushed to the connected store, one item per asset, on the batch engine.

Sync costs no credits (nothing is reserved or captured). The selection (asset ids, or every approved
image not yet synced, optionally of some products or one category) is resolved when the job is
accepted and written to the object store; the fan-out writes the items page by page. An item that
finds the store's access revoked pauses the job (the connection turns ``needs_reauth`` and the merchant
is notified); resuming it after a reconnect runs the items left.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from shared.batch import lifecycle
from shared.batch.kind import (
    Finish,
    ItemRun,
    JobKind,
    JobOrder,
    JobServices,
    PauseJob,
    RequestKey,
    Totals,
)
from shared.batch.models import ItemStatus, JobStatus
from shared.catalog.models import AssetDoc, MediaKind
from shared.catalog.ports import AssetFilter, CatalogRepositories, ProductFilter
from shared.catalog.store_link import StoreLinkStatus
from shared.errors import NotFound, UnprocessableContent
from shared.events.model import EventType, SyncFinished
from shared.stores.connections import StoreNeedsReauthorization, live_connection
from shared.stores.models import StoreConnectionDoc
from shared.stores.ports import StorePlatform
from shared.sync.auto import AUTO_SYNC_USER
from shared.sync.gallery import Gallery, StoreAccess, gallery
from shared.sync.models import (
    MAX_SYNC_ASSETS,
    Placement,
    RecordStatus,
    SyncItemDoc,
    SyncItemOut,
    SyncJobDoc,
    SyncJobOut,
    SyncRequest,
    record_id,
)
from shared.sync.push import PushPolicy, PushServices, push_asset, syncable_link
from shared.sync.repository import SyncRepository

if TYPE_CHECKING:
    from shared.batch.store import JobStore
    from shared.platform import Platform

PAUSED_FOR_REAUTH = "store_needs_reauthorization"


class NothingToSync(UnprocessableContent):
    code = "nothing_to_sync"
    title = "No approved image is waiting to be pushed"


class SelectionTooLarge(UnprocessableContent):
    code = "sync_selection_too_large"
    title = "Too many images for one sync"


@dataclass(frozen=True, kw_only=True)
class SyncServices(JobServices):
    catalog: CatalogRepositories
    sync: SyncRepository
    access: StoreAccess
    push: PushPolicy
    # The store's galleries (by default the connected platform's, through its adapter).
    galleries: Callable[[StoreConnectionDoc], Gallery] | None = None
    sleep: Callable[[float], None] = time.sleep

    def gallery(self, connection: StoreConnectionDoc) -> Gallery:
        return self.galleries(connection) if self.galleries is not None else gallery(self.access, connection)

    def pushing(self) -> PushServices:
        return PushServices(
            catalog=self.catalog,
            sync=self.sync,
            object_store=self.store,
            galleries=self.gallery,
            policy=self.push,
            clock=self.clock,
            sleep=self.sleep,
        )


@dataclass(frozen=True, kw_only=True)
class SyncOrder(JobOrder):
    request: SyncRequest
    placement: Placement
    trigger: str = "manual"
    connection: StoreConnectionDoc | None = None  # set by prepare
    targets: tuple[tuple[str, str], ...] = ()  # (asset id, product id), set by prepare


class SyncJobs(JobKind[SyncJobDoc, SyncItemDoc, SyncServices, SyncOrder]):
    """``clients/{c}/sync_jobs``: up to :data:`MAX_SYNC_ASSETS` images, counted in shards."""

    collection = "sync_jobs"
    id_prefix = "syn"
    noun = "sync job"
    label = "sync job"
    completed_event = EventType.SYNC_COMPLETED
    worker = "sync_tasks"
    task_prefix = "sync-"
    hold_prefix = "sync"
    operation = "sync"
    job_model = SyncJobDoc
    item_model = SyncItemDoc
    counted = True
    # A push, its processing (polled up to the push policy's budget) and the placement calls.
    item_deadline = timedelta(minutes=5)

    def store(self, platform: Platform) -> JobStore[SyncJobDoc, SyncItemDoc]:
        return platform.job_store(self)

    def dependencies(self, platform: Platform) -> SyncServices:
        from shared.sync.policies import store_access, sync_batch_policy, sync_push_policy

        return SyncServices(
            **self.lifecycle_services(platform, sync_batch_policy(platform.settings)),
            catalog=platform.catalog,
            sync=platform.sync,
            access=store_access(platform),
            push=sync_push_policy(platform.settings),
        )

    # -- steps ------------------------------------------------------------------------------------

    def prepare(self, services: SyncServices, order: SyncOrder, job_id: str) -> SyncOrder:
        connection = live_connection(services.access.stores, order.client_id)
        targets = select(services.catalog, services.sync, connection, order.client_id, order.request)
        return replace(order, connection=connection, targets=tuple(targets), amount=0)

    def record(
        self, services: SyncServices, order: SyncOrder, job_id: str, hold_id: str
    ) -> tuple[SyncJobDoc, Sequence[SyncItemDoc]]:
        assert order.connection is not None
        now = services.clock()
        services.store.put(
            _spec_key(order.client_id, job_id),
            json.dumps([{"asset_id": a, "product_id": p} for a, p in order.targets]).encode(),
            "application/json",
        )
        job = SyncJobDoc(
            id=job_id,
            client_id=order.client_id,
            item_count=len(order.targets),
            cost=0,
            hold_id=hold_id,
            created_by=order.user_id,
            created_at=now,
            updated_at=now,
            platform=order.connection.platform.value,
            shop=order.connection.shop,
            store_id=order.connection.id,
            placement=order.placement,
            trigger=order.trigger,
            fanout_pages=lifecycle.fanout_pages(len(order.targets), services.policy),
            fanout_page_size=services.policy.fanout_page,
            request_fingerprint=order.request_key.fingerprint if order.request_key is not None else None,
        )
        return job, []

    def page_items(
        self, services: SyncServices, job: SyncJobDoc, start: int, stop: int, status: ItemStatus
    ) -> list[SyncItemDoc]:
        specs = json.loads(services.store.get(_spec_key(job.client_id, job.id)))[start:stop]
        now = services.clock()
        return [
            SyncItemDoc(
                index=start + offset,
                asset_id=spec["asset_id"],
                product_id=spec["product_id"],
                status=status,
                updated_at=now,
            )
            for offset, spec in enumerate(specs)
        ]

    def work(self, services: SyncServices, run: ItemRun[SyncJobDoc, SyncItemDoc]) -> Finish:
        job, item = run.job, run.item
        try:
            connection = live_connection(services.access.stores, job.client_id)
            outcome = push_asset(
                services.pushing(),
                connection,
                client_id=job.client_id,
                asset_id=item.asset_id,
                placement=job.placement,
                job_id=job.id,
                pusher=f"{job.id}/{item.index}",
                by=job.created_by,
            )
        except StoreNeedsReauthorization as error:
            raise PauseJob(PAUSED_FOR_REAUTH) from error
        record = outcome.record
        return Finish(
            ItemStatus.SUCCEEDED,
            {
                "action": outcome.action,
                "revision": record.revision,
                "media_id": record.media_id,
                "converted": record.converted,
                "failure": None,
            },
            outcome=f"item {item.index}: {outcome.action}",
        )

    # -- rules ------------------------------------------------------------------------------------

    def tally(self, job: SyncJobDoc, item: SyncItemDoc) -> dict[str, int]:
        if item.status is ItemStatus.SUCCEEDED and item.action:
            return {f"{item.action}_items": 1}
        return {}

    def charge(self, job: SyncJobDoc, totals: Totals) -> int:
        return 0

    def settle_reason(self, job: SyncJobDoc, totals: Totals) -> str:
        return f"sync job {job.id}: free"

    def images(self, totals: Totals) -> int:
        return totals["pushed_items"] + totals["replaced_items"]

    def completion(
        self, job: SyncJobDoc, totals: Totals, final: JobStatus, captured: int, released: int
    ) -> tuple[EventType, BaseModel]:
        """``sync.completed`` with its counts, or ``sync.failed`` when nothing could be pushed."""
        pushed = totals["pushed_items"] + totals["replaced_items"]
        payload = SyncFinished(sync_id=job.id, store_id=job.store_id, pushed=pushed, failed=totals.failed)
        if totals.failed and not totals.succeeded:
            return EventType.SYNC_FAILED, payload.model_copy(update={"reason": "no image could be pushed"})
        return EventType.SYNC_COMPLETED, payload


SYNCS = SyncJobs()


def _spec_key(client_id: str, job_id: str) -> str:
    return f"clients/{client_id}/sync_jobs/{job_id}/items.json"


# -- selection ------------------------------------------------------------------------------------------


def select(
    catalog: CatalogRepositories,
    sync: SyncRepository,
    connection: StoreConnectionDoc,
    client_id: str,
    request: SyncRequest,
) -> list[tuple[str, str]]:
    """The (asset, product) pairs a request pushes. Named assets must all be pushable (404 for an id
    that is not the client's, 4xx for one that is not approved, a video, or not on a linked product);
    ``unsynced`` takes every approved image whose current revision is not in the store yet."""
    if request.asset_ids is not None:
        ids = list(dict.fromkeys(request.asset_ids))
        assets = catalog.assets.get_many(client_id, ids)
        missing = [asset_id for asset_id in ids if asset_id not in assets]
        if missing:
            raise NotFound(f"No asset {missing[0]}")
        products = catalog.products.get_many(client_id, {a.product_id for a in assets.values() if a.product_id})
        targets = []
        for asset_id in ids:
            asset = assets[asset_id]
            syncable_link(asset, products.get(asset.product_id or ""), connection)
            targets.append((asset.id, asset.product_id or ""))
        return targets
    targets = list(_unsynced(catalog, sync, connection, client_id, request))
    if not targets:
        raise NothingToSync("Every approved image of this selection is in the store already.")
    return _interleaved(targets)


def _interleaved(targets: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """One image of each product in turn: the items running at once work on different products (one
    snapshot read each, no writers contending for one product's records)."""
    by_product: dict[str, list[tuple[str, str]]] = {}
    for target in targets:
        by_product.setdefault(target[1], []).append(target)
    rounds = itertools.zip_longest(*by_product.values())
    return [target for round_ in rounds for target in round_ if target is not None]


def _unsynced(
    catalog: CatalogRepositories,
    sync: SyncRepository,
    connection: StoreConnectionDoc,
    client_id: str,
    request: SyncRequest,
) -> Iterator[tuple[str, str]]:
    found = 0
    for batch in _approved_batches(catalog, client_id, request):
        products = catalog.products.get_many(client_id, {a.product_id for a in batch if a.product_id})
        pushable: list[AssetDoc] = []
        for asset in batch:
            product = products.get(asset.product_id or "")
            if asset.media is MediaKind.VIDEO or product is None or product.store is None:
                continue
            link = product.store
            elsewhere = link.platform != connection.platform.value or link.shop != connection.shop
            if link.status is not StoreLinkStatus.LINKED or elsewhere:
                continue
            if request.category is not None and product.category != request.category:
                continue
            pushable.append(asset)
        synced = _synced_revisions(sync, client_id, [a.id for a in pushable], connection.platform)
        for asset in pushable:
            product = products[asset.product_id or ""]
            assert product.store is not None
            rid = record_id(asset.id, product.store.platform, product.store.product_id)
            if synced.get(rid) == asset.current_revision:
                continue
            found += 1
            if found > MAX_SYNC_ASSETS:
                raise SelectionTooLarge(
                    f"More than {MAX_SYNC_ASSETS:,} images wait to be pushed; sync them by product or category."
                )
            yield asset.id, product.id


def _approved_batches(catalog: CatalogRepositories, client_id: str, request: SyncRequest) -> Iterator[list[AssetDoc]]:
    product_ids: list[str | None] = list(request.product_ids) if request.product_ids is not None else [None]
    if request.category is not None and request.product_ids is None:
        product_ids = [p.id for p in _products_in(catalog, client_id, request.category)]
    for product_id in product_ids:
        after = None
        while True:
            where = AssetFilter(product_id=product_id, approved=True)
            page = catalog.assets.scan(client_id, where, after, 300)
            if page:
                yield page
            if len(page) < 300:
                break
            after = (page[-1].created_at, page[-1].id)


def _products_in(catalog: CatalogRepositories, client_id: str, category: str) -> Iterator[Any]:
    after = None
    while True:
        page = catalog.products.scan(client_id, ProductFilter(category=category), after, 300)
        yield from page
        if len(page) < 300:
            return
        after = (page[-1].created_at, page[-1].id)


def _synced_revisions(
    sync: SyncRepository, client_id: str, asset_ids: list[str], platform: StorePlatform
) -> dict[str, int | None]:
    revisions: dict[str, int | None] = {}
    for start in range(0, len(asset_ids), 30):
        for record in sync.records_of_assets(client_id, asset_ids[start : start + 30]):
            if record.status is RecordStatus.SYNCED:
                revisions[record.id] = record.revision
    return revisions


# -- accept and views -----------------------------------------------------------------------------------


def create_sync(
    services: SyncServices,
    *,
    client_id: str,
    user_id: str,
    request: SyncRequest,
    request_key: RequestKey | None,
    trigger: str = "manual",
) -> SyncJobDoc:
    """Accept a sync job (the same Idempotency-Key returns the same job)."""
    placement = request.placement or services.sync.settings(client_id).placement
    order = SyncOrder(
        client_id=client_id,
        user_id=user_id,
        request_key=request_key,
        request=request,
        placement=placement,
        trigger=trigger,
    )
    return lifecycle.accept(SYNCS, services, order)


def job_out(jobs: JobStore[SyncJobDoc, SyncItemDoc], job: SyncJobDoc) -> SyncJobOut:
    progress = lifecycle.progress(SYNCS, jobs, job)
    totals = progress.totals
    return SyncJobOut(
        id=job.id,
        status=job.status,
        paused_reason=job.paused_reason,
        platform=job.platform,
        placement=job.placement,
        trigger=job.trigger,
        asset_count=job.item_count,
        counts=progress.counts,
        pushed=totals["pushed_items"],
        replaced=totals["replaced_items"],
        already_synced=totals["already_synced_items"],
        created_at=job.created_at,
        finished_at=job.finished_at,
    )


def item_out(item: SyncItemDoc) -> SyncItemOut:
    return SyncItemOut(
        index=item.index,
        status=item.status,
        asset_id=item.asset_id,
        product_id=item.product_id,
        action=item.action,
        revision=item.revision,
        media_id=item.media_id,
        converted=item.converted,
        failure=item.failure,
    )


def start_auto_sync(platform: Platform, client_id: str) -> Callable[[SyncRequest, str], SyncJobDoc]:
    """Accepting an auto-sync job for ``client_id`` (the approval's key names it)."""
    import hashlib

    def start(request: SyncRequest, key: str) -> SyncJobDoc:
        fingerprint = hashlib.sha256(request.model_dump_json().encode()).hexdigest()
        return create_sync(
            SYNCS.dependencies(platform),
            client_id=client_id,
            user_id=AUTO_SYNC_USER,
            request=request,
            request_key=RequestKey(key=key, fingerprint=fingerprint),
            trigger="auto",
        )

    return start
