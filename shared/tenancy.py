"""Tenancy: client (tenant) records, and onboarding, the explicit step a client's first authenticated
call goes through.

Onboarding creates the client's record, then welcomes it: the welcome is the billing service's
``onboard`` (the Free plan and the signup bonus, exactly once per client, whatever retries and
concurrent first calls do). The platform composes the step (:meth:`shared.platform.Platform.onboarding`)
and the HTTP pipeline runs it for signed-in callers, so the HTTP layer knows nothing of billing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from shared.auth import Principal


class ClientRecord(BaseModel):
    """``clients/{client_id}``: the tenant's own record."""

    model_config = ConfigDict(extra="ignore")

    id: str
    plan: str = "free"
    status: str = "active"
    created_at: datetime
    created_by: str
    contact_email: str | None = None  # the signed-in user's email claim, kept current at each sign-in


class ClientDirectory(ABC):
    """Port: where the tenants' records live."""

    @abstractmethod
    def create(self, record: ClientRecord) -> bool:
        """Create the record unless one exists for its id (never overwritten); True when created."""

    @abstractmethod
    def set_contact_email(self, client_id: str, email: str) -> None:
        """Record the client's contact address (merged into the existing record, nothing else touched)."""

    @abstractmethod
    def contact_email(self, client_id: str) -> str | None:
        """The client's contact address, if one is known."""


# What a new client is given (client id, now); must be idempotent: it runs again after a crash or in a
# new process, and only the first run may grant anything.
Welcome = Callable[[str, datetime], object]


def onboard(directory: ClientDirectory, welcome: Welcome, principal: Principal, now: datetime) -> bool:
    """The client's record, then its welcome; True when the record was created by this call.

    The welcome runs even when the record exists: a first call that died between the two steps is
    completed by the next one, and the welcome itself grants only once."""
    record = ClientRecord(
        id=principal.client_id, created_at=now, created_by=principal.user_id, contact_email=principal.email
    )
    created = directory.create(record)
    if not created and principal.email:
        directory.set_contact_email(principal.client_id, principal.email)
    welcome(principal.client_id, now)
    return created


class Onboarding:
    """:func:`onboard` for every signed-in call, remembered per process so a known client costs nothing."""

    def __init__(self, directory: ClientDirectory, welcome: Welcome, clock: Callable[[], datetime]) -> None:
        self.directory = directory
        self.welcome = welcome
        self.clock = clock
        # (client, email): a known client signing in with another address in this process records it.
        self._known: set[tuple[str, str | None]] = set()

    def ensure(self, principal: Principal) -> None:
        """Onboard the caller's client unless this process already did (a failure is retried next call)."""
        known = (principal.client_id, principal.email)
        if known in self._known:
            return
        onboard(self.directory, self.welcome, principal, self.clock())
        self._known.add(known)
