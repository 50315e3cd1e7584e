"""What a customer may do with a subscription: preview and make a change of plan, seats or
interval, cancel, reactivate, pause, resume, withdraw a scheduled change, take a retention offer.

Every change locks the subscription row (FOR UPDATE on PostgreSQL; on SQLite the request's
transaction began IMMEDIATE), refuses a stale form (the form carries `Subscription.version`),
writes a SubscriptionChange row (the history), an audit event (before/after) and queues a
confirmation email. Flushes, never commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flask_babel import force_locale, ngettext
from flask_babel import gettext as _
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from portal import clock
from portal.accounts.models import Account
from portal.audit.services import SYSTEM, Actor
from portal.billing import services as billing
from portal.billing import tax
from portal.billing.models import CreditNote, CreditNoteReason, Invoice, LineKind
from portal.billing.money import Money
from portal.errors import N_, Conflict, NotAllowed, NotFound, ValidationFailed
from portal.formatting import day as format_day
from portal.mail import queue_email
from portal.subscriptions import queries
from portal.subscriptions.models import (
    ChangeKind,
    Plan,
    Price,
    PricingModel,
    Subscription,
    SubscriptionChange,
    SubscriptionStatus,
)
from portal.subscriptions.periods import period_end, seconds_between
from portal.subscriptions.proration import fixed_charge, prorate, share

# NOTE: a change is refused while an invoice of the subscription is overdue by more than this
# many days (config SUBSCRIPTION_CHANGE_GRACE_DAYS): the customer settles first, then changes.
DEFAULT_GRACE_DAYS = 14
# NOTE: no plan sells ten thousand seats through a phone form; a larger number is a typo (or an
# attack on the arithmetic) and gets a clear message long before any price's own limit.
MAX_QUANTITY = 10_000
MAX_PAUSE_DAYS = 90
# A double submit arrives within seconds; a change asked for again later is a new wish.
DUPLICATE_WINDOW = timedelta(minutes=10)

CANCEL_REASONS = (
    ("too_expensive", N_("It costs too much")),
    ("not_using", N_("We are not using it enough")),
    ("missing_features", N_("It is missing something we need")),
    ("switching", N_("We are moving to another service")),
    ("temporary", N_("We only need a break")),
    ("other", N_("Something else")),
)
CANCEL_REASON_CODES = tuple(code for code, _label in CANCEL_REASONS)

LIVE_STATUSES = (
    SubscriptionStatus.ACTIVE.value,
    SubscriptionStatus.TRIALING.value,
    SubscriptionStatus.PAST_DUE.value,
)


# -- errors ---------------------------------------------------------------------------------------


class StaleForm(Conflict):
    """The subscription changed after the form was shown."""

    title = N_("Your subscription changed in the meantime")


class RenewalPending(Conflict):
    """The period has ended and the billing run has not renewed it yet."""

    title = N_("Your renewal is on its way")


class ChangeRefused(ValidationFailed):
    """A rule of the subscription said no (a disallowed plan, a seat limit, an overdue bill)."""

    title = N_("That change is not possible")


# -- reading what a form asks for -----------------------------------------------------------------


def parse_quantity(raw: str | None, *, default: int) -> int:
    """A seat count as typed: digits only, 1 to MAX_QUANTITY, else a clear message."""
    text = (raw or "").strip()
    if not text:
        return default
    if not (text.isascii() and text.isdigit()) or len(text) > 7:
        if text.startswith("-") and text[1:].isascii() and text[1:].isdigit():
            raise ChangeRefused(N_("The number of seats cannot be negative."))
        raise ChangeRefused(
            N_("“%(text)s” is not a number of seats. Please type a whole number, like 5."),
            params={"text": text[:12]},
        )
    value = int(text)
    if value < 1:
        raise ChangeRefused(N_("You need at least one seat."))
    if value > MAX_QUANTITY:
        raise ChangeRefused(
            N_("%(count)s seats is more than we can set up here. Please contact us."),
            params={"count": f"{value:,}"},
        )
    return value


def parse_version(raw: str | None) -> int:
    text = (raw or "").strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        raise ValidationFailed(N_("This form is incomplete. Please reload the page and try again."))
    return int(text)


# -- the change: targets, direction, preview ------------------------------------------------------


def months_in(price: Price) -> int:
    return price.interval_count * (12 if price.billing_interval == "year" else 1)


# One period's charge before tax (metered prices: the fixed part only); proration's own rule.
period_charge = fixed_charge


def split_tax(amount: Money, price: Price, country: str | None) -> tuple[Money, Money]:
    """(net, tax) of an amount charged at this price's tax rate, rounded once, as billing's
    finalization splits it (portal.billing.tax)."""
    rate = tax.rate_for(price, country)
    if rate is None:
        return amount, Money.zero(amount.currency)
    parts = tax.split(amount.minor, amount.currency, rate.rate_bp, inclusive=rate.inclusive)
    return Money(parts.net_minor, amount.currency), Money(parts.tax_minor, amount.currency)


def direction_of(old: Price, old_quantity: int, new: Price, new_quantity: int) -> str:
    """ "upgrade" when the new choice costs more per month, "downgrade" when less, else "same"."""
    if old.id == new.id and old_quantity == new_quantity:
        return "same"
    old_minor = period_charge(old, old_quantity).minor * months_in(new)
    new_minor = period_charge(new, new_quantity).minor * months_in(old)
    if new_minor > old_minor:
        return "upgrade"
    if new_minor < old_minor:
        return "downgrade"
    rank_old, rank_new = old.plan.rank or 0, new.plan.rank or 0
    if rank_new != rank_old:
        return "upgrade" if rank_new > rank_old else "downgrade"
    return "upgrade" if new_quantity > old_quantity else "downgrade"


def change_kind(old: Price, new: Price, old_quantity: int, new_quantity: int) -> str:
    if old.plan_id != new.plan_id:
        return "plan"
    if old.billing_interval != new.billing_interval or old.interval_count != new.interval_count:
        return "interval"
    return "quantity"


@dataclass(frozen=True)
class PreviewLine:
    description: str
    amount: Money
    tax: Money
    kind: str = LineKind.PRORATION.value
    quantity: int = 1
    period_start: datetime | date | None = None
    period_end: datetime | date | None = None
    # For the page's own words: a subscription line names its plan (description) and whether
    # it counts seats; a discount line its rate.
    seated: bool = False
    discount_bp: int = 0
    # What the invoice line is given (before an inclusive rate takes its tax out) and its price.
    charged_minor: int = 0
    price_id: int | None = None
    # A proration line's plan and side (a credit for the old price, a charge for the new one).
    plan: str = ""
    is_credit: bool = False


@dataclass(frozen=True)
class InvoicePreview:
    """An invoice not made yet: what it will say, line by line."""

    on: datetime | None
    lines: list[PreviewLine]
    currency: str

    @property
    def subtotal(self) -> Money:
        return sum((line.amount for line in self.lines), Money.zero(self.currency))

    @property
    def tax(self) -> Money:
        return sum((line.tax for line in self.lines), Money.zero(self.currency))

    @property
    def total(self) -> Money:
        return self.subtotal + self.tax


@dataclass(frozen=True)
class ChangePreview:
    subscription: Subscription
    price: Price
    quantity: int
    kind: str
    direction: str
    timing: str
    timing_choices: tuple[str, ...]
    effective_at: datetime
    due_now: InvoicePreview
    next_invoice: InvoicePreview
    notes: list[str] = field(default_factory=list)


def targets(session: Session, subscription: Subscription) -> list[Price]:
    """Every price the subscription may move to, in its currency (its own plan included)."""
    return queries.target_prices(session, subscription.price.plan_id, subscription.price.currency)


def resolve_target(
    session: Session,
    subscription: Subscription,
    *,
    plan_code: str | None,
    interval: str | None,
    offered: Sequence[Price] | None = None,
) -> Price:
    """The price a form's (plan, interval) names; unknown or disallowed plans are refused.

    `offered` is targets(session, subscription) when the caller has it already (the change
    page lists them too): the price is found among them, and the database is asked again only
    to say why a plan is not there."""
    current = subscription.price
    code = (plan_code or current.plan.code).strip()[:64]
    wanted_interval = (interval or current.billing_interval).strip()[:8]
    if wanted_interval not in ("month", "year"):
        raise ChangeRefused(N_("Choose monthly or yearly billing."))
    if offered is None:
        offered = targets(session, subscription)
    prices = [price for price in offered if price.plan.code == code]
    plan = prices[0].plan if prices else _plan_not_offered(session, current, code)
    if plan.id == current.plan_id and wanted_interval == current.billing_interval:
        # NOTE: staying on the same plan keeps the price version the customer is on.
        return current
    for price in prices:
        if price.billing_interval == wanted_interval:
            return price
    raise ChangeRefused(
        N_("%(plan)s is not offered with that billing interval in %(currency)s."),
        params={"plan": plan.name, "currency": current.currency},
    )


def _plan_not_offered(session: Session, current: Price, code: str) -> Plan:
    """The plan of a code that has no price among the targets: refused as unknown or not
    allowed, else returned (an allowed plan with no price in this currency)."""
    plan = session.scalar(select(Plan).where(Plan.code == code, Plan.is_active.is_(True)))
    if plan is None:
        raise ChangeRefused(
            N_("We do not offer a plan called “%(plan)s”. Choose one of the plans listed."),
            params={"plan": code[:40]},
        )
    if plan.id not in queries.allowed_target_plan_ids(session, current.plan_id):
        raise ChangeRefused(
            N_("%(current)s cannot be changed to %(plan)s here. Choose one of the plans listed."),
            params={"current": current.plan.name, "plan": plan.name},
        )
    return plan


def _quantity_for(price: Price, subscription: Subscription, quantity: int | None) -> int:
    """The seats a change asks for: as given, else the current count (one for unseated plans)."""
    if price.pricing_model not in (PricingModel.PER_UNIT.value, PricingModel.TIERED.value):
        return 1  # NOTE: a plan not priced by seat is one subscription, whatever the form says
    return subscription.quantity if quantity is None else quantity


def _check_quantity(price: Price, quantity: int) -> None:
    if price.pricing_model in (PricingModel.FLAT.value, PricingModel.METERED.value):
        if quantity != 1:
            raise ChangeRefused(
                N_("%(plan)s is not priced by seat: it is always one subscription."),
                params={"plan": price.plan.name},
            )
        return
    if quantity < max(price.min_quantity, 1):
        raise ChangeRefused(
            N_("%(plan)s needs at least %(count)s seats."),
            params={"plan": price.plan.name, "count": price.min_quantity},
        )
    if price.max_quantity is not None and quantity > price.max_quantity:
        raise ChangeRefused(
            N_("%(plan)s allows at most %(count)s seats. For more, choose a larger plan."),
            params={"plan": price.plan.name, "count": price.max_quantity},
        )


def local_day_text(account: Account, moment: datetime) -> str:
    """A moment as the calendar day it is in the account's time zone, in its locale's words
    (the same formatting as every date on the pages, also outside a request)."""
    local = moment.astimezone(ZoneInfo(account.timezone)).date()
    return format_day(local, locale=account.locale or None)


def _renewal_pending(subscription: Subscription) -> RenewalPending:
    return RenewalPending(
        N_(
            "Your subscription renewed on %(date)s and its new period is being prepared. "
            "Please try again in a little while."
        ),
        params={"date": local_day_text(subscription.account, subscription.current_period_end)},
    )


def _check_can_change(session: Session, subscription: Subscription, grace_days: int) -> None:
    status = subscription.status
    if status == SubscriptionStatus.CANCELED.value:
        raise Conflict(N_("This subscription has ended, so it cannot be changed."))
    if status == SubscriptionStatus.PAUSED.value:
        raise Conflict(N_("This subscription is paused. Resume it first, then change it."))
    if clock.now() >= subscription.current_period_end:
        raise _renewal_pending(subscription)
    today = clock.today(subscription.account.timezone)
    late = session.scalar(
        queries.overdue_invoices(session, subscription.id, today - timedelta(days=grace_days))
    )
    if late is not None:
        raise ChangeRefused(
            N_(
                "Invoice %(number)s for this subscription is overdue. Please pay it first; "
                "then you can change your plan."
            ),
            params={"number": late.number},
        )


def proration_description(plan: str, quantity: int, *, seated: bool, is_credit: bool) -> str:
    """A proration line's words in the active language (an invoice stores them in the
    account's: see _invoice_proration)."""
    if is_credit:
        if seated:
            return ngettext(
                "Unused time on %(plan)s, %(num)d seat",
                "Unused time on %(plan)s, %(num)d seats",
                quantity,
                plan=plan,
            )
        return _("Unused time on %(plan)s", plan=plan)
    if seated:
        return ngettext(
            "Remaining time on %(plan)s, %(num)d seat",
            "Remaining time on %(plan)s, %(num)d seats",
            quantity,
            plan=plan,
        )
    return _("Remaining time on %(plan)s", plan=plan)


