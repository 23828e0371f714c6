"""Background removal through the REAL rembg code path (rembg's u2net_custom session, onnxruntime,
rembg.remove) on a tiny ONNX model built by the test, and the import discipline around it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from shared.editing.background import (
    BackgroundRemovalUnavailable,
    RembgRemover,
    check_model_path,
    shared_remover,
)
from tests.rembg_model import build_tiny_u2net

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Deliberately outside rembg's own home directory (~/.rembg): the configured path is used as is.
    return build_tiny_u2net(tmp_path_factory.mktemp("models") / "tiny_u2net.onnx")


@pytest.fixture(scope="module")
def remover(model_path: Path) -> RembgRemover:
    return RembgRemover(str(model_path))


def halves(size: tuple[int, int] = (256, 128)) -> Image.Image:
    """White subject on the left half, black background on the right half."""
    img = Image.new("RGB", size, (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, size[0] // 2, size[1]))
    return img


def test_alpha_follows_the_models_output(remover: RembgRemover) -> None:
    img = halves()
    out = remover.remove(img)
    assert out.mode == "RGBA" and out.size == img.size
    alpha = out.getchannel("A")
    # Interior of each half (the model map is 320x320, resized back with Lanczos: edges ring a little).
    assert min(alpha.crop((0, 0, 112, 128)).get_flattened_data()) >= 250
    assert max(alpha.crop((144, 0, 256, 128)).get_flattened_data()) <= 5
    # putalpha: the colours are the input's, byte for byte (no darkened edges).
    assert out.convert("RGB").tobytes() == img.tobytes()


def test_alpha_is_the_normalised_brightness_map(remover: RembgRemover) -> None:
    ramp = Image.frombytes("L", (320, 1), bytes(x * 255 // 319 for x in range(320)))
    img = ramp.resize((320, 64)).convert("RGB")  # dark on the left, bright on the right
    alpha = remover.remove(img).getchannel("A")
    row = [alpha.getpixel((x, 32)) for x in [*range(0, 320, 32), 319]]
    assert row == sorted(row) and row[0] <= 8 and row[-1] >= 240
    for x in range(8, 312, 16):  # linear in brightness: alpha ~ pixel value after min-max
        assert abs(int(alpha.getpixel((x, 32))) - int(img.getpixel((x, 32))[0])) <= 6  # type: ignore[index]


def test_one_session_per_process(model_path: Path) -> None:
    first = shared_remover(str(model_path))
    assert shared_remover(str(model_path)) is first
    first.remove(halves((64, 64)))
    session = first._session
    first.remove(halves((80, 40)))
    assert first._session is session is not None


def test_alpha_matting_runs_the_real_matting_path(remover: RembgRemover) -> None:
    img = halves((96, 64))
    out = remover.remove(img, alpha_matting=True)
    assert out.mode == "RGBA" and out.size == img.size
    assert out.getchannel("A").getpixel((10, 32)) >= 250 and out.getchannel("A").getpixel((90, 32)) <= 5


def test_missing_model_is_a_clear_503(tmp_path: Path) -> None:
    with pytest.raises(BackgroundRemovalUnavailable) as empty:
        check_model_path("")
    assert empty.value.status == 503 and "REMBG_MODEL_PATH" in empty.value.detail
    with pytest.raises(BackgroundRemovalUnavailable):
        RembgRemover(str(tmp_path / "absent.onnx")).remove(halves())


PROBE = """
import importlib.util, json, sys
import shared.editing.service, shared.editing.background, shared.editing.pipeline
spec = importlib.util.spec_from_file_location("edit_main", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps(sorted(m for m in ("rembg", "onnxruntime", "numpy", "PIL", "scipy", "pymatting", "onnx")
                        if m in sys.modules)))
"""


def test_importing_the_edit_function_loads_no_model_libraries() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(ROOT / "functions" / "edit" / "main.py")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        env={"PYTHONPATH": str(ROOT), "EPOX_ENV": "test"},
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
