"""The offline engine: deterministic product shots without any AI service, for local runs, demos
and tests. It cuts the product out of its photo (background estimated from the border), composes
it on a styled studio backdrop with a soft shadow at the requested aspect and size, and marks the
result as offline. The same request always gives the same bytes.
"""

from __future__ import annotations

import hashlib
import io
from typing import TYPE_CHECKING, Any, ClassVar

from shared.engines.base import (
    EngineImage,
    EnginePermanentError,
    ImageEngine,
    ImageRequest,
    TextRequest,
    output_dimensions,
)

if TYPE_CHECKING:
    from PIL import Image

# (top colour, bottom colour) of the backdrop per style; unknown styles get a colour from the prompt.
BACKDROPS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "studio": ((246, 246, 248), (214, 216, 222)),
    "minimalist": ((250, 248, 244), (236, 232, 224)),
    "lifestyle": ((244, 232, 214), (186, 150, 112)),
    "seasonal": ((222, 236, 226), (150, 186, 160)),
    "infographic": ((255, 255, 255), (236, 242, 250)),
    "outdoor": ((200, 226, 246), (140, 176, 120)),
    "luxury": ((60, 56, 64), (18, 16, 20)),
}
MAX_INPUT_SIDE = 1600


class OfflineEngine(ImageEngine):
    name: ClassVar[str] = "offline"
    model: ClassVar[str] = "offline-compositor-1"

    def generate(self, request: ImageRequest) -> EngineImage:
        digest = _digest(request)
        width, height = output_dimensions(request.aspect_ratio, request.size)
        canvas = _backdrop(width, height, request.style, digest)
        products = [image for image in request.images if image.role in ("product", "reference")]
        edits = [image for image in request.images if image.role == "edit"]
        if edits:
            # Editing (prompt edit, inpaint, scene): the picture itself, tinted by the prompt, with the
            # masked region repainted as a backdrop; deterministic and visibly changed.
            masks = [image for image in request.images if image.role == "mask"]
            canvas = _edited(edits[0].data, masks[0].data if masks else None, canvas, digest)
        elif products:
            cutout = _cutout(products[0].data)
            _place(canvas, cutout)
        else:
            _abstract(canvas, digest)
        buffer = io.BytesIO()
        canvas.convert("RGB").save(buffer, "PNG", compress_level=3)
        return EngineImage(
            data=buffer.getvalue(),
            mime_type="image/png",
            engine=self.name,
            model=self.model,
            metadata={"offline": True, "seed": int(digest[:8], 16), "size": [width, height]},
        )

    def complete_text(self, request: TextRequest) -> str:
        context = request.context
        # The user's idea when the caller names it; request.prompt is written for a language model
        # ("Idea: ...", "Brand profile: {json}") and must not be echoed into the user's prompt.
        parts = [str(context.get("idea") or request.prompt).strip().rstrip(".")]
        if context.get("style"):
            parts.append(f"{str(context['style']).lower()} style")
        product = context.get("product") or {}
        if product.get("name"):
            parts.append(
                f"featuring the {product['name']}" + (f" ({product['category']})" if product.get("category") else "")
            )
        brand = context.get("brand") or {}
        if brand.get("tone"):
            parts.append(f"in a {brand['tone']} tone")
        if brand.get("palette"):
            parts.append("using the brand palette " + ", ".join(brand["palette"]))
        if brand.get("style_keywords"):
            parts.append("styled " + ", ".join(brand["style_keywords"]))
        parts.append(
            "professional e-commerce product photography, soft diffused studio lighting, sharp focus on "
            "the product, accurate colours and proportions, the product's shape, logo and text unchanged, "
            "clean composition with room for cropping"
        )
        return ", ".join(p for p in parts if p) + "."


def _digest(request: ImageRequest) -> str:
    h = hashlib.sha256()
    for value in (
        request.prompt,
        request.negative_prompt or "",
        request.style or "",
        request.aspect_ratio,
        request.size,
        str(request.seed or ""),
    ):
        h.update(value.encode())
        h.update(b"\x00")
    for image in request.images:
        h.update(hashlib.sha256(image.data).digest())
    return h.hexdigest()


def _colour_from(digest: str, offset: int) -> tuple[int, int, int]:
    return (
        int(digest[offset : offset + 2], 16),
        int(digest[offset + 2 : offset + 4], 16),
        int(digest[offset + 4 : offset + 6], 16),
    )


