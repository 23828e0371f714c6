"""CSV product import: decode, parse, map columns, preview, turn rows into drafts.

Pure functions (bytes in, pydantic models out, no I/O). The import flow is::

    parsed = parse_csv(data)
    mapping = auto_map(parsed.headers)        # shown to the merchant, who may edit it
    validate_mapping(mapping, parsed.headers)
    preview = build_preview(parsed, mapping)  # before the merchant confirms
    rows = group_rows(parsed, mapping)        # Shopify handles, WooCommerce variations: one product
    results = [row_to_draft(row, mapping) for row in rows]

Row numbers are what a spreadsheet user sees when the file is opened in Excel or Sheets: the
header is row 1 (when the file starts with it), blank rows still count, and a quoted cell that
spans several lines counts once. Messages can then say "row 17" and the merchant finds it.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Final, Literal, cast, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.catalog.store_link import StoreLink
from shared.errors import UnprocessableContent, ValidationFailed
from shared.text import SingleLineText, forbidden_char, visible

if TYPE_CHECKING:
    from _csv import Reader as CsvReader  # what csv.reader() returns
    from collections.abc import Iterable

__all__ = [
    "CSV_ERRORS",
    "PRODUCT_FIELDS",
    "ColumnMapping",
    "CsvBadHeader",
    "CsvEmpty",
    "CsvPreview",
    "CsvRow",
    "CsvTooLarge",
    "CsvUnknownEncoding",
    "CsvUnreadable",
    "FoldSummary",
    "ParsedCsv",
    "PreviewRow",
    "PreviewWarning",
    "ProductDraft",
    "RowProblem",
    "RowResult",
    "auto_map",
    "build_preview",
    "decode_csv",
    "detect_delimiter",
    "fold_rows",
    "group_rows",
    "normalize_delimiter",
    "normalize_encoding",
    "parse_csv",
    "parse_price",
    "row_to_draft",
    "split_image_urls",
    "validate_mapping",
]

# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class CsvUnreadable(UnprocessableContent):
    code = "csv_unreadable"
    title = "The file is not a readable CSV file"


class CsvTooLarge(UnprocessableContent):
    code = "csv_too_large"
    title = "The CSV file is too large"


class CsvEmpty(UnprocessableContent):
    code = "csv_empty"
    title = "The CSV file has no data"


class CsvBadHeader(UnprocessableContent):
    code = "csv_bad_header"
    title = "A column name holds a character that is not allowed"


class CsvUnknownEncoding(UnprocessableContent):
    code = "csv_unknown_encoding"
    title = "The character encoding is not known"


# What reading a CSV file can answer with (a route's contract lists them together).
CSV_ERRORS = (CsvUnreadable, CsvTooLarge, CsvEmpty, CsvUnknownEncoding, CsvBadHeader)


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


ProductField = Literal["name", "sku", "description", "category", "price", "image_urls", "tags", "external_id"]
ScalarField = Literal["name", "sku", "description", "category", "price", "tags", "external_id"]
PRODUCT_FIELDS: Final[tuple[ProductField, ...]] = get_args(ProductField)
GenerationField = Literal["style", "prompt", "negative_prompt", "aspect_ratio", "size", "variants", "base_image_url"]
GENERATION_FIELDS: Final[tuple[GenerationField, ...]] = get_args(GenerationField)
# Also the order auto_map fills them in: the name first, so it gets the best candidate header.
_SCALAR_FIELDS: Final[tuple[ScalarField, ...]] = get_args(ScalarField)

FileFormat = Literal["csv", "xlsx"]
RowProblemCode = Literal[
    "missing_name", "invalid_price", "invalid_image_url", "too_long", "bad_text", "orphan_variation",
    "invalid_generation",
]  # fmt: skip
Severity = Literal["error", "warning"]
PreviewWarningCode = Literal["bad_row", "missing_images", "duplicate_sku", "ragged_row", "unmapped_column"]

# Limits match ProductCreate (shared/catalog/models.py), so every draft can be created.
MAX_NAME_CHARS: Final = 300
MAX_SKU_CHARS: Final = 100
MAX_DESCRIPTION_CHARS: Final = 20_000
MAX_CATEGORY_CHARS: Final = 200
MAX_EXTERNAL_ID_CHARS: Final = 200
MAX_TAG_CHARS: Final = 64
MAX_TAGS: Final = 50
MAX_IMAGE_URLS: Final = 20
MAX_URL_CHARS: Final = 2048
MAX_PRICE: Final = Decimal(100_000_000)


# Joins a row's cells into one string: NUL never occurs in a decoded CSV text (decode_csv refuses it).
_CELL_SEPARATOR: Final = "\x00"


class _Columns:
    """The headers of a parsed file, shared by all its rows (set once the whole file is read)."""

    __slots__ = ("headers", "index")

    def __init__(self) -> None:
        self.headers: tuple[str, ...] = ()
        self.index: dict[str, int] = {}

    def set(self, headers: tuple[str, ...]) -> None:
        self.headers = headers
        self.index = {name: position for position, name in enumerate(headers)}


class RowCells(Mapping[str, str]):
    """A parsed row's cells by header, kept as one string (the cells joined by NUL).

    One string per row instead of a dict of strings: a cell costs a byte of memory, not ~100, so
    parsing stays within a small multiple of the file's size however many (empty) cells it has.
    A short (ragged) row holds only the cells it has: read cells with ``values.get(header, "")``.
    """

    __slots__ = ("_columns", "_count", "_joined")

    def __init__(self, columns: _Columns, cells: Sequence[str]) -> None:
        self._columns = columns
        self._count = len(cells)
        self._joined = _CELL_SEPARATOR.join(cells)

    @property
    def cell_count(self) -> int:
        """The cells the row has (phantom trailing columns included)."""
        return self._count

    def __getitem__(self, header: str) -> str:
        position = self._columns.index[header]
        if position >= self._count:
            raise KeyError(header)
        return self._joined.split(_CELL_SEPARATOR, position + 1)[position]

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns.headers[: self._count])

    def __len__(self) -> int:
        return min(self._count, len(self._columns.headers))

    def __repr__(self) -> str:
        return repr(dict(self))


@dataclass(frozen=True, slots=True)
class CsvRow:
    """One data row; ``number`` is its spreadsheet row (header = 1, first data row = 2).

    ``values`` maps headers to the row's cells; a header the row has no cell for is missing."""

    number: int
    values: Mapping[str, str]
    # Why the row can never be a product, found while rows were folded (a variation whose parent is
    # not in the file): the row is reported with this problem instead of being read.
    refusal: RowProblem | None = None


@dataclass(frozen=True, slots=True)
class ParsedCsv:
    """A decoded table: its headers and data rows, and how the file was read."""

    headers: tuple[str, ...]
    rows: tuple[CsvRow, ...]
    delimiter: str
    encoding: str
    # Rows with missing cells or non-empty cells beyond the header (the extra cells are dropped).
    ragged_rows: tuple[int, ...] = ()
    # Excel workbooks (shared/catalog/xlsx.py): the sheet read, every sheet's name, what was noticed
    # and left alone (macros, links to other workbooks). A CSV file has none of these.
    format: FileFormat = "csv"
    sheet: str | None = None
    sheets: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


class ColumnMapping(_Model):
    """Which CSV header feeds which product field; ``None`` / ``()`` is unmapped."""

    # Header names: the text rule's single-line text, as parse_csv leaves every header.
    name: SingleLineText | None = None
    sku: SingleLineText | None = None
    description: SingleLineText | None = None
    category: SingleLineText | None = None
    price: SingleLineText | None = None
    image_urls: tuple[SingleLineText, ...] = ()
    tags: SingleLineText | None = None
    external_id: SingleLineText | None = None
    # Generation settings a row may carry (used when the import also generates images, see
    # shared/catalog/generation_rows.py): a column each, empty cells take the import's defaults.
    style: SingleLineText | None = None
    prompt: SingleLineText | None = None
    negative_prompt: SingleLineText | None = None
    aspect_ratio: SingleLineText | None = None
    size: SingleLineText | None = None
    variants: SingleLineText | None = None
    base_image_url: SingleLineText | None = None

    @field_validator("name", "sku", "description", "category", "price", "tags", "external_id", *GENERATION_FIELDS)
    @classmethod
    def _blank_is_unmapped(cls, value: str | None) -> str | None:
        # A form's "not mapped" option usually arrives as "".
        return value or None

    @field_validator("image_urls", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if isinstance(value, str):
            return (value,) if value else ()
        return value

    @field_validator("image_urls")
    @classmethod
    def _dedupe(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(h for h in value if h))

    def header(self, field: ScalarField) -> str | None:
        """The header mapped to a single-column field."""
        return self.scalar_headers()[field]

    def scalar_headers(self) -> dict[ScalarField, str | None]:
        return {
            "name": self.name,
            "sku": self.sku,
            "description": self.description,
            "category": self.category,
            "price": self.price,
            "tags": self.tags,
            "external_id": self.external_id,
        }

    def generation_headers(self) -> dict[GenerationField, str | None]:
        """The headers of the generation columns (None: not mapped)."""
        return {field: getattr(self, field) for field in GENERATION_FIELDS}

    def used_headers(self) -> set[str]:
        used = {h for h in self.scalar_headers().values() if h is not None}
        used |= {h for h in self.generation_headers().values() if h is not None}
        return used | set(self.image_urls)


class RowGeneration(_Model):
    """What a row asks of image generation; None fields take the import's defaults."""

    style: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_-]{0,39}$")
    prompt: str | None = Field(default=None, max_length=2000)
    negative_prompt: str | None = Field(default=None, max_length=2000)
    aspect_ratio: str | None = None
    size: str | None = None
    variants: int | None = Field(default=None, ge=1, le=4)
    base_image_url: str | None = None  # also one of the draft's image_urls (imported as a product image)


