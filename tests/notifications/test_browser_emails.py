"""In a real phone-sized Chromium: every email passes axe in light and dark mode, and the
invoice email's button leads to the pay page in one tap (the second pays), also axe-clean."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from portal.extensions import db
from tests.notifications.email_world import as_sent
from tests.test_browser import _assert_accessible, _page_errors, phone  # noqa: F401

pytestmark = pytest.mark.browser


def _rendered_emails(app: Any) -> dict[str, str]:
    from portal.mail import queue_email
    from tests.notifications.email_world import EmailWorld

    with app.app_context():
        world = EmailWorld(db.session, billing_email="axe@example.com", name="Axe Studio")
        html = {}
        for name, context in world.contexts().items():
            email = queue_email(
                db.session,
                to=world.account.billing_email,
                template=name,
                context=context,
                account_id=world.account.id,
            )
            assert email is not None
            html[name] = as_sent(db.session, email).html_body
        db.session.rollback()
    return html


def _assert_email_accessible(page: Any, name: str) -> None:
    """WCAG 2.1 A and AA rules. NOTE: axe's best-practice landmark rules do not apply: an
    email is shown inside the mail client's own page (its main region); the email marks itself
    as an article, as email accessibility guides advise."""
    from axe_playwright_python.sync_playwright import Axe

    tags = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]
    results = Axe().run(page, options={"runOnly": {"type": "tag", "values": tags}})
    if results.violations_count:
        print(results.generate_report())
    assert results.violations_count == 0, f"axe found accessibility violations on {name}"


def test_every_email_is_accessible_in_light_and_dark(live_server: Any, phone: Any) -> None:  # noqa: F811
    browser, iphone = phone
    emails = _rendered_emails(live_server.app)
    for scheme in ("light", "dark"):
        context = browser.new_context(**iphone, color_scheme=scheme, reduced_motion="reduce")
        page = context.new_page()
        for name, html in emails.items():
            page.set_content(html)
            _assert_email_accessible(page, f"the {name} email ({scheme})")
            # The main button is a large tap target.
            box = page.locator("td.btn a").first.bounding_box()
            assert box is not None and box["height"] >= 44 and box["width"] >= 200, name
        context.close()


def test_from_the_invoice_email_to_the_pay_page_in_one_tap(live_server: Any, phone: Any) -> None:  # noqa: F811
    from portal.accounts.models import User
    from portal.billing.models import Invoice
    from portal.notifications import deep_links
    from portal.notifications.emails import Target

    browser, iphone = phone
    app = live_server.app
    with app.app_context():
        user = db.session.scalar(select(User).where(User.email == "ada@example.com"))
        assert user is not None
        account = user.memberships[0].account
        invoice = db.session.scalars(
            select(Invoice)
            .where(Invoice.account_id == account.id, Invoice.status == "open")
            .order_by(Invoice.id)
        ).first()
        assert invoice is not None
        link = deep_links.link_for(db.session, account, user.email, Target("invoice", invoice.id))
        number = invoice.number
        db.session.commit()
    context = browser.new_context(**iphone, reduced_motion="reduce")
    page = context.new_page()
    errors = _page_errors(page)
    page.goto(link)
    button = page.get_by_role("button", name="Open the invoice")
    expect(button).to_be_visible()
    _assert_accessible(page, "the deep link's confirm page")
    button.click()
    page.wait_for_url(f"{live_server.url}/invoices/{number}/pay")
    assert page.get_by_role("heading", level=1).inner_text().endswith(str(number))
    # NOTE: the pay page itself is checked by tests/payments/test_browser_pay.py (with the card
    # element that Stripe.js mounts; here Stripe.js is not reachable).
    # The same link again, in the same (now signed-in) browser, just goes on to the invoice.
    page.goto(link)
    page.wait_for_url(f"{live_server.url}/invoices/{number}/pay")
    # The email preferences on the account page, light and dark.
    page.goto(f"{live_server.url}/account#email-preferences")
    expect(page.get_by_label("Also send billing emails to")).to_be_visible()
    _assert_accessible(page, "the account page with email preferences")
    page.emulate_media(color_scheme="dark")
    page.reload()
    _assert_accessible(page, "the account page in dark mode")
    assert errors == [], errors
    context.close()
