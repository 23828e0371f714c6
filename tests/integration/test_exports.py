"""ZIP exports through the served functions: catalog_api accepts, catalog_tasks builds (tasks delivered by
the local dispatcher), the archive goes to moto by a real multipart upload and is downloaded through
its presigned URL and unzipped, as a browser would."""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from typing import Any

import httpx
import pytest
from PIL import Image

from tests import images
from tests.catalog_helpers import make_product, problem, upload_image
from tests.engines import ScriptedEngine
from tests.platforms import grant, install


@pytest.fixture
def other_headers(stack: Any, other_client_id: str) -> dict[str, str]:
    minted: dict[str, str] = stack.headers(other_client_id)
    return minted


def export_tasks(stack: Any) -> list[Any]:
    return [t for t in stack.dispatcher.history if t.url.endswith("/tasks/build-export")]


def ready(catalog: Any, headers: dict[str, str], export_id: str) -> dict[str, Any]:
    response = catalog.get(f"/exports/{export_id}", headers=headers)
    assert response.status_code == 200, response.json
    body: dict[str, Any] = response.json
    assert body["status"] == "ready", body
    return body


def unzip(http: httpx.Client, url: str) -> zipfile.ZipFile:
    response = http.get(url)
    assert response.status_code == 200, response.text
    assert "attachment" in response.headers.get("content-disposition", "")
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.testzip() is None
    return archive


def manifest(archive: zipfile.ZipFile) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode("utf-8-sig"))))


def downloaded(catalog: Any, http: httpx.Client, headers: dict[str, str], asset_id: str) -> bytes:
    detail = catalog.get(f"/assets/{asset_id}", headers=headers)
    assert detail.status_code == 200, detail.json
    return http.get(detail.json["download_url"]).content


def test_a_generation_job_with_a_failed_item_exports_by_product_with_a_manifest(
    stack: Any,
    gen: Any,
    catalog: Any,
    http: httpx.Client,
    headers: dict[str, str],
    other_headers: dict[str, str],
    client_id: str,
) -> None:
    install(stack, engine=ScriptedEngine())
    grant(stack, client_id, 50)
    vase = make_product(catalog, headers, "Ceramic Vase")
    catalog.patch(f"/products/{vase}", json={"sku": "CV-1"}, headers=headers)
    upload_image(stack, catalog, headers, client_id, vase, images.png((320, 240)))
    body = {"items": [{"product_id": vase}, {"prompt": "FAIL me"}, {"prompt": "a kettle"}], "variants": 2}
    job = gen.post("/jobs", json=body, headers=headers)
    assert job.status_code == 202, job.json
    stack.run_tasks()

    asked = catalog.post("/exports", json={"job_id": job.json["id"]}, headers=headers)
    assert asked.status_code == 202, asked.json
    assert asked.json["status"] == "queued" and asked.json["download_url"] is None
    export_id = asked.json["id"]
    # Another client asking for this job (or reading this export) finds nothing, and writes nothing.
    problem(catalog.post("/exports", json={"job_id": job.json["id"]}, headers=other_headers), 404)
    problem(catalog.get(f"/exports/{export_id}", headers=other_headers), 404, "export_not_found")
    stack.run_tasks()

    out = ready(catalog, headers, export_id)
    assert (out["files_total"], out["files_done"], out["progress"]) == (4, 4, 1.0)
    assert out["filename"] == f"epox-{job.json['id']}.zip" and out["size_bytes"] > 0
    items = gen.get(f"/jobs/{job.json['id']}/items", headers=headers).json["items"]
    with unzip(http, out["download_url"]) as archive:
        assert archive.namelist() == [
            "CV-1/studio-1.png",
            "CV-1/studio-2.png",
            "unassigned/studio-1.png",
            "unassigned/studio-2.png",
            "manifest.csv",
        ]
        made = items[0]["asset_ids"] + items[2]["asset_ids"]
        files = [name for name in archive.namelist() if name != "manifest.csv"]
        for name, asset_id in zip(files, made, strict=True):
            assert archive.read(name) == downloaded(catalog, http, headers, asset_id)
        rows = manifest(archive)
    assert [(r["row"], r["product"], r["sku"], r["asset_id"], r["file"], r["status"]) for r in rows] == [
        ("1", "Ceramic Vase", "CV-1", made[0], "CV-1/studio-1.png", "ok"),
        ("2", "Ceramic Vase", "CV-1", made[1], "CV-1/studio-2.png", "ok"),
        ("3", "", "", "", "", "failed"),
        ("4", "", "", made[2], "unassigned/studio-1.png", "ok"),
        ("5", "", "", made[3], "unassigned/studio-2.png", "ok"),
    ]
    assert rows[2]["failure_reason"].startswith("generation_failed: scripted: the model answered without an image")

    # Asking again reuses the archive: the same export, ready, and no build task.
    built = len(export_tasks(stack))
    again = catalog.post("/exports", json={"job_id": job.json["id"]}, headers=headers)
    assert again.status_code == 202 and again.json["id"] == export_id and again.json["status"] == "ready"
    stack.run_tasks()
    assert len(export_tasks(stack)) == built
    # Deleting one of its images changes what it holds: the next ask builds it again.
    assert catalog.delete(f"/assets/{made[3]}", headers=headers).status_code == 204
    rebuilt = catalog.post("/exports", json={"job_id": job.json["id"]}, headers=headers)
    assert rebuilt.json["status"] == "queued"
    stack.run_tasks()
    with unzip(http, ready(catalog, headers, export_id)["download_url"]) as archive:
        assert "unassigned/studio-2.png" not in archive.namelist()
        assert [(r["asset_id"], r["status"], r["failure_reason"]) for r in manifest(archive)][-1] == (
            made[3],
            "deleted",
            "the asset was deleted",
        )


