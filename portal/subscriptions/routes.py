"""Customer subscription pages: the list, one subscription (with the next invoice line by line
and metered usage), the change page with its live preview, cancel, pause, resume, reactivate
and withdraw.

Every route loads the subscription through the signed-in account (another account's id
answers 404, like a missing one) and calls one service. After an upgrade the proration invoice
is charged to the default card: the change is committed first (with the payment attempt, as
the payment path does), and no lock is held while Stripe is asked.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from flask import Blueprint, Response, abort, current_app, flash, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import login_required
from sqlalchemy import select

from portal import clock
from portal.audit.services import Actor
from portal.auth.sessions import current_account, signed_in_user
from portal.billing.models import Invoice
from portal.billing.money import Money
from portal.errors import DomainError
from portal.extensions import db
from portal.formatting import day, money
from portal.http_errors import error_text
from portal.payments import collection
from portal.payments.gateway import gateway
from portal.payments.models import PaymentMethod
from portal.subscriptions import charts, forms, queries, services
from portal.subscriptions.models import Price, Subscription
from portal.web import render_page, see_other, wants_partial

log = logging.getLogger(__name__)

bp = Blueprint("subscriptions", __name__)


def _actor() -> Actor:
    user = signed_in_user()
    return Actor(kind="customer", user_id=user.id if user else None, ip=request.remote_addr)


def _grace_days() -> int:
    return int(
        current_app.config.get("SUBSCRIPTION_CHANGE_GRACE_DAYS", services.DEFAULT_GRACE_DAYS)
    )


def _subscription(account_id: int, public_id: str) -> Subscription:
    """The account's subscription by public id; anything else is 404."""
    if not queries.is_public_id(public_id):
        abort(404)
    found = db.session.scalar(queries.subscription_of(account_id, public_id))
    if found is None:
        abort(404)
    return found


def _detail_url(subscription_or_id: Any) -> str:
    public_id = getattr(subscription_or_id, "public_id", subscription_or_id)
    return url_for("subscriptions.detail", public_id=public_id)


# -- reading --------------------------------------------------------------------------------------


@bp.get("/subscriptions")
@login_required
def index() -> Response:
    account = current_account()
    subscriptions = list(db.session.scalars(queries.subscriptions_of(account.id)).unique())
    scheduled = {
        s.id: queries.scheduled_change(db.session, s.id)
        for s in subscriptions
        if s.status != "canceled"
    }
    return render_page(
        "subscriptions/index.html",
        account=account,
        subscriptions=subscriptions,
        scheduled=scheduled,
        today=clock.today(account.timezone),
    )


def _usage(subscription: Subscription, today: Any) -> dict[str, Any] | None:
    price = subscription.price
    if price.pricing_model != "metered":
        return None
    account = subscription.account
    start, end = subscription.current_period_start, subscription.current_period_end
    days = queries.usage_by_day(db.session, subscription.id, start, end, account.timezone)
    to_date = sum(d.quantity for d in days)
    now = clock.now()
    elapsed = max(min(now, end) - start, timedelta(0))
    length = end - start
    # NOTE: a straight-line projection of the usage so far over the whole period, in whole units
    # (integer arithmetic on seconds: no float near money).
    seconds, total_seconds = int(elapsed.total_seconds()), int(length.total_seconds())
    projected_units = (
        to_date if seconds <= 0 else (to_date * total_seconds + seconds - 1) // seconds
    )
    projected = services.period_charge(price, 0) + Money(
        price.unit_amount_minor * projected_units, price.currency
    )
    net, tax = services.split_tax(projected, price, account.country)
    projected = net + tax
    return {
        "chart": charts.usage_chart(days, today),
        "days": days,
        "to_date": to_date,
        "projected_units": projected_units,
        "projected": projected,
        "unit": price.unit_label,
    }


def _invoice_numbers(subscription: Subscription) -> list[Invoice]:
    return queries.latest_invoices(db.session, subscription.id)


