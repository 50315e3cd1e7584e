"""The self-service billing portal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask

from portal.web import PortalFlask


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the portal: configuration, extensions, blueprints, errors, templates, commands."""
    root = Path(__file__).resolve().parent.parent
    app = PortalFlask(
        __name__,
        instance_path=str(root / "instance"),
        template_folder=str(root / "templates"),
        static_folder=str(root / "static"),
    )

    from portal import config as settings

    app.config.from_mapping(settings.from_environment(Path(app.instance_path)))
    app.config.from_mapping(config or {})
    settings.check_settings(app.config)

    from portal import models  # noqa: F401  (the whole schema, for Alembic and relationships)
    from portal.extensions import csrf, db, htmx, limiter, login_manager, migrate

    db.init_app(app)
    migrate.init_app(app, db, directory=str(root / "migrations"))
    login_manager.init_app(app)
    csrf.init_app(app)
    limiter.init_app(app)
    htmx.init_app(app)

    from portal.accounts.routes import bp as accounts_bp
    from portal.auth.routes import bp as auth_bp
    from portal.billing.routes import bp as billing_bp
    from portal.disputes.routes import bp as disputes_bp
    from portal.health import bp as health_bp
    from portal.notifications.routes import bp as links_bp
    from portal.payments.checkout import bp as checkout_bp
    from portal.payments.routes import bp as payments_bp
    from portal.staff.routes import bp as staff_bp
    from portal.subscriptions.routes import bp as subscriptions_bp

    app.register_blueprint(health_bp)
    app.register_blueprint(auth_bp)
    app.register_blueprint(accounts_bp)
    app.register_blueprint(staff_bp)
    app.register_blueprint(billing_bp)
    app.register_blueprint(payments_bp)
    app.register_blueprint(checkout_bp)
    app.register_blueprint(links_bp)
    app.register_blueprint(subscriptions_bp)
    app.register_blueprint(disputes_bp)

    from portal import auth, formatting, http_errors, i18n, web

    http_errors.register_error_handlers(app)
    web.init_security_headers(app)
    web.init_request_guards(app)
    auth.init_app(app)
    from portal.staff import view_as

    view_as.init_app(app)
    i18n.init_app(app)
    formatting.init_app(app)
    web.init_template_globals(app)

    from portal import cli

    cli.init_app(app)

    from portal import worker

    worker.init_app(app)

    from werkzeug.middleware.proxy_fix import ProxyFix

    if proxies := app.config["TRUSTED_PROXIES"]:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies)  # type: ignore[method-assign]
    return app
