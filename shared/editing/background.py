"""Background removal: a small port and its rembg adapter.

rembg cannot download weights here (nor should a cold start ever do so): the model is a u2net-style
ONNX file baked into the edit function's bundle and named by ``REMBG_MODEL_PATH``.

Cold start. Any ``import rembg...`` runs ``rembg/__init__``, which imports ``rembg.bg``, which imports
pymatting, scipy and scikit-image; pymatting's numba functions compile at import when no numba
cache exists -- tens of seconds in every new Cloud Functions instance (the cache is per machine and
per CPU, so one cannot be shipped that is known to be valid where it runs). So the plain cutout
(every removal unless ``REMBG_ALPHA_MATTING`` is on) does not import rembg at all: it runs rembg's
``u2net_custom`` steps here on onnxruntime, numpy and Pillow alone, step for step the same
arithmetic, so the pixels are byte-identical to ``rembg.remove(..., putalpha=True)`` (a unit test
compares them). Only alpha matting imports rembg (and with it pymatting and numba), and hands our
session to ``rembg.remove``, which only calls its ``predict``. Nothing here is imported at module
level: functions that never remove a background never pay for onnxruntime either.

rembg 2.0.86's ``u2net_custom`` (read from the installed package), mirrored by ``U2netSession``:
* The model gets ``(1, 3, 320, 320)`` float32 under the graph's first input name: the image in RGB,
  resized to 320x320 with Lanczos, divided by its maximum value, ImageNet-normalised per channel.
* ``outputs[0][:, 0]`` is min-max normalised, scaled to 0..255 (truncated to uint8) and resized
  back to the image with Lanczos: that map is the alpha channel.
* ``remove(..., putalpha=True)`` keeps the input's RGB bytes and only sets alpha (the default
  "naive" cutout multiplies the colours by the mask, darkening soft edges).
* rembg's ``new_session("u2net_custom", model_path=...)`` refuses a path outside its own home
  directory (a guard for user-supplied paths in its CLI and server); ours is operator
  configuration, used as is.
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from shared.errors import UpstreamUnavailable

if TYPE_CHECKING:
    from PIL import Image


class BackgroundRemovalUnavailable(UpstreamUnavailable):
    """The model file is not configured or not present: a deployment problem, not the caller's."""

    code = "background_removal_unavailable"
    title = "Background removal is not available"


class BackgroundRemover(ABC):
    """Port: cut the subject out of an image."""

    name: str = "remover"

    @abstractmethod
    def remove(self, image: Image.Image, *, alpha_matting: bool = False) -> Image.Image:
        """An RGBA image: the input's pixels with alpha marking the subject."""


def check_model_path(model_path: str) -> str:
    """The absolute path of a configured, existing model file; 503 otherwise (cheap: no imports)."""
    if not model_path:
        raise BackgroundRemovalUnavailable(
            "Background removal is not configured on this deployment (REMBG_MODEL_PATH is empty)", retry_after=300
        )
    path = os.path.abspath(os.path.expanduser(model_path))
    if not os.path.isfile(path):
        raise BackgroundRemovalUnavailable(
            "Background removal is not available: the model file is missing from this deployment", retry_after=300
        )
    return path


class RembgRemover(BackgroundRemover):
    """rembg's u2net cutout with a u2net-style ONNX model from a file; one session, created on first use."""

    name = "rembg"

    def __init__(self, model_path: str) -> None:
        self.model_path = model_path
        self._session: U2netSession | None = None
        self._lock = threading.Lock()

    @property
    def session(self) -> U2netSession:
        if self._session is None:
            with self._lock:
                if self._session is None:
                    self._session = U2netSession(check_model_path(self.model_path))
        return self._session

    def remove(self, image: Image.Image, *, alpha_matting: bool = False) -> Image.Image:
        session = self.session
        source = image.convert("RGB")
        source.info = {}  # rembg applies any EXIF orientation it finds; ours is already upright
        if alpha_matting:
            # The only path that needs pymatting (numba): imported here, on first use.
            from rembg import remove

            result = remove(source, session=session, alpha_matting=True)
            out: Image.Image = result.convert("RGBA")  # type: ignore[union-attr]
            return out
        source.putalpha(session.predict(source)[0])  # what remove(..., putalpha=True) does with one mask
        return source


class U2netSession:
    """rembg's ``U2netCustomSession`` without importing rembg: the same preprocessing, inference and
    mask, on onnxruntime (CPU). ``predict`` has rembg's session signature, so ``rembg.remove``
    accepts this object as its ``session`` for alpha matting."""

    SIZE = (320, 320)
    MEAN = (0.485, 0.456, 0.406)  # ImageNet, as rembg's u2net sessions use
    STD = (0.229, 0.224, 0.225)

    def __init__(self, model_path: str) -> None:
        import onnxruntime as ort

        ort.set_default_logger_severity(3)  # errors only, as importing rembg.bg sets it
        options = ort.SessionOptions()
        threads = os.environ.get("OMP_NUM_THREADS")  # what rembg.new_session honours too
        if threads and threads.isdigit():
            options.intra_op_num_threads = options.inter_op_num_threads = int(threads)
        # CPU only: Cloud Functions has no GPU, and probing for one costs start-up time.
        self.inner_session = ort.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"])
        self.input_name: str = self.inner_session.get_inputs()[0].name

    def predict(self, img: Image.Image, *args: Any, **kwargs: Any) -> list[Image.Image]:
        """One alpha mask the size of ``img`` (a list, as rembg's sessions answer)."""
        import numpy as np
        from PIL import Image

        # Same operations in the same order and dtypes as rembg's BaseSession.normalize (float64
        # until the final float32 cast), so the model sees bit-identical input.
        pixels = np.array(img.convert("RGB").resize(self.SIZE, Image.Resampling.LANCZOS))
        scaled = pixels / max(np.max(pixels), 1e-6)
        planes = np.zeros((scaled.shape[0], scaled.shape[1], 3))
        for channel in range(3):
            planes[:, :, channel] = (scaled[:, :, channel] - self.MEAN[channel]) / self.STD[channel]
        batch = np.expand_dims(planes.transpose((2, 0, 1)), 0).astype(np.float32)

        prediction = self.inner_session.run(None, {self.input_name: batch})[0][:, 0, :, :]
        high, low = np.max(prediction), np.min(prediction)
        # A flat map: rembg divides by zero (NaN, cast to 0 with a warning); answer the 0 outright.
        normalised = (prediction - low) / (high - low) if high > low else np.zeros_like(prediction)
        mask = Image.fromarray((np.squeeze(normalised) * 255).astype("uint8"))  # truncates, as rembg
        return [mask.resize(img.size, Image.Resampling.LANCZOS)]


_removers: dict[str, RembgRemover] = {}
_removers_lock = threading.Lock()


def shared_remover(model_path: str) -> RembgRemover:
    """The process's remover for ``model_path``: one ONNX session per process, however many requests."""
    with _removers_lock:
        remover = _removers.get(model_path)
        if remover is None:
            remover = _removers[model_path] = RembgRemover(model_path)
        return remover
