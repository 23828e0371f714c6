"""CSV product import: decode, parse, map columns, preview, turn rows into drafts.

Pure functions (bytes in, pydantic models out, no I/O). The import flow is::

    parsed = parse_csv(data)
    mapping = auto_map(parsed.headers)        # shown to the merchant, who may edit it
    validate_mapping(mapping, parsed.headers)
    preview = build_preview(parsed, mapping)  # before the merchant confirms
    rows = group_rows(parsed, mapping)        # Shopify: extra image rows share a Handle
    results = [row_to_draft(row, mapping) for row in rows]

Row numbers are what a spreadsheet user sees when the file is opened in Excel or Sheets: the
header is row 1 (when the file starts with it), blank rows still count, and a quoted cell that
spans several lines counts once. Messages can then say "row 17" and the merchant finds it.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Iterator, Sequence
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Final, Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.errors import UnprocessableContent, ValidationFailed

if TYPE_CHECKING:
    from _csv import Reader as CsvReader  # what csv.reader() returns

__all__ = [
    "PRODUCT_FIELDS",
    "ColumnMapping",
    "CsvEmpty",
    "CsvPreview",
    "CsvRow",
    "CsvTooLarge",
    "CsvUnreadable",
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
    "group_rows",
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


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


ProductField = Literal["name", "sku", "description", "category", "price", "image_urls", "tags", "external_id"]
ScalarField = Literal["name", "sku", "description", "category", "price", "tags", "external_id"]
PRODUCT_FIELDS: Final[tuple[ProductField, ...]] = get_args(ProductField)
# Also the order auto_map fills them in: the name first, so it gets the best candidate header.
_SCALAR_FIELDS: Final[tuple[ScalarField, ...]] = get_args(ScalarField)

RowProblemCode = Literal["missing_name", "invalid_price", "invalid_image_url", "too_long"]
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


class CsvRow(_Model):
    """One data row; ``number`` is its spreadsheet row (header = 1, first data row = 2)."""

    number: int = Field(ge=1)
    values: dict[str, str]


class ParsedCsv(_Model):
    """A decoded table; every row has exactly one value per header."""

    headers: tuple[str, ...]
    rows: tuple[CsvRow, ...]
    delimiter: str
    encoding: str
    # Rows with missing cells or non-empty cells beyond the header; kept (padded/truncated).
    ragged_rows: tuple[int, ...] = ()


class ColumnMapping(_Model):
    """Which CSV header feeds which product field; ``None`` / ``()`` is unmapped."""

    name: str | None = None
    sku: str | None = None
    description: str | None = None
    category: str | None = None
    price: str | None = None
    image_urls: tuple[str, ...] = ()
    tags: str | None = None
    external_id: str | None = None

    @field_validator("name", "sku", "description", "category", "price", "tags", "external_id")
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

    def used_headers(self) -> set[str]:
        used = {h for h in self.scalar_headers().values() if h is not None}
        return used | set(self.image_urls)


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
    delimiter: str
    encoding: str
    total_rows: int
    importable_rows: int
    mapping: ColumnMapping
    sample: tuple[PreviewRow, ...]
    warnings: tuple[PreviewWarning, ...]


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


def decode_csv(data: bytes) -> tuple[str, str]:
    """Decode CSV bytes to text; returns ``(text, codec name)`` with any BOM removed.

    UTF-8 (with or without BOM) and UTF-16 with a BOM are recognised; anything else
    that is not valid UTF-8 is read as cp1252, which is what Excel on Windows writes
    ("CSV (Comma delimited)"). Images, workbooks and other binary content raise
    :class:`CsvUnreadable`.
    """
    kind = _binary_kind(data)
    if kind is not None:
        raise CsvUnreadable(f"This looks like {kind}, not a CSV file. Export the sheet as CSV and upload that.")
    encoding: str | None = None
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
            try:
                text, encoding = data.decode("cp1252"), "cp1252"
            except UnicodeDecodeError:
                # cp1252 leaves five bytes undefined; latin-1 maps every byte, so never fails.
                text, encoding = data.decode("latin-1"), "latin-1"
    if "\x00" in text:
        raise CsvUnreadable("The file contains binary data, not CSV text.")
    return text, encoding


# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------

_DELIMITERS: Final[tuple[str, ...]] = (",", ";", "\t", "|")
_SAMPLE_CHARS: Final = 64_000
_SAMPLE_RECORDS: Final = 50
_SNIFF_CHARS: Final = 8_000  # csv.Sniffer's regexes get slow on big samples
_SEP_DIRECTIVE: Final = re.compile(r"\A\"?sep=(.)\"?[ \t]*(?:\r\n|\r|\n|\Z)")


def _reader(text: str, delimiter: str) -> CsvReader:
    # newline="" hands \r\n, \r and \n to the csv module untranslated, which is what it needs to
    # keep line breaks inside quoted cells; str.splitlines would also split on \x85 etc.
    return csv.reader(
        io.StringIO(text, newline=""),
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


def _records(text: str, delimiter: str) -> Iterator[list[str]]:
    reader = _reader(text, delimiter)
    try:
        yield from reader
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


def parse_csv(
    data: bytes, *, max_rows: int = 50_000, max_columns: int = 200, max_field_chars: int = 100_000
) -> ParsedCsv:
    """Decode and parse a CSV upload into headers and rows.

    The first non-blank record is the header; blank records (no non-whitespace cell) are
    skipped but still counted for row numbers. An Excel ``sep=;`` first line is honoured.
    Cells longer than the csv module's own limit (131072 by default) also raise CsvTooLarge.
    """
    text, encoding = decode_csv(data)
    directive = _SEP_DIRECTIVE.match(text)
    delimiter: str
    if directive is not None and directive.group(1) in _DELIMITERS:
        # Excel hides this line, so the header that follows is still row 1.
        delimiter, text = directive.group(1), text[directive.end() :]
    else:
        delimiter = detect_delimiter(text)

    header: list[str] | None = None
    records: list[tuple[int, list[str]]] = []
    for number, record in enumerate(_records(text, delimiter), start=1):
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
            header = record
            continue
        if len(records) >= max_rows:
            raise CsvTooLarge(f"The file has more than {max_rows} rows.", limit=max_rows)
        records.append((number, record))

    if header is None:
        raise CsvEmpty("The file is empty.")
    if not records:
        raise CsvEmpty("The file has a header row but no data rows.")

    names = [" ".join(h.split()) for h in header]
    width = len(names)
    # Excel often exports phantom trailing columns ("a,b,c,,"): drop those with no name and no value
    # in any row, so they neither show up as "Column 4" nor make rows look ragged.
    while width > 1 and not names[width - 1] and all(len(r) < width or not r[width - 1].strip() for _, r in records):
        width -= 1
    headers = _unique_headers(names[:width])

    rows: list[CsvRow] = []
    ragged: list[int] = []
    padding = [""] * width
    for number, record in records:
        if not _fits(record, width):
            ragged.append(number)
        cells = record[:width] + padding[len(record) :]
        rows.append(CsvRow(number=number, values=dict(zip(headers, cells, strict=True))))
    return ParsedCsv(
        headers=headers, rows=tuple(rows), delimiter=delimiter, encoding=encoding, ragged_rows=tuple(ragged)
    )


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
    for field, header in mapping.scalar_headers().items():
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


_CONTROL_CHARS: Final = re.compile(r"[\x00-\x1f\x7f]")


def _clean_url(token: str) -> str | None:
    if token.startswith("//"):
        token = "https:" + token  # protocol-relative CDN links
    if len(token) > MAX_URL_CHARS or _CONTROL_CHARS.search(token):
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
    external id, unparseable price (a wrong price is worse than a failed row). Warnings (the
    draft is still made): rejected image URLs, more than 20 images, over-long description or
    tags (cut).
    """
    number = row.number
    problems: list[RowProblem] = []

    def cell(header: str | None) -> str:
        return row.values.get(header, "").strip() if header is not None else ""

    def problem(code: RowProblemCode, field: ProductField, message: str, severity: Severity = "error") -> None:
        problems.append(RowProblem(row_number=number, code=code, message=message, field=field, severity=severity))

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

    description = cell(mapping.description) or None
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
    )
    return RowResult(draft=draft, problems=tuple(problems))


