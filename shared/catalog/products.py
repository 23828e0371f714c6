"""Products: create, read, update, delete, list with filters and cursor pagination.

Product slots: ``clients/{client}/usage/products`` counts the client's products and is changed in
the same atomic commit as every product create and delete, guarded by its ``update_time`` (an
optimistic precondition: concurrent writers re-read and retry, so the plan's limit holds exactly).
``create_products`` is the one way to add products (API, CSV, store imports); a client whose
counter does not exist yet gets it counted from its products on first need.

Text search on name and SKU uses a ``search_tokens`` array of lower-case word prefixes kept on each
product (Firestore has no full-text search): the query narrows on the longest query word with
``array_contains`` and the remaining words are checked on the returned documents.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pydantic import Field

from shared.catalog.models import (
    ProductCreate,
    ProductDoc,
    ProductImageOut,
    ProductListQuery,
    ProductOut,
    ProductSource,
    ProductUpdate,
    StoreLinkOut,
)
from shared.catalog.ports import ProductFilter, ProductRepository, StaleWrite
from shared.catalog.slots import ProductUsageDoc, SlotUsage, slot_limit_error, take_free
from shared.errors import Conflict, NotFound, UpstreamUnavailable
from shared.ids import new_id
from shared.pagination import Page, decode_cursor, encode_cursor
from shared.retry import CONTENDED_COMMIT, attempts
from shared.scheduled import ScheduledReport, isolated

if TYPE_CHECKING:
    from shared.storage import ObjectStore

logger = logging.getLogger("epox.catalog")

MAX_PREFIX = 20
_WORD = re.compile(r"[\w]+", re.UNICODE)

# A commit holds at most 500 writes (the counter plus the products) and 10 MiB: groups stay well under.
MAX_PRODUCTS_PER_COMMIT = 400
MAX_COMMIT_BYTES = 4 * 1024 * 1024


def search_tokens(name: str, sku: str | None) -> list[str]:
    """Every prefix (1..20 chars) of every word of the name and SKU, plus the whole SKU."""
    words = _WORD.findall(name.lower())
    if sku:
        words += _WORD.findall(sku.lower())
        words.append(sku.lower()[:MAX_PREFIX])
    tokens: set[str] = set()
    for word in words:
        for end in range(1, min(len(word), MAX_PREFIX) + 1):
            tokens.add(word[:end])
    return sorted(tokens)


def _query_words(q: str) -> list[str]:
    return [word[:MAX_PREFIX] for word in _WORD.findall(q.lower())]


def _matches(doc: ProductDoc, words: list[str]) -> bool:
    tokens = set(doc.search_tokens)
    return all(word in tokens for word in words)


def build_product(
    client_id: str,
    data: ProductCreate,
    now: datetime,
    *,
    product_id: str | None = None,
    source: ProductSource = ProductSource.MANUAL,
    import_id: str | None = None,
) -> ProductDoc:
    """The stored document for a new product (pure: no I/O)."""
    return ProductDoc(
        id=product_id or new_id("prod"),
        client_id=client_id,
        name=data.name,
        sku=data.sku,
        description=data.description,
        category=data.category,
        price=str(data.price) if data.price is not None else None,
        currency=data.currency,
        tags=data.tags,
        source=source,
        external_id=data.external_id,
        import_id=import_id,
        search_tokens=search_tokens(data.name, data.sku),
        created_at=now,
        updated_at=now,
    )


def to_out(doc: ProductDoc, store: ObjectStore, expires_in: int) -> ProductOut:
    images = [
        ProductImageOut(
            asset_id=image.asset_id,
            url=store.presigned_get(image.key, expires_in=expires_in),
            thumbnail_url=store.presigned_get(image.thumbnail_key, expires_in=expires_in),
            content_type=image.content_type,
            width=image.width,
            height=image.height,
        )
        for image in doc.images
    ]
    return ProductOut(
        id=doc.id,
        name=doc.name,
        sku=doc.sku,
        description=doc.description,
        category=doc.category,
        price=Decimal(doc.price) if doc.price is not None else None,
        currency=doc.currency,
        tags=doc.tags,
        images=images,
        source=doc.source,
        external_id=doc.external_id,
        store=_store_link_out(doc),
        created_at=doc.created_at,
        updated_at=doc.updated_at,
    )


def _store_link_out(doc: ProductDoc) -> StoreLinkOut | None:
    link = doc.store
    if link is None:
        return None
    return StoreLinkOut(
        platform=link.platform,
        shop=link.shop,
        product_id=link.product_id,
        status=link.status,
        handle=link.handle,
        vendor=link.vendor,
        product_type=link.product_type,
        categories=link.categories,
        variants=link.variants,
        store_updated_at=link.store_updated_at,
    )


# -- product slots --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreatedProducts:
    """What ``create_products`` did with each document it was given."""

    created: list[ProductDoc]  # new: each took a slot
    existing: list[str]  # ids already stored (a redelivery): no slot taken
    refused: list[ProductDoc]  # no free slot was left for them
    usage: SlotUsage  # after this call


def recount_product_usage(
    products: ProductRepository, client_id: str, now: datetime, *, only_if_missing: bool = False
) -> int:
    """Set the counter to the real number of products; returns it. ``only_if_missing``: the lazy
    backfill of a client that has no counter yet (one that exists is left as it is).

    Race-free without a transaction: the count is taken after the counter was read and the write is
    guarded by that read (created when there was none, else conditioned on its version), and every
    product create/delete changes the counter, so any of them in between makes this write stale.
    """
    for _attempt in attempts(CONTENDED_COMMIT, "product counter recount"):
        current = products.usage(client_id)
        if only_if_missing and current is not None:
            return current.value.used  # another writer backfilled it
        count = products.count(client_id)
        doc = ProductUsageDoc(used=count, counted=count, counted_at=now, updated_at=now)
        try:
            products.save_usage(client_id, doc, current.version if current is not None else None)
        except StaleWrite:
            continue  # another writer moved the counter since it was read: read again
        return count
    raise UpstreamUnavailable("The product counter is busy; try again", retry_after=1)


class UsageRecountReport(ScheduledReport):
    """``/jobs/recount-product-usage``: the counters that did not match the real product count."""

    clients_checked: int = 0
    corrected: dict[str, dict[str, int | None]] = Field(default_factory=dict)  # client → {"was", "now"}


RECOUNT_JOB = "recount-product-usage"


def recount_every_client(products: ProductRepository, now: datetime) -> UsageRecountReport:
    """Daily repair of every client's product counter from a real count (each client on its own).

    Writers that bypass the counter (an instance still on an older release during a deploy, a
    manual fix in the console) make it drift; a drift found is corrected and logged as a warning.
    """
    report = UsageRecountReport()
    for client_id in products.client_ids():
        report.clients_checked += 1
        with isolated(RECOUNT_JOB, client_id, report.failed):
            before = products.usage(client_id)
            was = before.value.used if before is not None else None
            count = recount_product_usage(products, client_id, now)
            if was != count:
                report.corrected[client_id] = {"was": was, "now": count}
                if was is not None:
                    logger.warning("product counter of client %s was %s, counted %s", client_id, was, count)
    return report


def product_usage(products: ProductRepository, client_id: str) -> SlotUsage:
    """Slots and products used (read only: a client without a counter yet is counted, not backfilled)."""
    read = products.read_slots(client_id, [])
    used = read.usage.value if read.usage is not None else products.count(client_id)
    return SlotUsage(limit=read.limit, used=used)


def create_products(
    products: ProductRepository, client_id: str, docs: Sequence[ProductDoc], now: datetime, *, all_or_nothing: bool
) -> CreatedProducts:
    """Create products and take their slots in one atomic write per group of products.

    Products whose id is already stored are not new (a redelivered import creates nothing twice)
    and take no slot. ``all_or_nothing``: raise 402 ``product_slot_limit`` unless every new product
    fits; otherwise the new products fill the free slots in the given order and the rest are refused.
    """
    groups = _commit_groups(docs)
    if all_or_nothing and len(groups) > 1:
        raise ValueError("all_or_nothing products must fit one commit")
    created: list[ProductDoc] = []
    existing: list[str] = []
    refused: list[ProductDoc] = []
    usage = product_usage(products, client_id) if not docs else SlotUsage(limit=0, used=0)
    for group in groups:
        done = _create_group(products, client_id, group, now, all_or_nothing)
        created += done.created
        existing += done.existing
        refused += done.refused
        usage = done.usage
    return CreatedProducts(created=created, existing=existing, refused=refused, usage=usage)


def _commit_groups(docs: Sequence[ProductDoc]) -> list[list[ProductDoc]]:
    """Consecutive groups of products that each fit one commit (a rough size estimate suffices)."""
    groups: list[list[ProductDoc]] = []
    size = 0
    for doc in docs:
        doc_size = len(doc.model_dump_json())
        if not groups or len(groups[-1]) >= MAX_PRODUCTS_PER_COMMIT or size + doc_size > MAX_COMMIT_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(doc)
        size += doc_size
    return groups


def _create_group(
    products: ProductRepository, client_id: str, docs: Sequence[ProductDoc], now: datetime, all_or_nothing: bool
) -> CreatedProducts:
    for _attempt in attempts(CONTENDED_COMMIT, "product slots"):
        read = products.read_slots(client_id, [doc.id for doc in docs])
        if read.usage is None:
            recount_product_usage(products, client_id, now, only_if_missing=True)  # lazy backfill; then read again
            continue
        usage = SlotUsage(limit=read.limit, used=read.usage.value)
        new = [doc for doc in dict((doc.id, doc) for doc in docs).values() if doc.id not in read.stored]
        taken, refused = take_free(usage, new)
        if all_or_nothing and refused:
            raise slot_limit_error(usage)
        existing = [doc.id for doc in docs if doc.id in read.stored]
        if not taken:
            return CreatedProducts(created=[], existing=existing, refused=refused, usage=usage)
        try:
            # Nothing is written on a conflict: the counter moved, a concurrent delivery created one of
            # these products, or contention. Read again.
            products.create_taking_slots(client_id, taken, read.usage, now)
        except StaleWrite:
            continue
        after = SlotUsage(limit=usage.limit, used=usage.used + len(taken))
        return CreatedProducts(created=taken, existing=existing, refused=refused, usage=after)
    raise UpstreamUnavailable("Product slots are busy; try again", retry_after=1)


def create_product(products: ProductRepository, client_id: str, data: ProductCreate, now: datetime) -> ProductDoc:
    """One new product in a free slot, or 402 ``product_slot_limit``."""
    doc = build_product(client_id, data, now)
    create_products(products, client_id, [doc], now, all_or_nothing=True)
    return doc


def get_product(products: ProductRepository, client_id: str, product_id: str) -> ProductDoc:
    """The product, or 404 — also for another client's id, which lives in another subtree."""
    doc = products.get(client_id, product_id)
    if doc is None:
        raise NotFound(f"No product {product_id}")
    return doc


