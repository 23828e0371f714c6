"""The relay: from the outbox to every consumer of an event, through Cloud Tasks.

1. A producer's adapter commits the change and its events together, then kicks the relay: one named
   task per event (``relay-{event id}``) to ``notifications_tasks`` ``/tasks/relay``.
2. :func:`relay` enqueues one named task per subscribed consumer (``consume-{event id}-{consumer}``;
   a second relay of the same event is a duplicate name and changes nothing) and marks the event
   relayed. A kick that was lost leaves the event due: :func:`sweep` (Cloud Scheduler) relays it.
3. :func:`consume` runs one consumer on one event. Consumers are idempotent, so a redelivery changes
   nothing; an ordered consumer skips an event older than the last it applied for that subject. A
   consumer that keeps failing is retried with the queue's backoff and, on the queue's last attempt,
   parked with its reason (``event_parking``) for an operator to replay (:func:`replay`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict

from shared import logging as log
from shared.errors import Conflict, EpoxError, NotFound
from shared.events.consumer import EventConsumer
from shared.events.model import DomainEvent
from shared.events.outbox import EventKicker, Outbox, ParkedDelivery
from shared.scheduled import ScheduledReport
from shared.tasks import RetryTask, TaskCall, TaskQueue, TaskRequest, task_name

logger = log.get_logger("epox.events")

RELAY_TARGET = "notifications_tasks"
RELAY_PATH = "/tasks/relay"
CONSUME_PATH = "/tasks/consume"
# An event younger than this is left to its kick; the sweep relays only what the kick missed.
SWEEP_GRACE = timedelta(minutes=2)
SWEEP_BATCH = 500


class RelayTask(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: str


class ConsumeTask(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: str
    consumer: str
    replay: int = 0  # > 0: an operator's replay of a parked delivery (a new task name)


class SweepReport(ScheduledReport):
    """What one run of the relay sweep did (``failed``: event id → why its relay could not be queued)."""

    relayed: int = 0


class ParkedReplayOut(BaseModel):
    id: str
    event_id: str
    consumer: str
    queued: bool


def relay_task(event_id: str) -> TaskRequest:
    return TaskRequest(
        target=RELAY_TARGET, path=RELAY_PATH, payload=RelayTask(event_id=event_id), name=task_name("relay", event_id)
    )


class TaskKicker(EventKicker):
    """Kicks through the task queue; a failed enqueue is logged and left to the sweep."""

    def __init__(self, queue: TaskQueue) -> None:
        self.queue = queue

    def kick(self, events: list[DomainEvent]) -> None:
        for event in events:
            try:
                self.queue.enqueue(relay_task(event.id))
            except Exception:  # a kick is best effort: the event is committed and the sweep will relay it
                logger.warning("could not kick the relay of %s %s; the sweep will", event.type.value, event.id)


def subscribers(consumers: Sequence[EventConsumer], event: DomainEvent) -> list[EventConsumer]:
    return [consumer for consumer in consumers if event.type in consumer.types]


def relay(outbox: Outbox, queue: TaskQueue, consumers: Sequence[EventConsumer], event_id: str, now: datetime) -> str:
    """Queue the event's delivery to each consumer that subscribes to its type, then mark it relayed."""
    event = outbox.get(event_id)
    if event is None:
        return "no such event"
    queued = 0
    for consumer in subscribers(consumers, event):
        task = TaskRequest(
            target=RELAY_TARGET,
            path=CONSUME_PATH,
            payload=ConsumeTask(event_id=event.id, consumer=consumer.name),
            name=task_name("consume", event.id, consumer.name),
        )
        queued += 1 if queue.enqueue(task) else 0
    outbox.mark_relayed(event.id, now)
    return f"relayed to {queued} consumer(s)"


