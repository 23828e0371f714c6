"""Importing a connected store's catalog: read it, preview it, then run it on the import chunk engine.

Creating a store import answers at once with an import in ``preparing``; tasks then read the catalog —
Shopify: a bulk operation (run, polled through delayed tasks, never by sleeping; its JSONL streamed) for
everything or a collection, or ``nodes`` for chosen products; WooCommerce: pages of 100 within a time
budget per task — and write it as chunk files of product drafts, counting the preview as they go
(products and images per category, metadata completeness, new products against the plan's free product
slots). The import then waits in ``draft`` for the merchant to start it; from there it is the CSV
import's chunk engine (``shared.catalog.imports``): resumable, slot-enforcing, per-product errors in
errors.csv, ``import.completed`` at the end. Products are keyed by the store's product id and images by
its media id, so importing again creates no duplicates.

Each preparing step is one named task whose number is stored with the import; a redelivered step finds
the number moved on and does nothing, and a step that crashed is delivered again and rewrites the same
chunk files before it moves the number on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from shared import logging as log
from shared.catalog.imports import store_product_id, write_chunk
from shared.catalog.models import ImportDoc, ImportProgress, ImportSource, ImportStatus
from shared.catalog.ports import CatalogRepositories, StaleWrite
from shared.catalog.products import product_usage
from shared.catalog.store_link import StoreLink
from shared.errors import EpoxError
from shared.ids import new_id
from shared.stores.connections import (
    ConnectionPolicy,
    live_connection,
    open_secrets,
    shopify_token,
    watching_authorization,
    woo_keys,
)
from shared.stores.models import StoreConnectionDoc, StoreImportRequest, StoreImportScope
from shared.stores.ports import (
    BulkStatus,
    ShopifyAdmin,
    StorePlatform,
    StoreProduct,
    StoreUnavailable,
    WooCommerceApi,
)
from shared.stores.repository import StoreRepository
from shared.tasks import MAX_DISPATCH_DEADLINE, MIN_DISPATCH_DEADLINE, RetryTask, TaskQueue, TaskRequest, task_name

if TYPE_CHECKING:
    from shared.catalog.csv_parsing import RowResult
    from shared.credentials import CredentialCipher
    from shared.storage import ObjectStore

logger = log.get_logger("epox.stores.imports")

WORKER_TARGET = "store_tasks"
PREPARE_PATH = "/tasks/prepare-import"
MAX_CATEGORIES = 200  # the preview's per-category counts (the rest are summed as "other")


@dataclass(frozen=True)
class StoreImportPolicy:
    chunk_rows: int = 25
    # A preparing step starts no new page after this long (it hands the rest to the next step).
    budget_seconds: float = 60.0
    # Bulk operations are polled after these delays (the last one repeats) …
    poll_delays: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 30.0)
    # … until this long has passed since the import was created.
    bulk_timeout: timedelta = timedelta(hours=6)
    task_timeout: timedelta = timedelta(minutes=9)
    max_attempts: int = 8


class PrepareImportTask(BaseModel):
    """Cloud Tasks payload: one preparing step of a store import."""

    model_config = ConfigDict(extra="forbid")

    client_id: str
    import_id: str
    step: int = Field(ge=0)


@dataclass
class StoreServices:
    """What preparing an import needs of the store side (the platform clients are built on demand)."""

    stores: StoreRepository
    cipher: CredentialCipher
    shopify: Callable[[], ShopifyAdmin]
    woocommerce: Callable[[], WooCommerceApi]
    policy: ConnectionPolicy


def _prepare_task(
    task: PrepareImportTask, policy: StoreImportPolicy, delay: float = 0.0, now: datetime | None = None
) -> TaskRequest:
    deadline = min(max(policy.task_timeout, MIN_DISPATCH_DEADLINE), MAX_DISPATCH_DEADLINE)
    return TaskRequest(
        target=WORKER_TARGET,
        path=PREPARE_PATH,
        payload=task,
        name=task_name("store-import", task.client_id, task.import_id, str(task.step)),
        schedule_time=(now + timedelta(seconds=delay)) if now is not None and delay > 0 else None,
        dispatch_deadline=deadline,
    )


def create_store_import(
    repos: CatalogRepositories,
    services: StoreServices,
    queue: TaskQueue,
    client_id: str,
    request: StoreImportRequest,
    policy: StoreImportPolicy,
    now: datetime,
) -> ImportDoc:
    """A store import in ``preparing`` and its first step queued (409 without a live connection)."""
    connection = live_connection(services.stores, client_id)
    doc = ImportDoc(
        id=new_id("imp"),
        client_id=client_id,
        source=ImportSource.STORE,
        status=ImportStatus.PREPARING,
        store={
            "connection_id": connection.id,
            "platform": connection.platform.value,
            "shop": connection.shop,
            "scope": request.scope.value,
            "category_id": request.category_id,
            "product_ids": request.product_ids,
        },
        fetch={"step": 0, "rows": 0, "chunks": 0},
        created_at=now,
        updated_at=now,
    )
    repos.imports.create(doc)
    services.stores.touch(client_id, {"last_import_id": doc.id, "last_import_at": now})
    queue.enqueue(_prepare_task(PrepareImportTask(client_id=client_id, import_id=doc.id, step=0), policy))
    return doc


# -- turning store products into drafts ------------------------------------------------------------


def _cut(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    text = text.strip()
    return text[:limit] if text else None


def _price(value: str | None) -> Decimal | None:
    if not value:
        return None
    try:
        price = Decimal(value).quantize(Decimal("0.01"))
    except (InvalidOperation, ValueError):
        return None
    return price if Decimal(0) <= price <= Decimal(100_000_000) else None


def store_row(product: StoreProduct, row_number: int, platform: StorePlatform, shop: str, now: datetime) -> RowResult:
    """One store product as the chunk engine's row: a product draft with its store link and images."""
    from shared.catalog.csv_parsing import (
        MAX_CATEGORY_CHARS,
        MAX_DESCRIPTION_CHARS,
        MAX_IMAGE_URLS,
        MAX_NAME_CHARS,
        MAX_SKU_CHARS,
        MAX_TAG_CHARS,
        MAX_TAGS,
        ProductDraft,
        RowProblem,
        RowResult,
    )

    name = _cut(product.title, MAX_NAME_CHARS)
    if name is None:
        problem = RowProblem(
            row_number=row_number, code="missing_name", message=f"store product {product.id} has no title"
        )
        return RowResult(draft=None, problems=(problem,))
    problems: list[RowProblem] = []
    sku = product.sku or next((variant.sku for variant in product.variants if variant.sku), None)
    price = _price(product.price or next((variant.price for variant in product.variants if variant.price), None))
    category = product.categories[0].name if product.categories else product.product_type
    images = [image for image in product.images if image.url][:MAX_IMAGE_URLS]
    if len(product.images) > MAX_IMAGE_URLS:
        problems.append(
            RowProblem(
                row_number=row_number,
                code="too_long",
                message=f"{len(product.images)} images: the first {MAX_IMAGE_URLS} are imported",
                severity="warning",
            )
        )
    tags = tuple(dict.fromkeys(tag.strip()[:MAX_TAG_CHARS] for tag in product.tags if tag.strip()))[:MAX_TAGS]
    link = StoreLink(
        platform=platform.value,
        shop=shop,
        product_id=product.id,
        handle=product.handle,
        vendor=product.vendor,
        product_type=product.product_type,
        status_in_store=product.status,
        categories=[category_ref.name for category_ref in product.categories],
        variants=[variant.model_dump(mode="json") for variant in product.variants[:100]],
        media_ids=[image.media_id for image in images],
        store_updated_at=product.updated_at,
        synced_at=now,
    )
    draft = ProductDraft(
        row_number=row_number,
        name=name,
        sku=_cut(sku, MAX_SKU_CHARS),
        description=_cut(product.description_html, MAX_DESCRIPTION_CHARS),
        category=_cut(category, MAX_CATEGORY_CHARS),
        price=price,
        tags=tags,
        image_urls=tuple(image.url for image in images),
        external_id=product.id,
        store=link,
        image_media_ids=tuple(image.media_id for image in images),
    )
    return RowResult(draft=draft, problems=tuple(problems))


