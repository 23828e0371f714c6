"""Firestore's indexes and TTL policies (``infra/firestore.json``): the composite indexes the queries need,
the single-field index overrides Firestore does not make by itself (collection-group scope ones), and the
TTL policies. Terraform (issue #14) reads the same file (``jsondecode(file(...))``); the integration tests
check every query the real client runs against it (``tests/firestore_index_guard.py``); the unit tests
check the queries the integration tests do not run.

:func:`missing` says what a query (a :class:`QueryShape`) needs that the list lacks, following Firestore's
documented rules (Standard edition, "Index types", "Index merging", "Query limitations"):

* Collection-scope single-field indexes (ascending, descending, array-contains) exist for every field
  unless a field override replaces them; collection-group-scope ones exist only where an override says.
* An index serves a query when it is: fields the query filters by equality (``==``, ``in``, ``is null``;
  ``array-contains(-any)`` on a CONTAINS field), in any order, then exactly the query's orders, then
  ``__name__`` in the query's direction of ``__name__``. An index ends with ``__name__`` in the direction
  of its last field (ascending after a CONTAINS field) unless it names ``__name__`` itself.
* A query's orders are its order-bys, then its inequality fields (``<``, ``<=``, ``>``, ``>=``, ``!=``,
  ``not-in``, ``is not null``) it does not order by, in field-name order and the last order's direction,
  then ``__name__`` in the last order's direction (ascending when there is none).
* Firestore merges indexes that end in the same orders: a query with several equality fields is served
  when each of them is in some serving index. Equality-only queries merge single-field indexes; a list
  ordered by ``created_at`` filtered by any mix of fields needs one ``(field, created_at…)`` index per
  filter field, not one per combination.

Simplified: an order-by on a field that also has an equality (or ``in``) filter is dropped; an order-by
after ``__name__`` is ignored; inequality fields of a query that orders by ``__name__`` first go before
it. Whether Firestore merges is its planner's choice; the documentation promises it for equality filters
with a shared sort, so the list relies on it (see "Index merging").

Run ``python -m dev.firestore_indexes merge RECORD`` to add the indexes a recording run of the tests
(``EPOX_RECORD_FIRESTORE_INDEXES=RECORD``) found missing, and ``python -m dev.firestore_indexes format``
to rewrite the file in its canonical order and layout (a unit test holds it to that).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

ROOT = Path(__file__).resolve().parent.parent
INDEXES = ROOT / "infra" / "firestore.json"
NAME = "__name__"  # the document's path: every index ends with it


class Order(str, Enum):
    ASCENDING = "ASCENDING"
    DESCENDING = "DESCENDING"


class ArrayConfig(str, Enum):
    CONTAINS = "CONTAINS"


class QueryScope(str, Enum):
    COLLECTION = "COLLECTION"  # one collection: clients/{c}/products
    COLLECTION_GROUP = "COLLECTION_GROUP"  # every collection of that id: collection_group("items")


CONTAINS = ArrayConfig.CONTAINS.value  # a field's mode: an Order's value or CONTAINS
Mode = str
Body = tuple[tuple[str, Mode], ...]  # an index's fields (path, mode), without a trailing __name__


def _one_mode(order: Order | None, array_config: ArrayConfig | None) -> Mode:
    if (order is None) == (array_config is None):
        raise ValueError("give exactly one of order and array_config")
    return order.value if order is not None else CONTAINS


def _mode_fields(mode: Mode) -> dict[str, str]:
    return {"array_config": mode} if mode == CONTAINS else {"order": mode}


def _name_after(mode: Mode) -> Order:
    """The direction of the ``__name__`` an index implicitly ends with after a field of ``mode``."""
    return Order.DESCENDING if mode == Order.DESCENDING.value else Order.ASCENDING


class IndexField(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    field_path: str = Field(min_length=1)
    order: Order | None = None
    array_config: ArrayConfig | None = None

    @model_validator(mode="after")
    def _exactly_one_mode(self) -> IndexField:
        _one_mode(self.order, self.array_config)
        return self

    @property
    def mode(self) -> Mode:
        return _one_mode(self.order, self.array_config)


class CompositeIndex(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    collection: str = Field(min_length=1, pattern=r"^[^/]+$")  # the collection id (its last path segment)
    query_scope: QueryScope
    fields: list[IndexField] = Field(min_length=2)

    @model_validator(mode="after")
    def _valid(self) -> CompositeIndex:
        paths = [f.field_path for f in self.fields]
        if len(set(paths)) != len(paths):
            raise ValueError(f"{self.collection}: a field is named twice in {paths}")
        if sum(f.array_config is not None for f in self.fields) > 1:
            raise ValueError(f"{self.collection}: at most one array-contains field per index")
        if NAME in paths[:-1]:
            raise ValueError(f"{self.collection}: {NAME} can only be the last field")
        last = self.fields[-1]
        if last.field_path == NAME:
            if last.order is None:
                raise ValueError(f"{self.collection}: {NAME} takes an order")
            if last.order is _name_after(self.fields[-2].mode):
                raise ValueError(f"{self.collection}: {NAME} in the direction of the field before it is implied")
        if len(self.body) < 2 and last.field_path != NAME:
            raise ValueError(f"{self.collection}: one field is a single-field index (field_overrides)")
        return self

    @property
    def body(self) -> Body:
        return tuple((f.field_path, f.mode) for f in self.fields if f.field_path != NAME)

    @property
    def name_direction(self) -> Order:
        last = self.fields[-1]
        return last.order if last.field_path == NAME and last.order is not None else _name_after(last.mode)

    def key(self) -> tuple[str, str, tuple[tuple[str, str], ...]]:
        return (self.collection, self.query_scope.value, tuple((f.field_path, f.mode) for f in self.fields))


class SingleFieldIndex(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    query_scope: QueryScope
    order: Order | None = None
    array_config: ArrayConfig | None = None

    @model_validator(mode="after")
    def _exactly_one_mode(self) -> SingleFieldIndex:
        _one_mode(self.order, self.array_config)
        return self

    @property
    def mode(self) -> Mode:
        return _one_mode(self.order, self.array_config)

    def key(self) -> tuple[str, str]:
        return (self.query_scope.value, self.mode)


class FieldOverride(BaseModel):
    """A field's single-field indexes. They replace the ones Firestore makes by itself (collection scope,
    ascending and descending, or array-contains): list the collection-scope ones the field still needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    collection: str = Field(min_length=1, pattern=r"^[^/]+$")
    field_path: str = Field(min_length=1)
    indexes: list[SingleFieldIndex]

    @model_validator(mode="after")
    def _valid(self) -> FieldOverride:
        if self.field_path == NAME:
            raise ValueError(f"{self.collection}: {NAME} has no field override")
        keys = [index.key() for index in self.indexes]
        if keys != sorted(set(keys)):
            raise ValueError(f"{self.collection}.{self.field_path}: indexes not sorted (scope, mode) or repeated")
        return self

    def key(self) -> tuple[str, str]:
        return (self.collection, self.field_path)


