"""The customer dashboard, read from the demo data."""

from __future__ import annotations

from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.accounts.models import User
from portal.clock import FrozenClock
from portal.demo import seed_demo
from tests.conftest import login_as

SELLER = {"name": "Seller Ltd.", "address": "1 Street", "tax_id": "X1", "email": "s@example.com"}


def _demo_user(session: Session, email: str) -> User:
    seed_demo(session, SELLER)
    user = session.scalar(select(User).where(User.email == email))
    assert user is not None
    return user


def test_dashboard_shows_balance_overdue_and_open_invoices(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    login_as(client, _demo_user(session, "ada@example.com"))
    response = client.get("/")
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert "Ada Lovelace Studio" in body
    assert "$150.00" in body  # balance: the overdue and the not-yet-due invoice
    assert "$75.00" in body  # overdue
    assert "ALS-0011" in body and "ALS-0012" in body
    assert "Team" in body
    assert response.headers["Cache-Control"] == "no-store"


def test_dashboard_formats_money_in_the_account_locale(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    login_as(client, _demo_user(session, "kenji@example.com"))
    body = client.get("/").get_data(as_text=True)
    assert "￥21,560" in body or "¥21,560" in body  # JPY has no decimals


def test_dashboard_of_a_german_account_uses_german_formatting(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    login_as(client, _demo_user(session, "grace@example.com"))
    body = client.get("/").get_data(as_text=True)
    assert "931,78\xa0€" in body
