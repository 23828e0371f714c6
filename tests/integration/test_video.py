"""Product videos end to end: the video API and its Cloud Tasks worker (delivered by the local dispatcher,
scheduled polls fast-forwarded), the ledger, Firestore and the object store; the offline video and speech
engines; and the real google-genai SDK in Vertex mode against the local Veo stub (tests/stubs/veo.py).

Every video is downloaded through its presigned URL and read back with ``probe``: what the API says it is
(size, length, codecs) is what the file is."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google.oauth2.credentials import Credentials

from shared.video import media
from tests.catalog_helpers import asset_doc, asset_ref, make_product, new_asset, problem
from tests.platforms import available, grant, install
from tests.stubs.veo import STUB_TOKEN, VeoStub, VideoScenario

GRANT = 60
SHORT = 4  # seconds: one clip, the cheapest video (8 credits)


@pytest.fixture
def video(stack: Any) -> Any:
    return stack.client("video_api")


def download(url: str) -> bytes:
    response = httpx.get(url, trust_env=False, timeout=30)
    assert response.status_code == 200, response.text[:300]
    return response.content


def create(video: Any, headers: dict[str, str], body: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    extra = {"Idempotency-Key": key} if key else {}
    response = video.post("/videos/jobs", json=body, headers={**headers, **extra})
    assert response.status_code == 202, response.json
    assert response.headers["Location"] == f"/videos/jobs/{response.json['id']}"
    created: dict[str, Any] = response.json
    return created


def finished(stack: Any, video: Any, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    """Deliver every task (the scheduled polls at once), then the job as the API shows it."""
    stack.run_tasks()
    response = video.get(f"/videos/jobs/{job_id}", headers=headers)
    assert response.status_code == 200, response.json
    body: dict[str, Any] = response.json
    assert body["status"] in ("completed", "cancelled"), body
    return body


def items(video: Any, headers: dict[str, str], job_id: str) -> list[dict[str, Any]]:
    response = video.get(f"/videos/jobs/{job_id}/items", headers=headers)
    assert response.status_code == 200, response.json
    found: list[dict[str, Any]] = response.json["items"]
    return found


def item_doc(stack: Any, client_id: str, job_id: str, index: int = 0) -> dict[str, Any]:
    jobs = stack.platform.db.collection("clients").document(client_id).collection("video_jobs")
    doc: dict[str, Any] = jobs.document(job_id).collection("items").document(f"{index:06d}").get().to_dict()
    return doc


def product_with_photo(stack: Any, catalog: Any, headers: dict[str, str], client_id: str) -> str:
    asset_id = new_asset(stack, catalog, headers, client_id)
    return str(asset_doc(stack, client_id, asset_id)["product_id"])


def a_video(stack: Any, video: Any, catalog: Any, headers: dict[str, str], client_id: str) -> dict[str, Any]:
    """A 4-second 16:9 video of a product: its asset as the library shows it (detail, with revisions)."""
    product_id = product_with_photo(stack, catalog, headers, client_id)
    job = create(video, headers, {"items": [{"product_id": product_id}], "duration_seconds": SHORT})
    finished(stack, video, headers, job["id"])
    (item,) = items(video, headers, job["id"])
    (result,) = item["videos"]
    detail: dict[str, Any] = catalog.get(f"/assets/{result['asset_id']}", headers=headers).json
    return detail


# -- making videos --------------------------------------------------------------------------------------


def test_a_video_job_delivers_every_aspect_as_a_video_asset_with_its_facts(
    stack: Any, video: Any, catalog: Any, headers: dict[str, str], client_id: str
) -> None:
    grant(stack, client_id, GRANT)
    product_id = product_with_photo(stack, catalog, headers, client_id)
    body = {
        "items": [{"product_id": product_id}],
        "style": "showcase_360",
        "duration_seconds": SHORT,
        "deliverables": ["16:9", "9:16", "1:1"],
        "selling_points": ["hand glazed"],
    }
    job = create(video, headers, body, key="video-1")
    assert (job["status"], job["kind"], job["cost"], job["item_cost"]) == ("queued", "generate", 8, 8)
    assert job["settings"]["clips"] == [4] and job["settings"]["audio"] == "none"  # the style's sound
    assert available(stack, client_id) == (GRANT - 8, 8)  # one hold for the job
    again = create(video, headers, body, key="video-1")
    assert again["id"] == job["id"] and available(stack, client_id) == (GRANT - 8, 8)

    done = finished(stack, video, headers, job["id"])
    assert done["settlement"] == {"captured": 8, "released": 0, "succeeded": 1, "failed": 0}
    assert done["counts"]["succeeded"] == 1 and done["progress"] == 1.0
    assert available(stack, client_id) == (GRANT - 8, 0)
    (item,) = items(video, headers, job["id"])
    assert item["status"] == "succeeded" and item["clips_total"] == item["clips_ready"] == 1
    sizes = {}
    for result in item["videos"]:
        info = media.probe(download(result["download_url"]))
        assert (info.width, info.height) == (result["width"], result["height"])
        assert info.duration_seconds == pytest.approx(SHORT, abs=0.05) and info.fps == 24
        assert (info.video_codec, info.audio_codec, info.offline) == ("h264", None, True)  # no sound: the style's
        assert info.size_bytes == result["size_bytes"]
        assert download(result["poster_url"])[8:12] == b"WEBP"
        sizes[result["aspect_ratio"]] = (info.width, info.height)
    assert sizes == {"16:9": (1280, 720), "9:16": (720, 1280), "1:1": (720, 720)}  # exact, whatever the source

    library = catalog.get("/assets", query_string={"kind": "video"}, headers=headers).json["items"]
    assert sorted(a["id"] for a in library) == sorted(item["asset_ids"])
    for asset in library:
        assert (asset["media"], asset["kind"], asset["content_type"]) == ("video", "video", "video/mp4")
        assert asset["duration_seconds"] == pytest.approx(SHORT, abs=0.05) and asset["poster_url"]
        facts = asset["video"]
        assert (facts["width"], facts["height"]) == (asset["width"], asset["height"])
        assert facts["fps"] == 24 and facts["video_codec"] == "h264" and facts["offline"] is True
    doc = asset_doc(stack, client_id, item["asset_ids"][0])
    assert doc["product_id"] == product_id and doc["job_id"] == job["id"] and doc["metadata"]["style"] == "showcase_360"
    assert "hand glazed" in doc["metadata"]["prompt"]
    detail = catalog.get(f"/assets/{item['asset_ids'][0]}", headers=headers).json
    assert media.probe(download(detail["download_url"])).duration_seconds == pytest.approx(SHORT, abs=0.05)
    # The raw clip the model made was copied to the object store while the item waited, and removed once joined.
    assert item_doc(stack, client_id, job["id"])["waits"] == 1


def test_a_reviewed_script_is_voiced_over_the_video(
    stack: Any, video: Any, catalog: Any, headers: dict[str, str], client_id: str
) -> None:
    grant(stack, client_id, GRANT)
    product_id = product_with_photo(stack, catalog, headers, client_id)
    written = video.post(
        "/videos/scripts",
        json={"product_id": product_id, "duration_seconds": 8, "selling_points": ["dishwasher safe"]},
        headers=headers,
    )
    assert written.status_code == 200, written.json
    assert written.json["script"].startswith("Meet Mug.") and written.json["engine"] == "offline"
    assert written.json["words"] <= 20 and available(stack, client_id) == (GRANT, 0)  # free
    reviewed = written.json["script"] + " Made for slow mornings."
    body = {
        "items": [{"product_id": product_id}],
        "style": "spoken_script",
        "duration_seconds": SHORT,
        "script": reviewed,
    }
    job = create(video, headers, body)
    assert job["settings"]["audio"] == "voiceover" and job["settings"]["aspect_ratio"] == "9:16"
    assert job["cost"] == 9  # the clip and the voiceover
    finished(stack, video, headers, job["id"])
    (item,) = items(video, headers, job["id"])
    (result,) = item["videos"]
    info = media.probe(download(result["download_url"]))
    assert (info.width, info.height, info.audio_codec) == (720, 1280, "aac")  # the voice (no model sound asked)
    assert item_doc(stack, client_id, job["id"])["script_used"] == reviewed
    assert asset_doc(stack, client_id, result["asset_id"])["metadata"]["script"] == reviewed
    assert available(stack, client_id) == (GRANT - 9, 0)


def test_styles_and_video_prompt_enhancement(
    stack: Any, video: Any, catalog: Any, headers: dict[str, str], client_id: str
) -> None:
    listed = video.get("/videos/styles", headers=headers).json["items"]
    assert len(listed) == 9 and {s["id"] for s in listed} >= {"spoken_script", "showcase_360", "scene_integration"}
    assert all(s["name"] and s["prompt"] and s["duration_seconds"] <= 30 for s in listed)
    product_id = make_product(catalog, headers, "Linen Tote", category="bags")
    response = stack.client("generate_api").put("/brand", json={"tone": "playful"}, headers=headers)
    assert response.status_code == 200, response.json
    enhanced = video.post(
        "/videos/prompts/enhance",
        json={"prompt": "a tote on a beach", "product_id": product_id, "style": "scene_integration"},
        headers=headers,
    )
    assert enhanced.status_code == 200, enhanced.json
    text = enhanced.json["prompt"]
    assert "Linen Tote" in text and "playful" in text and "camera" in text


# -- edits -----------------------------------------------------------------------------------------------


def test_a_trim_makes_a_new_revision_of_exact_length_and_keeps_the_original(
    stack: Any, video: Any, catalog: Any, headers: dict[str, str], client_id: str
) -> None:
    grant(stack, client_id, GRANT)
    original = a_video(stack, video, catalog, headers, client_id)
    asset_id = original["id"]
    response = video.post(
        f"/videos/assets/{asset_id}/edits",
        json={"trim": {"start": 1, "end": 3}, "poster": {"at_seconds": 0.5}},
        headers={**headers, "Idempotency-Key": "trim-1"},
    )
    assert response.status_code == 202, response.json
    assert (response.json["kind"], response.json["cost"]) == ("edit", 0)
    done = finished(stack, video, headers, response.json["id"])
    assert done["items"][0]["revision"] == 2 and done["settlement"]["succeeded"] == 1
    detail = catalog.get(f"/assets/{asset_id}", headers=headers).json
    assert [r["number"] for r in detail["revisions"]] == [1, 2]
    assert detail["current_revision"] == 2 and detail["duration_seconds"] == pytest.approx(2.0, abs=0.01)
    revision = detail["revisions"][1]
    assert revision["operation"] == "trim 1-3 s, poster at 0.5 s"
    trimmed = media.probe(download(revision["url"]))
    assert trimmed.duration_seconds == pytest.approx(2.0, abs=1 / 48) and trimmed.frames == 48
    assert (trimmed.width, trimmed.height) == (1280, 720)
    first = media.probe(download(detail["revisions"][0]["url"]))
    assert first.duration_seconds == pytest.approx(SHORT, abs=0.05)  # never overwritten

    pad = video.post(
        f"/videos/assets/{asset_id}/edits", json={"reframe": {"aspect": "1:1", "mode": "pad"}}, headers=headers
    )
    assert pad.status_code == 202, pad.json
    finished(stack, video, headers, pad.json["id"])
    detail = catalog.get(f"/assets/{asset_id}", headers=headers).json
    padded = media.probe(download(detail["download_url"]))
    assert detail["current_revision"] == 3 and padded.width == padded.height == detail["width"]
    assert padded.duration_seconds == pytest.approx(2.0, abs=1 / 48)
    assert available(stack, client_id) == (GRANT - 8, 0)  # edits are free by default


# -- bad input --------------------------------------------------------------------------------------------


def test_bad_input_is_a_4xx_problem_and_charges_nothing(
    stack: Any, video: Any, catalog: Any, headers: dict[str, str], client_id: str, other_client_id: str
) -> None:
    grant(stack, client_id, GRANT)
    clip = a_video(stack, video, catalog, headers, client_id)
    image_id = new_asset(stack, catalog, headers, client_id)
    product_id = str(asset_doc(stack, client_id, image_id)["product_id"])
    other = stack.headers(other_client_id)
    their_image = new_asset(stack, catalog, other, other_client_id)
    their_product = str(asset_doc(stack, other_client_id, their_image)["product_id"])
    before = available(stack, client_id)

    def job(body: dict[str, Any]) -> Any:
        return video.post("/videos/jobs", json=body, headers=headers)

    def edit(asset_id: str, body: dict[str, Any]) -> Any:
        return video.post(f"/videos/assets/{asset_id}/edits", json=body, headers=headers)

    problem(edit(image_id, {"trim": {"start": 0, "end": 1}}), 422, "asset_not_a_video")
    body = problem(edit(clip["id"], {"trim": {"start": 1, "end": 4.5}}), 422, "video_range_invalid")
    assert body["duration_seconds"] == pytest.approx(SHORT, abs=0.05)
    problem(edit(clip["id"], {"poster": {"at_seconds": 9}}), 422, "video_range_invalid")
    problem(edit(clip["id"], {"trim": {"start": 3, "end": 2}}), 422, "validation_failed")
    problem(edit(clip["id"], {"audio": {"mute": True, "voiceover": "hello"}}), 422, "validation_failed")
    problem(edit(clip["id"], {}), 422, "validation_failed")
    problem(edit("ast_missing", {"trim": {"start": 0, "end": 1}}), 404, "not_found")
    problem(video.post(f"/videos/assets/{clip['id']}/edits", json={"trim": {"start": 0, "end": 1}}, headers=other), 404)
    problem(job({"items": [{"product_id": product_id}], "duration_seconds": 31}), 422, "validation_failed")
    body = problem(job({"items": [{"product_id": product_id}], "style": "slideshow"}), 422, "validation_failed")
    assert "showcase_360" in body["detail"]
    problem(job({"items": [{"product_id": their_product}]}), 404, "not_found")
    problem(job({"items": [{"product_id": product_id, "image_asset_id": their_image}]}), 404, "not_found")
    problem(job({"items": [{"product_id": product_id, "image_asset_id": clip["id"]}]}), 422, "video_frame_not_an_image")
    refs = {"product_id": product_id, "reference_asset_ids": [image_id]}
    problem(job({"items": [{**refs, "reference_asset_ids": [image_id, their_image]}]}), 404, "not_found")
    problem(job({"items": [{**refs, "reference_asset_ids": [clip["id"]]}]}), 422, "video_frame_not_an_image")
    problem(job({"items": [refs], "duration_seconds": 12}), 422, "validation_failed")  # Veo: 8 s clips only
    problem(job({"items": [{**refs, "image_asset_id": image_id}]}), 422, "validation_failed")  # no frame with refs
    problem(job({"items": [{**refs, "reference_asset_ids": ["a1", "a2", "a3", "a4"]}]}), 422, "validation_failed")
    problem(job({"items": [{"prompt": "a lamp", "last_frame_asset_id": image_id}]}), 422, "validation_failed")
    problem(job({"items": [{"prompt": "a lamp"}], "deliverables": ["4:3"]}), 422, "validation_failed")
    problem(job({"items": [{"prompt": "a lamp"}], "nonsense": True}), 422, "validation_failed")
    problem(job({"items": [{"prompt": "a lamp"}] * 21}), 422, "validation_failed")  # VIDEO_MAX_ITEMS
    assert available(stack, client_id) == before
    # More than the balance: 402, nothing reserved.
    problem(job({"items": [{"prompt": "a lamp"}] * 20, "duration_seconds": 30}), 402, "insufficient_credits")
    assert available(stack, client_id) == before


def test_a_damaged_stored_video_fails_its_edit_with_the_reason(
    stack: Any, video: Any, catalog: Any, headers: dict[str, str], client_id: str
) -> None:
    grant(stack, client_id, GRANT)
    clip = a_video(stack, video, catalog, headers, client_id)
    key = asset_doc(stack, client_id, clip["id"])["key"]
    data = stack.platform.object_store.get(key)
    stack.platform.object_store.put(key, data[: len(data) // 2], "video/mp4")  # cut short
    response = video.post(f"/videos/assets/{clip['id']}/edits", json={"trim": {"start": 0, "end": 1}}, headers=headers)
    assert response.status_code == 202, response.json
    done = finished(stack, video, headers, response.json["id"])
    (item,) = done["items"]
    assert item["status"] == "failed" and item["failure"]["code"] == "video_corrupt"
    assert asset_ref(stack, client_id, clip["id"]).get().to_dict()["current_revision"] == 1


def test_a_filtered_offline_video_is_refunded(
    stack: Any, video: Any, catalog: Any, headers: dict[str, str], client_id: str
) -> None:
    # One item per job here: the dispatcher fast-forwards the polls, but not the settle windows they finish in.
    grant(stack, client_id, GRANT)
    job = create(video, headers, {"items": [{"prompt": "a mug #offline-filtered"}], "duration_seconds": SHORT})
    assert available(stack, client_id) == (GRANT - 8, 8)
    done = finished(stack, video, headers, job["id"])
    (failed,) = done["items"]
    assert failed["status"] == "failed" and failed["failure"]["code"] == "video_filtered"
    assert "offline engine filtered" in failed["failure"]["message"]
    assert done["settlement"] == {"captured": 0, "released": 8, "succeeded": 0, "failed": 1}
    assert available(stack, client_id) == (GRANT, 0)
    library = catalog.get("/assets", query_string={"kind": "video"}, headers=headers).json["items"]
    assert library == []


# -- the real SDK against the Veo stub ------------------------------------------------------------------------


@pytest.fixture
def veo(clean_gemini_env: None) -> Iterator[VeoStub]:
    with VeoStub(bearer_token=STUB_TOKEN) as running:
        yield running


def install_veo(stack: Any, veo: VeoStub) -> None:
    """The Veo and TTS engines of the platform, through the real SDK, pointed at the stub."""
    from shared.engines.veo import VeoConfig, veo_engines

    config = VeoConfig(
        project="epox-test",
        location="us-central1",
        base_url=veo.url,
        storage_base_url=veo.url,
        credentials=Credentials(token=STUB_TOKEN),
        output_gcs_uri="gs://stub-veo-output/videos",
    )
    engine, speech = veo_engines(config)
    install(stack, video_engine=engine, speech_engine=speech)


def test_veo_through_the_real_sdk_polls_several_times_then_refunds_a_filtered_video(
    stack: Any, video: Any, catalog: Any, headers: dict[str, str], client_id: str, veo: VeoStub
) -> None:
    install_veo(stack, veo)
    grant(stack, client_id, GRANT)
    product_id = product_with_photo(stack, catalog, headers, client_id)
    veo.push(VideoScenario(polls=3))
    job = create(video, headers, {"items": [{"product_id": product_id}], "duration_seconds": 6, "audio": "native"})
    done = finished(stack, video, headers, job["id"])
    assert done["counts"]["succeeded"] == 1 and done["settlement"]["captured"] == 12
    (start,) = veo.calls_to("predictLongRunning")
    assert start.wire["parameters"]["durationSeconds"] == 6 and start.wire["parameters"]["generateAudio"] is True
    assert start.wire["instances"][0]["image"]["mimeType"] == "image/jpeg"  # the product's photo, as a frame
    assert len(veo.calls_to("fetchPredictOperation")) == 4  # three pending answers, then done
    assert len(veo.calls_to("gcs")) == 1  # written to GCS by the "model", downloaded once
    assert item_doc(stack, client_id, job["id"])["waits"] == 4  # one task per poll, none waiting in a worker
    (item,) = items(video, headers, job["id"])
    (result,) = item["videos"]
    info = media.probe(download(result["download_url"]))
    assert (info.width, info.height, info.audio_codec) == (1280, 720, "aac")  # the stub's 128x72, scaled exactly
    assert info.duration_seconds == pytest.approx(6.0, abs=0.05) and not info.offline

    veo.push("filtered")
    job = create(video, headers, {"items": [{"prompt": "a mug on a table"}], "duration_seconds": SHORT})
    done = finished(stack, video, headers, job["id"])
    (item,) = done["items"]
    assert item["status"] == "failed" and item["failure"]["code"] == "video_filtered"
    assert "usage guidelines" in item["failure"]["message"]
    assert done["settlement"] == {"captured": 0, "released": 8, "succeeded": 0, "failed": 1}
    assert available(stack, client_id) == (GRANT - 12, 0)


def test_reference_images_reach_veo_as_asset_references_of_8_second_clips(
    stack: Any, video: Any, catalog: Any, headers: dict[str, str], client_id: str, veo: VeoStub
) -> None:
    install_veo(stack, veo)
    grant(stack, client_id, GRANT)
    front = new_asset(stack, catalog, headers, client_id)
    side = new_asset(stack, catalog, headers, client_id)
    product_id = str(asset_doc(stack, client_id, front)["product_id"])
    item = {"product_id": product_id, "reference_asset_ids": [front, side]}
    job = create(video, headers, {"items": [item], "style": "showcase_360"})  # its 15 s become 8
    assert (job["settings"]["duration_seconds"], job["settings"]["clips"], job["cost"]) == (8, [8], 15)
    done = finished(stack, video, headers, job["id"])
    assert done["counts"]["succeeded"] == 1 and done["settlement"]["captured"] == 15
    (start,) = veo.calls_to("predictLongRunning")  # the stub refuses what Veo refuses: it took this one
    instance = start.wire["instances"][0]
    assert "image" not in instance and "lastFrame" not in instance and instance["prompt"]
    assert [ref["referenceType"] for ref in instance["referenceImages"]] == ["ASSET", "ASSET"]
    assert {ref["image"]["mimeType"] for ref in instance["referenceImages"]} == {"image/jpeg"}
    assert start.wire["parameters"]["durationSeconds"] == 8
    (result,) = items(video, headers, job["id"])[0]["videos"]
    assert media.probe(download(result["download_url"])).duration_seconds == pytest.approx(8.0, abs=0.05)
