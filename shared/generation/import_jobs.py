"""A spreadsheet import that also generates images: one generation job for its rows, one credit hold.

The flow (``POST /imports/{id}/generate``, then the import's chunk tasks, then ``/tasks/import-generation``):

1. Start (catalog API): the import plans the rows that generate and checks the cost against the preview
   (:mod:`shared.catalog.generation_rows`); :func:`generation_start` then reserves the whole cost as the
   hold of the job to come, under the ledger key the job's own acceptance will use (``job:{job id}``,
   the job id derived from the import): 402 when the credits are not there, before anything is queued.
   A client whose payment is past the grace period starts nothing (402).
2. The rows are imported like any import's.
3. Its completion enqueues ``/tasks/import-generation`` (a task named after the import); the worker
   (:func:`run_import_generation`) reads back the import's rows, keeps those whose product was created
   (and whose base image, if the row names one, was imported) and accepts ONE job for them through the
   batch lifecycle: the same key replays the start's hold (nothing more is reserved), and the job holds
   that amount (rows that were not imported are released at its settlement with what fails). Rows left
   out are recorded on the import (its errors.csv) with why. No row left: the hold is released.
4. errors.csv lists the import's problems and the job's failed images together, by row
   (:func:`report_rows`).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.batch import lifecycle
from shared.batch.kind import RequestKey
from shared.batch.models import ItemStatus
from shared.catalog import imports
from shared.catalog.generation_rows import GenerationPlan, GenerationPricing, GenerationStart, PlannedRow, plan
from shared.catalog.models import ImportDoc, ImportGeneration, ImportGenerationTask, ImportStatus
from shared.errors import NotFound
from shared.generation import prompts
from shared.generation.jobs import GENERATION, GenerationOrder, GenerationServices
from shared.generation.models import GenerationSettings, JobCreate, JobItemIn
from shared.ledger.model import Actor, HoldAlreadyResolved
from shared.ledger.pricing import PriceList
from shared.tasks import RetryTask

if TYPE_CHECKING:
    from shared.billing.store import BillingReader
    from shared.catalog.csv_parsing import ProductDraft
    from shared.engines.base import ImageEngine
    from shared.platform import Platform

logger = logging.getLogger("epox.generation.imports")

PART_ID = "generation"  # the import part listing the rows that were not generated (after every chunk's)
_SCOPE = ("import",)


def catalog_services(platform: Platform) -> GenerationServices:
    """Generation's services for the catalog function (it reserves and reads jobs, never runs one): no
    engine (the catalog function ships none)."""
    from shared.generation.jobs import generation_policy

    def no_engine() -> ImageEngine:
        raise RuntimeError("the catalog function runs no image engine")

    policy = generation_policy(platform.settings)
    return GenerationServices(
        **GENERATION.lifecycle_services(platform, policy.batch),
        generation=policy,
        catalog=platform.catalog,
        settings=platform.generation_settings,
        engines=no_engine,
    )


def generation_pricing(prices: PriceList) -> GenerationPricing:
    """The styles and prices an import's generation is planned with (the credits API's price list)."""
    return GenerationPricing(styles=frozenset(prompts.styles()), prices=prices)


def _request_key(import_id: str) -> RequestKey:
    # The import names its job: every start and every completion of it finds the same job and hold.
    return RequestKey(key=f"import:{import_id}", fingerprint=f"import:{import_id}")


def job_id_of(client_id: str, import_id: str) -> str:
    """The id of an import's generation job."""
    return lifecycle.job_id_for(GENERATION, client_id, _request_key(import_id), *_SCOPE)


