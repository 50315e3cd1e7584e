"""Receipt numbers: RCT-<year>-<nnnnn>, gapless and unique per year, continuing the backfill."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from flask_migrate import downgrade, upgrade
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal import create_app
from portal.billing import services
from portal.billing.money import Money
from portal.clock import FrozenClock
from portal.extensions import db
from portal.payments.models import Payment
from portal.payments.receipts import assign_receipt_number, format_receipt_number, receipt_year
from tests.conftest import drop_database, fresh_database, make_config
from tests.factories import make_account, make_invoice


def _record(session: Session, account, invoice, minor: int, when: datetime) -> Payment:  # type: ignore[no-untyped-def]
    return services.record_payment(
        session,
        account,
        Money(minor, account.currency),
        [(invoice, Money(minor, account.currency))] if invoice is not None else [],
        received_at=when,
        method_description="Visa ·4242",
    )


def test_two_payments_in_one_transaction_take_consecutive_numbers(
    session: Session, clock: FrozenClock
) -> None:
    account = make_account(session)
    first_invoice = make_invoice(session, account, [1000])
    second_invoice = make_invoice(session, account, [2000])
    first = _record(session, account, first_invoice, 1000, clock())
    second = _record(session, account, second_invoice, 2000, clock())
    numbers = [first.receipt_number, second.receipt_number]
    assert numbers == ["RCT-2026-00001", "RCT-2026-00002"]
    # Assigning again keeps the number (a replayed webhook must not renumber a receipt).
    assert assign_receipt_number(session, first) == "RCT-2026-00001"
    third = _record(session, account, None, 500, clock())
    assert third.receipt_number == "RCT-2026-00003"


def test_each_year_has_its_own_series(session: Session, clock: FrozenClock) -> None:
    account = make_account(session)
    december = _record(session, account, None, 100, datetime(2026, 12, 31, 23, 30, tzinfo=UTC))
    january = _record(session, account, None, 100, datetime(2027, 1, 1, 0, 5, tzinfo=UTC))
    later = _record(session, account, None, 100, datetime(2026, 6, 1, tzinfo=UTC))
    assert december.receipt_number == "RCT-2026-00001"
    assert january.receipt_number == "RCT-2027-00001"
    assert later.receipt_number == "RCT-2026-00002"
    assert receipt_year(datetime(2027, 1, 1, 0, 30, tzinfo=UTC)) == 2027


def test_a_rolled_back_payment_gives_its_number_back(session: Session, clock: FrozenClock) -> None:
    account = make_account(session)
    with session.begin_nested() as savepoint:
        _record(session, account, None, 100, clock())
        savepoint.rollback()
    kept = _record(session, account, None, 100, clock())
    assert kept.receipt_number == "RCT-2026-00001"
    numbers = session.scalars(select(Payment.receipt_number)).all()
    assert len(numbers) == len(set(numbers))


def test_the_migration_backfills_numbers_and_new_payments_continue_the_series(
    backend: str, tmp_path: Path
) -> None:
    url = fresh_database(backend, tmp_path, "receipts")
    app = create_app(make_config(url))
    try:
        with app.app_context():
            upgrade(revision="0004")
            account = make_account(db.session)
            db.session.flush()
            when = [
                datetime(2025, 12, 30, tzinfo=UTC),
                datetime(2026, 2, 1, tzinfo=UTC),
                datetime(2026, 1, 15, tzinfo=UTC),
            ]
            for n, moment in enumerate(when):
                db.session.execute(
                    sa.text(
                        "INSERT INTO payments (public_id, account_id, currency, amount_minor, "
                        "amount_refunded_minor, method_description, received_at, created_at) "
                        "VALUES (:pid, :acc, 'USD', 100, 0, '', :at, :at)"
                    ),
                    {"pid": f"pay{n}", "acc": account.id, "at": moment},
                )
            db.session.commit()
            upgrade()
            numbers = dict(
                db.session.execute(select(Payment.public_id, Payment.receipt_number)).all()
            )
            assert numbers == {
                "pay0": "RCT-2025-00001",
                "pay2": "RCT-2026-00001",  # received before pay1, so numbered first
                "pay1": "RCT-2026-00002",
            }
            account = db.session.merge(account)
            new = _record(db.session, account, None, 100, datetime(2026, 3, 1, tzinfo=UTC))
            assert new.receipt_number == format_receipt_number(2026, 3)
            db.session.rollback()
            downgrade(revision="0004")
            db.session.commit()
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
        drop_database(url)
