"""Rows that generate images: a row's generation cells, the import's plan and its price, and what a job
whose items set their own size and variants charges."""

from __future__ import annotations

import pytest

from shared.batch.kind import Totals
from shared.batch.models import ItemStatus
from shared.catalog.csv_parsing import ColumnMapping, CsvRow, auto_map, row_to_draft
from shared.catalog.generation_rows import (
    MAX_GENERATION_ROWS,
    GenerationCostChanged,
    GenerationPricing,
    NothingToGenerate,
    TooManyGenerationRows,
    check_startable,
    plan,
)
from shared.catalog.models import ImportGeneration
from shared.generation.jobs import GENERATION, item_settings
from shared.generation.models import GenerationSettings, ItemDoc, JobDoc
from shared.ledger.pricing import PriceList

PRICES = PriceList(operations={"generate_image": {"1K": 3, "2K": 5, "4K": 9}})
PRICING = GenerationPricing(styles=frozenset({"studio", "lifestyle"}), prices=PRICES)
HEADERS = ("Name", "Image", "Style", "Prompt", "Aspect ratio", "Image size", "Variants", "Base image")
MAPPING = auto_map(HEADERS)


def row(number: int, **cells: str) -> CsvRow:
    values = dict.fromkeys(HEADERS, "")
    values.update({"Name": f"Product {number}", **{key.replace("_", " "): value for key, value in cells.items()}})
    return CsvRow(number=number, values=values)


def test_generation_columns_are_detected_but_product_attributes_are_not() -> None:
    assert MAPPING.generation_headers() == {
        "style": "Style",
        "prompt": "Prompt",
        "negative_prompt": None,
        "aspect_ratio": "Aspect ratio",
        "size": "Image size",
        "variants": "Variants",
        "base_image_url": "Base image",
    }
    assert MAPPING.image_urls == ("Image",)
    clothing = auto_map(["Name", "Size", "Colour"])  # a clothing size is no image size
    assert clothing.size is None


def test_a_rows_cells_become_its_generation_settings() -> None:
    result = row_to_draft(
        row(2, Style="Lifestyle", Prompt="on a beach", Aspect_ratio="16x9", Image_size="2k", Variants="2.0",
            Image="https://x.example/a.jpg", Base_image="https://x.example/base.jpg"),
        MAPPING,
    )  # fmt: skip
    draft = result.draft
    assert draft is not None and result.problems == ()
    assert draft.generation is not None
    assert draft.generation.model_dump() == {
        "style": "lifestyle",
        "prompt": "on a beach",
        "negative_prompt": None,
        "aspect_ratio": "16:9",
        "size": "2K",
        "variants": 2,
        "base_image_url": "https://x.example/base.jpg",
    }
    # The base image is imported first: the job uses it as the reference.
    assert draft.image_urls == ("https://x.example/base.jpg", "https://x.example/a.jpg")
    assert row_to_draft(row(3), MAPPING).draft.generation is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("cells", "message"),
    [
        ({"Aspect_ratio": "7:5"}, "aspect ratio '7:5'"),
        ({"Image_size": "8K"}, "size '8K'"),
        ({"Variants": "5"}, "variants '5'"),
        ({"Variants": "two"}, "variants 'two'"),
        ({"Base_image": "ftp://x.example/a.jpg"}, "not an http(s) URL"),
        ({"Prompt": "bell\x07"}, "prompt"),
    ],
)
def test_unusable_generation_cells_warn_and_the_product_is_still_imported(cells: dict[str, str], message: str) -> None:
    result = row_to_draft(row(2, Style="studio", **cells), MAPPING)
    assert result.draft is not None and result.draft.generation is None
    (problem,) = result.problems
    assert (problem.code, problem.severity) == ("invalid_generation", "warning")
    assert message in problem.message


def drafts(*rows: CsvRow) -> list:  # type: ignore[type-arg]
    return [row_to_draft(r, MAPPING).draft for r in rows]


