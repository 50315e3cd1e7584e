"""The catalog of emails: for each template its subject, whether it is essential, which
opt-out silences it, whether billing's extra recipients get it, and what its main button opens.

Subjects are written here (not by the code that queues an email) so that they are translated
into the recipient account's language even when no request is running (the worker, a CLI).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from flask_babel import gettext

from portal.errors import N_
from portal.formatting import day, money_minor
from portal.notifications.models import AttachmentKind

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from portal.notifications.models import OutboxEmail

HEX_DIGITS = frozenset("0123456789abcdef")
DEFAULT_BRAND_COLOR = "#4338ca"

# Opt-outs (EmailPreference columns) a non-essential email can be silenced by.
OPT_OUT_REMINDERS = "opt_out_reminders"
OPT_OUT_CARD_EXPIRY = "opt_out_card_expiry"

Context = Mapping[str, Any]


@dataclass(frozen=True)
class Target:
    """What an email's main button opens: a kind of object and its id (see deep_links)."""

    kind: str
    object_id: int


@dataclass(frozen=True)
class EmailKind:
    name: str
    subject: str  # an N_ msgid; its %(…)s come from `subject_params`
    subject_params: Callable[[Context], dict[str, str]]
    essential: bool = True
    opt_out: str | None = None
    billing: bool = False  # the account's extra recipients (accounts payable) get it too
    target: Callable[[Context], Target | None] = lambda _context: None
    # (attachment_kind, attachment_ref) of a document sent along, rendered at send time.
    attachment: Callable[[Context], tuple[str, str] | None] = lambda _context: None
    trigger: str = ""  # for the README: what sends it
    # NOTE: for an email queued in bulk (one per invoice of a billing run): its bodies are
    # rendered when it is first sent, not when it is queued, from the context this rebuilds out
    # of the outbox row (None when the object is gone). Its subject is still made at queue time.
    # See portal.notifications.queueing.render_pending.
    context_at_send: Callable[[Session, OutboxEmail], dict[str, Any] | None] | None = None


def _locale(context: Context) -> str | None:
    account = context.get("account")
    return getattr(account, "locale", None)


def _when(value: date | datetime | None, context: Context) -> str:
    return day(value, locale=_locale(context)) if value is not None else ""


def _invoice_params(context: Context) -> dict[str, str]:
    invoice = context["invoice"]
    return {
        "number": invoice.number or "",
        "amount": money_minor(
            int(context.get("amount_due_minor", invoice.amount_due_minor)),
            invoice.currency,
            _locale(context),
        ),
        "date": _when(invoice.due_date, context),
    }


def _dispute_params(context: Context) -> dict[str, str]:
    dispute = context["dispute"]
    invoice = context.get("invoice")
    return {"number": getattr(invoice, "number", None) or dispute.public_id}


def _resume_params(context: Context) -> dict[str, str]:
    subscription = context["subscription"]
    return {"date": _when(context.get("resume_at") or subscription.pause_until, context)}


def _trial_params(context: Context) -> dict[str, str]:
    subscription = context["subscription"]
    return {"date": _when(subscription.trial_end or subscription.current_period_end, context)}


def _no_params(_context: Context) -> dict[str, str]:
    return {}


def _invoice_from_row(session: Session, email: OutboxEmail) -> dict[str, Any] | None:
    """An "invoice issued" email's context, read again from its row (the invoice it attaches)."""
    from portal.billing.models import Invoice

    ref = email.attachment_ref or ""
    invoice = session.get(Invoice, int(ref)) if ref.isdigit() else None
    if invoice is None or invoice.account_id != email.account_id:
        return None
    return {"account": invoice.account, "invoice": invoice}


def _invoice_target(context: Context) -> Target | None:
    return Target("invoice", context["invoice"].id)


def _receipt_target(context: Context) -> Target | None:
    return Target("receipt", context["payment"].id)


def _dispute_target(context: Context) -> Target | None:
    return Target("dispute", context["dispute"].id)


def _subscription_target(context: Context) -> Target | None:
    return Target("subscription", context["subscription"].id)


def _methods_target(context: Context) -> Target | None:
    return Target("payment_methods", context["account"].id)


