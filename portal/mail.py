"""The only module that sends email. Queueing writes an outbox row in the caller's transaction."""

from __future__ import annotations

from typing import Any

from flask import render_template
from sqlalchemy.orm import Session

from portal.notifications.links import absolute_url
from portal.notifications.models import OutboxEmail


def render_email(template: str, context: dict[str, Any]) -> tuple[str, str]:
    """The plain-text and HTML bodies of `email/<template>`."""
    context = {"absolute_url": absolute_url, **context}
    return (
        render_template(f"email/{template}.txt", **context),
        render_template(f"email/{template}.html", **context),
    )


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
    text_body, html_body = render_email(template, context)
    email = OutboxEmail(
        to_address=to,
        subject=subject,
        template=template,
        text_body=text_body,
        html_body=html_body,
        account_id=account_id,
        dedupe_key=dedupe_key,
    )
    session.add(email)
    session.flush()
    return email
