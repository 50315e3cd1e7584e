"""Metered usage: the same idempotency key twice counts once, even when two reporters race."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal import clock as portal_clock
from portal.audit.models import AuditEvent
from portal.db import begin_write
from portal.errors import Conflict, ValidationFailed
from portal.subscriptions.models import Subscription, UsageRecord
from portal.subscriptions.usage import record_usage, usage_total
from tests.conftest import drop_database, fresh_database, make_config, migrate_to_head
from tests.factories import make_account, make_price, make_subscription

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def _metered(session: Session) -> Subscription:
    account = make_account(session, "EUR")
    price = make_price(
        session,
        currency="EUR",
        pricing_model="metered",
        unit_amount_minor=250,
        flat_amount_minor=4900,
    )
    return make_subscription(
        session,
        account,
        price,
        period_start=datetime(2026, 11, 1, tzinfo=UTC),
        period_end=datetime(2026, 12, 1, tzinfo=UTC),
    )


def test_the_same_key_twice_counts_once(session: Session, clock) -> None:
    subscription = _metered(session)
    first = record_usage(session, subscription, 7, NOW - timedelta(hours=1), "job-1")
    again = record_usage(session, subscription, 7, NOW - timedelta(hours=1), "job-1")
    other = record_usage(session, subscription, 5, NOW, "job-2")
    assert (first.created, again.created, other.created) == (True, False, True)
    assert again.record.id == first.record.id
    total = usage_total(
        session, subscription.id, subscription.current_period_start, subscription.current_period_end
    )
    assert total == 12
    events = session.scalar(
        select(func.count(AuditEvent.id)).where(
            AuditEvent.action == "usage.recorded", AuditEvent.target_id == subscription.public_id
        )
    )
    assert events == 2


def test_a_key_reused_with_another_quantity_is_a_conflict(session: Session, clock) -> None:
    subscription = _metered(session)
    record_usage(session, subscription, 7, NOW, "job-1")
    with pytest.raises(Conflict):
        record_usage(session, subscription, 8, NOW, "job-1")


@pytest.mark.parametrize(
    ("quantity", "when", "key", "message"),
    [
        (-1, NOW, "k", "between 0 and"),
        (10**10, NOW, "k", "between 0 and"),
        (1.5, NOW, "k", "whole number"),
        (1, NOW, "", "idempotency key"),
        (1, NOW, "x" * 129, "idempotency key"),
        (1, NOW, "bad\x00key", "idempotency key"),
        (1, NOW + timedelta(days=1), "k", "future"),
        (1, datetime(2020, 1, 1, tzinfo=UTC), "k", "before the subscription started"),
        (1, datetime(2026, 11, 21), "k", "time zone"),
    ],
)
def test_bad_usage_is_refused(session: Session, clock, quantity, when, key, message) -> None:
    subscription = _metered(session)
    with pytest.raises(ValidationFailed, match=message):
        record_usage(session, subscription, quantity, when, key)
    assert session.scalar(select(func.count(UsageRecord.id))) == 0


def test_usage_on_a_licensed_subscription_is_refused(session: Session, clock) -> None:
    account = make_account(session)
    price = make_price(session, pricing_model="per_unit", unit_amount_minor=1500)
    subscription = make_subscription(session, account, price, quantity=3)
    with pytest.raises(ValidationFailed, match="metered"):
        record_usage(session, subscription, 1, NOW, "k")


@pytest.fixture()
def engine(backend: str, tmp_path: Path) -> Iterator[sa.Engine]:
    url = fresh_database(backend, tmp_path, "usage")
    migrate_to_head(__import__("portal").create_app(make_config(url)))
    made = sa.create_engine(
        url,
        **(
            {"connect_args": {"timeout": 60, "check_same_thread": False}}
            if backend == "sqlite"
            else {}
        ),
        pool_size=12,
        max_overflow=0,
    )
    yield made
    made.dispose()
    drop_database(url)


@pytest.mark.concurrency
def test_ten_reporters_racing_with_one_key_leave_one_record(engine: sa.Engine) -> None:
    previous = portal_clock.set_source(lambda: NOW)
    try:
        with Session(engine) as session:
            subscription_id = _metered(session).id
            session.commit()
        barrier = threading.Barrier(10)
        outcomes, errors = [], []
        lock = threading.Lock()

        def report() -> None:
            try:
                with Session(engine) as session:
                    barrier.wait()
                    # NOTE: as a write request does: on SQLite the transaction takes the write
                    # lock first (BEGIN IMMEDIATE); on PostgreSQL the inserts really race.
                    begin_write(session)
                    subscription = session.get(Subscription, subscription_id)
                    outcome = record_usage(session, subscription, 3, NOW, "batch-42")
                    session.commit()
                    with lock:
                        outcomes.append(outcome.created)
            except BaseException as error:  # noqa: BLE001 - part of the result
                with lock:
                    errors.append(error)

        threads = [threading.Thread(target=report) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert sorted(outcomes) == [False] * 9 + [True]
        with Session(engine) as session:
            rows = session.scalars(select(UsageRecord)).all()
            assert [(r.quantity, r.idempotency_key) for r in rows] == [(3, "batch-42")]
    finally:
        portal_clock.set_source(previous)
