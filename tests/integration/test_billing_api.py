"""The billing API with the real ``stripe`` library talking to a local Stripe stub (dev/stubs/stripe.py):
plans, Checkout, the customer portal, invoices, Stripe's failures as problems; product slots where
products are created or imported; onboarding's Free plan and signup bonus.
"""

from __future__ import annotations

import csv
import io
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from dev.stubs.stripe import API_KEY, StripeStub, running
from shared.ledger.model import EntryType, GrantSource
from shared.platform import get_platform
from tests.billing_events import Subscriber, billing_of, deliver, install_gateway, onboard_and_link, ts

PLAN_PRICES = {"growth:monthly": "price_growth_m", "pack_500": "price_pack_500"}


@pytest.fixture
def stub(stack: Any) -> Iterator[StripeStub]:
    with running(StripeStub(prices=set(stack.platform.settings.stripe_price_ids.values()))) as served:
        install_gateway(stack, served)
        yield served


@pytest.fixture
def api(stack: Any) -> Any:
    return stack.client("billing_api")


@pytest.fixture
def headers(stack: Any, client_id: str) -> dict[str, str]:
    minted: dict[str, str] = stack.headers(client_id)
    return minted


def created(response: Any) -> dict[str, Any]:
    assert response.status_code == 201, (response.status_code, response.json)
    body: dict[str, Any] = response.json
    return body


def problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.json)
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = response.json
    assert body["code"] == code, body
    return body


def plan_checkout(plan_id: str = "growth", interval: str = "monthly") -> dict[str, Any]:
    return {"kind": "plan", "plan_id": plan_id, "interval": interval}


def customer_docs(stack: Any, client_id: str) -> list[str]:
    from google.cloud.firestore import FieldFilter

    query = stack.platform.db.collection("stripe_customers").where(filter=FieldFilter("client_id", "==", client_id))
    return [snap.id for snap in query.stream()]


# -- plans --------------------------------------------------------------------------------------------


def test_plans_are_listed_in_rank_order_with_what_can_be_bought(api: Any, headers: dict[str, str]) -> None:
    body = api.get("/plans", headers=headers).json
    assert body["currency"] == "usd"
    assert [p["id"] for p in body["plans"]] == ["free", "starter", "growth", "pro", "scale"]
    by_id = {p["id"]: p for p in body["plans"]}
    assert by_id["free"]["intervals"] == [] and by_id["free"]["product_slots"] == 25
    assert all(by_id[p]["intervals"] == ["monthly", "annual"] for p in ("starter", "growth", "pro", "scale"))
    assert [by_id[p]["product_slots"] for p in ("starter", "growth", "pro", "scale")] == [100, 500, 1000, 5000]
    assert by_id["growth"]["monthly_credits"] == 1000 and by_id["growth"]["prices"] == {
        "monthly": 7900,
        "annual": 79000,
    }
    assert {(p["id"], p["credits"], p["available"]) for p in body["packs"]} == {
        ("pack_100", 100, True),
        ("pack_500", 500, True),
        ("pack_2000", 2000, True),
    }


def test_plans_show_only_the_prices_that_are_configured(stack: Any, api: Any, headers: dict[str, str]) -> None:
    from shared.platform import Platform, set_platform

    settings = stack.platform.settings.model_copy(update={"stripe_price_ids": PLAN_PRICES})
    set_platform(Platform(settings, db=stack.platform.db, object_store=stack.platform.object_store))
    body = api.get("/plans", headers=headers).json
    assert {p["id"]: p["intervals"] for p in body["plans"]} == {
        "free": [],
        "starter": [],
        "growth": ["monthly"],
        "pro": [],
        "scale": [],
    }
    assert {p["id"]: p["available"] for p in body["packs"]} == {"pack_100": False, "pack_500": True, "pack_2000": False}


# -- checkout -----------------------------------------------------------------------------------------


