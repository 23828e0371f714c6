"""Poison Stripe events: quarantined in a dead-letter collection, acknowledged, replayable.

A correctly signed delivery that can never be applied as it is — a body that is no event, an event id
that is no document id, a shape this code does not read, a type it does not know — is a *poison event*.
Answering 5xx would only make Stripe redeliver it for three days and then disable the endpoint, so it
is recorded here with its reason (``stripe_dead_letters/{letter}``), logged at ERROR and answered 2xx.
An operator replays it after the fix (``POST /billing_api/admin/dead-letters/{id}/replay``).

Which errors are poison and which transient is :func:`shared.billing.events.poison_reason`: the
event's own shape (validation, an empty item list, a timestamp past the calendar, a 4xx from a use
case) is poison; Firestore or Stripe unavailable, a commit that kept losing races
(:class:`UpstreamUnavailable`) and a plan price missing from ``STRIPE_PRICE_IDS``
(:class:`StripePriceNotConfigured`, fixed by configuration) stay 5xx so Stripe retries.

The letter's document id is derived (a hash of the event id, or of the body when there is no id), so a
hostile id is only ever data, and a redelivery of the same poison event counts a delivery on the same
letter instead of writing another. Replay goes through :meth:`WebhookProcessor.handle`, so the
once-only rule of ``stripe_events/{id}`` holds: a replay applies the event at most once, a second
replay (or a redelivery after a fix) finds the marker and changes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints

from shared.billing.events import PoisonEvent, parse_event, poison_reason
from shared.errors import Conflict, NotFound
from shared.pagination import Page, PageQuery

if TYPE_CHECKING:
    from shared.billing.events import WebhookProcessor
    from shared.billing.models import StripeEvent

logger = logging.getLogger("epox.billing")

# What a letter keeps of what Stripe sent: the whole body (the webhook's own body limit, so replay
# always has the full event, and well inside Firestore's 1 MiB document), the rest capped.
MAX_BODY_BYTES = 512 * 1024
MAX_EVENT_ID = 256
MAX_EVENT_TYPE = 128
MAX_REASON = 1000
PREVIEW_CHARS = 2000
LETTER_ID_PATTERN = r"^dl_[0-9a-f]{32}$"

LetterId = Annotated[str, StringConstraints(pattern=LETTER_ID_PATTERN)]
LetterStatus = Literal["quarantined", "replayed"]


def _printable(value: str, limit: int) -> str:
    """``value`` as storable text: lone surrogates escaped (Firestore strings are UTF-8), capped."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")[:limit]


def letter_id(event_id: str | None, body: bytes) -> str:
    """The letter's document id: a hash of the event id (one letter per event however often Stripe
    delivers it), or of the body when it has no id."""
    source = b"event:" + event_id.encode("utf-8", "surrogatepass") if event_id is not None else b"body:" + body
    return "dl_" + hashlib.sha256(source).hexdigest()[:32]


class DeadLetter(BaseModel):
    """``stripe_dead_letters/{id}``: one poison event, as delivered, and what became of it."""

    model_config = ConfigDict(extra="ignore")

    id: str
    event_id: str | None = None  # as sent (escaped, capped): data, never a path
    event_type: str | None = None
    reason: str
    body: bytes = b""
    body_size: int = 0
    body_sha256: str = ""
    body_truncated: bool = False
    status: LetterStatus = "quarantined"
    deliveries: int = 1
    first_seen_at: datetime
    last_seen_at: datetime
    replay_attempts: int = 0
    last_replay_at: datetime | None = None
    last_replay_error: str | None = None
    replayed_at: datetime | None = None
    replay_outcome: str | None = None

    @classmethod
    def of(cls, body: bytes, reason: str, now: datetime, event_id: str | None, event_type: str | None) -> DeadLetter:
        kept = body[:MAX_BODY_BYTES]
        return cls(
            id=letter_id(event_id, body),
            event_id=_printable(event_id, MAX_EVENT_ID) if event_id is not None else None,
            event_type=_printable(event_type, MAX_EVENT_TYPE) if event_type is not None else None,
            reason=_printable(reason, MAX_REASON),
            body=kept,
            body_size=len(body),
            body_sha256=hashlib.sha256(body).hexdigest(),
            body_truncated=len(kept) < len(body),
            first_seen_at=now,
            last_seen_at=now,
        )


class DeadLetterOut(BaseModel):
    """A letter as the admin API shows it: the body as a text preview, not as bytes."""

    id: str
    event_id: str | None
    event_type: str | None
    reason: str
    status: LetterStatus
    deliveries: int
    first_seen_at: datetime
    last_seen_at: datetime
    body_size: int
    body_truncated: bool
    body_preview: str
    replay_attempts: int
    last_replay_at: datetime | None
    last_replay_error: str | None
    replayed_at: datetime | None
    replay_outcome: str | None

    @classmethod
    def of(cls, letter: DeadLetter) -> DeadLetterOut:
        preview = letter.body[: PREVIEW_CHARS * 4].decode("utf-8", "replace")[:PREVIEW_CHARS]
        return cls(body_preview=preview, **letter.model_dump(exclude={"body", "body_sha256"}))


class DeadLetterQuery(PageQuery):
    """``GET /admin/dead-letters``: newest first."""


class WebhookReceipt(BaseModel):
    """The webhook's 2xx answer: applied, a duplicate, ignored, or quarantined (``dead_letter``)."""

    received: bool = True
    id: str | None
    type: str | None
    outcome: str
    dead_letter: str | None = None


