"""The payment pages' queries: the history, its cursor and the receipts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from portal.billing import services
from portal.billing.money import Money
from portal.payments import queries
from portal.payments.queries import PaymentCursor
from tests.factories import make_account, make_invoice


def test_payment_cursors_refuse_garbage() -> None:
    when = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    assert PaymentCursor.decode(PaymentCursor(when, 7).encode()) == PaymentCursor(when, 7)
    for raw in (
        "2026-01-02T03:04:00~7",  # naive: refused
        "2026-01-02T03:04:00+00:00~99999999999999999999999",
        "2026-01-02T03:04:00+00:00~0",
        "9999-12-31T23:59:59-23:59~1",  # after the last moment UTC can hold
        "0001-01-01T00:00:00+23:59~1",  # before the first
        "x~1",
        "",
    ):
        assert PaymentCursor.decode(raw) is None, raw


def test_payment_history_pages_and_names_invoices(session: Session) -> None:
    account = make_account(session)
    received = datetime(2026, 10, 1, tzinfo=UTC)
    for n in range(5):
        invoice = make_invoice(session, account, [100 + n])
        services.record_payment(
            session,
            account,
            invoice.total,
            [(invoice, invoice.total)],
            received_at=received + timedelta(days=n),
        )
    first = queries.payment_history(session, account.id, size=3)
    assert first.next_cursor is not None
    second = queries.payment_history(session, account.id, first.next_cursor, size=3)
    assert second.next_cursor is None
    rows = first.rows + second.rows
    assert [r.payment.amount_minor for r in rows] == [104, 103, 102, 101, 100]
    assert all(len(r.invoices) == 1 for r in rows)
    receipt = queries.payment_receipt(session, account.id, rows[0].payment.public_id)
    assert receipt is not None and receipt.amount == Money(104, "USD")
    assert queries.payment_receipt(session, account.id + 1000, rows[0].payment.public_id) is None
