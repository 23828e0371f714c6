"""The subscription lifecycle against Stripe's real event sequences (issue #19, review
``billing-lifecycle.md`` D1-D8), the checkout guard and the checkout race, past due from the governing
subscription only, exact pack refunds and the anchored plan-month calendar (issue #18).

Every scenario goes through the real ``stripe_webhook`` function on the Firestore emulator with events
signed as Stripe signs them; the daily billing job runs through its Cloud Scheduler entry point
(``billing_jobs`` ``/jobs/daily``); the payment gateway is the real ``stripe`` client against the local
Stripe stub (``dev/stubs/stripe.py``), so a cancellation or a refund the webhook asks for is a real
API request in Stripe's wire format. The platform runs on a settable clock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dev.stubs.stripe import StripeStub, running
from shared.adapters.firestore.ledger import FirestoreLedgerStore
from shared.billing.calendar import PlanMonth, add_months
from shared.billing.money import prorated_credits
from shared.ledger.model import Actor, EntryType
from shared.ledger.service import Ledger
from shared.platform import get_platform
from tests.billing_events import (
    Clock,
    Subscriber,
    balance,
    billing_of,
    changed_price,
    daily,
    deliver,
    install_gateway,
    new_id,
    onboard_and_link,
    period,
    send,
    ts,
)

GROWTH, PRO, STARTER = 1000, 2500, 200


@pytest.fixture
def stub(stack: Any) -> Iterator[StripeStub]:
    with running(StripeStub(prices=set(stack.platform.settings.stripe_price_ids.values()))) as served:
        yield served


@pytest.fixture
def clock(stack: Any, stub: StripeStub) -> Clock:
    c = Clock(datetime.now(UTC).replace(microsecond=0))
    install_gateway(stack, stub, clock=c)
    return c


@pytest.fixture
def hook(stack: Any) -> Any:
    return stack.client("stripe_webhook")


@pytest.fixture
def sub(stack: Any, clock: Clock, client_id: str, stub: StripeStub) -> Subscriber:
    s = Subscriber(client_id, clock=clock)
    onboard_and_link(stack, s)
    stub.customers[s.customer] = {"id": s.customer, "object": "customer"}  # Checkout needs Stripe to know it
    return s


def subscribe(hook: Any, sub: Subscriber, price: str, start: int, end: int, **invoice: Any) -> str:
    """Checkout completed, subscription created, first invoice paid; returns the invoice id."""
    send(hook, sub.checkout_subscription())
    send(hook, sub.created_event(price, start, end))
    paid = sub.invoice_paid(price, start, end, **invoice)
    assert send(hook, paid).startswith("invoice paid: granted")
    return str(paid["data"]["object"]["id"])


def entries(client_id: str) -> list[Any]:
    return list(get_platform().ledger.store.entries(client_id))


def snapshot(stack: Any, client_id: str) -> dict[str, Any]:
    """Everything an event may change for a client: billing, ledger state and entries."""
    state = get_platform().ledger.state(client_id).model_dump(mode="json", exclude={"updated_at"})
    return {"billing": billing_of(stack, client_id), "ledger": state, "entries": len(entries(client_id))}


def checkout(stack: Any, client_id: str, plan_id: str = "pro", **extra: str) -> Any:
    return stack.client("billing_api").post(
        "/checkout", json={"kind": "plan", "plan_id": plan_id}, headers=stack.headers(client_id, **extra)
    )


def notifications(stack: Any, client_id: str) -> list[dict[str, Any]]:
    docs = stack.platform.db.collection("clients").document(client_id).collection("notifications").stream()
    return [doc.to_dict() for doc in docs]


def no_drift(client_id: str) -> None:
    assert get_platform().ledger.verify(client_id) == []


# -- D1: a paid invoice of an ended subscription ------------------------------------------------------


def test_d1_paying_the_open_invoice_of_a_subscription_cancelled_for_non_payment_changes_nothing(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    start, end = period(clock.now - timedelta(days=1))
    subscribe(hook, sub, "price_growth_m", start, end)
    renewal_start, renewal_end = end, ts(add_months(datetime.fromtimestamp(end, UTC), 1))
    clock.set(datetime.fromtimestamp(renewal_start, UTC) + timedelta(hours=1))
    renewal = new_id("in")
    assert send(hook, sub.payment_failed("price_growth_m", renewal_start, renewal_end, invoice_id=renewal)) == (
        "payment failed: past due"
    )
    clock.advance(days=20)  # dunning gives up and Stripe cancels the subscription
    assert send(hook, sub.deleted_event("price_growth_m", renewal_start, renewal_end)) == "moved to Free (unpaid)"
    before = snapshot(stack, sub.client_id)

    clock.advance(days=2)  # the client pays the still open invoice from its hosted page
    paid = sub.invoice_paid(
        "price_growth_m", renewal_start, renewal_end, invoice_id=renewal, billing_reason="subscription_cycle"
    )
    outcome = send(hook, paid)

    assert snapshot(stack, sub.client_id) == before, outcome
    billing = billing_of(stack, sub.client_id)
    assert (billing["plan"], billing["subscription_status"], billing["past_due_since"]) == ("free", "canceled", None)
    assert checkout(stack, sub.client_id).status_code == 201  # free to subscribe again
    no_drift(sub.client_id)


def test_d1_an_invoice_paid_before_the_cancellation_but_delivered_after_it_still_grants_and_changes_nothing_else(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    """Cancelled seconds after it was created: the first invoice was paid while the subscription lived."""
    start, end = period(clock.now - timedelta(minutes=10))
    paid_at = sub.tick()
    send(hook, sub.checkout_subscription())
    send(hook, sub.created_event("price_growth_m", start, end))
    send(hook, sub.deleted_event("price_growth_m", start, end, at=paid_at + 5))
    billing_before = billing_of(stack, sub.client_id)
    outcome = send(hook, sub.invoice_paid("price_growth_m", start, end, at=paid_at))
    assert outcome == "invoice paid: granted 1000 credits"
    assert billing_of(stack, sub.client_id) == billing_before
    assert billing_before["subscription_status"] == "canceled"
    assert balance(sub.client_id) == GROWTH


# -- D2: an annual upgrade before the daily job granted the month -------------------------------------


def test_d2_an_annual_upgrade_before_the_daily_job_keeps_one_allotment_for_the_month(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    anchor = datetime(2026, 1, 10, 14, tzinfo=UTC)
    clock.set(anchor + timedelta(minutes=5))
    start, end = period(anchor, 12)
    subscribe(hook, sub, "price_growth_y", start, end)
    for month in (1, 2):
        clock.set(add_months(anchor, month).replace(hour=3) + timedelta(days=1))
        daily(stack)
    clock.set(datetime(2026, 4, 10, 3, tzinfo=UTC))  # month 3 starts at 14:00: not due yet
    daily(stack)
    assert balance(sub.client_id) == GROWTH

    clock.set(datetime(2026, 4, 10, 15, 1, tzinfo=UTC))
    upgrade = sub.updated_event(
        "price_pro_y", start, end, previous=changed_price("price_growth_y"), at=ts(datetime(2026, 4, 10, 15))
    )
    # 29 days 23 hours of the 30-day month from Apr 10 14:00 to May 10 14:00 are left.
    assert (PRO - GROWTH) * 719 // 720 == 1497
    assert send(hook, upgrade) == "upgraded growth → pro, prorated 1497 credits"
    clock.set(datetime(2026, 4, 11, 3, tzinfo=UTC))
    daily(stack)
    daily(stack)

    assert balance(sub.client_id) == GROWTH + 1497  # not 3997: the month's allotment came once, at Growth
    clock.set(datetime(2026, 5, 11, 3, tzinfo=UTC))
    daily(stack)
    assert balance(sub.client_id) == PRO  # the next month at Pro, once
    no_drift(sub.client_id)


# -- D3: monthly <-> annual switches reset the period -------------------------------------------------


def test_d3_monthly_to_annual_grants_the_new_periods_allotment_once_and_no_proration(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    clock.set(datetime(2026, 6, 1, 9, tzinfo=UTC))
    start, end = period(datetime(2026, 6, 1, 8, tzinfo=UTC))
    subscribe(hook, sub, "price_starter_m", start, end)
    switched = datetime(2026, 6, 16, 12, tzinfo=UTC)
    clock.set(switched + timedelta(minutes=1))
    new_start, new_end = period(switched, 12)
    update = sub.updated_event("price_growth_y", new_start, new_end, previous=changed_price("price_starter_m"))
    outcome = send(hook, update)
    assert "prorated" not in outcome, outcome
    reset_invoice = sub.invoice_paid(
        "price_growth_y", new_start, new_end, billing_reason="subscription_update", invoice_id=new_id("in")
    )
    send(hook, reset_invoice)
    daily(stack)
    daily(stack)

    billing = billing_of(stack, sub.client_id)
    assert (billing["plan"], billing["interval"]) == ("growth", "annual")
    assert billing["current_period_start"] == switched
    assert balance(sub.client_id) == STARTER + GROWTH  # Starter's month keeps its expiry; Growth's month 0 once
    clock.set(add_months(switched, 1) + timedelta(hours=1))
    daily(stack)
    assert balance(sub.client_id) == GROWTH  # annual month 1 from the daily job
    no_drift(sub.client_id)


def test_d3_annual_to_monthly_grants_the_new_monthly_period(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    anchor = datetime(2026, 1, 9, tzinfo=UTC)
    clock.set(anchor + timedelta(hours=1))
    start, end = period(anchor, 12)
    subscribe(hook, sub, "price_growth_y", start, end)
    clock.set(datetime(2026, 4, 8, 3, tzinfo=UTC))
    daily(stack)  # months 1 and 2; month 3 starts tomorrow
    switched = datetime(2026, 4, 9, 10, tzinfo=UTC)
    clock.set(switched + timedelta(minutes=1))
    new_start, new_end = period(switched)
    send(hook, sub.updated_event("price_growth_m", new_start, new_end, previous=changed_price("price_growth_y")))
    send(hook, sub.invoice_paid("price_growth_m", new_start, new_end, billing_reason="subscription_update"))
    clock.set(datetime(2026, 5, 4, tzinfo=UTC))
    daily(stack)

    assert balance(sub.client_id) == GROWTH  # the monthly period Apr 9 - May 9 the client paid for
    billing = billing_of(stack, sub.client_id)
    assert (billing["plan"], billing["interval"], billing["pending_plan"]) == ("growth", "monthly", None)


def test_d3_annual_to_a_lower_monthly_plan_applies_at_once(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    anchor = datetime(2026, 1, 9, tzinfo=UTC)
    clock.set(anchor + timedelta(hours=1))
    start, end = period(anchor, 12)
    subscribe(hook, sub, "price_pro_y", start, end)
    switched = datetime(2026, 4, 9, 10, tzinfo=UTC)
    clock.set(switched + timedelta(minutes=1))
    new_start, new_end = period(switched)
    send(hook, sub.updated_event("price_growth_m", new_start, new_end, previous=changed_price("price_pro_y")))
    send(hook, sub.invoice_paid("price_growth_m", new_start, new_end, billing_reason="subscription_update"))
    billing = billing_of(stack, sub.client_id)
    assert (billing["plan"], billing["product_slots"], billing["pending_plan"]) == ("growth", 500, None)
    assert [b.granted for b in get_platform().ledger.state(sub.client_id).buckets.values()].count(GROWTH) == 1


# -- D4: an annual renewal with a pending downgrade ---------------------------------------------------


def test_d4_an_annual_renewal_applies_the_pending_downgrade_even_when_the_daily_job_runs_first(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    anchor = datetime(2026, 1, 10, 14, tzinfo=UTC)
    clock.set(anchor + timedelta(minutes=5))
    start, end = period(anchor, 12)
    subscribe(hook, sub, "price_pro_y", start, end)
    clock.set(datetime(2026, 6, 20, tzinfo=UTC))
    assert send(hook, sub.updated_event("price_growth_y", start, end, previous=changed_price("price_pro_y"))) == (
        "downgrade to growth at period end"
    )

    renewal = datetime.fromtimestamp(end, UTC)
    clock.set(renewal + timedelta(minutes=2))
    next_start, next_end = period(renewal, 12)
    roll = {"current_period_start": start, "current_period_end": end}
    send(hook, sub.updated_event("price_growth_y", next_start, next_end, previous=roll))
    clock.set(renewal + timedelta(minutes=30))
    daily(stack)  # inside the hour before the renewal invoice is paid
    clock.set(renewal + timedelta(hours=1, minutes=5))
    paid = sub.invoice_paid("price_growth_y", next_start, next_end, billing_reason="subscription_cycle")
    response = deliver(hook, paid)

    assert response.status_code == 200, response.json
    billing = billing_of(stack, sub.client_id)
    assert (billing["plan"], billing["product_slots"], billing["pending_plan"]) == ("growth", 500, None)
    assert balance(sub.client_id) == GROWTH  # the new year's month 0 at Growth, once
    clock.set(add_months(renewal, 1) + timedelta(hours=1))
    daily(stack)
    assert balance(sub.client_id) == GROWTH
    no_drift(sub.client_id)


# -- D5: refunds are cumulative and serialised per charge ---------------------------------------------


class InterleavingLedger(Ledger):
    """Runs ``meanwhile`` (once) just before the first refund's ledger commit: the second refund of the
    same charge, delivered by another instance, is processed while the first one is in flight."""

    meanwhile: Any = None

    def _run(self, client_id: str, key: str, *args: Any, **kwargs: Any) -> Any:
        if key.startswith("stripe:refund:") and self.meanwhile is not None:
            run, self.meanwhile = self.meanwhile, None
            run()
        return super()._run(client_id, key, *args, **kwargs)


def test_d5_two_partial_refunds_processed_concurrently_remove_what_was_refunded(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock, stub: StripeStub
) -> None:
    ledger = InterleavingLedger(FirestoreLedgerStore(stack.platform.db), clock=clock)
    install_gateway(stack, stub, clock=clock, ledger=ledger)
    pi, charge = new_id("pi"), new_id("ch")
    send(hook, sub.checkout_pack("pack_500", payment_intent=pi, amount_total=6000))
    first = sub.charge_refunded(pi, 6000, 1500, charge_id=charge)
    second = sub.charge_refunded(pi, 6000, 3000, charge_id=charge)
    seen: list[str] = []
    ledger.meanwhile = lambda: seen.append(send(hook, second))

    send(hook, first)

    assert seen, "the second refund ran inside the first"
    assert balance(sub.client_id) == 250  # half the pack: 3000 of 6000 refunded
    for evt in (first, second):  # redelivered, in either order: nothing more
        assert send(hook, evt) == "duplicate"
    assert balance(sub.client_id) == 250
    no_drift(sub.client_id)


@pytest.mark.parametrize("order", ["in_order", "reversed"])
def test_refunds_remove_floor_of_the_refunded_share_cumulatively(
    stack: Any, hook: Any, sub: Subscriber, order: str
) -> None:
    """A 100-credit pack bought for 1500: refunds of 435 (29 %) then 870 in total remove 29, then 58."""
    pi, charge = new_id("pi"), new_id("ch")
    send(hook, sub.checkout_pack("pack_100", payment_intent=pi, amount_total=1500))
    refunds = [sub.charge_refunded(pi, 1500, total, charge_id=charge) for total in (435, 870)]
    if order == "reversed":
        refunds.reverse()
    outcomes = [send(hook, evt) for evt in refunds]
    assert balance(sub.client_id) == 100 - 58
    if order == "in_order":
        assert outcomes == ["refund: removed 29 unspent credits", "refund: removed 29 unspent credits"]
    else:
        assert outcomes == ["refund: removed 58 unspent credits", "refund already applied"]
    # Stripe's charge.refunded again for the same state of the charge (another event id): nothing more.
    assert send(hook, sub.charge_refunded(pi, 1500, 870, charge_id=charge)) == "refund already applied"
    assert balance(sub.client_id) == 42
    no_drift(sub.client_id)


def test_a_refund_of_a_spent_pack_removes_what_is_left_and_says_the_rest_was_spent(
    stack: Any, hook: Any, sub: Subscriber
) -> None:
    pi = new_id("pi")
    send(hook, sub.checkout_pack("pack_100", payment_intent=pi, amount_total=1500))
    ledger = get_platform().ledger
    hold = ledger.reserve(
        sub.client_id, key=new_id("k"), amount=90, actor=Actor(kind="user", id="u"), purpose="job",
        ttl=timedelta(minutes=5),
    )  # fmt: skip
    ledger.capture(sub.client_id, hold["hold_id"], amount=90, actor=Actor(kind="task", id="t"), reason="done")
    assert send(hook, sub.charge_refunded(pi, 1500, 1500)) == "refund: removed 10 unspent credits"
    [entry] = [e for e in entries(sub.client_id) if e.type is EntryType.ADJUST]
    assert entry.amount == 10 and "90 already spent" in entry.reason
    assert balance(sub.client_id) == 0
    no_drift(sub.client_id)


# -- D6: an unpaid subscription is still the client's ------------------------------------------------


def test_d6_an_unpaid_subscription_blocks_a_new_plan_checkout(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    start, end = period(clock.now - timedelta(days=1))
    subscribe(hook, sub, "price_growth_m", start, end)
    send(hook, sub.updated_event("price_growth_m", start, end, status="past_due"))
    send(hook, sub.updated_event("price_growth_m", start, end, status="unpaid"))
    response = checkout(stack, sub.client_id)
    assert response.status_code == 422, response.json
    assert response.json["code"] == "validation_failed"


def test_d6_a_second_subscription_does_not_take_over_from_a_live_one(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock, stub: StripeStub
) -> None:
    start, end = period(clock.now - timedelta(days=1))
    subscribe(hook, sub, "price_growth_m", start, end)
    send(hook, sub.updated_event("price_growth_m", start, end, status="past_due"))
    send(hook, sub.updated_event("price_growth_m", start, end, status="unpaid"))
    stub.add_subscription(sub.subscription, sub.customer, status="unpaid")  # still there in Stripe
    other = sub.another_subscription()
    stub.add_subscription(other.subscription, sub.customer)
    pi_b, invoice_b = new_id("pi"), new_id("in")
    stub.add_paid_invoice(sub.customer, invoice_b, pi_b, 14900)
    b_start, b_end = period(clock.now - timedelta(minutes=30))
    send(hook, other.created_event("price_pro_m", b_start, b_end))
    send(hook, other.invoice_paid("price_pro_m", b_start, b_end, invoice_id=invoice_b))
    # A rolls into its next period, still unpaid.
    next_start, next_end = period(datetime.fromtimestamp(end, UTC))
    send(hook, sub.updated_event("price_growth_m", next_start, next_end, status="unpaid"))

    billing = billing_of(stack, sub.client_id)
    assert (billing["subscription_id"], billing["subscription_status"], billing["plan"]) == (
        sub.subscription,
        "unpaid",
        "growth",
    )
    assert stub.subscriptions[other.subscription]["status"] == "canceled"
    assert [r["payment_intent"] for r in stub.refunds] == [pi_b]
    assert balance(sub.client_id) == GROWTH  # B's paid month granted nothing: it was refunded


# -- D7: a one-off invoice is not the subscription's -------------------------------------------------


def test_d7_a_failed_one_off_invoice_does_not_make_a_healthy_subscription_past_due(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    anchor = clock.now - timedelta(days=2)
    start, end = period(anchor, 12)
    subscribe(hook, sub, "price_growth_y", start, end)
    one_off = new_id("in")
    send(hook, sub.one_off_invoice("invoice.payment_failed", invoice_id=one_off))
    billing = billing_of(stack, sub.client_id)
    assert (billing["subscription_status"], billing["past_due_since"]) == ("active", None)
    clock.advance(days=1)
    send(hook, sub.one_off_invoice("invoice.paid", invoice_id=one_off))
    clock.set(add_months(anchor, 1) + timedelta(hours=1))
    daily(stack)
    assert balance(sub.client_id) == GROWTH  # month 1 came: the subscription stayed in good standing
    view = stack.client("billing_api").get("/subscription", headers=stack.headers(sub.client_id)).json
    assert (view["status"], view["paid_operations_blocked"]) == ("active", False)


# -- D8: re-subscribing after an immediate cancel -----------------------------------------------------


def test_d8_a_new_subscription_after_an_immediate_cancel_is_the_clients_plan(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    clock.set(datetime(2026, 1, 2, 12, tzinfo=UTC))
    start, end = period(datetime(2026, 1, 1, 12, tzinfo=UTC))
    subscribe(hook, sub, "price_growth_m", start, end)
    clock.set(datetime(2026, 1, 10, tzinfo=UTC))
    assert send(hook, sub.deleted_event("price_growth_m", start, end)) == "moves to Free at period end"

    clock.set(datetime(2026, 1, 12, 10, tzinfo=UTC))
    b = sub.another_subscription()
    b_start, b_end = period(datetime(2026, 1, 12, 9, 59, tzinfo=UTC))
    send(hook, b.checkout_subscription("pro"))  # processed before B's own events
    send(hook, b.created_event("price_pro_m", b_start, b_end))
    send(hook, b.updated_event("price_pro_m", b_start, b_end, cancel_at_period_end=True))
    send(hook, b.invoice_paid("price_pro_m", b_start, b_end))
    billing = billing_of(stack, sub.client_id)
    assert (billing["plan"], billing["subscription_id"], billing["subscription_status"]) == (
        "pro",
        b.subscription,
        "active",
    )
    assert (billing["pending_plan"], billing["cancel_at_period_end"]) == (None, True)

    clock.set(datetime(2026, 2, 1, 13, tzinfo=UTC))  # A's old period end
    daily(stack)
    billing = billing_of(stack, sub.client_id)
    assert (billing["plan"], billing["product_slots"]) == ("pro", 1000)


# -- the checkout guard and the checkout race ---------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "allowed"),
    [
        ("incomplete", False),
        ("trialing", False),
        ("active", False),
        ("past_due", False),
        ("unpaid", False),
        ("paused", False),
        ("incomplete_expired", True),
        ("canceled", True),
    ],
)
def test_a_plan_checkout_is_refused_while_the_client_has_a_live_subscription(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock, status: str, allowed: bool
) -> None:
    start, end = period(clock.now - timedelta(days=1))
    send(hook, sub.checkout_subscription())
    event = sub.deleted_event if status == "canceled" else sub.created_event
    kwargs = {} if status == "canceled" else {"status": status}
    send(hook, event("price_growth_m", start, end, **kwargs))
    response = checkout(stack, sub.client_id)
    assert response.status_code == (201 if allowed else 422), response.json
    # Packs never need the guard.
    pack = stack.client("billing_api").post(
        "/checkout", json={"kind": "pack", "pack_id": "pack_100"}, headers=stack.headers(sub.client_id)
    )
    assert pack.status_code == 201


@pytest.mark.parametrize("order", ["one_after_the_other", "interleaved"])
def test_two_checkouts_at_once_end_with_one_subscription_and_the_later_one_refunded(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock, stub: StripeStub, order: str
) -> None:
    results: list[Any] = [None, None]

    def start(index: int) -> None:
        results[index] = checkout(stack, sub.client_id, "growth", **{"Idempotency-Key": new_id("key")})

    threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [r.status_code for r in results] == [201, 201]  # both tabs got a Checkout page

    a, b = sub, sub.another_subscription()
    invoices = {}
    for payer in (a, b):
        stub.add_subscription(payer.subscription, sub.customer)
        pi, invoice = new_id("pi"), new_id("in")
        stub.add_paid_invoice(sub.customer, invoice, pi, 7900)
        invoices[payer.subscription] = (invoice, pi)
    p_start, p_end = period(clock.now - timedelta(minutes=5))

    def events(payer: Subscriber) -> list[dict[str, Any]]:
        invoice_id = invoices[payer.subscription][0]
        return [
            payer.checkout_subscription(),
            payer.created_event("price_growth_m", p_start, p_end),
            payer.invoice_paid("price_growth_m", p_start, p_end, invoice_id=invoice_id),
        ]

    first, second = events(a), events(b)
    sequence = (
        first + second
        if order == "one_after_the_other"
        else [first[0], second[0], first[1], second[1], first[2], second[2]]
    )
    for evt in sequence:
        send(hook, evt)

    billing = billing_of(stack, sub.client_id)
    assert (billing["subscription_id"], billing["subscription_status"], billing["plan"]) == (
        a.subscription,
        "active",
        "growth",
    )
    assert stub.subscriptions[b.subscription]["status"] == "canceled"
    assert stub.subscriptions[a.subscription]["status"] == "active"
    assert [r["payment_intent"] for r in stub.refunds] == [invoices[b.subscription][1]]
    assert balance(sub.client_id) == GROWTH  # one month of Growth, from the subscription that stays
    told = [n for n in notifications(stack, sub.client_id) if n["kind"] == "duplicate_subscription_cancelled"]
    assert len(told) == 1 and told[0]["subscription_id"] == b.subscription

    # Stripe then reports what we asked for: the cancellation and the refund. Nothing changes.
    before = snapshot(stack, sub.client_id)
    send(hook, b.deleted_event("price_growth_m", p_start, p_end))
    refund = b.charge_refunded(invoices[b.subscription][1], 7900, 7900)
    assert send(hook, refund) == "refund of a payment that bought no pack: ignored"
    assert snapshot(stack, sub.client_id) == before
    assert len(stub.refunds) == 1 and len(stub.seen("DELETE", f"/v1/subscriptions/{b.subscription}")) == 1
    no_drift(sub.client_id)


# -- past due comes from the governing subscription's invoices ---------------------------------------


def test_past_due_lasts_until_every_failed_invoice_of_the_subscription_is_paid(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    start, end = period(clock.now - timedelta(days=3))
    subscribe(hook, sub, "price_growth_m", start, end)
    upgrades = [new_id("in"), new_id("in")]  # proration invoices charged at once, both declined
    for invoice_id in upgrades:
        failed = sub.payment_failed(
            "price_growth_m", start, end, invoice_id=invoice_id, billing_reason="subscription_update"
        )
        assert send(hook, failed) == "payment failed: past due"
    send(
        hook,
        sub.invoice_paid("price_growth_m", start, end, invoice_id=upgrades[0], billing_reason="subscription_update"),
    )
    assert billing_of(stack, sub.client_id)["past_due_since"] is not None
    send(
        hook,
        sub.invoice_paid("price_growth_m", start, end, invoice_id=upgrades[1], billing_reason="subscription_update"),
    )
    billing = billing_of(stack, sub.client_id)
    assert (billing["subscription_status"], billing["past_due_since"]) == ("active", None)


def test_a_failed_invoice_of_another_subscription_does_not_make_the_client_past_due(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock, stub: StripeStub
) -> None:
    start, end = period(clock.now - timedelta(days=3))
    subscribe(hook, sub, "price_growth_m", start, end)
    other = sub.another_subscription()
    outcome = send(hook, other.payment_failed("price_pro_m", start, end))
    billing = billing_of(stack, sub.client_id)
    assert (billing["subscription_status"], billing["past_due_since"]) == ("active", None), outcome


# -- the plan-month calendar ---------------------------------------------------------------------------


def test_an_upgrade_in_a_period_anchored_on_the_31st_prorates_over_the_anchored_month(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    """Months of a period starting Jan 31: Feb 28 - Mar 31, Mar 31 - Apr 30 (not Mar 28 - Apr 28)."""
    anchor = datetime(2026, 1, 31, 10, tzinfo=UTC)
    clock.set(anchor + timedelta(minutes=1))
    start, end = period(anchor, 12)
    subscribe(hook, sub, "price_growth_y", start, end)
    changed = datetime(2026, 3, 30, 10, tzinfo=UTC)  # one day before month 2 starts on Mar 31
    clock.set(changed + timedelta(minutes=1))
    upgrade = sub.updated_event("price_pro_y", start, end, previous=changed_price("price_growth_y"), at=ts(changed))
    assert send(hook, upgrade) == f"upgraded growth → pro, prorated {(PRO - GROWTH) * 1 // 31} credits"
    state = get_platform().ledger.state(sub.client_id)
    [prorated] = [b for b in state.buckets.values() if b.granted == (PRO - GROWTH) // 31]
    assert prorated.expires_at == datetime(2026, 3, 31, 10, tzinfo=UTC)


# -- found by the stateful test (tests/unit/test_billing_lifecycle_properties.py) ------------------------


@pytest.mark.parametrize(
    ("plan", "back_to", "credits", "after_cancel"),
    [
        ("growth", "growth", GROWTH, "pending plan change withdrawn"),
        ("pro", "growth", PRO, "downgrade to growth at period end"),
    ],
)
def test_a_late_change_up_from_a_pending_downgrade_prorates_nothing(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock, plan: str, back_to: str, credits: int, after_cancel: str
) -> None:
    """A plan, a downgrade to Starter (pending for the period end), then a change to a plan no higher than
    the one in force: no upgrade of the plan in force, so nothing is prorated — also when a later update
    (cancel at period end) overtakes that change (found by the stateful test)."""
    start, end = period(clock.now - timedelta(days=1))
    subscribe(hook, sub, f"price_{plan}_m", start, end)
    down = sub.updated_event("price_starter_m", start, end, previous=changed_price(f"price_{plan}_m"))
    back = sub.updated_event(f"price_{back_to}_m", start, end, previous=changed_price("price_starter_m"))
    cancel = sub.updated_event(
        f"price_{back_to}_m", start, end, cancel_at_period_end=True, previous={"cancel_at_period_end": False}
    )
    assert send(hook, down) == "downgrade to starter at period end"
    assert send(hook, cancel) == after_cancel
    assert send(hook, back).startswith("stale")
    billing = billing_of(stack, sub.client_id)
    assert billing["plan"] == plan
    assert billing["pending_plan"] == (None if back_to == plan else back_to)
    assert balance(sub.client_id) == credits
    no_drift(sub.client_id)


def test_a_downgrade_overtaken_by_a_later_update_in_a_new_period_waits_for_the_period_end(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    """Growth renews; in the new period it is downgraded to Starter and then set to cancel at the period
    end. The cancel update (price Starter, a period we have not heard of) arrives first and is taken for
    a renewal at Starter; the downgrade's own event, late, says the period was paid at Growth: Growth
    stays until the period end, then Starter (found by the stateful test)."""
    first = datetime(2026, 3, 5, 9, tzinfo=UTC)
    clock.set(first + timedelta(minutes=1))
    start, end = period(first)
    subscribe(hook, sub, "price_growth_m", start, end)
    second = add_months(first, 1)
    clock.set(second + timedelta(hours=1))
    start2, end2 = period(second)
    renewal = sub.updated_event(
        "price_growth_m", start2, end2, previous={"current_period_start": start, "current_period_end": end}
    )
    paid = sub.invoice_paid("price_growth_m", start2, end2, billing_reason="subscription_cycle")
    down = sub.updated_event("price_starter_m", start2, end2, previous=changed_price("price_growth_m"))
    cancel = sub.updated_event(
        "price_starter_m", start2, end2, cancel_at_period_end=True, previous={"cancel_at_period_end": False}
    )
    for evt in (cancel, paid, down, renewal):
        send(hook, evt)
    billing = billing_of(stack, sub.client_id)
    assert (billing["plan"], billing["pending_plan"]) == ("growth", "starter")
    assert billing["pending_plan_at"] == datetime.fromtimestamp(end2, UTC)
    assert balance(sub.client_id) == GROWTH  # the new period's allotment, once (the first one expired)
    no_drift(sub.client_id)


def test_a_change_back_from_a_pending_downgrade_delivered_after_the_cancellation_prorates_nothing(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    """Growth, a downgrade to Starter (pending), back to Growth, then cancelled now: the deletion (at
    Growth) arrives before the change back, which then finds nothing to prorate — the plan in force was
    Growth all along (found by the stateful test)."""
    start, end = period(clock.now - timedelta(days=1))
    subscribe(hook, sub, "price_growth_m", start, end)
    assert send(hook, sub.updated_event("price_starter_m", start, end, previous=changed_price("price_growth_m"))) == (
        "downgrade to starter at period end"
    )
    back = sub.updated_event("price_growth_m", start, end, previous=changed_price("price_starter_m"))
    assert send(hook, sub.deleted_event("price_growth_m", start, end)) == "moves to Free at period end"
    assert send(hook, back).startswith("stale: the subscription has ended")
    billing = billing_of(stack, sub.client_id)
    assert (billing["plan"], billing["pending_plan"]) == ("growth", "free")
    assert balance(sub.client_id) == GROWTH
    no_drift(sub.client_id)


def test_a_late_upgrade_after_the_renewal_of_a_cancelled_subscription_prorates_from_the_renewed_plan(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    """Starter, upgraded to Growth (which records that it replaced Starter); it renews at Growth,
    is upgraded to Pro and cancelled at once. The cancellation arrives first (the renewal not known to be
    paid: Free), then the renewal's invoice (the paid period ends at Pro, the plan it was upgraded to),
    then the upgrade itself: the renewed month gets Growth's allotment plus the Growth → Pro difference
    for the rest of the month, not Starter → Pro (the previous period's upgrade); found by the stateful
    test as a month granted 3,296 credits where 2,497 were due."""
    first = datetime(2026, 3, 5, 9, tzinfo=UTC)
    clock.set(first + timedelta(minutes=1))
    start, end = period(first)
    subscribe(hook, sub, "price_starter_m", start, end)
    clock.set(first + timedelta(days=10))
    up_first = sub.updated_event("price_growth_m", start, end, previous=changed_price("price_starter_m"))
    assert send(hook, up_first).startswith("upgraded starter → growth")
    second = add_months(first, 1)
    clock.set(second + timedelta(hours=1))
    start2, end2 = period(second)
    renewal = sub.updated_event(
        "price_growth_m", start2, end2, previous={"current_period_start": start, "current_period_end": end}
    )
    paid = sub.invoice_paid("price_growth_m", start2, end2, billing_reason="subscription_cycle")
    upgrade = sub.updated_event("price_pro_m", start2, end2, previous=changed_price("price_growth_m"))
    deleted = sub.deleted_event("price_pro_m", start2, end2)
    month = PlanMonth(second, 0, second, datetime.fromtimestamp(end2, UTC))
    prorated = prorated_credits(PRO - GROWTH, month, datetime.fromtimestamp(upgrade["created"], UTC))
    assert send(hook, deleted) == "moved to Free"
    assert send(hook, paid) == f"invoice paid: granted {GROWTH} credits"
    assert send(hook, upgrade) == f"stale: the subscription has ended; prorated {prorated} credits"
    assert send(hook, renewal).startswith("stale")
    billing = billing_of(stack, sub.client_id)
    assert (billing["plan"], billing["pending_plan"]) == ("pro", "free")
    assert balance(sub.client_id) == GROWTH + prorated  # the first month's credits expired
    no_drift(sub.client_id)


def test_a_late_upgrade_of_a_cancelled_annual_plan_grants_nothing_for_the_months_after_the_end(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    """Annual Starter, upgraded to Growth the day before month 1 starts and cancelled at once; the
    deletion and then the upgrade arrive after month 1 began. The paid period ends at Growth, month 0
    gets the prorated difference, and month 1 — which started after the end — gets nothing (it used to
    get Starter's allotment and the whole difference; found by the stateful test)."""
    anchor = datetime(2027, 12, 29, 9, tzinfo=UTC)
    clock.set(anchor + timedelta(minutes=1))
    start, end = period(anchor, 12)
    subscribe(hook, sub, "price_starter_y", start, end)
    month1 = add_months(anchor, 1)
    clock.set(month1 - timedelta(days=1))
    upgrade = sub.updated_event("price_growth_y", start, end, previous=changed_price("price_starter_y"))
    deleted = sub.deleted_event("price_growth_y", start, end)
    clock.set(month1 + timedelta(hours=1))
    month0 = PlanMonth(anchor, 0, anchor, month1)
    prorated = prorated_credits(GROWTH - STARTER, month0, datetime.fromtimestamp(upgrade["created"], UTC))
    assert send(hook, deleted) == "moves to Free at period end"
    assert send(hook, upgrade) == f"stale: the subscription has ended; prorated {prorated} credits"
    billing = billing_of(stack, sub.client_id)
    assert (billing["plan"], billing["pending_plan"]) == ("growth", "free")
    granted = [e for e in entries(sub.client_id) if e.type is EntryType.GRANT]
    month1_key = str(ts(month1))
    assert not [e.key for e in granted if month1_key in e.key], "credits for a month after the end"
    assert sum(e.amount for e in granted) == STARTER + prorated
    no_drift(sub.client_id)


def test_a_new_subscriptions_late_downgrade_is_not_judged_by_the_previous_ones_plan_before(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    """A Starter subscription renews (its roll records that the plan replaced was Starter) and is
    cancelled; a new Growth one is downgraded to Starter and set to cancel at the period end. The last
    update (at Starter) arrives first and takes over at Starter, then the first invoice, then the
    downgrade: Growth for the paid period, Starter pending — the earlier subscription's ``plan_before``
    used to make the downgrade look like a plan changed knowingly since (found by the soak)."""
    first = datetime(2026, 3, 5, 9, tzinfo=UTC)
    clock.set(first + timedelta(minutes=1))
    start, end = period(first)
    subscribe(hook, sub, "price_starter_m", start, end)
    second = add_months(first, 1)
    clock.set(second + timedelta(hours=1))
    start2, end2 = period(second)
    roll = sub.updated_event(
        "price_starter_m", start2, end2, previous={"current_period_start": start, "current_period_end": end}
    )
    assert send(hook, roll) == "plan starter from this period"
    assert send(hook, sub.deleted_event("price_starter_m", start2, end2)) == "moved to Free"
    assert billing_of(stack, sub.client_id)["plan_before"] == "starter"
    clock.advance(days=1)
    new = sub.another_subscription()
    start3, end3 = period(clock.now - timedelta(minutes=1))
    checkout = new.checkout_subscription()
    created = new.created_event("price_growth_m", start3, end3)
    paid = new.invoice_paid("price_growth_m", start3, end3)
    down = new.updated_event("price_starter_m", start3, end3, previous=changed_price("price_growth_m"))
    cancel = new.updated_event(
        "price_starter_m", start3, end3, cancel_at_period_end=True, previous={"cancel_at_period_end": False}
    )
    send(hook, checkout)
    assert send(hook, cancel) == "plan starter"
    assert send(hook, paid) == f"invoice paid: granted {GROWTH} credits"
    assert send(hook, down).startswith("stale")
    assert send(hook, created).startswith("stale")
    billing = billing_of(stack, sub.client_id)
    assert (billing["subscription_id"], billing["plan"], billing["pending_plan"]) == (
        new.subscription,
        "growth",
        "starter",
    )
    assert billing["pending_plan_at"] == datetime.fromtimestamp(end3, UTC)
    no_drift(sub.client_id)


def test_a_late_upgrade_does_not_prorate_from_the_previous_subscriptions_plan_before(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    """Starter upgraded to Pro and cancelled: Pro until the period end (the plan it replaced: Starter).
    A new Growth subscription's first payment completes, it is upgraded to Pro and cancelled at once;
    its deletion, activation, upgrade and invoice arrive in that order. The month gets Growth's
    allotment and Growth → Pro for the rest of it — not Starter → Pro, read from the earlier
    subscription's plan (found by the soak)."""
    start, end = period(clock.now - timedelta(days=2))
    subscribe(hook, sub, "price_starter_m", start, end)
    up_first = sub.updated_event("price_pro_m", start, end, previous=changed_price("price_starter_m"))
    assert send(hook, up_first).startswith("upgraded starter → pro")
    assert send(hook, sub.deleted_event("price_pro_m", start, end)) == "moves to Free at period end"
    assert billing_of(stack, sub.client_id)["plan_before"] == "starter"
    clock.advance(days=1)
    new = sub.another_subscription()
    start2, end2 = period(clock.now - timedelta(hours=1))
    send(hook, new.checkout_subscription())
    assert send(hook, new.created_event("price_growth_m", start2, end2, status="incomplete")) == (
        "subscription incomplete"
    )
    paid = new.invoice_paid("price_growth_m", start2, end2)
    active = new.updated_event("price_growth_m", start2, end2, previous={"status": "incomplete"})
    upgrade = new.updated_event("price_pro_m", start2, end2, previous=changed_price("price_growth_m"))
    deleted = new.deleted_event("price_pro_m", start2, end2)
    month = PlanMonth(
        datetime.fromtimestamp(start2, UTC), 0, datetime.fromtimestamp(start2, UTC), datetime.fromtimestamp(end2, UTC)
    )
    prorated = prorated_credits(PRO - GROWTH, month, datetime.fromtimestamp(upgrade["created"], UTC))
    assert send(hook, deleted) == "subscription canceled: its plan never applied"
    assert send(hook, active).startswith("stale: the subscription has ended")
    assert send(hook, upgrade) == f"stale: the subscription has ended; prorated {prorated} credits"
    assert send(hook, paid) == f"invoice paid: granted {GROWTH} credits"
    month_key = f":{new.subscription}:{start2}"
    granted = [e for e in entries(sub.client_id) if e.type is EntryType.GRANT and month_key in e.key]
    assert sorted(e.amount for e in granted) == sorted([GROWTH, prorated])
    billing = billing_of(stack, sub.client_id)
    assert (billing["plan"], billing["pending_plan"]) == ("pro", "free")
    no_drift(sub.client_id)
