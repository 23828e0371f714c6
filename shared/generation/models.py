"""Requests, responses and stored documents of AI image generation (the lifecycle's are in shared.batch)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from shared.batch.models import BatchItemDoc, ItemCounts, ItemStatus, JobStatus, PagedJobDoc
from shared.catalog.models import Id, StrictModel
from shared.engines.base import AspectRatio, ImageSize
from shared.text import MULTI_LINE, SINGLE_LINE

Prompt = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000), MULTI_LINE]
PresetName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), SINGLE_LINE]
StyleName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,39}$")]
MAX_JOB_ITEMS = 1000


class GenerationSettings(StrictModel):
    """What a job (or a saved preset) asks for; every field has a sensible default."""

    style: StyleName = "studio"
    prompt: Prompt | None = None
    negative_prompt: Prompt | None = None
    aspect_ratio: AspectRatio = "1:1"
    size: ImageSize = "1K"
    variants: int = Field(default=1, ge=1, le=4)


# The flash image model takes at most three reference photos well; every one asked for is sent.
MAX_REFERENCE_IMAGES = 3


class JobItemIn(StrictModel):
    product_id: Id | None = None
    image_asset_ids: list[Id] = Field(default_factory=list, max_length=MAX_REFERENCE_IMAGES)
    prompt: Prompt | None = None
    # The item's own settings, over the job's (a spreadsheet row's columns): None takes the job's.
    style: StyleName | None = None
    negative_prompt: Prompt | None = None
    aspect_ratio: AspectRatio | None = None
    size: ImageSize | None = None
    variants: int | None = Field(default=None, ge=1, le=4)

    def overrides(self) -> dict[str, Any]:
        """The settings this item sets for itself."""
        fields = ("style", "negative_prompt", "aspect_ratio", "size", "variants")
        return {name: getattr(self, name) for name in fields if getattr(self, name) is not None}

    @model_validator(mode="after")
    def _needs_subject(self) -> JobItemIn:
        if not self.product_id and not self.prompt:
            raise ValueError("each item needs a product_id or a prompt")
        if self.image_asset_ids and not self.product_id:
            raise ValueError("image_asset_ids need a product_id")
        return self


class JobCreate(StrictModel):
    items: list[JobItemIn] = Field(min_length=1, max_length=MAX_JOB_ITEMS)
    preset_id: Id | None = None
    style: StyleName | None = None
    prompt: Prompt | None = None
    negative_prompt: Prompt | None = None
    aspect_ratio: AspectRatio | None = None
    size: ImageSize | None = None
    variants: int | None = Field(default=None, ge=1, le=4)

    def overrides(self) -> dict[str, Any]:
        fields = ("style", "prompt", "negative_prompt", "aspect_ratio", "size", "variants")
        return {name: getattr(self, name) for name in fields if getattr(self, name) is not None}


class JobDoc(PagedJobDoc):
    """``clients/{client}/jobs/{id}``; its items are written by the fan-out, its progress counted in shards."""

    kind: str = "generate"
    settings: GenerationSettings
    slot_count: int
    unit_price: int
    retry_of: str | None = None
    # Jobs whose items set their own size or variants: credits per image by size (the charge counts each
    # item's images at its size's price); empty: every image costs ``unit_price``.
    unit_prices: dict[str, int] = Field(default_factory=dict)


class ItemDoc(BatchItemDoc):
    """``clients/{client}/jobs/{job}/items/{index:06d}``: one product or prompt, ``variants`` images."""

    product_id: str | None = None
    image_asset_ids: list[str] = Field(default_factory=list)
    prompt: str | None = None
    asset_ids: list[str] = Field(default_factory=list)
    failed_variants: int = 0
    # The item's own settings over the job's (JobItemIn): None takes the job's.
    style: str | None = None
    negative_prompt: str | None = None
    aspect_ratio: str | None = None
    size: str | None = None
    variants: int | None = None


class JobOut(BaseModel):
    model_config = ConfigDict(defer_build=True)

    id: str
    status: JobStatus
    settings: GenerationSettings
    item_count: int
    variants: int
    cost: int
    unit_price: int
    counts: ItemCounts
    progress: float
    images_succeeded: int
    images_failed: int
    retry_of: str | None
    settlement: dict[str, int] | None
    created_at: datetime
    finished_at: datetime | None


class ItemOut(BaseModel):
    model_config = ConfigDict(defer_build=True)

    index: int
    product_id: str | None
    prompt: str | None
    status: ItemStatus
    asset_ids: list[str]
    failed_variants: int
    failure: dict[str, Any] | None


# -- prompts, brand, presets -------------------------------------------------------------------------


class EnhanceRequest(StrictModel):
    prompt: Prompt
    product_id: Id | None = None
    style: StyleName | None = None


class EnhanceOut(BaseModel):
    model_config = ConfigDict(defer_build=True)

    prompt: str
    engine: str


class BrandProfile(StrictModel):
    tone: Annotated[str, StringConstraints(max_length=200), SINGLE_LINE] | None = None
    palette: list[Annotated[str, StringConstraints(pattern=r"^#[0-9A-Fa-f]{6}$")]] = Field(
        default_factory=list, max_length=12
    )
    style_keywords: list[Annotated[str, StringConstraints(min_length=1, max_length=40), SINGLE_LINE]] = Field(
        default_factory=list, max_length=20
    )
    description: Annotated[str, StringConstraints(max_length=2000), MULTI_LINE] | None = None


class PresetIn(StrictModel):
    name: PresetName
    settings: GenerationSettings


class PresetUpdate(StrictModel):
    name: PresetName | None = None
    settings: GenerationSettings | None = None


class PresetOut(BaseModel):
    model_config = ConfigDict(defer_build=True)

    id: str
    name: str
    settings: GenerationSettings
    built_in: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None


class PresetList(BaseModel):
    """The built-in presets, then the client's own."""

    model_config = ConfigDict(defer_build=True)

    items: list[PresetOut]


class DefaultsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    product_id: Id | None = None
    category: Annotated[str, StringConstraints(max_length=200), SINGLE_LINE] | None = None


class DefaultsOut(BaseModel):
    model_config = ConfigDict(defer_build=True)

    product: GenerationSettings | None
    category: GenerationSettings | None
    suggested: GenerationSettings