class ReplayOut(BaseModel):
    """What a replay did: ``replayed`` (now, or by an earlier replay) with the processor's outcome."""

    letter: DeadLetterOut
    outcome: str
    replayed_now: bool


class DeadLetterNotFound(NotFound):
    code = "dead_letter_not_found"
    title = "No such dead letter"


class DeadLetterReplayFailed(Conflict):
    code = "dead_letter_replay_failed"
    title = "The dead letter still cannot be applied"


class DeadLetters(ABC):
    """Port: the quarantine of poison Stripe events."""

    @abstractmethod
    def quarantine(self, letter: DeadLetter) -> DeadLetter:
        """Store ``letter`` unless its id is stored already; then count one more delivery on the stored
        one (``last_seen_at``, the latest ``reason``). Returns the stored letter."""

    @abstractmethod
    def get(self, letter_id: str) -> DeadLetter | None: ...

    @abstractmethod
    def page(self, limit: int, cursor: str | None) -> tuple[list[DeadLetter], str | None]:
        """Letters newest first (``first_seen_at``, then id), from an opaque ``cursor``."""

    @abstractmethod
    def mark_replayed(self, letter_id: str, outcome: str, now: datetime) -> DeadLetter:
        """Record a replay that went through; a letter already replayed keeps its first outcome."""

    @abstractmethod
    def note_replay_failed(self, letter_id: str, reason: str, now: datetime) -> DeadLetter:
        """Record a replay that failed as poison again (the letter stays quarantined)."""


def quarantine(
    letters: DeadLetters,
    body: bytes,
    reason: str,
    now: datetime,
    *,
    event_id: str | None = None,
    event_type: str | None = None,
) -> WebhookReceipt:
    """Dead-letter a poison event and answer for it. A failure to write the letter propagates (a 5xx:
    Stripe redelivers, and the letter is written then)."""
    letter = letters.quarantine(DeadLetter.of(body, reason, now, event_id, event_type))
    logger.error(
        "stripe event quarantined as %s (event %r, type %r, delivery %d): %s",
        letter.id,
        letter.event_id,
        letter.event_type,
        letter.deliveries,
        letter.reason,
    )
    return WebhookReceipt(
        id=letter.event_id, type=letter.event_type, outcome=f"quarantined: {letter.reason}", dead_letter=letter.id
    )


def receive(
    body: bytes, processor: Callable[[], WebhookProcessor], letters: DeadLetters, now: datetime
) -> WebhookReceipt:
    """Apply a verified delivery, or quarantine it when it is poison; transient errors propagate."""
    try:
        event = parse_event(body)
    except PoisonEvent as poison:
        return quarantine(letters, body, poison.reason, now, event_id=poison.event_id, event_type=poison.event_type)
    # Built outside the ``try``: a processor that cannot be built is our configuration, never the event's.
    apply = processor()
    try:
        outcome = apply.handle(event)
    except Exception as error:
        reason = poison_reason(error)
        if reason is None:
            raise
        logger.exception("stripe event %s (%s) is poison", event.id, event.type)
        return quarantine(letters, body, reason, now, event_id=event.id, event_type=event.type)
    return WebhookReceipt(id=event.id, type=event.type, outcome=outcome)


def list_letters(letters: DeadLetters, query: DeadLetterQuery) -> Page[DeadLetterOut]:
    items, cursor = letters.page(query.limit, query.cursor)
    return Page[DeadLetterOut](items=[DeadLetterOut.of(letter) for letter in items], next_cursor=cursor)


def replay(letters: DeadLetters, processor: Callable[[], WebhookProcessor], letter_id: str, now: datetime) -> ReplayOut:
    """Apply a quarantined event now (after a fix). Idempotent: a letter replayed before answers its
    outcome again; the event's ``stripe_events`` marker keeps any effect to once. Still poison: 409
    ``dead_letter_replay_failed`` with the reason (noted on the letter). Transient errors propagate."""
    letter = letters.get(letter_id) if re.fullmatch(LETTER_ID_PATTERN, letter_id) else None
    if letter is None:
        raise DeadLetterNotFound(f"No dead letter {letter_id[:80]}")
    if letter.status == "replayed":
        return ReplayOut(letter=DeadLetterOut.of(letter), outcome=str(letter.replay_outcome), replayed_now=False)
    if letter.body_truncated:
        raise DeadLetterReplayFailed("The stored body is truncated: replay the event from Stripe's dashboard")
    apply = processor()
    try:
        event: StripeEvent = parse_event(letter.body)
        outcome = apply.handle(event)
    except Exception as error:
        reason = poison_reason(error)
        if reason is None:
            raise
        noted = letters.note_replay_failed(letter.id, _printable(reason, MAX_REASON), now)
        logger.error("dead letter %s still fails: %s", letter.id, noted.last_replay_error)
        raise DeadLetterReplayFailed(f"Still failing: {noted.last_replay_error}", dead_letter=letter.id) from error
    stored = letters.mark_replayed(letter.id, outcome, now)
    logger.warning("dead letter %s replayed: %s", letter.id, stored.replay_outcome)
    return ReplayOut(letter=DeadLetterOut.of(stored), outcome=str(stored.replay_outcome), replayed_now=True)


__all__ = [
    "DeadLetter",
    "DeadLetterNotFound",
    "DeadLetterOut",
    "DeadLetterQuery",
    "DeadLetterReplayFailed",
    "DeadLetters",
    "LetterId",
    "ReplayOut",
    "WebhookReceipt",
    "list_letters",
    "quarantine",
    "receive",
    "replay",
]
