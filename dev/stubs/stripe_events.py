"""Stripe's webhook events and the objects inside them, in one place: the Stripe stub sends these when a
customer pays on its hosted Checkout page, and the tests build their event streams from them.

Signing follows Stripe's documented scheme, computed here with ``hmac``/``hashlib`` (never with the
``stripe`` library's helpers, so the library's verification is checked against the documentation)::

    Stripe-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>

Objects come in two shapes: the current API's (invoice ``parent.subscription_details.subscription``,
line ``pricing.price_details.price``, the period on the subscription *item*) and the older one
(``invoice.subscription``, line ``price.id``, the period on the subscription) with ``legacy=True``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from typing import Any

API_VERSION = "2026-10-28.endive"


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


# -- signing ----------------------------------------------------------------------------------------


def signature(payload: bytes, *, secret: str, timestamp: int | None = None) -> str:
    """The hex v1 signature of ``payload`` at ``timestamp`` (now by default)."""
    t = int(time.time()) if timestamp is None else timestamp
    return hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()


def signature_header(
    payload: bytes, *, secret: str, timestamp: int | None = None, extra_v1: tuple[str, ...] = ()
) -> str:
    """``Stripe-Signature`` for ``payload``; ``extra_v1``: more v1 values first (as during a secret's roll)."""
    t = int(time.time()) if timestamp is None else timestamp
    parts = [f"t={t}", *(f"v1={value}" for value in extra_v1), f"v1={signature(payload, secret=secret, timestamp=t)}"]
    return ",".join(parts)


def encode(event: dict[str, Any]) -> bytes:
    """Stripe sends pretty-printed JSON; the signature covers exactly these bytes."""
    return json.dumps(event, indent=2).encode()


def delivery_headers(payload: bytes, *, secret: str, timestamp: int | None = None) -> dict[str, str]:
    """The headers Stripe sends with an event to a webhook endpoint."""
    return {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        "Stripe-Signature": signature_header(payload, secret=secret, timestamp=timestamp),
    }


# -- events and objects -----------------------------------------------------------------------------


def event(
    type_: str,
    obj: dict[str, Any],
    created: int,
    *,
    event_id: str | None = None,
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    data: dict[str, Any] = {"object": obj}
    if previous is not None:
        data["previous_attributes"] = previous
    return {
        "id": event_id or new_id("evt"),
        "object": "event",
        "api_version": API_VERSION,
        "created": created,
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": type_,
    }


def checkout_session_obj(
    session_id: str,
    *,
    mode: str,
    customer: str,
    client_reference_id: str | None,
    metadata: dict[str, str],
    amount_total: int,
    status: str = "complete",
    payment_status: str = "paid",
    subscription: str | None = None,
    payment_intent: str | None = None,
    currency: str = "usd",
) -> dict[str, Any]:
    """A Checkout Session as ``checkout.session.completed`` carries it (``subscription`` in subscription
    mode, ``payment_intent`` in payment mode)."""
    return {
        "id": session_id,
        "object": "checkout.session",
        "mode": mode,
        "status": status,
        "payment_status": payment_status,
        "customer": customer,
        "client_reference_id": client_reference_id,
        "subscription": subscription,
        "payment_intent": payment_intent,
        "amount_total": amount_total,
        "currency": currency,
        "metadata": metadata,
        "livemode": False,
    }


def subscription_obj(
    sub_id: str,
    customer: str,
    price: str,
    start: int,
    end: int,
    *,
    status: str = "active",
    cancel_at_period_end: bool = False,
    metadata: dict[str, str] | None = None,
    interval: str | None = None,
    legacy: bool = False,
) -> dict[str, Any]:
    """``interval``: the price's ``recurring.interval`` (by default ``year`` for ids ending in ``_y``)."""
    item: dict[str, Any] = {
        "id": new_id("si"),
        "object": "subscription_item",
        "price": {
            "id": price,
            "object": "price",
            "recurring": {"interval": interval or ("year" if price.endswith("_y") else "month")},
        },
        "quantity": 1,
    }
    sub: dict[str, Any] = {
        "id": sub_id,
        "object": "subscription",
        "customer": customer,
        "status": status,
        "cancel_at_period_end": cancel_at_period_end,
        "items": {"object": "list", "data": [item], "has_more": False},
        "metadata": metadata or {},
        "livemode": False,
    }
    if legacy:
        sub |= {"current_period_start": start, "current_period_end": end}
    else:
        item |= {"current_period_start": start, "current_period_end": end}
    return sub


def invoice_obj(
    invoice_id: str,
    customer: str,
    sub_id: str,
    price: str,
    start: int,
    end: int,
    *,
    billing_reason: str = "subscription_create",
    status: str = "paid",
    amount: int = 7900,
    legacy: bool = False,
) -> dict[str, Any]:
    line: dict[str, Any] = {
        "id": new_id("il"),
        "object": "line_item",
        "amount": amount,
        "period": {"start": start, "end": end},
    }
    invoice: dict[str, Any] = {
        "id": invoice_id,
        "object": "invoice",
        "customer": customer,
        "billing_reason": billing_reason,
        "status": status,
        "amount_due": amount,
        "amount_paid": amount if status == "paid" else 0,
        "currency": "usd",
        # Stripe quirk: a subscription invoice's own period is the previous one; lines carry the service period.
        "period_start": start,
        "period_end": start,
        "lines": {"object": "list", "data": [line], "has_more": False},
        "livemode": False,
    }
    if legacy:
        invoice["subscription"] = sub_id
        line["price"] = {"id": price, "object": "price"}
    else:
        invoice["parent"] = {
            "type": "subscription_details",
            "subscription_details": {"subscription": sub_id, "metadata": {}},
        }
        line["pricing"] = {"type": "price_details", "price_details": {"price": price, "product": "prod_epox"}}
    return invoice


def payment_intent_obj(payment_intent: str, customer: str, amount: int, *, currency: str = "usd") -> dict[str, Any]:
    """A succeeded PaymentIntent (``payment_intent.succeeded``)."""
    return {
        "id": payment_intent,
        "object": "payment_intent",
        "amount": amount,
        "amount_received": amount,
        "currency": currency,
        "customer": customer,
        "status": "succeeded",
        "livemode": False,
    }


def charge_obj(
    customer: str,
    payment_intent: str,
    amount: int,
    *,
    amount_refunded: int = 0,
    charge_id: str | None = None,
    currency: str = "usd",
) -> dict[str, Any]:
    """A card charge (``charge.succeeded``; ``charge.refunded`` with ``amount_refunded``, cumulative)."""
    return {
        "id": charge_id or new_id("ch"),
        "object": "charge",
        "customer": customer,
        "payment_intent": payment_intent,
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": amount_refunded,
        "refunded": amount_refunded >= amount,
        "currency": currency,
        "paid": True,
        "status": "succeeded",
        "livemode": False,
    }
