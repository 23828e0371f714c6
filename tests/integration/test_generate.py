"""Generation jobs end to end: the generate API, its Cloud Tasks workers (fan-out, item, settle)
delivered by the local dispatcher, the credit ledger, Firestore and the object store.

The engine is the offline compositor, wrapped by the scripted test engines of :mod:`tests.engines`
where a test needs failures, crashes or a record of what the engine was sent.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.engines.base import ImageRequest, output_dimensions
from shared.generation import jobs as jobs_module
from shared.tasks import SETTLE_WINDOW_SECONDS
from tests import images
from tests.catalog_helpers import make_product, problem, product_doc, upload_image
from tests.engines import CrashingEngine, ScriptedEngine
from tests.platforms import expire_idempotency_records, grant, install

GRANT = 100

# -- fixtures and helpers -----------------------------------------------------------------------------


@pytest.fixture
def credits_api(stack: Any) -> Any:
    return stack.client("credits_api")


@pytest.fixture
def other_headers(stack: Any, other_client_id: str) -> dict[str, str]:
    minted: dict[str, str] = stack.headers(other_client_id)
    return minted


@pytest.fixture
def engine(stack: Any) -> ScriptedEngine:
    scripted = ScriptedEngine()
    install(stack, engine=scripted)
    return scripted


@pytest.fixture
def unit(credits_api: Any, headers: dict[str, str]) -> int:
    """The configured price of one 1K image."""
    response = credits_api.get("/prices", headers=headers)
    assert response.status_code == 200, response.json
    price: int = response.json["operations"]["generate_image"]["1K"]
    assert price > 0
    return price


def create(gen: Any, headers: dict[str, str], body: dict[str, Any], key: str | None = None) -> Any:
    sent = {**headers, "Idempotency-Key": key} if key else headers
    return gen.post("/jobs", json=body, headers=sent)


def accepted(response: Any) -> dict[str, Any]:
    assert response.status_code == 202, response.json
    body: dict[str, Any] = response.json
    return body


def get_job(gen: Any, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    response = gen.get(f"/jobs/{job_id}", headers=headers)
    assert response.status_code == 200, response.json
    body: dict[str, Any] = response.json
    return body


def all_items(gen: Any, headers: dict[str, str], job_id: str) -> list[dict[str, Any]]:
    response = gen.get(f"/jobs/{job_id}/items?limit=100", headers=headers)
    assert response.status_code == 200, response.json
    assert response.json["next_cursor"] is None
    items: list[dict[str, Any]] = response.json["items"]
    return items


def balance(credits_api: Any, headers: dict[str, str]) -> dict[str, Any]:
    response = credits_api.get("/balance", headers=headers)
    assert response.status_code == 200, response.json
    body: dict[str, Any] = response.json
    return body


def funds(credits_api: Any, headers: dict[str, str]) -> tuple[int, int]:
    """(available, reserved) credits, as the credits API shows them."""
    body = balance(credits_api, headers)
    return body["available"], body["reserved"]


def history(credits_api: Any, headers: dict[str, str]) -> list[dict[str, Any]]:
    response = credits_api.get("/history?limit=100", headers=headers)
    assert response.status_code == 200, response.json
    entries: list[dict[str, Any]] = response.json["items"]
    return sorted(entries, key=lambda e: e["seq"])


def ledger_moves(credits_api: Any, headers: dict[str, str]) -> list[tuple[str, int]]:
    """(type, amount) of every non-grant entry, oldest first."""
    return [(e["type"], e["amount"]) for e in history(credits_api, headers) if e["type"] != "grant"]


def job_assets(stack: Any, client_id: str, job_id: str) -> list[dict[str, Any]]:
    from google.cloud.firestore import FieldFilter

    ref = stack.platform.db.collection("clients").document(client_id).collection("assets")
    return [s.to_dict() for s in ref.where(filter=FieldFilter("job_id", "==", job_id)).stream()]


def job_ref(stack: Any, client_id: str, job_id: str) -> Any:
    return stack.platform.db.collection("clients").document(client_id).collection("jobs").document(job_id)


def counter_docs(stack: Any, client_id: str, job_id: str) -> list[dict[str, Any]]:
    return [s.to_dict() for s in job_ref(stack, client_id, job_id).collection("counters").stream()]


def tasks_of(stack: Any, job_id: str, path: str) -> list[Any]:
    """The dispatcher's record of the job's tasks to ``path`` (/tasks/fanout, /tasks/item, /tasks/settle)."""
    return [t for t in stack.dispatcher.history if t.url.endswith(path) and json.loads(t.body)["job_id"] == job_id]


def item_task(stack: Any, job_id: str, index: int) -> Any:
    found = [t for t in tasks_of(stack, job_id, "/tasks/item") if json.loads(t.body)["index"] == index]
    assert len(found) == 1, found
    return found[0]


def prompt_items(*prompts: str) -> list[dict[str, Any]]:
    return [{"prompt": p} for p in prompts]


# -- end to end ------------------------------------------------------------------------------------


def test_job_end_to_end_reserves_generates_stores_and_captures(
    stack: Any,
    gen: Any,
    catalog: Any,
    credits_api: Any,
    headers: dict[str, str],
    client_id: str,
    engine: ScriptedEngine,
    unit: int,
) -> None:
    grant(stack, client_id, GRANT)
    photo = images.png((320, 240))
    vase = make_product(catalog, headers, "Ceramic Vase", category="Home", description="Hand-thrown stoneware vase")
    vase_image = upload_image(stack, catalog, headers, client_id, vase, photo)
    shirt = make_product(catalog, headers, "Linen Shirt", category="Apparel")

    body = {
        "items": [
            {"product_id": vase, "image_asset_ids": [vase_image]},
            {"product_id": shirt},
            {"prompt": "a ceramic mug on an oak desk"},
        ],
        "style": "lifestyle",
        "prompt": "morning light",
        "negative_prompt": "text, watermark",
        "aspect_ratio": "4:5",
        "size": "1K",
        "variants": 2,
    }
    response = create(gen, headers, body)
    job = accepted(response)
    job_id = job["id"]
    assert response.headers["Location"] == f"/jobs/{job_id}"
    assert job["cost"] == 3 * 2 * unit
    assert job["unit_price"] == unit
    assert job["status"] == "queued"
    assert job["item_count"] == 3 and job["variants"] == 2
    assert job["counts"] == {"queued": 3, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}
    assert engine.requests == []  # accepted at once: nothing generated inside the request

    assert funds(credits_api, headers) == (GRANT - job["cost"], job["cost"])

    stack.run_tasks()

    done = get_job(gen, headers, job_id)
    assert done["status"] == "completed"
    assert done["counts"] == {"queued": 0, "running": 0, "succeeded": 3, "failed": 0, "cancelled": 0}
    assert done["progress"] == 1.0
    assert done["images_succeeded"] == 6 and done["images_failed"] == 0
    assert done["settlement"] == {"captured": 6 * unit, "released": 0}
    assert done["finished_at"] is not None

    items = all_items(gen, headers, job_id)
    assert [i["index"] for i in items] == [0, 1, 2]
    assert [i["product_id"] for i in items] == [vase, shirt, None]
    assert all(i["status"] == "succeeded" and i["failure"] is None for i in items)
    assert all(len(i["asset_ids"]) == 2 for i in items)
    item_assets = {aid: i for i in items for aid in i["asset_ids"]}
    assert len(item_assets) == 6

    # Image-to-image: the vase's uploaded photo went to the engine; the others were text-to-image.
    stored_photo = stack.platform.object_store.get(product_doc(stack, client_id, vase)["images"][0]["key"])
    vase_requests = [r for r in engine.requests if "Ceramic Vase" in r.prompt]
    assert len(vase_requests) == 2
    for request in vase_requests:
        assert len(request.images) == 1
        assert request.images[0].data == stored_photo
        assert images.decode(request.images[0].data).size == (320, 240)
        assert "Keep the product exactly as it appears" in request.prompt
    assert all(not r.images for r in engine.requests if "Ceramic Vase" not in r.prompt)
    assert len({r.seed for r in engine.requests}) == 6  # each variant its own seed

    assets = {a["id"]: a for a in job_assets(stack, client_id, job_id)}
    assert set(assets) == set(item_assets)
    store = stack.platform.object_store
    width, height = output_dimensions("4:5", "1K")
    for asset_id, asset in assets.items():
        item = item_assets[asset_id]
        assert asset["kind"] == "generated"
        assert asset["job_id"] == job_id
        assert asset["product_id"] == item["product_id"]
        meta = asset["metadata"]
        assert meta["engine"] == "offline" and meta["offline"] is True
        assert meta["model"] == "offline-compositor-1"
        assert meta["style"] == "lifestyle"
        assert meta["size"] == "1K" and meta["aspect_ratio"] == "4:5"
        assert meta["negative_prompt"] == "text, watermark"
        assert meta["item_index"] == item["index"]
        assert "morning light" in meta["prompt"]
        assert meta["input_asset_ids"] == ([vase_image] if item["product_id"] == vase else [])
        if item["product_id"] == vase:
            assert "Ceramic Vase" in meta["prompt"] and "Hand-thrown stoneware vase" in meta["prompt"]
        if item["product_id"] is None:
            assert "a ceramic mug on an oak desk" in meta["prompt"]
        assert asset["content_type"] == "image/png"
        assert asset["key"].endswith(".png")
        full = images.decode(store.get(asset["key"]))
        assert full.format == "PNG"
        assert full.size == (width, height) == (asset["width"], asset["height"])
        thumb = images.decode(store.get(asset["thumbnail_key"]))
        assert thumb.format == "WEBP"
        assert max(thumb.size) <= 512
        assert thumb.size[0] < width
    assert sorted(a["metadata"]["variant"] for a in assets.values()) == [0, 0, 0, 1, 1, 1]

    assert funds(credits_api, headers) == (GRANT - 6 * unit, 0)
    entries = [e for e in history(credits_api, headers) if e["type"] != "grant"]
    assert [(e["type"], e["amount"]) for e in entries] == [("reserve", 6 * unit), ("capture", 6 * unit)]
    assert entries[0]["hold_id"] == entries[1]["hold_id"]
    assert entries[0]["operation"] == "generate_image"
    assert job_id in entries[0]["purpose"]


def test_permanent_and_blocked_items_fail_alone_and_are_refunded(
    stack: Any, gen: Any, credits_api: Any, headers: dict[str, str], client_id: str, engine: ScriptedEngine, unit: int
) -> None:
    grant(stack, client_id, GRANT)
    job = accepted(
        create(
            gen,
            headers,
            {
                "items": prompt_items("a red kettle", "FAIL me", "BLOCK me", "a blue kettle"),
                "variants": 2,
                "aspect_ratio": "21:9",
            },
        )
    )
    stack.run_tasks()

    done = get_job(gen, headers, job["id"])
    assert done["status"] == "completed"
    assert done["counts"] == {"queued": 0, "running": 0, "succeeded": 2, "failed": 2, "cancelled": 0}
    assert done["images_succeeded"] == 4 and done["images_failed"] == 4
    assert done["settlement"] == {"captured": 4 * unit, "released": 4 * unit}

    items = all_items(gen, headers, job["id"])
    assert [i["status"] for i in items] == ["succeeded", "failed", "failed", "succeeded"]
    failed, blocked = items[1], items[2]
    assert failed["asset_ids"] == [] and failed["failed_variants"] == 2
    assert failed["failure"]["code"] == "generation_failed"
    assert "without an image" in failed["failure"]["message"]
    assert failed["failure"]["retryable"] is False
    assert blocked["failure"]["code"] == "content_blocked"
    assert blocked["asset_ids"] == []
    assert len(job_assets(stack, client_id, job["id"])) == 4
    # A permanent failure is not retried: one delivery for each item task.
    assert all(t.outcomes == [200] for t in tasks_of(stack, job["id"], "/tasks/item"))
    assert len(engine.calls_with("FAIL")) == 2

    assert funds(credits_api, headers) == (GRANT - 4 * unit, 0)
    assert ledger_moves(credits_api, headers) == [("reserve", 8 * unit), ("capture", 4 * unit), ("release", 4 * unit)]


def test_transient_failure_is_retried_through_the_queue_and_charged_once(
    stack: Any, gen: Any, credits_api: Any, headers: dict[str, str], client_id: str, engine: ScriptedEngine, unit: int
) -> None:
    grant(stack, client_id, GRANT)
    job = accepted(create(gen, headers, {"items": prompt_items("FLAKY:2 a teapot", "a cup"), "aspect_ratio": "21:9"}))
    stack.run_tasks()

    flaky = item_task(stack, job["id"], 0)
    assert flaky.outcomes == [503, 503, 200]
    assert item_task(stack, job["id"], 1).outcomes == [200]
    items = all_items(gen, headers, job["id"])
    assert [i["status"] for i in items] == ["succeeded", "succeeded"]
    assert len(items[0]["asset_ids"]) == 1
    assert len(job_assets(stack, client_id, job["id"])) == 2
    doc = job_ref(stack, client_id, job["id"]).collection("items").document("000000").get().to_dict()
    assert doc["attempts"] == 3
    assert get_job(gen, headers, job["id"])["settlement"] == {"captured": 2 * unit, "released": 0}
    assert ledger_moves(credits_api, headers) == [("reserve", 2 * unit), ("capture", 2 * unit)]


def test_engine_down_gives_up_after_max_attempts_and_releases(
    stack: Any, gen: Any, credits_api: Any, headers: dict[str, str], client_id: str, engine: ScriptedEngine, unit: int
) -> None:
    grant(stack, client_id, GRANT)
    max_attempts = stack.platform.settings.tasks_max_attempts
    job = accepted(
        create(gen, headers, {"items": prompt_items("DOWN a lamp", "a chair"), "variants": 2, "aspect_ratio": "21:9"})
    )
    stack.run_tasks()

    down = item_task(stack, job["id"], 0)
    assert down.outcomes == [503] * (max_attempts - 1) + [200]  # the last attempt fails the item cleanly
    assert down.done and down.succeeded
    assert stack.dispatcher.pending == 0
    items = all_items(gen, headers, job["id"])
    assert items[0]["status"] == "failed"
    assert items[0]["failure"]["code"] == "engine_unavailable"
    assert items[0]["failure"]["retryable"] is True
    assert items[0]["failed_variants"] == 2 and items[0]["asset_ids"] == []
    assert items[1]["status"] == "succeeded"
    done = get_job(gen, headers, job["id"])
    assert done["status"] == "completed"
    assert done["settlement"] == {"captured": 2 * unit, "released": 2 * unit}
    assert balance(credits_api, headers)["available"] == GRANT - 2 * unit
    assert ledger_moves(credits_api, headers) == [("reserve", 4 * unit), ("capture", 2 * unit), ("release", 2 * unit)]


# -- at-least-once delivery -----------------------------------------------------------------------


def test_redelivered_item_task_changes_nothing(
    stack: Any, gen: Any, credits_api: Any, headers: dict[str, str], client_id: str, engine: ScriptedEngine, unit: int
) -> None:
    grant(stack, client_id, GRANT)
    job = accepted(create(gen, headers, {"items": prompt_items("a stool", "a bench"), "aspect_ratio": "21:9"}))
    job_id = job["id"]
    stack.dispatcher.run_until_idle()  # fan-out and items; the settle task waits for its window
    first = item_task(stack, job_id, 0)
    assert first.outcomes == [200]
    counters = sorted(counter_docs(stack, client_id, job_id), key=json.dumps)
    assets = sorted(a["id"] for a in job_assets(stack, client_id, job_id))
    generated = len(engine.requests)
    assert len(assets) == 2

    # Cloud Tasks delivers at least once: the same body again, under another task name, before and after settling.
    assert stack.dispatcher.submit(queue=first.queue, name="dup-before-settle", url=first.url, body=first.body)
    stack.run_tasks()
    assert stack.dispatcher.submit(queue=first.queue, name="dup-after-settle", url=first.url, body=first.body)
    stack.run_tasks()

    dups = [t for t in stack.dispatcher.history if t.name.startswith("dup-")]
    assert [t.outcomes for t in dups] == [[200], [200]]
    assert len(engine.requests) == generated
    assert sorted(a["id"] for a in job_assets(stack, client_id, job_id)) == assets
    assert sorted(counter_docs(stack, client_id, job_id), key=json.dumps) == counters
    done = get_job(gen, headers, job_id)
    assert done["counts"]["succeeded"] == 2
    assert done["settlement"] == {"captured": 2 * unit, "released": 0}
    assert ledger_moves(credits_api, headers) == [("reserve", 2 * unit), ("capture", 2 * unit)]


def test_worker_crash_mid_item_is_completed_once_on_redelivery(
    stack: Any, gen: Any, credits_api: Any, headers: dict[str, str], client_id: str, unit: int
) -> None:
    crashing = CrashingEngine()
    install(stack, engine=crashing)
    grant(stack, client_id, GRANT)
    job = accepted(
        create(
            gen, headers, {"items": prompt_items("CRASH a clock", "a mirror"), "variants": 2, "aspect_ratio": "21:9"}
        )
    )
    stack.run_tasks()

    assert crashing.crashed == 1
    assert item_task(stack, job["id"], 0).outcomes == [500, 200]
    # The first variant was stored before the crash and is not generated again.
    assert len(crashing.calls_with("CRASH")) == 3
    items = all_items(gen, headers, job["id"])
    assert [i["status"] for i in items] == ["succeeded", "succeeded"]
    assets = job_assets(stack, client_id, job["id"])
    crashed_item = [a for a in assets if a["metadata"]["item_index"] == 0]
    assert len(crashed_item) == 2
    assert sorted(a["id"] for a in crashed_item) == sorted(items[0]["asset_ids"])
    assert len(assets) == 4
    assert get_job(gen, headers, job["id"])["settlement"] == {"captured": 4 * unit, "released": 0}
    assert ledger_moves(credits_api, headers) == [("reserve", 4 * unit), ("capture", 4 * unit)]


def test_item_finishing_after_its_settle_window_still_settles_the_job(
    stack: Any, gen: Any, credits_api: Any, headers: dict[str, str], client_id: str, unit: int
) -> None:
    """A slow generation (Gemini takes tens of seconds) outlives the settle window it started in: the
    settle task of that window runs (and finds the job unfinished) while the item is still generating."""
    now = [datetime.now(UTC)]

    def slow(request: ImageRequest) -> None:
        if "SLOW" in request.prompt:
            now[0] += timedelta(seconds=3 * SETTLE_WINDOW_SECONDS)
            stack.dispatcher.run_until_idle(fast_forward=True)  # the earlier window's settle task runs now

    install(stack, engine=ScriptedEngine(before=slow), clock=lambda: now[0])
    grant(stack, client_id, GRANT)
    job = accepted(create(gen, headers, {"items": prompt_items("a quick vase", "SLOW a bowl"), "aspect_ratio": "21:9"}))
    stack.run_tasks()

    done = get_job(gen, headers, job["id"])
    assert done["status"] == "completed", done
    # The first window's settle ran while the slow item was generating and found 1/2 items finished.
    assert len(tasks_of(stack, job["id"], "/tasks/settle")) == 2
    assert done["settlement"] == {"captured": 2 * unit, "released": 0}
    assert balance(credits_api, headers)["reserved"] == 0


# -- cancel -------------------------------------------------------------------------------------------


def test_cancel_during_a_run_releases_the_unstarted_items(
    stack: Any, gen: Any, credits_api: Any, headers: dict[str, str], client_id: str, engine: ScriptedEngine, unit: int
) -> None:
    grant(stack, client_id, GRANT)
    job = accepted(create(gen, headers, {"items": prompt_items("a hat", "a scarf", "a glove"), "aspect_ratio": "21:9"}))
    job_id = job["id"]
    assert stack.dispatcher.run_until_idle(max_deliveries=2) == 2  # the fan-out and the first item

    running = get_job(gen, headers, job_id)
    assert running["status"] == "running"
    assert running["counts"]["succeeded"] == 1 and running["counts"]["queued"] == 2
    cancel = gen.post(f"/jobs/{job_id}/cancel", headers=headers)
    assert cancel.status_code == 202, cancel.json
    assert cancel.json["status"] == "cancelling"
    assert gen.post(f"/jobs/{job_id}/cancel", headers=headers).json["status"] == "cancelling"

    stack.run_tasks()
    done = get_job(gen, headers, job_id)
    assert done["status"] == "cancelled"
    assert done["counts"] == {"queued": 0, "running": 0, "succeeded": 1, "failed": 0, "cancelled": 2}
    assert done["settlement"] == {"captured": unit, "released": 2 * unit}
    items = all_items(gen, headers, job_id)
    assert [i["status"] for i in items] == ["succeeded", "cancelled", "cancelled"]
    assert len(engine.requests) == 1
    assert len(job_assets(stack, client_id, job_id)) == 1
    assert funds(credits_api, headers) == (GRANT - unit, 0)
    assert ledger_moves(credits_api, headers) == [("reserve", 3 * unit), ("capture", unit), ("release", 2 * unit)]
    # Cancelling a finished job changes nothing.
    again = gen.post(f"/jobs/{job_id}/cancel", headers=headers)
    assert again.status_code == 202 and again.json["status"] == "cancelled"


def test_cancel_before_fan_out_generates_nothing_and_releases_all(
    stack: Any, gen: Any, credits_api: Any, headers: dict[str, str], client_id: str, engine: ScriptedEngine, unit: int
) -> None:
    grant(stack, client_id, GRANT)
    job = accepted(create(gen, headers, {"items": prompt_items(*[f"a cup {n}" for n in range(6)])}))
    assert gen.post(f"/jobs/{job['id']}/cancel", headers=headers).status_code == 202
    stack.run_tasks()

    done = get_job(gen, headers, job["id"])
    assert done["status"] == "cancelled"
    assert done["counts"] == {"queued": 0, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 6}
    assert done["settlement"] == {"captured": 0, "released": 6 * unit}
    assert engine.requests == []
    assert tasks_of(stack, job["id"], "/tasks/item") == []
    assert balance(credits_api, headers)["available"] == GRANT
    assert ledger_moves(credits_api, headers) == [("reserve", 6 * unit), ("release", 6 * unit)]


# -- retry ------------------------------------------------------------------------------------------


def test_retry_creates_a_new_paid_job_with_only_the_failed_items(
    stack: Any,
    gen: Any,
    catalog: Any,
    credits_api: Any,
    headers: dict[str, str],
    client_id: str,
    engine: ScriptedEngine,
    unit: int,
) -> None:
    grant(stack, client_id, GRANT)
    mug = make_product(catalog, headers, "Enamel Mug")
    first = accepted(
        create(
            gen,
            headers,
            {
                "items": [{"prompt": "a plate"}, {"product_id": mug, "prompt": "FAIL"}, {"prompt": "BLOCK a bowl"}],
                "aspect_ratio": "21:9",
            },
        )
    )
    # Not finished yet: nothing to retry.
    problem(gen.post(f"/jobs/{first['id']}/retry", headers=headers), 409)
    stack.run_tasks()
    assert get_job(gen, headers, first["id"])["counts"]["failed"] == 2

    engine.healthy = True  # the model works again; the retried items keep their prompts
    retry = gen.post(f"/jobs/{first['id']}/retry", headers=headers)
    second = accepted(retry)
    assert second["id"] != first["id"]
    assert second["retry_of"] == first["id"]
    assert second["item_count"] == 2
    assert second["cost"] == 2 * unit
    assert second["settings"] == get_job(gen, headers, first["id"])["settings"]
    assert balance(credits_api, headers)["reserved"] == 2 * unit
    stack.run_tasks()

    items = all_items(gen, headers, second["id"])
    assert [(i["product_id"], i["prompt"]) for i in items] == [(mug, "FAIL"), (None, "BLOCK a bowl")]
    assert all(i["status"] == "succeeded" for i in items)
    assert get_job(gen, headers, second["id"])["settlement"] == {"captured": 2 * unit, "released": 0}
    # The old job is untouched; the retry is charged on its own hold.
    assert get_job(gen, headers, first["id"])["settlement"] == {"captured": unit, "released": 2 * unit}
    entries = [e for e in history(credits_api, headers) if e["type"] != "grant"]
    assert [(e["type"], e["amount"]) for e in entries] == [
        ("reserve", 3 * unit),
        ("capture", unit),
        ("release", 2 * unit),
        ("reserve", 2 * unit),
        ("capture", 2 * unit),
    ]
    assert entries[0]["hold_id"] != entries[3]["hold_id"]
    assert balance(credits_api, headers)["available"] == GRANT - 3 * unit

    # The retry job itself has no failures: nothing to retry.
    problem(gen.post(f"/jobs/{second['id']}/retry", headers=headers), 409)


def test_retry_with_the_create_key_still_makes_a_new_job(
    stack: Any, gen: Any, credits_api: Any, headers: dict[str, str], client_id: str, engine: ScriptedEngine, unit: int
) -> None:
    """Idempotency keys are scoped per endpoint: reusing the create's key for the retry must not return
    the original job (which would look like a successful retry that never runs)."""
    grant(stack, client_id, GRANT)
    first = accepted(
        create(gen, headers, {"items": prompt_items("a jug", "FAIL a jar"), "aspect_ratio": "21:9"}, key="action-1")
    )
    stack.run_tasks()
    retry = accepted(gen.post(f"/jobs/{first['id']}/retry", headers={**headers, "Idempotency-Key": "action-1"}))
    assert retry["id"] != first["id"]
    assert retry["retry_of"] == first["id"] and retry["item_count"] == 1
    # The same retry again with the same key is the same retry job.
    again = accepted(gen.post(f"/jobs/{first['id']}/retry", headers={**headers, "Idempotency-Key": "action-1"}))
    assert again["id"] == retry["id"]
    reserves = [e for e in history(credits_api, headers) if e["type"] == "reserve"]
    assert [e["amount"] for e in reserves] == [2 * unit, unit]


# -- credits and idempotency --------------------------------------------------------------------------


def test_unaffordable_job_is_refused_with_402_and_creates_nothing(
    stack: Any, gen: Any, credits_api: Any, headers: dict[str, str], client_id: str, unit: int
) -> None:
    grant(stack, client_id, 2 * unit)
    body = {"items": prompt_items("a", "b", "c")}
    error = problem(create(gen, headers, body, key="too-expensive"), 402)
    assert error["code"] == "insufficient_credits"
    assert (error["required"], error["available"]) == (3 * unit, 2 * unit)

    assert gen.get("/jobs", headers=headers).json["items"] == []
    assert list(stack.platform.db.collection("clients").document(client_id).collection("jobs").stream()) == []
    job_id = jobs_module._derived("job", client_id, "too-expensive")
    assert stack.platform.object_store.head(jobs_module._spec_key(client_id, job_id)) is None
    assert stack.dispatcher.history == []
    assert funds(credits_api, headers) == (2 * unit, 0)
    assert ledger_moves(credits_api, headers) == []

    # The refused request did not use up its key: after a top-up the same request is accepted.
    grant(stack, client_id, 5 * unit)
    job = accepted(create(gen, headers, body, key="too-expensive"))
    assert job["id"] == job_id and job["cost"] == 3 * unit


def test_idempotency_key_returns_the_same_job_with_one_hold_and_one_fan_out(
    stack: Any, gen: Any, credits_api: Any, headers: dict[str, str], client_id: str, unit: int
) -> None:
    grant(stack, client_id, GRANT)
    body = {"items": prompt_items("a kettle", "a toaster")}
    first = create(gen, headers, body, key="create-1")
    job_id = accepted(first)["id"]
    replay = create(gen, headers, body, key="create-1")
    assert accepted(replay)["id"] == job_id
    assert replay.headers.get("Idempotency-Replayed") == "true"
    # Another body under the same key is a client bug: 409, nothing created.
    problem(create(gen, headers, {"items": prompt_items("a fridge")}, key="create-1"), 409)

    # Even without the HTTP layer's record (expired, or lost to a crash after the job was written)
    # the job itself is keyed: the retried create finds it and reserves nothing more.
    records = stack.platform.db.collection("clients").document(client_id).collection("idempotency_keys")
    for snapshot in records.stream():
        snapshot.reference.delete()
    late = create(gen, headers, body, key="create-1")
    assert accepted(late)["id"] == job_id
    assert "Idempotency-Replayed" not in late.headers

    other = accepted(create(gen, headers, body, key="create-2"))
    assert other["id"] != job_id
    assert len(tasks_of(stack, job_id, "/tasks/fanout")) == 1
    listed = gen.get("/jobs", headers=headers).json["items"]
    assert sorted(j["id"] for j in listed) == sorted([job_id, other["id"]])
    reserves = [e for e in history(credits_api, headers) if e["type"] == "reserve"]
    assert len(reserves) == 2
    assert next(e for e in reserves if job_id in e["purpose"])["amount"] == 2 * unit
    assert balance(credits_api, headers)["reserved"] == 4 * unit

    stack.run_tasks()
    assert len(tasks_of(stack, job_id, "/tasks/item")) == 2
    assert get_job(gen, headers, job_id)["settlement"] == {"captured": 2 * unit, "released": 0}


def test_a_key_reused_with_another_body_is_409_after_the_http_record_expired(
    stack: Any, gen: Any, credits_api: Any, headers: dict[str, str], client_id: str, unit: int
) -> None:
    """The job id is derived from the key alone, so the job itself must remember which request made it:
    once the HTTP layer's record has expired, another body under the same key is still a client bug."""
    grant(stack, client_id, GRANT)
    body = {"items": prompt_items("a lamp", "a rug")}
    job_id = accepted(create(gen, headers, body, key="reuse-1"))["id"]
    assert job_ref(stack, client_id, job_id).get().to_dict()["request_fingerprint"]
    expire_idempotency_records(stack, client_id)

    error = problem(create(gen, headers, {"items": prompt_items("a sofa")}, key="reuse-1"), 409)
    assert error["code"] == "idempotency_key_reused"
    # Nothing was created, reserved or enqueued for the refused request.
    assert [j["id"] for j in gen.get("/jobs", headers=headers).json["items"]] == [job_id]
    assert [(e["type"], e["amount"]) for e in history(credits_api, headers) if e["type"] == "reserve"] == [
        ("reserve", 2 * unit)
    ]
    assert len(tasks_of(stack, job_id, "/tasks/fanout")) == 1

    # The same body under the same key is still the same job, and reserves nothing more.
    expire_idempotency_records(stack, client_id)
    again = create(gen, headers, body, key="reuse-1")
    assert accepted(again)["id"] == job_id
    assert "Idempotency-Replayed" not in again.headers
    assert balance(credits_api, headers)["reserved"] == 2 * unit
    stack.run_tasks()
    assert get_job(gen, headers, job_id)["settlement"] == {"captured": 2 * unit, "released": 0}


