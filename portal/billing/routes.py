"""Customer billing pages: the dashboard (invoices and statements arrive with their issue)."""

from __future__ import annotations

from flask import Blueprint, Response
from flask_login import login_required

from portal import clock
from portal.auth.sessions import current_account
from portal.billing.queries import dashboard_summary
from portal.extensions import db
from portal.web import render_page

bp = Blueprint("billing", __name__)


@bp.get("/")
@login_required
def dashboard() -> Response:
    account = current_account()
    today = clock.today(account.timezone)
    summary = dashboard_summary(db.session, account.id, account.currency, today)
    return render_page("billing/dashboard.html", account=account, summary=summary, today=today)
