"""Abuse limits on sign-in: per IP (a friendly 429) and per address (silent), in one process and
shared through Redis by two separate server processes."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from portal import create_app
from portal.accounts.models import User
from portal.audit.models import AuditEvent
from portal.extensions import db
from portal.notifications.models import OutboxEmail
from tests.auth.conftest import Browser, outbox_link, path_of
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


def _from(app: Flask, ip: str) -> FlaskClient:
    """A browser of its own, reaching the portal from `ip`."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = ip
    return client


def _mail_to(session: Session, address: str) -> int:
    return _count(session, OutboxEmail, OutboxEmail.to_address == address)


def test_a_stranger_cannot_cancel_the_link_the_owner_already_has(
    make_app: Callable[..., Flask], session: Session
) -> None:
    ada = make_user(session, "ada-kept@example.com", make_account(session))
    app = make_app(RATELIMIT_ENABLED=True)
    phone = _from(app, "198.51.100.7")
    assert phone.post("/login", data={"email": ada.email}).status_code == 200
    link = path_of(outbox_link(session, ada.email))
    attacker = _from(app, "203.0.113.9")
    for _ in range(8):  # the attacker knows only the address
        assert attacker.post("/login", data={"email": ada.email}).status_code == 200
    assert phone.post(link).status_code == 303  # the link Ada already had still signs her in


def test_a_stranger_cannot_stop_the_owner_getting_a_new_link(
    make_app: Callable[..., Flask], session: Session
) -> None:
    ada = make_user(session, "ada-new@example.com", make_account(session))
    app = make_app(RATELIMIT_ENABLED=True, LOGIN_ADDRESS_RATE_LIMIT="3 per 15 minutes")
    attacker = _from(app, "203.0.113.9")
    for _ in range(8):
        assert attacker.post("/login", data={"email": ada.email}).status_code == 200
    assert _mail_to(session, ada.email) == 3  # the attacker spent only their own share
    laptop = _from(app, "198.51.100.7")  # Ada, a browser she never used here before
    assert laptop.post("/login", data={"email": ada.email}).status_code == 200
    assert _mail_to(session, ada.email) == 4
    assert laptop.post(path_of(outbox_link(session, ada.email))).status_code == 303


def test_a_crowd_of_addresses_cannot_flood_the_mailbox_or_lock_out_a_known_browser(
    make_app: Callable[..., Flask], session: Session
) -> None:
    ada = make_user(session, "ada-flood@example.com", make_account(session))
    app = make_app(RATELIMIT_ENABLED=True, LOGIN_ADDRESS_CAP="6 per hour")
    phone = _from(app, "198.51.100.7")
    assert phone.post("/login", data={"email": ada.email}).status_code == 200
    assert phone.post(path_of(outbox_link(session, ada.email))).status_code == 303
    assert phone.get_cookie("portal_device") is not None  # this browser is Ada's now
    assert phone.post("/logout").status_code == 303

    for n in range(30):  # a botnet: thirty addresses, one request each
        crowd = _from(app, f"203.0.113.{n + 1}")
        assert crowd.post("/login", data={"email": ada.email}).status_code == 200
    # Every browser not recognised as Ada's shares the cap of 6 (her own first request was one).
    assert _mail_to(session, ada.email) == 6
    # A new browser of Ada's is held back with the crowd until the hour is over ...
    assert _from(app, "192.0.2.50").post("/login", data={"email": ada.email}).status_code == 200
    assert _mail_to(session, ada.email) == 6
    # ... but the phone she signed in with before is recognised and still gets its link.
    assert phone.post("/login", data={"email": ada.email}).status_code == 200
    assert _mail_to(session, ada.email) == 7
    assert phone.post(path_of(outbox_link(session, ada.email))).status_code == 303


def test_a_forged_or_foreign_device_cookie_is_not_recognised(
    make_app: Callable[..., Flask], session: Session
) -> None:
    ada = make_user(session, "ada-forged@example.com", make_account(session))
    mallory = make_user(session, "mallory@example.com", make_account(session))
    app = make_app(RATELIMIT_ENABLED=True, LOGIN_ADDRESS_CAP="2 per hour")
    own = _from(app, "203.0.113.200")
    assert own.post("/login", data={"email": mallory.email}).status_code == 200
    assert own.post(path_of(outbox_link(session, mallory.email))).status_code == 303
    mallorys_cookie = own.get_cookie("portal_device").value
    for n, cookie in enumerate([mallorys_cookie, "forged.value.here", mallorys_cookie[:-3]]):
        for m in range(2):
            crowd = _from(app, f"203.0.113.{10 * n + m + 1}")
            crowd.set_cookie("portal_device", cookie)
            assert crowd.post("/login", data={"email": ada.email}).status_code == 200
    assert _mail_to(session, ada.email) == 2  # the cap held: none of them counted as Ada's


def test_new_links_from_an_old_links_page_count_against_the_same_limits(
    make_app: Callable[..., Flask], session: Session
) -> None:
    ada = make_user(session, "ada-renew@example.com", make_account(session))
    app = make_app(RATELIMIT_ENABLED=True, LOGIN_ADDRESS_RATE_LIMIT="3 per 15 minutes")
    phone = _from(app, "198.51.100.7")
    assert phone.post("/login", data={"email": ada.email}).status_code == 200
    old = path_of(outbox_link(session, ada.email))
    assert phone.post(old).status_code == 303
    holder = _from(app, "203.0.113.9")  # whoever holds the old link, e.g. a forwarded email
    assert [holder.post(f"{old}/new").status_code for _ in range(5)] == [200] * 5
    assert _mail_to(session, ada.email) == 1 + 3


# --- TRUSTED_PROXIES: whose address counts --------------------------------------------------


def test_without_trusted_proxies_x_forwarded_for_does_not_change_the_bucket(
    make_app: Callable[..., Flask], session: Session
) -> None:
    app = make_app(RATELIMIT_ENABLED=True, LOGIN_IP_RATE_LIMIT="3 per minute", TRUSTED_PROXIES=0)
    client = app.test_client()
    statuses = [
        client.post(
            "/login",
            data={"email": f"xff{n}@example.com"},
            headers={"X-Forwarded-For": f"198.51.100.{n}"},
        ).status_code
        for n in range(4)
    ]
    assert statuses == [200, 200, 200, 429]  # a client cannot pick its own bucket


def test_behind_one_trusted_proxy_each_forwarded_client_has_its_own_bucket(
    make_app: Callable[..., Flask], session: Session
) -> None:
    app = make_app(RATELIMIT_ENABLED=True, LOGIN_IP_RATE_LIMIT="3 per minute", TRUSTED_PROXIES=1)
    proxy = app.test_client()  # every request arrives from the proxy's own address

    def ask(client_ip: str, n: int) -> int:
        return proxy.post(
            "/login",
            data={"email": f"proxied{n}@example.com"},
            headers={"X-Forwarded-For": f"10.9.9.9, {client_ip}"},
        ).status_code

    assert [ask("198.51.100.1", n) for n in range(4)] == [200, 200, 200, 429]
    assert [ask("198.51.100.2", n) for n in range(3)] == [200, 200, 200]
    event = session.scalars(
        select(AuditEvent).where(AuditEvent.action == "auth.rate_limited")
    ).one()
    assert event.ip == "198.51.100.1"  # the client the proxy named, not the proxy (or a forgery)


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
    except OSError:  # refused, reset, or timed out on a busy machine: not up yet
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
