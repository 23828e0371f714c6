"""Every function's requirements.txt pins the same versions as the root file, and only pins."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_LINE = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)(?P<extras>\[[^\]]+\])?==(?P<version>[^\s;#]+)\s*$")


def _pins(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-r"):
            continue
        match = _LINE.match(line)
        assert match, f"{path.relative_to(ROOT)}: '{line}' is not pinned with =="
        pins[match["name"].lower().replace("_", "-")] = match["version"]
    return pins


FUNCTION_FILES = sorted(ROOT.glob("functions/*/requirements.txt"))


def test_every_function_folder_has_main_and_requirements() -> None:
    folders = [p for p in (ROOT / "functions").iterdir() if p.is_dir() and not p.name.startswith(("_", "."))]
    assert folders, "no function folders found"
    for folder in folders:
        assert (folder / "main.py").is_file(), f"{folder.name} has no main.py"
        assert (folder / "requirements.txt").is_file(), f"{folder.name} has no requirements.txt"


@pytest.mark.parametrize("path", FUNCTION_FILES, ids=lambda p: p.parent.name)
def test_function_pins_match_root(path: Path) -> None:
    root = _pins(ROOT / "requirements.txt")
    for name, version in _pins(path).items():
        assert name in root, f"{path.parent.name} needs {name}, which the root requirements.txt does not pin"
        assert root[name] == version, f"{path.parent.name} pins {name}=={version}, root pins {root[name]}"


def test_root_is_the_union_of_the_functions() -> None:
    union: set[str] = set()
    for path in FUNCTION_FILES:
        union |= set(_pins(path))
    extra = set(_pins(ROOT / "requirements.txt")) - union
    assert not extra, f"root requirements.txt pins packages no function uses: {sorted(extra)}"


def test_constraints_agree_with_root_pins() -> None:
    constraints = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line:
            name, version = line.split("==", 1)
            constraints[name.strip().lower().replace("_", "-")] = version.strip()
    for name, version in _pins(ROOT / "requirements.txt").items():
        assert constraints.get(name) == version, f"constraints.txt has {name}=={constraints.get(name)}, root {version}"