def update_product(
    products: ProductRepository, client_id: str, product_id: str, data: ProductUpdate, now: datetime
) -> ProductDoc:
    """Change the fields sent; guarded by the version read, so a concurrent edit of name/SKU cannot
    leave stale search tokens."""
    for _attempt in attempts(CONTENDED_COMMIT, "product update"):
        loaded = products.load(client_id, product_id)
        if loaded is None:
            raise NotFound(f"No product {product_id}")
        current = loaded.value
        changes: dict[str, Any] = {}
        for field in data.model_fields_set:
            value = getattr(data, field)
            if field == "name" and value is None:
                continue  # a product always has a name; null is not a way to clear it
            changes[field] = str(value) if field == "price" and value is not None else value
        merged = current.model_copy(update=changes)
        changes["search_tokens"] = search_tokens(merged.name, merged.sku)
        changes["updated_at"] = now
        try:
            products.update(client_id, product_id, changes, loaded.version)
        except StaleWrite:
            continue
        return merged.model_copy(update=changes)
    raise Conflict("The product changed concurrently; try again")


def delete_product(products: ProductRepository, client_id: str, product_id: str, now: datetime) -> None:
    """Delete the product and free its slot in one write (404 when it is not there).

    The product's assets stay in the asset library: they may have been paid for."""
    for _attempt in attempts(CONTENDED_COMMIT, "product delete"):
        read = products.read_slots(client_id, [product_id])
        if product_id not in read.stored:
            raise NotFound(f"No product {product_id}")
        if read.usage is None:
            recount_product_usage(products, client_id, now, only_if_missing=True)
            continue
        try:
            products.delete_freeing_slot(client_id, product_id, read.usage, now)
        except StaleWrite:
            continue
        return
    raise UpstreamUnavailable("Product slots are busy; try again", retry_after=1)


