"""Connecting stores against in-memory fakes: Shopify OAuth (domains, HMAC, single-use states), sealed
tokens that refresh with rotation exactly once under concurrency, WooCommerce wc-auth keys and webhooks,
disconnecting, and what the API may show."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from dev.stubs.shopify import sign_query
from shared.credentials import CredentialsUnreadable
from shared.errors import NotFound
from shared.stores import connections as conn
from shared.stores.models import ConnectionStatus, StoreConnectionDoc, WooCommerceKeys
from shared.stores.ports import StoreAuthorizationLost, StoreNotReachable, StorePlatform, StoreUnavailable
from tests.fakes_stores import (
    Clock,
    FakeShopifyAdmin,
    FakeWooCommerce,
    InMemoryStoreRepository,
    new_cipher,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SECRET = "shpss_app_secret"
SHOP = "demo-shop.myshopify.com"
CLIENT = "client_a"
OTHER = "client_b"
POLICY = conn.ConnectionPolicy(
    callback_base_url="https://api.epox.test/store",
    app_url="https://app.epox.test",
    webhook_base_url="https://hooks.epox.test/store/",
)
STORE_URL = "https://shop.example"


def _state(url: str, name: str = "state") -> str:
    return parse_qs(urlsplit(url).query)[name][0]


def callback(state: str, shop: str = SHOP, when: datetime = NOW, code: str = "code-1") -> dict[str, str]:
    params = {"code": code, "shop": shop, "state": state, "timestamp": str(int(when.timestamp())), "host": "aG9zdA"}
    params["hmac"] = sign_query(params, SECRET)
    return params


class World:
    def __init__(self) -> None:
        self.repo = InMemoryStoreRepository()
        self.clock = Clock(NOW)
        self.shopify = FakeShopifyAdmin(clock=self.clock)
        self.woo = FakeWooCommerce()
        self.cipher = new_cipher()

    def connect_shopify(self, client: str = CLIENT, shop: str = SHOP) -> StoreConnectionDoc:
        started = conn.start_shopify(self.repo, self.shopify, client, shop, POLICY, self.clock())
        state = _state(started.authorize_url)
        return conn.finish_shopify(
            self.repo, self.shopify, self.cipher, callback(state, shop, self.clock()), SECRET, self.clock()
        )

    def start_woo(self, client: str = CLIENT, url: str = STORE_URL) -> str:
        started = conn.start_woocommerce(self.repo, self.woo, client, url, POLICY, self.clock())
        return _state(started.authorize_url, "user_id")

    def keys(self, nonce: str, permissions: str = "read_write") -> WooCommerceKeys:
        return WooCommerceKeys(
            key_id=7,
            user_id=nonce,
            consumer_key="ck_" + "a" * 40,
            consumer_secret="cs_" + "b" * 40,
            key_permissions=permissions,
        )

    def connect_woo(self, client: str = CLIENT) -> StoreConnectionDoc:
        nonce = self.start_woo(client)
        return conn.finish_woocommerce(self.repo, self.woo, self.cipher, self.keys(nonce), POLICY, self.clock())

    def stored(self, client: str = CLIENT) -> StoreConnectionDoc:
        loaded = self.repo.load(client)
        assert loaded is not None
        return loaded.value


@pytest.fixture
def world() -> World:
    return World()


# -- Shopify: starting ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shop",
    [
        "evil.com",
        "x.myshopify.com.evil.com",
        "myshopify.com",
        ".myshopify.com",
        "-shop.myshopify.com",
        "shop.myshopify.com/",
        "https://shop.myshopify.com",
        "sh op.myshopify.com",
        "a.b.myshopify.com",
        "",
    ],
)
def test_a_shop_that_is_not_a_myshopify_domain_is_refused(world: World, shop: str) -> None:
    with pytest.raises(conn.InvalidShopDomain):
        conn.start_shopify(world.repo, world.shopify, CLIENT, shop, POLICY, NOW)
    assert world.repo.states == {}


def test_starting_normalises_the_shop_and_keeps_a_hashed_single_use_state(world: World) -> None:
    started = conn.start_shopify(world.repo, world.shopify, CLIENT, "  Demo-Shop.MyShopify.COM ", POLICY, NOW)
    assert urlsplit(started.authorize_url).hostname == SHOP
    nonce = _state(started.authorize_url)
    assert list(world.repo.states) == [conn.state_key(nonce)]  # stored under its hash, never the nonce
    state = world.repo.states[conn.state_key(nonce)]
    assert (state.client_id, state.shop, state.platform) == (CLIENT, SHOP, StorePlatform.SHOPIFY)
    assert started.expires_at == NOW + POLICY.state_ttl
    assert "https://api.epox.test/store/oauth/shopify/callback" in started.authorize_url


def test_one_store_per_client(world: World) -> None:
    world.connect_shopify()
    with pytest.raises(conn.StoreAlreadyConnected):
        conn.start_shopify(world.repo, world.shopify, CLIENT, "other-shop.myshopify.com", POLICY, NOW)
    with pytest.raises(conn.StoreAlreadyConnected):
        world.start_woo()
    # The same shop again (reinstalling) is allowed.
    conn.start_shopify(world.repo, world.shopify, CLIENT, SHOP, POLICY, NOW)


def test_a_shop_connected_to_another_client_cannot_be_taken(world: World) -> None:
    world.connect_shopify(OTHER)
    with pytest.raises(conn.ShopConnectedElsewhere):
        conn.start_shopify(world.repo, world.shopify, CLIENT, SHOP, POLICY, NOW)


def test_a_shop_taken_between_start_and_callback_is_refused_at_the_callback(world: World) -> None:
    started = conn.start_shopify(world.repo, world.shopify, CLIENT, SHOP, POLICY, NOW)
    world.connect_shopify(OTHER)
    params = callback(_state(started.authorize_url))
    with pytest.raises(conn.ShopConnectedElsewhere):
        conn.finish_shopify(world.repo, world.shopify, world.cipher, params, SECRET, NOW)
    assert world.repo.load(CLIENT) is None


def test_a_shop_released_by_a_disconnect_can_be_connected_by_another_client(world: World) -> None:
    world.connect_shopify(OTHER)
    conn.disconnect(world.repo, lambda: world.woo, world.cipher, OTHER, NOW)
    doc = world.connect_shopify(CLIENT)
    assert world.repo.owner_of(StorePlatform.SHOPIFY, SHOP) == CLIENT
    assert doc.status is ConnectionStatus.ACTIVE


# -- Shopify: the callback ---------------------------------------------------------------------------


def _started(world: World) -> str:
    return _state(conn.start_shopify(world.repo, world.shopify, CLIENT, SHOP, POLICY, NOW).authorize_url)


@pytest.mark.parametrize("tamper", ["missing", "wrong", "altered_param", "wrong_secret"])
def test_a_callback_without_a_valid_hmac_is_refused(world: World, tamper: str) -> None:
    params = callback(_started(world))
    if tamper == "missing":
        del params["hmac"]
    elif tamper == "wrong":
        params["hmac"] = "0" * 64
    elif tamper == "altered_param":
        params["code"] = "another-code"
    else:
        params["hmac"] = sign_query({k: v for k, v in params.items() if k != "hmac"}, "not-the-secret")
    with pytest.raises(conn.InvalidCallbackSignature):
        conn.finish_shopify(world.repo, world.shopify, world.cipher, params, SECRET, NOW)
    assert world.shopify.exchanges == 0 and world.repo.load(CLIENT) is None


def test_an_uppercase_hmac_is_accepted(world: World) -> None:
    params = callback(_started(world))
    params["hmac"] = params["hmac"].upper()
    doc = conn.finish_shopify(world.repo, world.shopify, world.cipher, params, SECRET, NOW)
    assert doc.shop == SHOP


@pytest.mark.parametrize("age", [timedelta(minutes=11), timedelta(minutes=-11)])
def test_a_stale_or_future_timestamp_is_refused(world: World, age: timedelta) -> None:
    params = callback(_started(world), when=NOW - age)
    with pytest.raises(conn.InvalidCallbackSignature):
        conn.finish_shopify(world.repo, world.shopify, world.cipher, params, SECRET, NOW)


def test_a_replayed_state_is_refused(world: World) -> None:
    params = callback(_started(world))
    conn.finish_shopify(world.repo, world.shopify, world.cipher, params, SECRET, NOW)
    with pytest.raises(conn.OAuthStateRefused):
        conn.finish_shopify(world.repo, world.shopify, world.cipher, params, SECRET, NOW)
    assert world.shopify.exchanges == 1


def test_a_state_for_another_shop_is_refused(world: World) -> None:
    params = callback(_started(world), shop="other-shop.myshopify.com")
    with pytest.raises(conn.OAuthStateRefused):
        conn.finish_shopify(world.repo, world.shopify, world.cipher, params, SECRET, NOW)
    assert world.shopify.exchanges == 0


def test_an_unknown_or_expired_state_is_refused(world: World) -> None:
    with pytest.raises(conn.OAuthStateRefused):
        conn.finish_shopify(world.repo, world.shopify, world.cipher, callback("forged"), SECRET, NOW)
    later = NOW + POLICY.state_ttl + timedelta(seconds=1)
    params = callback(_started(world), when=later)
    with pytest.raises(conn.OAuthStateRefused):
        conn.finish_shopify(world.repo, world.shopify, world.cipher, params, SECRET, later)


def test_a_callback_naming_an_invalid_shop_is_refused(world: World) -> None:
    params = callback(_started(world), shop="evil.com")
    with pytest.raises(conn.OAuthStateRefused):
        conn.finish_shopify(world.repo, world.shopify, world.cipher, params, SECRET, NOW)


# -- Shopify: tokens -------------------------------------------------------------------------------


def test_tokens_are_stored_sealed_and_the_connection_is_announced(world: World) -> None:
    doc = world.connect_shopify()
    stored = world.stored()
    dumped = stored.model_dump_json()
    assert "shpat_0001" not in dumped and "shprt_0001" not in dumped
    assert stored.secrets is not None and stored.secrets.ciphertext
    plain = conn.open_secrets(world.cipher, stored)
    assert plain.access_token is not None and plain.access_token.get_secret_value() == "shpat_0001"
    assert (stored.scopes, stored.access_expires_at) == (["read_products", "write_products"], NOW + timedelta(hours=1))
    assert world.repo.event_types() == ["store.connected"]
    assert world.repo.events[0].subject.id == doc.id
    # The sealed secrets are bound to the connection: copied to another record they do not open.
    moved = stored.model_copy(update={"id": "store_other"})
    with pytest.raises(CredentialsUnreadable):
        conn.open_secrets(world.cipher, moved)


def test_a_fresh_token_is_used_as_it_is(world: World) -> None:
    world.connect_shopify()
    doc, token = conn.shopify_token(world.repo, world.shopify, world.cipher, CLIENT, POLICY, world.clock)
    assert token == "shpat_0001" and world.shopify.refresh_calls == 0 and doc.secrets_version == 0


def test_a_token_near_its_expiry_is_refreshed_and_the_refresh_token_rotates(world: World) -> None:
    world.connect_shopify()
    world.clock.advance(timedelta(minutes=56))  # 4 minutes left: inside the 5-minute margin
    doc, token = conn.shopify_token(world.repo, world.shopify, world.cipher, CLIENT, POLICY, world.clock)
    assert token == "shpat_0002" and world.shopify.refresh_calls == 1
    stored = world.stored()
    assert stored.secrets_version == doc.secrets_version == 1
    assert stored.access_expires_at == world.clock() + timedelta(hours=1)
    assert stored.refresh_lease_until is None
    plain = conn.open_secrets(world.cipher, stored)
    assert plain.refresh_token is not None and plain.refresh_token.get_secret_value() == "shprt_0002"
    assert "shpat_0002" not in stored.model_dump_json()
    # The next refresh uses the rotated token (the fake refuses a used one).
    world.clock.advance(timedelta(minutes=56))
    _, third = conn.shopify_token(world.repo, world.shopify, world.cipher, CLIENT, POLICY, world.clock)
    assert third == "shpat_0003" and world.stored().secrets_version == 2


def test_two_callers_at_once_refresh_exactly_once(world: World) -> None:
    world.connect_shopify()
    world.clock.advance(timedelta(minutes=58))
    world.shopify.refresh_delay = 0.1
    barrier = threading.Barrier(2)
    tokens: list[str] = []
    errors: list[BaseException] = []

    def call() -> None:
        barrier.wait()
        try:
            _, token = conn.shopify_token(
                world.repo, world.shopify, world.cipher, CLIENT, POLICY, world.clock, sleep=lambda s: time.sleep(0.01)
            )
            tokens.append(token)
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert errors == []
    assert world.shopify.refresh_calls == 1
    assert tokens == ["shpat_0002", "shpat_0002"]
    assert world.stored().secrets_version == 1


def test_a_caller_gives_up_on_a_lease_held_too_long(world: World) -> None:
    world.connect_shopify()
    world.clock.advance(timedelta(minutes=58))
    loaded = world.repo.load(CLIENT)
    assert loaded is not None
    world.repo.update(loaded, {"refresh_lease_until": world.clock() + timedelta(seconds=30)})
    naps: list[float] = []
    with pytest.raises(StoreUnavailable):
        conn.shopify_token(
            world.repo, world.shopify, world.cipher, CLIENT, POLICY, world.clock, sleep=naps.append, wait_for_other=1.0
        )
    assert world.shopify.refresh_calls == 0 and sum(naps) == 1.0


def test_a_bookkeeping_write_during_a_refresh_does_not_lose_the_new_tokens(world: World) -> None:
    world.connect_shopify()
    world.clock.advance(timedelta(minutes=58))
    # A webhook task records its arrival while the refresh is at Shopify: the version moves.
    world.shopify.during_refresh.append(lambda: world.repo.touch(CLIENT, {"last_webhook_at": world.clock()}))
    _, token = conn.shopify_token(world.repo, world.shopify, world.cipher, CLIENT, POLICY, world.clock)
    stored = world.stored()
    assert token == "shpat_0002" and stored.secrets_version == 1 and stored.refresh_lease_until is None
    assert stored.last_webhook_at == world.clock()
    plain = conn.open_secrets(world.cipher, stored)
    assert plain.refresh_token is not None and plain.refresh_token.get_secret_value() == "shprt_0002"


def test_a_disconnect_during_a_refresh_is_not_overwritten(world: World) -> None:
    world.connect_shopify()
    world.clock.advance(timedelta(minutes=58))
    world.shopify.during_refresh.append(
        lambda: conn.disconnect(world.repo, lambda: world.woo, world.cipher, CLIENT, NOW)
    )
    # A 409 (never a 500): the merchant disconnected while the token was being refreshed.
    with pytest.raises(conn.StoreNotConnected):
        conn.shopify_token(world.repo, world.shopify, world.cipher, CLIENT, POLICY, world.clock)
    stored = world.stored()
    assert stored.status is ConnectionStatus.DISCONNECTED and stored.secrets is None


def test_a_bookkeeping_write_during_a_refused_refresh_still_marks_it(world: World) -> None:
    world.connect_shopify()
    world.clock.advance(timedelta(hours=2))
    world.shopify.refuse_refresh = True
    world.shopify.during_refresh.append(lambda: world.repo.touch(CLIENT, {"last_webhook_at": world.clock()}))
    with pytest.raises(conn.StoreNeedsReauthorization):
        conn.shopify_token(world.repo, world.shopify, world.cipher, CLIENT, POLICY, world.clock)
    assert world.stored().status is ConnectionStatus.NEEDS_REAUTH and world.stored().secrets is None


def test_a_refused_refresh_needs_reauthorization_and_drops_the_secrets(world: World) -> None:
    world.connect_shopify()
    world.clock.advance(timedelta(hours=2))
    world.shopify.refuse_refresh = True
    with pytest.raises(conn.StoreNeedsReauthorization):
        conn.shopify_token(world.repo, world.shopify, world.cipher, CLIENT, POLICY, world.clock)
    stored = world.stored()
    assert stored.status is ConnectionStatus.NEEDS_REAUTH and stored.secrets is None
    assert stored.status_reason and stored.refresh_lease_until is None
    assert world.repo.event_types() == ["store.connected", "store.needs_reauthorization"]
    with pytest.raises(conn.StoreNeedsReauthorization):
        conn.live_connection(world.repo, CLIENT)
    out = conn.connection_out(stored, None)
    assert out.health.value == "needs_reauth"


def test_an_unavailable_refresh_releases_the_lease(world: World) -> None:
    world.connect_shopify()
    world.clock.advance(timedelta(hours=2))
    world.shopify.unavailable = True
    with pytest.raises(StoreUnavailable):
        conn.shopify_token(world.repo, world.shopify, world.cipher, CLIENT, POLICY, world.clock)
    stored = world.stored()
    assert stored.status is ConnectionStatus.ACTIVE and stored.refresh_lease_until is None
    world.shopify.unavailable = False
    _, token = conn.shopify_token(world.repo, world.shopify, world.cipher, CLIENT, POLICY, world.clock)
    assert token == "shpat_0002"


# -- WooCommerce -----------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://shop.example", "https://127.0.0.1", "https://localhost:8443"])
def test_a_store_url_the_adapter_refuses_is_refused(world: World, url: str) -> None:
    with pytest.raises(StoreNotReachable):
        world.start_woo(url=url)
    assert world.repo.states == {}


def test_woocommerce_start_binds_the_nonce_to_the_client_and_store(world: World) -> None:
    nonce = world.start_woo(url="https://Shop.Example/")
    assert len(nonce) >= 16
    state = world.repo.states[conn.state_key(nonce)]
    assert (state.client_id, state.shop, state.platform) == (CLIENT, STORE_URL, StorePlatform.WOOCOMMERCE)


def test_woocommerce_connects_with_tested_keys_and_webhooks_with_our_secret(world: World) -> None:
    doc = world.connect_woo()
    stored = world.stored()
    assert stored.status is ConnectionStatus.ACTIVE and stored.shop == STORE_URL
    assert sorted(hook.topic for hook in world.woo.hooks.values()) == sorted(conn.WOO_TOPICS)
    assert sorted(stored.webhook_ids) == sorted(world.woo.hooks)
    plain = conn.open_secrets(world.cipher, stored)
    assert plain.webhook_secret is not None
    assert set(world.woo.hook_secrets.values()) == {plain.webhook_secret.get_secret_value()}
    delivery = {hook.delivery_url for hook in world.woo.hooks.values()}
    assert delivery == {f"https://hooks.epox.test/store/webhooks/woocommerce/{CLIENT}/{doc.id}"}
    dumped = stored.model_dump_json()
    assert "ck_" + "a" * 40 not in dumped and "cs_" + "b" * 40 not in dumped
    assert plain.webhook_secret.get_secret_value() not in dumped
    assert world.repo.event_types() == ["store.connected"]


def test_unknown_or_used_nonces_are_refused(world: World) -> None:
    with pytest.raises(conn.OAuthStateRefused):
        conn.finish_woocommerce(world.repo, world.woo, world.cipher, world.keys("x" * 32), POLICY, NOW)
    nonce = world.start_woo()
    conn.finish_woocommerce(world.repo, world.woo, world.cipher, world.keys(nonce), POLICY, NOW)
    with pytest.raises(conn.OAuthStateRefused):
        conn.finish_woocommerce(world.repo, world.woo, world.cipher, world.keys(nonce), POLICY, NOW)


def test_a_shopify_nonce_does_not_finish_a_woocommerce_connection(world: World) -> None:
    nonce = _started(world)
    with pytest.raises(conn.OAuthStateRefused):
        conn.finish_woocommerce(world.repo, world.woo, world.cipher, world.keys(nonce), POLICY, NOW)


def test_read_only_keys_are_refused(world: World) -> None:
    nonce = world.start_woo()
    with pytest.raises(conn.OAuthStateRefused):
        conn.finish_woocommerce(world.repo, world.woo, world.cipher, world.keys(nonce, "read"), POLICY, NOW)
    assert world.repo.load(CLIENT) is None


def test_keys_that_do_not_work_keep_nothing(world: World) -> None:
    nonce = world.start_woo()
    world.woo.bad_keys = True
    with pytest.raises(StoreAuthorizationLost):
        conn.finish_woocommerce(world.repo, world.woo, world.cipher, world.keys(nonce), POLICY, NOW)
    assert world.repo.load(CLIENT) is None and world.woo.hooks == {}


def test_one_failing_webhook_creation_still_connects(world: World) -> None:
    world.woo.failing_topics = {"product.updated"}
    world.connect_woo()
    stored = world.stored()
    assert stored.status is ConnectionStatus.ACTIVE
    assert len(stored.webhook_ids) == 2
    assert sorted(hook.topic for hook in world.woo.hooks.values()) == ["product.created", "product.deleted"]


# -- disconnecting and what the API shows ------------------------------------------------------------


def test_disconnecting_deletes_webhooks_and_secrets_once(world: World) -> None:
    world.connect_woo()
    hooks = set(world.woo.hooks)
    gone = conn.disconnect(world.repo, lambda: world.woo, world.cipher, CLIENT, NOW)
    assert set(world.woo.deleted_hooks) == hooks and world.woo.hooks == {}
    stored = world.stored()
    assert stored.status is ConnectionStatus.DISCONNECTED and stored.secrets is None and stored.webhook_ids == []
    assert stored.disconnected_at == NOW and gone.status is ConnectionStatus.DISCONNECTED
    assert world.repo.event_types() == ["store.connected", "store.disconnected"]
    again = conn.disconnect(world.repo, lambda: world.woo, world.cipher, CLIENT, NOW + timedelta(minutes=1))
    assert again.disconnected_at == NOW
    assert world.repo.event_types() == ["store.connected", "store.disconnected"]
    with pytest.raises(conn.StoreNotConnected):
        conn.live_connection(world.repo, CLIENT)


def test_disconnecting_goes_on_when_the_store_refuses_the_keys(world: World) -> None:
    world.connect_woo()
    world.woo.bad_keys = True
    conn.disconnect(world.repo, lambda: world.woo, world.cipher, CLIENT, NOW)
    assert world.stored().status is ConnectionStatus.DISCONNECTED


def test_disconnecting_shopify_drops_the_tokens(world: World) -> None:
    world.connect_shopify()
    conn.disconnect(world.repo, lambda: world.woo, world.cipher, CLIENT, NOW)
    assert world.stored().secrets is None
    with pytest.raises(conn.StoreNotConnected):
        conn.shopify_token(world.repo, world.shopify, world.cipher, CLIENT, POLICY, world.clock)


def test_disconnecting_nothing_is_not_found(world: World) -> None:
    with pytest.raises(NotFound):
        conn.disconnect(world.repo, lambda: world.woo, world.cipher, CLIENT, NOW)


def test_the_connection_shown_never_carries_secrets(world: World) -> None:
    world.connect_woo()
    stored = world.stored()
    plain = conn.open_secrets(world.cipher, stored)
    shown = conn.connection_out(stored, None).model_dump_json()
    assert plain.consumer_key is not None and plain.consumer_secret is not None and plain.webhook_secret is not None
    for secret in (plain.consumer_key, plain.consumer_secret, plain.webhook_secret):
        assert secret.get_secret_value() not in shown
    assert "secrets" not in shown and "ciphertext" not in shown
    assert '"webhooks":3' in shown.replace(" ", "")
