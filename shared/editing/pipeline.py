"""The pure part of editing: geometry, pixel operations, masks, decoding and encoding.

Nothing here does I/O or calls a model: every function takes images (or bytes) and returns
images (or bytes), so geometry and the inpaint guarantee are tested pixel-exactly.

* :func:`plan` walks a pipeline over sizes only (no pixels): it finds out-of-bounds crops, masks of
  the wrong size, results beyond the pixel limits and backgrounds without a cutout, so a request is
  refused before anything is reserved or written.
* :func:`composite_masked` is the inpaint guarantee: every pixel where the mask is 0 is copied from
  the input unchanged; where it is 255 it comes from the model; in between the two are blended.
* :func:`decode_image` can have libjpeg decode a large JPEG at 1/2, 1/4 or 1/8 scale when the
  pipeline starts by shrinking it (crop then resize), which is most of the time and memory saved.

Pillow is imported inside the functions (entry points import this module at cold start).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

from shared.editing.models import (
    Background,
    Crop,
    Inpaint,
    Output,
    Pad,
    PromptEdit,
    RemoveBackground,
    Resize,
    Upscale,
)
from shared.engines.base import ASPECT_RATIOS, LONG_SIDE
from shared.errors import UnprocessableContent
from shared.imaging import DecodedImage
from shared.imaging import decode_image as _decode_image

if TYPE_CHECKING:
    from PIL import Image

    from shared.editing.models import Operation
    from shared.imaging import ImageLimits

Box = tuple[int, int, int, int]  # left, top, right (exclusive), bottom (exclusive)
RGBA = tuple[int, int, int, int]

ASPECTS: Final[dict[str, tuple[int, int]]] = {
    "1:1": (1, 1),
    "4:5": (4, 5),
    "3:4": (3, 4),
    "4:3": (4, 3),
    "16:9": (16, 9),
    "9:16": (9, 16),
}
# A mask with another size is scaled when its aspect ratio is within this of the image's.
MASK_ASPECT_TOLERANCE: Final = 0.01
# Alpha above this counts as subject when finding a cutout's bounding box (ignores faint fringes).
SUBJECT_ALPHA: Final = 16
# Shrink by whole factors first, then resample the rest: indistinguishable at 3 (Pillow's docs).
REDUCING_GAP: Final = 3.0
# libjpeg draft decoding keeps at least this much more resolution than the resize needs. Its scaled
# IDCT is a proper area filter (unlike nearest-neighbour subsampling), so 1.5x before the final
# Lanczos is plenty, and lets a 24 MP photo cropped to 1024 decode at 1/2 scale (2.0 would not).
DRAFT_MARGIN: Final = 1.5
JPEG_QUALITY: Final = 92
WEBP_QUALITY: Final = 90
MIN_QUALITY: Final = 10
# Light neutral grey: what a cutout's transparent area shows to a model that cannot read alpha.
NEUTRAL: Final = (200, 200, 200)
EXTENSIONS: Final = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
CONTENT_TYPES: Final = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


# -- refusals --------------------------------------------------------------------------------------


class EditRefused(UnprocessableContent):
    """A well-formed pipeline that cannot be applied to this image (422, nothing charged)."""

    code = "edit_refused"
    title = "The edit cannot be applied to this image"

    def __init__(self, detail: str, *, index: int | None = None, field: str | None = None, **extensions: Any) -> None:
        if index is not None:
            extensions["operation_index"] = index
            where = f"operations.{index}" + (f".{field}" if field else "")
            extensions["errors"] = [{"field": where, "in": "body", "message": detail, "type": self.code}]
        super().__init__(detail, **extensions)


class CropOutOfBounds(EditRefused):
    code = "crop_out_of_bounds"
    title = "The crop box is not inside the image"


class MaskSizeMismatch(EditRefused):
    code = "mask_size_mismatch"
    title = "The mask's size does not match the image"


class MaskModeInvalid(EditRefused):
    code = "mask_mode_invalid"
    title = "The mask must be a greyscale, 1-bit, greyscale+alpha or RGBA PNG"


class MaskEmpty(EditRefused):
    code = "mask_empty"
    title = "The mask selects no pixel"


class BackgroundNeedsCutout(EditRefused):
    code = "background_needs_cutout"
    title = "A background needs a transparent image; remove the background first"


class UpscaleNotNeeded(EditRefused):
    code = "upscale_not_needed"
    title = "The image is already at least that large"


class PadTooSmall(EditRefused):
    code = "pad_too_small"
    title = "The canvas is smaller than the image"


class EditResultTooLarge(EditRefused):
    code = "edit_result_too_large"
    title = "The edited image would exceed the pixel limits"


class OutputTooLarge(EditRefused):
    code = "output_too_large"
    title = "The image cannot be encoded within max_bytes"


# Every way a pipeline is refused before anything is charged or written (a route's contract lists them).
EDIT_REFUSALS = (
    EditRefused,
    CropOutOfBounds,
    MaskSizeMismatch,
    MaskModeInvalid,
    MaskEmpty,
    BackgroundNeedsCutout,
    UpscaleNotNeeded,
    PadTooSmall,
    EditResultTooLarge,
    OutputTooLarge,
)


# -- planning (sizes only) -----------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """The image between two operations, as far as planning needs to know it."""

    width: int
    height: int
    has_alpha: bool

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


def plan(
    operations: Sequence[Operation],
    start: Frame,
    *,
    limits: ImageLimits,
    mask_sizes: Mapping[int, tuple[int, int]] | None = None,
) -> list[Frame]:
    """The frame after each operation; raises the :class:`EditRefused` the pipeline would hit."""
    frames: list[Frame] = []
    frame = start
    for index, op in enumerate(operations):
        frame = _plan_one(index, op, frame, mask_sizes or {})
        width, height = frame.size
        if width * height > limits.max_pixels or max(width, height) > limits.max_side:
            raise EditResultTooLarge(
                f"After operation {index} ({op.op}) the image would be {width}x{height}; the limit is "
                f"{limits.max_pixels} pixels and {limits.max_side} per side",
                index=index,
                width=width,
                height=height,
            )
        frames.append(frame)
    return frames


def _plan_one(index: int, op: Operation, frame: Frame, mask_sizes: Mapping[int, tuple[int, int]]) -> Frame:
    size = frame.size
    if isinstance(op, RemoveBackground):
        return Frame(*size, has_alpha=True)
    if isinstance(op, Background):
        if not frame.has_alpha:
            raise BackgroundNeedsCutout(
                "background needs a transparent image: put remove_background before it", index=index
            )
        if op.type == "solid":
            return Frame(*size, has_alpha=parse_color(op.color or "")[3] < 255)
        return Frame(*size, has_alpha=op.type == "transparent")
    if isinstance(op, Crop):
        if op.box is not None:
            box = op.box
            if box.x < 0 or box.y < 0 or box.x + box.width > frame.width or box.y + box.height > frame.height:
                raise CropOutOfBounds(
                    f"The box x={box.x}, y={box.y}, {box.width}x{box.height} is not inside the "
                    f"{frame.width}x{frame.height} image",
                    index=index,
                    field="box",
                    image_width=frame.width,
                    image_height=frame.height,
                )
            return Frame(box.width, box.height, frame.has_alpha)
        return Frame(*aspect_size(size, ASPECTS[op.aspect or "1:1"]), has_alpha=frame.has_alpha)
    if isinstance(op, Resize):
        return Frame(*resize_dims(size, op), has_alpha=frame.has_alpha)
    if isinstance(op, Pad):
        canvas = pad_canvas(size, op)
        if canvas[0] < frame.width or canvas[1] < frame.height:
            raise PadTooSmall(
                f"The canvas {canvas[0]}x{canvas[1]} is smaller than the {frame.width}x{frame.height} image",
                index=index,
            )
        # An opaque canvas colour shows through a cutout's transparent pixels: the result is opaque.
        return Frame(*canvas, has_alpha=parse_color(op.color)[3] < 255)
    if isinstance(op, Upscale):
        target = LONG_SIDE[op.size]
        if max(size) >= target:
            raise UpscaleNotNeeded(
                f"The image is {frame.width}x{frame.height}; upscaling to {op.size} needs a long side under {target}",
                index=index,
            )
        return Frame(*upscale_dims(size, target), has_alpha=frame.has_alpha)
    if isinstance(op, Inpaint):
        mask = mask_sizes.get(index)
        if mask is not None and not mask_fits(mask, size):
            raise MaskSizeMismatch(
                f"The mask is {mask[0]}x{mask[1]}; at this step the image is {frame.width}x{frame.height}. "
                "Send a mask of the same size or the same aspect ratio",
                index=index,
                field="mask",
                mask_width=mask[0],
                mask_height=mask[1],
                image_width=frame.width,
                image_height=frame.height,
            )
        return frame
    if isinstance(op, PromptEdit):
        return frame
    if isinstance(op, Output):
        return Frame(*size, has_alpha=frame.has_alpha and op.format != "jpeg")
    raise AssertionError(f"unplanned operation {op!r}")  # pragma: no cover - the union is closed


# -- geometry ------------------------------------------------------------------------------------


def aspect_size(size: tuple[int, int], ratio: tuple[int, int]) -> tuple[int, int]:
    """The largest width x height of ``ratio`` that fits inside ``size``."""
    width, height = size
    rw, rh = ratio
    if width * rh >= height * rw:  # wider than the ratio: keep the full height
        return max(1, min(width, round(height * rw / rh))), height
    return width, max(1, min(height, round(width * rh / rw)))


def aspect_box(size: tuple[int, int], ratio: tuple[int, int], subject: Box | None = None) -> Box:
    """The largest box of ``ratio`` inside ``size``, centred on ``subject`` (else the image), kept inside."""
    width, height = size
    box_w, box_h = aspect_size(size, ratio)
    if subject is None:
        cx, cy = width / 2, height / 2
    else:
        cx, cy = (subject[0] + subject[2]) / 2, (subject[1] + subject[3]) / 2
    left = min(max(0, math.floor(cx - box_w / 2 + 0.5)), width - box_w)
    top = min(max(0, math.floor(cy - box_h / 2 + 0.5)), height - box_h)
    return left, top, left + box_w, top + box_h


def resize_dims(size: tuple[int, int], op: Resize) -> tuple[int, int]:
    width, height = size
    if not op.keep_aspect:
        assert op.width is not None and op.height is not None
        return op.width, op.height
    if op.width is not None and op.height is not None:
        scale = min(op.width / width, op.height / height)
    elif op.width is not None:
        scale = op.width / width
    else:
        assert op.height is not None
        scale = op.height / height
    return max(1, round(width * scale)), max(1, round(height * scale))


def pad_canvas(size: tuple[int, int], op: Pad) -> tuple[int, int]:
    if op.aspect is None:
        assert op.width is not None and op.height is not None
        return op.width, op.height
    width, height = size
    rw, rh = ASPECTS[op.aspect]
    if width * rh >= height * rw:  # wider than the ratio: grow the height
        return width, max(height, math.ceil(width * rh / rw))
    return max(width, math.ceil(height * rw / rh)), height


def pad_offset(size: tuple[int, int], canvas: tuple[int, int], align: str) -> tuple[int, int]:
    free_x, free_y = canvas[0] - size[0], canvas[1] - size[1]
    x = 0 if "left" in align else free_x if "right" in align else free_x // 2
    y = 0 if "top" in align else free_y if "bottom" in align else free_y // 2
    return x, y


def upscale_dims(size: tuple[int, int], long_side: int) -> tuple[int, int]:
    width, height = size
    scale = long_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def mask_fits(mask: tuple[int, int], size: tuple[int, int]) -> bool:
    if mask == size:
        return True
    return abs(mask[0] / mask[1] - size[0] / size[1]) <= MASK_ASPECT_TOLERANCE * size[0] / size[1]


def nearest_engine_aspect(size: tuple[int, int]) -> str:
    """The model's supported aspect ratio closest to ``size`` (compared on a log scale)."""
    target = math.log(size[0] / size[1])

    def distance(ratio: str) -> float:
        w, h = (int(part) for part in ratio.split(":"))
        return abs(math.log(w / h) - target)

    return min(ASPECT_RATIOS, key=distance)


