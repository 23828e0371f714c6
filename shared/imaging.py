"""Validation and normalisation of user-supplied images, and thumbnails.

Every image that enters the system (uploads now, generated and edited images later)
goes through :func:`normalize_image`: fully decoded (so truncation is caught), turned
upright, converted to 8-bit RGB/RGBA, stripped of metadata (EXIF with GPS, XMP,
comments) and re-encoded. :func:`inspect_image` is the cheap header-only check for
rejecting early. Failures are :class:`~shared.errors.InvalidImage` subclasses (422),
each with its own stable ``code``.

Pillow is imported inside the functions, never at module level: HTTP entry points
import this module, and their cold start must not pay for Pillow until an image is
actually handled.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

from shared.errors import InvalidImage

if TYPE_CHECKING:
    from PIL import Image, ImageFile

__all__ = [
    "DEFAULT_ALLOWED_FORMATS",
    "IMAGE_ERRORS",
    "ImageAnimated",
    "ImageFormatNotAllowed",
    "ImageInfo",
    "ImageLimits",
    "ImageTooLarge",
    "ImageTruncated",
    "ImageUnreadable",
    "NormalizedImage",
    "Thumbnail",
    "inspect_image",
    "make_thumbnail",
    "normalize_image",
    "normalize_with_thumbnail",
    "sniff_image_content_type",
    "thumbnail_from_image",
]


# ---------------------------------------------------------------------------------
# Errors


class ImageUnreadable(InvalidImage):
    """Not an image at all (text, empty, unknown container) or an unusable pixel mode."""

    code = "image_unreadable"
    title = "The file is not a readable image"


class ImageTruncated(InvalidImage):
    """Recognisably an image, but the data ends early or is corrupt."""

    code = "image_truncated"
    title = "The image data is truncated or corrupt"


class ImageFormatNotAllowed(InvalidImage):
    """A real image in a format we do not accept (GIF, BMP, TIFF, HEIC, ...)."""

    code = "image_format_not_allowed"
    title = "This image format is not accepted"


class ImageTooLarge(InvalidImage):
    """Too many bytes, pixels or too long a side; also the decompression-bomb guard."""

    code = "image_too_large"
    title = "The image is too large"


class ImageAnimated(InvalidImage):
    """A multi-frame image (APNG, animated WebP/GIF) where a still one is required."""

    code = "image_animated"
    title = "Animated images are not accepted"


# What reading an image can answer with (a route's contract lists them together).
IMAGE_ERRORS: Final = (ImageUnreadable, ImageTruncated, ImageFormatNotAllowed, ImageTooLarge, ImageAnimated)


# ---------------------------------------------------------------------------------
# Value types

DEFAULT_ALLOWED_FORMATS: Final[frozenset[str]] = frozenset({"JPEG", "PNG", "WEBP"})


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """What an image may be. Formats are Pillow's names: "JPEG", "PNG", "WEBP", ..."""

    max_bytes: int = 25 * 1024 * 1024
    # The decompression-bomb guard, checked on the header before any pixel is decoded.
    max_pixels: int = 50_000_000
    max_side: int = 12_000
    allowed_formats: frozenset[str] = DEFAULT_ALLOWED_FORMATS
    # When True, multi-frame files are accepted and only the first frame is used.
    allow_animated: bool = False

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "max_side"):
            if getattr(self, name) < 1:
                raise ValueError(f"ImageLimits.{name} must be positive")
        # Configuration may say "jpeg"; Pillow's names are upper case.
        upper = frozenset(f.upper() for f in self.allowed_formats)
        object.__setattr__(self, "allowed_formats", upper)


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What the header says. ``width``/``height`` are as stored, before orientation."""

    format: str
    content_type: str
    width: int
    height: int
    mode: str
    frames: int
    has_alpha: bool
    orientation: int  # EXIF orientation 1..8; 1 when absent or unreadable

    @property
    def upright_size(self) -> tuple[int, int]:
        """Width and height once the EXIF orientation is applied."""
        if self.orientation in _SWAPS_AXES:
            return self.height, self.width
        return self.width, self.height


@dataclass(frozen=True, slots=True)
class NormalizedImage:
    """A validated, upright, metadata-free, re-encoded image, ready to store."""

    data: bytes
    content_type: str
    format: str
    extension: str
    width: int
    height: int
    has_alpha: bool
    source_format: str
    source_mode: str
    was_rotated: bool
    upscaled_from: tuple[int, int] | None = None  # the size before a top-up to a minimum short side


# A top-up to a minimum short side resamples by at most this factor: a few percent (1024 -> 1080) is
# invisible, more would invent detail the image does not have.
MAX_TOP_UP = 1.1


@dataclass(frozen=True, slots=True)
class Thumbnail:
    """A WebP preview that keeps the aspect ratio and the alpha channel."""

    data: bytes
    content_type: str
    width: int
    height: int


# ---------------------------------------------------------------------------------
# Constants

_CONTENT_TYPES: Final[dict[str, str]] = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "AVIF": "image/avif",
    "HEIF": "image/heic",
}
_FORMAT_BY_CONTENT_TYPE: Final[dict[str, str]] = {
    **{content_type: fmt for fmt, content_type in _CONTENT_TYPES.items()},
    "image/heif": "HEIF",
}
_EXTENSIONS: Final[dict[str, str]] = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}

_JPEG_QUALITY: Final = 92
_WEBP_QUALITY: Final = 90
# libwebp's speed/size trade-off (0..6); 6 is several times slower for a few percent.
_WEBP_METHOD: Final = 4
# PNG optimize=True means level 9 plus filter search: much slower, barely smaller.
_PNG_COMPRESS_LEVEL: Final = 6
# Shrink by whole factors (cheap) to twice the target first, then LANCZOS the rest:
# indistinguishable from a full LANCZOS pass at a fraction of the cost.
_REDUCING_GAP: Final = 2.0

_ORIENTATION_TAG: Final = 0x0112
_SWAPS_AXES: Final = frozenset({5, 6, 7, 8})
# Where Pillow keeps metadata that can carry an orientation.
_ORIENTATION_KEYS: Final = ("exif", "xmp", "XML:com.adobe.xmp", "Raw profile type exif")

_TIFF_MAGIC: Final = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # + BigTIFF
_BMP_HEADER_SIZES: Final = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
_ISOBMFF_AVIF: Final = frozenset({b"avif", b"avis"})
_ISOBMFF_HEIC: Final = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx"})
_ISOBMFF_HEIF: Final = frozenset({b"mif1", b"msf1"})

# What Pillow's plugins raise on malformed data. Anything else (MemoryError, our own
# bugs) propagates rather than being blamed on the file.
_DECODE_ERRORS: Final = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    struct.error,
)


# ---------------------------------------------------------------------------------
# Public API


def sniff_image_content_type(data: bytes) -> str | None:
    """The image content type announced by the magic bytes, or None. No Pillow."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] in _TIFF_MAGIC:
        return "image/tiff"
    # "BM" alone is too weak (any text starting "BM"): also want a DIB header size.
    if data[:2] == b"BM" and len(data) >= 18 and struct.unpack_from("<I", data, 14)[0] in _BMP_HEADER_SIZES:
        return "image/bmp"
    if data[4:8] == b"ftyp":
        return _sniff_isobmff(data)
    return None


