"""The billing API's rules against the in-memory billing port: billing state, the good-standing guard
(and that the paid use cases call it themselves), the client's one Stripe customer, Checkout, the
portal, invoices and onboarding. The same flows run on Firestore in tests/integration/test_billing_api.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.billing.catalog import PriceIds, load_catalog
from shared.billing.models import CheckoutRequest
from shared.billing.service import (
    PaymentPastDue,
    billing_state,
    ensure_customer,
    invoices,
    onboard_client,
    open_portal,
    require_good_standing,
    start_checkout,
)
from shared.billing.store import BillingChanged
from shared.errors import UpstreamUnavailable, ValidationFailed
from shared.ledger.model import EntryType
from shared.ledger.service import Ledger
from tests.fakes import InMemoryLedgerStore
from tests.fakes_billing import CustomerGateway, InMemoryBilling

NOW = datetime(2026, 3, 10, 12, tzinfo=UTC)
PRICES = PriceIds({"growth:monthly": "price_growth_m", "pack_500": "price_pack_500"})
GRACE = timedelta(days=load_catalog().grace_period_days)
GROWTH = {"kind": "plan", "plan_id": "growth"}


def checkout(store: InMemoryBilling, gateway: CustomerGateway, request: dict[str, Any], key: str = "k1") -> Any:
    return start_checkout(
        store,
        gateway,
        load_catalog(),
        PRICES,
        client_id="c1",
        request=CheckoutRequest.model_validate(request),
        default_success_url="https://app.test/ok",
        default_cancel_url="https://app.test/cancel",
        idempotency_key=key,
    )


# -- billing state and good standing ----------------------------------------------------------------


def test_a_client_without_a_record_is_on_the_free_plan() -> None:
    state = billing_state(InMemoryBilling(), "nobody")
    assert (state.plan, state.product_slots, state.subscription_status) == ("free", 25, "none")


@pytest.mark.parametrize(
    ("billing", "blocked"),
    [
        ({}, False),
        ({"subscription_status": "active", "plan": "growth"}, False),
        ({"subscription_status": "past_due", "past_due_since": NOW - GRACE + timedelta(seconds=1)}, False),
        ({"subscription_status": "past_due", "past_due_since": NOW - GRACE}, True),
        ({"subscription_status": "unpaid", "past_due_since": NOW}, True),  # no grace once Stripe gave up
    ],
)
def test_good_standing_refuses_paid_work_after_the_grace_period(billing: dict[str, Any], blocked: bool) -> None:
    store = InMemoryBilling()
    store.seed("c1", **billing)
    if not blocked:
        require_good_standing(store, load_catalog(), "c1", NOW)
        return
    with pytest.raises(PaymentPastDue) as refused:
        require_good_standing(store, load_catalog(), "c1", NOW)
    assert refused.value.status == 402
    assert refused.value.extensions["grace_period_days"] == load_catalog().grace_period_days


def test_job_creation_checks_good_standing_itself_before_anything_else() -> None:
    """The guard lives in the use cases, not in the routes: creating a generation job or a paid edit
    job for a client past the grace period is refused before any store, queue or ledger is touched
    (they are absent here)."""
    from shared.editing import service as editing
    from shared.editing.models import EditQuoteOut, EditRequest
    from shared.generation import jobs
    from shared.generation.models import GenerationSettings, JobCreate

    store = InMemoryBilling()
    store.seed("c1", subscription_status="past_due", past_due_since=NOW - GRACE)
    nothing: Any = None
    # Only the clock is there: any store, queue, ledger or engine the use case touched would fail.
    generation = jobs.GenerationServices(
        jobs=nothing, store=nothing, queue=nothing, ledger=nothing, policy=nothing, clock=lambda: NOW,
        generation=nothing, catalog=nothing, settings=nothing, engines=nothing,
    )  # fmt: skip
    with pytest.raises(PaymentPastDue):
        jobs.create_job(
            generation, nothing,
            client_id="c1", user_id="u1", data=JobCreate.model_validate({"items": [{"prompt": "a mug"}]}),
            base=GenerationSettings(), request_key=None, billing=store,
        )  # fmt: skip
    request = EditRequest.model_validate(
        {"asset_ids": ["ast_1"], "operations": [{"op": "prompt_edit", "prompt": "warmer light"}]}
    )
    paid = editing.Prepared(request, {}, [], EditQuoteOut(lines=[], total=4, price_list_version=1, mode="job"))
    edits = editing.EditServices(
        jobs=nothing, store=nothing, queue=nothing, ledger=nothing, policy=nothing, clock=lambda: NOW,
        edit=nothing, assets=nothing, engines=nothing, remover=nothing,
    )  # fmt: skip
    with pytest.raises(PaymentPastDue):
        editing.create_job(edits, paid, client_id="c1", user_id="u1", request_key=None, billing=store)


# -- the Stripe customer ------------------------------------------------------------------------------


def test_the_customer_is_created_once_and_indexed() -> None:
    store, gateway = InMemoryBilling(), CustomerGateway()
    first = ensure_customer(store, gateway, "c1", None)
    assert ensure_customer(store, gateway, "c1", None) == first
    assert gateway.customer_calls == [("c1", 0)]
    assert store.client_of_customer(first) == "c1"
    assert billing_state(store, "c1").stripe_customer_id == first


def test_a_failed_creation_moves_the_next_try_to_a_new_idempotency_key() -> None:
    store, gateway = InMemoryBilling(), CustomerGateway(failures=2)
    for _ in range(2):
        with pytest.raises(UpstreamUnavailable):
            ensure_customer(store, gateway, "c1", None)
    customer = ensure_customer(store, gateway, "c1", None)
    assert gateway.customer_calls == [("c1", 0), ("c1", 1), ("c1", 2)]
    assert store.client_of_customer(customer) == "c1"


def test_a_customer_linked_concurrently_wins_and_is_returned() -> None:
    """Two first requests race: the one that links second finds the record changed, reads again and
    returns the first one's customer (Stripe's idempotency key makes it the same customer anyway)."""
    store = InMemoryBilling()
    store.seed("c1", plan="free")

    class RacingGateway(CustomerGateway):
        def create_customer(self, client_id: str, email: str | None, attempt: int = 0) -> str:
            if not self.customer_calls:  # the other request links while this one waits on Stripe
                store.link_customer(client_id, "cus_first", store.read(client_id).version)
            return super().create_customer(client_id, email, attempt)

    assert ensure_customer(store, RacingGateway(), "c1", None) == "cus_first"
    assert billing_state(store, "c1").stripe_customer_id == "cus_first"


def test_linking_on_a_stale_version_is_refused() -> None:
    store = InMemoryBilling()
    store.seed("c1", plan="free")
    seen = store.read("c1").version
    store.note_customer_attempt("c1", 1)
    with pytest.raises(BillingChanged):
        store.link_customer("c1", "cus_late", seen)
    assert store.client_of_customer("cus_late") is None


# -- Checkout, portal, invoices -----------------------------------------------------------------------


def test_plan_checkout_is_a_subscription_for_the_client_with_its_customer() -> None:
    store, gateway = InMemoryBilling(), CustomerGateway()
    redirect = checkout(store, gateway, {"kind": "plan", "plan_id": "growth"})
    assert redirect.url.startswith("https://checkout.test/")
    (session,) = gateway.checkouts
    assert session["mode"] == "subscription"
    assert session["line"].price_id == "price_growth_m"
    assert session["metadata"] == {"client_id": "c1", "plan_id": "growth", "interval": "monthly"}
    assert session["customer_id"] == billing_state(store, "c1").stripe_customer_id
    assert session["success_url"] == "https://app.test/ok"


def test_pack_checkout_is_a_payment() -> None:
    store, gateway = InMemoryBilling(), CustomerGateway()
    checkout(store, gateway, {"kind": "pack", "pack_id": "pack_500", "cancel_url": "https://shop.test/back"})
    (session,) = gateway.checkouts
    assert (session["mode"], session["metadata"]) == ("payment", {"client_id": "c1", "pack_id": "pack_500"})
    assert session["cancel_url"] == "https://shop.test/back"


@pytest.mark.parametrize(
    ("billing", "request_body", "field"),
    [
        ({}, {"kind": "plan", "plan_id": "free"}, "plan_id"),
        ({}, {"kind": "plan"}, "plan_id"),
        ({}, {"kind": "pack"}, "pack_id"),
        ({}, {"kind": "plan", "plan_id": "growth", "interval": "annual"}, "interval"),  # no price configured
        (
            {"subscription_id": "sub_1", "subscription_status": "past_due"},
            {"kind": "plan", "plan_id": "growth"},
            "kind",
        ),
        (
            {"subscription_id": "sub_1", "subscription_status": "incomplete"},
            {"kind": "plan", "plan_id": "growth"},
            "kind",
        ),
    ],
)
def test_checkout_refusals_create_nothing_at_stripe(
    billing: dict[str, Any], request_body: dict[str, Any], field: str
) -> None:
    store, gateway = InMemoryBilling(), CustomerGateway()
    store.seed("c1", **billing)
    with pytest.raises(ValidationFailed) as refused:
        checkout(store, gateway, request_body)
    assert refused.value.extensions["errors"][0]["field"] == field
    assert gateway.checkouts == []
    assert gateway.customer_calls == []


def test_a_new_plan_checkout_is_allowed_once_the_subscription_ended() -> None:
    store, gateway = InMemoryBilling(), CustomerGateway()
    store.seed("c1", subscription_id="sub_1", subscription_status="canceled", stripe_customer_id="cus_c1")
    checkout(store, gateway, {"kind": "plan", "plan_id": "growth"})
    assert [s["customer_id"] for s in gateway.checkouts] == ["cus_c1"]
    assert gateway.customer_calls == []  # the customer it has is reused


def test_portal_and_invoices() -> None:
    store, gateway = InMemoryBilling(), CustomerGateway()
    page = invoices(store, gateway, "c1", 10, None)
    assert (page.items, page.next_cursor, gateway.customer_calls) == ([], None, [])  # no customer: no invoices
    portal = open_portal(store, gateway, "c1", "https://app.test/billing")
    customer = billing_state(store, "c1").stripe_customer_id
    assert customer is not None and portal.url == f"https://portal.test/{customer}"


# -- onboarding ---------------------------------------------------------------------------------------


def _ledger() -> tuple[Ledger, InMemoryLedgerStore]:
    ledger_store = InMemoryLedgerStore()
    return Ledger(ledger_store, clock=lambda: NOW), ledger_store


def test_onboarding_grants_the_bonus_and_the_free_plan_once() -> None:
    store, (ledger, ledger_store) = InMemoryBilling(), _ledger()
    assert onboard_client(store, ledger, load_catalog(), "c1", 30, NOW) is True
    assert onboard_client(store, ledger, load_catalog(), "c1", 30, NOW) is False
    grants = [e for e in ledger_store.entries("c1") if e.type is EntryType.GRANT]
    assert [g.amount for g in grants] == [30]
    assert store.record("c1")["onboarded_at"] == NOW
    state = billing_state(store, "c1")
    assert (state.plan, state.product_slots) == ("free", load_catalog().plan("free").product_slots)


def test_onboarding_keeps_a_subscription_recorded_first() -> None:
    """A webhook can land before the client's first call: its plan is not overwritten by Free."""
    store, (ledger, _) = InMemoryBilling(), _ledger()
    store.seed("c1", plan="growth", product_slots=500, subscription_id="sub_1", subscription_status="active")
    assert onboard_client(store, ledger, load_catalog(), "c1", 0, NOW) is True
    state = billing_state(store, "c1")
    assert (state.plan, state.product_slots, state.subscription_id) == ("growth", 500, "sub_1")


def test_onboarding_without_a_bonus_grants_nothing() -> None:
    store, (ledger, ledger_store) = InMemoryBilling(), _ledger()
    onboard_client(store, ledger, load_catalog(), "c1", 0, NOW)
    assert ledger_store.entries("c1") == []
    assert billing_state(store, "c1").plan == "free"
