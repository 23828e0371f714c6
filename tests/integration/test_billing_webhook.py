"""The Stripe webhook end to end: signed events (signed in the test from the documented scheme, checked
by the real ``stripe`` library) through the ``stripe_webhook`` function into Firestore and the credit
ledger, delivered twice, out of order, stale, tampered and unsigned; and the daily billing job.

The platform runs on a settable clock (:class:`tests.billing_events.Clock`) so periods, grace and
proration are exact; Stripe's own timestamps (the signature's ``t``) stay real time.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.billing.events import add_months
from shared.ledger.model import Actor, EntryType, spendable
from shared.platform import get_platform
from tests.billing_events import (
    Clock,
    Subscriber,
    billing_of,
    deliver,
    encode,
    event,
    install_clock,
    marker,
    new_id,
    once_only_story,
    signature,
    ts,
)
from tests.catalog_helpers import new_asset

GROWTH, PRO, STARTER = 1000, 2500, 200
SLOTS = {"free": 25, "starter": 100, "growth": 500, "pro": 1000, "scale": 5000}
SCHEDULER = {"Authorization": "Bearer test-task-secret"}

# -- fixtures and helpers -----------------------------------------------------------------------------


def send(hook: Any, evt: dict[str, Any]) -> str:
    response = deliver(hook, evt)
    assert response.status_code == 200, response.json
    body = response.json
    assert body["received"] is True and body["id"] == evt["id"] and body["type"] == evt["type"]
    return str(body["outcome"])


def balance(client_id: str) -> int:
    p = get_platform()
    return spendable(p.ledger.state(client_id), p.clock())


def entries(client_id: str) -> list[Any]:
    return list(get_platform().ledger.store.entries(client_id))


def grants_by_reference(client_id: str) -> Counter[str | None]:
    """How many grant entries each bucket reference (invoice, session, subscription) has."""
    ledger = get_platform().ledger
    buckets = ledger.state(client_id).buckets
    return Counter(buckets[e.bucket_id].reference for e in entries(client_id) if e.type is EntryType.GRANT)


def snapshot(stack: Any, client_id: str) -> dict[str, Any]:
    """Everything an event may change for a client."""
    state = get_platform().ledger.state(client_id).model_dump(mode="json", exclude={"updated_at"})
    purchases = stack.platform.db.collection("clients").document(client_id).collection("purchases").stream()
    return {
        "billing": billing_of(stack, client_id),
        "ledger": state,
        "entries": len(entries(client_id)),
        "purchases": {p.id: p.to_dict() for p in purchases},
    }


def period(start: datetime, months: int = 1) -> tuple[int, int]:
    return ts(start), ts(add_months(start, months))


def daily(stack: Any) -> dict[str, Any]:
    response = stack.client("billing_jobs").post("/jobs/daily", headers=SCHEDULER)
    assert response.status_code == 200, response.json
    report: dict[str, Any] = response.json
    return report


def subscribe(hook: Any, sub: Subscriber, price: str, start: int, end: int, **invoice: Any) -> str:
    """checkout completed, subscription created, first invoice paid; returns the invoice id."""
    send(hook, sub.checkout_subscription())
    send(hook, sub.created_event(price, start, end))
    paid = sub.invoice_paid(price, start, end, **invoice)
    assert send(hook, paid).startswith("invoice paid: granted")
    return str(paid["data"]["object"]["id"])


def problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.json)
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = response.json
    assert body["code"] == code, body
    return body


# -- signatures and payloads ------------------------------------------------------------------------


def test_signed_event_is_applied_once_and_every_replay_changes_nothing(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    start, end = period(clock.now - timedelta(days=1))
    pi = new_id("pi")
    lifecycle = once_only_story(sub, start, end, pi)
    for evt, outcome in lifecycle:
        before = snapshot(stack, sub.client_id)
        assert marker(stack, evt["id"]) is None
        assert send(hook, evt) == outcome
        after = snapshot(stack, sub.client_id)
        # The subscription's own events say which subscription the client has (review D8): the checkout
        # only links the customer, which ensure_customer did before the Checkout started.
        assert after != before or outcome in ("ignored", "subscription checkout linked"), (
            f"{evt['type']} changed nothing"
        )
        stored = marker(stack, evt["id"])
        assert stored is not None and stored["outcome"] == outcome and stored["type"] == evt["type"]
        for _ in range(2):
            assert send(hook, evt) == "duplicate"
            assert snapshot(stack, sub.client_id) == after
        assert marker(stack, evt["id"]) == stored

    billing = billing_of(stack, sub.client_id)
    assert billing["plan"] == "free" and billing["pending_plan"] is None and billing["past_due_since"] is None
    assert balance(sub.client_id) == GROWTH  # the pack came and went
    assert get_platform().ledger.verify(sub.client_id) == []


def test_a_redelivery_after_a_lost_marker_grants_nothing_twice(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    """A crash between the ledger grant and the marker commit: Stripe retries, the grant replays."""
    start, end = period(clock.now - timedelta(days=1))
    pi = new_id("pi")
    events = [sub.invoice_paid("price_growth_m", start, end), sub.checkout_pack("pack_100", payment_intent=pi)]
    for evt in events:
        send(hook, evt)
    before = balance(sub.client_id), len(entries(sub.client_id))
    for evt in events:
        stack.platform.db.collection("stripe_events").document(evt["id"]).delete()
        assert send(hook, evt) != "duplicate"  # processed again...
    assert (balance(sub.client_id), len(entries(sub.client_id))) == before == (1100, 2)  # ...to the same effect


def test_an_upgrade_redelivered_later_after_a_lost_commit_replays_the_same_prorated_grant(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    """The prorated amount is taken at the event's time, not the delivery's: minutes later the
    redelivery asks the ledger for the same grant, which replays (no 409, nothing granted twice)."""
    start, end = period(clock.now - timedelta(days=10))
    subscribe(hook, sub, "price_growth_m", start, end)
    client = stack.platform.db.collection("clients").document(sub.client_id)
    billing_before = client.get().to_dict()
    upgrade = sub.updated_event("price_pro_m", start, end)
    first = send(hook, upgrade)
    assert first.startswith("upgraded growth → pro, prorated")
    after = balance(sub.client_id), len(entries(sub.client_id))

    stack.platform.db.collection("stripe_events").document(upgrade["id"]).delete()  # the commit was lost
    client.set(billing_before)
    clock.advance(minutes=7)
    assert send(hook, upgrade) == first
    assert (balance(sub.client_id), len(entries(sub.client_id))) == after
    assert get_platform().ledger.verify(sub.client_id) == []


def _no_effect(stack: Any, sub: Subscriber, evt: dict[str, Any], before: dict[str, Any]) -> None:
    assert marker(stack, evt["id"]) is None
    assert snapshot(stack, sub.client_id) == before


@pytest.mark.parametrize(
    "how",
    ["wrong_secret", "tampered_body", "expired", "missing", "garbage", "no_v1", "v0_only", "empty_v1"],
)
def test_bad_signatures_are_refused_and_nothing_is_written(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock, how: str
) -> None:
    start, end = period(clock.now)
    evt = sub.created_event("price_pro_m", start, end)
    payload = encode(evt)
    now = int(time.time())
    headers: dict[str, Any] = {
        "wrong_secret": {"secret": "whsec_someone_else"},
        "tampered_body": {"header": f"t={now},v1={signature(payload.replace(b'pro', b'scale', 1), timestamp=now)}"},
        "expired": {"timestamp": now - 301},
        "missing": {"omit_header": True},
        "garbage": {"header": "not a signature"},
        "no_v1": {"header": f"t={now}"},
        "v0_only": {"header": f"t={now},v0={signature(payload, timestamp=now)}"},
        "empty_v1": {"header": f"t={now},v1="},
    }[how]
    before = snapshot(stack, sub.client_id)
    body = problem(deliver(hook, payload, **headers), 400, "webhook_signature_invalid")
    assert body["status"] == 400
    _no_effect(stack, sub, evt, before)
    # The same bytes, signed properly, are applied: the refusal was about the signature alone.
    assert send(hook, evt) == "plan pro"


def test_signature_within_tolerance_and_during_secret_rotation_is_accepted(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    start, end = period(clock.now)
    old = deliver(hook, sub.created_event("price_starter_m", start, end), timestamp=int(time.time()) - 290)
    assert old.status_code == 200 and old.json["outcome"] == "plan starter"
    # Rolling the endpoint secret: Stripe signs with both, one v1 per secret.
    evt = sub.updated_event("price_growth_m", start, end)
    payload, now = encode(evt), int(time.time())
    rotated = (
        f"t={now},v1={signature(payload, secret='whsec_old', timestamp=now)},v1={signature(payload, timestamp=now)}"
    )
    response = deliver(hook, payload, header=rotated)
    assert response.status_code == 200 and response.json["outcome"].startswith("upgraded starter → growth")


# A signed body that is not an event (not JSON, a list, no id/type) is a poison event: quarantined and
# acknowledged, not a 400 Stripe would retry for days (tests/integration/test_billing_poison.py).


def test_an_ignored_event_type_is_acknowledged_and_recorded(stack: Any, hook: Any, sub: Subscriber) -> None:
    evt = event("payment_method.attached", {"id": new_id("pm"), "object": "payment_method"}, sub.tick())
    before = snapshot(stack, sub.client_id)
    assert send(hook, evt) == "ignored"
    stored = marker(stack, evt["id"])
    assert stored is not None and (stored["outcome"], stored["client_id"], stored["type"]) == (
        "ignored",
        None,
        "payment_method.attached",
    )
    assert send(hook, evt) == "duplicate"
    assert snapshot(stack, sub.client_id) == before


# -- order ------------------------------------------------------------------------------------------


def _sequence(sub: Subscriber, now: datetime) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    start, end = period(now - timedelta(days=2))
    events = [
        sub.checkout_subscription(),
        sub.created_event("price_growth_m", start, end),
        sub.invoice_paid("price_growth_m", start, end),
        sub.updated_event("price_growth_m", start, end, cancel_at_period_end=True),
    ]
    expected = {
        "plan": "growth",
        "product_slots": SLOTS["growth"],
        "interval": "monthly",
        "subscription_id": sub.subscription,
        "subscription_status": "active",
        "stripe_customer_id": sub.customer,
        "cancel_at_period_end": True,
        "current_period_start": datetime.fromtimestamp(start, UTC),
        "current_period_end": datetime.fromtimestamp(end, UTC),
        "pending_plan": None,
        "past_due_since": None,
    }
    return events, expected


# 0 checkout completed, 1 subscription created, 2 first invoice paid, 3 subscription updated. In order,
# reversed, and each event first and last at least once (all 24 orders pass; these 8 keep the suite fast).
ORDERS = ["0123", "3210", "2013", "3021", "1230", "0312", "2301", "1302"]
assert all(sorted(o) == ["0", "1", "2", "3"] for o in ORDERS)


@pytest.mark.parametrize("order", ORDERS)
def test_any_delivery_order_ends_in_the_same_state(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock, order: str
) -> None:
    events, expected = _sequence(sub, clock.now)
    shuffled = [events[int(i)] for i in order]
    for evt in shuffled:
        send(hook, evt)
    for evt in reversed(shuffled):  # and every one of them again, in yet another order
        assert send(hook, evt) == "duplicate"

    billing = billing_of(stack, sub.client_id)
    assert {k: billing.get(k) for k in expected} == expected
    assert balance(sub.client_id) == GROWTH
    invoice_id = events[2]["data"]["object"]["id"]
    assert grants_by_reference(sub.client_id) == Counter({invoice_id: 1})
    assert get_platform().ledger.verify(sub.client_id) == []
    # The newest subscription-changing event is the one recorded as applied.
    assert billing["last_event_created"] == events[3]["created"]


@pytest.mark.parametrize("order", ["0123", "3210", "3021", "0312", "2301"])
def test_an_upgrade_that_overtakes_the_first_events_still_grants_its_share(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock, order: str
) -> None:
    """Growth bought, then upgraded to Pro with half of June left; the update may arrive first."""
    clock.set(datetime(2026, 6, 16, tzinfo=UTC))
    start, end = ts(datetime(2026, 6, 1, tzinfo=UTC)), ts(datetime(2026, 7, 1, tzinfo=UTC))
    invoice = sub.invoice_paid("price_growth_m", start, end)
    events = [
        sub.checkout_subscription(),
        sub.created_event("price_growth_m", start, end),
        invoice,
        sub.updated_event(
            "price_pro_m", start, end, previous={"items": {"data": [{"price": {"id": "price_growth_m"}}]}}
        ),
    ]
    for evt in [events[int(i)] for i in order]:
        send(hook, evt)
    billing = billing_of(stack, sub.client_id)
    assert (billing["plan"], billing["product_slots"], billing["pending_plan"]) == ("pro", SLOTS["pro"], None)
    assert balance(sub.client_id) == GROWTH + 750
    assert grants_by_reference(sub.client_id) == Counter({invoice["data"]["object"]["id"]: 1, sub.subscription: 1})


def test_an_old_subscription_update_after_a_newer_one_is_ignored(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    start, end = period(clock.now - timedelta(days=3))
    subscribe(hook, sub, "price_growth_m", start, end)
    created = sub.tick()
    newer = sub.updated_event("price_growth_m", start, end, cancel_at_period_end=True, at=created + 20)
    past_due = sub.updated_event("price_growth_m", start, end, status="past_due", at=created + 10)
    older_plan = sub.updated_event("price_starter_m", start, end, at=created + 5)
    assert send(hook, newer) == "subscription active"
    before = snapshot(stack, sub.client_id)
    for stale in (past_due, older_plan):
        assert send(hook, stale).startswith("stale")
        assert snapshot(stack, sub.client_id) == before
    billing = billing_of(stack, sub.client_id)
    assert billing["subscription_status"] == "active" and billing["past_due_since"] is None
    assert billing["plan"] == "growth" and billing["pending_plan"] is None and billing["cancel_at_period_end"] is True


def test_an_old_payment_failure_after_the_invoice_was_paid_is_ignored(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    start, end = period(clock.now - timedelta(days=3))
    subscribe(hook, sub, "price_growth_m", start, end)
    created = sub.tick()
    retry_paid = sub.invoice_paid("price_growth_m", start, end, billing_reason="subscription_cycle", at=created + 20)
    failed_first = sub.payment_failed("price_growth_m", start, end, at=created + 10)
    send(hook, retry_paid)
    before = billing_of(stack, sub.client_id)
    assert send(hook, failed_first).startswith("stale")
    after = billing_of(stack, sub.client_id)
    assert after == before
    assert after["subscription_status"] == "active" and after["past_due_since"] is None


# -- plan changes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["current_api", "legacy_api"])
def test_upgrade_mid_period_grants_the_prorated_difference_at_once(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock, legacy: bool
) -> None:
    # A 30-day period with exactly half of it left.
    period_start, period_end = datetime(2026, 6, 1, tzinfo=UTC), datetime(2026, 7, 1, tzinfo=UTC)
    clock.set(datetime(2026, 6, 16, tzinfo=UTC))
    start, end = ts(period_start), ts(period_end)
    invoice_id = subscribe(hook, sub, "price_growth_m", start, end, legacy=legacy)
    assert balance(sub.client_id) == GROWTH

    upgrade = sub.updated_event(
        "price_pro_m", start, end, legacy=legacy, previous={"items": {"data": [{"price": {"id": "price_growth_m"}}]}}
    )
    assert send(hook, upgrade) == "upgraded growth → pro, prorated 750 credits"
    assert (PRO - GROWTH) * 15 // 30 == 750
    billing = billing_of(stack, sub.client_id)
    assert billing["plan"] == "pro" and billing["product_slots"] == SLOTS["pro"]
    assert balance(sub.client_id) == GROWTH + 750
    state = get_platform().ledger.state(sub.client_id)
    prorated = [b for b in state.buckets.values() if b.reference == sub.subscription]
    assert [(b.granted, b.expires_at) for b in prorated] == [(750, period_end)]

    # The same change reported again (a new event, e.g. Stripe's follow-up update) grants nothing more.
    assert send(hook, sub.updated_event("price_pro_m", start, end, legacy=legacy)) == "subscription active"
    assert send(hook, upgrade) == "duplicate"
    assert balance(sub.client_id) == GROWTH + 750
    assert grants_by_reference(sub.client_id) == Counter({invoice_id: 1, sub.subscription: 1})


def test_upgrade_on_real_time_with_half_the_period_left(stack: Any, hook: Any, sub: Subscriber) -> None:
    """The same on the wall clock: start = now - 15 d, end = now + 15 d (±1 credit for seconds elapsed)."""
    from shared.platform import set_platform

    set_platform(stack.platform)  # the real clock
    now = datetime.now(UTC)
    start, end = ts(now - timedelta(days=15)), ts(now + timedelta(days=15))
    subscribe(hook, sub, "price_growth_m", start, end)
    upgrade = sub.updated_event("price_pro_m", start, end)
    outcome = send(hook, upgrade)
    granted = int(outcome.rsplit("prorated ", 1)[1].split()[0])
    # Prorated over the calendar month that starts the period (28-31 days), as Stripe bills, from the
    # moment Stripe says the change happened.
    month_end = min(add_months(datetime.fromtimestamp(start, UTC), 1), datetime.fromtimestamp(end, UTC))
    changed_at = datetime.fromtimestamp(upgrade["created"], UTC)
    expected = (PRO - GROWTH) * (month_end - changed_at).total_seconds() / (month_end.timestamp() - start)
    assert expected - 2 <= granted <= expected
    assert balance(sub.client_id) == GROWTH + granted


def test_downgrade_waits_for_the_period_end_and_the_daily_job(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    start, end = period(clock.now - timedelta(days=10))
    subscribe(hook, sub, "price_pro_m", start, end)
    credits = balance(sub.client_id)
    assert send(hook, sub.updated_event("price_starter_m", start, end)) == "downgrade to starter at period end"
    billing = billing_of(stack, sub.client_id)
    assert billing["plan"] == "pro" and billing["product_slots"] == SLOTS["pro"]
    assert billing["pending_plan"] == "starter"
    assert billing["pending_plan_at"] == datetime.fromtimestamp(end, UTC)
    view = stack.client("billing_api").get("/subscription", headers=stack.headers(sub.client_id)).json
    assert view["plan"] == "pro" and view["pending_plan"] == "starter"

    report = daily(stack)
    assert sub.client_id not in report["plan_changes"]
    assert billing_of(stack, sub.client_id)["plan"] == "pro"

    clock.set(datetime.fromtimestamp(end, UTC) + timedelta(minutes=5))
    report = daily(stack)
    assert report["plan_changes"][sub.client_id] == "starter"
    billing = billing_of(stack, sub.client_id)
    assert billing["plan"] == "starter" and billing["product_slots"] == SLOTS["starter"]
    assert billing["pending_plan"] is None and "pending_plan_at" not in billing
    assert sub.client_id not in daily(stack)["plan_changes"]  # done once
    assert balance(sub.client_id) == 0  # the pro month's credits expired at its end; no credits came with it
    assert credits == PRO


def test_a_withdrawn_downgrade_is_cleared(stack: Any, hook: Any, sub: Subscriber, clock: Clock) -> None:
    start, end = period(clock.now - timedelta(days=10))
    subscribe(hook, sub, "price_pro_m", start, end)
    send(hook, sub.updated_event("price_starter_m", start, end))
    assert send(hook, sub.updated_event("price_pro_m", start, end)) == "pending plan change withdrawn"
    billing = billing_of(stack, sub.client_id)
    assert billing["plan"] == "pro" and billing["pending_plan"] is None and billing["pending_plan_at"] is None


def test_deletion_moves_to_free_at_period_end(stack: Any, hook: Any, sub: Subscriber, clock: Clock) -> None:
    start, end = period(clock.now - timedelta(days=10))
    subscribe(hook, sub, "price_growth_m", start, end)
    assert send(hook, sub.deleted_event("price_growth_m", start, end)) == "moves to Free at period end"
    billing = billing_of(stack, sub.client_id)
    assert billing["plan"] == "growth" and billing["product_slots"] == SLOTS["growth"]
    assert billing["subscription_status"] == "canceled"
    assert (billing["pending_plan"], billing["pending_plan_at"]) == ("free", datetime.fromtimestamp(end, UTC))

    clock.set(datetime.fromtimestamp(end, UTC) + timedelta(hours=1))
    assert daily(stack)["plan_changes"][sub.client_id] == "free"
    billing = billing_of(stack, sub.client_id)
    assert billing["plan"] == "free" and billing["product_slots"] == SLOTS["free"] and billing["interval"] is None


def test_deletion_after_the_period_ended_moves_to_free_at_once(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    start, end = period(clock.now - timedelta(days=40))
    subscribe(hook, sub, "price_growth_m", start, end)
    assert send(hook, sub.deleted_event("price_growth_m", start, end)) == "moved to Free"
    billing = billing_of(stack, sub.client_id)
    assert billing["plan"] == "free" and billing["product_slots"] == SLOTS["free"]
    assert billing["pending_plan"] is None and billing["interval"] is None
    view = stack.client("billing_api").get("/subscription", headers=stack.headers(sub.client_id)).json
    assert (view["plan"], view["product_slots"], view["status"]) == ("free", 25, "canceled")


# -- payment failures -------------------------------------------------------------------------------


def test_plan_changes_and_failed_payments_are_domain_events_of_their_commits(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    """The webhook's commit carries ``billing.subscription_changed`` when the plan or status moves and
    ``billing.payment_failed`` for a failed charge; a redelivered event adds none."""
    from google.cloud.firestore import FieldFilter

    def events() -> list[dict[str, Any]]:
        query = stack.platform.db.collection("outbox").where(filter=FieldFilter("client_id", "==", sub.client_id))
        return sorted((s.to_dict() for s in query.stream()), key=lambda e: (e["sequence"], e["type"]))

    start, end = period(clock.now - timedelta(days=1))
    subscribe(hook, sub, "price_growth_m", start, end)
    changed = [e for e in events() if e["type"] == "billing.subscription_changed"]
    assert [(e["payload"]["previous_plan"], e["payload"]["plan"], e["payload"]["status"]) for e in changed] == [
        ("free", "growth", "active")
    ]
    failure = sub.payment_failed("price_growth_m", start, end)
    send(hook, failure)
    send(hook, failure)  # Stripe delivers more than once: the duplicate commits nothing
    kinds = [(e["type"], e["payload"].get("status")) for e in events()]
    assert kinds.count(("billing.payment_failed", None)) == 1
    assert ("billing.subscription_changed", "past_due") in kinds
    [failed] = [e for e in events() if e["type"] == "billing.payment_failed"]
    assert failed["subject"]["kind"] == "invoice" and failed["payload"]["attempt_count"] >= 1


def test_payment_failure_blocks_paid_work_after_the_grace_period(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    start, end = period(clock.now - timedelta(days=1))
    subscribe(hook, sub, "price_growth_m", start, end)
    gen, headers = stack.client("generate_api"), stack.headers(sub.client_id)
    job = {"items": [{"prompt": "a ceramic mug on an oak desk"}]}

    failed_at = clock.now
    assert send(hook, sub.payment_failed("price_growth_m", start, end)) == "payment failed: past due"
    billing = billing_of(stack, sub.client_id)
    assert billing["subscription_status"] == "past_due" and billing["past_due_since"] == failed_at
    # A second failure (Stripe's retry of the charge) does not restart the grace period.
    clock.advance(days=1)
    send(hook, sub.payment_failed("price_growth_m", start, end))
    assert billing_of(stack, sub.client_id)["past_due_since"] == failed_at

    clock.set(failed_at + timedelta(days=3) - timedelta(seconds=1))
    assert gen.post("/jobs", json=job, headers=headers).status_code == 202
    view = stack.client("billing_api").get("/subscription", headers=headers).json
    assert view["status"] == "past_due" and view["paid_operations_blocked"] is False

    clock.set(failed_at + timedelta(days=3))  # the grace period (plans.json: 3 days) is over
    body = problem(gen.post("/jobs", json=job, headers=headers), 402, "payment_past_due")
    assert body["grace_period_days"] == 3
    assert datetime.fromisoformat(body["past_due_since"]) == failed_at
    assert "portal" in body["how_to_fix"]
    # Paid edits are blocked the same way; free ones (a crop) still work.
    edit = stack.client("edit_api")
    asset_id = new_asset(stack, stack.client("catalog_api"), headers, sub.client_id)
    upscale = {"asset_ids": [asset_id], "operations": [{"op": "upscale", "size": "2K"}]}
    held = balance(sub.client_id)
    problem(edit.post("/edits", json=upscale, headers=headers), 402, "payment_past_due")
    assert balance(sub.client_id) == held
    crop = {"asset_ids": [asset_id], "operations": [{"op": "crop", "box": {"x": 0, "y": 0, "width": 10, "height": 10}}]}
    assert edit.post("/edits", json=crop, headers=headers).status_code == 200
    view = stack.client("billing_api").get("/subscription", headers=headers).json
    assert view["paid_operations_blocked"] is True

    # The card is fixed: Stripe's retry succeeds and the block is gone.
    assert send(hook, sub.invoice_paid("price_growth_m", start, end, billing_reason="subscription_cycle")).startswith(
        "invoice paid"
    )
    billing = billing_of(stack, sub.client_id)
    assert billing["subscription_status"] == "active" and billing["past_due_since"] is None
    assert gen.post("/jobs", json=job, headers=headers).status_code == 202
    assert edit.post("/edits", json=upscale, headers=headers).status_code == 202


def test_a_subscription_cancelled_for_non_payment_ends_the_block_on_free(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    """Stripe's dunning gives up and cancels: the client is on Free at once (the unpaid period grants
    nothing more) and no longer blocked, so a pack bought afterwards can be spent."""
    start, end = period(clock.now - timedelta(days=1))
    subscribe(hook, sub, "price_growth_m", start, end)
    gen, headers = stack.client("generate_api"), stack.headers(sub.client_id)
    job = {"items": [{"prompt": "a ceramic mug on an oak desk"}]}
    send(hook, sub.payment_failed("price_growth_m", start, end))
    clock.advance(days=5)
    problem(gen.post("/jobs", json=job, headers=headers), 402, "payment_past_due")

    assert send(hook, sub.deleted_event("price_growth_m", start, end)) == "moved to Free (unpaid)"
    billing = billing_of(stack, sub.client_id)
    assert (billing["plan"], billing["past_due_since"], billing["pending_plan"]) == ("free", None, None)
    assert billing["product_slots"] == SLOTS["free"]
    assert gen.post("/jobs", json=job, headers=headers).status_code == 202
    view = stack.client("billing_api").get("/subscription", headers=headers).json
    assert view["paid_operations_blocked"] is False and view["plan"] == "free"


@pytest.mark.parametrize("late", ["invoice.payment_failed", "customer.subscription.updated"])
def test_the_last_failed_payment_arriving_after_the_cancellation_it_caused_changes_nothing(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock, late: str
) -> None:
    """Stripe stamps the final failed charge and the cancellation with the same second and may deliver
    them in either order: after the cancellation, the client stays on Free, unblocked, free to subscribe."""
    start, end = period(clock.now - timedelta(days=1))
    subscribe(hook, sub, "price_growth_m", start, end)
    send(hook, sub.payment_failed("price_growth_m", start, end))
    clock.advance(days=5)
    same_second = sub.tick()
    assert send(hook, sub.deleted_event("price_growth_m", start, end, at=same_second)) == "moved to Free (unpaid)"
    before = snapshot(stack, sub.client_id)
    if late == "invoice.payment_failed":
        stray = sub.payment_failed("price_growth_m", start, end, at=same_second)
    else:
        stray = sub.updated_event("price_growth_m", start, end, status="past_due", at=same_second)
    assert "ended" in send(hook, stray)
    assert snapshot(stack, sub.client_id) == before
    billing = billing_of(stack, sub.client_id)
    assert (billing["plan"], billing["past_due_since"], billing["subscription_status"]) == ("free", None, "canceled")
    job = {"items": [{"prompt": "a mug"}]}
    assert stack.client("generate_api").post("/jobs", json=job, headers=stack.headers(sub.client_id)).status_code == 202


def test_subscription_past_due_status_starts_the_grace_period_too(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    start, end = period(clock.now - timedelta(days=1))
    subscribe(hook, sub, "price_growth_m", start, end)
    assert send(hook, sub.updated_event("price_growth_m", start, end, status="past_due")) == "subscription past_due"
    assert billing_of(stack, sub.client_id)["past_due_since"] == clock.now
    assert send(hook, sub.updated_event("price_growth_m", start, end)) == "subscription active"
    assert billing_of(stack, sub.client_id)["past_due_since"] is None


# -- packs and refunds ------------------------------------------------------------------------------


def spend(client_id: str, amount: int) -> None:
    ledger = get_platform().ledger
    key = new_id("spend")
    hold = ledger.reserve(
        client_id,
        key=key,
        amount=amount,
        actor=Actor(kind="user", id="u"),
        purpose="test",
        ttl=timedelta(minutes=5),
        operation="generate_image",
    )
    ledger.capture(client_id, hold["hold_id"], amount=amount, actor=Actor(kind="task", id="t"), reason="test")


def test_pack_purchase_grants_its_credits_once(stack: Any, hook: Any, sub: Subscriber) -> None:
    pi, session_id = new_id("pi"), new_id("cs_test")
    completed = sub.checkout_pack("pack_500", payment_intent=pi, session_id=session_id)
    assert send(hook, completed) == "granted 500 pack credits"
    assert balance(sub.client_id) == 500
    assert send(hook, completed) == "duplicate"
    # Another event about the same paid session (a different event id) grants nothing either.
    again = sub.checkout_pack(
        "pack_500", payment_intent=pi, session_id=session_id, type_="checkout.session.async_payment_succeeded"
    )
    send(hook, again)
    assert balance(sub.client_id) == 500
    assert grants_by_reference(sub.client_id) == Counter({pi: 1})
    purchase = stack.platform.db.document(f"clients/{sub.client_id}/purchases/{session_id}").get().to_dict()
    assert purchase["pack_id"] == "pack_500" and purchase["credits"] == 500 and purchase["payment_intent"] == pi


def test_delayed_pack_payment_grants_when_it_succeeds(stack: Any, hook: Any, sub: Subscriber) -> None:
    session_id = new_id("cs_test")
    pending = sub.checkout_pack("pack_100", payment_status="unpaid", session_id=session_id)
    assert send(hook, pending) == "pack payment pending"
    assert balance(sub.client_id) == 0
    succeeded = sub.checkout_pack("pack_100", session_id=session_id, type_="checkout.session.async_payment_succeeded")
    assert send(hook, succeeded) == "granted 100 pack credits"
    assert balance(sub.client_id) == 100


def test_full_refund_removes_only_the_unspent_pack_credits(stack: Any, hook: Any, sub: Subscriber) -> None:
    pi = new_id("pi")
    send(hook, sub.checkout_pack("pack_500", payment_intent=pi))
    spend(sub.client_id, 180)
    assert balance(sub.client_id) == 320
    refund = sub.charge_refunded(pi, 6000, 6000)
    assert send(hook, refund) == "refund: removed 320 unspent credits"
    assert balance(sub.client_id) == 0
    assert send(hook, refund) == "duplicate"
    # Stripe sends charge.refunded again for any later change to the charge: nothing more goes.
    assert send(hook, sub.charge_refunded(pi, 6000, 6000, charge_id=refund["data"]["object"]["id"])) == (
        "refund already applied"
    )
    state = get_platform().ledger.state(sub.client_id)
    assert state.available == 0 and state.reserved == 0
    assert get_platform().ledger.verify(sub.client_id) == []
    adjustments = [e for e in entries(sub.client_id) if e.type is EntryType.ADJUST]
    assert [e.available_delta for e in adjustments] == [-320]


def test_partial_refunds_remove_the_proportional_part(stack: Any, hook: Any, sub: Subscriber) -> None:
    pi = new_id("pi")
    send(hook, sub.checkout_pack("pack_500", payment_intent=pi))
    charge = new_id("ch")
    assert send(hook, sub.charge_refunded(pi, 6000, 1500, charge_id=charge)) == "refund: removed 125 unspent credits"
    assert balance(sub.client_id) == 375
    replay = sub.charge_refunded(pi, 6000, 1500, charge_id=charge)
    assert send(hook, replay) == "refund already applied"
    assert send(hook, sub.charge_refunded(pi, 6000, 6000, charge_id=charge)) == "refund: removed 375 unspent credits"
    assert balance(sub.client_id) == 0


def test_credits_on_hold_when_the_pack_is_refunded_do_not_come_back(stack: Any, hook: Any, sub: Subscriber) -> None:
    pi = new_id("pi")
    send(hook, sub.checkout_pack("pack_500", payment_intent=pi))
    ledger = get_platform().ledger
    hold = ledger.reserve(
        sub.client_id, key=new_id("k"), amount=300, actor=Actor(kind="user", id="u"), purpose="job",
        ttl=timedelta(minutes=5),
    )  # fmt: skip
    assert send(hook, sub.charge_refunded(pi, 6000, 6000)) == "refund: removed 200 unspent credits"
    ledger.release(sub.client_id, hold["hold_id"], actor=Actor(kind="task", id="t"), reason="the job failed")
    assert balance(sub.client_id) == 0  # the refunded pack's reserved credits do not come back
    assert ledger.verify(sub.client_id) == []


def test_refund_of_a_payment_that_bought_no_pack_is_ignored(stack: Any, hook: Any, sub: Subscriber) -> None:
    send(hook, sub.checkout_pack("pack_100"))
    assert send(hook, sub.charge_refunded(new_id("pi"), 6000, 6000)).endswith("ignored")
    assert balance(sub.client_id) == 100


# -- invoices and allotments ------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["current_api", "legacy_api"])
def test_invoice_paid_grants_the_period_credits_expiring_at_its_end(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock, legacy: bool
) -> None:
    start, end = period(clock.now - timedelta(days=1))
    invoice_id = subscribe(hook, sub, "price_scale_m", start, end, legacy=legacy)
    state = get_platform().ledger.state(sub.client_id)
    [bucket] = state.buckets.values()
    assert (bucket.granted, bucket.reference, bucket.expires_at) == (
        10000,
        invoice_id,
        datetime.fromtimestamp(end, UTC),
    )
    assert billing_of(stack, sub.client_id)["plan"] == "scale"


@pytest.mark.parametrize("reason", ["manual", "subscription_update", "subscription_threshold"])
def test_invoices_that_are_not_a_period_grant_nothing(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock, reason: str
) -> None:
    start, end = period(clock.now)
    outcome = send(hook, sub.invoice_paid("price_growth_m", start, end, billing_reason=reason))
    assert outcome == f"invoice paid ({reason}): no allotment"
    assert balance(sub.client_id) == 0


def test_annual_plan_gets_its_monthly_allotment_from_the_daily_job(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    first = clock.now - timedelta(hours=2)
    start, end = period(first, 12)
    invoice_id = subscribe(hook, sub, "price_growth_y", start, end)
    assert billing_of(stack, sub.client_id)["interval"] == "annual"
    assert balance(sub.client_id) == GROWTH  # month 0 came with the invoice
    [month0] = get_platform().ledger.state(sub.client_id).buckets.values()
    assert month0.expires_at == add_months(datetime.fromtimestamp(start, UTC), 1)

    seq = len(entries(sub.client_id))
    daily(stack)
    daily(stack)
    assert len(entries(sub.client_id)) == seq  # month 0 again is a replay
    assert balance(sub.client_id) == GROWTH

    clock.set(add_months(datetime.fromtimestamp(start, UTC), 2) + timedelta(hours=1))
    daily(stack)
    daily(stack)
    grants = [e for e in entries(sub.client_id) if e.type is EntryType.GRANT]
    assert len(grants) == 3
    buckets = get_platform().ledger.state(sub.client_id).buckets
    expiries = sorted(buckets[e.bucket_id].expires_at for e in grants)  # type: ignore[type-var]
    period_start = datetime.fromtimestamp(start, UTC)
    assert expiries == [add_months(period_start, m) for m in (1, 2, 3)]
    assert balance(sub.client_id) == GROWTH  # only the current month's allotment is live
    assert grants_by_reference(sub.client_id)[invoice_id] == 1


def test_annual_upgrade_then_daily_job_keeps_one_allotment_per_month(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    period_start = clock.now - timedelta(days=10)
    start, end = period(period_start, 12)
    subscribe(hook, sub, "price_growth_y", start, end)
    outcome = send(hook, sub.updated_event("price_pro_y", start, end))
    assert outcome.startswith("upgraded growth → pro, prorated")
    granted = int(outcome.rsplit("prorated ", 1)[1].split()[0])
    assert 0 < granted < PRO - GROWTH
    before = balance(sub.client_id)
    daily(stack)  # month 0 was granted at Growth's size: it stays as it is
    assert balance(sub.client_id) == before == GROWTH + granted

    clock.set(add_months(period_start, 1) + timedelta(hours=1))
    daily(stack)
    daily(stack)
    assert balance(sub.client_id) == PRO  # month 1 at Pro's size, once


def test_the_daily_job_needs_the_scheduler_credentials(stack: Any) -> None:
    jobs = stack.client("billing_jobs")
    assert jobs.post("/jobs/daily").status_code == 401
    assert jobs.post("/jobs/daily", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_events_for_an_unknown_customer_are_acknowledged_without_effect(stack: Any, hook: Any, clock: Clock) -> None:
    stranger = Subscriber("c" + new_id("x")[2:18])
    start, end = period(clock.now)
    evt = stranger.invoice_paid("price_growth_m", start, end)
    outcome = send(hook, evt)
    assert outcome.startswith("unroutable")
    assert marker(stack, evt["id"])["client_id"] is None  # type: ignore[index]
    assert billing_of(stack, stranger.client_id) == {}


@pytest.mark.parametrize("kind", ["subscription", "invoice"])
def test_an_event_for_a_price_not_configured_yet_is_retried_until_it_is(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock, kind: str
) -> None:
    """Stripe's dashboard got a new plan price before the deploy that names it: the event must not be
    swallowed. It is refused (5xx, nothing recorded) until STRIPE_PRICE_IDS has it, then applied once."""
    start, end = period(clock.now)
    send(hook, sub.checkout_subscription())
    evt = (sub.created_event if kind == "subscription" else sub.invoice_paid)("price_growth_2027", start, end)
    before = snapshot(stack, sub.client_id)
    for _ in range(2):
        refused = problem(deliver(hook, evt), 500, "stripe_price_not_configured")
        assert refused["price_id"] == "price_growth_2027"
    assert marker(stack, evt["id"]) is None
    assert snapshot(stack, sub.client_id) == before

    settings = stack.platform.settings
    prices = {**settings.stripe_price_ids, "growth:monthly": "price_growth_2027"}
    install_clock(stack, clock, settings=settings.model_copy(update={"stripe_price_ids": prices}))
    outcome = send(hook, evt)
    assert "unroutable" not in outcome and outcome != "duplicate"
    assert send(hook, evt) == "duplicate"
    if kind == "invoice":
        assert balance(sub.client_id) == GROWTH
    else:
        assert billing_of(stack, sub.client_id)["plan"] == "growth"


def test_an_older_event_racing_a_newer_one_for_the_same_client_cannot_overwrite_it(
    stack: Any, hook: Any, sub: Subscriber, clock: Clock
) -> None:
    """The older event reads the billing state, the newer one commits in between: the older one's
    commit is refused by the precondition, re-runs on fresh state and is then stale."""
    from shared.adapters.firestore.billing import FirestoreBillingStore
    from shared.billing.catalog import PriceIds, load_catalog
    from shared.billing.events import WebhookProcessor
    from shared.billing.models import StripeEvent
    from shared.billing.store import BillingSnapshot

    start, end = period(clock.now - timedelta(days=3))
    subscribe(hook, sub, "price_growth_m", start, end)
    created = sub.tick()
    older = StripeEvent.model_validate(
        sub.updated_event("price_growth_m", start, end, status="past_due", at=created + 5)
    )
    newer = sub.updated_event("price_growth_m", start, end, cancel_at_period_end=True, at=created + 20)
    platform = get_platform()
    prices = PriceIds(platform.settings.stripe_price_ids)
    interleaved: list[str] = []

    class Interleaving(FirestoreBillingStore):
        def read(self, client_id: str) -> BillingSnapshot:
            snapshot = super().read(client_id)
            if not interleaved:  # the first read only: the newer event lands right after it
                interleaved.append(send(hook, newer))
            return snapshot

    processor = WebhookProcessor(Interleaving(platform.db), platform.ledger, load_catalog(), prices, clock())
    outcome = processor.handle(older)
    assert interleaved == ["subscription active"]
    assert outcome.startswith("stale")
    billing = billing_of(stack, sub.client_id)
    assert billing["subscription_status"] == "active" and billing["past_due_since"] is None
    assert billing["cancel_at_period_end"] is True
