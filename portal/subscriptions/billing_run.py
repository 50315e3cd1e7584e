"""The billing run: turn every subscription that is due into its invoice, a batch at a time.

A subscription is due on `as_of` when, in its account's time zone, its period ended, its trial
ended or its pause is over at or before the start of that day (its renewal date is on or before
`as_of`). For each one: apply the scheduled change that takes effect at the period's end (plan,
seats, interval, cancel, pause), end the trial, build and finalize the invoice (subscription
lines billed in advance, a metered price's fee and usage in arrears, discount, tax), post it to
the ledger, advance the period, queue the "invoice issued" email; then, after the commit, try to
collect it with the saved card.

Batches (BATCH_SIZE subscriptions per transaction): the batch is claimed in one statement, its
scheduled changes and already-billed periods are read in one statement each, its invoices are
numbered in one statement (portal.billing.numbering.take_many), and its invoices, lines, audit
events, ledger entries and "invoice issued" emails go in as plain rows, one statement per table
(COPY on PostgreSQL), each balance moved once (portal.billing.issuing.issue_invoice_rows).
Line descriptions are written in the account's language (one translation per language and
wording per run, not one per invoice).

Safe to run twice and from several workers at once:
- a batch is claimed with SELECT … FOR UPDATE SKIP LOCKED on PostgreSQL (rows another worker
  holds are skipped, not waited for) and re-checked under the lock (a period another worker
  billed meanwhile is no longer due); on SQLite one runner at a time (a lock file beside the
  database) and each batch's transaction takes the write lock up front;
- invoices.(subscription_id, billing_period_start) is unique: a period is billed once, whatever
  happens;
- a batch is one transaction: a crash leaves every subscription of it untouched (and the
  batches before it billed completely), and the next run finishes the job. When anything in a
  batch fails, the batch is rolled back as a whole and its subscriptions are billed again one
  per transaction, so one bad subscription costs only itself.

The PDF is not rendered here: the stored-PDF path renders it on the first download (its content
depends on what has been paid, so rendering it now would be thrown away after collection).
"""

from __future__ import annotations

import calendar
import contextlib
import gc
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

from flask_babel import force_locale, ngettext
from flask_babel import gettext as _
from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session, joinedload

from portal import clock
from portal.accounts.models import Account
from portal.audit import services as audit
from portal.audit.services import SYSTEM, Actor
from portal.billing import services as billing
from portal.billing.issuing import DraftRows, draft_rows, issue_invoice_rows, issue_invoices
from portal.billing.models import Invoice, LineKind
from portal.billing.money import Money
from portal.billing.tax import rate_for
from portal.db import begin_write, commit, has_pending_changes
from portal.errors import N_, Conflict, PendingChanges
from portal.i18n import language_for
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
# NOTE: subscriptions per transaction. Larger batches save little more (the statements per
# batch are already few) and hold more row locks for longer; 1 is the old one-by-one run.
BATCH_SIZE = 250


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
    batches_retried: int = 0  # batches undone by an error and billed again one by one
    collection: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0  # money-safe: a duration
    invoice_ids: list[int] = field(default_factory=list)

    def add(self, other: BillingRunSummary) -> None:
        """Count another runner's run of the same day in (run_billing_in_processes): what
        each did adds up; the due subscriptions are the same list, counted once."""
        self.total = max(self.total, other.total)
        for name in _COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.amount_minor.update(other.amount_minor)
        self.collection.update(other.collection)
        self.invoice_ids += other.invoice_ids

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
            f"already billed; failed {self.failed}"
            + (
                f" (batches retried one by one: {self.batches_retried})"
                if self.batches_retried
                else ""
            ),
        ]
        if self.collection:
            out.append(
                "  collection: "
                + ", ".join(f"{status} {n}" for status, n in sorted(self.collection.items()))
            )
        return out


# The summary's counts that add up across runners (BillingRunSummary.add).
_COUNTS = (
    "invoices",
    "renewed",
    "trials_ended",
    "changes_applied",
    "canceled",
    "paused",
    "resumed",
    "skipped_busy",
    "skipped_done",
    "failed",
    "batches_retried",
)


