"""Store connections on Firestore.

``clients/{client}/store_connection/current`` holds the client's one connection; ``store_shops/{key}``
maps a shop to the client whose connection holds it (Shopify webhooks name the shop, not the client);
``store_oauth_states/{sha256 of nonce}`` are single-use states; ``store_webhook_deliveries/{key}`` the
delivery ids already seen (``expires_at`` for a TTL policy); ``store_redactions/{id}`` records what
shop/redact erased.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from shared.adapters.firestore.outbox import write_events
from shared.catalog.ports import StaleWrite, Versioned
from shared.errors import UpstreamUnavailable
from shared.events.model import DomainEvent
from shared.events.outbox import EventKicker, NoKick
from shared.ids import new_id
from shared.stores.models import OAuthStateDoc, ShopRedaction, StoreConnectionDoc
from shared.stores.ports import StorePlatform
from shared.stores.repository import ShopTaken, StoreRepository

if TYPE_CHECKING:
    from google.cloud.firestore import Client

CONNECTION = "store_connection"
CURRENT = "current"
SHOPS = "store_shops"
STATES = "store_oauth_states"
DELIVERIES = "store_webhook_deliveries"
REDACTIONS = "store_redactions"


def shop_key(platform: StorePlatform, shop: str) -> str:
    return f"{platform.value}-{hashlib.sha256(shop.encode()).hexdigest()[:40]}"


def _stored(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="python")
    if isinstance(value, dict):
        return {key: _stored(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_stored(item) for item in value]
    return value


class FirestoreStoreRepository(StoreRepository):
    def __init__(self, db: Client, kicker: EventKicker | None = None) -> None:
        self.db = db
        self.kicker = kicker or NoKick()

    def _ref(self, client_id: str) -> Any:
        return self.db.collection("clients").document(client_id).collection(CONNECTION).document(CURRENT)

    def load(self, client_id: str) -> Versioned[StoreConnectionDoc] | None:
        snapshot = self._ref(client_id).get()
        if not snapshot.exists:
            return None
        return Versioned(StoreConnectionDoc.model_validate(snapshot.to_dict()), snapshot.update_time)

    def owner_of(self, platform: StorePlatform, shop: str) -> str | None:
        snapshot = self.db.collection(SHOPS).document(shop_key(platform, shop)).get()
        if not snapshot.exists:
            return None
        return str((snapshot.to_dict() or {}).get("client_id") or "") or None

    def save(
        self,
        doc: StoreConnectionDoc,
        previous: Versioned[StoreConnectionDoc] | None,
        events: Sequence[DomainEvent] = (),
    ) -> None:
        from google.api_core.exceptions import Aborted
        from google.cloud import firestore

        ref = self._ref(doc.client_id)
        index = self.db.collection(SHOPS).document(shop_key(doc.platform, doc.shop))

        @firestore.transactional  # type: ignore[untyped-decorator]
        def apply(transaction: Any) -> None:
            current = ref.get(transaction=transaction)
            claimed = index.get(transaction=transaction)
            if previous is None and current.exists:
                raise StaleWrite()
            if previous is not None and (not current.exists or current.update_time != previous.version):
                raise StaleWrite()
            holder = (claimed.to_dict() or {}).get("client_id") if claimed.exists else None
            if holder and holder != doc.client_id:
                other = self._ref(holder).get(transaction=transaction)
                other_doc = StoreConnectionDoc.model_validate(other.to_dict()) if other.exists else None
                if other_doc is not None and other_doc.shop == doc.shop and other_doc.status.value != "disconnected":
                    raise ShopTaken(holder)
            if previous is not None and previous.value.shop != doc.shop:
                old = self.db.collection(SHOPS).document(shop_key(previous.value.platform, previous.value.shop))
                transaction.delete(old)
            transaction.set(ref, doc.model_dump(mode="python"))
            transaction.set(index, {"client_id": doc.client_id, "connection_id": doc.id, "shop": doc.shop})
            write_events(self.db, transaction, list(events))

        try:
            apply(self.db.transaction())
        except Aborted as exc:
            raise StaleWrite() from exc
        self.kicker.kick(list(events))

    def update(
        self, loaded: Versioned[StoreConnectionDoc], changes: dict[str, Any], events: Sequence[DomainEvent] = ()
    ) -> None:
        from google.api_core.exceptions import Aborted, FailedPrecondition
        from google.api_core.exceptions import NotFound as GNotFound

        batch = self.db.batch()
        batch.update(
            self._ref(loaded.value.client_id),
            _stored(changes),
            option=self.db.write_option(last_update_time=loaded.version),
        )
        write_events(self.db, batch, list(events))
        try:
            batch.commit()
        except (FailedPrecondition, GNotFound, Aborted) as exc:
            raise StaleWrite() from exc
        self.kicker.kick(list(events))

    def touch(self, client_id: str, changes: dict[str, Any]) -> None:
        from google.api_core.exceptions import NotFound as GNotFound

        try:
            self._ref(client_id).update(_stored(changes))
        except GNotFound:
            return

    def erase(self, client_id: str, platform: StorePlatform, shop: str, redaction: ShopRedaction) -> None:
        batch = self.db.batch()
        if client_id:  # shop/redact for a shop no client holds names no client ("" is no document id)
            ref = self._ref(client_id)
            snapshot = ref.get()
            if snapshot.exists and (snapshot.to_dict() or {}).get("shop") == shop:
                batch.delete(ref)
        batch.delete(self.db.collection(SHOPS).document(shop_key(platform, shop)))
        batch.set(self.db.collection(REDACTIONS).document(new_id("redact")), redaction.model_dump(mode="python"))
        batch.commit()

    def connections(self, platform: StorePlatform | None = None) -> Iterator[StoreConnectionDoc]:
        from google.cloud.firestore import FieldFilter

        query: Any = self.db.collection_group(CONNECTION)
        if platform is not None:
            query = query.where(filter=FieldFilter("platform", "==", platform.value))
        for snapshot in query.stream():
            parts = snapshot.reference.path.split("/")
            if len(parts) == 4 and parts[0] == "clients":
                yield StoreConnectionDoc.model_validate(snapshot.to_dict())

    def create_state(self, key: str, doc: OAuthStateDoc) -> None:
        self.db.collection(STATES).document(key).create(doc.model_dump(mode="python"))

    def consume_state(self, key: str, now: datetime) -> OAuthStateDoc | None:
        from google.api_core.exceptions import Aborted, FailedPrecondition
        from google.api_core.exceptions import NotFound as GNotFound

        ref = self.db.collection(STATES).document(key)
        # An update guarded by the read's update_time, not a read-modify-write transaction (which collapses
        # when callbacks race on one document): exactly one guarded write lands; the others read it used.
        for _attempt in range(20):
            snapshot = ref.get()
            if not snapshot.exists:
                return None
            state = OAuthStateDoc.model_validate(snapshot.to_dict())
            if state.used_at is not None or state.expires_at <= now:
                return None
            try:
                ref.update({"used_at": now}, option=self.db.write_option(last_update_time=snapshot.update_time))
            except (FailedPrecondition, Aborted, GNotFound):
                continue  # another callback wrote it first: read what it left
            return state
        # Still unused: the caller may try again (never refused as a replay it is not).
        raise UpstreamUnavailable("The connection request is busy; try again", retry_after=1)

    def first_delivery(self, platform: StorePlatform, webhook_id: str, now: datetime, keep_until: datetime) -> bool:
        from google.api_core.exceptions import AlreadyExists

        try:
            self._delivery(platform, webhook_id).create({"received_at": now, "expires_at": keep_until})
        except AlreadyExists:
            return False
        return True

    def forget_delivery(self, platform: StorePlatform, webhook_id: str) -> None:
        self._delivery(platform, webhook_id).delete()

    def _delivery(self, platform: StorePlatform, webhook_id: str) -> Any:
        key = f"{platform.value}-{hashlib.sha256(webhook_id.encode()).hexdigest()[:40]}"
        return self.db.collection(DELIVERIES).document(key)
