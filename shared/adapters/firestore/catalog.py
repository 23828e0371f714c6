"""Firestore adapters of the catalog's ports: every document path, query and precondition of
products, the product-slot counter, assets and their revisions.

Documents::

    clients/{client}                       billing state (the plan's product slots), read only here
    clients/{client}/usage/products        the product-slot counter (ProductUsageDoc)
    clients/{client}/products/{id}         ProductDoc
    clients/{client}/assets/{id}           AssetDoc
    clients/{client}/assets/{id}/revisions/{n}   AssetRevision (+ the writer's commit token)

Guarded writes use ``update_time`` preconditions (optimistic: they stay live under contention where
read-modify-write transactions collapse); Firestore's refusals become the ports' exceptions.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from shared.adapters.firestore.outbox import write_events
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
    ItemTaken,
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
from shared.events.outbox import EventKicker, NoKick
from shared.retry import CONTENDED_COMMIT, attempts

if TYPE_CHECKING:
    from google.cloud.firestore import Client


def client_ref(db: Client, client_id: str) -> Any:
    return db.collection("clients").document(client_id)


def products_ref(db: Client, client_id: str) -> Any:
    return client_ref(db, client_id).collection("products")


def usage_ref(db: Client, client_id: str) -> Any:
    return client_ref(db, client_id).collection("usage").document("products")


def assets_ref(db: Client, client_id: str) -> Any:
    return client_ref(db, client_id).collection("assets")


def uploads_ref(db: Client, client_id: str) -> Any:
    return client_ref(db, client_id).collection("uploads")


def imports_ref(db: Client, client_id: str) -> Any:
    return client_ref(db, client_id).collection("imports")


def revision_ref(db: Client, client_id: str, asset_id: str, number: int) -> Any:
    return assets_ref(db, client_id).document(asset_id).collection("revisions").document(str(number))


def get_all(db: Client, refs: list[Any]) -> list[Any]:
    """Snapshots in the order of ``refs`` (``get_all`` answers in any order)."""
    if not refs:
        return []
    by_path = {snapshot.reference.path: snapshot for snapshot in db.get_all(refs)}
    return [by_path[ref.path] for ref in refs]


def _stale_on_refusal(commit: Any) -> None:
    """Commit; a refused precondition (or contention) is :class:`StaleWrite`: nothing was written."""
    from google.api_core.exceptions import Aborted, AlreadyExists, FailedPrecondition
    from google.api_core.exceptions import NotFound as GNotFound

    try:
        commit()
    except (FailedPrecondition, GNotFound, Aborted, AlreadyExists) as exc:
        raise StaleWrite() from exc


class FirestoreProductRepository(ProductRepository):
    def __init__(self, db: Client) -> None:
        self.db = db

    def _ref(self, client_id: str, product_id: str) -> Any:
        return products_ref(self.db, client_id).document(product_id)

    def get(self, client_id: str, product_id: str) -> ProductDoc | None:
        snapshot = self._ref(client_id, product_id).get()
        return ProductDoc.model_validate(snapshot.to_dict()) if snapshot.exists else None

    def get_many(self, client_id: str, product_ids: Iterable[str]) -> dict[str, ProductDoc]:
        refs = [self._ref(client_id, pid) for pid in product_ids]
        found: dict[str, ProductDoc] = {}
        for snapshot in self.db.get_all(refs) if refs else []:
            if snapshot.exists:
                doc = ProductDoc.model_validate(snapshot.to_dict())
                found[doc.id] = doc
        return found

    def existing(self, client_id: str, product_ids: Iterable[str]) -> set[str]:
        refs = [self._ref(client_id, pid) for pid in product_ids]
        if not refs:
            return set()
        return {snap.id for snap in self.db.get_all(refs, field_paths=["id"]) if snap.exists}

    def scan(
        self, client_id: str, where: ProductFilter, after: tuple[datetime, str] | None, limit: int
    ) -> list[ProductDoc]:
        from google.cloud.firestore import FieldFilter, Query

        query = products_ref(self.db, client_id)
        if where.category:
            query = query.where(filter=FieldFilter("category", "==", where.category))
        if where.source:
            query = query.where(filter=FieldFilter("source", "==", where.source.value))
        if where.token:
            query = query.where(filter=FieldFilter("search_tokens", "array_contains", where.token))
        query = query.order_by("created_at", direction=Query.DESCENDING).order_by("id", direction=Query.DESCENDING)
        query = query.limit(limit)
        if after is not None:
            query = query.start_after({"created_at": after[0], "id": after[1]})
        return [ProductDoc.model_validate(snapshot.to_dict()) for snapshot in query.stream()]

    def load(self, client_id: str, product_id: str) -> Versioned[ProductDoc] | None:
        snapshot = self._ref(client_id, product_id).get()
        if not snapshot.exists:
            return None
        return Versioned(ProductDoc.model_validate(snapshot.to_dict()), snapshot.update_time)

    def update(self, client_id: str, product_id: str, changes: dict[str, Any], version: Any) -> None:
        ref = self._ref(client_id, product_id)
        _stale_on_refusal(lambda: ref.update(changes, option=self.db.write_option(last_update_time=version)))

    def find_linked(self, client_id: str, platform: str, store_product_id: str) -> ProductDoc | None:
        from google.cloud.firestore import FieldFilter

        query = (
            products_ref(self.db, client_id)
            .where(filter=FieldFilter("store.product_id", "==", store_product_id))
            .where(filter=FieldFilter("store.platform", "==", platform))
            .limit(1)
        )
        for snapshot in query.stream():
            return ProductDoc.model_validate(snapshot.to_dict())
        return None

    def linked(self, client_id: str, limit: int) -> list[ProductDoc]:
        from google.cloud.firestore import FieldFilter

        query = products_ref(self.db, client_id).where(filter=FieldFilter("store.status", "==", "linked")).limit(limit)
        return [ProductDoc.model_validate(snapshot.to_dict()) for snapshot in query.stream()]

    def linked_ids(self, client_id: str, platform: str, store_product_ids: Sequence[str]) -> dict[str, str]:
        from google.cloud.firestore import FieldFilter

        found: dict[str, str] = {}
        wanted = list(dict.fromkeys(store_product_ids))
        for start in range(0, len(wanted), 30):  # Firestore's "in" takes up to 30 values
            query = (
                products_ref(self.db, client_id)
                .where(filter=FieldFilter("store.product_id", "in", wanted[start : start + 30]))
                .where(filter=FieldFilter("store.platform", "==", platform))
                .select(["store.product_id"])
            )
            for snapshot in query.stream():
                store_id = (snapshot.to_dict() or {}).get("store", {}).get("product_id")
                if store_id is not None:
                    found.setdefault(str(store_id), snapshot.id)
        return found

    def from_shop(self, client_id: str, shop: str, limit: int) -> list[ProductDoc]:
        from google.cloud.firestore import FieldFilter

        query = products_ref(self.db, client_id).where(filter=FieldFilter("store.shop", "==", shop)).limit(limit)
        return [ProductDoc.model_validate(snapshot.to_dict()) for snapshot in query.stream()]

    def add_image(self, client_id: str, product_id: str, image: ProductImage, now: datetime) -> None:
        from google.cloud import firestore

        self._ref(client_id, product_id).update(
            {"images": firestore.ArrayUnion([image.model_dump(mode="python")]), "updated_at": now}
        )

    def read_slots(self, client_id: str, product_ids: Sequence[str]) -> SlotsRead:
        refs = [usage_ref(self.db, client_id), client_ref(self.db, client_id)]
        refs += [self._ref(client_id, pid) for pid in dict.fromkeys(product_ids)]
        usage, client, *products = get_all(self.db, refs)
        billing = (client.to_dict() or {}).get("billing") if client.exists else None
        used = (
            Versioned(ProductUsageDoc.model_validate(usage.to_dict()).used, usage.update_time) if usage.exists else None
        )
        return SlotsRead(usage=used, limit=limit_from_billing(billing), stored={s.id for s in products if s.exists})

    def create_taking_slots(
        self, client_id: str, docs: Sequence[ProductDoc], used: Versioned[int], now: datetime
    ) -> None:
        batch = self.db.batch()
        batch.update(
            usage_ref(self.db, client_id),
            {"used": used.value + len(docs), "updated_at": now},
            option=self.db.write_option(last_update_time=used.version),
        )
        for doc in docs:
            # A create: a concurrent delivery that stored one of them makes the whole write fail.
            batch.create(self._ref(client_id, doc.id), doc.model_dump(mode="python"))
        _stale_on_refusal(batch.commit)

    def delete_freeing_slot(self, client_id: str, product_id: str, used: Versioned[int], now: datetime) -> None:
        batch = self.db.batch()
        # exists=True: of two concurrent deletes only one frees the slot.
        batch.delete(self._ref(client_id, product_id), option=self.db.write_option(exists=True))
        batch.update(
            usage_ref(self.db, client_id),
            {"used": max(0, used.value - 1), "updated_at": now},
            option=self.db.write_option(last_update_time=used.version),
        )
        _stale_on_refusal(batch.commit)

    def count(self, client_id: str) -> int:
        return int(products_ref(self.db, client_id).count().get()[0][0].value)

    def usage(self, client_id: str) -> Versioned[ProductUsageDoc] | None:
        snapshot = usage_ref(self.db, client_id).get()
        if not snapshot.exists:
            return None
        return Versioned(ProductUsageDoc.model_validate(snapshot.to_dict()), snapshot.update_time)

    def save_usage(self, client_id: str, doc: ProductUsageDoc, version: Any | None) -> None:
        ref = usage_ref(self.db, client_id)
        data = doc.model_dump(mode="python")
        if version is None:
            _stale_on_refusal(lambda: ref.create(data))
        else:
            _stale_on_refusal(lambda: ref.update(data, option=self.db.write_option(last_update_time=version)))

    def slot_limit(self, client_id: str) -> int:
        snapshot = client_ref(self.db, client_id).get()
        return limit_from_billing((snapshot.to_dict() or {}).get("billing") if snapshot.exists else None)

    def client_ids(self) -> Iterator[str]:
        for snapshot in self.db.collection("clients").select([]).stream():  # the ids only
            yield snapshot.id


class FirestoreAssetRepository(AssetRepository):
    def __init__(self, db: Client, kicker: EventKicker | None = None) -> None:
        self.db = db
        self.kicker = kicker or NoKick()

    def _ref(self, client_id: str, asset_id: str) -> Any:
        return assets_ref(self.db, client_id).document(asset_id)

    def get(self, client_id: str, asset_id: str) -> AssetDoc | None:
        snapshot = self._ref(client_id, asset_id).get()
        return AssetDoc.model_validate(snapshot.to_dict()) if snapshot.exists else None

    def get_many(self, client_id: str, asset_ids: Iterable[str]) -> dict[str, AssetDoc]:
        refs = [self._ref(client_id, aid) for aid in dict.fromkeys(asset_ids)]
        found: dict[str, AssetDoc] = {}
        for snapshot in self.db.get_all(refs) if refs else []:
            if snapshot.exists:
                found[snapshot.id] = AssetDoc.model_validate(snapshot.to_dict())
        return found

    def existing(self, client_id: str, asset_ids: Iterable[str]) -> set[str]:
        refs = [self._ref(client_id, aid) for aid in dict.fromkeys(asset_ids)]
        if not refs:
            return set()
        return {snap.id for snap in self.db.get_all(refs, field_paths=["id"]) if snap.exists}

    def scan(
        self, client_id: str, where: AssetFilter, after: tuple[datetime, str] | None, limit: int
    ) -> list[AssetDoc]:
        from google.cloud.firestore import FieldFilter, Query

        query = assets_ref(self.db, client_id)
        for field in ASSET_EQUALITY_FILTERS:
            value = getattr(where, field)
            if value is not None:
                query = query.where(filter=FieldFilter(field, "==", value))
        if where.tag is not None:
            query = query.where(filter=FieldFilter("tags", "array_contains", where.tag))
        if where.created_from is not None:
            query = query.where(filter=FieldFilter("created_at", ">=", where.created_from))
        if where.created_to is not None:
            query = query.where(filter=FieldFilter("created_at", "<", where.created_to))
        query = query.order_by("created_at", direction=Query.DESCENDING).order_by("id", direction=Query.DESCENDING)
        if after is not None:
            query = query.start_after({"created_at": after[0], "id": after[1]})
        return [AssetDoc.model_validate(snapshot.to_dict()) for snapshot in query.limit(limit).stream()]

    def create(self, asset: AssetDoc, first: AssetRevision, *, product_image: ProductImage | None = None) -> None:
        from google.api_core.exceptions import NotFound as GNotFound
        from google.cloud import firestore

        from shared.batch.commits import commit_once

        ref = self._ref(asset.client_id, asset.id)
        batch = self.db.batch()
        # Creates: committing twice (a redelivered task) fails instead of writing a second copy.
        batch.create(ref, asset.model_dump(mode="python"))
        batch.create(ref.collection("revisions").document("1"), first.model_dump(mode="python"))
        if product_image is not None:
            batch.update(
                products_ref(self.db, asset.client_id).document(product_image_owner(asset)),
                {
                    "images": firestore.ArrayUnion([product_image.model_dump(mode="python")]),
                    "updated_at": asset.created_at,
                },
            )

        def ours() -> bool | None:
            # Our commit whose answer was lost (the client's retry then finds the asset) points at our key:
            # keys are unique to their writer.
            stored = ref.get()
            return True if stored.exists and (stored.to_dict() or {}).get("key") == asset.key else None

        try:
            done = commit_once(partial(batch.commit, retry=None), ours, "store an asset")
        except GNotFound as exc:
            # The product went (nothing was committed), unless a concurrent writer stored the asset first.
            if ref.get().exists:
                raise AssetExists(asset.id) from exc
            raise ProductGone(asset.product_id or "") from exc
        if done is None:  # AlreadyExists, and not ours: another writer stored it first
            raise AssetExists(asset.id)

    def revisions(self, client_id: str, asset_id: str) -> list[AssetRevision]:
        stream = self._ref(client_id, asset_id).collection("revisions").stream()
        return sorted((AssetRevision.model_validate(s.to_dict()) for s in stream), key=lambda r: r.number)

    def revision(self, client_id: str, asset_id: str, number: int) -> AssetRevision | None:
        snapshot = revision_ref(self.db, client_id, asset_id, number).get()
        return AssetRevision.model_validate(snapshot.to_dict()) if snapshot.exists else None

    def append_revision(
        self, client_id: str, asset_id: str, revision: AssetRevision, now: datetime, item: ItemGuard | None = None
    ) -> None:
        from google.api_core.exceptions import AlreadyExists, FailedPrecondition
        from google.api_core.exceptions import NotFound as GNotFound

        from shared.batch.commits import commit_once

        asset_ref = self._ref(client_id, asset_id)
        new_ref = revision_ref(self.db, client_id, asset_id, revision.number)
        token = secrets.token_hex(8)

        def ours() -> bool | None:
            stored = new_ref.get()
            return True if stored.exists and (stored.to_dict() or {}).get("commit_token") == token else None

        for _attempt in attempts(CONTENDED_COMMIT, "commit an asset revision"):
            snapshot = asset_ref.get()
            if not snapshot.exists:
                raise NotFound(f"No asset {asset_id}")
            asset = AssetDoc.model_validate(snapshot.to_dict())
            if asset.current_revision != revision.number - 1:
                raise RevisionConflict(f"asset {asset_id} is at revision {asset.current_revision}")
            batch = self.db.batch()
            batch.create(new_ref, {**revision.model_dump(mode="python"), "commit_token": token})
            batch.update(
                asset_ref,
                current_revision_fields(revision, now),
                option=self.db.write_option(last_update_time=snapshot.update_time),
            )
            self._replace_product_image(batch, client_id, asset, revision, now)
            if item is not None:
                batch.update(
                    item.ref, item.changes, option=self.db.write_option(last_update_time=item.snapshot.update_time)
                )
            committed = commit_once(
                partial(batch.commit, retry=None),
                ours,
                "commit an asset revision",
                conflicts=(AlreadyExists, FailedPrecondition, GNotFound),
            )
            if committed is not None:
                return
            # Not ours. Revision n exists: another edit got there first. Otherwise the asset, its product
            # or the item changed (or the product went) between our reads and the commit; nothing was
            # written, and the item decides whether to try again.
            if new_ref.get().exists:
                raise RevisionConflict(f"revision {revision.number} of {asset_id} exists")
            if item is not None and item.ref.get().update_time != item.snapshot.update_time:
                raise ItemTaken(f"another delivery finished item {item.ref.id}")
        raise RevisionConflict(f"asset {asset_id} kept changing during the commit")

    def _replace_product_image(
        self, batch: Any, client_id: str, asset: AssetDoc, revision: AssetRevision, now: datetime
    ) -> None:
        """The product's image entry for this asset shows the new revision, in place (its position is
        its meaning: the first image is the main one), guarded by the product's update time."""
        if not asset.product_id:
            return
        product_ref = products_ref(self.db, client_id).document(asset.product_id)
        snapshot = product_ref.get()
        if not snapshot.exists:
            return
        images = list((snapshot.to_dict() or {}).get("images") or [])
        if not any(image.get("asset_id") == asset.id for image in images):
            return
        changes = {
            "key": revision.key,
            "thumbnail_key": revision.thumbnail_key,
            "content_type": revision.content_type,
            "width": revision.width,
            "height": revision.height,
        }
        updated = [{**image, **changes} if image.get("asset_id") == asset.id else image for image in images]
        batch.update(
            product_ref,
            {"images": updated, "updated_at": now},
            option=self.db.write_option(last_update_time=snapshot.update_time),
        )

    def update_flags(self, client_id: str, asset_id: str, changes: dict[str, Any]) -> None:
        from google.cloud import firestore

        ref = self._ref(client_id, asset_id)
        if "approved" not in changes:
            ref.update(changes)
            return
        events: list[DomainEvent] = []

        @firestore.transactional  # type: ignore[untyped-decorator]
        def apply(transaction: Any) -> None:
            events.clear()  # a retried transaction starts over
            snapshot = ref.get(transaction=transaction)
            if not snapshot.exists:
                raise NotFound(f"No asset {asset_id}")
            update, event = _approval_change(client_id, snapshot, changes)
            events.extend([event] if event else [])
            transaction.update(ref, update)
            write_events(self.db, transaction, events)

        apply(self.db.transaction())
        self.kicker.kick(events)

    def load_many(self, client_id: str, asset_ids: Sequence[str]) -> dict[str, Versioned[AssetDoc]]:
        found: dict[str, Versioned[AssetDoc]] = {}
        wanted = list(dict.fromkeys(asset_ids))
        for start in range(0, len(wanted), _READ_BATCH):
            refs = [self._ref(client_id, aid) for aid in wanted[start : start + _READ_BATCH]]
            for snapshot in self.db.get_all(refs):
                if snapshot.exists:
                    # The snapshot is the version: its update_time guards the write, its event_seq numbers
                    # the approval event the write may carry.
                    found[snapshot.id] = Versioned(AssetDoc.model_validate(snapshot.to_dict()), snapshot)
        return found

    def update_many(self, client_id: str, writes: Sequence[tuple[Versioned[AssetDoc], dict[str, Any]]]) -> set[str]:
        from google.api_core.exceptions import FailedPrecondition
        from google.api_core.exceptions import NotFound as GNotFound

        moved: set[str] = set()
        # An approval is two writes (the asset and its event); a commit takes up to 500.
        for start in range(0, len(writes), _WRITE_BATCH):
            chunk = writes[start : start + _WRITE_BATCH]
            batch = self.db.batch()
            events: list[DomainEvent] = []
            for loaded, changes in chunk:
                events.extend(self._guarded_update(batch, client_id, loaded, changes))
            try:
                batch.commit()
            except (FailedPrecondition, GNotFound):
                # One of them moved: the whole commit was refused. Write them one by one to find which.
                events = []
                for loaded, changes in chunk:
                    single = self.db.batch()
                    written = self._guarded_update(single, client_id, loaded, changes)
                    try:
                        single.commit()
                    except (FailedPrecondition, GNotFound):
                        moved.add(loaded.value.id)
                        continue
                    events.extend(written)
            self.kicker.kick(events)
        return moved

    def _guarded_update(
        self, batch: Any, client_id: str, loaded: Versioned[AssetDoc], changes: dict[str, Any]
    ) -> list[DomainEvent]:
        snapshot = loaded.version
        update, event = _approval_change(client_id, snapshot, changes) if "approved" in changes else (changes, None)
        batch.update(
            self._ref(client_id, loaded.value.id),
            update,
            option=self.db.write_option(last_update_time=snapshot.update_time),
        )
        events = [event] if event else []
        write_events(self.db, batch, events)
        return events

    def delete(self, client_id: str, asset_id: str) -> list[AssetRevision]:
        from google.cloud import firestore

        asset_ref = self._ref(client_id, asset_id)
        snapshot = asset_ref.get()
        if not snapshot.exists:
            raise NotFound(f"No asset {asset_id}")
        asset = AssetDoc.model_validate(snapshot.to_dict())
        stored = list(asset_ref.collection("revisions").stream())
        batch = self.db.batch()
        if asset.product_id:
            product_ref = products_ref(self.db, client_id).document(asset.product_id)
            product = product_ref.get()
            if product.exists:
                # ArrayRemove of the exact stored entries: an image added concurrently is not lost.
                stale = [img for img in (product.to_dict() or {}).get("images", []) if img.get("asset_id") == asset_id]
                if stale:
                    batch.update(product_ref, {"images": firestore.ArrayRemove(stale)})
        for revision in stored:
            batch.delete(revision.reference)
        batch.delete(asset_ref)
        batch.commit()
        return [AssetRevision.model_validate(revision.to_dict()) for revision in stored]


