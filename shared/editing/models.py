"""Requests, responses and stored documents of editing (the job lifecycle's are in shared.batch).

An edit request is a declarative pipeline: ``operations`` is an ordered list of operation objects,
each tagged by ``op`` (a discriminated union, unknown fields and unknown ops are a 422), applied to
every asset in ``asset_ids``.

The inpaint mask travels inside its operation as base64 PNG (``mask``, a ``data:`` URL prefix is
accepted): a mask is drawn per edit in the frontend, so it needs no catalog upload, never shows up
in a product's gallery, and is validated with the request, before anything is charged. A job keeps
the decoded mask in the object store and its tasks carry only ids.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, model_validator

from shared.batch.models import BatchItemDoc, BatchJobDoc, ItemCounts, ItemStatus, JobStatus
from shared.catalog.models import Id, StrictModel
from shared.text import MULTI_LINE

Prompt = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000), MULTI_LINE]
Color = Annotated[
    str, StringConstraints(strip_whitespace=True, pattern=r"^(#[0-9A-Fa-f]{6}([0-9A-Fa-f]{2})?|transparent)$")
]
AspectPreset = Literal["1:1", "4:5", "3:4", "4:3", "16:9", "9:16"]
Align = Literal["center", "top", "bottom", "left", "right", "top_left", "top_right", "bottom_left", "bottom_right"]
MAX_OPERATIONS = 20
MAX_ASSETS = 100
MAX_SIDE = 12_000
# Base64 of the largest mask the route accepts (the body limit is the real bound).
MAX_MASK_CHARS = 8 * 1024 * 1024

_DATA_URL = re.compile(r"^data:image/[a-z0-9.+-]+;base64,", re.IGNORECASE)


def _mask_bytes(value: Any) -> Any:
    """Base64 text (optionally a ``data:`` URL) to bytes; bytes pass through (a job's stored mask)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if not isinstance(value, str):
        raise ValueError("mask must be a base64-encoded PNG")
    if len(value) > MAX_MASK_CHARS:
        raise ValueError("mask is too large")
    text = _DATA_URL.sub("", value.strip(), count=1)
    text = re.sub(r"\s+", "", text).replace("-", "+").replace("_", "/")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("mask is not valid base64") from exc
    if not data:
        raise ValueError("mask is empty")
    return data


MaskBytes = Annotated[bytes, BeforeValidator(_mask_bytes)]


class _Op(StrictModel):
    @property
    def is_ai(self) -> bool:
        """Whether the operation needs a model (AI engine or rembg): such pipelines run as jobs."""
        return False


class RemoveBackground(_Op):
    """rembg cutout: a transparent PNG of the subject."""

    op: Literal["remove_background"]
    alpha_matting: bool | None = None  # None: the REMBG_ALPHA_MATTING setting

    @property
    def is_ai(self) -> bool:
        return True


class Background(_Op):
    """What goes behind a cutout: a solid colour, nothing (transparent) or a generated scene."""

    op: Literal["background"]
    type: Literal["solid", "transparent", "scene"]
    color: Color | None = None
    prompt: Prompt | None = None

    @model_validator(mode="after")
    def _fields_for_type(self) -> Background:
        if self.type == "solid" and self.color is None:
            raise ValueError("a solid background needs color (#RRGGBB or #RRGGBBAA)")
        if self.type != "solid" and self.color is not None:
            raise ValueError("color is only for type solid")
        if self.type == "scene" and self.prompt is None:
            raise ValueError("a scene background needs prompt")
        if self.type != "scene" and self.prompt is not None:
            raise ValueError("prompt is only for type scene")
        return self

    @property
    def is_ai(self) -> bool:
        return self.type == "scene"


class CropBox(StrictModel):
    # No bounds here: a box outside the image is answered with crop_out_of_bounds, naming the image size.
    x: int
    y: int
    width: int = Field(ge=1, le=MAX_SIDE)
    height: int = Field(ge=1, le=MAX_SIDE)


class Crop(_Op):
    """A box in pixels, or the largest box of an aspect preset (centred on the subject of a cutout)."""

    op: Literal["crop"]
    box: CropBox | None = None
    aspect: AspectPreset | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Crop:
        if (self.box is None) == (self.aspect is None):
            raise ValueError("crop needs exactly one of box or aspect")
        return self


class Resize(_Op):
    """To a width and/or height; ``keep_aspect`` fits inside them, otherwise both are exact."""

    op: Literal["resize"]
    width: int | None = Field(default=None, ge=1, le=MAX_SIDE)
    height: int | None = Field(default=None, ge=1, le=MAX_SIDE)
    keep_aspect: bool = True
    quality: Literal["high", "balanced", "fast"] = "high"  # Lanczos, bicubic, bilinear

    @model_validator(mode="after")
    def _sizes(self) -> Resize:
        if self.width is None and self.height is None:
            raise ValueError("resize needs width, height or both")
        if not self.keep_aspect and (self.width is None or self.height is None):
            raise ValueError("resize with keep_aspect false needs both width and height")
        return self


class Pad(_Op):
    """Place the image on a larger canvas: exact width/height, or the smallest canvas of an aspect."""

    op: Literal["pad"]
    width: int | None = Field(default=None, ge=1, le=MAX_SIDE)
    height: int | None = Field(default=None, ge=1, le=MAX_SIDE)
    aspect: AspectPreset | None = None
    color: Color = "#FFFFFF"
    align: Align = "center"

    @model_validator(mode="after")
    def _canvas(self) -> Pad:
        given = (self.width is not None, self.height is not None)
        if self.aspect is not None and any(given):
            raise ValueError("pad takes width and height, or aspect, not both")
        if self.aspect is None and not all(given):
            raise ValueError("pad needs both width and height, or aspect")
        return self


class Upscale(_Op):
    """To a long side of 2048 (2K) or 4096 (4K) pixels with the AI engine."""

    op: Literal["upscale"]
    size: Literal["2K", "4K"]

    @property
    def is_ai(self) -> bool:
        return True


class PromptEdit(_Op):
    op: Literal["prompt_edit"]
    prompt: Prompt

    @property
    def is_ai(self) -> bool:
        return True


class Inpaint(_Op):
    """Regenerate the masked region only; every pixel where the mask is 0 stays as it was."""

    op: Literal["inpaint"]
    prompt: Prompt
    mask: MaskBytes = Field(repr=False)

    @property
    def is_ai(self) -> bool:
        return True


class Output(_Op):
    """How the result is stored; must be the last operation. Without it: PNG when there is
    transparency or an inpaint (lossless keeps the inpaint guarantee), else the source's format."""

    op: Literal["output"]
    format: Literal["png", "jpeg", "webp"]
    quality: int = Field(default=90, ge=1, le=100)
    max_bytes: int | None = Field(default=None, ge=1024, le=50 * 1024 * 1024)


Operation = Annotated[
    RemoveBackground | Background | Crop | Resize | Pad | Upscale | PromptEdit | Inpaint | Output,
    Field(discriminator="op"),
]


class EditRequest(StrictModel):
    asset_ids: list[Id] = Field(min_length=1, max_length=MAX_ASSETS)
    operations: list[Operation] = Field(min_length=1, max_length=MAX_OPERATIONS)

    @model_validator(mode="after")
    def _pipeline_shape(self) -> EditRequest:
        if len(set(self.asset_ids)) != len(self.asset_ids):
            raise ValueError("asset_ids must not repeat an asset")
        outputs = [i for i, op in enumerate(self.operations) if isinstance(op, Output)]
        if outputs and outputs != [len(self.operations) - 1]:
            raise ValueError("output may appear once, as the last operation")
        return self

    @property
    def is_ai(self) -> bool:
        return any(op.is_ai for op in self.operations)


class RevertRequest(StrictModel):
    revision: int = Field(ge=1)


# -- responses -----------------------------------------------------------------------------------


class QuoteLineOut(BaseModel):
    model_config = ConfigDict(defer_build=True)

    asset_id: str
    operation_index: int
    operation: str  # the price list's operation name
    variant: str | None
    amount: int


class EditQuoteOut(BaseModel):
    model_config = ConfigDict(defer_build=True)

    lines: list[QuoteLineOut]
    total: int
    price_list_version: int
    mode: Literal["sync", "job"]


class RevisionOut(BaseModel):
    model_config = ConfigDict(defer_build=True)

    asset_id: str
    revision: int
    operation: str
    content_type: str
    width: int
    height: int
    size_bytes: int
    url: str
    thumbnail_url: str
    metadata: dict[str, Any]
    created_at: datetime


class EditResultOut(BaseModel):
    """A synchronous edit: every asset has its new revision."""

    model_config = ConfigDict(defer_build=True)

    status: Literal["completed"] = "completed"
    charged: int = 0
    revisions: list[RevisionOut]


class EditJobDoc(BatchJobDoc):
    """``clients/{client}/edit_jobs/{id}``; the operations without their masks (see ``mask_keys``).
    Its items are written with it (at most ``EDIT_MAX_ASSETS``) and its progress read from them."""

    operations: list[dict[str, Any]]
    mask_keys: dict[str, str] = Field(default_factory=dict)  # operation index -> object key of the L mask
    asset_ids: list[str]
    price_list_version: int


class EditItemDoc(BatchItemDoc):
    """``clients/{client}/edit_jobs/{job}/items/{index:06d}``: one asset of the job."""

    asset_id: str
    cost: int
    costs: dict[str, int] = Field(default_factory=dict)  # ``cost`` by priced operation
    revision: int | None = None


class EditItemOut(BaseModel):
    model_config = ConfigDict(defer_build=True)

    index: int
    asset_id: str
    status: ItemStatus
    cost: int
    revision: int | None
    failure: dict[str, Any] | None


class EditJobOut(BaseModel):
    model_config = ConfigDict(defer_build=True)

    id: str
    status: JobStatus
    operations: list[dict[str, Any]]
    asset_count: int
    cost: int
    counts: ItemCounts
    progress: float
    items: list[EditItemOut]
    settlement: dict[str, int] | None
    created_at: datetime
    finished_at: datetime | None