class TtlPolicy(BaseModel):
    """Firestore deletes a document of ``collection`` (any parent) some time after its ``field_path``
    (a Timestamp) has passed; a document without the field is kept."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    collection: str = Field(min_length=1, pattern=r"^[^/]+$")
    field_path: str = Field(min_length=1)

    def key(self) -> tuple[str, str]:
        return (self.collection, self.field_path)


def _sorted_once(name: str, keys: Sequence[Any]) -> None:
    if len(set(keys)) != len(keys):
        raise ValueError(f"{name}: an entry is listed twice")
    if list(keys) != sorted(keys):
        raise ValueError(f"{name}: entries not in order (python -m dev.firestore_indexes format)")


class FirestoreIndexes(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    comment: str = Field(default="", alias="$comment")
    composite_indexes: list[CompositeIndex]
    field_overrides: list[FieldOverride]
    ttl_policies: list[TtlPolicy]

    @model_validator(mode="after")
    def _valid(self) -> FirestoreIndexes:
        _sorted_once("composite_indexes", [index.key() for index in self.composite_indexes])
        _sorted_once("field_overrides", [override.key() for override in self.field_overrides])
        _sorted_once("ttl_policies", [policy.key() for policy in self.ttl_policies])
        # Terraform makes one google_firestore_field per (collection, field): its TTL or its indexes.
        both = {o.key() for o in self.field_overrides} & {p.key() for p in self.ttl_policies}
        if both:
            raise ValueError(f"a field with a TTL policy has a field override too: {sorted(both)}")
        return self

    def override(self, collection: str, field_path: str) -> FieldOverride | None:
        return next((o for o in self.field_overrides if o.key() == (collection, field_path)), None)

    def dump(self) -> str:
        """The file's text: one entry a line, in order (the layout ``format`` writes and a test holds)."""

        def line(model: BaseModel) -> str:
            return json.dumps(model.model_dump(mode="json", exclude_none=True))

        def section(name: str, entries: Sequence[BaseModel]) -> str:
            if not entries:
                return f'  "{name}": []'
            return f'  "{name}": [\n' + ",\n".join(f"    {line(entry)}" for entry in entries) + "\n  ]"

        parts = [f'  "$comment": {json.dumps(self.comment)}']
        parts.append(section("composite_indexes", self.composite_indexes))
        parts.append(section("field_overrides", self.field_overrides))
        parts.append(section("ttl_policies", self.ttl_policies))
        return "{\n" + ",\n".join(parts) + "\n}\n"


