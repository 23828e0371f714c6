"""Connecting a store, keeping its credentials fresh and sealed, and letting it go.

Shopify installs use the authorization-code grant: a single-use state nonce bound to the client and the
shop, a callback whose query HMAC and timestamp are checked, and an expiring offline token whose refresh
token rotates on every use. WooCommerce's wc-auth posts the keys unsigned: they are bound to the nonce
we sent as ``user_id`` and tested with one read before anything is kept. Credentials are sealed with
the :class:`~shared.credentials.CredentialCipher` (a data key per connection, bound to its record) and
never logged or returned.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import SecretStr

from shared import logging as log
from shared.catalog.ports import StaleWrite, Versioned
from shared.credentials import CredentialCipher
from shared.errors import Conflict, EpoxError, NotFound, UnprocessableContent
from shared.events.model import DomainEvent, EventType, StoreChanged, Subject, new_event
from shared.ids import new_id
from shared.stores.models import (
    ConnectionOut,
    ConnectionStatus,
    ConnectStarted,
    Health,
    OAuthStateDoc,
    StoreConnectionDoc,
    StoreImportSummary,
    StoreSecrets,
    WooCommerceKeys,
)
from shared.stores.ports import (
    ShopifyAdmin,
    StoreAuthorizationLost,
    StorePlatform,
    StoreUnavailable,
    WooCommerceApi,
    WooKeys,
)
from shared.stores.repository import ShopTaken, StoreRepository
from shared.stores.signatures import shopify_query_is_authentic, valid_shop_domain

logger = log.get_logger("epox.stores.connections")

# The WooCommerce topics we subscribe to (created with our own secret).
WOO_TOPICS = ("product.created", "product.updated", "product.deleted")


@dataclass(frozen=True)
class ConnectionPolicy:
    callback_base_url: str  # where store_oauth is reached from the internet
    app_url: str  # the frontend (the browser lands there after a connection)
    webhook_base_url: str = ""  # where store_webhook is reached (WooCommerce webhooks); default: the callbacks' base
    app_name: str = "Epox"
    state_ttl: timedelta = timedelta(minutes=10)
    # A token this close to its expiry is refreshed before use.
    refresh_margin: timedelta = timedelta(minutes=5)
    # How long one refresh may hold the store's lease (the others wait, then read its result).
    refresh_lease: timedelta = timedelta(seconds=30)

    def url(self, path: str) -> str:
        return self.callback_base_url.rstrip("/") + path


# -- errors ----------------------------------------------------------------------------------------


class InvalidShopDomain(UnprocessableContent):
    code = "invalid_shop_domain"
    title = "The shop must be a {name}.myshopify.com domain"


class StoreAlreadyConnected(Conflict):
    code = "store_already_connected"
    title = "A store is already connected; disconnect it before connecting another"


class ShopConnectedElsewhere(Conflict):
    code = "shop_connected_elsewhere"
    title = "This store is connected to another Epox account"


class InvalidCallbackSignature(EpoxError):
    status = 401
    code = "invalid_signature"
    title = "The callback's signature does not match"


class OAuthStateRefused(EpoxError):
    """An unknown, used, expired or foreign state: a replayed or forged callback."""

    status = 400
    code = "oauth_state_refused"
    title = "The connection request is unknown, used or expired; start again"


class StoreNotConnected(Conflict):
    code = "store_not_connected"
    title = "No store is connected"


class StoreNeedsReauthorization(Conflict):
    code = "store_needs_reauthorization"
    title = "The store no longer accepts our access; connect it again"


# -- helpers ---------------------------------------------------------------------------------------


def state_key(nonce: str) -> str:
    """States are kept under the nonce's hash: a read of the collection yields no usable nonce."""
    return hashlib.sha256(nonce.encode()).hexdigest()


def seal_secrets(cipher: CredentialCipher, doc: StoreConnectionDoc, plain: StoreSecrets) -> StoreConnectionDoc:
    return doc.model_copy(update={"secrets": cipher.seal(plain.to_json(), doc.secrets_context)})


