"""Generation jobs: AI product images in batches, on the shared batch-job lifecycle (:mod:`shared.batch`).

What is generation's own: the settings and references a job is checked against, its price (one
``generate_image`` per image: items x variants, quoted like the credits API quotes it), the item list
kept in the object store and written page by page by the fan-out (a 1,000-item job is accepted with
one balance write and one job write), the product defaults remembered per page, and the work of one
item: ``variants`` images, each stored as an asset whose id is derived from job, item and variant, so
a crash mid-item is completed once on redelivery. Transient engine failures are retried by the
queue, permanent ones and the last attempt fail the variant. An item the reaper gives up (its
delivery was killed) keeps the variants already stored: they are in the library. Progress is counted
in sharded counters; the settlement charges the images made and releases the rest of the hold.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.batch import lifecycle
from shared.batch.kind import (
    BatchPolicy,
    EngineJobServices,
    Finish,
    ItemRun,
    JobKind,
    JobOrder,
    RequestKey,
    Totals,
    failure_of,
)
from shared.batch.models import ItemListQuery, ItemStatus
from shared.catalog.assets import NewAsset, create_asset
from shared.catalog.models import AssetKind, AssetOrigin
from shared.catalog.products import get_product
from shared.engines.base import EngineError, EnginePermanentError, EngineRetryableError, ImageRequest, InputImage
from shared.errors import Conflict, EpoxError, NotFound, ValidationFailed
from shared.events.model import EventType
from shared.generation import prompts
from shared.generation.models import (
    MAX_REFERENCE_IMAGES,
    GenerationSettings,
    ItemDoc,
    ItemOut,
    JobCreate,
    JobDoc,
    JobOut,
)
from shared.ids import derived_id as _derived
from shared.ledger.pricing import PriceList, QuoteItem, quote
from shared.pagination import Page
from shared.tasks import MAX_DISPATCH_DEADLINE, RetryTask

if TYPE_CHECKING:
    from shared.batch.store import JobStore
    from shared.billing.store import BillingReader
    from shared.catalog.ports import CatalogRepositories
    from shared.config import Settings
    from shared.engines.base import ImageEngine
    from shared.generation.store import GenerationSettingsStore
    from shared.imaging import ImageLimits
    from shared.platform import Platform
    from shared.storage import ObjectStore

logger = logging.getLogger("epox.generation")


@dataclass(frozen=True)
class GenerationPolicy:
    fanout_page: int
    counter_shards: int
    hold_ttl: timedelta
    max_attempts: int
    output_format: str
    image_limits: ImageLimits
    thumbnail_max_side: int
    listing_min_side: int = 0  # IMG-03: a short side a little below it is topped up

    @property
    def batch(self) -> BatchPolicy:
        return BatchPolicy(
            max_attempts=self.max_attempts,
            hold_ttl=self.hold_ttl,
            fanout_page=self.fanout_page,
            counter_shards=self.counter_shards,
        )


def generation_policy(settings: Settings) -> GenerationPolicy:
    """The limits generation jobs run with, from the settings."""
    from shared.catalog.policies import image_limits

    return GenerationPolicy(
        fanout_page=settings.generation_fanout_page,
        counter_shards=settings.generation_counter_shards,
        hold_ttl=timedelta(hours=settings.generation_hold_ttl_hours),
        max_attempts=settings.tasks_max_attempts,
        output_format=settings.output_format,
        image_limits=image_limits(settings),
        thumbnail_max_side=settings.thumbnail_max_side,
        listing_min_side=settings.listing_min_side,
    )


@dataclass(frozen=True, kw_only=True)
class GenerationServices(EngineJobServices):
    """What generation jobs run with besides the lifecycle's services."""

    generation: GenerationPolicy
    catalog: CatalogRepositories
    settings: GenerationSettingsStore


@dataclass(frozen=True, kw_only=True)
class GenerationOrder(JobOrder):
    """A request for a generation job: its items and the settings they run with."""

    data: JobCreate
    settings: GenerationSettings
    prices: PriceList
    retry_of: str | None = None
    unit_price: int = 0  # priced by :meth:`GenerationJobs.prepare`
    unit_prices: dict[str, int] = field(default_factory=dict)  # items of other sizes than the job's
    slot_count: int = 0  # images asked for, over all items
    # An import's job (shared.generation.import_jobs): the amount its start reserved, which the job holds
    # (the same ledger key replays that hold); at least what its items cost.
    reserved: int | None = None


