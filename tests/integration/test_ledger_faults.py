"""The credit ledger when things go wrong: dead workers, duplicate or conflicting resolutions,
expiring buckets, a tampered balance, and the scheduled jobs that repair or report them.

The jobs run through ``credits_jobs`` (Cloud Scheduler's endpoint) with the platform's real clock;
scenarios that need time to pass are built with a controllable clock set in the past, so the
jobs — which look at every client in the emulator — only ever see what these tests put there.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.adapters.firestore.ledger import FirestoreLedgerReader, FirestoreLedgerStore
from shared.ledger import views
from shared.ledger.model import Actor, EntryType, GrantSource, HoldAlreadyResolved, HoldStatus
from shared.ledger.service import Ledger
from tests.conftest import TASK_SECRET

pytestmark = pytest.mark.integration

USER = Actor(kind="user", id="u1")
WORKER = Actor(kind="task", id="worker")
ADMIN = Actor(kind="admin", id="a1")
JOB_AUTH = {"Authorization": f"Bearer {TASK_SECRET}"}


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def _past_ledger(db: Any, ago: timedelta = timedelta(days=1)) -> tuple[Ledger, Clock]:
    clock = Clock(datetime.now(UTC) - ago)
    return Ledger(FirestoreLedgerStore(db), clock=clock), clock


def _types(ledger: Ledger, client_id: str) -> Counter[EntryType]:
    return Counter(e.type for e in ledger.store.entries(client_id))


def _grant(ledger: Ledger, client_id: str, amount: int, *, key: str = "g", **kwargs: Any) -> str:
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


def _hold(ledger: Ledger, client_id: str, key: str, amount: int, ttl: timedelta = timedelta(days=2)) -> str:
    # Two days: with the clock a day behind, a hold left pending is still not overdue for the real-clock
    # sweep that other tests run over every client.
    return str(ledger.reserve(client_id, key=key, amount=amount, actor=WORKER, purpose="p", ttl=ttl)["hold_id"])


def _job(stack: Any, path: str) -> dict[str, Any]:
    response = stack.client("credits_jobs").post(path, headers=JOB_AUTH)
    assert response.status_code == 200, response.json
    return dict(response.json)


# -- a worker that dies after reserving ------------------------------------------------------------


def test_dead_worker_hold_is_released_by_the_sweep_endpoint(stack: Any, client_id: str) -> None:
    ledger = stack.platform.ledger  # the platform's real clock: a 1 ms ttl is overdue almost at once
    _grant(ledger, client_id, 20)
    hold_id = ledger.reserve(
        client_id, key="job-1", amount=5, actor=WORKER, purpose="generate", ttl=timedelta(milliseconds=1)
    )["hold_id"]
    assert ledger.state(client_id).available == 15
    time.sleep(0.05)  # ... and the worker never comes back to capture

    report = _job(stack, "/jobs/sweep-holds")
    assert report["job"] == "sweep-holds"
    assert report["changed"][client_id] == [hold_id]
    state = ledger.state(client_id)
    assert (state.available, state.reserved, state.holds) == (20, 0, {})

    history = stack.client("credits_api").get("/history", headers=stack.headers(client_id)).json["items"]
    assert history[0]["type"] == "release" and history[0]["hold_id"] == hold_id
    assert history[0]["actor"] == {"kind": "system", "id": "scheduler"}
    assert history[0]["amount"] == 5

    seq_before = state.seq
    again = _job(stack, "/jobs/sweep-holds")
    assert client_id not in again["changed"]
    assert ledger.state(client_id).seq == seq_before
    assert ledger.verify(client_id) == []
    # The worker wakes up late: its capture is refused, nothing is charged.
    with pytest.raises(HoldAlreadyResolved):
        ledger.capture(client_id, hold_id, amount=5, actor=WORKER, reason="late")
    assert ledger.state(client_id).available == 20


def test_sweep_with_a_controllable_clock_releases_only_overdue_holds(db: Any, client_id: str) -> None:
    ledger, clock = _past_ledger(db)
    _grant(ledger, client_id, 30)
    short = _hold(ledger, client_id, "short", 4, timedelta(minutes=10))
    long_ = _hold(ledger, client_id, "long", 6)
    clock.advance(timedelta(minutes=9))
    assert client_id not in views.sweep_holds(FirestoreLedgerReader(db), ledger, clock()).changed
    clock.advance(timedelta(minutes=2))
    assert views.sweep_holds(FirestoreLedgerReader(db), ledger, clock()).changed[client_id] == [short]
    assert client_id not in views.sweep_holds(FirestoreLedgerReader(db), ledger, clock()).changed
    state = ledger.state(client_id)
    assert (state.available, state.reserved, list(state.holds)) == (24, 6, [long_])
    assert ledger.verify(client_id) == []


def test_sweep_skips_a_hold_resolved_after_it_looked(db: Any, client_id: str) -> None:
    """The worker captures between the sweeper's read and its release: the capture stands, the sweep goes on."""
    ledger, clock = _past_ledger(db)
    _grant(ledger, client_id, 30)
    first = _hold(ledger, client_id, "a", 4, timedelta(minutes=1))
    second = _hold(ledger, client_id, "b", 6, timedelta(minutes=2))
    clock.advance(timedelta(minutes=5))
    seen_by_sweeper = ledger.state(client_id)
    ledger.capture(client_id, first, amount=4, actor=WORKER, reason="done just in time")
    ledger.store.state = lambda _client_id: seen_by_sweeper  # type: ignore[method-assign]

    released = ledger.sweep_expired_holds(client_id, actor=views.SYSTEM)

    assert released == [second]
    del ledger.store.state  # type: ignore[method-assign]
    state = ledger.state(client_id)
    assert (state.available, state.reserved, state.holds) == (26, 0, {})
    assert ledger.verify(client_id) == []


