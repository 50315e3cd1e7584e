"""A database of its own for one measurement, and its removal afterwards: a fresh SQLite file
under /tmp, or a fresh PostgreSQL schema on TEST_DATABASE_URL's server (reached through the
connection's search_path). Names carry the process id, so two benches at once never share one.
"""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa

PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# NOTE: the files SQLite (WAL) and the billing run's one-runner-at-a-time lock leave beside
# the database file.
_SQLITE_FILES = ("", "-wal", "-shm", ".billing-run.lock")
_SEARCH_PATH = "-csearch_path="


def fresh_url(backend: str, name: str) -> str:
    """The URL of an empty database for `name` ("reminders", "billing-one10000"): whatever a
    previous run of this process left under the same name is removed first."""
    if backend == "sqlite":
        path = Path("/tmp") / f"bench-{name}-{os.getpid()}.sqlite3"
        _remove_sqlite(path)
        return f"sqlite:///{path}"
    schema = f"bench_{name}_{os.getpid()}".replace("-", "_")
    url = sa.engine.make_url(PG_URL)
    _admin(url, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE', f'CREATE SCHEMA "{schema}"')
    return url.update_query_dict({"options": f"{_SEARCH_PATH}{schema}"}).render_as_string(
        hide_password=False
    )


def drop(url: str) -> None:
    """Remove a database fresh_url made (the SQLite file and its companions, or the schema)."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        _remove_sqlite(Path(parsed.database or ""))
        return
    options = str(parsed.query.get("options", ""))
    if not options.startswith(_SEARCH_PATH):
        raise ValueError(f"not a URL of bench.databases.fresh_url: {parsed!r}")
    schema = options.removeprefix(_SEARCH_PATH)
    _admin(parsed.difference_update_query(["options"]), f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _remove_sqlite(path: Path) -> None:
    for suffix in _SQLITE_FILES:
        Path(str(path) + suffix).unlink(missing_ok=True)


def _admin(url: sa.URL, *statements: str) -> None:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for statement in statements:
                conn.execute(sa.text(statement))
    finally:
        engine.dispose()
