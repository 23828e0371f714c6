"""A local stand-in for a WooCommerce store, spoken over real HTTP so the real ``httpx`` client can
connect to it, read its catalog and receive its webhooks as it would from a merchant's WordPress site.

Served (paths as on a real store; the store's address is :attr:`WooStub.url`)::

    GET  /wc-auth/v1/authorize?app_name&scope&user_id&return_url&callback_url   the key-granting page
    GET  /wc-auth/v1/access_granted?…&wc_auth_nonce=…                           the merchant pressed Approve
    GET  /wc-auth/v1/access_denied?…&wc_auth_nonce=…                            the merchant pressed Deny
    GET  /wp-json/wc/v3/products            per_page (1..100, default 10), page, modified_after,
                                            include, category, sku, search; X-WP-Total, X-WP-TotalPages, Link
    GET  /wp-json/wc/v3/products/{id}       (a trashed product too, with status "trash", as WooCommerce answers)
    PUT|POST /wp-json/wc/v3/products/{id}   {images: [{id} | {src, name, alt}, …], name, description, …}
    GET  /wp-json/wc/v3/products/{id}/variations   (paged like products; [] for a simple product)
    GET  /wp-json/wc/v3/products/categories        (paged; ``count`` = products in the category)
    GET  /wp-json/wc/v3/webhooks?status=all|active|paused|disabled
    POST /wp-json/wc/v3/webhooks            {name, topic, delivery_url, secret, status}
    GET|PUT /wp-json/wc/v3/webhooks/{id}    PUT {status: "active"} re-enables a disabled webhook
    DELETE /wp-json/wc/v3/webhooks/{id}?force=true   (without force: 501, webhooks cannot be trashed)
    GET  /wp-content/uploads/{yyyy}/{mm}/{file}      the media library: the demo's small real PNGs and
                                                    every image sideloaded since, as fetched

**The demo store** (:func:`demo_products`): 50 deterministic products in 6 categories with tags, one or
two images each, five of them variable with three size variations each (their own SKUs and images).
The merchant edits the catalog with :meth:`WooStub.create_product`, :meth:`WooStub.update_product`,
:meth:`WooStub.merchant_removes_image`, :meth:`WooStub.trash_product` and :meth:`WooStub.delete_product`,
which fire the ``product.created`` / ``product.updated`` / ``product.deleted`` webhooks.

**Product images** (REST API docs, Products → images; ``WC_REST_Products_V2_Controller::set_product_images``).
Every image is an attachment in the store's media library (:attr:`WooStub.media`); a product shows
attachments in order, element 0 being the featured image. ``images`` in an update **replaces the whole
gallery**: an element with ``id`` keeps that attachment (one that is not an image in the library: 400
``woocommerce_product_invalid_image_id``, "#N is an invalid image ID."); an element with only ``src``
is sideloaded while the request waits: the stub really GETs the URL (redirects followed, timeout
``sideload_timeout``) and, as ``download_url`` and ``wp_handle_sideload`` do, names the file after the
URL path's basename, which needs an image extension WooCommerce allows (jpg, jpeg, jpe, gif, png, bmp,
tif, tiff, ico, webp) and content that really is an image (a PNG named ``.jpg`` is renamed ``.png``). A
failed fetch, a non-200 answer, a missing or other extension or content that is not an image is 400
``woocommerce_product_image_upload_error`` with WordPress's message ("Error getting remote image URL.
Error: Not Found", "Invalid image: Sorry, you are not allowed to upload this file type.") and the
product does not change — though attachments sideloaded for earlier elements stay in the library and
``name``/``alt`` already written on earlier attachments stay written, as in WordPress. A new attachment
gets a fresh id, a ``src`` under ``/wp-content/uploads/{yyyy}/{mm}/`` (``-1``, ``-2``… when the name is
taken), ``name`` (the file name without extension unless one was sent) and ``alt``; ``name``/``alt`` sent
with an ``id`` update that attachment. ``images: []`` removes every image. Removing an image from a
product leaves its attachment in the library (REST API keys cannot call ``wp/v2/media``). A successful
update fires ``product.updated``. With ``safe_remote_only`` the stub refuses sources on private or
loopback addresses or ports other than 80, 443 and 8080 as ``wp_safe_remote_get`` does ("A valid URL was
not provided."); it is off by default because every local service is on loopback.

**wc-auth** (WooCommerce's "authentication endpoint", docs: REST API → Authentication). ``GET
/wc-auth/v1/authorize`` validates the parameters (``scope`` is ``read``, ``write`` or ``read_write``;
``return_url`` and ``callback_url`` absolute URLs; with ``https_callbacks_only`` the callback must be
https, as WooCommerce demands — the stub allows http by default because local services speak http).
With ``auto_approve`` (the default) the merchant approves at once; otherwise the page shows Approve and
Deny links and :meth:`WooStub.approve` / :meth:`WooStub.deny` press them. Approving creates an API key
and POSTs ``{key_id, user_id, consumer_key, consumer_secret, key_permissions}`` as JSON, **unsigned**, to
``callback_url`` (timeout ``callback_timeout``, 60 s like WooCommerce); if the answer is not exactly 200
the key is deleted and the merchant sees an error page (401), as WooCommerce does; otherwise the browser
is redirected (302) to ``return_url?success=1&user_id=…``. Denying redirects to ``success=0``.

**REST v3** needs a key: HTTP Basic auth (consumer key as user, secret as password) or the
``consumer_key``/``consumer_secret`` query parameters — what WooCommerce accepts over HTTPS (the stub
serves plain http on loopback and accepts them there too). No credentials: 401
``woocommerce_rest_cannot_view``; an unknown key or a wrong secret: 401
``woocommerce_rest_authentication_error``; a ``read`` key writing or a ``write`` key reading: 401. Errors
have WordPress's shape ``{code, message, data: {status}}``. ``per_page`` outside 1..100 is 400
``rest_invalid_param``; a page past the end is an empty list. ``modified_after`` compares with
``date_modified_gmt``. Dates are the store's (UTC) without a zone, as WooCommerce writes them.

**Webhooks.** Creating an active webhook sends the creation ping: a POST with the form body
``webhook_id=N`` and no signature (its answer does not matter). Each product change is delivered at
once (WooCommerce queues it through Action Scheduler; the order is the same) to every active webhook of
its topic: the product's JSON (for ``product.deleted`` only ``{"id": N}``), with ``X-WC-Webhook-Source``,
``-Topic``, ``-Resource``, ``-Event``, ``-Signature`` (base64 HMAC-SHA256 of the raw body with the
webhook's secret), ``-ID`` and ``-Delivery-ID``. A 2xx, 301 or 302 answer is a success and resets the
webhook's failure count; anything else (or no answer) is a failure that is **never retried**; after more
than 5 consecutive failures the webhook's status becomes ``disabled`` and it delivers nothing until a
``PUT {status: "active"}``. Every delivery is in :attr:`WooStub.deliveries`.

Failures are programmable with :meth:`WooStub.fail`: ``"429"`` (with Retry-After, as a host's rate
limiter answers), ``"500"``, ``"502"``, ``"503"``, ``"malformed"`` (200 with a truncated JSON body, as a
PHP notice printed into the response produces) or ``"drop"`` (the connection is closed without an
answer), for the next ``times`` requests, optionally only for paths starting with ``path``. Every request
is recorded (:class:`Recorded`). ``method`` limits a failure to one method (``PUT`` on a product while
its ``GET`` still answers), ``retry_after`` sets a 429's Retry-After.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import ipaddress
import json
import re
import secrets
import socket
import struct
import threading
import zlib
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from dev.stubs.serving import StubHandler, serving

API = "/wp-json/wc/v3"
UPLOADS = "/wp-content/uploads/2026/01/"
UPLOADS_ROOT = "/wp-content/uploads/"
# woocommerce_rest_allowed_image_mime_types: the extensions a sideloaded file may have.
IMAGE_EXTENSIONS = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "jpe": "image/jpeg",
    "gif": "image/gif",
    "png": "image/png",
    "bmp": "image/bmp",
    "tif": "image/tiff",
    "tiff": "image/tiff",
    "ico": "image/x-icon",
    "webp": "image/webp",
}
WP_USER_AGENT = "WordPress/6.9"
SCOPES = ("read", "write", "read_write")
PRODUCT_TOPICS = ("product.created", "product.updated", "product.deleted", "product.restored")
MAX_DELIVERY_FAILURES = 5  # WooCommerce's woocommerce_max_webhook_delivery_failures default
USER_AGENT = "WooCommerce/10.3.0 Hookshot (WordPress/6.9)"
FAILURE_KINDS = ("429", "500", "502", "503", "malformed", "drop")
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)

Answer = tuple[int, bytes, dict[str, str]]  # status, body, extra headers (Content-Type included)


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    raw: bytes
    status: int = 0  # 0: the connection was dropped


@dataclass
class ApiKey:
    key_id: int
    user_id: str  # what the app sent as user_id (WooCommerce stores the WordPress user separately)
    consumer_key: str
    consumer_secret: str
    permissions: str
    description: str


@dataclass(frozen=True)
class Delivery:
    webhook_id: int
    topic: str
    delivery_id: str
    body: bytes
    status: int  # the endpoint's HTTP status; 0 when it could not be reached


@dataclass(frozen=True)
class AuthOutcome:
    """What the merchant's browser got after Approve/Deny: a redirect (302 + Location) or an error page."""

    status: int
    location: str | None
    key: ApiKey | None  # the key the app now holds (None when denied or when the callback failed)
    callback_status: int | None = None  # what callback_url answered (0: unreachable)


