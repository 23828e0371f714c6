"""In-memory fakes of the notification ports: real subclasses with the Firestore adapter's
semantics (the collapse rule applied atomically, newest first by ``updated_at`` then id, legacy
notices without ``type`` never listed, counted or marked)."""

from __future__ import annotations

import threading

from shared.notifications.inbox import (
    Notification,
    NotificationDraft,
    NotificationQuery,
    NotificationStore,
    apply_draft,
)
from shared.notifications.preferences import NotificationPreferences, PreferencesStore
from shared.pagination import Page, cursor_datetime, cursor_str, decode_cursor, encode_cursor


class InMemoryNotificationStore(NotificationStore):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.docs: dict[tuple[str, str], Notification] = {}
        self.writes = 0

    def upsert(self, client_id: str, draft: NotificationDraft) -> Notification | None:
        with self._lock:
            after = apply_draft(self.docs.get((client_id, draft.id)), draft)
            if after is not None:
                self.docs[(client_id, draft.id)] = after
                self.writes += 1
            return after.model_copy(deep=True) if after else None

    def get(self, client_id: str, notification_id: str) -> Notification | None:
        with self._lock:
            found = self.docs.get((client_id, notification_id))
            return found.model_copy(deep=True) if found else None

    def page(self, client_id: str, query: NotificationQuery) -> Page[Notification]:
        with self._lock:
            mine = [n.model_copy(deep=True) for (owner, _), n in self.docs.items() if owner == client_id]
        mine = [
            n
            for n in mine
            if (query.type is None or n.type is query.type) and (query.read is None or n.read is query.read)
        ]
        mine.sort(key=lambda n: (n.updated_at, n.id), reverse=True)
        if query.cursor:
            values = decode_cursor(query.cursor)
            after = (cursor_datetime(values, "t"), cursor_str(values, "id"))
            mine = [n for n in mine if (n.updated_at, n.id) < after]
        items = mine[: query.limit]
        cursor = None
        if len(mine) > query.limit:
            cursor = encode_cursor({"t": items[-1].updated_at.isoformat(), "id": items[-1].id})
        return Page(items=items, next_cursor=cursor)

    def unread_count(self, client_id: str) -> int:
        with self._lock:
            return sum(1 for (owner, _), n in self.docs.items() if owner == client_id and not n.read)

    def mark_read(self, client_id: str, ids: list[str]) -> list[str]:
        with self._lock:
            found = []
            for notification_id in dict.fromkeys(ids):
                current = self.docs.get((client_id, notification_id))
                if current is None:
                    continue
                found.append(notification_id)
                self.docs[(client_id, notification_id)] = current.model_copy(update={"read": True})
            return found

    def mark_all_read(self, client_id: str) -> int:
        with self._lock:
            unread = [key for key, n in self.docs.items() if key[0] == client_id and not n.read]
            for key in unread:
                self.docs[key] = self.docs[key].model_copy(update={"read": True})
            return len(unread)


class InMemoryPreferencesStore(PreferencesStore):
    def __init__(self) -> None:
        self.saved: dict[str, NotificationPreferences] = {}

    def get(self, client_id: str) -> NotificationPreferences:
        found = self.saved.get(client_id)
        return found.model_copy(deep=True) if found else NotificationPreferences()

    def save(self, client_id: str, preferences: NotificationPreferences) -> None:
        self.saved[client_id] = preferences.model_copy(deep=True)
