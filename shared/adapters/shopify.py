"""The Shopify Admin API (OAuth token endpoint + GraphQL) behind the :class:`ShopifyAdmin` port, over httpx.

Every request goes to ``https://{shop}`` (or, in development and tests, to ``SHOPIFY_ADMIN_BASE_URL``: the
Shopify stub). Vendor failures become the port's errors: a refused token is
:class:`StoreAuthorizationLost`, a 5xx / 429 / timeout / dropped connection (after a couple of quick retries
for reads) or throttling beyond ``max_throttle_wait`` is :class:`StoreUnavailable`, anything else the store
answers that we cannot use is :class:`StoreRequestFailed`. No token or secret ever reaches an exception's
message or a log line: messages name the HTTP status, Shopify's error *code* and at most a trimmed, redacted
GraphQL error message.

**Rate limit.** Shopify's GraphQL limit is a leaky bucket of cost points per app and shop. Each answer's
``extensions.cost.throttleStatus`` is remembered per shop; before a query whose expected cost exceeds what
the bucket should hold by now, the call waits for the restore (proactive pacing), and a ``THROTTLED`` answer
waits ``(requested - available) / restoreRate`` and tries again, for at most ``max_throttle_wait`` seconds
per call in all; beyond that the call raises :class:`StoreUnavailable` with the wait still needed as
``Retry-After``. A single query may not cost more than 1000 points, so a products page holds at most
:data:`PRODUCTS_PER_QUERY` products whatever ``first`` asks (the cursor pages on).

**Products.** A page or a lookup brings each product with its first 10 variants, 10 media and 5 collections
(whole catalogs come from the bulk operation, which has no such limit). Only media that are READY
``MediaImage`` with an image URL become :class:`StoreImage`; ``position`` is the medium's index in the
product's media order (0 is the featured medium), so positions may skip a video or an image still
processing. ``status`` is lowercased (``active``, ``draft``, ``archived``), as the webhooks spell it.

**Images (sync-back).** An image is appended with ``productUpdate(product: {id}, media: [...])`` (never
``productSet``, which replaces the list), sent once: a retry after a 5xx could append it twice. Its state is
read with ``nodes(ids:)``, :data:`MEDIA_STATES_PER_QUERY` at a time; a media Shopify no longer has (an image over
20 megapixels is dropped silently) is left out. ``productReorderMedia`` moves media to zero-based positions
(``newPosition`` is an ``UnsignedInt64``: a string). ``fileUpdate`` with ``referencesToRemove`` takes media off
the product and leaves the files in the shop; a file that no longer exists counts as removed. Media ids are the
numeric ids of ``MediaImage`` GIDs. A product that does not exist is :class:`StoreProductGone`; a user error on
the media is :class:`StoreImageRejected`.

**Bulk.** :meth:`ShopifyAdminClient.start_bulk_products` runs its query with ``groupObjects: true``, so in
the JSONL every child row (variants, media, collections) comes right after its product; the stream emits a
product when the next product row (or the end) arrives and holds one product at a time. A child row whose
parent is not the product being assembled means ungrouped output (an operation started elsewhere without
``groupObjects``): that is :class:`StoreRequestFailed` unless the caller asks ``grouped=False``, which
buffers every product until the end of the file (memory grows with the catalog).
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
from pydantic import SecretStr, ValidationError

from shared import logging as log
from shared.config import Settings, require_vendor_settings
from shared.errors import EpoxError, UpstreamRejectedCredentials
from shared.retry import RetryPolicy
from shared.stores.ports import (
    BulkOperation,
    BulkStatus,
    MediaState,
    ShopifyAdmin,
    ShopifyTokens,
    StoreAuthorizationLost,
    StoreCategory,
    StoreImage,
    StoreImageRejected,
    StoreMedia,
    StoreNotReachable,
    StorePage,
    StoreProduct,
    StoreProductGone,
    StoreRequestFailed,
    StoreUnavailable,
    StoreVariant,
)

_log = log.get_logger("epox.stores.shopify")

SHOP_DOMAIN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9-]*\.myshopify\.com$")
_GID = re.compile(r"^gid://shopify/([A-Za-z0-9]+)/(\d+)(?:\?.*)?$")

MAX_QUERY_COST = 1000  # Shopify refuses a single query above this (MAX_COST_EXCEEDED)
MAX_PAGE = 250  # the largest first/last of a connection
VARIANTS_PER_PRODUCT = 10
MEDIA_PER_PRODUCT = 10
COLLECTIONS_PER_PRODUCT = 5
# Calculated query cost of one product node below (objects 1, scalars 0, a connection 2 + first x node):
# 1 + collections (2 + 5 x 1) + variants (2 + 10 x (1 + selectedOptions 1)) + media (2 + 10 x (1 + image 1)).
PRODUCT_COST = 1 + (2 + COLLECTIONS_PER_PRODUCT) + (2 + VARIANTS_PER_PRODUCT * 2) + (2 + MEDIA_PER_PRODUCT * 2)
PRODUCTS_PER_QUERY = (MAX_QUERY_COST - 10) // PRODUCT_COST  # 10 points of headroom (pageInfo and the like)
COLLECTIONS_PAGE = 250
COLLECTIONS_COST = 2 + COLLECTIONS_PAGE * 2 + 1
MUTATION_COST = 10

# Quick retries of a read after a 5xx, a 429, a timeout or a dropped connection (three tries in all).
TRANSIENT = RetryPolicy(attempts=3, base=0.25, cap=1.0, deadline=5.0)

_PRODUCT_FIELDS = f"""
fragment ProductFields on Product {{
  id title handle descriptionHtml productType vendor tags status updatedAt
  collections(first: {COLLECTIONS_PER_PRODUCT}) {{ nodes {{ id title }} }}
  variants(first: {VARIANTS_PER_PRODUCT}) {{ nodes {{ id title sku price selectedOptions {{ name value }} }} }}
  media(first: {MEDIA_PER_PRODUCT}) {{
    nodes {{ id mediaContentType status alt ... on MediaImage {{ image {{ url width height }} }} }}
  }}
}}
"""
_PRODUCTS_PAGE = (
    """
