"""Batch jobs that go wrong outside the worker's control, through the real generate API, its Cloud Tasks
workers, the scheduler routes and the Firestore ledger: an item delivery killed mid-work, a job that
outlives its credit hold, and a job whose acceptance fails after its credits were reserved.

Money stays exact in each: balances, holds and the ledger's own verification.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from shared.engines.base import ImageRequest
from shared.errors import UpstreamUnavailable
from shared.storage import ObjectStore
from tests import images, platforms
from tests.conftest import TASK_SECRET
from tests.engines import ScriptedEngine
from tests.fakes import InMemoryObjectStore
from tests.firestore_faults import FaultyClient, writes_to

GRANT = 100


@pytest.fixture
def db(firestore_emulator: str) -> Any:
    """A Firestore project of this test's own: the reaper works across tenants, so it sees only this
    test's jobs (and never another test's)."""
    return FaultyClient()


SCHEDULER = {"Authorization": f"Bearer {TASK_SECRET}"}


class Killed(BaseException):
    """The worker instance dies mid-item (function timeout, out of memory): nothing after it runs and
    nothing answers the queue (not an Exception, so no handler of ours sees it)."""


class FlakyObjectStore(InMemoryObjectStore):
    """R2 having a bad minute: every write fails while ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def put(self, key: str, data: bytes, content_type: str, *, cache_control: str | None = None) -> None:
        if self.down:
            raise UpstreamUnavailable("The object store is unavailable", retry_after=1)
        super().put(key, data, content_type, cache_control=cache_control)


def install(
    stack: Any,
    *,
    engine: Any = None,
    object_store: ObjectStore | None = None,
    clock: Callable[[], datetime] | None = None,
) -> Any:
    """The scripted engine unless told otherwise; a shifted clock gets its own ledger on the same
    Firestore data, so the hold sweeper sees that time too."""
    return platforms.install(
        stack, engine=engine or ScriptedEngine(), object_store=object_store, clock=clock, ledger_on_clock=True
    )


def grant(stack: Any, client_id: str) -> None:
    platforms.grant(stack, client_id, GRANT)


credits = platforms.available


def assert_exact(stack: Any, client_id: str) -> None:
    """The balance equals what the entries say and no hold is left pending."""
    ledger = stack.platform.ledger
    assert ledger.verify(client_id) == []
    assert ledger.state(client_id).holds == {}


def moves(stack: Any, client_id: str) -> list[tuple[str, int]]:
    """(type, amount) of every entry but the grant, oldest first."""
    entries = sorted(stack.platform.ledger.store.entries(client_id), key=lambda e: e.seq)
    return [(e.type.value, e.amount) for e in entries if e.type.value != "grant"]


def unit_price(stack: Any) -> int:
    price: int = stack.platform.price_book.current().operations["generate_image"]["1K"]
    return price


def create(stack: Any, client_id: str, prompts: list[str], key: str | None = None) -> Any:
    headers = stack.headers(client_id, **({"Idempotency-Key": key} if key else {}))
    body = {"items": [{"prompt": p} for p in prompts], "variants": 1, "size": "1K"}
    return stack.client("generate_api").post("/jobs", json=body, headers=headers)


def get_job(stack: Any, client_id: str, job_id: str) -> dict[str, Any]:
    response = stack.client("generate_api").get(f"/jobs/{job_id}", headers=stack.headers(client_id))
    assert response.status_code == 200, response.json
    body: dict[str, Any] = response.json
    return body


def items(stack: Any, client_id: str, job_id: str) -> list[dict[str, Any]]:
    response = stack.client("generate_api").get(f"/jobs/{job_id}/items", headers=stack.headers(client_id))
    assert response.status_code == 200, response.json
    found: list[dict[str, Any]] = response.json["items"]
    return found


def uploaded_image(stack: Any, client_id: str) -> str:
    """A product photo, through the catalog's upload flow (the browser's PUT played by a store put)."""
    catalog, headers = stack.client("catalog_api"), stack.headers(client_id)
    product = catalog.post("/products", json={"name": "Mug"}, headers=headers)
    assert product.status_code == 201, product.json
    data = images.png((320, 240))
    slot = catalog.post(
        "/uploads",
        json={
            "filename": "mug.png",
            "content_type": "image/png",
            "size_bytes": len(data),
            "product_id": product.json["id"],
        },
        headers=headers,
    )
    assert slot.status_code == 201, slot.json
    stack.platform.object_store.put(f"uploads/{client_id}/{slot.json['id']}", data, "image/png")
    done = catalog.post(f"/uploads/{slot.json['id']}/complete", headers=headers)
    assert done.status_code == 200, done.json
    return str(done.json["asset_id"])


