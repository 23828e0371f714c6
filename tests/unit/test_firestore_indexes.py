"""The list of Firestore indexes and TTL policies (``infra/firestore.json``) and the rules that say what a
query needs: the file loads, is in order, holds nothing twice and nothing Firestore would refuse; the
requirement function needs an index where Firestore does and none where it does not; the queries the
integration tests do not run are served too; TTL fields are timestamps of the documents they expire."""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from dev.firestore_indexes import (
    INDEXES,
    FirestoreIndexes,
    Need,
    Order,
    QueryScope,
    QueryShape,
    covered,
    load,
    missing,
    parse,
)

ROOT = Path(__file__).resolve().parents[2]
ASC, DESC = Order.ASCENDING, Order.DESCENDING
EMPTY = FirestoreIndexes(composite_indexes=[], field_overrides=[], ttl_policies=[])


def shape(
    collection: str,
    *,
    group: bool = False,
    eq: tuple[str, ...] = (),
    contains: tuple[str, ...] = (),
    ineq: tuple[str, ...] = (),
    order: tuple[tuple[str, Order], ...] = (),
) -> QueryShape:
    return QueryShape(collection, group, frozenset(eq), frozenset(contains), frozenset(ineq), order)


def lines(needs: list[Need]) -> list[dict[str, Any]]:
    return [json.loads(need.line()) for need in needs]


def spec(composites: Sequence[dict[str, Any]] = (), overrides: Sequence[dict[str, Any]] = ()) -> FirestoreIndexes:
    return parse({"composite_indexes": list(composites), "field_overrides": list(overrides), "ttl_policies": []})


def composite(collection: str, *fields: tuple[str, str], scope: str = "COLLECTION") -> dict[str, Any]:
    keyed = [
        {"field_path": p, "array_config": m} if m == "CONTAINS" else {"field_path": p, "order": m} for p, m in fields
    ]
    return {"collection": collection, "query_scope": scope, "fields": keyed}


# -- the file ---------------------------------------------------------------------------------------


def test_the_file_loads_in_its_canonical_order_and_layout() -> None:
    indexes = load()
    assert INDEXES.read_text() == indexes.dump(), "run: python -m dev.firestore_indexes format"
    assert indexes.composite_indexes and indexes.field_overrides and indexes.ttl_policies


def test_each_collection_the_list_names_is_one_the_code_names() -> None:
    code = "\n".join(path.read_text() for path in (ROOT / "shared").rglob("*.py"))
    indexes = load()
    named = {i.collection for i in indexes.composite_indexes} | {o.collection for o in indexes.field_overrides}
    named |= {p.collection for p in indexes.ttl_policies}
    assert {name for name in named if f'"{name}"' not in code} == set()


def test_no_index_is_declared_twice_even_in_another_spelling() -> None:
    indexes = load()
    bodies = [(i.collection, i.query_scope, i.body, i.name_direction) for i in indexes.composite_indexes]
    assert len(bodies) == len(set(bodies))


