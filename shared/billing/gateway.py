"""The payment provider port and its Stripe adapter (the real ``stripe`` library's StripeClient).

Stripe errors become ours: card/validation problems are 4xx problems, connection errors, rate
limits and Stripe's 5xx are 503 with Retry-After, and Stripe refusing our own API key (401/403) is
a 502 logged as an error: the merchant cannot fix it, the operator must. Creating a customer carries an idempotency key
derived from the client id, so a retried request never makes a second customer.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.config import require_vendor_settings
from shared.errors import BadRequest, UpstreamRejectedCredentials, UpstreamUnavailable

if TYPE_CHECKING:
    from shared.config import Settings

logger = logging.getLogger("epox.billing")


@dataclass(frozen=True)
class SubscriptionInfo:
    """What Stripe says about a subscription now."""

    status: str
    ended_at: int | None = None  # when it ended (Stripe's time), if it did


@dataclass(frozen=True)
class CheckoutLine:
    price_id: str
    quantity: int = 1


class PaymentGateway(ABC):
    @abstractmethod
    def create_customer(self, client_id: str, email: str | None, attempt: int = 0) -> str:
        """Create the client's customer; ``attempt`` > 0 after a failed try (a fresh idempotency key)."""

    @abstractmethod
    def create_checkout(
        self,
        *,
        client_id: str,
        customer_id: str,
        mode: str,
        line: CheckoutLine,
        success_url: str,
        cancel_url: str,
        metadata: dict[str, str],
        idempotency_key: str,
    ) -> tuple[str, str]:
        """Create a Checkout Session; returns (session id, url)."""

    @abstractmethod
    def create_portal(self, customer_id: str, return_url: str) -> str: ...

    @abstractmethod
    def list_invoices(
        self, customer_id: str, limit: int, starting_after: str | None
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of the customer's invoices (newest first) and whether there are more."""

    @abstractmethod
    def subscription(self, subscription_id: str) -> SubscriptionInfo | None:
        """Stripe's current status of a subscription (``None``: Stripe does not know it)."""

    @abstractmethod
    def cancel_subscription(self, subscription_id: str) -> bool:
        """Cancel a subscription now (no proration credit, no final invoice). False when it was not
        live any more (already canceled or unknown): cancelling is idempotent."""

    @abstractmethod
    def refund_invoice(self, invoice_id: str, *, reason: str) -> list[str]:
        """Refund every payment of an invoice in full; the ids of the refunds made (an invoice refunded
        before gives none). Safe to repeat: each payment's refund carries an idempotency key."""


class StripeGateway(PaymentGateway):
    def __init__(self, api_key: str, api_base: str | None = None, max_network_retries: int = 2) -> None:
        self.api_key = api_key
        self.api_base = api_base
        self.max_network_retries = max_network_retries
        self._client: Any = None

    @classmethod
    def from_settings(cls, settings: Settings) -> StripeGateway:
        return cls(settings.stripe_api_key.get_secret_value(), settings.stripe_api_base or None)

    @property
    def client(self) -> Any:
        if self._client is None:
            import stripe

            require_vendor_settings("Stripe", {"STRIPE_API_KEY": self.api_key})
            options: dict[str, Any] = {"max_network_retries": self.max_network_retries}
            if self.api_base:
                options["base_addresses"] = {"api": self.api_base}
            self._client = stripe.StripeClient(self.api_key, **options)
        return self._client

    def _call(self, call: Any) -> Any:
        import stripe

        try:
            return call()
        except stripe.StripeError as exc:
            raise _translated(exc) from exc

    def create_customer(self, client_id: str, email: str | None, attempt: int = 0) -> str:
        params: dict[str, Any] = {"metadata": {"client_id": client_id}}
        if email:
            params["email"] = email
        key = f"epox-customer-{client_id}" + (f"-{attempt}" if attempt else "")
        customer = self._call(lambda: self.client.v1.customers.create(params=params, options={"idempotency_key": key}))
        return str(customer.id)

    def create_checkout(
        self,
        *,
        client_id: str,
        customer_id: str,
        mode: str,
        line: CheckoutLine,
        success_url: str,
        cancel_url: str,
        metadata: dict[str, str],
        idempotency_key: str,
    ) -> tuple[str, str]:
        params: dict[str, Any] = {
            "mode": mode,
            "customer": customer_id,
            "client_reference_id": client_id,
            "line_items": [{"price": line.price_id, "quantity": line.quantity}],
            "success_url": success_url,
            "cancel_url": cancel_url,
            "metadata": metadata,
        }
        if mode == "subscription":
            params["subscription_data"] = {"metadata": metadata}
        else:
            params["payment_intent_data"] = {"metadata": metadata}
            # A paid invoice for the one-time purchase, so a credit pack appears in the billing history
            # with a receipt (hosted invoice and PDF) like a subscription's months do. It is paid and has
            # no subscription: the webhook records it without granting anything (the session grants).
            params["invoice_creation"] = {
                "enabled": True,
                "invoice_data": {"metadata": metadata, "description": "Epox credit pack"},
            }
        session = self._call(
            lambda: self.client.v1.checkout.sessions.create(params=params, options={"idempotency_key": idempotency_key})
        )
        return str(session.id), str(session.url)

    def create_portal(self, customer_id: str, return_url: str) -> str:
        session = self._call(
            lambda: self.client.v1.billing_portal.sessions.create(
                params={"customer": customer_id, "return_url": return_url}
            )
        )
        return str(session.url)

    def list_invoices(
        self, customer_id: str, limit: int, starting_after: str | None
    ) -> tuple[list[dict[str, Any]], bool]:
        params: dict[str, Any] = {"customer": customer_id, "limit": limit}
        if starting_after:
            params["starting_after"] = starting_after
        page = self._call(lambda: self.client.v1.invoices.list(params=params))
        return [invoice.to_dict() for invoice in page.data], bool(page.has_more)

    def subscription(self, subscription_id: str) -> SubscriptionInfo | None:
        import stripe

        try:
            found = self.client.v1.subscriptions.retrieve(subscription_id)
        except stripe.StripeError as exc:
            if getattr(exc, "code", None) == "resource_missing":
                return None
            raise _translated(exc) from exc
        ended_at = getattr(found, "ended_at", None)
        return SubscriptionInfo(status=str(found.status), ended_at=int(ended_at) if ended_at else None)

    def cancel_subscription(self, subscription_id: str) -> bool:
        import stripe

        try:
            # DELETE /v1/subscriptions/{id}: no idempotency key (Stripe ignores them on DELETE); a
            # second cancel answers 404 resource_missing, as for a subscription that never existed.
            self.client.v1.subscriptions.cancel(subscription_id, params={"prorate": False, "invoice_now": False})
        except stripe.StripeError as exc:
            if getattr(exc, "code", None) == "resource_missing":
                return False
            raise _translated(exc) from exc
        return True

    def refund_invoice(self, invoice_id: str, *, reason: str) -> list[str]:
        import stripe

        # Newer API versions keep an invoice's payments in InvoicePayment objects (the invoice no
        # longer names its payment intent): GET /v1/invoice_payments?invoice=…
        page = self._call(
            lambda: self.client.v1.invoice_payments.list(params={"invoice": invoice_id, "status": "paid", "limit": 100})
        )
        refunds = []
        for payment in page.data:
            payment_intent = getattr(payment.payment, "payment_intent", None)
            if not payment_intent:
                continue
            params: dict[str, Any] = {
                "payment_intent": str(payment_intent),
                "reason": "duplicate",
                "metadata": {"invoice": invoice_id, "why": reason[:500]},
            }
            key = f"epox-refund-{payment_intent}"
            try:
                refund = self.client.v1.refunds.create(params=params, options={"idempotency_key": key})
            except stripe.StripeError as exc:
                if getattr(exc, "code", None) == "charge_already_refunded":
                    continue
                raise _translated(exc) from exc
            refunds.append(str(refund.id))
        return refunds


def _translated(exc: Exception) -> Exception:
    """A Stripe library error as the project's error (see the module docstring)."""
    import stripe

    if isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError):
        return UpstreamUnavailable("Stripe is not reachable right now", retry_after=5)
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        logger.error("Stripe refused our API key (%s): check STRIPE_API_KEY", type(exc).__name__)
        return UpstreamRejectedCredentials("Billing is unavailable right now; the team has been alerted")
    message = getattr(exc, "user_message", None) or exc
    if isinstance(exc, stripe.InvalidRequestError):
        return BadRequest(f"Stripe refused the request: {message}")
    status = getattr(exc, "http_status", None) or 0
    if status >= 500 or status == 0:
        return UpstreamUnavailable("Stripe answered with an error; try again", retry_after=5)
    return BadRequest(f"Stripe refused the request: {message}")
