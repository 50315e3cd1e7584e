"""The authorization harness: every route in app.url_map, as every kind of visitor.

Each route must be declared in RULES with the status every role gets. The "other" role is a
customer of another account who uses the owner's object ids: they must get 404, exactly like a
missing object. A route that is not declared here fails the test, so new routes cannot ship
without an access decision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from portal.accounts.models import Account, Membership, User
from portal.billing import services as billing
from portal.billing.models import Invoice
from portal.billing.money import Money
from portal.extensions import db
from tests.accounts.auth_objects import owner_session
from tests.conftest import login_as
from tests.disputes.auth_objects import owner_attachment, owner_dispute
from tests.notifications.auth_objects import dead_letter
from tests.notifications.deep_link_objects import owner_deep_link
from tests.payments.auth_objects import owner_attempt, owner_card
from tests.subscriptions.auth_objects import owner_subscription

ROLES = ("anonymous", "owner", "other", "support", "admin", "view_as")
SELLER = {"name": "Seller Ltd.", "address": "1 Street", "tax_id": "X1", "email": "s@example.com"}


@dataclass
class World:
    """The owner's objects, whose ids every role tries."""

    owner: User
    other: User
    support: User
    admin: User
    account: Account
    invoice: Invoice
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Rule:
    method: str
    path: Callable[[World], str]
    expect: dict[str, int]


def signed_in_only(owner: int = 200, staff: int = 404) -> dict[str, int]:
    return {"anonymous": 303, "owner": owner, "other": owner, "support": staff, "admin": staff}


def staff_only(staff: int = 200) -> dict[str, int]:
    return {"anonymous": 303, "owner": 404, "other": 404, "support": staff, "admin": staff}


def own_object(owner: int = 200) -> dict[str, int]:
    """The owner's object by id: another customer and staff get 404, like a missing one."""
    return {"anonymous": 303, "owner": owner, "other": 404, "support": 404, "admin": 404}


def public(status: int = 200) -> dict[str, int]:
    return dict.fromkeys(ROLES, status)


