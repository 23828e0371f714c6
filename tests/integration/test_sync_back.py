"""Sync-back end to end: the functions served over real HTTP, the real httpx adapters talking to the
Shopify and WooCommerce stubs, Firestore on the emulator, tasks run by the dispatcher, the pushed files
in the object store (moto) behind the presigned URLs the stubs fetch.

Each test connects a store of its own, imports its few products (so they are linked), uploads small
images to them through the catalog and approves them, then syncs through the sync API and checks what
the store holds afterwards (its product media, their order, files and alt text) as well as our records,
history and events.
"""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from dev.stubs.shopify import ShopifyStub
from dev.stubs.shopify import running as shopify_running
from dev.stubs.woocommerce import WooStub
from tests import images
from tests.catalog_helpers import make_product, problem, upload_image
from tests.platforms import install
from tests.store_stack import store_settings

GRAPHQL = "/admin/api/2026-10/graphql.json"
COLORS = [(200, 40, 40), (40, 160, 60), (40, 60, 200), (220, 180, 30), (120, 40, 160)]


# -- the world ----------------------------------------------------------------------------------------


class RecordingShop(ShopifyStub):
    """The Shopify stub, also noting which operations it answered THROTTLED (its answers are not recorded)."""

    throttled_operations: list[str]

    def __post_init__(self) -> None:
        super().__post_init__()
        self.throttled_operations = []

    def graphql(self, body: dict[str, Any], scope: str = "read_products") -> dict[str, Any]:
        answer = super().graphql(body, scope)
        codes = {(e.get("extensions") or {}).get("code") for e in answer.get("errors") or [] if isinstance(e, dict)}
        if "THROTTLED" in codes:
            self.throttled_operations.append(_operation(str(body.get("query") or "")))
        return answer


def _operation(query: str) -> str:
    found = re.search(r"\b(productUpdate|productReorderMedia|fileUpdate|nodes|product)\s*\(", query)
    return found.group(1) if found else "?"


@pytest.fixture
def shopify() -> Iterator[RecordingShop]:
    # A shop of its own per test: a shop one client holds live cannot be connected by another.
    shop = f"sync-{uuid.uuid4().hex[:10]}.myshopify.com"
    with shopify_running(RecordingShop(shop=shop, product_count=3, image_size=64)) as stub:
        yield stub


@pytest.fixture
def sync(stack: Any) -> Any:
    return stack.client("sync_api")


# -- steps ------------------------------------------------------------------------------------------


def _connect_shopify(stack: Any, headers: dict[str, str], shopify: ShopifyStub) -> None:
    """The merchant's journey: start → Shopify's authorize page (approves at once) → our callback URL."""
    answer = stack.client("store_oauth").post("/stores/shopify/connect", json={"shop": shopify.shop}, headers=headers)
    assert answer.status_code == 200, answer.get_json()
    redirect = httpx.get(answer.get_json()["authorize_url"], follow_redirects=False)
    assert redirect.status_code == 302
    landed = httpx.get(str(redirect.headers["location"]), follow_redirects=False, timeout=30)
    assert landed.status_code == 302, landed.text


def _connect_woo(stack: Any, headers: dict[str, str], woo: WooStub) -> None:
    answer = stack.client("store_oauth").post(
        "/stores/woocommerce/connect", json={"store_url": woo.url}, headers=headers
    )
    assert answer.status_code == 200, answer.get_json()
    approved = httpx.get(answer.get_json()["authorize_url"], follow_redirects=False, timeout=60)
    assert approved.status_code == 302 and woo.callbacks[-1][2] == 200


def _import(stack: Any, headers: dict[str, str]) -> list[dict[str, Any]]:
    """A store import (draft, then started) run to completion; our products, each linked to its store product."""
    created = stack.client("store_oauth").post("/stores/imports", json={}, headers=headers)
    assert created.status_code == 202, created.get_json()
    import_id = created.get_json()["id"]
    stack.run_tasks()
    started = stack.client("catalog_api").post(f"/imports/{import_id}/start", headers=headers)
    assert started.status_code == 202, started.get_json()
    stack.run_tasks()
    done = stack.client("catalog_api").get(f"/imports/{import_id}", headers=headers).get_json()
    assert done["status"] == "completed", done
    page = stack.client("catalog_api").get("/products", query_string={"limit": 100}, headers=headers).get_json()
    products: list[dict[str, Any]] = page["items"]
    assert products and all(p["store"]["status"] == "linked" for p in products)
    return products


def _connected_shop(stack: Any, headers: dict[str, str], shopify: ShopifyStub) -> dict[str, dict[str, Any]]:
    """Connect the shop and import its products: ours, by store product id."""
    _connect_shopify(stack, headers, shopify)
    return {p["store"]["product_id"]: p for p in _import(stack, headers)}


def _approved_image(stack: Any, headers: dict[str, str], client_id: str, product_id: str, n: int = 0) -> str:
    """A small PNG uploaded to the product through the catalog and approved; the asset's id."""
    catalog = stack.client("catalog_api")
    data = images.encode(Image.new("RGB", (64, 48), COLORS[n % len(COLORS)]), "PNG")
    asset_id = upload_image(stack, catalog, headers, client_id, product_id, data, filename=f"shot-{n}.png")
    approved = catalog.patch(f"/assets/{asset_id}", json={"approved": True}, headers=headers)
    assert approved.status_code == 200, approved.get_json()
    return asset_id