def test_a_killed_item_delivery_is_reaped_by_the_scheduler_and_refunded(stack: Any, client_id: str) -> None:
    def kill(request: ImageRequest) -> None:
        if "KILL" in request.prompt:
            raise Killed()

    platform = install(stack, engine=ScriptedEngine(before=kill))
    grant(stack, client_id)
    unit = unit_price(stack)
    created = create(stack, client_id, ["a red mug", "KILL a blue mug", "a green mug"])
    assert created.status_code == 202, created.json
    job_id = created.json["id"]
    with pytest.raises(Killed):
        stack.run_tasks()
    stack.run_tasks()  # everything else: the killed item's task is gone, as after a last attempt
    job = get_job(stack, client_id, job_id)
    assert (job["status"], job["counts"]["running"], job["counts"]["succeeded"]) == ("running", 1, 2)
    assert credits(stack, client_id) == (GRANT - 3 * unit, 3 * unit)
    # Every item task asked Cloud Tasks to wait for the item's worst case.
    item_tasks = [t for t in stack.dispatcher.history if t.url.endswith("/tasks/item")]
    item_tasks = [t for t in item_tasks if json.loads(t.body)["job_id"] == job_id]
    assert [t.dispatch_deadline for t in item_tasks] == [1800.0] * 3

    lease = timedelta(minutes=platform.settings.batch_item_lease_minutes)
    reaper = stack.client("generate_tasks")
    install(stack, clock=lambda: platform.clock() + lease - timedelta(minutes=1))
    early = reaper.post("/jobs/reap-stuck-items", headers=SCHEDULER)
    assert early.status_code == 200, early.json
    assert client_id not in early.json["items_failed"]
    install(stack, clock=lambda: platform.clock() + lease + timedelta(minutes=1))
    reaped = reaper.post("/jobs/reap-stuck-items", headers=SCHEDULER)
    assert reaped.status_code == 200, reaped.json
    assert reaped.json["items_failed"][client_id] == [f"{job_id}/000001"]
    assert reaper.post("/jobs/reap-stuck-items", headers=SCHEDULER).json["items_failed"].get(client_id) is None
    stack.run_tasks()

    job = get_job(stack, client_id, job_id)
    assert job["status"] == "completed" and job["settlement"] == {"captured": 2 * unit, "released": unit}
    assert (job["counts"]["failed"], job["images_succeeded"], job["images_failed"]) == (1, 2, 1)
    failed = [i for i in items(stack, client_id, job_id) if i["status"] == "failed"]
    assert [(i["index"], i["failure"]["code"]) for i in failed] == [(1, "item_timed_out")]
    assert credits(stack, client_id) == (GRANT - 2 * unit, 0)
    assert moves(stack, client_id) == [("reserve", 3 * unit), ("capture", 2 * unit), ("release", unit)]
    assert_exact(stack, client_id)


def test_the_reaper_answers_only_the_scheduler(stack: Any, client_id: str) -> None:
    for entry in ("generate_tasks", "edit_tasks"):
        refused = stack.client(entry).post("/jobs/reap-stuck-items", headers=stack.headers(client_id))
        assert refused.status_code in (401, 403), refused.json
        assert stack.client(entry).post("/jobs/reap-stuck-items", headers=SCHEDULER).status_code == 200


def test_a_job_that_outlived_its_hold_settles_charging_nothing(stack: Any, client_id: str) -> None:
    platform = install(stack)
    grant(stack, client_id)
    unit = unit_price(stack)
    created = create(stack, client_id, ["a red mug", "a blue mug"])
    assert created.status_code == 202, created.json
    # The queue is stuck for a day: the hold sweeper releases the job's hold at its deadline.
    later = platform.clock() + timedelta(hours=platform.settings.generation_hold_ttl_hours, minutes=1)
    install(stack, clock=lambda: later)
    swept = stack.client("credits_jobs").post("/jobs/sweep-holds", headers=SCHEDULER)
    assert swept.status_code == 200, swept.json
    assert credits(stack, client_id) == (GRANT, 0)
    install(stack)
    stack.run_tasks()  # the items run, then the settlement finds the hold released

    job = get_job(stack, client_id, created.json["id"])
    assert job["status"] == "completed" and job["images_succeeded"] == 2
    assert job["settlement"] == {"captured": 0, "released": 2 * unit}
    assert credits(stack, client_id) == (GRANT, 0)
    assert moves(stack, client_id) == [("reserve", 2 * unit), ("release", 2 * unit)]
    assert_exact(stack, client_id)


