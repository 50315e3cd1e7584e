"""End to end on a phone: sign in, open the overdue invoice, pay with a new card through
localstripe's Stripe.js, see it paid, the receipt in the outbox and the payment in the ledger;
then pay another invoice with the saved card in one tap."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from portal import create_app
from portal.billing.models import Invoice, LedgerEntry
from portal.extensions import db
from portal.notifications.models import OutboxEmail
from tests.conftest import LiveServer, fresh_database, make_config, migrate_to_head, missing_service

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"


@pytest.fixture()
def paying_server(tmp_path: Path, localstripe: str) -> Iterator[LiveServer]:
    url = fresh_database("sqlite", tmp_path, "browser_pay")
    app = create_app(
        make_config(
            url,
            WTF_CSRF_ENABLED=True,
            TESTING=False,
            STRIPE_API_BASE=localstripe,
            STRIPE_SECRET_KEY="sk_test_portal",
            STRIPE_PUBLISHABLE_KEY="pk_test_portal",
            STRIPE_JS_URL=f"{localstripe}/js.stripe.com/v3/",
        )
    )
    migrate_to_head(app)
    with app.app_context():
        from portal.demo import seed_demo

        seed_demo(db.session, app.config["SELLER"])
        db.session.commit()
    server = LiveServer(app)
    server.thread.start()
    yield server
    server.server.shutdown()


def _shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_pay_the_overdue_invoice_with_a_new_card_then_one_tap(paying_server: LiveServer) -> None:
    if not CHROMIUM.exists():
        missing_service(f"{CHROMIUM} is missing")
    from axe_playwright_python.sync_playwright import Axe
    from playwright.sync_api import sync_playwright

    base = paying_server.url
    app = paying_server.app
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        context = browser.new_context(**p.devices["iPhone 13"], reduced_motion="reduce")
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on(
            "console",
            lambda m: (
                errors.append(m.text)
                if m.type == "error" and "Failed to load resource" not in m.text
                else None
            ),
        )

        page.goto(paying_server.login_link("ada@example.com"))
        page.get_by_role("button", name="Sign in as ada@example.com").click()
        page.wait_for_url(f"{base}/")

        page.goto(f"{base}/invoices/ALS-0011/pay")
        assert page.get_by_role("heading", level=1, name="Pay invoice ALS-0011").is_visible()
        results = Axe().run(page)
        assert results.violations_count == 0, results.generate_report()
        _shot(page, "pay-invoice-iphone13")
        form = page.get_by_test_id("new-card-form")
        form.get_by_placeholder("number").fill("5555555555554444")
        form.get_by_placeholder("exp_month").fill("12")
        form.get_by_placeholder("exp_year").fill("31")
        form.get_by_placeholder("cvc").fill("123")
        form.get_by_placeholder("postal_code").fill("94107")
        page.get_by_test_id("pay-new").click()
        page.wait_for_url(f"{base}/pay/attempts/**")
        status = page.get_by_test_id("payment-status")
        assert status.get_attribute("data-status") == "succeeded", status.inner_text()
        assert page.get_by_role("heading", level=1, name="Payment received").is_visible()
        assert Axe().run(page).violations_count == 0
        _shot(page, "paid-iphone13")

        with app.app_context():
            invoice = db.session.scalar(select(Invoice).where(Invoice.number == "ALS-0011"))
            assert invoice.status == "paid"
            receipt = db.session.scalar(
                select(OutboxEmail).where(
                    OutboxEmail.template == "receipt", OutboxEmail.account_id == invoice.account_id
                )
            )
            assert receipt is not None and "ALS-0011" in receipt.text_body
            assert db.session.scalar(
                select(LedgerEntry).where(
                    LedgerEntry.account_id == invoice.account_id,
                    LedgerEntry.kind == "payment",
                    LedgerEntry.description.contains("4444"),
                )
            )
            db.session.remove()

        # The next invoice: the card saved a moment ago, one tap.
        page.goto(f"{base}/invoices/ALS-0012/pay")
        page.get_by_label("ending in 4444", exact=False).check()
        _shot(page, "pay-saved-card-iphone13")
        page.get_by_test_id("pay-saved").click()
        page.wait_for_url(f"{base}/pay/attempts/**")
        assert page.get_by_test_id("payment-status").get_attribute("data-status") == "succeeded"
        with app.app_context():
            assert (
                db.session.scalar(select(Invoice.status).where(Invoice.number == "ALS-0012"))
                == "paid"
            )
            db.session.remove()
        assert errors == [], errors
        context.close()
        browser.close()
