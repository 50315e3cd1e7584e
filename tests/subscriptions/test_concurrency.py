"""Two submits of one change at once make one change: real threads, real commits, each
backend's own lock (FOR UPDATE on PostgreSQL, BEGIN IMMEDIATE on SQLite)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from portal.billing.models import Invoice
from portal.extensions import db
from portal.subscriptions import services
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
    from portal.subscriptions import queries

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
