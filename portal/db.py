"""The declarative base, the constraint naming convention and the shared column types."""

from __future__ import annotations

import logging
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from typing import Annotated, Any

from sqlalchemy import (
    BigInteger,
    Date,
    DateTime,
    Integer,
    MetaData,
    String,
    event,
    exc,
    insert,
    inspect,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, mapped_column, registry, scoped_session
from sqlalchemy.pool import Pool
from sqlalchemy.types import TypeDecorator

log = logging.getLogger(__name__)

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
money_minor = Annotated[int, mapped_column(BigInteger())]

# NOTE: the largest id a BIGINT primary key holds: a page link carrying a larger one names no
# row, and SQLite's driver would refuse to bind it (OverflowError) instead of finding nothing.
MAX_ROW_ID = 2**63 - 1


def parse_row_id(text: str) -> int | None:
    """A row id as written in a URL (ASCII digits, within BIGINT), or None."""
    if not (0 < len(text) <= 19 and text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if 0 < value <= MAX_ROW_ID else None


class Base(DeclarativeBase):
    registry = registry(
        metadata=MetaData(naming_convention=NAMING_CONVENTION),
        type_annotation_map={datetime: UTCDateTime(), date: Date(), str: String(255)},
    )


def one_of(column: str, values: Iterable[str]) -> str:
    """SQL for a CHECK that a column holds one of an enum's values, built from the enum itself
    (so a value added to the enum cannot silently diverge from the database's list)."""
    quoted = ", ".join("'" + str(value).replace("'", "''") + "'" for value in values)
    return f"{column} IN ({quoted})"


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


# -- connections that went stale --------------------------------------------------------------
# NOTE: SQLAlchemy's pool_pre_ping pings on every checkout: on PostgreSQL that is one more round
# trip (and, with psycopg, the BEGIN it opens) on every request, a fifth of a page's round trips.
# A connection back in the pool a moment ago is as alive as the pool's own bookkeeping says; one
# idle longer than this may have been closed by a database restart, a failover or an idle
# timeout, and is pinged first. A dead one is swapped for a fresh connection (the pool retries a
# checkout refused with DisconnectionError), so no request meets it. A server that dies within
# the window fails the statements in flight; SQLAlchemy then sees the disconnect and replaces
# every connection of the pool made before it.
IDLE_PING_SECONDS = 5.0
ENGINE_OPTIONS: dict[str, Any] = {"pool_pre_ping": False}
_IDLE_SINCE = "portal.idle_since"


@event.listens_for(Pool, "checkin")
def _note_idle(_dbapi_connection: Any, record: Any) -> None:
    if record is not None:
        record.info[_IDLE_SINCE] = time.monotonic()


@event.listens_for(Pool, "checkout")
def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    idle_since = record.info.get(_IDLE_SINCE)
    if idle_since is None or time.monotonic() - idle_since <= IDLE_PING_SECONDS:
        return  # new, or back in the pool moments ago
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
    except Exception as error:  # the driver's own error classes differ (sqlite3, psycopg)
        raise exc.DisconnectionError(f"an idle pooled connection is gone: {error}") from error


@event.listens_for(Engine, "begin")
def _begin_sqlite(conn: Any) -> None:
    if conn.dialect.name != "sqlite":
        return
    # NOTE: a transaction that will write asks for IMMEDIATE up front, which is SQLite's
    # equivalent of taking the row lock first: a deferred transaction that read and then writes
    # fails at once ("database is locked") when another writer committed meanwhile, while
    # BEGIN IMMEDIATE waits for the busy timeout. Every transaction of a state-changing request
    # (POST, PUT, PATCH, DELETE) writes that way; other code asks with begin_write.
    mode = conn.get_execution_options().get("sqlite_begin")
    if mode is None:
        mode = "IMMEDIATE" if _in_write_request() else "DEFERRED"
    conn.exec_driver_sql(f"BEGIN {mode}")


def _no_request() -> bool:
    return False


_in_write_request: Callable[[], bool] = _no_request


def set_write_request_probe(probe: Callable[[], bool]) -> None:
    """Tell the database layer how to know whether the current request changes state (the web
    layer answers; this module stays free of Flask, so billing logic can use it anywhere)."""
    global _in_write_request
    _in_write_request = probe


# -- the unit of work ------------------------------------------------------------------------
# Services flush and never commit. Whoever owns the unit of work commits it once: the request
# boundary (portal.web.PortalFlask) after the view, a CLI command or a job at its end. Side
# effects that must follow the commit (waking the mail sender, a Stripe call) are registered
# with after_commit and run once the commit succeeded; a rollback forgets them.

_WROTE = "portal.wrote"
_AFTER_COMMIT = "portal.after_commit"


def _plain(session: Session | scoped_session[Session]) -> Session:
    return session() if isinstance(session, scoped_session) else session


def has_pending_changes(session: Session | scoped_session[Session]) -> bool:
    """True when the session holds changes not yet committed (unflushed or flushed)."""
    current = _plain(session)
    if current.new or current.deleted or current.dirty:
        return True
    return current.in_transaction() and bool(current.info.get(_WROTE))


def begin_write(session: Session | scoped_session[Session]) -> None:
    """Start the session's next transaction as a writer; refuse when changes are pending.

    On SQLite it begins with BEGIN IMMEDIATE, which takes the database write lock up front: a
    transaction that reads and then writes can neither deadlock with another writer nor fail on
    a snapshot older than their commit. On PostgreSQL it is an ordinary transaction; rows that
    must not change underneath are locked with FOR UPDATE. A read transaction still open is
    ended first (it has nothing to commit); pending writes raise PendingChanges, because
    committing them here would split the caller's unit of work without it knowing.
    """
    from portal.errors import PendingChanges

    current = _plain(session)
    if has_pending_changes(current):
        raise PendingChanges("begin_write() was called with uncommitted changes pending")
    if current.in_transaction():
        current.commit()
    current.connection(execution_options={"sqlite_begin": "IMMEDIATE"})


def after_commit(session: Session | scoped_session[Session], effect: Callable[[], None]) -> None:
    """Run `effect` once the current unit of work has committed (never if it rolls back)."""
    _plain(session).info.setdefault(_AFTER_COMMIT, []).append(effect)


def commit(session: Session | scoped_session[Session]) -> None:
    """Commit the unit of work, then run the side effects registered for after its commit.

    A failing side effect is logged, not raised: what it does is recorded in the database
    first (an outbox row, a payment attempt) and a sweep retries it.
    """
    current = _plain(session)
    current.commit()
    effects = current.info.pop(_AFTER_COMMIT, [])
    for effect in effects:
        try:
            effect()
        except Exception:
            log.exception("a side effect after commit failed; its sweep will retry it")


def end_request(session: Session | scoped_session[Session], *, read_only: bool) -> None:
    """The request boundary's end of the unit of work: commit it. On a request that may not
    change state (GET, HEAD, OPTIONS) and wrote nothing and registered no after-commit effect,
    the read transaction ends without expiring what it loaded: with COMMIT on PostgreSQL, and
    on SQLite by the request's teardown.

    NOTE: the ORM commit of a read expires every loaded object for nothing (0.5-0.9 ms a page),
    so a read commits with expire_on_commit off. It commits at all on PostgreSQL because the
    teardown's close would end it with ROLLBACK, and psycopg forgets its prepared statements on
    every ROLLBACK: each request's queries were parsed and planned afresh (2-3 ms of backend
    CPU a page, against 0.8 ms with them kept). With no write in the transaction, COMMIT and
    ROLLBACK end it alike. A write request always commits, so its write lock is never held
    past the commit.
    """
    current = _plain(session)
    if read_only and not current.info.get(_AFTER_COMMIT) and not has_pending_changes(current):
        if current.in_transaction() and _ends_with_commit(current):
            expire, current.expire_on_commit = current.expire_on_commit, False
            try:
                current.commit()
            finally:
                current.expire_on_commit = expire
        return
    commit(current)


def _ends_with_commit(session: Session) -> bool:
    bind = session.get_bind()
    return bind.dialect.name == "postgresql"


def commit_before_network_call(session: Session | scoped_session[Session]) -> None:
    """The one named exception to "the request commits once": the payment path saves the
    attempt and its idempotency key, commits, and only then calls Stripe, so that no lock or
    write transaction is held across the call and a lost answer can be settled with the key.
    The mail sender's claim of outbox rows commits the same way before it talks to SMTP.

    Callers read every value they need before this (objects expire on commit) and must not
    touch the database again until the network call has returned.
    """
    commit(session)


@event.listens_for(Session, "after_flush")
def _note_flush(session: Session, _context: Any) -> None:
    session.info[_WROTE] = True


@event.listens_for(Session, "do_orm_execute")
def _note_write_statement(state: Any) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        state.session.info[_WROTE] = True


@event.listens_for(Session, "after_transaction_end")
def _forget_writes(session: Session, transaction: Any) -> None:
    if transaction.parent is None:
        session.info.pop(_WROTE, None)


@event.listens_for(Session, "after_soft_rollback")
def _forget_effects(session: Session, previous_transaction: Any) -> None:
    if previous_transaction.parent is None:
        session.info.pop(_AFTER_COMMIT, None)


# -- many new rows in one flush (PostgreSQL) ----------------------------------------------------
# NOTE: a flush that inserts many rows of a table whose ids come from the database sends one
# INSERT … VALUES (…), (…), … RETURNING id per table, with one placeholder per value: for a
# billing-run batch that is a statement of 100-200 kB, which psycopg parses in Python on every
# execution (it caches only statements up to 4 kB) and PostgreSQL parses and plans anew. With
# the ids taken from the table's sequence first (one short query per table), the rows need no
# RETURNING and psycopg sends them with executemany: one short statement, prepared once, the
# rows pipelined. Ids stay in the order the rows were added. Small flushes are left alone (one
# INSERT … RETURNING is one round trip; reserving first would be two).
RESERVE_IDS_FROM = 20
# NOTE: the sequence is looked up on each use (cheap): which schema a table is in depends on the
# connection's search_path.
_NEXT_IDS = text(
    "SELECT nextval(pg_get_serial_sequence(:table, :column)) FROM generate_series(1, :n)"
)


@event.listens_for(Session, "before_flush")
def _reserve_ids(session: Session, _context: Any, _instances: Any) -> None:
    if len(session.new) < RESERVE_IDS_FROM:
        return
    bind = session.get_bind()
    if bind.dialect.name != "postgresql":
        return
    waiting: dict[Any, list[Any]] = {}
    for obj in session.new:
        state = inspect(obj)
        table = _reservable_table(state.mapper)
        if table is not None and state.identity is None:
            key = state.mapper.get_property_by_column(state.mapper.primary_key[0]).key
            if state.dict.get(key) is None:
                waiting.setdefault(table, []).append(state)
    for table, states in waiting.items():
        if len(states) < RESERVE_IDS_FROM:
            continue
        taken = reserve_ids(session, table, len(states))
        if taken is None:
            continue  # the column has no sequence: the database assigns ids as before
        mapper = states[0].mapper
        key = mapper.get_property_by_column(mapper.primary_key[0]).key
        for state, new_id in zip(sorted(states, key=_insert_order), taken, strict=True):
            setattr(state.obj(), key, new_id)


def reserve_ids(session: Session, table: Any, n: int) -> list[int] | None:
    """PostgreSQL: `n` new ids of the table taken from its sequence in one query, ascending;
    None when its id column has no sequence (or on another database)."""
    if n <= 0 or session.get_bind().dialect.name != "postgresql":
        return None
    column = next(iter(table.primary_key.columns))
    taken = list(
        session.connection()
        .execute(_NEXT_IDS, {"table": table.fullname, "column": column.name, "n": n})
        .scalars()
    )
    if len(taken) != n or any(value is None for value in taken):
        return None
    return sorted(taken)


def insert_rows(
    session: Session, table: Any, rows: list[dict[str, Any]], *, ids: bool = False
) -> list[int]:
    """Insert plain rows (dicts of column values; the columns' defaults fill the rest) in the
    session's transaction with one executemany, without unit-of-work objects. With `ids`, each
    row gets its new id (set in the dict too) and the ids are returned in the order of `rows`:
    on PostgreSQL taken from the sequence first, so the INSERT needs no RETURNING; on SQLite
    returned by the INSERT, in the order of the rows.

    NOTE: every row must name the same columns (one statement serves them all)."""
    if not rows:
        return []
    session.info[_WROTE] = True
    column = next(iter(table.primary_key.columns))
    postgres = session.get_bind().dialect.name == "postgresql"
    if not ids:
        if not (postgres and _copy_in(session, table, rows)):
            session.connection().execute(insert(table), rows)
        return []
    taken = reserve_ids(session, table, len(rows))
    if taken is not None:
        for row, new_id in zip(rows, taken, strict=True):
            row[column.name] = new_id
        if not _copy_in(session, table, rows):
            session.connection().execute(insert(table), rows)
        return taken
    returned = (
        session.connection()
        .execute(insert(table).returning(column, sort_by_parameter_order=True), rows)
        .scalars()
        .all()
    )
    for row, new_id in zip(rows, returned, strict=True):
        row[column.name] = new_id
    return list(returned)


# NOTE: below this many rows an executemany is as cheap as a COPY and shows in the statement
# events like every other statement.
COPY_FROM = 20


def _copy_in(session: Session, table: Any, rows: list[dict[str, Any]]) -> bool:
    """PostgreSQL: the rows in by COPY … FROM STDIN, in the session's transaction; False (and
    nothing sent) when COPY does not fit: few rows, or a column default only the INSERT knows.

    NOTE: an executemany still runs one INSERT per row on the server, and psycopg builds each
    row's message in Python; COPY streams the rows as one statement (a third of the billing
    run's time went to the former). The values are what the INSERT would send: the columns'
    bind processors (UTC datetimes, JSON) applied to the same values, and the defaults of the
    columns the rows leave out evaluated per row, as Core does for an INSERT.
    """
    if len(rows) < COPY_FROM:
        return False
    named = list(rows[0])
    defaulted = []
    for column in table.columns:
        if column.name in rows[0] or column.default is None:
            continue
        default = column.default
        if not (default.is_scalar or default.is_callable):
            return False
        if default.is_callable and not hasattr(default.arg, "__wrapped__"):
            # NOTE: SQLAlchemy wraps a default that takes no argument; one that takes the
            # statement's context reads what only the INSERT has.
            return False
        defaulted.append((column.name, default))
    connection = session.connection()
    dialect = connection.dialect

    def processor(name: str) -> Any:
        return table.c[name].type.dialect_impl(dialect).bind_processor(dialect)

    given = [(name, processor(name)) for name in named]
    filled = [(default, processor(name)) for name, default in defaulted]
    quote = dialect.identifier_preparer.quote
    names = named + [name for name, _ in defaulted]
    statement = (
        f"COPY {dialect.identifier_preparer.format_table(table)} "
        f"({', '.join(quote(name) for name in names)}) FROM STDIN"
    )
    driver = connection.connection.driver_connection
    try:
        with driver.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                values = [
                    row[name] if process is None else process(row[name]) for name, process in given
                ]
                for default, process in filled:
                    value = default.arg if default.is_scalar else default.arg(None)
                    values.append(value if process is None else process(value))
                copy.write_row(values)
    except dialect.loaded_dbapi.Error as error:
        raise exc.DBAPIError.instance(statement, None, error, dialect.loaded_dbapi.Error) from error
    return True


def _insert_order(state: Any) -> int:
    return state.insert_order if state.insert_order is not None else 0


def _reservable_table(mapper: Any) -> Any:
    """The mapper's table when its one primary-key column is a database-generated integer."""
    table = mapper.local_table
    if mapper.inherits is not None or len(mapper.primary_key) != 1:
        return None
    column = mapper.primary_key[0]
    if column.table is not table or not isinstance(column.type, (Integer, BigInteger)):
        return None
    return table if column.autoincrement in (True, "auto") and column.default is None else None
