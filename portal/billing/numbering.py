"""Gapless numbering: one counter row per series, advanced atomically inside the transaction."""

from __future__ import annotations

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from portal.billing.models import NumberSeries


def next_in_series(session: Session, key: str) -> int:
    """Take the next number of a series; it stays taken only if the transaction commits.

    NOTE: a single `UPDATE … RETURNING` both locks the counter row (PostgreSQL row lock, SQLite
    write lock) and reads the new value, so concurrent finalizations queue up behind each other
    and a rolled-back transaction gives its number back: no gaps, no duplicates.
    """
    statement = (
        update(NumberSeries)
        .where(NumberSeries.key == key)
        .values(next_value=NumberSeries.next_value + 1)
        .returning(NumberSeries.next_value)
    )
    taken = session.execute(statement).scalar_one_or_none()
    if taken is None:
        _create_series(session, key)
        taken = session.execute(statement).scalar_one()
    return taken - 1


def _create_series(session: Session, key: str) -> None:
    try:
        with session.begin_nested():
            session.execute(insert(NumberSeries).values(key=key, next_value=1))
    except IntegrityError:
        pass  # another transaction created it first; its row is what we lock next
    assert session.scalar(select(NumberSeries.id).where(NumberSeries.key == key)) is not None
