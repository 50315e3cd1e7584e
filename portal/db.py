"""The declarative base, the constraint naming convention and the shared column types."""

from __future__ import annotations

import secrets
import sqlite3
from datetime import UTC, date, datetime
from typing import Annotated, Any

from sqlalchemy import BigInteger, Date, DateTime, Integer, MetaData, String, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, mapped_column, registry, scoped_session
from sqlalchemy.types import TypeDecorator

# NOTE: stable constraint names let Alembic drop and alter constraints on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every backend (SQLite stores it naive, we hand it back aware)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def new_public_id() -> str:
    """A random, URL-safe id for objects that appear in URLs (neither guessable nor sequential)."""
    return secrets.token_urlsafe(12)


# BIGINT on PostgreSQL, INTEGER (the rowid alias) on SQLite.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")

intpk = Annotated[int, mapped_column(BigIntPK, primary_key=True)]
public_id = Annotated[
    str, mapped_column(String(24), unique=True, default=new_public_id, nullable=False)
]
timestamp = Annotated[datetime, mapped_column(UTCDateTime())]
day = Annotated[date, mapped_column(Date())]
money_minor = Annotated[int, mapped_column(BigInteger())]
currency_code = Annotated[str, mapped_column(String(3))]
str255 = Annotated[str, mapped_column(String(255))]


class Base(DeclarativeBase):
    registry = registry(
        metadata=MetaData(naming_convention=NAMING_CONVENTION),
        type_annotation_map={datetime: UTCDateTime(), date: Date(), str: String(255)},
    )


def currency_check(column: str = "currency") -> str:
    """SQL for a CHECK that a currency column holds three upper-case letters, on both backends."""
    return f"length({column}) = 3 AND upper({column}) = {column}"


@event.listens_for(Engine, "connect")
def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # NOTE: pysqlite's own transaction handling breaks SAVEPOINT and BEGIN IMMEDIATE; we take it
    # over (SQLAlchemy's documented recipe) and emit BEGIN ourselves in _begin_sqlite.
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.execute("PRAGMA busy_timeout = 10000")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()


@event.listens_for(Engine, "begin")
def _begin_sqlite(conn: Any) -> None:
    if conn.dialect.name != "sqlite":
        return
    # NOTE: a transaction that will write under contention asks for IMMEDIATE up front, which is
    # SQLite's equivalent of taking the row lock first (see begin_write).
    mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


def begin_write(session: Session | scoped_session[Session]) -> None:
    """Start the session's next transaction as a writer, committing any open (read) one first.

    On SQLite it begins with BEGIN IMMEDIATE, which takes the database write lock up front: a
    transaction that reads and then writes can neither deadlock with another writer nor fail on
    a snapshot older than their commit. On PostgreSQL it is an ordinary transaction; rows that
    must not change underneath are locked with FOR UPDATE.
    """
    current = session() if isinstance(session, scoped_session) else session
    if current.in_transaction():
        current.commit()
    current.connection(execution_options={"sqlite_begin": "IMMEDIATE"})
