"""The only module that sends email. Queueing writes an outbox row in the caller's transaction."""

from __future__ import annotations

from typing import Any

from flask import render_template
from sqlalchemy.orm import Session

from portal.notifications.models import OutboxEmail


def queue_email(
    session: Session,
    *,
    to: str,
    subject: str,
    template: str,
    context: dict[str, Any],
    account_id: int | None = None,
    dedupe_key: str | None = None,
) -> OutboxEmail:
    """Render `email/<template>.txt` and `.html` and put them in the outbox; sent after commit."""
    email = OutboxEmail(
        to_address=to,
        subject=subject,
        template=template,
        text_body=render_template(f"email/{template}.txt", **context),
        html_body=render_template(f"email/{template}.html", **context),
        account_id=account_id,
        dedupe_key=dedupe_key,
    )
    session.add(email)
    session.flush()
    return email
