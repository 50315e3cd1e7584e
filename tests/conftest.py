"""Test wiring: every database test runs on SQLite and on PostgreSQL, inside a rolled-back
transaction, against a schema built by the migrations."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from portal import clock as portal_clock
from portal import create_app
from portal.extensions import db

REQUIRE_ALL = os.environ.get("PORTAL_REQUIRE_ALL") == "1"
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
ROOT = Path(__file__).resolve().parent.parent


def missing_service(reason: str) -> None:
    """Skip a test that needs an absent service, or fail when CI requires every service."""
    if REQUIRE_ALL:
        pytest.fail(f"{reason} (PORTAL_REQUIRE_ALL=1 makes this a failure)", pytrace=False)
    pytest.skip(reason)


def postgres_url() -> str:
    return os.environ.get("TEST_DATABASE_URL", DEFAULT_PG_URL)


_pg_status: dict[str, str | None] = {}


def postgres_unavailable() -> str | None:
    """None when PostgreSQL answers, otherwise why it does not (checked once per run)."""
    if "reason" not in _pg_status:
        engine = sa.create_engine(postgres_url())
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            _pg_status["reason"] = None
        except Exception as error:  # noqa: BLE001 - any failure means "not here"
            _pg_status["reason"] = f"PostgreSQL at {postgres_url()} is not reachable: {error}"
        finally:
            engine.dispose()
    return _pg_status["reason"]


def worker_id() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def fresh_database(backend: str, tmp_dir: Path, name: str) -> str:
    """An empty database for one purpose: a SQLite file, or a PostgreSQL schema of its own."""
    if backend == "sqlite":
        path = tmp_dir / f"{name}.sqlite3"
        path.unlink(missing_ok=True)
        return f"sqlite:///{path}"
    reason = postgres_unavailable()
    if reason:
        missing_service(reason)
    # NOTE: one schema per process, so parallel runs on one server never drop each other's.
    schema = f"portal_{name}_{worker_id()}_{os.getpid()}".lower()
    engine = sa.create_engine(postgres_url(), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    url = sa.engine.make_url(postgres_url())
    return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )


def drop_database(url: str) -> None:
    """Drop the PostgreSQL schema made by fresh_database (SQLite files go with tmp_path)."""
    parsed = sa.engine.make_url(url)
    options = parsed.query.get("options", "")
    if not parsed.drivername.startswith("postgresql") or "search_path=" not in str(options):
        return
    schema = str(options).split("search_path=", 1)[1]
    engine = sa.create_engine(postgres_url(), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def make_config(database_url: str, **overrides: Any) -> dict[str, Any]:
    config = {
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": database_url,
        "SECRET_KEY": "test-secret-key",
        "SECRET_KEY_FALLBACKS": [],
        "SECRET_KEYS": ["test-secret-key"],
        "WTF_CSRF_ENABLED": False,
        "RATELIMIT_ENABLED": False,
        "BASE_URL": "http://portal.test",
        "SERVER_NAME": None,
        # NOTE: tests never reach real Stripe; payment tests point this at localstripe.
        "STRIPE_API_BASE": "http://127.0.0.1:9",
        # Evidence files of disputes go to a temporary folder, never into instance/.
        "ATTACHMENTS_DIR": os.path.join(tempfile.gettempdir(), f"portal-attachments-{os.getpid()}"),
    }
    config.update(overrides)
    return config


def migrate_to_head(app: Flask) -> None:
    from flask_migrate import upgrade

    with app.app_context():
        upgrade()
        db.engine.dispose()


@contextmanager
def app_with_own_database(
    backend: str, tmp_dir: Path, name: str, **overrides: Any
) -> Iterator[Flask]:
    """An app over a migrated database of its own, where commits really commit (threads,
    several requests racing); the database is dropped afterwards."""
    url = fresh_database(backend, tmp_dir, name)
    application = create_app(make_config(url, **overrides))
    migrate_to_head(application)
    try:
        yield application
    finally:
        with application.app_context():
            db.session.remove()
            db.engine.dispose()
        drop_database(url)


def _fresh_g_per_request(app: Flask) -> None:
    """Tests hold an app context open (for the rolled-back session), and Flask reuses it for
    requests; production starts every request with an empty `g`, so the tests do too.

    What the test set up before the request is committed first (in the test's session that
    ends a savepoint, undone by the outer rollback), as it would be in production: a request
    that fails and rolls back its own work must not undo the test's factories too.
    """

    def clear_g() -> None:
        from flask import g

        for name in list(g):
            g.pop(name)
        db.session.commit()

    app.before_request_funcs.setdefault(None, []).insert(0, clear_g)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def app(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """One app per backend for the whole run; its schema comes from the migrations."""
    url = fresh_database(backend, tmp_path_factory.mktemp(backend), "suite")
    application = create_app(make_config(url))
    migrate_to_head(application)
    _fresh_g_per_request(application)
    yield application
    with application.app_context():
        db.engine.dispose()
    drop_database(url)


@pytest.fixture()
def session(app: Flask) -> Iterator[Session]:
    """The request session, joined to an outer transaction that is rolled back after the test.

    Code under test may commit: with `create_savepoint` its commits end savepoints, and the
    outer rollback undoes everything.
    """
    with app.app_context():
        connection = db.engine.connect()
        outer = connection.begin()
        factory = sessionmaker(bind=connection, join_transaction_mode="create_savepoint")
        scoped = scoped_session(factory)
        original, db.session = db.session, scoped
        try:
            yield scoped()
        finally:
            scoped.remove()
            db.session = original
            outer.rollback()
            connection.close()


@pytest.fixture()
def client(app: Flask, session: Session) -> FlaskClient:
    return app.test_client()


@pytest.fixture()
def clock() -> Iterator[portal_clock.FrozenClock]:
    """A frozen clock at a fixed moment; `clock.advance(minutes=…)` moves it."""
    frozen = portal_clock.FrozenClock(datetime(2026, 11, 21, 12, 0, tzinfo=UTC))
    previous = portal_clock.set_source(frozen)
    yield frozen
    portal_clock.set_source(previous)


@pytest.fixture(autouse=True)
def _restore_clock() -> Iterator[None]:
    previous = portal_clock.set_source(portal_clock._source)
    yield
    portal_clock.set_source(previous)


class LiveServer:
    """A real HTTP server on a free port, serving the app over its own seeded database."""

    def __init__(self, app: Flask) -> None:
        from werkzeug.serving import make_server

        self.app = app
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        app.config["BASE_URL"] = self.url
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def login_link(self, email: str) -> str:
        from sqlalchemy import select

        from portal.accounts.models import User
        from portal.auth.routes import login_link

        with self.app.test_request_context(base_url=self.url):
            user = db.session.scalar(select(User).where(User.email == email))
            assert user is not None, f"no demo user {email}"
            link = login_link(user)
            db.session.commit()
        return link


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The demo, served for real (SQLite file, seeded), for browser tests."""
    url = fresh_database("sqlite", tmp_path_factory.mktemp("live"), "live")
    application = create_app(make_config(url, WTF_CSRF_ENABLED=True, TESTING=False))
    migrate_to_head(application)
    with application.app_context():
        from portal.demo import seed_demo

        seed_demo(db.session, application.config["SELLER"])
        db.session.commit()
    server = LiveServer(application)
    server.thread.start()
    yield server
    server.server.shutdown()


