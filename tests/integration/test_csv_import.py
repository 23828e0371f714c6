"""CSV import end to end: upload like the frontend, preview, map, run the chunk tasks, read the report.

Product images are served by a local HTTP server on 127.0.0.1 (the platform's fetcher allows
127.0.0.1/32 on top of public addresses); a twin server on 127.0.0.2 catches any request that a
broken address policy would let through.
"""

from __future__ import annotations

import csv
import io
import math
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from PIL import Image

from tests import platforms
from tests.catalog_helpers import problem
from tests.csv_import_helpers import Api, chunk_tasks, simple_csv

CHUNK_ROWS = 3  # settings.import_chunk_rows in tests/conftest.py

# -- the image server -----------------------------------------------------------------------------


def _image_bytes(fmt: str, seed: str) -> bytes:
    colour = tuple(b for b in uuid.uuid5(uuid.NAMESPACE_URL, seed).bytes[:3])
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buffer, format=fmt)
    return buffer.getvalue()


@dataclass
class ImageServer:
    """What the handler serves and what it saw. ``port2`` is the same handler on 127.0.0.2."""

    port: int = 0
    port2: int = 0
    hits: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def total_hits(self) -> int:
        with self.lock:
            return sum(self.hits.values())


def _handler(state: ImageServer) -> type[BaseHTTPRequestHandler]:
    flaky = re.compile(r"/flaky/(\d+)/[\w-]+\.png")
    slow = re.compile(r"/slow/(\d+)/[\w-]+\.png")  # answers after that many milliseconds

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            with state.lock:
                state.hits[path] += 1
                seen = state.hits[path]
            if match := slow.fullmatch(path):
                time.sleep(int(match.group(1)) / 1000)
                self._send(200, "image/png", _image_bytes("PNG", path))
            elif match := flaky.fullmatch(path):
                if seen <= int(match.group(1)):
                    self._send(503, "text/plain", b"busy")
                else:
                    self._send(200, "image/png", _image_bytes("PNG", path))
            elif path.startswith("/img/") and path.endswith(".png"):
                self._send(200, "image/png", _image_bytes("PNG", path))
            elif path.startswith("/img/") and path.endswith(".jpg"):
                self._send(200, "image/jpeg", _image_bytes("JPEG", path))
            elif path == "/page.html":
                self._send(200, "text/html; charset=utf-8", b"<html><body>not an image</body></html>")
            elif path == "/fake.png":
                self._send(200, "image/png", b"<html><body>an error page served as PNG</body></html>")
            elif path == "/redirect-metadata":
                self._send(302, "text/plain", b"", location="http://169.254.169.254/latest/meta-data/")
            else:
                self._send(404, "text/plain", b"not found")

        def _send(self, status: int, content_type: str, body: bytes, location: str | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if location:
                self.send_header("Location", location)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


@pytest.fixture
def images() -> Iterator[ImageServer]:
    state = ImageServer()
    handler = _handler(state)
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), handler), ThreadingHTTPServer(("127.0.0.2", 0), handler)]
    for server in servers:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    state.port, state.port2 = (s.server_address[1] for s in servers)
    try:
        yield state
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


# -- the frontend's steps -------------------------------------------------------------------------


def _db_counts(stack: Any, client_id: str) -> tuple[int, int]:
    """Products and assets as stored (not through the API's pagination)."""
    client = stack.platform.db.collection("clients").document(client_id)
    products = len(list(client.collection("products").stream()))
    assets = len(list(client.collection("assets").stream()))
    return products, assets


def _deliver_one(dispatcher: Any) -> int:
    """Deliver the next due task, if any. run_until_idle raises once it hits max_deliveries."""
    try:
        return int(dispatcher.run_until_idle(max_deliveries=1))
    except RuntimeError:
        return 1


# -- the sample CSV -------------------------------------------------------------------------------

DESCRIPTION = "Soft cotton; machine washable.\nSecond line; with a semicolon\nThird line"


def _catalog_csv(images: ImageServer) -> tuple[bytes, dict[str, Any]]:
    """Excel-style German export: UTF-8 BOM, ";" delimiter, decimal commas, a multi-line cell.

    Returns the bytes and what the test expects. Spreadsheet rows: header 1, data 2..13.
    """
    u = images.url
    lines = [
        "Product Name;SKU;Preis;Kategorie;Beschreibung;Bild URL",
        f'Blue Shirt;BS-1;19,99;Shirts;"{DESCRIPTION}";{u("/img/1.png")}',  # row 2
        f"Red Shirt;RS-1;24,50;Shirts;Plain red;{u('/img/2.jpg')}",  # row 3
        f"Green Shirt;BS-1;1.234,56;Shirts;Same SKU as row 2;{u('/img/3.png')}",  # row 4
        f";NN-1;5,00;Shirts;No name;{u('/img/4.png')}",  # row 5: skipped
        f"Cap;CAP-1;zwölf Euro;Hats;Bad price;{u('/img/5.png')}",  # row 6: skipped
        "Scarf;SC-1;9,90;Accessories;No image;",  # row 7
        f"Socks;SO-1;3,50;Accessories;;{u('/img/6.png')}",  # row 8
        f"Belt;BE-1;15,00;Accessories;;{u('/img/7.jpg')}",  # row 9
        f"Hat;HA-1;12,00;Hats;;{u('/img/8.png')}",  # row 10
        "Gloves;GL-1;8,00;Accessories;;",  # row 11
        f"Tie;TI-1;22,00;Accessories;;{u('/img/9.png')}",  # row 12
        f"Watch;WA-1;99,00;Accessories;;{u('/img/10.jpg')}",  # row 13
    ]
    data = b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8") + b"\r\n"
    expected = {
        "total_rows": 12,
        "products": {
            "BS-1": None,  # two rows share it; checked by name below
            "RS-1": ("Red Shirt", "24.50", "Shirts", "Plain red", 1),
            "SC-1": ("Scarf", "9.90", "Accessories", "No image", 0),
            "SO-1": ("Socks", "3.50", "Accessories", None, 1),
            "BE-1": ("Belt", "15.00", "Accessories", None, 1),
            "HA-1": ("Hat", "12.00", "Hats", None, 1),
            "GL-1": ("Gloves", "8.00", "Accessories", None, 0),
            "TI-1": ("Tie", "22.00", "Accessories", None, 1),
            "WA-1": ("Watch", "99.00", "Accessories", None, 1),
        },
        "created": 10,
        "images": 8,
        # Images of skipped rows are never fetched.
        "fetched": ["/img/1.png", "/img/2.jpg", "/img/3.png", "/img/6.png", "/img/7.jpg", "/img/8.png",
                    "/img/9.png", "/img/10.jpg"],
        "not_fetched": ["/img/4.png", "/img/5.png"],
    }  # fmt: skip
    return data, expected


