"""Notices ahead of a subscription's own dates: a trial about to end, a pause about to end.

Each is sent once per subscription and date (the outbox's dedupe key), whichever worker or
command finds it first; the daily reminders job runs them beside the payment reminders."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta

from flask import current_app
from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session, scoped_session

from portal.accounts.models import Account
from portal.audit.services import SYSTEM
from portal.db import begin_write, commit
from portal.mail import queue_email
from portal.notifications.models import OutboxEmail
from portal.subscriptions.models import Subscription, SubscriptionStatus


def _window(as_of: date, days: int) -> tuple[datetime, datetime]:
    """From the start of `as_of` to the end of the day `days` later, in UTC."""
    start = datetime.combine(as_of, time.min, tzinfo=UTC)
    return start, start + timedelta(days=days + 1)


def _notify(
    session: Session,
    as_of: date,
    *,
    template: str,
    status: SubscriptionStatus,
    moment: Callable[[], ColumnElement[datetime]],
    days: int,
    audit_action: str,
) -> int:
    session = session() if isinstance(session, scoped_session) else session
    if session.in_transaction():
        commit(session)
    start, end = _window(as_of, days)
    column = moment()
    due = list(
        session.scalars(
            select(Subscription.id).where(
                Subscription.status == status.value,
                column.is_not(None),
                column >= start,
                column < end,
            )
        )
    )
    told = 0
    for subscription_id in due:
        begin_write(session)
        try:
            subscription = session.get(Subscription, subscription_id)
            assert subscription is not None
            when = getattr(subscription, column.key)
            # NOTE: the key carries the date, so a trial or pause moved later is announced again.
            key = f"{template}:{subscription.id}:{when:%Y-%m-%d}"
            exists = session.scalar(select(OutboxEmail.id).where(OutboxEmail.dedupe_key == key))
            account = session.get(Account, subscription.account_id)
            if exists is None and account is not None:
                email = queue_email(
                    session,
                    to=account.billing_email,
                    template=template,
                    context={"account": account, "subscription": subscription, "change": None},
                    account_id=account.id,
                    dedupe_key=key,
                )
                if email is not None:
                    told += 1
                    SYSTEM.record(
                        session,
                        audit_action,
                        account_id=account.id,
                        target_type="subscription",
                        target_id=subscription.public_id,
                        after={"date": when.date().isoformat()},
                    )
        except Exception:
            session.rollback()
            raise
        commit(session)
    return told


def warn_trials_ending(session: Session, as_of: date) -> int:
    """Tell each account whose trial ends within TRIAL_ENDING_NOTICE_DAYS; once per trial end."""
    return _notify(
        session,
        as_of,
        template="trial_ending",
        status=SubscriptionStatus.TRIALING,
        moment=lambda: Subscription.trial_end,
        days=int(current_app.config.get("TRIAL_ENDING_NOTICE_DAYS", 3)),
        audit_action="subscription.trial_ending_notice_sent",
    )


def warn_resuming_soon(session: Session, as_of: date) -> int:
    """Tell each account whose paused subscription resumes within RESUMING_NOTICE_DAYS."""
    return _notify(
        session,
        as_of,
        template="subscription_resuming",
        status=SubscriptionStatus.PAUSED,
        moment=lambda: Subscription.pause_until,
        days=int(current_app.config.get("RESUMING_NOTICE_DAYS", 3)),
        audit_action="subscription.resuming_notice_sent",
    )
