"""The scheduled jobs when one client is broken: a real corrupt Firestore document fails that client
only, the others are processed, the run answers a problem listing it (so Cloud Scheduler retries),
and the run after the repair finishes it. Also the balance verification's checkpoint.

The jobs look at every client in the session's emulator, so every document broken here is put back
by the ``breaker`` fixture, whatever happens: later tests expect clean runs. For the same reason the
assertions are about this test's clients: a client another test left behind may fail too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.adapters.firestore.billing import FirestoreBillingStore
from shared.adapters.firestore.ledger import FirestoreLedgerStore
from shared.billing import allotments
from shared.billing.calendar import add_months
from shared.billing.catalog import load_catalog
from shared.ledger.model import Actor, EntryType, GrantSource
from shared.ledger.service import Ledger
from shared.scheduled import JobIncomplete, finish
from tests.conftest import TASK_SECRET

pytestmark = pytest.mark.integration

SCHEDULER = {"Authorization": f"Bearer {TASK_SECRET}"}
ADMIN = Actor(kind="admin", id="a1")
WORKER = Actor(kind="task", id="worker")


class Breaker:
    """Breaks documents in place and puts them back exactly as they were."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.saved: dict[str, dict[str, Any] | None] = {}

    def update(self, path: str, fields: dict[str, Any]) -> None:
        """``fields`` as Firestore's update takes them (dotted paths reach into maps)."""
        if path not in self.saved:
            snapshot = self.db.document(path).get()
            self.saved[path] = snapshot.to_dict() if snapshot.exists else None
        self.db.document(path).update(fields)

    def repair(self) -> None:
        for path, original in self.saved.items():
            if original is None:
                self.db.document(path).delete()
            else:
                self.db.document(path).set(original)
        self.saved.clear()


@pytest.fixture
def breaker(db: Any) -> Iterator[Breaker]:
    b = Breaker(db)
    try:
        yield b
    finally:
        b.repair()


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def job_logs() -> Iterator[Records]:
    # On the jobs' own logger: the JSON log setup may replace the root's handlers.
    records = Records()
    logging.getLogger("epox.jobs").addHandler(records)
    try:
        yield records
    finally:
        logging.getLogger("epox.jobs").removeHandler(records)


def incomplete(response: Any) -> dict[str, Any]:
    assert response.status_code == 500, (response.status_code, response.json)
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = response.json
    assert body["code"] == "scheduled_job_incomplete"
    assert body["type"].endswith("/scheduled-job-incomplete")
    return body


def ok(response: Any, *mine: str) -> dict[str, Any]:
    """A run in which none of ``mine`` failed (200, or the problem if another test's client did)."""
    body: dict[str, Any] = response.json
    if response.status_code != 200:
        incomplete(response)
    assert not set(mine) & set(body["failed"]), body["failed"]
    return body


def failed_only(failed: dict[str, str], broken: dict[str, str], *fine: str) -> None:
    """``broken`` failed with these codes, ``fine`` did not fail."""
    assert {client: failed.get(client) for client in broken} == broken
    assert not set(fine) & set(failed), failed


def logged_failure(records: Records, client_id: str, code: str) -> None:
    errors = [r for r in records.records if r.levelno == logging.ERROR and client_id in r.getMessage()]
    assert errors, [r.getMessage() for r in records.records]
    assert code in errors[0].getMessage()
    assert errors[0].fields["job_failure"]["code"] == code  # type: ignore[attr-defined]


def state_path(client_id: str) -> str:
    return f"clients/{client_id}/ledger/state"


def grant(ledger: Ledger, client_id: str, amount: int, key: str = "g", **kwargs: Any) -> str:
    result = ledger.grant(
        client_id,
        key=f"{key}:{client_id}",
        amount=amount,
        source=kwargs.pop("source", GrantSource.PACK),
        actor=ADMIN,
        reason="test credits",
        **kwargs,
    )
    return str(result["bucket_id"])


@pytest.fixture
def bad_client_id(client_id: str) -> str:
    return client_id + "bad"


# -- credits jobs ------------------------------------------------------------------------------------


