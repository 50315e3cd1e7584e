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
limiter = Limiter(key_func=get_remote_address, default_limits=[])
htmx = HTMX()
babel = Babel()