def login_as(client: FlaskClient, user: Any) -> None:
    """Sign a test client in through the real magic-link flow (issue a token, POST it)."""
    from datetime import timedelta

    from portal.auth.services import TokenSigner, issue_login_token

    app = client.application
    token = issue_login_token(
        db.session, TokenSigner(app.config["SECRET_KEYS"]), user, lifetime=timedelta(minutes=10)
    )
    response = client.post(f"/login/{token}")
    assert response.status_code == 303, response.get_data(as_text=True)
    if user.is_staff:
        pass_second_factor(client, user)


def pass_second_factor(client: FlaskClient, user: Any) -> None:
    """Enrol the staff user in TOTP if needed and pass the check with a current code."""
    import pyotp

    if user.totp_confirmed_at is None:
        user.totp_secret = pyotp.random_base32()
        user.totp_confirmed_at = portal_clock.now()
        db.session.flush()
    # NOTE: each helper sign-in stands for a fresh code; a code's step is accepted once
    # (replay guard, tested in tests/staff), so forget the last accepted step here.
    user.totp_last_step = None
    db.session.flush()
    code = pyotp.TOTP(user.totp_secret).at(portal_clock.now())
    response = client.post("/staff/two-factor", data={"code": code})
    assert response.status_code == 303, response.get_data(as_text=True)


class SmtpServer:
    """A real SMTP server (aiosmtpd) on a free local port that keeps what it receives."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.handlers import Message

        self.messages: list[Any] = []
        outer = self

        class Keep(Message):
            def handle_message(self, message: Any) -> None:
                outer.messages.append(message)

        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.host = "127.0.0.1"
        self.controller = Controller(Keep(), hostname=self.host, port=self.port)

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()

    def config(self) -> dict[str, Any]:
        return {"MAIL_SERVER": self.host, "MAIL_PORT": self.port, "MAIL_USE_TLS": False}


@pytest.fixture()
def smtp_server() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    yield server
    server.stop()
