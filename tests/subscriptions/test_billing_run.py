"""The billing run, in the rolled-back test session (each subscription's commit ends a savepoint).

Concurrency (several workers, SKIP LOCKED, one runner on SQLite) is in test_billing_run_workers.
"""

from __future__ import annotations

import sys
import types
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from portal.audit.models import AuditEvent
from portal.billing import ledger, services
from portal.billing.models import Invoice, LedgerEntry
from portal.db import has_pending_changes
from portal.notifications.models import OutboxEmail
from portal.subscriptions import billing_run
from portal.subscriptions.billing_run import run_billing
from portal.subscriptions.models import (
    Subscription,
    SubscriptionChange,
    TaxRate,
    UsageRecord,
)
from tests.factories import SELLER, make_account, make_price, make_subscription
from tests.notifications.email_world import as_sent

NY = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")


@pytest.fixture(autouse=True)
def _in_order(monkeypatch) -> None:
    """Runs start at the first due subscription (in production each starts at a random one)."""
    monkeypatch.setattr(billing_run, "_start_at", lambda n: 0)


def ny(*args: int) -> datetime:
    return datetime(*args, tzinfo=NY).astimezone(UTC)


def counts(session: Session) -> tuple[int, ...]:
    return tuple(
        int(session.scalar(select(func.count()).select_from(model)) or 0)
        for model in (Invoice, LedgerEntry, AuditEvent, OutboxEmail, SubscriptionChange)
    )


def ada(session: Session, **overrides) -> Subscription:
    account = make_account(session, timezone="America/New_York", country="US")
    price = make_price(session, pricing_model="per_unit", unit_amount_minor=1500)
    price.unit_label = "seat"
    fields = {
        "quantity": 5,
        "period_start": ny(2026, 11, 21),
        "period_end": ny(2026, 12, 21),
    }
    fields.update(overrides)
    subscription = make_subscription(session, account, price, **fields)
    session.commit()
    return subscription


def run(session: Session, day: date, **kwargs) -> billing_run.BillingRunSummary:
    return run_billing(session, day, seller=SELLER, **kwargs)


def invoices_of(session: Session, subscription: Subscription) -> list[Invoice]:
    return list(
        session.scalars(
            select(Invoice)
            .where(Invoice.subscription_id == subscription.id)
            .order_by(Invoice.billing_period_start)
        )
    )


def assert_ledger_invariant(session: Session, account_id: int, currency: str) -> None:
    total = session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount_minor), 0)).where(
            LedgerEntry.account_id == account_id, LedgerEntry.currency == currency
        )
    )
    assert ledger.balance(session, account_id, currency).minor == total


def test_renewal_bills_the_next_period_in_advance_on_the_renewal_date(session, clock) -> None:
    clock.set(datetime(2026, 12, 21, 6, 0, tzinfo=UTC))
    subscription = ada(session)
    assert run(session, date(2026, 12, 20)).invoices == 0  # renews Dec 21 in New York
    summary = run(session, date(2026, 12, 21))
    assert (summary.total, summary.invoices, summary.renewed) == (1, 1, 1)
    (invoice,) = invoices_of(session, subscription)
    assert invoice.status == "open" and invoice.number
    assert invoice.billing_period_start == ny(2026, 12, 21)
    assert invoice.issue_date == date(2026, 12, 21)
    (line,) = invoice.lines
    assert line.description.endswith("plan (5 seats)")
    assert (line.kind, line.quantity, line.unit_amount_minor, line.amount_minor) == (
        "subscription",
        5,
        1500,
        7500,
    )
    assert (line.period_start, line.period_end) == (date(2026, 12, 21), date(2027, 1, 21))
    assert invoice.total_minor == 7500
    session.refresh(subscription)
    assert subscription.current_period_start == ny(2026, 12, 21)
    assert subscription.current_period_end == ny(2027, 1, 21)
    assert subscription.version == 2
    entry = session.scalar(select(LedgerEntry).where(LedgerEntry.invoice_id == invoice.id))
    assert entry is not None and entry.amount_minor == 7500
    mail = session.scalar(
        select(OutboxEmail).where(OutboxEmail.dedupe_key == f"invoice_issued:{invoice.id}")
    )
    assert mail is not None and invoice.number in mail.subject
    assert invoice.number in as_sent(session, mail).text_body
    event = session.scalar(
        select(AuditEvent).where(
            AuditEvent.action == "subscription.renewed",
            AuditEvent.target_id == subscription.public_id,
        )
    )
    assert event.before["period_end"] == ny(2026, 12, 21).isoformat()
    assert event.after["period_end"] == ny(2027, 1, 21).isoformat()
    assert_ledger_invariant(session, subscription.account_id, "USD")


