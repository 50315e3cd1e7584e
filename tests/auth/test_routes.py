"""Sign-in by magic link through the web layer: pages, statuses, sessions and audit events."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event as sa_event
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.audit.models import AuditEvent
from portal.auth.models import LoginToken
from portal.auth.services import TokenSigner, issue_login_token
from portal.clock import FrozenClock
from portal.notifications.models import OutboxEmail
from tests.auth.conftest import outbox_link, path_of
from tests.conftest import login_as
from tests.factories import make_account, make_user


def _request_link(client: FlaskClient, email: str, next_: str | None = None) -> str:
    url = "/login" + (f"?next={next_}" if next_ else "")
    response = client.post(url, data={"email": email})
    assert response.status_code == 200
    return response.get_data(as_text=True)


def _sign_in(client: FlaskClient, session: Session, email: str) -> str:
    _request_link(client, email)
    path = path_of(outbox_link(session, email))
    response = client.post(path)
    assert response.status_code == 303, response.get_data(as_text=True)
    return response.headers["Location"]


def _signed_in(client: FlaskClient) -> bool:
    with client.session_transaction() as cookie:
        return "_user_id" in cookie


def _actions(session: Session) -> list[str]:
    return list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))


def _normalise(body: str, *emails: str) -> str:
    body = re.sub(r'name="csrf_token" value="[^"]*"', "", body)
    body = re.sub(r'content="[^"]*" name="csrf-token"|name="csrf-token" content="[^"]*"', "", body)
    body = re.sub(r'nonce="[^"]*"', "", body)
    for email in emails:
        body = body.replace(email, "EMAIL")
    return body


# --- requesting a link ----------------------------------------------------------------------


def test_known_and_unknown_addresses_get_the_same_page_and_status(
    client: FlaskClient, session: Session
) -> None:
    user = make_user(session, "known@example.com", make_account(session))
    known = client.post("/login", data={"email": user.email})
    unknown = client.post("/login", data={"email": "nobody@example.com"})
    assert known.status_code == unknown.status_code == 200
    assert _normalise(known.get_data(as_text=True), user.email) == _normalise(
        unknown.get_data(as_text=True), "nobody@example.com"
    )
    # Only the known address gets an email; it waits in the outbox (never sent inline).
    queued = session.scalars(select(OutboxEmail.to_address)).all()
    assert queued == [user.email]


def test_known_and_unknown_addresses_cost_the_same_database_work(
    client: FlaskClient, session: Session, app: Flask
) -> None:
    """Timing must not tell known addresses from unknown ones: the same inserts run for both
    (an unknown address's are rolled back), and nothing of them is kept."""
    user = make_user(session, "timed@example.com", make_account(session))
    statements: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        verb = statement.lstrip().split(" ", 1)[0].upper()
        # A known address's savepoint is released, an unknown one's rolled back.
        statements.append("END SAVEPOINT" if verb in ("RELEASE", "ROLLBACK") else verb)

    engine = session.get_bind()
    sa_event.listen(engine, "before_cursor_execute", note)
    try:
        runs = []
        for email in (user.email, "nobody-timed@example.com", user.email, "nobody-2@example.com"):
            statements.clear()
            assert client.post("/login", data={"email": email}).status_code == 200
            # NOTE: the harness may first end the savepoint of the test's own setup.
            while statements and statements[0] == "END SAVEPOINT":
                statements.pop(0)
            runs.append(list(statements))
    finally:
        sa_event.remove(engine, "before_cursor_execute", note)
    assert runs[0] == runs[1] == runs[2] == runs[3]
    assert runs[0].count("INSERT") >= 2
    queued = session.scalars(select(OutboxEmail.to_address)).all()
    assert queued == [user.email, user.email]


def test_the_email_has_the_link_built_from_base_url_and_its_expiry(
    client: FlaskClient, session: Session
) -> None:
    user = make_user(session, "mail@example.com", make_account(session))
    client.post("/login", data={"email": "Mail@Example.com "}, headers={"Host": "evil.example"})
    email = session.scalars(select(OutboxEmail)).one()
    assert email.subject == "Your sign-in link"
    link = outbox_link(session, user.email)
    assert link.startswith("http://portal.test/login/")  # BASE_URL, never the Host header
    assert "evil.example" not in email.text_body + email.html_body
    assert "expires in 10 minutes" in email.text_body
    assert link in email.html_body


def test_disabled_users_get_no_link(client: FlaskClient, session: Session) -> None:
    from portal import clock

    user = make_user(session, "gone@example.com", make_account(session))
    user.disabled_at = clock.now()
    session.flush()
    assert client.post("/login", data={"email": user.email}).status_code == 200
    assert session.scalar(select(func.count()).select_from(OutboxEmail)) == 0


def test_a_bad_address_is_explained_and_changes_nothing(
    client: FlaskClient, session: Session
) -> None:
    response = client.post("/login", data={"email": "not-an-address"})
    assert response.status_code == 422
    assert "name@example.com" in response.get_data(as_text=True)
    assert session.scalar(select(func.count()).select_from(OutboxEmail)) == 0


def test_asking_again_keeps_the_earlier_link_and_signing_in_replaces_it(
    client: FlaskClient, session: Session, app: Flask
) -> None:
    user = make_user(session, "twice@example.com", make_account(session))
    _request_link(client, user.email)
    first = path_of(outbox_link(session, user.email))
    _request_link(client, user.email)
    second = path_of(outbox_link(session, user.email))
    assert client.get(first).status_code == 200  # asking again cancelled nothing
    assert client.post(second).status_code == 303
    old = app.test_client().post(first)
    assert old.status_code == 410
    body = old.get_data(as_text=True)
    assert 'data-testid="link-replaced"' in body
    assert "replaced by a newer one" in body
    assert "expired" not in body.split("<main", 1)[1]


# --- using a link ---------------------------------------------------------------------------


def test_opening_the_link_changes_nothing(client: FlaskClient, session: Session) -> None:
    user = make_user(session, "look@example.com", make_account(session))
    _request_link(client, user.email)
    path = path_of(outbox_link(session, user.email))
    for _ in range(3):  # a mail scanner prefetching the link, several times
        page = client.get(path)
        assert page.status_code == 200
        assert f"Sign in as {user.email}" in page.get_data(as_text=True)
    token = session.scalars(select(LoginToken)).one()
    assert token.consumed_at is None
    assert not _signed_in(client)
    assert client.post(path).status_code == 303


def test_sign_in_lands_on_the_dashboard_and_audits(client: FlaskClient, session: Session) -> None:
    user = make_user(session, "in@example.com", make_account(session))
    assert _sign_in(client, session, user.email) == "/"
    assert client.get("/").status_code == 200
    assert "auth.sign_in" in _actions(session)


def test_a_used_link_gets_its_own_page_with_a_new_link_in_one_tap(
    client: FlaskClient, session: Session, app: Flask
) -> None:
    user = make_user(session, "reuse@example.com", make_account(session))
    _request_link(client, user.email)
    path = path_of(outbox_link(session, user.email))
    assert client.post(path).status_code == 303

    stranger = app.test_client()
    for response in (stranger.get(path), stranger.post(path)):
        assert response.status_code == 410
        body = response.get_data(as_text=True)
        assert 'data-testid="link-used"' in body
        # Whoever holds the old link sees the address masked, nowhere in full.
        assert user.email not in body
        assert "r•••@example.com" in body
        assert f'action="{path}/new"' in body  # one tap: the old link asks for a new one
    assert "auth.token_reused" in _actions(session)
    # The tap sends a new link to the link's owner, and the answer still masks the address.
    before = session.scalar(select(func.count()).select_from(OutboxEmail))
    answer = stranger.post(f"{path}/new")
    assert answer.status_code == 200
    assert user.email not in answer.get_data(as_text=True)
    assert f'action="{path}/new"' in answer.get_data(as_text=True)  # "send again" too
    assert session.scalar(select(func.count()).select_from(OutboxEmail)) == before + 1
    new_link = path_of(outbox_link(session, user.email))
    assert new_link != path
    assert app.test_client().post(new_link).status_code == 303


def test_a_new_link_is_never_sent_for_a_link_we_did_not_issue(
    client: FlaskClient, session: Session
) -> None:
    response = client.post("/login/not-a-token/new")
    assert response.status_code == 400
    assert 'data-testid="link-invalid"' in response.get_data(as_text=True)
    assert session.scalar(select(func.count()).select_from(OutboxEmail)) == 0


def test_a_used_link_opened_again_by_the_same_signed_in_user_goes_to_the_dashboard(
    client: FlaskClient, session: Session
) -> None:
    user = make_user(session, "again@example.com", make_account(session))
    _request_link(client, user.email)
    path = path_of(outbox_link(session, user.email))
    assert client.post(path).status_code == 303
    for response in (client.get(path), client.post(path)):
        assert response.status_code == 303
        assert response.headers["Location"] == "/"


def test_an_expired_link_gets_its_own_page(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    user = make_user(session, "late@example.com", make_account(session))
    _request_link(client, user.email)
    path = path_of(outbox_link(session, user.email))
    clock.advance(minutes=9, seconds=59)
    assert client.get(path).status_code == 200
    clock.advance(seconds=2)
    for response in (client.get(path), client.post(path)):
        assert response.status_code == 410
        body = response.get_data(as_text=True)
        assert 'data-testid="link-expired"' in body
        assert "l•••@example.com" in body
        assert user.email not in body
    assert "auth.token_expired" in _actions(session)
    assert session.scalars(select(LoginToken)).one().consumed_at is None


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-2] + ("AA" if t[-2:] != "AA" else "BB"),  # signature changed
        lambda t: "x" + t,  # payload changed
        lambda t: t.split(".")[0],  # signature cut off
        lambda t: "not-a-token",
    ],
)
def test_a_tampered_link_gets_the_invalid_page(
    client: FlaskClient, session: Session, mangle: object
) -> None:
    user = make_user(session, "tamper@example.com", make_account(session))
    _request_link(client, user.email)
    token = path_of(outbox_link(session, user.email)).rsplit("/", 1)[1]
    bad = f"/login/{mangle(token)}"  # type: ignore[operator]
    for response in (client.get(bad), client.post(bad)):
        assert response.status_code == 400
        body = response.get_data(as_text=True)
        assert 'data-testid="link-invalid"' in body
        assert "Send me a new link" in body
        assert user.email not in body
    assert "auth.token_invalid" in _actions(session)
    assert not _signed_in(client)


