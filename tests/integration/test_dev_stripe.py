"""Stripe in the dev stack: the settings ``make dev`` gives the functions (``dev.stack.stripe_environment``)
and its Stripe stub (``dev.stack.stripe_stub``) let a client buy a pack and subscribe end to end through
the real functions: Checkout → the customer pays on the stub's hosted page → Stripe's signed events →
credits and the plan on the emulator; then the invoices and the portal. And a deployment without a
Stripe credential answers 503 ``vendor_not_configured`` where it would use Stripe, never 500.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from dev.stack import DEV_STRIPE_API_KEY, DEV_WEBHOOK_SECRET, stripe_environment, stripe_stub
from dev.stubs.stripe import StripeStub, running
from shared.billing.catalog import load_catalog
from tests.billing_events import billing_of


def dev_settings(stack: Any, stub_url: str, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> Any:
    """The test stack's settings with the Stripe settings of ``make dev``, read from the environment
    by the real Settings (so STRIPE_PRICE_IDS is parsed as the functions parse it)."""
    from shared.config import Settings

    for name, value in stripe_environment(stub_url).items():
        monkeypatch.setenv(name, value)
    read = Settings(epox_env="test")
    fields = ("stripe_api_key", "stripe_api_base", "stripe_webhook_secret", "stripe_price_ids")
    return stack.platform.settings.model_copy(update={name: getattr(read, name) for name in fields} | overrides)


def install(stack: Any, settings: Any) -> Any:
    """A platform like the stack's on ``settings``; its payment gateway is built from them, as in
    ``make dev`` (the stack fixture resets the platform afterwards)."""
    from shared.platform import Platform, set_platform

    p = stack.platform
    platform = Platform(settings, db=p.db, object_store=p.object_store, task_queue=stack.dispatcher, fetcher=p.fetcher)
    set_platform(platform)
    return platform


@pytest.fixture
def local_stripe(stack: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[StripeStub]:
    hook = stack.client("stripe_webhook")

    def webhook(payload: bytes, headers: dict[str, str]) -> int:
        status: int = hook.post("/", data=payload, headers=headers).status_code
        return status

    with running(stripe_stub(webhook)) as stub:
        install(stack, dev_settings(stack, stub.url, monkeypatch))
        yield stub


def ok(response: Any, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.json)
    body: dict[str, Any] = response.json
    return body


def pay(session: dict[str, Any], stub: StripeStub) -> list[dict[str, Any]]:
    """The customer opens the hosted page and presses Pay; returns the deliveries Stripe made."""
    assert session["url"].startswith(f"{stub.url}/c/pay/")
    page = httpx.get(session["url"], trust_env=False)
    assert page.status_code == 200 and "Pay" in page.text
    paid = httpx.post(session["url"], trust_env=False)
    assert paid.status_code == 303, paid.text
    assert paid.headers["Location"] == stub.sessions[session["id"]]["success_url"]
    deliveries: list[dict[str, Any]] = paid.json()["deliveries"]
    assert deliveries and all(d["status"] == 200 for d in deliveries), deliveries
    return deliveries


def test_pack_and_plan_checkout_paid_on_the_hosted_page_grant_credits(
    stack: Any, client_id: str, local_stripe: StripeStub
) -> None:
    catalog = load_catalog()
    headers = stack.headers(client_id)
    billing_api, credits_api = stack.client("billing_api"), stack.client("credits_api")

    def available() -> int:
        return int(ok(credits_api.get("/balance", headers=headers))["available"])

    assert available() == 0  # the tests' signup bonus is 0

    # A credit pack: payment mode, its amount from the catalog's price.
    session = ok(billing_api.post("/checkout", json={"kind": "pack", "pack_id": "pack_500"}, headers=headers), 201)
    assert local_stripe.sessions[session["id"]]["amount_total"] == catalog.pack("pack_500").display_price
    deliveries = pay(session, local_stripe)
    assert [d["type"] for d in deliveries] == [
        "payment_intent.succeeded",
        "charge.succeeded",
        "invoice.created",
        "invoice.finalized",
        "invoice.paid",
        "invoice.payment_succeeded",
        "checkout.session.completed",
    ]
    assert available() == 500  # the pack's own invoice grants nothing more: the session did
    # The purchase is in the billing history with its receipt.
    listed = ok(billing_api.get("/invoices", headers=headers))["items"]
    [receipt] = listed
    assert receipt["id"] == local_stripe.sessions[session["id"]]["invoice"]
    assert (receipt["status"], receipt["amount_paid"]) == ("paid", catalog.pack("pack_500").display_price)
    assert receipt["hosted_invoice_url"].endswith(f"/i/{receipt['id']}") and receipt["invoice_pdf"]
    [purchase] = stack.platform.db.collection("clients").document(client_id).collection("purchases").stream()
    assert purchase.to_dict()["payment_intent"] == local_stripe.sessions[session["id"]]["payment_intent"]

    # Paying the same session again: it is complete, nothing more happens.
    again = httpx.post(session["url"], trust_env=False)
    assert again.status_code == 404
    assert available() == 500

    # Growth, monthly: a subscription with its first invoice, paid.
    body = {"kind": "plan", "plan_id": "growth", "interval": "monthly"}
    session = ok(billing_api.post("/checkout", json=body, headers=headers), 201)
    deliveries = pay(session, local_stripe)
    assert [d["type"] for d in deliveries] == [
        "customer.subscription.created",
        "invoice.paid",
        "invoice.payment_succeeded",
        "checkout.session.completed",
    ]
    view = ok(billing_api.get("/subscription", headers=headers))
    assert (view["plan"], view["status"], view["interval"]) == ("growth", "active", "monthly")
    assert available() == 500 + catalog.plan("growth").monthly_credits
    billing = billing_of(stack, client_id)
    assert billing["subscription_id"] == local_stripe.sessions[session["id"]]["subscription"]
    assert billing["stripe_customer_id"] == local_stripe.sessions[session["id"]]["customer"]

    # Each event was signed with the dev webhook secret and applied once.
    for event in local_stripe.events:
        marker = stack.platform.db.collection("stripe_events").document(event["id"]).get()
        assert marker.exists, event["type"]

    # The invoices and the portal.
    listed = {row["id"]: row for row in ok(billing_api.get("/invoices", headers=headers))["items"]}
    assert len(listed) == 2 and receipt["id"] in listed  # the pack's receipt and the plan's first month
    [invoice] = [row for row_id, row in listed.items() if row_id != receipt["id"]]
    assert (invoice["status"], invoice["amount_paid"]) == ("paid", catalog.plan("growth").display_price["monthly"])
    assert httpx.get(invoice["hosted_invoice_url"], trust_env=False).status_code == 200
    portal = ok(billing_api.post("/portal", json={}, headers=headers), 201)
    page = httpx.get(portal["url"], trust_env=False)
    assert page.status_code == 200 and billing["subscription_id"] in page.text


def test_the_dev_stubs_settings_are_the_stacks() -> None:
    env = stripe_environment("http://127.0.0.1:1")
    stub = stripe_stub(None)
    assert env["STRIPE_API_KEY"] == stub.api_key == DEV_STRIPE_API_KEY
    assert env["STRIPE_WEBHOOK_SECRET"] == stub.webhook_secret == DEV_WEBHOOK_SECRET
    assert stub.prices is not None and set(stub.price_details) == stub.prices  # every price has an amount


# -- a credential that is not set -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/checkout", "/portal"])
def test_no_stripe_api_key_is_a_503_naming_the_setting(
    stack: Any, client_id: str, path: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with running(StripeStub()) as stub:
        install(stack, dev_settings(stack, stub.url, monkeypatch, stripe_api_key=SecretStr("")))
        body = {"kind": "plan", "plan_id": "growth"} if path == "/checkout" else {}
        with caplog.at_level(logging.ERROR):
            response = stack.client("billing_api").post(path, json=body, headers=stack.headers(client_id))
        assert response.status_code == 503, response.json
        assert response.content_type == "application/problem+json"
        problem = response.json
        assert problem["code"] == "vendor_not_configured"
        assert problem["settings"] == ["STRIPE_API_KEY"] and "STRIPE_API_KEY" in problem["detail"]
        assert any(r.levelno == logging.ERROR and "STRIPE_API_KEY" in r.getMessage() for r in caplog.records)
        assert stub.requests == []  # Stripe was never called
    # Routes that need no Stripe call still work.
    assert stack.client("billing_api").get("/subscription", headers=stack.headers(client_id)).status_code == 200


def test_no_webhook_secret_is_a_503_so_stripe_redelivers(
    stack: Any, client_id: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.billing_events import Subscriber, deliver

    install(stack, dev_settings(stack, "http://127.0.0.1:1", monkeypatch, stripe_webhook_secret=SecretStr("")))
    with caplog.at_level(logging.ERROR):
        response = deliver(stack.client("stripe_webhook"), Subscriber(client_id).checkout_pack())
    assert response.status_code == 503, response.json
    assert response.json["code"] == "vendor_not_configured"
    assert response.json["settings"] == ["STRIPE_WEBHOOK_SECRET"]
    assert any("STRIPE_WEBHOOK_SECRET" in r.getMessage() for r in caplog.records)


def test_the_demos_billing_story_over_http(stack: Any, client_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``make demo``'s billing step (pack, Growth, invoices, portal) against the functions served over
    HTTP as ``make dev`` serves them, with the stub delivering its webhooks over HTTP too."""
    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    from werkzeug.serving import make_server

    from dev.demo import buy_and_subscribe
    from dev.stubs.stripe import http_webhook

    def not_found(environ: Any, start_response: Any) -> list[bytes]:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]

    wsgi = DispatcherMiddleware(not_found, {f"/{name}": app for name, app in stack.apps.items()})
    server = make_server("127.0.0.1", 0, wsgi, threaded=True)
    base = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with running(stripe_stub(http_webhook(f"{base}/stripe_webhook/"))) as stub:
            install(stack, dev_settings(stack, stub.url, monkeypatch))
            with httpx.Client(base_url=base, timeout=30, trust_env=False) as http:
                state = buy_and_subscribe(http, stack.headers(client_id), client_id)
            assert (state["plan"], state["status"]) == ("growth", "active")
            # A pack (its payment, its receipt invoice, the session) and a plan (subscription, invoice, session).
            assert {d.status for d in stub.deliveries} == {200} and len(stub.deliveries) == 7 + 4
    finally:
        server.shutdown()
