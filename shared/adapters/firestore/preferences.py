"""Firestore adapter of the notification preferences port: ``clients/{client}/settings/notifications``.

Provisional: the in-app notifications work brings the adapter its API uses
(``shared.adapters.firestore.notifications``); this one stores the same document the same way, and
goes when that one lands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.notifications.preferences import NotificationPreferences, PreferencesStore

if TYPE_CHECKING:
    from google.cloud.firestore import Client


class FirestorePreferencesStore(PreferencesStore):
    def __init__(self, db: Client) -> None:
        self.db = db

    def _doc(self, client_id: str) -> Any:
        return self.db.collection("clients").document(client_id).collection("settings").document("notifications")

    def get(self, client_id: str) -> NotificationPreferences:
        snapshot = self._doc(client_id).get()
        if not snapshot.exists:
            return NotificationPreferences()
        return NotificationPreferences.model_validate(snapshot.to_dict() or {})

    def save(self, client_id: str, preferences: NotificationPreferences) -> None:
        self._doc(client_id).set(preferences.model_dump(mode="json"))