def parse(data: dict[str, Any]) -> FirestoreIndexes:
    """The list from its JSON (entries put in order first: ``format`` and ``merge`` use it)."""
    data = dict(data)
    data["composite_indexes"] = sorted(
        data.get("composite_indexes", []), key=lambda e: CompositeIndex.model_validate(e).key()
    )
    data["field_overrides"] = sorted(data.get("field_overrides", []), key=lambda e: (e["collection"], e["field_path"]))
    for override in data["field_overrides"]:
        override["indexes"] = sorted(override["indexes"], key=lambda i: SingleFieldIndex.model_validate(i).key())
    data["ttl_policies"] = sorted(data.get("ttl_policies", []), key=lambda e: (e["collection"], e["field_path"]))
    return FirestoreIndexes.model_validate(data)


@cache
def load(path: Path = INDEXES) -> FirestoreIndexes:
    return FirestoreIndexes.model_validate(json.loads(path.read_text()))


# -- what a query needs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class QueryShape:
    """What of a query decides its index: where it reads, which fields it filters how, its order-bys.

    ``equalities``: ``==``, ``in``, ``is null``, ``is nan``; ``array_contains``: ``array-contains`` and
    ``array-contains-any``; ``inequalities``: ``<``, ``<=``, ``>``, ``>=``, ``!=``, ``not-in``, ``is not null``.
    A query with OR filters is one shape per disjunct (Firestore runs each on its own index).
    """

    collection: str
    all_descendants: bool = False  # a collection-group query
    equalities: frozenset[str] = field(default_factory=frozenset)
    array_contains: frozenset[str] = field(default_factory=frozenset)
    inequalities: frozenset[str] = field(default_factory=frozenset)
    order_by: tuple[tuple[str, Order], ...] = ()

    @property
    def scope(self) -> QueryScope:
        return QueryScope.COLLECTION_GROUP if self.all_descendants else QueryScope.COLLECTION

    def orders(self) -> tuple[Body, Order]:
        """The fields the results are ordered by (implicit ones included, ``__name__`` not) and the
        direction of ``__name__`` after them."""
        explicit: list[tuple[str, Order]] = []
        name: Order | None = None
        for path, direction in self.order_by:
            if path == NAME:
                name = direction
                break
            if path not in self.equalities:  # one value (or a few, for "in"): the field's own index orders them
                explicit.append((path, direction))
        ordered = {path for path, _ in explicit}
        last = explicit[-1][1] if explicit else name or Order.ASCENDING
        implicit = [(path, last) for path in sorted(self.inequalities - ordered - {NAME})]
        body = tuple((path, direction.value) for path, direction in explicit + implicit)
        return body, name or last

    def describe(self) -> str:
        parts = [f"{'collection group' if self.all_descendants else 'collection'} {self.collection}"]
        parts += [f"{path} ==" for path in sorted(self.equalities)]
        parts += [f"{path} array-contains" for path in sorted(self.array_contains)]
        parts += [f"{path} <>" for path in sorted(self.inequalities)]
        parts += [f"order by {path} {direction.value.lower()}" for path, direction in self.order_by]
        return ", ".join(parts)