def test_a_token_signed_for_another_purpose_is_invalid(
    client: FlaskClient, session: Session, app: Flask
) -> None:
    user = make_user(session, "purpose@example.com", make_account(session))
    staff_signer = TokenSigner(app.config["SECRET_KEYS"], purpose="staff_login")
    token = issue_login_token(session, staff_signer, user, lifetime=timedelta(minutes=10))
    assert client.get(f"/login/{token}").status_code == 400
    assert client.post(f"/login/{token}").status_code == 400


# --- the browser that asked, and where it goes next -------------------------------------------


def test_a_link_opened_in_another_browser_says_whose_account_it_is(
    client: FlaskClient, session: Session, app: Flask
) -> None:
    user = make_user(session, "bound@example.com", make_account(session))
    _request_link(client, user.email)
    path = path_of(outbox_link(session, user.email))
    same = client.get(path).get_data(as_text=True)
    other = app.test_client().get(path).get_data(as_text=True)
    assert 'data-testid="other-browser"' not in same
    assert 'data-testid="other-browser"' in other
    assert user.email in other
    assert session.scalars(select(LoginToken)).one().binding_hash is not None


def test_next_is_carried_through_sign_in_in_the_same_browser(
    client: FlaskClient, session: Session
) -> None:
    user = make_user(session, "next@example.com", make_account(session))
    first = client.get("/account")
    assert first.status_code == 303
    login_url = first.headers["Location"]
    assert "next=%2Faccount" in login_url or "next=/account" in login_url
    client.post(login_url, data={"email": user.email})
    response = client.post(path_of(outbox_link(session, user.email)))
    assert response.headers["Location"] == "/account"


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "/\\evil.example"])
def test_next_never_leaves_the_site(client: FlaskClient, session: Session, target: str) -> None:
    user = make_user(session, "safe@example.com", make_account(session))
    client.post("/login", query_string={"next": target}, data={"email": user.email})
    response = client.post(path_of(outbox_link(session, user.email)))
    assert response.headers["Location"] == "/"


