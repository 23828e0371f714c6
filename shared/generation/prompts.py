"""Styles, prompt building, prompt enhancement, brand profile, saved presets and remembered defaults."""

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

if TYPE_CHECKING:
    from google.cloud.firestore import Client

    from shared.catalog.models import ProductDoc
    from shared.engines.base import ImageEngine

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
        parts.append("Product details: " + " ".join(product.description.split())[:400])
    for extra in (settings.prompt, item_prompt):
        if extra:
            parts.append(extra)
    if product is not None and product.images:
        parts.append(FIDELITY)
    return "\n".join(parts)


# -- client settings documents ------------------------------------------------------------------------


def _settings_ref(db: Client, client_id: str, name: str) -> Any:
    return db.collection("clients").document(client_id).collection("settings").document(name)


def get_brand(db: Client, client_id: str) -> BrandProfile:
    snapshot = _settings_ref(db, client_id, "brand").get()
    return BrandProfile.model_validate(snapshot.to_dict()) if snapshot.exists else BrandProfile()


def put_brand(db: Client, client_id: str, brand: BrandProfile) -> BrandProfile:
    _settings_ref(db, client_id, "brand").set(brand.model_dump(mode="python"))
    return brand


def enhance(db: Client, engine: ImageEngine, client_id: str, request: EnhanceRequest) -> EnhanceOut:
    """Expand a short prompt with a text model, using the product and the brand profile."""
    from shared.catalog.products import get_product
    from shared.engines.base import TextRequest

    # The engine gets the idea on its own too: an offline (template) engine expands it, not the lines
    # written for a language model.
    context: dict[str, Any] = {"idea": request.prompt}
    lines = [f"Idea: {request.prompt}"]
    if request.product_id:
        product = get_product(db, client_id, request.product_id)
        context["product"] = {
            "name": product.name,
            "category": product.category,
            "description": (product.description or "")[:500],
        }
        lines.append(f"Product: {product.name}" + (f" ({product.category})" if product.category else ""))
        if product.description:
            lines.append("Product description: " + " ".join(product.description.split())[:500])
    brand = get_brand(db, client_id)
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


def _presets_ref(db: Client, client_id: str) -> Any:
    return db.collection("clients").document(client_id).collection("presets")


def built_in_presets() -> list[PresetOut]:
    return [
        PresetOut(id=f"style-{name}", name=style["label"], settings=GenerationSettings(style=name), built_in=True)
        for name, style in styles().items()
    ]


def list_presets(db: Client, client_id: str) -> list[PresetOut]:
    saved = [PresetOut.model_validate(s.to_dict()) for s in _presets_ref(db, client_id).order_by("name").stream()]
    return built_in_presets() + saved


def get_preset(db: Client, client_id: str, preset_id: str) -> PresetOut:
    for preset in built_in_presets():
        if preset.id == preset_id:
            return preset
    snapshot = _presets_ref(db, client_id).document(preset_id).get()
    if not snapshot.exists:
        raise NotFound(f"No preset {preset_id}")
    return PresetOut.model_validate(snapshot.to_dict())


def create_preset(db: Client, client_id: str, data: PresetIn, now: datetime) -> PresetOut:
    from shared.ids import new_id

    require_style(data.settings.style)
    preset = PresetOut(id=new_id("pre"), name=data.name, settings=data.settings, created_at=now, updated_at=now)
    _presets_ref(db, client_id).document(preset.id).create(preset.model_dump(mode="python"))
    return preset


def update_preset(db: Client, client_id: str, preset_id: str, data: PresetUpdate, now: datetime) -> PresetOut:
    preset = get_preset(db, client_id, preset_id)
    if preset.built_in:
        raise ValidationFailed(
            "Built-in presets cannot be changed; save your own instead",
            errors=[{"field": "preset_id", "in": "path", "message": "built-in", "type": "value"}],
        )
    changes: dict[str, Any] = {"updated_at": now}
    if data.name is not None:
        changes["name"] = data.name
    if data.settings is not None:
        require_style(data.settings.style)
        changes["settings"] = data.settings.model_dump(mode="python")
    _presets_ref(db, client_id).document(preset_id).update(changes)
    return get_preset(db, client_id, preset_id)


def delete_preset(db: Client, client_id: str, preset_id: str) -> None:
    preset = get_preset(db, client_id, preset_id)
    if preset.built_in:
        raise ValidationFailed(
            "Built-in presets cannot be deleted",
            errors=[{"field": "preset_id", "in": "path", "message": "built-in", "type": "value"}],
        )
    _presets_ref(db, client_id).document(preset_id).delete()


# -- remembered defaults ------------------------------------------------------------------------------


def _defaults_ref(db: Client, client_id: str, kind: str, key: str) -> Any:
    import hashlib

    doc_id = f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:32]}"
    return db.collection("clients").document(client_id).collection("generation_defaults").document(doc_id)


def remember_defaults(
    db: Client, client_id: str, settings: GenerationSettings, product_ids: list[str], now: datetime
) -> None:
    """The settings of the latest job, per product and per product category (offered next time)."""
    from shared.catalog.products import products_by_ids

    unique = list(dict.fromkeys(product_ids))[:500]
    products = products_by_ids(db, client_id, unique)
    data = {"settings": settings.model_dump(mode="python"), "updated_at": now}
    batch = db.batch()
    writes = 0
    for product in products.values():
        batch.set(_defaults_ref(db, client_id, "product", product.id), data)
        writes += 1
        if product.category:
            batch.set(_defaults_ref(db, client_id, "category", product.category), data)
            writes += 1
        if writes >= 400:
            batch.commit()
            batch, writes = db.batch(), 0
    if writes:
        batch.commit()


def defaults(db: Client, client_id: str, product_id: str | None, category: str | None) -> DefaultsOut:
    from shared.catalog.products import get_product

    def read(kind: str, key: str | None) -> GenerationSettings | None:
        if not key:
            return None
        snapshot = _defaults_ref(db, client_id, kind, key).get()
        return GenerationSettings.model_validate(snapshot.to_dict()["settings"]) if snapshot.exists else None

    if product_id and not category:
        category = get_product(db, client_id, product_id).category
    by_product, by_category = read("product", product_id), read("category", category)
    return DefaultsOut(
        product=by_product, category=by_category, suggested=by_product or by_category or GenerationSettings()
    )