_READ_BATCH = 300  # documents per batched read
_WRITE_BATCH = 200  # guarded updates per commit (each may carry an event: 400 writes, under the 500 limit)


def _approval_change(
    client_id: str, snapshot: Any, changes: dict[str, Any]
) -> tuple[dict[str, Any], DomainEvent | None]:
    """The update of an asset read as ``snapshot`` and the approval event it carries: a change of
    ``approved`` is numbered per asset (``event_seq``), so consumers apply approvals in order."""
    asset = AssetDoc.model_validate(snapshot.to_dict())
    update = dict(changes)
    if asset.approved == bool(changes["approved"]):
        return update, None
    sequence = int((snapshot.to_dict() or {}).get("event_seq", 0)) + 1
    update["event_seq"] = sequence
    now = changes.get("updated_at") or asset.updated_at
    return update, approval_event(client_id, asset, bool(changes["approved"]), sequence, now)


class FirestoreUploadRepository(UploadRepository):
    def __init__(self, db: Client) -> None:
        self.db = db

    def _ref(self, client_id: str, upload_id: str) -> Any:
        return uploads_ref(self.db, client_id).document(upload_id)

    def get(self, client_id: str, upload_id: str) -> UploadDoc | None:
        snapshot = self._ref(client_id, upload_id).get()
        return UploadDoc.model_validate(snapshot.to_dict()) if snapshot.exists else None

    def create(self, doc: UploadDoc) -> None:
        self._ref(doc.client_id, doc.id).create(doc.model_dump(mode="python"))

    def delete(self, client_id: str, upload_id: str) -> None:
        self._ref(client_id, upload_id).delete()

    def update(self, client_id: str, upload_id: str, changes: dict[str, Any]) -> None:
        self._ref(client_id, upload_id).update(changes)

    def count_pending(self, client_id: str, now: datetime) -> int:
        from google.cloud.firestore import FieldFilter

        query = (
            uploads_ref(self.db, client_id)
            .where(filter=FieldFilter("status", "==", UploadStatus.PENDING.value))
            .where(filter=FieldFilter("expires_at", ">", now))
        )
        return int(query.count().get()[0][0].value)

    def due_for_sweep(self, now: datetime, limit: int, client_id: str | None = None) -> list[Found]:
        from google.cloud.firestore import FieldFilter

        base = uploads_ref(self.db, client_id) if client_id else self.db.collection_group("uploads")
        query = base.where(filter=FieldFilter("sweep_at", "<", now)).order_by("sweep_at").limit(limit)
        return _found(query)

    def update_if_unchanged(self, upload: Versioned[UploadDoc], changes: dict[str, Any]) -> None:
        ref = self._ref(upload.value.client_id, upload.value.id)
        _stale_on_refusal(lambda: ref.update(changes, option=self.db.write_option(last_update_time=upload.version)))


