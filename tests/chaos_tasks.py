"""Cloud Tasks' delivery contract with faults drawn by Hypothesis, for the liveness property tests.

A task is delivered at least once, in any order once due; a named task's name is refused while it
exists and for an hour after it ends; a failed delivery is retried after a pause, up to
``max_attempts`` times. While ``chaos`` is on, each enqueued task gets a fate: delivered normally,
``lost`` (every attempt fails before a worker sees it), ``twice`` (the worker finishes but its answer
is lost), ``delayed``, ``flaky`` (one 503 from the platform first), ``refused`` (enqueueing fails),
``commit_fault`` (one matching commit of the delivery lands and answers UNAVAILABLE), or any other
fate the test gives its handler to act on (the handler receives the fate).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from shared.errors import UpstreamUnavailable
from shared.tasks import TaskQueue, TaskRequest
from tests.firestore_faults import FaultyClient

NAME_RESERVED = timedelta(hours=1)  # how long Cloud Tasks refuses the name of a task that ended
RETRY_AFTER = timedelta(seconds=10)

Handler = Callable[[TaskRequest, int, str], object]  # (task, retry count, fate)


class Killed(BaseException):
    """The worker instance dies mid-delivery: nothing answers the queue, and no handler of ours sees it."""


class Clock:
    """A settable clock, called like ``datetime.now``."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Pending:
    task: TaskRequest
    fate: str
    due: datetime
    attempts: int = 0
    done: bool = False


@dataclass
class ChaosQueue(TaskQueue):
    """A task queue whose deliveries the test drives with :meth:`deliver_until`."""

    clock: Clock
    draw: Callable[[Any], Any]
    db: FaultyClient
    fates_drawn: Sequence[str]
    # Which commits a ``commit_fault`` delivery loses the answer of (by the document paths written).
    faulty_commit: Callable[[list[str]], bool]
    max_attempts: int = 3
    chaos: bool = True
    tasks: list[Pending] = field(default_factory=list)
    reserved: dict[str, datetime | None] = field(default_factory=dict)  # None: the task still exists
    fates: Counter[str] = field(default_factory=Counter)

    def enqueue(self, task: TaskRequest) -> bool:
        now = self.clock.now
        if task.name is not None and task.name in self.reserved:
            until = self.reserved[task.name]
            if until is None or until > now:
                return False
        fate = self.draw(st.one_of(st.just("normal"), st.sampled_from(self.fates_drawn))) if self.chaos else "normal"
        self.fates[fate] += 1
        if fate == "refused":
            raise UpstreamUnavailable("The task queue is unavailable")
        if task.name is not None:
            self.reserved[task.name] = None
        due = max(now, task.schedule_time or now)
        if fate == "delayed":
            due += timedelta(minutes=self.draw(st.integers(5, 50)))
        self.tasks.append(Pending(task, fate, due))
        return True

    def _end(self, pending: Pending) -> None:
        pending.done = True
        if pending.task.name is not None:
            self.reserved[pending.task.name] = self.clock.now + NAME_RESERVED

    def deliver_until(self, until: datetime, handle: Handler) -> None:
        """Deliver every task due before ``until`` (in an order Hypothesis picks), moving the clock on."""
        while True:
            due = [p for p in self.tasks if not p.done and p.due <= self.clock.now]
            if not due:
                upcoming = [p.due for p in self.tasks if not p.done and p.due <= until]
                if not upcoming:
                    return
                self.clock.now = min(upcoming)
                continue
            pick = self.draw(st.integers(0, len(due) - 1)) if len(due) > 1 else 0
            self._attempt(due[pick], handle)
            self.clock.now += timedelta(seconds=2)

    def _attempt(self, pending: Pending, handle: Handler) -> None:
        if pending.fate == "lost":
            self._end(pending)  # every attempt failed before any worker saw it
            return
        if pending.fate == "flaky" and pending.attempts == 0:
            pending.attempts += 1  # a 503 from the platform: the worker never ran
            pending.due = self.clock.now + RETRY_AFTER
            return
        if pending.fate == "commit_fault":
            self.db.land_then_fail(self.faulty_commit)
        try:
            handle(pending.task, pending.attempts, pending.fate)
            answered = True
        except (Exception, Killed):
            answered = False
        finally:
            self.db.faults.clear()
        pending.attempts += 1
        if answered and pending.fate == "twice" and pending.attempts == 1:
            answered = False  # the worker finished, but its answer was lost: the queue delivers again
        if answered or pending.attempts >= self.max_attempts:
            self._end(pending)
        else:
            pending.due = self.clock.now + RETRY_AFTER
