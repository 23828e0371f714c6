"""Tests for shared.imaging.

Every fixture image is built here with Pillow, in memory. The decompression bombs are small PNGs
whose IHDR claims a huge size (with the CRC recomputed), so they cost nothing to build and would
cost gigabytes to decode: the tests assert they are rejected quickly, from the header.
"""

from __future__ import annotations

import io
import resource
import struct
import time
import warnings
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from PIL import ExifTags, Image, ImageCms, ImageFile, JpegImagePlugin, PngImagePlugin

from shared.errors import InvalidImage
from shared.imaging import (
    ImageAnimated,
    ImageFormatNotAllowed,
    ImageInfo,
    ImageLimits,
    ImageTooLarge,
    ImageTruncated,
    ImageUnreadable,
    NormalizedImage,
    Thumbnail,
    inspect_image,
    make_thumbnail,
    normalize_image,
    normalize_with_thumbnail,
    sniff_image_content_type,
    thumbnail_from_image,
)

LIMITS = ImageLimits()
RED = (255, 0, 0)
WHITE = (255, 255, 255)


# --------------------------------------------------------------------------------------------
# Builders


def encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **params)
    return buffer.getvalue()


def photo(size: tuple[int, int] = (120, 80), mode: str = "RGB") -> Image.Image:
    """Noise, so that encoders produce enough data to cut in the middle."""
    return Image.effect_noise(size, 64).convert(mode)


def with_png_size(png: bytes, width: int, height: int) -> bytes:
    """Patch the IHDR of ``png`` to declare another size, with a valid CRC."""
    assert png[12:16] == b"IHDR"
    data = bytearray(png)
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    return with_png_size(encode(Image.new("L", (8, 8)), "PNG"), width, height)


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, (0, 0, 255))]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100)


def exif_with_gps(orientation: int | None = None) -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "SecretCam"
    if orientation is not None:
        exif[ExifTags.Base.Orientation] = orientation
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (52.0, 22.0, 1.5)
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = (4.0, 53.0, 2.0)
    return exif


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def pixel(img: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    """The pixel at ``xy`` as a tuple, whatever the band count."""
    value = img.getpixel(xy)
    assert isinstance(value, tuple)
    return value


def close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def raises(error: type[InvalidImage], code: str, call: Callable[[], object]) -> InvalidImage:
    with pytest.raises(error) as caught:
        call()
    assert caught.value.code == code
    assert caught.value.status == 422
    return caught.value


# --------------------------------------------------------------------------------------------
# Error model


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ImageUnreadable, "image_unreadable"),
        (ImageTruncated, "image_truncated"),
        (ImageFormatNotAllowed, "image_format_not_allowed"),
        (ImageTooLarge, "image_too_large"),
        (ImageAnimated, "image_animated"),
    ],
)
def test_errors_are_invalid_image_problems_with_stable_codes(error: type[InvalidImage], code: str) -> None:
    assert issubclass(error, InvalidImage)
    assert error.code == code
    assert error.status == 422


def test_limits_defaults_and_validation() -> None:
    assert LIMITS.max_bytes == 25 * 1024 * 1024
    assert LIMITS.max_pixels == 50_000_000
    assert LIMITS.max_side == 12_000
    assert frozenset({"JPEG", "PNG", "WEBP"}) == LIMITS.allowed_formats
    assert LIMITS.allow_animated is False
    assert ImageLimits(allowed_formats=frozenset({"png", "Jpeg"})).allowed_formats == {"PNG", "JPEG"}
    with pytest.raises(ValueError, match="max_pixels"):
        ImageLimits(max_pixels=0)


# --------------------------------------------------------------------------------------------
# Sniffing


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [
        ("JPEG", "image/jpeg"),
        ("PNG", "image/png"),
        ("WEBP", "image/webp"),
        ("GIF", "image/gif"),
        ("BMP", "image/bmp"),
        ("TIFF", "image/tiff"),
    ],
)
def test_sniff_from_pillow_output(fmt: str, content_type: str) -> None:
    assert sniff_image_content_type(encode(Image.new("RGB", (4, 4)), fmt)) == content_type


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf", "image/avif"),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1avif", "image/avif"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "image/heic"),
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2", None),  # an MP4 video
        (b"BMW is a car, not a bitmap.", None),
        (b"hello, I am a text file", None),
        (b"", None),
    ],
)
def test_sniff_from_magic_bytes(data: bytes, content_type: str | None) -> None:
    assert sniff_image_content_type(data) == content_type


