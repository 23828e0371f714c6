"""Read models of the ledger: balance, history (with CSV export), usage, and the scheduled jobs
that sweep holds, expire buckets and verify every client's balance against its entries (each
client in isolation: one that fails is reported and the others are still processed)."""

from __future__ import annotations

import csv
import hashlib
import io
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from shared.ledger.model import Actor, EntryType, LedgerState, burn_order
from shared.ledger.store import EntryFilter, LedgerReader
from shared.pagination import Page, PageQuery, cursor_datetime, cursor_int, decode_cursor, encode_cursor
from shared.scheduled import ScheduledReport, isolated
from shared.text import SINGLE_LINE

if TYPE_CHECKING:
    from shared.ledger.service import Ledger

SYSTEM = Actor(kind="system", id="scheduler")


class BucketView(BaseModel):
    id: str
    source: str
    granted: int
    remaining: int
    priority: int
    granted_at: datetime
    expires_at: datetime | None


class BalanceView(BaseModel):
    client_id: str
    available: int
    reserved: int
    plan: str
    low_balance: bool
    low_balance_threshold: int
    next_expiry: datetime | None
    buckets: list[BucketView]


def balance_view(reader: LedgerReader, state: LedgerState, threshold: int, now: datetime) -> BalanceView:
    """The balance as shown: the live buckets in spending order, the plan and the low-balance flag."""
    record = reader.client_record(state.client_id) or {}
    plan = str((record.get("billing") or {}).get("plan") or record.get("plan") or "free")
    # Exactly the buckets ``available`` counts (a bucket past its expiry is gone even before the sweep
    # records it), in the order they are spent.
    live = burn_order(state.buckets, now)
    available = sum(b.remaining for b in live)
    return BalanceView(
        client_id=state.client_id,
        available=available,
        reserved=state.reserved,
        plan=plan,
        low_balance=available < threshold,
        low_balance_threshold=threshold,
        next_expiry=min((b.expires_at for b in live if b.expires_at), default=None),
        buckets=[BucketView(**b.model_dump(include=set(BucketView.model_fields))) for b in live],
    )


