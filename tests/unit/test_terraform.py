"""infra/terraform against the function manifest, the Firestore list and the code.

Providers cannot be downloaded here, so ``terraform validate``/``plan`` cannot run. What can: ``terraform
fmt``; python-hcl2 parses every file and the tests check the resources the deployment rests on (each would
fail if the resource went or stopped reading the manifest); and ``terraform console``, which needs no
provider, evaluates the configuration's ``locals`` (with resource attributes replaced by placeholders)
against the example tfvars, so each function's environment, secrets, roles and scheduler jobs are checked
as Terraform computes them, not as the text reads. checkov runs from ``make infra-check``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import pytest
from hcl2 import SerializationOptions

from dev.manifest import Invoker, Scope, load

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "infra" / "terraform"
MANIFEST = load()
FIRESTORE = json.loads((ROOT / "infra" / "firestore.json").read_text())
ENTRIES = {entry.name: entry for entry in MANIFEST.entry_points}
_OPTIONS = SerializationOptions(explicit_blocks=False, strip_string_quotes=True, with_comments=True)
TERRAFORM = shutil.which("terraform")
needs_terraform = pytest.mark.skipif(TERRAFORM is None, reason="the terraform binary is not installed here")


def _tf_files(directory: Path = TF) -> list[Path]:
    return sorted(path for path in directory.rglob("*.tf") if ".terraform" not in path.parts)


@cache
def _parsed(path: Path) -> dict[str, Any]:
    with path.open() as handle:
        return dict(hcl2.load(handle, serialization_options=_OPTIONS))


def _blocks(kind: str, directory: Path = TF) -> dict[str, Any]:
    """Top-level blocks of one kind in a module's own files: resources as ``type.name``, others by name."""
    found: dict[str, Any] = {}
    for path in sorted(directory.glob("*.tf")):
        for block in _parsed(path).get(kind, []):
            for label, body in block.items():
                if kind == "resource":
                    for name, resource in body.items():
                        found[f"{label}.{name}"] = resource
                else:
                    found[label] = body
    return found


def _locals(directory: Path = TF) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in sorted(directory.glob("*.tf")):
        for block in _parsed(path).get("locals", []):
            merged.update(block)
    return merged


def _one(block: dict[str, Any], key: str) -> dict[str, Any]:
    """A nested block that appears once (python-hcl2 gives every block as a list)."""
    value = block[key]
    assert isinstance(value, list) and len(value) == 1, key
    return dict(value[0])


def _terraform_env() -> dict[str, str]:
    # No ~/.terraformrc on these machines: an empty CLI configuration keeps terraform from warning about it.
    return {**os.environ, "TF_CLI_CONFIG_FILE": os.devnull, "TF_IN_AUTOMATION": "1"}


# -- the files --------------------------------------------------------------------------------------


@needs_terraform
def test_terraform_files_are_formatted() -> None:
    assert TERRAFORM is not None
    out = subprocess.run(
        [TERRAFORM, "fmt", "-check", "-recursive", "-diff", str(TF)],
        capture_output=True,
        text=True,
        env=_terraform_env(),
        timeout=60,
    )
    assert out.returncode == 0, f"run `terraform fmt -recursive infra/terraform`:\n{out.stdout}"


def test_every_file_parses_and_the_root_reads_the_shared_lists() -> None:
    for path in _tf_files():
        assert isinstance(_parsed(path), dict), path
    local = _locals()
    assert local["manifest"] == '${jsondecode(file("${path.module}/../functions.json"))}'
    assert local["firestore"] == '${jsondecode(file("${path.module}/../firestore.json"))}'
    assert local["entry_points"] == "${{for entry in local.manifest.entry_points : entry.name => entry}}"
    assert local["queues"] == "${{for queue in local.manifest.queues : queue.name => queue}}"


def test_providers_state_and_versions() -> None:
    terraform = _one(_parsed(TF / "versions.tf"), "terraform")
    assert terraform["required_version"] == ">= 1.6.0"
    providers = _one(terraform, "required_providers")
    assert providers["google"] == {"source": "hashicorp/google", "version": "~> 7.0"}
    assert providers["cloudflare"] == {"source": "cloudflare/cloudflare", "version": "~> 5.12"}
    backend = _one(_one(_parsed(TF / "backend.tf"), "terraform"), "backend")
    assert backend == {"gcs": {}}, "partial configuration: bucket and prefix come from terraform init"


