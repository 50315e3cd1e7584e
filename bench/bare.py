"""The two reference pages, served by the same gunicorn configuration as the portal:
`gunicorn bench.bare:app`. Not part of the portal (no blueprint is registered anywhere).

- `/hello`: a bare Flask page (the ceiling of what the web tier can do here).
- `/rows`: a bare 50-row page: 50 invoices loaded as ORM objects through SQLAlchemy (a session
  per request, the portal's engine settings and SQLite pragmas) and rendered by a Jinja template.
"""

from __future__ import annotations

import os
from pathlib import Path

from flask import Flask, render_template
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from portal import models  # noqa: F401  (every mapped class, so relationships resolve)
from portal.billing.models import Invoice


def _database_url() -> str:
    url = os.environ.get("DATABASE_URL", "").strip()
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    if not url:
        raise SystemExit("bench.bare needs DATABASE_URL")
    return url


def create_bare_app() -> Flask:
    app = Flask(__name__, template_folder=str(Path(__file__).resolve().parent / "templates"))
    engine = create_engine(_database_url(), pool_pre_ping=True)

    @app.get("/hello")
    def hello() -> str:
        return "Hello, World!"

    @app.get("/rows")
    def rows() -> str:
        with Session(engine) as session:
            invoices = session.scalars(select(Invoice).order_by(Invoice.id.desc()).limit(50)).all()
            return render_template("bare_rows.html", invoices=invoices)

    return app


app = create_bare_app()
