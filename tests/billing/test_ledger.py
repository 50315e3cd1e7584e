"""The ledger: balances and statements, and invariant 2 under random histories."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from portal.accounts.models import Account
from portal.billing import ledger, services
from portal.billing.models import AccountBalance, Invoice, InvoiceStatus, LedgerEntry, LedgerKind
from portal.billing.money import Money
from portal.payments.models import Payment, Refund
from tests.factories import make_account, make_invoice

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def post(session: Session, account: Account, kind: LedgerKind, minor: int, hours: float) -> None:
    ledger.post(
        session,
        account_id=account.id,
        kind=kind,
        amount=Money(minor, account.currency),
        source_ref=f"test:{account.id}:{kind.value}:{hours}",
        effective_at=at(hours),
        description=f"{kind.value} {minor}",
    )


@pytest.fixture()
def history(session: Session) -> Account:
    """Invoice 100 at 1h, payment 30 at 2h, credit 20 at 3h, refund 5 at 4h, invoice 50 at 5h,
    its void at 6h."""
    account = make_account(session)
    post(session, account, LedgerKind.INVOICE, 100, 1)
    post(session, account, LedgerKind.PAYMENT, 30, 2)
    post(session, account, LedgerKind.CREDIT_NOTE, 20, 3)
    post(session, account, LedgerKind.REFUND, 5, 4)
    post(session, account, LedgerKind.INVOICE, 50, 5)
    post(session, account, LedgerKind.INVOICE_VOID, 50, 6)
    return account


def test_posting_fixes_the_sign_by_kind(session: Session, history: Account) -> None:
    amounts = session.scalars(
        select(LedgerEntry.amount_minor)
        .where(LedgerEntry.account_id == history.id)
        .order_by(LedgerEntry.effective_at)
    ).all()
    assert amounts == [100, -30, -20, 5, 50, -50]


def test_balance_is_the_sum_of_entries_before_a_moment(session: Session, history: Account) -> None:
    assert ledger.balance(session, history.id, "USD") == Money(55, "USD")
    assert ledger.balance(session, history.id, "USD", before=at(1)) == Money(0, "USD")
    assert ledger.balance(session, history.id, "USD", before=at(2)) == Money(100, "USD")
    assert ledger.balance(session, history.id, "USD", before=at(5.5)) == Money(105, "USD")
    assert ledger.balance(session, history.id, "EUR") == Money(0, "EUR")


def balance_rows(session: Session, account: Account) -> dict[str, int]:
    return dict(
        session.execute(
            select(AccountBalance.currency, AccountBalance.balance_minor).where(
                AccountBalance.account_id == account.id
            )
        ).all()
    )


def test_posting_keeps_one_balance_row_per_account_and_currency(
    session: Session, history: Account
) -> None:
    assert balance_rows(session, history) == {"USD": 55}
    ledger.post(
        session,
        account_id=history.id,
        kind=LedgerKind.INVOICE,
        amount=Money(7, "EUR"),
        source_ref=f"test:{history.id}:eur",
        effective_at=at(7),
        description="EUR invoice",
    )
    other = make_account(session)
    post(session, other, LedgerKind.INVOICE, 999, 2)
    assert balance_rows(session, history) == {"USD": 55, "EUR": 7}
    assert balance_rows(session, other) == {"USD": 999}
    assert ledger.balance(session, history.id, "EUR") == Money(7, "EUR")


def test_a_replayed_posting_moves_neither_the_ledger_nor_the_balance(
    session: Session, history: Account
) -> None:
    nested = session.begin_nested()
    with pytest.raises(IntegrityError):
        post(session, history, LedgerKind.INVOICE, 100, 1)  # the same source_ref again
    nested.rollback()
    assert balance_rows(session, history) == {"USD": 55}
    assert ledger.balance(session, history.id, "USD") == Money(55, "USD")


def test_statement_has_opening_running_and_closing_balances(
    session: Session, history: Account
) -> None:
    statement = ledger.statement(session, history.id, "USD", at(1.5), at(5.5))
    assert statement.opening == Money(100, "USD")
    assert [line.entry.amount_minor for line in statement.lines] == [-30, -20, 5, 50]
    assert [line.running.minor for line in statement.lines] == [70, 50, 55, 105]
    assert statement.closing == Money(105, "USD")
    assert statement.totals["invoice"] == Money(50, "USD")
    assert statement.totals["payment"] == Money(30, "USD")
    assert statement.totals["credit_note"] == Money(20, "USD")
    assert statement.totals["refund"] == Money(5, "USD")
    assert statement.totals["invoice_void"] == Money(0, "USD")


def test_a_period_starts_inclusive_and_ends_exclusive(session: Session, history: Account) -> None:
    statement = ledger.statement(session, history.id, "USD", at(2), at(4))
    assert [line.entry.kind for line in statement.lines] == ["payment", "credit_note"]


def test_one_periods_closing_is_the_next_periods_opening(
    session: Session, history: Account
) -> None:
    bounds = [at(0), at(2), at(3.5), at(6), at(7)]
    statements = [
        ledger.statement(session, history.id, "USD", start, end) for start, end in pairwise(bounds)
    ]
    for earlier, later in pairwise(statements):
        assert earlier.closing == later.opening
    assert statements[0].opening == Money(0, "USD")
    assert statements[-1].closing == ledger.balance(session, history.id, "USD")
    assert sum(len(s.lines) for s in statements) == 6


def test_an_empty_period_closes_at_its_opening(session: Session, history: Account) -> None:
    statement = ledger.statement(session, history.id, "USD", at(10), at(20))
    assert statement.lines == []
    assert statement.opening == statement.closing == Money(55, "USD")
    assert all(not total for total in statement.totals.values())


def test_a_statement_only_reads_its_own_account_and_currency(
    session: Session, history: Account
) -> None:
    other = make_account(session)
    post(session, other, LedgerKind.INVOICE, 999, 2)
    statement = ledger.statement(session, history.id, "USD", at(0), at(10))
    assert {line.entry.account_id for line in statement.lines} == {history.id}
    assert ledger.statement(session, history.id, "EUR", at(0), at(10)).lines == []


def test_a_period_must_end_after_it_starts(session: Session, history: Account) -> None:
    with pytest.raises(ValueError):
        ledger.statement(session, history.id, "USD", at(2), at(2))
    with pytest.raises(ValueError):
        ledger.statement(session, history.id, "USD", at(1), at(2), otherwise=(at(3), at(3)))


def test_a_statement_with_an_otherwise_period_reads_it_only_when_its_own_is_empty(
    session: Session, history: Account
) -> None:
    # NOTE: the default statement (this month, else last month) decides inside its one
    # statement; each answer must be the plain statement of the period it read.
    for asked, otherwise in (
        ((at(10), at(20)), (at(1.5), at(5.5))),
        ((at(2), at(4)), (at(0), at(7))),
    ):
        read = ledger.statement(session, history.id, "USD", *asked, otherwise=otherwise)
        chosen = asked if ledger.statement(session, history.id, "USD", *asked).lines else otherwise
        plain = ledger.statement(session, history.id, "USD", *chosen)
        assert (read.start, read.end) == chosen
        assert read.opening == plain.opening and read.closing == plain.closing
        assert [line.entry.id for line in read.lines] == [line.entry.id for line in plain.lines]
        assert [line.running for line in read.lines] == [line.running for line in plain.lines]
        assert read.totals == plain.totals
    # Both periods empty: the otherwise period, empty, at its opening balance.
    empty = ledger.statement(session, history.id, "USD", at(10), at(20), otherwise=(at(8), at(9)))
    assert (empty.start, empty.end) == (at(8), at(9))
    assert empty.lines == [] and empty.opening == Money(55, "USD")


# --- invariant 2 under random histories ---------------------------------------------------------

KINDS = ("issue", "pay", "credit", "refund", "void")

event_strategy = st.tuples(
    st.sampled_from(KINDS),
    st.integers(0, 500_000),  # an invoice's amount
    st.integers(0, 10_000),  # which open invoice or payment
    st.integers(1, 100),  # how much of it, in percent
    st.integers(0, 3 * 24 * 60),  # minutes since the event before
)


# A period boundary: minutes after T0, or exactly the moment of one of the events (so that
# entries on a boundary are exercised).
cut_strategy = st.one_of(
    st.integers(-60, 40 * 24 * 60).map(lambda minutes: ("minutes", minutes)),
    st.integers(0, 11).map(lambda index: ("event", index)),
)


@dataclass
class Model:
    """What the ledger should hold, kept independently of it: (moment, signed amount)."""

    moves: list[tuple[datetime, int]] = field(default_factory=list)
    moments: list[datetime] = field(default_factory=list)

    def add(self, when: datetime, signed: int) -> None:
        if signed:
            self.moves.append((when, signed))
            self.moments.append(when)

    def boundary(self, cut: tuple[str, int]) -> datetime:
        kind, value = cut
        if kind == "event" and self.moments:
            return self.moments[value % len(self.moments)]
        return T0 + timedelta(minutes=value)

    def before(self, moment: datetime) -> int:
        return sum(amount for when, amount in self.moves if when < moment)


def play(session: Session, account: Account, events: list[tuple[str, int, int, int, int]]) -> Model:
    model = Model()
    now = T0
    open_invoices: list[Invoice] = []
    payments: list[Payment] = []
    for kind, amount, pick, percent, gap in events:
        now += timedelta(minutes=gap)
        open_invoices = [i for i in open_invoices if i.status == InvoiceStatus.OPEN]
        refundable = [p for p in payments if p.amount_refunded_minor < p.amount_minor]
        if kind == "issue" or (kind in ("pay", "credit", "void") and not open_invoices):
            invoice = make_invoice(session, account, [amount], finalized_at=now)
            model.add(now, amount)
            if invoice.status == InvoiceStatus.OPEN:
                open_invoices.append(invoice)
        elif kind == "pay":
            invoice = open_invoices[pick % len(open_invoices)]
            part = max(1, invoice.amount_due_minor * percent // 100)
            money = Money(part, account.currency)
            payments.append(
                services.record_payment(
                    session, account, money, [(invoice, money)], received_at=now
                )
            )
            model.add(now, -part)
        elif kind == "credit":
            invoice = open_invoices[pick % len(open_invoices)]
            part = max(1, invoice.amount_due_minor * percent // 100)
            services.issue_credit_note(
                session, invoice, Money(part, account.currency), reason="goodwill", issued_at=now
            )
            model.add(now, -part)
        elif kind == "void":
            unpaid = [i for i in open_invoices if not i.amount_paid_minor]
            unpaid = [i for i in unpaid if not i.amount_credited_minor]
            if not unpaid:
                continue
            invoice = unpaid[pick % len(unpaid)]
            services.void_invoice(session, invoice, voided_at=now)
            model.add(now, -invoice.total_minor)
        elif kind == "refund" and refundable:
            payment = refundable[pick % len(refundable)]
            left = payment.amount_minor - payment.amount_refunded_minor
            part = max(1, left * percent // 100)
            refund = Refund(
                account_id=account.id,
                payment_id=payment.id,
                currency=account.currency,
                amount_minor=part,
                status="succeeded",
                idempotency_key=f"test-refund-{payment.id}-{payment.amount_refunded_minor}",
                succeeded_at=now,
            )
            session.add(refund)
            session.flush()
            services.record_refund_in_ledger(
                session,
                payment,
                Money(part, account.currency),
                refund_id=refund.id,
                refunded_at=now,
            )
            model.add(now, part)
    session.flush()
    return model


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    events=st.lists(event_strategy, min_size=1, max_size=12),
    cuts=st.lists(cut_strategy, min_size=2, max_size=5),
    currency=st.sampled_from(["USD", "JPY", "KWD"]),
)
def test_statements_add_up_and_match_the_ledger_for_any_history(
    session: Session,
    events: list[tuple[str, int, int, int, int]],
    cuts: list[tuple[str, int]],
    currency: str,
) -> None:
    nested = session.begin_nested()
    try:
        account = make_account(session, currency)
        model = play(session, account, events)
        bounds = sorted({model.boundary(cut) for cut in cuts})
        previous_closing: Money | None = None
        for start, end in pairwise(bounds):
            statement = ledger.statement(session, account.id, currency, start, end)
            t = statement.totals
            expected = (
                statement.opening
                + t["invoice"]
                - t["invoice_void"]
                - t["payment"]
                - t["credit_note"]
                + t["refund"]
            )
            assert statement.closing == expected
            assert statement.opening.minor == model.before(start)
            assert statement.closing.minor == model.before(end)
            assert statement.closing == ledger.balance(session, account.id, currency, before=end)
            if previous_closing is not None:
                assert statement.opening == previous_closing
            previous_closing = statement.closing
        total = session.scalar(
            select(func.coalesce(func.sum(LedgerEntry.amount_minor), 0)).where(
                LedgerEntry.account_id == account.id
            )
        )
        # The balance row kept by ledger.post is the sum of the ledger (none before any entry).
        assert balance_rows(session, account).get(currency, 0) == int(total)
        assert set(balance_rows(session, account)) <= {currency}
        assert (
            ledger.balance(session, account.id, currency).minor
            == int(total)
            == model.before(datetime.max.replace(tzinfo=UTC))
        )
        # What the ledger says is owed is what the open invoices say is owed, minus refunds
        # given back on top (a refund re-opens nothing, it raises the balance).
        due = sum(
            i.amount_due_minor
            for i in session.scalars(select(Invoice).where(Invoice.account_id == account.id))
        )
        refunded = sum(
            p.amount_refunded_minor
            for p in session.scalars(select(Payment).where(Payment.account_id == account.id))
        )
        assert int(total) == due + refunded
    finally:
        nested.rollback()
