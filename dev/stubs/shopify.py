"""A local stand-in for a Shopify shop and its Admin API, spoken over real HTTP so our httpx client can be
pointed at it (``stub.url`` stands for ``https://{shop}``; the shop is ``stub.shop``, ``demo-shop.myshopify.com``
unless told). Facts come from ``shared/DESIGN.md`` (Shopify) and shopify.dev, as of 2026-12.

Served:

- ``GET /admin/oauth/authorize?client_id&scope&redirect_uri&state`` — the merchant approves at once: ``302`` to
  ``redirect_uri?code&hmac&host&shop&state&timestamp``, ``hmac`` the hex HMAC-SHA256 (client secret) of the other
  parameters sorted and joined ``k=v`` with ``&``; ``host`` is base64url of ``admin.shopify.com/store/{name}``. An
  unknown ``client_id`` or a ``redirect_uri`` outside ``redirect_uris`` is a 400 page, no redirect.
- ``POST /admin/oauth/access_token`` (JSON or form) — ``{client_id, client_secret, code, expiring: 1}`` →
  ``{access_token, scope, expires_in: 3600, refresh_token, refresh_token_expires_in: 7776000}``; without
  ``expiring: 1`` a non-expiring token (no ``expires_in``, no refresh token). A code is single use (400
  ``invalid_request`` "The authorization code was not found or was already used"). ``grant_type=refresh_token``
  with ``refresh_token`` rotates: a new access token and a new refresh token on every use. What happens to the
  old refresh token follows the changelog of 2026-08-28 ("More resilient refreshes…") by default: it keeps
  working until the app uses its replacement (then it is retired), at most 30 days from its first use; a retry
  answers a new access token with the same replacement refresh token (the changelog does not say which; the
  stub keeps the pair consistent). ``retain_previous_refresh=False`` is the strict rotation Shopify had before
  (the old token is refused at once). Refused refreshes (unknown, retired, expired after 90 days, or revoked by
  :meth:`ShopifyStub.revoke` / :meth:`ShopifyStub.uninstall`) are ``400 {"error": "invalid_grant", …}``; a wrong
  client secret is ``401 invalid_client`` (RFC 6749 §5.2; Shopify documents no body for it).
- ``POST /admin/api/{version}/graphql.json`` with ``X-Shopify-Access-Token`` (a missing, unknown, expired or
  revoked token: ``401 {"errors": "[API] Invalid API key or access token …"}``; a version outside
  ``api_versions``: 404). The schema subset is ``dev/stubs/shopify_catalog.py``'s ``SDL``: ``shop``,
  ``products(first|last, after|before, query, reverse)`` with ``edges{cursor node}``/``nodes``/``pageInfo``,
  ``product(id)``, ``productsCount``, ``collections``, ``collection(id)``, ``node(id)``/``nodes(ids)``, products with
  ``variants{sku price selectedOptions}``, ``media{... on MediaImage{id alt status image{url width height}}}``,
  ``collections``, ``featuredMedia``; ``bulkOperationRunQuery(query, groupObjects)``, ``currentBulkOperation``,
  ``bulkOperation(id)``; for sync-back ``productUpdate``, ``productReorderMedia`` and ``fileUpdate`` (below). A
  connection without ``first``/``last``, or above 250, is an error, as on Shopify; a
  token whose scopes hold neither ``read_products`` nor ``write_products`` gets ``ACCESS_DENIED`` for the catalog.
  Search (``query:``) knows the subset described at ``shopify_catalog.matches``.
- **Cost and throttling**: every executed or throttled answer carries ``extensions.cost {requestedQueryCost,
  actualQueryCost, throttleStatus {maximumAvailable, currentlyAvailable, restoreRate}}``. Requested cost:
  scalars and enums 0, objects 1, a connection 2 + ``first`` x (1 + its node's selection), a mutation 10;
  actual cost: the same over what came back (the difference is refunded). A leaky bucket per shop pays the
  requested cost first: ``restore_rate`` 100/s is the Standard plan's documented rate, ``bucket_size`` 1000 the
  bucket Shopify published before (today's table gives rates only); both are settings. A query costing more
  than is available gets HTTP 200 with ``errors[0].extensions.code == "THROTTLED"`` and ``actualQueryCost:
  null``; one above 1000 gets ``MAX_COST_EXCEEDED`` (no cost extension, as in Shopify's example); a query that
  does not parse or validate gets its ``errors`` only.
- **Bulk operations**: ``bulkOperationRunQuery`` checks the query's shape (a connection, at most five, nesting
  ≤ 2, a nested connection's parent selects ``id``: ``userErrors`` otherwise), answers ``CREATED``; each later
  read of the operation moves it on: ``RUNNING`` for ``bulk_polls`` reads, then ``COMPLETED`` with ``url`` =
  ``/bulk/{id}.jsonl`` (no token needed, like Shopify's signed storage URL), ``objectCount``, ``rootObjectCount``
  and ``fileSize`` (strings: ``UnsignedInt64``). The JSONL has a row per connection node; nested connections'
  nodes are rows of their own with ``__parentId``, after their parent (next to it with ``groupObjects: true``,
  after all rows of the level above otherwise); the URL answers 400 once seven days have passed.
  :meth:`ShopifyStub.fail_next_bulk` ends the next one ``FAILED`` with an ``errorCode`` (and a token without
  product scopes ends it ``ACCESS_DENIED``); :func:`bulk_finish_payload` is the ``bulk_operations/finish`` body.
- ``GET /cdn/shop/files/{handle}-{n}.png`` — the products' images, PNGs drawn with Pillow; pushed images are
  served from ``/cdn/shop/files/{source file name}.{ext}`` as they were downloaded.

**Product media (sync-back)**: ``productUpdate(product: {id}, media: [{originalSource, mediaContentType: IMAGE,
alt}])`` appends each image (``UPLOADED`` in the mutation's answer; ``product`` as updated, so ``media(last: 1)``
is the new one) and fetches ``originalSource`` over HTTP in a thread, as Shopify processes media
asynchronously. Each later read of the media (``node``/``nodes``, the product's ``media``/``featuredMedia``;
once per request) sees ``PROCESSING`` for ``media_reads_until_ready`` reads, then the outcome: ``READY`` with
``image {url width height}`` on the stub CDN; ``FAILED`` with ``mediaErrors [{code message details}]``
(``IMAGE_DOWNLOAD_FAILURE`` for a non-2xx answer, a refused connection or bytes Pillow cannot read;
:meth:`ShopifyStub.fail_next_media` picks another code); or, for an image over 20 megapixels, nothing: it is
dropped silently from the product and the shop. A missing product is ``userErrors [{field: ["id"], message:
"Product does not exist"}]``. ``productReorderMedia(id, moves: [{id, newPosition}])`` applies the moves one
after another (``newPosition`` an ``UnsignedInt64``, which must be sent as a string; past the end is the end)
and answers a ``job`` not yet ``done``; errors are ``mediaUserErrors`` (``PRODUCT_DOES_NOT_EXIST``,
``MEDIA_DOES_NOT_EXIST_ON_PRODUCT``). ``fileUpdate(files: [{id, alt, referencesToAdd, referencesToRemove}])``
takes a media off (or puts it on) products; the file stays in the shop's Files (``catalog.files``,
:meth:`ShopifyStub.file`). Only READY files can be updated (``NON_READY_STATE``, ``INVALID_FAILED_MEDIA_STATE``),
an unknown id is ``FILE_DOES_NOT_EXIST``, and a refused input changes nothing. Helpers:
:meth:`ShopifyStub.product_media` (what is on the product now, in order) and
:meth:`ShopifyStub.merchant_removes_media` (the admin's removal, with its ``products/update`` webhook).

**Webhooks**: :meth:`ShopifyStub.deliver` POSTs a raw JSON body signed as Shopify signs it
(``X-Shopify-Hmac-Sha256`` = base64 HMAC-SHA256 of the raw body with the client secret) with
``X-Shopify-Topic``, ``-Shop-Domain``, ``-API-Version``, ``-Webhook-Id``, ``-Event-Id``, ``-Triggered-At``, and
records the answer in ``deliveries`` (no retries: Shopify's 8 over 4 hours are the caller's to simulate by
calling again with the same ``webhook_id``). ``update_product``, ``create_product``, ``delete_product``,
``uninstall``, ``shop_redact``, ``customers_redact`` and ``customers_data_request`` change the shop and deliver
the topic's REST-shaped payload.

**Failures**: :meth:`ShopifyStub.fail` answers ``"429"`` (``Retry-After: 2.0``), ``"500"``, ``"502"``,
``"503"``, ``"malformed"`` (200 with a JSON body cut short) or ``"drop"`` (the connection closed, no answer) for
the next ``times`` requests, optionally on one path only; :meth:`ShopifyStub.delay` slows a path. Every
request is recorded (:class:`Recorded`). Time is a :class:`Clock` that tests can move
(``stub.clock.advance(3600)`` expires access tokens and refills the bucket).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import re
import secrets
import socket
import threading
import time
import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from graphql import ExecutionResult, GraphQLError, GraphQLSchema, OperationDefinitionNode, execute, parse, validate
from graphql.error import GraphQLSyntaxError

from dev.stubs import shopify_catalog as cat
from dev.stubs.serving import StubHandler, serving
from dev.stubs.shopify_catalog import Catalog, Image, Product, Variant

SHOP = "demo-shop.myshopify.com"
CLIENT_ID = "epox-client-id"
CLIENT_SECRET = "epox-client-secret"  # noqa: S105 (the stub app's, not a real one)
API_VERSION = "2026-10"
API_VERSIONS = frozenset({"2026-01", "2026-04", "2026-07", "2026-10", "2027-01", "unstable"})
ACCESS_TOKEN_TTL = 3600
REFRESH_TOKEN_TTL = 90 * 24 * 3600
REFRESH_RECOVERY = 30 * 24 * 3600  # how long a used refresh token can be retried (changelog 2026-08-28)
MAX_QUERY_COST = 1000
MAX_IMAGE_PIXELS = 20_000_000  # Shopify drops a larger image from the product (4472 x 4472 is the documented limit)
IMAGE_FORMATS = {"PNG": ("image/png", "png"), "JPEG": ("image/jpeg", "jpg"), "GIF": ("image/gif", "gif"),
                 "WEBP": ("image/webp", "webp")}  # fmt: skip
MEDIA_ERROR_MESSAGES = {
    "IMAGE_DOWNLOAD_FAILURE": "Media could not be processed because the image could not be downloaded.",
    "IMAGE_PROCESSING_FAILURE": "Media could not be processed because the image could not be processed.",
    "FILE_STORAGE_LIMIT_EXCEEDED": "Media could not be created because the cumulative file storage limit would be "
    "exceeded.",
    "UNSUPPORTED_IMAGE_FILE_TYPE": "Media could not be created because it has an unsupported file type.",
    "MEDIA_TIMEOUT_ERROR": "Media could not be processed because the processing timed out.",
    "UNKNOWN": "Media error has occurred for an unknown reason.",
}
BULK_URL_TTL = 7 * 24 * 3600
BAD_CREDENTIALS_ERROR = "[API] Invalid API key or access token (unrecognized login or wrong password)"
_GRAPHQL_PATH = re.compile(r"/admin/api/([^/]+)/graphql\.json")


class Clock:
    """Wall-clock time plus an offset a test can move; ``Clock(frozen=…)`` stands still until advanced."""

    def __init__(self, frozen: float | None = None) -> None:
        self._frozen = frozen
        self._offset = 0.0

    def now(self) -> float:
        return (self._frozen if self._frozen is not None else time.time()) + self._offset

    def advance(self, seconds: float) -> None:
        self._offset += seconds


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    status: int  # 0: dropped


@dataclass(frozen=True)
class Delivery:
    topic: str
    url: str
    webhook_id: str
    event_id: str
    body: bytes
    headers: dict[str, str]
    status: int  # the endpoint's HTTP status; 0 when it could not be reached


@dataclass
class AccessToken:
    value: str
    scope: str
    expires_at: float | None  # None: a non-expiring offline token
    revoked: bool = False


@dataclass
class RefreshToken:
    value: str
    scope: str
    expires_at: float
    previous: str | None = None  # the refresh token this one replaced
    replacement: str | None = None  # issued when this one was first used
    first_used_at: float | None = None
    retired: bool = False
    revoked: bool = False


@dataclass
class BulkOperation:
    number: int
    query: str
    grouped: bool
    created_at: float
    scope: str  # the running token's: the query runs with its access
    status: str = "CREATED"
    reads: int = 0
    error_code: str | None = None
    completed_at: float | None = None
    jsonl: bytes | None = None
    object_count: int = 0
    root_object_count: int = 0
    fail_with: str | None = None

    @property
    def gid(self) -> str:
        return cat.gid("BulkOperation", self.number)


@dataclass
class _Processing:
    """A pushed image on its way from UPLOADED to READY or FAILED: its source is fetched in a thread of its own
    as soon as it is pushed (Shopify processes media asynchronously); reads of the media reveal the outcome."""

    source: str
    fail_with: str | None = None  # fail_next_media: ends FAILED with this code whatever the source
    reads: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    outcome: tuple[Any, ...] | None = None  # ("image", bytes, mime, ext, width, height) | ("failed", code, details)


@dataclass
class _Failure:
    kind: str
    times: int
    path: str | None


FAILURES = ("429", "500", "502", "503", "malformed", "drop")
TOPICS = (
    "products/create",
    "products/update",
    "products/delete",
    "app/uninstalled",
    "shop/redact",
    "customers/redact",
    "customers/data_request",
)


def sign_query(params: dict[str, str], secret: str) -> str:
    """Shopify's OAuth query HMAC: every parameter but ``hmac``/``signature``, sorted, ``k=v`` joined by ``&``."""
    message = "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in ("hmac", "signature"))
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def sign_webhook(body: bytes, secret: str) -> str:
    """``X-Shopify-Hmac-Sha256``: base64 of the HMAC-SHA256 of the raw body."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


@dataclass
class ShopifyStub:
    shop: str = SHOP
    client_id: str = CLIENT_ID
    client_secret: str = CLIENT_SECRET
    redirect_uris: list[str] | None = None  # allowed redirect URIs; None allows any
    api_versions: frozenset[str] = API_VERSIONS
    product_count: int = 50
    image_size: int = 256
    bucket_size: float = 1000.0
    restore_rate: float = 100.0
    bulk_polls: int = 1
    media_reads_until_ready: int = 1  # reads of a pushed image that still see PROCESSING before it is done
    retain_previous_refresh: bool = True
    clock: Clock = field(default_factory=Clock)
    port: int = 0
    catalog: Catalog = field(init=False)
    requests: list[Recorded] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    access_tokens: dict[str, AccessToken] = field(default_factory=dict)
    refresh_tokens: dict[str, RefreshToken] = field(default_factory=dict)
    bulk_operations: dict[int, BulkOperation] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    _codes: dict[str, str] = field(default_factory=dict)  # authorization code -> scope
    _failures: list[_Failure] = field(default_factory=list)
    _available: float = field(init=False)
    _bucket_at: float = field(init=False)
    _schema: GraphQLSchema = field(init=False)
    _next_bulk_failure: str | None = None
    _pngs: dict[str, bytes] = field(default_factory=dict)
    _uploads: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # CDN path -> (bytes, content type)
    _processing: dict[int, _Processing] = field(default_factory=dict)  # media id -> its processing
    _next_media_failure: str | None = None
    _dropped: set[int] = field(default_factory=set)  # pushed images over 20 megapixels, gone from the shop
    uninstalled_by_app: bool = False  # the app called appUninstall
    # What the bucket charged and refused, for benchmarks: actualQueryCost summed over executed queries, and
    # per operation name (count, cost); THROTTLED answers; the lowest the bucket went after a charge.
    cost_spent: float = 0.0
    cost_by_operation: dict[str, list[float]] = field(default_factory=dict)
    throttled: int = 0
    lowest_available: float = field(init=False)

    def __post_init__(self) -> None:
        self.catalog = cat.demo_catalog(self.product_count, self.image_size)
        self._available = self.bucket_size
        self.lowest_available = self.bucket_size
        self._bucket_at = self.clock.now()
        self._schema = cat.build_schema()
        self.catalog.observe = self._media_read

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def shop_name(self) -> str:
        return self.shop.removesuffix(".myshopify.com")

    # -- programming ------------------------------------------------------------------------------
    def fail(self, kind: str, times: int = 1, path: str | None = None) -> None:
        assert kind in FAILURES, kind
        with self.lock:
            self._failures.append(_Failure(kind, times, path))

    def delay(self, path: str, seconds: float) -> None:
        self.delays[path] = seconds

    def fail_next_bulk(self, error_code: str = "INTERNAL_SERVER_ERROR") -> None:
        """The next bulk operation ends ``FAILED`` with ``error_code`` (ACCESS_DENIED, TIMEOUT, …)."""
        assert error_code in ("ACCESS_DENIED", "INTERNAL_SERVER_ERROR", "TIMEOUT"), error_code
        self._next_bulk_failure = error_code

    def fail_next_media(self, code: str = "IMAGE_PROCESSING_FAILURE") -> None:
        """The next image pushed with ``productUpdate`` ends ``FAILED`` with ``mediaErrors[0].code == code``."""
        assert code in MEDIA_ERROR_MESSAGES, code
        with self.lock:
            self._next_media_failure = code

    def revoke(self) -> None:
        """The merchant or Shopify revoked the app's access: every token is refused from now on."""
        with self.lock:
            for token in self.access_tokens.values():
                token.revoked = True
            for refresh in self.refresh_tokens.values():
                refresh.revoked = True

    def issue_tokens(self, scope: str = "read_products,write_products,write_files") -> dict[str, Any]:
        """A token pair as if OAuth had just run (for tests that start connected)."""
        with self.lock:
            return self._issue(scope, expiring=True, previous=None)

    def drain(self, points: float) -> None:
        """Spend ``points`` of the bucket, as another caller of the same app would."""
        with self.lock:
            self._refill()
            self._available = max(0.0, self._available - points)

    @property
    def currently_available(self) -> float:
        with self.lock:
            self._refill()
            return self._available

    def bucket_stats(self) -> dict[str, Any]:
        """The bucket's settings and what it charged so far: GraphQL requests answered (THROTTLED ones
        included), actualQueryCost summed, by operation name, THROTTLED answers, the lowest level reached."""
        with self.lock:
            requests = sum(1 for r in self.requests if _GRAPHQL_PATH.fullmatch(r.path))
            return {
                "bucket_size": self.bucket_size,
                "restore_rate": self.restore_rate,
                "graphql_requests": requests,
                "cost_spent": self.cost_spent,
                "by_operation": {name: list(tally) for name, tally in self.cost_by_operation.items()},
                "throttled": self.throttled,
                "lowest_available": self.lowest_available,
            }

    # -- reading ----------------------------------------------------------------------------------
    def seen(self, method: str, path: str) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.method == method and r.path == path]

    def product(self, ref: int | str) -> Product:
        """A product by numeric id (an int, or a string of digits), gid or position in the catalog (an int below
        10 000)."""
        with self.lock:
            if isinstance(ref, str):
                number = int(ref) if ref.isdigit() else cat.gid_number(ref)
                assert number is not None, ref
                return self.catalog.products[number]
            if ref < 10_000:
                return list(self.catalog.products.values())[ref]
            return self.catalog.products[ref]

    def product_media(self, ref: int | str) -> list[Image]:
        """What is on the product now, in its order (position 0 is the featured media), each with its status.
        Reading here does not move a pushed image's processing on."""
        with self.lock:
            return list(self.product(ref).media)

    def file(self, media_id: int | str) -> Image | None:
        """The shop's file (a MediaImage) by numeric id or GID, on a product or not; None once deleted or
        dropped."""
        number = (
            cat.gid_number(media_id) if isinstance(media_id, str) and media_id.startswith("gid:") else int(media_id)
        )
        with self.lock:
            return self.catalog.files.get(number) if number is not None else None

    def authorize_url(self, redirect_uri: str, state: str, scope: str = "read_products,write_products") -> str:
        query = urlencode({"client_id": self.client_id, "scope": scope, "redirect_uri": redirect_uri, "state": state})
        return f"{self.url}/admin/oauth/authorize?{query}"

    # -- OAuth ------------------------------------------------------------------------------------
    def _authorize(self, query: dict[str, str]) -> tuple[int, str, bytes, dict[str, str]]:
        if query.get("client_id") != self.client_id:
            return _page(400, "Oauth error invalid_request: Could not find Shopify API application with api_key")
        redirect = query.get("redirect_uri", "")
        if not redirect or (self.redirect_uris is not None and redirect not in self.redirect_uris):
            return _page(400, "Oauth error invalid_request: The redirect_uri is not whitelisted")
        code = secrets.token_hex(16)
        with self.lock:
            self._codes[code] = query.get("scope", "")
        host = base64.urlsafe_b64encode(f"admin.shopify.com/store/{self.shop_name}".encode()).decode().rstrip("=")
        params = {"code": code, "host": host, "shop": self.shop, "state": query.get("state", ""),
                  "timestamp": str(int(self.clock.now()))}  # fmt: skip
        params["hmac"] = sign_query(params, self.client_secret)
        separator = "&" if "?" in redirect else "?"
        return 302, "text/html; charset=utf-8", b"", {"Location": redirect + separator + urlencode(params)}

    def _issue(self, scope: str, *, expiring: bool, previous: str | None) -> dict[str, Any]:
        now = self.clock.now()
        access = "shpat_" + secrets.token_hex(16)
        self.access_tokens[access] = AccessToken(access, scope, now + ACCESS_TOKEN_TTL if expiring else None)
        if not expiring:
            return {"access_token": access, "scope": scope}
        refresh = "shprt_" + secrets.token_hex(16)
        self.refresh_tokens[refresh] = RefreshToken(refresh, scope, now + REFRESH_TOKEN_TTL, previous=previous)
        return {
            "access_token": access,
            "scope": scope,
            "expires_in": ACCESS_TOKEN_TTL,
            "refresh_token": refresh,
            "refresh_token_expires_in": REFRESH_TOKEN_TTL,
        }

    def _access_token(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if params.get("client_id") != self.client_id or params.get("client_secret") != self.client_secret:
            return 401, {"error": "invalid_client", "error_description": "Client authentication failed."}
        grant = params.get("grant_type")
        with self.lock:
            if grant == "refresh_token":
                return self._refresh(str(params.get("refresh_token") or ""))
            if grant not in (None, "authorization_code"):
                return 400, {"error": "unsupported_grant_type", "error_description": f"Unsupported grant: {grant}"}
            scope = self._codes.pop(str(params.get("code") or ""), None)
            if scope is None:
                return 400, {
                    "error": "invalid_request",
                    "error_description": "The authorization code was not found or was already used",
                }
            return 200, self._issue(scope, expiring=str(params.get("expiring", "0")) == "1", previous=None)

    def _refresh(self, value: str) -> tuple[int, dict[str, Any]]:
        refused = (
            400,
            {"error": "invalid_grant", "error_description": "The refresh token is invalid, expired or revoked."},
        )
        token = self.refresh_tokens.get(value)
        now = self.clock.now()
        if token is None or token.revoked or token.retired or now >= token.expires_at:
            return refused
        if token.replacement is not None:  # a retry of a refresh token already used
            if not self.retain_previous_refresh or now - (token.first_used_at or now) > REFRESH_RECOVERY:
                return refused
            replacement = self.refresh_tokens[token.replacement]
            if replacement.first_used_at is not None or replacement.revoked:
                return refused
            access = "shpat_" + secrets.token_hex(16)
            self.access_tokens[access] = AccessToken(access, token.scope, now + ACCESS_TOKEN_TTL)
            return 200, {
                "access_token": access,
                "scope": token.scope,
                "expires_in": ACCESS_TOKEN_TTL,
                "refresh_token": replacement.value,
                "refresh_token_expires_in": int(replacement.expires_at - now),
            }
        token.first_used_at = now
        if not self.retain_previous_refresh:
            token.retired = True
        if token.previous is not None:  # using the replacement retires the token it replaced
            self.refresh_tokens[token.previous].retired = True
        issued = self._issue(token.scope, expiring=True, previous=token.value)
        token.replacement = issued["refresh_token"]
        return 200, issued

    def token_valid(self, value: str | None) -> bool:
        with self.lock:
            token = self.access_tokens.get(value or "")
            return (
                token is not None
                and not token.revoked
                and (token.expires_at is None or self.clock.now() < token.expires_at)
            )

    # -- GraphQL ----------------------------------------------------------------------------------
    def _refill(self) -> None:
        now = self.clock.now()
        elapsed = max(0.0, now - self._bucket_at)
        # rounded: a client that waits (requested - available) / restoreRate must find enough, not 641.9999
        self._available = min(self.bucket_size, round(self._available + elapsed * self.restore_rate, 3))
        self._bucket_at = now

    def _throttle_status(self) -> dict[str, Any]:
        return {
            "maximumAvailable": self.bucket_size,
            "currentlyAvailable": int(self._available),
            "restoreRate": self.restore_rate,
        }

    def graphql(self, body: dict[str, Any], scope: str = "read_products") -> dict[str, Any]:
        """One GraphQL request's answer (always HTTP 200 from here on, as Shopify answers) for a token with
        ``scope``: products and collections need ``read_products`` or ``write_products`` (ACCESS_DENIED)."""
        query = body.get("query")
        variables = body.get("variables") or {}
        if not isinstance(variables, dict):
            variables = {}
        try:
            document = parse(str(query))
        except GraphQLSyntaxError as exc:
            return {"errors": [exc.formatted]}
        errors = validate(self._schema, document)
        if errors:
            return {"errors": [e.formatted for e in errors]}
        operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
        name = body.get("operationName")
        chosen = [o for o in operations if name is None or (o.name and o.name.value == name)]
        if len(chosen) != 1:
            return {"errors": [{"message": "An operation name is required when sending multiple operations."}]}
        operation = chosen[0]
        requested = cat.query_cost(self._schema, document, operation, variables)
        if requested > MAX_QUERY_COST:
            return {
                "errors": [
                    {
                        "message": f"Query cost is {requested}, which exceeds the single query max cost limit "
                        f"({MAX_QUERY_COST}).",
                        "extensions": {"code": "MAX_COST_EXCEEDED", "cost": requested, "maxCost": MAX_QUERY_COST},
                    }
                ]
            }
        self._await_fetches()
        with self.lock:
            self._refill()
            if requested > self._available:
                self.throttled += 1
                return {
                    "errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
                    "extensions": {
                        "cost": {
                            "requestedQueryCost": requested,
                            "actualQueryCost": None,
                            "throttleStatus": self._throttle_status(),
                        }
                    },
                }
            self._available -= requested
            self.lowest_available = min(self.lowest_available, self._available)
            result = execute(
                self._schema,
                document,
                root_value=self._root(),
                context_value={"bulk": False, "scopes": set(scope.split(","))},
                variable_values=variables,
                operation_name=name,
            )
            assert isinstance(result, ExecutionResult)  # every resolver is synchronous
            data = result.data
            actual = min(requested, cat.actual_cost(self._schema, document, operation, variables, data))
            self._available = min(self.bucket_size, self._available + (requested - actual))
            self.cost_spent += actual
            tally = self.cost_by_operation.setdefault(operation.name.value if operation.name else "", [0, 0.0])
            tally[0] += 1
            tally[1] += actual
            answer: dict[str, Any] = {"data": data}
            if result.errors:
                answer["errors"] = [e.formatted for e in result.errors]
            answer["extensions"] = {
                "cost": {
                    "requestedQueryCost": requested,
                    "actualQueryCost": actual,
                    "throttleStatus": self._throttle_status(),
                }
            }
            return answer

    def _root(self) -> dict[str, Any]:
        base = self.url
        catalog = self.catalog

        def products(info: Any, **args: Any) -> dict[str, Any]:
            _check_scope(info)
            items = [
                cat.product_view(p, catalog, base)
                for p in catalog.products.values()
                if cat.matches(p, args.get("query"), catalog)
            ]
            if args.get("reverse"):
                items = [dict(i, _pos=-i["_pos"]) for i in reversed(items)]
            return cat.connection(items, args, bulk=bool(info.context.get("bulk")), name="products")

        def collections(info: Any, **args: Any) -> dict[str, Any]:
            _check_scope(info)
            items = [cat.collection_view(c, catalog, base) for c in catalog.collections.values()
                     if not args.get("query") or args["query"].lower() in c.title.lower()]  # fmt: skip
            return cat.connection(items, args, bulk=bool(info.context.get("bulk")), name="collections")

        def node(info: Any, id: str, kind: str | None = None) -> dict[str, Any] | None:
            if not id.startswith("gid://shopify/BulkOperation/"):
                _check_scope(info)
            return self._node(id, kind, info.context)

        def products_count(info: Any, query: str | None = None) -> dict[str, Any]:
            _check_scope(info)
            count = sum(cat.matches(p, query, catalog) for p in catalog.products.values())
            return {"count": count, "precision": "EXACT"}

        return {
            "shop": {"id": cat.gid("Shop", 1), "name": "Demo Shop", "myshopifyDomain": self.shop},
            "products": products,
            "product": lambda info, id: node(info, id, "Product"),
            "productsCount": products_count,
            "collections": collections,
            "collection": lambda info, id: node(info, id, "Collection"),
            "node": node,
            "nodes": lambda info, ids: [node(info, i) for i in ids],
            "currentBulkOperation": lambda info, type="QUERY": self._bulk_view(
                max(self.bulk_operations) if self.bulk_operations and type == "QUERY" else None
            ),
            "bulkOperation": lambda info, id: self._bulk_view(cat.gid_number(id) if "BulkOperation" in id else None),
            "bulkOperationRunQuery": lambda info, query, **args: self._run_bulk(
                query, bool(args.get("groupObjects")), ",".join(sorted(info.context.get("scopes") or ()))
            ),
            "appUninstall": lambda info: self._app_uninstall(),
            "productUpdate": lambda info, **args: self._product_update(info, args.get("product"), args.get("media")),
            "productReorderMedia": lambda info, id, moves: self._reorder_media(id, moves),
            "fileUpdate": lambda info, files: self._file_update(files),
        }

    def _app_uninstall(self) -> dict[str, Any]:
        """``appUninstall`` (Admin API 2025-07+): the app removes itself; every token it holds is revoked."""
        self.revoke()
        self.uninstalled_by_app = True
        return {"app": {"id": cat.gid("App", 1), "title": "Epox"}, "userErrors": []}

    def _node(
        self, value: str, kind: str | None = None, context: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        match = re.fullmatch(r"gid://shopify/([A-Za-z]+)/(\d+)", value)
        if match is None:
            raise GraphQLError(f"Invalid global id '{value}'", extensions={"code": "argumentLiteralsIncompatible"})
        found, number = match.group(1), int(match.group(2))
        if kind is not None and found != kind:
            return None
        if found == "Product" and number in self.catalog.products:
            return cat.product_view(self.catalog.products[number], self.catalog, self.url)
        if found == "Collection" and number in self.catalog.collections:
            return cat.collection_view(self.catalog.collections[number], self.catalog, self.url)
        if found == "BulkOperation":
            return self._bulk_view(number)
        for product in self.catalog.products.values():
            if found == "ProductVariant":
                for variant in product.variants:
                    if variant.id == number:
                        return cat.variant_view(variant, product, self.catalog, self.url)
            if found == "MediaImage":
                for image in product.media:
                    if image.id == number:
                        return self._media_view(image, context or {})
        if found == "MediaImage" and number in self.catalog.files:  # a file on no product (taken off, never added)
            return self._media_view(self.catalog.files[number], context or {})
        return None

    def _media_view(self, image: Image, context: dict[str, Any]) -> dict[str, Any] | None:
        """The media as a read sees it; None when the read found it dropped (over 20 megapixels)."""
        self._media_read(image, context)
        return None if image.id in self._dropped else cat.image_view(image, self.url)

    # -- media (sync-back) ------------------------------------------------------------------------
    def _await_fetches(self) -> None:
        """Let pushed images' downloads finish before a query runs (outside the lock: a source may be the stub's
        own CDN), so what a read reveals does not depend on thread timing."""
        with self.lock:
            pending = [p for p in self._processing.values() if not p.done.is_set()]
        for processing in pending:
            processing.done.wait(15)

    def _media_read(self, image: Image, context: dict[str, Any]) -> None:
        """One read of ``image`` in a query (counted once per request): a pushed image shows PROCESSING for
        ``media_reads_until_ready`` reads, then READY, FAILED or, over 20 megapixels, gone."""
        processing = self._processing.get(image.id)
        seen: set[int] = context.setdefault("media_read", set())
        if processing is None or image.id in seen:
            return
        seen.add(image.id)
        processing.reads += 1
        if processing.reads <= self.media_reads_until_ready:
            image.status = "PROCESSING"
            return
        del self._processing[image.id]
        outcome = processing.outcome if processing.done.is_set() else ("failed", "MEDIA_TIMEOUT_ERROR", None)
        if processing.fail_with is not None:
            outcome = ("failed", processing.fail_with, None)
        assert outcome is not None
        if outcome[0] == "failed":
            _, code, details = outcome
            image.status = "FAILED"
            image.errors = [{"code": code, "message": MEDIA_ERROR_MESSAGES[code], "details": details}]
            return
        _, data, mime, ext, width, height = outcome
        if width * height > MAX_IMAGE_PIXELS:  # dropped silently: the media leaves the product and the shop
            self._dropped.add(image.id)
            self.catalog.files.pop(image.id, None)
            for product in self.catalog.products.values():
                product.media[:] = [m for m in product.media if m.id != image.id]
            return
        stem = re.sub(r"[^A-Za-z0-9_-]+", "-", processing.source.rsplit("/", 1)[-1].rsplit(".", 1)[0]).strip("-")
        path = f"/cdn/shop/files/{stem or 'image'}.{ext}"
        if path in self._uploads or self.catalog.find_image(path) is not None:
            path = f"/cdn/shop/files/{stem or 'image'}_{image.id}.{ext}"  # Shopify keeps names unique, likewise
        self._uploads[path] = (data, mime)
        image.path, image.width, image.height, image.mime, image.status = path, width, height, mime, "READY"

    def _fetch(self, processing: _Processing) -> None:
        """Download the source as Shopify does (any 2xx with an image it reads), in a thread of its own."""
        import httpx
        from PIL import Image as PILImage

        try:
            with httpx.Client(timeout=10, trust_env=False, follow_redirects=True) as client:
                response = client.get(processing.source)
            if not 200 <= response.status_code < 300:
                processing.outcome = ("failed", "IMAGE_DOWNLOAD_FAILURE", f"HTTP {response.status_code}")
                return
            try:
                with PILImage.open(io.BytesIO(response.content)) as picture:
                    kind, (width, height) = picture.format or "", picture.size
            except Exception:  # whatever Pillow cannot read is not an image
                processing.outcome = ("failed", "IMAGE_DOWNLOAD_FAILURE", "not an image")
                return
            if kind not in IMAGE_FORMATS:
                processing.outcome = ("failed", "UNSUPPORTED_IMAGE_FILE_TYPE", kind)
                return
            mime, ext = IMAGE_FORMATS[kind]
            processing.outcome = ("image", response.content, mime, ext, width, height)
        except httpx.HTTPError as exc:
            processing.outcome = ("failed", "IMAGE_DOWNLOAD_FAILURE", type(exc).__name__)
        finally:
            processing.done.set()

    def _push_media(self, product: Product, alt: str, source: str) -> Image:
        image = Image(self.catalog.new_id(), alt, "", 0, 0, (0, 0, 0), "UPLOADED")
        processing = _Processing(source, fail_with=self._next_media_failure)
        self._next_media_failure = None
        product.media.append(image)
        self.catalog.files[image.id] = image
        self._processing[image.id] = processing
        if processing.fail_with is None:
            threading.Thread(target=self._fetch, args=(processing,), daemon=True).start()
        else:
            processing.done.set()
        return image

    def _product_update(
        self, info: Any, fields: dict[str, Any] | None, media: list[dict[str, Any]] | None
    ) -> dict[str, Any]:
        """``productUpdate(product: {id, …}, media: [CreateMediaInput])``: the fields given change, each
        medium is appended (UPLOADED; never a replacement of the list) and processed asynchronously."""
        fields = fields or {}
        value = str(fields.get("id") or "")
        number = cat.gid_number(value) if value.startswith("gid://shopify/Product/") else None
        product = self.catalog.products.get(number) if number is not None else None
        if product is None:
            return {"product": None, "userErrors": [{"field": ["id"], "message": "Product does not exist"}]}
        errors = []
        for n, medium in enumerate(media or []):
            parts = urlsplit(str(medium.get("originalSource") or ""))
            if medium.get("mediaContentType") != "IMAGE":
                errors.append({"field": ["media", str(n), "mediaContentType"],
                               "message": "The stub shop takes IMAGE media only"})  # fmt: skip
            elif parts.scheme not in ("http", "https") or not parts.netloc:
                errors.append({"field": ["media", str(n), "originalSource"], "message": "Image URL is invalid"})
        if errors:
            return {"product": None, "userErrors": errors}
        names = {"title": "title", "descriptionHtml": "description_html", "productType": "product_type",
                 "vendor": "vendor", "tags": "tags", "status": "status"}  # fmt: skip
        for name, attribute in names.items():
            if fields.get(name) is not None:
                setattr(product, attribute, fields[name])
        seen: set[int] = info.context.setdefault("media_read", set())
        for medium in media or []:
            image = self._push_media(product, str(medium.get("alt") or ""), str(medium["originalSource"]))
            seen.add(image.id)  # the mutation's own answer shows it UPLOADED
        product.updated_at = cat.iso(self.clock.now())
        return {"product": cat.product_view(product, self.catalog, self.url), "userErrors": []}

    def _reorder_media(self, product_id: str, moves: list[dict[str, Any]]) -> dict[str, Any]:
        """``productReorderMedia``: moves applied in order, each ``newPosition`` zero-based at the time it is
        applied (past the end: the end). Shopify runs it as a job; the stub applies it at once and answers the
        job not done, as Shopify first does."""
        number = cat.gid_number(product_id) if product_id.startswith("gid://shopify/Product/") else None
        product = self.catalog.products.get(number) if number is not None else None
        if product is None:
            error = {"field": ["id"], "message": "Product does not exist"}
            return {
                "job": None,
                "mediaUserErrors": [{**error, "code": "PRODUCT_DOES_NOT_EXIST"}],
                "userErrors": [error],
            }
        errors = []
        on_product = {cat.gid("MediaImage", m.id): m for m in product.media}
        for n, move in enumerate(moves):
            if move["id"] not in on_product:
                message = "Media does not exist on the given product."
                errors.append({"field": ["moves", str(n), "id"], "message": message,
                               "code": "MEDIA_DOES_NOT_EXIST_ON_PRODUCT"})  # fmt: skip
        if errors:
            return {"job": None, "mediaUserErrors": errors,
                    "userErrors": [{k: v for k, v in e.items() if k != "code"} for e in errors]}  # fmt: skip
        for move in moves:
            image = on_product[move["id"]]
            product.media.remove(image)
            product.media.insert(min(int(move["newPosition"]), len(product.media)), image)
        product.updated_at = cat.iso(self.clock.now())
        return {"job": {"id": f"gid://shopify/Job/{uuid.uuid4()}", "done": False},
                "mediaUserErrors": [], "userErrors": []}  # fmt: skip

    def _file_update(self, files: list[dict[str, Any]]) -> dict[str, Any]:
        """``fileUpdate``: ``alt``, ``referencesToAdd`` and ``referencesToRemove`` (products). Taking a file off a
        product leaves it in the shop's Files. Files must be READY to be updated (NON_READY_STATE while
        processing, INVALID_FAILED_MEDIA_STATE once failed); an unknown id is FILE_DOES_NOT_EXIST; nothing is
        changed when any input is refused."""
        errors: list[dict[str, Any]] = []
        found: list[tuple[Image, dict[str, Any]]] = []
        for n, update in enumerate(files):
            number = cat.gid_number(update["id"]) if update["id"].startswith("gid://shopify/MediaImage/") else None
            image = self.catalog.files.get(number) if number is not None else None
            if image is None and number is not None:
                image = next((m for p in self.catalog.products.values() for m in p.media if m.id == number), None)
            problem = None
            if image is None:
                problem = ("FILE_DOES_NOT_EXIST", ["files", str(n), "id"], f"File id {update['id']} does not exist.")
            elif image.status in ("UPLOADED", "PROCESSING"):
                problem = ("NON_READY_STATE", ["files", str(n), "id"], "Non-ready files cannot be updated.")
            elif image.status == "FAILED":
                problem = ("INVALID_FAILED_MEDIA_STATE", ["files", str(n), "id"],
                           "Files in a failed state cannot be updated.")  # fmt: skip
            for target in update.get("referencesToAdd") or []:
                target_number = cat.gid_number(target) if target.startswith("gid://shopify/Product/") else None
                if problem is None and target_number not in self.catalog.products:
                    problem = ("REFERENCE_TARGET_DOES_NOT_EXIST", ["files", str(n), "referencesToAdd"],
                               f"The reference target does not exist: {target}.")  # fmt: skip
            if problem is not None:
                errors.append({"code": problem[0], "field": problem[1], "message": problem[2]})
            elif image is not None:
                found.append((image, update))
        if errors:
            return {"files": None, "userErrors": errors}
        now = cat.iso(self.clock.now())
        for image, update in found:
            if update.get("alt") is not None:
                image.alt = update["alt"]
            for target in update.get("referencesToRemove") or []:
                product = self.catalog.products.get(cat.gid_number(target) or -1)
                if product is not None and any(m.id == image.id for m in product.media):
                    product.media[:] = [m for m in product.media if m.id != image.id]
                    product.updated_at = now
            for target in update.get("referencesToAdd") or []:
                product = self.catalog.products[cat.gid_number(target) or -1]
                if all(m.id != image.id for m in product.media):
                    product.media.append(image)
                    product.updated_at = now
        return {"files": [cat.image_view(image, self.url) for image, _ in found], "userErrors": []}

    # -- bulk operations --------------------------------------------------------------------------
    def _run_bulk(self, query: str, grouped: bool, scope: str) -> dict[str, Any]:
        def refused(message: str) -> dict[str, Any]:
            return {"bulkOperation": None, "userErrors": [{"field": ["query"], "message": message, "code": "INVALID"}]}

        try:
            document = parse(query)
        except GraphQLSyntaxError as exc:
            return refused(f"Invalid bulk query: {exc.message}")
        errors = validate(self._schema, document)
        if errors:
            return refused("Invalid bulk query: " + "; ".join(e.message for e in errors))
        operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
        if len(operations) != 1 or operations[0].operation.value != "query":
            return refused("Bulk queries must contain exactly one query operation.")
        problems = cat.bulk_shape_errors(self._schema, document, operations[0])
        if problems:
            return refused(problems[0])
        number = 5_000_000 + len(self.bulk_operations) + 1
        operation = BulkOperation(number, query, grouped, self.clock.now(), scope, fail_with=self._next_bulk_failure)
        self._next_bulk_failure = None
        self.bulk_operations[number] = operation
        return {"bulkOperation": self._bulk_fields(operation), "userErrors": []}

    def _bulk_view(self, number: int | None) -> dict[str, Any] | None:
        operation = self.bulk_operations.get(number) if number is not None else None
        if operation is None:
            return None
        operation.reads += 1
        if operation.status in ("CREATED", "RUNNING"):
            operation.status = "RUNNING" if operation.reads <= self.bulk_polls else self._finish(operation)
        return self._bulk_fields(operation)

    def _finish(self, operation: BulkOperation) -> str:
        operation.completed_at = self.clock.now()
        if operation.fail_with is not None:
            operation.error_code = operation.fail_with
            return "FAILED"
        document = parse(operation.query)
        definition = next(d for d in document.definitions if isinstance(d, OperationDefinitionNode))
        scopes = set(operation.scope.split(","))
        result = execute(
            self._schema, document, root_value=self._root(), context_value={"bulk": True, "scopes": scopes}
        )
        assert isinstance(result, ExecutionResult)
        if any((e.extensions or {}).get("code") == "ACCESS_DENIED" for e in result.errors or ()):
            operation.error_code = "ACCESS_DENIED"
            return "FAILED"
        rows = cat.bulk_rows(self._schema, document, definition, result.data, grouped=operation.grouped)
        operation.jsonl = b"".join(json.dumps(row, separators=(",", ":")).encode() + b"\n" for row in rows)
        operation.object_count = len(rows)
        operation.root_object_count = sum("__parentId" not in row for row in rows)
        return "COMPLETED"

    def _bulk_fields(self, operation: BulkOperation) -> dict[str, Any]:
        done = operation.status == "COMPLETED"
        return {
            "__typename": "BulkOperation",
            "id": operation.gid,
            "status": operation.status,
            "errorCode": operation.error_code,
            "createdAt": cat.iso(operation.created_at),
            "completedAt": cat.iso(operation.completed_at) if operation.completed_at else None,
            "objectCount": str(operation.object_count),
            "rootObjectCount": str(operation.root_object_count),
            "fileSize": str(len(operation.jsonl)) if done and operation.jsonl is not None else None,
            "url": f"{self.url}/bulk/{operation.number}.jsonl" if done and operation.jsonl else None,
            "partialDataUrl": None,
            "query": operation.query,
            "type": "QUERY",
        }

    # -- webhooks ---------------------------------------------------------------------------------
    def deliver(
        self,
        topic: str,
        payload: dict[str, Any],
        url: str,
        secret: str | None = None,
        *,
        webhook_id: str | None = None,
        timeout: float = 10,
    ) -> Delivery:
        """POST ``payload`` to ``url`` as Shopify delivers ``topic``; pass ``webhook_id`` again to redeliver."""
        import httpx

        body = json.dumps(payload).encode()
        webhook = webhook_id or str(uuid.uuid4())
        event = str(uuid.uuid4())
        headers = {
            "Content-Type": "application/json",
            "X-Shopify-Topic": topic,
            "X-Shopify-Hmac-Sha256": sign_webhook(body, secret if secret is not None else self.client_secret),
            "X-Shopify-Shop-Domain": self.shop,
            "X-Shopify-API-Version": API_VERSION,
            "X-Shopify-Webhook-Id": webhook,
            "X-Shopify-Event-Id": event,
            "X-Shopify-Triggered-At": cat.iso(self.clock.now()).replace("Z", ".000000Z"),
        }
        try:
            with httpx.Client(timeout=timeout, trust_env=False) as client:
                status = client.post(url, content=body, headers=headers).status_code
        except httpx.HTTPError:
            status = 0
        delivery = Delivery(topic, url, webhook, event, body, headers, status)
        with self.lock:
            self.deliveries.append(delivery)
        return delivery

    def update_product(self, ref: int | str, url: str | None = None, **changes: Any) -> Delivery | None:
        """Change a product (``title``, ``description_html``, ``product_type``, ``vendor``, ``tags``, ``status``,
        ``media`` …) and, given ``url``, deliver ``products/update``."""
        with self.lock:
            product = self.product(ref)
            for name, value in changes.items():
                assert hasattr(product, name), name
                setattr(product, name, value)
            product.updated_at = cat.iso(self.clock.now())
            payload = cat.rest_product(product, self.url)
        return self.deliver("products/update", payload, url) if url else None

    def add_image(self, ref: int | str, alt: str = "", status: str = "READY") -> Image:
        with self.lock:
            product = self.product(ref)
            number = self.catalog.new_id()
            image = Image(number, alt, f"/cdn/shop/files/{product.handle}-{number}.png", self.image_size,
                          self.image_size, (90, 120, 150), status)  # fmt: skip
            product.media.append(image)
            self.catalog.files[image.id] = image
            return image

    def merchant_removes_media(self, ref: int | str, media_id: int | str, url: str | None = None) -> Delivery | None:
        """The merchant takes a media off the product in the admin (the file stays in Files) and, given ``url``,
        ``products/update`` is delivered without it in ``media``/``images``."""
        with self.lock:
            product = self.product(ref)
            number = int(media_id)
            assert any(m.id == number for m in product.media), media_id
            product.media[:] = [m for m in product.media if m.id != number]
            product.updated_at = cat.iso(self.clock.now())
            payload = cat.rest_product(product, self.url)
        return self.deliver("products/update", payload, url) if url else None

    def create_product(self, title: str, url: str | None = None, **fields: Any) -> tuple[Product, Delivery | None]:
        with self.lock:
            number = self.catalog.new_id()
            handle = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
            stamp = cat.iso(self.clock.now())
            product = Product(
                id=number,
                title=title,
                handle=handle,
                description_html=fields.pop("description_html", f"<p>{title}</p>"),
                product_type=fields.pop("product_type", "Home"),
                vendor=fields.pop("vendor", "Northwind Goods"),
                tags=fields.pop("tags", ["new"]),
                variants=[Variant(self.catalog.new_id(), "Default Title", f"NEW-{number}", "20.00", 1)],
                media=[],
                created_at=stamp,
                updated_at=stamp,
                **fields,
            )
            self.catalog.products[number] = product
            image = Image(self.catalog.new_id(), title, f"/cdn/shop/files/{handle}-1.png", self.image_size,
                          self.image_size, (200, 80, 80))  # fmt: skip
            product.media.append(image)
            self.catalog.files[image.id] = image
            payload = cat.rest_product(product, self.url)
        return product, (self.deliver("products/create", payload, url) if url else None)

    def delete_product(self, ref: int | str, url: str | None = None) -> Delivery | None:
        with self.lock:
            product = self.product(ref)
            del self.catalog.products[product.id]
            for image in product.media:  # the stub deletes a product's media with it
                self.catalog.files.pop(image.id, None)
            for collection in self.catalog.collections.values():
                if product.id in collection.product_ids:
                    collection.product_ids.remove(product.id)
        return self.deliver("products/delete", {"id": product.id}, url) if url else None

    def shop_payload(self) -> dict[str, Any]:
        return {
            "id": 1,
            "name": "Demo Shop",
            "email": "owner@demo-shop.test",
            "domain": self.shop,
            "myshopify_domain": self.shop,
            "plan_name": "basic",
        }

    def uninstall(self, url: str | None = None) -> Delivery | None:
        """The merchant uninstalls the app: every token is revoked, then ``app/uninstalled``."""
        self.revoke()
        return self.deliver("app/uninstalled", self.shop_payload(), url) if url else None

    def shop_redact(self, url: str) -> Delivery:
        return self.deliver("shop/redact", {"shop_id": 1, "shop_domain": self.shop}, url)

    def customers_redact(self, url: str) -> Delivery:
        customer = {"id": 191167, "email": "john@example.com", "phone": "555-625-1199"}
        payload = {"shop_id": 1, "shop_domain": self.shop, "customer": customer, "orders_to_redact": [299938]}
        return self.deliver("customers/redact", payload, url)

    def customers_data_request(self, url: str) -> Delivery:
        customer = {"id": 191167, "email": "john@example.com", "phone": "555-625-1199"}
        payload = {"shop_id": 1, "shop_domain": self.shop, "orders_requested": [299938], "customer": customer,
                   "data_request": {"id": 9999}}  # fmt: skip
        return self.deliver("customers/data_request", payload, url)

    # -- serving ----------------------------------------------------------------------------------
    def _take_failure(self, path: str) -> str | None:
        with self.lock:
            for failure in self._failures:
                if failure.times > 0 and failure.path in (None, path):
                    failure.times -= 1
                    return failure.kind
        return None

    def handle(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], raw: bytes
    ) -> tuple[int, str, bytes, dict[str, str]] | None:
        """The answer to one request (status, content type, body, headers), or None to drop the connection."""
        if path in self.delays:
            time.sleep(self.delays[path])
        failure = self._take_failure(path)
        if failure == "drop":
            return None
        if failure == "429":
            return _json(429, {"errors": "Exceeded 2 calls per second for api client. Reduce request rates to "
                                         "resume uninterrupted service."}, {"Retry-After": "2.0"})  # fmt: skip
        if failure in ("500", "502", "503"):
            assert failure is not None
            return _json(
                int(failure), {"errors": "Internal Server Error" if failure == "500" else "Service Unavailable"}
            )
        answer = self._route(method, path, query, headers, raw)
        if failure == "malformed":
            status, kind, body, extra = answer
            return status, kind, body[: max(1, len(body) // 2)], extra
        return answer

    def _route(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], raw: bytes
    ) -> tuple[int, str, bytes, dict[str, str]]:
        if method == "GET" and path == "/admin/oauth/authorize":
            return self._authorize(query)
        if method == "POST" and path == "/admin/oauth/access_token":
            params = _params(headers, raw)
            if params is None:
                return _json(400, {"error": "invalid_request", "error_description": "Malformed request body"})
            return _json(*self._access_token(params))
        if method == "GET" and path.startswith("/cdn/shop/files/"):
            return self._image(path)
        if method == "GET" and (found := re.fullmatch(r"/bulk/(\d+)\.jsonl", path)):
            with self.lock:
                operation = self.bulk_operations.get(int(found.group(1)))
            if operation is None or operation.jsonl is None:
                return 404, "application/xml", b"<Error><Code>NoSuchKey</Code></Error>", {}
            if self.clock.now() > (operation.completed_at or 0) + BULK_URL_TTL:  # a signed URL past its 7 days
                return 400, "application/xml", b"<Error><Code>ExpiredToken</Code></Error>", {}
            return 200, "application/jsonl", operation.jsonl, {}
        if (found := _GRAPHQL_PATH.fullmatch(path)) is not None:
            version = found.group(1)
            if version not in self.api_versions:
                return _json(404, {"errors": "Not Found"})
            token = headers.get("x-shopify-access-token")
            if not self.token_valid(token):
                return _json(401, {"errors": BAD_CREDENTIALS_ERROR})
            if method != "POST":
                return _json(405, {"errors": "Method Not Allowed"})
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                body = None
            if not isinstance(body, dict) or not isinstance(body.get("query"), str):
                return _json(400, {"errors": {"query": "Required parameter missing or invalid"}})
            scope = self.access_tokens[str(token)].scope
            return _json(200, self.graphql(body, scope), {"X-Shopify-API-Version": version})
        return _json(404, {"errors": "Not Found"})

    def _image(self, path: str) -> tuple[int, str, bytes, dict[str, str]]:
        with self.lock:
            uploaded = self._uploads.get(path)
            cached = self._pngs.get(path)
        if uploaded is not None:  # a pushed image, as downloaded from its source
            return 200, uploaded[1], uploaded[0], {"Cache-Control": "public, max-age=31536000"}
        with self.lock:
            image = None if cached is not None else self.catalog.find_image(path)
        if cached is None:
            if image is None:
                return 404, "text/html; charset=utf-8", b"Not Found", {}
            cached = cat.png(image)
            with self.lock:
                self._pngs[path] = cached
        return 200, "image/png", cached, {"Cache-Control": "public, max-age=31536000"}


def _params(headers: dict[str, str], raw: bytes) -> dict[str, Any] | None:
    kind = headers.get("content-type", "").split(";")[0].strip()
    if kind == "application/json":
        try:
            parsed = json.loads(raw or b"{}")
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None
    return dict(parse_qsl(raw.decode(errors="replace"), keep_blank_values=True))


def _check_scope(info: Any) -> None:
    scopes = info.context.get("scopes") or set()
    if not scopes & {"read_products", "write_products"}:
        raise GraphQLError(
            f"Access denied for {info.field_name} field. Required access: `read_products` access scope.",
            extensions={"code": "ACCESS_DENIED", "requiredAccess": "`read_products` access scope."},
        )


def bulk_finish_payload(operation: BulkOperation) -> dict[str, Any]:
    """The ``bulk_operations/finish`` webhook's body (then read the operation with ``bulkOperation(id)``)."""
    return {
        "admin_graphql_api_id": operation.gid,
        "completed_at": cat.iso(operation.completed_at) if operation.completed_at else None,
        "created_at": cat.iso(operation.created_at),
        "error_code": operation.error_code.lower() if operation.error_code else None,
        "status": operation.status.lower(),
        "type": "query",
    }


def _json(status: int, body: Any, extra: dict[str, str] | None = None) -> tuple[int, str, bytes, dict[str, str]]:
    return status, "application/json; charset=utf-8", json.dumps(body).encode(), dict(extra or {})


def _page(status: int, text: str) -> tuple[int, str, bytes, dict[str, str]]:
    return status, "text/html; charset=utf-8", f"<!doctype html><title>Shopify (stub)</title><p>{text}</p>".encode(), {}


def _handler(stub: ShopifyStub) -> type[BaseHTTPRequestHandler]:
    class Handler(StubHandler):
        def _serve(self, method: str) -> None:
            parts = urlsplit(self.path)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
            try:
                answer = stub.handle(method, parts.path, query, headers, raw)
            except Exception as exc:  # a stub bug: answer as Shopify's 500 would, naming the cause for the test
                answer = _json(500, {"errors": "Internal Server Error"}, {"X-Stub-Error": repr(exc)[:200]})
            with stub.lock:
                stub.requests.append(Recorded(method, parts.path, query, headers, raw, answer[0] if answer else 0))
            if answer is None:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            status, kind, body, extra = answer
            self.write_answer(status, body, {"Content-Type": kind, "X-Request-Id": str(uuid.uuid4()), **extra})

    return Handler


def running(stub: ShopifyStub | None = None, port: int = 0) -> AbstractContextManager[ShopifyStub]:
    """Serve ``stub`` (a new demo shop by default) on 127.0.0.1 for the ``with`` block."""
    stub = stub or ShopifyStub()
    return serving(stub, _handler(stub), port)


def main(argv: list[str] | None = None) -> int:
    """Serve a demo shop in a process of its own (benchmarks keep the stub's memory and CPU apart). A line
    ``stats`` on stdin answers :meth:`ShopifyStub.bucket_stats` as one JSON line on stdout."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--products", type=int, default=50)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--bulk-polls", type=int, default=1)
    parser.add_argument("--bucket-size", type=float, default=1000.0)
    parser.add_argument("--restore-rate", type=float, default=100.0)
    parser.add_argument("--media-reads-until-ready", type=int, default=1)
    args = parser.parse_args(argv)
    shop = ShopifyStub(
        product_count=args.products,
        image_size=args.image_size,
        bulk_polls=args.bulk_polls,
        bucket_size=args.bucket_size,
        restore_rate=args.restore_rate,
        media_reads_until_ready=args.media_reads_until_ready,
    )
    with running(shop, args.port) as stub:
        print(json.dumps({"url": stub.url, "shop": stub.shop, "client_id": stub.client_id}), flush=True)
        for line in sys.stdin:
            if line.strip() == "stats":
                print(json.dumps(stub.bucket_stats()), flush=True)
        while True:  # stdin closed: serve on until terminated
            time.sleep(3600)


if __name__ == "__main__":
    raise SystemExit(main())
