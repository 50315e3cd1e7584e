"""The owner's session row for the authorization harness (made on first use)."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import inspect

from portal.auth.models import UserSession
from portal.auth.services import hash_value
from portal.extensions import db


def owner_session(world: Any) -> str:
    """A signed-in browser of the owner (another device than the one the harness uses)."""
    if "user_session" not in world.extra:
        session = db.session
        row = UserSession(
            # NOTE: the identity survives the requests' commits (which expire and detach objects).
            user_id=int(inspect(world.owner).identity[0]),
            sid_hash=hash_value(secrets.token_urlsafe(32)),
            device="Safari on iPhone",
        )
        session.add(row)
        session.commit()
        world.extra["user_session"] = row.public_id
    return world.extra["user_session"]
