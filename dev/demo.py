"""The scripted end-to-end demo against a running local stack: ``make demo`` (or ``make dev`` with
``--demo``). Every step goes through the public HTTP API exactly as the frontend would call it.
It grows with each capability; it exits non-zero at the first step that does not behave.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import uuid
from typing import Any

import httpx


class DemoFailed(RuntimeError):
    pass


def _check(response: httpx.Response, status: int, step: str) -> Any:
    if response.status_code != status:
        raise DemoFailed(f"{step}: expected {status}, got {response.status_code}: {response.text[:500]}")
    return response.json() if response.content and "json" in response.headers.get("content-type", "") else None


def _photo() -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (1200, 900), (250, 250, 250))
    ImageDraw.Draw(image).rectangle((400, 250, 800, 650), fill=(30, 30, 30))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def run(base: str, client_id: str | None = None) -> dict[str, Any]:
    """Run every step; return what was created (for tests)."""
    client_id = client_id or f"demo-{uuid.uuid4().hex[:8]}"
    http = httpx.Client(base_url=base, timeout=30, trust_env=False)
    token = _check(http.post("/_dev/token", json={"client_id": client_id}), 200, "mint a dev token")["token"]
    auth = {"Authorization": f"Bearer {token}"}
    catalog = "/catalog_api"
    print(f"[demo] client {client_id}")

    product = _check(
        http.post(
            f"{catalog}/products",
            headers=auth,
            json={
                "name": "Ceramic Mug",
                "sku": "MUG-001",
                "price": "14.50",
                "category": "kitchen",
                "tags": ["ceramic", "mug"],
            },
        ),
        201,
        "create a product",
    )
    print(f"[demo] created product {product['id']}")

    photo = _photo()
    slot = _check(
        http.post(
            f"{catalog}/uploads",
            headers=auth,
            json={
                "filename": "mug.jpg",
                "content_type": "image/jpeg",
                "size_bytes": len(photo),
                "product_id": product["id"],
            },
        ),
        201,
        "ask for an upload slot",
    )
    put = httpx.put(slot["upload"]["url"], content=photo, headers=slot["upload"]["headers"], trust_env=False)
    if put.status_code >= 300:
        raise DemoFailed(f"upload to the presigned URL failed: {put.status_code}")
    done = _check(http.post(f"{catalog}/uploads/{slot['id']}/complete", headers=auth), 200, "complete the upload")
    print(f"[demo] uploaded a photo → asset {done['asset_id']}")

    csv_text = (
        "Name;SKU;Price;Category;Image URL\n"
        f"Desk Lamp;LAMP-1;39,90;lighting;{base}/_dev/samples/lamp.png\n"
        f"Tote Bag;TOTE-1;12,00;bags;{base}/_dev/samples/tote.jpg\n"
        "Metadata Thief;EVIL-1;1,00;bad;http://169.254.169.254/latest/meta-data/\n"
    ).encode("utf-8-sig")
    csv_slot = _check(
        http.post(
            f"{catalog}/uploads",
            headers=auth,
            json={
                "filename": "products.csv",
                "content_type": "text/csv",
                "size_bytes": len(csv_text),
                "purpose": "csv_import",
            },
        ),
        201,
        "ask for a CSV upload slot",
    )
    httpx.put(csv_slot["upload"]["url"], content=csv_text, headers=csv_slot["upload"]["headers"], trust_env=False)
    _check(http.post(f"{catalog}/uploads/{csv_slot['id']}/complete", headers=auth), 200, "complete the CSV upload")
    draft = _check(http.post(f"{catalog}/imports", headers=auth, json={"upload_id": csv_slot["id"]}), 201, "preview")
    print(f"[demo] CSV preview: {draft['preview']['total_rows']} rows, mapping {draft['mapping']}")
    _check(http.post(f"{catalog}/imports/{draft['id']}/start", headers=auth), 202, "start the import")
    deadline = time.monotonic() + 60
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = _check(http.get(f"{catalog}/imports/{draft['id']}", headers=auth), 200, "read import progress")
        if state["status"] in ("completed", "failed"):
            break
        time.sleep(0.5)
    if state.get("status") != "completed":
        raise DemoFailed(f"the import did not complete: {state}")
    report = http.get(f"{catalog}/imports/{draft['id']}/errors.csv", headers=auth).text
    print(f"[demo] import finished: {state['progress']}")
    print("[demo] error report:\n" + "\n".join("         " + line for line in report.strip().splitlines()))
    if "169.254.169.254" not in report:
        raise DemoFailed("the metadata-address image was not reported as blocked")

    assets = _check(http.get(f"{catalog}/assets", headers=auth), 200, "list assets")
    print(f"[demo] asset library holds {len(assets['items'])} images")
    if len(assets["items"]) != 3:
        raise DemoFailed(f"expected 3 assets (1 upload + 2 imported), found {len(assets['items'])}")
    detail = _check(http.get(f"{catalog}/assets/{done['asset_id']}", headers=auth), 200, "read an asset")
    download = httpx.get(detail["download_url"], trust_env=False)
    if download.status_code != 200 or not download.content:
        raise DemoFailed("the presigned download URL did not work")
    _check(
        http.patch(f"{catalog}/assets/{done['asset_id']}", headers=auth, json={"approved": True, "pinned": True}),
        200,
        "approve and pin",
    )
    print("[demo] downloaded, approved and pinned the uploaded photo — all steps passed")
    mailbox = f"{client_id}@demo.epox.test"
    _ask_for_job_emails(http, auth, mailbox)
    generation = _generate(http, auth, [product["id"]])
    _notified(http, auth, generation["id"], mailbox)
    subscription = buy_and_subscribe(http, auth, client_id)
    edit = _edit(http, auth, done["asset_id"])
    video = _video(http, auth, product["id"])
    store = connect_and_import_store(http, auth)
    sync = push_to_store(http, auth)
    return {
        "client_id": client_id,
        "product": product,
        "import": state,
        "assets": assets["items"],
        "generation": generation,
        "subscription": subscription,
        "edit": edit,
        "video": video,
        "store": store,
        "sync": sync,
    }


def connect_and_import_store(http: httpx.Client, auth: dict[str, str]) -> dict[str, Any]:
    """Connect the stub Shopify shop as a merchant does, import its catalog, keep a product in step."""
    oauth = "/store_oauth"
    shop = _check(http.get("/_dev/shopify"), 200, "read the Shopify stub")
    started = _check(
        http.post(f"{oauth}/stores/shopify/connect", headers=auth, json={"shop": shop["shop"]}),
        200,
        "start connecting Shopify",
    )
    # The merchant's browser: Shopify's authorize page approves, then our callback connects and goes home.
    approved = httpx.get(started["authorize_url"], follow_redirects=False, trust_env=False)
    if approved.status_code != 302:
        raise DemoFailed(f"Shopify's authorize page answered {approved.status_code}")
    landed = httpx.get(approved.headers["location"], follow_redirects=False, trust_env=False, timeout=30)
    if landed.status_code != 302 or "connected=shopify" not in landed.headers.get("location", ""):
        raise DemoFailed(f"the OAuth callback answered {landed.status_code}: {landed.text[:300]}")
    connection = _check(http.get(f"{oauth}/stores/connection", headers=auth), 200, "read the store connection")
    print(
        f"[demo] connected Shopify shop {connection['shop']}: health {connection['health']}, "
        f"scopes {', '.join(connection['scopes'])}"
    )
    created = _check(http.post(f"{oauth}/stores/imports", headers=auth, json={"scope": "all"}), 202, "import the store")
    path = f"/catalog_api/imports/{created['id']}"
    draft = _wait(http, path, auth, ("draft", "failed"), "read the store import's preview")
    if draft["status"] != "draft":
        raise DemoFailed(f"reading the store's catalog failed: {draft.get('failure')}")
    preview = draft["preview"]
    print(
        f"[demo] store preview: {preview['total_products']} products, {preview['total_images']} images, "
        f"{len(preview['categories'])} categories, {preview['slots']['new_products']} new products "
        f"for {preview['slots']['free']} free slots"
    )
    _check(http.post(f"{path}/start", headers=auth), 202, "start the store import")
    done = _wait(http, path, auth, ("completed", "failed"), "wait for the store import")
    progress = done["progress"]
    print(
        f"[demo] store import {done['status']}: {progress['created_products']} products, "
        f"{progress['images_imported']} images ({progress['failed_rows']} rows failed)"
    )
    if done["status"] != "completed" or progress["created_products"] != preview["total_products"]:
        raise DemoFailed(f"the store import did not bring every product: {progress}")
    products = _check(
        http.get("/catalog_api/products", headers=auth, params={"source": "shopify", "limit": 1}),
        200,
        "list the imported products",
    )["items"]
    target = products[0]
    renamed = f"{target['name']} (renamed in Shopify)"
    delivered = _check(
        http.post(
            "/_dev/shopify/deliver",
            json={
                "topic": "products/update",
                "product_id": target["store"]["product_id"],
                "changes": {"title": renamed},
            },
        ),
        200,
        "deliver a products/update webhook",
    )
    if delivered["delivery"]["status"] != 200:
        raise DemoFailed(f"store_webhook answered {delivered['delivery']['status']}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        current = _check(http.get(f"/catalog_api/products/{target['id']}", headers=auth), 200, "read the product")
        if current["name"] == renamed:
            break
        time.sleep(0.3)
    else:
        raise DemoFailed("the products/update webhook did not reach the product")
    print(f"[demo] webhook kept the product in step: {target['name']!r} -> {renamed!r}")
    return {"connection": connection, "import": done, "renamed": target["id"]}


def push_to_store(http: httpx.Client, auth: dict[str, str]) -> dict[str, Any]:
    """Generate images for an imported Shopify product, approve them, push them back to the shop (one as
    the featured image), read them back from the shop, then restore the product's original images."""
    product = _check(
        http.get("/catalog_api/products", headers=auth, params={"source": "shopify", "limit": 2}),
        200,
        "list the imported products",
    )["items"][-1]
    store_pid = product["store"]["product_id"]
    before = _check(http.get(f"/_dev/shopify/products/{store_pid}/media"), 200, "read the shop's product")["media"]
    generation = _generate(http, auth, [product["id"]])
    assets = _check(
        http.get("/catalog_api/assets", headers=auth, params={"product_id": product["id"], "kind": "generated"}),
        200,
        "list the generated images",
    )["items"]
    if len(assets) < 2:
        raise DemoFailed(f"expected two generated images for {product['id']}, found {len(assets)}")
    featured, other = assets[0]["id"], assets[1]["id"]
    for asset_id in (featured, other):
        _check(http.patch(f"/catalog_api/assets/{asset_id}", headers=auth, json={"approved": True}), 200, "approve")
    jobs = []
    for asset_id, placement in ((featured, "featured"), (other, "append")):
        job = _check(
            http.post(
                "/sync_api/sync",
                headers={**auth, "Idempotency-Key": uuid.uuid4().hex},
                json={"asset_ids": [asset_id], "placement": placement},
            ),
            202,
            "push an approved image to the store",
        )
        jobs.append(_wait(http, f"/sync_api/sync/jobs/{job['id']}", auth, ("completed", "cancelled"), "sync"))
    pushed = sum(job["pushed"] for job in jobs)
    after = _check(http.get(f"/_dev/shopify/products/{store_pid}/media"), 200, "read the shop's product")["media"]
    records = _check(
        http.get("/sync_api/sync/records", headers=auth, params={"product_id": product["id"]}), 200, "read records"
    )["items"]
    ours = {record["media_id"]: record for record in records if record["status"] == "synced"}
    print(
        f"[demo] pushed {pushed} approved images to Shopify product {store_pid}: the shop now shows "
        f"{len(after)} images (was {len(before)}); featured: {after[0]['alt']!r} ({after[0]['status']})"
    )
    if pushed != 2 or len(after) != len(before) + 2 or after[0]["id"] not in ours:
        raise DemoFailed(f"the shop does not show our images as asked: {after}")
    if [m["id"] for m in after[1:]][: len(before)] != [m["id"] for m in before]:
        raise DemoFailed("the merchant's own images moved or went missing")
    status = _check(
        http.get("/sync_api/sync/products", headers=auth, params={"q": product["name"].split()[0]}),
        200,
        "read the per-product sync status",
    )["items"]
    row = next((r for r in status if r["product_id"] == product["id"]), None)
    print(f"[demo] store-management row: {row}")
    restored = _check(
        http.post(f"/sync_api/products/{product['id']}/sync/restore", headers=auth), 200, "restore the originals"
    )
    final = _check(http.get(f"/_dev/shopify/products/{store_pid}/media"), 200, "read the shop's product")["media"]
    if [m["id"] for m in final] != [m["id"] for m in before]:
        raise DemoFailed(f"restore did not put the original images back: {final}")
    history = http.get("/sync_api/sync/history.csv", headers=auth).text.strip().splitlines()
    print(
        f"[demo] restored the product's original {len(final)} images ({restored['removed']} of ours taken off); "
        f"sync history: {len(history) - 1} entries"
    )
    return {"generation": generation["id"], "jobs": jobs, "records": records, "restored": restored}


