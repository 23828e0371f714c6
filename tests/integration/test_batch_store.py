"""The job store's contract, on the Firestore adapter (emulator) and on the in-memory fake alike: the
fake the engine's unit tests run on must answer what Firestore answers — guarded writes against a
stale version, creates of what exists, a commit whose answer was lost, counters, page markers, the
reaper's scans and its cursor."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.adapters.firestore.batch import FirestoreJobStore
from shared.batch.kind import Finish, ItemRun, JobKind, JobOrder, JobServices, Totals
from shared.batch.models import BatchItemDoc, ItemListQuery, ItemStatus, JobListQuery, JobStatus, PagedJobDoc
from shared.batch.store import JobStore, ReaperCursor, StaleWrite
from shared.events.model import EventType
from tests.fakes_batch import InMemoryJobStore
from tests.firestore_faults import FaultyClient, writes_to

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


class Notes(JobKind[PagedJobDoc, BatchItemDoc]):
    collection = "note_jobs"
    id_prefix = "not"
    noun = "note job"
    label = "note job"
    worker = "note_tasks"
    task_prefix = "note-"
    hold_prefix = "note"
    operation = "note"
    completed_event = EventType.GENERATION_JOB_COMPLETED  # any type: a test kind
    job_model = PagedJobDoc
    item_model = BatchItemDoc
    counted = True

    def record(
        self, services: JobServices, order: JobOrder, job_id: str, hold_id: str
    ) -> tuple[PagedJobDoc, Sequence[BatchItemDoc]]:
        raise AssertionError("not accepted here")

    def work(self, services: JobServices, run: ItemRun[PagedJobDoc, BatchItemDoc]) -> Finish:
        return Finish(ItemStatus.SUCCEEDED)

    def charge(self, job: PagedJobDoc, totals: Totals) -> int:
        return 0

    def settle_reason(self, job: PagedJobDoc, totals: Totals) -> str:
        return "notes"


NOTES = Notes()


class Subject:
    """A store under test and how to make its next item commit land and answer "unavailable" (which
    returns whether that happened since)."""

    def __init__(
        self, store: JobStore[PagedJobDoc, BatchItemDoc], lose_item_commit: Callable[[str], Callable[[], bool]]
    ) -> None:
        self.store = store
        self.lose_item_commit = lose_item_commit


@pytest.fixture(params=["memory", "firestore"])
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    if request.param == "memory":
        memory: InMemoryJobStore[PagedJobDoc, BatchItemDoc] = InMemoryJobStore(NOTES)

        def lose_in_memory(job_id: str) -> Callable[[], bool]:
            memory.lose_answer("commit_item")
            return lambda: memory.losses_pending == 0

        yield Subject(memory, lose_in_memory)
        return
    request.getfixturevalue("firestore_emulator")
    db = FaultyClient()

    def lose_in_firestore(job_id: str) -> Callable[[], bool]:
        fault = db.land_then_fail(writes_to(job_id, "/items/"))
        return lambda: fault.hits == 1

    yield Subject(FirestoreJobStore(db, NOTES), lose_in_firestore)


def job(job_id: str = "not_1", client_id: str = "c1", at: datetime = NOW, **fields: Any) -> PagedJobDoc:
    return PagedJobDoc(
        id=job_id,
        client_id=client_id,
        item_count=3,
        cost=3,
        hold_id="",
        created_by="u1",
        created_at=at,
        updated_at=at,
        fanout_pages=2,
        **{"submission": "mine", **fields},
    )


def items(*indexes: int) -> list[BatchItemDoc]:
    return [BatchItemDoc(index=index, updated_at=NOW) for index in indexes]


def test_a_job_is_created_once_and_read_back(subject: Subject) -> None:
    store = subject.store
    assert store.find_job("c1", "not_1") is None
    assert store.create_job(job(), items(0, 1))
    assert not store.create_job(job(submission="theirs"), [])  # someone else's request made it first
    assert store.get_job("c1", "not_1").submission == "mine"
    assert [item.index for item in store.all_items("c1", "not_1")] == [0, 1]
    with pytest.raises(Exception, match="No note job not_2"):
        store.get_job("c1", "not_2")
    assert store.find_job("c2", "not_1") is None  # another client's id


def test_guarded_writes_refuse_a_stale_version(subject: Subject) -> None:
    store = subject.store
    store.create_job(job(), items(0))
    read = store.read_job("c1", "not_1")
    assert read is not None
    store.update_job("c1", "not_1", {"status": JobStatus.RUNNING.value, "updated_at": NOW}, read.version)
    with pytest.raises(StaleWrite):
        store.update_job("c1", "not_1", {"status": JobStatus.CANCELLING.value}, read.version)
    assert store.get_job("c1", "not_1").status is JobStatus.RUNNING

    stale = store.read_item("c1", "not_1", 0)
    assert stale is not None
    taken = store.commit_item(stale, {"status": "running", "delivery": "a", "updated_at": NOW, "attempts": 1})
    assert taken is not None
    assert not store.item_moved("c1", "not_1", 0, taken) and store.item_moved("c1", "not_1", 0, stale.version)
    # Another delivery that read the item before: nothing is written, and it is told so.
    assert store.commit_item(stale, {"status": "running", "delivery": "b", "updated_at": NOW}) is None
    with pytest.raises(StaleWrite):
        store.update_item(stale, {"requeues": 1})
    fresh = store.read_item("c1", "not_1", 0)
    assert fresh is not None and fresh.item.delivery == "a" and fresh.item.requeues == 0


def test_a_commit_whose_answer_was_lost_is_recognised_and_counted_once(subject: Subject) -> None:
    store = subject.store
    store.create_job(job(), items(0))
    read = store.read_item("c1", "not_1", 0)
    assert read is not None
    lost = subject.lose_item_commit("not_1")
    changes = {"status": "succeeded", "delivery": "a", "updated_at": NOW}
    assert store.commit_item(read, changes, {"done_items": 1, "succeeded_items": 1}, shard=1) is not None
    assert lost()
    assert store.counter_totals("c1", "not_1") == {"done_items": 1, "succeeded_items": 1}
    assert store.items_with_status("c1", "not_1", ItemStatus.SUCCEEDED)[0].delivery == "a"


def test_items_are_created_once_and_counted_in_shards(subject: Subject) -> None:
    store = subject.store
    store.create_job(job(), [])
    assert store.create_item(job(), items(0)[0], {"done_items": 1}, shard=0)
    assert not store.create_item(job(), items(0)[0], {"done_items": 1}, shard=0)  # exists: nothing counted
    assert store.create_items(job(), items(1, 2), {"done_items": 2, "failed_items": 2})
    assert not store.create_items(job(), items(2, 3), {"done_items": 2})  # all or nothing
    assert store.existing_items("c1", "not_1", [0, 1, 2, 3]) == {0, 1, 2}
    assert store.existing_items("c1", "not_1", [0, 3], ItemStatus.QUEUED) == {0}
    assert store.counter_totals("c1", "not_1") == {"done_items": 3, "failed_items": 2}
    assert store.count_items("c1", "not_1", ItemStatus.QUEUED) == 3
    assert store.count_items("c1", "not_1", ItemStatus.QUEUED, limit=1) == 1
    first = store.list_items("c1", "not_1", ItemListQuery(limit=2))
    assert [i.index for i in first.items] == [0, 1] and first.next_cursor is not None
    rest = store.list_items("c1", "not_1", ItemListQuery(limit=2, cursor=first.next_cursor))
    assert [i.index for i in rest.items] == [2] and rest.next_cursor is None


def test_a_fanned_out_page_is_counted_once_and_starts_the_job(subject: Subject) -> None:
    store = subject.store
    store.create_job(job(), [])
    store.mark_fanned_out("c1", "not_1", 0, NOW)
    store.mark_fanned_out("c1", "not_1", 0, NOW)
    stored = store.get_job("c1", "not_1")
    assert (stored.status, stored.fanout_pages_done) == (JobStatus.RUNNING, 1)
    assert store.marked_pages("c1", "not_1") == {0} and not store.page_given_up("c1", "not_1", 0)
    store.give_up_page("c1", "not_1", 1, {"code": "fanout_page_failed"})
    assert store.page_given_up("c1", "not_1", 1)
    store.count_fanout_requeue("c1", "not_1", 1, NOW + timedelta(minutes=1))
    assert store.get_job("c1", "not_1").fanout_requeues == 1
    # A cancel that landed is not overwritten by a later page.
    store.update_job("c1", "not_1", {"status": JobStatus.CANCELLING.value})
    store.mark_fanned_out("c1", "not_1", 1, NOW)
    assert store.get_job("c1", "not_1").status is JobStatus.CANCELLING


def test_jobs_are_listed_newest_first(subject: Subject) -> None:
    store = subject.store
    for n in range(3):
        store.create_job(job(f"not_{n}", at=NOW + timedelta(minutes=n)), [])
    first = store.list_jobs("c1", JobListQuery(limit=2))
    assert [j.id for j in first.items] == ["not_2", "not_1"] and first.next_cursor is not None
    rest = store.list_jobs("c1", JobListQuery(limit=2, cursor=first.next_cursor))
    assert [j.id for j in rest.items] == ["not_0"] and rest.next_cursor is None
    assert store.list_jobs("c1", JobListQuery(limit=2, status=JobStatus.RUNNING)).items == []


def test_the_reapers_scans_and_cursor(subject: Subject) -> None:
    store = subject.store
    store.create_job(job("not_a", "c1"), items(0, 1))
    store.create_job(job("not_b", "c2", at=NOW + timedelta(minutes=1)), items(0))
    store.create_job(job("not_c", "c2", at=NOW + timedelta(hours=2)), [])
    later = NOW + timedelta(hours=1)
    found = [(r.client_id, r.job_id, r.index, r.load().item.index) for r in store.stale_items(ItemStatus.QUEUED, later)]
    assert sorted(found) == [("c1", "not_a", 0, 0), ("c1", "not_a", 1, 1), ("c2", "not_b", 0, 0)]
    assert list(store.stale_items(ItemStatus.RUNNING, later)) == []

    rows = list(store.unsettled_jobs(JobStatus.QUEUED.value, later, None))
    assert [(r.client_id, r.load().id, r.settled) for r in rows] == [("c1", "not_a", False), ("c2", "not_b", False)]
    after = list(store.unsettled_jobs(JobStatus.QUEUED.value, later, rows[0].position))
    assert [r.load().id for r in after] == ["not_b"]

    assert store.reaper_cursor() is None
    store.save_reaper_cursor(ReaperCursor(status="queued", position=rows[0].position), NOW)
    assert store.reaper_cursor() == ReaperCursor(status="queued", position=rows[0].position)
    store.clear_reaper_cursor()
    assert store.reaper_cursor() is None