def inspect_image(data: bytes, limits: ImageLimits) -> ImageInfo:
    """Check the header (format, size, frames) without decoding any pixels.

    Raises the :class:`InvalidImage` subclasses for whatever the header gives away;
    truncation further into the file is only found by :func:`normalize_image`.
    """
    _img, _source, info = _open(data, limits)
    return info


def normalize_image(data: bytes, limits: ImageLimits) -> NormalizedImage:
    """Fully validate ``data`` and re-encode it upright, 8-bit, without metadata."""
    normalized, _pixels = _normalize(data, limits)
    return normalized


def normalize_with_thumbnail(
    data: bytes,
    limits: ImageLimits,
    thumb_max_side: int = 512,
    *,
    output_format: str | None = None,
    min_short_side: int = 0,
) -> tuple[NormalizedImage, Thumbnail]:
    """:func:`normalize_image` plus a thumbnail of its result, decoding only once.

    ``output_format`` ("PNG" or "WEBP") encodes the decoded pixels straight into that format
    instead of keeping the source's, so nothing is compressed twice. ``min_short_side``: an image
    whose short side is below it by at most :data:`MAX_TOP_UP` is resampled (Lanczos) up to it."""
    normalized, pixels = _normalize(data, limits, output_format, min_short_side)
    return normalized, thumbnail_from_image(pixels, thumb_max_side)


