"""Excel workbooks for tests, written with openpyxl (write mode) and, where Excel writes what openpyxl
cannot (a formula's saved value, macros, links, an encrypted part, a lying size), edited as a ZIP."""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from openpyxl import Workbook

SHEET1 = "xl/worksheets/sheet1.xml"


def workbook(
    rows: Iterable[Sequence[Any]],
    *,
    title: str = "Products",
    more_sheets: dict[str, Iterable[Sequence[Any]]] | None = None,
    merges: Sequence[str] = (),
    formats: dict[str, str] | None = None,
    write_only: bool = False,
) -> bytes:
    """An .xlsx of ``rows`` on a first sheet named ``title`` (then ``more_sheets``); ``merges`` are
    ranges such as "D3:D5", ``formats`` cell number formats such as {"F2": "0%"}."""
    book = Workbook(write_only=write_only)
    if write_only:
        sheet = book.create_sheet(title)
    else:
        sheet = book.active
        sheet.title = title
    for row in rows:
        sheet.append(list(row))
    for cell, number_format in (formats or {}).items():
        sheet[cell].number_format = number_format
    for merged in merges:
        sheet.merge_cells(merged)
    for name, more in (more_sheets or {}).items():
        other = book.create_sheet(name)
        for row in more:
            other.append(list(row))
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def rewrite(data: bytes, edit: Callable[[str, bytes], bytes | None], extra: dict[str, bytes] | None = None) -> bytes:
    """The archive with each part passed through ``edit(name, bytes)`` (None drops it), plus ``extra``."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            body = edit(info.filename, source.read(info))
            if body is not None:
                target.writestr(info.filename, body)
        for name, body in (extra or {}).items():
            target.writestr(name, body)
    return out.getvalue()


def with_cached_values(data: bytes, values: dict[str, str]) -> bytes:
    """Formulas of the first sheet with the values Excel would have saved (openpyxl saves none)."""

    def edit(name: str, body: bytes) -> bytes:
        if name != SHEET1:
            return body
        text = body.decode()
        for cell, value in values.items():
            text = re.sub(rf'(<c r="{cell}"[^>]*>\s*<f>[^<]*</f>\s*)<v\s*/>', rf"\g<1><v>{value}</v>", text)
        return text.encode()

    return rewrite(data, edit)


def with_dimension(data: bytes, ref: str) -> bytes:
    """The first sheet claiming the dimension ``ref`` (tools write wrong ones, attackers huge ones)."""

    def edit(name: str, body: bytes) -> bytes:
        if name != SHEET1:
            return body
        return re.sub(rb'<dimension ref="[^"]*"', f'<dimension ref="{ref}"'.encode(), body)

    return rewrite(data, edit)


def with_parts(data: bytes, parts: dict[str, bytes]) -> bytes:
    return rewrite(data, lambda name, body: body, parts)


def encrypted(data: bytes, part: str = SHEET1) -> bytes:
    """The archive with ``part`` flagged as encrypted in the central directory (zipfile writes no
    encryption; the flag is what a reader sees first)."""
    raw = bytearray(data)
    name = part.encode()
    position = raw.find(b"PK\x01\x02")
    while position >= 0:
        name_length = int.from_bytes(raw[position + 28 : position + 30], "little")
        if raw[position + 46 : position + 46 + name_length] == name:
            flags = int.from_bytes(raw[position + 8 : position + 10], "little") | 0x1
            raw[position + 8 : position + 10] = flags.to_bytes(2, "little")
            return bytes(raw)
        position = raw.find(b"PK\x01\x02", position + 4)
    raise ValueError(f"no part {part}")


def bomb(data: bytes, size: int = 20 * 1024 * 1024) -> bytes:
    """The workbook with a part of ``size`` zero bytes (deflate packs it about 1,000 times)."""
    return with_parts(data, {"xl/media/padding.bin": b"\x00" * size})


def many_parts(data: bytes, count: int) -> bytes:
    return with_parts(data, {f"xl/media/image{n}.png": b"x" for n in range(count)})
