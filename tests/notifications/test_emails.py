"""Every email: its subject, recipients, both parts, language and working links; extra
recipients and opt-outs (portal.mail.queue_email)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.exceptions import MethodNotAllowed, NotFound

from portal.mail import queue_email
from portal.notifications.delivery import build_message
from portal.notifications.emails import KINDS
from portal.notifications.models import EmailPreference, OutboxEmail
from tests.notifications.email_world import EmailWorld, as_sent
from tests.test_i18n import (  # noqa: F401  (fixtures)
    MARKERS,
    PSEUDO_LANGUAGE,
    _brand_data,
    pseudo_app,
    pseudo_translations,
    unmarked_text,
)

TEMPLATES = Path(__file__).resolve().parents[2] / "templates" / "email"

# What each email's subject says (English), and words its body must hold.
EXPECTED: dict[str, tuple[str, tuple[str, ...]]] = {
    "invoice_issued": ("Invoice {number}: $74.00 due {due}", ("$49.00", "Item 1", "$74.00")),
    "receipt": ("Receipt for your payment", ("RCT-", "$75.00", "Visa ending in 4242")),
    "payment_failed": (
        "Your payment for invoice {number} did not go through",
        ("does not have enough funds", "Nov 24, 2026"),
    ),
    "action_required": ("Please confirm your payment for invoice {number}", ("confirm",)),
    "card_expiring": ("Your card ending in 4242 expires soon", ("Visa ending in 4242", "01/2027")),
    "reminder_before_due": ("Invoice {number} is due on {due}", ("$74.00",)),
    "reminder_after_due": ("Invoice {overdue} is overdue", ("$99.00", "Nov 13, 2026")),
    "subscription_changed": ("Your subscription has changed", ("Team",)),
    "subscription_canceled": ("Your subscription is canceled", ("Team",)),
    "subscription_paused": ("Your subscription is paused", ("Dec 16, 2026",)),
    "subscription_resuming": ("Your subscription resumes on Dec 16, 2026", ("Dec 16, 2026",)),
    "subscription_resumed": ("Your subscription is active again", ("Team",)),
    "trial_ending": ("Your trial ends on Nov 15, 2026", ("Nov 15, 2026",)),
    "dispute_received": ("We received your dispute about {number}", ("$25.00",)),
    "dispute_replied": (
        "New reply about your dispute of {number}",
        ("checking the seat count",),
    ),
    "dispute_resolved": (
        "Your dispute about {number} is resolved",
        ("credited one seat",),
    ),
}
HREF = re.compile(r'href="([^"]+)"')
URL = re.compile(r"https?://\S+")


def _parts(email: OutboxEmail) -> tuple[str, str]:
    message = build_message(email, "billing@example.com")
    parts = {
        part.get_content_type(): part.get_content()
        for part in message.walk()
        if not part.is_multipart()
    }
    return parts["text/plain"], parts["text/html"]


def _queue(session: Session, world: EmailWorld, name: str, **extra: Any) -> OutboxEmail | None:
    context = {**world.contexts()[name], **extra}
    email = queue_email(
        session,
        to=world.account.billing_email,
        template=name,
        context=context,
        account_id=world.account.id,
    )
    return as_sent(session, email) if email is not None else None


def assert_links_resolve(app: Flask, body: str, links: list[str]) -> None:
    """Every link of ours in the body names a real page (GET), built from BASE_URL."""
    base = app.config["BASE_URL"]
    adapter = app.url_map.bind(urlsplit(base).netloc)
    ours = [link for link in links if link.startswith(base)]
    assert ours, "an email without a link to the portal"
    for link in ours:
        path = urlsplit(link).path
        try:
            adapter.match(path, method="GET")
        except (NotFound, MethodNotAllowed) as error:  # pragma: no cover - the failure
            raise AssertionError(f"{link} is not a page of the portal") from error
    for link in links:
        assert link.startswith(("https://", "http://portal.test", "mailto:")), link


def test_every_email_template_has_both_parts_and_is_in_the_catalog() -> None:
    names = {path.stem for path in TEMPLATES.glob("[!_]*.html")}
    assert names == {path.stem for path in TEMPLATES.glob("[!_]*.txt")}
    assert names == set(KINDS), "every template has a subject in the catalog"
    assert set(EXPECTED) == set(KINDS) - {"login_link"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_email(
    app: Flask, session: Session, client: FlaskClient, clock: Any, name: str
) -> None:
    world = EmailWorld(session)
    email = _queue(session, world, name)
    assert email is not None
    subject, words = EXPECTED[name]
    expected_subject = subject.format(
        number=world.invoice.number, overdue=world.overdue.number, due="Nov 24, 2026"
    )
    assert email.subject == expected_subject
    assert email.to_address == "ada@example.com"
    assert email.account_id == world.account.id
    assert email.is_essential is KINDS[name].essential
    text, html = _parts(email)
    brand = app.config["BRAND_NAME"]
    for body in (text, html):
        assert brand in body
        assert "Ada Lovelace Studio" in body
        for word in words:
            assert word in body, (name, word)
    # The HTML part: its language, dark mode that degrades, alt text, a large main button.
    assert '<html lang="en">' in html
    assert '<meta name="color-scheme" content="light dark">' in html
    assert "@media (prefers-color-scheme: dark)" in html
    assert "background-color:#ffffff" in html  # the light version is the default
    assert all(' alt="' in tag for tag in re.findall(r"<img[^>]*>", html))
    assert "padding:15px 20px" in html and "font-size:17px" in html  # >= 48 px tall
    # Links: the main button is one deep link, present in both parts; every link resolves.
    deep = [link for link in HREF.findall(html) if "/l/" in link]
    assert len(set(deep)) == 1, deep
    assert deep[0] in text
    assert_links_resolve(app, html, [link.replace("&amp;", "&") for link in HREF.findall(html)])
    assert_links_resolve(app, text, URL.findall(text))
    session.commit()
    page = client.get(urlsplit(deep[0]).path)
    assert page.status_code == 200
    assert 'data-testid="deep-link-confirm"' in page.get_data(as_text=True)


def test_the_sign_in_email_keeps_its_link(
    app: Flask, session: Session, client: FlaskClient
) -> None:
    world = EmailWorld(session)
    session.commit()
    response = client.post("/login", data={"email": world.user.email})
    assert response.status_code == 200
    email = session.scalars(select(OutboxEmail).where(OutboxEmail.template == "login_link")).one()
    assert email.subject == "Your sign-in link"
    assert email.to_address == world.user.email
    text, html = _parts(email)
    links = [link for link in HREF.findall(html) if "/login/" in link]
    assert links and links[0] in text
    assert_links_resolve(app, html, HREF.findall(html))
    assert "expires in 10 minutes" in text and "expires in 10 minutes" in html


def test_the_catalogs_subject_wins_over_one_a_caller_passes(
    app: Flask, session: Session, clock: Any
) -> None:
    """A caller's subject would be in the caller's language (the worker's, another person's
    request): an email the catalog knows always gets the catalog's, in the account's."""
    world = EmailWorld(session)
    context = world.contexts()["receipt"]
    email = queue_email(
        session, to="ada@example.com", subject="Thanks!", template="receipt", context=context
    )
    assert email is not None and email.subject == "Receipt for your payment"


def test_the_invoice_email_attaches_the_pdf(app: Flask, session: Session, clock: Any) -> None:
    world = EmailWorld(session)
    email = _queue(session, world, "invoice_issued")
    assert email is not None
    assert (email.attachment_kind, email.attachment_ref) == ("invoice_pdf", str(world.invoice.id))


def test_an_internal_note_never_reaches_the_email(app: Flask, session: Session, clock: Any) -> None:
    world = EmailWorld(session)
    world.message.is_internal = True
    world.message.body = "INTERNAL: customer is difficult"
    email = _queue(session, world, "dispute_replied")
    assert email is not None
    text, html = _parts(email)
    assert "INTERNAL" not in text and "INTERNAL" not in html


def test_what_a_customer_typed_is_escaped(app: Flask, session: Session, clock: Any) -> None:
    world = EmailWorld(session, name="Ada <b>Studio</b>")
    email = _queue(session, world, "reminder_after_due")
    assert email is not None
    _text, html = _parts(email)
    assert "Ada &lt;b&gt;Studio&lt;/b&gt;" in html and "<b>Studio" not in html


# -- extra recipients and opt-outs ---------------------------------------------------------------


def _prefs(session: Session, world: EmailWorld, **fields: Any) -> EmailPreference:
    prefs = EmailPreference(
        account_id=world.account.id,
        extra_recipients=fields.pop("extra_recipients", ""),
        opt_out_reminders=fields.pop("opt_out_reminders", False),
        opt_out_card_expiry=fields.pop("opt_out_card_expiry", False),
    )
    session.add(prefs)
    session.flush()
    return prefs


def _rows(session: Session, template: str) -> list[OutboxEmail]:
    return [
        as_sent(session, email)
        for email in session.scalars(
            select(OutboxEmail).where(OutboxEmail.template == template).order_by(OutboxEmail.id)
        )
    ]


def test_billing_emails_also_go_to_the_extra_recipients(
    app: Flask, session: Session, clock: Any
) -> None:
    world = EmailWorld(session)
    _prefs(session, world, extra_recipients="ap@example.com\nADA@example.com")
    _queue(session, world, "invoice_issued")
    rows = _rows(session, "invoice_issued")
    assert [row.to_address for row in rows] == ["ada@example.com", "ap@example.com"]
    ada, accounts_payable = rows
    # NOTE: the accounts-payable address has no sign-in of its own: a plain link, no deep link.
    assert "/l/" in ada.text_body
    assert "/l/" not in accounts_payable.text_body
    assert f"/invoices/{world.invoice.number}/pay" in accounts_payable.text_body
    assert accounts_payable.attachment_kind == "invoice_pdf"
    # Not a billing email: a subscription's news goes to the account's own address only.
    _queue(session, world, "subscription_paused")
    assert [row.to_address for row in _rows(session, "subscription_paused")] == ["ada@example.com"]


@pytest.mark.parametrize(
    ("opt_out", "silenced", "still_sent"),
    [
        ("opt_out_reminders", "reminder_before_due", ("reminder_after_due", "card_expiring")),
        ("opt_out_card_expiry", "card_expiring", ("reminder_before_due",)),
    ],
)
def test_an_opt_out_silences_only_its_non_essential_email(
    app: Flask,
    session: Session,
    clock: Any,
    opt_out: str,
    silenced: str,
    still_sent: tuple[str, ...],
) -> None:
    world = EmailWorld(session)
    _prefs(session, world, extra_recipients="ap@example.com", **{opt_out: True})
    assert _queue(session, world, silenced) is None
    assert _rows(session, silenced) == []
    essentials = ("receipt", "payment_failed", "dispute_replied", "invoice_issued")
    for name in (*still_sent, *essentials):
        assert _queue(session, world, name) is not None, name
    assert session.scalar(select(func.count()).select_from(OutboxEmail)) >= len(essentials)


def test_essential_emails_go_even_when_every_opt_out_is_on(
    app: Flask, session: Session, clock: Any
) -> None:
    world = EmailWorld(session)
    _prefs(session, world, opt_out_reminders=True, opt_out_card_expiry=True)
    for name, kind in KINDS.items():
        if name == "login_link":
            continue
        email = _queue(session, world, name)
        assert (email is not None) is (kind.essential or kind.opt_out is None), name


# -- the account's language --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_email_is_written_in_the_accounts_language(
    pseudo_app: Flask,  # noqa: F811
    session: Session,
    clock: Any,
    name: str,
) -> None:
    """With a (pseudo) German catalog, a German account's email is German in every word: the
    subject, both parts, and `lang`; an English account's stays English."""
    world = EmailWorld(session, locale="de_DE", currency="EUR")
    email = _queue(session, world, name)
    assert email is not None
    assert MARKERS.intersection(email.subject), email.subject
    text, html = _parts(email)
    assert f'<html lang="{PSEUDO_LANGUAGE}">' in html
    # NOTE: data, not our words: the brand, the customer's things, the operator's thank-you
    # note and the decline reason Stripe gave (portal.payments translates it where it is made).
    data = (
        _brand_data(pseudo_app)
        | _world_data(world)
        | {pseudo_app.config["BRAND_NAME"][:1], pseudo_app.config["THANK_YOU_NOTE"]}
        | {str(world.contexts()["payment_failed"]["reason"])}
    )
    assert unmarked_text(html, data) == [], name
    words = [line for line in text.splitlines() if re.search(r"[^\W\d_]{3,}", line)]
    unmarked = [
        line
        for line in words
        if not MARKERS.intersection(line)
        and not any(value in line for value in data)
        and not URL.search(line)
    ]
    assert unmarked == [], name
    english = EmailWorld(session, billing_email="ada.en@example.com")
    email = _queue(session, english, name)
    assert email is not None and not MARKERS.intersection(email.subject)