class HistoryQuery(PageQuery):
    type: EntryType | None = None
    operation: Annotated[str, StringConstraints(max_length=64), SINGLE_LINE] | None = None
    from_: datetime | None = Field(default=None, alias="from")
    to: datetime | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _range(self) -> HistoryQuery:
        for name in ("from_", "to"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                setattr(self, name, value.replace(tzinfo=UTC))
            elif value is not None:
                try:  # an offset can carry year 1 or 9999 past the calendar, which Firestore fails on (a 500)
                    setattr(self, name, value.astimezone(UTC))
                except OverflowError as exc:
                    raise ValueError(f"'{name.rstrip('_')}' is outside the calendar in UTC") from exc
        if self.from_ and self.to and self.from_ >= self.to:
            raise ValueError("'from' must be before 'to'")
        return self


class EntryView(BaseModel):
    seq: int
    type: EntryType
    amount: int
    available_delta: int
    reserved_delta: int
    available_after: int
    reserved_after: int
    hold_id: str | None
    bucket_id: str | None
    operation: str | None
    purpose: str | None
    actor: Actor
    reason: str
    created_at: datetime


def _filter(query: HistoryQuery) -> EntryFilter:
    return EntryFilter(type=query.type, operation=query.operation, since=query.from_, until=query.to)


def history(reader: LedgerReader, client_id: str, query: HistoryQuery) -> Page[EntryView]:
    """One page of the filtered history, newest first; the cursor is the last entry's (created_at, seq)."""
    after = None
    if query.cursor:
        values = decode_cursor(query.cursor)
        after = (cursor_datetime(values, "t"), cursor_int(values, "s"))
    entries = list(reader.history(client_id, _filter(query), after=after, limit=query.limit + 1))
    next_cursor = None
    if len(entries) > query.limit:
        entries = entries[: query.limit]
        next_cursor = encode_cursor({"t": entries[-1].created_at.isoformat(), "s": entries[-1].seq})
    return Page(
        items=[EntryView(**e.model_dump(include=set(EntryView.model_fields))) for e in entries], next_cursor=next_cursor
    )


CSV_COLUMNS = [
    "seq",
    "created_at",
    "type",
    "amount",
    "available_delta",
    "reserved_delta",
    "available_after",
    "reserved_after",
    "operation",
    "purpose",
    "hold_id",
    "bucket_id",
    "actor",
    "reason",
]


def history_csv(reader: LedgerReader, client_id: str, query: HistoryQuery, max_rows: int = 100_000) -> Iterator[str]:
    """The filtered history as CSV lines (streamed, newest first)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    yield buffer.getvalue()
    for count, entry in enumerate(reader.history(client_id, _filter(query), limit=max_rows + 1)):
        if count >= max_rows:
            # Headers are long gone when we find out, so the file itself says it is not the whole history.
            buffer.seek(0)
            buffer.truncate()
            older = entry.created_at.isoformat()
            writer.writerow(
                ["", "", "truncated"]
                + [""] * (len(CSV_COLUMNS) - 4)
                + [f"only the newest {max_rows} entries; older ones (from {older} back) need a narrower from/to"]
            )
            yield buffer.getvalue()
            break
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(
            [
                entry.seq,
                entry.created_at.isoformat(),
                entry.type.value,
                entry.amount,
                entry.available_delta,
                entry.reserved_delta,
                entry.available_after,
                entry.reserved_after,
                entry.operation or "",
                entry.purpose or "",
                entry.hold_id or "",
                entry.bucket_id or "",
                f"{entry.actor.kind}:{entry.actor.id}",
                _csv_safe(entry.reason),
            ]
        )
        yield buffer.getvalue()


def _csv_safe(text: str) -> str:
    # Spreadsheet formula injection: a reason typed by an admin must not run as a formula (OWASP's
    # list: a leading tab or carriage return also starts a formula in some spreadsheets).
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


class UsageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: date = Field(alias="from")
    to: date

    @model_validator(mode="after")
    def _range(self) -> UsageQuery:
        if self.from_ > self.to:
            raise ValueError("'from' must not be after 'to'")
        if (self.to - self.from_).days > 366:
            raise ValueError("at most 366 days at a time")
        return self


class UsageView(BaseModel):
    # The HTTP layer dumps without by_alias; without this the response says "from_".
    model_config = ConfigDict(serialize_by_alias=True)

    from_: date = Field(serialization_alias="from")
    to: date
    total: int
    by_operation: dict[str, int]
    by_day: dict[str, int]
    by_day_and_operation: dict[str, dict[str, int]]


def usage(reader: LedgerReader, client_id: str, query: UsageQuery) -> UsageView:
    """Credits actually charged (captures), grouped by operation and by UTC day, ``to`` inclusive."""
    start = datetime.combine(query.from_, time.min, tzinfo=UTC)
    end = datetime.combine(query.to + timedelta(days=1), time.min, tzinfo=UTC)
    by_operation: dict[str, int] = defaultdict(int)
    by_day: dict[str, int] = defaultdict(int)
    matrix: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for entry in reader.entries_between(client_id, EntryType.CAPTURE, start, end):
        day = entry.created_at.astimezone(UTC).date().isoformat()
        by_day[day] += entry.amount
        for operation, amount in (entry.breakdown or {entry.operation or "other": entry.amount}).items():
            by_operation[operation] += amount
            matrix[day][operation] += amount
    return UsageView(
        from_=query.from_,
        to=query.to,
        total=sum(by_operation.values()),
        by_operation=dict(by_operation),
        by_day=dict(sorted(by_day.items())),
        by_day_and_operation={day: dict(ops) for day, ops in sorted(matrix.items())},
    )


# -- scheduled jobs ------------------------------------------------------------------------------
# Each client runs in isolation (shared.scheduled): one unreadable state document or one exhausted
# retry is recorded in ``failed`` and the others are still processed. The clients are listed up front
# by id only (LedgerReader.ledger_clients): reading a state is each client's own, isolated step.


class JobReport(ScheduledReport):
    job: str
    clients_checked: int = 0
    changed: dict[str, Any] = Field(default_factory=dict)
    problems: dict[str, list[str]] = Field(default_factory=dict)


class VerifyQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Every entry again, not only those since each client's checkpoint (e.g. a weekly audit).
    full: bool = False


def sweep_holds(reader: LedgerReader, ledger: Ledger, now: datetime) -> JobReport:
    """Release every hold past its deadline, for every client. Safe to run twice."""
    report = JobReport(job="sweep-holds")
    for client_id in reader.ledger_clients("next_hold_deadline", now):
        report.clients_checked += 1
        with isolated(report.job, client_id, report.failed):
            released = ledger.sweep_expired_holds(client_id, actor=SYSTEM)
            if released:
                report.changed[client_id] = released
    return report


def expire_buckets(reader: LedgerReader, ledger: Ledger, now: datetime) -> JobReport:
    """Expire every bucket past ``expires_at``, recorded as entries. Safe to run twice."""
    report = JobReport(job="expire-buckets")
    for client_id in reader.ledger_clients("next_bucket_expiry", now):
        report.clients_checked += 1
        with isolated(report.job, client_id, report.failed):
            state = ledger.state(client_id)
            due = sorted(b.id for b in state.buckets.values() if b.expires_at and b.expires_at <= now and not b.expired)
            if due:
                # The key names the buckets: a second run for the same buckets replays, new ones get a new key.
                key = "expire:" + hashlib.sha256(",".join(due).encode()).hexdigest()
                result = ledger.expire_due(client_id, key=key, actor=SYSTEM)
                if result.get("expired"):
                    report.changed[client_id] = result["expired"]
    return report


def verify_balances(reader: LedgerReader, ledger: Ledger, *, full: bool = False) -> JobReport:
    """Compare every client's cached balance with its entries (those since the client's last clean
    verification, or all of them when ``full``); every drift is returned (and logged by the caller)."""
    report = JobReport(job="verify-balances")
    for client_id in reader.ledger_clients():
        report.clients_checked += 1
        with isolated(report.job, client_id, report.failed):
            drift = ledger.verify_from_checkpoint(client_id, full=full)
            if drift:
                report.problems[client_id] = drift
    return report
