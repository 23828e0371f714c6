"""Video jobs on in-memory fakes: pricing and the clip plan, the poll loop (ContinueLater until the clips
are ready, then one delivery joins them into assets), refunds for filtered, timed-out and cancelled videos,
references that are not the client's, and the nine styles.

The video engine here is a real :class:`VideoEngine` subclass answering small real MP4s (so the assembly
really runs PyAV); prompt markers script its misbehaviour."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
from pydantic import ValidationError as PydanticValidationError

from shared.batch import lifecycle
from shared.batch.kind import Finish, ItemRun
from shared.batch.models import ItemStatus, ItemTask, JobStatus, JobTask
from shared.catalog.assets import NewProductImage, store_product_image
from shared.catalog.models import AssetKind, AssetOrigin, MediaKind, ProductDoc
from shared.engines.base import EngineRetryableError
from shared.engines.offline import OfflineEngine
from shared.engines.offline_video import OfflineSpeechEngine
from shared.engines.video import (
    VideoEngine,
    VideoOperation,
    VideoPoll,
    VideoRequest,
    VideoResult,
)
from shared.errors import NotFound, ValidationFailed
from shared.imaging import ImageLimits
from shared.ledger.model import Actor, GrantSource
from shared.ledger.pricing import load_default_prices
from shared.ledger.service import Ledger
from shared.tasks import RetryTask, TaskCall, TaskRequest
from shared.video import media
from shared.videos import jobs, plan, scripts
from shared.videos.jobs import VIDEOS, VideoOrder, VideoPolicy, VideoServices
from shared.videos.models import VideoItemDoc, VideoJobCreate, VideoJobDoc
from shared.videos.styles import PLACEHOLDERS, get_style, render, styles
from tests import images
from tests.fakes import InMemoryLedgerStore, InMemoryObjectStore, RecordingTaskQueue
from tests.fakes_batch import InMemoryJobStore
from tests.fakes_catalog import in_memory_catalog
from tests.fakes_settings import InMemoryGenerationSettings
from tests.videos import TONE_HZ, decoded_audio, make_clip

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
CLIENT, OTHER = "c1", "c2"
CREDITS = 200
POLICY = VideoPolicy(
    max_seconds=30,
    max_items=20,
    hold_ttl=timedelta(hours=6),
    max_attempts=3,
    fast_model="veo-fast",
    quality_model="veo-quality",
)


class ClipEngine(VideoEngine):
    """Answers each operation after ``pending`` polls with a small real clip of the requested length.
    Prompt markers: ``#filtered`` (filtered output), ``#broken`` (a failed operation a new one may fix,
    once per prompt), ``#busy-start`` (every second start answers 429), ``#busy-always`` (every start does)."""

    name: ClassVar[str] = "clips"

    def __init__(self, pending: int = 0) -> None:
        self.pending = pending
        self.requests: list[VideoRequest] = []
        self.polls: Counter[str] = Counter()
        self.broken: set[str] = set()
        self._ids = itertools.count()

    def start(self, request: VideoRequest) -> VideoOperation:
        if "#busy-always" in request.prompt:
            raise EngineRetryableError("scripted: busy", retry_after=7)
        if "#busy-start" in request.prompt and len(self.requests) % 2 == 1:
            self.requests.append(request)
            raise EngineRetryableError("scripted: busy", retry_after=7)
        self.requests.append(request)
        data = {"seconds": request.duration_seconds, "audio": request.audio, "prompt": request.prompt}
        return VideoOperation(name=f"ops/{next(self._ids)}", engine=self.name, model=request.model or "m", data=data)

    def poll(self, operation: VideoOperation) -> VideoPoll:
        self.polls[operation.name] += 1
        if self.polls[operation.name] <= self.pending:
            return VideoPoll.pending(progress=50)
        prompt = str(operation.data["prompt"])
        if "#filtered" in prompt:
            return VideoPoll.filtered(["scripted: the output broke the usage guidelines"], 1)
        if "#broken" in prompt and prompt not in self.broken:
            self.broken.add(prompt)
            return VideoPoll.failed("scripted: internal error", restartable=True)
        return VideoPoll.done(VideoResult(data=_clip(int(operation.data["seconds"]), bool(operation.data["audio"]))))

    def fetch(self, result: VideoResult) -> bytes:
        assert result.data is not None
        return result.data


