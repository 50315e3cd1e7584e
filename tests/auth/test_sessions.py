"""One user_sessions row per signed-in browser: sign-out ends this browser only, on the server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import flask
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from portal.accounts.models import User
from portal.auth.models import UserSession
from portal.auth.services import hash_value
from portal.auth.sessions import load_user
from portal.clock import FrozenClock
from portal.extensions import db
from tests.conftest import login_as
from tests.factories import make_account, make_user

IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"
)


@contextmanager
def count_statements() -> Iterator[list[str]]:
    """Every SQL statement sent while the block runs (savepoint bookkeeping left out)."""
    statements: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not statement.lstrip().upper().startswith(("SAVEPOINT", "RELEASE", "ROLLBACK")):
            statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        event.remove(db.engine, "before_cursor_execute", before)


def _customer(session: Session, email: str) -> User:
    return make_user(session, email, make_account(session))


def _rows(session: Session, user: User) -> list[UserSession]:
    session.expire_all()
    return list(
        session.scalars(
            select(UserSession).where(UserSession.user_id == user.id).order_by(UserSession.id)
        )
    )


def _cookie_of(client: FlaskClient) -> dict[str, Any]:
    with client.session_transaction() as cookie:
        return dict(cookie)


def test_sign_in_stores_only_a_hash_of_the_session_id_and_a_device_summary(
    client: FlaskClient, session: Session
) -> None:
    user = _customer(session, "row@example.com")
    client.environ_base["HTTP_USER_AGENT"] = IPHONE
    login_as(client, user)
    sid = _cookie_of(client)["sid"]
    (row,) = _rows(session, user)
    assert row.sid_hash == hash_value(sid) != sid
    assert len(sid) >= 43  # 256 random bits
    assert row.device == "Safari on iPhone"
    assert row.ip == "127.0.0.1"
    assert row.ended_at is None
    assert row.created_at == row.last_seen_at


def test_signing_out_in_one_browser_leaves_the_other_signed_in(
    app: Flask, session: Session
) -> None:
    user = _customer(session, "two@example.com")
    laptop, phone = app.test_client(), app.test_client()
    login_as(laptop, user)
    login_as(phone, user)
    assert laptop.post("/logout").status_code == 303
    assert laptop.get("/").status_code == 303
    assert phone.get("/").status_code == 200  # the phone is still signed in
    laptop_row, phone_row = _rows(session, user)
    assert laptop_row.ended_at is not None
    assert phone_row.ended_at is None


def test_a_copied_cookie_stops_working_once_its_browser_signs_out(
    app: Flask, session: Session
) -> None:
    user = _customer(session, "copied@example.com")
    laptop, phone, thief = app.test_client(), app.test_client(), app.test_client()
    login_as(laptop, user)
    login_as(phone, user)
    epoch = user.session_epoch
    thief.set_cookie("portal_session", laptop.get_cookie("portal_session").value)
    assert thief.get("/").status_code == 200
    assert laptop.post("/logout").status_code == 303
    # The epoch did not move (the phone stays in), yet the copy is refused on the server.
    session.refresh(user)
    assert user.session_epoch == epoch
    assert thief.get("/").status_code == 303
    assert phone.get("/").status_code == 200


def test_sign_out_everywhere_ends_every_row_and_moves_the_epoch_on(
    app: Flask, session: Session
) -> None:
    user = _customer(session, "all-rows@example.com")
    laptop, phone = app.test_client(), app.test_client()
    login_as(laptop, user)
    login_as(phone, user)
    epoch = user.session_epoch
    assert phone.post("/account/sign-out-everywhere").status_code == 303
    assert laptop.get("/").status_code == 303
    assert phone.get("/").status_code == 303
    assert all(row.ended_at is not None for row in _rows(session, user))
    session.refresh(user)
    assert user.session_epoch == epoch + 1


def test_disabling_a_user_ends_every_row(app: Flask, session: Session) -> None:
    from portal.accounts.services import disable_user

    user = _customer(session, "disable-rows@example.com")
    laptop, phone = app.test_client(), app.test_client()
    login_as(laptop, user)
    login_as(phone, user)
    disable_user(session, user)
    assert laptop.get("/").status_code == 303
    assert phone.get("/").status_code == 303
    assert all(row.ended_at is not None for row in _rows(session, user))


def test_the_user_loader_sends_one_statement(
    app: Flask, client: FlaskClient, session: Session
) -> None:
    user = _customer(session, "one-query@example.com")
    login_as(client, user)
    cookie = _cookie_of(client)
    session.expire_all()
    with app.test_request_context("/"):
        flask.session.update(cookie)
        with count_statements() as statements:
            loaded = load_user(cookie["_user_id"])
    assert loaded is not None
    assert loaded.user.id == user.id
    assert loaded.browser_session is not None
    assert loaded.browser_session.sid_hash == hash_value(cookie["sid"])
    assert len(statements) == 1, statements


def test_a_page_loads_the_user_and_its_session_in_one_statement(
    client: FlaskClient, session: Session
) -> None:
    login_as(client, _customer(session, "one-page@example.com"))
    session.expire_all()
    with count_statements() as statements:
        assert client.get("/account").status_code == 200
    touching = [s for s in statements if "user_sessions" in s or "FROM users" in s]
    # The loader's join, and the devices list of /account.
    assert len(touching) == 2, touching
    assert "JOIN user_sessions" in touching[0]


def test_a_cookie_without_a_session_row_is_not_signed_in(
    app: Flask, client: FlaskClient, session: Session
) -> None:
    user = _customer(session, "no-row@example.com")
    login_as(client, user)
    with client.session_transaction() as cookie:
        cookie["sid"] = "made-up"
    assert client.get("/").status_code == 303


def test_last_seen_moves_on_at_most_once_a_minute(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    user = _customer(session, "seen@example.com")
    login_as(client, user)
    signed_in_at = clock()
    clock.advance(seconds=59)
    assert client.get("/").status_code == 200
    assert _rows(session, user)[0].last_seen_at == signed_in_at
    clock.advance(seconds=1)
    assert client.get("/").status_code == 200
    assert _rows(session, user)[0].last_seen_at == clock()


def test_an_idle_timeout_ends_the_row(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    user = _customer(session, "idle-row@example.com")
    login_as(client, user)
    clock.advance(minutes=31)
    assert client.get("/").status_code == 303
    assert _rows(session, user)[0].ended_at == clock()


def test_the_sign_in_cookie_already_holds_the_csrf_secret(
    make_app: Callable[..., Flask], session: Session
) -> None:
    """A client that keeps only the sign-in's cookie (wrk in `make bench`, a tab restored from
    it) is not sent a new CSRF secret and a re-signed cookie on every page, and the token its
    pages carry is the one a POST needs."""
    import re

    from portal.auth.services import TokenSigner, issue_login_token

    user = _customer(session, "csrf-cookie@example.com")
    app = make_app(WTF_CSRF_ENABLED=True)
    token = issue_login_token(
        session, TokenSigner(app.config["SECRET_KEYS"]), user, lifetime=timedelta(minutes=10)
    )
    signing_in = app.test_client()
    confirm = signing_in.get(f"/login/{token}").get_data(as_text=True)
    form_token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', confirm)
    assert form_token is not None
    assert signing_in.post(f"/login/{token}", data={"csrf_token": form_token[1]}).status_code == 303
    cookie = signing_in.get_cookie("portal_session")
    assert cookie is not None

    browser = app.test_client(use_cookies=False)
    tokens = set()
    for _ in range(2):
        page = browser.get("/", headers={"Cookie": f"portal_session={cookie.value}"})
        assert page.status_code == 200
        assert "Set-Cookie" not in page.headers
        found = re.search(r'name="csrf-token" content="([^"]+)"', page.get_data(as_text=True))
        assert found is not None
        tokens.add(found[1])
    signed_out = browser.post(
        "/logout",
        headers={"Cookie": f"portal_session={cookie.value}", "X-CSRFToken": tokens.pop()},
    )
    assert signed_out.status_code == 303
