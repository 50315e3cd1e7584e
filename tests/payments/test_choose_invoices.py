"""Paying several chosen invoices from /pay: the chooser, the server's total, the HTMX swap,
the no-JavaScript "Update total", and numbers that are not the account's."""

from __future__ import annotations

import json
import re
from datetime import timedelta

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal import clock as portal_clock
from portal.accounts.models import Account
from portal.billing.models import Invoice, InvoiceStatus
from portal.payments.models import Payment, PaymentAllocation, PaymentAttempt
from tests.conftest import login_as
from tests.factories import make_account, make_invoice, make_user
from tests.payments.conftest import customer_with_card, gateway_for
from tests.payments.fault_proxy import FaultProxy


def _three_invoices(session: Session, account: Account) -> list[Invoice]:
    """One overdue (issued 90 days ago) and two current invoices."""
    today = portal_clock.today(account.timezone)
    overdue = make_invoice(session, account, (1250,), issue_date=today - timedelta(days=90))
    return [
        overdue,
        make_invoice(session, account, (2000,)),
        make_invoice(session, account, (305,)),
    ]


def _checked(body: str) -> list[str]:
    return re.findall(r'name="invoice" value="([^"]+)" checked', body)


def _offered(body: str) -> list[str]:
    return re.findall(r'name="invoice" value="([^"]+)"', body)


def test_the_chooser_offers_every_open_invoice_checked_overdue_first(
    client: FlaskClient, session: Session
) -> None:
    account = make_account(session)
    user = make_user(session, account=account)
    overdue, second, third = _three_invoices(session, account)
    make_invoice(session, account, (999,), finalize=False)  # a draft is never offered
    login_as(client, user)
    body = client.get("/pay").get_data(as_text=True)
    numbers = [overdue.number, second.number, third.number]
    assert _offered(body) == numbers and _checked(body) == numbers
    assert "Overdue</strong>" in body
    summary = body.split('<div id="pay-summary"')[1].split("</div>")[0]
    assert "Total for 3 invoices" in summary and "$35.55" in summary
    assert "Pay $35.55" in body


