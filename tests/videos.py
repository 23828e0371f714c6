"""Test clips made with PyAV directly (not with the code under test), and ways to read them back.

Every frame carries its own index as a row of black/white blocks along its top edge
(:func:`frame_index` reads it back), so a test can tell exactly which source frames a trim kept. The
left half of the picture is red and the right half blue, so a test can tell a crop from a pad.
"""

from __future__ import annotations

import io
import os
import tempfile
from fractions import Fraction
from typing import Any

BITS = 10  # up to 1023 frames: 42 s at 24 fps
BLOCK = 8
TONE_HZ = 440.0


def make_clip(
    width: int = 320,
    height: int = 180,
    fps: int = 24,
    seconds: float = 3.0,
    *,
    audio: bool = True,
    codec: str = "libx264",
    container: str = "mp4",
    rotation: float | None = None,
    faststart: bool = True,
    audio_codec: str = "aac",
    tone_hz: float = TONE_HZ,
    amplitude: float = 0.2,
) -> bytes:
    """A clip of ``round(seconds * fps)`` numbered frames, with a sine tone when ``audio``."""
    import av
    import numpy as np

    handle, path = tempfile.mkstemp(suffix="." + container)
    os.close(handle)
    try:
        options = {"movflags": "+faststart"} if faststart and container == "mp4" else {}
        with av.open(path, "w", format=container, options=options) as out:
            video: Any = out.add_stream(codec, rate=fps)
            video.width, video.height = width, height
            video.pix_fmt = "yuv420p"
            if rotation is not None:
                video.set_display_rotation(rotation)
            sound: Any = None
            if audio:
                sound = out.add_stream(audio_codec, rate=48_000)
                sound.layout = "stereo"
            frames = round(seconds * fps)
            for index in range(frames):
                frame = av.VideoFrame.from_ndarray(numbered_picture(width, height, index), format="rgb24")
                frame.pts, frame.time_base = index, Fraction(1, fps)
                out.mux(video.encode(frame))
            out.mux(video.encode(None))
            if sound is not None:
                total = round(seconds * 48_000)
                position = 0
                while position < total:
                    count = min(1024, total - position)
                    t = np.arange(position, position + count) / 48_000
                    wave = (amplitude * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)
                    chunk = av.AudioFrame.from_ndarray(np.stack([wave, wave]), format="fltp", layout="stereo")
                    chunk.sample_rate, chunk.pts, chunk.time_base = 48_000, position, Fraction(1, 48_000)
                    out.mux(sound.encode(chunk))
                    position += count
                out.mux(sound.encode(None))
        with open(path, "rb") as handle_in:
            return handle_in.read()
    finally:
        os.unlink(path)


def numbered_picture(width: int, height: int, index: int) -> Any:
    import numpy as np

    picture = np.zeros((height, width, 3), dtype=np.uint8)
    picture[:, : width // 2] = (200, 30, 30)
    picture[:, width // 2 :] = (30, 30, 200)
    picture[: BLOCK * 2, : BLOCK * BITS] = 0
    for bit in range(BITS):
        if index >> bit & 1:
            picture[: BLOCK * 2, bit * BLOCK : (bit + 1) * BLOCK] = 255
    return picture


def frame_index(rgb: Any) -> int:
    """The index a :func:`numbered_picture` carries (from a decoded (h, w, 3) array)."""
    value = 0
    for bit in range(BITS):
        block = rgb[BLOCK // 2 : BLOCK * 3 // 2, bit * BLOCK + 2 : (bit + 1) * BLOCK - 2]
        if block.mean() > 128:
            value |= 1 << bit
    return value


def decoded_frames(data: bytes) -> list[Any]:
    """Every frame of the first video track as an RGB array (test clips are small)."""
    import av

    container: Any
    with av.open(io.BytesIO(data)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def stream_facts(data: bytes) -> dict[str, Any]:
    """What the container says, read independently of shared.video.media."""
    import av

    container: Any
    with av.open(io.BytesIO(data)) as container:
        facts: dict[str, Any] = {"format": container.format.name, "tags": dict(container.metadata)}
        video = container.streams.video[0] if container.streams.video else None
        if video is not None:
            facts.update(
                video_codec=video.codec_context.name,
                width=video.codec_context.width,
                height=video.codec_context.height,
                pix_fmt=video.codec_context.pix_fmt,
                frames=video.frames,
            )
            # From the packets: the track header rounds to the movie time scale (milliseconds).
            ends = [(p.pts + (p.duration or 0), p.pts) for p in container.demux(video) if p.size and p.pts is not None]
            tb = video.time_base
            facts["video_seconds"] = float((max(e for e, _ in ends) - min(s for _, s in ends)) * tb) if tb else None
            facts["packets"] = len(ends)
        audio = container.streams.audio[0] if container.streams.audio else None
        facts["audio_codec"] = audio.codec_context.name if audio is not None else None
        if audio is not None:
            facts["audio_rate"] = audio.codec_context.sample_rate
            facts["audio_channels"] = audio.codec_context.channels
        return facts


def decoded_audio(data: bytes) -> Any:
    """The first audio track as float32 (channels, samples) at its own rate, and that rate."""
    import av
    import numpy as np

    container: Any
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp", layout="stereo", rate=stream.codec_context.sample_rate)
        chunks = [out.to_ndarray() for frame in container.decode(stream) for out in resampler.resample(frame)]
        chunks += [out.to_ndarray() for out in resampler.resample(None)]
        return np.concatenate(chunks, axis=1), stream.codec_context.sample_rate


def wav_tone(seconds: float, hz: float = 220.0, rate: int = 24_000, amplitude: int = 8000) -> bytes:
    """A mono 16-bit WAV tone (a stand-in for a voiceover)."""
    import wave

    import numpy as np

    samples = (amplitude * np.sin(2 * np.pi * hz * np.arange(round(seconds * rate)) / rate)).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(samples.tobytes())
    return buffer.getvalue()
