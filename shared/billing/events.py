"""The Stripe webhook: verify, de-duplicate, apply.

Every event id gets a marker document (``stripe_events/{id}``) created in the same atomic commit as
the event's change to the client record, so a redelivery changes nothing. Credit grants go through
the ledger keyed by the invoice, session or charge, so the grant itself is exactly-once even if a
crash falls between the grant and the marker: the redelivery's grant replays. Subscription events
carry Stripe's ``event.created``; an older event than the last one applied never overwrites newer
state (Stripe delivers out of order and for days).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from shared.billing.catalog import Catalog, PriceIds
from shared.billing.models import (
    BillingState,
    StripeCharge,
    StripeCheckoutSession,
    StripeEvent,
    StripeInvoice,
    StripeInvoiceLine,
    StripeSubscription,
)
from shared.billing.service import client_ref
from shared.errors import BadRequest, EpoxError
from shared.ledger.model import Actor, GrantSource

if TYPE_CHECKING:
    from google.cloud.firestore import Client

    from shared.ledger.service import Ledger

logger = logging.getLogger("epox.billing")

ACTIVE = ("active", "trialing")
MAX_ATTEMPTS = 5


class _BillingChanged(Exception):
    """The client's billing changed between our read and our commit."""


class WebhookSignatureInvalid(BadRequest):
    code = "webhook_signature_invalid"
    title = "The webhook signature is not valid"


class WebhookPayloadInvalid(BadRequest):
    code = "webhook_payload_invalid"
    title = "The webhook payload is not a Stripe event"


class StripePriceNotConfigured(EpoxError):
    """5xx on purpose: Stripe keeps redelivering the event until the price is configured."""

    status = 500
    code = "stripe_price_not_configured"
    title = "The event names a price this deployment does not know"


def verify_event(payload: bytes, signature: str | None, secret: str, tolerance: int = 300) -> StripeEvent:
    """Check ``Stripe-Signature`` on the raw body (HMAC-SHA256 of "t.body", constant-time, 300 s)."""
    import stripe

    if not secret:
        from shared.errors import ConfigurationError

        raise ConfigurationError("STRIPE_WEBHOOK_SECRET is not set")
    if not signature:
        raise WebhookSignatureInvalid("Missing Stripe-Signature header")
    try:
        stripe.WebhookSignature.verify_header(payload.decode("utf-8", "replace"), signature, secret, tolerance)
    except stripe.SignatureVerificationError as exc:
        raise WebhookSignatureInvalid(str(exc)[:200]) from exc
    try:
        return StripeEvent.model_validate(json.loads(payload))
    except (ValueError, ValidationError) as exc:
        raise WebhookPayloadInvalid("The body is not a Stripe event") from exc


