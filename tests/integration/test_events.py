"""Domain events on the emulator: written in the same commit as their change (or not at all), relayed
through the task queue to every consumer once under redelivery, recovered by the sweep when a kick is
lost, kept in order per subject for ordered consumers, and parked after the queue's last attempt for an
operator to replay."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest

from shared.events.consumer import EventConsumer
from shared.events.model import (
    AssetApproval,
    CreditsThreshold,
    DomainEvent,
    EventType,
    JobCompleted,
    Subject,
    new_event,
)
from shared.ledger.model import Actor, GrantSource

SYSTEM = Actor(kind="system", id="events-test")


class Recorder(EventConsumer):
    """Records each event it applies in Firestore under the event's id: a redelivery writes nothing new."""

    name = "recorder"
    types: ClassVar[frozenset[EventType]] = frozenset(EventType)
    failing: ClassVar[set[str]] = set()  # event ids it refuses (a consumer bug), until cleared

    def __init__(self, db: Any) -> None:
        self.db = db

    def handle(self, event: DomainEvent) -> str:
        from google.api_core.exceptions import AlreadyExists

        if event.id in self.failing:
            raise RuntimeError("the recorder is broken for this event")
        ref = self.db.collection("test_recorder").document(f"{self.name}:{event.id}")
        try:
            ref.create({"type": event.type.value, "client_id": event.client_id})
        except AlreadyExists:
            return "already recorded"  # idempotent: a redelivery changes nothing
        self.db.collection("test_recorder_calls").document(f"{self.name}:{event.id}").set(
            {"calls": _increment()}, merge=True
        )
        return "recorded"


class OrderedRecorder(Recorder):
    name = "ordered"
    ordered = True
    failing: ClassVar[set[str]] = set()  # never broken in these tests


def _increment() -> Any:
    from google.cloud.firestore_v1 import transforms

    return transforms.Increment(1)


@pytest.fixture
def events_stack(stack: Any) -> Iterator[Any]:
    """The stack with two test consumers registered with the relay."""
    from shared.platform import Platform, set_platform

    p = stack.platform
    consumers: Callable[[Platform], list[EventConsumer]] = lambda platform: [  # noqa: E731
        Recorder(platform.db),
        OrderedRecorder(platform.db),
    ]
    installed = Platform(
        p.settings,
        db=p.db,
        object_store=p.object_store,
        task_queue=stack.dispatcher,
        fetcher=p.fetcher,
        ledger=None,
        event_consumers=consumers,
    )
    set_platform(installed)
    Recorder.failing.clear()
    stack.platform = installed
    yield stack
    Recorder.failing.clear()


def outbox(stack: Any, client_id: str) -> list[dict[str, Any]]:
    from google.cloud.firestore import FieldFilter

    query = stack.platform.db.collection("outbox").where(filter=FieldFilter("client_id", "==", client_id))
    return [snap.to_dict() for snap in query.stream()]


def applied(stack: Any, event_id: str, consumer: str = "recorder") -> int:
    """How many times ``consumer`` applied the event (its effect, not its deliveries)."""
    snap = stack.platform.db.collection("test_recorder_calls").document(f"{consumer}:{event_id}").get()
    return int((snap.to_dict() or {}).get("calls", 0)) if snap.exists else 0


def cross_low_balance(stack: Any, client_id: str) -> dict[str, Any]:
    ledger = stack.platform.ledger
    ledger.grant(client_id, key="g", amount=12, source=GrantSource.ADMIN, actor=SYSTEM, reason="test")
    ledger.reserve(client_id, key="r", amount=3, actor=SYSTEM, purpose="test", ttl=timedelta(hours=1))
    [event] = outbox(stack, client_id)
    return event


def test_the_balance_crossing_is_written_with_the_ledger_commit_and_relayed_once(
    events_stack: Any, client_id: str
) -> None:
    stack = events_stack
    event = cross_low_balance(stack, client_id)
    assert event["type"] == "credits.low" and event["payload"] == {"available": 9, "threshold": 10}
    assert event["relay_due_at"] is not None and event["relayed_at"] is None
    assert event["subject"] == {"kind": "ledger", "id": client_id}

    stack.run_tasks()
    assert applied(stack, event["id"]) == 1
    [relayed] = outbox(stack, client_id)
    assert "relay_due_at" not in relayed and relayed["relayed_at"] is not None

    # Redelivery: the relay task again (Cloud Tasks delivers at least once) and the consume task again.
    tasks = stack.apps["notifications_tasks"].test_client()
    headers = {
        "Authorization": "Bearer test-task-secret",
        "X-CloudTasks-QueueName": "default",
        "X-CloudTasks-TaskName": "again",
        "X-CloudTasks-TaskRetryCount": "0",
        "X-CloudTasks-TaskExecutionCount": "0",
    }
    assert tasks.post("/tasks/relay", json={"event_id": event["id"]}, headers=headers).status_code == 200
    stack.run_tasks()
    body = {"event_id": event["id"], "consumer": "recorder"}
    assert tasks.post("/tasks/consume", json=body, headers=headers).status_code == 200
    assert applied(stack, event["id"]) == 1  # redelivered twice, applied once
    assert applied(stack, event["id"], "ordered") == 1
    assert len(outbox(stack, client_id)) == 1