def _warnings(preview: dict[str, Any]) -> dict[tuple[str, str | None], dict[str, Any]]:
    return {(w["code"], w.get("problem_code") or w.get("value")): w for w in preview["warnings"]}


# -- tests ----------------------------------------------------------------------------------------


def test_preview_detects_format_mapping_and_problems(stack: Any, client_id: str, images: ImageServer) -> None:
    api = Api(stack, client_id)
    data, expected = _catalog_csv(images)
    draft = api.draft(data)
    preview = draft["preview"]

    assert preview["delimiter"] == ";"
    assert preview["encoding"] == "utf-8-sig"
    assert preview["headers"][0] == "Product Name"  # the BOM is not part of the first header
    assert preview["mapping"] == {
        "name": "Product Name",
        "sku": "SKU",
        "description": "Beschreibung",
        "category": "Kategorie",
        "price": "Preis",
        "image_urls": ["Bild URL"],
        "tags": None,
        "external_id": None,
        # Generation columns (none in this file): used by imports that generate images.
        "style": None,
        "prompt": None,
        "negative_prompt": None,
        "aspect_ratio": None,
        "size": None,
        "variants": None,
        "base_image_url": None,
    }
    assert draft["mapping"] == preview["mapping"]
    assert preview["total_rows"] == expected["total_rows"] == draft["progress"]["total_rows"]
    assert preview["importable_rows"] == 10

    sample = preview["sample"]
    assert [row["row_number"] for row in sample] == list(range(2, 12))  # the first 10 of 12
    first = sample[0]
    assert first["values"]["description"] == DESCRIPTION  # newlines and ";" kept inside quotes
    assert first["values"]["image_urls"] == images.url("/img/1.png")
    assert first["draft"]["name"] == "Blue Shirt"
    assert first["draft"]["price"] == "19.99"
    assert sample[2]["draft"]["price"] == "1234.56"
    assert sample[3]["draft"] is None
    assert [p["code"] for p in sample[3]["problems"]] == ["missing_name"]
    assert sample[4]["draft"] is None
    assert [p["code"] for p in sample[4]["problems"]] == ["invalid_price"]

    warnings = _warnings(preview)
    assert set(warnings) == {
        ("bad_row", "missing_name"),
        ("bad_row", "invalid_price"),
        ("missing_images", None),
        ("duplicate_sku", "BS-1"),
    }
    assert warnings[("bad_row", "missing_name")]["row_numbers"] == [5]
    assert warnings[("bad_row", "invalid_price")]["row_numbers"] == [6]
    assert warnings[("bad_row", "invalid_price")]["severity"] == "error"
    assert warnings[("missing_images", None)]["row_numbers"] == [7, 11]
    assert warnings[("duplicate_sku", "BS-1")]["row_numbers"] == [2, 4]
    assert images.total_hits() == 0  # a preview fetches nothing

    # The merchant unmaps price and images: the price problem and the image column change.
    import_id = draft["id"]
    patched = api.patch(f"/imports/{import_id}", {"mapping": {"name": "Product Name", "sku": "SKU"}})
    assert patched.status_code == 200, patched.json
    preview = patched.json["preview"]
    assert patched.json["mapping"]["price"] is None
    assert patched.json["mapping"]["image_urls"] == []
    assert preview["importable_rows"] == 11  # row 6 only had a bad price
    assert "price" not in preview["sample"][0]["values"]
    assert "image_urls" not in preview["sample"][0]["values"]
    warnings = _warnings(preview)
    assert ("bad_row", "invalid_price") not in warnings
    assert warnings[("missing_images", None)]["count"] == 11
    assert "no column is mapped to images" in warnings[("missing_images", None)]["message"]
    assert {key for key in warnings if key[0] == "unmapped_column"} == {
        ("unmapped_column", "Preis"),
        ("unmapped_column", "Bild URL"),
        ("unmapped_column", "Kategorie"),
        ("unmapped_column", "Beschreibung"),
    }
    assert api.import_(import_id)["preview"] == preview  # stored, not just answered

    # A mapping that names a column the file does not have.
    bad = api.patch(
        f"/imports/{import_id}", {"mapping": {"name": "Product Name", "price": "Cost", "image_urls": ["Photo"]}}
    )
    assert bad.status_code == 422, bad.json
    assert {e["field"] for e in bad.json["errors"]} == {"mapping.price", "mapping.image_urls.0"}
    assert api.import_(import_id)["preview"] == preview  # unchanged by the rejected mapping