# -- writing chunks and counting the preview -------------------------------------------------------


@dataclass
class _Writer:
    """Buffers rows into chunk files and counts what the preview shows."""

    repos: CatalogRepositories
    object_store: ObjectStore
    doc: ImportDoc
    platform: StorePlatform
    chunk_rows: int
    now: datetime
    rows: int = 0
    chunks: int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    _buffer: list[RowResult] = field(default_factory=list)

    @classmethod
    def resume(
        cls, repos: CatalogRepositories, object_store: ObjectStore, doc: ImportDoc, chunk_rows: int, now: datetime
    ) -> _Writer:
        fetch = doc.fetch
        platform = StorePlatform((doc.store or {})["platform"])
        stats = dict(fetch.get("stats") or {})
        return cls(
            repos,
            object_store,
            doc,
            platform,
            chunk_rows,
            now,
            int(fetch.get("rows", 0)),
            int(fetch.get("chunks", 0)),
            stats,
        )

    def add(self, products: Iterable[StoreProduct]) -> None:
        shop = str((self.doc.store or {})["shop"])
        for product in products:
            self.rows += 1
            result = store_row(product, self.rows, self.platform, shop, self.now)
            self._count(product, result)
            self._buffer.append(result)
            if len(self._buffer) >= self.chunk_rows:
                self.flush()

    def _count(self, product: StoreProduct, result: RowResult) -> None:
        stats = self.stats
        stats["products"] = stats.get("products", 0) + 1
        draft = result.draft
        if draft is None:
            stats["invalid"] = stats.get("invalid", 0) + 1
            return
        images = len(draft.image_urls)
        stats["images"] = stats.get("images", 0) + images
        for name, present in (
            ("with_description", bool(draft.description)),
            ("with_sku", bool(draft.sku)),
            ("with_images", images > 0),
            ("with_category", bool(draft.category)),
            ("with_price", draft.price is not None),
        ):
            if present:
                stats[name] = stats.get(name, 0) + 1
        categories: dict[str, list[int]] = stats.setdefault("categories", {})
        names = [ref.name for ref in product.categories] or [product.product_type or "(none)"]
        for name in names[:5]:
            key = name if name in categories or len(categories) < MAX_CATEGORIES else "(other)"
            counts = categories.setdefault(key, [0, 0])
            counts[0] += 1
            counts[1] += images

    def flush(self) -> None:
        if not self._buffer:
            return
        shop = str((self.doc.store or {})["shop"])
        store_ids = [
            result.draft.store.product_id
            for result in self._buffer
            if result.draft is not None and result.draft.store is not None
        ]
        if store_ids:
            client, platform = self.doc.client_id, self.platform.value
            derived = {store_product_id(client, platform, shop, store_id): store_id for store_id in store_ids}
            known = {derived[found] for found in self.repos.products.existing(client, list(derived))}
            known |= set(self.repos.products.linked_ids(client, platform, store_ids))
            self.stats["already_imported"] = self.stats.get("already_imported", 0) + len(known)
        write_chunk(self.object_store, self.doc.client_id, self.doc.id, self.chunks, self._buffer)
        self.chunks += 1
        self._buffer = []

    def fetch_state(self, **extra: Any) -> dict[str, Any]:
        return {**self.doc.fetch, "rows": self.rows, "chunks": self.chunks, "stats": self.stats, **extra}


