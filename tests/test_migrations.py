"""The migrations build exactly the models' schema, and take it down again cleanly."""

from __future__ import annotations

from pathlib import Path
from pprint import pformat

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade

from portal import create_app
from portal.extensions import db
from tests.conftest import drop_database, fresh_database, make_config


def table_names() -> set[str]:
    return set(sa.inspect(db.engine).get_table_names())


def test_migrations_go_up_down_and_up_again_without_drift(backend: str, tmp_path: Path) -> None:
    url = fresh_database(backend, tmp_path, "migrations")
    app = create_app(make_config(url))
    with app.app_context():
        try:
            upgrade()
            assert "invoices" in table_names()
            downgrade(revision="base")
            assert table_names() <= {"alembic_version"}
            upgrade()
            assert table_names() == set(db.metadata.tables) | {"alembic_version"}
            with db.engine.connect() as connection:
                context = MigrationContext.configure(connection, opts={"compare_type": True})
                diff = compare_metadata(context, db.metadata)
            assert diff == [], "the models and the migrations differ:\n" + pformat(diff)
        finally:
            db.engine.dispose()
    drop_database(url)
