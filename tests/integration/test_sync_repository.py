"""One contract for sync-back's repository port, run on the Firestore adapter (emulator) and on the
in-memory fake: guarded record writes with their history in the same commit, the record queries and
cursors, first-snapshot-wins, guarded per-product counts and their search, history order across ties,
settings, and tenant isolation. The sync unit tests run on the fake, so it must behave as Firestore does."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from shared.adapters.firestore.sync import FirestoreSyncRepository
from shared.catalog.ports import StaleWrite
from shared.catalog.products import search_tokens
from shared.pagination import InvalidCursor, encode_cursor
from shared.sync.models import (
    HistoryDoc,
    Placement,
    ProductSnapshotDoc,
    ProductSyncDoc,
    ProductSyncQuery,
    RecordListQuery,
    RecordStatus,
    SnapshotImage,
    SyncAction,
    SyncRecordDoc,
    SyncSettingsDoc,
    record_id,
    snapshot_id,
)
from shared.sync.repository import SyncRepository
from tests.fakes_sync import InMemorySyncRepository

T0 = datetime(2025, 6, 1, 8, 0, 0, 123456, tzinfo=UTC)
SHOP = "contract.myshopify.com"

# Cursors either implementation must refuse with a 400: not base64 JSON, not an object, no id, an id of
# the wrong type or empty, and ids Firestore cannot name a document by (a path, a lone surrogate, ``.``,
# a reserved ``__…__`` id), each of which would fail the query itself: a 500.
BAD_ID_CURSORS = [
    "not a cursor!",
    encode_cursor({}),
    "WzFd",  # "[1]": JSON, but not an object
    encode_cursor({"n": 3}),
    encode_cursor({"id": 5}),
    encode_cursor({"id": ""}),
    encode_cursor({"id": "a/b"}),
    encode_cursor({"id": "\ud800"}),
    encode_cursor({"id": "."}),
    encode_cursor({"id": "__name__"}),
]


@pytest.fixture(params=["memory", "firestore"])
def repo(request: pytest.FixtureRequest) -> SyncRepository:
    if request.param == "memory":
        return InMemorySyncRepository()
    return FirestoreSyncRepository(request.getfixturevalue("db"))


def record(
    client_id: str,
    asset_id: str,
    *,
    product_id: str = "p1",
    platform: str = "shopify",
    store_product_id: str = "sp1",
    **fields: Any,
) -> SyncRecordDoc:
    values: dict[str, Any] = {
        "id": record_id(asset_id, platform, store_product_id),
        "client_id": client_id,
        "asset_id": asset_id,
        "product_id": product_id,
        "platform": platform,
        "shop": SHOP,
        "store_product_id": store_product_id,
        "created_at": T0,
        "updated_at": T0,
        **fields,
    }
    return SyncRecordDoc(**values)


def entry(
    entry_id: str,
    at: datetime,
    *,
    action: SyncAction = SyncAction.PUSHED,
    product_id: str = "p1",
    asset_id: str | None = "a1",
) -> HistoryDoc:
    return HistoryDoc(
        id=entry_id,
        at=at,
        action=action,
        asset_id=asset_id,
        product_id=product_id,
        store_product_id="sp-" + product_id,
        platform="shopify",
        result="ok",
    )


def summary(product_id: str, name: str, *, state: str = "none", **fields: Any) -> ProductSyncDoc:
    values: dict[str, Any] = {
        "product_id": product_id,
        "name": name,
        "search_tokens": search_tokens(name, None),
        "platform": "shopify",
        "store_product_id": "sp-" + product_id,
        "state": state,
        "updated_at": T0,
        **fields,
    }
    return ProductSyncDoc(**values)


def snapshot_of(store_product_id: str, *media_ids: str) -> ProductSnapshotDoc:
    return ProductSnapshotDoc(
        platform="shopify",
        shop=SHOP,
        store_product_id=store_product_id,
        product_id="p1",
        images=[
            SnapshotImage(media_id=m, url=f"https://cdn.example/{m}.jpg", alt=None if i else "main", position=i)
            for i, m in enumerate(media_ids)
        ],
        taken_at=T0,
    )


def every_history(repo: SyncRepository, client_id: str, **filters: Any) -> list[HistoryDoc]:
    return list(repo.all_history(client_id, product_id=filters.get("product_id"), action=filters.get("action")))


def history_ids(repo: SyncRepository, client_id: str, *, limit: int = 100, **filters: Any) -> list[str]:
    """Every entry's id, page by page, checking no page is longer than asked."""
    ids: list[str] = []
    cursor: str | None = None
    while True:
        page = repo.history(
            client_id,
            product_id=filters.get("product_id"),
            action=filters.get("action"),
            cursor=cursor,
            limit=limit,
        )
        assert len(page.items) <= limit
        ids += [e.id for e in page.items]
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