# -- validation ---------------------------------------------------------------------------------------


def test_invalid_jobs_are_refused_and_reserve_nothing(
    stack: Any,
    gen: Any,
    catalog: Any,
    credits_api: Any,
    headers: dict[str, str],
    other_headers: dict[str, str],
    client_id: str,
    other_client_id: str,
) -> None:
    grant(stack, client_id, GRANT)
    vase = make_product(catalog, headers, "Vase")
    lamp = make_product(catalog, headers, "Lamp")
    vase_image = upload_image(stack, catalog, headers, client_id, vase, images.png((64, 64)))
    theirs = make_product(catalog, other_headers, "Their Product")
    their_image = upload_image(stack, catalog, other_headers, other_client_id, theirs, images.png((64, 64)))

    not_found = [
        {"items": [{"product_id": "prd_doesnotexist"}]},
        {"items": [{"product_id": theirs}]},
        {"items": [{"product_id": vase}, {"product_id": theirs}]},
        {"items": [{"product_id": vase, "image_asset_ids": [their_image]}]},
    ]
    for body in not_found:
        problem(create(gen, headers, body), 404)
    invalid = [
        {"items": [{}]},
        {"items": [{"image_asset_ids": [vase_image], "prompt": "x"}]},
        {"items": []},
        {"items": [{"prompt": "x"}], "variants": 5},
        {"items": [{"prompt": "x"}], "variants": 0},
        {"items": [{"prompt": "x"}], "size": "8K"},
        {"items": [{"prompt": "x"}], "aspect_ratio": "7:3"},
        {"items": [{"prompt": "x"}], "style": "watercolour-dream"},
        {"items": [{"prompt": "x"}], "unknown": 1},
        {"items": [{"prompt": "x"}] * 1001},
    ]
    for body in invalid:
        problem(create(gen, headers, body), 422)
    wrong_image = problem(create(gen, headers, {"items": [{"product_id": lamp, "image_asset_ids": [vase_image]}]}), 422)
    assert wrong_image["errors"][0]["field"] == "items.image_asset_ids"
    too_many = {"items": [{"product_id": vase, "image_asset_ids": [vase_image] * 4}]}
    assert problem(create(gen, headers, too_many), 422)["errors"][0]["field"].startswith("items.0.image_asset_ids")
    style = problem(create(gen, headers, {"items": [{"prompt": "x"}], "style": "watercolour-dream"}), 422)
    assert "studio" in style["detail"]

    assert gen.get("/jobs", headers=headers).json["items"] == []
    assert stack.dispatcher.history == []
    assert ledger_moves(credits_api, headers) == []
    assert funds(credits_api, headers) == (GRANT, 0)


