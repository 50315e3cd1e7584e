"""Abuse limits on sign-in: per IP (a friendly 429) and per address (silent toward its owner).

Both use Flask-Limiter's storage, so with `RATELIMIT_STORAGE_URI=redis://…` every worker of every
instance counts against the same numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import current_app, request
from flask_limiter import RequestLimit
from flask_limiter.util import get_remote_address
from limits import parse_many

from portal.audit.services import record
from portal.auth.services import hash_value
from portal.extensions import db, limiter
from portal.http_errors import note_refusal

log = logging.getLogger(__name__)


def limits_off() -> bool:
    """Per-app switch (the Limiter object is shared by every app in a process)."""
    return not current_app.config.get("RATELIMIT_ENABLED", True)


def config_limit(name: str) -> Callable[[], str]:
    return lambda: current_app.config[name]


def record_breach(limit: RequestLimit) -> None:
    """Audit a per-IP limit hit; the 429 page itself comes from portal.auth's handler."""
    log.warning("rate limit hit on %s from %s", request.endpoint, get_remote_address())
    # NOTE: the 429 that follows rolls the request back; the error boundary writes this event
    # in a unit of work of its own.
    note_refusal(**_event("auth.rate_limited", "ip", get_remote_address(), str(limit.limit)))


def address_allowed(scope: str, address: str) -> bool:
    """Count one attempt for this address; False (and an audit event) once over the limit."""
    if limits_off() or not (limiter.enabled and limiter.initialized):
        return True
    key = hash_value(address.strip().lower())
    for item in parse_many(current_app.config["LOGIN_ADDRESS_RATE_LIMIT"]):
        if not limiter.limiter.hit(item, "portal-address", scope, key):
            log.warning("per-address rate limit hit on %s", scope)
            record(db.session, **_event("auth.rate_limited", "address", key[:16], str(item)))
            return False
    return True


def _event(action: str, target_type: str, target_id: str, limit: str) -> dict[str, object]:
    return {
        "action": action,
        "target_type": target_type,
        "target_id": target_id,
        "after": {"endpoint": request.endpoint, "limit": limit},
        "ip": get_remote_address(),
    }
