"""Email: the SMTP adapter against a real SMTP server on loopback (aiosmtpd), the unsubscribe tokens,
the templates and the ``email`` consumer over the port fakes."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shared.errors import UpstreamRejectedCredentials, UpstreamUnavailable
from shared.events.model import (
    CreditsThreshold,
    DomainEvent,
    EventType,
    JobCompleted,
    PaymentFailed,
    Subject,
    new_event,
)
from shared.mail import tokens
from shared.mail.port import EmailMessage
from shared.mail.smtp import SmtpMailer
from shared.mail.tokens import InvalidUnsubscribeToken
from shared.notifications.email import EmailInFlight, EmailNotifier, EmailStatus
from shared.notifications.email_templates import MailLinks
from shared.notifications.preferences import ChannelPreference, NotificationPreferences, NotificationType
from tests.fakes_mail import InMemoryEmailLog, InMemoryPreferences, RecordingMailer
from tests.fakes_tenancy import InMemoryClientDirectory
from tests.smtp_sink import Inbox, free_port, html_part, self_signed, smtp_sink, text_part

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
SECRET = "unsubscribe-secret-for-tests"
LINKS = MailLinks(
    app_url="https://app.epox.test",
    billing_url="https://app.epox.test/billing",
    unsubscribe_url="https://api.epox.test/notifications_api/unsubscribe",
    unsubscribe_secret=SECRET,
)


@pytest.fixture
def sink() -> Iterator[tuple[Inbox, int]]:
    with smtp_sink() as running:
        yield running


def _mailer(port: int, **options: object) -> SmtpMailer:
    return SmtpMailer(
        host="127.0.0.1", port=port, sender="Epox <mail@epox.test>", starttls=False, timeout_seconds=5, **options
    )  # type: ignore[arg-type]


def _message(**overrides: object) -> EmailMessage:
    values: dict[str, object] = {
        "to": "merchant@shop.test",
        "subject": "Hello",
        "text": "plain body",
        "html": "<p>html body</p>",
        "headers": {"List-Unsubscribe": "<https://x.test/u>"},
    }
    return EmailMessage.model_validate(values | overrides)


# -- the SMTP adapter ---------------------------------------------------------------------------------


def test_the_relay_receives_both_parts_and_the_headers(sink: tuple[Inbox, int]) -> None:
    inbox, port = sink
    _mailer(port).send(_message())
    [received] = inbox.messages
    assert inbox.recipients == [["merchant@shop.test"]]
    assert received["Subject"] == "Hello"
    assert received["From"] == "Epox <mail@epox.test>"
    assert received["List-Unsubscribe"] == "<https://x.test/u>"
    assert received["Message-ID"].endswith("@epox.test>")
    assert text_part(received).strip() == "plain body"
    assert html_part(received).strip() == "<p>html body</p>"


def test_a_relay_that_is_down_is_retryable() -> None:
    with pytest.raises(UpstreamUnavailable) as caught:
        _mailer(free_port()).send(_message())  # nothing listens there
    assert caught.value.status == 503 and caught.value.headers["Retry-After"]


def test_a_refused_login_is_the_operators_problem_and_a_good_one_sends() -> None:
    with smtp_sink(login=("epox", "right")) as (inbox, port):
        with pytest.raises(UpstreamRejectedCredentials):
            _mailer(port, username="epox", password=_secret("wrong")).send(_message())
        assert inbox.messages == []
        _mailer(port, username="epox", password=_secret("right")).send(_message())
        assert len(inbox.messages) == 1


def test_starttls_asked_of_a_relay_without_it_is_retryable_not_a_crash(sink: tuple[Inbox, int]) -> None:
    inbox, port = sink
    mailer = SmtpMailer(host="127.0.0.1", port=port, sender="mail@epox.test", starttls=True, timeout_seconds=5)
    with pytest.raises(UpstreamUnavailable):
        mailer.send(_message())
    assert inbox.messages == []


def test_starttls_then_login_over_tls(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    trusted = ssl.create_default_context(cafile=str(cert))
    with smtp_sink(login=("epox", "right"), tls=(cert, key)) as (inbox, port):
        SmtpMailer(
            host="127.0.0.1",
            port=port,
            sender="mail@epox.test",
            username="epox",
            password=_secret("right"),  # type: ignore[arg-type]
            tls_context=trusted,
            timeout_seconds=5,
        ).send(_message())
        assert len(inbox.messages) == 1
        # A certificate the client does not trust: no credentials sent, retried later.
        with pytest.raises(UpstreamUnavailable):
            SmtpMailer(host="127.0.0.1", port=port, sender="mail@epox.test", timeout_seconds=5).send(_message())
        # Without STARTTLS the server refuses (it requires it): retried, never sent in clear.
        with pytest.raises(UpstreamUnavailable):
            _mailer(port).send(_message())
        assert len(inbox.messages) == 1


def _secret(value: str) -> object:
    from pydantic import SecretStr

    return SecretStr(value)


# -- tokens ---------------------------------------------------------------------------------------------


def test_a_token_says_who_what_and_when() -> None:
    token = tokens.sign(SECRET, "c1", "credits_low", T0)
    request = tokens.verify(SECRET, token, T0 + timedelta(days=89))
    assert (request.client_id, request.kind, request.issued_at) == ("c1", "credits_low", T0)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: tokens.sign("another secret", "c1", "credits_low", T0),  # signed with another key
        lambda t: tokens.sign(SECRET, "c2", "credits_low", T0).split(".")[0] + "." + t.split(".")[1],  # payload swapped
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # signature altered
        lambda t: t.split(".")[0],  # no signature
        lambda t: "",
        lambda t: "not a token at all",
        lambda t: "%%%.###",
        lambda t: t + "." + t,
        lambda t: "A" * 5000,
    ],
)
def test_a_forged_or_malformed_token_is_refused(tamper: object) -> None:
    token = tokens.sign(SECRET, "c1", "credits_low", T0)
    with pytest.raises(InvalidUnsubscribeToken):
        tokens.verify(SECRET, tamper(token), T0)  # type: ignore[operator]


def test_a_token_expires_after_90_days() -> None:
    token = tokens.sign(SECRET, "c1", "credits_low", T0)
    with pytest.raises(InvalidUnsubscribeToken, match="expired"):
        tokens.verify(SECRET, token, T0 + timedelta(days=91))


# -- templates and the consumer -------------------------------------------------------------------------


def _job_event(
    client: str = "c1", job_id: str = "job1", kind: EventType = EventType.GENERATION_JOB_COMPLETED
) -> DomainEvent:
    payload = JobCompleted(
        job_id=job_id, status="partially_completed", items=3, succeeded=2, failed=1, charged=4, refunded=2, images=4
    )
    return new_event(client, kind, Subject(kind="job", id=job_id), payload, occurred_at=T0)


def _notifier(
    mailer: RecordingMailer | SmtpMailer, prefs: InMemoryPreferences, contact: str | None = "owner@shop.test"
) -> tuple[EmailNotifier, InMemoryEmailLog, InMemoryClientDirectory]:
    directory = InMemoryClientDirectory()
    if contact:
        directory.set_contact_email("c1", contact)
    log = InMemoryEmailLog()
    return EmailNotifier(prefs, directory, log, lambda: mailer, LINKS, lambda: T0), log, directory


def _prefs(**channels: bool) -> InMemoryPreferences:
    prefs = InMemoryPreferences()
    prefs.save(
        "c1",
        NotificationPreferences(
            channels={NotificationType(kind): ChannelPreference(email=on) for kind, on in channels.items()}
        ),
    )
    return prefs


def test_a_job_completed_email_reaches_the_relay_once_under_redelivery(sink: tuple[Inbox, int]) -> None:
    inbox, port = sink
    notifier, log, _ = _notifier(_mailer(port), _prefs(job_completed=True))
    event = _job_event()
    assert notifier.handle(event) == "sent"
    assert notifier.handle(event) == "skipped: already sent"  # the queue delivered it again
    [received] = inbox.messages
    assert received["To"] == "owner@shop.test"
    assert received["Subject"] == "Your generation job is partially completed"
    assert received["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = received["List-Unsubscribe"].strip("<>")
    assert link.startswith(LINKS.unsubscribe_url + "?token=")
    assert link in text_part(received) and "https://app.epox.test/jobs/job1" in text_part(received)
    assert "2 of 3 items succeeded" in html_part(received)
    assert log.records[("c1", event.id)].status is EmailStatus.SENT


def test_preferences_gate_email() -> None:
    mailer = RecordingMailer()
    # Job completed is in-app only by default; the master switch off silences a type that is on.
    notifier, _, _ = _notifier(mailer, InMemoryPreferences())
    assert notifier.handle(_job_event()) == "skipped: email off"
    prefs = _prefs(credits_depleted=True)
    prefs.save("c1", prefs.get("c1").model_copy(update={"email_enabled": False}))
    notifier, _, _ = _notifier(mailer, prefs)
    depleted = new_event(
        "c1",
        EventType.CREDITS_DEPLETED,
        Subject(kind="ledger", id="c1"),
        CreditsThreshold(available=0, threshold=10),
        occurred_at=T0,
    )
    assert notifier.handle(depleted) == "skipped: email off"
    assert mailer.sent == []


def test_email_to_wins_over_the_contact_and_no_address_sends_nothing() -> None:
    mailer = RecordingMailer()
    prefs = _prefs(job_completed=True)
    prefs.save("c1", prefs.get("c1").model_copy(update={"email_to": "ops@shop.test"}))
    notifier, _, _ = _notifier(mailer, prefs)
    notifier.handle(_job_event())
    assert [m.to for m in mailer.sent] == ["ops@shop.test"]
    notifier, _, _ = _notifier(mailer, _prefs(job_completed=True), contact=None)
    assert notifier.handle(_job_event(job_id="job2")) == "skipped: no recipient"


def test_a_relay_that_is_down_raises_for_the_queue_and_marks_nothing_sent() -> None:
    mailer = SmtpMailer(host="127.0.0.1", port=free_port(), sender="mail@epox.test", starttls=False, timeout_seconds=5)
    notifier, log, _ = _notifier(mailer, _prefs(job_completed=True))
    event = _job_event()
    with pytest.raises(UpstreamUnavailable):
        notifier.handle(event)
    assert log.records == {}  # released: the retry claims it again
    with smtp_sink() as (inbox, port):
        mailer.port = port  # the relay is back
        assert notifier.handle(event) == "sent"
        assert len(inbox.messages) == 1


def test_a_live_claim_of_another_delivery_is_retried_later_and_a_dead_one_taken_over() -> None:
    mailer = RecordingMailer()
    notifier, log, _ = _notifier(mailer, _prefs(job_completed=True))
    event = _job_event()
    log.claim("c1", event.id, NotificationType.JOB_COMPLETED, T0 - timedelta(minutes=1), timedelta(minutes=5))
    with pytest.raises(EmailInFlight):
        notifier.handle(event)
    # That delivery died mid-send an hour ago: its claim has lapsed.
    log.records[("c1", event.id)] = log.records[("c1", event.id)].model_copy(
        update={"claimed_at": T0 - timedelta(hours=1)}
    )
    assert notifier.handle(event) == "sent"
    assert len(mailer.sent) == 1


def test_every_template_has_both_parts_escaped_and_its_own_unsubscribe_link() -> None:
    mailer = RecordingMailer()
    prefs = _prefs(job_completed=True, credits_low=True, credits_depleted=True, payment_failed=True)
    notifier, _, _ = _notifier(mailer, prefs)
    threshold = CreditsThreshold(available=3, threshold=10)
    failed = PaymentFailed(
        invoice_id="in_1", amount_due=2900, currency="eur", hosted_invoice_url="https://pay.stripe.test/in_1"
    )
    events = [
        _job_event(job_id="<script>x</script>"),
        _job_event(job_id="e1", kind=EventType.EDIT_JOB_COMPLETED),
        new_event("c1", EventType.CREDITS_LOW, Subject(kind="ledger", id="c1"), threshold, occurred_at=T0),
        new_event("c1", EventType.CREDITS_DEPLETED, Subject(kind="ledger", id="c1"), threshold, occurred_at=T0),
        new_event("c1", EventType.PAYMENT_FAILED, Subject(kind="invoice", id="in_1"), failed, occurred_at=T0),
    ]
    for event in events:
        assert notifier.handle(event) == "sent"
    job, edit, low, depleted, payment = mailer.sent
    assert "<script>" not in job.html and "&lt;script&gt;" in job.html
    assert "/edits/e1" in edit.text
    assert LINKS.billing_url in low.text and LINKS.billing_url in depleted.html
    assert "29.00 EUR" in payment.text and "https://pay.stripe.test/in_1" in payment.html
    kinds = []
    for message in mailer.sent:
        token = message.headers["List-Unsubscribe"].split("token=")[1].rstrip(">")
        kinds.append(tokens.verify(SECRET, token, T0).kind)
    assert kinds == ["job_completed", "job_completed", "credits_low", "credits_depleted", "payment_failed"]


def test_store_emails_say_what_happened_and_link_the_store_page() -> None:
    from shared.events.model import StoreChanged

    mailer = RecordingMailer()
    notifier, _, _ = _notifier(mailer, InMemoryPreferences())  # both are emailed by default
    lost = StoreChanged(store_id="store_1", platform="woocommerce", reason="the keys were <revoked>.")
    gone = StoreChanged(store_id="store_1", platform="shopify", reason="the app was uninstalled")
    subject = Subject(kind="store", id="store_1")
    for kind, payload in ((EventType.STORE_NEEDS_REAUTHORIZATION, lost), (EventType.STORE_DISCONNECTED, gone)):
        assert notifier.handle(new_event("c1", kind, subject, payload, occurred_at=T0)) == "sent"
    reconnect, disconnected = mailer.sent
    assert reconnect.subject == "Reconnect your WooCommerce store"
    assert "Reason: the keys were <revoked>." in reconnect.text and "&lt;revoked&gt;" in reconnect.html
    assert disconnected.subject == "Your Shopify store was disconnected"
    assert "/stores" in disconnected.text and "List-Unsubscribe" in disconnected.headers
