"""WooCommerce's REST API v3 (``/wp-json/wc/v3``) for any merchant's store, SSRF-guarded.

A store's address is the merchant's input, so every request goes through the platform's
:class:`~shared.safe_fetch.SafeFetcher`: the host is resolved once, every address it resolves to must
be public (``FETCH_ALLOWED_NETWORKS`` opens loopback for the dev stack and tests), and the request is
sent to that vetted address. Stores must be https; ``WOOCOMMERCE_ALLOW_HTTP`` (development and tests
only) admits the plain-http stub.

The consumer key and secret go in HTTP Basic auth, as WooCommerce wants over HTTPS. (Over plain http a
real store wants OAuth 1.0a signatures instead; plain http is only ever the local stub, which takes
Basic auth there too.) They never appear in a URL, an exception or a log line.

Failures are translated into the port's errors: 401 (and a WordPress 403) → :class:`StoreAuthorizationLost`;
408/429/5xx, timeouts and dropped connections are retried twice (:data:`STORE_RETRIES`, ``Retry-After``
honoured up to :data:`MAX_RETRY_AFTER_WAIT`) and then :class:`StoreUnavailable`; a body that is not the
JSON we expect, a redirect or another 4xx → :class:`StoreRequestFailed`; an address we may not contact
→ :class:`StoreNotReachable`. A POST (webhook creation) is retried only on 429 and 503, which mean the
store did not act on it: replaying it after a timeout could create the webhook twice.

Product images (sync-back): ``GET products/{id}`` reads the gallery, ``PUT products/{id}`` with
``images`` replaces it (kept by ``id``, sideloaded from ``src``). A product that is not there (a 404
with WooCommerce's error code) or in the trash (answered with status ``trash``) is
:class:`StoreProductGone`; an image the store cannot sideload or keep (its 400
``woocommerce_product_image_upload_error`` or ``woocommerce_product_invalid_image_id``) is
:class:`StoreImageRejected` with the store's message (query strings of URLs in it cut off: our sources
are presigned). A PUT that sideloads is not replayed after a timeout or a 5xx other than 503 (the store
may have fetched the files: each replay would add another copy to its media library), and it waits
longer (:data:`SIDELOAD_LIMITS`): WordPress downloads every source before it answers.
"""

from __future__ import annotations

import base64
import html
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final, TypeVar
from urllib.parse import urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.config import Settings
from shared.retry import RetryPolicy, attempts
from shared.safe_fetch import (
    FetchedResource,
    FetchFailed,
    FetchLimits,
    FetchTemporarilyFailed,
    SafeFetcher,
    UrlNotAllowed,
)
from shared.stores.ports import (
    StoreAuthorizationLost,
    StoreCategory,
    StoreImage,
    StoreImageRejected,
    StoreNotReachable,
    StorePage,
    StoreProduct,
    StoreProductGone,
    StoreRequestFailed,
    StoreUnavailable,
    StoreVariant,
    WooCommerceApi,
    WooImageRef,
    WooKeys,
    WooWebhook,
)