def _backdrop(width: int, height: int, style: str | None, digest: str) -> Image.Image:
    from PIL import Image

    top, bottom = BACKDROPS.get(style or "studio") or (_colour_from(digest, 0), _colour_from(digest, 6))
    # A vertical gradient drawn as a 1-pixel column and stretched: cheap even at 4K.
    column = Image.new("RGB", (1, 256))
    for y in range(256):
        t = y / 255
        column.putpixel((0, y), tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)))
    return column.resize((width, height), Image.Resampling.BILINEAR).convert("RGBA")


def _cutout(data: bytes) -> Image.Image:
    """The product on a transparent background: pixels unlike the border's colour are kept."""
    from PIL import Image, ImageChops, ImageFilter, UnidentifiedImageError

    try:
        source = Image.open(io.BytesIO(data))
        source.draft("RGB", (MAX_INPUT_SIDE, MAX_INPUT_SIDE))
        image = source.convert("RGBA")
    except (UnidentifiedImageError, OSError) as exc:
        raise EnginePermanentError("The product image could not be read") from exc
    image.thumbnail((MAX_INPUT_SIDE, MAX_INPUT_SIDE))
    alpha = image.getchannel("A")
    low = alpha.getextrema()[0]
    if isinstance(low, (int, float)) and low < 250:
        mask = alpha  # already transparent around the product
    else:
        rgb = image.convert("RGB")
        w, h = rgb.size
        border = [rgb.getpixel((x, y)) for x in range(0, w, max(1, w // 32)) for y in (0, h - 1)]
        border += [rgb.getpixel((x, y)) for y in range(0, h, max(1, h // 32)) for x in (0, w - 1)]
        background = tuple(sorted(channel)[len(channel) // 2] for channel in zip(*border, strict=True))
        diff = ImageChops.difference(rgb, Image.new("RGB", rgb.size, background)).convert("L")
        mask = (
            diff.point(lambda v: 255 if v > 28 else 0)
            .filter(ImageFilter.MaxFilter(3))
            .filter(ImageFilter.GaussianBlur(1.2))
        )
    box = mask.getbbox()
    if box is None:
        box = (0, 0, image.width, image.height)
        mask = Image.new("L", image.size, 255)
    image.putalpha(mask)
    return image.crop(box)


def _place(canvas: Image.Image, cutout: Image.Image) -> None:
    from PIL import Image, ImageDraw, ImageFilter

    width, height = canvas.size
    scale = min(width * 0.72 / cutout.width, height * 0.72 / cutout.height)
    size = (max(1, round(cutout.width * scale)), max(1, round(cutout.height * scale)))
    product = cutout.resize(size, Image.Resampling.LANCZOS)
    x = (width - size[0]) // 2
    y = round(height * 0.52 - size[1] / 2)
    shadow = Image.new("L", canvas.size, 0)
    floor = y + size[1]
    ImageDraw.Draw(shadow).ellipse(
        (x + size[0] * 0.08, floor - size[1] * 0.035, x + size[0] * 0.92, floor + size[1] * 0.035), fill=110
    )
    shadow = shadow.filter(ImageFilter.GaussianBlur(max(2, size[1] // 40)))
    canvas.paste(Image.new("RGBA", canvas.size, (0, 0, 0, 255)), (0, 0), shadow)
    canvas.alpha_composite(product, (x, y))


def _abstract(canvas: Image.Image, digest: str) -> None:
    from PIL import ImageDraw

    draw = ImageDraw.Draw(canvas, "RGBA")
    width, height = canvas.size
    for index in range(5):
        offset = (index * 12) % 56
        cx = int(digest[offset : offset + 3], 16) / 4095 * width
        cy = int(digest[offset + 3 : offset + 6], 16) / 4095 * height
        radius = (0.08 + int(digest[offset + 6 : offset + 8], 16) / 255 * 0.22) * min(width, height)
        colour: Any = (*_colour_from(digest, (offset + 2) % 56), 150)
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)


def _edited(data: bytes, mask: bytes | None, backdrop: Image.Image, digest: str) -> Image.Image:
    from PIL import Image, UnidentifiedImageError

    try:
        picture = Image.open(io.BytesIO(data)).convert("RGB").resize(backdrop.size, Image.Resampling.LANCZOS)
        region = Image.open(io.BytesIO(mask)).convert("L").resize(backdrop.size) if mask else None
    except (UnidentifiedImageError, OSError) as exc:
        raise EnginePermanentError("The image to edit could not be read") from exc
    tinted = Image.blend(picture, Image.new("RGB", picture.size, _colour_from(digest, 12)), 0.18)
    if region is not None:
        tinted = Image.composite(backdrop.convert("RGB"), tinted, region)
    return tinted.convert("RGBA")