def _wait(http: httpx.Client, path: str, auth: dict[str, str], done: tuple[str, ...], step: str) -> dict[str, Any]:
    deadline = time.monotonic() + 90
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = _check(http.get(path, headers=auth), 200, step)
        if state["status"] in done:
            return state
        time.sleep(0.5)
    raise DemoFailed(f"{step}: still {state.get('status')} after 90 s")


def _generate(http: httpx.Client, auth: dict[str, str], product_ids: list[str]) -> dict[str, Any]:
    """A paid generation job: one hold for the whole job, settled when the last item finishes."""
    before = _check(http.get("/credits_api/balance", headers=auth), 200, "read the balance")["available"]
    body = {
        "items": [{"product_id": pid} for pid in product_ids] + [{"prompt": "a linen tote bag on a beach"}],
        "style": "lifestyle",
        "aspect_ratio": "4:5",
        "size": "1K",
        "variants": 2,
    }
    job = _check(
        http.post("/generate_api/jobs", headers={**auth, "Idempotency-Key": uuid.uuid4().hex}, json=body),
        202,
        "create a generation job",
    )
    print(
        f"[demo] generation job {job['id']}: {job['item_count']} items x {job['variants']} variants, "
        f"cost {job['cost']} credits (balance was {before})"
    )
    done = _wait(http, f"/generate_api/jobs/{job['id']}", auth, ("completed", "cancelled"), "read the job")
    after = _check(http.get("/credits_api/balance", headers=auth), 200, "read the balance")["available"]
    print(
        f"[demo] job {done['status']}: {done['images_succeeded']} images, settlement {done['settlement']}, "
        f"balance {before} -> {after}"
    )
    if after != before - done["settlement"]["captured"]:
        raise DemoFailed("the balance does not match the job's settlement")
    return done


