"""`billing reconcile`: settle what the portal does not know yet by asking Stripe.

- Live attempts ("created", "unknown", "processing", "requires_action") are brought to what
  Stripe says. An attempt whose create call's answer was lost replays that call with its saved
  idempotency key (Stripe answers with the intent it already made). An intent that was never
  confirmed is canceled, so it can never charge later.
- Payments whose webhooks were lost are recorded (fulfil_payment is idempotent).
- Mismatches between the ledger and Stripe are reported, never silently fixed.
Running it twice changes nothing the second time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal import clock
from portal import db as unit_of_work
from portal.accounts.models import Account
from portal.db import begin_write
from portal.payments import refunds, services
from portal.payments.gateway import Gateway, GatewayRejected, GatewayUnavailable, Intent
from portal.payments.models import (
    LIVE_ATTEMPT_STATUSES,
    AttemptStatus,
    Payment,
    PaymentAttempt,
    PaymentMethod,
)

log = logging.getLogger(__name__)


@dataclass
class Report:
    settled: list[str] = field(default_factory=list)  # "attempt: old -> new"
    recorded: list[str] = field(default_factory=list)  # payments recorded now
    mismatches: list[str] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)
    checked: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.settled or self.recorded)

    def lines(self) -> list[str]:
        out = [f"checked {self.checked} payment attempts and payments"]
        out += [f"settled {line}" for line in self.settled]
        out += [f"recorded {line}" for line in self.recorded]
        out += [f"MISMATCH {line}" for line in self.mismatches]
        out += [f"could not reach Stripe for {line}" for line in self.unreachable]
        if not self.changed and not self.mismatches and not self.unreachable:
            out.append("nothing to do")
        return out


def reconcile(
    session: Session,
    gw: Gateway,
    *,
    commit: Callable[[], None] | None = None,
    min_age: timedelta = timedelta(minutes=5),
    payments_since: timedelta = timedelta(days=30),
) -> Report:
    """Settle live attempts older than `min_age`, then compare recent payments with Stripe.

    A job that owns its units of work: each attempt is fetched from Stripe with no transaction
    open, then locked, applied and committed (`commit`, by default portal.db.commit) before the
    next is asked about, so no lock is ever held while Stripe answers.
    """
    finish = commit or partial(unit_of_work.commit, session)
    report = Report()
    cutoff = clock.now() - min_age
    ids = session.scalars(
        select(PaymentAttempt.id)
        .where(
            PaymentAttempt.status.in_(LIVE_ATTEMPT_STATUSES),
            PaymentAttempt.updated_at <= cutoff,
        )
        .order_by(PaymentAttempt.id)
    ).all()
    session.rollback()
    for attempt_id in ids:
        report.checked += 1
        try:
            _settle(session, gw, attempt_id, report)
            finish()
        except (GatewayUnavailable, GatewayRejected) as error:
            session.rollback()
            report.unreachable.append(f"attempt {attempt_id}: {error.message}")
    settled, unreachable = refunds.settle_pending_refunds(session, gw, finish, older_than=min_age)
    report.settled += settled
    report.unreachable += unreachable
    _compare_payments(session, gw, report, clock.now() - payments_since)
    return report


@dataclass(frozen=True)
class _Asked:
    """What reconcile needs to know of an attempt, read before Stripe is called."""

    attempt_id: int
    public_id: str
    status: str
    key: str
    intent_id: str | None
    amount_minor: int
    currency: str
    customer: str | None
    payment_method: str | None


def _read(session: Session, attempt_id: int) -> _Asked | None:
    attempt = session.get(PaymentAttempt, attempt_id, populate_existing=True)
    if attempt is None or attempt.status not in LIVE_ATTEMPT_STATUSES:
        session.rollback()
        return None
    account = session.get(Account, attempt.account_id)
    method = (
        session.get(PaymentMethod, attempt.payment_method_id) if attempt.payment_method_id else None
    )
    asked = _Asked(
        attempt_id=attempt.id,
        public_id=attempt.public_id,
        status=attempt.status,
        key=attempt.idempotency_key,
        intent_id=attempt.stripe_payment_intent_id,
        amount_minor=attempt.amount_minor,
        currency=attempt.currency,
        customer=account.stripe_customer_id if account else None,
        payment_method=method.stripe_payment_method_id if method else None,
    )
    session.rollback()
    return asked


def _ask_stripe(gw: Gateway, asked: _Asked) -> Intent | None:
    """Stripe's intent for the attempt (None: it was never sent). Network only."""
    intent_id = asked.intent_id
    if intent_id is None:
        if not asked.customer or not asked.payment_method:
            return None
        # NOTE: the same key as the lost call, so Stripe hands back the intent it made.
        intent_id = gw.create_payment_intent(
            amount_minor=asked.amount_minor,
            currency=asked.currency,
            customer=asked.customer,
            payment_method=asked.payment_method,
            metadata={"attempt": asked.public_id},
            idempotency_key=f"{asked.key}:create",
        ).id
    intent = gw.retrieve_payment_intent(intent_id)
    if intent.status in ("requires_confirmation", "requires_payment_method") and not (
        intent.failure_code
    ):
        # NOTE: the confirm call never reached Stripe: cancel, so it can never charge later.
        intent = gw.cancel_payment_intent(intent.id, idempotency_key=f"{asked.key}:cancel")
    return intent


