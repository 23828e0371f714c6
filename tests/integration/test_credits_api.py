"""The credits API over the real ledger on the Firestore emulator: balance, history (+ CSV), usage,
quotes and prices, the admin tools, low-credit notifications, the 402 shape and tenant isolation.

Entries that need controlled timestamps (history ranges, usage by day) are written by a Ledger over
the same Firestore store with a test clock; everything else goes through ``stack.platform.ledger``.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.adapters.firestore.ledger import OVERRIDE_DOC, FirestoreLedgerStore
from shared.errors import InsufficientCredits
from shared.http.problems import problem_body
from shared.ledger.model import Actor, GrantSource
from shared.ledger.pricing import load_default_prices
from shared.ledger.service import Ledger
from shared.ledger.views import CSV_COLUMNS

USER = Actor(kind="user", id="u-test")
TTL = timedelta(minutes=10)
BASE = datetime(2024, 3, 10, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def timed_ledger(stack: Any, clock: Clock) -> Ledger:
    return Ledger(
        FirestoreLedgerStore(stack.platform.db),
        clock=clock,
        low_balance_threshold=stack.platform.settings.low_credit_threshold,
    )


def key() -> str:
    return uuid.uuid4().hex


def grant(
    ledger: Ledger,
    client_id: str,
    amount: int,
    *,
    source: GrantSource = GrantSource.PACK,
    expires_at: datetime | None = None,
    reason: str = "test grant",
) -> str:
    result = ledger.grant(
        client_id, key=key(), amount=amount, source=source, actor=USER, reason=reason, expires_at=expires_at
    )
    return str(result["bucket_id"])


def reserve(ledger: Ledger, client_id: str, amount: int, operation: str | None = "generate_image") -> str:
    result = ledger.reserve(
        client_id, key=key(), amount=amount, actor=USER, purpose=f"test {operation}", ttl=TTL, operation=operation
    )
    return str(result["hold_id"])


def spend(
    ledger: Ledger, client_id: str, amount: int, operation: str = "generate_image", *, charge: int | None = None
) -> str:
    """Reserve ``amount`` and capture ``charge`` (default all) of it."""
    hold_id = reserve(ledger, client_id, amount, operation)
    ledger.capture(client_id, hold_id, amount=amount if charge is None else charge, actor=USER, reason="done")
    return hold_id


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    return response.json


def problem(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = response.json
    assert body["status"] == status
    if code is not None:
        assert body["code"] == code, body
    return body


def error_fields(body: dict[str, Any]) -> list[str]:
    return [e["field"] for e in body.get("errors", [])]


def iso(moment: datetime) -> str:
    return moment.isoformat()


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def seqs(body: dict[str, Any]) -> list[int]:
    return [item["seq"] for item in body["items"]]


def csv_rows(response: Any) -> list[list[str]]:
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/csv"
    return list(csv.reader(io.StringIO(response.get_data(as_text=True))))


def notifications(stack: Any, client_id: str) -> list[dict[str, Any]]:
    """The balance crossings the ledger's commits wrote to the outbox, as notices (kind, numbers, when)."""
    from google.cloud.firestore import FieldFilter

    kinds = {"credits.low": "low_balance", "credits.depleted": "depleted"}
    query = stack.platform.db.collection("outbox").where(filter=FieldFilter("client_id", "==", client_id))
    return [
        {"kind": kinds[e["type"]], **e["payload"], "created_at": e["occurred_at"], "sequence": e["sequence"]}
        for e in (snap.to_dict() for snap in query.stream())
        if e["type"] in kinds
    ]