def open_secrets(cipher: CredentialCipher, doc: StoreConnectionDoc) -> StoreSecrets:
    if doc.secrets is None:
        raise StoreNeedsReauthorization("The store's credentials are gone; connect the store again.")
    return StoreSecrets.from_json(cipher.open(doc.secrets, doc.secrets_context))


def woo_keys(plain: StoreSecrets) -> WooKeys:
    if plain.consumer_key is None or plain.consumer_secret is None:
        raise StoreNeedsReauthorization("The store's keys are missing; connect the store again.")
    return WooKeys(consumer_key=plain.consumer_key, consumer_secret=plain.consumer_secret)


def _event(doc: StoreConnectionDoc, kind: EventType, now: datetime, reason: str | None = None) -> DomainEvent:
    return new_event(
        doc.client_id,
        kind,
        Subject(kind="store", id=doc.id),
        StoreChanged(store_id=doc.id, platform=doc.platform.value, reason=reason),
        occurred_at=now,
        discriminator=f"{doc.secrets_version}:{now.isoformat()}",
    )


def _new_state(
    repo: StoreRepository, client_id: str, platform: StorePlatform, shop: str, policy: ConnectionPolicy, now: datetime
) -> tuple[str, OAuthStateDoc]:
    nonce = secrets.token_urlsafe(32)
    doc = OAuthStateDoc(
        client_id=client_id, platform=platform, shop=shop, created_at=now, expires_at=now + policy.state_ttl
    )
    repo.create_state(state_key(nonce), doc)
    return nonce, doc


def _guard_one_store(repo: StoreRepository, client_id: str, platform: StorePlatform, shop: str) -> None:
    """One store per client: a live connection to another store must be disconnected first; a shop
    another client holds live cannot be taken."""
    loaded = repo.load(client_id)
    if loaded is not None:
        current = loaded.value
        same = current.platform is platform and current.shop == shop
        if current.status is not ConnectionStatus.DISCONNECTED and not same:
            raise StoreAlreadyConnected(f"{current.shop} is connected; disconnect it first.")
    owner = repo.owner_of(platform, shop)
    if owner is not None and owner != client_id:
        other = repo.load(owner)
        if other is not None and other.value.shop == shop and other.value.status is not ConnectionStatus.DISCONNECTED:
            raise ShopConnectedElsewhere("This store is connected to another Epox account.")


def _save_new(
    repo: StoreRepository, doc: StoreConnectionDoc, now: datetime, previous: Versioned[StoreConnectionDoc] | None
) -> None:
    try:
        repo.save(doc, previous, [_event(doc, EventType.STORE_CONNECTED, now)])
    except ShopTaken:
        raise ShopConnectedElsewhere("This store is connected to another Epox account.") from None


# -- Shopify ---------------------------------------------------------------------------------------


def normalise_shop(shop: str) -> str:
    shop = shop.strip().lower()
    if not valid_shop_domain(shop):
        raise InvalidShopDomain(f"{shop[:80]!r} is not a {{name}}.myshopify.com domain.")
    return shop


def start_shopify(
    repo: StoreRepository, shopify: ShopifyAdmin, client_id: str, shop: str, policy: ConnectionPolicy, now: datetime
) -> ConnectStarted:
    """A state nonce bound to the client and the shop, and the authorize URL to send the browser to."""
    shop = normalise_shop(shop)
    _guard_one_store(repo, client_id, StorePlatform.SHOPIFY, shop)
    nonce, state = _new_state(repo, client_id, StorePlatform.SHOPIFY, shop, policy, now)
    url = shopify.authorize_url(shop, nonce, policy.url("/oauth/shopify/callback"))
    return ConnectStarted(platform=StorePlatform.SHOPIFY, authorize_url=url, expires_at=state.expires_at)


