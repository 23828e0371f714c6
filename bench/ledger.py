"""The credit ledger under contention, against a Firestore emulator started here: numbers, not pass/fail.

1. 200 reserve+capture pairs on one client at concurrency 20 (optimistic commits guarded by the
   balance document's ``update_time``): errors, expected vs actual final balance, wall time, p50/p99
   per pair, lost races (``Ledger.stats.conflicts``); and 50 pairs one at a time as a baseline.
2. Writes to the balance (state) document for a 1,000-item batch job used as intended: one reserve
   for the whole batch, items processed, one capture of what succeeded.
3. ``--with-transactional``: the same 200 pairs as read-modify-write ``@transactional`` increments of
   one document (what DESIGN.md measured collapsing), capped at ``--cap`` seconds.

``python -m bench.ledger [--with-transactional] [--cap 60]``; ``make bench`` runs parts 1 and 2.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

PROJECT = "epox-bench-ledger"
PAIRS = 200
CONCURRENCY = 20
ITEMS = 1_000


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def _ms(values: list[float]) -> str:
    if not values:
        return "p50 -   p99 -"
    return f"p50 {_percentile(values, 50) * 1000:7.1f} ms   p99 {_percentile(values, 99) * 1000:7.1f} ms"


def _counting_store(db: Any) -> Any:
    from shared.adapters.firestore.ledger import FirestoreLedgerStore

    class CountingStore(FirestoreLedgerStore):
        """Counts commits: every successful commit writes the client's state document exactly once."""

        def __init__(self, db: Any) -> None:
            super().__init__(db)
            self._lock = threading.Lock()
            self.attempts = 0
            self.state_writes = 0

        def commit(self, *args: Any, **kwargs: Any) -> None:
            with self._lock:
                self.attempts += 1
            super().commit(*args, **kwargs)
            with self._lock:
                self.state_writes += 1

    return CountingStore(db)


def optimistic_pairs(db: Any, pairs: int = PAIRS, concurrency: int = CONCURRENCY, instances: int = 1) -> dict[str, Any]:
    """``instances`` > 1 gives each thread group its own ``Ledger`` (as deployed functions are, one
    per instance), so the in-process per-client lock no longer lines them up: every race is a
    Firestore precondition conflict."""
    from shared.errors import EpoxError
    from shared.ledger.model import Actor, GrantSource
    from shared.ledger.service import Ledger
    from shared.platform import utc_now

    store = _counting_store(db)
    ledgers = [Ledger(store, clock=utc_now) for _ in range(instances)]
    ledger = ledgers[0]
    client_id = f"bench-optimistic-c{concurrency}-i{instances}"
    user, worker = Actor(kind="user", id="bench"), Actor(kind="task", id="bench")
    start_balance = 10_000
    ledger.grant(
        client_id,
        key="bench:grant",
        amount=start_balance,
        source=GrantSource.PACK,
        actor=Actor(kind="admin", id="bench"),
        reason="benchmark credits",
    )
    for each in ledgers:
        each.stats.conflicts = 0
    charges = [1 + i % 3 for i in range(pairs)]  # reserve 3, capture 1..3 (partial captures release the rest)
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    lock = threading.Lock()

    captured: list[int] = []
    still_held: list[int] = []

    def pair(index: int) -> None:
        started = time.perf_counter()
        hold = None
        instance = ledgers[index % instances]
        try:
            hold = instance.reserve(
                client_id, key=f"bench:r{index}", amount=3, actor=user, purpose="generate", ttl=timedelta(minutes=15)
            )
            instance.capture(client_id, hold["hold_id"], amount=charges[index], actor=worker, reason="done")
        except EpoxError as exc:
            with lock:
                errors[f"{exc.status} {exc.code} at {'capture' if hold else 'reserve'}"] += 1
                if hold:  # reserved but not captured: the hold stays pending until captured or swept
                    still_held.append(3)
            return
        with lock:
            latencies.append(time.perf_counter() - started)
            captured.append(charges[index])

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(pair, range(pairs)))
    wall = time.perf_counter() - started
    state = ledger.state(client_id)
    return {
        "pairs": pairs,
        "concurrency": concurrency,
        "wall_s": wall,
        "latencies": latencies,
        "errors": errors,
        "expected": start_balance - sum(captured) - sum(still_held),
        "actual": state.available,
        "expected_reserved": sum(still_held),
        "reserved": state.reserved,
        "instances": instances,
        "conflicts": sum(each.stats.conflicts for each in ledgers),
        "commits": store.state_writes - 1,
        "drift": ledger.verify(client_id),
    }


