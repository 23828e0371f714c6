"""Requests, responses and stored documents of the catalog (products, uploads, imports, assets)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from shared.catalog.store_link import StoreLink, StoreLinkStatus
from shared.engines.base import AspectRatio, ImageSize
from shared.pagination import PageQuery
from shared.text import MULTI_LINE, SINGLE_LINE

# Free text follows the text rule (shared/text.py): no controls, bidi overrides or lone surrogates.
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300), SINGLE_LINE]
ShortText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), SINGLE_LINE]
Sku = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), SINGLE_LINE]
Tag = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64), SINGLE_LINE]
Description = Annotated[str, StringConstraints(max_length=20_000), MULTI_LINE]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
Price = Annotated[Decimal, Field(ge=0, le=Decimal("100000000"), max_digits=12, decimal_places=2)]
# Starts alphanumeric, as the router's path ids do: Firestore reserves ids like "__x__" (a 500 if used).
Id = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")]


class StrictModel(BaseModel):
    """Requests: unknown fields are an error, never silently dropped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, defer_build=True)


class ProductSource(str, Enum):
    MANUAL = "manual"
    CSV = "csv"
    SHOPIFY = "shopify"
    WOOCOMMERCE = "woocommerce"


class ProductCreate(StrictModel):
    name: Name
    sku: Sku | None = None
    description: Description | None = None
    category: ShortText | None = None
    price: Price | None = None
    currency: Currency | None = None
    tags: list[Tag] = Field(default_factory=list, max_length=50)
    external_id: ShortText | None = None

    @field_validator("tags")
    @classmethod
    def _dedupe_tags(cls, tags: list[str]) -> list[str]:
        return list(dict.fromkeys(tags))


class ProductUpdate(StrictModel):
    """PATCH: only the fields sent change; ``null`` clears an optional field."""

    name: Name | None = None
    sku: Sku | None = None
    description: Description | None = None
    category: ShortText | None = None
    price: Price | None = None
    currency: Currency | None = None
    tags: list[Tag] | None = Field(default=None, max_length=50)
    external_id: ShortText | None = None

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: list[str] | None) -> list[str]:
        # ``null`` clears the tags (a product's tags are a list, never null); duplicates go as on create.
        return [] if tags is None else list(dict.fromkeys(tags))


class ProductListQuery(PageQuery):
    model_config = ConfigDict(defer_build=True)

    category: ShortText | None = None
    q: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), SINGLE_LINE] | None = None
    source: ProductSource | None = None


class ProductImage(BaseModel):
    """An image of a product as stored on the product document."""

    model_config = ConfigDict(extra="ignore", defer_build=True)

    asset_id: str
    key: str
    thumbnail_key: str
    content_type: str
    width: int
    height: int
    source_url: str | None = None


class ProductDoc(BaseModel):
    """``clients/{client}/products/{id}``."""

    model_config = ConfigDict(extra="ignore", defer_build=True)

    id: str
    client_id: str
    name: str
    sku: str | None = None
    description: str | None = None
    category: str | None = None
    price: str | None = None
    currency: str | None = None
    tags: list[str] = Field(default_factory=list)
    images: list[ProductImage] = Field(default_factory=list)
    source: ProductSource = ProductSource.MANUAL
    external_id: str | None = None
    import_id: str | None = None
    search_tokens: list[str] = Field(default_factory=list)
    store: StoreLink | None = None
    created_at: datetime
    updated_at: datetime


class ProductImageOut(BaseModel):
    model_config = ConfigDict(defer_build=True)

    asset_id: str
    url: str
    thumbnail_url: str
    content_type: str
    width: int
    height: int


class StoreLinkOut(BaseModel):
    model_config = ConfigDict(defer_build=True)

    platform: str
    shop: str
    product_id: str
    status: StoreLinkStatus
    handle: str | None = None
    vendor: str | None = None
    product_type: str | None = None
    categories: list[str] = Field(default_factory=list)
    variants: list[dict[str, Any]] = Field(default_factory=list)
    store_updated_at: datetime | None = None


class ProductOut(BaseModel):
    model_config = ConfigDict(defer_build=True)

    id: str
    name: str
    sku: str | None
    description: str | None
    category: str | None
    price: Decimal | None
    currency: str | None
    tags: list[str]
    images: list[ProductImageOut]
    source: ProductSource
    external_id: str | None
    store: StoreLinkOut | None = None
    created_at: datetime
    updated_at: datetime


# -- uploads ------------------------------------------------------------------------------------