def test_sweep_holds_goes_on_past_a_corrupt_state_and_the_rerun_finishes_it(
    stack: Any, client_id: str, bad_client_id: str, breaker: Breaker, job_logs: Records
) -> None:
    import time

    ledger = stack.platform.ledger  # the real clock: a 1 ms hold is overdue almost at once
    holds = {}
    for client in (client_id, bad_client_id):
        grant(ledger, client, 20)
        holds[client] = ledger.reserve(
            client, key="job-1", amount=5, actor=WORKER, purpose="generate", ttl=timedelta(milliseconds=1)
        )["hold_id"]
    time.sleep(0.05)
    # Still found by the sweep's query (its deadline field is intact), unreadable for the ledger.
    breaker.update(state_path(bad_client_id), {"holds": "not a map"})

    body = incomplete(stack.client("credits_jobs").post("/jobs/sweep-holds", headers=SCHEDULER))
    failed_only(body["failed"], {bad_client_id: "corrupt_document"}, client_id)
    assert body["changed"][client_id] == [holds[client_id]]
    assert body["job"] == "sweep-holds" and body["clients_checked"] >= 2
    assert ledger.state(client_id).reserved == 0
    logged_failure(job_logs, bad_client_id, "corrupt_document")

    breaker.repair()
    again = ok(stack.client("credits_jobs").post("/jobs/sweep-holds", headers=SCHEDULER), client_id, bad_client_id)
    assert again["changed"][bad_client_id] == [holds[bad_client_id]]
    assert client_id not in again["changed"]
    state = ledger.state(bad_client_id)
    assert (state.available, state.reserved, state.holds) == (20, 0, {})
    assert ledger.verify(bad_client_id) == []


def test_expire_buckets_goes_on_past_a_corrupt_state_and_the_rerun_finishes_it(
    stack: Any, db: Any, client_id: str, bad_client_id: str, breaker: Breaker, job_logs: Records
) -> None:
    ledger = Ledger(FirestoreLedgerStore(db), clock=lambda: datetime.now(UTC) - timedelta(hours=1))
    just_past = datetime.now(UTC) - timedelta(seconds=1)
    promos = {
        client: grant(ledger, client, 15, key="promo", source=GrantSource.PROMO, expires_at=just_past)
        for client in (client_id, bad_client_id)
    }
    breaker.update(state_path(bad_client_id), {"available": "plenty"})

    body = incomplete(stack.client("credits_jobs").post("/jobs/expire-buckets", headers=SCHEDULER))
    failed_only(body["failed"], {bad_client_id: "corrupt_document"}, client_id)
    assert body["changed"][client_id] == [{"bucket_id": promos[client_id], "amount": 15}]
    assert ledger.state(client_id).available == 0
    logged_failure(job_logs, bad_client_id, "corrupt_document")

    breaker.repair()
    again = ok(stack.client("credits_jobs").post("/jobs/expire-buckets", headers=SCHEDULER), client_id, bad_client_id)
    assert again["changed"][bad_client_id] == [{"bucket_id": promos[bad_client_id], "amount": 15}]
    assert client_id not in again["changed"]  # expired once
    assert [e.type for e in ledger.store.entries(client_id)] == [EntryType.GRANT, EntryType.EXPIRE]
    assert ledger.verify(bad_client_id) == [] and ledger.verify(client_id) == []


def test_verify_balances_goes_on_past_a_corrupt_state_and_still_reports_drift(
    stack: Any, client_id: str, other_client_id: str, bad_client_id: str, breaker: Breaker, job_logs: Records
) -> None:
    from google.cloud.firestore import Increment

    ledger = stack.platform.ledger
    for client in (client_id, other_client_id, bad_client_id):
        grant(ledger, client, 40)
    breaker.update(state_path(bad_client_id), {"buckets": ["not", "a", "map"]})
    breaker.update(state_path(other_client_id), {"available": Increment(5)})  # valid, but drifted

    body = incomplete(stack.client("credits_jobs").post("/jobs/verify-balances", headers=SCHEDULER))
    failed_only(body["failed"], {bad_client_id: "corrupt_document"}, client_id, other_client_id)
    assert "available: state 45, entries 40" in body["problems"][other_client_id]
    assert client_id not in body["problems"] and bad_client_id not in body["problems"]
    assert body["clients_checked"] >= 3
    logged_failure(job_logs, bad_client_id, "corrupt_document")

    breaker.repair()
    mine = (client_id, other_client_id, bad_client_id)
    again = ok(stack.client("credits_jobs").post("/jobs/verify-balances", headers=SCHEDULER), *mine)
    assert not {client_id, other_client_id, bad_client_id} & set(again["problems"])


