"""Where export documents are kept (Firestore: ``shared.adapters.firestore.exports``; in memory:
``tests.fakes_exports``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from shared.catalog.ports import StaleWrite, Versioned
from shared.exports.models import ExportDoc

__all__ = ["ExportRepository", "StaleWrite", "Versioned"]


class ExportRepository(ABC):
    """``clients/{client}/exports/{id}``."""

    @abstractmethod
    def load(self, client_id: str, export_id: str) -> Versioned[ExportDoc] | None:
        """The export and the version a guarded write is conditioned on, or None."""

    @abstractmethod
    def create(self, doc: ExportDoc) -> bool:
        """Store a new export; False when one of that id exists (nothing written)."""

    @abstractmethod
    def update(self, loaded: Versioned[ExportDoc], changes: dict[str, Any]) -> Versioned[ExportDoc]:
        """Apply ``changes`` if the export is still at ``loaded.version`` (else :class:`StaleWrite`);
        returns it as written, with its new version (to chain the next guarded write on)."""