def generation_start(
    services: GenerationServices, prices: PriceList, billing: BillingReader, *, client_id: str, user_id: str
) -> GenerationStart:
    """What :func:`shared.catalog.imports.start_import` generates with: the plan's pricing, and the
    reservation of its cost (402 when the credits are not there or the payment is past due)."""

    def reserve(doc: ImportDoc, planned: GenerationPlan) -> dict[str, Any]:
        from shared.billing.catalog import load_catalog
        from shared.billing.service import require_good_standing

        require_good_standing(billing, load_catalog(), client_id, services.clock())
        job_id = job_id_of(client_id, doc.id)
        hold_id = lifecycle.reserve(
            GENERATION,
            services.ledger,
            client_id,
            job_id,
            amount=planned.cost,
            user_id=user_id,
            policy=services.policy,
        )
        return {
            "status": "reserved",
            "job_id": job_id,
            "hold_id": hold_id,
            "amount": planned.cost,
            "images": planned.images,
            "unit_prices": planned.unit_prices,
            "user_id": user_id,
            "reserved_at": services.clock(),
        }

    return GenerationStart(pricing=generation_pricing(prices), reserve=reserve)


# -- the worker -----------------------------------------------------------------------------------------


def run_import_generation(services: GenerationServices, task: ImportGenerationTask, now: datetime) -> str:
    """Start the job of a finished import's generating rows (once: redeliveries find it started)."""
    repos = services.catalog
    try:
        doc = imports.get_import(repos.imports, task.client_id, task.import_id)
    except NotFound:
        return "import not found: dropped"
    run = doc.generation_job or {}
    if run.get("status") != "reserved":
        return f"generation is {run.get('status') or 'not asked for'}: nothing to do"
    if doc.status not in (ImportStatus.COMPLETED, ImportStatus.FAILED):
        raise RetryTask("the import is still finishing; its generation starts after", retry_after=10)
    items, rows, skipped = _items(services, doc, run)
    if not items:
        _release(services, doc, run, "no row of the import could generate")
        _record(repos, doc, skipped, {**run, "status": "skipped", "rows": [], "finished_at": now}, now)
        return "no row to generate: hold released"
    settings = GenerationSettings.model_validate(
        # The prompt goes with each item (a row's own, or the default): the job's would add it twice.
        ImportGeneration.model_validate(doc.generation or {}).model_dump(exclude={"rows", "prompt"}, exclude_none=True)
    )
    prices = PriceList(operations={"generate_image": dict(run.get("unit_prices") or {})})
    order = GenerationOrder(
        client_id=doc.client_id,
        user_id=str(run.get("user_id") or "import"),
        request_key=_request_key(doc.id),
        scope=_SCOPE,
        data=JobCreate(items=items),
        settings=settings,
        prices=prices,
        reserved=int(run.get("amount") or 0),
    )
    job = lifecycle.accept(GENERATION, services, order)
    started = {**run, "status": "started", "job_id": job.id, "items": len(items), "rows": rows, "started_at": now}
    _record(repos, doc, skipped, started, now)
    return f"job {job.id}: {len(items)} rows, {len(skipped)} left out"


def _items(
    services: GenerationServices, doc: ImportDoc, run: dict[str, Any]
) -> tuple[list[JobItemIn], list[int], list[dict[str, Any]]]:
    """The job's items (rows whose product exists, with their base image when they name one), the row of
    each item, and the report lines of the rows left out."""
    repos = services.catalog
    drafts: list[ProductDraft] = []
    for chunk in range(doc.progress.chunks_total):
        drafts += [r.draft for r in imports.chunk_results(services.store, doc, chunk) if r.draft is not None]
    pricing = GenerationPricing(
        styles=frozenset(prompts.styles()),
        prices=PriceList(operations={"generate_image": dict(run.get("unit_prices") or {"1K": 0})}),
    )
    planned = plan(drafts, ImportGeneration.model_validate(doc.generation or {}), pricing)
    by_row = {draft.row_number: draft for draft in drafts}
    product_ids = {row.row_number: imports.row_product_id(doc, by_row[row.row_number]) for row in planned.rows}
    existing = repos.products.existing(doc.client_id, list(product_ids.values()))
    skipped = [_left_out(number, f"No image was generated: {why}.") for number, why in planned.skipped]
    items: list[JobItemIn] = []
    rows: list[int] = []
    for row in planned.rows:
        draft = by_row[row.row_number]
        product_id = product_ids[row.row_number]
        if product_id not in existing:
            skipped.append(_left_out(row.row_number, "No image was generated: the product was not imported."))
            continue
        references: list[str] = []
        if row.base_image_url is not None and row.base_image_url in draft.image_urls:
            asset_id = imports.row_asset_id(doc, draft, draft.image_urls.index(row.base_image_url))
            if not repos.assets.existing(doc.client_id, [asset_id]):
                skipped.append(
                    _left_out(row.row_number, "No image was generated: its base image could not be imported.")
                )
                continue
            references.append(asset_id)
        items.append(_item(row, product_id, references))
        rows.append(row.row_number)
    skipped.sort(key=lambda line: int(line["row"]))
    return items, rows, skipped


