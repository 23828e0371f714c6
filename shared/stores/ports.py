"""Ports of store connections: what the services ask of Shopify and WooCommerce, in our terms.

Adapters (``shared.adapters.shopify``, ``shared.adapters.woocommerce``) speak the vendors' wire formats
with httpx and translate every vendor failure into the errors below, so services never see an
``httpx`` exception or a vendor's JSON. Store products come back normalised as :class:`StoreProduct`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from shared.errors import EpoxError, UpstreamUnavailable


class StorePlatform(str, Enum):
    SHOPIFY = "shopify"
    WOOCOMMERCE = "woocommerce"


# -- errors every adapter raises -------------------------------------------------------------------


class StoreAuthorizationLost(EpoxError):
    """The store refused our credentials (a revoked or expired refresh token, keys deleted in the
    store, an uninstalled app): nothing a retry fixes; the merchant has to connect again."""

    status = 409
    code = "store_needs_reauthorization"
    title = "The store no longer accepts our access; connect the store again"


class StoreUnavailable(UpstreamUnavailable):
    """A transient store failure (5xx, 429, Shopify THROTTLED beyond what one call waits, a timeout, a
    connection error): retry later (``retry_after`` seconds when the store said)."""

    code = "store_unavailable"
    title = "The store is not answering right now; try again shortly"


class StoreRequestFailed(EpoxError):
    """A permanent store failure for this request: a malformed answer, a 4xx other than auth and
    throttling, GraphQL errors or userErrors that are not throttling, a failed bulk operation."""

    status = 502
    code = "store_request_failed"
    title = "The store refused or garbled the request"


class StoreProductGone(EpoxError):
    """The store has no such product (deleted in the store, or trashed): nothing a retry fixes."""

    status = 410
    code = "store_product_gone"
    title = "The product no longer exists in the store"


class StoreImageRejected(StoreRequestFailed):
    """The store refused an image we pushed (a source it could not fetch, a format or size it does not
    take, its file storage full): the image stays out of the store, and a retry of the same image
    would be refused again."""

    status = 422
    code = "store_image_rejected"
    title = "The store refused the image"


class StoreNotReachable(EpoxError):
    """The store URL may not be contacted (not https, a private address, no such host)."""

    status = 422
    code = "store_url_not_allowed"
    title = "The store's address cannot be used"


# -- normalised catalog ----------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreImage(_Model):
    """One image of a store product, in the store's order (position 0 is the featured image)."""

    media_id: str  # Shopify: the MediaImage's numeric id; WooCommerce: the attachment id
    url: str
    alt: str | None = None
    position: int = 0
    width: int | None = None
    height: int | None = None


class MediaState(str, Enum):
    """A pushed image's life in the store: Shopify's media statuses (WooCommerce sideloads while it
    answers, so its images are READY or refused at once)."""

    UPLOADED = "uploaded"
    PROCESSING = "processing"
    READY = "ready"
    FAILED = "failed"


class StoreMedia(_Model):
    """One image we pushed, as the store reports it now."""

    media_id: str  # Shopify: the MediaImage's numeric id; WooCommerce: the attachment id
    state: MediaState
    url: str | None = None  # the store's CDN URL, once READY
    alt: str | None = None
    error_code: str | None = None  # Shopify's mediaErrors[0].code when FAILED (e.g. IMAGE_DOWNLOAD_FAILURE)
    error_message: str | None = None


class WooImageRef(_Model):
    """One element of the gallery sent to WooCommerce: an image kept by ``id``, or a new one by ``src``
    (sideloaded by the store; the URL's basename needs a real image extension)."""

    id: str | None = None
    src: str | None = None
    name: str | None = None
    alt: str | None = None


class StoreVariant(_Model):
    id: str
    title: str | None = None
    sku: str | None = None
    price: str | None = None
    options: dict[str, str] = Field(default_factory=dict)


class StoreCategory(_Model):
    """A Shopify collection or a WooCommerce product category."""

    id: str  # numeric id as a string on both platforms
    name: str
    product_count: int | None = None


class StoreProduct(_Model):
    """A store's product, normalised. ``id`` is the store's numeric product id as a string (Shopify's
    legacy resource id, the number at the end of its GID; WooCommerce's post id)."""

    id: str
    title: str
    handle: str | None = None  # Shopify handle / WooCommerce slug
    description_html: str | None = None
    product_type: str | None = None
    vendor: str | None = None
    tags: list[str] = Field(default_factory=list)
    categories: list[StoreCategory] = Field(default_factory=list)  # collections / categories, store order
    variants: list[StoreVariant] = Field(default_factory=list)
    images: list[StoreImage] = Field(default_factory=list)
    status: str | None = None  # Shopify ACTIVE/DRAFT/ARCHIVED, WooCommerce publish/draft/… (lowercased)
    price: str | None = None
    sku: str | None = None  # the product's own SKU (WooCommerce simple products, a single variant's SKU)
    updated_at: datetime | None = None


