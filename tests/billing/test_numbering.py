"""Gapless numbering series."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.billing.models import NumberSeries
from portal.billing.numbering import next_in_series


def test_a_series_counts_one_two_three(session: Session) -> None:
    assert [next_in_series(session, "test:abc") for _ in range(3)] == [1, 2, 3]
    stored = session.scalar(select(NumberSeries).where(NumberSeries.key == "test:abc"))
    assert stored is not None and stored.next_value == 4


def test_series_are_independent(session: Session) -> None:
    assert next_in_series(session, "test:a") == 1
    assert next_in_series(session, "test:a") == 2
    assert next_in_series(session, "test:b") == 1
    assert next_in_series(session, "test:a") == 3
    assert next_in_series(session, "test:b") == 2


def test_a_rolled_back_transaction_gives_its_number_back(session: Session) -> None:
    assert next_in_series(session, "test:gap") == 1
    nested = session.begin_nested()
    assert next_in_series(session, "test:gap") == 2
    nested.rollback()
    assert next_in_series(session, "test:gap") == 2
    assert next_in_series(session, "test:gap") == 3


def test_a_series_created_in_a_rolled_back_transaction_starts_again_at_one(
    session: Session,
) -> None:
    nested = session.begin_nested()
    assert next_in_series(session, "test:new") == 1
    nested.rollback()
    assert session.scalar(select(NumberSeries).where(NumberSeries.key == "test:new")) is None
    assert next_in_series(session, "test:new") == 1
