"""In-memory fake of the exports port: versions checked on every guarded write, like the adapter."""

from __future__ import annotations

import itertools
from typing import Any

from shared.exports.models import ExportDoc
from shared.exports.ports import ExportRepository, StaleWrite, Versioned

_versions = itertools.count(1)


class InMemoryExportRepository(ExportRepository):
    def __init__(self) -> None:
        self.docs: dict[tuple[str, str], tuple[ExportDoc, int]] = {}
        self.writes = 0

    def load(self, client_id: str, export_id: str) -> Versioned[ExportDoc] | None:
        entry = self.docs.get((client_id, export_id))
        return Versioned(entry[0], entry[1]) if entry else None

    def create(self, doc: ExportDoc) -> bool:
        if (doc.client_id, doc.id) in self.docs:
            return False
        self.docs[(doc.client_id, doc.id)] = (doc, next(_versions))
        self.writes += 1
        return True

    def update(self, loaded: Versioned[ExportDoc], changes: dict[str, Any]) -> Versioned[ExportDoc]:
        key = (loaded.value.client_id, loaded.value.id)
        entry = self.docs.get(key)
        if entry is None or entry[1] != loaded.version:
            raise StaleWrite()
        written = ExportDoc.model_validate({**entry[0].model_dump(), **changes})
        version = next(_versions)
        self.docs[key] = (written, version)
        self.writes += 1
        return Versioned(written, version)