def test_entries_out_of_order_or_twice_are_refused() -> None:
    a = composite("jobs", ("status", "ASCENDING"), ("created_at", "DESCENDING"))
    b = composite("assets", ("kind", "ASCENDING"), ("created_at", "DESCENDING"))
    with pytest.raises(ValidationError, match="not in order"):
        FirestoreIndexes.model_validate({"composite_indexes": [a, b], "field_overrides": [], "ttl_policies": []})
    with pytest.raises(ValidationError, match="twice"):
        FirestoreIndexes.model_validate({"composite_indexes": [a, a], "field_overrides": [], "ttl_policies": []})
    assert [
        i.collection
        for i in parse({"composite_indexes": [a, b], "field_overrides": [], "ttl_policies": []}).composite_indexes
    ] == ["assets", "jobs"]


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        (
            [
                {"field_path": "a", "order": "ASCENDING", "array_config": "CONTAINS"},
                {"field_path": "b", "order": "ASCENDING"},
            ],
            "exactly one",
        ),
        ([{"field_path": "a"}, {"field_path": "b", "order": "ASCENDING"}], "exactly one"),
        ([{"field_path": "a", "order": "UP"}, {"field_path": "b", "order": "ASCENDING"}], "order"),
        ([{"field_path": "a", "order": "ASCENDING"}], "at least 2"),
        ([{"field_path": "a", "order": "ASCENDING"}, {"field_path": "a", "order": "DESCENDING"}], "twice"),
        ([{"field_path": "__name__", "order": "ASCENDING"}, {"field_path": "a", "order": "ASCENDING"}], "last"),
        ([{"field_path": "a", "order": "DESCENDING"}, {"field_path": "__name__", "order": "DESCENDING"}], "implied"),
        (
            [{"field_path": "t", "array_config": "CONTAINS"}, {"field_path": "__name__", "order": "ASCENDING"}],
            "implied",
        ),
        ([{"field_path": "t", "array_config": "CONTAINS"}, {"field_path": "u", "array_config": "CONTAINS"}], "array"),
        ([{"field_path": "a", "order": "ASCENDING"}, {"field_path": "b", "order": "ASCENDING", "x": 1}], "Extra"),
    ],
)
def test_composite_indexes_firestore_would_refuse_are_refused(fields: list[dict[str, Any]], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        parse(
            {
                "composite_indexes": [{"collection": "c", "query_scope": "COLLECTION", "fields": fields}],
                "field_overrides": [],
                "ttl_policies": [],
            }
        )


def test_a_field_with_a_ttl_policy_has_no_field_override_as_well() -> None:
    override = {
        "collection": "c",
        "field_path": "expires_at",
        "indexes": [{"query_scope": "COLLECTION_GROUP", "order": "ASCENDING"}],
    }
    with pytest.raises(ValidationError, match="TTL"):
        parse(
            {
                "composite_indexes": [],
                "field_overrides": [override],
                "ttl_policies": [{"collection": "c", "field_path": "expires_at"}],
            }
        )


def test_a_collection_is_a_collection_id_not_a_path() -> None:
    with pytest.raises(ValidationError):
        parse(
            {
                "composite_indexes": [composite("clients/x/jobs", ("a", "ASCENDING"), ("b", "ASCENDING"))],
                "field_overrides": [],
                "ttl_policies": [],
            }
        )


# -- what a query needs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        shape("synced_images", eq=("product_id", "asset_id", "status"), order=(("__name__", ASC),)),  # merged
        shape("synced_images", eq=("asset_id",)),  # an "in" filter
        shape("sync_products", eq=("state",), contains=("search_tokens",), order=(("__name__", ASC),)),
        shape("outbox", ineq=("relay_due_at",), order=(("relay_due_at", ASC),)),
        shape("ledger_entries", ineq=("seq",)),  # the inequality's implicit order: seq ascending
        shape("sync_history", order=(("at", DESC), ("__name__", DESC))),  # the descending single-field index
        shape("clients", ineq=("billing.pending_plan_at",)),
        shape("presets", order=(("name", ASC),)),
        shape("store_connection", group=True),  # a collection group, no filter: the __name__ index
        shape("products", eq=("store.status",), order=(("__name__", DESC),)),
    ],
    ids=lambda q: q.describe(),
)
def test_queries_single_field_indexes_serve_need_nothing(query: QueryShape) -> None:
    assert missing(query, EMPTY) == []