def test_a_job_whose_item_list_cannot_be_stored_releases_its_hold(stack: Any, client_id: str) -> None:
    store = FlakyObjectStore()
    install(stack, object_store=store)
    grant(stack, client_id)
    unit = unit_price(stack)
    store.down = True
    failed = create(stack, client_id, ["a red mug", "a blue mug"], key="create-1")
    assert failed.status_code == 503 and failed.json["code"] == "upstream_unavailable", failed.json
    listed = stack.client("generate_api").get("/jobs", headers=stack.headers(client_id))
    assert listed.status_code == 200 and listed.json["items"] == []
    assert credits(stack, client_id) == (GRANT, 0)
    assert_exact(stack, client_id)

    # The caller retries with the same key once R2 is back: one job, paid once.
    store.down = False
    again = create(stack, client_id, ["a red mug", "a blue mug"], key="create-1")
    assert again.status_code == 202, again.json
    assert credits(stack, client_id) == (GRANT - 2 * unit, 2 * unit)
    stack.run_tasks()
    job = get_job(stack, client_id, again.json["id"])
    assert job["status"] == "completed" and job["settlement"] == {"captured": 2 * unit, "released": 0}
    assert credits(stack, client_id) == (GRANT - 2 * unit, 0)
    assert moves(stack, client_id) == [
        ("reserve", 2 * unit),
        ("release", 2 * unit),
        ("reserve", 2 * unit),
        ("capture", 2 * unit),
    ]
    assert_exact(stack, client_id)


def test_an_edit_that_finishes_after_the_reaper_gave_it_up_makes_no_revision(stack: Any, client_id: str) -> None:
    from shared.batch import recovery
    from shared.editing.service import EDITS

    reaped: list[Any] = []

    def reap_meanwhile(request: ImageRequest) -> None:
        # This delivery outlives its lease: the reaper gives the item up while the model is working.
        lease = timedelta(minutes=platform.settings.batch_item_lease_minutes)
        later = platform.clock() + lease + timedelta(minutes=1)
        services = replace(EDITS.dependencies(platform), queue=stack.dispatcher, clock=lambda: later)
        reaped.append(recovery.reap(EDITS, services, later, lease=lease).items_failed)

    platform = install(stack, engine=ScriptedEngine(before=reap_meanwhile))
    grant(stack, client_id)
    headers = stack.headers(client_id)
    asset_id = uploaded_image(stack, client_id)
    body = {"asset_ids": [asset_id], "operations": [{"op": "prompt_edit", "prompt": "warmer light"}]}
    created = stack.client("edit_api").post("/edits", json=body, headers=headers)
    assert created.status_code == 202, created.json
    job_id = created.json["id"]
    stack.run_tasks()

    assert [found.get(client_id) for found in reaped] == [[f"{job_id}/000000"]]
    job = stack.client("edit_api").get(f"/edits/{job_id}", headers=headers).json
    assert job["status"] == "completed" and job["items"][0]["status"] == "failed"
    assert job["items"][0]["failure"]["code"] == "item_timed_out"
    assert job["settlement"] == {"captured": 0, "released": 1, "succeeded": 0, "failed": 1}
    # The late delivery's revision was not committed: the asset is as it was.
    asset = stack.client("catalog_api").get(f"/assets/{asset_id}", headers=headers).json
    assert [r["number"] for r in asset["revisions"]] == [1]
    assert credits(stack, client_id) == (GRANT, 0)
    assert_exact(stack, client_id)


