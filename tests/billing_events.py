"""Stripe webhook events for tests: a customer's event stream (:class:`Subscriber`), delivery to the
webhook function's test client, and helpers over the local stack. The events' shapes and their signing
live in ``dev/stubs/stripe_events.py``, shared with the Stripe stub that sends them in ``make dev``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dev.stubs import stripe_events
from dev.stubs.stripe_events import (
    API_VERSION,
    charge_obj,
    checkout_session_obj,
    encode,
    event,
    invoice_obj,
    new_id,
    subscription_obj,
)

__all__ = ["API_VERSION", "encode", "event", "invoice_obj", "new_id", "subscription_obj"]

SECRET = "whsec_test_secret"  # settings.stripe_webhook_secret in tests/conftest.py


def ts(moment: datetime) -> int:
    return int(moment.timestamp())


def signature(payload: bytes, *, secret: str = SECRET, timestamp: int | None = None) -> str:
    """The hex v1 signature of ``payload`` at ``timestamp`` (the tests' secret by default)."""
    return stripe_events.signature(payload, secret=secret, timestamp=timestamp)


def signature_header(
    payload: bytes, *, secret: str = SECRET, timestamp: int | None = None, extra_v1: tuple[str, ...] = ()
) -> str:
    return stripe_events.signature_header(payload, secret=secret, timestamp=timestamp, extra_v1=extra_v1)


# -- a customer's event stream ----------------------------------------------------------------------


@dataclass
class Subscriber:
    """One client's Stripe identity and a clock for ``event.created`` (each event one second later).

    With ``clock`` (the test's platform clock), events happen just before the clock's time, as real
    ones do (Stripe stamps an event when it happens and delivers it moments later)."""

    client_id: str
    customer: str = field(default_factory=lambda: new_id("cus"))
    subscription: str = field(default_factory=lambda: new_id("sub"))
    created: int = field(default_factory=lambda: int(time.time()) - 10_000)
    clock: Clock | None = None
    # One counter for every subscription of the customer (see :meth:`another_subscription`).
    _ticks: list[int] = field(default_factory=lambda: [0])

    def tick(self, at: int | None = None) -> int:
        if at is not None:
            return at
        self._ticks[0] += 1
        # Events happened shortly before the clock's "now" (the delivery), in the order they were made.
        self.created = int(self.clock.now.timestamp()) - 1_000 + self._ticks[0] if self.clock else self.created + 1
        return self.created

    def another_subscription(self) -> Subscriber:
        """The same client and Stripe customer with a second subscription, its events on the same clock."""
        twin = Subscriber(self.client_id, customer=self.customer, created=self.created, clock=self.clock)
        twin._ticks = self._ticks
        return twin

    def checkout_subscription(
        self,
        plan_id: str = "growth",
        interval: str = "monthly",
        *,
        session_id: str | None = None,
        at: int | None = None,
    ) -> dict[str, Any]:
        session = checkout_session_obj(
            session_id or new_id("cs_test"),
            mode="subscription",
            customer=self.customer,
            client_reference_id=self.client_id,
            subscription=self.subscription,
            amount_total=7900,
            metadata={"client_id": self.client_id, "plan_id": plan_id, "interval": interval},
        )
        return event("checkout.session.completed", session, self.tick(at))

    def checkout_pack(
        self,
        pack_id: str = "pack_500",
        *,
        amount_total: int = 6000,
        payment_status: str = "paid",
        payment_intent: str | None = None,
        session_id: str | None = None,
        at: int | None = None,
        type_: str = "checkout.session.completed",
    ) -> dict[str, Any]:
        session = checkout_session_obj(
            session_id or new_id("cs_test"),
            mode="payment",
            customer=self.customer,
            client_reference_id=self.client_id,
            payment_status=payment_status,
            payment_intent=payment_intent or new_id("pi"),
            amount_total=amount_total,
            metadata={"client_id": self.client_id, "pack_id": pack_id},
        )
        return event(type_, session, self.tick(at))

    def subscription_event(
        self,
        type_: str,
        price: str,
        start: int,
        end: int,
        *,
        status: str = "active",
        cancel_at_period_end: bool = False,
        legacy: bool = False,
        at: int | None = None,
        previous: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        obj = subscription_obj(
            self.subscription,
            self.customer,
            price,
            start,
            end,
            status=status,
            cancel_at_period_end=cancel_at_period_end,
            legacy=legacy,
            metadata={"client_id": self.client_id},
        )
        return event(type_, obj, self.tick(at), previous=previous)

    def created_event(self, price: str, start: int, end: int, **kw: Any) -> dict[str, Any]:
        return self.subscription_event("customer.subscription.created", price, start, end, **kw)

    def updated_event(self, price: str, start: int, end: int, **kw: Any) -> dict[str, Any]:
        return self.subscription_event("customer.subscription.updated", price, start, end, **kw)

    def deleted_event(self, price: str, start: int, end: int, **kw: Any) -> dict[str, Any]:
        return self.subscription_event("customer.subscription.deleted", price, start, end, status="canceled", **kw)

    def invoice_event(
        self,
        type_: str,
        price: str,
        start: int,
        end: int,
        *,
        invoice_id: str | None = None,
        billing_reason: str = "subscription_create",
        legacy: bool = False,
        at: int | None = None,
    ) -> dict[str, Any]:
        status = "paid" if type_ == "invoice.paid" else "open"
        obj = invoice_obj(
            invoice_id or new_id("in"),
            self.customer,
            self.subscription,
            price,
            start,
            end,
            billing_reason=billing_reason,
            status=status,
            legacy=legacy,
        )
        return event(type_, obj, self.tick(at))

    def invoice_paid(self, price: str, start: int, end: int, **kw: Any) -> dict[str, Any]:
        return self.invoice_event("invoice.paid", price, start, end, **kw)

    def payment_failed(self, price: str, start: int, end: int, **kw: Any) -> dict[str, Any]:
        kw.setdefault("billing_reason", "subscription_cycle")
        return self.invoice_event("invoice.payment_failed", price, start, end, **kw)

    def one_off_invoice(self, type_: str, *, invoice_id: str, amount: int = 2500) -> dict[str, Any]:
        """An invoice outside any subscription (e.g. sent from the Dashboard): ``billing_reason`` manual."""
        status = "paid" if type_ == "invoice.paid" else "open"
        obj = {
            "id": invoice_id,
            "object": "invoice",
            "customer": self.customer,
            "billing_reason": "manual",
            "status": status,
            "amount_due": amount,
            "amount_paid": amount if status == "paid" else 0,
            "currency": "usd",
            "parent": None,
            "lines": {
                "object": "list",
                "data": [{"id": new_id("il"), "object": "line_item", "amount": amount, "period": {}}],
                "has_more": False,
            },
            "livemode": False,
        }
        return event(type_, obj, self.tick())

    def charge_refunded(
        self,
        payment_intent: str,
        amount: int,
        amount_refunded: int,
        *,
        charge_id: str | None = None,
        at: int | None = None,
    ) -> dict[str, Any]:
        charge = charge_obj(self.customer, payment_intent, amount, amount_refunded=amount_refunded, charge_id=charge_id)
        return event("charge.refunded", charge, self.tick(at))


# -- delivery ---------------------------------------------------------------------------------------


def deliver(
    http: Any,
    evt: dict[str, Any] | bytes,
    *,
    secret: str = SECRET,
    timestamp: int | None = None,
    header: str | None = None,
    omit_header: bool = False,
) -> Any:
    """POST an event to the webhook function's test client as Stripe does."""
    payload = evt if isinstance(evt, bytes) else encode(evt)
    headers = stripe_events.delivery_headers(payload, secret=secret, timestamp=timestamp)
    if header is not None:
        headers["Stripe-Signature"] = header
    if omit_header:
        del headers["Stripe-Signature"]
    return http.post("/", data=payload, headers=headers)


# -- the local stack's view -------------------------------------------------------------------------


class Clock:
    """A settable platform clock (webhook timestamps and signatures still use real time)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        from datetime import timedelta

        self.now += timedelta(**delta)
        return self.now

    def set(self, moment: datetime) -> datetime:
        self.now = moment
        return moment


def install_clock(stack: Any, clock: Clock, **platform: Any) -> Any:
    """Install a platform like the stack's driven by ``clock`` (its own ledger, on the same clock)."""
    from shared.platform import Platform, set_platform

    p = stack.platform
    installed = Platform(
        platform.pop("settings", p.settings),
        db=p.db,
        object_store=p.object_store,
        task_queue=stack.dispatcher,
        fetcher=p.fetcher,
        clock=clock,
        **platform,
    )
    set_platform(installed)  # the stack fixture resets the platform afterwards
    return installed


def install_gateway(stack: Any, stub: Any, *, max_network_retries: int = 0, **platform: Any) -> Any:
    """Install a platform like the stack's whose payment gateway is the real StripeClient → ``stub``.

    The stack fixture resets the platform afterwards. Returns the new platform.
    """
    from dev.stubs.stripe import API_KEY
    from shared.billing.gateway import StripeGateway
    from shared.platform import Platform, set_platform

    p = stack.platform
    gateway = StripeGateway(API_KEY, api_base=stub.url, max_network_retries=max_network_retries)
    options: dict[str, Any] = {"ledger": p.ledger} if "clock" not in platform else {}
    options |= platform
    installed = Platform(
        options.pop("settings", p.settings),
        db=p.db,
        object_store=p.object_store,
        task_queue=stack.dispatcher,
        fetcher=p.fetcher,
        payment_gateway=gateway,
        **options,
    )
    set_platform(installed)
    return installed


class _LinkingGateway:
    """Just enough of a payment gateway for ``ensure_customer``: hands out one customer id."""

    def __init__(self, customer: str) -> None:
        self.customer = customer
        self.created = 0

    def create_customer(self, client_id: str, email: str | None, attempt: int = 0) -> str:
        self.created += 1
        return self.customer


def onboard_and_link(stack: Any, sub: Subscriber) -> None:
    """What happens before any webhook: the client's first call (onboarding) and its Stripe customer,
    created by the app's own ``ensure_customer`` when it starts a Checkout."""
    from shared.adapters.firestore.billing import FirestoreBillingStore
    from shared.billing.service import ensure_customer
    from shared.platform import get_platform

    response = stack.client("billing_api").get("/subscription", headers=stack.headers(sub.client_id))
    assert response.status_code == 200, response.json
    gateway = _LinkingGateway(sub.customer)
    accounts = FirestoreBillingStore(get_platform().db)
    assert ensure_customer(accounts, gateway, sub.client_id, None) == sub.customer  # type: ignore[arg-type]
    assert gateway.created == 1


def billing_of(stack: Any, client_id: str) -> dict[str, Any]:
    snapshot = stack.platform.db.collection("clients").document(client_id).get()
    billing: dict[str, Any] = (snapshot.to_dict() or {}).get("billing") or {}
    return billing


def marker(stack: Any, event_id: str) -> dict[str, Any] | None:
    snapshot = stack.platform.db.collection("stripe_events").document(event_id).get()
    return snapshot.to_dict() if snapshot.exists else None


# -- helpers the webhook test files share ------------------------------------------------------------

SCHEDULER = {"Authorization": "Bearer test-task-secret"}  # tests/conftest.py TASK_SECRET


def send(hook: Any, evt: dict[str, Any]) -> str:
    """Deliver ``evt`` once; it must be acknowledged (2xx) and echoed; returns the outcome."""
    response = deliver(hook, evt)
    assert response.status_code == 200, response.json
    body = response.json
    assert body["received"] is True and body["id"] == evt["id"] and body["type"] == evt["type"]
    return str(body["outcome"])


def balance(client_id: str) -> int:
    """Spendable credits now (the platform's clock)."""
    from shared.ledger.model import spendable
    from shared.platform import get_platform

    p = get_platform()
    return spendable(p.ledger.state(client_id), p.clock())


def daily(stack: Any) -> dict[str, Any]:
    """The daily billing job through its Cloud Scheduler entry point."""
    response = stack.client("billing_jobs").post("/jobs/daily", headers=SCHEDULER)
    assert response.status_code == 200, response.json
    report: dict[str, Any] = response.json
    return report


def period(start: datetime, months: int = 1) -> tuple[int, int]:
    """A billing period of ``months`` plan-months from ``start``, as Stripe timestamps."""
    from shared.billing.calendar import add_months

    return ts(start), ts(add_months(start, months))


def once_only_story(sub: Subscriber, start: int, end: int, payment_intent: str) -> list[tuple[dict[str, Any], str]]:
    """One event of every kind the processor handles, each with the outcome it must have exactly once:
    checkout, plan, renewal, cancellation at period end, failed payment, a pack, its refund, an ignored
    type and the deletion (unpaid: it was past due)."""
    return [
        (sub.checkout_subscription(), "subscription checkout linked"),
        (sub.created_event("price_growth_m", start, end), "plan growth"),
        (sub.invoice_paid("price_growth_m", start, end), "invoice paid: granted 1000 credits"),
        (sub.updated_event("price_growth_m", start, end, cancel_at_period_end=True), "subscription active"),
        (sub.payment_failed("price_growth_m", start, end), "payment failed: past due"),
        (sub.checkout_pack("pack_500", payment_intent=payment_intent), "granted 500 pack credits"),
        (sub.charge_refunded(payment_intent, 6000, 6000), "refund: removed 500 unspent credits"),
        (event("customer.created", {"id": sub.customer, "object": "customer"}, sub.tick()), "ignored"),
        (sub.deleted_event("price_growth_m", start, end), "moved to Free (unpaid)"),
    ]


def changed_price(price: str) -> dict[str, Any]:
    """``data.previous_attributes`` of a subscription update that changed the price from ``price``."""
    return {"items": {"data": [{"price": {"id": price}}]}}