def test_import_creates_products_and_images_once(stack: Any, client_id: str, images: ImageServer) -> None:
    api = Api(stack, client_id)
    data, expected = _catalog_csv(images)
    import_id = api.draft(data)["id"]

    started = api.start(import_id)
    assert started["status"] == "queued"
    chunks_total = math.ceil(expected["total_rows"] / CHUNK_ROWS)
    assert started["progress"]["chunks_total"] == chunks_total == 4
    queued = len(stack.dispatcher.history)
    again = api.start(import_id)  # a double click: same state, the chunk task is not queued twice
    assert again["status"] == "queued"
    assert again["progress"] == started["progress"]
    assert len(stack.dispatcher.history) == queued

    late = api.patch(f"/imports/{import_id}", {"mapping": {"name": "SKU"}})
    assert late.status_code == 409, late.json
    assert late.json["code"] == "import_not_editable"

    stack.run_tasks()
    done = api.import_(import_id)
    assert done["status"] == "completed"
    assert done["percent"] == 100.0
    assert done["finished_at"] is not None
    progress = done["progress"]
    assert progress == {
        "total_rows": 12,
        "processed_rows": 12,
        "created_products": expected["created"],
        "failed_rows": 2,
        "images_imported": expected["images"],
        "images_failed": 0,
        "chunks_total": chunks_total,
        "chunks_done": chunks_total,
        "chunks_failed": 0,
    }
    assert done["mapping"]["name"] == "Product Name"  # the refused PATCH changed nothing
    tasks = chunk_tasks(stack.dispatcher, import_id)
    assert sorted(tasks) == list(range(chunks_total))
    assert all(t.succeeded and t.outcomes == [200] for ts in tasks.values() for t in ts)

    # Products: right fields, source csv, their images.
    products = {p["id"]: p for p in api.products()}
    assert len(products) == expected["created"]
    by_name = {p["name"]: p for p in products.values()}
    assert len(by_name) == expected["created"]
    for sku, fields in expected["products"].items():
        if fields is None:
            continue
        name, price, category, description, image_count = fields
        product = by_name[name]
        assert product["sku"] == sku
        assert (product["name"], product["price"], product["category"]) == (name, price, category)
        assert product["description"] == description
        assert product["source"] == "csv"
        assert len(product["images"]) == image_count
    assert by_name["Blue Shirt"]["description"] == DESCRIPTION
    assert by_name["Blue Shirt"]["price"] == "19.99"
    assert by_name["Green Shirt"]["price"] == "1234.56"
    assert by_name["Green Shirt"]["sku"] == "BS-1"  # duplicate SKUs are imported, not merged
    assert "Cap" not in by_name
    assert "NN-1" not in {p["sku"] for p in products.values()}

    # Images: downloaded once each from the local server, stored as csv product_image assets.
    for path in expected["fetched"]:
        assert images.hits[path] == 1, path
    for path in expected["not_fetched"]:
        assert images.hits[path] == 0, path
    assets = api.assets()
    assert len(assets) == expected["images"]
    assert {a["kind"] for a in assets} == {"product_image"}
    assert {a["source"] for a in assets} == {"csv"}
    asset_ids = {a["id"] for a in assets}
    image_ids = {img["asset_id"] for p in products.values() for img in p["images"]}
    assert image_ids == asset_ids
    for asset in assets:
        assert asset["product_id"] in {p["id"] for p in products.values()}
        assert (asset["width"], asset["height"]) == (64, 48)
    blue = by_name["Blue Shirt"]["images"][0]
    stored = httpx.get(blue["url"], trust_env=False, timeout=10)
    assert stored.status_code == 200
    with Image.open(io.BytesIO(stored.content)) as img:
        assert img.size == (64, 48)

    # The report: one line per problem, with the spreadsheet row.
    report = api.report(import_id)
    assert [(r["row"], r["level"], r["code"]) for r in report] == [
        ("5", "error", "missing_name"),
        ("6", "error", "invalid_price"),
    ]
    assert "zwölf Euro" in report[1]["message"]

    # Redelivering a chunk task (a new task name, the same body) and starting again change nothing.
    counts = _db_counts(stack, client_id)
    assert counts == (expected["created"], expected["images"])
    hits = images.total_hits()
    original = tasks[1][0]
    assert stack.dispatcher.submit(queue=original.queue, name="another-name", url=original.url, body=original.body)
    assert stack.run_tasks() == 1
    assert stack.dispatcher.history[-1].outcomes == [200]
    restarted = api.start(import_id)
    assert restarted["status"] == "completed"
    assert restarted["progress"] == progress
    assert stack.run_tasks() == 0
    assert _db_counts(stack, client_id) == counts
    assert api.import_(import_id)["progress"] == progress
    assert images.total_hits() == hits
    assert len(api.report(import_id)) == 2


def _one_chunk_at_a_time(stack: Any) -> None:
    """IMPORT_PARALLEL_CHUNKS=1: each chunk queues the next one, so a test can stop between them."""
    platforms.install(stack, import_parallel_chunks=1)


