"""One retry policy for optimistic commits and transient vendor errors.

Every loop that re-reads and re-commits after losing a race (an ``update_time`` precondition, a
``create`` that found the document) or that retries a transient upstream error iterates
:func:`attempts`: bounded attempts, exponential backoff with full jitter capped at ``cap``, and a
wall-clock ``deadline`` so a hot document can never hold a request for longer than the caller can
wait. The loop body decides what is a conflict; the policy only decides when to stop. Contention is
counted in the logs (one line per contended operation), so a hot document shows up in Cloud Logging.

    for attempt in attempts(CONTENDED_COMMIT, "product slots"):
        snapshot = ref.get()
        try:
            commit(snapshot)
        except Conflict:
            continue          # the next iteration sleeps first
        return result
    raise UpstreamUnavailable("busy; try again", retry_after=1)
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from shared import logging as log

_log = log.get_logger(__name__)
_rng = random.Random()


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry: ``attempts`` tries in all, the n-th retry waiting a uniform
    random time in ``[0, min(cap, base * 2**n))`` (full jitter), and no retry started once
    ``deadline`` seconds have passed since the first attempt."""

    attempts: int
    base: float
    cap: float
    deadline: float

    def delay(self, retry: int, rng: random.Random = _rng) -> float:
        """The full-jitter wait before retry number ``retry`` (0 for the first retry)."""
        return rng.uniform(0.0, min(self.cap, self.base * 2 ** min(retry, 30)))


# Optimistic commits on one document: many short tries, because a lost race costs one read.
CONTENDED_COMMIT = RetryPolicy(attempts=60, base=0.005, cap=0.25, deadline=20.0)
# A vendor call that failed transiently (UNAVAILABLE, DEADLINE_EXCEEDED): few, slower tries.
TRANSIENT_UPSTREAM = RetryPolicy(attempts=4, base=0.2, cap=2.0, deadline=10.0)


def attempts(
    policy: RetryPolicy,
    what: str,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random = _rng,
) -> Iterator[int]:
    """Yield attempt numbers 0, 1, …, sleeping before every retry; stop at the policy's limits.

    When the loop leaves early (a ``return`` or ``break`` after a retry) the contention is logged
    at INFO; when the limits run out it is logged at WARNING and the caller's code after the loop
    decides what to answer (usually 503 with Retry-After).
    """
    started = clock()
    retries = 0
    exhausted = False
    try:
        for attempt in range(policy.attempts):
            if attempt:
                wait = policy.delay(attempt - 1, rng)
                if clock() - started + wait > policy.deadline:
                    break
                sleep(wait)
                retries += 1
            yield attempt
        exhausted = True
    finally:
        if retries or exhausted:
            fields = {"operation": what, "retries": retries, "waited_s": round(clock() - started, 3)}
            if exhausted:
                _log.warning("retries exhausted: %s", what, extra={"fields": fields})
            else:
                _log.info("contended: %s", what, extra={"fields": fields})
