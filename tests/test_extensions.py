"""PortalLimiter: its before-request pass is skipped only when it can find nothing."""

from __future__ import annotations

from flask import Flask
from flask_limiter.util import get_remote_address

from portal.extensions import PortalLimiter


def _app(limiter: PortalLimiter) -> Flask:
    app = Flask(__name__)
    app.config.update(RATELIMIT_STORAGE_URI="memory://")
    limiter.init_app(app)

    @app.get("/plain")
    def plain() -> str:
        return "ok"

    @app.get("/decorated")
    @limiter.limit("1 per minute")
    def decorated() -> str:
        return "ok"

    return app


def test_default_limits_still_apply_through_the_before_request_pass() -> None:
    limiter = PortalLimiter(key_func=get_remote_address, default_limits=["2 per minute"])
    client = _app(limiter).test_client()
    assert [client.get("/plain").status_code for _ in range(3)] == [200, 200, 429]


def test_without_default_limits_a_route_limit_still_applies() -> None:
    limiter = PortalLimiter(key_func=get_remote_address, default_limits=[])
    assert not limiter._middleware_has_limits()
    client = _app(limiter).test_client()
    assert [client.get("/plain").status_code for _ in range(3)] == [200, 200, 200]
    assert [client.get("/decorated").status_code for _ in range(2)] == [200, 429]
