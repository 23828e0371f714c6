"""Reading .xlsx workbooks for the import: values as a person reads them, merged cells, blank rows,
the chosen sheet, and the archive checks (zip bombs, size, parts, encryption, macros, links)."""

from __future__ import annotations

import io
import time
import zipfile
from datetime import date, datetime
from datetime import time as clock_time

import pytest

from shared.catalog.csv_parsing import CsvEmpty, CsvTooLarge, auto_map, build_preview
from shared.catalog.xlsx import (
    LINKS_NOTE,
    MACROS_NOTE,
    MAX_ENTRIES,
    XlsxTooLarge,
    XlsxUnreadable,
    cell_text,
    inspect_workbook,
    parse_xlsx,
    workbook_sheets,
)
from shared.errors import ValidationFailed
from tests import xlsx_files

LIMIT = 100 * 1024 * 1024
HEADER = ["Name", "SKU", "Price", "Category", "Added"]


def parse(data: bytes, **options: object) -> dict[int, dict[str, str]]:
    parsed = parse_xlsx(data, max_uncompressed_bytes=LIMIT, **options)  # type: ignore[arg-type]
    return {row.number: dict(row.values) for row in parsed.rows}


# -- cells ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "number_format", "text"),
    [
        (19.900000000000002, "General", "19.9"),
        (0.1 + 0.2, "General", "0.3"),
        (12.0, "General", "12"),
        (12, "General", "12"),
        (1234567.5, "General", "1234567.5"),
        (123, "00000", "00123"),
        (19.9, "0.00", "19.90"),
        (20.0, "#,##0.00", "20.00"),
        (0.25, "0%", "25%"),
        (0.125, "0.0%", "12.5%"),
        (True, "General", "TRUE"),
        (False, "General", "FALSE"),
        (datetime(2024, 3, 1), "yyyy-mm-dd", "2024-03-01"),
        (datetime(2024, 3, 1, 14, 30), "General", "2024-03-01 14:30"),
        (datetime(2024, 3, 1, 14, 30, 5), "General", "2024-03-01 14:30:05"),
        (date(2024, 1, 2), "General", "2024-01-02"),
        (clock_time(9, 5), "h:mm", "09:05"),
        ("#N/A", "General", "#N/A"),
        (None, "General", ""),
        ("  kept as typed ", "General", "  kept as typed "),
    ],
)
def test_cells_read_as_a_person_reads_them(value: object, number_format: str, text: str) -> None:
    assert cell_text(value, number_format) == text


def test_a_sheet_reads_like_its_csv() -> None:
    data = xlsx_files.workbook(
        [
            HEADER,
            ["Mug", 123, 19.900000000000002, "Kitchen", datetime(2024, 3, 1)],
            ["Cup", "C-1", 7, "Kitchen", datetime(2024, 3, 1, 14, 30)],
        ],
        formats={"B2": "00000"},
    )
    parsed = parse_xlsx(data, max_uncompressed_bytes=LIMIT)
    assert parsed.headers == tuple(HEADER)
    assert (parsed.format, parsed.sheet, parsed.sheets, parsed.notes) == ("xlsx", "Products", ("Products",), ())
    assert {row.number: dict(row.values) for row in parsed.rows} == {
        2: {"Name": "Mug", "SKU": "00123", "Price": "19.9", "Category": "Kitchen", "Added": "2024-03-01"},
        3: {"Name": "Cup", "SKU": "C-1", "Price": "7", "Category": "Kitchen", "Added": "2024-03-01 14:30"},
    }
    preview = build_preview(parsed, auto_map(parsed.headers))
    assert preview.format == "xlsx" and preview.sheet == "Products"
    assert preview.importable_rows == 2
    assert preview.sample[0].draft is not None and str(preview.sample[0].draft.price) == "19.90"


def test_formulas_read_as_the_values_excel_saved() -> None:
    data = xlsx_files.workbook([["Name", "Price", "Double"], ["Mug", 19.9, "=B2*2"], ["Cup", 5, "=B3*2"]])
    # Excel saves each formula's last value; openpyxl (like any program that does not calculate) saves none.
    data = xlsx_files.with_cached_values(data, {"C2": "39.799999999999997"})
    rows = parse(data)
    assert rows[2]["Double"] == "39.8"  # the saved value, without float noise; the formula is not evaluated
    assert rows[3]["Double"] == ""  # no saved value: blank, never "=B3*2"