def test_every_checkov_skip_is_justified_inline() -> None:
    skips = [(path, line) for path in _tf_files() for line in path.read_text().splitlines() if "checkov:skip" in line]
    assert skips, "the skips are expected where checkov flags a deliberate choice"
    for path, line in skips:
        assert re.fullmatch(r"\s*#checkov:skip=CKV2?_[A-Z0-9]+_\d+:\S.{30,}", line), f"{path.name}: {line.strip()}"


def test_no_basic_role_is_granted_anywhere() -> None:
    basic = re.compile(r"roles/(owner|editor|viewer)\b")
    for path in _tf_files():
        assert not basic.search(path.read_text()), path
    roles = [grant.role for environment in [MANIFEST.common, *MANIFEST.needs.values()] for grant in environment.roles]
    assert roles and not any(basic.search(role) for role in roles)


# -- functions --------------------------------------------------------------------------------------


def test_every_entry_point_is_a_function_from_its_folders_bundle() -> None:
    function = _blocks("module")["function"]
    assert function["source"] == "./modules/cloud-function"
    assert function["for_each"] == "${local.entry_points}"
    assert function["name"] == "${each.key}"
    assert function["source_object"] == "${google_storage_bucket_object.bundle[each.value.folder].name}"
    assert function["environment_variables"] == "${local.function_environment[each.key]}"
    assert "local.function_secrets[each.key]" in function["secret_environment_variables"]
    assert function["service_account_email"] == "${google_service_account.function[each.key].email}"
    resources = function["resources"]
    for key, field in {
        "memory": "memory",
        "cpu": "cpu",
        "timeout_seconds": "timeout_seconds",
        "min_instances": "min_instances",
        "max_instances": "max_instances",
        "concurrency": "concurrency",
    }.items():
        assert resources[key] == f"${{each.value.{field}}}", key
    # The invoker: allUsers for public APIs and webhooks, the tasks account for workers and scheduled jobs.
    assert function["public"] == f'${{each.value.invoker == "{Invoker.ALL_USERS.value}"}}'
    assert function["invokers"] == (
        f'${{each.value.invoker == "{Invoker.TASKS_SERVICE_ACCOUNT.value}" ? '
        "{tasks = google_service_account.tasks.member} : {}}"
    )
    accounts = _blocks("resource")
    assert accounts["google_service_account.function"]["for_each"] == "${local.entry_points}"
    bundle = accounts["google_storage_bucket_object.bundle"]
    assert bundle["for_each"] == "${toset(local.folders)}"
    # Content-addressed: a changed zip is a new object name, which redeploys the folder's functions.
    assert bundle["name"] == '${each.key}-${filemd5("${local.build_dir}/${each.key}.zip")}.zip'


def test_the_function_module_deploys_gen2_with_its_invokers() -> None:
    module = TF / "modules" / "cloud-function"
    resources = _blocks("resource", module)
    function = resources["google_cloudfunctions2_function.function"]
    build = _one(function, "build_config")
    assert build["entry_point"] == "${coalesce(var.entry_point, var.name)}"
    assert build["runtime"] == "${var.runtime}"
    storage = _one(_one(build, "source"), "storage_source")
    assert storage == {"bucket": "${var.source_bucket}", "object": "${var.source_object}"}
    service = _one(function, "service_config")
    assert service["service_account_email"] == "${var.service_account_email}"
    assert service["environment_variables"] == "${var.environment_variables}"
    assert service["timeout_seconds"] == "${var.resources.timeout_seconds}"
    assert service["max_instance_request_concurrency"] == "${var.resources.concurrency}"
    secrets = service["dynamic"][0]["secret_environment_variables"]
    assert secrets["for_each"] == "${var.secret_environment_variables}"
    # gen2 checks roles/run.invoker on the Cloud Run service behind the function.
    public = resources["google_cloud_run_v2_service_iam_member.public"]
    assert (public["count"], public["role"], public["member"]) == (
        "${var.public ? 1 : 0}",
        "roles/run.invoker",
        "allUsers",
    )
    invoker = resources["google_cloud_run_v2_service_iam_member.invoker"]
    assert (invoker["for_each"], invoker["role"], invoker["member"]) == (
        "${var.invokers}",
        "roles/run.invoker",
        "${each.value}",
    )
    for binding in (public, invoker):
        assert binding["name"] == "${local.service}"


