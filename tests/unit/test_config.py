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
    "CORS_ALLOWED_ORIGINS": '["https://app.epox.ai"]',
    "BILLING_SUCCESS_URL": "https://app.epox.ai/billing?checkout=success",
    "BILLING_CANCEL_URL": "https://app.epox.ai/billing?checkout=cancelled",
    "BILLING_PORTAL_RETURN_URL": "https://app.epox.ai/billing",
    "SMTP_HOST": "smtp.mail.example",
    "MAIL_FROM": "Epox <notifications@epox.ai>",
    "MAIL_UNSUBSCRIBE_SECRET": "unsubscribe-s3cr3t",
    "PUBLIC_BASE_URL": "https://europe-west1-epox-prod.cloudfunctions.net/notifications_api",
    "APP_URL": "https://app.epox.ai",
    "STORE_CREDENTIAL_KMS_KEY": "projects/epox-prod/locations/europe-west1/keyRings/stores/cryptoKeys/credentials",
    "SHOPIFY_CLIENT_ID": "epox-shopify-app",
    "SHOPIFY_CLIENT_SECRET": "shopify-s3cr3t",
    "STORE_CALLBACK_BASE_URL": "https://stores.epox.ai",
    "STORE_WEBHOOK_BASE_URL": "https://hooks.epox.ai",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    switches = [
        "TASKS_BACKEND",
        "TASKS_AUTH_MODE",
        "FETCH_ALLOWED_NETWORKS",
        "AI_ENGINE",
        "STRIPE_API_BASE",
        "GEMINI_BASE_URL",
        "TASKS_LOCAL_DISPATCHER_URL",
        "R2_PUBLIC_ENDPOINT_URL",
        "AUTH_LEEWAY_SECONDS",
        "AUTH_ROLE_CLAIM",
        "AUTH_CLIENT_ID_CLAIM",
        "AUTH_PLATFORM_ADMIN_CLAIM",
        "SMTP_STARTTLS",
        "SMTP_USERNAME",
        "STORE_CREDENTIAL_KEYS",
        "WOOCOMMERCE_ALLOW_HTTP",
        "SHOPIFY_ADMIN_BASE_URL",
    ]
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
        ("WOOCOMMERCE_ALLOW_HTTP", "true", "WOOCOMMERCE_ALLOW_HTTP"),
        ("SHOPIFY_ADMIN_BASE_URL", "http://127.0.0.1:9999", "SHOPIFY_ADMIN_BASE_URL"),
        ("STRIPE_API_BASE", "http://127.0.0.1:9999", "STRIPE_API_BASE"),
        ("AUTH_JWKS_URL", "http://auth.epox.ai/jwks", "https"),
        ("AI_ENGINE", "offline", "AI_ENGINE"),
        ("GEMINI_USE_VERTEX", "false", "GEMINI_API_KEY"),
        # Vendor endpoint overrides would send a secret (or signed requests, or tokens) elsewhere.
        ("GEMINI_BASE_URL", "http://attacker.example", "GEMINI_BASE_URL"),
        ("GEMINI_BASE_URL", "https://generativelanguage.googleapis.com.evil.example", "GEMINI_BASE_URL"),
        ("TASKS_LOCAL_DISPATCHER_URL", "http://127.0.0.1:8000/_dev/tasks", "TASKS_LOCAL_DISPATCHER_URL"),
        ("R2_ENDPOINT_URL", "http://acct.r2.cloudflarestorage.com", "R2_ENDPOINT_URL must use https"),
        ("R2_PUBLIC_ENDPOINT_URL", "http://files.epox.ai", "R2_PUBLIC_ENDPOINT_URL must use https"),
        ("TASKS_TARGET_BASE_URL", "http://europe-west1-epox-prod.cloudfunctions.net", "TASKS_TARGET_BASE_URL"),
        # Clock leeway is capped (a year of leeway accepts tokens that expired a year ago).
        ("AUTH_LEEWAY_SECONDS", "31536000", "auth_leeway_seconds"),
        ("AUTH_LEEWAY_SECONDS", "301", "auth_leeway_seconds"),
        ("AUTH_LEEWAY_SECONDS", "-1", "auth_leeway_seconds"),
        # Browsers send Origin: null from sandboxed frames and files; "*" is not an origin.
        ("CORS_ALLOWED_ORIGINS", '["https://app.epox.ai", "null"]', "CORS_ALLOWED_ORIGINS"),
        ("CORS_ALLOWED_ORIGINS", '["*"]', "CORS_ALLOWED_ORIGINS"),
        ("CORS_ALLOWED_ORIGINS", '["http://app.epox.ai"]', "CORS_ALLOWED_ORIGINS"),
        ("CORS_ALLOWED_ORIGINS", '["https://app.epox.ai/"]', "CORS_ALLOWED_ORIGINS"),
        # Stripe sends the browser back to these: the deployed frontend over https, never a local host.
        ("BILLING_SUCCESS_URL", "http://localhost:3000/billing?checkout=success", "BILLING_SUCCESS_URL"),
        ("BILLING_CANCEL_URL", "https://localhost:3000/billing", "BILLING_CANCEL_URL"),
        ("BILLING_PORTAL_RETURN_URL", "https://127.0.0.1/billing", "BILLING_PORTAL_RETURN_URL"),
        ("BILLING_PORTAL_RETURN_URL", "https://[::1]/billing", "BILLING_PORTAL_RETURN_URL"),
        ("BILLING_PORTAL_RETURN_URL", "https://app.localhost/billing", "BILLING_PORTAL_RETURN_URL"),
        ("BILLING_SUCCESS_URL", "http://app.epox.ai/billing", "BILLING_SUCCESS_URL"),
        ("BILLING_SUCCESS_URL", "app.epox.ai/billing", "BILLING_SUCCESS_URL"),
        # The platform-admin claim cannot be the tenant role (or tenant id) claim.
        ("AUTH_PLATFORM_ADMIN_CLAIM", "role", "AUTH_PLATFORM_ADMIN_CLAIM"),
        ("AUTH_PLATFORM_ADMIN_CLAIM", "client_id", "AUTH_PLATFORM_ADMIN_CLAIM"),
        # Local key-encryption keys sit in the environment in clear: production wraps with Cloud KMS.
        ("STORE_CREDENTIAL_KEYS", '{"v1": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}', "STORE_CREDENTIAL_KEYS"),
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


