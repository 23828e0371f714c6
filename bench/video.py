"""``python -m bench.video``: numbers for the video toolkit and the Veo adapter (issue #15).

1. Worker overhead per clip, the model excluded: an 8 s 720p clip through what a video worker does once
   Veo is done — poll (the real SDK against the local Vertex stub; the operation is already done),
   download from the stub's GCS endpoint, probe, poster + thumbnail (WebP), a voiceover muxed in (picture
   copied), and the deliverables 9:16 and 1:1 by crop. Median of 3. The R2 upload is not included.
2. Peak memory of trim and reframe on a 30 s 1080p clip, in a fresh subprocess: the kernel's peak resident
   set (``VmHWM``, reset through ``/proc/self/clear_refs`` just before the step) minus the resident size
   before it (tracemalloc cannot see FFmpeg's allocations; see bench/edit.py for why not ``ru_maxrss``).
   A 2 s trim beside the 20 s one shows whether memory follows the clip's length (it must not: frames
   are streamed).
3. Speed of trim and crop in seconds of video per second of wall time, on both clips.

The clips are a slow pan over a textured picture (blurred noise over a gradient), so the encoder works
about as hard as on a real product video (a flat test pattern would flatter every number).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def textured_clip(width: int, height: int, seconds: int, fps: int = 24) -> bytes:
    """A pan over blurred noise on a gradient, with a quiet tone: H.264 + AAC through the toolkit's writer."""
    import numpy as np
    from PIL import Image, ImageFilter

    from shared.video.media import AUDIO_RATE, VideoWriter

    frames = seconds * fps
    canvas_w = width + frames  # one pixel of pan per frame
    noise = Image.effect_noise((canvas_w, height), 48).filter(ImageFilter.GaussianBlur(1.2))
    base = np.asarray(noise.convert("RGB"), dtype=np.int16)
    gradient = np.linspace(0, 120, canvas_w, dtype=np.int16)[None, :, None]
    picture = np.clip(base + gradient - 60, 0, 255).astype(np.uint8)
    with VideoWriter(width, height, fps, audio=True) as writer:
        for index in range(frames):
            writer.add_rgb(np.ascontiguousarray(picture[:, index : index + width]))
        t = np.arange(seconds * AUDIO_RATE) / AUDIO_RATE
        tone = (0.1 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
        writer.add_audio(np.stack([tone, tone]))
        return writer.finish()


def _median_ms(step: Callable[[], Any], runs: int = 3) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = step()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), result


def worker_overhead(clip: bytes) -> dict[str, float]:
    import importlib

    from google.oauth2.credentials import Credentials

    from shared.engines.veo import VeoConfig, veo_engines
    from shared.engines.video import VideoRequest
    from shared.video import media
    from tests.videos import wav_tone

    # By name: the stub is test code that mypy (which checks bench/) does not hold to its rules.
    stubs: Any = importlib.import_module("tests.stubs.veo")
    STUB_TOKEN, VeoStub, VideoScenario = stubs.STUB_TOKEN, stubs.VeoStub, stubs.VideoScenario  # noqa: N806

    timings: dict[str, float] = {}
    with VeoStub(bearer_token=STUB_TOKEN) as stub:
        config = VeoConfig(
            project="bench",
            base_url=stub.url,
            storage_base_url=stub.url,
            credentials=Credentials(token=STUB_TOKEN),  # type: ignore[no-untyped-call]
            output_gcs_uri="gs://bench/veo",
        )
        veo, _ = veo_engines(config)
        stub.push(VideoScenario(video=clip))
        operation = veo.start(VideoRequest(prompt="bench"))
        timings["poll (SDK, done)"], poll = _median_ms(lambda: veo.poll(operation))
        timings["download (GCS JSON API)"], data = _median_ms(lambda: veo.fetch(poll.result))
    assert data == clip
    voice = wav_tone(6.0)
    timings["probe"], _ = _median_ms(lambda: media.probe(data))
    timings["poster + thumbnail (WebP)"], _ = _median_ms(lambda: (media.poster(data), media.thumbnail(data)))
    timings["voiceover mux (picture copied)"], _ = _median_ms(lambda: media.set_audio(data, voice, original_volume=0.3))
    timings["reframe 9:16 crop"], _ = _median_ms(lambda: media.reframe(data, "9:16", "crop"))
    timings["reframe 1:1 crop"], _ = _median_ms(lambda: media.reframe(data, "1:1", "crop"))
    return timings


