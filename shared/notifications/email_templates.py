"""The emails, in plain text and HTML: one function per template, every value escaped in the HTML part.

Each email ends with its one-click unsubscribe link (the type's own) and carries the RFC 8058 headers
(``List-Unsubscribe`` + ``List-Unsubscribe-Post``), so a mail client's "unsubscribe" button works too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from html import escape
from urllib.parse import quote

from shared.events.model import CreditsThreshold, JobCompleted, PaymentFailed, StoreChanged
from shared.mail import tokens
from shared.mail.port import EmailMessage
from shared.notifications.preferences import NotificationType


@dataclass(frozen=True)
class MailLinks:
    """Where the emails' links go, and the unsubscribe tokens' key."""

    app_url: str  # the frontend's home
    billing_url: str  # the frontend's billing page (plans, credit packs, invoices)
    unsubscribe_url: str  # notifications_api's public /unsubscribe
    unsubscribe_secret: str

    def unsubscribe(self, client_id: str, kind: NotificationType, now: datetime) -> str:
        token = tokens.sign(self.unsubscribe_secret, client_id, kind.value, now)
        return f"{self.unsubscribe_url}?token={quote(token)}"

    def app(self, path: str) -> str:
        return self.app_url.rstrip("/") + path


@dataclass(frozen=True)
class WeeklySummary:
    """One client's week: what the summary email says."""

    week: str  # ISO week, e.g. 2026-W49
    images_generated: int
    credits_used: int
    credits_left: int


_KIND_NAMES = {
    NotificationType.JOB_COMPLETED: "job completed",
    NotificationType.CREDITS_LOW: "credits low",
    NotificationType.CREDITS_DEPLETED: "credits depleted",
    NotificationType.PAYMENT_FAILED: "payment failed",
    NotificationType.WEEKLY_SUMMARY: "weekly summary",
    NotificationType.STORE_NEEDS_REAUTHORIZATION: "store needs re-authorisation",
    NotificationType.STORE_DISCONNECTED: "store disconnected",
}


def platform_name(platform: str) -> str:
    """How a store platform is spelled for people."""
    return {"shopify": "Shopify", "woocommerce": "WooCommerce"}.get(platform, platform.capitalize())