class GenerationJobs(JobKind[JobDoc, ItemDoc, GenerationServices, GenerationOrder]):
    """``clients/{c}/jobs``: up to 1,000 items of ``variants`` images each, counted in shards."""

    collection = "jobs"
    id_prefix = "job"
    noun = "job"
    label = "generation job"
    completed_event = EventType.GENERATION_JOB_COMPLETED
    worker = "generate_tasks"
    task_prefix = ""
    hold_prefix = "job"
    operation = "generate_image"
    job_model = JobDoc
    item_model = ItemDoc
    counted = True
    # Up to 4 variants made one after another, each a model call of up to GEMINI_TIMEOUT_SECONDS (8 min
    # at the default 120 s), plus reference downloads and encoding: more than the queue's default 10
    # minutes, so the most Cloud Tasks allows. The worker function's own timeout ends a hung delivery.
    item_deadline = MAX_DISPATCH_DEADLINE

    def store(self, platform: Platform) -> JobStore[JobDoc, ItemDoc]:
        return platform.job_store(self)

    def dependencies(self, platform: Platform) -> GenerationServices:
        policy = generation_policy(platform.settings)
        return GenerationServices(
            **self.lifecycle_services(platform, policy.batch),
            generation=policy,
            catalog=platform.catalog,
            settings=platform.generation_settings,
            engines=lambda: platform.engine,
        )

    # -- steps ------------------------------------------------------------------------------------

    def prepare(self, services: GenerationServices, order: GenerationOrder, job_id: str) -> GenerationOrder:
        """Every product and asset named is the client's own; priced as the credits API quotes it."""
        _check_references(services.catalog, order.client_id, order.data)
        settings = order.settings
        images: dict[str, int] = {}
        for entry in order.data.items:
            if entry.style is not None:
                prompts.require_style(entry.style)
            size = entry.size or settings.size
            images[size] = images.get(size, 0) + (entry.variants or settings.variants)
        # The same quote the credits API gives for this operation: the price shown is the price reserved.
        lines = quote(
            order.prices,
            [QuoteItem(operation="generate_image", variant=size, quantity=n) for size, n in images.items()],
        ).lines
        by_size = {line.variant or settings.size: line.unit_price for line in lines}
        unit_price = by_size.get(settings.size) or order.prices.price("generate_image", settings.size)
        mixed = any(size != settings.size for size in images)
        amount = sum(line.amount for line in lines)
        if order.reserved is not None:
            if amount > order.reserved:
                raise Conflict(f"The job costs {amount} credits; {order.reserved} were reserved for it")
            amount = order.reserved
        return replace(
            order,
            amount=amount,
            unit_price=unit_price,
            unit_prices=by_size if mixed else {},
            slot_count=sum(images.values()),
        )

    def record(
        self, services: GenerationServices, order: GenerationOrder, job_id: str, hold_id: str
    ) -> tuple[JobDoc, Sequence[ItemDoc]]:
        """The item list goes to the object store (the fan-out writes the items page by page)."""
        client_id, data, now = order.client_id, order.data, services.clock()
        services.store.put(
            _spec_key(client_id, job_id),
            json.dumps([i.model_dump(mode="json") for i in data.items]).encode(),
            "application/json",
        )
        job = JobDoc(
            id=job_id,
            client_id=client_id,
            settings=order.settings,
            item_count=len(data.items),
            slot_count=order.slot_count or len(data.items) * order.settings.variants,
            unit_price=order.unit_price,
            unit_prices=order.unit_prices,
            cost=order.amount,
            hold_id=hold_id,
            retry_of=order.retry_of,
            created_by=order.user_id,
            created_at=now,
            updated_at=now,
            fanout_pages=lifecycle.fanout_pages(len(data.items), services.policy),
            fanout_page_size=services.policy.fanout_page,
            request_fingerprint=order.request_key.fingerprint if order.request_key is not None else None,
        )
        return job, []

    def page_items(
        self, services: GenerationServices, job: JobDoc, start: int, stop: int, status: ItemStatus
    ) -> list[ItemDoc]:
        """One page of items from the stored item list."""
        specs = json.loads(services.store.get(_spec_key(job.client_id, job.id)))[start:stop]
        now = services.clock()
        return [
            ItemDoc(
                index=start + offset,
                product_id=spec.get("product_id"),
                image_asset_ids=spec.get("image_asset_ids", []),
                prompt=spec.get("prompt"),
                style=spec.get("style"),
                negative_prompt=spec.get("negative_prompt"),
                aspect_ratio=spec.get("aspect_ratio"),
                size=spec.get("size"),
                variants=spec.get("variants"),
                status=status,
                updated_at=now,
            )
            for offset, spec in enumerate(specs)
        ]

    def after_page(self, services: GenerationServices, job: JobDoc, items: list[ItemDoc]) -> None:
        # Every page's products (not only the first page's): each of them was generated with these settings.
        product_ids = [i.product_id for i in items if i.product_id]
        prompts.remember(
            services.settings, services.catalog.products, job.client_id, job.settings, product_ids, services.clock()
        )

    def work(self, services: GenerationServices, run: ItemRun[JobDoc, ItemDoc]) -> Finish:
        return _generate(services.catalog, services.store, services.engine, services.generation, run)

    # -- rules ------------------------------------------------------------------------------------

    def tally(self, job: JobDoc, item: ItemDoc) -> dict[str, int]:
        settings = item_settings(job, item)
        if item.status is ItemStatus.CANCELLED:
            return {"cancelled_slots": settings.variants}
        failed = item.failed_variants
        if item.status is ItemStatus.FAILED and not item.asset_ids:
            failed = settings.variants  # failed as a whole: every image the item asked for
        counts = {"succeeded_slots": len(item.asset_ids), "failed_slots": failed}
        if job.unit_prices:
            counts["succeeded_credits"] = len(item.asset_ids) * job.unit_prices.get(settings.size, job.unit_price)
        return counts

    def charge(self, job: JobDoc, totals: Totals) -> int:
        if job.unit_prices:
            return totals["succeeded_credits"]  # images of several sizes, each at its price
        return totals["succeeded_slots"] * job.unit_price

    def images(self, totals: Totals) -> int:
        return totals["succeeded_slots"]

    def settle_reason(self, job: JobDoc, totals: Totals) -> str:
        return f"generation job {job.id}: {totals['succeeded_slots']} images; failed and cancelled images refunded"

    def failed(self, job: JobDoc, error: EpoxError) -> Finish:
        variants = job.settings.variants
        failure = failure_of(error, variants_failed=variants)
        return Finish(ItemStatus.FAILED, {"asset_ids": [], "failed_variants": variants, "failure": failure})

    def given_up(self, services: GenerationServices, job: JobDoc, item: ItemDoc, error: EpoxError) -> Finish:
        """Each variant is an asset in the customer's library as soon as it is stored: the ones an
        earlier (or killed) delivery stored are theirs and charged, only the rest failed and refunded."""
        count = item_settings(job, item).variants
        variants = [variant_asset_id(job, item, v) for v in range(count)]
        stored = services.catalog.assets.existing(job.client_id, variants)
        asset_ids = [asset_id for asset_id in variants if asset_id in stored]
        if not asset_ids:
            return self.failed(job, error)
        failed = count - len(asset_ids)
        failure = failure_of(error, variants_failed=failed) if failed else None
        return Finish(
            ItemStatus.SUCCEEDED,
            {"asset_ids": asset_ids, "failed_variants": failed, "failure": failure},
            outcome=f"item given up: {len(asset_ids)} of {count} images kept",
        )


