"""Excel workbooks (.xlsx) for the product import: the ZIP checked, then one sheet read as a table.

An .xlsx file is a ZIP archive of XML parts. Before openpyxl opens it, :func:`inspect_workbook`
reads the archive's directory with :mod:`zipfile` and refuses what no spreadsheet needs: more than
``MAX_ENTRIES`` parts, more than ``max_uncompressed_bytes`` in all once unpacked, a part that unpacks
to more than ``MAX_RATIO`` times its packed size (a zip bomb), encrypted parts. The sizes checked are
the ones the directory declares, and they hold: :mod:`zipfile` never returns more than a part's
declared size (it stops there, and the CRC check then fails the read).

:func:`parse_xlsx` then reads one worksheet (the first, or the one named) with openpyxl in read-only
mode, row by row, and hands the rows to the same table builder as a CSV file
(:func:`shared.catalog.csv_parsing.build_table`), so the mapping, validation and row limits are the
CSV import's. How cells read:

* formulas: the value Excel saved with the file (``data_only``); never evaluated here. A formula saved
  without a value (a file written by a program that does not calculate) reads as blank;
* numbers as a person reads them: ``19.9`` (not ``19.900000000000002``), ``12`` (not ``12.0``), a
  percent format as ``25%``, a zero-padded format (``00000``) with its zeros, fixed decimals
  (``0.00``) with their decimals;
* dates as ISO text (``2024-03-01``, ``2024-03-01 14:30``), times as ``14:30``, booleans as
  ``TRUE``/``FALSE``, error cells as Excel shows them (``#N/A``);
* merged cells: every cell of a merged range reads as its top-left cell (read-only mode does not
  see merges: they are read from the sheet's XML, ``<mergeCell ref="A2:A5"/>``), except in rows
  that are otherwise blank (they stay blank and are skipped);
* blank rows are skipped (their numbers still count, as for CSV), hidden rows and columns are read.

Macros (``xl/vbaProject.bin``) and links to other workbooks (``xl/externalLinks/``) are never run or
followed; the preview notes that they were ignored. A macro-enabled workbook (.xlsm) or an old .xls
file is refused at upload (see :mod:`shared.catalog.uploads`).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any, Final

from shared.catalog.csv_parsing import CsvEmpty, CsvTooLarge, ParsedCsv, build_table
from shared.errors import UnprocessableContent, ValidationFailed

if TYPE_CHECKING:
    import zipfile

    from openpyxl.workbook.workbook import Workbook

__all__ = [
    "MAX_ENTRIES",
    "MAX_RATIO",
    "XLSX_CONTENT_TYPE",
    "XLSX_ERRORS",
    "WorkbookFacts",
    "XlsxTooLarge",
    "XlsxUnreadable",
    "inspect_workbook",
    "is_zip",
    "parse_xlsx",
    "workbook_sheets",
]

XLSX_CONTENT_TYPE: Final = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
MAX_ENTRIES: Final = 1_000  # a workbook has a dozen parts, a few hundred with many sheets and images
MAX_RATIO: Final = 200  # sheet XML packs 10 to 50 times; a zip bomb 1,000 times
_RATIO_FROM_BYTES: Final = 1024 * 1024  # small parts may pack better than that; they cannot hurt
MAX_MERGED_RANGES: Final = 10_000
_ZIP_MAGIC: Final = b"PK\x03\x04"
_OLE_MAGIC: Final = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_WORKBOOK_PART: Final = "xl/workbook.xml"
_MACROS: Final = "xl/vbaProject.bin"
_EXTERNAL_LINKS: Final = "xl/externalLinks/"
MACROS_NOTE: Final = "The workbook contains macros; they were ignored (never run)."
LINKS_NOTE: Final = (
    "The workbook links to other workbooks; the links were not followed: linked cells read as the values "
    "saved in this file."
)


class XlsxUnreadable(UnprocessableContent):
    code = "xlsx_unreadable"
    title = "The file is not a readable Excel workbook"


class XlsxTooLarge(UnprocessableContent):
    code = "xlsx_too_large"
    title = "The Excel workbook is too large once unpacked"


# What reading a workbook can answer with besides the CSV problems (rows, columns, empty sheet).
XLSX_ERRORS = (XlsxUnreadable, XlsxTooLarge)


def is_zip(data: bytes) -> bool:
    """Whether ``data`` starts like a ZIP archive (an .xlsx workbook, or another ZIP)."""
    return data.startswith(_ZIP_MAGIC)


@dataclass(frozen=True)
class WorkbookFacts:
    """What the archive's directory says: its parts, and what is ignored."""

    entries: int
    uncompressed_bytes: int
    has_macros: bool
    has_external_links: bool

    @property
    def notes(self) -> tuple[str, ...]:
        return (*((MACROS_NOTE,) if self.has_macros else ()), *((LINKS_NOTE,) if self.has_external_links else ()))


