"""In-memory fakes of the catalog's ports: real subclasses, with the adapters' semantics (versions
checked on guarded writes, creates that fail on existing documents, the same exceptions)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel

from shared.catalog.library import approval_event
from shared.catalog.models import (
    AssetDoc,
    AssetRevision,
    ImportDoc,
    ImportStatus,
    ProductDoc,
    ProductImage,
    UploadDoc,
    UploadStatus,
)
from shared.catalog.ports import (
    ASSET_EQUALITY_FILTERS,
    AssetExists,
    AssetFilter,
    AssetRepository,
    CatalogRepositories,
    DocumentTooLarge,
    Found,
    ImportRepository,
    ItemGuard,
    ProductFilter,
    ProductGone,
    ProductRepository,
    RevisionConflict,
    SlotsRead,
    StaleWrite,
    UploadRepository,
    Versioned,
)
from shared.catalog.slots import ProductUsageDoc, limit_from_billing
from shared.errors import NotFound
from shared.events.model import DomainEvent

_versions = itertools.count(1)
M = TypeVar("M", bound=BaseModel)


def _changed(doc: M, changes: dict[str, Any]) -> M:
    """The document with ``changes`` applied as stored values (validated, as a read would give them)."""
    return type(doc).model_validate({**doc.model_dump(), **changes})


def _newest_first(docs: Iterable[Any], after: tuple[datetime, str] | None, limit: int) -> list[Any]:
    ordered = sorted(docs, key=lambda d: (d.created_at, d.id), reverse=True)
    if after is not None:
        ordered = [d for d in ordered if (d.created_at, d.id) < after]
    return ordered[:limit]


class InMemoryProductRepository(ProductRepository):
    """Products, counters and billing states per client; every write bumps the document's version."""

    def __init__(self) -> None:
        self.products: dict[str, dict[str, tuple[ProductDoc, int]]] = {}
        self.counters: dict[str, tuple[ProductUsageDoc, int]] = {}
        self.billing: dict[str, dict[str, Any]] = {}  # client -> its stored billing state
        self.before_write: list[Any] = []  # hooks run before a guarded write: tests interleave writers

    def _of(self, client_id: str) -> dict[str, tuple[ProductDoc, int]]:
        return self.products.setdefault(client_id, {})

    def _interleave(self) -> None:
        while self.before_write:
            self.before_write.pop(0)()

    def get(self, client_id: str, product_id: str) -> ProductDoc | None:
        entry = self._of(client_id).get(product_id)
        return entry[0] if entry else None

    def get_many(self, client_id: str, product_ids: Iterable[str]) -> dict[str, ProductDoc]:
        return {pid: entry[0] for pid in product_ids if (entry := self._of(client_id).get(pid))}

    def existing(self, client_id: str, product_ids: Iterable[str]) -> set[str]:
        return {pid for pid in product_ids if pid in self._of(client_id)}

    def scan(
        self, client_id: str, where: ProductFilter, after: tuple[datetime, str] | None, limit: int
    ) -> list[ProductDoc]:
        docs = [
            doc
            for doc, _ in self._of(client_id).values()
            if (where.category is None or doc.category == where.category)
            and (where.source is None or doc.source == where.source)
            and (where.token is None or where.token in doc.search_tokens)
        ]
        return _newest_first(docs, after, limit)

    def load(self, client_id: str, product_id: str) -> Versioned[ProductDoc] | None:
        entry = self._of(client_id).get(product_id)
        return Versioned(entry[0], entry[1]) if entry else None

    def update(self, client_id: str, product_id: str, changes: dict[str, Any], version: Any) -> None:
        self._interleave()
        entry = self._of(client_id).get(product_id)
        if entry is None or entry[1] != version:
            raise StaleWrite()
        self._of(client_id)[product_id] = (_changed(entry[0], changes), next(_versions))

    def find_linked(self, client_id: str, platform: str, store_product_id: str) -> ProductDoc | None:
        for doc, _ in self._of(client_id).values():
            if doc.store is not None and doc.store.platform == platform and doc.store.product_id == store_product_id:
                return doc
        return None

    def linked(self, client_id: str, limit: int) -> list[ProductDoc]:
        docs = [doc for doc, _ in self._of(client_id).values() if doc.store and doc.store.status.value == "linked"]
        return docs[:limit]

    def linked_ids(self, client_id: str, platform: str, store_product_ids: Sequence[str]) -> dict[str, str]:
        wanted = set(store_product_ids)
        found: dict[str, str] = {}
        for doc, _ in self._of(client_id).values():
            if doc.store is not None and doc.store.platform == platform and doc.store.product_id in wanted:
                found.setdefault(doc.store.product_id, doc.id)
        return found

    def from_shop(self, client_id: str, shop: str, limit: int) -> list[ProductDoc]:
        return [doc for doc, _ in self._of(client_id).values() if doc.store and doc.store.shop == shop][:limit]

    def add_image(self, client_id: str, product_id: str, image: ProductImage, now: datetime) -> None:
        entry = self._of(client_id).get(product_id)
        if entry is None:
            raise NotFound(f"No product {product_id}")
        updated = entry[0].model_copy(update={"images": [*entry[0].images, image], "updated_at": now})
        self._of(client_id)[product_id] = (updated, next(_versions))

    def read_slots(self, client_id: str, product_ids: Sequence[str]) -> SlotsRead:
        counter = self.counters.get(client_id)
        return SlotsRead(
            usage=Versioned(counter[0].used, counter[1]) if counter else None,
            limit=self.slot_limit(client_id),
            stored=self.existing(client_id, product_ids),
        )

    def _check_counter(self, client_id: str, used: Versioned[int]) -> ProductUsageDoc:
        counter = self.counters.get(client_id)
        if counter is None or counter[1] != used.version:
            raise StaleWrite()
        return counter[0]

    def create_taking_slots(
        self, client_id: str, docs: Sequence[ProductDoc], used: Versioned[int], now: datetime
    ) -> None:
        self._interleave()
        counter = self._check_counter(client_id, used)
        if any(doc.id in self._of(client_id) for doc in docs):
            raise StaleWrite()
        for doc in docs:
            self._of(client_id)[doc.id] = (doc, next(_versions))
        changed = counter.model_copy(update={"used": used.value + len(docs), "updated_at": now})
        self.counters[client_id] = (changed, next(_versions))

    def delete_freeing_slot(self, client_id: str, product_id: str, used: Versioned[int], now: datetime) -> None:
        self._interleave()
        counter = self._check_counter(client_id, used)
        if product_id not in self._of(client_id):
            raise StaleWrite()
        del self._of(client_id)[product_id]
        changed = counter.model_copy(update={"used": max(0, used.value - 1), "updated_at": now})
        self.counters[client_id] = (changed, next(_versions))

    def count(self, client_id: str) -> int:
        return len(self._of(client_id))

    def usage(self, client_id: str) -> Versioned[ProductUsageDoc] | None:
        counter = self.counters.get(client_id)
        return Versioned(counter[0], counter[1]) if counter else None

    def save_usage(self, client_id: str, doc: ProductUsageDoc, version: Any | None) -> None:
        self._interleave()
        counter = self.counters.get(client_id)
        if (counter is None) != (version is None) or (counter is not None and counter[1] != version):
            raise StaleWrite()
        self.counters[client_id] = (doc, next(_versions))

    def slot_limit(self, client_id: str) -> int:
        return limit_from_billing(self.billing.get(client_id))

    def client_ids(self) -> Iterator[str]:
        yield from sorted(set(self.products) | set(self.counters) | set(self.billing))


