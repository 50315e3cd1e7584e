"""The signed-in devices on /account: listed, and each other one can be signed out."""

from __future__ import annotations

import re

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.accounts.models import User
from portal.audit.models import AuditEvent
from portal.auth.models import UserSession
from portal.clock import FrozenClock
from tests.conftest import login_as
from tests.factories import make_account, make_user

IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"
)
WINDOWS_FIREFOX = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0"


def _browser(app: Flask, user_agent: str) -> FlaskClient:
    client = app.test_client()
    client.environ_base["HTTP_USER_AGENT"] = user_agent
    return client


def _rows(session: Session, user: User) -> list[UserSession]:
    session.expire_all()
    return list(
        session.scalars(
            select(UserSession).where(UserSession.user_id == user.id).order_by(UserSession.id)
        )
    )


def _plain(body: str) -> str:
    """The page without its per-response values (nonce, CSRF token)."""
    body = re.sub(r'nonce="[^"]*"', "", body)
    return re.sub(r'(name="csrf[-_]token"[^>]*(?:content|value)=")[^"]*"', r"\1", body)


def _sign_out_forms(body: str) -> list[str]:
    return re.findall(r'action="/account/sessions/([^"/]+)/sign-out"', body)


def test_the_page_lists_this_device_and_the_others_with_a_sign_out_button(
    app: Flask, session: Session, clock: FrozenClock
) -> None:
    user = make_user(session, "devices@example.com", make_account(session))
    phone, laptop = _browser(app, IPHONE), _browser(app, WINDOWS_FIREFOX)
    login_as(laptop, user)
    clock.advance(minutes=5)
    login_as(phone, user)
    body = phone.get("/account").get_data(as_text=True)
    laptop_row, phone_row = _rows(session, user)
    assert body.count('data-testid="device"') == 2
    assert "This device" in body
    assert "Safari on iPhone" in body and "Firefox on Windows" in body
    assert "Last active" in body
    # Only the other device gets a button; this one is signed out with the header's button.
    assert _sign_out_forms(body) == [laptop_row.public_id]
    assert phone_row.public_id not in body


def test_signing_out_another_device_ends_its_session(app: Flask, session: Session) -> None:
    user = make_user(session, "other-device@example.com", make_account(session))
    phone, laptop = _browser(app, IPHONE), _browser(app, WINDOWS_FIREFOX)
    login_as(laptop, user)
    login_as(phone, user)
    laptop_row, _ = _rows(session, user)
    response = phone.post(f"/account/sessions/{laptop_row.public_id}/sign-out")
    assert response.status_code == 303
    assert response.headers["Location"] == "/account"
    page = phone.get("/account").get_data(as_text=True)
    assert "Firefox on Windows is signed out." in page
    assert page.count('data-testid="device"') == 1
    assert laptop.get("/").status_code == 303  # the laptop's cookie no longer works
    assert phone.get("/").status_code == 200
    laptop_row, phone_row = _rows(session, user)
    assert laptop_row.ended_at is not None and phone_row.ended_at is None
    event = session.scalars(
        select(AuditEvent).where(AuditEvent.action == "auth.session_ended")
    ).one()
    assert event.target_id == laptop_row.public_id
    # A second tap (or a stale page) changes nothing and is not an error.
    again = phone.post(f"/account/sessions/{laptop_row.public_id}/sign-out")
    assert again.status_code == 303


def test_another_users_session_id_is_not_found_and_stays_signed_in(
    app: Flask, session: Session
) -> None:
    owner = make_user(session, "victim@example.com", make_account(session))
    stranger = make_user(session, "stranger@example.com", make_account(session))
    victim_browser, stranger_browser = app.test_client(), app.test_client()
    login_as(victim_browser, owner)
    login_as(stranger_browser, stranger)
    (victim_row,) = _rows(session, owner)
    response = stranger_browser.post(f"/account/sessions/{victim_row.public_id}/sign-out")
    assert response.status_code == 404
    missing = stranger_browser.post("/account/sessions/no-such-session/sign-out")
    assert missing.status_code == 404
    # Indistinguishable from a missing one.
    assert _plain(response.get_data(as_text=True)) == _plain(missing.get_data(as_text=True))
    assert _rows(session, owner)[0].ended_at is None
    assert victim_browser.get("/").status_code == 200


def test_signing_out_this_device_from_the_list_signs_out_here(app: Flask, session: Session) -> None:
    user = make_user(session, "self@example.com", make_account(session))
    client = app.test_client()
    login_as(client, user)
    (row,) = _rows(session, user)
    response = client.post(f"/account/sessions/{row.public_id}/sign-out")
    assert response.status_code == 303
    assert response.headers["Location"] == "/login"
    assert client.get("/").status_code == 303
    assert _rows(session, user)[0].ended_at is not None


def test_timed_out_and_ended_sessions_are_not_listed(
    app: Flask, session: Session, clock: FrozenClock
) -> None:
    user = make_user(session, "stale@example.com", make_account(session))
    old, ended, current = app.test_client(), app.test_client(), app.test_client()
    login_as(old, user)
    login_as(ended, user)
    ended.post("/logout")
    clock.advance(minutes=31)  # `old` never came back: past the idle limit
    login_as(current, user)
    body = current.get("/account").get_data(as_text=True)
    assert body.count('data-testid="device"') == 1
    assert _sign_out_forms(body) == []