def test_plan_checkout_goes_through_stripe_with_one_customer(
    stack: Any, api: Any, headers: dict[str, str], client_id: str, stub: StripeStub
) -> None:
    from stripe._api_version import _ApiVersion

    body = created(api.post("/checkout", json=plan_checkout(), headers=headers))
    [customer_call] = stub.seen("POST", "/v1/customers")
    [session_call] = stub.seen("POST", "/v1/checkout/sessions")
    customer_id = next(iter(stub.customers))
    session = stub.sessions[body["id"]]
    assert body == {"url": session["url"], "id": session["id"]}
    assert body["url"].startswith(f"{stub.url}/c/pay/cs_test_")  # the stub's hosted page

    # What the real client put on the wire.
    for call in (customer_call, session_call):
        assert call.headers["authorization"] == f"Bearer {API_KEY}"
        assert call.headers["content-type"] == "application/x-www-form-urlencoded"
        assert call.headers["stripe-version"] == _ApiVersion.CURRENT
        assert call.headers["user-agent"].startswith("Stripe/v1 PythonBindings/")
    assert customer_call.headers["idempotency-key"] == f"epox-customer-{client_id}"
    assert customer_call.form == {"metadata": {"client_id": client_id}}
    assert b"metadata[client_id]=" in customer_call.raw  # brackets stay literal on the wire
    assert session_call.headers["idempotency-key"].startswith("epox-checkout-")
    settings = stack.platform.settings
    assert session_call.form == {
        "mode": "subscription",
        "customer": customer_id,
        "client_reference_id": client_id,
        "line_items": [{"price": "price_growth_m", "quantity": "1"}],
        "success_url": settings.billing_success_url,
        "cancel_url": settings.billing_cancel_url,
        "metadata": {"client_id": client_id, "plan_id": "growth", "interval": "monthly"},
        "subscription_data": {"metadata": {"client_id": client_id, "plan_id": "growth", "interval": "monthly"}},
    }
    assert b"line_items[0][price]=price_growth_m" in session_call.raw

    # The customer is ours for good: recorded on the client and routable for webhooks.
    assert billing_of(stack, client_id)["stripe_customer_id"] == customer_id
    assert customer_docs(stack, client_id) == [customer_id]

    # A second checkout (annual this time, own success URL) reuses it: no second POST /v1/customers.
    again = {**plan_checkout("pro", "annual"), "success_url": "https://app.epox.test/thanks"}
    second = created(api.post("/checkout", json=again, headers=headers))
    assert second["id"] != body["id"]
    assert len(stub.seen("POST", "/v1/customers")) == 1
    last = stub.seen("POST", "/v1/checkout/sessions")[-1].form
    assert last["customer"] == customer_id and last["line_items"][0]["price"] == "price_pro_y"
    assert last["success_url"] == "https://app.epox.test/thanks"


def test_same_idempotency_key_returns_the_same_session(api: Any, headers: dict[str, str], stub: StripeStub) -> None:
    keyed = {**headers, "Idempotency-Key": "checkout-attempt-1"}
    first = api.post("/checkout", json=plan_checkout(), headers=keyed)
    second = api.post("/checkout", json=plan_checkout(), headers=keyed)
    assert created(first) == created(second)
    assert second.headers.get("Idempotency-Replayed") == "true"
    assert len(stub.seen("POST", "/v1/checkout/sessions")) == 1
    problem(api.post("/checkout", json=plan_checkout("pro"), headers=keyed), 409, "idempotency_key_reused")
    # Without a key every call is a new session.
    third = created(api.post("/checkout", json=plan_checkout(), headers=headers))
    assert third["id"] != created(first)["id"]
    assert len(stub.sessions) == 2