class ProductDraft(_Model):
    """A product ready to be created from one CSV row (or one Shopify handle group)."""

    row_number: int = Field(ge=1)
    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    sku: str | None = Field(default=None, max_length=MAX_SKU_CHARS)
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION_CHARS)
    category: str | None = Field(default=None, max_length=MAX_CATEGORY_CHARS)
    price: Decimal | None = Field(default=None, ge=0, le=MAX_PRICE, decimal_places=2)
    tags: tuple[str, ...] = ()
    image_urls: tuple[str, ...] = Field(default=(), max_length=MAX_IMAGE_URLS)
    external_id: str | None = Field(default=None, max_length=MAX_EXTERNAL_ID_CHARS)
    # Store imports: the store product it mirrors, and the store's media id of each image URL.
    store: StoreLink | None = None
    image_media_ids: tuple[str, ...] = ()
    # The row's generation settings (mapped generation columns with a value), checked as far as the
    # row alone tells (a style's name is checked against the styles when the job is planned).
    generation: RowGeneration | None = None


class RowProblem(_Model):
    """A problem in a row: ``error`` skips the row, ``warning`` imports it anyway."""

    row_number: int
    code: RowProblemCode
    message: str
    field: ProductField | None = None
    severity: Severity = "error"


class RowResult(_Model):
    """``draft`` is ``None`` when the row cannot become a product (see ``problems``)."""

    draft: ProductDraft | None
    problems: tuple[RowProblem, ...] = ()


class PreviewRow(_Model):
    row_number: int
    # Mapped field -> cell text as in the file (several image columns joined by newlines).
    values: dict[str, str]
    draft: ProductDraft | None
    problems: tuple[RowProblem, ...]
    # Long texts (and long image lists) of the sample are cut to keep the stored preview small;
    # the import itself uses them in full.
    truncated: bool = False


class FoldSummary(_Model):
    """How a store export's rows became products (the preview says so before anything is imported).

    ``source``: "shopify" (rows sharing a Handle), "woocommerce" (``variation`` rows and their
    ``Parent``) or None (one row, one product). ``rows`` data rows became ``products`` products:
    ``variations_folded`` rows were folded into the product above them (their images added to its
    own), ``orphan_variations`` variations name a parent the file does not have (skipped, reported).
    ``grouped`` and ``external`` (WooCommerce) are imported as products of their own."""

    source: Literal["shopify", "woocommerce"] | None = None
    rows: int
    products: int
    variations_folded: int = 0
    orphan_variations: int = 0
    grouped: int = 0
    external: int = 0

    def sentence(self) -> str | None:
        """What the merchant reads in the preview's notes (None when every row is a product of its own)."""
        if self.source is None or (self.rows == self.products and not (self.grouped or self.external)):
            return None
        label = "Shopify" if self.source == "shopify" else "WooCommerce"
        parts = [f"{label} export: {self.rows} rows become {self.products} products"]
        if self.variations_folded:
            kind = "variant rows" if self.source == "shopify" else "variations"
            parts.append(f"{self.variations_folded} {kind} were folded into their product (images added to it)")
        if self.orphan_variations:
            parts.append(f"{self.orphan_variations} variations name a parent that is not in the file and are skipped")
        extra = [f"{n} {kind}" for n, kind in ((self.grouped, "grouped"), (self.external, "external")) if n]
        if extra:
            parts.append(f"{' and '.join(extra)} products are imported as products of their own")
        return "; ".join(parts) + "."


class PreviewWarning(_Model):
    """An issue aggregated over all rows; ``row_numbers`` lists at most the first 20."""

    code: PreviewWarningCode
    message: str
    count: int
    row_numbers: tuple[int, ...] = ()
    field: ProductField | None = None
    # duplicate_sku: the SKU; unmapped_column: the header.
    value: str | None = None
    # bad_row: which row problem this warning aggregates, and whether those rows are skipped.
    problem_code: RowProblemCode | None = None
    severity: Severity = "warning"


class CsvPreview(_Model):
    headers: tuple[str, ...]
    delimiter: str  # "" for a workbook
    encoding: str  # "" for a workbook
    total_rows: int
    importable_rows: int
    mapping: ColumnMapping
    sample: tuple[PreviewRow, ...]
    warnings: tuple[PreviewWarning, ...]
    notes: tuple[str, ...] = ()
    format: FileFormat = "csv"
    folding: FoldSummary | None = None  # store exports: how rows became products
    sheet: str | None = None  # the sheet read (workbooks)
    sheets: tuple[str, ...] = ()  # every worksheet of the workbook, to choose another


# --------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------

_BOMS: Final[tuple[tuple[bytes, str], ...]] = (
    # UTF-32 first: its LE BOM starts with the UTF-16 LE one.
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xef\xbb\xbf", "utf-8-sig"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)

_SIGNATURES: Final[tuple[tuple[bytes, str], ...]] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"%PDF-", "a PDF document"),
    # Merchants often upload the workbook instead of exporting it; say so.
    (b"PK\x03\x04", "a ZIP archive (an .xlsx or .numbers workbook?)"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Excel (.xls) workbook"),
    (b"\x1f\x8b", "a gzip archive"),
)


def _binary_kind(data: bytes) -> str | None:
    for signature, kind in _SIGNATURES:
        if data.startswith(signature):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "a WebP image"
    if data[4:8] == b"ftyp":
        return "an HEIC/AVIF image or a video"
    return None


def _bomless_utf16(data: bytes) -> str | None:
    """UTF-16 without a BOM: mostly-ASCII text has a NUL in every other byte."""
    sample = data[:4096]
    sample = sample[: len(sample) - len(sample) % 2]
    pairs = len(sample) // 2
    if not pairs or len(data) % 2:
        return None
    even_nuls, odd_nuls = sample[0::2].count(0), sample[1::2].count(0)
    if even_nuls == 0 and odd_nuls >= pairs * 0.3:
        return "utf-16-le"
    if odd_nuls == 0 and even_nuls >= pairs * 0.3:
        return "utf-16-be"
    return None


# Python codecs that are no character set a spreadsheet writes: escapes, IDNA, placeholders.
_NOT_CHARSETS: Final = frozenset(
    {"idna", "punycode", "raw-unicode-escape", "unicode-escape", "undefined", "mbcs", "oem", "utf-7"}
)
# Encodings merchants' exports come in, most common first. Each is tried on the file besides what
# charset-normalizer proposes: on a few short product lines the detector alone often picks a
# neighbour (Mac Roman read as cp1250, Shift-JIS read as Korean).
_PREFERRED_ENCODINGS: Final[tuple[str, ...]] = (
    "cp1252", "cp1250", "mac_roman", "iso8859_2", "cp1251", "shift_jis", "cp932", "euc_jp", "cp1253",
    "cp1254", "cp1257", "gb18030", "big5", "cp949", "koi8_r", "iso8859_15",
)  # fmt: skip
_JAPANESE_ENCODINGS: Final = frozenset({"shift_jis", "cp932", "euc_jp"})
# Chinese and Korean double-byte codes read each other's text without a visible flaw; between
# them the detector's language statistics decide, not the preference list.
_CHINESE_KOREAN_ENCODINGS: Final = frozenset(
    {"gb18030", "gbk", "gb2312", "big5", "big5hkscs", "cp950", "cp949", "euc_kr"}
)
# Detection reads at most this much of the file: the lines that are not plain ASCII, which carry
# all the evidence (and whose cost would otherwise grow with the file).
_DETECTION_SAMPLE_BYTES: Final = 64 * 1024
_NON_ASCII: Final = re.compile(rb"[\x80-\xff]")


def normalize_encoding(name: str) -> str:
    """Python's name of the character encoding ``name`` ("Shift-JIS" -> "shift_jis", "latin1" ->
    "iso8859-1"); :class:`CsvUnknownEncoding` for a name that is no character encoding."""
    try:
        codec = codecs.lookup(name.strip())
        # LookupError for codecs that are no text encoding (base64, zlib, rot13); an empty input
        # would skip that check, and a decoding error is fine here.
        with contextlib.suppress(UnicodeDecodeError):
            b"\x00\x00\x00\x00".decode(codec.name)
    except (LookupError, ValueError, TypeError):
        raise CsvUnknownEncoding(f"{name!r} is not a character encoding this service knows.") from None
    if codec.name in _NOT_CHARSETS:
        raise CsvUnknownEncoding(f"{name!r} is not a character encoding of text files.")
    return codec.name


def _non_ascii_sample(data: bytes) -> bytes:
    """The lines of ``data`` that contain non-ASCII bytes, up to about the detection sample size."""
    parts: list[bytes] = []
    size = 0
    position = 0
    while size < _DETECTION_SAMPLE_BYTES:
        found = _NON_ASCII.search(data, position)
        if found is None:
            break
        start = data.rfind(b"\n", 0, found.start()) + 1
        end = data.find(b"\n", found.start())
        end = len(data) if end < 0 else end + 1
        parts.append(data[start:end][: _DETECTION_SAMPLE_BYTES - size])
        size += len(parts[-1])
        position = end
    return b"".join(parts)


def _preference(name: str) -> int:
    return _PREFERRED_ENCODINGS.index(name) if name in _PREFERRED_ENCODINGS else len(_PREFERRED_ENCODINGS)


_ALPHABETIC_SCRIPTS: Final = frozenset({"LATIN", "CYRILLIC", "GREEK"})


def _script(char: str) -> str:
    return "LATIN" if char < "\x80" else unicodedata.name(char, "?").split(" ", 1)[0]