_KINDS = (
    EmailKind(
        "login_link",
        N_("Your sign-in link"),
        _no_params,
        trigger="Someone asks for a sign-in link on /login (or from a used link's page).",
    ),
    EmailKind(
        "invoice_issued",
        N_("Invoice %(number)s: %(amount)s due %(date)s"),
        _invoice_params,
        billing=True,
        target=_invoice_target,
        attachment=lambda context: (AttachmentKind.INVOICE_PDF.value, str(context["invoice"].id)),
        trigger="An invoice is finalized (billing run, one-off invoice); the PDF is attached.",
        context_at_send=_invoice_from_row,
    ),
    EmailKind(
        "receipt",
        N_("Receipt for your payment"),
        _no_params,
        billing=True,
        target=_receipt_target,
        trigger="A payment is recorded (card payment, webhook, reconcile, automatic retry).",
    ),
    EmailKind(
        "payment_failed",
        N_("Your payment for invoice %(number)s did not go through"),
        _invoice_params,
        billing=True,
        target=_invoice_target,
        trigger="An automatic charge of the saved card fails (with the next retry date).",
    ),
    EmailKind(
        "action_required",
        N_("Please confirm your payment for invoice %(number)s"),
        _invoice_params,
        billing=True,
        target=_invoice_target,
        trigger="An automatic charge needs the bank's confirmation (3-D Secure).",
    ),
    EmailKind(
        "card_expiring",
        N_("Your card ending in %(last4)s expires soon"),
        lambda context: {"last4": str(context["method"].last4)},
        essential=False,
        opt_out=OPT_OUT_CARD_EXPIRY,
        billing=True,
        target=_methods_target,
        trigger="The default card expires at the end of next month.",
    ),
    EmailKind(
        "reminder_before_due",
        N_("Invoice %(number)s is due on %(date)s"),
        _invoice_params,
        essential=False,
        opt_out=OPT_OUT_REMINDERS,
        billing=True,
        target=_invoice_target,
        trigger="`billing remind`: an open invoice is due in DUNNING_BEFORE_DAYS days.",
    ),
    EmailKind(
        "reminder_after_due",
        N_("Invoice %(number)s is overdue"),
        _invoice_params,
        billing=True,
        target=_invoice_target,
        trigger="`billing remind`: an open invoice is DUNNING_AFTER_DAYS days past due.",
    ),
    EmailKind(
        "subscription_changed",
        N_("Your subscription has changed"),
        _no_params,
        target=_subscription_target,
        trigger="A plan, quantity or interval change is applied.",
    ),
    EmailKind(
        "subscription_canceled",
        N_("Your subscription is canceled"),
        _no_params,
        target=_subscription_target,
        trigger="A subscription is canceled (now or at the end of its period).",
    ),
    EmailKind(
        "subscription_paused",
        N_("Your subscription is paused"),
        _no_params,
        target=_subscription_target,
        trigger="A subscription is paused.",
    ),
    EmailKind(
        "subscription_resuming",
        N_("Your subscription resumes on %(date)s"),
        _resume_params,
        target=_subscription_target,
        trigger="A paused subscription resumes in a few days.",
    ),
    EmailKind(
        "subscription_resumed",
        N_("Your subscription is active again"),
        _no_params,
        target=_subscription_target,
        trigger="A paused subscription resumes.",
    ),
    EmailKind(
        "trial_ending",
        N_("Your trial ends on %(date)s"),
        _trial_params,
        target=_subscription_target,
        trigger="A trial ends in a few days.",
    ),
    EmailKind(
        "dispute_received",
        N_("We received your dispute about %(number)s"),
        _dispute_params,
        target=_dispute_target,
        trigger="A customer opens a dispute (or a card chargeback arrives).",
    ),
    EmailKind(
        "dispute_replied",
        N_("New reply about your dispute of %(number)s"),
        _dispute_params,
        target=_dispute_target,
        trigger="Staff reply on a dispute (internal notes never send one).",
    ),
    EmailKind(
        "dispute_resolved",
        N_("Your dispute about %(number)s is resolved"),
        _dispute_params,
        target=_dispute_target,
        trigger="A dispute is resolved or rejected.",
    ),
)
KINDS: dict[str, EmailKind] = {kind.name: kind for kind in _KINDS}


def kind_of(template: str) -> EmailKind | None:
    return KINDS.get(template)


def subject_for(kind: EmailKind, context: Context) -> str:
    """The subject in the active language (call inside force_locale for an account's)."""
    return gettext(kind.subject, **kind.subject_params(context))


def brand(config: Mapping[str, Any]) -> dict[str, str]:
    """The brand of every email, from configuration; a colour is used only as a plain hex."""
    seller = config.get("SELLER") or {}
    color = str(config.get("BRAND_COLOR") or "")
    valid = len(color) in (4, 7) and color.startswith("#") and set(color[1:].lower()) <= HEX_DIGITS
    name = str(config.get("BRAND_NAME") or "") or gettext("Billing")
    return {
        "name": name,
        "initial": name[:1].upper(),
        "color": color if valid else DEFAULT_BRAND_COLOR,
        "logo_url": str(config.get("BRAND_LOGO_URL") or ""),
        "support_email": str(config.get("BRAND_SUPPORT_EMAIL") or seller.get("email") or ""),
        "seller_name": str(seller.get("name") or name),
        "seller_address": ", ".join(str(seller.get("address") or "").splitlines()),
    }
