"""Admin requests against the ledger: find a client, grant or adjust with an audited reason."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from shared.errors import NotFound
from shared.ledger.store import LedgerReader
from shared.ledger.views import BalanceView
from shared.pagination import PageQuery
from shared.text import SINGLE_LINE

# One line: it is logged and listed in the history and its CSV export.
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=500), SINGLE_LINE]


class ClientSearch(PageQuery):
    prefix: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{0,128}$")] = ""


class ClientSummary(BaseModel):
    id: str
    plan: str
    status: str
    created_at: datetime


class AdminGrant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: int = Field(gt=0, le=10_000_000)
    reason: Reason
    source: Literal["admin", "promo", "refund"] = "admin"
    expires_at: datetime | None = None

    @field_validator("expires_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        # A naive expiry is read as UTC (as the history filters do); compared with the aware clock it was a 500.
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class AdminAdjustment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: int = Field(ge=-10_000_000, le=10_000_000)
    reason: Reason


class AdminChangeOut(BaseModel):
    """An admin grant or adjustment: what the ledger did and the client's balance after it."""

    result: dict[str, Any]
    balance: BalanceView


def existing_client(reader: LedgerReader, client_id: str) -> str:
    """``client_id`` when the client has a record; otherwise a 404. Every admin route on a client
    asks first: a mistyped id is not found, neither an empty balance nor a ledger for nobody."""
    if reader.client_record(client_id) is None:
        raise NotFound(f"No client {client_id}")
    return client_id


def find_clients(reader: LedgerReader, query: ClientSearch) -> tuple[list[ClientSummary], str | None]:
    """Clients whose id starts with ``prefix``, in id order, paginated by id (the cursor is the last id)."""
    docs = reader.client_records(prefix=query.prefix, after=query.cursor or None, limit=query.limit + 1)
    items = [
        ClientSummary(
            id=d["id"], plan=d.get("plan", "free"), status=d.get("status", "active"), created_at=d["created_at"]
        )
        for d in docs[: query.limit]
    ]
    next_cursor = items[-1].id if len(docs) > query.limit and items else None
    return items, next_cursor