def _preview(repos: CatalogRepositories, doc: ImportDoc, writer: _Writer) -> dict[str, Any]:
    stats = writer.stats
    products = int(stats.get("products", 0))
    valid = products - int(stats.get("invalid", 0))
    already = int(stats.get("already_imported", 0))
    usage = product_usage(repos.products, doc.client_id)
    new_products = max(0, valid - already)
    fits = min(new_products, usage.free)
    categories = sorted(
        (
            {"name": name, "products": counts[0], "images": counts[1]}
            for name, counts in stats.get("categories", {}).items()
        ),
        key=lambda entry: (-int(entry["products"]), str(entry["name"])),
    )
    return {
        "platform": (doc.store or {}).get("platform"),
        "shop": (doc.store or {}).get("shop"),
        "total_products": products,
        "total_images": int(stats.get("images", 0)),
        "invalid_products": int(stats.get("invalid", 0)),
        "categories": categories,
        "completeness": {
            name: int(stats.get(name, 0))
            for name in ("with_description", "with_sku", "with_images", "with_category", "with_price")
        },
        "slots": {
            "limit": usage.limit,
            "used": usage.used,
            "free": usage.free,
            "already_imported": already,
            "new_products": new_products,
            "cost_in_slots": new_products,
            "fit": fits,
            "over_limit": new_products - fits,
        },
    }


