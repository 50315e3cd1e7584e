"""Sign-in, sessions and access checks."""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit

from flask import Flask, Response, flash, g, redirect, request, url_for

from portal.extensions import htmx, login_manager

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
    login_manager.login_message = "Please sign in to continue."
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

    @login_manager.unauthorized_handler
    def unauthorized() -> Response:
        target = url_for("auth.login", next=_next_target())
        if g.get("session_timed_out"):
            flash("You were signed out after a while without activity. Please sign in again.")
        else:
            flash(login_manager.login_message, login_manager.login_message_category)
        if htmx:
            # NOTE: an expired session never gets a partial of data, only a way to sign in.
            response = Response(status=401)
            response.headers["HX-Redirect"] = target
            return response
        return redirect(target, code=303)