def test_a_commit_aborted_by_contention_is_retried(db: Any, client_id: str) -> None:
    """Firestore answers ABORTED ("Too much contention", the emulator's "Transaction lock timeout") to a
    write on a hot document: nothing was written, so the ledger reads again and retries."""
    from google.api_core.exceptions import Aborted

    class AbortingClient:
        def __init__(self, real: Any, failures: int) -> None:
            self.real, self.failures = real, failures

        def __getattr__(self, name: str) -> Any:
            return getattr(self.real, name)

        def batch(self) -> Any:
            batch = self.real.batch()
            if self.failures > 0:
                self.failures -= 1

                def abort() -> None:
                    raise Aborted("Transaction lock timeout.")

                batch.commit = abort
            return batch

    ledger, _ = _past_ledger(db)
    _grant(ledger, client_id, 10)
    flaky = Ledger(FirestoreLedgerStore(AbortingClient(db, failures=2)), clock=ledger.clock, sleep=lambda _: None)
    hold_id = _hold(flaky, client_id, "r", 4)
    assert flaky.stats.conflicts == 2
    state = ledger.state(client_id)
    assert (state.available, state.reserved, list(state.holds)) == (6, 4, [hold_id])
    assert ledger.verify(client_id) == []


# -- duplicate and conflicting resolutions ----------------------------------------------------------


def test_duplicate_capture_charges_once(db: Any, client_id: str) -> None:
    ledger, _ = _past_ledger(db)
    _grant(ledger, client_id, 50)
    hold_id = _hold(ledger, client_id, "r", 10)
    first = ledger.capture(client_id, hold_id, amount=8, actor=WORKER, reason="done")
    again = ledger.capture(client_id, hold_id, amount=8, actor=WORKER, reason="done")  # redelivered task
    other_key = ledger.capture(client_id, hold_id, amount=8, actor=WORKER, reason="done", key="another-delivery")
    assert first == again == other_key
    assert (first.status, first.captured, first.released) == (HoldStatus.CAPTURED, 8, 2)
    state = ledger.state(client_id)
    assert (state.available, state.reserved) == (42, 0)
    assert _types(ledger, client_id)[EntryType.CAPTURE] == 1
    assert ledger.verify(client_id) == []


def test_capture_after_release_is_refused(db: Any, client_id: str) -> None:
    ledger, _ = _past_ledger(db)
    _grant(ledger, client_id, 50)
    hold_id = _hold(ledger, client_id, "r", 10)
    ledger.release(client_id, hold_id, actor=WORKER, reason="failed")
    before = ledger.state(client_id)
    with pytest.raises(HoldAlreadyResolved) as refused:
        ledger.capture(client_id, hold_id, amount=10, actor=WORKER, reason="done")
    assert (refused.value.status, refused.value.code) == (409, "hold_already_resolved")
    after = ledger.state(client_id)
    assert (after.available, after.reserved, after.seq) == (before.available, before.reserved, before.seq) == (50, 0, 3)
    assert ledger.release(client_id, hold_id, actor=WORKER, reason="failed").status is HoldStatus.RELEASED  # replay
    assert ledger.verify(client_id) == []


def test_release_after_capture_is_refused(db: Any, client_id: str) -> None:
    ledger, _ = _past_ledger(db)
    _grant(ledger, client_id, 50)
    hold_id = _hold(ledger, client_id, "r", 10)
    ledger.capture(client_id, hold_id, amount=10, actor=WORKER, reason="done")
    with pytest.raises(HoldAlreadyResolved) as refused:
        ledger.release(client_id, hold_id, actor=WORKER, reason="cancel")
    assert refused.value.status == 409
    state = ledger.state(client_id)
    assert (state.available, state.reserved) == (40, 0)
    assert _types(ledger, client_id) == Counter({EntryType.GRANT: 1, EntryType.RESERVE: 1, EntryType.CAPTURE: 1})


# -- bucket expiry --------------------------------------------------------------------------------------


