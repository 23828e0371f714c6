"""The billing lifecycle as a Hypothesis state machine: a reference model of Stripe's subscription
lifecycle makes what a customer does happen — subscribe (paid, or first payment failing, then paid
or expired), upgrade and downgrade (optionally invoiced at once), switch the interval (a new period),
cancel now or at the period end, renewals paid or failing into past_due, then paid, unpaid or
cancelled, paying an open invoice after the cancellation, one-off invoices, two Checkouts at once,
credit packs, partial and full refunds, spending, time passing and the daily job — and emits the
events Stripe would. Events are delivered the way Stripe delivers them: each delivery may overtake
the events queued before it within a window of four, and may be delivered again later; nothing
waits longer than Stripe retries (three days): before time moves on by more, the queue is
delivered. Time never passes a live subscription's period end except through its renewal (Stripe
starts the next period there and applies a pending downgrade). They go through the real webhook
processor, the real ledger, the real daily job and the payment gateway port (a recording fake whose
cancellations and refunds feed Stripe's follow-up events back into the model).

Checked after every step: the ledger's verification finds no drift; no pack gave back more than its
refunds' share (``floor(credits * refunded / amount)``); no plan-month of any subscription holds
more than its allotment plus the documented proration; an event of a subscription that had already
ended changes nothing. Checked whenever every event is delivered (``settle``, and at the end of each
example): the plan, status and past-due mark are the governing subscription's; every plan-month
that was paid for holds exactly its allotment plus the documented proration — the plan in force at
the month's start, plus, for each upgrade in the month, ``floor(difference * share of the month
after the change)`` — once; the months the daily job was run in are granted; nothing was granted
for the months of a subscription that was cancelled as a second one; every refunded pack gave back
exactly its share unless it was spent.

Model limits (each a rule precondition, so they hold by construction): price changes and interval
switches only while the subscription is active, one price change of a subscription in flight at a
time and none while an interval switch's own events are, the daily job only while no event that
changes the subscription's status or period is in flight (its run then sees what Stripe sees; price
changes, invoices, packs and refunds may still be in flight), a Checkout race only on a quiet
account, a Checkout only when the app's guard (on what our side knows) allows one and every event of
the client's earlier subscriptions (their cancellation, late invoices) has been delivered — a new
subscription whose events interleave with a cancelled one's can leave the cancelled one's plan in
force (a known gap, docs/billing.md) — and an open invoice paid after a cancellation only once the
cancellation's events have been delivered (the payment comes days later).

Budget: 1,000 examples of up to 30 steps on the in-memory ports in the normal run;
``EPOX_PROPERTY_EXAMPLES=n`` runs n (``make soak``: 100,000). The emulator-backed run with the
Firestore adapters is ``tests/integration/test_billing_lifecycle_emulator.py``.
"""

from __future__ import annotations

import os
import random
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from shared.billing import allotments, lifecycle
from shared.billing.calendar import PlanMonth, add_months, plan_month
from shared.billing.catalog import PriceIds, load_catalog
from shared.billing.events import WebhookProcessor
from shared.billing.gateway import SubscriptionInfo
from shared.billing.models import StripeEvent
from shared.billing.money import prorated_credits, refund_target
from shared.billing.store import BillingStore
from shared.ledger.model import Actor, EntryType
from shared.ledger.service import Ledger
from shared.ledger.store import LedgerStore
from tests.billing_events import event as stripe_event
from tests.billing_events import invoice_obj, subscription_obj
from tests.fakes import InMemoryBillingStore, InMemoryLedgerStore, RecordingPaymentGateway

CATALOG = load_catalog()
PAID_PLANS = ["starter", "growth", "pro", "scale"]
RANK = {plan_id: plan.rank for plan_id, plan in CATALOG.plans.items()}
CREDITS = {plan_id: plan.monthly_credits for plan_id, plan in CATALOG.plans.items()}
INTERVALS = ["monthly", "annual"]


def price_id(plan: str, interval: str) -> str:
    return f"price_{plan}_{'y' if interval == 'annual' else 'm'}"


PRICES = PriceIds({f"{p}:{i}": price_id(p, i) for p in PAID_PLANS for i in INTERVALS})
PACKS = {pack_id: (pack.credits, pack.display_price) for pack_id, pack in CATALOG.packs.items()}
WINDOW = 4  # a delivery may overtake this many events queued before it
STARTS = [
    datetime(2026, 1, 31, 10, tzinfo=UTC),  # months clamp: Feb 28, Mar 31, Apr 30 ...
    datetime(2027, 12, 29, 9, tzinfo=UTC),  # into a leap February
    datetime(2028, 2, 29, 12, tzinfo=UTC),  # a leap day anchor
    datetime(2026, 6, 15, 8, 30, tzinfo=UTC),
]


def budget(default: int, steps: int) -> settings:
    soak = os.environ.get("EPOX_PROPERTY_EXAMPLES")
    return settings(
        max_examples=int(soak) if soak else default,
        stateful_step_count=steps,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
        database=None if soak else settings.default.database,
    )


# -- the reference model of Stripe's side --------------------------------------------------------------


@dataclass
class Period:
    start: datetime
    end: datetime
    invoice_id: str
    paid: bool = False  # paid while the subscription lived
    cut_at: datetime | None = None  # a reset started a new period before this one's end


@dataclass
class Sub:
    id: str
    interval: str
    price: str  # the plan of Stripe's current price
    status: str
    period: Period
    periods: list[Period]
    effective: list[tuple[datetime, str]]  # the plan whose credits count from each time on
    upgrades: list[tuple[datetime, str, str]] = field(default_factory=list)  # (when, from, to)
    pending: str | None = None  # a downgrade waiting for the period end
    cancel_at_period_end: bool = False
    ended_at: datetime | None = None
    ended_unpaid: bool = False
    failed_invoice: str | None = None  # the renewal invoice whose payment failed, still open
    rejected: bool = False  # a second subscription we cancelled
    payment_intents: dict[str, str] = field(default_factory=dict)  # invoice -> payment intent

    def effective_at(self, moment: datetime) -> str:
        plan = self.effective[0][1]
        for since, later in self.effective:
            if since <= moment:
                plan = later
        return plan


