"""Staff see and download a dispute's evidence files in the console: the customer's and the
internal ones; another dispute's file, a missing one or a deleted one is a 404, and customers
never learn the staff URL exists."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.audit.models import AuditEvent
from portal.audit.services import Actor
from portal.disputes import services
from portal.disputes.evidence import EvidenceStore
from portal.disputes.models import Attachment, Dispute, DisputeMessage
from tests.conftest import login_as
from tests.factories import (
    jpeg_bytes,
    make_account,
    make_dispute,
    make_invoice,
    make_user,
    pdf_bytes,
    png_bytes,
)


@pytest.fixture(autouse=True)
def _attachments_dir(app: Flask, tmp_path: Path) -> Iterator[None]:
    previous = app.config.get("ATTACHMENTS_DIR")
    app.config["ATTACHMENTS_DIR"] = str(tmp_path / "attachments")
    yield
    app.config["ATTACHMENTS_DIR"] = previous


@dataclass(frozen=True)
class File:
    """What the tests need of an attachment, read once (requests commit and expire objects)."""

    public_id: str
    filename: str
    content_type: str
    size_bytes: int


def _file(attachment: Attachment) -> File:
    return File(
        attachment.public_id, attachment.filename, attachment.content_type, attachment.size_bytes
    )


class Case:
    """A customer's dispute with a file on their message, one sent with the question and an
    internal file on a staff note; a second dispute with a file of its own."""

    def __init__(self, session: Session, app: Flask) -> None:
        store = EvidenceStore(app.config["ATTACHMENTS_DIR"])
        self.account = make_account(session, name="Ada Lovelace Studio")
        self.customer = make_user(session, "ada-files@example.com", self.account)
        invoice = make_invoice(session, self.account, (5000, 2500))
        self.dispute = make_dispute(session, self.account, invoice, 2500)
        self.other = make_dispute(
            session, self.account, make_invoice(session, self.account, (900,))
        )
        self.support = make_user(session, "support-files@example.com", staff_role="support")
        session.commit()
        customer = Actor("customer", self.customer.id)
        staff = Actor("staff", self.support.id)
        self.support_id = self.support.id

        def attach(dispute: Any, data: bytes, name: str, actor: Actor, message: Any = None) -> File:
            return _file(
                services.add_attachment(
                    session,
                    dispute,
                    data=data,
                    filename=name,
                    actor=actor,
                    store=store,
                    max_bytes=10**6,
                    message=message,
                )
            )

        self.loose = attach(self.dispute, jpeg_bytes(), "receipt-scan.jpg", customer)
        message = services.add_message(
            session, self.dispute, body="Here is the photo", actor=customer
        )
        self.photo = attach(self.dispute, png_bytes(), "photo.png", customer, message)
        note = services.add_message(
            session, self.dispute, body="Bank statement", actor=staff, is_internal=True
        )
        self.internal = attach(self.dispute, pdf_bytes(), "bank-statement.pdf", staff, note)
        self.foreign = attach(self.other, png_bytes(), "other.png", customer)
        self.note_id, self.dispute_id = note.id, self.dispute.id
        self.base = f"/staff/disputes/{self.dispute.public_id}"
        self.other_base = f"/staff/disputes/{self.other.public_id}"
        session.commit()

    def url(self, attachment: File, base: str | None = None) -> str:
        return f"{base or self.base}/files/{attachment.public_id}"


@pytest.fixture()
def case(session: Session, app: Flask) -> Case:
    return Case(session, app)


def _audit_count(session: Session) -> int:
    return int(session.scalar(select(func.count(AuditEvent.id))) or 0)


def test_staff_download_the_customers_and_the_internal_files(
    client: FlaskClient, session: Session, case: Case
) -> None:
    login_as(client, case.support)
    before = _audit_count(session)
    for attachment, data, extension in (
        (case.photo, png_bytes(), "png"),
        (case.loose, jpeg_bytes(), "jpg"),
        (case.internal, pdf_bytes(), "pdf"),
    ):
        response = client.get(case.url(attachment))
        assert response.status_code == 200, attachment.filename
        assert response.data == data
        assert response.headers["Content-Type"] == attachment.content_type
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "no-store" in response.headers["Cache-Control"]
        disposition = response.headers["Content-Disposition"]
        assert disposition.startswith("attachment;")
        # NOTE: the name in the header is ours, never the uploader's.
        assert f"evidence-{attachment.public_id}.{extension}" in disposition
        assert attachment.filename not in disposition
    session.expire_all()
    assert _audit_count(session) == before  # a read, like the customer's download


def test_the_dispute_page_lists_every_file_with_type_size_and_internal_marked(
    client: FlaskClient, case: Case
) -> None:
    login_as(client, case.support)
    page = client.get(case.base).get_data(as_text=True)
    items = re.findall(r'data-testid="staff-file">(.*?)</li>', page, re.S)
    names = (case.photo.filename, case.loose.filename, case.internal.filename)
    by_name = {name: item for item in items for name in names if name in item}
    assert len(items) == 3 and set(by_name) == set(names)
    for attachment, kind in (
        (case.photo, "PNG image"),
        (case.loose, "JPEG image"),
        (case.internal, "PDF document"),
    ):
        item = by_name[attachment.filename]
        assert f'href="{case.url(attachment)}"' in item
        assert kind in item
        assert f"{(attachment.size_bytes + 1023) // 1024} KB" in item
        assert ("Internal file" in item) == (attachment is case.internal)
    # each file sits with its message; the one sent with the question in the question's card
    assert page.index("receipt-scan.jpg") < page.index("Conversation")
    assert page.index("Here is the photo") < page.index("photo.png") < page.index("Bank statement")
    assert page.index("Bank statement") < page.index("bank-statement.pdf")
    assert "other.png" not in page


def test_another_disputes_file_a_missing_or_a_deleted_one_answers_404(
    client: FlaskClient, session: Session, case: Case
) -> None:
    login_as(client, case.support)
    assert client.get(case.url(case.foreign, case.other_base)).status_code == 200
    for path in (
        case.url(case.foreign),  # another dispute's file under this dispute
        f"{case.base}/files/{'x' * 24}",
        f"{case.base}/files/{'y' * 300}",
        f"/staff/disputes/{'z' * 24}/files/{case.photo.public_id}",
    ):
        assert client.get(path).status_code == 404, path
    # a deleted message's files are shown to nobody, staff included
    dispute = session.get(Dispute, case.dispute_id)
    note = session.get(DisputeMessage, case.note_id)
    assert dispute is not None and note is not None
    services.delete_message(session, dispute, note, actor=Actor("staff", case.support_id))
    session.commit()
    assert client.get(case.url(case.internal)).status_code == 404
    assert "bank-statement.pdf" not in client.get(case.base).get_data(as_text=True)


def test_customers_and_strangers_never_reach_the_staff_download(
    client: FlaskClient, case: Case
) -> None:
    anonymous = client.get(case.url(case.photo))
    assert anonymous.status_code == 303
    assert anonymous.headers["Location"].startswith("/login")
    # the dispute's own customer: the staff area does not exist for them (404)
    login_as(client, case.customer)
    for attachment in (case.photo, case.internal):
        response = client.get(case.url(attachment))
        assert response.status_code == 404
        assert response.data != pdf_bytes()
