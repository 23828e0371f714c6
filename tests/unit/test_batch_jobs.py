"""The batch-job lifecycle's rules without Firestore: the names, payloads and ids every task and job
already had, what each kind's finished items add up to and how it settles, the item worker's retry
rule, and the Idempotency-Key fingerprint a job is compared by."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Request
from google.api_core.exceptions import AlreadyExists, FailedPrecondition, ServiceUnavailable
from pydantic import ValidationError
from werkzeug.test import EnvironBuilder

from shared.batch import lifecycle
from shared.batch.commits import commit_once
from shared.batch.kind import Finish, Finished, ItemRun, ItemTakenOver, JobKind, RequestKey
from shared.batch.models import FanoutPageTask, ItemStatus, JobStatus, JobTask
from shared.editing.background import BackgroundRemovalUnavailable
from shared.editing.models import EditItemDoc, EditJobDoc
from shared.editing.service import EDITS
from shared.engines.base import EnginePermanentError, EngineRetryableError
from shared.errors import IdempotencyKeyReused, NotFound, UpstreamUnavailable
from shared.generation.jobs import GENERATION
from shared.generation.models import GenerationSettings, ItemDoc, JobDoc
from shared.http.app import RequestContext
from shared.http.batch_routes import request_key
from shared.retry import RetryPolicy
from shared.tasks import SETTLE_WINDOW_SECONDS, RetryTask

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def generation_job(variants: int = 2, unit_price: int = 3, **extra: Any) -> JobDoc:
    return JobDoc(
        id="job_1",
        client_id="c1",
        settings=GenerationSettings(variants=variants),
        item_count=4,
        slot_count=4 * variants,
        unit_price=unit_price,
        cost=4 * variants * unit_price,
        hold_id="hold_1",
        created_by="u1",
        created_at=NOW,
        updated_at=NOW,
        **extra,
    )


def edit_job(**extra: Any) -> EditJobDoc:
    return EditJobDoc(
        id="edj_1",
        client_id="c1",
        operations=[{"op": "prompt_edit", "prompt": "warmer"}],
        asset_ids=["a0", "a1", "a2"],
        item_count=3,
        cost=6,
        hold_id="hold_2",
        price_list_version=1,
        created_by="u1",
        created_at=NOW,
        updated_at=NOW,
        **extra,
    )


# -- names, payloads and ids are the ones jobs always had ------------------------------------------


def test_task_names_and_payloads_of_both_kinds_are_unchanged() -> None:
    window = int(NOW.timestamp()) // SETTLE_WINDOW_SECONDS + 1
    tasks = [
        GENERATION.fanout_task("c1", "job_1", 2),
        GENERATION.item_task("c1", "job_1", 7),
        GENERATION.settle_task("c1", "job_1", NOW),
        EDITS.fanout_task("c1", "edj_1"),
        EDITS.item_task("c1", "edj_1", 3),
        EDITS.settle_task("c1", "edj_1", NOW),
    ]
    assert [(t.target, t.path, t.name, t.body()) for t in tasks] == [
        ("generate_tasks", "/tasks/fanout", "fanout-c1-job_1-2", b'{"client_id":"c1","job_id":"job_1","page":2}'),
        ("generate_tasks", "/tasks/item", "item-c1-job_1-7", b'{"client_id":"c1","job_id":"job_1","index":7}'),
        ("generate_tasks", "/tasks/settle", f"settle-c1-job_1-{window}", b'{"client_id":"c1","job_id":"job_1"}'),
        ("edit_tasks", "/tasks/fanout", "edit-fanout-c1-edj_1", b'{"client_id":"c1","job_id":"edj_1"}'),
        ("edit_tasks", "/tasks/item", "edit-item-c1-edj_1-3", b'{"client_id":"c1","job_id":"edj_1","index":3}'),
        ("edit_tasks", "/tasks/settle", f"edit-settle-c1-edj_1-{window}", b'{"client_id":"c1","job_id":"edj_1"}'),
    ]
    # The settle task runs once its window has closed.
    assert tasks[2].schedule_time == datetime.fromtimestamp(window * SETTLE_WINDOW_SECONDS + 1, UTC)


def test_item_tasks_ask_for_a_dispatch_deadline_covering_their_worst_case() -> None:
    from datetime import timedelta

    from shared.config import Settings

    # Generation: at most 4 variants one after another, each a model call of up to GEMINI_TIMEOUT_SECONDS.
    with pytest.raises(ValidationError):
        GenerationSettings(variants=5)
    assert 4 * Settings(epox_env="test").gemini_timeout_seconds < timedelta(minutes=30).total_seconds()
    for kind in (GENERATION, EDITS):
        assert kind.item_task("c1", "j1", 0).dispatch_deadline == timedelta(minutes=30)
        # Fan-out and settle are quick: the queue's default is plenty.
        assert kind.fanout_task("c1", "j1").dispatch_deadline is None
        assert kind.settle_task("c1", "j1", NOW).dispatch_deadline is None


def test_fanout_payloads_stay_strict() -> None:
    assert (GENERATION.paged, GENERATION.fanout_model) == (True, FanoutPageTask)
    assert (EDITS.paged, EDITS.fanout_model) == (False, JobTask)
    with pytest.raises(ValidationError):
        JobTask.model_validate({"client_id": "c1", "job_id": "edj_1", "page": 0})
    with pytest.raises(ValidationError):
        FanoutPageTask.model_validate({"client_id": "c1", "job_id": "job_1"})


def test_job_ids_derived_from_keys_are_unchanged() -> None:
    def before(prefix: str, *parts: str) -> str:  # the derivation generation and edit jobs always used
        return f"{prefix}_{hashlib.sha256('|'.join(parts).encode()).hexdigest()[:24]}"

    key = RequestKey(key="k-1", fingerprint="f")
    assert lifecycle.job_id_for(GENERATION, "c1", key) == before("job", "c1", "k-1")
    assert lifecycle.job_id_for(GENERATION, "c1", key, "retry", "job_0") == before("job", "c1", "k-1", "retry", "job_0")
    assert lifecycle.job_id_for(EDITS, "c1", key) == before("edj", "c1", "k-1")
    fresh = {lifecycle.job_id_for(EDITS, "c1", None) for _ in range(3)}
    assert len(fresh) == 3 and all(i.startswith("edj_") for i in fresh)


# -- what finished items add up to ----------------------------------------------------------------


def test_generation_counts_images_and_charges_the_ones_made() -> None:
    job = generation_job(variants=2, unit_price=3)
    items = [
        ItemDoc(index=0, status=ItemStatus.SUCCEEDED, asset_ids=["a", "b"]),
        ItemDoc(index=1, status=ItemStatus.SUCCEEDED, asset_ids=["c"], failed_variants=1),
        ItemDoc(index=2, status=ItemStatus.FAILED, failed_variants=2),
        ItemDoc(index=3, status=ItemStatus.CANCELLED),
        ItemDoc(index=4, status=ItemStatus.RUNNING),  # not finished: adds nothing
    ]
    # What each item adds to a counter shard, field for field as the counters always had them.
    assert lifecycle.increments(GENERATION, job, items[0]) == {
        "done_items": 1,
        "succeeded_items": 1,
        "succeeded_slots": 2,
        "failed_slots": 0,
    }
    assert lifecycle.increments(GENERATION, job, items[3]) == {
        "done_items": 1,
        "cancelled_items": 1,
        "cancelled_slots": 2,
    }
    totals = lifecycle.totals_of_items(GENERATION, job, items)
    assert (totals.done, totals.succeeded, totals.failed, totals.cancelled) == (4, 2, 1, 1)
    assert (totals["succeeded_slots"], totals["failed_slots"], totals["cancelled_slots"]) == (3, 3, 2)
    assert GENERATION.charge(job, totals) == 9
    assert GENERATION.settlement(totals, 9, 15) == {"captured": 9, "released": 15}
    assert GENERATION.settle_reason(job, totals) == (
        "generation job job_1: 3 images; failed and cancelled images refunded"
    )


def test_edits_charge_each_edited_assets_own_quote() -> None:
    job = edit_job()
    items = [
        EditItemDoc(index=0, asset_id="a0", cost=1, status=ItemStatus.SUCCEEDED, revision=2),
        EditItemDoc(index=1, asset_id="a1", cost=2, status=ItemStatus.FAILED),
        EditItemDoc(index=2, asset_id="a2", cost=3, status=ItemStatus.SUCCEEDED, revision=5),
    ]
    totals = lifecycle.totals_of_items(EDITS, job, items)
    assert (totals.done, totals.succeeded, totals.failed) == (3, 2, 1)
    assert EDITS.charge(job, totals) == 4
    assert EDITS.settlement(totals, 4, 2) == {"captured": 4, "released": 2, "succeeded": 2, "failed": 1}
    assert EDITS.settle_reason(job, totals) == "edit job edj_1: 2 of 3 assets edited; failures refunded"


# -- the item worker's retry rule ------------------------------------------------------------------


def attempt(kind: JobKind[Any, Any], job: Any, error: BaseException, *, last: bool) -> Finish | Finished:
    """One delivery of an item whose work raises ``error``."""

    def work(run: ItemRun[Any, Any]) -> Finish:
        raise error

    item = EditItemDoc(index=0, asset_id="a0", cost=1) if kind is EDITS else ItemDoc(index=0)
    run = ItemRun(job, item, version=None, last_attempt=last, now=NOW)
    return lifecycle._attempt(kind, run, work)


def test_transient_errors_go_back_to_the_queue_while_attempts_remain() -> None:
    with pytest.raises(RetryTask) as busy:
        attempt(EDITS, edit_job(), EngineRetryableError("quota", retry_after=7), last=False)
    assert busy.value.headers["Retry-After"] == "7"
    assert busy.value.detail == "engine_unavailable: quota"
    with pytest.raises(RetryTask) as store_down:
        attempt(EDITS, edit_job(), UpstreamUnavailable("R2 is down", retry_after=0), last=False)
    assert store_down.value.headers["Retry-After"] == "0"
    own = RetryTask("the asset kept changing", retry_after=5)
    with pytest.raises(RetryTask) as raised:
        attempt(EDITS, edit_job(), own, last=False)
    assert raised.value is own


def test_the_last_attempt_and_permanent_errors_finish_the_item_as_failed() -> None:
    busy = attempt(EDITS, edit_job(), EngineRetryableError("quota"), last=True)
    assert busy == Finish(
        ItemStatus.FAILED,
        {"failure": {"code": "engine_unavailable", "message": "quota", "retryable": True}},
        outcome="item failed: engine_unavailable",
    )
    gone = attempt(EDITS, edit_job(), NotFound("No asset a0"), last=False)
    assert isinstance(gone, Finish) and gone.fields["failure"]["code"] == "not_found"
    # Generation's failure says how many images were lost.
    blocked = attempt(GENERATION, generation_job(variants=3), EnginePermanentError("blocked"), last=False)
    assert blocked == Finish(
        ItemStatus.FAILED,
        {
            "asset_ids": [],
            "failed_variants": 3,
            "failure": {"code": "generation_failed", "message": "blocked", "variants_failed": 3, "retryable": False},
        },
    )


def test_a_missing_background_removal_model_is_not_retried_by_edits() -> None:
    missing = BackgroundRemovalUnavailable("no model")
    failed = attempt(EDITS, edit_job(), missing, last=False)
    assert isinstance(failed, Finish) and failed.fields["failure"]["code"] == "background_removal_unavailable"
    with pytest.raises(RetryTask):  # the default rule: a 503 is worth another delivery
        attempt(GENERATION, generation_job(), missing, last=False)


def test_crashes_are_redelivered_until_the_last_attempt_which_still_finishes_the_item() -> None:
    with pytest.raises(ZeroDivisionError):
        attempt(EDITS, edit_job(), ZeroDivisionError(), last=False)
    crashed = attempt(EDITS, edit_job(), ZeroDivisionError(), last=True)
    assert isinstance(crashed, Finish) and crashed.status is ItemStatus.FAILED
    assert crashed.fields["failure"] == {
        "code": "internal_error",
        "message": "unexpected ZeroDivisionError",
        "retryable": False,
    }
    with pytest.raises(ItemTakenOver):
        attempt(EDITS, edit_job(), ItemTakenOver("item 0"), last=True)


# -- Idempotency-Key: a job remembers the request that made it -------------------------------------


def test_a_job_is_found_again_only_by_the_request_that_made_it() -> None:
    job = edit_job(request_fingerprint="abc")
    assert lifecycle._same_request(job, "abc") is job
    assert lifecycle._same_request(job, None) is job
    with pytest.raises(IdempotencyKeyReused):
        lifecycle._same_request(job, "xyz")
    # A job written before fingerprints were stored is taken on trust.
    assert lifecycle._same_request(edit_job(), "xyz").status is JobStatus.QUEUED


def keyed_context(body: bytes, key: str | None, path: str = "/jobs") -> RequestContext[Any, Any]:
    headers = {"Content-Type": "application/json"} | ({"Idempotency-Key": key} if key else {})
    request = Request(EnvironBuilder(method="POST", path=path, data=body, headers=headers).get_environ())
    return RequestContext(
        request=request,
        platform=None,  # type: ignore[arg-type]
        request_id="r1",
        path_params={},
        body=None,
        query=None,
        raw_body=body,
    )


def test_the_fingerprint_is_the_http_layers_parsed_body_method_and_path() -> None:
    first = request_key(keyed_context(b'{"items": [{"prompt": "a"}], "size": "1K"}', "k1"))
    same = request_key(keyed_context(b'{"size":"1K","items":[{"prompt":"a"}]}', "k1"))
    other = request_key(keyed_context(b'{"items": [{"prompt": "b"}]}', "k1"))
    elsewhere = request_key(keyed_context(b'{"items": [{"prompt": "a"}], "size": "1K"}', "k1", "/jobs/j/retry"))
    assert first is not None and same is not None and other is not None and elsewhere is not None
    assert first == same and first.key == "k1"
    assert other.fingerprint != first.fingerprint != elsewhere.fingerprint
    assert request_key(keyed_context(b"{}", None)) is None


# -- a commit whose answer was lost ---------------------------------------------------------------

NO_WAIT = RetryPolicy(attempts=3, base=0.0, cap=0.0, deadline=60.0)


class Commits:
    """A commit that fails as told, then works; and a store that says whether our write is there."""

    def __init__(self, *failures: Exception, landed: bool = False) -> None:
        self.failures = list(failures)
        self.landed = landed
        self.calls = 0

    def commit(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        self.landed = True
        return "committed"

    def recognise(self) -> str | None:
        return "ours" if self.landed else None


def test_a_commit_that_landed_but_answered_unavailable_is_recognised() -> None:
    landed = Commits(ServiceUnavailable("lost answer"), landed=True)
    assert commit_once(landed.commit, landed.recognise, "t", policy=NO_WAIT) == "ours" and landed.calls == 1
    replayed = Commits(FailedPrecondition("our own write moved the update time"), landed=True)
    assert commit_once(replayed.commit, replayed.recognise, "t", policy=NO_WAIT) == "ours"


def test_a_conflict_without_our_write_is_a_lost_race_and_a_transient_failure_is_committed_again() -> None:
    lost = Commits(AlreadyExists("someone else created it"))
    assert commit_once(lost.commit, lost.recognise, "t", policy=NO_WAIT) is None and lost.calls == 1
    flaky = Commits(ServiceUnavailable("down"))
    assert commit_once(flaky.commit, flaky.recognise, "t", policy=NO_WAIT) == "committed" and flaky.calls == 2
    down = Commits(*(ServiceUnavailable("down") for _ in range(NO_WAIT.attempts)))
    with pytest.raises(ServiceUnavailable):
        commit_once(down.commit, down.recognise, "t", policy=NO_WAIT)
    assert down.calls == NO_WAIT.attempts


# -- what a kind must be -----------------------------------------------------------------------------


def test_a_paged_kind_is_counted_and_its_items_can_be_written_from_the_lifecycles_fields() -> None:
    from shared.batch.models import BatchItemDoc, PagedJobDoc

    class Item(BatchItemDoc):
        prompt: str  # no default: a page the reaper gives up could not be written

    with pytest.raises(TypeError, match="must be counted"):
        type("Uncounted", (JobKind,), {"job_model": PagedJobDoc, "item_model": BatchItemDoc})
    with pytest.raises(TypeError, match="need defaults"):
        type("Strict", (JobKind,), {"job_model": PagedJobDoc, "item_model": Item, "counted": True})
    type("Fine", (JobKind,), {"job_model": PagedJobDoc, "item_model": BatchItemDoc, "counted": True})
