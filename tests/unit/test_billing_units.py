"""Billing's pure parts: month arithmetic, price ids, the catalog, proration, signature checks and the
Stripe payload subsets; and the Stripe stub's form decoding."""

from __future__ import annotations

import calendar
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from dev.stubs.stripe import parse_form
from shared.billing.catalog import Catalog, PriceIds, load_catalog, price_key
from shared.billing.events import (
    WebhookPayloadInvalid,
    WebhookProcessor,
    WebhookSignatureInvalid,
    add_months,
    verify_event,
)
from shared.billing.models import (
    BillingState,
    StripeEvent,
    StripeInvoice,
    StripeInvoiceLine,
    StripeSubscription,
)
from shared.billing.service import catalog_out, paid_operations_blocked
from shared.errors import ValidationFailed
from shared.ids import derived_id
from shared.ledger.model import EntryType
from shared.ledger.service import Ledger
from tests.billing_events import SECRET, encode, event, invoice_obj, signature_header, subscription_obj
from tests.fakes import InMemoryBillingStore, InMemoryLedgerStore

PRICES = {
    "starter:monthly": "price_starter_m", "growth:monthly": "price_growth_m", "growth:annual": "price_growth_y",
    "pro:monthly": "price_pro_m", "pro:annual": "price_pro_y", "pack_500": "price_pack_500",
}  # fmt: skip

# -- add_months -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "months", "expected"),
    [
        (datetime(2024, 1, 31, 9, 30, tzinfo=UTC), 1, datetime(2024, 2, 29, 9, 30, tzinfo=UTC)),
        (datetime(2023, 1, 31, tzinfo=UTC), 1, datetime(2023, 2, 28, tzinfo=UTC)),
        (datetime(2024, 12, 15, 23, 59, 59, 999, tzinfo=UTC), 1, datetime(2025, 1, 15, 23, 59, 59, 999, tzinfo=UTC)),
        (datetime(2024, 3, 31, tzinfo=UTC), -1, datetime(2024, 2, 29, tzinfo=UTC)),
        (datetime(2024, 1, 1, tzinfo=UTC), -1, datetime(2023, 12, 1, tzinfo=UTC)),
        (datetime(2024, 2, 29, tzinfo=UTC), 12, datetime(2025, 2, 28, tzinfo=UTC)),
        (datetime(2024, 5, 31, tzinfo=UTC), 0, datetime(2024, 5, 31, tzinfo=UTC)),
        (datetime(2024, 8, 31, tzinfo=UTC), 25, datetime(2026, 9, 30, tzinfo=UTC)),
    ],
)
def test_add_months(moment: datetime, months: int, expected: datetime) -> None:
    assert add_months(moment, months) == expected
    assert add_months(moment, months).tzinfo is moment.tzinfo


@given(
    st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)),
    st.integers(min_value=-120, max_value=120),
)
def test_add_months_moves_whole_months_and_clamps_the_day(moment: datetime, months: int) -> None:
    result = add_months(moment, months)
    assert (result.year * 12 + result.month) - (moment.year * 12 + moment.month) == months
    assert result.day == min(moment.day, calendar.monthrange(result.year, result.month)[1])
    assert result.time() == moment.time() and result.tzinfo == moment.tzinfo


def test_add_months_of_a_firestore_timestamp_can_be_written_back() -> None:
    """Dates read from Firestore are DatetimeWithNanoseconds; ``replace`` on one loses its nanoseconds
    field and the client then fails to encode it (the daily job's annual grants crashed on this)."""
    from google.api_core.datetime_helpers import DatetimeWithNanoseconds
    from google.cloud.firestore_v1._helpers import encode_value

    stored = DatetimeWithNanoseconds(2026, 1, 31, 12, 0, 0, tzinfo=UTC)
    result = add_months(stored, 1)
    assert result == datetime(2026, 2, 28, 12, 0, tzinfo=UTC)
    encode_value(result)  # raised AttributeError: no attribute '_nanosecond'


# -- price ids and the catalog ------------------------------------------------------------------------


