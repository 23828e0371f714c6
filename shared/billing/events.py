"""The Stripe webhook: verify, de-duplicate, apply.

Every event id gets a marker (``stripe_events/{id}``) committed atomically with the event's change
to the client's billing (:mod:`shared.billing.store`), so a redelivery changes nothing. Credits go
through the ledger under keys that name the invoice's subscription and plan-month, the upgrade's
plan-month, the pack's session or the refund's charge, so a grant is exactly-once even if a crash
falls between the grant and the marker: the redelivery's grant replays.

Which subscription governs the client's plan, and what each status allows, is the state machine of
:mod:`shared.billing.lifecycle`. Events of the governing subscription carry Stripe's
``event.created``; an older event than the last one applied never overwrites newer state (Stripe
delivers out of order and for days) — but what it paid for or upgraded still counts. The rules for
credits (allotments per plan-month, proration, refunds) are in ``docs/billing.md``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from shared.billing import lifecycle
from shared.billing.calendar import MICROSECOND, PlanMonth, add_months, is_whole_period, months_started, plan_month
from shared.billing.catalog import Catalog, Interval, PriceIds
from shared.billing.credits import allotment_key, grant_allotment, upgrade_key
from shared.billing.models import (
    CLIENT_ID_PATTERN,
    KEEP_IDS,
    BillingNotice,
    BillingState,
    StripeCharge,
    StripeCheckoutSession,
    StripeEvent,
    StripeInvoice,
    StripeInvoiceLine,
    StripeSubscription,
)
from shared.billing.money import prorated_credits, refund_target
from shared.billing.store import DELETE, BillingChanged, BillingSnapshot, BillingStore, EventWrite
from shared.errors import BadRequest, EpoxError, UpstreamUnavailable
from shared.events.model import DomainEvent, EventType, PaymentFailed, Subject, SubscriptionChanged, new_event
from shared.ledger.model import Actor, GrantSource
from shared.retry import CONTENDED_COMMIT, attempts

if TYPE_CHECKING:
    from shared.billing.gateway import PaymentGateway
    from shared.ledger.service import Ledger

logger = logging.getLogger("epox.billing")

# Event types we deliberately acknowledge without effect (recorded as "ignored"): what a Stripe endpoint
# subscribed a little widely sends around the types we handle. Any other unhandled type is quarantined.
IGNORED_TYPES = frozenset(
    {
        "checkout.session.expired",
        "checkout.session.async_payment_failed",
        "customer.created",
        "customer.updated",
        "customer.deleted",
        "customer.subscription.trial_will_end",
        "customer.subscription.paused",
        "customer.subscription.resumed",
        "customer.subscription.pending_update_applied",
        "customer.subscription.pending_update_expired",
        "invoice.created",
        "invoice.finalized",
        "invoice.updated",
        "invoice.upcoming",
        "invoice.payment_succeeded",
        "invoice.payment_action_required",
        "invoice.voided",
        "invoice.marked_uncollectible",
        "payment_intent.created",
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "payment_intent.canceled",
        "payment_method.attached",
        "payment_method.detached",
        "charge.succeeded",
        "charge.failed",
        "charge.updated",
    }
)

# Invoices that pay for a whole billing period: they bring the period's first plan-month allotment.
PERIOD_INVOICES = ("subscription_create", "subscription_cycle")

__all__ = [
    "IGNORED_TYPES",
    "PoisonEvent",
    "WebhookProcessor",
    "add_months",
    "allotment_key",
    "parse_event",
    "poison_reason",
    "verify_event",
    "verify_signature",
]


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


def verify_signature(payload: bytes, signature: str | None, secret: str, tolerance: int = 300) -> None:
    """Check ``Stripe-Signature`` on the raw body (HMAC-SHA256 of "t.body", constant-time, 300 s)."""
    import stripe

    from shared.config import require_vendor_settings

    require_vendor_settings("Stripe webhooks", {"STRIPE_WEBHOOK_SECRET": secret})
    if not signature:
        raise WebhookSignatureInvalid("Missing Stripe-Signature header")
    try:
        stripe.WebhookSignature.verify_header(payload.decode("utf-8", "replace"), signature, secret, tolerance)
    except stripe.SignatureVerificationError as exc:
        raise WebhookSignatureInvalid(str(exc)[:200]) from exc


def parse_event(payload: bytes) -> StripeEvent:
    """The event a (verified) body carries; anything else is a :class:`PoisonEvent` naming what is wrong.

    The JSON is parsed here, not by the HTTP layer (the route is raw): a body of 100,000 nested arrays
    exhausts the decoder's recursion limit, which is a shape like any other, never a 500.
    """
    try:
        raw = json.loads(payload)
    except RecursionError as exc:
        raise PoisonEvent("the body is nested too deeply to parse") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise PoisonEvent(f"the body is not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise PoisonEvent(f"the body is a JSON {type(raw).__name__}, not an event object")
    event_id, event_type = raw.get("id"), raw.get("type")
    known_id = event_id if isinstance(event_id, str) else None
    known_type = event_type if isinstance(event_type, str) else None
    try:
        return StripeEvent.model_validate(raw)
    except ValidationError as exc:
        raise PoisonEvent(describe_invalid(exc), event_id=known_id, event_type=known_type) from exc


def verify_event(payload: bytes, signature: str | None, secret: str, tolerance: int = 300) -> StripeEvent:
    """:func:`verify_signature` then :func:`parse_event`; a body that is no event is a 400 here (the
    webhook itself quarantines it instead, see :mod:`shared.billing.deadletters`)."""
    verify_signature(payload, signature, secret, tolerance)
    try:
        return parse_event(payload)
    except PoisonEvent as exc:
        raise WebhookPayloadInvalid("The body is not a Stripe event") from exc


class PoisonEvent(Exception):
    """A signed delivery that can never be applied as it is (its shape, not our state or a vendor):
    retrying cannot help, so it is quarantined (:mod:`shared.billing.deadletters`) and acknowledged."""

    def __init__(self, reason: str, *, event_id: str | None = None, event_type: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.event_id = event_id
        self.event_type = event_type


def describe_invalid(error: ValidationError) -> str:
    """A short reason from a validation error: where and what, never the (possibly huge) input."""
    parts = [
        f"{'.'.join(str(p) for p in e['loc']) or 'event'}: {e['msg']}"
        for e in error.errors(include_url=False, include_input=False)[:5]
    ]
    return f"unexpected shape ({error.error_count()} errors): " + "; ".join(parts)


# Errors that say the event itself is wrong: the same delivery fails the same way every time. Anything
# else (UpstreamUnavailable, StripePriceNotConfigured, ConfigurationError, a vendor's own exception such
# as Firestore's UNAVAILABLE) is transient or an operator's fix away: a 5xx, and Stripe redelivers.
_POISON_TYPES: tuple[type[BaseException], ...] = (
    ValueError,  # pydantic's ValidationError, json, bad numbers and paths
    TypeError,
    LookupError,  # KeyError, IndexError (an empty items.data)
    AttributeError,
    ArithmeticError,  # OverflowError: a timestamp past datetime's range
    RecursionError,
)


def poison_reason(error: BaseException) -> str | None:
    """Why ``error`` makes its event a poison event, or None when it is transient (the caller re-raises)."""
    if isinstance(error, PoisonEvent):
        return error.reason
    if isinstance(error, ValidationError):
        return describe_invalid(error)
    if isinstance(error, EpoxError):
        # 4xx: the event asks for something that cannot be (an unknown pack, a refused grant); 5xx:
        # transient (UpstreamUnavailable) or configuration (StripePriceNotConfigured).
        return f"{error.code}: {error.detail}" if error.status < 500 else None
    if isinstance(error, _POISON_TYPES):
        return f"{type(error).__name__}: {error}"
    return None


def _ts(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value else None


def _happened_at(event: StripeEvent, fallback: datetime) -> datetime:
    """When Stripe says the event happened (fixed across redeliveries); ``fallback`` if it has no time."""
    return _ts(event.created) or fallback


def _bounded(ids: list[str], new: str) -> list[str]:
    return [*[i for i in ids if i != new], new][-KEEP_IDS:]


def _plan_fields(catalog: Catalog, plan_id: str) -> dict[str, Any]:
    return {
        "plan": plan_id,
        "product_slots": catalog.plan(plan_id).product_slots,
        "pending_plan": None,
        "pending_plan_at": None,
    }


@dataclass(frozen=True)
class _PlanLine:
    """The plan line of an invoice: its price's plan and interval and the period it pays for."""

    plan_id: str
    interval: Interval
    start: datetime
    end: datetime

    def first_month(self) -> PlanMonth:
        # A monthly plan's period is its one plan-month; an annual period starts with month 0.
        if self.interval == "monthly":
            return PlanMonth(anchor=self.start, index=0, start=self.start, end=self.end)
        return plan_month(self.start, 0, self.end)

    def is_whole_period(self) -> bool:
        return is_whole_period(self.start, self.end, 12 if self.interval == "annual" else 1)