def _implausibility(text: str) -> float:
    """How garbled ``text`` (decoded) looks, per non-ASCII character: 0 for clean text.

    What a wrong code page produces: control characters, symbols inside words ("Grš§e",
    "Jam—n"), capitals after small letters ("CafŽ"), Latin and Cyrillic letters in one word
    (cp1254 Turkish read as cp1251), half-width katakana.
    """
    penalty = 0.0
    count = 0
    previous = " "
    for position, char in enumerate(text):
        if char < "\x80":
            previous = char
            continue
        count += 1
        category = unicodedata.category(char)
        if category[0] == "C":
            penalty += 3
        elif "\uff61" <= char <= "\uff9f":
            penalty += 1
        elif category[0] == "L":
            if category == "Lu" and unicodedata.category(previous) == "Ll":
                penalty += 2
            scripts = {_script(char), _script(previous)}
            if previous.isalpha() and len(scripts) == 2 and scripts <= _ALPHABETIC_SCRIPTS:
                penalty += 2
        else:
            following = text[position + 1 : position + 2] or " "
            if previous.isalpha() and following.isalpha():
                penalty += 2
        previous = char
    return penalty / count if count else 0.0


# The accented Latin letters of the languages merchants write (German with its French loanwords:
# Café, Crème). A wrong code page turns Czech "Příliš" into "Pøíliš", whose letters no one
# language has; the right one reads into the letters of some language.
_LATIN_ALPHABETS: Final = tuple(
    frozenset(letters)
    for letters in (
        "äöüßéèàç",  # German
        "àâçéèêëîïôùûüÿœæ",  # French
        "áéíóúñü",  # Spanish
        "áâãàçéêíóôõú",  # Portuguese
        "àèéìíòóùú",  # Italian
        "áéëïóöüèà",  # Dutch
        "åäöæøéü",  # Danish, Norwegian, Swedish, Finnish
        "áðéíóúýþæö",  # Icelandic
        "áčďéěíňóřšťúůýž",  # Czech
        "áäčďéíĺľňóôŕšťúýž",  # Slovak
        "ąćęłńóśźż",  # Polish
        "áéíóöőúüű",  # Hungarian
        "ăâîșțşţ",  # Romanian
        "čćđšž",  # Croatian, Bosnian, Serbian (Latin), Slovenian
        "çğıöşüâîû",  # Turkish
        "āčēģīķļņōŗšūž",  # Latvian
        "ąčęėįšųūž",  # Lithuanian
        "äöõšž",  # Estonian
    )
)


def _foreign_letters(text: str) -> float:
    """The share of the accented Latin letters in ``text`` that the closest language lacks."""
    letters = {
        char.lower()
        for char in text
        if char >= "\x80" and char.isalpha() and unicodedata.name(char, "").startswith("LATIN")
    }
    if not letters:
        return 0.0
    return min(len(letters - alphabet) for alphabet in _LATIN_ALPHABETS) / len(letters)


def _kana_share(text: str) -> float:
    """The share of non-ASCII characters that are hiragana or katakana (Japanese text has many)."""
    wide = [char for char in text if char >= "\x80"]
    return sum("\u3040" <= char <= "\u30ff" for char in wide) / len(wide) if wide else 0.0


def _detected_encodings(data: bytes) -> list[str]:
    """Codecs that may have written ``data`` (not UTF-8), most likely first.

    Candidates are charset-normalizer's matches plus the common export encodings; each is scored
    on a sample of the file by how garbled its reading looks (and whether its accented letters are
    those of one language), then Japanese codecs that read into kana win, then the preference
    list (the detector's order among Chinese and Korean codes).
    """
    from charset_normalizer import from_bytes

    sample = _non_ascii_sample(data)
    detected: list[str] = []
    for match in from_bytes(sample):
        if not match.encoding.startswith(("utf_16", "utf_32")):
            detected += sorted(match.could_be_from_charset, key=_preference)
    ranked: list[tuple[float, bool, int, int, str]] = []
    seen: set[str] = set()
    for name in (*detected, *_PREFERRED_ENCODINGS):
        codec = codecs.lookup(name).name
        if codec in seen:
            continue
        seen.add(codec)
        try:
            text = sample.decode(codec)
        except UnicodeDecodeError:
            continue
        score = round(_implausibility(text) + _foreign_letters(text), 2)
        japanese = False
        if name in _JAPANESE_ENCODINGS:
            # Japanese text is full of kana; Chinese or Korean text read as Japanese has none.
            kana = _kana_share(text)
            japanese = kana >= 0.15
            score += 0.5 if kana < 0.05 else 0.0
        order = detected.index(name) if name in detected else len(detected)
        rank = order if name in _CHINESE_KOREAN_ENCODINGS else _preference(name)
        ranked.append((score, not japanese, rank, order, codec))
    return [codec for *_, codec in sorted(ranked)]


def decode_csv(data: bytes, encoding: str | None = None) -> tuple[str, str]:
    """Decode CSV bytes to text; returns ``(text, codec name)`` with any BOM removed.

    ``encoding`` (the merchant's choice) is used as given. Otherwise UTF-8 (with or without BOM)
    and UTF-16 (with a BOM, or detected by its NUL bytes) are recognised, and text that is not
    valid UTF-8 is read in the encoding charset-normalizer finds most likely (cp1250 for Czech,
    Mac Roman, Shift-JIS, ...), cp1252 (what Excel on Windows writes) if it finds none, and
    latin-1 as the last resort. Images, workbooks and other binary content raise
    :class:`CsvUnreadable`; an unknown ``encoding`` raises :class:`CsvUnknownEncoding`.
    """
    kind = _binary_kind(data)
    if kind is not None:
        raise CsvUnreadable(f"This looks like {kind}, not a CSV file. Export the sheet as CSV and upload that.")
    if encoding is not None:
        return _decode_as(data, normalize_encoding(encoding))
    encoding = None
    body = data
    for bom, codec in _BOMS:
        if data.startswith(bom):
            encoding, body = codec, data[len(bom) :]
            break
    if encoding is None and b"\x00" in data:
        # NUL never appears in a text CSV except as half of a UTF-16 code unit.
        encoding = _bomless_utf16(data)
        if encoding is None:
            raise CsvUnreadable("The file contains binary data, not CSV text.")
    if encoding is not None:
        try:
            text = body.decode("utf-8" if encoding == "utf-8-sig" else encoding)
        except UnicodeDecodeError as exc:
            raise CsvUnreadable(f"The file is not valid {encoding} text.") from exc
    else:
        try:
            text, encoding = data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = _decode_detected(data)
    if "\x00" in text:
        raise CsvUnreadable("The file contains binary data, not CSV text.")
    return text, encoding


def _decode_detected(data: bytes) -> tuple[str, str]:
    # The detector saw a sample: a candidate that fails on the whole file gives way to the next.
    for name in (*_detected_encodings(data), "cp1252"):
        try:
            return data.decode(name), name
        except UnicodeDecodeError:
            continue
    # latin-1 maps every byte, so never fails.
    return data.decode("latin-1"), "latin-1"


def _decode_as(data: bytes, codec: str) -> tuple[str, str]:
    if codec == "utf-8" and data.startswith(b"\xef\xbb\xbf"):
        codec = "utf-8-sig"  # the BOM is not part of the first header
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as exc:
        raise CsvUnreadable(
            f"The file is not valid {codec} text (byte {exc.start} cannot be read); "
            "choose another encoding or let it be detected."
        ) from exc
    if "\x00" in text:
        raise CsvUnreadable(f"Read as {codec}, the file contains binary data; choose another encoding.")
    return text, codec


# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------

_DELIMITERS: Final[tuple[str, ...]] = (",", ";", "\t", "|")
_SAMPLE_CHARS: Final = 64_000
_SAMPLE_RECORDS: Final = 50
_SNIFF_CHARS: Final = 8_000  # csv.Sniffer's regexes get slow on big samples
_SEP_DIRECTIVE: Final = re.compile(r"\A\"?sep=(.)\"?[ \t]*(?:\r\n|\r|\n|\Z)")


def _reader(source: str | Iterable[str], delimiter: str) -> CsvReader:
    # newline="" hands \r\n, \r and \n to the csv module untranslated, which is what it needs to
    # keep line breaks inside quoted cells; str.splitlines would also split on \x85 etc.
    lines = io.StringIO(source, newline="") if isinstance(source, str) else source
    return csv.reader(
        lines,
        delimiter=delimiter,
        quotechar='"',
        doublequote=True,
        skipinitialspace=False,
        strict=False,
    )


def _is_blank(record: Sequence[str]) -> bool:
    return not any(cell.strip() for cell in record)


def _fits(record: Sequence[str], width: int) -> bool:
    """A record fits a width if it has every cell and only empty cells beyond it."""
    return len(record) >= width and not any(cell.strip() for cell in record[width:])


def _delimiter_score(sample: str, delimiter: str, truncated: bool) -> tuple[bool, float, int]:
    """(splits the header, share of rows that fit the header's width, header width)."""
    records: list[list[str]] = []
    try:
        for record in _reader(sample, delimiter):
            if not _is_blank(record):
                records.append(record)
            if len(records) > _SAMPLE_RECORDS:
                break
        else:
            if truncated and len(records) > 1:
                records.pop()  # the sample may end in the middle of a record
    except csv.Error:
        return (False, 0.0, 0)
    if not records or len(records[0]) < 2:
        return (False, 0.0, len(records[0]) if records else 0)
    width = len(records[0])
    rest = records[1:]
    consistency = sum(_fits(r, width) for r in rest) / len(rest) if rest else 1.0
    return (True, consistency, width)


def _sniffed_delimiter(sample: str) -> str | None:
    try:
        dialect = csv.Sniffer().sniff(sample[:_SNIFF_CHARS], delimiters="".join(_DELIMITERS))
    except csv.Error:
        return None
    return dialect.delimiter


