"""Errors mean what they say: a conflict is 409, a value the database cannot store is 400, and
only a database that cannot be reached is 503 (and logged as an outage)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask, request
from sqlalchemy import text

from portal import create_app
from portal.billing.models import NumberSeries
from portal.extensions import db
from tests.conftest import app_with_own_database, login_as, make_config
from tests.factories import make_account, make_user

OUTAGE_LOG = "database unavailable"


@pytest.fixture(scope="module")
def error_app(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """An app over a database of its own with a few views that make the database say no."""
    with app_with_own_database(backend, tmp_path_factory.mktemp("errors"), "errors") as app:

        def duplicate() -> str:
            db.session.add_all([NumberSeries(key="twice"), NumberSeries(key="twice")])
            db.session.flush()
            return "unreachable"

        def store(key: str) -> str:
            db.session.add(NumberSeries(key=key))
            db.session.flush()
            return "stored"

        def find() -> str:
            found = db.session.scalar(
                db.select(NumberSeries.id).where(NumberSeries.key == request.form["key"])
            )
            return f"found {found}"

        def lost_race() -> str:
            state = request.args["state"]
            assert state in ("40001", "40P01", "55P03")
            db.session.execute(
                text(f"DO $$ BEGIN RAISE EXCEPTION 'lost' USING ERRCODE = '{state}'; END $$")
            )
            return "unreachable"

        app.add_url_rule("/__duplicate", "duplicate", duplicate, methods=["POST"])
        app.add_url_rule("/__store/<key>", "store", store, methods=["POST"])
        app.add_url_rule("/__find", "find", find, methods=["POST"])
        app.add_url_rule("/__lost_race", "lost_race", lost_race, methods=["POST"])
        yield app


def _words(body: str) -> str:
    return " ".join(body.split())


def test_an_integrity_error_is_a_409_with_words_not_a_503(
    error_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        response = error_app.test_client().post("/__duplicate")
    assert response.status_code == 409
    assert "changed this at the same moment" in _words(response.get_data(as_text=True))
    assert OUTAGE_LOG not in caplog.text
    with error_app.app_context():
        assert db.session.scalar(db.select(NumberSeries).where(NumberSeries.key == "twice")) is None


def test_a_nul_byte_in_a_path_or_a_form_is_a_400_on_postgresql(
    error_app: Flask, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = error_app.test_client()
    with caplog.at_level(logging.INFO):
        in_path = client.post("/__store/a%00b")
        in_form = client.post("/__find", data={"key": "a\x00b"})
    if backend == "sqlite":
        # SQLite stores a NUL like any other character: nothing to refuse.
        assert (in_path.status_code, in_form.status_code) == (200, 200)
        return
    for response in (in_path, in_form):
        assert response.status_code == 400
        assert "characters or values we cannot store" in _words(response.get_data(as_text=True))
    assert OUTAGE_LOG not in caplog.text
    with error_app.app_context():
        assert db.session.scalar(db.select(db.func.count(NumberSeries.id))) == 0


def test_a_nul_byte_in_a_real_route_reaching_the_database_is_not_an_outage(
    client, session, backend: str, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    account = make_account(session)
    login_as(client, make_user(session, account=account))
    with caplog.at_level(logging.INFO):
        response = client.post("/account/sessions/a%00b/sign-out")
    # PostgreSQL refuses the value (400); SQLite looks it up and finds no such device (404).
    assert response.status_code == (400 if backend == "postgresql" else 404)
    assert OUTAGE_LOG not in caplog.text


@pytest.mark.parametrize("state", ["40001", "40P01", "55P03"])
def test_a_lost_race_on_postgresql_is_a_409_not_a_503(
    error_app: Flask, backend: str, state: str, caplog: pytest.LogCaptureFixture
) -> None:
    if backend != "postgresql":
        pytest.skip("serialization failures, deadlocks and NOWAIT locks are PostgreSQL's")
    with caplog.at_level(logging.INFO):
        response = error_app.test_client().post(f"/__lost_race?state={state}")
    assert response.status_code == 409
    assert OUTAGE_LOG not in caplog.text


def _dead_database_url(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'no-such-directory' / 'portal.sqlite3'}"
    return "postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2"


def test_only_a_real_outage_is_a_503(
    backend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(make_config(_dead_database_url(backend, tmp_path)))
    with caplog.at_level(logging.INFO):
        response = app.test_client().post("/login", data={"email": "ada@example.com"})
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert "cannot reach our billing records" in _words(response.get_data(as_text=True))
    assert OUTAGE_LOG in caplog.text
    with app.app_context():
        db.engine.dispose()
