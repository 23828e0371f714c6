"""Merchants' own videos end to end: the video API opens the slot, the browser (httpx) PUTs the file to the
real presigned URL (moto), completion hands it to ``video_tasks`` (delivered by the local dispatcher), and
the worker stores a video asset or rejects the upload with the problem the file is. Clips are made with
PyAV directly (tests/videos.py); what the library says of an asset is checked against the file downloaded."""

from __future__ import annotations

import io
import os
import tempfile
from fractions import Fraction
from typing import Any

import httpx
import numpy as np
import pytest

from shared.video import media
from tests.catalog_helpers import asset_doc, make_product, problem
from tests.platforms import available, grant
from tests.videos import TONE_HZ, decoded_audio, decoded_frames, frame_index, make_clip, stream_facts

GRANT = 20
MAX_BYTES = 200 * 1024 * 1024  # VIDEO_UPLOAD_MAX_BYTES' default


@pytest.fixture
def video(stack: Any) -> Any:
    return stack.client("video_api")


def open_slot(video: Any, headers: dict[str, str], size: int, content_type: str = "video/mp4", **more: Any) -> Any:
    body = {"filename": "clip.mp4", "content_type": content_type, "size_bytes": size, **more}
    return video.post("/videos/uploads", json=body, headers=headers)


def put(http: httpx.Client, slot: dict[str, Any], data: bytes) -> None:
    response = http.put(slot["upload"]["url"], content=data, headers=slot["upload"]["headers"])
    assert response.status_code == 200, response.text


def upload(
    stack: Any,
    video: Any,
    http: httpx.Client,
    headers: dict[str, str],
    data: bytes,
    content_type: str = "video/mp4",
    **more: Any,
) -> dict[str, Any]:
    """Slot, PUT, complete, the worker's task: the upload as ``GET /videos/uploads/{id}`` shows it then."""
    slot = open_slot(video, headers, len(data), content_type, **more)
    assert slot.status_code == 201, slot.json
    put(http, slot.json, data)
    completed = video.post(f"/videos/uploads/{slot.json['id']}/complete", headers=headers)
    assert completed.status_code == 202, completed.json
    assert completed.json["status"] == "processing"
    stack.run_tasks()
    response = video.get(f"/videos/uploads/{slot.json['id']}", headers=headers)
    assert response.status_code == 200, response.json
    shown: dict[str, Any] = response.json
    return shown


def download(http: httpx.Client, url: str) -> bytes:
    response = http.get(url)
    assert response.status_code == 200, response.text[:300]
    return response.content


def raw_keys(stack: Any, client_id: str) -> list[str]:
    store = stack.platform.object_store
    listed = store.client.list_objects_v2(Bucket=store.bucket, Prefix=f"uploads/{client_id}/")
    return [item["Key"] for item in listed.get("Contents", [])]


def audio_only() -> bytes:
    """An M4A: an MP4 container holding AAC sound and no picture."""
    import av
    import numpy as np

    handle, path = tempfile.mkstemp(suffix=".mp4")
    os.close(handle)
    try:
        with av.open(path, "w", format="mp4") as out:
            sound: Any = out.add_stream("aac", rate=48_000)
            sound.layout = "stereo"
            for index in range(48):
                chunk = av.AudioFrame.from_ndarray(
                    np.zeros((2, 1024), dtype=np.float32), format="fltp", layout="stereo"
                )
                chunk.sample_rate, chunk.pts, chunk.time_base = 48_000, index * 1024, Fraction(1, 48_000)
                out.mux(sound.encode(chunk))
            out.mux(sound.encode(None))
        with open(path, "rb") as handle_in:
            return handle_in.read()
    finally:
        os.unlink(path)


def png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


# -- good files ---------------------------------------------------------------------------------------------


