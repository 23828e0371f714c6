"""The ledger state machine of ``tests/unit/test_ledger_properties.py`` against the Firestore adapter
on the emulator: same rules, same reference model, same invariants after every step, a fresh client
id (uuid4) per example. A small budget (15 examples x up to 15 steps) keeps it quick; the in-memory
run does the volume (``EPOX_PROPERTY_EXAMPLES`` does not change this budget).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis.stateful import run_state_machine_as_test

from shared.adapters.firestore.ledger import FirestoreLedgerStore
from shared.ledger.model import Actor, EntryType, GrantSource
from shared.ledger.service import Ledger
from tests.unit.test_ledger_properties import STEPS, FakeClock, machine_for, property_settings

pytestmark = pytest.mark.integration

ADMIN = Actor(kind="admin", id="a_prop")
WORKER = Actor(kind="task", id="worker")


def test_firestore_adapter_keeps_the_ledger_invariants(db: Any) -> None:
    STEPS.clear()
    machine = machine_for(lambda: FirestoreLedgerStore(db), name="LedgerMachineOnFirestore")
    run_state_machine_as_test(machine, settings=property_settings(examples=15, steps=15, soak=False))
    total = sum(STEPS.values())
    print(f"\nledger state machine (Firestore emulator): {total} steps: {dict(sorted(STEPS.items()))}")
    assert total >= 100, STEPS


def test_partial_capture_returns_to_the_last_drawn_buckets_through_firestore(db: Any, client_id: str) -> None:
    """Firestore maps do not keep their keys' order, so the hold's draw order must not depend on it."""
    clock = FakeClock()
    ledger = Ledger(FirestoreLedgerStore(db), clock=clock, low_balance_threshold=0)
    buckets = []
    for day in range(6):  # same source, oldest first: burn order is grant order
        clock.now += timedelta(days=1)
        granted = ledger.grant(
            client_id, key=f"pack-{day}", amount=5, source=GrantSource.PACK, actor=ADMIN, reason="pack"
        )
        buckets.append(granted["bucket_id"])
    hold = ledger.reserve(client_id, key="job", amount=30, actor=WORKER, purpose="batch", ttl=timedelta(hours=1))
    assert list(hold["draws"]) == buckets

    outcome = ledger.capture(client_id, hold["hold_id"], amount=12, actor=WORKER, reason="12 of 30 done")

    assert (outcome.captured, outcome.released) == (12, 18)
    remaining = {bucket_id: b.remaining for bucket_id, b in ledger.state(client_id).buckets.items()}
    # The first 12 credits drawn (buckets 0, 1 and 2 of bucket 2) stay spent; the rest go back.
    assert [remaining[b] for b in buckets] == [0, 0, 3, 5, 5, 5]
    (release,) = [e for e in ledger.store.entries(client_id) if e.type is EntryType.RELEASE]
    assert release.bucket_deltas == {buckets[5]: 5, buckets[4]: 5, buckets[3]: 5, buckets[2]: 3}
    assert ledger.verify(client_id) == []
