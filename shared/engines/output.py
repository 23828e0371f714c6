"""Turn an engine's image bytes into what we store: the configured format plus a WebP thumbnail."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.imaging import ImageLimits, NormalizedImage, Thumbnail


def encode_output(
    data: bytes, output_format: str, limits: ImageLimits, thumbnail_max_side: int
) -> tuple[NormalizedImage, Thumbnail]:
    """Validate the engine's image like any upload, then re-encode it as PNG or WebP."""
    from dataclasses import replace

    from PIL import Image

    from shared.imaging import normalize_with_thumbnail

    normalized, thumbnail = normalize_with_thumbnail(data, limits, thumb_max_side=thumbnail_max_side)
    wanted = "WEBP" if output_format == "webp" else "PNG"
    if normalized.format == wanted:
        return normalized, thumbnail
    with Image.open(io.BytesIO(normalized.data)) as image:
        buffer = io.BytesIO()
        if wanted == "WEBP":
            image.save(buffer, "WEBP", quality=92, method=4)
        else:
            image.save(buffer, "PNG", compress_level=6)
    extension = "webp" if wanted == "WEBP" else "png"
    return replace(
        normalized, data=buffer.getvalue(), format=wanted, content_type=f"image/{extension}", extension=extension
    ), thumbnail
