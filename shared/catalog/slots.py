"""Product slots in one place: the plan's limit (from the billing state), the usage counter's
document, how new products are split between free slots and refusals, and the 402 a refusal is.

The catalog depends on this module, not on billing's documents: the limit is read through the
product repository (its adapter knows where the billing state lives) and turned into a number here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from shared.errors import EpoxError

T = TypeVar("T")

HOW_TO_UPGRADE = "Choose a larger plan in Billing (Starter 100, Growth 500, Pro 1,000, Scale 5,000 slots)."


class ProductUsageDoc(BaseModel):
    """``clients/{client}/usage/products``: products the client has (what its slots are measured on)."""

    model_config = ConfigDict(extra="ignore", defer_build=True)

    used: int = Field(ge=0)
    counted: int | None = None  # what the last count of the products found (the lazy backfill)
    counted_at: datetime | None = None
    updated_at: datetime


@dataclass(frozen=True)
class SlotUsage:
    """The plan's slots and how many are used; ``used`` may exceed ``limit`` after a downgrade."""

    limit: int
    used: int

    @property
    def free(self) -> int:
        return max(0, self.limit - self.used)


def limit_from_billing(billing: dict[str, Any] | None) -> int:
    """The product slots of a client's stored billing state (a client without one is on the free plan)."""
    from shared.billing.models import BillingState

    return BillingState.model_validate(billing or {}).product_slots


def take_free(usage: SlotUsage, new: Sequence[T]) -> tuple[list[T], list[T]]:
    """The new products that fit the free slots (in the order given), and the rest."""
    return list(new[: usage.free]), list(new[usage.free :])


class ProductSlotLimit(EpoxError):
    status = 402
    code = "product_slot_limit"
    title = "The plan's product slots are all used"


def slot_limit_error(usage: SlotUsage) -> ProductSlotLimit:
    """402 ``product_slot_limit``: the plan's slots are all used."""
    return ProductSlotLimit(
        f"Your plan has {usage.limit} product slots and {usage.used} are used",
        limit=usage.limit,
        used=usage.used,
        how_to_upgrade=HOW_TO_UPGRADE,
    )
