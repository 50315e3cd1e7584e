"""Several billing runs at once, committing for real (own database per test, one session and
app context per thread): PostgreSQL workers share the work through SKIP LOCKED; on SQLite a
second runner is refused while one runs."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from portal import clock as portal_clock
from portal.billing.models import Invoice
from portal.extensions import db
from portal.subscriptions import billing_run
from portal.subscriptions.billing_run import BillingRunBusy, BillingRunSummary, run_billing
from tests.conftest import app_with_own_database
from tests.factories import SELLER, make_account, make_price, make_subscription

pytestmark = pytest.mark.concurrency

AS_OF = date(2026, 12, 21)
NOW = datetime(2026, 12, 21, 6, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _in_order(monkeypatch) -> None:
    """Runs start at the first due subscription (in production each starts at a random one)."""
    monkeypatch.setattr(billing_run, "_start_at", lambda n: 0)


@pytest.fixture()
def app(backend: str, tmp_path: Path) -> Iterator[Flask]:
    previous = portal_clock.set_source(lambda: NOW)
    try:
        with app_with_own_database(backend, tmp_path, "billing_workers") as application:
            yield application
    finally:
        portal_clock.set_source(previous)


def seed(app: Flask, n: int) -> list[int]:
    with app.app_context():
        session = db.session
        price = make_price(session, pricing_model="per_unit", unit_amount_minor=1500)
        ids = []
        for _ in range(n):
            account = make_account(session)
            sub = make_subscription(
                session,
                account,
                price,
                quantity=2,
                period_start=datetime(2026, 11, 21, tzinfo=UTC),
                period_end=datetime(2026, 12, 21, tzinfo=UTC),
            )
            ids.append(sub.id)
        session.commit()
        db.session.remove()
        return ids


def in_thread(app: Flask, results: dict[str, Any], name: str) -> threading.Thread:
    def work() -> None:
        with app.app_context():
            try:
                results[name] = run_billing(db.session, AS_OF, seller=SELLER)
            except BaseException as error:  # noqa: BLE001 - part of the result
                results[name] = error
            finally:
                db.session.remove()

    return threading.Thread(target=work, name=name)


def invoices_per_subscription(app: Flask) -> dict[int, int]:
    with app.app_context():
        rows = db.session.execute(
            select(Invoice.subscription_id, func.count(Invoice.id)).group_by(
                Invoice.subscription_id
            )
        ).all()
        db.session.remove()
        return dict(rows)


def block_in(
    thread_name: str, sub_id: int, claimed: threading.Event, release: threading.Event
) -> Callable[[int], None]:
    def hook(claimed_id: int) -> None:
        if threading.current_thread().name == thread_name and claimed_id == sub_id:
            claimed.set()
            release.wait(30)

    return hook


@pytest.mark.parametrize("batch_size", [1, 7, billing_run.BATCH_SIZE])
def test_two_workers_at_once_bill_every_period_exactly_once(
    app: Flask, backend: str, monkeypatch, batch_size: int
) -> None:
    # NOTE: batches of 7 over 40 subscriptions from two starting points make the workers meet
    # mid-batch: each claims what the other does not hold and skips the rest.
    monkeypatch.setattr(billing_run, "BATCH_SIZE", batch_size)
    monkeypatch.setattr(
        billing_run, "_start_at", lambda n: 0 if threading.current_thread().name == "a" else n // 2
    )
    ids = seed(app, 40)
    results: dict[str, Any] = {}
    threads = [in_thread(app, results, name) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    runs = [results["a"], results["b"]]
    if backend == "sqlite":
        # NOTE: one runner at a time: the second is refused, or starts after the first ended
        # and finds nothing left.
        finished = [r for r in runs if isinstance(r, BillingRunSummary)]
        assert all(isinstance(r, BillingRunSummary | BillingRunBusy) for r in runs), results
        assert finished and sum(r.invoices for r in finished) == 40
    else:
        assert all(isinstance(r, BillingRunSummary) for r in runs), results
        assert sum(r.failed for r in runs) == 0
        # NOTE: SKIP LOCKED keeps the workers apart: neither ever bills a row the other holds
        # (without it both bill the same batch, and the unique period key undoes one of them).
        assert sum(r.batches_retried for r in runs) == 0
        assert sum(r.invoices for r in runs) == 40
    assert invoices_per_subscription(app) == dict.fromkeys(ids, 1)
    assert numbers_are_unique(app)


def numbers_are_unique(app: Flask) -> bool:
    with app.app_context():
        numbers = list(db.session.scalars(select(Invoice.number)))
        db.session.remove()
        return len(numbers) == len(set(numbers))


@pytest.mark.parametrize("batch_size", [1, billing_run.BATCH_SIZE])
def test_a_subscription_another_worker_holds_is_skipped_not_waited_for(
    app: Flask, backend: str, monkeypatch, batch_size: int
) -> None:
    monkeypatch.setattr(billing_run, "BATCH_SIZE", batch_size)
    ids = seed(app, 5)
    claimed, release = threading.Event(), threading.Event()
    monkeypatch.setattr(billing_run, "_after_claim", block_in("a", ids[0], claimed, release))
    results: dict[str, Any] = {}
    a = in_thread(app, results, "a")
    a.start()
    try:
        assert claimed.wait(30), "worker a never claimed the first subscription"
        b = in_thread(app, results, "b")
        b.start()
        b.join(20)
        assert not b.is_alive(), "worker b waited for the row worker a holds"
    finally:
        release.set()
        a.join(60)
    if backend == "sqlite":
        # NOTE: one runner at a time: b is refused while a runs, and a does all the work.
        assert isinstance(results["b"], BillingRunBusy)
        assert results["a"].invoices == 5
    elif batch_size == 1:
        assert results["b"].skipped_busy == 1 and results["b"].invoices == 4
        assert results["a"].invoices == 1 and results["a"].skipped_done == 4
    else:
        # NOTE: a holds its whole batch (all five) while it bills it: b skips them all.
        assert results["b"].skipped_busy == 5 and results["b"].invoices == 0
        assert results["a"].invoices == 5 and results["a"].skipped_done == 0
    assert invoices_per_subscription(app) == dict.fromkeys(ids, 1)
    # and once they are done, a third run finds nothing to do
    again: dict[str, Any] = {}
    c = in_thread(app, again, "c")
    c.start()
    c.join(30)
    assert again["c"].invoices == 0 and again["c"].total == 0


def test_the_cli_bills_with_several_processes_on_postgresql_and_one_on_sqlite(
    app: Flask, backend: str
) -> None:
    """`billing run --workers 2`: two processes at once on PostgreSQL (each its own app from the
    plain settings), every subscription billed once; SQLite says it bills with one runner."""
    ids = seed(app, 12)
    result = app.test_cli_runner().invoke(
        args=["billing", "run", "--as-of", AS_OF.isoformat(), "--no-collect", "--workers", "2"]
    )
    assert result.exit_code == 0, result.output
    if backend == "postgresql":
        assert "Billing with 2 runners at once" in result.output
    else:
        assert "billing with one runner" in result.output
    assert "12 due, 12 invoices" in result.output
    with app.app_context():
        billed = db.session.execute(
            select(Invoice.subscription_id, func.count())
            .where(Invoice.subscription_id.in_(ids))
            .group_by(Invoice.subscription_id)
        ).all()
        db.session.remove()
    assert sorted(billed) == [(sub_id, 1) for sub_id in sorted(ids)]
