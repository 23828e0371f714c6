"""What a function needs from the environment in production, by group (see ``shared.config``).

Kept apart from the settings model so an entry module can declare its needs at import without loading
pydantic-settings (the settings are read on the first request).
"""

from __future__ import annotations

from collections.abc import Collection
from enum import Enum


class Need(str, Enum):
    """A group of settings a function needs in production (GCP_PROJECT is needed by every one)."""

    AUTH = "auth"  # user JWTs: AUTH_JWKS_URL, AUTH_ISSUER, AUTH_AUDIENCE
    TASK_CALLS = "task_calls"  # OIDC Cloud Tasks / Scheduler calls it receives: TASKS_*, FUNCTION_TARGET
    TASK_QUEUE = "task_queue"  # Cloud Tasks it enqueues: TASKS_LOCATION, TASKS_TARGET_BASE_URL, TASKS_SERVICE_ACCOUNT
    R2 = "r2"  # the object store: R2_ENDPOINT_URL, R2_ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY, R2_BUCKET
    GEMINI = "gemini"  # the AI engine: GEMINI_API_KEY unless GEMINI_USE_VERTEX=true
    STRIPE = "stripe"  # the Stripe API: STRIPE_API_KEY, STRIPE_PRICE_IDS
    STRIPE_WEBHOOK = "stripe_webhook"  # signed Stripe events: STRIPE_WEBHOOK_SECRET
    BILLING_PAGES = "billing_pages"  # where Stripe sends the browser back: BILLING_*_URL (https, not local)
    # Email: SMTP_HOST, MAIL_FROM, MAIL_UNSUBSCRIBE_SECRET; PUBLIC_BASE_URL and APP_URL checked by value
    MAIL = "mail"
    STORE_CREDENTIALS = "store_credentials"  # sealing/opening store credentials: STORE_CREDENTIAL_KMS_KEY
    # Store connections: the Shopify app's SHOPIFY_CLIENT_ID / SHOPIFY_CLIENT_SECRET; STORE_CALLBACK_BASE_URL,
    # STORE_WEBHOOK_BASE_URL and APP_URL checked by value (https, not local)
    STORES = "stores"


ALL_NEEDS: frozenset[Need] = frozenset(Need)
# The variables each group demands; Settings.check_production checks GEMINI, BILLING_PAGES and MAIL's URLs by value.
_REQUIRED: dict[Need, tuple[str, ...]] = {
    Need.AUTH: ("AUTH_JWKS_URL", "AUTH_ISSUER", "AUTH_AUDIENCE"),
    Need.TASK_CALLS: ("TASKS_TARGET_BASE_URL", "TASKS_SERVICE_ACCOUNT", "FUNCTION_TARGET"),
    Need.TASK_QUEUE: ("TASKS_LOCATION", "TASKS_TARGET_BASE_URL", "TASKS_SERVICE_ACCOUNT"),
    Need.R2: ("R2_ENDPOINT_URL", "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY", "R2_BUCKET"),
    Need.STRIPE: ("STRIPE_API_KEY", "STRIPE_PRICE_IDS"),
    Need.STRIPE_WEBHOOK: ("STRIPE_WEBHOOK_SECRET",),
    Need.MAIL: ("SMTP_HOST", "MAIL_FROM", "MAIL_UNSUBSCRIBE_SECRET"),
    Need.STORE_CREDENTIALS: ("STORE_CREDENTIAL_KMS_KEY",),
    Need.STORES: ("SHOPIFY_CLIENT_ID", "SHOPIFY_CLIENT_SECRET"),
}
_BILLING_PAGES = ("BILLING_SUCCESS_URL", "BILLING_CANCEL_URL", "BILLING_PORTAL_RETURN_URL")
_MAIL_LINKS = ("PUBLIC_BASE_URL", "APP_URL")  # checked by value: https, not local
_STORE_LINKS = ("STORE_CALLBACK_BASE_URL", "STORE_WEBHOOK_BASE_URL", "APP_URL")  # checked by value


def required_variables(needs: Collection[Need]) -> list[str]:
    """The environment variables production demands for these needs, sorted (GEMINI_API_KEY listed
    for GEMINI although GEMINI_USE_VERTEX=true replaces it; the billing pages and the mail links once
    they are needed)."""
    names = {"GCP_PROJECT"}
    for need in needs:
        names.update(_REQUIRED.get(need, ()))
    if Need.GEMINI in needs:
        names.add("GEMINI_API_KEY")
    if Need.BILLING_PAGES in needs:
        names.update(_BILLING_PAGES)
    if Need.MAIL in needs:
        names.update(_MAIL_LINKS)
    if Need.STORES in needs:
        names.update(_STORE_LINKS)
    return sorted(names)