def test_merged_cells_read_as_their_top_left_cell() -> None:
    data = xlsx_files.workbook(
        [
            HEADER,
            ["Mug", "M-1", 5, "Kitchen", None],
            ["Cup", "C-1", 4, None, None],
            [],
            ["Bowl", "B-1", 3, None, None],
        ],
        merges=["D2:D5", "A6:B6"],
    )
    rows = parse(data)
    assert [rows[n]["Category"] for n in (2, 3, 5)] == ["Kitchen", "Kitchen", "Kitchen"]
    assert 4 not in rows  # a blank row inside the merged range stays blank
    assert 6 not in rows  # an empty merged range is a blank row


def test_blank_rows_are_skipped_and_still_counted() -> None:
    data = xlsx_files.workbook(
        [[], ["Name", "SKU"], ["Mug", "M-1"], [], [None, None], ["", "   "], ["Cup", "C-1"]],
    )
    parsed = parse_xlsx(data, max_uncompressed_bytes=LIMIT)
    assert parsed.headers == ("Name", "SKU")
    assert [row.number for row in parsed.rows] == [3, 7]  # what the merchant sees in Excel
    assert parsed.ragged_rows == ()  # rows end at their last value: short rows are not ragged


def test_short_rows_and_a_value_beyond_the_header() -> None:
    data = xlsx_files.workbook([["Name", "SKU", "Price"], ["Mug"], ["Cup", "C-1", 3, "stray"]])
    parsed = parse_xlsx(data, max_uncompressed_bytes=LIMIT)
    assert dict(parsed.rows[0].values) == {"Name": "Mug", "SKU": "", "Price": ""}
    assert parsed.ragged_rows == (3,)


def test_the_sheet_is_the_first_or_the_one_chosen() -> None:
    data = xlsx_files.workbook(
        [["Name"], ["First sheet's product"]], more_sheets={"Hoodies": [["Name", "SKU"], ["Hoodie", "H-1"]]}
    )
    assert parse(data) == {2: {"Name": "First sheet's product"}}
    chosen = parse_xlsx(data, sheet="Hoodies", max_uncompressed_bytes=LIMIT)
    assert chosen.sheet == "Hoodies" and chosen.sheets == ("Products", "Hoodies")
    assert dict(chosen.rows[0].values) == {"Name": "Hoodie", "SKU": "H-1"}
    with pytest.raises(ValidationFailed) as refused:
        parse_xlsx(data, sheet="Nope", max_uncompressed_bytes=LIMIT)
    assert refused.value.extensions["errors"][0]["field"] == "sheet"
    assert "'Hoodies'" in refused.value.detail
    facts, sheets = workbook_sheets(data, max_uncompressed_bytes=LIMIT)
    assert sheets == ("Products", "Hoodies") and facts.notes == ()


def test_an_empty_sheet_or_a_header_alone_is_refused() -> None:
    with pytest.raises(CsvEmpty, match="'Products' is empty"):
        parse_xlsx(xlsx_files.workbook([]), max_uncompressed_bytes=LIMIT)
    with pytest.raises(CsvEmpty, match="no data rows"):
        parse_xlsx(xlsx_files.workbook([["Name", "SKU"]]), max_uncompressed_bytes=LIMIT)


# -- limits --------------------------------------------------------------------------------------------


def test_100000_rows_stop_at_the_row_limit_while_streaming() -> None:
    data = xlsx_files.workbook(
        [["Name", "SKU"], *([f"Product {n}", f"P-{n}"] for n in range(100_000))], write_only=True
    )
    started = time.perf_counter()
    with pytest.raises(CsvTooLarge, match="more than 50000 rows") as refused:
        parse_xlsx(data, max_uncompressed_bytes=LIMIT, max_rows=50_000)
    assert refused.value.extensions["limit"] == 50_000
    assert time.perf_counter() - started < 30  # stopped at row 50,002, not after reading all