# -- preparing steps -------------------------------------------------------------------------------


def prepare_store_import(
    repos: CatalogRepositories,
    services: StoreServices,
    object_store: ObjectStore,
    queue: TaskQueue,
    task: PrepareImportTask,
    policy: StoreImportPolicy,
    clock: Callable[[], datetime],
    *,
    last_attempt: bool = False,
    monotonic: Callable[[], float] = time.monotonic,
) -> str:
    """Run one preparing step; returns what happened (for the log)."""
    loaded = repos.imports.load(task.client_id, task.import_id)
    if loaded is None:
        return "import not found: dropped"
    doc = loaded.value
    if doc.status is not ImportStatus.PREPARING or doc.store is None:
        return f"import is {doc.status.value}: nothing to prepare"
    if int(doc.fetch.get("step", 0)) != task.step:
        return f"step {task.step} was done before: nothing to do"
    now = clock()
    try:
        connection = live_connection(services.stores, task.client_id)
        if connection.id != doc.store.get("connection_id"):
            raise _Abandon("The store was disconnected or connected again since the import was created.")
        writer = _Writer.resume(repos, object_store, doc, policy.chunk_rows, now)
        with watching_authorization(services.stores, task.client_id, clock):
            if connection.platform is StorePlatform.SHOPIFY:
                outcome = _shopify_step(repos, services, connection, doc, writer, policy, clock)
            else:
                outcome = _woo_step(services, connection, doc, writer, policy, monotonic)
    except StoreUnavailable as error:
        if not last_attempt:
            raise RetryTask(f"the store is unavailable: {error.detail}") from error
        return _fail(repos, loaded, f"The store did not answer: {error.detail}", now)
    except _Abandon as error:
        return _fail(repos, loaded, str(error), now)
    except EpoxError as error:
        return _fail(repos, loaded, f"Reading the store's catalog failed: {error.detail}", now)
    if outcome.done:
        writer.flush()
        changes = {
            "status": ImportStatus.DRAFT.value,
            "fetch": writer.fetch_state(step=task.step + 1, done=True),
            "preview": _preview(repos, doc, writer),
            "progress": ImportProgress(total_rows=writer.rows, chunks_total=writer.chunks).model_dump(),
            "updated_at": now,
        }
        return _advance(repos, loaded, changes, f"catalog read: {writer.rows} products in {writer.chunks} chunks")
    writer.flush()
    changes = {"fetch": writer.fetch_state(step=task.step + 1, **outcome.state), "updated_at": now}
    result = _advance(repos, loaded, changes, outcome.note)
    next_task = PrepareImportTask(client_id=task.client_id, import_id=task.import_id, step=task.step + 1)
    queue.enqueue(_prepare_task(next_task, policy, outcome.delay, now))
    return result


class _Abandon(Exception):
    """The import cannot be prepared; the message says why (for the merchant)."""


