"""Abuse limits on sign-in: per IP (a friendly 429) and per address (silent toward its owner).

All of them use Flask-Limiter's storage, so with `RATELIMIT_STORAGE_URI=redis://…` every worker
of every instance counts against the same numbers.

Asking for a link is limited so that a stranger who knows only an address can neither keep its
owner from getting a link nor flood their mailbox through us:
- per address and client IP (`LOGIN_ADDRESS_RATE_LIMIT`): a stranger spends only their own
  share, never the owner's;
- per address over every browser we do not recognise (`LOGIN_ADDRESS_CAP`): bounds the mail a
  crowd of IPs can make us send to one address;
- a browser that signed in as this person before carries a signed device cookie and gets its own
  allowance (`LOGIN_DEVICE_RATE_LIMIT`), outside the cap, so a flood never locks the owner out.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any

from flask import Response, current_app, request
from flask_limiter import RequestLimit
from flask_limiter.util import get_remote_address
from itsdangerous import BadSignature, URLSafeTimedSerializer
from limits import parse_many

from portal.accounts.models import User
from portal.audit.services import record
from portal.auth.services import hash_value
from portal.extensions import db, limiter
from portal.http_errors import note_refusal

log = logging.getLogger(__name__)

DEVICE_COOKIE = "portal_device"
# NOTE: browsers cap cookie lifetimes at 400 days; the cookie grants no access, it only
# recognises the browser for the sign-in limits.
DEVICE_MAX_AGE = 400 * 24 * 3600


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


def _active() -> bool:
    return not limits_off() and bool(limiter.enabled and limiter.initialized)


def _within(setting: str, *identifiers: str) -> str | None:
    """Count one hit on every limit of the setting; the first limit exceeded, or None."""
    for item in parse_many(current_app.config[setting]):
        if not limiter.limiter.hit(item, *identifiers):
            return str(item)
    return None


def address_allowed(scope: str, address: str) -> bool:
    """Count one attempt for this address; False (and an audit event) once over the limit."""
    if not _active():
        return True
    key = _address_key(address)
    exceeded = _within("LOGIN_ADDRESS_RATE_LIMIT", "portal-address", scope, key)
    if exceeded:
        _refused(scope, key, exceeded)
        return False
    return True


def link_request_allowed(address: str, recognised_device: str | None) -> bool:
    """May we email a sign-in link to this address for this request? Silent either way.

    `recognised_device` is the id of this browser's device cookie when it was issued to the
    address's own user (see recognised_device), else None.
    """
    if not _active():
        return True
    key = _address_key(address)
    if recognised_device is not None:
        exceeded = _within(
            "LOGIN_DEVICE_RATE_LIMIT", "portal-address-device", key, hash_value(recognised_device)
        )
    else:
        # NOTE: the per-client share first: a stranger over their own share does not also
        # spend the address's cap, which would shut out the owner's other browsers sooner.
        exceeded = _within(
            "LOGIN_ADDRESS_RATE_LIMIT", "portal-address-ip", key, get_remote_address() or ""
        ) or _within("LOGIN_ADDRESS_CAP", "portal-address-cap", key)
    if exceeded:
        _refused("login", key, exceeded)
        return False
    return True


def _address_key(address: str) -> str:
    return hash_value(address.strip().lower())


def _refused(scope: str, key: str, limit: str) -> None:
    log.warning("per-address rate limit hit on %s", scope)
    record(db.session, **_event("auth.rate_limited", "address", key[:16], limit))


def _event(action: str, target_type: str, target_id: str, limit: str) -> dict[str, Any]:
    return {
        "action": action,
        "target_type": target_type,
        "target_id": target_id,
        "after": {"endpoint": request.endpoint, "limit": limit},
        "ip": get_remote_address(),
    }


# -- the recognised browser ----------------------------------------------------------------


def _device_serializer() -> URLSafeTimedSerializer:
    # NOTE: itsdangerous signs with the last key and verifies with all (SECRET_KEY rotation).
    keys = list(reversed(current_app.config["SECRET_KEYS"]))
    return URLSafeTimedSerializer(keys, salt="portal.device")


def recognised_device(user: User | None) -> str | None:
    """This browser's device id if its cookie was issued when `user` signed in here, else None."""
    value = request.cookies.get(DEVICE_COOKIE, "")
    try:
        payload = _device_serializer().loads(value, max_age=DEVICE_MAX_AGE) if value else None
    except BadSignature:
        payload = None
    if not isinstance(payload, dict) or user is None:
        return None
    device = payload.get("d")
    if payload.get("u") != user.public_id or not isinstance(device, str):
        return None
    return device


def remember_device(response: Response, user: User) -> None:
    """Give the browser that just signed in a long-lived, signed device cookie."""
    value = _device_serializer().dumps({"u": user.public_id, "d": secrets.token_urlsafe(16)})
    response.set_cookie(
        DEVICE_COOKIE,
        value,
        max_age=DEVICE_MAX_AGE,
        secure=current_app.config["SESSION_COOKIE_SECURE"],
        httponly=True,
        samesite="Lax",
    )