def _world_data(world: EmailWorld) -> set[str]:
    return {
        world.account.name,
        world.account.billing_email,
        world.user.name,
        world.invoice.number or "",
        world.overdue.number or "",
        world.paid_invoice.number or "",
        world.dispute.public_id,
        world.payment.receipt_number or "",
        world.payment.public_id,
        "Team",
        "Item 1",
        "Item 2",
        "Visa",
        "Visa ending in 4242",
        world.message.body,
        world.dispute.resolution_note,
        "--",
    }


# -- the recipient's language, whatever the job's ----------------------------------------------


def _job_queues(session: Session, world: EmailWorld) -> dict[str, Any]:
    """Each producer that passes a subject of its own, called as the job or request that runs
    it does (their subjects are computed in the language active there)."""
    from portal.billing.issuing import queue_invoice_issued
    from portal.disputes import services as disputes
    from portal.payments import collection
    from portal.payments.models import PaymentAttempt, PaymentAttemptItem
    from portal.subscriptions import billing_run
    from portal.subscriptions import services as subscriptions

    def action_required() -> None:
        attempt = PaymentAttempt(
            account_id=world.account.id,
            currency=world.account.currency,
            amount_minor=world.invoice.amount_due_minor,
            idempotency_key=f"lang_{world.account.id}",
            status="requires_action",
        )
        session.add(attempt)
        session.flush()
        session.add(
            PaymentAttemptItem(
                attempt_id=attempt.id,
                invoice_id=world.invoice.id,
                amount_minor=world.invoice.amount_due_minor,
            )
        )
        session.flush()
        session.refresh(attempt)
        collection._ask_customer_to_confirm(session, attempt)

    return {
        "invoice_issued": lambda: queue_invoice_issued(session, world.invoice),
        "payment_failed": lambda: billing_run._queue_payment_failed(
            session, world.invoice, "Your card was declined."
        ),
        "action_required": action_required,
        "dispute_received": lambda: disputes._email(
            session, world.account, world.dispute, "dispute_received", None
        ),
        "dispute_resolved": lambda: disputes._email(
            session, world.account, world.dispute, "dispute_resolved", None
        ),
        "subscription_paused": lambda: subscriptions._confirm_by_email(
            session, "subscription_paused", world.subscription, None
        ),
        "subscription_resumed": lambda: subscriptions._confirm_by_email(
            session, "subscription_resumed", world.subscription, None
        ),
    }


