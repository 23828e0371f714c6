"""Generation jobs: accept fast, fan out in tasks, run one task per item, settle credits once.

* Create: validate, quote, reserve the whole job's cost as ONE hold (402 when unaffordable), store
  the item list in the object store, write the job document and enqueue one fan-out task. A
  1,000-item job costs one balance-document write here, whatever its size.
* Fan-out: pages of item documents and named item tasks (a redelivered page creates nothing twice).
* Item worker: idempotent (a finished item is left alone; asset ids are derived from job, item and
  variant, so a crash mid-item is completed once on redelivery); transient engine failures are
  retried by the queue, permanent ones and the last attempt fail the item. Each finished item adds
  to one of N counter shards in the same commit that finishes it, so no document is hot.
* Settle: when every item has finished, ONE capture charges the successful images and releases the
  rest of the hold: failed and cancelled items are refunded automatically, visibly in the history.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.catalog.assets import IMMUTABLE_CACHE, assets_ref, stage_new_asset
from shared.catalog.models import AssetDoc, AssetKind
from shared.catalog.products import get_product, new_id, products_ref
from shared.engines.base import EngineError, EnginePermanentError, EngineRetryableError, ImageRequest, InputImage
from shared.errors import Conflict, NotFound, ValidationFailed
from shared.generation import prompts
from shared.generation.models import (
    TERMINAL_ITEM,
    FanoutTask,
    GenerationSettings,
    ItemDoc,
    ItemListQuery,
    ItemOut,
    ItemStatus,
    ItemTask,
    JobCounts,
    JobCreate,
    JobDoc,
    JobListQuery,
    JobOut,
    JobStatus,
    SettleTask,
)
from shared.http.pagination import InvalidCursor, Page, decode_cursor, encode_cursor
from shared.ledger.model import Actor
from shared.ledger.pricing import PriceList, QuoteItem, quote
from shared.tasks import RetryTask, TaskCall, TaskQueue, TaskRequest, task_name, windowed_task

if TYPE_CHECKING:
    from google.cloud.firestore import Client

    from shared.engines.base import ImageEngine
    from shared.imaging import ImageLimits
    from shared.ledger.service import Ledger
    from shared.storage import ObjectStore

logger = logging.getLogger("epox.generation")

WORKER = "generate_tasks"
MAX_REFERENCE_IMAGES = 3


@dataclass(frozen=True)
class GenerationPolicy:
    fanout_page: int
    counter_shards: int
    hold_ttl: timedelta
    max_attempts: int
    output_format: str
    image_limits: ImageLimits
    thumbnail_max_side: int


def jobs_ref(db: Client, client_id: str) -> Any:
    return db.collection("clients").document(client_id).collection("jobs")


def _derived(prefix: str, *parts: object) -> str:
    return f"{prefix}_{hashlib.sha256('|'.join(map(str, parts)).encode()).hexdigest()[:24]}"


def _spec_key(client_id: str, job_id: str) -> str:
    return f"clients/{client_id}/jobs/{job_id}/items.json"


# -- create -------------------------------------------------------------------------------------------


def _check_references(db: Client, client_id: str, data: JobCreate) -> None:
    """Every product and asset named must be the client's own (404 otherwise, nothing reserved)."""
    product_ids = sorted({item.product_id for item in data.items if item.product_id})
    if product_ids:
        refs = [products_ref(db, client_id).document(pid) for pid in product_ids]
        found = {snap.id for snap in db.get_all(refs, field_paths=["id"]) if snap.exists}
        missing = [pid for pid in product_ids if pid not in found]
        if missing:
            raise NotFound(
                f"No product {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                missing=missing[:20],
            )
    wanted = {(item.product_id, aid) for item in data.items for aid in item.image_asset_ids}
    if wanted:
        refs = [assets_ref(db, client_id).document(aid) for _, aid in sorted(wanted, key=lambda w: w[1])]
        owners = {snap.id: (snap.to_dict() or {}).get("product_id") for snap in db.get_all(refs) if snap.exists}
        for product_id, asset_id in wanted:
            if asset_id not in owners:
                raise NotFound(f"No asset {asset_id}")
            if owners[asset_id] != product_id:
                raise ValidationFailed(
                    f"Asset {asset_id} is not an image of product {product_id}",
                    errors=[
                        {
                            "field": "items.image_asset_ids",
                            "in": "body",
                            "message": "not this product's image",
                            "type": "value_error",
                        }
                    ],
                )