def test_running_twice_for_the_same_date_changes_nothing(session, clock) -> None:
    clock.set(datetime(2026, 12, 21, 6, 0, tzinfo=UTC))
    subscription = ada(session)
    first = run(session, date(2026, 12, 21))
    assert first.invoices == 1
    after_first = counts(session)
    session.refresh(subscription)
    state = (subscription.current_period_end, subscription.version)
    second = run(session, date(2026, 12, 21))
    assert (second.total, second.invoices) == (0, 0)
    assert counts(session) == after_first
    session.refresh(subscription)
    assert (subscription.current_period_end, subscription.version) == state


def test_a_subscription_months_behind_is_caught_up_one_period_at_a_time(session, clock) -> None:
    clock.set(datetime(2027, 3, 1, tzinfo=UTC))
    subscription = ada(session)
    summary = run(session, date(2027, 2, 25))
    assert summary.invoices == 3  # Dec 21, Jan 21, Feb 21
    starts = [inv.billing_period_start for inv in invoices_of(session, subscription)]
    assert starts == [ny(2026, 12, 21), ny(2027, 1, 21), ny(2027, 2, 21)]
    assert len({inv.number for inv in invoices_of(session, subscription)}) == 3


def test_metered_fee_and_usage_are_billed_in_arrears_with_tax(session, clock) -> None:
    clock.set(datetime(2026, 12, 1, 8, 0, tzinfo=UTC))
    account = make_account(session, "EUR", timezone="Europe/Berlin", country="DE")
    price = make_price(
        session,
        currency="EUR",
        pricing_model="metered",
        unit_amount_minor=250,
        flat_amount_minor=4900,
        tax_rate_bp=1900,
    )
    price.unit_label = "GB"
    start = datetime(2026, 11, 1, tzinfo=BERLIN).astimezone(UTC)
    end = datetime(2026, 12, 1, tzinfo=BERLIN).astimezone(UTC)
    subscription = make_subscription(session, account, price, period_start=start, period_end=end)
    session.add_all(
        [
            UsageRecord(
                subscription_id=subscription.id,
                quantity=60,
                occurred_at=start + timedelta(days=3),
                idempotency_key="a",
            ),
            UsageRecord(
                subscription_id=subscription.id,
                quantity=36,
                occurred_at=end - timedelta(seconds=1),
                idempotency_key="b",
            ),
            # the next period's usage is not billed now
            UsageRecord(
                subscription_id=subscription.id, quantity=999, occurred_at=end, idempotency_key="c"
            ),
        ]
    )
    session.commit()
    summary = run(session, date(2026, 12, 1))
    assert summary.invoices == 1
    (invoice,) = invoices_of(session, subscription)
    fee, usage = invoice.lines
    assert (fee.amount_minor, fee.tax_minor, fee.tax_rate_bp) == (4900, 931, 1900)
    assert (usage.kind, usage.quantity, usage.amount_minor, usage.tax_minor) == (
        "usage",
        96,
        24000,
        4560,
    )
    assert (fee.period_start, fee.period_end) == (date(2026, 11, 1), date(2026, 12, 1))
    assert invoice.total_minor == 4900 + 931 + 24000 + 4560
    assert invoice.total_minor == sum(line.amount_minor + line.tax_minor for line in invoice.lines)
    assert fee.tax_rate_id == price.tax_rate_id


def test_a_trial_ending_starts_the_first_paid_period_and_bills_no_trial_usage(
    session, clock
) -> None:
    clock.set(datetime(2026, 12, 5, 12, tzinfo=UTC))
    subscription = ada(
        session,
        status="trialing",
        period_start=ny(2026, 11, 21),
        period_end=ny(2026, 12, 5),
        trial_end=ny(2026, 12, 5),
    )
    summary = run(session, date(2026, 12, 5))
    assert (summary.trials_ended, summary.invoices) == (1, 1)
    session.refresh(subscription)
    assert subscription.status == "active"
    assert subscription.current_period_end == ny(2027, 1, 5)
    (invoice,) = invoices_of(session, subscription)
    assert invoice.total_minor == 7500 and invoice.billing_period_start == ny(2026, 12, 5)