def finish_shopify(
    repo: StoreRepository,
    shopify: ShopifyAdmin,
    cipher: CredentialCipher,
    params: Mapping[str, str],
    client_secret: str,
    now: datetime,
) -> StoreConnectionDoc:
    """The OAuth callback: HMAC and timestamp, the single-use state, the code for an expiring offline
    token, and the connection with its sealed tokens in one commit (with ``store.connected``)."""
    if not shopify_query_is_authentic(params, client_secret, now):
        raise InvalidCallbackSignature("The callback's hmac or timestamp is not valid.")
    shop = params.get("shop", "").lower()
    code = params.get("code", "")
    if not valid_shop_domain(shop) or not code:
        raise OAuthStateRefused("The callback names no valid shop or code.")
    state = repo.consume_state(state_key(params.get("state", "")), now)
    if state is None or state.platform is not StorePlatform.SHOPIFY or state.shop != shop:
        raise OAuthStateRefused("The connection request is unknown, used, expired or for another shop.")
    _guard_one_store(repo, state.client_id, StorePlatform.SHOPIFY, shop)
    tokens = shopify.exchange_code(shop, code)
    previous = repo.load(state.client_id)
    doc = StoreConnectionDoc(
        id=new_id("store"),
        client_id=state.client_id,
        platform=StorePlatform.SHOPIFY,
        shop=shop,
        scopes=tokens.scopes,
        connected_at=now,
        updated_at=now,
        access_expires_at=tokens.access_expires_at,
        refresh_expires_at=tokens.refresh_expires_at,
        last_import_id=previous.value.last_import_id if previous and previous.value.shop == shop else None,
        last_import_at=previous.value.last_import_at if previous and previous.value.shop == shop else None,
    )
    doc = seal_secrets(cipher, doc, StoreSecrets(access_token=tokens.access_token, refresh_token=tokens.refresh_token))
    _save_new(repo, doc, now, previous)
    logger.info("client %s connected shopify shop %s (connection %s)", doc.client_id, shop, doc.id)
    return doc


def shopify_token(
    repo: StoreRepository,
    shopify: ShopifyAdmin,
    cipher: CredentialCipher,
    client_id: str,
    policy: ConnectionPolicy,
    clock: Callable[[], datetime],
    *,
    sleep: Callable[[float], None] = time.sleep,
    wait_for_other: float = 10.0,
) -> tuple[StoreConnectionDoc, str]:
    """The connection and an access token good for a while: refreshed first when it is near its expiry.

    One refresh at a time per store: the refresher holds a lease on the connection; the others wait and
    read what it stored. The new pair (access and rotated refresh token) is stored in one commit over
    the version the refresh used. A crash between Shopify's answer and that commit loses nothing: the
    previous refresh token keeps working until its replacement is used (Shopify, 2026-08-28). A refused
    refresh marks the connection ``needs_reauth`` (with ``store.needs_reauthorization``)."""
    waited = 0.0
    while True:
        now = clock()
        loaded = _live(repo, client_id, StorePlatform.SHOPIFY)
        doc = loaded.value
        plain = open_secrets(cipher, doc)
        if plain.access_token is None:
            raise StoreNeedsReauthorization("The store's token is missing; connect the store again.")
        fresh = doc.access_expires_at is None or doc.access_expires_at - now > policy.refresh_margin
        if fresh:
            return doc, plain.access_token.get_secret_value()
        if plain.refresh_token is None:
            raise StoreNeedsReauthorization("The store's token expired and cannot be refreshed.")
        if doc.refresh_lease_until is not None and doc.refresh_lease_until > now:
            if waited >= wait_for_other:
                raise StoreUnavailable("Another refresh of the store's token is under way.", retry_after=5)
            sleep(0.25)
            waited += 0.25
            continue
        try:
            repo.update(loaded, {"refresh_lease_until": now + policy.refresh_lease, "updated_at": now})
        except StaleWrite:
            continue  # another process changed it first: read again
        leased = repo.load(client_id)
        if leased is None:
            raise StoreNotConnected("No store is connected.")
        return _refresh(repo, shopify, cipher, leased, plain.refresh_token.get_secret_value(), clock())


