"""The invoice list's rows, formatted in Python (portal.billing.rows): the markup the page's
template wrote itself, in every state a row can be in (both databases)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from portal.billing import services
from portal.billing.money import Money
from portal.clock import FrozenClock
from tests.conftest import login_as
from tests.factories import make_account, make_invoice, make_user


def _cards(body: str) -> dict[str, str]:
    cards = re.findall(r'<li class="item-card.*?</li>', body, flags=re.S)
    return {re.search(r'href="/invoices/([^"]+)"', card).group(1): card for card in cards}  # type: ignore[union-attr]


def test_each_state_of_a_row_is_written_as_the_template_wrote_it(
    app: Flask, client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    # NOTE: performance work of issue 9: the rows' texts are formatted with markup_format, the
    # page's locale and time zone asked once, and the foot joined without Markup's `%`; this
    # pins the markup each state printed before (checked against the previous code's pages).
    clock.set(datetime(2026, 11, 21, 15, tzinfo=UTC))
    account = make_account(session, payment_terms_days=10)
    login_as(client, make_user(session, account=account))
    overdue = make_invoice(session, account, [7500], issue_date=date(2026, 11, 1))
    services.record_payment(
        session,
        account,
        Money(2500, "USD"),
        [(overdue, Money(2500, "USD"))],
        received_at=clock(),
        method_description="Visa ·4242",
    )
    paid = make_invoice(session, account, [1200], issue_date=date(2026, 11, 5))
    services.record_payment(
        session,
        account,
        Money(1200, "USD"),
        [(paid, Money(1200, "USD"))],
        received_at=datetime(2026, 11, 6, 3, tzinfo=UTC),  # Nov 5 in New York
        method_description="Visa ·4242",
    )
    void = make_invoice(session, account, [300], issue_date=date(2026, 11, 7))
    services.void_invoice(session, void, voided_at=datetime(2026, 11, 8, 12, tzinfo=UTC))
    soon = make_invoice(session, account, [990], issue_date=date(2026, 11, 14))
    cards = _cards(client.get("/invoices").get_data(as_text=True))
    with app.test_request_context("/"):
        icon = app.jinja_env.globals["cached_icon"]
        alert, check, cross, clock_icon = (
            icon(name, "icon icon--sm") for name in ("alert", "check-circle", "x-circle", "clock")
        )
    zone_day = "Nov 5, 2026" if account.timezone == "America/New_York" else "Nov 6, 2026"

    card = cards[str(overdue.number)]
    assert '<li class="item-card item-card--danger">' in card
    assert (
        '<p class="item-card__amount"><span class="visually-hidden">Amount due: </span>$50.00</p>'
    ) in card
    assert (
        '<p class="item-card__meta">Issued Nov 1, 2026 <span aria-hidden="true">·</span>'
        " $75.00 total</p>"
    ) in card
    assert (
        f'<p class="item-card__foot item-card__foot--danger">\n      {alert}\n      <span>Was due'
        ' Nov 11, 2026 <span aria-hidden="true">·</span> <strong>10 days overdue</strong>'
        "</span>\n    </p>"
    ) in card

    card = cards[str(paid.number)]
    assert '<span class="visually-hidden">Total: </span>$12.00</p>' in card
    assert '<p class="item-card__meta">Issued Nov 5, 2026</p>' in card
    assert (
        f'<p class="item-card__foot">\n      {check}<span>Paid on {zone_day}</span>\n    </p>'
    ) in card

    card = cards[str(void.number)]
    assert (
        f'<p class="item-card__foot">\n      {cross}<span>Voided on Nov 8, 2026; nothing is owed'
        "</span>\n    </p>"
    ) in card

    card = cards[str(soon.number)]
    assert (
        f'<p class="item-card__foot">\n      {clock_icon}\n      <span>Due Nov 24, 2026'
        ' <span aria-hidden="true">·</span> in 3 days</span>\n    </p>'
    ) in card