def test_the_runtime_is_the_python_the_code_targets() -> None:
    import tomllib

    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    major_minor = re.fullmatch(r">=\s*3\.(\d+)", requires)
    assert major_minor is not None
    assert _blocks("variable")["runtime"]["default"] == f"python3{major_minor.group(1)}"


# -- queues and scheduler ---------------------------------------------------------------------------


def test_queues_carry_the_manifests_retry_and_rate_limits() -> None:
    queue = _blocks("resource")["google_cloud_tasks_queue.queues"]
    assert queue["for_each"] == "${local.queues}"
    assert queue["name"] == "${each.key}"
    assert _one(queue, "retry_config") == {
        "max_attempts": "${each.value.max_attempts}",
        "min_backoff": "${each.value.min_backoff_seconds}s",
        "max_backoff": "${each.value.max_backoff_seconds}s",
        "max_doublings": "${each.value.max_doublings}",
    }
    assert _one(queue, "rate_limits") == {
        "max_dispatches_per_second": "${each.value.max_dispatches_per_second}",
        "max_concurrent_dispatches": "${each.value.max_concurrent_dispatches}",
    }


def test_scheduler_jobs_post_with_the_tasks_accounts_token_for_the_workers_audience() -> None:
    job = _blocks("resource")["google_cloud_scheduler_job.jobs"]
    assert job["for_each"] == "${local.schedules}"
    assert (job["schedule"], job["time_zone"]) == ("${each.value.cron}", "${each.value.time_zone}")
    assert _one(job, "retry_config")["retry_count"] == "${each.value.retry_count}"
    target = _one(job, "http_target")
    assert (target["http_method"], target["uri"]) == ("POST", "${each.value.uri}")
    assert _one(target, "oidc_token") == {
        "service_account_email": "${google_service_account.tasks.email}",
        "audience": "${each.value.audience}",
    }


# -- data, secrets, keys, storage -------------------------------------------------------------------


def test_firestore_database_indexes_and_ttl_come_from_the_shared_list() -> None:
    resources = _blocks("resource")
    database = resources["google_firestore_database.main"]
    assert {key: database[key] for key in ("name", "type", "concurrency_mode", "deletion_policy")} == {
        "name": "(default)",
        "type": "FIRESTORE_NATIVE",
        "concurrency_mode": "OPTIMISTIC",
        "deletion_policy": "ABANDON",
    }
    assert database["point_in_time_recovery_enablement"] == "POINT_IN_TIME_RECOVERY_ENABLED"
    assert database["delete_protection_state"] == "DELETE_PROTECTION_ENABLED"
    assert resources["google_firestore_index.composite"]["for_each"] == "${local.composite_indexes}"
    field = resources["google_firestore_field.fields"]
    assert field["for_each"] == "${local.fields}"
    assert {name for block in field["dynamic"] for name in block} == {"index_config", "ttl_config"}
    local = _locals()
    assert "local.firestore.composite_indexes" in local["composite_indexes"]
    assert "local.firestore.field_overrides" in local["field_keys"]
    assert "local.firestore.ttl_policies" in local["field_keys"]


def test_secrets_are_declared_without_values() -> None:
    resources = _blocks("resource")
    secret = resources["google_secret_manager_secret.secrets"]
    assert secret["for_each"] == "${toset(local.secret_names)}"
    assert secret["secret_id"] == "${each.key}"
    for path in _tf_files():
        text = path.read_text()
        assert "google_secret_manager_secret_version" not in text, (
            f"{path.name}: secret values never pass through Terraform"
        )
        assert "secret_data" not in text, path.name
    accessor = resources["google_secret_manager_secret_iam_member.function"]
    assert (accessor["for_each"], accessor["role"]) == ("${local.secret_grants}", "roles/secretmanager.secretAccessor")