_CLIPS: dict[tuple[int, bool], bytes] = {}


def _clip(seconds: int, audio: bool) -> bytes:
    if (seconds, audio) not in _CLIPS:
        _CLIPS[(seconds, audio)] = make_clip(128, 72, 24, float(seconds), audio=audio)
    return _CLIPS[(seconds, audio)]


class Stack:
    """One tenant's video jobs on fakes (and another tenant's credits), its tasks delivered by hand."""

    def __init__(self) -> None:
        self.now = NOW
        self.engine = ClipEngine()
        self.jobs: InMemoryJobStore[VideoJobDoc, VideoItemDoc] = InMemoryJobStore(VIDEOS)
        self.queue = RecordingTaskQueue()
        self.store = InMemoryObjectStore()
        self.ledger = Ledger(InMemoryLedgerStore(), clock=lambda: self.now)
        for client in (CLIENT, OTHER):
            self.ledger.grant(
                client, key="g", amount=CREDITS, source=GrantSource.PACK, actor=Actor(kind="admin", id="t"), reason="t"
            )
        self.catalog = in_memory_catalog()
        self.services = VideoServices(
            jobs=self.jobs,
            store=self.store,
            queue=self.queue,
            ledger=self.ledger,
            policy=POLICY.batch,
            clock=lambda: self.now,
            video=POLICY,
            catalog=self.catalog,
            settings=InMemoryGenerationSettings(),
            videos=lambda: self.engine,
            speech=OfflineSpeechEngine,
            texts=OfflineEngine,
        )
        self.delivered: set[int] = set()

    def accept(self, client_id: str = CLIENT, **fields: Any) -> VideoJobDoc:
        data = VideoJobCreate.model_validate(fields)
        order = VideoOrder(
            client_id=client_id, user_id="u1", request_key=None, prices=load_default_prices(), request=data
        )
        return lifecycle.accept(VIDEOS, self.services, order)

    def deliver(self, task: TaskRequest) -> str:
        self.delivered.add(id(task))
        payload = task.payload
        if isinstance(payload, ItemTask):
            call = TaskCall(queue="q", name=task.name or "", retry_count=0, execution_count=0)
            return lifecycle.run_item(VIDEOS, self.services, payload, call, self.now)
        assert isinstance(payload, JobTask)
        if task.path == "/tasks/fanout":
            return lifecycle.fan_out(VIDEOS, self.services, payload)
        return lifecycle.run_settle(VIDEOS, self.services, payload, self.now)

    def _due(self) -> list[TaskRequest]:
        waiting = [t for t in self.queue.tasks if id(t) not in self.delivered]
        # Settle tasks are named after a window and may be delivered at once; item tasks wait for their time.
        return [t for t in waiting if t.path != "/tasks/item" or t.schedule_time is None or t.schedule_time <= self.now]

    def step(self, advance: timedelta = timedelta(0)) -> list[str]:
        """Move the clock by ``advance``, then deliver every task that is due (and those it enqueues)."""
        self.now += advance
        outcomes = []
        while due := self._due():
            outcomes.append(self.deliver(due[0]))
        return outcomes

    def run(self, max_rounds: int = 20) -> list[str]:
        """Deliver everything, moving the clock to each next scheduled poll."""
        outcomes: list[str] = []
        for _ in range(max_rounds):
            outcomes += self.step()
            later = [t.schedule_time for t in self.queue.tasks if id(t) not in self.delivered and t.schedule_time]
            if not later:
                return outcomes
            self.now = max(self.now, min(later))
        raise AssertionError(f"still waiting after {max_rounds} rounds: {outcomes}")

    def item(self, job_id: str, index: int = 0) -> VideoItemDoc:
        stored = self.jobs.read_item(CLIENT, job_id, index)
        assert stored is not None
        return stored.item

    def credits(self, client_id: str = CLIENT) -> tuple[int, int]:
        state = self.ledger.state(client_id)
        return state.available, state.reserved


