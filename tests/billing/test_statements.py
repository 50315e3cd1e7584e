"""Statement periods, the statement view model, aging and the CSV (both databases)."""

from __future__ import annotations

import csv
import io
import itertools
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy.orm import Session

from portal.accounts.models import Account
from portal.billing import services
from portal.billing.models import Invoice
from portal.billing.money import Money
from portal.billing.statements import (
    InvalidPeriod,
    Period,
    StatementRow,
    StatementView,
    neutralise_cell,
    parse_period,
    statement_csv,
    statement_view,
)
from tests.factories import make_account, make_invoice

TODAY = date(2026, 11, 21)


# --- Periods (no database) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "start", "end"),
    [
        ("this_month", date(2026, 11, 1), TODAY),
        ("last_month", date(2026, 10, 1), date(2026, 10, 31)),
        ("this_year", date(2026, 1, 1), TODAY),
        (None, date(2026, 11, 1), TODAY),
    ],
)
def test_presets(preset: str | None, start: date, end: date) -> None:
    period = parse_period(TODAY, preset)
    assert (period.start, period.end) == (start, end)


def test_last_month_in_january_is_last_december() -> None:
    period = parse_period(date(2027, 1, 15), "last_month")
    assert (period.start, period.end) == (date(2026, 12, 1), date(2026, 12, 31))


def test_custom_dates_include_the_end_day() -> None:
    period = parse_period(TODAY, None, "2026-02-01", "2026-02-28")
    assert period.preset == "custom" and period.days == 28
    start, end = period.bounds("UTC")
    assert start == datetime(2026, 2, 1, tzinfo=UTC)
    assert end == datetime(2026, 3, 1, tzinfo=UTC)


def test_bounds_follow_the_account_time_zone() -> None:
    start, end = parse_period(TODAY, None, "2026-07-01", "2026-07-01").bounds("America/New_York")
    assert start == datetime(2026, 7, 1, 4, tzinfo=UTC)  # EDT is UTC-4
    assert end == datetime(2026, 7, 2, 4, tzinfo=UTC)


@pytest.mark.parametrize(
    ("start", "end", "field"),
    [
        ("2026-13-01", "2026-12-01", "start"),
        ("2026-01-01", "tomorrow", "end"),
        ("2026-1-1", "2026-02-01", "start"),
        ("2026-05-01", "2026-04-30", "end"),
        ("2020-01-01", "2026-01-01", "start"),
        ("", "2026-01-01", "start"),
        ("2026-01-01", "", "end"),
        ("2027-01-01", "2027-02-01", "start"),
    ],
)
def test_bad_periods_are_refused_with_the_field_named(start: str, end: str, field: str) -> None:
    with pytest.raises(InvalidPeriod) as refused:
        parse_period(TODAY, "custom", start, end)
    assert refused.value.field == field
    assert refused.value.message


def test_exactly_five_years_is_allowed() -> None:
    assert parse_period(TODAY, None, "2021-11-22", "2026-11-21").days == 1826


# --- CSV (no database) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+1+1", "'+1+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tcmd", "'\tcmd"),
        ("\rcmd", "'\rcmd"),
        ("Invoice ALS-0001", "Invoice ALS-0001"),
        ("", ""),
        # A spreadsheet skips leading blanks and control characters before it looks for "=".
        (" =1+2", "' =1+2"),
        ("  +SUM(A1)", "'  +SUM(A1)"),
        ("\u00a0-1+1", "'\u00a0-1+1"),
        ("\n=cmd", "'\n=cmd"),
        ("\uff1dcmd", "'\uff1dcmd"),  # full-width "="
        ("Payment - Visa", "Payment - Visa"),
    ],
)
def test_formula_cells_are_neutralised(raw: str, safe: str) -> None:
    assert neutralise_cell(raw) == safe


def _view(rows: list[StatementRow]) -> StatementView:
    from portal.billing.statements import Aging, AgingBucket

    usd = Money.zero("USD")
    period = Period(date(2026, 1, 1), date(2026, 1, 31), "custom")
    return StatementView(
        "=cmd|' /C calc'!A0",
        "USD",
        period,
        usd,
        rows,
        rows[-1].balance,
        usd,
        usd,
        {},
        Aging(date(2026, 1, 31), [AgingBucket("current", "Current", usd, 0)]),
    )


