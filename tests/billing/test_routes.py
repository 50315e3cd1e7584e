"""The customer's billing pages: dashboard, invoice list, invoice page, statement (demo data)."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from portal.accounts.models import Account, User
from portal.billing import services
from portal.billing.models import Invoice
from portal.billing.money import Money
from portal.clock import FrozenClock
from portal.demo import seed_demo
from portal.extensions import db
from tests.conftest import login_as
from tests.factories import make_account, make_invoice, make_user

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


# --- The invoice list ------------------------------------------------------------------------


def _ada(client: FlaskClient, session: Session) -> Account:
    user = _demo_user(session, "ada@example.com")
    login_as(client, user)
    account = session.scalar(select(Account).where(Account.invoice_prefix == "ALS"))
    assert account is not None
    return account


def _numbers(body: str) -> list[str]:
    return re.findall(r'href="/invoices/([A-Z0-9-]+)"', body)


@contextmanager
def count_statements() -> Iterator[list[str]]:
    """Every SQL statement the app sends while the block runs."""
    statements: list[str] = []
    engine = db.engine

    def before(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if not statement.lstrip().upper().startswith(("SAVEPOINT", "RELEASE", "ROLLBACK")):
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", before)


def test_invoice_list_is_newest_first_with_cards_and_badges(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    _ada(client, session)
    response = client.get("/invoices")
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    numbers = _numbers(body)
    assert numbers == [f"ALS-{n:04d}" for n in range(12, 0, -1)]
    assert "overdue</strong>" in body  # ALS-0011 says how long it is overdue
    assert "badge--overdue" in body and "badge--paid" in body and "badge--open" in body
    assert response.headers["Vary"] == "HX-Request" or "HX-Request" in response.headers["Vary"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status=overdue", ["ALS-0011"]),
        ("status=open", ["ALS-0012", "ALS-0011"]),
        ("q=als-0007", ["ALS-0007"]),
        ("q=0012", ["ALS-0012"]),
        ("status=void", []),
    ],
)
def test_invoice_list_filters(
    client: FlaskClient, session: Session, clock: FrozenClock, query: str, expected: list[str]
) -> None:
    _ada(client, session)
    response = client.get(f"/invoices?{query}")
    assert response.status_code == 200
    assert _numbers(response.get_data(as_text=True)) == expected


def test_invoice_list_filters_by_year(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    account = _ada(client, session)
    years = {
        inv.issue_date.year
        for inv in session.scalars(select(Invoice).where(Invoice.account_id == account.id))
    }
    for year in years:
        body = client.get(f"/invoices?year={year}").get_data(as_text=True)
        shown = _numbers(body)
        assert shown
        stored = {
            inv.number: inv.issue_date.year
            for inv in session.scalars(select(Invoice).where(Invoice.number.in_(shown)))
        }
        assert set(stored.values()) == {year}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("status=unpaid", "Choose open, overdue, paid or void."),
        ("year=20x6", "Choose a year like 2026."),
        ("q=%3Cscript%3E", "Invoice numbers have only letters"),
        ("q=" + "A" * 60, "at most 40 characters"),
    ],
)
def test_bad_filters_get_a_clear_message(
    client: FlaskClient, session: Session, clock: FrozenClock, query: str, message: str
) -> None:
    _ada(client, session)
    response = client.get(f"/invoices?{query}")
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert message in body
    assert "<script>" not in body


def test_a_broken_page_link_falls_back_to_the_newest(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    _ada(client, session)
    response = client.get("/invoices?after=nonsense")
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert "That page link is broken" in body
    assert _numbers(body)[0] == "ALS-0012"


def test_keyset_pagination_walks_every_invoice_once(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    account = make_account(session)
    user = make_user(session, account=account)
    for offset in range(45):
        make_invoice(
            session,
            account,
            [100 + offset],
            issue_date=date(2026, 1, 1) + timedelta(days=offset // 3),
        )
    login_as(client, user)
    seen: list[str] = []
    url = "/invoices"
    pages = 0
    while url:
        body = client.get(url).get_data(as_text=True)
        seen += _numbers(body)
        found = re.search(r'<a class="button button--secondary button--block" href="([^"]+)"', body)
        url = found.group(1).replace("&amp;", "&") if found else ""
        pages += 1
    assert pages == 3
    assert len(seen) == 45 and len(set(seen)) == 45
    expected = sorted(
        session.scalars(select(Invoice).where(Invoice.account_id == account.id)),
        key=lambda inv: (inv.issue_date, inv.id),
        reverse=True,
    )
    assert seen == [inv.number for inv in expected]


def test_htmx_gets_only_the_rows_and_no_js_gets_the_page(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    _ada(client, session)
    partial = client.get("/invoices?status=open", headers={"HX-Request": "true"})
    body = partial.get_data(as_text=True)
    assert "<html" not in body and 'id="invoice-list"' in body
    assert _numbers(body) == ["ALS-0012", "ALS-0011"]
    full = client.get("/invoices?status=open").get_data(as_text=True)
    assert "<html" in full and 'id="invoice-results"' in full
    boosted = client.get("/invoices", headers={"HX-Request": "true", "HX-Boosted": "true"})
    assert "<html" in boosted.get_data(as_text=True)


def _statements_for(client: FlaskClient, url: str) -> int:
    with count_statements() as statements:
        assert client.get(url).status_code == 200
    return len(statements)


@pytest.mark.parametrize("url", ["/invoices", "/statements?period=this_year", "/payments"])
def test_pages_send_the_same_few_statements_for_10_and_200_invoices(
    client: FlaskClient, session: Session, clock: FrozenClock, url: str
) -> None:
    account = make_account(session)
    user = make_user(session, account=account)
    login_as(client, user)
    counts = []
    for target in (10, 200):
        existing = session.scalar(
            select(db.func.count(Invoice.id)).where(Invoice.account_id == account.id)
        )
        for n in range(existing, target):
            invoice = make_invoice(
                session, account, [1000 + n], issue_date=date(2026, 1, 1) + timedelta(days=n % 300)
            )
            if n % 2:
                services.record_payment(
                    session,
                    account,
                    invoice.total,
                    [(invoice, invoice.total)],
                    received_at=datetime(2026, 11, 1, tzinfo=UTC) + timedelta(minutes=n),
                    method_description="Visa •••• 4242",
                )
        session.flush()
        counts.append(_statements_for(client, url))
    assert counts[0] == counts[1], counts
    assert counts[1] <= 8, counts


# --- One invoice -----------------------------------------------------------------------------


def test_invoice_page_shows_parties_lines_totals_and_what_is_due(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    _ada(client, session)
    response = client.get("/invoices/ALS-0011")
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert "Invoice ALS-0011" in body
    assert "Northwind Cloud Ltd." in body or "Seller Ltd." in body  # the frozen seller
    assert "Ada Lovelace Studio" in body and "12 Analytical Row" in body  # the frozen buyer
    assert "Team plan (5 seats)" in body
    assert "$15.00" in body and "$75.00" in body  # unit price and amount
    assert "Amount due" in body and "overdue</strong>" in body
    assert "Thank you for your business" in body


def test_invoice_page_lists_payments_and_credit_notes(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    _ada(client, session)
    body = client.get("/invoices/ALS-0006").get_data(as_text=True)
    assert "Credit note ALS-CN-0001" in body
    assert "Credited" in body and "Paid" in body
    assert 'href="/payments/' in body  # the receipt of the payment applied


def test_invoice_page_with_discount_and_two_tax_rates(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    account = make_account(session, currency="EUR", locale="de_DE")
    user = make_user(session, account=account)
    invoice = services.create_draft_invoice(
        session,
        account,
        [
            services.LineInput("Platform", 10000, tax_rate_bp=1900, tax_name="USt. 19%"),
            services.LineInput("Books", 2000, tax_rate_bp=700, tax_name="USt. 7%"),
            services.LineInput("Launch discount", 1000, kind=services.LineKind.DISCOUNT),
        ],
    )
    services.finalize_invoice(session, invoice, seller={"name": "S", "address": "A\nB"})
    login_as(client, user)
    body = client.get(f"/invoices/{invoice.number}").get_data(as_text=True)
    assert "USt. 19%" in body and "19,00\xa0€" in body  # 19 % of 100 €
    assert "USt. 7%" in body and "1,40\xa0€" in body
    assert "Launch discount" in body and "Discounts" in body
    assert "130,40\xa0€" in body  # 100 + 20 - 10 + 19 + 1.40


def test_actions_appear_only_when_their_pages_exist(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    _ada(client, session)
    body = client.get("/invoices/ALS-0011").get_data(as_text=True)
    views = client.application.view_functions
    assert "/invoices/ALS-0011/pay" in body
    assert "/invoices/ALS-0002/pay" not in client.get("/invoices/ALS-0002").get_data(as_text=True)
    assert ("/invoices/ALS-0011/pdf" in body) == ("billing.invoice_pdf" in views)
    assert ("/disputes/new" in body) == ("disputes.new" in views)


@pytest.mark.parametrize("number", ["ALS-9999", "x" * 300, "HCG-0001", "%00"])
def test_unknown_and_other_accounts_invoices_are_404(
    client: FlaskClient, session: Session, clock: FrozenClock, number: str
) -> None:
    _ada(client, session)
    assert client.get(f"/invoices/{number}").status_code == 404


def test_a_draft_is_not_shown(client: FlaskClient, session: Session, clock: FrozenClock) -> None:
    account = make_account(session)
    user = make_user(session, account=account)
    draft = make_invoice(session, account, finalize=False)
    login_as(client, user)
    assert draft.number is None
    assert client.get("/invoices").get_data(as_text=True).count("item-card__link") == 0
    assert client.get(f"/invoices/{draft.public_id}").status_code == 404


# --- Statements ------------------------------------------------------------------------------


def test_statement_shows_opening_entries_running_balance_and_aging(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    _ada(client, session)
    response = client.get("/statements?period=this_year")
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert "Opening balance" in body and "Closing balance" in body
    assert 'data-testid="closing">$150.00<' in body
    assert "Invoice ALS-0012" in body and "Payment Visa" in body
    assert "Credit note ALS-CN-0001" in body
    assert "1–30 days" in body and "Over 90 days" in body


def test_custom_statement_periods_chain(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    _ada(client, session)
    first = client.get("/statements?start=2026-01-01&end=2026-06-30").get_data(as_text=True)
    second = client.get("/statements?start=2026-07-01&end=2026-11-21").get_data(as_text=True)
    closing = re.search(r'data-testid="closing">([^<]+)<', first)
    opening = re.search(r'data-testid="opening">([^<]+)<', second)
    assert closing and opening and closing.group(1) == opening.group(1)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("start=2026-02-30&end=2026-03-01", "is not a date"),
        ("start=yesterday&end=2026-03-01", "is not a date"),
        ("start=2026-05-01&end=2026-04-01", "end date is before the start date"),
        ("start=2001-01-01&end=2026-01-01", "too long"),
        ("start=2026-01-01", "last day of the statement"),
        ("period=forever", "choose one of the periods"),
        ("start=1999-01-01&end=1999-02-01", "at the earliest"),
        ("start=2030-01-01&end=2030-02-01", "in the future"),
        ("start=99999-01-01&end=2026-01-01", "is not a date"),
    ],
)
def test_bad_statement_periods_get_a_clear_message(
    client: FlaskClient, session: Session, clock: FrozenClock, query: str, message: str
) -> None:
    _ada(client, session)
    response = client.get(f"/statements?{query}")
    assert response.status_code == 422
    assert message in response.get_data(as_text=True)


def test_statement_csv_download(client: FlaskClient, session: Session, clock: FrozenClock) -> None:
    _ada(client, session)
    response = client.get("/statements?period=this_year&format=csv")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"] == (
        'attachment; filename="statement-ALS-2026-01-01-to-2026-11-21.csv"'
    )
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True).lstrip("\ufeff"))))
    assert rows[0][:3] == ["Date", "Type", "Description"]
    assert rows[1][2] == "Opening balance" and rows[-1][2] == "Closing balance"
    assert rows[-1][5] == "150.00"
    running = Money.from_decimal(rows[1][5], "USD")
    for row in rows[2:-1]:
        change = Money.from_decimal(row[3] or "0", "USD") - Money.from_decimal(row[4] or "0", "USD")
        running = running + change
        assert Money.from_decimal(row[5], "USD") == running


def test_statement_csv_filename_ignores_the_request(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    _ada(client, session)
    response = client.get('/statements?format=csv&period=this_month&filename=../../evil"')
    assert "evil" not in response.headers["Content-Disposition"]


def test_unknown_statement_format_is_404(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    _ada(client, session)
    assert client.get("/statements?format=xlsx").status_code == 404


def test_dashboard_links_to_the_overdue_invoice(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    _ada(client, session)
    body = client.get("/").get_data(as_text=True)
    assert 'href="/invoices/ALS-0011"' in body
    assert "View invoice ALS-0011" in body
    assert (
        'href="/invoices"' in body and 'href="/statements"' in body and 'href="/payments"' in body
    )


def test_dashboard_sends_several_overdue_invoices_to_the_filtered_list(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    account = make_account(session, payment_terms_days=5)
    user = make_user(session, account=account)
    for _ in range(2):
        make_invoice(session, account, [1000], issue_date=date(2026, 10, 1))
    login_as(client, user)
    body = client.get("/").get_data(as_text=True)
    assert 'href="/invoices?status=overdue"' in body


def test_the_invoice_page_lays_the_buyer_address_out_as_its_country_writes_it(
    client: FlaskClient, session: Session
) -> None:
    account = make_account(
        session,
        currency="EUR",
        address_line1="Unter den Linden 5",
        city="Berlin",
        postal_code="10117",
        country="DE",
    )
    invoice = make_invoice(session, account)
    login_as(client, make_user(session, account=account))
    body = client.get(f"/invoices/{invoice.number}").get_data(as_text=True)
    assert "10117 Berlin" in body
    assert "Germany" in body
    assert ">DE<" not in body


def test_invoice_list_reads_years_and_payable_count_in_one_statement(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    # NOTE: performance work of issue 9: the years and the pay-several count ride in one
    # statement beside the page's own (each statement is a round trip on PostgreSQL).
    _ada(client, session)
    with count_statements() as statements:
        assert client.get("/invoices").status_code == 200
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    counts = [s for s in selects if "count(" in s.lower()]
    assert len(counts) == 1 and "issue_date" in counts[0], selects
    assert len(selects) == 3, selects  # the signed-in user, the page of invoices, the header


def test_dashboard_sends_three_selects(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    # NOTE: performance work of issue 9: the signed-in user, the sums (balance, overdue, open
    # disputes) with the five open invoices joined to them, and the subscriptions; nothing per
    # row.
    _ada(client, session)
    with count_statements() as statements:
        assert client.get("/").status_code == 200
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 3, selects
    assert "disputes" in selects[1], selects


def test_the_invoice_page_reads_its_lines_with_the_invoice(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    # NOTE: performance work of issue 9: the lines come joined to the invoice (no second
    # statement for them), still in their order and each once.
    account = make_account(session)
    login_as(client, make_user(session, account=account))
    invoice = make_invoice(session, account, [300, 100, 200])
    with count_statements() as statements:
        body = client.get(f"/invoices/{invoice.number}").get_data(as_text=True)
    selects = [" ".join(s.split()) for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert not [s for s in selects if s.startswith("SELECT invoice_lines.")], selects
    # the signed-in user, the invoice with its lines, its payments, credit notes and retries
    assert len(selects) == 3, selects
    descriptions = [line.description for line in invoice.lines]
    assert len(descriptions) == 3
    positions = [body.index(text) for text in descriptions]
    assert positions == sorted(positions)
    assert all(body.count(text) == body.count(descriptions[0]) for text in descriptions)


@pytest.mark.parametrize("first_of_month", [False, True])
def test_the_default_statement_decides_its_period_in_the_statement_itself(
    client: FlaskClient, session: Session, clock: FrozenClock, first_of_month: bool
) -> None:
    # NOTE: performance work of issue 9: "this month, or last month while this month has no
    # entries" is decided inside the statement's own query (it was a query of its own first):
    # the signed-in user, the statement, the aging, whichever period it shows.
    account = make_account(session)
    make_invoice(session, account, [1000], finalized_at=datetime(2026, 11, 20, 12, tzinfo=UTC))
    clock.set(
        datetime(2026, 12 if first_of_month else 11, 1 if first_of_month else 21, 9, tzinfo=UTC)
    )
    login_as(client, make_user(session, account=account))
    with count_statements() as statements:
        response = client.get("/statements")
    assert response.status_code == 200
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 3, selects
    body = response.get_data(as_text=True)
    assert ('data-testid="period-fallback"' in body) is first_of_month
    shown = "Nov 1, 2026 – Nov 30, 2026" if first_of_month else "Nov 1, 2026 – Nov 21, 2026"
    assert shown in body and "$10.00" in body


def test_the_statement_reads_its_opening_balance_with_its_entries(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    # NOTE: performance work of issue 9: the opening balance and the period's entries come in
    # one statement: the signed-in user, the statement, the aging.
    _ada(client, session)
    with count_statements() as statements:
        assert client.get("/statements?period=this_year").status_code == 200
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 3, selects
