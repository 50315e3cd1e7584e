"""Sign-in, sessions and access checks."""

from __future__ import annotations

from flask import Flask, Response, redirect, request, url_for

from portal.extensions import htmx, login_manager


def init_app(app: Flask) -> None:
    from portal.auth import sessions  # noqa: F401  (registers the user loader)

    login_manager.login_view = "auth.login"
    login_manager.login_message = "Please sign in to continue."
    login_manager.login_message_category = "info"
    login_manager.session_protection = None  # the session epoch does this job on the server

    @login_manager.unauthorized_handler
    def unauthorized() -> Response:
        target = url_for("auth.login", next=request.full_path if request.method == "GET" else None)
        if htmx:
            # NOTE: an expired session never gets a partial of data, only a way to sign in.
            response = Response(status=401)
            response.headers["HX-Redirect"] = target
            return response
        return redirect(target, code=303)
