"""Billing as the frontend sees it: the catalog, the current subscription, Checkout, the customer
portal and invoices — plus the rules other services enforce (good standing, product slots) and the
one-time onboarding of a new client.

The client's billing record is read and written through the ports of :mod:`shared.billing.store`
(Firestore: ``shared.adapters.firestore.billing``), never through a database client."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.billing.catalog import Catalog, PriceIds
from shared.billing.errors import PaymentPastDue as PaymentPastDue  # re-exported: routes import it from here
from shared.billing.gateway import CheckoutLine, PaymentGateway
from shared.billing.models import (
    BillingState,
    CatalogOut,
    CheckoutRequest,
    InvoiceOut,
    InvoicePage,
    PackOut,
    PlanOut,
    RedirectOut,
    SubscriptionOut,
)
from shared.billing.store import BillingAccounts, BillingChanged, BillingReader
from shared.errors import UpstreamUnavailable, ValidationFailed

if TYPE_CHECKING:
    from shared.ledger.service import Ledger


def billing_state(billing: BillingReader, client_id: str) -> BillingState:
    """The client's billing (the defaults of a client with no record yet)."""
    return billing.read(client_id).state


def catalog_out(catalog: Catalog, prices: PriceIds) -> CatalogOut:
    plans = [
        PlanOut(
            id=plan_id,
            name=plan.name,
            product_slots=plan.product_slots,
            monthly_credits=plan.monthly_credits,
            prices=dict(plan.display_price),
            intervals=[i for i in ("monthly", "annual") if f"{plan_id}:{i}" in prices.by_key],
        )
        for plan_id, plan in sorted(catalog.plans.items(), key=lambda item: item[1].rank)
    ]
    packs = [
        PackOut(
            id=pack_id,
            name=pack.name,
            credits=pack.credits,
            price=pack.display_price,
            available=pack_id in prices.by_key,
        )
        for pack_id, pack in catalog.packs.items()
    ]
    return CatalogOut(currency=catalog.currency, plans=plans, packs=packs)


def paid_operations_blocked(state: BillingState, catalog: Catalog, now: datetime) -> bool:
    """Paid work stops when the governing subscription's status says so (:mod:`shared.billing.lifecycle`):
    at once for ``unpaid``, after the grace period from the first failed payment otherwise."""
    from shared.billing.lifecycle import PaidWork, rules

    if rules(state.subscription_status).paid_work is PaidWork.NO:
        return True
    if state.past_due_since is None:
        return False
    return now >= state.past_due_since + timedelta(days=catalog.grace_period_days)


def require_good_standing(billing: BillingReader, catalog: Catalog, client_id: str, now: datetime) -> None:
    """Refuse paid work once a failed payment is older than the grace period. Called by the use cases
    that start paid work (generation and edit job creation), so a new paid route cannot skip it."""
    state = billing_state(billing, client_id)
    if paid_operations_blocked(state, catalog, now):
        raise PaymentPastDue(
            "Your last payment failed; update your payment method in Billing to continue",
            past_due_since=state.past_due_since.isoformat() if state.past_due_since else None,
            grace_period_days=catalog.grace_period_days,
            how_to_fix="Open the customer portal from Billing and update your card.",
        )


def subscription_out(
    billing: BillingReader, catalog: Catalog, client_id: str, now: datetime, *, products_used: int
) -> SubscriptionOut:
    """The current subscription as the Billing page shows it (``products_used``: the catalog's count,
    which the entry point reads, so billing does not depend on the catalog)."""
    state = billing_state(billing, client_id)
    plan = catalog.plans.get(state.plan) or catalog.plan("free")
    return SubscriptionOut(
        plan=state.plan,
        plan_name=plan.name,
        interval=state.interval,
        status=state.subscription_status,
        product_slots=state.product_slots,
        products_used=products_used,
        monthly_credits=plan.monthly_credits,
        current_period_end=state.current_period_end,
        cancel_at_period_end=state.cancel_at_period_end,
        pending_plan=state.pending_plan,
        pending_plan_at=state.pending_plan_at,
        past_due_since=state.past_due_since,
        paid_operations_blocked=paid_operations_blocked(state, catalog, now),
    )


def ensure_customer(accounts: BillingAccounts, gateway: PaymentGateway, client_id: str, email: str | None) -> str:
    """The client's one Stripe customer, created on first need (retries reuse it)."""
    from shared.retry import CONTENDED_COMMIT, attempts

    for _ in attempts(CONTENDED_COMMIT, "stripe customer link"):
        record = accounts.read(client_id)
        existing = record.state.stripe_customer_id
        if existing:
            return str(existing)
        # Stripe de-duplicates on the idempotency key derived from the client id, so two racing
        # requests get the same customer; the precondition keeps the first id we stored.
        attempt = record.customer_key_attempt
        try:
            customer_id = gateway.create_customer(client_id, None, attempt)
        except UpstreamUnavailable:
            # Stripe keeps the answer to a request that failed while running (a 500) under its key for
            # 24 h, so the next try needs another key or it gets the same failure again.
            accounts.note_customer_attempt(client_id, attempt + 1)
            raise
        try:
            accounts.link_customer(client_id, customer_id, record.version)
        except BillingChanged:
            continue  # the record changed (another request linked it, or onboarding): read it again
        return customer_id
    raise UpstreamUnavailable("The client's billing kept changing; try again", retry_after=1)


