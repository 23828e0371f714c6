"""The API contract as the floor of bad-input testing: schemathesis generates requests for every
operation of every public function from the document that function serves (``GET /openapi.json``),
valid and invalid, signed in and not, and sends them to the real function (functions-framework's WSGI
app) over the real platform (Firestore emulator, moto R2, the Stripe stub, the offline engine).

Every answer must be no server error, a status the operation documents, with the documented content
type, headers and body schema (problems included: their ``code`` must be one the operation lists); an
invalid request must be refused with a 4xx, and one without credentials with a 401.
The number of examples per operation and mode is bounded (``EPOX_CONTRACT_EXAMPLES``, default 12)
so CI stays fast; raise it locally to search harder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

BASE_URL = "http://localhost"  # the function's root: each document's paths are relative to it
EXAMPLES = int(os.environ.get("EPOX_CONTRACT_EXAMPLES", "12"))
_LOCAL_KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # 32 bytes, base64 (a test key)
PUBLIC_ENTRY_POINTS = (
    "billing_api",
    "catalog_api",
    "credits_api",
    "edit_api",
    "generate_api",
    "notifications_api",
    "store_oauth",
    "store_webhook",
    "stripe_webhook",
    "sync_api",
    "video_api",
)
INTERNAL_ENTRY_POINTS = (
    "billing_jobs",
    "catalog_tasks",
    "credits_jobs",
    "edit_tasks",
    "generate_tasks",
    "notifications_tasks",
    "store_tasks",
    "sync_tasks",
    "video_tasks",
)


@pytest.fixture(scope="module")
def rembg_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.rembg_model import build_tiny_u2net

    return build_tiny_u2net(tmp_path_factory.mktemp("rembg") / "tiny_u2net.onnx")


@pytest.fixture
def platform(stack: Any, rembg_model: Path) -> Iterator[Any]:
    """Every dependency a route can reach is there: Stripe is the stub (through the real client) and
    background removal has a model, the unsubscribe links a key and email a relay address (nothing listens
    there: a send is a documented 503), so no answer is a 503 for want of configuration."""
    from pydantic import SecretStr

    from dev.stubs.stripe import StripeStub, running
    from tests.billing_events import install_gateway

    settings = stack.platform.settings.model_copy(
        update={
            "rembg_model_path": str(rembg_model),
            "mail_unsubscribe_secret": SecretStr("contract-unsubscribe-secret"),
            "smtp_host": "127.0.0.1",
            "smtp_port": 9,  # discard: refused
            "mail_from": "contract@epox.test",
            # Store connections: the app's credentials and a local key (nothing listens at the Shopify
            # base: a call that reaches Shopify is a documented 503).
            "shopify_client_id": "contract-client",
            "shopify_client_secret": SecretStr("contract-secret"),
            "shopify_admin_base_url": "http://127.0.0.1:9",
            "store_credential_keys": SecretStr('{"v1": "' + _LOCAL_KEY + '"}'),
            "store_credential_key_version": "v1",
        }
    )
    # Admin operations change deployment-wide state (PUT /admin/prices): put it back for the tests after.
    prices = stack.platform.db.collection("settings").document("prices")
    before = prices.get()
    try:
        with running(StripeStub(prices=set(settings.stripe_price_ids.values()))) as stub:
            yield install_gateway(stack, stub, settings=settings)
    finally:
        if before.exists:
            prices.set(before.to_dict())
        else:
            prices.delete()


def _mutates_authorization(case: Any) -> bool:
    """Whether the case's invalid data includes its Authorization header, which ``_send_examples`` replaces
    with a real credential: the request the app gets is then not the invalid one schemathesis judges."""
    data = getattr(getattr(getattr(case, "meta", None), "phase", None), "data", None)
    mutations = getattr(data, "mutations", None) or []
    named = [getattr(data, "parameter", None)]
    for mutation in mutations:
        named += [getattr(mutation, "parameter", None), str(getattr(mutation, "schema_pointer", "")).rsplit("/", 1)[-1]]
    return any(str(name).lower() == "authorization" for name in named if name)


def _checks() -> list[Callable[..., Any]]:
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    def invalid_data_is_refused(ctx: Any, response: Any, case: Any) -> bool | None:
        """schemathesis' negative_data_rejection, with 413 counted as a refusal (a body over the route's
        limit is refused before it is read, which is what an over-long generated body gets)."""
        if response.status_code == 413:
            return None
        if _mutates_authorization(case):
            return None
        result: bool | None = negative_data_rejection(ctx, response, case)
        return result

    return [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        invalid_data_is_refused,
    ]


# What an anonymous request to an operation that needs credentials may get: 401, or the router's answers
# before authentication (a path id it cannot route is a 404, an oversized body a 413).
ANONYMOUS_REFUSALS = frozenset({401, 404, 413})


def _send_examples(app: Any, operation: Any, mode: Any, headers: dict[str, str]) -> int:
    """Send up to EXAMPLES generated requests for ``operation``; raise on the first broken check
    (an operation that needs credentials must refuse a request without them)."""
    from hypothesis import HealthCheck, given, settings

    checks = _checks()
    sent = 0
    refuses_anonymous = bool(operation.definition.raw.get("security")) and "Authorization" not in headers

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    def run(case: Any) -> None:
        nonlocal sent
        sent += 1
        response = case.call(app=app, base_url=BASE_URL, headers=headers)
        case.validate_response(response, checks=checks)
        if refuses_anonymous and response.status_code not in ANONYMOUS_REFUSALS:
            raise AssertionError(f"answered {response.status_code} without credentials: {response.text[:300]}")

    run()
    return sent


def _fuzz(app: Any, headers_for: Callable[[dict[str, Any]], dict[str, str]]) -> tuple[int, int, list[str]]:
    """Run every operation of ``app``'s own document; (operations, requests sent, failures)."""
    import schemathesis
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    document = app.test_client().get("/openapi.json").get_json()
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []
    operations = 0
    sent = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                sent += _send_examples(app, operation, mode, headers_for(operation.definition.raw))
            except Unsatisfiable:
                continue  # nothing to make invalid: no parameters and no body
            except Exception as failure:  # every operation is tried; all failures are reported together
                failures.append(f"{operation.label} [{mode.value}]: {failure}")
    return operations, sent, failures


