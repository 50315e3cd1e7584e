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

from portal.accounts.models import Account, User
from portal.audit.services import Actor
from portal.auth import limits, safe_next
from portal.auth.sessions import session_user_id, signed_in_user
from portal.db import begin_write, has_pending_changes
from portal.extensions import db, limiter, login_manager
from portal.staff import queries, services, view_as
from portal.staff.access import MFA_KEY, second_factor_passed
from portal.staff.forms import (
    AuditFilterForm,
    CustomerSearchForm,
    EnrolmentForm,
    SecondFactorForm,
    page_number,
)
from portal.web import render_page, see_other

bp = Blueprint("staff", __name__, url_prefix="/staff")

STAFF_NEXT_KEY = "staff_next"
SECOND_FACTOR_PAGES = {"staff.totp_setup", "staff.totp_verify"}


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


@bp.context_processor
def staff_globals() -> dict[str, object]:
    return {
        "staff_endpoints": frozenset(current_app.view_functions),
        "pending_approvals": _pending_approvals(),
    }


def _pending_approvals() -> int:
    user = signed_in_user()
    if user is None or not user.is_staff or not second_factor_passed():
        return 0
    return queries.pending_approval_count(db.session)


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


def _actor() -> Actor:
    return Actor("staff", _staff_user().id, request.remote_addr)


def _account_or_404(public_id: str) -> Account:
    account = queries.account_by_public_id(db.session, public_id[:24])
    if account is None:
        abort(404)
    return account


# -- customer lookup and "view as customer" -------------------------------------------------


@bp.get("/customers")
def customers() -> Response:
    form = CustomerSearchForm(request.args)
    page = None
    error = ""
    if form.validate() and (form.q.data or "").strip():
        page = queries.paginate(
            db.session,
            queries.customer_search(form.q.data),
            page_number(request.args.get("page")),
        )
    elif form.errors:
        error = form.first_error()
    return render_page(
        "staff/customers.html",
        "staff/_customer_rows.html",
        form=form,
        results=page,
        error=error,
        q=(form.q.data or "").strip(),
    )


@bp.get("/customers/<public_id>")
def customer(public_id: str) -> Response:
    account = _account_or_404(public_id)
    context = queries.account_context(db.session, account, recent=10)
    return render_page("staff/customer.html", context=context, customer=account)


@bp.post("/customers/<public_id>/view-as")
def view_as_start(public_id: str) -> Response:
    account = _account_or_404(public_id)
    view_as.start(account)
    _actor().record(
        db.session,
        "staff.view_as_started",
        account_id=account.id,
        target_type="account",
        target_id=account.public_id,
    )
    return see_other(url_for("billing.dashboard"))


@bp.post("/view-as/end")
def view_as_end() -> Response:
    viewed = view_as.viewed_account()
    view_as.stop()
    if viewed is None:
        return see_other(url_for("staff.customers"))
    _actor().record(
        db.session,
        "staff.view_as_ended",
        account_id=viewed.id,
        target_type="account",
        target_id=viewed.public_id,
    )
    return see_other(url_for("staff.customer", public_id=viewed.public_id))


# -- the audit log --------------------------------------------------------------------------


@bp.get("/audit")
def audit() -> Response:
    form = AuditFilterForm(request.args)
    error = ""
    if form.validate():
        filters = form.filters()
    else:
        error = form.first_error()
        filters = queries.AuditFilters()
    page = queries.paginate(
        db.session, queries.audit_events(filters), page_number(request.args.get("page"))
    )
    users = queries.users_by_id(db.session, {e.actor_user_id for e in page.rows if e.actor_user_id})
    accounts = queries.accounts_by_id(db.session, {e.account_id for e in page.rows if e.account_id})
    return render_page(
        "staff/audit.html",
        "staff/_audit_rows.html",
        form=form,
        results=page,
        error=error,
        users=users,
        accounts=accounts,
    )