def test_a_lying_dimension_is_not_trusted() -> None:
    data = xlsx_files.with_dimension(xlsx_files.workbook([["Name"], ["Mug"]]), "A1:XFD1048576")
    started = time.perf_counter()
    assert parse(data) == {2: {"Name": "Mug"}}
    assert time.perf_counter() - started < 5


def test_too_many_columns_are_refused() -> None:
    data = xlsx_files.workbook([[f"c{n}" for n in range(250)], ["x"] * 250])
    with pytest.raises(CsvTooLarge, match="wider than 200 columns"):
        parse_xlsx(data, max_uncompressed_bytes=LIMIT)


def test_a_zip_bomb_is_refused_before_anything_unpacks() -> None:
    data = xlsx_files.bomb(xlsx_files.workbook([["Name"], ["Mug"]]))
    with pytest.raises(XlsxTooLarge, match="more than 200 times") as refused:
        inspect_workbook(data, max_uncompressed_bytes=LIMIT)
    assert "xl/media/padding.bin" in refused.value.detail
    with pytest.raises(XlsxTooLarge):
        parse_xlsx(data, max_uncompressed_bytes=LIMIT)


def test_the_unpacked_size_is_capped() -> None:
    data = xlsx_files.workbook([["Name", "Description"], *([f"P{n}", "x" * 500] for n in range(200))])
    with pytest.raises(XlsxTooLarge, match="unpacks to more than 50000 bytes") as refused:
        inspect_workbook(data, max_uncompressed_bytes=50_000)
    assert refused.value.status == 422


def test_too_many_parts_are_refused() -> None:
    data = xlsx_files.many_parts(xlsx_files.workbook([["Name"], ["Mug"]]), MAX_ENTRIES)
    with pytest.raises(XlsxTooLarge, match="parts"):
        inspect_workbook(data, max_uncompressed_bytes=LIMIT)


def test_encrypted_parts_are_refused() -> None:
    data = xlsx_files.encrypted(xlsx_files.workbook([["Name"], ["Mug"]]))
    assert zipfile.ZipFile(io.BytesIO(data)).getinfo(xlsx_files.SHEET1).flag_bits & 1
    with pytest.raises(XlsxUnreadable, match="encrypted"):
        parse_xlsx(data, max_uncompressed_bytes=LIMIT)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600, "old Excel"),
        (b"Name,SKU\nMug,M-1\n", "no ZIP archive"),
        (b"PK\x03\x04 broken", "damaged"),
    ],
)
def test_what_is_no_workbook_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(XlsxUnreadable, match=message):
        parse_xlsx(data, max_uncompressed_bytes=LIMIT)


def test_a_zip_that_is_no_workbook_is_refused() -> None:
    other = xlsx_files.rewrite(
        xlsx_files.workbook([["Name"], ["Mug"]]), lambda name, body: None if name == "xl/workbook.xml" else body
    )
    with pytest.raises(XlsxUnreadable, match="no Excel workbook"):
        parse_xlsx(other, max_uncompressed_bytes=LIMIT)


def test_broken_sheet_xml_is_a_422_not_a_500() -> None:
    def truncate(name: str, body: bytes) -> bytes:
        return body.replace(b"<sheetData>", b"<sheetData><row r='2'><c") if name == xlsx_files.SHEET1 else body

    data = xlsx_files.rewrite(xlsx_files.workbook([["Name"], ["Mug"]]), truncate)
    with pytest.raises(XlsxUnreadable):
        parse_xlsx(data, max_uncompressed_bytes=LIMIT)


def test_macros_and_external_links_are_noted_and_ignored() -> None:
    data = xlsx_files.with_parts(
        xlsx_files.workbook([["Name", "Price"], ["Mug", 5]]),
        {
            "xl/vbaProject.bin": b'Attribute VB_Name = "Module1"\nSub Auto_Open()\nShell "calc"\nEnd Sub',
            "xl/externalLinks/externalLink1.xml": b"<externalLink/>",
        },
    )
    parsed = parse_xlsx(data, max_uncompressed_bytes=LIMIT)
    assert parsed.notes == (MACROS_NOTE, LINKS_NOTE)
    assert {row.number: dict(row.values) for row in parsed.rows} == {2: {"Name": "Mug", "Price": "5"}}
    assert MACROS_NOTE in build_preview(parsed, auto_map(parsed.headers)).notes
