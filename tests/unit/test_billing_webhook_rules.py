"""The Stripe webhook's rules against the in-memory ports, without the emulator: each event applied
once (replays and lost markers change nothing), stale and out-of-order events, the grace period the
guard enforces, packs and refunds, events that route nowhere, prices not configured yet, and a
concurrent change to the same client (the commit's precondition). tests/integration/
test_billing_webhook.py runs the same stories through the signed HTTP endpoint on Firestore; the
property-based lifecycle (test_billing_lifecycle_properties.py) explores the subscription states."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.billing.catalog import PriceIds, load_catalog
from shared.billing.events import StripePriceNotConfigured, WebhookProcessor
from shared.billing.models import StripeEvent
from shared.billing.service import PaymentPastDue, ensure_customer, onboard_client, require_good_standing
from shared.billing.store import BillingSnapshot
from shared.ledger.model import Actor, EntryType, spendable
from shared.ledger.service import Ledger
from tests.billing_events import Clock, Subscriber, event, new_id, once_only_story, period
from tests.fakes import InMemoryLedgerStore, RecordingPaymentGateway
from tests.fakes_billing import CustomerGateway, InMemoryBilling

PRICES = {
    "starter:monthly": "price_starter_m", "growth:monthly": "price_growth_m", "growth:annual": "price_growth_y",
    "pro:monthly": "price_pro_m", "scale:monthly": "price_scale_m", "pack_100": "price_pack_100",
    "pack_500": "price_pack_500",
}  # fmt: skip
GROWTH = 1000
GRACE = timedelta(days=load_catalog().grace_period_days)


class Stripe:
    """One onboarded client whose Stripe customer is linked, the webhook processor on in-memory ports,
    and a settable clock (events happen just before it, as delivered ones do)."""

    def __init__(self, store: InMemoryBilling | None = None) -> None:
        self.clock = Clock(datetime(2026, 6, 16, 12, tzinfo=UTC))
        self.store = store or InMemoryBilling()
        self.ledger_store = InMemoryLedgerStore()
        self.ledger = Ledger(self.ledger_store, clock=self.clock)
        self.gateway = RecordingPaymentGateway()
        self.prices = dict(PRICES)
        self.sub = Subscriber("c1", customer="cus_c1", clock=self.clock)
        onboard_client(self.store, self.ledger, load_catalog(), "c1", 0, self.clock.now)
        assert ensure_customer(self.store, CustomerGateway(), "c1", None) == "cus_c1"

    def send(self, evt: dict[str, Any]) -> str:
        processor = WebhookProcessor(
            self.store, self.ledger, load_catalog(), PriceIds(self.prices), self.clock.now, self.gateway
        )
        return processor.handle(StripeEvent.model_validate(evt))

    def subscribe(self, price: str, start: int, end: int, **invoice: Any) -> str:
        """Checkout completed, subscription created, first invoice paid; the invoice id."""
        self.send(self.sub.checkout_subscription())
        self.send(self.sub.created_event(price, start, end))
        paid = self.sub.invoice_paid(price, start, end, **invoice)
        assert self.send(paid).startswith("invoice paid: granted")
        return str(paid["data"]["object"]["id"])

    def billing(self) -> dict[str, Any]:
        return dict(self.store.record("c1").get("billing") or {})

    def balance(self) -> int:
        return spendable(self.ledger.state("c1"), self.clock.now)

    def entries(self) -> list[Any]:
        return self.ledger_store.entries("c1")

    def snapshot(self) -> dict[str, Any]:
        """Everything an event may change for the client."""
        return {
            "record": self.store.record("c1"),
            "ledger": self.ledger.state("c1").model_dump(mode="json", exclude={"updated_at"}),
            "entries": len(self.entries()),
            "purchases": {k: dict(v) for k, v in self.store.purchases.items()},
            "notifications": dict(self.store.notifications.get("c1", {})),
        }

    def grants_by_reference(self) -> Counter[str | None]:
        buckets = self.ledger.state("c1").buckets
        return Counter(buckets[e.bucket_id].reference for e in self.entries() if e.type is EntryType.GRANT)

    def spend(self, amount: int) -> None:
        hold = self.ledger.reserve(
            "c1", key=new_id("spend"), amount=amount, actor=Actor(kind="user", id="u"), purpose="test",
            ttl=timedelta(minutes=5), operation="generate_image",
        )  # fmt: skip
        self.ledger.capture("c1", hold["hold_id"], amount=amount, actor=Actor(kind="task", id="t"), reason="test")


@pytest.fixture
def stripe() -> Stripe:
    return Stripe()


# -- once, and only once ------------------------------------------------------------------------------


def test_each_event_is_applied_once_and_replays_change_nothing(stripe: Stripe) -> None:
    sub = stripe.sub
    start, end = period(stripe.clock.now - timedelta(days=1))
    pi = new_id("pi")
    story = once_only_story(sub, start, end, pi)
    for evt, outcome in story:
        assert evt["id"] not in stripe.store.events
        assert stripe.send(evt) == outcome
        after = stripe.snapshot()
        assert stripe.store.events[evt["id"]]["outcome"] == outcome
        for _ in range(2):
            assert stripe.send(evt) == "duplicate"
            assert stripe.snapshot() == after
    billing = stripe.billing()
    assert billing["plan"] == "free" and billing.get("pending_plan") is None and billing.get("past_due_since") is None
    assert stripe.balance() == GROWTH  # the pack came and went
    assert stripe.ledger.verify("c1") == []


def test_a_redelivery_after_a_lost_marker_grants_nothing_twice(stripe: Stripe) -> None:
    """A crash between the ledger grant and the marker: Stripe retries and the grants replay by key."""
    start, end = period(stripe.clock.now - timedelta(days=1))
    events = [stripe.sub.invoice_paid("price_growth_m", start, end), stripe.sub.checkout_pack("pack_100")]
    for evt in events:
        stripe.send(evt)
    before = stripe.balance(), len(stripe.entries())
    for evt in events:
        del stripe.store.events[evt["id"]]  # the marker was never written
        assert stripe.send(evt) != "duplicate"
    assert (stripe.balance(), len(stripe.entries())) == before == (1100, 2)


def test_a_deliberately_ignored_event_type_is_recorded_as_ignored(stripe: Stripe) -> None:
    evt = event("payment_method.attached", {"id": new_id("pm"), "object": "payment_method"}, stripe.sub.tick())
    before = stripe.snapshot()
    assert stripe.send(evt) == "ignored"
    assert stripe.store.events[evt["id"]] == {
        "type": "payment_method.attached",
        "client_id": None,
        "outcome": "ignored",
    }
    assert stripe.snapshot() == before


def test_events_for_an_unknown_customer_are_acknowledged_without_effect(stripe: Stripe) -> None:
    stranger = Subscriber("c_stranger", clock=stripe.clock)
    start, end = period(stripe.clock.now)
    evt = stranger.invoice_paid("price_growth_m", start, end)
    assert stripe.send(evt).startswith("unroutable")
    assert stripe.store.events[evt["id"]]["client_id"] is None
    assert "c_stranger" not in stripe.store.clients


@pytest.mark.parametrize("kind", ["subscription", "invoice"])
def test_an_event_for_a_price_not_configured_yet_is_refused_until_it_is(stripe: Stripe, kind: str) -> None:
    """Nothing is recorded while the price is unknown (Stripe redelivers on the 5xx); once configured,
    the event is applied once."""
    start, end = period(stripe.clock.now)
    stripe.send(stripe.sub.checkout_subscription())
    make = stripe.sub.created_event if kind == "subscription" else stripe.sub.invoice_paid
    evt = make("price_growth_2027", start, end)
    before = stripe.snapshot()
    for _ in range(2):
        with pytest.raises(StripePriceNotConfigured) as refused:
            stripe.send(evt)
        assert refused.value.extensions["price_id"] == "price_growth_2027"
    assert evt["id"] not in stripe.store.events and stripe.snapshot() == before

    stripe.prices["growth:monthly"] = "price_growth_2027"
    outcome = stripe.send(evt)
    assert "unroutable" not in outcome and outcome != "duplicate"
    assert stripe.send(evt) == "duplicate"
    if kind == "invoice":
        assert stripe.balance() == GROWTH
    else:
        assert stripe.billing()["plan"] == "growth"


# -- order --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["0123", "3210", "2013", "1302"])
def test_any_delivery_order_ends_in_the_same_state(stripe: Stripe, order: str) -> None:
    sub = stripe.sub
    start, end = period(stripe.clock.now - timedelta(days=2))
    events = [
        sub.checkout_subscription(),
        sub.created_event("price_growth_m", start, end),
        sub.invoice_paid("price_growth_m", start, end),
        sub.updated_event("price_growth_m", start, end, cancel_at_period_end=True),
    ]
    for evt in [events[int(i)] for i in order]:
        stripe.send(evt)
    billing = stripe.billing()
    assert (billing["plan"], billing["product_slots"], billing["interval"]) == ("growth", 500, "monthly")
    assert (billing["subscription_id"], billing["subscription_status"]) == (sub.subscription, "active")
    assert billing["cancel_at_period_end"] is True and billing["last_event_created"] == events[3]["created"]
    assert stripe.balance() == GROWTH
    assert stripe.grants_by_reference() == Counter({events[2]["data"]["object"]["id"]: 1})


def test_older_subscription_updates_and_payment_failures_are_stale(stripe: Stripe) -> None:
    sub = stripe.sub
    start, end = period(stripe.clock.now - timedelta(days=3))
    stripe.subscribe("price_growth_m", start, end)
    created = sub.tick()
    assert stripe.send(sub.updated_event("price_growth_m", start, end, cancel_at_period_end=True, at=created + 20)) == (
        "subscription active"
    )
    stripe.send(sub.invoice_paid("price_growth_m", start, end, billing_reason="subscription_cycle", at=created + 21))
    before = stripe.snapshot()
    for stale in (
        sub.updated_event("price_growth_m", start, end, status="past_due", at=created + 10),
        sub.updated_event("price_starter_m", start, end, at=created + 5),
        sub.payment_failed("price_growth_m", start, end, at=created + 15),
    ):
        assert stripe.send(stale).startswith("stale")
        assert stripe.snapshot() == before
    billing = stripe.billing()
    assert (billing["subscription_status"], billing["plan"], billing.get("past_due_since")) == (
        "active",
        "growth",
        None,
    )


def test_an_older_event_racing_a_newer_one_is_decided_again_and_is_stale() -> None:
    """The newer event commits between the older one's read and its commit: the older one's commit is
    refused (the version moved), it is decided again on fresh state, and it is then stale."""
    interleaved: list[str] = []
    armed: list[bool] = []

    class Interleaving(InMemoryBilling):
        def read(self, client_id: str) -> BillingSnapshot:
            snapshot = super().read(client_id)
            if armed:  # the older event's first read only
                armed.clear()
                interleaved.append(stripe.send(newer))
            return snapshot

    stripe = Stripe(Interleaving())
    sub = stripe.sub
    start, end = period(stripe.clock.now - timedelta(days=3))
    stripe.subscribe("price_growth_m", start, end)
    created = sub.tick()
    older = sub.updated_event("price_growth_m", start, end, status="past_due", at=created + 5)
    newer = sub.updated_event("price_growth_m", start, end, cancel_at_period_end=True, at=created + 20)
    armed.append(True)
    assert stripe.send(older).startswith("stale")
    assert interleaved == ["subscription active"]
    billing = stripe.billing()
    assert billing["subscription_status"] == "active" and billing.get("past_due_since") is None
    assert billing["cancel_at_period_end"] is True


# -- payment failures and the guard -------------------------------------------------------------------


def test_a_failed_payment_blocks_paid_work_after_the_grace_period_until_it_is_paid(stripe: Stripe) -> None:
    sub, catalog = stripe.sub, load_catalog()
    start, end = period(stripe.clock.now - timedelta(days=1))
    stripe.subscribe("price_growth_m", start, end)
    failed_at = stripe.clock.now
    assert stripe.send(sub.payment_failed("price_growth_m", start, end)) == "payment failed: past due"
    assert stripe.billing()["past_due_since"] == failed_at
    stripe.clock.advance(days=1)
    stripe.send(sub.payment_failed("price_growth_m", start, end))  # Stripe's retry does not restart the grace
    assert stripe.billing()["past_due_since"] == failed_at

    require_good_standing(stripe.store, catalog, "c1", failed_at + GRACE - timedelta(seconds=1))
    with pytest.raises(PaymentPastDue) as refused:
        require_good_standing(stripe.store, catalog, "c1", failed_at + GRACE)
    assert refused.value.extensions["past_due_since"] == failed_at.isoformat()

    stripe.clock.set(failed_at + GRACE)
    assert stripe.send(sub.invoice_paid("price_growth_m", start, end, billing_reason="subscription_cycle")).startswith(
        "invoice paid"
    )
    assert stripe.billing()["subscription_status"] == "active" and stripe.billing()["past_due_since"] is None
    require_good_standing(stripe.store, catalog, "c1", stripe.clock.now)


def test_a_past_due_subscription_status_starts_the_grace_period_too(stripe: Stripe) -> None:
    sub = stripe.sub
    start, end = period(stripe.clock.now - timedelta(days=1))
    stripe.subscribe("price_growth_m", start, end)
    assert stripe.send(sub.updated_event("price_growth_m", start, end, status="past_due")) == "subscription past_due"
    assert stripe.billing()["past_due_since"] == stripe.clock.now
    assert stripe.send(sub.updated_event("price_growth_m", start, end)) == "subscription active"
    assert stripe.billing()["past_due_since"] is None


def test_a_subscription_cancelled_for_non_payment_ends_the_block_on_free(stripe: Stripe) -> None:
    sub = stripe.sub
    start, end = period(stripe.clock.now - timedelta(days=1))
    stripe.subscribe("price_growth_m", start, end)
    stripe.send(sub.payment_failed("price_growth_m", start, end))
    stripe.clock.advance(days=5)
    with pytest.raises(PaymentPastDue):
        require_good_standing(stripe.store, load_catalog(), "c1", stripe.clock.now)
    assert stripe.send(sub.deleted_event("price_growth_m", start, end)) == "moved to Free (unpaid)"
    billing = stripe.billing()
    assert (billing["plan"], billing["product_slots"], billing.get("past_due_since")) == ("free", 25, None)
    require_good_standing(stripe.store, load_catalog(), "c1", stripe.clock.now)


# -- packs, refunds and invoices ----------------------------------------------------------------------


def test_a_pack_is_granted_once_per_paid_session(stripe: Stripe) -> None:
    pi, session_id = new_id("pi"), new_id("cs_test")
    completed = stripe.sub.checkout_pack("pack_500", payment_intent=pi, session_id=session_id)
    assert stripe.send(completed) == "granted 500 pack credits"
    again = stripe.sub.checkout_pack(
        "pack_500", payment_intent=pi, session_id=session_id, type_="checkout.session.async_payment_succeeded"
    )
    stripe.send(again)  # another event about the same paid session
    assert stripe.balance() == 500
    assert stripe.grants_by_reference() == Counter({pi: 1})
    purchase = stripe.store.purchases[("c1", session_id)]
    assert (purchase["pack_id"], purchase["credits"], purchase["payment_intent"]) == ("pack_500", 500, pi)
    assert stripe.store.pack_purchase(pi) is not None


def test_a_delayed_pack_payment_grants_when_it_succeeds(stripe: Stripe) -> None:
    session_id = new_id("cs_test")
    pending = stripe.sub.checkout_pack("pack_100", payment_status="unpaid", session_id=session_id)
    assert stripe.send(pending) == "pack payment pending"
    assert stripe.balance() == 0
    succeeded = stripe.sub.checkout_pack(
        "pack_100", session_id=session_id, type_="checkout.session.async_payment_succeeded"
    )
    assert stripe.send(succeeded) == "granted 100 pack credits"
    assert stripe.balance() == 100


def test_refunds_remove_the_unspent_share_once(stripe: Stripe) -> None:
    pi, charge = new_id("pi"), new_id("ch")
    stripe.send(stripe.sub.checkout_pack("pack_500", payment_intent=pi))
    stripe.spend(180)
    assert stripe.send(stripe.sub.charge_refunded(pi, 6000, 1500, charge_id=charge)) == (
        "refund: removed 125 unspent credits"
    )
    assert stripe.send(stripe.sub.charge_refunded(pi, 6000, 1500, charge_id=charge)) == "refund already applied"
    assert stripe.send(stripe.sub.charge_refunded(pi, 6000, 6000, charge_id=charge)) == (
        "refund: removed 195 unspent credits"
    )  # 500 - 180 spent - 125 already removed
    assert stripe.balance() == 0
    assert stripe.ledger.verify("c1") == []


def test_a_refund_of_a_payment_that_bought_no_pack_is_ignored(stripe: Stripe) -> None:
    stripe.send(stripe.sub.checkout_pack("pack_100"))
    assert stripe.send(stripe.sub.charge_refunded(new_id("pi"), 6000, 6000)).endswith("ignored")
    assert stripe.balance() == 100


@pytest.mark.parametrize("reason", ["manual", "subscription_update", "subscription_threshold"])
def test_invoices_that_are_not_a_period_grant_nothing(stripe: Stripe, reason: str) -> None:
    start, end = period(stripe.clock.now)
    outcome = stripe.send(stripe.sub.invoice_paid("price_growth_m", start, end, billing_reason=reason))
    assert outcome == f"invoice paid ({reason}): no allotment"
    assert stripe.balance() == 0


def test_a_paid_invoice_grants_the_period_expiring_at_its_end(stripe: Stripe) -> None:
    start, end = period(stripe.clock.now - timedelta(days=1))
    invoice_id = stripe.subscribe("price_scale_m", start, end)
    [bucket] = stripe.ledger.state("c1").buckets.values()
    assert (bucket.granted, bucket.reference, bucket.expires_at) == (
        10000,
        invoice_id,
        datetime.fromtimestamp(end, UTC),
    )
    assert stripe.billing()["plan"] == "scale"
