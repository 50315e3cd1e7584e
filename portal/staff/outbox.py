"""Staff: the emails that could not be delivered (dead letters and failing ones), and a retry.

Registered on the staff blueprint, so its before-request guard (staff role and a passed second
factor) covers these pages too. Bodies are never shown: a sign-in email holds a live link.
"""

from __future__ import annotations

from flask import Response, flash, render_template, request, url_for
from flask_babel import gettext as _

from portal.auth.sessions import signed_in_user
from portal.db import parse_row_id
from portal.errors import NotFound
from portal.extensions import db
from portal.mail import deliver_after_commit
from portal.notifications import delivery
from portal.staff.routes import bp
from portal.web import see_other


@bp.get("/outbox")
def outbox() -> str:
    emails = delivery.undelivered(db.session)
    return render_template("staff/outbox.html", emails=emails)


@bp.post("/outbox/<email_id>/retry")
def outbox_retry(email_id: str) -> Response:
    row_id = parse_row_id(email_id)
    if row_id is None:
        raise NotFound(_("There is no undelivered email with that number."))
    user = signed_in_user()
    assert user is not None
    email = delivery.retry_dead_letter(
        db.session, row_id, actor_user_id=user.id, ip=request.remote_addr
    )
    deliver_after_commit(db.session, email.id)
    flash(_("Email %(id)s to %(to)s is queued again.", id=email.id, to=email.to_address), "success")
    return see_other(url_for("staff.outbox"))