def _start(sync: Any, headers: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    started = sync.post("/sync", json=body, headers=headers)
    assert started.status_code == 202, started.get_json()
    job: dict[str, Any] = started.get_json()
    assert started.headers["Location"].endswith(f"/sync/jobs/{job['id']}")
    return job


def _job(sync: Any, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    answer = sync.get(f"/sync/jobs/{job_id}", headers=headers)
    assert answer.status_code == 200, answer.get_json()
    body: dict[str, Any] = answer.get_json()
    return body


def _items(sync: Any, headers: dict[str, str], job_id: str) -> list[dict[str, Any]]:
    answer = sync.get(f"/sync/jobs/{job_id}/items", query_string={"limit": 100}, headers=headers)
    assert answer.status_code == 200, answer.get_json()
    items: list[dict[str, Any]] = answer.get_json()["items"]
    return items


def _record(sync: Any, headers: dict[str, str], asset_id: str) -> dict[str, Any]:
    answer = sync.get("/sync/records", query_string={"asset_id": asset_id}, headers=headers)
    assert answer.status_code == 200, answer.get_json()
    [record] = answer.get_json()["items"]
    assert isinstance(record, dict)
    return record


def _history(sync: Any, headers: dict[str, str], **query: str) -> list[dict[str, Any]]:
    answer = sync.get("/sync/history", query_string={"limit": 100, **query}, headers=headers)
    assert answer.status_code == 200, answer.get_json()
    entries: list[dict[str, Any]] = answer.get_json()["items"]
    return entries


def _product_row(sync: Any, headers: dict[str, str], product_id: str) -> dict[str, Any]:
    """The product's row on the store-management page (``GET /sync/products``)."""
    answer = sync.get("/sync/products", query_string={"limit": 100}, headers=headers)
    assert answer.status_code == 200, answer.get_json()
    [row] = [r for r in answer.get_json()["items"] if r["product_id"] == product_id]
    assert isinstance(row, dict)
    return row


def _media(shopify: ShopifyStub, store_pid: str) -> list[tuple[str, str]]:
    """The store product's media as the stub holds them, in order: (id, status)."""
    return [(str(m.id), m.status) for m in shopify.product_media(store_pid)]


def _pushes(shopify: ShopifyStub) -> int:
    """How many ``productUpdate`` mutations (image pushes) the shop received."""
    return sum(b"productUpdate" in r.body for r in shopify.seen("POST", GRAPHQL))


def _outbox(stack: Any, client_id: str, kind: str) -> list[dict[str, Any]]:
    from google.cloud.firestore import FieldFilter

    query = stack.platform.db.collection("outbox").where(filter=FieldFilter("client_id", "==", client_id))
    return [e for e in (s.to_dict() for s in query.stream()) if e["type"] == kind]


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


# -- Shopify ----------------------------------------------------------------------------------------


def test_shopify_push_polls_to_ready_and_is_recorded_counted_and_exported(
    stack: Any, shop_platform: Any, shopify: RecordingShop, sync: Any, headers: dict[str, str], client_id: str
) -> None:
    products = _connected_shop(stack, headers, shopify)
    store_pid = str(shopify.product(0).id)
    product = products[store_pid]
    merchant = _media(shopify, store_pid)
    assert len(merchant) == 2 and all(status == "READY" for _, status in merchant)
    assets = [_approved_image(stack, headers, client_id, product["id"], n) for n in range(2)]

    job = _start(sync, headers, {"asset_ids": assets})
    assert job["status"] == "queued" and job["asset_count"] == 2 and job["placement"] == "append"
    stack.run_tasks()
    done = _job(sync, headers, job["id"])
    assert done["status"] == "completed" and done["pushed"] == 2, done
    assert done["counts"]["succeeded"] == 2 and done["finished_at"]
    items = _items(sync, headers, job["id"])
    assert sorted((i["asset_id"], i["status"], i["action"], i["revision"]) for i in items) == sorted(
        (a, "succeeded", "pushed", 1) for a in assets
    )

    # The store: the merchant's images first, untouched, then ours, READY, each named for the product.
    media = shopify.product_media(store_pid)
    assert [(str(m.id), m.status) for m in media[:2]] == merchant
    ours = media[2:]
    assert len(ours) == 2 and all(m.status == "READY" for m in ours)
    title = shopify.product(store_pid).title
    for image in ours:
        assert re.fullmatch(rf"/cdn/shop/files/{_slug(title)}-[0-9a-f]{{10}}\.png", image.path), image.path
        assert image.alt == f"{title} product photo"
        assert (image.width, image.height) == (64, 48)
    # Each record names its media, URL and position (after the merchant's two images).
    records = [_record(sync, headers, a) for a in assets]
    assert {r["media_id"] for r in records} == {str(m.id) for m in ours}
    assert sorted(r["position"] for r in records) == [2, 3]
    for record in records:
        assert record["status"] == "synced" and record["revision"] == 1 and record["synced_at"]
        assert record["store_product_id"] == store_pid and record["platform"] == "shopify"
        assert record["url"].startswith(shopify.url + "/cdn/shop/files/")
        image = next(m for m in ours if str(m.id) == record["media_id"])
        assert httpx.get(record["url"]).content == httpx.get(shopify.url + image.path).content
    assert _pushes(shopify) == 2

    # The store-management page counts them; the history says "pushed"; the CSV has the rows.
    row = _product_row(sync, headers, product["id"])
    assert (row["approved"], row["synced"], row["pending"], row["failed"], row["state"]) == (2, 2, 0, 0, "synced")
    failing = sync.get("/sync/products", query_string={"state": "failed"}, headers=headers).get_json()
    assert failing["items"] == []
    history = _history(sync, headers)
    assert sorted((h["action"], h["asset_id"], h["result"]) for h in history) == sorted(
        ("pushed", a, "ok") for a in assets
    )
    exported = sync.get("/sync/history.csv", headers=headers)
    assert exported.status_code == 200 and exported.content_type.startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.get_data(as_text=True))))
    assert sorted((r["action"], r["asset_id"], r["media_id"], r["job_id"]) for r in rows) == sorted(
        ("pushed", r["asset_id"], r["media_id"], job["id"]) for r in records
    )
    [completed] = _outbox(stack, client_id, "sync.completed")
    assert completed["payload"]["pushed"] == 2 and completed["payload"]["failed"] == 0

    # Syncing the same images again pushes nothing: they are in the store at this revision.
    again = _start(sync, headers, {"asset_ids": assets})
    stack.run_tasks()
    assert _job(sync, headers, again["id"])["already_synced"] == 2
    assert _pushes(shopify) == 2 and len(shopify.product_media(store_pid)) == 4
    nothing = sync.post("/sync", json={"unsynced": True}, headers=headers)
    problem(nothing, 422, "nothing_to_sync")