def test_a_scheduled_downgrade_is_applied_at_the_period_end(session, clock) -> None:
    clock.set(datetime(2026, 12, 21, 6, tzinfo=UTC))
    subscription = ada(session)
    cheaper = make_price(session, pricing_model="per_unit", unit_amount_minor=900)
    change = SubscriptionChange(
        subscription_id=subscription.id,
        kind="plan",
        status="scheduled",
        timing="period_end",
        actor_kind="customer",
        effective_at=subscription.current_period_end,
        from_price_id=subscription.price_id,
        to_price_id=cheaper.id,
        from_quantity=5,
        to_quantity=3,
    )
    session.add(change)
    session.commit()
    summary = run(session, date(2026, 12, 21))
    assert (summary.invoices, summary.changes_applied) == (1, 1)
    session.refresh(subscription)
    session.refresh(change)
    assert (subscription.price_id, subscription.quantity) == (cheaper.id, 3)
    assert change.status == "applied" and change.applied_at is not None
    (invoice,) = invoices_of(session, subscription)
    assert change.invoice_id == invoice.id
    assert invoice.total_minor == 2700
    assert invoice.lines[0].subscription_change_id == change.id


def test_a_scheduled_cancel_ends_the_subscription_without_an_invoice(session, clock) -> None:
    clock.set(datetime(2026, 12, 21, 6, tzinfo=UTC))
    subscription = ada(session)
    session.add(
        SubscriptionChange(
            subscription_id=subscription.id,
            kind="cancel",
            status="scheduled",
            timing="period_end",
            effective_at=subscription.current_period_end,
            reason="too_expensive",
            reason_text="We are moving on",
        )
    )
    session.commit()
    summary = run(session, date(2026, 12, 21))
    assert (summary.canceled, summary.invoices) == (1, 0)
    session.refresh(subscription)
    assert subscription.status == "canceled" and subscription.canceled_at == ny(2026, 12, 21)
    assert run(session, date(2027, 6, 1)).total == 0


@pytest.mark.parametrize("status", ["paused", "canceled"])
def test_a_paused_or_canceled_subscription_makes_no_invoice(session, clock, status) -> None:
    clock.set(datetime(2027, 2, 1, tzinfo=UTC))
    subscription = ada(session, status=status)
    before = counts(session)
    assert run(session, date(2027, 2, 1)).invoices == 0
    assert counts(session) == before
    assert invoices_of(session, subscription) == []


def test_a_pause_that_is_over_resumes_with_a_new_period(session, clock) -> None:
    clock.set(datetime(2027, 1, 10, 12, tzinfo=UTC))
    subscription = ada(session, status="paused")
    subscription.pause_until = ny(2027, 1, 10)
    session.commit()
    summary = run(session, date(2027, 1, 10))
    assert (summary.resumed, summary.invoices) == (1, 1)
    session.refresh(subscription)
    assert subscription.status == "active"
    assert (subscription.current_period_start, subscription.current_period_end) == (
        ny(2027, 1, 10),
        ny(2027, 2, 10),
    )


def test_a_discount_applies_for_its_periods_and_takes_its_tax_with_it(session, clock) -> None:
    clock.set(datetime(2027, 1, 22, tzinfo=UTC))
    account = make_account(session, "EUR", timezone="UTC", country="DE")
    price = make_price(
        session, currency="EUR", pricing_model="flat", flat_amount_minor=10000, tax_rate_bp=1900
    )
    subscription = make_subscription(
        session,
        account,
        price,
        period_start=datetime(2026, 11, 21, tzinfo=UTC),
        period_end=datetime(2026, 12, 21, tzinfo=UTC),
    )
    subscription.discount_bp, subscription.discount_periods_left = 2000, 1
    session.commit()
    run(session, date(2027, 1, 21))
    first, second = invoices_of(session, subscription)
    assert [(line.kind, line.amount_minor, line.tax_minor) for line in first.lines] == [
        ("subscription", 10000, 1900),
        ("discount", -2000, -380),
    ]
    assert (first.subtotal_minor, first.discount_minor, first.tax_minor, first.total_minor) == (
        10000,
        2000,
        1520,
        9520,
    )
    assert second.total_minor == 11900
    session.refresh(subscription)
    assert (subscription.discount_bp, subscription.discount_periods_left) == (0, 0)


