"""Where a client's generation settings live — the brand profile, saved presets and the defaults
remembered per product and per category — as a port (the Firestore adapter is
``shared.adapters.firestore.settings``; the in-memory fake is ``tests/fakes_settings.py``), and the
catalog reads they need (:class:`ProductLookup`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from shared.catalog.models import ProductDoc
    from shared.generation.models import BrandProfile, GenerationSettings, PresetOut

DefaultsKind = Literal["product", "category"]


class ProductLookup(Protocol):
    """The products generation settings read (a product's name, category, description). A protocol,
    not a port of our own: the catalog's product repository has this shape and can be passed as is."""

    def get(self, client_id: str, product_id: str) -> ProductDoc | None: ...

    def get_many(self, client_id: str, product_ids: Iterable[str]) -> dict[str, ProductDoc]: ...


class GenerationSettingsStore(ABC):
    """Port: a client's brand profile, its saved presets (built-in ones are not stored) and the
    settings remembered from its latest jobs, per product and per product category."""

    @abstractmethod
    def brand(self, client_id: str) -> BrandProfile | None:
        """The saved brand profile (None: never saved)."""

    @abstractmethod
    def save_brand(self, client_id: str, brand: BrandProfile) -> None:
        """Replace the brand profile."""

    @abstractmethod
    def presets(self, client_id: str) -> list[PresetOut]:
        """The client's saved presets, by name."""

    @abstractmethod
    def preset(self, client_id: str, preset_id: str) -> PresetOut | None: ...

    @abstractmethod
    def create_preset(self, client_id: str, preset: PresetOut) -> None:
        """Store a new preset; :class:`shared.errors.Conflict` if its id is taken."""

    @abstractmethod
    def update_preset(
        self,
        client_id: str,
        preset_id: str,
        *,
        updated_at: datetime,
        name: str | None = None,
        settings: GenerationSettings | None = None,
    ) -> None:
        """Change the given fields; :class:`shared.errors.NotFound` if the preset is gone."""

    @abstractmethod
    def delete_preset(self, client_id: str, preset_id: str) -> None:
        """Remove the preset (nothing happens if it is gone already)."""

    @abstractmethod
    def defaults(self, client_id: str, kind: DefaultsKind, key: str) -> GenerationSettings | None:
        """The settings remembered for a product id or a category name."""

    @abstractmethod
    def remember(
        self, client_id: str, settings: GenerationSettings, products: Sequence[tuple[str, str | None]], now: datetime
    ) -> None:
        """Remember ``settings`` for each (product id, category) pair: for the product, and for its
        category when it has one (the latest write wins)."""
