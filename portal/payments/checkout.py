"""Paying: the pay page, the attempt's status page and saved cards (Stripe's webhook lives in
portal/payments/webhooks.py).

Card numbers never reach us: new cards go from the browser to Stripe (Stripe.js card Element).
On the pay page a new card pays one PaymentIntent made for it (`_start_card_entry`), which the
browser confirms with the card (Stripe.js confirmCardPayment), so 3-D Secure is asked once; the
card is saved from the intent once it paid (services.adopt_card_of_intent). Payment methods
saves a card without paying through a SetupIntent. Either way we check what Stripe hands back
belongs to the account.

No transaction is open while Stripe is called: a route reads the plain values it needs, ends
its reads (`services.end_reads`), calls Stripe, then writes what Stripe said in the rest of the
request's unit of work. Paying commits once in between (the attempt and its idempotency key
must be durable before Stripe hears of them): `portal.db.commit_before_network_call`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, abort, current_app, flash, jsonify, request, url_for
from flask_babel import gettext as _
from flask_login import login_required
from sqlalchemy import select

from portal import clock
from portal.audit.services import Actor
from portal.auth.sessions import current_account, signed_in_user
from portal.billing.models import Invoice
from portal.db import after_commit, commit_before_network_call
from portal.errors import Conflict, NotFound, ValidationFailed
from portal.extensions import db
from portal.payments import services, webhooks
from portal.payments.gateway import Card, GatewayRejected, GatewayUnavailable, gateway
from portal.payments.models import (
    LIVE_ATTEMPT_STATUSES,
    AttemptStatus,
    PaymentAttempt,
    PaymentAttemptItem,
    PaymentMethod,
)
from portal.web import render_page, see_other

log = logging.getLogger(__name__)

bp = Blueprint("checkout", __name__)


def _actor() -> Actor:
    user = signed_in_user()
    return Actor(kind="customer", user_id=user.id if user else None, ip=request.remote_addr)


def _stripe_context() -> dict[str, str]:
    return {
        "stripe_js_url": current_app.config["STRIPE_JS_URL"],
        "stripe_key": current_app.config["STRIPE_PUBLISHABLE_KEY"],
    }


def _invoices_from_request(account_id: int, number: str | None) -> list[str]:
    if number:
        return [number]
    chosen = [n.strip()[:40] for n in request.values.getlist("invoice") if n.strip()]
    if request.values.get("scope") == "balance" or (not chosen and not _from_chooser()):
        account = current_account()
        return [invoice.number or "" for invoice in services.payable_invoices(db.session, account)]
    return chosen


def _from_chooser() -> bool:
    """The request comes from the chooser on /pay: no invoice ticked means none, not all."""
    return request.values.get("choose") == "1"


def _wants_card_saved() -> bool:
    # NOTE: the form sends save_card=0 (hidden) then save_card=1 (the checkbox, when ticked);
    # a client that sends neither keeps the old behaviour: the card is saved.
    values = request.form.getlist("save_card")
    return "1" in values or not values


@dataclass(frozen=True)
class _CardChoice:
    """The card to charge, in plain values: a saved card of the account, or a new card that
    Stripe just verified (through a SetupIntent) and that is not in our database yet."""

    saved_id: int | None = None
    new_card: Card | None = None


def _card_from_form(customer: str | None, *, new_card_allowed: bool = True) -> _CardChoice:
    """What the form chose. A new card is verified at Stripe with the request's reads ended."""
    account = current_account()
    setup_intent = request.form.get("setup_intent", "").strip()
    if setup_intent and new_card_allowed:
        services.end_reads(db.session)
        return _CardChoice(
            new_card=services.verify_new_card(
                gateway(), customer=customer, setup_intent_id=setup_intent
            )
        )
    if request.form.get("pay_with") == "new":
        raise ValidationFailed(
            _(
                "The card details did not arrive (paying with a new card needs JavaScript). "
                "Nothing was charged."
            )
        )
    method = request.form.get("payment_method", "").strip()
    if not method:
        raise ValidationFailed(_("Choose a card to pay with."))
    return _CardChoice(saved_id=services.card_of(db.session, account, method[:40]).id)


def _card_row(account: Any, choice: _CardChoice, *, keep: bool) -> PaymentMethod:
    if choice.new_card is not None:
        return services.save_card(db.session, account, choice.new_card, keep=keep, actor=_actor())
    row = db.session.get(PaymentMethod, choice.saved_id)
    if row is None or row.account_id != account.id or row.detached_at is not None:
        raise NotFound(_("We could not find that card."))
    return row