def make_thumbnail(
    data: bytes,
    max_side: int = 512,
    quality: int = 80,
    *,
    limits: ImageLimits | None = None,
) -> Thumbnail:
    """A WebP thumbnail of encoded image bytes, no side longer than ``max_side``.

    ``limits`` (default ``ImageLimits()``) applies here too: a thumbnail must not be a
    way around the decompression-bomb guard.
    """
    _check_max_side(max_side)
    img, source, info = _open(data, limits if limits is not None else ImageLimits())
    if info.format == "JPEG":
        # Have libjpeg decode at 1/2, 1/4 or 1/8 scale: a big photo then costs a
        # fraction of the memory and time. draft() never goes below the size asked.
        width, height = _fit_within(img.size, max_side)
        img.draft("RGB", (int(width * _REDUCING_GAP), int(height * _REDUCING_GAP)))
    _load(img, source, data, info.format)
    return thumbnail_from_image(img, max_side, quality)


def thumbnail_from_image(img: Image.Image, max_side: int = 512, quality: int = 80) -> Thumbnail:
    """A WebP thumbnail of an already decoded image; ``img`` is not modified.

    An EXIF orientation still on ``img`` is applied, so a freshly opened photo comes
    out upright as well.
    """
    from PIL import Image

    _check_max_side(max_side)
    icc = _rgb_icc_profile(img)
    upright, _rotated = _upright(img)
    pixels = _to_rgb(upright)
    size = _fit_within(pixels.size, max_side)
    if size != pixels.size:
        # What Image.thumbnail() does (same filter, same reducing gap), but into a new
        # image rather than shrinking the caller's in place.
        pixels = pixels.resize(size, Image.Resampling.LANCZOS, reducing_gap=_REDUCING_GAP)
    elif pixels is img:
        pixels = img.copy()  # small, and its metadata is about to be cleared
    pixels.info = {}  # the WebP saver is given everything it may write explicitly
    buffer = io.BytesIO()
    pixels.save(
        buffer,
        "WEBP",
        quality=quality,
        method=_WEBP_METHOD,
        icc_profile=icc,
        exif=b"",
        xmp=b"",
    )
    return Thumbnail(
        data=buffer.getvalue(),
        content_type="image/webp",
        width=pixels.width,
        height=pixels.height,
    )


# ---------------------------------------------------------------------------------
# Opening and header checks