GENERATION = GenerationJobs()


def item_settings(job: JobDoc, item: ItemDoc) -> GenerationSettings:
    """The settings an item runs with: the job's, with the item's own over them."""
    fields = ("style", "negative_prompt", "aspect_ratio", "size", "variants")
    own = {name: getattr(item, name) for name in fields if getattr(item, name) is not None}
    return job.settings.model_copy(update=own) if own else job.settings


def variant_asset_id(job: JobDoc, item: ItemDoc, variant: int) -> str:
    """The asset a variant is stored as, derived from job, item and variant: every delivery of the
    item (and the reaper) names the same one."""
    return _derived("ast", job.id, item.index, variant)


def _spec_key(client_id: str, job_id: str) -> str:
    return f"clients/{client_id}/jobs/{job_id}/items.json"


# -- create -------------------------------------------------------------------------------------------


def _check_references(catalog: CatalogRepositories, client_id: str, data: JobCreate) -> None:
    """Every product and asset named must be the client's own (404 otherwise, nothing reserved)."""
    product_ids = sorted({item.product_id for item in data.items if item.product_id})
    if product_ids:
        found = catalog.products.existing(client_id, product_ids)
        missing = [pid for pid in product_ids if pid not in found]
        if missing:
            raise NotFound(
                f"No product {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                missing=missing[:20],
            )
    wanted = {(item.product_id, aid) for item in data.items for aid in item.image_asset_ids}
    if wanted:
        named = catalog.assets.get_many(client_id, sorted(aid for _, aid in wanted))
        owners = {asset_id: asset.product_id for asset_id, asset in named.items()}
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
    services: GenerationServices,
    prices: PriceList,
    *,
    client_id: str,
    user_id: str,
    data: JobCreate,
    base: GenerationSettings,
    request_key: RequestKey | None,
    retry_of: str | None = None,
    billing: BillingReader,
) -> JobDoc:
    """Accept a job: one reservation for all of it, one fan-out task. Re-running with the same key
    returns the same job and reserves nothing more; the same key with another request is a 409.
    A client whose payment is past the grace period starts no paid work (402), whatever the route."""
    from shared.billing.catalog import load_catalog
    from shared.billing.service import require_good_standing

    require_good_standing(billing, load_catalog(), client_id, services.clock())
    settings = GenerationSettings.model_validate({**base.model_dump(), **data.overrides()})
    prompts.require_style(settings.style)
    order = GenerationOrder(
        client_id=client_id,
        user_id=user_id,
        request_key=request_key,
        # A key names one request to one endpoint (as the HTTP layer scopes it): the same key sent to
        # POST /jobs and to POST /jobs/{id}/retry names two different jobs.
        scope=() if retry_of is None else ("retry", retry_of),
        data=data,
        settings=settings,
        prices=prices,
        retry_of=retry_of,
    )
    return lifecycle.accept(GENERATION, services, order)