@dataclass
class _Outcome:
    done: bool
    note: str = ""
    state: dict[str, Any] = field(default_factory=dict)
    delay: float = 0.0


def _advance(repos: CatalogRepositories, loaded: Any, changes: dict[str, Any], note: str) -> str:
    try:
        repos.imports.update_if_unchanged(loaded, changes)
    except StaleWrite:
        return "another delivery of this step finished first"
    return note


def _fail(repos: CatalogRepositories, loaded: Any, reason: str, now: datetime) -> str:
    changes = {"status": ImportStatus.FAILED.value, "failure": reason, "finished_at": now, "updated_at": now}
    logger.warning("store import %s failed while preparing: %s", loaded.value.id, reason)
    return _advance(repos, loaded, changes, f"failed: {reason}")


def _shopify_step(
    repos: CatalogRepositories,
    services: StoreServices,
    connection: StoreConnectionDoc,
    doc: ImportDoc,
    writer: _Writer,
    policy: StoreImportPolicy,
    clock: Callable[[], datetime],
) -> _Outcome:
    shopify = services.shopify()
    _, token = shopify_token(services.stores, shopify, services.cipher, connection.client_id, services.policy, clock)
    spec = doc.store or {}
    scope = StoreImportScope(spec.get("scope", "all"))
    if scope is StoreImportScope.PRODUCTS:
        ids = [str(product_id) for product_id in spec.get("product_ids") or []]
        writer.add(shopify.products_by_ids(connection.shop, token, ids))
        return _Outcome(done=True)
    operation_id = doc.fetch.get("bulk_id")
    if not operation_id:
        category = str(spec["category_id"]) if scope is StoreImportScope.CATEGORY else None
        operation = shopify.start_bulk_products(connection.shop, token, category)
        return _Outcome(
            done=False,
            note="bulk operation started",
            state={"bulk_id": operation.id, "polls": 0},
            delay=policy.poll_delays[0],
        )
    operation = shopify.bulk_operation(connection.shop, token, str(operation_id))
    polls = int(doc.fetch.get("polls", 0)) + 1
    if operation.status in (BulkStatus.CREATED, BulkStatus.RUNNING):
        if clock() - doc.created_at > policy.bulk_timeout:
            raise _Abandon("Shopify's bulk operation did not finish in time.")
        delay = policy.poll_delays[min(polls, len(policy.poll_delays) - 1)]
        return _Outcome(
            done=False, note=f"bulk operation {operation.status.value}", state={"polls": polls}, delay=delay
        )
    if operation.status is not BulkStatus.COMPLETED:
        raise _Abandon(
            f"Shopify's bulk operation ended {operation.status.value} ({operation.error_code or 'no code'})."
        )
    if operation.url:
        writer.add(shopify.stream_bulk_products(operation.url))
    return _Outcome(done=True)


def _woo_step(
    services: StoreServices,
    connection: StoreConnectionDoc,
    doc: ImportDoc,
    writer: _Writer,
    policy: StoreImportPolicy,
    monotonic: Callable[[], float],
) -> _Outcome:
    woo = services.woocommerce()
    keys = woo_keys(open_secrets(services.cipher, connection))
    spec = doc.store or {}
    scope = StoreImportScope(spec.get("scope", "all"))
    deadline = monotonic() + policy.budget_seconds
    page = int(doc.fetch.get("page", 1))
    while True:
        result = woo.products_page(
            connection.shop,
            keys,
            page=page,
            per_page=100,
            category=str(spec["category_id"]) if scope is StoreImportScope.CATEGORY else None,
            include=[str(i) for i in spec.get("product_ids") or []] if scope is StoreImportScope.PRODUCTS else None,
        )
        writer.add(result.products)
        if result.next_cursor is None:
            return _Outcome(done=True)
        page = int(result.next_cursor)
        if monotonic() >= deadline:
            return _Outcome(done=False, note=f"read up to page {page - 1}", state={"page": page})
