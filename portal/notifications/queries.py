"""Read queries of notifications that pages and jobs share."""

from __future__ import annotations

from datetime import date

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.notifications.models import PaymentRetry, RetryStatus


def planned_retry_days(session: Session, invoice_id: int) -> list[date]:
    """The days the saved card will be tried again for this invoice, soonest first."""
    return [
        when.date()
        for when in session.scalars(
            select(PaymentRetry.scheduled_for)
            .where(
                PaymentRetry.invoice_id == invoice_id,
                PaymentRetry.status == RetryStatus.SCHEDULED.value,
            )
            .order_by(PaymentRetry.scheduled_for)
        )
    ]
