"""Requests, responses and stored documents of product videos (the lifecycle's fields are in shared.batch).

A video job has one item per product or prompt; each item is made of one to four clips (Veo makes 4, 6
or 8 s at a time), started on the item's first delivery and polled by later ones (the item keeps its
operations: :class:`ClipState`). A video edit is a job of the same kind with one item: the asset it
makes a new revision of.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from shared.batch.models import BatchItemDoc, BatchJobDoc, ItemCounts, ItemStatus, JobStatus
from shared.catalog.models import Id, ShortText, StrictModel
from shared.engines.video import MAX_REFERENCE_IMAGES
from shared.ids import derived_id
from shared.text import MULTI_LINE

Prompt = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000), MULTI_LINE]
Script = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1500), MULTI_LINE]
StyleId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
Voice = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,39}$")]
VideoAspect = Literal["16:9", "9:16"]
Resolution = Literal["720p", "1080p"]
Deliverable = Literal["9:16", "1:1", "16:9"]
EditAspect = Literal["1:1", "4:5", "9:16", "16:9"]
# "native": the model's own sound; "voiceover": a script read by TTS in its place; "native_voiceover": the
# script read over the model's sound, which plays under it (NATIVE_UNDER_VOICE); "none": no sound track.
AudioMode = Literal["none", "native", "voiceover", "native_voiceover"]
NATIVE_UNDER_VOICE = 0.25  # the model's sound under a voiceover (about -12 dB)
Quality = Literal["fast", "quality"]
Fit = Literal["crop", "pad"]
JobKindName = Literal["generate", "edit"]

MAX_VIDEO_ITEMS = 100  # the request's hard cap; VIDEO_MAX_ITEMS (20) is the deployment's
MAX_SECONDS = 30  # the request's hard cap; VIDEO_MAX_SECONDS (30) is the deployment's
MAX_SEED = 4_294_967_295


# -- requests ---------------------------------------------------------------------------------------


class VideoItemIn(StrictModel):
    """One video: of a product (its first image is the first frame unless ``image_asset_id`` names
    another), or of a prompt alone. ``reference_asset_ids`` (up to three images of the product) keep it
    consistent instead of a first frame: Veo takes them only without a first or last frame, in 8 s clips."""

    product_id: Id | None = None
    prompt: Prompt | None = None
    image_asset_id: Id | None = None  # an image asset of the client: the video starts from it
    last_frame_asset_id: Id | None = None  # an image asset the video ends on (needs a first frame)
    reference_asset_ids: list[Id] = Field(default_factory=list, max_length=MAX_REFERENCE_IMAGES)
    script: Script | None = None  # this item's voiceover (else the job's, else one written from the product)

    @field_validator("reference_asset_ids")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _needs_subject(self) -> VideoItemIn:
        if not self.product_id and not self.prompt:
            raise ValueError("each item needs a product_id or a prompt")
        if self.last_frame_asset_id and not (self.image_asset_id or self.product_id):
            raise ValueError("last_frame_asset_id needs a first frame: image_asset_id or a product with images")
        if self.reference_asset_ids and (self.image_asset_id or self.last_frame_asset_id):
            raise ValueError(
                "reference_asset_ids cannot be combined with image_asset_id or last_frame_asset_id: "
                "the model takes reference images only without a first or last frame"
            )
        return self


class VideoJobCreate(StrictModel):
    """``POST /videos/jobs``. Unset settings come from the style."""

    items: list[VideoItemIn] = Field(min_length=1, max_length=MAX_VIDEO_ITEMS)
    style: StyleId = "showcase_360"
    duration_seconds: int | None = Field(default=None, ge=4, le=MAX_SECONDS)
    resolution: Resolution = "720p"
    aspect_ratio: VideoAspect | None = None
    deliverables: list[Deliverable] | None = Field(default=None, min_length=1, max_length=3)
    audio: AudioMode | None = None
    fit: Fit = "crop"  # how the deliverables in another aspect are made: crop the centre or pad with bars
    prompt: Prompt | None = None  # direction for every item
    selling_points: list[ShortText] = Field(default_factory=list, max_length=10)
    script: Script | None = None  # the reviewed voiceover (POST /videos/scripts), for audio with a voiceover
    voice: Voice | None = None
    negative_prompt: Prompt | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    quality: Quality = "fast"
    enhance_prompt: bool = False

    @field_validator("deliverables")
    @classmethod
    def _unique(cls, value: list[str] | None) -> list[str] | None:
        return list(dict.fromkeys(value)) if value is not None else None


def voiced(audio: str) -> bool:
    """Whether videos with this sound get a voiceover (a script, read by TTS, priced as ``voiceover``)."""
    return audio in ("voiceover", "native_voiceover")


def model_sound(audio: str) -> bool:
    """Whether the video model is asked for its own sound."""
    return audio in ("native", "native_voiceover")


class VideoSettings(BaseModel):
    """What a video job runs with: the request resolved against its style, and the clips each item is
    made of (their lengths add up to at least ``duration_seconds``; the joined video is cut to it)."""

    model_config = ConfigDict(extra="ignore", defer_build=True)

    style: str
    duration_seconds: int
    resolution: Resolution
    aspect_ratio: VideoAspect
    deliverables: list[Deliverable]
    audio: AudioMode
    fit: Fit
    prompt: str | None = None
    selling_points: list[str] = Field(default_factory=list)
    script: str | None = None
    voice: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    quality: Quality
    model: str
    enhance_prompt: bool = False
    clips: list[int]


class Trim(StrictModel):
    start: float = Field(ge=0, le=MAX_SECONDS)
    end: float = Field(gt=0, le=MAX_SECONDS + 1)

    @model_validator(mode="after")
    def _ordered(self) -> Trim:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class Reframe(StrictModel):
    aspect: EditAspect
    mode: Fit = "crop"


class AudioEdit(StrictModel):
    """Either ``mute`` (the sound track is removed) or a ``voiceover`` script read over the video (it
    replaces the sound, unless ``original_volume`` keeps the video's own sound under it at that gain)."""

    mute: bool = False
    voiceover: Script | None = None
    voice: Voice | None = None
    original_volume: float = Field(default=0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _one(self) -> AudioEdit:
        if self.mute == (self.voiceover is not None):
            raise ValueError("give either mute: true or a voiceover script")
        if self.mute and self.original_volume:
            raise ValueError("original_volume goes with a voiceover, not with mute")
        return self


class PosterEdit(StrictModel):
    at_seconds: float = Field(ge=0, le=MAX_SECONDS + 1)  # in the edited video


class VideoEditRequest(StrictModel):
    """``POST /videos/assets/{id}/edits``: applied in this order; the result is a new revision."""

    trim: Trim | None = None
    reframe: Reframe | None = None
    audio: AudioEdit | None = None
    poster: PosterEdit | None = None

    @model_validator(mode="after")
    def _something(self) -> VideoEditRequest:
        if self.trim is None and self.reframe is None and self.audio is None and self.poster is None:
            raise ValueError("ask for at least one of trim, reframe, audio, poster")
        return self

    def describe(self) -> str:
        """A short label for the revision list ("trim 1-3 s, reframe 1:1 crop, mute")."""
        parts = []
        if self.trim is not None:
            parts.append(f"trim {self.trim.start:g}-{self.trim.end:g} s")
        if self.reframe is not None:
            parts.append(f"reframe {self.reframe.aspect} {self.reframe.mode}")
        if self.audio is not None and self.audio.mute:
            parts.append("mute")
        elif self.audio is not None:
            parts.append("voiceover over the sound" if self.audio.original_volume else "voiceover")
        if self.poster is not None:
            parts.append(f"poster at {self.poster.at_seconds:g} s")
        return ", ".join(parts)


class ScriptRequest(StrictModel):
    """``POST /videos/scripts``: a voiceover to review and edit before the paid generation."""

    product_id: Id | None = None
    prompt: Prompt | None = None  # what the video is about, when there is no product (or besides it)
    style: StyleId = "spoken_script"
    duration_seconds: int = Field(default=16, ge=4, le=MAX_SECONDS)
    selling_points: list[ShortText] = Field(default_factory=list, max_length=10)
    tone: ShortText | None = None

    @model_validator(mode="after")
    def _needs_subject(self) -> ScriptRequest:
        if not self.product_id and not self.prompt:
            raise ValueError("give a product_id or a prompt")
        return self


class ScriptOut(BaseModel):
    model_config = ConfigDict(defer_build=True)

    script: str
    words: int
    estimated_seconds: float  # spoken at about 2.5 words a second
    duration_seconds: int
    style: str
    engine: str


class VideoEnhanceRequest(StrictModel):
    """``POST /videos/prompts/enhance``: a short idea expanded into a video prompt (with the brand profile)."""

    prompt: Prompt
    product_id: Id | None = None
    style: StyleId | None = None


class VideoStyleOut(BaseModel):
    model_config = ConfigDict(defer_build=True)

    id: str
    name: str
    description: str
    prompt: str
    duration_seconds: int
    aspect_ratio: str
    audio: str
    uses_script: bool


class VideoStyleList(BaseModel):
    model_config = ConfigDict(defer_build=True)

    items: list[VideoStyleOut]


# -- stored -----------------------------------------------------------------------------------------


class ClipState(BaseModel):
    """One clip of an item: its operation (None until started), when it started, how often it was
    polled, and where its video was copied once done (``raw_key``)."""

    model_config = ConfigDict(extra="ignore")

    index: int
    seconds: int
    operation: dict[str, Any] | None = None  # VideoOperation.to_payload()
    started_at: datetime | None = None
    polls: int = 0
    restarts: int = 0  # new operations after a restartable failure
    raw_key: str | None = None
    progress: int | None = None  # percent, when the engine says


class VideoJobDoc(BatchJobDoc):
    """``clients/{client}/video_jobs/{id}``; its items are written with it."""

    kind: JobKindName = "generate"
    settings: VideoSettings | None = None  # generate
    edit: VideoEditRequest | None = None  # edit
    item_cost: int = 0  # what each succeeded item is charged
    costs: dict[str, int] = Field(default_factory=dict)  # item_cost by priced operation


class VideoItemDoc(BatchItemDoc):
    """``clients/{client}/video_jobs/{job}/items/{index:06d}``: one video (or the asset an edit revises)."""

    product_id: str | None = None
    prompt: str | None = None
    image_asset_id: str | None = None
    last_frame_asset_id: str | None = None
    reference_asset_ids: list[str] = Field(default_factory=list)
    script: str | None = None
    asset_id: str | None = None  # edit: the video asset revised
    clips: list[ClipState] = Field(default_factory=list)
    started_at: datetime | None = None  # the first delivery's
    prompt_used: str | None = None  # the prompt sent (after enhancement)
    script_used: str | None = None  # the voiceover read
    asset_ids: list[str] = Field(default_factory=list)  # generate: one video asset per deliverable
    revision: int | None = None  # edit: the new revision


# -- responses --------------------------------------------------------------------------------------


class VideoResultOut(BaseModel):
    """One delivered video (an asset of the library)."""

    model_config = ConfigDict(defer_build=True)

    asset_id: str
    aspect_ratio: str
    width: int
    height: int
    duration_seconds: float | None
    size_bytes: int | None
    download_url: str
    poster_url: str | None


class VideoItemOut(BaseModel):
    model_config = ConfigDict(defer_build=True)

    index: int
    status: ItemStatus
    product_id: str | None
    prompt: str | None
    asset_id: str | None  # edit
    clips_total: int
    clips_ready: int
    asset_ids: list[str]
    revision: int | None
    failure: dict[str, Any] | None
    videos: list[VideoResultOut] = Field(default_factory=list)  # on the items list: the delivered videos


class VideoJobOut(BaseModel):
    model_config = ConfigDict(defer_build=True)

    id: str
    kind: JobKindName
    status: JobStatus
    settings: VideoSettings | None
    edit: VideoEditRequest | None
    item_count: int
    cost: int
    item_cost: int
    counts: ItemCounts
    progress: float
    items: list[VideoItemOut]
    settlement: dict[str, int] | None
    created_at: datetime
    finished_at: datetime | None


def deliverable_asset_id(job: VideoJobDoc, item: VideoItemDoc, aspect: str) -> str:
    """The asset a deliverable is stored as: every delivery of the item (and the reaper) names the same one.
    Here, not in the jobs module, so exports can name a video job's assets without loading the video work."""
    return derived_id("ast", job.id, item.index, "video", aspect)