# (endpoint, method) -> rule. Paths are built from the owner's objects.
RULES: dict[tuple[str, str], Rule] = {
    ("health.healthz", "GET"): Rule("GET", lambda w: "/healthz", public()),
    ("auth.login", "GET"): Rule("GET", lambda w: "/login", public()),
    ("auth.login", "POST"): Rule("POST", lambda w: "/login", public(422)),
    ("auth.confirm", "GET"): Rule("GET", lambda w: "/login/not-a-token", public(400)),
    ("auth.consume", "POST"): Rule("POST", lambda w: "/login/not-a-token", public(400)),
    ("auth.logout", "POST"): Rule("POST", lambda w: "/logout", public(303)),
    ("auth.renew", "POST"): Rule("POST", lambda w: "/login/not-a-token/new", public(400)),
    # Staff have no customer dashboard: "/" sends them to /staff/ (the logo, the 404 page).
    ("billing.dashboard", "GET"): Rule("GET", lambda w: "/", signed_in_only(staff=303)),
    ("billing.invoices", "GET"): Rule("GET", lambda w: "/invoices", signed_in_only()),
    ("billing.invoice_detail", "GET"): Rule(
        "GET", lambda w: f"/invoices/{w.invoice.number}", own_object()
    ),
    ("billing.statements", "GET"): Rule("GET", lambda w: "/statements", signed_in_only()),
    ("payments.history", "GET"): Rule("GET", lambda w: "/payments", signed_in_only()),
    ("payments.receipt", "GET"): Rule(
        "GET", lambda w: f"/payments/{w.extra['payment']}", own_object()
    ),
    ("billing.invoice_pdf", "GET"): Rule(
        "GET", lambda w: f"/invoices/{w.invoice.number}/pdf", own_object()
    ),
    # Another customer has no invoices that year: a friendly 404, never the owner's ZIP.
    ("billing.invoice_export", "GET"): Rule(
        "GET", lambda w: f"/invoices/export?year={w.invoice.issue_date.year}", own_object()
    ),
    ("payments.receipt_pdf", "GET"): Rule(
        "GET", lambda w: f"/payments/{w.extra['payment']}/pdf", own_object()
    ),
    ("accounts.details", "GET"): Rule("GET", lambda w: "/account", signed_in_only()),
    # An empty form: the owner gets the form back with messages, and changes nothing.
    ("accounts.details", "POST"): Rule("POST", lambda w: "/account", signed_in_only(422)),
    # Another user's (or staff's) try at the owner's session id: 404, like a missing one.
    ("accounts.end_session", "POST"): Rule(
        "POST", lambda w: f"/account/sessions/{owner_session(w)}/sign-out", own_object(303)
    ),
    ("accounts.sign_out_everywhere", "POST"): Rule(
        "POST", lambda w: "/account/sign-out-everywhere", signed_in_only(303, staff=303)
    ),
    # Staff pages: customers never learn they exist; staff have passed TOTP in login_as.
    ("staff.home", "GET"): Rule("GET", lambda w: "/staff/", staff_only()),
    ("staff.totp_verify", "GET"): Rule("GET", lambda w: "/staff/two-factor", staff_only(303)),
    ("staff.totp_verify", "POST"): Rule("POST", lambda w: "/staff/two-factor", staff_only(303)),
    ("staff.totp_setup", "GET"): Rule("GET", lambda w: "/staff/two-factor/setup", staff_only(303)),
    ("staff.totp_setup", "POST"): Rule(
        "POST", lambda w: "/staff/two-factor/setup", staff_only(303)
    ),
    # No codes sent back: nothing of this user's to hand over.
    ("staff.recovery_codes_file", "POST"): Rule(
        "POST", lambda w: "/staff/two-factor/recovery-codes.txt", staff_only(404)
    ),
    # Payments (issue 5). Tests never reach Stripe (STRIPE_API_BASE is a closed port): routes
    # that must ask Stripe answer 503 "could not reach the payment provider", changing nothing.
    ("checkout.pay_invoice", "GET"): Rule(
        "GET", lambda w: f"/invoices/{w.invoice.number}/pay", own_object()
    ),
    # No card chosen: the owner is asked to choose one; another account's invoice is 404.
    ("checkout.pay_invoice_post", "POST"): Rule(
        "POST", lambda w: f"/invoices/{w.invoice.number}/pay", own_object(422)
    ),
    ("checkout.pay_balance", "GET"): Rule("GET", lambda w: "/pay", signed_in_only()),
    ("checkout.pay_balance_post", "POST"): Rule("POST", lambda w: "/pay", signed_in_only(422)),
    ("checkout.attempt_status", "GET"): Rule(
        "GET", lambda w: f"/pay/attempts/{owner_attempt(w)}", own_object()
    ),
    ("checkout.attempt_refresh", "POST"): Rule(
        "POST", lambda w: f"/pay/attempts/{owner_attempt(w)}/refresh", own_object(303)
    ),
    ("checkout.attempt_cancel", "POST"): Rule(
        "POST", lambda w: f"/pay/attempts/{owner_attempt(w)}/cancel", own_object(303)
    ),
    ("checkout.payment_methods", "GET"): Rule(
        "GET", lambda w: "/payment-methods", signed_in_only()
    ),
    ("checkout.setup_card", "POST"): Rule(
        "POST", lambda w: "/payment-methods/setup", signed_in_only(503)
    ),
    ("checkout.add_card", "POST"): Rule("POST", lambda w: "/payment-methods", signed_in_only(422)),
    ("checkout.default_card", "POST"): Rule(
        "POST", lambda w: f"/payment-methods/{owner_card(w)}/default", own_object(303)
    ),
    # Ownership is checked before Stripe hears of the card: another account gets 404. The
    # owner's first POST (no confirm=1) is the confirm step: 200, nothing removed.
    ("checkout.remove_card", "POST"): Rule(
        "POST", lambda w: f"/payment-methods/{owner_card(w)}/remove", own_object(200)
    ),
    ("checkout.stripe_webhook", "POST"): Rule("POST", lambda w: "/webhooks/stripe", public(400)),
    # Notifications (issue 12): undelivered emails and their retry, staff only.
    ("staff.outbox", "GET"): Rule("GET", lambda w: "/staff/outbox", staff_only()),
    ("staff.outbox_retry", "POST"): Rule(
        "POST", lambda w: f"/staff/outbox/{dead_letter(w)}/retry", staff_only(303)
    ),
    # Subscriptions (issue 10). A POST without its form's fields changes nothing: the owner is
    # told what is missing (422); another account's subscription is 404, like a missing one.
    ("subscriptions.index", "GET"): Rule("GET", lambda w: "/subscriptions", signed_in_only()),
    ("subscriptions.detail", "GET"): Rule(
        "GET", lambda w: f"/subscriptions/{owner_subscription(w)}", own_object()
    ),
    ("subscriptions.change", "GET"): Rule(
        "GET", lambda w: f"/subscriptions/{owner_subscription(w)}/change", own_object()
    ),
    ("subscriptions.change_post", "POST"): Rule(
        "POST", lambda w: f"/subscriptions/{owner_subscription(w)}/change", own_object(422)
    ),
    ("subscriptions.cancel", "GET"): Rule(
        "GET", lambda w: f"/subscriptions/{owner_subscription(w)}/cancel", own_object()
    ),
    ("subscriptions.cancel_post", "POST"): Rule(
        "POST", lambda w: f"/subscriptions/{owner_subscription(w)}/cancel", own_object(422)
    ),
    ("subscriptions.pause", "POST"): Rule(
        "POST", lambda w: f"/subscriptions/{owner_subscription(w)}/pause", own_object(422)
    ),
    ("subscriptions.resume", "POST"): Rule(
        "POST", lambda w: f"/subscriptions/{owner_subscription(w)}/resume", own_object(422)
    ),
    ("subscriptions.reactivate", "POST"): Rule(
        "POST", lambda w: f"/subscriptions/{owner_subscription(w)}/reactivate", own_object(422)
    ),
    ("subscriptions.withdraw", "POST"): Rule(
        "POST", lambda w: f"/subscriptions/{owner_subscription(w)}/withdraw", own_object(422)
    ),
    ("subscriptions.accept_offer", "POST"): Rule(
        "POST", lambda w: f"/subscriptions/{owner_subscription(w)}/offer", own_object(422)
    ),
    # Support console (issue 11). "view_as" is a support user viewing the owner's account as
    # its customer sees it: see view_as_expectation for what it gets when a rule is silent.
    ("staff.customers", "GET"): Rule("GET", lambda w: "/staff/customers?q=owner", staff_only()),
    ("staff.customer", "GET"): Rule(
        "GET", lambda w: f"/staff/customers/{w.account.public_id}", staff_only()
    ),
    ("staff.view_as_start", "POST"): Rule(
        "POST", lambda w: f"/staff/customers/{w.account.public_id}/view-as", staff_only(303)
    ),
    ("staff.view_as_end", "POST"): Rule("POST", lambda w: "/staff/view-as/end", staff_only(303)),
    ("staff.audit", "GET"): Rule("GET", lambda w: "/staff/audit?action=staff.", staff_only()),
    ("staff.dispute", "GET"): Rule(
        "GET", lambda w: f"/staff/disputes/{owner_dispute(w)}", staff_only()
    ),
    # Empty forms: assigning nobody is a change (303); the rest ask for what is missing (422).
    ("staff.dispute_assign", "POST"): Rule(
        "POST", lambda w: f"/staff/disputes/{owner_dispute(w)}/assign", staff_only(303)
    ),
    **{
        (f"staff.dispute_{action}", "POST"): Rule(
            "POST",
            lambda w, action=action: f"/staff/disputes/{owner_dispute(w)}/{action}",
            staff_only(422),
        )
        for action in ("reply", "note", "status", "credit", "refund", "reject")
    },
    ("staff.approvals", "GET"): Rule("GET", lambda w: "/staff/approvals", staff_only()),
    # Only an admin decides (support: 403); each rule gets its own request, asked by support.
    ("staff.approval_approve", "POST"): Rule(
        "POST",
        lambda w: f"/staff/approvals/{owner_approval(w, 'approve')}/approve",
        {**staff_only(303), "support": 403},
    ),
    ("staff.approval_decline", "POST"): Rule(
        "POST",
        lambda w: f"/staff/approvals/{owner_approval(w, 'decline')}/decline",
        {**staff_only(303), "support": 403},
    ),
    # Disputes (issue 11): another account's invoice, dispute or file is a 404 like a missing
    # one; staff work disputes in the console, not on customer pages.
    ("disputes.index", "GET"): Rule("GET", lambda w: "/disputes", signed_in_only()),
    ("disputes.new", "GET"): Rule(
        "GET", lambda w: f"/disputes/new?invoice={w.invoice.number}", own_object()
    ),
    # An empty form: the owner gets it back with messages, nothing is opened.
    ("disputes.new", "POST"): Rule(
        "POST", lambda w: f"/disputes/new?invoice={w.invoice.number}", own_object(422)
    ),
    ("disputes.detail", "GET"): Rule(
        "GET", lambda w: f"/disputes/{owner_dispute(w)}", own_object()
    ),
    ("disputes.message", "POST"): Rule(
        "POST", lambda w: f"/disputes/{owner_dispute(w)}/messages", own_object(422)
    ),
    ("disputes.withdraw", "POST"): Rule(
        "POST", lambda w: f"/disputes/{owner_dispute(w)}/withdraw", own_object(303)
    ),
    ("disputes.attachment", "GET"): Rule("GET", owner_attachment, own_object()),
}