def test_the_store_credential_key_rotates_and_cannot_be_destroyed() -> None:
    key = _blocks("resource")["google_kms_crypto_key.store_credentials"]
    assert key["purpose"] == "ENCRYPT_DECRYPT"
    seconds = int(key["rotation_period"].removesuffix("s"))
    assert 0 < seconds <= 90 * 86400
    assert _one(key, "lifecycle")["prevent_destroy"] is True


def test_every_role_scope_of_the_manifest_is_bound_where_it_says() -> None:
    resources = _blocks("resource")
    bound_by = {
        Scope.PROJECT: ("google_project_iam_member.function", "${local.project_grants}"),
        Scope.QUEUE: ("google_cloud_tasks_queue_iam_member.enqueuer", "${local.queue_grants}"),
        Scope.TASKS_SERVICE_ACCOUNT: (
            "google_service_account_iam_member.act_as_tasks",
            "${local.tasks_account_grants}",
        ),
        Scope.STORE_CREDENTIAL_KEY: ("google_kms_crypto_key_iam_member.store_credentials", "${local.store_key_grants}"),
    }
    used = {grant.on for environment in [MANIFEST.common, *MANIFEST.needs.values()] for grant in environment.roles}
    assert used <= set(bound_by)
    for scope in Scope:
        resource, grants = bound_by[scope]
        assert resources[resource]["for_each"] == grants, resource
    assert resources["google_service_account_iam_member.act_as_tasks"]["service_account_id"] == (
        "${google_service_account.tasks.name}"
    )


def test_r2_expires_uploads_where_the_code_puts_them() -> None:
    from shared.catalog.uploads import raw_upload_key
    from shared.exports.service import EXPORT_PREFIX, EXPORT_RETENTION_DAYS, archive_key
    from shared.sync.prepare import SYNC_COPY_PREFIX
    from shared.videos.jobs import CLIP_PREFIX

    lifecycle = _blocks("resource")["cloudflare_r2_bucket_lifecycle.assets"]
    assert lifecycle["bucket_name"] == "${cloudflare_r2_bucket.assets.name}"
    assert "local.r2_retention" in lifecycle["rules"]
    retention = {rule["prefix"]: rule["max_age"] for rule in _locals()["r2_retention"]}
    assert raw_upload_key("c", "u").startswith("uploads/")
    assert retention == {
        "uploads/": "${1 * local.day}",
        SYNC_COPY_PREFIX: "${8 * local.day}",
        CLIP_PREFIX: "${3 * local.day}",
        EXPORT_PREFIX: f"${{{EXPORT_RETENTION_DAYS} * local.day}}",
    }
    assert archive_key("c", "e", 1).startswith(EXPORT_PREFIX)
    assert "abort_multipart_uploads_transition" in lifecycle["rules"]


def test_the_alerts_match_lines_the_code_logs() -> None:
    alerts = _locals()["log_alerts"]
    code = {
        "ledger-drift": (ROOT / "functions" / "credits" / "main.py", ["logger.critical(", '"ledger_drift"']),
        "scheduled-job-client-failures": (ROOT / "shared" / "scheduled.py", ["logger.error(", '"job_failure"']),
        "parked-events": (ROOT / "shared" / "events" / "relay.py", ['get_logger("epox.events")', '"parked %s for']),
        "quarantined-stripe-events": (
            ROOT / "shared" / "billing" / "deadletters.py",
            ['getLogger("epox.billing")', '"stripe event quarantined as '],
        ),
        "abandoned-store-webhooks": (
            ROOT / "shared" / "stores" / "keeping.py",
            ["logger.error(", '"store_webhook_abandoned"'],
        ),
    }
    assert set(code) <= set(alerts) and "scheduled-job-attempts" in alerts
    for name, (source, needles) in code.items():
        text = source.read_text()
        for needle in needles:
            assert needle in text, f"{name}: {source.name} no longer has {needle}"
    assert "jsonPayload.ledger_drift.client_id:*" in alerts["ledger-drift"]["filter"]
    assert "jsonPayload.store_webhook_abandoned.shop:*" in alerts["abandoned-store-webhooks"]["filter"]
    assert "severity=CRITICAL" in alerts["ledger-drift"]["filter"]
    assert "jsonPayload.job_failure.job:*" in alerts["scheduled-job-client-failures"]["filter"]
    assert 'jsonPayload.message=~"^parked "' in alerts["parked-events"]["filter"]
    assert 'jsonPayload.message=~"^stripe event quarantined as "' in alerts["quarantined-stripe-events"]["filter"]
    resources = _blocks("resource")
    assert resources["google_logging_metric.alerts"]["for_each"] == "${local.log_alerts}"
    assert resources["google_monitoring_alert_policy.alerts"]["for_each"] == "${local.log_alerts}"


