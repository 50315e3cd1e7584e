"""A flush of many new rows takes their ids from the table's sequence first on PostgreSQL
(portal.db._reserve_ids), so the rows go in without RETURNING, by executemany; small flushes and
SQLite are left as they were. Either way every row and every child row ends up as it was added."""

from __future__ import annotations

from typing import Any

from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal import db as portal_db
from portal.audit.models import AuditEvent
from portal.billing import services as billing
from portal.billing.models import Invoice, InvoiceLine
from tests.factories import make_account, statements_sent


def _inserts(session: Session, run: Any) -> list[tuple[str, bool]]:
    """(table, whether it asked for RETURNING) for each INSERT sent while run() runs."""
    return [
        (statement.split()[2], "RETURNING" in statement)
        for statement in statements_sent(session, run)
        if statement.split()[:2] == ["INSERT", "INTO"]
    ]


def _events(n: int) -> list[AuditEvent]:
    return [
        AuditEvent(actor_kind="system", action="test.bulk", target_type="test", target_id=str(i))
        for i in range(n)
    ]


def test_many_new_rows_go_in_without_returning_on_postgresql(
    app: Flask, session: Session, backend: str
) -> None:
    events = _events(portal_db.RESERVE_IDS_FROM + 5)
    session.add_all(events)
    sent = _inserts(session, session.flush)
    assert {table for table, _ in sent} == {"audit_events"}
    # On PostgreSQL the ids came first: one executemany, no RETURNING. SQLite returns them as
    # before.
    assert all(returning is (backend == "sqlite") for _, returning in sent)
    if backend == "postgresql":
        assert len(sent) == 1
    ids = [e.id for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # in the order they were added
    stored = session.execute(
        select(AuditEvent.id, AuditEvent.target_id).where(AuditEvent.action == "test.bulk")
    ).all()
    assert sorted(stored) == sorted((e.id, e.target_id) for e in events)


def test_a_small_flush_is_one_insert_returning_its_ids(app: Flask, session: Session) -> None:
    session.add_all(_events(portal_db.RESERVE_IDS_FROM - 1))
    sent = _inserts(session, session.flush)
    assert sent and all(returning for _, returning in sent)


def test_children_of_reserved_parents_point_at_them(
    app: Flask, session: Session, backend: str
) -> None:
    account = make_account(session)
    session.flush()
    drafts = [
        billing.create_draft_invoice(
            session,
            account,
            [
                billing.LineInput(description=f"Line {i}a", unit_amount_minor=100 + i),
                billing.LineInput(description=f"Line {i}b", unit_amount_minor=200 + i),
            ],
            flush=False,
        )
        for i in range(portal_db.RESERVE_IDS_FROM)
    ]
    sent = _inserts(session, session.flush)
    assert {table for table, returning in sent if returning} == (
        {"invoices", "invoice_lines"} if backend == "sqlite" else set()
    )
    session.expire_all()
    for i, draft in enumerate(drafts):
        lines = session.scalars(
            select(InvoiceLine).where(InvoiceLine.invoice_id == draft.id).order_by(InvoiceLine.id)
        ).all()
        assert [line.description for line in lines] == [f"Line {i}a", f"Line {i}b"]
        assert session.get(Invoice, draft.id).subtotal_minor == 300 + 2 * i  # type: ignore[union-attr]
