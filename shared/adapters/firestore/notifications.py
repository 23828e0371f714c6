"""Firestore adapters of the notification ports (:mod:`shared.notifications.inbox`,
:mod:`shared.notifications.preferences`).

Documents: ``clients/{client}/notifications/{id}`` and ``clients/{client}/settings/notifications``.
The ledger's and billing's older notices share the collection without ``type``/``updated_at``: the
list orders on ``updated_at`` and the counts filter on ``type``, so Firestore leaves them out, and a
read of one by id answers "no such notification".
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from shared.errors import UpstreamUnavailable
from shared.notifications.inbox import (
    Notification,
    NotificationDraft,
    NotificationQuery,
    NotificationStore,
    apply_draft,
)
from shared.notifications.preferences import NotificationPreferences, NotificationType, PreferencesStore
from shared.pagination import Page, cursor_datetime, cursor_str, decode_cursor, encode_cursor

if TYPE_CHECKING:
    from google.cloud.firestore import Client

logger = logging.getLogger("epox.notifications")

BATCH_WRITES = 400  # under Firestore's 500 writes per batch
_TYPES = [kind.value for kind in NotificationType]  # an "in" filter: at most 30 values


def _parse(data: dict[str, Any] | None) -> Notification | None:
    """The notification in a document, or None for a legacy notice (no ``type``) or a damaged one."""
    if not data or "type" not in data:
        return None
    try:
        return Notification.model_validate(data)
    except ValidationError:
        logger.warning("notification document %s does not parse; skipped", data.get("id"))
        return None


class FirestoreNotificationStore(NotificationStore):
    def __init__(self, db: Client) -> None:
        self.db = db

    def _collection(self, client_id: str) -> Any:
        return self.db.collection("clients").document(client_id).collection("notifications")

    def upsert(self, client_id: str, draft: NotificationDraft) -> Notification | None:
        from google.cloud import firestore

        ref = self._collection(client_id).document(draft.id)

        # A transaction: two events of one key delivered at once both count (the loser re-reads and retries).
        @firestore.transactional  # type: ignore[misc]
        def apply(transaction: Any) -> Notification | None:
            snapshot = ref.get(transaction=transaction)
            current = _parse(snapshot.to_dict()) if snapshot.exists else None
            after = apply_draft(current, draft)
            if after is not None:
                transaction.set(ref, after.model_dump(mode="python"))
            return after

        from google.api_core.exceptions import Aborted

        try:
            # A burst on one key contends on one document: more tries than the default five, then
            # the queue's retry (the consumer is idempotent, so a second delivery counts once).
            result: Notification | None = apply(self.db.transaction(max_attempts=20))
        except Aborted as exc:
            raise UpstreamUnavailable("The notification is busy; try again", retry_after=1) from exc
        return result

    def get(self, client_id: str, notification_id: str) -> Notification | None:
        snapshot = self._collection(client_id).document(notification_id).get()
        return _parse(snapshot.to_dict()) if snapshot.exists else None

    def page(self, client_id: str, query: NotificationQuery) -> Page[Notification]:
        from google.cloud.firestore import FieldFilter, Query

        q = self._collection(client_id)
        if query.type is not None:
            q = q.where(filter=FieldFilter("type", "==", query.type.value))
        if query.read is not None:
            q = q.where(filter=FieldFilter("read", "==", query.read))
        q = q.order_by("updated_at", direction=Query.DESCENDING).order_by("id", direction=Query.DESCENDING)
        if query.cursor:
            values = decode_cursor(query.cursor)
            q = q.start_after({"updated_at": cursor_datetime(values, "t"), "id": cursor_str(values, "id")})
        snapshots = list(q.limit(query.limit + 1).stream())
        more = len(snapshots) > query.limit
        snapshots = snapshots[: query.limit]
        items = [n for n in (_parse(s.to_dict()) for s in snapshots) if n is not None]
        cursor = None
        if more and snapshots:
            last = snapshots[-1].to_dict() or {}
            cursor = encode_cursor({"t": last["updated_at"].isoformat(), "id": last["id"]})
        return Page(items=items, next_cursor=cursor)

    def _unread(self, client_id: str) -> Any:
        from google.cloud.firestore import FieldFilter

        return (
            self._collection(client_id)
            .where(filter=FieldFilter("read", "==", False))
            .where(filter=FieldFilter("type", "in", _TYPES))
        )

    def unread_count(self, client_id: str) -> int:
        result = self._unread(client_id).count().get()
        return int(result[0][0].value)

    def mark_read(self, client_id: str, ids: list[str]) -> list[str]:
        found, _ = self._mark([self._collection(client_id).document(i) for i in dict.fromkeys(ids)])
        return found

    def mark_all_read(self, client_id: str) -> int:
        marked = 0
        while True:
            page = list(self._unread(client_id).limit(BATCH_WRITES).stream())
            _, changed = self._mark([snapshot.reference for snapshot in page])
            marked += changed
            # changed == 0: nothing left this call can mark (a damaged document stays; never loop on it).
            if len(page) < BATCH_WRITES or changed == 0:
                return marked

    def _mark(self, refs: list[Any]) -> tuple[list[str], int]:
        """Mark the notifications among ``refs`` read in one transaction (an event collapsing into one
        meanwhile makes the transaction retry, so a newer occurrence is never marked read unseen).
        Returns the ids that are notifications, and how many were unread."""
        from google.cloud import firestore

        @firestore.transactional  # type: ignore[misc]
        def apply(transaction: Any) -> tuple[list[str], int]:
            found: list[str] = []
            unread = []
            for snapshot in transaction.get_all(refs):
                notification = _parse(snapshot.to_dict()) if snapshot.exists else None
                if notification is None:
                    continue
                found.append(notification.id)
                if not notification.read:
                    unread.append(snapshot.reference)
            for ref in unread:
                transaction.update(ref, {"read": True})
            return found, len(unread)

        if not refs:
            return [], 0
        result: tuple[list[str], int] = apply(self.db.transaction())
        return result


class FirestorePreferencesStore(PreferencesStore):
    def __init__(self, db: Client) -> None:
        self.db = db

    def _ref(self, client_id: str) -> Any:
        return self.db.collection("clients").document(client_id).collection("settings").document("notifications")

    def get(self, client_id: str) -> NotificationPreferences:
        snapshot = self._ref(client_id).get()
        if not snapshot.exists:
            return NotificationPreferences()
        return NotificationPreferences.model_validate(snapshot.to_dict())

    def save(self, client_id: str, preferences: NotificationPreferences) -> None:
        self._ref(client_id).set(preferences.model_dump(mode="json"))
