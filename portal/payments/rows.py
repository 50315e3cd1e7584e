"""What the payment history prints per payment, formatted once in Python (the page's read
model): see portal.billing.rows for why. The template only prints these texts."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flask import current_app
from markupsafe import Markup

from portal.formatting import day, money_minor
from portal.i18n import PageText
from portal.payments.models import Payment
from portal.payments.queries import PaymentRow


@dataclass(frozen=True, slots=True)
class PaymentLine:
    payment: Payment
    href: str
    title: Markup
    amount: str
    meta: Markup
    badge: Markup
    paid: Markup


def payment_lines(rows: Iterable[PaymentRow]) -> list[PaymentLine]:
    """The rows of templates/payments/_payment_rows.html."""
    text = PageText()
    _ = text.gettext
    template_globals = current_app.jinja_env.globals
    receipt_url = template_globals["receipt_url"]
    badge = template_globals["page_badge"]
    succeeded = badge("succeeded")
    lines = []
    for row in rows:
        p = row.payment
        method = p.method_description or _("Payment")
        if p.receipt_number:
            meta = Markup('%s <span aria-hidden="true">·</span> %s') % (
                _("Receipt %(number)s", number=p.receipt_number),
                method,
            )
        else:
            meta = Markup("%s") % method
        if p.amount_refunded_minor:
            refunded = (
                _("Refunded") if p.amount_refunded_minor == p.amount_minor else _("Partly refunded")
            )
            shown_badge = Markup('<span class="badge badge--uncollectible">%s</span>') % refunded
        else:
            shown_badge = succeeded
        if row.invoices:
            paid = _("Paid %(invoices)s", invoices=", ".join(number for number, _a in row.invoices))
        else:
            paid = _("Kept as credit for your next invoices")
        lines.append(
            PaymentLine(
                payment=p,
                href=receipt_url(p.public_id),
                title=Markup('<span class="visually-hidden">%s </span>%s')
                % (_("Receipt for the payment of"), day(p.received_at)),
                amount=money_minor(p.amount_minor, p.currency),
                meta=meta,
                badge=shown_badge,
                paid=paid,
            )
        )
    return lines