# Notifications (issue 12). A deep link from an email: anyone may see its confirm page (a mail
# scanner, a signed-out owner); someone else signed in is refused like another account's object
# (404, telling nothing about it). The owner's POST opens the invoice (303); a signed-out POST
# signs the link's owner in (303). Each rule call makes a fresh link.
RULES.update(
    {
        ("links.confirm", "GET"): Rule(
            "GET",
            owner_deep_link,
            {"anonymous": 200, "owner": 200, "other": 404, "support": 404, "admin": 404},
        ),
        ("links.consume", "POST"): Rule(
            "POST",
            owner_deep_link,
            {"anonymous": 303, "owner": 303, "other": 404, "support": 404, "admin": 404},
        ),
        # Unticked boxes are a valid choice (both opt-outs on): saved, 303.
        ("accounts.email_preferences", "POST"): Rule(
            "POST", lambda w: "/account/email-preferences", signed_in_only(303)
        ),
    }
)

# Support console (issue 11, staff-files): staff download any file of a dispute, the
# customer's or an internal one, at the customer URL's path under /staff.
RULES.update(
    {
        ("staff.dispute_file", "GET"): Rule(
            "GET", lambda w: f"/staff{owner_attachment(w)}", staff_only()
        ),
    }
)

# While viewing as a customer, a request that changes state is refused (403), except these.
VIEW_AS_ALLOWED = {"staff.view_as_end", "auth.logout", "auth.consume"}


