"""Email end to end on the emulator, with a real SMTP server on loopback (aiosmtpd): what the relay
receives, the unsubscribe link through the real ``notifications_api``, a relay that is down, the weekly
summary through ``notifications_tasks``, and the contact address taken from the sign-in token."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest

from shared.errors import UpstreamUnavailable
from shared.events.model import CreditsThreshold, DomainEvent, EventType, JobCompleted, Subject, new_event
from shared.ledger.model import Actor, GrantSource
from shared.mail import tokens
from shared.notifications.preferences import ChannelPreference, NotificationPreferences, NotificationType
from tests.conftest import TASK_SECRET
from tests.smtp_sink import Inbox, free_port, html_part, smtp_sink, text_part

pytestmark = pytest.mark.integration

SECRET = "integration-unsubscribe-secret"
PUBLIC = "https://api.epox.test/notifications_api"
SCHEDULER = {"Authorization": f"Bearer {TASK_SECRET}"}
ADMIN = Actor(kind="admin", id="a1")


@dataclass
class Mail:
    stack: Any
    platform: Any
    inbox: Inbox
    port: int


@pytest.fixture
def mail(stack: Any, settings: Any) -> Iterator[Mail]:
    """The stack's platform, pointed at an SMTP server of its own."""
    from shared.platform import Platform, set_platform

    with smtp_sink() as (inbox, port):
        mail_settings = settings.model_copy(
            update={
                "smtp_host": "127.0.0.1",
                "smtp_port": port,
                "smtp_starttls": False,
                "smtp_timeout_seconds": 5.0,
                "mail_from": "Epox <notifications@epox.test>",
                "mail_unsubscribe_secret": _secret(SECRET),
                "public_base_url": PUBLIC,
                "app_url": "https://app.epox.test",
            }
        )
        base = stack.platform
        platform = Platform(
            mail_settings,
            db=base.db,
            object_store=base.object_store,
            task_queue=base.task_queue,
            fetcher=base.fetcher,
        )
        set_platform(platform)
        stack.platform = platform
        try:
            yield Mail(stack=stack, platform=platform, inbox=inbox, port=port)
        finally:
            set_platform(base)
            stack.platform = base


def _secret(value: str) -> Any:
    from pydantic import SecretStr

    return SecretStr(value)


def _wants(platform: Any, client_id: str, *kinds: NotificationType, contact: str = "owner@shop.test") -> None:
    platform.client_directory.set_contact_email(client_id, contact)
    channels = {kind: ChannelPreference(email=True) for kind in kinds}
    platform.notification_preferences.save(client_id, NotificationPreferences(channels=channels))


def _low(client_id: str, n: int = 0) -> DomainEvent:
    payload = CreditsThreshold(available=4, threshold=10)
    subject = Subject(kind="ledger", id=client_id)
    return new_event(client_id, EventType.CREDITS_LOW, subject, payload, occurred_at=datetime.now(UTC), discriminator=n)


def _path(link: str) -> str:
    """The link's path below notifications_api, with its query: what the function's router sees."""
    parts = urlsplit(link)
    assert link.startswith(PUBLIC + "/unsubscribe?")
    return parts.path.removeprefix(urlsplit(PUBLIC).path) + "?" + parts.query