query ProductsPage($first: Int!, $after: String, $query: String) {
  products(first: $first, after: $after, query: $query) {
    pageInfo { hasNextPage endCursor }
    nodes { ...ProductFields }
  }
}
"""
    + _PRODUCT_FIELDS
)
_PRODUCTS_BY_IDS = (
    """
query ProductsByIds($ids: [ID!]!) {
  nodes(ids: $ids) { ...ProductFields }
}
"""
    + _PRODUCT_FIELDS
)
_COLLECTIONS = f"""
query Collections($after: String) {{
  collections(first: {COLLECTIONS_PAGE}, after: $after) {{
    pageInfo {{ hasNextPage endCursor }}
    nodes {{ id title productsCount {{ count }} }}
  }}
}}
"""
_BULK_FIELDS = "id status errorCode url objectCount rootObjectCount"
_APP_UNINSTALL = """
mutation appUninstall {
  appUninstall { app { id } userErrors { field message code } }
}
"""
_BULK_RUN = f"""
mutation BulkProducts($query: String!) {{
  bulkOperationRunQuery(query: $query, groupObjects: true) {{
    bulkOperation {{ {_BULK_FIELDS} }}
    userErrors {{ field message code }}
  }}
}}
"""
_BULK_READ = f"""
query BulkOperation($id: ID!) {{
  bulkOperation(id: $id) {{ {_BULK_FIELDS} }}
}}
"""
# The bulk query itself: no first/after (a bulk operation reads every node), four connections, depth 1.
_BULK_PRODUCTS = """
{
  products%s {
    edges { node {
      id title handle descriptionHtml productType vendor tags status updatedAt
      collections { edges { node { id title } } }
      variants { edges { node { id title sku price selectedOptions { name value } } } }
      media { edges { node { id mediaContentType status alt ... on MediaImage { image { url width height } } } } }
    } }
  }
}
"""
_MEDIA_KINDS = frozenset({"MediaImage", "Video", "ExternalVideo", "Model3d"})

# -- images (sync-back) ----------------------------------------------------------------------------
MEDIA_STATES_PER_QUERY = 50  # ids per nodes(ids:) read of pushed media
FILES_PER_UPDATE = 50  # files per fileUpdate
_MEDIA_STATE_FIELDS = "id ... on MediaImage { alt status mediaErrors { code message } image { url } }"
MEDIA_STATE_COST = 1 + 1 + 1  # the node, mediaErrors, image
_PRODUCT_IMAGES = f"""
query ProductImages($id: ID!) {{
  product(id: $id) {{
    id
    media(first: {MAX_PAGE}) {{
      nodes {{ id mediaContentType status alt ... on MediaImage {{ image {{ url width height }} }} }}
    }}
  }}
}}
"""
PRODUCT_IMAGES_COST = 1 + 2 + MAX_PAGE * (1 + 1)
# productUpdate appends (never productSet, which replaces the list); the new medium is the product's last.
_ADD_IMAGE = f"""
mutation AddProductImage($id: ID!, $media: [CreateMediaInput!]!) {{
  productUpdate(product: {{id: $id}}, media: $media) {{
    product {{ id media(last: 1) {{ nodes {{ {_MEDIA_STATE_FIELDS} }} }} }}
    userErrors {{ field message }}
  }}
}}
"""
_MEDIA_STATES = f"""
query MediaStates($ids: [ID!]!) {{
  nodes(ids: $ids) {{ {_MEDIA_STATE_FIELDS} }}
}}
"""
_REORDER_MEDIA = """
mutation ReorderProductMedia($id: ID!, $moves: [MoveInput!]!) {
  productReorderMedia(id: $id, moves: $moves) {
    job { id done }
    mediaUserErrors { code field message }
  }
}
"""
_REMOVE_MEDIA = """
mutation RemoveProductMedia($files: [FileUpdateInput!]!) {
  fileUpdate(files: $files) {
    files { id }
    userErrors { code field message }
  }
}
"""


def throttle_wait(requested: float, available: float, restore_rate: float) -> float:
    """Seconds until a bucket holding ``available`` points and restoring ``restore_rate`` a second can pay
    ``requested`` (Shopify's advice: (requested - available) / restoreRate); 0 when it already can."""
    if requested <= available:
        return 0.0
    if restore_rate <= 0:
        return math.inf
    return (requested - available) / restore_rate


def gid_number(value: Any, kind: str | None = None) -> str | None:
    """The numeric id at the end of a Shopify GID (``gid://shopify/Product/123`` → ``"123"``), optionally
    only for one ``kind``; None for anything else."""
    if not isinstance(value, str):
        return None
    match = _GID.match(value)
    if match is None or (kind is not None and match.group(1) != kind):
        return None
    return match.group(2)


def media_state(node: Mapping[str, Any]) -> StoreMedia:
    """A ``MediaImage`` node (id, alt, status, mediaErrors, image) as :class:`StoreMedia`: the first media
    error names the failure, the image's URL is there once READY."""
    media_id = gid_number(node.get("id"), "MediaImage")
    status = str(node.get("status") or "").lower()
    if media_id is None or status not in {state.value for state in MediaState}:
        raise StoreRequestFailed("Shopify answered a media without a MediaImage id or a known status")
    errors = [e for e in node.get("mediaErrors") or [] if isinstance(e, dict)]
    image = node.get("image")
    url = image.get("url") if isinstance(image, dict) else None
    return StoreMedia(
        media_id=media_id,
        state=MediaState(status),
        url=str(url) if url else None,
        alt=node.get("alt") or None,
        error_code=str(errors[0].get("code")) if errors and errors[0].get("code") else None,
        error_message=str(errors[0].get("message"))[:500] if errors and errors[0].get("message") else None,
    )


def user_errors_failure(errors: Any, action: str) -> EpoxError | None:
    """The port's error for a mutation's ``userErrors``/``mediaUserErrors`` (None when there are none): a
    product that does not exist is :class:`StoreProductGone`; an error on the media (its field under
    ``media``, ``moves`` or ``files``, or a media code) is :class:`StoreImageRejected`; anything else
    :class:`StoreRequestFailed`. Messages are trimmed to 200 characters."""
    problems = [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
    if not problems:
        return None
    for problem in problems:
        field = [str(f) for f in problem.get("field") or []]
        message = str(problem.get("message") or "")
        if problem.get("code") == "PRODUCT_DOES_NOT_EXIST" or (
            field == ["id"] and "product does not exist" in message.lower()
        ):
            return StoreProductGone(f"Shopify has no such product ({action})")
    first = problems[0]
    field = [str(f) for f in first.get("field") or []]
    code = str(first.get("code") or "")
    text = f"Shopify refused to {action}: " + str(first.get("message") or code or "no message")[:160]
    if (field and field[0] in ("media", "moves", "files")) or code.startswith("MEDIA") or "MEDIA" in code:
        return StoreImageRejected(text[:200])
    return StoreRequestFailed(text[:200])


def missing_files(problems: Sequence[Mapping[str, Any]], count: int) -> set[int] | None:
    """The indexes of the files a ``fileUpdate`` refused only because they do not exist (their ``field`` is
    ``["files", "N", "id"]``); None when there is any other problem, or none at all."""
    if not problems:
        return None
    gone: set[int] = set()
    for problem in problems:
        field = [str(f) for f in problem.get("field") or []]
        if problem.get("code") != "FILE_DOES_NOT_EXIST" or len(field) < 2 or not field[1].isdigit():
            return None
        if int(field[1]) >= count:
            return None
        gone.add(int(field[1]))
    return gone


def _remove_failure(problems: Sequence[Mapping[str, Any]]) -> EpoxError | None:
    if any(p.get("code") == "NON_READY_STATE" for p in problems):
        return StoreUnavailable("A medium is still processing in Shopify; remove it once it is done", retry_after=5)
    return user_errors_failure(list(problems), "take the images off the product")


def _gid_kind(value: Any) -> str | None:
    match = _GID.match(value) if isinstance(value, str) else None
    return match.group(1) if match else None


@dataclass
class _Bucket:
    """What the last answer said of a shop's bucket, and when (``clock`` seconds)."""

    available: float
    restore_rate: float
    maximum: float
    at: float


class ShopifyAdminClient(ShopifyAdmin):
    """:class:`ShopifyAdmin` over httpx; one client (lazily created) serves every shop."""

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        api_version: str,
        scopes: str,
        *,
        base_url_override: str = "",
        timeout: float = 20.0,
        max_throttle_wait: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client_id = client_id
        self._client_secret = SecretStr(client_secret)
        self.api_version = api_version
        self.scopes = scopes
        self.base_url_override = base_url_override.rstrip("/")
        self.timeout = timeout
        self.max_throttle_wait = max_throttle_wait
        self._transport = transport
        self._sleep = sleep
        self._now = now
        self._clock = clock
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}

    def __repr__(self) -> str:
        return f"ShopifyAdminClient(client_id={self.client_id!r}, api_version={self.api_version!r})"

    # -- plumbing ---------------------------------------------------------------------------------
    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(
                    timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 5.0)),
                    trust_env=False,
                    transport=self._transport,
                    follow_redirects=False,
                )
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _origin(self, shop: str) -> str:
        if not SHOP_DOMAIN.match(shop or ""):
            raise StoreNotReachable("not a {name}.myshopify.com shop domain")
        return self.base_url_override or f"https://{shop}"

    def _redact(self, text: str, *secrets: str) -> str:
        """``text`` trimmed, with the client secret and the given values masked (belt and braces: Shopify's
        error messages do not echo credentials, but a message is never trusted to stay that way)."""
        for secret in (self._client_secret.get_secret_value(), *secrets):
            if secret:
                text = text.replace(secret, "[redacted]")
        return text[:200]

    # -- OAuth ------------------------------------------------------------------------------------
    def authorize_url(self, shop: str, state: str, redirect_uri: str) -> str:
        query = urlencode(
            {"client_id": self.client_id, "scope": self.scopes, "redirect_uri": redirect_uri, "state": state}
        )
        return f"{self._origin(shop)}/admin/oauth/authorize?{query}"

    def exchange_code(self, shop: str, code: str) -> ShopifyTokens:
        return self._token_call(shop, {"code": code, "expiring": 1}, (code,))

    def refresh(self, shop: str, refresh_token: str) -> ShopifyTokens:
        return self._token_call(shop, {"grant_type": "refresh_token", "refresh_token": refresh_token}, (refresh_token,))

    def _token_call(self, shop: str, params: dict[str, Any], secrets: tuple[str, ...]) -> ShopifyTokens:
        url = f"{self._origin(shop)}/admin/oauth/access_token"
        body = {"client_id": self.client_id, "client_secret": self._client_secret.get_secret_value(), **params}
        what = "refresh" if "refresh_token" in params else "code exchange"
        try:
            response = self._http().post(url, json=body, headers={"Accept": "application/json"})
        except httpx.TimeoutException:
            _log.warning("shopify token %s timed out", what, extra={"fields": {"shop": shop}})
            raise StoreUnavailable("Shopify's token endpoint timed out") from None
        except httpx.TransportError as exc:
            _log.warning("shopify token %s failed: %s", what, type(exc).__name__, extra={"fields": {"shop": shop}})
            raise StoreUnavailable("Shopify's token endpoint could not be reached") from None
        status = response.status_code
        if status == 429 or status >= 500:
            _log.warning("shopify token %s answered %s", what, status, extra={"fields": {"shop": shop}})
            raise StoreUnavailable(
                f"Shopify's token endpoint answered {status}", retry_after=_retry_after(response) or 5
            )
        answer = _json_object(response)
        error = str(answer.get("error") or "") if answer is not None else ""
        error = re.sub(r"[^a-z_]", "", error.lower())[:40]  # an OAuth error code, nothing else
        if status == 401 and error == "invalid_client":
            # Our own app's credentials: every shop would fail alike, reconnecting cannot help.
            _log.error("Shopify refused the app's client credentials (SHOPIFY_CLIENT_ID / SHOPIFY_CLIENT_SECRET)")
            raise UpstreamRejectedCredentials("Shopify refused the app's client credentials")
        if status == 401 or (status == 400 and error == "invalid_grant"):
            _log.info("shopify token %s refused (%s)", what, error or status, extra={"fields": {"shop": shop}})
            raise StoreAuthorizationLost(f"Shopify refused the {what} ({error or status})")
        if status != 200:
            raise StoreRequestFailed(f"Shopify's token endpoint answered {status} ({error or 'no error code'})")
        if answer is None:
            raise StoreRequestFailed("Shopify's token endpoint answered something other than a JSON object")
        return self._tokens(answer, secrets)

    def _tokens(self, answer: Mapping[str, Any], secrets: tuple[str, ...]) -> ShopifyTokens:
        access = answer.get("access_token")
        refresh = answer.get("refresh_token")
        if not isinstance(access, str) or not access or (refresh is not None and not isinstance(refresh, str)):
            raise StoreRequestFailed("Shopify's token answer has no usable access token")
        now = self._now()
        try:
            access_expires = _expires(now, answer.get("expires_in"))
            refresh_expires = _expires(now, answer.get("refresh_token_expires_in"))
        except (TypeError, ValueError, OverflowError):
            raise StoreRequestFailed("Shopify's token answer has an unreadable lifetime") from None
        scope = answer.get("scope")
        scopes = [s.strip() for s in scope.split(",") if s.strip()] if isinstance(scope, str) else []
        return ShopifyTokens(
            access_token=SecretStr(access),
            refresh_token=SecretStr(refresh) if refresh else None,
            access_expires_at=access_expires,
            refresh_expires_at=refresh_expires,
            scopes=scopes,
        )

    # -- GraphQL ----------------------------------------------------------------------------------
    def _pace(self, shop: str, expected_cost: int) -> float:
        """Seconds to wait before sending a query of ``expected_cost``, from the shop's last known bucket; 0
        when it may be sent now, and then its points are taken from that estimate at once, so concurrent
        callers (a worker's threads) do not all send into a bucket only one of them can pay for."""
        with self._lock:
            bucket = self._buckets.get(shop)
            if bucket is None or expected_cost > bucket.maximum:
                return 0.0
            now = self._clock()
            available = min(bucket.maximum, bucket.available + max(0.0, now - bucket.at) * bucket.restore_rate)
            wait = throttle_wait(expected_cost, available, bucket.restore_rate)
            if wait <= 0.001:  # not a float's rounding after waiting exactly what was asked
                bucket.available, bucket.at = available - expected_cost, now
                return 0.0
            return wait

    def _observe(self, shop: str, body: Mapping[str, Any]) -> tuple[float, float, float] | None:
        """Remember the answer's throttle status; (requested, available, restore rate) when it has one."""
        cost = body.get("extensions", {}).get("cost") if isinstance(body.get("extensions"), dict) else None
        status = cost.get("throttleStatus") if isinstance(cost, dict) else None
        if not isinstance(status, dict):
            return None
        try:
            available = float(status["currentlyAvailable"])
            rate = float(status["restoreRate"])
            maximum = float(status["maximumAvailable"])
            requested = float(cost.get("requestedQueryCost") or 0) if isinstance(cost, dict) else 0.0
        except (KeyError, TypeError, ValueError):
            return None
        with self._lock:
            self._buckets[shop] = _Bucket(available, rate, maximum, self._clock())
        return requested, available, rate

    def _graphql(
        self,
        shop: str,
        token: str,
        query: str,
        variables: Mapping[str, Any],
        *,
        expected_cost: int,
        retry_transient: bool = True,
    ) -> dict[str, Any]:
        """POST one GraphQL request and return its ``data``, waiting out throttling and retrying transient
        failures (``retry_transient``: a read; a mutation is sent once unless Shopify says it did not run)."""
        url = f"{self._origin(shop)}/admin/api/{self.api_version}/graphql.json"
        headers = {"X-Shopify-Access-Token": token, "Content-Type": "application/json", "Accept": "application/json"}
        payload = {"query": query, "variables": dict(variables)}
        throttled_for = 0.0
        failures = 0
        while True:
            pause = min(self._pace(shop, expected_cost), max(0.0, self.max_throttle_wait - throttled_for))
            if pause > 0:
                self._sleep(pause)
                throttled_for += pause
                continue  # asked again: others may have taken the points restored meanwhile
            try:
                response = self._http().post(url, json=payload, headers=headers)
            except httpx.TransportError as exc:  # timeouts, refused or dropped connections
                kind = type(exc).__name__
                if retry_transient and failures + 1 < TRANSIENT.attempts:
                    self._sleep(TRANSIENT.delay(failures))
                    failures += 1
                    continue
                _log.warning("shopify graphql failed: %s", kind, extra={"fields": {"shop": shop}})
                raise StoreUnavailable("Shopify did not answer in time" if "Timeout" in kind else
                                       "Shopify could not be reached") from None  # fmt: skip
            status = response.status_code
            if status == 401:
                raise StoreAuthorizationLost("Shopify refused the shop's access token (401)")
            if status == 429 or status >= 500:
                retry_after = _retry_after(response)
                if (retry_transient or status == 429) and failures + 1 < TRANSIENT.attempts:
                    self._sleep(max(TRANSIENT.delay(failures), min(float(retry_after or 0), TRANSIENT.cap)))
                    failures += 1
                    continue
                _log.warning("shopify graphql answered %s", status, extra={"fields": {"shop": shop}})
                raise StoreUnavailable(f"Shopify answered {status}", retry_after=retry_after or 5)
            if status != 200:
                raise StoreRequestFailed(f"Shopify answered {status} to a GraphQL request")
            body = _json_object(response)
            if body is None:
                raise StoreRequestFailed("Shopify's GraphQL answer is not a JSON object")
            observed = self._observe(shop, body)
            errors = body.get("errors")
            codes = _error_codes(errors)
            if "THROTTLED" in codes:
                # A floor, so an answer that says THROTTLED with enough points still spends the wait budget.
                wait = max(throttle_wait(*observed) if observed else 1.0, 0.05)
                if throttled_for + wait > self.max_throttle_wait:
                    _log.info("shopify throttled beyond the wait allowed", extra={"fields": {"shop": shop}})
                    raise StoreUnavailable(
                        "Shopify's rate limit needs a pause", retry_after=max(1, math.ceil(min(wait, 3600)))
                    )
                self._sleep(wait)
                throttled_for += wait
                continue
            if errors:
                if "ACCESS_DENIED" in codes:
                    raise StoreAuthorizationLost("The shop's access token lacks a scope this needs (ACCESS_DENIED)")
                if "MAX_COST_EXCEEDED" in codes:
                    _log.error("shopify query above the single query cost limit", extra={"fields": {"shop": shop}})
                    raise StoreRequestFailed("A Shopify query cost more than a single query may (MAX_COST_EXCEEDED)")
                raise StoreRequestFailed("Shopify refused the query: " + self._redact(_first_message(errors), token))
            data = body.get("data")
            if not isinstance(data, dict):
                raise StoreRequestFailed("Shopify's GraphQL answer has no data")
            return data

    # -- catalog ----------------------------------------------------------------------------------
    def products_page(
        self, shop: str, token: str, *, after: str | None = None, query: str | None = None, first: int = 50
    ) -> StorePage:
        """One page of products; ``first`` is capped at :data:`PRODUCTS_PER_QUERY` (the cost limit)."""
        size = max(1, min(first, MAX_PAGE, PRODUCTS_PER_QUERY))
        data = self._graphql(
            shop,
            token,
            _PRODUCTS_PAGE,
            {"first": size, "after": after, "query": query},
            expected_cost=2 + size * PRODUCT_COST,
        )
        connection = _mapping(data.get("products"), "products")
        nodes = connection.get("nodes")
        if not isinstance(nodes, list):
            raise StoreRequestFailed("Shopify's products page has no nodes")
        cursor = _next_cursor(connection)
        return StorePage(products=[_product(node) for node in nodes], next_cursor=cursor)

    def products_by_ids(self, shop: str, token: str, product_ids: Sequence[str]) -> list[StoreProduct]:
        """The products among ``product_ids`` (numeric; anything else cannot exist and is left out), in that
        order, asked :data:`PRODUCTS_PER_QUERY` at a time."""
        if len(product_ids) > MAX_PAGE:
            raise StoreRequestFailed(f"at most {MAX_PAGE} products per lookup")
        wanted = list(dict.fromkeys(str(i) for i in product_ids if str(i).isdigit()))
        found: list[StoreProduct] = []
        for start in range(0, len(wanted), PRODUCTS_PER_QUERY):
            chunk = [f"gid://shopify/Product/{number}" for number in wanted[start : start + PRODUCTS_PER_QUERY]]
            data = self._graphql(
                shop, token, _PRODUCTS_BY_IDS, {"ids": chunk}, expected_cost=1 + len(chunk) * PRODUCT_COST
            )
            nodes = data.get("nodes")
            if not isinstance(nodes, list):
                raise StoreRequestFailed("Shopify's nodes answer is not a list")
            found.extend(_product(node) for node in nodes if isinstance(node, dict) and node.get("id"))
        return found

    def collections(self, shop: str, token: str) -> list[StoreCategory]:
        found: list[StoreCategory] = []
        after: str | None = None
        while True:
            data = self._graphql(shop, token, _COLLECTIONS, {"after": after}, expected_cost=COLLECTIONS_COST)
            connection = _mapping(data.get("collections"), "collections")
            for node in connection.get("nodes") or []:
                number = gid_number(node.get("id") if isinstance(node, dict) else None, "Collection")
                if number is None:
                    raise StoreRequestFailed("Shopify answered a collection without an id")
                count = node.get("productsCount")
                total = count.get("count") if isinstance(count, dict) else None
                found.append(
                    StoreCategory(
                        id=number,
                        name=str(node.get("title") or ""),
                        product_count=total if isinstance(total, int) else None,
                    )
                )
            after = _next_cursor(connection)
            if after is None:
                return found

    # -- bulk -------------------------------------------------------------------------------------
    def start_bulk_products(self, shop: str, token: str, collection_id: str | None = None) -> BulkOperation:
        """Start the catalog's bulk query (``products(query: "collection_id:N")`` for one collection, the
        filter Shopify added in 2024-10). Another bulk query still running on the shop is
        :class:`StoreUnavailable` (Shopify runs one at a time per app and shop)."""
        if collection_id is not None and not str(collection_id).isdigit():
            raise StoreRequestFailed("a collection id is numeric")
        scope = f'(query: "collection_id:{collection_id}")' if collection_id is not None else ""
        data = self._graphql(
            shop,
            token,
            _BULK_RUN,
            {"query": _BULK_PRODUCTS % scope},
            expected_cost=MUTATION_COST,
            retry_transient=False,
        )
        result = _mapping(data.get("bulkOperationRunQuery"), "bulkOperationRunQuery")
        problems = [e for e in result.get("userErrors") or [] if isinstance(e, dict)]
        if any(e.get("code") == "OPERATION_IN_PROGRESS" for e in problems):
            raise StoreUnavailable("Another bulk query is still running on the shop", retry_after=60)
        if problems:
            raise StoreRequestFailed("Shopify refused the bulk query: " + self._redact(str(problems[0].get("message"))))
        return _bulk(result.get("bulkOperation"))

    def uninstall(self, shop: str, token: str) -> None:
        """``appUninstall`` (Admin API 2025-07+). Not retried after a 5xx or timeout (it may have run);
        a token Shopify already refuses means the app is gone: done."""
        try:
            data = self._graphql(shop, token, _APP_UNINSTALL, {}, expected_cost=MUTATION_COST, retry_transient=False)
        except StoreAuthorizationLost:
            return
        result = _mapping(data.get("appUninstall"), "appUninstall")
        problems = [e for e in result.get("userErrors") or [] if isinstance(e, dict)]
        if problems and not any(e.get("code") == "APP_NOT_INSTALLED" for e in problems):
            raise StoreRequestFailed(
                "Shopify refused to uninstall the app: " + self._redact(str(problems[0].get("message")))
            )

    def bulk_operation(self, shop: str, token: str, operation_id: str) -> BulkOperation:
        if gid_number(operation_id, "BulkOperation") is None:
            raise StoreRequestFailed("not a bulk operation id")
        data = self._graphql(shop, token, _BULK_READ, {"id": operation_id}, expected_cost=1)
        if data.get("bulkOperation") is None:
            raise StoreRequestFailed("Shopify knows no such bulk operation")
        return _bulk(data.get("bulkOperation"))

    def stream_bulk_products(self, url: str, *, grouped: bool = True) -> Iterator[StoreProduct]:
        """The JSONL's products, each once its child rows are in. ``grouped`` (our operations'
        ``groupObjects: true``): one product held at a time; ``grouped=False`` buffers the whole catalog."""
        if not url.startswith(("https://", "http://")):
            raise StoreRequestFailed("not a bulk operation result URL")
        try:
            with self._http().stream("GET", url) as response:
                if response.status_code != 200:
                    if response.status_code == 429 or response.status_code >= 500:
                        raise StoreUnavailable(f"Shopify's bulk result answered {response.status_code}")
                    raise StoreRequestFailed(f"Shopify's bulk result answered {response.status_code} (expired?)")
                yield from _assemble(response.iter_lines(), grouped=grouped)
        except httpx.TransportError as exc:
            _log.warning("shopify bulk result stream failed: %s", type(exc).__name__)
            raise StoreUnavailable("The bulk result could not be read to the end") from None

    # -- images (sync-back) -----------------------------------------------------------------------
    def product_images(self, shop: str, token: str, product_id: str) -> list[StoreImage]:
        """The product's READY images (its first 250 media) in the store's order with alt text; ``position``
        is the medium's index among all the product's media (0 is the featured one)."""
        if not str(product_id).isdigit():
            raise StoreProductGone("not a Shopify product id")
        variables = {"id": f"gid://shopify/Product/{product_id}"}
        data = self._graphql(shop, token, _PRODUCT_IMAGES, variables, expected_cost=PRODUCT_IMAGES_COST)
        product = data.get("product")
        if product is None:
            raise StoreProductGone("Shopify has no such product")
        return _images(_mapping(product, "product").get("media"))

    def add_product_image(self, shop: str, token: str, product_id: str, *, source_url: str, alt: str) -> StoreMedia:
        """``productUpdate(product: {id}, media: [...])``: appends one image. Sent once (a retry after a 5xx or a
        timeout could append it twice); THROTTLED is waited out, since Shopify did not run it."""
        if not str(product_id).isdigit():
            raise StoreProductGone("not a Shopify product id")
        variables = {
            "id": f"gid://shopify/Product/{product_id}",
            "media": [{"originalSource": source_url, "mediaContentType": "IMAGE", "alt": alt}],
        }
        data = self._graphql(shop, token, _ADD_IMAGE, variables, expected_cost=MUTATION_COST, retry_transient=False)
        result = _mapping(data.get("productUpdate"), "productUpdate")
        failure = user_errors_failure(result.get("userErrors"), "add the image")
        if failure is not None:
            raise failure
        nodes = _nodes(_mapping(result.get("product"), "product").get("media"))
        if not nodes:
            raise StoreRequestFailed("Shopify's answer has no new media")
        return media_state(nodes[-1])

    def media_states(self, shop: str, token: str, media_ids: Sequence[str]) -> dict[str, StoreMedia]:
        """``nodes(ids:)`` :data:`MEDIA_STATES_PER_QUERY` at a time; ids that are not numeric cannot exist
        and are left out, like media Shopify no longer has (a null node)."""
        wanted = list(dict.fromkeys(str(i) for i in media_ids if str(i).isdigit()))
        states: dict[str, StoreMedia] = {}
        for start in range(0, len(wanted), MEDIA_STATES_PER_QUERY):
            chunk = [f"gid://shopify/MediaImage/{n}" for n in wanted[start : start + MEDIA_STATES_PER_QUERY]]
            data = self._graphql(
                shop, token, _MEDIA_STATES, {"ids": chunk}, expected_cost=1 + len(chunk) * MEDIA_STATE_COST
            )
            nodes = data.get("nodes")
            if not isinstance(nodes, list):
                raise StoreRequestFailed("Shopify's nodes answer is not a list")
            for node in nodes:
                if isinstance(node, dict) and gid_number(node.get("id"), "MediaImage") is not None:
                    state = media_state(node)
                    states[state.media_id] = state
        return states

    def reorder_product_images(self, shop: str, token: str, product_id: str, moves: Sequence[tuple[str, int]]) -> None:
        """``productReorderMedia``, the moves in the order given (each position zero-based at the time it is
        applied; ``newPosition`` is an UnsignedInt64, sent as a string). Shopify finishes it as a job."""
        if not moves:
            return
        if not str(product_id).isdigit():
            raise StoreProductGone("not a Shopify product id")
        if any(not str(media_id).isdigit() or position < 0 for media_id, position in moves):
            raise StoreRequestFailed("a move needs a numeric media id and a position of 0 or more")
        variables = {
            "id": f"gid://shopify/Product/{product_id}",
            "moves": [{"id": f"gid://shopify/MediaImage/{m}", "newPosition": str(p)} for m, p in moves],
        }
        data = self._graphql(shop, token, _REORDER_MEDIA, variables, expected_cost=MUTATION_COST)
        result = _mapping(data.get("productReorderMedia"), "productReorderMedia")
        failure = user_errors_failure(result.get("mediaUserErrors"), "reorder the images")
        if failure is not None:
            raise failure

    def remove_product_images(self, shop: str, token: str, product_id: str, media_ids: Sequence[str]) -> None:
        """``fileUpdate(files: [{id, referencesToRemove: [product]}])``, :data:`FILES_PER_UPDATE` at a time. A
        file Shopify no longer has (FILE_DOES_NOT_EXIST) is done: the rest are sent again without it. A medium
        still processing (NON_READY_STATE) is :class:`StoreUnavailable`; one that FAILED cannot be updated
        (INVALID_FAILED_MEDIA_STATE), which is :class:`StoreImageRejected`."""
        if not str(product_id).isdigit():
            return  # no such product: nothing of it to remove
        product = f"gid://shopify/Product/{product_id}"
        wanted = list(dict.fromkeys(str(i) for i in media_ids if str(i).isdigit()))
        for start in range(0, len(wanted), FILES_PER_UPDATE):
            chunk = wanted[start : start + FILES_PER_UPDATE]
            while chunk:
                files = [{"id": f"gid://shopify/MediaImage/{m}", "referencesToRemove": [product]} for m in chunk]
                data = self._graphql(shop, token, _REMOVE_MEDIA, {"files": files}, expected_cost=MUTATION_COST)
                result = _mapping(data.get("fileUpdate"), "fileUpdate")
                problems = [e for e in result.get("userErrors") or [] if isinstance(e, dict)]
                gone = missing_files(problems, len(chunk))
                if gone is None:
                    failure = _remove_failure(problems)
                    if failure is not None:
                        raise failure
                    break
                chunk = [m for n, m in enumerate(chunk) if n not in gone]

    # -- webhooks ---------------------------------------------------------------------------------
    def product_from_webhook(self, payload: Mapping[str, Any]) -> StoreProduct:
        """The REST-shaped product of ``products/create`` / ``products/update``: tags a comma-separated
        string, numeric ids, ``media`` (READY images, by position) or else ``images``."""
        try:
            return _rest_product(payload)
        except (KeyError, TypeError, ValueError, AttributeError, ValidationError):
            raise StoreRequestFailed("The webhook's payload is not a Shopify product") from None


