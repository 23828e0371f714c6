"""The function manifest (``infra/functions.json``) and the code agree: every entry point the code defines
is listed (and only those), with its folder, the needs its ``HttpApp`` declares, an invoker that fits its
routes, and one Cloud Scheduler job for each of its scheduler routes (and none for a route it lacks); each
settings group hands a function exactly the variables production demands of it (``shared.needs``), secrets
through Secret Manager; the queue retries as often as the workers assume."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from urllib.parse import parse_qsl

import annotated_types
import pytest
from pydantic import SecretStr

from dev.manifest import EntryPoint, Invoker, Trigger, load
from shared.config import Settings
from shared.http.app import Access, HttpApp
from shared.needs import Need, required_variables

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


MANIFEST = load()
ENTRIES = MANIFEST.entry_points
# GEMINI_USE_VERTEX=true stands in for GEMINI_API_KEY (shared.needs): Vertex AI with the function's own
# service account, so there is no API key to keep.
REPLACED = {"GEMINI_API_KEY": "GEMINI_USE_VERTEX"}
# Demanded by the manifest beyond what the code's guard demands, on purpose: every provider's SMTP relay
# (Resend, SendGrid, SES) needs a login, so a deployment without one is a mistake to catch at plan time.
EXTRA: dict[Need, set[str]] = {Need.MAIL: {"SMTP_USERNAME", "SMTP_PASSWORD"}}


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
    scheduled = {route.template: route for route in app.routes if route.access is Access.SCHEDULER}
    assert {schedule.path for schedule in entry.schedules} == set(scheduled)
    jobs = [(schedule.path, schedule.query) for schedule in entry.schedules]
    assert len(jobs) == len(set(jobs)), "one Cloud Scheduler job per scheduler route and query"
    for schedule in entry.schedules:
        if schedule.query:  # the route must accept it (its query model, as the router parses it)
            model = scheduled[schedule.path].query_model
            assert model is not None, schedule.path
            model.model_validate(dict(parse_qsl(schedule.query, strict_parsing=True)))


def test_schedules_are_five_field_crons_in_utc() -> None:
    for entry in ENTRIES:
        for schedule in entry.schedules:
            assert len(schedule.cron.split()) == 5, (entry.name, schedule.cron)
            assert schedule.time_zone == "Etc/UTC"


def test_workers_time_out_no_sooner_than_their_items_dispatch_deadline() -> None:
    from shared.editing.service import EDITS
    from shared.generation.jobs import GenerationJobs
    from shared.sync.jobs import SYNCS
    from shared.videos.jobs import VIDEOS

    timeouts = {entry.name: entry.timeout_seconds for entry in ENTRIES}
    for kind in (EDITS, GenerationJobs(), SYNCS, VIDEOS):
        deadline = kind.item_deadline
        assert deadline is not None and timeouts[kind.worker] >= deadline.total_seconds(), kind.worker


@pytest.mark.parametrize("need", list(Need), ids=lambda n: n.value)
def test_each_group_hands_over_exactly_what_production_demands_of_it(need: Need) -> None:
    demanded = set(required_variables([need])) - set(required_variables([]))  # GCP_PROJECT: in common
    demanded = {REPLACED.get(name, name) for name in demanded} | EXTRA.get(need, set())
    assert MANIFEST.needs[need.value].variables() == demanded


def test_every_group_is_described_and_common_covers_what_every_function_needs() -> None:
    assert set(MANIFEST.needs) == {need.value for need in Need}
    assert set(required_variables([])) <= MANIFEST.common.variables()


def _groups() -> dict[str, object]:
    return {"common": MANIFEST.common, **MANIFEST.needs}


@pytest.mark.parametrize("group", sorted(_groups()))
def test_a_groups_variables_are_settings_and_every_secret_setting_comes_from_secret_manager(group: str) -> None:
    environment = MANIFEST.common if group == "common" else MANIFEST.needs[group]
    named = [*environment.settings, *environment.optional_settings, *environment.secrets, *environment.runtime]
    assert len(named) == len(set(named)), "a variable is listed twice in one group"
    for name in named:
        assert name.lower() in Settings.model_fields, f"{group}: {name} is no setting of shared.config"
    for name in [*environment.settings, *environment.optional_settings]:
        # A SecretStr setting must never travel as a plain environment variable (visible in the console).
        assert Settings.model_fields[name.lower()].annotation is not SecretStr, f"{group}: {name} is a secret"


def test_every_queue_retries_as_often_as_the_workers_assume() -> None:
    for queue in MANIFEST.queues:
        assert queue.max_attempts == Settings.model_fields["tasks_max_attempts"].default, queue.name


def test_every_worker_has_its_own_queue_which_never_sends_more_at_once_than_it_can_take() -> None:
    """A queue dispatching more tasks at once than its worker's instances serve gets 429s, and each one
    uses up an attempt of the task."""
    workers = {entry.name: entry for entry in ENTRIES if entry.trigger is Trigger.CLOUD_TASKS}
    assert {queue.target for queue in MANIFEST.queues} == set(workers)
    for queue in MANIFEST.queues:
        worker = workers[queue.target]
        assert queue.max_concurrent_dispatches <= worker.max_instances * worker.concurrency, queue.name


def test_the_task_targets_in_the_code_each_have_a_queue() -> None:
    from shared.catalog.imports import WORKER_TARGET as CATALOG
    from shared.editing.service import EDITS
    from shared.events.relay import RELAY_TARGET
    from shared.generation.jobs import GenerationJobs
    from shared.stores.imports import WORKER_TARGET as STORES
    from shared.sync.auto import WORKER_TARGET as AUTO_SYNC
    from shared.sync.jobs import SYNCS
    from shared.videos.jobs import VIDEOS

    targets = (CATALOG, EDITS.worker, RELAY_TARGET, GenerationJobs().worker, STORES, AUTO_SYNC, SYNCS.worker)
    for target in (*targets, VIDEOS.worker):
        assert MANIFEST.queue_of(target) is not None, target


def test_every_entry_point_that_enqueues_lists_its_queues_and_no_other_does() -> None:
    for entry in ENTRIES:
        assert bool(entry.queues) == (Need.TASK_QUEUE.value in entry.needs), entry.name


def test_a_killed_item_is_reaped_only_after_its_last_possible_redelivery_started() -> None:
    """BATCH_ITEM_LEASE_MINUTES must outlast an item delivery (the worker's timeout) plus the queue's
    longest backoff before the next one, or the reaper fails an item the queue is about to retry."""
    from shared.editing.service import EDITS
    from shared.generation.jobs import GenerationJobs
    from shared.sync.jobs import SYNCS
    from shared.videos.jobs import VIDEOS

    timeouts = {entry.name: entry.timeout_seconds for entry in ENTRIES}
    longest = max(timeouts[kind.worker] for kind in (EDITS, GenerationJobs(), SYNCS, VIDEOS))
    lease = Settings.model_fields["batch_item_lease_minutes"].default * 60
    for queue in MANIFEST.queues:
        assert longest + queue.max_backoff_seconds < lease, queue.name


def _bounds(name: str) -> tuple[float, float]:
    low, high = float("-inf"), float("inf")
    for rule in Settings.model_fields[name.lower()].metadata:
        if isinstance(rule, annotated_types.Ge):
            low = float(rule.ge)  # type: ignore[arg-type]
        if isinstance(rule, annotated_types.Le):
            high = float(rule.le)  # type: ignore[arg-type]
    return low, high


def test_a_timeout_setting_carries_a_timeout_its_setting_accepts() -> None:
    timeouts = {entry.name: entry.timeout_seconds for entry in ENTRIES}
    for carried in MANIFEST.timeout_settings:
        low, high = _bounds(carried.setting)
        assert low <= timeouts[carried.entry_point] <= high, carried.setting


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.schedules], ids=lambda e: e.name)
def test_scheduler_routes_take_a_bodiless_post_as_the_scheduler_jobs_send(entry: EntryPoint) -> None:
    for route in _app(entry).routes:
        if route.access is Access.SCHEDULER:
            assert (route.method, route.body_model) == ("POST", None), route.template
