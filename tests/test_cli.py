"""The portal's commands (portal/cli.py) against a database other processes write to as well."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from tests.conftest import drop_database, fresh_database, make_config, migrate_to_head

pytestmark = pytest.mark.concurrency


@pytest.fixture()
def demo_app(backend: str, tmp_path: Path) -> Iterator[Flask]:
    from portal import create_app

    url = fresh_database(backend, tmp_path, "seed")
    # Stripe's own address: seeding leaves the demo's card a placeholder and calls nobody.
    app = create_app(make_config(url, STRIPE_API_BASE="https://api.stripe.com"))
    migrate_to_head(app)
    yield app
    drop_database(url)


def test_seed_demo_waits_for_another_writer_instead_of_failing(demo_app: Flask) -> None:
    """`make demo` starts the worker while the data is seeded; the worker's first sweep writes.

    A writer holds the database when seeding starts and commits while it runs. A seed that read
    before taking the write lock failed on SQLite ("database is locked": its snapshot was older
    than that commit); one that begins as a writer waits for the lock and seeds everything.
    """
    url = sa.engine.make_url(demo_app.config["SQLALCHEMY_DATABASE_URI"])
    if url.get_backend_name() == "sqlite":
        # The driver's own connection, with no transaction handling of its own in the way.
        other = sqlite3.connect(url.database, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
    else:
        engine = sa.create_engine(url)
        other = engine.raw_connection()
    other.execute("CREATE TABLE other_writer (x INTEGER)")
    other.execute("INSERT INTO other_writer VALUES (1)")
    timer = threading.Timer(0.5, other.commit)
    timer.start()
    try:
        result = demo_app.test_cli_runner().invoke(args=["portal", "seed-demo"])
    finally:
        timer.join()
        other.close()
    assert result.exit_code == 0, result.output
    assert "created plan Starter" in result.output
    assert "created staff user support@example.com (support)" in result.output