def shopify_admin(settings: Settings) -> ShopifyAdminClient:
    """The Shopify Admin adapter of this deployment (503 ``vendor_not_configured`` without the app's
    client id and secret)."""
    secret = settings.shopify_client_secret.get_secret_value()
    require_vendor_settings(
        "Shopify", {"SHOPIFY_CLIENT_ID": settings.shopify_client_id, "SHOPIFY_CLIENT_SECRET": secret}
    )
    return ShopifyAdminClient(
        settings.shopify_client_id,
        secret,
        settings.shopify_api_version,
        settings.shopify_scopes,
        base_url_override=settings.shopify_admin_base_url,
    )


# -- answers → our models ---------------------------------------------------------------------------


def _retry_after(response: httpx.Response) -> int | None:
    value = response.headers.get("Retry-After")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return max(1, math.ceil(min(seconds, 3600))) if seconds is not None and seconds >= 0 else None


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        parsed = response.json()
    except (ValueError, UnicodeDecodeError):
        return None
    return parsed if isinstance(parsed, dict) else None


def _expires(now: datetime, seconds: Any) -> datetime | None:
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float | str):
        raise TypeError("lifetime")
    return now + timedelta(seconds=float(seconds))


def _error_codes(errors: Any) -> set[str]:
    if not isinstance(errors, list):
        return set()
    codes = set()
    for error in errors:
        extensions = error.get("extensions") if isinstance(error, dict) else None
        if isinstance(extensions, dict) and isinstance(extensions.get("code"), str):
            codes.add(extensions["code"])
    return codes