def inspect_workbook(data: bytes, *, max_uncompressed_bytes: int) -> WorkbookFacts:
    """Check the archive before anything unpacks it (see the module docstring); 422 when refused."""
    import zipfile  # here: the API's cold start does not pay for it

    if data.startswith(_OLE_MAGIC):
        raise XlsxUnreadable(
            "This is an old Excel (.xls) workbook or a password-protected one; save it as .xlsx without a "
            "password (or export the sheet as CSV) and upload that."
        )
    if not is_zip(data):
        raise XlsxUnreadable("The file is not an .xlsx workbook (it is no ZIP archive).")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise XlsxUnreadable(f"The workbook's ZIP archive is damaged: {exc}.") from exc
    if len(infos) > MAX_ENTRIES:
        raise XlsxTooLarge(f"The workbook has {len(infos)} parts (limit {MAX_ENTRIES}).", limit=MAX_ENTRIES)
    total = 0
    names: set[str] = set()
    for info in infos:
        if info.flag_bits & 0x1:
            raise XlsxUnreadable("The workbook is encrypted; save it without a password and upload it again.")
        total += info.file_size
        if total > max_uncompressed_bytes:
            raise XlsxTooLarge(
                f"The workbook unpacks to more than {max_uncompressed_bytes} bytes; split it or export the sheet "
                "as CSV.",
                limit=max_uncompressed_bytes,
            )
        if info.file_size > _RATIO_FROM_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise XlsxTooLarge(
                f"The workbook's part {info.filename[:100]!r} unpacks to {info.file_size} bytes from "
                f"{info.compress_size}: more than {MAX_RATIO} times, which no spreadsheet needs (a zip bomb?).",
                limit=MAX_RATIO,
            )
        names.add(info.filename)
    if _WORKBOOK_PART not in names:
        raise XlsxUnreadable(
            "The ZIP archive is no Excel workbook (it has no xl/workbook.xml); an .ods or .numbers file? "
            "Save it as .xlsx or CSV."
        )
    return WorkbookFacts(
        entries=len(infos),
        uncompressed_bytes=total,
        has_macros=_MACROS in names,
        has_external_links=any(name.startswith(_EXTERNAL_LINKS) for name in names),
    )


def _open(data: bytes) -> Workbook:
    from openpyxl import load_workbook

    try:
        # keep_links=False: external link parts are not even read; keep_vba=False: macros are dropped.
        return load_workbook(io.BytesIO(data), read_only=True, data_only=True, keep_links=False, keep_vba=False)
    except Exception as exc:  # openpyxl raises whatever its XML reader or zipfile raised
        raise XlsxUnreadable(f"The workbook cannot be read: {type(exc).__name__}: {str(exc)[:200]}") from exc


def workbook_sheets(data: bytes, *, max_uncompressed_bytes: int) -> tuple[WorkbookFacts, tuple[str, ...]]:
    """Check the archive and open the workbook (what an upload's completion does): its worksheets' names."""
    facts = inspect_workbook(data, max_uncompressed_bytes=max_uncompressed_bytes)
    workbook = _open(data)
    try:
        sheets = tuple(sheet.title for sheet in workbook.worksheets)
    finally:
        workbook.close()
    if not sheets:
        raise CsvEmpty("The workbook has no worksheet.")
    return facts, sheets


# -- cells ---------------------------------------------------------------------------------------------

_ZEROS: Final = re.compile(r"0+")
_FIXED: Final = re.compile(r"(?:#,##)?0\.(0+)")
_PERCENT: Final = re.compile(r"0(?:\.(0+))?%")


