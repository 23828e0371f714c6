"""In-app notifications end to end on the emulator: events fed to the notifier (as the relay would),
read and marked through the real notifications_api function."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.adapters.firestore.notifications import FirestoreNotificationStore, FirestorePreferencesStore
from shared.events.model import CreditsThreshold, DomainEvent, EventType, JobCompleted, Subject, new_event
from shared.notifications.in_app import InAppNotifier
from shared.notifications.inbox import NotificationQuery

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def notifier(db: Any) -> InAppNotifier:
    return InAppNotifier(FirestoreNotificationStore(db), FirestorePreferencesStore(db))


def job_done(client_id: str, job_id: str, at: datetime, failed: int = 0) -> DomainEvent:
    payload = JobCompleted(
        job_id=job_id,
        status="partially_completed" if failed else "completed",
        items=1000,
        succeeded=1000 - failed,
        failed=failed,
        charged=1000 - failed,
        refunded=failed,
    )
    subject = Subject(kind="job", id=job_id)
    return new_event(client_id, EventType.GENERATION_JOB_COMPLETED, subject, payload, occurred_at=at)


def low(client_id: str, available: int, at: datetime) -> DomainEvent:
    payload = CreditsThreshold(available=available, threshold=50)
    subject = Subject(kind="ledger", id=client_id)
    return new_event(client_id, EventType.CREDITS_LOW, subject, payload, occurred_at=at, discriminator=at.isoformat())


def listing(notifications: Any, headers: dict[str, str], query: str = "") -> dict[str, Any]:
    response = notifications.get(f"/notifications{query}", headers=headers)
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def unread(notifications: Any, headers: dict[str, str]) -> int:
    response = notifications.get("/notifications/unread-count", headers=headers)
    assert response.status_code == 200, response.get_json()
    return int(response.get_json()["unread"])


def test_list_filter_and_paginate_newest_first(
    stack: Any, notifications: Any, headers: dict[str, str], client_id: str, notifier: InAppNotifier
) -> None:
    for i in range(5):
        notifier.handle(job_done(client_id, f"job{i}", T0 + timedelta(minutes=i), failed=i))
    notifier.handle(low(client_id, 20, T0 + timedelta(minutes=10)))

    first = listing(notifications, headers, "?limit=4")
    assert [n["type"] for n in first["items"]][:1] == ["credits_low"]
    assert first["next_cursor"]
    second = listing(notifications, headers, f"?limit=4&cursor={first['next_cursor']}")
    assert second["next_cursor"] is None
    items = first["items"] + second["items"]
    assert len({n["id"] for n in items}) == 6
    assert [n["updated_at"] for n in items] == sorted((n["updated_at"] for n in items), reverse=True)
    newest_job = items[1]
    assert newest_job["body"] == "Generation job finished: 996 of 1,000 images, 4 failed, 4 credits refunded."
    assert newest_job["link"] == {"kind": "job", "id": "job4", "path": "/jobs/job4"}
    assert "event_ids" not in newest_job

    jobs = listing(notifications, headers, "?type=job_completed&limit=100")
    assert len(jobs["items"]) == 5 and {n["type"] for n in jobs["items"]} == {"job_completed"}
    assert listing(notifications, headers, "?read=true")["items"] == []
    assert len(listing(notifications, headers, "?read=false&type=credits_low")["items"]) == 1

    bad = notifications.get("/notifications?cursor=bm9wZQ", headers=headers)
    assert bad.status_code == 400 and bad.get_json()["code"] == "invalid_cursor"
    assert notifications.get("/notifications?type=nope", headers=headers).status_code == 422


def test_mark_read_one_several_all_and_unread_count(
    stack: Any, notifications: Any, headers: dict[str, str], client_id: str, notifier: InAppNotifier
) -> None:
    for i in range(4):
        notifier.handle(job_done(client_id, f"job{i}", T0 + timedelta(minutes=i)))
    ids = [n["id"] for n in listing(notifications, headers)["items"]]
    assert unread(notifications, headers) == 4

    one = notifications.post(f"/notifications/{ids[0]}/read", headers=headers)
    assert one.status_code == 200 and one.get_json()["read"] is True and one.get_json()["id"] == ids[0]
    assert unread(notifications, headers) == 3

    several = notifications.post("/notifications/read", json={"ids": [ids[0], ids[1], "ntf_missing"]}, headers=headers)
    assert several.status_code == 200
    assert several.get_json() == {"marked": 2, "not_found": ["ntf_missing"]}
    assert unread(notifications, headers) == 2
    assert {n["id"] for n in listing(notifications, headers, "?read=false")["items"]} == set(ids[2:])

    everything = notifications.post("/notifications/read-all", headers=headers)
    assert everything.status_code == 200 and everything.get_json() == {"marked": 2}
    assert unread(notifications, headers) == 0
    assert notifications.post("/notifications/read-all", headers=headers).get_json() == {"marked": 0}

    too_many = notifications.post("/notifications/read", json={"ids": [f"n{i}" for i in range(101)]}, headers=headers)
    assert too_many.status_code == 422
    empty = notifications.post("/notifications/read", json={"ids": []}, headers=headers)
    assert empty.status_code == 422


def test_another_clients_notification_is_not_found(
    stack: Any,
    notifications: Any,
    headers: dict[str, str],
    client_id: str,
    other_client_id: str,
    notifier: InAppNotifier,
) -> None:
    notifier.handle(job_done(other_client_id, "theirs", T0))
    other = stack.headers(other_client_id)
    [theirs] = listing(notifications, other)["items"]

    mine = notifications.post(f"/notifications/{theirs['id']}/read", headers=headers)
    assert mine.status_code == 404 and mine.get_json()["code"] == "not_found"
    several = notifications.post("/notifications/read", json={"ids": [theirs["id"]]}, headers=headers)
    assert several.get_json() == {"marked": 0, "not_found": [theirs["id"]]}
    assert notifications.post("/notifications/read-all", headers=headers).get_json() == {"marked": 0}
    assert listing(notifications, headers)["items"] == []
    assert listing(notifications, other)["items"][0]["read"] is False  # untouched


def test_a_burst_collapses_into_one_unread_notification_kept_90_days(
    stack: Any, notifications: Any, headers: dict[str, str], client_id: str, notifier: InAppNotifier, db: Any
) -> None:
    notifier.handle(low(client_id, 40, T0))
    [first] = listing(notifications, headers)["items"]
    notifications.post(f"/notifications/{first['id']}/read", headers=headers)

    later = low(client_id, 8, T0 + timedelta(hours=5))
    notifier.handle(later)
    assert notifier.handle(later).startswith("unchanged")  # redelivered: nothing changes

    [n] = listing(notifications, headers)["items"]
    assert (n["id"], n["count"], n["read"]) == (first["id"], 2, False)
    assert "down to 8 credits" in n["body"]
    updated = datetime.fromisoformat(n["updated_at"])
    assert updated == T0 + timedelta(hours=5)
    assert datetime.fromisoformat(n["expires_at"]) == updated + timedelta(days=90)
    stored = db.collection("clients").document(client_id).collection("notifications").document(n["id"]).get()
    assert stored.to_dict()["expires_at"] == updated + timedelta(days=90)  # a timestamp, for the TTL policy


def test_concurrent_events_of_one_key_all_count(client_id: str, db: Any, notifier: InAppNotifier) -> None:
    from concurrent.futures import ThreadPoolExecutor

    events = [low(client_id, 40 - i, T0 + timedelta(minutes=i)) for i in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(notifier.handle, events))
    [n] = FirestoreNotificationStore(db).page(client_id, NotificationQuery()).items
    assert n.count == 6 and len(n.event_ids) == 6


def test_legacy_notices_are_not_listed_counted_or_marked(
    stack: Any, notifications: Any, headers: dict[str, str], client_id: str, notifier: InAppNotifier, db: Any
) -> None:
    collection = db.collection("clients").document(client_id).collection("notifications")
    collection.document("credits-low_balance-3-0").set(
        {"kind": "low_balance", "available": 3, "threshold": 50, "created_at": T0, "read": False}
    )
    collection.document("billing-notice").set(
        {"kind": "duplicate_subscription_cancelled", "message": "m", "created_at": T0, "read": False}
    )
    notifier.handle(job_done(client_id, "job1", T0))

    assert [n["link"]["id"] for n in listing(notifications, headers)["items"]] == ["job1"]
    assert unread(notifications, headers) == 1
    legacy = notifications.post("/notifications/credits-low_balance-3-0/read", headers=headers)
    assert legacy.status_code == 404
    assert notifications.post("/notifications/read-all", headers=headers).get_json() == {"marked": 1}
    assert collection.document("credits-low_balance-3-0").get().to_dict()["read"] is False


def test_preferences_round_trip_and_gate_the_notifier(
    stack: Any, notifications: Any, headers: dict[str, str], client_id: str, notifier: InAppNotifier
) -> None:
    defaults = notifications.get("/notification-preferences", headers=headers)
    assert defaults.status_code == 200
    body = defaults.get_json()
    assert body["email_enabled"] is True and body["email_to"] is None
    assert body["channels"]["job_completed"] == {"in_app": True, "email": False}
    assert body["channels"]["payment_failed"] == {"in_app": True, "email": True}

    body["email_to"] = "shop@example.com"
    body["channels"]["job_completed"] = {"in_app": False, "email": True}
    saved = notifications.put("/notification-preferences", json=body, headers=headers)
    assert saved.status_code == 200, saved.get_json()
    assert notifications.get("/notification-preferences", headers=headers).get_json() == body

    assert notifier.handle(job_done(client_id, "job1", T0)) == "skipped: in-app job_completed off"
    assert listing(notifications, headers)["items"] == []

    unknown = notifications.put(
        "/notification-preferences", json={**body, "channels": {"nope": {"in_app": True}}}, headers=headers
    )
    assert unknown.status_code == 422
    extra = notifications.put("/notification-preferences", json={**body, "surprise": 1}, headers=headers)
    assert extra.status_code == 422
    bad_address = notifications.put("/notification-preferences", json={**body, "email_to": "nope"}, headers=headers)
    assert bad_address.status_code == 422


def test_routes_need_a_signed_in_user(stack: Any, notifications: Any) -> None:
    assert notifications.get("/notifications").status_code == 401
    assert notifications.get("/notification-preferences").status_code == 401
