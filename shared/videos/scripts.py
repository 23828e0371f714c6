"""The words of a video: the prompt each clip is generated from (the style's template about the product,
the merchant's direction, optionally expanded by a text model with the brand profile) and the voiceover
script (written from the product's data and selling points by a text model, or by a template offline).

The text model is the image engine's :meth:`~shared.engines.base.ImageEngine.complete_text` (Gemini's text
model); the offline engine's own answer is written for photos, so offline the texts here come from
templates of their own."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from shared.engines.base import TextRequest
from shared.errors import NotFound
from shared.text import plain_text
from shared.videos.styles import VideoStyle, get_style, render, shot

if TYPE_CHECKING:
    from shared.catalog.models import ProductDoc
    from shared.catalog.ports import ProductRepository
    from shared.engines.base import ImageEngine
    from shared.generation.models import BrandProfile, EnhanceOut
    from shared.generation.store import GenerationSettingsStore
    from shared.videos.models import ScriptOut, ScriptRequest, VideoEnhanceRequest

WORDS_PER_SECOND = 2.5  # a calm voiceover
MAX_SCRIPT_CHARS = 1500
FIDELITY = (
    "Keep the product exactly as it appears in the first frame: the same shape, proportions, colours, materials, "
    "logo and printed text, from every angle. Do not add, remove or restyle any part of the product."
)
ENHANCE_INSTRUCTION = (
    "You write prompts for an AI video model (Veo) that makes short e-commerce product videos. Expand the "
    "user's idea into one detailed prompt (at most 120 words): the setting, the camera movement, the "
    "lighting, the pacing, the mood and the sound. Respect the brand profile if given. Never change the "
    "product itself. Answer with the prompt only."
)
SCRIPT_INSTRUCTION = (
    "You write voiceover scripts for short e-commerce product videos. Write what a narrator says over a "
    "{seconds}-second video, at most {words} words, in a {tone} tone: name the product, say what makes it "
    "worth buying from its details and selling points, and end with a short call to action. Plain spoken "
    "sentences only: no stage directions, no sound cues, no emoji, no hashtags. Answer with the script only."
)


def describe(product: ProductDoc | None) -> str:
    if product is None:
        return "the product"
    text = f'the product "{product.name}"'
    if product.category:
        text += f" ({product.category})"
    return text


def selling_points(product: ProductDoc | None, given: list[str]) -> list[str]:
    """The selling points asked for, else the product's tags (its description goes in as details)."""
    if given:
        return given
    if product is None:
        return []
    return [tag for tag in product.tags if len(tag) > 2][:5]


def build_prompt(
    style: VideoStyle,
    product: ProductDoc | None,
    points: list[str],
    direction: str | None,
    item_prompt: str | None,
    *,
    first_frame: bool,
) -> str:
    """The prompt of a video: the style's template about the product, its details, the merchant's words,
    and (starting from the product's photo) the rule to keep the product as it is."""
    parts = [render(style, describe(product), points)]
    if product is not None and product.description:
        parts.append("Product details: " + plain_text(product.description)[:400])
    parts.extend(text for text in (direction, item_prompt) if text)
    if first_frame:
        parts.append(FIDELITY)
    return "\n".join(parts)


def clip_prompt(prompt: str, style: VideoStyle, index: int, count: int, product: ProductDoc | None) -> str:
    """The prompt of clip ``index`` of ``count``: the video's, and what this shot shows."""
    hint = shot(style, index, count, describe(product))
    return f"{prompt}\n{hint}" if hint else prompt


# -- prompt enhancement -------------------------------------------------------------------------------


def enhance_prompt(
    engine: ImageEngine,
    idea: str,
    product: ProductDoc | None,
    style: VideoStyle | None,
    brand: BrandProfile | None,
) -> str:
    """``idea`` expanded into a detailed video prompt by the text model (offline: a template), with the
    product and the brand profile."""
    context: dict[str, Any] = {"idea": idea}
    lines = [f"Idea: {idea}"]
    if product is not None:
        context["product"] = {"name": product.name, "category": product.category}
        lines.append(f"Product: {product.name}" + (f" ({product.category})" if product.category else ""))
        if product.description:
            lines.append("Product description: " + plain_text(product.description)[:500])
    if brand is not None:
        context["brand"] = brand.model_dump(exclude_none=True)
        if context["brand"]:
            lines.append("Brand profile: " + json.dumps(context["brand"]))
    if style is not None:
        context["style"] = style.name
        lines.append(f"Video style: {style.name} ({style.description})")
    if engine.name == "offline":
        return _offline_enhanced(context)
    text = engine.complete_text(TextRequest(instruction=ENHANCE_INSTRUCTION, prompt="\n".join(lines), context=context))
    return " ".join(text.split())[:2000]


