"""Billing's problems that routes of other functions declare (importing them loads nothing else of billing)."""

from __future__ import annotations

from shared.errors import EpoxError


class PaymentPastDue(EpoxError):
    status = 402
    code = "payment_past_due"
    title = "Payment is past due"