def test_shopify_failed_media_fails_its_item_with_the_stores_code_and_the_others_push(
    stack: Any, shop_platform: Any, shopify: RecordingShop, sync: Any, headers: dict[str, str], client_id: str
) -> None:
    products = _connected_shop(stack, headers, shopify)
    store_pid = str(shopify.product(1).id)
    product = products[store_pid]
    before = _media(shopify, store_pid)
    assets = [_approved_image(stack, headers, client_id, product["id"], n) for n in range(2)]

    shopify.fail_next_media("IMAGE_PROCESSING_FAILURE")  # the first image pushed ends FAILED
    job = _start(sync, headers, {"asset_ids": assets})
    stack.run_tasks()
    done = _job(sync, headers, job["id"])
    assert done["status"] == "completed" and done["pushed"] == 1, done
    assert (done["counts"]["succeeded"], done["counts"]["failed"]) == (1, 1)
    items = {i["asset_id"]: i for i in _items(sync, headers, job["id"])}
    [failed] = [a for a in assets if items[a]["status"] == "failed"]
    [pushed] = [a for a in assets if items[a]["status"] == "succeeded"]
    assert items[failed]["failure"]["code"] == "store_media_failed", items[failed]
    record = _record(sync, headers, failed)
    assert record["status"] == "failed" and record["error_code"] == "IMAGE_PROCESSING_FAILURE"
    assert record["media_id"] is None and "IMAGE_PROCESSING_FAILURE" in record["reason"]
    assert _record(sync, headers, pushed)["status"] == "synced"
    # Pushed once each, never again for the failed one (a permanent failure is not retried).
    assert _pushes(shopify) == 2
    media = _media(shopify, store_pid)
    assert media[: len(before)] == before
    # The failed medium stays on the product (Shopify will not update a FAILED file), marked FAILED.
    assert sorted(status for _, status in media[len(before) :]) == ["FAILED", "READY"]

    row = _product_row(sync, headers, product["id"])
    assert (row["synced"], row["failed"], row["state"]) == (1, 1, "failed")
    failures = _history(sync, headers, action="failed")
    assert [(h["asset_id"], h["revision"]) for h in failures] == [(failed, 1)]
    [completed] = _outbox(stack, client_id, "sync.completed")
    assert (completed["payload"]["pushed"], completed["payload"]["failed"]) == (1, 1)
    inbox = stack.client("notifications_api").get("/notifications", headers=headers).get_json()["items"]
    assert any(n["type"] == "sync_completed" and "1 failed" in n["body"] for n in inbox), inbox

    # A job where nothing could be pushed is sync.failed (and the merchant is told).
    third = _approved_image(stack, headers, client_id, product["id"], 2)
    shopify.fail_next_media("IMAGE_DOWNLOAD_FAILURE")
    lost = _start(sync, headers, {"asset_ids": [third]})
    stack.run_tasks()
    assert _job(sync, headers, lost["id"])["counts"]["failed"] == 1
    [failed_event] = _outbox(stack, client_id, "sync.failed")
    assert failed_event["payload"]["sync_id"] == lost["id"] and failed_event["payload"]["failed"] == 1
    inbox = stack.client("notifications_api").get("/notifications", headers=headers).get_json()["items"]
    assert any(n["type"] == "sync_failed" for n in inbox), inbox