@dataclass
class WebhookProcessor:
    store: BillingStore
    ledger: Ledger
    catalog: Catalog
    prices: PriceIds
    now: datetime
    gateway: PaymentGateway | None = None

    # -- dispatch ---------------------------------------------------------------------------------
    def handle(self, event: StripeEvent) -> str:
        """Apply the event once; a concurrent change to the same client's billing decides it again on
        fresh state (its ledger grants replay by key, its Stripe calls are idempotent)."""
        for _ in attempts(CONTENDED_COMMIT, "stripe webhook event"):
            try:
                return self._handle_once(event)
            except BillingChanged:
                continue
        raise UpstreamUnavailable("The client's billing kept changing; Stripe will redeliver", retry_after=5)

    def _handle_once(self, event: StripeEvent) -> str:
        if self.store.event_recorded(event.id):
            return "duplicate"
        handler = {
            "checkout.session.completed": self._checkout_completed,
            "checkout.session.async_payment_succeeded": self._checkout_completed,
            "customer.subscription.created": self._subscription_event,
            "customer.subscription.updated": self._subscription_event,
            "customer.subscription.deleted": self._subscription_event,
            "invoice.paid": self._invoice_paid,
            "invoice.payment_failed": self._invoice_payment_failed,
            "charge.refunded": self._charge_refunded,
        }.get(event.type)
        if handler is None:
            if event.type in IGNORED_TYPES:
                return self._record(event, None, "ignored")
            # A type this code does not know (a newer API version, a new subscription in the dashboard):
            # quarantined, so nothing Stripe sends is silently dropped; replay it once the code knows it.
            raise PoisonEvent(f"unknown event type {event.type[:128]!r}")
        return handler(event)

    def _record(
        self,
        event: StripeEvent,
        client_id: str | None,
        outcome: str,
        *,
        snapshot: BillingSnapshot | None = None,
        changes: dict[str, Any] | None = None,
        **parts: Any,
    ) -> str:
        """Commit the event's marker with ``changes`` (decided on ``snapshot``) and ``parts``; a change
        of plan or subscription status also commits its ``billing.subscription_changed`` event."""
        events = list(parts.pop("events", []))
        if client_id and snapshot is not None and changes:
            changed = _subscription_changed_event(client_id, snapshot.state, changes, event, self.now)
            if changed is not None:
                events.append(changed)
        write = EventWrite(
            event_id=event.id,
            event_type=event.type,
            event_created=event.created,
            livemode=event.livemode,
            outcome=outcome,
            processed_at=self.now,
            client_id=client_id,
            changes=changes or {},
            version=snapshot.version if snapshot is not None else None,
            events=events,
            **parts,
        )
        return outcome if self.store.commit(write) else "duplicate"

    def _client_for(self, customer_id: str | None, *fallbacks: str | None) -> str | None:
        if customer_id:
            found = self.store.client_of_customer(customer_id)
            if found:
                return found
        for candidate in fallbacks:
            if candidate:
                if not re.fullmatch(CLIENT_ID_PATTERN, candidate):
                    # ``metadata.client_id`` would become ``clients/{candidate}``: never a path.
                    raise PoisonEvent(f"the event names a client id that is not one: {candidate[:64]!r}")
                return candidate
        return None

    def _unroutable(self, event: StripeEvent, what: str) -> str:
        logger.error("stripe event %s (%s): %s", event.id, event.type, what)
        return self._record(event, None, f"unroutable: {what}")

    def _plan_of_price(self, event: StripeEvent, price_id: str | None) -> tuple[str, Interval]:
        """The catalog plan and interval of a price. A plan price we were not told about is a deploy
        lagging behind the Stripe dashboard: nothing is recorded and Stripe redelivers (for days)
        until STRIPE_PRICE_IDS names it."""
        found = self.prices.plan_of(price_id) if price_id else None
        if found is None or found[0] not in self.catalog.plans:
            logger.error("stripe event %s (%s): price %s is not in STRIPE_PRICE_IDS", event.id, event.type, price_id)
            raise StripePriceNotConfigured(
                f"Price {price_id} is not configured; Stripe will redeliver the event", price_id=price_id
            )
        return found

    def _actor(self, event: StripeEvent) -> Actor:
        return Actor(kind="stripe", id=event.id)

    # -- checkout ---------------------------------------------------------------------------------
    def _checkout_completed(self, event: StripeEvent) -> str:
        session = StripeCheckoutSession.model_validate(event.object)
        client_id = self._client_for(session.customer, session.metadata.get("client_id"), session.client_reference_id)
        if client_id is None:
            return self._unroutable(event, "no client for the checkout session")
        parts: dict[str, Any] = {}
        changes: dict[str, Any] = {}
        if session.customer:
            parts["customer_link"] = session.customer
            changes["stripe_customer_id"] = session.customer
        if session.mode == "subscription":
            # The subscription's own events say which subscription the client has (it may have one
            # already, or this one may be a second that gets cancelled): the session links the customer.
            return self._record(event, client_id, "subscription checkout linked", changes=changes, **parts)
        pack_id = session.metadata.get("pack_id")
        if session.mode != "payment" or not pack_id:
            return self._record(event, client_id, "checkout without a pack", changes=changes, **parts)
        if session.payment_status != "paid":
            # Delayed payment methods: credits come with checkout.session.async_payment_succeeded.
            return self._record(event, client_id, "pack payment pending", changes=changes, **parts)
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
            actor=self._actor(event),
            reason=f"credit pack {pack.name}",
            expires_at=expires,
            reference=session.payment_intent or session.id,
        )
        parts["purchase"] = {
            "session_id": session.id,
            "pack_id": pack_id,
            "credits": pack.credits,
            "bucket_id": result["bucket_id"],
            "payment_intent": session.payment_intent,
            "amount_total": session.amount_total,
            "currency": session.currency,
            "purchased_at": _happened_at(event, self.now),
        }
        if session.payment_intent:
            parts["payment_link"] = (session.payment_intent, session.id)
        return self._record(event, client_id, f"granted {pack.credits} pack credits", changes=changes, **parts)

    # -- subscriptions ----------------------------------------------------------------------------
    def _subscription_event(self, event: StripeEvent) -> str:
        sub = StripeSubscription.model_validate(event.object)
        client_id = self._client_for(sub.customer, sub.metadata.get("client_id"))
        if client_id is None:
            return self._unroutable(event, "no client for the subscription's customer")
        snap = self.store.read(client_id)
        state = snap.state
        if sub.id == state.subscription_id:
            return self._governing_subscription_event(event, sub, client_id, snap)
        if sub.id == state.previous_subscription_id or sub.id in state.rejected_subscriptions:
            granted = self._replaced_upgrade(client_id, event, sub, state)
            note = f"; prorated {granted} credits" if granted else ""
            return self._record(event, client_id, f"a replaced subscription: nothing changes{note}")
        if sub.status in lifecycle.ENDED and state.subscription_id and not self._newer_than_governing(sub, state):
            return self._record(event, client_id, "another subscription ended; the client's stays")
        if self._older_than_governing(_ts(sub.period()[0]), state):
            # A subscription the client had before this one (its events came late): it is over.
            return self._record(event, client_id, "an older subscription: nothing changes")
        if lifecycle.takes_over(state.subscription_status, bool(state.subscription_id), sub.status):
            return self._take_over(event, sub, client_id, snap)
        if self._governing_ended_in_stripe(state):
            return self._take_over(event, sub, client_id, snap)
        return self._second_subscription(event, client_id, snap, sub.id, sub.status)

    def _newer_than_governing(self, sub: StripeSubscription, state: BillingState) -> bool:
        """A subscription that started after the governing one, which has ended (by its events, or by
        Stripe's word when they are late): the client's next one (its end may arrive before its other
        events)."""
        start = _ts(sub.period()[0])
        current = state.current_period_start
        if start is None or (current is not None and start <= current):
            return False
        return state.subscription_status in lifecycle.ENDED or self._governing_ended_in_stripe(state)

    def _take_over(self, event: StripeEvent, sub: StripeSubscription, client_id: str, snap: BillingSnapshot) -> str:
        """``sub`` becomes the governing subscription (the client had none, or its one ended or was never paid)."""
        state = snap.state
        plan_id, interval = self._plan_of_price(event, sub.first_item().price.id)
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
            "ended_event_created": None,
            "failed_invoices": [],
            "past_due_since": None,
            "paid_through": None,
            "ended_plan": None,
        } | self._replacing(state, sub.id, event)
        outcome = f"subscription {sub.status}"
        if sub.status in lifecycle.ENDED:
            changes |= {"ended_event_created": event.created, "ended_plan": plan_id}
        elif sub.status in lifecycle.PAID:
            # Nothing of this subscription's came before: a ``plan_before`` left by the one it follows
            # would make this one's late downgrade event look like a plan changed knowingly since.
            changes |= _plan_fields(self.catalog, plan_id) | {
                "plan_from": sub.id,
                "plan_since": self.now,
                "plan_before": None,
            }
            if sub.status in lifecycle.ACTIVE and event.type == "customer.subscription.created":
                changes["paid_through"] = _ts(end)  # created active: its first invoice was paid
            outcome = f"plan {plan_id}"
            if sub.status in ("past_due", "unpaid"):
                changes["past_due_since"] = self.now
            before = self._plan_before(event, interval)
            if before is not None and self.catalog.plan(before).rank < self.catalog.plan(plan_id).rank:
                # An upgrade of this subscription that overtook its first events: it still prorates.
                granted = self._prorate(client_id, event, sub, before, plan_id, interval, self.now)
                changes["plan_before"] = before
                outcome = f"upgraded {before} → {plan_id}, prorated {granted} credits"
            elif before is not None and before != plan_id:
                # A downgrade that overtook the first events: the period paid at the plan before it.
                changes |= _plan_fields(self.catalog, before) | {"pending_plan": plan_id, "pending_plan_at": _ts(end)}
                outcome = f"plan {before}; downgrade to {plan_id} at period end"
        return self._record(event, client_id, outcome, snapshot=snap, changes=changes)

    @staticmethod
    def _older_than_governing(start: datetime | None, state: BillingState) -> bool:
        """A subscription whose period started before the governing one's: one the client had before
        (only one is ever live, so a later one starts after it ended; a race's pair start together)."""
        current = state.current_period_start
        return start is not None and current is not None and bool(state.subscription_id) and start < current

    def _governing_ended_in_stripe(self, state: BillingState) -> bool:
        """Before another subscription is cancelled as a second one: whether the one we think the client
        has is in fact over in Stripe (its deletion event is late). An irreversible cancellation and
        refund is decided on Stripe's word, not on events that may still be in flight."""
        if self.gateway is None or not state.subscription_id:
            return False
        found = self.gateway.subscription(state.subscription_id)
        return found is None or not lifecycle.rules(found.status).live

    def _paid_while_live(self, subscription_id: str, event: StripeEvent) -> bool:
        """Whether an event of a subscription we never governed happened before it ended (Stripe's
        word; without a gateway, assumed so)."""
        if self.gateway is None:
            return True
        found = self.gateway.subscription(subscription_id)
        return found is not None and (found.ended_at is None or event.created < found.ended_at)

    def _replacing(self, state: BillingState, new_id: str, event: StripeEvent) -> dict[str, Any]:
        """What taking over from the governing subscription records about it (cancelled if never paid)."""
        old = state.subscription_id
        if not old or old == new_id:
            return {}
        ended = state.ended_event_created
        changes: dict[str, Any] = {}
        if state.subscription_status not in lifecycle.ENDED:
            # Never paid (incomplete), replaced by a paid one; or over in Stripe already (its deletion
            # is late): cancelling one that is over is a no-op.
            self._cancel(old)
            ended = event.created
            if state.plan_from == old:
                # Its plan ends as a cancellation's does: when the paid period ends (unless the new
                # subscription's plan applies now, which the caller's changes then say).
                until = state.paid_through or state.current_period_end
                if until is not None and until > self.now and state.past_due_since is None:
                    changes |= {"pending_plan": "free", "pending_plan_at": until}
                else:
                    changes |= _plan_fields(self.catalog, "free") | {"interval": None, "plan_from": None}
        return changes | {"previous_subscription_id": old, "previous_ended_created": ended}

    def _second_subscription(
        self,
        event: StripeEvent,
        client_id: str,
        snap: BillingSnapshot,
        subscription_id: str,
        status: str,
        invoice_id: str | None = None,
    ) -> str:
        """A subscription besides the live one the client has: recorded; once it is paid for, it is
        cancelled and its invoices refunded through Stripe, and the client is told."""
        state = snap.state
        if status not in lifecycle.PAID and invoice_id is None:
            return self._record(event, client_id, f"another subscription ({status}): nothing changes")
        changes: dict[str, Any] = {}
        notices = []
        done = []
        if subscription_id not in state.rejected_subscriptions:
            self._cancel(subscription_id)
            changes["rejected_subscriptions"] = _bounded(state.rejected_subscriptions, subscription_id)
            notices.append(
                (
                    f"billing-duplicate-subscription-{subscription_id}",
                    BillingNotice(
                        kind="duplicate_subscription_cancelled",
                        subscription_id=subscription_id,
                        message="You already have a subscription, so the second one started at the same time "
                        "was cancelled and its payment refunded.",
                        created_at=self.now,
                    ),
                )
            )
            done.append("cancelled")
        if invoice_id and invoice_id not in state.refunded_invoices:
            self._refund(invoice_id, subscription_id)
            changes["refunded_invoices"] = _bounded(state.refunded_invoices, invoice_id)
            done.append("refunded")
        outcome = "a second subscription: " + (" and ".join(done) if done else "already cancelled")
        return self._record(event, client_id, outcome, snapshot=snap, changes=changes, notices=notices)

    def _cancel(self, subscription_id: str) -> None:
        if self.gateway is None:
            logger.error("no payment gateway: subscription %s must be cancelled by hand", subscription_id)
            return
        if not self.gateway.cancel_subscription(subscription_id):
            logger.info("subscription %s was no longer live", subscription_id)

    def _refund(self, invoice_id: str, subscription_id: str) -> None:
        if self.gateway is None:
            logger.error("no payment gateway: invoice %s must be refunded by hand", invoice_id)
            return
        self.gateway.refund_invoice(invoice_id, reason=f"second subscription {subscription_id}")

    def _governing_subscription_event(
        self, event: StripeEvent, sub: StripeSubscription, client_id: str, snap: BillingSnapshot
    ) -> str:
        state = snap.state
        ended = state.subscription_status in lifecycle.ENDED
        if ended or event.created < state.last_event_created:
            granted = self._late_upgrade(client_id, event, sub, state)
            note = f"; prorated {granted} credits" if granted else ""
            if ended:
                changes = self._upgraded_before_the_end(event, sub, state)
                if not changes and state.pending_plan == "free":
                    # A downgrade that was waiting for the period end: the paid period ends at the plan before.
                    lower = self._late_downgrade(event, sub, state)
                    changes = {k: v for k, v in lower.items() if not k.startswith("pending_")}
                return self._record(
                    event, client_id, f"stale: the subscription has ended{note}", snapshot=snap, changes=changes
                )
            changes = self._late_downgrade(event, sub, state)
            return self._record(
                event, client_id, f"stale: a newer subscription event was applied{note}", snapshot=snap, changes=changes
            )
        if sub.status in lifecycle.ENDED:
            return self._ended(event, sub, client_id, snap)
        return self._updated(event, sub, client_id, snap)

    def _ended(self, event: StripeEvent, sub: StripeSubscription, client_id: str, snap: BillingSnapshot) -> str:
        """The governing subscription ended: it takes away only the plan it gave."""
        state = snap.state
        _, end = sub.period()
        ends_at = _ts(end)
        changes: dict[str, Any] = {
            "subscription_status": sub.status,
            "cancel_at_period_end": False,
            "last_event_created": event.created,
            "last_event_id": event.id,
            "ended_event_created": event.created,
            "failed_invoices": [],
        }
        found = self.prices.plan_of(sub.first_item().price.id)
        if found and found[0] in self.catalog.plans:
            changes["ended_plan"] = found[0]
            if found[0] == state.plan and state.pending_plan not in (None, "free"):
                # It ended at the plan in force while a downgrade was pending: the downgrade was
                # withdrawn first, and that change's event (late) prorates from this plan, i.e. nothing.
                changes["plan_before"] = state.plan
        # The plan stays until the paid period ends (records from before ``paid_through``: the period's end).
        paid_until = min(ends_at, state.paid_through) if ends_at and state.paid_through else ends_at
        if state.plan_from != sub.id:
            changes["past_due_since"] = None
            outcome = f"subscription {sub.status}: its plan never applied"
        elif paid_until is not None and paid_until > self.now and state.past_due_since is None:
            changes |= {"pending_plan": "free", "pending_plan_at": paid_until}
            outcome = "moves to Free at period end"
            start_at = _ts(sub.period()[0])
            current = state.current_period_start
            # A period we have not heard of (a reset or renewal whose events are late) is billed at the
            # subscription's last price; within ours, only an upgrade we missed changes the plan.
            later_period = start_at is not None and current is not None and start_at > current
            if found and found[0] in self.catalog.plans and found[0] != state.plan:
                upgraded = self.catalog.plan(found[0]).rank > self.catalog.plan(state.plan).rank
                if later_period or upgraded:
                    # The paid period ends at the plan it had (a late upgrade event still prorates).
                    changes |= {"plan": found[0], "product_slots": self.catalog.plan(found[0]).product_slots}
                    changes |= {"plan_before": state.plan, "plan_since": self.now}
        else:
            # A subscription cancelled for non-payment keeps nothing of the period it did not pay for;
            # on Free nothing is owed, so the past-due block ends with it (packs bought later work).
            unpaid = state.past_due_since is not None
            changes |= _plan_fields(self.catalog, "free") | {
                "interval": None,
                "past_due_since": None,
                "plan_from": None,
            }
            outcome = "moved to Free" + (" (unpaid)" if unpaid else "")
        return self._record(event, client_id, outcome, snapshot=snap, changes=changes)

    def _updated(self, event: StripeEvent, sub: StripeSubscription, client_id: str, snap: BillingSnapshot) -> str:
        state = snap.state
        plan_id, interval = self._plan_of_price(event, sub.first_item().price.id)
        start, end = sub.period()
        start_at, end_at = _ts(start), _ts(end)
        changes: dict[str, Any] = {
            "subscription_status": sub.status,
            "interval": interval,
            "current_period_start": start_at,
            "current_period_end": end_at,
            "cancel_at_period_end": sub.cancel_at_period_end,
            "stripe_customer_id": sub.customer,
            "last_event_created": event.created,
            "last_event_id": event.id,
        }
        outcome = f"subscription {sub.status}"
        status_rules = lifecycle.rules(sub.status)
        if status_rules.plan is lifecycle.PlanEffect.APPLIED:
            changes |= {"past_due_since": None, "failed_invoices": []}
            applied = _plan_fields(self.catalog, plan_id) | {
                "plan_from": sub.id,
                "plan_since": self.now,
                "plan_before": state.plan,
            }
            new = self.catalog.plan(plan_id)
            old = self.catalog.plans.get(state.plan) or self.catalog.plan("free")
            rolled = (
                start_at is not None and state.current_period_end is not None and start_at >= state.current_period_end
            )
            # A new period that started early: the reset itself when this update changed the price or the
            # anchor (or does not say what it changed); else a later period of a reset we have not
            # heard of yet, which only rolls (its renewal is not known to be paid).
            new_period = self._is_reset(state, interval, start_at)
            previous = event.previous_attributes
            resets_here = previous is None or event.previous_price() is not None or "billing_cycle_anchor" in previous
            if state.plan_from != sub.id:
                # The first time this subscription's plan applies (it was incomplete); a price change
                # that overtook its activation is a change of the plan it started with.
                base = self._plan_before(event, interval) or plan_id
                changes |= _plan_fields(self.catalog, base) | {
                    "plan_from": sub.id,
                    "plan_since": self.now,
                    "plan_before": None,  # nothing of this subscription's came before
                }
                outcome = f"plan {base}"
                outcome += self._change_of_base(client_id, event, sub, base, plan_id, interval, end_at, changes)
            elif new_period or rolled:
                # A new period: an interval change (or a reset anchor) starts one at once, billed at the
                # new price, with its first month's credits; a renewal starts one at the price Stripe
                # bills it at (a due downgrade lands here), its credits coming with its paid invoice.
                # A price change inside the new period may have overtaken the period's own event: the
                # period then started at the price it changed from, and the change is an upgrade (or a
                # downgrade) of it.
                base = self._plan_before(event, interval) or plan_id
                changes |= _plan_fields(self.catalog, base) | {
                    "plan_from": sub.id,
                    "plan_since": self.now,
                    "plan_before": state.plan,
                }
                if new_period and resets_here:
                    changes["paid_through"] = end_at  # charged at once: active means paid
                    granted = self._period_allotment(client_id, event, sub, base, interval, start_at, end_at)
                    outcome = f"period reset: plan {base}, granted {granted} credits"
                else:
                    outcome = f"plan {base} from this period"
                outcome += self._change_of_base(client_id, event, sub, base, plan_id, interval, end_at, changes)
            elif new.rank > old.rank:
                changes |= applied
                granted = 0
                if event.previous_attributes is None or event.previous_price():
                    # The change itself (or an update that does not say what changed): prorated from its
                    # time. An update that overtook the change applies the plan; the change, when it
                    # comes, prorates.
                    granted = self._prorate(client_id, event, sub, state.plan, plan_id, interval, self.now)
                else:
                    self._keep_started_months(client_id, event, sub, state.plan, interval, self.now)
                changes["plan_before"] = state.plan
                outcome = f"upgraded {state.plan} → {plan_id}, prorated {granted} credits"
            elif new.rank < old.rank:
                # Until the period ends the client keeps what it paid for; a renewal does not move it.
                at = state.pending_plan_at if state.pending_plan == plan_id and state.pending_plan_at else end_at
                changes |= {"pending_plan": plan_id, "pending_plan_at": at}
                outcome = f"downgrade to {plan_id} at period end"
            elif state.pending_plan:
                # The plan in force never changed: a late change event back to it (from the pending,
                # lower price) prorates from this plan, i.e. nothing.
                changes |= {"pending_plan": None, "pending_plan_at": None, "plan_before": state.plan}
                outcome = "pending plan change withdrawn"
        else:
            if sub.status in ("past_due", "unpaid"):
                changes["past_due_since"] = state.past_due_since or self.now
            current_end = state.current_period_end
            rolled = start_at is not None and current_end is not None and start_at >= current_end
            new_period = rolled or self._is_reset(state, interval, start_at)
            kept = status_rules.plan is lifecycle.PlanEffect.KEPT
            if kept and state.plan_from != sub.id:
                # Past due (or unpaid, paused) means it was paid once: its activation is late.
                changes |= _plan_fields(self.catalog, plan_id) | {"plan_from": sub.id, "plan_since": self.now}
                changes["plan_before"] = None
            elif new_period and kept:
                # A new period (its renewal not paid yet) is billed at its price: that is the plan kept.
                changes |= _plan_fields(self.catalog, plan_id) | {"plan_since": self.now}
        return self._record(event, client_id, outcome, snapshot=snap, changes=changes)

    def _change_of_base(
        self,
        client_id: str,
        event: StripeEvent,
        sub: StripeSubscription,
        base: str,
        plan_id: str,
        interval: Interval,
        end_at: datetime | None,
        changes: dict[str, Any],
    ) -> str:
        """A price change from ``base`` to ``plan_id`` carried by an event that also did something
        else (started a period, activated the subscription): an upgrade applies now and prorates, a
        downgrade waits for the period end. Adds to ``changes``; returns what to add to the outcome."""
        if self.catalog.plan(plan_id).rank > self.catalog.plan(base).rank:
            prorated = self._prorate(client_id, event, sub, base, plan_id, interval, self.now)
            changes |= _plan_fields(self.catalog, plan_id) | {"plan_before": base}
            return f"; upgraded {base} → {plan_id}, prorated {prorated} credits"
        if plan_id != base:
            changes |= {"pending_plan": plan_id, "pending_plan_at": end_at}
            return f"; downgrade to {plan_id} at period end"
        return ""

    @staticmethod
    def _is_reset(state: BillingState, interval: Interval, start_at: datetime | None) -> bool:
        """A new period that starts before the current one ends, or at another interval: Stripe resets
        the billing cycle anchor when the price's interval changes ("the billing interval is changed
        … we … reset the billing date", Update a subscription, docs.stripe.com/api/subscriptions/update)
        or when asked to (``billing_cycle_anchor=now``)."""
        current_start, current_end = state.current_period_start, state.current_period_end
        if start_at is None or current_start is None or current_end is None or start_at <= current_start:
            return False
        return start_at < current_end or (state.interval is not None and interval != state.interval)

    def _plan_before(self, event: StripeEvent, interval: Interval) -> str | None:
        """The plan an update changed from within the period, from its ``previous_attributes`` (a
        catalog plan), if it says; ``None`` for a change that also started a new period (another
        interval, or a new period start): that is a reset, not an upgrade to prorate."""
        price = event.previous_price()
        found = self.prices.plan_of(price) if price else None
        if not found or found[0] not in self.catalog.plans or found[1] != interval:
            return None
        previous = event.previous_attributes or {}
        listed = previous.get("items")
        items = listed.get("data") if isinstance(listed, dict) else None
        first = items[0] if isinstance(items, list) and items and isinstance(items[0], dict) else {}
        if "current_period_start" in previous or "current_period_start" in first:
            return None
        return found[0]

    def _upgraded_before_the_end(
        self, event: StripeEvent, sub: StripeSubscription, state: BillingState
    ) -> dict[str, Any]:
        """An upgrade that happened before the cancellation we processed first: the paid period that
        still runs ends at the upgraded plan."""
        happened_while_live = state.ended_event_created is not None and event.created < state.ended_event_created
        found = self.prices.plan_of(sub.first_item().price.id)
        if not happened_while_live or found is None or found[0] not in self.catalog.plans:
            return {}
        if self._plan_before(event, found[1]) is None or state.plan_from != sub.id:
            return {}
        if state.pending_plan != "free" or state.pending_plan_at is None or state.pending_plan_at <= self.now:
            return {}
        plan = self.catalog.plan(found[0])
        if plan.rank <= self.catalog.plan(state.plan).rank:
            return {}
        return {
            "plan": found[0],
            "product_slots": plan.product_slots,
            "plan_before": state.plan,
            "plan_since": self.now,
        }

    def _replaced_upgrade(
        self, client_id: str, event: StripeEvent, sub: StripeSubscription, state: BillingState
    ) -> int:
        """An upgrade of the subscription the client had before, delivered after another replaced it:
        the months it was paid for still get the prorated difference from the change on."""
        ended = state.previous_ended_created
        if sub.id != state.previous_subscription_id or ended is None or event.created >= ended:
            return 0
        found = self.prices.plan_of(sub.first_item().price.id)
        if event.type != "customer.subscription.updated" or found is None or found[0] not in self.catalog.plans:
            return 0
        plan_id, interval = found
        before = self._plan_before(event, interval)
        if before is None or self.catalog.plan(before).rank >= self.catalog.plan(plan_id).rank:
            return 0
        return self._prorate(client_id, event, sub, before, plan_id, interval, _happened_at(event, self.now))

    def _late_downgrade(self, event: StripeEvent, sub: StripeSubscription, state: BillingState) -> dict[str, Any]:
        """A downgrade's own event arriving after a newer one applied the lower price as the plan (that
        newer event did not say the price had changed): the period keeps the plan it was paid at, and
        the lower one waits for the period end."""
        found = self.prices.plan_of(sub.first_item().price.id)
        if found is None or found[0] != state.plan or state.plan_from != sub.id:
            return {}
        before = self._plan_before(event, found[1])
        start, end = sub.period()
        if before is None or self.catalog.plan(before).rank <= self.catalog.plan(found[0]).rank:
            return {}
        if _ts(start) != state.current_period_start or state.plan_before not in (None, before):
            # Another period by now, or the plan was changed knowingly since. A newer event that
            # replaced exactly the plan this downgrade came from (``plan_before == before``) applied
            # this downgrade's price without knowing it was one (e.g. a renewal's roll overtaken).
            return {}
        return _plan_fields(self.catalog, before) | {"pending_plan": found[0], "pending_plan_at": _ts(end)}

    def _late_upgrade(self, client_id: str, event: StripeEvent, sub: StripeSubscription, state: BillingState) -> int:
        """The proration an upgrade is owed when its own event arrives after a newer one (that applied
        the plan, or ended the subscription): from the change's time, for the months until we applied it."""
        happened_while_live = state.subscription_status not in lifecycle.ENDED or (
            state.ended_event_created is not None and event.created < state.ended_event_created
        )
        found = self.prices.plan_of(sub.first_item().price.id)
        if event.type != "customer.subscription.updated" or not happened_while_live or found is None:
            return 0
        plan_id, interval = found
        before = self._plan_before(event, interval)
        if before is None or plan_id not in self.catalog.plans:
            return 0
        if self.catalog.plan(plan_id).rank <= self.catalog.plan(before).rank:
            return 0
        in_force = self.catalog.plans.get(state.plan)
        if state.plan_from == sub.id and in_force is not None and in_force.rank > self.catalog.plan(plan_id).rank:
            # Its previous price was a downgrade still pending: the plan in force (higher) never
            # went down, so a change up from that price is no upgrade of it.
            return 0
        applied_at = _happened_at(event, self.now)
        if state.plan == plan_id and state.plan_since and state.plan_from == sub.id:
            # Applied by the newer event: from the plan it replaced, for the months until then. (The
            # same plan from another subscription, e.g. the one before it, says nothing of this upgrade.)
            applied_at, before = state.plan_since, state.plan_before or before
        ended_at = _ts(state.ended_event_created) if state.subscription_status in lifecycle.ENDED else None
        if ended_at is not None and applied_at >= ended_at:
            # Applied at or after the end (by the deletion, or a paid period learned after it): a month
            # that started after the subscription ended was never paid for and gets nothing.
            applied_at = ended_at - MICROSECOND
        return self._prorate(client_id, event, sub, before, plan_id, interval, applied_at)

    def _prorate(
        self,
        client_id: str,
        event: StripeEvent,
        sub: StripeSubscription,
        old_plan: str,
        new_plan: str,
        interval: Interval,
        applied_at: datetime,
    ) -> int:
        """An upgrade's credits: for every plan-month of the period that started before we applied it
        (``applied_at``) and ends after the change (Stripe's event time), the monthly difference times
        the part of the month after the change (rounded down). An annual plan's months that started at
        the old size are first granted at it if the daily job has not yet — so its later run at the new
        size finds them granted (one allotment per plan-month)."""
        start, end = sub.period()
        period_start, period_end = _ts(start), _ts(end)
        difference = self.catalog.plan(new_plan).monthly_credits - self.catalog.plan(old_plan).monthly_credits
        if period_start is None or period_end is None or period_end <= period_start or difference <= 0:
            return 0
        if not lifecycle.rules(sub.status).allotments:
            return 0
        changed_at = _happened_at(event, self.now)
        actor, granted = self._actor(event), 0
        for month in self._keep_started_months(client_id, event, sub, old_plan, interval, applied_at):
            amount = prorated_credits(difference, month, changed_at)
            if amount <= 0:
                continue
            self.ledger.grant(
                client_id,
                key=upgrade_key(sub.id, month.start, new_plan),
                amount=amount,
                source=GrantSource.SUBSCRIPTION,
                actor=actor,
                reason=f"upgrade {old_plan} → {new_plan}: prorated rest of the month",
                expires_at=None if self.catalog.rollover else month.end,
                reference=sub.id,
            )
            granted += amount
        return granted

    def _keep_started_months(
        self,
        client_id: str,
        event: StripeEvent,
        sub: StripeSubscription,
        old_plan: str,
        interval: Interval,
        applied_at: datetime,
    ) -> list[PlanMonth]:
        """The plan-months of the subscription's period that started by ``applied_at`` (at least the
        first, against clock skew). An annual plan's months come from the daily job, which grants at the
        plan in force when it runs: before an upgrade is applied, the months that started at the old
        size get it if they have nothing yet, so a later run at the new size finds them granted."""
        start, end = sub.period()
        period_start, period_end = _ts(start), _ts(end)
        if period_start is None or period_end is None or period_end <= period_start:
            return []
        months = months_started(period_start, period_end, applied_at) or [plan_month(period_start, 0, period_end)]
        if interval == "annual" and lifecycle.rules(sub.status).allotments:
            for month in months:
                grant_allotment(
                    self.ledger, self.catalog, client_id, subscription_id=sub.id, month=month, plan_id=old_plan,
                    actor=self._actor(event), reference=sub.id,
                )  # fmt: skip
        return months

    def _period_allotment(
        self,
        client_id: str,
        event: StripeEvent,
        sub: StripeSubscription,
        plan_id: str,
        interval: Interval,
        start: datetime | None,
        end: datetime | None,
    ) -> int:
        """The first plan-month's allotment of a period (a reset's new one); 0 when the status allows none."""
        if start is None or end is None or end <= start or not lifecycle.rules(sub.status).allotments:
            return 0
        line = _PlanLine(plan_id, interval, start, end)
        granted = grant_allotment(
            self.ledger, self.catalog, client_id, subscription_id=sub.id, month=line.first_month(),
            plan_id=plan_id, actor=self._actor(event), reference=sub.id,
        )  # fmt: skip
        return granted or 0

    # -- invoices ---------------------------------------------------------------------------------
    def _plan_line(self, event: StripeEvent, invoice: StripeInvoice, *, required: bool) -> _PlanLine | None:
        """The invoice's plan line; an unknown plan price is refused (redelivered) when ``required``."""
        for raw in invoice.lines.data:
            line = StripeInvoiceLine.model_validate(raw)
            price_id = line.price_id()
            found = self.prices.plan_of(price_id) if price_id else None
            if found and found[0] in self.catalog.plans:
                plan_id, interval = found
                start = _ts(line.period.get("start")) or self.now
                end = _ts(line.period.get("end")) or add_months(start, 12 if interval == "annual" else 1)
                return _PlanLine(plan_id, interval, start, end)
        if required:
            prices = [StripeInvoiceLine.model_validate(raw).price_id() for raw in invoice.lines.data]
            self._plan_of_price(event, ", ".join(p for p in prices if p) or None)
        return None

    def _invoice_paid(self, event: StripeEvent) -> str:
        invoice = StripeInvoice.model_validate(event.object)
        client_id = self._client_for(invoice.customer)
        if client_id is None:
            return self._unroutable(event, "no client for the invoice's customer")
        subscription_id = invoice.subscription_id()
        reason = invoice.billing_reason
        no_allotment = f"invoice paid ({reason}): no allotment"
        if not subscription_id:
            return self._record(event, client_id, no_allotment)
        period = reason in PERIOD_INVOICES
        line = self._plan_line(event, invoice, required=period)
        snap = self.store.read(client_id)
        state = snap.state
        if subscription_id == state.subscription_id:
            return self._governing_invoice_paid(event, client_id, snap, invoice, line)
        if subscription_id == state.previous_subscription_id:
            ended = state.previous_ended_created
            paid_period = line is not None and (period or (reason == "subscription_update" and line.is_whole_period()))
            if paid_period and line is not None and ended is not None and event.created < ended:
                # Paid while that subscription was the client's, delivered after it was replaced.
                granted = self._invoice_allotment(client_id, subscription_id, invoice, line)
                changes = (
                    {}
                    if state.subscription_status in lifecycle.PAID
                    else self._paid_after_all(state, line, subscription_id)
                )
                return self._record(
                    event, client_id, f"invoice paid: granted {granted} credits", snapshot=snap, changes=changes
                )
            return self._record(event, client_id, "invoice of a replaced subscription: nothing changes")
        if subscription_id in state.rejected_subscriptions:
            return self._second_subscription(event, client_id, snap, subscription_id, "active", invoice.id)
        if line is not None and self._older_than_governing(line.start, state):
            # A subscription the client had before this one (its events came late): what it paid counts.
            whole = period or (reason == "subscription_update" and line.is_whole_period())
            if whole and not self._paid_while_live(subscription_id, event):
                return self._record(event, client_id, "invoice of an older subscription, paid after it ended: ignored")
            granted = self._invoice_allotment(client_id, subscription_id, invoice, line) if whole else 0
            # While the newer one's plan does not apply (not paid yet), the older one's paid period holds.
            changes = (
                {}
                if state.subscription_status in lifecycle.PAID or not whole
                else self._paid_after_all(state, line, subscription_id)
            )
            return self._record(
                event,
                client_id,
                f"invoice paid for an older subscription: granted {granted} credits",
                snapshot=snap,
                changes=changes,
            )
        if not lifecycle.takes_over(
            state.subscription_status, bool(state.subscription_id), "active"
        ) and not self._governing_ended_in_stripe(state):
            return self._second_subscription(event, client_id, snap, subscription_id, "active", invoice.id)
        if not period or line is None:
            return self._record(event, client_id, no_allotment)
        # The subscription's own events have not arrived yet: its paid first invoice makes it the client's.
        granted = self._invoice_allotment(client_id, subscription_id, invoice, line)
        changes = self._replacing(state, subscription_id, event) | self._paid_period(
            state, line, event, subscription_id
        )
        changes |= {"ended_event_created": None, "ended_plan": None}
        return self._record(
            event, client_id, f"invoice paid: granted {granted} credits", snapshot=snap, changes=changes
        )

    def _governing_invoice_paid(
        self,
        event: StripeEvent,
        client_id: str,
        snap: BillingSnapshot,
        invoice: StripeInvoice,
        line: _PlanLine | None,
    ) -> str:
        state = snap.state
        subscription_id = str(state.subscription_id)
        ended = state.subscription_status in lifecycle.ENDED
        if ended and not (state.ended_event_created is not None and event.created < state.ended_event_created):
            # Paying an ended subscription's open invoice does not bring it back.
            return self._record(event, client_id, "invoice paid for a subscription that has ended: nothing changes")
        stale = ended or event.created < state.last_event_created
        reason = invoice.billing_reason
        if reason in PERIOD_INVOICES and line is not None:
            granted = self._invoice_allotment(client_id, subscription_id, invoice, line)
            paid = {} if stale else self._paid_period(state, line, event, subscription_id)
            if stale and not ended and (state.paid_through is None or state.paid_through < line.end):
                paid = {"paid_through": line.end}  # overtaken by a newer event, but paid all the same
            if ended and state.plan_from != subscription_id:
                # The governing subscription's plan replaces whatever an older one left behind.
                paid = self._paid_after_all(state, line, subscription_id, instead_of=state.plan_from)
            return self._record(
                event, client_id, f"invoice paid: granted {granted} credits", snapshot=snap, changes=paid
            )
        granted = 0
        changes: dict[str, Any] = {}
        if line is not None and self._is_reset_invoice(state, line):
            # The invoice of a period reset (an interval change), paid while the subscription lived:
            # the new period's first allotment, which the reset's subscription update granted if it
            # came first (and which it cannot grant if it comes after the subscription ended).
            granted = self._invoice_allotment(client_id, subscription_id, invoice, line)
            if ended:
                # Its end came first: the new period it paid for ends at its plan, as any cancellation.
                changes |= self._paid_after_all(state, line, subscription_id, instead_of=state.plan_from)
            elif state.paid_through is None or state.paid_through < line.end:
                changes["paid_through"] = line.end
        if not stale and invoice.id in state.failed_invoices:
            remaining = [i for i in state.failed_invoices if i != invoice.id]
            changes |= {"failed_invoices": remaining, "last_event_created": event.created, "last_event_id": event.id}
            if not remaining:
                changes["past_due_since"] = None
                if state.subscription_status in ("past_due", "unpaid"):
                    changes["subscription_status"] = "active"
        outcome = f"invoice paid ({reason}): " + (f"granted {granted} credits" if granted else "no allotment")
        return self._record(event, client_id, outcome, snapshot=snap, changes=changes)

    def _paid_after_all(
        self, state: BillingState, line: _PlanLine, subscription_id: str, instead_of: str | None = None
    ) -> dict[str, Any]:
        """A period paid before its subscription ended, learned after we processed the end (its
        deletion overtook its paid invoice): its plan holds until the period ends, as for any
        cancellation — unless another subscription's plan (other than ``instead_of``) is in force."""
        if line.end <= self.now or state.plan_from not in (None, subscription_id, instead_of):
            return {}
        plan_id, replaced = line.plan_id, None
        final = state.ended_plan if state.subscription_id == subscription_id else None
        if final in self.catalog.plans and self.catalog.plan(str(final)).rank > self.catalog.plan(plan_id).rank:
            # Upgraded before it ended: the paid period ends at that plan, and the upgrade's late event
            # prorates from the plan the period was paid (and its allotment granted) at.
            plan_id, replaced = str(final), line.plan_id
        # ``plan_before`` is always rewritten with the plan: one left from an earlier period (an upgrade
        # there) would make that late event prorate from the wrong plan (found by the stateful test).
        return _plan_fields(self.catalog, plan_id) | {
            "interval": line.interval,
            "plan_from": subscription_id,
            "plan_since": self.now,
            "plan_before": replaced,
            "pending_plan": "free",
            "pending_plan_at": line.end,
        }

    @staticmethod
    def _is_reset_invoice(state: BillingState, line: _PlanLine) -> bool:
        """A ``subscription_update`` invoice for a whole period: a reset's new period (an interval
        change), whenever it arrives. A proration invoice covers only a part of a period (and an
        upgrade at the very start of one finds the period's allotment granted already)."""
        return line.is_whole_period()

    def _paid_period(
        self, state: BillingState, line: _PlanLine, event: StripeEvent, subscription_id: str
    ) -> dict[str, Any]:
        """A paid period invoice: its plan is in force for its period (a due downgrade lands here)."""
        changes = _plan_fields(self.catalog, line.plan_id) | {
            "interval": line.interval,
            "subscription_id": subscription_id,
            "subscription_status": "trialing" if state.subscription_status == "trialing" else "active",
            "past_due_since": None,
            "failed_invoices": [],
            "current_period_start": line.start,
            "current_period_end": line.end,
            "last_event_created": event.created,
            "last_event_id": event.id,
            "plan_from": subscription_id,
            "paid_through": line.end,
        }
        if state.subscription_id == subscription_id and state.paid_through and state.paid_through > line.end:
            changes["paid_through"] = state.paid_through  # a late invoice of an earlier period
        if state.plan != line.plan_id or state.plan_from != subscription_id:
            changes["plan_since"] = self.now
        if (
            state.subscription_id == subscription_id
            and state.pending_plan
            and state.pending_plan != line.plan_id
            and (state.pending_plan_at is None or state.pending_plan_at > line.start)
        ):
            changes |= {"pending_plan": state.pending_plan, "pending_plan_at": state.pending_plan_at}
        return changes

    def _invoice_allotment(self, client_id: str, subscription_id: str, invoice: StripeInvoice, line: _PlanLine) -> int:
        granted = grant_allotment(
            self.ledger, self.catalog, client_id, subscription_id=subscription_id, month=line.first_month(),
            plan_id=line.plan_id, actor=Actor(kind="stripe", id=invoice.id), reference=invoice.id,
        )  # fmt: skip
        return granted or 0

    def _invoice_payment_failed(self, event: StripeEvent) -> str:
        invoice = StripeInvoice.model_validate(event.object)
        client_id = self._client_for(invoice.customer)
        if client_id is None:
            return self._unroutable(event, "no client for the invoice's customer")
        subscription_id = invoice.subscription_id()
        if not subscription_id:
            return self._record(event, client_id, "payment failed for an invoice outside any subscription: ignored")
        snap = self.store.read(client_id)
        state = snap.state
        if subscription_id != state.subscription_id:
            return self._record(event, client_id, "payment failed for another subscription: ignored")
        if event.created < state.last_event_created:
            # E.g. the failed attempt reported after the retry that paid the invoice.
            return self._record(event, client_id, "stale: a newer event was applied")
        if state.subscription_status in lifecycle.ENDED:
            # Stripe stamps the final failed payment and the cancellation it causes with the same second.
            return self._record(event, client_id, "payment failed for a subscription that has ended: ignored")
        if invoice.billing_reason == "subscription_create":
            return self._record(event, client_id, "first payment failed: the subscription is incomplete")
        changes = {
            "subscription_status": "past_due"
            if state.subscription_status in ("active", "trialing")
            else state.subscription_status,
            "past_due_since": state.past_due_since or self.now,
            "failed_invoices": _bounded(state.failed_invoices, invoice.id),
            "last_event_created": event.created,
            "last_event_id": event.id,
        }
        failed = _payment_failed_event(client_id, invoice.id, event, self.now)
        return self._record(
            event, client_id, "payment failed: past due", snapshot=snap, changes=changes, events=[failed]
        )

    # -- refunds ----------------------------------------------------------------------------------
    def _charge_refunded(self, event: StripeEvent) -> str:
        charge = StripeCharge.model_validate(event.object)
        if not charge.payment_intent:
            return self._record(event, None, "refund without a payment intent: ignored")
        purchase = self.store.pack_purchase(charge.payment_intent)
        if purchase is None:
            return self._record(event, None, "refund of a payment that bought no pack: ignored")
        client_id = purchase.client_id
        refunded = charge.amount if charge.refunded else charge.amount_refunded
        target = refund_target(purchase.credits, charge.amount, refunded)
        bucket = self.ledger.state(client_id).buckets.get(purchase.bucket_id)
        if target <= 0 or (bucket is not None and bucket.revoke_target >= target):
            # Redelivered, reordered (a larger refund came first) or too small for one credit.
            return self._record(event, client_id, "refund already applied")
        result = self.ledger.revoke(
            client_id,
            key=f"stripe:refund:{charge.id}:{refunded}",
            bucket_id=purchase.bucket_id,
            target=target,
            actor=self._actor(event),
            reason=f"pack refunded ({refunded}/{charge.amount})",
        )
        outcome = (
            f"refund: removed {result['removed']} unspent credits" if result["applied"] else "refund already applied"
        )
        return self._record(event, client_id, outcome, refund=(purchase.session_id, refunded, int(result["revoked"])))