def test_outputs_give_every_url_a_vendor_needs_at_routes_the_code_serves() -> None:
    from functions.store_oauth.main import api as store_oauth
    from functions.store_webhook.main import app as store_webhook
    from functions.stripe_webhook.main import app as stripe_webhook

    outputs = _blocks("output")
    assert outputs["function_urls"]["value"] == "${{for name, function in module.function : name => function.url}}"
    routes = {
        "stripe_webhook": {route.template for route in stripe_webhook.routes},
        "store_oauth": {route.template for route in store_oauth.routes},
        "store_webhook": {route.template for route in store_webhook.routes},
    }
    served = {
        outputs["stripe_webhook_url"]["value"]: ("stripe_webhook", "/"),
        outputs["shopify_redirect_url"]["value"]: ("store_oauth", "/oauth/shopify/callback"),
        outputs["shopify_webhook_url"]["value"]: ("store_webhook", "/webhooks/shopify"),
    }
    for value, (entry, path) in served.items():
        assert value.endswith(path), value
        assert path in routes[entry], (entry, path)
    woo = outputs["woocommerce_urls"]["value"]
    assert "/oauth/woocommerce/callback" in routes["store_oauth"] and woo["callback_url"].endswith(
        "/oauth/woocommerce/callback"
    )
    # The URLs Terraform builds from entry point names name public entry points of the manifest.
    computed = _locals()["computed_settings"]
    for setting, entry in {
        "PUBLIC_BASE_URL": "notifications_api",
        "STORE_CALLBACK_BASE_URL": "store_oauth",
        "STORE_WEBHOOK_BASE_URL": "store_webhook",
    }.items():
        assert computed[setting] == f"${{local.functions_base_url}}/{entry}"
        assert ENTRIES[entry].invoker is Invoker.ALL_USERS
    assert ENTRIES["stripe_webhook"].invoker is Invoker.ALL_USERS


def test_the_state_bucket_is_versioned_private_and_kept() -> None:
    bucket = _blocks("resource", TF / "bootstrap")["google_storage_bucket.state"]
    assert bucket["uniform_bucket_level_access"] is True
    assert bucket["public_access_prevention"] == "enforced"
    assert _one(bucket, "versioning") == {"enabled": True}
    assert _one(bucket, "lifecycle")["prevent_destroy"] is True


# -- the example tfvars -----------------------------------------------------------------------------

EXAMPLES = sorted((TF / "environments").glob("*.tfvars.example"))
_SECRET_LOOKING = re.compile(r"(sk|rk)_(live|test)_|whsec_|shpss_|-----BEGIN|AKIA[0-9A-Z]{16}|\bre_[A-Za-z0-9]{16,}")


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_tfvars_hold_no_secret(example: Path) -> None:
    values = _parsed(example)
    secret_names = {name for env in [MANIFEST.common, *MANIFEST.needs.values()] for name in env.secrets}
    assert not set(values.get("settings", {})) & secret_names
    assert not _SECRET_LOOKING.search(example.read_text())
    assert set(values.get("secret_versions", {})) <= secret_names


def test_there_is_an_example_per_environment() -> None:
    assert [path.name for path in EXAMPLES] == ["dev.tfvars.example", "prod.tfvars.example"]


# -- the locals as Terraform evaluates them ---------------------------------------------------------