def test_shopify_featured_placement_puts_our_image_first(
    stack: Any, shop_platform: Any, shopify: RecordingShop, sync: Any, headers: dict[str, str], client_id: str
) -> None:
    products = _connected_shop(stack, headers, shopify)
    store_pid = str(shopify.product(1).id)
    before = _media(shopify, store_pid)
    asset = _approved_image(stack, headers, client_id, products[store_pid]["id"])
    job = _start(sync, headers, {"asset_ids": [asset], "placement": "featured"})
    assert job["placement"] == "featured"
    stack.run_tasks()
    assert _job(sync, headers, job["id"])["status"] == "completed"
    record = _record(sync, headers, asset)
    assert record["position"] == 0
    assert _media(shopify, store_pid) == [(record["media_id"], "READY"), *before]
    reorders = [r for r in shopify.seen("POST", GRAPHQL) if b"productReorderMedia" in r.body]
    assert len(reorders) == 1


def test_shopify_a_new_revision_replaces_our_image_in_place(
    stack: Any, shop_platform: Any, shopify: RecordingShop, sync: Any, headers: dict[str, str], client_id: str
) -> None:
    products = _connected_shop(stack, headers, shopify)
    store_pid = str(shopify.product(0).id)
    product = products[store_pid]
    first, second = (_approved_image(stack, headers, client_id, product["id"], n) for n in range(2))
    _start(sync, headers, {"asset_ids": [first, second]})
    stack.run_tasks()
    old = _record(sync, headers, first)
    order = _media(shopify, store_pid)
    position = [m for m, _ in order].index(old["media_id"])
    assert position == old["position"] and len(order) == 4

    # A free edit (resize) makes revision 2 of the first image; syncing it again replaces ours in place.
    edited = stack.client("edit_api").post(
        "/edits", json={"asset_ids": [first], "operations": [{"op": "resize", "width": 32}]}, headers=headers
    )
    assert edited.status_code == 200, edited.get_json()
    assert edited.get_json()["revisions"][0]["revision"] == 2
    job = _start(sync, headers, {"asset_ids": [first, second]})
    stack.run_tasks()
    done = _job(sync, headers, job["id"])
    assert (done["replaced"], done["already_synced"], done["pushed"]) == (1, 1, 0), done
    new = _record(sync, headers, first)
    assert new["revision"] == 2 and new["media_id"] != old["media_id"] and new["position"] == old["position"]
    after = _media(shopify, store_pid)
    assert len(after) == 4 and old["media_id"] not in [m for m, _ in after]
    assert after[position] == (new["media_id"], "READY")
    assert [m for m in after if m[0] != new["media_id"]] == [m for m in order if m[0] != old["media_id"]]
    replaced = shopify.file(new["media_id"])
    assert replaced is not None and (replaced.width, replaced.height) == (32, 24)
    assert shopify.file(old["media_id"]) is not None  # taken off the product, kept in the shop's Files
    assert _pushes(shopify) == 3
    assert [h["revision"] for h in _history(sync, headers, action="replaced")] == [2]


def test_shopify_remove_takes_off_only_ours_and_restore_puts_the_original_order_back(
    stack: Any, shop_platform: Any, shopify: RecordingShop, sync: Any, headers: dict[str, str], client_id: str
) -> None:
    products = _connected_shop(stack, headers, shopify)
    store_pid = str(shopify.product(0).id)
    product = products[store_pid]
    original = _media(shopify, store_pid)  # the merchant's two images
    featured, appended = (_approved_image(stack, headers, client_id, product["id"], n) for n in range(2))
    _start(sync, headers, {"asset_ids": [featured], "placement": "featured"})
    _start(sync, headers, {"asset_ids": [appended]})
    stack.run_tasks()
    ours = {a: _record(sync, headers, a)["media_id"] for a in (featured, appended)}
    assert [m for m, _ in _media(shopify, store_pid)] == [ours[featured], *(m for m, _ in original), ours[appended]]

    removed = sync.post("/sync/remove", json={"asset_ids": [featured]}, headers=headers)
    assert removed.status_code == 200, removed.get_json()
    assert [(r["asset_id"], r["status"]) for r in removed.get_json()["removed"]] == [(featured, "removed")]
    assert _media(shopify, store_pid) == [*original, (ours[appended], "READY")]
    assert shopify.file(ours[featured]) is not None  # off the product, kept in Files
    assert all(shopify.file(m) is not None for m, _ in original)
    assert _record(sync, headers, featured)["status"] == "removed"
    # Removing again removes nothing.
    again = sync.post("/sync/remove", json={"asset_ids": [featured]}, headers=headers)
    assert again.status_code == 200 and again.get_json()["removed"] == []

    # The merchant's images got shuffled meanwhile; restore takes ours off and puts their order back.
    target = shopify.product(store_pid)
    with shopify.lock:
        target.media.reverse()
    restored = sync.post(f"/products/{product['id']}/sync/restore", headers=headers)
    assert restored.status_code == 200, restored.get_json()
    body = restored.get_json()
    assert body["removed"] == 1 and body["order"] == [m for m, _ in original]
    assert _media(shopify, store_pid) == original
    assert _record(sync, headers, appended)["status"] == "removed"
    actions = [h["action"] for h in _history(sync, headers, product_id=product["id"])]
    assert sorted(actions) == ["pushed", "pushed", "removed", "removed", "restored"]
    row = _product_row(sync, headers, product["id"])
    assert (row["synced"], row["removed"], row["state"]) == (0, 2, "none")
    # The product in our catalog no longer counts those media as ours.
    link = stack.client("catalog_api").get(f"/products/{product['id']}", headers=headers).get_json()["store"]
    assert not set(ours.values()) & set(link.get("pushed_media_ids") or [])