class InMemoryAssetRepository(AssetRepository):
    """Assets with their revisions; attaching an image or a revision reaches into the products fake."""

    def __init__(self, products: InMemoryProductRepository) -> None:
        self.product_store = products
        self.assets: dict[str, dict[str, AssetDoc]] = {}
        self.stored_revisions: dict[tuple[str, str], dict[int, AssetRevision]] = {}
        self.before_write: list[Any] = []  # hooks run before an atomic write: tests interleave writers
        self.events: list[DomainEvent] = []  # the outbox: written with the change
        self.event_seq: dict[tuple[str, str], int] = {}

    def _of(self, client_id: str) -> dict[str, AssetDoc]:
        return self.assets.setdefault(client_id, {})

    def _interleave(self) -> None:
        while self.before_write:
            self.before_write.pop(0)()

    def get(self, client_id: str, asset_id: str) -> AssetDoc | None:
        return self._of(client_id).get(asset_id)

    def get_many(self, client_id: str, asset_ids: Iterable[str]) -> dict[str, AssetDoc]:
        return {aid: doc for aid in asset_ids if (doc := self._of(client_id).get(aid))}

    def existing(self, client_id: str, asset_ids: Iterable[str]) -> set[str]:
        return {aid for aid in asset_ids if aid in self._of(client_id)}

    def scan(
        self, client_id: str, where: AssetFilter, after: tuple[datetime, str] | None, limit: int
    ) -> list[AssetDoc]:
        def keep(doc: AssetDoc) -> bool:
            for name in ASSET_EQUALITY_FILTERS:
                wanted = getattr(where, name)
                value = getattr(doc, name)
                if wanted is not None and getattr(value, "value", value) != wanted:
                    return False
            if where.tag is not None and where.tag not in doc.tags:
                return False
            if where.created_from is not None and doc.created_at < where.created_from:
                return False
            return where.created_to is None or doc.created_at < where.created_to

        return _newest_first([doc for doc in self._of(client_id).values() if keep(doc)], after, limit)

    def create(self, asset: AssetDoc, first: AssetRevision, *, product_image: ProductImage | None = None) -> None:
        self._interleave()
        if asset.id in self._of(asset.client_id):
            raise AssetExists(asset.id)
        if product_image is not None:
            if asset.product_id is None or self.product_store.get(asset.client_id, asset.product_id) is None:
                raise ProductGone(asset.product_id or "")
            self.product_store.add_image(asset.client_id, asset.product_id, product_image, asset.created_at)
        self._of(asset.client_id)[asset.id] = asset
        self.stored_revisions[(asset.client_id, asset.id)] = {1: first}

    def revisions(self, client_id: str, asset_id: str) -> list[AssetRevision]:
        stored = self.stored_revisions.get((client_id, asset_id), {})
        return [stored[number] for number in sorted(stored)]

    def revision(self, client_id: str, asset_id: str, number: int) -> AssetRevision | None:
        return self.stored_revisions.get((client_id, asset_id), {}).get(number)

    def append_revision(
        self, client_id: str, asset_id: str, revision: AssetRevision, now: datetime, item: ItemGuard | None = None
    ) -> None:
        if item is not None:
            raise NotImplementedError("job items live in the batch engine's store, not in this fake")
        asset = self.get(client_id, asset_id)
        if asset is None:
            raise NotFound(f"No asset {asset_id}")
        if asset.current_revision != revision.number - 1:
            raise RevisionConflict(f"asset {asset_id} is at revision {asset.current_revision}")
        self._interleave()  # another writer may commit between the read and this write
        stored = self.stored_revisions.setdefault((client_id, asset_id), {})
        current = self.get(client_id, asset_id)
        if revision.number in stored or current is None or current.current_revision != revision.number - 1:
            raise RevisionConflict(f"revision {revision.number} of {asset_id} exists")
        stored[revision.number] = revision
        changes: dict[str, Any] = {
            "current_revision": revision.number,
            "key": revision.key,
            "thumbnail_key": revision.thumbnail_key,
            "content_type": revision.content_type,
            "width": revision.width,
            "height": revision.height,
            "metadata": {**current.metadata, "has_alpha": bool(revision.metadata.get("has_alpha", False))},
            "duration_seconds": revision.duration_seconds,
            "poster_key": revision.poster_key,
            "updated_at": now,
        }
        if "video" in revision.metadata:
            changes["metadata"]["video"] = revision.metadata["video"]
        self._of(client_id)[asset_id] = current.model_copy(update=changes)
        self._replace_product_image(client_id, current, revision, now)

    def _replace_product_image(self, client_id: str, asset: AssetDoc, revision: AssetRevision, now: datetime) -> None:
        if not asset.product_id:
            return
        loaded = self.product_store.load(client_id, asset.product_id)
        if loaded is None or not any(image.asset_id == asset.id for image in loaded.value.images):
            return
        changes = {
            "key": revision.key,
            "thumbnail_key": revision.thumbnail_key,
            "content_type": revision.content_type,
            "width": revision.width,
            "height": revision.height,
        }
        images = [
            image.model_copy(update=changes) if image.asset_id == asset.id else image for image in loaded.value.images
        ]
        self.product_store.update(client_id, asset.product_id, {"images": images, "updated_at": now}, loaded.version)

    def update_flags(self, client_id: str, asset_id: str, changes: dict[str, Any]) -> None:
        asset = self.get(client_id, asset_id)
        if asset is None:
            raise NotFound(f"No asset {asset_id}")
        if "approved" in changes and asset.approved != bool(changes["approved"]):
            sequence = self.event_seq[(client_id, asset_id)] = self.event_seq.get((client_id, asset_id), 0) + 1
            now = changes.get("updated_at") or asset.updated_at
            self.events.append(approval_event(client_id, asset, bool(changes["approved"]), sequence, now))
        self._of(client_id)[asset_id] = _changed(asset, changes)

    def load_many(self, client_id: str, asset_ids: Sequence[str]) -> dict[str, Versioned[AssetDoc]]:
        # The document as read is its own version: any write replaces it with another object.
        return {aid: Versioned(doc, doc) for aid in asset_ids if (doc := self._of(client_id).get(aid))}

    def update_many(self, client_id: str, writes: Sequence[tuple[Versioned[AssetDoc], dict[str, Any]]]) -> set[str]:
        self._interleave()
        moved: set[str] = set()
        for loaded, changes in writes:
            current = self._of(client_id).get(loaded.value.id)
            if current is None or current is not loaded.version:
                moved.add(loaded.value.id)
                continue
            self.update_flags(client_id, loaded.value.id, changes)
        return moved

    def delete(self, client_id: str, asset_id: str) -> list[AssetRevision]:
        asset = self._of(client_id).pop(asset_id, None)
        if asset is None:
            raise NotFound(f"No asset {asset_id}")
        if asset.product_id:
            loaded = self.product_store.load(client_id, asset.product_id)
            if loaded is not None:
                images = [image for image in loaded.value.images if image.asset_id != asset_id]
                self.product_store.update(client_id, asset.product_id, {"images": images}, loaded.version)
        stored = self.stored_revisions.pop((client_id, asset_id), {})
        return [stored[number] for number in sorted(stored)]


