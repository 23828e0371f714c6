"""Product and product-slot rules against the in-memory repositories (no emulator)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.catalog import products
from shared.catalog.models import ProductCreate, ProductListQuery, ProductUpdate
from shared.catalog.ports import ProductFilter
from shared.catalog.slots import ProductSlotLimit, ProductUsageDoc, SlotUsage, take_free
from shared.errors import Conflict, NotFound
from tests.fakes_catalog import InMemoryProductRepository

CLIENT = "client_a"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def repo_with(slots: int) -> InMemoryProductRepository:
    repo = InMemoryProductRepository()
    repo.billing[CLIENT] = {"plan": "starter", "product_slots": slots}
    return repo


def create(repo: InMemoryProductRepository, name: str) -> str:
    return products.create_product(repo, CLIENT, ProductCreate(name=name), NOW).id


def test_a_product_takes_a_slot_until_none_is_left() -> None:
    repo = repo_with(2)
    create(repo, "One")
    create(repo, "Two")
    with pytest.raises(ProductSlotLimit) as refused:
        create(repo, "Three")
    assert refused.value.status == 402 and refused.value.code == "product_slot_limit"
    assert refused.value.extensions["limit"] == 2 and refused.value.extensions["used"] == 2
    assert repo.count(CLIENT) == 2
    assert products.product_usage(repo, CLIENT) == SlotUsage(limit=2, used=2)


def test_deleting_a_product_frees_its_slot() -> None:
    repo = repo_with(1)
    first = create(repo, "One")
    products.delete_product(repo, CLIENT, first, NOW)
    assert products.product_usage(repo, CLIENT).used == 0
    create(repo, "Two")
    with pytest.raises(NotFound):
        products.delete_product(repo, CLIENT, first, NOW)
    assert products.product_usage(repo, CLIENT).used == 1


def test_a_client_without_a_plan_has_the_free_plans_slots() -> None:
    repo = InMemoryProductRepository()
    assert products.product_usage(repo, CLIENT).limit == repo.slot_limit(CLIENT)


def test_a_client_without_a_counter_is_counted_on_first_need() -> None:
    repo = repo_with(5)
    for name in ("Old 1", "Old 2"):  # written before the counter existed
        doc = products.build_product(CLIENT, ProductCreate(name=name), NOW)
        repo.products.setdefault(CLIENT, {})[doc.id] = (doc, 1)
    assert repo.usage(CLIENT) is None
    assert products.product_usage(repo, CLIENT).used == 2  # read only: counted, not backfilled
    assert repo.usage(CLIENT) is None
    create(repo, "New")
    usage = repo.usage(CLIENT)
    assert usage is not None and (usage.value.used, usage.value.counted) == (3, 2)


def test_a_batch_fills_the_free_slots_in_order_and_refuses_the_rest() -> None:
    repo = repo_with(3)
    create(repo, "Manual")
    docs = [
        products.build_product(CLIENT, ProductCreate(name=f"Row {n}"), NOW, product_id=f"prod_row{n}") for n in range(4)
    ]
    done = products.create_products(repo, CLIENT, docs, NOW, all_or_nothing=False)
    assert [d.id for d in done.created] == ["prod_row0", "prod_row1"]
    assert [d.id for d in done.refused] == ["prod_row2", "prod_row3"]
    assert done.usage == SlotUsage(limit=3, used=3)
    again = products.create_products(repo, CLIENT, docs[:2], NOW, all_or_nothing=False)
    assert (again.created, again.existing) == ([], ["prod_row0", "prod_row1"])  # a redelivery takes no slot
    assert products.product_usage(repo, CLIENT).used == 3


def test_a_downgrade_leaves_more_used_than_slots_and_refuses_new_products() -> None:
    repo = repo_with(3)
    for name in ("A", "B", "C"):
        create(repo, name)
    repo.billing[CLIENT] = {"plan": "free", "product_slots": 1}
    assert products.product_usage(repo, CLIENT) == SlotUsage(limit=1, used=3)
    assert products.product_usage(repo, CLIENT).free == 0
    with pytest.raises(ProductSlotLimit):
        create(repo, "D")


def test_a_concurrent_create_makes_the_slot_write_stale_and_it_is_decided_again() -> None:
    repo = repo_with(1)
    create(repo, "Seed")
    products.delete_product(repo, CLIENT, repo.scan(CLIENT, ProductFilter(), None, 10)[0].id, NOW)
    # Between our read of the counter and our write, another writer takes the last slot.
    repo.before_write.append(lambda: create(repo, "Theirs"))
    with pytest.raises(ProductSlotLimit):
        create(repo, "Ours")
    assert [p.name for p in repo.scan(CLIENT, ProductFilter(), None, 10)] == ["Theirs"]
    assert products.product_usage(repo, CLIENT).used == 1


def test_recount_repairs_a_drifted_counter_and_reports_it() -> None:
    repo = repo_with(10)
    create(repo, "Counted")
    drifted = products.build_product(CLIENT, ProductCreate(name="Bypassed"), NOW)
    repo.products[CLIENT][drifted.id] = (drifted, 1)
    report = products.recount_every_client(repo, NOW)
    assert report.corrected == {CLIENT: {"was": 1, "now": 2}}
    assert products.recount_every_client(repo, NOW).corrected == {}


def test_a_recount_that_races_a_writer_reads_again() -> None:
    repo = repo_with(10)
    create(repo, "Counted")
    repo.before_write.append(lambda: create(repo, "Concurrent"))
    assert products.recount_product_usage(repo, CLIENT, NOW) == 2
    usage = repo.usage(CLIENT)
    assert usage is not None and usage.value.used == 2


def test_update_keeps_search_tokens_and_a_lost_race_is_retried() -> None:
    repo = repo_with(5)
    product_id = create(repo, "Red Shoe")
    loaded = repo.load(CLIENT, product_id)
    assert loaded is not None
    repo.before_write.append(lambda: repo.update(CLIENT, product_id, {"category": "Shoes"}, loaded.version))
    updated = products.update_product(repo, CLIENT, product_id, ProductUpdate(name="Blue Boot"), NOW)
    assert updated.name == "Blue Boot" and updated.category == "Shoes"  # the concurrent change is kept
    assert "boot" in updated.search_tokens and "shoe" not in updated.search_tokens
    with pytest.raises(NotFound):
        products.update_product(repo, CLIENT, "prod_missing", ProductUpdate(name="X"), NOW)


def test_an_update_that_always_loses_is_a_conflict() -> None:
    repo = repo_with(5)
    product_id = create(repo, "Hat")

    class Busy(InMemoryProductRepository):
        def update(self, client_id: str, product_id: str, changes: dict[str, object], version: object) -> None:
            from shared.catalog.ports import StaleWrite

            raise StaleWrite()

    busy = Busy()
    busy.products = repo.products
    with pytest.raises(Conflict):
        products.update_product(busy, CLIENT, product_id, ProductUpdate(name="Cap"), NOW)


def test_listing_filters_searches_and_pages() -> None:
    repo = repo_with(50)
    for index in range(25):
        name = f"Shoe {index}" if index % 2 else f"Hat {index}"
        products.create_product(repo, CLIENT, ProductCreate(name=name, category="Wear"), NOW.replace(second=index))
    page = products.list_products(repo, CLIENT, ProductListQuery(q="shoe", limit=5))
    assert [p.name for p in page.items] == ["Shoe 23", "Shoe 21", "Shoe 19", "Shoe 17", "Shoe 15"]
    assert page.next_cursor is not None
    rest = products.list_products(repo, CLIENT, ProductListQuery(q="shoe", limit=10, cursor=page.next_cursor))
    assert [p.name for p in rest.items][-1] == "Shoe 1" and len(rest.items) == 7 and rest.next_cursor is None
    assert products.list_products(repo, CLIENT, ProductListQuery(category="Other")).items == []


def test_take_free_and_the_usage_document() -> None:
    assert take_free(SlotUsage(limit=2, used=1), ["a", "b"]) == (["a"], ["b"])
    assert take_free(SlotUsage(limit=1, used=3), ["a"]) == ([], ["a"])
    assert ProductUsageDoc(used=1, updated_at=NOW).counted is None