def _render_pay(account: Any, **context: Any) -> Response:
    return render_page(
        "payments/pay.html",
        "payments/_pay_summary.html",
        account=account,
        cards=services.active_cards(db.session, account),
        today=clock.today(account.timezone),
        **context,
        **_stripe_context(),
    )


def _chooser(account: Any) -> Response:
    """The account's open invoices as choices, the chosen ones totalled by the server.

    NOTE: a number that is not one of the account's payable invoices (another account's, a paid
    one, a typo) is left out with a message that says so, the same words for each, so the page
    never tells whether another account's invoice exists. Paying (POST) such a number is a 404.
    """
    open_invoices = services.payable_invoices(db.session, account)
    live = services.live_attempts_by_invoice(db.session, [i.id for i in open_invoices])
    offered = [i for i in open_invoices if i.id not in live]
    in_progress = [(i, live[i.id]) for i in open_invoices if i.id in live]
    requested = _invoices_from_request(account.id, None)
    by_number = {i.number: i for i in offered}
    unknown = [n for n in dict.fromkeys(requested) if n not in by_number]
    chosen = [i for i in offered if i.number in set(requested)]
    messages = []
    busy = {i.number for i, _attempt in in_progress}
    # NOTE: the numbers come from the URL (anyone can write a link): they are counted, never
    # shown, so a link cannot put its own words inside the portal's alert box.
    left_out = [n for n in unknown if n not in busy]
    if len(left_out) == 1:
        messages.append(_("One of the invoices could not be paid here."))
    elif left_out:
        messages.append(_("%(count)d of the invoices could not be paid here.", count=len(left_out)))
    return _render_pay(
        account,
        invoices=offered,
        chosen=chosen,
        chosen_numbers={i.number for i in chosen},
        in_progress=in_progress,
        number=None,
        total_minor=sum(i.amount_due_minor for i in chosen),
        messages=messages,
    )


@bp.get("/invoices/<number>/pay")
@bp.get("/pay", defaults={"number": None}, endpoint="pay_balance")
@login_required
def pay_invoice(number: str | None) -> Response:
    account = current_account()
    if number is None:
        return _chooser(account)
    invoice = services.invoice_of(db.session, account, number)
    if invoice is None:
        raise NotFound(_("We could not find that invoice."))
    live = services.live_attempt_for(db.session, [invoice.id])
    # NOTE: a payment still waiting for a new card's details is finished on this page (the
    # card form takes it up again, with the same key); any other goes to its status.
    if live is not None and not services.awaits_card_entry(live):
        return see_other(url_for("checkout.attempt_status", public_id=live.public_id))
    payable = [invoice] if invoice.is_payable else []
    return _render_pay(
        account,
        invoices=payable,
        chosen=payable,
        chosen_numbers={i.number for i in payable},
        in_progress=[],
        number=number,
        total_minor=sum(i.amount_due_minor for i in payable),
        messages=[],
    )