# -- item worker --------------------------------------------------------------------------------------


def _generate(
    catalog: CatalogRepositories,
    store: ObjectStore,
    engine: ImageEngine,
    policy: GenerationPolicy,
    run: ItemRun[JobDoc, ItemDoc],
) -> Finish:
    """Every variant not stored yet; the item succeeds when at least one image was made."""
    job, item = run.job, run.item
    settings = item_settings(job, item)
    asset_ids: list[str] = []
    failures: list[EngineError] = []
    request = _build_request(catalog, store, job.client_id, settings, item)
    for variant in range(settings.variants):
        asset_id = variant_asset_id(job, item, variant)
        if catalog.assets.existing(job.client_id, [asset_id]):
            asset_ids.append(asset_id)
            continue
        try:
            result = engine.generate(replace(request, seed=_seed(job.id, item.index, variant)))
            _store_generated(
                catalog, store, job.client_id, job, settings, item, asset_id, variant, result, request, policy, run.now
            )
            asset_ids.append(asset_id)
        except EngineRetryableError as error:
            if not run.last_attempt:
                # The variants done so far are kept (their ids are fixed); the queue retries the rest.
                raise RetryTask(f"engine busy: {error.detail}", retry_after=error.retry_after) from error
            failures.append(error)
        except EngineError as error:
            failures.append(error)
        except Exception as error:
            if not run.last_attempt:
                raise  # a crash: the queue re-delivers and the stored variants are reused
            # The last attempt must still finish the item, or the job would never settle.
            logger.exception("item %s of job %s crashed on its last attempt", item.index, job.id)
            if _stored_after_all(catalog, job.client_id, asset_id):
                asset_ids.append(asset_id)  # the commit went through before the error: in the library, charged
                continue
            failures.append(EnginePermanentError(f"internal error: {type(error).__name__}"))
    failed = settings.variants - len(asset_ids)
    failure = failure_of(failures[0], variants_failed=failed) if failures else None
    return Finish(
        ItemStatus.SUCCEEDED if asset_ids else ItemStatus.FAILED,
        {"asset_ids": asset_ids, "failed_variants": failed, "failure": failure},
    )


def _stored_after_all(catalog: CatalogRepositories, client_id: str, asset_id: str) -> bool:
    try:
        return bool(catalog.assets.existing(client_id, [asset_id]))
    except Exception:
        logger.exception("could not tell whether asset %s was stored", asset_id)
        return False


def _seed(job_id: str, index: int, variant: int) -> int:
    return int(hashlib.sha256(f"{job_id}|{index}|{variant}".encode()).hexdigest()[:8], 16)


