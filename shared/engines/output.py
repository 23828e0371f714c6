"""Turn an engine's image bytes into what we store: the configured format plus a WebP thumbnail."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.imaging import ImageLimits, NormalizedImage, Thumbnail


def encode_output(
    data: bytes, output_format: str, limits: ImageLimits, thumbnail_max_side: int
) -> tuple[NormalizedImage, Thumbnail]:
    """Validate the engine's image like any upload and encode its pixels once, as PNG or WebP
    (with the colour profile): a JPEG answer is never re-compressed on its way to PNG."""
    from shared.imaging import normalize_with_thumbnail

    wanted = "WEBP" if output_format == "webp" else "PNG"
    return normalize_with_thumbnail(data, limits, thumb_max_side=thumbnail_max_side, output_format=wanted)