def test_the_plan_prices_each_row_with_its_own_settings_over_the_defaults() -> None:
    rows = drafts(
        row(2, Style="studio", Variants="2"),
        row(3),
        row(4, Image_size="2K"),
        row(5, Style="no-such-style"),
    )
    only_with_cells = plan(rows, ImportGeneration(), PRICING)
    assert [(r.row_number, r.style, r.size, r.variants) for r in only_with_cells.rows] == [
        (2, "studio", "1K", 2),
        (4, "studio", "2K", 1),
    ]
    assert only_with_cells.skipped == ((5, "unknown style 'no-such-style'"),)
    assert (only_with_cells.images, only_with_cells.cost, only_with_cells.unit_prices) == (
        3,
        2 * 3 + 5,
        {"1K": 3, "2K": 5},
    )
    every_row = plan(rows, ImportGeneration(rows="all", style="lifestyle", variants=3, size="4K"), PRICING)
    assert [(r.row_number, r.style, r.size, r.variants) for r in every_row.rows] == [
        (2, "studio", "4K", 2),
        (3, "lifestyle", "4K", 3),
        (4, "lifestyle", "2K", 3),
    ]
    assert every_row.cost == 2 * 9 + 3 * 9 + 3 * 5
    check_startable(every_row, every_row.summary())
    with pytest.raises(GenerationCostChanged):
        check_startable(every_row, only_with_cells.summary())  # the preview showed another cost
    with pytest.raises(GenerationCostChanged):
        check_startable(every_row, None)  # nothing was shown
    with pytest.raises(NothingToGenerate):
        check_startable(plan(drafts(row(3)), ImportGeneration(), PRICING), None)
    many = plan(drafts(*(row(n) for n in range(2, MAX_GENERATION_ROWS + 3))), ImportGeneration(rows="all"), PRICING)
    assert many.summary()["too_many"] is True
    with pytest.raises(TooManyGenerationRows):
        check_startable(many, many.summary())


def _job(**fields: object) -> JobDoc:
    return JobDoc.model_construct(**{"settings": GenerationSettings(), "unit_price": 3, "unit_prices": {}, **fields})


def _item(status: ItemStatus, assets: int, **fields: object) -> ItemDoc:
    return ItemDoc.model_construct(
        status=status, asset_ids=[f"a{n}" for n in range(assets)], failed_variants=0, **{
            "style": None, "negative_prompt": None, "aspect_ratio": None, "size": None, "variants": None, **fields,
        }
    )  # fmt: skip


def test_items_with_their_own_size_and_variants_are_charged_at_their_size() -> None:
    job = _job(unit_prices={"1K": 3, "2K": 5})
    big = _item(ItemStatus.SUCCEEDED, 2, size="2K", variants=2)
    assert item_settings(job, big).size == "2K" and item_settings(job, big).variants == 2
    assert GENERATION.tally(job, big) == {"succeeded_slots": 2, "failed_slots": 0, "succeeded_credits": 10}
    failed = _item(ItemStatus.FAILED, 0, variants=3)
    assert GENERATION.tally(job, failed)["failed_slots"] == 3  # every image the item asked for
    cancelled = _item(ItemStatus.CANCELLED, 0, variants=4)
    assert GENERATION.tally(job, cancelled) == {"cancelled_slots": 4}
    assert GENERATION.charge(job, Totals({"succeeded_slots": 3, "succeeded_credits": 13})) == 13
    plain = _job()  # a job of one size charges as before
    assert GENERATION.charge(plain, Totals({"succeeded_slots": 3})) == 9
    assert "succeeded_credits" not in GENERATION.tally(plain, _item(ItemStatus.SUCCEEDED, 1))


def test_a_mapping_can_leave_generation_columns_out() -> None:
    mapping = ColumnMapping(name="Name", style="", prompt=None)
    assert mapping.style is None and mapping.generation_headers()["style"] is None