def _compose(
    to: str,
    subject: str,
    lines: list[str],
    action: tuple[str, str] | None,
    kind: NotificationType,
    unsubscribe: str,
) -> EmailMessage:
    """Text and HTML of the same content: paragraphs, one call to action, the unsubscribe footer."""
    name = _KIND_NAMES.get(kind, kind.value.replace("_", " "))
    text = "\n\n".join(lines)
    html_parts = [f"<p>{escape(line)}</p>" for line in lines]
    if action is not None:
        label, url = action
        text += f"\n\n{label}: {url}"
        html_parts.append(f'<p><a href="{escape(url, quote=True)}">{escape(label)}</a></p>')
    footer = f"You get this email because {name} emails are on. Unsubscribe from them"
    text += f"\n\n--\n{footer}: {unsubscribe}\n"
    html_parts.append(
        f'<hr><p style="color:#666;font-size:12px">{escape(footer)}: '
        f'<a href="{escape(unsubscribe, quote=True)}">unsubscribe</a>.</p>'
    )
    html = (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>'
        + escape(subject)
        + "</title></head><body>"
        + "".join(html_parts)
        + "</body></html>"
    )
    headers = {"List-Unsubscribe": f"<{unsubscribe}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    return EmailMessage(to=to, subject=subject, text=text, html=html, headers=headers)


def job_completed(
    to: str, client_id: str, kind_label: str, job: JobCompleted, links: MailLinks, now: datetime
) -> EmailMessage:
    """A generation, edit or video job finished (``kind_label``: "generation", "edit" or "video")."""
    status = job.status.replace("_", " ")
    lines = [
        f"Your {kind_label} job {job.job_id} is {status}.",
        f"{job.succeeded} of {job.items} items succeeded, {job.failed} failed"
        + (f", {job.cancelled} cancelled" if job.cancelled else "")
        + (f"; {job.images} videos produced." if kind_label == "video" else f"; {job.images} images produced."),
        f"Credits charged: {job.charged}; refunded: {job.refunded}.",
    ]
    path = {"generation": "/jobs/", "video": "/videos/jobs/"}.get(kind_label, "/edits/")
    kind = NotificationType.JOB_COMPLETED
    return _compose(
        to,
        f"Your {kind_label} job is {status}",
        lines,
        ("See the job", links.app(path + quote(job.job_id))),
        kind,
        links.unsubscribe(client_id, kind, now),
    )


def credits_low(to: str, client_id: str, credits: CreditsThreshold, links: MailLinks, now: datetime) -> EmailMessage:
    kind = NotificationType.CREDITS_LOW
    lines = [
        f"Your balance is down to {credits.available} credits (below {credits.threshold}).",
        "To keep generating, buy a credit pack or move to a larger plan on the billing page.",
    ]
    return _compose(
        to,
        "Your credits are running low",
        lines,
        ("Get more credits", links.billing_url),
        kind,
        links.unsubscribe(client_id, kind, now),
    )


def credits_depleted(
    to: str, client_id: str, credits: CreditsThreshold, links: MailLinks, now: datetime
) -> EmailMessage:
    kind = NotificationType.CREDITS_DEPLETED
    lines = [
        "You have used all your credits: new generation and edit jobs are refused until you get more.",
        "Buy a credit pack or move to a larger plan on the billing page; your monthly allotment also renews them.",
    ]
    return _compose(
        to,
        "You are out of credits",
        lines,
        ("Get more credits", links.billing_url),
        kind,
        links.unsubscribe(client_id, kind, now),
    )


def payment_failed(to: str, client_id: str, payment: PaymentFailed, links: MailLinks, now: datetime) -> EmailMessage:
    kind = NotificationType.PAYMENT_FAILED
    amount = f"{payment.amount_due / 100:.2f} {payment.currency.upper()}"
    lines = [f"We could not collect the payment of {amount} for invoice {payment.invoice_id}."]
    if payment.next_attempt_at is not None:
        lines.append(f"We will try again on {payment.next_attempt_at:%Y-%m-%d}.")
    lines.append("Please update your payment method or pay the invoice to keep your plan.")
    url = payment.hosted_invoice_url or links.billing_url
    label = "Pay the invoice" if payment.hosted_invoice_url else "Open billing"
    return _compose(to, "Your payment failed", lines, (label, url), kind, links.unsubscribe(client_id, kind, now))


def store_changed(
    to: str, client_id: str, kind: NotificationType, store: StoreChanged, links: MailLinks, now: datetime
) -> EmailMessage:
    """The store needs to be connected again, or was disconnected (by the merchant or an uninstall)."""
    platform = platform_name(store.platform)
    if kind is NotificationType.STORE_NEEDS_REAUTHORIZATION:
        subject = f"Reconnect your {platform} store"
        lines = [f"Your {platform} store no longer accepts Epox's access, so imports and syncs are paused."]
        action = "Reconnect the store"
    else:
        subject = f"Your {platform} store was disconnected"
        lines = [f"Your {platform} store was disconnected from Epox; your products and images stay in Epox."]
        action = "Open your store settings"
    if store.reason:
        lines.append(f"Reason: {store.reason.rstrip('.')}.")
    return _compose(to, subject, lines, (action, links.app("/stores")), kind, links.unsubscribe(client_id, kind, now))


def weekly_summary(to: str, client_id: str, summary: WeeklySummary, links: MailLinks, now: datetime) -> EmailMessage:
    kind = NotificationType.WEEKLY_SUMMARY
    lines = [
        f"Your week ({summary.week}):",
        f"Images generated: {summary.images_generated}.",
        f"Credits used: {summary.credits_used}.",
        f"Credits left: {summary.credits_left}.",
    ]
    return _compose(
        to,
        f"Your weekly summary ({summary.week})",
        lines,
        ("Open Epox", links.app("/")),
        kind,
        links.unsubscribe(client_id, kind, now),
    )
