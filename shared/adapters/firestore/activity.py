"""Firestore adapter of the weekly summary's activity port: images made by generation jobs.

Reads ``clients/{c}/jobs`` finished in a window (a single-field range: no composite index) and sums
each job's sharded ``counters``. The collection and the counter are the generation kind's
(``GenerationJobs.collection``, its ``succeeded_slots`` count; a unit test holds them equal): named
here so this function does not load the generation package (its engine, imaging and storage).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from shared.notifications.weekly import GeneratedImages

if TYPE_CHECKING:
    from google.cloud.firestore import Client

GENERATION_JOBS = "jobs"
IMAGES_COUNTER = "succeeded_slots"


class FirestoreGeneratedImages(GeneratedImages):
    def __init__(self, db: Client) -> None:
        self.db = db

    def between(self, client_id: str, since: datetime, until: datetime) -> int:
        from google.cloud.firestore import FieldFilter

        jobs = self.db.collection("clients").document(client_id).collection(GENERATION_JOBS)
        query = jobs.where(filter=FieldFilter("finished_at", ">=", since)).where(
            filter=FieldFilter("finished_at", "<", until)
        )
        total = 0
        for job in query.select([]).stream():
            for shard in job.reference.collection("counters").stream():
                total += int((shard.to_dict() or {}).get(IMAGES_COUNTER, 0))
        return total
