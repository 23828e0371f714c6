"""PyAV and numpy load in the video worker's item steps only: not when ``functions/video/main.py`` is
imported (both entry points share it), nor on anything the API's routes run — accepting a video job or an
edit, reading jobs and items, writing a script, enhancing a prompt, listing the styles, opening and
completing a video upload. A clean interpreter
runs those use cases on the in-memory fakes, then one worker delivery, which must load them (so the check
can fail)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("av", "numpy")

PROBE = """
import json, sys
heavy = json.loads(sys.argv[1])
seen = {}
def loaded():
    return sorted(name for name in heavy if name in sys.modules)

import functions.video.main as main
seen["import"] = loaded()

from shared.batch.models import ItemListQuery
from shared.catalog.assets import NewAsset, create_asset
from shared.catalog.models import AssetKind, AssetOrigin, MediaKind
from shared.engines.offline import OfflineEngine
from shared.ledger.pricing import load_default_prices
from shared.videos import jobs, scripts
from shared.videos.jobs import VIDEOS, VideoOrder
from shared.videos.models import ScriptRequest, VideoEditRequest, VideoEnhanceRequest
from shared.batch import lifecycle
from tests.unit.test_video_jobs import CLIENT, Stack, product

stack = Stack()
pid = product(stack)
job = stack.accept(items=[{"product_id": pid}], duration_seconds=8, style="spoken_script")
jobs.job_out(stack.jobs, job)
jobs.list_items(stack.jobs, stack.catalog, stack.store, CLIENT, job.id, ItemListQuery(), 60)
scripts.script(OfflineEngine(), stack.catalog.products, CLIENT, ScriptRequest(product_id=pid))
scripts.enhance(stack.services.settings, stack.catalog.products, OfflineEngine(), CLIENT,
                VideoEnhanceRequest(prompt="a mug on a table", product_id=pid, style="showcase_360"))
main.list_styles(None)  # the handler reads nothing of its request

class Media:
    def __init__(self, data):
        self.data, self.content_type, self.extension, self.width, self.height = data, "video/mp4", "mp4", 1280, 720

class Still:
    data, content_type = b"RIFF....WEBP", "image/webp"

new = NewAsset(asset_id="v1", client_id=CLIENT, kind=AssetKind.VIDEO, source="clips", origin=AssetOrigin.GENERATED,
               operation="generate_video", media=MediaKind.VIDEO, duration_seconds=8.0)
create_asset(stack.catalog.assets, stack.store, new, Media(b"not decoded here"), Still(), stack.now, poster=Still())
order = VideoOrder(client_id=CLIENT, user_id="u1", request_key=None, prices=load_default_prices(),
                   edit=VideoEditRequest.model_validate({"trim": {"start": 1, "end": 3}}), asset_id="v1",
                   scope=("edit", "v1"))
lifecycle.accept(VIDEOS, stack.services, order)

from shared.catalog.uploads import UploadPolicy, raw_upload_key
from shared.imaging import ImageLimits
from shared.videos import uploads as video_uploads
from tests.fakes import RecordingTaskQueue
slots = UploadPolicy(image_max_bytes=1, csv_max_bytes=1, presign_expiry_seconds=60, image_limits=ImageLimits(),
                     thumbnail_max_side=64)
policy = video_uploads.VideoUploadPolicy(max_bytes=1000, max_seconds=30, slots=slots)
data = video_uploads.VideoUploadCreate(filename="a.mp4", content_type="video/mp4", size_bytes=4)
slot = video_uploads.create_video_upload(stack.catalog, stack.store, CLIENT, data, policy, stack.now)
stack.store.put(raw_upload_key(CLIENT, slot.id), b"abcd", "video/mp4")
video_uploads.complete_video_upload(stack.catalog, stack.store, RecordingTaskQueue(), CLIENT, slot.id, stack.now)
video_uploads.get_video_upload(stack.catalog.uploads, CLIENT, slot.id)
seen["routes"] = loaded()

stack.step()  # the fan-out, and the first delivery of the item: it starts the clip
stack.run()   # polled, fetched, joined: the worker's steps
seen["worker"] = loaded()
print(json.dumps(seen))
"""


def test_the_api_never_loads_pyav_or_numpy_and_the_worker_does() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(HEAVY)], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["import"] == []
    assert seen["routes"] == []
    assert seen["worker"] == sorted(HEAVY)