class InMemoryUploadRepository(UploadRepository):
    def __init__(self) -> None:
        self.uploads: dict[tuple[str, str], tuple[UploadDoc, int]] = {}

    def get(self, client_id: str, upload_id: str) -> UploadDoc | None:
        entry = self.uploads.get((client_id, upload_id))
        return entry[0] if entry else None

    def create(self, doc: UploadDoc) -> None:
        if (doc.client_id, doc.id) in self.uploads:
            raise StaleWrite()
        self.uploads[(doc.client_id, doc.id)] = (doc, next(_versions))

    def delete(self, client_id: str, upload_id: str) -> None:
        self.uploads.pop((client_id, upload_id), None)

    def update(self, client_id: str, upload_id: str, changes: dict[str, Any]) -> None:
        entry = self.uploads.get((client_id, upload_id))
        if entry is None:
            raise NotFound(f"No upload {upload_id}")
        self.uploads[(client_id, upload_id)] = (_changed(entry[0], changes), next(_versions))

    def count_pending(self, client_id: str, now: datetime) -> int:
        return sum(
            1
            for (owner, _), (doc, _) in self.uploads.items()
            if owner == client_id and doc.status is UploadStatus.PENDING and doc.expires_at > now
        )

    def due_for_sweep(self, now: datetime, limit: int, client_id: str | None = None) -> list[Found]:
        due = [
            (doc.sweep_at, Found(owner, doc.id, doc.model_dump(), version))
            for (owner, _), (doc, version) in self.uploads.items()
            if (client_id is None or owner == client_id) and doc.sweep_at is not None and doc.sweep_at < now
        ]
        return [found for _, found in sorted(due, key=lambda pair: pair[0])][:limit]

    def update_if_unchanged(self, upload: Versioned[UploadDoc], changes: dict[str, Any]) -> None:
        key = (upload.value.client_id, upload.value.id)
        entry = self.uploads.get(key)
        if entry is None or entry[1] != upload.version:
            raise StaleWrite()
        self.uploads[key] = (_changed(entry[0], changes), next(_versions))


