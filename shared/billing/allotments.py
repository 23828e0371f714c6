"""The daily billing job (Cloud Scheduler): monthly allotments that no invoice brings, and plan
changes that were waiting for their date. Idempotent per client and period: every grant's key
names the subscription (or client) and the month it is for."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from shared.billing.catalog import Catalog
from shared.billing.events import add_months, allotment_key
from shared.billing.models import BillingState
from shared.errors import IdempotencyKeyReused
from shared.ledger.model import Actor, GrantSource

if TYPE_CHECKING:
    from google.cloud.firestore import Client

    from shared.ledger.service import Ledger

SYSTEM = Actor(kind="system", id="billing-scheduler")


class BillingJobReport(BaseModel):
    clients_checked: int = 0
    annual_grants: dict[str, list[str]] = Field(default_factory=dict)
    free_grants: list[str] = Field(default_factory=list)
    plan_changes: dict[str, str] = Field(default_factory=dict)


def run_daily(db: Client, ledger: Ledger, catalog: Catalog, now: datetime) -> BillingJobReport:
    from google.cloud.firestore import FieldFilter

    report = BillingJobReport()
    for snapshot in db.collection("clients").where(filter=FieldFilter("billing.pending_plan_at", "<=", now)).stream():
        state = BillingState.model_validate((snapshot.to_dict() or {}).get("billing") or {})
        if state.pending_plan:
            _apply_pending(db, catalog, snapshot.id, state, now)
            report.plan_changes[snapshot.id] = state.pending_plan
    annual = db.collection("clients").where(filter=FieldFilter("billing.interval", "==", "annual"))
    for snapshot in annual.stream():
        report.clients_checked += 1
        state = BillingState.model_validate((snapshot.to_dict() or {}).get("billing") or {})
        granted = _annual_allotments(ledger, catalog, snapshot.id, state, now)
        if granted:
            report.annual_grants[snapshot.id] = granted
    free = catalog.plan("free")
    if free.monthly_credits:
        for snapshot in db.collection("clients").where(filter=FieldFilter("billing.plan", "==", "free")).stream():
            report.clients_checked += 1
            month = now.strftime("%Y-%m")
            ledger.grant(
                snapshot.id,
                key=f"free:{snapshot.id}:{month}",
                amount=free.monthly_credits,
                source=GrantSource.SUBSCRIPTION,
                actor=SYSTEM,
                reason=f"Free plan credits for {month}",
                expires_at=None
                if catalog.rollover
                else add_months(now.replace(day=1, hour=0, minute=0, second=0, microsecond=0), 1),
            )
            report.free_grants.append(snapshot.id)
    return report


def _annual_allotments(
    ledger: Ledger, catalog: Catalog, client_id: str, state: BillingState, now: datetime
) -> list[str]:
    """Every monthly allotment of the current annual period that is due (month 0 came with the invoice)."""
    if state.subscription_status not in ("active", "trialing") or not state.subscription_id:
        return []
    start, end = state.current_period_start, state.current_period_end
    if start is None or end is None:
        return []
    plan = catalog.plans.get(state.plan)
    if plan is None or not plan.monthly_credits:
        return []
    granted = []
    month = 0
    while True:
        month_start = add_months(start, month)
        if month_start > now or month_start >= end:
            break
        month_end = min(add_months(start, month + 1), end)
        try:
            result = ledger.grant(
                client_id,
                key=allotment_key(state.subscription_id, month_start),
                amount=plan.monthly_credits,
                source=GrantSource.SUBSCRIPTION,
                actor=SYSTEM,
                reason=f"{plan.name} plan (annual) credits for {month_start.date().isoformat()} to "
                f"{month_end.date().isoformat()}",
                expires_at=None if catalog.rollover else month_end,
                reference=state.subscription_id,
            )
        except IdempotencyKeyReused:
            # The month was granted at the plan's size before an upgrade (which granted the difference
            # pro-rated): it stays as it was, and the job goes on.
            month += 1
            continue
        granted.append(str(result.get("bucket_id")))
        month += 1
    return granted


def _apply_pending(db: Client, catalog: Catalog, client_id: str, state: BillingState, now: datetime) -> None:
    from google.cloud.firestore import DELETE_FIELD

    assert state.pending_plan is not None
    plan = catalog.plan(state.pending_plan)
    update: dict[str, Any] = {
        "plan": state.pending_plan,
        "billing.plan": state.pending_plan,
        "billing.product_slots": plan.product_slots,
        "billing.pending_plan": None,
        "billing.pending_plan_at": DELETE_FIELD,
    }
    if state.pending_plan == "free":
        update["billing.interval"] = None
    db.collection("clients").document(client_id).update(update)
