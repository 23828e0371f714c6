"""Client (tenant) records: created on the first authenticated call of a new client."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from google.cloud.firestore import Client

    from shared.auth import Principal


class ClientRecord(BaseModel):
    """``clients/{client_id}``: the tenant's own record."""

    model_config = ConfigDict(extra="ignore")

    id: str
    plan: str = "free"
    status: str = "active"
    created_at: datetime
    created_by: str


def client_ref(db: Client, client_id: str) -> Any:
    return db.collection("clients").document(client_id)


def ensure_client(db: Client, principal: Principal, now: datetime) -> bool:
    """Create the client's record if it does not exist yet; return True when it was created."""
    from google.api_core.exceptions import AlreadyExists

    record = ClientRecord(id=principal.client_id, created_at=now, created_by=principal.user_id)
    try:
        client_ref(db, principal.client_id).create(record.model_dump())
    except AlreadyExists:
        return False
    return True
