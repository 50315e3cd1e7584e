"""Read queries about disputes that other features rely on."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.disputes.models import Dispute, DisputeStatus

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
