"""The process-wide wiring: settings plus lazily built adapters.

Entry points ask :func:`get_platform` for what they need on the first request, never at import
time. Tests build a :class:`Platform` with their own adapters (moto-backed storage, a recording
queue, a fetcher that may reach a local server) and install it with :func:`set_platform`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.config import Settings, TasksAuthMode, TasksBackend, get_settings
from shared.needs import Need

if TYPE_CHECKING:
    from flask import Request
    from google.cloud.firestore import Client

    from shared.adapters.firestore.billing import FirestoreBillingStore
    from shared.auth import JwtVerifier, Principal
    from shared.batch.store import JobShelf, JobStore
    from shared.billing.deadletters import DeadLetters
    from shared.billing.gateway import PaymentGateway
    from shared.catalog.ports import CatalogRepositories
    from shared.credentials import CredentialCipher
    from shared.engines.base import ImageEngine
    from shared.engines.video import SpeechEngine, VideoEngine
    from shared.events.consumer import EventConsumer
    from shared.events.outbox import EventKicker, Outbox
    from shared.exports.ports import ExportRepository
    from shared.generation.store import GenerationSettingsStore
    from shared.idempotency import IdempotencyKeys
    from shared.ledger.pricing import PriceBook
    from shared.ledger.service import Ledger
    from shared.ledger.store import LedgerReader
    from shared.mail.port import Mailer
    from shared.notifications.email import EmailLog, EmailNotifier
    from shared.notifications.email_templates import MailLinks
    from shared.notifications.inbox import NotificationStore
    from shared.notifications.preferences import PreferencesStore
    from shared.notifications.weekly import GeneratedImages
    from shared.safe_fetch import SafeFetcher
    from shared.storage import ObjectStore
    from shared.stores.mirror import StoreProductWatcher
    from shared.stores.ports import ShopifyAdmin, WooCommerceApi
    from shared.stores.repository import StoreRepository
    from shared.sync.repository import SyncRepository
    from shared.tasks import TaskCall, TaskCallVerifier, TaskQueue
    from shared.tenancy import ClientDirectory, Onboarding


def utc_now() -> datetime:
    return datetime.now(UTC)


class Platform:
    """Adapters for one process, each created on first use."""

    def __init__(
        self,
        settings: Settings,
        *,
        db: Client | None = None,
        object_store: ObjectStore | None = None,
        task_queue: TaskQueue | None = None,
        fetcher: SafeFetcher | None = None,
        jwt_verifier: JwtVerifier | None = None,
        task_verifier: TaskCallVerifier | None = None,
        clock: Callable[[], datetime] = utc_now,
        ledger: Ledger | None = None,
        engine: ImageEngine | None = None,
        video_engine: VideoEngine | None = None,
        speech_engine: SpeechEngine | None = None,
        payment_gateway: PaymentGateway | None = None,
        event_consumers: Callable[[Platform], list[EventConsumer]] | None = None,
        mailer: Mailer | None = None,
        credential_cipher: CredentialCipher | None = None,
        shopify_admin: ShopifyAdmin | None = None,
        woocommerce: WooCommerceApi | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._db = db
        self._object_store = object_store
        self._task_queue = task_queue
        self._fetcher = fetcher
        self._jwt_verifier = jwt_verifier
        self._task_verifier = task_verifier
        self._ledger = ledger
        self._engine = engine
        self._video_engine = video_engine
        self._speech_engine = speech_engine
        self._gateway = payment_gateway
        self._event_consumers = event_consumers
        self._mailer = mailer
        self._cipher = credential_cipher
        self._shopify = shopify_admin
        self._woocommerce = woocommerce
        self._price_book: PriceBook | None = None
        # Re-entrant: a lazily built adapter may need another one (onboarding builds on the Firestore client).
        self._lock = threading.RLock()
        self._onboarding: Onboarding | None = None

    # -- adapters --------------------------------------------------------------------------------
    @property
    def db(self) -> Client:
        if self._db is None:
            with self._lock:
                if self._db is None:
                    from google.cloud import firestore

                    self._db = firestore.Client(project=self.settings.gcp_project or None)
        return self._db

    @property
    def object_store(self) -> ObjectStore:
        if self._object_store is None:
            with self._lock:
                if self._object_store is None:
                    from shared.storage import R2ObjectStore

                    self._object_store = R2ObjectStore.from_settings(self.settings)
        return self._object_store

    @property
    def task_queue(self) -> TaskQueue:
        if self._task_queue is None:
            with self._lock:
                if self._task_queue is None:
                    self._task_queue = _build_task_queue(self.settings)
        return self._task_queue

    @property
    def fetcher(self) -> SafeFetcher:
        if self._fetcher is None:
            with self._lock:
                if self._fetcher is None:
                    self._fetcher = _build_fetcher(self.settings)
        return self._fetcher

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            with self._lock:
                if self._ledger is None:
                    from shared.adapters.firestore.ledger import FirestoreLedgerStore
                    from shared.ledger.service import Ledger

                    self._ledger = Ledger(
                        FirestoreLedgerStore(self.db, self.event_kicker),
                        clock=self.clock,
                        low_balance_threshold=self.settings.low_credit_threshold,
                    )
        return self._ledger

    @property
    def engine(self) -> ImageEngine:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    from shared.config import EngineKind

                    if self.settings.ai_engine is EngineKind.OFFLINE:
                        from shared.engines.offline import OfflineEngine

                        self._engine = OfflineEngine()
                    else:
                        from shared.engines.gemini import GeminiConfig, GeminiEngine

                        self._engine = GeminiEngine(GeminiConfig.from_settings(self.settings))
        return self._engine

    @property
    def video_engine(self) -> VideoEngine:
        """Veo on Vertex AI (AI_ENGINE=gemini), or the offline video engine; built on first use."""
        if self._video_engine is None:
            self._build_video_engines()
        assert self._video_engine is not None
        return self._video_engine

    @property
    def speech_engine(self) -> SpeechEngine:
        """Gemini TTS on Vertex AI (AI_ENGINE=gemini), or the offline speech engine; built on first use."""
        if self._speech_engine is None:
            self._build_video_engines()
        assert self._speech_engine is not None
        return self._speech_engine

    def _build_video_engines(self) -> None:
        with self._lock:
            if self._video_engine is not None and self._speech_engine is not None:
                return
            from shared.config import EngineKind

            video: VideoEngine
            speech: SpeechEngine
            if self.settings.ai_engine is EngineKind.OFFLINE:
                from shared.engines.offline_video import OfflineSpeechEngine, OfflineVideoEngine

                video, speech = OfflineVideoEngine(), OfflineSpeechEngine()
            else:
                from shared.engines.veo import veo_config, veo_engines

                video, speech = veo_engines(veo_config(self.settings))
            self._video_engine = self._video_engine or video
            self._speech_engine = self._speech_engine or speech

    @property
    def payment_gateway(self) -> PaymentGateway:
        if self._gateway is None:
            from shared.billing.gateway import StripeGateway

            self._gateway = StripeGateway.from_settings(self.settings)
        return self._gateway

    @property
    def price_book(self) -> PriceBook:
        if self._price_book is None:
            from shared.adapters.firestore.ledger import FirestorePriceOverrides
            from shared.ledger.pricing import PriceBook

            self._price_book = PriceBook(
                FirestorePriceOverrides(self.db), ttl_seconds=self.settings.price_cache_seconds
            )
        return self._price_book

    @property
    def outbox(self) -> Outbox:
        """The events waiting for the relay, its positions and parked deliveries."""
        from shared.adapters.firestore.outbox import FirestoreOutbox

        return FirestoreOutbox(self.db)

    @property
    def event_kicker(self) -> EventKicker:
        """Starts the relay of events a commit just wrote (best effort; the sweep backs it up)."""
        from shared.events.relay import TaskKicker

        return TaskKicker(self.task_queue)

    def event_consumers(self) -> list[EventConsumer]:
        """Everything that reacts to events (the relay's registry), built for this platform."""
        if self._event_consumers is not None:
            return self._event_consumers(self)
        from shared.notifications.in_app import InAppNotifier
        from shared.sync.auto import AutoSync

        consumers: list[EventConsumer] = [
            InAppNotifier(self.notifications, self.notification_preferences),
            AutoSync(self.sync, self.task_queue),
        ]
        s = self.settings
        # Email where it is configured (production demands it of the functions that need mail); a
        # development stack without SMTP notifies in-app only.
        if s.mail_unsubscribe_secret.get_secret_value() and s.smtp_host and s.mail_from:
            consumers.append(self.email_notifier())
        return consumers

    @property
    def ledger_reader(self) -> LedgerReader:
        """The ledger's read side (history, usage, client records, the clients the jobs visit)."""
        from shared.adapters.firestore.ledger import FirestoreLedgerReader

        return FirestoreLedgerReader(self.db)

    # -- repositories: the Firestore adapters of each aggregate (cheap wrappers over ``db``) ------------
    @property
    def catalog(self) -> CatalogRepositories:
        """Products (+ slot usage), assets (+ revisions), uploads and imports (+ chunks)."""
        from shared.adapters.firestore.catalog import firestore_catalog

        return firestore_catalog(self.db, self.event_kicker)

    @property
    def stores(self) -> StoreRepository:
        """Store connections, the shop index, OAuth states and webhook deliveries seen."""
        from shared.adapters.firestore.stores import FirestoreStoreRepository

        return FirestoreStoreRepository(self.db, self.event_kicker)

    # -- store platforms and their credentials -----------------------------------------------------------
    @property
    def credential_cipher(self) -> CredentialCipher:
        """Seals store credentials: Cloud KMS (STORE_CREDENTIAL_KMS_KEY) or local keys (development)."""
        if self._cipher is None:
            with self._lock:
                if self._cipher is None:
                    from shared.adapters.kms import credential_cipher

                    self._cipher = credential_cipher(self.settings)
        return self._cipher

    @property
    def shopify_admin(self) -> ShopifyAdmin:
        """Shopify's OAuth and Admin GraphQL API (SHOPIFY_*); 503 without the app's credentials."""
        if self._shopify is None:
            with self._lock:
                if self._shopify is None:
                    from shared.adapters.shopify import shopify_admin

                    self._shopify = shopify_admin(self.settings)
        return self._shopify

    @property
    def woocommerce(self) -> WooCommerceApi:
        """WooCommerce's REST API, every request SSRF-guarded by the platform's fetcher."""
        if self._woocommerce is None:
            with self._lock:
                if self._woocommerce is None:
                    from shared.adapters.woocommerce import woocommerce_api

                    self._woocommerce = woocommerce_api(self.settings, self.fetcher)
        return self._woocommerce

    @property
    def billing(self) -> FirestoreBillingStore:
        """Billing state and Stripe markers: the webhook's BillingStore and the API's BillingAccounts."""
        from shared.adapters.firestore.billing import FirestoreBillingStore

        return FirestoreBillingStore(self.db, self.event_kicker)

    @property
    def stripe_dead_letters(self) -> DeadLetters:
        """Poison Stripe events, quarantined for an operator's replay (``stripe_dead_letters``)."""
        from shared.adapters.firestore.deadletters import FirestoreDeadLetters

        return FirestoreDeadLetters(self.db)

    @property
    def generation_settings(self) -> GenerationSettingsStore:
        """Brand profile, presets and remembered generation defaults."""
        from shared.adapters.firestore.settings import FirestoreGenerationSettings

        return FirestoreGenerationSettings(self.db)

    @property
    def sync(self) -> SyncRepository:
        """Sync-back's records, snapshots, per-product counts, history and settings."""
        from shared.adapters.firestore.sync import FirestoreSyncRepository

        return FirestoreSyncRepository(self.db)

    def store_watchers(self) -> tuple[StoreProductWatcher, ...]:
        """What follows store products' changes besides the catalog's mirror (sync-back's records)."""
        from shared.sync.service import SyncWatcher

        return (SyncWatcher(self.sync, self.catalog),)

    def job_store(self, kind: JobShelf[Any, Any]) -> JobStore[Any, Any]:
        """One job kind's jobs, items, counters, fan-out page markers and reaper cursor."""
        from shared.adapters.firestore.batch import FirestoreJobStore

        return FirestoreJobStore(self.db, kind, self.event_kicker)

    @property
    def exports(self) -> ExportRepository:
        """ZIP exports (``clients/{client}/exports``)."""
        from shared.adapters.firestore.exports import FirestoreExportRepository

        return FirestoreExportRepository(self.db)

    def idempotency_keys(self) -> IdempotencyKeys:
        """The Idempotency-Key rules over the Firestore records (IDEMPOTENCY_TTL_HOURS)."""
        from shared.adapters.firestore.idempotency import FirestoreIdempotencyStore
        from shared.idempotency import IdempotencyKeys

        ttl = timedelta(hours=self.settings.idempotency_ttl_hours)
        return IdempotencyKeys(FirestoreIdempotencyStore(self.db), ttl, self.clock)

    @property
    def notifications(self) -> NotificationStore:
        """In-app notifications (``clients/{c}/notifications``)."""
        from shared.adapters.firestore.notifications import FirestoreNotificationStore

        return FirestoreNotificationStore(self.db)

    @property
    def notification_preferences(self) -> PreferencesStore:
        """Which notifications a client gets, and where (``clients/{c}/settings/notifications``)."""
        from shared.adapters.firestore.notifications import FirestorePreferencesStore

        return FirestorePreferencesStore(self.db)

    # -- email ----------------------------------------------------------------------------------------
    @property
    def mailer(self) -> Mailer:
        """The SMTP relay (SMTP_*, MAIL_FROM); 503 ``vendor_not_configured`` without SMTP_HOST/MAIL_FROM."""
        if self._mailer is None:
            with self._lock:
                if self._mailer is None:
                    from shared.mail.smtp import SmtpMailer

                    self._mailer = SmtpMailer.from_settings(self.settings)
        return self._mailer

    @property
    def mail_links(self) -> MailLinks:
        """Where the emails link to, and the unsubscribe tokens' key (MAIL_UNSUBSCRIBE_SECRET)."""
        from shared.config import require_vendor_settings
        from shared.notifications.email_templates import MailLinks

        s = self.settings
        secret = s.mail_unsubscribe_secret.get_secret_value()
        require_vendor_settings("Email (unsubscribe links)", {"MAIL_UNSUBSCRIBE_SECRET": secret})
        return MailLinks(
            app_url=s.app_url,
            billing_url=s.billing_portal_return_url,
            unsubscribe_url=s.public_base_url.rstrip("/") + "/unsubscribe",
            unsubscribe_secret=secret,
        )

    @property
    def client_directory(self) -> ClientDirectory:
        from shared.adapters.firestore.tenancy import FirestoreClientDirectory

        return FirestoreClientDirectory(self.db)

    @property
    def email_log(self) -> EmailLog:
        """The sent-markers: ``clients/{c}/emails/{event id | weekly-{week}}``."""
        from shared.adapters.firestore.emails import FirestoreEmailLog

        return FirestoreEmailLog(self.db)

    @property
    def generated_images(self) -> GeneratedImages:
        """What the weekly summary counts: images of generation jobs finished in a window."""
        from shared.adapters.firestore.activity import FirestoreGeneratedImages

        return FirestoreGeneratedImages(self.db)

    def email_notifier(self) -> EmailNotifier:
        """The ``email`` consumer of domain events."""
        from shared.notifications.email import EmailNotifier

        return EmailNotifier(
            self.notification_preferences,
            self.client_directory,
            self.email_log,
            lambda: self.mailer,
            self.mail_links,
            self.clock,
        )

    # -- request-time services the HTTP layer uses ------------------------------------------------
    def authenticate(self, authorization: str | None) -> Principal:
        return self._verifier().verify_authorization(authorization)

    def _verifier(self) -> JwtVerifier:
        with self._lock:
            if self._jwt_verifier is not None:
                return self._jwt_verifier
            from shared.auth import JwtVerifier

            s = self.settings
            self._jwt_verifier = JwtVerifier(
                jwks_url=s.auth_jwks_url,
                issuer=s.auth_issuer,
                audience=s.auth_audience,
                algorithms=s.auth_algorithms,
                client_id_claim=s.auth_client_id_claim,
                role_claim=s.auth_role_claim,
                platform_admin_claim=s.auth_platform_admin_claim,
                leeway_seconds=s.auth_leeway_seconds,
                jwks_cache_seconds=s.auth_jwks_cache_seconds,
                jwks_refresh_min_seconds=s.auth_jwks_refresh_min_seconds,
                jwks_outage_grace_seconds=s.auth_jwks_outage_grace_seconds,
            )
            return self._jwt_verifier

    def verify_task_call(self, request: Request) -> TaskCall:
        return self._task_call_verifier().verify(request)

    def verify_scheduler_call(self, request: Request) -> None:
        self._task_call_verifier().authenticate(request)

    def _task_call_verifier(self) -> TaskCallVerifier:
        if self._task_verifier is None:
            from shared.tasks import OidcTaskVerifier, SharedSecretTaskVerifier

            s = self.settings
            if s.tasks_auth_mode is TasksAuthMode.SHARED_SECRET:
                self._task_verifier = SharedSecretTaskVerifier(s.tasks_dev_secret.get_secret_value())
            else:
                self._task_verifier = OidcTaskVerifier.for_function(
                    s.tasks_service_account, s.tasks_target_base_url, s.function_target
                )
        return self._task_verifier

    @property
    def onboarding(self) -> Onboarding:
        """The tenancy step of a client's first signed-in call, welcomed by billing (Free plan and bonus)."""
        if self._onboarding is None:
            with self._lock:
                if self._onboarding is None:
                    from shared.adapters.firestore.tenancy import FirestoreClientDirectory
                    from shared.tenancy import Onboarding

                    self._onboarding = Onboarding(FirestoreClientDirectory(self.db), self._welcome, self.clock)
        return self._onboarding

    def _welcome(self, client_id: str, now: datetime) -> None:
        from shared.billing.catalog import load_catalog
        from shared.billing.service import onboard_client

        catalog = load_catalog()
        bonus = self.settings.signup_bonus_credits
        signup_bonus = catalog.signup_bonus if bonus is None else bonus
        onboard_client(self.billing, self.ledger, catalog, client_id, signup_bonus, now)


def _build_task_queue(settings: Settings) -> TaskQueue:
    from shared.tasks import CloudTasksQueue, LocalDispatcherQueue

    if settings.tasks_backend is TasksBackend.LOCAL:
        return LocalDispatcherQueue(
            dispatcher_url=settings.tasks_local_dispatcher_url,
            target_base_url=settings.tasks_target_base_url,
            default_queue=settings.tasks_queue,
            queues=dict(settings.tasks_queues),
        )
    return CloudTasksQueue.from_settings(settings)


def _build_fetcher(settings: Settings) -> SafeFetcher:
    from ipaddress import ip_network

    from shared.safe_fetch import AddressPolicy, FetchLimits, SafeFetcher

    policy = AddressPolicy(extra_allowed_networks=[ip_network(net) for net in settings.fetch_allowed_networks])
    limits = FetchLimits(max_bytes=settings.fetch_max_bytes, total_timeout=settings.fetch_timeout_seconds)
    return SafeFetcher(policy=policy, limits=limits)


_platform: Platform | None = None
_platform_lock = threading.Lock()


def get_platform(needs: Collection[Need] | None = None) -> Platform:
    """The process's platform, built from the environment on first use; ``needs``: the settings groups
    the serving entry point declared, the only ones production then demands (None: all)."""
    global _platform
    if _platform is None:
        with _platform_lock:
            if _platform is None:
                from shared import logging as log

                settings = get_settings(None if needs is None else frozenset(needs))
                log.configure(settings.log_level, settings.gcp_project)
                _platform = Platform(settings)
    return _platform


def set_platform(platform: Platform | None) -> None:
    """Install a platform (tests, dev stack); ``None`` makes the next call rebuild from settings."""
    global _platform
    _platform = platform
