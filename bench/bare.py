"""The reference pages, served by the same gunicorn command as the portal
(`gunicorn -w 2 bench.bare:app`, sync workers). Not part of the portal (no blueprint is
registered anywhere).

- `/rows`: **the reference**: exactly 50 invoices read as ORM objects (the portal's own
  `Invoice` mapping, every column, a session per request ended as the portal ends a read, the
  portal's engine options and SQLite pragmas) from the same database the portal is measured
  on, rendered by a Jinja template compiled once at start. It answers 500 if the database
  holds fewer than 50 invoices, and says how many rows it rendered in `X-Bench-Rows`, which
  the harness checks: a reference that silently renders fewer rows is what made two
  measurements differ by 2x (see BENCHMARKS.md).
- `/hello`: a bare Flask page (the ceiling of the web tier on this machine; context only).
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

from flask import Flask, Response
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from portal import db as portal_db
from portal import models  # noqa: F401  (every mapped class, so relationships resolve)
from portal.billing.models import Invoice

ROWS = 50
# NOTE: the portal's own engine options; the SQLite pragmas and the idle-connection ping come
# from listeners in portal/db.py, which every engine (and pool) in the process gets.
ENGINE_OPTIONS = dict(portal_db.ENGINE_OPTIONS)


def database_url() -> str:
    url = os.environ.get("DATABASE_URL", "").strip()
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    if not url:
        raise SystemExit("bench.bare needs DATABASE_URL")
    return url


def create_bare_app(url: str | None = None) -> Flask:
    app = Flask(__name__, template_folder=str(Path(__file__).resolve().parent / "templates"))
    engine = create_engine(url or database_url(), **ENGINE_OPTIONS)
    app.extensions["bench_engine"] = engine
    template = app.jinja_env.get_template("bare_rows.html")
    query = select(Invoice).order_by(Invoice.id.desc()).limit(ROWS)

    @app.get("/hello")
    def hello() -> str:
        return "Hello, World!"

    @app.get("/rows")
    def rows() -> Response:
        with Session(engine) as session:
            invoices = session.scalars(query).all()
            if len(invoices) != ROWS:
                message = f"the reference needs {ROWS} invoices; the database has {len(invoices)}"
                return Response(message, status=500, mimetype="text/plain")
            response = Response(template.render(invoices=invoices), mimetype="text/html")
            # NOTE: the read ends as the portal's reads end (portal.db.end_request): COMMIT on
            # PostgreSQL, which keeps psycopg's prepared statements, so both sides get them.
            portal_db.end_request(session, read_only=True)
        response.headers["X-Bench-Rows"] = str(len(invoices))
        return response

    return app


app = create_bare_app() if os.environ.get("DATABASE_URL") else None
if app is not None:
    # NOTE: the same deployment as the portal's wsgi.py: the heap made at start is frozen, so
    # full garbage collections of either side walk only what requests made. Only when serving:
    # a test importing this module keeps its process as it was.
    gc.freeze()
