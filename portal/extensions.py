"""Extension objects, created unbound here and initialised in create_app."""

from __future__ import annotations

from flask_babel import Babel
from flask_htmx import HTMX
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect

from portal.db import Base

db = SQLAlchemy(model_class=Base, disable_autonaming=True)
migrate = Migrate(compare_type=True, render_as_batch=True)
login_manager = LoginManager()
csrf = CSRFProtect()


class PortalLimiter(Limiter):
    """Flask-Limiter, without its before-request pass on requests it could find nothing for.

    NOTE: every limit of the portal is a route's decorator, which checks itself when the route
    runs (in_middleware=False). The before-request pass only looks for default, application and
    blueprint limits: with none configured it found nothing, on every request, for about 3% of a
    page's work. It runs as before as soon as any of them exists.
    """

    def _check_request_limit(
        self, callable_name: str | None = None, in_middleware: bool = True
    ) -> None:
        if in_middleware and not self._middleware_has_limits():
            return
        super()._check_request_limit(callable_name=callable_name, in_middleware=in_middleware)

    def _middleware_has_limits(self) -> bool:
        manager = self.limit_manager
        return bool(
            manager.application_limits
            or manager.default_limits
            or getattr(manager, "_blueprint_limits", True)
        )


limiter = PortalLimiter(key_func=get_remote_address, default_limits=[])
htmx = HTMX()
babel = Babel()
