"""docs/billing.md's state-machine table is the code's: parsed from the doc, compared with
``shared.billing.lifecycle.RULES`` (through ``lifecycle.table()``), so neither can drift alone."""

from __future__ import annotations

from pathlib import Path

from shared.billing import lifecycle

DOC = Path(__file__).resolve().parents[2] / "docs" / "billing.md"
START, END = "<!-- state-machine:start -->", "<!-- state-machine:end -->"


def documented_table(text: str) -> list[tuple[str, ...]]:
    """The rows of the markdown table between the markers (header and separator dropped)."""
    block = text.split(START, 1)[1].split(END, 1)[0]
    lines = [line.strip() for line in block.strip().splitlines() if line.strip()]
    assert lines and all(line.startswith("|") and line.endswith("|") for line in lines), lines
    rows = [tuple(cell.strip() for cell in line[1:-1].split("|")) for line in lines[2:]]
    return [(row[0].strip("`"), *row[1:]) for row in rows]


def test_the_documented_state_machine_is_the_codes() -> None:
    assert documented_table(DOC.read_text(encoding="utf-8")) == lifecycle.table()


def test_a_changed_cell_in_the_doc_is_caught() -> None:
    text = DOC.read_text(encoding="utf-8")
    edited = text.replace("| `unpaid` | yes |", "| `unpaid` | no |", 1)
    assert edited != text
    assert documented_table(edited) != lifecycle.table()


def test_the_documented_ignored_event_types_are_the_codes() -> None:
    from shared.billing.events import IGNORED_TYPES

    block = DOC.read_text(encoding="utf-8").split("<!-- ignored-types:start -->", 1)[1]
    listed = {cell.strip().strip("`") for cell in block.split("<!-- ignored-types:end -->", 1)[0].split(",")}
    assert listed == IGNORED_TYPES
