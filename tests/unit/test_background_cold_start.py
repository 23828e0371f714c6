"""Background removal on a new instance: the plain cutout runs without importing rembg (whose
``rembg.bg`` imports pymatting, whose numba functions compile at import on an empty cache), and its
pixels are byte-identical to rembg's own ``remove(..., putalpha=True)``; alpha matting still goes
through rembg and matches it too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from shared.editing.background import RembgRemover
from tests.rembg_model import build_tiny_u2net

ROOT = Path(__file__).resolve().parents[2]
MATTING_LIBRARIES = ("rembg", "pymatting", "numba", "scipy", "skimage")


@pytest.fixture(scope="module")
def rembg_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """rembg's own session only reads models under its home directory: build them there."""
    home = tmp_path_factory.mktemp("rembg_home")
    build_tiny_u2net(home / "plain.onnx")
    build_tiny_u2net(home / "clipped.onnx", clip=(-1.2, 1.0))  # crisp: exact 0 and 255 areas
    return home


def rembg_reference(home: Path, model: str) -> Callable[..., Image.Image]:
    """What the adapter did before: rembg.remove with rembg's u2net_custom session on the same file."""
    os.environ["REMBG_HOME"] = str(home)
    try:
        from rembg import new_session, remove

        session = new_session("u2net_custom", model_path=str(home / model), providers=["CPUExecutionProvider"])
    finally:
        del os.environ["REMBG_HOME"]

    def run(image: Image.Image, **options: Any) -> Image.Image:
        source = image.convert("RGB")
        source.info = {}
        out: Image.Image = remove(source, session=session, **options).convert("RGBA")
        return out

    return run


def photo(size: tuple[int, int]) -> Image.Image:
    """A photo-like picture: gradient backdrop, sensor grain, a bright subject and a dark one."""
    width, height = size
    img = Image.blend(
        Image.linear_gradient("L").resize(size).convert("RGB"), Image.effect_noise(size, 40).convert("RGB"), 0.3
    )
    draw = ImageDraw.Draw(img)
    draw.ellipse((width // 4, height // 5, width * 3 // 4, height * 4 // 5), fill=(235, 220, 200))
    draw.rectangle((2, 2, width // 6, height // 6), fill=(10, 40, 90))
    return img


def fixtures() -> dict[str, Image.Image]:
    halves = Image.new("RGB", (256, 128), (0, 0, 0))
    halves.paste((255, 255, 255), (0, 0, 128, 128))
    dim = photo((333, 517)).point(lambda value: value // 3)  # max below 255: exercises the divide-by-max
    return {
        "halves": halves,
        "photo_landscape": photo((1024, 683)),
        "photo_odd_portrait": photo((333, 517)),
        "dim": dim,
        "tiny": photo((19, 13)),
        "rgba_input": photo((200, 150)).convert("RGBA"),
        "palette_input": photo((180, 240)).convert("P"),
        "grey_input": photo((300, 300)).convert("L"),
    }


@pytest.mark.parametrize("model", ["plain.onnx", "clipped.onnx"])
def test_plain_cutout_is_byte_identical_to_rembg(rembg_home: Path, model: str) -> None:
    reference = rembg_reference(rembg_home, model)
    ours = RembgRemover(str(rembg_home / model))
    for name, image in fixtures().items():
        expected = reference(image, putalpha=True)
        got = ours.remove(image)
        assert got.mode == "RGBA" and got.size == image.size, name
        assert got.tobytes() == expected.tobytes(), name


def test_alpha_matting_still_goes_through_rembg_and_matches_it(rembg_home: Path) -> None:
    reference = rembg_reference(rembg_home, "clipped.onnx")
    ours = RembgRemover(str(rembg_home / "clipped.onnx"))
    image = photo((120, 90))
    expected = reference(image, alpha_matting=True)
    got = ours.remove(image, alpha_matting=True)
    assert got.tobytes() == expected.tobytes()
    alpha = got.getchannel("A")
    assert alpha.getpixel((60, 45)) >= 250 and alpha.getpixel((6, 6)) <= 5  # subject kept, dark patch dropped


def test_a_flat_image_is_fully_transparent_without_numpy_warnings(rembg_home: Path) -> None:
    # A uniform picture gives a flat map: rembg divides 0 by 0 and casts NaN (RuntimeWarnings).
    ours = RembgRemover(str(rembg_home / "plain.onnx"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ours.remove(Image.new("RGB", (64, 48), (120, 130, 140)))
    assert out.getchannel("A").getextrema() == (0, 0)
    assert out.convert("RGB").getpixel((5, 5)) == (120, 130, 140)


PROBE = """
import importlib.util, json, sys
from PIL import Image
spec = importlib.util.spec_from_file_location("edit_main", sys.argv[1])
spec.loader.exec_module(importlib.util.module_from_spec(spec))
from shared.editing.background import shared_remover
img = Image.new("RGB", (256, 128), (0, 0, 0))
img.paste((255, 255, 255), (0, 0, 128, 128))
out = shared_remover(sys.argv[2]).remove(img)
loaded = sorted(name for name in json.loads(sys.argv[3]) if name in sys.modules)
print(json.dumps({"alpha": out.getchannel("A").getextrema(), "loaded": loaded}))
"""


def test_first_plain_removal_in_a_fresh_process_imports_no_rembg_pymatting_or_numba(
    rembg_home: Path, tmp_path: Path
) -> None:
    # Structural, not timed: without rembg.bg nothing imports pymatting, so no numba compile can run
    # whatever the state of the numba cache (pointed at an empty directory here, as on a new instance).
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            PROBE,
            str(ROOT / "functions" / "edit" / "main.py"),
            str(rembg_home / "clipped.onnx"),
            json.dumps(MATTING_LIBRARIES),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT), "EPOX_ENV": "test", "NUMBA_CACHE_DIR": str(tmp_path / "numba")},
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["alpha"] == [0, 255]  # it did cut out the subject
    assert result["loaded"] == []