class _Refused(Exception):
    """A request refused deep in a handler; ``answer`` is what the client gets."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer[0])
        self.answer = answer


@dataclass
class _Failure:
    kind: str
    times: int
    path: str | None
    method: str | None = None
    retry_after: int = 1


def _wc_date(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def png(seed: int, size: int = 8) -> bytes:
    """A small real PNG (one colour from ``seed``), so image fetches get bytes Pillow can open."""
    colour = bytes(((seed * 67) % 256, (seed * 131) % 256, (seed * 29 + 80) % 256))
    rows = b"".join(b"\x00" + colour * size for _ in range(size))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


_CATEGORIES = [
    (15, "Uncategorized", "uncategorized"),
    (16, "Clothing", "clothing"),
    (17, "Accessories", "accessories"),
    (18, "Home", "home"),
    (19, "Kitchen", "kitchen"),
    (20, "Outdoor", "outdoor"),
]
_TAGS = [(30, "new", "new"), (31, "sale", "sale"), (32, "eco", "eco"), (33, "gift", "gift")]
_ITEMS = ["T-Shirt", "Hoodie", "Cap", "Mug", "Lamp", "Backpack", "Bottle", "Scarf", "Candle", "Blanket"]
_ADJECTIVES = ["Classic", "Linen", "Woven", "Stoneware", "Recycled"]
_VARIABLE = {0, 1, 10, 11, 20}  # indexes of the variable products (clothing sizes)


def demo_products() -> tuple[dict[int, dict[str, Any]], dict[int, list[dict[str, Any]]]]:
    """The demo store's 50 products and the variations of its variable ones (deterministic)."""
    products: dict[int, dict[str, Any]] = {}
    variations: dict[int, list[dict[str, Any]]] = {}
    for index in range(50):
        product_id = 100 + index
        name = f"{_ADJECTIVES[index // 10]} {_ITEMS[index % 10]}"
        slug = name.lower().replace(" ", "-")
        category = _CATEGORIES[1 + index % 5]
        tags = [_TAGS[index % 4]] + ([_TAGS[(index + 1) % 4]] if index % 3 == 0 else [])
        modified = _EPOCH + timedelta(hours=index)
        images = [_image(1000 + index * 2 + n, f"{slug}-{n + 1}", name, modified) for n in range(1 + index % 2)]
        product: dict[str, Any] = {
            "id": product_id,
            "name": name,
            "slug": slug,
            "type": "variable" if index in _VARIABLE else "simple",
            "status": "publish",
            "featured": index % 7 == 0,
            "catalog_visibility": "visible",
            "description": f"<p>The {name.lower()}, made to last. Demo product {index + 1} of 50.</p>",
            "short_description": f"<p>{name}.</p>",
            "sku": f"DEMO-{index + 1:03d}",
            "regular_price": f"{10 + index}.00",
            "categories": [{"id": category[0], "name": category[1], "slug": category[2]}],
            "tags": [{"id": t[0], "name": t[1], "slug": t[2]} for t in tags],
            "images": images,
            "attributes": [],
            "variations": [],
            "date_created": _wc_date(modified),
            "date_modified": _wc_date(modified),
        }
        if index in _VARIABLE:
            product["attributes"] = [
                {"id": 1, "name": "Size", "position": 0, "visible": True, "variation": True, "options": ["S", "M", "L"]}
            ]
            rows = []
            for n, size in enumerate(["S", "M", "L"]):
                variation_id = 500 + index * 3 + n
                rows.append(
                    {
                        "id": variation_id,
                        "sku": f"DEMO-{index + 1:03d}-{size}",
                        "description": "",
                        "regular_price": f"{10 + index}.00",
                        "image": _image(2000 + index * 3 + n, f"{slug}-{size.lower()}", f"{name} {size}", modified),
                        "attributes": [{"id": 1, "name": "Size", "option": size}],
                        "date_created": _wc_date(modified),
                        "date_modified": _wc_date(modified),
                    }
                )
            product["variations"] = [row["id"] for row in rows]
            variations[product_id] = rows
        products[product_id] = product
    return products, variations


