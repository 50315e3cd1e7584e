"""Staff must pass a TOTP second factor before any /staff/ page: enrolment, checks, recovery."""

from __future__ import annotations

import base64
import re
from datetime import timedelta

import pyotp
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal import clock
from portal.accounts.models import RecoveryCode, User
from portal.audit.models import AuditEvent
from portal.auth.services import TokenSigner, hash_value, issue_login_token
from portal.clock import FrozenClock
from portal.extensions import db
from tests.factories import make_account, make_user


def _first_factor(client: FlaskClient, app: Flask, user: User) -> str:
    """Sign in by link only (no TOTP yet); returns where the link sent us."""
    token = issue_login_token(
        db.session,
        TokenSigner(app.config["SECRET_KEYS"]),
        user,
        lifetime=timedelta(minutes=10),
    )
    response = client.post(f"/login/{token}")
    assert response.status_code == 303
    return response.headers["Location"]


def _enrolled(session: Session, email: str = "staff@example.com") -> User:
    user = make_user(session, email, staff_role="support")
    user.totp_secret = pyotp.random_base32()
    user.totp_confirmed_at = clock.now()
    session.flush()
    return user


def _actions(session: Session) -> list[str]:
    return list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))


def test_customers_and_strangers_never_see_the_staff_area(
    client: FlaskClient, session: Session, app: Flask
) -> None:
    anonymous = client.get("/staff/")
    assert anonymous.status_code == 303
    assert anonymous.headers["Location"].startswith("/login")
    customer = make_user(session, "cust@example.com", make_account(session))
    _first_factor(client, app, customer)
    for path in ("/staff/", "/staff/two-factor", "/staff/two-factor/setup"):
        assert client.get(path).status_code == 404


def test_a_signed_in_staff_member_without_totp_must_enrol_first(
    client: FlaskClient, session: Session, app: Flask
) -> None:
    staff = make_user(session, "new-staff@example.com", staff_role="admin")
    assert _first_factor(client, app, staff) == "/staff/"
    response = client.get("/staff/")
    assert response.status_code == 303
    assert response.headers["Location"] == "/staff/two-factor/setup"

    page = client.get("/staff/two-factor/setup")
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    qr = re.search(r'src="data:image/svg\+xml;base64,([^"]+)"', body)
    assert qr, "no QR code image"
    assert base64.b64decode(qr.group(1)).startswith(b"<?xml") or b"<svg" in base64.b64decode(
        qr.group(1)
    )
    secret = re.search(r'value="([A-Z2-7]{32})"[^>]*data-testid="totp-key"', body)
    assert secret
    session.refresh(staff)
    assert staff.totp_secret is None  # opening the page enrolled nothing
    assert staff.totp_pending_secret == secret.group(1)  # the key waits on the server
    assert secret.group(1) in client.get("/staff/two-factor/setup").get_data(as_text=True)

    wrong = client.post("/staff/two-factor/setup", data={"code": "000000"})
    assert wrong.status_code == 422
    assert "did not match" in wrong.get_data(as_text=True)
    assert client.get("/staff/").status_code == 303

    code = pyotp.TOTP(secret.group(1)).at(clock.now())
    done = client.post("/staff/two-factor/setup", data={"code": code})
    assert done.status_code == 200
    codes = re.findall(r"<code>([0-9a-f]{5}-[0-9a-f]{5})</code>", done.get_data(as_text=True))
    assert len(codes) == 10
    session.refresh(staff)
    assert staff.totp_confirmed_at is not None
    stored = session.scalars(select(RecoveryCode.code_hash).where(RecoveryCode.user_id == staff.id))
    hashes = set(stored)
    assert hashes == {hash_value(c.replace("-", "")) for c in codes}  # only hashes are kept
    assert client.get("/staff/").status_code == 200
    assert "staff.totp_enrolled" in _actions(session)


