"""A local stand-in for the Stripe API, spoken over real HTTP so the real ``stripe`` library's
``StripeClient(api_key, base_addresses={"api": stub.url})`` (what ``StripeGateway(api_base=…)``
builds) can be pointed at it.

What the stripe 16 client sends (read from ``stripe/_api_requestor.py``) and the stub checks::

    POST /v1/customers                      Content-Type: application/x-www-form-urlencoded
    Authorization: Bearer sk_test_…         Stripe-Version: 2026-10-28.endive (_ApiVersion.CURRENT)
    Idempotency-Key: <ours, or a UUID the client generates for every POST>
    User-Agent: Stripe/v1 PythonBindings/16.x   X-Stripe-Client-User-Agent: {json}
    metadata[client_id]=c123&email=…        (nested keys with literal brackets, lists as [0], [1])

    GET /v1/invoices?customer=cus_…&limit=2&starting_after=in_…   (no body, no Content-Type)

Served: ``POST /v1/customers``, ``POST /v1/checkout/sessions``, ``POST /v1/billing_portal/sessions``,
``GET /v1/invoices`` (seeded with :meth:`StripeStub.add_invoice`), ``DELETE /v1/subscriptions/{id}``
(cancel now) and ``GET /v1/subscriptions/{id}`` (both on subscriptions seeded with
:meth:`StripeStub.add_subscription`), ``GET /v1/invoice_payments?invoice=``
(the payments of a seeded invoice that names its ``payment_intent``) and ``POST /v1/refunds``
(``payment_intent``, optional ``amount``); anything else is 404 with a Stripe error body.

Like Stripe: cancelling a subscription that is unknown or already canceled is a 404
``resource_missing`` ("No such subscription", a canceled subscription counts as deleted); a refund of
a payment intent the stub does not know is a 400 ``resource_missing``, of one already refunded in
full a 400 ``charge_already_refunded``, and of more than is left a 400 ``amount_too_large`` (the
canceled-subscription answer is what Stripe's maintainers describe in stripe/stripe-go#1887).

Also like Stripe: a missing or other API key is 401; a request naming a customer the stub does
not know (or a price outside ``prices``) is 400 ``resource_missing``. Idempotency as Stripe documents it
for API v1: once an endpoint has started running, its answer — a success, a 400 or a 500 — is saved
under the ``Idempotency-Key`` and replayed for the same key and parameters (header
``Idempotent-Replayed: true``); other parameters get 400 ``idempotency_error``; a key whose first
request is still running gets 409 (which the client retries). A 401, a 429 or a dropped connection
never reached the endpoint, so nothing is saved for them.

**Hosted pages, as a customer sees them.** A Checkout Session's ``url`` is the stub's own
``/c/pay/{session id}``: ``GET`` shows the order, ``POST`` pays it (a customer pressing *Pay* on
Stripe Checkout) — :meth:`StripeStub.complete_checkout` does what Stripe does then. In subscription
mode it creates the subscription (the period on its item, one calendar month or year), its first
invoice (paid, ``billing_reason`` ``subscription_create``) and sends ``customer.subscription.created``,
``invoice.paid``, ``invoice.payment_succeeded`` and ``checkout.session.completed``; in payment mode a
PaymentIntent and its charge, with ``payment_intent.succeeded``, ``charge.succeeded`` and
``checkout.session.completed``. (Stripe sends more around them — ``invoice.created``,
``invoice.finalized``, ``customer.subscription.updated`` … — which billing does not read; the stub
leaves them out. A pack's payment is not an invoice, so ``POST /v1/refunds`` does not know it.)
The answer is ``303 See Other`` to the ``success_url`` (its
``{CHECKOUT_SESSION_ID}`` filled in, as Stripe does) with a JSON body listing the deliveries. A session
paid already, or unknown, is a 404 page (Stripe's expired/complete sessions show "no longer
available"). A portal session's ``url`` is ``/p/session/{id}``: a page listing the customer's
subscriptions and invoices with a link back to ``return_url``; an invoice the stub made has its
``hosted_invoice_url`` at ``/i/{id}``.

**Webhooks.** Events are signed with ``webhook_secret`` exactly as Stripe signs them
(``dev/stubs/stripe_events.py`` builds and signs them, the same builders the tests use) and handed to
``webhook`` (``http_webhook(url)`` POSTs them; tests pass their own), one at a time in the order above
(Stripe promises no order; this is the order it usually achieves). Each delivery is recorded in
``deliveries`` with the status it got; the stub does not retry a failed one (Stripe would, for days).
Amounts come from ``price_details`` (the price's ``unit_amount`` and ``recurring.interval``); Stripe
refuses a one-time price in subscription mode and a recurring one in payment mode, and so does the stub.

Failures are programmable with :meth:`StripeStub.fail`: ``"500"`` (saved for the key), ``"429"``,
``"400"`` (an ``invalid_request_error``, saved) or ``"drop"`` (the connection is closed without an
answer), for the next ``times`` requests (optionally only for one path). ``delay`` slows a path down.
Every request is recorded (:class:`Recorded`: method, path, query, headers, parsed form, raw body).
"""

