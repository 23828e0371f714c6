"""Pushing one approved image to its store product: the sync job's item work.

The synced-image record of (asset, store product) is the push's state machine, written before and after
every store call, so a redelivered item never pushes the same revision twice:

1. nothing to do when the record is ``synced`` at the asset's current revision;
2. the product's own images are snapshotted before our first push to it;
3. the record turns ``processing`` with the revision being pushed (and the media it replaces, for a
   newer revision of an image already in the store) before the store is called; the store's media id
   is written as soon as it answers. A push whose answer was lost is found again in the gallery by the
   mark in its file name;
4. the media is polled until READY or FAILED (Shopify processes it asynchronously); still processing
   after the delivery's budget, the item goes back to the queue, which polls again later;
5. once READY it is placed (featured: position 0; a replacement: the old image's position) and the
   replaced media is taken off the product; the record turns ``synced`` with a history entry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared import logging as log
from shared.catalog.models import AssetDoc, AssetRevision, MediaKind, ProductDoc
from shared.catalog.ports import CatalogRepositories, StaleWrite
from shared.catalog.store_link import StoreLink, StoreLinkStatus
from shared.errors import Conflict, EpoxError, NotFound, UnprocessableContent, UpstreamUnavailable
from shared.ids import new_id
from shared.imaging import ImageLimits
from shared.storage import ObjectStore
from shared.stores.models import StoreConnectionDoc
from shared.stores.ports import MediaState, StoreImage, StoreImageRejected, StoreMedia
from shared.sync.gallery import Gallery
from shared.sync.models import (
    HistoryDoc,
    Placement,
    ProductSnapshotDoc,
    ProductSyncDoc,
    RecordStatus,
    SnapshotImage,
    SyncAction,
    SyncRecordDoc,
    push_stem,
    record_id,
    snapshot_id,
)
from shared.sync.prepare import push_copy
from shared.sync.repository import SyncRepository

logger = log.get_logger("epox.sync")


# -- errors -------------------------------------------------------------------------------------------


class AssetNotApproved(Conflict):
    code = "asset_not_approved"
    title = "Only approved images are pushed to the store"


class VideoNotSyncable(UnprocessableContent):
    code = "sync_video_not_supported"
    title = "Videos are not pushed to the store"


class ProductNotLinked(Conflict):
    code = "product_not_linked"
    title = "The asset's product is not linked to a product of the connected store"


class MediaStillProcessing(UpstreamUnavailable):
    code = "store_media_processing"
    title = "The store is still processing the image"


class PushUnderWay(UpstreamUnavailable):
    code = "sync_push_under_way"
    title = "Another push of this image is under way"


class MediaFailed(StoreImageRejected):
    """The store took the image but could not process it (Shopify's mediaErrors)."""

    code = "store_media_failed"
    title = "The store could not process the image"


DROPPED = "MEDIA_DROPPED"  # our code for a media the store took and then silently dropped


# -- services -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushPolicy:
    source_ttl: timedelta  # how long the presigned URL the store fetches stays valid
    poll_budget: float  # seconds one delivery waits for the store to process an image
    push_lease: timedelta  # a push under way blocks others of the same image this long
    image_limits: ImageLimits


@dataclass(frozen=True)
class PushServices:
    catalog: CatalogRepositories
    sync: SyncRepository
    object_store: ObjectStore
    galleries: Callable[[StoreConnectionDoc], Gallery]
    policy: PushPolicy
    clock: Callable[[], datetime]
    sleep: Callable[[float], None] = time.sleep


@dataclass(frozen=True)
class Outcome:
    action: str  # pushed | replaced | already_synced
    record: SyncRecordDoc


# -- checks shared with the API ------------------------------------------------------------------------


def syncable_link(asset: AssetDoc, product: ProductDoc | None, connection: StoreConnectionDoc) -> StoreLink:
    """The store link an approved image is pushed through, or the 4xx that says why not."""
    if asset.media is MediaKind.VIDEO:
        raise VideoNotSyncable(f"Asset {asset.id} is a video; only images are pushed to the store.")
    if not asset.approved:
        raise AssetNotApproved(f"Asset {asset.id} is not approved.")
    if asset.product_id is None or product is None:
        raise ProductNotLinked(f"Asset {asset.id} belongs to no product.")
    link = product.store
    if (
        link is None
        or link.status is not StoreLinkStatus.LINKED
        or link.platform != connection.platform.value
        or link.shop != connection.shop
    ):
        raise ProductNotLinked(f"Product {product.id} is not linked to a product of the connected store.")
    return link


# -- the item -------------------------------------------------------------------------------------------


def push_asset(
    services: PushServices,
    connection: StoreConnectionDoc,
    *,
    client_id: str,
    asset_id: str,
    placement: Placement,
    job_id: str,
    pusher: str,
    by: str,
) -> Outcome:
    """Push the asset's current revision to its product (see the module docstring). ``pusher`` names
    this push (the job's item): a delivery of the same item resumes it, another push waits for it."""
    catalog, repo = services.catalog, services.sync
    asset = catalog.assets.get(client_id, asset_id)
    if asset is None:
        raise NotFound(f"No asset {asset_id}")
    product = catalog.products.get(client_id, asset.product_id) if asset.product_id else None
    link = syncable_link(asset, product, connection)
    assert product is not None
    store_pid, platform = link.product_id, link.platform
    revision = asset.current_revision
    rid = record_id(asset.id, platform, store_pid)
    gallery = services.galleries(connection)
    loaded = repo.load_record(client_id, rid)
    now = services.clock()
    record = loaded.value if loaded else None
    version = loaded.version if loaded else None
    if record is not None and record.status is RecordStatus.SYNCED and record.revision == revision:
        return Outcome("already_synced", record)
    snapshot = keep_snapshot(services, gallery, client_id, product, link)
    if record is not None and record.pushing_revision == revision:
        if record.pushing_by != pusher and record.push_lease_until and record.push_lease_until > now:
            raise PushUnderWay("This image is being pushed by another sync; it is tried again shortly.", retry_after=15)
    else:
        replaces = record.media_id if record is not None and record.status is RecordStatus.SYNCED else None
        base = record or SyncRecordDoc(
            id=rid,
            client_id=client_id,
            asset_id=asset.id,
            product_id=product.id,
            platform=platform,
            shop=link.shop,
            store_product_id=store_pid,
            created_at=now,
            updated_at=now,
        )
        record = base.model_copy(
            update={
                "status": RecordStatus.PROCESSING if replaces is None else base.status,
                "pushing_revision": revision,
                "pushing_media_id": None,
                "replaces_media_id": replaces,
                "placement": placement,
                "job_id": job_id,
                "reason": None,
                "error_code": None,
                "updated_at": now,
            }
        )
    record = record.model_copy(update={"pushing_by": pusher, "push_lease_until": now + services.policy.push_lease})
    version = _save(repo, record, version)
    answered: StoreMedia | None = None  # what the store said of the image it just took
    if record.pushing_media_id is None:
        sent = record.push_sent_at
        # Only a push that was sent can have lost its answer: a first attempt skips reading the gallery (a
        # Shopify read of up to 250 media, on every image pushed otherwise).
        media_id = _lost_push(gallery, store_pid, push_stem(asset.id, revision)) if sent is not None else None
        if media_id is None and sent is not None and services.clock() - sent < services.policy.push_lease:
            # An earlier delivery asked the store to add it and lost the answer; Shopify lists an image
            # only once it is processed: wait for it rather than add it a second time.
            raise MediaStillProcessing("An earlier push of this image may still be processing; checked again shortly.")
        if media_id is None:
            limits = services.policy.image_limits
            copy = push_copy(services.object_store, asset, _revision(catalog, asset), product, limits)
            record = record.model_copy(update={"push_sent_at": services.clock(), "converted": copy.converted})
            version = _save(repo, record, version)
            target = _target_position(record, placement)
            url = services.object_store.presigned_get(
                copy.key, expires_in=int(services.policy.source_ttl.total_seconds())
            )
            try:
                media = gallery.push(store_pid, source_url=url, name=copy.name, alt=copy.alt, position=target)
            except StoreImageRejected as rejected:
                _fail(services, record, version, rejected, by)
                raise
            media_id, answered = media.media_id, media
        # Ours from the moment the store has it: its products/update webhook must not import it back.
        note_pushed(catalog, client_id, product.id, media_id, None)
        record = record.model_copy(update={"pushing_media_id": media_id, "updated_at": services.clock()})
        version = _save(repo, record, version)
    assert record.pushing_media_id is not None
    # WooCommerce sideloads while it answers: an image it answered READY needs no poll.
    if answered is not None and answered.state is MediaState.READY:
        media = answered
    else:
        media = _await_ready(services, gallery, store_pid, record.pushing_media_id)
    if media.state is MediaState.FAILED:
        # A failed media stays on the product, marked failed in the merchant's admin: Shopify updates only
        # READY files (no fileUpdate off the product), and deleting a file is beyond what we take on.
        failure = MediaFailed(
            f"The store could not process the image ({media.error_code or 'no reason given'}"
            f"{': ' + media.error_message if media.error_message else ''})."
        )
        _fail(services, record, version, failure, by, code=media.error_code)
        raise failure
    return _finish(services, gallery, record, version, media, snapshot, by)


def _revision(catalog: CatalogRepositories, asset: AssetDoc) -> AssetRevision:
    found = catalog.assets.revision(asset.client_id, asset.id, asset.current_revision)
    if found is None:
        raise NotFound(f"Asset {asset.id} has no revision {asset.current_revision}")
    return found


def _save(
    repo: SyncRepository, record: SyncRecordDoc, version: object | None, history: Sequence[HistoryDoc] = ()
) -> object:
    try:
        return repo.save_record(record, version, history)
    except StaleWrite:
        # Another push or a webhook changed the record since it was read: the next delivery reads it again.
        raise PushUnderWay(
            "The image's sync record changed meanwhile; it is tried again shortly.", retry_after=5
        ) from None


def _target_position(record: SyncRecordDoc, placement: Placement) -> int | None:
    if record.replaces_media_id is not None and record.position is not None:
        return record.position
    return 0 if placement is Placement.FEATURED else None


def _lost_push(gallery: Gallery, store_pid: str, stem: str) -> str | None:
    """The media of an earlier delivery's push whose answer was lost: its URL carries our mark."""
    for image in gallery.images(store_pid):
        if stem in image.url.rsplit("/", 1)[-1]:
            return image.media_id
    return None


def _await_ready(services: PushServices, gallery: Gallery, store_pid: str, media_id: str) -> StoreMedia:
    """The media once READY or FAILED (a missing one is FAILED: the store dropped it); still processing
    after the delivery's budget, the item is retried later."""
    deadline = time.monotonic() + services.policy.poll_budget
    delay = 0.25
    while True:
        states = gallery.states(store_pid, [media_id])
        media = states.get(media_id)
        if media is None:
            return StoreMedia(
                media_id=media_id,
                state=MediaState.FAILED,
                error_code=DROPPED,
                error_message="the store dropped the image after taking it",
            )
        if media.state in (MediaState.READY, MediaState.FAILED):
            return media
        if time.monotonic() + delay > deadline:
            raise MediaStillProcessing(
                "The store is still processing the image; it is checked again shortly.", retry_after=10
            )
        services.sleep(delay)
        delay = min(delay * 2, 4.0)


def _fail(
    services: PushServices,
    record: SyncRecordDoc,
    version: object | None,
    error: EpoxError,
    by: str,
    *,
    code: str | None = None,
) -> None:
    now = services.clock()
    keeps_old = record.replaces_media_id is not None  # the previous revision is still in the store
    failed = record.model_copy(
        update={
            "status": RecordStatus.SYNCED if keeps_old else RecordStatus.FAILED,
            "reason": error.detail,
            "error_code": code or error.code,
            "pushing_revision": None,
            "pushing_media_id": None,
            "pushing_by": None,
            "push_lease_until": None,
            "push_sent_at": None,
            "replaces_media_id": None,
            "updated_at": now,
        }
    )
    entry = history_entry(
        failed, SyncAction.FAILED, now, result=error.detail or error.code, by=by, revision=record.pushing_revision
    )
    try:
        repo_version = services.sync.save_record(failed, version, [entry])
    except StaleWrite:
        return
    del repo_version
    refresh_product(services.sync, services.catalog, record.client_id, record.product_id, now)


def _finish(
    services: PushServices,
    gallery: Gallery,
    record: SyncRecordDoc,
    version: object | None,
    media: StoreMedia,
    snapshot: ProductSnapshotDoc,
    by: str,
) -> Outcome:
    store_pid, media_id = record.store_product_id, media.media_id
    replaces = record.replaces_media_id
    position: int | None
    if replaces is not None and record.position is not None:
        position = record.position
        if gallery.processes_later:
            gallery.place(store_pid, media_id, position)
    elif record.placement is Placement.FEATURED:
        position = 0
        if gallery.processes_later:
            gallery.place(store_pid, media_id, 0)
    else:
        others = [
            r
            for r in services.sync.records_of_product(record.client_id, record.platform, store_pid)
            if r.id != record.id and r.status is RecordStatus.SYNCED
        ]
        position = len(snapshot.images) + len(others)
    if replaces is not None and replaces not in {image.media_id for image in snapshot.images}:
        gallery.remove(store_pid, [replaces])
    now = services.clock()
    action = SyncAction.REPLACED if replaces is not None else SyncAction.PUSHED
    done = record.model_copy(
        update={
            "status": RecordStatus.SYNCED,
            "media_id": media_id,
            "url": media.url,
            "position": position,
            "revision": record.pushing_revision,
            "pushing_revision": None,
            "pushing_media_id": None,
            "pushing_by": None,
            "push_lease_until": None,
            "push_sent_at": None,
            "replaces_media_id": None,
            "reason": None,
            "error_code": None,
            "synced_at": now,
            "synced_by": by,
            "updated_at": now,
        }
    )
    entry = history_entry(done, action, now, result="ok", by=by)
    _save(services.sync, done, version, [entry])
    note_pushed(services.catalog, record.client_id, record.product_id, media_id, replaces)
    refresh_product(services.sync, services.catalog, record.client_id, record.product_id, now)
    logger.info("asset %s %s to store product %s as media %s", record.asset_id, action.value, store_pid, media_id)
    return Outcome(action.value, done)


def note_pushed(catalog: CatalogRepositories, client_id: str, product_id: str, add: str, drop: str | None) -> None:
    """Remember on the product's store link which store media are ours (imports and webhooks skip them)."""
    _edit_pushed(catalog, client_id, product_id, lambda ids: [m for m in ids if m != drop and m != add] + [add])


def forget_pushed(catalog: CatalogRepositories, client_id: str, product_id: str, media: Sequence[str]) -> None:
    gone = set(media)
    if gone:
        _edit_pushed(catalog, client_id, product_id, lambda ids: [m for m in ids if m not in gone])


def _edit_pushed(
    catalog: CatalogRepositories, client_id: str, product_id: str, edit: Callable[[list[str]], list[str]]
) -> None:
    for _ in range(5):
        loaded = catalog.products.load(client_id, product_id)
        if loaded is None or loaded.value.store is None:
            return
        link = loaded.value.store
        ids = edit(list(link.pushed_media_ids))
        if ids == link.pushed_media_ids:
            return
        try:
            stored = link.model_copy(update={"pushed_media_ids": ids}).model_dump(mode="python")
            catalog.products.update(client_id, product_id, {"store": stored}, loaded.version)
        except StaleWrite:
            continue
        return
    raise UpstreamUnavailable("The product is busy; try again", retry_after=2)


# -- snapshots, history, counts ------------------------------------------------------------------------


def keep_snapshot(
    services: PushServices, gallery: Gallery, client_id: str, product: ProductDoc, link: StoreLink
) -> ProductSnapshotDoc:
    """The product's images before our first push to it (taken now when there is none)."""
    sid = snapshot_id(link.platform, link.product_id)
    found = services.sync.snapshot(client_id, sid)
    if found is not None:
        return found
    images = gallery.images(link.product_id)
    return services.sync.keep_snapshot(client_id, snapshot_of(product, link, images, services.clock()))


def snapshot_of(
    product: ProductDoc, link: StoreLink, images: Sequence[StoreImage], now: datetime
) -> ProductSnapshotDoc:
    ordered = sorted(images, key=lambda image: image.position)
    return ProductSnapshotDoc(
        platform=link.platform,
        shop=link.shop,
        store_product_id=link.product_id,
        product_id=product.id,
        images=[
            SnapshotImage(media_id=i.media_id, url=i.url, alt=i.alt, position=n, featured=n == 0)
            for n, i in enumerate(ordered)
        ],
        taken_at=now,
    )


def history_entry(
    record: SyncRecordDoc,
    action: SyncAction,
    now: datetime,
    *,
    result: str,
    by: str | None,
    revision: int | None = None,
) -> HistoryDoc:
    return HistoryDoc(
        id=new_id("sh"),
        at=now,
        action=action,
        asset_id=record.asset_id,
        product_id=record.product_id,
        store_product_id=record.store_product_id,
        platform=record.platform,
        revision=revision if revision is not None else record.revision,
        media_id=record.media_id,
        result=result[:500],
        job_id=record.job_id,
        by=by,
    )


def refresh_product(
    repo: SyncRepository, catalog: CatalogRepositories, client_id: str, product_id: str, now: datetime
) -> None:
    """Recount the product's records into its summary. Guarded by the summary's version read before the
    records: a concurrent recount that wrote in between makes this one read again, so the last write
    always counts every record committed before it."""
    for _ in range(8):
        current = repo.product_summary(client_id, product_id)
        product = catalog.products.get(client_id, product_id)
        if product is None or product.store is None:
            return
        link = product.store
        records = repo.records_of_product(client_id, link.platform, link.product_id)
        counts = {status: 0 for status in RecordStatus}
        last: datetime | None = None
        for r in records:
            counts[r.status] += 1
            if r.synced_at is not None and (last is None or r.synced_at > last):
                last = r.synced_at
        pending = counts[RecordStatus.PENDING] + counts[RecordStatus.PROCESSING]
        failed, synced = counts[RecordStatus.FAILED], counts[RecordStatus.SYNCED]
        state = "failed" if failed else "pending" if pending else "synced" if synced else "none"
        summary = ProductSyncDoc(
            product_id=product_id,
            name=product.name,
            search_tokens=list(product.search_tokens),
            platform=link.platform,
            store_product_id=link.product_id,
            pending=pending,
            synced=synced,
            failed=failed,
            removed=counts[RecordStatus.REMOVED] + counts[RecordStatus.ORPHANED],
            state=state,
            last_synced_at=last,
            updated_at=now,
        )
        try:
            repo.save_product_summary(client_id, summary, current.version if current else None)
            return
        except StaleWrite:
            continue
    logger.warning("the sync counts of product %s stayed contended; the next change recounts them", product_id)