def _number(value: float | int, number_format: str) -> str:
    fmt = number_format.strip()
    if isinstance(value, int) or (value.is_integer() and abs(value) < 1e15):
        integer = int(value)
        if _ZEROS.fullmatch(fmt) and integer >= 0:
            return str(integer).zfill(len(fmt))  # a code kept with its leading zeros: "00123"
        if (match := _FIXED.fullmatch(fmt)) is not None:
            return f"{integer}.{'0' * len(match.group(1))}"
        if (match := _PERCENT.fullmatch(fmt)) is not None:
            return _percent(float(value), match.group(1))
        return str(integer)
    if (match := _PERCENT.fullmatch(fmt)) is not None:
        return _percent(value, match.group(1))
    if (match := _FIXED.fullmatch(fmt)) is not None:
        return f"{value:.{len(match.group(1))}f}"
    # 15 significant digits: what Excel shows, without the binary float's noise.
    return f"{value:.15g}"


def _percent(value: float, decimals: str | None) -> str:
    places = len(decimals or "")
    return f"{value * 100:.{places}f}%"


def _date_text(value: datetime) -> str:
    if value.time() == time(0):
        return value.date().isoformat()
    return value.isoformat(sep=" ", timespec="seconds" if value.second or value.microsecond else "minutes")


def cell_text(value: Any, number_format: str = "General") -> str:
    """A cell's value as the text a person reads in Excel (see the module docstring)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return _number(value, number_format or "General")
    if isinstance(value, datetime):
        return _date_text(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, time):
        return value.isoformat(timespec="seconds" if value.second or value.microsecond else "minutes")
    if isinstance(value, timedelta):
        return str(value)
    return str(value)


# -- merged cells --------------------------------------------------------------------------------------

_MERGE: Final = re.compile(
    rb"<(?:\w+:)?mergeCell\b[^>]*?\bref=\"([A-Z]{1,3})([0-9]{1,7})(?::([A-Z]{1,3})([0-9]{1,7}))?\""
)
_SCAN_CHUNK: Final = 1024 * 1024
_SCAN_OVERLAP: Final = 512


def _column_number(letters: bytes) -> int:
    number = 0
    for char in letters:
        number = number * 26 + (char - 64)
    return number


@dataclass(frozen=True)
class _Merge:
    top: int
    left: int
    bottom: int
    right: int


def _merged_ranges(archive: zipfile.ZipFile, part: str, max_columns: int) -> list[_Merge]:
    """The sheet's merged ranges, read from its XML in a byte scan (``<mergeCells>`` follows the rows)."""
    merges: list[_Merge] = []
    seen_to = 0  # matches ending before this offset of the text were taken already
    buffer = b""
    offset = 0  # of buffer[0] in the part
    with archive.open(part) as source:
        while True:
            chunk = source.read(_SCAN_CHUNK)
            if not chunk and not buffer:
                break
            buffer += chunk
            for match in _MERGE.finditer(buffer):
                if offset + match.end() <= seen_to:
                    continue
                seen_to = offset + match.end()
                left, top = _column_number(match.group(1)), int(match.group(2))
                right = _column_number(match.group(3)) if match.group(3) else left
                bottom = int(match.group(4)) if match.group(4) else top
                if left > max_columns or (right, bottom) == (left, top):
                    continue  # beyond what is read, or a single cell
                merges.append(_Merge(top=top, left=left, bottom=bottom, right=min(right, max_columns)))
                if len(merges) > MAX_MERGED_RANGES:
                    raise XlsxTooLarge(
                        f"The sheet has more than {MAX_MERGED_RANGES} merged ranges.", limit=MAX_MERGED_RANGES
                    )
            if not chunk:
                break
            keep = buffer[-_SCAN_OVERLAP:]
            offset += len(buffer) - len(keep)
            buffer = keep
    return merges