def list_products(products: ProductRepository, client_id: str, query: ProductListQuery) -> Page[ProductDoc]:
    """A page of products, newest first, filtered by category, source and a text search."""
    words = _query_words(query.q) if query.q else []
    where = ProductFilter(category=query.category, source=query.source, token=max(words, key=len) if words else None)
    return _scan_pages(products, client_id, where, query, lambda doc: _matches(doc, words))


def _scan_pages(
    products: ProductRepository,
    client_id: str,
    where: ProductFilter,
    query: ProductListQuery,
    keep: Callable[[ProductDoc], bool],
) -> Page[ProductDoc]:
    """Read batches until the page is full, so post-filtering never yields short pages mid-list."""
    position = _cursor_position(query.cursor)
    items: list[ProductDoc] = []
    batch_size = max(query.limit, 20)
    for _ in range(50):
        docs = products.scan(client_id, where, position, batch_size)
        for index, doc in enumerate(docs):
            position = (doc.created_at, doc.id)
            if keep(doc):
                items.append(doc)
                if len(items) == query.limit:
                    # No cursor when this batch was the end of the list and nothing after doc matches.
                    more = len(docs) == batch_size or any(keep(rest) for rest in docs[index + 1 :])
                    return Page(items=items, next_cursor=_cursor_for(doc) if more else None)
        if len(docs) < batch_size:
            return Page(items=items, next_cursor=None)
    # Scanned a lot without filling the page: hand back what we have and where to go on.
    return Page(items=items, next_cursor=_cursor_for_position(position))


def _cursor_for(doc: ProductDoc) -> str:
    return encode_cursor({"created_at": doc.created_at.isoformat(), "id": doc.id})


def _cursor_for_position(position: tuple[datetime, str] | None) -> str | None:
    if position is None:
        return None
    return encode_cursor({"created_at": position[0].isoformat(), "id": position[1]})


def _cursor_position(cursor: str | None) -> tuple[datetime, str] | None:
    from shared.pagination import cursor_datetime, cursor_str

    if cursor is None:
        return None
    values = decode_cursor(cursor)
    return cursor_datetime(values, "created_at"), cursor_str(values, "id")


def products_by_ids(products: ProductRepository, client_id: str, product_ids: Iterable[str]) -> dict[str, ProductDoc]:
    """The stored products among ``product_ids``, by id."""
    return products.get_many(client_id, product_ids)