_MEMORY_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from shared.video import media
data = open(sys.argv[2], "rb").read()
media.probe(data)  # imports and FFmpeg's one-time set-up before the measurement
def status(name):
    for line in open("/proc/self/status"):
        if line.startswith(name + ":"):
            return int(line.split()[1])
steps = {
    "probe": lambda: media.probe(data),
    "trim": lambda: media.trim(data, 5.0, 25.0),
    "trim_short": lambda: media.trim(data, 5.0, 7.0),
    "reframe": lambda: media.reframe(data, "9:16", "crop"),
    "poster": lambda: media.poster(data, 12.0),
}
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
out = steps[sys.argv[3]]()
print(json.dumps({"before_kib": before, "peak_kib": status("VmHWM")}))
"""


def peak_memory(path: Path) -> dict[str, dict[str, float]]:
    results = {}
    for step in ("probe", "trim", "trim_short", "reframe", "poster"):
        out = subprocess.run(
            [sys.executable, "-c", _MEMORY_PROBE, str(ROOT), str(path), step],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        sample = json.loads(out.stdout.strip().splitlines()[-1])
        results[step] = {
            "step_mib": (sample["peak_kib"] - sample["before_kib"]) / 1024,
            "peak_mib": sample["peak_kib"] / 1024,
        }
    return results


def speed(data: bytes, seconds: float) -> dict[str, float]:
    """Seconds of video per second of wall time (one run each: these are long)."""
    from shared.video import media

    rates = {}
    steps: tuple[tuple[str, Callable[[], bytes], float], ...] = (
        ("trim (re-encode, frame-exact)", lambda: media.trim(data, 0.0, seconds), seconds),
        ("crop to 9:16", lambda: media.reframe(data, "9:16", "crop"), seconds),
        ("pad to 1:1", lambda: media.reframe(data, "1:1", "pad"), seconds),
    )
    for name, step, length in steps:
        started = time.perf_counter()
        step()
        rates[name] = length / (time.perf_counter() - started)
    return rates


def main() -> int:
    print("\n== video: building the test clips (textured pan, H.264 + AAC) ==")
    started = time.perf_counter()
    short = textured_clip(1280, 720, 8)
    short_s = time.perf_counter() - started
    started = time.perf_counter()
    long = textured_clip(1920, 1080, 30)
    long_s = time.perf_counter() - started
    print(f"  8 s 720p:  {len(short) / 1e6:5.1f} MB in {short_s:5.1f} s   ({8 / short_s:4.2f} s of video per s)")
    print(f"  30 s 1080p: {len(long) / 1e6:5.1f} MB in {long_s:5.1f} s   ({30 / long_s:4.2f} s of video per s)")

    print("\n== video: worker overhead per 8 s 720p clip, the model excluded (median of 3) ==")
    total = 0.0
    for name, ms in worker_overhead(short).items():
        total += ms
        print(f"  {name:<32} {ms:8.1f} ms")
    print(f"  {'total':<32} {total:8.1f} ms   (R2 upload not included)")

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "long.mp4"
        path.write_bytes(long)
        memory = peak_memory(path)
    print(f"\n== video: peak memory on the 30 s 1080p clip ({len(long) / 1e6:.1f} MB), fresh process per step ==")
    for step, label in (
        ("probe", "probe"),
        ("trim", "trim 5..25 s"),
        ("trim_short", "trim 5..7 s"),
        ("reframe", "reframe 9:16 crop"),
        ("poster", "poster at 12 s"),
    ):
        print(
            f"  {label:<20} +{memory[step]['step_mib']:6.1f} MiB   (process peak {memory[step]['peak_mib']:6.1f} MiB)"
        )

    print("\n== video: speed in seconds of video per second ==")
    for label, data, seconds in (("8 s 720p", short, 8.0), ("30 s 1080p", long, 30.0)):
        for name, rate in speed(data, seconds).items():
            print(f"  {label:<11} {name:<30} {rate:6.2f} s/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