def batch_job_writes(db: Any, items: int = ITEMS, failure_rate: float = 0.03) -> dict[str, Any]:
    from shared.ledger.model import Actor, GrantSource
    from shared.ledger.service import Ledger
    from shared.platform import utc_now

    store = _counting_store(db)
    ledger = Ledger(store, clock=utc_now)
    client_id, worker = "bench-batch", Actor(kind="task", id="batch-worker")
    ledger.grant(
        client_id,
        key="bench:grant",
        amount=5_000,
        source=GrantSource.SUBSCRIPTION,
        actor=Actor(kind="admin", id="bench"),
        reason="benchmark credits",
    )
    before = store.state_writes

    hold = ledger.reserve(
        client_id,
        key="job-1:reserve",
        amount=items,
        actor=worker,
        purpose="batch",
        ttl=timedelta(hours=2),
        operation="generate",
    )
    rng = random.Random(42)
    succeeded = sum(1 for _ in range(items) if rng.random() >= failure_rate)  # "process" each item in memory
    outcome = ledger.capture(
        client_id,
        hold["hold_id"],
        amount=succeeded,
        actor=worker,
        reason=f"{succeeded} of {items} items done",
        key="job-1:capture",
    )
    state = ledger.state(client_id)
    return {
        "items": items,
        "succeeded": succeeded,
        "state_writes": store.state_writes - before,
        "captured": outcome.captured,
        "released": outcome.released,
        "expected": 5_000 - succeeded,
        "actual": state.available,
        "drift": ledger.verify(client_id),
    }


