"""Billing: API models, the billing state stored on the client record, and the parts of Stripe's
event payloads we read (vendor payloads: unknown fields are ignored, never an error)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from shared.billing.catalog import Interval

PlanId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
SubscriptionStatus = Literal[
    "none", "active", "trialing", "past_due", "unpaid", "canceled", "incomplete", "incomplete_expired", "paused"
]
# How many ids the bounded bookkeeping lists below keep (newest last).
KEEP_IDS = 20
# Stripe's ids (``evt_…``, ``cus_…``, ``cs_…``) and our client ids become Firestore document ids
# (``stripe_events/{id}``, ``stripe_customers/{customer}``, ``clients/{client}``): anything outside this
# shape (``..``, ``__x__``, a ``/``, 2,000 characters, a lone surrogate) is a poison event, never a path.
STRIPE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,254}$"
CLIENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"  # as shared.auth accepts in a token
StripeId = Annotated[str, StringConstraints(pattern=STRIPE_ID_PATTERN)]
ClientRef = Annotated[str, StringConstraints(pattern=CLIENT_ID_PATTERN)]
# The last second ``datetime`` can hold (9999-12-31): a later ``created`` is no time at all.
MAX_TIMESTAMP = 253_402_300_799


class BillingState(BaseModel):
    """``clients/{client}.billing``: what the client pays for, as our webhooks last learned it.

    ``subscription_id`` is the *governing* subscription (see :mod:`shared.billing.lifecycle`): the one
    whose events change the client's plan; events of any other subscription are recorded and change
    nothing (a second live one is cancelled and refunded).
    """

    model_config = ConfigDict(extra="ignore")

    plan: str = "free"
    interval: Interval | None = None
    product_slots: int = 25
    stripe_customer_id: str | None = None
    subscription_id: str | None = None
    subscription_status: SubscriptionStatus = "none"
    current_period_start: datetime | None = None
    current_period_end: datetime | None = None
    cancel_at_period_end: bool = False
    pending_plan: str | None = None
    pending_plan_at: datetime | None = None
    past_due_since: datetime | None = None
    last_event_created: int = 0  # Stripe event.created of the governing subscription's newest event applied
    last_event_id: str | None = None
    # The subscription whose plan is the client's plan (None: Free or a plan no subscription gave), and
    # when we applied it (upgrade top-ups for months that started before we learned of the change).
    plan_from: str | None = None
    plan_since: datetime | None = None
    plan_before: str | None = None  # the plan an upgrade replaced (its late change event prorates from it)
    # The end of the latest period the governing subscription paid for: a cancellation keeps the plan
    # until then, not until the end of a renewal period that was never paid.
    paid_through: datetime | None = None
    # The plan of the governing subscription's price when it ended (its last event's snapshot).
    ended_plan: str | None = None
    # When (Stripe's event time) the governing subscription ended; events that happened before it
    # (delivered late) may still grant what they paid for, later ones change nothing.
    ended_event_created: int | None = None
    # The subscription the governing one replaced, and when that one ended.
    previous_subscription_id: str | None = None
    previous_ended_created: int | None = None
    # Invoices of the governing subscription whose payment failed and that are not paid yet.
    failed_invoices: list[str] = Field(default_factory=list)
    # Second subscriptions we cancelled, and their invoices we refunded (bounded, newest last).
    rejected_subscriptions: list[str] = Field(default_factory=list)
    refunded_invoices: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _plan_from_of_older_records(self) -> BillingState:
        # Records written before ``plan_from`` existed: a paid plan came from the recorded subscription.
        if self.plan_from is None and self.plan != "free" and self.subscription_id:
            self.plan_from = self.subscription_id
        return self


# -- API ----------------------------------------------------------------------------------------------


class PlanOut(BaseModel):
    id: str
    name: str
    product_slots: int
    monthly_credits: int
    prices: dict[str, int]
    intervals: list[str]


class PackOut(BaseModel):
    id: str
    name: str
    credits: int
    price: int
    available: bool


class CatalogOut(BaseModel):
    currency: str
    plans: list[PlanOut]
    packs: list[PackOut]


class SubscriptionOut(BaseModel):
    plan: str
    plan_name: str
    interval: str | None
    status: str
    product_slots: int
    products_used: int
    monthly_credits: int
    current_period_end: datetime | None
    cancel_at_period_end: bool
    pending_plan: str | None
    pending_plan_at: datetime | None
    past_due_since: datetime | None
    paid_operations_blocked: bool


class CheckoutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["plan", "pack"]
    plan_id: PlanId | None = None
    interval: Interval = "monthly"
    pack_id: PlanId | None = None
    success_url: AnyHttpUrl | None = None
    cancel_url: AnyHttpUrl | None = None


class PortalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    return_url: AnyHttpUrl | None = None


class RedirectOut(BaseModel):
    url: str
    id: str | None = None


class InvoiceOut(BaseModel):
    id: str
    number: str | None
    status: str | None
    amount_due: int
    amount_paid: int
    currency: str
    created: datetime
    period_start: datetime | None
    period_end: datetime | None
    hosted_invoice_url: str | None
    invoice_pdf: str | None


class InvoiceListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=20, ge=1, le=100)
    cursor: Annotated[str, StringConstraints(pattern=r"^in_[A-Za-z0-9]+$")] | None = None


class InvoicePage(BaseModel):
    items: list[InvoiceOut]
    next_cursor: str | None


# -- Stripe payload subsets ---------------------------------------------------------------------------


class StripeModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StripeEvent(StripeModel):
    id: StripeId
    type: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    created: int = Field(ge=0, le=MAX_TIMESTAMP)
    livemode: bool = False
    data: dict[str, Any]

    @property
    def object(self) -> dict[str, Any]:
        value = self.data.get("object")
        return value if isinstance(value, dict) else {}

    @property
    def previous_attributes(self) -> dict[str, Any] | None:
        """``data.previous_attributes`` of an ``*.updated`` event (``None`` when the event has none)."""
        value = self.data.get("previous_attributes")
        return value if isinstance(value, dict) else None

    def previous_price(self) -> str | None:
        """The price a subscription update changed from (its ``previous_attributes.items``), if it did."""
        listed = (self.previous_attributes or {}).get("items")
        items = listed.get("data") if isinstance(listed, dict) else None
        first = items[0] if isinstance(items, list) and items and isinstance(items[0], dict) else {}
        price = first.get("price")
        price = price.get("id") if isinstance(price, dict) else price
        return price if isinstance(price, str) else None


class StripePrice(StripeModel):
    id: str


class StripeSubscriptionItem(StripeModel):
    price: StripePrice
    current_period_start: int | None = None
    current_period_end: int | None = None


class StripeList(StripeModel):
    data: list[dict[str, Any]] = Field(default_factory=list)


class StripeSubscription(StripeModel):
    id: StripeId
    customer: StripeId
    status: SubscriptionStatus
    items: StripeList
    cancel_at_period_end: bool = False
    current_period_start: int | None = None
    current_period_end: int | None = None
    metadata: dict[str, str] = Field(default_factory=dict)

    def first_item(self) -> StripeSubscriptionItem:
        return StripeSubscriptionItem.model_validate(self.items.data[0])

    def period(self) -> tuple[int | None, int | None]:
        item = self.first_item()
        # Newer API versions carry the period on the item, older ones on the subscription.
        return (
            item.current_period_start or self.current_period_start,
            item.current_period_end or self.current_period_end,
        )


class StripeCheckoutSession(StripeModel):
    id: StripeId
    mode: Literal["payment", "subscription", "setup"]
    customer: StripeId | None = None
    client_reference_id: ClientRef | None = None
    payment_status: str | None = None
    payment_intent: StripeId | None = None
    subscription: StripeId | None = None
    amount_total: int | None = None
    currency: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class StripeInvoiceLine(StripeModel):
    period: dict[str, int] = Field(default_factory=dict)
    pricing: dict[str, Any] | None = None
    price: dict[str, Any] | None = None

    def price_id(self) -> str | None:
        if self.price and isinstance(self.price.get("id"), str):
            return str(self.price["id"])
        details = (self.pricing or {}).get("price_details") or {}
        value = details.get("price")
        return value if isinstance(value, str) else None


class StripeInvoice(StripeModel):
    id: StripeId
    customer: StripeId
    billing_reason: str | None = None
    status: str | None = None
    subscription: StripeId | None = None
    parent: dict[str, Any] | None = None
    lines: StripeList = Field(default_factory=StripeList)
    period_start: int | None = None
    period_end: int | None = None

    def subscription_id(self) -> str | None:
        if self.subscription:
            return self.subscription
        details = (self.parent or {}).get("subscription_details") or {}
        value = details.get("subscription")
        return value if isinstance(value, str) else None


class StripeCharge(StripeModel):
    id: StripeId
    customer: StripeId | None = None
    payment_intent: StripeId | None = None
    amount: int = Field(ge=0)
    amount_refunded: int = Field(default=0, ge=0)  # cumulative: every refund of the charge so far
    refunded: bool = False


class BillingNotice(BaseModel):
    """A notice for the client (``clients/{client}/notifications``), written with the event that
    caused it; the same shape as the ledger's balance notices (``kind``, ``created_at``, ``read``)."""

    model_config = ConfigDict(extra="forbid")

    kind: str  # e.g. duplicate_subscription_cancelled
    subscription_id: str | None = None
    message: str
    created_at: datetime