def test_an_enrolled_staff_member_passes_totp_on_every_new_sign_in(
    client: FlaskClient, session: Session, app: Flask
) -> None:
    staff = _enrolled(session)
    _first_factor(client, app, staff)
    gate = client.get("/staff/")
    assert gate.status_code == 303
    assert gate.headers["Location"] == "/staff/two-factor"

    wrong = client.post("/staff/two-factor", data={"code": "123456"})
    assert wrong.status_code == 422
    assert client.get("/staff/").status_code == 303
    assert "staff.second_factor_failed" in _actions(session)

    right = client.post(
        "/staff/two-factor", data={"code": pyotp.TOTP(staff.totp_secret).at(clock.now())}
    )
    assert right.status_code == 303
    assert right.headers["Location"] == "/staff/"
    assert client.get("/staff/").status_code == 200

    # Another browser that signs in with a new link starts over at the second factor.
    other = app.test_client()
    _first_factor(other, app, staff)
    assert other.get("/staff/").status_code == 303


def test_a_recovery_code_works_once(client: FlaskClient, session: Session, app: Flask) -> None:
    from portal.staff.services import _replace_recovery_codes

    staff = _enrolled(session)
    codes = _replace_recovery_codes(session, staff)
    _first_factor(client, app, staff)
    assert client.post("/staff/two-factor", data={"code": codes[0].upper()}).status_code == 303
    assert client.get("/staff/").status_code == 200

    again = app.test_client()
    _first_factor(again, app, staff)
    assert again.post("/staff/two-factor", data={"code": codes[0]}).status_code == 422
    assert again.post("/staff/two-factor", data={"code": codes[1]}).status_code == 303


def test_the_second_factor_remembers_where_you_were_going(
    client: FlaskClient, session: Session, app: Flask
) -> None:
    staff = _enrolled(session)
    _first_factor(client, app, staff)
    client.get("/staff/?tab=queue")
    code = pyotp.TOTP(staff.totp_secret).at(clock.now())
    response = client.post("/staff/two-factor", data={"code": code})
    assert response.headers["Location"] == "/staff/?tab=queue"


def test_create_staff_command(app: Flask, session: Session) -> None:
    runner = app.test_cli_runner()
    result = runner.invoke(
        args=["portal", "create-staff", "New.Support@Example.com", "--role", "support"]
    )
    assert result.exit_code == 0, result.output
    user = session.scalars(select(User).where(User.email == "new.support@example.com")).one()
    assert user.staff_role == "support"
    epoch = user.session_epoch
    result = runner.invoke(args=["portal", "create-staff", user.email, "--role", "admin"])
    assert result.exit_code == 0
    session.refresh(user)
    assert user.staff_role == "admin"
    assert user.session_epoch == epoch + 1  # a role change ends old sessions
    bad = runner.invoke(args=["portal", "create-staff", "not-an-email", "--role", "admin"])
    assert bad.exit_code != 0
    wrong_role = runner.invoke(args=["portal", "create-staff", "x@example.com", "--role", "god"])
    assert wrong_role.exit_code != 0
    assert "staff.role_set" in _actions(session)


def test_a_totp_code_works_once_and_the_next_steps_code_works(
    session: Session, app: Flask, clock: FrozenClock
) -> None:
    staff = _enrolled(session, "replay@example.com")
    totp = pyotp.TOTP(staff.totp_secret)
    code = totp.at(clock())

    first = app.test_client()
    _first_factor(first, app, staff)
    assert first.post("/staff/two-factor", data={"code": code}).status_code == 303
    assert first.get("/staff/").status_code == 200

    # Someone who saw the code (or a second tab) tries it again within its 30 seconds.
    second = app.test_client()
    _first_factor(second, app, staff)
    replay = second.post("/staff/two-factor", data={"code": code})
    assert replay.status_code == 422
    assert "already used" in replay.get_data(as_text=True)
    assert second.get("/staff/").status_code == 303
    event = session.scalars(
        select(AuditEvent)
        .where(AuditEvent.action == "staff.second_factor_failed")
        .order_by(AuditEvent.id.desc())
        .limit(1)
    ).one()
    assert event.after == {"reason": "reused"}

    # An earlier step's code (still inside the drift window) is refused as well.
    earlier = totp.at(clock() - timedelta(seconds=30))
    assert second.post("/staff/two-factor", data={"code": earlier}).status_code == 422

    clock.advance(seconds=30)
    fresh = second.post("/staff/two-factor", data={"code": totp.at(clock())})
    assert fresh.status_code == 303
    assert second.get("/staff/").status_code == 200
    session.refresh(staff)
    assert staff.totp_last_step == totp.timecode(clock())


