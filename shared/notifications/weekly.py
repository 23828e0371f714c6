"""The weekly summary email (Cloud Scheduler, ``POST /jobs/weekly-summary`` on notifications_tasks).

Per client whose ``weekly_summary`` email is on: images generated, credits used in the last 7 days and
credits left. Each client is processed in isolation (:mod:`shared.scheduled`); the email is claimed
under ``clients/{c}/emails/weekly-{ISO week}``, so a second run in the same week (a retry after some
clients failed) sends nobody a second summary.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import datetime, timedelta

from pydantic import Field

from shared.ledger.model import EntryType
from shared.ledger.service import Ledger
from shared.ledger.store import LedgerReader
from shared.mail.port import Mailer
from shared.notifications import email_templates as templates
from shared.notifications.email import EmailLog, send_once
from shared.notifications.email_templates import MailLinks, WeeklySummary
from shared.notifications.preferences import NotificationType, PreferencesStore
from shared.scheduled import ScheduledReport, isolated
from shared.tenancy import ClientDirectory

WEEK = timedelta(days=7)


class WeeklyReport(ScheduledReport):
    job: str = "weekly-summary"
    week: str
    clients_checked: int = 0
    sent: list[str] = Field(default_factory=list)
    skipped: dict[str, str] = Field(default_factory=dict)


def iso_week(now: datetime) -> str:
    year, week, _ = now.isocalendar()
    return f"{year}-W{week:02d}"


class GeneratedImages(ABC):
    """Port: the images the generation jobs of a client made (Firestore adapter:
    :mod:`shared.adapters.firestore.activity`)."""

    @abstractmethod
    def between(self, client_id: str, since: datetime, until: datetime) -> int:
        """Images made by the generation jobs that finished in [since, until)."""


def credits_used(reader: LedgerReader, client_id: str, since: datetime, until: datetime) -> int:
    """Credits charged (captures) in [since, until)."""
    return sum(entry.amount for entry in reader.entries_between(client_id, EntryType.CAPTURE, since, until))


def send_weekly_summaries(
    *,
    reader: LedgerReader,
    ledger: Ledger,
    images: GeneratedImages,
    preferences: PreferencesStore,
    directory: ClientDirectory,
    emails: EmailLog,
    mailer: Callable[[], Mailer],
    links: MailLinks,
    now: datetime,
) -> WeeklyReport:
    """One summary per client that wants it, once per ISO week; failures recorded per client."""
    week = iso_week(now)
    report = WeeklyReport(week=week)
    kind = NotificationType.WEEKLY_SUMMARY
    for client_id in reader.ledger_clients():
        report.clients_checked += 1
        with isolated(report.job, client_id, report.failed):
            prefs = preferences.get(client_id)
            if not prefs.wants_email(kind):
                report.skipped[client_id] = "email off"
                continue
            to = prefs.email_to or directory.contact_email(client_id)
            if not to:
                report.skipped[client_id] = "no recipient"
                continue
            since = now - WEEK
            summary = WeeklySummary(
                week=week,
                images_generated=images.between(client_id, since, now),
                credits_used=credits_used(reader, client_id, since, now),
                credits_left=ledger.state(client_id).available,
            )
            message = templates.weekly_summary(to, client_id, summary, links, now)
            outcome = send_once(emails, mailer(), client_id, f"weekly-{week}", kind, message, now)
            if outcome == "sent":
                report.sent.append(client_id)
            else:
                report.skipped[client_id] = outcome
    return report
