"""Two submits of one change at once make one change: real threads, real commits, each
backend's own lock (FOR UPDATE on PostgreSQL, BEGIN IMMEDIATE on SQLite)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from portal.billing.models import Invoice
from portal.extensions import db
from portal.subscriptions import queries, services
from portal.subscriptions.models import Subscription, SubscriptionChange
from tests.conftest import app_with_own_database, login_as
from tests.subscriptions.ladder import customer_on_team


@pytest.fixture()
def race_app(backend: str, tmp_path: Path) -> Iterator[Flask]:
    with app_with_own_database(backend, tmp_path, "subrace") as app:
        yield app


@dataclass
class Result:
    statuses: list[int]
    changes: int
    invoices: int
    version: int

    @property
    def exactly_once(self) -> bool:
        return (
            sorted(self.statuses) == [303, 303]
            and self.changes == 1
            and self.invoices == 1
            and self.version == 2
        )


def _setup(app: Flask) -> tuple[str, str, list[FlaskClient], int]:
    with app.app_context():
        customer = customer_on_team(db.session, around_now=True)
        db.session.commit()
        clients = []
        for _ in range(2):
            client = app.test_client()
            login_as(client, customer.user)
            db.session.commit()
            clients.append(client)
        return (
            customer.subscription.public_id,
            customer.ladder.plans["business"].code,
            clients,
            customer.subscription.id,
        )


def _result(app: Flask, subscription_id: int, statuses: list[int]) -> Result:
    with app.app_context():
        session = db.session
        return Result(
            statuses=statuses,
            changes=session.scalar(
                select(func.count())
                .select_from(SubscriptionChange)
                .where(SubscriptionChange.subscription_id == subscription_id)
            ),
            invoices=session.scalar(
                select(func.count())
                .select_from(Invoice)
                .where(Invoice.subscription_id == subscription_id)
            ),
            version=session.get(Subscription, subscription_id).version,
        )


def _interleaved(app: Flask, monkeypatch: pytest.MonkeyPatch) -> Result:
    """Submit A reads (and locks) the subscription and pauses; submit B runs; then A goes on."""
    public_id, business, clients, subscription_id = _setup(app)
    a_has_read = threading.Event()
    release_a = threading.Event()
    original = services.lock_subscription

    def pausing(session, account_id, public_id):  # type: ignore[no-untyped-def]
        found = original(session, account_id, public_id)
        if threading.current_thread().name == "A" and not a_has_read.is_set():
            a_has_read.set()
            release_a.wait(timeout=30)
        return found

    monkeypatch.setattr(services, "lock_subscription", pausing)
    statuses: list[int] = []
    data = {"plan": business, "quantity": "5", "version": "1"}

    def submit(client: FlaskClient) -> None:
        response = client.post(f"/subscriptions/{public_id}/change", data=data)
        statuses.append(response.status_code)

    a = threading.Thread(target=submit, args=(clients[0],), name="A")
    b = threading.Thread(target=submit, args=(clients[1],), name="B")
    a.start()
    assert a_has_read.wait(timeout=30)
    b.start()
    b.join(timeout=0.5)  # with the lock, B waits for A: let A go on
    release_a.set()
    a.join()
    b.join()
    return _result(app, subscription_id, statuses)


def test_two_submits_of_the_same_change_make_one_change(
    race_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _interleaved(race_app, monkeypatch)
    assert result.exactly_once, result


def test_without_the_row_lock_the_same_race_goes_wrong(
    race_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Proof that the test above can fail: without FOR UPDATE (PostgreSQL) or BEGIN IMMEDIATE
    (SQLite), the second submit reads the version the first has not committed yet."""
    from portal import db as unit_of_work

    def no_lock(session, account_id, public_id):  # type: ignore[no-untyped-def]
        return session.scalar(queries.subscription_of(account_id, public_id))

    monkeypatch.setattr(services, "lock_subscription", no_lock)
    monkeypatch.setattr(unit_of_work, "_in_write_request", lambda: False)
    # NOTE: the confirmation email's unique key (one per subscription version) is a second
    # guard that would refuse the second writer on its own; it goes too, to show the lock's.
    monkeypatch.setattr(services, "_confirm_by_email", lambda *args, **kwargs: None)
    result = _interleaved(race_app, monkeypatch)
    print(f"lock removed: {result}")
    assert not result.exactly_once, result


