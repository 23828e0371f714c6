"""Money is exact, proven by properties (issue #18): pack refunds, the plan-month calendar and upgrade
proration, through the real webhook processor, the real ledger and the daily job on the in-memory
ports (real subclasses of ``BillingStore`` and ``LedgerStore``). After every run the ledger's own
verification (its drift check) finds nothing.

* Refunds: any pack size and price, any sequence of cumulative refunds (Stripe's ``amount_refunded``)
  delivered in any order, each possibly more than once, some of them while another is in flight →
  the credits removed from the pack equal ``floor(credits * refunded / amount)`` for the largest
  refund delivered, never more than was unspent.
* Calendar: for every period start day 1-31, in leap and non-leap years, the months an upgrade is
  prorated over and the months the daily job grants are the same months, anchored on the period
  start (``start + k months``, clamped to the month's end, like Stripe's billing dates).
* Proration: at the month's start an upgrade gets the whole difference, at its end nothing, never more
  in between; the prorated grants for the two parts of a month split anywhere add up to the
  difference within one credit.

Budget: ``EPOX_PROPERTY_EXAMPLES`` (see ``tests/unit/test_ledger_properties.py``) raises the example
count of every property here.
"""

from __future__ import annotations

import calendar as cal
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from shared.billing import allotments
from shared.billing.calendar import add_months, month_at, months_started, plan_month
from shared.billing.catalog import Pack, PriceIds, load_catalog
from shared.billing.events import WebhookProcessor
from shared.billing.models import StripeEvent, StripeSubscription
from shared.billing.money import prorated_credits, refund_target
from shared.ledger.model import EntryType
from shared.ledger.service import Ledger
from tests.billing_events import Subscriber, new_id, subscription_obj, ts
from tests.fakes import InMemoryBillingStore, InMemoryLedgerStore, RecordingPaymentGateway

PRICES = {
    "growth:monthly": "price_growth_m", "growth:annual": "price_growth_y",
    "pro:monthly": "price_pro_m", "pro:annual": "price_pro_y",
}  # fmt: skip


