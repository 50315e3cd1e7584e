"""Named domain errors, and the one place that maps them (and HTTP errors) to responses."""

from __future__ import annotations

import logging

from flask import Flask, Response, g, jsonify, render_template, request
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException

from portal.extensions import db, login_manager

log = logging.getLogger(__name__)


class DomainError(Exception):
    """A rule of the portal said no. `message` is written for the customer."""

    status = 400
    title = "Something is not right"

    def __init__(self, message: str = "", **details: object) -> None:
        super().__init__(message or self.title)
        self.message = message or self.title
        self.details = details


class NotFound(DomainError):
    status = 404
    title = "Not found"


class NotAllowed(DomainError):
    status = 403
    title = "Not allowed"


class ValidationFailed(DomainError):
    status = 422
    title = "Please check what you entered"

    def __init__(self, message: str = "", errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or {}


class Conflict(DomainError):
    status = 409
    title = "That changed in the meantime"


class PaymentFailed(DomainError):
    status = 402
    title = "The payment did not go through"

    def __init__(self, message: str = "", *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class ServiceUnavailable(DomainError):
    status = 503
    title = "We are briefly unavailable"


_TITLES = {
    400: ("Bad request", "The request could not be understood."),
    403: ("Not allowed", "You do not have access to this page."),
    404: (
        "Page not found",
        "We could not find that page. It may have moved, or the link is wrong.",
    ),
    405: ("Not allowed", "That action is not available here."),
    413: ("Too large", "That upload is too large."),
    422: ("Please check what you entered", "Some of the details need another look."),
    429: ("Slow down a little", "Too many attempts. Please wait a minute and try again."),
    500: (
        "Something went wrong",
        "We hit an unexpected error. Nothing was changed; please try again.",
    ),
    503: (
        "Briefly unavailable",
        "We cannot reach our billing records right now. Please try again in a minute.",
    ),
}


def render_error(status: int, message: str | None = None) -> Response:
    """One error response: JSON for API callers, a partial for HTMX, a full page otherwise."""
    title, default_message = _TITLES.get(status, _TITLES[500])
    text = message or default_message
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


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(DomainError)
    def domain_error(error: DomainError) -> Response:
        db.session.rollback()
        return render_error(error.status, error.message)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        if error.code is None or error.code < 400:
            return error  # type: ignore[return-value]
        response = render_error(error.code, None if error.code >= 500 else _description(error))
        if error.code == 405 and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    @app.errorhandler(OperationalError)
    @app.errorhandler(DBAPIError)
    def database_down(error: Exception) -> Response:
        log.warning("database unavailable: %s", type(error).__name__)
        _safe_rollback()
        # NOTE: the error page must not ask the database who is signed in a second time.
        g._login_user = login_manager.anonymous_user()
        response = render_error(503)
        response.headers["Retry-After"] = "30"
        return response

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        _safe_rollback()
        return render_error(500)


def _description(error: HTTPException) -> str | None:
    # Werkzeug's stock descriptions are written for developers; ours are for customers.
    return None if error.description == type(error).description else error.description


def _safe_rollback() -> None:
    try:
        db.session.rollback()
    except Exception:
        log.warning("rollback failed after an error", exc_info=True)