@pytest.mark.parametrize(
    ("query", "wanted"),
    [
        (  # an equality filter and an order on another field
            shape("notifications", eq=("type",), order=(("updated_at", DESC), ("id", DESC))),
            [composite("notifications", ("type", "ASCENDING"), ("updated_at", "DESCENDING"), ("id", "DESCENDING"))],
        ),
        (  # two orders
            shape("jobs", order=(("created_at", DESC), ("id", DESC))),
            [composite("jobs", ("created_at", "DESCENDING"), ("id", "DESCENDING"))],
        ),
        (  # a range on one field, an equality on another: the range's field is ordered (ascending)
            shape("uploads", eq=("status",), ineq=("expires_at",)),
            [composite("uploads", ("status", "ASCENDING"), ("expires_at", "ASCENDING"))],
        ),
        (  # array-contains and an order
            shape("products", contains=("search_tokens",), order=(("created_at", DESC), ("id", DESC))),
            [composite("products", ("search_tokens", "CONTAINS"), ("created_at", "DESCENDING"), ("id", "DESCENDING"))],
        ),
        (  # __name__ against the direction of the field before it
            shape("sync_history", order=(("at", ASC), ("__name__", DESC))),
            [composite("sync_history", ("at", "ASCENDING"), ("__name__", "DESCENDING"))],
        ),
        (  # array-contains' single-field index ends with __name__ ascending only
            shape("sync_products", contains=("search_tokens",), order=(("__name__", DESC),)),
            [composite("sync_products", ("search_tokens", "CONTAINS"), ("__name__", "DESCENDING"))],
        ),
        (  # inequalities on two fields: both ordered, by name
            shape("jobs", ineq=("finished_at", "created_at")),
            [composite("jobs", ("created_at", "ASCENDING"), ("finished_at", "ASCENDING"))],
        ),
        (  # an order-by, then the inequality field it does not name, in its direction
            shape("jobs", ineq=("finished_at",), order=(("created_at", DESC),)),
            [composite("jobs", ("created_at", "DESCENDING"), ("finished_at", "DESCENDING"))],
        ),
        (  # a collection group's equality filter: a collection-group single-field index
            shape("store_connection", group=True, eq=("platform",)),
            [
                {
                    "collection": "store_connection",
                    "field_path": "platform",
                    "indexes": [{"query_scope": "COLLECTION_GROUP", "order": "ASCENDING"}],
                }
            ],
        ),
        (  # a collection group's range
            shape("ledger", group=True, ineq=("next_hold_deadline",)),
            [
                {
                    "collection": "ledger",
                    "field_path": "next_hold_deadline",
                    "indexes": [{"query_scope": "COLLECTION_GROUP", "order": "ASCENDING"}],
                }
            ],
        ),
        (  # a collection group's equality and range: a collection-group composite
            shape("items", group=True, eq=("status",), ineq=("updated_at",), order=(("updated_at", ASC),)),
            [composite("items", ("status", "ASCENDING"), ("updated_at", "ASCENDING"), scope="COLLECTION_GROUP")],
        ),
        (  # several equality filters and an order: one index per filter field (merged)
            shape("assets", eq=("kind", "status"), order=(("created_at", DESC), ("id", DESC))),
            [
                composite("assets", ("kind", "ASCENDING"), ("created_at", "DESCENDING"), ("id", "DESCENDING")),
                composite("assets", ("status", "ASCENDING"), ("created_at", "DESCENDING"), ("id", "DESCENDING")),
            ],
        ),
    ],
    ids=lambda value: value.describe() if isinstance(value, QueryShape) else "",
)
def test_queries_that_need_an_index_name_it(query: QueryShape, wanted: list[dict[str, Any]]) -> None:
    assert lines(missing(query, EMPTY)) == wanted
    assert not covered(query, EMPTY)


def test_a_declared_index_serves_its_query_and_not_its_neighbours() -> None:
    indexes = spec(
        [composite("ledger_entries", ("type", "ASCENDING"), ("created_at", "DESCENDING"), ("seq", "DESCENDING"))]
    )
    orders = (("created_at", DESC), ("seq", DESC))
    assert missing(shape("ledger_entries", eq=("type",), ineq=("created_at",), order=orders), indexes) == []
    # another equality field, the other direction, a collection group, another collection: not served
    assert missing(shape("ledger_entries", eq=("operation",), order=orders), indexes)
    assert missing(shape("ledger_entries", eq=("type",), order=(("created_at", ASC), ("seq", ASC))), indexes)
    assert missing(shape("ledger_entries", group=True, eq=("type",), order=orders), indexes)
    assert missing(shape("entries", eq=("type",), order=orders), indexes)
    # the index's equality field is not filtered: it does not serve the plain order
    assert missing(shape("ledger_entries", order=orders), indexes)


def test_indexes_sharing_the_orders_merge_for_several_equality_filters() -> None:
    orders = (("created_at", DESC), ("seq", DESC))
    both = shape("ledger_entries", eq=("type", "operation"), order=orders)
    by_type = composite("ledger_entries", ("type", "ASCENDING"), ("created_at", "DESCENDING"), ("seq", "DESCENDING"))
    by_op = composite("ledger_entries", ("operation", "ASCENDING"), ("created_at", "DESCENDING"), ("seq", "DESCENDING"))
    assert lines(missing(both, spec([by_type]))) == [by_op]
    assert missing(both, spec([by_type, by_op])) == []
    together = composite(
        "ledger_entries",
        ("operation", "ASCENDING"),
        ("type", "ASCENDING"),
        ("created_at", "DESCENDING"),
        ("seq", "DESCENDING"),
    )
    assert missing(both, spec([together])) == []