def create_job(
    db: Client,
    store: ObjectStore,
    queue: TaskQueue,
    ledger: Ledger,
    prices: PriceList,
    *,
    client_id: str,
    user_id: str,
    data: JobCreate,
    base: GenerationSettings,
    policy: GenerationPolicy,
    now: datetime,
    idempotency_key: str | None,
    retry_of: str | None = None,
) -> JobDoc:
    """Accept a job: one reservation for all of it, one fan-out task. Re-running with the same key
    returns the same job and reserves nothing more."""
    from google.api_core.exceptions import AlreadyExists

    settings = GenerationSettings.model_validate({**base.model_dump(), **data.overrides()})
    prompts.require_style(settings.style)
    # A key names one request to one endpoint (as the HTTP layer scopes it): the same key sent to
    # POST /jobs and to POST /jobs/{id}/retry names two different jobs.
    scope = (client_id, idempotency_key) if retry_of is None else (client_id, idempotency_key, "retry", retry_of)
    job_id = _derived("job", *scope) if idempotency_key else new_id("job")
    existing = jobs_ref(db, client_id).document(job_id).get()
    if existing.exists:
        return JobDoc.model_validate(existing.to_dict())
    _check_references(db, client_id, data)
    slots = len(data.items) * settings.variants
    # The same quote the credits API gives for this operation: the price shown is the price reserved.
    line = quote(prices, [QuoteItem(operation="generate_image", variant=settings.size, quantity=slots)]).lines[0]
    unit_price, cost = line.unit_price, line.amount
    hold_id = ledger.reserve_for_job(
        client_id,
        key=f"job:{job_id}",
        amount=cost,
        user_id=user_id,
        purpose=f"generation job {job_id}",
        ttl=policy.hold_ttl,
        operation="generate_image",
    )
    store.put(
        _spec_key(client_id, job_id),
        json.dumps([i.model_dump(mode="json") for i in data.items]).encode(),
        "application/json",
    )
    job = JobDoc(
        id=job_id,
        client_id=client_id,
        settings=settings,
        item_count=len(data.items),
        slot_count=slots,
        unit_price=unit_price,
        cost=cost,
        hold_id=hold_id,
        retry_of=retry_of,
        created_by=user_id,
        created_at=now,
        updated_at=now,
        fanout_pages=max(1, math.ceil(len(data.items) / policy.fanout_page)),
    )
    try:
        jobs_ref(db, client_id).document(job_id).create(job.model_dump(mode="python"))
    except AlreadyExists:
        return JobDoc.model_validate(jobs_ref(db, client_id).document(job_id).get().to_dict())
    queue.enqueue(_fanout_task(client_id, job_id, 0))
    return job


def _fanout_task(client_id: str, job_id: str, page: int) -> TaskRequest:
    return TaskRequest(
        target=WORKER,
        path="/tasks/fanout",
        payload=FanoutTask(client_id=client_id, job_id=job_id, page=page),
        name=task_name("fanout", client_id, job_id, str(page)),
    )


def _item_task(client_id: str, job_id: str, index: int) -> TaskRequest:
    return TaskRequest(
        target=WORKER,
        path="/tasks/item",
        payload=ItemTask(client_id=client_id, job_id=job_id, index=index),
        name=task_name("item", client_id, job_id, str(index)),
    )


def _settle_task(client_id: str, job_id: str, now: datetime) -> TaskRequest:
    return windowed_task(
        target=WORKER,
        path="/tasks/settle",
        payload=SettleTask(client_id=client_id, job_id=job_id),
        name_parts=("settle", client_id, job_id),
        finished_at=now,
    )


