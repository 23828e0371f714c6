"""Discover every deployable entry point under functions/ and load it through functions-framework."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_ENTRY = re.compile(r"^@functions_framework\.http\s*\ndef\s+([a-z_][a-z0-9_]*)\s*\(", re.MULTILINE)


def discover_entry_points(functions_dir: Path) -> dict[str, Path]:
    """``{entry point name: main.py}`` for every ``@functions_framework.http`` function."""
    found: dict[str, Path] = {}
    for main in sorted(functions_dir.glob("*/main.py")):
        for name in _ENTRY.findall(main.read_text()):
            if name in found:
                raise RuntimeError(f"entry point {name} is defined twice ({found[name]} and {main})")
            found[name] = main
    return found


def load_function_apps(functions_dir: Path) -> dict[str, Any]:
    """A functions-framework Flask app per entry point, exactly as ``functions-framework --target`` serves it."""
    from functions_framework import create_app

    return {
        name: create_app(target=name, source=str(main))  # type: ignore[no-untyped-call]
        for name, main in discover_entry_points(functions_dir).items()
    }