def noise_png(side: int) -> bytes:
    """An incompressible PNG (~3 bytes a pixel): a few of them make an archive of several 5 MiB parts."""
    return images.encode(Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)), "PNG")


def test_a_selection_streams_in_parts_over_several_deliveries(
    stack: Any, catalog: Any, http: httpx.Client, headers: dict[str, str], client_id: str
) -> None:
    # Parts of R2's minimum and a budget that hands the build on after every file: the archive is
    # written by one delivery per file, each resuming the same multipart upload from a checkpoint.
    install(stack, export_part_mib=5, export_budget_seconds=0.001)
    lamp = make_product(catalog, headers, "Desk Lamp")
    ids = [upload_image(stack, catalog, headers, client_id, lamp, noise_png(1100)) for _ in range(3)]
    small = upload_image(stack, catalog, headers, client_id, make_product(catalog, headers, "Mug"), images.png())

    asked = catalog.post("/exports", json={"asset_ids": [*ids, small]}, headers=headers)
    assert asked.status_code == 202, asked.json
    assert asked.json["asset_count"] == 4
    stack.run_tasks()
    out = ready(catalog, headers, asked.json["id"])
    assert out["size_bytes"] > 10 * 1024 * 1024  # more than two parts' worth
    segments = sorted(json.loads(t.body)["segment"] for t in export_tasks(stack))
    assert segments == [0, 1, 2, 3]
    with unzip(http, out["download_url"]) as archive:
        names = archive.namelist()
        lamp_files = [f"Desk-Lamp/original-{n}.png" for n in (1, 2, 3)]
        assert sorted(names) == sorted([*lamp_files, "Mug/original-1.png", "manifest.csv"])
        by_asset = {r["asset_id"]: r["file"] for r in manifest(archive)}
        for asset_id in [*ids, small]:
            assert archive.read(by_asset[asset_id]) == downloaded(catalog, http, headers, asset_id)
    # Only the archive is left of the build.
    listed = stack.platform.object_store.client.list_objects_v2(
        Bucket=stack.platform.object_store.bucket, Prefix=f"exports/{client_id}/"
    )
    assert [item["Key"] for item in listed.get("Contents", [])] == [f"exports/{client_id}/{asked.json['id']}/b1.zip"]
    # The same selection in another order is the same export.
    again = catalog.post("/exports", json={"asset_ids": [small, *reversed(ids)]}, headers=headers)
    assert again.json["id"] == asked.json["id"] and again.json["status"] == "ready"


def test_refusals_write_nothing(
    stack: Any,
    catalog: Any,
    headers: dict[str, str],
    other_headers: dict[str, str],
    client_id: str,
    other_client_id: str,
) -> None:
    mine = upload_image(stack, catalog, headers, client_id, make_product(catalog, headers, "Mine"), images.png())
    theirs = upload_image(
        stack, catalog, other_headers, other_client_id, make_product(catalog, other_headers, "Theirs"), images.png()
    )
    body = problem(catalog.post("/exports", json={"asset_ids": [mine, theirs]}, headers=headers), 404)
    assert body["missing"] == [theirs]
    problem(catalog.post("/exports", json={"job_id": "job_nope"}, headers=headers), 404)
    problem(catalog.post("/exports", json={"job_id": "zzz_nope"}, headers=headers), 404)
    too_many = {"asset_ids": [f"ast_{n}" for n in range(1001)]}
    assert problem(catalog.post("/exports", json=too_many, headers=headers), 422)["errors"][0]["field"] == "asset_ids"
    problem(catalog.post("/exports", json={}, headers=headers), 422)
    problem(catalog.post("/exports", json={"job_id": "job_1", "asset_ids": [mine]}, headers=headers), 422)
    exports = stack.platform.db.collection("clients").document(client_id).collection("exports")
    assert list(exports.stream()) == [] and export_tasks(stack) == []