class StorePage(_Model):
    products: list[StoreProduct]
    next_cursor: str | None = None  # Shopify: the endCursor when hasNextPage; WooCommerce: the next page number
    total: int | None = None  # WooCommerce X-WP-Total


# -- Shopify ---------------------------------------------------------------------------------------


class ShopifyTokens(_Model):
    """What the token endpoint answered (an expiring offline token and its rotating refresh token)."""

    access_token: SecretStr
    refresh_token: SecretStr | None = None
    access_expires_at: datetime | None = None
    refresh_expires_at: datetime | None = None
    scopes: list[str] = Field(default_factory=list)


class BulkStatus(str, Enum):
    CREATED = "created"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    CANCELING = "canceling"
    EXPIRED = "expired"


class BulkOperation(_Model):
    id: str  # the operation's GID
    status: BulkStatus
    url: str | None = None  # the JSONL, once COMPLETED (None when the query matched nothing)
    error_code: str | None = None
    object_count: int = 0
    root_object_count: int = 0


class ShopifyAdmin(ABC):
    """The Shopify Admin API (OAuth + GraphQL) for any shop; ``shop`` is a validated
    ``{name}.myshopify.com`` domain and ``token`` the shop's current access token."""

    @abstractmethod
    def authorize_url(self, shop: str, state: str, redirect_uri: str) -> str:
        """The ``/admin/oauth/authorize`` URL the merchant's browser goes to (offline access)."""

    @abstractmethod
    def exchange_code(self, shop: str, code: str) -> ShopifyTokens:
        """Trade the callback's code for an expiring offline token (``expiring: 1``)."""

    @abstractmethod
    def refresh(self, shop: str, refresh_token: str) -> ShopifyTokens:
        """Rotate: a new access token and a new refresh token. A refused refresh (``invalid_grant``) is
        :class:`StoreAuthorizationLost`."""

    @abstractmethod
    def products_page(
        self, shop: str, token: str, *, after: str | None = None, query: str | None = None, first: int = 50
    ) -> StorePage:
        """One page of products (cursor paging), ``query`` in Shopify's search syntax."""

    @abstractmethod
    def products_by_ids(self, shop: str, token: str, product_ids: Sequence[str]) -> list[StoreProduct]:
        """These products (numeric ids; missing ones are left out), at most 250 per call."""

    @abstractmethod
    def collections(self, shop: str, token: str) -> list[StoreCategory]:
        """Every collection with its product count."""

    @abstractmethod
    def start_bulk_products(self, shop: str, token: str, collection_id: str | None = None) -> BulkOperation:
        """Run a bulk query over the whole catalog (or one collection's products)."""

    @abstractmethod
    def bulk_operation(self, shop: str, token: str, operation_id: str) -> BulkOperation:
        """The operation's state now."""

    @abstractmethod
    def stream_bulk_products(self, url: str) -> Iterator[StoreProduct]:
        """The COMPLETED operation's JSONL, streamed: each product once its child rows (variants, media,
        collections) are in. Memory stays flat whatever the catalog's size."""

    @abstractmethod
    def uninstall(self, shop: str, token: str) -> None:
        """The app uninstalls itself from the shop (``appUninstall``): every token it holds is revoked.
        A shop where the app is gone already counts as done."""

    @abstractmethod
    def product_from_webhook(self, payload: Mapping[str, Any]) -> StoreProduct:
        """The REST-shaped product of a products/create or products/update webhook, normalised.
        Raises :class:`StoreRequestFailed` when the payload is not a product."""

    # -- images (sync-back) -----------------------------------------------------------------------

    @abstractmethod
    def product_images(self, shop: str, token: str, product_id: str) -> list[StoreImage]:
        """Every image of the product in the store's order (position 0 is the featured image), with
        alt text. :class:`StoreProductGone` when the product does not exist."""

    @abstractmethod
    def add_product_image(self, shop: str, token: str, product_id: str, *, source_url: str, alt: str) -> StoreMedia:
        """Append one image: ``productUpdate(product: {id}, media: [{originalSource, mediaContentType:
        IMAGE, alt}])`` (never ``productSet``, which replaces the list). Returns the new media, usually
        UPLOADED or PROCESSING. :class:`StoreProductGone` when the product does not exist,
        :class:`StoreImageRejected` when the store refuses the media."""

    @abstractmethod
    def media_states(self, shop: str, token: str, media_ids: Sequence[str]) -> dict[str, StoreMedia]:
        """The current state of these media (``nodes(ids:)``), by id; media that no longer exist are
        left out."""

    @abstractmethod
    def reorder_product_images(self, shop: str, token: str, product_id: str, moves: Sequence[tuple[str, int]]) -> None:
        """``productReorderMedia``: move each media id to its zero-based position (position 0 is the
        featured image). The store applies it asynchronously. :class:`StoreProductGone`."""

    @abstractmethod
    def remove_product_images(self, shop: str, token: str, product_id: str, media_ids: Sequence[str]) -> None:
        """Take these media off the product (``fileUpdate(files: [{id, referencesToRemove: [product]}])``);
        the files stay in the shop's Files. Media already off the product (or gone) count as done."""


