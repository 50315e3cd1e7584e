"""The demo data of CONTRACT.md, seeded into the test transaction with a frozen clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import pairwise

import pytest
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal import clock as portal_clock
from portal.accounts.models import Account, Membership, User
from portal.billing import ledger
from portal.billing.models import CreditNote, Invoice, InvoiceStatus
from portal.demo import seed_demo
from portal.extensions import db
from portal.payments.models import Payment, PaymentMethod
from portal.subscriptions.models import Subscription, UsageRecord


@pytest.fixture()
def demo(
    app: Flask, session: Session, clock: portal_clock.FrozenClock
) -> Iterator[dict[str, Account]]:
    created = seed_demo(session, app.config["SELLER"])
    assert created, "the first seeding creates the demo"
    accounts = session.scalars(select(Account)).all()
    yield {a.invoice_prefix: a for a in accounts}


def owner_of(session: Session, email: str) -> Account:
    user = session.scalar(select(User).where(User.email == email))
    assert user is not None, f"no user {email}"
    assert user.staff_role is None
    [membership] = user.memberships
    assert membership.role == "owner"
    return membership.account


def invoices_of(session: Session, account: Account) -> list[Invoice]:
    return list(
        session.scalars(
            select(Invoice)
            .where(Invoice.account_id == account.id)
            .order_by(Invoice.issue_date, Invoice.id)
        )
    )


def subscription_of(session: Session, account: Account) -> Subscription:
    [subscription] = session.scalars(
        select(Subscription).where(Subscription.account_id == account.id)
    ).all()
    return subscription


def test_ada_has_a_year_of_team_plan_history(session: Session, demo: dict[str, Account]) -> None:
    account = owner_of(session, "ada@example.com")
    assert (account.name, account.currency) == ("Ada Lovelace Studio", "USD")
    subscription = subscription_of(session, account)
    assert subscription.price.plan.name == "Team"
    assert subscription.price.pricing_model == "per_unit"
    assert (subscription.quantity, subscription.status) == (5, "active")

    [card] = session.scalars(
        select(PaymentMethod).where(PaymentMethod.account_id == account.id)
    ).all()
    assert card.is_default and card.detached_at is None

    today = portal_clock.today(account.timezone)
    invoices = invoices_of(session, account)
    assert len(invoices) == 12
    assert [i.number for i in invoices] == [f"ALS-{n:04d}" for n in range(1, 13)]
    statuses = [i.status for i in invoices]
    assert statuses.count(InvoiceStatus.PAID) == 10
    assert statuses.count(InvoiceStatus.OPEN) == 2
    not_yet_due = [i for i in invoices if i.status == "open" and i.due_date >= today]
    overdue = [i for i in invoices if i.is_overdue(today)]
    assert len(not_yet_due) == 1 and len(overdue) == 1
    assert not_yet_due[0] is invoices[-1] and overdue[0] is invoices[-2]

    notes = session.scalars(select(CreditNote).where(CreditNote.account_id == account.id)).all()
    assert len({note.invoice_id for note in notes}) == 1
    assert [note.number for note in notes] == ["ALS-CN-0001"]
    credited = notes[0].invoice
    assert credited.status == InvoiceStatus.PAID
    assert credited.amount_credited_minor > 0
    assert credited.amount_paid_minor + credited.amount_credited_minor == credited.total_minor


def test_grace_is_on_a_metered_plan_in_euros_with_open_invoices(
    session: Session, demo: dict[str, Account]
) -> None:
    account = owner_of(session, "grace@example.com")
    assert account.name == "Hopper Consulting GmbH"
    assert (account.currency, account.locale) == ("EUR", "de_DE")
    subscription = subscription_of(session, account)
    assert subscription.price.pricing_model == "metered"
    usage = session.scalar(
        select(func.sum(UsageRecord.quantity)).where(UsageRecord.subscription_id == subscription.id)
    )
    assert usage and usage > 0
    invoices = invoices_of(session, account)
    assert invoices and all(i.currency == "EUR" for i in invoices)
    assert sum(1 for i in invoices if i.status == InvoiceStatus.OPEN) >= 1
    assert all(any(line.kind == "usage" for line in i.lines) for i in invoices)


def test_kenji_is_billed_in_yen(session: Session, demo: dict[str, Account]) -> None:
    account = owner_of(session, "kenji@example.com")
    assert (account.name, account.currency) == ("Kenji Foods", "JPY")
    invoices = invoices_of(session, account)
    assert invoices and all(i.currency == "JPY" for i in invoices)


def test_support_and_admin_are_staff_without_accounts(
    session: Session, demo: dict[str, Account]
) -> None:
    for email, role in (("support@example.com", "support"), ("admin@example.com", "admin")):
        user = session.scalar(select(User).where(User.email == email))
        assert user is not None and user.staff_role == role
        assert user.memberships == []


def test_exactly_the_three_customer_accounts_exist(
    session: Session, demo: dict[str, Account]
) -> None:
    assert set(demo) == {"ALS", "HCG", "KF"}
    assert session.scalar(select(func.count()).select_from(Membership)) == 3


def test_seeding_again_changes_nothing(
    app: Flask, session: Session, demo: dict[str, Account], clock: portal_clock.FrozenClock
) -> None:
    def counts() -> dict[str, int]:
        session.flush()
        return {
            table.name: session.scalar(select(func.count()).select_from(table)) or 0
            for table in db.metadata.sorted_tables
        }

    before = counts()
    clock.advance(days=3)  # a later run finds everything and must not top anything up
    assert seed_demo(session, app.config["SELLER"]) == []
    assert counts() == before
    assert before["invoices"] > 0 and before["ledger_entries"] > 0


@pytest.mark.parametrize("prefix", ["ALS", "HCG", "KF"])
def test_every_demo_balance_is_its_history_and_its_open_invoices(
    session: Session, demo: dict[str, Account], prefix: str
) -> None:
    account = demo[prefix]
    invoices = invoices_of(session, account)
    issued = sum(i.total_minor for i in invoices if i.status not in ("draft", "void"))
    payments = session.scalars(select(Payment).where(Payment.account_id == account.id)).all()
    paid = sum(p.amount_minor for p in payments)
    refunded = sum(p.amount_refunded_minor for p in payments)
    credited = sum(
        n.amount_minor
        for n in session.scalars(select(CreditNote).where(CreditNote.account_id == account.id))
    )
    open_due = sum(i.amount_due_minor for i in invoices if i.status == InvoiceStatus.OPEN)
    balance = ledger.balance(session, account.id, account.currency).minor
    assert balance == issued - paid + refunded - credited
    assert balance == open_due
    assert open_due > 0


@pytest.mark.parametrize(
    "today",
    [
        # The latest period starts ten days before "today"; these put it on a month's last days,
        # where adding and subtracting months clamps (Jan 31, Mar 30, May 31) and a leap day.
        datetime(2026, 1, 10, 12, tzinfo=UTC),
        datetime(2026, 4, 9, 12, tzinfo=UTC),
        datetime(2026, 6, 10, 12, tzinfo=UTC),
        datetime(2026, 9, 10, 12, tzinfo=UTC),
        datetime(2028, 3, 10, 12, tzinfo=UTC),
        datetime(2026, 12, 31, 23, tzinfo=UTC),
    ],
    ids=lambda moment: moment.date().isoformat(),
)
def test_the_demo_seeds_on_any_day_with_its_facts_intact(
    app: Flask, session: Session, clock: portal_clock.FrozenClock, today: datetime
) -> None:
    clock.set(today)
    seed_demo(session, app.config["SELLER"])
    for prefix in ("ALS", "HCG", "KF"):
        account = session.scalar(select(Account).where(Account.invoice_prefix == prefix))
        assert account is not None
        local_today = portal_clock.today(account.timezone)
        invoices = invoices_of(session, account)
        overdue = [i for i in invoices if i.is_overdue(local_today)]
        not_yet_due = [i for i in invoices if i.status == "open" and i.due_date >= local_today]
        assert (len(overdue), len(not_yet_due)) == (1, 1), prefix
        open_due = sum(i.amount_due_minor for i in invoices if i.status == "open")
        assert ledger.balance(session, account.id, account.currency).minor == open_due
        periods = [(i.period_start, i.period_end) for i in invoices]
        for (_, end), (start, _) in pairwise(periods):
            assert end == start, f"{prefix}: billing periods must follow each other: {periods}"


def test_ada_has_one_open_dispute_with_a_reply_waiting_for_her(
    app: Flask, session: Session, demo: dict[str, Account]
) -> None:
    from portal.audit.models import AuditEvent
    from portal.disputes.models import Dispute, DisputeMessage
    from portal.notifications.models import OutboxEmail

    account = demo["ALS"]
    [dispute] = session.scalars(select(Dispute).where(Dispute.account_id == account.id)).all()
    assert (dispute.status, dispute.source, dispute.reason) == (
        "waiting_on_customer",
        "customer",
        "wrong_amount",
    )
    invoice = session.get(Invoice, dispute.invoice_id)
    assert invoice is not None and invoice.status == InvoiceStatus.PAID
    [line] = dispute.lines
    seat = subscription_of(session, account).price.unit_amount_minor
    assert line.amount_minor == dispute.amount_minor == seat
    assert [e.status for e in dispute.events] == ["open", "in_review", "waiting_on_customer"]
    [reply] = session.scalars(
        select(DisputeMessage).where(DisputeMessage.dispute_id == dispute.id)
    ).all()
    assert (reply.author_kind, reply.is_internal) == ("staff", False)
    assert dispute.first_response_at == reply.created_at
    assert dispute.created_at < reply.created_at < portal_clock.now()
    assert dispute.assigned_to_user_id == reply.author_user_id
    # Its history is audited; its emails are not sent (the demo writes history, not mail).
    actions = set(
        session.scalars(select(AuditEvent.action).where(AuditEvent.target_id == dispute.public_id))
    )
    assert {"dispute.opened", "dispute.message_added", "dispute.waiting_on_customer"} <= actions
    assert not session.scalars(
        select(OutboxEmail).where(OutboxEmail.template.like("dispute_%"))
    ).all()
    # Nothing is held on a paid invoice: the balance is still the open invoices.
    assert ledger.balance(session, account.id, account.currency).minor == sum(
        i.amount_due_minor for i in invoices_of(session, account) if i.status == "open"
    )


def test_the_demo_dispute_shows_on_both_sides(
    app: Flask, session: Session, demo: dict[str, Account]
) -> None:
    from tests.conftest import login_as

    client = app.test_client()
    ada = session.scalar(select(User).where(User.email == "ada@example.com"))
    login_as(client, ada)
    page = client.get("/disputes").get_data(as_text=True)
    assert "Waiting for you" in page
    client = app.test_client()
    support = session.scalar(select(User).where(User.email == "support@example.com"))
    login_as(client, support)
    queue = client.get("/staff/").get_data(as_text=True)
    assert "Ada Lovelace Studio" in queue and 'data-testid="queue-row"' in queue
