"""The merged API contract for the frontend team: ``make openapi`` (``python -m dev.openapi``).

Writes ``docs/openapi.json`` — every entry point's routes under ``/<entry point>``, built by
:func:`shared.http.openapi.merged_document` — and validates it with ``openapi-spec-validator``.
``--check`` writes nothing and exits 1 when the file in the repository is stale (the test suite runs it).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dev.functions import discover_entry_points

if TYPE_CHECKING:
    from shared.http.app import HttpApp

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT = ROOT / "docs" / "openapi.json"


def entry_point_apps(functions_dir: Path = ROOT / "functions") -> list[HttpApp]:
    """The :class:`HttpApp` behind every ``@functions_framework.http`` entry point (its ``service`` name)."""
    from shared.http.app import HttpApp

    apps = []
    for name, main in discover_entry_points(functions_dir).items():
        module = importlib.import_module(f"{functions_dir.name}.{main.parent.name}.main")
        found = [value for value in vars(module).values() if isinstance(value, HttpApp) and value.service == name]
        if len(found) != 1:
            raise RuntimeError(f"{main}: expected one HttpApp named {name!r}, found {len(found)}")
        apps.append(found[0])
    return apps


def render(document: dict[str, Any]) -> str:
    """The file's text: stable key order and indentation, so a diff shows what changed in the contract."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def build() -> dict[str, Any]:
    from shared.http.openapi import merged_document

    return merged_document(entry_point_apps())


def validate(document: dict[str, Any]) -> None:
    """Raise if ``document`` is not valid OpenAPI 3.1."""
    from openapi_spec_validator import validate as validate_spec

    validate_spec(document)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/openapi.json is stale")
    args = parser.parse_args(argv)
    document = build()
    validate(document)
    text = render(document)
    operations = sum(len(methods) for methods in document["paths"].values())
    if args.check:
        current = DOCUMENT.read_text() if DOCUMENT.exists() else ""
        if current != text:
            print(f"{DOCUMENT.relative_to(ROOT)} is stale: run `make openapi` and commit it", file=sys.stderr)
            return 1
        print(f"{DOCUMENT.relative_to(ROOT)} is current ({operations} operations)")
        return 0
    DOCUMENT.write_text(text)
    print(f"wrote {DOCUMENT.relative_to(ROOT)}: {operations} operations, valid OpenAPI {document['openapi']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