def cursor_of(values: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


# -- balance ----------------------------------------------------------------------------------------


def test_balance_of_a_new_client(stack: Any, client_id: str) -> None:
    body = ok(stack.client("credits_api").get("/balance", headers=stack.headers(client_id)))
    assert body["client_id"] == client_id
    assert body["available"] == 0
    assert body["reserved"] == 0
    assert body["plan"] == "free"
    assert body["buckets"] == []
    assert body["next_expiry"] is None
    assert body["low_balance_threshold"] == stack.platform.settings.low_credit_threshold == 10
    assert body["low_balance"] is True  # 0 < 10


def test_balance_lists_buckets_in_burn_order_with_expiry_and_low_flag(stack: Any, client_id: str) -> None:
    api, headers, ledger = stack.client("credits_api"), stack.headers(client_id), stack.platform.ledger
    now = datetime.now(UTC).replace(microsecond=0)
    pack = grant(ledger, client_id, 5, source=GrantSource.PACK)
    sub = grant(ledger, client_id, 4, source=GrantSource.SUBSCRIPTION, expires_at=now + timedelta(days=30))
    promo = grant(ledger, client_id, 3, source=GrantSource.PROMO, expires_at=now + timedelta(days=10))
    signup = grant(ledger, client_id, 2, source=GrantSource.SIGNUP, expires_at=now + timedelta(days=5))

    body = ok(api.get("/balance", headers=headers))
    assert (body["available"], body["reserved"]) == (14, 0)
    assert [b["id"] for b in body["buckets"]] == [promo, signup, sub, pack]
    assert [b["source"] for b in body["buckets"]] == ["promo", "signup", "subscription", "pack"]
    assert [b["remaining"] for b in body["buckets"]] == [3, 2, 4, 5]
    assert [b["granted"] for b in body["buckets"]] == [3, 2, 4, 5]
    expiries = [None if b["expires_at"] is None else at(b["expires_at"]) for b in body["buckets"]]
    assert expiries == [now + timedelta(days=10), now + timedelta(days=5), now + timedelta(days=30), None]
    assert at(body["next_expiry"]) == now + timedelta(days=5)
    assert body["low_balance"] is False

    reserve(ledger, client_id, 4)  # promo 3 + signup 1 -> available 10: exactly the threshold, not low
    body = ok(api.get("/balance", headers=headers))
    assert (body["available"], body["reserved"], body["low_balance"]) == (10, 4, False)
    assert [(b["id"], b["remaining"]) for b in body["buckets"]] == [(signup, 1), (sub, 4), (pack, 5)]
    assert at(body["next_expiry"]) == now + timedelta(days=5)

    reserve(ledger, client_id, 1)  # signup empties -> 9: low; the next expiry is now the subscription's
    body = ok(api.get("/balance", headers=headers))
    assert (body["available"], body["reserved"], body["low_balance"]) == (9, 5, True)
    assert [(b["id"], b["remaining"]) for b in body["buckets"]] == [(sub, 4), (pack, 5)]
    assert at(body["next_expiry"]) == now + timedelta(days=30)


def test_balance_ignores_buckets_past_expiry_not_yet_swept(stack: Any, client_id: str) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    past = timed_ledger(stack, Clock(now - timedelta(days=2)))
    live = grant(past, client_id, 3)
    stale = grant(past, client_id, 7, source=GrantSource.PROMO, expires_at=now - timedelta(days=1))
    # No write since the expiry: the bucket is still unexpired in the stored state (the sweep lags).
    assert not stack.platform.ledger.state(client_id).buckets[stale].expired

    body = ok(stack.client("credits_api").get("/balance", headers=stack.headers(client_id)))
    assert body["available"] == 3  # the expired promo cannot be spent
    assert [b["id"] for b in body["buckets"]] == [live]
    assert stale not in [b["id"] for b in body["buckets"]]
    assert sum(b["remaining"] for b in body["buckets"]) == body["available"]
    assert body["next_expiry"] is None


# -- history ----------------------------------------------------------------------------------------


def seven_entries(stack: Any, client_id: str) -> dict[str, datetime]:
    """seq 1 grant @t0; 2 reserve, 3 capture (generate_image) @t1; 4 reserve, 5 capture
    (remove_background) @t2; 6 reserve, 7 release (generate_image) @t3."""
    clock = Clock(BASE)
    ledger = timed_ledger(stack, clock)
    times = {"t0": clock.now}
    grant(ledger, client_id, 20)
    clock.advance(hours=1)
    times["t1"] = clock.now
    spend(ledger, client_id, 3, "generate_image")
    clock.advance(hours=1)
    times["t2"] = clock.now
    spend(ledger, client_id, 1, "remove_background")
    clock.advance(hours=1)
    times["t3"] = clock.now
    hold = reserve(ledger, client_id, 2, "generate_image")
    ledger.release(client_id, hold, actor=USER, reason="job failed")
    return times


def test_history_newest_first_with_filters(stack: Any, client_id: str) -> None:
    api, headers = stack.client("credits_api"), stack.headers(client_id)
    t = seven_entries(stack, client_id)

    body = ok(api.get("/history", headers=headers))
    assert seqs(body) == [7, 6, 5, 4, 3, 2, 1]
    assert [i["type"] for i in body["items"]] == [
        "release",
        "reserve",
        "capture",
        "reserve",
        "capture",
        "reserve",
        "grant",
    ]
    created = [at(i["created_at"]) for i in body["items"]]
    assert created == sorted(created, reverse=True)
    assert created[0] == t["t3"] and created[-1] == t["t0"]
    assert body["next_cursor"] is None
    assert body["items"][-1]["available_after"] == 20
    assert body["items"][0]["available_after"] == 16  # 20 - 3 - 1; the released 2 came back

    def get(**params: str) -> list[int]:
        return seqs(ok(api.get("/history", query_string=params, headers=headers)))

    assert get(type="capture") == [5, 3]
    assert get(type="release") == [7]
    assert get(operation="generate_image") == [7, 6, 3, 2]
    assert get(operation="remove_background") == [5, 4]
    assert get(type="capture", operation="generate_image") == [3]
    assert get(**{"from": iso(t["t1"]), "to": iso(t["t3"])}) == [5, 4, 3, 2]  # "to" is exclusive
    assert get(**{"from": iso(t["t2"])}) == [7, 6, 5, 4]
    assert get(to=iso(t["t1"])) == [1]
    # A naive datetime is read as UTC.
    assert get(**{"from": t["t2"].replace(tzinfo=None).isoformat()}) == [7, 6, 5, 4]
    assert get(operation="upscale") == []


@pytest.mark.parametrize("limit", [2, 3])
def test_history_pagination_has_no_gaps_or_duplicates(stack: Any, client_id: str, limit: int) -> None:
    api, headers = stack.client("credits_api"), stack.headers(client_id)
    seven_entries(stack, client_id)
    pages: list[list[int]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        body = ok(api.get("/history", query_string=params, headers=headers))
        pages.append(seqs(body))
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert len(pages) < 10
    # limit 3 splits the two entries written at t2 (seq 5 | seq 4) across pages: the seq tie-break.
    expected = {2: [[7, 6], [5, 4], [3, 2], [1]], 3: [[7, 6, 5], [4, 3, 2], [1]]}[limit]
    assert pages == expected
    flat = [s for page in pages for s in page]
    assert len(flat) == len(set(flat)) == 7


def test_history_filters_and_pagination_together(stack: Any, client_id: str) -> None:
    api, headers = stack.client("credits_api"), stack.headers(client_id)
    seven_entries(stack, client_id)
    first = ok(api.get("/history", query_string={"operation": "generate_image", "limit": 3}, headers=headers))
    assert seqs(first) == [7, 6, 3]
    second = ok(
        api.get(
            "/history",
            query_string={"operation": "generate_image", "limit": 3, "cursor": first["next_cursor"]},
            headers=headers,
        )
    )
    assert seqs(second) == [2]
    assert second["next_cursor"] is None


@pytest.mark.parametrize(
    "cursor",
    [
        "!!!not-a-cursor",
        cursor_of([1, 2]),
        cursor_of({"t": "yesterday", "s": 1}),
        cursor_of({"s": 1}),
        cursor_of({"t": "2024-03-10T12:00:00+00:00", "s": [1]}),
        cursor_of({"t": "2024-03-10T12:00:00+00:00", "s": None}),
        cursor_of({"t": 5, "s": 1}),
        cursor_of({"t": "2024-03-10T12:00:00+00:00", "s": 10**30}),
    ],
)
def test_history_bad_cursor_is_400(stack: Any, client_id: str, cursor: str) -> None:
    response = stack.client("credits_api").get(
        "/history", query_string={"cursor": cursor}, headers=stack.headers(client_id)
    )
    problem(response, 400, "invalid_cursor")


def test_history_rejects_bad_parameters(stack: Any, client_id: str) -> None:
    api, headers = stack.client("credits_api"), stack.headers(client_id)
    body = problem(api.get("/history", query_string={"bogus": "1"}, headers=headers), 422, "validation_failed")
    assert "bogus" in error_fields(body)
    problem(api.get("/history", query_string={"type": "refund"}, headers=headers), 422)
    problem(api.get("/history", query_string={"from": "not-a-date"}, headers=headers), 422)
    problem(api.get("/history", query_string={"limit": 0}, headers=headers), 422)
    problem(api.get("/history", query_string={"limit": 101}, headers=headers), 422)
    later, earlier = iso(BASE + timedelta(days=1)), iso(BASE)
    problem(api.get("/history", query_string={"from": later, "to": earlier}, headers=headers), 422)
    problem(api.get("/history", query_string={"from": earlier, "to": earlier}, headers=headers), 422)


def test_history_csv_export(stack: Any, client_id: str) -> None:
    api, headers = stack.client("credits_api"), stack.headers(client_id)
    t = seven_entries(stack, client_id)

    response = api.get("/history.csv", headers=headers)
    assert response.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in response.headers["Content-Disposition"]
    rows = csv_rows(response)
    assert rows[0] == CSV_COLUMNS
    assert [int(r[0]) for r in rows[1:]] == [7, 6, 5, 4, 3, 2, 1]
    by_seq = {int(r[0]): dict(zip(CSV_COLUMNS, r, strict=True)) for r in rows[1:]}
    assert by_seq[3]["type"] == "capture"
    assert by_seq[3]["amount"] == "3"
    assert by_seq[3]["operation"] == "generate_image"
    assert by_seq[3]["actor"] == "user:u-test"
    assert by_seq[1]["available_after"] == "20"

    rows = csv_rows(api.get("/history.csv", query_string={"type": "capture"}, headers=headers))
    assert rows[0] == CSV_COLUMNS
    assert [int(r[0]) for r in rows[1:]] == [5, 3]
    rows = csv_rows(api.get("/history.csv", query_string={"operation": "remove_background"}, headers=headers))
    assert [int(r[0]) for r in rows[1:]] == [5, 4]
    rows = csv_rows(api.get("/history.csv", query_string={"from": iso(t["t3"])}, headers=headers))
    assert [int(r[0]) for r in rows[1:]] == [7, 6]
    problem(api.get("/history.csv", query_string={"bogus": "1"}, headers=headers), 422)


def test_history_csv_says_when_it_is_cut_short(stack: Any, client_id: str) -> None:
    from shared.ledger.views import HistoryQuery, history_csv

    seven_entries(stack, client_id)
    rows = list(
        csv.reader(io.StringIO("".join(history_csv(stack.platform.ledger_reader, client_id, HistoryQuery(), 5))))
    )
    assert [int(r[0]) for r in rows[1:6]] == [7, 6, 5, 4, 3]
    assert len(rows) == 7 and rows[6][CSV_COLUMNS.index("type")] == "truncated"
    assert "only the newest 5 entries" in rows[6][CSV_COLUMNS.index("reason")]
    whole = list(
        csv.reader(io.StringIO("".join(history_csv(stack.platform.ledger_reader, client_id, HistoryQuery(), 7))))
    )
    assert len(whole) == 8 and "truncated" not in {r[CSV_COLUMNS.index("type")] for r in whole}


def test_history_csv_neutralises_formulas(stack: Any, client_id: str) -> None:
    ledger = stack.platform.ledger
    dangerous = ['=HYPERLINK("http://evil.test","x")', "+1+1", "-2+3", "@SUM(A1)", "\t=1+1", "\r=1+1"]
    for reason in dangerous:
        grant(ledger, client_id, 1, reason=reason)
    grant(ledger, client_id, 1, reason="plain reason")
    rows = csv_rows(stack.client("credits_api").get("/history.csv", headers=stack.headers(client_id)))
    reasons = [r[CSV_COLUMNS.index("reason")] for r in rows[1:]]
    assert reasons[0] == "plain reason"
    assert sorted(reasons[1:]) == sorted("'" + r for r in dangerous)
    assert not any(r[:1] in ("=", "+", "-", "@", "\t", "\r") for r in reasons)


# -- usage ------------------------------------------------------------------------------------------


def test_usage_sums_captures_by_operation_and_day(stack: Any, client_id: str) -> None:
    api, headers = stack.client("credits_api"), stack.headers(client_id)
    clock = Clock(BASE - timedelta(days=1))  # 2024-03-09: before the range
    ledger = timed_ledger(stack, clock)
    grant(ledger, client_id, 100)
    spend(ledger, client_id, 9, "generate_image")
    clock.now = BASE  # 2024-03-10
    spend(ledger, client_id, 3, "generate_image")
    spend(ledger, client_id, 1, "remove_background")
    hold = reserve(ledger, client_id, 5, "generate_image")
    ledger.release(client_id, hold, actor=USER, reason="failed")  # released: not usage
    clock.now = BASE + timedelta(days=1, hours=11, minutes=59)  # 2024-03-11 23:59
    spend(ledger, client_id, 4, "generate_image", charge=2)  # partial: 2 charged, 2 released
    spend(ledger, client_id, 15, "video")
    clock.now = BASE + timedelta(days=2)  # 2024-03-12: after the range
    spend(ledger, client_id, 7, "remove_background")

    body = ok(api.get("/usage", query_string={"from": "2024-03-10", "to": "2024-03-11"}, headers=headers))
    assert body["from"] == "2024-03-10"
    assert body["to"] == "2024-03-11"
    assert body["total"] == 3 + 1 + 2 + 15
    assert body["by_operation"] == {"generate_image": 5, "remove_background": 1, "video": 15}
    assert body["by_day"] == {"2024-03-10": 4, "2024-03-11": 17}
    assert body["by_day_and_operation"] == {
        "2024-03-10": {"generate_image": 3, "remove_background": 1},
        "2024-03-11": {"generate_image": 2, "video": 15},
    }

    body = ok(api.get("/usage", query_string={"from": "2024-03-09", "to": "2024-03-12"}, headers=headers))
    assert body["total"] == 9 + 3 + 1 + 2 + 15 + 7
    assert list(body["by_day"]) == ["2024-03-09", "2024-03-10", "2024-03-11", "2024-03-12"]
    body = ok(api.get("/usage", query_string={"from": "2024-03-12", "to": "2024-03-12"}, headers=headers))
    assert body["by_operation"] == {"remove_background": 7}


def test_usage_rejects_bad_ranges(stack: Any, client_id: str) -> None:
    api, headers = stack.client("credits_api"), stack.headers(client_id)

    def get(params: dict[str, str]) -> Any:
        return api.get("/usage", query_string=params, headers=headers)

    ok(get({"from": "2024-01-01", "to": "2025-01-01"}))  # 366 days: allowed
    problem(get({"from": "2024-01-01", "to": "2025-01-02"}), 422, "validation_failed")  # 367 days
    problem(get({"from": "2024-03-11", "to": "2024-03-10"}), 422)
    assert "to" in error_fields(problem(get({"from": "2024-03-10"}), 422))
    assert "from" in error_fields(problem(get({"to": "2024-03-10"}), 422))
    problem(get({}), 422)
    problem(get({"from": "2024-03-10", "to": "2024-03-11", "bogus": "1"}), 422)
    problem(get({"from": "yesterday", "to": "2024-03-11"}), 422)


# -- prices and quotes ------------------------------------------------------------------------------


def test_quote_with_default_prices(stack: Any, client_id: str) -> None:
    api, headers = stack.client("credits_api"), stack.headers(client_id)
    body = ok(
        api.post(
            "/quote",
            json={
                "items": [
                    {"operation": "generate_image", "variant": "2K", "quantity": 3},
                    {"operation": "remove_background"},
                ]
            },
            headers=headers,
        )
    )
    assert body["total"] == 7
    assert body["lines"] == [
        {"operation": "generate_image", "variant": "2K", "quantity": 3, "unit_price": 2, "amount": 6},
        {"operation": "remove_background", "variant": None, "quantity": 1, "unit_price": 1, "amount": 1},
    ]
    assert body["price_list_version"] == 1

    items = [
        {"operation": "generate_image", "variant": "1K"},
        {"operation": "generate_image", "variant": "4K", "quantity": 2},
        {"operation": "video", "variant": "720p_8s"},
        {"operation": "crop"},
    ]
    body = ok(api.post("/quote", json={"items": items}, headers=headers))
    assert [line["amount"] for line in body["lines"]] == [1, 6, 15, 0]
    assert body["total"] == 22


def test_quote_rejects_unknown_items(stack: Any, client_id: str) -> None:
    api, headers = stack.client("credits_api"), stack.headers(client_id)

    def post(items: Any) -> Any:
        return api.post("/quote", json={"items": items}, headers=headers)

    body = problem(post([{"operation": "teleport"}]), 422, "validation_failed")
    assert error_fields(body) == ["items.0.operation"]
    body = problem(post([{"operation": "crop"}, {"operation": "teleport"}]), 422)
    assert error_fields(body) == ["items.1.operation"]
    body = problem(post([{"operation": "generate_image", "variant": "8K"}]), 422)
    assert error_fields(body) == ["items.0.variant"]
    body = problem(post([{"operation": "generate_image"}]), 422)  # three variants, none chosen
    assert error_fields(body) == ["items.0.variant"]
    body = problem(post([{"operation": "remove_background", "variant": "2K"}]), 422)
    assert error_fields(body) == ["items.0.variant"]
    body = problem(post([{"operation": "generate_image", "variant": "2K", "quantity": 0}]), 422)
    assert error_fields(body) == ["items.0.quantity"]
    problem(post([{"operation": "generate_image", "variant": "2K", "quantity": -1}]), 422)
    problem(post([]), 422)
    problem(post([{"operation": "crop", "price": 0}]), 422)


def test_prices_lists_the_defaults(stack: Any, client_id: str) -> None:
    body = ok(stack.client("credits_api").get("/prices", headers=stack.headers(client_id)))
    assert body["operations"] == load_default_prices().operations
    assert body["operations"]["generate_image"] == {"1K": 1, "2K": 2, "4K": 3}
    assert body["operations"]["video"]["720p_8s"] == 15  # an 8 s clip at 720p, the fast model


# -- admin ------------------------------------------------------------------------------------------


def test_admin_routes_need_the_admin_role(stack: Any, client_id: str, other_client_id: str) -> None:
    api = stack.client("credits_api")
    grant(stack.platform.ledger, client_id, 5)
    user = stack.headers(other_client_id, **{"Idempotency-Key": key()})
    calls = [
        api.get("/admin/clients", headers=user),
        api.get(f"/admin/clients/{client_id}/balance", headers=user),
        api.get(f"/admin/clients/{client_id}/history", headers=user),
        api.get(f"/admin/clients/{other_client_id}/balance", headers=user),  # not even their own
        api.post(f"/admin/clients/{client_id}/grants", json={"amount": 5, "reason": "please"}, headers=user),
        api.post(f"/admin/clients/{other_client_id}/grants", json={"amount": 5, "reason": "self"}, headers=user),
        api.post(f"/admin/clients/{client_id}/adjustments", json={"amount": -5, "reason": "spite"}, headers=user),
        api.put("/admin/prices", json={"operations": {"generate_image": {"2K": 0}}}, headers=user),
    ]
    for response in calls:
        problem(response, 403, "forbidden")
    assert stack.platform.ledger.state(client_id).available == 5
    assert stack.platform.ledger.state(other_client_id).available == 0
    assert not stack.platform.db.collection(OVERRIDE_DOC[0]).document(OVERRIDE_DOC[1]).get().exists
    problem(api.get(f"/admin/clients/{client_id}/balance"), 401)


def test_admin_finds_clients_by_prefix(stack: Any, client_id: str, other_client_id: str) -> None:
    api = stack.client("credits_api")
    ok(api.get("/balance", headers=stack.headers(client_id)))  # the client record is created on first call
    admin = stack.headers(other_client_id, role="admin")

    body = ok(api.get("/admin/clients", query_string={"prefix": client_id[:12]}, headers=admin))
    assert [c["id"] for c in body["items"]] == [client_id]
    assert body["items"][0]["plan"] == "free"
    assert body["items"][0]["status"] == "active"
    assert body["next_cursor"] is None
    body = ok(api.get("/admin/clients", query_string={"prefix": client_id}, headers=admin))
    assert [c["id"] for c in body["items"]] == [client_id]
    body = ok(api.get("/admin/clients", query_string={"prefix": client_id + "zz"}, headers=admin))
    assert body["items"] == []
    body = ok(api.get("/admin/clients", query_string={"prefix": "c", "limit": 1}, headers=admin))
    assert len(body["items"]) == 1 and body["next_cursor"] is not None
    problem(api.get("/admin/clients", query_string={"prefix": "a/b"}, headers=admin), 422)


def test_admin_reads_another_clients_balance_and_history(stack: Any, client_id: str, other_client_id: str) -> None:
    api, ledger = stack.client("credits_api"), stack.platform.ledger
    api.get("/balance", headers=stack.headers(client_id))  # the client exists
    grant(ledger, client_id, 30)
    spend(ledger, client_id, 2)
    admin = stack.headers(other_client_id, role="admin")

    body = ok(api.get(f"/admin/clients/{client_id}/balance", headers=admin))
    assert (body["client_id"], body["available"], body["reserved"]) == (client_id, 28, 0)
    body = ok(api.get(f"/admin/clients/{client_id}/history", headers=admin))
    assert [i["type"] for i in body["items"]] == ["capture", "reserve", "grant"]
    body = ok(api.get(f"/admin/clients/{client_id}/history", query_string={"type": "grant"}, headers=admin))
    assert [i["amount"] for i in body["items"]] == [30]
    # The admin's own tenant is untouched.
    assert ok(api.get("/balance", headers=admin))["available"] == 0


def test_admin_routes_answer_404_for_an_unknown_client(stack: Any, client_id: str, other_client_id: str) -> None:
    """Reads and changes alike: a mistyped id is not found, never an empty balance or history."""
    api = stack.client("credits_api")
    admin = stack.headers(other_client_id, role="admin", **{"Idempotency-Key": key()})
    unknown = "nobody-" + client_id
    for response in (
        api.get(f"/admin/clients/{unknown}/balance", headers=admin),
        api.get(f"/admin/clients/{unknown}/history", headers=admin),
        api.post(f"/admin/clients/{unknown}/grants", json={"amount": 5, "reason": "typo"}, headers=admin),
        api.post(f"/admin/clients/{unknown}/adjustments", json={"amount": 5, "reason": "typo"}, headers=admin),
    ):
        body = problem(response, 404, "not_found")
        assert unknown in body["detail"]
    # Nothing was written for it: no client record, no ledger.
    assert stack.platform.ledger_reader.client_record(unknown) is None
    assert stack.platform.ledger.state(unknown).seq == 0
    # A ledger without a client record (written straight through the ledger) is still no client.
    grant(stack.platform.ledger, client_id, 5)
    problem(api.get(f"/admin/clients/{client_id}/balance", headers=admin), 404, "not_found")
    api.get("/balance", headers=stack.headers(client_id))  # the client's first call creates its record
    assert ok(api.get(f"/admin/clients/{client_id}/balance", headers=admin))["available"] == 5


def test_admin_grant_is_audited_and_idempotent(stack: Any, client_id: str, other_client_id: str) -> None:
    stack.client("credits_api").get("/balance", headers=stack.headers(client_id))  # the client exists
    api = stack.client("credits_api")
    idem = key()
    admin = stack.headers(other_client_id, role="admin", **{"Idempotency-Key": idem})
    admin_sub = f"user-{other_client_id}"  # the sub the dev issuer puts in the admin's token
    path = f"/admin/clients/{client_id}/grants"

    first = ok(api.post(path, json={"amount": 25, "reason": "  goodwill for ticket 42  "}, headers=admin), 201)
    assert first["result"]["amount"] == 25
    assert first["balance"]["available"] == 25
    assert first["balance"]["buckets"][0]["source"] == "admin"

    again = ok(api.post(path, json={"amount": 25, "reason": "  goodwill for ticket 42  "}, headers=admin), 201)
    assert again["result"] == first["result"]
    assert again["balance"]["available"] == 25

    history = ok(api.get(f"/admin/clients/{client_id}/history", headers=admin))["items"]
    assert len(history) == 1
    entry = history[0]
    assert entry["type"] == "grant"
    assert entry["amount"] == 25
    assert entry["actor"] == {"kind": "admin", "id": admin_sub}
    assert entry["reason"] == "goodwill for ticket 42"
    assert ok(api.get("/balance", headers=stack.headers(client_id)))["available"] == 25

    # The same key for a different grant is a conflict, not a second grant.
    problem(
        api.post(path, json={"amount": 26, "reason": "goodwill again"}, headers=admin), 409, "idempotency_key_reused"
    )
    # A new key is a new grant (with its own source and expiry).
    expires = (datetime.now(UTC) + timedelta(days=7)).replace(microsecond=0)
    other = stack.headers(other_client_id, role="admin", **{"Idempotency-Key": key()})
    body = ok(
        api.post(
            path,
            json={"amount": 5, "reason": "promo week", "source": "promo", "expires_at": iso(expires)},
            headers=other,
        ),
        201,
    )
    assert body["balance"]["available"] == 30
    assert body["balance"]["buckets"][0]["source"] == "promo"
    assert at(body["balance"]["buckets"][0]["expires_at"]) == expires
    assert stack.platform.ledger.verify(client_id) == []


def test_admin_grant_with_a_naive_expiry_is_read_as_utc(stack: Any, client_id: str, other_client_id: str) -> None:
    stack.client("credits_api").get("/balance", headers=stack.headers(client_id))  # the client exists
    admin = stack.headers(other_client_id, role="admin", **{"Idempotency-Key": key()})
    body = ok(
        stack.client("credits_api").post(
            f"/admin/clients/{client_id}/grants",
            json={"amount": 3, "reason": "naive expiry", "expires_at": "2099-01-01T00:00:00"},
            headers=admin,
        ),
        201,
    )
    assert at(body["balance"]["buckets"][0]["expires_at"]) == datetime(2099, 1, 1, tzinfo=UTC)
    assert body["balance"]["available"] == 3


def test_admin_grant_validation(stack: Any, client_id: str, other_client_id: str) -> None:
    stack.client("credits_api").get("/balance", headers=stack.headers(client_id))  # the client exists
    api = stack.client("credits_api")
    path = f"/admin/clients/{client_id}/grants"
    no_key = stack.headers(other_client_id, role="admin")
    problem(api.post(path, json={"amount": 5, "reason": "no key given"}, headers=no_key), 400, "bad_request")

    def post(body: dict[str, Any]) -> Any:
        return api.post(
            path, json=body, headers=stack.headers(other_client_id, role="admin", **{"Idempotency-Key": key()})
        )

    assert "reason" in error_fields(problem(post({"amount": 5}), 422, "validation_failed"))
    assert "reason" in error_fields(problem(post({"amount": 5, "reason": "ab"}), 422))
    assert "reason" in error_fields(problem(post({"amount": 5, "reason": "   ab   "}), 422))
    assert "amount" in error_fields(problem(post({"amount": 0, "reason": "zero credits"}), 422))
    assert "amount" in error_fields(problem(post({"amount": -5, "reason": "negative credits"}), 422))
    problem(post({"amount": 5, "reason": "bad source", "source": "pack"}), 422)
    problem(post({"amount": 5, "reason": "extra field", "priority": 1}), 422)
    assert stack.platform.ledger.state(client_id).available == 0
    assert stack.platform.ledger.state(client_id).seq == 0


def test_admin_adjustments(stack: Any, client_id: str, other_client_id: str) -> None:
    stack.client("credits_api").get("/balance", headers=stack.headers(client_id))  # the client exists
    api = stack.client("credits_api")
    grant(stack.platform.ledger, client_id, 10)
    reserve(stack.platform.ledger, client_id, 3)  # reserved credits cannot be adjusted away: 7 available
    path = f"/admin/clients/{client_id}/adjustments"

    def post(body: dict[str, Any], idem: str | None = None) -> Any:
        headers = stack.headers(other_client_id, role="admin", **{"Idempotency-Key": idem or key()})
        return api.post(path, json=body, headers=headers)

    body = problem(post({"amount": -8, "reason": "too much"}), 402, "insufficient_credits")
    assert (body["required"], body["available"]) == (8, 7)
    assert body["how_to_get_more"]
    assert stack.platform.ledger.state(client_id).available == 7

    idem = key()
    first = ok(post({"amount": -4, "reason": "duplicate charge fix"}, idem), 201)
    assert first["balance"]["available"] == 3
    assert first["balance"]["reserved"] == 3
    ok(post({"amount": -4, "reason": "duplicate charge fix"}, idem), 201)  # replay: not applied twice
    assert stack.platform.ledger.state(client_id).available == 3

    history = ok(api.get(f"/admin/clients/{client_id}/history", headers=stack.headers(other_client_id, role="admin")))
    entry = history["items"][0]
    assert entry["type"] == "adjust"
    assert (entry["amount"], entry["available_delta"], entry["available_after"]) == (4, -4, 3)
    assert entry["actor"] == {"kind": "admin", "id": f"user-{other_client_id}"}
    assert entry["reason"] == "duplicate charge fix"
    assert [i["type"] for i in history["items"]].count("adjust") == 1

    body = ok(post({"amount": 6, "reason": "make good"}), 201)
    assert body["balance"]["available"] == 9
    problem(post({"amount": 0, "reason": "nothing at all"}), 422)
    problem(post({"amount": -1, "reason": "x"}), 422)
    problem(
        api.post(path, json={"amount": -1, "reason": "no key"}, headers=stack.headers(other_client_id, role="admin")),
        400,
    )
    assert stack.platform.ledger.verify(client_id) == []


def test_admin_replaces_prices(stack: Any, client_id: str, other_client_id: str) -> None:
    api, user = stack.client("credits_api"), stack.headers(client_id)
    admin = stack.headers(other_client_id, role="admin")
    price_doc = stack.platform.db.collection(OVERRIDE_DOC[0]).document(OVERRIDE_DOC[1])
    quote_body = {
        "items": [{"operation": "generate_image", "variant": "2K", "quantity": 3}, {"operation": "remove_background"}]
    }
    assert ok(api.post("/quote", json=quote_body, headers=user))["total"] == 7  # primes the cache
    try:
        new = {"version": 2, "operations": {"generate_image": {"1K": 4, "2K": 5, "4K": 6}}}
        body = ok(api.put("/admin/prices", json=new, headers=admin))
        assert body["version"] == 2
        assert body["operations"]["generate_image"] == {"1K": 4, "2K": 5, "4K": 6}
        assert body["operations"]["remove_background"] == {"default": 1}  # defaults kept for the rest
        assert body["updated_by"] == f"user-{other_client_id}"
        assert price_doc.get().exists

        prices = ok(api.get("/prices", headers=user))
        assert prices["operations"]["generate_image"]["2K"] == 5
        assert prices["version"] == 2
        quoted = ok(api.post("/quote", json=quote_body, headers=user))
        assert quoted["total"] == 3 * 5 + 1
        assert quoted["price_list_version"] == 2

        problem(api.put("/admin/prices", json={"operations": {"generate_image": {"2K": -1}}}, headers=admin), 422)
        problem(api.put("/admin/prices", json={"operations": {"Bad Name": {"x": 1}}}, headers=admin), 422)
        assert ok(api.get("/prices", headers=user))["operations"]["generate_image"]["2K"] == 5
    finally:
        price_doc.delete()
        stack.platform.price_book._cached = None
    assert ok(api.post("/quote", json=quote_body, headers=user))["total"] == 7
    assert ok(api.get("/prices", headers=user))["operations"] == load_default_prices().operations


# -- low-credit notifications -----------------------------------------------------------------------


def test_low_balance_notification_once_per_crossing(stack: Any, client_id: str) -> None:
    """One ``low_balance`` notice when available first drops below the threshold, one ``depleted``
    when it reaches 0; nothing more while it stays there; a top-up re-arms both. A new client's
    first small grant is not a crossing."""
    ledger = stack.platform.ledger
    api, headers = stack.client("credits_api"), stack.headers(client_id)
    grant(ledger, client_id, 12)
    assert notifications(stack, client_id) == []

    first = reserve(ledger, client_id, 2)  # 10 left: at the threshold, not below
    assert notifications(stack, client_id) == []
    second = reserve(ledger, client_id, 1)  # 9 left: crossed
    notes = notifications(stack, client_id)
    assert len(notes) == 1
    assert (notes[0]["kind"], notes[0]["available"], notes[0]["threshold"]) == ("low_balance", 9, 10)
    assert ok(api.get("/balance", headers=headers))["low_balance"] is True

    ledger.capture(client_id, first, amount=2, actor=USER, reason="done")
    ledger.capture(client_id, second, amount=1, actor=USER, reason="done")
    spend(ledger, client_id, 5)  # 4 left
    assert len(notifications(stack, client_id)) == 1
    spend(ledger, client_id, 4)  # 0 left: the second crossing, "depleted"
    assert ledger.state(client_id).available == 0
    assert sorted(n["kind"] for n in notifications(stack, client_id)) == ["depleted", "low_balance"]
    with pytest.raises(InsufficientCredits):
        reserve(ledger, client_id, 1)  # refused at 0: no new notice per request
    assert len(notifications(stack, client_id)) == 2

    grant(ledger, client_id, 11)  # back above: re-armed, no notice for the top-up
    assert ok(api.get("/balance", headers=headers))["low_balance"] is False
    assert len(notifications(stack, client_id)) == 2
    spend(ledger, client_id, 3)  # 8 left: a new crossing
    notes = sorted(notifications(stack, client_id), key=lambda n: n["created_at"])
    assert [(n["kind"], n["available"]) for n in notes] == [("low_balance", 9), ("depleted", 0), ("low_balance", 8)]


def test_a_new_clients_first_small_grant_is_not_a_crossing(stack: Any, client_id: str) -> None:
    grant(stack.platform.ledger, client_id, 5)
    assert notifications(stack, client_id) == []


def test_release_re_arms_the_low_balance_notice(stack: Any, client_id: str) -> None:
    ledger = stack.platform.ledger
    grant(ledger, client_id, 12)
    hold = reserve(ledger, client_id, 5)  # 7: notice 1
    ledger.release(client_id, hold, actor=USER, reason="failed")  # 12: re-armed
    assert len(notifications(stack, client_id)) == 1
    reserve(ledger, client_id, 5)  # 7 again: notice 2
    assert [n["kind"] for n in notifications(stack, client_id)] == ["low_balance", "low_balance"]


def test_dropping_straight_to_zero_notifies_depleted(stack: Any, client_id: str) -> None:
    ledger = stack.platform.ledger
    grant(ledger, client_id, 10)
    spend(ledger, client_id, 10)
    notes = notifications(stack, client_id)
    assert [(n["kind"], n["available"]) for n in notes] == [("depleted", 0)]


# -- 402 through the ledger -------------------------------------------------------------------------


def test_reserving_more_than_available_is_a_402_problem(stack: Any, client_id: str) -> None:
    ledger = stack.platform.ledger
    grant(ledger, client_id, 4)
    with pytest.raises(InsufficientCredits) as caught:
        reserve(ledger, client_id, 5)
    body = problem_body(caught.value)
    assert body["status"] == 402
    assert body["code"] == "insufficient_credits"
    assert (body["required"], body["available"]) == (5, 4)
    assert isinstance(body["how_to_get_more"], str) and body["how_to_get_more"]
    state = ledger.state(client_id)
    assert (state.available, state.reserved, state.holds) == (4, 0, {})
    reserve(ledger, client_id, 4)  # exactly what is there is fine


# -- tenant isolation -------------------------------------------------------------------------------


def test_tenants_never_see_each_others_credits(stack: Any, client_id: str, other_client_id: str) -> None:
    api = stack.client("credits_api")
    clock = Clock(BASE)
    ledger = timed_ledger(stack, clock)
    grant(ledger, client_id, 50)
    spend(ledger, client_id, 6, "generate_image")
    grant(stack.platform.ledger, client_id, 5)
    a, b = stack.headers(client_id), stack.headers(other_client_id)

    assert ok(api.get("/balance", headers=a))["available"] == 49
    body = ok(api.get("/balance", headers=b))
    assert (body["client_id"], body["available"], body["reserved"], body["buckets"]) == (other_client_id, 0, 0, [])
    assert ok(api.get("/history", headers=b))["items"] == []
    assert len(ok(api.get("/history", headers=a))["items"]) == 4
    rows = csv_rows(api.get("/history.csv", headers=b))
    assert rows == [CSV_COLUMNS]
    usage = {"from": "2024-03-10", "to": "2024-03-10"}
    assert ok(api.get("/usage", query_string=usage, headers=a))["total"] == 6
    body = ok(api.get("/usage", query_string=usage, headers=b))
    assert (body["total"], body["by_operation"], body["by_day"]) == (0, {}, {})

    problem(api.get(f"/admin/clients/{client_id}/balance", headers=b), 403)
    problem(api.get(f"/admin/clients/{client_id}/history", headers=b), 403)
    problem(api.get("/admin/clients", query_string={"prefix": client_id}, headers=b), 403)


def test_admin_changes_to_an_unknown_client_are_404(stack: Any, client_id: str) -> None:
    api = stack.client("credits_api")
    admin = stack.headers("ops-team", role="admin", **{"Idempotency-Key": key()})
    for path, body in (
        ("grants", {"amount": 5, "reason": "typo check"}),
        ("adjustments", {"amount": 5, "reason": "typo"}),
    ):
        problem(api.post(f"/admin/clients/{client_id}-typo/{path}", json=body, headers=admin), 404, "not_found")
    assert stack.platform.ledger.state(f"{client_id}-typo").seq == 0
