"""Background removal: a small port and its rembg adapter.

rembg cannot download weights here (nor should a cold start ever do so): the model is a u2net-style
ONNX file baked into the edit function's bundle and named by ``REMBG_MODEL_PATH``. Importing rembg
pulls in onnxruntime, numpy, scipy, scikit-image and pymatting (whose numba functions compile at
import when no cache exists), so this module imports none of it at module level: the first removal
in a process pays for it once, and functions that never remove a background never do.

rembg 2.0.86 notes (read from the installed package):
* ``new_session("u2net_custom", model_path=...)`` refuses a ``model_path`` outside its own home
  directory (``REMBG_HOME``/``U2NET_HOME``/``~/.rembg``): a guard for user-supplied paths in its CLI
  and server. Ours is operator configuration, so the adapter builds the same ``U2netCustomSession``
  with that one lookup (``download_models``) answering the configured file instead of mutating the
  process environment.
* The session feeds the model ``(1, 3, 320, 320)`` float32 (ImageNet-normalised RGB) under the
  graph's first input name, reads ``outputs[0][:, 0]``, min-max normalises it and resizes it to the
  image: that map is the alpha channel.
* ``remove(..., putalpha=True)`` keeps the input's RGB bytes and only sets alpha (the default
  "naive" cutout multiplies the colours by the mask, darkening soft edges).
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
    """rembg with a u2net-style ONNX model from a file; one inference session, created on first use."""

    name = "rembg"

    def __init__(self, model_path: str) -> None:
        self.model_path = model_path
        self._session: Any = None
        self._lock = threading.Lock()

    @property
    def session(self) -> Any:
        if self._session is None:
            with self._lock:
                if self._session is None:
                    self._session = _new_session(check_model_path(self.model_path))
        return self._session

    def remove(self, image: Image.Image, *, alpha_matting: bool = False) -> Image.Image:
        from rembg import remove

        session = self.session
        source = image.convert("RGB")
        source.info = {}  # rembg applies any EXIF orientation it finds; ours is already upright
        result = remove(source, session=session, alpha_matting=alpha_matting, putalpha=not alpha_matting)
        out: Image.Image = result.convert("RGBA")  # type: ignore[union-attr]
        return out


def _new_session(path: str) -> Any:
    import onnxruntime as ort
    from rembg.sessions.u2net_custom import U2netCustomSession

    class ConfiguredU2netSession(U2netCustomSession):  # type: ignore[misc]
        """rembg's u2net_custom session reading the configured file, wherever it is."""

        @classmethod
        def download_models(cls, *args: Any, **kwargs: Any) -> str:
            return str(kwargs["model_path"])

    options = ort.SessionOptions()
    threads = os.environ.get("OMP_NUM_THREADS")  # what rembg.new_session honours too
    if threads and threads.isdigit():
        options.intra_op_num_threads = options.inter_op_num_threads = int(threads)
    # CPU only: Cloud Functions has no GPU, and probing for one costs start-up time.
    return ConfiguredU2netSession("u2net_custom", options, model_path=path, providers=["CPUExecutionProvider"])


_removers: dict[str, RembgRemover] = {}
_removers_lock = threading.Lock()


def shared_remover(model_path: str) -> RembgRemover:
    """The process's remover for ``model_path``: one ONNX session per process, however many requests."""
    with _removers_lock:
        remover = _removers.get(model_path)
        if remover is None:
            remover = _removers[model_path] = RembgRemover(model_path)
        return remover
