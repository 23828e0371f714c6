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

from pydantic import BaseModel, ConfigDict, Field

from shared.catalog.models import (
    ProductCreate,
    ProductDoc,
    ProductImageOut,
    ProductListQuery,
    ProductOut,
    ProductSource,
    ProductUpdate,
)
from shared.errors import EpoxError, NotFound, UpstreamUnavailable
from shared.ids import new_id
from shared.pagination import Page, decode_cursor, encode_cursor
from shared.retry import CONTENDED_COMMIT, attempts
from shared.scheduled import ScheduledReport, isolated

if TYPE_CHECKING:
    from google.cloud.firestore import Client

    from shared.storage import ObjectStore

logger = logging.getLogger("epox.catalog")

MAX_PREFIX = 20
_WORD = re.compile(r"[\w]+", re.UNICODE)

# A commit holds at most 500 writes (the counter plus the products) and 10 MiB: groups stay well under.
MAX_PRODUCTS_PER_COMMIT = 400
MAX_COMMIT_BYTES = 4 * 1024 * 1024


def products_ref(db: Client, client_id: str) -> Any:
    return db.collection("clients").document(client_id).collection("products")


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
        created_at=doc.created_at,
        updated_at=doc.updated_at,
    )


# -- product slots --------------------------------------------------------------------------------


class ProductUsageDoc(BaseModel):
    """``clients/{client}/usage/products``: products the client has (what its slots are measured on)."""

    model_config = ConfigDict(extra="ignore")

    used: int = Field(ge=0)
    counted: int | None = None  # what the last count of the products found (the lazy backfill)
    counted_at: datetime | None = None
    updated_at: datetime


@dataclass(frozen=True)
class SlotUsage:
    """The plan's slots and how many are used; ``used`` may exceed ``limit`` after a downgrade."""

    limit: int
    used: int

    @property
    def free(self) -> int:
        return max(0, self.limit - self.used)


@dataclass(frozen=True)
class CreatedProducts:
    """What ``create_products`` did with each document it was given."""

    created: list[ProductDoc]  # new: each took a slot
    existing: list[str]  # ids already stored (a redelivery): no slot taken
    refused: list[ProductDoc]  # no free slot was left for them
    usage: SlotUsage  # after this call


class _SlotConflict(Exception):
    """Another writer changed the counter or the products since they were read: read again."""


def usage_ref(db: Client, client_id: str) -> Any:
    return db.collection("clients").document(client_id).collection("usage").document("products")


def _client_ref(db: Client, client_id: str) -> Any:
    return db.collection("clients").document(client_id)


def _slot_limit(client_snapshot: Any) -> int:
    from shared.billing.models import BillingState

    data = (client_snapshot.to_dict() or {}) if client_snapshot.exists else {}
    return BillingState.model_validate(data.get("billing") or {}).product_slots


def _count_products(db: Client, client_id: str) -> int:
    return int(products_ref(db, client_id).count().get()[0][0].value)


def recount_product_usage(db: Client, client_id: str, now: datetime, *, only_if_missing: bool = False) -> int:
    """Set the counter to the real number of products; returns it. ``only_if_missing``: the lazy
    backfill of a client that has no counter yet (one that exists is left as it is).

    Race-free without a transaction: the count is taken after the counter was read and the write is
    guarded by that read (``create`` when there was none, else its ``update_time``), and every
    product create/delete changes the counter, so any of them in between makes this write fail.
    """
    from google.api_core.exceptions import AlreadyExists, FailedPrecondition
    from google.api_core.exceptions import NotFound as GNotFound

    ref = usage_ref(db, client_id)
    for _attempt in attempts(CONTENDED_COMMIT, "product counter recount"):
        snapshot = ref.get()
        if only_if_missing and snapshot.exists:
            return ProductUsageDoc.model_validate(snapshot.to_dict()).used  # another writer backfilled it
        count = _count_products(db, client_id)
        doc = ProductUsageDoc(used=count, counted=count, counted_at=now, updated_at=now).model_dump(mode="python")
        try:
            if snapshot.exists:
                ref.update(doc, option=db.write_option(last_update_time=snapshot.update_time))
            else:
                ref.create(doc)
        except (AlreadyExists, FailedPrecondition, GNotFound):
            continue  # another writer moved the counter since it was read: read again
        return count
    raise UpstreamUnavailable("The product counter is busy; try again", retry_after=1)


class UsageRecountReport(ScheduledReport):
    """``/jobs/recount-product-usage``: the counters that did not match the real product count."""

    clients_checked: int = 0
    corrected: dict[str, dict[str, int | None]] = Field(default_factory=dict)  # client → {"was", "now"}


RECOUNT_JOB = "recount-product-usage"