# -- reads ------------------------------------------------------------------------------------------


def test_jobs_list_newest_first_and_items_paginate_and_filter(
    stack: Any, gen: Any, headers: dict[str, str], client_id: str, engine: ScriptedEngine
) -> None:
    grant(stack, client_id, GRANT)
    ids = [accepted(create(gen, headers, {"items": prompt_items(f"a box {n}")}))["id"] for n in range(2)]
    job_id = accepted(
        create(gen, headers, {"items": prompt_items("a", "FAIL b", "c", "FAIL d", "e"), "aspect_ratio": "21:9"})
    )["id"]
    ids.append(job_id)
    for other in ids[:2]:
        assert gen.post(f"/jobs/{other}/cancel", headers=headers).status_code == 202
    stack.run_tasks()

    first = gen.get("/jobs?limit=2", headers=headers).json
    assert [j["id"] for j in first["items"]] == [ids[2], ids[1]]
    assert first["next_cursor"]
    rest = gen.get(f"/jobs?limit=2&cursor={first['next_cursor']}", headers=headers).json
    assert [j["id"] for j in rest["items"]] == [ids[0]] and rest["next_cursor"] is None
    completed = gen.get("/jobs?status=completed", headers=headers).json["items"]
    assert [j["id"] for j in completed] == [job_id]
    assert [j["id"] for j in gen.get("/jobs?status=cancelled", headers=headers).json["items"]] == [ids[1], ids[0]]

    def page(query: str) -> tuple[list[int], str | None]:
        response = gen.get(f"/jobs/{job_id}/items?{query}", headers=headers)
        assert response.status_code == 200, response.json
        return [i["index"] for i in response.json["items"]], response.json["next_cursor"]

    indices, cursor = page("limit=2")
    assert indices == [0, 1] and cursor
    indices, cursor = page(f"limit=2&cursor={cursor}")
    assert indices == [2, 3] and cursor
    indices, cursor = page(f"limit=2&cursor={cursor}")
    assert indices == [4] and cursor is None
    assert page("status=failed") == ([1, 3], None)
    indices, cursor = page("status=succeeded&limit=2")
    assert indices == [0, 2] and cursor
    assert page(f"status=succeeded&limit=2&cursor={cursor}") == ([4], None)
    assert page("status=cancelled") == ([], None)
    problem(gen.get(f"/jobs/{job_id}/items?status=exploded", headers=headers), 422)
    problem(gen.get(f"/jobs/{job_id}/items?cursor=garbage", headers=headers), 400)
    problem(gen.get("/jobs/job_doesnotexist", headers=headers), 404)