@dataclass
class PackTruth:
    session_id: str
    payment_intent: str
    charge_id: str
    credits: int
    amount: int
    refunded: int = 0  # Stripe's cumulative amount_refunded
    delivered: int = 0  # the largest amount_refunded we delivered
    bought: bool = False  # its purchase was delivered (refunds come days later, never before it)


@dataclass
class Pending:
    event: dict[str, Any]
    blocks_job: bool = False  # changes a subscription's status, period or governance
    no_change: bool = False  # happened after its subscription ended: must change nothing
    subscription: str | None = None
    race: bool = False
    price_change: bool = False
    reset: bool = False


class ModelGateway(RecordingPaymentGateway):
    """The payment port: what the webhook asks Stripe to do happens in the model, and Stripe's
    follow-up events (the subscription's deletion, the charge's refund) are queued."""

    def __init__(self, machine: BillingLifecycle) -> None:
        super().__init__()
        self.machine = machine

    def subscription(self, subscription_id: str) -> SubscriptionInfo | None:
        sub = self.machine.sub(subscription_id)  # Stripe's side: the model's truth
        return SubscriptionInfo(sub.status, int(sub.ended_at.timestamp()) if sub.ended_at else None)

    def cancel_subscription(self, subscription_id: str) -> bool:
        done = super().cancel_subscription(subscription_id)
        if done:
            self.machine.stripe_cancelled(subscription_id)
        return done

    def refund_invoice(self, invoice_id: str, *, reason: str) -> list[str]:
        refunds = super().refund_invoice(invoice_id, reason=reason)
        if refunds:
            self.machine.stripe_refunded(invoice_id)
        return refunds


