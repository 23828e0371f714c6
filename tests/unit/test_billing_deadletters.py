"""The quarantine of poison Stripe events on the in-memory ports: what is poison and what transient,
one letter per event however often it is delivered, hostile ids kept as capped data, listing with a
cursor, and replay after a fix applying the event exactly once. tests/integration/
test_billing_poison.py runs every shape through the signed HTTP endpoint on Firestore."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from shared.billing.catalog import Catalog, Pack, PriceIds, load_catalog
from shared.billing.deadletters import (
    MAX_EVENT_ID,
    MAX_REASON,
    DeadLetter,
    DeadLetterNotFound,
    DeadLetterReplayFailed,
    letter_id,
    list_letters,
    receive,
    replay,
)
from shared.billing.deadletters import DeadLetterQuery as Query
from shared.billing.events import PoisonEvent, StripePriceNotConfigured, WebhookProcessor, poison_reason
from shared.billing.models import StripeEvent
from shared.billing.store import EventWrite
from shared.errors import ConfigurationError, NotFound, UpstreamUnavailable, ValidationFailed
from tests.billing_events import event, period
from tests.fakes_billing import InMemoryBilling, InMemoryDeadLetters
from tests.unit.test_billing_webhook_rules import Stripe


class Poisoned:
    """The webhook (``receive``) and the admin's replay on the fakes, with a catalog that can be "fixed"."""

    def __init__(self, store: InMemoryBilling | None = None) -> None:
        self.stripe = Stripe(store)
        self.letters = InMemoryDeadLetters()
        self.catalog = load_catalog()

    def processor(self) -> WebhookProcessor:
        s = self.stripe
        return WebhookProcessor(s.store, s.ledger, self.catalog, PriceIds(s.prices), s.clock.now, s.gateway)

    def deliver(self, evt: dict[str, Any] | bytes) -> Any:
        body = evt if isinstance(evt, bytes) else json.dumps(evt).encode()
        return receive(body, self.processor, self.letters, self.stripe.clock.now)

    def replay(self, letter: str) -> Any:
        return replay(self.letters, self.processor, letter, self.stripe.clock.now)

    def sell(self, pack_id: str, credits: int) -> None:
        packs = {**self.catalog.packs, pack_id: Pack(name=pack_id, credits=credits, display_price=1)}
        self.catalog = Catalog.model_validate(self.catalog.model_dump() | {"packs": packs})


@pytest.fixture
def hook() -> Poisoned:
    return Poisoned()


def test_an_applicable_event_is_applied_and_leaves_no_letter(hook: Poisoned) -> None:
    receipt = hook.deliver(hook.stripe.sub.checkout_pack("pack_100"))
    assert receipt.outcome == "granted 100 pack credits" and receipt.dead_letter is None
    assert hook.letters.letters == {}


@pytest.mark.parametrize(
    "mutate",
    [
        lambda e: e | {"id": "evt/../../clients/x"},
        lambda e: e | {"created": 2**70},
        lambda e: e | {"data": {"object": "x"}},
        lambda e: e | {"data": {"object": {**e["data"]["object"], "mode": "bogus"}}},
        lambda e: e | {"data": {"object": {**e["data"]["object"], "metadata": "x"}}},
        lambda e: e | {"type": "customer.tax_id.created"},
    ],
)
def test_a_poison_event_is_quarantined_once_per_event_and_changes_nothing(hook: Poisoned, mutate: Any) -> None:
    evt = mutate(hook.stripe.sub.checkout_pack("pack_100"))
    before = hook.stripe.snapshot()
    first = hook.deliver(evt)
    assert first.outcome.startswith("quarantined: ") and first.dead_letter == letter_id(evt["id"], b"")
    hook.stripe.clock.advance(minutes=5)
    second = hook.deliver(evt)
    assert second.dead_letter == first.dead_letter and len(hook.letters.letters) == 1
    letter = hook.letters.letters[first.dead_letter]
    assert (letter.deliveries, letter.status) == (2, "quarantined")
    assert letter.last_seen_at - letter.first_seen_at == timedelta(minutes=5)
    assert hook.stripe.snapshot() == before and hook.stripe.store.events == {}


