"""``make build``: one deployable folder (and zip) per function: its main.py and requirements.txt
plus the ``shared`` package, because Cloud Functions uploads a single source folder.

The zips are reproducible (sorted entries, fixed timestamps and modes): Terraform names each upload
after the zip's content hash, so unchanged code on another checkout redeploys nothing.

``--rembg-model PATH`` (``make build REMBG_MODEL=PATH``) ships a background-removal model in the
edit bundle at ``models/<file name>``; rembg must never download weights on a cold start.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache")
MODEL_BUNDLE = "edit"
# Zip's earliest date: a file's mtime (the checkout's time) must not change the archive's bytes.
_EPOCH = (1980, 1, 1, 0, 0, 0)


def build(out: Path = ROOT / "build", rembg_model: Path | None = None) -> list[Path]:
    """Write ``out/<function>/`` and ``out/<function>.zip`` for every function; returns the zips."""
    if rembg_model is not None and not rembg_model.is_file():
        raise SystemExit(f"--rembg-model {rembg_model}: no such file")
    out.mkdir(exist_ok=True)
    bundles = []
    from dev.manifest import load

    for name in load().folders():  # the function manifest's folders (infra/functions.json)
        folder = ROOT / "functions" / name
        target = out / folder.name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(folder, target, ignore=IGNORED)
        shutil.copytree(ROOT / "shared", target / "shared", ignore=IGNORED)
        if folder.name == MODEL_BUNDLE and rembg_model is not None:
            (target / "models").mkdir(exist_ok=True)
            shutil.copyfile(rembg_model, target / "models" / rembg_model.name)
            print(f"shipped {rembg_model.name}: deploy {folder.name} with REMBG_MODEL_PATH=models/{rembg_model.name}")
        archive = reproducible_zip(target, out / f"{folder.name}.zip")
        bundles.append(archive)
        print(f"built {target}/ and {archive}")
    return bundles


def reproducible_zip(folder: Path, archive: Path) -> Path:
    """Zip ``folder``'s files into ``archive`` so equal contents give equal bytes, whatever the mtimes."""
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(folder).as_posix(), date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (0o755 if path.stat().st_mode & 0o111 else 0o644) << 16
            bundle.writestr(info, path.read_bytes())
    return archive


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=ROOT / "build")
    parser.add_argument("--rembg-model", type=Path, default=None, help="u2net-style ONNX file for the edit bundle")
    args = parser.parse_args(argv)
    return 0 if build(args.out, args.rembg_model) else 1


if __name__ == "__main__":
    sys.exit(main())