def test_progress_is_readable_and_exact_across_a_crash(
    stack: Any, client_id: str, images: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _one_chunk_at_a_time(stack)
    api = Api(stack, client_id)
    data, expected = _catalog_csv(images)
    import_id = api.draft(data)["id"]
    api.start(import_id)
    dispatcher = stack.dispatcher

    # The worker dies after chunk 0 is recorded but before chunk 1 is queued.
    real_enqueue = dispatcher.enqueue
    crashed: list[int] = []

    def enqueue(task: Any) -> bool:
        if task.payload.chunk == 1 and not crashed:
            crashed.append(1)
            raise ConnectionError("worker killed before queueing the next chunk")
        return bool(real_enqueue(task))

    monkeypatch.setattr(dispatcher, "enqueue", enqueue)

    assert _deliver_one(dispatcher) == 1
    assert crashed
    chunk0 = chunk_tasks(dispatcher, import_id)[0][0]
    assert not chunk0.done and chunk0.outcomes[0] >= 500  # the queue will deliver it again
    mid = api.import_(import_id)
    assert mid["status"] == "running"
    assert mid["progress"]["processed_rows"] == CHUNK_ROWS
    assert mid["progress"]["chunks_done"] == 1
    assert mid["percent"] == 25.0

    assert _deliver_one(dispatcher) == 1  # the retry: chunk 0 is already recorded, chunk 1 gets queued
    assert chunk0.succeeded
    assert api.import_(import_id)["progress"] == mid["progress"]  # not counted twice
    assert 1 in chunk_tasks(dispatcher, import_id)

    assert _deliver_one(dispatcher) == 1  # chunk 1
    mid = api.import_(import_id)
    assert mid["status"] == "running"
    assert 0 < mid["progress"]["processed_rows"] == 2 * CHUNK_ROWS < mid["progress"]["total_rows"]
    assert mid["percent"] == 50.0

    # A duplicate of finished chunk 0 arrives while the import runs (after chunk 2, queued first).
    assert dispatcher.submit(queue=chunk0.queue, name="another-name", url=chunk0.url, body=chunk0.body)
    duplicate = dispatcher.history[-1]
    assert _deliver_one(dispatcher) == 1  # chunk 2
    mid = api.import_(import_id)
    assert mid["status"] == "running"
    assert mid["progress"]["processed_rows"] == 3 * CHUNK_ROWS
    counts = _db_counts(stack, client_id)
    hits = images.total_hits()
    assert _deliver_one(dispatcher) == 1  # the duplicate
    assert duplicate.outcomes == [200]
    assert api.import_(import_id)["progress"] == mid["progress"]
    assert _db_counts(stack, client_id) == counts
    assert images.total_hits() == hits

    stack.run_tasks()
    done = api.import_(import_id)
    assert done["status"] == "completed"
    assert done["progress"]["processed_rows"] == done["progress"]["total_rows"] == 12
    assert done["progress"]["created_products"] == expected["created"]
    assert done["progress"]["images_imported"] == expected["images"]
    assert _db_counts(stack, client_id) == (expected["created"], expected["images"])
    for path in expected["fetched"]:
        assert images.hits[path] == 1, path
    assert [(r["row"], r["code"]) for r in api.report(import_id)] == [("5", "missing_name"), ("6", "invalid_price")]


def _post_chunk(stack: Any, task: Any, name: str) -> None:
    """One delivery of a queued chunk task straight to the worker, as Cloud Tasks makes it."""
    from tests.conftest import TASK_SECRET

    headers = {
        "Authorization": f"Bearer {TASK_SECRET}",
        "Content-Type": "application/json",
        "X-CloudTasks-QueueName": task.queue,
        "X-CloudTasks-TaskName": name,
        "X-CloudTasks-TaskRetryCount": "0",
    }
    response = stack.client("catalog_tasks").post("/tasks/import-chunk", data=task.body, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)


def test_chunks_run_side_by_side_and_the_last_to_finish_completes_the_import(
    stack: Any, client_id: str, images: ImageServer
) -> None:
    """The default window queues every chunk of a small import at once; they may finish in any
    order, a redelivery is a no-op, and only when every chunk is recorded is the import done."""
    api = Api(stack, client_id)
    data, expected = _catalog_csv(images)
    import_id = api.draft(data)["id"]
    api.start(import_id)
    queued = chunk_tasks(stack.dispatcher, import_id)
    assert sorted(queued) == [0, 1, 2, 3]  # all four chunks are in flight at once

    for number in (3, 1, 0):  # out of order, each delivered twice
        for delivery in ("first", "again"):
            _post_chunk(stack, queued[number][0], f"{delivery}-{number}")
            running = api.import_(import_id)
            assert running["status"] == "running" and running["finished_at"] is None
    assert running["progress"]["chunks_done"] == 3
    assert running["progress"]["processed_rows"] == 3 * CHUNK_ROWS

    _post_chunk(stack, queued[2][0], "first-2")  # the last chunk to finish completes the import
    done = api.import_(import_id)
    assert done["status"] == "completed" and done["finished_at"] is not None
    assert done["progress"]["chunks_done"] == done["progress"]["chunks_total"] == 4
    assert done["progress"]["processed_rows"] == done["progress"]["total_rows"] == 12
    assert done["progress"]["created_products"] == expected["created"]
    assert _db_counts(stack, client_id) == (expected["created"], expected["images"])

    stack.run_tasks()  # the queue's own deliveries come late: nothing left to do (and the completion's event)
    assert sum(len(ts) for ts in chunk_tasks(stack.dispatcher, import_id).values()) == 4
    assert all(t.succeeded for ts in chunk_tasks(stack.dispatcher, import_id).values() for t in ts)
    assert api.import_(import_id) == done
    assert _db_counts(stack, client_id) == (expected["created"], expected["images"])
    assert [(r["row"], r["code"]) for r in api.report(import_id)] == [("5", "missing_name"), ("6", "invalid_price")]


def test_the_window_is_the_one_the_import_started_with(stack: Any, client_id: str, images: ImageServer) -> None:
    """The API that starts an import and the worker that runs it are separate functions: a worker
    configured (or redeployed) with another window still runs every chunk of the import."""
    api = Api(stack, client_id)
    data, expected = _catalog_csv(images)
    import_id = api.draft(data)["id"]
    platforms.install(stack, import_parallel_chunks=2)
    api.start(import_id)
    assert sorted(chunk_tasks(stack.dispatcher, import_id)) == [0, 1]
    platforms.install(stack, import_parallel_chunks=3)  # the worker's setting differs
    stack.run_tasks()
    done = api.import_(import_id)
    assert done["status"] == "completed"
    assert done["progress"]["chunks_done"] == done["progress"]["chunks_total"] == 4
    assert sorted(chunk_tasks(stack.dispatcher, import_id)) == [0, 1, 2, 3]
    assert _db_counts(stack, client_id) == (expected["created"], expected["images"])


def test_blocked_and_broken_image_urls_are_reported(stack: Any, client_id: str, images: ImageServer) -> None:
    api = Api(stack, client_id)
    loopback2 = f"http://127.0.0.2:{images.port2}/x.png"
    data = simple_csv(
        [
            ("Metadata", "M-1", "http://169.254.169.254/latest/meta-data"),  # row 2
            ("Other loopback", "L-2", loopback2),  # row 3
            ("Redirect", "R-1", images.url("/redirect-metadata")),  # row 4
            ("Html", "H-1", images.url("/page.html")),  # row 5
            ("Gone", "G-1", images.url("/missing.png")),  # row 6
            ("Fake", "F-1", images.url("/fake.png")),  # row 7
            ("Good", "OK-1", images.url("/img/ok.png")),  # row 8
            ("", "X-1", "ftp://example.com/x.png"),  # row 9: skipped (no name), plus a warning
        ]
    )
    done = api.run(data)
    assert done["status"] == "completed"
    progress = done["progress"]
    assert progress["processed_rows"] == 8
    assert progress["created_products"] == 7  # a bad image does not cost the product
    assert progress["failed_rows"] == 1
    assert progress["images_imported"] == 1
    assert progress["images_failed"] == 6

    report = api.report(done["id"])
    assert [(r["row"], r["level"], r["code"]) for r in report] == [
        ("2", "error", "url_not_allowed"),
        ("3", "error", "url_not_allowed"),
        ("4", "error", "url_not_allowed"),
        ("5", "error", "fetch_bad_content_type"),
        ("6", "error", "fetch_failed"),
        ("7", "error", "image_unreadable"),
        ("9", "error", "missing_name"),
        ("9", "warning", "invalid_image_url"),
    ]
    assert "169.254.169.254" in report[0]["message"]
    assert "127.0.0.2" in report[1]["message"]

    # Nothing blocked reached a server: the 127.0.0.2 twin saw nothing, the redirect was not followed.
    assert images.hits["/x.png"] == 0
    assert images.hits["/redirect-metadata"] == 1
    assert images.hits["/latest/meta-data/"] == 0
    assert images.hits["/page.html"] == images.hits["/missing.png"] == images.hits["/fake.png"] == 1

    products = api.products_by_sku()
    assert set(products) == {"M-1", "L-2", "R-1", "H-1", "G-1", "F-1", "OK-1"}
    assert {sku for sku, p in products.items() if p["images"]} == {"OK-1"}
    assets = api.assets()
    assert [a["product_id"] for a in assets] == [products["OK-1"]["id"]]


def test_default_address_policy_refuses_loopback(stack: Any, client_id: str, images: ImageServer) -> None:
    """Production's fetcher (no extra networks) must not reach 127.0.0.1, even though tests may."""
    from shared.platform import Platform, set_platform
    from shared.safe_fetch import SafeFetcher

    base = stack.platform
    fetcher = SafeFetcher()
    strict = Platform(
        base.settings, db=base.db, object_store=base.object_store, task_queue=stack.dispatcher, fetcher=fetcher
    )
    set_platform(strict)
    try:
        api = Api(stack, client_id)
        done = api.run(simple_csv([("Local", "LO-1", images.url("/img/local.png"))]))
    finally:
        set_platform(base)
        fetcher.close()
    assert done["status"] == "completed"
    assert done["progress"]["created_products"] == 1
    assert done["progress"]["images_failed"] == 1
    assert [(r["row"], r["code"]) for r in api.report(done["id"])] == [("2", "url_not_allowed")]
    assert images.total_hits() == 0
    assert api.assets() == []


def test_transient_image_failures_are_retried(stack: Any, client_id: str, images: ImageServer) -> None:
    api = Api(stack, client_id)
    data = simple_csv(
        [
            ("Steady", "S-1", images.url("/img/steady.png")),  # row 2, chunk 0
            ("Flaky", "F-1", images.url("/flaky/2/a.png")),  # row 3, chunk 0: 503, 503, then the image
            ("Later", "L-1", images.url("/img/later.png")),  # row 4, chunk 0
            ("Next", "N-1", images.url("/img/next.png")),  # row 5, chunk 1
        ]
    )
    done = api.run(data)
    assert done["status"] == "completed"
    assert done["progress"]["created_products"] == 4
    assert done["progress"]["images_imported"] == 4
    assert done["progress"]["images_failed"] == 0
    assert api.report(done["id"]) == []

    tasks = chunk_tasks(stack.dispatcher, done["id"])
    first = tasks[0][0]
    assert first.succeeded
    # The chunk was retried by the queue (or the fetch retried in place): 2 failures, then the image.
    assert images.hits["/flaky/2/a.png"] == 3
    assert first.outcomes[-1] == 200
    # Work already done when the chunk was retried is not repeated nor duplicated.
    assert images.hits["/img/steady.png"] == images.hits["/img/later.png"] == images.hits["/img/next.png"] == 1
    products = api.products_by_sku()
    assert set(products) == {"S-1", "F-1", "L-1", "N-1"}
    assert all(len(p["images"]) == 1 for p in products.values())
    assert _db_counts(stack, client_id) == (4, 4)


def test_image_that_keeps_failing_is_reported_with_its_row(stack: Any, client_id: str, images: ImageServer) -> None:
    api = Api(stack, client_id)
    data = simple_csv(
        [
            ("Fine", "OK-1", images.url("/img/fine.png")),  # row 2
            ("Down", "D-1", images.url("/flaky/1000/down.png")),  # row 3: always 503
        ]
    )
    done = api.run(data)
    assert done["status"] == "completed"
    task = chunk_tasks(stack.dispatcher, done["id"])[0][0]
    assert task.succeeded and len(task.outcomes) == stack.platform.settings.tasks_max_attempts
    assert images.hits["/img/fine.png"] == 1
    assert done["progress"]["created_products"] == 2
    assert done["progress"]["images_imported"] == 1
    assert done["progress"]["images_failed"] == 1
    assert [(r["row"], r["level"], r["code"]) for r in api.report(done["id"])] == [
        ("3", "error", "fetch_temporarily_failed")
    ]


def test_png_uploaded_as_csv_is_refused(stack: Any, client_id: str) -> None:
    api = Api(stack, client_id)
    upload_id, completed = api.upload(_image_bytes("PNG", "not-a-csv"), filename="products.csv")
    assert completed.status_code == 422, completed.json
    assert completed.json["code"] == "csv_unreadable"
    assert "PNG" in completed.json["detail"]
    upload = api.get(f"/uploads/{upload_id}")
    assert upload.json["status"] == "rejected"
    assert upload.json["rejection"]["code"] == "csv_unreadable"
    again = api.post(f"/uploads/{upload_id}/complete")
    assert (again.status_code, again.json["code"]) == (422, "csv_unreadable")  # asked again: same answer
    created = api.post("/imports", {"upload_id": upload_id})
    assert created.status_code == 409, created.json
    assert api.products() == []
    assert _db_counts(stack, client_id) == (0, 0)
    imports = stack.platform.db.collection("clients").document(client_id).collection("imports").stream()
    assert list(imports) == []


# -- encodings, delimiters and large previews -----------------------------------------------------

ENCODED_FILES = {
    # Central European Windows: read as cp1252 (the old assumption) "ť" is not even defined.
    "cp1250": "Name;Cena;Popis\nŽluťoučký kůň;120,50;Příliš žluťoučký kůň úpěl ďábelské ódy\nČeská myš;15;Šťastná\n",
    "mac_roman": "Name;Preis;Beschreibung\nCafé crème;4,50;Größe: groß, süß\nBäckerei Müller;2,00;Brötchen\n",
    "shift_jis": "Name,価格,説明\n緑茶,500,静岡県産の高品質な緑茶です\n抹茶ラテ,650,香り高い抹茶\n",
}


@pytest.mark.parametrize(
    ("codec", "reported"), [("cp1250", "cp1250"), ("mac_roman", "mac-roman"), ("shift_jis", "shift_jis")]
)
def test_files_in_other_encodings_are_previewed_and_imported_as_written(
    stack: Any, client_id: str, codec: str, reported: str
) -> None:
    api = Api(stack, client_id)
    source = ENCODED_FILES[codec]
    delimiter = "," if codec == "shift_jis" else ";"
    lines = [line.split(delimiter) for line in source.splitlines()]
    draft = api.draft(source.encode(codec))
    preview = draft["preview"]
    assert (preview["encoding"], draft["encoding"]) == (reported, None)  # detected, not chosen
    assert preview["headers"] == lines[0]
    assert preview["mapping"]["name"] == lines[0][0]
    assert [row["values"]["name"] for row in preview["sample"]] == [lines[1][0], lines[2][0]]
    api.start(draft["id"])
    stack.run_tasks()
    assert api.import_(draft["id"])["status"] == "completed"
    assert sorted(p["name"] for p in api.products()) == sorted([lines[1][0], lines[2][0]])


def test_encoding_and_delimiter_can_be_chosen(stack: Any, client_id: str) -> None:
    api = Api(stack, client_id)
    data = "Name;Notiz\nCafé;a,b\nTasse;c,d\n".encode("cp1252")
    upload_id, completed = api.upload(data)
    assert completed.status_code == 200

    for body, field_name in (
        ({"encoding": "klingon"}, "encoding"),
        ({"encoding": "base64"}, "encoding"),
        ({"delimiter": "ab"}, "delimiter"),
        ({"delimiter": "x"}, "delimiter"),
    ):
        refused = problem(api.post("/imports", {"upload_id": upload_id, **body}), 422, "validation_failed")
        assert [e["field"] for e in refused["errors"]] == [field_name]

    chosen = api.post("/imports", {"upload_id": upload_id, "encoding": "mac_roman"})
    assert chosen.status_code == 201, chosen.json
    assert (chosen.json["encoding"], chosen.json["preview"]["encoding"]) == ("mac-roman", "mac-roman")
    assert chosen.json["preview"]["sample"][0]["values"]["name"] == "Caf\u00c8"  # as the merchant asked
    import_id = chosen.json["id"]

    # Back to detection, and another delimiter: the columns change, so the mapping is detected anew.
    patched = api.patch(f"/imports/{import_id}", {"encoding": None, "delimiter": ","})
    assert patched.status_code == 200, patched.json
    assert (patched.json["encoding"], patched.json["delimiter"]) == (None, ",")
    preview = patched.json["preview"]
    assert (preview["encoding"], preview["delimiter"]) == ("cp1252", ",")
    assert preview["headers"] == ["Name;Notiz"]
    assert preview["sample"][0]["values"]["name"] == "Café;a"
    assert api.import_(import_id)["delimiter"] == ","  # stored

    problem(api.patch(f"/imports/{import_id}", {"encoding": "no-such-codec"}), 422, "validation_failed")
    problem(api.patch(f"/imports/{import_id}", {}), 422, "validation_failed")
    # The delimiter back to detection: the original columns and a mapping that fits them.
    patched = api.patch(f"/imports/{import_id}", {"delimiter": None})
    assert patched.json["preview"]["headers"] == ["Name", "Notiz"]
    assert patched.json["mapping"]["name"] == "Name"
    api.start(import_id)
    stack.run_tasks()
    assert sorted(p["name"] for p in api.products()) == ["Café", "Tasse"]


def test_a_shopify_export_with_long_descriptions_gets_a_stored_preview(stack: Any, client_id: str) -> None:
    """10 products with ~90 KB of Body (HTML) each: the full preview was over Firestore's 1 MiB (a 500)."""
    body = "<p>" + "Handmade stoneware, glazed by hand; " * 2_500 + "</p>"
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["Handle", "Title", "Body (HTML)", "Variant SKU"])
    writer.writerows([f"mug-{i}", f"Mug {i}", body, f"MUG-{i}"] for i in range(10))
    data = buffer.getvalue().encode()
    assert len(data) > 900_000
    api = Api(stack, client_id)
    draft = api.draft(data)
    preview = draft["preview"]
    assert len(preview["sample"]) == 10
    assert all(row["truncated"] for row in preview["sample"])
    assert len(preview["sample"][0]["values"]["description"]) == 1_000
    assert preview["notes"]
    assert api.import_(draft["id"])["preview"] == preview  # stored
    api.start(draft["id"])
    stack.run_tasks()
    done = api.import_(draft["id"])
    assert (done["status"], done["progress"]["created_products"]) == ("completed", 10)
    assert {len(p["description"]) for p in api.products()} == {20_000}  # the product's own limit


