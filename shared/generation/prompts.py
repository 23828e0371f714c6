"""Styles, prompt building, prompt enhancement, brand profile, saved presets and remembered defaults.

The brand profile, presets and defaults are read and written through :class:`GenerationSettingsStore`
and products through :class:`ProductLookup` (:mod:`shared.generation.store`), never a database client."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.errors import NotFound, ValidationFailed
from shared.generation.models import (
    BrandProfile,
    DefaultsOut,
    EnhanceOut,
    EnhanceRequest,
    GenerationSettings,
    PresetIn,
    PresetOut,
    PresetUpdate,
)
from shared.text import plain_text

if TYPE_CHECKING:
    from shared.catalog.models import ProductDoc
    from shared.engines.base import ImageEngine
    from shared.generation.store import GenerationSettingsStore, ProductLookup

STYLES_PATH = Path(__file__).with_name("styles.json")

FIDELITY = (
    "Keep the product exactly as it appears in the reference photos: the same shape, proportions, colours, "
    "materials, logo and printed text. Do not add, remove or restyle any part of the product itself."
)

ENHANCE_INSTRUCTION = (
    "You write prompts for an AI image model that creates e-commerce product photos. Expand the user's short "
    "idea into one detailed prompt (at most 120 words): setting, surface, props, lighting, camera angle, lens, "
    "mood and colours. Respect the brand profile if given. Never change the product itself. Answer with the "
    "prompt only."
)


@lru_cache(maxsize=1)
def styles() -> dict[str, dict[str, str]]:
    data: dict[str, dict[str, str]] = json.loads(STYLES_PATH.read_text())
    return data


def require_style(style: str) -> None:
    if style not in styles():
        raise ValidationFailed(
            f"Unknown style {style!r}; choose one of {', '.join(sorted(styles()))}",
            errors=[{"field": "style", "in": "body", "message": "unknown style", "type": "enum"}],
        )


def describe_product(product: ProductDoc | None) -> str:
    if product is None:
        return "the product"
    text = f'the product "{product.name}"'
    if product.category:
        text += f" ({product.category})"
    return text


def build_prompt(settings: GenerationSettings, product: ProductDoc | None, item_prompt: str | None) -> str:
    """The final prompt: the style's template about the product, the custom prompt, fidelity rules."""
    template = styles()[settings.style]["prompt"]
    parts = [template.replace("{product}", describe_product(product))]
    if product is not None and product.description:
        # Descriptions keep the store's HTML; the model gets the text a shopper reads.
        details = plain_text(product.description)
        if details:
            parts.append("Product details: " + details[:400])
    for extra in (settings.prompt, item_prompt):
        if extra:
            parts.append(extra)
    if product is not None and product.images:
        parts.append(FIDELITY)
    return "\n".join(parts)


# -- brand profile ------------------------------------------------------------------------------------


def _product(products: ProductLookup, client_id: str, product_id: str) -> ProductDoc:
    """The product, or 404 — also for another client's id (as the catalog answers)."""
    product = products.get(client_id, product_id)
    if product is None:
        raise NotFound(f"No product {product_id}")
    return product


def get_brand(store: GenerationSettingsStore, client_id: str) -> BrandProfile:
    """The client's brand profile (an empty one until saved)."""
    return store.brand(client_id) or BrandProfile()


def put_brand(store: GenerationSettingsStore, client_id: str, brand: BrandProfile) -> BrandProfile:
    """Replace the brand profile."""
    store.save_brand(client_id, brand)
    return brand


def enhance(
    store: GenerationSettingsStore,
    products: ProductLookup,
    engine: ImageEngine,
    client_id: str,
    request: EnhanceRequest,
) -> EnhanceOut:
    """Expand a short prompt with a text model, using the product and the brand profile."""
    from shared.engines.base import TextRequest

    # The engine gets the idea on its own too: an offline (template) engine expands it, not the lines
    # written for a language model.
    context: dict[str, Any] = {"idea": request.prompt}
    lines = [f"Idea: {request.prompt}"]
    if request.product_id:
        product = _product(products, client_id, request.product_id)
        context["product"] = {
            "name": product.name,
            "category": product.category,
            "description": plain_text(product.description or "")[:500],
        }
        lines.append(f"Product: {product.name}" + (f" ({product.category})" if product.category else ""))
        if product.description:
            lines.append("Product description: " + plain_text(product.description)[:500])
    brand = get_brand(store, client_id)
    if brand != BrandProfile():
        context["brand"] = brand.model_dump(exclude_none=True)
        lines.append("Brand profile: " + json.dumps(context["brand"]))
    if request.style:
        require_style(request.style)
        context["style"] = styles()[request.style]["label"]
        lines.append(f"Style: {styles()[request.style]['label']}")
    text = engine.complete_text(TextRequest(instruction=ENHANCE_INSTRUCTION, prompt="\n".join(lines), context=context))
    return EnhanceOut(prompt=text[:2000], engine=engine.name)


