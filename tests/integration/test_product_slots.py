"""Product slots hold exactly under concurrency: the counter ``clients/{c}/usage/products`` changes in
the same commit as each product create/delete, so N concurrent creates at K < N free slots make
exactly K products. Also: CSV imports fill exactly the remaining slots (also when a chunk is
delivered again), deletes free slots, a client from before the counter is backfilled once, a
downgrade blocks new products without deleting any.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from shared.adapters.firestore.catalog import FirestoreProductRepository, products_ref, usage_ref
from shared.catalog import imports, products
from shared.catalog.models import ProductCreate, ProductDoc
from shared.errors import NotFound
from tests.csv_import_helpers import Api, chunk_tasks, simple_csv

pytestmark = pytest.mark.integration

T = TypeVar("T")


def concurrently(count: int, call: Callable[[int], T]) -> list[T]:
    """``call(i)`` for i in range(count), all started together on their own threads."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = call(index)
        except BaseException as exc:  # returned to the test, which says what it expected
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    return results


def set_slots(db: Any, client_id: str, slots: int) -> None:
    """What a plan change does to the client record (shared/billing/events.py)."""
    db.collection("clients").document(client_id).set(
        {"billing": {"plan": "starter", "product_slots": slots}}, merge=True
    )


def counter(db: Any, client_id: str) -> dict[str, Any]:
    """The slot counter document ({} when the client has none yet)."""
    snapshot = usage_ref(db, client_id).get()
    return dict(snapshot.to_dict() or {}) if snapshot.exists else {}


def stored(db: Any, client_id: str) -> int:
    return int(products_ref(db, client_id).count().get()[0][0].value)


def legacy_products(db: Any, client_id: str, count: int) -> list[str]:
    """Products written the way the code before the counter wrote them: no counter."""
    now = datetime.now(UTC)
    ids = []
    for index in range(count):
        doc = products.build_product(client_id, ProductCreate(name=f"Old {index}"), now)
        products_ref(db, client_id).document(doc.id).create(doc.model_dump(mode="python"))
        ids.append(doc.id)
    return ids


@pytest.fixture
def api(stack: Any, client_id: str) -> Api:
    catalog = Api(stack, client_id)
    assert catalog.get("/products").status_code == 200  # provisions the client (Free, 25 slots)
    return catalog


def create(api: Api, name: str) -> Any:
    return api.http.post("/products", json={"name": name}, headers=api.headers)


def statuses(responses: list[Any]) -> list[int]:
    return sorted(r.status_code for r in responses)


# -- concurrent creates -----------------------------------------------------------------------------


def test_concurrent_creates_take_exactly_the_free_slots(stack: Any, api: Api, client_id: str) -> None:
    db = stack.platform.db
    set_slots(db, client_id, 8)
    for index in range(3):
        assert create(api, f"First {index}").status_code == 201
    assert counter(db, client_id)["used"] == 3

    responses = concurrently(16, lambda i: create(api, f"Racer {i}"))

    assert statuses(responses) == [201] * 5 + [402] * 11
    for refused in (r for r in responses if r.status_code == 402):
        assert refused.json["code"] == "product_slot_limit"
        assert refused.json["limit"] == 8 and 3 <= refused.json["used"] <= 8
    assert stored(db, client_id) == counter(db, client_id)["used"] == 8
    assert len(api.products()) == 8

    # A second wave at a full plan: nothing gets through.
    assert statuses(concurrently(6, lambda i: create(api, f"Late {i}"))) == [402] * 6
    assert stored(db, client_id) == 8
    view = stack.client("billing_api").get("/subscription", headers=api.headers).json
    assert (view["product_slots"], view["products_used"]) == (8, 8)


def test_concurrent_first_creates_backfill_the_counter_once(stack: Any, api: Api, client_id: str) -> None:
    db = stack.platform.db
    set_slots(db, client_id, 10)
    legacy_products(db, client_id, 6)
    billing = stack.client("billing_api")
    # Before any write the subscription counts the products, and reading creates no counter.
    assert billing.get("/subscription", headers=api.headers).json["products_used"] == 6
    assert counter(db, client_id) == {}

    responses = concurrently(12, lambda i: create(api, f"New {i}"))

    assert statuses(responses) == [201] * 4 + [402] * 8
    usage = counter(db, client_id)
    assert (usage["used"], usage["counted"]) == (10, 6)  # counted once, before any new product
    assert stored(db, client_id) == 10
    assert billing.get("/subscription", headers=api.headers).json["products_used"] == 10