@dataclass
class _Filler:
    """Fills every cell of a merged range with its top-left cell's text, row by row."""

    merges: list[_Merge]
    by_top: dict[int, list[_Merge]] = field(default_factory=dict)
    active: list[tuple[_Merge, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for merge in self.merges:
            self.by_top.setdefault(merge.top, []).append(merge)

    def fill(self, number: int, cells: list[str]) -> list[str]:
        for merge in self.by_top.get(number, ()):
            value = cells[merge.left - 1] if merge.left - 1 < len(cells) else ""
            if value:
                self.active.append((merge, value))
        if not self.active:
            return cells
        self.active = [(merge, value) for merge, value in self.active if merge.bottom >= number]
        if not any(cells):
            return cells  # a blank row stays blank: a merged cell beside it does not make it a product
        for merge, value in self.active:
            if len(cells) < merge.right:
                cells.extend([""] * (merge.right - len(cells)))
            for column in range(merge.left, merge.right + 1):
                cells[column - 1] = value
        return cells


# -- sheets --------------------------------------------------------------------------------------------


def _choose(workbook: Workbook, sheet: str | None) -> Any:
    worksheets = list(workbook.worksheets)
    if not worksheets:
        raise CsvEmpty("The workbook has no worksheet.")
    if sheet is None:
        return worksheets[0]
    for candidate in worksheets:
        if candidate.title == sheet:
            return candidate
    names = ", ".join(repr(w.title) for w in worksheets[:20])
    raise ValidationFailed(
        f"The workbook has no worksheet named {sheet!r}; it has {names}.",
        errors=[{"field": "sheet", "in": "body", "message": "no such worksheet", "type": "unknown_sheet"}],
    )


def _text(cell: Any) -> str:
    value = cell.value
    if value is None:
        return ""
    if isinstance(value, str):
        return value  # most cells: no number format to look up
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _number(value, cell.number_format or "General")
    return cell_text(value)


def _records(worksheet: Any, max_columns: int, filler: _Filler) -> Iterator[tuple[int, Sequence[str]]]:
    # Dimensions as the file states them are not trusted (a sheet claiming A1:XFD1048576 would be read
    # as a million rows of 16,384 cells): rows are read as they are, at most max_columns + 1 wide (a
    # value in the extra column tells that the sheet is too wide).
    from openpyxl.cell.read_only import EMPTY_CELL

    worksheet.reset_dimensions()
    for number, row in enumerate(worksheet.iter_rows(min_row=1, max_col=max_columns + 1), start=1):
        # Each row comes padded to the width asked for: the padding is one shared empty cell.
        end = len(row)
        while end and row[end - 1] is EMPTY_CELL:
            end -= 1
        cells = [_text(cell) for cell in row[:end]]
        while cells and not cells[-1]:
            cells.pop()
        if len(cells) > max_columns:
            raise CsvTooLarge(
                f"Row {number} has values beyond column {max_columns}: the sheet is wider than {max_columns} columns.",
                row_number=number,
                limit=max_columns,
            )
        yield number, filler.fill(number, cells)


def parse_xlsx(
    data: bytes,
    *,
    sheet: str | None = None,
    max_uncompressed_bytes: int,
    max_rows: int = 50_000,
    max_columns: int = 200,
    max_field_chars: int = 100_000,
    max_header_chars: int = 1_000,
    max_cells: int = 5_000_000,
) -> ParsedCsv:
    """Read one worksheet of an .xlsx workbook into the table a CSV file gives (see the module docstring).

    The limits are :func:`shared.catalog.csv_parsing.parse_csv`'s, enforced while the rows stream in
    (the import's ``IMPORT_MAX_ROWS`` stops a 100,000-row sheet at its 50,001st row)."""
    facts = inspect_workbook(data, max_uncompressed_bytes=max_uncompressed_bytes)
    workbook = _open(data)
    try:
        worksheet = _choose(workbook, sheet)
        sheets = tuple(w.title for w in workbook.worksheets)
        part = getattr(worksheet, "_worksheet_path", None)
        archive = getattr(workbook, "_archive", None)
        merges = _merged_ranges(archive, part, max_columns) if isinstance(part, str) and archive else []
        try:
            headers, rows, ragged = build_table(
                _records(worksheet, max_columns, _Filler(merges)),
                max_rows=max_rows,
                max_columns=max_columns,
                max_field_chars=max_field_chars,
                max_header_chars=max_header_chars,
                max_cells=max_cells,
                pad=True,
            )
        except CsvEmpty as empty:
            raise CsvEmpty(f"The worksheet {worksheet.title!r} {_without_the_file(empty.detail)}") from empty
        except (UnprocessableContent, ValidationFailed):
            raise
        except Exception as exc:  # the sheet's XML is broken past the part openpyxl checked at open
            raise XlsxUnreadable(f"The worksheet cannot be read: {type(exc).__name__}: {str(exc)[:200]}") from exc
        title = worksheet.title
    finally:
        workbook.close()
    return ParsedCsv(
        headers=headers,
        rows=rows,
        delimiter="",
        encoding="",
        ragged_rows=ragged,
        format="xlsx",
        sheet=title,
        sheets=sheets,
        notes=facts.notes,
    )


def _without_the_file(detail: str) -> str:
    """ "The file is empty." -> "is empty." (the sheet's message names the sheet)."""
    return detail.removeprefix("The file ").strip()