def _refresh(
    repo: StoreRepository,
    shopify: ShopifyAdmin,
    cipher: CredentialCipher,
    leased: Versioned[StoreConnectionDoc],
    refresh_token: str,
    now: datetime,
) -> tuple[StoreConnectionDoc, str]:
    doc = leased.value
    try:
        tokens = shopify.refresh(doc.shop, refresh_token)
    except StoreAuthorizationLost:
        reason = "Shopify refused to refresh the access token (the app was uninstalled or access revoked)."
        lost = doc.model_copy(update={"status": ConnectionStatus.NEEDS_REAUTH})
        lost_changes: dict[str, Any] = {
            "status": ConnectionStatus.NEEDS_REAUTH.value,
            "status_reason": reason,
            "secrets": None,
            "refresh_lease_until": None,
            "updated_at": now,
        }
        _commit_over_lease(
            repo, leased, lost_changes, [_event(lost, EventType.STORE_NEEDS_REAUTHORIZATION, now, reason)]
        )
        logger.warning("shopify refused the refresh of connection %s: needs reauthorization", doc.id)
        raise StoreNeedsReauthorization(reason) from None
    except EpoxError:
        _commit_over_lease(repo, leased, {"refresh_lease_until": None, "updated_at": now})
        raise
    renewed = seal_secrets(
        cipher, doc, StoreSecrets(access_token=tokens.access_token, refresh_token=tokens.refresh_token)
    )
    changes: dict[str, Any] = {
        "secrets": renewed.secrets,
        "secrets_version": doc.secrets_version + 1,
        "access_expires_at": tokens.access_expires_at,
        "refresh_expires_at": tokens.refresh_expires_at,
        "refresh_lease_until": None,
        "updated_at": now,
    }
    if tokens.scopes:
        changes["scopes"] = tokens.scopes
    _commit_over_lease(repo, leased, changes)
    logger.info("refreshed the shopify token of connection %s (version %s)", doc.id, doc.secrets_version + 1)
    return renewed.model_copy(
        update={"secrets_version": doc.secrets_version + 1}
    ), tokens.access_token.get_secret_value()


def _commit_over_lease(
    repo: StoreRepository,
    leased: Versioned[StoreConnectionDoc],
    changes: dict[str, Any],
    events: list[DomainEvent] | None = None,
) -> None:
    """Write what the refresh learned over the leased version. Bookkeeping writes (``touch``: the last
    webhook or import) move the version while the refresh is at Shopify; they leave the tokens alone, so
    the commit goes over them (else the rotated pair would be lost). Anything else (a disconnect, a
    reconnect, another rotation) wins: StaleWrite."""
    loaded = leased
    for _ in range(5):
        try:
            repo.update(loaded, changes, events or ())
            return
        except StaleWrite:
            current = repo.load(leased.value.client_id)
            if current is None or not _same_credentials(current.value, leased.value):
                raise StoreNotConnected(
                    "The store was disconnected or connected again while its token was refreshed."
                ) from None
            loaded = current
    raise StoreUnavailable("The store's connection is busy; try again.", retry_after=2)


def _same_credentials(current: StoreConnectionDoc, leased: StoreConnectionDoc) -> bool:
    return (
        current.id == leased.id
        and current.status is leased.status
        and current.secrets_version == leased.secrets_version
        and current.secrets == leased.secrets
        and current.refresh_lease_until == leased.refresh_lease_until
    )


def lose_authorization(repo: StoreRepository, client_id: str, reason: str, now: datetime) -> None:
    """The store refused our credentials (keys deleted, app uninstalled): the connection needs a new
    authorisation; its secrets are dropped and ``store.needs_reauthorization`` tells the merchant."""
    for _ in range(5):
        loaded = repo.load(client_id)
        if loaded is None or loaded.value.status is not ConnectionStatus.ACTIVE:
            return
        doc = loaded.value
        changes: dict[str, Any] = {
            "status": ConnectionStatus.NEEDS_REAUTH.value,
            "status_reason": reason,
            "secrets": None,
            "refresh_lease_until": None,
            "updated_at": now,
        }
        lost = doc.model_copy(update={"status": ConnectionStatus.NEEDS_REAUTH})
        try:
            repo.update(loaded, changes, [_event(lost, EventType.STORE_NEEDS_REAUTHORIZATION, now, reason)])
        except StaleWrite:
            continue
        logger.warning("connection %s of client %s needs reauthorization: %s", doc.id, client_id, reason)
        return


@contextmanager
def watching_authorization(repo: StoreRepository, client_id: str, clock: Callable[[], datetime]) -> Iterator[None]:
    """Store calls inside: a refusal of our credentials marks the connection ``needs_reauth`` (notified)
    and surfaces as :class:`StoreNeedsReauthorization` (409)."""
    try:
        yield
    except StoreAuthorizationLost:
        reason = "The store refused our credentials (the keys were revoked or the app uninstalled)."
        lose_authorization(repo, client_id, reason, clock())
        raise StoreNeedsReauthorization(reason) from None