def _proration_lines(
    subscription: Subscription, new: Price, new_quantity: int, at: datetime
) -> list[PreviewLine]:
    old = subscription.price
    lines = prorate(
        old_price=old,
        old_quantity=subscription.quantity,
        new_price=new,
        new_quantity=new_quantity,
        period_start=subscription.current_period_start,
        period_end=subscription.current_period_end,
        at=at,
    )
    country = subscription.account.country
    result = []
    for line in lines:
        # NOTE: the credit is taxed at the old price's rate, the charge at the new one's.
        net, line_tax = split_tax(line.amount, line.price, country)
        result.append(
            PreviewLine(
                # NOTE: in the page's language here; the invoice stores its own, in the account's.
                description=proration_description(
                    line.price.plan.name,
                    line.quantity,
                    seated=_seated(line.price),
                    is_credit=line.is_credit,
                ),
                amount=net,
                tax=line_tax,
                kind=LineKind.PRORATION.value,
                quantity=line.quantity,
                period_start=line.start,
                period_end=line.end,
                seated=_seated(line.price),
                charged_minor=line.amount.minor,
                price_id=line.price.id,
                plan=line.price.plan.name,
                is_credit=line.is_credit,
            )
        )
    return result


def _seated(price: Price) -> bool:
    return price.pricing_model in (PricingModel.PER_UNIT.value, PricingModel.TIERED.value)


