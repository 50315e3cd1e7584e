"""Receipt numbers: "RCT-2026-00042", gapless per calendar year of the payment (UTC).

Every payment gets one when it is recorded, from the number series "receipt-<year>" that
migration 0005 started with the numbers it gave to older payments, so the series continues where
the backfill stopped. A number is taken inside the transaction that records the payment: if the
payment rolls back, so does its number (portal.billing.numbering), so the series has no gaps.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from portal.billing.numbering import next_in_series
from portal.payments.models import Payment

RECEIPT_NUMBER = re.compile(r"RCT-(\d{4})-(\d{5,})")


def receipt_series_key(year: int) -> str:
    return f"receipt-{year}"


def format_receipt_number(year: int, sequence: int) -> str:
    return f"RCT-{year}-{sequence:05d}"


def receipt_year(received_at: datetime) -> int:
    """The year a payment's number belongs to: the UTC year it was received (as the backfill)."""
    if received_at.tzinfo is not None:
        received_at = received_at.astimezone(UTC)
    return received_at.year


def assign_receipt_number(session: Session, payment: Payment) -> str:
    """Give a payment the next receipt number of its year (once; a numbered payment keeps its).

    NOTE: the series row is locked by the UPDATE that advances it (portal.billing.numbering)
    until this transaction ends, so two payments recorded at once queue up and never share a
    number; several payments in one transaction take consecutive numbers.
    """
    if payment.receipt_number:
        return payment.receipt_number
    year = receipt_year(payment.received_at)
    payment.receipt_number = format_receipt_number(
        year, next_in_series(session, receipt_series_key(year))
    )
    session.flush()
    return payment.receipt_number