def test_a_delete_frees_a_slot_once(stack: Any, api: Api, client_id: str) -> None:
    db = stack.platform.db
    set_slots(db, client_id, 3)
    ids = [create(api, f"P{i}").json["id"] for i in range(3)]
    refused = create(api, "Fourth")
    assert refused.status_code == 402 and (refused.json["limit"], refused.json["used"]) == (3, 3)

    assert api.http.delete(f"/products/{ids[0]}", headers=api.headers).status_code == 204
    assert counter(db, client_id)["used"] == 2
    assert create(api, "Fourth").status_code == 201
    assert create(api, "Fifth").status_code == 402

    # The same product deleted by many requests at once frees one slot; unknown ids free none.
    deletes = concurrently(8, lambda i: api.http.delete(f"/products/{ids[1]}", headers=api.headers))
    assert statuses(deletes) == [204] + [404] * 7
    assert api.http.delete("/products/prod_unknown", headers=api.headers).status_code == 404
    assert stored(db, client_id) == counter(db, client_id)["used"] == 2


def test_delete_backfills_a_client_without_a_counter(stack: Any, api: Api, client_id: str) -> None:
    db = stack.platform.db
    set_slots(db, client_id, 4)
    old = legacy_products(db, client_id, 4)
    assert api.http.delete(f"/products/{old[0]}", headers=api.headers).status_code == 204
    assert counter(db, client_id)["used"] == 3 == stored(db, client_id)
    assert create(api, "Fits").status_code == 201
    assert create(api, "Does not").status_code == 402


def test_a_downgrade_blocks_new_products_and_deletes_none(stack: Any, api: Api, client_id: str) -> None:
    db = stack.platform.db
    set_slots(db, client_id, 10)
    ids = [create(api, f"P{i}").json["id"] for i in range(5)]
    set_slots(db, client_id, 3)  # the plan changed to one with fewer slots than products

    refused = create(api, "New")
    assert refused.status_code == 402
    assert (refused.json["code"], refused.json["limit"], refused.json["used"]) == ("product_slot_limit", 3, 5)
    assert sorted(p["id"] for p in api.products()) == sorted(ids)
    view = stack.client("billing_api").get("/subscription", headers=api.headers).json
    assert (view["product_slots"], view["products_used"]) == (3, 5)

    done = api.run(simple_csv([("Imported", "I-1", "")]))
    assert (done["progress"]["created_products"], done["progress"]["failed_rows"]) == (0, 1)

    for product_id in ids[:2]:
        assert api.http.delete(f"/products/{product_id}", headers=api.headers).status_code == 204
    assert create(api, "Still full").status_code == 402
    assert api.http.delete(f"/products/{ids[2]}", headers=api.headers).status_code == 204
    assert create(api, "Fits again").status_code == 201
    assert stored(db, client_id) == counter(db, client_id)["used"] == 3


# -- CSV imports ------------------------------------------------------------------------------------


