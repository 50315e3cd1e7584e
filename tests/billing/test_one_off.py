"""One-off and milestone invoices: the service and `billing invoice-once`, through the normal
finalization; bad input is refused with words and changes nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.audit.models import AuditEvent
from portal.billing.models import Invoice, LedgerEntry
from portal.billing.money import Money
from portal.billing.one_off import find_account, invoice_once, parse_amount
from portal.errors import NotFound, ValidationFailed
from portal.notifications.models import OutboxEmail
from portal.subscriptions.models import TaxRate
from tests.factories import SELLER, make_account


def test_a_milestone_is_numbered_taxed_posted_and_mailed(session: Session) -> None:
    account = make_account(session, "EUR", country="DE")
    vat = TaxRate(name="VAT 19%", rate_bp=1900, country="DE")
    session.add(vat)
    session.flush()
    invoice = invoice_once(
        session,
        account,
        description="  Milestone 2:   data migration  ",
        amount=Money(125000, "EUR"),
        tax_rate=vat,
        seller=SELLER,
    )
    assert invoice.status == "open" and invoice.number.startswith(account.invoice_prefix)
    (line,) = invoice.lines
    assert (line.kind, line.description, line.amount_minor, line.tax_minor) == (
        "one_off",
        "Milestone 2: data migration",
        125000,
        23750,
    )
    assert (line.tax_rate_id, line.tax_name) == (vat.id, "VAT 19%")
    assert invoice.total_minor == 148750
    entry = session.scalar(select(LedgerEntry).where(LedgerEntry.invoice_id == invoice.id))
    assert entry.amount_minor == 148750
    assert session.scalar(
        select(OutboxEmail).where(OutboxEmail.dedupe_key == f"invoice_issued:{invoice.id}")
    )
    event = session.scalar(select(AuditEvent).where(AuditEvent.action == "invoice.one_off"))
    assert event.after["total_minor"] == 148750 and event.target_id == invoice.number


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("1250.00", "USD", 125000),
        ("1250", "USD", 125000),
        ("0.01", "USD", 1),
        ("980", "JPY", 980),
        ("1.234", "KWD", 1234),
        ("1_000", "USD", 100000),
    ],
)
def test_amounts_are_read_in_major_units(text: str, currency: str, minor: int) -> None:
    assert parse_amount(text, currency) == Money(minor, currency)


@pytest.mark.parametrize(
    ("text", "currency", "message"),
    [
        ("", "USD", "must be a number"),
        ("abc", "USD", "must be a number"),
        ("NaN", "USD", "must be a number"),
        ("Infinity", "USD", "must be a number"),
        ("12.345", "USD", "at most 2 decimals"),
        ("9.5", "JPY", "at most 0 decimals"),
        ("0", "USD", "more than zero"),
        ("-5", "USD", "more than zero"),
        ("1e30", "USD", "too large"),
    ],
)
def test_bad_amounts_are_refused(text: str, currency: str, message: str) -> None:
    with pytest.raises(ValidationFailed, match=message):
        parse_amount(text, currency)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"description": "   "}, "needs a description"),
        ({"description": "x" * 501}, "at most 500"),
        ({"description": "bell\x07"}, "cannot be printed"),
        ({"amount": Money(100, "EUR")}, "billed in USD"),
        ({"quantity": 0}, "from 1 to"),
        ({"quantity": 10**6}, "from 1 to"),
        ({"quantity": 10_000, "amount": Money(10**8, "USD")}, "too large"),
    ],
)
def test_bad_one_off_input_changes_nothing(session: Session, kwargs, message) -> None:
    account = make_account(session)
    arguments = {"description": "Workshop", "amount": Money(50000, "USD"), "seller": SELLER}
    arguments.update(kwargs)
    with pytest.raises(ValidationFailed, match=message):
        invoice_once(session, account, **arguments)
    assert session.scalar(select(func.count(Invoice.id))) == 0


def test_a_tax_rate_of_another_country_is_refused(session: Session) -> None:
    account = make_account(session, country="US")
    de = TaxRate(name="USt", rate_bp=1900, country="DE")
    session.add(de)
    session.flush()
    with pytest.raises(ValidationFailed, match="does not apply"):
        invoice_once(
            session,
            account,
            description="x",
            amount=Money(100, "USD"),
            tax_rate=de,
            seller=SELLER,
        )


def test_accounts_are_found_by_prefix_public_id_or_email(session: Session) -> None:
    account = make_account(session)
    assert find_account(session, account.invoice_prefix.lower()).id == account.id
    assert find_account(session, account.public_id).id == account.id
    assert find_account(session, account.billing_email.upper()).id == account.id
    with pytest.raises(NotFound):
        find_account(session, "nobody")


def test_the_cli_issues_a_one_off_invoice(app, session: Session) -> None:
    account = make_account(session, "EUR", country="DE")
    session.add(TaxRate(name="VAT 19%", rate_bp=1900, country="ALL"))
    session.commit()
    runner = app.test_cli_runner()
    result = runner.invoke(
        args=[
            "billing",
            "invoice-once",
            account.invoice_prefix,
            "--description",
            "Milestone 1: design",
            "--amount",
            "1000.00",
            "--currency",
            "EUR",
            "--tax-rate",
            "VAT 19%",
        ]
    )
    assert result.exit_code == 0, result.output
    assert "issued invoice" in result.output and "1190.00 EUR" in result.output
    for args, message in [
        (["nobody", "--description", "x", "--amount", "1"], "No account matches"),
        (
            [account.invoice_prefix, "--description", "x", "--amount", "1", "--currency", "USD"],
            "billed in EUR",
        ),
        ([account.invoice_prefix, "--description", "x", "--amount", "1.005"], "at most 2"),
        ([account.invoice_prefix, "--description", "x", "--amount", "-1"], "more than zero"),
        ([account.invoice_prefix, "--description", "", "--amount", "1"], "needs a description"),
        (
            [account.invoice_prefix, "--description", "x", "--amount", "1", "--tax-rate", "Nope"],
            "No active tax rate",
        ),
    ]:
        bad = runner.invoke(args=["billing", "invoice-once", *args])
        assert bad.exit_code == 1 and message in bad.output, (args, bad.output)
    assert session.scalar(select(func.count(Invoice.id))) == 1
