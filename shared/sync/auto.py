"""Auto-sync: an image approved while the client's sync settings ask for it is pushed to the store.

The event consumer runs on the notifications worker: it only decides and queues a named task (so that
worker carries nothing of the push), and ``sync_tasks`` starts the job (:func:`shared.sync.service.auto_sync`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from shared.events.consumer import EventConsumer
from shared.events.model import AssetApproval, DomainEvent, EventType
from shared.sync.repository import SyncRepository
from shared.tasks import TaskQueue, TaskRequest, task_name

AUTO_SYNC_USER = "auto-sync"  # who the history names for pushes auto-sync started
AUTO_SYNC_PATH = "/tasks/auto-sync"
WORKER_TARGET = "sync_tasks"


class AutoSyncTask(BaseModel):
    """Cloud Tasks payload: push one just-approved image (the approval event names the job)."""

    model_config = ConfigDict(extra="forbid")

    client_id: str
    asset_id: str
    event_id: str


class AutoSync(EventConsumer):
    """Pushes an image when it is approved, for clients whose sync settings ask for it: the consumer
    (on the notifications worker) only decides and queues a named task; ``sync_tasks`` starts the job."""

    name = "auto_sync"
    types = frozenset({EventType.ASSET_APPROVED})
    ordered = True

    def __init__(self, repo: SyncRepository, queue: TaskQueue) -> None:
        self.repo = repo
        self.queue = queue

    def handle(self, event: DomainEvent) -> str:
        approval = AssetApproval.model_validate(event.payload)
        if not approval.approved:
            return "skipped: not an approval"
        if not self.repo.settings(event.client_id).auto_sync:
            return "skipped: auto-sync is off"
        task = AutoSyncTask(client_id=event.client_id, asset_id=approval.asset_id, event_id=event.id)
        self.queue.enqueue(
            TaskRequest(
                target=WORKER_TARGET,
                path=AUTO_SYNC_PATH,
                payload=task,
                name=task_name("auto-sync", event.client_id, event.id),
            )
        )
        return "sync queued"
