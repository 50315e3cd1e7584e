"""Abuse limits on sign-in: per IP (a friendly 429) and per address (silent), in one process and
shared through Redis by two separate server processes."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from portal import create_app
from portal.accounts.models import User
from portal.audit.models import AuditEvent
from portal.extensions import db
from portal.notifications.models import OutboxEmail
from tests.auth.conftest import Browser
from tests.conftest import ROOT, fresh_database, make_config, migrate_to_head, missing_service
from tests.factories import make_account, make_user


def _count(session: Session, model: type, *where: object) -> int:
    return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def test_per_ip_limit_answers_a_friendly_429_and_is_audited(
    make_app: Callable[..., Flask], session: Session
) -> None:
    app = make_app(RATELIMIT_ENABLED=True, LOGIN_IP_RATE_LIMIT="3 per minute")
    client = app.test_client()
    for n in range(3):
        assert client.post("/login", data={"email": f"ip{n}@example.com"}).status_code == 200
    response = client.post("/login", data={"email": "ip4@example.com"})
    assert response.status_code == 429
    body = response.get_data(as_text=True)
    assert "Slow down a little" in body
    assert "per 1 minute" not in body  # no limiter jargon
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["Retry-After"]
    assert _count(session, AuditEvent, AuditEvent.action == "auth.rate_limited") == 1
    # Reading the page is never limited.
    assert client.get("/login").status_code == 200


def test_per_ip_limit_on_using_links(make_app: Callable[..., Flask], session: Session) -> None:
    app = make_app(RATELIMIT_ENABLED=True, LOGIN_CONSUME_IP_RATE_LIMIT="2 per minute")
    client = app.test_client()
    assert [client.post("/login/guess-1").status_code for _ in range(2)] == [400, 400]
    assert client.post("/login/guess-3").status_code == 429


def test_per_address_limit_is_invisible_to_the_address_owner(
    make_app: Callable[..., Flask], session: Session
) -> None:
    user = make_user(session, "flooded@example.com", make_account(session))
    app = make_app(RATELIMIT_ENABLED=True, LOGIN_ADDRESS_RATE_LIMIT="2 per hour")
    bodies = []
    for _ in range(4):  # from four different browsers
        response = app.test_client().post("/login", data={"email": user.email})
        assert response.status_code == 200
        bodies.append(re.sub(r'(value|content|nonce)="[^"]*"', "", response.get_data(as_text=True)))
    assert len(set(bodies)) == 1  # the owner (or an attacker) cannot tell the limit was hit
    assert _count(session, OutboxEmail, OutboxEmail.to_address == user.email) == 2
    hits = session.scalars(select(AuditEvent).where(AuditEvent.action == "auth.rate_limited")).all()
    assert [hit.target_type for hit in hits] == ["address", "address"]
    assert user.email not in str([hit.target_id for hit in hits])


def test_limits_are_off_unless_enabled(client: object, session: Session) -> None:
    for n in range(15):
        assert client.post("/login", data={"email": f"x{n}@example.com"}).status_code == 200  # type: ignore[attr-defined]


# --- two separate server processes sharing one Redis ----------------------------------------


def _redis_url() -> str:
    return os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        return Browser().get(url)[0] == 200
    except (urllib.error.URLError, ConnectionError):
        return False


@pytest.fixture()
def two_servers(tmp_path: Path) -> Iterator[tuple[list[str], str]]:
    """Two gunicorn processes (one worker each) over one database, sharing Redis for limits."""
    import redis

    try:
        redis.Redis.from_url(_redis_url()).flushdb()
    except redis.exceptions.RedisError as error:
        missing_service(f"Redis at {_redis_url()} is not reachable: {error}")

    url = fresh_database("sqlite", tmp_path, "limits")
    setup = create_app(make_config(url))
    migrate_to_head(setup)
    with setup.app_context():
        db.session.add(User(email="shared@example.com", name="Shared"))
        db.session.commit()
        db.session.remove()
        db.engine.dispose()

    env = {
        **os.environ,
        "DATABASE_URL": url,
        "SECRET_KEY": "two-process-secret",
        "RATELIMIT_STORAGE_URI": _redis_url(),
        "LOGIN_IP_RATE_LIMIT": "8 per minute",
        "LOGIN_ADDRESS_RATE_LIMIT": "3 per hour",
        "BASE_URL": "http://127.0.0.1",
    }
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    servers, processes = [], []
    for _ in range(2):
        port = _free_port()
        processes.append(
            subprocess.Popen(
                [gunicorn, "--workers", "1", "--bind", f"127.0.0.1:{port}", "wsgi:app"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        servers.append(f"http://127.0.0.1:{port}")
    try:
        for server in servers:
            deadline = time.monotonic() + 30
            while not _answers(f"{server}/healthz"):
                if time.monotonic() > deadline:
                    pytest.fail(f"{server} did not start")
                time.sleep(0.2)
        yield servers, url
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)


def test_limits_are_shared_by_two_worker_processes_through_redis(
    two_servers: tuple[list[str], str],
) -> None:
    servers, url = two_servers
    browser = Browser()
    statuses = []
    for n in range(9):
        server = servers[n % 2]
        page = browser.get(f"{server}/login")[1]
        token = re.search(r'name="csrf-token" content="([^"]+)"', page)
        assert token
        email = "shared@example.com" if n < 6 else f"other{n}@example.com"
        statuses.append(
            browser.post(f"{server}/login", {"email": email, "csrf_token": token.group(1)})[0]
        )
    # 8 requests per minute per IP across BOTH processes; alone each would allow 8.
    assert statuses == [200] * 8 + [429], statuses

    engine = create_engine(url)
    with Session(engine) as check:
        # 3 emails per hour per address across both processes, and the rest silently dropped.
        assert _count(check, OutboxEmail, OutboxEmail.to_address == "shared@example.com") == 3
        assert _count(check, AuditEvent, AuditEvent.action == "auth.rate_limited") == 4
    engine.dispose()