def size_class(long_side: int, cap: str = "4K") -> str:
    """The smallest model size class (1K/2K/4K) whose long side covers ``long_side``, at most ``cap``."""
    for name in ("1K", "2K", "4K"):
        if long_side <= LONG_SIDE[name] or name == cap:
            return name
    return cap


def parse_color(value: str) -> RGBA:
    if value == "transparent":
        return 0, 0, 0, 0
    digits = value.lstrip("#")
    alpha = int(digits[6:8], 16) if len(digits) == 8 else 255
    return int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16), alpha


# -- pixel operations ----------------------------------------------------------------------------


def _filter(quality: str) -> Any:
    from PIL import Image

    return {
        "high": Image.Resampling.LANCZOS,
        "balanced": Image.Resampling.BICUBIC,
        "fast": Image.Resampling.BILINEAR,
    }[quality]


def _extrema(band: Image.Image) -> tuple[int, int]:
    """(min, max) of a one-band 8-bit image."""
    return cast("tuple[int, int]", band.getextrema())


def has_transparency(img: Image.Image) -> bool:
    return img.mode == "RGBA" and _extrema(img.getchannel("A"))[0] < 255


def subject_bbox(img: Image.Image) -> Box | None:
    """The bounding box of a cutout's subject (alpha above a faint threshold); None when opaque."""
    if not has_transparency(img):
        return None
    box = img.getchannel("A").point(lambda v: 255 if v > SUBJECT_ALPHA else 0).getbbox()
    return box if box is None else (box[0], box[1], box[2], box[3])