def test_statement_csv_neutralises_descriptions_but_keeps_numbers() -> None:
    rows = [
        StatementRow(date(2026, 1, 2), "invoice", "=1+2", Money(1234, "USD"), Money(1234, "USD")),
        StatementRow(date(2026, 1, 3), "payment", "@evil", Money(-2000, "USD"), Money(-766, "USD")),
    ]
    parsed = list(csv.reader(io.StringIO(statement_csv(_view(rows)))))
    assert parsed[2][2] == "'=1+2" and parsed[2][3] == "12.34"
    assert parsed[3][2] == "'@evil" and parsed[3][4] == "20.00" and parsed[3][5] == "-7.66"
    for row in parsed:
        for cell in row:
            assert not cell.startswith(("=", "+", "@", "\t", "\r")), row


# --- The statement from the ledger (both databases) ------------------------------------------


def _history(session: Session) -> Account:
    """Invoices, a part payment, a credit note and a refund across three months."""
    account = make_account(session, timezone="America/New_York")
    jan = datetime(2026, 1, 10, 15, tzinfo=UTC)
    first = make_invoice(session, account, [10001, 2999], finalized_at=jan)
    second = make_invoice(session, account, [333], finalized_at=jan + timedelta(days=20))
    payment = services.record_payment(
        session,
        account,
        Money(5000, "USD"),
        [(first, Money(5000, "USD"))],
        received_at=jan + timedelta(days=25),
    )
    services.issue_credit_note(
        session, second, Money(111, "USD"), reason="goodwill", issued_at=jan + timedelta(days=40)
    )
    services.record_refund_in_ledger(
        session, payment, Money(1250, "USD"), refund_id=1, refunded_at=jan + timedelta(days=50)
    )
    make_invoice(session, account, [777], finalized_at=jan + timedelta(days=70))
    return account


def test_closing_of_one_period_is_the_opening_of_the_next(session: Session) -> None:
    account = _history(session)
    months = [(date(2026, m, 1), date(2026, m + 1, 1) - timedelta(days=1)) for m in range(1, 5)]
    views = [statement_view(session, account, Period(a, b, "custom")) for a, b in months]
    assert views[0].opening == Money(0, "USD")
    for before, after in itertools.pairwise(views):
        assert before.closing == after.opening
    whole = statement_view(session, account, Period(date(2026, 1, 1), date(2026, 4, 30), "custom"))
    assert whole.closing == views[-1].closing
    assert len(whole.rows) == sum(len(v.rows) for v in views)


def test_arithmetic_is_exact(session: Session) -> None:
    account = _history(session)
    view = statement_view(session, account, Period(date(2026, 1, 1), date(2026, 4, 30), "custom"))
    # invoices 13000 + 333 + 777, payment -5000, credit -111, refund +1250
    assert view.closing == Money(13000 + 333 + 777 - 5000 - 111 + 1250, "USD")
    assert view.charges == Money(13000 + 333 + 777 + 1250, "USD")
    assert view.credits == Money(5000 + 111, "USD")
    assert view.opening + view.charges - view.credits == view.closing
    running = view.opening
    for row in view.rows:
        running = running + row.amount
        assert row.balance == running
    assert [row.kind for row in view.rows] == [
        "invoice",
        "invoice",
        "payment",
        "credit_note",
        "refund",
        "invoice",
    ]


def test_entries_fall_on_the_local_day(session: Session) -> None:
    account = make_account(session, timezone="America/New_York")
    # 03:00 UTC on 1 March is still 28 February in New York.
    make_invoice(session, account, [500], finalized_at=datetime(2026, 3, 1, 3, tzinfo=UTC))
    feb = statement_view(session, account, Period(date(2026, 2, 1), date(2026, 2, 28), "custom"))
    mar = statement_view(session, account, Period(date(2026, 3, 1), date(2026, 3, 31), "custom"))
    assert [r.on for r in feb.rows] == [date(2026, 2, 28)]
    assert mar.rows == [] and mar.opening == Money(500, "USD")


