"""What an archive holds and where: a folder per product, files named by style and number, a manifest.

The layout is decided once per build from the rows (:func:`lay_out`) and saved with the build, so
every delivery of a long build writes the same names. A product's folder is its SKU, else its name,
made safe for every unzip tool (ASCII letters, digits, ``.``, ``_`` and ``-``); two products that
would share a folder get ``-2``, ``-3``…; assets without a product (or whose product is gone) go in
``unassigned/``. Files are ``{style}-{n}.{ext}``, numbered per folder and style in row order.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import unicodedata
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

UNASSIGNED = "unassigned"
MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("row", "product", "sku", "asset_id", "file", "status", "failure_reason")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "video/mp4": "mp4",
    "video/quicktime": "mov",
}


class Row(BaseModel):
    """One line of the manifest: a file of the archive, or a result without one (a failed item)."""

    model_config = ConfigDict(extra="forbid")

    status: str  # ok | failed | cancelled | deleted | missing
    asset_id: str | None = None
    product_id: str | None = None
    product: str | None = None  # the product's name
    sku: str | None = None
    style: str = "image"  # names the file
    key: str | None = None  # the object to store (status ok)
    content_type: str | None = None
    revision_key: str | None = None  # what the fingerprint follows: the revision the file is of
    reason: str | None = None
    file: str | None = None  # its path in the archive, given by lay_out

    @property
    def has_file(self) -> bool:
        return self.status == "ok" and self.key is not None


def slug(text: str, *, limit: int = 80) -> str:
    """``text`` as a safe path component (accents folded to ASCII; may be empty)."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return _UNSAFE.sub("-", folded).strip("-._")[:limit].strip("-._")


def extension(content_type: str | None, key: str | None) -> str:
    if content_type in _EXTENSIONS:
        return _EXTENSIONS[content_type]
    tail = (key or "").rsplit(".", 1)[-1].lower() if key and "." in key else ""
    return slug(tail, limit=8) or "bin"


def lay_out(rows: Sequence[Row]) -> list[Row]:
    """The rows with their file paths (folders unique per product, names unique per folder)."""
    folders: dict[str | None, str] = {None: UNASSIGNED}
    taken = {UNASSIGNED, MANIFEST}
    numbers: dict[tuple[str, str], int] = {}
    laid: list[Row] = []
    for row in rows:
        if not row.has_file:
            laid.append(row)
            continue
        owner = row.product_id if row.product is not None else None
        if owner not in folders:
            base = slug(row.sku or "") or slug(row.product or "") or slug(owner or "") or "product"
            name, n = base, 1
            while name.lower() in taken:
                n += 1
                name = f"{base}-{n}"
            folders[owner] = name
            taken.add(name.lower())
        folder = folders[owner]
        style = slug(row.style, limit=40) or "image"
        numbers[(folder, style)] = numbers.get((folder, style), 0) + 1
        name = f"{folder}/{style}-{numbers[(folder, style)]}.{extension(row.content_type, row.key)}"
        laid.append(row.model_copy(update={"file": name}))
    return laid


def fingerprint(rows: Sequence[Row]) -> str:
    """What the archive holds, as a digest: the same rows, assets, revisions and names give the same
    value, and any edit, revert, delete, rename or new result another."""
    material = [(r.status, r.asset_id, r.revision_key, r.file, r.product, r.sku, r.reason) for r in rows]
    return hashlib.sha256(json.dumps(material, separators=(",", ":")).encode()).hexdigest()


def _cell(value: object) -> str:
    # Spreadsheet formula injection: names come from merchants and stores (as in the other CSV exports).
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def manifest_csv(rows: Sequence[Row], missing: Sequence[int] = ()) -> bytes:
    """``manifest.csv``: every row, numbered from 1; ``missing`` rows (their object was gone when the
    archive was written) say so instead of naming a file."""
    gone = set(missing)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(MANIFEST_COLUMNS)
    for index, row in enumerate(rows):
        status, reason, file = row.status, row.reason, row.file
        if index in gone:
            status, reason, file = "missing", "the stored file was not found", None
        writer.writerow([_cell(v) for v in (index + 1, row.product, row.sku, row.asset_id, file, status, reason)])
    return buffer.getvalue().encode("utf-8-sig")  # with a BOM: spreadsheets then read it as UTF-8