# -- WooCommerce -----------------------------------------------------------------------------------


class WooKeys(_Model):
    """The REST API keys wc-auth posted to our callback."""

    key_id: int | None = None
    consumer_key: SecretStr
    consumer_secret: SecretStr
    permissions: str = "read_write"


class WooWebhook(_Model):
    id: str
    topic: str
    status: str  # active, paused, disabled
    delivery_url: str


class WooCommerceApi(ABC):
    """WooCommerce's REST API v3 for any store; ``store_url`` is the store's validated base URL
    (``https://shop.example``, no trailing slash). Every request is SSRF-guarded."""

    @abstractmethod
    def check_store_url(self, store_url: str) -> str:
        """The normalised base URL, or :class:`StoreNotReachable` (not https, a private address)."""

    @abstractmethod
    def authorize_url(self, store_url: str, *, app_name: str, user_id: str, return_url: str, callback_url: str) -> str:
        """The ``/wc-auth/v1/authorize`` URL (scope ``read_write``)."""

    @abstractmethod
    def check_keys(self, store_url: str, keys: WooKeys) -> None:
        """One authenticated read; :class:`StoreAuthorizationLost` when the keys do not work."""

    @abstractmethod
    def products_page(
        self,
        store_url: str,
        keys: WooKeys,
        *,
        page: int = 1,
        per_page: int = 100,
        category: str | None = None,
        include: Sequence[str] | None = None,
        modified_after: datetime | None = None,
        search: str | None = None,
    ) -> StorePage:
        """One page of products with their variations (``next_cursor`` the next page's number)."""

    @abstractmethod
    def categories(self, store_url: str, keys: WooKeys) -> list[StoreCategory]:
        """Every product category with its count."""

    @abstractmethod
    def webhooks(self, store_url: str, keys: WooKeys) -> list[WooWebhook]:
        """The store's webhooks (all statuses)."""

    @abstractmethod
    def create_webhook(
        self, store_url: str, keys: WooKeys, *, name: str, topic: str, delivery_url: str, secret: str
    ) -> WooWebhook:
        """Create an active webhook signed with our own secret."""

    @abstractmethod
    def activate_webhook(self, store_url: str, keys: WooKeys, webhook_id: str) -> WooWebhook:
        """Set a (disabled) webhook back to active."""

    @abstractmethod
    def delete_webhook(self, store_url: str, keys: WooKeys, webhook_id: str) -> None:
        """Delete the webhook (gone already counts as done)."""

    @abstractmethod
    def product_from_webhook(self, payload: Mapping[str, Any]) -> StoreProduct:
        """A product.created/updated webhook's body (the REST product), normalised; variations are
        not fetched here. Raises :class:`StoreRequestFailed` when the payload is not a product."""

    # -- images (sync-back) -----------------------------------------------------------------------

    @abstractmethod
    def product(self, store_url: str, keys: WooKeys, product_id: str) -> StoreProduct:
        """One product with its gallery (``GET products/{id}``); :class:`StoreProductGone` when the
        store has no such product (404) or it is in the trash."""

    @abstractmethod
    def set_product_images(
        self, store_url: str, keys: WooKeys, product_id: str, images: Sequence[WooImageRef]
    ) -> list[StoreImage]:
        """Replace the product's gallery (``PUT products/{id}`` with ``images``): images kept by id,
        new ones by src (sideloaded while the store answers), element 0 the featured image. Returns
        the gallery the store answered, new attachment ids included. :class:`StoreProductGone`;
        :class:`StoreImageRejected` when the store cannot sideload a source (its
        ``woocommerce_product_image_upload_error``)."""