def test_aging_buckets_by_days_past_due(session: Session) -> None:
    account = make_account(session, payment_terms_days=0)
    as_of = date(2026, 11, 21)

    def invoice_due(days_late: int, minor: int) -> None:
        day = as_of - timedelta(days=days_late)
        make_invoice(
            session,
            account,
            [minor],
            issue_date=day,
            finalized_at=datetime(day.year, day.month, day.day, 12, tzinfo=UTC),
        )

    for days_late, minor in [
        (-5, 1),
        (0, 2),
        (1, 10),
        (30, 20),
        (31, 100),
        (60, 200),
        (61, 1000),
        (90, 2000),
        (91, 10000),
        (400, 20000),
    ]:
        invoice_due(days_late, minor)
    view = statement_view(session, account, Period(date(2025, 1, 1), as_of, "custom"))
    buckets = {b.key: (b.amount.minor, b.count) for b in view.aging.buckets}
    assert buckets == {
        "current": (2, 1),  # issued after that day: not in its aging
        "1_30": (30, 2),
        "31_60": (300, 2),
        "61_90": (3000, 2),
        "over_90": (30000, 2),
    }
    assert view.aging.total == view.closing


def test_aging_of_a_past_period_ignores_later_payments(session: Session) -> None:
    account = make_account(session, payment_terms_days=10)
    invoice = make_invoice(
        session,
        account,
        [4000],
        issue_date=date(2026, 1, 1),
        finalized_at=datetime(2026, 1, 1, 12, tzinfo=UTC),
    )
    services.record_payment(
        session,
        account,
        Money(1000, "USD"),
        [(invoice, Money(1000, "USD"))],
        received_at=datetime(2026, 1, 20, tzinfo=UTC),
    )
    services.record_payment(
        session,
        account,
        Money(3000, "USD"),
        [(invoice, Money(3000, "USD"))],
        received_at=datetime(2026, 3, 5, tzinfo=UTC),
    )
    january = statement_view(
        session, account, Period(date(2026, 1, 1), date(2026, 1, 31), "custom")
    )
    assert {b.key: b.amount.minor for b in january.aging.buckets}["1_30"] == 3000
    assert january.aging.total == january.closing
    march = statement_view(session, account, Period(date(2026, 3, 1), date(2026, 3, 31), "custom"))
    assert march.aging.total == Money(0, "USD") == march.closing


def test_a_voided_invoice_is_not_open(session: Session) -> None:
    account = make_account(session)
    invoice = make_invoice(session, account, [900], finalized_at=datetime(2026, 5, 1, tzinfo=UTC))
    services.void_invoice(session, invoice, voided_at=datetime(2026, 5, 3, tzinfo=UTC))
    view = statement_view(session, account, Period(date(2026, 5, 1), date(2026, 5, 31), "custom"))
    assert view.closing == Money(0, "USD") == view.aging.total
    before = statement_view(session, account, Period(date(2026, 5, 1), date(2026, 5, 1), "custom"))
    assert before.aging.total == Money(900, "USD") == before.closing


def test_zero_decimal_currency(session: Session) -> None:
    account = make_account(session, currency="JPY")
    make_invoice(session, account, [21560], finalized_at=datetime(2026, 6, 1, tzinfo=UTC))
    view = statement_view(session, account, Period(date(2026, 6, 1), date(2026, 6, 30), "custom"))
    rows = list(csv.reader(io.StringIO(statement_csv(view))))
    assert rows[-1][5] == "21560"


def test_aging_counts_each_invoice_open_at_the_cutoff_once(session: Session) -> None:
    """Open now, paid after the cutoff, voided after it: each once; settled before it: never."""
    account = make_account(session, payment_terms_days=10)
    other = make_account(session, payment_terms_days=10)
    jan = datetime(2026, 1, 1, 12, tzinfo=UTC)

    def invoice(owner: Account, minor: int) -> Invoice:
        return make_invoice(session, owner, [minor], issue_date=date(2026, 1, 1), finalized_at=jan)

    invoice(account, 100)  # still open
    paid_later = invoice(account, 200)
    voided_later = invoice(account, 400)
    paid_before = invoice(account, 800)
    invoice(other, 1600)  # another account's
    later = datetime(2026, 3, 1, tzinfo=UTC)
    for paid, when in ((paid_later, later), (paid_before, datetime(2026, 1, 15, tzinfo=UTC))):
        money = Money(paid.total_minor, "USD")
        services.record_payment(session, account, money, [(paid, money)], received_at=when)
    services.void_invoice(session, voided_later, voided_at=later)
    view = statement_view(session, account, Period(date(2026, 1, 1), date(2026, 1, 31), "custom"))
    buckets = {b.key: (b.amount.minor, b.count) for b in view.aging.buckets}
    assert buckets["1_30"] == (700, 3)
    assert view.aging.total == view.closing


