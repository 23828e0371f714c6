"""IMG-03: generated images meet the e-commerce listing minimum (1080 px on the short side) when they are
a little short of it, and record what was delivered."""

from __future__ import annotations

import pytest

from shared.engines.base import ImageRequest, output_dimensions
from shared.engines.offline import OfflineEngine
from shared.engines.output import delivered, encode_output
from shared.imaging import ImageLimits
from tests import images


@pytest.mark.parametrize(
    ("aspect", "size", "stored", "meets"),
    [
        ("1:1", "1K", (1080, 1080), True),  # the default: 1024 px topped up by 5.5%
        ("4:5", "1K", (819, 1024), False),  # 32% short: not invented, recorded as short
        ("16:9", "1K", (1024, 576), False),
        ("1:1", "2K", (2048, 2048), True),
        ("4:5", "2K", (1638, 2048), True),
        ("21:9", "2K", (2048, 878), False),
    ],
)
def test_offline_output_against_the_listing_minimum(
    aspect: str, size: str, stored: tuple[int, int], meets: bool
) -> None:
    answer = OfflineEngine().generate(ImageRequest(prompt="a mug", aspect_ratio=aspect, size=size))
    encoded, thumbnail = encode_output(answer.data, "png", ImageLimits(), 256, min_short_side=1080)
    assert (encoded.width, encoded.height) == stored
    assert images.decode(encoded.data).size == stored
    assert max(thumbnail.width, thumbnail.height) == 256
    facts = delivered(encoded, 1080)
    assert facts["meets_listing_minimum"] is meets
    assert facts["upscaled_from"] == (
        list(output_dimensions(aspect, size)) if stored != output_dimensions(aspect, size) else None
    )


def test_without_a_minimum_nothing_is_resampled() -> None:
    answer = OfflineEngine().generate(ImageRequest(prompt="a mug", aspect_ratio="1:1", size="1K"))
    encoded, _ = encode_output(answer.data, "webp", ImageLimits(), 256)
    assert (encoded.width, encoded.height, encoded.upscaled_from) == (1024, 1024, None)
    assert delivered(encoded, 0)["meets_listing_minimum"] is True
