"""The text rule (shared/text.py) in the CSV import: a row whose text the API would refuse is a row
error ``bad_text`` (never stored as it is), a column name with such a character refuses the file, and
the stored preview shows refused characters as U+FFFD."""

from __future__ import annotations

import pytest

from shared.catalog.csv_parsing import (
    ColumnMapping,
    CsvBadHeader,
    CsvRow,
    build_preview,
    parse_csv,
    row_to_draft,
    split_image_urls,
)

MAPPING = ColumnMapping(
    name="name", sku="sku", description="description", category="category", tags="tags", external_id="id"
)


def _result(**values: str) -> tuple[list[tuple[str, str | None, str]], bool]:
    result = row_to_draft(CsvRow(number=7, values={"name": "Mug", **values}), MAPPING)
    return [(p.code, p.field, p.severity) for p in result.problems], result.draft is not None


@pytest.mark.parametrize(
    ("column", "value", "field"),
    [
        ("name", "Mug\x00", "name"),
        ("name", "Mug \u202eexe.gpj", "name"),
        ("sku", "SKU\u2066-1", "sku"),
        ("category", "Kitchen\x07", "category"),
        ("id", "ext\ufeff1", "external_id"),
        ("description", "Fine\u202d print", "description"),
        ("description", "bell\x07", "description"),
        ("tags", "ok, b\x1bad", "tags"),
    ],
)
def test_a_row_with_refused_text_is_a_row_error(column: str, value: str, field: str) -> None:
    problems, drafted = _result(**{column: value})
    assert problems == [("bad_text", field, "error")]
    assert not drafted


def test_the_row_error_says_which_character_and_where() -> None:
    result = row_to_draft(CsvRow(number=7, values={"name": "Dress\u202egpj.exe"}), MAPPING)
    [problem] = result.problems
    assert problem.row_number == 7
    assert problem.message == (
        "The name has U+202E (RIGHT-TO-LEFT OVERRIDE) at character 6 "
        "(a bidirectional override, which can disguise text)."
    )


def test_tabs_and_newlines_in_a_description_are_kept() -> None:
    result = row_to_draft(CsvRow(number=2, values={"name": "Mug\tlarge", "description": "a\n\tb\r\nc"}), MAPPING)
    assert result.problems == ()
    assert result.draft is not None
    assert (result.draft.name, result.draft.description) == ("Mug large", "a\n\tb\r\nc")


def test_legitimate_rtl_text_and_emoji_are_imported() -> None:
    problems, drafted = _result(name="\u200fשמלה 👩\u200d👩\u200d👧", description="نص\u200f عربي")
    assert (problems, drafted) == ([], True)


def test_image_urls_with_refused_characters_are_skipped_with_a_warning() -> None:
    good, bad = split_image_urls("https://cdn.example/a.jpg https://cdn.example/\u202egpj.exe")
    assert good == ("https://cdn.example/a.jpg",)
    assert bad == ("https://cdn.example/\u202egpj.exe",)


def test_a_column_name_with_a_refused_character_refuses_the_file() -> None:
    with pytest.raises(CsvBadHeader) as caught:
        parse_csv("name,sku\u202e\nMug,1\n".encode())
    assert caught.value.status == 422
    assert caught.value.code == "csv_bad_header"
    assert "column 2" in caught.value.detail
    assert "U+202E" in caught.value.detail
    # A line break inside a quoted header cell is whitespace, folded to a space as before.
    assert parse_csv(b'"Price\n(EUR)",name\n1,Mug\n').headers == ("Price (EUR)", "name")


def test_the_preview_counts_and_masks_refused_rows() -> None:
    parsed = parse_csv("name,sku\nMug\u202e,A\nJug,B\n".encode())
    preview = build_preview(parsed, ColumnMapping(name="name", sku="sku"))
    assert preview.importable_rows == 1
    [warning] = [w for w in preview.warnings if w.code == "bad_row"]
    assert (warning.problem_code, warning.row_numbers, warning.severity) == ("bad_text", (2,), "error")
    first = preview.sample[0]
    assert first.values["name"] == "Mug\ufffd"
    assert first.draft is None