# --------------------------------------------------------------------------------------------------
# Shopify handle groups
# --------------------------------------------------------------------------------------------------


def _merge_images(first: CsvRow, extra: Sequence[CsvRow], image_headers: Sequence[str]) -> CsvRow:
    if not extra or not image_headers:
        return first
    values = dict(first.values)
    for header in image_headers:
        cells = (r.values.get(header, "").strip() for r in (first, *extra))
        # Newline-joined: split_image_urls splits on it, and it reads well in a preview.
        values[header] = "\n".join(c for c in cells if c)
    return first.model_copy(update={"values": values})


def group_rows(parsed: ParsedCsv, mapping: ColumnMapping, handle_header: str | None = None) -> tuple[CsvRow, ...]:
    """The rows to import, with Shopify continuation rows folded into their first row.

    Shopify exports one row per extra image (and per variant) with the same Handle and
    an empty Title. Such a row (handle seen before, name cell empty) is dropped and its
    image cells are appended (newline-separated) to the first row of the handle.
    ``handle_header`` defaults to a header named "Handle" (any case); without one the
    rows are returned as they are. Grouping grouped rows changes nothing.
    """
    handle = handle_header
    if handle is None:
        handle = next((h for h in parsed.headers if _norm(h) == "handle"), None)
        if handle is None:
            return parsed.rows
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
    if len(groups) == len(parsed.rows):
        return parsed.rows
    return tuple(_merge_images(first, extra, mapping.image_urls) for first, extra in groups)