def _settle(session: Session, gw: Gateway, attempt_id: int, report: Report) -> None:
    asked = _read(session, attempt_id)
    if asked is None:
        return
    intent = _ask_stripe(gw, asked)
    begin_write(session)
    attempt = services.lock_attempt(session, attempt_id)
    if attempt is None or attempt.status not in LIVE_ATTEMPT_STATUSES:
        return  # NOTE: settled meanwhile (a webhook, the customer's refresh): theirs stands.
    before = attempt.status
    if intent is None:
        services.end_attempt(session, attempt, AttemptStatus.CANCELED)
        report.settled.append(f"{attempt.public_id}: {before} -> canceled (never sent)")
        return
    if attempt.stripe_payment_intent_id is None:
        attempt.stripe_payment_intent_id = intent.id
        session.flush()
    had_payment = session.scalar(
        select(Payment.id).where(Payment.stripe_payment_intent_id == intent.id)
    )
    services.apply_intent(session, attempt, intent, services.STRIPE)
    if attempt.status != before:
        report.settled.append(f"{attempt.public_id}: {before} -> {attempt.status}")
    if intent.status == "succeeded" and had_payment is None:
        report.recorded.append(f"{intent.id} ({intent.amount} {intent.currency})")


def _compare_payments(session: Session, gw: Gateway, report: Report, since: object) -> None:
    """Report (never fix) what the ledger and Stripe disagree on. Read-only: the rows are read
    into plain values first, then Stripe is asked with no transaction open."""
    payments = session.execute(
        select(
            Payment.public_id,
            Payment.stripe_payment_intent_id,
            Payment.amount_minor,
            Payment.currency,
        ).where(Payment.stripe_payment_intent_id.is_not(None), Payment.created_at >= since)
    ).all()
    ended = session.execute(
        select(
            PaymentAttempt.public_id, PaymentAttempt.status, PaymentAttempt.stripe_payment_intent_id
        ).where(
            PaymentAttempt.status.in_((AttemptStatus.FAILED.value, AttemptStatus.CANCELED.value)),
            PaymentAttempt.stripe_payment_intent_id.is_not(None),
            PaymentAttempt.updated_at >= since,
        )
    ).all()
    recorded_intents = set(
        session.scalars(
            select(Payment.stripe_payment_intent_id).where(
                Payment.stripe_payment_intent_id.in_([row[2] for row in ended])
            )
        )
    )
    session.rollback()
    for public_id, intent_id, amount_minor, currency in payments:
        report.checked += 1
        try:
            intent = gw.retrieve_payment_intent(intent_id or "")
        except (GatewayUnavailable, GatewayRejected) as error:
            report.unreachable.append(f"payment {public_id}: {error.message}")
            continue
        if intent.status != "succeeded":
            report.mismatches.append(
                f"payment {public_id} is recorded but Stripe says {intent.id} is {intent.status}"
            )
        elif intent.amount != amount_minor or intent.currency != currency:
            report.mismatches.append(
                f"payment {public_id}: ledger {amount_minor} {currency}, "
                f"Stripe {intent.amount} {intent.currency}"
            )
    for public_id, status, intent_id in ended:
        report.checked += 1
        try:
            intent = gw.retrieve_payment_intent(intent_id or "")
        except (GatewayUnavailable, GatewayRejected) as error:
            report.unreachable.append(f"attempt {public_id}: {error.message}")
            continue
        if intent.status == "succeeded" and intent.id not in recorded_intents:
            report.mismatches.append(
                f"attempt {public_id} ended {status} but Stripe charged {intent.id}"
            )
