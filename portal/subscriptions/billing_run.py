"""The billing run: turn every subscription that is due into its invoice, one at a time.

A subscription is due on `as_of` when, in its account's time zone, its period ended, its trial
ended or its pause is over at or before the start of that day (its renewal date is on or before
`as_of`). For each one, in its own transaction: apply the scheduled change that takes effect at
the period's end (plan, seats, interval, cancel, pause), end the trial, build and finalize the
invoice (subscription lines billed in advance, a metered price's fee and usage in arrears,
discount, tax), post it to the ledger (finalize_invoice does), advance the period, queue the
"invoice issued" email; then, after the commit, try to collect it with the saved card.

Safe to run twice and from several workers at once:
- each subscription is claimed with SELECT … FOR UPDATE SKIP LOCKED on PostgreSQL (a row another
  worker holds is skipped, not waited for) and re-checked under the lock (a period another
  worker billed meanwhile is no longer due); on SQLite one runner at a time (a lock file beside
  the database) and each subscription's transaction takes the write lock up front;
- invoices.(subscription_id, billing_period_start) is unique: a period is billed once, whatever
  happens;
- one subscription per transaction: a crash leaves every subscription either billed completely
  or untouched, and the next run finishes the job.

The PDF is not rendered here: the stored-PDF path renders it on the first download (its content
depends on what has been paid, so rendering it now would be thrown away after collection).
"""

from __future__ import annotations

import calendar
import contextlib
import logging
import os
import random
import time as timer
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, joinedload

from portal import clock
from portal.accounts.models import Account
from portal.audit.services import SYSTEM, Actor
from portal.billing import services as billing
from portal.billing.issuing import issue_invoice
from portal.billing.models import Invoice, LineKind
from portal.billing.money import Money
from portal.billing.tax import rate_for
from portal.db import begin_write, commit, has_pending_changes
from portal.errors import N_, Conflict, PendingChanges
from portal.subscriptions.models import (
    ChangeKind,
    ChangeStatus,
    Plan,
    Price,
    PricingModel,
    Subscription,
    SubscriptionChange,
    SubscriptionStatus,
)
from portal.subscriptions.periods import local_midnight, period_end
from portal.subscriptions.pricing import charge_for
from portal.subscriptions.usage import usage_total

log = logging.getLogger(__name__)

RENEWING = (
    SubscriptionStatus.ACTIVE.value,
    SubscriptionStatus.TRIALING.value,
    SubscriptionStatus.PAST_DUE.value,
)
# NOTE: a subscription many periods behind (the run did not run for a while) is caught up one
# period after another in one transaction, up to this many.
MAX_PERIODS_PER_RUN = 36


class BillingRunBusy(Conflict):
    title = N_("Another billing run is in progress")


@dataclass
class BillingRunSummary:
    as_of: date
    total: int = 0  # subscriptions found due
    invoices: int = 0
    amount_minor: Counter[str] = field(default_factory=Counter)  # by currency
    renewed: int = 0
    trials_ended: int = 0
    changes_applied: int = 0
    canceled: int = 0
    paused: int = 0
    resumed: int = 0
    skipped_busy: int = 0  # held by another worker
    skipped_done: int = 0  # no longer due when claimed (billed meanwhile)
    failed: int = 0
    collection: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0  # money-safe: a duration
    invoice_ids: list[int] = field(default_factory=list)

    @property
    def rate(self) -> float:  # money-safe: invoices per second
        return self.invoices / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        amounts = ", ".join(
            f"{Money(minor, currency).to_decimal()} {currency}"
            for currency, minor in sorted(self.amount_minor.items())
        )
        out = [
            f"billing run as of {self.as_of.isoformat()}: {self.total} due, "
            f"{self.invoices} invoices ({amounts or 'nothing'}) in {self.seconds:.1f} s "
            f"({self.rate:.0f} invoices/s)",
            f"  renewed {self.renewed}, trials ended {self.trials_ended}, scheduled changes "
            f"applied {self.changes_applied}, canceled {self.canceled}, paused {self.paused}, "
            f"resumed {self.resumed}",
            f"  skipped: {self.skipped_busy} held by another worker, {self.skipped_done} "
            f"already billed; failed {self.failed}",
        ]
        if self.collection:
            out.append(
                "  collection: "
                + ", ".join(f"{status} {n}" for status, n in sorted(self.collection.items()))
            )
        return out