def test_price_ids_both_ways() -> None:
    prices = PriceIds(PRICES)
    assert price_key("growth", "annual") == "growth:annual"
    assert prices.for_plan("growth", "annual") == "price_growth_y"
    assert prices.for_pack("pack_500") == "price_pack_500"
    assert prices.plan_of("price_growth_y") == ("growth", "annual")
    assert prices.plan_of("price_starter_m") == ("starter", "monthly")
    assert prices.plan_of("price_pack_500") is None and prices.plan_of("price_unknown") is None
    assert prices.pack_of("price_pack_500") == "pack_500"
    assert prices.pack_of("price_growth_m") is None and prices.pack_of("price_unknown") is None


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda p: p.for_plan("starter", "annual"), "interval"),
        (lambda p: p.for_plan("scale", "monthly"), "interval"),
        (lambda p: p.for_pack("pack_100"), "pack_id"),
    ],
)
def test_missing_prices_are_validation_problems(call: Any, field: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        call(PriceIds(PRICES))
    assert raised.value.status == 422
    assert [e["field"] for e in raised.value.extensions["errors"]] == [field]


def test_the_shipped_catalog() -> None:
    catalog = load_catalog()
    ranked = sorted(catalog.plans.items(), key=lambda item: item[1].rank)
    assert [plan_id for plan_id, _ in ranked] == ["free", "starter", "growth", "pro", "scale"]
    assert [plan.product_slots for _, plan in ranked] == [25, 100, 500, 1000, 5000]
    credits = [plan.monthly_credits for _, plan in ranked]
    assert credits == sorted(credits) and len(set(credits)) == len(credits)
    assert len({plan.rank for _, plan in ranked}) == len(ranked)
    assert catalog.signup_bonus == 30 and catalog.grace_period_days == 3
    assert {pack_id: pack.credits for pack_id, pack in catalog.packs.items()} == {
        "pack_100": 100,
        "pack_500": 500,
        "pack_2000": 2000,
    }


def _catalog_data() -> dict[str, Any]:
    return json.loads(json.dumps(load_catalog().model_dump()))  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: d["plans"]["growth"].update(product_slots=-1),
        lambda d: d["plans"]["growth"].update(colour="blue"),
        lambda d: d["plans"]["growth"]["display_price"].update(weekly=100),
        lambda d: d["packs"]["pack_100"].update(credits=0),
        lambda d: d.update(grace_period_days=-1),
        lambda d: d.update(surprise=True),
        lambda d: d["plans"]["pro"].pop("rank"),
    ],
)
def test_catalog_validation_refuses_broken_files(breakage: Any) -> None:
    data = _catalog_data()
    Catalog.model_validate(data)
    breakage(data)
    with pytest.raises(ValidationError):
        Catalog.model_validate(data)


def test_unknown_plan_or_pack_is_a_field_error() -> None:
    catalog = load_catalog()
    with pytest.raises(ValidationFailed) as raised:
        catalog.plan("platinum")
    assert raised.value.extensions["errors"][0]["field"] == "plan"
    assert "growth" in raised.value.detail
    with pytest.raises(ValidationFailed):
        catalog.pack("pack_7")


def test_catalog_out_is_in_rank_order_with_configured_intervals() -> None:
    data = _catalog_data()
    data["plans"] = dict(reversed(list(data["plans"].items())))
    out = catalog_out(Catalog.model_validate(data), PriceIds(PRICES))
    assert [p.id for p in out.plans] == ["free", "starter", "growth", "pro", "scale"]
    assert {p.id: p.intervals for p in out.plans} == {
        "free": [],
        "starter": ["monthly"],
        "growth": ["monthly", "annual"],
        "pro": ["monthly", "annual"],
        "scale": [],
    }
    assert {p.id: p.available for p in out.packs} == {"pack_100": False, "pack_500": True, "pack_2000": False}


def test_paid_operations_are_blocked_from_the_end_of_the_grace_period() -> None:
    catalog = load_catalog()
    since = datetime(2026, 3, 1, tzinfo=UTC)
    state = BillingState(past_due_since=since)
    assert paid_operations_blocked(BillingState(), catalog, since + timedelta(days=30)) is False
    assert paid_operations_blocked(state, catalog, since + timedelta(days=3, seconds=-1)) is False
    assert paid_operations_blocked(state, catalog, since + timedelta(days=3)) is True


# -- proration ----------------------------------------------------------------------------------------


def _prorate(
    now: datetime, start: datetime, end: datetime, old: str = "growth", new: str = "pro", interval: str = "monthly"
) -> tuple[int, Ledger]:
    """An upgrade old -> new applied at ``now`` (its event at ``now`` too), through the real processor,
    ledger and in-memory ports."""
    ledger = Ledger(InMemoryLedgerStore(), clock=lambda: now)
    processor = WebhookProcessor(InMemoryBillingStore(), ledger, load_catalog(), PriceIds(PRICES), now)
    price = PRICES.get(f"{new}:{interval}", "price_other")
    sub = StripeSubscription.model_validate(
        subscription_obj("sub_1", "cus_1", price, int(start.timestamp()), int(end.timestamp()))
    )
    evt = StripeEvent.model_validate(event("customer.subscription.updated", {}, int(now.timestamp())))
    granted = processor._prorate("c1", evt, sub, old, new, "annual" if interval == "annual" else "monthly", now)
    return granted, ledger