def recount_every_client(db: Client, now: datetime) -> UsageRecountReport:
    """Daily repair of every client's product counter from a real count (each client on its own).

    Writers that bypass the counter (an instance still on an older release during a deploy, a
    manual fix in the console) make it drift; a drift found is corrected and logged as a warning.
    """
    report = UsageRecountReport()
    for snapshot in db.collection("clients").select([]).stream():  # the ids only
        client_id = snapshot.id
        report.clients_checked += 1
        with isolated(RECOUNT_JOB, client_id, report.failed):
            before = usage_ref(db, client_id).get()
            was = ProductUsageDoc.model_validate(before.to_dict()).used if before.exists else None
            count = recount_product_usage(db, client_id, now)
            if was != count:
                report.corrected[client_id] = {"was": was, "now": count}
                if was is not None:
                    logger.warning("product counter of client %s was %s, counted %s", client_id, was, count)
    return report


def product_usage(db: Client, client_id: str) -> SlotUsage:
    """Slots and products used (read only: a client without a counter yet is counted, not backfilled)."""
    usage_snapshot, client_snapshot = _get_all(db, [usage_ref(db, client_id), _client_ref(db, client_id)])
    if usage_snapshot.exists:
        used = ProductUsageDoc.model_validate(usage_snapshot.to_dict()).used
    else:
        used = _count_products(db, client_id)
    return SlotUsage(limit=_slot_limit(client_snapshot), used=used)


def _get_all(db: Client, refs: list[Any]) -> list[Any]:
    """Snapshots in the order of ``refs`` (``get_all`` answers in any order)."""
    by_path = {snapshot.reference.path: snapshot for snapshot in db.get_all(refs)}
    return [by_path[ref.path] for ref in refs]


def _commit(batch: Any) -> None:
    from google.api_core.exceptions import Aborted, AlreadyExists, FailedPrecondition
    from google.api_core.exceptions import NotFound as GNotFound

    try:
        batch.commit()
    except (FailedPrecondition, GNotFound, Aborted, AlreadyExists) as exc:
        # Nothing was written. FailedPrecondition: the counter moved; AlreadyExists: a concurrent
        # delivery created one of these products; NotFound: a product went away; Aborted: contention.
        raise _SlotConflict() from exc


def slot_limit_error(usage: SlotUsage) -> EpoxError:
    from shared.billing.service import ProductSlotLimit

    return ProductSlotLimit(
        f"Your plan has {usage.limit} product slots and {usage.used} are used",
        limit=usage.limit,
        used=usage.used,
        how_to_upgrade="Choose a larger plan in Billing (Starter 100, Growth 500, Pro 1,000, Scale 5,000 slots).",
    )


def create_products(
    db: Client, client_id: str, docs: Sequence[ProductDoc], now: datetime, *, all_or_nothing: bool
) -> CreatedProducts:
    """Create products and take their slots in one atomic commit per group of products.

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
    usage = product_usage(db, client_id) if not docs else SlotUsage(limit=0, used=0)
    for group in groups:
        done = _create_group(db, client_id, group, now, all_or_nothing)
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
    db: Client, client_id: str, docs: Sequence[ProductDoc], now: datetime, all_or_nothing: bool
) -> CreatedProducts:
    counter = usage_ref(db, client_id)
    refs = [products_ref(db, client_id).document(doc.id) for doc in docs]
    for _attempt in attempts(CONTENDED_COMMIT, "product slots"):
        usage_snapshot, client_snapshot, *product_snapshots = _get_all(db, [counter, _client_ref(db, client_id), *refs])
        if not usage_snapshot.exists:
            recount_product_usage(db, client_id, now, only_if_missing=True)  # lazy backfill; then read again
            continue
        usage = SlotUsage(
            limit=_slot_limit(client_snapshot), used=ProductUsageDoc.model_validate(usage_snapshot.to_dict()).used
        )
        stored = {snapshot.id for snapshot in product_snapshots if snapshot.exists}
        new = [doc for doc in dict((doc.id, doc) for doc in docs).values() if doc.id not in stored]
        taken, refused = new[: usage.free], new[usage.free :]
        if all_or_nothing and refused:
            raise slot_limit_error(usage)
        existing = [doc.id for doc in docs if doc.id in stored]
        if not taken:
            return CreatedProducts(created=[], existing=existing, refused=refused, usage=usage)
        batch = db.batch()
        batch.update(
            counter,
            {"used": usage.used + len(taken), "updated_at": now},
            option=db.write_option(last_update_time=usage_snapshot.update_time),
        )
        for doc in taken:
            batch.create(products_ref(db, client_id).document(doc.id), doc.model_dump(mode="python"))
        try:
            _commit(batch)
        except _SlotConflict:
            continue
        after = SlotUsage(limit=usage.limit, used=usage.used + len(taken))
        return CreatedProducts(created=taken, existing=existing, refused=refused, usage=after)
    raise UpstreamUnavailable("Product slots are busy; try again", retry_after=1)


def create_product(db: Client, client_id: str, data: ProductCreate, now: datetime) -> ProductDoc:
    """One new product in a free slot, or 402 ``product_slot_limit``."""
    doc = build_product(client_id, data, now)
    create_products(db, client_id, [doc], now, all_or_nothing=True)
    return doc


def get_product(db: Client, client_id: str, product_id: str) -> ProductDoc:
    """The product, or 404 — also for another client's id, which lives in another subtree."""
    snapshot = products_ref(db, client_id).document(product_id).get()
    if not snapshot.exists:
        raise NotFound(f"No product {product_id}")
    return ProductDoc.model_validate(snapshot.to_dict())