@dataclass
class _Outcome:
    invoices: list[Invoice] = field(default_factory=list)
    events: Counter[str] = field(default_factory=Counter)

    @property
    def changed(self) -> bool:
        return bool(self.events)


# NOTE: test seams (monkeypatched by tests only): called with the subscription id once it is
# claimed, inside its transaction; and the collection function.
_after_claim: Callable[[int], None] | None = None
# Where in the list of due subscriptions a run starts (random; tests start at the beginning).
_start_at: Callable[[int], int] = random.randrange


def cutoff(as_of: date, tz: str) -> datetime:
    """The moment up to which things are due on `as_of` in this time zone: its local midnight."""
    return local_midnight(as_of, tz)


def due_subscription_ids(session: Session, as_of: date) -> list[int]:
    """The subscriptions due on `as_of`, oldest id first (one query; exact per time zone)."""
    # NOTE: no zone's midnight of as_of is later than as_of + 14 h UTC, so this bound finds a
    # superset in SQL and the zone of each account makes it exact.
    bound = datetime.combine(as_of + timedelta(days=1), time(0), UTC)
    scheduled = (
        select(SubscriptionChange.subscription_id)
        .where(
            SubscriptionChange.status == ChangeStatus.SCHEDULED.value,
            SubscriptionChange.effective_at < bound,
        )
        .scalar_subquery()
    )
    rows = session.execute(
        select(
            Subscription.id,
            Subscription.status,
            Subscription.current_period_end,
            Subscription.pause_until,
            Account.timezone,
        )
        .join(Account, Account.id == Subscription.account_id)
        .where(
            or_(
                and_(Subscription.status.in_(RENEWING), Subscription.current_period_end < bound),
                and_(
                    Subscription.status == SubscriptionStatus.PAUSED.value,
                    Subscription.pause_until < bound,
                ),
                and_(
                    Subscription.status != SubscriptionStatus.CANCELED.value,
                    Subscription.id.in_(scheduled),
                ),
            )
        )
        .order_by(Subscription.id)
    ).all()
    due = []
    for sub_id, status, end, pause_until, tz in rows:
        moment = pause_until if status == SubscriptionStatus.PAUSED.value else end
        if moment is not None and moment <= cutoff(as_of, tz):
            due.append(sub_id)
    return due


def run_billing(
    session: Session,
    as_of: date,
    *,
    gateway: Any = None,
    progress: Callable[[int, int], None] | None = None,
    seller: dict[str, Any] | None = None,
    actor: Actor = SYSTEM,
) -> BillingRunSummary:
    """Bill everything due on `as_of`; commits once per subscription (a job-level function).

    `gateway`: collect each new invoice with the account's saved card after its commit (None:
    leave them open for the customer or dunning). `progress(done, total)` is called after each
    subscription.
    """
    if seller is None:
        from flask import current_app

        seller = dict(current_app.config["SELLER"])
    summary = BillingRunSummary(as_of=as_of)
    started = timer.perf_counter()
    if has_pending_changes(session):
        raise PendingChanges("run_billing() commits per subscription; commit pending work first")
    with _one_runner(session):
        ids = due_subscription_ids(session, as_of)
        commit(session)  # the read ends before the first write begins (nothing is pending)
        if ids:
            # NOTE: each worker starts at its own place in the list, so several workers at once
            # mostly work on different subscriptions instead of skipping each other's.
            start = _start_at(len(ids))
            ids = ids[start:] + ids[:start]
        summary.total = len(ids)
        for done, sub_id in enumerate(ids, start=1):
            _bill_subscription(session, sub_id, as_of, seller, actor, gateway, summary)
            if progress is not None:
                progress(done, summary.total)
    summary.seconds = timer.perf_counter() - started
    return summary