# --------------------------------------------------------------------------------------------
# Valid images


@pytest.mark.parametrize(
    ("fmt", "content_type", "extension"),
    [("JPEG", "image/jpeg", "jpg"), ("PNG", "image/png", "png"), ("WEBP", "image/webp", "webp")],
)
def test_round_trip_keeps_format_and_size(fmt: str, content_type: str, extension: str) -> None:
    data = encode(photo((120, 80)), fmt)

    result = normalize_image(data, LIMITS)

    assert isinstance(result, NormalizedImage)
    assert (result.format, result.content_type, result.extension) == (fmt, content_type, extension)
    assert (result.width, result.height) == (120, 80)
    assert (result.source_format, result.source_mode) == (fmt, "RGB")
    assert result.has_alpha is False
    assert result.was_rotated is False
    out = decode(result.data)
    assert (out.format, out.size, out.mode) == (fmt, (120, 80), "RGB")


def test_inspect_reads_the_header() -> None:
    data = encode(Image.new("RGBA", (64, 32)), "PNG")

    info = inspect_image(data, LIMITS)

    assert info == ImageInfo(
        format="PNG",
        content_type="image/png",
        width=64,
        height=32,
        mode="RGBA",
        frames=1,
        has_alpha=True,
        orientation=1,
    )


def test_inspect_does_not_decode_pixels_but_normalize_does() -> None:
    data = encode(photo((200, 200)), "JPEG")
    cut = data[: len(data) * 2 // 3]

    assert inspect_image(cut, LIMITS).width == 200  # the header is intact
    raises(ImageTruncated, "image_truncated", lambda: normalize_image(cut, LIMITS))


def test_lowercase_or_unknown_allowed_formats_are_tolerated() -> None:
    # "HEIF" has no Pillow decoder here; Image.open would raise KeyError if it were passed on.
    limits = ImageLimits(allowed_formats=frozenset({"png", "HEIF"}))
    assert normalize_image(encode(photo(), "PNG"), limits).format == "PNG"


# --------------------------------------------------------------------------------------------
# Not images, truncated, corrupt


@pytest.mark.parametrize("call", [inspect_image, normalize_image])
def test_text_file_named_jpg_is_unreadable(call: Callable[[bytes, ImageLimits], object]) -> None:
    raises(ImageUnreadable, "image_unreadable", lambda: call(b"name,price\nmug,12.50\n" * 20, LIMITS))


@pytest.mark.parametrize("call", [inspect_image, normalize_image, lambda data, _: make_thumbnail(data)])
def test_empty_bytes_are_unreadable(call: Callable[[bytes, ImageLimits], object]) -> None:
    raises(ImageUnreadable, "image_unreadable", lambda: call(b"", LIMITS))


@pytest.mark.parametrize("load_truncated_images", [False, True])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_data_fails_whatever_load_truncated_images_says(
    monkeypatch: pytest.MonkeyPatch, fmt: str, keep: float, load_truncated_images: bool
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated_images)
    data = encode(photo((160, 120)), fmt)
    cut = data[: int(len(data) * keep)]

    error = raises(ImageTruncated, "image_truncated", lambda: normalize_image(cut, LIMITS))

    assert error.extensions["format"] == fmt
    assert ImageFile.LOAD_TRUNCATED_IMAGES is load_truncated_images  # never flipped by us


@pytest.mark.parametrize("load_truncated_images", [False, True])
def test_png_without_iend_or_with_a_bad_crc_is_rejected(
    monkeypatch: pytest.MonkeyPatch, load_truncated_images: bool
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated_images)
    data = encode(photo(), "PNG")
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01  # inside IDAT

    raises(ImageTruncated, "image_truncated", lambda: normalize_image(data[:-6], LIMITS))
    raises(ImageTruncated, "image_truncated", lambda: normalize_image(bytes(flipped), LIMITS))


def test_a_png_signature_followed_by_garbage_is_corrupt_not_unreadable() -> None:
    raises(ImageTruncated, "image_truncated", lambda: inspect_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, LIMITS))