def test_concurrent_first_checkouts_create_one_stripe_customer(
    stack: Any, api: Any, headers: dict[str, str], client_id: str
) -> None:
    with running(StripeStub()) as stub:
        install_gateway(stack, stub, max_network_retries=2)  # the production setting: a 409 is retried
        assert api.get("/subscription", headers=headers).status_code == 200  # onboarded
        stub.delay("/v1/customers", 0.3)
        barrier, results = threading.Barrier(3), []

        def checkout() -> None:
            client = stack.client("billing_api")
            barrier.wait()
            results.append(client.post("/checkout", json=plan_checkout(), headers=headers))

        threads = [threading.Thread(target=checkout) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert [r.status_code for r in results] == [201, 201, 201], [r.json for r in results]
        calls = stub.seen("POST", "/v1/customers")
        assert len(calls) >= 2  # they did race
        assert {c.headers["idempotency-key"] for c in calls} == {f"epox-customer-{client_id}"}
        assert len(stub.customers) == 1
        [customer_id] = stub.customers
        assert billing_of(stack, client_id)["stripe_customer_id"] == customer_id
        assert customer_docs(stack, client_id) == [customer_id]
        assert {stub.sessions[r.json["id"]]["customer"] for r in results} == {customer_id}
        created(api.post("/checkout", json=plan_checkout(), headers=headers))
        assert len(stub.seen("POST", "/v1/customers")) == len(calls)  # never again


def test_pack_checkout_is_a_payment(api: Any, headers: dict[str, str], client_id: str, stub: StripeStub) -> None:
    body = created(api.post("/checkout", json={"kind": "pack", "pack_id": "pack_500"}, headers=headers))
    [call] = stub.seen("POST", "/v1/checkout/sessions")
    assert stub.sessions[body["id"]]["mode"] == "payment"
    assert call.form["mode"] == "payment"
    assert call.form["line_items"] == [{"price": "price_pack_500", "quantity": "1"}]
    assert call.form["metadata"] == {"client_id": client_id, "pack_id": "pack_500"}
    assert call.form["payment_intent_data"] == {"metadata": {"client_id": client_id, "pack_id": "pack_500"}}
    assert "subscription_data" not in call.form


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "plan", "plan_id": "platinum"}, "plan"),
        ({"kind": "plan", "plan_id": "free"}, "plan_id"),
        ({"kind": "plan"}, "plan_id"),
        ({"kind": "plan", "plan_id": "growth", "interval": "weekly"}, "interval"),
        ({"kind": "pack", "pack_id": "pack_7"}, "pack"),
        ({"kind": "pack"}, "pack_id"),
        ({"kind": "gift"}, "kind"),
        ({"kind": "plan", "plan_id": "growth", "success_url": "not a url"}, "success_url"),
    ],
)
def test_checkout_validation_problems_reach_no_stripe(
    api: Any, headers: dict[str, str], stub: StripeStub, body: dict[str, Any], field: str
) -> None:
    found = problem(api.post("/checkout", json=body, headers=headers), 422, "validation_failed")
    assert field in {e["field"] for e in found["errors"]}, found
    assert stub.requests == []  # not even a customer


def test_checkout_for_something_without_a_price_is_422(stack: Any, api: Any, headers: dict[str, str]) -> None:
    with running(StripeStub()) as stub:
        settings = stack.platform.settings.model_copy(update={"stripe_price_ids": PLAN_PRICES})
        install_gateway(stack, stub, settings=settings)
        found = problem(
            api.post("/checkout", json=plan_checkout("growth", "annual"), headers=headers), 422, "validation_failed"
        )
        assert [e["field"] for e in found["errors"]] == ["interval"]
        assert "not sold annual" in found["detail"]
        found = problem(
            api.post("/checkout", json={"kind": "pack", "pack_id": "pack_100"}, headers=headers),
            422,
            "validation_failed",
        )
        assert [e["field"] for e in found["errors"]] == ["pack_id"]
        assert stub.requests == []
        created(api.post("/checkout", json=plan_checkout("growth", "monthly"), headers=headers))


def test_checkout_with_a_live_subscription_is_refused(
    stack: Any, api: Any, headers: dict[str, str], client_id: str, stub: StripeStub
) -> None:
    created(api.post("/checkout", json=plan_checkout(), headers=headers))
    sub = Subscriber(client_id, customer=billing_of(stack, client_id)["stripe_customer_id"])
    now = datetime.now(UTC)
    start, end = ts(now - timedelta(days=1)), ts(now + timedelta(days=29))
    hook = stack.client("stripe_webhook")
    assert deliver(hook, sub.created_event("price_growth_m", start, end)).status_code == 200
    found = problem(api.post("/checkout", json=plan_checkout("pro"), headers=headers), 422, "validation_failed")
    assert "portal" in found["detail"]
    assert deliver(hook, sub.updated_event("price_growth_m", start, end, status="past_due")).status_code == 200
    problem(api.post("/checkout", json=plan_checkout("pro"), headers=headers), 422, "validation_failed")
    sessions = len(stub.sessions)
    created(api.post("/checkout", json={"kind": "pack", "pack_id": "pack_100"}, headers=headers))  # packs still sell
    assert len(stub.sessions) == sessions + 1