class BillingLifecycle(RuleBasedStateMachine):
    billing_store_factory: ClassVar[Callable[[], BillingStore]] = InMemoryBillingStore
    ledger_store_factory: ClassVar[Callable[[], LedgerStore]] = InMemoryLedgerStore
    examples_run: ClassVar[int] = 0
    steps_run: ClassVar[int] = 0
    settles: ClassVar[int] = 0
    outcomes: ClassVar[dict[str, int]] = {}

    def __init__(self) -> None:
        super().__init__()
        self.tag = uuid.uuid4().hex[:10]  # ids unique across examples (the emulator keeps them all)
        self.client_id = f"c_life_{self.tag}"
        self.customer = f"cus_{self.tag}"
        self.counter = 0
        self.now = STARTS[0]
        self.subs: list[Sub] = []
        self.packs: list[PackTruth] = []
        self.pending: list[Pending] = []
        self.required_months: set[tuple[str, int]] = set()  # (subscription, month start ts)
        self.race: tuple[str, str] | None = None
        self.winner: str | None = None
        self.gateway = ModelGateway(self)
        self.store = type(self).billing_store_factory()
        self.ledger = Ledger(type(self).ledger_store_factory(), clock=lambda: self.now, sleep=lambda _: None)

    # -- ids, time and events ------------------------------------------------------------------------
    def new_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}_{self.tag}{self.counter:04d}"

    def tick(self) -> int:
        """Time moves on by a second with every event Stripe makes; its ``created`` is that second."""
        self.now += timedelta(seconds=1)
        return int(self.now.timestamp())

    def next_second(self) -> datetime:
        """When the next event will be stamped (what happens with it happens then)."""
        return self.now + timedelta(seconds=1)

    def emit(self, type_: str, obj: dict[str, Any], *, previous: dict[str, Any] | None = None, **tags: Any) -> None:
        evt = stripe_event(type_, obj, self.tick(), event_id=self.new_id("evt"), previous=previous)
        self.pending.append(Pending(evt, **tags))

    def sub_object(self, sub: Sub, status: str | None = None) -> dict[str, Any]:
        obj = subscription_obj(
            sub.id,
            self.customer,
            price_id(sub.price, sub.interval),
            int(sub.period.start.timestamp()),
            int(sub.period.end.timestamp()),
            status=status or sub.status,
            cancel_at_period_end=sub.cancel_at_period_end,
            metadata={"client_id": self.client_id},
        )
        return obj

    def invoice_object(
        self, sub: Sub, invoice_id: str, plan: str, start: datetime, end: datetime, reason: str
    ) -> dict[str, Any]:
        return invoice_obj(
            invoice_id,
            self.customer,
            sub.id,
            price_id(plan, sub.interval),
            int(start.timestamp()),
            int(end.timestamp()),
            billing_reason=reason,
        )

    # -- the model's view ----------------------------------------------------------------------------
    def governing(self) -> Sub | None:
        """The subscription the client should have: the newest one, but never the one that lost a race."""
        loser = next((s for s in self.race if s != self.winner), None) if self.race and self.winner else None
        subs = [s for s in self.subs if not s.rejected and s.id != loser]
        return subs[-1] if subs else None

    def live(self) -> Sub | None:
        """The live governing subscription; none while a Checkout race is undecided (nothing else happens then)."""
        if self.race_open():
            return None
        sub = self.governing()
        return sub if sub is not None and sub.ended_at is None and lifecycle.rules(sub.status).live else None

    def plan_in_force(self, sub: Sub | None) -> str:
        """The plan the client has from ``sub`` (and the subscriptions before it) now."""
        if sub is None:
            return "free"
        if sub.status in ("incomplete", "incomplete_expired"):
            earlier = [
                s for s in self.subs if not s.rejected and s is not sub and self.subs.index(s) < self.subs.index(sub)
            ]
            return self.plan_in_force(earlier[-1]) if earlier else "free"
        if sub.ended_at is not None and (sub.ended_unpaid or self.now >= sub.period.end):
            return "free"
        return sub.effective_at(self.now)

    def sub(self, subscription_id: str) -> Sub:
        return next(s for s in self.subs if s.id == subscription_id)

    def in_flight(self, sub: Sub, **tags: bool) -> bool:
        return any(p.subscription == sub.id and all(getattr(p, k) == v for k, v in tags.items()) for p in self.pending)

    # -- Stripe's follow-ups to the webhook's calls ------------------------------------------------------
    def stripe_cancelled(self, subscription_id: str) -> None:
        sub = self.sub(subscription_id)
        sub.rejected = True
        sub.status, sub.ended_at = "canceled", self.now
        self.emit("customer.subscription.deleted", self.sub_object(sub), no_change=True, subscription=sub.id)

    def stripe_refunded(self, invoice_id: str) -> None:
        sub = next(s for s in self.subs if invoice_id in s.payment_intents)
        payment_intent = sub.payment_intents[invoice_id]
        charge = {
            "id": "ch_" + payment_intent.removeprefix("pi_"),
            "object": "charge",
            "customer": self.customer,
            "payment_intent": payment_intent,
            "amount": 7900,
            "amount_refunded": 7900,
            "refunded": True,
        }
        self.emit("charge.refunded", charge, no_change=True)

    # -- setup ------------------------------------------------------------------------------------------
    @initialize(start=st.sampled_from(STARTS))
    def begin(self, start: datetime) -> None:
        from shared.billing.store import EventWrite

        type(self).examples_run += 1
        self.now = start
        # What the app does before any Checkout (ensure_customer): the customer belongs to the client.
        link = EventWrite(
            event_id=f"evt_link_{self.tag}", event_type="setup", event_created=0, livemode=False, outcome="linked",
            processed_at=start, client_id=self.client_id, customer_link=self.customer,
        )  # fmt: skip
        self.store.commit(link)

    # -- a customer's actions -------------------------------------------------------------------------
    def _new_sub(self, plan: str, interval: str, status: str) -> Sub:
        start = self.now
        period = Period(start, add_months(start, 12 if interval == "annual" else 1), self.new_id("in"))
        sub = Sub(self.new_id("sub"), interval, plan, status, period, [period], [(start, plan)])
        self.subs.append(sub)
        self.gateway.live.add(sub.id)
        return sub

    def _checkout(self, sub: Sub, **tags: Any) -> None:
        session = {
            "id": self.new_id("cs"),
            "object": "checkout.session",
            "mode": "subscription",
            "payment_status": "paid",
            "customer": self.customer,
            "client_reference_id": self.client_id,
            "subscription": sub.id,
            "metadata": {"client_id": self.client_id},
        }
        self.emit("checkout.session.completed", session, subscription=sub.id, **tags)

    def _pay_first_invoice(self, sub: Sub, **tags: Any) -> None:
        period = sub.period
        period.paid = True
        sub.payment_intents[period.invoice_id] = self.new_id("pi")
        invoice = self.invoice_object(
            sub, period.invoice_id, sub.price, period.start, period.end, "subscription_create"
        )
        self.emit("invoice.paid", invoice, subscription=sub.id, **tags)

    def checkout_allowed(self) -> bool:
        """The app's checkout guard, on what our side knows now (Stripe's side may be ahead of it).
        Model limit: a new subscription only once every event of the client's earlier subscriptions has
        been delivered (their cancellation, late invoices): see the module docstring."""
        state = self.store.read(self.client_id).state
        return (
            self.live() is None
            and not self.race_open()
            and not any(p.subscription is not None for p in self.pending)
            and (not state.subscription_id or lifecycle.rules(state.subscription_status).new_checkout)
        )

    @precondition(lambda self: self.checkout_allowed())
    @rule(plan=st.sampled_from(PAID_PLANS), interval=st.sampled_from(INTERVALS), first_payment_fails=st.booleans())
    def subscribe(self, plan: str, interval: str, first_payment_fails: bool) -> None:
        sub = self._new_sub(plan, interval, "incomplete" if first_payment_fails else "active")
        self._checkout(sub, blocks_job=True)
        self.emit("customer.subscription.created", self.sub_object(sub), subscription=sub.id, blocks_job=True)
        if first_payment_fails:
            failed = self.invoice_object(
                sub, sub.period.invoice_id, plan, sub.period.start, sub.period.end, "subscription_create"
            )
            self.emit("invoice.payment_failed", failed, subscription=sub.id, blocks_job=True)
        else:
            self._pay_first_invoice(sub, blocks_job=True)

    def race_open(self) -> bool:
        return any(p.race for p in self.pending)

    @precondition(lambda self: not self.pending and self.checkout_allowed())
    @rule(first=st.sampled_from(PAID_PLANS), second=st.sampled_from(PAID_PLANS), interval=st.sampled_from(INTERVALS))
    def two_checkouts_at_once(self, first: str, second: str, interval: str) -> None:
        """Two tabs, two Checkouts, both paid before any webhook arrived: the later to reach us goes."""
        a = self._new_sub(first, interval, "active")
        b = self._new_sub(second, interval, "active")
        self.race, self.winner = (a.id, b.id), None
        for sub in (a, b):
            self._checkout(sub, blocks_job=True, race=True)
        for sub in (a, b):
            self.emit(
                "customer.subscription.created", self.sub_object(sub), subscription=sub.id, blocks_job=True, race=True
            )
        for sub in (a, b):
            self._pay_first_invoice(sub, blocks_job=True, race=True)

    def _incomplete(self) -> Sub | None:
        sub = self.governing()
        return sub if sub is not None and sub.status == "incomplete" and sub.ended_at is None else None

    @precondition(lambda self: self._incomplete() is not None)
    @rule(paid=st.booleans())
    def finish_first_payment(self, paid: bool) -> None:
        """The customer completes the payment (3-D Secure, another card), or it expires after 23 hours."""
        sub = self._incomplete()
        assert sub is not None
        if paid:
            self._pay_first_invoice(sub, blocks_job=True)
            sub.status = "active"
            self.emit("customer.subscription.updated", self.sub_object(sub), previous={"status": "incomplete"},
                      subscription=sub.id, blocks_job=True)  # fmt: skip
        else:
            self.now += timedelta(hours=23)
            sub.status, sub.ended_at = "incomplete_expired", self.now
            self.gateway.live.discard(sub.id)
            self.emit("customer.subscription.updated", self.sub_object(sub), previous={"status": "incomplete"},
                      subscription=sub.id, blocks_job=True)  # fmt: skip

    def _active(self) -> Sub | None:
        sub = self.live()
        return sub if sub is not None and sub.status == "active" else None

    @precondition(
        lambda self: (
            self._active() is not None
            and not self.in_flight(self._active(), price_change=True)
            and not self.in_flight(self._active(), reset=True)
        )
    )
    @rule(plan=st.sampled_from(PAID_PLANS), invoice_now=st.booleans())
    def change_price(self, plan: str, invoice_now: bool) -> None:
        """Upgrade (applies now, prorated) or downgrade (at the period end) in the portal."""
        sub = self._active()
        assert sub is not None
        if plan == sub.price:
            return
        before = sub.price
        in_force = sub.effective_at(self.now)
        sub.price = plan
        if RANK[plan] > RANK[in_force]:
            at = self.next_second()  # the upgrade's event is stamped when it happens
            sub.effective.append((at, plan))
            sub.upgrades.append((at, in_force, plan))
            sub.pending = None
        elif RANK[plan] < RANK[in_force]:
            sub.pending = plan
        else:
            sub.pending = None
        previous = {"items": {"data": [{"price": {"id": price_id(before, sub.interval)}}]}}
        self.emit("customer.subscription.updated", self.sub_object(sub), previous=previous, subscription=sub.id,
                  price_change=True)  # fmt: skip
        if invoice_now:
            # Stripe's proration invoice (proration_behavior=always_invoice): a part of the period.
            invoice = self.invoice_object(sub, self.new_id("in"), plan, self.now, sub.period.end, "subscription_update")
            self.emit("invoice.paid", invoice, subscription=sub.id)

    @precondition(
        lambda self: self._active() is not None and not any(p.subscription == self._active().id for p in self.pending)
    )
    @rule(plan=st.sampled_from(PAID_PLANS))
    def switch_interval(self, plan: str) -> None:
        """Monthly <-> annual: Stripe resets the billing date and invoices the new period at once."""
        sub = self._active()
        assert sub is not None
        old_price = price_id(sub.price, sub.interval)
        old_start = sub.period.start
        at = self.next_second()  # the new period starts with the update's event
        sub.period.cut_at = at
        sub.interval = "monthly" if sub.interval == "annual" else "annual"
        sub.price, sub.pending = plan, None
        period = Period(at, add_months(at, 12 if sub.interval == "annual" else 1), self.new_id("in"))
        period.paid = True
        sub.period = period
        sub.periods.append(period)
        sub.effective.append((at, plan))
        previous = {
            "items": {"data": [{"price": {"id": old_price}}]},
            "current_period_start": int(old_start.timestamp()),
        }
        self.emit("customer.subscription.updated", self.sub_object(sub), previous=previous, subscription=sub.id,
                  blocks_job=True, reset=True)  # fmt: skip
        sub.payment_intents[period.invoice_id] = self.new_id("pi")
        invoice = self.invoice_object(sub, period.invoice_id, plan, period.start, period.end, "subscription_update")
        self.emit("invoice.paid", invoice, subscription=sub.id, blocks_job=True)

    @precondition(lambda self: self._active() is not None and not self._active().cancel_at_period_end)
    @rule()
    def cancel_at_period_end(self) -> None:
        sub = self._active()
        assert sub is not None
        sub.cancel_at_period_end = True
        self.emit("customer.subscription.updated", self.sub_object(sub), previous={"cancel_at_period_end": False},
                  subscription=sub.id)  # fmt: skip

    @precondition(lambda self: self.live() is not None and self.live().status in ("active", "past_due", "unpaid"))
    @rule()
    def cancel_now(self) -> None:
        sub = self.live()
        assert sub is not None
        sub.ended_unpaid = sub.status in ("past_due", "unpaid")
        sub.status, sub.ended_at = "canceled", self.next_second()
        self.gateway.live.discard(sub.id)
        self.emit("customer.subscription.deleted", self.sub_object(sub), subscription=sub.id, blocks_job=True)

    @precondition(lambda self: self._active() is not None)
    @rule(payment_fails=st.booleans())
    def renewal(self, payment_fails: bool) -> None:
        """The period ends: Stripe rolls the subscription into the next one and charges the renewal an
        hour later — or, with cancel_at_period_end, ends it."""
        sub = self._active()
        assert sub is not None
        if sub.period.end - self.now > timedelta(days=2):
            self.catch_up()
        self.now = max(self.now, sub.period.end + timedelta(minutes=1))
        if sub.cancel_at_period_end:
            sub.status, sub.ended_at = "canceled", self.next_second()
            self.gateway.live.discard(sub.id)
            self.emit("customer.subscription.deleted", self.sub_object(sub), subscription=sub.id, blocks_job=True)
            return
        old = sub.period
        period = Period(old.end, add_months(old.end, 12 if sub.interval == "annual" else 1), self.new_id("in"))
        sub.period = period
        sub.periods.append(period)
        if sub.pending:
            sub.effective.append((period.start, sub.pending))
            sub.pending = None
        previous = {"current_period_start": int(old.start.timestamp()), "current_period_end": int(old.end.timestamp())}
        self.emit("customer.subscription.updated", self.sub_object(sub), previous=previous, subscription=sub.id,
                  blocks_job=True)  # fmt: skip
        self.now += timedelta(hours=1)
        invoice = self.invoice_object(sub, period.invoice_id, sub.price, period.start, period.end, "subscription_cycle")
        if payment_fails:
            sub.failed_invoice = period.invoice_id
            self.emit("invoice.payment_failed", invoice, subscription=sub.id, blocks_job=True)
            sub.status = "past_due"
            self.emit("customer.subscription.updated", self.sub_object(sub), previous={"status": "active"},
                      subscription=sub.id, blocks_job=True)  # fmt: skip
        else:
            period.paid = True
            sub.payment_intents[period.invoice_id] = self.new_id("pi")
            self.emit("invoice.paid", invoice, subscription=sub.id)

    def _overdue(self) -> Sub | None:
        sub = self.live()
        return sub if sub is not None and sub.status in ("past_due", "unpaid") else None

    @precondition(lambda self: self._overdue() is not None)
    @rule(outcome=st.sampled_from(["paid", "unpaid", "canceled"]))
    def dunning(self, outcome: str) -> None:
        """Stripe's retries: the card works after all, or it gives up (unpaid, or cancelled)."""
        sub = self._overdue()
        assert sub is not None
        self.catch_up()
        self.now = min(self.now + timedelta(days=2), sub.period.end - timedelta(minutes=1))  # not past its renewal
        before = sub.status
        if outcome == "paid" and sub.failed_invoice:
            period = sub.period
            period.paid = True
            sub.payment_intents[period.invoice_id] = self.new_id("pi")
            invoice = self.invoice_object(
                sub, period.invoice_id, sub.price, period.start, period.end, "subscription_cycle"
            )
            self.emit("invoice.paid", invoice, subscription=sub.id, blocks_job=True)
            sub.status, sub.failed_invoice = "active", None
        elif outcome == "unpaid" and sub.status == "past_due":
            sub.status = "unpaid"
        elif outcome == "canceled":
            sub.ended_unpaid = True
            sub.status, sub.ended_at = "canceled", self.next_second()
            self.gateway.live.discard(sub.id)
            self.emit("customer.subscription.deleted", self.sub_object(sub), subscription=sub.id, blocks_job=True)
            return
        else:
            return
        self.emit("customer.subscription.updated", self.sub_object(sub), previous={"status": before},
                  subscription=sub.id, blocks_job=True)  # fmt: skip

    def _unpaid_and_ended(self) -> Sub | None:
        """A subscription cancelled for non-payment whose cancellation has reached us (the customer pays
        the open invoice days later; Stripe's events about the subscription came long before)."""
        ended = [
            s
            for s in self.subs
            if s.ended_at is not None and s.ended_unpaid and s.failed_invoice and not self.in_flight(s)
        ]
        return ended[-1] if ended else None

    @precondition(lambda self: self._unpaid_and_ended() is not None)
    @rule()
    def pay_the_open_invoice_after_the_cancellation(self) -> None:
        """Review D1: the open invoice of a subscription cancelled for non-payment stays payable."""
        sub = self._unpaid_and_ended()
        assert sub is not None
        self.advance(timedelta(days=1))  # not past a live subscription's period end (its renewal)
        period, invoice_id = sub.period, str(sub.failed_invoice)
        sub.failed_invoice = None  # paid now, but for a subscription that has ended
        invoice = self.invoice_object(sub, invoice_id, sub.price, period.start, period.end, "subscription_cycle")
        self.emit("invoice.paid", invoice, subscription=sub.id, no_change=True)

    @rule(paid=st.booleans())
    def one_off_invoice(self, paid: bool) -> None:
        """Review D7: an invoice outside any subscription (sent from the Dashboard), declined first."""
        invoice_id = self.new_id("in")
        obj = {"id": invoice_id, "object": "invoice", "customer": self.customer, "billing_reason": "manual",
               "parent": None, "lines": {"object": "list", "data": [], "has_more": False}}  # fmt: skip
        self.emit("invoice.payment_failed", dict(obj), no_change=True)
        if paid:
            self.emit("invoice.paid", dict(obj), no_change=True)

    @rule(pack_id=st.sampled_from(sorted(PACKS)))
    def buy_pack(self, pack_id: str) -> None:
        credits, amount = PACKS[pack_id]
        pack = PackTruth(self.new_id("cs"), self.new_id("pi"), self.new_id("ch"), credits, amount)
        self.packs.append(pack)
        session = {
            "id": pack.session_id, "object": "checkout.session", "mode": "payment", "payment_status": "paid",
            "customer": self.customer, "client_reference_id": self.client_id, "payment_intent": pack.payment_intent,
            "amount_total": amount, "currency": "usd", "metadata": {"client_id": self.client_id, "pack_id": pack_id},
        }  # fmt: skip
        self.emit("checkout.session.completed", session)

    @precondition(lambda self: any(p.bought and p.refunded < p.amount for p in self.packs))
    @rule(which=st.integers(min_value=0, max_value=20), share=st.integers(min_value=1, max_value=100))
    def refund(self, which: int, share: int) -> None:
        """A partial or full refund from the Dashboard: ``amount_refunded`` is cumulative."""
        open_packs = [p for p in self.packs if p.bought and p.refunded < p.amount]
        pack = open_packs[which % len(open_packs)]
        pack.refunded = min(pack.amount, pack.refunded + max(1, pack.amount * share // 100))
        charge = {
            "id": pack.charge_id, "object": "charge", "customer": self.customer,
            "payment_intent": pack.payment_intent, "amount": pack.amount, "amount_refunded": pack.refunded,
            "refunded": pack.refunded >= pack.amount,
        }  # fmt: skip
        self.emit("charge.refunded", charge)

    @rule(amount=st.integers(min_value=1, max_value=3000))
    def spend(self, amount: int) -> None:
        from shared.ledger.model import spendable

        available = spendable(self.ledger.state(self.client_id), self.now)
        if not 0 < amount <= available:
            return
        key = self.new_id("job")
        hold = self.ledger.reserve(self.client_id, key=key, amount=amount, actor=Actor(kind="user", id="u"),
                                   purpose="job", ttl=timedelta(hours=1))  # fmt: skip
        self.ledger.capture(
            self.client_id, hold["hold_id"], amount=amount, actor=Actor(kind="task", id="t"), reason="done"
        )

    def catch_up(self) -> None:
        """Stripe retries a delivery for three days at most: before time moves on by more than that,
        what is queued is delivered (still overtaking and repeating within the window)."""
        if self.pending:
            self.flush_events(random.Random(self.counter))

    @rule(days=st.integers(min_value=1, max_value=40), hours=st.integers(min_value=0, max_value=23))
    def time_passes(self, days: int, hours: int) -> None:
        if days >= 2:
            self.catch_up()
        self.advance(timedelta(days=days, hours=hours))

    def advance(self, delta: timedelta) -> None:
        """Time moves on by ``delta``, but never past a live subscription's period end: that end comes
        through ``renewal`` (a race's too), where Stripe starts the next period and applies a pending
        downgrade. A clock past the end without it is a state Stripe never shows."""
        later = self.now + delta
        for sub in self.subs:
            if sub.ended_at is None and not sub.rejected and lifecycle.rules(sub.status).live:
                later = min(later, sub.period.end - timedelta(minutes=1))
        self.now = max(self.now, later)

    @precondition(lambda self: not any(p.blocks_job for p in self.pending))
    @rule()
    def daily_job(self) -> None:
        self.run_job()

    # -- delivery -----------------------------------------------------------------------------------------
    @precondition(lambda self: bool(self.pending))
    @rule(position=st.integers(min_value=0, max_value=WINDOW - 1), again=st.booleans())
    def deliver(self, position: int, again: bool) -> None:
        self.deliver_one(min(position, len(self.pending) - 1), again)

    @rule(seed=st.integers(min_value=0, max_value=2**16))
    def settle(self, seed: int) -> None:
        """Stripe delivers everything still queued (overtaking, some twice), the job runs, and all is checked."""
        self.flush(random.Random(seed))
        type(self).settles += 1
        self.check_settled()

    def teardown(self) -> None:
        self.flush(random.Random(0))
        self.check_settled()

    def flush(self, rng: random.Random) -> None:
        self.flush_events(rng)
        self.run_job()

    def flush_events(self, rng: random.Random) -> None:
        while self.pending:
            self.deliver_one(rng.randrange(min(WINDOW, len(self.pending))), rng.random() < 0.2)

    def run_job(self) -> None:
        allotments.run_daily(self.store, self.ledger, CATALOG, self.now)
        sub = self.live()
        if sub is not None and sub.status in ("active", "trialing") and sub.interval == "annual":
            for index in range(12):
                month = plan_month(sub.period.start, index, sub.period.end)
                if month.start > self.now:
                    break
                self.required_months.add((sub.id, int(month.start.timestamp())))

    def deliver_one(self, position: int, again: bool) -> None:
        item = self.pending.pop(position)
        evt = StripeEvent.model_validate(item.event)
        if (
            item.race
            and self.race
            and self.winner is None
            and item.subscription
            and item.event["type"] != "checkout.session.completed"
        ):
            self.winner = item.subscription
        before = self.snapshot() if item.no_change else None
        processor = WebhookProcessor(self.store, self.ledger, CATALOG, PRICES, self.now, self.gateway)
        outcome = processor.handle(evt)
        key = outcome.split(":")[0]
        type(self).outcomes[key] = type(self).outcomes.get(key, 0) + 1
        if before is not None:
            assert self.snapshot() == before, f"{evt.type} of an ended subscription changed something: {outcome}"
        obj = item.event["data"]["object"]
        for pack in self.packs:
            if item.event["type"] == "charge.refunded" and pack.payment_intent == obj.get("payment_intent"):
                pack.delivered = max(pack.delivered, int(obj["amount_refunded"]))
            if item.event["type"] == "checkout.session.completed" and pack.session_id == obj.get("id"):
                pack.bought = True
        if again:
            self.pending.append(item)  # Stripe delivers it again, later

    def snapshot(self) -> tuple[Any, ...]:
        state = self.ledger.state(self.client_id).model_dump(exclude={"updated_at"})
        billing = self.store.read(self.client_id).state.model_dump()
        return billing, state, len(self.ledger.store.entries(self.client_id))

    # -- checks ---------------------------------------------------------------------------------------
    @invariant()
    def steps(self) -> None:
        type(self).steps_run += 1

    @invariant()
    def ledger_has_no_drift(self) -> None:
        assert self.ledger.verify(self.client_id) == []

    @invariant()
    def refunds_never_take_more_than_their_share(self) -> None:
        buckets = self.pack_buckets()
        for pack in self.packs:
            bucket = buckets.get(pack.payment_intent)
            if bucket is None:
                continue
            assert bucket.revoked + bucket.revoke_outstanding <= refund_target(
                pack.credits, pack.amount, pack.delivered
            )

    @invariant()
    def no_plan_month_holds_more_than_its_allotment(self) -> None:
        for (sub_id, start), total in self.month_totals().items():
            month = self.month_of(sub_id, start)
            assert month is not None, f"credits for {sub_id} month {start} that was never paid for"
            assert total <= self.expected_total(self.sub(sub_id), month), (sub_id, month, total)

    def pack_buckets(self) -> dict[str, Any]:
        return {b.reference: b for b in self.ledger.state(self.client_id).buckets.values() if b.source.value == "pack"}

    def month_totals(self) -> dict[tuple[str, int], int]:
        """Credits granted per (subscription, plan-month start), from the grants' idempotency keys."""
        totals: dict[tuple[str, int], int] = {}
        for entry in self.ledger.store.entries(self.client_id):
            if entry.type is not EntryType.GRANT:
                continue
            key = entry.key.split("#")[0]
            parts = key.split(":")
            if key.startswith("allotment:"):
                sub_id, start = parts[1], int(parts[2])
            elif key.startswith("stripe:upgrade:"):
                sub_id, start = parts[2], int(parts[3])
            else:
                continue
            totals[(sub_id, start)] = totals.get((sub_id, start), 0) + entry.amount
        return totals

    def month_of(self, sub_id: str, start: int) -> PlanMonth | None:
        """The plan-month of ``sub_id`` starting at ``start`` if it may hold credits: a month of a period
        paid while the subscription lived, started before it ended (or was cut by a new period)."""
        sub = self.sub(sub_id)
        if sub.rejected:
            return None
        for period in sub.periods:
            if not period.paid:
                continue
            count = 1 if (period.end - period.start) < timedelta(days=40) else 12
            for index in range(count):
                month = (
                    PlanMonth(period.start, 0, period.start, period.end)
                    if count == 1
                    else plan_month(period.start, index, period.end)
                )
                if int(month.start.timestamp()) != start:
                    continue
                stop = min(t for t in (sub.ended_at, period.cut_at, self.now + timedelta(seconds=1)) if t is not None)
                return month if month.start < stop or index == 0 else None
        return None

    def expected_total(self, sub: Sub, month: PlanMonth) -> int:
        """The plan in force at the month's start, plus each upgrade in it prorated (rounded down)."""
        total = CREDITS[sub.effective_at(month.start)]
        period = next(p for p in sub.periods if p.start == month.anchor)
        until = min(month.end, period.cut_at or month.end)  # a later period's upgrades are not this month's
        for at, old, new in sub.upgrades:
            if month.start <= at < until:
                total += prorated_credits(CREDITS[new] - CREDITS[old], month, at)
        return total

    def check_settled(self) -> None:
        assert not self.pending
        billing = self.store.read(self.client_id).state
        governing = self.governing()
        assert billing.plan == self.plan_in_force(governing), (billing, governing)
        if governing is not None:
            assert billing.subscription_id == governing.id
            assert billing.subscription_status == governing.status
            assert (billing.past_due_since is not None) == (governing.status in ("past_due", "unpaid"))
        else:
            assert billing.subscription_id is None
        totals = self.month_totals()
        for (sub_id, start), total in totals.items():
            month = self.month_of(sub_id, start)
            assert month is not None, f"credits for {sub_id} month {start} that was never paid for"
            assert total == self.expected_total(self.sub(sub_id), month), (sub_id, month, total, self.sub(sub_id))
        for sub in self.subs:
            if sub.rejected:
                assert not any(s == sub.id for s, _ in totals), (
                    f"the cancelled second subscription {sub.id} kept credits"
                )
                continue
            for period in sub.periods:
                if period.paid and period.start <= self.now and (sub.ended_at is None or period.start < sub.ended_at):
                    assert (sub.id, int(period.start.timestamp())) in totals, f"{sub.id} period {period} got nothing"
        for sub_id, start in self.required_months:
            if not self.sub(sub_id).rejected:
                assert (sub_id, start) in totals, f"the daily job ran in {sub_id}'s month {start} and granted nothing"
        buckets = self.pack_buckets()
        for pack in self.packs:
            bucket = buckets[pack.payment_intent]
            target = refund_target(pack.credits, pack.amount, pack.refunded)
            assert bucket.revoke_target == target
            assert bucket.revoked == target or bucket.remaining == 0  # short only by what was spent


def machine_for(
    billing_store: Callable[[], BillingStore], ledger_store: Callable[[], LedgerStore], name: str
) -> type[BillingLifecycle]:
    """The same machine over other ports (a fresh store object per example)."""
    return type(
        name,
        (BillingLifecycle,),
        {"billing_store_factory": staticmethod(billing_store), "ledger_store_factory": staticmethod(ledger_store)},
    )


def reset_counts() -> None:
    BillingLifecycle.examples_run = BillingLifecycle.steps_run = BillingLifecycle.settles = 0
    BillingLifecycle.outcomes = {}


def report(label: str) -> str:
    line = (
        f"billing lifecycle machine ({label}): {BillingLifecycle.examples_run} examples, "
        f"{BillingLifecycle.steps_run} steps, {BillingLifecycle.settles} settles"
    )
    # Outcomes differ only by amounts ("prorated 799 credits"): counted by kind, amounts as N.
    kinds: dict[str, int] = {}
    for outcome, count in BillingLifecycle.outcomes.items():
        kind = re.sub(r"\d+", "N", outcome)
        kinds[kind] = kinds.get(kind, 0) + count
    print(f"\n{line}\noutcomes: {dict(sorted(kinds.items()))}")
    return line


# A soak may run as long as it needs; the normal run stays inside the suite's per-test timeout.
soak_timeout = pytest.mark.timeout(0 if os.environ.get("EPOX_PROPERTY_EXAMPLES") else 600)


def test_paying_a_cancelled_subscriptions_open_invoice_does_not_pass_the_live_period_end() -> None:
    """Found by the soak (issue #19): two Checkouts, the winner's renewal fails, it is cancelled, a new
    monthly plan is bought, 27 days pass, the old open invoice is paid (a day later), then a downgrade
    pending for the period end. The model used to move the clock past the new subscription's period end
    without its renewal, so the daily job rightly applied the due downgrade while the model still
    expected the old plan; the payment's day now stops before that end, as ``time_passes`` does."""
    machine = BillingLifecycle()
    machine.begin(start=STARTS[0])
    machine.two_checkouts_at_once(first="starter", interval="annual", second="starter")
    machine.time_passes(days=2, hours=0)
    machine.renewal(payment_fails=True)
    machine.cancel_now()
    machine.time_passes(days=2, hours=0)
    machine.subscribe(first_payment_fails=False, interval="monthly", plan="growth")
    machine.time_passes(days=27, hours=0)
    live = machine.live()
    assert live is not None and live.price == "growth"
    machine.pay_the_open_invoice_after_the_cancellation()
    assert machine.now < live.period.end
    machine.change_price(invoice_now=False, plan="starter")
    machine.teardown()  # the plan in force is still growth: the downgrade waits for the renewal
    assert machine.store.read(machine.client_id).state.plan == "growth"


def test_an_upgrade_after_the_renewal_of_a_cancelled_subscription_prorates_from_the_renewed_plan() -> None:
    """Found by the stateful run (a plan-month granted 3,296 where 2,497 was due): starter, its
    renewal fails, the dunning retry pays, starter → growth (recorded with ``plan_before`` starter),
    the renewal at growth, growth → pro an hour later, cancelled at once. The cancellation arrives
    first (the renewal not known to be paid: Free), then the renewal's invoice (the paid period ends
    at pro, the plan it was upgraded to), then the upgrade itself, late: it prorated from the
    previous period's ``plan_before`` (starter, 2,300 times the share) instead of growth, the plan the
    renewed month was granted at (1,500 times the share)."""
    machine = BillingLifecycle()
    machine.begin(start=STARTS[0])
    machine.subscribe(first_payment_fails=False, interval="monthly", plan="starter")
    machine.buy_pack(pack_id="pack_100")
    machine.buy_pack(pack_id="pack_100")
    machine.renewal(payment_fails=True)
    machine.time_passes(days=1, hours=0)
    machine.dunning(outcome="paid")
    machine.time_passes(days=1, hours=6)
    machine.buy_pack(pack_id="pack_100")
    machine.change_price(invoice_now=False, plan="growth")
    machine.time_passes(days=1, hours=0)
    machine.buy_pack(pack_id="pack_100")
    machine.buy_pack(pack_id="pack_100")
    machine.renewal(payment_fails=False)
    machine.change_price(invoice_now=False, plan="pro")
    machine.cancel_now()
    queued = [(p.event["type"], p.event["data"].get("previous_attributes")) for p in machine.pending]
    assert [t for t, _ in queued] == [
        "customer.subscription.updated",  # the renewal's new period
        "invoice.paid",  # the renewal, at growth
        "customer.subscription.updated",  # growth → pro
        "customer.subscription.deleted",
    ], queued
    machine.deliver(position=3, again=False)  # the cancellation first
    machine.deliver(position=1, again=False)  # then the renewal's invoice
    machine.deliver(position=1, again=False)  # then the upgrade, late
    machine.teardown()
    sub = machine.subs[-1]
    renewed = sub.periods[-1]
    month = PlanMonth(renewed.start, 0, renewed.start, renewed.end)
    upgrade_at = sub.upgrades[-1][0]
    expected = CREDITS["growth"] + prorated_credits(CREDITS["pro"] - CREDITS["growth"], month, upgrade_at)
    assert machine.month_totals()[(sub.id, int(renewed.start.timestamp()))] == expected == 2497


def test_a_late_upgrade_of_a_cancelled_annual_plan_grants_nothing_for_the_months_after_the_end() -> None:
    """Found by the stateful run (credits for a plan-month that was never paid for): annual Starter
    from Dec 29, upgraded to Growth on Jan 28 a second before it is cancelled; both events arrive after
    month 1 began (Jan 29). The deletion applies Growth for the paid period; the upgrade, late, counted
    every month started by then, so month 1 (after the end) got Starter's allotment and the whole
    difference."""
    machine = BillingLifecycle()
    machine.begin(start=STARTS[1])
    machine.subscribe(first_payment_fails=False, interval="annual", plan="starter")
    machine.cancel_at_period_end()
    machine.buy_pack(pack_id="pack_100")
    machine.time_passes(days=1, hours=0)
    machine.time_passes(days=29, hours=0)
    machine.change_price(invoice_now=False, plan="growth")
    machine.cancel_now()
    machine.buy_pack(pack_id="pack_100")
    machine.time_passes(days=1, hours=0)
    sub = machine.subs[-1]
    month1 = plan_month(sub.period.start, 1, sub.period.end)
    assert sub.ended_at is not None and sub.ended_at < month1.start <= machine.now
    assert [p.event["type"] for p in machine.pending] == [
        "customer.subscription.updated",  # starter → growth
        "customer.subscription.deleted",
        "checkout.session.completed",  # the pack
    ]
    machine.deliver(position=1, again=False)  # the cancellation first
    machine.deliver(position=0, again=False)  # then the upgrade, late
    machine.teardown()
    totals = machine.month_totals()
    assert (sub.id, int(month1.start.timestamp())) not in totals
    month0 = plan_month(sub.period.start, 0, sub.period.end)
    upgraded = CREDITS["starter"] + prorated_credits(CREDITS["growth"] - CREDITS["starter"], month0, sub.upgrades[0][0])
    assert totals[(sub.id, int(month0.start.timestamp()))] == upgraded


def test_a_new_subscriptions_overtaken_downgrade_is_not_judged_by_the_previous_ones_plan_before() -> None:
    """Found by the soak (the plan Starter where the model has Growth): the client's earlier Starter
    subscriptions leave ``plan_before`` starter behind; a new Growth one is downgraded to Starter
    (pending) and set to cancel at the period end. That last update (at Starter) arrives first and
    takes over at Starter; the downgrade, late, must bring Growth back for the paid period with Starter
    pending — but the earlier subscription's ``plan_before`` made it look like a plan changed knowingly
    since, so the client stayed on Starter."""
    machine = BillingLifecycle()
    machine.begin(start=STARTS[0])
    machine.subscribe(first_payment_fails=False, interval="monthly", plan="starter")
    machine.cancel_now()
    machine.settle(seed=0)
    machine.subscribe(first_payment_fails=True, interval="monthly", plan="starter")
    machine.finish_first_payment(paid=True)
    machine.renewal(payment_fails=True)
    machine.cancel_now()
    machine.deliver(position=0, again=False)
    machine.settle(seed=0)
    assert machine.store.read(machine.client_id).state.plan_before == "starter"  # left by the earlier ones
    machine.subscribe(first_payment_fails=False, interval="monthly", plan="growth")
    machine.change_price(invoice_now=False, plan="starter")
    machine.cancel_at_period_end()
    assert [p.event["type"] for p in machine.pending] == [
        "checkout.session.completed",
        "customer.subscription.created",
        "invoice.paid",
        "customer.subscription.updated",  # growth → starter
        "customer.subscription.updated",  # cancel at the period end (at starter)
    ]
    machine.deliver(position=4, again=False)  # the cancel-at-period-end update first: it takes over
    machine.deliver(position=2, again=False)  # the first invoice
    machine.deliver(position=2, again=False)  # the downgrade, late
    machine.teardown()
    state = machine.store.read(machine.client_id).state
    assert (state.plan, state.pending_plan) == ("growth", "starter")


def test_a_late_upgrade_does_not_prorate_from_the_previous_subscriptions_plan_before() -> None:
    """Found by the soak (a plan-month granted 3,135 credits where 2,392 were due): Starter upgraded to
    Pro and cancelled (Pro until the period end, ``plan_before`` starter); a new Growth subscription's
    first payment completes, it is upgraded to Pro and cancelled at once. Its deletion arrives first,
    then its activation, then the upgrade: the plan in force was Pro — the earlier subscription's — and
    the upgrade took that for itself applied, prorating Starter → Pro instead of Growth → Pro."""
    machine = BillingLifecycle()
    machine.begin(start=STARTS[0])
    machine.subscribe(first_payment_fails=False, interval="monthly", plan="starter")
    machine.settle(seed=0)
    machine.change_price(invoice_now=False, plan="pro")
    machine.cancel_now()
    machine.settle(seed=0)
    before = machine.store.read(machine.client_id).state
    assert (before.plan, before.plan_before) == ("pro", "starter")
    machine.subscribe(first_payment_fails=True, interval="monthly", plan="growth")
    machine.settle(seed=0)
    machine.finish_first_payment(paid=True)
    machine.change_price(invoice_now=False, plan="pro")
    machine.cancel_now()
    assert [p.event["type"] for p in machine.pending] == [
        "invoice.paid",
        "customer.subscription.updated",  # active
        "customer.subscription.updated",  # growth → pro
        "customer.subscription.deleted",
    ]
    machine.deliver(position=3, again=False)  # the deletion first
    machine.deliver(position=1, again=False)  # the activation
    machine.deliver(position=1, again=False)  # the upgrade
    machine.teardown()
    sub = machine.subs[-1]
    month = PlanMonth(sub.period.start, 0, sub.period.start, sub.period.end)
    expected = CREDITS["growth"] + prorated_credits(CREDITS["pro"] - CREDITS["growth"], month, sub.upgrades[0][0])
    assert machine.month_totals()[(sub.id, int(sub.period.start.timestamp()))] == expected


@soak_timeout
def test_the_billing_lifecycle_keeps_its_promises_in_memory() -> None:
    reset_counts()
    run_state_machine_as_test(BillingLifecycle, settings=budget(1000, 30))
    report("in memory")
    examples = int(os.environ.get("EPOX_PROPERTY_EXAMPLES") or 1000)
    assert BillingLifecycle.examples_run >= examples
    # The interesting paths were taken, not only the easy ones.
    seen = BillingLifecycle.outcomes
    for prefix in ("invoice paid", "refund", "a second subscription", "period reset", "payment failed", "stale"):
        assert any(key.startswith(prefix) for key in seen), (prefix, seen)