@pytest.fixture
def stack() -> Stack:
    return Stack()


def product(stack: Stack, client_id: str = CLIENT, *, name: str = "Ceramic Mug", photo: bool = True) -> str:
    """A product of ``client_id`` (with one photo)."""
    products = stack.catalog.products.products
    pid = f"p{client_id}{len(products.get(client_id, {})) + 1}"
    doc = ProductDoc(
        id=pid,
        client_id=client_id,
        name=name,
        category="kitchen",
        description="A 350 ml mug, glazed by hand. Dishwasher safe.",
        tags=["handmade", "dishwasher safe"],
        created_at=NOW,
        updated_at=NOW,
    )
    products.setdefault(client_id, {})[pid] = (doc, 1)
    if photo:
        store_product_image(
            stack.catalog.assets,
            stack.store,
            client_id=client_id,
            product_id=pid,
            image_bytes=images.png((320, 240)),
            origin=NewProductImage(asset_id=f"img-{client_id}-{pid}", origin=AssetOrigin.UPLOAD),
            limits=ImageLimits(),
            thumbnail_max_side=128,
            now=NOW,
        )
    return pid


# -- prices and the clip plan ---------------------------------------------------------------------------


def test_an_8_second_720p_clip_costs_15_credits_by_default() -> None:
    prices = load_default_prices()
    assert plan.clip_price(prices, "fast", "720p", 8) == 15
    assert plan.plan_clips(8, plan.clip_prices(prices, "fast", "720p")) == [8]
    assert plan.item_costs(prices, quality="fast", resolution="720p", clips=[8], voiceover=False) == {"video": 15}
    # Every clip length has a price at both resolutions and both qualities (the price list is configurable).
    for quality in ("fast", "quality"):
        for resolution in ("720p", "1080p"):
            assert set(plan.clip_prices(prices, quality, resolution)) == {4, 6, 8}


@pytest.mark.parametrize(
    ("seconds", "clips"),
    [(4, [4]), (5, [6]), (8, [8]), (10, [6, 4]), (16, [8, 8]), (20, [8, 8, 4]), (29, [8, 8, 8, 6]), (30, [8, 8, 8, 6])],
)
def test_a_longer_video_is_the_cheapest_clips_that_cover_it(seconds: int, clips: list[int]) -> None:
    prices = plan.clip_prices(load_default_prices(), "fast", "720p")
    chosen = plan.plan_clips(seconds, prices)
    assert chosen == clips
    assert seconds <= sum(chosen) <= seconds + plan.SLACK_SECONDS


def test_the_plan_follows_the_price_list() -> None:
    """An admin who makes 4 s clips cheap gets 16 s as four of them."""
    assert plan.plan_clips(16, {4: 1, 6: 50, 8: 50}) == [4, 4, 4, 4]


def test_a_job_reserves_every_item_once_at_accept(stack: Stack) -> None:
    pid = product(stack)
    job = stack.accept(items=[{"product_id": pid}, {"prompt": "a linen tote on a beach"}], duration_seconds=20)
    assert job.settings is not None and job.settings.clips == [8, 8, 4]
    assert (job.item_cost, job.cost, job.costs) == (38, 76, {"video": 38})
    assert stack.credits() == (CREDITS - 76, 76)
    quality = stack.accept(items=[{"prompt": "a lamp"}], quality="quality", audio="voiceover", resolution="1080p")
    assert quality.settings is not None and quality.settings.model == "veo-quality"
    assert quality.costs == {"video_quality": 48, "voiceover": 1}