def test_the_billing_url_defaults_are_refused_in_production(env: pytest.MonkeyPatch) -> None:
    for key, setting in PRODUCTION.items():
        if not key.startswith("BILLING_"):
            env.setenv(key, setting)
    for name in ("BILLING_SUCCESS_URL", "BILLING_CANCEL_URL", "BILLING_PORTAL_RETURN_URL"):
        env.delenv(name, raising=False)
    with pytest.raises(ConfigurationError) as caught:
        get_settings()
    for name in ("BILLING_SUCCESS_URL", "BILLING_CANCEL_URL", "BILLING_PORTAL_RETURN_URL"):
        assert name in str(caught.value)


def test_production_accepts_a_platform_admin_claim_of_its_own_and_https_origins(env: pytest.MonkeyPatch) -> None:
    for key, setting in PRODUCTION.items():
        env.setenv(key, setting)
    env.setenv("AUTH_PLATFORM_ADMIN_CLAIM", "app_metadata.epox_platform_admin")
    env.setenv("AUTH_ROLE_CLAIM", "org.role")
    env.setenv("CORS_ALLOWED_ORIGINS", '["https://app.epox.ai", "https://staging.epox.ai:8443"]')
    env.setenv("AUTH_LEEWAY_SECONDS", "300")
    settings = get_settings()
    assert settings.auth_platform_admin_claim == "app_metadata.epox_platform_admin"
    assert settings.auth_leeway_seconds == 300


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


def test_smtp_credentials_go_over_tls_only(env: pytest.MonkeyPatch) -> None:
    for name, value in PRODUCTION.items():
        env.setenv(name, value)
    env.setenv("SMTP_USERNAME", "apikey")
    env.setenv("SMTP_STARTTLS", "false")
    with pytest.raises(ConfigurationError, match="SMTP_STARTTLS must be true"):
        get_settings()


def test_mail_links_must_be_public_https(env: pytest.MonkeyPatch) -> None:
    for name, value in PRODUCTION.items():
        env.setenv(name, value)
    env.setenv("PUBLIC_BASE_URL", "http://127.0.0.1:8080")
    with pytest.raises(ConfigurationError, match="PUBLIC_BASE_URL must be an https URL"):
        get_settings()
