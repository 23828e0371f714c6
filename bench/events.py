"""``python -m bench.events``: how fast the relay moves events through the local task dispatcher.

Writes ``EVENTS`` events to the outbox on the Firestore emulator (as producers' commits do), kicks
them, and times the dispatcher delivering every relay and consume task to the in-process
``notifications_tasks`` function with two consumers that only count, so the number is the relay's
own cost: two task deliveries per consumer, one outbox read each, one relay mark per event.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parent.parent
EVENTS = 300


def main() -> int:
    from dev.emulator import FirestoreEmulator

    emulator = FirestoreEmulator().start()
    os.environ["FIRESTORE_EMULATOR_HOST"] = emulator.host
    try:
        return _run()
    finally:
        emulator.stop()


def _run() -> int:
    from google.cloud import firestore

    from dev.dispatcher import TaskDispatcher
    from dev.functions import load_function_apps
    from shared.adapters.firestore.outbox import write_events
    from shared.config import Settings
    from shared.events.consumer import EventConsumer
    from shared.events.model import CreditsThreshold, EventType, Subject, new_event
    from shared.platform import Platform, set_platform
    from tests.fakes import InMemoryObjectStore

    handled: Counter[str] = Counter()

    class Counting(EventConsumer):
        name = "counting"
        types: ClassVar[frozenset[EventType]] = frozenset(EventType)

        def handle(self, event: Any) -> str:
            handled[self.name] += 1
            return "counted"

    class AlsoCounting(Counting):
        name = "also_counting"

    apps = load_function_apps(ROOT / "functions")

    def transport(url: str, headers: dict[str, str], body: bytes) -> tuple[int, float | None]:
        entry, _, path = url.split("://", 1)[1].split("/", 1)[1].partition("/")
        response = apps[entry].test_client().post("/" + path, data=body, headers=headers)
        return response.status_code, None

    settings = Settings(
        epox_env="test", gcp_project="epox-bench", tasks_dev_secret="bench", tasks_auth_mode="shared_secret"
    )
    dispatcher = TaskDispatcher(transport, secret="bench", target_base_url="http://bench", min_backoff=0, max_backoff=0)
    db = firestore.Client(project="epox-bench")
    platform = Platform(
        settings,
        db=db,
        object_store=InMemoryObjectStore(),
        task_queue=dispatcher,
        event_consumers=lambda p: [Counting(), AlsoCounting()],
    )
    set_platform(platform)
    now = datetime.now(UTC)
    events = [
        new_event(
            f"bench-{n % 20}",
            EventType.CREDITS_LOW,
            Subject(kind="ledger", id=f"bench-{n % 20}"),
            CreditsThreshold(available=n, threshold=10),
            occurred_at=now,
            sequence=n,
            discriminator=n,
        )
        for n in range(EVENTS)
    ]
    for start in range(0, EVENTS, 100):
        batch = db.batch()
        write_events(db, batch, events[start : start + 100])
        batch.commit()
    platform.event_kicker.kick(events)
    started = time.perf_counter()
    deliveries = dispatcher.run_until_idle(fast_forward=True)
    elapsed = time.perf_counter() - started
    set_platform(None)
    assert handled["counting"] == handled["also_counting"] == EVENTS, handled
    print(f"== event relay, {EVENTS} events x 2 consumers, local dispatcher, Firestore emulator ==")
    print(f"  events relayed per second              {EVENTS / elapsed:8.1f}    ({deliveries} task deliveries)")
    print(f"  consumer deliveries per second         {2 * EVENTS / elapsed:8.1f}")
    print(f"  whole run                              {elapsed:8.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