def next_regular_invoice(
    subscription: Subscription,
    price: Price | None = None,
    quantity: int | None = None,
    *,
    usage_units: int | None = None,
    starts: datetime | None = None,
) -> InvoicePreview:
    """The next renewal invoice, line by line, for the price and seats it will bill. A metered
    price bills the period now running in arrears: its fee and `usage_units` so far."""
    price = price or subscription.price
    quantity = subscription.quantity if quantity is None else quantity
    country = subscription.account.country
    lines: list[PreviewLine] = []

    def add(amount: Money, **fields: Any) -> None:
        net, line_tax = split_tax(amount, price, country)
        lines.append(
            PreviewLine(
                amount=net, tax=line_tax, charged_minor=amount.minor, price_id=price.id, **fields
            )
        )

    if price.pricing_model == PricingModel.METERED.value:
        start, end = subscription.current_period_start, subscription.current_period_end
        add(
            Money(price.flat_amount_minor, price.currency),
            description=price.plan.name,
            kind=LineKind.SUBSCRIPTION.value,
            period_start=start,
            period_end=end,
        )
        units = usage_units or 0
        add(
            Money(price.unit_amount_minor * units, price.currency),
            description=price.unit_label,
            kind=LineKind.USAGE.value,
            quantity=units,
            period_start=start,
            period_end=end,
        )
        base = Money(price.flat_amount_minor + price.unit_amount_minor * units, price.currency)
    else:
        # NOTE: after a scheduled pause, the next period starts on the day it resumes.
        start = starts or subscription.current_period_end
        base = period_charge(price, quantity)
        add(
            base,
            description=price.plan.name,
            kind=LineKind.SUBSCRIPTION.value,
            quantity=quantity,
            period_start=start,
            period_end=period_end(
                start, price.billing_interval, price.interval_count, subscription.account.timezone
            ),
            seated=_seated(price),
        )
    discount_bp = subscription.discount_bp or 0
    if discount_bp and (subscription.discount_periods_left or 0) > 0:
        add(
            -base.basis_points(discount_bp),
            description="",
            kind=LineKind.DISCOUNT.value,
            discount_bp=discount_bp,
        )
    on = subscription.current_period_end
    if starts is not None and price.pricing_model != PricingModel.METERED.value:
        on = starts
    return InvoicePreview(on=on, lines=lines, currency=price.currency)


def preview_change(
    session: Session,
    subscription: Subscription,
    *,
    plan_code: str | None = None,
    interval: str | None = None,
    quantity: int | None = None,
    timing: str | None = None,
    at: datetime | None = None,
    offered: Sequence[Price] | None = None,
) -> ChangePreview:
    """What a change would do, before anything changes: the exact proration lines, their tax,
    the total due now, and the next regular invoice. `offered`: see resolve_target."""
    at = at or clock.now()
    if subscription.status == SubscriptionStatus.CANCELED.value:
        raise Conflict(N_("This subscription has ended, so it cannot be changed."))
    if subscription.status == SubscriptionStatus.PAUSED.value:
        raise Conflict(N_("This subscription is paused. Resume it first, then change it."))
    if at >= subscription.current_period_end:
        raise _renewal_pending(subscription)
    price = resolve_target(
        session, subscription, plan_code=plan_code, interval=interval, offered=offered
    )
    quantity = _quantity_for(price, subscription, quantity)
    _check_quantity(price, quantity)
    old = subscription.price
    direction = direction_of(old, subscription.quantity, price, quantity)
    kind = change_kind(old, price, subscription.quantity, quantity)
    notes: list[str] = []
    if direction == "same":
        choices: tuple[str, ...] = ()
    elif kind == "interval" or months_in(old) != months_in(price):
        # NOTE: a new billing interval starts a new kind of period: it begins at the renewal.
        choices = ("period_end",)
        notes.append(N_("A new billing interval starts at your next renewal."))
    elif subscription.status == SubscriptionStatus.TRIALING.value:
        choices = ("now",)
        notes.append(N_("You are in your free trial: the change applies now at no charge."))
    elif direction == "upgrade":
        choices = ("now", "period_end")
    else:
        choices = ("period_end",)
        notes.append(N_("Downgrades and fewer seats start at your next renewal."))
    chosen = timing if timing in choices else (choices[0] if choices else "period_end")
    currency = old.currency
    if chosen == "now" and subscription.status != SubscriptionStatus.TRIALING.value:
        due_lines = _proration_lines(subscription, price, quantity, at)
        effective_at = at
    else:
        due_lines = []
        effective_at = at if chosen == "now" else subscription.current_period_end
    return ChangePreview(
        subscription=subscription,
        price=price,
        quantity=quantity,
        kind=kind,
        direction=direction,
        timing=chosen,
        timing_choices=choices,
        effective_at=effective_at,
        due_now=InvoicePreview(on=at if due_lines else None, lines=due_lines, currency=currency),
        next_invoice=next_regular_invoice(subscription, price, quantity),
        notes=notes,
    )


