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
from flask_babel import gettext as _
from flask_limiter.util import get_remote_address

from portal.accounts.models import User
from portal.auth import limits, safe_next
from portal.auth.sessions import session_user_id, signed_in_user
from portal.db import begin_write, has_pending_changes
from portal.extensions import db, limiter, login_manager
from portal.staff import services
from portal.staff.forms import EnrolmentForm, SecondFactorForm
from portal.web import see_other

bp = Blueprint("staff", __name__, url_prefix="/staff")

MFA_KEY = "mfa_passed_for"
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
    target = safe_next(request.full_path.rstrip("?"))
    if request.method == "GET" and target:
        session[STAFF_NEXT_KEY] = target
    if user.totp_confirmed_at is None:
        return see_other(url_for("staff.totp_setup"))
    return see_other(url_for("staff.totp_verify"))


def _after_second_factor() -> Response:
    session[MFA_KEY] = session_user_id()
    target = safe_next(session.pop(STAFF_NEXT_KEY, None))
    return see_other(target or url_for("staff.home"))


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
    form = EnrolmentForm()
    status = 200
    if request.method == "POST":
        status = 422
        if not services.pending_secret_is_fresh(user):
            # NOTE: the key shown was abandoned for over an hour (or never made): a new one.
            form.code.errors = [_("That setup code expired. Scan the new code below.")]
        elif form.validate():
            codes = services.confirm_enrolment(db.session, user, form.code.data)
            if codes is not None:
                session[MFA_KEY] = session_user_id()
                return render_template("staff/recovery_codes.html", codes=codes)
            form.code.errors = [_("That code did not match. Enter the current code from the app.")]
    elif not services.pending_secret_is_fresh(user) and not has_pending_changes(db.session):
        # NOTE: a GET that writes: the pending secret waits on the user row, never in the
        # readable session cookie. Its transaction must be a writer (SQLite: BEGIN IMMEDIATE);
        # one already is when this request moved the session's last-seen time on.
        begin_write(db.session)
    # NOTE: the secret is server-side; showing it again changes nothing until a code proves
    # the app has it (confirm_enrolment).
    secret = services.start_enrolment(db.session, user)
    uri = services.provisioning_uri(secret, user.email, current_app.config["BRAND_NAME"])
    return (
        render_template(
            "staff/totp_setup.html",
            form=form,
            secret=secret,
            grouped_secret=services.grouped_secret(secret),
            otpauth_uri=uri,
            qr_code=services.qr_code_data_uri(uri),
        ),
        status,
    )


@bp.post("/two-factor/recovery-codes.txt")
def recovery_codes_file() -> Response:
    """The recovery codes just shown, as a text file to keep.

    NOTE: the codes are stored only as hashes, so the page sends them back; the file holds
    only those that are this user's unused codes (nothing else is echoed) and is not cached.
    """
    user = _staff_user()
    codes = services.unused_recovery_codes(db.session, user, request.form.getlist("code"))
    if not codes:
        abort(404)
    heading = _("Recovery codes for %(email)s. Each one works once.", email=user.email)
    body = "\n".join([heading, "", *codes, ""])
    response = Response(body, mimetype="text/plain")
    response.headers["Content-Disposition"] = 'attachment; filename="recovery-codes.txt"'
    response.headers["Cache-Control"] = "no-store"
    return response


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
                _(
                    "That code was already used. Wait for the next code to appear in your app "
                    "(a new one every 30 seconds) and enter that one."
                )
            ]
        else:
            form.code.errors = [
                _("That code did not work. Codes change every 30 seconds: try the current one.")
            ]
    return render_template("staff/totp_verify.html", form=form), 422


from portal.staff import outbox  # noqa: E402, F401  (staff pages of issue 12 on this blueprint)
