"""Settings read from the environment (pydantic-settings).

Every variable is documented in README.md and .env.example. In production the settings refuse to
load when something required is missing or when a development-only switch is on, so a misconfigured
deployment fails at cold start with a message that names the variables.

What is required depends on the function: each entry point declares the groups of settings it uses
(:class:`Need`: R2, Stripe, Gemini, the task queue…) and the production guard demands those only, so a
function that never calls Stripe needs no Stripe key. Settings loaded without a declaration (scripts,
``get_settings()``) demand every group.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from enum import Enum
from functools import lru_cache
from ipaddress import ip_address
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import ConfigurationError, VendorNotConfigured
from shared.needs import ALL_NEEDS, Need, required_variables

logger = logging.getLogger("epox.config")


class Environment(str, Enum):
    PRODUCTION = "production"
    DEVELOPMENT = "development"
    TEST = "test"


class TasksBackend(str, Enum):
    CLOUD_TASKS = "cloud_tasks"
    LOCAL = "local"


class TasksAuthMode(str, Enum):
    OIDC = "oidc"
    SHARED_SECRET = "shared_secret"  # noqa: S105 - a mode name, not a secret


class EngineKind(str, Enum):
    GEMINI = "gemini"
    OFFLINE = "offline"


# The needs of the settings being loaded: BaseSettings takes no validation context, so get_settings()
# hands them to the production guard through this variable (None: every group).
_loading_needs: ContextVar[frozenset[Need] | None] = ContextVar("epox_settings_needs", default=None)


class Settings(BaseSettings):
    """All configuration of every function. Field names map to upper-case environment variables."""

    # Empty variables mean "not set": a blank line copied from .env.example keeps the default.
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", env_ignore_empty=True)

    epox_env: Environment = Environment.PRODUCTION
    gcp_project: str = ""
    log_level: str = "INFO"

    # Auth (Better Auth JWT plugin)
    auth_jwks_url: str = ""
    auth_issuer: str = ""
    auth_audience: str = ""
    auth_algorithms: list[str] = Field(default_factory=lambda: ["EdDSA", "RS256"])
    auth_client_id_claim: str = "client_id"
    auth_role_claim: str = "role"  # roles inside the tenant; none of them reaches beyond it
    # Platform operators (the /admin/* routes, every tenant): this claim (a dotted path) must be the
    # JSON boolean true. Only operators may be able to set it in the identity provider; empty: nobody.
    auth_platform_admin_claim: str = "epox_platform_admin"
    # The whole key set is refetched after this long, so a key removed from the JWKS stops verifying.
    auth_jwks_cache_seconds: int = Field(default=600, ge=1, le=86_400)
    # At most one key-set fetch per this many seconds (unknown kids, expiry, failed fetches).
    auth_jwks_refresh_min_seconds: int = Field(default=30, ge=0, le=3_600)
    # While the identity provider cannot be reached, the last good set keeps verifying this long.
    auth_jwks_outage_grace_seconds: int = Field(default=3_600, ge=0, le=86_400)
    auth_leeway_seconds: int = Field(default=30, ge=0, le=300)

    # HTTP
    cors_allowed_origins: list[str] = Field(default_factory=list)
    max_body_bytes: int = 1_048_576
    idempotency_ttl_hours: int = 24

    # R2 (S3 API)
    r2_endpoint_url: str = ""
    r2_access_key_id: str = ""
    r2_secret_access_key: SecretStr = SecretStr("")
    r2_bucket: str = ""
    r2_region: str = "auto"
    r2_public_endpoint_url: str = ""
    presign_expiry_seconds: int = 900

    # Cloud Tasks
    tasks_backend: TasksBackend = TasksBackend.CLOUD_TASKS
    tasks_location: str = ""
    tasks_queue: str = "epox-default"
    # Each worker's own queue (target entry point -> queue name), so one worker's backlog, rate limit and
    # concurrency never hold up another's; a target missing here goes to TASKS_QUEUE.
    tasks_queues: dict[str, str] = Field(default_factory=dict)
    tasks_target_base_url: str = ""
    tasks_service_account: str = ""
    tasks_auth_mode: TasksAuthMode = TasksAuthMode.OIDC
    tasks_dev_secret: SecretStr = SecretStr("")
    tasks_local_dispatcher_url: str = ""
    tasks_max_attempts: int = 8
    # A batch item running longer than this since its last delivery started has no delivery coming
    # (it was killed): /jobs/reap-stuck-items fails it for good. Above the item workers' timeout.
    batch_item_lease_minutes: int = Field(default=120, ge=31)
    # Set by the Cloud Functions runtime to the deployed entry point; a worker's OIDC audience is
    # TASKS_TARGET_BASE_URL/FUNCTION_TARGET exactly.
    function_target: str = ""

    # Uploads and images
    upload_max_bytes: int = 25 * 1024 * 1024
    csv_max_bytes: int = 10 * 1024 * 1024
    # An .xlsx upload (at most CSV_MAX_BYTES packed) may unpack to at most this much: its shared strings
    # and sheet XML are read into memory while it is imported.
    xlsx_max_uncompressed_bytes: int = Field(default=100 * 1024 * 1024, ge=1024 * 1024)
    image_max_pixels: int = 50_000_000
    thumbnail_max_side: int = 512

    # Outbound fetches of user-supplied URLs
    fetch_max_bytes: int = 20 * 1024 * 1024
    fetch_timeout_seconds: float = 20.0
    fetch_allowed_networks: list[str] = Field(default_factory=list)

    # Credits
    low_credit_threshold: int = 10
    price_cache_seconds: float = 60.0
    hold_ttl_minutes: int = 60

    # AI engine
    ai_engine: EngineKind = EngineKind.GEMINI
    gemini_api_key: SecretStr = SecretStr("")
    gemini_use_vertex: bool = False
    gemini_location: str = "global"
    gemini_image_model: str = "gemini-3.1-flash-image"
    gemini_text_model: str = "gemini-3.1-flash-lite"
    gemini_base_url: str = ""
    gemini_api_version: str = ""
    gemini_timeout_seconds: float = 120.0

    # Generation
    output_format: str = Field(default="png", pattern="^(png|webp)$")
    generation_fanout_page: int = 200
    generation_counter_shards: int = 20
    generation_hold_ttl_hours: int = 24

    # Video (Veo and Gemini TTS on Vertex AI: GEMINI_USE_VERTEX=true, project GCP_PROJECT)
    video_model: str = "veo-3.1-fast-generate-001"  # jobs with quality "fast" (the default)
    video_quality_model: str = "veo-3.1-generate-001"  # jobs with quality "quality"
    veo_location: str = "us-central1"
    # gs://bucket/prefix: Veo writes each video there (read back with the function's account) instead of
    # answering its bytes inline; empty: inline.
    video_output_gcs_uri: str = Field(default="", pattern=r"^(gs://[a-z0-9][a-z0-9._-]{1,220}(/.*)?)?$")
    tts_model: str = "gemini-3.8-flash-tts"
    tts_location: str = "global"
    tts_voice: str = "Kore"
    video_max_seconds: int = Field(default=30, ge=4, le=30)  # longest video a job makes (several clips joined)
    video_max_items: int = Field(default=20, ge=1, le=100)  # products or prompts per video job
    video_hold_ttl_hours: int = Field(default=6, ge=1, le=72)
    # Largest video a merchant may upload (POST /videos/uploads); the video toolkit reads at most 300 MB.
    video_upload_max_bytes: int = Field(default=200 * 1024 * 1024, ge=1, le=300 * 1024 * 1024)

    # Billing (Stripe)
    stripe_api_key: SecretStr = SecretStr("")
    stripe_webhook_secret: SecretStr = SecretStr("")
    stripe_api_base: str = ""
    stripe_price_ids: dict[str, str] = Field(default_factory=dict)
    billing_success_url: str = "http://localhost:3000/billing?checkout=success"
    billing_cancel_url: str = "http://localhost:3000/billing?checkout=cancelled"
    billing_portal_return_url: str = "http://localhost:3000/billing"
    signup_bonus_credits: int | None = None

    # CSV import
    import_chunk_rows: int = 25
    import_max_rows: int = 50_000
    import_parallel_chunks: int = Field(default=8, ge=1)
    # A chunk delivery starts no image download after this many seconds and hands the rest of its
    # chunk to a new task: one slow image host holds a worker for at most this plus one download.
    import_chunk_budget_seconds: float = Field(default=120.0, gt=0)
    # catalog_tasks' function timeout, which its chunk tasks also ask Cloud Tasks to wait for.
    catalog_tasks_timeout_seconds: int = Field(default=300, ge=15, le=1800)
    # An import without progress for this long is looked at by /jobs/reap-stuck-imports.
    import_stale_minutes: int = Field(default=30, ge=1)
    # Upload slots a client may have pending (not completed, not expired) at once.
    upload_max_pending: int = Field(default=50, ge=1)

    # ZIP exports (built by catalog_tasks, streamed into R2 in parts of this size: R2's minimum is 5 MiB)
    export_part_mib: int = Field(default=8, ge=5, le=512)
    # A delivery starts no new file after this many seconds once its parts are out, and hands the rest
    # of the archive to a new task (at most 60% of CATALOG_TASKS_TIMEOUT_SECONDS: the file in flight ends).
    export_budget_seconds: float = Field(default=180.0, gt=0)
    # How long a ready export's download URL is valid (R2 presigned URLs: at most 7 days).
    export_link_seconds: int = Field(default=3600, ge=60, le=604_800)
    # IMG-03: listing images need at least this many pixels on the short side (0: no minimum). A
    # generated image a little short of it (at most 10%: 1K at 1:1 is 1024 px) is resampled up to it.
    listing_min_side: int = Field(default=1080, ge=0, le=4096)

    # Editing
    rembg_model_path: str = ""  # the u2net-style ONNX file baked into the edit bundle; relative = to the cwd
    rembg_alpha_matting: bool = False
    edit_max_assets: int = Field(default=100, ge=1, le=100)
    edit_sync_max_assets: int = Field(default=10, ge=1, le=100)  # free pipelines on more assets run as a job
    edit_hold_ttl_hours: int = 6

    # Email (SMTP relay; any provider's relay speaks it)
    smtp_host: str = ""
    smtp_port: int = Field(default=587, ge=1, le=65_535)
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_starttls: bool = True
    smtp_timeout_seconds: float = Field(default=20.0, gt=0, le=120)
    mail_from: str = ""
    # Signs the one-click unsubscribe tokens (HMAC-SHA256); rotating it voids the links already sent.
    mail_unsubscribe_secret: SecretStr = SecretStr("")
    # Where the notifications function is reached from the internet (the unsubscribe links point here).
    public_base_url: str = "http://localhost:8080"
    # The frontend's home (the links in the emails: jobs, billing); billing's own page is BILLING_PORTAL_RETURN_URL.
    app_url: str = "http://localhost:3000"

    # Store credentials at rest (envelope encryption, shared/credentials.py): a Cloud KMS CryptoKey
    # (projects/P/locations/L/keyRings/R/cryptoKeys/K) wraps each connection's data key in production;
    # development and tests use local keys, JSON {"v1": "<base64 of 32 bytes>", …}, sealing with the
    # version named by STORE_CREDENTIAL_KEY_VERSION (the others still open what they sealed).
    store_credential_kms_key: str = ""
    store_credential_keys: SecretStr = SecretStr("")
    store_credential_key_version: str = ""

    # Store connections (Shopify public app with the authorization-code grant; WooCommerce wc-auth)
    shopify_client_id: str = ""
    shopify_client_secret: SecretStr = SecretStr("")
    shopify_api_version: str = "2026-10"
    shopify_scopes: str = "read_products,write_products,write_files"
    # Development and tests only: every shop's https://{shop} is this origin (the Shopify stub).
    shopify_admin_base_url: str = ""
    # Development and tests only: WooCommerce stores may be plain http (the WooCommerce stub).
    woocommerce_allow_http: bool = False
    store_app_name: str = "Epox"
    # Where the store_oauth function is reached from the internet (the OAuth and wc-auth callbacks) …
    store_callback_base_url: str = "http://localhost:8080"
    # … and the store_webhook function (WooCommerce webhooks are created pointing here; Shopify's are
    # declared in the app's configuration, see README "Deploying").
    store_webhook_base_url: str = "http://localhost:8080"
    # A connection's state nonce is good for this long (the merchant approves in between).
    store_oauth_state_minutes: int = Field(default=10, ge=1, le=60)
    # store_tasks' function timeout (import pages, bulk streams, webhook work).
    store_tasks_timeout_seconds: int = Field(default=540, ge=30, le=1800)

    # Sync-back (pushing approved images to the store)
    # How long the presigned URL a store fetches a pushed image from stays valid (Shopify fetches it
    # asynchronously, sometimes minutes later; R2 allows up to 7 days).
    sync_source_url_hours: int = Field(default=24, ge=1, le=168)
    # How long one delivery waits for Shopify to process a pushed image before the queue polls later.
    sync_poll_seconds: float = Field(default=20.0, ge=0.0, le=240.0)
    sync_fanout_page: int = Field(default=200, ge=1, le=500)

    @property
    def is_production(self) -> bool:
        return self.epox_env is Environment.PRODUCTION

    @model_validator(mode="after")
    def _import_chunks_fit_their_worker(self) -> Settings:
        # A delivery may start one last download just before its budget ends; both must end well
        # before the function's timeout, or Cloud Tasks retries a delivery that is still running.
        if self.import_chunk_budget_seconds + self.fetch_timeout_seconds > 0.9 * self.catalog_tasks_timeout_seconds:
            raise ValueError(
                "IMPORT_CHUNK_BUDGET_SECONDS + FETCH_TIMEOUT_SECONDS must stay under 90% of "
                "CATALOG_TASKS_TIMEOUT_SECONDS"
            )
        if self.import_stale_minutes * 60 <= self.catalog_tasks_timeout_seconds:
            raise ValueError("IMPORT_STALE_MINUTES must be longer than CATALOG_TASKS_TIMEOUT_SECONDS")
        if self.export_budget_seconds > 0.6 * self.catalog_tasks_timeout_seconds:
            raise ValueError("EXPORT_BUDGET_SECONDS must stay under 60% of CATALOG_TASKS_TIMEOUT_SECONDS")
        return self

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.is_production:
            needs = _loading_needs.get()
            self.check_production(ALL_NEEDS if needs is None else needs)
        return self

    def check_production(self, needs: Collection[Need]) -> None:
        """Raise ConfigurationError naming every variable a function with these needs misses and every
        development switch that is on. The switches are refused whatever the needs: each one points a
        secret, a token or the network somewhere it must not go."""
        values = {
            "GCP_PROJECT": self.gcp_project,
            "AUTH_JWKS_URL": self.auth_jwks_url,
            "AUTH_ISSUER": self.auth_issuer,
            "AUTH_AUDIENCE": self.auth_audience,
            "R2_ENDPOINT_URL": self.r2_endpoint_url,
            "R2_ACCESS_KEY_ID": self.r2_access_key_id,
            "R2_SECRET_ACCESS_KEY": self.r2_secret_access_key.get_secret_value(),
            "R2_BUCKET": self.r2_bucket,
            "TASKS_LOCATION": self.tasks_location,
            "TASKS_TARGET_BASE_URL": self.tasks_target_base_url,
            "TASKS_SERVICE_ACCOUNT": self.tasks_service_account,
            "FUNCTION_TARGET": self.function_target,
            "STRIPE_API_KEY": self.stripe_api_key.get_secret_value(),
            "STRIPE_WEBHOOK_SECRET": self.stripe_webhook_secret.get_secret_value(),
            "STRIPE_PRICE_IDS": "set" if self.stripe_price_ids else "",
            "SMTP_HOST": self.smtp_host,
            "MAIL_FROM": self.mail_from,
            "MAIL_UNSUBSCRIBE_SECRET": self.mail_unsubscribe_secret.get_secret_value(),
            "STORE_CREDENTIAL_KMS_KEY": self.store_credential_kms_key,
            "SHOPIFY_CLIENT_ID": self.shopify_client_id,
            "SHOPIFY_CLIENT_SECRET": self.shopify_client_secret.get_secret_value(),
        }
        demanded = set(required_variables(needs)) & set(values)
        missing = sorted(name for name in demanded if not values[name])
        unsafe = []
        if self.tasks_backend is not TasksBackend.CLOUD_TASKS:
            unsafe.append("TASKS_BACKEND must be cloud_tasks")
        if self.tasks_auth_mode is not TasksAuthMode.OIDC:
            unsafe.append("TASKS_AUTH_MODE must be oidc")
        if self.ai_engine is EngineKind.OFFLINE:
            unsafe.append("AI_ENGINE must be gemini (the offline engine is for local runs)")
        elif Need.GEMINI in needs and not self.gemini_use_vertex and not self.gemini_api_key.get_secret_value():
            unsafe.append("GEMINI_API_KEY is required unless GEMINI_USE_VERTEX=true")
        if self.stripe_api_base:
            unsafe.append("STRIPE_API_BASE must be empty (it points billing at another server)")
        if self.gemini_base_url:
            unsafe.append("GEMINI_BASE_URL must be empty (it sends the Gemini API key to another server)")
        if self.tasks_local_dispatcher_url:
            unsafe.append("TASKS_LOCAL_DISPATCHER_URL must be empty (the local dispatcher is for the dev stack)")
        if self.store_credential_keys.get_secret_value():
            unsafe.append("STORE_CREDENTIAL_KEYS must be empty (local keys are for development; production uses KMS)")
        if self.fetch_allowed_networks:
            unsafe.append("FETCH_ALLOWED_NETWORKS must be empty (it opens private networks to SSRF)")
        if self.shopify_admin_base_url:
            unsafe.append("SHOPIFY_ADMIN_BASE_URL must be empty (it sends Shopify tokens to another server)")
        if self.woocommerce_allow_http:
            unsafe.append("WOOCOMMERCE_ALLOW_HTTP must be false (store API keys would cross the internet in clear)")
        # Where credentials, signed requests or tokens go: TLS only.
        for name, url in (
            ("AUTH_JWKS_URL", self.auth_jwks_url),
            ("R2_ENDPOINT_URL", self.r2_endpoint_url),
            ("R2_PUBLIC_ENDPOINT_URL", self.r2_public_endpoint_url),
            ("TASKS_TARGET_BASE_URL", self.tasks_target_base_url),
        ):
            if url and not _is_https(url):
                unsafe.append(f"{name} must use https")
        if Need.STORES in needs:
            for name, url in (
                ("STORE_CALLBACK_BASE_URL", self.store_callback_base_url),
                ("STORE_WEBHOOK_BASE_URL", self.store_webhook_base_url),
                ("APP_URL", self.app_url),
            ):
                if not _is_https(url) or _is_local_host(url):
                    unsafe.append(f"{name} must be an https URL reachable from the internet, not {url!r}")
        if Need.MAIL in needs:
            if self.smtp_host and not self.smtp_starttls and self.smtp_username:
                unsafe.append("SMTP_STARTTLS must be true when SMTP_USERNAME is set (credentials go over TLS only)")
            for name, url in (("PUBLIC_BASE_URL", self.public_base_url), ("APP_URL", self.app_url)):
                if not _is_https(url) or _is_local_host(url):
                    unsafe.append(f"{name} must be an https URL reachable from the internet, not {url!r}")
        for name, url in (
            ("BILLING_SUCCESS_URL", self.billing_success_url),
            ("BILLING_CANCEL_URL", self.billing_cancel_url),
            ("BILLING_PORTAL_RETURN_URL", self.billing_portal_return_url),
        ):
            # The defaults are the local frontend: refused where the pages are needed; a value someone
            # set is checked everywhere (a wrong one is a mistake even where it is unused).
            checked = Need.BILLING_PAGES in needs or name.lower() in self.model_fields_set
            if checked and (not _is_https(url) or _is_local_host(url)):
                unsafe.append(f"{name} must be an https URL of the deployed frontend, not {url!r}")
        for origin in self.cors_allowed_origins:
            if origin.strip() in ("null", "*") or not _is_https_origin(origin):
                unsafe.append(f"CORS_ALLOWED_ORIGINS may list https origins only, not {origin!r}")
        platform_claim = self.auth_platform_admin_claim
        if platform_claim and platform_claim in (self.auth_role_claim, self.auth_client_id_claim):
            unsafe.append("AUTH_PLATFORM_ADMIN_CLAIM must be its own claim, not the role or client id claim")
        if missing or unsafe:
            parts = []
            if missing:
                parts.append("missing required settings: " + ", ".join(missing))
            if unsafe:
                parts.append("unsafe settings: " + "; ".join(unsafe))
            raise ConfigurationError("EPOX_ENV=production refuses to start — " + " | ".join(parts))


def require_vendor_settings(vendor: str, values: Mapping[str, str]) -> None:
    """Raise :class:`VendorNotConfigured` (503, logged at ERROR) naming the settings among ``values``
    (name → value) that are empty. Vendor adapters call it when they first build their client, so a
    function without, say, a Stripe key answers a clear 503 where it would use Stripe and works
    everywhere else; production never gets here (it refuses to start without them)."""
    missing = [name for name, value in values.items() if not value]
    if missing:
        logger.error("%s is not configured: %s not set", vendor, ", ".join(missing))
        raise VendorNotConfigured(vendor, missing)


def _is_https(url: str) -> bool:
    try:
        parts = urlsplit(url.strip())
        return parts.scheme == "https" and bool(parts.hostname) and parts.port != 0
    except ValueError:  # an unparsable port or host
        return False


def _is_https_origin(origin: str) -> bool:
    """``https://host[:port]`` and nothing else (browsers send origins in exactly that form)."""
    if not _is_https(origin):
        return False
    parts = urlsplit(origin.strip())
    return not (parts.path or parts.query or parts.fragment or parts.username or parts.password)


def _is_local_host(url: str) -> bool:
    host = (urlsplit(url.strip()).hostname or "").rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified or address.is_private or address.is_link_local


@contextmanager
def _needing(needs: frozenset[Need] | None) -> Iterator[None]:
    token = _loading_needs.set(needs)
    try:
        yield
    finally:
        _loading_needs.reset(token)


@lru_cache(maxsize=1)
def get_settings(needs: frozenset[Need] | None = None) -> Settings:
    """The process-wide settings, read once (cleared by tests through ``get_settings.cache_clear``).

    ``needs``: the groups the running function declared; production then demands those only
    (None: every group)."""
    try:
        with _needing(needs):
            return Settings()
    except ConfigurationError:
        raise
    except ValueError as exc:  # pydantic's ValidationError: bad types in the environment
        raise ConfigurationError(f"invalid settings in the environment: {exc}") from exc
