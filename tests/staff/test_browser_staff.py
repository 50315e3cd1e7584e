"""The support console in a real browser: a laptop (1366x900) first, then a phone. Sign in by
link and TOTP, the queue with its deadlines, a dispute with the account beside it, a reply;
axe-core on every page, light and dark, and screenshots under artifacts/screenshots/."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pyotp
import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from portal import clock
from portal.accounts.models import User
from portal.billing import services as billing
from portal.billing.money import Money
from portal.extensions import db
from tests.factories import (
    make_account,
    make_dispute,
    make_invoice,
    make_user,
    pdf_bytes,
    png_bytes,
)
from tests.staff.helpers import make_dispute as make_chargeback
from tests.test_browser import (  # noqa: F401  (the phone fixture is used by name)
    _assert_accessible,
    _page_errors,
    _screenshot,
    phone,
)

pytestmark = pytest.mark.browser
LAPTOP = {"viewport": {"width": 1366, "height": 900}, "reduced_motion": "reduce"}
STAFF_EMAIL = "console-browser@example.com"


def _seed(live_server: Any) -> dict[str, str]:
    app = live_server.app
    with app.app_context():
        session = db.session
        existing = session.scalar(select(User).where(User.email == STAFF_EMAIL))
        if existing is None:
            account = make_account(session, name="Lovelace Browser Studio")
            make_user(session, "browser-ada@example.com", account)
            invoice = make_invoice(session, account, (4900, 2500))
            dispute = make_dispute(
                session,
                account,
                invoice,
                2500,
                line_ids=[invoice.lines[1].id],
                description="We removed the second seat in October but were still charged.",
            )
            paid = make_invoice(session, account, (9900,))
            payment = billing.record_payment(
                session,
                account,
                Money(9900, "USD"),
                [(paid, Money(9900, "USD"))],
                received_at=clock.now() - timedelta(days=20),
            )
            payment.stripe_payment_intent_id = "pi_browser_console"
            make_chargeback(
                session,
                account,
                paid,
                source="chargeback",
                payment=payment,
                stripe_dispute_id="dp_browser_console",
                stripe_reason="fraudulent",
                evidence_due_by=clock.now() + timedelta(days=6),
                reason="not_recognized",
            )
            staff = make_user(session, STAFF_EMAIL, staff_role="support")
            staff.totp_secret = pyotp.random_base32()
            staff.totp_confirmed_at = clock.now()
            session.flush()
            _evidence(app, dispute, staff)
            session.commit()
            existing = staff
            dispute_id = dispute.public_id
        else:
            from portal.disputes.models import Dispute

            dispute_id = session.scalar(
                select(Dispute.public_id)
                .where(Dispute.source == "customer")
                .order_by(Dispute.id.desc())
            )
        existing.totp_last_step = None
        secret = existing.totp_secret
        session.commit()
    return {"dispute": str(dispute_id), "secret": str(secret)}


def _evidence(app: Any, dispute: Any, staff: User) -> None:
    """The customer's photo sent with the question and an internal file of support's."""
    from portal.audit.services import Actor
    from portal.disputes import services as disputes
    from portal.disputes.evidence import EvidenceStore

    store = EvidenceStore(app.config["ATTACHMENTS_DIR"])
    for data, name, actor, internal in (
        (png_bytes(), "seat-removed-screenshot.png", Actor("customer", None), False),
        (pdf_bytes(), "seat-history-export.pdf", Actor("staff", staff.id), True),
    ):
        disputes.add_attachment(
            db.session,
            dispute,
            data=data,
            filename=name,
            actor=actor,
            store=store,
            max_bytes=10**6,
            internal=internal,
        )


def _file_links_are_tap_targets(page: Any) -> None:
    links = page.locator(".staff-files__link")
    assert links.count() >= 2
    for index in range(links.count()):
        box = links.nth(index).bounding_box()
        assert box is not None and box["height"] >= 44, box


def _sign_in(page: Any, live_server: Any, secret: str) -> None:
    page.goto(live_server.login_link(STAFF_EMAIL))
    page.get_by_role("button", name=f"Sign in as {STAFF_EMAIL}").click()
    page.wait_for_url("**/staff/two-factor")
    page.get_by_label("Code").fill(pyotp.TOTP(secret).now())
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url(f"{live_server.url}/staff/")


def _check(page: Any, name: str) -> None:
    # Nothing wider than the screen: no sideways scrolling on a phone or a laptop.
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{name} is {overflow}px wider than the screen"
    _assert_accessible(page, name)
    _screenshot(page, name)
    page.emulate_media(color_scheme="dark")
    page.reload()
    _assert_accessible(page, f"{name} (dark)")
    _screenshot(page, f"{name}-dark")
    page.emulate_media(color_scheme="light")


def test_the_console_on_a_laptop_and_a_phone(live_server: Any, phone: Any) -> None:  # noqa: F811
    browser, iphone = phone
    seeded = _seed(live_server)
    context = browser.new_context(**LAPTOP)
    page = context.new_page()
    errors = _page_errors(page)
    _sign_in(page, live_server, seeded["secret"])

    # The queue: both the customer's dispute and the card chargeback, with their deadlines.
    expect(page.get_by_role("heading", level=1, name="Disputes")).to_be_visible()
    rows = page.get_by_test_id("queue-row")
    assert rows.count() >= 2
    expect(page.get_by_text("Chargeback").first).to_be_visible()
    expect(page.get_by_text("Evidence due by").first).to_be_visible()
    _check(page, "staff-queue-laptop")

    # Filtering by kind swaps the rows in place and keeps the filter in the address bar.
    page.get_by_label("Kind").select_option("chargeback")
    page.wait_for_url("**/staff/?*source=chargeback*")
    page.get_by_test_id("queue-row").first.wait_for()
    assert "Lovelace Browser Studio" in page.get_by_test_id("queue-row").first.inner_text()

    # A dispute: what is questioned, the account beside it, and the way to answer.
    page.goto(f"{live_server.url}/staff/disputes/{seeded['dispute']}")
    expect(page.get_by_test_id("ctx-balance")).to_be_visible()
    # The account has a card payment to refund: the console names the cheap path.
    expect(page.get_by_test_id("cheap-path")).to_be_visible()
    page.get_by_label("Reply to the customer").fill("Thanks, we are checking the seat history.")
    page.get_by_role("button", name="Send reply").click()
    page.wait_for_url("**#thread")
    page.get_by_label("Internal note").fill("Seat removed on 12 Oct per the logs.")
    page.get_by_role("button", name="Save internal note").click()
    page.wait_for_url("**#thread")
    expect(page.get_by_test_id("internal-note").first).to_be_visible()
    # The evidence: each file with its type and size, the internal one marked, downloadable.
    files = page.get_by_test_id("staff-file")
    assert files.count() == 2
    assert "Internal file" in files.filter(has_text="seat-history-export.pdf").inner_text()
    with page.expect_download() as download:
        page.get_by_role("link", name="seat-removed-screenshot.png").click()
    assert download.value.suggested_filename.startswith("evidence-")
    _file_links_are_tap_targets(page)
    _check(page, "staff-dispute-laptop")

    page.goto(f"{live_server.url}/staff/customers?q=Lovelace")
    _check(page, "staff-customers-laptop")
    page.goto(f"{live_server.url}/staff/audit")
    _assert_accessible(page, "the audit log")
    _screenshot(page, "staff-audit-laptop")
    context.close()

    # The same console on a phone: usable, tap targets kept, axe clean.
    context = browser.new_context(**iphone, reduced_motion="reduce")
    page = context.new_page()
    errors += _page_errors(page)
    _sign_in(page, live_server, _seed(live_server)["secret"])
    _check(page, "staff-queue-iphone13")
    page.goto(f"{live_server.url}/staff/disputes/{seeded['dispute']}")
    _file_links_are_tap_targets(page)
    _check(page, "staff-dispute-iphone13")
    assert errors == [], f"errors in the browser console (CSP violations?): {errors}"
    context.close()