def test_a_body_that_is_no_event_is_quarantined_by_its_hash_and_logged_at_error(
    hook: Poisoned, caplog: pytest.LogCaptureFixture
) -> None:
    nested = b"[" * 100_000 + b"]" * 100_000
    with caplog.at_level(logging.ERROR, logger="epox.billing"):
        receipt = hook.deliver(nested)
    logged = [r for r in caplog.records if r.levelno == logging.ERROR and str(receipt.dead_letter) in r.getMessage()]
    assert logged and "nested too deeply" in logged[0].getMessage()
    assert receipt.dead_letter == letter_id(None, nested) and receipt.id is None
    assert "nested too deeply" in receipt.outcome
    assert hook.letters.letters[str(receipt.dead_letter)].body == nested


def test_a_hostile_id_is_kept_as_escaped_capped_data() -> None:
    hostile = "\ud800" + "x" * 5000
    letter = DeadLetter.of(b"{}", "r" * 5000, Stripe().clock.now, hostile, "t" * 500)
    assert letter.id.startswith("dl_") and len(letter.id) == 35
    assert (
        letter.event_id is not None and letter.event_id.startswith("\\ud800") and len(letter.event_id) == MAX_EVENT_ID
    )
    assert len(letter.reason) == MAX_REASON and len(letter.event_type or "") == 128
    assert letter_id(hostile, b"a") == letter_id(hostile, b"b")  # one letter per event id, whatever the body


def test_what_is_poison_and_what_is_transient() -> None:
    try:
        StripeEvent.model_validate({"id": ".."})
    except ValidationError as invalid:
        assert (poison_reason(invalid) or "").startswith("unexpected shape")
    assert poison_reason(PoisonEvent("no")) == "no"
    assert poison_reason(IndexError("list index out of range")) == "IndexError: list index out of range"
    assert poison_reason(OverflowError("year is out of range")) is not None
    assert poison_reason(ValidationFailed("Unknown pack 'x'")) == "validation_failed: Unknown pack 'x'"
    # Transient, or an operator's fix away: Stripe must keep retrying.
    assert poison_reason(UpstreamUnavailable("Firestore is unavailable")) is None
    assert poison_reason(StripePriceNotConfigured("price_x")) is None
    assert poison_reason(ConfigurationError("STRIPE_WEBHOOK_SECRET is not set")) is None
    assert poison_reason(ConnectionError("reset")) is None  # a vendor's own transport error


class UnavailableBilling(InMemoryBilling):
    """Firestore down at the commit: as the adapter's translated error."""

    def commit(self, write: EventWrite) -> bool:
        raise UpstreamUnavailable("Firestore is unavailable", retry_after=1)


def test_transient_failures_propagate_and_quarantine_nothing() -> None:
    hook = Poisoned(UnavailableBilling())
    with pytest.raises(UpstreamUnavailable):
        hook.deliver(hook.stripe.sub.checkout_pack("pack_100"))
    start, end = period(hook.stripe.clock.now)
    with pytest.raises(StripePriceNotConfigured):
        Poisoned().deliver(hook.stripe.sub.created_event("price_not_configured", start, end))
    assert hook.letters.letters == {}


class UnavailableLetters(InMemoryDeadLetters):
    def quarantine(self, letter: DeadLetter) -> DeadLetter:
        raise UpstreamUnavailable("Firestore is unavailable", retry_after=1)


def test_a_letter_that_cannot_be_written_is_a_5xx_so_stripe_redelivers(hook: Poisoned) -> None:
    hook.letters = UnavailableLetters()
    with pytest.raises(UpstreamUnavailable):
        hook.deliver(hook.stripe.sub.checkout_pack("pack_unknown"))