def _image(image_id: int, file: str, name: str, when: datetime) -> dict[str, Any]:
    # src is relative here; the stub prefixes its address when it answers.
    return {
        "id": image_id,
        "date_created": _wc_date(when),
        "date_modified": _wc_date(when),
        "src": UPLOADS + file + ".png",
        "name": file,
        "alt": name,
    }


@dataclass
class WooStub:
    auto_approve: bool = True
    https_callbacks_only: bool = False
    callback_timeout: float = 60.0
    delivery_timeout: float = 60.0
    sideload_timeout: float = 30.0  # WordPress's download_url allows 300 s; tests need no such wait
    safe_remote_only: bool = False  # refuse private sources as wp_safe_remote_get does (see the docstring)
    port: int = 0
    requests: list[Recorded] = field(default_factory=list)
    keys: dict[int, ApiKey] = field(default_factory=dict)
    products: dict[int, dict[str, Any]] = field(default_factory=dict)
    variations: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    webhooks: dict[int, dict[str, Any]] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    pings: list[tuple[int, int]] = field(default_factory=list)  # (webhook id, status the ping got)
    callbacks: list[tuple[str, bytes, int]] = field(default_factory=list)  # (url, body, status) of key callbacks
    # The media library: attachment id -> {id, src, name, alt, dates; private: data, content_type, parent}.
    media: dict[int, dict[str, Any]] = field(default_factory=dict)
    sideloaded: list[str] = field(default_factory=list)  # every src the store fetched, in order
    lock: threading.RLock = field(default_factory=threading.RLock)
    _failures: list[_Failure] = field(default_factory=list)
    _pending: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)  # user_id -> (nonce, query)
    _next_id: int = 10_000
    _last_key_id: int = 0  # key ids are never reused, like the woocommerce_api_keys table's

    def __post_init__(self) -> None:
        if not self.products:
            self.products, self.variations = demo_products()
        for product in self.products.values():
            self._register_images(product)
        for rows in self.variations.values():
            for row in rows:
                self._register_images(row)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- programming ------------------------------------------------------------------------------
    def fail(
        self, kind: str, times: int = 1, path: str | None = None, *, method: str | None = None, retry_after: int = 1
    ) -> None:
        """The next ``times`` requests (to paths starting with ``path``, with ``method``) fail as ``kind``."""
        assert kind in FAILURE_KINDS, kind
        with self.lock:
            self._failures.append(_Failure(kind, times, path, method, retry_after))

    def add_key(self, permissions: str = "read_write", user_id: str = "1") -> ApiKey:
        """An API key as if the merchant had created one in WooCommerce → Settings → Advanced → REST API."""
        assert permissions in SCOPES, permissions
        with self.lock:
            key = ApiKey(
                key_id=self._new_key_id(),
                user_id=user_id,
                consumer_key="ck_" + secrets.token_hex(20),
                consumer_secret="cs_" + secrets.token_hex(20),
                permissions=permissions,
                description=f"Key {len(self.keys) + 1}",
            )
            self.keys[key.key_id] = key
        return key

    def seen(self, method: str, path: str) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.method == method and r.path == path]

    def _new_key_id(self) -> int:
        with self.lock:
            self._last_key_id += 1
            return self._last_key_id

    def _new_id(self) -> int:
        with self.lock:
            self._next_id += 1
            return self._next_id

    # -- the merchant editing the catalog -----------------------------------------------------------
    def create_product(self, name: str, **fields: Any) -> dict[str, Any]:
        now = _wc_date(datetime.now(UTC))
        product_id = self._new_id()
        product: dict[str, Any] = {
            "id": product_id,
            "name": name,
            "slug": name.lower().replace(" ", "-"),
            "type": "simple",
            "status": "publish",
            "featured": False,
            "catalog_visibility": "visible",
            "description": "",
            "short_description": "",
            "sku": "",
            "regular_price": "",
            "categories": [{"id": 15, "name": "Uncategorized", "slug": "uncategorized"}],
            "tags": [],
            "images": [],
            "attributes": [],
            "variations": [],
            "date_created": now,
            "date_modified": now,
            **fields,
        }
        with self.lock:
            self.products[product_id] = product
            self._register_images(product)
        self._fire("product.created", product_id)
        return self.product_json(product_id)

    def update_product(self, product_id: int, **fields: Any) -> dict[str, Any]:
        with self.lock:
            self.products[product_id].update(fields, date_modified=_wc_date(datetime.now(UTC)))
            self._register_images(self.products[product_id])
        self._fire("product.updated", product_id)
        return self.product_json(product_id)

    def merchant_removes_image(self, product_id: int, attachment_id: int) -> dict[str, Any]:
        """The merchant removes one image from the product in wp-admin (the attachment stays in the media
        library) and saves: ``product.updated`` is delivered. The product as the REST API now shows it."""
        with self.lock:
            product = self.products[product_id]
            kept = [image for image in product["images"] if image["id"] != attachment_id]
            if len(kept) == len(product["images"]):
                raise ValueError(f"product {product_id} has no image {attachment_id}")
            product.update(images=kept, date_modified=_wc_date(datetime.now(UTC)))
        self._fire("product.updated", product_id)
        return self.product_json(product_id)

    def trash_product(self, product_id: int) -> None:
        """The merchant moves the product to the trash: ``product.deleted`` is delivered, lists leave it
        out, ``GET products/{id}`` still answers it with status ``trash``."""
        with self.lock:
            self.products[product_id].update(status="trash", date_modified=_wc_date(datetime.now(UTC)))
        self._fire("product.deleted", product_id)

    def gallery(self, product_id: int) -> list[dict[str, Any]]:
        """The product's images in order (element 0 the featured image): ``{id, src, name, alt}``."""
        return [
            {k: image[k] for k in ("id", "src", "name", "alt")} for image in self.product_json(product_id)["images"]
        ]

    def library_image(self, attachment_id: int) -> dict[str, Any] | None:
        """The attachment as the media library holds it (``{id, src, name, alt}``), None when there is none."""
        with self.lock:
            attachment = self.media.get(attachment_id)
            if attachment is None:
                return None
            return {k: attachment[k] for k in ("id", "name", "alt")} | {"src": self._absolute_src(attachment["src"])}

    def delete_product(self, product_id: int) -> None:
        """Deleted for good (``force=true``); moving to the trash also fires ``product.deleted``."""
        self._fire("product.deleted", product_id)
        with self.lock:
            self.products.pop(product_id)
            self.variations.pop(product_id, None)

    # -- wc-auth ------------------------------------------------------------------------------------
    def approve(self, user_id: str) -> AuthOutcome:
        """The merchant presses Approve on the page ``authorize`` showed for this ``user_id``."""
        with self.lock:
            _, query = self._pending.pop(user_id)
        return self._grant(query)

    def deny(self, user_id: str) -> AuthOutcome:
        with self.lock:
            _, query = self._pending.pop(user_id)
        return AuthOutcome(302, _with_query(query["return_url"], success="0", user_id=user_id), None)

    def _authorize(self, query: dict[str, str]) -> Answer:
        for name in ("app_name", "scope", "user_id", "return_url", "callback_url"):
            if not query.get(name):
                return _die(400, f"Missing parameter {name}")
        if query["scope"] not in SCOPES:
            return _die(400, "Invalid scope " + query["scope"])
        for name in ("return_url", "callback_url"):
            parts = urlsplit(query[name])
            if parts.scheme not in ("http", "https") or not parts.netloc:
                return _die(400, f"The {name} is not a valid URL")
        if self.https_callbacks_only and urlsplit(query["callback_url"]).scheme != "https":
            return _die(400, "The callback_url needs to be over SSL")
        if self.auto_approve:
            return _outcome_answer(self._grant(query))
        nonce = secrets.token_hex(5)
        with self.lock:
            self._pending[query["user_id"]] = (nonce, query)
        link = urlencode({**query, "wc_auth_nonce": nonce})
        body = (
            f"<h1>{html.escape(query['app_name'])} would like to connect to your store</h1>"
            f"<p>This will give it {html.escape(query['scope'])} access.</p>"
            f'<a href="/wc-auth/v1/access_granted?{html.escape(link)}">Approve</a> '
            f'<a href="/wc-auth/v1/access_denied?{html.escape(link)}">Deny</a>'
        )
        return 200, _page(body), {"Content-Type": "text/html; charset=UTF-8"}

    def _press(self, query: dict[str, str], granted: bool) -> Answer:
        with self.lock:
            pending = self._pending.get(query.get("user_id", ""))
            if pending is None or not hmac.compare_digest(pending[0], query.get("wc_auth_nonce", "")):
                return _die(403, "The link you followed has expired")
        outcome = self.approve(query["user_id"]) if granted else self.deny(query["user_id"])
        return _outcome_answer(outcome)

    def _grant(self, query: dict[str, str]) -> AuthOutcome:
        key = self.add_key(query["scope"], query["user_id"])
        key.description = f"{query['app_name']} - API ({datetime.now(UTC):%Y-%m-%d %H:%M:%S})"
        payload = json.dumps(
            {
                "key_id": key.key_id,
                "user_id": query["user_id"],
                "consumer_key": key.consumer_key,
                "consumer_secret": key.consumer_secret,
                "key_permissions": key.permissions,
            }
        ).encode()
        status = _post(
            query["callback_url"],
            payload,
            {"Content-Type": "application/json;charset=UTF-8", "User-Agent": USER_AGENT},
            self.callback_timeout,
        )
        with self.lock:
            self.callbacks.append((query["callback_url"], payload, status))
            if status != 200:  # exactly 200: anything else deletes the key
                self.keys.pop(key.key_id, None)
        if status != 200:
            return AuthOutcome(401, None, None, status)
        return AuthOutcome(302, _with_query(query["return_url"], success="1", user_id=query["user_id"]), key, status)

    # -- REST ---------------------------------------------------------------------------------------
    def handle(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], raw: bytes
    ) -> Answer | None:
        """The answer to one request (None: drop the connection)."""
        taken = self._take_failure(method, path)
        failure = taken.kind if taken else None
        if failure == "drop":
            return None
        if taken is not None and failure in ("429", "500", "502", "503"):
            extra = {"Content-Type": "text/html; charset=UTF-8"}
            if failure == "429":
                extra["Retry-After"] = str(taken.retry_after)
            return int(taken.kind), _page(f"Error {taken.kind}"), extra
        try:
            answer = self._route(method, path, query, headers, raw)
        except _Refused as refused:
            answer = refused.answer
        if failure == "malformed":
            status, body, extra = answer
            return (
                status,
                b"<br />\n<b>Notice</b>: Undefined index in functions.php<br />\n" + body[: len(body) // 2],
                extra,
            )
        return answer

    def _take_failure(self, method: str, path: str) -> _Failure | None:
        with self.lock:
            for failure in self._failures:
                if (
                    failure.times > 0
                    and (failure.path is None or path.startswith(failure.path))
                    and (failure.method is None or failure.method == method)
                ):
                    failure.times -= 1
                    return failure
        return None

    def _route(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], raw: bytes) -> Answer:
        if path.startswith(UPLOADS_ROOT) and method == "GET":
            return self._upload(path)
        if path == "/wc-auth/v1/authorize" and method == "GET":
            return self._authorize(query)
        if path in ("/wc-auth/v1/access_granted", "/wc-auth/v1/access_denied") and method == "GET":
            return self._press(query, path.endswith("granted"))
        if not path.startswith(API + "/"):
            return _rest_error(404, "rest_no_route", "No route was found matching the URL and request method.")
        key, refused = self._authenticate(method, query, headers)
        if refused is not None:
            return refused
        assert key is not None
        parts = path[len(API) + 1 :].strip("/").split("/")
        body: Any = None
        if method in ("POST", "PUT") and raw:
            try:
                body = json.loads(raw)
            except ValueError:
                return _rest_error(400, "rest_invalid_json", "Invalid JSON body passed.")
        if method == "GET" and parts == ["products"]:
            return self._list_products(query)
        if method == "GET" and parts == ["products", "categories"]:
            return self._list_categories(query)
        if method == "GET" and len(parts) == 2 and parts[0] == "products" and parts[1].isdigit():
            if int(parts[1]) not in self.products:
                return _rest_error(404, "woocommerce_rest_product_invalid_id", "Invalid ID.")
            return _json(200, self.product_json(int(parts[1])))
        if method in ("PUT", "POST") and len(parts) == 2 and parts[0] == "products" and parts[1].isdigit():
            return self._update_product(int(parts[1]), body if isinstance(body, dict) else {})
        if method == "GET" and len(parts) == 3 and parts[0] == "products" and parts[2] == "variations":
            return self._list_variations(parts[1], query)
        if parts == ["webhooks"] and method == "GET":
            return self._list_webhooks(query)
        if parts == ["webhooks"] and method == "POST":
            return self._create_webhook(body if isinstance(body, dict) else {}, key)
        if len(parts) == 2 and parts[0] == "webhooks" and parts[1].isdigit():
            return self._one_webhook(method, int(parts[1]), query, body if isinstance(body, dict) else {})
        return _rest_error(404, "rest_no_route", "No route was found matching the URL and request method.")

    def _authenticate(
        self, method: str, query: dict[str, str], headers: dict[str, str]
    ) -> tuple[ApiKey | None, Answer | None]:
        user, password = query.get("consumer_key"), query.get("consumer_secret")
        authorization = headers.get("authorization", "")
        if authorization.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            except ValueError:
                user = password = None
        if not user:
            return None, _rest_error(401, "woocommerce_rest_cannot_view", "Sorry, you cannot list resources.")
        with self.lock:
            key = next((k for k in self.keys.values() if hmac.compare_digest(k.consumer_key, user)), None)
        if key is None:
            return None, _rest_error(401, "woocommerce_rest_authentication_error", "Consumer key is invalid.")
        if not hmac.compare_digest(key.consumer_secret, password or ""):
            return None, _rest_error(401, "woocommerce_rest_authentication_error", "Consumer secret is invalid.")
        needs = "read" if method in ("GET", "HEAD") else "write"
        if needs not in key.permissions:  # "read_write" contains both
            return None, _rest_error(
                401, "woocommerce_rest_authentication_error", f"The API key provided does not have {needs} permissions."
            )
        return key, None

    def _paging(self, query: dict[str, str], total: int, path: str) -> tuple[slice, dict[str, str]]:
        """The window of a list and its X-WP-Total / X-WP-TotalPages / Link headers (or :class:`_Refused`)."""
        raw_per_page, raw_page = query.get("per_page", "10"), query.get("page", "1")
        if not raw_per_page.isdigit() or not 1 <= int(raw_per_page) <= 100:
            raise _Refused(_invalid_param("per_page", "per_page must be between 1 (inclusive) and 100 (inclusive)"))
        if not raw_page.isdigit() or int(raw_page) < 1:
            raise _Refused(_invalid_param("page", "page must be greater than or equal to 1"))
        per_page, page = int(raw_per_page), int(raw_page)
        pages = -(-total // per_page)
        headers = {"X-WP-Total": str(total), "X-WP-TotalPages": str(pages)}
        links = []
        base = {k: v for k, v in query.items() if k not in ("consumer_key", "consumer_secret")}
        if page > 1:
            links.append(f'<{self.url}{path}?{urlencode({**base, "page": page - 1})}>; rel="prev"')
        if page < pages:
            links.append(f'<{self.url}{path}?{urlencode({**base, "page": page + 1})}>; rel="next"')
        if links:
            headers["Link"] = ", ".join(links)
        return slice((page - 1) * per_page, page * per_page), headers

    def _list_products(self, query: dict[str, str]) -> Answer:
        with self.lock:
            rows = sorted(self.products.values(), key=lambda p: (p["date_created"], p["id"]), reverse=True)
        rows = [p for p in rows if p["status"] != "trash"]  # status "any" leaves the trash out
        if "modified_after" in query:
            after = _parse_date(query["modified_after"])
            if after is None:
                return _invalid_param("modified_after", "Invalid date.")
            rows = [p for p in rows if (_parse_date(p["date_modified"]) or _EPOCH) > after]
        if query.get("include"):
            wanted = {int(i) for i in query["include"].split(",") if i.strip().isdigit()}
            rows = [p for p in rows if p["id"] in wanted]
        if query.get("category"):
            rows = [p for p in rows if any(str(c["id"]) == query["category"] for c in p["categories"])]
        if query.get("sku"):
            rows = [p for p in rows if p["sku"] in query["sku"].split(",")]
        if query.get("search"):
            rows = [p for p in rows if query["search"].lower() in p["name"].lower()]
        window, headers = self._paging(query, len(rows), API + "/products")
        return _json(200, [self.product_json(p["id"]) for p in rows[window]], headers)

    def _list_variations(self, raw_id: str, query: dict[str, str]) -> Answer:
        product_id = int(raw_id) if raw_id.isdigit() else 0
        with self.lock:
            if product_id not in self.products:
                return _rest_error(404, "woocommerce_rest_product_invalid_id", "Invalid ID.")
            rows = [self._absolute(dict(v, parent_id=product_id)) for v in self.variations.get(product_id, [])]
        window, headers = self._paging(query, len(rows), f"{API}/products/{product_id}/variations")
        return _json(200, rows[window], headers)

    def _list_categories(self, query: dict[str, str]) -> Answer:
        with self.lock:
            counts = {c[0]: 0 for c in _CATEGORIES}
            for product in self.products.values():
                for category in product["categories"]:
                    counts[category["id"]] = counts.get(category["id"], 0) + 1
        rows = [
            {
                "id": cid,
                "name": name,
                "slug": slug,
                "parent": 0,
                "description": "",
                "display": "default",
                "image": None,
                "menu_order": 0,
                "count": counts.get(cid, 0),
            }
            for cid, name, slug in sorted(_CATEGORIES, key=lambda c: c[1])
        ]
        if query.get("hide_empty") in ("1", "true"):
            rows = [r for r in rows if r["count"]]
        window, headers = self._paging(query, len(rows), API + "/products/categories")
        return _json(200, rows[window], headers)

    def product_json(self, product_id: int) -> dict[str, Any]:
        """A product as ``GET /products/{id}`` answers it (absolute image URLs, prices, links)."""
        with self.lock:
            product = dict(self.products[product_id])
        product.update(
            permalink=f"{self.url}/product/{product['slug']}/",
            date_created_gmt=product["date_created"],
            date_modified_gmt=product["date_modified"],
            price=product.get("sale_price") or product["regular_price"],
            sale_price=product.get("sale_price", ""),
            on_sale=bool(product.get("sale_price")),
            purchasable=bool(product["regular_price"]) or product["type"] == "variable",
            stock_status="instock",
            parent_id=0,
            menu_order=0,
            meta_data=[],
            _links={
                "self": [{"href": f"{self.url}{API}/products/{product_id}"}],
                "collection": [{"href": f"{self.url}{API}/products"}],
            },
        )
        return self._absolute(product)

    def _absolute_src(self, src: str) -> str:
        return self.url + src if src.startswith("/") else src

    def _absolute(self, item: dict[str, Any]) -> dict[str, Any]:
        def fix(image: dict[str, Any]) -> dict[str, Any]:
            with self.lock:  # the attachment's name and alt as the library holds them now
                attachment = self.media.get(image.get("id", 0), image)
            shown = {**image, **{k: attachment[k] for k in _ATTACHMENT_FIELDS if k in attachment}}
            return {
                **shown,
                "src": self._absolute_src(shown["src"]),
                "date_created_gmt": shown["date_created"],
                "date_modified_gmt": shown["date_modified"],
            }

        if "images" in item:
            item["images"] = [fix(i) for i in item["images"]]
        if item.get("image"):
            item["image"] = fix(item["image"])
        return item

    def _upload(self, path: str) -> Answer:
        with self.lock:
            known = [a for a in self.media.values() if urlsplit(a["src"]).path == path]
        if not known:
            return 404, _page("Not Found"), {"Content-Type": "text/html; charset=UTF-8"}
        attachment = known[0]
        if "data" in attachment:  # sideloaded: the bytes the store fetched
            return 200, attachment["data"], {"Content-Type": attachment["content_type"]}
        return 200, png(attachment["id"]), {"Content-Type": "image/png"}

    # -- the media library and product images -------------------------------------------------------
    def _register_images(self, item: dict[str, Any]) -> None:
        """Put the images a product (or variation) was given into the library; name and alt given for a
        known attachment are the merchant's edit of it."""
        images = list(item.get("images") or []) + ([item["image"]] if item.get("image") else [])
        with self.lock:
            for image in images:
                if not isinstance(image.get("id"), int) or not image["id"]:
                    continue  # not an attachment (a merchant's half-made row): nothing to register
                known = self.media.get(image["id"])
                if known is None:
                    self.media[image["id"]] = {k: image[k] for k in _ATTACHMENT_FIELDS if k in image}
                else:
                    known.update({k: image[k] for k in ("name", "alt") if k in image})

    def _update_product(self, product_id: int, body: dict[str, Any]) -> Answer:
        """``PUT products/{id}``: ``images`` replaces the gallery (see the module's docstring)."""
        with self.lock:
            if product_id not in self.products:
                return _rest_error(404, "woocommerce_rest_product_invalid_id", "Invalid ID.")
        changes: dict[str, Any] = {}
        for name in ("name", "description", "short_description", "sku", "regular_price", "sale_price"):
            if name in body:
                if not isinstance(body[name], str):
                    return _invalid_param(name, f"{name} is not of type string.")
                changes[name] = body[name]
        if "images" in body:
            refs = _image_refs(body["images"])  # schema first: nothing is fetched for a malformed list
            changes["images"] = [self._gallery_image(product_id, n, ref) for n, ref in enumerate(refs)]
        with self.lock:
            product = self.products.get(product_id)
            if product is None:  # deleted while its images were being fetched
                return _rest_error(404, "woocommerce_rest_product_invalid_id", "Invalid ID.")
            product.update(changes, date_modified=_wc_date(datetime.now(UTC)))
        self._fire("product.updated", product_id)
        return _json(200, self.product_json(product_id))

    def _gallery_image(self, product_id: int, index: int, ref: dict[str, Any]) -> dict[str, Any]:
        """One element of ``images``: the attachment it keeps or sideloads (or :class:`_Refused`)."""
        attachment_id = _absint(ref.get("id"))
        if not attachment_id and ref.get("src"):
            attachment_id = self._sideload(product_id, str(ref["src"]))
        with self.lock:
            attachment = self.media.get(attachment_id)
            if attachment is None:
                message = f"#{attachment_id} is an invalid image ID."
                raise _Refused(_rest_error(400, "woocommerce_product_invalid_image_id", message))
            # Written on the attachment at once (post meta), before the product is saved.
            if ref.get("alt"):
                attachment["alt"] = str(ref["alt"])
            if ref.get("name"):
                attachment["name"] = str(ref["name"])
            return {k: attachment[k] for k in _ATTACHMENT_FIELDS}

    def _sideload(self, product_id: int, src: str) -> int:
        """Fetch ``src`` into the media library as ``wc_rest_upload_image_from_url`` does; the new
        attachment's id (or :class:`_Refused` with WordPress's message)."""

        def refused(message: str) -> _Refused:
            return _Refused(_rest_error(400, "woocommerce_product_image_upload_error", message))

        def fetch_failed(error: str) -> _Refused:
            return refused(f"Error getting remote image {src}. Error: {error}")

        parts = urlsplit(src)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise fetch_failed("A valid URL was not provided.") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise fetch_failed("A valid URL was not provided.")
        if self.safe_remote_only and not _external(parts.hostname, port):
            raise fetch_failed("A valid URL was not provided.")
        with self.lock:
            self.sideloaded.append(src)
        try:
            with httpx.Client(
                timeout=self.sideload_timeout, trust_env=False, follow_redirects=True, max_redirects=5
            ) as client:
                response = client.get(src, headers={"User-Agent": f"{WP_USER_AGENT}; {self.url}"})
        except httpx.TimeoutException:
            millis = int(self.sideload_timeout * 1000)
            raise fetch_failed(f"cURL error 28: Operation timed out after {millis} milliseconds") from None
        except httpx.HTTPError:
            raise fetch_failed(f"cURL error 7: Failed to connect to {parts.hostname} port {port}") from None
        if response.status_code != 200:
            raise fetch_failed(response.reason_phrase or str(response.status_code))
        # The file is named after the URL's basename (query dropped, not URL-decoded: sanitize_file_name
        # drops the "%"); its extension decides the type.
        file_name = re.sub(r"\s+", "-", parts.path.rsplit("/", 1)[-1].replace("%", ""))
        stem, dot, extension = file_name.rpartition(".")
        claimed = IMAGE_EXTENSIONS.get(extension.lower()) if dot and stem else None
        real = _sniff_image(response.content)
        if claimed is None or real is None:
            raise refused("Invalid image: Sorry, you are not allowed to upload this file type.")
        if real != claimed:  # wp_check_filetype_and_ext renames a PNG sent as .jpg to .png
            extension = next(ext for ext, mime in IMAGE_EXTENSIONS.items() if mime == real)
        now = datetime.now(UTC)
        folder = f"{UPLOADS_ROOT}{now:%Y}/{now:%m}/"
        with self.lock:
            taken = {a["src"] for a in self.media.values()}
            unique, n = stem, 0
            while f"{folder}{unique}.{extension}" in taken:  # wp_unique_filename
                n += 1
                unique = f"{stem}-{n}"
            attachment_id = self._new_id()
            self.media[attachment_id] = {
                "id": attachment_id,
                "date_created": _wc_date(now),
                "date_modified": _wc_date(now),
                "src": f"{folder}{unique}.{extension}",
                "name": unique,  # the title WooCommerce gives it: the stored file's name
                "alt": "",
                "data": response.content,
                "content_type": real,
                "parent": product_id,
            }
        return attachment_id

    # -- webhooks -----------------------------------------------------------------------------------
    def _webhook_json(self, hook: dict[str, Any]) -> dict[str, Any]:
        shown = {k: v for k, v in hook.items() if k not in ("secret", "failure_count")}  # secret: context "edit"
        shown["_links"] = {"self": [{"href": f"{self.url}{API}/webhooks/{hook['id']}"}]}
        return shown

    def _list_webhooks(self, query: dict[str, str]) -> Answer:
        status = query.get("status", "all")
        if status not in ("all", "active", "paused", "disabled"):
            return _invalid_param("status", "status is not one of all, active, paused, and disabled.")
        with self.lock:
            rows = [self._webhook_json(h) for h in self.webhooks.values() if status in ("all", h["status"])]
        window, headers = self._paging(query, len(rows), API + "/webhooks")
        return _json(200, rows[window], headers)

    def _create_webhook(self, body: dict[str, Any], key: ApiKey) -> Answer:
        topic = body.get("topic")
        if not isinstance(topic, str) or topic.split(".")[0] not in ("product", "order", "coupon", "customer"):
            return _rest_error(
                400, "woocommerce_rest_webhook_invalid_topic", "Webhook topic is required and must be valid."
            )
        delivery_url = body.get("delivery_url")
        if not isinstance(delivery_url, str) or urlsplit(delivery_url).scheme not in ("http", "https"):
            return _invalid_param("delivery_url", "Invalid URL.")
        status = body.get("status", "active")
        if status not in ("active", "paused", "disabled"):
            return _invalid_param("status", "status is not one of active, paused, and disabled.")
        now = _wc_date(datetime.now(UTC))
        hook = {
            "id": self._new_id(),
            "name": str(body.get("name") or f"Webhook created on {now}"),
            "status": status,
            "topic": topic,
            "resource": topic.split(".")[0],
            "event": topic.split(".", 1)[1] if "." in topic else "",
            "hooks": [f"woocommerce_{topic.replace('.', '_')}"],
            "delivery_url": delivery_url,
            "date_created": now,
            "date_created_gmt": now,
            "date_modified": now,
            "date_modified_gmt": now,
            # Without one, WooCommerce makes a secret the app does not know: always send yours.
            "secret": str(body.get("secret") or secrets.token_urlsafe(36)),
            "failure_count": 0,
        }
        with self.lock:
            self.webhooks[hook["id"]] = hook
        if status == "active":
            ping = _post(
                delivery_url,
                urlencode({"webhook_id": hook["id"]}).encode(),
                {"Content-Type": "application/x-www-form-urlencoded", "User-Agent": USER_AGENT},
                self.delivery_timeout,
            )
            with self.lock:
                self.pings.append((hook["id"], ping))  # its answer does not matter
        return _json(201, self._webhook_json(hook), {"Location": f"{self.url}{API}/webhooks/{hook['id']}"})

    def _one_webhook(self, method: str, hook_id: int, query: dict[str, str], body: dict[str, Any]) -> Answer:
        with self.lock:
            hook = self.webhooks.get(hook_id)
            if hook is None:
                return _rest_error(404, "woocommerce_rest_webhook_invalid_id", "Invalid ID.")
            if method == "GET":
                return _json(200, self._webhook_json(hook))
            if method == "PUT":
                if "status" in body:
                    if body["status"] not in ("active", "paused", "disabled"):
                        return _invalid_param("status", "status is not one of active, paused, and disabled.")
                    if body["status"] == "active" and hook["status"] != "active":
                        hook["failure_count"] = 0
                    hook["status"] = body["status"]
                for name in ("name", "delivery_url", "secret", "topic"):
                    if isinstance(body.get(name), str):
                        hook[name] = body[name]
                hook["resource"], _, hook["event"] = hook["topic"].partition(".")
                hook["date_modified"] = hook["date_modified_gmt"] = _wc_date(datetime.now(UTC))
                return _json(200, self._webhook_json(hook))
            if method == "DELETE":
                if query.get("force") not in ("1", "true"):
                    return _rest_error(501, "woocommerce_rest_trash_not_supported", "Webhooks do not support trashing.")
                del self.webhooks[hook_id]
                return _json(200, self._webhook_json(hook))
        return _rest_error(404, "rest_no_route", "No route was found matching the URL and request method.")

    def _fire(self, topic: str, product_id: int) -> None:
        with self.lock:
            hooks = [dict(h) for h in self.webhooks.values() if h["status"] == "active" and h["topic"] == topic]
        if not hooks:
            return
        payload = {"id": product_id} if topic == "product.deleted" else self.product_json(product_id)
        body = json.dumps(payload).encode()
        for hook in hooks:
            delivery_id = secrets.token_hex(16)
            signature = base64.b64encode(hmac.new(hook["secret"].encode(), body, hashlib.sha256).digest()).decode()
            status = _post(
                hook["delivery_url"],
                body,
                {
                    "Content-Type": "application/json",
                    "User-Agent": USER_AGENT,
                    "X-WC-Webhook-Source": self.url + "/",
                    "X-WC-Webhook-Topic": topic,
                    "X-WC-Webhook-Resource": hook["resource"],
                    "X-WC-Webhook-Event": hook["event"],
                    "X-WC-Webhook-Signature": signature,
                    "X-WC-Webhook-ID": str(hook["id"]),
                    "X-WC-Webhook-Delivery-ID": delivery_id,
                },
                self.delivery_timeout,
            )
            with self.lock:
                self.deliveries.append(Delivery(hook["id"], topic, delivery_id, body, status))
                stored = self.webhooks.get(hook["id"])
                if stored is None:
                    continue
                if 200 <= status < 300 or status in (301, 302):
                    stored["failure_count"] = 0
                else:  # never retried
                    stored["failure_count"] += 1
                    if stored["failure_count"] > MAX_DELIVERY_FAILURES:
                        stored["status"] = "disabled"


_ATTACHMENT_FIELDS = ("id", "date_created", "date_modified", "src", "name", "alt")
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"\x00\x00\x01\x00", "image/x-icon"),
)