def test_another_tenants_job_is_404_on_every_route(
    stack: Any, gen: Any, headers: dict[str, str], other_headers: dict[str, str], client_id: str, engine: ScriptedEngine
) -> None:
    grant(stack, client_id, GRANT)
    job_id = accepted(create(gen, headers, {"items": prompt_items("a lamp")}))["id"]
    problem(gen.get(f"/jobs/{job_id}", headers=other_headers), 404)
    problem(gen.get(f"/jobs/{job_id}/items", headers=other_headers), 404)
    problem(gen.post(f"/jobs/{job_id}/cancel", headers=other_headers), 404)
    problem(gen.post(f"/jobs/{job_id}/retry", headers=other_headers), 404)
    assert gen.get("/jobs", headers=other_headers).json["items"] == []
    assert get_job(gen, headers, job_id)["status"] == "queued"  # the foreign cancel did nothing
    stack.run_tasks()
    problem(gen.post(f"/jobs/{job_id}/retry", headers=other_headers), 404)
    assert get_job(gen, headers, job_id)["status"] == "completed"


# -- prompts, brand, presets, defaults ------------------------------------------------------------


def test_prompt_enhancement_uses_product_and_brand_deterministically(
    stack: Any, gen: Any, catalog: Any, headers: dict[str, str], other_headers: dict[str, str]
) -> None:
    vase = make_product(catalog, headers, "Ceramic Vase", category="Home", description="Hand-thrown stoneware")
    brand = {
        "tone": "warm and understated",
        "palette": ["#C8A27A"],
        "style_keywords": ["earthy", "calm"],
        "description": None,
    }
    put = gen.put("/brand", json=brand, headers=headers)
    assert put.status_code == 200, put.json
    assert gen.get("/brand", headers=headers).json == brand

    body = {"prompt": "vase on a walnut sideboard", "product_id": vase, "style": "lifestyle"}
    first = gen.post("/prompts/enhance", json=body, headers=headers)
    assert first.status_code == 200, first.json
    text = first.json["prompt"]
    assert first.json["engine"] == "offline"
    assert text.startswith("vase on a walnut sideboard")
    for expected in ("Ceramic Vase", "warm and understated", "#C8A27A", "earthy", "lifestyle"):
        assert expected in text, (expected, text)
    # The scaffolding written for a language model is not echoed into the user's prompt.
    assert "Idea:" not in text and "Brand profile" not in text and "{" not in text
    assert len(text) > len(body["prompt"]) * 3
    assert gen.post("/prompts/enhance", json=body, headers=headers).json == first.json

    # Another client has neither this product nor this brand.
    problem(gen.post("/prompts/enhance", json=body, headers=other_headers), 404)
    plain = gen.post("/prompts/enhance", json={"prompt": "vase on a walnut sideboard"}, headers=other_headers)
    assert plain.status_code == 200
    assert "warm and understated" not in plain.json["prompt"] and "Ceramic Vase" not in plain.json["prompt"]
    problem(gen.post("/prompts/enhance", json={**body, "style": "watercolour-dream"}, headers=headers), 422)
    problem(gen.post("/prompts/enhance", json={"prompt": "  "}, headers=headers), 422)
    problem(gen.put("/brand", json={"palette": ["beige"]}, headers=headers), 422)