# -- bounded chunks: a time budget, failures that end, lost tasks ---------------------------------


def test_a_slow_image_host_cannot_hold_a_chunk_delivery_past_its_budget(
    stack: Any, client_id: str, images: ImageServer
) -> None:
    budget, delay = 1.0, 0.4
    platform = platforms.install(stack, import_chunk_budget_seconds=budget, import_parallel_chunks=1)
    api = Api(stack, client_id)
    # Two chunks (3 rows + 1 row) of 3 images each; a chunk took 9 x 0.4 s = 3.6 s in one delivery.
    rows = [
        (f"Slow {r}", f"S-{r}", " ".join(images.url(f"/slow/{int(delay * 1000)}/{r}-{k}.png") for k in range(3)))
        for r in range(4)
    ]
    import_id = api.draft(simple_csv(rows))["id"]
    api.start(import_id)

    durations: list[float] = []
    seen: list[dict[str, Any]] = []
    while True:
        started = time.monotonic()
        if not _deliver_one(stack.dispatcher):
            break
        durations.append(time.monotonic() - started)
        seen.append(api.import_(import_id)["progress"])
    # No delivery starts a download after its budget: it ends within the budget and one download.
    assert max(durations) < budget + delay + 0.5, durations
    # Progress shows while the first chunk is still in its parts.
    assert any(0 < p["processed_rows"] < 3 and p["chunks_done"] == 0 for p in seen), seen

    done = api.import_(import_id)
    assert done["status"] == "completed"
    assert done["progress"]["processed_rows"] == done["progress"]["created_products"] == 4
    assert (done["progress"]["images_imported"], done["progress"]["images_failed"]) == (12, 0)
    assert all(count == 1 for path, count in images.hits.items() if path.startswith("/slow/"))
    assert len(api.assets()) == 12 and api.report(import_id) == []
    tasks = [t for ts in chunk_tasks(stack.dispatcher, import_id).values() for t in ts]
    assert len(tasks) > 2  # the chunks went on in tasks of their own
    deadline = float(platform.settings.catalog_tasks_timeout_seconds)
    assert {t.dispatch_deadline for t in tasks} == {deadline}  # Cloud Tasks waits as long as the worker may run