def start_checkout(
    accounts: BillingAccounts,
    gateway: PaymentGateway,
    catalog: Catalog,
    prices: PriceIds,
    *,
    client_id: str,
    request: CheckoutRequest,
    default_success_url: str,
    default_cancel_url: str,
    idempotency_key: str | None,
) -> RedirectOut:
    """A Checkout Session for a plan (subscription mode) or a credit pack (payment mode)."""
    if request.kind == "plan":
        if not request.plan_id:
            raise _missing("plan_id")
        plan = catalog.plan(request.plan_id)
        if plan.monthly_credits == 0 and request.plan_id == "free":
            raise ValidationFailed(
                "The Free plan needs no checkout",
                errors=[{"field": "plan_id", "in": "body", "message": "free", "type": "value_error"}],
            )
        from shared.billing.lifecycle import rules

        state = billing_state(accounts, client_id)
        # One subscription per client: while one is live (even unpaid or not yet paid) a plan changes
        # in the portal. Two Checkouts started at once both pass this; the webhook cancels the later.
        if state.subscription_id and not rules(state.subscription_status).new_checkout:
            raise ValidationFailed(
                "You already have a subscription; switch plans, pay or cancel it in the customer portal",
                errors=[{"field": "kind", "in": "body", "message": "use the portal", "type": "value_error"}],
                subscription_status=state.subscription_status,
            )
        line = CheckoutLine(prices.for_plan(request.plan_id, request.interval))
        mode, metadata = (
            "subscription",
            {"client_id": client_id, "plan_id": request.plan_id, "interval": request.interval},
        )
    else:
        if not request.pack_id:
            raise _missing("pack_id")
        catalog.pack(request.pack_id)
        line = CheckoutLine(prices.for_pack(request.pack_id))
        mode, metadata = "payment", {"client_id": client_id, "pack_id": request.pack_id}
    customer_id = ensure_customer(accounts, gateway, client_id, None)
    fingerprint = hashlib.sha256(f"{client_id}|{mode}|{line.price_id}|{idempotency_key}".encode()).hexdigest()[:32]
    session_id, url = gateway.create_checkout(
        client_id=client_id,
        customer_id=customer_id,
        mode=mode,
        line=line,
        success_url=str(request.success_url or default_success_url),
        cancel_url=str(request.cancel_url or default_cancel_url),
        metadata=metadata,
        # One Stripe key per attempt: the HTTP Idempotency-Key layer replays a success without coming
        # here, and a failed attempt must not reuse a key Stripe saved a 500 under (kept 24 h).
        idempotency_key=f"epox-checkout-{fingerprint}-{_now()}",
    )
    return RedirectOut(url=url, id=session_id)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S%f")


def _missing(field: str) -> ValidationFailed:
    return ValidationFailed(
        f"{field} is required", errors=[{"field": field, "in": "body", "message": "required", "type": "missing"}]
    )


def open_portal(accounts: BillingAccounts, gateway: PaymentGateway, client_id: str, return_url: str) -> RedirectOut:
    """A customer-portal session for the client's Stripe customer (created on first need)."""
    customer_id = ensure_customer(accounts, gateway, client_id, None)
    return RedirectOut(url=gateway.create_portal(customer_id, return_url))


def invoices(
    billing: BillingReader, gateway: PaymentGateway, client_id: str, limit: int, cursor: str | None
) -> InvoicePage:
    """One page of the client's Stripe invoices, newest first (none before it has a customer)."""
    state = billing_state(billing, client_id)
    if not state.stripe_customer_id:
        return InvoicePage(items=[], next_cursor=None)
    rows, more = gateway.list_invoices(state.stripe_customer_id, limit, cursor)

    def stamp(value: Any) -> datetime | None:
        return datetime.fromtimestamp(int(value), UTC) if value else None

    items = [
        InvoiceOut(
            id=row["id"],
            number=row.get("number"),
            status=row.get("status"),
            amount_due=int(row.get("amount_due", 0)),
            amount_paid=int(row.get("amount_paid", 0)),
            currency=str(row.get("currency", "")),
            created=stamp(row.get("created")) or datetime.now(UTC),
            period_start=stamp(row.get("period_start")),
            period_end=stamp(row.get("period_end")),
            hosted_invoice_url=row.get("hosted_invoice_url"),
            invoice_pdf=row.get("invoice_pdf"),
        )
        for row in rows
    ]
    return InvoicePage(items=items, next_cursor=items[-1].id if more and items else None)


def onboard_client(
    accounts: BillingAccounts, ledger: Ledger, catalog: Catalog, client_id: str, signup_bonus: int, now: datetime
) -> bool:
    """Free plan and the signup bonus, exactly once per client (the grant's key is the client id)."""
    from shared.ledger.model import Actor, GrantSource

    record = accounts.read(client_id)
    if record.onboarded:
        return False
    if signup_bonus > 0:
        ledger.grant(
            client_id,
            key=f"signup:{client_id}",
            amount=signup_bonus,
            source=GrantSource.SIGNUP,
            actor=Actor(kind="system", id="onboarding"),
            reason="signup bonus",
        )
    # Only a client with no billing yet starts on Free: a subscription recorded first wins.
    start = None if record.has_billing else {"plan": "free", "product_slots": catalog.plan("free").product_slots}
    accounts.record_onboarding(client_id, now, start)
    return True
