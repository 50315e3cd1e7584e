"""Gapless numbering: one counter row per series, advanced atomically inside the transaction."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from sqlalchemy import insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
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


def take_many(session: Session, keys: Sequence[str]) -> list[int]:
    """The next numbers for several finalizations at once, one per entry of `keys` (a series
    may repeat: its numbers follow each other in the order given). Gapless as next_in_series:
    the counter rows stay locked until the transaction ends.

    NOTE: one `UPDATE … WHERE key IN (…) RETURNING` per distinct count of numbers taken (in a
    billing run: one statement for the whole batch); a series seen for the first time is
    created (INSERT … ON CONFLICT DO NOTHING, so a concurrent creation is no error) and then
    advanced the same way.
    """
    wanted = Counter(keys)
    first: dict[str, int] = {}
    _advance(session, wanted, first)
    missing = sorted(key for key in wanted if key not in first)
    if missing:
        dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        # NOTE: one statement run for many rows (executemany of a statement compiled once),
        # not a VALUES list of a different length in every batch, compiled anew each time.
        session.execute(
            dialect.insert(NumberSeries.__table__).on_conflict_do_nothing(index_elements=["key"]),
            [{"key": key, "next_value": 1} for key in missing],
        )
        _advance(session, Counter({key: wanted[key] for key in missing}), first)
    if len(first) != len(wanted):
        raise RuntimeError("a number series could not be advanced")
    out = []
    for key in keys:
        out.append(first[key])
        first[key] += 1
    return out


def _advance(session: Session, wanted: Counter[str], first: dict[str, int]) -> None:
    by_count: dict[int, list[str]] = {}
    for key, count in wanted.items():
        by_count.setdefault(count, []).append(key)
    for count, group in sorted(by_count.items()):
        rows = session.execute(
            update(NumberSeries)
            .where(NumberSeries.key.in_(sorted(group)))
            .values(next_value=NumberSeries.next_value + count)
            .returning(NumberSeries.key, NumberSeries.next_value)
            .execution_options(synchronize_session=False)
        ).all()
        for key, after in rows:
            first[key] = after - count