def test_verify_reads_only_entries_after_its_checkpoint_unless_asked_for_all(
    stack: Any, db: Any, client_id: str, breaker: Breaker
) -> None:
    from google.cloud.firestore import Increment

    ledger = stack.platform.ledger
    grant(ledger, client_id, 40)
    hold_id = ledger.reserve(client_id, key="r", amount=7, actor=WORKER, purpose="p", ttl=timedelta(days=2))["hold_id"]
    ledger.capture(client_id, hold_id, amount=5, actor=WORKER, reason="done")
    checkpoint = db.document(f"clients/{client_id}/ledger_checkpoints/verify")
    assert not checkpoint.get().exists

    seq = ledger.state(client_id).seq
    assert ledger.verify_from_checkpoint(client_id) == []
    saved = checkpoint.get().to_dict()
    assert (saved["seq"], saved["available"], saved["reserved"]) == (seq, 35, 0)
    assert saved["verified_at"] is not None

    # Newer entries are replayed on top of the checkpoint, which moves up.
    grant(ledger, client_id, 10, key="more")
    seq += 1
    assert ledger.verify_from_checkpoint(client_id) == []
    assert checkpoint.get().to_dict()["seq"] == seq

    # A tampered state is still caught (and a drift never becomes the checkpoint) ...
    breaker.update(state_path(client_id), {"available": Increment(5)})
    assert ledger.verify_from_checkpoint(client_id) == ledger.verify(client_id) != []
    assert checkpoint.get().to_dict()["seq"] == seq
    breaker.repair()

    # ... but an entry older than the checkpoint is no longer read: only a full run sees it.
    breaker.update(f"clients/{client_id}/ledger_entries/{1:012d}", {"available_delta": 39})
    assert ledger.verify_from_checkpoint(client_id) == []
    problems = ledger.verify_from_checkpoint(client_id, full=True)
    assert "available: state 45, entries 44" in problems
    jobs = stack.client("credits_jobs")
    assert "available: state 45, entries 44" in ok(
        jobs.post("/jobs/verify-balances?full=true", headers=SCHEDULER), client_id
    )["problems"].get(client_id, [])
    breaker.repair()

    # A checkpoint that cannot be read (or is ahead of the state) is ignored and written again.
    breaker.update(checkpoint.path, {"buckets": "garbage"})
    assert ledger.verify_from_checkpoint(client_id) == []
    assert checkpoint.get().to_dict()["buckets"] != "garbage"
    breaker.update(checkpoint.path, {"seq": 99})
    assert ledger.verify_from_checkpoint(client_id) == []
    assert checkpoint.get().to_dict()["seq"] == seq


def test_verify_query_is_validated(stack: Any) -> None:
    response = stack.client("credits_jobs").post("/jobs/verify-balances?full=perhaps", headers=SCHEDULER)
    assert response.status_code == 422, response.json


# -- the daily billing job -----------------------------------------------------------------------------


def client_doc(client_id: str) -> str:
    return f"clients/{client_id}"


def put_client(db: Any, client_id: str, **billing: Any) -> None:
    """A client record as onboarding and the Stripe webhooks leave it."""
    db.document(client_doc(client_id)).set({"id": client_id, "plan": billing.get("plan", "free"), "billing": billing})


def annual(start: datetime, subscription_id: str) -> dict[str, Any]:
    return {
        "plan": "growth",
        "interval": "annual",
        "product_slots": 500,
        "subscription_id": subscription_id,
        "subscription_status": "active",
        "current_period_start": start,
        "current_period_end": add_months(start, 12),
    }


