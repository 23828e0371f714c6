"""The daily billing job (Cloud Scheduler): monthly allotments that no invoice brings, and plan
changes that were waiting for their date. Idempotent per client and period: every grant's key
names the subscription (or client) and the month it is for; so a run that failed for some clients
(each is processed in isolation, see :mod:`shared.scheduled`) is simply run again."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import Field

from shared.billing.catalog import Catalog
from shared.billing.events import add_months, allotment_key
from shared.billing.models import BillingState
from shared.errors import IdempotencyKeyReused, UpstreamUnavailable
from shared.ledger.model import Actor, GrantSource
from shared.scheduled import ScheduledReport, isolated

if TYPE_CHECKING:
    from google.cloud.firestore import Client

    from shared.ledger.service import Ledger

SYSTEM = Actor(kind="system", id="billing-scheduler")
JOB = "billing-daily"


class BillingJobReport(ScheduledReport):
    clients_checked: int = 0
    annual_grants: dict[str, list[str]] = Field(default_factory=dict)
    free_grants: list[str] = Field(default_factory=list)
    plan_changes: dict[str, str] = Field(default_factory=dict)


def run_daily(db: Client, ledger: Ledger, catalog: Catalog, now: datetime) -> BillingJobReport:
    """Due plan changes, then annual plans' and the free plan's monthly credits; every client in
    isolation in each step (a client that fails is in ``failed``, the others are processed)."""
    from google.cloud.firestore import FieldFilter

    report = BillingJobReport()
    clients = db.collection("clients")
    # Plan changes first: a client moving to Free today gets Free's credits below.
    due = clients.where(filter=FieldFilter("billing.pending_plan_at", "<=", now))
    for client_id, billing in _listed(due, "billing"):
        with isolated(JOB, client_id, report.failed, step="plan change"):
            if BillingState.model_validate(billing or {}).pending_plan:
                applied = _apply_pending(db, catalog, client_id, now)
                if applied:
                    report.plan_changes[client_id] = applied
    for client_id, billing in _listed(clients.where(filter=FieldFilter("billing.interval", "==", "annual")), "billing"):
        report.clients_checked += 1
        with isolated(JOB, client_id, report.failed, step="annual allotment"):
            state = BillingState.model_validate(billing or {})
            granted = _annual_allotments(ledger, catalog, client_id, state, now)
            if granted:
                report.annual_grants[client_id] = granted
    free = catalog.plan("free")
    if free.monthly_credits:
        month = now.strftime("%Y-%m")
        for client_id, _ in _listed(clients.where(filter=FieldFilter("billing.plan", "==", "free"))):
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


def _listed(query: Any, field: str | None = None) -> list[tuple[str, Any]]:
    """(client id, raw ``field``) of every match, read up front: the listing is one short query, and the
    slow per-client work (ledger commits) does not hold it open. Parsing is each client's own step."""
    from google.cloud.firestore_v1.field_path import FieldPath

    snapshots = query.select([field or FieldPath.document_id()]).stream()
    return [(snapshot.id, (snapshot.to_dict() or {}).get(field) if field else None) for snapshot in snapshots]


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


def _apply_pending(db: Client, catalog: Catalog, client_id: str, now: datetime) -> str | None:
    """Apply the plan change that fell due and return the new plan, unless a webhook withdrew it
    since it was listed: the write is guarded by the client record's ``update_time`` and re-decided
    on fresh state."""
    from google.api_core.exceptions import FailedPrecondition
    from google.cloud.firestore import DELETE_FIELD

    ref = db.collection("clients").document(client_id)
    for _ in range(3):
        snapshot = ref.get()
        state = BillingState.model_validate((snapshot.to_dict() or {}).get("billing") or {})
        if not state.pending_plan or state.pending_plan_at is None or state.pending_plan_at > now:
            return None  # withdrawn or moved by a webhook in the meantime
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
        try:
            ref.update(update, option=db.write_option(last_update_time=snapshot.update_time))
            return state.pending_plan
        except FailedPrecondition:
            continue
    raise UpstreamUnavailable("The client's billing kept changing; the next run applies the plan change")
