"""Double submits of the dispute form, as real concurrent transactions on each database: one
dispute, the others refused (the invoice's row lock; SQLite's write transaction)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from portal import db as unit_of_work
from portal.audit.services import Actor
from portal.billing.models import Invoice
from portal.billing.money import Money
from portal.disputes import services
from portal.disputes.hours import BusinessHours
from portal.disputes.models import Dispute
from portal.errors import DomainError
from portal.extensions import db
from tests.conftest import app_with_own_database
from tests.factories import make_account, make_invoice

THREADS = 6


def _race(app: Any, invoice_id: int, line_ids: list[int]) -> tuple[list[str], list[BaseException]]:
    barrier = threading.Barrier(THREADS)
    opened: list[str] = []
    refused: list[BaseException] = []

    def submit() -> None:
        with app.app_context():
            try:
                barrier.wait(timeout=10)
                unit_of_work.begin_write(db.session)
                invoice = db.session.get(Invoice, invoice_id)
                assert invoice is not None
                dispute = services.open_dispute(
                    db.session,
                    account=invoice.account,
                    invoice=invoice,
                    amount=Money(300, invoice.currency),
                    reason="duplicate",
                    description="Charged twice for the same thing.",
                    actor=Actor("customer", None),
                    target=services.ResponseTarget(16, BusinessHours("UTC")),
                    line_ids=line_ids,
                )
                unit_of_work.commit(db.session)
                opened.append(dispute.public_id)
            except BaseException as error:  # noqa: BLE001 - collected for the assertion
                db.session.rollback()
                refused.append(error)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=submit) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return opened, refused


def test_a_double_submit_opens_one_dispute(backend: str, tmp_path: Path) -> None:
    with app_with_own_database(backend, tmp_path, "disputes_race") as app, app.app_context():
        account = make_account(db.session)
        whole = make_invoice(db.session, account, [1500, 500])
        lines = make_invoice(db.session, account, [1500, 500])
        db.session.commit()
        whole_id, lines_id, line_ids = whole.id, lines.id, [lines.lines[0].id]
        db.session.remove()
        for invoice_id, chosen in ((whole_id, []), (lines_id, line_ids)):
            opened, refused = _race(app, invoice_id, chosen)
            assert len(opened) == 1, (opened, refused)
            assert len(refused) == THREADS - 1
            assert all(isinstance(error, DomainError) for error in refused), refused
            db.session.remove()
            count = db.session.scalar(
                select(func.count()).select_from(Dispute).where(Dispute.invoice_id == invoice_id)
            )
            assert count == 1