def test_a_tax_rate_for_another_country_is_not_charged(session, clock) -> None:
    clock.set(datetime(2026, 12, 21, 6, tzinfo=UTC))
    subscription = ada(session)
    rate = TaxRate(name="USt 19%", rate_bp=1900, country="DE")
    session.add(rate)
    session.flush()
    subscription.price.tax_rate_id = rate.id
    session.commit()
    run(session, date(2026, 12, 21))
    (invoice,) = invoices_of(session, subscription)
    assert invoice.tax_minor == 0


def test_a_second_invoice_for_the_same_period_is_impossible(session) -> None:
    subscription = ada(session)
    account = subscription.account

    def draft() -> Invoice:
        return services.create_draft_invoice(
            session,
            account,
            [services.LineInput("Team", 100)],
            subscription_id=subscription.id,
            billing_period_start=ny(2026, 12, 21),
        )

    draft()
    with pytest.raises(IntegrityError):
        draft()


class Crash(BaseException):
    """Stands for the process dying (not an error the run catches)."""


def test_a_crash_mid_run_leaves_no_half_made_invoice_and_the_next_run_finishes(
    session, clock, monkeypatch
) -> None:
    clock.set(datetime(2026, 12, 21, 6, tzinfo=UTC))
    subs = [ada(session) for _ in range(3)]
    monkeypatch.setattr(billing_run, "BATCH_SIZE", 2)  # batches [0, 1] and [2]
    real_issue = billing_run.issue_invoice_rows
    calls = []

    def crash_in_the_second_batch(session_, drafts, **kwargs):
        invoices = real_issue(session_, drafts, **kwargs)  # numbered, posted, email queued …
        calls.append([inv.id for inv in invoices])
        if len(calls) == 2:
            raise Crash()  # … and then the process dies before the batch's commit
        return invoices

    monkeypatch.setattr(billing_run, "issue_invoice_rows", crash_in_the_second_batch)
    with pytest.raises(Crash):
        run(session, date(2026, 12, 21))
    session.rollback()  # the dead process's transaction never commits
    # NOTE: the first batch committed whole; of the second nothing is left.
    assert [len(invoices_of(session, s)) for s in subs] == [1, 1, 0]
    assert session.scalar(select(func.count(LedgerEntry.id))) == 2
    assert session.scalar(select(func.count(OutboxEmail.id))) == 2
    monkeypatch.setattr(billing_run, "issue_invoice_rows", real_issue)
    summary = run(session, date(2026, 12, 21))
    assert summary.invoices == 1
    assert [len(invoices_of(session, s)) for s in subs] == [1, 1, 1]
    numbers = [inv.number for s in subs for inv in invoices_of(session, s)]
    assert len(set(numbers)) == 3


def test_an_error_on_one_subscription_rolls_it_back_and_the_run_goes_on(
    session, clock, monkeypatch
) -> None:
    clock.set(datetime(2026, 12, 21, 6, tzinfo=UTC))
    subs = [ada(session) for _ in range(3)]

    def fail_for_the_second(sub_id: int) -> None:
        if sub_id == subs[1].id:
            raise RuntimeError("boom")

    monkeypatch.setattr(billing_run, "_after_claim", fail_for_the_second)
    summary = run(session, date(2026, 12, 21))
    assert (summary.invoices, summary.failed) == (2, 1)
    assert [len(invoices_of(session, s)) for s in subs] == [1, 0, 1]


def test_progress_is_reported_and_the_summary_reads_well(session, clock) -> None:
    clock.set(datetime(2026, 12, 21, 6, tzinfo=UTC))
    for _ in range(3):
        ada(session)
    seen = []
    summary = run(
        session, date(2026, 12, 21), progress=lambda done, total: seen.append((done, total))
    )
    assert seen == [(1, 3), (2, 3), (3, 3)]
    text = "\n".join(summary.lines())
    assert "3 due, 3 invoices (225.00 USD)" in text and "invoices/s" in text