@pytest.mark.parametrize(
    "name",
    [
        "invoice_issued",
        "payment_failed",
        "action_required",
        "dispute_received",
        "dispute_resolved",
        "subscription_paused",
        "subscription_resumed",
    ],
)
def test_a_job_running_in_english_writes_a_german_accounts_email_in_german(
    pseudo_app: Flask,  # noqa: F811
    session: Session,
    clock: Any,
    name: str,
) -> None:
    """The producers that pass a subject translated where they run: under English (a worker's
    job, an English-speaking staff member's request) a (pseudo) German account still gets its
    subject and both parts in German."""
    import flask_babel

    world = EmailWorld(session, locale="de_DE", currency="EUR")
    english = pseudo_app.test_request_context("/", headers={"Accept-Language": "en"})
    with english, flask_babel.force_locale("en"):
        assert flask_babel.gettext("Your subscription is paused") == "Your subscription is paused"
        _job_queues(session, world)[name]()
        email = session.scalars(
            select(OutboxEmail).where(OutboxEmail.template == name).order_by(OutboxEmail.id.desc())
        ).first()
        assert email is not None
        # NOTE: an email rendered when it is sent is rendered by the (English) sender here.
        as_sent(session, email)
    assert MARKERS.intersection(email.subject), email.subject
    assert MARKERS.intersection(email.text_body) and MARKERS.intersection(email.html_body)