def crop(img: Image.Image, op: Crop) -> Image.Image:
    if op.box is not None:
        b = op.box
        return img.crop((b.x, b.y, b.x + b.width, b.y + b.height))
    return img.crop(aspect_box(img.size, ASPECTS[op.aspect or "1:1"], subject_bbox(img)))


def resize(img: Image.Image, op: Resize) -> Image.Image:
    dims = resize_dims(img.size, op)
    if dims == img.size:
        return img
    return img.resize(dims, _filter(op.quality), reducing_gap=REDUCING_GAP)


def resize_region(
    img: Image.Image, region: tuple[float, float, float, float], dims: tuple[int, int], quality: str
) -> Image.Image:
    """Crop and resize in one resampling pass; ``region`` may be fractional (a draft-decoded image)."""
    return img.resize(dims, _filter(quality), box=region, reducing_gap=REDUCING_GAP)


def pad(img: Image.Image, op: Pad) -> Image.Image:
    from PIL import Image

    canvas_size = pad_canvas(img.size, op)
    colour = parse_color(op.color)
    offset = pad_offset(img.size, canvas_size, op.align)
    if img.mode != "RGBA" and colour[3] == 255:
        canvas = Image.new("RGB", canvas_size, colour[:3])
        canvas.paste(img.convert("RGB"), offset)
        return canvas
    canvas = Image.new("RGBA", canvas_size, colour)
    if img.mode != "RGBA":
        canvas.paste(img.convert("RGBA"), offset)  # opaque pixels: copied exactly
    else:
        canvas.alpha_composite(img, offset)  # the canvas colour shows through transparent pixels
    return canvas if colour[3] < 255 else canvas.convert("RGB")


