"""The staff area. Every /staff/ page needs a staff role and a passed second factor (TOTP)."""

from __future__ import annotations

import logging
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    render_template,
    request,
    session,
    stream_with_context,
    url_for,
)
from flask_babel import gettext as _
from flask_limiter.util import get_remote_address
from sqlalchemy import select

from portal import clock
from portal.accounts.models import Account, User
from portal.audit.services import Actor
from portal.auth import limits, safe_next
from portal.auth.sessions import session_user_id, signed_in_user
from portal.billing.models import Invoice
from portal.billing.money import Money
from portal.db import begin_write, has_pending_changes
from portal.disputes.models import Attachment, Dispute
from portal.disputes.routes import attachment_response
from portal.errors import NotAllowed, ValidationFailed
from portal.extensions import db, limiter, login_manager
from portal.payments.gateway import gateway
from portal.payments.models import Payment
from portal.staff import dispute_ops, queries, queue, resolution, services, view_as
from portal.staff.access import MFA_KEY, is_admin, second_factor_passed
from portal.staff.audit_csv import audit_csv
from portal.staff.forms import (
    AssignForm,
    AuditFilterForm,
    CreditForm,
    CustomerSearchForm,
    DecisionForm,
    EnrolmentForm,
    MessageForm,
    QueueFilterForm,
    RefundForm,
    RejectForm,
    SecondFactorForm,
    StatusForm,
    first_error,
    line_amounts,
    page_number,
    parse_major,
    to_minor,
)
from portal.web import render_page, see_other

bp = Blueprint("staff", __name__, url_prefix="/staff")
log = logging.getLogger(__name__)

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
def home() -> Response:
    """The dispute queue: customer disputes and card chargebacks, filtered and sorted."""
    user = _staff_user()
    form = QueueFilterForm(request.args)
    error = ""
    if form.validate():
        filters = form.filters()
    else:
        error = form.first_error()
        filters = queue.QueueFilters()
    results = queue.queue_page(db.session, filters, page_number(request.args.get("page")), me=user)
    return render_page(
        "staff/home.html",
        "staff/_queue_rows.html",
        user=user,
        form=form,
        filters=filters,
        results=results,
        error=error,
        now=clock.now(),
        due_state=queue.due_state,
        staff_people=queries.staff_users(db.session),
        remaining_codes=services.remaining_recovery_codes(db.session, user),
    )


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
    wants_csv = request.args.get("format") == "csv"
    if form.validate():
        filters = form.filters()
        if wants_csv:
            return _audit_csv(filters)
    else:
        error = form.first_error()
        filters = queries.AuditFilters()
    page = queries.paginate(
        db.session, queries.audit_events(filters), page_number(request.args.get("page"))
    )
    users = queries.users_by_id(db.session, {e.actor_user_id for e in page.rows if e.actor_user_id})
    accounts = queries.accounts_by_id(db.session, {e.account_id for e in page.rows if e.account_id})
    # The download keeps the filters on screen (never the page number: it holds every row).
    kept = {k: v for k, v in request.args.items() if k in form.data and v}
    response = render_page(
        "staff/audit.html",
        "staff/_audit_rows.html",
        form=form,
        results=page,
        error=error,
        users=users,
        accounts=accounts,
        csv_url=url_for("staff.audit", **kept, format="csv"),
    )
    if wants_csv and error:
        response.status_code = 422  # no export of everything when the filters were wrong
    return response


