"""One link, twenty simultaneous taps: exactly one sign-in, with real commits on each backend."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import func, select

from portal.accounts.models import User
from portal.audit.models import AuditEvent
from portal.auth.models import LoginToken
from portal.auth.services import TokenSigner, issue_login_token
from portal.extensions import db
from tests.conftest import app_with_own_database

pytestmark = pytest.mark.concurrency

THREADS = 20


@pytest.fixture()
def committed_app(backend: str, tmp_path: Path) -> Iterator[Flask]:
    """An app over its own database where every request really commits."""
    with app_with_own_database(backend, tmp_path, "consume") as application:
        yield application


def test_twenty_concurrent_taps_sign_in_exactly_once(committed_app: Flask) -> None:
    with committed_app.app_context():
        user = User(email="race@example.com", name="Race")
        db.session.add(user)
        db.session.flush()
        token = issue_login_token(
            db.session,
            TokenSigner(committed_app.config["SECRET_KEYS"]),
            user,
            lifetime=timedelta(minutes=10),
        )
        db.session.commit()
        db.session.remove()

    barrier = threading.Barrier(THREADS)
    statuses: list[int] = []
    lock = threading.Lock()

    def tap() -> None:
        client = committed_app.test_client()
        barrier.wait()
        response = client.post(f"/login/{token}")
        with lock:
            statuses.append(response.status_code)

    threads = [threading.Thread(target=tap) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert len(statuses) == THREADS
    assert statuses.count(303) == 1, statuses
    assert statuses.count(410) == THREADS - 1, statuses  # "already used", never a 500
    with committed_app.app_context():
        sign_ins = db.session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "auth.sign_in")
        )
        assert sign_ins == 1
        assert db.session.scalars(select(LoginToken)).one().consumed_at is not None
        db.session.remove()