def test_shopify_a_503_on_a_read_and_a_throttled_bucket_are_retried_and_push_once(
    stack: Any, shop_platform: Any, shopify: RecordingShop, sync: Any, headers: dict[str, str], client_id: str
) -> None:
    products = _connected_shop(stack, headers, shopify)
    store_pid = str(shopify.product(2).id)
    first, second = (_approved_image(stack, headers, client_id, products[store_pid]["id"], n) for n in range(2))

    # Three 503s: the adapter's own quick retries of the read are used up, the item goes back to the queue.
    shopify.fail("503", times=3, path=GRAPHQL)
    job = _start(sync, headers, {"asset_ids": [first]})
    stack.run_tasks()
    assert _job(sync, headers, job["id"])["status"] == "completed"
    [item_task] = [t for t in stack.dispatcher.history if t.url.endswith("/sync_tasks/tasks/item")]
    assert item_task.outcomes[0] == 503 and item_task.outcomes[-1] == 200, item_task.outcomes
    refused = [r for r in shopify.seen("POST", GRAPHQL) if r.status == 503]
    assert len(refused) == 3 and not any(b"productUpdate" in r.body for r in refused)  # reads, not the push
    assert _pushes(shopify) == 1 and _record(sync, headers, first)["status"] == "synced"

    # Another caller of the app spent the bucket: Shopify answers THROTTLED, the adapter waits for the
    # restore ((requested - available) / restore rate, about a second here) and goes on.
    # Restoring slowly (5 points/s, which the adapter does not know yet), the push (10 points) finds the
    # bucket empty.
    shopify.restore_rate = 5.0
    shopify.drain(shopify.currently_available)
    job = _start(sync, headers, {"asset_ids": [second]})
    stack.run_tasks()
    assert _job(sync, headers, job["id"])["status"] == "completed"
    # The snapshot is taken already: the push itself is answered THROTTLED (Shopify did not run it), waited out.
    assert "productUpdate" in shopify.throttled_operations, shopify.throttled_operations
    run = _pushes(shopify) - shopify.throttled_operations.count("productUpdate")  # THROTTLED ones did not run
    assert run == 2 and _record(sync, headers, second)["status"] == "synced"
    ours = [m for m, _ in _media(shopify, store_pid)][-2:]
    assert ours == [_record(sync, headers, a)["media_id"] for a in (first, second)]


def _deliver_until(stack: Any, done: Any, limit: int = 50) -> None:
    """Deliver due tasks one at a time until ``done()`` holds. Tasks scheduled for later (a job's settle
    task, due once its 5 s window has closed) are left queued: run early, one would have seen only part
    of the window's completions, which a test's fast-forward can do and Cloud Tasks cannot."""
    for _ in range(limit):
        if done():
            return
        assert stack.dispatcher.run_until_idle(max_deliveries=1) == 1, "the queue ran dry"
    raise AssertionError("never reached")


def test_shopify_a_revoked_token_mid_job_pauses_it_until_the_store_is_reconnected(
    stack: Any, shop_platform: Any, shopify: RecordingShop, sync: Any, headers: dict[str, str], client_id: str
) -> None:
    products = _connected_shop(stack, headers, shopify)
    assets = [
        _approved_image(stack, headers, client_id, products[str(shopify.product(n).id)]["id"], n) for n in range(3)
    ]
    job = _start(sync, headers, {"asset_ids": assets})
    _deliver_until(stack, lambda: _job(sync, headers, job["id"])["counts"]["succeeded"] == 1)
    shopify.revoke()  # the merchant revoked the app's access mid-job
    stack.run_tasks(fast_forward=False)
    paused = _job(sync, headers, job["id"])
    assert paused["status"] == "paused" and paused["paused_reason"] == "store_needs_reauthorization", paused
    assert paused["counts"]["succeeded"] == 1 and paused["counts"]["failed"] == 0
    assert _pushes(shopify) == 1
    status = stack.client("store_oauth").get("/stores/connection", headers=headers).get_json()
    assert status["health"] == "needs_reauth"
    inbox = stack.client("notifications_api").get("/notifications", headers=headers).get_json()["items"]
    assert any(n["type"] == "store_needs_reauthorization" for n in inbox), inbox
    problem(sync.post(f"/sync/jobs/{job['id']}/resume", headers=headers), 409, "store_needs_reauthorization")

    # Reconnected: the resume runs the images left, each pushed once.
    _connect_shopify(stack, headers, shopify)
    resumed = sync.post(f"/sync/jobs/{job['id']}/resume", headers=headers)
    assert resumed.status_code == 202, resumed.get_json()
    stack.run_tasks()
    done = _job(sync, headers, job["id"])
    assert done["status"] == "completed" and done["pushed"] == 3, done
    assert _pushes(shopify) == 3
    for n, asset in enumerate(assets):
        record = _record(sync, headers, asset)
        assert record["status"] == "synced"
        assert record["media_id"] in [m for m, _ in _media(shopify, str(shopify.product(n).id))]