def test_replay_after_the_fix_applies_once(hook: Poisoned) -> None:
    evt = hook.stripe.sub.checkout_pack("pack_mega")
    letter = str(hook.deliver(evt).dead_letter)
    with pytest.raises(DeadLetterReplayFailed) as still:
        hook.replay(letter)
    assert "pack_mega" in still.value.detail and still.value.status == 409
    assert hook.letters.letters[letter].replay_attempts == 1 and hook.stripe.balance() == 0

    hook.sell("pack_mega", 7000)
    done = hook.replay(letter)
    assert (done.replayed_now, done.outcome, done.letter.status) == (True, "granted 7000 pack credits", "replayed")
    again = hook.replay(letter)
    assert (again.replayed_now, again.outcome) == (False, "granted 7000 pack credits")
    assert hook.deliver(evt).outcome == "duplicate"  # Stripe's own resend after the fix
    assert hook.stripe.balance() == 7000 and len(hook.stripe.entries()) == 1


def test_a_replay_that_finds_the_event_applied_already_is_marked_replayed(hook: Poisoned) -> None:
    evt = hook.stripe.sub.checkout_pack("pack_mega")
    letter = str(hook.deliver(evt).dead_letter)
    hook.sell("pack_mega", 7000)
    assert hook.deliver(evt).outcome == "granted 7000 pack credits"  # a resend from the dashboard came first
    done = hook.replay(letter)
    assert done.outcome == "duplicate" and hook.stripe.balance() == 7000


def test_unknown_and_truncated_letters(hook: Poisoned) -> None:
    for unknown in (f"dl_{'0' * 32}", "..", "__x__", "x" * 2000):
        with pytest.raises(DeadLetterNotFound) as missing:
            hook.replay(unknown)
        assert isinstance(missing.value, NotFound)
    cut = DeadLetter.of(b"{" * 10, "r", hook.stripe.clock.now, "evt_cut", None).model_copy(
        update={"body_truncated": True}
    )
    hook.letters.quarantine(cut)
    with pytest.raises(DeadLetterReplayFailed):
        hook.replay(cut.id)


def test_letters_are_listed_newest_first_with_a_cursor(hook: Poisoned) -> None:
    made = []
    for _ in range(5):
        hook.stripe.clock.advance(seconds=1)
        made.append(hook.deliver(event("customer.tax_id.created", {}, hook.stripe.sub.tick())).dead_letter)
    seen: list[str | None] = []
    cursor = None
    while True:
        page = list_letters(hook.letters, Query(limit=2, cursor=cursor))
        seen += [item.id for item in page.items]
        assert all(item.body_preview.startswith("{") for item in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == made[::-1]


class FirestoreDown(InMemoryBilling):
    """Firestore's own UNAVAILABLE, untranslated, from the first read (as the adapter lets it through)."""

    def event_recorded(self, event_id: str) -> bool:
        from google.api_core.exceptions import ServiceUnavailable

        raise ServiceUnavailable("firestore.googleapis.com unavailable")


def test_a_vendor_outage_is_transient_not_poison() -> None:
    from google.api_core.exceptions import ServiceUnavailable

    hook = Poisoned(FirestoreDown())
    with pytest.raises(ServiceUnavailable):
        hook.deliver(hook.stripe.sub.checkout_pack("pack_100"))
    assert hook.letters.letters == {}


def test_a_processor_that_cannot_be_built_is_never_the_events_fault(hook: Poisoned) -> None:
    def broken() -> WebhookProcessor:
        raise ValueError("STRIPE_PRICE_IDS is not valid JSON")

    with pytest.raises(ValueError, match="STRIPE_PRICE_IDS"):
        receive(
            json.dumps(hook.stripe.sub.checkout_pack("pack_100")).encode(), broken, hook.letters, hook.stripe.clock.now
        )
    assert hook.letters.letters == {}
