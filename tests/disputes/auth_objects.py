"""The owner's dispute objects for the authorization harness (made on first use)."""

from __future__ import annotations

from typing import Any

from flask import current_app
from sqlalchemy import inspect

from portal.disputes.evidence import EvidenceStore
from portal.disputes.models import Attachment, Dispute, DisputeEvent
from portal.extensions import db
from tests.factories import png_bytes


def _id(obj: Any) -> int:
    # NOTE: the identity survives the requests' commits (which expire and detach objects).
    return int(inspect(obj).identity[0])


def owner_dispute(world: Any) -> str:
    if "dispute" not in world.extra:
        session = db.session
        dispute = Dispute(
            account_id=_id(world.account),
            invoice_id=_id(world.invoice),
            currency="USD",
            amount_minor=1000,
            reason="wrong_amount",
            description="The amount is wrong.",
            status="open",
        )
        session.add(dispute)
        session.flush()
        session.add(DisputeEvent(dispute_id=dispute.id, status="open", actor_kind="customer"))
        data = png_bytes()
        key = EvidenceStore(current_app.config["ATTACHMENTS_DIR"]).save(data)
        attachment = Attachment(
            dispute_id=dispute.id,
            filename="photo.png",
            content_type="image/png",
            size_bytes=len(data),
            sha256="0" * 64,
            storage_key=key,
        )
        session.add(attachment)
        session.commit()
        world.extra["dispute"] = dispute.public_id
        world.extra["attachment"] = attachment.public_id
    return world.extra["dispute"]


def owner_attachment(world: Any) -> str:
    owner_dispute(world)
    return f"/disputes/{world.extra['dispute']}/files/{world.extra['attachment']}"
