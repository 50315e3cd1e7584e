"""The audit log is append-only: no code path updates or deletes an AuditEvent, and the
database refuses UPDATE and DELETE on audit_events (trigger, migration 0007)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import delete, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from portal.audit.models import AuditEvent
from portal.audit.services import record

ROOT = Path(__file__).resolve().parents[2]
# An UPDATE or DELETE of audit events, by ORM statement, raw SQL, or session.delete() of one.
_WRITES = [
    re.compile(r"\b(update|delete)\(\s*AuditEvent\b"),
    re.compile(r"(?i)\b(update|delete\s+from)\s+\"?audit_events\b"),
    re.compile(r"\.delete\(\s*(audit_)?event\s*\)"),
    re.compile(r"\bAuditEvent\b[^\n]*\.(update|delete)\("),
]


def changes_audit_events(source: str) -> list[str]:
    return [match.group(0) for pattern in _WRITES for match in pattern.finditer(source)]


def test_the_checker_finds_an_update_or_delete() -> None:
    assert changes_audit_events("session.execute(update(AuditEvent).values(action='x'))")
    assert changes_audit_events("session.execute(delete(AuditEvent))")
    assert changes_audit_events('conn.exec_driver_sql("DELETE FROM audit_events")')
    assert changes_audit_events("session.delete(event)")
    assert not changes_audit_events("record(session, 'dispute.resolved')")


def test_no_code_path_updates_or_deletes_an_audit_event() -> None:
    found = {}
    for path in sorted((ROOT / "portal").rglob("*.py")):
        hits = changes_audit_events(path.read_text(encoding="utf-8"))
        if hits:
            found[str(path.relative_to(ROOT))] = hits
    assert found == {}, f"code that changes audit events: {found}"


def test_the_database_refuses_update_and_delete(session: Session) -> None:
    record(session, "test.append_only", target_type="test", target_id="1")
    session.flush()
    for statement in (
        update(AuditEvent).values(action="test.rewritten"),
        delete(AuditEvent),
        text("UPDATE audit_events SET action = 'raw'"),
        text("DELETE FROM audit_events"),
    ):
        with pytest.raises(DBAPIError, match="append-only"), session.begin_nested():
            session.execute(statement)