def _sniff_image(data: bytes) -> str | None:
    """The image type the bytes really are (what WordPress asks getimagesize), None for anything else."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((mime for magic, mime in _MAGIC if data.startswith(magic)), None)


def _external(host: str, port: int) -> bool:
    """wp_http_validate_url: a public address on port 80, 443 or 8080."""
    if port not in (80, 443, 8080):
        return False
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)}
    except OSError:
        return False
    return all(ipaddress.ip_address(str(a).split("%")[0]).is_global for a in addresses)


def _absint(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return abs(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return 0


def _image_refs(value: Any) -> list[dict[str, Any]]:
    """``images`` checked against the REST schema (or :class:`_Refused`); empty elements dropped, as
    ``array_filter`` does."""
    if not isinstance(value, list):
        raise _Refused(_invalid_param("images", "images is not of type array."))
    refs = []
    for n, element in enumerate(value):
        if not isinstance(element, dict):
            raise _Refused(_invalid_param("images", f"images[{n}] is not of type object."))
        if "id" in element and not (isinstance(element["id"], int) or str(element["id"]).strip().isdigit()):
            raise _Refused(_invalid_param("images", f"images[{n}][id] is not of type integer."))
        for name in ("src", "name", "alt"):
            if name in element and not isinstance(element[name], str):
                raise _Refused(_invalid_param("images", f"images[{n}][{name}] is not of type string."))
        if element:
            refs.append(element)
    return refs


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    """POST as WordPress's HTTP API does (no redirects followed); 0 when the endpoint cannot be reached."""
    try:
        with httpx.Client(timeout=timeout, trust_env=False, follow_redirects=False) as client:
            return client.post(url, content=body, headers=headers).status_code
    except httpx.HTTPError:
        return 0