class _CrashingFetcher:
    """The stack's fetcher, except that a URL with /crash/ in it makes the worker itself fail (a bug,
    an out-of-memory kill): what happens is not an image error but an exception out of the chunk."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def fetch(self, url: str, **kwargs: Any) -> Any:
        if "/crash/" in url:
            raise RuntimeError("the worker crashed")
        return self.inner.fetch(url, **kwargs)


def _platform_with(stack: Any, *, fetcher: Any = None, db: Any = None, **settings: Any) -> None:
    """The stack's platform with another fetcher or Firestore client (and settings)."""
    from shared.platform import Platform, set_platform

    base = stack.platform
    set_platform(
        Platform(
            base.settings.model_copy(update=settings),
            db=db or base.db,
            object_store=base.object_store,
            task_queue=stack.dispatcher,
            fetcher=fetcher or base.fetcher,
            ledger=base.ledger,
        )
    )


def _refusing_product_writes() -> Any:
    """A Firestore client (of the tests' project) whose commits that write products fail unanswered,
    as when the database refuses them: every attempt to create a chunk's products fails."""
    from google.api_core.exceptions import ServiceUnavailable
    from google.cloud import firestore
    from google.cloud.firestore_v1.batch import WriteBatch

    from tests.conftest import PROJECT

    class Refusing(WriteBatch):
        def commit(self, *args: Any, **kwargs: Any) -> Any:
            if any("/products/" in write.update.name for write in self._write_pbs):
                raise ServiceUnavailable("the database refused the write")
            return super().commit(*args, **kwargs)

    class Client(firestore.Client):
        def batch(self) -> Any:
            return Refusing(self)

    return Client(project=PROJECT)


