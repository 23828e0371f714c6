"""Stored documents, requests and responses of store connections (one store per client)."""

from __future__ import annotations

import json
from datetime import datetime
from enum import Enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, model_validator

from shared.credentials import SealedSecret
from shared.stores.ports import StorePlatform
from shared.text import SINGLE_LINE


class StrictModel(BaseModel):
    """Requests: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ConnectionStatus(str, Enum):
    ACTIVE = "active"
    NEEDS_REAUTH = "needs_reauth"
    DISCONNECTED = "disconnected"


class StoreSecrets(BaseModel):
    """What a connection keeps secret, sealed as one JSON document (never stored or logged in clear)."""

    model_config = ConfigDict(extra="forbid")

    access_token: SecretStr | None = None  # Shopify
    refresh_token: SecretStr | None = None  # Shopify (rotates on every use)
    consumer_key: SecretStr | None = None  # WooCommerce
    consumer_secret: SecretStr | None = None  # WooCommerce
    webhook_secret: SecretStr | None = None  # WooCommerce: the secret we gave its webhooks

    def to_json(self) -> bytes:
        plain = {name: value.get_secret_value() for name, value in self if isinstance(value, SecretStr)}
        return json.dumps(plain, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> StoreSecrets:
        return cls.model_validate_json(raw)


class StoreConnectionDoc(BaseModel):
    """``clients/{client}/store_connection/current``: the client's store and how we reach it."""

    model_config = ConfigDict(extra="ignore")

    id: str  # the connection's id (a reconnect makes a new one)
    client_id: str
    platform: StorePlatform
    shop: str  # Shopify: {name}.myshopify.com; WooCommerce: the store's base URL
    scopes: list[str] = Field(default_factory=list)
    status: ConnectionStatus = ConnectionStatus.ACTIVE
    status_reason: str | None = None
    connected_at: datetime
    updated_at: datetime
    disconnected_at: datetime | None = None
    secrets: SealedSecret | None = None
    secrets_version: int = 0  # grows with every rotation: a refresh commits only over the pair it used
    access_expires_at: datetime | None = None
    refresh_expires_at: datetime | None = None
    refresh_lease_until: datetime | None = None  # one refresh at a time per store
    webhook_ids: list[str] = Field(default_factory=list)  # WooCommerce webhooks we created
    last_import_id: str | None = None
    last_import_at: datetime | None = None
    last_webhook_at: datetime | None = None
    reconciled_at: datetime | None = None  # WooCommerce: products modified after this were looked at

    @property
    def secrets_context(self) -> str:
        """What the sealed secrets are bound to (a ciphertext copied to another record does not open)."""
        return f"client/{self.client_id}/store/{self.id}"


class OAuthStateDoc(BaseModel):
    """``store_oauth_states/{sha256 of the nonce}``: a single-use nonce bound to a client and a shop."""

    model_config = ConfigDict(extra="ignore")

    client_id: str
    platform: StorePlatform
    shop: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None = None


class ShopRedaction(BaseModel):
    """``store_redactions/{id}``: what shop/redact erased, kept as the record that we did."""

    platform: StorePlatform
    shop: str
    client_id: str | None
    erased: dict[str, int]
    requested_at: datetime
    done_at: datetime


# -- API ------------------------------------------------------------------------------------------

ShopDomain = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255), SINGLE_LINE]
StoreUrl = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2048), SINGLE_LINE]


class ShopifyConnectRequest(StrictModel):
    shop: ShopDomain  # {name}.myshopify.com


class WooCommerceConnectRequest(StrictModel):
    store_url: StoreUrl  # https://shop.example (public addresses only)


class ConnectStarted(BaseModel):
    """Where to send the merchant's browser to approve the connection, and until when that works."""

    platform: StorePlatform
    authorize_url: str
    expires_at: datetime


class Health(str, Enum):
    OK = "ok"
    NEEDS_REAUTH = "needs_reauth"
    DISCONNECTED = "disconnected"


class StoreImportSummary(BaseModel):
    id: str
    status: str
    created_at: datetime
    finished_at: datetime | None = None


class ConnectionOut(BaseModel):
    """The client's store connection (never its credentials)."""

    id: str
    platform: StorePlatform
    shop: str
    scopes: list[str]
    health: Health
    reason: str | None = None
    connected_at: datetime
    disconnected_at: datetime | None = None
    last_import: StoreImportSummary | None = None
    last_webhook_at: datetime | None = None
    webhooks: int = 0  # WooCommerce webhooks we created


class WooCommerceKeys(BaseModel):
    """What wc-auth POSTs to our callback (unsigned; bound to the nonce we sent as ``user_id``)."""

    model_config = ConfigDict(extra="ignore")

    key_id: int | None = None
    user_id: Annotated[str, StringConstraints(min_length=16, max_length=128)]
    consumer_key: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    consumer_secret: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    key_permissions: str = "read_write"


class StoreImportScope(str, Enum):
    ALL = "all"
    CATEGORY = "category"  # a Shopify collection or a WooCommerce category
    PRODUCTS = "products"


StoreId = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,20}$")]


class StoreImportRequest(StrictModel):
    """What to import: everything, one collection/category, or these store product ids."""

    scope: StoreImportScope = StoreImportScope.ALL
    category_id: StoreId | None = None
    product_ids: list[StoreId] = Field(default_factory=list, max_length=250)

    @model_validator(mode="after")
    def _scope_has_what_it_needs(self) -> StoreImportRequest:
        if self.scope is StoreImportScope.CATEGORY and self.category_id is None:
            raise ValueError("category_id is required when scope is category")
        if self.scope is StoreImportScope.PRODUCTS and not self.product_ids:
            raise ValueError("product_ids is required when scope is products")
        return self


class StoreSearchQuery(StrictModel):
    q: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), SINGLE_LINE]


class StoreProductSummary(BaseModel):
    id: str
    title: str
    sku: str | None = None
    image_url: str | None = None
    linked_product_id: str | None = None


class StoreSearchResult(BaseModel):
    products: list[StoreProductSummary]


class StoreLinkRequest(StrictModel):
    store_product_id: StoreId


class CategoryCount(BaseModel):
    name: str
    products: int


class StoreCategoriesOut(BaseModel):
    categories: list[CategoryCount]


class WebhookAck(BaseModel):
    """What the webhook endpoints answer (the body is never read by the stores)."""

    received: bool
    duplicate: bool = False
    note: Literal["queued", "ignored", "duplicate", "ping"] = "queued"
