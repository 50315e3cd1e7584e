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

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal import clock
from portal.accounts.models import Account
from portal.payments import services
from portal.payments.gateway import Gateway, GatewayRejected, GatewayUnavailable
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
    commit: Callable[[], None],
    min_age: timedelta = timedelta(minutes=5),
    payments_since: timedelta = timedelta(days=30),
) -> Report:
    """Settle live attempts older than `min_age`, then compare recent payments with Stripe."""
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
    commit()
    for attempt_id in ids:
        report.checked += 1
        try:
            _settle(session, gw, attempt_id, report)
            commit()
        except (GatewayUnavailable, GatewayRejected) as error:
            session.rollback()
            report.unreachable.append(f"attempt {attempt_id}: {error.message}")
    _compare_payments(session, gw, report, clock.now() - payments_since)
    commit()
    return report


def _settle(session: Session, gw: Gateway, attempt_id: int, report: Report) -> None:
    services.begin_locked_write(session)
    attempt = services.lock_attempt(session, attempt_id)
    if attempt is None or attempt.status not in LIVE_ATTEMPT_STATUSES:
        return
    before = attempt.status
    key = attempt.idempotency_key
    if attempt.stripe_payment_intent_id is None:
        account = session.get(Account, attempt.account_id)
        method = (
            session.get(PaymentMethod, attempt.payment_method_id)
            if attempt.payment_method_id
            else None
        )
        if account is None or not account.stripe_customer_id or method is None:
            services.end_attempt(session, attempt, AttemptStatus.CANCELED)
            report.settled.append(f"{attempt.public_id}: {before} -> canceled (never sent)")
            return
        # NOTE: the same key as the lost call, so Stripe hands back the intent it made.
        intent = gw.create_payment_intent(
            amount_minor=attempt.amount_minor,
            currency=attempt.currency,
            customer=account.stripe_customer_id,
            payment_method=method.stripe_payment_method_id,
            metadata={"attempt": attempt.public_id},
            idempotency_key=f"{key}:create",
        )
        attempt.stripe_payment_intent_id = intent.id
        session.flush()
    intent = gw.retrieve_payment_intent(attempt.stripe_payment_intent_id)
    if intent.status in ("requires_confirmation", "requires_payment_method") and not (
        intent.failure_code
    ):
        # NOTE: the confirm call never reached Stripe: cancel, so it can never charge later.
        intent = gw.cancel_payment_intent(intent.id, idempotency_key=f"{key}:cancel")
    had_payment = session.scalar(
        select(Payment.id).where(Payment.stripe_payment_intent_id == intent.id)
    )
    services.apply_intent(session, attempt, intent)
    if attempt.status != before:
        report.settled.append(f"{attempt.public_id}: {before} -> {attempt.status}")
    if intent.status == "succeeded" and had_payment is None:
        report.recorded.append(f"{intent.id} ({intent.amount} {intent.currency})")


def _compare_payments(session: Session, gw: Gateway, report: Report, since: object) -> None:
    payments = session.scalars(
        select(Payment).where(
            Payment.stripe_payment_intent_id.is_not(None), Payment.created_at >= since
        )
    ).all()
    for payment in payments:
        report.checked += 1
        try:
            intent = gw.retrieve_payment_intent(payment.stripe_payment_intent_id or "")
        except (GatewayUnavailable, GatewayRejected) as error:
            report.unreachable.append(f"payment {payment.public_id}: {error.message}")
            continue
        if intent.status != "succeeded":
            report.mismatches.append(
                f"payment {payment.public_id} is recorded but Stripe says {intent.id} is "
                f"{intent.status}"
            )
        elif intent.amount != payment.amount_minor or intent.currency != payment.currency:
            report.mismatches.append(
                f"payment {payment.public_id}: ledger {payment.amount_minor} {payment.currency}, "
                f"Stripe {intent.amount} {intent.currency}"
            )
    ended = session.scalars(
        select(PaymentAttempt).where(
            PaymentAttempt.status.in_((AttemptStatus.FAILED.value, AttemptStatus.CANCELED.value)),
            PaymentAttempt.stripe_payment_intent_id.is_not(None),
            PaymentAttempt.updated_at >= since,
        )
    ).all()
    for attempt in ended:
        report.checked += 1
        try:
            intent = gw.retrieve_payment_intent(attempt.stripe_payment_intent_id or "")
        except (GatewayUnavailable, GatewayRejected) as error:
            report.unreachable.append(f"attempt {attempt.public_id}: {error.message}")
            continue
        recorded = session.scalar(
            select(Payment.id).where(Payment.stripe_payment_intent_id == intent.id)
        )
        if intent.status == "succeeded" and recorded is None:
            report.mismatches.append(
                f"attempt {attempt.public_id} ended {attempt.status} but Stripe charged {intent.id}"
            )
