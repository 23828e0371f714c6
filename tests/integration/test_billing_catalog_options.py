"""Billing catalog options the shipped ``plans.json`` leaves off, turned on and run end to end: the Free
plan's monthly allowance (daily job), ``rollover`` (subscription credits with or without an expiry) and
``pack_credit_expiry_days`` (pack credits that expire after N days, or never).

The catalog is overridden through its own seam: ``load_catalog`` reads ``CATALOG_PATH`` and caches the
result, so the ``catalog`` fixture writes a copy of the shipped file with the options changed, points
``CATALOG_PATH`` at it and clears the cache (and clears it again afterwards). Everything else is real:
signed webhooks into ``stripe_webhook``, the daily job of ``billing_jobs``, the ``/jobs/expire-buckets``
job of ``credits_jobs`` and the ledger on the Firestore emulator, on a settable platform clock.

The scheduled jobs look at every client in the session's emulator: a client another test left broken
may make a run answer ``scheduled_job_incomplete``, so the job helper only requires that none of *this*
test's clients failed; and this file's clients are deleted after each test, so later tests' jobs (on
the shipped catalog) never meet their Free-allowance grants.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.billing import catalog as catalog_module
from shared.billing.catalog import Catalog, load_catalog
from shared.billing.events import add_months
from shared.ledger.model import Actor, Bucket, Entry, EntryType, GrantSource, spendable
from shared.platform import get_platform
from tests.billing_events import (
    Clock,
    Subscriber,
    billing_of,
    deliver,
    new_id,
    onboard_and_link,
    ts,
)
from tests.conftest import TASK_SECRET

pytestmark = pytest.mark.integration

SHIPPED = catalog_module.CATALOG_PATH
SCHEDULER = {"Authorization": f"Bearer {TASK_SECRET}"}
FREE = 40  # the Free plan's monthly allowance in these tests
GROWTH, PRO = 1000, 2500
PACK_DAYS = 30

UseCatalog = Callable[..., Catalog]
NewClient = Callable[[], Subscriber]

# -- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[UseCatalog]:
    """``use(free_monthly_credits=, rollover=, pack_credit_expiry_days=)``: the shipped catalog with
    these options, served by ``load_catalog`` to every function until the test ends."""
    with pytest.MonkeyPatch.context() as mp:

        def use(
            *, free_monthly_credits: int = 0, rollover: bool = False, pack_credit_expiry_days: int | None = None
        ) -> Catalog:
            data = json.loads(SHIPPED.read_text())
            data["plans"]["free"]["monthly_credits"] = free_monthly_credits
            data["rollover"] = rollover
            data["pack_credit_expiry_days"] = pack_credit_expiry_days
            path = tmp_path / "plans.json"
            path.write_text(json.dumps(data))
            mp.setattr(catalog_module, "CATALOG_PATH", path)
            load_catalog.cache_clear()
            loaded = load_catalog()
            assert loaded.plans["free"].monthly_credits == free_monthly_credits
            assert (loaded.rollover, loaded.pack_credit_expiry_days) == (rollover, pack_credit_expiry_days)
            return loaded

        try:
            yield use
        finally:
            load_catalog.cache_clear()
    load_catalog.cache_clear()  # the next caller reads the shipped file again
    assert catalog_module.CATALOG_PATH == SHIPPED


@pytest.fixture
def new_client(stack: Any, clock: Clock) -> Iterator[NewClient]:
    """Makes clients onboarded on Free (no signup bonus in tests) with their Stripe customer; removes
    them afterwards, so later tests' scheduled jobs never meet this file's Free-allowance grants."""
    made: list[Subscriber] = []

    def make() -> Subscriber:
        s = Subscriber("c" + new_id("x")[2:18], clock=clock)
        onboard_and_link(stack, s)
        made.append(s)
        return s

    yield make
    db = stack.platform.db
    for s in made:
        db.recursive_delete(db.document(f"clients/{s.client_id}"))
        db.document(f"stripe_customers/{s.customer}").delete()


# -- helpers ------------------------------------------------------------------------------------------


def send(hook: Any, evt: dict[str, Any]) -> str:
    response = deliver(hook, evt)
    assert response.status_code == 200, response.json
    return str(response.json["outcome"])


def subscribe(hook: Any, sub: Subscriber, price: str, start: int, end: int) -> str:
    """Checkout completed, subscription created, first invoice paid; returns the invoice id."""
    send(hook, sub.checkout_subscription())
    send(hook, sub.created_event(price, start, end))
    paid = sub.invoice_paid(price, start, end)
    assert send(hook, paid).startswith("invoice paid: granted")
    return str(paid["data"]["object"]["id"])


def run_job(stack: Any, entry: str, path: str, *mine: str) -> dict[str, Any]:
    """POST a scheduled job as Cloud Scheduler does; none of ``mine`` may have failed."""
    response = stack.client(entry).post(path, headers=SCHEDULER)
    body: dict[str, Any] = response.json
    if response.status_code != 200:
        assert (response.status_code, body.get("code")) == (500, "scheduled_job_incomplete"), body
    for client_id in mine:
        assert client_id not in body.get("failed", {}), body
    return body


def daily(stack: Any, *mine: str) -> dict[str, Any]:
    return run_job(stack, "billing_jobs", "/jobs/daily", *mine)


def expire(stack: Any, *mine: str) -> dict[str, Any]:
    return run_job(stack, "credits_jobs", "/jobs/expire-buckets", *mine)


def entries(client_id: str) -> list[Entry]:
    return list(get_platform().ledger.store.entries(client_id))


def ledger_lines(client_id: str) -> list[tuple[str, int, int, int]]:
    """(type, amount, available delta, available after) of every entry, in order."""
    return [(e.type.value, e.amount, e.available_delta, e.available_after) for e in entries(client_id)]


def buckets(client_id: str) -> list[Bucket]:
    return sorted(get_platform().ledger.state(client_id).buckets.values(), key=lambda b: b.granted_at)


def balance(client_id: str) -> int:
    """Credits spendable now (buckets past their expiry do not count, swept or not)."""
    p = get_platform()
    return spendable(p.ledger.state(client_id), p.clock())


def available(client_id: str) -> int:
    """The cached ``available`` of the state document (what the sweep has recorded)."""
    return get_platform().ledger.state(client_id).available


def no_drift(*client_ids: str) -> None:
    for client_id in client_ids:
        assert get_platform().ledger.verify(client_id) == [], client_id


def month_key(client_id: str, moment: datetime) -> str:
    return f"free:{client_id}:{moment.strftime('%Y-%m')}"


def first_of_next_month(moment: datetime) -> datetime:
    return add_months(moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0), 1)


def spend(client_id: str, amount: int) -> None:
    ledger = get_platform().ledger
    hold = ledger.reserve(
        client_id,
        key=new_id("spend"),
        amount=amount,
        actor=Actor(kind="user", id="u"),
        purpose="test",
        ttl=timedelta(minutes=5),
        operation="generate_image",
    )
    ledger.capture(client_id, hold["hold_id"], amount=amount, actor=Actor(kind="task", id="t"), reason="test")


def expired_in(report: dict[str, Any], client_id: str) -> list[dict[str, Any]]:
    changed: list[dict[str, Any]] = report.get("changed", {}).get(client_id, [])
    return changed


# -- the seam -----------------------------------------------------------------------------------------


def test_the_overridden_catalog_is_what_the_functions_serve(
    stack: Any, catalog: UseCatalog, new_client: NewClient
) -> None:
    """GET /plans (billing_api) shows the Free allowance of the override, not the shipped 0."""
    shipped = Catalog.model_validate(json.loads(SHIPPED.read_text()))
    assert shipped.plans["free"].monthly_credits == 0  # why these branches need an override at all
    assert (shipped.rollover, shipped.pack_credit_expiry_days) == (False, None)
    catalog(free_monthly_credits=FREE)
    response = stack.client("billing_api").get("/plans", headers=stack.headers(new_client().client_id))
    assert response.status_code == 200, response.json
    free = next(plan for plan in response.json["plans"] if plan["id"] == "free")
    assert free["monthly_credits"] == FREE


# -- the Free plan's monthly allowance ----------------------------------------------------------------


def test_free_allowance_is_granted_once_a_month_and_expires_at_the_month_end(
    stack: Any, catalog: UseCatalog, clock: Clock, new_client: NewClient, hook: Any
) -> None:
    """Without rollover: once per month however often the job runs, expiring on the 1st of the next
    month (swept by expire-buckets), granted again next month; never to a paying client."""
    catalog(free_monthly_credits=FREE, rollover=False)
    free, paid = new_client(), new_client()
    start = clock.now - timedelta(days=1)
    subscribe(hook, paid, "price_growth_m", ts(start), ts(add_months(start, 1)))
    assert billing_of(stack, paid.client_id)["plan"] == "growth"

    first = daily(stack, free.client_id, paid.client_id)
    assert free.client_id in first["free_grants"] and paid.client_id not in first["free_grants"]
    daily(stack, free.client_id, paid.client_id)  # the same month again: the grant replays by its key
    assert ledger_lines(free.client_id) == [("grant", FREE, FREE, FREE)]
    [grant] = entries(free.client_id)
    assert grant.key == month_key(free.client_id, clock.now)
    assert grant.reason == f"Free plan credits for {clock.now.strftime('%Y-%m')}"
    [bucket] = buckets(free.client_id)
    assert (bucket.source, bucket.granted, bucket.remaining, bucket.expired) == (
        GrantSource.SUBSCRIPTION,
        FREE,
        FREE,
        False,
    )
    assert bucket.expires_at == first_of_next_month(clock.now)
    assert balance(free.client_id) == available(free.client_id) == FREE
    assert ledger_lines(paid.client_id) == [("grant", GROWTH, GROWTH, GROWTH)]  # the invoice only

    # Just before the month ends nothing expires; at the 1st the sweep takes the allowance.
    clock.set(first_of_next_month(clock.now) - timedelta(seconds=1))
    assert expired_in(expire(stack, free.client_id), free.client_id) == []
    assert balance(free.client_id) == FREE
    clock.set(first_of_next_month(clock.now) + timedelta(hours=1))
    swept = expire(stack, free.client_id)
    assert expired_in(swept, free.client_id) == [{"bucket_id": bucket.id, "amount": FREE}]
    assert expired_in(expire(stack, free.client_id), free.client_id) == []  # a second run changes nothing
    assert balance(free.client_id) == available(free.client_id) == 0

    # The new month's allowance, once.
    daily(stack, free.client_id, paid.client_id)
    daily(stack, free.client_id, paid.client_id)
    assert ledger_lines(free.client_id) == [
        ("grant", FREE, FREE, FREE),
        ("expire", FREE, -FREE, 0),
        ("grant", FREE, FREE, FREE),
    ]
    assert entries(free.client_id)[-1].key == month_key(free.client_id, clock.now)
    latest = buckets(free.client_id)[-1]
    assert latest.expires_at == first_of_next_month(clock.now)
    assert balance(free.client_id) == available(free.client_id) == FREE
    assert all(not e.key.startswith("free:") for e in entries(paid.client_id))
    no_drift(free.client_id, paid.client_id)


def test_a_client_moving_to_free_gets_the_allowance_the_day_it_moves(
    stack: Any, catalog: UseCatalog, clock: Clock, new_client: NewClient, hook: Any
) -> None:
    """A cancelled subscription stays paid (no allowance) until its period ends; the daily run that
    moves it to Free grants the allowance at once, after the paid credits expired."""
    catalog(free_monthly_credits=FREE, rollover=False)
    sub = new_client()
    start = clock.now - timedelta(days=1)
    end = add_months(start, 1)
    subscribe(hook, sub, "price_growth_m", ts(start), ts(end))
    assert send(hook, sub.deleted_event("price_growth_m", ts(start), ts(end))) == "moves to Free at period end"

    report = daily(stack, sub.client_id)
    assert sub.client_id not in report["free_grants"] and sub.client_id not in report["plan_changes"]
    assert ledger_lines(sub.client_id) == [("grant", GROWTH, GROWTH, GROWTH)]

    clock.set(end + timedelta(hours=1))
    report = daily(stack, sub.client_id)
    assert report["plan_changes"][sub.client_id] == "free"
    assert sub.client_id in report["free_grants"]
    assert billing_of(stack, sub.client_id)["plan"] == "free"
    # The allowance's commit first expires the Growth credits that ran out at the period end.
    assert ledger_lines(sub.client_id) == [
        ("grant", GROWTH, GROWTH, GROWTH),
        ("expire", GROWTH, -GROWTH, 0),
        ("grant", FREE, FREE, FREE),
    ]
    key = month_key(sub.client_id, clock.now)
    assert [e.key for e in entries(sub.client_id)[1:]] == [key, f"{key}#1"]  # one commit, two entries
    assert balance(sub.client_id) == available(sub.client_id) == FREE
    daily(stack, sub.client_id)
    assert len(entries(sub.client_id)) == 3
    no_drift(sub.client_id)


def test_free_allowance_with_rollover_never_expires_and_adds_up(
    stack: Any, catalog: UseCatalog, clock: Clock, new_client: NewClient
) -> None:
    """With rollover each month's allowance is a bucket without expiry: they add up and no sweep
    takes them."""
    catalog(free_monthly_credits=FREE, rollover=True)
    free = new_client()
    months = [clock.now, add_months(clock.now, 1), add_months(clock.now, 2)]
    for month in months:
        clock.set(month)
        daily(stack, free.client_id)
        daily(stack, free.client_id)
        assert expired_in(expire(stack, free.client_id), free.client_id) == []
    assert ledger_lines(free.client_id) == [
        ("grant", FREE, FREE, FREE),
        ("grant", FREE, FREE, 2 * FREE),
        ("grant", FREE, FREE, 3 * FREE),
    ]
    assert [e.key for e in entries(free.client_id)] == [month_key(free.client_id, m) for m in months]
    assert [b.expires_at for b in buckets(free.client_id)] == [None, None, None]
    clock.advance(days=400)
    assert expired_in(expire(stack, free.client_id), free.client_id) == []
    assert balance(free.client_id) == available(free.client_id) == 3 * FREE
    no_drift(free.client_id)


def test_shipped_free_plan_grants_nothing(stack: Any, catalog: UseCatalog, clock: Clock, new_client: NewClient) -> None:
    """The same job with the allowance at 0 (as shipped) lists and grants no free client."""
    catalog(free_monthly_credits=0)
    free = new_client()
    report = daily(stack, free.client_id)
    assert report["free_grants"] == []
    assert entries(free.client_id) == []


# -- rollover of subscription credits ------------------------------------------------------------------


def test_monthly_invoice_credits_expire_at_the_period_end_without_rollover(
    stack: Any, catalog: UseCatalog, clock: Clock, new_client: NewClient, hook: Any
) -> None:
    catalog(rollover=False)
    sub = new_client()
    start = clock.now - timedelta(days=1)
    end = add_months(start, 1)
    invoice_id = subscribe(hook, sub, "price_growth_m", ts(start), ts(end))
    [bucket] = buckets(sub.client_id)
    assert (bucket.reference, bucket.granted, bucket.expires_at) == (invoice_id, GROWTH, end)
    spend(sub.client_id, 300)

    clock.set(end - timedelta(seconds=1))
    assert expired_in(expire(stack, sub.client_id), sub.client_id) == []
    assert balance(sub.client_id) == available(sub.client_id) == GROWTH - 300
    clock.set(end)
    assert expired_in(expire(stack, sub.client_id), sub.client_id) == [{"bucket_id": bucket.id, "amount": 700}]
    assert expired_in(expire(stack, sub.client_id), sub.client_id) == []
    assert balance(sub.client_id) == available(sub.client_id) == 0

    # The next period's invoice brings a fresh allotment expiring at its own end.
    next_end = add_months(end, 1)
    cycle = sub.invoice_paid("price_growth_m", ts(end), ts(next_end), billing_reason="subscription_cycle")
    assert send(hook, cycle) == f"invoice paid: granted {GROWTH} credits"
    assert buckets(sub.client_id)[-1].expires_at == next_end
    assert [(t, a, d) for t, a, d, _ in ledger_lines(sub.client_id)] == [
        ("grant", GROWTH, GROWTH),
        ("reserve", 300, -300),
        ("capture", 300, 0),
        ("expire", 700, -700),
        ("grant", GROWTH, GROWTH),
    ]
    assert balance(sub.client_id) == available(sub.client_id) == GROWTH
    no_drift(sub.client_id)


def test_monthly_invoice_credits_roll_over_with_rollover(
    stack: Any, catalog: UseCatalog, clock: Clock, new_client: NewClient, hook: Any
) -> None:
    catalog(rollover=True)
    sub = new_client()
    start = clock.now - timedelta(days=1)
    end = add_months(start, 1)
    subscribe(hook, sub, "price_growth_m", ts(start), ts(end))
    spend(sub.client_id, 300)
    clock.set(end + timedelta(days=1))
    assert expired_in(expire(stack, sub.client_id), sub.client_id) == []
    assert balance(sub.client_id) == available(sub.client_id) == GROWTH - 300

    cycle = sub.invoice_paid("price_growth_m", ts(end), ts(add_months(end, 1)), billing_reason="subscription_cycle")
    send(hook, cycle)
    clock.advance(days=400)
    assert expired_in(expire(stack, sub.client_id), sub.client_id) == []
    assert [b.expires_at for b in buckets(sub.client_id)] == [None, None]
    assert [(t, a) for t, a, _, _ in ledger_lines(sub.client_id)] == [
        ("grant", GROWTH),
        ("reserve", 300),
        ("capture", 300),
        ("grant", GROWTH),
    ]
    assert balance(sub.client_id) == available(sub.client_id) == 2 * GROWTH - 300
    no_drift(sub.client_id)


@pytest.mark.parametrize("rollover", [False, True], ids=["expiring", "rollover"])
def test_annual_monthly_allotments_follow_rollover(
    stack: Any, catalog: UseCatalog, clock: Clock, new_client: NewClient, hook: Any, rollover: bool
) -> None:
    """Month 0 from the invoice, months 1 and 2 from the daily job: without rollover each expires at
    its month's end (the sweep takes the past ones); with rollover none expires and they add up."""
    catalog(rollover=rollover)
    sub = new_client()
    start = clock.now - timedelta(hours=2)
    subscribe(hook, sub, "price_growth_y", ts(start), ts(add_months(start, 12)))
    period_start = datetime.fromtimestamp(ts(start), UTC)

    for month in (1, 2):
        clock.set(add_months(period_start, month) + timedelta(hours=1))
        # The sweep first (a grant would expire the past month in its own commit).
        previous = buckets(sub.client_id)[month - 1]
        swept = expired_in(expire(stack, sub.client_id), sub.client_id)
        assert swept == ([] if rollover else [{"bucket_id": previous.id, "amount": GROWTH}])
        daily(stack, sub.client_id)
        daily(stack, sub.client_id)

    grants = [e for e in entries(sub.client_id) if e.type is EntryType.GRANT]
    assert len(grants) == 3
    expiries = [b.expires_at for b in buckets(sub.client_id)]
    assert expiries == ([None] * 3 if rollover else [add_months(period_start, m) for m in (1, 2, 3)])
    assert balance(sub.client_id) == available(sub.client_id) == (3 * GROWTH if rollover else GROWTH)
    expired = [e.amount for e in entries(sub.client_id) if e.type is EntryType.EXPIRE]
    assert expired == ([] if rollover else [GROWTH, GROWTH])
    no_drift(sub.client_id)