def test_the_unsubscribe_link_works_end_to_end(mail: Mail, client_id: str) -> None:
    _wants(mail.platform, client_id, NotificationType.CREDITS_LOW, NotificationType.CREDITS_DEPLETED)
    notifier = mail.platform.email_notifier()
    assert notifier.handle(_low(client_id)) == "sent"
    [received] = mail.inbox.messages
    assert received["To"] == "owner@shop.test"
    assert received["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = received["List-Unsubscribe"].strip("<>")
    assert link in text_part(received)
    assert "https://app.epox.test" not in link and "4 credits" in html_part(received)

    api = mail.stack.client("notifications_api")
    page = api.get(_path(link))
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert "credits low" in page.get_data(as_text=True) and 'method="post"' in page.get_data(as_text=True)
    assert mail.platform.notification_preferences.get(client_id).wants_email(NotificationType.CREDITS_LOW)

    # A mail client's RFC 8058 one-click POST.
    done = api.post(_path(link), data="List-Unsubscribe=One-Click", content_type="application/x-www-form-urlencoded")
    assert done.status_code == 200 and "no longer receive" in done.get_data(as_text=True)
    prefs = mail.platform.notification_preferences.get(client_id)
    assert not prefs.wants_email(NotificationType.CREDITS_LOW)
    assert prefs.wants_email(NotificationType.CREDITS_DEPLETED)  # only that type
    assert api.post(_path(link)).status_code == 200  # again: nothing left to change, same page

    assert notifier.handle(_low(client_id, 1)) == "skipped: email off"
    assert len(mail.inbox.messages) == 1


@pytest.mark.parametrize("method", ["get", "post"])
def test_a_forged_expired_or_malformed_token_gets_the_error_page_and_changes_nothing(
    mail: Mail, client_id: str, method: str
) -> None:
    _wants(mail.platform, client_id, NotificationType.CREDITS_LOW)
    api = mail.stack.client("notifications_api")
    now = datetime.now(UTC)
    forged = tokens.sign("not our secret", client_id, "credits_low", now)
    expired = tokens.sign(SECRET, client_id, "credits_low", now - timedelta(days=91))
    unknown_type = tokens.sign(SECRET, client_id, "no_such_type", now)
    for token in (forged, expired, unknown_type, "garbage", ""):
        response = getattr(api, method)("/unsubscribe", query_string={"token": token})
        assert response.status_code == 400, token
        assert response.mimetype == "text/html"
        assert "Nothing was changed" in response.get_data(as_text=True)
    assert mail.platform.notification_preferences.get(client_id).wants_email(NotificationType.CREDITS_LOW)


def test_a_relay_that_is_down_is_retried_and_sends_once(mail: Mail, client_id: str, db: Any) -> None:
    _wants(mail.platform, client_id, NotificationType.JOB_COMPLETED)
    payload = JobCompleted(job_id="job1", status="completed", items=2, succeeded=2, failed=0, charged=4, refunded=0)
    event = new_event(
        client_id,
        EventType.GENERATION_JOB_COMPLETED,
        Subject(kind="job", id="job1"),
        payload,
        occurred_at=datetime.now(UTC),
    )
    notifier = mail.platform.email_notifier()
    mailer = mail.platform.mailer
    mailer.port = free_port()  # the relay goes away
    with pytest.raises(UpstreamUnavailable):
        notifier.handle(event)
    marker = db.collection("clients").document(client_id).collection("emails").document(event.id)
    assert not marker.get().exists  # nothing marked sent: the queue's retry sends it
    mailer.port = mail.port  # back
    assert notifier.handle(event) == "sent"
    assert notifier.handle(event) == "skipped: already sent"  # redelivered
    assert len(mail.inbox.messages) == 1
    assert marker.get().to_dict()["status"] == "sent"


def test_the_weekly_summary_says_what_happened_and_is_sent_once_a_week(mail: Mail, client_id: str, db: Any) -> None:
    platform = mail.platform
    _wants(platform, client_id, NotificationType.WEEKLY_SUMMARY, contact="weekly@shop.test")
    ledger = platform.ledger
    ledger.grant(client_id, key="g", amount=100, source=GrantSource.PACK, actor=ADMIN, reason="t")
    hold = ledger.reserve(client_id, key="r", amount=10, actor=ADMIN, purpose="job", ttl=timedelta(hours=1))
    ledger.capture(client_id, hold["hold_id"], amount=6, actor=ADMIN, reason="job done")
    now = datetime.now(UTC)
    jobs = db.collection("clients").document(client_id).collection("jobs")
    for job_id, finished, images in (("recent", now - timedelta(days=1), 3), ("old", now - timedelta(days=9), 50)):
        jobs.document(job_id).set({"id": job_id, "created_at": finished, "finished_at": finished})
        jobs.document(job_id).collection("counters").document("000").set({"succeeded_slots": images - 1})
        jobs.document(job_id).collection("counters").document("001").set({"succeeded_slots": 1, "failed_slots": 2})

    tasks = mail.stack.client("notifications_tasks")
    first = tasks.post("/jobs/weekly-summary", headers=SCHEDULER)
    body = first.json
    assert first.status_code == 200 or client_id not in body["failed"], body
    assert client_id in body["sent"]
    mine = [m for m in mail.inbox.messages if m["To"] == "weekly@shop.test"]
    assert len(mine) == 1
    text = text_part(mine[0])
    assert "Images generated: 3." in text
    assert "Credits used: 6." in text
    assert "Credits left: 94." in text
    assert mine[0]["List-Unsubscribe"]

    again = tasks.post("/jobs/weekly-summary", headers=SCHEDULER).json
    assert again["skipped"][client_id] == "skipped: already sent"
    assert len([m for m in mail.inbox.messages if m["To"] == "weekly@shop.test"]) == 1


def test_the_sign_in_email_claim_is_the_contact(mail: Mail, client_id: str, db: Any) -> None:
    token = mail.stack.issuer.mint(client_id, extra={"email": "founder@shop.test"})
    response = mail.stack.client("credits_api").get("/balance", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    record = db.collection("clients").document(client_id).get().to_dict()
    assert record["contact_email"] == "founder@shop.test"


def test_without_mail_settings_the_routes_say_what_is_missing(stack: Any, client_id: str) -> None:
    """The default test stack has no SMTP relay and no unsubscribe key: a clear 503, never a 500."""
    from shared.errors import VendorNotConfigured

    response = stack.client("notifications_api").get("/unsubscribe", query_string={"token": "x"})
    assert response.status_code == 503
    assert response.json["code"] == "vendor_not_configured"
    assert response.json["settings"] == ["MAIL_UNSUBSCRIBE_SECRET"]
    with pytest.raises(VendorNotConfigured) as caught:
        stack.platform.mailer.send  # noqa: B018 - building the adapter is what is checked
    assert caught.value.extensions["settings"] == ["SMTP_HOST", "MAIL_FROM"]


@pytest.fixture(params=["firestore", "memory"])
def email_log(request: pytest.FixtureRequest, db: Any) -> Any:
    from shared.adapters.firestore.emails import FirestoreEmailLog
    from tests.fakes_mail import InMemoryEmailLog

    return FirestoreEmailLog(db) if request.param == "firestore" else InMemoryEmailLog()


def test_the_sent_markers_keep_the_same_rules_on_firestore_and_in_memory(email_log: Any, client_id: str) -> None:
    """One contract for the adapter and its fake: the first claim wins, a live claim is in flight, a
    lapsed one is taken over, a sent or refused email is never claimed again, a released one is."""
    from shared.notifications.email import EmailInFlight, EmailStatus

    kind, lease, t0 = NotificationType.JOB_COMPLETED, timedelta(minutes=5), datetime.now(UTC)
    assert email_log.claim(client_id, "e1", kind, t0, lease) is True
    with pytest.raises(EmailInFlight):
        email_log.claim(client_id, "e1", kind, t0 + timedelta(minutes=1), lease)
    assert email_log.claim(client_id, "e1", kind, t0 + timedelta(minutes=6), lease) is True  # the first died
    email_log.finish(client_id, "e1", EmailStatus.SENT, t0 + timedelta(minutes=6))
    assert email_log.claim(client_id, "e1", kind, t0 + timedelta(days=1), lease) is False

    assert email_log.claim(client_id, "e2", kind, t0, lease) is True
    email_log.release(client_id, "e2")
    assert email_log.claim(client_id, "e2", kind, t0, lease) is True
    email_log.finish(client_id, "e2", EmailStatus.REFUSED, t0)
    assert email_log.claim(client_id, "e2", kind, t0 + timedelta(hours=1), lease) is False
