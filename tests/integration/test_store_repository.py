"""Store connections on the Firestore emulator: guarded saves and updates, the shop index that keeps
one live connection per shop, single-use OAuth states under concurrency, delivery dedupe, shop/redact's
erase, the connections listing, and the product queries that find store-linked products."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.adapters.firestore.catalog import FirestoreProductRepository
from shared.adapters.firestore.outbox import OUTBOX
from shared.adapters.firestore.stores import REDACTIONS, FirestoreStoreRepository
from shared.catalog.models import ProductCreate, ProductDoc, ProductSource
from shared.catalog.ports import StaleWrite
from shared.catalog.products import build_product, create_products
from shared.catalog.store_link import StoreLink, StoreLinkStatus
from shared.events.model import EventType, StoreChanged, Subject, new_event
from shared.stores.models import ConnectionStatus, OAuthStateDoc, ShopRedaction, StoreConnectionDoc
from shared.stores.ports import StorePlatform
from shared.stores.repository import ShopTaken

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def repo(db: Any) -> FirestoreStoreRepository:
    return FirestoreStoreRepository(db)


@pytest.fixture
def shop() -> str:
    return f"s{uuid.uuid4().hex[:12]}.myshopify.com"


def connection(client_id: str, shop: str, **fields: Any) -> StoreConnectionDoc:
    values: dict[str, Any] = {
        "id": "store_" + uuid.uuid4().hex[:8],
        "client_id": client_id,
        "platform": StorePlatform.SHOPIFY,
        "shop": shop,
        "connected_at": NOW,
        "updated_at": NOW,
        **fields,
    }
    return StoreConnectionDoc(**values)


def connected_event(doc: StoreConnectionDoc) -> Any:
    return new_event(
        doc.client_id,
        EventType.STORE_CONNECTED,
        Subject(kind="store", id=doc.id),
        StoreChanged(store_id=doc.id, platform=doc.platform.value),
        occurred_at=NOW,
    )


def test_save_load_and_guarded_updates(repo: FirestoreStoreRepository, db: Any, client_id: str, shop: str) -> None:
    assert repo.load(client_id) is None
    doc = connection(client_id, shop, scopes=["read_products"])
    event = connected_event(doc)
    repo.save(doc, None, [event])
    loaded = repo.load(client_id)
    assert loaded is not None and loaded.value == doc
    assert repo.owner_of(StorePlatform.SHOPIFY, shop) == client_id
    assert db.collection(OUTBOX).document(event.id).get().exists
    with pytest.raises(StaleWrite):
        repo.save(connection(client_id, shop), None)  # a first connection when one exists

    repo.update(loaded, {"status": ConnectionStatus.NEEDS_REAUTH.value, "secrets_version": 2, "updated_at": NOW})
    with pytest.raises(StaleWrite):
        repo.update(loaded, {"status_reason": "late"})  # over the version that changed since
    fresh = repo.load(client_id)
    assert (
        fresh is not None and fresh.value.status is ConnectionStatus.NEEDS_REAUTH and fresh.value.secrets_version == 2
    )
    with pytest.raises(StaleWrite):
        repo.save(connection(client_id, shop), loaded)  # a save over a stale version
    repo.touch(client_id, {"last_webhook_at": NOW + timedelta(minutes=1)})
    touched = repo.load(client_id)
    assert touched is not None and touched.value.last_webhook_at == NOW + timedelta(minutes=1)
    repo.touch("c-nobody-" + uuid.uuid4().hex[:6], {"last_webhook_at": NOW})  # a missing connection: left alone


def test_a_shop_held_live_by_another_client_cannot_be_taken(
    repo: FirestoreStoreRepository, client_id: str, other_client_id: str, shop: str
) -> None:
    theirs = connection(other_client_id, shop)
    repo.save(theirs, None)
    with pytest.raises(ShopTaken) as taken:
        repo.save(connection(client_id, shop), None)
    assert taken.value.client_id == other_client_id and repo.load(client_id) is None
    # Once their connection is disconnected the shop is free.
    loaded = repo.load(other_client_id)
    assert loaded is not None
    repo.update(loaded, {"status": ConnectionStatus.DISCONNECTED.value})
    repo.save(connection(client_id, shop), None)
    assert repo.owner_of(StorePlatform.SHOPIFY, shop) == client_id


def test_connecting_another_shop_releases_the_old_one(
    repo: FirestoreStoreRepository, client_id: str, shop: str
) -> None:
    repo.save(connection(client_id, shop), None)
    loaded = repo.load(client_id)
    assert loaded is not None
    other_shop = "n" + shop
    repo.save(connection(client_id, other_shop), loaded)
    assert repo.owner_of(StorePlatform.SHOPIFY, shop) is None
    assert repo.owner_of(StorePlatform.SHOPIFY, other_shop) == client_id


def test_a_state_is_consumed_once_by_one_of_eight_threads(repo: FirestoreStoreRepository, client_id: str) -> None:
    key = uuid.uuid4().hex
    state = OAuthStateDoc(
        client_id=client_id,
        platform=StorePlatform.SHOPIFY,
        shop="a.myshopify.com",
        created_at=NOW,
        expires_at=NOW + timedelta(minutes=10),
    )
    repo.create_state(key, state)
    barrier = threading.Barrier(8)
    won: list[OAuthStateDoc] = []
    errors: list[BaseException] = []

    def consume() -> None:
        barrier.wait()
        try:
            result = repo.consume_state(key, NOW)
        except BaseException as error:  # reported by the assertion below
            errors.append(error)
            return
        if result is not None:
            won.append(result)

    threads = [threading.Thread(target=consume) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(won) == 1 and won[0].client_id == client_id
    assert repo.consume_state(key, NOW) is None


def test_unknown_and_expired_states_are_refused(repo: FirestoreStoreRepository, client_id: str) -> None:
    assert repo.consume_state(uuid.uuid4().hex, NOW) is None
    key = uuid.uuid4().hex
    expired = OAuthStateDoc(
        client_id=client_id,
        platform=StorePlatform.WOOCOMMERCE,
        shop="https://shop.example",
        created_at=NOW - timedelta(minutes=20),
        expires_at=NOW - timedelta(minutes=10),
    )
    repo.create_state(key, expired)
    assert repo.consume_state(key, NOW) is None


def test_a_delivery_is_recorded_once_and_can_be_forgotten(repo: FirestoreStoreRepository) -> None:
    webhook_id = uuid.uuid4().hex
    keep = NOW + timedelta(days=2)
    assert repo.first_delivery(StorePlatform.SHOPIFY, webhook_id, NOW, keep)
    assert not repo.first_delivery(StorePlatform.SHOPIFY, webhook_id, NOW, keep)
    assert repo.first_delivery(StorePlatform.WOOCOMMERCE, webhook_id, NOW, keep)  # per platform
    repo.forget_delivery(StorePlatform.SHOPIFY, webhook_id)
    assert repo.first_delivery(StorePlatform.SHOPIFY, webhook_id, NOW, keep)


def _redaction(client_id: str | None, shop: str) -> ShopRedaction:
    return ShopRedaction(
        platform=StorePlatform.SHOPIFY,
        shop=shop,
        client_id=client_id,
        erased={"connections": 1},
        requested_at=NOW,
        done_at=NOW,
    )


def test_erase_deletes_the_connection_and_the_index_and_records_the_redaction(
    repo: FirestoreStoreRepository, db: Any, client_id: str, shop: str
) -> None:
    repo.save(connection(client_id, shop), None)
    repo.erase(client_id, StorePlatform.SHOPIFY, shop, _redaction(client_id, shop))
    assert repo.load(client_id) is None and repo.owner_of(StorePlatform.SHOPIFY, shop) is None
    from google.cloud.firestore import FieldFilter

    found = list(db.collection(REDACTIONS).where(filter=FieldFilter("shop", "==", shop)).stream())
    assert [snapshot.to_dict()["client_id"] for snapshot in found] == [client_id]


def test_erase_leaves_a_connection_to_another_shop(repo: FirestoreStoreRepository, client_id: str, shop: str) -> None:
    repo.save(connection(client_id, shop), None)
    repo.erase(client_id, StorePlatform.SHOPIFY, "other-" + shop, _redaction(client_id, "other-" + shop))
    assert repo.load(client_id) is not None


def test_erase_of_a_shop_no_client_holds_records_the_redaction(
    repo: FirestoreStoreRepository, db: Any, shop: str
) -> None:
    # shop/redact for a shop we never knew: the service passes no client (an empty id).
    repo.erase("", StorePlatform.SHOPIFY, shop, _redaction(None, shop))
    from google.cloud.firestore import FieldFilter

    found = list(db.collection(REDACTIONS).where(filter=FieldFilter("shop", "==", shop)).stream())
    assert len(found) == 1


def test_connections_lists_every_client_by_platform(
    repo: FirestoreStoreRepository, client_id: str, other_client_id: str, shop: str
) -> None:
    repo.save(connection(client_id, shop), None)
    woo = connection(other_client_id, "https://" + shop, platform=StorePlatform.WOOCOMMERCE)
    repo.save(woo, None)
    mine = {client_id, other_client_id}
    every = {doc.client_id: doc.platform for doc in repo.connections() if doc.client_id in mine}
    assert every == {client_id: StorePlatform.SHOPIFY, other_client_id: StorePlatform.WOOCOMMERCE}
    woo_only = [doc.client_id for doc in repo.connections(StorePlatform.WOOCOMMERCE) if doc.client_id in mine]
    assert woo_only == [other_client_id]


# -- products linked to a store ------------------------------------------------------------------------


def _linked_product(client_id: str, shop: str, store_id: str, status: StoreLinkStatus) -> ProductDoc:
    doc = build_product(
        client_id,
        ProductCreate(name=f"Product {store_id}"),
        NOW,
        product_id=f"prod_{store_id}",
        source=ProductSource.SHOPIFY,
    )
    link = StoreLink(platform="shopify", shop=shop, product_id=store_id, status=status, synced_at=NOW)
    return doc.model_copy(update={"store": link})


def test_products_are_found_by_their_store_link(db: Any, client_id: str, shop: str) -> None:
    products = FirestoreProductRepository(db)
    docs = [
        _linked_product(client_id, shop, "101", StoreLinkStatus.LINKED),
        _linked_product(client_id, shop, "102", StoreLinkStatus.DELETED_IN_STORE),
        _linked_product(client_id, "other-" + shop, "103", StoreLinkStatus.LINKED),
        build_product(client_id, ProductCreate(name="Manual"), NOW, product_id="prod_manual"),
    ]
    done = create_products(products, client_id, docs, NOW, all_or_nothing=False)
    assert len(done.created) == 4
    found = products.find_linked(client_id, "shopify", "102")
    assert found is not None and found.id == "prod_102" and found.store is not None
    assert found.store.status is StoreLinkStatus.DELETED_IN_STORE
    assert products.find_linked(client_id, "woocommerce", "102") is None
    assert products.find_linked(client_id, "shopify", "999") is None
    assert sorted(p.id for p in products.linked(client_id, 10)) == ["prod_101", "prod_103"]
    assert len(products.linked(client_id, 1)) == 1
    assert sorted(p.id for p in products.from_shop(client_id, shop, 10)) == ["prod_101", "prod_102"]

    # A link changed through update() is stored in a form the queries still match.
    loaded = products.load(client_id, "prod_101")
    assert loaded is not None and loaded.value.store is not None
    unlinked = loaded.value.store.model_copy(update={"status": StoreLinkStatus.UNLINKED})
    products.update(client_id, "prod_101", {"store": unlinked.model_dump(mode="python")}, loaded.version)
    assert [p.id for p in products.linked(client_id, 10)] == ["prod_103"]
    again = products.load(client_id, "prod_101")
    assert again is not None
    products.update(client_id, "prod_101", {"store": None}, again.version)
    assert sorted(p.id for p in products.from_shop(client_id, shop, 10)) == ["prod_102"]


# -- the connection services on Firestore ------------------------------------------------------------------


def _connected_shopify(repo: FirestoreStoreRepository, client_id: str, shop: str) -> tuple[Any, Any, Any]:
    from dev.stubs.shopify import sign_query
    from shared.stores import connections as conn
    from tests.fakes_stores import Clock, FakeShopifyAdmin, new_cipher

    clock = Clock(NOW)
    shopify = FakeShopifyAdmin(clock=clock)
    cipher = new_cipher()
    policy = conn.ConnectionPolicy(callback_base_url="https://api.epox.test", app_url="https://app.epox.test")
    started = conn.start_shopify(repo, shopify, client_id, shop, policy, NOW)
    state = started.authorize_url.split("state=")[1].split("&")[0]
    params = {"code": "c", "shop": shop, "state": state, "timestamp": str(int(NOW.timestamp()))}
    params["hmac"] = sign_query(params, "secret")
    conn.finish_shopify(repo, shopify, cipher, params, "secret", NOW)
    return clock, shopify, (cipher, policy)


def test_two_processes_refresh_a_token_once_on_firestore(
    repo: FirestoreStoreRepository, client_id: str, shop: str
) -> None:
    from shared.stores import connections as conn

    clock, shopify, (cipher, policy) = _connected_shopify(repo, client_id, shop)
    clock.advance(timedelta(minutes=58))
    shopify.refresh_delay = 0.3
    # A webhook records its arrival while the refresh is at Shopify (the version moves under it).
    shopify.during_refresh.append(lambda: repo.touch(client_id, {"last_webhook_at": NOW}))
    barrier = threading.Barrier(2)
    tokens: list[str] = []
    errors: list[BaseException] = []

    def call() -> None:
        barrier.wait()
        try:
            tokens.append(conn.shopify_token(repo, shopify, cipher, client_id, policy, clock, sleep=time.sleep)[1])
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == [] and tokens == ["shpat_0002", "shpat_0002"] and shopify.refresh_calls == 1
    loaded = repo.load(client_id)
    assert loaded is not None and loaded.value.secrets_version == 1 and loaded.value.refresh_lease_until is None


def test_a_refused_refresh_is_recorded_with_its_event_on_firestore(
    repo: FirestoreStoreRepository, db: Any, client_id: str, shop: str
) -> None:
    from google.cloud.firestore import FieldFilter

    from shared.stores import connections as conn

    clock, shopify, (cipher, policy) = _connected_shopify(repo, client_id, shop)
    clock.advance(timedelta(hours=2))
    shopify.refuse_refresh = True
    with pytest.raises(conn.StoreNeedsReauthorization):
        conn.shopify_token(repo, shopify, cipher, client_id, policy, clock)
    loaded = repo.load(client_id)
    assert loaded is not None and loaded.value.status is ConnectionStatus.NEEDS_REAUTH and loaded.value.secrets is None
    events = db.collection(OUTBOX).where(filter=FieldFilter("client_id", "==", client_id)).stream()
    assert sorted(snapshot.to_dict()["type"] for snapshot in events) == [
        "store.connected",
        "store.needs_reauthorization",
    ]