API: Final = "/wp-json/wc/v3"
MAX_PER_PAGE: Final = 100  # WooCommerce refuses per_page above 100 (rest_invalid_param)
# Three tries in all (two retries), a few seconds at most: longer outages are the task queue's to wait.
STORE_RETRIES: Final = RetryPolicy(attempts=3, base=0.25, cap=2.0, deadline=15.0)
# A store asking for a longer pause gets it from the queue, not from a thread held open here.
MAX_RETRY_AFTER_WAIT: Final = 5
# Product pages of 100 with descriptions are large but not images: 16 MiB is far beyond any real page.
REST_LIMITS: Final = FetchLimits(
    max_bytes=16 * 1024 * 1024, connect_timeout=5.0, read_timeout=20.0, total_timeout=30.0, max_redirects=0
)
# WordPress fetches every new image's source before it answers a gallery update (its own download
# timeout is 300 s each): a few images from our object store take seconds, a slow host far longer.
SIDELOAD_LIMITS: Final = FetchLimits(
    max_bytes=16 * 1024 * 1024, connect_timeout=5.0, read_timeout=120.0, total_timeout=150.0, max_redirects=0
)
# A store that keeps announcing more pages must not keep us paging forever (200 pages of 100 rows).
MAX_LIST_PAGES: Final = 200

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_WP_ERROR_CODE: Final = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_NUMERIC_ID: Final = re.compile(r"^[1-9][0-9]{0,19}$")
_TRANSIENT: Final = frozenset({408, 429})
_NOT_ACTED_ON: Final = frozenset({429, 503})  # what a POST may be retried after
# WordPress's codes for an image a product update could not use (WooCommerce's own, then its helpers'
# and the legacy API's, which plugins still pass on).
_IMAGE_ERRORS: Final = frozenset(
    {
        "woocommerce_product_image_upload_error",
        "woocommerce_product_invalid_image_id",
        "woocommerce_rest_invalid_image",
        "woocommerce_rest_invalid_image_url",
        "woocommerce_rest_invalid_remote_image_url",
        "woocommerce_api_invalid_remote_product_image",
    }
)
_MAX_STORE_MESSAGE: Final = 300


# -- the wire: what WooCommerce answers (only the fields we read) -----------------------------------


class _Wire(BaseModel):
    # Plugins and old stores write prices and ids as numbers or strings; both read as text.
    model_config = ConfigDict(extra="ignore", frozen=True, coerce_numbers_to_str=True)


class _Term(_Wire):
    id: int
    name: str = ""


class _Image(_Wire):
    id: int = 0
    src: str = ""
    alt: str | None = None


class _Choice(_Wire):
    name: str = ""
    option: str = ""


class _Variation(_Wire):
    id: int
    name: str | None = None
    sku: str | None = None
    price: str | None = None
    regular_price: str | None = None
    attributes: list[_Choice] = Field(default_factory=list)


class _Product(_Wire):
    id: int = Field(strict=True, gt=0)
    name: str = Field(strict=True)
    slug: str | None = None
    type: str | None = None
    status: str | None = None
    description: str | None = None
    sku: str | None = None
    price: str | None = None
    regular_price: str | None = None
    categories: list[_Term] = Field(default_factory=list)
    tags: list[_Term] = Field(default_factory=list)
    images: list[_Image] = Field(default_factory=list)
    variations: list[int] = Field(default_factory=list)
    date_modified_gmt: str | None = None


class _Category(_Wire):
    id: int
    name: str
    count: int | None = None


class _Webhook(_Wire):
    id: int
    topic: str
    status: str
    delivery_url: str


W = TypeVar("W", bound=_Wire)


# -- the client -------------------------------------------------------------------------------------