def _build_request(
    catalog: CatalogRepositories, store: ObjectStore, client_id: str, settings: GenerationSettings, item: ItemDoc
) -> ImageRequest:
    images: list[InputImage] = []
    product = None
    if item.product_id:
        try:
            product = get_product(catalog.products, client_id, item.product_id)
        except NotFound:
            product = None  # deleted after the job was accepted: generate from the prompt alone
        if item.image_asset_ids:
            # The named images: any asset of the product (create checked that), an upload or an earlier
            # generated image alike, in the order given. One deleted since the job was accepted is skipped.
            found = catalog.assets.get_many(client_id, item.image_asset_ids[:MAX_REFERENCE_IMAGES])
            for asset_id in item.image_asset_ids[:MAX_REFERENCE_IMAGES]:
                if asset_id in found:
                    images.append(
                        InputImage(data=store.get(found[asset_id].key), mime_type=found[asset_id].content_type)
                    )
        elif product is not None:
            for image in product.images[:MAX_REFERENCE_IMAGES]:
                images.append(InputImage(data=store.get(image.key), mime_type=image.content_type))
    text = prompts.build_prompt(settings, product, item.prompt)
    return ImageRequest(
        prompt=text,
        aspect_ratio=settings.aspect_ratio,
        size=settings.size,
        images=tuple(images),
        negative_prompt=settings.negative_prompt,
        style=settings.style,
    )


def _store_generated(
    catalog: CatalogRepositories,
    store: ObjectStore,
    client_id: str,
    job: JobDoc,
    settings: GenerationSettings,
    item: ItemDoc,
    asset_id: str,
    variant: int,
    result: Any,
    request: ImageRequest,
    policy: GenerationPolicy,
    now: datetime,
) -> None:
    from shared.engines.output import delivered, encode_output

    encoded, thumbnail = encode_output(
        result.data,
        policy.output_format,
        policy.image_limits,
        policy.thumbnail_max_side,
        min_short_side=policy.listing_min_side,
    )
    metadata = {
        "delivered": delivered(encoded, policy.listing_min_side),
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "style": settings.style,
        "model": result.model,
        "engine": result.engine,
        "offline": result.engine == "offline",
        "size": settings.size,
        "aspect_ratio": settings.aspect_ratio,
        "variant": variant,
        "item_index": item.index,
        "input_asset_ids": item.image_asset_ids,
        "engine_text": result.text,
    }
    # Keys of this delivery's own: two deliveries of one item racing each store their bytes, and the
    # one whose asset is committed is the one served; the other's objects are deleted.
    new = NewAsset(
        asset_id=asset_id,
        client_id=client_id,
        kind=AssetKind.GENERATED,
        source=result.engine,
        origin=AssetOrigin.GENERATED,
        operation="generate",
        product_id=item.product_id,
        job_id=job.id,
        metadata=metadata,
        revision_metadata=metadata,
    )
    create_asset(catalog.assets, store, new, encoded, thumbnail, now)


# -- reads and commands -------------------------------------------------------------------------------


def job_out(jobs: JobStore[JobDoc, ItemDoc], job: JobDoc) -> JobOut:
    progress = lifecycle.progress(GENERATION, jobs, job)
    totals = progress.totals
    return JobOut(
        id=job.id,
        status=job.status,
        settings=job.settings,
        item_count=job.item_count,
        variants=job.settings.variants,
        cost=job.cost,
        unit_price=job.unit_price,
        counts=progress.counts,
        progress=progress.fraction,
        images_succeeded=totals["succeeded_slots"],
        images_failed=totals["failed_slots"],
        retry_of=job.retry_of,
        settlement=job.settlement,
        created_at=job.created_at,
        finished_at=job.finished_at,
    )


def list_items(jobs: JobStore[JobDoc, ItemDoc], client_id: str, job_id: str, query: ItemListQuery) -> Page[ItemOut]:
    page = lifecycle.list_items(jobs, client_id, job_id, query)
    items = [ItemOut(**d.model_dump(include=set(ItemOut.model_fields))) for d in page.items]
    return Page(items=items, next_cursor=page.next_cursor)


def failed_items(jobs: JobStore[JobDoc, ItemDoc], client_id: str, job_id: str) -> list[ItemDoc]:
    """What a retry job would run again: the failed items of a finished job."""
    job = jobs.get_job(client_id, job_id)
    if not job.settled:
        raise Conflict("The job is still running; retry its failed items once it has finished")
    return lifecycle.items_with_status(jobs, client_id, job_id, ItemStatus.FAILED)