def test_shopify_cancel_mid_job_leaves_the_unstarted_images_out_of_the_store(
    stack: Any, shop_platform: Any, shopify: RecordingShop, sync: Any, headers: dict[str, str], client_id: str
) -> None:
    products = _connected_shop(stack, headers, shopify)
    product_id = products[str(shopify.product(0).id)]["id"]
    assets = [_approved_image(stack, headers, client_id, product_id, n) for n in range(3)]
    job = _start(sync, headers, {"asset_ids": assets})
    _deliver_until(stack, lambda: _job(sync, headers, job["id"])["counts"]["succeeded"] == 1)
    cancelled = sync.post(f"/sync/jobs/{job['id']}/cancel", headers=headers)
    assert cancelled.status_code == 202, cancelled.get_json()
    stack.run_tasks()
    done = _job(sync, headers, job["id"])
    assert done["status"] == "cancelled", done
    assert (done["counts"]["succeeded"], done["counts"]["cancelled"]) == (1, 2), done
    assert _pushes(shopify) == 1
    items = _items(sync, headers, job["id"])
    [pushed] = [i["asset_id"] for i in items if i["status"] == "succeeded"]
    assert _record(sync, headers, pushed)["status"] == "synced"
    unstarted = [a for a in assets if a != pushed]
    listed = sync.get("/sync/records", query_string={"product_id": product_id}, headers=headers).get_json()["items"]
    assert not [r for r in listed if r["asset_id"] in unstarted]


def _task_headers(task: Any) -> dict[str, str]:
    """The headers Cloud Tasks sends with a redelivery of ``task``."""
    from tests.conftest import TASK_SECRET

    return {
        "Authorization": f"Bearer {TASK_SECRET}",
        "Content-Type": "application/json",
        "X-CloudTasks-QueueName": task.queue,
        "X-CloudTasks-TaskName": task.name,
        "X-CloudTasks-TaskRetryCount": str(task.attempts),
        "X-CloudTasks-TaskExecutionCount": str(task.attempts),
    }


def test_shopify_a_redelivered_item_task_pushes_once(
    stack: Any, served: str, shopify: RecordingShop, sync: Any, headers: dict[str, str], client_id: str
) -> None:
    # No wait for processing within a delivery: the item goes back to the queue while Shopify processes.
    install(stack, sync_poll_seconds=0.0, **store_settings(served, shopify))
    products = _connected_shop(stack, headers, shopify)
    store_pid = str(shopify.product(2).id)
    asset = _approved_image(stack, headers, client_id, products[store_pid]["id"])
    job = _start(sync, headers, {"asset_ids": [asset]})
    _deliver_until(stack, lambda: _pushes(shopify) == 1)
    [task] = [t for t in stack.dispatcher.history if t.url.endswith("/tasks/item")]
    assert task.outcomes == [503] and not task.done  # pushed, still processing: retried later
    assert _record(sync, headers, asset)["status"] == "processing"
    # Cloud Tasks delivers at least once: the same item arrives again while its push is under way (it
    # polls the medium it pushed, READY now, and finishes it), then the queued retry, then once more.
    again = stack.client("sync_tasks").post("/tasks/item", data=task.body, headers=_task_headers(task))
    assert again.status_code == 200, again.get_json()
    assert _record(sync, headers, asset)["status"] == "synced"
    stack.run_tasks()
    assert task.succeeded and task.outcomes == [503, 200]
    stack.dispatcher.submit(queue=task.queue, name=None, url=task.url, body=task.body)
    stack.run_tasks()
    assert all(t.succeeded for t in stack.dispatcher.history if t.url == task.url)
    assert _pushes(shopify) == 1
    record = _record(sync, headers, asset)
    assert record["status"] == "synced"
    assert [m for m, _ in _media(shopify, store_pid)].count(record["media_id"]) == 1
    assert len(_media(shopify, store_pid)) == 2
    done = _job(sync, headers, job["id"])
    assert done["status"] == "completed" and done["counts"]["succeeded"] == 1 and done["pushed"] == 1
    assert len(_history(sync, headers, action="pushed")) == 1