def all_records(repo: SyncRepository, client_id: str, **filters: Any) -> list[list[str]]:
    """The ids of every page of ``list_records`` with these filters."""
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        page = repo.list_records(client_id, RecordListQuery(cursor=cursor, **filters))
        pages.append([r.id for r in page.items])
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor


def all_products(repo: SyncRepository, client_id: str, **filters: Any) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        page = repo.list_products(client_id, ProductSyncQuery(cursor=cursor, **filters))
        pages.append([p.product_id for p in page.items])
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor


# -- records ----------------------------------------------------------------------------------------


def test_save_record_creates_once_and_guards_updates(repo: SyncRepository, client_id: str) -> None:
    doc = record(client_id, "a1")
    assert repo.load_record(client_id, doc.id) is None

    v1 = repo.save_record(doc, None, [entry("h1", T0)])
    assert v1 is not None
    loaded = repo.load_record(client_id, doc.id)
    assert loaded is not None and loaded.value == doc and loaded.version == v1
    assert [e.id for e in every_history(repo, client_id)] == ["h1"]

    with pytest.raises(StaleWrite):  # created again while it exists
        repo.save_record(doc.model_copy(update={"status": RecordStatus.FAILED}), None, [entry("h-dup", T0)])

    synced = doc.model_copy(update={"status": RecordStatus.SYNCED, "media_id": "m1", "revision": 1})
    v2 = repo.save_record(synced, v1, [entry("h2", T0 + timedelta(seconds=1)), entry("h3", T0 + timedelta(seconds=2))])
    assert v2 != v1
    after = repo.load_record(client_id, doc.id)
    assert after is not None and after.value == synced and after.version == v2

    with pytest.raises(StaleWrite):  # over the version that changed since
        repo.save_record(doc.model_copy(update={"status": RecordStatus.REMOVED}), v1, [entry("h-stale", T0)])
    still = repo.load_record(client_id, doc.id)
    assert still is not None and still.value == synced and still.version == v2
    assert [e.id for e in every_history(repo, client_id)] == ["h3", "h2", "h1"]

    # The version the update returned is the one the next update is guarded by.
    removed = synced.model_copy(update={"status": RecordStatus.REMOVED, "reason": "merchant"})
    v3 = repo.save_record(removed, v2)
    final = repo.load_record(client_id, doc.id)
    assert final is not None and final.value == removed and final.version == v3


def test_update_of_an_absent_record_is_stale_and_writes_nothing(repo: SyncRepository, client_id: str) -> None:
    present = record(client_id, "a1")
    version = repo.save_record(present, None)
    absent = record(client_id, "a2")
    with pytest.raises(StaleWrite):
        repo.save_record(absent, version, [entry("h-absent", T0)])
    assert repo.load_record(client_id, absent.id) is None
    assert every_history(repo, client_id) == []