# --------------------------------------------------------------------------------------------
# Size limits and decompression bombs


@pytest.mark.parametrize("pillow_limit", ["default", "disabled"])
@pytest.mark.parametrize(
    "call", [inspect_image, normalize_image, lambda data, limits: make_thumbnail(data, limits=limits)]
)
def test_decompression_bomb_is_rejected_fast_from_the_header(
    monkeypatch: pytest.MonkeyPatch, call: Callable[[bytes, ImageLimits], object], pillow_limit: str
) -> None:
    # With Pillow's own guard disabled, only ours stands between the header and 900 MB of pixels.
    if pillow_limit == "disabled":
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    data = bomb_png()
    assert len(data) < 200
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.perf_counter()

    raises(ImageTooLarge, "image_too_large", lambda: call(data, LIMITS))

    assert time.perf_counter() - started < 0.5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 100 * 1024


def test_our_pixel_guard_reports_the_numbers() -> None:
    # 64 MP: under Pillow's default guard (89 MP), over ours (50 MP).
    data = bomb_png(8_000, 8_000)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and Pillow has no reason to warn
        error = raises(ImageTooLarge, "image_too_large", lambda: normalize_image(data, LIMITS))

    assert error.extensions == {
        "width": 8_000,
        "height": 8_000,
        "pixels": 64_000_000,
        "max_pixels": 50_000_000,
        "max_side": 12_000,
    }


def test_max_pixels_is_configurable() -> None:
    data = encode(Image.new("RGB", (100, 100)), "PNG")

    error = raises(ImageTooLarge, "image_too_large", lambda: inspect_image(data, ImageLimits(max_pixels=5_000)))

    assert error.extensions["pixels"] == 10_000
    assert error.extensions["max_pixels"] == 5_000
    assert normalize_image(data, ImageLimits(max_pixels=10_000)).width == 100


def test_max_side_is_enforced() -> None:
    data = encode(Image.new("RGB", (300, 10)), "PNG")
    raises(ImageTooLarge, "image_too_large", lambda: normalize_image(data, ImageLimits(max_side=200)))


def test_max_bytes_is_checked_before_anything_else() -> None:
    data = encode(photo(), "PNG")

    error = raises(ImageTooLarge, "image_too_large", lambda: inspect_image(data, ImageLimits(max_bytes=1_000)))

    assert error.extensions == {"bytes": len(data), "max_bytes": 1_000}


def test_pillow_decompression_bomb_error_is_mapped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # Pillow errors above 2x this
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    raises(ImageTooLarge, "image_too_large", lambda: normalize_image(data, ImageLimits(max_pixels=10**9)))


def test_pillow_decompression_bomb_warning_is_mapped_when_escalated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6_000)  # Pillow warns between 1x and 2x
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    generous = ImageLimits(max_pixels=10**9)

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        raises(ImageTooLarge, "image_too_large", lambda: normalize_image(data, generous))
    # Not escalated, it stays a warning: our configured limit is the one that decides.
    with pytest.warns(Image.DecompressionBombWarning):
        assert normalize_image(data, generous).width == 100
    assert Image.MAX_IMAGE_PIXELS == 6_000  # read, never changed


# --------------------------------------------------------------------------------------------
# Formats and animation


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_other_formats_are_not_allowed(fmt: str) -> None:
    data = encode(Image.new("RGB", (8, 8), RED), fmt)

    error = raises(ImageFormatNotAllowed, "image_format_not_allowed", lambda: normalize_image(data, LIMITS))

    assert error.extensions["format"] == fmt
    assert error.extensions["allowed_formats"] == ["JPEG", "PNG", "WEBP"]


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64,
        b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + b"\x00" * 64,
    ],
)
def test_heic_and_avif_are_named_even_without_a_decoder(data: bytes) -> None:
    raises(ImageFormatNotAllowed, "image_format_not_allowed", lambda: inspect_image(data, LIMITS))