def _first_message(errors: Any) -> str:
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return str(errors[0].get("message") or "unknown error")
    return "unknown error" if not isinstance(errors, str) else errors


def _mapping(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise StoreRequestFailed(f"Shopify's answer has no {name}")
    return value


def _next_cursor(connection: Mapping[str, Any]) -> str | None:
    info = connection.get("pageInfo")
    cursor = info.get("endCursor") if isinstance(info, dict) and info.get("hasNextPage") else None
    return cursor if isinstance(cursor, str) else None


def _bulk(value: Any) -> BulkOperation:
    node = _mapping(value, "bulk operation")
    try:
        return BulkOperation(
            id=str(node["id"]),
            status=BulkStatus(str(node["status"]).lower()),
            url=node.get("url") or None,
            error_code=node.get("errorCode") or None,
            object_count=int(node.get("objectCount") or 0),
            root_object_count=int(node.get("rootObjectCount") or 0),
        )
    except (KeyError, ValueError, TypeError, ValidationError):
        raise StoreRequestFailed("Shopify answered an unreadable bulk operation") from None


def _nodes(value: Any) -> list[dict[str, Any]]:
    """A connection's nodes, whether selected as ``nodes`` or ``edges { node }`` (or already a list)."""
    if isinstance(value, list):
        items = value
    elif isinstance(value, dict):
        items = value.get("nodes") or [e.get("node") for e in value.get("edges") or [] if isinstance(e, dict)]
    else:
        items = []
    return [item for item in items if isinstance(item, dict)]


def _datetime(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _product(node: Any) -> StoreProduct:
    """A GraphQL product node (``ProductFields``; connections as ``nodes``/``edges`` or plain lists)."""
    if not isinstance(node, dict):
        raise StoreRequestFailed("Shopify answered a product that is not an object")
    number = gid_number(node.get("id"), "Product")
    if number is None or not isinstance(node.get("title"), str):
        raise StoreRequestFailed("Shopify answered a product without an id or title")
    variants = []
    for variant in _nodes(node.get("variants")):
        variant_id = gid_number(variant.get("id"), "ProductVariant")
        if variant_id is None:
            continue  # a variant we cannot name cannot be linked to anything
        options = {
            str(o.get("name")): str(o.get("value"))
            for o in variant.get("selectedOptions") or []
            if isinstance(o, dict) and o.get("name") is not None
        }
        variants.append(
            StoreVariant(
                id=variant_id,
                title=_optional_str(variant.get("title")),
                sku=variant.get("sku") or None,
                price=_optional_str(variant.get("price")),
                options=options,
            )
        )
    images = _images(node.get("media"))
    categories = [
        StoreCategory(id=cid, name=str(c.get("title") or ""))
        for c in _nodes(node.get("collections"))
        if (cid := gid_number(c.get("id"), "Collection")) is not None
    ]
    tags = node.get("tags")
    status = node.get("status")
    try:
        return StoreProduct(
            id=number,
            title=node["title"],
            handle=node.get("handle") or None,
            description_html=node.get("descriptionHtml"),
            product_type=node.get("productType") or None,
            vendor=node.get("vendor") or None,
            tags=[str(t) for t in tags] if isinstance(tags, list) else [],
            categories=categories,
            variants=variants,
            images=images,
            status=str(status).lower() if status else None,
            price=variants[0].price if len(variants) == 1 else None,
            sku=variants[0].sku if len(variants) == 1 else None,
            updated_at=_datetime(node.get("updatedAt")),
        )
    except ValidationError:
        raise StoreRequestFailed("Shopify answered a product we cannot read") from None


def _images(media: Any) -> list[StoreImage]:
    """A product's READY ``MediaImage`` media with an image URL; ``position`` is the index among all its media."""
    images = []
    for position, medium in enumerate(_nodes(media)):
        image = medium.get("image")
        media_id = gid_number(medium.get("id"), "MediaImage")
        ready = str(medium.get("status") or "").upper() == "READY"
        if media_id is None or not ready or not isinstance(image, dict) or not image.get("url"):
            continue
        images.append(
            StoreImage(
                media_id=media_id,
                url=str(image["url"]),
                alt=medium.get("alt") or None,
                position=position,
                width=image.get("width") if isinstance(image.get("width"), int) else None,
                height=image.get("height") if isinstance(image.get("height"), int) else None,
            )
        )
    return images


def _assemble(lines: Iterator[str], *, grouped: bool) -> Iterator[StoreProduct]:
    """Bulk JSONL rows → products. Product rows have no ``__parentId``; a child row's kind is its GID's."""
    pending: dict[str, dict[str, Any]] = {}  # product GID → row with collected children
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise StoreRequestFailed("The bulk result has a line that is not JSON") from None
        if not isinstance(row, dict):
            raise StoreRequestFailed("The bulk result has a line that is not an object")
        parent = row.get("__parentId")
        if parent is None:
            if grouped:
                for held in pending.values():
                    yield _product(held)
                pending.clear()
            pending[str(row.get("id"))] = {**row, "variants": [], "media": [], "collections": []}
            continue
        holder = pending.get(str(parent))
        if holder is None:
            raise StoreRequestFailed(
                "The bulk result is not grouped by product (run it with groupObjects: true)"
                if grouped
                else "The bulk result has a row whose product is missing"
            )
        kind = _gid_kind(row.get("id"))
        if kind == "ProductVariant":
            holder["variants"].append(row)
        elif kind == "Collection":
            holder["collections"].append(row)
        elif kind in _MEDIA_KINDS:
            holder["media"].append(row)
    for held in pending.values():
        yield _product(held)


def _rest_product(payload: Mapping[str, Any]) -> StoreProduct:
    if not isinstance(payload, Mapping):
        raise TypeError("payload")
    number = payload["id"]
    if isinstance(number, bool) or not isinstance(number, int | str) or not str(number).isdigit():
        raise ValueError("id")
    title = payload["title"]
    if not isinstance(title, str):
        raise ValueError("title")
    option_names = [
        str(o.get("name")) for o in sorted(payload.get("options") or [], key=lambda o: int(o.get("position") or 0))
    ]
    variants = []
    for variant in payload.get("variants") or []:
        options = {
            name: str(variant.get(f"option{n + 1}"))
            for n, name in enumerate(option_names[:3])
            if variant.get(f"option{n + 1}") is not None
        }
        variants.append(
            StoreVariant(
                id=str(variant["id"]),
                title=_optional_str(variant.get("title")),
                sku=variant.get("sku") or None,
                price=_optional_str(variant.get("price")),
                options=options,
            )
        )
    images: list[StoreImage] = []
    media = payload.get("media")
    if isinstance(media, list):
        for index, medium in enumerate(media):
            preview = medium.get("preview_image") or {}
            kind = str(medium.get("media_content_type") or "IMAGE").upper()
            if kind != "IMAGE" or str(medium.get("status") or "ready").upper() != "READY" or not preview.get("src"):
                continue
            images.append(
                StoreImage(
                    media_id=str(medium["id"]),
                    url=str(preview["src"]),
                    alt=medium.get("alt") or None,
                    position=_position(medium.get("position"), index),
                    width=preview.get("width"),
                    height=preview.get("height"),
                )
            )
    else:
        for index, image in enumerate(payload.get("images") or []):
            if not image.get("src"):
                continue
            images.append(
                StoreImage(
                    media_id=str(image["id"]),
                    url=str(image["src"]),
                    alt=image.get("alt") or None,
                    position=_position(image.get("position"), index),
                    width=image.get("width"),
                    height=image.get("height"),
                )
            )
    tags = payload.get("tags") or ""
    tag_list = [t.strip() for t in tags.split(",") if t.strip()] if isinstance(tags, str) else [str(t) for t in tags]
    status = payload.get("status")
    return StoreProduct(
        id=str(number),
        title=title,
        handle=payload.get("handle") or None,
        description_html=payload.get("body_html"),
        product_type=payload.get("product_type") or None,
        vendor=payload.get("vendor") or None,
        tags=tag_list,
        variants=variants,
        images=sorted(images, key=lambda i: i.position),
        status=str(status).lower() if status else None,
        price=variants[0].price if len(variants) == 1 else None,
        sku=variants[0].sku if len(variants) == 1 else None,
        updated_at=_datetime(payload.get("updated_at")),
    )


def _position(value: Any, index: int) -> int:
    """REST positions count from 1; ours from 0 (the featured image)."""
    return value - 1 if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else index