# -- the poll loop --------------------------------------------------------------------------------------


def test_a_job_polls_until_its_clips_are_done_then_stores_one_video_per_deliverable(stack: Stack) -> None:
    stack.engine.pending = 2
    pid = product(stack)
    job = stack.accept(items=[{"product_id": pid}], duration_seconds=4, deliverables=["16:9", "1:1"], audio="native")
    first = stack.step()
    assert first[-1].startswith("item 0 continues at")  # started, not waited for
    item = stack.item(job.id)
    assert (item.status, item.waits, item.attempts) == (ItemStatus.QUEUED, 1, 0)
    assert [(c.seconds, c.operation is not None, c.raw_key) for c in item.clips] == [(4, True, None)]
    assert item.prompt_used and "Ceramic Mug" in item.prompt_used and "exactly as it appears" in item.prompt_used
    (request,) = stack.engine.requests
    assert request.image is not None and request.image.mime_type == "image/jpeg"  # the product's photo
    assert (request.duration_seconds, request.aspect_ratio, request.audio) == (4, "16:9", True)

    assert stack.step(timedelta(seconds=20))[-1].startswith("item 0 continues")  # still pending
    assert stack.item(job.id).waits == 2
    outcomes = stack.run()
    assert "item 0 succeeded: 2 videos" in outcomes
    done = stack.jobs.get_job(CLIENT, job.id)
    assert done.settled and done.settlement == {"captured": 8, "released": 0, "succeeded": 1, "failed": 0}
    assert stack.credits() == (CREDITS - 8, 0)
    item = stack.item(job.id)
    assert len(item.asset_ids) == 2 and item.waits == 3 and item.attempts == 1
    assets = stack.catalog.assets.get_many(CLIENT, item.asset_ids)
    sizes = {}
    for asset in assets.values():
        assert (asset.kind, asset.media, asset.content_type, asset.product_id) == (
            AssetKind.VIDEO,
            MediaKind.VIDEO,
            "video/mp4",
            pid,
        )
        assert asset.poster_key and asset.duration_seconds == pytest.approx(4.0, abs=0.05)
        info = media.probe(stack.store.get(asset.key))
        assert (info.width, info.height) == (asset.width, asset.height)
        assert asset.metadata["video"]["video_codec"] == "h264" and asset.metadata["video"]["audio_codec"] == "aac"
        sizes[asset.metadata["deliverable"]] = (info.width, info.height)
    assert sizes == {"16:9": (1280, 720), "1:1": (720, 720)}
    # The raw clips were copied to the object store, then removed once joined.
    assert not [key for key in stack.store.objects if key.startswith(jobs.CLIP_PREFIX)]


def test_a_redelivery_after_the_assets_were_stored_stores_nothing_twice(stack: Stack) -> None:
    job = stack.accept(items=[{"prompt": "a desk lamp"}], duration_seconds=4)
    stack.step()  # started
    stored_job = stack.jobs.get_job(CLIENT, job.id)
    stack.now += timedelta(seconds=20)
    run = ItemRun(stored_job, stack.item(job.id), None, last_attempt=False, now=stack.now, token="t1")
    first = VIDEOS.work(stack.services, run)  # the delivery stores the video, then "dies" before recording it
    objects = dict(stack.store.objects)
    again = VIDEOS.work(stack.services, run)  # its redelivery
    assert isinstance(first, Finish) and isinstance(again, Finish)
    assert first.status is again.status is ItemStatus.SUCCEEDED
    assert first.fields["asset_ids"] == again.fields["asset_ids"]
    assert stack.store.objects == objects  # nothing new written
    assert len(stack.engine.requests) == 1  # and nothing started again


