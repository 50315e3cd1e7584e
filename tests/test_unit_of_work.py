"""One unit of work per request: services flush, the request boundary commits once, side effects
run after the commit, a failed request leaves nothing, and a writer waits for the lock."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from portal import db as unit_of_work
from portal.accounts.models import Account
from portal.audit.models import AuditEvent
from portal.audit.services import record
from portal.errors import PendingChanges, ValidationFailed
from portal.extensions import db
from tests.conftest import app_with_own_database, login_as
from tests.factories import make_account, make_user

ACCOUNT_FORM = {
    "name": "Waited For Ltd",
    "billing_email": "waited@example.com",
    "address_line1": "1 Queue Street",
    "address_line2": "",
    "city": "London",
    "postal_code": "SW1A 1AA",
    "region": "",
    "country": "GB",
    "tax_id": "",
    "locale": "en_GB",
}


# -- begin_write and after_commit, on the test's session -------------------------------------


def test_begin_write_refuses_unflushed_and_flushed_changes(session: Session) -> None:
    account = make_account(session)  # flushed, not committed
    with pytest.raises(PendingChanges):
        unit_of_work.begin_write(session)
    session.commit()
    unit_of_work.begin_write(session)  # nothing pending: allowed
    account.name = "Changed, not flushed"
    with pytest.raises(PendingChanges):
        unit_of_work.begin_write(session)


def test_begin_write_refuses_changes_made_by_a_bulk_statement(session: Session) -> None:
    account = make_account(session)
    session.commit()
    session.execute(sa.update(Account).where(Account.id == account.id).values(name="Bulk"))
    with pytest.raises(PendingChanges):
        unit_of_work.begin_write(session)


def test_a_read_transaction_is_ended_quietly(session: Session) -> None:
    make_account(session)
    session.commit()
    session.scalar(select(func.count()).select_from(Account))
    assert session.in_transaction()
    unit_of_work.begin_write(session)
    assert session.in_transaction()


def test_after_commit_effects_run_once_after_commit_and_never_after_rollback(
    session: Session,
) -> None:
    ran: list[str] = []
    make_account(session)
    unit_of_work.after_commit(session, lambda: ran.append("rolled back"))
    session.rollback()
    unit_of_work.commit(session)
    assert ran == []

    make_account(session)
    unit_of_work.after_commit(session, lambda: ran.append("committed"))
    assert ran == []
    unit_of_work.commit(session)
    unit_of_work.commit(session)
    assert ran == ["committed"]


def test_a_failing_side_effect_does_not_undo_the_commit(session: Session) -> None:
    account = make_account(session, name="Kept")

    def broken() -> None:
        raise RuntimeError("mail sender down")

    unit_of_work.after_commit(session, broken)
    unit_of_work.commit(session)
    assert session.get(Account, account.id).name == "Kept"


# -- the request boundary, with real commits -------------------------------------------------


@pytest.fixture()
def committed_app(backend: str, tmp_path: Path) -> Iterator[Flask]:
    with app_with_own_database(backend, tmp_path, "uow") as application:

        @application.post("/_test/write-then-fail")
        def write_then_fail() -> str:
            record(db.session, "test.half_done")
            db.session.flush()
            raise ValidationFailed("the second half of the change was refused")

        @application.post("/_test/write")
        def write() -> str:
            record(db.session, "test.done")
            unit_of_work.after_commit(db.session, lambda: effects.append("after commit"))
            return "ok"

        effects: list[str] = []
        application.extensions["test_effects"] = effects
        yield application


def _count(app: Flask, action: str) -> int:
    with app.app_context():
        found = db.session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action == action)
        )
        db.session.remove()
        return int(found or 0)


@pytest.mark.concurrency
def test_a_request_commits_once_after_the_view_and_then_runs_its_side_effects(
    committed_app: Flask,
) -> None:
    commits: list[str] = []
    effects = committed_app.extensions["test_effects"]

    def note_commit(_session: Session) -> None:
        commits.append("commit")
        assert effects == [], "a side effect ran before the commit"

    event.listen(Session, "after_commit", note_commit)
    try:
        response = committed_app.test_client().post("/_test/write")
    finally:
        event.remove(Session, "after_commit", note_commit)
    assert response.status_code == 200
    assert commits == ["commit"]
    assert effects == ["after commit"]
    assert _count(committed_app, "test.done") == 1


@pytest.mark.concurrency
def test_a_request_that_fails_halfway_leaves_nothing_behind(committed_app: Flask) -> None:
    response = committed_app.test_client().post("/_test/write-then-fail")
    assert response.status_code == 422
    assert "second half" in response.get_data(as_text=True)
    assert _count(committed_app, "test.half_done") == 0
    assert committed_app.extensions["test_effects"] == []


@pytest.mark.concurrency
def test_a_form_post_waits_for_another_writer_instead_of_failing(
    committed_app: Flask, backend: str
) -> None:
    """While another transaction holds the write lock for a second, POST /account (which reads
    and then writes) waits and saves; it used to answer 503 in about 10 ms on SQLite."""
    with committed_app.app_context():
        account = make_account(db.session, name="Before")
        user = make_user(db.session, account=account)
        db.session.commit()
        account_id = account.id
        client = committed_app.test_client()
        login_as(client, user)
        db.session.commit()
        db.session.remove()

    holding = threading.Event()
    released = threading.Event()
    hold_seconds = 1.0

    def hold_the_write_lock() -> None:
        with committed_app.app_context():
            engine = db.engine
            with engine.connect() as connection:
                if backend == "sqlite":
                    transaction = connection.begin()
                    connection.execute(
                        sa.update(Account)
                        .where(Account.id == account_id)
                        .values(region="held by another writer")
                    )
                else:
                    transaction = connection.begin()
                    connection.execute(
                        select(Account.id).where(Account.id == account_id).with_for_update()
                    )
                holding.set()
                time.sleep(hold_seconds)
                transaction.commit()
                released.set()

    holder = threading.Thread(target=hold_the_write_lock)
    holder.start()
    assert holding.wait(10)
    started = time.monotonic()
    response = client.post("/account", data=ACCOUNT_FORM)
    elapsed = time.monotonic() - started
    holder.join(10)

    assert response.status_code == 303, (response.status_code, round(elapsed, 3))
    assert released.is_set()
    assert elapsed >= hold_seconds * 0.5, "the POST did not wait for the other writer"
    with committed_app.app_context():
        saved = db.session.get(Account, account_id)
        assert saved is not None and saved.name == "Waited For Ltd"
        db.session.remove()


# -- the request boundary's end: a read that wrote nothing expires nothing -------------------


def test_a_read_request_that_wrote_nothing_ends_without_expiring_what_it_loaded(
    session: Session, backend: str
) -> None:
    session.commit()
    account = make_account(session)
    session.commit()
    session.get(Account, account.id)
    commits: list[str] = []
    event.listen(session, "after_commit", lambda _s: commits.append("commit"))
    unit_of_work.end_request(session, read_only=True)
    # NOTE: COMMIT on PostgreSQL (a ROLLBACK would drop psycopg's prepared statements), left
    # to the teardown on SQLite; either way what the page loaded stays loaded.
    assert commits == (["commit"] if backend == "postgresql" else [])
    assert "name" in sa.inspect(account).dict
    unit_of_work.end_request(session, read_only=False)
    assert len(commits) == (2 if backend == "postgresql" else 1)


def test_read_requests_keep_the_drivers_prepared_statements_on_postgresql(
    backend: str, tmp_path: Path
) -> None:
    if backend != "postgresql":
        pytest.skip("psycopg's prepared statements are PostgreSQL's")
    with app_with_own_database(backend, tmp_path, "prepared") as application:
        with application.app_context():
            user = make_user(db.session, "prepared@example.com", make_account(db.session))
            db.session.commit()
            client = application.test_client()
            login_as(client, user)
            for _ in range(8):  # psycopg prepares a query on its 5th run on a connection
                assert client.get("/").status_code == 200
            db.session.remove()
            prepared = db.session.scalar(sa.text("SELECT count(*) FROM pg_prepared_statements"))
            db.session.remove()
        assert prepared > 0


def test_a_read_request_that_wrote_or_has_effects_still_commits(session: Session) -> None:
    session.commit()
    make_account(session)  # flushed by the factory: a GET that wrote
    assert unit_of_work.has_pending_changes(session)
    unit_of_work.end_request(session, read_only=True)
    assert not unit_of_work.has_pending_changes(session)

    ran: list[str] = []
    unit_of_work.after_commit(session, lambda: ran.append("effect"))
    unit_of_work.end_request(session, read_only=True)
    assert ran == ["effect"]
