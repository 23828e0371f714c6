"""One-click unsubscribe: a signed link turns one notification type's email off, without a login.

``GET`` shows a confirmation page with a button (link scanners and previews fetch GETs, so a GET
changes nothing, as RFC 8058 asks); ``POST`` (the button, or a mail client's one-click
``List-Unsubscribe-Post``) turns the type's email off. A forged, altered, expired or malformed token
changes nothing and gets the error page.
"""

from __future__ import annotations

from datetime import datetime
from html import escape

from shared.mail import tokens
from shared.mail.tokens import InvalidUnsubscribeToken, Unsubscribe
from shared.notifications.preferences import NotificationType, PreferencesStore

_NAMES = {
    NotificationType.JOB_COMPLETED: "job completed",
    NotificationType.IMPORT_COMPLETED: "import completed",
    NotificationType.CREDITS_LOW: "credits low",
    NotificationType.CREDITS_DEPLETED: "credits depleted",
    NotificationType.SUBSCRIPTION_CHANGED: "subscription changed",
    NotificationType.PAYMENT_FAILED: "payment failed",
    NotificationType.STORE_NEEDS_REAUTHORIZATION: "store needs re-authorisation",
    NotificationType.STORE_CONNECTED: "store connected",
    NotificationType.STORE_DISCONNECTED: "store disconnected",
    NotificationType.SYNC_COMPLETED: "sync completed",
    NotificationType.SYNC_FAILED: "sync failed",
    NotificationType.WEEKLY_SUMMARY: "weekly summary",
}


def verify(secret: str, token: str, now: datetime) -> tuple[Unsubscribe, NotificationType]:
    """The request a genuine token carries, for a type that exists; :class:`InvalidUnsubscribeToken` else."""
    request = tokens.verify(secret, token, now)
    try:
        kind = NotificationType(request.kind)
    except ValueError as exc:
        raise InvalidUnsubscribeToken() from exc
    return request, kind


def unsubscribe(preferences: PreferencesStore, secret: str, token: str, now: datetime) -> NotificationType:
    """Turn the token's type of email off for its client (again: a no-op); the type."""
    request, kind = verify(secret, token, now)
    current = preferences.get(request.client_id)
    channel = current.channel(kind)
    if channel.email:
        channels = {**current.channels, kind: channel.model_copy(update={"email": False})}
        preferences.save(request.client_id, current.model_copy(update={"channels": channels}))
    return kind


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="robots" content="noindex"><title>{escape(title)}</title></head>'
        '<body style="font-family:sans-serif;max-width:36em;margin:3em auto">'
        f"<h1>{escape(title)}</h1>{body}</body></html>"
    )


def confirmation_page(kind: NotificationType, token: str) -> str:
    """The GET answer: what the button will do, and the button (a POST to the same link)."""
    name = escape(_NAMES[kind])
    action = "?token=" + escape(token, quote=True)
    return _page(
        "Unsubscribe",
        f"<p>Stop receiving <strong>{name}</strong> emails?</p>"
        f'<form method="post" action="{action}"><button type="submit">Unsubscribe</button></form>'
        "<p>You can turn them back on in your notification settings.</p>",
    )


def done_page(kind: NotificationType) -> str:
    return _page(
        "Unsubscribed",
        f"<p>You will no longer receive <strong>{escape(_NAMES[kind])}</strong> emails.</p>"
        "<p>You can turn them back on in your notification settings.</p>",
    )


def error_page(error: InvalidUnsubscribeToken) -> str:
    return _page(
        "This link does not work",
        f"<p>{escape(error.detail)}. Nothing was changed.</p>"
        "<p>Links in our emails stop working after 90 days; you can change which emails you get in your "
        "notification settings.</p>",
    )