def test_presets_built_in_and_saved_and_used_by_jobs(
    stack: Any,
    gen: Any,
    credits_api: Any,
    headers: dict[str, str],
    other_headers: dict[str, str],
    client_id: str,
    unit: int,
) -> None:
    grant(stack, client_id, GRANT)
    price_2k = credits_api.get("/prices", headers=headers).json["operations"]["generate_image"]["2K"]
    listed = gen.get("/presets", headers=headers).json["items"]
    built_in = {p["id"]: p for p in listed if p["built_in"]}
    assert {"style-studio", "style-lifestyle", "style-luxury"} <= set(built_in)
    assert built_in["style-studio"]["settings"]["style"] == "studio"
    problem(gen.patch("/presets/style-studio", json={"name": "Mine now"}, headers=headers), 422)
    problem(gen.delete("/presets/style-studio", headers=headers), 422)
    assert gen.get("/presets/style-studio", headers=headers).json["name"] == built_in["style-studio"]["name"]

    settings = {"style": "minimalist", "size": "2K", "variants": 2, "aspect_ratio": "1:1", "prompt": "on linen"}
    created = gen.post("/presets", json={"name": "Linen pair", "settings": settings}, headers=headers)
    assert created.status_code == 201, created.json
    preset_id = created.json["id"]
    assert created.json["built_in"] is False
    problem(
        gen.post("/presets", json={"name": "Bad", "settings": {"style": "watercolour-dream"}}, headers=headers), 422
    )
    assert preset_id in [p["id"] for p in gen.get("/presets", headers=headers).json["items"]]
    renamed = gen.patch(
        f"/presets/{preset_id}", json={"name": "Linen trio", "settings": {**settings, "variants": 3}}, headers=headers
    )
    assert renamed.status_code == 200, renamed.json
    assert renamed.json["name"] == "Linen trio" and renamed.json["settings"]["variants"] == 3
    assert renamed.json["settings"]["size"] == "2K"
    problem(gen.get(f"/presets/{preset_id}", headers=other_headers), 404)

    job = accepted(create(gen, headers, {"items": prompt_items("a", "b"), "preset_id": preset_id}))
    assert job["cost"] == 2 * 3 * price_2k
    assert job["settings"] == {**settings, "variants": 3, "negative_prompt": None}
    overridden = accepted(
        create(gen, headers, {"items": prompt_items("a"), "preset_id": preset_id, "size": "1K", "variants": 1})
    )
    assert overridden["cost"] == unit
    assert overridden["settings"]["style"] == "minimalist" and overridden["settings"]["prompt"] == "on linen"
    luxury = accepted(create(gen, headers, {"items": prompt_items("a"), "preset_id": "style-luxury"}))
    assert luxury["settings"]["style"] == "luxury" and luxury["cost"] == unit
    assert balance(credits_api, headers)["reserved"] == 6 * price_2k + 2 * unit

    assert gen.delete(f"/presets/{preset_id}", headers=headers).status_code == 204
    problem(gen.get(f"/presets/{preset_id}", headers=headers), 404)
    problem(create(gen, headers, {"items": prompt_items("a"), "preset_id": preset_id}), 404)
    assert balance(credits_api, headers)["reserved"] == 6 * price_2k + 2 * unit