def _ask_for_job_emails(http: httpx.Client, auth: dict[str, str], mailbox: str) -> None:
    """Job completions are in-app only by default: this merchant asks for the email too."""
    preferences = _check(http.get("/notifications_api/notification-preferences", headers=auth), 200, "read prefs")
    preferences["email_to"] = mailbox
    preferences["channels"]["job_completed"] = {"in_app": True, "email": True}
    _check(
        http.put("/notifications_api/notification-preferences", headers=auth, json=preferences),
        200,
        "turn on job emails",
    )
    print(f"[demo] notification preferences: job completed in-app and by email to {mailbox}")


def _notified(http: httpx.Client, auth: dict[str, str], job_id: str, mailbox: str) -> None:
    """The job's completion event reached the in-app inbox and the mailbox (through the outbox relay)."""
    deadline = time.monotonic() + 30
    notification: dict[str, Any] | None = None
    mail: dict[str, Any] | None = None
    while time.monotonic() < deadline and (notification is None or mail is None):
        listed = _check(http.get("/notifications_api/notifications", headers=auth), 200, "list notifications")
        notification = next((n for n in listed["items"] if n["link"]["id"] == job_id), None)
        mails = _check(http.get("/_dev/mail"), 200, "read the local mailbox")
        mail = next((m for m in mails if mailbox in m["to"]), None)
        if notification is None or mail is None:
            time.sleep(0.3)
    if notification is None or mail is None:
        raise DemoFailed(f"the job's notification ({notification}) or email ({mail}) never arrived")
    unread = _check(http.get("/notifications_api/notifications/unread-count", headers=auth), 200, "unread count")
    print(f"[demo] in-app notification: {notification['title']!r} ({unread['unread']} unread)")
    print(f"[demo] email to {mail['to']}: {mail['subject']!r} (saved as {mail['file']})")