@bp.post("/invoices/<number>/pay")
@bp.post("/pay", defaults={"number": None}, endpoint="pay_balance_post")
@login_required
def pay_invoice_post(number: str | None) -> Response:
    account = current_account()
    if number and services.invoice_of(db.session, account, number) is None:
        raise NotFound(_("We could not find that invoice."))
    if number is None and request.form.get("action") == "update":
        # The chooser's "Update total" without JavaScript: show the new total, charge nothing.
        return _chooser(account)
    numbers = _invoices_from_request(account.id, number)
    if not numbers:
        raise ValidationFailed(
            _("Choose at least one invoice to pay.")
            if _from_chooser()
            else _("There is nothing to pay.")
        )
    # NOTE: every number must be this account's before Stripe hears of anything (404 otherwise,
    # like a missing invoice); the amount is computed from these rows, never from the form.
    owned = set(
        db.session.scalars(
            select(Invoice.number).where(
                Invoice.account_id == account.id, Invoice.number.in_(set(numbers))
            )
        )
    )
    if owned != set(numbers):
        raise NotFound(_("We could not find that invoice."))
    if request.form.get("card_entry") == "1" and not request.form.get("setup_intent"):
        return _start_card_entry(numbers)
    customer = account.stripe_customer_id
    choice = _card_from_form(customer)
    if not customer:
        raise ValidationFailed(_("Choose a card to pay with."))
    actor = _actor()
    # From here on the request writes (on SQLite its transaction began IMMEDIATE, on
    # PostgreSQL the invoices are locked FOR UPDATE): a second click or tab waits, then finds
    # the live attempt and reuses it.
    account = current_account()
    card = _card_row(account, choice, keep=_wants_card_saved())
    invoices = services.lock_invoices(db.session, account, numbers)
    started = services.start_payment(db.session, account, invoices, payment_method=card)
    status_url = url_for("checkout.attempt_status", public_id=started.attempt.public_id)
    if started.reused:
        return see_other(status_url)
    services.audit_attempt(db.session, started.attempt, "payment.started", actor)
    plan = services.plan_charge(
        started.attempt, customer=customer, payment_method=card.stripe_payment_method_id
    )
    # NOTE: the one named exception to "the request commits once": the attempt and its
    # idempotency key are committed before Stripe hears of them, so that no lock or write
    # transaction is held while Stripe answers and a lost answer can be settled with the key
    # (reconcile, or the next click, finds the attempt). Nothing touches the database again
    # until Stripe has answered: `plan` holds plain values only.
    commit_before_network_call(db.session)
    outcome = services.charge_at_stripe(gateway(), plan)
    attempt = services.lock_attempt(db.session, plan.attempt_id)
    if attempt is None:
        abort(404)
    services.record_charge(db.session, attempt, outcome, actor)
    _release_unsaved_card_after_commit(attempt)
    return see_other(status_url)


def _json(status: int, **body: Any) -> Response:
    response = jsonify(**body)
    response.status_code = status
    return response


def _start_card_entry(numbers: list[str]) -> Response:
    """A new card typed in on the pay page: the PaymentIntent the browser confirms with it.

    The same guards as every payment (invoices locked, one live attempt, the attempt and its
    key committed before Stripe hears of them); answers JSON: the intent's client secret, or
    where the payment already stands.
    """
    save = _wants_card_saved()
    actor = _actor()
    account = current_account()
    customer = account.stripe_customer_id
    if not customer:
        account_id, public_id = account.id, account.public_id
        details = {"email": account.billing_email, "name": account.name}
        services.end_reads(db.session)
        customer = gateway().create_customer(
            email=details["email"],
            name=details["name"],
            account_ref=public_id,
            idempotency_key=f"customer_{public_id}",
        )
        services.set_customer(db.session, account_id, customer)
        actor.record(
            db.session,
            "account.stripe_customer_created",
            account_id=account_id,
            target_type="account",
            target_id=public_id,
            after={"stripe_customer_id": customer},
        )
        account = current_account()
    invoices = services.lock_invoices(db.session, account, numbers)
    started = services.start_payment(db.session, account, invoices)
    attempt = started.attempt
    status_url = url_for("checkout.attempt_status", public_id=attempt.public_id)
    if started.reused and not services.awaits_card_entry(attempt):
        return jsonify(status_url=status_url)
    if not started.reused:
        services.audit_attempt(db.session, attempt, "payment.started", actor)
    # NOTE: a reused attempt is the same payment asked for again (a second click, a retry
    # after a typo or a lost answer): its intent is made with the same key, or read again.
    plan = services.plan_charge(attempt, customer=customer, payment_method="")
    commit_before_network_call(db.session)
    try:
        intent = services.intent_for_card_entry(gateway(), plan, save=save)
    except GatewayUnavailable as unreachable:
        # Nothing can be charged without the card: the next click makes it with the same key.
        return _json(503, message=unreachable.message)
    except GatewayRejected as refused:
        if not started.reused:
            locked = services.lock_attempt(db.session, plan.attempt_id)
            if locked is not None and locked.stripe_payment_intent_id is None:
                services.end_attempt(
                    db.session, locked, AttemptStatus.CANCELED, code="refused", actor=actor
                )
        return _json(409, message=refused.message)
    locked = services.lock_attempt(db.session, plan.attempt_id)
    if locked is None:
        abort(404)
    services.record_card_entry(db.session, locked, intent, actor)
    if not services.awaits_card_entry(locked):
        return jsonify(status_url=status_url)
    # NOTE: the client secret goes to this page's script only; never stored or logged.
    return jsonify(
        client_secret=intent.client_secret,
        status_url=status_url,
        refresh_url=url_for("checkout.attempt_refresh", public_id=locked.public_id),
    )