def transactional_pairs(
    db: Any, pairs: int = PAIRS, concurrency: int = CONCURRENCY, cap_s: float = 60.0
) -> dict[str, Any]:
    """Read-modify-write transactions on one document: a counter decremented by reserve, then capture."""
    from google.cloud import firestore

    ref = db.collection("clients").document("bench-transactional").collection("ledger").document("state")
    ref.set({"available": 10_000, "reserved": 0})

    @firestore.transactional
    def bump(transaction: Any, available: int, reserved: int) -> None:
        snapshot = ref.get(transaction=transaction)
        data = snapshot.to_dict() or {}
        transaction.update(ref, {"available": data["available"] + available, "reserved": data["reserved"] + reserved})

    deadline = time.monotonic() + cap_s
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    expected = {"available": 10_000, "reserved": 0}  # what the counters must say, from the commits that succeeded
    next_index = iter(range(pairs))

    def step(available: int, reserved: int) -> None:
        bump(db.transaction(), available, reserved)
        with lock:
            expected["available"] += available
            expected["reserved"] += reserved

    def worker() -> None:
        while time.monotonic() < deadline:
            with lock:
                index = next(next_index, None)
            if index is None:
                return
            started = time.perf_counter()
            charge = 1 + index % 3
            try:
                step(-3, 3)  # reserve
                step(3 - charge, -3)  # capture, the rest released
            except Exception as exc:  # a benchmark reports every failure
                with lock:
                    outcomes[f"{type(exc).__name__}: {str(exc)[:70]}"] += 1
                continue
            with lock:
                latencies.append(time.perf_counter() - started)
                outcomes["ok"] += 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:  # in-flight transactions get a grace period; then we stop looking
        thread.join(timeout=max(0.0, deadline + 15 - time.monotonic()))
    wall = time.perf_counter() - started
    still_running = sum(thread.is_alive() for thread in threads)
    data = ref.get().to_dict() or {}
    with lock:
        return {
            "pairs": pairs,
            "wall_s": wall,
            "outcomes": dict(outcomes),
            "latencies": list(latencies),
            "expected": dict(expected),
            "actual": {"available": data.get("available"), "reserved": data.get("reserved")},
            "still_running": still_running,
            "capped": time.monotonic() >= deadline,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--with-transactional",
        action="store_true",
        help="also run read-modify-write @transactional for contrast (slow)",
    )
    parser.add_argument("--cap", type=float, default=60.0, help="seconds before the transactional run stops")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    from dev.emulator import FirestoreEmulator

    emulator = FirestoreEmulator().start()
    previous_host = os.environ.get("FIRESTORE_EMULATOR_HOST")
    os.environ["FIRESTORE_EMULATOR_HOST"] = emulator.host
    try:
        from google.cloud import firestore

        db = firestore.Client(project=PROJECT)

        print(
            f"\n== credit ledger: {PAIRS} reserve+capture pairs, one client, concurrency {CONCURRENCY} "
            "(optimistic update_time commits) =="
        )
        r = optimistic_pairs(db)
        errors = ", ".join(f"{k} x{v}" for k, v in r["errors"].items()) or "none"
        print(
            f"  wall time {r['wall_s']:6.2f} s   per pair {_ms(r['latencies'])}   "
            f"({len(r['latencies'])} of {r['pairs']} pairs ok)"
        )
        print(f"  errors: {sum(r['errors'].values())} ({errors})")
        exact = r["expected"] == r["actual"] and r["expected_reserved"] == r["reserved"]
        print(
            f"  final balance: available expected {r['expected']}, actual {r['actual']}; reserved expected "
            f"{r['expected_reserved']}, actual {r['reserved']}   {'exact' if exact else 'MISMATCH'}"
        )
        print(
            f"  optimistic-commit conflicts (lost races, retried): {r['conflicts']} for {r['commits']} commits; "
            f"verify: {r['drift'] or 'no drift'}"
        )
        spread = optimistic_pairs(db, instances=CONCURRENCY)
        exact = spread["expected"] == spread["actual"] and spread["expected_reserved"] == spread["reserved"]
        print(
            f"  the same pairs over {CONCURRENCY} Ledger instances (one per function instance, no shared lock): "
            f"wall time {spread['wall_s']:6.2f} s   per pair {_ms(spread['latencies'])}   "
            f"errors {sum(spread['errors'].values())}   conflicts {spread['conflicts']} for {spread['commits']} commits"
            f"   {'exact' if exact and not spread['drift'] else 'MISMATCH'}"
        )
        serial = optimistic_pairs(db, pairs=50, concurrency=1)
        print(
            f"  baseline, 50 pairs one at a time: wall time {serial['wall_s']:6.2f} s   per pair "
            f"{_ms(serial['latencies'])}   ({serial['commits'] / serial['wall_s']:.0f} commits/s serial vs "
            f"{r['commits'] / r['wall_s']:.0f} commits/s at concurrency {CONCURRENCY})"
        )

        print(f"\n== credit ledger: a {ITEMS:,}-item batch job (one reserve, one capture) ==")
        b = batch_job_writes(db)
        print(
            f"  balance-document writes for {b['items']:,} items: {b['state_writes']} (O(1))   "
            f"[per-item reserve+capture would be {2 * b['items']:,}]"
        )
        print(
            f"  {b['succeeded']} items succeeded: captured {b['captured']}, released {b['released']}; "
            f"balance expected {b['expected']}, actual {b['actual']}; verify: {b['drift'] or 'no drift'}"
        )

        if args.with_transactional:
            print(
                f"\n== contrast: the same {PAIRS} pairs as read-modify-write @transactional, concurrency "
                f"{CONCURRENCY}, capped at {args.cap:.0f} s =="
            )
            t = transactional_pairs(db, cap_s=args.cap)
            ok = t["outcomes"].get("ok", 0)
            notes = "   (stopped at the cap)" if t["capped"] else ""
            if t["still_running"]:
                notes += f"; {t['still_running']} workers still inside a transaction"
            print(
                f"  wall time {t['wall_s']:6.2f} s   {ok} of {t['pairs']} pairs done   per pair "
                f"{_ms(t['latencies'])}{notes}"
            )
            for outcome, count in sorted(t["outcomes"].items(), key=lambda kv: -kv[1]):
                if outcome != "ok":
                    print(f"  failed x{count}: {outcome}")
            print(
                f"  counters (available, reserved): expected {tuple(t['expected'].values())} from the commits "
                f"that succeeded, actual {tuple(t['actual'].values())}"
            )
        else:
            print(
                "\n  (read-modify-write @transactional contrast skipped; run `python -m bench.ledger "
                "--with-transactional`)"
            )
    finally:
        emulator.stop()
        if previous_host is None:
            os.environ.pop("FIRESTORE_EMULATOR_HOST", None)
        else:
            os.environ["FIRESTORE_EMULATOR_HOST"] = previous_host
    return 0


if __name__ == "__main__":
    sys.exit(main())