# -- fan-out ------------------------------------------------------------------------------------------


def run_fanout(
    db: Client,
    store: ObjectStore,
    queue: TaskQueue,
    task: FanoutTask,
    policy: GenerationPolicy,
    now: datetime,
    clock: Callable[[], datetime] | None = None,
) -> str:
    from google.api_core.exceptions import AlreadyExists

    job = get_job(db, task.client_id, task.job_id)
    if job.settled:
        return "job already settled"
    specs = json.loads(store.get(_spec_key(task.client_id, task.job_id)))
    start = task.page * policy.fanout_page
    page = specs[start : start + policy.fanout_page]
    items_ref = jobs_ref(db, task.client_id).document(task.job_id).collection("items")
    cancelled = job.status in (JobStatus.CANCELLING, JobStatus.CANCELLED)
    docs = [
        ItemDoc(
            index=start + offset,
            product_id=spec.get("product_id"),
            image_asset_ids=spec.get("image_asset_ids", []),
            prompt=spec.get("prompt"),
            status=ItemStatus.CANCELLED if cancelled else ItemStatus.QUEUED,
            updated_at=now,
        )
        for offset, spec in enumerate(page)
    ]
    created: list[ItemDoc] = []
    for doc in docs:
        batch = db.batch()
        batch.create(items_ref.document(f"{doc.index:06d}"), doc.model_dump(mode="python"))
        if cancelled:
            _count(
                batch,
                db,
                task.client_id,
                task.job_id,
                doc.index,
                policy,
                {"done_items": 1, "cancelled_items": 1, "cancelled_slots": job.settings.variants},
            )
        try:
            batch.commit()
            created.append(doc)
        except AlreadyExists:
            continue  # a redelivered page: this item exists (and may already be running)
    if not cancelled:
        for doc in docs:
            queue.enqueue(_item_task(task.client_id, task.job_id, doc.index))
    # Every page's products (not only the first page's): each of them was generated with these settings.
    prompts.remember_defaults(db, task.client_id, job.settings, [d.product_id for d in docs if d.product_id], now)
    last = task.page + 1 >= job.fanout_pages
    _mark_fanned_out(db, jobs_ref(db, task.client_id).document(task.job_id), counted=bool(created), now=now)
    if not last:
        queue.enqueue(_fanout_task(task.client_id, task.job_id, task.page + 1))
    elif cancelled:
        queue.enqueue(_settle_task(task.client_id, task.job_id, clock() if clock is not None else now))
    return f"fan-out page {task.page + 1}/{job.fanout_pages}: {len(created)} items"


def _mark_fanned_out(db: Client, ref: Any, *, counted: bool, now: datetime) -> None:
    """Count the page and move a queued job to running, in a transaction: a cancel that lands while
    the page is being fanned out must not be overwritten by a status read before it."""
    from google.cloud import firestore

    @firestore.transactional  # type: ignore[misc]
    def apply(transaction: Any) -> None:
        current = JobStatus((ref.get(transaction=transaction).to_dict() or {}).get("status", JobStatus.QUEUED.value))
        changes: dict[str, Any] = {"updated_at": now}
        if counted:
            changes["fanout_pages_done"] = firestore.Increment(1)
        if current is JobStatus.QUEUED:
            changes["status"] = JobStatus.RUNNING.value
        transaction.update(ref, changes)

    apply(db.transaction())


def _count(
    batch: Any,
    db: Client,
    client_id: str,
    job_id: str,
    index: int,
    policy: GenerationPolicy,
    increments: dict[str, int],
) -> None:
    from google.cloud import firestore

    shard = (
        jobs_ref(db, client_id).document(job_id).collection("counters").document(f"{index % policy.counter_shards:03d}")
    )
    batch.set(shard, {name: firestore.Increment(value) for name, value in increments.items()}, merge=True)


# -- item worker --------------------------------------------------------------------------------------