def _balance(http: httpx.Client, auth: dict[str, str]) -> int:
    return int(_check(http.get("/credits_api/balance", headers=auth), 200, "read the balance")["available"])


def _checkout(http: httpx.Client, auth: dict[str, str], body: dict[str, str], step: str) -> dict[str, Any]:
    """Start a Checkout and pay it on the hosted page, as the customer would. In ``make dev`` that page
    is the local Stripe stub's: paying it makes Stripe's objects and sends its signed events to
    ``/stripe_webhook/`` before it redirects to the success URL."""
    session: dict[str, Any] = _check(
        http.post("/billing_api/checkout", headers={**auth, "Idempotency-Key": uuid.uuid4().hex}, json=body),
        201,
        f"start the checkout for {step}",
    )
    page = httpx.get(session["url"], trust_env=False, timeout=30)
    if page.status_code != 200:
        raise DemoFailed(f"the hosted checkout page for {step} answered {page.status_code}")
    paid = httpx.post(session["url"], trust_env=False, timeout=60)
    if paid.status_code != 303:
        raise DemoFailed(f"paying {step}: expected a redirect to the success page, got {paid.status_code}")
    deliveries: list[dict[str, Any]] = paid.json()["deliveries"]
    refused = [d for d in deliveries if d["status"] != 200]
    if refused:
        raise DemoFailed(f"the webhook refused Stripe's events for {step}: {refused}")
    print(f"[demo] paid {step} on the hosted page; Stripe sent {', '.join(d['type'] for d in deliveries)}")
    return session


