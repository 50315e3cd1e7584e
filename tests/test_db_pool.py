"""Pooled connections: one idle a while is pinged before use, a fresh one is not (no round trip)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from portal import db as portal_db
from portal.config import from_environment
from tests.conftest import fresh_database, postgres_unavailable, postgres_url


@pytest.fixture()
def engine(backend: str, tmp_path: Path) -> Iterator[Engine]:
    if backend == "postgresql" and postgres_unavailable():
        fresh_database(backend, tmp_path, "pool")  # skips, or fails under PORTAL_REQUIRE_ALL
    url = f"sqlite:///{tmp_path / 'pool.sqlite3'}" if backend == "sqlite" else postgres_url()
    made = sa.create_engine(url, pool_size=1, max_overflow=0, **portal_db.ENGINE_OPTIONS)
    yield made
    made.dispose()


def _kill(engine: Engine, backend: str) -> None:
    """End the pooled connection behind the pool's back: the server ends it on PostgreSQL (as a
    restart would); on SQLite the driver's connection is closed under the pool."""
    with engine.connect() as conn:
        pid = (
            conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
            if backend == "postgresql"
            else None
        )
        raw = conn.connection.dbapi_connection
    # NOTE: back in the pool now, as between two requests.
    if backend == "postgresql":
        admin = sa.create_engine(postgres_url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as other:
            other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        admin.dispose()
    else:
        raw.close()


def test_a_connection_idle_past_the_window_is_pinged_and_replaced_when_dead(
    engine: Engine, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _kill(engine, backend)
    monkeypatch.setattr(portal_db, "IDLE_PING_SECONDS", -1.0)  # every pooled one counts as idle
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1


def test_a_connection_back_in_the_pool_moments_ago_is_used_without_a_ping(
    engine: Engine, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # NOTE: the other side of the trade: no ping inside the window, so a connection that died
    # within it fails its statement (and SQLAlchemy then renews the pool).
    _kill(engine, backend)
    monkeypatch.setattr(portal_db, "IDLE_PING_SECONDS", 3600.0)
    with pytest.raises(sa.exc.DBAPIError), engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1


def test_the_portal_and_the_bench_reference_use_the_same_engine_options(tmp_path: Path) -> None:
    from bench import bare

    portal_options = from_environment(tmp_path)["SQLALCHEMY_ENGINE_OPTIONS"]
    assert bare.ENGINE_OPTIONS == portal_options == portal_db.ENGINE_OPTIONS
    assert portal_db.ENGINE_OPTIONS.get("pool_pre_ping") is False