def view_as_expectation(endpoint: str, rule: Rule) -> int:
    """What a staff member viewing the owner's portal gets when the rule says nothing: a
    read exactly as the owner (customer pages) or as staff (staff pages), never a change."""
    if rule.method != "GET" and endpoint not in VIEW_AS_ALLOWED:
        return 403
    if endpoint == "links.confirm":
        # NOTE: someone viewing as the customer is still a staff member: an emailed link is not
        # theirs, so its confirm page answers as for another signed-in person.
        return rule.expect["other"]
    return rule.expect["support" if endpoint.startswith("staff.") else "owner"]


IGNORED_ENDPOINTS = {"static"}


def owner_approval(w: World, key: str) -> str:
    """A credit above support's limit on a dispute of its own, waiting for an admin."""
    if key not in w.extra:
        from portal.disputes.models import ApprovalRequest
        from tests.factories import make_dispute

        session = db.session
        invoice = billing.create_draft_invoice(
            session, w.account, [billing.LineInput(description="Seats", unit_amount_minor=90000)]
        )
        billing.finalize_invoice(session, invoice, seller=SELLER)
        dispute = make_dispute(session, w.account, invoice, 50000)
        request = ApprovalRequest(
            kind="credit_note",
            dispute_id=dispute.id,
            account_id=w.account.id,
            currency="USD",
            amount_minor=50000,
            payload={"lines": [], "memo": ""},
            requested_by_user_id=w.support.id,
        )
        session.add(request)
        session.commit()
        w.extra[key] = request.public_id
    return w.extra[key]


