"""Writing audit events. Every state change by a person, Stripe or the system calls `record`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from portal.audit.models import AuditEvent


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
) -> AuditEvent:
    """Append one audit event to the current transaction."""
    event = AuditEvent(
        action=action,
        actor_kind=actor_kind,
        actor_user_id=actor_user_id,
        account_id=account_id,
        target_type=target_type,
        target_id=str(target_id),
        before=before,
        after=after,
        ip=ip,
    )
    session.add(event)
    return event


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
    ) -> AuditEvent:
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