def background(img: Image.Image, op: Background) -> Image.Image:
    """A solid or transparent background (scenes are composed by :func:`composite_scene`)."""
    from PIL import Image

    rgba = img.convert("RGBA")
    if op.type == "transparent":
        return rgba
    colour = parse_color(op.color or "#FFFFFF")
    canvas = Image.new("RGBA", rgba.size, colour)
    canvas.alpha_composite(rgba)
    return canvas if colour[3] < 255 else canvas.convert("RGB")


def flatten(img: Image.Image, colour: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """RGB, with any transparency composed onto ``colour``."""
    from PIL import Image

    if img.mode == "RGB":
        return img
    if img.mode != "RGBA":
        return img.convert("RGB")
    canvas = Image.new("RGBA", img.size, (*colour, 255))
    canvas.alpha_composite(img)
    return canvas.convert("RGB")


def composite_masked(original: Image.Image, edited: Image.Image, mask: Image.Image) -> Image.Image:
    """The inpaint guarantee: ``original`` where ``mask`` is 0, ``edited`` where it is 255, blended between.

    ``edited`` is resized to the original's size and converted to its mode first (a model's output
    has its own size and no alpha); ``mask`` must already have the original's size.
    """
    from PIL import Image

    if mask.size != original.size or mask.mode != "L":
        raise ValueError("the mask must be an L image of the original's size")
    if edited.size != original.size:
        edited = edited.resize(original.size, Image.Resampling.LANCZOS)
    edited = edited.convert(original.mode)
    # Image.composite copies image2's pixel bytes exactly where the mask is 0 (tested pixel-exactly).
    return Image.composite(edited, original, mask)


def composite_scene(cutout: Image.Image, scene: Image.Image) -> Image.Image:
    """A generated scene behind a cutout; the cutout's opaque pixels are kept exactly."""
    from PIL import Image

    rgba = cutout.convert("RGBA")
    if scene.size != rgba.size:
        scene = scene.resize(rgba.size, Image.Resampling.LANCZOS)
    canvas = scene.convert("RGBA")
    canvas.alpha_composite(rgba)
    return canvas.convert("RGB")


def with_alpha_of(img: Image.Image, source: Image.Image) -> Image.Image:
    """``img`` with the alpha channel of ``source`` (scaled to fit): a model edits colours, not the cutout."""
    from PIL import Image

    if source.mode != "RGBA":
        return img
    alpha = source.getchannel("A")
    if alpha.size != img.size:
        alpha = alpha.resize(img.size, Image.Resampling.LANCZOS)
    out = img.convert("RGBA")
    out.putalpha(alpha)
    return out


def fit_mask(mask: Image.Image, size: tuple[int, int], index: int | None = None) -> Image.Image:
    """The mask at ``size``: unchanged when equal, scaled when the aspect ratio matches."""
    from PIL import Image

    if mask.size == size:
        return mask
    if not mask_fits(mask.size, size):
        raise MaskSizeMismatch(
            f"The mask is {mask.width}x{mask.height}; the image is {size[0]}x{size[1]}",
            index=index,
            field="mask",
        )
    return mask.resize(size, Image.Resampling.BILINEAR)


# -- model input and output framing --------------------------------------------------------------


@dataclass(frozen=True)
class EngineFrame:
    """An image letterboxed to a ratio the model supports, and where the image sits inside it."""

    canvas: Image.Image
    box: Box
    aspect_ratio: str


def letterbox(img: Image.Image, aspect_ratio: str, fill: Any) -> EngineFrame:
    from PIL import Image

    rw, rh = (int(part) for part in aspect_ratio.split(":"))
    width, height = img.size
    if width * rh >= height * rw:
        canvas_size = (width, max(height, math.ceil(width * rh / rw)))
    else:
        canvas_size = (max(width, math.ceil(height * rw / rh)), height)
    if canvas_size == img.size:
        return EngineFrame(img, (0, 0, width, height), aspect_ratio)
    canvas = Image.new(img.mode, canvas_size, fill)
    x, y = (canvas_size[0] - width) // 2, (canvas_size[1] - height) // 2
    canvas.paste(img, (x, y))
    return EngineFrame(canvas, (x, y, x + width, y + height), aspect_ratio)


def engine_input(img: Image.Image) -> EngineFrame:
    """What a model is shown: RGB (cutouts on neutral grey), padded to its nearest aspect ratio."""
    rgb = flatten(img, NEUTRAL)
    fill = rgb.resize((1, 1), reducing_gap=REDUCING_GAP).getpixel((0, 0))  # the mean colour blends in
    return letterbox(rgb, nearest_engine_aspect(img.size), fill)


def from_engine(output: Image.Image, frame: EngineFrame, size: tuple[int, int]) -> Image.Image:
    """The model's picture of ``frame`` mapped back onto the image: crop the letterbox, resize to ``size``."""
    from PIL import Image

    sx = output.width / frame.canvas.width
    sy = output.height / frame.canvas.height
    left, top, right, bottom = frame.box
    region = (left * sx, top * sy, right * sx, bottom * sy)
    rgb = output.convert("RGB")
    if region == (0, 0, output.width, output.height) and output.size == size:
        return rgb
    return rgb.resize(size, Image.Resampling.LANCZOS, box=region)


def png_bytes(img: Image.Image, compress_level: int = 1) -> bytes:
    """Lossless bytes for a model or the object store (fast compression: it is read once)."""
    buffer = io.BytesIO()
    img.save(buffer, "PNG", compress_level=compress_level)
    return buffer.getvalue()


# -- decoding ------------------------------------------------------------------------------------


# Decoding lives in shared.imaging (one place for bombs, truncation, EXIF and colour modes).
Decoded = DecodedImage
decode_image = _decode_image


def draft_plan(
    operations: Sequence[Operation], frames: Sequence[Frame], start: Frame
) -> tuple[int, tuple[float, float, float, float], tuple[int, int]] | None:
    """When the pipeline opens with [crop] + resize that shrinks the image DRAFT_MARGIN x: how many
    leading operations a reduced decode may replace, the source region (full-size pixels) and the
    size it is resized to. None when decoding everything is needed."""
    if start.has_alpha:
        return None  # a cutout's crop centres on its subject, which is only known after decoding
    index = 0
    region: tuple[float, float, float, float] = (0, 0, start.width, start.height)
    if operations and isinstance(operations[0], Crop):
        op = operations[0]
        if op.box is not None:
            b = op.box
            region = (b.x, b.y, b.x + b.width, b.y + b.height)
        else:
            region = aspect_box(start.size, ASPECTS[op.aspect or "1:1"], None)
        index = 1
    if len(operations) <= index or not isinstance(operations[index], Resize):
        return None
    dims = frames[index].size
    region_w, region_h = region[2] - region[0], region[3] - region[1]
    if dims[0] * DRAFT_MARGIN > region_w or dims[1] * DRAFT_MARGIN > region_h:
        return None
    return index + 1, region, dims


def draft_size(start: Frame, region: tuple[float, float, float, float], dims: tuple[int, int]) -> tuple[int, int]:
    """The full-image size to ask libjpeg for so that ``region`` keeps DRAFT_MARGIN x ``dims``."""
    region_w, region_h = region[2] - region[0], region[3] - region[1]
    return (
        math.ceil(start.width * DRAFT_MARGIN * dims[0] / region_w),
        math.ceil(start.height * DRAFT_MARGIN * dims[1] / region_h),
    )


def decode_mask(data: bytes, limits: ImageLimits, *, index: int | None = None) -> Image.Image:
    """A mask PNG as an L image (0 keep, 255 replace), upright.

    Modes: ``1`` and ``L`` by luminance; ``LA`` and ``RGBA`` by their alpha channel when it has
    any transparency (a brush stroke on a transparent canvas), else by luminance. Any other mode
    (RGB, palette, 16-bit, CMYK…) is refused: a mask's meaning must not depend on a conversion.
    """
    from shared.imaging import decode_upright_original_mode

    upright, mode = decode_upright_original_mode(data, limits)
    if mode not in ("1", "L", "LA", "RGBA"):
        raise MaskModeInvalid(
            f"The mask is a {mode} image; send a PNG in mode L (grey), 1 (black/white), LA or RGBA "
            "(alpha or luminance)",
            index=index,
            field="mask",
            mode=mode,
        )
    if upright.mode in ("LA", "RGBA"):
        alpha = upright.getchannel("A")
        mask = alpha if _extrema(alpha)[0] < 255 else upright.convert("L")
    else:
        mask = upright.convert("L")
    if _extrema(mask)[1] == 0:
        raise MaskEmpty("The mask is black (or transparent) everywhere: nothing to inpaint", index=index, field="mask")
    mask.info = {}
    return mask


# -- encoding ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    data: bytes
    format: str  # PNG | JPEG | WEBP
    quality: int | None
    width: int
    height: int
    has_alpha: bool

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]