def test_the_enrolment_code_cannot_pass_the_check_again(
    client: FlaskClient, session: Session, app: Flask, clock: FrozenClock
) -> None:
    staff = make_user(session, "enrol-replay@example.com", staff_role="support")
    _first_factor(client, app, staff)
    body = client.get("/staff/two-factor/setup").get_data(as_text=True)
    secret = re.search(r'value="([A-Z2-7]{32})"[^>]*data-testid="totp-key"', body)
    assert secret
    code = pyotp.TOTP(secret.group(1)).at(clock())
    assert client.post("/staff/two-factor/setup", data={"code": code}).status_code == 200

    other = app.test_client()
    _first_factor(other, app, staff)
    assert other.post("/staff/two-factor", data={"code": code}).status_code == 422


# --- the enrolment secret stays on the server ---------------------------------------------------


def _session_cookie_contents(app: Flask, client: FlaskClient) -> str:
    """The Flask session cookie as the browser holds it, signed, and decoded (it is readable)."""
    cookie = client.get_cookie("portal_session")
    if cookie is None:
        return ""
    decoded = app.session_interface.get_signing_serializer(app).loads(cookie.value)  # type: ignore[attr-defined]
    return f"{cookie.value} {decoded}"


def _setup_secret(body: str) -> str:
    found = re.search(r'value="([A-Z2-7]{32})"[^>]*data-testid="totp-key"', body)
    assert found, "no key on the setup page"
    return found.group(1)


def test_the_enrolment_secret_never_reaches_a_cookie(
    client: FlaskClient, session: Session, app: Flask, clock: FrozenClock
) -> None:
    staff = make_user(session, "no-cookie-secret@example.com", staff_role="support")
    _first_factor(client, app, staff)
    cookies = [_session_cookie_contents(app, client)]
    page = client.get("/staff/two-factor/setup")
    secret = _setup_secret(page.get_data(as_text=True))
    cookies.append(_session_cookie_contents(app, client))
    cookies.extend(page.headers.getlist("Set-Cookie"))
    wrong = client.post("/staff/two-factor/setup", data={"code": "000000"})
    cookies.extend(wrong.headers.getlist("Set-Cookie"))
    cookies.append(_session_cookie_contents(app, client))
    done = client.post("/staff/two-factor/setup", data={"code": pyotp.TOTP(secret).at(clock())})
    assert done.status_code == 200
    cookies.extend(done.headers.getlist("Set-Cookie"))
    cookies.append(_session_cookie_contents(app, client))
    assert all(cookie for cookie in cookies[1:3])
    for cookie in cookies:
        assert secret not in cookie
        assert secret.lower() not in cookie.lower()
    session.refresh(staff)
    assert staff.totp_secret == secret
    assert staff.totp_pending_secret is None and staff.totp_pending_at is None


def test_the_setup_page_offers_an_otpauth_link_and_the_key_in_groups_of_four(
    client: FlaskClient, session: Session, app: Flask
) -> None:
    staff = make_user(session, "phone-setup@example.com", staff_role="support")
    _first_factor(client, app, staff)
    body = client.get("/staff/two-factor/setup").get_data(as_text=True)
    secret = _setup_secret(body)
    link = re.search(r'href="(otpauth://[^"]+)"[^>]*data-testid="otpauth-link"', body)
    assert link, "no tappable otpauth:// link"
    assert f"secret={secret}" in link.group(1)
    grouped = " ".join(secret[i : i + 4] for i in range(0, 32, 4))
    assert f'data-testid="totp-secret">{grouped}<' in body


