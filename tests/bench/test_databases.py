"""bench.databases: the fresh SQLite file or PostgreSQL schema a bench measurement runs in (the
billing run and reminder benches share it), and its removal."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from bench import billing_run, databases, reminders


def _tables(url: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return sa.inspect(conn).get_table_names()
    finally:
        engine.dispose()


def _schema_exists(url: str) -> bool:
    schema = str(sa.engine.make_url(url).query["options"]).removeprefix("-csearch_path=")
    engine = sa.create_engine(databases.PG_URL)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                sa.text("SELECT 1 FROM information_schema.schemata WHERE schema_name = :name"),
                {"name": schema},
            ).scalar()
    finally:
        engine.dispose()
    return found is not None


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_fresh_database_is_empty_again_each_time_and_dropped_after(kind: str) -> None:
    url = databases.fresh_url(kind, "test-databases")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE leftover (x INTEGER)"))
        assert _tables(url) == ["leftover"]
    finally:
        engine.dispose()
    assert databases.fresh_url(kind, "test-databases") == url
    assert _tables(url) == []
    databases.drop(url)
    if kind == "sqlite":
        path = sa.engine.make_url(url).database or ""
        assert not [p for p in Path(path).parent.glob(Path(path).name + "*")]
    else:
        assert not _schema_exists(url)


def test_both_benches_use_it_under_their_own_names() -> None:
    assert reminders.fresh_url is databases.fresh_url
    assert reminders.drop is databases.drop is billing_run.drop
    billing = billing_run.fresh_url("sqlite", "one300")
    assert Path(sa.engine.make_url(billing).database or "").name.startswith("bench-billing-one300-")
    databases.drop(billing)