@bp.get("/subscriptions/<public_id>")
@login_required
def detail(public_id: str) -> Response:
    account = current_account()
    subscription = _subscription(account.id, public_id)
    return _detail_page(account, subscription)


def _seated(price: Price) -> bool:
    return price.pricing_model in ("per_unit", "tiered")


def _detail_page(
    account: Any, subscription: Subscription, *, error: str = "", status: int = 200
) -> Response:
    today = clock.today(account.timezone)
    history = queries.history(db.session, subscription.id)
    prices = {
        p.id: p
        for p in db.session.scalars(
            select(Price).where(
                Price.id.in_(
                    {c.from_price_id for c in history if c.from_price_id}
                    | {c.to_price_id for c in history if c.to_price_id}
                )
            )
        )
    }
    invoice_ids = {c.invoice_id for c in history if c.invoice_id}
    change_invoices = (
        {i.id: i for i in db.session.scalars(select(Invoice).where(Invoice.id.in_(invoice_ids)))}
        if invoice_ids
        else {}
    )
    plan = subscription.price.plan
    scheduled = queries.scheduled_change(db.session, subscription.id)
    waiting_change = scheduled is not None and scheduled.kind in ("plan", "quantity", "interval")
    if waiting_change and scheduled.to_price_id not in prices:
        prices[scheduled.to_price_id] = db.session.get(Price, scheduled.to_price_id)
    usage = _usage(subscription, today)
    response = render_page(
        "subscriptions/detail.html",
        account=account,
        subscription=subscription,
        price=subscription.price,
        plan=plan,
        scheduled=scheduled,
        next_invoice=services.next_regular_invoice(
            subscription,
            prices.get(scheduled.to_price_id) if waiting_change else None,
            scheduled.to_quantity if waiting_change else None,
            usage_units=usage["to_date"] if usage else None,
            starts=scheduled.resume_at if scheduled and scheduled.kind == "pause" else None,
        ),
        history=history,
        prices=prices,
        change_invoices=change_invoices,
        change_credits=services.credits_for_changes(db.session, history),
        invoices=_invoice_numbers(subscription),
        usage=usage,
        can_change=subscription.status in services.LIVE_STATUSES,
        has_choices=_seated(subscription.price)
        or len(services.targets(db.session, subscription)) > 1,
        can_pause=bool(plan.allows_pause) and subscription.status in services.LIVE_STATUSES,
        pause_days=services.pause_limit_days(plan),
        pause_starts=services.pause_starts_on(subscription),
        pause_default=services.pause_starts_on(subscription)
        + timedelta(days=min(30, services.pause_limit_days(plan))),
        pause_min=services.pause_starts_on(subscription) + timedelta(days=1),
        pause_max=services.pause_starts_on(subscription)
        + timedelta(days=services.pause_limit_days(plan)),
        today=today,
        error=error,
    )
    response.status_code = status
    return response


# -- change ---------------------------------------------------------------------------------------


def _change_page(
    account: Any,
    subscription: Subscription,
    values: Any,
    *,
    error: str = "",
    status: int = 200,
) -> Response:
    preview = None
    choice = None
    problem = error
    # NOTE: read once: the preview picks the chosen price from them, the page lists them.
    prices = services.targets(db.session, subscription)
    try:
        choice = forms.change_choice(values, subscription)
        preview = services.preview_change(
            db.session,
            subscription,
            plan_code=choice.plan,
            interval=choice.interval,
            quantity=choice.quantity,
            timing=choice.timing,
            offered=prices,
        )
    except DomainError as refused:
        problem = problem or error_text(refused)
        status = status if status != 200 else refused.status
    plans: dict[int, dict[str, Any]] = {}
    for price in prices:
        entry = plans.setdefault(price.plan_id, {"plan": price.plan, "prices": {}})
        entry["prices"][price.billing_interval] = price
    chosen_price = preview.price if preview else subscription.price
    response = render_page(
        "subscriptions/change.html",
        "subscriptions/_preview.html",
        account=account,
        subscription=subscription,
        plans=list(plans.values()),
        any_seated=any(p.pricing_model in ("per_unit", "tiered") for p in prices),
        chosen_plan=(choice.plan if choice and choice.plan else chosen_price.plan.code),
        chosen_interval=(
            choice.interval if choice and choice.interval else chosen_price.billing_interval
        ),
        chosen_quantity=(preview.quantity if preview else subscription.quantity),
        preview=preview,
        # NOTE: the card is named only beside an amount due today (subscriptions/_preview.html).
        default_card=(
            _default_card(account.id) if preview and preview.due_now.total.minor > 0 else None
        ),
        error=problem,
    )
    response.status_code = status
    return response


