"""Which notifications a client gets, and where: per type in-app and email, plus a master email switch.

The defaults are what a merchant expects: everything in-app; email only for what needs action
(credits depleted, a failed payment, a store that needs re-authorisation, a failed sync) and the
weekly summary.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

EmailAddress = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
]


class NotificationType(StrEnum):
    JOB_COMPLETED = "job_completed"  # generation and edit jobs
    IMPORT_COMPLETED = "import_completed"
    CREDITS_LOW = "credits_low"
    CREDITS_DEPLETED = "credits_depleted"
    SUBSCRIPTION_CHANGED = "subscription_changed"
    PAYMENT_FAILED = "payment_failed"
    STORE_NEEDS_REAUTHORIZATION = "store_needs_reauthorization"
    STORE_CONNECTED = "store_connected"
    STORE_DISCONNECTED = "store_disconnected"
    SYNC_COMPLETED = "sync_completed"
    SYNC_FAILED = "sync_failed"
    WEEKLY_SUMMARY = "weekly_summary"  # email only


class ChannelPreference(BaseModel):
    model_config = ConfigDict(extra="forbid")

    in_app: bool = True
    email: bool = False


_EMAIL_BY_DEFAULT = frozenset(
    {
        NotificationType.CREDITS_DEPLETED,
        NotificationType.PAYMENT_FAILED,
        NotificationType.STORE_NEEDS_REAUTHORIZATION,
        NotificationType.STORE_DISCONNECTED,
        NotificationType.SYNC_FAILED,
        NotificationType.WEEKLY_SUMMARY,
    }
)


def default_channels() -> dict[NotificationType, ChannelPreference]:
    return {
        kind: ChannelPreference(in_app=kind is not NotificationType.WEEKLY_SUMMARY, email=kind in _EMAIL_BY_DEFAULT)
        for kind in NotificationType
    }


class NotificationPreferences(BaseModel):
    """``clients/{client}/settings/notifications``."""

    model_config = ConfigDict(extra="forbid")

    email_enabled: bool = True  # the master switch
    email_to: EmailAddress | None = None  # the recipient; None: the client's contact address, if known
    channels: dict[NotificationType, ChannelPreference] = {}

    def channel(self, kind: NotificationType) -> ChannelPreference:
        """The client's choice for ``kind``, or the default."""
        return self.channels.get(kind) or default_channels()[kind]

    def wants_email(self, kind: NotificationType) -> bool:
        return self.email_enabled and self.channel(kind).email

    def wants_in_app(self, kind: NotificationType) -> bool:
        return self.channel(kind).in_app


class PreferencesStore(ABC):
    """Where preferences live (Firestore adapter: ``shared.adapters.firestore.notifications``)."""

    @abstractmethod
    def get(self, client_id: str) -> NotificationPreferences:
        """The stored preferences, or the defaults."""

    @abstractmethod
    def save(self, client_id: str, preferences: NotificationPreferences) -> None: ...