# -- locking and the common bookkeeping -----------------------------------------------------------


def lock_subscription(session: Session, account_id: int, public_id: str) -> Subscription:
    """The account's subscription, locked for this transaction (FOR UPDATE on PostgreSQL) and
    read afresh; another account's answers NotFound, like a missing one."""
    if not queries.is_public_id(public_id):
        raise NotFound(N_("We could not find that subscription."))
    found = session.scalar(
        select(Subscription)
        .where(Subscription.account_id == account_id, Subscription.public_id == public_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if found is None:
        raise NotFound(N_("We could not find that subscription."))
    return found


def _check_version(subscription: Subscription, expected_version: int | None) -> None:
    if expected_version is not None and expected_version != subscription.version:
        raise StaleForm(
            N_(
                "Your subscription changed after this page was shown (perhaps in another tab). "
                "Here is how it stands now; please check and choose again."
            )
        )


def _state(subscription: Subscription) -> dict[str, Any]:
    return {
        "price_id": subscription.price_id,
        "plan": subscription.price.plan.code,
        "quantity": subscription.quantity,
        "status": subscription.status,
        "cancel_at_period_end": subscription.cancel_at_period_end,
        "pause_until": subscription.pause_until.isoformat() if subscription.pause_until else None,
        "version": subscription.version,
    }


def _bump(subscription: Subscription) -> None:
    subscription.bump_version()


def _audit(
    session: Session,
    actor: Actor,
    action: str,
    subscription: Subscription,
    before: dict[str, Any],
    change: SubscriptionChange | None = None,
) -> None:
    after = _state(subscription)
    if change is not None:
        after["change_id"] = change.id
        after["change_status"] = change.status
    actor.record(
        session,
        action,
        account_id=subscription.account_id,
        target_type="subscription",
        target_id=subscription.public_id,
        before=before,
        after=after,
    )


def _confirm_by_email(
    session: Session,
    template: str,
    subscription: Subscription,
    change: SubscriptionChange | None,
    credit: Money | None = None,
) -> None:
    account = subscription.account
    # NOTE: the subject and bodies are the email catalog's, in the account's language.
    queue_email(
        session,
        to=account.billing_email,
        template=template,
        context={
            "account": account,
            "subscription": subscription,
            "change": change,
            "credit": credit,
        },
        account_id=account.id,
        # NOTE: the version is bumped by every change: one email per change, never two.
        dedupe_key=f"{template}:{subscription.public_id}:v{subscription.version}",
    )


def _new_change(
    session: Session,
    subscription: Subscription,
    actor: Actor,
    *,
    kind: str,
    status: str,
    timing: str,
    effective_at: datetime,
    **fields: Any,
) -> SubscriptionChange:
    now = clock.now()
    change = SubscriptionChange(
        subscription_id=subscription.id,
        kind=kind,
        status=status,
        timing=timing,
        actor_kind=actor.kind,
        actor_user_id=actor.user_id,
        requested_at=now,
        effective_at=effective_at,
        applied_at=now if status == "applied" else None,
        from_price_id=fields.pop("from_price_id", subscription.price_id),
        from_quantity=fields.pop("from_quantity", subscription.quantity),
        **fields,
    )
    session.add(change)
    session.flush()
    return change


def _recent_duplicate(
    session: Session, subscription: Subscription, **wanted: Any
) -> SubscriptionChange | None:
    """The change this form already made a moment ago (a double tap), if it is one."""
    latest = session.scalar(
        select(SubscriptionChange)
        .where(SubscriptionChange.subscription_id == subscription.id)
        .order_by(SubscriptionChange.id.desc())
        .limit(1)
    )
    if latest is None or latest.requested_at < clock.now() - DUPLICATE_WINDOW:
        return None
    if all(getattr(latest, name) == value for name, value in wanted.items()):
        return latest
    return None


@dataclass(frozen=True)
class Outcome:
    """What a change did: the history row, the proration invoice (if any), and whether this
    was a repeat of a change already made (a double submit)."""

    change: SubscriptionChange | None
    invoice: Invoice | None = None
    duplicate: bool = False
    # Canceling now: the credit given for the unused time, if any.
    credit: UnusedTimeCredit | None = None


def _guarded(
    session: Session,
    account: Account,
    public_id: str,
    expected_version: int | None,
    duplicate_of: dict[str, Any] | None = None,
) -> tuple[Subscription, Outcome | None]:
    subscription = lock_subscription(session, account.id, public_id)
    if expected_version is not None and expected_version != subscription.version:
        if duplicate_of is not None:
            repeat = _recent_duplicate(session, subscription, **duplicate_of)
            if repeat is not None:
                invoice = session.get(Invoice, repeat.invoice_id) if repeat.invoice_id else None
                return subscription, Outcome(repeat, invoice, duplicate=True)
        _check_version(subscription, expected_version)
    return subscription, None


# -- change of plan, seats or interval ------------------------------------------------------------


def change_subscription(
    session: Session,
    account: Account,
    public_id: str,
    *,
    plan_code: str | None,
    interval: str | None,
    quantity: int | None,
    timing: str | None,
    expected_version: int | None,
    seller: dict[str, Any],
    actor: Actor = SYSTEM,
    grace_days: int = DEFAULT_GRACE_DAYS,
) -> Outcome:
    """Make the change the preview showed. An upgrade applies now and its proration is invoiced
    at once (finalized through billing's one path); a downgrade or fewer seats is scheduled for
    the period end, where the billing run applies it (the customer may withdraw it before)."""
    subscription = lock_subscription(session, account.id, public_id)
    if expected_version is not None and expected_version != subscription.version:
        # NOTE: a double tap arrives with the version the first tap already moved on: when the
        # latest change is exactly what this form asked for, moments ago, it is that change.
        try:
            price = resolve_target(session, subscription, plan_code=plan_code, interval=interval)
            wanted = {
                "to_price_id": price.id,
                "to_quantity": _quantity_for(price, subscription, quantity),
            }
        except ValidationFailed:
            wanted = None
        repeat = _recent_duplicate(session, subscription, **wanted) if wanted else None
        if repeat is not None:
            invoice = session.get(Invoice, repeat.invoice_id) if repeat.invoice_id else None
            return Outcome(repeat, invoice, duplicate=True)
        _check_version(subscription, expected_version)
    preview = preview_change(
        session,
        subscription,
        plan_code=plan_code,
        interval=interval,
        quantity=quantity,
        timing=timing,
    )
    if preview.direction == "same":
        raise ChangeRefused(N_("That is the plan you are on already. Nothing was changed."))
    _check_can_change(session, subscription, grace_days)
    if queries.scheduled_change(session, subscription.id) is not None:
        raise Conflict(
            N_(
                "A change is already scheduled for your next renewal. Withdraw it first if you "
                "want a different one."
            )
        )
    before = _state(subscription)
    if preview.timing == "period_end":
        change = _new_change(
            session,
            subscription,
            actor,
            kind=preview.kind,
            status="scheduled",
            timing="period_end",
            effective_at=subscription.current_period_end,
            to_price_id=preview.price.id,
            to_quantity=preview.quantity,
        )
        _bump(subscription)
        session.flush()
        _audit(session, actor, "subscription.change_scheduled", subscription, before, change)
        _confirm_by_email(session, "subscription_changed", subscription, change)
        return Outcome(change)

    now = preview.effective_at
    change = _new_change(
        session,
        subscription,
        actor,
        kind=preview.kind,
        status="applied",
        timing="now",
        effective_at=now,
        to_price_id=preview.price.id,
        to_quantity=preview.quantity,
    )
    invoice = None
    if preview.due_now.lines:
        invoice = _invoice_proration(session, subscription, change, preview, seller, actor)
        change.invoice_id = invoice.id
    subscription.price_id = preview.price.id
    subscription.price = preview.price
    subscription.quantity = preview.quantity
    _bump(subscription)
    session.flush()
    _audit(session, actor, "subscription.changed", subscription, before, change)
    _confirm_by_email(session, "subscription_changed", subscription, change)
    return Outcome(change, invoice)


def _invoice_proration(
    session: Session,
    subscription: Subscription,
    change: SubscriptionChange,
    preview: ChangePreview,
    seller: dict[str, Any],
    actor: Actor,
) -> Invoice:
    account = subscription.account
    zone = ZoneInfo(account.timezone)
    from portal.i18n import language_for

    # NOTE: an invoice keeps its words as issued: in the account's language, whoever asked.
    with force_locale(language_for(account.locale)):
        descriptions = [
            proration_description(
                line.plan, line.quantity, seated=line.seated, is_credit=line.is_credit
            )
            for line in preview.due_now.lines
        ]
        memo = _("Proration for a change of subscription")
    lines = []
    for line, description in zip(preview.due_now.lines, descriptions, strict=True):
        price = session.get(Price, line.price_id) if line.price_id else preview.price
        assert price is not None
        start, end = line.period_start, line.period_end
        lines.append(
            billing.LineInput(
                description=description,
                unit_amount_minor=line.charged_minor,
                amount_minor=line.charged_minor,
                quantity=1,
                kind=LineKind.PRORATION,
                period_start=start.astimezone(zone).date()
                if isinstance(start, datetime)
                else start,
                period_end=end.astimezone(zone).date() if isinstance(end, datetime) else end,
                tax_rate=tax.rate_for(price, account.country),
                price_id=price.id,
                subscription_change_id=change.id,
            )
        )
    invoice = billing.create_draft_invoice(
        session,
        account,
        lines,
        subscription_id=subscription.id,
        billing_key=f"change:{change.id}",
        memo=memo,
    )
    billing.finalize_invoice(session, invoice, seller=seller, actor=actor)
    return invoice


def withdraw_scheduled_change(
    session: Session,
    account: Account,
    public_id: str,
    *,
    expected_version: int | None,
    actor: Actor = SYSTEM,
) -> Outcome:
    """Take back the change waiting for the period end (a downgrade, fewer seats, a cancel)."""
    subscription, _repeat = _guarded(session, account, public_id, expected_version)
    change = queries.scheduled_change(session, subscription.id)
    if change is None:
        raise Conflict(N_("There is no scheduled change to withdraw."))
    before = _state(subscription)
    change.status = "withdrawn"
    change.withdrawn_at = clock.now()
    if change.kind == "cancel":
        subscription.cancel_at_period_end = False
    _bump(subscription)
    session.flush()
    _audit(session, actor, "subscription.change_withdrawn", subscription, before, change)
    _confirm_by_email(session, "subscription_changed", subscription, change)
    return Outcome(change)


# -- cancel and reactivate ------------------------------------------------------------------------


def cancel_subscription(
    session: Session,
    account: Account,
    public_id: str,
    *,
    when: str = "period_end",
    reason: str,
    reason_text: str = "",
    expected_version: int | None,
    actor: Actor = SYSTEM,
) -> Outcome:
    """End the subscription at the period end (the default) or now where the plan allows it."""
    if reason not in CANCEL_REASON_CODES:
        raise ValidationFailed(N_("Please choose a reason from the list."))
    if when not in ("period_end", "now"):
        raise ValidationFailed(N_("Choose when the subscription should end."))
    wanted = {"kind": "cancel", "timing": when}
    subscription, repeat = _guarded(session, account, public_id, expected_version, wanted)
    if repeat is not None:
        return repeat
    if subscription.status == SubscriptionStatus.CANCELED.value:
        raise Conflict(N_("This subscription has already ended."))
    if when == "now" and not subscription.price.plan.allows_cancel_now:
        raise NotAllowed(
            N_("%(plan)s ends at the end of a paid period; it cannot be ended today."),
            params={"plan": subscription.price.plan.name},
        )
    scheduled = queries.scheduled_change(session, subscription.id)
    if scheduled is not None and scheduled.kind == "cancel":
        raise Conflict(N_("This subscription is already set to end at the period end."))
    before = _state(subscription)
    now = clock.now()
    if scheduled is not None:
        # NOTE: a downgrade waiting for a renewal that will not come is moot: it is withdrawn.
        scheduled.status = "withdrawn"
        scheduled.withdrawn_at = now
    text = reason_text.strip()[:500]
    if when == "now":
        # NOTE: measured before the subscription ends (only a live period has time left).
        credit = unused_time_credit(session, subscription, now)
        change = _new_change(
            session,
            subscription,
            actor,
            kind="cancel",
            status="applied",
            timing="now",
            effective_at=now,
            reason=reason,
            reason_text=text,
        )
        subscription.status = SubscriptionStatus.CANCELED.value
        subscription.canceled_at = now
        subscription.cancel_at_period_end = False
        if credit is not None:
            _issue_unused_time_credit(session, subscription, credit, now, actor)
            # The history links the invoice the credit went to (its page lists the note).
            change.invoice_id = credit.parts[0][0].id
    else:
        credit = None
        change = _new_change(
            session,
            subscription,
            actor,
            kind="cancel",
            status="scheduled",
            timing="period_end",
            effective_at=subscription.current_period_end,
            reason=reason,
            reason_text=text,
        )
        subscription.cancel_at_period_end = True
    subscription.cancellation_reason = (reason + (": " + text if text else ""))[:500]
    _bump(subscription)
    session.flush()
    _audit(session, actor, "subscription.canceled", subscription, before, change)
    _confirm_by_email(
        session,
        "subscription_canceled",
        subscription,
        change,
        credit=credit.amount if credit is not None else None,
    )
    return Outcome(change, credit=credit)


def reactivate(
    session: Session,
    account: Account,
    public_id: str,
    *,
    expected_version: int | None,
    actor: Actor = SYSTEM,
) -> Outcome:
    """Keep a subscription that was set to end at the period end (before that end)."""
    wanted = {"kind": "reactivate"}
    subscription, repeat = _guarded(session, account, public_id, expected_version, wanted)
    if repeat is not None:
        return repeat
    scheduled = queries.scheduled_change(session, subscription.id)
    if (
        subscription.status == SubscriptionStatus.CANCELED.value
        or scheduled is None
        or scheduled.kind != "cancel"
    ):
        raise Conflict(N_("Only a subscription set to end at the period end can be kept."))
    before = _state(subscription)
    now = clock.now()
    scheduled.status = "withdrawn"
    scheduled.withdrawn_at = now
    subscription.cancel_at_period_end = False
    subscription.cancellation_reason = ""
    change = _new_change(
        session,
        subscription,
        actor,
        kind="reactivate",
        status="applied",
        timing="now",
        effective_at=now,
    )
    _bump(subscription)
    session.flush()
    _audit(session, actor, "subscription.reactivated", subscription, before, change)
    _confirm_by_email(session, "subscription_resumed", subscription, change)
    return Outcome(change)


# -- pause and resume -----------------------------------------------------------------------------


def pause_limit_days(plan: Plan) -> int:
    return min(plan.max_pause_days or MAX_PAUSE_DAYS, MAX_PAUSE_DAYS)


def pause_starts_on(subscription: Subscription) -> date:
    """The local day a pause begins: the end of the period already paid for."""
    zone = ZoneInfo(subscription.account.timezone)
    return subscription.current_period_end.astimezone(zone).date()


def parse_resume_on(raw: str | None, *, starts_on: date, plan: Plan) -> date:
    """The day a pause ends, as typed (YYYY-MM-DD): after the pause begins, within the plan's
    longest pause."""
    text = (raw or "").strip()[:20]
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise ValidationFailed(N_("Choose the day your subscription should start again.")) from None
    if day <= starts_on:
        raise ValidationFailed(
            N_("The pause begins on %(date)s; choose a day to start again after that."),
            params={"date": format_day(starts_on)},
        )
    if day > starts_on + timedelta(days=pause_limit_days(plan)):
        raise ValidationFailed(
            N_("A pause can last at most %(days)s days."),
            params={"days": pause_limit_days(plan)},
        )
    return day


def pause(
    session: Session,
    account: Account,
    public_id: str,
    *,
    resume_on: date,
    expected_version: int | None,
    actor: Actor = SYSTEM,
    grace_days: int = DEFAULT_GRACE_DAYS,
) -> Outcome:
    """Pause from the end of the period already paid for until `resume_on`: a scheduled change
    (withdrawable until then) that the billing run applies; nothing is billed while paused, and
    a new period starts, and is billed, on the day it resumes."""
    wanted = {"kind": "pause"}
    subscription, repeat = _guarded(session, account, public_id, expected_version, wanted)
    if repeat is not None:
        return repeat
    plan = subscription.price.plan
    if not plan.allows_pause:
        raise NotAllowed(N_("%(plan)s cannot be paused."), params={"plan": plan.name})
    if subscription.status not in LIVE_STATUSES:
        raise Conflict(N_("Only a running subscription can be paused."))
    _check_can_change(session, subscription, grace_days)
    if queries.scheduled_change(session, subscription.id) is not None:
        raise Conflict(
            N_("A change is scheduled for your next renewal. Withdraw it first, then pause.")
        )
    before = _state(subscription)
    resume_at = datetime.combine(resume_on, time(0), ZoneInfo(account.timezone))
    change = _new_change(
        session,
        subscription,
        actor,
        kind="pause",
        status="scheduled",
        timing="period_end",
        effective_at=subscription.current_period_end,
        resume_at=resume_at,
    )
    _bump(subscription)
    session.flush()
    _audit(session, actor, "subscription.pause_scheduled", subscription, before, change)
    _confirm_by_email(session, "subscription_paused", subscription, change)
    return Outcome(change)


def resume(
    session: Session,
    account: Account,
    public_id: str,
    *,
    expected_version: int | None,
    seller: dict[str, Any],
    actor: Actor = SYSTEM,
) -> Outcome:
    """Resume a paused subscription now, before its chosen day: a new period starts today and
    is billed as usual (by the billing run's own step, so the invoice is the one it would make)."""
    from portal.subscriptions.billing_run import bill_due_periods

    wanted = {"kind": "resume"}
    subscription, repeat = _guarded(session, account, public_id, expected_version, wanted)
    if repeat is not None:
        return repeat
    if subscription.status != SubscriptionStatus.PAUSED.value:
        raise Conflict(N_("This subscription is not paused."))
    before = _state(subscription)
    now = clock.now()
    change = _new_change(
        session,
        subscription,
        actor,
        kind="resume",
        status="scheduled",
        timing="now",
        effective_at=now,
    )
    subscription.pause_until = now
    session.flush()
    # NOTE: "due by tomorrow's local midnight" takes in the resume now and nothing else: the new
    # period it starts ends a whole interval later.
    tomorrow = clock.today(account.timezone) + timedelta(days=1)
    billed = bill_due_periods(session, subscription, tomorrow, seller=seller, actor=actor)
    invoice = billed.invoices[0] if billed.invoices else None
    if invoice is not None:
        change.invoice_id = invoice.id
    session.flush()
    _audit(session, actor, "subscription.resumed", subscription, before, change)
    _confirm_by_email(session, "subscription_resumed", subscription, change)
    return Outcome(change, invoice)


# -- the retention offer --------------------------------------------------------------------------

RETENTION_REASON = "retention_offer"


def retention_offer(subscription: Subscription) -> tuple[int, int] | None:
    """(discount in basis points, periods) the plan offers someone about to cancel, once per
    subscription: taken before (its history says so), it is not offered again."""
    plan = subscription.price.plan
    if not plan.retention_discount_bp or not plan.retention_discount_periods:
        return None
    if subscription.discount_bp or subscription.status not in LIVE_STATUSES:
        return None
    if any(change.kind == ChangeKind.DISCOUNT.value for change in subscription.changes):
        return None
    return plan.retention_discount_bp, plan.retention_discount_periods


def accept_retention_offer(
    session: Session,
    account: Account,
    public_id: str,
    *,
    expected_version: int | None,
    actor: Actor = SYSTEM,
) -> Outcome:
    """Stay with the one-time discount instead of canceling (the billing run applies it)."""
    wanted = {"kind": ChangeKind.DISCOUNT.value}
    subscription, repeat = _guarded(session, account, public_id, expected_version, wanted)
    if repeat is not None:
        return repeat
    offer = retention_offer(subscription)
    taken = session.scalar(
        select(SubscriptionChange.id).where(
            SubscriptionChange.subscription_id == subscription.id,
            SubscriptionChange.kind == ChangeKind.DISCOUNT.value,
        )
    )
    if offer is None or taken is not None:
        raise Conflict(N_("That offer is not available for this subscription."))
    before = _state(subscription)
    bp, periods = offer
    change = _new_change(
        session,
        subscription,
        actor,
        kind=ChangeKind.DISCOUNT.value,
        status="applied",
        timing="now",
        effective_at=clock.now(),
        to_price_id=subscription.price_id,
        to_quantity=subscription.quantity,
        reason=RETENTION_REASON,
        reason_text=f"{bp}:{periods}",  # read back by SubscriptionChange.discount_terms
    )
    subscription.discount_bp, subscription.discount_periods_left = offer
    _bump(subscription)
    session.flush()
    _audit(session, actor, "subscription.discount_accepted", subscription, before, change)
    _confirm_by_email(session, "subscription_changed", subscription, change)
    return Outcome(change)


@dataclass(frozen=True)
class CheaperOption:
    """The cheaper plan the cancel page offers: the change it would make (per the plan's rules:
    a downgrade starts at the renewal) and the next invoice with and without it."""

    preview: ChangePreview
    current_next: InvoicePreview

    @property
    def price(self) -> Price:
        return self.preview.price

    @property
    def saving(self) -> Money:
        return self.current_next.total - self.preview.next_invoice.total


def _cheaper_candidates(
    subscription: Subscription, offered: Sequence[Price]
) -> list[tuple[Price, int]]:
    """Allowed plans (of `offered`, the targets) on the same interval that cost less per period
    than the current one, each with the seats it would have."""
    current = subscription.price
    own = period_charge(current, subscription.quantity)
    found = []
    for price in offered:
        if price.plan_id == current.plan_id or price.billing_interval != current.billing_interval:
            continue
        quantity = subscription.quantity if _seated(price) else 1
        if price.max_quantity is not None and quantity > price.max_quantity:
            continue
        quantity = max(quantity, price.min_quantity or 1)
        if period_charge(price, quantity) < own:
            found.append((price, quantity))
    return found


def cheaper_option(
    session: Session, subscription: Subscription, *, grace_days: int = DEFAULT_GRACE_DAYS
) -> CheaperOption | None:
    """The one cheaper plan to offer instead of canceling (the dearest of the cheaper ones, the
    smallest step down), previewed; None when there is none or no change is possible now (a
    one-tap button that can only answer "not now" would be a trap)."""
    if subscription.status not in LIVE_STATUSES:
        return None
    try:
        _check_can_change(session, subscription, grace_days)
    except (Conflict, ValidationFailed):
        return None
    offered = targets(session, subscription)
    candidates = _cheaper_candidates(subscription, offered)
    if not candidates or queries.scheduled_change(session, subscription.id) is not None:
        return None
    price, quantity = max(candidates, key=lambda pair: period_charge(pair[0], pair[1]).minor)
    try:
        preview = preview_change(
            session,
            subscription,
            plan_code=price.plan.code,
            interval=price.billing_interval,
            quantity=quantity,
            offered=offered,
        )
    except (Conflict, ValidationFailed):
        return None
    return CheaperOption(preview, next_regular_invoice(subscription))


# -- the credit for unused time when canceling now ------------------------------------------------

_CREDITED_KINDS = (LineKind.SUBSCRIPTION.value, LineKind.PRORATION.value, LineKind.DISCOUNT.value)


@dataclass(frozen=True)
class UnusedTimeCredit:
    """What ending now gives back: the unused share of what this period's invoices charged,
    one credit note per invoice (its share, never more than is left to credit on it)."""

    amount: Money
    seconds: int
    until: datetime
    parts: tuple[tuple[Invoice, Money], ...]

    @property
    def days(self) -> int:
        """The unused time in whole days, to the nearest (for the sentence, not the sum)."""
        return (self.seconds + 43_200) // 86_400


def unused_time_credit(
    session: Session, subscription: Subscription, at: datetime | None = None
) -> UnusedTimeCredit | None:
    """The credit for the part of the paid period after `at` (None when nothing is due back).

    NOTE: each line this period's invoices charged in advance (the period's subscription line,
    an upgrade's proration lines, a discount) gives back its share of the time left: its amount
    with tax x seconds left / seconds it covers, rounded once per line. So a discount lowers the
    credit as it lowered the charge, and an upgrade's credit and charge lines make the credit
    that of the plan the customer is on now; no line gives back more than it charged.
    """
    at = at or clock.now()
    start, end = subscription.current_period_start, subscription.current_period_end
    if subscription.status not in LIVE_STATUSES or not start <= at < end:
        return None
    zone = ZoneInfo(subscription.account.timezone)
    first_day, last_day = start.astimezone(zone).date(), end.astimezone(zone).date()
    remaining = seconds_between(at, end)
    invoices = session.scalars(
        select(Invoice)
        .where(
            Invoice.subscription_id == subscription.id,
            Invoice.status.in_(billing.CREDITABLE_STATUSES),
            Invoice.issue_date >= first_day,
        )
        .options(selectinload(Invoice.lines))
        .order_by(Invoice.issue_date, Invoice.id)
    ).all()
    change_ids = {
        line.subscription_change_id
        for invoice in invoices
        for line in invoice.lines
        if line.subscription_change_id is not None
    }
    began = {
        change.id: change.effective_at
        for change in (
            session.scalars(select(SubscriptionChange).where(SubscriptionChange.id.in_(change_ids)))
            if change_ids
            else ()
        )
    }
    currency = subscription.price.currency
    shares: list[tuple[Invoice, int]] = []
    for invoice in invoices:
        minor = 0
        for line in invoice.lines:
            if line.kind not in _CREDITED_KINDS or line.period_end != last_day:
                continue
            covered_from = max(start, began.get(line.subscription_change_id, start))
            covered = seconds_between(covered_from, end)
            if covered <= 0:
                continue
            charged = Money(billing.line_charged_minor(line), currency)
            minor += share(charged, min(remaining, covered), covered).minor
        left = invoice.total_minor - invoice.amount_credited_minor
        if minor > 0 and left > 0:
            shares.append((invoice, min(minor, left)))
    # NOTE: an invoice whose lines come to less than nothing (not made by today's rules) would
    # give nothing back rather than take from another.
    if not shares:
        return None
    parts = tuple((invoice, Money(minor, currency)) for invoice, minor in shares)
    total = sum((amount for _invoice, amount in parts), Money.zero(currency))
    return UnusedTimeCredit(total, remaining, end, parts)


def credits_for_changes(
    session: Session, changes: Sequence[SubscriptionChange]
) -> dict[int, Money]:
    """The credit each early cancel in a history gave for its unused time, by change id (for
    the history's words; the credit notes themselves are listed on the invoice)."""
    wanted = {
        (change.invoice_id, change.applied_at): change.id
        for change in changes
        if change.kind == ChangeKind.CANCEL.value
        and change.timing == "now"
        and change.invoice_id is not None
        and change.applied_at is not None
    }
    if not wanted:
        return {}
    found: dict[int, Money] = {}
    notes = session.scalars(
        select(CreditNote).where(
            CreditNote.invoice_id.in_({invoice_id for invoice_id, _at in wanted}),
            CreditNote.reason == CreditNoteReason.ORDER_CHANGE.value,
        )
    )
    for note in notes:
        change_id = wanted.get((note.invoice_id, note.issued_at))
        if change_id is not None:
            amount = Money(note.amount_minor, note.currency)
            found[change_id] = found[change_id] + amount if change_id in found else amount
    return found


def _issue_unused_time_credit(
    session: Session,
    subscription: Subscription,
    credit: UnusedTimeCredit,
    at: datetime,
    actor: Actor,
) -> list[CreditNote]:
    account = subscription.account
    from portal.i18n import language_for

    with force_locale(language_for(account.locale)):
        words = _(
            "Unused time on %(plan)s, %(start)s to %(end)s (canceled early)",
            plan=subscription.price.plan.name,
            start=local_day_text(account, at),
            end=local_day_text(account, credit.until),
        )
    notes = []
    for invoice, amount in credit.parts:
        notes.append(
            billing.issue_credit_note(
                session,
                invoice,
                amount,
                reason=CreditNoteReason.ORDER_CHANGE.value,
                memo=words,
                lines=[(None, words, amount)],
                issued_at=at,
                actor=actor,
            )
        )
    actor.record(
        session,
        "subscription.unused_time_credited",
        account_id=account.id,
        target_type="subscription",
        target_id=subscription.public_id,
        after={
            "amount_minor": credit.amount.minor,
            "currency": credit.amount.currency,
            "seconds": credit.seconds,
            "credit_notes": [note.number for note in notes],
        },
    )
    return notes
