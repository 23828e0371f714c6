"""The SMTP adapter of the Mailer port, on the standard library's ``smtplib``.

Every provider's relay speaks SMTP: STARTTLS when configured, a login when credentials are set, a
timeout on every socket operation. smtplib's and the socket's errors become ours: a relay that is
down, refuses the connection or answers a temporary 4xx is :class:`UpstreamUnavailable` (the queue
retries the delivery), a refused login :class:`UpstreamRejectedCredentials`.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage as MimeMessage
from email.utils import make_msgid

from pydantic import SecretStr

from shared import logging as log
from shared.config import Settings, require_vendor_settings
from shared.errors import UpstreamRejectedCredentials, UpstreamUnavailable
from shared.mail.port import EmailMessage, Mailer, RecipientRefused

logger = log.get_logger("epox.mail")


class SmtpMailer(Mailer):
    """One SMTP session per message (a function instance sends few mails; a session held open would
    be closed by the relay between them anyway)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        sender: str,
        username: str = "",
        password: SecretStr | None = None,
        starttls: bool = True,
        timeout_seconds: float = 20.0,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        """``tls_context``: the certificates STARTTLS trusts (default: the system's; tests pass their own CA)."""
        self.host = host
        self.port = port
        self.sender = sender
        self.username = username
        self.password = password or SecretStr("")
        self.starttls = starttls
        self.timeout_seconds = timeout_seconds
        self.tls_context = tls_context

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpMailer:
        require_vendor_settings("Email (SMTP)", {"SMTP_HOST": settings.smtp_host, "MAIL_FROM": settings.mail_from})
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            sender=settings.mail_from,
            username=settings.smtp_username,
            password=settings.smtp_password,
            starttls=settings.smtp_starttls,
            timeout_seconds=settings.smtp_timeout_seconds,
        )

    def mime(self, message: EmailMessage) -> MimeMessage:
        """The MIME message: multipart/alternative, plain text first (clients show the last they can)."""
        mime = MimeMessage()
        mime["From"] = self.sender
        mime["To"] = message.to
        mime["Subject"] = message.subject
        domain = self.sender.rpartition("@")[2].strip("> ") or None
        mime["Message-ID"] = make_msgid(domain=domain)
        for name, value in message.headers.items():
            mime[name] = value
        mime.set_content(message.text)
        mime.add_alternative(message.html, subtype="html")
        return mime

    def send(self, message: EmailMessage) -> None:
        mime = self.mime(message)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout_seconds) as smtp:
                if self.starttls:
                    smtp.starttls(context=self.tls_context or ssl.create_default_context())
                if self.username:
                    smtp.login(self.username, self.password.get_secret_value())
                smtp.send_message(mime)
        except smtplib.SMTPAuthenticationError as exc:
            logger.error("the SMTP relay %s refused our login (%s)", self.host, exc.smtp_code)
            raise UpstreamRejectedCredentials("The mail relay refused our credentials") from exc
        except smtplib.SMTPNotSupportedError as exc:
            # STARTTLS or AUTH configured but not offered: a configuration fault, retried until fixed.
            logger.error("the SMTP relay %s does not support what is configured: %s", self.host, exc)
            raise UpstreamUnavailable("The mail relay does not support the configured STARTTLS/login") from exc
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            if codes and all(500 <= code < 600 for code in codes):
                # A permanent refusal of the address: retrying changes nothing.
                raise RecipientRefused("The mail relay refused the recipient") from exc
            raise UpstreamUnavailable("The mail relay refused the recipient for now") from exc
        except smtplib.SMTPResponseException as exc:
            raise UpstreamUnavailable(f"The mail relay answered {exc.smtp_code}") from exc
        except (smtplib.SMTPException, OSError) as exc:  # refused, unreachable, timed out, TLS failed, dropped
            raise UpstreamUnavailable(f"The mail relay cannot be reached: {type(exc).__name__}") from exc
