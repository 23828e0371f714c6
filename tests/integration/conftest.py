"""Fixtures most integration test files use: the API clients they call, one tenant's headers, a
plain HTTP client for presigned URLs, an environment in which the Gemini SDK sees only the stub, and
the store tests' served stack, WooCommerce stub and platforms (each store test module brings its own
``shopify`` stub).

A test module's own fixture of the same name takes precedence over these.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.billing_events import Clock, Subscriber, install_clock, onboard_and_link


@pytest.fixture
def headers(stack: Any, client_id: str) -> dict[str, str]:
    """The test's client (tenant), signed in as a user."""
    minted: dict[str, str] = stack.headers(client_id)
    return minted


@pytest.fixture
def catalog(stack: Any) -> Any:
    return stack.client("catalog_api")


@pytest.fixture
def gen(stack: Any) -> Any:
    return stack.client("generate_api")


@pytest.fixture
def edit(stack: Any) -> Any:
    return stack.client("edit_api")


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """A client for presigned URLs, as the browser uses them (no proxy settings from the environment)."""
    with httpx.Client(trust_env=False, timeout=30) as client:
        yield client


# The billing tests' Stripe world: a clock the webhook and ledger share, the webhook function, and a
# subscriber already linked to a Stripe customer (a module's own fixture of the same name wins).


@pytest.fixture
def clock(stack: Any) -> Clock:
    c = Clock(datetime.now(UTC).replace(microsecond=0))
    install_clock(stack, c)
    return c


@pytest.fixture
def hook(stack: Any) -> Any:
    return stack.client("stripe_webhook")


@pytest.fixture
def sub(stack: Any, clock: Clock, client_id: str) -> Subscriber:
    s = Subscriber(client_id, clock=clock)
    onboard_and_link(stack, s)
    return s


@pytest.fixture
def clean_gemini_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No API key, Vertex AI switch or base URL from the environment reaches the Gemini SDK."""
    for name in ("GOOGLE_API_KEY", "GEMINI_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GEMINI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def notifications(stack: Any) -> Any:
    return stack.client("notifications_api")


# -- store connections and sync-back -------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(function_apps: dict[str, Any]) -> Iterator[str]:
    """Every entry point on a real HTTP server (the stores call our callbacks and fetch our images)."""
    from tests.store_stack import serving

    with serving(function_apps) as base:
        yield base


@pytest.fixture
def woo() -> Iterator[Any]:
    from dev.stubs.woocommerce import WooStub
    from dev.stubs.woocommerce import running as woo_running

    with woo_running(WooStub()) as stub:
        yield stub


@pytest.fixture
def shop_platform(stack: Any, served: str, shopify: Any) -> Any:
    """The platform pointed at the module's ``shopify`` stub and the served store functions."""
    from tests.platforms import install
    from tests.store_stack import store_settings

    return install(stack, **store_settings(served, shopify))


@pytest.fixture
def woo_platform(stack: Any, served: str) -> Any:
    from tests.platforms import install
    from tests.store_stack import store_settings

    return install(stack, **store_settings(served))


# -- every query the real Firestore client runs is checked against infra/firestore.json ------------------


def pytest_configure(config: pytest.Config) -> None:
    """The index guard (:mod:`tests.firestore_index_guard`): a query needing an index the list lacks fails
    its test; ``EPOX_RECORD_FIRESTORE_INDEXES=PATH`` records what the queries need instead."""
    from tests.firestore_index_guard import IndexGuard

    if not config.pluginmanager.has_plugin(IndexGuard.NAME):
        guard = IndexGuard.from_env()
        guard.install()
        config.pluginmanager.register(guard, IndexGuard.NAME)