def _bill_subscription(
    session: Session,
    sub_id: int,
    as_of: date,
    seller: dict[str, Any],
    actor: Actor,
    gateway: Any,
    summary: BillingRunSummary,
) -> None:
    try:
        begin_write(session)
        subscription = _claim(session, sub_id)
        if subscription is None:
            session.rollback()
            summary.skipped_busy += 1
            return
        if _after_claim is not None:
            _after_claim(sub_id)
        outcome = bill_due_periods(session, subscription, as_of, seller=seller, actor=actor)
        if not outcome.changed:
            session.rollback()
            summary.skipped_done += 1
            return
        invoices = [
            (inv.id, inv.amount_due_minor, inv.total_minor, inv.currency)
            for inv in outcome.invoices
        ]
        automatic = subscription.collection_method == "charge_automatically"
        commit(session)
    except Exception:
        # NOTE: this subscription's transaction is undone as a whole; the run goes on and the
        # next run tries it again.
        session.rollback()
        log.exception("billing subscription %s failed; nothing of it was saved", sub_id)
        summary.failed += 1
        return
    for invoice_id, _, total, currency in invoices:
        summary.invoices += 1
        summary.invoice_ids.append(invoice_id)
        summary.amount_minor[currency] += total
    for name, n in outcome.events.items():
        setattr(summary, name, getattr(summary, name) + n)
    if gateway is None or not automatic:
        return
    for invoice_id, due, _, _ in invoices:
        if due > 0:
            summary.collection[collect(session, invoice_id, gateway, actor)] += 1


def _claim(session: Session, sub_id: int) -> Subscription | None:
    """The subscription, locked for this transaction; None when another worker holds it."""
    query = (
        select(Subscription)
        .where(Subscription.id == sub_id)
        .options(
            # NOTE: what billing reads, in the claiming query (one statement, not four lazy
            # loads); FOR UPDATE OF subscriptions locks only the subscription's row.
            joinedload(Subscription.account),
            joinedload(Subscription.price).joinedload(Price.plan).joinedload(Plan.tax_rate),
            joinedload(Subscription.price).joinedload(Price.tax_rate),
        )
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True, of=Subscription)
    return session.scalar(query.execution_options(populate_existing=True))


def collect(session: Session, invoice_id: int, gateway: Any, actor: Actor = SYSTEM) -> str:
    """Try to collect a new invoice with the saved card (after its commit); the outcome's status.

    NOTE: through portal.payments.collection.collect_invoice (the payment path: one live attempt,
    key saved and committed before Stripe is called). A failure leaves the invoice open for the
    customer and for dunning; it never undoes the invoice.
    """
    try:
        from portal.payments.collection import collect_invoice
    except ImportError:  # not merged yet: the invoice stays open
        return "not_wired"
    try:
        outcome = collect_invoice(session, invoice_id, gateway, actor=actor, reason="billing_run")
        if outcome.status == "failed":
            invoice = session.get(Invoice, invoice_id)
            if invoice is not None:
                _queue_payment_failed(session, invoice, outcome.message)
        commit(session)
        return str(outcome.status)
    except Exception:
        session.rollback()
        log.exception("collecting invoice %s failed; it stays open", invoice_id)
        return "error"


@contextlib.contextmanager
def _one_runner(session: Session) -> Iterator[None]:
    """SQLite: one billing run at a time (an exclusive lock file beside the database file).
    PostgreSQL needs none: rows are claimed with SKIP LOCKED, so workers share the work."""
    bind = session.get_bind()
    engine = getattr(bind, "engine", bind)
    database = engine.url.database if bind.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    import fcntl

    path = Path(database).with_name(Path(database).name + ".billing-run.lock")
    handle = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BillingRunBusy(
                N_("Another billing run is in progress on this database; try again later.")
            ) from None
        yield
    finally:
        os.close(handle)


# -- billing one subscription ----------------------------------------------------------------


def bill_due_periods(
    session: Session,
    subscription: Subscription,
    as_of: date,
    *,
    seller: dict[str, Any],
    actor: Actor = SYSTEM,
) -> _Outcome:
    """Everything due on this (locked) subscription up to `as_of`, in the caller's transaction:
    flushes, never commits."""
    account = subscription.account
    limit = cutoff(as_of, account.timezone)
    outcome = _Outcome()
    for _ in range(MAX_PERIODS_PER_RUN):
        if not _step(session, subscription, account, limit, seller, actor, outcome):
            break
    return outcome


