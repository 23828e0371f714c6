"""The Mailer port: one message handed to a mail relay."""

from __future__ import annotations

from abc import ABC, abstractmethod

from pydantic import BaseModel, ConfigDict, Field

from shared.errors import EpoxError


class EmailMessage(BaseModel):
    """One email with a plain-text and an HTML part (the sender is the adapter's ``MAIL_FROM``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    to: str = Field(min_length=3, max_length=254)
    subject: str = Field(min_length=1, max_length=300)
    text: str
    html: str
    headers: dict[str, str] = Field(default_factory=dict)  # List-Unsubscribe and the like


class Mailer(ABC):
    """Hands messages to a mail relay (adapter: :class:`shared.mail.smtp.SmtpMailer`).

    ``send`` raises :class:`shared.errors.UpstreamUnavailable` when the relay cannot be reached or
    refuses for now (the caller retries), :class:`shared.errors.UpstreamRejectedCredentials` when it
    refuses our login, :class:`shared.errors.VendorNotConfigured` when no relay is configured,
    :class:`RecipientRefused` when the relay refuses the address for good (retrying changes nothing)."""

    @abstractmethod
    def send(self, message: EmailMessage) -> None: ...


class RecipientRefused(EpoxError):
    """The relay refused the recipient with a permanent (5xx) answer."""

    status = 422
    code = "mail_recipient_refused"
    title = "The mail relay refused the recipient"