def _subscription_changed_event(
    client_id: str, before: BillingState, changes: dict[str, Any], event: StripeEvent, now: datetime
) -> DomainEvent | None:
    """``billing.subscription_changed`` when ``changes`` move the plan or the subscription's status
    (numbered by the Stripe event's ``created``, so a consumer can order them)."""

    def after(name: str) -> Any:
        value = changes.get(name, getattr(before, name))
        return None if value is DELETE else value

    plan, status = after("plan") or "free", after("subscription_status") or "none"
    if (plan, status) == (before.plan, before.subscription_status):
        return None
    interval = after("interval")
    return new_event(
        client_id,
        EventType.SUBSCRIPTION_CHANGED,
        Subject(kind="subscription", id=client_id),
        SubscriptionChanged(
            subscription_id=after("subscription_id"),
            plan=plan,
            interval=str(getattr(interval, "value", interval)) if interval else None,
            status=str(status),
            previous_plan=before.plan,
            previous_status=str(before.subscription_status),
        ),
        occurred_at=now,
        sequence=max(event.created, 0),
        discriminator=event.id,
    )


def _payment_failed_event(client_id: str, invoice_id: str, event: StripeEvent, now: datetime) -> DomainEvent:
    """``billing.payment_failed`` for the invoice; its amounts read leniently (they only inform)."""
    raw = event.object

    def number(name: str) -> int:
        value = raw.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53 else 0

    next_attempt = number("next_payment_attempt")
    url = raw.get("hosted_invoice_url")
    currency = raw.get("currency")
    return new_event(
        client_id,
        EventType.PAYMENT_FAILED,
        Subject(kind="invoice", id=invoice_id),
        PaymentFailed(
            invoice_id=invoice_id,
            amount_due=number("amount_due"),
            currency=currency[:8] if isinstance(currency, str) else "usd",
            attempt_count=max(number("attempt_count"), 1),
            next_attempt_at=datetime.fromtimestamp(next_attempt, UTC) if 0 < next_attempt < 253402300800 else None,
            hosted_invoice_url=url if isinstance(url, str) and url.startswith("https://") and len(url) < 2048 else None,
        ),
        occurred_at=now,
        sequence=max(event.created, 0),
        discriminator=event.id,
    )
