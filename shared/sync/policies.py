"""Sync-back's limits and services, built from the settings and the platform (the composition side)."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from shared.batch.kind import BatchPolicy
from shared.sync.gallery import StoreAccess
from shared.sync.push import PushPolicy

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.platform import Platform

# Sync holds no credits; the hold TTL only bounds a hold a free job never takes.
SYNC_HOLD_TTL = timedelta(days=30)
PUSH_LEASE = timedelta(minutes=10)
SYNC_READ_BYTES = 100 * 1024 * 1024
SYNC_READ_PIXELS = 120_000_000


def sync_batch_policy(settings: Settings) -> BatchPolicy:
    return BatchPolicy(
        max_attempts=settings.tasks_max_attempts,
        hold_ttl=SYNC_HOLD_TTL,
        fanout_page=settings.sync_fanout_page,
        counter_shards=settings.generation_counter_shards,
    )


def sync_push_policy(settings: Settings) -> PushPolicy:
    from shared.imaging import ImageLimits

    return PushPolicy(
        source_ttl=timedelta(hours=settings.sync_source_url_hours),
        poll_budget=settings.sync_poll_seconds,
        push_lease=PUSH_LEASE,
        # Our own assets, read to be pushed: upscales can be far larger than an upload may be (they
        # are scaled down to the store's limit before pushing).
        image_limits=ImageLimits(max_bytes=SYNC_READ_BYTES, max_pixels=SYNC_READ_PIXELS, max_side=20_000),
    )


def store_access(platform: Platform) -> StoreAccess:
    from shared.stores.policies import connection_policy

    return StoreAccess(
        stores=platform.stores,
        cipher=platform.credential_cipher,
        shopify=lambda: platform.shopify_admin,
        woocommerce=lambda: platform.woocommerce,
        policy=connection_policy(platform.settings),
        clock=platform.clock,
    )