def test_an_abandoned_setup_key_expires_and_a_new_one_is_shown(
    client: FlaskClient, session: Session, app: Flask, clock: FrozenClock
) -> None:
    staff = make_user(session, "slow-setup@example.com", staff_role="support")
    _first_factor(client, app, staff)
    old = _setup_secret(client.get("/staff/two-factor/setup").get_data(as_text=True))
    session.refresh(staff)
    # NOTE: the key's age is moved back (not the clock: the staff session would time out).
    staff.totp_pending_at = clock() - timedelta(minutes=59)
    session.flush()
    assert _setup_secret(client.get("/staff/two-factor/setup").get_data(as_text=True)) == old
    session.refresh(staff)
    staff.totp_pending_at = clock() - timedelta(minutes=61)
    session.flush()
    late = client.post("/staff/two-factor/setup", data={"code": pyotp.TOTP(old).at(clock())})
    assert late.status_code == 422
    body = late.get_data(as_text=True)
    assert "expired" in body
    new = _setup_secret(body)
    assert new != old
    session.refresh(staff)
    assert staff.totp_confirmed_at is None
    done = client.post("/staff/two-factor/setup", data={"code": pyotp.TOTP(new).at(clock())})
    assert done.status_code == 200


def test_two_tabs_opening_the_setup_page_agree_on_one_key(
    client: FlaskClient, session: Session, app: Flask
) -> None:
    staff = make_user(session, "two-tabs@example.com", staff_role="support")
    _first_factor(client, app, staff)
    first = _setup_secret(client.get("/staff/two-factor/setup").get_data(as_text=True))
    second = _setup_secret(client.get("/staff/two-factor/setup").get_data(as_text=True))
    assert first == second
    assert _actions(session).count("staff.totp_enrolment_started") == 1


@pytest.mark.parametrize("code", ["١٢٣٤٥٦", "１２３４５６", "۱۲۳۴۵۶", "12345６"])
def test_codes_in_other_scripts_get_a_clear_message(
    client: FlaskClient, session: Session, app: Flask, code: str
) -> None:
    staff = _enrolled(session, "digits@example.com")
    _first_factor(client, app, staff)
    for path in ("/staff/two-factor", "/staff/two-factor/setup"):
        response = client.post(path, data={"code": code})
        if path.endswith("setup"):
            assert response.status_code == 303  # already enrolled: nothing to set up
            continue
        assert response.status_code == 422
        assert "digits 0 to 9" in response.get_data(as_text=True)
    assert client.get("/staff/").status_code == 303

    newcomer = make_user(session, f"digits-new-{len(code)}@example.com", staff_role="support")
    other = app.test_client()
    _first_factor(other, app, newcomer)
    other.get("/staff/two-factor/setup")
    response = other.post("/staff/two-factor/setup", data={"code": code})
    assert response.status_code == 422
    assert "digits 0 to 9" in response.get_data(as_text=True)


@pytest.mark.parametrize("code", ["١٢٣٤٥٦", "１２３４５６"])
def test_the_code_check_itself_refuses_other_scripts_digits(code: str) -> None:
    from portal.staff.services import matching_step

    assert matching_step(pyotp.random_base32(), code) is None


# --- recovery codes can be kept -------------------------------------------------------------


def test_recovery_codes_download_as_a_text_file(
    client: FlaskClient, session: Session, app: Flask, clock: FrozenClock
) -> None:
    staff = make_user(session, "keep-codes@example.com", staff_role="admin")
    _first_factor(client, app, staff)
    secret = _setup_secret(client.get("/staff/two-factor/setup").get_data(as_text=True))
    done = client.post("/staff/two-factor/setup", data={"code": pyotp.TOTP(secret).at(clock())})
    body = done.get_data(as_text=True)
    codes = re.findall(r'name="code" value="([0-9a-f]{5}-[0-9a-f]{5})"', body)
    assert len(codes) == 10
    assert 'action="/staff/two-factor/recovery-codes.txt"' in body

    download = client.post(
        "/staff/two-factor/recovery-codes.txt", data={"code": [*codes, "fffff-00000", "<b>x</b>"]}
    )
    assert download.status_code == 200
    assert download.mimetype == "text/plain"
    assert download.headers["Content-Disposition"] == 'attachment; filename="recovery-codes.txt"'
    assert download.headers["Cache-Control"] == "no-store"
    text = download.get_data(as_text=True)
    assert all(code in text for code in codes)
    assert "fffff-00000" not in text and "<b>" not in text  # nothing but this user's codes

    # Nothing is echoed for codes that are not this user's unused ones.
    refused = client.post("/staff/two-factor/recovery-codes.txt", data={"code": ["abc"]})
    assert refused.status_code == 404


