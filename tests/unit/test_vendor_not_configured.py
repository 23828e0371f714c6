"""A vendor adapter missing its credential answers 503 ``vendor_not_configured`` naming the settings
(never their values) and logs an ERROR, instead of crashing into a 500 or reaching for a default
(boto3's AWS credential chain and AWS's own endpoint, say). Production refuses to start without them."""

from __future__ import annotations

import logging

import pytest

from shared.billing.gateway import StripeGateway
from shared.config import require_vendor_settings
from shared.engines.base import ImageRequest
from shared.engines.gemini import GeminiConfig, GeminiEngine
from shared.errors import VendorNotConfigured
from shared.http.problems import problem_body
from shared.storage import R2ObjectStore


def test_the_problem_names_the_missing_settings_only(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR), pytest.raises(VendorNotConfigured) as raised:
        require_vendor_settings("Example", {"EXAMPLE_KEY": "", "EXAMPLE_SECRET": "s3cr3t-value", "EXAMPLE_URL": ""})
    error = raised.value
    body = problem_body(error, instance="/x", request_id="r")
    assert (error.status, body["code"], body["settings"]) == (
        503,
        "vendor_not_configured",
        ["EXAMPLE_KEY", "EXAMPLE_URL"],
    )
    assert "s3cr3t-value" not in str(body)
    [record] = [r for r in caplog.records if r.name == "epox.config"]
    assert record.levelno == logging.ERROR and "EXAMPLE_KEY, EXAMPLE_URL" in record.getMessage()


def test_all_set_raises_nothing() -> None:
    require_vendor_settings("Example", {"EXAMPLE_KEY": "k"})


def test_stripe_without_an_api_key() -> None:
    with pytest.raises(VendorNotConfigured) as raised:
        StripeGateway("").create_customer("c1", None)
    assert raised.value.extensions["settings"] == ["STRIPE_API_KEY"]


def test_gemini_without_an_api_key_or_a_vertex_project() -> None:
    with pytest.raises(VendorNotConfigured) as raised:
        GeminiEngine(GeminiConfig(api_key="")).generate(ImageRequest(prompt="A mug"))
    assert raised.value.extensions["settings"] == ["GEMINI_API_KEY"]
    with pytest.raises(VendorNotConfigured) as raised:
        GeminiEngine(GeminiConfig(use_vertex=True, project="")).generate(ImageRequest(prompt="A mug"))
    assert raised.value.extensions["settings"] == ["GCP_PROJECT"]


def test_r2_without_its_settings() -> None:
    store = R2ObjectStore(endpoint_url="", access_key_id="", secret_access_key="secret-value", bucket="b")
    with pytest.raises(VendorNotConfigured) as raised:
        store.put("clients/c1/x.png", b"x", "image/png")
    assert raised.value.extensions["settings"] == ["R2_ENDPOINT_URL", "R2_ACCESS_KEY_ID"]
    assert "secret-value" not in raised.value.detail
    with pytest.raises(VendorNotConfigured):
        store.presigned_get("clients/c1/x.png", expires_in=60)
    with pytest.raises(VendorNotConfigured):  # not "not found", not "unavailable"
        store.head("clients/c1/x.png")