def test_a_reaped_item_charges_the_images_it_stored_before_its_delivery_died(stack: Any, client_id: str) -> None:
    def kill_fourth(request: ImageRequest) -> None:
        if len(engine.requests) == 4:  # three variants are stored (each an asset at once); the fourth dies
            raise Killed()

    engine = ScriptedEngine(before=kill_fourth)
    platform = install(stack, engine=engine)
    grant(stack, client_id)
    unit = unit_price(stack)
    headers = stack.headers(client_id)
    body = {"items": [{"prompt": "a red mug"}], "variants": 4, "size": "1K"}
    created = stack.client("generate_api").post("/jobs", json=body, headers=headers)
    assert created.status_code == 202, created.json
    job_id = created.json["id"]
    with pytest.raises(Killed):
        stack.run_tasks()
    library = stack.client("catalog_api").get("/assets?kind=generated", headers=headers)
    assert library.status_code == 200 and len(library.json["items"]) == 3, library.json

    lease = timedelta(minutes=platform.settings.batch_item_lease_minutes)
    install(stack, engine=engine, clock=lambda: platform.clock() + lease + timedelta(minutes=1))
    reaped = stack.client("generate_tasks").post("/jobs/reap-stuck-items", headers=SCHEDULER)
    assert reaped.status_code == 200, reaped.json
    assert reaped.json["items_failed"][client_id] == [f"{job_id}/000000"]
    stack.run_tasks()

    # The customer has the three images in their library: those are charged, the fourth is refunded.
    job = get_job(stack, client_id, job_id)
    assert job["status"] == "completed" and job["settlement"] == {"captured": 3 * unit, "released": unit}
    assert (job["images_succeeded"], job["images_failed"]) == (3, 1)
    [item] = items(stack, client_id, job_id)
    stored = sorted(a["id"] for a in library.json["items"])
    assert item["status"] == "succeeded" and sorted(item["asset_ids"]) == stored
    assert (item["failed_variants"], item["failure"]["code"]) == (1, "item_timed_out")
    assert credits(stack, client_id) == (GRANT - 3 * unit, 0)
    assert moves(stack, client_id) == [("reserve", 4 * unit), ("capture", 3 * unit), ("release", unit)]
    assert_exact(stack, client_id)


def test_an_item_that_fails_for_good_after_an_earlier_delivery_died_charges_the_images_that_delivery_stored(
    stack: Any, client_id: str
) -> None:
    """The item's first delivery stores three variants and dies; the queue's redelivery cannot read
    the product's photo any more (deleted meanwhile) and fails the item for good. The three images
    are in the customer's library: they are charged, only the fourth is refunded."""
    from tests.catalog_helpers import make_product, upload_image

    def kill_fourth(request: ImageRequest) -> None:
        if len(engine.requests) == 4:
            raise Killed()

    engine = ScriptedEngine(before=kill_fourth)
    install(stack, engine=engine)
    grant(stack, client_id)
    unit = unit_price(stack)
    headers, catalog = stack.headers(client_id), stack.client("catalog_api")
    product_id = make_product(catalog, headers, "Mug")
    photo_id = upload_image(stack, catalog, headers, client_id, product_id, images.png((64, 64)))
    body = {"items": [{"product_id": product_id}], "variants": 4, "size": "1K"}
    created = stack.client("generate_api").post("/jobs", json=body, headers=headers)
    assert created.status_code == 202, created.json
    job_id = created.json["id"]
    with pytest.raises(Killed):
        stack.run_tasks()
    [died] = [t for t in stack.dispatcher.history if t.url.endswith("/tasks/item")]

    photo = stack.platform.db.document(f"clients/{client_id}/assets/{photo_id}").get().to_dict()
    stack.platform.object_store.delete(photo["key"])
    assert stack.dispatcher.submit(queue=died.queue, name=f"{died.name}-redelivered", url=died.url, body=died.body)
    stack.run_tasks()

    job = get_job(stack, client_id, job_id)
    assert job["status"] == "completed" and job["settlement"] == {"captured": 3 * unit, "released": unit}
    [item] = items(stack, client_id, job_id)
    assert item["status"] == "succeeded" and len(item["asset_ids"]) == 3 and item["failed_variants"] == 1
    assert moves(stack, client_id) == [("reserve", 4 * unit), ("capture", 3 * unit), ("release", unit)]
    assert_exact(stack, client_id)


# -- a commit that went through but answered "unavailable" is ours, not a lost race -----------------