def _default_card(account_id: int) -> PaymentMethod | None:
    return collection.default_card(db.session, account_id)


@bp.get("/subscriptions/<public_id>/change")
@login_required
def change(public_id: str) -> Response:
    account = current_account()
    subscription = _subscription(account.id, public_id)
    forms.only_fields(request.args, forms.CHANGE_FIELDS)
    response = _change_page(account, subscription, request.args)
    if wants_partial() and response.status_code in (409, 422):
        # NOTE: the live preview shows what is wrong in its own place, where the person looks
        # (an error answer would go to the message area at the top, out of sight on a phone).
        response.status_code = 200
    return response


@bp.post("/subscriptions/<public_id>/change")
@login_required
def change_post(public_id: str) -> Response:
    account = current_account()
    subscription = _subscription(account.id, public_id)
    forms.only_fields(request.form, forms.CHANGE_FIELDS)
    # NOTE: the cancel page's "switch to a cheaper plan" is this same change in one tap; what
    # goes wrong is shown where the tap was made.
    from_cancel = request.form.get("from") == "cancel"
    if request.form.get("preview"):
        # NOTE: without JavaScript, "Preview" is a submit of the same form: show, change nothing.
        return _change_page(account, subscription, request.form)
    try:
        choice = forms.change_choice(request.form, subscription)
        expected = forms.version(request.form)
        outcome = services.change_subscription(
            db.session,
            account,
            public_id,
            plan_code=choice.plan,
            interval=choice.interval,
            quantity=choice.quantity,
            timing=choice.timing,
            expected_version=expected,
            seller=current_app.config["SELLER"],
            actor=_actor(),
            grace_days=_grace_days(),
        )
    except services.StaleForm as stale:
        db.session.rollback()
        subscription = _subscription(current_account().id, public_id)
        if from_cancel:
            return _cancel_page(
                current_account(), subscription, error=error_text(stale), status=409
            )
        return _change_page(
            current_account(), subscription, {}, error=error_text(stale), status=409
        )
    except DomainError as refused:
        db.session.rollback()
        subscription = _subscription(current_account().id, public_id)
        if from_cancel:
            return _cancel_page(
                current_account(), subscription, error=error_text(refused), status=refused.status
            )
        return _change_page(
            current_account(),
            subscription,
            request.form,
            error=error_text(refused),
            status=refused.status,
        )
    change = outcome.change
    assert change is not None
    if outcome.duplicate:
        flash(_("That change was already made. Here is your subscription."), "info")
    elif change.status == "scheduled":
        flash(
            _(
                "Done: the change starts at your renewal on %(date)s. You can withdraw it "
                "until then.",
                date=_day(change.effective_at, account),
            ),
            "success",
        )
    else:
        _done(_("Done: your subscription has changed."), outcome.invoice)
    return see_other(_detail_url(public_id))


def _day(value: Any, account: Any) -> str:
    return day(value)


