"""The worker's queue: a delivery job after commit (never after a rollback), an unreachable
queue that fails nothing, schedules from configuration, and the staff retry's job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from portal import worker
from portal.db import commit
from portal.extensions import db
from portal.mail import queue_email
from portal.notifications.models import OutboxEmail
from tests.conftest import SmtpServer, app_with_own_database
from tests.factories import make_account, make_user


@pytest.fixture()
def committed_app(backend: str, tmp_path: Path, smtp_server: SmtpServer) -> Iterator[Flask]:
    with app_with_own_database(backend, tmp_path, "jobs", **smtp_server.config()) as app:
        worker.jobs(app).huey.flush()
        yield app


def _queue(app: Flask, n: int = 1) -> list[int]:
    with app.test_request_context():
        ids = [
            queue_email(
                db.session,
                to=f"to{i}@example.com",
                template="login_link",
                context={"link": f"http://portal.test/login/t{i}", "minutes": 10, "user": None},
            ).id
            for i in range(n)
        ]
        return ids


def _run_pending_jobs(app: Flask) -> int:
    huey = worker.jobs(app).huey
    ran = 0
    while (task := huey.dequeue()) is not None:
        huey.execute(task)
        ran += 1
    return ran


def _statuses(app: Flask) -> dict[int, str]:
    with app.app_context():
        rows = db.session.execute(select(OutboxEmail.id, OutboxEmail.status)).all()
        db.session.remove()
    return {row.id: row.status for row in rows}


def test_a_committed_email_enqueues_one_delivery_job_that_sends_it(
    committed_app: Flask, smtp_server: SmtpServer
) -> None:
    huey = worker.jobs(committed_app).huey
    with committed_app.app_context():
        ids = _queue(committed_app, 2)
        assert huey.pending_count() == 0  # nothing before the commit: the rows are not there yet
        commit(db.session)
        db.session.remove()
    [job] = huey.pending()
    assert job.name == "deliver_outbox" and list(job.args[0]) == ids  # one job for the unit
    assert _run_pending_jobs(committed_app) == 1
    assert sorted(m["To"] for m in smtp_server.messages) == ["to0@example.com", "to1@example.com"]
    assert {m["Subject"] for m in smtp_server.messages} == {"Your sign-in link"}
    assert set(_statuses(committed_app).values()) == {"sent"}


def test_a_rolled_back_unit_of_work_enqueues_nothing_that_sends(
    committed_app: Flask, smtp_server: SmtpServer
) -> None:
    huey = worker.jobs(committed_app).huey
    with committed_app.app_context():
        _queue(committed_app, 1)
        db.session.rollback()  # the request failed: its email never existed
        [kept] = _queue(committed_app, 1)
        commit(db.session)
        db.session.remove()
    [job] = huey.pending()
    assert list(job.args[0]) == [kept]
    _run_pending_jobs(committed_app)
    assert len(smtp_server.messages) == 1
    assert _statuses(committed_app) == {kept: "sent"}


def test_post_login_enqueues_the_delivery_and_the_link_arrives(
    committed_app: Flask, smtp_server: SmtpServer
) -> None:
    with committed_app.app_context():
        user = make_user(db.session, account=make_account(db.session))
        email = user.email
        db.session.commit()
        db.session.remove()
    response = committed_app.test_client().post("/login", data={"email": email})
    assert response.status_code == 200
    assert worker.jobs(committed_app).huey.pending_count() == 1
    _run_pending_jobs(committed_app)
    [message] = smtp_server.messages
    assert message["To"] == email
    assert "/login/" in message.get_payload()[0].get_payload(decode=True).decode()


def test_post_login_for_an_unknown_address_enqueues_alike_and_sends_nothing(
    committed_app: Flask, smtp_server: SmtpServer
) -> None:
    response = committed_app.test_client().post("/login", data={"email": "nobody@example.com"})
    assert response.status_code == 200
    # NOTE: the same work after commit as for a known address (its timing tells nothing).
    [job] = worker.jobs(committed_app).huey.pending()
    assert job.name == "deliver_outbox" and list(job.args[0]) == []
    _run_pending_jobs(committed_app)
    assert smtp_server.messages == []
    assert _statuses(committed_app) == {}


def test_an_unreachable_queue_fails_nothing_and_the_sweep_delivers(
    backend: str, tmp_path: Path, smtp_server: SmtpServer
) -> None:
    with app_with_own_database(
        backend, tmp_path, "noqueue", JOB_QUEUE_URL="redis://127.0.0.1:1/0", **smtp_server.config()
    ) as app:
        with app.app_context():
            user = make_user(db.session, account=make_account(db.session))
            email = user.email
            db.session.commit()
            db.session.remove()
        response = app.test_client().post("/login", data={"email": email})
        assert response.status_code == 200  # the queue is down: the request does not care
        assert list(_statuses(app).values()) == ["pending"]
        # The periodic sweep (here called directly: the queue that would run it is down).
        worker.jobs(app)._outbox_sweep()
        assert list(_statuses(app).values()) == ["sent"]
        assert [m["To"] for m in smtp_server.messages] == [email]


def test_the_queue_lives_beside_the_database_unless_configured(tmp_path: Path) -> None:
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/data/portal.sqlite3")
    assert worker.queue_url(app) == f"sqlite:///{tmp_path}/data/huey.sqlite3"
    app.config["SQLALCHEMY_DATABASE_URI"] = "postgresql+psycopg://db/portal"
    assert worker.queue_url(app) == f"sqlite:///{tmp_path}/instance/huey.sqlite3"
    app.config["JOB_QUEUE_URL"] = "redis://:secret@cache:6379/2"
    assert worker.queue_url(app) == "redis://:secret@cache:6379/2"
    assert "secret" not in worker.redact(worker.queue_url(app))
    app.config["TESTING"] = True
    app.config["JOB_QUEUE_URL"] = ""
    assert worker.queue_url(app) == "memory://"
    with pytest.raises(ValueError):
        worker.make_huey("amqp://elsewhere")


def test_schedules_are_configuration_with_defaults(tmp_path: Path) -> None:
    config: dict[str, Any] = {"WORKER_SCHEDULE_BILLING_RUN": "30 1 * * *"}
    assert worker.schedule_for(config, "billing_run") == "30 1 * * *"
    assert worker.schedule_for(config, "reminders") == worker.SCHEDULES["reminders"]
    assert worker.schedule_for({"WORKER_SCHEDULE_PURGE": "off"}, "purge") is None
    with pytest.raises(ValueError):
        worker.parse_cron("every day")
    app = Flask(__name__, instance_path=str(tmp_path))
    app.config.update(WORKER_SCHEDULE_PURGE="off", BASE_URL="http://portal.test")
    jobs = worker.Jobs(app, worker.make_huey("memory://"))
    assert set(jobs.periodic) == set(worker.SCHEDULES) - {"purge"}


def test_a_periodic_job_runs_once_per_tick_however_many_workers_schedule_it(
    committed_app: Flask, clock: Any
) -> None:
    jobs = worker.jobs(committed_app)
    ran: list[int] = []
    once = jobs._once_per_tick("sample", lambda: ran.append(1))
    once()
    once()  # a second worker's scheduler enqueued the same minute's job
    assert ran == [1]
    clock.advance(minutes=1)
    once()
    assert ran == [1, 1]


def test_a_job_runs_on_one_worker_at_a_time_and_a_dead_workers_lease_runs_out(
    committed_app: Flask, clock: Any
) -> None:
    jobs = worker.jobs(committed_app)
    with jobs._exclusive("sample") as mine:
        assert mine
        with jobs._exclusive("sample") as also_mine:
            assert not also_mine  # another worker, at the same time
    with jobs._exclusive("sample") as mine_again:
        assert mine_again  # released when the first finished
    # A worker killed mid-job never releases: its lease runs out.
    held = jobs._exclusive("sample")
    assert held.__enter__() is True
    clock.advance(seconds=worker.LOCK_TTL_SECONDS - 60)
    with jobs._exclusive("sample") as early:
        assert not early
    clock.advance(seconds=120)
    with jobs._exclusive("sample") as late:
        assert late
