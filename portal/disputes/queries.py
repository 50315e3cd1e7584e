"""Read queries about disputes that other features rely on."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session

from portal.billing.models import CreditNote
from portal.disputes.models import (
    Attachment,
    AttachmentVisibility,
    Dispute,
    DisputeEvent,
    DisputeMessage,
    DisputeStatus,
)

# NOTE: while a dispute is one of these, the amount it questions is held: no reminder and no
# automatic collection ask for it (the rest of the invoice stays payable).
OPEN_DISPUTE_STATUSES = (
    DisputeStatus.OPEN.value,
    DisputeStatus.IN_REVIEW.value,
    DisputeStatus.WAITING_ON_CUSTOMER.value,
)


def held_by_invoice(session: Session, invoice_ids: Collection[int]) -> dict[int, int]:
    """Minor units held by open disputes, per invoice id (invoices with none are absent)."""
    if not invoice_ids:
        return {}
    rows = session.execute(
        select(Dispute.invoice_id, func.sum(Dispute.amount_minor))
        .where(
            Dispute.invoice_id.in_(sorted(set(invoice_ids))),
            Dispute.status.in_(OPEN_DISPUTE_STATUSES),
        )
        .group_by(Dispute.invoice_id)
    )
    return {invoice_id: int(held) for invoice_id, held in rows if invoice_id is not None}


def dispute_of_account(account_id: int, public_id: str) -> Select[tuple[Dispute]]:
    """One dispute by its public id, only within the account (anything else finds nothing)."""
    return select(Dispute).where(Dispute.account_id == account_id, Dispute.public_id == public_id)


def disputes_of_account(account_id: int) -> Select[tuple[Dispute]]:
    """The account's disputes, newest first."""
    return (
        select(Dispute)
        .where(Dispute.account_id == account_id)
        .order_by(Dispute.created_at.desc(), Dispute.id.desc())
    )


def customer_messages(session: Session, dispute_id: int) -> list[DisputeMessage]:
    """The thread as the customer sees it: no internal notes, no deleted messages."""
    return list(
        session.scalars(
            select(DisputeMessage)
            .where(
                DisputeMessage.dispute_id == dispute_id,
                DisputeMessage.is_internal.is_(False),
                DisputeMessage.deleted_at.is_(None),
            )
            .order_by(DisputeMessage.created_at, DisputeMessage.id)
        )
    )


def customer_attachments(session: Session, dispute_id: int) -> list[Attachment]:
    """The files the customer may see: their own visibility says customer, they are not
    deleted, and the message they belong to (if any) is neither internal nor deleted.

    NOTE: every customer page, partial and download goes through this one definition.
    """
    return list(session.scalars(_customer_attachments(dispute_id).order_by(Attachment.id)))


def customer_attachment(dispute_id: int, public_id: str) -> Select[tuple[Attachment]]:
    """One file the customer may download (see customer_attachments)."""
    return _customer_attachments(dispute_id).where(Attachment.public_id == public_id)


def _customer_attachments(dispute_id: int) -> Select[tuple[Attachment]]:
    return (
        select(Attachment)
        .outerjoin(DisputeMessage, DisputeMessage.id == Attachment.message_id)
        .where(
            Attachment.dispute_id == dispute_id,
            Attachment.visibility == AttachmentVisibility.CUSTOMER.value,
            Attachment.deleted_at.is_(None),
            or_(
                Attachment.message_id.is_(None),
                and_(DisputeMessage.is_internal.is_(False), DisputeMessage.deleted_at.is_(None)),
            ),
        )
    )


def dispute_events(session: Session, dispute_id: int) -> list[DisputeEvent]:
    """The status timeline, oldest first."""
    return list(
        session.scalars(
            select(DisputeEvent)
            .where(DisputeEvent.dispute_id == dispute_id)
            .order_by(DisputeEvent.at, DisputeEvent.id)
        )
    )


def dispute_credit_notes(session: Session, dispute_id: int) -> list[CreditNote]:
    """The credit notes that resolved a dispute (what the customer got back), oldest first."""
    return list(
        session.scalars(
            select(CreditNote)
            .where(CreditNote.dispute_id == dispute_id)
            .order_by(CreditNote.issued_at, CreditNote.id)
        )
    )