def test_a_chunk_that_fails_every_attempt_is_recorded_failed_and_the_import_goes_on(
    stack: Any, client_id: str, images: ImageServer
) -> None:
    _platform_with(stack, fetcher=_CrashingFetcher(stack.platform.fetcher), import_parallel_chunks=1)
    api = Api(stack, client_id)
    data = simple_csv(
        [
            ("A", "A-1", images.url("/img/a.png")),  # chunk 0: rows 2-4
            ("B", "B-1", images.url("/img/b.png")),
            ("C", "C-1", images.url("/img/c.png")),
            ("D", "D-1", images.url("/img/d.png")),  # chunk 1: rows 5-7, row 6 crashes the worker
            ("E", "E-1", images.url("/crash/e.png")),
            ("F", "F-1", images.url("/img/f.png")),
            ("G", "G-1", images.url("/img/g.png")),  # chunk 2: row 8, after the failed chunk
        ]
    )
    done = api.run(data)
    assert done["status"] == "completed"
    progress = done["progress"]
    assert (progress["chunks_done"], progress["chunks_failed"], progress["processed_rows"]) == (3, 1, 7)
    # Chunk 1's products exist (created before the crash), and so does the image stored before it.
    assert progress["created_products"] == 7
    assert (progress["images_imported"], progress["images_failed"]) == (5, 2)
    task = chunk_tasks(stack.dispatcher, done["id"])[1][0]
    assert len(task.outcomes) == stack.platform.settings.tasks_max_attempts and task.succeeded
    report = api.report(done["id"])
    assert [(r["row"], r["code"]) for r in report] == [("6", "import_chunk_failed"), ("7", "import_chunk_failed")]
    assert "every attempt" in report[0]["message"]
    assert images.hits["/img/g.png"] == 1  # the chain went on past the failed chunk


def test_an_import_whose_every_chunk_failed_ends_failed(stack: Any, client_id: str) -> None:
    api = Api(stack, client_id)
    import_id = api.draft(simple_csv([("A", "A-1", ""), ("B", "B-1", "")]))["id"]
    _platform_with(stack, db=_refusing_product_writes())
    api.start(import_id)
    stack.run_tasks()
    done = api.import_(import_id)
    assert done["status"] == "failed"
    assert done["failure"] and done["finished_at"]
    assert done["progress"]["chunks_failed"] == done["progress"]["chunks_total"] == 1
    assert done["progress"]["failed_rows"] == done["progress"]["processed_rows"] == 2
    report = api.report(import_id)
    assert [(r["row"], r["code"]) for r in report] == [("2", "import_chunk_failed"), ("3", "import_chunk_failed")]
    assert "every attempt" in report[0]["message"]
    assert api.products() == []