def prorations(ledger: Ledger) -> list[Any]:
    """The upgrade grants (the buckets an upgrade's key named), in grant order."""
    entries = [e for e in ledger.store.entries("c1") if e.type is EntryType.GRANT and "upgrade" in e.reason]
    buckets = ledger.state("c1").buckets
    return [buckets[e.bucket_id] for e in entries if e.bucket_id]


JUNE = (datetime(2026, 6, 1, tzinfo=UTC), datetime(2026, 7, 1, tzinfo=UTC))


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (datetime(2026, 6, 16, tzinfo=UTC), 750),  # half of 30 days left
        (datetime(2026, 6, 1, tzinfo=UTC), 1500),  # all of it
        (datetime(2026, 6, 25, tzinfo=UTC), 300),  # 6 of 30 days
        (datetime(2026, 6, 30, 23, 59, 59, tzinfo=UTC), 0),  # 1 s left: floor
        (datetime(2026, 7, 2, tzinfo=UTC), 0),  # after the period
        (datetime(2026, 5, 20, tzinfo=UTC), 1500),  # before it started (clock skew): never more than all
    ],
)
def test_prorated_upgrade_is_the_floor_of_the_remaining_share(now: datetime, expected: int) -> None:
    granted, ledger = _prorate(now, *JUNE)
    assert granted == expected
    if expected:
        [bucket] = prorations(ledger)
        assert bucket.granted == expected and bucket.expires_at == JUNE[1]
        assert bucket.id == derived_id("bkt", f"stripe:upgrade:sub_1:{int(JUNE[0].timestamp())}:pro")
    else:
        assert prorations(ledger) == []


def test_prorated_upgrade_amounts_between_plans() -> None:
    now = datetime(2026, 6, 16, tzinfo=UTC)
    assert _prorate(now, *JUNE, old="starter", new="scale")[0] == (10000 - 200) // 2
    assert _prorate(now, *JUNE, old="pro", new="growth")[0] == 0  # a downgrade grants nothing
    assert _prorate(now, JUNE[0], JUNE[0])[0] == 0  # an empty period


def test_prorated_upgrade_on_an_annual_plan_uses_the_current_month() -> None:
    start, end = datetime(2026, 1, 10, tzinfo=UTC), datetime(2027, 1, 10, tzinfo=UTC)
    now = datetime(2026, 4, 25, tzinfo=UTC)  # 15 of the 30 days from Apr 10 to May 10 left
    granted, ledger = _prorate(now, start, end, interval="annual")
    assert granted == 750
    [bucket] = prorations(ledger)
    assert bucket.expires_at == datetime(2026, 5, 10, tzinfo=UTC)
    assert bucket.id == derived_id(
        "bkt", f"stripe:upgrade:sub_1:{int(datetime(2026, 4, 10, tzinfo=UTC).timestamp())}:pro"
    )
    # The months that started at Growth's size have their Growth allotment (the daily job's, once).
    allotments = sorted(b.expires_at for b in ledger.state("c1").buckets.values() if b.granted == 1000)
    assert allotments == [datetime(2026, m, 10, tzinfo=UTC) for m in (2, 3, 4, 5)]


def test_an_upgrade_applied_late_tops_up_the_months_that_started_before_it() -> None:
    """The change on Mar 20, learned (applied) on Apr 12: March's rest prorated, April at Pro in full."""
    start, end = datetime(2026, 1, 10, tzinfo=UTC), datetime(2027, 1, 10, tzinfo=UTC)
    changed, applied = datetime(2026, 3, 20, tzinfo=UTC), datetime(2026, 4, 12, tzinfo=UTC)
    ledger = Ledger(InMemoryLedgerStore(), clock=lambda: applied)
    processor = WebhookProcessor(InMemoryBillingStore(), ledger, load_catalog(), PriceIds(PRICES), applied)
    sub = StripeSubscription.model_validate(
        subscription_obj("sub_1", "cus_1", "price_pro_y", int(start.timestamp()), int(end.timestamp()))
    )
    evt = StripeEvent.model_validate(event("customer.subscription.updated", {}, int(changed.timestamp())))
    granted = processor._prorate("c1", evt, sub, "growth", "pro", "annual", applied)
    march = 1500 * 21 // 31  # Mar 20 - Apr 10: 21 of the 31 days of the Mar 10 - Apr 10 month, rounded down
    assert granted == march + 1500
    assert sorted(b.granted for b in prorations(ledger)) == sorted([march, 1500])