def _collect(invoice: Invoice) -> tuple[str, str]:
    """Charge a new invoice (a proration, a resumed period) to the default card; what to tell
    the customer, and how (flash category). collect_invoice commits the change and the payment
    attempt together before Stripe is called, and no lock is held meanwhile."""
    invoice_id, number, account_id = invoice.id, invoice.number, invoice.account_id
    amount = invoice.amount_due
    if amount.minor <= 0:
        return "", "success"
    if collection.default_card(db.session, account_id) is None:
        return _("Invoice %(number)s is ready to pay.", number=number), "info"
    outcome = collection.collect_invoice(
        db.session, invoice_id, gateway(), actor=_actor(), reason="upgrade"
    )
    if outcome.status in ("paid", "nothing_due"):
        return (
            _(
                "Invoice %(number)s (%(amount)s) was paid with your saved card.",
                number=number,
                amount=money(amount),
            ),
            "success",
        )
    if outcome.status in ("processing", "busy"):
        return _("We are charging invoice %(number)s to your saved card.", number=number), "info"
    if outcome.status == "requires_action":
        return (
            _(
                "Your bank wants to confirm the payment of invoice %(number)s. Open the invoice "
                "to confirm it.",
                number=number,
            ),
            "warning",
        )
    return (
        _(
            "Invoice %(number)s could not be charged to your saved card: %(reason)s",
            number=number,
            reason=outcome.message,
        ),
        "warning",
    )


def _done(message: str, invoice: Invoice | None) -> None:
    """One message for a change and the payment of its invoice."""
    if invoice is None:
        flash(message, "success")
        return
    more, category = _collect(invoice)
    flash(f"{message} {more}".strip(), category)


# -- cancel, reactivate, withdraw, pause, resume, offer -------------------------------------------


@bp.get("/subscriptions/<public_id>/cancel")
@login_required
def cancel(public_id: str) -> Response:
    account = current_account()
    subscription = _subscription(account.id, public_id)
    return _cancel_page(account, subscription)


def _cancel_page(
    account: Any,
    subscription: Subscription,
    *,
    error: str = "",
    status: int = 200,
    values: Any = None,
) -> Response:
    plan = subscription.price.plan
    response = render_page(
        "subscriptions/cancel.html",
        account=account,
        subscription=subscription,
        plan=plan,
        reasons=services.CANCEL_REASONS,
        offer=services.retention_offer(subscription),
        cheaper=services.cheaper_option(db.session, subscription, grace_days=_grace_days()),
        credit=services.unused_time_credit(db.session, subscription)
        if plan.allows_cancel_now
        else None,
        can_pause=bool(plan.allows_pause) and subscription.status in services.LIVE_STATUSES,
        pause_starts=services.pause_starts_on(subscription),
        pause_until=services.pause_starts_on(subscription)
        + timedelta(days=min(30, services.pause_limit_days(plan))),
        values=values or {},
        error=error,
    )
    response.status_code = status
    return response


def _refused(account: Any, public_id: str, refused: DomainError) -> Response:
    db.session.rollback()
    subscription = _subscription(current_account().id, public_id)
    return _detail_page(
        current_account(), subscription, error=error_text(refused), status=refused.status
    )


@bp.post("/subscriptions/<public_id>/cancel")
@login_required
def cancel_post(public_id: str) -> Response:
    account = current_account()
    subscription = _subscription(account.id, public_id)
    forms.only_fields(request.form, forms.CANCEL_FIELDS)
    try:
        choice = forms.cancel_choice(request.form)
        outcome = services.cancel_subscription(
            db.session,
            account,
            public_id,
            when=choice.when,
            reason=choice.reason,
            reason_text=choice.reason_text,
            expected_version=forms.version(request.form),
            actor=_actor(),
        )
    except DomainError as refused:
        db.session.rollback()
        subscription = _subscription(current_account().id, public_id)
        return _cancel_page(
            current_account(),
            subscription,
            error=error_text(refused),
            status=refused.status,
            values=request.form,
        )
    change = outcome.change
    if change is not None and change.timing == "now" and outcome.credit is not None:
        flash(
            _(
                "Your subscription has ended. A credit of %(amount)s for the unused time is on "
                "your account.",
                amount=money(outcome.credit.amount),
            ),
            "success",
        )
    elif change is not None and change.timing == "now":
        flash(_("Your subscription has ended."), "success")
    elif change is not None:
        flash(
            _(
                "Your subscription will end on %(date)s. You can keep it until then.",
                date=_day(change.effective_at, account),
            ),
            "success",
        )
    return see_other(_detail_url(public_id))