def _scheduled_change(session: Session, subscription: Subscription) -> SubscriptionChange | None:
    return session.scalar(
        select(SubscriptionChange).where(
            SubscriptionChange.subscription_id == subscription.id,
            SubscriptionChange.status == ChangeStatus.SCHEDULED.value,
        )
    )


def _snapshot(subscription: Subscription) -> dict[str, Any]:
    return {
        "status": subscription.status,
        "price_id": subscription.price_id,
        "quantity": subscription.quantity,
        "period_start": subscription.current_period_start.isoformat(),
        "period_end": subscription.current_period_end.isoformat(),
        "version": subscription.version,
    }


def _step(
    session: Session,
    subscription: Subscription,
    account: Account,
    limit: datetime,
    seller: dict[str, Any],
    actor: Actor,
    outcome: _Outcome,
) -> bool:
    """Bill one boundary of the subscription if it is due; False when nothing is due."""
    before = _snapshot(subscription)
    if subscription.status == SubscriptionStatus.PAUSED.value:
        resume_at = subscription.pause_until
        if resume_at is None or resume_at > limit:
            return False
        return _resume(session, subscription, account, resume_at, seller, actor, outcome, before)
    if subscription.status not in RENEWING:
        return False
    boundary = subscription.current_period_end
    if boundary > limit:
        return False

    ended_start = subscription.current_period_start
    was_trial = subscription.status == SubscriptionStatus.TRIALING.value
    old_price = subscription.price
    change = _scheduled_change(session, subscription)
    if change is not None and change.effective_at > boundary:
        change = None
    ending: str | None = None
    if change is not None:
        kind = ChangeKind(change.kind)
        if kind == ChangeKind.CANCEL:
            ending = SubscriptionStatus.CANCELED.value
        elif kind == ChangeKind.PAUSE:
            ending = SubscriptionStatus.PAUSED.value
        elif kind in (ChangeKind.PLAN, ChangeKind.QUANTITY, ChangeKind.INTERVAL):
            if change.to_price_id is not None:
                subscription.price_id = change.to_price_id
                session.flush()
                session.refresh(subscription, ["price"])
            if change.to_quantity is not None:
                subscription.quantity = change.to_quantity
        _mark_applied(change, boundary)
        outcome.events["changes_applied"] += 1
    elif subscription.cancel_at_period_end:
        ending = SubscriptionStatus.CANCELED.value

    lines: list[billing.LineInput] = []
    if old_price.pricing_model == PricingModel.METERED and not was_trial:
        lines += _arrears_lines(session, subscription, old_price, ended_start, boundary, account)
    if was_trial:
        subscription.trial_end = subscription.trial_end or boundary
        outcome.events["trials_ended"] += 1

    if ending == SubscriptionStatus.CANCELED.value:
        subscription.status = ending
        subscription.canceled_at = boundary
        subscription.cancel_at_period_end = False
        if change is not None and change.reason_text:
            subscription.cancellation_reason = change.reason_text[:500]
        outcome.events["canceled"] += 1
        action = "subscription.canceled"
    elif ending == SubscriptionStatus.PAUSED.value:
        subscription.status = ending
        subscription.paused_at = boundary
        subscription.pause_until = change.resume_at if change is not None else None
        outcome.events["paused"] += 1
        action = "subscription.paused"
    else:
        if was_trial or subscription.status == SubscriptionStatus.TRIALING.value:
            subscription.status = SubscriptionStatus.ACTIVE.value
        price = subscription.price
        new_end = period_end(
            boundary,
            price.billing_interval,
            price.interval_count,
            account.timezone,
            anchor_day=_anchor_day(subscription, account, boundary),
        )
        subscription.current_period_start = boundary
        subscription.current_period_end = new_end
        lines += _advance_lines(subscription, price, boundary, new_end, account)
        outcome.events["renewed"] += 1
        action = "subscription.renewed"
    lines += _discount_lines(subscription, lines)
    change_id = change.id if change is not None else None
    if lines:
        invoice = _issue(session, subscription, account, lines, boundary, seller, actor, change_id)
        if invoice is not None:
            outcome.invoices.append(invoice)
            if change is not None and change.invoice_id is None:
                change.invoice_id = invoice.id
    subscription.bump_version()
    actor.record(
        session,
        action,
        account_id=account.id,
        target_type="subscription",
        target_id=subscription.public_id,
        before=before,
        after={**_snapshot(subscription), "change": change.public_id if change else None},
    )
    session.flush()
    return subscription.status in RENEWING


