"""The real worker process (`flask --app wsgi portal worker`): killed with SIGKILL mid-send and
started again, the email goes out once; two workers at once deliver every email once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import ROOT, drop_database, fresh_database, make_config, migrate_to_head
from tests.notifications.smtp_faults import FaultySmtp

pytestmark = pytest.mark.concurrency


@pytest.fixture()
def database(backend: str, tmp_path: Path) -> Iterator[str]:
    from portal import create_app

    url = fresh_database(backend, tmp_path, "worker")
    migrate_to_head(create_app(make_config(url)))
    yield url
    drop_database(url)


@pytest.fixture()
def smtp() -> Iterator[FaultySmtp]:
    server = FaultySmtp()
    server.start()
    yield server
    server.stop()


def _queue(url: str, n: int) -> dict[int, str]:
    """Outbox rows written straight to the database (as a request would), id -> Message-ID."""
    engine = sa.create_engine(url)
    rows = {}
    try:
        with engine.begin() as conn:
            for i in range(n):
                message_id = f"<worker-test-{i}-{os.getpid()}@example.com>"
                row_id = conn.execute(
                    sa.text(
                        "INSERT INTO outbox_emails (message_id, to_address, subject, text_body, "
                        "html_body, template, status, attempts, next_attempt_at, last_error, "
                        "created_at, is_essential) VALUES (:mid, :to, :subject, 'Plain', '', '', "
                        "'pending', 0, :now, '', :now, true) RETURNING id"
                    ),
                    {
                        "mid": message_id,
                        "to": f"to{i}@example.com",
                        "subject": f"Hello {i}",
                        "now": _now(),
                    },
                ).scalar_one()
                rows[row_id] = message_id
    finally:
        engine.dispose()
    return rows


def _now() -> object:
    from datetime import UTC, datetime

    return datetime.now(UTC).replace(tzinfo=None)


def _rows(url: str) -> dict[int, tuple[str, int]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            found = conn.execute(sa.text("SELECT id, status, attempts FROM outbox_emails"))
            return {row.id: (row.status, row.attempts) for row in found}
    finally:
        engine.dispose()


def _start_worker(url: str, smtp: FaultySmtp, queue: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "SECRET_KEY": "test-secret-key",
        "MAIL_SERVER": "127.0.0.1",
        "MAIL_PORT": str(smtp.port),
        "MAIL_TIMEOUT_SECONDS": "5",
        # NOTE: a short lease, so a killed worker's claim runs out quickly in the test.
        "MAIL_CLAIM_LEASE_SECONDS": "2",
        "MAIL_BATCH_SIZE": "10",
        "JOB_QUEUE_URL": queue,
        "STRIPE_API_BASE": "http://127.0.0.1:9",
    }
    for name in ("billing_run", "reminders", "card_retries", "reconcile", "pdf_prerender", "purge"):
        env[f"WORKER_SCHEDULE_{name.upper()}"] = "off"
    return subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "wsgi", "portal", "worker", "--workers", "2"],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def _wait(condition: Callable[[], bool], seconds: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"{what} (worker log:\n{log.read_text(errors='replace')[-3000:]})")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_a_worker_killed_mid_send_and_started_again_sends_the_email_once(
    database: str, smtp: FaultySmtp, tmp_path: Path
) -> None:
    queue = f"sqlite:///{tmp_path / 'huey.sqlite3'}"
    log = tmp_path / "worker.log"
    [(row_id, message_id)] = _queue(database, 1).items()
    smtp.mode = "hold"  # the server takes the message and never answers
    first = _start_worker(database, smtp, queue, log)
    try:
        _wait(smtp.held.is_set, 30, "the worker never sent the email", log)
        first.send_signal(signal.SIGKILL)  # mid-job: the SMTP answer has not come
        first.wait(timeout=10)
    finally:
        _stop(first)
    assert _rows(database)[row_id] == ("pending", 1)  # claimed, not sent, not lost
    smtp.mode = "ok"
    time.sleep(2.5)  # the dead worker's lease runs out
    second = _start_worker(database, smtp, queue, log)
    try:
        _wait(lambda: _rows(database)[row_id][0] == "sent", 30, "never sent after restart", log)
        time.sleep(1)  # time for a (wrong) second send to show
    finally:
        _stop(second)
    assert smtp.message_ids() == {message_id: 1}
    assert _rows(database)[row_id] == ("sent", 2)


def _redis_or_sqlite(tmp_path: Path) -> str:
    """Redis when this machine runs one (the production queue), else the SQLite file."""
    import redis

    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping()
    except redis.RedisError:
        return f"sqlite:///{tmp_path / 'huey.sqlite3'}"
    return f"redis://127.0.0.1:6379/{9 + os.getpid() % 6}"


def test_two_workers_at_once_send_every_email_once(
    database: str, smtp: FaultySmtp, tmp_path: Path
) -> None:
    queue = _redis_or_sqlite(tmp_path)
    log = tmp_path / "workers.log"
    workers = [_start_worker(database, smtp, queue, log) for _ in range(2)]
    try:
        _wait(lambda: log.read_text().count("worker started") == 2, 30, "workers not up", log)
        rows = _queue(database, 60)
        # Four delivery jobs at once (what the after-commit hook enqueues): one per worker
        # thread, all racing for the same rows.
        jobs = _jobs_for(queue)
        for _ in range(4):
            jobs.deliver_outbox(None)
        _wait(
            lambda: all(s == "sent" for s, _ in _rows(database).values()),
            60,
            "not every email was sent",
            log,
        )
        time.sleep(1)
    finally:
        for process in workers:
            _stop(process)
    assert smtp.message_ids() == {message_id: 1 for message_id in rows.values()}
    if queue.startswith("redis://"):
        jobs.huey.flush()


def _jobs_for(queue: str) -> Any:
    """The workers' queue, seen from outside (to enqueue what the web process would)."""
    from flask import Flask

    from portal.worker import Jobs, make_huey

    app = Flask(__name__)
    app.config.update(BASE_URL="http://portal.test")
    return Jobs(app, make_huey(queue))