def test_expire_buckets_job_expires_a_past_due_bucket_once(stack: Any, db: Any, client_id: str) -> None:
    ledger, _ = _past_ledger(db, timedelta(hours=1))
    just_past = datetime.now(UTC) - timedelta(seconds=1)
    promo = _grant(ledger, client_id, 15, key="promo", source=GrantSource.PROMO, expires_at=just_past)
    _grant(ledger, client_id, 10, key="pack")
    assert ledger.state(client_id).available == 25

    report = _job(stack, "/jobs/expire-buckets")
    assert report["changed"][client_id] == [{"bucket_id": promo, "amount": 15}]
    state = ledger.state(client_id)
    assert state.available == 10 and state.buckets[promo].expired
    entries = ledger.store.entries(client_id)
    assert [(e.type, e.amount, e.bucket_id, e.actor.kind) for e in entries[-1:]] == [
        (EntryType.EXPIRE, 15, promo, "system")
    ]

    again = _job(stack, "/jobs/expire-buckets")
    assert client_id not in again["changed"]
    assert ledger.state(client_id).seq == state.seq
    assert ledger.verify(client_id) == []


def test_credits_released_to_an_expired_bucket_expire_again(stack: Any, db: Any, client_id: str) -> None:
    ledger, clock = _past_ledger(db, timedelta(hours=1))
    just_past = datetime.now(UTC) - timedelta(seconds=1)
    promo = _grant(ledger, client_id, 10, key="promo", source=GrantSource.PROMO, expires_at=just_past)
    _grant(ledger, client_id, 20, key="pack")
    hold = ledger.reserve(client_id, key="r", amount=4, actor=WORKER, purpose="p", ttl=timedelta(hours=3))
    assert hold["draws"] == {promo: 4}  # promotional credits burn first

    report = _job(stack, "/jobs/expire-buckets")
    assert report["changed"][client_id] == [{"bucket_id": promo, "amount": 6}]
    assert (ledger.state(client_id).available, ledger.state(client_id).reserved) == (20, 4)

    clock.now = datetime.now(UTC)
    outcome = ledger.release(client_id, hold["hold_id"], actor=WORKER, reason="generation failed")
    assert outcome.released == 4
    state = ledger.state(client_id)
    assert (state.available, state.reserved, state.buckets[promo].remaining) == (20, 0, 0)
    last = ledger.store.entries(client_id)[-2:]
    assert [(e.type, e.amount, e.bucket_id) for e in last] == [
        (EntryType.RELEASE, 4, None),
        (EntryType.EXPIRE, 4, promo),
    ]
    assert client_id not in _job(stack, "/jobs/expire-buckets")["changed"]
    assert ledger.verify(client_id) == []


# -- balance verification ----------------------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_verify_job_reports_a_tampered_balance(stack: Any, db: Any, client_id: str, other_client_id: str) -> None:
    from google.cloud.firestore import Increment

    ledger, _ = _past_ledger(db)
    for client in (client_id, other_client_id):
        _grant(ledger, client, 40)
        hold_id = _hold(ledger, client, "r", 7)
        ledger.capture(client, hold_id, amount=5, actor=WORKER, reason="done")
    db.document(f"clients/{client_id}/ledger/state").update({"available": Increment(5)})

    # A handler on the function's own logger: the JSON log setup may replace the root's handlers.
    records = _Records()
    logging.getLogger("epox.credits").addHandler(records)
    try:
        report = _job(stack, "/jobs/verify-balances")
    finally:
        logging.getLogger("epox.credits").removeHandler(records)

    assert report["job"] == "verify-balances"
    assert report["clients_checked"] >= 2
    assert "available: state 40, entries 35" in report["problems"][client_id]
    assert "available differs from the sum of bucket balances" in report["problems"][client_id]
    assert other_client_id not in report["problems"]
    critical = [r for r in records.records if r.levelno == logging.CRITICAL]
    assert any(client_id in r.getMessage() for r in critical)
    assert not any(other_client_id in r.getMessage() for r in critical)

    # Put the balance back, so later verify runs in this session see a consistent ledger again.
    db.document(f"clients/{client_id}/ledger/state").update({"available": Increment(-5)})
    assert ledger.verify(client_id) == []


# -- scheduler endpoints refuse strangers ---------------------------------------------------------------


@pytest.mark.parametrize("path", ["/jobs/sweep-holds", "/jobs/expire-buckets", "/jobs/verify-balances"])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-secret"}, {"Authorization": "Basic eDp5"}])
def test_scheduler_endpoints_need_the_secret(stack: Any, path: str, headers: dict[str, str]) -> None:
    response = stack.client("credits_jobs").post(path, headers=headers)
    assert response.status_code == 401, response.json
    assert response.json["code"] == "unauthenticated"


def test_scheduler_endpoints_refuse_a_user_token(stack: Any, client_id: str) -> None:
    response = stack.client("credits_jobs").post("/jobs/verify-balances", headers=stack.headers(client_id))
    assert response.status_code == 401