# -- a change racing the billing run --------------------------------------------------------------


def _due_with_a_scheduled_downgrade(app: Flask) -> tuple[str, FlaskClient, int, dict[str, int]]:
    """Team, 5 seats; the period ended an hour ago with a downgrade to Starter waiting for it."""
    from portal import clock

    with app.app_context():
        session = db.session
        customer = customer_on_team(session)
        now = clock.now().replace(microsecond=0)
        subscription = customer.subscription
        subscription.current_period_start = now - timedelta(days=30)
        subscription.current_period_end = now - timedelta(hours=1)
        starter = customer.ladder.prices[("starter", "month")]
        session.add(
            SubscriptionChange(
                subscription_id=subscription.id,
                kind="plan",
                status="scheduled",
                timing="period_end",
                actor_kind="customer",
                requested_at=now - timedelta(days=3),
                effective_at=subscription.current_period_end,
                from_price_id=subscription.price_id,
                to_price_id=starter.id,
                from_quantity=5,
                to_quantity=1,
            )
        )
        subscription.version = 2
        session.commit()
        client = app.test_client()
        login_as(client, customer.user)
        session.commit()
        prices = {"team": subscription.price_id, "starter": starter.id}
        return subscription.public_id, client, subscription.id, prices


def _run_billing(app: Flask) -> Any:
    from portal import clock
    from portal.subscriptions.billing_run import run_billing

    with app.app_context():
        try:
            return run_billing(db.session, clock.today("UTC") + timedelta(days=1))
        finally:
            db.session.remove()


def _state_after(app: Flask, subscription_id: int) -> tuple[str, int, list[int]]:
    with app.app_context():
        session = db.session
        change = session.scalar(
            select(SubscriptionChange).where(
                SubscriptionChange.subscription_id == subscription_id,
                SubscriptionChange.kind == "plan",
            )
        )
        subscription = session.get(Subscription, subscription_id)
        totals = list(
            session.scalars(
                select(Invoice.total_minor).where(Invoice.subscription_id == subscription_id)
            )
        )
        state = (change.status, subscription.price_id, totals)
        session.remove()
        return state


@pytest.mark.parametrize("first", ["customer", "billing run"])
def test_withdrawing_a_change_while_the_billing_run_applies_it_has_one_outcome(
    race_app: Flask, monkeypatch: pytest.MonkeyPatch, first: str
) -> None:
    from portal.subscriptions import billing_run

    public_id, client, subscription_id, prices = _due_with_a_scheduled_downgrade(race_app)
    holding = threading.Event()
    release = threading.Event()
    if first == "customer":
        original = queries.scheduled_change

        def pausing(session, sub_id):  # type: ignore[no-untyped-def]
            found = original(session, sub_id)
            if threading.current_thread().name == "customer" and not holding.is_set():
                holding.set()
                release.wait(timeout=30)
            return found

        monkeypatch.setattr(queries, "scheduled_change", pausing)
    else:

        def after_claim(sub_id: int) -> None:
            if not holding.is_set():
                holding.set()
                release.wait(timeout=30)

        monkeypatch.setattr(billing_run, "_after_claim", after_claim)
    statuses: list[int] = []

    def withdraw() -> None:
        statuses.append(
            client.post(f"/subscriptions/{public_id}/withdraw", data={"version": "2"}).status_code
        )

    threads = {
        "customer": threading.Thread(target=withdraw, name="customer"),
        "billing run": threading.Thread(target=lambda: _run_billing(race_app), name="billing run"),
    }
    second = "billing run" if first == "customer" else "customer"
    threads[first].start()
    assert holding.wait(timeout=30)
    threads[second].start()
    threads[second].join(timeout=0.5)  # with the locks, the second waits (or skips): go on
    release.set()
    for thread in threads.values():
        thread.join(timeout=60)
    _run_billing(race_app)  # a run skipped by a held lock is finished by the next one
    status, price_id, totals = _state_after(race_app, subscription_id)
    if status == "withdrawn":
        # The customer won: renewed on Team, 5 seats (10.00 each), one invoice.
        assert statuses == [303] and price_id == prices["team"] and totals == [5000]
    else:
        # The run won: renewed on Starter (29.00); the withdraw found nothing to withdraw.
        assert status == "applied" and statuses == [409]
        assert price_id == prices["starter"] and totals == [2900]
    assert (status == "withdrawn") == (first == "customer")