class UploadPurpose(str, Enum):
    PRODUCT_IMAGE = "product_image"
    CSV_IMPORT = "csv_import"
    VIDEO = "video"  # POST /videos/uploads: checked and stored by the video worker (shared/videos/uploads.py)


class UploadStatus(str, Enum):
    PENDING = "pending"
    COMPLETED = "completed"
    REJECTED = "rejected"
    EXPIRED = "expired"  # never completed: its presigned URL lapsed and the sweep removed what was PUT
    PROCESSING = "processing"  # a video completed by the browser, being checked by the video worker


IMAGE_CONTENT_TYPES = ("image/jpeg", "image/png", "image/webp")
CSV_CONTENT_TYPES = ("text/csv", "application/csv", "text/plain", "application/vnd.ms-excel")
VIDEO_CONTENT_TYPES = ("video/mp4", "video/quicktime", "video/webm")
# An .xlsx workbook (a csv_import upload too): read with openpyxl, see shared/catalog/xlsx.py.
XLSX_CONTENT_TYPES = ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",)
SPREADSHEET_CONTENT_TYPES = CSV_CONTENT_TYPES + XLSX_CONTENT_TYPES


class UploadCreate(StrictModel):
    filename: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255), SINGLE_LINE]
    content_type: Annotated[str, StringConstraints(strip_whitespace=True, to_lower=True, max_length=100), SINGLE_LINE]
    size_bytes: int = Field(gt=0)
    purpose: UploadPurpose = UploadPurpose.PRODUCT_IMAGE
    product_id: Id | None = None


class UploadDoc(BaseModel):
    model_config = ConfigDict(extra="ignore", defer_build=True)

    id: str
    client_id: str
    purpose: UploadPurpose
    filename: str
    content_type: str
    size_bytes: int
    product_id: str | None = None
    # Where the browser PUTs the file (``uploads/{client}/{id}``: a prefix an R2 lifecycle rule
    # expires). Nothing reads it after completion, so a second PUT with the still-valid URL changes
    # nothing that is used; the sweep deletes it again once the URL has lapsed.
    key: str
    # An accepted CSV is copied here at completion and imported from here (images become assets).
    stored_key: str | None = None
    # An accepted spreadsheet: "csv" or "xlsx" (told by its bytes), and a workbook's worksheets.
    file_format: str | None = None
    sheets: list[str] = Field(default_factory=list)
    status: UploadStatus = UploadStatus.PENDING
    asset_id: str | None = None
    rejection: dict[str, Any] | None = None
    created_at: datetime
    expires_at: datetime
    completed_at: datetime | None = None
    # When the sweep should delete the raw object (again); removed once it has (None: nothing to do).
    sweep_at: datetime | None = None

    @property
    def file_key(self) -> str:
        """The object holding the accepted file (uploads from before ``stored_key`` kept it at ``key``)."""
        return self.stored_key or self.key


class UploadInstructions(BaseModel):
    model_config = ConfigDict(defer_build=True)

    url: str
    method: str
    headers: dict[str, str]


class UploadOut(BaseModel):
    model_config = ConfigDict(defer_build=True)

    id: str
    purpose: UploadPurpose
    filename: str
    content_type: str
    size_bytes: int
    product_id: str | None
    status: UploadStatus
    asset_id: str | None = None
    rejection: dict[str, Any] | None = None
    upload: UploadInstructions | None = None
    expires_at: datetime
    file_format: str | None = None  # a completed csv_import upload: "csv" or "xlsx"
    sheets: list[str] = Field(default_factory=list)  # an .xlsx workbook's worksheets (the import reads the first)


# -- assets -------------------------------------------------------------------------------------


class AssetKind(str, Enum):
    PRODUCT_IMAGE = "product_image"
    GENERATED = "generated"
    EDITED = "edited"
    VIDEO = "video"


class MediaKind(str, Enum):
    """What an asset's pixels are: a still image, or a video (with a poster frame)."""

    IMAGE = "image"
    VIDEO = "video"


class AssetOrigin(str, Enum):
    """How the asset came to the library (its later revisions say what was done to it)."""

    UPLOAD = "upload"
    CSV = "csv"
    GENERATED = "generated"
    EDITED = "edited"
    STORE_IMPORT = "store_import"  # from a connected store; ``origin_media_id`` is the store's media id


class AssetStatus(str, Enum):
    PROCESSING = "processing"
    READY = "ready"
    FAILED = "failed"


