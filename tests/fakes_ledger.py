"""Fakes of the ledger's read side: real subclasses of the ports, over the in-memory ledger store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from shared.ledger.model import Entry, EntryType
from shared.ledger.pricing import PriceList, PriceOverrides
from shared.ledger.store import DueField, EntryFilter, LedgerReader
from tests.fakes import InMemoryLedgerStore


class InMemoryLedgerReader(LedgerReader):
    """Reads what an :class:`InMemoryLedgerStore` holds, plus client records kept here (``clients``),
    with the Firestore adapter's ordering, cursors and range semantics."""

    def __init__(self, store: InMemoryLedgerStore, clients: dict[str, dict[str, Any]] | None = None) -> None:
        self.store = store
        self.clients: dict[str, dict[str, Any]] = clients if clients is not None else {}

    def _entries(self, client_id: str) -> list[Entry]:
        with self.store._lock:
            return list(self.store.entry_log.get(client_id, []))

    def history(
        self, client_id: str, where: EntryFilter, *, after: tuple[datetime, int] | None = None, limit: int | None = None
    ) -> Iterator[Entry]:
        entries = sorted(
            (e for e in self._entries(client_id) if where.matches(e)), key=lambda e: (e.created_at, e.seq), reverse=True
        )
        if after is not None:
            # Firestore's start_after on (created_at desc, seq desc): the entries strictly below the position.
            entries = [e for e in entries if (e.created_at, e.seq) < after]
        yield from (entries if limit is None else entries[:limit])

    def entries_between(self, client_id: str, type: EntryType, since: datetime, until: datetime) -> Iterator[Entry]:
        where = EntryFilter(type=type, since=since, until=until)
        yield from (e for e in self._entries(client_id) if where.matches(e))

    def client_record(self, client_id: str) -> dict[str, Any] | None:
        record = self.clients.get(client_id)
        return dict(record) if record is not None else None

    def client_records(self, *, prefix: str = "", after: str | None = None, limit: int) -> list[dict[str, Any]]:
        # order_by("id") leaves out records without an ``id`` field, as Firestore does.
        records = sorted((r for r in self.clients.values() if "id" in r), key=lambda r: str(r["id"]))
        if after:
            records = [r for r in records if r["id"] > after]
        elif prefix:
            records = [r for r in records if r["id"] >= prefix]
        if prefix:
            records = [r for r in records if r["id"] <= prefix + "\uf8ff"]
        return [dict(r) for r in records[:limit]]

    def ledger_clients(self, due: DueField | None = None, now: datetime | None = None) -> list[str]:
        with self.store._lock:
            states = {client_id: state for client_id, (state, _) in self.store.states.items()}
        found = []
        for client_id in sorted(states):  # a collection group's documents come in path order
            value = getattr(states[client_id], due) if due is not None else None
            # A missing or null field never matches a "<=" filter in Firestore.
            if due is None or (value is not None and now is not None and value <= now):
                found.append(client_id)
        return found


class InMemoryPriceOverrides(PriceOverrides):
    """The admin's price override in memory; ``loads`` counts reads (the price book caches them)."""

    def __init__(self, stored: PriceList | None = None) -> None:
        self.stored = stored
        self.loads = 0

    def load(self) -> PriceList | None:
        self.loads += 1
        return self.stored.model_copy(deep=True) if self.stored is not None else None

    def save(self, prices: PriceList) -> None:
        self.stored = prices.model_copy(deep=True)