def _reap(stack: Any, client_id: str, now: Any, **kwargs: Any) -> Any:
    """The scheduled reaper as of ``now``, for this test's client only (the emulator is shared)."""
    from shared.adapters.firestore.catalog import firestore_catalog
    from shared.catalog.imports import reap_stuck_imports
    from shared.catalog.policies import import_policy

    p = stack.platform
    policy = import_policy(p.settings)
    return reap_stuck_imports(
        firestore_catalog(p.db), p.object_store, p.task_queue, policy, now, client_id=client_id, **kwargs
    )


def _losing(monkeypatch: pytest.MonkeyPatch, dispatcher: Any, chunk: int, times: int) -> list[str]:
    """The next ``times`` enqueues of ``chunk``'s tasks are lost (accepted, never delivered)."""
    real = dispatcher.enqueue
    lost: list[str] = []

    def enqueue(task: Any) -> bool:
        if task.path == "/tasks/import-chunk" and task.payload.chunk == chunk and len(lost) < times:
            lost.append(str(task.name))
            return True
        return bool(real(task))

    monkeypatch.setattr(dispatcher, "enqueue", enqueue)
    return lost


def test_the_reaper_enqueues_a_lost_chunk_again_and_gives_up_on_one_that_never_runs(
    stack: Any, client_id: str, images: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:

    _one_chunk_at_a_time(stack)
    api = Api(stack, client_id)
    data, expected = _catalog_csv(images)  # 4 chunks
    stale = timedelta(minutes=stack.platform.settings.import_stale_minutes)

    # Chunk 1's task is lost once: the import stalls after chunk 0.
    lost = _losing(monkeypatch, stack.dispatcher, 1, 1)
    import_id = api.draft(data)["id"]
    api.start(import_id)
    stack.run_tasks()
    assert lost and api.import_(import_id)["progress"]["chunks_done"] == 1
    now = datetime.now(UTC)
    assert _reap(stack, client_id, now + stale / 2).chunks_requeued == {}  # not stale yet
    report = _reap(stack, client_id, now + stale + timedelta(minutes=1))
    assert report.chunks_requeued == {client_id: [f"{import_id}/1"]}
    stack.run_tasks()
    done = api.import_(import_id)
    assert (done["status"], done["progress"]["chunks_failed"]) == ("completed", 0)
    assert done["progress"]["created_products"] == expected["created"]

    # A chunk whose task is lost every time: re-enqueued twice, then recorded as failed.
    monkeypatch.undo()
    lost = _losing(monkeypatch, stack.dispatcher, 2, 10)
    other = Api(stack, client_id).draft(data)["id"]
    api.start(other)
    stack.run_tasks()
    clock = datetime.now(UTC)
    outcomes = []
    for _ in range(3):
        clock += stale + timedelta(minutes=1)
        outcomes.append(_reap(stack, client_id, clock))
        stack.run_tasks()
    assert [r.chunks_requeued.get(client_id) for r in outcomes] == [[f"{other}/2"], [f"{other}/2"], None]
    assert outcomes[2].chunks_failed == {client_id: [f"{other}/2"]}
    assert len(lost) == 3  # the first task and both re-enqueues
    done = api.import_(other)
    assert done["status"] == "completed"
    assert (done["progress"]["chunks_done"], done["progress"]["chunks_failed"]) == (4, 1)
    assert done["progress"]["processed_rows"] == 12
    failed = [r for r in api.report(other) if r["code"] == "import_chunk_failed"]
    assert [r["row"] for r in failed] == ["8", "9", "10"]  # chunk 2: spreadsheet rows 8-10
    assert "task was lost" in failed[0]["message"]
    assert _reap(stack, client_id, clock + 2 * stale).imports_checked == 0  # finished: nothing left


def test_the_reaper_goes_on_after_an_import_it_cannot_fix(
    stack: Any, client_id: str, images: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Old stuck work must not starve new work: with a limit of one import per run, an import that
    fails every run (a corrupt document) does not keep the reaper from the next one."""

    _losing(monkeypatch, stack.dispatcher, 0, 10)
    api = Api(stack, client_id)
    broken, stuck = (api.draft(simple_csv([("A", "A-1", "")]))["id"] for _ in range(2))
    api.start(broken)
    api.start(stuck)
    monkeypatch.undo()
    imports = stack.platform.db.collection("clients").document(client_id).collection("imports")
    imports.document(broken).update({"progress": "not a progress"})
    try:
        clock = datetime.now(UTC) + timedelta(minutes=stack.platform.settings.import_stale_minutes + 1)
        first = _reap(stack, client_id, clock, limit=1)
        assert (first.failed, first.chunks_requeued, first.more) == ({client_id: "corrupt_document"}, {}, True)
        second = _reap(stack, client_id, clock, limit=1)
        assert second.chunks_requeued == {client_id: [f"{stuck}/0"]}
        stack.run_tasks()
        assert api.import_(stuck)["status"] == "completed"
    finally:
        imports.document(broken).delete()  # the emulator is shared: no corrupt import for others' reapers


def test_the_import_reaper_answers_only_the_scheduler(stack: Any, client_id: str) -> None:
    from tests.conftest import TASK_SECRET

    # A clock long ago: the run (across every client of the shared emulator) finds nothing stale.
    platforms.install(stack, clock=lambda: datetime(2001, 1, 1, tzinfo=UTC))
    worker = stack.client("catalog_tasks")
    assert worker.post("/jobs/reap-stuck-imports", headers=stack.headers(client_id)).status_code in (401, 403)
    reaped = worker.post("/jobs/reap-stuck-imports", headers={"Authorization": f"Bearer {TASK_SECRET}"})
    assert reaped.status_code == 200, reaped.json
    assert reaped.json["imports_checked"] == 0
    assert {"chunks_requeued", "chunks_failed", "failed", "more"} <= set(reaped.json)
