"""The staff area. Every /staff/ page needs a staff role and a passed second factor (TOTP)."""

from __future__ import annotations

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    render_template,
    request,
    session,
    url_for,
)
from flask_limiter.util import get_remote_address

from portal.accounts.models import User
from portal.auth import limits
from portal.auth.sessions import session_user_id, signed_in_user
from portal.extensions import db, limiter, login_manager
from portal.staff import services
from portal.staff.forms import SecondFactorForm
from portal.web import is_safe_next, see_other

bp = Blueprint("staff", __name__, url_prefix="/staff")

MFA_KEY = "mfa_passed_for"
PENDING_SECRET_KEY = "totp_pending_secret"
STAFF_NEXT_KEY = "staff_next"
SECOND_FACTOR_PAGES = {"staff.totp_setup", "staff.totp_verify"}


def second_factor_passed() -> bool:
    """True once this session (not just this user) passed TOTP; a new sign-in starts over."""
    current = session_user_id()
    return current is not None and session.get(MFA_KEY) == current


def _staff_user() -> User:
    user = signed_in_user()
    assert user is not None
    return user


@bp.before_request
def require_staff_and_second_factor() -> Response | None:
    user = signed_in_user()
    if user is None:
        return login_manager.unauthorized()
    if not user.is_staff:
        abort(404)  # customers never learn that a staff area exists
    if request.endpoint in SECOND_FACTOR_PAGES or second_factor_passed():
        return None
    if request.method == "GET" and is_safe_next(request.full_path.rstrip("?")):
        session[STAFF_NEXT_KEY] = request.full_path.rstrip("?")
    if user.totp_confirmed_at is None:
        return see_other(url_for("staff.totp_setup"))
    return see_other(url_for("staff.totp_verify"))


def _after_second_factor() -> Response:
    session[MFA_KEY] = session_user_id()
    target = session.pop(STAFF_NEXT_KEY, None)
    return see_other(target if is_safe_next(target) else url_for("staff.home"))


@bp.get("/")
def home() -> str:
    user = _staff_user()
    remaining = services.remaining_recovery_codes(db.session, user)
    return render_template("staff/home.html", user=user, remaining_codes=remaining)


@bp.route("/two-factor/setup", methods=["GET", "POST"])
def totp_setup() -> Response | tuple[str, int] | str:
    user = _staff_user()
    if user.totp_confirmed_at is not None:
        return see_other(url_for("staff.home" if second_factor_passed() else "staff.totp_verify"))
    # NOTE: the secret waits in this browser's signed session until a code proves the app has
    # it, so opening the page changes nothing on the server.
    secret = session.get(PENDING_SECRET_KEY)
    if not secret:
        secret = session[PENDING_SECRET_KEY] = services.new_totp_secret()
    form = SecondFactorForm()
    status = 200
    if request.method == "POST":
        codes = None
        if form.validate():
            codes = services.confirm_enrolment(db.session, user, secret, form.code.data)
        if codes is not None:
            session.pop(PENDING_SECRET_KEY, None)
            session[MFA_KEY] = session_user_id()
            return render_template("staff/recovery_codes.html", codes=codes)
        if not form.errors:
            form.code.errors = ["That code did not match. Enter the current code from the app."]
        status = 422
    uri = services.provisioning_uri(secret, user.email, current_app.config["BRAND_NAME"])
    return (
        render_template(
            "staff/totp_setup.html",
            form=form,
            secret=secret,
            qr_code=services.qr_code_data_uri(uri),
        ),
        status,
    )


def _verify_key() -> str:
    return f"{get_remote_address()}:{session_user_id()}"


@bp.route("/two-factor", methods=["GET", "POST"])
@limiter.limit(
    limits.config_limit("TOTP_RATE_LIMIT"),
    methods=["POST"],
    key_func=_verify_key,
    exempt_when=limits.limits_off,
    on_breach=limits.record_breach,
)
def totp_verify() -> Response | tuple[str, int] | str:
    user = _staff_user()
    if user.totp_confirmed_at is None:
        return see_other(url_for("staff.totp_setup"))
    if second_factor_passed():
        return see_other(url_for("staff.home"))
    form = SecondFactorForm()
    if request.method == "GET":
        return render_template("staff/totp_verify.html", form=form)
    if form.validate():
        result = services.verify_second_factor(db.session, user, form.code.data)
        if result in services.PASSED:
            return _after_second_factor()
        if result == services.REUSED:
            form.code.errors = [
                "That code was already used. Wait for the next code to appear in your app "
                "(a new one every 30 seconds) and enter that one."
            ]
        else:
            form.code.errors = [
                "That code did not work. Codes change every 30 seconds: try the current one."
            ]
    return render_template("staff/totp_verify.html", form=form), 422
