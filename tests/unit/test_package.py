"""The deployable bundle of each function imports and serves on its own, without the repo around it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dev.package import build

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import sys
sys.path.insert(0, ".")
import main
from functions_framework import create_app
for name in sys.argv[1:]:
    app = create_app(target=name, source="main.py")
    response = app.test_client().get("/health")
    assert response.status_code == 200, (name, response.status_code, response.data)
print("ok")
"""


def test_bundles_are_self_contained(tmp_path: Path) -> None:
    from dev.functions import discover_entry_points

    entries = discover_entry_points(ROOT / "functions")
    bundles = build(tmp_path)
    assert {p.stem for p in bundles} == {main.parent.name for main in entries.values()}
    for bundle in bundles:
        folder = tmp_path / bundle.stem
        assert (folder / "shared" / "__init__.py").is_file()
        assert (folder / "requirements.txt").is_file()
        names = [name for name, main in entries.items() if main.parent.name == bundle.stem]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"EPOX_ENV": "test"}
        out = subprocess.run(
            [sys.executable, "-c", PROBE, *names], cwd=folder, env=env, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_the_background_removal_model_ships_in_the_edit_bundle_only(tmp_path: Path) -> None:
    import zipfile

    from dev.package import main
    from tests.rembg_model import build_tiny_u2net

    model = build_tiny_u2net(tmp_path / "u2net.onnx")
    assert main(["--out", str(tmp_path / "out"), "--rembg-model", str(model)]) == 0
    shipped = tmp_path / "out" / "edit" / "models" / "u2net.onnx"
    assert shipped.read_bytes() == model.read_bytes()
    with zipfile.ZipFile(tmp_path / "out" / "edit.zip") as archive:
        assert "models/u2net.onnx" in archive.namelist()
    assert not (tmp_path / "out" / "catalog" / "models").exists()


def test_a_bundle_zip_depends_on_the_contents_only(tmp_path: Path) -> None:
    """Terraform names each upload after the zip's hash: the same code on another checkout (other mtimes)
    must give the same bytes, and a changed file other bytes."""
    from dev.package import reproducible_zip

    source = tmp_path / "src"
    (source / "pkg").mkdir(parents=True)
    (source / "main.py").write_text("print('a')\n")
    (source / "pkg" / "mod.py").write_text("X = 1\n")
    first = reproducible_zip(source, tmp_path / "first.zip").read_bytes()
    os.utime(source / "main.py", (1_900_000_000, 1_900_000_000))
    assert reproducible_zip(source, tmp_path / "second.zip").read_bytes() == first
    (source / "pkg" / "mod.py").write_text("X = 2\n")
    assert reproducible_zip(source, tmp_path / "third.zip").read_bytes() != first
