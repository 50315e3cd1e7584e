"""A new card is saved for next time only when the customer leaves "Save this card" ticked;
otherwise it pays once and is detached at Stripe when the payment has ended."""

from __future__ import annotations

import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.accounts.models import Account
from portal.billing.models import Invoice, InvoiceStatus
from portal.payments import services
from portal.payments.gateway import Card
from portal.payments.models import Payment, PaymentAttempt, PaymentMethod
from tests.conftest import login_as
from tests.factories import make_account, make_invoice, make_user
from tests.payments.conftest import SUCCESS, THREE_DS, confirm_setup, gateway_for
from tests.payments.fault_proxy import FaultProxy


def _pay_with_new_card(
    client: FlaskClient, localstripe: str, invoice: Invoice, number: str, *, save: bool
) -> str:
    """The pay page's new-card path: SetupIntent, Stripe.js confirm, then the form's POST."""
    secret = client.post("/payment-methods/setup").json["client_secret"]
    setup_id = confirm_setup(localstripe, secret, number)
    response = client.post(
        f"/invoices/{invoice.number}/pay",
        data={
            "setup_intent": setup_id,
            "pay_with": "new",
            # the hidden "0" always, the checkbox's "1" when ticked
            "save_card": ["0", "1"] if save else ["0"],
        },
    )
    assert response.status_code == 303, response.get_data(as_text=True)
    return str(response.headers["Location"])


def _setup(session: Session) -> tuple[Account, FlaskClient, Invoice]:
    account = make_account(session)
    user = make_user(session, account=account)
    invoice = make_invoice(session, account, (4200,))
    return account, user, invoice  # type: ignore[return-value]


def test_a_ticked_card_is_saved_and_listed(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    account, user, invoice = _setup(session)
    client = stripe_app.test_client()
    login_as(client, user)
    status = _pay_with_new_card(client, localstripe, invoice, SUCCESS, save=True)
    assert 'data-status="succeeded"' in client.get(status).get_data(as_text=True)
    assert "ending in 4242" in client.get("/payment-methods").get_data(as_text=True)
    card = session.scalar(select(PaymentMethod).where(PaymentMethod.account_id == account.id))
    assert card is not None and card.detached_at is None and card.is_default
    at_stripe = gateway_for(proxy.url).list_payment_methods(account.stripe_customer_id or "")
    assert [c.id for c in at_stripe] == [card.stripe_payment_method_id]
    # Next time it is offered for one tap.
    second = make_invoice(session, account, (100,))
    assert "ending in 4242" in client.get(f"/invoices/{second.number}/pay").get_data(as_text=True)


def test_an_unticked_card_pays_once_and_is_gone_afterwards(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    account, user, invoice = _setup(session)
    client = stripe_app.test_client()
    login_as(client, user)
    status = _pay_with_new_card(client, localstripe, invoice, SUCCESS, save=False)
    assert 'data-status="succeeded"' in client.get(status).get_data(as_text=True)
    session.expire_all()
    assert invoice.status == InvoiceStatus.PAID
    payment = session.scalar(select(Payment).where(Payment.account_id == account.id))
    assert payment is not None and payment.amount_minor == 4200
    assert payment.method_description.endswith("4242")  # the receipt still names the card
    methods_page = client.get("/payment-methods").get_data(as_text=True)
    assert "ending in 4242" not in methods_page and "No saved cards yet" in methods_page
    card = session.scalar(select(PaymentMethod).where(PaymentMethod.account_id == account.id))
    assert card is not None and card.detached_at is not None and not card.is_default
    gw = gateway_for(proxy.url)
    assert gw.list_payment_methods(account.stripe_customer_id or "") == []
    assert proxy.count("POST", f"/v1/payment_methods/{card.stripe_payment_method_id}/detach") == 1
    # It cannot be used again, not even by its id.
    second = make_invoice(session, account, (100,))
    assert "ending in 4242" not in client.get(f"/invoices/{second.number}/pay").get_data(
        as_text=True
    )
    again = client.post(f"/invoices/{second.number}/pay", data={"payment_method": card.public_id})
    assert again.status_code == 404


def test_an_unticked_3ds_card_stays_attached_until_the_payment_is_confirmed(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    account, user, invoice = _setup(session)
    client = stripe_app.test_client()
    login_as(client, user)
    status = _pay_with_new_card(client, localstripe, invoice, THREE_DS, save=False)
    assert 'data-status="requires_action"' in client.get(status).get_data(as_text=True)
    gw = gateway_for(proxy.url)
    card = session.scalar(select(PaymentMethod).where(PaymentMethod.account_id == account.id))
    assert card is not None and card.detached_at is not None  # never listed...
    assert "ending in 3184" not in client.get("/payment-methods").get_data(as_text=True)
    # ...but still attached at Stripe: the payment waiting for 3-D Secure needs it.
    assert [c.id for c in gw.list_payment_methods(account.stripe_customer_id or "")] == [
        card.stripe_payment_method_id
    ]
    attempt = session.scalar(select(PaymentAttempt).where(PaymentAttempt.account_id == account.id))
    assert attempt is not None and attempt.stripe_payment_intent_id
    secret = gw.retrieve_payment_intent(attempt.stripe_payment_intent_id).client_secret
    requests.post(
        f"{localstripe}/v1/payment_intents/{attempt.stripe_payment_intent_id}/_authenticate",
        params={"success": "true"},
        json={"key": "pk_test_portal", "client_secret": secret},
        timeout=10,
    ).raise_for_status()
    refreshed = client.post(f"/pay/attempts/{attempt.public_id}/refresh")
    assert 'data-status="succeeded"' in client.get(refreshed.headers["Location"]).get_data(
        as_text=True
    )
    session.expire_all()
    assert invoice.status == InvoiceStatus.PAID
    assert gw.list_payment_methods(account.stripe_customer_id or "") == []


def test_a_declined_unticked_card_is_detached_too(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    from tests.payments.conftest import DECLINE

    account, user, invoice = _setup(session)
    client = stripe_app.test_client()
    login_as(client, user)
    status = _pay_with_new_card(client, localstripe, invoice, DECLINE, save=False)
    assert 'data-status="failed"' in client.get(status).get_data(as_text=True)
    session.expire_all()
    assert invoice.status == InvoiceStatus.OPEN
    gw = gateway_for(proxy.url)
    assert gw.list_payment_methods(account.stripe_customer_id or "") == []


def test_not_saving_wins_over_a_webhook_that_saved_the_card_first(session: Session) -> None:
    """setup_intent.succeeded / payment_method.attached may arrive before or after the POST."""
    account = make_account(session)
    account.stripe_customer_id = "cus_race"
    card = Card("pm_race", "cus_race", "visa", "4242", 12, 2031)
    early = services.save_card(session, account, card)  # the webhook, first
    assert early.is_default and early.detached_at is None
    services.save_card(session, account, card, keep=False)  # the customer's "this payment only"
    services.save_card(session, account, card)  # a late webhook
    assert early.detached_at is not None and not early.is_default
    assert services.active_cards(session, account) == []