# -- portal and invoices ------------------------------------------------------------------------------


def test_portal_session_for_the_clients_customer(
    stack: Any, api: Any, headers: dict[str, str], client_id: str, stub: StripeStub
) -> None:
    body = created(api.post("/portal", json={}, headers=headers))
    [portal] = stub.portal_sessions
    assert body["url"] == portal["url"] and body["url"].startswith(f"{stub.url}/p/session/")
    customer_id = billing_of(stack, client_id)["stripe_customer_id"]
    assert portal["customer"] == customer_id
    assert portal["return_url"] == stack.platform.settings.billing_portal_return_url
    created(api.post("/portal", json={"return_url": "https://app.epox.test/billing"}, headers=headers))
    assert stub.portal_sessions[-1]["return_url"] == "https://app.epox.test/billing"
    assert len(stub.seen("POST", "/v1/customers")) == 1
    [call, _] = stub.seen("POST", "/v1/billing_portal/sessions")
    assert call.form == {"customer": customer_id, "return_url": portal["return_url"]}


def test_invoices_are_mapped_and_paginated_by_cursor(
    stack: Any, api: Any, headers: dict[str, str], client_id: str, stub: StripeStub
) -> None:
    assert api.get("/invoices", headers=headers).json == {"items": [], "next_cursor": None}
    assert stub.requests == []  # no customer yet: nothing to ask Stripe
    created(api.post("/portal", json={}, headers=headers))
    customer_id = billing_of(stack, client_id)["stripe_customer_id"]
    base = 1_790_000_000
    seeded = [stub.add_invoice(customer_id, base + day * 86_400, amount_paid=7900 + day) for day in range(5)]
    stub.add_invoice("cus_someoneelse", base + 10 * 86_400)

    seen, cursor, pages = [], None, 0
    while True:
        query = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        response = api.get("/invoices", query_string=query, headers=headers)
        assert response.status_code == 200, response.json
        seen += response.json["items"]
        cursor, pages = response.json["next_cursor"], pages + 1
        if cursor is None:
            break
        assert cursor == seen[-1]["id"]
    assert pages == 3
    newest_first = list(reversed(seeded))
    assert [i["id"] for i in seen] == [i["id"] for i in newest_first]
    first = seen[0]
    assert first["hosted_invoice_url"] == newest_first[0]["hosted_invoice_url"]
    assert first["invoice_pdf"] == newest_first[0]["invoice_pdf"]
    assert first["amount_paid"] == 7904 and first["currency"] == "usd" and first["status"] == "paid"
    assert datetime.fromisoformat(first["created"]) == datetime.fromtimestamp(base + 4 * 86_400, UTC)
    calls = stub.seen("GET", "/v1/invoices")
    assert [c.query for c in calls] == [
        {"customer": customer_id, "limit": "2"},
        {"customer": customer_id, "limit": "2", "starting_after": seen[1]["id"]},
        {"customer": customer_id, "limit": "2", "starting_after": seen[3]["id"]},
    ]
    assert all("content-type" not in c.headers and c.raw == b"" for c in calls)
    problem(api.get("/invoices", query_string={"cursor": "cus_1"}, headers=headers), 422, "validation_failed")
    problem(api.get("/invoices", query_string={"limit": 101}, headers=headers), 422, "validation_failed")


# -- Stripe's failures --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("500", 503, "upstream_unavailable"),
        ("429", 503, "upstream_unavailable"),
        ("drop", 503, "upstream_unavailable"),
        ("400", 400, "bad_request"),
    ],
)
def test_stripe_failures_become_problems(
    api: Any, headers: dict[str, str], stub: StripeStub, kind: str, status: int, code: str
) -> None:
    keyed = {**headers, "Idempotency-Key": f"try-{kind}"}
    stub.fail(kind, path="/v1/checkout/sessions")
    response = api.post("/checkout", json=plan_checkout(), headers=keyed)
    found = problem(response, status, code)
    assert response.headers.get("Retry-After") == ("5" if status == 503 else None)
    assert "Stripe" in found["detail"]
    assert stub.sessions == {}
    # The failure freed the key: the same request with the same key goes through now.
    body = created(api.post("/checkout", json=plan_checkout(), headers=keyed))
    assert body["id"] in stub.sessions
    assert len(stub.customers) == 1