def test_import_fills_exactly_the_free_slots_across_redeliveries(
    stack: Any, api: Api, client_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = stack.platform.db
    set_slots(db, client_id, 10)
    for index in range(4):
        assert create(api, f"Manual {index}").status_code == 201
    rows = [(f"Imported {i}", f"SKU-{i:02d}", "") for i in range(11)]  # spreadsheet rows 2..12, 4 chunks
    import_id = api.draft(simple_csv(rows))["id"]

    # The worker dies after chunk 1's products are committed but before the chunk is recorded, so
    # the queue delivers chunk 1 again: its products exist by then and must not take slots twice.
    real = imports._process_rows
    calls: list[int] = []

    def crash_once(*args: Any, **kwargs: Any) -> Any:
        outcome = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            raise ConnectionError("worker killed before recording the chunk")
        return outcome

    monkeypatch.setattr(imports, "_process_rows", crash_once)
    api.start(import_id)
    stack.run_tasks()
    monkeypatch.undo()

    chunk1 = chunk_tasks(stack.dispatcher, import_id)[1][0]
    assert chunk1.outcomes[0] >= 500 and chunk1.succeeded  # delivered again, then done
    done = api.import_(import_id)
    assert done["status"] == "completed"
    assert (done["progress"]["created_products"], done["progress"]["failed_rows"]) == (6, 5)
    refused = [r for r in api.report(import_id) if r["code"] == "product_slot_limit"]
    assert [int(r["row"]) for r in refused] == [8, 9, 10, 11, 12]
    assert stored(db, client_id) == counter(db, client_id)["used"] == 10

    # A duplicate of a finished chunk (a new task name, the same body) changes nothing either.
    chunk0 = chunk_tasks(stack.dispatcher, import_id)[0][0]
    assert stack.dispatcher.submit(queue=chunk0.queue, name="again", url=chunk0.url, body=chunk0.body)
    assert stack.run_tasks() == 1
    assert api.import_(import_id)["progress"] == done["progress"]
    assert stored(db, client_id) == counter(db, client_id)["used"] == 10


def test_import_chunks_and_api_creates_share_the_slots_exactly(stack: Any, api: Api, client_id: str) -> None:
    """A batch importer (CSV today, stores later) and single creates racing for the last slots."""
    db = stack.platform.db
    set_slots(db, client_id, 12)
    now = datetime.now(UTC)

    def batch(index: int) -> Any:
        if index < 3:  # three importers of 5 products each (two of them the same batch, redelivered)
            key = min(index, 1)
            docs = [
                products.build_product(client_id, ProductCreate(name=f"B{key}-{n}"), now, product_id=f"prod_b{key}_{n}")
                for n in range(5)
            ]
            return products.create_products(FirestoreProductRepository(db), client_id, docs, now, all_or_nothing=False)
        return create(api, f"Single {index}")

    results = concurrently(9, batch)

    batches = results[:3]
    assert not [r for r in results if isinstance(r, BaseException)], results
    singles = [r.status_code for r in results[3:]]
    created = [doc.id for b in batches for doc in b.created]
    assert len(created) == len(set(created))  # the redelivered batch created nothing twice
    assert len(created) + singles.count(201) == 12 == stored(db, client_id)
    assert counter(db, client_id)["used"] == 12


# -- recount and the property -----------------------------------------------------------------------


def test_recount_repairs_a_drifted_counter(stack: Any, api: Api, client_id: str) -> None:
    db = stack.platform.db
    assert create(api, "Counted").status_code == 201
    legacy_products(db, client_id, 2)  # e.g. an old instance still running during the deploy
    assert counter(db, client_id)["used"] == 1
    assert products.recount_product_usage(FirestoreProductRepository(db), client_id, datetime.now(UTC)) == 3
    assert counter(db, client_id)["used"] == 3


def test_the_daily_recount_repairs_every_drifted_counter_through_the_scheduler_route(
    stack: Any, api: Api, client_id: str, other_client_id: str
) -> None:
    from tests.conftest import TASK_SECRET

    db = stack.platform.db
    assert create(api, "Counted").status_code == 201
    legacy_products(db, client_id, 2)
    steady = Api(stack, other_client_id)
    assert create(steady, "Counted too").status_code == 201
    jobs = stack.client("catalog_tasks")
    assert jobs.post("/jobs/recount-product-usage").status_code == 401  # Cloud Scheduler only

    ran = jobs.post("/jobs/recount-product-usage", headers={"Authorization": f"Bearer {TASK_SECRET}"})
    assert ran.status_code == 200, ran.json
    assert ran.json["corrected"][client_id] == {"was": 1, "now": 3}
    assert other_client_id not in ran.json["corrected"]
    assert counter(db, client_id)["used"] == 3 and counter(db, other_client_id)["used"] == 1
    again = jobs.post("/jobs/recount-product-usage", headers={"Authorization": f"Bearer {TASK_SECRET}"})
    assert client_id not in again.json["corrected"]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(
    limit=st.integers(min_value=0, max_value=8),
    existing=st.integers(min_value=0, max_value=6),
    batches=st.lists(st.lists(st.integers(min_value=0, max_value=9), max_size=5), min_size=1, max_size=4),
    deletes=st.lists(st.integers(min_value=0, max_value=5), max_size=3),
)
def test_slots_hold_for_any_mix_of_concurrent_batches_and_deletes(
    db: Any, limit: int, existing: int, batches: list[list[int]], deletes: list[int]
) -> None:
    """Batches draw ids from a small pool (overlaps are redeliveries), deletes hit legacy products,
    all at once, on a client with products from before the counter."""
    client_id = "c" + uuid.uuid4().hex[:16]
    set_slots(db, client_id, limit)
    old = legacy_products(db, client_id, existing)
    doomed = [old[i] for i in deletes if i < len(old)]
    now = datetime.now(UTC)

    def docs_for(ids: list[int]) -> list[ProductDoc]:
        return [
            products.build_product(client_id, ProductCreate(name=f"N{i}"), now, product_id=f"prod_n{i}") for i in ids
        ]

    def run(index: int) -> Any:
        if index < len(batches):
            return products.create_products(
                FirestoreProductRepository(db), client_id, docs_for(batches[index]), now, all_or_nothing=False
            )
        return products.delete_product(FirestoreProductRepository(db), client_id, doomed[index - len(batches)], now)

    results = concurrently(len(batches) + len(doomed), run)

    outcomes = results[: len(batches)]
    assert not [r for r in outcomes if isinstance(r, BaseException)], outcomes
    deleted = [r for r in results[len(batches) :] if not isinstance(r, NotFound)]
    assert all(r is None for r in deleted), deleted
    assert len(deleted) == len(set(doomed))  # each product deleted once
    created = [doc.id for r in outcomes for doc in r.created]
    assert len(created) == len(set(created))
    wanted = {f"prod_n{i}" for ids in batches for i in ids}
    initially_free = max(0, limit - existing)
    assert min(len(wanted), initially_free) <= len(created) <= initially_free + len(deleted)
    if not any(r.refused for r in outcomes):
        assert set(created) == wanted
    event(f"refused: {any(r.refused for r in outcomes)}, deletes: {bool(deleted)}, batches: {len(batches)}")
    total = existing - len(deleted) + len(created)
    usage = counter(db, client_id)
    assert bool(usage) == (any(batches) or bool(doomed))  # nothing asked of it: no counter yet
    assert stored(db, client_id) == total == usage.get("used", total)
    assert total <= max(limit, existing)