def examples(default: int) -> settings:
    soak = os.environ.get("EPOX_PROPERTY_EXAMPLES")
    return settings(
        max_examples=int(soak) if soak else default,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


# -- refunds ----------------------------------------------------------------------------------------


class InterleavingLedger(Ledger):
    """Runs a queued delivery just before a refund's ledger commit: another instance's delivery of
    another refund of the same charge, processed while this one is in flight."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.meanwhile: list[Callable[[], Any]] = []

    def _run(self, client_id: str, key: str, *args: Any, **kwargs: Any) -> Any:
        if key.startswith("stripe:refund:") and self.meanwhile:
            self.meanwhile.pop(0)()
        return super()._run(client_id, key, *args, **kwargs)


@st.composite
def refund_runs(draw: st.DrawFn) -> tuple[int, int, list[int], list[tuple[int, bool]]]:
    """(credits, price in cents, cumulative refunded totals, deliveries as (refund index, interleave))."""
    credits = draw(st.integers(min_value=1, max_value=100_000))
    amount = draw(st.integers(min_value=1, max_value=10_000_000))
    totals = sorted(set(draw(st.lists(st.integers(min_value=1, max_value=amount), min_size=1, max_size=6))))
    order = draw(st.permutations(range(len(totals))))
    redelivered = draw(st.lists(st.sampled_from(range(len(totals))), max_size=4))
    deliveries = [(index, draw(st.booleans())) for index in [*order, *redelivered]]
    return credits, amount, totals, deliveries


@examples(300)
@given(refund_runs())
def test_cumulative_refunds_in_any_order_remove_exactly_the_refunded_share(
    run: tuple[int, int, list[int], list[tuple[int, bool]]],
) -> None:
    credits, amount, totals, deliveries = run
    now = datetime(2026, 3, 1, tzinfo=UTC)
    catalog = load_catalog()
    catalog = catalog.model_copy(update={"packs": {"pack_x": Pack(name="x", credits=credits, display_price=amount)}})
    ledger = InterleavingLedger(InMemoryLedgerStore(), clock=Clock(now), sleep=lambda _: None)
    store = InMemoryBillingStore()
    processor = WebhookProcessor(store, ledger, catalog, PriceIds(PRICES), now, RecordingPaymentGateway())
    buyer = Subscriber("c_refunds", created=ts(now))
    pi, charge = new_id("pi"), new_id("ch")
    assert processor.handle(StripeEvent.model_validate(buyer.checkout_pack("pack_x", payment_intent=pi))).startswith(
        "granted"
    )
    events = [
        StripeEvent.model_validate(buyer.charge_refunded(pi, amount, total, charge_id=charge)) for total in totals
    ]
    delivered: list[int] = []
    for position, (index, interleave) in enumerate(deliveries):
        if interleave and position + 1 < len(deliveries):
            other = deliveries[position + 1][0]
            ledger.meanwhile.append(lambda other=other: (processor.handle(events[other]), delivered.append(other)))
        processor.handle(events[index])
        ledger.meanwhile.clear()
        delivered.append(index)
        # After every delivery: what left the pack is the formula for the largest refund delivered so far.
        largest = totals[max(delivered)]
        expected = credits * largest // amount  # floor, in integers
        assert expected == refund_target(credits, amount, largest)
        assert expected == int(Fraction(credits * largest, amount))  # the same number, computed apart
        removed = -sum(e.available_delta for e in ledger.store.entries("c_refunds") if e.type is EntryType.ADJUST)
        assert removed == expected
        assert ledger.state("c_refunds").available == credits - expected
    assert ledger.verify("c_refunds") == []


@examples(150)
@given(
    st.integers(min_value=1, max_value=5_000),
    st.integers(min_value=100, max_value=100_000),
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=2_000), st.integers(min_value=1, max_value=100_000)), max_size=5
    ),
)
def test_refunds_never_remove_more_than_was_unspent_and_say_what_was_spent(
    credits: int, amount: int, steps: list[tuple[int, int]]
) -> None:
    """Spending between refunds: what is removed never exceeds the refunded share nor what was left."""
    from shared.ledger.model import Actor

    now = datetime(2026, 3, 1, tzinfo=UTC)
    catalog = load_catalog()
    catalog = catalog.model_copy(update={"packs": {"pack_x": Pack(name="x", credits=credits, display_price=amount)}})
    ledger = Ledger(InMemoryLedgerStore(), clock=Clock(now), sleep=lambda _: None)
    processor = WebhookProcessor(InMemoryBillingStore(), ledger, catalog, PriceIds(PRICES), now)
    buyer = Subscriber("c_spent", created=ts(now))
    pi, charge = new_id("pi"), new_id("ch")
    processor.handle(StripeEvent.model_validate(buyer.checkout_pack("pack_x", payment_intent=pi)))
    refunded = 0
    for spend, refund in steps:
        available = ledger.state("c_spent").available
        if 0 < spend <= available:
            hold = ledger.reserve("c_spent", key=new_id("k"), amount=spend, actor=Actor(kind="user", id="u"),
                                  purpose="job", ttl=timedelta(hours=1))  # fmt: skip
            ledger.capture("c_spent", hold["hold_id"], amount=spend, actor=Actor(kind="task", id="t"), reason="done")
        refunded = min(amount, refunded + refund)
        processor.handle(StripeEvent.model_validate(buyer.charge_refunded(pi, amount, refunded, charge_id=charge)))
        bucket = next(iter(ledger.state("c_spent").buckets.values()))
        target = credits * refunded // amount
        assert bucket.revoke_target == target
        assert bucket.revoked <= target
        # Short of the share only because the rest was spent: then nothing unspent is left.
        assert bucket.revoked == target or bucket.remaining == 0
    assert ledger.verify("c_spent") == []


# -- the plan-month calendar ------------------------------------------------------------------------

YEARS = [2023, 2024, 2025, 2028, 2100]  # 2024 and 2028 are leap years; 2100 is not


@st.composite
def period_starts(draw: st.DrawFn) -> datetime:
    """Every day 1-31 of any month (days a month does not have are skipped), in leap and other years."""
    year = draw(st.sampled_from(YEARS))
    month = draw(st.integers(min_value=1, max_value=12))
    day = draw(st.integers(min_value=1, max_value=31))
    assume(day <= cal.monthrange(year, month)[1])
    return datetime(year, month, day, draw(st.integers(0, 23)), draw(st.integers(0, 59)), tzinfo=UTC)


def stripe_billing_date(anchor: datetime, k: int) -> datetime:
    """Stripe's k-th monthly billing date for an anchor, written out apart from the code: the anchor's
    day in the month k months later, or that month's last day when it has no such day."""
    total = anchor.month - 1 + k
    year, month = anchor.year + total // 12, total % 12 + 1
    day = min(anchor.day, cal.monthrange(year, month)[1])
    return anchor.replace(year=year, month=month, day=day)


@examples(300)
@given(period_starts())
def test_months_are_anchored_on_the_period_start_never_stepped(anchor: datetime) -> None:
    end = add_months(anchor, 12)
    months = months_started(anchor, end, end + timedelta(days=1))
    assert [m.index for m in months] == list(range(12))
    for m in months:
        assert m.start == stripe_billing_date(anchor, m.index)
        assert m.end == stripe_billing_date(anchor, m.index + 1)
        # Every moment of the month maps back to it (its first and last microsecond, and its middle).
        for moment in (m.start, m.start + (m.end - m.start) / 2, m.end - timedelta(microseconds=1)):
            assert month_at(anchor, end, moment) == m


@examples(200)
@given(period_starts(), st.integers(min_value=0, max_value=11), st.floats(min_value=0, max_value=0.999))
def test_proration_and_the_daily_job_agree_on_every_month_boundary(anchor: datetime, k: int, into: float) -> None:
    """An annual Growth subscription upgraded to Pro in month k: the daily job's allotments and the
    upgrade's proration are granted for the same months, expiring at the same anchored boundaries."""
    end = add_months(anchor, 12)
    month = plan_month(anchor, k, end)
    changed = (month.start + (month.end - month.start) * into).replace(microsecond=0)
    assume(month.start <= changed < month.end)
    clock = Clock(anchor)
    store, ledger, catalog = InMemoryBillingStore(), Ledger(InMemoryLedgerStore(), clock=clock), load_catalog()
    billing = {
        "plan": "growth", "interval": "annual", "subscription_id": "sub_cal", "subscription_status": "active",
        "current_period_start": anchor, "current_period_end": end,
    }  # fmt: skip
    store.clients["c_cal"] = ({"billing": billing}, 1)
    # The daily job an hour into every month up to month k.
    for index in range(k + 1):
        clock.now = plan_month(anchor, index, end).start + timedelta(hours=1)
        allotments.run_daily(store, ledger, catalog, clock.now)
    job_months = [plan_month(anchor, i, end) for i in range(k + 1)]
    assert sorted(b.expires_at for b in ledger.state("c_cal").buckets.values()) == [m.end for m in job_months]  # type: ignore[type-var]

    clock.now = max(changed, clock.now)
    processor = WebhookProcessor(store, ledger, catalog, PriceIds(PRICES), clock.now)
    sub = StripeSubscription.model_validate(subscription_obj("sub_cal", "cus", "price_pro_y", ts(anchor), ts(end)))
    event = StripeEvent.model_validate(
        {"id": "evt", "type": "customer.subscription.updated", "created": ts(changed), "data": {"object": {}}}
    )
    granted = processor._prorate("c_cal", event, sub, "growth", "pro", "annual", clock.now)

    entries = ledger.store.entries("c_cal")
    buckets = ledger.state("c_cal").buckets
    allotted = [buckets[e.bucket_id] for e in entries if e.type is EntryType.GRANT and "upgrade" not in e.reason]
    prorated = [buckets[e.bucket_id] for e in entries if e.type is EntryType.GRANT and "upgrade" in e.reason]
    assert sorted(b.expires_at for b in allotted) == [m.end for m in job_months]  # type: ignore[type-var]
    assert granted == prorated_credits(1500, month, changed)
    if granted:
        [bucket] = prorated
        assert bucket.expires_at == month.end  # the upgrade's month is the job's month k
        assert bucket.granted == granted
    assert ledger.verify("c_cal") == []


@examples(300)
@given(period_starts(), st.integers(min_value=0, max_value=11), st.integers(min_value=1, max_value=20_000), st.data())
def test_the_prorated_grants_for_a_month_split_anywhere_add_up_to_the_difference_within_one_credit(
    anchor: datetime, k: int, difference: int, data: st.DataObject
) -> None:
    month = plan_month(anchor, k, add_months(anchor, 12))
    micros = (month.end - month.start) // timedelta(microseconds=1)
    at = month.start + timedelta(microseconds=data.draw(st.integers(min_value=0, max_value=micros)))
    after = prorated_credits(difference, month, at)
    # The upgrade at the month's start gets all of it; at its end nothing; never more than the difference.
    assert prorated_credits(difference, month, month.start) == difference
    assert prorated_credits(difference, month, month.end) == 0
    assert 0 <= after <= difference
    # The same difference over the part before the split (what an upgrade on the first day would add
    # minus what one at the split adds): the two parts' grants add up to it or one credit less.
    share_before = Fraction((at - month.start) // timedelta(microseconds=1), micros)
    part_before = int(difference * share_before)  # floor: non-negative
    assert difference - 1 <= after + part_before <= difference
    # Later is never more: the grant only shrinks as the month goes by.
    later = at + (month.end - at) / 2
    assert prorated_credits(difference, month, later) <= after
