"""The receipt email: branded, with the receipt number and links (from BASE_URL) to the receipt
and its PDF, in an HTML and a plain-text part, renderable where there is no request."""

from __future__ import annotations

from flask import Flask
from sqlalchemy.orm import Session

from portal.billing import services
from portal.billing.money import Money
from portal.clock import FrozenClock
from portal.mail import queue_email
from portal.notifications.delivery import build_message
from tests.factories import make_account, make_invoice


def test_receipt_email_has_brand_number_and_links_in_both_parts(
    app: Flask, session: Session, clock: FrozenClock
) -> None:
    account = make_account(session, name="Ada <Lovelace> Studio")
    invoice = make_invoice(session, account, [7500])
    payment = services.record_payment(
        session,
        account,
        Money(7500, "USD"),
        [(invoice, Money(7500, "USD"))],
        received_at=clock(),
        method_description="Visa ·4242",
    )
    # NOTE: no request context: the reconcile command and the worker queue receipts too.
    email = queue_email(
        session,
        to=account.billing_email,
        subject="Receipt for your payment",
        template="receipt",
        context={"account": account, "payment": payment, "invoices": [invoice]},
        account_id=account.id,
    )
    message = build_message(email, "billing@example.com")
    parts = {
        part.get_content_type(): part.get_content()
        for part in message.walk()
        if not part.is_multipart()
    }
    text, html = parts["text/plain"], parts["text/html"]
    link = f"http://portal.test/payments/{payment.public_id}"
    for body in (text, html):
        assert app.config["BRAND_NAME"] in body
        assert payment.receipt_number and payment.receipt_number in body
        assert link in body and f"{link}/pdf" in body
        assert "$75.00" in body and invoice.number in body
        assert "Questions? Just reply to this email." in body  # emails keep it
    assert f'href="{link}"' in html
    assert "Ada &lt;Lovelace&gt; Studio" in html and "<Lovelace>" not in html
