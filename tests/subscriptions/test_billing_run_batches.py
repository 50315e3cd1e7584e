"""The billing run in batches (issue 10, benchmark): a batch is one transaction of few
statements; one failing subscription costs only itself; several series in one batch stay
gapless; line descriptions are written in each account's language."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from portal.billing.models import Invoice, LedgerEntry
from portal.notifications.models import OutboxEmail
from portal.subscriptions import billing_run
from tests.factories import make_account, make_price, make_subscription
from tests.subscriptions.test_billing_run import (  # noqa: F401 - the autouse fixture
    _in_order,
    ada,
    assert_ledger_invariant,
    invoices_of,
    ny,
    run,
)
from tests.test_i18n import (  # noqa: F401 - fixtures
    PSEUDO_LANGUAGE,
    pseudo,
    pseudo_app,
    pseudo_translations,
)

DAY = date(2026, 12, 21)
NOW = datetime(2026, 12, 21, 6, tzinfo=UTC)


@contextmanager
def statements(session: Session) -> Iterator[list[tuple[str, bool]]]:
    """The SQL statements the session's connection runs, each with whether it was part of an
    executemany (a bulk INSERT or UPDATE: one call on PostgreSQL, a row each on SQLite, whose
    driver runs every row as its own statement in the same process)."""
    seen: list[tuple[str, bool]] = []
    engine = session.get_bind().engine

    def note(_conn, _cursor, statement, _params, _context, many) -> None:  # type: ignore[no-untyped-def]
        seen.append((statement, many))

    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)


def test_a_batch_costs_a_few_statements_per_invoice_not_twenty(session, clock) -> None:
    clock.set(NOW)
    subs = [ada(session) for _ in range(30)]
    with statements(session) as seen:
        summary = run(session, DAY)
    assert summary.invoices == 30
    # NOTE: what is left per invoice is the "invoice issued" email (portal.mail.queue_email:
    # the recipient's preferences, the deep link's member lookup, the outbox row); everything
    # else is per batch. One subscription per transaction took 22 per invoice.
    emails = ("outbox_emails", "email_preferences", "FROM users")
    per_invoice = [s for s, _ in seen if any(word in s for word in emails)]
    bulk = [s for s, many in seen if many and s not in per_invoice]
    others = len(seen) - len(per_invoice) - len(bulk)
    assert others <= 40, f"{others} statements besides the emails and bulk rows for 30 invoices"
    assert len({s for s in bulk}) <= 10  # invoices, lines, audit events, ledger, balances, …
    if session.get_bind().dialect.name == "postgresql":
        assert len(seen) <= 30 * 3 + 40, f"{len(seen)} statements for 30 invoices"
    for sub in subs:
        (invoice,) = invoices_of(session, sub)
        assert sum(line.amount_minor + line.tax_minor for line in invoice.lines) == (
            invoice.total_minor
        )
        assert_ledger_invariant(session, sub.account_id, "USD")


def test_an_account_with_several_subscriptions_gets_consecutive_numbers_in_a_batch(
    session, clock
) -> None:
    clock.set(NOW)
    price = make_price(session, pricing_model="per_unit", unit_amount_minor=1500)
    several = make_account(session, invoice_prefix="SEVERAL", timezone="America/New_York")
    one = make_account(session, invoice_prefix="ONE", timezone="America/New_York")
    for account in (several, several, one, several):
        make_subscription(
            session, account, price, period_start=ny(2026, 11, 21), period_end=ny(2026, 12, 21)
        )
    session.commit()
    assert run(session, DAY).invoices == 4
    numbers = sorted(session.scalars(select(Invoice.number)))
    assert numbers == ["ONE-0001", "SEVERAL-0001", "SEVERAL-0002", "SEVERAL-0003"]
    assert run(session, DAY).invoices == 0  # and a second run for the day changes nothing
    assert len(list(session.scalars(select(Invoice.id)))) == 4
    # the next number of each series follows on from the batch
    extra = make_subscription(
        session, several, price, period_start=ny(2026, 11, 22), period_end=ny(2026, 12, 22)
    )
    session.commit()
    assert run(session, date(2026, 12, 22)).invoices == 1
    (invoice,) = invoices_of(session, extra)
    assert invoice.number == "SEVERAL-0004"


@pytest.mark.parametrize("where", ["after the claim", "while issuing"])
def test_one_failing_subscription_in_a_batch_loses_and_doubles_nothing(
    session, clock, monkeypatch, where: str
) -> None:
    clock.set(NOW)
    subs = [ada(session) for _ in range(5)]
    bad = subs[2].id
    real = billing_run.issue_invoice_rows

    def fail(sub_id: int) -> None:
        if sub_id == bad:
            raise RuntimeError("boom")

    def fail_with_the_bad_one(session_, drafts, **kwargs):  # type: ignore[no-untyped-def]
        invoices = real(session_, drafts, **kwargs)  # its SQL ran: the batch is dirty
        if any(draft.subscription_id == bad for draft in drafts):
            raise RuntimeError("boom")
        return invoices

    if where == "after the claim":
        monkeypatch.setattr(billing_run, "_after_claim", fail)
    else:
        monkeypatch.setattr(billing_run, "issue_invoice_rows", fail_with_the_bad_one)
    summary = run(session, DAY)
    assert (summary.invoices, summary.failed, summary.skipped_done) == (4, 1, 0)
    assert summary.batches_retried == 1
    assert [len(invoices_of(session, s)) for s in subs] == [1, 1, 0, 1, 1]
    assert session.scalar(select(func.count(LedgerEntry.id))) == 4
    assert session.scalar(select(func.count(OutboxEmail.id))) == 4
    assert sorted(summary.invoice_ids) == sorted(session.scalars(select(Invoice.id)))
    monkeypatch.setattr(billing_run, "_after_claim", None)
    monkeypatch.setattr(billing_run, "issue_invoice_rows", real)
    again = run(session, DAY)  # the next run finishes the one that failed
    assert (again.invoices, again.failed) == (1, 0)
    assert [len(invoices_of(session, s)) for s in subs] == [1, 1, 1, 1, 1]


def test_progress_is_reported_per_subscription_across_batches(session, clock, monkeypatch):
    clock.set(NOW)
    monkeypatch.setattr(billing_run, "BATCH_SIZE", 2)
    for _ in range(5):
        ada(session)
    seen: list[tuple[int, int]] = []
    summary = run(session, DAY, progress=lambda done, total: seen.append((done, total)))
    assert summary.invoices == 5
    assert seen == [(n, 5) for n in range(1, 6)]


@pytest.mark.usefixtures("pseudo_app")
def test_line_descriptions_are_written_in_the_accounts_language(session, clock) -> None:
    clock.set(NOW)
    english = ada(session)
    translated = ada(session)
    translated.account.locale = PSEUDO_LANGUAGE
    translated.discount_bp, translated.discount_periods_left = 1000, 1
    session.commit()
    assert run(session, DAY).invoices == 2
    (plain,) = invoices_of(session, english)
    assert [line.description for line in plain.lines] == [
        f"{english.price.plan.name} plan (5 seats)"
    ]
    (local,) = invoices_of(session, translated)
    plan = next(line for line in local.lines if line.kind == "subscription")
    discount = next(line for line in local.lines if line.kind == "discount")
    name = translated.price.plan.name
    assert plan.description == pseudo("%(plan)s plan (%(num)d %(unit)ss)") % {
        "plan": name,
        "num": 5,
        "unit": "seat",
    }
    assert discount.description == pseudo("Discount %(percent)s%% on %(line)s") % {
        "percent": "10",
        "line": plan.description,
    }
