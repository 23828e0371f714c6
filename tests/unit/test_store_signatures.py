"""Signature checks on what Shopify and WooCommerce send: the OAuth query HMAC (Shopify's documented
algorithm and the stub's), webhook body signatures, constant-time comparison and shop domains."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest

from dev.stubs.shopify import sign_query, sign_webhook
from shared.stores import signatures
from shared.stores.signatures import (
    body_digest,
    body_is_authentic,
    shopify_query_digest,
    shopify_query_is_authentic,
    valid_shop_domain,
)

SECRET = "hush"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
# Shopify's documented example of an OAuth callback query (shopify.dev, "Verify a request").
QUERY = {
    "code": "0907a61c0c8d55e99db179b68161bc00",
    "hmac": "ignored-when-signing",
    "shop": "some-shop.myshopify.com",
    "state": "0.6784241404160823",
    "timestamp": "1337178173",
}


def test_the_query_digest_follows_shopifys_algorithm() -> None:
    message = (
        "code=0907a61c0c8d55e99db179b68161bc00&shop=some-shop.myshopify.com"
        "&state=0.6784241404160823&timestamp=1337178173"
    )
    expected = hmac.new(SECRET.encode(), message.encode(), hashlib.sha256).hexdigest()
    assert shopify_query_digest(QUERY, SECRET) == expected
    assert shopify_query_digest(QUERY, SECRET) == sign_query(QUERY, SECRET)


def test_the_query_digest_leaves_out_hmac_and_signature_and_sorts_keys() -> None:
    shuffled = dict(reversed(list(QUERY.items())))
    with_signature = {**QUERY, "signature": "legacy"}
    assert shopify_query_digest(shuffled, SECRET) == shopify_query_digest(with_signature, SECRET)
    assert shopify_query_digest({**QUERY, "hmac": "other"}, SECRET) == shopify_query_digest(QUERY, SECRET)


def _signed(when: datetime) -> dict[str, str]:
    params = {**{k: v for k, v in QUERY.items() if k != "hmac"}, "timestamp": str(int(when.timestamp()))}
    return {**params, "hmac": sign_query(params, SECRET)}


def test_an_authentic_recent_query_passes_and_anything_else_fails() -> None:
    assert shopify_query_is_authentic(_signed(NOW), SECRET, NOW)
    assert shopify_query_is_authentic(_signed(NOW - timedelta(minutes=9)), SECRET, NOW)
    assert not shopify_query_is_authentic(_signed(NOW - timedelta(minutes=11)), SECRET, NOW)
    assert not shopify_query_is_authentic(_signed(NOW + timedelta(minutes=11)), SECRET, NOW)
    assert not shopify_query_is_authentic(_signed(NOW), "", NOW)
    assert not shopify_query_is_authentic(_signed(NOW), "other", NOW)
    assert not shopify_query_is_authentic({k: v for k, v in _signed(NOW).items() if k != "hmac"}, SECRET, NOW)
    garbled = {**QUERY, "timestamp": "yesterday"}
    assert not shopify_query_is_authentic({**garbled, "hmac": sign_query(garbled, SECRET)}, SECRET, NOW)


def test_body_signatures_match_shopifys_and_woocommerces_header() -> None:
    raw = b'{"id": 632910392, "title": "IPod Nano - 8GB"}'
    expected = base64.b64encode(hmac.new(SECRET.encode(), raw, hashlib.sha256).digest()).decode()
    assert body_digest(raw, SECRET) == expected == sign_webhook(raw, SECRET)
    assert body_is_authentic(raw, sign_webhook(raw, SECRET), SECRET)
    assert body_is_authentic(raw, " " + sign_webhook(raw, SECRET) + "\n", SECRET)
    assert not body_is_authentic(raw + b" ", sign_webhook(raw, SECRET), SECRET)
    assert not body_is_authentic(raw, sign_webhook(raw, "other"), SECRET)
    assert not body_is_authentic(raw, None, SECRET)
    assert not body_is_authentic(raw, "", SECRET)
    assert not body_is_authentic(raw, sign_webhook(raw, ""), "")


class _Recorder:
    """Stands in for the ``hmac`` module inside signatures: records compare_digest calls."""

    def __init__(self) -> None:
        self.compared: list[tuple[object, object]] = []

    def __getattr__(self, name: str) -> object:
        return getattr(hmac, name)

    def compare_digest(self, a: str | bytes, b: str | bytes) -> bool:
        self.compared.append((a, b))
        return hmac.compare_digest(a, b)  # type: ignore[arg-type]


def test_comparisons_go_through_compare_digest_even_for_a_short_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = _Recorder()
    monkeypatch.setattr(signatures, "hmac", recorder)
    raw = b"{}"
    assert not body_is_authentic(raw, "short", SECRET)
    assert not shopify_query_is_authentic({**_signed(NOW), "hmac": "ab"}, SECRET, NOW)
    # No early return on a length mismatch: both went to the constant-time compare.
    assert len(recorder.compared) == 2
    assert recorder.compared[0][1] == b"short" and recorder.compared[1][1] == b"ab"


@pytest.mark.parametrize(
    ("shop", "valid"),
    [
        ("demo-shop.myshopify.com", True),
        ("a.myshopify.com", True),
        ("A1-b.myshopify.com", True),
        ("evil.com", False),
        ("x.myshopify.com.evil.com", False),
        ("evil.com?x=.myshopify.com", False),
        ("myshopify.com", False),
        ("-a.myshopify.com", False),
        ("a.b.myshopify.com", False),
        ("a_b.myshopify.com", False),
        ("a.myshopify.com\n", False),
        ("a.myshopify.comx", False),
        ("a" * 250 + ".myshopify.com", False),
        ("", False),
    ],
)
def test_shop_domains(shop: str, valid: bool) -> None:
    assert valid_shop_domain(shop) is valid


def test_a_non_ascii_signature_is_refused_not_an_error() -> None:
    # hmac.compare_digest raises TypeError on non-ASCII str; what a caller sends may be anything.
    assert not body_is_authentic(b"{}", "\u00d4\u00f1\u00b5", SECRET)
    assert not shopify_query_is_authentic({**_signed(NOW), "hmac": "\u00d4\u00f1\u00b5\ud800"}, SECRET, NOW)
