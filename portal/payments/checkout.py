"""Paying: the pay page, the attempt's status page, saved cards, and Stripe's webhook.

Card numbers never reach us: new cards go from the browser to Stripe (Stripe.js card Element
and a SetupIntent); we get the payment method's id and check it belongs to the account.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify, request, url_for
from flask_login import login_required
from sqlalchemy import select

from portal import clock
from portal.audit.services import Actor
from portal.auth.sessions import current_account, signed_in_user
from portal.billing.models import Invoice
from portal.errors import NotFound, PaymentFailed, ValidationFailed
from portal.extensions import csrf, db
from portal.payments import services, webhooks
from portal.payments.gateway import GatewayRejected, GatewayUnavailable, gateway
from portal.payments.models import PaymentAttempt, PaymentAttemptItem, PaymentMethod
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


def _card_from_form(account_id: int, *, keep: bool = True) -> PaymentMethod:
    """The card to charge: a saved card of the account, or the card a SetupIntent just saved."""
    account = current_account()
    setup_intent = request.form.get("setup_intent", "").strip()
    if setup_intent:
        gw = gateway()
        intent = gw.retrieve_setup_intent(setup_intent)
        # NOTE: ownership in our terms first: the SetupIntent must be this account's customer.
        if not account.stripe_customer_id or intent.customer != account.stripe_customer_id:
            raise NotFound("We could not find that card.")
        if intent.status != "succeeded" or not intent.payment_method:
            raise PaymentFailed("The card could not be verified. Please try again.")
        details = gw.retrieve_payment_method(intent.payment_method)
        if details.customer is None:
            # NOTE: real Stripe attaches it with the SetupIntent; localstripe does not.
            details = gw.attach_payment_method(
                details.id,
                customer=account.stripe_customer_id,
                idempotency_key=f"attach_{details.id}",
            )
        services.begin_locked_write(db.session)
        return services.save_card(db.session, account, details, keep=keep)
    if request.form.get("pay_with") == "new":
        raise ValidationFailed(
            "The card details did not arrive (paying with a new card needs JavaScript). "
            "Nothing was charged."
        )
    method = request.form.get("payment_method", "").strip()
    if not method:
        raise ValidationFailed("Choose a card to pay with.")
    return services.card_of(db.session, account, method)


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
    if unknown:
        listed = ", ".join(n for n in unknown if n not in {i.number for i, _ in in_progress})
        if listed:
            messages.append(
                f"We left out {listed}: not one of your open invoices, so it cannot be paid here."
            )
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
        raise NotFound("We could not find that invoice.")
    live = services.live_attempt_for(db.session, [invoice.id])
    if live is not None:
        return see_other(url_for("checkout.attempt_status", public_id=live.public_id))
    payable = (
        [invoice] if invoice.amount_due_minor > 0 and invoice.status in services.PAYABLE else []
    )
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
        raise NotFound("We could not find that invoice.")
    if number is None and request.form.get("action") == "update":
        # The chooser's "Update total" without JavaScript: show the new total, charge nothing.
        return _chooser(account)
    numbers = _invoices_from_request(account.id, number)
    if not numbers:
        raise ValidationFailed(
            "Choose at least one invoice to pay." if _from_chooser() else "There is nothing to pay."
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
        raise NotFound("We could not find that invoice.")
    keep_card = _wants_card_saved()
    card = _card_from_form(account.id, keep=keep_card)
    gw = gateway()
    customer = services.ensure_customer(db.session, account, gw, db.session.commit)
    card_id, stripe_card = card.id, card.stripe_payment_method_id
    # NOTE: the lock and the attempt row (with its idempotency key) are committed before
    # Stripe is called; a second click or tab finds the live attempt and reuses it.
    services.begin_locked_write(db.session)
    invoices = services.lock_invoices(db.session, account, numbers)
    started = services.start_payment(
        db.session, account, invoices, payment_method=db.session.get(PaymentMethod, card_id)
    )
    attempt = started.attempt
    if not started.reused:
        services.audit_attempt(db.session, attempt, "payment.started", _actor())
    db.session.commit()
    status_url = url_for("checkout.attempt_status", public_id=attempt.public_id)
    if started.reused:
        return see_other(status_url)
    try:
        services.charge(
            db.session,
            attempt,
            gw,
            customer=customer,
            payment_method=stripe_card,
            checkpoint=db.session.commit,
        )
    except (PaymentFailed, GatewayUnavailable, GatewayRejected):
        db.session.commit()
    _release_unsaved_card(attempt.id)
    return see_other(status_url)


def _release_unsaved_card(attempt_id: int) -> None:
    """After an attempt ends, a card used "for this payment only" is detached at Stripe.

    NOTE: the card went through a SetupIntent like a saved one (real Stripe attaches it to the
    customer then; the 3-D Secure of the setup is done once), so it is detached only when its
    payment has ended: a payment waiting for 3-D Secure still needs it. Our row is stored as
    detached from the start, so it is never listed or offered. If Stripe cannot be reached now
    the card stays attached there but unusable through the portal; nothing is charged by it.
    """
    attempt = db.session.get(PaymentAttempt, attempt_id)
    if attempt is None:
        return
    try:
        services.release_unsaved_card(db.session, attempt, gateway())
    except (GatewayUnavailable, GatewayRejected):
        log.warning("could not detach the one-payment card of attempt %s", attempt.public_id)
    db.session.commit()


def _attempt_of_account(public_id: str) -> PaymentAttempt:
    account = current_account()
    attempt = db.session.scalar(
        select(PaymentAttempt).where(
            PaymentAttempt.public_id == public_id, PaymentAttempt.account_id == account.id
        )
    )
    if attempt is None:
        abort(404)
    return attempt


@bp.get("/pay/attempts/<public_id>")
@login_required
def attempt_status(public_id: str) -> Response:
    attempt = _attempt_of_account(public_id)
    invoices = db.session.scalars(
        select(Invoice)
        .join(PaymentAttemptItem, PaymentAttemptItem.invoice_id == Invoice.id)
        .where(PaymentAttemptItem.attempt_id == attempt.id)
        .order_by(Invoice.id)
    ).all()
    client_secret = ""
    if attempt.status == "requires_action" and attempt.stripe_payment_intent_id:
        # NOTE: fetched for this page only; never stored, logged or posted back.
        try:
            client_secret = (
                gateway().retrieve_payment_intent(attempt.stripe_payment_intent_id).client_secret
            )
        except (GatewayUnavailable, GatewayRejected):
            client_secret = ""
    return render_page(
        "payments/status.html",
        account=current_account(),
        attempt=attempt,
        invoices=invoices,
        client_secret=client_secret,
        **_stripe_context(),
    )


def _record_intent(attempt_id: int, intent: services.Intent) -> None:
    """Write what Stripe said about an attempt, under the attempt's row lock, and commit."""
    services.begin_locked_write(db.session)
    locked = services.lock_attempt(db.session, attempt_id)
    if locked is not None:
        services.apply_intent(db.session, locked, intent)
    db.session.commit()


