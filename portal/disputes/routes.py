"""Customer dispute pages: question a charge, follow it, answer, add evidence, withdraw."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, abort, current_app, flash, request, send_file, url_for
from flask_babel import gettext as _
from flask_login import login_required
from sqlalchemy import select
from werkzeug.datastructures import FileStorage
from wtforms import SelectChoice

from portal import clock
from portal.accounts.models import Account
from portal.accounts.services import can_edit_details
from portal.audit.services import Actor
from portal.auth.sessions import current_account, signed_in_user
from portal.billing import queries as billing_queries
from portal.billing.models import Invoice
from portal.disputes import queries, services
from portal.disputes.evidence import EXTENSIONS, EvidenceStore
from portal.disputes.forms import REASON_LABELS, MessageForm, NewDisputeForm, WithdrawForm
from portal.disputes.hours import BusinessHours
from portal.disputes.models import Attachment, Dispute, DisputeStatus
from portal.errors import Conflict, NotAllowed, ValidationFailed
from portal.extensions import db
from portal.formatting import moment
from portal.web import accepts_files, render_page, see_other

bp = Blueprint("disputes", __name__)


def status_label(status: str) -> str:
    labels = {
        DisputeStatus.OPEN.value: _("Submitted"),
        DisputeStatus.IN_REVIEW.value: _("In review"),
        DisputeStatus.WAITING_ON_CUSTOMER.value: _("Waiting for you"),
        DisputeStatus.RESOLVED.value: _("Resolved"),
        DisputeStatus.REJECTED.value: _("Rejected"),
        DisputeStatus.WITHDRAWN.value: _("Withdrawn"),
    }
    return labels.get(status, status)


def response_target() -> services.ResponseTarget:
    """The configured response target: business hours of the merchant's week (PORTAL_TIMEZONE)."""
    config = current_app.config
    return services.ResponseTarget(
        hours=int(config.get("DISPUTE_RESPONSE_BUSINESS_HOURS", 16)),
        business_hours=BusinessHours(
            timezone=config.get("PORTAL_TIMEZONE", "UTC"),
            start=int(config.get("DISPUTE_BUSINESS_DAY_START", 9)),
            end=int(config.get("DISPUTE_BUSINESS_DAY_END", 17)),
        ),
    )


def evidence_store() -> EvidenceStore:
    """Where evidence files live: ATTACHMENTS_DIR, by default instance/attachments (never
    under static/)."""
    root = current_app.config.get("ATTACHMENTS_DIR") or Path(current_app.instance_path) / (
        "attachments"
    )
    return EvidenceStore(root)


def evidence_limit() -> int:
    return int(current_app.config.get("EVIDENCE_MAX_BYTES", 5 * 1024 * 1024))


def attachment_response(attachment: Attachment) -> Response:
    """Stream one evidence file as a download: a name we build, its checked type, no sniffing,
    no rendering in the browser (also for the staff console)."""
    try:
        path = evidence_store().path(attachment.storage_key)
        response = send_file(
            path,
            mimetype=attachment.content_type,
            as_attachment=True,
            download_name=f"evidence-{attachment.public_id}.{EXTENSIONS[attachment.content_type]}",
            max_age=0,
            conditional=False,
        )
    except (FileNotFoundError, KeyError):
        abort(404)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "private, no-store"
    return response


def _actor() -> Actor:
    user = signed_in_user()
    assert user is not None
    return Actor.person(user, request.remote_addr)


def _require_editor(account: Account) -> None:
    user = signed_in_user()
    assert user is not None
    if not can_edit_details(db.session, user, account):
        raise NotAllowed(_("Only the account's owner or billing contact can question charges."))


def _own_dispute(public_id: str) -> Dispute:
    account = current_account()
    if len(public_id) > 24:
        abort(404)
    dispute = db.session.scalar(queries.dispute_of_account(account.id, public_id))
    if dispute is None:
        abort(404)
    return dispute


def _uploads(field: str) -> list[FileStorage]:
    return [f for f in request.files.getlist(field) if f and (f.filename or f.content_length)]


