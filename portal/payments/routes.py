"""Customer payment pages: the history of payments and a receipt for each."""

from __future__ import annotations

import re

from flask import Blueprint, Response, abort, current_app, request, url_for
from flask_login import login_required

from portal.auth.sessions import current_account
from portal.extensions import db
from portal.payments import queries, rows
from portal.web import render_page

bp = Blueprint("payments", __name__)

_PUBLIC_ID = re.compile(r"[A-Za-z0-9_-]{1,24}")


@bp.get("/payments")
@login_required
def history() -> Response:
    account = current_account()
    after = None
    error = ""
    raw_after = request.args.get("after", "")
    if raw_after:
        after = queries.PaymentCursor.decode(raw_after[:80])
        if after is None:
            error = "That page link is broken. Here are your latest payments."
    page = queries.payment_history(db.session, account.id, after)
    next_url = (
        url_for("payments.history", after=page.next_cursor.encode()) if page.next_cursor else None
    )
    return render_page(
        "payments/history.html",
        "payments/_payment_rows.html",
        account=account,
        results=page,
        lines=rows.payment_lines(page.rows),
        next_url=next_url,
        is_later_page=after is not None,
        error=error,
    )


@bp.get("/payments/<public_id>")
@login_required
def receipt(public_id: str) -> Response:
    account = current_account()
    if not _PUBLIC_ID.fullmatch(public_id):
        abort(404)  # public ids are URL-safe base64; nothing else reaches the database
    found = queries.payment_receipt(db.session, account.id, public_id)
    if found is None:
        abort(404)
    return render_page(
        "payments/receipt.html",
        account=account,
        receipt=found,
        config_views=current_app.view_functions,
    )


# ----------------------------------------------------------------------------------------------
# The receipt as a PDF (rendering lives in portal/billing/pdf.py).


@bp.get("/payments/<public_id>/pdf")
@login_required
def receipt_pdf(public_id: str) -> Response:
    from portal.billing import pdf

    account = current_account()
    if len(public_id) > 24:
        abort(404)
    found = queries.payment_receipt(db.session, account.id, public_id)
    if found is None:
        abort(404)
    return pdf.receipt_pdf_response(account, found)
