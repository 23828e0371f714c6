"""The function manifest (``infra/functions.json``): every deployable entry point, its source folder,
trigger, invoker, resources, the settings groups production demands of it and its Cloud Scheduler jobs.

``make dev``, ``make build``, ``make openapi`` and the tests read it (a test holds it to the code: every
``@functions_framework.http`` entry point is listed, with the needs its ``HttpApp`` declares and a
schedule for each of its scheduler routes); Terraform (issue #14) is to read the same file.
"""

from __future__ import annotations

import json
from enum import Enum
from functools import cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

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
    cron: str
    time_zone: str = "Etc/UTC"
    retry_count: int = Field(default=3, ge=0)
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
    schedules: list[Schedule] = Field(default_factory=list)

    @property
    def main(self) -> Path:
        return ROOT / "functions" / self.folder / "main.py"


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    comment: str = Field(default="", alias="$comment")
    entry_points: list[EntryPoint]

    def folders(self) -> list[str]:
        """The function folders, each once, in order."""
        return list(dict.fromkeys(entry.folder for entry in self.entry_points))


@cache
def load(path: Path = MANIFEST) -> Manifest:
    return Manifest.model_validate(json.loads(path.read_text()))


def entry_points() -> dict[str, Path]:
    """``{entry point name: its main.py}`` as the manifest lists them."""
    return {entry.name: entry.main for entry in load().entry_points}
