"""Guarded commits whose answer may be lost.

A Firestore commit can be applied and still answer UNAVAILABLE (or time out). The client library then
sends it again by itself, and the second send fails the way a lost race fails: FailedPrecondition
(the ``update_time`` it was guarded by has moved, through our own write) or AlreadyExists (our own
create ran). Reading either as "someone else won" throws away work that is in fact recorded, and may
delete the files it points at.

:func:`commit_once` commits with the client's retry turned off (the caller's ``commit`` passes
``retry=None``), and after any failure re-reads what the commit would have written: if the writer's
own token is there, the commit went through. Only then is a conflict a lost race, and only a
transient error whose commit did not land is tried again (bounded, :data:`shared.retry.TRANSIENT_UPSTREAM`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from shared.retry import TRANSIENT_UPSTREAM, RetryPolicy, attempts

T = TypeVar("T")
R = TypeVar("R")


def _transient() -> tuple[type[Exception], ...]:
    from google.api_core.exceptions import (
        Aborted,
        DeadlineExceeded,
        InternalServerError,
        ResourceExhausted,
        ServiceUnavailable,
    )

    return (ServiceUnavailable, DeadlineExceeded, InternalServerError, ResourceExhausted, Aborted)


def _conflicts() -> tuple[type[Exception], ...]:
    from google.api_core.exceptions import AlreadyExists, FailedPrecondition

    return (AlreadyExists, FailedPrecondition)


def commit_once(
    commit: Callable[[], T],
    recognise: Callable[[], R | None],
    what: str,
    *,
    conflicts: tuple[type[Exception], ...] | None = None,
    policy: RetryPolicy = TRANSIENT_UPSTREAM,
) -> T | R | None:
    """``commit()``'s result; or, when it failed but ``recognise()`` finds our own write in Firestore,
    what ``recognise`` returned; or None when a conflict (``conflicts``, default AlreadyExists and
    FailedPrecondition) means someone else wrote first. A transient failure whose write is not there
    is committed again while ``policy`` allows, then raised (the caller's delivery is retried).

    ``commit`` must send the same writes each time, with ``retry=None``; ``recognise`` must read
    strongly (a document get), and return None unless the writer's own token is there."""
    transient, lost = _transient(), conflicts or _conflicts()
    failure: Exception | None = None
    for _attempt in attempts(policy, what):
        try:
            return commit()
        except lost:
            return recognise()
        except transient as error:
            failure = error
            found = recognise()
            if found is not None:
                return found
    assert failure is not None  # the policy allows at least one attempt
    raise failure
