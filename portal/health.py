"""The health check used by load balancers and `make demo`."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from portal.extensions import db

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    try:
        db.session.execute(text("SELECT 1"))
    except SQLAlchemyError:
        log.warning("health check: database unavailable")
        db.session.rollback()
        return jsonify(status="unavailable"), 503
    finally:
        db.session.rollback()
    return jsonify(status="ok"), 200
