"""The Idempotency-Key rules (shared.http.idempotency.IdempotencyKeys) against the in-memory records:
replay, in-flight claims, key reuse, expired records and claims whose request died."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.errors import IdempotencyKeyReused, IdempotencyRequestInProgress
from shared.http.idempotency import PENDING_TIMEOUT, Begun, IdempotencyKeys, IdempotencyRecord, StoredResponse
from tests.fakes_http import InMemoryIdempotencyStore

T0 = datetime(2026, 2, 1, 9, 0, tzinfo=UTC)
TTL = timedelta(hours=24)
CREATED = StoredResponse(status=201, body='{"id": "p1"}', headers={"Location": "/products/p1"})


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> InMemoryIdempotencyStore:
    return InMemoryIdempotencyStore()


@pytest.fixture
def keys(store: InMemoryIdempotencyStore, clock: Clock) -> IdempotencyKeys:
    return IdempotencyKeys(store, TTL, clock)


def test_a_new_key_is_claimed_as_pending_until_its_ttl(keys: IdempotencyKeys, store: InMemoryIdempotencyStore) -> None:
    assert keys.begin("c1", "k", "fp") == Begun()
    assert store.records[("c1", "k")] == IdempotencyRecord(
        fingerprint="fp", state="pending", created_at=T0, expires_at=T0 + TTL
    )


def test_the_same_request_after_success_replays_the_stored_response(keys: IdempotencyKeys, clock: Clock) -> None:
    keys.begin("c1", "k", "fp")
    keys.complete("c1", "k", CREATED)
    clock.now += timedelta(hours=23)
    assert keys.begin("c1", "k", "fp") == CREATED
    assert keys.begin("c1", "k", "fp") == CREATED  # as often as asked


def test_another_request_under_a_used_key_is_reused(keys: IdempotencyKeys) -> None:
    keys.begin("c1", "k", "fp")
    keys.complete("c1", "k", CREATED)
    with pytest.raises(IdempotencyKeyReused):
        keys.begin("c1", "k", "other")


def test_a_running_request_makes_the_same_one_wait_and_another_one_reused(keys: IdempotencyKeys, clock: Clock) -> None:
    keys.begin("c1", "k", "fp")
    clock.now += PENDING_TIMEOUT  # not yet past it
    with pytest.raises(IdempotencyRequestInProgress) as caught:
        keys.begin("c1", "k", "fp")
    assert caught.value.status == 409
    assert caught.value.headers["Retry-After"] == "1"
    # A different request is a misuse of the key, whatever the first one's state.
    with pytest.raises(IdempotencyKeyReused):
        keys.begin("c1", "k", "other")


def test_a_failed_request_frees_its_key(keys: IdempotencyKeys, store: InMemoryIdempotencyStore) -> None:
    keys.begin("c1", "k", "fp")
    keys.abandon("c1", "k")
    assert store.records == {}
    assert keys.begin("c1", "k", "other") == Begun()  # even for another request


def test_keys_are_per_client(keys: IdempotencyKeys) -> None:
    keys.begin("c1", "k", "fp")
    assert keys.begin("c2", "k", "other") == Begun()


def test_a_claim_whose_request_died_is_taken_over_once(
    keys: IdempotencyKeys, store: InMemoryIdempotencyStore, clock: Clock
) -> None:
    keys.begin("c1", "k", "fp")
    clock.now += PENDING_TIMEOUT + timedelta(seconds=1)
    assert keys.begin("c1", "k", "fp") == Begun()
    assert store.records[("c1", "k")].created_at == clock.now  # a fresh claim, with a fresh timeout
    with pytest.raises(IdempotencyRequestInProgress):  # the next attempt finds the new claim running
        keys.begin("c1", "k", "fp")


def test_a_dead_claim_is_taken_over_by_another_request_too(keys: IdempotencyKeys, clock: Clock) -> None:
    keys.begin("c1", "k", "fp")
    clock.now += PENDING_TIMEOUT + timedelta(seconds=1)
    assert keys.begin("c1", "k", "other") == Begun()
    with pytest.raises(IdempotencyKeyReused):
        keys.begin("c1", "k", "fp")


def test_an_expired_record_is_forgotten(keys: IdempotencyKeys, store: InMemoryIdempotencyStore, clock: Clock) -> None:
    keys.begin("c1", "k", "fp")
    keys.complete("c1", "k", CREATED)
    clock.now += TTL
    assert keys.begin("c1", "k", "other") == Begun()
    record = store.records[("c1", "k")]
    assert (record.state, record.response, record.fingerprint) == ("pending", None, "other")


def test_a_completed_record_is_never_stale(keys: IdempotencyKeys, clock: Clock) -> None:
    keys.begin("c1", "k", "fp")
    keys.complete("c1", "k", CREATED)
    clock.now += PENDING_TIMEOUT * 10
    assert keys.begin("c1", "k", "fp") == CREATED


def test_the_takeover_precondition_lets_one_racing_attempt_win(store: InMemoryIdempotencyStore) -> None:
    old = IdempotencyRecord(fingerprint="fp", state="pending", created_at=T0, expires_at=T0 + TTL)
    store.create("c1", "k", old)
    found = store.get("c1", "k")
    assert found is not None
    _, version = found
    mine = IdempotencyRecord(fingerprint="fp", state="pending", created_at=T0 + PENDING_TIMEOUT, expires_at=T0 + TTL)
    assert store.replace("c1", "k", mine, version) is True
    assert store.replace("c1", "k", mine, version) is False  # the version read before is gone
    store.delete("c1", "k")
    assert store.replace("c1", "k", mine, version) is False


class _AbandonedBetweenReads(InMemoryIdempotencyStore):
    """The first request fails and frees its key between our claim attempt and our read."""

    def get(self, client_id: str, key_hash: str) -> tuple[IdempotencyRecord, object] | None:
        if not hasattr(self, "_abandoned"):
            self._abandoned = True
            self.delete(client_id, key_hash)
        return super().get(client_id, key_hash)


def test_a_key_freed_between_two_reads_is_claimed_again(clock: Clock) -> None:
    store = _AbandonedBetweenReads()
    store.create("c1", "k", IdempotencyRecord(fingerprint="other", state="pending", created_at=T0, expires_at=T0 + TTL))
    keys = IdempotencyKeys(store, TTL, clock)
    assert keys.begin("c1", "k", "fp") == Begun()
    assert store.records[("c1", "k")].fingerprint == "fp"
