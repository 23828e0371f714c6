"""The composition root builds its adapters lazily, and one lazily built adapter may need another."""

from __future__ import annotations

import threading

import pytest

from shared.config import Settings
from shared.platform import Platform


def test_onboarding_builds_on_a_firestore_client_not_built_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first signed-in call of a new instance asks for onboarding before anything has built the
    Firestore client: building one inside the other must not wait on itself (it once deadlocked)."""
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:9")  # constructing a client connects nowhere
    platform = Platform(Settings(epox_env="test", gcp_project="epox-unit"))
    built: list[object] = []
    worker = threading.Thread(target=lambda: built.append(platform.onboarding), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "building the onboarding step deadlocked"
    assert built and platform.onboarding is built[0]  # built once, then reused
    assert platform.catalog.products is not None and platform.job_store is not None
