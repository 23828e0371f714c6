"""The function manifest (``infra/functions.json``): every deployable entry point, its source folder,
trigger, invoker, resources, the settings groups production demands of it, the queues it enqueues to and
its Cloud Scheduler jobs; what each settings group means in the environment (plain settings, Secret
Manager secrets, IAM roles); the Cloud Tasks queues with their retry and rate limits.

``make dev``, ``make build``, ``make openapi`` and the tests read it (a test holds it to the code: every
``@functions_framework.http`` entry point is listed, with the needs its ``HttpApp`` declares and a
schedule for each of its scheduler routes; each group's variables are those ``shared.needs`` demands; the
queue's attempts are ``TASKS_MAX_ATTEMPTS``); Terraform (``infra/terraform``) reads the same file.
"""

from __future__ import annotations

import json
from enum import Enum
from functools import cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "infra" / "functions.json"


class Trigger(str, Enum):
    HTTPS = "https"  # the frontend's API or a vendor's webhook: public, the app checks the caller
    CLOUD_TASKS = "cloud_tasks"  # a worker: Cloud Tasks (and maybe Cloud Scheduler) calls it with OIDC
    CLOUD_SCHEDULER = "cloud_scheduler"  # scheduled jobs only


class Invoker(str, Enum):
    ALL_USERS = "all_users"
    TASKS_SERVICE_ACCOUNT = "tasks_service_account"


class Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    query: str = Field(default="", pattern=r"^([a-z_]+=[A-Za-z0-9_-]+(&[a-z_]+=[A-Za-z0-9_-]+)*)?$")  # e.g. full=true
    cron: str
    time_zone: str = "Etc/UTC"
    retry_count: int = Field(default=3, ge=0, le=5)  # Cloud Scheduler allows at most 5 retries
    min_backoff_seconds: int = Field(default=300, ge=0)


class EntryPoint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    folder: str
    trigger: Trigger
    invoker: Invoker
    timeout_seconds: int = Field(ge=1, le=3600)
    memory: str
    cpu: str
    min_instances: int = Field(ge=0)
    max_instances: int = Field(ge=1)
    concurrency: int = Field(ge=1)
    needs: list[str]
    queues: list[str] = Field(default_factory=list)  # the Cloud Tasks queues it enqueues to
    schedules: list[Schedule] = Field(default_factory=list)

    @property
    def main(self) -> Path:
        return ROOT / "functions" / self.folder / "main.py"


class Scope(str, Enum):
    """What an IAM role is granted on (Terraform binds it there, never wider)."""

    PROJECT = "project"
    QUEUE = "queue"  # each queue the entry point lists
    TASKS_SERVICE_ACCOUNT = "tasks_service_account"  # the account whose OIDC tokens the tasks carry
    STORE_CREDENTIAL_KEY = "store_credential_key"  # the Cloud KMS key that wraps store credentials


class Role(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: str = Field(pattern=r"^roles/[a-zA-Z.]+$")
    on: Scope


class Environment(BaseModel):
    """What one settings group (or every function: ``common``) takes from the deployment: plain environment
    variables (``settings`` required, ``optional_settings`` set when the deployment has a value), Secret
    Manager secrets exposed as environment variables, variables the Cloud Functions runtime sets itself
    (``runtime``) and the IAM roles of the function's service account."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    comment: str = Field(default="", alias="$comment")
    settings: list[str] = Field(default_factory=list)
    optional_settings: list[str] = Field(default_factory=list)
    secrets: list[str] = Field(default_factory=list)
    runtime: list[str] = Field(default_factory=list)
    roles: list[Role] = Field(default_factory=list)

    def variables(self) -> set[str]:
        """Every variable the group demands (settings, secrets and the runtime's)."""
        return {*self.settings, *self.secrets, *self.runtime}


class Queue(BaseModel):
    """A Cloud Tasks queue: its retry policy (what the workers assume) and its rate limits."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    comment: str = Field(default="", alias="$comment")
    name: str = Field(pattern=r"^[A-Za-z0-9-]{1,100}$")
    target: str  # the worker entry point its tasks go to (TASKS_QUEUES maps it to this queue)
    max_attempts: int = Field(ge=1)
    min_backoff_seconds: int = Field(ge=0)
    max_backoff_seconds: int = Field(ge=0)
    max_doublings: int = Field(ge=0)
    max_dispatches_per_second: float = Field(gt=0, le=500)
    max_concurrent_dispatches: int = Field(ge=1, le=5000)

    @model_validator(mode="after")
    def _backoff_in_order(self) -> Queue:
        if self.min_backoff_seconds > self.max_backoff_seconds:
            raise ValueError(f"queue {self.name}: min_backoff_seconds exceeds max_backoff_seconds")
        return self


class TimeoutSetting(BaseModel):
    """A setting that carries an entry point's timeout to every function of its folder (they enqueue its
    tasks with that dispatch deadline), e.g. CATALOG_TASKS_TIMEOUT_SECONDS = catalog_tasks' timeout."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    setting: str
    entry_point: str


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    comment: str = Field(default="", alias="$comment")
    common: Environment
    needs: dict[str, Environment]
    queues: list[Queue]
    timeout_settings: list[TimeoutSetting] = Field(default_factory=list)
    entry_points: list[EntryPoint]

    @model_validator(mode="after")
    def _references_resolve(self) -> Manifest:
        names = {entry.name for entry in self.entry_points}
        queues = {queue.name for queue in self.queues}
        for entry in self.entry_points:
            if unknown := set(entry.needs) - set(self.needs):
                raise ValueError(f"{entry.name} needs unknown groups {sorted(unknown)}")
            if unknown := set(entry.queues) - queues:
                raise ValueError(f"{entry.name} enqueues to unknown queues {sorted(unknown)}")
        by_name = {entry.name: entry for entry in self.entry_points}
        for queue in self.queues:
            worker = by_name.get(queue.target)
            if worker is None or worker.trigger is not Trigger.CLOUD_TASKS:
                raise ValueError(f"queue {queue.name} targets {queue.target}, which is no Cloud Tasks worker")
        targets = [queue.target for queue in self.queues]
        if len(targets) != len(set(targets)):
            raise ValueError("a worker has more than one queue")
        for carried in self.timeout_settings:
            if carried.entry_point not in names:
                raise ValueError(f"{carried.setting} names the unknown entry point {carried.entry_point}")
        return self

    def folders(self) -> list[str]:
        """The function folders, each once, in order."""
        return list(dict.fromkeys(entry.folder for entry in self.entry_points))

    def environment(self, entry: EntryPoint) -> list[Environment]:
        """What the entry point takes from the deployment: ``common`` and each of its groups."""
        return [self.common, *(self.needs[need] for need in entry.needs)]

    def queue(self, name: str) -> Queue:
        return next(queue for queue in self.queues if queue.name == name)

    def queue_of(self, target: str) -> Queue | None:
        """The queue whose tasks go to the worker ``target``."""
        return next((queue for queue in self.queues if queue.target == target), None)

    def task_queues(self, entry: EntryPoint) -> dict[str, str]:
        """``TASKS_QUEUES`` for an entry point: each worker it enqueues to -> that worker's queue."""
        return {self.queue(name).target: name for name in entry.queues}


@cache
def load(path: Path = MANIFEST) -> Manifest:
    return Manifest.model_validate(json.loads(path.read_text()))


def entry_points() -> dict[str, Path]:
    """``{entry point name: its main.py}`` as the manifest lists them."""
    return {entry.name: entry.main for entry in load().entry_points}
