"""What reacts to events: an :class:`EventConsumer` subscribes to some types and applies each event
idempotently, so a redelivered event changes nothing the second time."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from shared.events.model import DomainEvent, EventType


class EventConsumer(ABC):
    """One reaction to events (in-app notifications, email, store sync…).

    ``handle`` must be idempotent: write under ids derived from the event, or check a marker in the
    same commit. It raises to have the delivery retried (the queue's backoff); after the queue's
    last attempt the delivery is parked with the reason, for an operator to replay.
    """

    name: ClassVar[str]  # stable: it names delivery records and tasks
    types: ClassVar[frozenset[EventType]]
    # True: the relay skips an event older (by ``sequence``) than the last this consumer applied for
    # the same subject, so an approval never overtakes a later unapproval.
    ordered: ClassVar[bool] = False

    @abstractmethod
    def handle(self, event: DomainEvent) -> str:
        """Apply ``event``; return a short outcome for the logs (``notified``, ``skipped: …``)."""