def detect_delimiter(text: str) -> str:
    """Pick the delimiter among ``, ; TAB |`` that splits the header and fits most rows.

    Each candidate is tried with the real csv reader (so quoted delimiters and line
    breaks are respected) over the first lines; csv.Sniffer only breaks ties, because on its
    own it is easily fooled, e.g. by the commas in "19,99" of a semicolon file.
    """
    sample = text[:_SAMPLE_CHARS]
    scores = {d: _delimiter_score(sample, d, len(text) > _SAMPLE_CHARS) for d in _DELIMITERS}
    best = max(scores.values())
    tied = [d for d in _DELIMITERS if scores[d] == best]
    if len(tied) == 1:
        return tied[0]
    sniffed = _sniffed_delimiter(sample)
    return sniffed if sniffed in tied else tied[0]


# The csv module builds a whole record before handing it over, so one line of a million tiny cells
# ("a,a,a,...") would cost ~60 bytes a cell at once. Lines are fed to it through a counter that
# refuses a record once its lines hold more delimiters than this (quoted ones count too, so the
# bound is loose for legitimate rows and tight for a crafted one).
_MAX_DELIMITERS_PER_RECORD: Final = 100_000


class _Lines:
    """The text's lines for csv.reader, counting the delimiters of the record being read."""

    def __init__(self, text: str, delimiter: str) -> None:
        # newline="" hands \r\n, \r and \n to the csv module untranslated, which is what it needs to
        # keep line breaks inside quoted cells; str.splitlines would also split on \x85 etc.
        self._lines = iter(io.StringIO(text, newline=""))
        self._delimiter = delimiter
        self.delimiters = 0  # in the lines of the current record; reset by the caller per record

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.delimiters += line.count(self._delimiter)
        if self.delimiters > _MAX_DELIMITERS_PER_RECORD:
            raise CsvTooLarge(f"A row has more than {_MAX_DELIMITERS_PER_RECORD} cells.")
        return line


def _records(text: str, delimiter: str) -> Iterator[list[str]]:
    lines = _Lines(text, delimiter)
    reader = _reader(lines, delimiter)
    try:
        for record in reader:
            lines.delimiters = 0
            yield record
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):
            raise CsvTooLarge(
                f"A cell near line {reader.line_num} is too long (limit {csv.field_size_limit()})."
            ) from exc
        raise CsvUnreadable(f"The CSV cannot be read near line {reader.line_num}: {exc}") from exc


def _unique_headers(names: Sequence[str]) -> tuple[str, ...]:
    """Name empty headers "Column N" and suffix repeats: "Image", "Image (2)", "Image (3)"."""
    named = [name or f"Column {position}" for position, name in enumerate(names, start=1)]
    # Reserve every literal name so a generated "Image (2)" never clashes with a real one.
    taken = set(named)
    seen: set[str] = set()
    result: list[str] = []
    for name in named:
        if name in seen:
            suffix = 2
            while f"{name} ({suffix})" in taken:
                suffix += 1
            name = f"{name} ({suffix})"
            taken.add(name)
        seen.add(name)
        result.append(name)
    return tuple(result)


def _check_headers(header: Sequence[str]) -> None:
    """Column names are stored (the preview) and shown: they follow the text rule (shared/text.py).
    Whitespace is already folded to spaces, so a line break inside a header cell is fine."""
    for position, name in enumerate(header, start=1):
        found = forbidden_char(name)
        if found is not None:
            raise CsvBadHeader(
                f"The name of column {position} {found.sentence()}; rename the column and upload again.",
                column=position,
            )


def normalize_delimiter(delimiter: str) -> str:
    """A delimiter the merchant chose: one character that is no letter, digit, quote or line break."""
    if len(delimiter) != 1 or delimiter.isalnum() or delimiter in '"\r\n\x00 ':
        raise ValidationFailed(
            "The delimiter must be one character such as , ; | or a tab.",
            errors=[{"field": "delimiter", "in": "body", "message": "not a usable delimiter", "type": "value_error"}],
        )
    return delimiter


def parse_csv(
    data: bytes,
    *,
    max_rows: int = 50_000,
    max_columns: int = 200,
    max_field_chars: int = 100_000,
    max_header_chars: int = 1_000,
    max_cells: int = 5_000_000,
    encoding: str | None = None,
    delimiter: str | None = None,
) -> ParsedCsv:
    """Decode and parse a CSV upload into headers and rows.

    The first non-blank record is the header; blank records (no non-whitespace cell) are
    skipped but still counted for row numbers. An Excel ``sep=;`` first line is honoured.
    ``encoding`` and ``delimiter`` override detection. Cells longer than the csv module's own
    limit (131072 by default) also raise CsvTooLarge, as do more than ``max_cells`` cells (data
    rows times header columns) and a header name longer than ``max_header_chars``: memory stays
    within a small multiple of the file's size, and every header fits the stored preview.
    """
    if delimiter is not None:
        delimiter = normalize_delimiter(delimiter)
    text, encoding = decode_csv(data, encoding)
    directive = _SEP_DIRECTIVE.match(text)
    if directive is not None and directive.group(1) in _DELIMITERS:
        # Excel hides this line, so the header that follows is still row 1 (a chosen delimiter wins).
        delimiter = delimiter or directive.group(1)
        text = text[directive.end() :]
    elif delimiter is None:
        delimiter = detect_delimiter(text)

    headers, rows, ragged = build_table(
        enumerate(_records(text, delimiter), start=1),
        max_rows=max_rows,
        max_columns=max_columns,
        max_field_chars=max_field_chars,
        max_header_chars=max_header_chars,
        max_cells=max_cells,
    )
    return ParsedCsv(headers=headers, rows=rows, delimiter=delimiter, encoding=encoding, ragged_rows=ragged)


def build_table(
    records: Iterable[tuple[int, Sequence[str]]],
    *,
    max_rows: int,
    max_columns: int,
    max_field_chars: int,
    max_header_chars: int,
    max_cells: int,
    pad: bool = False,
) -> tuple[tuple[str, ...], tuple[CsvRow, ...], tuple[int, ...]]:
    """Headers, data rows and ragged row numbers of numbered records (a CSV's or a sheet's).

    The first non-blank record is the header; blank records are skipped (their numbers still count).
    The limits are :func:`parse_csv`'s. ``pad``: a short record is filled with empty cells (a sheet's
    row ends at its last value; only a CSV row can lack cells)."""
    header: list[str] | None = None
    columns = _Columns()
    # Each row is stored compactly as soon as it is read; what the whole file decides afterwards
    # (which trailing unnamed columns are phantoms, which rows are ragged) is noted on the way.
    rows: list[CsvRow] = []
    overflowing: set[int] = set()  # rows with non-empty cells beyond the header
    named = 0  # columns up to the last named one
    used: list[bool] = []  # per unnamed trailing column: does any row have a value there
    for number, record in records:
        if _is_blank(record):
            continue
        longest = max(len(cell) for cell in record)
        if longest > max_field_chars:
            raise CsvTooLarge(
                f"Row {number} has a cell of {longest} characters (limit {max_field_chars}).",
                row_number=number,
                limit=max_field_chars,
            )
        if header is None:
            if len(record) > max_columns:
                raise CsvTooLarge(f"The file has {len(record)} columns (limit {max_columns}).", limit=max_columns)
            for position, name in enumerate(record, start=1):
                if len(name) > max_header_chars:
                    raise CsvTooLarge(
                        f"The name of column {position} has {len(name)} characters (limit {max_header_chars}); "
                        "is the first row really the header?",
                        limit=max_header_chars,
                    )
            header = [" ".join(h.split()) for h in record]
            _check_headers(header)
            named = max((position + 1 for position, name in enumerate(header) if name), default=0)
            used = [False] * (len(header) - named)
            continue
        if len(rows) >= max_rows:
            raise CsvTooLarge(f"The file has more than {max_rows} rows.", limit=max_rows)
        if (len(rows) + 1) * len(header) > max_cells:
            raise CsvTooLarge(
                f"The file has more than {max_cells} cells ({len(header)} columns, {len(rows) + 1}+ rows); "
                "split it or leave out columns.",
                limit=max_cells,
            )
        if len(record) > max(len(header), max_columns):
            raise CsvTooLarge(f"Row {number} has {len(record)} cells (limit {max_columns}).", limit=max_columns)
        if pad and len(record) < len(header):
            record = [*record, *[""] * (len(header) - len(record))]
        for position in range(named, min(len(record), len(header))):
            if not used[position - named] and record[position].strip():
                used[position - named] = True
        if any(cell.strip() for cell in record[len(header) :]):
            overflowing.add(number)
        rows.append(CsvRow(number=number, values=RowCells(columns, record[: len(header)])))

    if header is None:
        raise CsvEmpty("The file is empty.")
    if not rows:
        raise CsvEmpty("The file has a header row but no data rows.")

    width = len(header)
    # Excel often exports phantom trailing columns ("a,b,c,,"): drop those with no name and no value
    # in any row, so they neither show up as "Column 4" nor make rows look ragged.
    while width > 1 and width > named and not used[width - 1 - named]:
        width -= 1
    columns.set(_unique_headers(header[:width]))
    ragged = [
        row.number for row in rows if row.number in overflowing or cast("RowCells", row.values).cell_count < width
    ]
    return columns.headers, tuple(rows), tuple(ragged)


# --------------------------------------------------------------------------------------------------
# Column mapping
# --------------------------------------------------------------------------------------------------

_WORD: Final = re.compile(r"[^\W_]+")


