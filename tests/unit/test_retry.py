"""The one retry policy: bounded attempts, full-jitter backoff under a cap, a deadline, contention logged."""

from __future__ import annotations

import logging
import random

import pytest

from shared.retry import RetryPolicy, attempts


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_stops_after_the_policys_attempts_and_logs_exhaustion(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    policy = RetryPolicy(attempts=5, base=0.01, cap=0.05, deadline=100)
    with caplog.at_level(logging.INFO, logger="shared.retry"):
        seen = list(attempts(policy, "test op", sleep=clock.sleep, clock=clock, rng=random.Random(1)))
    assert seen == [0, 1, 2, 3, 4]
    assert len(clock.slept) == 4
    assert all(0 <= wait <= 0.05 for wait in clock.slept)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.fields["retries"] == 4  # type: ignore[attr-defined]


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    policy = RetryPolicy(attempts=10, base=0.01, cap=0.08, deadline=100)
    rng = random.Random(7)
    for retry, ceiling in [(0, 0.01), (1, 0.02), (2, 0.04), (3, 0.08), (9, 0.08)]:
        waits = [policy.delay(retry, rng) for _ in range(200)]
        assert max(waits) <= ceiling
        assert min(waits) < ceiling / 4  # full jitter reaches down to zero, not just around the cap


def test_no_retry_starts_past_the_deadline() -> None:
    clock = FakeClock()
    policy = RetryPolicy(attempts=1000, base=1.0, cap=1.0, deadline=5.0)
    seen = list(attempts(policy, "slow", sleep=clock.sleep, clock=clock, rng=random.Random(3)))
    assert clock.now <= 5.0
    assert 1 < len(seen) < 1000


def test_an_early_success_after_retries_is_logged_as_contention(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    policy = RetryPolicy(attempts=10, base=0.01, cap=0.01, deadline=10)

    def work() -> int:
        for attempt in attempts(policy, "hot doc", sleep=clock.sleep, clock=clock):
            if attempt == 2:
                return attempt
        raise AssertionError("never exhausted")

    with caplog.at_level(logging.INFO, logger="shared.retry"):
        assert work() == 2
    [record] = caplog.records
    assert record.levelno == logging.INFO
    assert record.fields == {"operation": "hot doc", "retries": 2, "waited_s": round(clock.now, 3)}  # type: ignore[attr-defined]


def test_a_first_time_success_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="shared.retry"):
        for _ in attempts(RetryPolicy(attempts=3, base=0.1, cap=0.1, deadline=1), "quiet"):
            break
    assert caplog.records == []