class AssetRevision(BaseModel):
    """``…/assets/{id}/revisions/{number}``: one version of an asset's pixels."""

    model_config = ConfigDict(extra="ignore", defer_build=True)

    number: int
    key: str
    thumbnail_key: str
    content_type: str
    width: int
    height: int
    size_bytes: int
    operation: str
    created_at: datetime
    metadata: dict[str, Any] = Field(default_factory=dict)
    # Video revisions (images leave them unset): length, and the still shown before playback.
    duration_seconds: float | None = None
    poster_key: str | None = None


class AssetDoc(BaseModel):
    """``clients/{client}/assets/{id}``."""

    model_config = ConfigDict(extra="ignore", defer_build=True)

    id: str
    client_id: str
    product_id: str | None = None
    kind: AssetKind
    status: AssetStatus = AssetStatus.READY
    source: str
    current_revision: int = 1
    key: str
    thumbnail_key: str
    content_type: str
    width: int
    height: int
    pinned: bool = False
    favorite: bool = False
    approved: bool = False
    job_id: str | None = None
    import_id: str | None = None
    source_url: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime
    # Ready for videos and store connections; documents stored before these fields load as images
    # of unknown origin. ``content_type``, ``width`` and ``height`` describe videos too.
    media: MediaKind = MediaKind.IMAGE
    origin: AssetOrigin | None = None
    origin_media_id: str | None = None  # the connected store's id of this media (store imports)
    duration_seconds: float | None = None
    poster_key: str | None = None
    tags: list[str] = Field(default_factory=list)  # normalised (AssetTag), at most MAX_ASSET_TAGS


# An asset's tags: lower case, inner whitespace collapsed, so "Summer  Sale" and "summer sale" are one tag.
MAX_ASSET_TAGS = 20


def _normal_tag(value: object) -> object:
    return " ".join(value.split()).lower() if isinstance(value, str) else value


AssetTag = Annotated[
    str,
    BeforeValidator(_normal_tag),
    StringConstraints(min_length=1, max_length=40),
    SINGLE_LINE,
]


def _unique(tags: list[str] | None) -> list[str] | None:
    return None if tags is None else list(dict.fromkeys(tags))