def test_an_allowed_extra_format_becomes_png() -> None:
    palette = Image.new("RGB", (8, 8), RED).convert("P")
    result = normalize_image(encode(palette, "GIF"), ImageLimits(allowed_formats=frozenset({"GIF"})))
    assert (result.format, result.source_format) == ("PNG", "GIF")
    assert pixel(decode(result.data), (0, 0)) == RED


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_animated_images_are_rejected(fmt: str) -> None:
    error = raises(ImageAnimated, "image_animated", lambda: inspect_image(animated(fmt), LIMITS))
    assert error.extensions == {"format": fmt, "frames": 2}


def test_animated_gif_is_rejected_when_gif_is_allowed() -> None:
    limits = ImageLimits(allowed_formats=frozenset({"GIF"}))
    raises(ImageAnimated, "image_animated", lambda: normalize_image(animated("GIF"), limits))


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_animation_can_be_allowed_and_keeps_the_first_frame(fmt: str) -> None:
    result = normalize_image(animated(fmt), ImageLimits(allow_animated=True))
    assert close(pixel(decode(result.data).convert("RGB"), (8, 8)), RED)


def test_mpo_from_a_phone_is_a_still_jpeg() -> None:
    # MPO: a JPEG with extra pictures (stereo pair, depth map); not an animation.
    first, second = Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), WHITE)
    data = encode(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(data)).format == "MPO"

    result = normalize_image(data, LIMITS)

    assert (result.format, result.source_format) == ("JPEG", "JPEG")
    assert close(pixel(decode(result.data), (8, 8)), RED)


# --------------------------------------------------------------------------------------------
# Pixel modes


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = encode(Image.new("CMYK", (32, 32), (255, 0, 0, 0)), "JPEG")  # pure cyan ink

    result = normalize_image(data, LIMITS)

    assert (result.format, result.source_mode) == ("JPEG", "CMYK")
    out = decode(result.data)
    assert out.mode == "RGB"
    assert close(pixel(out, (16, 16)), (0, 255, 255))


def test_palette_png_with_transparency_becomes_rgba_png() -> None:
    img = Image.new("P", (4, 4), 0)
    img.putpalette([*RED, 0, 255, 0])
    img.putpixel((0, 0), 1)
    data = encode(img, "PNG", transparency=1)

    result = normalize_image(data, LIMITS)

    assert (result.format, result.has_alpha, result.source_mode) == ("PNG", True, "P")
    out = decode(result.data)
    assert out.mode == "RGBA"
    assert pixel(out, (0, 0))[3] == 0
    assert pixel(out, (2, 2)) == (*RED, 255)


def test_palette_png_without_transparency_becomes_rgb() -> None:
    img = Image.new("P", (4, 4), 0)
    img.putpalette([*RED])

    result = normalize_image(encode(img, "PNG"), LIMITS)

    assert result.has_alpha is False
    out = decode(result.data)
    assert (out.mode, pixel(out, (1, 1))) == ("RGB", RED)