class _Source(io.BytesIO):
    """The bytes being decoded; remembers a decoder asking for data past the end.

    Pillow reports truncation only while the process-global
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` is False, and any library may have set it. A
    read at the end of the data while decoding means the decoder needed more than the
    file has, whatever that global says.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.overrun = False

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        if not chunk and size is not None and size > 0:
            self.overrun = True
        return chunk


def _open(data: bytes, limits: ImageLimits) -> tuple[ImageFile.ImageFile, _Source, ImageInfo]:
    """Identify ``data`` and check everything its header tells, decoding no pixels."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageUnreadable("The file is empty", bytes=0)
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(
            f"The file is {len(data)} bytes; the limit is {limits.max_bytes}",
            bytes=len(data),
            max_bytes=limits.max_bytes,
        )
    sniffed_type = sniff_image_content_type(data)
    sniffed = _FORMAT_BY_CONTENT_TYPE.get(sniffed_type) if sniffed_type else None
    if sniffed is not None and sniffed not in limits.allowed_formats:
        raise _not_allowed(sniffed, limits)

    source = _Source(data)
    try:
        # Only the allowed decoders see the data: less attack surface, and no lenient
        # plugin (TGA has no magic number) "recognising" a text file.
        img = Image.open(source, formats=_pillow_formats(limits.allowed_formats))
    except UnidentifiedImageError as exc:
        if sniffed is not None and sniffed in Image.OPEN:
            raise ImageTruncated(f"The {sniffed} header is truncated or corrupt", format=sniffed) from exc
        raise ImageUnreadable("The data is not a readable image", content_type=sniffed_type) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _pillow_bomb(exc, limits) from exc
    except _DECODE_ERRORS as exc:
        raise ImageTruncated("The image header is truncated or corrupt", format=sniffed) from exc

    try:
        info = _header_info(img, limits)
    except _DECODE_ERRORS as exc:  # e.g. counting the frames of a broken GIF
        raise ImageTruncated("The image data is truncated or corrupt", format=img.format) from exc
    return img, source, info


def _header_info(img: ImageFile.ImageFile, limits: ImageLimits) -> ImageInfo:
    # MPO is Pillow's name for a JPEG carrying extra pictures (stereo pairs, phone
    # depth maps). It is a JPEG to everyone else; only the primary picture is used.
    fmt = "JPEG" if img.format == "MPO" else (img.format or "")
    if fmt not in limits.allowed_formats:
        raise _not_allowed(fmt, limits)

    width, height = img.size
    if width < 1 or height < 1:
        raise ImageUnreadable("The image has no pixels", width=width, height=height)
    # The decompression-bomb guard: the header's size, before anything is decoded,
    # and independent of Pillow's process-global Image.MAX_IMAGE_PIXELS.
    if width * height > limits.max_pixels or max(width, height) > limits.max_side:
        raise ImageTooLarge(
            f"The image is {width}x{height} pixels; the limit is {limits.max_pixels} "
            f"pixels and {limits.max_side} per side",
            width=width,
            height=height,
            pixels=width * height,
            max_pixels=limits.max_pixels,
            max_side=limits.max_side,
        )

    frames = 1
    if fmt != "JPEG" and getattr(img, "is_animated", False):
        frames = int(getattr(img, "n_frames", 2))
        if not limits.allow_animated:
            raise ImageAnimated(
                f"The {fmt} image has {frames} frames; a still image is required",
                format=fmt,
                frames=frames,
            )

    return ImageInfo(
        format=fmt,
        content_type=_CONTENT_TYPES.get(fmt, f"image/{fmt.lower()}"),
        width=width,
        height=height,
        mode=img.mode,
        frames=frames,
        has_alpha=img.has_transparency_data,
        orientation=_orientation(img),
    )


def _pillow_formats(allowed: frozenset[str]) -> list[str]:
    """The allowed formats Pillow can open (Image.open raises KeyError on others)."""
    from PIL import Image

    if not allowed <= Image.OPEN.keys():
        Image.init()  # registers the plugins preinit() leaves out, such as WEBP
    return sorted(f for f in allowed if f in Image.OPEN)


def _not_allowed(fmt: str, limits: ImageLimits) -> ImageFormatNotAllowed:
    return ImageFormatNotAllowed(
        f"{fmt} images are not accepted",
        format=fmt,
        allowed_formats=sorted(limits.allowed_formats),
    )


def _pillow_bomb(exc: Exception, limits: ImageLimits | None = None) -> ImageTooLarge:
    # Pillow's own guard (its global MAX_IMAGE_PIXELS) tripped first. Its warning only
    # arrives as an exception if the process escalates warnings: we change neither that
    # global nor the warning filters, both process-wide while requests run concurrently.
    extensions = {} if limits is None else {"max_pixels": limits.max_pixels}
    return ImageTooLarge(f"The image is too large to decode safely: {exc}", **extensions)


