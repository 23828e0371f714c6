"""In-app notifications: the stored document, the store port, the collapse rule and the use cases
behind the notification routes.

A notification is ``clients/{client}/notifications/{id}``. Its id derives from the client and a
collapse key the notifier chooses (one job; credits low on one UTC day; one invoice…), so a burst of
events lands on one document: ``count`` grows, ``updated_at``/``title``/``body``/``link`` follow the
newest event and it becomes unread again. ``event_ids`` keeps the last few events applied, so a
redelivered event changes nothing. ``expires_at`` (``updated_at`` + 90 days) drives a Firestore TTL
policy.

The ledger and billing once wrote notices into the same collection without ``type``: they are not
notifications of this model, so the store never lists, counts or marks them (its queries filter or
order on fields those documents lack).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from shared.errors import NotFound
from shared.notifications.preferences import (
    ChannelPreference,
    NotificationPreferences,
    NotificationType,
    PreferencesStore,
    default_channels,
)
from shared.pagination import Page, PageQuery

RETENTION = timedelta(days=90)
KEPT_EVENT_IDS = 20  # enough for any realistic burst on one key; an older redelivery than that counts again
MAX_MARK_READ = 100

# The characters the router lets through a path id: a body's ids obey the same rule (a "/" would name
# another document, and "." / ".." are ids Firestore refuses).
NotificationId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.~-]{0,199}$")]


class LinkKind(StrEnum):
    JOB = "job"
    EDIT_JOB = "edit_job"
    VIDEO_JOB = "video_job"
    IMPORT = "import"
    ASSET = "asset"
    BILLING = "billing"
    STORE = "store"


class NotificationLink(BaseModel):
    """What the notification is about, and where the app shows it."""

    model_config = ConfigDict(extra="forbid")

    kind: LinkKind
    id: str | None = None  # None: a page rather than an object (billing)
    path: str  # an app path, e.g. "/jobs/{id}"


class Notification(BaseModel):
    """``clients/{client}/notifications/{id}``."""

    model_config = ConfigDict(extra="forbid")

    id: str
    type: NotificationType
    title: str
    body: str  # plain text: what happened
    link: NotificationLink
    read: bool = False
    count: int = Field(default=1, ge=1)  # occurrences collapsed into this notification
    event_ids: list[str] = Field(default_factory=list)  # the last KEPT_EVENT_IDS applied, oldest first
    created_at: datetime
    updated_at: datetime
    expires_at: datetime  # updated_at + RETENTION: a Firestore TTL policy deletes it then


class NotificationOut(BaseModel):
    """A notification as the API shows it."""

    id: str
    type: NotificationType
    title: str
    body: str
    link: NotificationLink
    read: bool
    count: int
    created_at: datetime
    updated_at: datetime
    expires_at: datetime

    @classmethod
    def of(cls, notification: Notification) -> NotificationOut:
        return cls.model_validate(notification.model_dump(exclude={"event_ids"}))


class NotificationDraft(BaseModel):
    """What one event contributes to the notification under its collapse key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    type: NotificationType
    title: str
    body: str
    link: NotificationLink
    event_id: str
    at: datetime  # when it happened


def notification_id(client_id: str, collapse_key: str) -> str:
    """The one document a collapse key's events share."""
    return "ntf_" + hashlib.sha256(f"{client_id}\n{collapse_key}".encode()).hexdigest()[:32]


def apply_draft(current: Notification | None, draft: NotificationDraft) -> Notification | None:
    """The notification after ``draft``, or None when its event was applied already (nothing changes).

    The newest event (by when it happened) sets the text and the link; a late, older one only counts.
    Either way the notification is unread again: something new happened since it was read.
    """
    if current is None:
        return Notification(
            id=draft.id,
            type=draft.type,
            title=draft.title,
            body=draft.body,
            link=draft.link,
            event_ids=[draft.event_id],
            created_at=draft.at,
            updated_at=draft.at,
            expires_at=draft.at + RETENTION,
        )
    if draft.event_id in current.event_ids:
        return None
    newest = draft.at >= current.updated_at
    updated_at = max(current.updated_at, draft.at)
    return current.model_copy(
        update={
            "title": draft.title if newest else current.title,
            "body": draft.body if newest else current.body,
            "link": draft.link if newest else current.link,
            "read": False,
            "count": current.count + 1,
            "event_ids": [*current.event_ids, draft.event_id][-KEPT_EVENT_IDS:],
            "created_at": min(current.created_at, draft.at),
            "updated_at": updated_at,
            "expires_at": updated_at + RETENTION,
        }
    )


