from __future__ import annotations

import pytest

from shared.config import Settings, get_settings
from shared.errors import ConfigurationError

PRODUCTION = {
    "EPOX_ENV": "production",
    "GCP_PROJECT": "epox-prod",
    "AUTH_JWKS_URL": "https://auth.epox.ai/api/auth/jwks",
    "AUTH_ISSUER": "https://auth.epox.ai",
    "AUTH_AUDIENCE": "https://api.epox.ai",
    "R2_ENDPOINT_URL": "https://acct.r2.cloudflarestorage.com",
    "R2_ACCESS_KEY_ID": "key",
    "R2_SECRET_ACCESS_KEY": "r2-s3cr3t-value",
    "R2_BUCKET": "epox",
    "TASKS_LOCATION": "europe-west1",
    "TASKS_TARGET_BASE_URL": "https://europe-west1-epox-prod.cloudfunctions.net",
    "TASKS_SERVICE_ACCOUNT": "tasks@epox-prod.iam.gserviceaccount.com",
    "FUNCTION_TARGET": "generate_tasks",
    "STRIPE_API_KEY": "sk_live_abc",
    "STRIPE_WEBHOOK_SECRET": "whsec_abc",
    "STRIPE_PRICE_IDS": '{"growth:monthly": "price_growth_m"}',
    "GEMINI_USE_VERTEX": "true",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    switches = ["TASKS_BACKEND", "TASKS_AUTH_MODE", "FETCH_ALLOWED_NETWORKS", "AI_ENGINE", "STRIPE_API_BASE"]
    for name in [*list(PRODUCTION), *switches]:
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_complete_production_settings_load(env: pytest.MonkeyPatch) -> None:
    for name, value in PRODUCTION.items():
        env.setenv(name, value)
    settings = get_settings()
    assert settings.is_production
    assert settings.r2_secret_access_key.get_secret_value() == "r2-s3cr3t-value"
    assert "r2-s3cr3t-value" not in repr(settings)


def test_production_names_every_missing_variable(env: pytest.MonkeyPatch) -> None:
    env.setenv("EPOX_ENV", "production")
    env.setenv("GCP_PROJECT", "epox-prod")
    with pytest.raises(ConfigurationError) as caught:
        get_settings()
    message = str(caught.value)
    for name in ("AUTH_JWKS_URL", "R2_BUCKET", "TASKS_SERVICE_ACCOUNT", "FUNCTION_TARGET", "STRIPE_WEBHOOK_SECRET"):
        assert name in message
    assert "GCP_PROJECT" not in message


@pytest.mark.parametrize(
    ("name", "value", "complaint"),
    [
        ("TASKS_BACKEND", "local", "TASKS_BACKEND"),
        ("TASKS_AUTH_MODE", "shared_secret", "TASKS_AUTH_MODE"),
        ("FETCH_ALLOWED_NETWORKS", '["127.0.0.1/32"]', "FETCH_ALLOWED_NETWORKS"),
        ("STRIPE_API_BASE", "http://127.0.0.1:9999", "STRIPE_API_BASE"),
        ("AUTH_JWKS_URL", "http://auth.epox.ai/jwks", "https"),
        ("AI_ENGINE", "offline", "AI_ENGINE"),
        ("GEMINI_USE_VERTEX", "false", "GEMINI_API_KEY"),
    ],
)
def test_production_refuses_development_switches(
    env: pytest.MonkeyPatch, name: str, value: str, complaint: str
) -> None:
    for key, setting in PRODUCTION.items():
        env.setenv(key, setting)
    env.setenv(name, value)
    with pytest.raises(ConfigurationError, match=complaint):
        get_settings()


def test_bad_types_are_a_configuration_error(env: pytest.MonkeyPatch) -> None:
    env.setenv("EPOX_ENV", "test")
    env.setenv("MAX_BODY_BYTES", "lots")
    with pytest.raises(ConfigurationError, match="max_body_bytes"):
        get_settings()


def test_development_needs_no_production_settings() -> None:
    settings = Settings(epox_env="development")
    assert not settings.is_production


def test_env_example_documents_every_setting() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    documented = (root / ".env.example").read_text() + (root / "README.md").read_text()
    for field in Settings.model_fields:
        assert field.upper() in documented, f"{field.upper()} is not documented in .env.example/README.md"