def test_new_invoices_are_collected_after_their_commit(session, clock, monkeypatch) -> None:
    clock.set(datetime(2026, 12, 21, 6, tzinfo=UTC))
    subscription = ada(session)
    calls = []

    def collect_invoice(session_, invoice_id, gw, *, actor, reason):
        calls.append((invoice_id, gw, reason, has_pending_changes(session_)))
        return types.SimpleNamespace(status="paid", message="", attempt_id=None)

    fake = types.ModuleType("portal.payments.collection")
    fake.collect_invoice = collect_invoice  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "portal.payments.collection", fake)
    gateway = object()
    summary = run(session, date(2026, 12, 21), gateway=gateway)
    (invoice,) = invoices_of(session, subscription)
    assert calls == [(invoice.id, gateway, "billing_run", False)]
    assert summary.collection == {"paid": 1}


def test_pending_changes_are_refused_rather_than_committed(session) -> None:
    ada(session)
    make_account(session)  # flushed, not committed
    from portal.errors import PendingChanges

    with pytest.raises(PendingChanges):
        run(session, date(2026, 12, 21))


def test_the_cli_runs_the_billing_and_prints_a_summary(app, session, clock) -> None:
    clock.set(datetime(2026, 12, 21, 6, tzinfo=UTC))
    ada(session)
    result = app.test_cli_runner().invoke(
        args=["billing", "run", "--as-of", "2026-12-21", "--no-collect"]
    )
    assert result.exit_code == 0, result.output
    assert "1 due, 1 invoices (75.00 USD)" in result.output
    again = app.test_cli_runner().invoke(
        args=["billing", "run", "--as-of", "2026-12-21", "--no-collect"]
    )
    assert "0 due, 0 invoices" in again.output
    bad = app.test_cli_runner().invoke(args=["billing", "run", "--as-of", "21/12/2026"])
    assert bad.exit_code == 2 and "Invalid value" in bad.output


def test_without_a_saved_card_the_invoice_stays_open(session, clock) -> None:
    clock.set(datetime(2026, 12, 21, 6, tzinfo=UTC))
    subscription = ada(session)
    summary = run(session, date(2026, 12, 21), gateway=object())
    assert summary.collection == {"no_card": 1}
    (invoice,) = invoices_of(session, subscription)
    assert invoice.status == "open" and invoice.amount_due_minor == 7500


def test_a_declined_card_leaves_the_invoice_open_and_tells_the_customer(
    session, clock, monkeypatch
) -> None:
    clock.set(datetime(2026, 12, 21, 6, tzinfo=UTC))
    subscription = ada(session)
    fake = types.ModuleType("portal.payments.collection")
    fake.collect_invoice = lambda *a, **k: types.SimpleNamespace(  # type: ignore[attr-defined]
        status="failed", message="Your card was declined.", attempt_id=None
    )
    monkeypatch.setitem(sys.modules, "portal.payments.collection", fake)
    summary = run(session, date(2026, 12, 21), gateway=object())
    assert summary.collection == {"failed": 1}
    (invoice,) = invoices_of(session, subscription)
    assert invoice.status == "open"
    mail = session.scalar(
        select(OutboxEmail).where(
            OutboxEmail.dedupe_key == f"payment_failed:billing_run:{invoice.id}"
        )
    )
    assert mail is not None and "Your card was declined." in mail.text_body


def test_the_run_leaves_the_garbage_collector_as_it_found_it(session, clock) -> None:
    import gc

    clock.set(datetime(2026, 12, 21, 6, 0, tzinfo=UTC))
    ada(session)
    ada(session)
    # NOTE: a test process that imported a server module (wsgi.py freezes at start) starts
    # this test with nothing frozen, as a billing worker's process is.
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    during: list[int] = []
    summary = run(
        session, date(2026, 12, 21), progress=lambda *_: during.append(gc.get_freeze_count())
    )
    assert summary.invoices == 2
    # The objects from before the run were frozen while it ran, and are back after it.
    assert during and all(count > 0 for count in during)
    assert gc.get_freeze_count() == 0
    # Objects someone else froze stay frozen.
    gc.freeze()
    try:
        ada(session)
        run(session, date(2026, 12, 21))
        assert gc.get_freeze_count() > 0  # not unfrozen by the run
    finally:
        gc.unfreeze()
