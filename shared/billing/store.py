"""Where billing state lives: the ports — :class:`BillingReader` (what a guard needs), :class:`BillingStore`
(the Stripe webhook and the daily billing job) and :class:`BillingAccounts` (the billing API: the Stripe
customer link and onboarding). The Firestore adapter is ``shared.adapters.firestore.billing``; in-memory
fakes with the same semantics are in ``tests/fakes.py`` and ``tests/fakes_billing.py``.

Documents: ``clients/{client}`` (``billing`` and the ``plan`` mirror older readers use),
``stripe_events/{event}`` (one marker per applied event), ``stripe_customers/{customer}`` (customer →
client), ``stripe_payments/{payment intent}`` (→ the pack purchase), ``clients/{client}/purchases/
{session}`` and ``clients/{client}/notifications/{id}``.

An event's effect is one atomic commit (:meth:`BillingStore.commit`): the event marker (``create``,
so a concurrent delivery of the same event loses), the change to the client's billing guarded by the
version it was decided on (a concurrent change to that client makes it :class:`BillingChanged`, and
the event is decided again on fresh state), and the documents that go with it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.billing.models import BillingNotice, BillingState
from shared.events.model import DomainEvent


class BillingChanged(Exception):
    """The client's billing changed between the read and the commit: decide again on fresh state."""


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


DELETE: Any = _Delete()  # a change that removes the field


@dataclass
class BillingSnapshot:
    state: BillingState
    version: Any  # opaque: Firestore's update_time, a counter in memory; None when there is no record
    # Beside ``billing`` on the client's record: how many Stripe customer creations failed (each retry
    # needs a new idempotency key), whether the client was onboarded, whether it has a ``billing`` map.
    customer_key_attempt: int = 0
    onboarded: bool = False
    has_billing: bool = False


@dataclass(frozen=True)
class PackPurchase:
    client_id: str
    session_id: str
    credits: int
    bucket_id: str


@dataclass
class EventWrite:
    """Everything one Stripe event changes, committed at once."""

    event_id: str
    event_type: str
    event_created: int
    livemode: bool
    outcome: str
    processed_at: datetime
    client_id: str | None = None
    changes: dict[str, Any] = field(default_factory=dict)  # BillingState fields (DELETE removes one)
    version: Any = None  # the billing version ``changes`` were decided on
    customer_link: str | None = None  # Stripe customer id → ``client_id``
    purchase: dict[str, Any] | None = None  # a pack purchase (merged into purchases/{session_id})
    payment_link: tuple[str, str] | None = None  # (payment intent, session id) of a pack purchase
    refund: tuple[str, int, int] | None = None  # (session id, amount refunded, credits revoked): kept at the max
    notices: list[tuple[str, BillingNotice]] = field(default_factory=list)  # (document id, notice)
    events: list[DomainEvent] = field(default_factory=list)  # domain events, committed with the change


class BillingReader(ABC):
    """Port: the client's billing as read (all the good-standing guard needs)."""

    @abstractmethod
    def read(self, client_id: str) -> BillingSnapshot:
        """The client's billing and the version a later write is guarded by."""


class BillingStore(BillingReader):
    """Port: billing state for the webhook processor and the daily job."""

    # -- the webhook --------------------------------------------------------------------------------
    @abstractmethod
    def event_recorded(self, event_id: str) -> bool:
        """Whether the event was applied before (its marker exists)."""

    @abstractmethod
    def client_of_customer(self, customer_id: str) -> str | None: ...

    @abstractmethod
    def pack_purchase(self, payment_intent: str) -> PackPurchase | None:
        """The pack a payment intent bought, if it bought one."""

    @abstractmethod
    def commit(self, write: EventWrite) -> bool:
        """Record the event with its effect, atomically. False: the event was recorded concurrently
        (nothing written). Raises :class:`BillingChanged` when the client's billing changed since
        ``write.version``."""

    # -- the daily job ------------------------------------------------------------------------------
    @abstractmethod
    def due_plan_changes(self, now: datetime) -> list[tuple[str, Any]]:
        """(client id, raw billing) of every client whose pending plan change is due by ``now``."""

    @abstractmethod
    def annual_clients(self) -> list[tuple[str, Any]]:
        """(client id, raw billing) of every client on an annual plan."""

    @abstractmethod
    def free_clients(self) -> list[str]: ...

    @abstractmethod
    def update_billing(self, client_id: str, changes: dict[str, Any], version: Any) -> None:
        """Change the client's billing if it is still at ``version``; else :class:`BillingChanged`."""


def nested(changes: dict[str, Any]) -> dict[str, Any]:
    """Billing fields live under ``billing``; ``plan`` is mirrored at the top for older readers."""
    data: dict[str, Any] = {"billing": dict(changes)}
    if "plan" in changes:
        data["plan"] = changes["plan"]
    return data


class BillingAccounts(BillingReader):
    """Port: what the billing API writes outside Stripe events — the client's one Stripe customer and
    its onboarding (the Free plan for a client with no billing yet)."""

    @abstractmethod
    def note_customer_attempt(self, client_id: str, attempt: int) -> None:
        """Remember the idempotency-key attempt the next customer creation uses (no precondition)."""

    @abstractmethod
    def link_customer(self, client_id: str, customer_id: str, version: Any) -> None:
        """Store the client's Stripe customer and the customer → client index in one write, if the
        client's record is still at ``version`` (None: it did not exist, and the write merges);
        else :class:`BillingChanged`."""

    @abstractmethod
    def record_onboarding(self, client_id: str, now: datetime, billing: dict[str, Any] | None) -> None:
        """Mark the client onboarded at ``now`` and, if given, set its ``billing`` (merged)."""
