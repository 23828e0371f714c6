"""Port: where store connections, their OAuth states and the webhooks already seen are kept."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from shared.catalog.ports import Versioned
from shared.events.model import DomainEvent
from shared.stores.models import OAuthStateDoc, ShopRedaction, StoreConnectionDoc
from shared.stores.ports import StorePlatform


class ShopTaken(Exception):
    """Another client holds an active connection to this shop."""

    def __init__(self, client_id: str) -> None:
        super().__init__("the shop is connected to another client")
        self.client_id = client_id


class StoreRepository(ABC):
    """Store connections (one per client), the shop → client index, OAuth states and seen webhooks."""

    @abstractmethod
    def load(self, client_id: str) -> Versioned[StoreConnectionDoc] | None:
        """The client's connection (any status) with its version, or None."""

    @abstractmethod
    def owner_of(self, platform: StorePlatform, shop: str) -> str | None:
        """The client whose connection holds this shop (any status), or None."""

    @abstractmethod
    def save(
        self,
        doc: StoreConnectionDoc,
        previous: Versioned[StoreConnectionDoc] | None,
        events: Sequence[DomainEvent] = (),
    ) -> None:
        """Write the whole connection and claim its shop in one commit with ``events``: over
        ``previous`` (StaleWrite when it changed since), or as the client's first (StaleWrite when one
        appeared). A shop another client's live connection holds raises :class:`ShopTaken`; the index
        entry of a shop the client held before (``previous.shop``) is released."""

    @abstractmethod
    def update(
        self, loaded: Versioned[StoreConnectionDoc], changes: dict[str, Any], events: Sequence[DomainEvent] = ()
    ) -> None:
        """Change fields of the connection if it is unchanged since ``loaded`` (StaleWrite otherwise)."""

    @abstractmethod
    def touch(self, client_id: str, changes: dict[str, Any]) -> None:
        """Change bookkeeping fields (last webhook, last import) whatever the version; a missing
        connection is left alone."""

    @abstractmethod
    def erase(self, client_id: str, platform: StorePlatform, shop: str, redaction: ShopRedaction) -> None:
        """Delete the connection (if it is this shop's) and the shop's index entry, and record the redaction."""

    @abstractmethod
    def connections(self, platform: StorePlatform | None = None) -> Iterator[StoreConnectionDoc]:
        """Every connection (scheduled jobs: reconciliation, token refresh)."""

    @abstractmethod
    def create_state(self, key: str, doc: OAuthStateDoc) -> None:
        """Keep a new state under ``key`` (the nonce's hash)."""

    @abstractmethod
    def consume_state(self, key: str, now: datetime) -> OAuthStateDoc | None:
        """Mark the state used and return it, atomically; None when it is unknown, used or expired."""

    @abstractmethod
    def first_delivery(self, platform: StorePlatform, webhook_id: str, now: datetime, keep_until: datetime) -> bool:
        """Record a webhook delivery id; False when it was recorded before (a redelivery)."""

    @abstractmethod
    def forget_delivery(self, platform: StorePlatform, webhook_id: str) -> None:
        """Drop a recorded delivery id (its work could not be queued: the store's redelivery must count)."""