@pytest.mark.parametrize("rollover", [False, True], ids=["expiring", "rollover"])
def test_prorated_upgrade_credits_follow_rollover(
    stack: Any, catalog: UseCatalog, clock: Clock, new_client: NewClient, hook: Any, rollover: bool
) -> None:
    """The upgrade's prorated difference expires with the period (or never, with rollover)."""
    catalog(rollover=rollover)
    sub = new_client()
    start = clock.now - timedelta(days=10)
    end = add_months(start, 1)
    subscribe(hook, sub, "price_growth_m", ts(start), ts(end))
    outcome = send(hook, sub.updated_event("price_pro_m", ts(start), ts(end)))
    assert outcome.startswith("upgraded growth → pro, prorated")
    granted = int(outcome.rsplit("prorated ", 1)[1].split()[0])
    assert 0 < granted < PRO - GROWTH
    [upgrade] = [b for b in buckets(sub.client_id) if b.reference == sub.subscription]
    assert (upgrade.granted, upgrade.source) == (granted, GrantSource.SUBSCRIPTION)
    assert upgrade.expires_at == (None if rollover else end)

    clock.set(end + timedelta(hours=1))
    swept = expired_in(expire(stack, sub.client_id), sub.client_id)
    assert sorted(x["amount"] for x in swept) == ([] if rollover else sorted([GROWTH, granted]))
    assert balance(sub.client_id) == available(sub.client_id) == (GROWTH + granted if rollover else 0)
    no_drift(sub.client_id)


