"""On a phone (iPhone 13 in Chromium, axe clean): Ada previews and makes an upgrade and sees the
proration invoice paid with her saved card, schedules a downgrade and withdraws it, pauses and
resumes, cancels (seeing the alternatives first) and keeps her subscription. Screenshots light
and dark go to artifacts/screenshots/."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from portal import clock as portal_clock
from portal import create_app
from portal.accounts.models import Account
from portal.billing.models import Invoice
from portal.extensions import db
from portal.subscriptions.billing_run import run_billing
from portal.subscriptions.models import Subscription, SubscriptionChange
from tests.conftest import LiveServer, fresh_database, make_config, migrate_to_head, missing_service
from tests.payments.conftest import localstripe  # noqa: F401  (the fixture, used by name)

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
def demo_server(tmp_path: Path, localstripe: str) -> Iterator[LiveServer]:  # noqa: F811
    url = fresh_database("sqlite", tmp_path, "browser_subscriptions")
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
        from portal.payments.demo_sync import sync_demo_stripe
        from portal.payments.gateway import gateway

        seed_demo(db.session, app.config["SELLER"])
        db.session.commit()
        # NOTE: Ada's saved card becomes a real card in the simulator, so an upgrade is charged.
        sync_demo_stripe(db.session, gateway(), app.config, commit=db.session.commit)
        db.session.remove()
    server = LiveServer(app)
    server.thread.start()
    yield server
    server.server.shutdown()


def _shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _axe(page: Any) -> None:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    assert results.violations_count == 0, results.generate_report()


def _flash(page: Any) -> str:
    return page.locator(".flashes").inner_text()


def test_ada_changes_pauses_cancels_and_keeps_her_subscription(demo_server: LiveServer) -> None:
    if not CHROMIUM.exists():
        missing_service(f"{CHROMIUM} is missing")
    from playwright.sync_api import expect, sync_playwright

    base = demo_server.url
    app = demo_server.app
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
        page.goto(demo_server.login_link("ada@example.com"))
        page.get_by_role("button", name="Sign in as ada@example.com").click()
        page.wait_for_url(f"{base}/")

        # The dashboard's card leads to the subscription.
        page.get_by_test_id("subscription-link").click()
        page.wait_for_url(f"{base}/subscriptions/*")
        detail_url = page.url
        expect(page.get_by_role("heading", level=1, name="Team plan")).to_be_visible()
        expect(page.get_by_test_id("seats")).to_have_text("5")
        expect(page.get_by_test_id("next-invoice")).to_be_visible()
        _axe(page)
        _shot(page, "subscription-iphone13")

        # Preview an upgrade: the HTMX partial swaps in as the choice changes.
        page.get_by_test_id("change").click()
        page.wait_for_url(f"{base}/subscriptions/*/change")
        _axe(page)
        with page.expect_response(lambda r: "/change?" in r.url):
            page.get_by_test_id("plan-business").click()
        preview = page.get_by_test_id("preview")
        expect(preview).to_contain_text("Upgrade to Business")
        expect(preview).to_contain_text("Total due today")
        expect(preview).to_contain_text("Credit for unused time on Team, 5 seats")
        expect(page.get_by_test_id("pay-note")).to_contain_text("Visa ending in 4242")
        _axe(page)
        _shot(page, "subscription-change-preview-iphone13")
        confirm = page.get_by_test_id("confirm-change")
        expect(confirm).to_contain_text("Confirm and pay")
        confirm.click()
        page.wait_for_url(detail_url)
        assert "paid with your saved card" in _flash(page), _flash(page)
        expect(page.get_by_role("heading", level=1, name="Business plan")).to_be_visible()
        _axe(page)
        _shot(page, "subscription-upgraded-iphone13")

        with app.app_context():
            change = db.session.scalar(
                select(SubscriptionChange).where(SubscriptionChange.status == "applied")
            )
            assert change is not None and change.invoice_id is not None
            invoice = db.session.get(Invoice, change.invoice_id)
            assert invoice is not None and invoice.status == "paid", invoice.status
            number = invoice.number
            db.session.remove()
        # The proration invoice, from the history: paid.
        page.get_by_test_id("history").get_by_role("link", name=f"Invoice {number}").click()
        page.wait_for_url(f"{base}/invoices/{number}")
        expect(page.locator("main")).to_contain_text("Paid")
        _shot(page, "subscription-proration-invoice-iphone13")
        page.goto(detail_url)

        # Schedule a downgrade, then withdraw it.
        page.get_by_test_id("change").click()
        with page.expect_response(lambda r: "/change?" in r.url):
            page.get_by_test_id("plan-starter").click()
        expect(page.get_by_test_id("nothing-due")).to_be_visible()
        page.get_by_test_id("confirm-change").click()
        page.wait_for_url(detail_url)
        expect(page.get_by_test_id("scheduled")).to_contain_text("Plan: Business to Starter")
        _axe(page)
        _shot(page, "subscription-scheduled-iphone13")
        page.get_by_test_id("withdraw").click()
        page.wait_for_url(detail_url)
        expect(page.get_by_test_id("scheduled")).to_have_count(0)
        expect(page.get_by_test_id("history")).to_contain_text("Withdrawn")

        # A pause starts when the paid period ends; until then it can be withdrawn.
        page.get_by_text("Pause for a while").click()
        page.get_by_test_id("pause").click()
        page.wait_for_url(detail_url)
        expect(page.get_by_test_id("scheduled")).to_contain_text("Pauses on")
        _axe(page)
        _shot(page, "subscription-pause-scheduled-iphone13")
        page.get_by_test_id("withdraw").click()
        page.wait_for_url(detail_url)
        expect(page.get_by_test_id("scheduled")).to_have_count(0)

        # Cancel: the alternatives come first; then keep the subscription.
        page.get_by_test_id("cancel").click()
        page.wait_for_url(f"{base}/subscriptions/*/cancel")
        expect(page.get_by_test_id("alternatives")).to_be_visible()
        expect(page.get_by_test_id("take-offer")).to_be_visible()
        expect(page.get_by_test_id("pause-instead")).to_be_visible()
        expect(page.get_by_test_id("cheaper-plan")).to_be_visible()
        _axe(page)
        _shot(page, "subscription-cancel-iphone13")
        page.get_by_label("We are not using it enough").check()
        page.get_by_label("Anything you would like to tell us?").fill("Quiet season.")
        page.get_by_test_id("confirm-cancel").click()
        page.wait_for_url(detail_url)
        expect(page.get_by_test_id("ending")).to_be_visible()
        _axe(page)
        _shot(page, "subscription-ending-iphone13")
        page.get_by_test_id("reactivate").click()
        page.wait_for_url(detail_url)
        expect(page.get_by_test_id("ending")).to_have_count(0)

        # The cheaper plan is one tap from the cancel page, its next invoice stated before the
        # tap; as a downgrade it waits for the renewal (and can be withdrawn).
        page.goto(detail_url + "/cancel")
        card = page.get_by_test_id("cheaper-card")
        expect(card).to_contain_text("Switch to Team")
        expect(page.get_by_test_id("cheaper-next")).to_contain_text("instead of")
        page.get_by_test_id("cheaper-plan").click()
        page.wait_for_url(detail_url)
        assert "starts at your renewal" in _flash(page), _flash(page)
        expect(page.get_by_test_id("scheduled")).to_contain_text("Plan: Business to Team")
        _axe(page)
        page.get_by_test_id("withdraw").click()
        page.wait_for_url(detail_url)

        grace = browser.new_context(**p.devices["iPhone 13"], reduced_motion="reduce")
        metered = grace.new_page()
        metered.goto(demo_server.login_link("grace@example.com"))
        metered.get_by_role("button", name="Sign in as grace@example.com").click()
        metered.wait_for_url(f"{base}/")
        metered.goto(f"{base}/subscriptions")
        metered.locator(".item-card__link").first.click()
        expect(metered.get_by_test_id("usage")).to_be_visible()
        _axe(metered)
        _shot(metered, "subscription-metered-iphone13")

        # Pause for real: the billing run at the renewal applies it; Ada starts again early and
        # the new period is billed and paid with her saved card.
        page.get_by_text("Pause for a while").click()
        page.get_by_test_id("pause").click()
        page.wait_for_url(detail_url)
        public_id = detail_url.rsplit("/", 1)[1]
        with app.app_context():
            subscription = db.session.scalar(
                select(Subscription).where(Subscription.public_id == public_id)
            )
            assert subscription is not None
            renewal = subscription.current_period_end
            db.session.remove()
        portal_clock.set_source(portal_clock.FrozenClock(renewal + timedelta(days=2)))
        with app.app_context():
            summary = run_billing(db.session, (renewal + timedelta(days=2)).date())
            assert summary.paused == 1, summary
            db.session.remove()
        page.goto(demo_server.login_link("ada@example.com"))
        page.get_by_role("button", name="Sign in as ada@example.com").click()
        page.wait_for_url(f"{base}/")
        page.goto(detail_url)
        expect(page.get_by_test_id("paused")).to_be_visible()
        _axe(page)
        _shot(page, "subscription-paused-iphone13")
        page.get_by_test_id("resume").click()
        page.wait_for_url(detail_url)
        expect(page.get_by_test_id("paused")).to_have_count(0)
        assert "paid with your saved card" in _flash(page), _flash(page)
        _shot(page, "subscription-history-iphone13")

        with app.app_context():
            subscription = db.session.scalar(
                select(Subscription).where(Subscription.public_id == public_id)
            )
            assert subscription is not None
            assert subscription.status == "active" and not subscription.cancel_at_period_end
            kinds = sorted(
                db.session.scalars(
                    select(SubscriptionChange.kind).where(
                        SubscriptionChange.subscription_id == subscription.id
                    )
                )
            )
            assert kinds == [
                "cancel",
                "pause",
                "pause",
                "plan",
                "plan",
                "plan",
                "reactivate",
                "resume",
            ], kinds
            db.session.remove()

        # Dark mode: the same pages.
        dark = browser.new_context(
            **p.devices["iPhone 13"], reduced_motion="reduce", color_scheme="dark"
        )
        dark.add_cookies(context.cookies())
        night = dark.new_page()
        for path, name in [
            ("", "subscription"),
            ("/change?plan=team&quantity=8", "subscription-change-preview"),
            ("/cancel", "subscription-cancel"),
        ]:
            night.goto(detail_url + path)
            _axe(night)
            _shot(night, f"{name}-dark-iphone13")

        # Where the plan allows ending today, the cancel page states the credit for the unused
        # time before the tap, and the cancel gives it (a credit note on the period's invoice).
        with app.app_context():
            subscription = db.session.scalar(
                select(Subscription).where(Subscription.public_id == public_id)
            )
            assert subscription is not None
            subscription.price.plan.allows_cancel_now = True
            db.session.commit()
            db.session.remove()
        page.goto(detail_url + "/cancel")
        credit_text = page.get_by_test_id("cancel-now-credit")
        expect(credit_text).to_contain_text("You get a credit of")
        _axe(page)
        _shot(page, "subscription-cancel-now-credit-iphone13")
        night.goto(detail_url + "/cancel")
        _axe(night)
        _shot(night, "subscription-cancel-now-credit-dark-iphone13")
        page.get_by_label("It costs too much").check()
        page.get_by_text("Today", exact=True).click()
        page.get_by_test_id("confirm-cancel").click()
        page.wait_for_url(detail_url)
        assert "for the unused time is on your account" in _flash(page), _flash(page)
        expect(page.get_by_test_id("history")).to_contain_text("Canceled")
        _axe(page)
        _shot(page, "subscription-canceled-with-credit-iphone13")
        night.goto(detail_url)
        _shot(night, "subscription-canceled-with-credit-dark-iphone13")
        with app.app_context():
            from portal.billing.models import CreditNote

            notes = db.session.scalars(select(CreditNote)).all()
            assert any("Unused time on Business" in note.memo for note in notes), notes
            db.session.remove()
        assert errors == [], errors
        browser.close()


def test_the_billing_run_past_her_renewal_bills_ada_and_she_sees_the_invoice_and_its_pdf(
    demo_server: LiveServer,
) -> None:
    """`billing run --as-of` a day after Ada's renewal makes the invoice she then finds in her
    list, opens, and downloads as a PDF (iPhone 13, axe clean)."""
    if not CHROMIUM.exists():
        missing_service(f"{CHROMIUM} is missing")
    from io import BytesIO

    from playwright.sync_api import expect, sync_playwright
    from pypdf import PdfReader

    base = demo_server.url
    app = demo_server.app
    with app.app_context():
        subscription = db.session.scalar(
            select(Subscription)
            .join(Subscription.account)
            .where(Account.billing_email == "ada@example.com")
        )
        assert subscription is not None
        renewal = subscription.current_period_end
        subscription_id = subscription.id
        db.session.remove()
    as_of = (renewal + timedelta(days=1)).date()
    portal_clock.set_source(portal_clock.FrozenClock(renewal + timedelta(days=1)))
    result = app.test_cli_runner().invoke(args=["billing", "run", "--as-of", as_of.isoformat()])
    assert result.exit_code == 0, result.output
    with app.app_context():
        invoice = db.session.scalar(
            select(Invoice)
            .where(Invoice.subscription_id == subscription_id)
            .order_by(Invoice.id.desc())
        )
        assert invoice is not None and invoice.billing_period_start == renewal
        number = invoice.number
        db.session.remove()
    # A second run for the same day bills nothing more.
    again = app.test_cli_runner().invoke(args=["billing", "run", "--as-of", as_of.isoformat()])
    assert again.exit_code == 0, again.output
    with app.app_context():
        count = len(
            db.session.scalars(
                select(Invoice.id).where(
                    Invoice.subscription_id == subscription_id,
                    Invoice.billing_period_start == renewal,
                )
            ).all()
        )
        assert count == 1
        db.session.remove()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        context = browser.new_context(**p.devices["iPhone 13"], reduced_motion="reduce")
        page = context.new_page()
        page.goto(demo_server.login_link("ada@example.com"))
        page.get_by_role("button", name="Sign in as ada@example.com").click()
        page.wait_for_url(f"{base}/")
        page.goto(f"{base}/invoices")
        link = page.get_by_role("link", name=number).first
        expect(link).to_be_visible()
        _axe(page)
        _shot(page, "billing-run-invoice-list-iphone13")
        link.click()
        page.wait_for_url(f"{base}/invoices/{number}")
        expect(page.get_by_role("heading", level=1)).to_contain_text(number)
        _axe(page)
        _shot(page, "billing-run-invoice-iphone13")
        pdf = page.request.get(f"{base}/invoices/{number}/pdf")
        assert pdf.status == 200 and pdf.headers["content-type"] == "application/pdf"
        text = "".join(p.extract_text() for p in PdfReader(BytesIO(pdf.body())).pages)
        assert number in text and "Team" in text, text[:500]
        browser.close()