def test_csv_amount_columns_sum_to_the_period_totals_once() -> None:
    rows = [
        StatementRow(
            date(2026, 1, 2), "invoice", "Invoice A", Money(1234, "USD"), Money(1234, "USD")
        ),
        StatementRow(
            date(2026, 1, 3), "payment", "Payment", Money(-2000, "USD"), Money(-766, "USD")
        ),
        StatementRow(
            date(2026, 1, 4), "invoice", "Invoice B", Money(500, "USD"), Money(-266, "USD")
        ),
    ]
    parsed = list(csv.DictReader(io.StringIO(statement_csv(_view(rows)))))
    charges = sum(Decimal(r["Charges"]) for r in parsed if r["Charges"])
    credits = sum(Decimal(r["Credits"]) for r in parsed if r["Credits"])
    assert (charges, credits) == (Decimal("17.34"), Decimal("20.00"))
    assert [r["Type"] for r in (parsed[0], parsed[-1])] == ["Opening balance", "Closing balance"]
    assert parsed[-1]["Balance"] == "-2.66" and parsed[-1]["Charges"] == ""
    assert {r["Currency"] for r in parsed} == {"USD"}


def test_csv_for_a_german_account_is_what_german_spreadsheets_read() -> None:
    rows = [
        StatementRow(
            date(2026, 1, 2), "invoice", "Rechnung", Money(123450, "EUR"), Money(123450, "EUR")
        ),
    ]
    text = statement_csv(_view(rows), "de_DE")
    assert text.splitlines()[0].count(";") == 6 and "," not in text.splitlines()[0]
    parsed = list(csv.reader(io.StringIO(text), delimiter=";"))
    assert parsed[2][3] == "1234,50" and parsed[2][5] == "1234,50"  # no grouping, decimal comma
    assert statement_csv(_view(rows), "en_US").splitlines()[2].split(",")[3] == "1234.50"


def test_statement_csv_download_names_its_charset_once(client, session: Session, clock) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import login_as
    from tests.factories import make_user

    account = make_account(session)
    user = make_user(session, account=account)
    make_invoice(session, account, [1000])
    login_as(client, user)
    response = client.get("/statements?period=this_month&format=csv")
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert response.get_data().startswith(b"\xef\xbb\xbf")  # the BOM Excel needs for UTF-8


def test_the_default_statement_on_the_first_is_last_month(client, session: Session, clock) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import login_as
    from tests.factories import make_user

    account = make_account(session)
    user = make_user(session, account=account)
    make_invoice(session, account, [1000], finalized_at=datetime(2026, 11, 20, 12, tzinfo=UTC))
    clock.set(datetime(2026, 12, 1, 9, tzinfo=UTC))
    login_as(client, user)
    page = client.get("/statements").get_data(as_text=True)
    assert 'data-testid="period-fallback"' in page
    assert "Nov 1, 2026 – Nov 30, 2026" in page and "$10.00" in page
    chosen = client.get("/statements?period=this_month").get_data(as_text=True)
    assert 'data-testid="period-fallback"' not in chosen and "Dec 1, 2026 – Dec 1, 2026" in chosen
    # Once this month has an entry, the default is this month again.
    make_invoice(session, account, [500])
    again = client.get("/statements").get_data(as_text=True)
    assert 'data-testid="period-fallback"' not in again and "Dec 1, 2026 – Dec 1, 2026" in again


def test_the_running_balance_is_labelled_for_phones(client, session: Session, clock) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import login_as
    from tests.factories import make_user

    account = make_account(session)
    user = make_user(session, account=account)
    make_invoice(session, account, [1000])
    login_as(client, user)
    page = client.get("/statements?period=this_month").get_data(as_text=True)
    assert '<span class="ledger__label">Balance </span>$10.00' in page