def _live(
    repo: StoreRepository, client_id: str, platform: StorePlatform | None = None
) -> Versioned[StoreConnectionDoc]:
    loaded = repo.load(client_id)
    if loaded is None or loaded.value.status is ConnectionStatus.DISCONNECTED:
        raise StoreNotConnected("No store is connected.")
    if loaded.value.status is ConnectionStatus.NEEDS_REAUTH:
        raise StoreNeedsReauthorization(loaded.value.status_reason or "Connect the store again.")
    if platform is not None and loaded.value.platform is not platform:
        raise StoreNotConnected(f"No {platform.value} store is connected.")
    return loaded


def live_connection(repo: StoreRepository, client_id: str) -> StoreConnectionDoc:
    """The client's active connection, or 409 (none, or it needs reauthorization)."""
    return _live(repo, client_id).value


# -- WooCommerce -----------------------------------------------------------------------------------


def start_woocommerce(
    repo: StoreRepository,
    woo: WooCommerceApi,
    client_id: str,
    store_url: str,
    policy: ConnectionPolicy,
    now: datetime,
) -> ConnectStarted:
    """Check the store URL (https, public), bind a nonce to the client and answer the wc-auth URL."""
    base = woo.check_store_url(store_url)
    _guard_one_store(repo, client_id, StorePlatform.WOOCOMMERCE, base)
    nonce, state = _new_state(repo, client_id, StorePlatform.WOOCOMMERCE, base, policy, now)
    url = woo.authorize_url(
        base,
        app_name=policy.app_name,
        user_id=nonce,
        return_url=policy.url("/oauth/woocommerce/return"),
        callback_url=policy.url("/oauth/woocommerce/callback"),
    )
    return ConnectStarted(platform=StorePlatform.WOOCOMMERCE, authorize_url=url, expires_at=state.expires_at)


def webhook_url(policy: ConnectionPolicy, doc: StoreConnectionDoc) -> str:
    base = (policy.webhook_base_url or policy.callback_base_url).rstrip("/")
    return f"{base}/webhooks/woocommerce/{doc.client_id}/{doc.id}"


def finish_woocommerce(
    repo: StoreRepository,
    woo: WooCommerceApi,
    cipher: CredentialCipher,
    keys: WooCommerceKeys,
    policy: ConnectionPolicy,
    now: datetime,
) -> StoreConnectionDoc:
    """wc-auth's unsigned key post: bound to our nonce, tested with one read, then kept sealed; our
    product webhooks are created with a secret of our own (failures there are left to reconciliation)."""
    state = repo.consume_state(state_key(keys.user_id), now)
    if state is None or state.platform is not StorePlatform.WOOCOMMERCE:
        raise OAuthStateRefused("The connection request is unknown, used or expired.")
    api_keys = WooKeys(
        key_id=keys.key_id,
        consumer_key=SecretStr(keys.consumer_key),
        consumer_secret=SecretStr(keys.consumer_secret),
        permissions=keys.key_permissions,
    )
    if keys.key_permissions not in ("read_write", "write"):
        raise OAuthStateRefused("The keys must allow read_write.")
    _guard_one_store(repo, state.client_id, StorePlatform.WOOCOMMERCE, state.shop)
    woo.check_keys(state.shop, api_keys)
    previous = repo.load(state.client_id)
    doc = StoreConnectionDoc(
        id=new_id("store"),
        client_id=state.client_id,
        platform=StorePlatform.WOOCOMMERCE,
        shop=state.shop,
        scopes=[keys.key_permissions],
        connected_at=now,
        updated_at=now,
        reconciled_at=now,
    )
    webhook_secret = secrets.token_urlsafe(32)
    doc = doc.model_copy(update={"webhook_ids": _create_webhooks(woo, doc, api_keys, webhook_secret, policy)})
    plain = StoreSecrets(
        consumer_key=api_keys.consumer_key,
        consumer_secret=api_keys.consumer_secret,
        webhook_secret=SecretStr(webhook_secret),
    )
    doc = seal_secrets(cipher, doc, plain)
    _save_new(repo, doc, now, previous)
    logger.info("client %s connected woocommerce store %s (connection %s)", doc.client_id, doc.shop, doc.id)
    return doc