def _simple(public_id: str, fields: frozenset[str], call: Any, message: Any) -> Response:
    """A one-button change. `message` is lazy: it is put in words only once the account (and
    so the page's language) is known, not when the route is entered."""
    account = current_account()
    _subscription(account.id, public_id)
    forms.only_fields(request.form, fields)
    try:
        call(account, forms.version(request.form))
    except DomainError as refused:
        if request.form.get("from") == "cancel":
            db.session.rollback()
            subscription = _subscription(current_account().id, public_id)
            return _cancel_page(
                current_account(), subscription, error=error_text(refused), status=refused.status
            )
        return _refused(account, public_id, refused)
    flash(str(message), "success")
    return see_other(_detail_url(public_id))


@bp.post("/subscriptions/<public_id>/reactivate")
@login_required
def reactivate(public_id: str) -> Response:
    return _simple(
        public_id,
        forms.VERSION_ONLY,
        lambda account, version: services.reactivate(
            db.session, account, public_id, expected_version=version, actor=_actor()
        ),
        _l("Welcome back: your subscription continues."),
    )


@bp.post("/subscriptions/<public_id>/withdraw")
@login_required
def withdraw(public_id: str) -> Response:
    return _simple(
        public_id,
        forms.VERSION_ONLY,
        lambda account, version: services.withdraw_scheduled_change(
            db.session, account, public_id, expected_version=version, actor=_actor()
        ),
        _l("The scheduled change is withdrawn. Your subscription stays as it is."),
    )


@bp.post("/subscriptions/<public_id>/resume")
@login_required
def resume(public_id: str) -> Response:
    account = current_account()
    _subscription(account.id, public_id)
    forms.only_fields(request.form, forms.VERSION_ONLY)
    try:
        outcome = services.resume(
            db.session,
            account,
            public_id,
            expected_version=forms.version(request.form),
            seller=current_app.config["SELLER"],
            actor=_actor(),
        )
    except DomainError as refused:
        return _refused(account, public_id, refused)
    if outcome.duplicate:
        flash(_("Your subscription is running again."), "success")
    else:
        _done(_("Your subscription is running again."), outcome.invoice)
    return see_other(_detail_url(public_id))


@bp.post("/subscriptions/<public_id>/offer")
@login_required
def accept_offer(public_id: str) -> Response:
    return _simple(
        public_id,
        forms.VERSION_ONLY,
        lambda account, version: services.accept_retention_offer(
            db.session, account, public_id, expected_version=version, actor=_actor()
        ),
        _l("Thank you for staying. Your discount applies from your next invoice."),
    )


@bp.post("/subscriptions/<public_id>/pause")
@login_required
def pause(public_id: str) -> Response:
    account = current_account()
    subscription = _subscription(account.id, public_id)
    starts_on = services.pause_starts_on(subscription)
    plan = subscription.price.plan

    def call(account: Any, version: int) -> Any:
        day = forms.resume_on(request.form, starts_on=starts_on, plan=plan)
        return services.pause(
            db.session,
            account,
            public_id,
            resume_on=day,
            expected_version=version,
            actor=_actor(),
            grace_days=_grace_days(),
        )

    return _simple(
        public_id,
        forms.PAUSE_FIELDS,
        call,
        _(
            "Your subscription pauses on %(start)s. Nothing is billed until it starts again; "
            "you can withdraw the pause until then.",
            start=_day(subscription.current_period_end, account),
        ),
    )