def run_item(
    db: Client,
    store: ObjectStore,
    queue: TaskQueue,
    engine: ImageEngine,
    task: ItemTask,
    call: TaskCall,
    policy: GenerationPolicy,
    now: datetime,
    clock: Callable[[], datetime] | None = None,
) -> str:
    """``clock`` gives the time when the item finishes (``now`` is when the delivery started); the
    settle task must be for the window the item finishes in, see :func:`_finish`."""
    from google.api_core.exceptions import FailedPrecondition

    item_ref = jobs_ref(db, task.client_id).document(task.job_id).collection("items").document(f"{task.index:06d}")
    snapshot = item_ref.get()
    if not snapshot.exists:
        return "item not found: dropped"
    item = ItemDoc.model_validate(snapshot.to_dict())
    if item.status in TERMINAL_ITEM:
        queue.enqueue(_settle_task(task.client_id, task.job_id, now))
        return f"item already {item.status.value}"
    job = get_job(db, task.client_id, task.job_id)
    if job.status in (JobStatus.CANCELLING, JobStatus.CANCELLED) and item.status is ItemStatus.QUEUED:
        return _finish(db, queue, item_ref, snapshot, task, item, job, policy, now, ItemStatus.CANCELLED, [], 0, None)
    item_ref.update({"status": ItemStatus.RUNNING.value, "attempts": item.attempts + 1, "updated_at": now})
    running = item_ref.get()

    last_attempt = call.retry_count + 1 >= policy.max_attempts
    asset_ids: list[str] = []
    failures: list[EngineError] = []
    request = _build_request(db, store, task.client_id, job, item)
    for variant in range(job.settings.variants):
        asset_id = _derived("ast", task.job_id, task.index, variant)
        if assets_ref(db, task.client_id).document(asset_id).get().exists:
            asset_ids.append(asset_id)
            continue
        try:
            result = engine.generate(replace(request, seed=_seed(task.job_id, task.index, variant)))
            _store_generated(db, store, task.client_id, job, item, asset_id, variant, result, request, policy, now)
            asset_ids.append(asset_id)
        except EngineRetryableError as error:
            if not last_attempt:
                # The variants done so far are kept (their ids are fixed); the queue retries the rest.
                raise RetryTask(f"engine busy: {error.detail}", retry_after=error.retry_after) from error
            failures.append(error)
        except EngineError as error:
            failures.append(error)
        except Exception as error:
            if not last_attempt:
                raise  # a crash: the queue re-delivers and the stored variants are reused
            # The last attempt must still finish the item, or the job would never settle.
            logger.exception("item %s of job %s crashed on its last attempt", task.index, task.job_id)
            failures.append(EnginePermanentError(f"internal error: {type(error).__name__}"))
    failed = job.settings.variants - len(asset_ids)
    status = ItemStatus.SUCCEEDED if asset_ids else ItemStatus.FAILED
    failure = None
    if failures:
        first = failures[0]
        failure = {
            "code": first.code,
            "message": first.detail,
            "variants_failed": failed,
            "retryable": bool(getattr(first, "retryable", False)),
        }
    try:
        return _finish(
            db,
            queue,
            item_ref,
            running,
            task,
            item,
            job,
            policy,
            now,
            status,
            asset_ids,
            failed,
            failure,
            finished_at=clock() if clock is not None else None,
        )
    except FailedPrecondition:
        return "another delivery finished this item"


def _seed(job_id: str, index: int, variant: int) -> int:
    return int(hashlib.sha256(f"{job_id}|{index}|{variant}".encode()).hexdigest()[:8], 16)


