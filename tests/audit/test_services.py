"""Recording audit events one at a time, or many in one INSERT (`batched`, the billing run)."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.audit import services as audit
from portal.audit.models import AuditEvent
from portal.audit.services import SYSTEM, Actor
from tests.factories import statements_sent


def _count(session: Session, action: str) -> int:
    return session.scalar(
        select(func.count()).select_from(AuditEvent).where(AuditEvent.action == action)
    )


def _statements(session: Session, run: Any) -> list[str]:
    """The table of each INSERT sent while run() runs, "other" for every other statement."""
    return [
        statement.split(None, 3)[2] if statement.startswith("INSERT") else "other"
        for statement in statements_sent(session, run)
    ]


def test_a_batch_of_events_is_one_insert_with_every_field(app: Flask, session: Session) -> None:
    staff = Actor("staff", None, "203.0.113.9")

    def run() -> None:
        with audit.batched(session):
            for i in range(12):
                (staff if i % 2 else SYSTEM).record(
                    session,
                    "test.batched",
                    account_id=None,
                    target_type="thing",
                    target_id=i,
                    before={"n": i},
                    after={"n": i + 1},
                )
            assert _count(session, "test.batched") == 0  # nothing is in before the block ends

    assert _statements(session, run).count("audit_events") == 1
    events = session.scalars(
        select(AuditEvent).where(AuditEvent.action == "test.batched").order_by(AuditEvent.id)
    ).all()
    assert [e.target_id for e in events] == [str(i) for i in range(12)]
    assert events[1].actor_kind == "staff" and events[1].ip == "203.0.113.9"
    assert events[0].actor_kind == "system" and events[0].ip is None
    assert (events[3].before, events[3].after) == ({"n": 3}, {"n": 4})
    assert all(e.occurred_at is not None for e in events)


def test_an_error_inside_a_batch_records_nothing(app: Flask, session: Session) -> None:
    with pytest.raises(RuntimeError), audit.batched(session):
        SYSTEM.record(session, "test.undone", account_id=None, target_type="t", target_id=1)
        raise RuntimeError("the batch failed")
    session.flush()
    assert _count(session, "test.undone") == 0
    # and the session records one at a time again
    SYSTEM.record(session, "test.after", account_id=None, target_type="t", target_id=1)
    session.flush()
    assert _count(session, "test.after") == 1


def test_a_nested_batch_inserts_once_at_the_outer_end(app: Flask, session: Session) -> None:
    with audit.batched(session):
        with audit.batched(session):
            SYSTEM.record(session, "test.nested", account_id=None, target_type="t", target_id=1)
        assert _count(session, "test.nested") == 0
    assert _count(session, "test.nested") == 1
