"""The one place that turns errors into responses: domain errors, HTTP errors, CSRF failures,
rate limits and database errors, each with words a customer understands.

A database error means what it says: a conflict (IntegrityError) is 409, a value the database
cannot store (DataError, a NUL byte) is 400, and only a database that cannot be reached (or is
busy past the wait) is 503 and logged as an outage.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, g, jsonify, render_template, request
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    StatementError,
)
from werkzeug.exceptions import HTTPException

from portal import db as unit_of_work
from portal.errors import DomainError
from portal.extensions import db, login_manager

log = logging.getLogger(__name__)

_TITLES = {
    400: (_l("Bad request"), _l("The request could not be understood.")),
    403: (_l("Not allowed"), _l("You do not have access to this page.")),
    404: (
        _l("Page not found"),
        _l("We could not find that page. It may have moved, or the link is wrong."),
    ),
    405: (_l("Not allowed"), _l("That action is not available here.")),
    409: (
        _l("That changed in the meantime"),
        _l(
            "Someone or something changed this at the same moment. Please reload the page and "
            "try again."
        ),
    ),
    413: (_l("Too large"), _l("That upload is too large.")),
    422: (_l("Please check what you entered"), _l("Some of the details need another look.")),
    429: (_l("Slow down a little"), _l("Too many attempts. Please wait a minute and try again.")),
    500: (
        _l("Something went wrong"),
        _l("We hit an unexpected error. Nothing was changed; please try again."),
    ),
    503: (
        _l("Briefly unavailable"),
        _l("We cannot reach our billing records right now. Please try again in a minute."),
    ),
}

BAD_VALUE_MESSAGE = _l(
    "The request contained characters or values we cannot store. Nothing was changed; "
    "please check what you entered."
)


def render_error(status: int, message: str | None = None) -> Response:
    """One error response: JSON for API callers, a partial for HTMX, a full page otherwise."""
    lazy_title, default_message = _TITLES.get(status, _TITLES[500])
    title, text = str(lazy_title), str(message or default_message)
    if request.path.startswith("/webhooks/") or request.accept_mimetypes.best == "application/json":
        response = jsonify(error=title, message=text)
    else:
        template = "errors/_error.html" if _is_htmx_partial() else "errors/error.html"
        response = Response(render_template(template, status=status, title=title, message=text))
    response.status_code = status
    return response


def _is_htmx_partial() -> bool:
    from portal.web import wants_partial

    return wants_partial()


# NOTE: PostgreSQL reports a lost race as an OperationalError too: SQLSTATE class 40
# (serialization failure, deadlock) and 55P03 (lock not available). That is a conflict the
# person can retry (409), not an outage.
_CONFLICT_SQLSTATE_CLASSES = ("40",)
_CONFLICT_SQLSTATES = frozenset({"55P03"})


def _sqlstate(error: BaseException) -> str:
    return str(getattr(getattr(error, "orig", None), "sqlstate", None) or "")


def is_conflict(error: BaseException) -> bool:
    """True when the database refused this transaction because another one won a race."""
    state = _sqlstate(error)
    return state.startswith(_CONFLICT_SQLSTATE_CLASSES) or state in _CONFLICT_SQLSTATES


def is_outage(error: BaseException) -> bool:
    """True when a database error means the database cannot be reached or stayed busy."""
    if is_conflict(error):
        return False
    return isinstance(error, OperationalError | InterfaceError) or bool(
        isinstance(error, DBAPIError) and error.connection_invalidated
    )


def error_text(error: DomainError) -> str:
    """The error's sentence in the page's language (domain code raises it in English, N_-marked)."""
    if not isinstance(error.msgid, str):
        return str(error.message)  # NOTE: a lazy_gettext title is translated already
    return _(error.msgid, **error.params)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(DomainError)
    def domain_error(error: DomainError) -> Response:
        _safe_rollback()
        return render_error(error.status, error_text(error))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        if error.code is None or error.code < 400:
            return error  # type: ignore[return-value]
        _safe_rollback()
        response = render_error(error.code, None if error.code >= 500 else _description(error))
        if error.code == 405 and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    @app.errorhandler(CSRFError)
    def csrf_failed(error: CSRFError) -> Response:
        _safe_rollback()
        return render_error(
            400,
            _(
                "This form had expired or was sent from another site. "
                "Please go back, reload the page and try again."
            ),
        )

    @app.errorhandler(429)
    def too_many(error: Exception) -> Response:
        _safe_rollback()
        _record_refusals()
        response = render_error(
            429, _("Too many attempts in a short time. Please wait a few minutes and try again.")
        )
        response.headers["Retry-After"] = "60"
        return response

    @app.errorhandler(IntegrityError)
    def conflict(error: IntegrityError) -> Response:
        log.info("integrity conflict on %s %s: %s", request.method, request.path, error.orig)
        _safe_rollback()
        return render_error(409)

    @app.errorhandler(DataError)
    def bad_value(error: DataError) -> Response:
        log.info("value refused by the database on %s %s", request.method, request.path)
        _safe_rollback()
        return render_error(400, BAD_VALUE_MESSAGE)

    @app.errorhandler(StatementError)
    @app.errorhandler(DBAPIError)
    def database_error(error: Exception) -> Response:
        _safe_rollback()
        if is_conflict(error):
            log.info("lost a race on %s %s: %s", request.method, request.path, _sqlstate(error))
            return render_error(409)
        if isinstance(error, DBAPIError) and is_outage(error):
            log.warning("database unavailable: %s", type(error).__name__)
            # NOTE: the error page must not ask the database who is signed in a second time.
            g._login_user = login_manager.anonymous_user()
            response = render_error(503)
            response.headers["Retry-After"] = "30"
            return response
        if isinstance(getattr(error, "orig", None), ValueError | UnicodeError):
            # A value the driver refuses before it reaches the database (NUL bytes on psycopg).
            log.info("value refused by the driver on %s %s", request.method, request.path)
            return render_error(400, BAD_VALUE_MESSAGE)
        log.exception("database error on %s %s", request.method, request.path)
        return render_error(500)

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        _safe_rollback()
        return render_error(500)


def _record_refusals() -> None:
    """Write the audit events of refusals this request collected (a rate limit hit) in a unit
    of work of their own: the refused request's own work was rolled back."""
    refusals = g.pop("portal_refusals", None)
    if not refusals:
        return
    from portal.audit.services import record

    try:
        for refusal in refusals:
            record(db.session, **refusal)
        # NOTE: the error boundary owns this small unit of work, as the request boundary owns
        # the request's.
        unit_of_work.commit(db.session)
    except Exception:
        log.warning("could not record a refusal's audit event", exc_info=True)
        _safe_rollback()


def note_refusal(**event: object) -> None:
    """Keep an audit event for a refused request; the error boundary writes it after rollback."""
    g.setdefault("portal_refusals", []).append(event)


def _description(error: HTTPException) -> str | None:
    # Werkzeug's stock descriptions are written for developers; ours are for customers.
    return None if error.description == type(error).description else error.description


def _safe_rollback() -> None:
    try:
        db.session.rollback()
    except Exception:
        log.warning("rollback failed after an error", exc_info=True)
