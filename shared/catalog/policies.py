"""Limits of the catalog services, built from settings in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.catalog.imports import ImportPolicy
    from shared.catalog.uploads import UploadPolicy
    from shared.config import Settings
    from shared.imaging import ImageLimits


def image_limits(settings: Settings) -> ImageLimits:
    from shared.imaging import ImageLimits

    return ImageLimits(max_bytes=settings.upload_max_bytes, max_pixels=settings.image_max_pixels)


def upload_policy(settings: Settings) -> UploadPolicy:
    from shared.catalog.uploads import UploadPolicy

    return UploadPolicy(
        image_max_bytes=settings.upload_max_bytes,
        csv_max_bytes=settings.csv_max_bytes,
        xlsx_max_uncompressed_bytes=settings.xlsx_max_uncompressed_bytes,
        presign_expiry_seconds=settings.presign_expiry_seconds,
        image_limits=image_limits(settings),
        thumbnail_max_side=settings.thumbnail_max_side,
        max_pending=settings.upload_max_pending,
    )


def import_policy(settings: Settings) -> ImportPolicy:
    from datetime import timedelta

    from shared.catalog.imports import ImportPolicy
    from shared.catalog.models import IMAGE_CONTENT_TYPES
    from shared.safe_fetch import FetchLimits

    return ImportPolicy(
        chunk_rows=settings.import_chunk_rows,
        max_rows=settings.import_max_rows,
        csv_max_bytes=settings.csv_max_bytes,
        xlsx_max_uncompressed_bytes=settings.xlsx_max_uncompressed_bytes,
        image_limits=image_limits(settings),
        thumbnail_max_side=settings.thumbnail_max_side,
        max_attempts=settings.tasks_max_attempts,
        parallel_chunks=settings.import_parallel_chunks,
        chunk_budget_seconds=settings.import_chunk_budget_seconds,
        task_timeout=timedelta(seconds=settings.catalog_tasks_timeout_seconds),
        stale_after=timedelta(minutes=settings.import_stale_minutes),
        fetch_limits=FetchLimits(
            max_bytes=min(settings.fetch_max_bytes, settings.upload_max_bytes),
            total_timeout=settings.fetch_timeout_seconds,
            allowed_content_types=frozenset(IMAGE_CONTENT_TYPES),
        ),
    )