def test_an_uploaded_mp4_becomes_a_video_asset_of_its_exact_facts_and_can_be_trimmed(
    stack: Any, video: Any, catalog: Any, http: httpx.Client, headers: dict[str, str], client_id: str
) -> None:
    grant(stack, client_id, GRANT)
    product_id = make_product(catalog, headers, "Desk Lamp")
    clip = make_clip(320, 180, 24, 3.0)  # H.264 and AAC in an MP4: kept as uploaded
    slot = open_slot(video, headers, len(clip), product_id=product_id)
    assert slot.status_code == 201, slot.json
    assert (slot.json["status"], slot.json["purpose"], slot.json["product_id"]) == ("pending", "video", product_id)
    assert slot.json["upload"]["headers"] == {"Content-Type": "video/mp4", "Content-Length": str(len(clip))}
    upload_id = slot.json["id"]
    problem(video.post(f"/videos/uploads/{upload_id}/complete", headers=headers), 409, "upload_not_received")
    put(http, slot.json, clip)
    # The catalog's completion is for images and CSV files: a video is completed by the video API.
    problem(catalog.post(f"/uploads/{upload_id}/complete", headers=headers), 409, "conflict")
    first = video.post(f"/videos/uploads/{upload_id}/complete", headers=headers)
    again = video.post(f"/videos/uploads/{upload_id}/complete", headers=headers)
    assert first.status_code == again.status_code == 202 and again.json["status"] == "processing"
    assert stack.run_tasks() == 1  # one task for both completions
    shown = video.get(f"/videos/uploads/{upload_id}", headers=headers).json
    assert (shown["status"], shown["rejection"]) == ("completed", None)
    asset_id = shown["asset_id"]
    assert asset_id == upload_id.replace("upl_", "ast_", 1)
    assert catalog.get(f"/uploads/{upload_id}", headers=headers).json["status"] == "completed"

    detail = catalog.get(f"/assets/{asset_id}", headers=headers).json
    assert (detail["media"], detail["kind"], detail["content_type"]) == ("video", "video", "video/mp4")
    assert (detail["width"], detail["height"], detail["product_id"]) == (320, 180, product_id)
    assert detail["duration_seconds"] == pytest.approx(3.0, abs=0.001)
    facts = detail["video"]
    assert (facts["fps"], facts["video_codec"], facts["audio_codec"], facts["offline"]) == (24, "h264", "aac", False)
    stored = download(http, detail["download_url"])
    assert stored == clip and facts["size_bytes"] == len(clip)  # as uploaded, not re-encoded
    assert download(http, detail["poster_url"])[8:12] == b"WEBP"
    doc = asset_doc(stack, client_id, asset_id)
    assert (doc["origin"], doc["source"]) == ("upload", "upload")
    assert doc["metadata"]["upload"]["filename"] == "clip.mp4" and doc["metadata"]["upload"]["re_encoded"] is False
    listed = catalog.get("/assets", query_string={"kind": "video"}, headers=headers).json["items"]
    assert [a["id"] for a in listed] == [asset_id]
    assert raw_keys(stack, client_id) == []  # the raw upload is not kept

    trim = video.post(f"/videos/assets/{asset_id}/edits", json={"trim": {"start": 0.5, "end": 2.5}}, headers=headers)
    assert trim.status_code == 202, trim.json
    stack.run_tasks()
    job = video.get(f"/videos/jobs/{trim.json['id']}", headers=headers).json
    assert job["status"] == "completed" and job["items"][0]["revision"] == 2
    detail = catalog.get(f"/assets/{asset_id}", headers=headers).json
    trimmed = download(http, detail["download_url"])
    info = media.probe(trimmed)
    assert info.duration_seconds == pytest.approx(2.0, abs=1 / 48) and info.frames == 48
    assert [frame_index(f) for f in decoded_frames(trimmed)] == list(range(12, 60))  # 0.5 s in, exactly
    assert detail["current_revision"] == 2 and detail["duration_seconds"] == pytest.approx(2.0, abs=0.01)
    assert available(stack, client_id) == (GRANT, 0)  # uploading and trimming are free

    # A voiceover over the clip's own sound, which stays underneath at the volume asked for (1 credit).
    body = {"audio": {"voiceover": "Light for late nights.", "original_volume": 0.3}}
    voiced = video.post(f"/videos/assets/{asset_id}/edits", json=body, headers=headers)
    assert voiced.status_code == 202 and voiced.json["cost"] == 1, voiced.json
    stack.run_tasks()
    detail = catalog.get(f"/assets/{asset_id}", headers=headers).json
    assert detail["current_revision"] == 3 and detail["revisions"][2]["operation"] == "voiceover over the sound"
    samples, rate = decoded_audio(download(http, detail["download_url"]))
    spectrum = np.abs(np.fft.rfft(samples[0])) / len(samples[0])
    tone = float(spectrum[round(TONE_HZ * len(samples[0]) / rate)])
    assert 0.01 < tone < 0.05  # the clip's 440 Hz tone (0.1 at full volume), under the voice's 140-260 Hz
    assert available(stack, client_id) == (GRANT - 1, 0)