def test_a_commit_that_fails_writes_neither_the_change_nor_its_event(events_stack: Any, client_id: str) -> None:
    """A job settles with its event in one commit: when the job moved meanwhile, neither is written."""
    from shared.adapters.firestore.batch import FirestoreJobStore
    from shared.batch.store import StaleWrite
    from shared.generation.jobs import GENERATION

    stack = events_stack
    db = stack.platform.db
    ref = db.collection("clients").document(client_id).collection(GENERATION.collection).document("job_1")
    ref.set({"id": "job_1", "status": "running"})
    seen = ref.get()
    ref.update({"status": "cancelling"})  # a cancel lands between the settle's read and its write
    event = new_event(
        client_id,
        EventType.GENERATION_JOB_COMPLETED,
        Subject(kind=GENERATION.collection, id="job_1"),
        JobCompleted(job_id="job_1", status="completed", items=1, succeeded=1, failed=0, charged=1, refunded=0),
        occurred_at=datetime.now(UTC),
        sequence=1,
    )
    store = FirestoreJobStore(db, GENERATION, stack.platform.event_kicker)
    with pytest.raises(StaleWrite):
        store.update_job(client_id, "job_1", {"status": "completed", "settled": True}, version=seen, events=[event])
    assert ref.get().to_dict()["status"] == "cancelling"
    assert outbox(stack, client_id) == []
    assert stack.run_tasks() == 0  # nothing was kicked either

    store.update_job(client_id, "job_1", {"status": "completed", "settled": True}, events=[event])
    assert [e["id"] for e in outbox(stack, client_id)] == [event.id]
    stack.run_tasks()
    assert applied(stack, event.id) == 1


def test_the_sweep_relays_an_event_whose_kick_was_lost(events_stack: Any, client_id: str) -> None:
    from shared.adapters.firestore.outbox import write_events

    stack = events_stack
    db = stack.platform.db
    old = datetime.now(UTC) - timedelta(minutes=10)
    event = new_event(
        client_id,
        EventType.CREDITS_DEPLETED,
        Subject(kind="ledger", id=client_id),
        CreditsThreshold(available=0, threshold=10),
        occurred_at=old,
        sequence=7,
    )
    batch = db.batch()
    write_events(db, batch, [event])
    batch.commit()  # committed, never kicked: the process died after its commit

    assert stack.run_tasks() == 0
    report = stack.client("notifications_tasks").post(
        "/jobs/sweep-events", headers={"Authorization": "Bearer test-task-secret"}
    )
    assert report.status_code == 200, report.get_data(as_text=True)
    assert report.get_json()["relayed"] >= 1
    stack.run_tasks()
    assert applied(stack, event.id) == 1
    assert outbox(stack, client_id)[0]["relayed_at"] is not None


def test_an_ordered_consumer_never_applies_an_older_event_after_a_newer_one(events_stack: Any, client_id: str) -> None:
    from shared.adapters.firestore.outbox import write_events

    stack = events_stack
    db = stack.platform.db
    now = datetime.now(UTC)
    subject = Subject(kind="asset", id="ast_1")

    def approval(approved: bool, sequence: int) -> DomainEvent:
        kind = EventType.ASSET_APPROVED if approved else EventType.ASSET_UNAPPROVED
        payload = AssetApproval(asset_id="ast_1", approved=approved)
        return new_event(client_id, kind, subject, payload, occurred_at=now, sequence=sequence, discriminator=sequence)

    approved, unapproved = approval(True, 1), approval(False, 2)
    batch = db.batch()
    write_events(db, batch, [approved, unapproved])
    batch.commit()
    stack.platform.event_kicker.kick([unapproved])  # the later one is relayed first
    stack.run_tasks()
    stack.platform.event_kicker.kick([approved])
    stack.run_tasks()
    assert applied(stack, unapproved.id) == 1 and applied(stack, unapproved.id, "ordered") == 1
    # The ordered consumer skipped the older approval; the unordered recorder applied it.
    assert applied(stack, approved.id) == 1 and applied(stack, approved.id, "ordered") == 0
    assert stack.platform.outbox.position("ordered", client_id, subject) == 2


