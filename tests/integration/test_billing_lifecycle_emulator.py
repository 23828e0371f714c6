"""The billing lifecycle state machine of ``tests/unit/test_billing_lifecycle_properties.py`` over the
Firestore adapters of the ports (``FirestoreBillingStore``, ``FirestoreLedgerStore``) on the emulator:
same rules, same reference model, same checks after every step, fresh ids per example. A small budget
(20 examples of up to 15 steps) keeps it quick; the in-memory run does the volume
(``EPOX_PROPERTY_EXAMPLES`` does not change this budget).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from shared.adapters.firestore.billing import FirestoreBillingStore
from shared.adapters.firestore.ledger import FirestoreLedgerStore
from tests.unit.test_billing_lifecycle_properties import machine_for

pytestmark = pytest.mark.integration

EXAMPLES = 20


def test_the_billing_lifecycle_keeps_its_promises_on_firestore(db: Any) -> None:
    machine = machine_for(
        lambda: FirestoreBillingStore(db), lambda: FirestoreLedgerStore(db), name="BillingLifecycleOnFirestore"
    )
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=15,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=False,
            database=None,
        ),
    )
    print(
        f"\nbilling lifecycle machine (Firestore emulator): {machine.examples_run} examples, "
        f"{machine.steps_run} steps, {machine.settles} settles"
    )
    assert machine.examples_run >= EXAMPLES
    assert machine.steps_run >= EXAMPLES * 5