# --- staff have their own home ----------------------------------------------------------------


def test_staff_who_land_on_the_customer_home_go_to_the_staff_area(
    client: FlaskClient, session: Session, app: Flask
) -> None:
    from tests.conftest import login_as

    staff = _enrolled(session, "home@example.com")
    login_as(client, staff)
    response = client.get("/")
    assert response.status_code == 303
    assert response.headers["Location"] == "/staff/"
    page = client.get("/staff/").get_data(as_text=True)
    assert re.search(r'<a class="brand" href="/staff/"', page)
    assert 'data-testid="staff-footer"' in page
    assert "Card payments" not in page
    # The 404 page's button leads to "/", which now leads staff home instead of a loop.
    missing = client.get("/no-such-page")
    assert missing.status_code == 404
    assert client.get("/").headers["Location"] == "/staff/"


def test_customers_keep_their_dashboard_and_footer(client: FlaskClient, session: Session) -> None:
    from tests.conftest import login_as

    customer = make_user(session, "still-customer@example.com", make_account(session))
    login_as(client, customer)
    page = client.get("/")
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert "Card payments" in body and 'data-testid="staff-footer"' not in body


def test_a_stored_staff_destination_with_control_characters_is_not_followed(
    client: FlaskClient, session: Session, app: Flask
) -> None:
    staff = _enrolled(session, "staff-crlf@example.com")
    _first_factor(client, app, staff)
    with client.session_transaction() as cookie:
        cookie["staff_next"] = "/staff/\r\nSet-Cookie: planted=1"
    code = pyotp.TOTP(staff.totp_secret).at(clock.now())
    response = client.post("/staff/two-factor", data={"code": code})
    assert response.status_code == 303
    assert response.headers["Location"] == "/staff/"


def test_a_chargeback_page_lists_its_ledger_entries(client: FlaskClient, session: Session) -> None:
    """The withdrawal and the fee a chargeback posted, and nothing of another chargeback."""
    from portal.billing import ledger as ledger_posts
    from portal.billing import services as billing
    from portal.billing.models import LedgerKind
    from portal.billing.money import Money
    from tests.conftest import login_as
    from tests.factories import make_invoice
    from tests.staff.helpers import make_dispute as make_chargeback

    account = make_account(session, name="Chargeback Studio")
    invoice = make_invoice(session, account, (4200,))
    payment = billing.record_payment(
        session,
        account,
        Money(4200, "USD"),
        [(invoice, Money(4200, "USD"))],
        received_at=invoice.finalized_at,
    )
    dispute = make_chargeback(
        session,
        account,
        invoice,
        source="chargeback",
        payment=payment,
        stripe_dispute_id="dp_route_1",
        reason="not_recognized",
    )
    for kind, amount, ref, dp in (
        (LedgerKind.CHARGEBACK, 4200, "chargeback:txn_a", "dp_route_1"),
        (LedgerKind.CHARGEBACK_FEE, 1500, "chargeback_fee:txn_a", "dp_route_1"),
        (LedgerKind.CHARGEBACK_FEE, 999, "chargeback_fee:txn_b", "dp_route_10"),
    ):
        ledger_posts.post(
            session,
            account_id=account.id,
            kind=kind,
            amount=Money(amount, "USD"),
            source_ref=ref,
            effective_at=invoice.finalized_at,
            description=f"Fee ({dp})",
            invoice_id=invoice.id,
        )
    support = make_user(session, "cb-route@example.com", staff_role="support")
    session.commit()
    login_as(client, support)
    html = client.get(f"/staff/disputes/{dispute.public_id}").get_data(as_text=True)
    ledger = html.split('data-testid="chargeback-ledger"', 1)[1].split("</section>", 1)[0]
    assert ledger.count('data-testid="chargeback-entry"') == 2
    assert "$42.00" in ledger and "$15.00" in ledger and "$9.99" not in ledger
