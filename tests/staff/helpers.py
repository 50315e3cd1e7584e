"""Objects the staff console's tests need: disputes as the customer side (or Stripe) leaves them."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from portal import clock
from portal.accounts.models import Account
from portal.billing.models import Invoice
from portal.disputes.models import Dispute, DisputeLine, DisputeMessage
from portal.payments.models import Payment


def make_dispute(
    session: Session,
    account: Account,
    invoice: Invoice | None = None,
    *,
    amount_minor: int | None = None,
    lines: bool = True,
    source: str = "customer",
    payment: Payment | None = None,
    status: str = "open",
    created_at: datetime | None = None,
    response_due_at: datetime | None = None,
    **fields: Any,
) -> Dispute:
    """A dispute of `invoice` (all its lines, or the whole amount), or a chargeback of `payment`."""
    created = created_at or clock.now()
    total = invoice.total_minor if invoice is not None else (payment.amount_minor if payment else 0)
    dispute = Dispute(
        account_id=account.id,
        invoice_id=invoice.id if invoice is not None else None,
        payment_id=payment.id if payment is not None else None,
        source=source,
        currency=account.currency,
        amount_minor=amount_minor or total,
        reason=fields.pop("reason", "wrong_amount"),
        description=fields.pop("description", "The second seat was never used."),
        status=status,
        created_at=created,
        updated_at=created,
        response_due_at=response_due_at or created + timedelta(days=2),
        **fields,
    )
    session.add(dispute)
    session.flush()
    if invoice is not None and lines and source == "customer":
        left = dispute.amount_minor
        for line in invoice.lines:
            part = min(left, line.amount_minor + line.tax_minor)
            if part <= 0:
                break
            session.add(
                DisputeLine(
                    dispute_id=dispute.id,
                    invoice_line_id=line.id,
                    amount_minor=part,
                    is_open=status in ("open", "in_review", "waiting_on_customer"),
                )
            )
            left -= part
        session.flush()
    return dispute


def customer_message(session: Session, dispute: Dispute, body: str) -> DisputeMessage:
    message = DisputeMessage(dispute_id=dispute.id, author_kind="customer", body=body)
    session.add(message)
    session.flush()
    return message