def _attach_all(
    dispute: Dispute,
    files: Iterable[FileStorage],
    actor: Actor,
    store: EvidenceStore,
    message: Any = None,
) -> int:
    count = 0
    for upload in files:
        limit = evidence_limit()
        # NOTE: read one byte past the limit: enough to know it is too large, never more.
        data = upload.stream.read(limit + 1)
        services.add_attachment(
            db.session,
            dispute,
            data=data,
            filename=upload.filename or "",
            actor=actor,
            store=store,
            max_bytes=limit,
            message=message,
        )
        count += 1
    return count


@bp.get("/disputes")
@login_required
def index() -> Response:
    account = current_account()
    disputes = db.session.scalars(queries.disputes_of_account(account.id)).all()
    invoices = {
        invoice.id: invoice
        for invoice in db.session.scalars(
            select(Invoice).where(Invoice.id.in_({d.invoice_id for d in disputes if d.invoice_id}))
        )
    }
    return render_page(
        "disputes/index.html",
        account=account,
        disputes=disputes,
        invoices=invoices,
        status_label=status_label,
        reason_labels=REASON_LABELS,
        target=response_target(),
    )


def _invoice_for_new(account: Account) -> Invoice:
    number = request.args.get("invoice", "")
    if not billing_queries.is_invoice_number(number):
        abort(404)
    invoice = db.session.scalar(billing_queries.issued_invoice(account.id, number))
    if invoice is None or invoice.status == "void":
        abort(404)
    return invoice