# -- pack credit expiry ---------------------------------------------------------------------------------


def test_pack_credits_with_an_expiry_expire_after_n_days(
    stack: Any, catalog: UseCatalog, clock: Clock, new_client: NewClient, hook: Any
) -> None:
    catalog(pack_credit_expiry_days=PACK_DAYS)
    sub = new_client()
    bought = sub.checkout_pack("pack_500")
    bought_at = datetime.fromtimestamp(bought["created"], UTC)  # when Stripe says it was paid
    assert send(hook, bought) == "granted 500 pack credits"
    [bucket] = buckets(sub.client_id)
    assert (bucket.source, bucket.granted, bucket.expires_at) == (
        GrantSource.PACK,
        500,
        bought_at + timedelta(days=PACK_DAYS),
    )
    view = stack.client("credits_api").get("/balance", headers=stack.headers(sub.client_id))
    assert view.status_code == 200, view.json
    assert view.json["available"] == 500
    assert datetime.fromisoformat(view.json["next_expiry"]) == bought_at + timedelta(days=PACK_DAYS)
    spend(sub.client_id, 120)

    clock.set(bought_at + timedelta(days=PACK_DAYS) - timedelta(seconds=1))
    assert expired_in(expire(stack, sub.client_id), sub.client_id) == []
    assert balance(sub.client_id) == available(sub.client_id) == 380
    clock.set(bought_at + timedelta(days=PACK_DAYS))
    assert expired_in(expire(stack, sub.client_id), sub.client_id) == [{"bucket_id": bucket.id, "amount": 380}]
    assert expired_in(expire(stack, sub.client_id), sub.client_id) == []
    assert balance(sub.client_id) == available(sub.client_id) == 0
    assert [(t, a, d) for t, a, d, _ in ledger_lines(sub.client_id)] == [
        ("grant", 500, 500),
        ("reserve", 120, -120),
        ("capture", 120, 0),
        ("expire", 380, -380),
    ]
    no_drift(sub.client_id)