@pytest.mark.parametrize(
    "target", ["/account\r\nSet-Cookie: planted=1", "/account\nX-Injected: 1", "/acc\x00ount"]
)
def test_a_next_with_control_characters_is_ignored_and_sign_in_still_lands(
    client: FlaskClient, session: Session, target: str
) -> None:
    user = make_user(session, "crlf@example.com", make_account(session))
    client.post("/login", query_string={"next": target}, data={"email": user.email})
    response = client.post(path_of(outbox_link(session, user.email)))
    assert response.status_code == 303
    assert response.headers["Location"] == "/"
    assert _signed_in(client)


def test_a_control_character_in_a_stored_next_is_refused_when_used(
    client: FlaskClient, session: Session
) -> None:
    """The check applies where the redirect is made, not only where the target is kept."""
    user = make_user(session, "crlf-stored@example.com", make_account(session))
    _request_link(client, user.email)
    with client.session_transaction() as cookie:
        cookie["login_next"] = "/account\r\nSet-Cookie: planted=1"
    response = client.post(path_of(outbox_link(session, user.email)))
    assert response.status_code == 303
    assert response.headers["Location"] == "/"
    assert _signed_in(client)


def test_the_sign_in_page_says_why_you_are_there(client: FlaskClient) -> None:
    page = client.get("/", follow_redirects=True)
    assert "Please sign in to continue." in page.get_data(as_text=True)