def update_product(db: Client, client_id: str, product_id: str, data: ProductUpdate, now: datetime) -> ProductDoc:
    from google.api_core.exceptions import FailedPrecondition
    from google.api_core.exceptions import NotFound as GNotFound

    ref = products_ref(db, client_id).document(product_id)
    for _attempt in attempts(CONTENDED_COMMIT, "product update"):
        snapshot = ref.get()
        if not snapshot.exists:
            raise NotFound(f"No product {product_id}")
        current = ProductDoc.model_validate(snapshot.to_dict())
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
            # Guarded by update_time so a concurrent edit of name/SKU cannot leave stale tokens.
            ref.update(changes, option=db.write_option(last_update_time=snapshot.update_time))
        except (FailedPrecondition, GNotFound):
            continue
        return merged.model_copy(update=changes)
    from shared.errors import Conflict

    raise Conflict("The product changed concurrently; try again")


def delete_product(db: Client, client_id: str, product_id: str, now: datetime) -> None:
    """Delete the product and free its slot in one commit (404 when it is not there)."""
    ref = products_ref(db, client_id).document(product_id)
    counter = usage_ref(db, client_id)
    for _attempt in attempts(CONTENDED_COMMIT, "product delete"):
        product_snapshot, usage_snapshot = _get_all(db, [ref, counter])
        if not product_snapshot.exists:
            raise NotFound(f"No product {product_id}")
        if not usage_snapshot.exists:
            recount_product_usage(db, client_id, now, only_if_missing=True)
            continue
        used = ProductUsageDoc.model_validate(usage_snapshot.to_dict()).used
        batch = db.batch()
        # The product's assets stay in the asset library: they may have been paid for.
        batch.delete(ref, option=db.write_option(exists=True))  # a concurrent delete frees the slot once
        batch.update(
            counter,
            {"used": max(0, used - 1), "updated_at": now},
            option=db.write_option(last_update_time=usage_snapshot.update_time),
        )
        try:
            _commit(batch)
        except _SlotConflict:
            continue
        return
    raise UpstreamUnavailable("Product slots are busy; try again", retry_after=1)


def list_products(db: Client, client_id: str, query: ProductListQuery) -> Page[ProductDoc]:
    from google.cloud.firestore import FieldFilter, Query

    base = products_ref(db, client_id)
    if query.category:
        base = base.where(filter=FieldFilter("category", "==", query.category))
    if query.source:
        base = base.where(filter=FieldFilter("source", "==", query.source.value))
    words = _query_words(query.q) if query.q else []
    if words:
        base = base.where(filter=FieldFilter("search_tokens", "array_contains", max(words, key=len)))
    base = base.order_by("created_at", direction=Query.DESCENDING).order_by("id", direction=Query.DESCENDING)
    return _scan_pages(base, query, lambda doc: _matches(doc, words))


def _scan_pages(base: Any, query: ProductListQuery, keep: Callable[[ProductDoc], bool]) -> Page[ProductDoc]:
    """Read batches until the page is full, so post-filtering never yields short pages mid-list."""
    position = _cursor_position(query.cursor)
    items: list[ProductDoc] = []
    batch_size = max(query.limit, 20)
    for _ in range(50):
        batch_query = base.limit(batch_size)
        if position is not None:
            batch_query = batch_query.start_after(position)
        docs = [ProductDoc.model_validate(s.to_dict()) for s in batch_query.stream()]
        for index, doc in enumerate(docs):
            position = {"created_at": doc.created_at, "id": doc.id}
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


def _cursor_for_position(position: dict[str, Any] | None) -> str | None:
    if position is None:
        return None
    return encode_cursor({"created_at": position["created_at"].isoformat(), "id": position["id"]})


def _cursor_position(cursor: str | None) -> dict[str, Any] | None:
    from shared.pagination import cursor_datetime, cursor_str

    if cursor is None:
        return None
    values = decode_cursor(cursor)
    return {"created_at": cursor_datetime(values, "created_at"), "id": cursor_str(values, "id")}


def products_by_ids(db: Client, client_id: str, product_ids: Iterable[str]) -> dict[str, ProductDoc]:
    refs = [products_ref(db, client_id).document(pid) for pid in product_ids]
    found: dict[str, ProductDoc] = {}
    for snapshot in db.get_all(refs):
        if snapshot.exists:
            doc = ProductDoc.model_validate(snapshot.to_dict())
            found[doc.id] = doc
    return found