def _fold(text: str) -> str:
    """Casefold and drop accents, so "Catégorie" and "categorie" compare equal."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _norm(text: str) -> str:
    """Compare headers ignoring case, accents, spaces and punctuation: "Body (HTML)" -> "bodyhtml"."""
    return "".join(_WORD.findall(_fold(text)))


# Ordered best first: when several headers match, the earliest synonym wins.
_SYNONYMS: Final[dict[ScalarField, tuple[str, ...]]] = {
    "name": (
        "name", "title", "product name", "product title", "item name", "item title",
        "artikelname", "produktname", "artikelbezeichnung", "bezeichnung", "titel",
        "nom", "nom du produit", "nom produit", "titre", "désignation", "libellé",
        "nombre", "nombre del producto", "título", "product", "producto", "produit", "handle",
    ),
    "sku": (
        "sku", "variant sku", "product sku", "item sku", "item code", "product code",
        "article number", "article no", "art no", "artikelnummer", "artnr", "art nr",
        "item number", "item no", "part number", "model number", "mpn", "référence", "ref",
        "código", "code", "ean", "gtin", "upc", "barcode", "variant barcode",
    ),
    "description": (
        "description", "body (html)", "body html", "body", "product description",
        "long description", "desc", "beschreibung", "produktbeschreibung", "langbeschreibung",
        "descripción", "details", "short description", "kurzbeschreibung", "summary",
    ),
    "category": (
        "category", "product category", "categories", "category name", "catégorie",
        "catégories", "kategorie", "kategorien", "warengruppe", "categoría", "categorías",
        "product type", "type", "typ", "tipo", "department", "google product category",
    ),
    "price": (
        "price", "regular price", "variant price", "unit price", "retail price", "list price",
        "selling price", "preis", "verkaufspreis", "prix", "prix de vente", "precio",
        "precio de venta", "msrp", "rrp", "uvp", "sale price", "sales price", "cost",
        "cost per item",
    ),
    "tags": (
        "tags", "tag", "keywords", "labels", "schlagwörter", "schlagworte", "stichwörter",
        "mots clés", "étiquettes", "etiquetas", "palabras clave",
    ),
    "external_id": (
        "external id", "id", "product id", "item id", "source id", "uuid", "handle",
    ),
}  # fmt: skip

# Headers that merely contain one of these words ("Price (EUR)", "Product title EN") match when
# nothing matches exactly, unless they also contain a word that changes the meaning.
_LOOSE_WORDS: Final[dict[ScalarField, frozenset[str]]] = {
    "name": frozenset({"name", "title", "titel", "nom", "nombre"}),
    "sku": frozenset({"sku"}),
    "description": frozenset({"description", "beschreibung", "descripcion"}),
    "category": frozenset({"category", "categories", "kategorie", "categorie", "categoria"}),
    "price": frozenset({"price", "preis", "prix", "precio"}),
    "tags": frozenset({"tags"}),
    "external_id": frozenset(),
}
_LOOSE_BLOCKERS: Final = frozenset(
    ("seo", "meta", "alt", "compare", "tax", "shipping", "date", "option", "vendor", "brand")
)  # fmt: skip

# Image headers compare with digits removed, so "Image 1" ... "Image 12" all match.
_IMAGE_HEADERS: Final = frozenset(
    _norm(h)
    for h in (
        "image", "images", "image url", "image urls", "image src", "image link", "img",
        "img url", "img src", "picture", "pictures", "picture url", "photo", "photos",
        "photo url", "main image", "main image url", "additional images", "additional image",
        "additional image link", "additional image urls", "variant image", "product image",
        "product images", "product image url", "featured image", "gallery", "gallery images",
        "bild", "bilder", "bild url", "produktbild", "hauptbild", "image principale",
        "photo principale", "imagen", "imágenes", "imagen url", "url imagen", "url image",
        "foto", "fotos",
    )
)  # fmt: skip


# Generation columns match exactly (compared like headers: case, accents, spaces and punctuation
# ignored); a product attribute such as "Size" or "Style" of a clothing export must not be taken
# for one, so the plain words are left to the merchant to map (except "Style", "Prompt", "Variants").
_GENERATION_SYNONYMS: Final[dict[GenerationField, tuple[str, ...]]] = {
        "style": ("style", "image style", "generation style", "ai style", "photo style", "bildstil"),
        "prompt": ("prompt", "image prompt", "generation prompt", "ai prompt", "custom prompt"),
        "negative_prompt": ("negative prompt", "image negative prompt", "avoid"),
        "aspect_ratio": ("aspect ratio", "image aspect ratio", "ratio", "seitenverhältnis"),
        "size": ("image size", "output size", "resolution", "image resolution"),
        "variants": ("variants", "image variants", "images per product", "number of images", "image count"),
        "base_image_url": (
            "base image", "base image url", "reference image", "reference image url", "source image",
            "source image url",
        ),
}  # fmt: skip
_GENERATION_HEADERS: Final = {
    field: frozenset(_norm(name) for name in names) for field, names in _GENERATION_SYNONYMS.items()
}


def _ranks(synonyms: Sequence[str]) -> dict[str, int]:
    ranks: dict[str, int] = {}
    for rank, synonym in enumerate(synonyms):
        # setdefault: "catégorie" and "categorie" fold together; the first rank stays.
        ranks.setdefault(_norm(synonym), rank)
    return ranks


_RANKS: Final = {field: _ranks(synonyms) for field, synonyms in _SYNONYMS.items()}
_LOOSE_RANK: Final = 1_000


def _looks_like_image_column(header: str) -> bool:
    return re.sub(r"\d+", "", _norm(header)) in _IMAGE_HEADERS


def _rank(field: ScalarField, header: str) -> int | None:
    exact = _RANKS[field].get(_norm(header))
    if exact is not None:
        return exact
    words = {re.sub(r"\d+", "", w) for w in _WORD.findall(_fold(header))}
    if words & _LOOSE_WORDS[field] and not words & _LOOSE_BLOCKERS:
        return _LOOSE_RANK
    return None


def auto_map(headers: Sequence[str]) -> ColumnMapping:
    """Guess the mapping from header names (Shopify, WooCommerce, generic, de/fr/es).

    Fields are filled in priority order and a header feeds at most one single-column field,
    so a Shopify "Handle" becomes the name only when there is no "Title" (and is then not
    also the external id). Every remaining image-like header goes to ``image_urls``.
    """
    used: set[str] = set()
    chosen: dict[str, Any] = {}
    for field in _SCALAR_FIELDS:
        best: tuple[int, int, str] | None = None
        for position, header in enumerate(headers):
            if header in used:
                continue
            rank = _rank(field, header)
            if rank is not None and (best is None or (rank, position) < best[:2]):
                best = (rank, position, header)
        if best is not None:
            chosen[field] = best[2]
            used.add(best[2])
    chosen["image_urls"] = tuple(h for h in headers if h not in used and _looks_like_image_column(h))
    used |= set(chosen["image_urls"])
    for generation_field in GENERATION_FIELDS:
        names = _GENERATION_HEADERS[generation_field]
        found = next((h for h in headers if h not in used and _norm(h) in names), None)
        if found is not None:
            chosen[generation_field] = found
            used.add(found)
    return ColumnMapping.model_validate(chosen)


def _field_path(prefix: str, *parts: str | int) -> str:
    return ".".join(str(p) for p in (prefix, *parts) if p != "")


def validate_mapping(mapping: ColumnMapping, headers: Sequence[str], *, field_prefix: str = "mapping") -> None:
    """Raise :class:`ValidationFailed` if ``name`` is unmapped or a mapped header is unknown."""
    known = set(headers)
    errors: list[dict[str, str]] = []
    if mapping.name is None:
        errors.append(
            {
                "field": _field_path(field_prefix, "name"),
                "message": "Choose the column that holds the product name.",
                "type": "missing",
            }
        )
    for field, header in [*mapping.scalar_headers().items(), *mapping.generation_headers().items()]:
        if header is not None and header not in known:
            errors.append(
                {
                    "field": _field_path(field_prefix, field),
                    "message": f"The file has no column named {header!r}.",
                    "type": "unknown_column",
                }
            )
    for index, header in enumerate(mapping.image_urls):
        if header not in known:
            errors.append(
                {
                    "field": _field_path(field_prefix, "image_urls", index),
                    "message": f"The file has no column named {header!r}.",
                    "type": "unknown_column",
                }
            )
    if errors:
        raise ValidationFailed("The column mapping does not fit the file.", errors=errors)


# --------------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------------

_EXOTIC_SPACES: Final = str.maketrans({"\u00a0": " ", "\u202f": " ", "\u2009": " "})
# Hyphen, en dash, em dash and the minus sign all occur in spreadsheets.
_DASHES: Final = "-\u2013\u2014\u2212"
# German "19,-" means 19 euros.
_DASH_CENTS: Final = re.compile(rf"(\d)[.,][{_DASHES}]{{1,2}}(?!\d)")
_NEGATIVE: Final = re.compile(rf"^\D*[{_DASHES}]|^\s*\(.*\)\s*$")
_NUMBER_CHARS: Final = frozenset("0123456789.,' ")
_SIMPLE_PRICE: Final = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,6})?")
_DIGIT_SPAN: Final = re.compile(r"[0-9](?:.*[0-9])?", re.DOTALL)  # first to last digit
_CENT: Final = Decimal("0.01")


def _is_currency_affix(text: str) -> bool:
    """Up to four letters, currency signs or dots: "$", "€", "EUR", "US$", "kr.", "CHF"."""
    compact = "".join(text.split())
    return len(compact) <= 4 and all(ch.isalpha() or ch == "." or unicodedata.category(ch) == "Sc" for ch in compact)


def _valid_groups(integer: str, separator: str) -> bool:
    """Thousands groups: 1-3 digits, then groups of exactly three."""
    groups = integer.split(separator)
    return all(g.isdigit() for g in groups) and 1 <= len(groups[0]) <= 3 and all(len(g) == 3 for g in groups[1:])


def _plain_number(core: str) -> str | None:
    """Turn "1.234,56" / "1,234.56" / "1 234,5" / "19,99" into "1234.56"-style, or None."""
    dots, commas = core.count("."), core.count(",")
    decimal_sep: str | None = None
    if dots and commas:
        decimal_sep = "." if core.rfind(".") > core.rfind(",") else ","
        if core.count(decimal_sep) != 1:
            return None
    elif dots == 1 or commas == 1:
        decimal_sep = "." if dots else ","
        integer, fraction = core.split(decimal_sep)
        # "$1,234": a single comma before exactly three digits is a thousands separator. A single
        # dot is always decimal: exports from shops and tools write "1234.567".
        if decimal_sep == "," and len(fraction) == 3 and integer.isdigit() and len(integer) <= 3 and integer != "0":
            decimal_sep = None
    if decimal_sep is not None:
        integer, fraction = core.split(decimal_sep)
        if fraction and not fraction.isdigit():
            return None
    else:
        integer, fraction = core, ""
    separators = set(integer) - set("0123456789")
    if len(separators) > 1:
        return None
    if separators:
        if not _valid_groups(integer, separators.pop()):
            return None
        integer = re.sub(r"\D", "", integer)
    elif not integer.isdigit() and not (integer == "" and fraction):
        return None
    return f"{integer or '0'}.{fraction or '0'}"


def _normalise_price(value: str) -> str | None:
    """Strip currency affixes and separators: "€ 1.234,50" -> "1234.50"; None if not a price."""
    if _NEGATIVE.search(value):
        raise ValueError(f"{value!r} is negative; prices must be 0 or more.")
    value = _DASH_CENTS.sub(lambda m: m.group(1), value).lstrip("+").strip()
    span = _DIGIT_SPAN.search(value)
    if span is None:
        return None
    start, end = span.span()
    if start > 0 and value[start - 1] in ".,":
        start -= 1  # ".99"
    if end < len(value) and value[end] in ".,":
        end += 1  # "19."
    prefix, core, suffix = value[:start], value[start:end], value[end:]
    if set(core) <= _NUMBER_CHARS and _is_currency_affix(prefix) and _is_currency_affix(suffix):
        return _plain_number(core.replace("'", " ").strip())
    return None


def parse_price(text: str) -> Decimal | None:
    """Parse a price cell; ``None`` for an empty cell, ``ValueError`` for anything unusable.

    Accepts "19.99", "19,99", "1,234.56", "1.234,56", "€ 19,99", "$1,234", "19.99 USD",
    "19,-". Rounds half up to cents. Refuses negatives, ranges, words, NaN and infinities.
    A lone "1.234" reads as 1.23 and a lone "1,234" as 1234 (see ``_plain_number``).
    """
    value = text.translate(_EXOTIC_SPACES).strip()
    if not value:
        return None
    if _SIMPLE_PRICE.fullmatch(value):
        normalised: str | None = value  # most cells: skip the heuristics
    else:
        normalised = _normalise_price(value)
    if normalised is None:
        raise ValueError(f"{text.strip()!r} is not a price.")
    try:
        amount = Decimal(normalised).quantize(_CENT, rounding=ROUND_HALF_UP)
    except InvalidOperation as exc:  # pragma: no cover - _plain_number only yields digits
        raise ValueError(f"{text.strip()!r} is not a price.") from exc
    if amount > MAX_PRICE:
        raise ValueError(f"{text.strip()!r} is too large for a price.")
    return amount


# Split on whitespace (incl. newlines), "|" and ";", and on "," only when a URL follows: WooCommerce
# joins images with ", " but commas also occur inside URLs (Cloudinary transforms).
_URL_SEPARATORS: Final = re.compile(r",\s*(?=(?:https?:)?//)|[\s|;]+", re.IGNORECASE)


def _clean_url(token: str) -> str | None:
    if token.startswith("//"):
        token = "https:" + token  # protocol-relative CDN links
    if len(token) > MAX_URL_CHARS or forbidden_char(token) is not None:
        return None
    try:
        parts = urlsplit(token)
        host = parts.hostname
        _ = parts.port  # raises on a malformed port
    except ValueError:
        return None
    if parts.scheme.lower() not in {"http", "https"} or not host:
        return None
    return token


def split_image_urls(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split a cell into ``(valid http(s) URLs, rejected tokens)``, both deduplicated in order."""
    good: dict[str, None] = {}
    bad: dict[str, None] = {}
    for raw in _URL_SEPARATORS.split(text):
        token = raw.strip("\"'<>[],")
        if not token:
            continue
        url = _clean_url(token)
        if url is None:
            bad[token] = None
        else:
            good[url] = None
    return tuple(good), tuple(bad)


