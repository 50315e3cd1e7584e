"""Every state change writes an audit event: a harness over every state-changing route in
`app.url_map` (all non-GET rules) and the payment services that change state.

Each non-GET endpoint is in exactly one of: SCENARIOS (a real request that changes state, after
which at least one new audit event must exist) or SKIPPED (with the reason it changes
nothing). A new route in neither fails the test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.audit.models import AuditEvent
from portal.payments import services
from portal.payments.gateway import Card
from portal.payments.models import PaymentAttempt, PaymentMethod
from tests.conftest import login_as
from tests.factories import make_account, make_invoice, make_user
from tests.notifications.auth_objects import make_dead_letter

# NOTE: localstripe, proxy and stripe_app are the payment tests' fixtures, used by name.
from tests.payments.conftest import (  # noqa: F401
    THREE_DS,
    confirm_setup,
    event_body,
    gateway_for,
    localstripe,
    proxy,
    seed_payer,
    sign,
    stripe_app,
)

Scenario = Callable[[FlaskClient, Session, dict[str, Any]], Any]


def _count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(AuditEvent)) or 0)


def _customer(client: FlaskClient, session: Session, ctx: dict[str, Any]) -> Any:
    account, user, invoice, card = seed_payer(
        session,
        gateway_for(ctx["proxy"].url),
        ctx["localstripe"],
        number=ctx.get("number", "") or "4242424242424242",
    )
    login_as(client, user)
    ctx.update(account=account, user=user, invoice=invoice, card=card)
    return account


def _sign_in_by_link(client: FlaskClient, session: Session, user: Any) -> None:
    """The first factor only (login_as would also pass a staff member's second factor)."""
    from datetime import timedelta

    from portal.auth.services import TokenSigner, issue_login_token

    token = issue_login_token(
        session,
        TokenSigner(client.application.config["SECRET_KEYS"]),
        user,
        lifetime=timedelta(minutes=10),
    )
    session.commit()
    assert client.post(f"/login/{token}").status_code == 303


def _expired_link(client: FlaskClient, session: Session, ctx: dict[str, Any]) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from portal import clock
    from portal.auth.models import LoginToken
    from portal.auth.services import TokenSigner, issue_login_token

    user = make_user(session, account=make_account(session))
    ctx["token"] = issue_login_token(
        session,
        TokenSigner(client.application.config["SECRET_KEYS"]),
        user,
        lifetime=timedelta(minutes=10),
    )
    past = clock.now() - timedelta(minutes=30)
    session.execute(
        update(LoginToken)
        .where(LoginToken.user_id == user.id)
        .values(created_at=past, expires_at=past + timedelta(minutes=10))
    )


def _signed_in_twice(client: FlaskClient, session: Session, ctx: dict[str, Any]) -> None:
    from portal.auth.models import UserSession

    user = make_user(session, account=make_account(session))
    login_as(client, user)
    first = set(session.scalars(select(UserSession.public_id)))
    login_as(client.application.test_client(), user)
    session.expire_all()
    [ctx["other_session"]] = set(session.scalars(select(UserSession.public_id))) - first


def _staff_enrolling(client: FlaskClient, session: Session, ctx: dict[str, Any]) -> None:
    ctx["user"] = make_user(session, staff_role="support")
    _sign_in_by_link(client, session, ctx["user"])
    assert client.get("/staff/two-factor/setup").status_code == 200


def _pending_code(session: Session, ctx: dict[str, Any]) -> str:
    import pyotp

    session.refresh(ctx["user"])
    return pyotp.TOTP(ctx["user"].totp_pending_secret).now()


def _staff_signed_in_before_second_factor(
    client: FlaskClient, session: Session, ctx: dict[str, Any]
) -> None:
    import pyotp

    from portal import clock

    user = make_user(session, staff_role="admin")
    user.totp_secret = pyotp.random_base32()
    user.totp_confirmed_at = clock.now()
    session.flush()
    ctx["secret"] = user.totp_secret
    _sign_in_by_link(client, session, user)


def _current_code(ctx: dict[str, Any]) -> str:
    import pyotp

    return pyotp.TOTP(ctx["secret"]).now()


def _pay(client: FlaskClient, session: Session, ctx: dict[str, Any]) -> Any:
    return client.post(
        f"/invoices/{ctx['invoice'].number}/pay", data={"payment_method": ctx["card"].public_id}
    )


def _pay_balance(client: FlaskClient, session: Session, ctx: dict[str, Any]) -> Any:
    return client.post("/pay", data={"scope": "balance", "payment_method": ctx["card"].public_id})


def _three_ds_attempt(client: FlaskClient, session: Session, ctx: dict[str, Any]) -> str:
    ctx["number"] = THREE_DS
    _customer(client, session, ctx)
    _pay(client, session, ctx)
    attempt = session.scalar(
        select(PaymentAttempt).where(PaymentAttempt.account_id == ctx["account"].id)
    )
    assert attempt is not None and attempt.status == "requires_action"
    return attempt.public_id


def _authenticated(ctx: dict[str, Any], session: Session, public_id: str) -> None:
    import requests

    attempt = session.scalar(select(PaymentAttempt).where(PaymentAttempt.public_id == public_id))
    assert attempt is not None and attempt.stripe_payment_intent_id
    secret = (
        gateway_for(ctx["proxy"].url)
        .retrieve_payment_intent(attempt.stripe_payment_intent_id)
        .client_secret
    )
    requests.post(
        f"{ctx['localstripe']}/v1/payment_intents/{attempt.stripe_payment_intent_id}/_authenticate",
        params={"success": "true"},
        json={"key": "pk_test_portal", "client_secret": secret},
        timeout=10,
    ).raise_for_status()


# Each scenario: (set-up, the request under test). Events written by the set-up don't count.
def _staff_with_dispute(
    client: FlaskClient, session: Session, ctx: dict[str, Any], *, paid: bool = False
) -> None:
    from datetime import UTC, datetime

    from portal.billing import services as billing
    from portal.billing.money import Money
    from tests.factories import make_dispute

    account = make_account(session)
    invoice = make_invoice(session, account, (3000,))
    ctx["dispute"] = make_dispute(session, account, invoice, 1000).public_id
    if paid:
        payment = billing.record_payment(
            session,
            account,
            Money(3000, "USD"),
            [(invoice, Money(3000, "USD"))],
            received_at=datetime(2026, 11, 1, tzinfo=UTC),
        )
        payment.stripe_payment_intent_id = f"pi_audit_{payment.public_id}"
        ctx["payment"] = payment.public_id
    session.commit()
    login_as(client, make_user(session, staff_role="support"))


def _with_refunding_gateway(send: Callable[[], Any]) -> Any:
    from unittest.mock import patch

    from portal.payments.gateway import RefundResult

    class Refunding:
        def create_refund(
            self, *, payment_intent: str, amount_minor: int, idempotency_key: str
        ) -> Any:
            return RefundResult(
                id=f"re_{idempotency_key[-10:]}", status="succeeded", amount=amount_minor
            )

    with patch("portal.staff.routes.gateway", lambda: Refunding()):
        return send()


def _approval_waiting(client: FlaskClient, session: Session, ctx: dict[str, Any]) -> None:
    from portal.disputes.models import ApprovalRequest, Dispute

    _staff_with_dispute(client, session, ctx)
    requester = make_user(session, staff_role="support")
    dispute = session.scalar(select(Dispute).where(Dispute.public_id == ctx["dispute"]))
    request = ApprovalRequest(
        kind="credit_note",
        dispute_id=dispute.id,
        account_id=dispute.account_id,
        currency="USD",
        amount_minor=1000,
        payload={"lines": [], "memo": ""},
        requested_by_user_id=requester.id,
    )
    session.add(request)
    session.commit()
    ctx["approval"] = request.public_id
    login_as(client, make_user(session, staff_role="admin"))


SCENARIOS: dict[str, tuple[Scenario, Scenario]] = {
    "checkout.pay_invoice_post": (_customer, _pay),
    "checkout.pay_balance_post": (_customer, _pay_balance),
    "checkout.attempt_refresh": (
        lambda c, s, ctx: (
            ctx.update(attempt=_three_ds_attempt(c, s, ctx))
            or _authenticated(ctx, s, ctx["attempt"])
        ),
        lambda c, s, ctx: c.post(f"/pay/attempts/{ctx['attempt']}/refresh"),
    ),
    "checkout.attempt_cancel": (
        lambda c, s, ctx: ctx.update(attempt=_three_ds_attempt(c, s, ctx)),
        lambda c, s, ctx: c.post(f"/pay/attempts/{ctx['attempt']}/cancel"),
    ),
    "checkout.setup_card": (
        lambda c, s, ctx: login_as(c, make_user(s, account=make_account(s))),
        lambda c, s, ctx: c.post("/payment-methods/setup"),
    ),
    "checkout.add_card": (
        lambda c, s, ctx: (
            login_as(c, make_user(s, account=make_account(s))),
            ctx.update(
                setup=confirm_setup(
                    ctx["localstripe"], c.post("/payment-methods/setup").json["client_secret"]
                )
            ),
        ),
        lambda c, s, ctx: c.post("/payment-methods", data={"setup_intent": ctx["setup"]}),
    ),
    "checkout.default_card": (
        lambda c, s, ctx: (
            _customer(c, s, ctx),
            ctx.update(
                second=services.save_card(
                    s, ctx["account"], Card("pm_audit_second", None, "visa", "1881", 1, 2031)
                )
            ),
        ),
        lambda c, s, ctx: c.post(f"/payment-methods/{ctx['second'].public_id}/default"),
    ),
    "checkout.remove_card": (
        _customer,
        lambda c, s, ctx: c.post(
            f"/payment-methods/{ctx['card'].public_id}/remove", data={"confirm": "1"}
        ),
    ),
    "auth.consume": (
        lambda c, s, ctx: ctx.update(user=make_user(s, account=make_account(s))),
        lambda c, s, ctx: login_as(c, ctx["user"]),
    ),
    "auth.logout": (
        lambda c, s, ctx: login_as(c, make_user(s, account=make_account(s))),
        lambda c, s, ctx: c.post("/logout"),
    ),
    "accounts.sign_out_everywhere": (
        lambda c, s, ctx: login_as(c, make_user(s, account=make_account(s))),
        lambda c, s, ctx: c.post("/account/sign-out-everywhere"),
    ),
    "accounts.details": (
        lambda c, s, ctx: login_as(c, make_user(s, account=make_account(s))),
        lambda c, s, ctx: c.post(
            "/account",
            data={
                "name": "Audited Ltd",
                "billing_email": "audited@example.com",
                "country": "US",
                "locale": "en_US",
            },
        ),
    ),
    "auth.login": (
        lambda c, s, ctx: ctx.update(user=make_user(s, account=make_account(s))),
        lambda c, s, ctx: c.post("/login", data={"email": ctx["user"].email}),
    ),
    "auth.renew": (_expired_link, lambda c, s, ctx: c.post(f"/login/{ctx['token']}/new")),
    "accounts.end_session": (
        _signed_in_twice,
        lambda c, s, ctx: c.post(f"/account/sessions/{ctx['other_session']}/sign-out"),
    ),
    "staff.totp_setup": (
        _staff_enrolling,
        lambda c, s, ctx: c.post("/staff/two-factor/setup", data={"code": _pending_code(s, ctx)}),
    ),
    "staff.totp_verify": (
        _staff_signed_in_before_second_factor,
        lambda c, s, ctx: c.post("/staff/two-factor", data={"code": _current_code(ctx)}),
    ),
    "checkout.stripe_webhook": (
        lambda c, s, ctx: ctx.update(body=event_body("charge.refunded", {"id": "ch_forged"})),
        lambda c, s, ctx: c.post(
            "/webhooks/stripe",
            data=ctx["body"],
            headers={"Stripe-Signature": sign(ctx["body"]), "Content-Type": "application/json"},
        ),
    ),
    # Notifications (issue 12)
    "staff.outbox_retry": (
        lambda c, s, ctx: (
            ctx.update(email=make_dead_letter(s)),
            login_as(c, make_user(s, staff_role="support")),
        ),
        lambda c, s, ctx: c.post(f"/staff/outbox/{ctx['email'].id}/retry"),
    ),
    # Support console (issue 11).
    "staff.view_as_start": (
        lambda c, s, ctx: (
            login_as(c, make_user(s, staff_role="support")),
            ctx.update(account=make_account(s)),
        ),
        lambda c, s, ctx: c.post(f"/staff/customers/{ctx['account'].public_id}/view-as"),
    ),
    "staff.view_as_end": (
        lambda c, s, ctx: (
            login_as(c, make_user(s, staff_role="support")),
            s.commit(),
            c.post(f"/staff/customers/{make_account(s).public_id}/view-as"),
        ),
        lambda c, s, ctx: c.post("/staff/view-as/end"),
    ),
    "staff.dispute_assign": (
        lambda c, s, ctx: _staff_with_dispute(c, s, ctx),
        lambda c, s, ctx: c.post(
            f"/staff/disputes/{ctx['dispute']}/assign", data={"assignee": "me"}
        ),
    ),
    "staff.dispute_reply": (
        lambda c, s, ctx: _staff_with_dispute(c, s, ctx),
        lambda c, s, ctx: c.post(
            f"/staff/disputes/{ctx['dispute']}/reply", data={"body": "On it."}
        ),
    ),
    "staff.dispute_note": (
        lambda c, s, ctx: _staff_with_dispute(c, s, ctx),
        lambda c, s, ctx: c.post(
            f"/staff/disputes/{ctx['dispute']}/note", data={"note-body": "Check usage."}
        ),
    ),
    "staff.dispute_status": (
        lambda c, s, ctx: _staff_with_dispute(c, s, ctx),
        lambda c, s, ctx: c.post(
            f"/staff/disputes/{ctx['dispute']}/status", data={"status": "in_review"}
        ),
    ),
    "staff.dispute_credit": (
        lambda c, s, ctx: _staff_with_dispute(c, s, ctx),
        lambda c, s, ctx: c.post(f"/staff/disputes/{ctx['dispute']}/credit", data={"amount": "5"}),
    ),
    "staff.dispute_refund": (
        lambda c, s, ctx: _staff_with_dispute(c, s, ctx, paid=True),
        lambda c, s, ctx: _with_refunding_gateway(
            lambda: c.post(
                f"/staff/disputes/{ctx['dispute']}/refund",
                data={"payment": ctx["payment"], "amount": "5"},
            )
        ),
    ),
    "staff.dispute_reject": (
        lambda c, s, ctx: _staff_with_dispute(c, s, ctx),
        lambda c, s, ctx: c.post(
            f"/staff/disputes/{ctx['dispute']}/reject",
            data={"explanation": "The seat was used all month."},
        ),
    ),
    "staff.approval_approve": (
        lambda c, s, ctx: _approval_waiting(c, s, ctx),
        lambda c, s, ctx: c.post(f"/staff/approvals/{ctx['approval']}/approve"),
    ),
    "staff.approval_decline": (
        lambda c, s, ctx: _approval_waiting(c, s, ctx),
        lambda c, s, ctx: c.post(f"/staff/approvals/{ctx['approval']}/decline"),
    ),
}

# -- subscriptions (issue 10) ----------------------------------------------------------------------


def _subscriber(client: FlaskClient, session: Session, ctx: dict[str, Any]) -> Any:
    from tests.subscriptions.ladder import customer_on_team

    customer = customer_on_team(session, around_now=True)
    session.commit()
    login_as(client, customer.user)
    ctx.update(sub=customer, base=f"/subscriptions/{customer.subscription.public_id}")
    return customer


def resume_day(subscription: Any) -> str:
    from tests.subscriptions.ladder import resume_day as day

    return day(subscription)


def _sub_post(path: str, **data: str) -> Scenario:
    def act(client: FlaskClient, session: Session, ctx: dict[str, Any]) -> Any:
        session.expire_all()
        version = str(ctx["sub"].subscription.version)
        values = {"version": version, **data}
        if values.get("plan") == "business":
            values["plan"] = ctx["sub"].ladder.plans["business"].code
        if values.get("plan") == "starter":
            values["plan"] = ctx["sub"].ladder.plans["starter"].code
        return client.post(ctx["base"] + path, data=values)

    return act


def _subscriber_then(path: str, **data: str) -> Scenario:
    def setup(client: FlaskClient, session: Session, ctx: dict[str, Any]) -> None:
        _subscriber(client, session, ctx)
        response = _sub_post(path, **data)(client, session, ctx)
        assert response.status_code == 303, response.get_data(as_text=True)

    return setup


# -- disputes (issue 11) ---------------------------------------------------------------------


def _disputing_customer(client: FlaskClient, session: Session, ctx: dict[str, Any]) -> None:
    account = make_account(session)
    login_as(client, make_user(session, account=account))
    ctx["invoice"] = make_invoice(session, account, (1500, 500))


def _open_dispute_form(client: FlaskClient, session: Session, ctx: dict[str, Any]) -> Any:
    return client.post(
        f"/disputes/new?invoice={ctx['invoice'].number}",
        data={
            "scope": "lines",
            "lines": ["1"],
            "amount": "5",
            "reason": "wrong_amount",
            "description": "Too much.",
        },
    )


def _with_dispute(client: FlaskClient, session: Session, ctx: dict[str, Any]) -> None:
    from portal.disputes.models import Dispute

    _disputing_customer(client, session, ctx)
    session.commit()
    assert _open_dispute_form(client, session, ctx).status_code == 303
    ctx["dispute"] = session.scalar(
        select(Dispute.public_id).where(Dispute.invoice_id == ctx["invoice"].id)
    )


SCENARIOS.update(
    {
        "subscriptions.change_post": (_subscriber, _sub_post("/change", plan="business")),
        "subscriptions.cancel_post": (_subscriber, _sub_post("/cancel", reason="other")),
        "subscriptions.pause": (
            _subscriber,
            lambda c, s, ctx: _sub_post(
                "/pause",
                resume_on=resume_day(ctx["sub"].subscription),
            )(c, s, ctx),
        ),
        "subscriptions.resume": (
            lambda c, s, ctx: (
                _subscriber(c, s, ctx),
                setattr(ctx["sub"].subscription, "status", "paused"),
                setattr(
                    ctx["sub"].subscription,
                    "pause_until",
                    ctx["sub"].subscription.current_period_end,
                ),
                s.commit(),
            ),
            _sub_post("/resume"),
        ),
        "subscriptions.reactivate": (
            _subscriber_then("/cancel", reason="other"),
            _sub_post("/reactivate"),
        ),
        "subscriptions.withdraw": (
            _subscriber_then("/change", plan="starter"),
            _sub_post("/withdraw"),
        ),
        "subscriptions.accept_offer": (_subscriber, _sub_post("/offer")),
        "disputes.new": (_disputing_customer, _open_dispute_form),
        "disputes.message": (
            _with_dispute,
            lambda c, s, ctx: c.post(
                f"/disputes/{ctx['dispute']}/messages", data={"body": "Any news?"}
            ),
        ),
        "disputes.withdraw": (
            _with_dispute,
            lambda c, s, ctx: c.post(f"/disputes/{ctx['dispute']}/withdraw"),
        ),
    }
)

SKIPPED: dict[str, str] = {
    "staff.recovery_codes_file": (
        "hands back, as a file, the unused recovery codes the staff member sent; it changes "
        "nothing (the codes stay as they were)"
    ),
}


# -- notifications (issue 12) --------------------------------------------------------------------


def _deep_link(client: FlaskClient, session: Session, ctx: dict[str, Any]) -> None:
    from urllib.parse import urlsplit

    from portal.notifications import deep_links
    from portal.notifications.emails import Target

    account = make_account(session)
    user = make_user(session, email=account.billing_email, account=account)
    invoice = make_invoice(session, account, (1000,))
    url = deep_links.link_for(session, account, user.email, Target("invoice", invoice.id))
    ctx["path"] = urlsplit(url).path


SCENARIOS.update(
    {
        "links.consume": (_deep_link, lambda c, s, ctx: c.post(ctx["path"])),
        "accounts.email_preferences": (
            lambda c, s, ctx: login_as(c, make_user(s, account=make_account(s))),
            lambda c, s, ctx: c.post(
                "/account/email-preferences",
                data={"extra_recipients": "ap@example.com", "remind_before_due": "y"},
            ),
        ),
    }
)


def _state_changing_endpoints(app: Flask) -> set[str]:
    return {
        rule.endpoint
        for rule in app.url_map.iter_rules()
        if (rule.methods or set()) - {"GET", "HEAD", "OPTIONS"}
    }


def test_every_state_changing_route_is_covered_skipped_or_a_known_gap(app: Flask) -> None:
    listed = set(SCENARIOS) | set(SKIPPED)
    unlisted = _state_changing_endpoints(app) - listed
    assert not unlisted, f"state-changing routes with no audit check: {sorted(unlisted)}"
    assert not (set(SCENARIOS) & set(SKIPPED)), "a route is both covered and skipped"
    gone = listed - _state_changing_endpoints(app)
    assert not gone, f"listed routes that no longer exist: {sorted(gone)}"


def _run(
    request: pytest.FixtureRequest, session: Session, scenario: tuple[Scenario, Scenario]
) -> None:
    app: Flask = request.getfixturevalue("stripe_app")
    client = app.test_client()
    ctx: dict[str, Any] = {
        "proxy": request.getfixturevalue("proxy"),
        "localstripe": request.getfixturevalue("localstripe"),
    }
    setup, act = scenario
    setup(client, session, ctx)
    session.commit()
    before = _count(session)
    response = act(client, session, ctx)
    status = getattr(response, "status_code", 303)
    assert status < 400, getattr(response, "get_data", lambda **_: "")(as_text=True)
    session.expire_all()
    assert _count(session) > before, "the request changed state but wrote no audit event"


@pytest.mark.parametrize("endpoint", sorted(SCENARIOS))
def test_a_state_changing_route_writes_an_audit_event(
    request: pytest.FixtureRequest, session: Session, endpoint: str
) -> None:
    _run(request, session, SCENARIOS[endpoint])


# -- the payment services that change state ------------------------------------------------------


def _card(session: Session) -> tuple[Any, PaymentMethod]:
    account = make_account(session)
    account.stripe_customer_id = f"cus_audit_{account.id}"
    row = services.save_card(
        session, account, Card(f"pm_audit_{account.id}", None, "visa", "4242", 1, 2031)
    )
    return account, row


SERVICE_CHANGES: dict[str, Callable[[Session], Any]] = {
    "save_card": lambda s: _card(s),
    "make_default": lambda s: (
        lambda account, first: services.make_default(
            s,
            account,
            services.save_card(
                s, account, Card(f"pm_b_{account.id}", None, "visa", "1111", 1, 2031)
            ),
        )
    )(*_card(s)),
    "remove_card": lambda s: (lambda account, row: services.remove_card(s, account, row.public_id))(
        *_card(s)
    ),
    "forget_card": lambda s: services.forget_card(s, _card(s)[1]),
    "start_payment+record_charge": lambda s: _charge_outcome(s),
}


def _charge_outcome(session: Session) -> None:
    account, row = _card(session)
    invoice = make_invoice(session, account, (1200,))
    started = services.start_payment(session, account, [invoice], payment_method=row)
    services.record_charge(session, started.attempt, services.ChargeOutcome("unknown"))


# pay-collect: off-session collection with the saved card (Stripe does not answer here).
class _SilentGateway:
    def create_payment_intent(self, **_kwargs: Any) -> Any:
        from portal.payments.gateway import GatewayUnavailable

        raise GatewayUnavailable()


def _collect(session: Session) -> None:
    from portal.audit.services import SYSTEM
    from portal.payments.collection import collect_invoice

    account, _row = _card(session)
    invoice = make_invoice(session, account, (1200,))
    outcome = collect_invoice(session, invoice.id, _SilentGateway(), actor=SYSTEM, reason="retry")  # type: ignore[arg-type]
    assert outcome.status == "processing"


SERVICE_CHANGES["collect_invoice"] = _collect


@pytest.mark.parametrize("service", sorted(SERVICE_CHANGES))
def test_a_state_changing_payment_service_writes_an_audit_event(
    session: Session, service: str
) -> None:
    before = _count(session)
    SERVICE_CHANGES[service](session)
    session.flush()
    assert _count(session) > before
