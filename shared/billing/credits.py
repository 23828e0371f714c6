"""The credits a plan gives, granted through the ledger: one allotment per plan-month and the
prorated difference of an upgrade, each under an idempotency key that names the subscription and the
plan-month (anchored on the period start, :mod:`shared.billing.calendar`), so every path that grants
them — the paid invoice, a period reset, an upgrade, the daily job — grants each exactly once,
whatever order they run in.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from shared.billing.calendar import PlanMonth
from shared.billing.catalog import Catalog
from shared.errors import IdempotencyKeyReused
from shared.ledger.model import Actor, GrantSource

if TYPE_CHECKING:
    from shared.ledger.service import Ledger


def allotment_key(subscription_id: str, month_start: datetime) -> str:
    """The one allotment of a subscription's plan-month (monthly plans: the period is the month)."""
    return f"allotment:{subscription_id}:{int(month_start.timestamp())}"


def upgrade_key(subscription_id: str, month_start: datetime, plan_id: str) -> str:
    """The prorated difference of an upgrade to ``plan_id`` for one plan-month."""
    return f"stripe:upgrade:{subscription_id}:{int(month_start.timestamp())}:{plan_id}"


def grant_allotment(
    ledger: Ledger,
    catalog: Catalog,
    client_id: str,
    *,
    subscription_id: str,
    month: PlanMonth,
    plan_id: str,
    actor: Actor,
    reference: str,
) -> int | None:
    """Grant the plan-month's allotment at ``plan_id``'s size unless it was granted already; returns
    what the month's allotment is (``None``: the plan gives none). Every caller asks for the same
    grant (amount, expiry at the month end unless credits roll over), so a second ask replays; a month
    granted at another plan's size (before an upgrade) stays as it was."""
    plan = catalog.plan(plan_id)
    if not plan.monthly_credits:
        return None
    key = allotment_key(subscription_id, month.start)
    try:
        result = ledger.grant(
            client_id,
            key=key,
            amount=plan.monthly_credits,
            source=GrantSource.SUBSCRIPTION,
            actor=actor,
            reason=f"{plan.name} plan credits for {month.start.date().isoformat()} to {month.end.date().isoformat()}",
            expires_at=None if catalog.rollover else month.end,
            reference=reference,
        )
    except IdempotencyKeyReused:
        return ledger.granted(client_id, key)  # granted before at another size: it stands
    return int(result["amount"])