# -- signatures ---------------------------------------------------------------------------------------


def _signed(evt: dict[str, Any] | bytes, **kwargs: Any) -> tuple[bytes, str]:
    payload = evt if isinstance(evt, bytes) else encode(evt)
    return payload, signature_header(payload, **kwargs)


def test_verify_event_accepts_the_documented_scheme() -> None:
    evt = event("invoice.paid", {"id": "in_1"}, 1_790_000_000)
    parsed = verify_event(*_signed(evt), SECRET)
    assert (parsed.id, parsed.type, parsed.created, parsed.object) == (
        evt["id"],
        "invoice.paid",
        1_790_000_000,
        {"id": "in_1"},
    )


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda p: (p, signature_header(p, secret="whsec_other")), WebhookSignatureInvalid),
        (lambda p: (p, signature_header(p, timestamp=int(time.time()) - 301)), WebhookSignatureInvalid),
        (lambda p: (p + b" ", signature_header(p)), WebhookSignatureInvalid),
        (lambda p: (p, None), WebhookSignatureInvalid),
        (lambda p: (p, ""), WebhookSignatureInvalid),
        (lambda p: (b"not json", signature_header(b"not json")), WebhookPayloadInvalid),
        (lambda p: (b'{"id": 1}', signature_header(b'{"id": 1}')), WebhookPayloadInvalid),
    ],
)
def test_verify_event_refuses(make: Any, error: type[Exception]) -> None:
    payload, header = make(encode(event("invoice.paid", {}, 1)))
    with pytest.raises(error) as raised:
        verify_event(payload, header, SECRET)
    assert raised.value.status == 400  # type: ignore[attr-defined]


def test_verify_event_without_a_secret_is_a_503_naming_the_setting() -> None:
    from shared.errors import VendorNotConfigured

    with pytest.raises(VendorNotConfigured) as raised:
        verify_event(*_signed(event("invoice.paid", {}, 1)), "")
    assert raised.value.status == 503 and raised.value.extensions["settings"] == ["STRIPE_WEBHOOK_SECRET"]


# -- payload subsets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True])
def test_invoice_and_subscription_in_both_api_shapes(legacy: bool) -> None:
    invoice = StripeInvoice.model_validate(
        invoice_obj("in_1", "cus_1", "sub_1", "price_pro_m", 100, 200, legacy=legacy)
    )
    assert invoice.subscription_id() == "sub_1"
    line = StripeInvoiceLine.model_validate(invoice.lines.data[0])
    assert line.price_id() == "price_pro_m" and line.period == {"start": 100, "end": 200}
    sub = StripeSubscription.model_validate(subscription_obj("sub_1", "cus_1", "price_pro_m", 100, 200, legacy=legacy))
    assert sub.period() == (100, 200) and sub.first_item().price.id == "price_pro_m"


def test_invoice_without_a_subscription() -> None:
    invoice = StripeInvoice.model_validate({"id": "in_1", "customer": "cus_1", "lines": {"data": [{}]}})
    assert invoice.subscription_id() is None
    assert StripeInvoiceLine.model_validate({}).price_id() is None


# -- the stub's form decoding -------------------------------------------------------------------------


def test_stripe_form_encoding_round_trips() -> None:
    from urllib.parse import parse_qsl, urlencode

    from stripe._encode import _api_encode  # the client's own encoder

    params = {
        "mode": "subscription",
        "line_items": [{"price": "price_growth_m", "quantity": 1}, {"price": "price_x", "quantity": 2}],
        "metadata": {"client_id": "c1", "plan_id": "growth"},
        "subscription_data": {"metadata": {"client_id": "c1"}},
        "customer": "cus_1",
    }
    wire = urlencode(list(_api_encode(params))).replace("%5B", "[").replace("%5D", "]")
    assert "line_items[1][quantity]=2" in wire
    assert parse_form(parse_qsl(wire)) == {
        "mode": "subscription",
        "line_items": [{"price": "price_growth_m", "quantity": "1"}, {"price": "price_x", "quantity": "2"}],
        "metadata": {"client_id": "c1", "plan_id": "growth"},
        "subscription_data": {"metadata": {"client_id": "c1"}},
        "customer": "cus_1",
    }