def test_a_long_video_starts_every_clip_at_once_each_told_its_shot(stack: Stack) -> None:
    job = stack.accept(
        items=[{"prompt": "a tote bag"}], duration_seconds=20, style="showcase_360", deliverables=["16:9"]
    )
    stack.step()
    assert [r.duration_seconds for r in stack.engine.requests] == [8, 8, 4]
    assert all(f"shot {i + 1} of 3" in r.prompt for i, r in enumerate(stack.engine.requests))
    stack.run()
    (asset_id,) = stack.item(job.id).asset_ids
    asset = stack.catalog.assets.get(CLIENT, asset_id)
    assert asset is not None and asset.duration_seconds == pytest.approx(20.0, abs=0.05)
    assert asset.metadata["clips"] == [8, 8, 4]


def test_a_clip_that_fails_restartably_is_started_again(stack: Stack) -> None:
    job = stack.accept(items=[{"prompt": "a mug #broken"}], duration_seconds=4)
    stack.run()
    item = stack.item(job.id)
    assert item.status is ItemStatus.SUCCEEDED
    assert len(stack.engine.requests) == 2 and item.clips[0].restarts == 1


def test_a_busy_model_mid_start_keeps_the_clips_already_started(stack: Stack) -> None:
    job = stack.accept(items=[{"prompt": "a mug #busy-start"}], duration_seconds=16)
    outcomes = stack.step()
    assert "engine busy" in outcomes[-1]
    item = stack.item(job.id)
    assert [c.operation is not None for c in item.clips] == [True, False]  # the first kept, the second later
    assert (item.status, item.attempts) == (ItemStatus.QUEUED, 0)


def test_a_model_busy_before_anything_started_uses_an_attempt_rather_than_waiting_forever(stack: Stack) -> None:
    job = stack.accept(items=[{"prompt": "a mug #busy-always"}], duration_seconds=4)
    with pytest.raises(RetryTask):
        stack.step()  # the fan-out, then the item: 503 with Retry-After, the queue delivers again
    item = stack.item(job.id)
    assert (item.status, item.attempts, item.waits, item.clips) == (ItemStatus.RUNNING, 1, 0, [])


# -- failures are refunded ------------------------------------------------------------------------------


def test_a_filtered_video_fails_with_the_models_reason_and_is_refunded(stack: Stack) -> None:
    job = stack.accept(items=[{"prompt": "a mug #filtered"}, {"prompt": "a lamp"}], duration_seconds=4)
    assert stack.credits() == (CREDITS - 16, 16)
    stack.run()
    failed = stack.item(job.id, 0)
    assert failed.status is ItemStatus.FAILED and failed.failure is not None
    assert failed.failure["code"] == "video_filtered" and "usage guidelines" in failed.failure["message"]
    assert stack.item(job.id, 1).status is ItemStatus.SUCCEEDED
    done = stack.jobs.get_job(CLIENT, job.id)
    assert done.settlement == {"captured": 8, "released": 8, "succeeded": 1, "failed": 1}
    assert stack.credits() == (CREDITS - 8, 0)


def test_a_clip_still_pending_after_the_deadline_times_out_and_is_refunded(stack: Stack) -> None:
    stack.engine.pending = 10_000
    job = stack.accept(items=[{"prompt": "a mug"}], duration_seconds=4)
    stack.step()
    stack.step(timedelta(minutes=10))
    assert stack.item(job.id).status is ItemStatus.QUEUED
    stack.step(timedelta(minutes=11))  # 21 minutes after the start
    item = stack.item(job.id)
    assert item.status is ItemStatus.FAILED and item.failure is not None
    assert item.failure["code"] == "video_timed_out"
    stack.run()
    assert stack.credits() == (CREDITS, 0)


def test_cancelling_while_a_video_waits_for_the_model_refunds_it(stack: Stack) -> None:
    stack.engine.pending = 5
    job = stack.accept(items=[{"prompt": "a mug"}], duration_seconds=4)
    stack.step()
    assert stack.item(job.id).status is ItemStatus.QUEUED
    lifecycle.cancel_job(VIDEOS, stack.jobs, stack.queue, CLIENT, job.id, stack.now)
    stack.run()
    done = stack.jobs.get_job(CLIENT, job.id)
    assert done.status is JobStatus.CANCELLED and done.settlement is not None
    assert stack.item(job.id).status is ItemStatus.CANCELLED
    assert stack.credits() == (CREDITS, 0)