@dataclass(frozen=True)
class Need:
    """One index a query needs: a composite index, or a single-field index (one field)."""

    collection: str
    scope: QueryScope
    body: Body
    name_direction: Order

    @property
    def single_field(self) -> bool:
        return len(self.body) == 1 and self.name_direction is _name_after(self.body[0][1])

    @property
    def automatic(self) -> bool:
        """A single-field index Firestore makes by itself (unless a field override replaces it)."""
        return self.single_field and self.scope is QueryScope.COLLECTION

    @property
    def section(self) -> str:
        return "field_overrides" if self.single_field else "composite_indexes"

    def entry(self) -> CompositeIndex | FieldOverride:
        """The entry of ``infra/firestore.json`` that declares it (a field override with only this index)."""
        if self.single_field:
            ((path, mode),) = self.body
            index = SingleFieldIndex.model_validate({"query_scope": self.scope, **_mode_fields(mode)})
            return FieldOverride(collection=self.collection, field_path=path, indexes=[index])
        fields = [{"field_path": path, **_mode_fields(mode)} for path, mode in self.body]
        if self.name_direction is not _name_after(self.body[-1][1]):
            fields.append({"field_path": NAME, "order": self.name_direction.value})
        return CompositeIndex.model_validate(
            {"collection": self.collection, "query_scope": self.scope, "fields": fields}
        )

    def line(self) -> str:
        """The entry as one JSON line, ready to paste."""
        return json.dumps(self.entry().model_dump(mode="json", exclude_none=True))


def needs(shape: QueryShape) -> list[Need]:
    """The indexes that serve ``shape`` in the form the list keeps them: one per equality field (Firestore
    merges them), each followed by the query's orders; a single-field index when one field is enough.
    Automatic single-field indexes are included (``Need.automatic``); none for a query the ``__name__``
    index serves alone."""
    body, name = shape.orders()
    wanted = [(path, Order.ASCENDING.value) for path in sorted(shape.equalities)]
    wanted += [(path, CONTAINS) for path in sorted(shape.array_contains)]
    if not wanted:
        return [Need(shape.collection, shape.scope, body, name)] if body else []
    found = []
    for path, mode in wanted:
        if not body and name is Order.DESCENDING and mode != CONTAINS:
            mode = Order.DESCENDING.value  # the descending single-field index ends with __name__ descending
        found.append(Need(shape.collection, shape.scope, ((path, mode), *body), name))
    return found


def _serves(index: tuple[Body, Order], shape: QueryShape, body: Body, name: Order) -> frozenset[str] | None:
    """The equality fields of ``shape`` that ``index`` serves, or None when it cannot serve the query."""
    fields, direction = index
    cut = len(fields) - len(body)
    if cut < 0 or fields[cut:] != body or direction is not name:
        return None
    served = set()
    for path, mode in fields[:cut]:
        if (mode == CONTAINS and path not in shape.array_contains) or (
            mode != CONTAINS and path not in shape.equalities
        ):
            return None
        served.add(path)
    return frozenset(served)


def _available(indexes: FirestoreIndexes, shape: QueryShape) -> list[tuple[Body, Order]]:
    """The indexes of ``shape``'s collection and scope that could matter to it."""
    scope = shape.scope
    found: list[tuple[Body, Order]] = [((), Order.ASCENDING), ((), Order.DESCENDING)]  # __name__'s own
    found += [
        (index.body, index.name_direction)
        for index in indexes.composite_indexes
        if index.collection == shape.collection and index.query_scope is scope
    ]
    mentioned = shape.equalities | shape.array_contains | shape.inequalities | {path for path, _ in shape.order_by}
    for path in sorted(mentioned - {NAME}):
        override = indexes.override(shape.collection, path)
        if override is not None:
            modes = [index.mode for index in override.indexes if index.query_scope is scope]
        elif scope is QueryScope.COLLECTION:
            modes = [Order.ASCENDING.value, Order.DESCENDING.value, CONTAINS]
        else:
            modes = []
        found += [(((path, mode),), _name_after(mode)) for mode in modes]
    return found


