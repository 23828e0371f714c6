"""Email notifications: the ``email`` consumer of domain events, and the sent-markers that make it
send once.

For an event type with a template, the client's preferences decide (``wants_email``) and the recipient
is ``email_to`` or the client's contact address. Each email is claimed in ``clients/{c}/emails/{key}``
before it is sent (created if absent, status ``sending``) and marked ``sent`` after: a redelivered event
finds the marker and sends nothing. A relay that is down raises :class:`UpstreamUnavailable` and releases
the claim, so the queue's retry sends it later; the state change that raised the event committed long
before (the relay is asynchronous), so nothing waits for the mail.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from shared import logging as log
from shared.errors import Conflict
from shared.events.consumer import EventConsumer
from shared.events.model import CreditsThreshold, DomainEvent, EventType, JobCompleted, PaymentFailed, StoreChanged
from shared.mail.port import EmailMessage, Mailer, RecipientRefused
from shared.notifications import email_templates as templates
from shared.notifications.email_templates import MailLinks
from shared.notifications.preferences import NotificationType, PreferencesStore
from shared.tenancy import ClientDirectory

logger = log.get_logger("epox.notifications.email")

# A claim older than this belongs to a delivery that died mid-send: the next one may take it over.
SEND_LEASE = timedelta(minutes=5)


class EmailStatus(StrEnum):
    SENDING = "sending"
    SENT = "sent"
    REFUSED = "refused"  # the relay refused the recipient for good: never retried


class EmailRecord(BaseModel):
    """``clients/{client}/emails/{key}``: one email, claimed then sent (key: the event id, or the
    weekly summary's ``weekly-{iso week}``)."""

    model_config = ConfigDict(extra="ignore")

    kind: NotificationType
    status: EmailStatus
    claimed_at: datetime
    sent_at: datetime | None = None


class EmailInFlight(Conflict):
    """Another delivery claimed this email moments ago: retried later (it is sent, or its claim lapses)."""

    code = "email_in_flight"
    title = "This email is being sent by another delivery"


class EmailLog(ABC):
    """Port: the sent-markers (Firestore adapter: :mod:`shared.adapters.firestore.emails`)."""

    @abstractmethod
    def claim(self, client_id: str, key: str, kind: NotificationType, now: datetime, lease: timedelta) -> bool:
        """Claim the email: True when the caller is to send it (a new claim, or one older than ``lease``
        taken over), False when it was sent (or refused) already; :class:`EmailInFlight` when another
        delivery holds a live claim. Atomic: two callers never both get True for a live claim."""

    @abstractmethod
    def finish(self, client_id: str, key: str, status: EmailStatus, now: datetime) -> None:
        """Record the outcome of a claimed email (``sent`` or ``refused``)."""

    @abstractmethod
    def release(self, client_id: str, key: str) -> None:
        """Drop a claim whose send failed, so the retry claims it again at once."""


def send_once(
    log_: EmailLog,
    mailer: Mailer,
    client_id: str,
    key: str,
    kind: NotificationType,
    message: EmailMessage,
    now: datetime,
) -> str:
    """Claim, send, mark: the one way an email goes out. Returns the outcome for the logs."""
    if not log_.claim(client_id, key, kind, now, SEND_LEASE):
        return "skipped: already sent"
    try:
        mailer.send(message)
    except RecipientRefused:
        log_.finish(client_id, key, EmailStatus.REFUSED, now)
        logger.warning("the relay refused the recipient of %s email %s for good", kind.value, key)
        return "skipped: recipient refused"
    except BaseException:
        log_.release(client_id, key)  # the queue retries; nothing was sent
        raise
    log_.finish(client_id, key, EmailStatus.SENT, now)
    return "sent"


_KINDS: dict[EventType, NotificationType] = {
    EventType.GENERATION_JOB_COMPLETED: NotificationType.JOB_COMPLETED,
    EventType.EDIT_JOB_COMPLETED: NotificationType.JOB_COMPLETED,
    EventType.VIDEO_JOB_COMPLETED: NotificationType.JOB_COMPLETED,
    EventType.CREDITS_LOW: NotificationType.CREDITS_LOW,
    EventType.CREDITS_DEPLETED: NotificationType.CREDITS_DEPLETED,
    EventType.PAYMENT_FAILED: NotificationType.PAYMENT_FAILED,
    EventType.STORE_NEEDS_REAUTHORIZATION: NotificationType.STORE_NEEDS_REAUTHORIZATION,
    EventType.STORE_DISCONNECTED: NotificationType.STORE_DISCONNECTED,
}


def render(event: DomainEvent, to: str, links: MailLinks, now: datetime) -> EmailMessage:
    """The email of an event type that has a template (:data:`EmailNotifier.types`)."""
    payload = event.parsed()
    client = event.client_id
    if isinstance(payload, JobCompleted):
        label = {EventType.GENERATION_JOB_COMPLETED: "generation", EventType.VIDEO_JOB_COMPLETED: "video"}.get(
            event.type, "edit"
        )
        return templates.job_completed(to, client, label, payload, links, now)
    if isinstance(payload, CreditsThreshold):
        if event.type is EventType.CREDITS_DEPLETED:
            return templates.credits_depleted(to, client, payload, links, now)
        return templates.credits_low(to, client, payload, links, now)
    if isinstance(payload, PaymentFailed):
        return templates.payment_failed(to, client, payload, links, now)
    if isinstance(payload, StoreChanged) and event.type in _KINDS:
        return templates.store_changed(to, client, _KINDS[event.type], payload, links, now)
    raise ValueError(f"no email template for {event.type.value}")


class EmailNotifier(EventConsumer):
    """Sends the email of an event once, when the client wants it and a recipient is known."""

    name = "email"
    types = frozenset(_KINDS)

    def __init__(
        self,
        preferences: PreferencesStore,
        directory: ClientDirectory,
        emails: EmailLog,
        mailer: Callable[[], Mailer],
        links: MailLinks,
        clock: Callable[[], datetime],
    ) -> None:
        self.preferences = preferences
        self.directory = directory
        self.emails = emails
        self.mailer = mailer  # built on first send: a client who wants no email needs no relay configured
        self.links = links
        self.clock = clock

    def handle(self, event: DomainEvent) -> str:
        kind = _KINDS.get(event.type)
        if kind is None:
            return "skipped: no email for this type"
        prefs = self.preferences.get(event.client_id)
        if not prefs.wants_email(kind):
            return "skipped: email off"
        to = prefs.email_to or self.directory.contact_email(event.client_id)
        if not to:
            return "skipped: no recipient"
        now = self.clock()
        message = render(event, to, self.links, now)
        return send_once(self.emails, self.mailer(), event.client_id, event.id, kind, message, now)