def _offline_enhanced(context: dict[str, Any]) -> str:
    parts = [str(context["idea"]).strip().rstrip(".")]
    if context.get("style"):
        parts.append(f"a {str(context['style']).lower()} product video")
    product = context.get("product") or {}
    if product.get("name"):
        parts.append(f"featuring the {product['name']}")
    brand = context.get("brand") or {}
    if brand.get("tone"):
        parts.append(f"in a {brand['tone']} tone")
    if brand.get("palette"):
        parts.append("in the brand colours " + ", ".join(brand["palette"]))
    if brand.get("style_keywords"):
        parts.append("styled " + ", ".join(brand["style_keywords"]))
    parts.append(
        "smooth cinematic camera movement, soft natural light, steady pacing, the product in sharp focus with "
        "its shape, logo and text unchanged"
    )
    return ", ".join(p for p in parts if p) + "."


def enhance(
    settings: GenerationSettingsStore,
    products: ProductRepository,
    engine: ImageEngine,
    client_id: str,
    request: VideoEnhanceRequest,
) -> EnhanceOut:
    """``POST /videos/prompts/enhance``."""
    from shared.generation.models import EnhanceOut

    product = _product(products, client_id, request.product_id) if request.product_id else None
    style = get_style(request.style) if request.style else None
    brand = settings.brand(client_id)
    return EnhanceOut(prompt=enhance_prompt(engine, request.prompt, product, style, brand), engine=engine.name)


def _product(products: ProductRepository, client_id: str, product_id: str) -> ProductDoc:
    product = products.get(client_id, product_id)
    if product is None:
        raise NotFound(f"No product {product_id}")
    return product


# -- scripts ------------------------------------------------------------------------------------------


def word_budget(seconds: int) -> int:
    return max(6, int(seconds * WORDS_PER_SECOND))


def write_script(
    engine: ImageEngine,
    style: VideoStyle,
    product: ProductDoc | None,
    points: list[str],
    idea: str | None,
    seconds: int,
    tone: str | None = None,
) -> str:
    """A voiceover for a ``seconds``-second video about the product (or ``idea``): the text model's, or
    offline a template; never longer than can be spoken in that time."""
    words = word_budget(seconds)
    if engine.name == "offline":
        text = _offline_script(style, product, points, idea)
    else:
        lines = []
        if product is not None:
            lines.append(f"Product: {product.name}" + (f" ({product.category})" if product.category else ""))
            if product.description:
                lines.append("Details: " + plain_text(product.description)[:800])
        if points:
            lines.append("Selling points: " + "; ".join(points))
        if idea:
            lines.append(f"What the video shows: {idea}")
        lines.append(f"Video style: {style.name}")
        instruction = SCRIPT_INSTRUCTION.format(seconds=seconds, words=words, tone=tone or style.script_tone)
        context = {"idea": idea or (product.name if product else ""), "script": True}
        text = engine.complete_text(TextRequest(instruction=instruction, prompt="\n".join(lines), context=context))
    return fit_script(text, words)


def fit_script(text: str, words: int) -> str:
    """At most ``words`` words (and MAX_SCRIPT_CHARS), cut after the last whole sentence that fits."""
    flat = " ".join(text.replace("*", "").split())
    tokens = flat.split(" ")
    if len(tokens) <= words and len(flat) <= MAX_SCRIPT_CHARS:
        return flat
    cut = " ".join(tokens[:words])[:MAX_SCRIPT_CHARS]
    end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
    if cut.endswith((".", "!", "?")):
        return cut
    return cut[: end + 1] if end > len(cut) // 3 else cut.rstrip(",;:") + "."


def _offline_script(style: VideoStyle, product: ProductDoc | None, points: list[str], idea: str | None) -> str:
    name = product.name if product is not None else (idea or "this product").strip().rstrip(".")
    sentences = [f"Meet {name}."]
    if product is not None and product.description:
        first = re.split(r"(?<=[.!?])\s", plain_text(product.description), maxsplit=1)[0].strip()
        if first:
            sentences.append(first if first.endswith((".", "!", "?")) else first + ".")
    if points:
        cleaned = [p.strip().rstrip(".") for p in points if p.strip()]
        listed = cleaned[0] if len(cleaned) == 1 else ", ".join(cleaned[:-1]) + " and " + cleaned[-1]
        sentences.append(f"It is {listed}.")
    closing = {
        "limited_time_offer": "Hurry, this offer ends soon.",
        "how_to_tutorial": "It takes only a minute to get started.",
        "unboxing_review": "Honestly, it is a joy to use.",
    }.get(style.id, "Get yours today.")
    sentences.append(closing)
    return " ".join(sentences)


def script(engine: ImageEngine, products: ProductRepository, client_id: str, request: ScriptRequest) -> ScriptOut:
    """``POST /videos/scripts``: a script to review and edit; nothing is charged or stored."""
    from shared.videos.models import ScriptOut

    style = get_style(request.style)
    product = _product(products, client_id, request.product_id) if request.product_id else None
    points = selling_points(product, list(request.selling_points))
    text = write_script(engine, style, product, points, request.prompt, request.duration_seconds, request.tone)
    count = len(text.split())
    return ScriptOut(
        script=text,
        words=count,
        estimated_seconds=round(count / WORDS_PER_SECOND, 1),
        duration_seconds=request.duration_seconds,
        style=style.id,
        engine=engine.name,
    )
