"""A credit note on a paid invoice (how a dispute is resolved in the customer's favour after
they paid) leaves credit on the balance; the statement shows it and still closes at the
ledger's sum (invariant 2)."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.billing import ledger
from portal.billing import services as billing
from portal.billing.models import LedgerEntry
from portal.billing.money import Money
from tests.conftest import login_as
from tests.factories import make_account, make_dispute, make_invoice, make_user


def test_the_statement_shows_the_credit_on_a_paid_invoice(
    client: FlaskClient, session: Session, clock: Any
) -> None:
    account = make_account(session)
    user = make_user(session, account=account)
    invoice = make_invoice(session, account, [4200, 800])
    billing.record_payment(
        session,
        account,
        Money(5000, "USD"),
        [(invoice, Money(5000, "USD"))],
        received_at=clock(),
    )
    line = invoice.lines[1]
    dispute = make_dispute(session, account, invoice, 800, line_ids=[line.id])
    note = billing.issue_credit_note(
        session,
        invoice,
        Money(800, "USD"),
        reason="dispute",
        lines=[(line, "Credit for the disputed line", Money(800, "USD"))],
        dispute_id=dispute.id,
    )
    session.commit()
    assert ledger.balance(session, account.id, "USD") == Money(-800, "USD")
    login_as(client, user)
    page = client.get("/statements?period=this_month").get_data(as_text=True)
    assert note.number in page
    assert 'data-testid="closing">-$8.00<' in page or 'data-testid="closing">−$8.00<' in page
    assert "In your favour" in page
    total = session.scalar(
        select(func.sum(LedgerEntry.amount_minor)).where(LedgerEntry.account_id == account.id)
    )
    assert total == -800
    invoice_page = client.get(f"/invoices/{invoice.number}").get_data(as_text=True)
    assert "Credited" in invoice_page and note.number in invoice_page
