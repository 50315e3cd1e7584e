"""Two credit notes on one invoice at once (a support credit and a cancel-now credit, say): the
cap "no more than the invoice's total less what is already credited" holds under real concurrency.

Committed for real in a database of its own (the rolled-back `session` fixture would hide the
race), one session per thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal import create_app
from portal.billing import services
from portal.billing.models import CreditNote, Invoice
from portal.billing.money import Money
from portal.errors import ValidationFailed
from tests.conftest import drop_database, fresh_database, make_config, migrate_to_head
from tests.factories import make_account, make_invoice


@pytest.fixture()
def engine(backend: str, tmp_path: Path) -> Iterator[sa.Engine]:
    url = fresh_database(backend, tmp_path, "credits")
    migrate_to_head(create_app(make_config(url)))
    options = (
        {"connect_args": {"timeout": 30, "check_same_thread": False}} if backend == "sqlite" else {}
    )
    made = sa.create_engine(url, **options)
    yield made
    made.dispose()
    drop_database(url)


def test_two_credits_at_once_never_exceed_the_invoice(engine: sa.Engine, backend: str) -> None:
    with Session(engine) as session:
        account = make_account(session)
        invoice_id = make_invoice(session, account, [10_000]).id
        session.commit()

    # Each thread reads the invoice, then both try to credit 60 % of it: one must be refused.
    read_both = threading.Barrier(2)
    outcomes: list[str] = []

    def credit() -> None:
        with Session(engine) as session:
            if backend == "sqlite":
                read_both.wait()  # SQLite takes the write lock up front: they queue behind it
                session.connection(execution_options={"sqlite_begin": "IMMEDIATE"})
            invoice = session.get(Invoice, invoice_id)
            assert invoice is not None
            if backend != "sqlite":
                read_both.wait()  # both have read "nothing credited yet"
            try:
                services.issue_credit_note(session, invoice, Money(6_000, "USD"), reason="other")
                session.commit()
                outcomes.append("credited")
            except ValidationFailed:
                session.rollback()
                outcomes.append("refused")

    threads = [threading.Thread(target=credit) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(outcomes) == ["credited", "refused"]
    with Session(engine) as session:
        notes = session.scalar(
            select(func.sum(CreditNote.amount_minor)).where(CreditNote.invoice_id == invoice_id)
        )
        invoice = session.get(Invoice, invoice_id)
        assert invoice is not None
        assert notes == invoice.amount_credited_minor == 6_000
