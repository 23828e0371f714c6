"""The subscription state machine: which subscription governs a client's plan, and what each status
Stripe can report allows. ``docs/billing.md`` carries the same table (a test checks they agree).

One subscription governs (``BillingState.subscription_id``). A subscription event or paid invoice of
another subscription takes over only when the governing one is no longer the client's (ended:
``canceled``/``incomplete_expired``; or never paid: ``incomplete``, which a paid one replaces) or
there is none. Otherwise it is recorded and changes nothing — and if that other subscription is live
and paid, it is a second subscription the client did not mean to have (two Checkouts at once): it is
cancelled and its invoices refunded through Stripe, and the client is told. Events of a subscription
that ended change nothing, except that what happened before the end (Stripe's event time), delivered
late, may still grant the credits it paid for.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import get_args

from shared.billing.models import SubscriptionStatus


class PlanEffect(str, Enum):
    """What a status does to the client's plan."""

    FREE = "Free"
    NOT_YET = "not yet: the plan before stays"
    APPLIED = "its plan; price changes apply"
    KEPT = "its plan, kept; price changes wait"
    UNTIL_PERIOD_END = "its plan until the paid period ends, then Free"
    NEVER = "none: the plan before stays"


class PaidWork(str, Enum):
    """Whether paid operations (generation, paid edits) run."""

    YES = "yes"
    GRACE = "until the grace period after the first failed payment ends"
    NO = "no"


@dataclass(frozen=True)
class StatusRules:
    """What one subscription status allows (for the governing subscription)."""

    live: bool  # still the client's subscription: it blocks a second one
    plan: PlanEffect
    paid_work: PaidWork
    new_checkout: bool  # may the client start a Checkout for a plan
    allotments: bool  # monthly credits (paid invoices, the daily job, upgrade proration)


RULES: dict[SubscriptionStatus, StatusRules] = {
    "none": StatusRules(live=False, plan=PlanEffect.FREE, paid_work=PaidWork.YES, new_checkout=True, allotments=False),
    "incomplete": StatusRules(
        live=True, plan=PlanEffect.NOT_YET, paid_work=PaidWork.YES, new_checkout=False, allotments=False
    ),
    "incomplete_expired": StatusRules(
        live=False, plan=PlanEffect.NEVER, paid_work=PaidWork.YES, new_checkout=True, allotments=False
    ),
    "trialing": StatusRules(
        live=True, plan=PlanEffect.APPLIED, paid_work=PaidWork.YES, new_checkout=False, allotments=True
    ),
    "active": StatusRules(
        live=True, plan=PlanEffect.APPLIED, paid_work=PaidWork.YES, new_checkout=False, allotments=True
    ),
    "past_due": StatusRules(
        live=True, plan=PlanEffect.KEPT, paid_work=PaidWork.GRACE, new_checkout=False, allotments=False
    ),
    "unpaid": StatusRules(live=True, plan=PlanEffect.KEPT, paid_work=PaidWork.NO, new_checkout=False, allotments=False),
    "paused": StatusRules(
        live=True, plan=PlanEffect.KEPT, paid_work=PaidWork.YES, new_checkout=False, allotments=False
    ),
    "canceled": StatusRules(
        live=False, plan=PlanEffect.UNTIL_PERIOD_END, paid_work=PaidWork.YES, new_checkout=True, allotments=False
    ),
}
assert set(RULES) == set(get_args(SubscriptionStatus)), "every status Stripe can report has its rules"

ENDED: frozenset[str] = frozenset({"canceled", "incomplete_expired"})
ACTIVE: frozenset[str] = frozenset({"active", "trialing"})
# Statuses of a subscription that was paid for at some point (its plan was applied).
PAID: frozenset[str] = frozenset(s for s, r in RULES.items() if r.plan in (PlanEffect.APPLIED, PlanEffect.KEPT))


def rules(status: str) -> StatusRules:
    """The rules of ``status`` (an unknown one, e.g. from a newer API version, allows nothing new)."""
    return RULES.get(status, RULES["incomplete"])  # type: ignore[call-overload,no-any-return]


def takes_over(governing_status: str, has_governing: bool, incoming_status: str) -> bool:
    """Whether a subscription other than the governing one becomes the governing one."""
    if not has_governing or not rules(governing_status).live:
        return True
    # A subscription that was never paid gives way to one that was.
    return governing_status == "incomplete" and incoming_status in PAID


def table() -> list[tuple[str, str, str, str, str, str]]:
    """The state machine as rows: status, live, plan, paid work, new plan checkout, allotments."""

    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    return [
        (status, yes(r.live), r.plan.value, r.paid_work.value, yes(r.new_checkout), yes(r.allotments))
        for status, r in RULES.items()
    ]
