"""Paying an invoice through the routes, against localstripe (through the fault proxy)."""

from __future__ import annotations

from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.billing.models import InvoiceStatus, LedgerEntry
from portal.notifications.models import OutboxEmail
from portal.payments.models import Payment, PaymentAttempt, PaymentAttemptItem
from tests.conftest import login_as
from tests.payments.conftest import DECLINE, THREE_DS, gateway_for, seed_payer
from tests.payments.fault_proxy import FaultProxy, on


def _pay(client, invoice, card):  # type: ignore[no-untyped-def]
    return client.post(f"/invoices/{invoice.number}/pay", data={"payment_method": card.public_id})


def test_pay_with_saved_card_records_one_payment_and_a_receipt(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    client = stripe_app.test_client()
    account, user, invoice, card = seed_payer(session, gateway_for(proxy.url), localstripe)
    login_as(client, user)
    page = client.get(f"/invoices/{invoice.number}/pay")
    assert page.status_code == 200
    assert "$50.00" in page.get_data(as_text=True)

    response = _pay(client, invoice, card)
    assert response.status_code == 303
    status = client.get(response.headers["Location"])
    assert 'data-status="succeeded"' in status.get_data(as_text=True)

    session.expire_all()
    assert invoice.status == InvoiceStatus.PAID
    payments = session.scalars(select(Payment).where(Payment.account_id == account.id)).all()
    assert len(payments) == 1 and payments[0].amount_minor == 5000
    # "Payment received" links to its receipt.
    assert f'href="/payments/{payments[0].public_id}"' in status.get_data(as_text=True)
    assert payments[0].stripe_payment_intent_id.startswith("pi_")
    assert (
        session.scalar(
            select(func.count())
            .select_from(LedgerEntry)
            .where(LedgerEntry.account_id == account.id, LedgerEntry.kind == "payment")
        )
        == 1
    )
    receipt = session.scalar(select(OutboxEmail).where(OutboxEmail.account_id == account.id))
    assert receipt is not None and receipt.template == "receipt"
    assert invoice.number in receipt.text_body and "$50.00" in receipt.text_body
    # The attempt ended: nothing is live for the invoice any more.
    assert not session.scalar(
        select(func.count())
        .select_from(PaymentAttemptItem)
        .where(PaymentAttemptItem.invoice_id == invoice.id, PaymentAttemptItem.is_live)
    )
    assert proxy.count("POST", "/confirm") == 1


def test_decline_shows_the_reason_and_leaves_the_invoice_open(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    client = stripe_app.test_client()
    account, user, invoice, card = seed_payer(
        session, gateway_for(proxy.url), localstripe, number=DECLINE
    )
    login_as(client, user)
    response = _pay(client, invoice, card)
    body = client.get(response.headers["Location"]).get_data(as_text=True)
    assert 'data-status="failed"' in body
    assert "Your card was declined" in body
    assert "still open" in body
    session.expire_all()
    assert invoice.status == InvoiceStatus.OPEN
    assert (
        session.scalar(
            select(func.count()).select_from(Payment).where(Payment.account_id == account.id)
        )
        == 0
    )
    attempt = session.scalar(select(PaymentAttempt).where(PaymentAttempt.account_id == account.id))
    assert attempt.status == "failed" and attempt.failure_code == "card_declined"
    # A new attempt is allowed after a decline.
    page = client.get(f"/invoices/{invoice.number}/pay")
    assert page.status_code == 200


def test_three_d_secure_waits_for_the_customer_then_succeeds(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    import requests

    client = stripe_app.test_client()
    account, user, invoice, card = seed_payer(
        session, gateway_for(proxy.url), localstripe, number=THREE_DS
    )
    login_as(client, user)
    response = _pay(client, invoice, card)
    page = client.get(response.headers["Location"])
    body = page.get_data(as_text=True)
    assert 'data-status="requires_action"' in body
    attempt = session.scalar(select(PaymentAttempt).where(PaymentAttempt.account_id == account.id))
    # What Stripe.js does after the bank's challenge: authenticate with the client secret.
    secret = (
        gateway_for(proxy.url)
        .retrieve_payment_intent(attempt.stripe_payment_intent_id)
        .client_secret
    )
    assert secret in body  # handed to Stripe.js on this page only
    requests.post(
        f"{localstripe}/v1/payment_intents/{attempt.stripe_payment_intent_id}/_authenticate",
        params={"success": "true"},
        json={"key": "pk_test_portal", "client_secret": secret},
        timeout=10,
    ).raise_for_status()
    refreshed = client.post(f"/pay/attempts/{attempt.public_id}/refresh")
    assert refreshed.status_code == 303
    assert 'data-status="succeeded"' in client.get(refreshed.headers["Location"]).get_data(
        as_text=True
    )
    session.expire_all()
    assert invoice.status == InvoiceStatus.PAID


def test_three_d_secure_failure_leaves_the_invoice_open(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    import requests

    client = stripe_app.test_client()
    account, user, invoice, card = seed_payer(
        session, gateway_for(proxy.url), localstripe, number=THREE_DS
    )
    login_as(client, user)
    _pay(client, invoice, card)
    attempt = session.scalar(select(PaymentAttempt).where(PaymentAttempt.account_id == account.id))
    secret = (
        gateway_for(proxy.url)
        .retrieve_payment_intent(attempt.stripe_payment_intent_id)
        .client_secret
    )
    requests.post(
        f"{localstripe}/v1/payment_intents/{attempt.stripe_payment_intent_id}/_authenticate",
        params={"success": "false"},
        json={"key": "pk_test_portal", "client_secret": secret},
        timeout=10,
    ).raise_for_status()
    refreshed = client.post(f"/pay/attempts/{attempt.public_id}/refresh")
    body = client.get(refreshed.headers["Location"]).get_data(as_text=True)
    assert 'data-status="failed"' in body and "3-D Secure" in body
    session.expire_all()
    assert invoice.status == InvoiceStatus.OPEN


def test_stripe_unreachable_is_processing_never_failed(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    client = stripe_app.test_client()
    account, user, invoice, card = seed_payer(session, gateway_for(proxy.url), localstripe)
    login_as(client, user)
    proxy.inject("500", on("POST", "/v1/payment_intents"), times=10)
    response = _pay(client, invoice, card)
    assert response.status_code == 303
    body = client.get(response.headers["Location"]).get_data(as_text=True)
    assert 'data-status="unknown"' in body
    assert "could not reach the payment provider" in body
    attempt = session.scalar(select(PaymentAttempt).where(PaymentAttempt.account_id == account.id))
    assert attempt.status == "unknown"
    session.expire_all()
    assert invoice.status == InvoiceStatus.OPEN