def _finish(
    db: Client,
    queue: TaskQueue,
    item_ref: Any,
    snapshot: Any,
    task: ItemTask,
    item: ItemDoc,
    job: JobDoc,
    policy: GenerationPolicy,
    now: datetime,
    status: ItemStatus,
    asset_ids: list[str],
    failed_variants: int,
    failure: dict[str, Any] | None,
    finished_at: datetime | None = None,
) -> str:
    """Finish the item and count it, atomically and only once (guarded by the item's update time).

    The settle task is named after the window the item FINISHES in: generation can take longer
    than a window, and a settle task named after the window the delivery started in may already
    have run (finding this item unfinished); a second one of that name would be dropped as a
    duplicate and the job would never settle."""
    variants = job.settings.variants
    increments = {"done_items": 1}
    if status is ItemStatus.CANCELLED:
        increments |= {"cancelled_items": 1, "cancelled_slots": variants}
    else:
        increments |= {"succeeded_slots": len(asset_ids), "failed_slots": failed_variants}
        increments |= {"succeeded_items": 1} if status is ItemStatus.SUCCEEDED else {"failed_items": 1}
    batch = db.batch()
    batch.update(
        item_ref,
        {
            "status": status.value,
            "asset_ids": asset_ids,
            "failed_variants": failed_variants,
            "failure": failure,
            "updated_at": now,
        },
        option=db.write_option(last_update_time=snapshot.update_time),
    )
    _count(batch, db, task.client_id, task.job_id, task.index, policy, increments)
    batch.commit()
    queue.enqueue(_settle_task(task.client_id, task.job_id, finished_at or now))
    return f"item {task.index} {status.value}"


def _build_request(db: Client, store: ObjectStore, client_id: str, job: JobDoc, item: ItemDoc) -> ImageRequest:
    images: list[InputImage] = []
    product = None
    if item.product_id:
        try:
            product = get_product(db, client_id, item.product_id)
        except NotFound:
            product = None  # deleted after the job was accepted: generate from the prompt alone
        if item.image_asset_ids:
            # The named images: any asset of the product (create checked that), an upload or an earlier
            # generated image alike, in the order given. One deleted since the job was accepted is skipped.
            refs = [assets_ref(db, client_id).document(aid) for aid in item.image_asset_ids[:MAX_REFERENCE_IMAGES]]
            found = {
                snap.id: snap.to_dict() or {}
                for snap in db.get_all(refs, field_paths=["key", "content_type"])
                if snap.exists
            }
            for asset_id in item.image_asset_ids[:MAX_REFERENCE_IMAGES]:
                if asset_id in found:
                    images.append(
                        InputImage(data=store.get(found[asset_id]["key"]), mime_type=found[asset_id]["content_type"])
                    )
        elif product is not None:
            for image in product.images[:MAX_REFERENCE_IMAGES]:
                images.append(InputImage(data=store.get(image.key), mime_type=image.content_type))
    text = prompts.build_prompt(job.settings, product, item.prompt)
    return ImageRequest(
        prompt=text,
        aspect_ratio=job.settings.aspect_ratio,
        size=job.settings.size,
        images=tuple(images),
        negative_prompt=job.settings.negative_prompt,
        style=job.settings.style,
    )


def _store_generated(
    db: Client,
    store: ObjectStore,
    client_id: str,
    job: JobDoc,
    item: ItemDoc,
    asset_id: str,
    variant: int,
    result: Any,
    request: ImageRequest,
    policy: GenerationPolicy,
    now: datetime,
) -> None:
    from google.api_core.exceptions import AlreadyExists

    from shared.engines.output import encode_output

    encoded, thumbnail = encode_output(
        result.data, policy.output_format, policy.image_limits, policy.thumbnail_max_side
    )
    base = f"clients/{client_id}/assets/{asset_id}/r1"
    key, thumb_key = f"{base}.{encoded.extension}", f"{base}_thumb.webp"
    store.put(key, encoded.data, encoded.content_type, cache_control=IMMUTABLE_CACHE)
    store.put(thumb_key, thumbnail.data, thumbnail.content_type, cache_control=IMMUTABLE_CACHE)
    metadata = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "style": job.settings.style,
        "model": result.model,
        "engine": result.engine,
        "offline": result.engine == "offline",
        "size": job.settings.size,
        "aspect_ratio": job.settings.aspect_ratio,
        "variant": variant,
        "item_index": item.index,
        "input_asset_ids": item.image_asset_ids,
        "engine_text": result.text,
    }
    asset = AssetDoc(
        id=asset_id,
        client_id=client_id,
        product_id=item.product_id,
        kind=AssetKind.GENERATED,
        source=result.engine,
        key=key,
        thumbnail_key=thumb_key,
        content_type=encoded.content_type,
        width=encoded.width,
        height=encoded.height,
        job_id=job.id,
        metadata=metadata,
        created_at=now,
        updated_at=now,
    )
    batch = db.batch()
    stage_new_asset(batch, db, asset, size_bytes=len(encoded.data), operation="generate", metadata=metadata)
    # An earlier delivery may have stored it already: same bytes, same keys.
    with contextlib.suppress(AlreadyExists):
        batch.commit()


