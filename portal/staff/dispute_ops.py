"""What staff do to a dispute besides resolving it: assign, reply, write an internal note,
change its status; and the closing step every resolution shares. The status table, the thread,
the timeline and the customer's emails belong to portal.disputes.services; this is the staff's
side of them."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.accounts.models import User
from portal.audit.services import Actor
from portal.disputes import services as disputes
from portal.disputes.models import Dispute, DisputeMessage, DisputeStatus
from portal.disputes.queries import OPEN_DISPUTE_STATUSES
from portal.errors import N_, Conflict, ValidationFailed


def _require_open(dispute: Dispute) -> None:
    if dispute.status not in OPEN_DISPUTE_STATUSES:
        raise Conflict(N_("This dispute is closed; it can no longer change."))


def reply(session: Session, dispute: Dispute, body: str, *, actor: Actor) -> DisputeMessage:
    """A message the customer sees (their page and the `dispute_replied` email); the first one
    stops the response clock (portal.disputes.services.add_message)."""
    return disputes.add_message(session, dispute, body=body, actor=actor, is_internal=False)


def internal_note(session: Session, dispute: Dispute, body: str, *, actor: Actor) -> DisputeMessage:
    """A note for staff only: never on a customer page, partial, email, PDF or export."""
    return disputes.add_message(session, dispute, body=body, actor=actor, is_internal=True)


def assign(session: Session, dispute: Dispute, assignee: User | None, *, actor: Actor) -> Dispute:
    before = dispute.assigned_to_user_id
    if assignee is not None and not assignee.is_staff:
        raise ValidationFailed(N_("Disputes can only be assigned to staff."))
    dispute.assigned_to_user_id = assignee.id if assignee else None
    actor.record(
        session,
        "dispute.assigned",
        account_id=dispute.account_id,
        target_type="dispute",
        target_id=dispute.public_id,
        before={"assigned_to_user_id": before},
        after={"assigned_to_user_id": dispute.assigned_to_user_id},
    )
    session.flush()
    return dispute


# Status changes staff make by hand; closing ones go through a resolution (credit note,
# refund, rejection) so that each has its reason and its email.
MANUAL_STATUSES = (DisputeStatus.IN_REVIEW, DisputeStatus.WAITING_ON_CUSTOMER)


def set_status(session: Session, dispute: Dispute, status: str, *, actor: Actor) -> Dispute:
    if status not in {s.value for s in MANUAL_STATUSES}:
        raise ValidationFailed(N_("Choose in review or waiting for the customer."))
    _require_open(dispute)
    disputes.transition(session, dispute, DisputeStatus(status), actor)
    session.flush()
    return dispute


def close(
    session: Session,
    dispute: Dispute,
    status: DisputeStatus,
    actor: Actor,
    *,
    resolution: str,
    note: str = "",
) -> Dispute:
    """The last step of every resolution: the status with its timeline entry, the resolution
    and its note, the audit event and the customer's `dispute_resolved` email (all in
    portal.disputes.services.transition)."""
    return disputes.transition(session, dispute, status, actor, note=note, resolution=resolution)


def staff_user(session: Session, public_id: str) -> User | None:
    return session.scalar(
        select(User).where(User.public_id == public_id, User.staff_role.is_not(None))
    )
