"""The dispute queue: filters, sorting, the deadline indicator, pages, an HTMX partial."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from portal import clock as portal_clock
from portal.disputes.models import Dispute
from portal.staff.queue import QueueFilters, due_state, queue_statement
from tests.conftest import login_as
from tests.factories import make_account, make_invoice, make_user
from tests.staff.helpers import make_dispute

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def _world(session: Session) -> dict[str, Any]:
    ada = make_account(session, name="Ada Lovelace Studio")
    kenji = make_account(session, currency="JPY", name="Kenji Foods")
    support = make_user(session, "queue-support@example.com", staff_role="support")
    other = make_user(session, "queue-other@example.com", staff_role="support")
    small = make_dispute(
        session,
        ada,
        make_invoice(session, ada, (1250,)),
        created_at=NOW - timedelta(days=3),
        response_due_at=NOW - timedelta(hours=1),  # late
    )
    large = make_dispute(
        session,
        ada,
        make_invoice(session, ada, (90000,)),
        created_at=NOW - timedelta(hours=2),
        response_due_at=NOW + timedelta(hours=3),  # due soon
        assigned_to_user_id=support.id,
    )
    yen = make_dispute(
        session,
        kenji,
        make_invoice(session, kenji, (5000,)),
        created_at=NOW - timedelta(days=10),
        response_due_at=NOW + timedelta(days=1),
        assigned_to_user_id=other.id,
    )
    closed = make_dispute(
        session, ada, make_invoice(session, ada, (700,)), status="resolved", resolution="refund"
    )
    session.commit()
    return {
        "support": support,
        "other": other,
        "small": small,
        "large": large,
        "yen": yen,
        "closed": closed,
    }


def _ids(session: Session, filters: QueueFilters, me: Any) -> list[int]:
    rows = session.execute(queue_statement(filters, me=me, now=NOW)).all()
    return [row[0].id for row in rows]


def test_filters_and_sorting(session: Session, clock: Any) -> None:
    w = _world(session)
    me = w["support"]
    small, large, yen, closed = (w[k].id for k in ("small", "large", "yen", "closed"))
    # Default: open ones, earliest deadline first.
    assert _ids(session, QueueFilters(), me) == [small, large, yen]
    assert _ids(session, QueueFilters(status="all", sort="newest"), me)[0] == closed
    assert _ids(session, QueueFilters(status="resolved"), me) == [closed]
    assert _ids(session, QueueFilters(age="late"), me) == [small]
    assert _ids(session, QueueFilters(age="7"), me) == [yen]
    assert _ids(session, QueueFilters(assignee="me"), me) == [large]
    assert _ids(session, QueueFilters(assignee="none"), me) == [small]
    assert _ids(session, QueueFilters(assignee=w["other"].public_id), me) == [yen]
    assert _ids(session, QueueFilters(source="chargeback"), me) == []
    # Amounts in each dispute's own major units: 12.50 USD, 900.00 USD, 5000 JPY.
    from decimal import Decimal

    assert _ids(session, QueueFilters(amount_min=Decimal("100")), me) == [large, yen]
    assert _ids(session, QueueFilters(amount_max=Decimal("12.50")), me) == [small]
    assert _ids(session, QueueFilters(amount_min=Decimal("1000")), me) == [yen]
    assert _ids(session, QueueFilters(sort="amount"), me) == [yen, large, small]
    assert _ids(session, QueueFilters(sort="oldest"), me) == [yen, small, large]


def test_the_deadline_indicator(session: Session) -> None:
    w = _world(session)
    assert due_state(w["small"], NOW).kind == "late"
    assert due_state(w["large"], NOW).kind == "soon"
    assert due_state(w["yen"], NOW).kind == "ok"
    assert due_state(w["closed"], NOW).kind == "closed"
    w["yen"].first_response_at = NOW
    assert due_state(w["yen"], NOW).kind == "answered"


def test_the_queue_page_without_js_and_as_an_htmx_partial(
    client: FlaskClient, session: Session, clock: Any
) -> None:
    w = _world(session)
    login_as(client, w["support"])
    page = client.get("/staff/")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert html.count('data-testid="queue-row"') == 3
    assert "Answer was due" in html and "Answer due by" in html
    assert "<form" in html and 'method="get"' in html  # works without JavaScript
    partial = client.get("/staff/?assignee=me", headers={"HX-Request": "true"})
    body = partial.get_data(as_text=True)
    assert "<html" not in body and body.count('data-testid="queue-row"') == 1
    assert "HX-Request" in partial.headers.get("Vary", "")
    # Bad filters: a message, the default list, never a 500.
    for query in ("status=bogus", "amount_min=-5", "amount_min=1e9", "sort=%00", "page=99999999"):
        response = client.get(f"/staff/?{query}")
        assert response.status_code == 200, query


def test_the_queue_pages(client: FlaskClient, session: Session, clock: Any) -> None:
    account = make_account(session)
    support = make_user(session, staff_role="support")
    invoice = make_invoice(session, account, (100,) * 30)
    for position in range(30):
        session.add(
            Dispute(
                account_id=account.id,
                invoice_id=invoice.id,
                currency="USD",
                amount_minor=100,
                reason="other",
                created_at=portal_clock.now() - timedelta(minutes=position),
                response_due_at=portal_clock.now() + timedelta(hours=position),
            )
        )
    session.commit()
    login_as(client, support)
    first = client.get("/staff/").get_data(as_text=True)
    assert first.count('data-testid="queue-row"') == 25 and 'rel="next"' in first
    second = client.get("/staff/?page=2").get_data(as_text=True)
    assert second.count('data-testid="queue-row"') == 5 and 'rel="prev"' in second


def test_a_card_chargeback_sits_in_the_same_queue_with_its_evidence_deadline(
    client: FlaskClient, session: Session, clock: Any
) -> None:
    from portal.billing import services as billing
    from portal.billing.money import Money

    account = make_account(session, name="Chargeback Customer")
    invoice = make_invoice(session, account, (9900,))
    payment = billing.record_payment(
        session, account, Money(9900, "USD"), [(invoice, Money(9900, "USD"))], received_at=NOW
    )
    payment.stripe_payment_intent_id = "pi_cb_queue"
    chargeback = make_dispute(
        session,
        account,
        invoice,
        source="chargeback",
        payment=payment,
        stripe_dispute_id="dp_queue",
        stripe_reason="fraudulent",
        evidence_due_by=NOW + timedelta(days=5),
        fee_minor=1500,
    )
    support = make_user(session, staff_role="support")
    session.commit()
    login_as(client, support)
    html = client.get("/staff/?source=chargeback").get_data(as_text=True)
    assert html.count('data-testid="queue-row"') == 1
    assert "Chargeback Customer" in html and "Evidence due by" in html
    page = client.get(f"/staff/disputes/{chargeback.public_id}").get_data(as_text=True)
    assert 'data-testid="evidence-due"' in page
    assert "Stripe Dashboard" in page  # answered with evidence at Stripe
    assert "Issue credit note and resolve" not in page  # the bank decides, not a credit here
    assert "$15.00" in page  # the fee Stripe took