def _audit_csv(filters: queries.AuditFilters) -> Response:
    """Every event the filters select, as CSV; the export is itself an audit event."""
    # NOTE: a GET that writes (who exported what): its transaction must be a writer. The
    # request boundary commits the event before the first row is streamed.
    if not has_pending_changes(db.session):
        begin_write(db.session)
    _actor().record(
        db.session,
        "staff.audit_exported",
        account_id=None,
        target_type="audit_log",
        target_id="csv",
        after={
            "filters": {
                "actor": filters.actor,
                "account": filters.account,
                "action": filters.action,
                "start": filters.start.isoformat() if filters.start else "",
                "end": filters.end.isoformat() if filters.end else "",
            }
        },
    )
    stamp = clock.now().strftime("%Y%m%dT%H%M%SZ")
    response = Response(stream_with_context(audit_csv(db.session, filters, _)), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="audit-log-{stamp}.csv"'
    response.headers["Cache-Control"] = "private, no-store"
    return response


# -- one dispute ----------------------------------------------------------------------------


def _dispute_or_404(public_id: str) -> Dispute:
    dispute = db.session.scalar(select(Dispute).where(Dispute.public_id == public_id[:24]))
    if dispute is None:
        abort(404)
    return dispute


def _limits() -> dict[str, int]:
    try:
        return resolution.parse_limits(current_app.config.get("STAFF_CREDIT_LIMITS", ""))
    except ValueError:
        # NOTE: a setting nobody can read gives support no limit to work within: every credit
        # and refund then waits for an admin, never the other way round.
        log.warning("STAFF_CREDIT_LIMITS cannot be read; every resolution needs an admin")
        return {}


def _dispute_page(dispute: Dispute, *, status: int = 200, **forms: Any) -> Response:
    user = _staff_user()
    account = db.session.get(Account, dispute.account_id)
    assert account is not None
    invoice = db.session.get(Invoice, dispute.invoice_id) if dispute.invoice_id else None
    payment = db.session.get(Payment, dispute.payment_id) if dispute.payment_id else None
    authors = queries.users_by_id(
        db.session, {m.author_user_id for m in dispute.messages if m.author_user_id}
    )
    limit = resolution.limit_for(user, dispute.currency, _limits())
    shown = {m.id for m in dispute.messages if m.deleted_at is None}
    files: dict[int | None, list[Attachment]] = {}
    for attachment in queries.dispute_attachments(db.session, dispute.id):
        # NOTE: a file not in a shown message is listed with the question itself.
        key = attachment.message_id if attachment.message_id in shown else None
        files.setdefault(key, []).append(attachment)
    response = render_page(
        "staff/dispute.html",
        dispute=dispute,
        customer=account,
        invoice=invoice,
        payment=payment,
        lines=queries.dispute_lines(db.session, dispute),
        chargeback_entries=queries.chargeback_entries(db.session, dispute),
        invoice_lines=invoice.lines if invoice is not None else [],
        credited=queries.credited_by_line(db.session, invoice),
        refundable=resolution.refundable_payments(db.session, dispute),
        context=queries.account_context(db.session, account),
        authors=authors,
        files=files,
        events=dispute.events,
        user=user,
        staff_people=queries.staff_users(db.session),
        due=queue.due_state(dispute, clock.now()),
        now=clock.now(),
        limit_minor=limit,
        waiting=queries.open_approval(db.session, dispute),
        message_form=forms.get("message_form") or MessageForm(formdata=None),
        note_form=forms.get("note_form") or MessageForm(formdata=None, prefix="note"),
        credit_form=forms.get("credit_form") or CreditForm(formdata=None),
        refund_form=forms.get("refund_form") or RefundForm(formdata=None),
        reject_form=forms.get("reject_form") or RejectForm(formdata=None),
        form_error=forms.get("form_error", ""),
    )
    response.status_code = status
    return response


@bp.get("/disputes/<public_id>")
def dispute(public_id: str) -> Response:
    return _dispute_page(_dispute_or_404(public_id))


@bp.get("/disputes/<public_id>/files/<file_id>")
def dispute_file(public_id: str, file_id: str) -> Response:
    """One evidence file of the dispute, the customer's or an internal one, as a download.

    NOTE: like the customer's download, a read writes no audit event.
    """
    dispute = _dispute_or_404(public_id)
    if len(file_id) > 24:
        abort(404)
    found = queries.dispute_attachment(db.session, dispute.id, file_id)
    if found is None:
        abort(404)
    return attachment_response(found)


def _back(dispute: Dispute, anchor: str = "") -> Response:
    return see_other(url_for("staff.dispute", public_id=dispute.public_id) + anchor)


@bp.post("/disputes/<public_id>/assign")
def dispute_assign(public_id: str) -> Response:
    dispute = _dispute_or_404(public_id)
    form = AssignForm()
    if not form.validate():
        return _dispute_page(dispute, status=422, form_error=first_error(form))
    choice = (form.assignee.data or "").strip()
    if choice == "me":
        assignee: User | None = _staff_user()
    elif choice:
        assignee = dispute_ops.staff_user(db.session, choice)
        if assignee is None:
            return _dispute_page(
                dispute, status=422, form_error=_("Choose a staff member from the list.")
            )
    else:
        assignee = None
    dispute_ops.assign(db.session, dispute, assignee, actor=_actor())
    flash(_("Assignment saved."), "success")
    return _back(dispute)


@bp.post("/disputes/<public_id>/reply")
def dispute_reply(public_id: str) -> Response:
    dispute = _dispute_or_404(public_id)
    form = MessageForm()
    if not form.validate():
        return _dispute_page(dispute, status=422, message_form=form, form_error=first_error(form))
    dispute_ops.reply(db.session, dispute, form.body.data, actor=_actor())
    flash(_("Your reply was sent to the customer."), "success")
    return _back(dispute, "#thread")


@bp.post("/disputes/<public_id>/note")
def dispute_note(public_id: str) -> Response:
    dispute = _dispute_or_404(public_id)
    form = MessageForm(prefix="note")
    if not form.validate():
        return _dispute_page(dispute, status=422, note_form=form, form_error=first_error(form))
    dispute_ops.internal_note(db.session, dispute, form.body.data, actor=_actor())
    flash(_("Internal note saved. The customer does not see it."), "success")
    return _back(dispute, "#thread")


@bp.post("/disputes/<public_id>/status")
def dispute_status(public_id: str) -> Response:
    dispute = _dispute_or_404(public_id)
    form = StatusForm()
    if not form.validate():
        return _dispute_page(dispute, status=422, form_error=first_error(form))
    dispute_ops.set_status(db.session, dispute, form.status.data, actor=_actor())
    flash(_("Status changed."), "success")
    return _back(dispute)


def _announce(outcome: resolution.Outcome) -> None:
    if outcome.kind == "approval_requested":
        flash(_("This is above your limit: an admin has been asked to approve it."), "warning")
    elif outcome.kind == "credited" and outcome.credit_note is not None:
        flash(
            _(
                "Credit note %(number)s issued; the dispute is resolved.",
                number=outcome.credit_note.number,
            ),
            "success",
        )
    elif outcome.kind == "refunded":
        flash(_("The refund went through; the dispute is resolved."), "success")
    elif outcome.kind == "refund_pending":
        flash(
            _(
                "The refund is pending: Stripe has not confirmed it yet. It is checked again "
                "automatically and will not be made twice."
            ),
            "warning",
        )
    elif outcome.kind == "refund_failed":
        flash(_("Stripe refused the refund: %(why)s", why=outcome.message), "danger")
    elif outcome.kind == "rejected":
        flash(_("The dispute is closed with your explanation."), "success")


@bp.post("/disputes/<public_id>/credit")
def dispute_credit(public_id: str) -> Response:
    dispute = _dispute_or_404(public_id)
    form = CreditForm()
    if not form.validate():
        return _dispute_page(dispute, status=422, credit_form=form, form_error=first_error(form))
    invoice = db.session.get(Invoice, dispute.invoice_id) if dispute.invoice_id else None
    line_ids = [line.id for line in invoice.lines] if invoice is not None else []
    whole = parse_major(form.amount.data)
    plan = resolution.credit_plan(
        dispute,
        invoice.lines if invoice is not None else [],
        whole_minor=to_minor(whole, dispute.currency) if whole is not None else None,
        line_minor=line_amounts(request.form, line_ids, dispute.currency),
        memo=form.memo.data or "",
    )
    outcome = resolution.resolve_by_credit(
        db.session, dispute.public_id, plan, user=_staff_user(), actor=_actor(), limits=_limits()
    )
    _announce(outcome)
    return _back(dispute)


@bp.post("/disputes/<public_id>/refund")
def dispute_refund(public_id: str) -> Response:
    dispute = _dispute_or_404(public_id)
    form = RefundForm()
    if not form.validate():
        return _dispute_page(dispute, status=422, refund_form=form, form_error=first_error(form))
    major = parse_major(form.amount.data)
    assert major is not None
    plan = resolution.RefundPlan(
        form.payment.data.strip(),
        Money(to_minor(major, dispute.currency), dispute.currency),
        form.note.data or "",
    )
    outcome = resolution.resolve_by_refund(
        db.session,
        gateway(),
        dispute.public_id,
        plan,
        user=_staff_user(),
        actor=_actor(),
        limits=_limits(),
    )
    _announce(outcome)
    return _back(dispute)


@bp.post("/disputes/<public_id>/reject")
def dispute_reject(public_id: str) -> Response:
    dispute = _dispute_or_404(public_id)
    form = RejectForm()
    if not form.validate():
        return _dispute_page(dispute, status=422, reject_form=form, form_error=first_error(form))
    outcome = resolution.reject(
        db.session, dispute.public_id, form.explanation.data, actor=_actor()
    )
    _announce(outcome)
    return _back(dispute)


# -- approvals (admins) ---------------------------------------------------------------------


def _admin() -> User:
    user = _staff_user()
    if not is_admin(user):
        raise NotAllowed(_("Only admins decide on credits and refunds above a support limit."))
    return user


@bp.get("/approvals")
def approvals() -> Response:
    user = _staff_user()
    return render_page(
        "staff/approvals.html",
        user=user,
        requests=resolution.pending_approvals(db.session),
        can_decide=is_admin(user),
        form=DecisionForm(formdata=None),
    )


@bp.post("/approvals/<public_id>/approve")
def approval_approve(public_id: str) -> Response:
    user = _admin()
    form = DecisionForm()
    if not form.validate():
        raise ValidationFailed(first_error(form))
    outcome = resolution.approve(
        db.session,
        gateway(),
        public_id[:24],
        decider=user,
        actor=_actor(),
        note=form.note.data or "",
    )
    _announce(outcome)
    return see_other(url_for("staff.approvals"))


@bp.post("/approvals/<public_id>/decline")
def approval_decline(public_id: str) -> Response:
    user = _admin()
    form = DecisionForm()
    if not form.validate():
        raise ValidationFailed(first_error(form))
    resolution.decline_approval(
        db.session, public_id[:24], decider=user, actor=_actor(), note=form.note.data or ""
    )
    flash(_("Request turned down; the dispute stays open."), "success")
    return see_other(url_for("staff.approvals"))