def covered(shape: QueryShape, indexes: FirestoreIndexes) -> bool:
    """Whether the indexes (declared and automatic) serve ``shape``, merged if need be."""
    body, name = shape.orders()
    served = [s for s in (_serves(i, shape, body, name) for i in _available(indexes, shape)) if s is not None]
    wanted = shape.equalities | shape.array_contains
    if not wanted:
        return bool(served)
    return wanted <= frozenset().union(*served)


def declared(need: Need, indexes: FirestoreIndexes) -> bool:
    """Whether ``need`` exists: declared, or automatic and not replaced by a field override."""
    if need.single_field:
        ((path, mode),) = need.body
        override = indexes.override(need.collection, path)
        if override is None:
            return need.automatic
        return any(index.query_scope is need.scope and index.mode == mode for index in override.indexes)
    return any(
        index.collection == need.collection
        and index.query_scope is need.scope
        and (index.body, index.name_direction) == (need.body, need.name_direction)
        for index in indexes.composite_indexes
    )


def missing(shape: QueryShape, indexes: FirestoreIndexes) -> list[Need]:
    """What to add so that ``shape`` is served: nothing when it already is."""
    if covered(shape, indexes):
        return []
    return [need for need in needs(shape) if not declared(need, indexes)]


# -- the file, rewritten -------------------------------------------------------------------------------


def merged(indexes: FirestoreIndexes, entries: Iterable[CompositeIndex | FieldOverride]) -> FirestoreIndexes:
    """``indexes`` with ``entries`` added. A new field override keeps the collection-scope indexes
    Firestore made for the field by itself (ascending and descending, or array-contains)."""
    data = json.loads(indexes.model_dump_json(by_alias=True, exclude_none=True))
    composites = {CompositeIndex.model_validate(e).key(): e for e in data["composite_indexes"]}
    overrides = {(e["collection"], e["field_path"]): e for e in data["field_overrides"]}
    for entry in entries:
        if isinstance(entry, CompositeIndex):
            composites.setdefault(entry.key(), entry.model_dump(mode="json", exclude_none=True))
            continue
        if entry.key() not in overrides:
            contains = any(index.mode == CONTAINS for index in entry.indexes)
            kept = [CONTAINS] if contains else [Order.ASCENDING.value, Order.DESCENDING.value]
            overrides[entry.key()] = {
                "collection": entry.collection,
                "field_path": entry.field_path,
                "indexes": [{"query_scope": QueryScope.COLLECTION.value, **_mode_fields(mode)} for mode in kept],
            }
        have = overrides[entry.key()]["indexes"]
        for index in entry.indexes:
            if index.key() not in {SingleFieldIndex.model_validate(i).key() for i in have}:
                have.append(index.model_dump(mode="json", exclude_none=True))
    data["composite_indexes"] = list(composites.values())
    data["field_overrides"] = list(overrides.values())
    return parse(data)


def recorded(path: Path) -> list[CompositeIndex | FieldOverride]:
    """The entries a recording run of the tests wrote to ``path`` (one JSON object a line)."""
    entries: list[CompositeIndex | FieldOverride] = []
    for text in path.read_text().splitlines():
        if not text.strip():
            continue
        line = json.loads(text)
        model = CompositeIndex if line["section"] == "composite_indexes" else FieldOverride
        entries.append(model.model_validate(line["entry"]))
    return entries


def main(argv: Sequence[str]) -> int:
    if len(argv) == 2 and argv[0] == "merge":
        indexes = merged(load(), recorded(Path(argv[1])))
    elif list(argv) == ["format"]:
        indexes = parse(json.loads(INDEXES.read_text()))
    else:
        print("usage: python -m dev.firestore_indexes merge RECORD | format", file=sys.stderr)
        return 2
    INDEXES.write_text(indexes.dump())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
