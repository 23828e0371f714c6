"""Firestore adapter of the exports port: ``clients/{client}/exports/{id}`` (ExportDoc).

Guarded writes carry the ``update_time`` they were decided on; a refused one is ``StaleWrite``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.exports.models import ExportDoc
from shared.exports.ports import ExportRepository, StaleWrite, Versioned

if TYPE_CHECKING:
    from google.cloud.firestore import Client


class FirestoreExportRepository(ExportRepository):
    def __init__(self, db: Client) -> None:
        self.db = db

    def _ref(self, client_id: str, export_id: str) -> Any:
        return self.db.collection("clients").document(client_id).collection("exports").document(export_id)

    def load(self, client_id: str, export_id: str) -> Versioned[ExportDoc] | None:
        snapshot = self._ref(client_id, export_id).get()
        if not snapshot.exists:
            return None
        return Versioned(ExportDoc.model_validate(snapshot.to_dict()), snapshot.update_time)

    def create(self, doc: ExportDoc) -> bool:
        from google.api_core.exceptions import AlreadyExists

        try:
            self._ref(doc.client_id, doc.id).create(doc.model_dump(mode="python"))
        except AlreadyExists:
            return False
        return True

    def update(self, loaded: Versioned[ExportDoc], changes: dict[str, Any]) -> Versioned[ExportDoc]:
        from google.api_core.exceptions import FailedPrecondition
        from google.api_core.exceptions import NotFound as GNotFound

        doc = loaded.value
        try:
            result = self._ref(doc.client_id, doc.id).update(
                changes, option=self.db.write_option(last_update_time=loaded.version)
            )
        except (FailedPrecondition, GNotFound) as exc:
            raise StaleWrite() from exc
        written = ExportDoc.model_validate({**doc.model_dump(mode="python"), **changes})
        return Versioned(written, result.update_time)
