"""Read models of the billing pages: the invoice list, one invoice, payments."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from sqlalchemy.orm import Session

from portal.billing import queries, services
from portal.billing.money import Money
from portal.billing.queries import Cursor, InvoiceFilters
from tests.factories import make_account, make_invoice

TODAY = date(2026, 11, 21)


def test_keyset_pages_are_disjoint_and_ordered_with_equal_dates(session: Session) -> None:
    account = make_account(session)
    made = [
        make_invoice(session, account, [100], issue_date=date(2026, 3, 1) + timedelta(days=n // 4))
        for n in range(11)
    ]
    seen = []
    after = None
    while True:
        page = queries.invoice_page(session, account.id, InvoiceFilters(), TODAY, after, size=3)
        seen += page.invoices
        if page.next_cursor is None:
            break
        after = Cursor.decode(page.next_cursor.encode())
    expected = sorted(made, key=lambda inv: (inv.issue_date, inv.id), reverse=True)
    assert [inv.id for inv in seen] == [inv.id for inv in expected]


def test_other_accounts_and_drafts_never_appear(session: Session) -> None:
    mine, theirs = make_account(session), make_account(session)
    kept = make_invoice(session, mine, [100])
    make_invoice(session, mine, [100], finalize=False)
    make_invoice(session, theirs, [100])
    page = queries.invoice_page(session, mine.id, InvoiceFilters(), TODAY)
    assert [inv.id for inv in page.invoices] == [kept.id]
    assert queries.invoice_years(session, mine.id) == [TODAY.year]


def test_search_treats_wildcards_literally(session: Session) -> None:
    account = make_account(session)
    make_invoice(session, account, [100])
    for text in ("%", "_", "\\"):
        assert (
            queries.invoice_page(session, account.id, InvoiceFilters(search=text), TODAY).invoices
            == []
        )


def test_overdue_filter_uses_the_given_day(session: Session) -> None:
    account = make_account(session, payment_terms_days=10)
    invoice = make_invoice(session, account, [100], issue_date=date(2026, 11, 1))
    overdue = InvoiceFilters(status="overdue")
    assert queries.invoice_page(session, account.id, overdue, date(2026, 11, 11)).invoices == []
    assert queries.invoice_page(session, account.id, overdue, date(2026, 11, 12)).invoices == [
        invoice
    ]


def test_cursors_refuse_garbage() -> None:
    assert Cursor.decode("2026-01-01.12") == Cursor(date(2026, 1, 1), 12)
    assert Cursor.decode(f"2026-01-01.{2**63 - 1}") == Cursor(date(2026, 1, 1), 2**63 - 1)
    for raw in (
        "",
        "x",
        "2026-13-01.1",
        "2026-01-01.",
        "2026-01-01.a",
        f"2026-01-01.{2**63}",  # beyond BIGINT: names no row
        "2026-01-01.99999999999999999999999",
        "2026-01-01.0",
        "2026-01-01.-1",
        "2026-01-01. 1",
        "2026-01-01.1_0",
        "2026-01-01.١٢",  # Arabic-Indic digits int() would accept
    ):
        assert Cursor.decode(raw) is None, raw


def test_invoice_detail_groups_tax_per_rate_and_lists_payments(session: Session) -> None:
    account = make_account(session)
    invoice = services.create_draft_invoice(
        session,
        account,
        [
            services.LineInput("A", 1000, tax_rate_bp=2000, tax_name="VAT"),
            services.LineInput("B", 3333, tax_rate_bp=2000, tax_name="VAT"),
            services.LineInput("C", 500, tax_rate_bp=500, tax_name="Reduced VAT"),
            services.LineInput("Free", 0),
        ],
    )
    services.finalize_invoice(session, invoice, seller={"name": "S"})
    services.record_payment(
        session,
        account,
        Money(1000, "USD"),
        [(invoice, Money(1000, "USD"))],
        received_at=datetime(2026, 11, 20, tzinfo=UTC),
    )
    detail = queries.invoice_detail(session, account.id, str(invoice.number))
    assert detail is not None
    assert [(t.name, t.rate_bp, t.taxable.minor, t.tax.minor) for t in detail.taxes] == [
        ("VAT", 2000, 4333, 200 + 667),
        ("Reduced VAT", 500, 500, 25),
    ]
    assert sum(t.tax.minor for t in detail.taxes) == invoice.tax_minor
    assert [p.amount.minor for p in detail.payments] == [1000]
    assert queries.invoice_detail(session, account.id + 1000, str(invoice.number)) is None


def test_payable_count_counts_what_can_be_paid_now(session: Session) -> None:
    account = make_account(session)
    paid = make_invoice(session, account, [500])
    services.record_payment(
        session, account, paid.amount_due, [(paid, paid.amount_due)], received_at=datetime.now(UTC)
    )
    make_invoice(session, account, [700])
    make_invoice(session, account, [900])
    make_invoice(session, make_account(session), [300])
    assert queries.payable_count(session, account.id) == 2
    listed = session.scalars(queries.open_invoices(account.id)).all()
    assert [invoice.total_minor for invoice in listed] == [700, 900]


def test_invoice_list_header_is_the_years_and_the_payable_count(session: Session) -> None:
    account = make_account(session)
    assert queries.invoice_list_header(session, account.id) == ([], 0)
    make_invoice(session, account, [700], issue_date=date(2024, 3, 1))
    make_invoice(session, account, [900])
    make_invoice(session, make_account(session), [300])
    assert queries.invoice_list_header(session, account.id) == (
        queries.invoice_years(session, account.id),
        queries.payable_count(session, account.id),
    )
    assert queries.invoice_list_header(session, account.id)[1] == 2


def test_dashboard_summary_counts_open_disputes_in_its_first_statement(session: Session) -> None:
    # NOTE: performance work of issue 9: the open disputes' count rides in the statement of the
    # overdue sums (one round trip less on PostgreSQL); it still counts only open ones.
    from portal.disputes.models import Dispute, DisputeStatus

    account = make_account(session)
    invoice = make_invoice(session, account, [700])
    other = make_account(session)
    for owner, status in [
        (account, DisputeStatus.OPEN.value),
        (account, DisputeStatus.IN_REVIEW.value),
        (account, "resolved"),
        (other, DisputeStatus.OPEN.value),
    ]:
        target = invoice if owner is account else make_invoice(session, other, [100])
        session.add(
            Dispute(
                account_id=owner.id,
                invoice_id=target.id,
                currency="USD",
                amount_minor=100,
                reason="other",
                status=status,
            )
        )
    session.flush()
    summary = queries.dashboard_summary(session, account.id, "USD", date(2026, 12, 2))
    assert summary.open_disputes == 2
    assert queries.dashboard_summary(session, other.id, "USD", date(2026, 12, 2)).open_disputes == 1
    fresh = make_account(session)
    assert queries.dashboard_summary(session, fresh.id, "USD", date(2026, 12, 2)).open_disputes == 0


def test_dashboard_summary_sums_every_open_invoice_and_lists_the_five_due_first(
    session: Session,
) -> None:
    # NOTE: performance work of issue 9: the five invoices ride in the statement of the sums;
    # the sums still count every payable invoice, not only the five shown.
    account = make_account(session)
    due = [date(2026, 11, day) for day in (9, 3, 7, 1, 5, 8, 2)]
    made = [
        make_invoice(session, account, [100 * (n + 1)], issue_date=d) for n, d in enumerate(due)
    ]
    summary = queries.dashboard_summary(session, account.id, "USD", date(2026, 12, 31))
    assert summary.overdue_count == 7
    assert summary.overdue.minor == sum(invoice.amount_due_minor for invoice in made)
    shown = [invoice.due_date for invoice in summary.open_invoices]
    assert shown == sorted(invoice.due_date for invoice in made)[:5]
    fresh = queries.dashboard_summary(session, make_account(session).id, "USD", date(2026, 12, 31))
    assert fresh.open_invoices == [] and fresh.overdue_count == 0 and fresh.overdue.minor == 0


def test_invoice_detail_reads_payments_notes_and_retries_in_one_statement_each_once(
    session: Session,
) -> None:
    # NOTE: performance work of issue 9: the payments applied, the credit notes and the planned
    # card retries come in one statement beside the invoice's (their product of rows): each is
    # listed once and in order, another account's payment and done retries are left out.
    from sqlalchemy import event

    from portal.billing.models import CreditNoteReason
    from portal.notifications.models import PaymentRetry, RetryStatus

    account = make_account(session)
    other = make_account(session)
    invoice = make_invoice(session, account, [10000])
    for minute in (30, 10):
        services.record_payment(
            session,
            account,
            Money(1000, "USD"),
            [(invoice, Money(1000, "USD"))],
            received_at=datetime(2026, 11, 20, 9, minute, tzinfo=UTC),
        )
    for amount in (700, 300):
        services.issue_credit_note(
            session, invoice, Money(amount, "USD"), reason=CreditNoteReason.DUPLICATE.value
        )
    for number, (day, status) in enumerate(
        [(25, RetryStatus.SCHEDULED), (22, RetryStatus.SCHEDULED), (21, RetryStatus.DONE)], 1
    ):
        session.add(
            PaymentRetry(
                invoice_id=invoice.id,
                attempt_no=number,
                scheduled_for=datetime(2026, 11, day, 9, tzinfo=UTC),
                status=status.value,
            )
        )
    session.flush()
    statements: list[str] = []
    engine = session.get_bind()

    def before(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    session.expunge_all()
    event.listen(engine, "before_cursor_execute", before)
    try:
        detail = queries.invoice_detail(session, account.id, str(invoice.number))
    finally:
        event.remove(engine, "before_cursor_execute", before)
    assert detail is not None
    assert len(statements) == 2, statements
    assert [p.payment.received_at.minute for p in detail.payments] == [10, 30]
    assert [p.amount.minor for p in detail.payments] == [1000, 1000]
    assert [n.amount_minor for n in detail.credit_notes] == [700, 300]
    assert detail.card_retries == [date(2026, 11, 22), date(2026, 11, 25)]
    assert queries.invoice_detail(session, other.id, str(invoice.number)) is None