def prepare_for(img: Image.Image, fmt: str) -> Image.Image:
    """The pixels a format stores: JPEG has no alpha (composed onto white)."""
    if fmt == "JPEG":
        return flatten(img)
    return img if img.mode in ("RGB", "RGBA") else img.convert("RGBA" if "A" in img.mode else "RGB")


def encode(
    img: Image.Image,
    fmt: str,
    *,
    quality: int | None = None,
    max_bytes: int | None = None,
    icc_profile: bytes | None = None,
) -> Encoded:
    """Encode ``img`` (already :func:`prepare_for` ``fmt``); with ``max_bytes``, JPEG/WebP take the
    highest quality that fits (binary search down to MIN_QUALITY) and PNG tries maximum compression."""
    fmt = fmt.upper()
    if fmt == "PNG":
        data = _save(img, fmt, None, icc_profile)
        if max_bytes is not None and len(data) > max_bytes:
            data = _save(img, fmt, None, icc_profile, compress_level=9)
        if max_bytes is not None and len(data) > max_bytes:
            raise OutputTooLarge(
                f"The PNG is {len(data)} bytes, more than max_bytes={max_bytes}; use jpeg or webp, or resize first",
                bytes=len(data),
                max_bytes=max_bytes,
            )
        return Encoded(data, fmt, None, img.width, img.height, img.mode == "RGBA")
    wanted = quality or (JPEG_QUALITY if fmt == "JPEG" else WEBP_QUALITY)
    data = _save(img, fmt, wanted, icc_profile)
    if max_bytes is None or len(data) <= max_bytes:
        return Encoded(data, fmt, wanted, img.width, img.height, img.mode == "RGBA")
    low, high, best = MIN_QUALITY, wanted - 1, None
    while low <= high:
        middle = (low + high) // 2
        candidate = _save(img, fmt, middle, icc_profile)
        if len(candidate) <= max_bytes:
            best, low = (middle, candidate), middle + 1
        else:
            high = middle - 1
    if best is None:
        raise OutputTooLarge(
            f"Even at quality {MIN_QUALITY} the {fmt} is more than max_bytes={max_bytes}; resize first",
            max_bytes=max_bytes,
        )
    return Encoded(best[1], fmt, best[0], img.width, img.height, img.mode == "RGBA")


def _save(img: Image.Image, fmt: str, quality: int | None, icc: bytes | None, compress_level: int = 6) -> bytes:
    buffer = io.BytesIO()
    params: dict[str, Any] = {}
    if icc:
        params["icc_profile"] = icc
    if fmt == "PNG":
        params["compress_level"] = compress_level
    elif fmt == "JPEG":
        params.update(quality=quality, optimize=True)
    else:
        params.update(quality=quality, method=4, exif=b"", xmp=b"")
    img.save(buffer, fmt, **params)
    return buffer.getvalue()