@bp.post("/pay/attempts/<public_id>/refresh")
@login_required
def attempt_refresh(public_id: str) -> Response:
    """Ask Stripe how the attempt stands (after 3-D Secure, or while it is processing)."""
    attempt = _attempt_of_account(public_id)
    if attempt.stripe_payment_intent_id and attempt.status in services.LIVE_ATTEMPT_STATUSES:
        intent = gateway().retrieve_payment_intent(attempt.stripe_payment_intent_id)
        _record_intent(attempt.id, intent)
        _release_unsaved_card(attempt.id)
    return see_other(url_for("checkout.attempt_status", public_id=public_id))


@bp.post("/pay/attempts/<public_id>/cancel")
@login_required
def attempt_cancel(public_id: str) -> Response:
    """Give up a payment that waits for 3-D Secure, to pay with another card."""
    attempt = _attempt_of_account(public_id)
    if attempt.status == "requires_action" and attempt.stripe_payment_intent_id:
        intent = gateway().cancel_payment_intent(
            attempt.stripe_payment_intent_id, idempotency_key=f"{attempt.idempotency_key}:cancel"
        )
        _record_intent(attempt.id, intent)
        _release_unsaved_card(attempt.id)
    return see_other(url_for("checkout.attempt_status", public_id=public_id))


# -- saved cards ---------------------------------------------------------------------------------


@bp.get("/payment-methods")
@login_required
def payment_methods() -> Response:
    account = current_account()
    today = clock.today(account.timezone)
    return render_page(
        "payments/methods.html",
        account=account,
        cards=services.active_cards(db.session, account),
        today=today,
        autopay=services.autopay_needs_a_card(db.session, account),
        **_stripe_context(),
    )


@bp.post("/payment-methods/setup")
@login_required
def setup_card() -> Response:
    """A SetupIntent for the card Element; only its client secret goes back (as JSON)."""
    account = current_account()
    gw = gateway()
    customer = services.ensure_customer(db.session, account, gw, db.session.commit)
    intent = gw.create_setup_intent(
        customer=customer, idempotency_key=f"setup_{account.public_id}_{clock.now().timestamp()}"
    )
    return jsonify(client_secret=intent.client_secret)


@bp.post("/payment-methods")
@login_required
def add_card() -> Response:
    account = current_account()
    setup_intent = request.form.get("setup_intent", "").strip()
    if not setup_intent:
        raise ValidationFailed("The card details did not arrive. Please try again.")
    card = _card_from_form(account.id)
    if request.form.get("make_default"):
        services.make_default(db.session, account, card)
    db.session.commit()
    return see_other(url_for("checkout.payment_methods"))


@bp.post("/payment-methods/<public_id>/default")
@login_required
def default_card(public_id: str) -> Response:
    account = current_account()
    card = services.card_of(db.session, account, public_id)
    services.make_default(db.session, account, card)
    db.session.commit()
    return see_other(url_for("checkout.payment_methods"))


@bp.post("/payment-methods/<public_id>/remove")
@login_required
def remove_card(public_id: str) -> Response:
    account = current_account()
    # NOTE: ownership is checked here, in our database, before Stripe hears of the id.
    card = services.card_of(db.session, account, public_id)
    services.remove_card(db.session, account, card, gateway())
    db.session.commit()
    return see_other(url_for("checkout.payment_methods"))


# -- webhook -------------------------------------------------------------------------------------


@bp.post("/webhooks/stripe")
@csrf.exempt
def stripe_webhook() -> Response:
    payload = request.get_data(cache=False)
    gw = gateway()
    try:
        gw.construct_event(payload, request.headers.get("Stripe-Signature"))
        event = json.loads(payload)
    except ValueError:
        return jsonify(error="invalid signature"), 400  # type: ignore[return-value]
    services.begin_locked_write(db.session)
    try:
        outcome = webhooks.handle_event(db.session, event, gw)
        db.session.commit()
    except Exception:
        db.session.rollback()
        log.exception(
            "stripe event %s (%s) failed; Stripe will retry", event.get("id"), event.get("type")
        )
        return jsonify(error="not processed"), 500  # type: ignore[return-value]
    return jsonify(received=True, outcome=outcome)
