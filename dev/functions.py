"""Every deployable entry point, as the function manifest lists them, loaded through functions-framework."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dev.manifest import ROOT
from dev.manifest import entry_points as manifest_entry_points


def discover_entry_points(functions_dir: Path = ROOT / "functions") -> dict[str, Path]:
    """``{entry point name: main.py}`` for every entry point of the manifest (``infra/functions.json``)
    whose folder is under ``functions_dir``."""
    root = functions_dir.resolve()
    return {
        name: root / main.relative_to(ROOT / "functions")
        for name, main in manifest_entry_points().items()
        if (root / main.relative_to(ROOT / "functions")).is_file()
    }


def load_function_apps(functions_dir: Path) -> dict[str, Any]:
    """A functions-framework Flask app per entry point, exactly as ``functions-framework --target`` serves it."""
    from functions_framework import create_app

    return {
        name: create_app(target=name, source=str(main))  # type: ignore[no-untyped-call]
        for name, main in discover_entry_points(functions_dir).items()
    }