def _item(row: PlannedRow, product_id: str, references: list[str]) -> JobItemIn:
    return JobItemIn.model_validate(
        {
            "product_id": product_id,
            "image_asset_ids": references,
            "prompt": row.prompt,
            "style": row.style,
            "negative_prompt": row.negative_prompt,
            "aspect_ratio": row.aspect_ratio,
            "size": row.size,
            "variants": row.variants,
        }
    )


def _left_out(row: int, message: str) -> dict[str, Any]:
    return {"row": row, "level": "error", "code": "generation_skipped", "message": message}


def _record(repos: Any, doc: ImportDoc, skipped: list[dict[str, Any]], run: dict[str, Any], now: datetime) -> None:
    """The rows left out (a part of the import, for errors.csv) and the job's state, in one write; a
    redelivery that finds the part recorded only brings the state up to date."""
    stored = {"chunk": -1, "last": True, "rows": 0, "errors": skipped, "completed_at": now}
    changes = {"generation_job": run, "updated_at": now}
    earlier = repos.imports.record_part(doc.client_id, doc.id, PART_ID, stored, {}, changes)
    if earlier is not None:
        repos.imports.update(doc.client_id, doc.id, changes)


def _release(services: GenerationServices, doc: ImportDoc, run: dict[str, Any], reason: str) -> None:
    hold_id = str(run.get("hold_id") or "")
    if not hold_id:
        return
    try:
        services.ledger.release(
            doc.client_id,
            hold_id,
            actor=Actor(kind="system", id=f"import:{doc.id}"),
            reason=f"import {doc.id}: {reason}; nothing was charged",
            key=f"import-generation:{hold_id}",
        )
    except HoldAlreadyResolved:
        logger.info("hold %s of import %s was released already", hold_id, doc.id)


# -- the report -----------------------------------------------------------------------------------------


def report_rows(services: GenerationServices, doc: ImportDoc) -> list[dict[str, Any]]:
    """The import's generation job's failed images, by row, for its errors.csv (none before it started)."""
    run = doc.generation_job or {}
    job_id, rows = run.get("job_id"), list(run.get("rows") or [])
    if run.get("status") != "started" or not job_id:
        return []
    jobs = services.jobs
    found: list[dict[str, Any]] = []
    for status in (ItemStatus.FAILED, ItemStatus.SUCCEEDED):
        for item in lifecycle.items_with_status(jobs, doc.client_id, str(job_id), status):
            if item.index >= len(rows) or not (item.failed_variants or status is ItemStatus.FAILED):
                continue
            failure = dict(item.failure or {})
            code = str(failure.get("code") or "generation_failed")
            detail = str(failure.get("message") or "the image could not be generated")
            if status is ItemStatus.FAILED:
                message = f"No image was generated: {detail}"
            else:
                message = f"{item.failed_variants} of the row's images were not generated: {detail}"
            found.append({"row": rows[item.index], "level": "error", "code": code, "message": message})
    return found