# --- sessions ------------------------------------------------------------------------------------


def test_sign_in_starts_a_new_session(client: FlaskClient, session: Session) -> None:
    user = make_user(session, "fixation@example.com", make_account(session))
    with client.session_transaction() as planted:
        planted["planted"] = "by an attacker"
        planted["sid"] = "attacker-chosen"
    before = client.get_cookie("portal_session").value
    _sign_in(client, session, user.email)
    with client.session_transaction() as fresh:
        assert "planted" not in fresh
        assert fresh["sid"] != "attacker-chosen"
        assert fresh["_user_id"].startswith(user.public_id)
    assert client.get_cookie("portal_session").value != before


def test_session_cookie_flags(app: Flask, make_app: object, session: Session) -> None:
    user = make_user(session, "cookie@example.com", make_account(session))
    for base_url, secure in (("http://portal.test", False), ("https://portal.test", True)):
        other = make_app(BASE_URL=base_url, SESSION_COOKIE_SECURE=base_url.startswith("https"))  # type: ignore[operator]
        client = other.test_client()
        login_as(client, user)
        cookie = client.get_cookie("portal_session")
        assert cookie is not None
        assert cookie.http_only
        assert cookie.same_site == "Lax"
        assert cookie.secure is secure
        hsts = client.get("/").headers.get("Strict-Transport-Security")
        assert (hsts is not None) is secure  # HSTS only behind HTTPS


def test_a_copied_cookie_stops_working_after_sign_out(
    client: FlaskClient, session: Session, app: Flask
) -> None:
    user = make_user(session, "copy@example.com", make_account(session))
    login_as(client, user)
    stolen = client.get_cookie("portal_session").value
    thief = app.test_client()
    thief.set_cookie("portal_session", stolen)
    assert thief.get("/").status_code == 200
    assert client.post("/logout").status_code == 303
    assert thief.get("/").status_code == 303
    assert "auth.sign_out" in _actions(session)


def test_signing_out_says_so_on_the_sign_in_page(client: FlaskClient, session: Session) -> None:
    login_as(client, make_user(session, "bye@example.com", make_account(session)))
    page = client.post("/logout", follow_redirects=True)
    assert page.request.path == "/login"
    assert "You are signed out on this device." in page.get_data(as_text=True)
    # Said once: the next visit to the sign-in page is plain again.
    assert "signed out" not in client.get("/login").get_data(as_text=True)


def test_sign_out_without_a_session_says_nothing(client: FlaskClient) -> None:
    page = client.post("/logout", follow_redirects=True)
    assert page.request.path == "/login"
    assert "signed out" not in page.get_data(as_text=True)


def test_sign_out_everywhere_ends_every_session(
    client: FlaskClient, session: Session, app: Flask
) -> None:
    user = make_user(session, "everywhere@example.com", make_account(session))
    phone, laptop = app.test_client(), app.test_client()
    login_as(phone, user)
    login_as(laptop, user)
    copy = app.test_client()
    copy.set_cookie("portal_session", laptop.get_cookie("portal_session").value)
    response = phone.post("/account/sign-out-everywhere")
    assert response.status_code == 303
    for browser in (phone, laptop, copy):
        assert browser.get("/").status_code == 303
    assert "auth.sign_out_everywhere" in _actions(session)


def test_disabling_a_user_ends_their_sessions(
    client: FlaskClient, session: Session, app: Flask
) -> None:
    from portal.accounts.services import disable_user

    user = make_user(session, "disabled@example.com", make_account(session))
    login_as(client, user)
    assert client.get("/").status_code == 200
    disable_user(session, user)
    assert client.get("/").status_code == 303
    assert "user.disabled" in _actions(session)


def test_idle_timeout(client: FlaskClient, session: Session, clock: FrozenClock) -> None:
    user = make_user(session, "idle@example.com", make_account(session))
    login_as(client, user)
    clock.advance(minutes=29)
    assert client.get("/").status_code == 200  # activity moves the idle clock on
    clock.advance(minutes=29)
    assert client.get("/").status_code == 200
    clock.advance(minutes=31)
    response = client.get("/")
    assert response.status_code == 303
    assert "without activity" in client.get(response.headers["Location"]).get_data(as_text=True)


