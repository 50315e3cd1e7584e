"""Trial-ending and resuming-soon notices: sent inside their window, once per date."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.audit.models import AuditEvent
from portal.notifications.models import OutboxEmail
from portal.notifications.subscription_notices import warn_resuming_soon, warn_trials_ending
from tests.factories import make_account, make_price, make_subscription


def _subscription(session: Session, **fields: Any) -> Any:
    account = make_account(session)
    price = make_price(session, flat_amount_minor=2900)
    return make_subscription(
        session,
        account,
        price,
        period_start=datetime(2026, 11, 10, tzinfo=UTC),
        period_end=datetime(2026, 12, 10, tzinfo=UTC),
        **fields,
    )


def _sent(session: Session, template: str) -> list[OutboxEmail]:
    # NOTE: in the order they were queued (without ORDER BY, PostgreSQL returns an updated row,
    # such as one the sender marked sent, wherever its new version lies).
    return list(
        session.scalars(
            select(OutboxEmail).where(OutboxEmail.template == template).order_by(OutboxEmail.id)
        )
    )


def test_a_trial_ending_within_three_days_is_announced_once(
    app: Flask, session: Session, clock: Any
) -> None:
    soon = _subscription(
        session, status="trialing", trial_end=datetime(2026, 12, 4, 12, tzinfo=UTC)
    )
    _subscription(session, status="trialing", trial_end=datetime(2026, 12, 20, tzinfo=UTC))
    _subscription(session, status="active", trial_end=datetime(2026, 12, 3, tzinfo=UTC))
    session.commit()

    assert warn_trials_ending(session, date(2026, 11, 30)) == 0  # four days ahead: not yet
    assert warn_trials_ending(session, date(2026, 12, 1)) == 1
    assert warn_trials_ending(session, date(2026, 12, 2)) == 0  # the same trial end: once
    (email,) = _sent(session, "trial_ending")
    assert email.account_id == soon.account_id
    assert email.dedupe_key == f"trial_ending:{soon.id}:2026-12-04"
    assert "Dec 4, 2026" in email.text_body
    audit = session.scalars(
        select(AuditEvent).where(AuditEvent.action == "subscription.trial_ending_notice_sent")
    ).one()
    assert audit.target_id == soon.public_id


def test_a_pause_ending_soon_is_announced_and_again_when_moved(
    app: Flask, session: Session, clock: Any
) -> None:
    paused = _subscription(session, status="paused")
    paused.pause_until = datetime(2026, 12, 3, tzinfo=UTC)
    session.commit()

    assert warn_resuming_soon(session, date(2026, 12, 1)) == 1
    assert warn_resuming_soon(session, date(2026, 12, 2)) == 0
    # The customer moves the resume date: the new date is announced when its window opens.
    paused.pause_until = datetime(2026, 12, 14, tzinfo=UTC)
    session.commit()
    assert warn_resuming_soon(session, date(2026, 12, 3)) == 0
    assert warn_resuming_soon(session, date(2026, 12, 11)) == 1
    assert [e.dedupe_key for e in _sent(session, "subscription_resuming")] == [
        f"subscription_resuming:{paused.id}:2026-12-03",
        f"subscription_resuming:{paused.id}:2026-12-14",
    ]


def test_the_remind_command_sends_the_notices_too(app: Flask, session: Session, clock: Any) -> None:
    _subscription(session, status="trialing", trial_end=datetime(2026, 12, 3, tzinfo=UTC))
    session.commit()
    result = app.test_cli_runner().invoke(args=["billing", "remind", "--as-of", "2026-12-01"])
    assert result.exit_code == 0, result.output
    assert "1 trial-ending notices sent." in result.output