def test_last_settings_are_remembered_per_product_and_category(
    stack: Any, gen: Any, catalog: Any, headers: dict[str, str], client_id: str, engine: ScriptedEngine
) -> None:
    grant(stack, client_id, GRANT)
    fanout_page = stack.platform.settings.generation_fanout_page
    products = [make_product(catalog, headers, f"Planter {n}", category="Garden") for n in range(fanout_page)]
    products.append(make_product(catalog, headers, "Parasol", category="Patio"))  # on the second fan-out page
    untouched = make_product(catalog, headers, "Whisk", category="Kitchen")
    fresh = gen.get(f"/defaults?product_id={products[0]}", headers=headers).json
    assert fresh["product"] is None and fresh["category"] is None
    assert fresh["suggested"]["style"] == "studio"

    body = {
        "items": [{"product_id": p} for p in products],
        "style": "outdoor",
        "aspect_ratio": "21:9",
        "prompt": "on a sunny terrace",
    }
    settings = accepted(create(gen, headers, body))["settings"]
    stack.run_tasks()

    for product_id in products:
        remembered = gen.get(f"/defaults?product_id={product_id}", headers=headers)
        assert remembered.status_code == 200, remembered.json
        assert remembered.json["product"] == settings, product_id
        assert remembered.json["category"] == settings
        assert remembered.json["suggested"] == settings
    patio = gen.get("/defaults?category=Patio", headers=headers).json
    assert patio["category"] == settings and patio["product"] is None
    kitchen = gen.get(f"/defaults?product_id={untouched}", headers=headers).json
    assert kitchen["product"] is None and kitchen["category"] is None

    # The next job on one planter changes that planter and the category, not the other planters.
    later = accepted(
        create(gen, headers, {"items": [{"product_id": products[0]}], "style": "luxury", "aspect_ratio": "21:9"})
    )["settings"]
    stack.run_tasks()
    assert gen.get(f"/defaults?product_id={products[0]}", headers=headers).json["product"] == later
    assert gen.get("/defaults?category=Garden", headers=headers).json["category"] == later
    other = gen.get(f"/defaults?product_id={products[1]}", headers=headers).json
    assert other["product"] == settings and other["category"] == later and other["suggested"] == settings
    problem(gen.get("/defaults?product_id=prd_doesnotexist", headers=headers), 404)