def buy_and_subscribe(http: httpx.Client, auth: dict[str, str], client_id: str) -> dict[str, Any]:
    """Buy a credit pack, subscribe to Growth, then the invoices and the customer portal, through the
    billing API and the (local) Stripe pages."""
    catalog = _check(http.get("/billing_api/plans", headers=auth), 200, "read the plans")
    pack = next(p for p in catalog["packs"] if p["id"] == "pack_100")
    before = _balance(http, auth)
    _checkout(http, auth, {"kind": "pack", "pack_id": pack["id"]}, f"the {pack['name']} pack")
    after_pack = _balance(http, auth)
    print(f"[demo] bought {pack['name']}: balance {before} -> {after_pack}")
    if after_pack - before != pack["credits"]:
        raise DemoFailed("the credit pack did not grant its credits exactly once")

    _checkout(http, auth, {"kind": "plan", "plan_id": "growth", "interval": "monthly"}, "Growth (monthly)")
    state: dict[str, Any] = _check(http.get("/billing_api/subscription", headers=auth), 200, "read the subscription")
    after = _balance(http, auth)
    print(
        f"[demo] subscribed to {state['plan_name']} ({state['product_slots']} slots): balance {after_pack} -> {after}"
    )
    if state["plan"] != "growth" or after - after_pack != state["monthly_credits"]:
        raise DemoFailed("the subscription did not grant exactly one month of credits")

    invoices = _check(http.get("/billing_api/invoices", headers=auth), 200, "list the invoices")["items"]
    growth = next((p for p in catalog["plans"] if p["id"] == "growth"), None)
    if growth is None or not invoices or any(i["status"] != "paid" for i in invoices):
        raise DemoFailed(f"expected paid invoices (the pack's receipt and the subscription's), found {invoices}")
    amounts = sorted(i["amount_paid"] for i in invoices)
    if len(invoices) != 2 or growth["prices"]["monthly"] not in amounts:
        raise DemoFailed(f"expected the pack's receipt and Growth's first month, found amounts {amounts}")
    listed = ", ".join(f"{i['number']} {i['amount_paid'] / 100:.2f} {i['status']}" for i in invoices)
    print(f"[demo] invoices: {listed}")
    portal = _check(http.post("/billing_api/portal", headers=auth, json={}), 201, "open the customer portal")
    page = httpx.get(portal["url"], trust_env=False, timeout=30)
    if page.status_code != 200:
        raise DemoFailed(f"the customer portal page answered {page.status_code}")
    print(f"[demo] customer portal: {portal['url']}")
    return state


