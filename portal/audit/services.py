"""Writing audit events. Every state change by a person, Stripe or the system calls `record`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from portal import clock
from portal.audit.models import AuditEvent
from portal.db import insert_rows

# NOTE: where `batched` keeps the rows it will insert (the session's info, for one unit of work).
_BATCH = "portal.audit.batch"


def record(
    session: Session,
    action: str,
    *,
    actor_kind: str = "system",
    actor_user_id: int | None = None,
    account_id: int | None = None,
    target_type: str = "",
    target_id: str | int = "",
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    ip: str | None = None,
) -> AuditEvent | None:
    """Append one audit event to the current transaction (inside `batched`: to its INSERT;
    then None is returned)."""
    fields: dict[str, Any] = {
        "action": action,
        "actor_kind": actor_kind,
        "actor_user_id": actor_user_id,
        "account_id": account_id,
        "target_type": target_type,
        "target_id": str(target_id),
        "before": before,
        "after": after,
        "ip": ip,
    }
    pending: list[dict[str, Any]] | None = session.info.get(_BATCH)
    if pending is not None:
        pending.append({"occurred_at": clock.now(), **fields})
        return None
    event = AuditEvent(**fields)
    session.add(event)
    return event


@contextmanager
def batched(session: Session) -> Iterator[None]:
    """The events recorded inside go in with one INSERT when the block ends without an error
    (a billing-run batch records two per invoice: one statement, not a unit-of-work object
    each). Inside the caller's transaction; an error inserts nothing."""
    if session.info.get(_BATCH) is not None:
        yield  # already batching: the outer block inserts
        return
    pending: list[dict[str, Any]] = []
    session.info[_BATCH] = pending
    try:
        yield
    finally:
        session.info.pop(_BATCH, None)
    if pending:
        insert_rows(session, AuditEvent.__table__, pending)


@dataclass(frozen=True)
class Actor:
    """Who causes a change: a customer, staff member, Stripe or the system, and from where."""

    kind: str = "system"
    user_id: int | None = None
    ip: str | None = None

    @classmethod
    def person(cls, user: Any, ip: str | None = None) -> Actor:
        """A signed-in person: staff when they hold a staff role, a customer otherwise."""
        return cls("staff" if user.is_staff else "customer", user.id, ip)

    def record(
        self,
        session: Session,
        action: str,
        *,
        account_id: int | None,
        target_type: str,
        target_id: str | int,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> AuditEvent | None:
        """Audit an action taken by this actor."""
        return record(
            session,
            action,
            actor_kind=self.kind,
            actor_user_id=self.user_id,
            account_id=account_id,
            target_type=target_type,
            target_id=target_id,
            before=before,
            after=after,
            ip=self.ip,
        )


SYSTEM = Actor()