def _resume(
    session: Session,
    subscription: Subscription,
    account: Account,
    resume_at: datetime,
    seller: dict[str, Any],
    actor: Actor,
    outcome: _Outcome,
    before: dict[str, Any],
) -> bool:
    """A pause is over: a new period starts at the resume date and is billed as usual."""
    change = _scheduled_change(session, subscription)
    change_id = None
    if change is not None and change.kind == ChangeKind.RESUME.value:
        _mark_applied(change, resume_at)
        change_id = change.id
        outcome.events["changes_applied"] += 1
    price = subscription.price
    new_end = period_end(resume_at, price.billing_interval, price.interval_count, account.timezone)
    subscription.status = SubscriptionStatus.ACTIVE.value
    subscription.paused_at = None
    subscription.pause_until = None
    subscription.current_period_start = resume_at
    subscription.current_period_end = new_end
    lines = _advance_lines(subscription, price, resume_at, new_end, account)
    lines += _discount_lines(subscription, lines)
    if lines:
        invoice = _issue(session, subscription, account, lines, resume_at, seller, actor, change_id)
        if invoice is not None:
            outcome.invoices.append(invoice)
    subscription.bump_version()
    outcome.events["resumed"] += 1
    actor.record(
        session,
        "subscription.resumed",
        account_id=account.id,
        target_type="subscription",
        target_id=subscription.public_id,
        before=before,
        after=_snapshot(subscription),
    )
    session.flush()
    return True


def _mark_applied(change: SubscriptionChange, effective: datetime) -> None:
    change.status = ChangeStatus.APPLIED.value
    # NOTE: when it was applied; never before the moment it took effect (a run --as-of a
    # future date applies it "then").
    change.applied_at = max(clock.now(), effective)


def _anchor_day(subscription: Subscription, account: Account, new_start: datetime) -> int:
    """The day of the month periods start on: the new period's start day, unless that is a month
    end clamped from a later day the subscription started on (Jan 31 -> Feb 28 -> Mar 31). A
    trial's end moves the anchor to the day it ended."""
    zone = ZoneInfo(account.timezone)
    start = new_start.astimezone(zone)
    last = calendar.monthrange(start.year, start.month)[1]
    began = subscription.started_at.astimezone(zone).day if subscription.started_at else start.day
    return began if start.day == last and began > start.day else start.day


def _local_day(moment: datetime, account: Account) -> date:
    return moment.astimezone(ZoneInfo(account.timezone)).date()


def _plan_label(price: Price, quantity: int) -> str:
    label = f"{price.plan.name} plan"
    if price.pricing_model == PricingModel.PER_UNIT and price.unit_label:
        label += f" ({quantity} {price.unit_label}{'s' if quantity != 1 else ''})"
    return label


def _advance_lines(
    subscription: Subscription, price: Price, start: datetime, end: datetime, account: Account
) -> list[billing.LineInput]:
    """The licensed part of the period that starts: billed in advance (metered: in arrears)."""
    if price.pricing_model == PricingModel.METERED:
        return []
    amount = charge_for(price, subscription.quantity)
    per_unit = price.pricing_model == PricingModel.PER_UNIT and not price.flat_amount_minor
    quantity = subscription.quantity if per_unit else 1
    return [
        billing.LineInput(
            description=_plan_label(price, subscription.quantity),
            kind=LineKind.SUBSCRIPTION,
            quantity=quantity,
            unit_amount_minor=price.unit_amount_minor if per_unit else amount.minor,
            amount_minor=amount.minor,
            period_start=_local_day(start, account),
            period_end=_local_day(end, account),
            tax_rate=rate_for(price, account.country),
            price_id=price.id,
        )
    ]


