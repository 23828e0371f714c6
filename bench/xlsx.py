"""``python -m bench.xlsx``: numbers for .xlsx imports.

Parse of a 10,000-row workbook (a product sheet of 12 columns: text, prices, dates, an HTML
description, generation settings): the archive check, the read-only sheet read (``parse_xlsx``) and
the preview, in a fresh interpreter: wall time (without tracemalloc, median of 3) and the peak of
Python allocations (a separate run under tracemalloc, which slows it; openpyxl's XML parsing
allocates through Python too). Twice: as Excel saves a workbook (shared strings, a stated dimension)
and as openpyxl writes it (inline strings, no dimension: the slow case). For comparison, the same rows
as a CSV file through ``parse_csv`` and the preview.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ROWS = 10_000
_COLUMNS = [
    "Name", "SKU", "Price", "Category", "Tags", "Description", "Image URL", "Added", "Stock", "Weight",
    "Style", "Prompt",
]  # fmt: skip


def _row(n: int, start: datetime) -> list[Any]:
    return [
        f"Stoneware mug {n}", f"MUG-{n:06d}", 19.9 + (n % 7) * 0.1, "Home > Kitchen", "ceramic, handmade",
        f"<p>Glazed by hand, no. {n}; dishwasher safe, 350 ml.</p>", f"https://cdn.example.com/p/{n}/1.jpg",
        start + timedelta(days=n % 365), n % 50, 0.35, "studio", f"the mug on an oak table, morning light {n}",
    ]  # fmt: skip


def _rows(count: int) -> list[list[Any]]:
    start = datetime(2024, 1, 1)
    return [_row(n, start) for n in range(count)]


def workbook(count: int = ROWS) -> bytes:
    from openpyxl import Workbook

    book = Workbook(write_only=True)
    sheet = book.create_sheet("Products")
    sheet.append(_COLUMNS)
    for row in _rows(count):
        sheet.append(row)
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


_INLINE = re.compile(r'<c r="([A-Z]+[0-9]+)"([^>]*?) t="inlineStr"><is><t(?: [^>]*)?>(.*?)</t></is></c>', re.DOTALL)
_SST = "application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"
_SST_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/sharedStrings"


def excel_like(data: bytes, rows: int, columns: int) -> bytes:
    """The workbook as Excel saves it: strings in a shared table (openpyxl writes each inline, which
    reads several times slower) and the sheet's dimension stated (without it openpyxl scans the sheet
    once more to size it)."""
    strings: dict[str, int] = {}

    def shared(match: re.Match[str]) -> str:
        index = strings.setdefault(match.group(3), len(strings))
        return f'<c r="{match.group(1)}"{match.group(2)} t="s"><v>{index}</v></c>'

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            body = source.read(info)
            if info.filename == "xl/worksheets/sheet1.xml":
                text = _INLINE.sub(shared, body.decode())
                last = f"{chr(64 + columns)}{rows + 1}"
                text = text.replace("<sheetPr>", f'<dimension ref="A1:{last}"/><sheetPr>', 1)
                body = text.encode()
            elif info.filename == "[Content_Types].xml":
                body = body.replace(
                    b"</Types>", f'<Override PartName="/xl/sharedStrings.xml" ContentType="{_SST}"/></Types>'.encode()
                )
            elif info.filename == "xl/_rels/workbook.xml.rels":
                body = body.replace(
                    b"</Relationships>",
                    f'<Relationship Type="{_SST_REL}" Target="sharedStrings.xml" Id="rId99"/></Relationships>'.encode(),
                )
            target.writestr(info.filename, body)
        items = "".join(f"<si><t>{text}</t></si>" for text in strings)
        target.writestr(
            "xl/sharedStrings.xml",
            '<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
            f'count="{len(strings)}" uniqueCount="{len(strings)}">{items}</sst>',
        )
    return out.getvalue()


def csv_file(count: int = ROWS) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(_COLUMNS)
    writer.writerows(_rows(count))
    return buffer.getvalue().encode()


_PROBE = """
import json, statistics, sys, time, tracemalloc
sys.path.insert(0, sys.argv[1])
from shared.catalog.csv_parsing import auto_map, build_preview, parse_csv
from shared.catalog.xlsx import parse_xlsx
data = open(sys.argv[2], "rb").read()

def run():
    started = time.perf_counter()
    if sys.argv[3] == "xlsx":
        parsed = parse_xlsx(data, max_uncompressed_bytes=100 * 1024 * 1024)
    else:
        parsed = parse_csv(data)
    parsed_at = time.perf_counter()
    preview = build_preview(parsed, auto_map(parsed.headers))
    return parsed_at - started, time.perf_counter() - started, parsed, preview

times = [run()[:2] for _ in range(3)]
tracemalloc.start()
_, _, parsed, preview = run()
peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({"peak": peak, "parse": statistics.median(t[0] for t in times),
                  "seconds": statistics.median(t[1] for t in times), "rows": len(parsed.rows),
                  "importable": preview.importable_rows}))
"""


def measure(data: bytes, kind: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"file.{kind}"
        path.write_bytes(data)
        out = subprocess.run(
            [sys.executable, "-c", _PROBE, str(ROOT), str(path), kind],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    print(f"== .xlsx parse of {ROWS:,} rows x {len(_COLUMNS)} columns (fresh interpreter; tracemalloc peak) ==")
    written = workbook()
    files = {
        "xlsx as Excel saves it (shared strings)": ("xlsx", excel_like(written, ROWS, len(_COLUMNS))),
        "xlsx as openpyxl writes it (inline strings)": ("xlsx", written),
        "the same rows as CSV": ("csv", csv_file()),
    }
    for label, (kind, data) in files.items():
        result = measure(data, kind)
        print(
            f"  {label:<44} {len(data) / 1e6:5.2f} MB  parse {result['parse']:5.2f} s  parse + preview "
            f"{result['seconds']:5.2f} s  peak {result['peak'] / 2**20:6.1f} MiB  "
            f"{result['rows']} rows, {result['importable']} importable"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