def test_a_field_override_replaces_the_automatic_single_field_indexes() -> None:
    due = shape("uploads", ineq=("sweep_at",), order=(("sweep_at", ASC),))
    group_only = {
        "collection": "uploads",
        "field_path": "sweep_at",
        "indexes": [{"query_scope": "COLLECTION_GROUP", "order": "ASCENDING"}],
    }
    (need,) = missing(due, spec(overrides=[group_only]))
    assert need.automatic and need.scope is QueryScope.COLLECTION
    assert missing(dataclasses.replace(due, all_descendants=True), spec(overrides=[group_only])) == []
    assert missing(due, EMPTY) == []


def test_a_collection_group_equality_needs_each_fields_collection_group_index() -> None:
    query = shape("store_connection", group=True, eq=("platform", "status"))
    one = {
        "collection": "store_connection",
        "field_path": "platform",
        "indexes": [{"query_scope": "COLLECTION_GROUP", "order": "ASCENDING"}],
    }
    assert [n.body for n in missing(query, spec(overrides=[one]))] == [(("status", "ASCENDING"),)]


# -- the code's queries the integration tests do not run -----------------------------------------------

# Queries of shared/adapters/firestore/*.py that no integration test runs as such (the guard checks the
# others on every run), and filter combinations the list serves only by Firestore merging its indexes.
NEWEST = (("created_at", DESC), ("id", DESC))
NOT_EXERCISED: list[tuple[str, QueryShape]] = [
    ("batch.py list_jobs: sync jobs by status", shape("sync_jobs", eq=("status",), order=NEWEST)),
    (
        "catalog.py products scan: every filter",
        shape("products", eq=("category", "source"), contains=("search_tokens",), order=NEWEST),
    ),
    (
        "catalog.py assets scan: every filter",
        shape("assets", eq=("product_id", "kind", "status", "pinned", "favorite", "approved"), order=NEWEST),
    ),
    (
        "ledger.py history: every filter",
        shape(
            "ledger_entries",
            eq=("type", "operation"),
            ineq=("created_at",),
            order=(("created_at", DESC), ("seq", DESC)),
        ),
    ),
    (
        "notifications.py page: both filters",
        shape("notifications", eq=("type", "read"), order=(("updated_at", DESC), ("id", DESC))),
    ),
    (
        "sync.py history: both filters",
        shape("sync_history", eq=("product_id", "action"), order=(("at", DESC), ("__name__", DESC))),
    ),
    (
        "sync.py list_records: every filter",
        shape("synced_images", eq=("product_id", "asset_id", "status"), order=(("__name__", ASC),)),
    ),
    ("catalog.py due_for_sweep: one client", shape("uploads", ineq=("sweep_at",), order=(("sweep_at", ASC),))),
    ("activity.py between", shape("jobs", ineq=("finished_at",))),
    ("stores.py connections: every platform", shape("store_connection", group=True)),
    ("ledger.py ledger_clients: every client", shape("ledger", group=True)),
]


def _job_kinds() -> list[Any]:
    from shared.editing.service import EDITS
    from shared.generation.jobs import GenerationJobs
    from shared.sync.jobs import SYNCS
    from shared.videos.jobs import VIDEOS

    return [GenerationJobs(), EDITS, SYNCS, VIDEOS]


@pytest.mark.parametrize("kind", _job_kinds(), ids=lambda kind: kind.collection)
def test_every_batch_job_kinds_collection_serves_the_engines_queries(kind: Any) -> None:
    """The batch engine runs the same queries on every kind's collection (its list pages, by status, and
    the reaper's collection-group scan); a new kind must bring its indexes along."""
    for query in (
        shape(kind.collection, order=NEWEST),
        shape(kind.collection, eq=("status",), order=NEWEST),
        shape(kind.collection, group=True, eq=("status",), ineq=("created_at",), order=(("created_at", ASC),)),
    ):
        assert missing(query, load()) == [], (kind.collection, query)


@pytest.mark.parametrize(("where", "query"), NOT_EXERCISED, ids=[where for where, _ in NOT_EXERCISED])
def test_queries_the_integration_tests_do_not_run_are_served(where: str, query: QueryShape) -> None:
    assert missing(query, load()) == [], where