@dataclass
class _Outcome:
    # Objects (bill_due_periods), or the batch's rows (run_billing), issued by _Batch.finish.
    invoices: list[Invoice | DraftRows] = field(default_factory=list)
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


def _maybe_due(as_of: date) -> Any:
    """SQL: the subscription may be due on `as_of` (a superset; the account's zone decides)."""
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
    return or_(
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


def due_subscription_ids(session: Session, as_of: date) -> list[int]:
    """The subscriptions due on `as_of`, oldest id first (one query; exact per time zone)."""
    rows = session.execute(
        select(
            Subscription.id,
            Subscription.status,
            Subscription.current_period_end,
            Subscription.pause_until,
            Account.timezone,
        )
        .join(Account, Account.id == Subscription.account_id)
        .where(_maybe_due(as_of))
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
    """Bill everything due on `as_of`; commits once per batch (a job-level function).

    `gateway`: collect each new invoice with the account's saved card after its batch's commit
    (None: leave them open for the customer or dunning). `progress(done, total)` is called for
    each subscription once its batch is done.
    """
    if seller is None:
        from flask import current_app

        seller = dict(current_app.config["SELLER"])
    summary = BillingRunSummary(as_of=as_of)
    started = timer.perf_counter()
    if has_pending_changes(session):
        raise PendingChanges("run_billing() commits per batch; commit pending work first")
    with _one_runner(session), _old_objects_frozen():
        ids = due_subscription_ids(session, as_of)
        commit(session)  # the read ends before the first write begins (nothing is pending)
        if ids:
            # NOTE: each worker starts at its own place in the list, so several workers at once
            # mostly work on different subscriptions instead of skipping each other's.
            start = _start_at(len(ids))
            ids = ids[start:] + ids[:start]
        summary.total = len(ids)
        words = _Words()
        done = 0
        for first in range(0, len(ids), max(1, BATCH_SIZE)):
            chunk = ids[first : first + max(1, BATCH_SIZE)]
            _bill_batch(session, chunk, as_of, seller, actor, gateway, summary, words)
            for _sub in chunk:
                done += 1
                if progress is not None:
                    progress(done, summary.total)
    summary.seconds = timer.perf_counter() - started
    return summary


@dataclass
class _Billed:
    """What one committed batch did, read before its commit (objects expire on commit)."""

    busy: int = 0
    done: int = 0
    events: Counter[str] = field(default_factory=Counter)
    # (invoice id, amount due, total, currency, collect automatically)
    invoices: list[tuple[int, int, int, str, bool]] = field(default_factory=list)


def _bill_batch(
    session: Session,
    chunk: list[int],
    as_of: date,
    seller: dict[str, Any],
    actor: Actor,
    gateway: Any,
    summary: BillingRunSummary,
    words: _Words,
) -> None:
    try:
        billed = _bill_in_one_transaction(session, chunk, as_of, seller, actor, words)
    except Exception:
        session.rollback()
        if len(chunk) == 1:
            # NOTE: this subscription's transaction is undone as a whole; the run goes on and
            # the next run tries it again.
            log.exception("billing subscription %s failed; nothing of it was saved", chunk[0])
            summary.failed += 1
            return
        # NOTE: the whole batch was undone (nothing of it was saved); its subscriptions are
        # billed again one per transaction, so the one that fails costs only itself.
        log.warning("a batch of %d subscriptions failed; billing them one by one", len(chunk))
        summary.batches_retried += 1
        for sub_id in chunk:
            _bill_batch(session, [sub_id], as_of, seller, actor, gateway, summary, words)
        return
    summary.skipped_busy += billed.busy
    summary.skipped_done += billed.done
    for name, n in billed.events.items():
        setattr(summary, name, getattr(summary, name) + n)
    for invoice_id, _due, total, currency, _automatic in billed.invoices:
        summary.invoices += 1
        summary.invoice_ids.append(invoice_id)
        summary.amount_minor[currency] += total
    if gateway is None:
        return
    # NOTE: after the batch's commit, outside any write transaction (collect commits the
    # attempt before it calls Stripe).
    for invoice_id, due, _total, _currency, automatic in billed.invoices:
        if automatic and due > 0:
            summary.collection[collect(session, invoice_id, gateway, actor)] += 1


def _bill_in_one_transaction(
    session: Session,
    chunk: list[int],
    as_of: date,
    seller: dict[str, Any],
    actor: Actor,
    words: _Words,
) -> _Billed:
    """Claim and bill a batch in one transaction and commit it; what it did."""
    billed = _Billed()
    begin_write(session)
    subscriptions = _claim(session, chunk, as_of)
    if len(subscriptions) < len(chunk):
        # NOTE: of those left out, the ones still due are held by another worker; the rest it
        # billed meanwhile (one small query, only when some were left out).
        claimed = {sub.id for sub in subscriptions}
        missing = [sub_id for sub_id in chunk if sub_id not in claimed]
        held = session.scalars(
            select(func.count())
            .select_from(Subscription)
            .where(Subscription.id.in_(missing), _maybe_due(as_of))
        ).one()
        billed.busy, billed.done = held, len(missing) - held
    batch = _Batch(session, subscriptions, seller, actor, words, as_rows=True)
    outcomes = []
    # NOTE: the batch's audit events (two per invoice) go in with one statement at its end.
    with audit.batched(session):
        with session.no_autoflush:
            for subscription in subscriptions:
                if _after_claim is not None:
                    _after_claim(subscription.id)
                outcome = _bill_periods(session, subscription, as_of, batch)
                if outcome.changed:
                    outcomes.append((subscription, outcome))
                else:
                    billed.done += 1
        if outcomes:
            batch.finish()
    if not outcomes:
        session.rollback()
        return billed
    for subscription, outcome in outcomes:
        billed.events.update(outcome.events)
        automatic = subscription.collection_method == "charge_automatically"
        for draft in outcome.invoices:
            inv = draft.issued if isinstance(draft, DraftRows) else draft
            assert inv is not None  # issued by batch.finish()
            billed.invoices.append(
                (inv.id, inv.amount_due_minor, inv.total_minor, inv.currency, automatic)
            )
    commit(session)
    return billed


def _claim(session: Session, ids: list[int], as_of: date) -> list[Subscription]:
    """The batch's subscriptions that may still be due, locked for this transaction, in the
    order of `ids`; those another worker holds or billed meanwhile are left out (not loaded)."""
    query = (
        select(Subscription)
        .where(Subscription.id.in_(ids), _maybe_due(as_of))
        .options(
            # NOTE: what billing reads, in the claiming query (one statement for the batch, not
            # four lazy loads per subscription); FOR UPDATE OF subscriptions locks only the
            # subscriptions' rows.
            joinedload(Subscription.account),
            joinedload(Subscription.price).joinedload(Price.plan).joinedload(Plan.tax_rate),
            joinedload(Subscription.price).joinedload(Price.tax_rate),
        )
        .order_by(Subscription.id)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True, of=Subscription)
    found = {
        sub.id: sub
        for sub in session.scalars(query.execution_options(populate_existing=True)).unique()
    }
    return [found[sub_id] for sub_id in ids if sub_id in found]


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
def _old_objects_frozen() -> Iterator[None]:
    """The objects the process had before the run are left out of the cyclic garbage
    collector's full collections while it runs (gc.freeze), and given back to it after.

    NOTE: a batch allocates enough objects to set off a full collection now and then, and a
    full collection walks every object of the process (the app, SQLAlchemy's and Babel's
    caches), none of them garbage the run made: about a tenth of the run's time. Objects the
    run makes are collected as before. When something froze objects already (a server that
    preloads), it is left to it.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


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
    flushes, never commits (a batch of one)."""
    batch = _Batch(session, [subscription], seller, actor, _Words())
    with session.no_autoflush:
        outcome = _bill_periods(session, subscription, as_of, batch)
    batch.finish()
    return outcome


def _bill_periods(
    session: Session, subscription: Subscription, as_of: date, batch: _Batch
) -> _Outcome:
    account = subscription.account
    limit = cutoff(as_of, account.timezone)
    outcome = _Outcome()
    for _period in range(MAX_PERIODS_PER_RUN):
        if not _step(session, subscription, account, limit, batch, outcome):
            break
    return outcome


class _Words:
    """Invoice line descriptions in the account's language, each wording translated once per
    language and run (entering force_locale per invoice would cost more than the invoice)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[Any, ...], str] = {}
        # NOTE: the language of each locale, found once per run (finding it lists the catalogs).
        self._languages: dict[str | None, str] = {}

    def _say(self, locale: str | None, key: tuple[Any, ...], say: Callable[[], str]) -> str:
        language = self._languages.get(locale)
        if language is None:
            language = self._languages[locale] = language_for(locale)
        cached = self._cache.get((language, *key))
        if cached is None:
            with force_locale(language):
                cached = self._cache[(language, *key)] = str(say())
        return cached

    def plan(self, locale: str | None, price: Price, quantity: int) -> str:
        name = price.plan.name
        if price.pricing_model == PricingModel.PER_UNIT and price.unit_label:
            unit = price.unit_label
            return self._say(
                locale,
                ("plan_units", name, unit, quantity),
                lambda: ngettext(
                    "%(plan)s plan (%(num)d %(unit)s)",
                    "%(plan)s plan (%(num)d %(unit)ss)",
                    quantity,
                    plan=name,
                    unit=unit,
                ),
            )
        return self._say(locale, ("plan", name), lambda: _("%(plan)s plan", plan=name))

    def platform_fee(self, locale: str | None, price: Price) -> str:
        name = price.plan.name
        return self._say(locale, ("fee", name), lambda: _("%(plan)s plan: platform fee", plan=name))

    def usage(self, locale: str | None, price: Price) -> str:
        unit = price.unit_label
        return self._say(
            locale,
            ("usage", unit),
            lambda: _("Usage (%(unit)s)", unit=unit) if unit else _("Usage (units)"),
        )

    def discount(self, locale: str | None, bp: int, line: str) -> str:
        percent = f"{bp / 100:g}"  # money-safe: a percentage shown
        return self._say(
            locale,
            ("discount", percent, line),
            lambda: _("Discount %(percent)s%% on %(line)s", percent=percent, line=line),
        )


class _Batch:
    """What a batch shares: what it read up front for its subscriptions (their scheduled
    changes, their periods already billed), its drafts, and finishing them all at once."""

    def __init__(
        self,
        session: Session,
        subscriptions: list[Subscription],
        seller: dict[str, Any],
        actor: Actor,
        words: _Words,
        *,
        as_rows: bool = False,
    ) -> None:
        self.session = session
        self.seller = seller
        self.actor = actor
        self.words = words
        # NOTE: the run's batches make their invoices as rows (portal.billing.issuing
        # .issue_invoice_rows: no unit-of-work objects, a third of the run's time); a batch of
        # one (bill_due_periods) makes objects, which its callers go on with.
        self.as_rows = as_rows
        self.drafts: list[tuple[Invoice, datetime]] = []
        self.draft_rows: list[DraftRows] = []
        self.linked: list[tuple[SubscriptionChange, Invoice | DraftRows]] = []
        ids = [sub.id for sub in subscriptions]
        self.changes: dict[int, SubscriptionChange] = {}
        self.billed: set[tuple[int, datetime]] = set()
        if not ids:
            return
        # NOTE: read under the batch's row locks: a customer changes a scheduled change only
        # with the subscription locked (services.lock_subscription), so this is what it is.
        for change in session.scalars(
            select(SubscriptionChange)
            .where(
                SubscriptionChange.subscription_id.in_(ids),
                SubscriptionChange.status == ChangeStatus.SCHEDULED.value,
            )
            .order_by(SubscriptionChange.id)
        ):
            self.changes.setdefault(change.subscription_id, change)
        # NOTE: periods are billed from the next boundary on, so only invoices from the
        # earliest boundary of the batch can be met again.
        earliest = min(
            (sub.pause_until if sub.status == SubscriptionStatus.PAUSED.value else None)
            or sub.current_period_end
            for sub in subscriptions
        )
        self.billed = {
            (sub_id, _utc(start))
            for sub_id, start in session.execute(
                select(Invoice.subscription_id, Invoice.billing_period_start).where(
                    Invoice.subscription_id.in_(ids),
                    Invoice.billing_period_start >= earliest,
                )
            )
            if sub_id is not None and start is not None
        }

    def scheduled_change(self, subscription: Subscription) -> SubscriptionChange | None:
        return self.changes.get(subscription.id)

    def applied(self, change: SubscriptionChange) -> None:
        self.changes.pop(change.subscription_id, None)

    def issue(
        self,
        subscription: Subscription,
        account: Account,
        lines: list[billing.LineInput],
        boundary: datetime,
        change: SubscriptionChange | None,
        *,
        link: bool = True,
    ) -> Invoice | DraftRows | None:
        """The draft for the period starting at `boundary` (finalized by finish()); None when
        that period has its invoice already. Its lines name `change`; with `link` the change
        names the invoice too."""
        key = (subscription.id, _utc(boundary))
        if key in self.billed:
            return None
        self.billed.add(key)
        if change is not None:
            lines = [
                billing.LineInput(**{**line.__dict__, "subscription_change_id": change.id})
                for line in lines
            ]
        issue_day = _local_day(boundary, account)
        # The same draft either way: as rows (the run's batches) or as objects.
        draft_fields: dict[str, Any] = {
            "issue_date": issue_day,
            "subscription_id": subscription.id,
            "billing_key": f"sub:{subscription.id}:{boundary.astimezone(UTC).isoformat()}",
            "billing_period_start": boundary,
            "period": (lines[0].period_start or issue_day, lines[0].period_end or issue_day),
        }
        finalized_at = max(clock.now(), boundary)
        draft: Invoice | DraftRows
        if self.as_rows:
            draft = draft_rows(account, lines, **draft_fields, finalized_at=finalized_at)
            self.draft_rows.append(draft)
        else:
            draft = billing.create_draft_invoice(
                self.session, account, lines, **draft_fields, flush=False
            )
            self.drafts.append((draft, finalized_at))
        if change is not None and link:
            self.linked.append((change, draft))
        return draft

    def finish(self) -> None:
        """Number, finalize and post every draft of the batch, queue their emails, flush."""
        if self.drafts:
            issue_invoices(self.session, self.drafts, seller=self.seller, actor=self.actor)
        if self.draft_rows:
            issue_invoice_rows(self.session, self.draft_rows, seller=self.seller, actor=self.actor)
        for change, invoice in self.linked:
            if change.invoice_id is None:
                issued = invoice.issued if isinstance(invoice, DraftRows) else invoice
                assert issued is not None
                change.invoice_id = issued.id
        self.session.flush()


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


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
    batch: _Batch,
    outcome: _Outcome,
) -> bool:
    """Bill one boundary of the subscription if it is due; False when nothing is due."""
    before = _snapshot(subscription)
    if subscription.status == SubscriptionStatus.PAUSED.value:
        resume_at = subscription.pause_until
        if resume_at is None or resume_at > limit:
            return False
        return _resume(session, subscription, account, resume_at, batch, outcome, before)
    if subscription.status not in RENEWING:
        return False
    boundary = subscription.current_period_end
    if boundary > limit:
        return False

    ended_start = subscription.current_period_start
    was_trial = subscription.status == SubscriptionStatus.TRIALING.value
    old_price = subscription.price
    change = batch.scheduled_change(subscription)
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
                subscription.price = session.get(Price, change.to_price_id)
            if change.to_quantity is not None:
                subscription.quantity = change.to_quantity
        _mark_applied(change, boundary)
        batch.applied(change)
        outcome.events["changes_applied"] += 1
    elif subscription.cancel_at_period_end:
        ending = SubscriptionStatus.CANCELED.value

    lines: list[billing.LineInput] = []
    if old_price.pricing_model == PricingModel.METERED and not was_trial:
        lines += _arrears_lines(
            session, subscription, old_price, ended_start, boundary, account, batch.words
        )
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
        lines += _advance_lines(subscription, price, boundary, new_end, account, batch.words)
        outcome.events["renewed"] += 1
        action = "subscription.renewed"
    lines += _discount_lines(subscription, lines, batch.words)
    if lines:
        invoice = batch.issue(subscription, account, lines, boundary, change)
        if invoice is not None:
            outcome.invoices.append(invoice)
    subscription.bump_version()
    batch.actor.record(
        session,
        action,
        account_id=account.id,
        target_type="subscription",
        target_id=subscription.public_id,
        before=before,
        after={**_snapshot(subscription), "change": change.public_id if change else None},
    )
    return subscription.status in RENEWING


def _resume(
    session: Session,
    subscription: Subscription,
    account: Account,
    resume_at: datetime,
    batch: _Batch,
    outcome: _Outcome,
    before: dict[str, Any],
) -> bool:
    """A pause is over: a new period starts at the resume date and is billed as usual."""
    change = batch.scheduled_change(subscription)
    resumed_by = None
    if change is not None and change.kind == ChangeKind.RESUME.value:
        _mark_applied(change, resume_at)
        batch.applied(change)
        resumed_by = change
        outcome.events["changes_applied"] += 1
    price = subscription.price
    new_end = period_end(resume_at, price.billing_interval, price.interval_count, account.timezone)
    subscription.status = SubscriptionStatus.ACTIVE.value
    subscription.paused_at = None
    subscription.pause_until = None
    subscription.current_period_start = resume_at
    subscription.current_period_end = new_end
    lines = _advance_lines(subscription, price, resume_at, new_end, account, batch.words)
    lines += _discount_lines(subscription, lines, batch.words)
    if lines:
        invoice = batch.issue(subscription, account, lines, resume_at, resumed_by, link=False)
        if invoice is not None:
            outcome.invoices.append(invoice)
    subscription.bump_version()
    outcome.events["resumed"] += 1
    batch.actor.record(
        session,
        "subscription.resumed",
        account_id=account.id,
        target_type="subscription",
        target_id=subscription.public_id,
        before=before,
        after=_snapshot(subscription),
    )
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


def _advance_lines(
    subscription: Subscription,
    price: Price,
    start: datetime,
    end: datetime,
    account: Account,
    words: _Words,
) -> list[billing.LineInput]:
    """The licensed part of the period that starts: billed in advance (metered: in arrears)."""
    if price.pricing_model == PricingModel.METERED:
        return []
    amount = charge_for(price, subscription.quantity)
    per_unit = price.pricing_model == PricingModel.PER_UNIT and not price.flat_amount_minor
    quantity = subscription.quantity if per_unit else 1
    return [
        billing.LineInput(
            description=words.plan(account.locale, price, subscription.quantity),
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
    words: _Words,
) -> list[billing.LineInput]:
    """A metered price's fee and usage for the period that ended."""
    rate = rate_for(price, account.country)
    period = (_local_day(start, account), _local_day(end, account))
    lines = []
    if price.flat_amount_minor:
        lines.append(
            billing.LineInput(
                description=words.platform_fee(account.locale, price),
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
                description=words.usage(account.locale, price),
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
    subscription: Subscription, lines: list[billing.LineInput], words: _Words
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
                    description=words.discount(subscription.account.locale, bp, line.description),
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


def _queue_payment_failed(session: Session, invoice: Invoice, reason: str) -> None:
    """The card was declined: the invoice stays open; dunning (issue 12) retries it and knows
    the retry dates, so next_retry_on is not said here."""
    from portal.mail import queue_email

    account = invoice.account
    # NOTE: the subject and bodies are the email catalog's, in the account's language.
    queue_email(
        session,
        to=account.billing_email,
        template="payment_failed",
        context={"account": account, "invoice": invoice, "reason": reason, "next_retry_on": None},
        account_id=account.id,
        dedupe_key=f"payment_failed:billing_run:{invoice.id}",
    )