def test_stripe_503_carries_retry_after(api: Any, headers: dict[str, str], stub: StripeStub) -> None:
    stub.fail("500", path="/v1/billing_portal/sessions")
    response = api.post("/portal", json={}, headers=headers)
    problem(response, 503, "upstream_unavailable")
    assert response.headers["Retry-After"] == "5"
    stub.fail("drop", path="/v1/invoices")
    response = api.get("/invoices", headers=headers)
    problem(response, 503, "upstream_unavailable")
    assert response.headers["Retry-After"] == "5"


def test_a_stripe_customer_that_no_longer_exists_is_a_400(
    stack: Any, api: Any, headers: dict[str, str], client_id: str, stub: StripeStub
) -> None:
    created(api.post("/portal", json={}, headers=headers))
    stub.customers.clear()  # deleted in the Stripe dashboard
    found = problem(api.post("/checkout", json=plan_checkout(), headers=headers), 400, "bad_request")
    assert "No such customer" in found["detail"]


def test_a_stripe_500_is_final_for_its_key_and_the_next_attempt_uses_a_new_one(
    stack: Any, api: Any, headers: dict[str, str]
) -> None:
    """Stripe saves a 500 under the idempotency key: the client library's own retry gets it back, so
    the caller sees 503; the caller's retry (same HTTP Idempotency-Key) must reach Stripe with a new key."""
    with running(StripeStub()) as stub:
        install_gateway(stack, stub, max_network_retries=1)
        keyed = {**headers, "Idempotency-Key": "subscribe-click-1"}
        stub.fail("500", path="/v1/checkout/sessions")
        problem(api.post("/checkout", json=plan_checkout(), headers=keyed), 503, "upstream_unavailable")
        first, replayed = stub.seen("POST", "/v1/checkout/sessions")
        assert (first.status, replayed.status) == (500, 500)
        assert first.headers["idempotency-key"] == replayed.headers["idempotency-key"]  # the library's retry
        body = created(api.post("/checkout", json=plan_checkout(), headers=keyed))
        third = stub.seen("POST", "/v1/checkout/sessions")[-1]
        assert third.status == 200 and third.headers["idempotency-key"] != first.headers["idempotency-key"]
        assert list(stub.sessions) == [body["id"]]


def test_a_stripe_500_while_creating_the_customer_does_not_lock_the_client_out(
    stack: Any, api: Any, headers: dict[str, str], client_id: str, stub: StripeStub
) -> None:
    stub.fail("500", path="/v1/customers")
    problem(api.post("/portal", json={}, headers=headers), 503, "upstream_unavailable")
    assert stub.customers == {}
    # Stripe would answer the same key with the saved 500 for 24 h; the next try uses a new key.
    created(api.post("/checkout", json=plan_checkout(), headers=headers))
    keys = [(c.headers["idempotency-key"], c.status) for c in stub.seen("POST", "/v1/customers")]
    assert keys == [(f"epox-customer-{client_id}", 500), (f"epox-customer-{client_id}-1", 200)]
    [customer_id] = stub.customers
    assert billing_of(stack, client_id)["stripe_customer_id"] == customer_id
    created(api.post("/portal", json={}, headers=headers))
    assert len(stub.seen("POST", "/v1/customers")) == 2