class WooCommerceClient(WooCommerceApi):
    """The WooCommerce REST API v3 through ``fetcher`` (see the module's docstring)."""

    def __init__(
        self,
        fetcher: SafeFetcher,
        *,
        allow_http: bool = False,
        retry: RetryPolicy = STORE_RETRIES,
        limits: FetchLimits = REST_LIMITS,
        sideload_limits: FetchLimits = SIDELOAD_LIMITS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._fetcher = fetcher
        self._allow_http = allow_http
        self._retry = retry
        self._limits = limits
        self._sideload_limits = sideload_limits
        self._sleep = sleep

    # -- addresses ----------------------------------------------------------------------------------
    def check_store_url(self, store_url: str) -> str:
        """``scheme://host[:port][/path]`` (lower-case host, no default port, no trailing slash, query or
        fragment), once every address of the host may be contacted."""
        raw = store_url.strip()
        if "://" not in raw:
            raw = "https://" + raw  # merchants type "shop.example"
        try:
            parts = urlsplit(raw)
            port = parts.port
        except ValueError:
            raise StoreNotReachable("The store's address is not a valid URL.") from None
        scheme = parts.scheme.lower()
        self._check_scheme(scheme)
        if "@" in parts.netloc:
            raise StoreNotReachable("The store's address must not contain a user name or password.")
        host = parts.hostname or ""
        if not host:
            raise StoreNotReachable("The store's address has no host.")
        netloc = f"[{host}]" if ":" in host else host
        if port is not None and port != _DEFAULT_PORTS[scheme]:
            netloc += f":{port}"
        candidate = urlunsplit((scheme, netloc, parts.path.rstrip("/") or "/", "", ""))
        try:
            vetted = self._fetcher.vet(candidate, limits=self._limits)
        except UrlNotAllowed as exc:
            raise StoreNotReachable(f"The store's address cannot be used: {exc.detail}") from exc
        except FetchTemporarilyFailed as exc:
            raise StoreUnavailable("The store's host could not be looked up right now.") from exc
        return vetted.rstrip("/")

    def authorize_url(self, store_url: str, *, app_name: str, user_id: str, return_url: str, callback_url: str) -> str:
        """The page where the merchant grants us read/write keys (wc-auth v1)."""
        query = urlencode(
            {
                "app_name": app_name,
                "scope": "read_write",
                "user_id": user_id,
                "return_url": return_url,
                "callback_url": callback_url,
            }
        )
        return f"{store_url.rstrip('/')}/wc-auth/v1/authorize?{query}"

    # -- reads --------------------------------------------------------------------------------------
    def check_keys(self, store_url: str, keys: WooKeys) -> None:
        """Read one product id: works with any key that may read the catalog."""
        self._json(self._call("GET", store_url, keys, "/products", {"per_page": 1, "_fields": "id"}))

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
        """One page of products ordered by id (stable while the catalog changes), variations included."""
        if not 1 <= per_page <= MAX_PER_PAGE:
            raise ValueError(f"per_page must be between 1 and {MAX_PER_PAGE}")
        if page < 1:
            raise ValueError("page must be at least 1")
        params: dict[str, str | int] = {"page": page, "per_page": per_page, "orderby": "id", "order": "asc"}
        if category is not None:
            params["category"] = _numeric_id(category, "category")
        if include is not None:
            if not include:  # WooCommerce reads an empty include as "no filter": the whole catalog
                return StorePage(products=[], next_cursor=None, total=0)
            params["include"] = ",".join(_numeric_id(i, "include") for i in include)
        if modified_after is not None:
            moment = modified_after if modified_after.tzinfo else modified_after.replace(tzinfo=UTC)
            # WooCommerce's own format (no zone); dates_are_gmt makes it compare with date_modified_gmt
            # instead of the store's local time.
            params["modified_after"] = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
            params["dates_are_gmt"] = "true"
        if search:
            params["search"] = search
        answer = self._call("GET", store_url, keys, "/products", params)
        rows = _rows(self._json(answer))
        products: list[StoreProduct] = []
        for row in rows:
            wire = _parse_product(row)
            variants: list[StoreVariant] = []
            if wire.type == "variable" and wire.variations:
                found = self._variations(store_url, keys, wire.id)
                if found is None:
                    continue  # deleted between the list and its variations: missing, as include leaves it
                variants = found
            products.append(_store_product(wire, variants))
        total = _int_header(answer, "x-wp-total")
        pages = _int_header(answer, "x-wp-totalpages")
        more = page < pages if pages is not None else len(rows) == per_page
        return StorePage(products=products, next_cursor=str(page + 1) if more else None, total=total)

    def categories(self, store_url: str, keys: WooKeys) -> list[StoreCategory]:
        """Every product category, with the number of products in it."""
        categories = []
        for row in self._every_row(store_url, keys, "/products/categories", {}):
            wire = _parse(_Category, row, "category")
            categories.append(StoreCategory(id=str(wire.id), name=html.unescape(wire.name), product_count=wire.count))
        return categories

    def webhooks(self, store_url: str, keys: WooKeys) -> list[WooWebhook]:
        """The store's webhooks, whatever their status."""
        rows = self._every_row(store_url, keys, "/webhooks", {"status": "all"})
        return [_webhook(_parse(_Webhook, row, "webhook")) for row in rows]

    # -- writes -------------------------------------------------------------------------------------
    def create_webhook(
        self, store_url: str, keys: WooKeys, *, name: str, topic: str, delivery_url: str, secret: str
    ) -> WooWebhook:
        """An active webhook signed with ``secret`` (without one WooCommerce makes a secret we never learn)."""
        if not secret:
            raise ValueError("a webhook needs our own secret")
        body = {"name": name, "topic": topic, "delivery_url": delivery_url, "secret": secret, "status": "active"}
        answer = self._call("POST", store_url, keys, "/webhooks", json_body=body)
        return _webhook(_parse(_Webhook, self._json(answer), "webhook"))

    def activate_webhook(self, store_url: str, keys: WooKeys, webhook_id: str) -> WooWebhook:
        """Set the webhook's status back to active (WooCommerce also resets its failure count)."""
        path = f"/webhooks/{_numeric_id(webhook_id, 'webhook_id')}"
        answer = self._call("PUT", store_url, keys, path, json_body={"status": "active"})
        return _webhook(_parse(_Webhook, self._json(answer), "webhook"))

    def delete_webhook(self, store_url: str, keys: WooKeys, webhook_id: str) -> None:
        """Delete for good (webhooks cannot be trashed); one that is gone already counts as deleted."""
        path = f"/webhooks/{_numeric_id(webhook_id, 'webhook_id')}"
        self._request("DELETE", store_url, keys, path, {"force": "true"}, missing_ok=True)

    # -- images (sync-back) -------------------------------------------------------------------------
    def product(self, store_url: str, keys: WooKeys, product_id: str) -> StoreProduct:
        """The product with its gallery in the store's order (its variations are not fetched)."""
        path = f"/products/{_numeric_id(product_id, 'product_id')}"
        answer = self._call("GET", store_url, keys, path, refusal=_product_refusal)
        return _store_product(_live(_parse_product(self._json(answer)), path), [])

    def set_product_images(
        self, store_url: str, keys: WooKeys, product_id: str, images: Sequence[WooImageRef]
    ) -> list[StoreImage]:
        """Replace the gallery with ``images`` (element 0 the featured image); the gallery the store
        answered, the new images' attachment ids included."""
        path = f"/products/{_numeric_id(product_id, 'product_id')}"
        body = {"images": [_image_ref(image) for image in images]}
        sideloads = any(image.src is not None and image.id is None for image in images)
        answer = self._call(
            "PUT",
            store_url,
            keys,
            path,
            json_body=body,
            refusal=_product_refusal,
            acts_once=sideloads,
            limits=self._sideload_limits if sideloads else None,
        )
        return _store_product(_live(_parse_product(self._json(answer)), path), []).images

    # -- webhooks' bodies ---------------------------------------------------------------------------
    def product_from_webhook(self, payload: Mapping[str, Any]) -> StoreProduct:
        """The product a product.created/updated delivery carries (its variations are not fetched)."""
        return _store_product(_parse_product(payload), [])

    # -- plumbing -----------------------------------------------------------------------------------
    def _check_scheme(self, scheme: str) -> None:
        if scheme == "https" or (scheme == "http" and self._allow_http):
            return
        raise StoreNotReachable("The store's address must start with https://.")

    def _variations(self, store_url: str, keys: WooKeys, product_id: int) -> list[StoreVariant] | None:
        rows = self._pages(store_url, keys, f"/products/{product_id}/variations", {}, missing_ok=True)
        if rows is None:
            return None
        return [_variant(_parse(_Variation, row, "variation")) for row in rows]

    def _every_row(self, store_url: str, keys: WooKeys, path: str, params: Mapping[str, str | int]) -> list[Any]:
        rows = self._pages(store_url, keys, path, params, missing_ok=False)
        if rows is None:  # pragma: no cover - only missing_ok answers None
            raise StoreRequestFailed(f"The store has no {path}.")
        return rows

    def _pages(
        self, store_url: str, keys: WooKeys, path: str, params: Mapping[str, str | int], *, missing_ok: bool
    ) -> list[Any] | None:
        """Every row of a paged list (100 a page, until X-WP-TotalPages or a short page); None when the
        list's owner is gone (a 404 with ``missing_ok``)."""
        rows: list[Any] = []
        for page in range(1, MAX_LIST_PAGES + 1):
            query: dict[str, str | int] = {**params, "page": page, "per_page": MAX_PER_PAGE}
            answer = self._request("GET", store_url, keys, path, query, missing_ok=missing_ok)
            if answer is None:
                return None
            batch = _rows(self._json(answer))
            rows.extend(batch)
            pages = _int_header(answer, "x-wp-totalpages")
            if (pages is not None and page >= pages) or len(batch) < MAX_PER_PAGE:
                return rows
        raise StoreRequestFailed(f"The store's list at {path} goes on for more than {MAX_LIST_PAGES} pages.")

    def _call(
        self,
        method: str,
        store_url: str,
        keys: WooKeys,
        path: str,
        params: Mapping[str, str | int] | None = None,
        *,
        json_body: Mapping[str, Any] | None = None,
        refusal: Callable[[FetchedResource, str], Exception] | None = None,
        acts_once: bool = False,
        limits: FetchLimits | None = None,
    ) -> FetchedResource:
        """One REST call (see :meth:`_request`) whose 404 is a failure like any other."""
        answer = self._request(
            method,
            store_url,
            keys,
            path,
            params,
            json_body=json_body,
            missing_ok=False,
            refusal=refusal,
            acts_once=acts_once,
            limits=limits,
        )
        if answer is None:  # pragma: no cover - _request answers None only with missing_ok
            raise StoreRequestFailed(f"The store has no {path}.")
        return answer

    def _request(
        self,
        method: str,
        store_url: str,
        keys: WooKeys,
        path: str,
        params: Mapping[str, str | int] | None = None,
        *,
        json_body: Mapping[str, Any] | None = None,
        missing_ok: bool,
        refusal: Callable[[FetchedResource, str], Exception] | None = None,
        acts_once: bool = False,
        limits: FetchLimits | None = None,
    ) -> FetchedResource | None:
        """One REST call, retried while the store is transiently unavailable; the 2xx answer (None for a
        404 when ``missing_ok``). A POST, or a call that ``acts_once``, is replayed only after an answer
        that says the store did not act on it; ``refusal`` translates other failures (:func:`_refusal`)."""
        self._check_scheme(urlsplit(store_url).scheme.lower())
        once = acts_once or method == "POST"
        url = f"{store_url.rstrip('/')}{API}{path}"
        if params:
            url += "?" + urlencode(params)
        token = f"{keys.consumer_key.get_secret_value()}:{keys.consumer_secret.get_secret_value()}"
        headers = {"Authorization": "Basic " + base64.b64encode(token.encode()).decode(), "Accept": "application/json"}
        failure = StoreUnavailable("The store is not answering.")
        wait = 0
        for attempt in attempts(self._retry, f"woocommerce {method} {path}", sleep=self._sleep):
            if attempt and wait:
                self._sleep(wait)  # what Retry-After asked for, on top of the policy's jitter
            wait = 0
            try:
                # Redirects come back as answers: a store that moved must be connected at its new address
                # (following one would also drop our Authorization header at another origin).
                answer = self._fetcher.request(
                    method,
                    url,
                    json=json_body,
                    headers=headers,
                    limits=limits or self._limits,
                    raise_for_status=False,
                    follow_redirects=False,
                )
            except UrlNotAllowed as exc:
                raise StoreNotReachable(f"The store's address cannot be used: {exc.detail}") from exc
            except FetchTemporarilyFailed as exc:
                failure = StoreUnavailable(f"The store did not answer: {exc.detail}")
                if once:
                    raise failure from exc  # it may have acted on it: not replayed
                continue
            except FetchFailed as exc:
                raise StoreRequestFailed(f"The store's answer could not be read: {exc.detail}") from exc
            status = answer.status
            if status in _TRANSIENT or 500 <= status < 600:
                retry_after = _retry_after(answer.header("retry-after"))
                failure = StoreUnavailable(f"The store answered {status}.", retry_after=retry_after or 5)
                if (retry_after or 0) > MAX_RETRY_AFTER_WAIT or (once and status not in _NOT_ACTED_ON):
                    raise failure
                wait = retry_after or 0
                continue
            if 200 <= status < 300:
                return answer
            if status == 404 and missing_ok:
                return None
            raise (refusal or _refusal)(answer, path)
        raise failure

    @staticmethod
    def _json(answer: FetchedResource) -> Any:
        try:
            return json.loads(answer.body)
        except (ValueError, UnicodeDecodeError):
            raise StoreRequestFailed("The store's answer is not JSON (a plugin may print into the API).") from None


def woocommerce_api(settings: Settings, fetcher: SafeFetcher) -> WooCommerceClient:
    """The WooCommerce client on the platform's fetcher (``WOOCOMMERCE_ALLOW_HTTP`` admits http stores)."""
    return WooCommerceClient(fetcher, allow_http=settings.woocommerce_allow_http)


# -- translation ------------------------------------------------------------------------------------


def _refusal(answer: FetchedResource, path: str) -> Exception:
    """The port's error for a non-2xx, non-transient answer."""
    status = answer.status
    code = _wp_error_code(answer.body)
    named = f" ({code})" if code else ""
    if status == 401 or (status == 403 and code is not None):
        # 401: unknown key or wrong secret or a key without the permission; a WordPress 403: the key's
        # user may no longer manage WooCommerce. Either way only a new connection helps. (A 403 page
        # from a firewall in front of the store is not WordPress speaking, so it is not this.)
        return StoreAuthorizationLost(f"The store refused our API keys{named}.")
    if status in (301, 302, 303, 307, 308):
        return StoreRequestFailed(
            f"The store redirected {path} elsewhere; connect it with the address it redirects to.",
            upstream_status=status,
        )
    if status == 404 and code in (None, "rest_no_route"):
        return StoreRequestFailed(
            "The store has no WooCommerce REST API at this address (is WooCommerce active, are permalinks on?).",
            upstream_status=status,
        )
    return StoreRequestFailed(f"The store refused {path} with {status}{named}.", upstream_status=status)


def _product_refusal(answer: FetchedResource, path: str) -> Exception:
    """A product route's failures: the product gone, an image refused, else :func:`_refusal`'s."""
    code = _wp_error_code(answer.body)
    if answer.status == 404 and code not in (None, "rest_no_route"):
        # woocommerce_rest_product_invalid_id: no such product (deleted for good, or never there).
        return StoreProductGone(f"The store has no product at {path} ({code}).", upstream_status=404)
    if answer.status == 400 and code is not None and (code in _IMAGE_ERRORS or "image" in code):
        message = _wp_error_message(answer.body)
        return StoreImageRejected(
            f"The store refused an image ({code}): {message}" if message else f"The store refused an image ({code}).",
            store_code=code,
            store_message=message,
            upstream_status=400,
        )
    return _refusal(answer, path)


def _live(wire: _Product, path: str) -> _Product:
    """The product unless it is in the trash (WooCommerce still answers it, with status "trash")."""
    if (wire.status or "").lower() == "trash":
        raise StoreProductGone(f"The product at {path} is in the store's trash.")
    return wire


def _image_ref(image: WooImageRef) -> dict[str, Any]:
    """One element of ``images``: only the keys given (an ``id`` as WooCommerce's integer)."""
    if (image.id is None) == (image.src is None):
        raise ValueError("an image is kept by id or added by src, one of the two")
    element: dict[str, Any] = {}
    if image.id is not None:
        element["id"] = int(_numeric_id(image.id, "image id"))
    if image.src is not None:
        parts = urlsplit(image.src)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("an image's src must be an absolute http(s) URL")
        element["src"] = image.src
    for name in ("name", "alt"):
        value = getattr(image, name)
        if value is not None:
            element[name] = value
    return element


def _wp_error(body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _wp_error_code(body: bytes) -> str | None:
    """WordPress's error ``code`` (only a plain identifier: the rest of an error page is not repeated)."""
    code = _wp_error(body).get("code")
    return code if isinstance(code, str) and _WP_ERROR_CODE.match(code) else None


_URL_QUERY: Final = re.compile(r"(https?://[^\s?#]+)[?#]\S*?(?=[.,;:]?(?:\s|$))")
_TAG: Final = re.compile(r"<[^>]*>")


def _wp_error_message(body: bytes) -> str | None:
    """WordPress's error ``message`` as text we may keep and show: tags and control characters out,
    URLs without their query (a presigned source's signature is not for a sync log), shortened."""
    message = _wp_error(body).get("message")
    if not isinstance(message, str):
        return None
    text = html.unescape(_TAG.sub("", message))
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    text = _URL_QUERY.sub(r"\1", text)
    if len(text) > _MAX_STORE_MESSAGE:
        text = text[: _MAX_STORE_MESSAGE - 1] + "…"
    return text or None


def _retry_after(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return int(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return max(0, int((when - datetime.now(UTC)).total_seconds()) + 1)


def _int_header(answer: FetchedResource, name: str) -> int | None:
    value = (answer.header(name) or "").strip()
    return int(value) if value.isdigit() else None


def _rows(parsed: Any) -> list[Any]:
    if not isinstance(parsed, list):
        raise StoreRequestFailed("The store answered something other than a list.")
    return parsed


def _numeric_id(value: str, what: str) -> str:
    # Ids go into paths and filters: anything but a positive number is a caller's bug, not a store's.
    value = str(value).strip()
    if not _NUMERIC_ID.match(value):
        raise ValueError(f"{what} must be a numeric WooCommerce id")
    return value


def _parse(model: type[W], row: Any, what: str) -> W:
    if not isinstance(row, Mapping):
        raise StoreRequestFailed(f"The store sent a {what} that is not an object.")
    try:
        return model.model_validate(row)
    except ValidationError:
        # Field names only: the values are the store's data, not something for our error text.
        raise StoreRequestFailed(f"The store sent a {what} we cannot read.") from None


def _parse_product(row: Any) -> _Product:
    return _parse(_Product, row, "product")


def _gmt(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _text(value: str | None) -> str | None:
    return value if value else None


def _store_product(wire: _Product, variants: list[StoreVariant]) -> StoreProduct:
    return StoreProduct(
        id=str(wire.id),
        title=html.unescape(wire.name),  # titles come back HTML-escaped too, as the storefront shows them
        handle=_text(wire.slug),
        description_html=_text(wire.description),
        product_type=None,  # WooCommerce's type is simple/variable/…, not a merchandising type; categories group
        vendor=None,
        tags=[html.unescape(t.name) for t in wire.tags],  # term names come HTML-escaped ("Home &amp; Garden")
        categories=[StoreCategory(id=str(c.id), name=html.unescape(c.name)) for c in wire.categories],
        variants=variants,
        images=[
            StoreImage(media_id=str(image.id), url=image.src, alt=_text(image.alt), position=position)
            # id 0: a placeholder some versions show for a product without images, not an attachment
            for position, image in enumerate(i for i in wire.images if i.src and i.id)
        ],
        status=wire.status.lower() if wire.status else None,
        price=_text(wire.price) or _text(wire.regular_price),
        sku=_text(wire.sku),
        updated_at=_gmt(wire.date_modified_gmt),
    )


def _variant(wire: _Variation) -> StoreVariant:
    options = {choice.name: choice.option for choice in wire.attributes if choice.name}
    return StoreVariant(
        id=str(wire.id),
        title=html.unescape(wire.name) if wire.name else (" / ".join(options.values()) or None),
        sku=_text(wire.sku),
        price=_text(wire.price) or _text(wire.regular_price),
        options=options,
    )


def _webhook(wire: _Webhook) -> WooWebhook:
    return WooWebhook(id=str(wire.id), topic=wire.topic, status=wire.status, delivery_url=wire.delivery_url)
