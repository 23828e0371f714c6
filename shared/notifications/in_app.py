"""The in-app notifier: the consumer that turns domain events into notifications.

Each event maps to a notification type, a text and a link, and a collapse key that decides which
events share one notification: one per job, import, invoice or sync; credits low/depleted, a plan
change and a store's trouble at most one per UTC day. The client's preferences gate it (in-app off:
skipped). Applying an event twice changes nothing (:func:`shared.notifications.inbox.apply_draft`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC
from typing import ClassVar

from pydantic import BaseModel

from shared.events.consumer import EventConsumer
from shared.events.model import (
    CreditsThreshold,
    DomainEvent,
    EventType,
    ImportCompleted,
    JobCompleted,
    PaymentFailed,
    StoreChanged,
    SubscriptionChanged,
    SyncFinished,
)
from shared.notifications.email_templates import platform_name
from shared.notifications.inbox import (
    LinkKind,
    NotificationDraft,
    NotificationLink,
    NotificationStore,
    notification_id,
)
from shared.notifications.preferences import NotificationType, PreferencesStore

BILLING_LINK = NotificationLink(kind=LinkKind.BILLING, path="/billing")
GET_MORE_CREDITS = "Buy a credit pack or move to a larger plan on the billing page."


class Content(BaseModel):
    """What one event says: its notification type, text, link and collapse key."""

    type: NotificationType
    collapse_key: str
    title: str
    body: str
    link: NotificationLink


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def _day(event: DomainEvent) -> str:
    at = event.occurred_at
    return (at.astimezone(UTC) if at.tzinfo else at).date().isoformat()


def _job(event: DomainEvent, p: JobCompleted, *, noun: str, unit: str, link: NotificationLink) -> Content:
    if p.status == "cancelled":
        title = f"{noun} cancelled"
    elif p.status == "failed":
        title = f"{noun} failed"
    else:
        title = f"{noun} finished"
    parts = [f"{p.succeeded:,} of {_plural(p.items, unit)}"]
    if p.failed:
        parts.append(f"{p.failed:,} failed")
    if p.cancelled:
        parts.append(f"{p.cancelled:,} cancelled")
    if p.refunded:
        parts.append(f"{_plural(p.refunded, 'credit')} refunded")
    return Content(
        type=NotificationType.JOB_COMPLETED,
        collapse_key=f"{link.kind}:{p.job_id}",
        title=title,
        body=f"{title}: " + ", ".join(parts) + ".",
        link=link,
    )


def _generation(event: DomainEvent) -> Content:
    p = JobCompleted.model_validate(event.payload)
    link = NotificationLink(kind=LinkKind.JOB, id=p.job_id, path=f"/jobs/{p.job_id}")
    return _job(event, p, noun="Generation job", unit="image", link=link)


def _edit(event: DomainEvent) -> Content:
    p = JobCompleted.model_validate(event.payload)
    link = NotificationLink(kind=LinkKind.EDIT_JOB, id=p.job_id, path=f"/edits/{p.job_id}")
    return _job(event, p, noun="Edit job", unit="asset", link=link)


def _video(event: DomainEvent) -> Content:
    p = JobCompleted.model_validate(event.payload)
    link = NotificationLink(kind=LinkKind.VIDEO_JOB, id=p.job_id, path=f"/videos/jobs/{p.job_id}")
    return _job(event, p, noun="Video job", unit="video", link=link)


def _import(event: DomainEvent) -> Content:
    p = ImportCompleted.model_validate(event.payload)
    what = "Store import" if p.source == "store" else "CSV import"
    title = f"{what} failed" if p.status == "failed" else f"{what} finished"
    unit = "store product" if p.source == "store" else "row"
    body = f"{title}: {_plural(p.created_products, 'product')} created from {_plural(p.total_rows, unit)}"
    if p.failed_rows:
        body += f", {p.failed_rows:,} failed"
    body += f"; {_plural(p.images_imported, 'image')} imported"
    if p.images_failed:
        body += f", {p.images_failed:,} failed"
    return Content(
        type=NotificationType.IMPORT_COMPLETED,
        collapse_key=f"import:{p.import_id}",
        title=title,
        body=body + ".",
        link=NotificationLink(kind=LinkKind.IMPORT, id=p.import_id, path=f"/imports/{p.import_id}"),
    )


def _credits_low(event: DomainEvent) -> Content:
    p = CreditsThreshold.model_validate(event.payload)
    return Content(
        type=NotificationType.CREDITS_LOW,
        collapse_key=f"credits_low:{_day(event)}",
        title="Credits running low",
        body=f"Your balance is down to {_plural(p.available, 'credit')} (below {p.threshold:,}). {GET_MORE_CREDITS}",
        link=BILLING_LINK,
    )


def _credits_depleted(event: DomainEvent) -> Content:
    return Content(
        type=NotificationType.CREDITS_DEPLETED,
        collapse_key=f"credits_depleted:{_day(event)}",
        title="No credits left",
        body=f"You have no credits left: new generation and edit jobs wait for credits. {GET_MORE_CREDITS}",
        link=BILLING_LINK,
    )


def _subscription(event: DomainEvent) -> Content:
    p = SubscriptionChanged.model_validate(event.payload)
    plan = p.plan.capitalize() + (f" ({p.interval})" if p.interval else "")
    body = f"Your plan is now {plan}, {p.status.replace('_', ' ')}"
    if p.previous_plan and p.previous_plan != p.plan:
        body += f" (was {p.previous_plan.capitalize()})"
    return Content(
        type=NotificationType.SUBSCRIPTION_CHANGED,
        collapse_key=f"subscription:{p.subscription_id or '-'}:{_day(event)}",
        title="Subscription changed",
        body=body + ".",
        link=BILLING_LINK,
    )


_ZERO_DECIMAL = frozenset({"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv"})


def _money(amount: int, currency: str) -> str:
    if currency.lower() in _ZERO_DECIMAL:
        return f"{amount:,} {currency.upper()}"
    return f"{amount / 100:,.2f} {currency.upper()}"


def _payment_failed(event: DomainEvent) -> Content:
    p = PaymentFailed.model_validate(event.payload)
    body = f"A payment of {_money(p.amount_due, p.currency)} failed (attempt {p.attempt_count})."
    if p.next_attempt_at:
        body += f" We will try again on {p.next_attempt_at.date().isoformat()}."
    body += " Update your payment method on the billing page."
    return Content(
        type=NotificationType.PAYMENT_FAILED,
        collapse_key=f"payment_failed:{p.invoice_id}",
        title="Payment failed",
        body=body,
        link=NotificationLink(kind=LinkKind.BILLING, id=p.invoice_id, path="/billing"),
    )


def _store_link(store_id: str) -> NotificationLink:
    return NotificationLink(kind=LinkKind.STORE, id=store_id, path=f"/stores/{store_id}")


def _reauthorize(event: DomainEvent) -> Content:
    p = StoreChanged.model_validate(event.payload)
    body = f"Your {platform_name(p.platform)} store needs to be connected again before Epox can sync to it."
    if p.reason:
        body += f" Reason: {p.reason.rstrip('.')}."
    return Content(
        type=NotificationType.STORE_NEEDS_REAUTHORIZATION,
        collapse_key=f"store_reauth:{p.store_id}:{_day(event)}",
        title="Store needs re-authorisation",
        body=body,
        link=_store_link(p.store_id),
    )


def _store_connected(event: DomainEvent) -> Content:
    p = StoreChanged.model_validate(event.payload)
    return Content(
        type=NotificationType.STORE_CONNECTED,
        collapse_key=f"store_connected:{p.store_id}",
        title="Store connected",
        body=f"Your {platform_name(p.platform)} store is connected: import its catalog from the store page.",
        link=_store_link(p.store_id),
    )


def _store_disconnected(event: DomainEvent) -> Content:
    p = StoreChanged.model_validate(event.payload)
    body = f"Your {platform_name(p.platform)} store was disconnected; your products and images stay in Epox."
    if p.reason:
        body += f" Reason: {p.reason.rstrip('.')}."
    return Content(
        type=NotificationType.STORE_DISCONNECTED,
        collapse_key=f"store_disconnected:{p.store_id}",
        title="Store disconnected",
        body=body,
        link=_store_link(p.store_id),
    )


def _sync_completed(event: DomainEvent) -> Content:
    p = SyncFinished.model_validate(event.payload)
    body = f"Sync finished: {_plural(p.pushed, 'image')} pushed to your store"
    if p.failed:
        body += f", {p.failed:,} failed"
    return Content(
        type=NotificationType.SYNC_COMPLETED,
        collapse_key=f"sync:{p.sync_id}",
        title="Sync finished",
        body=body + ".",
        link=_store_link(p.store_id),
    )


def _sync_failed(event: DomainEvent) -> Content:
    p = SyncFinished.model_validate(event.payload)
    body = "A sync to your store failed"
    body += f": {p.reason}." if p.reason else "."
    if p.pushed or p.failed:
        body += f" {_plural(p.pushed, 'image')} pushed, {p.failed:,} failed."
    return Content(
        type=NotificationType.SYNC_FAILED,
        collapse_key=f"sync_failed:{p.store_id}:{_day(event)}",
        title="Sync failed",
        body=body,
        link=_store_link(p.store_id),
    )


CONTENT: dict[EventType, Callable[[DomainEvent], Content]] = {
    EventType.GENERATION_JOB_COMPLETED: _generation,
    EventType.EDIT_JOB_COMPLETED: _edit,
    EventType.VIDEO_JOB_COMPLETED: _video,
    EventType.IMPORT_COMPLETED: _import,
    EventType.CREDITS_LOW: _credits_low,
    EventType.CREDITS_DEPLETED: _credits_depleted,
    EventType.SUBSCRIPTION_CHANGED: _subscription,
    EventType.PAYMENT_FAILED: _payment_failed,
    EventType.STORE_NEEDS_REAUTHORIZATION: _reauthorize,
    EventType.STORE_CONNECTED: _store_connected,
    EventType.STORE_DISCONNECTED: _store_disconnected,
    EventType.SYNC_COMPLETED: _sync_completed,
    EventType.SYNC_FAILED: _sync_failed,
}


def content(event: DomainEvent) -> Content:
    """What ``event`` says in the app (its type must be one of :data:`CONTENT`'s)."""
    return CONTENT[event.type](event)


class InAppNotifier(EventConsumer):
    """Events to in-app notifications, collapsed per key, gated by the client's preferences."""

    name: ClassVar[str] = "in_app"
    types: ClassVar[frozenset[EventType]] = frozenset(CONTENT)

    def __init__(self, notifications: NotificationStore, preferences: PreferencesStore) -> None:
        self.notifications = notifications
        self.preferences = preferences

    def handle(self, event: DomainEvent) -> str:
        if event.type not in CONTENT:
            return f"skipped: {event.type.value} makes no notification"
        said = content(event)
        if not self.preferences.get(event.client_id).wants_in_app(said.type):
            return f"skipped: in-app {said.type.value} off"
        draft = NotificationDraft(
            id=notification_id(event.client_id, said.collapse_key),
            type=said.type,
            title=said.title,
            body=said.body,
            link=said.link,
            event_id=event.id,
            at=event.occurred_at,
        )
        stored = self.notifications.upsert(event.client_id, draft)
        if stored is None:
            return f"unchanged: {event.id} applied already to {draft.id}"
        return f"notified: {draft.id} (count {stored.count})"