def test_the_stub_refuses_a_wrong_api_key() -> None:
    import stripe

    with running(StripeStub()) as stub:
        client = stripe.StripeClient("sk_test_wrong", base_addresses={"api": stub.url}, max_network_retries=0)
        with pytest.raises(stripe.AuthenticationError):
            client.v1.customers.create(params={"metadata": {"client_id": "c1"}})
        right = stripe.StripeClient(API_KEY, base_addresses={"api": stub.url}, max_network_retries=0)
        customer = right.v1.customers.create(params={"email": "a@b.test"}, options={"idempotency_key": "k1"})
        assert right.v1.customers.create(params={"email": "a@b.test"}, options={"idempotency_key": "k1"}).id == (
            customer.id
        )
        with pytest.raises(stripe.IdempotencyError):
            right.v1.customers.create(params={"email": "other@b.test"}, options={"idempotency_key": "k1"})
        assert len(stub.customers) == 1


# -- subscription view and product slots --------------------------------------------------------------


def test_subscription_view_of_a_new_client(stack: Any, api: Any, headers: dict[str, str]) -> None:
    catalog = stack.client("catalog_api")
    for name in ("Vase", "Mug"):
        assert catalog.post("/products", json={"name": name}, headers=headers).status_code == 201
    body = api.get("/subscription", headers=headers).json
    assert body == {
        "plan": "free",
        "plan_name": "Free",
        "interval": None,
        "status": "none",
        "product_slots": 25,
        "products_used": 2,
        "monthly_credits": 0,
        "current_period_end": None,
        "cancel_at_period_end": False,
        "pending_plan": None,
        "pending_plan_at": None,
        "past_due_since": None,
        "paid_operations_blocked": False,
    }


def _fill_products(stack: Any, client_id: str, count: int) -> None:
    """``count`` products as the catalog service stores them (the API path is exercised separately)."""
    from shared.adapters.firestore.catalog import FirestoreProductRepository
    from shared.catalog import products
    from shared.catalog.models import ProductCreate

    now = datetime.now(UTC)
    for index in range(count):
        products.create_product(
            FirestoreProductRepository(stack.platform.db), client_id, ProductCreate(name=f"Product {index}"), now
        )


def test_product_slots_are_enforced_on_create(stack: Any, api: Any, headers: dict[str, str], client_id: str) -> None:
    catalog = stack.client("catalog_api")
    _fill_products(stack, client_id, 23)
    for name in ("Vase", "Mug"):
        assert catalog.post("/products", json={"name": name}, headers=headers).status_code == 201
    refused = catalog.post("/products", json={"name": "One too many"}, headers=headers)
    found = problem(refused, 402, "product_slot_limit")
    assert (found["limit"], found["used"]) == (25, 25)
    assert "Starter 100" in found["how_to_upgrade"]
    keyed = {**headers, "Idempotency-Key": "create-26"}
    problem(catalog.post("/products", json={"name": "One too many"}, headers=keyed), 402, "product_slot_limit")
    assert api.get("/subscription", headers=headers).json["products_used"] == 25

    sub = Subscriber(client_id)
    onboard_and_link(stack, sub)
    now = datetime.now(UTC)
    event = sub.created_event("price_starter_m", ts(now - timedelta(days=1)), ts(now + timedelta(days=29)))
    assert deliver(stack.client("stripe_webhook"), event).json["outcome"] == "plan starter"
    assert catalog.post("/products", json={"name": "One too many"}, headers=keyed).status_code == 201
    view = api.get("/subscription", headers=headers).json
    assert (view["plan"], view["product_slots"], view["products_used"]) == ("starter", 100, 26)


def _import_csv(stack: Any, headers: dict[str, str], rows: int) -> dict[str, Any]:
    catalog = stack.client("catalog_api")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["name", "sku"])
    writer.writerows([f"Imported {i}", f"SKU-{i:03d}"] for i in range(rows))
    data = buffer.getvalue().encode()
    slot = catalog.post(
        "/uploads",
        json={"filename": "p.csv", "content_type": "text/csv", "size_bytes": len(data), "purpose": "csv_import"},
        headers=headers,
    )
    assert slot.status_code == 201, slot.json
    put = httpx.put(slot.json["upload"]["url"], content=data, headers=slot.json["upload"]["headers"], trust_env=False)
    assert put.status_code == 200
    assert catalog.post(f"/uploads/{slot.json['id']}/complete", headers=headers).status_code == 200
    draft = catalog.post("/imports", json={"upload_id": slot.json["id"]}, headers=headers)
    assert draft.status_code == 201, draft.json
    import_id = draft.json["id"]
    assert catalog.post(f"/imports/{import_id}/start", headers=headers).status_code == 202
    stack.run_tasks()
    done = catalog.get(f"/imports/{import_id}", headers=headers).json
    report = catalog.get(f"/imports/{import_id}/errors.csv", headers=headers)
    assert report.status_code == 200
    done["errors"] = list(csv.DictReader(io.StringIO(report.get_data(as_text=True))))
    return dict(done)