# Resource attributes the locals read (unknown until apply) and the placeholder each gets.
_PLACEHOLDERS = {
    "google_service_account.tasks.email": "epox-tasks-invoker@PROJECT.iam.gserviceaccount.com",
    "cloudflare_r2_bucket.assets.name": "R2_BUCKET_NAME",
    "google_kms_crypto_key.store_credentials.id": "projects/P/locations/L/keyRings/epox/cryptoKeys/store-credentials",
}
_RESOURCE_REFERENCE = re.compile(r"\b(?:google|cloudflare)_[a-z0-9_]+\.[a-z0-9_]+(?:\[[^\]]*\])?(?:\.[a-z0-9_]+)+")
_TOP_LEVEL_BLOCK = re.compile(r"^(locals|variable \"[a-z0-9_]+\") \{\n.*?^\}\n", re.MULTILINE | re.DOTALL)
_EVALUATED = [
    "function_environment",
    "function_secrets",
    "function_roles",
    "role_grants",
    "queue_grants",
    "tasks_account_grants",
    "store_key_grants",
    "secret_grants",
    "secret_names",
    "schedules",
    "composite_indexes",
    "fields",
    "missing_settings",
    "computed_settings",
    "every_setting",
    "functions_base_url",
    "r2_retention",
]


def _evaluate(tmp_path: Path, tfvars: str) -> dict[str, Any]:
    """The root module's locals as ``terraform console`` computes them from ``tfvars``."""
    assert TERRAFORM is not None
    work = tmp_path / "infra" / "terraform"
    work.mkdir(parents=True)
    shutil.copy(ROOT / "infra" / "functions.json", tmp_path / "infra")
    shutil.copy(ROOT / "infra" / "firestore.json", tmp_path / "infra")
    blocks = [
        match.group(0) for path in sorted(TF.glob("*.tf")) for match in _TOP_LEVEL_BLOCK.finditer(path.read_text())
    ]
    source = "\n".join(blocks)
    references = set(_RESOURCE_REFERENCE.findall("\n".join(b for b in blocks if b.startswith("locals"))))
    assert references == set(_PLACEHOLDERS), "a local reads a resource attribute this test has no placeholder for"
    for reference, placeholder in _PLACEHOLDERS.items():
        source = source.replace(reference, json.dumps(placeholder))
    (work / "main.tf").write_text(source)
    (work / "terraform.tfvars").write_text(tfvars)
    query = "jsonencode({" + ", ".join(f"{name} = local.{name}" for name in _EVALUATED) + "})"
    out = subprocess.run(
        [TERRAFORM, "console"], input=query, cwd=work, capture_output=True, text=True, env=_terraform_env(), timeout=60
    )
    assert out.returncode == 0, out.stderr
    return dict(json.loads(json.loads(out.stdout)))


@cache
def _settings_of(example: Path) -> dict[str, str]:
    return dict(_parsed(example)["settings"])


def _groups_of(name: str) -> list[Any]:
    return MANIFEST.environment(ENTRIES[name])


@needs_terraform
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_each_function_gets_exactly_its_groups_environment(example: Path, tmp_path: Path) -> None:
    local = _evaluate(tmp_path, example.read_text())
    assert local["missing_settings"] == [], "the example misses settings a function needs"
    deployment = _settings_of(example)
    assert not set(deployment) & set(local["computed_settings"]), "the example overrides what Terraform computes"
    assert set(deployment) <= set(local["every_setting"]), "the example sets what no function takes"
    secrets = set(local["secret_names"])
    base = local["functions_base_url"]
    for name, entry in ENTRIES.items():
        groups = _groups_of(name)
        required = {setting for g in groups for setting in g.settings}
        optional = {setting for g in groups for setting in g.optional_settings}
        carried = {
            t.setting: str(ENTRIES[t.entry_point].timeout_seconds)
            for t in MANIFEST.timeout_settings
            if ENTRIES[t.entry_point].folder == entry.folder
        }
        environment = local["function_environment"][name]
        assert required <= set(environment), name
        assert set(environment) <= required | optional | set(carried), name
        assert not set(environment) & secrets, f"{name} would get a secret as a plain variable"
        assert {key: environment[key] for key in carried} == carried, name
        assert environment["EPOX_ENV"] == "production"
        assert all(value != "" for value in environment.values()), name
        if "TASKS_TARGET_BASE_URL" in environment:
            assert environment["TASKS_TARGET_BASE_URL"] == base
        if "TASKS_MAX_ATTEMPTS" in environment:
            assert environment["TASKS_MAX_ATTEMPTS"] == str(MANIFEST.queue(entry.queues[0]).max_attempts)
            assert environment["TASKS_QUEUE"] == entry.queues[0]
            assert json.loads(environment["TASKS_QUEUES"]) == MANIFEST.task_queues(entry), name
        assert set(local["function_secrets"][name]) == {secret for g in groups for secret in g.secrets}, name