def _parse_date(value: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = urlencode([*parse_qsl(parts.query, keep_blank_values=True), *params.items()])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def _json(status: int, body: Any, extra: dict[str, str] | None = None) -> Answer:
    return status, json.dumps(body).encode(), {"Content-Type": "application/json; charset=UTF-8", **(extra or {})}


def _rest_error(status: int, code: str, message: str, **data: Any) -> Answer:
    return _json(status, {"code": code, "message": message, "data": {"status": status, **data}})


def _invalid_param(name: str, detail: str = "Invalid parameter.") -> Answer:
    return _rest_error(400, "rest_invalid_param", f"Invalid parameter(s): {name}", params={name: detail})


def _page(body: str) -> bytes:
    return (
        f"<!DOCTYPE html><html><head><title>WooCommerce (local stub)</title></head><body>{body}</body></html>".encode()
    )


def _die(status: int, message: str) -> Answer:
    return status, _page(f"<p>Error: {html.escape(message)}.</p>"), {"Content-Type": "text/html; charset=UTF-8"}


def _outcome_answer(outcome: AuthOutcome) -> Answer:
    if outcome.location is not None:
        return outcome.status, b"", {"Location": outcome.location, "Content-Type": "text/html; charset=UTF-8"}
    return _die(
        outcome.status, "An error occurred in the request and at the time were unable to send the consumer data"
    )


def _handler(stub: WooStub) -> type[BaseHTTPRequestHandler]:
    class Handler(StubHandler):
        def _serve(self, method: str) -> None:
            parts = urlsplit(self.path)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
            answer = stub.handle(method, parts.path, query, headers, raw)
            with stub.lock:
                stub.requests.append(Recorded(method, parts.path, query, headers, raw, answer[0] if answer else 0))
            if answer is None:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            status, data, extra = answer
            self.write_answer(status, data, extra)

    return Handler


def running(stub: WooStub | None = None, port: int = 0) -> AbstractContextManager[WooStub]:
    """Serve ``stub`` (a new demo store by default) on 127.0.0.1 (``port`` 0: a free one) for the ``with`` block."""
    stub = stub or WooStub()
    return serving(stub, _handler(stub), port)
