"""``make build``: one deployable folder (and zip) per function: its main.py and requirements.txt
plus the ``shared`` package, because Cloud Functions uploads a single source folder.

``--rembg-model PATH`` (``make build REMBG_MODEL=PATH``) ships a background-removal model in the
edit bundle at ``models/<file name>``; rembg must never download weights on a cold start.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache")
MODEL_BUNDLE = "edit"


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
        archive = shutil.make_archive(str(out / folder.name), "zip", root_dir=target)
        bundles.append(Path(archive))
        print(f"built {target}/ and {archive}")
    return bundles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=ROOT / "build")
    parser.add_argument("--rembg-model", type=Path, default=None, help="u2net-style ONNX file for the edit bundle")
    args = parser.parse_args(argv)
    return 0 if build(args.out, args.rembg_model) else 1


if __name__ == "__main__":
    sys.exit(main())