# -- settle -------------------------------------------------------------------------------------------


def _counter_totals(db: Client, client_id: str, job_id: str) -> dict[str, int]:
    totals: dict[str, int] = {}
    for snapshot in jobs_ref(db, client_id).document(job_id).collection("counters").stream():
        for name, value in (snapshot.to_dict() or {}).items():
            totals[name] = totals.get(name, 0) + int(value)
    return totals


def run_settle(db: Client, ledger: Ledger, task: SettleTask, now: datetime) -> str:
    """Once every item has finished: capture the successes, release the rest (one ledger commit)."""
    job = get_job(db, task.client_id, task.job_id)
    if job.settled:
        return "already settled"
    totals = _counter_totals(db, task.client_id, task.job_id)
    if totals.get("done_items", 0) < job.item_count:
        return f"{totals.get('done_items', 0)}/{job.item_count} items finished"
    charge = totals.get("succeeded_slots", 0) * job.unit_price
    captured = released = 0
    if job.hold_id:
        outcome = ledger.capture(
            task.client_id,
            job.hold_id,
            amount=charge,
            actor=Actor(kind="task", id=f"settle:{job.id}"),
            reason=f"generation job {job.id}: {totals.get('succeeded_slots', 0)} images; failed and cancelled "
            "images refunded",
            key=f"settle:{job.id}",
        )
        captured, released = outcome.captured, outcome.released
    final = JobStatus.CANCELLED if job.status in (JobStatus.CANCELLING, JobStatus.CANCELLED) else JobStatus.COMPLETED
    jobs_ref(db, task.client_id).document(task.job_id).update(
        {
            "status": final.value,
            "settled": True,
            "settlement": {"captured": captured, "released": released},
            "finished_at": now,
            "updated_at": now,
        }
    )
    return f"settled: captured {captured}, released {released}"


# -- reads and commands -------------------------------------------------------------------------------


def get_job(db: Client, client_id: str, job_id: str) -> JobDoc:
    snapshot = jobs_ref(db, client_id).document(job_id).get()
    if not snapshot.exists:
        raise NotFound(f"No job {job_id}")
    return JobDoc.model_validate(snapshot.to_dict())


def job_out(db: Client, job: JobDoc) -> JobOut:
    from google.cloud.firestore import FieldFilter

    totals = _counter_totals(db, job.client_id, job.id)
    done = totals.get("done_items", 0)
    running = 0
    if not job.settled:
        query = (
            jobs_ref(db, job.client_id)
            .document(job.id)
            .collection("items")
            .where(filter=FieldFilter("status", "==", ItemStatus.RUNNING.value))
        )
        running = int(query.count().get()[0][0].value)
    counts = JobCounts(
        queued=max(0, job.item_count - done - running),
        running=running,
        succeeded=totals.get("succeeded_items", 0),
        failed=totals.get("failed_items", 0),
        cancelled=totals.get("cancelled_items", 0),
    )
    return JobOut(
        id=job.id,
        status=job.status,
        settings=job.settings,
        item_count=job.item_count,
        variants=job.settings.variants,
        cost=job.cost,
        unit_price=job.unit_price,
        counts=counts,
        progress=round(done / job.item_count, 4) if job.item_count else 1.0,
        images_succeeded=totals.get("succeeded_slots", 0),
        images_failed=totals.get("failed_slots", 0),
        retry_of=job.retry_of,
        settlement=job.settlement,
        created_at=job.created_at,
        finished_at=job.finished_at,
    )