def test_load_record_round_trips_every_field(repo: SyncRepository, client_id: str) -> None:
    paris = timezone(timedelta(hours=2))
    full = record(
        client_id,
        "a-full",
        status=RecordStatus.PROCESSING,
        reason="still processing",
        error_code="IMAGE_DOWNLOAD_FAILURE",
        media_id="gid://shopify/MediaImage/1",
        url="https://cdn.example/full.jpg",
        position=0,
        revision=3,
        pushing_revision=4,
        pushing_media_id="gid://shopify/MediaImage/2",
        replaces_media_id="gid://shopify/MediaImage/1",
        pushing_by="job1:7",
        push_lease_until=datetime(2025, 6, 1, 10, 30, 0, 654321, tzinfo=paris),  # read back in UTC
        placement=Placement.FEATURED,
        converted="webp->jpeg",
        job_id="job1",
        synced_at=T0 + timedelta(minutes=5),
        synced_by="u1",
        updated_at=T0 + timedelta(minutes=6),
    )
    bare = record(client_id, "a-bare")
    repo.save_record(full, None)
    repo.save_record(bare, None)

    got = repo.load_record(client_id, full.id)
    assert got is not None and got.value == full
    assert got.value.status is RecordStatus.PROCESSING and got.value.placement is Placement.FEATURED
    assert got.value.push_lease_until == datetime(2025, 6, 1, 8, 30, 0, 654321, tzinfo=UTC)
    assert got.value.push_lease_until.utcoffset() == timedelta(0)
    got_bare = repo.load_record(client_id, bare.id)
    assert got_bare is not None and got_bare.value == bare
    assert got_bare.value.status is RecordStatus.PENDING and got_bare.value.media_id is None
    assert got_bare.value.synced_at is None and got_bare.value.revision is None


def test_records_of_product_and_of_assets(repo: SyncRepository, client_id: str, other_client_id: str) -> None:
    on_sp1 = [record(client_id, f"a{n}") for n in range(3)]
    elsewhere = [
        record(client_id, "a0", store_product_id="sp2"),  # the same asset on another product
        record(client_id, "a9", platform="woocommerce", store_product_id="sp1"),  # same id, other platform
    ]
    theirs = record(other_client_id, "a0")  # the same record id, another client
    for doc in [*on_sp1, *elsewhere, theirs]:
        repo.save_record(doc, None)

    found = repo.records_of_product(client_id, "shopify", "sp1")
    assert sorted(r.id for r in found) == sorted(r.id for r in on_sp1)
    assert all(r.client_id == client_id for r in found)
    woo = repo.records_of_product(client_id, "woocommerce", "sp1")
    assert [r.id for r in woo] == [elsewhere[1].id]
    assert repo.records_of_product(client_id, "shopify", "sp-none") == []

    of_a0 = repo.records_of_assets(client_id, ["a0"])
    assert sorted(r.id for r in of_a0) == sorted([on_sp1[0].id, elsewhere[0].id])
    assert all(r.client_id == client_id for r in of_a0)
    assert repo.records_of_assets(client_id, []) == []
    assert repo.records_of_assets(client_id, ["nothing"]) == []


def test_records_of_thirty_assets(repo: SyncRepository, client_id: str) -> None:
    docs = [record(client_id, f"a{n:02d}") for n in range(32)]
    for doc in docs:
        repo.save_record(doc, None)
    asked = [f"a{n:02d}" for n in range(30)]
    found = repo.records_of_assets(client_id, asked)
    assert sorted(r.asset_id for r in found) == asked


def test_list_records_filters_and_pages(repo: SyncRepository, client_id: str, other_client_id: str) -> None:
    statuses = [RecordStatus.SYNCED, RecordStatus.FAILED, RecordStatus.SYNCED, RecordStatus.PENDING]
    docs = [record(client_id, f"a{n}", product_id="p1", status=statuses[n]) for n in range(4)]
    docs += [record(client_id, f"a{n}", product_id="p2", store_product_id="sp2") for n in range(2, 5)]
    for doc in docs:
        repo.save_record(doc, None)
    repo.save_record(record(other_client_id, "a0"), None)
    ids = sorted(d.id for d in docs)
    assert len(ids) == 7

    pages = all_records(repo, client_id, limit=3)
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for p in pages for i in p] == ids  # every record once, by id
    assert all_records(repo, client_id, limit=7) == [ids]
    assert all_records(repo, client_id) == [ids]

    def ids_of(**filters: Any) -> list[str]:
        return [i for p in all_records(repo, client_id, limit=2, **filters) for i in p]

    assert ids_of(product_id="p1") == sorted(d.id for d in docs[:4])
    assert ids_of(product_id="p2") == sorted(d.id for d in docs[4:])
    assert ids_of(asset_id="a2") == sorted([docs[2].id, docs[4].id])
    assert ids_of(status=RecordStatus.SYNCED) == sorted([docs[0].id, docs[2].id])
    assert ids_of(status=RecordStatus.PENDING) == sorted([docs[3].id, *(d.id for d in docs[4:])])
    assert ids_of(product_id="p1", status=RecordStatus.FAILED) == [docs[1].id]
    assert ids_of(product_id="p3") == []
    assert ids_of(status=RecordStatus.ORPHANED) == []


