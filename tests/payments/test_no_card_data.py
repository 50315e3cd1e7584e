"""No card number, CVC or client secret in our database, logs or form fields."""

from __future__ import annotations

import logging
import re

import pytest
import requests
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.db import Base
from portal.payments.models import PaymentAttempt
from tests.conftest import login_as
from tests.factories import make_account, make_invoice, make_user
from tests.payments.conftest import THREE_DS, confirm_setup, gateway_for
from tests.payments.fault_proxy import FaultProxy

CVC = "123"


def test_a_full_payment_leaves_no_card_data_or_secret_behind(
    stripe_app: Flask,
    session: Session,
    proxy: FaultProxy,
    localstripe: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    account = make_account(session)
    user = make_user(session, account=account)
    invoice = make_invoice(session, account, (4200,))
    client = stripe_app.test_client()
    login_as(client, user)
    pages = [client.get(f"/invoices/{invoice.number}/pay").get_data(as_text=True)]
    # A new card that needs 3-D Secure, through a SetupIntent, then the payment.
    setup_secret = client.post("/payment-methods/setup").json["client_secret"]
    setup_id = confirm_setup(localstripe, setup_secret, THREE_DS)
    response = client.post(f"/invoices/{invoice.number}/pay", data={"setup_intent": setup_id})
    status_page = client.get(response.headers["Location"]).get_data(as_text=True)
    pages.append(status_page)
    attempt = session.scalar(select(PaymentAttempt).where(PaymentAttempt.account_id == account.id))
    pay_secret = (
        gateway_for(proxy.url)
        .retrieve_payment_intent(attempt.stripe_payment_intent_id)
        .client_secret
    )
    requests.post(
        f"{localstripe}/v1/payment_intents/{attempt.stripe_payment_intent_id}/_authenticate",
        params={"success": "true"},
        json={"key": "pk_test_portal", "client_secret": pay_secret},
        timeout=10,
    ).raise_for_status()
    done = client.post(f"/pay/attempts/{attempt.public_id}/refresh")
    pages.append(client.get(done.headers["Location"]).get_data(as_text=True))
    pages.append(client.get("/payment-methods").get_data(as_text=True))
    assert 'data-status="succeeded"' in pages[-2]

    secrets = [setup_secret, pay_secret, "_secret_"]
    dump = []
    for table in Base.metadata.sorted_tables:
        for row in session.execute(select(table)).all():
            dump.append(" ".join(str(value) for value in row))
    everything = "\n".join(dump)
    assert THREE_DS not in everything and THREE_DS[-8:] not in everything
    for secret in secrets:
        assert secret not in everything
        assert secret not in caplog.text
    assert THREE_DS not in caplog.text
    for page in pages:
        for field in re.findall(r"<input[^>]*>", page):
            assert "_secret_" not in field and THREE_DS not in field
        assert 'name="amount' not in page  # the browser never sends an amount
