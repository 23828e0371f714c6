"""Billing end to end in the local stack: a new client subscribes through Checkout (the real ``stripe``
client against the local Stripe stub), Stripe's webhooks arrive signed, the credits are spent on a
generation job run by the task dispatcher, the plan renews, is upgraded mid-period, and a pack is
bought. The platform's clock is moved to the renewal and to mid-period; signatures use real time.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from dev.stubs.stripe import StripeStub, running
from shared.billing.events import add_months
from shared.ledger.model import EntryType
from shared.platform import get_platform
from tests.billing_events import Clock, Subscriber, billing_of, deliver, install_gateway, new_id, ts


def ok(response: Any, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.json)
    body: dict[str, Any] = response.json
    return body


def test_subscribe_spend_renew_upgrade_and_buy_a_pack(stack: Any, client_id: str) -> None:
    with running(StripeStub(prices=set(stack.platform.settings.stripe_price_ids.values()))) as stub:
        clock = Clock(datetime.now(UTC).replace(microsecond=0))
        install_gateway(stack, stub, clock=clock)
        headers = stack.headers(client_id)
        billing_api, credits_api = stack.client("billing_api"), stack.client("credits_api")
        gen, hook = stack.client("generate_api"), stack.client("stripe_webhook")
        delivered: list[dict[str, Any]] = []

        def webhook(event: dict[str, Any]) -> str:
            delivered.append(event)
            return str(ok(deliver(hook, event))["outcome"])

        def available() -> int:
            return int(ok(credits_api.get("/balance", headers=headers))["available"])

        # 1. A new client: Free, no credits (the tests' signup bonus is 0), then Checkout for Growth.
        view = ok(billing_api.get("/subscription", headers=headers))
        assert (view["plan"], view["product_slots"], available()) == ("free", 25, 0)
        session = ok(billing_api.post("/checkout", json={"kind": "plan", "plan_id": "growth"}, headers=headers), 201)
        assert session["url"] == stub.sessions[session["id"]]["url"]
        customer = billing_of(stack, client_id)["stripe_customer_id"]
        assert stub.sessions[session["id"]]["customer"] == customer

        # 2. The customer pays; Stripe's events arrive.
        sub = Subscriber(client_id, customer=customer, clock=clock)
        start1 = clock.now - timedelta(minutes=1)
        end1 = add_months(start1, 1)
        period1 = (ts(start1), ts(end1))
        invoice1 = new_id("in")
        assert webhook(sub.checkout_subscription(session_id=session["id"])) == "subscription checkout linked"
        assert webhook(sub.created_event("price_growth_m", *period1)) == "plan growth"
        assert webhook(sub.invoice_paid("price_growth_m", *period1, invoice_id=invoice1)) == (
            "invoice paid: granted 1000 credits"
        )
        assert available() == 1000
        view = ok(billing_api.get("/subscription", headers=headers))
        assert (view["plan"], view["status"], view["product_slots"], view["monthly_credits"]) == (
            "growth",
            "active",
            500,
            1000,
        )

        # 3. Spend: a generation job, reserved up front, captured when the images are done.
        job = ok(
            gen.post(
                "/jobs", json={"items": [{"prompt": "a ceramic mug on an oak desk"}], "variants": 2}, headers=headers
            ),
            202,
        )
        assert available() == 1000 - job["cost"]
        stack.run_tasks()
        done = ok(gen.get(f"/jobs/{job['id']}", headers=headers))
        assert done["status"] == "completed", done
        captured = done["settlement"]["captured"]
        assert captured == job["cost"] > 0
        assert available() == 1000 - captured

        # 4. Renewal: the period ends, the next invoice is paid; last month's rest expires at its end.
        clock.set(end1 + timedelta(hours=1))
        start2, end2 = end1, add_months(end1, 1)
        period2 = (ts(start2), ts(end2))
        invoice2 = new_id("in")
        webhook(sub.updated_event("price_growth_m", *period2))
        assert (
            webhook(
                sub.invoice_paid("price_growth_m", *period2, invoice_id=invoice2, billing_reason="subscription_cycle")
            )
            == "invoice paid: granted 1000 credits"
        )
        assert available() == 1000
        buckets = get_platform().ledger.state(client_id).buckets
        first = next(b for b in buckets.values() if b.reference == invoice1)
        assert (first.expires_at, first.expired, first.remaining) == (end1, True, 0)
        expired = [e for e in get_platform().ledger.store.entries(client_id) if e.type is EntryType.EXPIRE]
        assert [e.amount for e in expired] == [1000 - captured]

        # 5. Upgrade to Pro with exactly half of the period left: half of the difference at once.
        clock.set(start2 + (end2 - start2) / 2)
        half = (2500 - 1000) * ((end2 - start2) / 2).total_seconds() // (end2 - start2).total_seconds()
        assert half == 750
        assert webhook(sub.updated_event("price_pro_m", *period2)) == "upgraded growth → pro, prorated 750 credits"
        assert available() == 1000 + 750
        view = ok(billing_api.get("/subscription", headers=headers))
        assert (view["plan"], view["product_slots"]) == ("pro", 1000)

        # 6. A credit pack through Checkout (payment mode), paid.
        pack = ok(billing_api.post("/checkout", json={"kind": "pack", "pack_id": "pack_500"}, headers=headers), 201)
        assert stub.sessions[pack["id"]]["mode"] == "payment"
        payment_intent = new_id("pi")
        assert webhook(sub.checkout_pack("pack_500", session_id=pack["id"], payment_intent=payment_intent)) == (
            "granted 500 pack credits"
        )
        assert available() == 1000 + 750 + 500
        assert len(stub.seen("POST", "/v1/customers")) == 1

        # 7. Stripe delivers everything again: nothing changes.
        for event in list(delivered):
            assert ok(deliver(hook, event))["outcome"] == "duplicate"
        assert available() == 2250

        # 8. The history: one grant per invoice, one for the upgrade, one for the pack; the ledger adds up.
        history = ok(credits_api.get("/history", query_string={"limit": 100}, headers=headers))["items"]
        grants = [e for e in history if e["type"] == "grant"]
        assert sorted(e["amount"] for e in grants) == [500, 750, 1000, 1000]
        ledger = get_platform().ledger
        state = ledger.state(client_id)
        references = Counter(state.buckets[e["bucket_id"]].reference for e in grants)
        assert references == Counter({invoice1: 1, invoice2: 1, sub.subscription: 1, payment_intent: 1})
        assert [e["type"] for e in history if e["type"] in ("reserve", "capture")] == ["capture", "reserve"]
        assert ledger.verify(client_id) == []

        # 9. The invoices page lists what Stripe has for the customer.
        for number, (invoice_id, start) in enumerate(((invoice1, start1), (invoice2, start2)), 1):
            stub.add_invoice(customer, ts(start), id=invoice_id, number=f"EPOX-{number:04d}")
        page = ok(billing_api.get("/invoices", headers=headers))
        assert [i["id"] for i in page["items"]] == [invoice2, invoice1]
        assert page["items"][0]["hosted_invoice_url"].endswith(invoice2)
