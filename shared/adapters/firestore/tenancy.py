"""Firestore adapter of the tenancy port: ``clients/{client}`` records, created with an exists precondition."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.tenancy import ClientDirectory, ClientRecord

if TYPE_CHECKING:
    from google.cloud.firestore import Client


class FirestoreClientDirectory(ClientDirectory):
    """``clients/{client_id}``, shared with billing (which merges its fields into the same document)."""

    def __init__(self, db: Client) -> None:
        self.db = db

    def create(self, record: ClientRecord) -> bool:
        from google.api_core.exceptions import AlreadyExists

        try:
            # create() fails when the document exists: a record (or billing's fields) is never overwritten.
            self.db.collection("clients").document(record.id).create(record.model_dump())
        except AlreadyExists:
            return False
        return True

    def set_contact_email(self, client_id: str, email: str) -> None:
        self.db.collection("clients").document(client_id).set({"contact_email": email}, merge=True)

    def contact_email(self, client_id: str) -> str | None:
        snapshot = self.db.collection("clients").document(client_id).get(field_paths=["contact_email"])
        value = (snapshot.to_dict() or {}).get("contact_email") if snapshot.exists else None
        return value if isinstance(value, str) and value else None
