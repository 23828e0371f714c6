"""Stripe refusing our own API key is the operator's problem, not the merchant's: a 502 problem that
says billing is unavailable, an error in the logs, and nothing half-done in Firestore."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from dev.stubs.stripe import StripeStub, running
from tests.billing_events import billing_of, install_gateway


@pytest.mark.parametrize("path", ["/checkout", "/portal"])
def test_a_revoked_stripe_key_is_a_502_and_an_error_log(
    stack: Any, client_id: str, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    with running(StripeStub(api_key="sk_test_rotated")) as stub:
        install_gateway(stack, stub)
        body = {"kind": "plan", "plan_id": "growth", "interval": "monthly"} if path == "/checkout" else {}
        with caplog.at_level(logging.ERROR, logger="epox.billing"):
            response = stack.client("billing_api").post(path, json=body, headers=stack.headers(client_id))
        assert response.status_code == 502, response.json
        assert response.content_type == "application/problem+json"
        assert response.json["code"] == "upstream_rejected_credentials"
        assert "Retry-After" not in response.headers
        assert any("STRIPE_API_KEY" in r.getMessage() for r in caplog.records)
        assert stub.customers == {} and stub.sessions == {}
        assert not billing_of(stack, client_id).get("stripe_customer_id")