def _sniff_isobmff(data: bytes) -> str | None:
    """AVIF/HEIC/HEIF from an ISO-BMFF ``ftyp`` box (major and compatible brands)."""
    box_size = struct.unpack_from(">I", data, 0)[0]
    end = min(box_size, len(data), 4096) if box_size >= 16 else 16
    brands = {data[8:12]} | {data[i : i + 4] for i in range(16, end - 3, 4)}
    if brands & _ISOBMFF_AVIF:
        return "image/avif"
    if brands & _ISOBMFF_HEIC:
        return "image/heic"
    if brands & _ISOBMFF_HEIF:
        return "image/heif"
    return None  # some other ISO-BMFF file, e.g. an MP4 video


# ---------------------------------------------------------------------------------
# Decoding and encoding


def _load(img: ImageFile.ImageFile, source: _Source, data: bytes, fmt: str) -> None:
    """Decode every pixel, failing on truncated or corrupt data."""
    from PIL import Image

    if fmt == "PNG":
        problem = _png_problem(data)
        if problem is not None:
            raise ImageTruncated(f"The PNG data is truncated or corrupt: {problem}", format=fmt)
    source.overrun = False
    try:
        img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _pillow_bomb(exc) from exc
    except _DECODE_ERRORS as exc:
        raise ImageTruncated(f"The {fmt} data is truncated or corrupt", format=fmt) from exc
    if source.overrun:
        raise ImageTruncated(f"The {fmt} data is truncated", format=fmt)