def _make_customer(session: Session, email: str, name: str, prefix: str) -> tuple[User, Account]:
    user = User(email=email, name=name)
    account = Account(
        name=name, billing_email=email, currency="USD", invoice_prefix=prefix, country="US"
    )
    session.add_all([user, account])
    session.flush()
    session.add(Membership(user_id=user.id, account_id=account.id, role="owner"))
    session.flush()
    return user, account


@pytest.fixture()
def world(session: Session) -> World:
    owner, account = _make_customer(session, "owner@example.com", "Owner Co", "OWN")
    other, _ = _make_customer(session, "other@example.com", "Other Co", "OTH")
    support = User(email="support-t@example.com", staff_role="support")
    admin = User(email="admin-t@example.com", staff_role="admin")
    session.add_all([support, admin])
    invoice = billing.create_draft_invoice(
        session, account, [billing.LineInput(description="Team plan", unit_amount_minor=5000)]
    )
    billing.finalize_invoice(session, invoice, seller=SELLER)
    # A payment kept as credit (the invoice stays open for the routes that need that).
    payment = billing.record_payment(
        session, account, Money(1000, "USD"), [], received_at=datetime.now(UTC)
    )
    # NOTE: committed (to the test's outer transaction) so a route's rollback after a domain
    # error cannot take the world with it.
    session.commit()
    world = World(owner, other, support, admin, account, invoice)
    world.extra["payment"] = payment.public_id
    return world


def declared_routes(app: Flask) -> set[tuple[str, str]]:
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint in IGNORED_ENDPOINTS:
            continue
        for method in rule.methods or ():
            if method not in {"HEAD", "OPTIONS"}:
                routes.add((rule.endpoint, method))
    return routes


def test_every_route_has_an_access_rule(app: Flask) -> None:
    undeclared = declared_routes(app) - set(RULES)
    assert not undeclared, f"routes without an authorization rule: {sorted(undeclared)}"
    stale = set(RULES) - declared_routes(app)
    assert not stale, f"rules for routes that no longer exist: {sorted(stale)}"


@pytest.mark.parametrize("role", ROLES)
def test_every_route_answers_each_role_as_declared(
    app: Flask, session: Session, world: World, role: str
) -> None:
    failures = []
    for (endpoint, _method), rule in sorted(RULES.items()):
        client: FlaskClient = app.test_client()
        user = getattr(world, role, None) if role not in ("anonymous", "view_as") else None
        if user is not None:
            login_as(client, user)
        if role == "view_as":
            login_as(client, world.support)
            started = client.post(f"/staff/customers/{world.account.public_id}/view-as")
            assert started.status_code == 303
        path = rule.path(world)
        response = client.open(path, method=rule.method)
        expected = view_as_expectation(endpoint, rule) if role == "view_as" else rule.expect[role]
        if response.status_code != expected:
            failures.append(
                f"{rule.method} {path} ({endpoint}) as {role}: "
                f"{response.status_code}, expected {expected}"
            )
    assert not failures, "\n".join(failures)
