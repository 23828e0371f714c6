"""``make build``: one deployable folder (and zip) per function: its main.py and requirements.txt
plus the ``shared`` package, because Cloud Functions uploads a single source folder."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache")


def build(out: Path = ROOT / "build") -> list[Path]:
    out.mkdir(exist_ok=True)
    bundles = []
    for folder in sorted((ROOT / "functions").iterdir()):
        if not (folder / "main.py").is_file():
            continue
        target = out / folder.name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(folder, target, ignore=IGNORED)
        shutil.copytree(ROOT / "shared", target / "shared", ignore=IGNORED)
        archive = shutil.make_archive(str(out / folder.name), "zip", root_dir=target)
        bundles.append(Path(archive))
        print(f"built {target}/ and {archive}")
    return bundles


if __name__ == "__main__":
    sys.exit(0 if build() else 1)