# -- references, hot documents, races -------------------------------------------------------------


def test_a_generated_image_of_the_product_can_be_the_reference(
    stack: Any, gen: Any, catalog: Any, headers: dict[str, str], client_id: str, engine: ScriptedEngine
) -> None:
    """Create accepts any image asset of the product; the worker must then send exactly that image."""
    grant(stack, client_id, GRANT)
    vase = make_product(catalog, headers, "Ceramic Vase")
    upload_image(stack, catalog, headers, client_id, vase, images.png((200, 160)))
    first = accepted(create(gen, headers, {"items": [{"product_id": vase}], "aspect_ratio": "21:9"}))
    stack.run_tasks()
    generated = all_items(gen, headers, first["id"])[0]["asset_ids"][0]

    second = accepted(
        create(
            gen,
            headers,
            {
                "items": [{"product_id": vase, "image_asset_ids": [generated], "prompt": "second pass"}],
                "aspect_ratio": "21:9",
            },
        )
    )
    stack.run_tasks()
    sent = engine.calls_with("second pass")
    assert len(sent) == 1
    generated_doc = next(a for a in job_assets(stack, client_id, first["id"]) if a["id"] == generated)
    assert [i.data for i in sent[0].images] == [stack.platform.object_store.get(generated_doc["key"])]
    asset = job_assets(stack, client_id, second["id"])[0]
    assert asset["metadata"]["input_asset_ids"] == [generated]