class InMemoryImportRepository(ImportRepository):
    """Imports with their parts and the reaper's cursors; ``too_large`` bytes refuse a document."""

    def __init__(self, too_large: int = 1_000_000) -> None:
        self.imports: dict[tuple[str, str], tuple[ImportDoc, int]] = {}
        self.stored_parts: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self.cursors: dict[str | None, datetime | None] = {}
        self.too_large = too_large
        self.events: list[DomainEvent] = []  # the outbox: written with the change
        self.before_write: list[Any] = []  # hooks run before a guarded write: tests interleave writers

    def _interleave(self) -> None:
        while self.before_write:
            self.before_write.pop(0)()

    def _check_size(self, doc: ImportDoc) -> None:
        if len(doc.model_dump_json()) > self.too_large:
            raise DocumentTooLarge(doc.id)

    def get(self, client_id: str, import_id: str) -> ImportDoc | None:
        entry = self.imports.get((client_id, import_id))
        return entry[0] if entry else None

    def create(self, doc: ImportDoc) -> None:
        self._check_size(doc)
        if (doc.client_id, doc.id) in self.imports:
            raise StaleWrite()
        self.imports[(doc.client_id, doc.id)] = (doc, next(_versions))

    def update(self, client_id: str, import_id: str, changes: dict[str, Any]) -> None:
        entry = self.imports.get((client_id, import_id))
        if entry is None:
            raise NotFound(f"No import {import_id}")
        changed = _changed(entry[0], changes)
        self._check_size(changed)
        self.imports[(client_id, import_id)] = (changed, next(_versions))

    def load(self, client_id: str, import_id: str) -> Versioned[ImportDoc] | None:
        entry = self.imports.get((client_id, import_id))
        return Versioned(entry[0], entry[1]) if entry else None

    def update_if_unchanged(
        self, loaded: Versioned[ImportDoc], changes: dict[str, Any], events: Sequence[DomainEvent] = ()
    ) -> None:
        self._interleave()
        key = (loaded.value.client_id, loaded.value.id)
        entry = self.imports.get(key)
        if entry is None or entry[1] != loaded.version:
            raise StaleWrite()
        self.imports[key] = (_changed(entry[0], changes), next(_versions))
        self.events.extend(events)

    def part(self, client_id: str, import_id: str, part_id: str) -> dict[str, Any] | None:
        return self.stored_parts.get((client_id, import_id), {}).get(part_id)

    def parts(self, client_id: str, import_id: str) -> list[dict[str, Any]]:
        stored = self.stored_parts.get((client_id, import_id), {})
        return [stored[part_id] for part_id in sorted(stored)]

    def record_part(
        self,
        client_id: str,
        import_id: str,
        part_id: str,
        stored: dict[str, Any],
        counts: dict[str, int],
        changes: dict[str, Any],
    ) -> dict[str, Any] | None:
        self._interleave()
        parts = self.stored_parts.setdefault((client_id, import_id), {})
        if part_id in parts:
            return parts[part_id]
        entry = self.imports.get((client_id, import_id))
        if entry is None:
            raise NotFound(f"No import {import_id}")
        progress = entry[0].progress.model_dump()
        for name, count in counts.items():
            progress[name] += count
        parts[part_id] = stored
        self.imports[(client_id, import_id)] = (_changed(entry[0], {**changes, "progress": progress}), next(_versions))
        return None

    def stale(
        self, before: datetime, limit: int, *, after: datetime | None = None, client_id: str | None = None
    ) -> list[Found]:
        found = [
            doc
            for (owner, _), (doc, _) in self.imports.items()
            if (client_id is None or owner == client_id)
            and doc.status in (ImportStatus.QUEUED, ImportStatus.RUNNING)
            and doc.updated_at < before
            and (after is None or doc.updated_at > after)
        ]
        ordered = sorted(found, key=lambda doc: doc.updated_at)[:limit]
        return [Found(doc.client_id, doc.id, doc.model_dump(), None) for doc in ordered]

    def reaper_cursor(self, client_id: str | None) -> datetime | None:
        return self.cursors.get(client_id)

    def save_reaper_cursor(self, client_id: str | None, after: datetime | None, now: datetime) -> None:
        self.cursors[client_id] = after


def in_memory_catalog() -> CatalogRepositories:
    products = InMemoryProductRepository()
    return CatalogRepositories(
        products=products,
        assets=InMemoryAssetRepository(products),
        uploads=InMemoryUploadRepository(),
        imports=InMemoryImportRepository(),
    )