def _edit(http: httpx.Client, auth: dict[str, str], asset_id: str) -> dict[str, Any]:
    """A free, synchronous edit of the uploaded photo: square crop, WebP; it becomes revision 2."""
    edited = _check(
        http.post(
            "/edit_api/edits",
            headers=auth,
            json={
                "asset_ids": [asset_id],
                "operations": [{"op": "crop", "aspect": "1:1"}, {"op": "output", "format": "webp", "quality": 85}],
            },
        ),
        200,
        "crop the photo to 1:1 as WebP",
    )
    revision: dict[str, Any] = edited["revisions"][0]
    got = (revision["revision"], revision["width"], revision["height"], revision["content_type"])
    if got != (2, 900, 900, "image/webp"):
        raise DemoFailed(f"expected revision 2 as a 900x900 WebP, got {revision}")
    print(f"[demo] edited the photo: revision 2 is a {revision['width']}x{revision['height']} WebP (crop 1:1)")
    return revision


def _video(http: httpx.Client, auth: dict[str, str], product_id: str) -> dict[str, Any]:
    """A paid 4-second video of the product from its photo (the offline engine in ``make dev``): the item
    starts its clip and is delivered again while the clip renders, then the clip becomes a 16:9 and a 9:16
    video asset, each downloaded and checked."""
    before = _balance(http, auth)
    body = {
        "items": [{"product_id": product_id}],
        "style": "showcase_360",
        "duration_seconds": 4,
        "deliverables": ["16:9", "9:16"],
    }
    job = _check(
        http.post("/video_api/videos/jobs", headers={**auth, "Idempotency-Key": uuid.uuid4().hex}, json=body),
        202,
        "create a video job",
    )
    print(f"[demo] video job {job['id']}: {job['settings']['clips']} s clips, cost {job['cost']} credits")
    done = _wait(http, f"/video_api/videos/jobs/{job['id']}", auth, ("completed", "cancelled"), "read the video job")
    items = _check(http.get(f"/video_api/videos/jobs/{job['id']}/items", headers=auth), 200, "read the videos")
    videos = items["items"][0]["videos"]
    if done["counts"]["succeeded"] != 1 or len(videos) != 2:
        raise DemoFailed(f"expected one video in two aspects, got {done['counts']} and {videos}")
    for result in videos:
        download = httpx.get(result["download_url"], trust_env=False, timeout=30)
        if download.status_code != 200 or download.content[4:8] != b"ftyp":
            raise DemoFailed(f"the {result['aspect_ratio']} video did not download as an MP4")
        print(
            f"[demo] video asset {result['asset_id']}: {result['aspect_ratio']} {result['width']}x{result['height']}, "
            f"{result['duration_seconds']} s, {len(download.content):,} bytes"
        )
    after = _balance(http, auth)
    if after != before - done["settlement"]["captured"]:
        raise DemoFailed("the balance does not match the video job's settlement")
    print(f"[demo] video job {done['status']}: settlement {done['settlement']}, balance {before} -> {after}")
    return dict(done)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", default="http://127.0.0.1:8000")
    args = parser.parse_args(argv)
    try:
        run(args.base)
    except (DemoFailed, httpx.HTTPError) as exc:
        print(f"[demo] FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
