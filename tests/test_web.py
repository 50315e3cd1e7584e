"""The web layer every page inherits: error pages, security headers, database outages."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from portal import create_app
from tests.conftest import make_config

SECURITY_HEADERS = (
    "Content-Security-Policy",
    "X-Content-Type-Options",
    "Referrer-Policy",
    "Cache-Control",
)


def test_unknown_page_is_a_friendly_404_with_security_headers(client: FlaskClient) -> None:
    response = client.get("/no-such-page")
    assert response.status_code == 404
    body = response.get_data(as_text=True)
    assert "Page not found" in body
    assert "Traceback" not in body
    for header in SECURITY_HEADERS:
        assert header in response.headers
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_csp_nonce_is_fresh_per_response(client: FlaskClient) -> None:
    first = client.get("/login").headers["Content-Security-Policy"]
    second = client.get("/login").headers["Content-Security-Policy"]
    assert "'nonce-" in first
    assert first != second


def test_signed_in_pages_are_never_cached(client: FlaskClient) -> None:
    assert client.get("/login").headers["Cache-Control"] == "no-store"


def test_static_files_may_be_cached(client: FlaskClient) -> None:
    response = client.get("/static/js/htmx.min.js")
    assert response.status_code == 200
    assert response.headers.get("Cache-Control") != "no-store"


def test_dashboard_sends_anonymous_visitors_to_sign_in(client: FlaskClient) -> None:
    response = client.get("/")
    assert response.status_code == 303
    assert response.headers["Location"].startswith("/login")


def test_htmx_request_after_expiry_gets_a_redirect_header_and_no_data(client: FlaskClient) -> None:
    response = client.get("/", headers={"HX-Request": "true"})
    assert response.status_code == 401
    assert response.headers["HX-Redirect"].startswith("/login")
    assert response.get_data() == b""


def test_an_unexpected_error_is_a_friendly_500(tmp_path: Path) -> None:
    app = create_app(make_config(f"sqlite:///{tmp_path / 'portal.sqlite3'}", TESTING=False))

    def explode() -> str:
        raise RuntimeError("boom")

    app.add_url_rule("/__explode", "explode", explode)
    response = app.test_client().get("/__explode")
    assert response.status_code == 500
    body = response.get_data(as_text=True)
    assert "Something went wrong" in body
    assert "boom" not in body
    assert "Content-Security-Policy" in response.headers


@pytest.fixture()
def app_without_database(tmp_path: Path) -> Flask:
    missing = tmp_path / "no-such-dir" / "portal.sqlite3"
    return create_app(make_config(f"sqlite:///{missing}", TESTING=False))


def test_healthz_is_503_when_the_database_is_gone(app_without_database: Flask) -> None:
    response = app_without_database.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable"}


def test_signed_in_page_is_a_friendly_503_when_the_database_is_gone(
    app_without_database: Flask,
) -> None:
    client = app_without_database.test_client()
    with client.session_transaction() as cookie:
        cookie["_user_id"] = "someone:0"
    response = client.get("/")
    assert response.status_code == 503
    assert "Briefly unavailable" in response.get_data(as_text=True)
    assert response.headers["Retry-After"] == "30"
    assert "Content-Security-Policy" in response.headers


def test_links_built_once_per_app_respect_the_mount_point(client: FlaskClient) -> None:
    mounted = client.get("/login", base_url="http://portal.test/billing/").get_data(as_text=True)
    assert 'href="/billing/static/css/portal.css' in mounted
    plain = client.get("/login").get_data(as_text=True)
    assert 'href="/static/css/portal.css' in plain