def consume(
    outbox: Outbox,
    consumers: Mapping[str, EventConsumer],
    task: ConsumeTask,
    call: TaskCall,
    *,
    max_attempts: int,
    now: datetime,
) -> str:
    """Run one consumer on one event; park the delivery on the queue's last attempt if it still fails."""
    event = outbox.get(task.event_id)
    consumer = consumers.get(task.consumer)
    if event is None or consumer is None:
        return "nothing to deliver"  # an event or consumer that no longer exists: retrying cannot help
    log.bind(client_id=event.client_id, event_id=event.id, consumer=consumer.name)
    if consumer.ordered:
        applied = outbox.position(consumer.name, event.client_id, event.subject)
        if applied is not None and event.sequence <= applied:
            return f"skipped: {event.subject.kind} {event.subject.id} is already at {applied}"
    try:
        outcome = consumer.handle(event)
    except Exception as error:
        reason = _reason(error)
        if call.retry_count + 1 >= max_attempts:
            parked = ParkedDelivery(
                id=f"{event.id}.{consumer.name}",
                event_id=event.id,
                consumer=consumer.name,
                client_id=event.client_id,
                event_type=event.type.value,
                reason=reason,
                attempts=call.execution_count + 1,
                parked_at=now,
            )
            outbox.park(parked)
            logger.error("parked %s for %s after %s attempts: %s", event.id, consumer.name, parked.attempts, reason)
            return f"parked: {reason}"
        logger.warning("%s failed on %s (attempt %s): %s", consumer.name, event.id, call.retry_count + 1, reason)
        raise RetryTask(f"{consumer.name}: {reason}", retry_after=_retry_after(error)) from error
    if consumer.ordered:
        outbox.advance(consumer.name, event.client_id, event.subject, event.sequence)
    return outcome


def _reason(error: Exception) -> str:
    if isinstance(error, EpoxError):
        return f"{error.code}: {error.detail}"[:1000]
    return f"{type(error).__name__}: {error}"[:1000]


def _retry_after(error: Exception) -> int:
    value = error.headers.get("Retry-After") if isinstance(error, EpoxError) else None
    return int(value) if value and value.isdigit() else 10


def sweep(outbox: Outbox, queue: TaskQueue, now: datetime, grace: timedelta = SWEEP_GRACE) -> SweepReport:
    """Relay events whose kick was lost: due ones older than ``grace`` (the kick had its chance)."""
    report = SweepReport()
    for event_id in outbox.due(now - grace, SWEEP_BATCH):
        try:
            queue.enqueue(relay_task(event_id))
            report.relayed += 1
        except EpoxError as error:
            logger.error("the sweep could not queue the relay of %s: %s", event_id, error.detail)
            report.failed[event_id] = error.code
    return report


def list_parked(outbox: Outbox, after: str | None, limit: int) -> tuple[list[ParkedDelivery], str | None]:
    items = outbox.parked(after, limit + 1)
    return items[:limit], (items[limit - 1].id if len(items) > limit else None)


def replay(outbox: Outbox, queue: TaskQueue, parked_id: str, now: datetime) -> ParkedReplayOut:
    """Queue a parked delivery again (after the fix); the consumer's idempotency makes a repeat harmless."""
    parked = outbox.get_parked(parked_id)
    if parked is None:
        raise NotFound(f"No parked delivery {parked_id[:120]}")
    if outbox.get(parked.event_id) is None:
        raise Conflict("The parked delivery's event no longer exists")
    attempt = int(now.timestamp())
    queued = queue.enqueue(
        TaskRequest(
            target=RELAY_TARGET,
            path=CONSUME_PATH,
            payload=ConsumeTask(event_id=parked.event_id, consumer=parked.consumer, replay=attempt),
            name=task_name("consume", parked.event_id, parked.consumer, "replay", str(attempt)),
        )
    )
    outbox.mark_replayed(parked.id, now)
    return ParkedReplayOut(id=parked.id, event_id=parked.event_id, consumer=parked.consumer, queued=queued)
