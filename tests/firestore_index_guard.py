"""A pytest plugin that checks every query the real Firestore client runs against ``infra/firestore.json``.

The emulator serves any query without an index; production answers FAILED_PRECONDITION "The query
requires an index". So the plugin wraps the vendor SDK's ``Query.stream`` (``get``, collection
references, collection groups and transactions' queries go through it) and ``AggregationQuery.stream``
(``count()``), reads the query it is about to send (the ``StructuredQuery`` proto: collection, filters,
order-bys) and asks :func:`dev.firestore_indexes.missing` what it needs that the list lacks. The test
running when such a query ran (its setup, call or teardown; queries of a served stack's threads count
for the test running then) fails, naming each index to add as a JSON line ready to paste.

``EPOX_RECORD_FIRESTORE_INDEXES=PATH``: fail nothing; append every index a query needs (automatic
single-field ones aside) to ``PATH``, one JSON object a line (``section``, ``entry``, ``declared``, the
query and where it ran), for ``python -m dev.firestore_indexes merge PATH``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dev.firestore_indexes import (
    FirestoreIndexes,
    Need,
    Order,
    QueryShape,
    covered,
    declared,
    load,
    missing,
    needs,
)

RECORD_ENV = "EPOX_RECORD_FIRESTORE_INDEXES"
ROOT = Path(__file__).resolve().parent.parent
_HERE = str(Path(__file__).resolve())
_VENV = str(ROOT / ".venv")

# Job kinds only the tests define (test_batch_lifecycle, test_batch_store): production runs no query on them.
TEST_ONLY_COLLECTIONS = frozenset({"clip_jobs", "note_jobs"})

_EQUALITY = {"EQUAL", "IN", "IS_NULL", "IS_NAN"}
_CONTAINS = {"ARRAY_CONTAINS", "ARRAY_CONTAINS_ANY"}
_INEQUALITY = {
    "LESS_THAN",
    "LESS_THAN_OR_EQUAL",
    "GREATER_THAN",
    "GREATER_THAN_OR_EQUAL",
    "NOT_EQUAL",
    "NOT_IN",
    "IS_NOT_NULL",
    "IS_NOT_NAN",
}


def _conjunctions(filter_pb: Any) -> list[list[tuple[str, str]]]:
    """The filter in disjunctive normal form: a list of ANDs of (field path, operator name)."""
    kind = type(filter_pb).pb(filter_pb).WhichOneof("filter_type")
    if kind is None:
        return [[]]
    if kind == "field_filter":
        return [[(filter_pb.field_filter.field.field_path, filter_pb.field_filter.op.name)]]
    if kind == "unary_filter":
        return [[(filter_pb.unary_filter.field.field_path, filter_pb.unary_filter.op.name)]]
    composite = filter_pb.composite_filter
    parts = [_conjunctions(sub) for sub in composite.filters]
    if composite.op.name == "OR":
        return [conjunction for part in parts for conjunction in part]
    result: list[list[tuple[str, str]]] = [[]]
    for part in parts:
        result = [left + right for left in result for right in part]
    return result


def shapes(query_pb: Any) -> list[QueryShape]:
    """The shapes of a ``StructuredQuery``: one per disjunct of its filter."""
    (source,) = query_pb.from_
    order_by = tuple(
        (order.field.field_path, Order.DESCENDING if order.direction.name == "DESCENDING" else Order.ASCENDING)
        for order in query_pb.order_by
    )
    found = []
    for conjunction in _conjunctions(query_pb.where):
        unknown = {op for _, op in conjunction} - _EQUALITY - _CONTAINS - _INEQUALITY
        if unknown:
            raise ValueError(f"filter operators the index check does not know: {sorted(unknown)}")
        found.append(
            QueryShape(
                collection=source.collection_id,
                all_descendants=bool(source.all_descendants),
                equalities=frozenset(path for path, op in conjunction if op in _EQUALITY),
                array_contains=frozenset(path for path, op in conjunction if op in _CONTAINS),
                inequalities=frozenset(path for path, op in conjunction if op in _INEQUALITY),
                order_by=order_by,
            )
        )
    return found


def _caller() -> str:
    """Where in our code (not the SDK's, not this module) the query was run."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(str(ROOT)) and not name.startswith(_VENV) and name != _HERE:
            return f"{Path(name).relative_to(ROOT)}:{frame.f_lineno} ({frame.f_code.co_name})"
        frame = frame.f_back  # type: ignore[assignment]
    return "?"


@dataclass(frozen=True)
class Miss:
    shape: QueryShape
    needs: tuple[Need, ...]
    where: str
    test: str


class IndexGuard:
    """The plugin: registered by ``tests/integration/conftest.py``."""

    NAME = "epox-firestore-index-guard"

    def __init__(self, indexes: FirestoreIndexes, record: Path | None) -> None:
        self.indexes = indexes
        self.record = record
        self.lock = threading.Lock()
        self.test = "(no test)"
        self.pending: list[Miss] = []
        self.queries = 0  # queries run (each shape of each)
        self.shapes: set[QueryShape] = set()
        self.failed: set[QueryShape] = set()
        self.recorded: set[tuple[str, str]] = set()
        self._restore: list[Callable[[], None]] = []

    @classmethod
    def from_env(cls) -> IndexGuard:
        record = os.environ.get(RECORD_ENV)
        return cls(load(), Path(record) if record else None)

    # -- the vendor SDK, wrapped ---------------------------------------------------------------

    def install(self) -> None:
        from google.cloud.firestore_v1.aggregation import AggregationQuery
        from google.cloud.firestore_v1.query import Query

        self._wrap(Query, lambda query: query._to_protobuf())
        self._wrap(AggregationQuery, lambda aggregation: aggregation._nested_query._to_protobuf())

    def _wrap(self, cls: type, proto_of: Callable[[Any], Any]) -> None:
        original = cls.__dict__["stream"]
        guard = self

        def stream(query: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                query_pb = proto_of(query)
            except Exception:  # a query the SDK cannot build fails in the real call below
                query_pb = None
            if query_pb is not None:
                guard.observe(query_pb, _caller())
            return original(query, *args, **kwargs)

        cls.stream = stream  # type: ignore[attr-defined]
        self._restore.append(lambda: setattr(cls, "stream", original))

    def uninstall(self) -> None:
        while self._restore:
            self._restore.pop()()

    # -- checking ------------------------------------------------------------------------------

    def observe(self, query_pb: Any, where: str) -> None:
        for shape in shapes(query_pb):
            if shape.collection in TEST_ONLY_COLLECTIONS:
                continue
            with self.lock:
                self.queries += 1
                self.shapes.add(shape)
                test = self.test
            if self.record is not None:
                self._record(shape, where, test)
                continue
            lacking = missing(shape, self.indexes)
            if lacking:
                with self.lock:
                    self.failed.add(shape)
                    self.pending.append(Miss(shape, tuple(lacking), where, test))

    def _record(self, shape: QueryShape, where: str, test: str) -> None:
        assert self.record is not None
        served = covered(shape, self.indexes)
        lines = []
        for need in needs(shape):
            if need.automatic:
                continue
            key = (need.line(), where)
            with self.lock:
                if key in self.recorded:
                    continue
                self.recorded.add(key)
            line = {
                "section": need.section,
                "entry": json.loads(need.line()),
                "declared": declared(need, self.indexes),
                "covered": served,
                "query": shape.describe(),
                "where": where,
                "test": test,
            }
            lines.append(json.dumps(line) + "\n")
        if lines:
            with self.lock, self.record.open("a") as out:
                out.writelines(lines)

    def _raise_if_missing(self) -> None:
        with self.lock:
            misses, self.pending = self.pending, []
        if not misses:
            return
        report = ["Firestore queries need indexes infra/firestore.json does not declare:"]
        for miss in dict.fromkeys(misses):  # each query once, however often it ran
            report.append(f"- {miss.shape.describe()}\n  run at {miss.where} (during {miss.test})")
            for need in miss.needs:
                where = "composite_indexes" if need.section == "composite_indexes" else "field_overrides (merge it)"
                report.append(f"  add to {where}: {need.line()}")
        pytest.fail("\n".join(report), pytrace=False)

    # -- pytest hooks --------------------------------------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        self.test = item.nodeid
        result = yield
        self._raise_if_missing()
        return result

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        result = yield
        self._raise_if_missing()
        return result

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, None, None]:
        result = yield
        self._raise_if_missing()
        return result

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        mode = f"recorded to {self.record}" if self.record is not None else "checked"
        terminalreporter.write_line(
            f"Firestore index guard: {self.queries} queries {mode} ({len(self.shapes)} distinct shapes, "
            f"{len(self.failed)} needing an index infra/firestore.json lacks)"
        )

    def pytest_unconfigure(self) -> None:
        self.uninstall()
