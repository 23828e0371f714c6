"""The in-app notifier on the port fakes: what each event says, how bursts collapse, that a
redelivered event changes nothing, that preferences gate it; and the inbox use cases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import BaseModel, ValidationError

from shared.errors import NotFound
from shared.events.model import (
    AssetApproval,
    CreditsThreshold,
    DomainEvent,
    EventType,
    ImportCompleted,
    JobCompleted,
    PaymentFailed,
    StoreChanged,
    Subject,
    SubscriptionChanged,
    SyncFinished,
    new_event,
)
from shared.notifications import inbox
from shared.notifications.in_app import CONTENT, InAppNotifier
from shared.notifications.inbox import LinkKind, MarkReadRequest, NotificationQuery
from shared.notifications.preferences import ChannelPreference, NotificationPreferences, NotificationType
from shared.pagination import InvalidCursor
from tests.fakes_notifications import InMemoryNotificationStore, InMemoryPreferencesStore

CLIENT = "client-a"
T0 = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)


def event(
    kind: EventType, payload: BaseModel, subject: Subject, *, at: datetime = T0, which: str | int = ""
) -> DomainEvent:
    return new_event(CLIENT, kind, subject, payload, occurred_at=at, discriminator=which)


def job_done(job_id: str = "job1", **changes: int | str) -> DomainEvent:
    payload = JobCompleted(
        job_id=job_id, status="partially_completed", items=1000, succeeded=998, failed=2, charged=996, refunded=4
    ).model_copy(update=changes)
    return event(EventType.GENERATION_JOB_COMPLETED, payload, Subject(kind="job", id=job_id))


def low(available: int, at: datetime) -> DomainEvent:
    payload = CreditsThreshold(available=available, threshold=50)
    return event(EventType.CREDITS_LOW, payload, Subject(kind="ledger", id=CLIENT), at=at, which=at.isoformat())


@pytest.fixture
def store() -> InMemoryNotificationStore:
    return InMemoryNotificationStore()


@pytest.fixture
def prefs() -> InMemoryPreferencesStore:
    return InMemoryPreferencesStore()


@pytest.fixture
def notifier(store: InMemoryNotificationStore, prefs: InMemoryPreferencesStore) -> InAppNotifier:
    return InAppNotifier(store, prefs)


def only(store: InMemoryNotificationStore) -> inbox.Notification:
    page = store.page(CLIENT, NotificationQuery())
    assert len(page.items) == 1, page.items
    return page.items[0]


def test_a_finished_job_says_what_happened_and_links_to_the_job(
    notifier: InAppNotifier, store: InMemoryNotificationStore
) -> None:
    outcome = notifier.handle(job_done())
    assert outcome.startswith("notified")
    n = only(store)
    assert n.type is NotificationType.JOB_COMPLETED
    assert n.body == "Generation job finished: 998 of 1,000 images, 2 failed, 4 credits refunded."
    assert (n.link.kind, n.link.id, n.link.path) == (LinkKind.JOB, "job1", "/jobs/job1")
    assert (n.read, n.count, n.created_at, n.updated_at) == (False, 1, T0, T0)
    assert n.expires_at == T0 + timedelta(days=90)


def test_every_event_with_a_notification_type_maps(notifier: InAppNotifier, store: InMemoryNotificationStore) -> None:
    events = [
        job_done(),
        event(
            EventType.EDIT_JOB_COMPLETED,
            JobCompleted(job_id="e1", status="completed", items=3, succeeded=3, failed=0, charged=3, refunded=0),
            Subject(kind="edit_job", id="e1"),
        ),
        event(
            EventType.VIDEO_JOB_COMPLETED,
            JobCompleted(job_id="v1", status="completed", items=2, succeeded=1, failed=1, charged=15, refunded=15),
            Subject(kind="video_jobs", id="v1"),
        ),
        event(
            EventType.IMPORT_COMPLETED,
            ImportCompleted(
                import_id="i1",
                status="completed",
                total_rows=10,
                created_products=9,
                failed_rows=1,
                images_imported=20,
                images_failed=0,
            ),
            Subject(kind="import", id="i1"),
        ),
        low(12, T0),
        event(
            EventType.CREDITS_DEPLETED, CreditsThreshold(available=0, threshold=50), Subject(kind="ledger", id=CLIENT)
        ),
        event(
            EventType.SUBSCRIPTION_CHANGED,
            SubscriptionChanged(
                subscription_id="sub_1", plan="growth", interval="annual", status="active", previous_plan="starter"
            ),
            Subject(kind="subscription", id="sub_1"),
        ),
        event(
            EventType.PAYMENT_FAILED,
            PaymentFailed(invoice_id="in_1", amount_due=4900, currency="usd", attempt_count=2),
            Subject(kind="invoice", id="in_1"),
        ),
        event(
            EventType.STORE_NEEDS_REAUTHORIZATION,
            StoreChanged(store_id="s1", platform="shopify", reason="token revoked"),
            Subject(kind="store", id="s1"),
        ),
        event(
            EventType.STORE_CONNECTED,
            StoreChanged(store_id="s1", platform="shopify"),
            Subject(kind="store", id="s1"),
        ),
        event(
            EventType.STORE_DISCONNECTED,
            StoreChanged(store_id="s1", platform="woocommerce", reason="the app was uninstalled"),
            Subject(kind="store", id="s1"),
        ),
        event(
            EventType.SYNC_COMPLETED,
            SyncFinished(sync_id="y1", store_id="s1", pushed=5),
            Subject(kind="sync", id="y1"),
        ),
        event(
            EventType.SYNC_FAILED,
            SyncFinished(sync_id="y2", store_id="s1", reason="store unreachable"),
            Subject(kind="sync", id="y2"),
        ),
    ]
    assert {e.type for e in events} == set(CONTENT)
    for e in events:
        assert notifier.handle(e).startswith("notified")
    by_type = {n.type: n for n in store.page(CLIENT, NotificationQuery(limit=100)).items}
    assert len(by_type) == len(events) - 2  # three job kinds share JOB_COMPLETED
    videos = [n for n in store.page(CLIENT, NotificationQuery(limit=100)).items if n.link.kind is LinkKind.VIDEO_JOB]
    assert [(n.body, n.link.path) for n in videos] == [
        ("Video job finished: 1 of 2 videos, 1 failed, 15 credits refunded.", "/videos/jobs/v1")
    ]
    assert "9 products created from 10 rows, 1 failed" in by_type[NotificationType.IMPORT_COMPLETED].body
    assert by_type[NotificationType.IMPORT_COMPLETED].link.path == "/imports/i1"
    assert "credit pack" in by_type[NotificationType.CREDITS_LOW].body
    assert by_type[NotificationType.CREDITS_LOW].link.kind is LinkKind.BILLING
    assert "credit pack" in by_type[NotificationType.CREDITS_DEPLETED].body
    assert "Growth (annual), active (was Starter)" in by_type[NotificationType.SUBSCRIPTION_CHANGED].body
    assert "49.00 USD failed (attempt 2)" in by_type[NotificationType.PAYMENT_FAILED].body
    assert by_type[NotificationType.STORE_NEEDS_REAUTHORIZATION].link.path == "/stores/s1"
    assert "store unreachable" in by_type[NotificationType.SYNC_FAILED].body
    assert "Shopify store is connected" in by_type[NotificationType.STORE_CONNECTED].body
    disconnected = by_type[NotificationType.STORE_DISCONNECTED].body
    assert "WooCommerce store was disconnected" in disconnected and "Reason: the app was uninstalled." in disconnected


def test_an_event_without_a_notification_is_skipped(notifier: InAppNotifier, store: InMemoryNotificationStore) -> None:
    approved = event(
        EventType.ASSET_APPROVED, AssetApproval(asset_id="a1", approved=True), Subject(kind="asset", id="a1")
    )
    assert EventType.ASSET_APPROVED not in notifier.types
    assert notifier.handle(approved).startswith("skipped")
    assert store.docs == {}


def test_a_redelivered_event_changes_nothing(notifier: InAppNotifier, store: InMemoryNotificationStore) -> None:
    first = job_done()
    notifier.handle(first)
    before = only(store)
    assert notifier.handle(first).startswith("unchanged")
    assert only(store) == before
    assert store.writes == 1


def test_a_redelivery_after_the_client_read_it_keeps_it_read(
    notifier: InAppNotifier, store: InMemoryNotificationStore
) -> None:
    e = low(40, T0)
    notifier.handle(e)
    inbox.mark_all_read(store, CLIENT)
    notifier.handle(e)
    assert only(store).read is True


def test_low_balance_crossings_within_a_utc_day_collapse(
    notifier: InAppNotifier, store: InMemoryNotificationStore
) -> None:
    notifier.handle(low(40, T0))
    inbox.mark_all_read(store, CLIENT)
    notifier.handle(low(10, T0 + timedelta(hours=3)))
    notifier.handle(low(30, T0 + timedelta(hours=1)))  # late: counts, but the text stays the newest
    n = only(store)
    assert (n.count, n.read, n.created_at, n.updated_at) == (3, False, T0, T0 + timedelta(hours=3))
    assert "down to 10 credits" in n.body
    assert n.expires_at == n.updated_at + timedelta(days=90)
    assert len(n.event_ids) == 3
    notifier.handle(low(5, T0 + timedelta(days=1)))  # the next UTC day: a new notification
    assert len(store.page(CLIENT, NotificationQuery()).items) == 2


def test_payment_failures_collapse_per_invoice(notifier: InAppNotifier, store: InMemoryNotificationStore) -> None:
    def failed(invoice: str, attempt: int) -> DomainEvent:
        payload = PaymentFailed(invoice_id=invoice, amount_due=1200, currency="eur", attempt_count=attempt)
        subject = Subject(kind="invoice", id=invoice)
        return event(EventType.PAYMENT_FAILED, payload, subject, at=T0 + timedelta(days=attempt), which=attempt)

    for attempt in (1, 2, 3):
        notifier.handle(failed("in_a", attempt))
    notifier.handle(failed("in_b", 1))
    counts = sorted(n.count for n in store.page(CLIENT, NotificationQuery()).items)
    assert counts == [1, 3]


def test_preferences_gate_in_app(
    notifier: InAppNotifier, store: InMemoryNotificationStore, prefs: InMemoryPreferencesStore
) -> None:
    prefs.save(
        CLIENT,
        NotificationPreferences(channels={NotificationType.JOB_COMPLETED: ChannelPreference(in_app=False)}),
    )
    assert notifier.handle(job_done()) == "skipped: in-app job_completed off"
    assert store.docs == {}
    assert notifier.handle(low(1, T0)).startswith("notified")  # other types keep their defaults


def test_list_filters_and_paginates_newest_first(notifier: InAppNotifier, store: InMemoryNotificationStore) -> None:
    for i in range(5):
        notifier.handle(low(40 - i, T0 + timedelta(days=i)))
    notifier.handle(job_done())
    seen: list[str] = []
    cursor = None
    while True:
        page = inbox.list_notifications(store, CLIENT, NotificationQuery(limit=2, cursor=cursor))
        seen += [n.id for n in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 6
    stamps = [store.docs[(CLIENT, i)].updated_at for i in seen]
    assert stamps == sorted(stamps, reverse=True)
    only_jobs = inbox.list_notifications(store, CLIENT, NotificationQuery(type=NotificationType.JOB_COMPLETED))
    assert [n.type for n in only_jobs.items] == [NotificationType.JOB_COMPLETED]
    with pytest.raises(InvalidCursor):
        store.page(CLIENT, NotificationQuery(cursor="not-a-cursor"))


def test_mark_read_one_several_all(notifier: InAppNotifier, store: InMemoryNotificationStore) -> None:
    for i in range(3):
        notifier.handle(low(40 - i, T0 + timedelta(days=i)))
    ids = [n.id for n in store.page(CLIENT, NotificationQuery()).items]
    assert inbox.unread_count(store, CLIENT).unread == 3
    assert inbox.mark_one_read(store, CLIENT, ids[0]).read is True
    result = inbox.mark_several_read(store, CLIENT, MarkReadRequest(ids=[ids[0], ids[1], "ntf_nope"]))
    assert (result.marked, result.not_found) == (2, ["ntf_nope"])
    assert inbox.unread_count(store, CLIENT).unread == 1
    assert inbox.mark_all_read(store, CLIENT).marked == 1
    assert inbox.unread_count(store, CLIENT).unread == 0
    with pytest.raises(NotFound):
        inbox.mark_one_read(store, "client-b", ids[0])


def test_mark_read_requests_are_bounded() -> None:
    with pytest.raises(ValidationError):
        MarkReadRequest(ids=[])
    with pytest.raises(ValidationError):
        MarkReadRequest(ids=[f"n{i}" for i in range(101)])
    with pytest.raises(ValidationError):
        MarkReadRequest(ids=["a/b"])


def test_preferences_view_spells_out_every_type(prefs: InMemoryPreferencesStore) -> None:
    view = inbox.get_preferences(prefs, CLIENT)
    assert set(view.channels) == set(NotificationType)
    assert view.channels[NotificationType.PAYMENT_FAILED].email is True
    assert view.channels[NotificationType.JOB_COMPLETED] == ChannelPreference(in_app=True, email=False)