def _found(query: Any) -> list[Found]:
    """The documents of a (collection group) query that are a client's, as stored."""
    found: list[Found] = []
    for snapshot in query.stream():
        parts = snapshot.reference.path.split("/")
        if len(parts) != 4 or parts[0] != "clients":
            continue  # a collection of the same name somewhere else
        found.append(Found(parts[1], snapshot.id, dict(snapshot.to_dict() or {}), snapshot.update_time))
    return found


def product_image_owner(asset: AssetDoc) -> str:
    if asset.product_id is None:
        raise ValueError(f"asset {asset.id} has no product to attach an image to")
    return asset.product_id


class FirestoreImportRepository(ImportRepository):
    """Imports, their parts (``imports/{id}/chunks/{part}``) and ``reapers/imports[-{client}]``."""

    def __init__(self, db: Client, kicker: EventKicker | None = None) -> None:
        self.db = db
        self.kicker = kicker or NoKick()

    def _ref(self, client_id: str, import_id: str) -> Any:
        return imports_ref(self.db, client_id).document(import_id)

    def _parts(self, client_id: str, import_id: str) -> Any:
        return self._ref(client_id, import_id).collection("chunks")

    def _cursor(self, client_id: str | None) -> Any:
        return self.db.collection("reapers").document("imports" if client_id is None else f"imports-{client_id}")

    def get(self, client_id: str, import_id: str) -> ImportDoc | None:
        snapshot = self._ref(client_id, import_id).get()
        return ImportDoc.model_validate(snapshot.to_dict()) if snapshot.exists else None

    @staticmethod
    def _sized(write: Any) -> None:
        """A write of the import document; a preview Firestore refuses as too large is ours to name."""
        from google.api_core.exceptions import InvalidArgument

        try:
            write()
        except InvalidArgument as exc:
            raise DocumentTooLarge(str(exc)) from exc

    def create(self, doc: ImportDoc) -> None:
        self._sized(lambda: self._ref(doc.client_id, doc.id).create(doc.model_dump(mode="python")))

    def update(self, client_id: str, import_id: str, changes: dict[str, Any]) -> None:
        self._sized(lambda: self._ref(client_id, import_id).update(changes))

    def load(self, client_id: str, import_id: str) -> Versioned[ImportDoc] | None:
        snapshot = self._ref(client_id, import_id).get()
        if not snapshot.exists:
            return None
        return Versioned(ImportDoc.model_validate(snapshot.to_dict()), snapshot.update_time)

    def update_if_unchanged(
        self, loaded: Versioned[ImportDoc], changes: dict[str, Any], events: Sequence[DomainEvent] = ()
    ) -> None:
        ref = self._ref(loaded.value.client_id, loaded.value.id)
        batch = self.db.batch()
        batch.update(ref, changes, option=self.db.write_option(last_update_time=loaded.version))
        write_events(self.db, batch, list(events))
        _stale_on_refusal(batch.commit)
        self.kicker.kick(list(events))

    def part(self, client_id: str, import_id: str, part_id: str) -> dict[str, Any] | None:
        snapshot = self._parts(client_id, import_id).document(part_id).get()
        return dict(snapshot.to_dict() or {}) if snapshot.exists else None

    def parts(self, client_id: str, import_id: str) -> list[dict[str, Any]]:
        stream = self._parts(client_id, import_id).order_by("__name__").stream()
        return [dict(snapshot.to_dict() or {}) for snapshot in stream]

    def record_part(
        self,
        client_id: str,
        import_id: str,
        part_id: str,
        stored: dict[str, Any],
        counts: dict[str, int],
        changes: dict[str, Any],
    ) -> dict[str, Any] | None:
        from google.api_core.exceptions import AlreadyExists
        from google.cloud import firestore

        part_ref = self._parts(client_id, import_id).document(part_id)
        batch = self.db.batch()
        batch.create(part_ref, stored)  # a create: a part is recorded once, by one delivery
        update = {f"progress.{name}": firestore.Increment(count) for name, count in counts.items()}
        batch.update(self._ref(client_id, import_id), {**update, **changes})
        try:
            batch.commit()
        except AlreadyExists:
            return dict(part_ref.get().to_dict() or {})
        return None

    def stale(
        self, before: datetime, limit: int, *, after: datetime | None = None, client_id: str | None = None
    ) -> list[Found]:
        from google.cloud.firestore import FieldFilter

        base = imports_ref(self.db, client_id) if client_id else self.db.collection_group("imports")
        query = (
            base.where(filter=FieldFilter("status", "in", [ImportStatus.QUEUED.value, ImportStatus.RUNNING.value]))
            .where(filter=FieldFilter("updated_at", "<", before))
            .order_by("updated_at")
        )
        if after is not None:
            query = query.start_after({"updated_at": after})
        return _found(query.limit(limit))

    def reaper_cursor(self, client_id: str | None) -> datetime | None:
        after: datetime | None = (self._cursor(client_id).get().to_dict() or {}).get("after")
        return after

    def save_reaper_cursor(self, client_id: str | None, after: datetime | None, now: datetime) -> None:
        self._cursor(client_id).set({"after": after, "updated_at": now})


def firestore_catalog(db: Client, kicker: EventKicker | None = None) -> CatalogRepositories:
    """The catalog's repositories on Firestore; ``kicker`` starts the relay of the events they commit."""
    return CatalogRepositories(
        products=FirestoreProductRepository(db),
        assets=FirestoreAssetRepository(db, kicker),
        uploads=FirestoreUploadRepository(db),
        imports=FirestoreImportRepository(db, kicker),
    )


def current_revision_fields(revision: AssetRevision, now: datetime) -> dict[str, Any]:
    """What an asset document takes from the revision that becomes its current one (dotted paths for
    the metadata it keeps of its own)."""
    fields: dict[str, Any] = {
        "current_revision": revision.number,
        "key": revision.key,
        "thumbnail_key": revision.thumbnail_key,
        "content_type": revision.content_type,
        "width": revision.width,
        "height": revision.height,
        "metadata.has_alpha": bool(revision.metadata.get("has_alpha", False)),
        "duration_seconds": revision.duration_seconds,
        "poster_key": revision.poster_key,
        "updated_at": now,
    }
    if "video" in revision.metadata:  # a video's facts (duration, size, codecs) as the library shows them
        fields["metadata.video"] = revision.metadata["video"]
    return fields