def _create_webhooks(
    woo: WooCommerceApi, doc: StoreConnectionDoc, keys: WooKeys, secret: str, policy: ConnectionPolicy
) -> list[str]:
    created: list[str] = []
    for topic in WOO_TOPICS:
        try:
            hook = woo.create_webhook(
                doc.shop,
                keys,
                name=f"{policy.app_name} {topic}",
                topic=topic,
                delivery_url=webhook_url(policy, doc),
                secret=secret,
            )
        except EpoxError as error:
            logger.warning(
                "creating the %s webhook of %s failed (%s): reconciliation retries", topic, doc.id, error.code
            )
            continue
        created.append(hook.id)
    return created


# -- status and disconnect -------------------------------------------------------------------------


def connection_out(doc: StoreConnectionDoc, last_import: StoreImportSummary | None) -> ConnectionOut:
    health = {
        ConnectionStatus.ACTIVE: Health.OK,
        ConnectionStatus.NEEDS_REAUTH: Health.NEEDS_REAUTH,
        ConnectionStatus.DISCONNECTED: Health.DISCONNECTED,
    }[doc.status]
    return ConnectionOut(
        id=doc.id,
        platform=doc.platform,
        shop=doc.shop,
        scopes=doc.scopes,
        health=health,
        reason=doc.status_reason,
        connected_at=doc.connected_at,
        disconnected_at=doc.disconnected_at,
        last_import=last_import,
        last_webhook_at=doc.last_webhook_at,
        webhooks=len(doc.webhook_ids),
    )


def get_connection(repo: StoreRepository, client_id: str) -> StoreConnectionDoc:
    loaded = repo.load(client_id)
    if loaded is None:
        raise NotFound("No store has been connected")
    return loaded.value


def disconnect(
    repo: StoreRepository,
    woo: Callable[[], WooCommerceApi],
    cipher: CredentialCipher,
    client_id: str,
    now: datetime,
    *,
    reason: str = "disconnected by the merchant",
) -> StoreConnectionDoc:
    """Stop all store work: delete our WooCommerce webhooks (Shopify offers no revocation of an offline
    token short of the merchant uninstalling the app), delete the credentials, and mark the connection
    disconnected with ``store.disconnected``. Imported products stay (unlinked by a follow-up task)."""
    while True:
        loaded = repo.load(client_id)
        if loaded is None:
            raise NotFound("No store has been connected")
        doc = loaded.value
        if doc.status is ConnectionStatus.DISCONNECTED:
            return doc
        if doc.platform is StorePlatform.WOOCOMMERCE and doc.webhook_ids and doc.secrets is not None:
            _delete_webhooks(woo, cipher, doc)
        changes: dict[str, Any] = {
            "status": ConnectionStatus.DISCONNECTED.value,
            "status_reason": reason,
            "secrets": None,
            "refresh_lease_until": None,
            "webhook_ids": [],
            "disconnected_at": now,
            "updated_at": now,
        }
        gone = doc.model_copy(update={**changes, "status": ConnectionStatus.DISCONNECTED, "secrets": None})
        try:
            repo.update(loaded, changes, [_event(gone, EventType.STORE_DISCONNECTED, now, reason)])
        except StaleWrite:
            continue
        logger.info("connection %s of client %s disconnected: %s", doc.id, client_id, reason)
        return gone


def _delete_webhooks(woo: Callable[[], WooCommerceApi], cipher: CredentialCipher, doc: StoreConnectionDoc) -> None:
    try:
        keys = woo_keys(open_secrets(cipher, doc))
        api = woo()
        for webhook_id in doc.webhook_ids:
            api.delete_webhook(doc.shop, keys, webhook_id)
    except EpoxError as error:
        # The keys may be revoked already; the store then stops delivering on its own.
        logger.warning("deleting the webhooks of %s failed (%s); disconnecting anyway", doc.id, error.code)