def _arrears_lines(
    session: Session,
    subscription: Subscription,
    price: Price,
    start: datetime,
    end: datetime,
    account: Account,
) -> list[billing.LineInput]:
    """A metered price's fee and usage for the period that ended."""
    rate = rate_for(price, account.country)
    period = (_local_day(start, account), _local_day(end, account))
    lines = []
    if price.flat_amount_minor:
        lines.append(
            billing.LineInput(
                description=f"{price.plan.name} plan: platform fee",
                kind=LineKind.SUBSCRIPTION,
                unit_amount_minor=price.flat_amount_minor,
                period_start=period[0],
                period_end=period[1],
                tax_rate=rate,
                price_id=price.id,
            )
        )
    used = usage_total(session, subscription.id, start, end)
    if used:
        lines.append(
            billing.LineInput(
                description=f"Usage ({price.unit_label or 'units'})",
                kind=LineKind.USAGE,
                quantity=used,
                unit_amount_minor=price.unit_amount_minor,
                period_start=period[0],
                period_end=period[1],
                tax_rate=rate,
                price_id=price.id,
            )
        )
    return lines


def _discount_lines(
    subscription: Subscription, lines: list[billing.LineInput]
) -> list[billing.LineInput]:
    """The subscription's discount (e.g. the retention offer) on this invoice's charges, one line
    per charged line (each with that line's tax rate, so the tax falls with it)."""
    if subscription.discount_bp <= 0 or subscription.discount_periods_left <= 0 or not lines:
        return []
    bp = subscription.discount_bp
    subscription.discount_periods_left -= 1
    if subscription.discount_periods_left == 0:
        subscription.discount_bp = 0
    out = []
    for line in lines:
        amount = (
            line.amount_minor
            if line.amount_minor is not None
            else (line.quantity * line.unit_amount_minor)
        )
        off = Money(amount, subscription.account.currency).basis_points(bp)
        if off.minor > 0:
            out.append(
                billing.LineInput(
                    description=f"Discount {bp / 100:g}% on {line.description}",  # money-safe
                    kind=LineKind.DISCOUNT,
                    unit_amount_minor=-off.minor,
                    amount_minor=-off.minor,
                    period_start=line.period_start,
                    period_end=line.period_end,
                    tax_rate=line.tax_rate,
                    price_id=line.price_id,
                )
            )
    return out


def _issue(
    session: Session,
    subscription: Subscription,
    account: Account,
    lines: list[billing.LineInput],
    boundary: datetime,
    seller: dict[str, Any],
    actor: Actor,
    change_id: int | None,
) -> Invoice | None:
    """The invoice for the period starting at `boundary`, finalized; None when it exists."""
    existing = session.scalar(
        select(Invoice.id).where(
            Invoice.subscription_id == subscription.id,
            Invoice.billing_period_start == boundary,
        )
    )
    if existing is not None:
        return None
    if change_id is not None:
        lines = [
            billing.LineInput(**{**line.__dict__, "subscription_change_id": change_id})
            for line in lines
        ]
    issue_day = _local_day(boundary, account)
    draft = billing.create_draft_invoice(
        session,
        account,
        lines,
        issue_date=issue_day,
        subscription_id=subscription.id,
        billing_key=f"sub:{subscription.id}:{boundary.astimezone(UTC).isoformat()}",
        billing_period_start=boundary,
        period=(lines[0].period_start or issue_day, lines[0].period_end or issue_day),
    )
    return issue_invoice(
        session, draft, seller=seller, actor=actor, when=max(clock.now(), boundary)
    )


def _queue_payment_failed(session: Session, invoice: Invoice, reason: str) -> None:
    """The card was declined: the invoice stays open; dunning (issue 12) retries it and knows
    the retry dates, so next_retry_on is not said here."""
    from flask_babel import force_locale
    from flask_babel import gettext as _

    from portal.mail import queue_email

    account = invoice.account
    with force_locale(account.locale):
        queue_email(
            session,
            to=account.billing_email,
            subject=_("Payment for invoice %(number)s did not go through", number=invoice.number),
            template="payment_failed",
            context={
                "account": account,
                "invoice": invoice,
                "reason": reason,
                "next_retry_on": None,
            },
            account_id=account.id,
            dedupe_key=f"payment_failed:billing_run:{invoice.id}",
        )
