"""A dead letter for the authorization and audit harnesses (made on first use)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from portal.extensions import db
from portal.notifications.models import OutboxEmail


def make_dead_letter(session: Session, **fields: Any) -> OutboxEmail:
    row = OutboxEmail(
        to_address=fields.pop("to_address", "owner@example.com"),
        subject=fields.pop("subject", "Your invoice"),
        text_body="Plain",
        html_body="<p>Html</p>",
        template="invoice_issued",
        status="dead",
        attempts=fields.pop("attempts", 12),
        last_error="ConnectionRefusedError: smtp down",
        **fields,
    )
    session.add(row)
    session.commit()
    return row


def dead_letter(world: Any) -> int:
    """A dead letter to retry (staff may; customers get 404, as for a missing one)."""
    if "dead_letter" not in world.extra:
        world.extra["dead_letter"] = str(make_dead_letter(db.session).id)
    return int(world.extra["dead_letter"])