def test_16_bit_grayscale_is_scaled_not_clipped() -> None:
    img = Image.new("I;16", (8, 8), 32_768)  # mid grey in 16 bits
    img.paste(65_535, (0, 0, 4, 8))
    data = encode(img, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"

    result = normalize_image(data, LIMITS)

    out = decode(result.data)
    assert (out.mode, result.source_mode) == ("RGB", "I;16")
    assert pixel(out, (1, 1)) == WHITE
    assert close(pixel(out, (6, 6)), (128, 128, 128), tolerance=1)


@pytest.mark.parametrize(
    ("mode", "value", "grey"),
    [("I", 32_768, 128), ("I", 200, 200), ("F", 0.5, 128), ("F", 100.0, 100)],
)
def test_32_bit_and_float_images_are_scaled(mode: str, value: float, grey: int) -> None:
    thumb = thumbnail_from_image(Image.new(mode, (16, 16), value))
    assert close(pixel(decode(thumb.data).convert("RGB"), (8, 8)), (grey,) * 3, tolerance=3)


@pytest.mark.parametrize(
    ("mode", "colour", "out_mode"),
    [("L", 90, "RGB"), ("1", 1, "RGB"), ("LA", (90, 128), "RGBA"), ("RGBA", (*RED, 128), "RGBA")],
)
def test_other_modes_become_8_bit_rgb_or_rgba(mode: str, colour: Any, out_mode: str) -> None:
    result = normalize_image(encode(Image.new(mode, (8, 8), colour), "PNG"), LIMITS)
    assert decode(result.data).mode == out_mode
    assert result.has_alpha is (out_mode == "RGBA")


def test_grayscale_jpeg_stays_jpeg_in_rgb() -> None:
    result = normalize_image(encode(photo(mode="L"), "JPEG"), LIMITS)
    assert (result.format, result.source_mode, decode(result.data).mode) == ("JPEG", "L", "RGB")


def test_rgb_png_with_a_transparent_colour_gets_alpha() -> None:
    img = Image.new("RGB", (4, 4), WHITE)
    img.putpixel((0, 0), RED)
    result = normalize_image(encode(img, "PNG", transparency=WHITE), LIMITS)
    out = decode(result.data)
    assert (pixel(out, (0, 0)), pixel(out, (3, 3))[3]) == ((*RED, 255), 0)


def test_webp_with_alpha_stays_webp_and_lossless_stays_lossless() -> None:
    img = Image.new("RGBA", (16, 16), (*RED, 255))
    img.putpixel((0, 0), (0, 0, 0, 0))

    lossy = normalize_image(encode(img, "WEBP", quality=80), LIMITS)
    lossless = normalize_image(encode(img, "WEBP", lossless=True), LIMITS)

    assert (lossy.format, lossy.has_alpha) == ("WEBP", True)
    assert b"VP8 " in lossy.data
    assert b"VP8L" in lossless.data
    assert pixel(decode(lossless.data), (0, 0))[3] == 0


# --------------------------------------------------------------------------------------------
# Orientation and metadata


def test_exif_orientation_6_is_applied_to_the_pixels() -> None:
    # 40x20 as stored, red marker in the stored top-left corner. Orientation 6 means "rotate
    # 90 degrees clockwise to display", which takes the top-left corner to the top-right.
    img = Image.new("RGB", (40, 20), WHITE)
    img.paste(RED, (0, 0, 8, 8))
    data = encode(img, "JPEG", quality=95, exif=exif_with_gps(orientation=6))
    info = inspect_image(data, LIMITS)
    assert (info.orientation, info.upright_size) == (6, (20, 40))

    result = normalize_image(data, LIMITS)

    assert (result.width, result.height, result.was_rotated) == (20, 40, True)
    out = decode(result.data)
    assert out.size == (20, 40)
    assert close(pixel(out, (16, 3)), RED, tolerance=40)  # top-right
    for corner in [(3, 3), (3, 36), (16, 36)]:
        assert close(pixel(out, corner), WHITE, tolerance=40), corner
    assert out.getexif().get(ExifTags.Base.Orientation) is None  # not rotated a second time


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_gps_and_other_metadata_are_stripped(fmt: str) -> None:
    exif = exif_with_gps()
    params: dict[str, Any] = {"exif": exif, "xmp": b"<x:xmpmeta>SecretXmp</x:xmpmeta>"}
    if fmt == "JPEG":
        params["comment"] = "SecretComment"
    if fmt == "PNG":
        text = PngImagePlugin.PngInfo()
        text.add_text("Comment", "SecretComment")
        params["pnginfo"] = text
    data = encode(photo(), fmt, **params)
    assert decode(data).getexif().get_ifd(ExifTags.IFD.GPSInfo)  # the input does carry GPS

    result = normalize_image(data, LIMITS)

    out = decode(result.data)
    assert not out.getexif()
    assert not out.getexif().get_ifd(ExifTags.IFD.GPSInfo)
    for secret in (b"SecretCam", b"SecretXmp", b"SecretComment", b"Exif\x00\x00"):
        assert secret not in result.data


def test_malformed_exif_does_not_reject_the_image() -> None:
    data = encode(photo(), "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff" + b"\x07" * 40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow complains about the broken EXIF block
        result = normalize_image(data, LIMITS)
    assert (result.width, result.was_rotated) == (120, False)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_rgb_icc_profile_is_kept(fmt: str) -> None:
    icc = srgb_icc()
    result = normalize_image(encode(photo(), fmt, icc_profile=icc), LIMITS)
    assert decode(result.data).info.get("icc_profile") == icc


# --------------------------------------------------------------------------------------------
# Thumbnails


def test_thumbnail_keeps_aspect_ratio_and_is_webp() -> None:
    thumb = make_thumbnail(encode(Image.new("RGB", (1000, 500), RED), "PNG"))

    assert isinstance(thumb, Thumbnail)
    assert (thumb.width, thumb.height, thumb.content_type) == (512, 256, "image/webp")
    out = decode(thumb.data)
    assert (out.format, out.size) == ("WEBP", (512, 256))


def test_thumbnail_keeps_alpha() -> None:
    img = Image.new("RGBA", (1000, 500), (*RED, 255))
    img.paste((0, 0, 0, 0), (0, 0, 500, 500))

    out = decode(make_thumbnail(encode(img, "PNG"), max_side=100).data)

    assert (out.size, out.mode) == ((100, 50), "RGBA")
    assert pixel(out, (10, 25))[3] == 0
    assert pixel(out, (90, 25))[3] == 255


def test_thumbnail_never_upscales_and_is_upright() -> None:
    img = Image.new("RGB", (40, 20), WHITE)
    thumb = make_thumbnail(encode(img, "JPEG", exif=exif_with_gps(orientation=6)), quality=60)
    assert (thumb.width, thumb.height) == (20, 40)
    assert b"SecretCam" not in thumb.data


def test_large_jpeg_thumbnail_is_decoded_at_reduced_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    img = Image.new("RGB", (4000, 3000), WHITE)
    img.paste(RED, (0, 0, 2000, 3000))
    data = encode(img, "JPEG", quality=80)
    decoded_sizes: list[tuple[int, int]] = []
    original_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self: JpegImagePlugin.JpegImageFile, mode: str | None, size: tuple[int, int] | None) -> Any:
        result = original_draft(self, mode, size)
        decoded_sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)

    thumb = make_thumbnail(data)

    assert (thumb.width, thumb.height) == (512, 384)
    assert decoded_sizes == [(2000, 1500)]  # libjpeg decoded a quarter of the pixels
    out = decode(thumb.data)
    assert close(pixel(out, (100, 200)), RED)
    assert close(pixel(out, (400, 200)), WHITE)


