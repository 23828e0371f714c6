"""In-memory fakes of the generation settings port (brand profile, saved presets, remembered
defaults) and of the catalog lookup it reads products through: real subclasses of the ports, with
the Firestore adapter's semantics."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from shared.catalog.models import ProductDoc
from shared.errors import Conflict, NotFound
from shared.generation.models import BrandProfile, GenerationSettings, PresetOut
from shared.generation.store import DefaultsKind, GenerationSettingsStore, ProductLookup


class InMemoryGenerationSettings(GenerationSettingsStore):
    """Brand profiles, saved presets and remembered defaults per client, in memory. Like Firestore:
    creating an existing preset is a conflict, changing or deleting a missing one is not found
    (delete of a missing one is a no-op), presets list by name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.brands: dict[str, BrandProfile] = {}
        self.saved: dict[tuple[str, str], PresetOut] = {}
        self.remembered: dict[tuple[str, DefaultsKind, str], tuple[GenerationSettings, datetime]] = {}

    def brand(self, client_id: str) -> BrandProfile | None:
        with self._lock:
            found = self.brands.get(client_id)
            return found.model_copy(deep=True) if found else None

    def save_brand(self, client_id: str, brand: BrandProfile) -> None:
        with self._lock:
            self.brands[client_id] = brand.model_copy(deep=True)

    def presets(self, client_id: str) -> list[PresetOut]:
        with self._lock:
            mine = [p.model_copy(deep=True) for (owner, _), p in self.saved.items() if owner == client_id]
        return sorted(mine, key=lambda preset: (preset.name, preset.id))  # ties by id, as Firestore orders

    def preset(self, client_id: str, preset_id: str) -> PresetOut | None:
        with self._lock:
            found = self.saved.get((client_id, preset_id))
            return found.model_copy(deep=True) if found else None

    def create_preset(self, client_id: str, preset: PresetOut) -> None:
        with self._lock:
            if (client_id, preset.id) in self.saved:
                raise Conflict(f"Preset {preset.id} exists")
            self.saved[(client_id, preset.id)] = preset.model_copy(deep=True)

    def update_preset(
        self,
        client_id: str,
        preset_id: str,
        *,
        updated_at: datetime,
        name: str | None = None,
        settings: GenerationSettings | None = None,
    ) -> None:
        with self._lock:
            found = self.saved.get((client_id, preset_id))
            if found is None:
                raise NotFound(f"No preset {preset_id}")
            changes: dict[str, Any] = {"updated_at": updated_at}
            if name is not None:
                changes["name"] = name
            if settings is not None:
                changes["settings"] = settings.model_copy(deep=True)
            self.saved[(client_id, preset_id)] = found.model_copy(update=changes)

    def delete_preset(self, client_id: str, preset_id: str) -> None:
        with self._lock:
            self.saved.pop((client_id, preset_id), None)

    def defaults(self, client_id: str, kind: DefaultsKind, key: str) -> GenerationSettings | None:
        with self._lock:
            found = self.remembered.get((client_id, kind, key))
            return found[0].model_copy(deep=True) if found else None

    def remember(
        self, client_id: str, settings: GenerationSettings, products: Sequence[tuple[str, str | None]], now: datetime
    ) -> None:
        with self._lock:
            for product_id, category in products:
                self.remembered[(client_id, "product", product_id)] = (settings.model_copy(deep=True), now)
                if category:
                    self.remembered[(client_id, "category", category)] = (settings.model_copy(deep=True), now)


class InMemoryProducts(ProductLookup):
    """Products by client, for what generation settings read of the catalog."""

    def __init__(self, products: Iterable[tuple[str, ProductDoc]] = ()) -> None:
        self.products: dict[tuple[str, str], ProductDoc] = {(c, p.id): p for c, p in products}

    def add(self, client_id: str, product: ProductDoc) -> None:
        self.products[(client_id, product.id)] = product

    def get(self, client_id: str, product_id: str) -> ProductDoc | None:
        return self.products.get((client_id, product_id))

    def get_many(self, client_id: str, product_ids: Iterable[str]) -> dict[str, ProductDoc]:
        return {pid: self.products[(client_id, pid)] for pid in product_ids if (client_id, pid) in self.products}