def _release_unsaved_card_after_commit(attempt: PaymentAttempt) -> None:
    """After an attempt ends, a card used "for this payment only" is detached at Stripe.

    NOTE: the card went through a SetupIntent like a saved one (real Stripe attaches it to the
    customer then; the 3-D Secure of the setup is done once), so it is detached only when its
    payment has ended: a payment waiting for 3-D Secure still needs it. Our row is stored as
    detached from the start, so it is never listed or offered. Stripe is asked after the
    request committed; if it cannot be reached the card stays attached there but unusable
    through the portal, and nothing is charged by it.
    """
    stripe_id = services.unsaved_card_to_release(db.session, attempt)
    if stripe_id is not None:
        gw = gateway()
        after_commit(db.session, lambda: services.release_card_at_stripe(gw, stripe_id))


def _attempt_of_account(public_id: str) -> PaymentAttempt:
    account = current_account()
    attempt = db.session.scalar(
        select(PaymentAttempt).where(
            PaymentAttempt.public_id == public_id[:24], PaymentAttempt.account_id == account.id
        )
    )
    if attempt is None:
        abort(404)
    return attempt


@bp.get("/pay/attempts/<public_id>")
@login_required
def attempt_status(public_id: str) -> Response:
    attempt = _attempt_of_account(public_id)
    client_secret = ""
    confirm_with = ""
    if (
        attempt.status == "requires_action"
        and attempt.stripe_payment_intent_id
        and not services.awaits_card_entry(attempt)
    ):
        if attempt.failure_code == "authentication_required" and attempt.payment_method_id:
            # NOTE: Stripe's off-session "authentication_required" leaves the intent without its
            # card; the customer confirms it again with the card we charged.
            method = db.session.get(PaymentMethod, attempt.payment_method_id)
            confirm_with = method.stripe_payment_method_id if method else ""
        intent_id = attempt.stripe_payment_intent_id
        services.end_reads(db.session)
        # NOTE: fetched for this page only; never stored, logged or posted back.
        try:
            client_secret = gateway().retrieve_payment_intent(intent_id).client_secret
        except (GatewayUnavailable, GatewayRejected):
            client_secret = ""
        attempt = _attempt_of_account(public_id)
    invoices = db.session.scalars(
        select(Invoice)
        .join(PaymentAttemptItem, PaymentAttemptItem.invoice_id == Invoice.id)
        .where(PaymentAttemptItem.attempt_id == attempt.id)
        .order_by(Invoice.id)
    ).all()
    payment = services.payment_of_attempt(db.session, attempt.id)
    return render_page(
        "payments/status.html",
        account=current_account(),
        attempt=attempt,
        invoices=invoices,
        payment=payment,
        client_secret=client_secret,
        confirm_with=confirm_with,
        awaits_card=services.awaits_card_entry(attempt),
        **_stripe_context(),
    )


def _ask_stripe(public_id: str, ask: Any) -> Response:
    """Ask Stripe about a live attempt with the reads ended, then write its answer."""
    attempt = _attempt_of_account(public_id)
    status_url = url_for("checkout.attempt_status", public_id=public_id)
    intent_id, key, attempt_id = (
        attempt.stripe_payment_intent_id,
        attempt.idempotency_key,
        attempt.id,
    )
    question = ask(attempt)
    if not intent_id or question is None:
        return see_other(status_url)
    services.end_reads(db.session)
    intent = question(gateway(), intent_id, key)
    locked = services.lock_attempt(db.session, attempt_id)
    if locked is not None:
        services.apply_intent(db.session, locked, intent, _actor())
        _release_unsaved_card_after_commit(locked)
    return see_other(status_url)


@bp.post("/pay/attempts/<public_id>/refresh")
@login_required
def attempt_refresh(public_id: str) -> Response:
    """Ask Stripe how the attempt stands (after 3-D Secure, or while it is processing)."""

    def ask(attempt: PaymentAttempt) -> Any:
        if attempt.status not in LIVE_ATTEMPT_STATUSES:
            return None
        return lambda gw, intent_id, _key: gw.retrieve_payment_intent(intent_id)

    return _ask_stripe(public_id, ask)


@bp.post("/pay/attempts/<public_id>/cancel")
@login_required
def attempt_cancel(public_id: str) -> Response:
    """Give up a payment that waits for 3-D Secure, to pay with another card."""

    def ask(attempt: PaymentAttempt) -> Any:
        if attempt.status != "requires_action":
            return None
        return lambda gw, intent_id, key: gw.cancel_payment_intent(
            intent_id, idempotency_key=f"{key}:cancel"
        )

    return _ask_stripe(public_id, ask)