@pytest.mark.parametrize("cursor", BAD_ID_CURSORS)
def test_list_records_refuses_a_bad_cursor(repo: SyncRepository, client_id: str, cursor: str) -> None:
    repo.save_record(record(client_id, "a1"), None)
    with pytest.raises(InvalidCursor) as raised:
        repo.list_records(client_id, RecordListQuery(cursor=cursor))
    assert raised.value.status == 400


# -- snapshots --------------------------------------------------------------------------------------


def test_the_first_snapshot_stays(repo: SyncRepository, client_id: str) -> None:
    sid = snapshot_id("shopify", "sp1")
    assert repo.snapshot(client_id, sid) is None
    first = snapshot_of("sp1", "m1", "m2")
    assert repo.keep_snapshot(client_id, first) == first
    later = snapshot_of("sp1", "m1", "m2", "ours").model_copy(update={"taken_at": T0 + timedelta(hours=1)})
    assert repo.keep_snapshot(client_id, later) == first
    assert repo.snapshot(client_id, sid) == first
    assert repo.snapshot(client_id, snapshot_id("shopify", "sp2")) is None
    other = snapshot_of("sp2")
    assert repo.keep_snapshot(client_id, other) == other
    assert repo.snapshot(client_id, snapshot_id("shopify", "sp2")) == other


# -- per-product counts -----------------------------------------------------------------------------


def test_product_summary_is_created_once_and_guarded(repo: SyncRepository, client_id: str) -> None:
    assert repo.product_summary(client_id, "p1") is None
    first = summary("p1", "Blue shirt", pending=2, state="pending")
    repo.save_product_summary(client_id, first, None)
    with pytest.raises(StaleWrite):
        repo.save_product_summary(client_id, summary("p1", "Blue shirt", failed=1, state="failed"), None)
    v1 = repo.product_summary(client_id, "p1")
    assert v1 is not None and v1.value == first

    synced = first.model_copy(update={"pending": 0, "synced": 2, "state": "synced", "last_synced_at": T0})
    repo.save_product_summary(client_id, synced, v1.version)
    v2 = repo.product_summary(client_id, "p1")
    assert v2 is not None and v2.value == synced and v2.version != v1.version

    with pytest.raises(StaleWrite):  # over the version that changed since
        repo.save_product_summary(client_id, first.model_copy(update={"failed": 9}), v1.version)
    again = repo.product_summary(client_id, "p1")
    assert again is not None and again.value == synced and again.version == v2.version

    with pytest.raises(StaleWrite):  # an update of one that does not exist
        repo.save_product_summary(client_id, summary("p2", "Red cap"), v2.version)
    assert repo.product_summary(client_id, "p2") is None


