"""Sign-in, sessions and access checks."""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit

from flask import Flask, Response, flash, g, redirect, request, session, url_for
from flask_babel import gettext as _

from portal.errors import N_
from portal.extensions import htmx, login_manager
from portal.web import is_safe_next

# NOTE: request logs (werkzeug, gunicorn) print the path, and a sign-in link's path is the token.
_TOKEN_IN_PATH = re.compile(r"(/login/)[^\s/?\"']+")


class RedactLoginTokens(logging.Filter):
    """Replace the token of any /login/<token> path in a log record with a placeholder."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "/login/" in message:
            record.msg = _TOKEN_IN_PATH.sub(r"\1[redacted]", message)
            record.args = ()
        return True


def safe_next(target: str | None) -> str | None:
    """`target` if it is a same-site path safe to redirect to after sign-in, else None.

    Stricter than portal.web.is_safe_next: no control characters either. A CR or LF in a
    Location header makes the response fail after the sign-in was committed (a 500 page for a
    person who is in fact signed in).
    """
    if not isinstance(target, str) or not is_safe_next(target):
        return None
    if any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in target) or len(target) > 2000:
        return None
    return target


def _next_target() -> str | None:
    """Where to go after signing in: this page, or for HTMX the page the swap came from."""
    if request.method != "GET":
        return None
    if htmx and htmx.current_url:
        parts = urlsplit(htmx.current_url)
        return parts.path + (f"?{parts.query}" if parts.query else "")
    return request.full_path.rstrip("?")


def init_app(app: Flask) -> None:
    from portal.auth import sessions

    login_manager.login_view = "auth.login"
    # NOTE: Flask-Login flashes this itself; localize_callback translates it at that moment.
    login_manager.login_message = N_("Please sign in to continue.")
    login_manager.localize_callback = _
    login_manager.login_message_category = "info"
    login_manager.session_protection = None  # the session epoch does this job on the server

    for name in ("werkzeug", "gunicorn.access", "gunicorn.error", "portal.http_errors"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactLoginTokens) for f in logger.filters):
            logger.addFilter(RedactLoginTokens())

    @app.before_request
    def enforce_session_timeouts() -> None:
        if request.endpoint == "static":
            return
        if sessions.session_expired(app):
            g.session_timed_out = True

    @app.before_request
    def staff_home_is_the_staff_area() -> Response | None:
        # NOTE: the customer dashboard is a 404 for staff (they have no account), and the logo,
        # the error pages and old bookmarks all lead to "/": send staff to their own home.
        if request.endpoint != "billing.dashboard" or not session.get("staff"):
            return None
        if g.get("view_as_account") is not None:
            return None  # viewing the portal as a customer (portal.staff.view_as)
        from portal.auth.sessions import signed_in_user

        user = signed_in_user()
        if user is None or not user.is_staff or "staff.home" not in app.view_functions:
            return None
        return redirect(url_for("staff.home"), code=303)

    @login_manager.unauthorized_handler
    def unauthorized() -> Response:
        target = url_for("auth.login", next=_next_target())
        if g.get("session_timed_out"):
            flash(_("You were signed out after a while without activity. Please sign in again."))
        else:
            flash(_("Please sign in to continue."), "info")
        if htmx:
            # NOTE: an expired session never gets a partial of data, only a way to sign in.
            response = Response(status=401)
            response.headers["HX-Redirect"] = target
            return response
        return redirect(target, code=303)
