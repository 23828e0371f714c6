"""The plan catalog: plans, packs and billing rules from ``plans.json``; Stripe price ids from the
environment (``STRIPE_PRICE_IDS``), so pricing changes never touch code."""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.errors import ValidationFailed

CATALOG_PATH = Path(__file__).with_name("plans.json")
Interval = Literal["monthly", "annual"]


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    rank: int
    product_slots: int = Field(ge=0)
    monthly_credits: int = Field(ge=0)
    display_price: dict[Interval, int]


class Pack(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    credits: int = Field(gt=0)
    display_price: int


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid")

    currency: str
    signup_bonus: int = Field(ge=0)
    grace_period_days: int = Field(ge=0)
    rollover: bool
    pack_credit_expiry_days: int | None = Field(default=None, ge=1)  # None: pack credits never expire
    plans: dict[str, Plan]
    packs: dict[str, Pack]

    def plan(self, plan_id: str) -> Plan:
        if plan_id not in self.plans:
            raise _unknown("plan", plan_id, self.plans)
        return self.plans[plan_id]

    def pack(self, pack_id: str) -> Pack:
        if pack_id not in self.packs:
            raise _unknown("pack", pack_id, self.packs)
        return self.packs[pack_id]


def _unknown(kind: str, value: str, known: Mapping[str, object]) -> ValidationFailed:
    message = f"Unknown {kind} {value!r}; choose one of {', '.join(known)}"
    return ValidationFailed(message, errors=[{"field": kind, "in": "body", "message": message, "type": "enum"}])


@lru_cache(maxsize=1)
def load_catalog() -> Catalog:
    return Catalog.model_validate(json.loads(CATALOG_PATH.read_text()))


def price_key(plan_id: str, interval: Interval) -> str:
    """The name a plan's Stripe price id has in ``STRIPE_PRICE_IDS`` (e.g. ``growth:annual``)."""
    return f"{plan_id}:{interval}"


class PriceIds:
    """Stripe price ids by catalog key, and the way back from a price id to plan/interval or pack."""

    def __init__(self, mapping: dict[str, str]) -> None:
        self.by_key = dict(mapping)
        self.by_price = {price: key for key, price in mapping.items()}

    def for_plan(self, plan_id: str, interval: Interval) -> str:
        key = price_key(plan_id, interval)
        if key not in self.by_key:
            raise ValidationFailed(
                f"{plan_id} is not sold {interval} (no Stripe price configured)",
                errors=[{"field": "interval", "in": "body", "message": "not available", "type": "value_error"}],
            )
        return self.by_key[key]

    def for_pack(self, pack_id: str) -> str:
        if pack_id not in self.by_key:
            raise ValidationFailed(
                f"Pack {pack_id} has no Stripe price configured",
                errors=[{"field": "pack_id", "in": "body", "message": "not available", "type": "value_error"}],
            )
        return self.by_key[pack_id]

    def plan_of(self, price_id: str) -> tuple[str, Interval] | None:
        key = self.by_price.get(price_id)
        if key is None or ":" not in key:
            return None
        plan_id, interval = key.split(":", 1)
        return plan_id, "annual" if interval == "annual" else "monthly"

    def pack_of(self, price_id: str) -> str | None:
        key = self.by_price.get(price_id)
        return key if key is not None and ":" not in key else None
