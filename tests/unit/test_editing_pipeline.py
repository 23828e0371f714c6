"""The pure edit pipeline: geometry and the inpaint guarantee, checked pixel by pixel.

Images here encode their own coordinates in their pixels (R = x, G = y, B = a hash of both), so a
crop or a placement that is off by one pixel fails loudly rather than "looking right".
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydantic import ValidationError

from shared.editing import pipeline as px
from shared.editing.models import Background, Crop, EditRequest, Inpaint, Output, Pad, Resize, Upscale
from shared.imaging import ImageAnimated, ImageFormatNotAllowed, ImageLimits, ImageTooLarge, ImageTruncated
from tests import images

LIMITS = ImageLimits()
MASK_LIMITS = ImageLimits(allowed_formats=frozenset({"PNG"}))


def coordinates(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """Every pixel says where it is: (x mod 256, y mod 256, (x // 256) * 16 + y // 256 [, alpha])."""
    width, height = size
    data = bytearray()
    for y in range(height):
        for x in range(width):
            data += bytes((x % 256, y % 256, ((x // 256) * 16 + y // 256) % 256))
            if mode == "RGBA":
                data.append(255)
    return Image.frombytes(mode, size, bytes(data))


def cutout(size: tuple[int, int], subject: tuple[int, int, int, int]) -> Image.Image:
    """Transparent, with an opaque coordinate-coded rectangle at ``subject``."""
    img = coordinates(size, "RGBA")
    alpha = Image.new("L", size, 0)
    alpha.paste(255, subject)
    img.putalpha(alpha)
    return img


def op(model: Any, **fields: Any) -> Any:
    return model.model_validate({"op": model.model_fields["op"].annotation.__args__[0], **fields})


# -- crop --------------------------------------------------------------------------------------------


def test_crop_box_takes_exactly_the_box() -> None:
    img = coordinates((300, 200))
    out = px.crop(img, op(Crop, box={"x": 17, "y": 33, "width": 120, "height": 90}))
    assert out.size == (120, 90)
    assert out.tobytes() == img.crop((17, 33, 137, 123)).tobytes()
    assert out.getpixel((0, 0)) == (17, 33, 0)
    assert out.getpixel((119, 89)) == (136, 122, 0)


@pytest.mark.parametrize(
    ("size", "ratio", "expected"),
    [
        ((1000, 600), "1:1", (200, 0, 800, 600)),  # centred on the image
        ((1000, 600), "16:9", (0, 19, 1000, 581)),  # 1000 x 562.5 -> 562 high, centred
        ((600, 1000), "9:16", (19, 0, 581, 1000)),
        ((1000, 600), "4:5", (260, 0, 740, 600)),
        ((1000, 600), "3:4", (275, 0, 725, 600)),
        ((1000, 600), "4:3", (100, 0, 900, 600)),
        ((800, 800), "1:1", (0, 0, 800, 800)),
    ],
)
def test_aspect_presets_centre_on_the_image_without_a_cutout(
    size: tuple[int, int], ratio: str, expected: tuple[int, int, int, int]
) -> None:
    assert px.aspect_box(size, px.ASPECTS[ratio]) == expected
    out = px.crop(coordinates(size), op(Crop, aspect=ratio))
    assert out.size == (expected[2] - expected[0], expected[3] - expected[1])
    assert out.getpixel((0, 0))[:2] == (expected[0] % 256, expected[1] % 256)


@pytest.mark.parametrize(
    ("subject", "ratio", "expected"),
    [
        ((700, 100, 900, 300), "1:1", (400, 0, 1000, 600)),  # centre 800 -> clamped to the right edge
        ((100, 100, 200, 300), "1:1", (0, 0, 600, 600)),  # centre 150 -> clamped to the left edge
        ((450, 250, 550, 350), "1:1", (200, 0, 800, 600)),  # centred: the subject's centre is the image's
        ((300, 100, 420, 200), "4:5", (120, 0, 600, 600)),  # centre 360, box 480 wide
        ((600, 400, 700, 500), "16:9", (0, 38, 1000, 600)),  # centre y 450, box 562 high -> bottom edge
    ],
)
def test_aspect_presets_centre_on_the_subject_of_a_cutout(
    subject: tuple[int, int, int, int], ratio: str, expected: tuple[int, int, int, int]
) -> None:
    img = cutout((1000, 600), subject)
    assert px.subject_bbox(img) == subject
    out = px.crop(img, op(Crop, aspect=ratio))
    assert out.tobytes() == img.crop(expected).tobytes()


@settings(max_examples=200, deadline=None)
@given(
    width=st.integers(1, 3000),
    height=st.integers(1, 3000),
    ratio=st.sampled_from(sorted(px.ASPECTS)),
    cx=st.floats(0, 1),
    cy=st.floats(0, 1),
)
def test_aspect_box_is_the_largest_inside_box_nearest_the_subject(
    width: int, height: int, ratio: str, cx: float, cy: float
) -> None:
    rw, rh = px.ASPECTS[ratio]
    x, y = int(cx * (width - 1)), int(cy * (height - 1))
    left, top, right, bottom = px.aspect_box((width, height), (rw, rh), (x, y, x + 1, y + 1))
    w, h = right - left, bottom - top
    assert left >= 0 and top >= 0 and right <= width and bottom <= height and w >= 1 and h >= 1
    assert w == width or h == height  # largest: touches two opposite sides
    assert abs(w * rh - h * rw) <= max(rw, rh)  # the ratio, up to one pixel of rounding
    # Centred on the subject unless that would leave the image.
    if w < width:
        assert left == 0 or right == width or abs((left + right) / 2 - (x + 0.5)) <= 0.5
    if h < height:
        assert top == 0 or bottom == height or abs((top + bottom) / 2 - (y + 0.5)) <= 0.5


# -- resize ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"width": 300}, (300, 200)),
        ({"height": 100}, (150, 100)),
        ({"width": 300, "height": 300}, (300, 200)),  # keep_aspect: fit inside
        ({"width": 900, "height": 100}, (150, 100)),
        ({"width": 123, "height": 45, "keep_aspect": False}, (123, 45)),  # exact
        ({"width": 1200}, (1200, 800)),  # upscaling is allowed
        ({"width": 1}, (1, 1)),  # never zero
    ],
)
def test_resize_dimensions(fields: dict[str, Any], expected: tuple[int, int]) -> None:
    resize_op = op(Resize, **fields)
    assert px.resize_dims((600, 400), resize_op) == expected
    assert px.resize(coordinates((600, 400)), resize_op).size == expected


def test_resize_keeps_alpha_and_quality_filters() -> None:
    img = cutout((200, 100), (50, 25, 150, 75))
    for quality in ("high", "balanced", "fast"):
        out = px.resize(img, op(Resize, width=100, quality=quality))
        assert out.mode == "RGBA" and out.size == (100, 50)
        assert out.getpixel((0, 0))[3] == 0 and out.getpixel((50, 25))[3] == 255


def test_resize_region_equals_crop_then_resize_geometry() -> None:
    img = coordinates((400, 300))
    out = px.resize_region(img, (100, 50, 300, 250), (100, 100), "high")
    assert out.size == (100, 100)
    # The first output pixel sits over source pixels ~(100..102, 50..52).
    r, g, _ = out.getpixel((0, 0))
    assert 99 <= r <= 103 and 49 <= g <= 53


# -- pad ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("align", "offset"),
    [
        ("center", (50, 75)),
        ("top_left", (0, 0)),
        ("top", (50, 0)),
        ("right", (100, 75)),
        ("bottom_right", (100, 150)),
        ("bottom_left", (0, 150)),
    ],
)
def test_pad_places_the_image_exactly_on_the_canvas_colour(align: str, offset: tuple[int, int]) -> None:
    img = coordinates((100, 50))
    out = px.pad(img, op(Pad, width=200, height=200, color="#00FF00", align=align))
    assert out.size == (200, 200) and out.mode == "RGB"
    x, y = offset
    assert out.crop((x, y, x + 100, y + 50)).tobytes() == img.tobytes()
    background = out.copy()
    background.paste((0, 255, 0), (x, y, x + 100, y + 50))
    assert background.getcolors() == [(200 * 200, (0, 255, 0))]


def test_pad_to_an_aspect_grows_the_short_side_only() -> None:
    img = coordinates((400, 100))
    out = px.pad(img, op(Pad, aspect="1:1"))
    assert out.size == (400, 400)
    assert out.crop((0, 150, 400, 250)).tobytes() == img.tobytes()
    assert out.getpixel((0, 0)) == (255, 255, 255)  # default colour: white
    assert px.pad_canvas((100, 400), op(Pad, aspect="16:9")) == (712, 400)


def test_pad_transparent_keeps_a_cutout_transparent_and_opaque_colour_fills_it() -> None:
    img = cutout((100, 100), (25, 25, 75, 75))
    clear = px.pad(img, op(Pad, width=120, height=120, color="transparent"))
    assert clear.mode == "RGBA" and clear.getpixel((0, 0))[3] == 0
    assert clear.crop((35, 35, 85, 85)).tobytes() == img.crop((25, 25, 75, 75)).tobytes()
    white = px.pad(img, op(Pad, width=120, height=120, color="#FFFFFF"))
    assert white.mode == "RGB" and white.getpixel((12, 12)) == (255, 255, 255)
    assert white.getpixel((40, 40)) == img.getpixel((30, 30))[:3]


# -- background ----------------------------------------------------------------------------------------


def test_solid_background_fills_behind_the_subject_only() -> None:
    img = cutout((100, 80), (20, 10, 60, 50))
    out = px.background(img, op(Background, type="solid", color="#112233"))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (17, 34, 51)
    assert out.crop((20, 10, 60, 50)).tobytes() == img.convert("RGB").crop((20, 10, 60, 50)).tobytes()
    translucent = px.background(img, op(Background, type="solid", color="#11223380"))
    assert translucent.mode == "RGBA" and translucent.getpixel((0, 0)) == (17, 34, 51, 128)


def test_scene_composite_keeps_the_cutouts_opaque_pixels() -> None:
    img = cutout((100, 80), (20, 10, 60, 50))
    scene = Image.new("RGB", (50, 40), (9, 99, 199))  # a model's picture, at another size
    out = px.composite_scene(img, scene)
    assert out.size == (100, 80) and out.getpixel((0, 0)) == (9, 99, 199)
    assert out.crop((20, 10, 60, 50)).tobytes() == img.convert("RGB").crop((20, 10, 60, 50)).tobytes()


# -- inpaint: the guarantee ------------------------------------------------------------------------------


def _mask(draw: st.DrawFn, size: tuple[int, int], soft: bool) -> Image.Image:
    width, height = size
    values = draw(
        st.lists(
            st.integers(0, 255) if soft else st.sampled_from([0, 255]), min_size=width * height, max_size=width * height
        )
    )
    return Image.frombytes("L", size, bytes(values))


@st.composite
def inpaint_cases(draw: st.DrawFn) -> tuple[Image.Image, Image.Image, Image.Image]:
    size = (draw(st.integers(1, 24)), draw(st.integers(1, 24)))
    mode = draw(st.sampled_from(["RGB", "RGBA"]))
    seed = draw(st.integers(0, 2**16))
    original = Image.frombytes(mode, size, bytes((seed + i * 7919) % 256 for i in range(size[0] * size[1] * len(mode))))
    model_size = (draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    edited = Image.effect_noise(model_size, 90).convert("RGB")
    return original, edited, _mask(draw, size, soft=draw(st.booleans()))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inpaint_cases())
def test_inpaint_never_changes_a_pixel_outside_the_mask(case: tuple[Image.Image, Image.Image, Image.Image]) -> None:
    original, edited, mask = case
    out = px.composite_masked(original, edited, mask)
    assert out.size == original.size and out.mode == original.mode
    resized = edited.resize(original.size, Image.Resampling.LANCZOS).convert(original.mode)
    for index, (m, before, after, model) in enumerate(
        zip(
            mask.get_flattened_data(),
            original.get_flattened_data(),
            out.get_flattened_data(),
            resized.get_flattened_data(),
            strict=True,
        )
    ):
        if m == 0:
            assert after == before, f"pixel {index} outside the mask changed"
        elif m == 255:
            assert after == model, f"pixel {index} fully inside the mask is not the model's"
        else:  # soft masks blend: every channel lies between the two
            for a, b, c in zip(before, model, after, strict=True):
                assert min(a, b) - 1 <= c <= max(a, b) + 1


def test_inpaint_on_a_full_photo_keeps_every_byte_outside_an_irregular_mask() -> None:
    original = images.photo((640, 480))
    mask = Image.new("L", original.size, 0)
    from PIL import ImageDraw

    ImageDraw.Draw(mask).ellipse((100, 80, 400, 300), fill=255)
    mask.paste(128, (500, 400, 600, 460))  # a soft square too
    out = px.composite_masked(original, Image.new("RGB", (1024, 768), (255, 0, 0)), mask)
    outside = Image.new("L", original.size, 0)
    outside.paste(255, mask=mask.point(lambda v: 255 if v == 0 else 0))
    kept = Image.composite(out, Image.new("RGB", original.size), outside)
    assert kept.tobytes() == Image.composite(original, Image.new("RGB", original.size), outside).tobytes()
    assert out.getpixel((250, 190)) == (255, 0, 0)


def test_mask_of_the_same_aspect_is_scaled_other_sizes_refused() -> None:
    mask = Image.new("L", (50, 25), 255)
    assert px.fit_mask(mask, (200, 100)).size == (200, 100)
    assert px.fit_mask(mask, (201, 100)).size == (201, 100)  # within 1%
    with pytest.raises(px.MaskSizeMismatch):
        px.fit_mask(mask, (200, 200))


# -- masks ---------------------------------------------------------------------------------------------


def _png(img: Image.Image, **params: Any) -> bytes:
    return images.encode(img, "PNG", **params)


def test_mask_modes_luminance_and_alpha() -> None:
    grey = Image.new("L", (20, 10), 0)
    grey.paste(200, (0, 0, 10, 10))
    assert px.decode_mask(_png(grey), MASK_LIMITS).tobytes() == grey.tobytes()
    one = grey.convert("1")
    assert set(px.decode_mask(_png(one), MASK_LIMITS).get_flattened_data()) == {0, 255}
    stroke = Image.new("RGBA", (20, 10), (0, 0, 0, 0))  # a brush stroke on a transparent canvas
    stroke.paste((255, 0, 0, 180), (5, 0, 15, 10))
    assert px.decode_mask(_png(stroke), MASK_LIMITS).tobytes() == stroke.getchannel("A").tobytes()
    opaque = Image.new("RGBA", (20, 10), (0, 0, 0, 255))  # opaque: by luminance
    opaque.paste((255, 255, 255, 255), (0, 0, 4, 10))
    assert px.decode_mask(_png(opaque), MASK_LIMITS).getpixel((1, 1)) == 255
    la = Image.new("LA", (20, 10), (255, 0))
    la.paste((255, 255), (0, 0, 3, 3))
    assert px.decode_mask(_png(la), MASK_LIMITS).getbbox() == (0, 0, 3, 3)


@pytest.mark.parametrize(
    ("img", "fmt", "error"),
    [
        (Image.new("RGB", (8, 8), (255, 255, 255)), "PNG", px.MaskModeInvalid),
        (Image.new("P", (8, 8), 1), "PNG", px.MaskModeInvalid),
        (Image.new("I;16", (8, 8), 4000), "PNG", px.MaskModeInvalid),
        (Image.new("L", (8, 8), 0), "PNG", px.MaskEmpty),
        (Image.new("L", (8, 8), 255), "JPEG", ImageFormatNotAllowed),
        (Image.new("CMYK", (8, 8), (0, 0, 0, 0)), "JPEG", ImageFormatNotAllowed),
    ],
)
def test_bad_masks_are_refused(img: Image.Image, fmt: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        px.decode_mask(images.encode(img, fmt), MASK_LIMITS)


def test_mask_container_problems_are_refused() -> None:
    with pytest.raises(ImageTruncated):
        px.decode_mask(_png(images.photo((300, 200), "L"))[:-600], MASK_LIMITS)
    with pytest.raises(ImageTooLarge):
        px.decode_mask(images.with_png_size(_png(Image.new("L", (8, 8), 255)), 60_000, 60_000), MASK_LIMITS)
    frames = [Image.new("L", (8, 8), v) for v in (255, 128)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "PNG", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageAnimated):
        px.decode_mask(buffer.getvalue(), MASK_LIMITS)


def test_mask_exif_orientation_is_applied_before_sizing() -> None:
    mask = Image.new("L", (40, 20), 0)
    mask.paste(255, (0, 0, 10, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 40x20, shown rotated 90° clockwise: 20x40
    decoded = px.decode_mask(_png(mask, exif=exif.tobytes()), MASK_LIMITS)
    assert decoded.size == (20, 40)
    assert decoded.getbbox() == (0, 0, 20, 10)


# -- planning (refusals before anything is done) -----------------------------------------------------------


def plan(ops: list[dict[str, Any]], size: tuple[int, int] = (600, 400), alpha: bool = False, **kw: Any) -> Any:
    request = EditRequest.model_validate({"asset_ids": ["a"], "operations": ops})
    return px.plan(request.operations, px.Frame(*size, has_alpha=alpha), limits=LIMITS, **kw)


def test_plan_follows_sizes_through_the_pipeline() -> None:
    frames = plan(
        [
            {"op": "crop", "aspect": "1:1"},
            {"op": "resize", "width": 300},
            {"op": "pad", "aspect": "16:9", "color": "transparent"},
            {"op": "upscale", "size": "2K"},
            {"op": "output", "format": "jpeg"},
        ]
    )
    assert [f.size for f in frames] == [(400, 400), (300, 300), (534, 300), (2048, 1151), (2048, 1151)]
    assert [f.has_alpha for f in frames] == [False, False, True, True, False]


@pytest.mark.parametrize(
    ("ops", "error"),
    [
        ([{"op": "crop", "box": {"x": 500, "y": 0, "width": 200, "height": 100}}], px.CropOutOfBounds),
        ([{"op": "crop", "box": {"x": -1, "y": 0, "width": 20, "height": 10}}], px.CropOutOfBounds),
        (
            [{"op": "resize", "width": 100}, {"op": "crop", "box": {"x": 0, "y": 0, "width": 101, "height": 10}}],
            px.CropOutOfBounds,
        ),
        ([{"op": "background", "type": "solid", "color": "#FFFFFF"}], px.BackgroundNeedsCutout),
        ([{"op": "upscale", "size": "2K"}, {"op": "upscale", "size": "2K"}], px.UpscaleNotNeeded),
        ([{"op": "pad", "width": 500, "height": 500}], px.PadTooSmall),
        ([{"op": "resize", "width": 12000, "height": 12000, "keep_aspect": False}], px.EditResultTooLarge),
    ],
)
def test_plan_refuses(ops: list[dict[str, Any]], error: type[px.EditRefused]) -> None:
    with pytest.raises(error) as raised:
        plan(ops)
    assert raised.value.status == 422
    assert raised.value.extensions["errors"][0]["field"].startswith("operations.")


def test_plan_checks_the_mask_against_the_size_at_its_step() -> None:
    ops = [{"op": "resize", "width": 300}, {"op": "inpaint", "prompt": "x", "mask": "iVBORw0KGgo="}]
    plan(ops, mask_sizes={1: (300, 200)})
    plan(ops, mask_sizes={1: (600, 400)})  # same aspect: scaled
    with pytest.raises(px.MaskSizeMismatch) as raised:
        plan(ops, mask_sizes={1: (300, 300)})
    assert raised.value.extensions["errors"][0]["field"] == "operations.1.mask"


def test_requests_refuse_unknown_ops_and_misplaced_output() -> None:
    with pytest.raises(ValidationError) as unknown:
        EditRequest.model_validate({"asset_ids": ["a"], "operations": [{"op": "sharpen"}]})
    assert unknown.value.errors()[0]["type"] == "union_tag_invalid"
    with pytest.raises(ValidationError):
        EditRequest.model_validate(
            {"asset_ids": ["a"], "operations": [{"op": "output", "format": "png"}, {"op": "resize", "width": 9}]}
        )
    with pytest.raises(ValidationError):
        EditRequest.model_validate({"asset_ids": ["a", "a"], "operations": [{"op": "resize", "width": 9}]})
    with pytest.raises(ValidationError):
        EditRequest.model_validate({"asset_ids": ["a"], "operations": [{"op": "crop"}]})
    with pytest.raises(ValidationError):
        EditRequest.model_validate({"asset_ids": ["a"], "operations": [{"op": "resize", "width": 9, "extra": 1}]})
    with pytest.raises(ValidationError):
        EditRequest.model_validate(
            {"asset_ids": ["a"], "operations": [{"op": "inpaint", "prompt": "x", "mask": "not base64!"}]}
        )
    ok = EditRequest.model_validate(
        {"asset_ids": ["a"], "operations": [{"op": "inpaint", "prompt": "x", "mask": "data:image/png;base64,iVBORw=="}]}
    )
    assert isinstance(ok.operations[0], Inpaint) and ok.operations[0].mask.startswith(b"\x89PNG")
    assert ok.is_ai
    assert not EditRequest.model_validate({"asset_ids": ["a"], "operations": [{"op": "crop", "aspect": "1:1"}]}).is_ai
    assert isinstance(op(Upscale, size="4K"), Upscale)


# -- output encoding -------------------------------------------------------------------------------------


def test_output_formats_and_quality() -> None:
    img = images.photo((320, 240))
    jpeg = px.encode(img, "JPEG", quality=80)
    assert jpeg.format == "JPEG" and jpeg.quality == 80 and jpeg.data.startswith(b"\xff\xd8")
    webp = px.encode(img, "WEBP", quality=70)
    assert webp.content_type == "image/webp" and webp.extension == "webp"
    png = px.encode(img, "PNG")
    assert png.quality is None and images.decode(png.data).tobytes() == img.tobytes()  # lossless
    rgba = px.prepare_for(cutout((40, 40), (10, 10, 30, 30)), "JPEG")
    assert rgba.mode == "RGB" and rgba.getpixel((0, 0)) == (255, 255, 255)  # JPEG: composed onto white


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_max_bytes_finds_the_highest_quality_that_fits(fmt: str) -> None:
    # A photo-like picture (smooth gradient plus grain): sizes fall steadily with quality.
    img = Image.blend(Image.linear_gradient("L").resize((400, 300)).convert("RGB"), images.photo((400, 300)), 0.3)
    full = px.encode(img, fmt, quality=95)
    budget = len(full.data) // 2
    fitted = px.encode(img, fmt, quality=95, max_bytes=budget)
    assert len(fitted.data) <= budget and fitted.quality is not None and fitted.quality < 95
    assert fitted.quality is not None
    one_more = px.encode(img, fmt, quality=fitted.quality + 1)
    assert len(one_more.data) > budget  # the highest quality that fits
    with pytest.raises(px.OutputTooLarge):
        px.encode(img, fmt, quality=95, max_bytes=1024)


def test_png_max_bytes_tries_harder_compression_then_refuses() -> None:
    flat = Image.new("RGB", (400, 300), (10, 20, 30))
    assert len(px.encode(flat, "PNG", max_bytes=2048).data) <= 2048
    with pytest.raises(px.OutputTooLarge):
        px.encode(images.photo((400, 300)), "PNG", max_bytes=4096)


# -- decoding ----------------------------------------------------------------------------------------------


def test_draft_decoding_reduces_a_big_jpeg_and_keeps_the_geometry() -> None:
    data = images.jpeg((3200, 2400), quality=80)
    request = EditRequest.model_validate(
        {"asset_ids": ["a"], "operations": [{"op": "crop", "aspect": "1:1"}, {"op": "resize", "width": 300}]}
    )
    start = px.Frame(3200, 2400, False)
    frames = px.plan(request.operations, start, limits=LIMITS)
    draft = px.draft_plan(request.operations, frames, start)
    assert draft is not None
    count, region, dims = draft
    assert (count, region, dims) == (2, (400, 0, 2800, 2400), (300, 300))
    decoded = px.decode_image(data, LIMITS, draft_to=px.draft_size(start, region, dims))
    assert decoded.scale == 4 and decoded.image.size == (800, 600)
    s = decoded.scale
    out = px.resize_region(decoded.image, tuple(v / s for v in region), dims, "high")  # type: ignore[arg-type]
    full = px.resize(px.crop(px.decode_image(data, LIMITS).image, request.operations[0]), request.operations[1])
    assert out.size == full.size == (300, 300)
    diff = sum(
        abs(a - b)
        for p, q in zip(out.get_flattened_data(), full.get_flattened_data(), strict=True)
        for a, b in zip(p, q, strict=True)
    )
    assert diff / (300 * 300 * 3) < 12  # the same picture, give or take resampling noise


def test_no_draft_when_the_pipeline_does_not_shrink_first() -> None:
    request = EditRequest.model_validate({"asset_ids": ["a"], "operations": [{"op": "resize", "width": 2400}]})
    start = px.Frame(3200, 2400, False)
    assert px.draft_plan(request.operations, px.plan(request.operations, start, limits=LIMITS), start) is None
    pad_first = EditRequest.model_validate(
        {"asset_ids": ["a"], "operations": [{"op": "pad", "aspect": "1:1"}, {"op": "resize", "width": 100}]}
    )
    assert px.draft_plan(pad_first.operations, px.plan(pad_first.operations, start, limits=LIMITS), start) is None


def test_decode_applies_exif_and_converts_cmyk() -> None:
    rotated = px.decode_image(images.exif_rotated_jpeg((400, 200)), LIMITS)
    assert rotated.image.size == (200, 400) and rotated.image.mode == "RGB"
    cmyk = px.decode_image(images.cmyk_jpeg(), LIMITS)
    assert cmyk.image.mode == "RGB"
    with pytest.raises(ImageTruncated):
        px.decode_image(images.truncated_png(), LIMITS)


# -- model framing -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(640, 480), (500, 700), (1000, 300), (333, 333)])
def test_letterbox_round_trip_is_exact(size: tuple[int, int]) -> None:
    img = coordinates(size)
    frame = px.engine_input(img)
    w, h = (int(v) for v in frame.aspect_ratio.split(":"))
    assert abs(frame.canvas.width * h - frame.canvas.height * w) <= max(w, h)
    back = px.from_engine(frame.canvas, frame, img.size)
    assert back.tobytes() == img.tobytes()
    bigger = frame.canvas.resize((frame.canvas.width * 2, frame.canvas.height * 2), Image.Resampling.NEAREST)
    assert px.from_engine(bigger, frame, img.size).size == img.size


def test_engine_sizes_and_colors() -> None:
    assert px.nearest_engine_aspect((1920, 1080)) == "16:9"
    assert px.nearest_engine_aspect((1000, 1000)) == "1:1"
    assert [px.size_class(n) for n in (500, 1024, 1025, 3000, 9000)] == ["1K", "1K", "2K", "4K", "4K"]
    assert px.size_class(3000, "2K") == "2K"
    assert px.parse_color("#0a0B0c") == (10, 11, 12, 255)
    assert px.parse_color("#0a0B0c80") == (10, 11, 12, 128)
    assert px.parse_color("transparent") == (0, 0, 0, 0)
    assert isinstance(op(Output, format="png"), Output)