def test_counts_are_sharded_and_item_workers_never_write_the_job_document(
    stack: Any, gen: Any, headers: dict[str, str], client_id: str, engine: ScriptedEngine
) -> None:
    settings = stack.platform.settings
    grant(stack, client_id, GRANT)
    count = 12
    job_id = accepted(
        create(gen, headers, {"items": prompt_items(*[f"a spoon {n}" for n in range(count)]), "aspect_ratio": "21:9"})
    )["id"]
    ref = job_ref(stack, client_id, job_id)
    last = ref.get().update_time
    writes: dict[str, int] = {"fanout": 0, "item": 0, "settle": 0}
    delivered: dict[str, int] = {"fanout": 0, "item": 0, "settle": 0}
    while True:
        before = {id(t): t.attempts for t in stack.dispatcher.history}
        if stack.dispatcher.run_until_idle(max_deliveries=1, fast_forward=True) == 0:
            break
        [task] = [t for t in stack.dispatcher.history if t.attempts != before.get(id(t), 0)]
        kind = task.url.rsplit("/", 1)[1]  # also the events' relay and consume tasks, which never write the job
        delivered[kind] = delivered.get(kind, 0) + 1
        current = ref.get().update_time
        if current != last:
            writes[kind] = writes.get(kind, 0) + 1
            last = current
    pages = -(-count // settings.generation_fanout_page)
    assert delivered["fanout"] == pages and delivered["item"] == count
    assert writes == {"fanout": pages, "item": 0, "settle": 1}

    shards = counter_docs(stack, client_id, job_id)
    assert 1 < len(shards) <= settings.generation_counter_shards
    totals: dict[str, int] = {}
    for shard in shards:
        for name, value in shard.items():
            totals[name] = totals.get(name, 0) + value
    assert totals == {"done_items": count, "succeeded_items": count, "succeeded_slots": count, "failed_slots": 0}
    done = get_job(gen, headers, job_id)
    assert done["counts"]["succeeded"] == count and done["status"] == "completed"
    items = [s.to_dict() for s in ref.collection("items").stream()]
    assert len(items) == count
    assert all(i["attempts"] == 1 and i["status"] == "succeeded" and len(i["asset_ids"]) == 1 for i in items)


def test_cancel_landing_during_fan_out_is_not_overwritten(
    stack: Any,
    gen: Any,
    credits_api: Any,
    headers: dict[str, str],
    client_id: str,
    engine: ScriptedEngine,
    unit: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fan-out reads the job, creates a page of items, then marks the job running: a cancel that
    arrives in between must survive."""
    grant(stack, client_id, GRANT)
    count = stack.platform.settings.generation_fanout_page + 1
    job_id = accepted(
        create(gen, headers, {"items": prompt_items(*[f"a fork {n}" for n in range(count)]), "aspect_ratio": "21:9"})
    )["id"]
    enqueue = stack.dispatcher.enqueue
    cancelled: list[int] = []

    def cancel_then_enqueue(task: Any) -> bool:
        if task.path == "/tasks/item" and not cancelled:
            cancelled.append(gen.post(f"/jobs/{job_id}/cancel", headers=headers).status_code)
        return bool(enqueue(task))

    monkeypatch.setattr(stack.dispatcher, "enqueue", cancel_then_enqueue)
    stack.run_tasks()

    assert cancelled == [202]
    done = get_job(gen, headers, job_id)
    assert done["status"] == "cancelled", done
    assert done["counts"]["cancelled"] == count
    assert engine.requests == []
    assert done["settlement"] == {"captured": 0, "released": count * unit}
    assert balance(credits_api, headers)["available"] == GRANT


def test_a_crash_on_the_last_attempt_still_finishes_the_item_and_settles(
    stack: Any, gen: Any, credits_api: Any, headers: dict[str, str], client_id: str, unit: int
) -> None:
    from tests.engines import AlwaysCrashingEngine

    install(stack, engine=AlwaysCrashingEngine())
    grant(stack, client_id, GRANT)
    max_attempts = stack.platform.settings.tasks_max_attempts
    job = accepted(create(gen, headers, {"items": prompt_items("CRASH a vase", "a stool")}))
    stack.run_tasks()

    crashed = item_task(stack, job["id"], 0)
    assert crashed.outcomes == [500] * (max_attempts - 1) + [200]
    items = all_items(gen, headers, job["id"])
    assert items[0]["status"] == "failed"
    assert items[0]["failure"]["code"] == "generation_failed"
    assert "internal error" in items[0]["failure"]["message"]
    assert items[1]["status"] == "succeeded"
    done = get_job(gen, headers, job["id"])
    assert done["status"] == "completed"
    assert done["settlement"] == {"captured": unit, "released": unit}
