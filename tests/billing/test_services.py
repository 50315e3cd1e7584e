"""Billing services: finalize, pay, credit and void invoices; the database's own rules."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from portal.accounts.models import Account
from portal.audit.models import AuditEvent
from portal.billing import ledger, services
from portal.billing.models import CreditNote, Invoice, InvoiceStatus, LedgerEntry, LedgerKind
from portal.billing.money import Money
from portal.errors import Conflict, ValidationFailed
from portal.payments.models import Payment
from tests.factories import SELLER, make_account, make_invoice, make_user

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def entries_of(session: Session, account: Account) -> list[LedgerEntry]:
    return list(
        session.scalars(
            select(LedgerEntry)
            .where(LedgerEntry.account_id == account.id)
            .order_by(LedgerEntry.effective_at, LedgerEntry.id)
        )
    )


def pay(session: Session, invoice: Invoice, minor: int, when: datetime = T0) -> Payment:
    amount = Money(minor, invoice.currency)
    return services.record_payment(
        session, invoice.account, amount, [(invoice, amount)], received_at=when
    )


# --- finalizing ---------------------------------------------------------------------------------


def test_finalize_numbers_invoices_in_order_per_account(session: Session) -> None:
    account = make_account(session, invoice_prefix="ALS")
    other = make_account(session)
    first = make_invoice(session, account, [1000])
    make_invoice(session, other, [1000])
    second = make_invoice(session, account, [2000])
    assert (first.number, second.number) == ("ALS-0001", "ALS-0002")
    assert (first.sequence, second.sequence) == (1, 2)
    assert first.status == second.status == InvoiceStatus.OPEN
    assert first.seller == SELLER
    assert first.buyer is not None and first.buyer["name"] == account.name
    assert first.due_date == first.issue_date + timedelta(days=account.payment_terms_days)


def test_a_draft_has_no_number_and_owes_nothing(session: Session) -> None:
    account = make_account(session)
    draft = make_invoice(session, account, [1000], finalize=False)
    assert draft.number is None
    assert draft.status == InvoiceStatus.DRAFT
    assert draft.amount_due_minor == 0
    assert entries_of(session, account) == []


def test_finalizing_twice_raises(session: Session) -> None:
    invoice = make_invoice(session, make_account(session), [1000])
    with pytest.raises(services.InvoiceImmutable):
        services.finalize_invoice(session, invoice, seller=SELLER)
    assert invoice.number.endswith("-0001")


def test_finalizing_an_empty_draft_is_refused(session: Session) -> None:
    draft = services.create_draft_invoice(session, make_account(session), [])
    with pytest.raises(ValidationFailed):
        services.finalize_invoice(session, draft, seller=SELLER)


def test_a_finalized_invoice_refuses_new_lines(session: Session) -> None:
    invoice = make_invoice(session, make_account(session), [1000])
    with pytest.raises(services.InvoiceImmutable):
        services.add_line(
            session, invoice, services.LineInput(description="Extra", unit_amount_minor=500)
        )
    assert len(invoice.lines) == 1
    assert invoice.total_minor == 1000


def test_a_draft_accepts_new_lines_and_recomputes_its_total(session: Session) -> None:
    draft = make_invoice(session, make_account(session), [1000], finalize=False)
    services.add_line(
        session, draft, services.LineInput(description="Extra", unit_amount_minor=250, quantity=2)
    )
    assert [line.position for line in draft.lines] == [1, 2]
    assert draft.total_minor == 1500


def test_finalizing_posts_the_total_to_the_ledger_once(session: Session) -> None:
    account = make_account(session)
    invoice = make_invoice(session, account, [1000, 500], finalized_at=T0)
    [entry] = entries_of(session, account)
    assert (entry.kind, entry.amount_minor, entry.invoice_id) == ("invoice", 1500, invoice.id)
    assert entry.source_ref == f"invoice:{invoice.id}"
    assert entry.effective_at == T0
    assert ledger.balance(session, account.id, "USD") == Money(1500, "USD")


def test_a_zero_invoice_is_paid_on_finalizing_and_posts_nothing(session: Session) -> None:
    account = make_account(session)
    invoice = make_invoice(session, account, [0])
    assert invoice.status == InvoiceStatus.PAID
    assert entries_of(session, account) == []


# --- rounding -----------------------------------------------------------------------------------


def test_tax_is_rounded_per_line_and_the_lines_sum_exactly_to_the_total(session: Session) -> None:
    invoice = make_invoice(session, make_account(session), [333, 333, 333], tax_rate_bp=1900)
    # 333 x 19 % = 63.27 -> 63 on each line (taxing the 999 subtotal would give 190).
    assert [line.tax_minor for line in invoice.lines] == [63, 63, 63]
    assert invoice.subtotal_minor == 999
    assert invoice.tax_minor == 189
    assert invoice.total_minor == 1188
    assert sum(line.amount_minor + line.tax_minor for line in invoice.lines) == invoice.total_minor


def test_tax_rounds_half_up_per_line_in_a_zero_decimal_currency(session: Session) -> None:
    invoice = make_invoice(session, make_account(session, "JPY"), [105, 15], tax_rate_bp=1000)
    assert [line.tax_minor for line in invoice.lines] == [11, 2]  # 10.5 -> 11, 1.5 -> 2
    assert invoice.total_minor == 120 + 13


def test_a_discount_line_is_negative_and_reduces_the_total(session: Session) -> None:
    account = make_account(session)
    lines = [
        services.LineInput(description="Plan", unit_amount_minor=10000, tax_rate_bp=1000),
        services.LineInput(
            description="Discount",
            unit_amount_minor=2500,
            kind=services.LineKind.DISCOUNT,
            tax_rate_bp=1000,
        ),
    ]
    invoice = services.create_draft_invoice(session, account, lines)
    assert [line.amount_minor for line in invoice.lines] == [10000, -2500]
    assert (invoice.subtotal_minor, invoice.discount_minor, invoice.tax_minor) == (10000, 2500, 750)
    assert invoice.total_minor == 8250
    assert sum(line.amount_minor + line.tax_minor for line in invoice.lines) == invoice.total_minor


def test_an_invoice_cannot_total_less_than_zero(session: Session) -> None:
    lines = [
        services.LineInput(description="Plan", unit_amount_minor=1000),
        services.LineInput(
            description="Discount", unit_amount_minor=2000, kind=services.LineKind.DISCOUNT
        ),
    ]
    with pytest.raises(ValidationFailed):
        services.create_draft_invoice(session, make_account(session), lines)


# --- payments -----------------------------------------------------------------------------------


def test_paying_in_full_marks_paid_and_posts_one_ledger_entry(session: Session) -> None:
    account = make_account(session)
    invoice = make_invoice(session, account, [1500], finalized_at=T0)
    paid_at = T0 + timedelta(days=2)
    payment = pay(session, invoice, 1500, paid_at)
    assert invoice.status == InvoiceStatus.PAID
    assert invoice.paid_at == paid_at
    assert invoice.amount_due_minor == 0
    assert [(a.invoice_id, a.amount_minor) for a in payment.allocations] == [(invoice.id, 1500)]
    payments = [e for e in entries_of(session, account) if e.kind == LedgerKind.PAYMENT]
    assert [(e.amount_minor, e.source_ref) for e in payments] == [(-1500, f"payment:{payment.id}")]
    assert ledger.balance(session, account.id, "USD") == Money.zero("USD")


def test_a_partial_payment_leaves_the_invoice_open_with_the_rest_due(session: Session) -> None:
    account = make_account(session)
    invoice = make_invoice(session, account, [1500])
    pay(session, invoice, 600)
    assert invoice.status == InvoiceStatus.OPEN
    assert invoice.amount_due == Money(900, "USD")
    assert invoice.paid_at is None
    assert ledger.balance(session, account.id, "USD") == Money(900, "USD")
    pay(session, invoice, 900)
    assert invoice.status == InvoiceStatus.PAID


def test_paying_more_than_is_due_raises_conflict(session: Session) -> None:
    invoice = make_invoice(session, make_account(session), [1500])
    pay(session, invoice, 1000)
    with pytest.raises(Conflict):
        pay(session, invoice, 501)


def test_paying_a_paid_invoice_again_raises_conflict(session: Session) -> None:
    invoice = make_invoice(session, make_account(session), [1500])
    pay(session, invoice, 1500)
    with pytest.raises(Conflict):
        pay(session, invoice, 1)


def test_a_payment_in_another_currency_is_refused(session: Session) -> None:
    invoice = make_invoice(session, make_account(session), [1500])
    with pytest.raises(ValidationFailed):
        services.record_payment(session, invoice.account, Money(1500, "EUR"), [], received_at=T0)


def test_a_payment_cannot_be_applied_to_another_accounts_invoice(session: Session) -> None:
    mine = make_account(session)
    theirs = make_invoice(session, make_account(session), [1500])
    with pytest.raises(ValidationFailed):
        services.record_payment(
            session, mine, Money(1500, "USD"), [(theirs, Money(1500, "USD"))], received_at=T0
        )


# --- credit notes -------------------------------------------------------------------------------


def test_a_credit_note_reduces_what_is_due_and_is_numbered_in_its_own_series(
    session: Session,
) -> None:
    account = make_account(session, invoice_prefix="CRD")
    invoice = make_invoice(session, account, [2000])
    note = services.issue_credit_note(
        session, invoice, Money(500, "USD"), reason="goodwill", issued_at=T0
    )
    assert note.number == "CRD-CN-0001"
    assert invoice.number == "CRD-0001"
    assert invoice.amount_due == Money(1500, "USD")
    assert invoice.status == InvoiceStatus.OPEN
    assert invoice.total_minor == 2000  # the invoice itself never changes
    [credit] = [e for e in entries_of(session, account) if e.kind == LedgerKind.CREDIT_NOTE]
    assert (credit.amount_minor, credit.source_ref) == (-500, f"credit_note:{note.id}")
    assert ledger.balance(session, account.id, "USD") == Money(1500, "USD")


def test_a_credit_note_covering_the_rest_pays_off_the_invoice(session: Session) -> None:
    account = make_account(session)
    invoice = make_invoice(session, account, [2000])
    pay(session, invoice, 1200)
    services.issue_credit_note(session, invoice, Money(800, "USD"), reason="goodwill", issued_at=T0)
    assert invoice.status == InvoiceStatus.PAID
    assert invoice.amount_due_minor == 0
    assert invoice.paid_at == T0
    assert ledger.balance(session, account.id, "USD") == Money.zero("USD")
    with pytest.raises(ValidationFailed):  # more than the total less what is credited
        services.issue_credit_note(session, invoice, Money(1201, "USD"), reason="goodwill")


def test_a_credit_note_on_a_paid_invoice_becomes_credit_on_the_balance(session: Session) -> None:
    account = make_account(session)
    invoice = make_invoice(session, account, [2000])
    pay(session, invoice, 2000)
    note = services.issue_credit_note(
        session, invoice, Money(700, "USD"), reason="dispute", issued_at=T0
    )
    assert invoice.status == InvoiceStatus.PAID
    assert (invoice.amount_paid_minor, invoice.amount_credited_minor) == (2000, 700)
    assert invoice.amount_due_minor == 0
    assert not invoice.is_payable
    # the customer now has 7.00 in credit, and the ledger (so the statement) says why
    assert ledger.balance(session, account.id, "USD") == Money(-700, "USD")
    [credit] = [e for e in entries_of(session, account) if e.kind == LedgerKind.CREDIT_NOTE]
    assert (credit.amount_minor, credit.source_ref) == (-700, f"credit_note:{note.id}")
    # what is left to credit is the total less what is credited, never more
    with pytest.raises(ValidationFailed):
        services.issue_credit_note(session, invoice, Money(1301, "USD"), reason="dispute")
    services.issue_credit_note(session, invoice, Money(1300, "USD"), reason="dispute")
    assert ledger.balance(session, account.id, "USD") == Money(-2000, "USD")


def test_a_line_cannot_be_credited_beyond_what_it_charged(session: Session) -> None:
    account = make_account(session)
    invoice = make_invoice(session, account, [1500, 500])
    first, second = invoice.lines
    services.issue_credit_note(
        session,
        invoice,
        Money(400, "USD"),
        reason="dispute",
        lines=[(second, "Part of the second line", Money(400, "USD"))],
    )
    with pytest.raises(ValidationFailed):
        services.issue_credit_note(
            session,
            invoice,
            Money(101, "USD"),
            reason="dispute",
            lines=[(second, "More than is left on it", Money(101, "USD"))],
        )
    services.issue_credit_note(
        session,
        invoice,
        Money(1600, "USD"),
        reason="dispute",
        lines=[(first, "All of it", Money(1500, "USD")), (second, "The rest", Money(100, "USD"))],
    )
    assert invoice.amount_credited_minor == 2000


def test_a_credit_note_cannot_exceed_what_is_due(session: Session) -> None:
    invoice = make_invoice(session, make_account(session), [2000])
    with pytest.raises(ValidationFailed):
        services.issue_credit_note(session, invoice, Money(2001, "USD"), reason="goodwill")


def test_credit_notes_are_numbered_gaplessly(session: Session) -> None:
    account = make_account(session, invoice_prefix="CNS")
    invoice = make_invoice(session, account, [2000])
    numbers = [
        services.issue_credit_note(session, invoice, Money(100, "USD"), reason="goodwill").number
        for _ in range(3)
    ]
    assert numbers == ["CNS-CN-0001", "CNS-CN-0002", "CNS-CN-0003"]
    assert session.scalar(select(func.count()).select_from(CreditNote)) >= 3


# --- voiding ------------------------------------------------------------------------------------


def test_voiding_an_unpaid_invoice_cancels_what_it_owed(session: Session) -> None:
    account = make_account(session)
    invoice = make_invoice(session, account, [1500], finalized_at=T0)
    services.void_invoice(session, invoice, voided_at=T0 + timedelta(hours=1))
    assert invoice.status == InvoiceStatus.VOID
    assert invoice.amount_due_minor == 0
    kinds = [(e.kind, e.amount_minor) for e in entries_of(session, account)]
    assert kinds == [("invoice", 1500), ("invoice_void", -1500)]
    assert ledger.balance(session, account.id, "USD") == Money.zero("USD")


def test_an_invoice_with_a_payment_cannot_be_voided(session: Session) -> None:
    invoice = make_invoice(session, make_account(session), [1500])
    pay(session, invoice, 100)
    with pytest.raises(Conflict):
        services.void_invoice(session, invoice)
    assert invoice.status == InvoiceStatus.OPEN


def test_an_invoice_with_a_credit_note_cannot_be_voided(session: Session) -> None:
    invoice = make_invoice(session, make_account(session), [1500])
    services.issue_credit_note(session, invoice, Money(100, "USD"), reason="goodwill")
    with pytest.raises(Conflict):
        services.void_invoice(session, invoice)


def test_a_voided_invoice_cannot_be_voided_again_or_paid(session: Session) -> None:
    invoice = make_invoice(session, make_account(session), [1500])
    services.void_invoice(session, invoice)
    with pytest.raises(Conflict):
        services.void_invoice(session, invoice)
    with pytest.raises(Conflict):
        pay(session, invoice, 1500)


def test_a_draft_cannot_be_voided(session: Session) -> None:
    draft = make_invoice(session, make_account(session), [1500], finalize=False)
    with pytest.raises(Conflict):
        services.void_invoice(session, draft)


# --- refunds ------------------------------------------------------------------------------------


def test_a_refund_raises_the_balance_and_cannot_exceed_the_payment(session: Session) -> None:
    account = make_account(session)
    invoice = make_invoice(session, account, [1500])
    payment = pay(session, invoice, 1500)
    services.record_refund_in_ledger(
        session, payment, Money(500, "USD"), refund_id=1, refunded_at=T0
    )
    assert payment.amount_refunded_minor == 500
    assert ledger.balance(session, account.id, "USD") == Money(500, "USD")
    with pytest.raises(ValidationFailed):
        services.record_refund_in_ledger(
            session, payment, Money(1001, "USD"), refund_id=2, refunded_at=T0
        )


def test_a_refund_in_another_currency_is_refused(session: Session) -> None:
    account = make_account(session)
    invoice = make_invoice(session, account, [1500])
    payment = pay(session, invoice, 1500)
    with pytest.raises(ValidationFailed):
        services.record_refund_in_ledger(
            session, payment, Money(500, "EUR"), refund_id=1, refunded_at=T0
        )
    assert ledger.balance(session, account.id, "EUR") == Money.zero("EUR")


# --- the ledger's own guarantees ----------------------------------------------------------------


def test_the_ledger_posts_only_positive_amounts(session: Session) -> None:
    account = make_account(session)
    with pytest.raises(ValueError):
        ledger.post(
            session,
            account_id=account.id,
            kind=LedgerKind.PAYMENT,
            amount=Money(-100, "USD"),
            source_ref="test:negative",
            effective_at=T0,
            description="negative",
        )


def test_the_ledger_refuses_a_second_entry_for_the_same_source(session: Session) -> None:
    account = make_account(session)
    invoice = make_invoice(session, account, [1500])
    with pytest.raises(IntegrityError), session.begin_nested():
        ledger.post(
            session,
            account_id=account.id,
            kind=LedgerKind.INVOICE,
            amount=invoice.total,
            source_ref=f"invoice:{invoice.id}",
            effective_at=T0,
            description="posted twice",
        )
    assert len(entries_of(session, account)) == 1


# --- CHECK constraints: raw rows the services would never write --------------------------------


def assert_refused(session: Session, model: type[Any], good: dict[str, Any], **bad: Any) -> None:
    """`good` inserts; the same row with `bad` changes is refused by the database."""
    nested = session.begin_nested()
    session.execute(insert(model).values(**good))
    nested.rollback()
    with pytest.raises(IntegrityError), session.begin_nested():
        session.execute(insert(model).values({**good, **bad}))


def invoice_row(account: Account, **fields: Any) -> dict[str, Any]:
    row = {
        "account_id": account.id,
        "currency": "USD",
        "status": "draft",
        "issue_date": date(2026, 3, 1),
        "subtotal_minor": 100,
        "discount_minor": 0,
        "tax_minor": 0,
        "total_minor": 100,
        "amount_paid_minor": 0,
        "amount_credited_minor": 0,
        "memo": "",
    }
    row.update(fields)
    return row


def ledger_row(account: Account, **fields: Any) -> dict[str, Any]:
    row = {
        "account_id": account.id,
        "currency": "USD",
        "kind": "payment",
        "amount_minor": -100,
        "effective_at": T0,
        "description": "raw",
        "source_ref": "test:raw",
    }
    row.update(fields)
    return row


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("negative total", {"subtotal_minor": 0, "discount_minor": 100, "total_minor": -100}),
        ("total that does not add up", {"total_minor": 101}),
        ("lowercase currency", {"currency": "usd"}),
        ("overpaid", {"status": "open", "number": "RAW-1", "amount_paid_minor": 101}),
        ("overcredited", {"status": "open", "number": "RAW-1", "amount_credited_minor": 101}),
        ("number on a draft", {"number": "RAW-1"}),
        ("unknown status", {"status": "settled", "number": "RAW-1"}),
        ("due before issue", {"due_date": date(2026, 2, 28)}),
    ],
)
def test_the_database_refuses_an_impossible_invoice(
    session: Session, name: str, bad: dict[str, Any]
) -> None:
    assert_refused(session, Invoice, invoice_row(make_account(session)), **bad)


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "payment", "amount_minor": 100},
        {"kind": "invoice", "amount_minor": -100},
        {"kind": "refund", "amount_minor": -100},
        {"kind": "credit_note", "amount_minor": 100},
        {"kind": "invoice_void", "amount_minor": 100},
        {"kind": "chargeback", "amount_minor": -100},
        {"kind": "chargeback_fee", "amount_minor": -100},
        {"kind": "chargeback_reversal", "amount_minor": 100},
        {"kind": "payment", "amount_minor": 0},
        {"currency": "usd"},
        {"currency": "US"},
        {"kind": "adjustment"},
    ],
)
def test_the_database_refuses_an_impossible_ledger_entry(
    session: Session, bad: dict[str, Any]
) -> None:
    assert_refused(session, LedgerEntry, ledger_row(make_account(session)), **bad)


def test_the_database_refuses_a_lowercase_account_currency(session: Session) -> None:
    good = {"name": "Raw", "billing_email": "raw@example.com", "invoice_prefix": "RAW"}
    for field, value in {
        "address_line1": "",
        "address_line2": "",
        "city": "",
        "postal_code": "",
        "region": "",
        "country": "US",
        "tax_id": "",
        "locale": "en_US",
        "timezone": "UTC",
        "payment_terms_days": 30,
    }.items():
        good[field] = value
    assert_refused(session, Account, {**good, "currency": "EUR"}, currency="eur")


# --- audit --------------------------------------------------------------------------------------


def audit_actions(session: Session, account: Account) -> list[tuple[str, str, Any]]:
    session.flush()
    events = session.scalars(
        select(AuditEvent).where(AuditEvent.account_id == account.id).order_by(AuditEvent.id)
    )
    return [(e.action, e.target_type, e.after) for e in events]


def test_finalizing_and_paying_write_audit_events(session: Session) -> None:
    account = make_account(session, invoice_prefix="AUD")
    invoice = make_invoice(session, account, [1500])
    assert audit_actions(session, account) == [("invoice.open", "invoice", {"status": "open"})]
    pay(session, invoice, 1500)
    actions = audit_actions(session, account)
    assert actions[1:] == [
        ("invoice.paid", "invoice", {"status": "paid"}),
        ("payment.recorded", "payment", {"amount_minor": 1500, "currency": "USD"}),
    ]
    finalized = session.scalar(select(AuditEvent).where(AuditEvent.action == "invoice.open"))
    assert finalized is not None and finalized.target_id == "AUD-0001"
    assert finalized.before == {"status": "draft"}


def test_credit_notes_and_voids_write_audit_events(session: Session) -> None:
    account = make_account(session)
    credited = make_invoice(session, account, [1500])
    services.issue_credit_note(session, credited, Money(100, "USD"), reason="goodwill")
    voided = make_invoice(session, account, [1500])
    services.void_invoice(session, voided)
    actions = [action for action, _, _ in audit_actions(session, account)]
    assert actions == ["invoice.open", "credit_note.issued", "invoice.open", "invoice.void"]


def test_a_credit_note_records_the_staff_member_who_issued_it(session: Session) -> None:
    account = make_account(session)
    make_user(session, account=account)
    staff = make_user(session, staff_role="support")
    invoice = make_invoice(session, account, [1500])
    actor = services.Actor(kind="staff", user_id=staff.id, ip="203.0.113.9")
    note = services.issue_credit_note(
        session,
        invoice,
        Money(100, "USD"),
        reason="dispute",
        issued_by_user_id=staff.id,
        actor=actor,
    )
    assert note.issued_by_user_id == staff.id
    session.flush()
    event = session.scalar(select(AuditEvent).where(AuditEvent.action == "credit_note.issued"))
    assert event is not None
    assert (event.actor_kind, event.actor_user_id, event.ip) == ("staff", staff.id, "203.0.113.9")
    assert event.target_id == note.number
