"""Alembic environment: the schema is the portal's models; the connection is the app's engine."""

import logging
from logging.config import fileConfig

from alembic import context
from flask import current_app

config = context.config
if config.config_file_name and not logging.getLogger().handlers:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

db = current_app.extensions["migrate"].db
target_metadata = db.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=db.engine.url.render_as_string(hide_password=False),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _sqlite_foreign_keys(connection, on: bool) -> None:
    """SQLite: batch mode rebuilds a table (copy, DROP, rename), and with foreign keys on the
    DROP deletes or refuses every row that references it. Alembic's recipe: foreign keys off
    while migrating (the pragma is a no-op inside a transaction, so it is set on the raw
    connection before the migration's transaction begins), checked before the commit."""
    if connection.dialect.name == "sqlite":
        connection.connection.dbapi_connection.execute(
            f"PRAGMA foreign_keys = {'ON' if on else 'OFF'}"
        )


def run_migrations_online() -> None:
    with db.engine.connect() as connection:
        _sqlite_foreign_keys(connection, on=False)
        try:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=True,
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
                if connection.dialect.name == "sqlite":
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"a migration broke foreign keys: {broken[:5]}")
        finally:
            _sqlite_foreign_keys(connection, on=True)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