@pytest.mark.parametrize("entry", PUBLIC_ENTRY_POINTS)
def test_public_operations_keep_their_contract_for_a_signed_in_caller(
    stack: Any, platform: Any, entry: str, client_id: str
) -> None:
    """Signed in (an operator's token on admin operations), with credits to spend, so valid requests
    get past authentication and the ledger into the use cases."""
    from shared.ledger.model import Actor, GrantSource

    platform.ledger.grant(
        client_id,
        key="contract",
        amount=500,
        source=GrantSource.ADMIN,
        actor=Actor(kind="system", id="contract-test"),
        reason="contract",
    )
    user = stack.headers(client_id)
    operator = stack.headers(client_id, role="admin")

    def headers_for(operation: dict[str, Any]) -> dict[str, str]:
        return operator if operation.get("x-epox-access") == "admin" else user

    operations, sent, failures = _fuzz(stack.apps[entry], headers_for)
    print(f"{entry} signed in: {operations} operations, {sent} requests")
    assert operations >= 2 and sent >= operations * 2
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("entry", PUBLIC_ENTRY_POINTS + INTERNAL_ENTRY_POINTS)
def test_every_operation_keeps_its_contract_for_an_anonymous_caller(stack: Any, platform: Any, entry: str) -> None:
    """No credentials: documented 401s (and public operations' own answers), never anything else."""
    operations, sent, failures = _fuzz(stack.apps[entry], lambda operation: {})
    print(f"{entry} anonymous: {operations} operations, {sent} requests")
    assert operations >= 2 and sent >= operations * 2
    assert not failures, "\n\n".join(failures)
