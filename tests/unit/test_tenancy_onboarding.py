"""Onboarding, the tenancy step of a client's first signed-in call, against the in-memory directory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.auth import Principal
from shared.tenancy import Onboarding, onboard
from tests.fakes_tenancy import InMemoryClientDirectory

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class Welcomes:
    """A welcome that grants once per client, like billing's onboard (its grant key is the client id)."""

    def __init__(self, fail: int = 0) -> None:
        self.calls: list[tuple[str, datetime]] = []
        self.granted: set[str] = set()
        self.fail = fail

    def __call__(self, client_id: str, now: datetime) -> None:
        self.calls.append((client_id, now))
        if self.fail:
            self.fail -= 1
            raise RuntimeError("ledger unavailable")
        self.granted.add(client_id)


def _principal(client_id: str = "c1", user_id: str = "u1") -> Principal:
    return Principal(user_id=user_id, client_id=client_id, roles=frozenset({"user"}))


def test_a_first_call_creates_the_record_then_welcomes_the_client() -> None:
    directory, welcomes = InMemoryClientDirectory(), Welcomes()
    assert onboard(directory, welcomes, _principal(), T0) is True
    record = directory.records["c1"]
    assert (record.id, record.plan, record.status, record.created_at, record.created_by) == (
        "c1",
        "free",
        "active",
        T0,
        "u1",
    )
    assert welcomes.calls == [("c1", T0)]


def test_a_known_client_costs_nothing_in_the_same_process() -> None:
    directory, welcomes, clock = InMemoryClientDirectory(), Welcomes(), Clock()
    onboarding = Onboarding(directory, welcomes, clock)
    onboarding.ensure(_principal())
    clock.now += timedelta(minutes=1)
    onboarding.ensure(_principal(user_id="u2"))
    assert directory.create_calls == 1
    assert welcomes.calls == [("c1", T0)]


def test_a_new_process_keeps_the_record_and_leaves_the_grant_to_the_idempotent_welcome() -> None:
    directory, welcomes, clock = InMemoryClientDirectory(), Welcomes(), Clock()
    Onboarding(directory, welcomes, clock).ensure(_principal())
    clock.now += timedelta(hours=1)
    Onboarding(directory, welcomes, clock).ensure(_principal(user_id="u2"))  # another instance, same client
    assert directory.records["c1"].created_by == "u1"  # never overwritten
    assert directory.records["c1"].created_at == T0
    assert [client for client, _ in welcomes.calls] == ["c1", "c1"]
    assert welcomes.granted == {"c1"}


def test_a_failed_welcome_is_retried_by_the_next_call() -> None:
    directory, welcomes = InMemoryClientDirectory(), Welcomes(fail=1)
    onboarding = Onboarding(directory, welcomes, Clock())
    with pytest.raises(RuntimeError):
        onboarding.ensure(_principal())
    assert "c1" in directory.records and welcomes.granted == set()
    onboarding.ensure(_principal())  # not remembered after the failure: the step runs again
    assert welcomes.granted == {"c1"}
    assert len(welcomes.calls) == 2
    onboarding.ensure(_principal())
    assert len(welcomes.calls) == 2


def test_each_client_is_onboarded_on_its_own() -> None:
    directory, welcomes = InMemoryClientDirectory(), Welcomes()
    onboarding = Onboarding(directory, welcomes, Clock())
    onboarding.ensure(_principal("c1"))
    onboarding.ensure(_principal("c2", "u9"))
    assert set(directory.records) == {"c1", "c2"}
    assert welcomes.granted == {"c1", "c2"}


def test_the_email_claim_becomes_the_contact_and_follows_each_sign_in() -> None:
    directory, welcomes, clock = InMemoryClientDirectory(), Welcomes(), Clock()
    onboarding = Onboarding(directory, welcomes, clock)
    onboarding.ensure(Principal(user_id="u1", client_id="c1", roles=frozenset(), email="first@shop.test"))
    assert directory.contact_email("c1") == "first@shop.test"
    onboarding.ensure(Principal(user_id="u1", client_id="c1", roles=frozenset(), email="first@shop.test"))
    assert directory.create_calls == 1  # the same address in the same process costs nothing
    onboarding.ensure(Principal(user_id="u2", client_id="c1", roles=frozenset(), email="new@shop.test"))
    assert directory.contact_email("c1") == "new@shop.test"
    assert directory.records["c1"].created_by == "u1"  # only the contact changes
    onboarding.ensure(Principal(user_id="u3", client_id="c1", roles=frozenset()))  # a token without email
    assert directory.contact_email("c1") == "new@shop.test"
