"""The store side's policies and services, built from settings and the platform's adapters in one place."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from shared.stores.connections import ConnectionPolicy
from shared.stores.imports import StoreImportPolicy, StoreServices
from shared.stores.keeping import WebhookServices
from shared.stores.mirror import MirrorServices

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.platform import Platform


def connection_policy(settings: Settings) -> ConnectionPolicy:
    return ConnectionPolicy(
        callback_base_url=settings.store_callback_base_url,
        webhook_base_url=settings.store_webhook_base_url,
        app_url=settings.app_url,
        app_name=settings.store_app_name,
        state_ttl=timedelta(minutes=settings.store_oauth_state_minutes),
    )


def store_import_policy(settings: Settings) -> StoreImportPolicy:
    return StoreImportPolicy(
        chunk_rows=settings.import_chunk_rows,
        budget_seconds=min(120.0, settings.store_tasks_timeout_seconds / 3),
        task_timeout=timedelta(seconds=settings.store_tasks_timeout_seconds),
        max_attempts=settings.tasks_max_attempts,
    )


def store_services(platform: Platform) -> StoreServices:
    return StoreServices(
        stores=platform.stores,
        cipher=platform.credential_cipher,
        shopify=lambda: platform.shopify_admin,
        woocommerce=lambda: platform.woocommerce,
        policy=connection_policy(platform.settings),
    )


def mirror_services(platform: Platform) -> MirrorServices:
    from shared.catalog.policies import import_policy

    policy = import_policy(platform.settings)
    return MirrorServices(
        repos=platform.catalog,
        object_store=platform.object_store,
        fetcher=platform.fetcher,
        image_limits=policy.image_limits,
        fetch_limits=policy.fetch_limits,
        thumbnail_max_side=policy.thumbnail_max_side,
        watchers=platform.store_watchers(),
    )


def webhook_services(platform: Platform) -> WebhookServices:
    return WebhookServices(
        stores=platform.stores,
        cipher=platform.credential_cipher,
        shopify=lambda: platform.shopify_admin,
        woocommerce=lambda: platform.woocommerce,
        policy=connection_policy(platform.settings),
        mirror=mirror_services(platform),
        clock=platform.clock,
    )