def test_htmx_change_returns_the_servers_total_and_the_pay_buttons_out_of_band(
    client: FlaskClient, session: Session
) -> None:
    account = make_account(session)
    user = make_user(session, account=account)
    overdue, second, _ = _three_invoices(session, account)
    login_as(client, user)
    response = client.get(
        f"/pay?choose=1&invoice={overdue.number}&invoice={second.number}",
        headers={"HX-Request": "true"},
    )
    body = response.get_data(as_text=True)
    assert response.status_code == 200 and "<html" not in body
    assert "HX-Request" in response.headers["Vary"]
    assert "Total for 2 invoices" in body and "$32.50" in body
    assert 'id="pay-new-button"' in body and 'hx-swap-oob="true"' in body
    assert "Pay $32.50" in body
    # Nothing ticked: a zero total and disabled buttons, never "everything".
    empty = client.get("/pay?choose=1", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert "No invoice chosen" in empty and "$0.00" in empty
    assert re.search(r'id="pay-new-button"[^>]*disabled', empty)


def test_update_total_without_javascript_rerenders_and_charges_nothing(
    stripe_app: Flask, session: Session, proxy: FaultProxy
) -> None:
    client = stripe_app.test_client()
    account = make_account(session)
    user = make_user(session, account=account)
    overdue, second, third = _three_invoices(session, account)
    login_as(client, user)
    response = client.post(
        "/pay",
        data={"choose": "1", "action": "update", "invoice": [second.number], "amount": "1"},
    )
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert _offered(body) == [overdue.number, second.number, third.number]
    assert _checked(body) == [second.number]
    assert "Total for 1 invoice" in body and "Pay $20.00" in body
    assert proxy.state.forwarded == []
    assert not session.scalar(select(func.count()).select_from(PaymentAttempt))


def test_another_accounts_number_is_left_out_of_the_chooser_with_a_message(
    client: FlaskClient, session: Session
) -> None:
    account = make_account(session)
    user = make_user(session, account=account)
    mine = make_invoice(session, account, (1000,))
    theirs = make_invoice(session, make_account(session), (7777,))
    login_as(client, user)
    body = client.get(
        f"/pay?choose=1&invoice={mine.number}&invoice={theirs.number}&invoice=NOPE-1"
    ).get_data(as_text=True)
    assert _offered(body) == [mine.number] and _checked(body) == [mine.number]
    assert "2 of the invoices could not be paid here." in body
    assert theirs.number not in body and "NOPE-1" not in body
    assert "$77.77" not in body and "$10.00" in body


def test_text_chosen_by_a_link_is_never_echoed_in_the_alert(
    client: FlaskClient, session: Session
) -> None:
    """A link anyone can write must not put its own words inside the portal's alert box."""
    account = make_account(session)
    user = make_user(session, account=account)
    mine = make_invoice(session, account, (1000,))
    login_as(client, user)
    bait = "Your account is suspended. Call +1 555 0100 now"
    body = client.get(
        "/pay", query_string={"choose": "1", "invoice": [mine.number, bait]}
    ).get_data(as_text=True)
    assert "One of the invoices could not be paid here." in body
    assert "suspended" not in body and "555 0100" not in body


def test_paying_two_of_three_chosen_invoices_charges_the_servers_sum(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    client = stripe_app.test_client()
    account = make_account(session)
    user = make_user(session, account=account)
    overdue, second, third = _three_invoices(session, account)
    card = customer_with_card(session, gateway_for(proxy.url), localstripe, account)
    login_as(client, user)
    response = client.post(
        "/pay",
        data={
            "choose": "1",
            "invoice": [overdue.number, third.number],
            "payment_method": card.public_id,
            "pay_with": "saved",
            "amount": "1",  # never read: the server computes the amount
            "amount_minor": "1",
        },
    )
    assert response.status_code == 303
    assert 'data-status="succeeded"' in client.get(response.headers["Location"]).get_data(
        as_text=True
    )
    created = [
        f for f in proxy.state.forwarded if f.method == "POST" and f.path == "/v1/payment_intents"
    ]
    assert len(created) == 1
    assert json.loads(created[0].body)["amount"] == 1250 + 305  # what Stripe was asked for
    payment = session.scalar(select(Payment).where(Payment.account_id == account.id))
    assert payment is not None and payment.amount_minor == 1250 + 305
    allocated = dict(
        session.execute(
            select(PaymentAllocation.invoice_id, PaymentAllocation.amount_minor).where(
                PaymentAllocation.payment_id == payment.id
            )
        ).all()
    )
    assert allocated == {overdue.id: 1250, third.id: 305}
    session.expire_all()
    assert [overdue.status, second.status, third.status] == [
        InvoiceStatus.PAID,
        InvoiceStatus.OPEN,
        InvoiceStatus.PAID,
    ]
    # The chooser now offers only what is left.
    assert _offered(client.get("/pay").get_data(as_text=True)) == [second.number]


def test_paying_another_accounts_number_is_404_before_stripe_is_called(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    client = stripe_app.test_client()
    account = make_account(session)
    user = make_user(session, account=account)
    mine = make_invoice(session, account, (1000,))
    theirs = make_invoice(session, make_account(session), (7777,))
    card = customer_with_card(session, gateway_for(proxy.url), localstripe, account)
    login_as(client, user)
    forwarded = len(proxy.state.forwarded)
    response = client.post(
        "/pay",
        data={
            "choose": "1",
            "invoice": [mine.number, theirs.number],
            "payment_method": card.public_id,
            "pay_with": "saved",
        },
    )
    assert response.status_code == 404
    assert len(proxy.state.forwarded) == forwarded
    assert not session.scalar(select(func.count()).select_from(PaymentAttempt))
    session.expire_all()
    assert mine.status == InvoiceStatus.OPEN and theirs.status == InvoiceStatus.OPEN


def test_nothing_ticked_is_a_clear_422_not_the_whole_balance(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    client = stripe_app.test_client()
    account = make_account(session)
    user = make_user(session, account=account)
    make_invoice(session, account, (1000,))
    card = customer_with_card(session, gateway_for(proxy.url), localstripe, account)
    login_as(client, user)
    forwarded = len(proxy.state.forwarded)
    response = client.post(
        "/pay", data={"choose": "1", "payment_method": card.public_id, "pay_with": "saved"}
    )
    assert response.status_code == 422
    assert "Choose at least one invoice" in response.get_data(as_text=True)
    assert len(proxy.state.forwarded) == forwarded
    assert not session.scalar(select(func.count()).select_from(PaymentAttempt))


def test_new_card_button_without_card_details_charges_nothing(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    """Without JavaScript "Pay with a new card" must never fall back to the ticked saved card."""
    client = stripe_app.test_client()
    account = make_account(session)
    user = make_user(session, account=account)
    invoice = make_invoice(session, account, (1000,))
    card = customer_with_card(session, gateway_for(proxy.url), localstripe, account)
    login_as(client, user)
    forwarded = len(proxy.state.forwarded)
    response = client.post(
        "/pay",
        data={
            "choose": "1",
            "invoice": [invoice.number],
            "payment_method": card.public_id,
            "pay_with": "new",
            "setup_intent": "",
        },
    )
    assert response.status_code == 422
    assert "needs JavaScript" in response.get_data(as_text=True)
    assert len(proxy.state.forwarded) == forwarded


def test_dashboard_and_invoice_list_link_the_chooser(client: FlaskClient, session: Session) -> None:
    account = make_account(session)
    user = make_user(session, account=account)
    make_invoice(session, account, (1000,))
    login_as(client, user)
    assert 'data-testid="pay-balance"' in client.get("/").get_data(as_text=True)
    # One open invoice: its own pay button is enough on the list.
    assert 'data-testid="pay-several"' not in client.get("/invoices").get_data(as_text=True)
    make_invoice(session, account, (500,))
    listing = client.get("/invoices").get_data(as_text=True)
    assert 'data-testid="pay-several"' in listing and "Pay 2 open invoices" in listing


def test_all_paid_up_has_no_pay_balance_button(client: FlaskClient, session: Session) -> None:
    account = make_account(session)
    login_as(client, make_user(session, account=account))
    assert 'data-testid="pay-balance"' not in client.get("/").get_data(as_text=True)
    assert "You have no open invoices" in client.get("/pay").get_data(as_text=True)