def test_shopify_what_cannot_be_synced_is_a_problem_and_nothing_is_pushed(
    stack: Any,
    shop_platform: Any,
    shopify: RecordingShop,
    sync: Any,
    headers: dict[str, str],
    client_id: str,
    other_client_id: str,
) -> None:
    from tests.catalog_helpers import asset_ref

    catalog = stack.client("catalog_api")
    # Another client's approved image, and that client has no store at all.
    other_headers = stack.headers(other_client_id)
    theirs = _approved_image(stack, other_headers, other_client_id, make_product(catalog, other_headers, "Theirs"))
    problem(sync.post("/sync", json={"asset_ids": [theirs]}, headers=other_headers), 409, "store_not_connected")

    products = _connected_shop(stack, headers, shopify)
    linked = products[str(shopify.product(0).id)]["id"]
    good = _approved_image(stack, headers, client_id, linked, 0)
    unapproved = upload_image(
        stack, catalog, headers, client_id, linked, images.encode(Image.new("RGB", (64, 48)), "PNG")
    )
    manual = _approved_image(stack, headers, client_id, make_product(catalog, headers, "Not in the shop"), 1)
    video = _approved_image(stack, headers, client_id, linked, 2)
    asset_ref(stack, client_id, video).update({"media": "video"})  # no producer makes videos yet

    problem(sync.post("/sync", json={"asset_ids": [good, unapproved]}, headers=headers), 409, "asset_not_approved")
    problem(sync.post("/sync", json={"asset_ids": [good, theirs]}, headers=headers), 404)
    problem(sync.post("/sync", json={"asset_ids": [manual]}, headers=headers), 409, "product_not_linked")
    problem(sync.post("/sync", json={"asset_ids": [video]}, headers=headers), 422, "sync_video_not_supported")
    problem(sync.post("/sync", json={"asset_ids": ["ast_nope"]}, headers=headers), 404)
    malformed = sync.post("/sync", data=b'{"asset_ids": [', headers={**headers, "Content-Type": "application/json"})
    problem(malformed, 400)
    problem(sync.post("/sync", json={"asset_ids": [good], "force": True}, headers=headers), 422, "validation_failed")
    problem(sync.post("/sync", json={}, headers=headers), 422, "validation_failed")
    problem(sync.post("/sync", json={"asset_ids": [good], "category": "Mugs"}, headers=headers), 422)
    problem(sync.post("/sync", json={"asset_ids": [good], "placement": "middle"}, headers=headers), 422)
    problem(sync.post("/sync/remove", json={"asset_ids": [theirs]}, headers=headers), 404)
    problem(sync.post("/sync/remove", json={"asset_ids": []}, headers=headers), 422, "validation_failed")
    problem(sync.post(f"/products/{linked}/sync/restore", headers=headers), 409)
    problem(sync.get("/sync/jobs/syn_nope", headers=headers), 404)
    problem(sync.put("/sync/settings", json={"auto_sync": "often"}, headers=headers), 422, "validation_failed")

    # Disconnected: the store is gone, and with it every sync.
    assert stack.client("store_oauth").delete("/stores/connection", headers=headers).status_code == 200
    stack.run_tasks()
    problem(sync.post("/sync", json={"asset_ids": [good]}, headers=headers), 409, "store_not_connected")
    problem(sync.post("/sync/remove", json={"asset_ids": [good]}, headers=headers), 409, "store_not_connected")
    assert sync.get("/sync/jobs", headers=headers).get_json()["items"] == []
    assert _pushes(shopify) == 0 and stack.dispatcher.pending == 0


def test_shopify_webhooks_mark_our_image_removed_in_the_store_and_a_deleted_product_orphaned(
    stack: Any,
    shop_platform: Any,
    shopify: RecordingShop,
    served: str,
    sync: Any,
    headers: dict[str, str],
    client_id: str,
) -> None:
    hook = f"{served}/store_webhook/webhooks/shopify"
    products = _connected_shop(stack, headers, shopify)
    kept_pid, deleted_pid = str(shopify.product(0).id), str(shopify.product(1).id)
    removed, stays = (_approved_image(stack, headers, client_id, products[kept_pid]["id"], n) for n in range(2))
    orphan = _approved_image(stack, headers, client_id, products[deleted_pid]["id"], 2)
    _start(sync, headers, {"asset_ids": [removed, stays, orphan]})
    stack.run_tasks()
    media_id = _record(sync, headers, removed)["media_id"]

    # The merchant takes our image off the product in the admin: products/update says so.
    delivery = shopify.merchant_removes_media(kept_pid, media_id, url=hook)
    assert delivery is not None and delivery.status == 200
    stack.run_tasks()
    record = _record(sync, headers, removed)
    assert record["status"] == "removed" and record["reason"] == "removed in the store"
    assert _record(sync, headers, stays)["status"] == "synced"
    assert [h["asset_id"] for h in _history(sync, headers, action="removed_in_store")] == [removed]
    # The catalog's mirror of the product still does not take our images for the merchant's.
    mirrored = stack.client("catalog_api").get(f"/products/{products[kept_pid]['id']}", headers=headers).get_json()
    assert len(mirrored["images"]) == len(products[kept_pid]["images"]) + 2  # the merchant's and our two uploads

    # The product is deleted in the store: its record is orphaned.
    delivery = shopify.delete_product(deleted_pid, url=hook)
    assert delivery is not None and delivery.status == 200
    stack.run_tasks()
    assert _record(sync, headers, orphan)["status"] == "orphaned"
    assert [h["asset_id"] for h in _history(sync, headers, action="orphaned")] == [orphan]
    # Syncing it again is refused: its product is no longer linked to a store product.
    problem(sync.post("/sync", json={"asset_ids": [orphan]}, headers=headers), 409, "product_not_linked")