# -- what accepting refuses -----------------------------------------------------------------------------


def test_another_clients_product_or_image_is_a_404_and_nothing_is_reserved(stack: Stack) -> None:
    theirs = product(stack, OTHER)
    with pytest.raises(NotFound):
        stack.accept(items=[{"product_id": theirs}])
    ours = product(stack)
    with pytest.raises(NotFound):
        stack.accept(items=[{"product_id": ours, "image_asset_id": f"img-{OTHER}-{theirs}"}])
    assert stack.credits() == (CREDITS, 0)
    assert stack.jobs.jobs == {}


def test_reference_images_are_checked_before_anything_is_reserved(stack: Stack) -> None:
    ours, theirs = product(stack), product(stack, OTHER)
    mine, their_image = f"img-{CLIENT}-{ours}", f"img-{OTHER}-{theirs}"
    clip = video_asset(stack)
    before, made = stack.credits(), set(stack.jobs.jobs)
    with pytest.raises(NotFound, match=their_image):
        stack.accept(items=[{"product_id": ours, "reference_asset_ids": [mine, their_image]}], duration_seconds=8)
    with pytest.raises(jobs.FrameNotAnImage):
        stack.accept(items=[{"product_id": ours, "reference_asset_ids": [clip]}], duration_seconds=8)
    # What the model refuses is refused here: a length that is not whole 8 s clips, more than three
    # references, references with a first or last frame.
    with pytest.raises(ValidationFailed, match="8-second clips") as refused:
        stack.accept(items=[{"product_id": ours, "reference_asset_ids": [mine]}], duration_seconds=12)
    assert refused.value.extensions["errors"][0]["field"] == "duration_seconds"
    for item in (
        {"prompt": "a mug", "reference_asset_ids": ["a1", "a2", "a3", "a4"]},
        {"product_id": ours, "image_asset_id": mine, "reference_asset_ids": [mine]},
        {"product_id": ours, "last_frame_asset_id": mine, "reference_asset_ids": [mine]},
    ):
        with pytest.raises(PydanticValidationError):
            VideoJobCreate.model_validate({"items": [item]})
    assert stack.credits() == before
    assert set(stack.jobs.jobs) == made


def test_reference_images_guide_8_second_clips_without_a_first_frame(stack: Stack) -> None:
    pid = product(stack)
    front, side = f"img-{CLIENT}-{pid}", f"img-{CLIENT}-{product(stack)}"
    # The style's 15 s become 8: whole 8-second clips, each priced as such.
    job = stack.accept(items=[{"product_id": pid, "reference_asset_ids": [front, side, front]}], style="showcase_360")
    assert job.settings is not None and (job.settings.duration_seconds, job.settings.clips) == (8, [8])
    assert stack.item(job.id).reference_asset_ids == [front, side]  # repeats dropped
    long = stack.accept(items=[{"product_id": pid, "reference_asset_ids": [side]}], duration_seconds=16)
    assert long.settings is not None and long.settings.clips == [8, 8] and long.cost == 30
    stack.run()
    requests = stack.engine.requests
    assert len(requests) == 3 and all(r.duration_seconds == 8 and r.image is None for r in requests)
    assert sorted(len(r.reference_images) for r in requests) == [1, 1, 2]
    assert all(ref.mime_type == "image/jpeg" for r in requests for ref in r.reference_images)
    assert stack.item(job.id).status is ItemStatus.SUCCEEDED and stack.item(long.id).status is ItemStatus.SUCCEEDED