def _ts(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value else None


def _happened_at(event: StripeEvent, fallback: datetime) -> datetime:
    """When Stripe says the event happened (fixed across redeliveries); ``fallback`` if it has no time."""
    return _ts(event.created) or fallback


def add_months(moment: datetime, months: int) -> datetime:
    """Same day-of-month ``months`` later, clamped to the month's last day."""
    import calendar

    year, month = divmod(moment.month - 1 + months, 12)
    year, month = moment.year + year, month + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    # A plain datetime, not ``moment.replace``: Firestore's DatetimeWithNanoseconds.replace returns an
    # instance without its nanoseconds that the client then cannot write.
    return datetime(year, month, day, moment.hour, moment.minute, moment.second, moment.microsecond, moment.tzinfo)


@dataclass
class WebhookProcessor:
    db: Client
    ledger: Ledger
    catalog: Catalog
    prices: PriceIds
    now: datetime

    # -- dispatch ---------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self._versions: dict[str, Any] = {}

    def _state(self, client_id: str) -> BillingState:
        """The client's billing as read now; the commit later requires it unchanged."""
        snapshot = client_ref(self.db, client_id).get()
        self._versions[client_id] = snapshot.update_time if snapshot.exists else None
        data = (snapshot.to_dict() or {}) if snapshot.exists else {}
        return BillingState.model_validate(data.get("billing") or {})

    def handle(self, event: StripeEvent) -> str:
        """Apply the event once; a concurrent change to the same client's billing re-runs the handler
        on fresh state (its ledger grants replay by key)."""
        for _ in range(MAX_ATTEMPTS):
            try:
                return self._handle_once(event)
            except _BillingChanged:
                self._versions.clear()
                continue
        from shared.errors import UpstreamUnavailable

        raise UpstreamUnavailable("The client's billing kept changing; Stripe will redeliver", retry_after=5)

    def _handle_once(self, event: StripeEvent) -> str:
        marker = self.db.collection("stripe_events").document(event.id)
        if marker.get().exists:
            return "duplicate"
        handler = {
            "checkout.session.completed": self._checkout_completed,
            "checkout.session.async_payment_succeeded": self._checkout_completed,
            "customer.subscription.created": self._subscription_changed,
            "customer.subscription.updated": self._subscription_changed,
            "customer.subscription.deleted": self._subscription_deleted,
            "invoice.paid": self._invoice_paid,
            "invoice.payment_failed": self._invoice_payment_failed,
            "charge.refunded": self._charge_refunded,
        }.get(event.type)
        if handler is None:
            self._commit(event, None, {}, "ignored")
            return "ignored"
        return handler(event)

    def _commit(
        self,
        event: StripeEvent,
        client_id: str | None,
        changes: dict[str, Any],
        outcome: str,
        extra: list[tuple[Any, dict[str, Any]]] | None = None,
    ) -> str:
        """Apply ``changes`` to the client's billing and record the event, atomically."""
        from google.api_core.exceptions import AlreadyExists, FailedPrecondition

        batch = self.db.batch()
        batch.create(
            self.db.collection("stripe_events").document(event.id),
            {
                "type": event.type,
                "client_id": client_id,
                "outcome": outcome,
                "created": event.created,
                "processed_at": self.now,
                "livemode": event.livemode,
            },
        )
        version = self._versions.get(client_id) if client_id else None
        if client_id and changes:
            if version is not None:
                batch.update(
                    client_ref(self.db, client_id),
                    _dotted(changes),
                    option=self.db.write_option(last_update_time=version),
                )
            else:
                batch.set(client_ref(self.db, client_id), _nested(changes), merge=True)
        for ref, data in extra or []:
            batch.set(ref, data, merge=True)
        try:
            batch.commit()
        except AlreadyExists:
            return "duplicate"  # a concurrent delivery of the same event won
        except FailedPrecondition as exc:
            raise _BillingChanged() from exc
        return outcome

    def _client_for(self, customer_id: str | None, *fallbacks: str | None) -> str | None:
        if customer_id:
            snapshot = self.db.collection("stripe_customers").document(customer_id).get()
            if snapshot.exists:
                return str((snapshot.to_dict() or {}).get("client_id"))
        for candidate in fallbacks:
            if candidate:
                return candidate
        return None

    def _unroutable(self, event: StripeEvent, what: str) -> str:
        logger.error("stripe event %s (%s): %s", event.id, event.type, what)
        return self._commit(event, None, {}, f"unroutable: {what}")

    @staticmethod
    def _unknown_price(event: StripeEvent, price_id: str | None) -> StripePriceNotConfigured:
        """A plan price we were not told about is a deploy lagging behind the Stripe dashboard:
        nothing is recorded and Stripe redelivers (for days) until STRIPE_PRICE_IDS names it."""
        logger.error("stripe event %s (%s): price %s is not in STRIPE_PRICE_IDS", event.id, event.type, price_id)
        return StripePriceNotConfigured(
            f"Price {price_id} is not configured; Stripe will redeliver the event", price_id=price_id
        )

    # -- checkout ---------------------------------------------------------------------------------
    def _checkout_completed(self, event: StripeEvent) -> str:
        session = StripeCheckoutSession.model_validate(event.object)
        client_id = self._client_for(session.customer, session.metadata.get("client_id"), session.client_reference_id)
        if client_id is None:
            return self._unroutable(event, "no client for the checkout session")
        links: list[tuple[Any, dict[str, Any]]] = []
        changes: dict[str, Any] = {}
        if session.customer:
            links.append((self.db.collection("stripe_customers").document(session.customer), {"client_id": client_id}))
            changes["stripe_customer_id"] = session.customer
        if session.mode == "subscription":
            if session.subscription:
                changes["subscription_id"] = session.subscription
            return self._commit(event, client_id, changes, "subscription checkout linked", links)
        pack_id = session.metadata.get("pack_id")
        if session.mode != "payment" or not pack_id:
            return self._commit(event, client_id, changes, "checkout without a pack")
        if session.payment_status != "paid":
            # Delayed payment methods: credits come with checkout.session.async_payment_succeeded.
            return self._commit(event, client_id, changes, "pack payment pending")
        pack = self.catalog.pack(pack_id)
        # From when Stripe says the payment happened, not from this delivery: a redelivery after a
        # lost commit must ask the ledger for the very same grant, or it would be refused as different.
        expires = (
            _happened_at(event, self.now) + timedelta(days=self.catalog.pack_credit_expiry_days)
            if self.catalog.pack_credit_expiry_days
            else None
        )
        result = self.ledger.grant(
            client_id,
            key=f"stripe:pack:{session.id}",
            amount=pack.credits,
            source=GrantSource.PACK,
            actor=Actor(kind="stripe", id=event.id),
            reason=f"credit pack {pack.name}",
            expires_at=expires,
            reference=session.payment_intent or session.id,
        )
        purchase = {
            "session_id": session.id,
            "pack_id": pack_id,
            "credits": pack.credits,
            "bucket_id": result["bucket_id"],
            "payment_intent": session.payment_intent,
            "amount_total": session.amount_total,
            "currency": session.currency,
            "revoked_credits": 0,
            "purchased_at": self.now,
        }
        links.append((client_ref(self.db, client_id).collection("purchases").document(session.id), purchase))
        if session.payment_intent:
            links.append(
                (
                    self.db.collection("stripe_payments").document(session.payment_intent),
                    {"client_id": client_id, "session_id": session.id},
                )
            )
        return self._commit(event, client_id, changes, f"granted {pack.credits} pack credits", links)

    # -- subscriptions ----------------------------------------------------------------------------
    def _stale(self, state: BillingState, event: StripeEvent) -> bool:
        return event.created < state.last_event_created

    @staticmethod
    def _not_current(state: BillingState, subscription_id: str | None) -> bool:
        """About a subscription that has ended or been replaced. Stripe stamps the final failed
        payment and the cancellation it causes with the same second, in either order: once the
        cancellation is applied, nothing about that subscription may mark the client past due."""
        if not subscription_id or not state.subscription_id:
            return False
        return subscription_id != state.subscription_id or state.subscription_status == "canceled"

    def _subscription_changed(self, event: StripeEvent) -> str:
        sub = StripeSubscription.model_validate(event.object)
        client_id = self._client_for(sub.customer, sub.metadata.get("client_id"))
        if client_id is None:
            return self._unroutable(event, "no client for the subscription's customer")
        state = self._state(client_id)
        if self._stale(state, event):
            return self._commit(event, client_id, {}, "stale: a newer subscription event was applied")
        if sub.status in ("canceled", "incomplete_expired"):
            return self._subscription_deleted(event)
        if state.subscription_status == "canceled" and state.subscription_id == sub.id:
            return self._commit(event, client_id, {}, "stale: the subscription has ended")
        plan_interval = self.prices.plan_of(sub.first_item().price.id)
        if plan_interval is None:
            raise self._unknown_price(event, sub.first_item().price.id)
        new_plan_id, interval = plan_interval
        start, end = sub.period()
        changes: dict[str, Any] = {
            "subscription_id": sub.id,
            "subscription_status": sub.status,
            "interval": interval,
            "current_period_start": _ts(start),
            "current_period_end": _ts(end),
            "cancel_at_period_end": sub.cancel_at_period_end,
            "stripe_customer_id": sub.customer,
            "last_event_created": event.created,
            "last_event_id": event.id,
        }
        outcome = f"subscription {sub.status}"
        if sub.status in ACTIVE:
            changes["past_due_since"] = None
            new, old = self.catalog.plan(new_plan_id), self.catalog.plans.get(state.plan) or self.catalog.plan("free")
            if new.rank > old.rank or state.plan == "free":
                # The plan before: ours, or — when this update overtook the events that set ours up —
                # the one Stripe says the subscription changed from.
                mine = state.plan != "free" and state.subscription_id == sub.id
                before = state.plan if mine else self._previous_plan(event)
                if before and before != "free" and self.catalog.plan(before).rank < new.rank:
                    granted = self._prorated_upgrade(client_id, event, sub, before, new_plan_id, start, end)
                    outcome = f"upgraded {before} → {new_plan_id}, prorated {granted} credits"
                else:
                    outcome = f"plan {new_plan_id}"
                changes |= {
                    "plan": new_plan_id,
                    "product_slots": new.product_slots,
                    "pending_plan": None,
                    "pending_plan_at": None,
                }
            elif new.rank < old.rank:
                changes |= {"pending_plan": new_plan_id, "pending_plan_at": _ts(end)}
                outcome = f"downgrade to {new_plan_id} at period end"
            elif state.pending_plan:
                changes |= {"pending_plan": None, "pending_plan_at": None}
                outcome = "pending plan change withdrawn"
        elif sub.status in ("past_due", "unpaid"):
            changes["past_due_since"] = state.past_due_since or self.now
        return self._commit(event, client_id, changes, outcome)

    def _previous_plan(self, event: StripeEvent) -> str | None:
        """The plan in ``data.previous_attributes`` of a subscription update that changed the price."""
        previous = event.data.get("previous_attributes")
        listed = previous.get("items") if isinstance(previous, dict) else None
        items = listed.get("data") if isinstance(listed, dict) else None
        price = items[0].get("price") if isinstance(items, list) and items and isinstance(items[0], dict) else None
        price = price.get("id") if isinstance(price, dict) else price
        found = self.prices.plan_of(price) if isinstance(price, str) else None
        return found[0] if found and found[0] in self.catalog.plans else None

    def _prorated_upgrade(
        self,
        client_id: str,
        event: StripeEvent,
        sub: StripeSubscription,
        old_plan: str,
        new_plan: str,
        start: int | None,
        end: int | None,
    ) -> int:
        """The rest of this allotment period at the new plan's rate minus the old one's, at once."""
        if not start or not end or end <= start:
            return 0
        difference = self.catalog.plan(new_plan).monthly_credits - self.catalog.plan(old_plan).monthly_credits
        period_start, period_end = _ts(start), _ts(end)
        assert period_start is not None and period_end is not None
        # Prorated from the moment of the change (the event's time), so a redelivery computes the
        # same amount and the ledger replays the grant instead of refusing a different one.
        changed_at = _happened_at(event, self.now)
        # Annual plans get monthly allotments: prorate over the current month of the year.
        month_start = period_start
        while add_months(month_start, 1) <= changed_at and add_months(month_start, 1) < period_end:
            month_start = add_months(month_start, 1)
        month_end = min(add_months(month_start, 1), period_end)
        remaining = max(0.0, (month_end - max(changed_at, month_start)).total_seconds())
        amount = int(difference * remaining // (month_end - month_start).total_seconds())
        if amount <= 0:
            return 0
        self.ledger.grant(
            client_id,
            key=f"stripe:upgrade:{sub.id}:{int(month_start.timestamp())}:{new_plan}",
            amount=amount,
            source=GrantSource.SUBSCRIPTION,
            actor=Actor(kind="stripe", id=event.id),
            reason=f"upgrade {old_plan} → {new_plan}: prorated rest of the period",
            expires_at=None if self.catalog.rollover else month_end,
            reference=sub.id,
        )
        return amount

    def _subscription_deleted(self, event: StripeEvent) -> str:
        sub = StripeSubscription.model_validate(event.object)
        client_id = self._client_for(sub.customer, sub.metadata.get("client_id"))
        if client_id is None:
            return self._unroutable(event, "no client for the subscription's customer")
        state = self._state(client_id)
        if self._stale(state, event):
            return self._commit(event, client_id, {}, "stale: a newer subscription event was applied")
        if state.subscription_id and state.subscription_id != sub.id:
            return self._commit(event, client_id, {}, "an older subscription ended; the current one stays")
        _, end = sub.period()
        ends_at = _ts(end)
        changes: dict[str, Any] = {
            "subscription_status": "canceled",
            "cancel_at_period_end": False,
            "last_event_created": event.created,
            "last_event_id": event.id,
        }
        unpaid = state.past_due_since is not None
        if ends_at is not None and ends_at > self.now and not unpaid:
            changes |= {"pending_plan": "free", "pending_plan_at": ends_at}
            outcome = "moves to Free at period end"
        else:
            # A subscription cancelled for non-payment keeps nothing of the period it did not pay for;
            # on Free nothing is owed, so the past-due block ends with it (packs bought later work).
            changes |= _plan_fields(self.catalog, "free") | {"interval": None, "past_due_since": None}
            outcome = "moved to Free" + (" (unpaid)" if unpaid else "")
        return self._commit(event, client_id, changes, outcome)

    # -- invoices ---------------------------------------------------------------------------------
    def _invoice_paid(self, event: StripeEvent) -> str:
        invoice = StripeInvoice.model_validate(event.object)
        client_id = self._client_for(invoice.customer)
        if client_id is None:
            return self._unroutable(event, "no client for the invoice's customer")
        subscription_id = invoice.subscription_id()
        if not subscription_id or invoice.billing_reason not in ("subscription_create", "subscription_cycle"):
            return self._commit(event, client_id, {}, f"invoice paid ({invoice.billing_reason}): no allotment")
        line, plan_interval = None, None
        for raw in invoice.lines.data:
            candidate = StripeInvoiceLine.model_validate(raw)
            price_id = candidate.price_id()
            plan_interval = self.prices.plan_of(price_id) if price_id else None
            if plan_interval:
                line = candidate
                break
        if line is None or plan_interval is None:
            prices = [StripeInvoiceLine.model_validate(raw).price_id() for raw in invoice.lines.data]
            raise self._unknown_price(event, ", ".join(p for p in prices if p) or None)
        plan_id, interval = plan_interval
        plan = self.catalog.plan(plan_id)
        start = _ts(line.period.get("start")) or self.now
        end = _ts(line.period.get("end")) or add_months(start, 12 if interval == "annual" else 1)
        state = self._state(client_id)
        changes: dict[str, Any] = {}
        if not self._stale(state, event):
            # A paid invoice is the plan being in force for its period (a due downgrade lands here).
            changes = _plan_fields(self.catalog, plan_id) | {
                "interval": interval,
                "subscription_id": subscription_id,
                "subscription_status": "active",
                "past_due_since": None,
                "current_period_start": start,
                "current_period_end": end,
                "last_event_created": event.created,
                "last_event_id": event.id,
            }
            if (
                state.pending_plan
                and state.pending_plan != plan_id
                and (state.pending_plan_at is None or state.pending_plan_at > start)
            ):
                changes |= {"pending_plan": state.pending_plan, "pending_plan_at": state.pending_plan_at}
        granted = 0
        if plan.monthly_credits:
            month_end = add_months(start, 1) if interval == "annual" else end
            key = f"stripe:invoice:{invoice.id}" if interval == "monthly" else allotment_key(subscription_id, start)
            self.ledger.grant(
                client_id,
                key=key,
                amount=plan.monthly_credits,
                source=GrantSource.SUBSCRIPTION,
                actor=Actor(kind="stripe", id=event.id),
                reason=f"{plan.name} plan credits for {start.date().isoformat()} to {month_end.date().isoformat()}",
                expires_at=None if self.catalog.rollover else month_end,
                reference=invoice.id,
            )
            granted = plan.monthly_credits
        return self._commit(event, client_id, changes, f"invoice paid: granted {granted} credits")

    def _invoice_payment_failed(self, event: StripeEvent) -> str:
        invoice = StripeInvoice.model_validate(event.object)
        client_id = self._client_for(invoice.customer)
        if client_id is None:
            return self._unroutable(event, "no client for the invoice's customer")
        state = self._state(client_id)
        if self._stale(state, event):
            # E.g. the failed attempt reported after the retry that paid the invoice.
            return self._commit(event, client_id, {}, "stale: a newer event was applied")
        if self._not_current(state, invoice.subscription_id()):
            return self._commit(event, client_id, {}, "payment failed for a subscription that has ended: ignored")
        changes = {
            "subscription_status": "past_due",
            "past_due_since": state.past_due_since or self.now,
            "last_event_created": event.created,
            "last_event_id": event.id,
        }
        return self._commit(event, client_id, changes, "payment failed: past due")

    # -- refunds ----------------------------------------------------------------------------------
    def _charge_refunded(self, event: StripeEvent) -> str:
        charge = StripeCharge.model_validate(event.object)
        if not charge.payment_intent:
            return self._commit(event, None, {}, "refund without a payment intent: ignored")
        link = self.db.collection("stripe_payments").document(charge.payment_intent).get()
        if not link.exists:
            return self._commit(event, None, {}, "refund of a payment that bought no pack: ignored")
        client_id = str((link.to_dict() or {})["client_id"])
        purchase_ref = (
            client_ref(self.db, client_id).collection("purchases").document(str((link.to_dict() or {})["session_id"]))
        )
        purchase = purchase_ref.get().to_dict() or {}
        credits = int(purchase.get("credits", 0))
        fraction = charge.amount_refunded / charge.amount if charge.amount else 1.0
        target = credits if charge.refunded else int(credits * fraction)
        to_remove = target - int(purchase.get("revoked_credits", 0))
        if to_remove <= 0:
            return self._commit(event, client_id, {}, "refund already applied")
        from shared.ledger.service import revoke

        result = revoke(
            self.ledger,
            client_id,
            key=f"stripe:refund:{charge.id}:{charge.amount_refunded}",
            bucket_id=str(purchase["bucket_id"]),
            amount=to_remove,
            actor=Actor(kind="stripe", id=event.id),
            reason=f"pack refunded ({charge.amount_refunded}/{charge.amount}): unspent credits removed",
        )
        extra = [
            (
                purchase_ref,
                {
                    "revoked_credits": int(purchase.get("revoked_credits", 0)) + to_remove,
                    "refunded_amount": charge.amount_refunded,
                    "removed_credits_last": result["removed"],
                },
            )
        ]
        return self._commit(event, client_id, {}, f"refund: removed {result['removed']} unspent credits", extra)


def allotment_key(subscription_id: str, month_start: datetime) -> str:
    return f"allotment:{subscription_id}:{int(month_start.timestamp())}"


def _plan_fields(catalog: Catalog, plan_id: str) -> dict[str, Any]:
    return {
        "plan": plan_id,
        "product_slots": catalog.plan(plan_id).product_slots,
        "pending_plan": None,
        "pending_plan_at": None,
    }


def _dotted(changes: dict[str, Any]) -> dict[str, Any]:
    """The same change as field paths, for an update guarded by a precondition."""
    data: dict[str, Any] = {f"billing.{name}": value for name, value in changes.items()}
    if "plan" in changes:
        data["plan"] = changes["plan"]
    return data


def _nested(changes: dict[str, Any]) -> dict[str, Any]:
    """Billing fields live under ``billing``; ``plan`` is mirrored at the top for older readers."""
    data: dict[str, Any] = {"billing": dict(changes)}
    if "plan" in changes:
        data["plan"] = changes["plan"]
    return data