def _png_problem(data: bytes) -> str | None:
    """Why the PNG chunk structure is broken, or None if every chunk is whole and sound.

    Pillow never checks the CRCs of the pixel data and, with LOAD_TRUNCATED_IMAGES
    set, accepts a file that stops early. This walk costs one CRC32 over the file.
    """
    view = memoryview(data)
    pos = 8  # after the signature
    while True:
        if pos + 12 > len(data):
            return "it ends before the IEND chunk"
        length, chunk_type = struct.unpack_from(">I4s", data, pos)
        name = chunk_type.decode("latin-1")
        end = pos + 12 + length
        if end > len(data):
            return f"chunk {name!r} is cut short"
        (crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(view[pos + 4 : end - 4]) != crc:
            return f"chunk {name!r} has a bad CRC"
        if chunk_type == b"IEND":
            return None
        pos = end


def _normalize(
    data: bytes, limits: ImageLimits, output_format: str | None = None, min_short_side: int = 0
) -> tuple[NormalizedImage, Image.Image]:
    """Normalise ``data``; also return the final pixels, so a thumbnail needs no decode."""
    img, source, info = _open(data, limits)
    _load(img, source, data, info.format)
    icc = _rgb_icc_profile(img)
    upright, was_rotated = _upright(img)
    pixels = _to_rgb(upright)
    upscaled_from = None
    short = min(pixels.size)
    if 0 < short < min_short_side and min_short_side <= short * MAX_TOP_UP:
        from PIL import Image

        upscaled_from = pixels.size
        scale = min_short_side / short
        size = tuple(max(min_short_side, round(side * scale)) for side in pixels.size)
        pixels = pixels.resize((size[0], size[1]), Image.Resampling.LANCZOS)
    # Metadata (EXIF with GPS, XMP, comments, text chunks) goes by not carrying it
    # over, but savers fall back to .info for some keys (JPEG comment, PNG ICC), so
    # replace it. The image is ours (decoded or converted here). The ICC profile
    # stays for thumbnail_from_image.
    pixels.info = {"icc_profile": icc} if icc else {}
    has_alpha = pixels.mode == "RGBA"

    params: dict[str, Any]
    if output_format not in (None, "PNG", "WEBP"):
        raise ValueError(f"output_format must be PNG or WEBP, not {output_format!r}")
    if output_format == "WEBP" or (output_format is None and info.format == "WEBP"):
        out_format = "WEBP"
        params = {"quality": _WEBP_QUALITY, "method": _WEBP_METHOD, "exif": b"", "xmp": b""}
        if info.format == "WEBP" and _webp_is_lossless(data):
            params["lossless"] = True  # a lossy re-encode would degrade it
    elif output_format is None and info.format == "JPEG" and not has_alpha:
        out_format = "JPEG"
        params = {"quality": _JPEG_QUALITY, "optimize": True}
    else:
        # PNG stays PNG; other formats, and anything with alpha, become lossless PNG.
        out_format = "PNG"
        params = {"compress_level": _PNG_COMPRESS_LEVEL}

    buffer = io.BytesIO()
    pixels.save(buffer, out_format, icc_profile=icc, **params)
    normalized = NormalizedImage(
        data=buffer.getvalue(),
        content_type=_CONTENT_TYPES[out_format],
        format=out_format,
        extension=_EXTENSIONS[out_format],
        width=pixels.width,
        height=pixels.height,
        has_alpha=has_alpha,
        source_format=info.format,
        source_mode=info.mode,
        was_rotated=was_rotated,
        upscaled_from=upscaled_from,
    )
    return normalized, pixels


def _webp_is_lossless(data: bytes) -> bool:
    """Whether the first image chunk of a WebP file is VP8L (lossless), not VP8."""
    pos = 12  # after "RIFF", the size and "WEBP"
    while pos + 8 <= len(data):
        fourcc = data[pos : pos + 4]
        if fourcc in (b"VP8L", b"VP8 "):
            return fourcc == b"VP8L"
        if fourcc == b"ANMF":  # a frame: its sub-chunks follow a 16-byte header
            pos += 8 + 16
            continue
        (size,) = struct.unpack_from("<I", data, pos + 4)
        pos += 8 + size + (size & 1)  # chunks are padded to an even size
    return False


# ---------------------------------------------------------------------------------
# Pixel operations


def _orientation(img: Image.Image) -> int:
    """The EXIF (or XMP) orientation, 1..8; 1 when absent or unreadable."""
    # Without one of these there is nothing to find, and PngImageFile.getexif() would
    # decode the whole image looking for an eXIf chunk after the pixel data.
    has_metadata = any(key in img.info for key in _ORIENTATION_KEYS)
    if not has_metadata and not hasattr(img, "tag_v2"):  # tag_v2: TIFF tags
        return 1
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # untrusted metadata, discarded anyway: never a reason to reject
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _upright(img: Image.Image) -> tuple[Image.Image, bool]:
    """Apply the EXIF orientation to the pixels; return the image and whether it did.

    This is ImageOps.exif_transpose's table, used directly: exif_transpose also
    re-serialises the EXIF block (which we discard), and that raises TypeError,
    struct.error, ... on a few percent of malformed EXIF blocks.
    """
    from PIL import Image

    method = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.get(_orientation(img))
    if method is None:
        return img, False
    rotated = img.transpose(method)
    # Keep the ICC profile and palette transparency; drop what holds the orientation,
    # which must not be applied a second time downstream.
    rotated.info = {k: v for k, v in img.info.items() if k not in _ORIENTATION_KEYS}
    return rotated, True


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB, or RGBA if the image has any transparency. May return ``img``."""
    mode = img.mode
    if mode == "RGBA" or (mode == "RGB" and "transparency" not in img.info):
        return img
    if mode == "CMYK":
        # YCCK JPEGs arrive as CMYK too (libjpeg converts them). A plain conversion
        # without the ICC profile: close enough for product shots, and no CMM needed.
        return img.convert("RGB")
    if mode in ("I", "F") or mode.startswith("I;16"):
        return _to_8bit(img).convert("RGB")
    # 1, L, P, LA, La, PA, RGBa, RGBX, YCbCr, ...: a transparent palette index or grey
    # level / colour (PNG tRNS) counts as transparency, as does an alpha band.
    target = "RGBA" if img.has_transparency_data else "RGB"
    try:
        return img.convert(target)
    except ValueError as exc:  # e.g. LAB, which Pillow cannot convert without a CMM
        raise ImageUnreadable(f"Images in pixel mode {mode} are not supported", mode=mode) from exc


def _to_8bit(img: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer or float samples into mode L.

    Pillow's own conversion clips (every 16-bit value above 255 turns white), so the
    samples are scaled first.
    """
    if img.mode.startswith("I;16"):
        # 16-bit samples span 0..65535 by definition, and 65535 / 257 == 255.
        scale, offset = 1 / 257, 0.0
        img = img.convert("I")
    else:
        # 32-bit int or float: no defined range, so go by what the data holds.
        low, high = cast("tuple[float, float]", img.getextrema())  # one band
        if img.mode == "F" and low >= 0 and high <= 1:
            scale, offset = 255.0, 0.0  # normalised floats
        elif low >= 0 and high <= 255:
            scale, offset = 1.0, 0.0
        elif low >= 0 and high <= 65535:
            scale, offset = 1 / 257, 0.0  # 16-bit data held in a 32-bit mode
        elif high > low:
            scale = 255 / (high - low)  # anything else: stretch the range in use
            offset = -low * scale
        else:
            scale, offset = 0.0, 128.0  # flat, and out of range: mid grey
    # The +0.5 rounds: Pillow's integer point transform truncates.
    return img.point(lambda v: v * scale + (offset + 0.5)).convert("L")


def _rgb_icc_profile(img: Image.Image) -> bytes | None:
    """The embedded ICC profile if it describes RGB, i.e. fits what is written out.

    A CMYK or grey profile would be wrong on the converted RGB pixels: dropped.
    """
    icc = img.info.get("icc_profile")
    if isinstance(icc, bytes) and len(icc) >= 128 and icc[16:20] == b"RGB ":
        return icc
    return None


def _fit_within(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``size`` scaled down (never up) so that no side exceeds ``max_side``."""
    width, height = size
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def _check_max_side(max_side: int) -> None:
    if max_side < 1:
        raise ValueError("max_side must be positive")


@dataclass(frozen=True)
class DecodedImage:
    """Validated pixels, upright and in 8-bit RGB/RGBA, ready for editing (not re-encoded)."""

    image: Image.Image
    info: ImageInfo
    icc_profile: bytes | None
    scale: int  # 1, or 2/4/8 when libjpeg decoded a reduced image


def decode_image(data: bytes, limits: ImageLimits, *, draft_to: tuple[int, int] | None = None) -> DecodedImage:
    """Validate and decode like :func:`normalize_image` (bombs, truncation, animation, EXIF,
    CMYK/16-bit/palette to 8-bit RGB/RGBA) without re-encoding.

    ``draft_to``: the full image's size the caller needs at least; a JPEG is then decoded at the
    smallest 1/2, 1/4 or 1/8 scale still at least that large (``scale`` says which).
    """
    import math

    img, source, info = _open(data, limits)
    scale = 1
    if draft_to is not None and info.format == "JPEG" and info.orientation == 1:
        img.draft(None, draft_to)
        for factor in (8, 4, 2):
            if (math.ceil(info.width / factor), math.ceil(info.height / factor)) == img.size:
                scale = factor
                break
    _load(img, source, data, info.format)
    icc = _rgb_icc_profile(img)
    upright, _rotated = _upright(img)
    pixels = _to_rgb(upright)
    if pixels is img:
        pixels = img.copy()  # detach from the decoder and its file
    pixels.info = {}  # metadata is not carried along; the ICC profile travels separately
    return DecodedImage(pixels, info, icc, scale)


def decode_upright_original_mode(data: bytes, limits: ImageLimits) -> tuple[Image.Image, str]:
    """Validate, decode and turn upright, keeping the source's pixel mode (masks need it)."""
    img, source, info = _open(data, limits)
    _load(img, source, data, info.format)
    mode = img.mode
    upright, _rotated = _upright(img)
    return upright, mode
