"""Scheduled jobs (Cloud Scheduler) that one bad client cannot stop.

Each client is processed in isolation: a failure is logged at ERROR with the client id and a stable
code, recorded in the report's ``failed``, and the loop goes on to the next client. A run with
failures answers a problem (the report in its members) only after everyone else was processed, so
Cloud Scheduler's retry policy runs it again; every job is idempotent, so the re-run only redoes
what failed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from pydantic import BaseModel, Field, ValidationError

from shared import logging as log
from shared.errors import EpoxError

logger = log.get_logger("epox.jobs")


class ScheduledReport(BaseModel):
    """What every scheduled job reports: the clients it could not process, by failure code."""

    failed: dict[str, str] = Field(default_factory=dict)


ReportT = TypeVar("ReportT", bound=ScheduledReport)


class JobIncomplete(EpoxError):
    """Some clients failed: a non-2xx so the scheduler retries; the members carry the whole report."""

    status = 500
    code = "scheduled_job_incomplete"
    title = "Some clients could not be processed"


def failure_code(exc: Exception) -> str:
    """A stable code for a client's failure: the project's own code, or what kind of fault it was."""
    from google.api_core.exceptions import GoogleAPICallError

    if isinstance(exc, EpoxError):
        return exc.code  # e.g. upstream_unavailable: a ledger conflict that exhausted its retries
    if isinstance(exc, ValidationError):
        return "corrupt_document"  # a stored document our models cannot read
    if isinstance(exc, GoogleAPICallError) and exc.grpc_status_code is not None:
        return "upstream_" + str(exc.grpc_status_code.name).lower()  # e.g. upstream_unavailable, upstream_aborted
    return EpoxError.code


def _summary(exc: Exception) -> str:
    # Field locations and error types only: the input values are a client's data, not the log's business.
    if isinstance(exc, ValidationError):
        fields = ", ".join(f"{'.'.join(str(p) for p in e['loc']) or '(document)'}: {e['type']}" for e in exc.errors())
        return f"{exc.title}: {fields}"
    if isinstance(exc, EpoxError):
        return exc.detail
    return f"{type(exc).__name__}: {exc}"


@contextmanager
def isolated(job: str, client_id: str, failed: dict[str, str], *, step: str | None = None) -> Iterator[None]:
    """Run one client's work; a failure is logged and recorded in ``failed`` instead of raised."""
    token = log.bind(client_id=client_id)
    try:
        yield
    except Exception as exc:
        code = failure_code(exc)
        failed.setdefault(client_id, code)  # a client failing in two steps keeps its first code
        where = f"{job} ({step})" if step else job
        logger.error(
            "%s: client %s failed with %s: %s",
            where,
            client_id,
            code,
            _summary(exc),
            # A stack trace only for the unexpected: our own errors and unreadable documents say it all.
            exc_info=code == EpoxError.code,
            extra={"fields": {"job_failure": {"job": job, "step": step, "client_id": client_id, "code": code}}},
        )
    finally:
        log.reset(token)


def finish(report: ReportT, job: str) -> ReportT:
    """The report of a clean run; a run with failed clients raises :class:`JobIncomplete` with it."""
    if not report.failed:
        return report
    members: dict[str, Any] = report.model_dump(mode="json")
    raise JobIncomplete(f"{job}: {len(report.failed)} client(s) failed; the others were processed", **members)