def list_jobs(db: Client, client_id: str, query: JobListQuery) -> Page[JobDoc]:
    from google.cloud.firestore import FieldFilter, Query

    q = jobs_ref(db, client_id)
    if query.status:
        q = q.where(filter=FieldFilter("status", "==", query.status.value))
    q = q.order_by("created_at", direction=Query.DESCENDING).order_by("id", direction=Query.DESCENDING)
    if query.cursor:
        values = decode_cursor(query.cursor)
        try:
            q = q.start_after({"created_at": datetime.fromisoformat(str(values["t"])), "id": str(values["id"])})
        except (KeyError, ValueError) as exc:
            raise InvalidCursor() from exc
    docs = [JobDoc.model_validate(s.to_dict()) for s in q.limit(query.limit + 1).stream()]
    cursor = None
    if len(docs) > query.limit:
        docs = docs[: query.limit]
        cursor = encode_cursor({"t": docs[-1].created_at.isoformat(), "id": docs[-1].id})
    return Page(items=docs, next_cursor=cursor)


def list_items(db: Client, client_id: str, job_id: str, query: ItemListQuery) -> Page[ItemOut]:
    from google.cloud.firestore import FieldFilter

    get_job(db, client_id, job_id)
    q = jobs_ref(db, client_id).document(job_id).collection("items")
    if query.status:
        q = q.where(filter=FieldFilter("status", "==", query.status.value))
    q = q.order_by("index")
    if query.cursor:
        try:
            q = q.start_after({"index": int(decode_cursor(query.cursor)["i"])})
        except (KeyError, ValueError, TypeError) as exc:
            raise InvalidCursor() from exc
    docs = [ItemDoc.model_validate(s.to_dict()) for s in q.limit(query.limit + 1).stream()]
    cursor = None
    if len(docs) > query.limit:
        docs = docs[: query.limit]
        cursor = encode_cursor({"i": docs[-1].index})
    return Page(items=[ItemOut(**d.model_dump(include=set(ItemOut.model_fields))) for d in docs], next_cursor=cursor)


def cancel_job(db: Client, queue: TaskQueue, client_id: str, job_id: str, now: datetime) -> JobDoc:
    """Stop starting new items; items already running finish; unstarted ones are released at settle."""
    from google.api_core.exceptions import FailedPrecondition

    ref = jobs_ref(db, client_id).document(job_id)
    for _ in range(5):
        snapshot = ref.get()
        if not snapshot.exists:
            raise NotFound(f"No job {job_id}")
        job = JobDoc.model_validate(snapshot.to_dict())
        if job.settled or job.status in (JobStatus.CANCELLING, JobStatus.CANCELLED):
            return job
        try:
            # Guarded by the read: a settle that finishes in between wins, and we answer its state.
            ref.update(
                {"status": JobStatus.CANCELLING.value, "updated_at": now},
                option=db.write_option(last_update_time=snapshot.update_time),
            )
        except FailedPrecondition:
            continue
        queue.enqueue(_settle_task(client_id, job_id, now))
        return job.model_copy(update={"status": JobStatus.CANCELLING})
    return get_job(db, client_id, job_id)


def failed_items(db: Client, client_id: str, job_id: str) -> list[ItemDoc]:
    from google.cloud.firestore import FieldFilter

    job = get_job(db, client_id, job_id)
    if not job.settled:
        raise Conflict("The job is still running; retry its failed items once it has finished")
    q = (
        jobs_ref(db, client_id)
        .document(job_id)
        .collection("items")
        .where(filter=FieldFilter("status", "==", ItemStatus.FAILED.value))
    )
    return [ItemDoc.model_validate(s.to_dict()) for s in q.stream()]