def test_thumbnail_from_image_does_not_touch_the_callers_image() -> None:
    img = Image.new("RGB", (600, 300), RED)
    img.info["exif"] = exif_with_gps().tobytes()

    thumb = thumbnail_from_image(img, max_side=60)

    assert (thumb.width, thumb.height) == (60, 30)
    assert img.size == (600, 300)
    assert "exif" in img.info
    with pytest.raises(ValueError, match="max_side"):
        thumbnail_from_image(img, max_side=0)


def test_normalize_with_thumbnail_decodes_once(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(photo((1000, 500)), "JPEG")
    opened: list[object] = []
    original_open = Image.open

    def counting_open(*args: Any, **kwargs: Any) -> ImageFile.ImageFile:
        opened.append(args[0])
        return original_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)

    normalized, thumb = normalize_with_thumbnail(data, LIMITS, thumb_max_side=100)

    assert len(opened) == 1
    assert (normalized.format, normalized.width, normalized.height) == ("JPEG", 1000, 500)
    assert (thumb.width, thumb.height) == (100, 50)


def test_normalize_with_thumbnail_validates_like_normalize() -> None:
    raises(ImageTooLarge, "image_too_large", lambda: normalize_with_thumbnail(bomb_png(), LIMITS))


def test_engine_output_keeps_the_colour_profile_in_either_format() -> None:
    """OUTPUT_FORMAT=webp must not drop the ICC profile (Pillow's WebP writer does not fall back to it)."""
    from shared.engines.output import encode_output

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 30, 40)).save(buffer, "JPEG", icc_profile=srgb, quality=95)
    for wanted in ("png", "webp"):
        normalized, _thumb = encode_output(buffer.getvalue(), wanted, ImageLimits(), 16)
        with Image.open(io.BytesIO(normalized.data)) as stored:
            assert stored.format == wanted.upper()
            assert stored.info.get("icc_profile") == srgb