from __future__ import annotations

import html
import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from dev.stubs import stripe_events
from dev.stubs.serving import StubHandler, StubServer, serving
from dev.stubs.stripe_events import (
    charge_obj,
    checkout_session_obj,
    invoice_obj,
    new_id,
    payment_intent_obj,
    subscription_obj,
)

API_KEY = "sk_test_epox"
_KEY_PART = re.compile(r"\[([^\]]*)\]")


def parse_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding back into nested values: ``a[b][0][c]=v`` → ``{"a": {"b": [{"c": "v"}]}}``."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        head, _, rest = key.partition("[")
        parts = [head, *_KEY_PART.findall("[" + rest)] if rest else [head]
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    parsed: dict[str, Any] = _lists(root)
    return parsed


def _lists(value: Any) -> Any:
    """Maps whose keys are 0..n-1 are arrays on the wire."""
    if not isinstance(value, dict):
        return value
    converted = {k: _lists(v) for k, v in value.items()}
    if converted and all(k.isdigit() for k in converted):
        indexes = sorted(int(k) for k in converted)
        if indexes == list(range(len(indexes))):
            return [converted[str(i)] for i in indexes]
    return converted


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    form: dict[str, Any]
    raw: bytes
    status: int = 0


@dataclass(frozen=True)
class StubPrice:
    """What the stub knows of a price: ``unit_amount`` and ``recurring.interval`` (None: one-time)."""

    amount: int
    interval: str | None = None  # "month" | "year"


@dataclass(frozen=True)
class Delivery:
    event_id: str
    type: str
    status: int  # the endpoint's HTTP status; 0 when it could not be reached


# A webhook endpoint: (raw body, headers) -> HTTP status.
Webhook = Callable[[bytes, dict[str, str]], int]


@dataclass
class _Failure:
    kind: str
    times: int
    path: str | None


@dataclass
class StripeStub:
    api_key: str = API_KEY
    prices: set[str] | None = None  # known price ids; None accepts any
    port: int = 0
    requests: list[Recorded] = field(default_factory=list)
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    portal_sessions: list[dict[str, Any]] = field(default_factory=list)
    invoices: list[dict[str, Any]] = field(default_factory=list)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    refunds: list[dict[str, Any]] = field(default_factory=list)
    price_details: dict[str, StubPrice] = field(default_factory=dict)
    webhook_secret: str = ""
    webhook: Webhook | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    payment_intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _failures: list[_Failure] = field(default_factory=list)
    _idempotent: dict[str, tuple[str, int, dict[str, Any]]] = field(default_factory=dict)
    _in_flight: set[str] = field(default_factory=set)
    _session_lines: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _session_extra: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- programming ------------------------------------------------------------------------------
    def fail(self, kind: str, times: int = 1, path: str | None = None) -> None:
        assert kind in ("500", "429", "400", "drop"), kind
        with self.lock:
            self._failures.append(_Failure(kind, times, path))

    def delay(self, path: str, seconds: float) -> None:
        self.delays[path] = seconds

    def add_invoice(self, customer: str, created: int, **fields: Any) -> dict[str, Any]:
        invoice_id = fields.pop("id", None) or "in_" + secrets.token_hex(8)
        invoice = {
            "id": invoice_id,
            "object": "invoice",
            "customer": customer,
            "created": created,
            "number": f"EPOX-{len(self.invoices) + 1:04d}",
            "status": "paid",
            "amount_due": 7900,
            "amount_paid": 7900,
            "currency": "usd",
            "period_start": created,
            "period_end": created,
            "hosted_invoice_url": f"https://invoice.stripe.test/i/{invoice_id}",
            "invoice_pdf": f"https://pay.stripe.test/invoice/{invoice_id}/pdf",
            **fields,
        }
        with self.lock:
            self.invoices.append(invoice)
        return invoice

    def add_subscription(self, subscription_id: str, customer: str, *, status: str = "active") -> dict[str, Any]:
        subscription = {
            "id": subscription_id,
            "object": "subscription",
            "customer": customer,
            "status": status,
            "created": int(time.time()),
            "canceled_at": None,
            "ended_at": None,
            "livemode": False,
        }
        with self.lock:
            self.subscriptions[subscription_id] = subscription
        return subscription

    def add_paid_invoice(self, customer: str, invoice_id: str, payment_intent: str, amount: int) -> dict[str, Any]:
        """An invoice paid by ``payment_intent`` (its charge is ``amount``, nothing refunded yet)."""
        return self.add_invoice(
            customer,
            int(time.time()),
            id=invoice_id,
            amount_due=amount,
            amount_paid=amount,
            payment_intent=payment_intent,
            amount_refunded=0,
        )

    # -- reading ----------------------------------------------------------------------------------
    def seen(self, method: str, path: str) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.method == method and r.path == path]

    # -- serving ----------------------------------------------------------------------------------
    def _take_failure(self, path: str) -> str | None:
        with self.lock:
            for failure in self._failures:
                if failure.times > 0 and failure.path in (None, path):
                    failure.times -= 1
                    return failure.kind
        return None

    def handle(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], form: dict[str, Any]
    ) -> tuple[int, dict[str, Any], dict[str, str]] | None:
        """The answer to one request, or None to drop the connection without one."""
        failure = self._take_failure(path)
        if failure == "drop":
            return None  # lost before Stripe ran anything: nothing is saved for the key
        if headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401, "invalid_request_error", "Invalid API Key provided", code="api_key_invalid")
        if failure == "429":  # the rate limiter answers before the endpoint runs: nothing saved
            return _error(429, "invalid_request_error", "Too many requests hit the API too quickly.", code="rate_limit")
        key = headers.get("idempotency-key") if method == "POST" else None
        if key is None:
            return self._execute(failure, method, path, query, form)
        fingerprint = json.dumps([path, form], sort_keys=True)
        with self.lock:
            stored = self._idempotent.get(key)
            if stored is None and key in self._in_flight:
                return _error(
                    409,
                    "idempotency_error",
                    "There is currently another in-progress request using this Stripe API key and idempotency key.",
                )
            if stored is None:
                self._in_flight.add(key)
        if stored is not None:
            if stored[0] != fingerprint:
                return _error(
                    400,
                    "idempotency_error",
                    "Keys for idempotent requests can only be used with the same parameters they were first used with.",
                )
            return stored[1], stored[2], {"Idempotent-Replayed": "true"}
        try:
            status, body, extra = self._execute(failure, method, path, query, form)
            # Like Stripe (API v1): once the endpoint ran, its answer is saved, errors and 500s included.
            with self.lock:
                self._idempotent[key] = (fingerprint, status, body)
            return status, body, extra
        finally:
            with self.lock:
                self._in_flight.discard(key)

    def _execute(
        self, failure: str | None, method: str, path: str, query: dict[str, str], form: dict[str, Any]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        if failure == "500":
            return _error(500, "api_error", "Something went wrong on Stripe's end.")
        if failure == "400":
            return _error(
                400,
                "invalid_request_error",
                "This value must be greater than or equal to 1.",
                param="line_items[0][quantity]",
                code="parameter_invalid_integer",
            )
        return self._route(method, path, query, form)

    def _route(
        self, method: str, path: str, query: dict[str, str], form: dict[str, Any]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        time.sleep(self.delays.get(path, 0))
        route = (method, path)
        if route == ("POST", "/v1/customers"):
            return self._create_customer(form)
        if route == ("POST", "/v1/checkout/sessions"):
            return self._create_checkout(form)
        if route == ("POST", "/v1/billing_portal/sessions"):
            return self._create_portal(form)
        if route == ("GET", "/v1/invoices"):
            return self._list_invoices(query)
        if method == "GET" and path.startswith("/v1/subscriptions/"):
            return self._retrieve_subscription(path.removeprefix("/v1/subscriptions/"))
        if method == "DELETE" and path.startswith("/v1/subscriptions/"):
            return self._cancel_subscription(path.removeprefix("/v1/subscriptions/"))
        if route == ("GET", "/v1/invoice_payments"):
            return self._list_invoice_payments(query)
        if route == ("POST", "/v1/refunds"):
            return self._create_refund(form)
        return _error(404, "invalid_request_error", f"Unrecognized request URL ({method}: {path}).")

    def _create_customer(self, form: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        customer = {
            "id": "cus_" + secrets.token_hex(7),
            "object": "customer",
            "created": int(time.time()),
            "email": form.get("email"),
            "metadata": form.get("metadata", {}),
            "livemode": False,
        }
        with self.lock:
            self.customers[customer["id"]] = customer
        return 200, customer, {}

    def _missing_customer(self, customer: Any) -> tuple[int, dict[str, Any], dict[str, str]] | None:
        if not customer:
            return _error(
                400,
                "invalid_request_error",
                "Missing required param: customer.",
                param="customer",
                code="parameter_missing",
            )
        if customer not in self.customers:
            return _error(
                400,
                "invalid_request_error",
                f"No such customer: '{customer}'",
                param="customer",
                code="resource_missing",
            )
        return None

    def _create_checkout(self, form: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        if (problem := self._missing_customer(form.get("customer"))) is not None:
            return problem
        mode = form.get("mode")
        if mode not in ("payment", "subscription", "setup"):
            return _error(400, "invalid_request_error", "Invalid mode", param="mode", code="parameter_invalid_empty")
        lines = form.get("line_items")
        if not isinstance(lines, list) or not lines:
            return _error(400, "invalid_request_error", "line_items is required", param="line_items")
        for index, line in enumerate(lines):
            price = line.get("price") if isinstance(line, dict) else None
            if self.prices is not None and price not in self.prices:
                return _error(
                    400,
                    "invalid_request_error",
                    f"No such price: '{price}'",
                    param=f"line_items[{index}][price]",
                    code="resource_missing",
                )
        amount = 0
        for index, line in enumerate(lines):
            details = self._price(str(line.get("price")), mode)
            recurring = details.interval is not None
            if mode == "subscription" and not recurring:
                return _error(
                    400,
                    "invalid_request_error",
                    "You must provide at least one recurring price in `subscription` mode when using prices.",
                    param=f"line_items[{index}][price]",
                )
            if mode == "payment" and recurring:
                return _error(
                    400,
                    "invalid_request_error",
                    "You specified `payment` mode but passed a recurring price. Either switch to `subscription` "
                    "mode or use only one-time prices.",
                    param=f"line_items[{index}][price]",
                )
            amount += details.amount * int(line.get("quantity") or 1)
        session_id = "cs_test_" + secrets.token_hex(12)
        session = {
            "id": session_id,
            "object": "checkout.session",
            "url": f"{self.url}/c/pay/{session_id}",
            "mode": mode,
            "customer": form["customer"],
            "client_reference_id": form.get("client_reference_id"),
            "metadata": form.get("metadata", {}),
            "success_url": form.get("success_url"),
            "cancel_url": form.get("cancel_url"),
            "status": "open",
            "payment_status": "unpaid",
            "amount_total": amount,
            "currency": "usd",
            "subscription": None,
            "payment_intent": None,
            "expires_at": int(time.time()) + 86_400,
            "livemode": False,
        }
        data_key = "subscription_data" if mode == "subscription" else "payment_intent_data"
        extra = form.get(data_key)
        invoice_creation = form.get("invoice_creation")
        if invoice_creation is not None:
            if mode != "payment":
                return _error(
                    400,
                    "invalid_request_error",
                    "You can only enable invoice creation when `mode` is set to `payment`.",
                    param="invoice_creation",
                )
            session["invoice_creation"] = {
                "enabled": str(invoice_creation.get("enabled", "")).lower() == "true",
                "invoice_data": dict(invoice_creation.get("invoice_data") or {}),
            }
            session["invoice"] = None
        with self.lock:
            self.sessions[session_id] = session
            self._session_lines[session_id] = [dict(line) for line in lines]
            self._session_extra[session_id] = extra if isinstance(extra, dict) else {}
        return 200, session, {}

    def _price(self, price_id: str, mode: Any) -> StubPrice:
        """The price's amount and interval; one the stub was not told about is $10, monthly in
        subscription mode."""
        found = self.price_details.get(price_id)
        if found is not None:
            return found
        return StubPrice(1000, "month" if mode == "subscription" else None)

    # -- the customer's side: hosted Checkout and portal pages -----------------------------------
    def complete_checkout(self, session_id: str) -> dict[str, Any] | None:
        """The customer pays the session on the hosted page: what Stripe creates and the events it
        sends (see the module docstring). None when the session is unknown or no longer open."""
        now = int(time.time())
        with self.lock:
            session = self.sessions.get(session_id)
            if session is None or session["status"] != "open":
                return None
            lines = self._session_lines.get(session_id, [])
            extra = self._session_extra.get(session_id, {})
            customer = str(session["customer"])
            price_id = str(lines[0].get("price")) if lines else ""
            details = self._price(price_id, session["mode"])
            amount = int(session["amount_total"])
            if session["mode"] == "subscription":
                events = self._subscribe(session, price_id, details, amount, extra, now)
            else:
                events = self._pay(session, amount, now)
            session |= {"status": "complete", "payment_status": "paid"}
            events.append(
                stripe_events.event(
                    "checkout.session.completed",
                    checkout_session_obj(
                        session_id,
                        mode=str(session["mode"]),
                        customer=customer,
                        client_reference_id=session.get("client_reference_id"),
                        metadata=dict(session.get("metadata") or {}),
                        amount_total=amount,
                        subscription=session.get("subscription"),
                        payment_intent=session.get("payment_intent"),
                    )
                    | ({"invoice": session["invoice"]} if session.get("invoice") else {}),
                    now,
                )
            )
            self.events.extend(events)
        # Delivered outside the lock: the endpoint may call the stub back (retrieve a subscription).
        deliveries = [self._deliver(evt) for evt in events]
        return {"session": dict(session), "deliveries": [d.__dict__ for d in deliveries]}

    def _subscribe(
        self,
        session: dict[str, Any],
        price_id: str,
        details: StubPrice,
        amount: int,
        extra: dict[str, Any],
        now: int,
    ) -> list[dict[str, Any]]:
        """A subscription with its first invoice, paid (call with the lock held)."""
        from shared.billing.calendar import add_months

        customer = str(session["customer"])
        start = datetime.fromtimestamp(now, UTC)
        end = int(add_months(start, 12 if details.interval == "year" else 1).timestamp())
        subscription_id = new_id("sub")
        metadata = extra.get("metadata")
        subscription = subscription_obj(
            subscription_id,
            customer,
            price_id,
            now,
            end,
            interval=details.interval,
            metadata=dict(metadata) if isinstance(metadata, dict) else {},
        ) | {"created": now, "canceled_at": None, "ended_at": None, "latest_invoice": None}
        invoice_id = new_id("in")
        payment_intent = new_id("pi")
        invoice = invoice_obj(invoice_id, customer, subscription_id, price_id, now, end, amount=amount) | {
            "created": now,
            "number": f"EPOX-{len(self.invoices) + 1:04d}",
            "hosted_invoice_url": f"{self.url}/i/{invoice_id}",
            "invoice_pdf": f"{self.url}/i/{invoice_id}/pdf",
            "payment_intent": payment_intent,  # the stub's record of who paid it (invoice_payments)
            "amount_refunded": 0,
        }
        subscription["latest_invoice"] = invoice_id
        self.subscriptions[subscription_id] = subscription
        self.invoices.append(invoice)
        session["subscription"] = subscription_id
        public_invoice = {k: v for k, v in invoice.items() if k not in ("payment_intent", "amount_refunded")}
        return [
            stripe_events.event("customer.subscription.created", dict(subscription), now),
            stripe_events.event("invoice.paid", public_invoice, now),
            stripe_events.event("invoice.payment_succeeded", public_invoice, now),
        ]

    def _pay(self, session: dict[str, Any], amount: int, now: int) -> list[dict[str, Any]]:
        """A one-time payment: its PaymentIntent and charge (call with the lock held)."""
        customer = str(session["customer"])
        payment_intent = new_id("pi")
        intent = payment_intent_obj(payment_intent, customer, amount)
        self.payment_intents[payment_intent] = intent
        session["payment_intent"] = payment_intent
        events = [
            stripe_events.event("payment_intent.succeeded", intent, now),
            stripe_events.event("charge.succeeded", charge_obj(customer, payment_intent, amount), now),
        ]
        creation = session.get("invoice_creation") or {}
        if creation.get("enabled"):
            # Checkout's post-payment invoice: created, finalized and paid by the same payment.
            invoice_data = creation.get("invoice_data") or {}
            invoice_id = new_id("in")
            invoice = {
                "id": invoice_id,
                "object": "invoice",
                "customer": customer,
                "subscription": None,
                "parent": None,
                "billing_reason": "manual",
                "status": "paid",
                "amount_due": amount,
                "amount_paid": amount,
                "currency": "usd",
                "created": now,
                "period_start": now,
                "period_end": now,
                "number": f"EPOX-{len(self.invoices) + 1:04d}",
                "description": invoice_data.get("description"),
                "metadata": dict(invoice_data.get("metadata") or {}),
                "hosted_invoice_url": f"{self.url}/i/{invoice_id}",
                "invoice_pdf": f"{self.url}/i/{invoice_id}/pdf",
                "lines": {"object": "list", "data": [], "has_more": False},
                "livemode": False,
            }
            self.invoices.append(invoice | {"payment_intent": payment_intent, "amount_refunded": 0})
            session["invoice"] = invoice_id
            events += [
                stripe_events.event("invoice.created", invoice | {"status": "draft", "amount_paid": 0}, now),
                stripe_events.event("invoice.finalized", invoice | {"status": "open", "amount_paid": 0}, now),
                stripe_events.event("invoice.paid", invoice, now),
                stripe_events.event("invoice.payment_succeeded", invoice, now),
            ]
        return events

    def _deliver(self, evt: dict[str, Any]) -> Delivery:
        status = -1  # no endpoint configured: nothing is sent
        if self.webhook is not None:
            payload = stripe_events.encode(evt)
            try:
                status = self.webhook(payload, stripe_events.delivery_headers(payload, secret=self.webhook_secret))
            except Exception:  # an endpoint that cannot be reached: Stripe records a failed attempt
                status = 0
        delivery = Delivery(evt["id"], evt["type"], status)
        with self.lock:
            self.deliveries.append(delivery)
        return delivery

    def hosted_page(self, method: str, path: str) -> tuple[int, str, bytes, dict[str, str]] | None:
        """A customer-facing page (status, content type, body, headers), or None when ``path`` is none."""
        if path.startswith("/c/pay/"):
            session_id = path.removeprefix("/c/pay/")
            if method == "POST":
                done = self.complete_checkout(session_id)
                if done is None:
                    return _page(404, "This Checkout Session is no longer available.")
                success = str(done["session"].get("success_url") or "")
                body = json.dumps(done).encode()
                location = success.replace("{CHECKOUT_SESSION_ID}", session_id)
                return 303, "application/json", body, {"Location": location} if location else {}
            with self.lock:
                session = self.sessions.get(session_id)
                lines = list(self._session_lines.get(session_id, []))
            if session is None or session["status"] != "open":
                return _page(404, "This Checkout Session is no longer available.")
            items = "".join(
                f"<li>{html.escape(str(line.get('price')))} x {line.get('quantity', 1)}</li>" for line in lines
            )
            return _page(
                200,
                f"<h1>Pay ${int(session['amount_total']) / 100:.2f} ({html.escape(str(session['mode']))})</h1>"
                f"<ul>{items}</ul><form method='post'><button>Pay</button></form>"
                f"<p><a href='{html.escape(str(session.get('cancel_url') or ''))}'>Cancel</a></p>",
            )
        if path.startswith("/p/session/") and method == "GET":
            return self._portal_page(path.removeprefix("/p/session/"))
        if path.startswith("/i/") and method == "GET":
            invoice_id = path.removeprefix("/i/").removesuffix("/pdf")
            with self.lock:
                found = [i for i in self.invoices if i["id"] == invoice_id]
            if not found:
                return _page(404, "No such invoice.")
            invoice = found[0]
            return _page(
                200,
                f"<h1>Invoice {html.escape(str(invoice.get('number')))}</h1><p>{int(invoice['amount_paid']) / 100:.2f} "
                f"{html.escape(str(invoice['currency']))}, {html.escape(str(invoice['status']))}</p>",
            )
        return None

    def _portal_page(self, portal_id: str) -> tuple[int, str, bytes, dict[str, str]]:
        with self.lock:
            found = [p for p in self.portal_sessions if p["id"] == portal_id]
            if not found:
                return _page(404, "This portal session is no longer available.")
            customer = found[0]["customer"]
            subscriptions = [s for s in self.subscriptions.values() if s["customer"] == customer]
            invoices = [i for i in self.invoices if i["customer"] == customer]
        rows = "".join(f"<li>{html.escape(s['id'])}: {html.escape(str(s['status']))}</li>" for s in subscriptions)
        bills = "".join(
            f"<li>{html.escape(str(i.get('number')))}: {int(i['amount_paid']) / 100:.2f} "
            f"{html.escape(str(i['currency']))} ({html.escape(str(i['status']))})</li>"
            for i in invoices
        )
        back = html.escape(str(found[0].get("return_url") or ""))
        return _page(
            200,
            f"<h1>Billing portal for {html.escape(customer)}</h1><h2>Subscriptions</h2><ul>{rows}</ul>"
            f"<h2>Invoices</h2><ul>{bills}</ul><p><a href='{back}'>Return</a></p>",
        )

    def _create_portal(self, form: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        if (problem := self._missing_customer(form.get("customer"))) is not None:
            return problem
        portal_id = "bps_" + secrets.token_hex(10)
        portal = {
            "id": portal_id,
            "object": "billing_portal.session",
            "customer": form["customer"],
            "return_url": form.get("return_url"),
            "url": f"{self.url}/p/session/{portal_id}",
            "livemode": False,
        }
        with self.lock:
            self.portal_sessions.append(portal)
        return 200, portal, {}

    def _list_invoices(self, query: dict[str, str]) -> tuple[int, dict[str, Any], dict[str, str]]:
        try:
            limit = int(query.get("limit", "10"))
        except ValueError:
            return _error(400, "invalid_request_error", "Invalid integer: limit", param="limit")
        if not 1 <= limit <= 100:
            return _error(400, "invalid_request_error", "limit must be between 1 and 100", param="limit")
        with self.lock:
            rows = sorted(
                (i for i in self.invoices if query.get("customer") in (None, i["customer"])),
                key=lambda i: (i["created"], i["id"]),
                reverse=True,
            )
        after = query.get("starting_after")
        if after:
            ids = [row["id"] for row in rows]
            if after not in ids:
                return _error(
                    400,
                    "invalid_request_error",
                    f"No such invoice: '{after}'",
                    param="starting_after",
                    code="resource_missing",
                )
            rows = rows[ids.index(after) + 1 :]
        page = {"object": "list", "url": "/v1/invoices", "has_more": len(rows) > limit, "data": rows[:limit]}
        return 200, page, {}

    def _retrieve_subscription(self, subscription_id: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self.lock:
            subscription = self.subscriptions.get(subscription_id)
        if subscription is None:
            return _error(
                404, "invalid_request_error", f"No such subscription: '{subscription_id}'", param="id",
                code="resource_missing",
            )  # fmt: skip
        return 200, dict(subscription), {}

    def _cancel_subscription(self, subscription_id: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self.lock:
            subscription = self.subscriptions.get(subscription_id)
            if subscription is None or subscription["status"] == "canceled":
                return _error(
                    404,
                    "invalid_request_error",
                    f"No such subscription: '{subscription_id}'",
                    param="id",
                    code="resource_missing",
                )
            now = int(time.time())
            subscription |= {"status": "canceled", "canceled_at": now, "ended_at": now}
            return 200, dict(subscription), {}

    def _list_invoice_payments(self, query: dict[str, str]) -> tuple[int, dict[str, Any], dict[str, str]]:
        invoice_id = query.get("invoice")
        with self.lock:
            paid = [i for i in self.invoices if i["id"] == invoice_id and i.get("payment_intent")]
        rows = [
            {
                "id": "inpay_" + invoice["id"].removeprefix("in_"),
                "object": "invoice_payment",
                "amount_paid": invoice["amount_paid"],
                "amount_requested": invoice["amount_due"],
                "created": invoice["created"],
                "currency": invoice["currency"],
                "invoice": invoice["id"],
                "is_default": True,
                "livemode": False,
                "payment": {"type": "payment_intent", "payment_intent": invoice["payment_intent"]},
                "status": "paid",
                "status_transitions": {"canceled_at": None, "paid_at": invoice["created"]},
            }
            for invoice in paid
        ]
        return 200, {"object": "list", "url": "/v1/invoice_payments", "has_more": False, "data": rows}, {}

    def _create_refund(self, form: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        payment_intent = form.get("payment_intent")
        with self.lock:
            paid_by = [i for i in self.invoices if payment_intent and i.get("payment_intent") == payment_intent]
            invoice = paid_by[0] if paid_by else None
            if invoice is None:
                return _error(
                    400,
                    "invalid_request_error",
                    f"No such payment_intent: '{payment_intent}'",
                    param="payment_intent",
                    code="resource_missing",
                )
            left = int(invoice["amount_paid"]) - int(invoice.get("amount_refunded", 0))
            if left <= 0:
                return _error(
                    400,
                    "invalid_request_error",
                    f"Charge for payment_intent {payment_intent} has already been refunded.",
                    code="charge_already_refunded",
                )
            amount = int(form.get("amount", left))
            if amount > left:
                return _error(
                    400,
                    "invalid_request_error",
                    f"Refund amount ({amount}) is greater than unrefunded amount on charge ({left})",
                    param="amount",
                    code="amount_too_large",
                )
            invoice["amount_refunded"] = int(invoice.get("amount_refunded", 0)) + amount
            refund = {
                "id": "re_" + secrets.token_hex(12),
                "object": "refund",
                "amount": amount,
                "charge": "ch_" + str(payment_intent).removeprefix("pi_"),
                "created": int(time.time()),
                "currency": invoice["currency"],
                "metadata": form.get("metadata", {}),
                "payment_intent": payment_intent,
                "reason": form.get("reason"),
                "status": "succeeded",
            }
            self.refunds.append(refund)
        return 200, refund, {}


def _error(
    status: int, type_: str, message: str, *, param: str | None = None, code: str | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    error: dict[str, Any] = {"type": type_, "message": message}
    if param:
        error["param"] = param
    if code:
        error["code"] = code
    return status, {"error": error}, {}


def _page(status: int, body: str) -> tuple[int, str, bytes, dict[str, str]]:
    document = f"<!doctype html><title>Stripe (local stub)</title><p><em>Stripe stub: test mode</em></p>{body}"
    return status, "text/html; charset=utf-8", document.encode(), {}


def _handler(stub: StripeStub) -> type[BaseHTTPRequestHandler]:
    class Handler(StubHandler):
        def _serve(self, method: str) -> None:
            parts = urlsplit(self.path)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            page = stub.hosted_page(method, parts.path)
            if page is not None:
                self._send(*page)
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
            form: dict[str, Any] = {}
            if method == "POST":
                if headers.get("content-type", "").split(";")[0] != "application/x-www-form-urlencoded":
                    self._answer(
                        method,
                        parts.path,
                        query,
                        headers,
                        {},
                        raw,
                        *_error(400, "invalid_request_error", "Stripe's v1 API takes form-encoded bodies"),
                    )
                    return
                form = parse_form(parse_qsl(raw.decode(), keep_blank_values=True))
            answer = stub.handle(method, parts.path, query, headers, form)
            if answer is None:
                self._record(method, parts.path, query, headers, form, raw, 0)
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self._answer(method, parts.path, query, headers, form, raw, *answer)

        def _record(
            self,
            method: str,
            path: str,
            query: dict[str, str],
            headers: dict[str, str],
            form: dict[str, Any],
            raw: bytes,
            status: int,
        ) -> None:
            with stub.lock:
                stub.requests.append(Recorded(method, path, query, headers, form, raw, status))

        def _answer(
            self,
            method: str,
            path: str,
            query: dict[str, str],
            headers: dict[str, str],
            form: dict[str, Any],
            raw: bytes,
            status: int,
            body: dict[str, Any],
            extra: dict[str, str],
        ) -> None:
            self._record(method, path, query, headers, form, raw, status)
            extra = {"Request-Id": "req_" + secrets.token_hex(7), **extra}
            if "stripe-version" in headers:
                extra["Stripe-Version"] = headers["stripe-version"]
            self._send(status, "application/json", json.dumps(body).encode(), extra)

        def _send(self, status: int, content_type: str, data: bytes, extra: dict[str, str]) -> None:
            self.write_answer(status, data, {"Content-Type": content_type, **extra})

    return Handler


def stub_server(stub: StripeStub, port: int = 0) -> StubServer[StripeStub]:
    """The stub served on 127.0.0.1 in a background thread (``stop()`` ends it)."""
    return StubServer(stub, _handler(stub), port)


def running(stub: StripeStub | None = None) -> AbstractContextManager[StripeStub]:
    """Serve ``stub`` (a new one by default) on 127.0.0.1 on a free port for the ``with`` block."""
    stub = stub or StripeStub()
    return serving(stub, _handler(stub))


def http_webhook(url: str, timeout: float = 30) -> Webhook:
    """A webhook endpoint at ``url``, reached over HTTP as Stripe reaches it."""
    import httpx

    def post(payload: bytes, headers: dict[str, str]) -> int:
        with httpx.Client(timeout=timeout, trust_env=False) as client:
            return client.post(url, content=payload, headers=headers).status_code

    return post