# -- TTL policies -------------------------------------------------------------------------------------


def _ttl_models() -> dict[str, type[Any]]:
    from shared.idempotency import IdempotencyRecord
    from shared.notifications.inbox import Notification
    from shared.stores.models import OAuthStateDoc

    return {
        "idempotency_keys": IdempotencyRecord,
        "notifications": Notification,
        "store_oauth_states": OAuthStateDoc,
    }


def _datetime_field(model: type[Any], name: str) -> bool:
    if issubclass(model, BaseModel):
        return name in model.model_fields and model.model_fields[name].annotation is datetime
    return dataclasses.is_dataclass(model) and typing.get_type_hints(model).get(name) is datetime


def test_ttl_fields_are_timestamps_of_the_documents_they_expire() -> None:
    from shared.stores.repository import StoreRepository

    models = _ttl_models()
    for policy in load().ttl_policies:
        if policy.collection == "store_webhook_deliveries":
            # No model: the adapter stores {"received_at", "expires_at": keep_until}.
            assert typing.get_type_hints(StoreRepository.first_delivery)["keep_until"] is datetime
            continue
        assert policy.collection in models, f"no model known for {policy.collection}: add it here"
        assert _datetime_field(models[policy.collection], policy.field_path), policy


# -- the integration tests' guard reads the queries the SDK sends -----------------------------------------


def _db() -> Any:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import firestore

    return firestore.Client(project="epox-unit", credentials=AnonymousCredentials())


def test_the_guard_reads_filters_orders_and_scope_from_the_sdks_query() -> None:
    from google.cloud.firestore import FieldFilter, Or, Query

    from tests.firestore_index_guard import shapes

    db = _db()
    query = (
        db.collection("clients")
        .document("c")
        .collection("imports")
        .where(filter=FieldFilter("status", "in", ["queued", "running"]))
        .where(filter=FieldFilter("updated_at", "<", datetime(2026, 1, 1)))
        .where(filter=FieldFilter("tags", "array_contains", "x"))
        .order_by("updated_at", direction=Query.DESCENDING)
    )
    assert shapes(query._to_protobuf()) == [
        shape("imports", eq=("status",), contains=("tags",), ineq=("updated_at",), order=(("updated_at", DESC),))
    ]
    group = db.collection_group("items").where(filter=Or([FieldFilter("a", "==", 1), FieldFilter("b", ">", 2)]))
    assert shapes(group._to_protobuf()) == [
        shape("items", group=True, eq=("a",)),
        shape("items", group=True, ineq=("b",)),
    ]


def test_the_guard_fails_the_test_with_the_line_to_paste_or_records_it(tmp_path: Path) -> None:
    from dev.firestore_indexes import merged, recorded
    from tests.firestore_index_guard import IndexGuard

    query = (
        _db().collection("jobs").order_by("created_at", direction="DESCENDING").order_by("id", direction="DESCENDING")
    )
    guard = IndexGuard(EMPTY, None)
    guard.observe(query._to_protobuf(), "here")
    with pytest.raises(pytest.fail.Exception) as failed:
        guard._raise_if_missing()
    paste = '{"collection": "jobs", "query_scope": "COLLECTION", "fields": [{"field_path": "created_at", "order": "DESCENDING"}, {"field_path": "id", "order": "DESCENDING"}]}'  # noqa: E501
    assert f"add to composite_indexes: {paste}" in str(failed.value)
    guard._raise_if_missing()  # reported once

    record = tmp_path / "record.jsonl"
    recording = IndexGuard(EMPTY, record)
    recording.observe(query._to_protobuf(), "here")
    recording._raise_if_missing()  # records, never fails
    assert json.loads(record.read_text())["entry"] == json.loads(paste)
    assert missing(shape("jobs", order=(("created_at", DESC), ("id", DESC))), merged(EMPTY, recorded(record))) == []


def test_an_order_on_a_field_filtered_by_equality_needs_nothing_more() -> None:
    assert missing(shape("imports", eq=("status",), order=(("status", ASC),)), EMPTY) == []
    wanted = [composite("jobs", ("status", "ASCENDING"), ("created_at", "DESCENDING"))]
    assert lines(missing(shape("jobs", eq=("status",), order=(("status", ASC), ("created_at", DESC))), EMPTY)) == wanted