@needs_terraform
def test_roles_grants_and_scheduler_jobs_as_terraform_computes_them(tmp_path: Path) -> None:
    local = _evaluate(tmp_path, EXAMPLES[-1].read_text())
    for name, entry in ENTRIES.items():
        expected = {(grant.role, grant.on.value) for g in _groups_of(name) for grant in g.roles}
        assert {(grant["role"], grant["on"]) for grant in local["function_roles"][name]} == expected, name
        queue_grants = {(g["queue"], g["role"]) for g in local["queue_grants"].values() if g["function"] == name}
        enqueuer = {grant.role for g in _groups_of(name) for grant in g.roles if grant.on is Scope.QUEUE}
        assert queue_grants == {(queue, role) for queue in entry.queues for role in enqueuer}, name
        secret_grants = {g["secret"] for g in local["secret_grants"].values() if g["function"] == name}
        assert secret_grants == set(local["function_secrets"][name]), name
    base = local["functions_base_url"]
    jobs = local["schedules"]
    expected_jobs = {
        (entry.name, schedule.path, schedule.query) for entry in ENTRIES.values() for schedule in entry.schedules
    }
    assert {(job["entry_point"], job["path"], job.get("query", "")) for job in jobs.values()} == expected_jobs
    assert len(jobs) == len(expected_jobs), "one Cloud Scheduler job per schedule"
    for job in jobs.values():
        entry = ENTRIES[job["entry_point"]]
        assert entry.invoker is Invoker.TASKS_SERVICE_ACCOUNT
        assert job["audience"] == f"{base}/{entry.name}", "workers accept TASKS_TARGET_BASE_URL/FUNCTION_TARGET"
        query = job.get("query", "")
        assert job["uri"] == f"{base}/{entry.name}{job['path']}" + (f"?{query}" if query else "")
        deadline = int(job["attempt_deadline"].removesuffix("s"))
        assert 15 <= deadline <= 1800 and deadline <= max(entry.timeout_seconds, 15)


@needs_terraform
def test_every_index_override_and_ttl_of_the_shared_list_is_declared(tmp_path: Path) -> None:
    local = _evaluate(tmp_path, EXAMPLES[0].read_text())
    declared = {
        (
            index["collection"],
            index["query_scope"],
            tuple((f["field_path"], f["order"], f["array_config"]) for f in index["fields"]),
        )
        for index in local["composite_indexes"].values()
    }
    listed = {
        (
            index["collection"],
            index["query_scope"],
            tuple((f["field_path"], f.get("order"), f.get("array_config")) for f in index["fields"]),
        )
        for index in FIRESTORE["composite_indexes"]
    }
    assert declared == listed
    assert len(local["composite_indexes"]) == len(FIRESTORE["composite_indexes"]), "an index is listed twice"
    fields = {(field["collection"], field["field"]): field for field in local["fields"].values()}
    for override in FIRESTORE["field_overrides"]:
        indexes = fields[(override["collection"], override["field_path"])]["indexes"]
        assert [(i["query_scope"], i["order"], i["array_config"]) for i in indexes] == [
            (i["query_scope"], i.get("order"), i.get("array_config")) for i in override["indexes"]
        ]
    for policy in FIRESTORE["ttl_policies"]:
        assert fields[(policy["collection"], policy["field_path"])]["ttl"] is True
    ttl = {(p["collection"], p["field_path"]) for p in FIRESTORE["ttl_policies"]}
    assert {key for key, field in fields.items() if field["ttl"]} == ttl


@needs_terraform
def test_a_deployment_missing_settings_is_told_which(tmp_path: Path) -> None:
    without = re.sub(r"(?ms)^settings = \{.*?^\}\n", "", EXAMPLES[0].read_text())
    local = _evaluate(tmp_path, without)
    needed = {setting for entry in ENTRIES.values() for g in MANIFEST.environment(entry) for setting in g.settings}
    assert local["missing_settings"] == sorted(needed - set(local["computed_settings"]))
    assert "AUTH_JWKS_URL" in local["missing_settings"]
