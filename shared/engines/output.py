"""Turn an engine's image bytes into what we store: the configured format plus a WebP thumbnail."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.imaging import ImageLimits, NormalizedImage, Thumbnail


def encode_output(
    data: bytes, output_format: str, limits: ImageLimits, thumbnail_max_side: int, *, min_short_side: int = 0
) -> tuple[NormalizedImage, Thumbnail]:
    """Validate the engine's image like any upload and encode its pixels once, as PNG or WebP
    (with the colour profile): a JPEG answer is never re-compressed on its way to PNG. An image a
    little short of ``min_short_side`` (IMG-03's listing minimum) is resampled up to it."""
    from shared.imaging import normalize_with_thumbnail

    wanted = "WEBP" if output_format == "webp" else "PNG"
    return normalize_with_thumbnail(
        data, limits, thumb_max_side=thumbnail_max_side, output_format=wanted, min_short_side=min_short_side
    )


def delivered(image: NormalizedImage, listing_min_side: int) -> dict[str, object]:
    """What was delivered, as the asset's metadata records it (IMG-03): the size, whether it meets
    the listing minimum (short side), and the size the model answered when it was topped up."""
    return {
        "width": image.width,
        "height": image.height,
        "listing_min_side": listing_min_side,
        "meets_listing_minimum": min(image.width, image.height) >= listing_min_side,
        "upscaled_from": list(image.upscaled_from) if image.upscaled_from else None,
    }
