"""The ledger's read side on the in-memory ports: history paging (cursors, ties, filters) and its CSV
export, usage aggregation, the balance's plan, the admin client search, the scheduled jobs' client
selection, and the price book over its override port."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from shared.ledger.admin import ClientSearch, find_clients
from shared.ledger.model import Actor, EntryType, GrantSource
from shared.ledger.pricing import PriceBook, PriceList, load_default_prices
from shared.ledger.service import Ledger
from shared.ledger.views import (
    CSV_COLUMNS,
    HistoryQuery,
    UsageQuery,
    balance_view,
    expire_buckets,
    history,
    history_csv,
    sweep_holds,
    usage,
    verify_balances,
)
from shared.pagination import encode_cursor
from tests.fakes import InMemoryLedgerStore
from tests.fakes_ledger import InMemoryLedgerReader, InMemoryPriceOverrides

USER = Actor(kind="user", id="u-1")
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> InMemoryLedgerStore:
    return InMemoryLedgerStore()


@pytest.fixture
def ledger(store: InMemoryLedgerStore, clock: Clock) -> Ledger:
    return Ledger(store, clock=clock, sleep=lambda _: None)


@pytest.fixture
def reader(store: InMemoryLedgerStore) -> InMemoryLedgerReader:
    return InMemoryLedgerReader(store)


def grant(ledger: Ledger, client_id: str, amount: int, key: str, **extra: Any) -> None:
    ledger.grant(client_id, key=key, amount=amount, source=GrantSource.ADMIN, actor=USER, reason="test", **extra)


def charge(ledger: Ledger, client_id: str, key: str, amount: int, operation: str, **extra: Any) -> None:
    """A reserve of ``amount`` captured whole (two entries: reserve, capture)."""
    hold = ledger.reserve(
        client_id, key=key, amount=amount, actor=USER, purpose="test", ttl=timedelta(minutes=10), operation=operation
    )
    ledger.capture(client_id, hold["hold_id"], amount=amount, actor=USER, reason="done", **extra)


def seqs(page: Any) -> list[int]:
    return [item.seq for item in page.items]


# -- history ----------------------------------------------------------------------------------------


def test_history_pages_newest_first_through_every_entry(
    ledger: Ledger, reader: InMemoryLedgerReader, clock: Clock
) -> None:
    for n in range(7):
        grant(ledger, "c1", 1, f"g{n}")
        clock.advance(timedelta(minutes=1))
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        page = history(reader, "c1", HistoryQuery(limit=3, cursor=cursor))
        seen += seqs(page)
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [7, 6, 5, 4, 3, 2, 1]
    assert pages == 3


def test_history_breaks_ties_on_created_at_by_seq(ledger: Ledger, reader: InMemoryLedgerReader) -> None:
    # The clock never moves: every entry has the same created_at, so only seq orders them and the cursor
    # must carry it, or a page boundary inside the tie would repeat or skip entries.
    for n in range(5):
        grant(ledger, "c1", 1, f"g{n}")
    first = history(reader, "c1", HistoryQuery(limit=2))
    second = history(reader, "c1", HistoryQuery(limit=2, cursor=first.next_cursor))
    third = history(reader, "c1", HistoryQuery(limit=2, cursor=second.next_cursor))
    assert (seqs(first), seqs(second), seqs(third)) == ([5, 4], [3, 2], [1])
    assert third.next_cursor is None


def test_history_accepts_a_cursor_in_the_existing_format(
    ledger: Ledger, reader: InMemoryLedgerReader, clock: Clock
) -> None:
    for n in range(4):
        grant(ledger, "c1", 1, f"g{n}")
        clock.advance(timedelta(minutes=1))
    # What earlier releases handed out: {"t": created_at ISO, "s": seq} of the page's last entry.
    cursor = encode_cursor({"t": (T0 + timedelta(minutes=2)).isoformat(), "s": 3})
    assert seqs(history(reader, "c1", HistoryQuery(cursor=cursor))) == [2, 1]


def test_history_filters_by_type_operation_and_range(
    ledger: Ledger, reader: InMemoryLedgerReader, clock: Clock
) -> None:
    grant(ledger, "c1", 100, "g")  # seq 1 at T0
    clock.advance(timedelta(hours=1))
    charge(ledger, "c1", "a", 5, "generate_image")  # seq 2, 3 at T0+1h
    clock.advance(timedelta(hours=1))
    charge(ledger, "c1", "b", 7, "edit_image")  # seq 4, 5 at T0+2h
    clock.advance(timedelta(hours=1))
    charge(ledger, "c1", "c", 9, "generate_image")  # seq 6, 7 at T0+3h

    def query(**params: Any) -> list[int]:
        return seqs(history(reader, "c1", HistoryQuery.model_validate(params)))

    assert query(type="capture") == [7, 5, 3]
    assert query(operation="generate_image") == [7, 6, 3, 2]
    assert query(type="capture", operation="generate_image") == [7, 3]
    # from inclusive, to exclusive
    assert query(**{"from": T0 + timedelta(hours=1), "to": T0 + timedelta(hours=3)}) == [5, 4, 3, 2]
    assert query(type="grant", **{"from": T0 + timedelta(hours=1)}) == []
    # paging within a filter
    first = history(reader, "c1", HistoryQuery(type=EntryType.CAPTURE, limit=2))
    rest = history(reader, "c1", HistoryQuery(type=EntryType.CAPTURE, limit=2, cursor=first.next_cursor))
    assert (seqs(first), seqs(rest), rest.next_cursor) == ([7, 5], [3], None)


def test_history_of_another_client_is_empty(ledger: Ledger, reader: InMemoryLedgerReader) -> None:
    grant(ledger, "c1", 1, "g")
    page = history(reader, "c2", HistoryQuery())
    assert page.items == [] and page.next_cursor is None


def test_history_csv_streams_newest_first_and_says_when_cut_short(
    ledger: Ledger, reader: InMemoryLedgerReader, clock: Clock
) -> None:
    for n in range(4):
        grant(ledger, "c1", 1, f"g{n}")
        clock.advance(timedelta(minutes=1))
    rows = list(csv.reader(io.StringIO("".join(history_csv(reader, "c1", HistoryQuery(), max_rows=3)))))
    assert rows[0] == CSV_COLUMNS
    assert [int(r[0]) for r in rows[1:4]] == [4, 3, 2]
    assert rows[4][CSV_COLUMNS.index("type")] == "truncated"
    assert (T0 + timedelta(minutes=0)).isoformat() in rows[4][CSV_COLUMNS.index("reason")]
    whole = list(csv.reader(io.StringIO("".join(history_csv(reader, "c1", HistoryQuery(), max_rows=4)))))
    assert [int(r[0]) for r in whole[1:]] == [4, 3, 2, 1]


# -- usage ------------------------------------------------------------------------------------------


def test_usage_sums_captures_by_operation_and_day(ledger: Ledger, reader: InMemoryLedgerReader, clock: Clock) -> None:
    grant(ledger, "c1", 1000, "g")
    clock.now = datetime(2026, 3, 1, 23, 30, tzinfo=UTC)
    charge(ledger, "c1", "a", 5, "generate_image")
    charge(ledger, "c1", "b", 10, "edit", breakdown={"remove_background": 4, "upscale": 6})
    clock.now = datetime(2026, 3, 2, 0, 30, tzinfo=UTC)
    charge(ledger, "c1", "c", 3, "generate_image")
    clock.now = datetime(2026, 3, 4, 0, 0, tzinfo=UTC)  # the day after ``to``: left out
    charge(ledger, "c1", "d", 50, "generate_image")

    view = usage(reader, "c1", UsageQuery.model_validate({"from": "2026-03-01", "to": "2026-03-03"}))
    assert view.total == 18
    assert view.by_operation == {"generate_image": 8, "remove_background": 4, "upscale": 6}
    assert view.by_day == {"2026-03-01": 15, "2026-03-02": 3}
    assert view.by_day_and_operation == {
        "2026-03-01": {"generate_image": 5, "remove_background": 4, "upscale": 6},
        "2026-03-02": {"generate_image": 3},
    }
    assert view.model_dump()["from"] == date(2026, 3, 1)


def test_usage_of_a_quiet_range_is_zero(ledger: Ledger, reader: InMemoryLedgerReader) -> None:
    grant(ledger, "c1", 10, "g")  # grants and reserves are not usage
    view = usage(reader, "c1", UsageQuery.model_validate({"from": "2026-03-01", "to": "2026-03-01"}))
    assert (view.total, view.by_operation, view.by_day) == (0, {}, {})


# -- balance ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "plan"),
    [
        (None, "free"),
        ({"id": "c1"}, "free"),
        ({"id": "c1", "plan": "starter"}, "starter"),
        ({"id": "c1", "plan": "starter", "billing": {"plan": "pro"}}, "pro"),
    ],
)
def test_balance_shows_the_plan_of_the_client_record(
    ledger: Ledger, store: InMemoryLedgerStore, clock: Clock, record: dict[str, Any] | None, plan: str
) -> None:
    reader = InMemoryLedgerReader(store, {"c1": record} if record is not None else {})
    grant(ledger, "c1", 8, "g")
    view = balance_view(reader, ledger.state("c1"), threshold=10, now=clock())
    assert (view.plan, view.available, view.low_balance) == (plan, 8, True)


# -- admin client search ----------------------------------------------------------------------------


def _clients(*ids: str) -> dict[str, dict[str, Any]]:
    return {i: {"id": i, "plan": "free", "status": "active", "created_at": T0} for i in ids}


def test_find_clients_by_prefix_in_id_order_with_paging(store: InMemoryLedgerStore) -> None:
    records = _clients("acme-2", "acme-1", "acme-3", "acmf", "beta", "ac")
    records["no-id"] = {"plan": "free"}  # a record without an id is not listed (Firestore's order_by)
    reader = InMemoryLedgerReader(store, records)

    items, cursor = find_clients(reader, ClientSearch(prefix="acme", limit=2))
    assert [c.id for c in items] == ["acme-1", "acme-2"] and cursor == "acme-2"
    items, cursor = find_clients(reader, ClientSearch(prefix="acme", limit=2, cursor=cursor))
    assert [c.id for c in items] == ["acme-3"] and cursor is None

    items, cursor = find_clients(reader, ClientSearch(limit=10))
    assert [c.id for c in items] == ["ac", "acme-1", "acme-2", "acme-3", "acmf", "beta"] and cursor is None
    items, cursor = find_clients(reader, ClientSearch(limit=5, cursor="acmf"))
    assert [c.id for c in items] == ["beta"] and cursor is None
    assert find_clients(reader, ClientSearch(prefix="zzz")) == ([], None)


def test_find_clients_fills_in_plan_and_status(store: InMemoryLedgerStore) -> None:
    reader = InMemoryLedgerReader(store, {"c1": {"id": "c1", "created_at": T0}})
    items, _ = find_clients(reader, ClientSearch())
    assert (items[0].plan, items[0].status, items[0].created_at) == ("free", "active", T0)


# -- scheduled jobs ---------------------------------------------------------------------------------


def test_sweep_visits_only_clients_with_a_hold_due(ledger: Ledger, reader: InMemoryLedgerReader, clock: Clock) -> None:
    grant(ledger, "due", 10, "g")
    grant(ledger, "later", 10, "g")
    grant(ledger, "idle", 10, "g")
    hold = ledger.reserve("due", key="r", amount=4, actor=USER, purpose="p", ttl=timedelta(minutes=5))
    ledger.reserve("later", key="r", amount=4, actor=USER, purpose="p", ttl=timedelta(hours=5))
    clock.advance(timedelta(minutes=6))

    report = sweep_holds(reader, ledger, clock())
    assert report.clients_checked == 1
    assert report.changed == {"due": [hold["hold_id"]]}
    assert ledger.state("due").available == 10
    assert sweep_holds(reader, ledger, clock()).clients_checked == 0  # nothing due any more


def test_expire_buckets_visits_clients_with_a_bucket_due(
    ledger: Ledger, reader: InMemoryLedgerReader, clock: Clock
) -> None:
    grant(ledger, "c1", 5, "short", expires_at=T0 + timedelta(days=1))
    grant(ledger, "c1", 7, "long")
    grant(ledger, "c2", 3, "g")
    clock.advance(timedelta(days=2))

    report = expire_buckets(reader, ledger, clock())
    assert report.clients_checked == 1 and list(report.changed) == ["c1"]
    assert ledger.state("c1").available == 7
    assert expire_buckets(reader, ledger, clock()).changed == {}


def test_verify_balances_visits_every_client_with_a_ledger(
    ledger: Ledger, store: InMemoryLedgerStore, reader: InMemoryLedgerReader
) -> None:
    for client_id in ("c2", "c1", "c3"):
        grant(ledger, client_id, 1, "g")
    assert reader.ledger_clients() == ["c1", "c2", "c3"]
    report = verify_balances(reader, ledger)
    assert (report.clients_checked, report.problems, report.failed) == (3, {}, {})
    # A cached balance that drifted from its entries is reported for that client only.
    state, _ = store.states["c2"]
    next(iter(state.buckets.values())).remaining += 5
    report = verify_balances(reader, ledger, full=True)
    assert report.clients_checked == 3 and list(report.problems) == ["c2"]


# -- prices -----------------------------------------------------------------------------------------


def test_price_book_overlays_the_override_and_caches_it() -> None:
    defaults = load_default_prices()
    overrides = InMemoryPriceOverrides()
    book = PriceBook(overrides, ttl_seconds=3600)
    assert book.current().operations == defaults.operations
    assert book.current().operations == defaults.operations
    assert overrides.loads == 1  # the second read came from the cache

    replaced = book.replace(PriceList(version=3, operations={"generate_image": {"2K": 42}}), admin_id="admin-1", now=T0)
    assert replaced.version == 3 and replaced.updated_by == "admin-1" and replaced.updated_at == T0
    assert replaced.operations["generate_image"] == {"2K": 42}  # a whole operation replaces the default's
    assert {k: v for k, v in replaced.operations.items() if k != "generate_image"} == {
        k: v for k, v in defaults.operations.items() if k != "generate_image"
    }
    assert overrides.stored is not None and overrides.stored.updated_by == "admin-1"
    assert overrides.loads == 2  # replacing dropped the cache