def test_a_webm_is_re_encoded_to_an_mp4_every_browser_plays(
    stack: Any, video: Any, catalog: Any, http: httpx.Client, headers: dict[str, str]
) -> None:
    clip = make_clip(321, 181, 24, 2.0, codec="libvpx-vp9", container="webm", audio_codec="libopus")
    shown = upload(stack, video, http, headers, clip, "video/webm")
    assert shown["status"] == "completed", shown
    detail = catalog.get(f"/assets/{shown['asset_id']}", headers=headers).json
    stored = download(http, detail["download_url"])
    facts = stream_facts(stored)
    assert (facts["video_codec"], facts["pix_fmt"], facts["audio_codec"]) == ("h264", "yuv420p", "aac")
    assert (facts["width"], facts["height"]) == (detail["width"], detail["height"]) == (320, 180)  # even
    assert [frame_index(f) for f in decoded_frames(stored)] == list(range(48))  # every frame, in order
    assert detail["duration_seconds"] == pytest.approx(2.0, abs=0.001)
    assert detail["content_type"] == "video/mp4"


# -- bad files and bad slots ----------------------------------------------------------------------------------


def test_files_that_are_no_usable_video_are_rejected_with_their_problem_and_nothing_is_stored(
    stack: Any, video: Any, catalog: Any, http: httpx.Client, headers: dict[str, str], client_id: str
) -> None:
    grant(stack, client_id, GRANT)
    good = make_clip(160, 90, 24, 2.0)
    cases = {
        "video_unreadable": png(),  # a PNG named clip.mp4
        "video_corrupt": good[: len(good) * 2 // 3],  # cut short
        "video_too_long": make_clip(64, 36, 24, 31.0, audio=False),  # VIDEO_MAX_SECONDS is 30
        "video_codec_not_allowed": make_clip(160, 90, 24, 1.0, codec="mpeg4"),
    }
    for code, data in cases.items():
        shown = upload(stack, video, http, headers, data)
        assert (shown["status"], shown["asset_id"]) == ("rejected", None), (code, shown)
        assert shown["rejection"]["code"] == code and shown["rejection"]["detail"], shown
    no_picture = upload(stack, video, http, headers, audio_only())
    assert no_picture["rejection"]["code"] == "video_unreadable"
    assert "no video track" in no_picture["rejection"]["detail"]
    # A zero-byte file where one was announced (R2 would refuse the PUT: the object is written directly).
    slot = open_slot(video, headers, 1000).json
    stack.platform.object_store.put(f"uploads/{client_id}/{slot['id']}", b"", "video/mp4")
    assert video.post(f"/videos/uploads/{slot['id']}/complete", headers=headers).status_code == 202
    stack.run_tasks()
    empty = video.get(f"/videos/uploads/{slot['id']}", headers=headers).json
    assert (empty["status"], empty["rejection"]["code"]) == ("rejected", "video_unreadable")
    assert "empty" in empty["rejection"]["detail"]
    # Completing a rejected upload again answers it as it stands.
    again = video.post(f"/videos/uploads/{slot['id']}/complete", headers=headers)
    assert again.status_code == 202 and again.json["rejection"]["code"] == "video_unreadable"

    assert catalog.get("/assets", query_string={"kind": "video"}, headers=headers).json["items"] == []
    assert raw_keys(stack, client_id) == []
    assert available(stack, client_id) == (GRANT, 0)


def test_a_slot_is_refused_for_another_tenants_product_a_file_over_the_limit_or_no_video_type(
    stack: Any, video: Any, catalog: Any, headers: dict[str, str], other_client_id: str
) -> None:
    other = stack.headers(other_client_id)
    theirs = make_product(catalog, other, "Their Lamp")
    problem(open_slot(video, headers, 1000, product_id=theirs), 404, "not_found")
    body = problem(open_slot(video, headers, MAX_BYTES + 1), 413, "payload_too_large")
    assert body["limit"] == MAX_BYTES
    assert open_slot(video, headers, MAX_BYTES).status_code == 201
    problem(open_slot(video, headers, 1000, content_type="image/png"), 422, "validation_failed")
    problem(open_slot(video, headers, 0), 422, "validation_failed")
    # The catalog's slots are for images and CSV files.
    body = {"filename": "a.mp4", "content_type": "video/mp4", "size_bytes": 10, "purpose": "video"}
    problem(catalog.post("/uploads", json=body, headers=headers), 422, "validation_failed")
    # Another tenant's upload is not found, nor is an image upload on the video routes.
    mine = open_slot(video, headers, 1000).json["id"]
    problem(video.get(f"/videos/uploads/{mine}", headers=other), 404, "not_found")
    problem(video.post(f"/videos/uploads/{mine}/complete", headers=other), 404, "not_found")
    product_id = make_product(catalog, headers, "Lamp")
    image = {"filename": "a.png", "content_type": "image/png", "size_bytes": 10, "product_id": product_id}
    image_slot = catalog.post("/uploads", json=image, headers=headers).json["id"]
    problem(video.get(f"/videos/uploads/{image_slot}", headers=headers), 404, "not_found")