class AssetListQuery(PageQuery):
    model_config = ConfigDict(defer_build=True)

    product_id: Id | None = None
    kind: AssetKind | None = None
    status: AssetStatus | None = None
    pinned: bool | None = None
    favorite: bool | None = None
    approved: bool | None = None
    job_id: Id | None = None  # made by this job (generation, video)
    tag: AssetTag | None = None
    origin: AssetOrigin | None = None
    created_from: datetime | None = None  # created at or after
    created_to: datetime | None = None  # created before

    @model_validator(mode="after")
    def _range(self) -> AssetListQuery:
        if self.created_from and self.created_to and self.created_from >= self.created_to:
            raise ValueError("created_from must be before created_to")
        for name in ("created_from", "created_to"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{name} needs a time zone (e.g. 2026-01-31T00:00:00Z)")
        return self


class AssetUpdate(StrictModel):
    pinned: bool | None = None
    favorite: bool | None = None
    approved: bool | None = None
    tags: list[AssetTag] | None = Field(default=None, max_length=MAX_ASSET_TAGS)  # replaces the tags

    _unique_tags = field_validator("tags")(_unique)


class BulkAction(str, Enum):
    APPROVE = "approve"
    UNAPPROVE = "unapprove"
    FAVORITE = "favorite"
    UNFAVORITE = "unfavorite"
    PIN = "pin"
    UNPIN = "unpin"
    DELETE = "delete"
    TAG = "tag"
    UNTAG = "untag"


MAX_BULK_IDS = 1000


class AssetBulkRequest(StrictModel):
    """One action on up to ``MAX_BULK_IDS`` assets; a repeated id counts once."""

    action: BulkAction
    ids: list[Id] = Field(min_length=1, max_length=MAX_BULK_IDS)
    tags: list[AssetTag] | None = Field(default=None, min_length=1, max_length=MAX_ASSET_TAGS)

    _unique_tags = field_validator("tags")(_unique)

    @field_validator("ids")
    @classmethod
    def _unique_ids(cls, ids: list[str]) -> list[str]:
        return list(dict.fromkeys(ids))

    @model_validator(mode="after")
    def _tags_for_tag_actions(self) -> AssetBulkRequest:
        wants_tags = self.action in (BulkAction.TAG, BulkAction.UNTAG)
        if wants_tags and not self.tags:
            raise ValueError(f"{self.action.value} needs tags")
        if not wants_tags and self.tags is not None:
            raise ValueError(f"{self.action.value} takes no tags")
        return self


class BulkStatus(str, Enum):
    OK = "ok"
    NOT_FOUND = "not_found"  # no such asset of this client (another client's id too)
    CONFLICT = "conflict"  # it kept changing under the write; nothing changed, try again
    REFUSED = "refused"  # the rule refuses it for this asset (e.g. too many tags); nothing changed


class BulkResult(BaseModel):
    model_config = ConfigDict(defer_build=True)

    id: str
    status: BulkStatus
    detail: str | None = None


class AssetBulkOut(BaseModel):
    model_config = ConfigDict(defer_build=True)

    action: BulkAction
    results: list[BulkResult]  # one per distinct id, in the order sent
    counts: dict[str, int]  # results by status


class VideoFactsOut(BaseModel):
    """What a video asset's current revision is (probed when it was made)."""

    model_config = ConfigDict(defer_build=True, extra="ignore")

    duration_seconds: float
    width: int
    height: int
    fps: float
    video_codec: str
    audio_codec: str | None
    size_bytes: int
    offline: bool = False  # made by the offline engine (a stand-in, not a model's video)


class AssetOut(BaseModel):
    model_config = ConfigDict(defer_build=True)

    id: str
    product_id: str | None
    kind: AssetKind
    status: AssetStatus
    source: str
    current_revision: int
    content_type: str
    width: int
    height: int
    pinned: bool
    favorite: bool
    approved: bool
    job_id: str | None
    thumbnail_url: str
    created_at: datetime
    updated_at: datetime
    media: MediaKind = MediaKind.IMAGE
    duration_seconds: float | None = None  # videos
    poster_url: str | None = None  # videos: the frame shown before playback (WebP)
    video: VideoFactsOut | None = None  # videos: codecs, frame rate, size
    origin: AssetOrigin | None = None
    tags: list[str] = Field(default_factory=list)


class AssetRevisionOut(BaseModel):
    model_config = ConfigDict(defer_build=True)

    number: int
    operation: str
    content_type: str
    width: int
    height: int
    size_bytes: int
    url: str
    thumbnail_url: str
    created_at: datetime
    duration_seconds: float | None = None  # videos
    poster_url: str | None = None  # videos


class AssetDetailOut(AssetOut):
    download_url: str
    revisions: list[AssetRevisionOut]


# -- CSV imports --------------------------------------------------------------------------------


class ImportSource(str, Enum):
    CSV = "csv"
    STORE = "store"  # the connected store's catalog (shared/stores/imports.py)


class ImportStatus(str, Enum):
    PREPARING = "preparing"  # a store import reading the store's catalog for its preview
    DRAFT = "draft"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


def _encoding_name(value: str | None) -> str | None:
    from shared.catalog.csv_parsing import normalize_encoding
    from shared.errors import EpoxError

    if value is None:
        return None
    try:
        return normalize_encoding(value)
    except EpoxError as exc:
        raise ValueError(exc.detail) from None


def _delimiter(value: str | None) -> str | None:
    from shared.catalog.csv_parsing import normalize_delimiter
    from shared.errors import EpoxError

    if value is None:
        return None
    try:
        return normalize_delimiter(value)
    except EpoxError as exc:
        raise ValueError(exc.detail) from None


# How the CSV is read, when the merchant overrides detection: a Python codec name ("cp1250",
# "Shift-JIS", "mac_roman"; unknown names are a 422) and a one-character delimiter.
CsvEncoding = Annotated[str, StringConstraints(min_length=1, max_length=40), SINGLE_LINE]
# A tab is a delimiter (the rule's other characters are not: normalize_delimiter refuses them).
CsvDelimiter = Annotated[str, StringConstraints(min_length=1, max_length=1, strip_whitespace=False), MULTI_LINE]
# The worksheet of an .xlsx workbook to read (None: the first); Excel allows 31 characters.
SheetName = Annotated[str, StringConstraints(min_length=1, max_length=100), SINGLE_LINE]


GenerationPrompt = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000), MULTI_LINE]


class ImportGeneration(StrictModel):
    """An import that also generates images (``POST /imports/{id}/generate``): which rows generate
    (``with_settings``: the rows whose generation columns have a value; ``all``: every imported row), and
    the settings a row's empty cells take. Priced in the preview before anything is charged."""

    rows: Literal["with_settings", "all"] = "with_settings"
    style: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,39}$")] | None = None
    prompt: GenerationPrompt | None = None
    negative_prompt: GenerationPrompt | None = None
    aspect_ratio: AspectRatio | None = None
    size: ImageSize | None = None
    variants: int | None = Field(default=None, ge=1, le=4)