def test_a_voiceover_over_the_models_sound_keeps_that_sound_underneath(stack: Stack) -> None:
    pid = product(stack)
    script = "Meet the mug."
    mixed = stack.accept(items=[{"product_id": pid}], duration_seconds=4, audio="native_voiceover", script=script)
    replaced = stack.accept(items=[{"product_id": pid}], duration_seconds=4, audio="voiceover", script=script)
    assert mixed.cost == replaced.cost == 9  # the clip and the voiceover, either way
    stack.run()
    assert sorted(request.audio for request in stack.engine.requests) == [False, True]  # the model's sound asked once

    def tone(job_id: str) -> float:
        """How loud the model's 440 Hz tone is in the delivered video (the voice is 140-260 Hz)."""
        (asset_id,) = stack.item(job_id).asset_ids
        asset = stack.catalog.assets.get(CLIENT, asset_id)
        assert asset is not None
        import numpy as np  # here, not at the top: test_video_cold_imports imports this module's helpers

        samples, rate = decoded_audio(stack.store.get(asset.key))
        spectrum = np.abs(np.fft.rfft(samples[0])) / len(samples[0])
        return float(spectrum[round(TONE_HZ * len(samples[0]) / rate)])

    # make_clip's tone has amplitude 0.2 (0.1 here at full volume): a quarter of it stays under the voice.
    assert 0.01 < tone(mixed.id) < 0.04 and tone(replaced.id) < 0.001


def video_asset(stack: Stack) -> str:
    """A video asset of CLIENT (made by a one-item job)."""
    job = stack.accept(items=[{"prompt": "a mug"}], duration_seconds=4)
    stack.run()
    (asset_id,) = stack.item(job.id).asset_ids
    stack.engine.requests.clear()
    return asset_id


def test_settings_beyond_the_deployments_limits_are_refused(stack: Stack) -> None:
    with pytest.raises(ValidationFailed, match="style"):
        stack.accept(items=[{"prompt": "a mug"}], style="slideshow")
    small = replace(stack.services, video=replace(POLICY, max_seconds=16))
    order = VideoOrder(
        client_id=CLIENT,
        user_id="u1",
        request_key=None,
        prices=load_default_prices(),
        request=VideoJobCreate.model_validate({"items": [{"prompt": "a mug"}], "duration_seconds": 20}),
    )
    with pytest.raises(ValidationFailed, match="at most 16"):
        lifecycle.accept(VIDEOS, small, order)
    assert stack.credits() == (CREDITS, 0)


# -- styles, prompts and scripts ------------------------------------------------------------------------


def test_the_nine_styles_load_and_render() -> None:
    assert sorted(styles()) == sorted(
        [
            "spoken_script",
            "product_comparison",
            "narrative_comedy",
            "showcase_360",
            "brand_blockbuster",
            "unboxing_review",
            "how_to_tutorial",
            "limited_time_offer",
            "scene_integration",
        ]
    )
    for style in styles().values():
        text = render(style, 'the product "Mug"', ["dishwasher safe", "holds 350 ml"])
        assert '"Mug"' in text and not any(marker in text for marker in PLACEHOLDERS), style.id
        assert style.duration_seconds <= 30
    assert get_style("spoken_script").uses_script and get_style("spoken_script").audio == "voiceover"
    assert "is dishwasher safe and holds 350 ml" in render(
        get_style("spoken_script"), "it", ["dishwasher safe", "holds 350 ml"]
    )


def test_an_offline_script_names_the_product_and_fits_the_video() -> None:
    doc = ProductDoc(
        id="p1",
        client_id=CLIENT,
        name="Ceramic Mug",
        description="<p>A 350 ml mug, glazed by hand.</p> Dishwasher safe.",
        created_at=NOW,
        updated_at=NOW,
    )
    text = scripts.write_script(OfflineEngine(), get_style("spoken_script"), doc, ["handmade"], None, 8)
    assert text.startswith("Meet Ceramic Mug.") and "<p>" not in text
    assert len(text.split()) <= scripts.word_budget(8)
    assert scripts.fit_script("One two three. Four five six seven.", 5) == "One two three."
