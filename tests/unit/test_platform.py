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


def test_the_video_engines_follow_ai_engine_and_veo_refuses_to_run_outside_vertex() -> None:
    from shared.engines.base import InputImage
    from shared.engines.offline_video import OfflineSpeechEngine, OfflineVideoEngine
    from shared.engines.veo import GeminiSpeechEngine, VeoEngine
    from shared.engines.video import VideoRequest
    from shared.errors import VendorNotConfigured

    offline = Platform(Settings(epox_env="test", ai_engine="offline"))
    assert isinstance(offline.video_engine, OfflineVideoEngine) and isinstance(
        offline.speech_engine, OfflineSpeechEngine
    )
    assert offline.video_engine is offline.video_engine  # built once

    settings = Settings(
        epox_env="test", gcp_project="epox-unit", video_model="veo-x", veo_location="europe-west4", tts_voice="Puck"
    )
    veo = Platform(settings)
    engine, speech = veo.video_engine, veo.speech_engine
    assert isinstance(engine, VeoEngine) and isinstance(speech, GeminiSpeechEngine)
    assert (engine.config.model, engine.config.location, speech.config.voice) == ("veo-x", "europe-west4", "Puck")
    request = VideoRequest(prompt="a mug", image=InputImage(b"\x89PNG", "image/png"))
    with pytest.raises(VendorNotConfigured, match="GEMINI_USE_VERTEX"):  # Veo exists on Vertex AI only
        engine.start(request)