def test_pack_credits_without_an_expiry_never_expire(
    stack: Any, catalog: UseCatalog, clock: Clock, new_client: NewClient, hook: Any
) -> None:
    catalog(pack_credit_expiry_days=None)
    sub = new_client()
    send(hook, sub.checkout_pack("pack_500"))
    [bucket] = buckets(sub.client_id)
    assert (bucket.source, bucket.granted, bucket.expires_at) == (GrantSource.PACK, 500, None)
    clock.advance(days=400)
    assert expired_in(expire(stack, sub.client_id), sub.client_id) == []
    assert balance(sub.client_id) == available(sub.client_id) == 500
    assert ledger_lines(sub.client_id) == [("grant", 500, 500, 500)]
    no_drift(sub.client_id)


def test_a_pack_refunded_after_its_credits_expired_removes_nothing(
    stack: Any, catalog: UseCatalog, clock: Clock, new_client: NewClient, hook: Any
) -> None:
    """The refund finds nothing unspent: it records a zero adjustment and the balance stays exact."""
    catalog(pack_credit_expiry_days=PACK_DAYS)
    sub = new_client()
    pi = new_id("pi")
    send(hook, sub.checkout_pack("pack_500", payment_intent=pi))
    clock.advance(days=PACK_DAYS, hours=1)
    [bucket] = buckets(sub.client_id)
    assert expired_in(expire(stack, sub.client_id), sub.client_id) == [{"bucket_id": bucket.id, "amount": 500}]
    assert send(hook, sub.charge_refunded(pi, 6000, 6000)) == "refund: removed 0 unspent credits"
    assert [(t, a, d) for t, a, d, _ in ledger_lines(sub.client_id)] == [
        ("grant", 500, 500),
        ("expire", 500, -500),
        ("adjust", 0, 0),
    ]
    assert balance(sub.client_id) == available(sub.client_id) == 0
    no_drift(sub.client_id)