class ImportGenerationTask(BaseModel):
    """Cloud Tasks payload (generate_tasks ``/tasks/import-generation``): a finished import whose rows
    generate; the task starts their one job."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    client_id: str
    import_id: str


class ImportCreate(StrictModel):
    upload_id: Id
    mapping: dict[str, Any] | None = None
    generation: ImportGeneration | None = None
    encoding: CsvEncoding | None = None
    delimiter: CsvDelimiter | None = None
    sheet: SheetName | None = None

    _check_encoding = field_validator("encoding")(_encoding_name)
    _check_delimiter = field_validator("delimiter")(_delimiter)


class ImportUpdate(StrictModel):
    """PATCH of a draft: the mapping and/or how the file is read (``null`` returns to detection), and the
    generation settings (``null``: the import generates nothing)."""

    mapping: dict[str, Any] | None = None
    generation: ImportGeneration | None = None
    encoding: CsvEncoding | None = None
    delimiter: CsvDelimiter | None = None
    sheet: SheetName | None = None

    _check_encoding = field_validator("encoding")(_encoding_name)
    _check_delimiter = field_validator("delimiter")(_delimiter)

    @model_validator(mode="after")
    def _something(self) -> ImportUpdate:
        if not self.model_fields_set & {"mapping", "encoding", "delimiter", "sheet", "generation"}:
            raise ValueError("send mapping, encoding, delimiter, sheet or generation")
        return self


class ImportProgress(BaseModel):
    model_config = ConfigDict(defer_build=True)

    total_rows: int = 0
    processed_rows: int = 0
    created_products: int = 0
    failed_rows: int = 0
    images_imported: int = 0
    images_failed: int = 0
    chunks_total: int = 0
    chunks_done: int = 0
    # Chunks no delivery could process (every attempt failed, or their task was lost): their rows
    # are counted as failed and listed in errors.csv.
    chunks_failed: int = 0


class ImportDoc(BaseModel):
    """``clients/{client}/imports/{id}``."""

    model_config = ConfigDict(extra="ignore", defer_build=True)

    id: str
    client_id: str
    upload_id: str | None = None  # CSV imports
    source: ImportSource = ImportSource.CSV
    # Store imports: the connection, platform, shop and what to import (scope, category_id, product_ids).
    store: dict[str, Any] | None = None
    # Store imports while preparing: where reading the catalog got to (cursor, bulk operation, rows and
    # chunks written, the preview's running counts).
    fetch: dict[str, Any] = Field(default_factory=dict)
    status: ImportStatus = ImportStatus.DRAFT
    mapping: dict[str, Any] = Field(default_factory=dict)
    preview: dict[str, Any] = Field(default_factory=dict)
    progress: ImportProgress = Field(default_factory=ImportProgress)
    # Chunks in flight at once, fixed when the import starts: the API that starts it and the worker
    # that runs it are separate functions and must agree (imports from before the window ran as a chain).
    parallel_chunks: int = 1
    # How the file is read when the merchant chose it (None: detected; the preview says what was used).
    encoding: str | None = None
    delimiter: str | None = None
    sheet: str | None = None  # the worksheet of an .xlsx workbook the merchant chose (None: the first)
    # The generation settings chosen for the draft (ImportGeneration), and, once it started generating,
    # its job: status (reserved, started, skipped), job_id, hold_id, amount, unit_prices, user_id, rows
    # (the row of each job item, by index).
    generation: dict[str, Any] | None = None
    generation_job: dict[str, Any] | None = None
    # Chunk number -> how often the import reaper re-enqueued it (it gives up after a few).
    reaped: dict[str, int] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    failure: str | None = None


class ImportOut(BaseModel):
    model_config = ConfigDict(defer_build=True)

    id: str
    upload_id: str | None
    source: ImportSource = ImportSource.CSV
    store: dict[str, Any] | None = None
    status: ImportStatus
    mapping: dict[str, Any]
    encoding: str | None  # chosen by the merchant (None: detected, see preview.encoding)
    delimiter: str | None
    sheet: str | None = None  # chosen by the merchant (None: the first; see preview.sheet)
    generation: dict[str, Any] | None = None  # the generation settings (preview.generation: its plan and cost)
    generation_job: dict[str, Any] | None = None  # once started: status, job_id, amount reserved
    preview: dict[str, Any]
    progress: ImportProgress
    percent: float
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    failure: str | None


class ImportChunkTask(BaseModel):
    """Cloud Tasks payload: ids and where in the chunk to start (a delivery that ran out of its time
    budget hands the rest of its chunk to a task starting at row ``row``, image ``image``)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    client_id: str
    import_id: str
    chunk: int = Field(ge=0)
    row: int = Field(default=0, ge=0)
    image: int = Field(default=0, ge=0)
