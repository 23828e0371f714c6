"""Generation settings rules against the in-memory settings port: built-in presets are read-only,
a client's own presets (create, list by name, change, delete, isolation), the brand profile, prompt
enhancement's inputs, and remembered defaults (product over category over the built-in defaults).
The same flows run on Firestore in tests/integration/test_generate.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.catalog.models import ProductDoc
from shared.engines.offline import OfflineEngine
from shared.errors import Conflict, NotFound, ValidationFailed
from shared.generation import prompts
from shared.generation.models import BrandProfile, EnhanceRequest, GenerationSettings, PresetIn, PresetUpdate
from tests.fakes_settings import InMemoryGenerationSettings, InMemoryProducts

NOW = datetime(2026, 4, 1, 9, tzinfo=UTC)


def product(product_id: str, category: str | None = None, name: str = "Linen cushion") -> ProductDoc:
    return ProductDoc(id=product_id, client_id="c1", name=name, category=category, created_at=NOW, updated_at=NOW)


def preset_in(name: str, **settings: object) -> PresetIn:
    return PresetIn.model_validate({"name": name, "settings": settings})


# -- presets --------------------------------------------------------------------------------------------


def test_built_in_presets_are_one_per_style_and_listed_first() -> None:
    store = InMemoryGenerationSettings()
    prompts.create_preset(store, "c1", preset_in("Aardvark", style="luxury"), NOW)
    listed = prompts.list_presets(store, "c1")
    built_in = [p for p in listed if p.built_in]
    assert {p.id for p in built_in} == {f"style-{name}" for name in prompts.styles()}
    assert listed[: len(built_in)] == built_in  # the client's own follow, even one named "Aardvark"
    assert [p.name for p in listed[len(built_in) :]] == ["Aardvark"]
    assert prompts.get_preset(store, "c1", "style-luxury").settings == GenerationSettings(style="luxury")


@pytest.mark.parametrize("change", [PresetUpdate(name="Mine now"), PresetUpdate(settings=GenerationSettings())])
def test_built_in_presets_cannot_be_changed_or_deleted(change: PresetUpdate) -> None:
    store = InMemoryGenerationSettings()
    with pytest.raises(ValidationFailed):
        prompts.update_preset(store, "c1", "style-studio", change, NOW)
    with pytest.raises(ValidationFailed):
        prompts.delete_preset(store, "c1", "style-studio")
    assert prompts.get_preset(store, "c1", "style-studio").name == prompts.styles()["studio"]["label"]
    assert store.saved == {}


def test_a_saved_preset_lives_and_dies() -> None:
    store = InMemoryGenerationSettings()
    created = prompts.create_preset(store, "c1", preset_in("Linen pair", style="lifestyle", variants=2), NOW)
    assert created.id.startswith("pre") and not created.built_in
    assert (created.created_at, created.updated_at) == (NOW, NOW)
    assert prompts.get_preset(store, "c1", created.id) == created

    later = NOW + timedelta(hours=1)
    renamed = prompts.update_preset(store, "c1", created.id, PresetUpdate(name="Linen trio"), later)
    assert (renamed.name, renamed.settings, renamed.created_at, renamed.updated_at) == (
        "Linen trio", created.settings, NOW, later,
    )  # fmt: skip
    resettled = prompts.update_preset(
        store, "c1", created.id, PresetUpdate(settings=GenerationSettings(style="outdoor", variants=3)), later
    )
    assert (resettled.name, resettled.settings.style, resettled.settings.variants) == ("Linen trio", "outdoor", 3)

    prompts.delete_preset(store, "c1", created.id)
    for gone in (
        lambda: prompts.get_preset(store, "c1", created.id),
        lambda: prompts.update_preset(store, "c1", created.id, PresetUpdate(name="x"), later),
        lambda: prompts.delete_preset(store, "c1", created.id),
    ):
        with pytest.raises(NotFound):
            gone()


def test_presets_are_listed_by_name_and_belong_to_their_client() -> None:
    store = InMemoryGenerationSettings()
    for name in ("Mugs", "Cushions", "Lamps"):
        prompts.create_preset(store, "c1", preset_in(name), NOW)
    theirs = prompts.create_preset(store, "c2", preset_in("Theirs"), NOW)
    own = [p.name for p in prompts.list_presets(store, "c1") if not p.built_in]
    assert own == ["Cushions", "Lamps", "Mugs"]
    with pytest.raises(NotFound):
        prompts.get_preset(store, "c1", theirs.id)
    with pytest.raises(NotFound):
        prompts.delete_preset(store, "c1", theirs.id)
    assert prompts.get_preset(store, "c2", theirs.id) == theirs


def test_an_unknown_style_is_refused_and_nothing_is_stored() -> None:
    store = InMemoryGenerationSettings()
    with pytest.raises(ValidationFailed):
        prompts.create_preset(store, "c1", PresetIn.model_construct(name="Bad", settings=_bad_style()), NOW)
    kept = prompts.create_preset(store, "c1", preset_in("Good"), NOW)
    with pytest.raises(ValidationFailed):
        prompts.update_preset(store, "c1", kept.id, PresetUpdate.model_construct(name=None, settings=_bad_style()), NOW)
    assert store.saved == {("c1", kept.id): kept}


def _bad_style() -> GenerationSettings:
    # The request models refuse an unknown style already; the service checks again for settings
    # that come from elsewhere (a stored preset, a retried job), so build one past validation.
    return GenerationSettings.model_construct(style="watercolour-dream", variants=1)


def test_the_fake_refuses_a_preset_id_twice_as_firestore_create_does() -> None:
    store = InMemoryGenerationSettings()
    preset = prompts.create_preset(store, "c1", preset_in("Once"), NOW)
    with pytest.raises(Conflict):
        store.create_preset("c1", preset)


# -- brand profile and enhancement --------------------------------------------------------------------


def test_the_brand_profile_is_empty_until_saved_and_per_client() -> None:
    store = InMemoryGenerationSettings()
    assert prompts.get_brand(store, "c1") == BrandProfile()
    brand = BrandProfile(tone="calm", palette=["#AABBCC"], style_keywords=["linen"])
    assert prompts.put_brand(store, "c1", brand) == brand
    assert prompts.get_brand(store, "c1") == brand
    assert prompts.get_brand(store, "c2") == BrandProfile()


def test_enhancement_uses_the_product_and_the_brand_of_the_client() -> None:
    store, products = InMemoryGenerationSettings(), InMemoryProducts([("c1", product("prd_1", "Home"))])
    prompts.put_brand(store, "c1", BrandProfile(tone="calm"))
    request = EnhanceRequest(prompt="cushion on a sofa", product_id="prd_1", style="lifestyle")
    out = prompts.enhance(store, products, OfflineEngine(), "c1", request)
    assert out.engine == "offline"
    assert "featuring the Linen cushion (Home)" in out.prompt
    assert "in a calm tone" in out.prompt
    assert "lifestyle" in out.prompt.lower()
    with pytest.raises(NotFound):  # another client has neither the product nor the brand
        prompts.enhance(store, products, OfflineEngine(), "c2", request)
    plain = prompts.enhance(store, products, OfflineEngine(), "c2", EnhanceRequest(prompt="cushion on a sofa"))
    assert "calm" not in plain.prompt


# -- remembered defaults ------------------------------------------------------------------------------


def test_defaults_prefer_the_product_then_its_category_then_the_built_in_defaults() -> None:
    store = InMemoryGenerationSettings()
    products = InMemoryProducts(
        [("c1", product("prd_a", "Garden")), ("c1", product("prd_b", "Garden")), ("c1", product("prd_k", "Kitchen"))]
    )
    fresh = prompts.defaults(store, products, "c1", "prd_a", None)
    assert (fresh.product, fresh.category, fresh.suggested) == (None, None, GenerationSettings())

    outdoor = GenerationSettings(style="outdoor", variants=2)
    prompts.remember(store, products, "c1", outdoor, ["prd_a"], NOW)
    by_product = prompts.defaults(store, products, "c1", "prd_a", None)
    assert (by_product.product, by_product.category, by_product.suggested) == (outdoor, outdoor, outdoor)
    # A sibling in the same category gets the category's settings; another category gets nothing.
    sibling = prompts.defaults(store, products, "c1", "prd_b", None)
    assert (sibling.product, sibling.category, sibling.suggested) == (None, outdoor, outdoor)
    kitchen = prompts.defaults(store, products, "c1", "prd_k", None)
    assert kitchen.suggested == GenerationSettings()

    # A later job on the sibling changes the category, but prd_a's own settings still win for prd_a.
    flatlay = GenerationSettings(style="flatlay")
    prompts.remember(store, products, "c1", flatlay, ["prd_b"], NOW + timedelta(minutes=5))
    again = prompts.defaults(store, products, "c1", "prd_a", None)
    assert (again.product, again.category, again.suggested) == (outdoor, flatlay, outdoor)
    # An explicit category is used as given (no product read).
    assert prompts.defaults(store, products, "c1", None, "Garden").suggested == flatlay
    assert prompts.defaults(store, products, "c1", "prd_k", "Garden").suggested == flatlay


def test_defaults_of_an_unknown_product_are_a_404_and_unknown_products_are_not_remembered() -> None:
    store, products = InMemoryGenerationSettings(), InMemoryProducts([("c1", product("prd_a"))])
    with pytest.raises(NotFound):
        prompts.defaults(store, products, "c1", "prd_gone", None)
    prompts.remember(store, products, "c1", GenerationSettings(style="seasonal"), ["prd_a", "prd_gone", "prd_a"], NOW)
    assert set(store.remembered) == {("c1", "product", "prd_a")}  # no category: only the product
    with pytest.raises(NotFound):  # another client's product id is unknown to this one
        prompts.defaults(store, products, "c2", "prd_a", None)


def test_remembering_stops_at_the_limit_of_products_per_call() -> None:
    store = InMemoryGenerationSettings()
    ids = [f"prd_{i}" for i in range(prompts.MAX_REMEMBERED + 5)]
    products = InMemoryProducts([("c1", product(pid)) for pid in ids])
    prompts.remember(store, products, "c1", GenerationSettings(), ids, NOW)
    assert len(store.remembered) == prompts.MAX_REMEMBERED
