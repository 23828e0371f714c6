"""Products: create, read, update, delete, list with filters and cursor pagination.

Text search on name and SKU uses a ``search_tokens`` array of lower-case word prefixes kept on each
product (Firestore has no full-text search): the query narrows on the longest query word with
``array_contains`` and the remaining words are checked on the returned documents.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from shared.catalog.models import (
    ProductCreate,
    ProductDoc,
    ProductImageOut,
    ProductListQuery,
    ProductOut,
    ProductSource,
    ProductUpdate,
)
from shared.errors import NotFound
from shared.http.pagination import Page, decode_cursor, encode_cursor

if TYPE_CHECKING:
    from google.cloud.firestore import Client

    from shared.storage import ObjectStore

MAX_PREFIX = 20
_WORD = re.compile(r"[\w]+", re.UNICODE)


def new_id(prefix: str) -> str:
    """Random, URL-safe, sortable-enough ids such as ``prod_3kq9…``."""
    return f"{prefix}_{secrets.token_urlsafe(12).replace('-', 'a').replace('_', 'b')}"


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


def create_product(db: Client, client_id: str, data: ProductCreate, now: datetime) -> ProductDoc:
    doc = build_product(client_id, data, now)
    products_ref(db, client_id).document(doc.id).create(doc.model_dump(mode="python"))
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
    for _ in range(5):
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


def delete_product(db: Client, client_id: str, product_id: str) -> None:
    ref = products_ref(db, client_id).document(product_id)
    if not ref.get().exists:
        raise NotFound(f"No product {product_id}")
    # The product's assets stay in the asset library: they may have been paid for.
    ref.delete()


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
    from shared.http.pagination import InvalidCursor

    if cursor is None:
        return None
    values = decode_cursor(cursor)
    try:
        return {"created_at": datetime.fromisoformat(str(values["created_at"])), "id": str(values["id"])}
    except (KeyError, ValueError) as exc:
        raise InvalidCursor() from exc


def products_by_ids(db: Client, client_id: str, product_ids: Iterable[str]) -> dict[str, ProductDoc]:
    refs = [products_ref(db, client_id).document(pid) for pid in product_ids]
    found: dict[str, ProductDoc] = {}
    for snapshot in db.get_all(refs):
        if snapshot.exists:
            doc = ProductDoc.model_validate(snapshot.to_dict())
            found[doc.id] = doc
    return found