def test_list_products_filters_searches_and_pages(repo: SyncRepository, client_id: str) -> None:
    names = {
        "p1": ("Blue shirt", "synced"),
        "p2": ("Red shirt", "failed"),
        "p3": ("Blue cap", "pending"),
        "p4": ("Green trousers", "synced"),
        "p5": ("Shirt-dress, blue", "none"),
        "p6": ("Wool scarf", "synced"),
        "p7": ("Linen shirt", "pending"),
    }
    for product_id, (name, state) in names.items():
        repo.save_product_summary(client_id, summary(product_id, name, state=state), None)

    everything = sorted(names)
    pages = all_products(repo, client_id, limit=3)
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for p in pages for i in p] == everything

    def ids_of(**filters: Any) -> list[str]:
        return [i for p in all_products(repo, client_id, limit=2, **filters) for i in p]

    assert ids_of(state="synced") == ["p1", "p4", "p6"]
    assert ids_of(state="failed") == ["p2"]
    assert ids_of(q="shirt") == ["p1", "p2", "p5", "p7"]
    assert ids_of(q="SHI") == ["p1", "p2", "p5", "p7"]  # a prefix, any case
    assert ids_of(q="blue shirt") == ["p1", "p2", "p5", "p7"]  # the longest word
    assert ids_of(q="  trousers, ") == ["p4"]  # punctuation is not part of a word
    assert ids_of(q="dress") == ["p5"]
    assert ids_of(q="shirt", state="pending") == ["p7"]
    assert ids_of(q="shirt", state="none") == ["p5"]
    assert ids_of(q="velvet") == []
    assert ids_of(q="!!!") == []  # no word at all
    got = repo.list_products(client_id, ProductSyncQuery(q="wool"))
    assert got.items == [summary("p6", "Wool scarf", state="synced")]


@pytest.mark.parametrize("cursor", BAD_ID_CURSORS)
def test_list_products_refuses_a_bad_cursor(repo: SyncRepository, client_id: str, cursor: str) -> None:
    repo.save_product_summary(client_id, summary("p1", "Blue shirt"), None)
    with pytest.raises(InvalidCursor):
        repo.list_products(client_id, ProductSyncQuery(cursor=cursor))


# -- history ----------------------------------------------------------------------------------------


def test_history_newest_first_across_ties(repo: SyncRepository, client_id: str) -> None:
    t1, t2, t3 = T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)
    entries = [
        entry("e1", t1, product_id="p1"),
        entry("e2", t2, product_id="p1", action=SyncAction.FAILED),
        entry("e3", t2, product_id="p2"),
        entry("e4", t2, product_id="p1"),
        entry("e5", t2, product_id="p2", action=SyncAction.FAILED),
        entry("e6", t3, product_id="p1", action=SyncAction.REMOVED, asset_id=None),
        entry("e7", t1, product_id="p2", action=SyncAction.RESTORED, asset_id=None),
    ]
    repo.add_history(client_id, entries[:4])
    repo.save_record(record(client_id, "a1"), None, entries[4:])

    newest_first = ["e6", "e5", "e4", "e3", "e2", "e7", "e1"]  # by at, then id, descending
    for limit in (1, 2, 3, 7, 100):
        assert history_ids(repo, client_id, limit=limit) == newest_first
    assert [e.id for e in every_history(repo, client_id)] == newest_first
    first = repo.history(client_id, product_id=None, action=None, cursor=None, limit=3)
    assert first.items == sorted(entries, key=lambda e: (e.at, e.id), reverse=True)[:3]
    assert first.next_cursor is not None
    last = repo.history(client_id, product_id=None, action=None, cursor=None, limit=7)
    assert last.next_cursor is None

    assert history_ids(repo, client_id, limit=2, product_id="p1") == ["e6", "e4", "e2", "e1"]
    assert history_ids(repo, client_id, limit=1, product_id="p2") == ["e5", "e3", "e7"]
    assert history_ids(repo, client_id, limit=1, action=SyncAction.FAILED) == ["e5", "e2"]
    assert history_ids(repo, client_id, limit=2, product_id="p2", action=SyncAction.FAILED) == ["e5"]
    assert history_ids(repo, client_id, product_id="p3") == []
    assert [e.id for e in every_history(repo, client_id, product_id="p1")] == ["e6", "e4", "e2", "e1"]
    assert [e.id for e in every_history(repo, client_id, action=SyncAction.RESTORED)] == ["e7"]


def test_history_entries_written_again_replace_the_first(repo: SyncRepository, client_id: str) -> None:
    repo.add_history(client_id, [entry("e1", T0)])
    repo.add_history(client_id, [entry("e1", T0, action=SyncAction.FAILED)])  # a redelivered write
    assert [(e.id, e.action) for e in every_history(repo, client_id)] == [("e1", SyncAction.FAILED)]


