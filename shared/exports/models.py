"""Requests, responses, stored documents and task payloads of ZIP exports."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.catalog.models import Id, StrictModel

MAX_EXPORT_ASSETS = 1000  # a selection; a job's results are as many as the job made


class ExportCreate(StrictModel):
    """A job of the client (generation, edit or video: its results) or a selection of its assets."""

    job_id: Id | None = None
    asset_ids: list[Id] | None = Field(default=None, min_length=1, max_length=MAX_EXPORT_ASSETS)

    @field_validator("asset_ids")
    @classmethod
    def _unique(cls, ids: list[str] | None) -> list[str] | None:
        return None if ids is None else list(dict.fromkeys(ids))

    @model_validator(mode="after")
    def _one_source(self) -> ExportCreate:
        if (self.job_id is None) == (self.asset_ids is None):
            raise ValueError("send either job_id or asset_ids")
        return self


class ExportStatus(str, Enum):
    """queued → building → ready | failed; a ready archive past its retention reads as expired."""

    QUEUED = "queued"
    BUILDING = "building"
    READY = "ready"
    FAILED = "failed"
    EXPIRED = "expired"


class ExportSource(BaseModel):
    model_config = ConfigDict(extra="ignore", defer_build=True)

    kind: Literal["job", "selection"]
    job_id: str | None = None
    asset_ids: list[str] = Field(default_factory=list)  # a selection, sorted


class ExportDoc(BaseModel):
    """``clients/{client}/exports/{id}``; the id is derived from the client and the source, so asking
    again for the same job or selection finds it."""

    model_config = ConfigDict(extra="ignore", defer_build=True)

    id: str
    client_id: str
    source: ExportSource
    status: ExportStatus = ExportStatus.QUEUED
    build: int = 1  # builds asked for: each is its own archive (and its own task names)
    segment: int = 0  # the build's deliveries so far that each wrote part of it and handed on the rest
    fingerprint: str | None = None  # what the build holds: rows, assets and their revisions' keys
    files_total: int = 0
    files_done: int = 0
    rows_total: int = 0
    size_bytes: int | None = None
    archive_key: str | None = None  # the archive the build writes (ready: the one to download)
    upload_id: str | None = None  # its multipart upload while it is being written
    filename: str  # the name a download is saved as
    # The delivery writing the build now, and until when it is taken to be alive.
    run: str | None = None
    lease_until: datetime | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    ready_at: datetime | None = None
    expires_at: datetime | None = None  # the archive may be deleted from then on (R2 lifecycle)
    failure: str | None = None


class ExportOut(BaseModel):
    model_config = ConfigDict(defer_build=True)

    id: str
    status: ExportStatus
    job_id: str | None
    asset_count: int | None  # a selection's size
    files_total: int
    files_done: int
    progress: float  # 0..1
    size_bytes: int | None
    filename: str
    download_url: str | None  # ready: a presigned GET, valid until url_expires_at
    url_expires_at: datetime | None
    expires_at: datetime | None  # when the archive itself may be deleted
    created_at: datetime
    ready_at: datetime | None
    failure: str | None


class ExportTask(BaseModel):
    """Cloud Tasks payload: build ``build`` of the export from its segment ``segment``."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    client_id: str
    export_id: str
    build: int = Field(ge=1)
    segment: int = Field(ge=0)
