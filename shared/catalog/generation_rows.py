"""Imports that also generate images: which rows generate, with which settings, at which price.

An import draft may carry generation settings (:class:`~shared.catalog.models.ImportGeneration`: the
defaults, and whether every row generates or only the rows with generation cells); a row's own
generation columns override them (:class:`~shared.catalog.csv_parsing.RowGeneration`). The plan is
priced with the credits price list (``generate_image`` per image, by size: the quote the credits API
and generation jobs give), shown in the preview, and checked again when the import starts; the job
itself is generation's (:mod:`shared.generation.import_jobs`): this module only knows the names of the
styles and the prices it is handed, so the catalog stays below generation in the layers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from pydantic import BaseModel, ConfigDict

from shared.catalog.models import ImportGeneration
from shared.errors import Conflict, UnprocessableContent

if TYPE_CHECKING:
    from shared.catalog.csv_parsing import ProductDraft
    from shared.catalog.models import ImportDoc
    from shared.ledger.pricing import PriceList

OPERATION: Final = "generate_image"
MAX_GENERATION_ROWS: Final = 1000  # one generation job's items (shared.generation.models.MAX_JOB_ITEMS)
_LISTED: Final = 20


class NothingToGenerate(UnprocessableContent):
    code = "nothing_to_generate"
    title = "No row of the import can generate images"


class TooManyGenerationRows(UnprocessableContent):
    code = "too_many_generation_rows"
    title = "Too many rows generate images for one job"


class GenerationCostChanged(Conflict):
    code = "generation_cost_changed"
    title = "The generation cost changed since the preview"


@dataclass(frozen=True)
class GenerationPricing:
    """What planning needs of generation: its styles' names and the price list (handed in by the caller)."""

    styles: frozenset[str]
    prices: PriceList
    default_style: str = "studio"


@dataclass(frozen=True)
class GenerationStart:
    """Starting an import that generates: ``pricing`` plans it, ``reserve`` holds its cost (402 when the
    credits are not there) and returns what the import keeps of it (its ``generation_job``)."""

    pricing: GenerationPricing
    reserve: Callable[[ImportDoc, GenerationPlan], dict[str, Any]]


class PlannedRow(BaseModel):
    """One row that generates: its product's row and the settings it generates with."""

    model_config = ConfigDict(frozen=True)

    row_number: int
    style: str
    size: str
    variants: int
    aspect_ratio: str | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    base_image_url: str | None = None


class GenerationPlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    rows: tuple[PlannedRow, ...]
    skipped: tuple[tuple[int, str], ...]  # (row, why it does not generate)
    unit_prices: dict[str, int]  # size -> credits per image
    images: int
    cost: int
    price_list_version: int

    def summary(self) -> dict[str, Any]:
        """What the preview shows (and the start checks against)."""
        return {
            "rows": len(self.rows),
            "images": self.images,
            "cost": self.cost,
            "unit_prices": self.unit_prices,
            "price_list_version": self.price_list_version,
            "skipped_rows": len(self.skipped),
            "skipped": [{"row": row, "reason": reason} for row, reason in self.skipped[:_LISTED]],
            "max_rows": MAX_GENERATION_ROWS,
            "too_many": len(self.rows) > MAX_GENERATION_ROWS,
        }


def wants_generation(settings: dict[str, Any] | None, mapping_headers: Iterable[str | None]) -> bool:
    """Whether a draft gets a generation plan: settings chosen, or a generation column mapped."""
    return settings is not None or any(header is not None for header in mapping_headers)


def plan(drafts: Iterable[ProductDraft], settings: ImportGeneration, pricing: GenerationPricing) -> GenerationPlan:
    """The rows that generate (every importable row, or those with generation cells), each with the import's
    defaults overridden by its own cells, priced per image by size."""
    from shared.ledger.pricing import QuoteItem, quote

    rows: list[PlannedRow] = []
    skipped: list[tuple[int, str]] = []
    images: dict[str, int] = {}
    for draft in drafts:
        own = draft.generation
        if own is None and settings.rows != "all":
            continue
        style = (own.style if own else None) or settings.style or pricing.default_style
        if style not in pricing.styles:
            skipped.append((draft.row_number, f"unknown style {style!r}"))
            continue
        row = PlannedRow(
            row_number=draft.row_number,
            style=style,
            size=(own.size if own else None) or settings.size or "1K",
            variants=(own.variants if own else None) or settings.variants or 1,
            aspect_ratio=(own.aspect_ratio if own else None) or settings.aspect_ratio,
            prompt=(own.prompt if own else None) or settings.prompt,
            negative_prompt=(own.negative_prompt if own else None) or settings.negative_prompt,
            base_image_url=own.base_image_url if own else None,
        )
        rows.append(row)
        images[row.size] = images.get(row.size, 0) + row.variants
    unit_prices: dict[str, int] = {}
    cost = 0
    if images:
        wanted = [QuoteItem(operation=OPERATION, variant=size, quantity=n) for size, n in images.items()]
        priced = quote(pricing.prices, wanted)
        unit_prices = {line.variant or "": line.unit_price for line in priced.lines}
        cost = priced.total
    return GenerationPlan(
        rows=tuple(rows),
        skipped=tuple(skipped),
        unit_prices=unit_prices,
        images=sum(images.values()),
        cost=cost,
        price_list_version=pricing.prices.version,
    )


def check_startable(plan_: GenerationPlan, shown: dict[str, Any] | None) -> None:
    """The plan may start: it has rows, not too many, and costs what the preview showed (409 with the
    new cost otherwise: the merchant reviews it again)."""
    if not plan_.rows:
        raise NothingToGenerate(
            "No importable row has generation settings; map the generation columns or set generation.rows to "
            '"all" with a style.'
        )
    if len(plan_.rows) > MAX_GENERATION_ROWS:
        raise TooManyGenerationRows(
            f"{len(plan_.rows)} rows would generate images; one import generates for at most {MAX_GENERATION_ROWS}.",
            limit=MAX_GENERATION_ROWS,
        )
    if shown is None or shown.get("cost") != plan_.cost or shown.get("images") != plan_.images:
        raise GenerationCostChanged(
            f"Generating now costs {plan_.cost} credits for {plan_.images} images; review the preview again.",
            cost=plan_.cost,
            images=plan_.images,
        )
