"""Ports of the catalog: where products, assets, uploads and imports are kept.

Services take these (or :class:`CatalogRepositories`, the bundle of them) instead of a database client.
Every document path, query and precondition lives in an adapter (Firestore:
``shared.adapters.firestore.catalog``; in memory: ``tests.fakes_catalog``). An atomic write the
rules need (a product and its slot, revision n+1 and the asset's current revision) is one method
here, with its precondition inside the adapter; a lost precondition is :class:`StaleWrite` (read
again and retry) or one of the named conflicts below, the same in every adapter.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from shared.catalog.models import (
    AssetDoc,
    AssetRevision,
    ImportDoc,
    ProductDoc,
    ProductImage,
    ProductSource,
    UploadDoc,
)
from shared.catalog.slots import ProductUsageDoc
from shared.events.model import DomainEvent

T = TypeVar("T")


class StaleWrite(Exception):
    """A document changed (or appeared, or went) since it was read: nothing was written; read again."""


class AssetExists(Exception):
    """An asset with this id is stored already (a redelivery, or a concurrent writer got there first)."""


class ProductGone(Exception):
    """The product an asset was to be attached to does not exist (nothing was written)."""


class DocumentTooLarge(Exception):
    """The store refused a document as too large (nothing was written)."""


class RevisionConflict(Exception):
    """Another edit became revision n first: recompute from the new current revision."""


class ItemTaken(Exception):
    """Another delivery of the same task changed the job item: it owns the outcome."""


@dataclass(frozen=True)
class Versioned(Generic[T]):
    """A value as read, with the opaque version a guarded write is conditioned on."""

    value: T
    version: Any


@dataclass(frozen=True)
class Found:
    """A document a scan across clients found, as stored (its owner, id, data and version). Whoever
    handles it validates it, so one corrupt document fails on its own and the scan goes on."""

    client_id: str
    id: str
    data: dict[str, Any]
    version: Any = None


@dataclass(frozen=True)
class ItemGuard:
    """A job item to finish in the same commit as a revision, if nobody touched it since ``snapshot``
    (the batch engine's own document handles: only its adapter knows what they are)."""

    ref: Any
    snapshot: Any
    changes: dict[str, Any]


@dataclass(frozen=True)
class SlotsRead:
    """What a slot-taking write is decided on: the counter (None: not counted yet), the plan's
    limit, and which of the asked product ids are stored already."""

    usage: Versioned[int] | None
    limit: int
    stored: set[str]


@dataclass(frozen=True)
class ProductFilter:
    category: str | None = None
    source: ProductSource | None = None
    token: str | None = None  # one search token the product must carry


# -- products -------------------------------------------------------------------------------------


class ProductRepository(ABC):
    """``clients/{client}/products/{id}`` and the product-slot counter ``usage/products``."""

    @abstractmethod
    def get(self, client_id: str, product_id: str) -> ProductDoc | None: ...

    @abstractmethod
    def get_many(self, client_id: str, product_ids: Iterable[str]) -> dict[str, ProductDoc]: ...

    @abstractmethod
    def existing(self, client_id: str, product_ids: Iterable[str]) -> set[str]:
        """The ids among ``product_ids`` that are stored."""

    @abstractmethod
    def scan(
        self, client_id: str, where: ProductFilter, after: tuple[datetime, str] | None, limit: int
    ) -> list[ProductDoc]:
        """Up to ``limit`` products, newest first (``created_at``, then ``id``, descending), after ``after``."""

    @abstractmethod
    def load(self, client_id: str, product_id: str) -> Versioned[ProductDoc] | None: ...

    @abstractmethod
    def update(self, client_id: str, product_id: str, changes: dict[str, Any], version: Any) -> None:
        """Change fields of the product if it is still at ``version``; else :class:`StaleWrite`."""

    @abstractmethod
    def add_image(self, client_id: str, product_id: str, image: ProductImage, now: datetime) -> None:
        """Append an image entry (no precondition: concurrent additions are all kept)."""

    @abstractmethod
    def read_slots(self, client_id: str, product_ids: Sequence[str]) -> SlotsRead: ...

    @abstractmethod
    def create_taking_slots(
        self, client_id: str, docs: Sequence[ProductDoc], used: Versioned[int], now: datetime
    ) -> None:
        """Create ``docs`` and set the counter to ``used.value + len(docs)`` in one atomic write, if the
        counter is still at ``used.version`` and none of the products exists; else :class:`StaleWrite`."""

    @abstractmethod
    def delete_freeing_slot(self, client_id: str, product_id: str, used: Versioned[int], now: datetime) -> None:
        """Delete the product and decrement the counter in one atomic write, if the counter is still at
        ``used.version`` and the product still exists; else :class:`StaleWrite`."""

    @abstractmethod
    def count(self, client_id: str) -> int:
        """How many products the client has (a real count, not the counter)."""

    @abstractmethod
    def usage(self, client_id: str) -> Versioned[ProductUsageDoc] | None: ...

    @abstractmethod
    def save_usage(self, client_id: str, doc: ProductUsageDoc, version: Any | None) -> None:
        """Create the counter (``version`` None) or replace it if still at ``version``; else :class:`StaleWrite`."""

    @abstractmethod
    def slot_limit(self, client_id: str) -> int:
        """The product slots of the client's plan (its billing state)."""

    @abstractmethod
    def client_ids(self) -> Iterator[str]:
        """Every client (the daily recount goes through them)."""

    @abstractmethod
    def find_linked(self, client_id: str, platform: str, store_product_id: str) -> ProductDoc | None:
        """The product linked to this store product (imported or linked by hand), if any."""

    @abstractmethod
    def linked(self, client_id: str, limit: int) -> list[ProductDoc]:
        """Up to ``limit`` products whose store link is live (disconnecting unlinks them in pages)."""

    @abstractmethod
    def linked_ids(self, client_id: str, platform: str, store_product_ids: Sequence[str]) -> dict[str, str]:
        """Store product id -> our product id, for those of ``store_product_ids`` a product is linked to."""

    @abstractmethod
    def from_shop(self, client_id: str, shop: str, limit: int) -> list[ProductDoc]:
        """Up to ``limit`` products carrying a store link to ``shop`` (any status; shop/redact erases them)."""


# -- assets ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AssetFilter:
    product_id: str | None = None
    kind: str | None = None
    status: str | None = None
    pinned: bool | None = None
    favorite: bool | None = None
    approved: bool | None = None
    job_id: str | None = None
    origin: str | None = None
    tag: str | None = None  # one tag the asset must carry
    created_from: datetime | None = None  # inclusive
    created_to: datetime | None = None  # exclusive


# The equality filters of :class:`AssetFilter`, by field name (the adapters filter on each one given).
ASSET_EQUALITY_FILTERS = ("product_id", "kind", "status", "pinned", "favorite", "approved", "job_id", "origin")


class AssetRepository(ABC):
    """``clients/{client}/assets/{id}`` and its ``revisions/{n}``."""

    @abstractmethod
    def get(self, client_id: str, asset_id: str) -> AssetDoc | None: ...

    @abstractmethod
    def get_many(self, client_id: str, asset_ids: Iterable[str]) -> dict[str, AssetDoc]: ...

    @abstractmethod
    def existing(self, client_id: str, asset_ids: Iterable[str]) -> set[str]: ...

    @abstractmethod
    def scan(
        self, client_id: str, where: AssetFilter, after: tuple[datetime, str] | None, limit: int
    ) -> list[AssetDoc]:
        """Up to ``limit`` assets, newest first (``created_at``, then ``id``, descending), after ``after``."""

    @abstractmethod
    def create(self, asset: AssetDoc, first: AssetRevision, *, product_image: ProductImage | None = None) -> None:
        """Create the asset and its revision 1 (and append ``product_image`` to its product) in one
        atomic write. :class:`AssetExists` when the asset is stored already (nothing written; a write
        of ours whose answer was lost is recognised by its key and succeeds), :class:`ProductGone`
        when the product to attach it to does not exist."""

    @abstractmethod
    def revisions(self, client_id: str, asset_id: str) -> list[AssetRevision]:
        """Every revision, oldest first."""

    @abstractmethod
    def revision(self, client_id: str, asset_id: str, number: int) -> AssetRevision | None: ...

    @abstractmethod
    def append_revision(
        self, client_id: str, asset_id: str, revision: AssetRevision, now: datetime, item: ItemGuard | None = None
    ) -> None:
        """Make ``revision`` (number n) current in one atomic write: create revision n, point the asset
        (then at n-1) and its product's image entry at it, and finish ``item``.

        Raises :class:`RevisionConflict` when revision n exists or the asset is not at n-1,
        :class:`ItemTaken` when ``item`` changed, ``NotFound`` when the asset is gone. A write of ours
        whose answer was lost is recognised and succeeds."""

    @abstractmethod
    def update_flags(self, client_id: str, asset_id: str, changes: dict[str, Any]) -> None:
        """Set flags; a change of ``approved`` is numbered (``event_seq``) and writes its
        ``catalog.asset_approved`` / ``catalog.asset_unapproved`` event in the same commit."""

    @abstractmethod
    def delete(self, client_id: str, asset_id: str) -> list[AssetRevision]:
        """Delete the asset, its revisions and its entry in its product's images in one atomic write;
        returns the revisions it had (their objects are the caller's to delete)."""

    @abstractmethod
    def load_many(self, client_id: str, asset_ids: Sequence[str]) -> dict[str, Versioned[AssetDoc]]:
        """The stored ones among ``asset_ids``, each with the version a guarded write is conditioned on
        (read in batches)."""

    @abstractmethod
    def update_many(self, client_id: str, writes: Sequence[tuple[Versioned[AssetDoc], dict[str, Any]]]) -> set[str]:
        """Apply each write's changes (flags, tags, ``updated_at``) if its asset is still at the version
        read, in as few commits as the store allows; a change of ``approved`` is numbered and writes its
        event as :meth:`update_flags` does. Returns the ids whose asset moved or went (nothing of
        theirs written)."""


# -- uploads --------------------------------------------------------------------------------------


class UploadRepository(ABC):
    """``clients/{client}/uploads/{id}``: upload slots."""

    @abstractmethod
    def get(self, client_id: str, upload_id: str) -> UploadDoc | None: ...

    @abstractmethod
    def create(self, doc: UploadDoc) -> None: ...

    @abstractmethod
    def delete(self, client_id: str, upload_id: str) -> None: ...

    @abstractmethod
    def update(self, client_id: str, upload_id: str, changes: dict[str, Any]) -> None: ...

    @abstractmethod
    def count_pending(self, client_id: str, now: datetime) -> int:
        """Slots still pending (not completed, rejected or expired) whose URL has not expired at ``now``."""

    @abstractmethod
    def due_for_sweep(self, now: datetime, limit: int, client_id: str | None = None) -> list[Found]:
        """Up to ``limit`` slots (of every client, or of ``client_id``) whose ``sweep_at`` is before
        ``now``, oldest first."""

    @abstractmethod
    def update_if_unchanged(self, upload: Versioned[UploadDoc], changes: dict[str, Any]) -> None:
        """Change the slot if it is still at ``upload.version``; else :class:`StaleWrite`."""


# -- CSV imports ----------------------------------------------------------------------------------


class ImportRepository(ABC):
    """``clients/{client}/imports/{id}``, the parts of its chunks, and the reaper's cursor."""

    @abstractmethod
    def get(self, client_id: str, import_id: str) -> ImportDoc | None: ...

    @abstractmethod
    def create(self, doc: ImportDoc) -> None:
        """Store a new import; :class:`DocumentTooLarge` when the store refuses its size."""

    @abstractmethod
    def update(self, client_id: str, import_id: str, changes: dict[str, Any]) -> None:
        """Change fields of the import; :class:`DocumentTooLarge` when the store refuses its size."""

    @abstractmethod
    def load(self, client_id: str, import_id: str) -> Versioned[ImportDoc] | None: ...

    @abstractmethod
    def update_if_unchanged(
        self, loaded: Versioned[ImportDoc], changes: dict[str, Any], events: Sequence[DomainEvent] = ()
    ) -> None:
        """Change the import if it is still at ``loaded.version``; else :class:`StaleWrite`. ``events``
        are written in the same commit (the outbox)."""

    @abstractmethod
    def part(self, client_id: str, import_id: str, part_id: str) -> dict[str, Any] | None:
        """A recorded part of a chunk, as stored."""

    @abstractmethod
    def parts(self, client_id: str, import_id: str) -> list[dict[str, Any]]:
        """Every recorded part, in the order of their ids."""

    @abstractmethod
    def record_part(
        self,
        client_id: str,
        import_id: str,
        part_id: str,
        stored: dict[str, Any],
        counts: dict[str, int],
        changes: dict[str, Any],
    ) -> dict[str, Any] | None:
        """Create the part and, in the same atomic write, add ``counts`` to the import's progress
        counters and apply ``changes``. Returns None when recorded; when the part was recorded
        before (another delivery), nothing is written and that stored part is returned."""

    @abstractmethod
    def stale(
        self, before: datetime, limit: int, *, after: datetime | None = None, client_id: str | None = None
    ) -> list[Found]:
        """Up to ``limit`` queued or running imports last updated before ``before`` (of every client,
        or of ``client_id``), oldest update first, starting after an update time of ``after``."""

    @abstractmethod
    def reaper_cursor(self, client_id: str | None) -> datetime | None:
        """Where the reaper's previous run stopped (None: from the oldest)."""

    @abstractmethod
    def save_reaper_cursor(self, client_id: str | None, after: datetime | None, now: datetime) -> None: ...


@dataclass
class CatalogRepositories:
    """The catalog's unit of work: one bundle the entry points build and the services take."""

    products: ProductRepository
    assets: AssetRepository
    uploads: UploadRepository
    imports: ImportRepository