class NotificationQuery(PageQuery):
    """``GET /notifications``: newest first (``updated_at``), optionally one type or one read state."""

    type: NotificationType | None = None
    read: bool | None = None


class NotificationStore(ABC):
    """Where notifications live (Firestore adapter: ``shared.adapters.firestore.notifications``).

    Documents without ``type`` (the ledger's and billing's older notices) are not notifications: no
    method returns, counts or changes them.
    """

    @abstractmethod
    def upsert(self, client_id: str, draft: NotificationDraft) -> Notification | None:
        """Apply ``draft`` with :func:`apply_draft` atomically (a transaction): the stored result, or
        None when its event was applied already."""

    @abstractmethod
    def get(self, client_id: str, notification_id: str) -> Notification | None: ...

    @abstractmethod
    def page(self, client_id: str, query: NotificationQuery) -> Page[Notification]:
        """Newest first by ``updated_at`` (then id), filtered; the cursor is opaque (400 ``invalid_cursor``)."""

    @abstractmethod
    def unread_count(self, client_id: str) -> int: ...

    @abstractmethod
    def mark_read(self, client_id: str, ids: list[str]) -> list[str]:
        """Mark the named notifications read; returns the ids that exist (read already or not)."""

    @abstractmethod
    def mark_all_read(self, client_id: str) -> int:
        """Mark every unread notification read; returns how many changed."""


# -- use cases of the routes -------------------------------------------------------------------------


class UnreadCount(BaseModel):
    unread: int


class MarkReadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[NotificationId] = Field(min_length=1, max_length=MAX_MARK_READ)


class MarkReadResult(BaseModel):
    marked: int  # notifications now read (including ones read already)
    not_found: list[str] = []  # ids this client has no notification under


class MarkAllReadResult(BaseModel):
    marked: int  # notifications that were unread


def list_notifications(store: NotificationStore, client_id: str, query: NotificationQuery) -> Page[NotificationOut]:
    found = store.page(client_id, query)
    return Page[NotificationOut](items=[NotificationOut.of(n) for n in found.items], next_cursor=found.next_cursor)


def unread_count(store: NotificationStore, client_id: str) -> UnreadCount:
    return UnreadCount(unread=store.unread_count(client_id))


def mark_one_read(store: NotificationStore, client_id: str, notification_id: str) -> NotificationOut:
    """404 when the client has no such notification (another client's id included: ids live under the client)."""
    if not store.mark_read(client_id, [notification_id]):
        raise NotFound(f"No notification {notification_id}")
    found = store.get(client_id, notification_id)
    if found is None:  # expired between the two calls
        raise NotFound(f"No notification {notification_id}")
    return NotificationOut.of(found)


def mark_several_read(store: NotificationStore, client_id: str, request: MarkReadRequest) -> MarkReadResult:
    ids = list(dict.fromkeys(request.ids))
    marked = set(store.mark_read(client_id, ids))
    return MarkReadResult(marked=len(marked), not_found=[i for i in ids if i not in marked])


def mark_all_read(store: NotificationStore, client_id: str) -> MarkAllReadResult:
    return MarkAllReadResult(marked=store.mark_all_read(client_id))


class PreferencesView(BaseModel):
    """The client's preferences with every type spelled out (its choice or the default)."""

    email_enabled: bool
    email_to: str | None
    channels: dict[NotificationType, ChannelPreference]


def preferences_view(preferences: NotificationPreferences) -> PreferencesView:
    return PreferencesView(
        email_enabled=preferences.email_enabled,
        email_to=preferences.email_to,
        channels={kind: preferences.channel(kind) for kind in default_channels()},
    )


def get_preferences(store: PreferencesStore, client_id: str) -> PreferencesView:
    return preferences_view(store.get(client_id))


def save_preferences(store: PreferencesStore, client_id: str, preferences: NotificationPreferences) -> PreferencesView:
    """Replace the client's preferences (types left out take their defaults)."""
    store.save(client_id, preferences)
    return preferences_view(preferences)