def _render_new(
    account: Account, invoice: Invoice, form: NewDisputeForm, status: int = 200, error: str = ""
) -> Response:
    target = response_target()
    capacities = services.line_capacities(db.session, invoice)
    response = render_page(
        "disputes/new.html",
        account=account,
        invoice=invoice,
        form=form,
        capacities=capacities,
        available_minor=services.invoice_available_minor(db.session, invoice),
        reason_labels=REASON_LABELS,
        target=target,
        due_at=target.due(clock.now()),
        evidence_limit_mb=max(1, evidence_limit() // (1024 * 1024)),
        error=error,
    )
    response.status_code = status
    return response


@bp.route("/disputes/new", methods=["GET", "POST"])
@login_required
@accepts_files("evidence")
def new() -> Response:
    account = current_account()
    invoice = _invoice_for_new(account)
    form = NewDisputeForm()
    capacities = services.line_capacities(db.session, invoice)
    form.lines.choices = [SelectChoice(c.line.position, c.line.description) for c in capacities]
    if request.method == "GET":
        wanted = request.args.get("line", "")
        if wanted.isdigit() and int(wanted) in {c.line.position for c in capacities}:
            form.lines.data = [int(wanted)]
            form.scope.data = "lines"
        elif not any(c.available_minor for c in capacities):
            form.scope.data = "whole"
        return _render_new(account, invoice, form)
    _require_editor(account)
    if not form.validate():
        return _render_new(account, invoice, form, 422, form.first_error())
    amount = form.money(invoice.currency, account.locale)
    if amount is None:
        return _render_new(account, invoice, form, 422, form.first_error())
    positions = set(form.lines.data or []) if form.scope.data == "lines" else set()
    line_ids = [c.line.id for c in capacities if c.line.position in positions]
    actor = _actor()
    store = evidence_store()
    try:
        with db.session.begin_nested():
            dispute = services.open_dispute(
                db.session,
                account=account,
                invoice=invoice,
                amount=amount,
                reason=form.reason.data or "",
                description=form.description.data or "",
                actor=actor,
                target=response_target(),
                line_ids=line_ids,
            )
            attached = _attach_all(dispute, _uploads("evidence"), actor, store)
    except ValidationFailed as refused:
        store.discard_saved()
        # NOTE: nothing of the dispute is kept when a file or a value is refused; the form
        # comes back with what was typed and the reason.
        message = _(refused.msgid, **refused.params) if refused.params else _(refused.msgid)
        for name, text in refused.errors.items():
            field = getattr(form, name, None)
            if field is not None:
                field.errors = [*field.errors, _(text)]
        if not refused.errors:
            form.evidence.errors = [message]
        return _render_new(account, invoice, form, 422, message)
    except Conflict as conflict:
        store.discard_saved()
        # NOTE: the lines are already in another open question (a double submit lands here):
        # the form comes back saying so, nothing is opened twice.
        message = _(conflict.msgid, **conflict.params) if conflict.params else _(conflict.msgid)
        return _render_new(account, invoice, form, 409, message)
    flash(
        _("We received your question. We will answer by %(due)s.", due=_due_text(dispute))
        + (" " + _("Your files are attached.") if attached else ""),
        "success",
    )
    return see_other(url_for("disputes.detail", public_id=dispute.public_id))


def _due_text(dispute: Dispute) -> str:
    return moment(dispute.response_due_at) if dispute.response_due_at else ""


def _render_detail(
    dispute: Dispute, form: MessageForm | None = None, status: int = 200, error: str = ""
) -> Response:
    account = current_account()
    invoice = db.session.get(Invoice, dispute.invoice_id) if dispute.invoice_id else None
    attachments = queries.customer_attachments(db.session, dispute.id)
    by_message: dict[int | None, list[Attachment]] = {}
    for attachment in attachments:
        by_message.setdefault(attachment.message_id, []).append(attachment)
    lines = {line.id: line for line in invoice.lines} if invoice is not None else {}
    user = signed_in_user()
    response = render_page(
        "disputes/detail.html",
        account=account,
        dispute=dispute,
        invoice=invoice,
        invoice_lines=lines,
        events=queries.dispute_events(db.session, dispute.id),
        credit_notes=queries.dispute_credit_notes(db.session, dispute.id),
        messages=queries.customer_messages(db.session, dispute.id),
        attachments=by_message,
        status_label=status_label,
        reason_labels=REASON_LABELS,
        target=response_target(),
        now=clock.now(),
        is_open=dispute.status in queries.OPEN_DISPUTE_STATUSES,
        can_act=user is not None and can_edit_details(db.session, user, account),
        form=form or MessageForm(),
        withdraw_form=WithdrawForm(),
        evidence_limit_mb=max(1, evidence_limit() // (1024 * 1024)),
        error=error,
    )
    response.status_code = status
    return response


@bp.get("/disputes/<public_id>")
@login_required
def detail(public_id: str) -> Response:
    return _render_detail(_own_dispute(public_id))


@bp.post("/disputes/<public_id>/messages")
@login_required
@accepts_files("evidence")
def message(public_id: str) -> Response:
    dispute = _own_dispute(public_id)
    _require_editor(current_account())
    form = MessageForm()
    files = _uploads("evidence")
    # NOTE: evidence alone (no words) is a message too: "here is the photo".
    if not (form.body.data or "").strip() and files:
        form.body.data = _("Files attached.")
    if not form.validate():
        return _render_detail(dispute, form, 422, form.first_error())
    actor = _actor()
    store = evidence_store()
    try:
        with db.session.begin_nested():
            written = services.add_message(db.session, dispute, body=form.body.data, actor=actor)
            _attach_all(dispute, files, actor, store, message=written)
    except ValidationFailed as refused:
        store.discard_saved()
        text = _(refused.msgid, **refused.params) if refused.params else _(refused.msgid)
        form.evidence.errors = [text]
        return _render_detail(dispute, form, 422, text)
    flash(_("Your message is sent."), "success")
    return see_other(url_for("disputes.detail", public_id=dispute.public_id) + "#thread")


@bp.post("/disputes/<public_id>/withdraw")
@login_required
def withdraw(public_id: str) -> Response:
    dispute = _own_dispute(public_id)
    _require_editor(current_account())
    if dispute.source != "customer":
        flash(_("A dispute with your bank can only be withdrawn with your bank."), "info")
        return see_other(url_for("disputes.detail", public_id=dispute.public_id))
    if dispute.status not in queries.OPEN_DISPUTE_STATUSES:
        flash(_("This question was already closed."), "info")
        return see_other(url_for("disputes.detail", public_id=dispute.public_id))
    services.withdraw(db.session, dispute, actor=_actor())
    flash(_("You withdrew your question. The amount is payable again."), "success")
    return see_other(url_for("disputes.detail", public_id=dispute.public_id))


@bp.get("/disputes/<public_id>/files/<file_id>")
@login_required
def attachment(public_id: str, file_id: str) -> Response:
    dispute = _own_dispute(public_id)
    if len(file_id) > 24:
        abort(404)
    found = db.session.scalar(queries.customer_attachment(dispute.id, file_id))
    if found is None:
        abort(404)
    return attachment_response(found)
