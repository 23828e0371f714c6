"""Billing objects built from settings in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datetime import datetime

    from shared.billing.catalog import PriceIds
    from shared.billing.events import WebhookProcessor
    from shared.billing.store import BillingAccounts, BillingStore
    from shared.platform import Platform


def price_ids(platform: Platform) -> PriceIds:
    from shared.billing.catalog import PriceIds

    return PriceIds(platform.settings.stripe_price_ids)


def billing_store(platform: Platform) -> BillingStore:
    """The webhook's and the daily job's billing port (also a :class:`BillingReader` for guards)."""
    return platform.billing


def billing_accounts(platform: Platform) -> BillingAccounts:
    """The billing API's port: the client's billing, its Stripe customer, its onboarding."""
    return platform.billing


def webhook_processor(platform: Platform, now: datetime) -> WebhookProcessor:
    from shared.billing.catalog import load_catalog
    from shared.billing.events import WebhookProcessor

    return WebhookProcessor(
        billing_store(platform), platform.ledger, load_catalog(), price_ids(platform), now, platform.payment_gateway
    )
