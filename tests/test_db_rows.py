"""Plain rows inserted by portal.db.insert_rows (the billing run's invoices, lines, outbox rows,
audit events and ledger entries): on PostgreSQL many rows go in by COPY, and what is stored must
be exactly what an INSERT of the same values stores: the columns' defaults, UTC datetimes, JSON
(None, nesting, characters COPY escapes), NULLs; errors are SQLAlchemy's, as an INSERT's are."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    MetaData,
    String,
    Table,
    Text,
    cast,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from portal import db as portal_db
from portal.audit.models import AuditEvent
from portal.notifications.models import OutboxEmail
from tests.factories import make_account, statements_sent

NOW = datetime(2026, 12, 21, 9, tzinfo=UTC)
AWKWARD = "tab\there, new\nline, back\\slash, \\N, quote ' \" , ümlaut, 東京, emoji 🧾"


def _audit_rows(tag: str, n: int) -> list[dict[str, Any]]:
    start = datetime(2026, 12, 21, 5, 30, 0, 123456, tzinfo=UTC)
    return [
        {
            "occurred_at": start + timedelta(seconds=i),
            "actor_kind": "system",
            "actor_user_id": None,
            "account_id": None,
            "action": f"test.{tag}",
            "target_type": "test",
            "target_id": f"{i} {AWKWARD}"[:64],
            "before": None if i % 3 == 0 else {"status": "draft", "n": i, "none": None},
            "after": {"text": AWKWARD, "list": [1, 2.5, None, True], "deep": {"a": {"b": []}}},
            "ip": None if i % 2 else "192.0.2.1",
        }
        for i in range(n)
    ]


def _outbox_rows(tag: str, account_id: int, n: int) -> list[dict[str, Any]]:
    # NOTE: status, attempts, next_attempt_at, created_at, last_error … left to the defaults.
    return [
        {
            "message_id": f"<{tag}-{i}@test.invalid>",
            "to_address": f"{tag}{i}@example.com",
            "subject": AWKWARD,
            "template": "invoice_issued",
            "text_body": "",
            "html_body": "",
            "account_id": account_id,
            "dedupe_key": f"{tag}:{i}",
            "attachment_kind": "invoice_pdf" if i % 2 else None,
            "attachment_ref": str(i) if i % 2 else None,
        }
        for i in range(n)
    ]


def _stored(session: Session, table: Table, *where: Any) -> list[dict[str, Any]]:
    skip = {"id", "action", "message_id", "dedupe_key", "to_address"}
    return [
        {key: value for key, value in row.items() if key not in skip}
        for row in session.execute(select(table).where(*where).order_by(table.c.id)).mappings()
    ]


def test_rows_are_stored_as_an_insert_stores_them(
    session: Session, clock: Any, backend: str
) -> None:
    clock.set(NOW)
    account = make_account(session)
    n = portal_db.COPY_FROM + 5
    table = AuditEvent.__table__
    session.execute(insert(table), _audit_rows("inserted", n))
    sent = statements_sent(
        session, lambda: portal_db.insert_rows(session, table, _audit_rows("rows", n))
    )
    # On PostgreSQL the rows went by COPY (no INSERT statement); on SQLite by executemany.
    assert any("INSERT" in s for s in sent) is (backend == "sqlite")
    assert _stored(session, table, table.c.action == "test.rows") == _stored(
        session, table, table.c.action == "test.inserted"
    )
    # The JSON as stored, character for character (not only equal once parsed).
    as_text = [cast(table.c.before, Text), cast(table.c.after, Text)]
    texts = {
        action: session.execute(
            select(*as_text).where(table.c.action == action).order_by(table.c.id)
        ).all()
        for action in ("test.rows", "test.inserted")
    }
    assert texts["test.rows"] == texts["test.inserted"]
    assert texts["test.rows"][0][0] == "null"  # None is JSON null, as the INSERT stores it
    outbox = OutboxEmail.__table__
    session.execute(insert(outbox), _outbox_rows("inserted", account.id, n))
    ids = portal_db.insert_rows(session, outbox, _outbox_rows("rows", account.id, n), ids=True)
    assert ids == sorted(ids) and len(set(ids)) == n
    by_rows = _stored(session, outbox, outbox.c.id.in_(ids))
    assert by_rows == _stored(session, outbox, outbox.c.message_id.like("<inserted-%"))
    assert by_rows[0]["status"] == "pending" and by_rows[0]["created_at"] == NOW
    # The ids returned are the rows' own, in the order given.
    assert [session.scalar(select(outbox.c.dedupe_key).where(outbox.c.id == i)) for i in ids] == [
        f"rows:{i}" for i in range(n)
    ]


def test_a_row_that_breaks_a_constraint_raises_sqlalchemys_integrity_error(
    session: Session, clock: Any
) -> None:
    clock.set(NOW)
    account = make_account(session)
    rows = _outbox_rows("twice", account.id, portal_db.COPY_FROM + 1)
    rows[-1]["dedupe_key"] = rows[0]["dedupe_key"]
    with pytest.raises(IntegrityError):
        portal_db.insert_rows(session, OutboxEmail.__table__, rows)
    session.rollback()


def test_a_default_that_reads_the_statement_leaves_the_rows_to_an_insert(
    session: Session,
) -> None:
    # NOTE: the audit table seen through a Table of this test's own, whose target_type default
    # reads the row the INSERT is given (a context default: COPY has no context to give it).
    def from_the_row(context: Any) -> str:
        return "for " + context.get_current_parameters()["target_id"]

    table = Table(
        "audit_events",
        MetaData(),
        Column("id", BigInteger, primary_key=True),
        Column("occurred_at", DateTime(timezone=True), default=lambda: NOW),
        Column("actor_kind", String(16)),
        Column("action", String(64)),
        Column("target_type", String(32), default=from_the_row),
        Column("target_id", String(64)),
    )
    rows = [
        {"actor_kind": "system", "action": "test.context", "target_id": str(i)}
        for i in range(portal_db.COPY_FROM + 1)
    ]
    sent = statements_sent(session, lambda: portal_db.insert_rows(session, table, rows))
    assert any("INSERT" in s for s in sent)
    stored = session.execute(
        select(table.c.target_type, table.c.target_id)
        .where(table.c.action == "test.context")
        .order_by(table.c.id)
    ).all()
    assert stored == [(f"for {i}", str(i)) for i in range(len(rows))]