def test_auto_sync_pushes_an_image_when_it_is_approved(
    stack: Any, shop_platform: Any, shopify: RecordingShop, sync: Any, headers: dict[str, str], client_id: str
) -> None:
    catalog = stack.client("catalog_api")
    products = _connected_shop(stack, headers, shopify)
    store_pid = str(shopify.product(2).id)
    assert sync.get("/sync/settings", headers=headers).get_json() == {"auto_sync": False, "placement": "append"}
    # Off: approving pushes nothing.
    quiet = _approved_image(stack, headers, client_id, products[store_pid]["id"], 0)
    stack.run_tasks()
    assert sync.get("/sync/jobs", headers=headers).get_json()["items"] == [] and _pushes(shopify) == 0

    turned = sync.put("/sync/settings", json={"auto_sync": True, "placement": "featured"}, headers=headers)
    assert turned.status_code == 200 and turned.get_json() == {"auto_sync": True, "placement": "featured"}
    data = images.encode(Image.new("RGB", (64, 48), COLORS[1]), "PNG")
    asset = upload_image(stack, catalog, headers, client_id, products[store_pid]["id"], data)
    stack.run_tasks()
    assert _pushes(shopify) == 0  # uploaded, not approved: nothing yet
    assert catalog.patch(f"/assets/{asset}", json={"approved": True}, headers=headers).status_code == 200
    stack.run_tasks()  # the relay hands asset.approved to auto-sync, which starts a job; the job runs
    [job] = sync.get("/sync/jobs", headers=headers).get_json()["items"]
    assert (job["trigger"], job["status"], job["pushed"], job["placement"]) == ("auto", "completed", 1, "featured")
    record = _record(sync, headers, asset)
    assert record["status"] == "synced" and record["position"] == 0
    assert _media(shopify, store_pid)[0] == (record["media_id"], "READY")
    assert _pushes(shopify) == 1
    [entry] = _history(sync, headers, action="pushed")
    assert entry["asset_id"] == asset and entry["job_id"] == job["id"]
    assert sync.get("/sync/records", query_string={"asset_id": quiet}, headers=headers).get_json()["items"] == []


# -- WooCommerce ------------------------------------------------------------------------------------


def _woo_ids(woo: WooStub, store_pid: int) -> list[int]:
    return [image["id"] for image in woo.gallery(store_pid)]


def test_woocommerce_push_featured_remove_and_restore(
    stack: Any, woo_platform: Any, woo: WooStub, sync: Any, headers: dict[str, str], client_id: str
) -> None:
    from tests.integration.test_store_lifecycle import _grant_slots

    _connect_woo(stack, headers, woo)
    _grant_slots(stack, client_id, 200)
    products = {int(p["store"]["product_id"]): p for p in _import(stack, headers)}
    store_pid = next(pid for pid in sorted(products) if len(woo.gallery(pid)) == 2)
    product = products[store_pid]
    original = _woo_ids(woo, store_pid)
    appended, featured = (_approved_image(stack, headers, client_id, product["id"], n) for n in range(2))

    # Appended: WooCommerce gets the whole gallery, the merchant's images by id and ours by src.
    job = _start(sync, headers, {"asset_ids": [appended]})
    stack.run_tasks()
    assert _job(sync, headers, job["id"])["status"] == "completed"
    record = _record(sync, headers, appended)
    ours = int(record["media_id"])
    assert record["status"] == "synced" and record["position"] == 2 and record["platform"] == "woocommerce"
    assert _woo_ids(woo, store_pid) == [*original, ours]
    writes = [json.loads(r.raw) for r in woo.requests if r.path == f"/wp-json/wc/v3/products/{store_pid}"
              and r.method in ("PUT", "POST")]  # fmt: skip
    [write] = writes
    assert write["images"][:2] == [{"id": m} for m in original]
    added = write["images"][2]
    assert "id" not in added and urlsplit(added["src"]).path.endswith("/" + added["name"])
    title = product["name"]
    assert re.fullmatch(rf"{_slug(title)}-[0-9a-f]{{10}}\.png", added["name"]), added
    assert added["alt"] == f"{title} product photo"
    image = woo.gallery(store_pid)[2]
    assert image["src"] == record["url"] and "/wp-content/uploads/" in image["src"]
    assert image["alt"] == f"{title} product photo"
    assert len(woo.sideloaded) == 1

    # Featured: position 0, taken while the store sideloads it.
    job = _start(sync, headers, {"asset_ids": [featured], "placement": "featured"})
    stack.run_tasks()
    top = _record(sync, headers, featured)
    assert top["position"] == 0 and _woo_ids(woo, store_pid) == [int(top["media_id"]), *original, ours]
    # Our own writes fired product.updated: our images are still there, so nothing is marked removed.
    assert _record(sync, headers, appended)["status"] == "synced"

    # Remove ours: the merchant's images stay, by id, in their order.
    removed = sync.post("/sync/remove", json={"asset_ids": [appended]}, headers=headers)
    assert removed.status_code == 200, removed.get_json()
    assert _woo_ids(woo, store_pid) == [int(top["media_id"]), *original]
    assert woo.library_image(ours) is not None  # off the product, still in the media library
    assert _record(sync, headers, appended)["status"] == "removed"
    restored = sync.post(f"/products/{product['id']}/sync/restore", headers=headers)
    assert restored.status_code == 200, restored.get_json()
    assert _woo_ids(woo, store_pid) == original
    assert len(woo.sideloaded) == 2
    actions = sorted(h["action"] for h in _history(sync, headers))
    assert actions == ["pushed", "pushed", "removed", "removed", "restored"]