def _split_tags(text: str) -> list[str]:
    tags: dict[str, str] = {}
    for raw in re.split(r"[,;|]", text):
        tag = " ".join(raw.split())
        if tag:
            tags.setdefault(tag.casefold(), tag)  # "Summer" and "summer" are one tag
    return list(tags.values())


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


_FIELD_LABELS: Final[dict[ProductField, str]] = {
    "name": "name",
    "sku": "SKU",
    "description": "description",
    "category": "category",
    "price": "price",
    "image_urls": "image URLs",
    "tags": "tags",
    "external_id": "external id",
}


def row_to_draft(row: CsvRow, mapping: ColumnMapping) -> RowResult:
    """Turn a row into a :class:`ProductDraft`, collecting every problem instead of stopping.

    Errors (``draft`` is ``None``): missing or over-long name, over-long SKU / category /
    external id, unparseable price (a wrong price is worse than a failed row), text the API would
    refuse (``bad_text``: control or bidi override characters, see shared/text.py). Warnings (the
    draft is still made): rejected image URLs, more than 20 images, over-long description or
    tags (cut).
    """
    number = row.number
    if row.refusal is not None:
        return RowResult(draft=None, problems=(row.refusal,))
    problems: list[RowProblem] = []

    def cell(header: str | None) -> str:
        return row.values.get(header, "").strip() if header is not None else ""

    def problem(code: RowProblemCode, field: ProductField | None, message: str, severity: Severity = "error") -> None:
        problems.append(RowProblem(row_number=number, code=code, message=message, field=field, severity=severity))

    def plain(field: ProductField, value: str | None, *, multiline: bool = False) -> None:
        # The text rule of the API (shared/text.py): such a row is refused, never stored as it is.
        found = forbidden_char(value, multiline=multiline) if value else None
        if found is not None:
            problem("bad_text", field, f"The {_FIELD_LABELS[field]} {found.sentence()}.")

    def bounded(field: ProductField, value: str, limit: int) -> str | None:
        if len(value) > limit:
            label = _FIELD_LABELS[field]
            problem("too_long", field, f"The {label} has {len(value)} characters (max {limit}).")
        return value or None

    name = " ".join(cell(mapping.name).split())
    if not name:
        problem("missing_name", "name", "The product name is empty.")
    bounded("name", name, MAX_NAME_CHARS)
    sku = bounded("sku", cell(mapping.sku), MAX_SKU_CHARS)
    category = bounded("category", " ".join(cell(mapping.category).split()), MAX_CATEGORY_CHARS)
    external_id = bounded("external_id", cell(mapping.external_id), MAX_EXTERNAL_ID_CHARS)

    singles: tuple[tuple[ProductField, str | None], ...] = (
        ("name", name),
        ("sku", sku),
        ("category", category),
        ("external_id", external_id),
    )
    for field, value in singles:
        plain(field, value)
    description = cell(mapping.description) or None
    plain("description", description, multiline=True)
    if description is not None and len(description) > MAX_DESCRIPTION_CHARS:
        problem(
            "too_long",
            "description",
            f"The description has {len(description)} characters; only the first {MAX_DESCRIPTION_CHARS} are kept.",
            "warning",
        )
        description = description[:MAX_DESCRIPTION_CHARS].rstrip()

    price: Decimal | None = None
    try:
        price = parse_price(cell(mapping.price))
    except ValueError as exc:
        problem("invalid_price", "price", str(exc))

    tags = _split_tags(cell(mapping.tags))
    plain("tags", next((t for t in tags if forbidden_char(t) is not None), None))
    long_tags = [t for t in tags if len(t) > MAX_TAG_CHARS]
    if long_tags:
        problem(
            "too_long",
            "tags",
            f"{len(long_tags)} tag(s) longer than {MAX_TAG_CHARS} characters were dropped.",
            "warning",
        )
        tags = [t for t in tags if len(t) <= MAX_TAG_CHARS]
    if len(tags) > MAX_TAGS:
        problem("too_long", "tags", f"Only the first {MAX_TAGS} tags are kept.", "warning")
        tags = tags[:MAX_TAGS]

    urls: dict[str, None] = {}
    rejected: dict[str, None] = {}
    for header in mapping.image_urls:
        good, bad = split_image_urls(cell(header))
        urls.update(dict.fromkeys(good))
        rejected.update(dict.fromkeys(bad))
    if rejected:
        shown = ", ".join(repr(_shorten(t)) for t in list(rejected)[:3])
        more = f" and {len(rejected) - 3} more" if len(rejected) > 3 else ""
        problem(
            "invalid_image_url",
            "image_urls",
            f"Skipped {len(rejected)} value(s) that are not http(s) URLs: {shown}{more}.",
            "warning",
        )
    image_urls = tuple(urls)
    if len(image_urls) > MAX_IMAGE_URLS:
        problem(
            "too_long",
            "image_urls",
            f"The row has {len(image_urls)} image URLs; only the first {MAX_IMAGE_URLS} are kept.",
            "warning",
        )
        image_urls = image_urls[:MAX_IMAGE_URLS]

    generation = _row_generation(row, mapping, problem)
    if generation is not None and generation.base_image_url is not None:
        # The base image is imported as the product's first image; the job uses it as the reference.
        image_urls = (generation.base_image_url, *(u for u in image_urls if u != generation.base_image_url))
        image_urls = image_urls[:MAX_IMAGE_URLS]
    if any(p.severity == "error" for p in problems):
        return RowResult(draft=None, problems=tuple(problems))
    draft = ProductDraft(
        row_number=number,
        name=name,
        sku=sku,
        description=description,
        category=category,
        price=price,
        tags=tuple(tags),
        image_urls=image_urls,
        external_id=external_id,
        generation=generation,
    )
    return RowResult(draft=draft, problems=tuple(problems))


