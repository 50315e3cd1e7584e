"""No input, however malformed, produces a 500: the requests that once did, and a fuzzer that
walks every route of app.url_map with hostile values (as a customer and anonymously)."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from portal.accounts.models import Account, User
from portal.billing import services as billing
from portal.billing.models import Invoice
from portal.billing.money import Money
from tests.conftest import login_as
from tests.factories import make_account, make_invoice, make_user

# Words, not a bare status: every refusal tells the person what to do.
_WORDS = re.compile(r"[A-Za-z]{3,}(?:\s+[A-Za-z]{2,}){2,}")


@dataclass
class Customer:
    user: User
    account: Account
    invoice: Invoice
    payment_id: str


def _customer(session: Session) -> Customer:
    account = make_account(session, name="Fuzz Co")
    user = make_user(session, account=account)
    invoice = make_invoice(session, account, amounts=(5000,))
    payment = billing.record_payment(
        session, account, Money(1000, "USD"), [], received_at=datetime.now(UTC)
    )
    session.commit()
    return Customer(user, account, invoice, payment.public_id)


@pytest.fixture()
def customer(session: Session) -> Customer:
    return _customer(session)


def _assert_refused_with_words(response, what: str) -> None:  # type: ignore[no-untyped-def]
    assert 400 <= response.status_code < 500, f"{what}: {response.status_code}"
    body = response.get_data(as_text=True)
    assert "Traceback" not in body, what
    text = re.sub(r"<[^>]+>", " ", body)
    assert _WORDS.search(text), f"{what}: no words in the answer"


def _file(name: str = "x.txt") -> tuple[io.BytesIO, str]:
    return (io.BytesIO(b"not text"), name)


def test_each_request_that_once_answered_500_is_refused_with_words(
    client: FlaskClient, session: Session, customer: Customer
) -> None:
    anonymous = client.application.test_client()
    # A file where an email address is expected, before anyone is signed in.
    response = anonymous.post("/login", data={"email": _file()}, content_type="multipart/form-data")
    _assert_refused_with_words(response, "file as the login email")

    login_as(client, customer.user)
    before = customer.account.name
    for field in ("name", "billing_email", "address_line1", "city"):
        response = client.post(
            "/account",
            data={"name": "A", "billing_email": "a@example.com", "country": "US", field: _file()},
            content_type="multipart/form-data",
        )
        _assert_refused_with_words(response, f"file as the account's {field}")
    session.refresh(customer.account)
    assert customer.account.name == before

    # A blank year is no year: the whole list.
    assert client.get("/invoices?year=%20").status_code == 200
    # The far end of time is a real position in the list (everything is older).
    assert client.get("/invoices?after=9999-12-31.1").status_code == 200
    for path in (
        "/invoices?year=%C2%B2%C2%B2%C2%B2%C2%B2",
        "/invoices?year=%D9%A2%D9%A0%D9%A2%D9%A6",
        "/invoices?after=2026-01-01.99999999999999999999999",
        "/invoices?after=2026-01-01.-99999999999999999999999",
        "/payments?after=2026-01-01T00:00:00%2B00:00~99999999999999999999999",
        "/payments?after=9999-12-31T23:59:59-23:59~1",
        "/payments?after=0001-01-01T00:00:00%2B23:59~1",
        "/invoices/export?year=%C2%B2%C2%B2%C2%B2%C2%B2",
        "/invoices/export?year=%D9%A2%D9%A0%D9%A2%D9%A6",
        "/invoices/export?year=%20",
    ):
        response = client.get(path)
        if response.status_code == 200:
            # A broken page link is not an error page: the first page, with a note saying so.
            assert "page link is broken" in response.get_data(as_text=True), path
            continue
        _assert_refused_with_words(response, path)
