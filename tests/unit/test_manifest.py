"""The function manifest (``infra/functions.json``) and the code agree: every entry point the code defines
is listed (and only those), with its folder, the needs its ``HttpApp`` declares, an invoker that fits its
routes, and one Cloud Scheduler job for each of its scheduler routes (and none for a route it lacks)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from dev.manifest import EntryPoint, Invoker, Trigger, load
from shared.http.app import Access, HttpApp

ROOT = Path(__file__).resolve().parents[2]
# The one place that still reads the code for entry points: to hold the manifest to it.
_ENTRY = re.compile(r"^@functions_framework\.http\s*\ndef\s+([a-z_][a-z0-9_]*)\s*\(", re.MULTILINE)
_INFRA = ("/health", "/openapi.json")


def _code_entry_points() -> dict[str, str]:
    found: dict[str, str] = {}
    for main in sorted((ROOT / "functions").glob("*/main.py")):
        for name in _ENTRY.findall(main.read_text()):
            assert name not in found, f"entry point {name} is defined twice"
            found[name] = main.parent.name
    return found


def _app(entry: EntryPoint) -> HttpApp:
    module = importlib.import_module(f"functions.{entry.folder}.main")
    apps = [value for value in vars(module).values() if isinstance(value, HttpApp) and value.service == entry.name]
    assert len(apps) == 1, f"functions/{entry.folder}/main.py has no HttpApp named {entry.name}"
    return apps[0]


ENTRIES = load().entry_points


def test_every_entry_point_in_the_code_is_in_the_manifest_and_nothing_else() -> None:
    listed = {entry.name: entry.folder for entry in ENTRIES}
    assert len(listed) == len(ENTRIES), "an entry point is listed twice"
    assert listed == _code_entry_points()


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_an_entry_points_needs_invoker_and_schedules_match_its_routes(entry: EntryPoint) -> None:
    app = _app(entry)
    assert sorted(entry.needs) == sorted(need.value for need in app.needs)
    accesses = {route.access for route in app.routes if route.template not in _INFRA}
    internal = accesses <= {Access.TASK, Access.SCHEDULER}
    assert (entry.invoker is Invoker.TASKS_SERVICE_ACCOUNT) == internal, "workers are invoked by the tasks account"
    assert (entry.trigger is Trigger.HTTPS) == (not internal)
    scheduled = {route.template for route in app.routes if route.access is Access.SCHEDULER}
    assert {schedule.path for schedule in entry.schedules} == scheduled
    assert len(entry.schedules) == len(scheduled), "one Cloud Scheduler job per scheduler route"


def test_schedules_are_five_field_crons_in_utc() -> None:
    for entry in ENTRIES:
        for schedule in entry.schedules:
            assert len(schedule.cron.split()) == 5, (entry.name, schedule.cron)
            assert schedule.time_zone == "Etc/UTC"


def test_workers_time_out_no_sooner_than_their_items_dispatch_deadline() -> None:
    from shared.editing.service import EDITS
    from shared.generation.jobs import GenerationJobs
    from shared.sync.jobs import SYNCS

    timeouts = {entry.name: entry.timeout_seconds for entry in ENTRIES}
    for kind in (EDITS, GenerationJobs(), SYNCS):
        deadline = kind.item_deadline
        assert deadline is not None and timeouts[kind.worker] >= deadline.total_seconds(), kind.worker