# -- presets ------------------------------------------------------------------------------------------


def built_in_presets() -> list[PresetOut]:
    """One preset per style; not stored, so not editable or deletable."""
    return [
        PresetOut(id=f"style-{name}", name=style["label"], settings=GenerationSettings(style=name), built_in=True)
        for name, style in styles().items()
    ]


def list_presets(store: GenerationSettingsStore, client_id: str) -> list[PresetOut]:
    """The built-in presets, then the client's own by name."""
    return built_in_presets() + store.presets(client_id)


def get_preset(store: GenerationSettingsStore, client_id: str, preset_id: str) -> PresetOut:
    """A built-in or saved preset, or 404."""
    for preset in built_in_presets():
        if preset.id == preset_id:
            return preset
    found = store.preset(client_id, preset_id)
    if found is None:
        raise NotFound(f"No preset {preset_id}")
    return found


def create_preset(store: GenerationSettingsStore, client_id: str, data: PresetIn, now: datetime) -> PresetOut:
    """Save a preset of the client's own (its style must exist)."""
    from shared.ids import new_id

    require_style(data.settings.style)
    preset = PresetOut(id=new_id("pre"), name=data.name, settings=data.settings, created_at=now, updated_at=now)
    store.create_preset(client_id, preset)
    return preset


def update_preset(
    store: GenerationSettingsStore, client_id: str, preset_id: str, data: PresetUpdate, now: datetime
) -> PresetOut:
    """Rename a saved preset or change its settings; built-in ones are refused."""
    preset = get_preset(store, client_id, preset_id)
    if preset.built_in:
        raise ValidationFailed(
            "Built-in presets cannot be changed; save your own instead",
            errors=[{"field": "preset_id", "in": "path", "message": "built-in", "type": "value"}],
        )
    if data.settings is not None:
        require_style(data.settings.style)
    store.update_preset(client_id, preset_id, updated_at=now, name=data.name, settings=data.settings)
    return get_preset(store, client_id, preset_id)


def delete_preset(store: GenerationSettingsStore, client_id: str, preset_id: str) -> None:
    """Delete a saved preset (404 if unknown); built-in ones are refused."""
    preset = get_preset(store, client_id, preset_id)
    if preset.built_in:
        raise ValidationFailed(
            "Built-in presets cannot be deleted",
            errors=[{"field": "preset_id", "in": "path", "message": "built-in", "type": "value"}],
        )
    store.delete_preset(client_id, preset_id)


# -- remembered defaults ------------------------------------------------------------------------------

MAX_REMEMBERED = 500  # products remembered per call (a fan-out page is smaller)


def remember(
    store: GenerationSettingsStore,
    products: ProductLookup,
    client_id: str,
    settings: GenerationSettings,
    product_ids: list[str],
    now: datetime,
) -> None:
    """The settings of the latest job, per product and per product category (offered next time).
    Products that no longer exist are skipped."""
    unique = list(dict.fromkeys(product_ids))[:MAX_REMEMBERED]
    found = products.get_many(client_id, unique)
    store.remember(client_id, settings, [(product.id, product.category) for product in found.values()], now)


def defaults(
    store: GenerationSettingsStore,
    products: ProductLookup,
    client_id: str,
    product_id: str | None,
    category: str | None,
) -> DefaultsOut:
    """The settings to offer: the product's remembered ones, else its category's, else the defaults.
    Without an explicit category, the product's own is used (404 for an unknown product)."""
    if product_id and not category:
        category = _product(products, client_id, product_id).category
    by_product = store.defaults(client_id, "product", product_id) if product_id else None
    by_category = store.defaults(client_id, "category", category) if category else None
    return DefaultsOut(
        product=by_product, category=by_category, suggested=by_product or by_category or GenerationSettings()
    )