# --------------------------------------------------------------------------------------------------
# Preview
# --------------------------------------------------------------------------------------------------

_LISTED_ROWS: Final = 20
_MAX_DUPLICATE_SKU_WARNINGS: Final = 50
_CODE_ORDER: Final[tuple[RowProblemCode, ...]] = ("missing_name", "invalid_price", "too_long", "invalid_image_url")
_PROBLEM_LABELS: Final[dict[RowProblemCode, str]] = {
    "missing_name": "no name",
    "invalid_price": "an invalid price",
    "too_long": "a value that is too long",
    "invalid_image_url": "invalid image URLs",
}


def _mapped_values(row: CsvRow, mapping: ColumnMapping) -> dict[str, str]:
    values: dict[str, str] = {
        field: row.values.get(header, "") for field, header in mapping.scalar_headers().items() if header is not None
    }
    if mapping.image_urls:
        cells = (row.values.get(h, "").strip() for h in mapping.image_urls)
        values["image_urls"] = "\n".join(c for c in cells if c)
    return values


def _rows_word(count: int, singular_verb: str = "", plural_verb: str = "") -> str:
    """For example "1 row has" / "3 rows have": merchants read these messages as they are."""
    text = f"1 row {singular_verb}" if count == 1 else f"{count} rows {plural_verb}"
    return text.rstrip()


def build_preview(parsed: ParsedCsv, mapping: ColumnMapping, *, sample_size: int = 10) -> CsvPreview:
    """Summarise what an import with ``mapping`` would do: a sample plus warnings over all rows.

    Rows are grouped as the import groups them (:func:`group_rows`). The mapping is not
    validated here: an incomplete mapping still gets a useful preview. Duplicate SKUs and missing
    images count importable rows only, since failed rows are already reported as ``bad_row``.
    At most 50 ``duplicate_sku`` warnings are given.
    """
    # Grouped like the import itself, so the counts shown are the counts imported.
    rows = group_rows(parsed, mapping)
    results = [(row, row_to_draft(row, mapping)) for row in rows]
    sample = tuple(
        PreviewRow(
            row_number=row.number, values=_mapped_values(row, mapping), draft=result.draft, problems=result.problems
        )
        for row, result in results[:sample_size]
    )
    warnings: list[PreviewWarning] = []

    by_problem: dict[tuple[Severity, RowProblemCode], dict[int, None]] = {}
    for row, result in results:
        for p in result.problems:
            # A skipped row's warnings do not matter: the row is not imported anyway.
            if p.severity == "error" or result.draft is not None:
                by_problem.setdefault((p.severity, p.code), {})[row.number] = None
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

    drafts = [result.draft for _, result in results if result.draft is not None]
    without_images = [d.row_number for d in drafts if not d.image_urls]
    if without_images:
        hint = "" if mapping.image_urls else " (no column is mapped to images)"
        warnings.append(
            PreviewWarning(
                code="missing_images",
                message=f"{_rows_word(len(without_images), 'has', 'have')} no image URL{hint}.",
                count=len(without_images),
                row_numbers=tuple(without_images[:_LISTED_ROWS]),
                field="image_urls",
            )
        )

    by_sku: dict[str, list[ProductDraft]] = {}
    for draft in drafts:
        if draft.sku is not None:
            by_sku.setdefault(draft.sku.casefold(), []).append(draft)
    duplicates = [group for group in by_sku.values() if len(group) > 1]
    for group in duplicates[:_MAX_DUPLICATE_SKU_WARNINGS]:
        sku = group[0].sku
        warnings.append(
            PreviewWarning(
                code="duplicate_sku",
                message=f"SKU {sku!r} appears in {len(group)} rows.",
                count=len(group),
                row_numbers=tuple(d.row_number for d in group[:_LISTED_ROWS]),
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
        importable_rows=len(drafts),
        mapping=mapping,
        sample=sample,
        warnings=tuple(warnings),
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