@pytest.mark.parametrize(
    "cursor",
    [
        "not a cursor!",
        "WzFd",
        encode_cursor({"n": 3}),
        encode_cursor({"at": T0.isoformat()}),
        encode_cursor({"at": "yesterday", "id": "e1"}),
        encode_cursor({"at": 5, "id": "e1"}),
        encode_cursor({"at": T0.isoformat(), "id": 5}),
        encode_cursor({"at": T0.isoformat(), "id": ""}),
        encode_cursor({"at": T0.isoformat(), "id": "a/b"}),
        encode_cursor({"at": T0.isoformat(), "id": "\ud800"}),
        encode_cursor({"at": T0.isoformat(), "id": ".."}),
        encode_cursor({"at": T0.isoformat(), "id": "__x__"}),
    ],
)
def test_history_refuses_a_bad_cursor(repo: SyncRepository, client_id: str, cursor: str) -> None:
    repo.add_history(client_id, [entry("e1", T0)])
    with pytest.raises(InvalidCursor):
        repo.history(client_id, product_id=None, action=None, cursor=cursor, limit=5)


# -- settings ---------------------------------------------------------------------------------------


def test_settings_default_and_round_trip(repo: SyncRepository, client_id: str, other_client_id: str) -> None:
    assert repo.settings(client_id) == SyncSettingsDoc()
    saved = SyncSettingsDoc(auto_sync=True, placement=Placement.FEATURED, updated_at=T0, updated_by="u1")
    repo.save_settings(client_id, saved)
    got = repo.settings(client_id)
    assert got == saved and got.placement is Placement.FEATURED
    assert repo.settings(other_client_id) == SyncSettingsDoc()
    repo.save_settings(client_id, SyncSettingsDoc(auto_sync=False))
    assert repo.settings(client_id) == SyncSettingsDoc(auto_sync=False)


# -- tenants ----------------------------------------------------------------------------------------


def test_nothing_of_one_client_is_visible_to_another(repo: SyncRepository) -> None:
    a, b = (f"c{uuid.uuid4().hex[:16]}" for _ in range(2))
    theirs = record(a, "a1", status=RecordStatus.FAILED)
    repo.save_record(theirs, None, [entry("e1", T0)])
    repo.keep_snapshot(a, snapshot_of("sp1", "m1"))
    repo.save_product_summary(a, summary("p1", "Blue shirt", state="failed"), None)
    repo.add_history(a, [entry("e2", T0)])
    repo.save_settings(a, SyncSettingsDoc(auto_sync=True))

    assert repo.load_record(b, theirs.id) is None
    assert repo.records_of_product(b, "shopify", "sp1") == []
    assert repo.records_of_assets(b, ["a1"]) == []
    assert repo.list_records(b, RecordListQuery()).items == []
    assert repo.list_records(b, RecordListQuery(asset_id="a1", status=RecordStatus.FAILED)).items == []
    assert repo.snapshot(b, snapshot_id("shopify", "sp1")) is None
    assert repo.product_summary(b, "p1") is None
    assert repo.list_products(b, ProductSyncQuery()).items == []
    assert repo.list_products(b, ProductSyncQuery(q="shirt", state="failed")).items == []
    assert repo.history(b, product_id=None, action=None, cursor=None, limit=10).items == []
    assert every_history(repo, b, product_id="p1") == []
    assert repo.settings(b) == SyncSettingsDoc()

    # B's own documents of the same ids are B's: created, not stale, and A's stay as they were.
    mine = record(b, "a1")
    repo.save_record(mine, None)
    own_snapshot = snapshot_of("sp1", "m-b")
    assert repo.keep_snapshot(b, own_snapshot) == own_snapshot
    repo.save_product_summary(b, summary("p1", "Other"), None)
    a_record = repo.load_record(a, theirs.id)
    assert a_record is not None and a_record.value == theirs
    assert repo.snapshot(a, snapshot_id("shopify", "sp1")) == snapshot_of("sp1", "m1")
    a_summary = repo.product_summary(a, "p1")
    assert a_summary is not None and a_summary.value.name == "Blue shirt"
    assert [e.id for e in every_history(repo, a)] == ["e2", "e1"]