def test_an_edit_whose_revision_commit_answer_was_lost_keeps_its_revision_and_files(stack: Any, client_id: str) -> None:
    install(stack)
    grant(stack, client_id)
    headers, catalog = stack.headers(client_id), stack.client("catalog_api")
    asset_id = uploaded_image(stack, client_id)
    body = {"asset_ids": [asset_id], "operations": [{"op": "prompt_edit", "prompt": "warmer light"}]}
    created = stack.client("edit_api").post("/edits", json=body, headers=headers)
    assert created.status_code == 202, created.json
    # The commit making revision 2 current (and finishing the item) lands; its answer is lost.
    fault = stack.platform.db.land_then_fail(writes_to(f"assets/{asset_id}/revisions/2"))
    stack.run_tasks()

    assert fault.hits == 1
    job = stack.client("edit_api").get(f"/edits/{created.json['id']}", headers=headers).json
    assert job["status"] == "completed" and [i["revision"] for i in job["items"]] == [2]
    cost = created.json["cost"]
    assert job["settlement"] == {"captured": cost, "released": 0, "succeeded": 1, "failed": 0}
    asset = stack.platform.db.document(f"clients/{client_id}/assets/{asset_id}").get().to_dict()
    assert asset["current_revision"] == 2
    store = stack.platform.object_store
    assert store.head(asset["key"]) is not None and store.head(asset["thumbnail_key"]) is not None
    detail = catalog.get(f"/assets/{asset_id}", headers=headers).json
    assert [r["number"] for r in detail["revisions"]] == [1, 2]
    assert credits(stack, client_id) == (GRANT - cost, 0)
    assert_exact(stack, client_id)


def test_a_synchronous_edit_whose_commit_answer_was_lost_makes_one_revision_with_its_files(
    stack: Any, client_id: str
) -> None:
    install(stack)
    headers, catalog = stack.headers(client_id), stack.client("catalog_api")
    asset_id = uploaded_image(stack, client_id)
    fault = stack.platform.db.land_then_fail(writes_to(f"assets/{asset_id}/revisions/2"))
    body = {"asset_ids": [asset_id], "operations": [{"op": "crop", "aspect": "1:1"}]}
    edited = stack.client("edit_api").post("/edits", json=body, headers=headers)

    assert edited.status_code == 200, edited.json
    assert fault.hits == 1 and [r["revision"] for r in edited.json["revisions"]] == [2]
    detail = catalog.get(f"/assets/{asset_id}", headers=headers).json
    assert [r["number"] for r in detail["revisions"]] == [1, 2]  # the crop was not applied twice
    asset = stack.platform.db.document(f"clients/{client_id}/assets/{asset_id}").get().to_dict()
    assert (asset["width"], asset["height"]) == (240, 240)
    assert stack.platform.object_store.head(asset["key"]) is not None


class CountingObjectStore(InMemoryObjectStore):
    """Counts every write per key."""

    def __init__(self) -> None:
        super().__init__()
        self.puts: Counter[str] = Counter()

    def put(self, key: str, data: bytes, content_type: str, *, cache_control: str | None = None) -> None:
        self.puts[key] += 1
        super().put(key, data, content_type, cache_control=cache_control)


def test_two_deliveries_of_one_item_never_overwrite_each_others_images(stack: Any, client_id: str) -> None:
    store = CountingObjectStore()
    raced: list[str] = []

    def second_delivery_meanwhile(request: ImageRequest) -> None:
        # While this delivery waits for the model, the queue delivers the item task again (a duplicate
        # dispatch), and that delivery runs the item to its end first.
        if not raced:
            [task] = [t for t in stack.dispatcher.history if t.url.endswith("/tasks/item")]
            raced.append(task.name)
            stack.dispatcher.submit(queue=task.queue, name=f"{task.name}-again", url=task.url, body=task.body)
            stack.dispatcher.run_until_idle()

    engine = ScriptedEngine(before=second_delivery_meanwhile)
    install(stack, engine=engine, object_store=store)
    grant(stack, client_id)
    unit = unit_price(stack)
    created = create(stack, client_id, ["a red mug"])
    assert created.status_code == 202, created.json
    stack.run_tasks()

    assert raced and len(engine.requests) == 2  # both deliveries made an image
    assert [key for key, count in store.puts.items() if count > 1] == []  # nothing written twice
    [item] = items(stack, client_id, created.json["id"])
    [asset_id] = item["asset_ids"]
    asset = stack.platform.db.document(f"clients/{client_id}/assets/{asset_id}").get().to_dict()
    # The losing delivery's objects are gone; the winner's are the asset's.
    kept = {key for key in store.objects if key.startswith(f"clients/{client_id}/assets/{asset_id}/")}
    assert kept == {asset["key"], asset["thumbnail_key"]}
    job = get_job(stack, client_id, created.json["id"])
    assert job["status"] == "completed" and job["settlement"] == {"captured": unit, "released": 0}
    assert moves(stack, client_id) == [("reserve", unit), ("capture", unit)]
    assert_exact(stack, client_id)