_ASPECT_RATIOS: Final = frozenset(("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"))
_SIZES: Final = frozenset(("1K", "2K", "4K"))


def _row_generation(
    row: CsvRow, mapping: ColumnMapping, problem: Callable[[RowProblemCode, ProductField | None, str, Severity], None]
) -> RowGeneration | None:
    """The row's generation settings (None: its generation cells are empty or unusable, the latter with an
    ``invalid_generation`` warning: the product is still imported). The allowed aspect ratios and sizes
    are the engines' (shared/engines/base.py), checked again when the job is accepted."""
    cells = {
        field: row.values.get(header, "").strip()
        for field, header in mapping.generation_headers().items()
        if header is not None
    }
    cells = {field: value for field, value in cells.items() if value}
    if not cells:
        return None
    wrong: list[str] = []
    values: dict[str, Any] = {}
    if style := cells.get("style"):
        values["style"] = "-".join(style.casefold().split())
    for field in ("prompt", "negative_prompt"):
        if text := cells.get(field):
            found = forbidden_char(text, multiline=True)
            if found is not None:
                wrong.append(f"the {field.replace('_', ' ')} {found.sentence()}")
            values[field] = text
    if ratio := cells.get("aspect_ratio"):
        ratio = ratio.replace(" ", "").replace("x", ":").replace("/", ":")
        if ratio not in _ASPECT_RATIOS:
            wrong.append(f"aspect ratio {cells['aspect_ratio']!r} is not one of {', '.join(sorted(_ASPECT_RATIOS))}")
        values["aspect_ratio"] = ratio
    if size := cells.get("size"):
        size = size.upper()
        if size not in _SIZES:
            wrong.append(f"size {cells['size']!r} is not one of 1K, 2K, 4K")
        values["size"] = size
    if variants := cells.get("variants"):
        try:
            count = Decimal(variants)
        except InvalidOperation:
            count = Decimal(0)
        if count != count.to_integral_value() or not 1 <= count <= 4:
            wrong.append(f"variants {variants!r} is not a whole number from 1 to 4")
        else:
            values["variants"] = int(count)
    if url := cells.get("base_image_url"):
        clean = _clean_url(url)
        if clean is None:
            wrong.append(f"the base image {_shorten(url)!r} is not an http(s) URL")
        values["base_image_url"] = clean
    if not wrong:
        try:
            return RowGeneration.model_validate(values)
        except ValidationError as exc:
            wrong += [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    problem("invalid_generation", None, "No image is generated for this row: " + "; ".join(wrong) + ".", "warning")
    return None


# --------------------------------------------------------------------------------------------------
# Store exports: Shopify handle groups, WooCommerce variations
# --------------------------------------------------------------------------------------------------


def _merge_images(first: CsvRow, extra: Sequence[CsvRow], image_headers: Sequence[str]) -> CsvRow:
    if not extra or not image_headers:
        return first
    values = dict(first.values)
    for header in image_headers:
        cells = (r.values.get(header, "").strip() for r in (first, *extra))
        # Newline-joined: split_image_urls splits on it, and it reads well in a preview.
        values[header] = "\n".join(c for c in cells if c)
    return CsvRow(number=first.number, values=values, refusal=first.refusal)


def group_rows(parsed: ParsedCsv, mapping: ColumnMapping, handle_header: str | None = None) -> tuple[CsvRow, ...]:
    """The rows to import, store exports' extra rows folded into their product's row (see :func:`fold_rows`)."""
    return fold_rows(parsed, mapping, handle_header)[0]


def fold_rows(
    parsed: ParsedCsv, mapping: ColumnMapping, handle_header: str | None = None
) -> tuple[tuple[CsvRow, ...], FoldSummary]:
    """The rows to import and how the file's rows became them.

    Shopify exports one row per extra image (and per variant) with the same Handle and
    an empty Title. Such a row (handle seen before, name cell empty) is dropped and its
    image cells are appended (newline-separated) to the first row of the handle.
    ``handle_header`` defaults to a header named "Handle" (any case).

    A WooCommerce export (columns ``ID``, ``Type``, ``Name``, ``Parent`` and ``SKU``) has a row per
    ``variation`` of a variable product, whose ``Parent`` names its product by SKU or as ``id:N``: such
    a row is folded into its parent's row (images appended, and its price used when the parent has
    none: the lowest), never a product of its own; a variation whose parent is not in the file is
    kept as a refused row (``orphan_variation``, reported in the preview and errors.csv).

    Other files' rows are returned as they are. Grouping grouped rows changes nothing."""
    handle = handle_header
    if handle is None:
        handle = next((h for h in parsed.headers if _norm(h) == "handle"), None)
        if handle is None:
            woo = _woo_columns(parsed.headers)
            if woo is not None:
                return _fold_woo(parsed, mapping, woo)
            return parsed.rows, FoldSummary(rows=len(parsed.rows), products=len(parsed.rows))
    elif handle not in parsed.headers:
        raise ValidationFailed(
            "The column mapping does not fit the file.",
            errors=[
                {
                    "field": "handle_header",
                    "message": f"The file has no column named {handle!r}.",
                    "type": "unknown_column",
                }
            ],
        )

    groups: list[tuple[CsvRow, list[CsvRow]]] = []
    first_of: dict[str, int] = {}
    for row in parsed.rows:
        key = row.values.get(handle, "").strip()
        name = row.values.get(mapping.name, "").strip() if mapping.name else ""
        if key and not name and key in first_of:
            groups[first_of[key]][1].append(row)
            continue
        if key:
            first_of.setdefault(key, len(groups))
        groups.append((row, []))
    summary = FoldSummary(
        source="shopify", rows=len(parsed.rows), products=len(groups), variations_folded=len(parsed.rows) - len(groups)
    )
    if len(groups) == len(parsed.rows):
        return parsed.rows, summary
    return tuple(_merge_images(first, extra, mapping.image_urls) for first, extra in groups), summary


@dataclass(frozen=True)
class _WooColumns:
    id: str
    type: str
    parent: str
    sku: str


def _woo_columns(headers: Sequence[str]) -> _WooColumns | None:
    """The columns of WooCommerce's product export, if the file is one (its exporter's English names)."""
    by_name = {_norm(h): h for h in headers}
    found = [by_name.get(name) for name in ("id", "type", "parent", "sku", "name")]
    if any(column is None for column in found):
        return None
    ident, kind, parent, sku, _ = found
    assert ident is not None and kind is not None and parent is not None and sku is not None
    return _WooColumns(id=ident, type=kind, parent=parent, sku=sku)


def _woo_types(row: CsvRow, columns: _WooColumns) -> set[str]:
    # "simple, downloadable, virtual": a product type and its flags, comma-separated.
    return {part.strip().casefold() for part in row.values.get(columns.type, "").split(",") if part.strip()}


def _fold_woo(
    parsed: ParsedCsv, mapping: ColumnMapping, columns: _WooColumns
) -> tuple[tuple[CsvRow, ...], FoldSummary]:
    # Parents by SKU and by "id:N", from every row that is no variation (a parent may come after its
    # variations: the exporter writes them in order, merchants sort files).
    by_key: dict[str, int] = {}
    kinds: list[set[str]] = []
    for position, row in enumerate(parsed.rows):
        kinds.append(_woo_types(row, columns))
        if "variation" in kinds[-1]:
            continue
        ident = row.values.get(columns.id, "").strip()
        sku = row.values.get(columns.sku, "").strip()
        if ident:
            by_key.setdefault(f"id:{ident}", position)
        if sku:
            by_key.setdefault(sku, position)
    folded: dict[int, list[CsvRow]] = {}
    kept: list[int] = []
    orphans: dict[int, CsvRow] = {}
    grouped = external = 0
    for position, row in enumerate(parsed.rows):
        if "variation" not in kinds[position]:
            kept.append(position)
            grouped += "grouped" in kinds[position]
            external += "external" in kinds[position]
            continue
        parent = row.values.get(columns.parent, "").strip()
        target = by_key.get(parent)
        if target is None and parent.isdigit():
            target = by_key.get(f"id:{parent}")
        if target is not None:
            folded.setdefault(target, []).append(row)
            continue
        named = f"{parent!r}" if parent else "no parent"
        refusal = RowProblem(
            row_number=row.number,
            code="orphan_variation",
            message=f"A variation of {named}, a product that is not in the file: not imported (import its parent too).",
        )
        orphans[position] = CsvRow(number=row.number, values=row.values, refusal=refusal)
        kept.append(position)
    kept.sort()
    rows = tuple(
        orphans[position]
        if position in orphans
        else _fold_variations(parsed.rows[position], folded.get(position, []), mapping)
        for position in kept
    )
    summary = FoldSummary(
        source="woocommerce",
        rows=len(parsed.rows),
        products=len(kept) - len(orphans),
        variations_folded=sum(len(v) for v in folded.values()),
        orphan_variations=len(orphans),
        grouped=grouped,
        external=external,
    )
    return rows, summary


def _fold_variations(parent: CsvRow, variations: Sequence[CsvRow], mapping: ColumnMapping) -> CsvRow:
    if not variations:
        return parent
    row = _merge_images(parent, variations, mapping.image_urls)
    price = mapping.price
    if price is None or row.values.get(price, "").strip():
        return row
    # A variable product has no price of its own; the storefront shows "from" its lowest variation's.
    prices: list[tuple[Decimal, str]] = []
    for variation in variations:
        cell = variation.values.get(price, "").strip()
        with contextlib.suppress(ValueError):
            amount = parse_price(cell)
            if amount is not None:
                prices.append((amount, cell))
    if not prices:
        return row
    values = dict(row.values)
    values[price] = min(prices)[1]
    return CsvRow(number=row.number, values=values, refusal=row.refusal)


# --------------------------------------------------------------------------------------------------
# Preview
# --------------------------------------------------------------------------------------------------

_LISTED_ROWS: Final = 20
_MAX_DUPLICATE_SKU_WARNINGS: Final = 50
_CODE_ORDER: Final[tuple[RowProblemCode, ...]] = (
    "orphan_variation",
    "missing_name",
    "invalid_price",
    "too_long",
    "bad_text",
    "invalid_image_url",
    "invalid_generation",
)
_PROBLEM_LABELS: Final[dict[RowProblemCode, str]] = {
    "orphan_variation": "a variation whose parent product is not in the file",
    "missing_name": "no name",
    "invalid_price": "an invalid price",
    "too_long": "a value that is too long",
    "bad_text": "control or bidirectional-override characters",
    "invalid_image_url": "invalid image URLs",
    "invalid_generation": "generation settings that cannot be used (the product is imported, no image generated)",
}


def _mapped_values(row: CsvRow, mapping: ColumnMapping) -> dict[str, str]:
    headers = [*mapping.scalar_headers().items(), *mapping.generation_headers().items()]
    values: dict[str, str] = {field: row.values.get(header, "") for field, header in headers if header is not None}
    if mapping.image_urls:
        cells = (row.values.get(h, "").strip() for h in mapping.image_urls)
        values["image_urls"] = "\n".join(c for c in cells if c)
    return values


def _rows_word(count: int, singular_verb: str = "", plural_verb: str = "") -> str:
    """For example "1 row has" / "3 rows have": merchants read these messages as they are."""
    text = f"1 row {singular_verb}" if count == 1 else f"{count} rows {plural_verb}"
    return text.rstrip()


# What the stored preview keeps of a sample row: a Firestore document holds at most 1 MiB, and a
# Shopify export's "Body (HTML)" alone can be 90 KB a row.
SAMPLE_TEXT_CHARS: Final = 1_000
SAMPLE_IMAGE_URLS: Final = 5
TRUNCATED_NOTE: Final = (
    f"Long values in the sample are cut to {SAMPLE_TEXT_CHARS} characters (and at most {SAMPLE_IMAGE_URLS} "
    "image URLs are shown); the import uses them in full."
)


def _cut(text: str) -> str:
    return text if len(text) <= SAMPLE_TEXT_CHARS else text[: SAMPLE_TEXT_CHARS - 1] + "…"


def _sample_row(row: CsvRow, result: RowResult, mapping: ColumnMapping) -> PreviewRow:
    """A row as the preview shows it, its long texts cut (``truncated`` says so)."""
    # A refused row's cells are shown with U+FFFD for what was refused: the preview is stored and shown.
    full = {field: visible(text) for field, text in _mapped_values(row, mapping).items()}
    values = {field: _cut(text) for field, text in full.items()}
    truncated = values != full
    draft = result.draft
    if draft is not None:
        description = _cut(draft.description) if draft.description is not None else None
        urls = draft.image_urls[:SAMPLE_IMAGE_URLS]
        if description != draft.description or urls != draft.image_urls:
            truncated = True
            draft = draft.model_copy(update={"description": description, "image_urls": urls})
    return PreviewRow(row_number=row.number, values=values, draft=draft, problems=result.problems, truncated=truncated)


def build_preview(parsed: ParsedCsv, mapping: ColumnMapping, *, sample_size: int = 10) -> CsvPreview:
    """Summarise what an import with ``mapping`` would do: a sample plus warnings over all rows.

    Rows are grouped as the import groups them (:func:`group_rows`). The mapping is not
    validated here: an incomplete mapping still gets a useful preview. Duplicate SKUs and missing
    images count importable rows only, since failed rows are already reported as ``bad_row``.
    At most 50 ``duplicate_sku`` warnings are given. Rows are summarised one at a time (only the
    sample is kept), and long sample values are cut (see ``notes``).
    """
    # Grouped like the import itself, so the counts shown are the counts imported.
    rows, folding = fold_rows(parsed, mapping)
    sample: list[PreviewRow] = []
    by_problem: dict[tuple[Severity, RowProblemCode], dict[int, None]] = {}
    importable = 0
    without_images: list[int] = []
    without_images_count = 0
    by_sku: dict[str, tuple[str, list[int], int]] = {}  # folded SKU -> (SKU, first rows, count)
    for row in rows:
        result = row_to_draft(row, mapping)
        if len(sample) < sample_size:
            sample.append(_sample_row(row, result, mapping))
        for p in result.problems:
            # A skipped row's warnings do not matter: the row is not imported anyway.
            if p.severity == "error" or result.draft is not None:
                by_problem.setdefault((p.severity, p.code), {})[row.number] = None
        draft = result.draft
        if draft is None:
            continue
        importable += 1
        if not draft.image_urls:
            without_images_count += 1
            if len(without_images) < _LISTED_ROWS:
                without_images.append(draft.row_number)
        if draft.sku is not None:
            first_spelling, sku_rows, sku_count = by_sku.get(draft.sku.casefold(), (draft.sku, [], 0))
            if len(sku_rows) < _LISTED_ROWS:
                sku_rows.append(draft.row_number)
            by_sku[draft.sku.casefold()] = (first_spelling, sku_rows, sku_count + 1)

    warnings: list[PreviewWarning] = []
    for severity, code in sorted(by_problem, key=lambda k: (k[0] != "error", _CODE_ORDER.index(k[1]))):
        numbers = tuple(by_problem[(severity, code)])
        outcome = "skipped" if severity == "error" else "imported with a warning"
        verb = "is" if len(numbers) == 1 else "are"
        warnings.append(
            PreviewWarning(
                code="bad_row",
                message=f"{_rows_word(len(numbers))} with {_PROBLEM_LABELS[code]} {verb} {outcome}.",
                count=len(numbers),
                row_numbers=numbers[:_LISTED_ROWS],
                problem_code=code,
                severity=severity,
            )
        )

    if without_images_count:
        hint = "" if mapping.image_urls else " (no column is mapped to images)"
        warnings.append(
            PreviewWarning(
                code="missing_images",
                message=f"{_rows_word(without_images_count, 'has', 'have')} no image URL{hint}.",
                count=without_images_count,
                row_numbers=tuple(without_images),
                field="image_urls",
            )
        )

    duplicates = [group for group in by_sku.values() if group[2] > 1]
    for sku, sku_rows, count in duplicates[:_MAX_DUPLICATE_SKU_WARNINGS]:
        warnings.append(
            PreviewWarning(
                code="duplicate_sku",
                message=f"SKU {sku!r} appears in {count} rows.",
                count=count,
                row_numbers=tuple(sku_rows),
                field="sku",
                value=sku,
            )
        )

    if parsed.ragged_rows:
        count = len(parsed.ragged_rows)
        warnings.append(
            PreviewWarning(
                code="ragged_row",
                message=(
                    f"{_rows_word(count, 'does', 'do')} not have {len(parsed.headers)} cells like the "
                    "header; values may be in the wrong columns."
                ),
                count=count,
                row_numbers=parsed.ragged_rows[:_LISTED_ROWS],
            )
        )

    warnings.extend(_unmapped_warnings(parsed, mapping))
    return CsvPreview(
        headers=parsed.headers,
        delimiter=parsed.delimiter,
        encoding=parsed.encoding,
        total_rows=len(rows),
        importable_rows=importable,
        mapping=mapping,
        sample=tuple(sample),
        warnings=tuple(warnings),
        notes=(
            *parsed.notes,
            *((folding.sentence(),) if folding.sentence() else ()),
            *((TRUNCATED_NOTE,) if any(row.truncated for row in sample) else ()),
        ),
        format=parsed.format,
        folding=folding if folding.source is not None else None,
        sheet=parsed.sheet,
        sheets=parsed.sheets,
    )


def _unmapped_warnings(parsed: ParsedCsv, mapping: ColumnMapping) -> list[PreviewWarning]:
    """Columns auto-mapping would use for a field the mapping leaves out, if they hold data."""
    used = mapping.used_headers()
    suggested = auto_map(parsed.headers)
    candidates: list[tuple[ProductField, str]] = [
        (field, header)
        for field, header in suggested.scalar_headers().items()
        if header is not None and mapping.header(field) is None and header not in used
    ]
    candidates += [("image_urls", h) for h in suggested.image_urls if h not in used]
    warnings: list[PreviewWarning] = []
    for field, header in candidates:
        numbers = [row.number for row in parsed.rows if row.values.get(header, "").strip()]
        if numbers:
            warnings.append(
                PreviewWarning(
                    code="unmapped_column",
                    message=(
                        f"Column {header!r} looks like {_FIELD_LABELS[field]} and has values "
                        f"in {_rows_word(len(numbers))}, but is not mapped."
                    ),
                    count=len(numbers),
                    row_numbers=tuple(numbers[:_LISTED_ROWS]),
                    field=field,
                    value=header,
                )
            )
    return warnings