# -- saved cards ---------------------------------------------------------------------------------


def _methods_page(account: Any, *, error: str = "", status: int = 200) -> Response:
    response = render_page(
        "payments/methods.html",
        account=account,
        cards=services.active_cards(db.session, account),
        today=clock.today(account.timezone),
        autopay=services.autopay_needs_a_card(db.session, account),
        error=error,
        **_stripe_context(),
    )
    response.status_code = status
    return response


@bp.get("/payment-methods")
@login_required
def payment_methods() -> Response:
    return _methods_page(current_account())


@bp.post("/payment-methods/setup")
@login_required
def setup_card() -> Response:
    """A SetupIntent for the card Element; only its client secret goes back (as JSON)."""
    account = current_account()
    account_id, public_id, had_customer = (
        account.id,
        account.public_id,
        account.stripe_customer_id,
    )
    details = {"email": account.billing_email, "name": account.name}
    services.end_reads(db.session)
    gw = gateway()
    customer = had_customer or gw.create_customer(
        email=details["email"],
        name=details["name"],
        account_ref=public_id,
        idempotency_key=f"customer_{public_id}",
    )
    intent = gw.create_setup_intent(
        customer=customer, idempotency_key=f"setup_{public_id}_{clock.now().timestamp()}"
    )
    if not had_customer:
        services.set_customer(db.session, account_id, customer)
        _actor().record(
            db.session,
            "account.stripe_customer_created",
            account_id=account_id,
            target_type="account",
            target_id=public_id,
            after={"stripe_customer_id": customer},
        )
    return jsonify(client_secret=intent.client_secret)


@bp.post("/payment-methods")
@login_required
def add_card() -> Response:
    account = current_account()
    if not request.form.get("setup_intent", "").strip():
        raise ValidationFailed(
            _("The card details did not arrive: adding a card needs JavaScript. Nothing was saved.")
        )
    choice = _card_from_form(account.stripe_customer_id)
    account = current_account()
    card = _card_row(account, choice, keep=True)
    if request.form.get("make_default"):
        services.make_default(db.session, account, card, _actor())
    flash(
        _("Card ending in %(last4)s saved.", last4=card.last4)
        + (" " + _("It is now your default card.") if card.is_default else ""),
        "success",
    )
    return see_other(url_for("checkout.payment_methods"))


@bp.post("/payment-methods/<public_id>/default")
@login_required
def default_card(public_id: str) -> Response:
    account = current_account()
    card = services.card_of(db.session, account, public_id[:40])
    services.make_default(db.session, account, card, _actor())
    flash(_("Card ending in %(last4)s is now your default card.", last4=card.last4), "success")
    return see_other(url_for("checkout.payment_methods"))


@bp.post("/payment-methods/<public_id>/remove")
@login_required
def remove_card(public_id: str) -> Response:
    """Remove a card, after a confirm step (a second POST with confirm=1, so it works without
    JavaScript); a card that cannot go says why inside the payment methods page."""
    account = current_account()
    # NOTE: ownership is checked here, in our database, before Stripe hears of the id; Stripe
    # is asked to detach it only once our database stopped offering it (after the commit).
    card = services.card_of(db.session, account, public_id[:40])
    if request.form.get("confirm") != "1":
        return render_page(
            "payments/remove_card.html",
            account=account,
            card=card,
            blocked=services.removal_blocked(db.session, account),
        )
    last4 = card.last4
    try:
        stripe_id = services.remove_card(db.session, account, card.public_id, _actor())
    except Conflict as refused:
        return _methods_page(current_account(), error=refused.message, status=409)
    gw = gateway()
    after_commit(db.session, lambda: services.release_card_at_stripe(gw, stripe_id))
    flash(_("Card ending in %(last4)s removed.", last4=last4), "success")
    return see_other(url_for("checkout.payment_methods"))


# -- webhook -------------------------------------------------------------------------------------
# NOTE: the route lives beside its handlers (portal/payments/webhooks.py); it is registered here
# so that its endpoint keeps its name, checkout.stripe_webhook.
bp.add_url_rule("/webhooks/stripe", "stripe_webhook", webhooks.stripe_webhook, methods=["POST"])
