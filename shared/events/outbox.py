"""The outbox's ports: where events wait for the relay, and what the relay records about them.

Producers never call these to write an event: their own adapter writes it in the commit of the change
(``shared.adapters.firestore.outbox.write_events``) and then hands it to an :class:`EventKicker`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from shared.events.model import DomainEvent, Subject


class ParkedDelivery(BaseModel):
    """``event_parking/{event id}.{consumer}``: a delivery the queue gave up on, for an operator."""

    model_config = ConfigDict(extra="forbid")

    id: str
    event_id: str
    consumer: str
    client_id: str
    event_type: str
    reason: str
    attempts: int
    parked_at: datetime
    replayed_at: datetime | None = None


class Outbox(ABC):
    """The relay's view of the outbox."""

    @abstractmethod
    def get(self, event_id: str) -> DomainEvent | None: ...

    @abstractmethod
    def due(self, before: datetime, limit: int) -> list[str]:
        """Ids of events written before ``before`` that no relay has handled yet, oldest first."""

    @abstractmethod
    def mark_relayed(self, event_id: str, at: datetime) -> None:
        """The event's consumer deliveries are queued: the sweep leaves it alone from now on."""

    @abstractmethod
    def position(self, consumer: str, client_id: str, subject: Subject) -> int | None:
        """The largest ``sequence`` an ordered consumer applied for ``subject`` (None: none yet)."""

    @abstractmethod
    def advance(self, consumer: str, client_id: str, subject: Subject, sequence: int) -> None:
        """Record that an ordered consumer applied ``sequence`` (never moves backwards)."""

    @abstractmethod
    def park(self, parked: ParkedDelivery) -> None: ...

    @abstractmethod
    def parked(self, after: str | None, limit: int) -> list[ParkedDelivery]:
        """Parked deliveries in id order, after the cursor ``after``."""

    @abstractmethod
    def get_parked(self, parked_id: str) -> ParkedDelivery | None: ...

    @abstractmethod
    def mark_replayed(self, parked_id: str, at: datetime) -> None: ...


class EventKicker(ABC):
    """Starts the relay of events just committed (a named Cloud Task per event). Best effort by design:
    an event whose kick is lost is found by the sweep, so a kick never fails the producer."""

    @abstractmethod
    def kick(self, events: list[DomainEvent]) -> None: ...


class NoKick(EventKicker):
    """For producers outside a platform (scripts, unit tests): the sweep relays their events."""

    def kick(self, events: list[DomainEvent]) -> None:
        return None