def test_absolute_timeout(client: FlaskClient, session: Session, clock: FrozenClock) -> None:
    user = make_user(session, "absolute@example.com", make_account(session))
    login_as(client, user)
    for _ in range(28):  # busy all day: a page every 25 minutes, 11 hours 40 minutes in all
        clock.advance(minutes=25)
        assert client.get("/").status_code == 200
    clock.advance(minutes=25)  # never idle for long, but 12 hours 5 minutes since sign-in
    assert client.get("/").status_code == 303


def test_staff_sessions_time_out_sooner(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    staff = make_user(session, "staff-idle@example.com", staff_role="support")
    customer = make_user(session, "cust-idle@example.com", make_account(session))
    customer_client = client.application.test_client()
    login_as(client, staff)
    login_as(customer_client, customer)
    clock.advance(minutes=16)
    assert client.get("/staff/").status_code == 303  # staff idle limit: 15 minutes
    assert customer_client.get("/").status_code == 200  # customer idle limit: 30 minutes


def test_htmx_request_after_expiry_gets_hx_redirect_and_no_data(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    user = make_user(session, "htmx@example.com", make_account(session))
    login_as(client, user)
    assert client.get("/", headers={"HX-Request": "true"}).status_code == 200
    clock.advance(minutes=31)
    response = client.get(
        "/", headers={"HX-Request": "true", "HX-Current-URL": "http://portal.test/account"}
    )
    assert response.status_code == 401
    assert response.headers["HX-Redirect"].startswith("/login?next=")
    assert "account" in response.headers["HX-Redirect"]
    assert response.get_data() == b""


def test_signed_in_pages_are_not_cached(client: FlaskClient, session: Session) -> None:
    user = make_user(session, "cache@example.com", make_account(session))
    login_as(client, user)
    assert client.get("/").headers["Cache-Control"] == "no-store"
    assert client.get("/account").headers["Cache-Control"] == "no-store"


# --- CSRF --------------------------------------------------------------------------------------


def _csrf_from(body: str) -> str:
    match = re.search(r'name="csrf-token" content="([^"]+)"', body) or re.search(
        r'name="csrf_token"[^>]*value="([^"]+)"', body
    )
    assert match, "no CSRF token on the page"
    return match.group(1)


def test_csrf_is_required_on_state_changing_requests(make_app: object, session: Session) -> None:
    user = make_user(session, "csrf@example.com", make_account(session))
    app = make_app(WTF_CSRF_ENABLED=True)  # type: ignore[operator]
    client = app.test_client()

    refused = client.post("/login", data={"email": user.email})
    assert refused.status_code == 400
    assert "reload the page" in refused.get_data(as_text=True)
    assert session.scalar(select(func.count()).select_from(OutboxEmail)) == 0

    token = _csrf_from(client.get("/login").get_data(as_text=True))
    assert client.post("/login", data={"email": user.email, "csrf_token": token}).status_code == 200
    path = path_of(outbox_link(session, user.email))

    # The confirm page's form carries its own token; without one the link is not used.
    assert client.post(path).status_code == 400
    assert session.scalars(select(LoginToken)).one().consumed_at is None
    token = _csrf_from(client.get(path).get_data(as_text=True))
    # HTMX sends the token in the X-CSRFToken header instead of the form.
    response = client.post(path, headers={"X-CSRFToken": token, "HX-Request": "true"})
    assert response.status_code == 303
    assert response.headers["HX-Redirect"] == "/"

    assert client.post("/logout").status_code == 400  # sign-out is a state change too
    assert client.get("/").status_code == 200
    token = _csrf_from(client.get("/").get_data(as_text=True))
    assert client.post("/logout", headers={"X-CSRFToken": token}).status_code == 303


def test_no_get_route_changes_state(app: Flask, client: FlaskClient, session: Session) -> None:
    """GET every sign-in page: nothing is written (mail scanners, prefetchers)."""
    user = make_user(session, "getonly@example.com", make_account(session))
    token = issue_login_token(
        session, TokenSigner(app.config["SECRET_KEYS"]), user, lifetime=timedelta(minutes=10)
    )
    before = session.scalar(select(func.count()).select_from(AuditEvent))
    for path in ("/login", f"/login/{token}", "/login/bad-token"):
        client.get(path)
    assert session.scalar(select(func.count()).select_from(AuditEvent)) == before
    assert session.scalars(select(LoginToken)).one().consumed_at is None