def test_daily_job_goes_on_past_corrupt_billing_and_the_rerun_finishes_it(
    stack: Any, db: Any, client_id: str, other_client_id: str, breaker: Breaker, job_logs: Records
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(days=40)  # months 0 and 1 of the annual period are due
    downgrading, bad_downgrading = client_id + "d", client_id + "dbad"
    bad_annual = other_client_id + "bad"
    put_client(db, client_id, **annual(start, f"sub_{client_id}"))
    put_client(db, bad_annual, **annual(start, f"sub_{bad_annual}"))
    for client in (downgrading, bad_downgrading):
        put_client(
            db,
            client,
            plan="pro",
            product_slots=1000,
            pending_plan="starter",
            pending_plan_at=now - timedelta(minutes=1),
        )
    breaker.update(client_doc(bad_annual), {"billing.current_period_start": "last spring"})
    breaker.update(client_doc(bad_downgrading), {"billing.product_slots": "plenty"})

    jobs = stack.client("billing_jobs")
    body = incomplete(jobs.post("/jobs/daily", headers=SCHEDULER))
    broken = {bad_annual: "corrupt_document", bad_downgrading: "corrupt_document"}
    failed_only(body["failed"], broken, client_id, downgrading)
    assert len(body["annual_grants"][client_id]) == 2
    assert body["plan_changes"][downgrading] == "starter"
    assert db.document(client_doc(downgrading)).get().to_dict()["billing"]["plan"] == "starter"
    assert stack.platform.ledger.state(bad_annual).seq == 0
    seq = stack.platform.ledger.state(client_id).seq  # two grants (and month 0 expiring, a month past)
    logged_failure(job_logs, bad_annual, "corrupt_document")
    logged_failure(job_logs, bad_downgrading, "corrupt_document")

    breaker.repair()
    again = ok(jobs.post("/jobs/daily", headers=SCHEDULER), client_id, downgrading, *broken)
    assert len(again["annual_grants"][bad_annual]) == 2
    assert again["plan_changes"][bad_downgrading] == "starter"
    assert downgrading not in again["plan_changes"]  # done once
    assert stack.platform.ledger.state(client_id).seq == seq  # the re-run changed nothing for it
    assert stack.platform.ledger.state(bad_annual).seq == seq
    billing = db.document(client_doc(bad_downgrading)).get().to_dict()["billing"]
    assert (billing["plan"], billing["product_slots"], billing["pending_plan"]) == ("starter", 100, None)


def test_daily_free_credits_go_on_past_a_corrupt_ledger(
    stack: Any, db: Any, client_id: str, bad_client_id: str, breaker: Breaker, job_logs: Records
) -> None:
    catalog = load_catalog()
    free = catalog.plans["free"].model_copy(update={"monthly_credits": 10})
    catalog = catalog.model_copy(update={"plans": {**catalog.plans, "free": free}})
    ledger, now = stack.platform.ledger, datetime.now(UTC)
    for client in (client_id, bad_client_id):
        put_client(db, client, plan="free")
    grant(ledger, bad_client_id, 5)  # a ledger to break
    breaker.update(state_path(bad_client_id), {"seq": "many"})

    report = allotments.run_daily(FirestoreBillingStore(db), ledger, catalog, now)
    failed_only(report.failed, {bad_client_id: "corrupt_document"}, client_id)
    assert client_id in report.free_grants and bad_client_id not in report.free_grants
    assert ledger.state(client_id).available == 10
    logged_failure(job_logs, bad_client_id, "corrupt_document")
    with pytest.raises(JobIncomplete) as raised:
        finish(report, allotments.JOB)
    assert raised.value.extensions["failed"][bad_client_id] == "corrupt_document"

    breaker.repair()
    again = allotments.run_daily(FirestoreBillingStore(db), ledger, catalog, now)
    failed_only(again.failed, {}, client_id, bad_client_id)
    assert {client_id, bad_client_id} <= set(again.free_grants)
    assert (ledger.state(client_id).available, ledger.state(bad_client_id).available) == (10, 15)
    assert ledger.state(client_id).seq == 1  # this month's grant once

    # The allowance changes mid-month: what was granted this month stays, and nobody fails for it.
    bigger = catalog.model_copy(
        update={"plans": {**catalog.plans, "free": free.model_copy(update={"monthly_credits": 20})}}
    )
    changed = allotments.run_daily(FirestoreBillingStore(db), ledger, bigger, now)
    failed_only(changed.failed, {}, client_id, bad_client_id)
    assert client_id not in changed.free_grants
    assert ledger.state(client_id).seq == 1
