"""The daily billing job (Cloud Scheduler): monthly allotments that no invoice brings, and plan
changes that were waiting for their date. Idempotent per client and plan-month: every grant's key
names the subscription (or client) and the month it is for (:mod:`shared.billing.credits`), so a run
that failed for some clients (each is processed in isolation, see :mod:`shared.scheduled`) is simply
run again."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import Field

from shared.billing import lifecycle
from shared.billing.calendar import add_months, months_started
from shared.billing.catalog import Catalog
from shared.billing.credits import allotment_key, grant_allotment
from shared.billing.models import BillingState
from shared.billing.store import DELETE, BillingChanged, BillingStore
from shared.errors import IdempotencyKeyReused, UpstreamUnavailable
from shared.ids import derived_id
from shared.ledger.model import Actor, GrantSource
from shared.retry import CONTENDED_COMMIT, attempts
from shared.scheduled import ScheduledReport, isolated

if TYPE_CHECKING:
    from shared.ledger.service import Ledger

SYSTEM = Actor(kind="system", id="billing-scheduler")
JOB = "billing-daily"


class BillingJobReport(ScheduledReport):
    clients_checked: int = 0
    annual_grants: dict[str, list[str]] = Field(default_factory=dict)
    free_grants: list[str] = Field(default_factory=list)
    plan_changes: dict[str, str] = Field(default_factory=dict)


def run_daily(store: BillingStore, ledger: Ledger, catalog: Catalog, now: datetime) -> BillingJobReport:
    """Annual plans' monthly credits, then due plan changes, then the free plan's monthly credits;
    every client in isolation in each step (a client that fails is in ``failed``, the others are
    processed)."""
    report = BillingJobReport()
    # Allotments first: a month that started before a due plan change is granted at the plan it
    # started under, even when the job ran late.
    for client_id, billing in store.annual_clients():
        report.clients_checked += 1
        with isolated(JOB, client_id, report.failed, step="annual allotment"):
            state = BillingState.model_validate(billing or {})
            granted = _annual_allotments(ledger, catalog, client_id, state, now)
            if granted:
                report.annual_grants[client_id] = granted
    # Plan changes next: a client moving to Free today gets Free's credits below.
    for client_id, billing in store.due_plan_changes(now):
        with isolated(JOB, client_id, report.failed, step="plan change"):
            if BillingState.model_validate(billing or {}).pending_plan:
                applied = _apply_pending(store, catalog, client_id, now)
                if applied:
                    report.plan_changes[client_id] = applied
    free = catalog.plan("free")
    if free.monthly_credits:
        month = now.strftime("%Y-%m")
        for client_id in store.free_clients():
            report.clients_checked += 1
            with isolated(JOB, client_id, report.failed, step="free credits"):
                try:
                    ledger.grant(
                        client_id,
                        key=f"free:{client_id}:{month}",
                        amount=free.monthly_credits,
                        source=GrantSource.SUBSCRIPTION,
                        actor=SYSTEM,
                        reason=f"Free plan credits for {month}",
                        expires_at=None
                        if catalog.rollover
                        else add_months(now.replace(day=1, hour=0, minute=0, second=0, microsecond=0), 1),
                    )
                except IdempotencyKeyReused:
                    # This month's allowance was granted before the catalog changed (another amount or
                    # expiry): it stays as it was, like an annual month granted before an upgrade.
                    continue
                report.free_grants.append(client_id)
    return report


def _annual_allotments(
    ledger: Ledger, catalog: Catalog, client_id: str, state: BillingState, now: datetime
) -> list[str]:
    """Every plan-month allotment of the current annual period that has started (month 0 normally came
    with the paid invoice and replays), at the plan in force; none while the status allows none."""
    subscription_id = state.subscription_id
    if not subscription_id or not lifecycle.rules(state.subscription_status).allotments:
        return []
    if state.plan_from != subscription_id:
        return []  # the client's plan is not this subscription's (yet)
    start, end = state.current_period_start, state.current_period_end
    if start is None or end is None:
        return []
    granted = []
    for month in months_started(start, end, now):
        if state.pending_plan_at is not None and month.start >= state.pending_plan_at:
            break  # after a plan change: that plan's months
        amount = grant_allotment(
            ledger, catalog, client_id, subscription_id=subscription_id, month=month, plan_id=state.plan,
            actor=SYSTEM, reference=subscription_id,
        )  # fmt: skip
        if amount is not None:
            granted.append(derived_id("bkt", allotment_key(subscription_id, month.start)))
    return granted


def _apply_pending(store: BillingStore, catalog: Catalog, client_id: str, now: datetime) -> str | None:
    """Apply the plan change that fell due and return the new plan, unless a webhook withdrew it
    since it was listed: the write is guarded by the client record's version and re-decided on
    fresh state."""
    for _ in attempts(CONTENDED_COMMIT, "due plan change"):
        snapshot = store.read(client_id)
        state = snapshot.state
        if not state.pending_plan or state.pending_plan_at is None or state.pending_plan_at > now:
            return None  # withdrawn or moved by a webhook in the meantime
        plan = catalog.plan(state.pending_plan)
        changes: dict[str, Any] = {
            "plan": state.pending_plan,
            "product_slots": plan.product_slots,
            "pending_plan": None,
            "pending_plan_at": DELETE,
            "plan_since": now,
        }
        if state.pending_plan == "free":
            changes |= {"interval": None, "plan_from": None}
        try:
            store.update_billing(client_id, changes, snapshot.version)
            return state.pending_plan
        except BillingChanged:
            continue
    raise UpstreamUnavailable("The client's billing kept changing; the next run applies the plan change")
