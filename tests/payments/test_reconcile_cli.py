"""`flask --app wsgi billing reconcile` and paying the whole balance at once."""

from __future__ import annotations

from flask import Flask
from sqlalchemy import func, select

from portal.billing.models import Invoice, InvoiceStatus
from portal.extensions import db
from portal.payments.models import Payment, PaymentAllocation
from tests.conftest import login_as
from tests.factories import make_invoice
from tests.payments.conftest import gateway_for, seed_payer
from tests.payments.fault_proxy import FaultProxy
from tests.payments.test_lost_responses import _is_confirm


def test_reconcile_command_settles_then_has_nothing_to_do(
    pay_app: Flask, proxy: FaultProxy, localstripe: str
) -> None:
    with pay_app.app_context():
        account, user, invoice, card = seed_payer(db.session, gateway_for(proxy.url), localstripe)
        db.session.commit()
        number, card_id, account_id = invoice.number, card.public_id, account.id
        client = pay_app.test_client()
        login_as(client, user)
        db.session.commit()
    proxy.inject("drop", _is_confirm, times=2)
    client.post(f"/invoices/{number}/pay", data={"payment_method": card_id})
    runner = pay_app.test_cli_runner()
    first = runner.invoke(args=["billing", "reconcile", "--min-age-minutes", "0"])
    assert first.exit_code == 0, first.output
    assert "unknown -> succeeded" in first.output and "recorded pi_" in first.output
    second = runner.invoke(args=["billing", "reconcile", "--min-age-minutes", "0"])
    assert second.exit_code == 0 and "nothing to do" in second.output, second.output
    with pay_app.app_context():
        assert (
            db.session.scalar(
                select(func.count()).select_from(Payment).where(Payment.account_id == account_id)
            )
            == 1
        )


def test_pay_the_whole_balance_in_one_payment(
    pay_app: Flask, proxy: FaultProxy, localstripe: str
) -> None:
    with pay_app.app_context():
        account, user, first, card = seed_payer(
            db.session, gateway_for(proxy.url), localstripe, amounts=(1000,)
        )
        second = make_invoice(db.session, account, (2550,))
        db.session.commit()
        ids = (first.id, second.id)
        card_id, account_id = card.public_id, account.id
        client = pay_app.test_client()
        login_as(client, user)
        db.session.commit()
    page = client.get("/pay").get_data(as_text=True)
    assert "$35.50" in page
    response = client.post("/pay", data={"scope": "balance", "payment_method": card_id})
    assert response.status_code == 303
    assert 'data-status="succeeded"' in client.get(response.headers["Location"]).get_data(
        as_text=True
    )
    with pay_app.app_context():
        payment = db.session.scalar(select(Payment).where(Payment.account_id == account_id))
        assert payment.amount_minor == 3550
        allocations = db.session.scalars(
            select(PaymentAllocation.amount_minor)
            .where(PaymentAllocation.payment_id == payment.id)
            .order_by(PaymentAllocation.invoice_id)
        ).all()
        assert allocations == [1000, 2550]
        for invoice_id in ids:
            assert db.session.get(Invoice, invoice_id).status == InvoiceStatus.PAID
    assert proxy.count("POST", "/confirm") == 1