@pytest.mark.parametrize(
    "days",
    [None, PACK_DAYS],
    ids=["no_expiry", "expiry"],
)
def test_a_pack_event_redelivered_after_a_lost_marker_replays_its_grant(
    stack: Any, catalog: UseCatalog, clock: Clock, new_client: NewClient, hook: Any, days: int | None
) -> None:
    """A crash after the ledger grant but before the event's commit (marker, purchase, payment link):
    Stripe redelivers minutes later and the grant must replay, so the purchase is recorded once and a
    later refund finds it."""
    catalog(pack_credit_expiry_days=days)
    sub = new_client()
    pi, session_id = new_id("pi"), new_id("cs_test")
    completed = sub.checkout_pack("pack_500", payment_intent=pi, session_id=session_id)
    bought_at = datetime.fromtimestamp(completed["created"], UTC)
    assert send(hook, completed) == "granted 500 pack credits"
    db = stack.platform.db
    lost = [f"stripe_events/{completed['id']}", f"clients/{sub.client_id}/purchases/{session_id}"]
    lost.append(f"stripe_payments/{pi}")
    for path in lost:  # what the lost commit would have written
        db.document(path).delete()

    clock.advance(minutes=5)
    response = deliver(hook, completed)
    assert response.status_code == 200, response.json
    assert response.json["outcome"] == "granted 500 pack credits"
    [bucket] = buckets(sub.client_id)
    assert bucket.expires_at == (None if days is None else bought_at + timedelta(days=days))
    assert ledger_lines(sub.client_id) == [("grant", 500, 500, 500)]
    purchase = db.document(f"clients/{sub.client_id}/purchases/{session_id}").get().to_dict()
    assert (purchase["bucket_id"], purchase["credits"]) == (bucket.id, 500)
    assert send(hook, sub.charge_refunded(pi, 6000, 6000)) == "refund: removed 500 unspent credits"
    assert balance(sub.client_id) == available(sub.client_id) == 0
    no_drift(sub.client_id)
