"""Payment history and receipts, read from the demo data."""

from __future__ import annotations

import re

from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.accounts.models import Account, User
from portal.billing import services
from portal.billing.money import Money
from portal.clock import FrozenClock
from portal.demo import seed_demo
from portal.payments.models import Payment
from tests.conftest import login_as
from tests.factories import make_account, make_invoice, make_user

SELLER = {"name": "Seller Ltd.", "address": "1 Street", "tax_id": "X1", "email": "s@example.com"}


def _sign_in(client: FlaskClient, session: Session, email: str) -> Account:
    seed_demo(session, SELLER)
    user = session.scalar(select(User).where(User.email == email))
    assert user is not None
    login_as(client, user)
    account = user.memberships[0].account
    return account


def test_history_lists_payments_newest_first_with_the_invoices_they_paid(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    _sign_in(client, session, "ada@example.com")
    response = client.get("/payments")
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert "Visa ending in 4242" in body
    paid = re.findall(r"Paid (ALS-\d{4})", body)
    assert paid == [f"ALS-{n:04d}" for n in range(10, 0, -1)]
    assert body.count('href="/payments/') == 10


def test_receipt_shows_amount_method_and_invoice(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    account = _sign_in(client, session, "ada@example.com")
    payment = session.scalars(
        select(Payment).where(Payment.account_id == account.id).order_by(Payment.received_at)
    ).first()
    assert payment is not None
    response = client.get(f"/payments/{payment.public_id}")
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert "Receipt" in body and payment.public_id in body
    assert "$75.00" in body and "Visa ending in 4242" in body
    assert "Invoice ALS-0001" in body


def test_a_payment_kept_as_credit_says_so(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    account = make_account(session)
    user = make_user(session, account=account)
    payment = services.record_payment(session, account, Money(500, "USD"), [], received_at=clock())
    login_as(client, user)
    assert "Kept as credit" in client.get("/payments").get_data(as_text=True)
    assert "kept as credit" in client.get(f"/payments/{payment.public_id}").get_data(as_text=True)


def test_another_accounts_receipt_is_404(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    other = make_account(session)
    invoice = make_invoice(session, other, [900])
    payment = services.record_payment(
        session, other, invoice.total, [(invoice, invoice.total)], received_at=clock()
    )
    _sign_in(client, session, "ada@example.com")
    assert client.get(f"/payments/{payment.public_id}").status_code == 404
    for bad in ("nope", "x" * 100, "%00", "a.b"):
        assert client.get(f"/payments/{bad}").status_code == 404


def test_history_pages_with_load_more(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    account = make_account(session)
    user = make_user(session, account=account)
    for n in range(25):
        services.record_payment(
            session, account, Money(100 + n, "USD"), [], received_at=clock.advance(minutes=1)
        )
    login_as(client, user)
    first = client.get("/payments").get_data(as_text=True)
    found = re.search(r'hx-get="([^"]+)"', first)
    assert found
    more = client.get(found.group(1).replace("&amp;", "&"), headers={"HX-Request": "true"})
    body = more.get_data(as_text=True)
    assert "<html" not in body
    assert first.count('href="/payments/') + body.count('href="/payments/') == 25
    assert client.get("/payments?after=garbage").status_code == 200


def test_empty_history(client: FlaskClient, session: Session, clock: FrozenClock) -> None:
    account = make_account(session)
    login_as(client, make_user(session, account=account))
    assert "No payments yet" in client.get("/payments").get_data(as_text=True)


def test_history_rows_say_refunds_the_invoices_paid_and_the_receipt_number(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    # NOTE: the rows are formatted in portal.payments.rows (performance work of issue 9): the
    # same words and markup the template wrote itself.
    account = make_account(session)
    user = make_user(session, account=account)
    first = make_invoice(session, account, [700])
    second = make_invoice(session, account, [300])
    both = services.record_payment(
        session,
        account,
        Money(1000, "USD"),
        [(first, first.amount_due), (second, second.amount_due)],
        received_at=clock(),
        method_description="Visa ending in 4242",
    )
    refunded = services.record_payment(session, account, Money(200, "USD"), [], received_at=clock())
    refunded.amount_refunded_minor = 200
    partly = services.record_payment(session, account, Money(400, "USD"), [], received_at=clock())
    partly.amount_refunded_minor = 100
    partly.method_description = ""
    session.flush()
    login_as(client, user)
    body = client.get("/payments").get_data(as_text=True)
    numbers = sorted([str(first.number), str(second.number)])
    assert f"<span>Paid {numbers[0]}, {numbers[1]}</span>" in body
    assert '<span class="badge badge--uncollectible">Refunded</span>' in body
    assert '<span class="badge badge--uncollectible">Partly refunded</span>' in body
    assert body.count('<span class="badge badge--succeeded">') == 1
    assert f'href="/payments/{both.public_id}"' in body
    assert '<span class="visually-hidden">Receipt for the payment of </span>' in body
    if both.receipt_number:
        assert (
            f'Receipt {both.receipt_number} <span aria-hidden="true">·</span> Visa ending in 4242'
        ) in body
    assert ">Payment</p>" in body or "</span> Payment</p>" in body
