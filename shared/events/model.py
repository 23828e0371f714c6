"""The catalog of domain events and their payloads.

An event is written by the adapter that commits the change it describes, in the same atomic commit
(``outbox/{event id}``), never "commit, then publish". Its id is derived from what happened (client,
type, subject and a discriminator), so a producer that retries its commit writes the same event
again, not a second one. ``sequence`` orders the events of one subject (a consumer that cares skips
one older than the last it applied).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class EventType(StrEnum):
    """Every event a consumer can subscribe to. Payload models: :data:`PAYLOADS`."""

    GENERATION_JOB_COMPLETED = "generation.job_completed"
    EDIT_JOB_COMPLETED = "edit.job_completed"
    VIDEO_JOB_COMPLETED = "video.job_completed"
    IMPORT_COMPLETED = "catalog.import_completed"
    ASSET_APPROVED = "catalog.asset_approved"
    ASSET_UNAPPROVED = "catalog.asset_unapproved"
    CREDITS_LOW = "credits.low"
    CREDITS_DEPLETED = "credits.depleted"
    SUBSCRIPTION_CHANGED = "billing.subscription_changed"
    PAYMENT_FAILED = "billing.payment_failed"
    # Emitted by the store connection and sync-back work (issues #12 and #13); named here so consumers
    # and preferences know them from the start.
    STORE_CONNECTED = "store.connected"
    STORE_DISCONNECTED = "store.disconnected"
    STORE_NEEDS_REAUTHORIZATION = "store.needs_reauthorization"
    SYNC_COMPLETED = "sync.completed"
    SYNC_FAILED = "sync.failed"


class Subject(BaseModel):
    """What an event is about: ``kind`` (job, edit_job, import, asset, ledger, subscription, invoice,
    store, sync) and its id."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    id: str


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobCompleted(_Payload):
    """A generation or edit job finished: its items by outcome and what was charged and refunded."""

    job_id: str
    status: str  # completed | partially_completed | failed | cancelled
    items: int
    succeeded: int
    failed: int
    cancelled: int = 0
    charged: int = Field(ge=0)  # credits captured
    refunded: int = Field(ge=0)  # credits released back
    images: int = 0  # images produced


class ImportCompleted(_Payload):
    import_id: str
    status: str  # completed | failed
    total_rows: int
    created_products: int
    failed_rows: int
    images_imported: int
    images_failed: int
    source: str = "csv"  # csv | store


class AssetApproval(_Payload):
    asset_id: str
    product_id: str | None = None
    approved: bool


class CreditsThreshold(_Payload):
    """The balance crossed below the low threshold, or reached zero."""

    available: int
    threshold: int


class SubscriptionChanged(_Payload):
    subscription_id: str | None = None
    plan: str
    interval: str | None = None
    status: str
    previous_plan: str | None = None
    previous_status: str | None = None


class PaymentFailed(_Payload):
    invoice_id: str
    amount_due: int  # in the currency's minor unit
    currency: str
    attempt_count: int = 1
    next_attempt_at: datetime | None = None
    hosted_invoice_url: str | None = None


class StoreChanged(_Payload):
    store_id: str
    platform: str  # shopify | woocommerce
    reason: str | None = None


class SyncFinished(_Payload):
    sync_id: str
    store_id: str
    pushed: int = 0
    failed: int = 0
    reason: str | None = None


PAYLOADS: dict[EventType, type[BaseModel]] = {
    EventType.GENERATION_JOB_COMPLETED: JobCompleted,
    EventType.EDIT_JOB_COMPLETED: JobCompleted,
    EventType.VIDEO_JOB_COMPLETED: JobCompleted,
    EventType.IMPORT_COMPLETED: ImportCompleted,
    EventType.ASSET_APPROVED: AssetApproval,
    EventType.ASSET_UNAPPROVED: AssetApproval,
    EventType.CREDITS_LOW: CreditsThreshold,
    EventType.CREDITS_DEPLETED: CreditsThreshold,
    EventType.SUBSCRIPTION_CHANGED: SubscriptionChanged,
    EventType.PAYMENT_FAILED: PaymentFailed,
    EventType.STORE_CONNECTED: StoreChanged,
    EventType.STORE_DISCONNECTED: StoreChanged,
    EventType.STORE_NEEDS_REAUTHORIZATION: StoreChanged,
    EventType.SYNC_COMPLETED: SyncFinished,
    EventType.SYNC_FAILED: SyncFinished,
}


class DomainEvent(BaseModel):
    """``outbox/{id}``: one thing that happened to one client's ``subject``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    type: EventType
    client_id: str
    subject: Subject
    sequence: int = Field(ge=0)  # per subject: later events of one subject have larger numbers
    occurred_at: datetime
    payload: dict[str, Any]

    def parsed(self) -> BaseModel:
        """The payload as its type's model (:data:`PAYLOADS`)."""
        return PAYLOADS[self.type].model_validate(self.payload)


def event_id(client_id: str, event_type: EventType, subject: Subject, discriminator: str | int = "") -> str:
    """The id of "this happened": the same inputs always give the same id, so a retried commit rewrites
    its event instead of adding one."""
    material = f"{client_id}\n{event_type.value}\n{subject.kind}\n{subject.id}\n{discriminator}"
    return "evt_" + hashlib.sha256(material.encode()).hexdigest()[:32]


def new_event(
    client_id: str,
    event_type: EventType,
    subject: Subject,
    payload: BaseModel,
    *,
    occurred_at: datetime,
    sequence: int = 0,
    discriminator: str | int = "",
) -> DomainEvent:
    """An event of ``event_type`` with its payload checked against the type's model."""
    expected = PAYLOADS[event_type]
    if not isinstance(payload, expected):
        raise TypeError(f"{event_type.value} carries {expected.__name__}, not {type(payload).__name__}")
    return DomainEvent(
        id=event_id(client_id, event_type, subject, discriminator),
        type=event_type,
        client_id=client_id,
        subject=subject,
        sequence=sequence,
        occurred_at=occurred_at,
        payload=payload.model_dump(mode="json"),
    )