def test_csv_import_stops_at_the_product_slots(stack: Any, headers: dict[str, str], client_id: str) -> None:
    done = _import_csv(stack, headers, 30)
    assert done["status"] == "completed"
    assert done["progress"]["created_products"] == 25
    assert done["progress"]["failed_rows"] == 5
    refused = [row for row in done["errors"] if row["code"] == "product_slot_limit"]
    assert [int(row["row"]) for row in refused] == [27, 28, 29, 30, 31]  # header is row 1
    assert all("upgrade" in row["message"] for row in refused)
    products = stack.platform.db.collection("clients").document(client_id).collection("products")
    assert products.count().get()[0][0].value == 25


def test_csv_import_fills_only_the_free_slots(stack: Any, headers: dict[str, str], client_id: str) -> None:
    _fill_products(stack, client_id, 20)
    done = _import_csv(stack, headers, 8)
    assert (done["progress"]["created_products"], done["progress"]["failed_rows"]) == (5, 3)
    assert sorted(int(r["row"]) for r in done["errors"] if r["code"] == "product_slot_limit") == [7, 8, 9]


# -- onboarding ---------------------------------------------------------------------------------------


def _bonus_platform(stack: Any) -> Any:
    from shared.platform import Platform

    settings = stack.platform.settings.model_copy(update={"signup_bonus_credits": None})
    return Platform(
        settings,
        db=stack.platform.db,
        object_store=stack.platform.object_store,
        task_queue=stack.dispatcher,
        fetcher=stack.platform.fetcher,
    )


def _signup_grants(client_id: str) -> list[Any]:
    ledger = get_platform().ledger
    buckets = ledger.state(client_id).buckets
    return [
        e
        for e in ledger.store.entries(client_id)
        if e.type is EntryType.GRANT and buckets[e.bucket_id].source is GrantSource.SIGNUP
    ]


def test_a_new_client_gets_free_and_the_signup_bonus_once(
    stack: Any, api: Any, headers: dict[str, str], client_id: str
) -> None:
    from shared.platform import set_platform

    set_platform(_bonus_platform(stack))
    credits = stack.client("credits_api")
    assert credits.get("/balance", headers=headers).json["available"] == 30
    for _ in range(2):
        assert api.get("/subscription", headers=headers).status_code == 200
        set_platform(_bonus_platform(stack))  # a new process: its cache knows nothing
    body = credits.get("/balance", headers=headers).json
    assert (body["available"], body["plan"]) == (30, "free")
    assert len(_signup_grants(client_id)) == 1
    billing = billing_of(stack, client_id)
    assert (billing["plan"], billing["product_slots"]) == ("free", 25)
    record = stack.platform.db.collection("clients").document(client_id).get().to_dict()
    assert record["onboarded_at"] is not None


def test_concurrent_first_calls_grant_the_bonus_once(stack: Any, client_id: str) -> None:
    from shared.auth import Principal
    from shared.platform import set_platform

    principal = Principal(user_id="u1", client_id=client_id, roles=frozenset({"user"}))
    platforms = [_bonus_platform(stack) for _ in range(8)]
    barrier, errors = threading.Barrier(len(platforms)), []

    def first_call(platform: Any) -> None:
        try:
            barrier.wait()
            platform.onboarding.ensure(principal)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=first_call, args=(p,)) for p in platforms]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    set_platform(platforms[0])
    state = get_platform().ledger.state(client_id)
    assert (state.available, state.reserved) == (30, 0)
    assert len(_signup_grants(client_id)) == 1
    assert get_platform().ledger.verify(client_id) == []
    billing = billing_of(stack, client_id)
    assert (billing["plan"], billing["product_slots"]) == ("free", 25)