def test_a_consumer_that_keeps_failing_is_parked_and_replayed_after_the_fix(events_stack: Any, client_id: str) -> None:
    stack = events_stack
    ledger = stack.platform.ledger
    ledger.grant(client_id, key="g", amount=5, source=GrantSource.ADMIN, actor=SYSTEM, reason="test")
    event_id = outbox(stack, client_id)[0]["id"] if outbox(stack, client_id) else None
    assert event_id is None  # a first small grant is not a crossing
    event = cross_low_balance_after(stack, client_id)
    Recorder.failing.add(event["id"])
    stack.run_tasks()  # the queue's attempts run out: the delivery is parked
    admin = stack.headers(client_id, role="admin")
    api = stack.client("notifications_api")
    listed = api.get("/admin/parked-deliveries", headers=admin)
    assert listed.status_code == 200, listed.get_data(as_text=True)
    parked = [p for p in listed.get_json()["items"] if p["event_id"] == event["id"]]
    assert [(p["consumer"], p["reason"].split(":")[0]) for p in parked] == [("recorder", "RuntimeError")]
    assert parked[0]["attempts"] >= 1

    Recorder.failing.clear()  # the fix is deployed
    replayed = api.post(f"/admin/parked-deliveries/{parked[0]['id']}/replay", headers=admin)
    assert replayed.status_code == 202, replayed.get_data(as_text=True)
    stack.run_tasks()
    assert applied(stack, event["id"]) == 1
    assert applied(stack, event["id"], "ordered") == 1  # the other consumer never failed: not parked
    assert api.post("/admin/parked-deliveries/nope.recorder/replay", headers=admin).status_code == 404
    user = stack.headers(client_id)
    assert api.get("/admin/parked-deliveries", headers=user).status_code == 403


def cross_low_balance_after(stack: Any, client_id: str) -> dict[str, Any]:
    ledger = stack.platform.ledger
    ledger.grant(client_id, key="g2", amount=10, source=GrantSource.ADMIN, actor=SYSTEM, reason="test")
    ledger.reserve(client_id, key="r2", amount=6, actor=SYSTEM, purpose="test", ttl=timedelta(hours=1))
    [event] = [e for e in outbox(stack, client_id) if e["type"] == "credits.low"]
    return event


# -- the producers ------------------------------------------------------------------------------------


def test_approving_and_unapproving_an_asset_writes_numbered_events(events_stack: Any, client_id: str) -> None:
    from tests.catalog_helpers import new_asset

    stack = events_stack
    catalog, headers = stack.client("catalog_api"), stack.headers(client_id)
    asset_id = new_asset(stack, catalog, headers, client_id)
    for approved in (True, True, False, True):  # the repeated true changes nothing: no event
        response = catalog.patch(f"/assets/{asset_id}", json={"approved": approved}, headers=headers)
        assert response.status_code == 200, response.get_data(as_text=True)
    approvals = sorted(
        (e for e in outbox(stack, client_id) if e["subject"]["kind"] == "asset"), key=lambda e: e["sequence"]
    )
    assert [(e["type"], e["sequence"], e["payload"]["approved"]) for e in approvals] == [
        ("catalog.asset_approved", 1, True),
        ("catalog.asset_unapproved", 2, False),
        ("catalog.asset_approved", 3, True),
    ]
    stack.run_tasks()
    assert all(applied(stack, e["id"], "ordered") == 1 for e in approvals)
    assert stack.platform.outbox.position("ordered", client_id, Subject(kind="asset", id=asset_id)) == 3


def test_a_settled_generation_job_writes_one_event_with_its_counts(events_stack: Any, client_id: str) -> None:
    from tests.platforms import grant

    stack = events_stack
    grant(stack, client_id, 50)
    gen, headers = stack.client("generate_api"), stack.headers(client_id)
    items = [{"prompt": f"a mug on oak, take {n}"} for n in range(3)]
    response = gen.post("/jobs", json={"items": items, "variants": 2}, headers=headers)
    assert response.status_code == 202, response.get_data(as_text=True)
    job_id = response.get_json()["id"]
    stack.run_tasks()
    [event] = [e for e in outbox(stack, client_id) if e["type"] == "generation.job_completed"]
    assert event["subject"] == {"kind": "jobs", "id": job_id}
    payload = event["payload"]
    assert (payload["items"], payload["succeeded"], payload["failed"], payload["images"]) == (3, 3, 0, 6)
    assert payload["charged"] > 0 and payload["refunded"] == 0
    assert applied(stack, event["id"]) == 1
