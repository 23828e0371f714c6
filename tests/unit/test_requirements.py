"""Every function's requirements.txt pins what its entry point can import, no more and no less, at the
root file's versions.

"Exactly" means, with *imported* the distributions whose modules the code reachable from
``functions/<name>/main.py`` imports, and *shipped(X)* the distributions X brings along (X and its
transitive requirements, extras included, as installed here):

- every imported distribution is listed, or is a direct requirement of a listed one (Werkzeug of
  flask, botocore of boto3, google-api-core of google-cloud-firestore): the deploy can import
  everything the code can, and what the code relies on is never an accident of a dependency's
  dependencies (charset-normalizer comes with requests, which google-api-core needs today; code
  that imports it lists it);
- every listed distribution is imported, or shipped by an imported one (a pin that only fixes the
  version of something the function ships anyway, like cryptography for pyjwt[crypto] or numpy for
  rembg): nothing is deployed that the code never reaches;
- a clean interpreter that imports the entry module loads no third-party distribution outside
  shipped(listed) and shipped(imported) (the static walk below misses nothing the import runs).

Reachable code is found statically (ast), so lazy imports count without running them: the
module-level statements (class bodies included) of every module the entry module imports, at module
level or inside reachable functions; a module-level function once its name is used in reachable code;
a method once its class is named in reachable code and its name is used as an attribute (dunder
methods, and methods under decorators that register them, as soon as the class is named). Imports
under ``if TYPE_CHECKING:`` never run and do not count. Names are matched without types, so the
walk errs towards reaching too much, never too little.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
OWN_PACKAGES = ("shared", "functions")
_LINE = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)(?P<extras>\[[^\]]+\])?==(?P<version>[^\s;#]+)\s*$")
# Decorators that only wrap a function; any other decorator may register it (routes, validators), so
# the function counts as reachable as soon as its module (or class) is.
_WRAPPING_DECORATORS = frozenset(
    {
        "property",
        "setter",
        "getter",
        "deleter",
        "staticmethod",
        "classmethod",
        "cached_property",
        "abstractmethod",
        "override",
        "overload",
        "cache",
        "lru_cache",
        "wraps",
        "contextmanager",
    }
)


def _lines(path: Path) -> list[Requirement]:
    found = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-r"):
            continue
        assert _LINE.match(line), f"{path.relative_to(ROOT)}: '{line}' is not pinned with =="
        found.append(Requirement(line))
    return found


def _pins(path: Path) -> dict[str, str]:
    return {canonicalize_name(r.name): str(r.specifier).removeprefix("==") for r in _lines(path)}


FUNCTION_FILES = sorted(ROOT.glob("functions/*/requirements.txt"))
FUNCTIONS = sorted(p.parent.name for p in FUNCTION_FILES)


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
            constraints[canonicalize_name(name.strip())] = version.strip()
    for name, version in _pins(ROOT / "requirements.txt").items():
        assert constraints.get(name) == version, f"constraints.txt has {name}=={constraints.get(name)}, root {version}"


# -- which distributions the code can import ---------------------------------------------------------


@cache
def _module_owners() -> dict[str, frozenset[str]]:
    """Dotted module name -> the installed distributions with files at or under it (namespace
    packages such as ``google`` have several)."""
    owners: dict[str, set[str]] = defaultdict(set)
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        for file in dist.files or []:
            parts = file.parts
            if not parts or ".." in parts or parts[0].endswith((".dist-info", ".data", ".egg-info")):
                continue
            if not file.name.endswith((".py", ".so", ".pyd")):
                continue
            module = [*parts[:-1], file.name.split(".", 1)[0]]
            if module[-1] == "__init__":
                module.pop()
            for depth in range(1, len(module) + 1):
                owners[".".join(module[:depth])].add(name)
    return {module: frozenset(names) for module, names in owners.items()}


def _owner(dotted: str) -> str | None:
    """The one distribution that provides ``dotted`` (its longest prefix that is a known module)."""
    owners = _module_owners()
    parts = dotted.split(".")
    for depth in range(len(parts), 0, -1):
        found = owners.get(".".join(parts[:depth]))
        if found:
            return next(iter(found)) if len(found) == 1 else None
    return None


def _module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return base.with_suffix(".py") if base.with_suffix(".py").is_file() else None


def _is_type_checking(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _decorator_name(decorator: ast.expr) -> str:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    if isinstance(target, ast.Attribute):
        return target.attr
    return target.id if isinstance(target, ast.Name) else ""


@dataclass(eq=False)
class _Code:
    module: str
    nodes: list[ast.AST]
    label: str


@dataclass
class _ImportGraph:
    """Static reachability from an entry module (see the module docstring for the rules)."""

    imports: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # distribution -> where
    loaded: set[str] = field(default_factory=set)
    names: set[str] = field(default_factory=set)
    attributes: set[str] = field(default_factory=set)
    functions: dict[str, list[_Code]] = field(default_factory=lambda: defaultdict(list))
    methods: dict[str, dict[str, list[_Code]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )  # class -> method name ("" = runs implicitly) -> code
    pending: list[_Code] = field(default_factory=list)
    done: set[_Code] = field(default_factory=set)  # the objects, not id(): a freed id is reused

    @classmethod
    def of(cls, entry_module: str) -> _ImportGraph:
        graph = cls()
        graph._load(entry_module)
        while graph.pending:
            code = graph.pending.pop()
            if code not in graph.done:
                graph.done.add(code)
                for node in code.nodes:
                    graph._visit(code, node)
        return graph

    def _load(self, module: str) -> None:
        parts = module.split(".")
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[:depth])
            path = _module_file(name)
            if name in self.loaded or path is None:
                continue
            self.loaded.add(name)
            body = ast.parse(path.read_text(), str(path)).body
            self.pending.append(_Code(name, self._executed(name, body, None), f"{name}:<module>"))

    def _executed(self, module: str, body: list[ast.stmt], owner: str | None) -> list[ast.AST]:
        """What runs when a module or class body executes; function bodies are registered to run later."""
        runs: list[ast.AST] = []
        for stmt in body:
            if _is_type_checking(stmt):
                assert isinstance(stmt, ast.If)
                runs.extend(self._executed(module, stmt.orelse, owner))
            elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                runs.extend(stmt.decorator_list)
                runs.extend(stmt.args.defaults)
                runs.extend(default for default in stmt.args.kw_defaults if default is not None)
                code = _Code(module, list(stmt.body), f"{module}:{owner + '.' if owner else ''}{stmt.name}")
                registered = any(_decorator_name(d) not in _WRAPPING_DECORATORS for d in stmt.decorator_list)
                if owner is not None:
                    implicit = registered or (stmt.name.startswith("__") and stmt.name.endswith("__"))
                    self.methods[owner]["" if implicit else stmt.name].append(code)
                    if owner in self.names and (implicit or stmt.name in self.attributes):
                        self.pending.append(code)
                elif registered or module.startswith("functions."):
                    self.pending.append(code)  # route handlers and entry points run by being registered
                else:
                    self.functions[stmt.name].append(code)
                    if stmt.name in self.names:
                        self.pending.append(code)
            elif isinstance(stmt, ast.ClassDef):
                runs.extend([*stmt.bases, *(k.value for k in stmt.keywords), *stmt.decorator_list])
                runs.extend(self._executed(module, stmt.body, stmt.name))
            else:
                runs.append(stmt)
        return runs

    def _visit(self, code: _Code, root: ast.AST) -> None:
        stack = [root]
        while stack:
            node = stack.pop()
            if _is_type_checking(node):
                assert isinstance(node, ast.If)
                stack.extend(node.orelse)
                continue
            if isinstance(node, ast.Import):
                for alias in node.names:
                    self._import(code, alias.name)
            elif isinstance(node, ast.ImportFrom):
                base = self._absolute(code.module, node)
                for alias in node.names:
                    self._name(alias.name)
                    self._import(code, f"{base}.{alias.name}", base)
            elif isinstance(node, ast.Name):
                self._name(node.id)
            elif isinstance(node, ast.Attribute):
                self._name(node.attr)
                self._attribute(node.attr)
            stack.extend(ast.iter_child_nodes(node))

    @staticmethod
    def _absolute(module: str, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        package = module.split(".")
        if _module_file(module) is not None and _module_file(module).name != "__init__.py":  # type: ignore[union-attr]
            package.pop()
        package = package[: len(package) - (node.level - 1)]
        return ".".join([*package, node.module] if node.module else package)

    def _import(self, code: _Code, dotted: str, base: str | None = None) -> None:
        top = dotted.split(".")[0]
        if top in OWN_PACKAGES:
            self._load(dotted if base is None or _module_file(dotted) else base)
        elif top not in sys.stdlib_module_names and top != "__future__":
            dist = _owner(dotted) or (_owner(base) if base else None)
            assert dist, f"{code.label} imports {dotted}, which no installed distribution provides"
            self.imports[dist].add(code.label)

    def _name(self, name: str) -> None:
        if name not in self.names:
            self.names.add(name)
            self.pending.extend(self.functions.get(name, ()))
            for method, codes in self.methods.get(name, {}).items():
                if not method or method in self.attributes:
                    self.pending.extend(codes)

    def _attribute(self, name: str) -> None:
        if name not in self.attributes:
            self.attributes.add(name)
            for owner, methods in self.methods.items():
                if owner in self.names:
                    self.pending.extend(methods.get(name, ()))


def _shipped(requirements: list[Requirement], depth: int | None = None) -> set[str]:
    """The distributions these requirements install: themselves and, recursively (``depth`` levels
    deep, all the way if ``None``), their requirements."""
    seen: set[tuple[str, frozenset[str]]] = set()
    shipped: set[str] = set()
    stack = [(canonicalize_name(r.name), frozenset(r.extras), 0) for r in requirements]
    while stack:
        name, extras, level = stack.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        shipped.add(name)
        if depth is not None and level >= depth:
            continue
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue  # an optional dependency for another platform or Python; nothing here uses it
        for line in requires:
            requirement = Requirement(line)
            markers = [{"extra": extra} for extra in ("", *extras)]
            if requirement.marker is None or any(requirement.marker.evaluate(env) for env in markers):
                stack.append((canonicalize_name(requirement.name), frozenset(requirement.extras), level + 1))
    return shipped


_LOADED_PROBE = """
import json, sys
before = set(sys.modules)
import functions.{name}.main
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def _loaded_on_import(function: str) -> set[str]:
    """Third-party distributions a clean interpreter loads to import ``functions/<name>/main.py``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"EPOX_ENV": "test"}
    out = subprocess.run(
        [sys.executable, "-c", _LOADED_PROBE.format(name=function)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = set()
    for module in json.loads(out.stdout.splitlines()[-1]):
        if module.split(".")[0] in (*OWN_PACKAGES, *sys.stdlib_module_names):
            continue
        owners = _module_owners().get(module, frozenset())
        if len(owners) == 1:  # namespace packages (several owners) are covered by their loaded submodules
            loaded |= owners
    return loaded


@pytest.mark.parametrize("function", FUNCTIONS)
def test_requirements_are_exactly_what_the_entry_point_can_import(function: str) -> None:
    listed = _lines(ROOT / "functions" / function / "requirements.txt")
    graph = _ImportGraph.of(f"functions.{function}.main")
    imported = set(graph.imports)
    shipped_by_listed = _shipped(listed)
    shipped_by_imported = _shipped([Requirement(name) for name in imported])

    provided = _shipped(listed, depth=1)
    missing = {name: sorted(graph.imports[name])[:3] for name in sorted(imported - provided)}
    assert not missing, f"{function} imports distributions its requirements.txt does not list: {missing}"
    unused = sorted(canonicalize_name(r.name) for r in listed if canonicalize_name(r.name) not in shipped_by_imported)
    assert not unused, f"{function}/requirements.txt lists distributions its code never imports: {unused}"

    loaded = _loaded_on_import(function)
    assert loaded, "the probe saw no third-party import at all"
    assert loaded <= shipped_by_listed, f"{function} loads unlisted {sorted(loaded - shipped_by_listed)}"
    assert loaded <= shipped_by_imported, f"static walk missed {sorted(loaded - shipped_by_imported)}"


def test_the_walk_follows_lazy_imports_but_not_type_checking_ones() -> None:
    """A guard on the walk itself: catalog's worker reaches boto3 only through a lazy import inside
    ``R2ObjectStore``, and no entry point is credited with the TYPE_CHECKING-only imports."""
    catalog = _ImportGraph.of("functions.catalog.main")
    assert "shared.storage:R2ObjectStore._make" in catalog.imports["boto3"]
    credits = _ImportGraph.of("functions.credits.main")
    assert "boto3" not in credits.imports
    assert "shared.storage" not in credits.loaded
