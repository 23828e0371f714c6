"""Firestore adapter of the generation settings port (:mod:`shared.generation.store`), and the product
reads generation settings need.

Documents: ``clients/{client}/settings/brand``, ``clients/{client}/presets/{preset}`` and
``clients/{client}/generation_defaults/{kind}-{sha256(key)[:32]}`` (a category name can hold any
character, so the document id is a hash of it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.errors import Conflict, NotFound
from shared.generation.models import BrandProfile, GenerationSettings, PresetOut
from shared.generation.store import DefaultsKind, GenerationSettingsStore

if TYPE_CHECKING:
    from google.cloud.firestore import Client


BATCH_WRITES = 400  # under Firestore's 500 writes per batch, with room for a product's pair


class FirestoreGenerationSettings(GenerationSettingsStore):
    def __init__(self, db: Client) -> None:
        self.db = db

    def _client(self, client_id: str) -> Any:
        return self.db.collection("clients").document(client_id)

    def _presets(self, client_id: str) -> Any:
        return self._client(client_id).collection("presets")

    def _defaults(self, client_id: str, kind: DefaultsKind, key: str) -> Any:
        doc_id = f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:32]}"
        return self._client(client_id).collection("generation_defaults").document(doc_id)

    def brand(self, client_id: str) -> BrandProfile | None:
        snapshot = self._client(client_id).collection("settings").document("brand").get()
        return BrandProfile.model_validate(snapshot.to_dict()) if snapshot.exists else None

    def save_brand(self, client_id: str, brand: BrandProfile) -> None:
        self._client(client_id).collection("settings").document("brand").set(brand.model_dump(mode="python"))

    def presets(self, client_id: str) -> list[PresetOut]:
        return [PresetOut.model_validate(s.to_dict()) for s in self._presets(client_id).order_by("name").stream()]

    def preset(self, client_id: str, preset_id: str) -> PresetOut | None:
        snapshot = self._presets(client_id).document(preset_id).get()
        return PresetOut.model_validate(snapshot.to_dict()) if snapshot.exists else None

    def create_preset(self, client_id: str, preset: PresetOut) -> None:
        from google.api_core.exceptions import AlreadyExists

        try:
            self._presets(client_id).document(preset.id).create(preset.model_dump(mode="python"))
        except AlreadyExists as exc:
            raise Conflict(f"Preset {preset.id} exists") from exc

    def update_preset(
        self,
        client_id: str,
        preset_id: str,
        *,
        updated_at: datetime,
        name: str | None = None,
        settings: GenerationSettings | None = None,
    ) -> None:
        from google.api_core.exceptions import NotFound as FirestoreNotFound

        changes: dict[str, Any] = {"updated_at": updated_at}
        if name is not None:
            changes["name"] = name
        if settings is not None:
            changes["settings"] = settings.model_dump(mode="python")
        try:
            self._presets(client_id).document(preset_id).update(changes)
        except FirestoreNotFound as exc:  # deleted since it was read
            raise NotFound(f"No preset {preset_id}") from exc

    def delete_preset(self, client_id: str, preset_id: str) -> None:
        self._presets(client_id).document(preset_id).delete()

    def defaults(self, client_id: str, kind: DefaultsKind, key: str) -> GenerationSettings | None:
        snapshot = self._defaults(client_id, kind, key).get()
        return GenerationSettings.model_validate(snapshot.to_dict()["settings"]) if snapshot.exists else None

    def remember(
        self, client_id: str, settings: GenerationSettings, products: Sequence[tuple[str, str | None]], now: datetime
    ) -> None:
        data = {"settings": settings.model_dump(mode="python"), "updated_at": now}
        batch = self.db.batch()
        writes = 0
        for product_id, category in products:
            batch.set(self._defaults(client_id, "product", product_id), data)
            writes += 1
            if category:
                batch.set(self._defaults(client_id, "category", category), data)
                writes += 1
            if writes >= BATCH_WRITES:
                batch.commit()
                batch, writes = self.db.batch(), 0
        if writes:
            batch.commit()
