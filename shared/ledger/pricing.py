"""The price list: what each operation costs in credits, and quotes ("cost before action").

Defaults live in ``prices.json`` beside this module (shipped with every function bundle); an admin
can override any operation (the :class:`PriceOverrides` port; on Firestore the document
``settings/prices``). Every paid endpoint quotes through :func:`quote` so the price a user sees is the price reserved.
"""

from __future__ import annotations

import json
import threading
import time
from abc import ABC, abstractmethod
from datetime import datetime
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from shared.errors import ValidationFailed

DEFAULT_PRICES_PATH = Path(__file__).with_name("prices.json")

OperationName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
VariantName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_]{1,32}$")]


class PriceList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    operations: dict[OperationName, dict[VariantName, Annotated[int, Field(ge=0, le=100_000)]]]
    updated_at: datetime | None = None
    updated_by: str | None = None

    def price(self, operation: str, variant: str | None) -> int:
        variants = self.operations.get(operation)
        if variants is None:
            raise _unknown("operation", f"Unknown operation {operation!r}; known: {', '.join(sorted(self.operations))}")
        chosen = variant or (
            "default" if "default" in variants else next(iter(variants)) if len(variants) == 1 else None
        )
        if chosen is None or chosen not in variants:
            raise _unknown("variant", f"{operation} needs one of the variants {', '.join(sorted(variants))}")
        return variants[chosen]


def _unknown(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, errors=[{"field": field, "in": "body", "message": message, "type": "enum"}])


class QuoteItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    operation: OperationName
    variant: VariantName | None = None
    quantity: int = Field(default=1, ge=1, le=100_000)


class QuoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[QuoteItem] = Field(min_length=1, max_length=100)


class QuoteLine(BaseModel):
    operation: str
    variant: str | None
    quantity: int
    unit_price: int
    amount: int


class Quote(BaseModel):
    lines: list[QuoteLine]
    total: int
    price_list_version: int


def load_default_prices() -> PriceList:
    return PriceList.model_validate(json.loads(DEFAULT_PRICES_PATH.read_text()))


def quote(prices: PriceList, items: list[QuoteItem]) -> Quote:
    """Price a list of operations; unknown operations or variants are a 422."""
    lines = []
    for index, item in enumerate(items):
        try:
            unit = prices.price(item.operation, item.variant)
        except ValidationFailed as error:
            for problem in error.extensions.get("errors", []):
                problem["field"] = f"items.{index}.{problem['field']}"
            raise
        lines.append(
            QuoteLine(
                operation=item.operation,
                variant=item.variant,
                quantity=item.quantity,
                unit_price=unit,
                amount=unit * item.quantity,
            )
        )
    return Quote(lines=lines, total=sum(line.amount for line in lines), price_list_version=prices.version)


class PriceOverrides(ABC):
    """Port for the admin's price override (Firestore adapter: ``shared.adapters.firestore.ledger``)."""

    @abstractmethod
    def load(self) -> PriceList | None:
        """The stored override, or None when there is none."""

    @abstractmethod
    def save(self, prices: PriceList) -> None:
        """Replace the stored override."""


class PriceBook:
    """Effective prices: repo defaults overlaid with the admin's override, cached briefly per process."""

    def __init__(self, overrides: PriceOverrides, ttl_seconds: float = 60.0) -> None:
        self.overrides = overrides
        self.ttl = ttl_seconds
        self._cached: tuple[float, PriceList] | None = None
        self._lock = threading.Lock()

    def current(self) -> PriceList:
        with self._lock:
            if self._cached and time.monotonic() - self._cached[0] < self.ttl:
                return self._cached[1]
        prices = load_default_prices()
        override = self.overrides.load()
        if override is not None:
            prices = PriceList(
                version=override.version,
                operations={**prices.operations, **override.operations},
                updated_at=override.updated_at,
                updated_by=override.updated_by,
            )
        with self._lock:
            self._cached = (time.monotonic(), prices)
        return prices

    def replace(self, prices: PriceList, *, admin_id: str, now: datetime) -> PriceList:
        """Store an admin's override (whole operations replace the defaults' entries)."""
        stored = prices.model_copy(update={"updated_at": now, "updated_by": admin_id})
        self.overrides.save(stored)
        with self._lock:
            self._cached = None
        return self.current()
