"""What the invoice lists print per invoice, formatted once in Python (the pages' read model).

NOTE: a call in a template costs ~10 µs (Jinja's context call, argument binding, the gettext
look-up, Markup and escaping); a row of the invoice list made about 26 of them, more than the
rest of its request. Here each row's texts are formatted with the same functions the templates
use (portal.formatting, the request's translations, the cached badges and icons), so the
template only prints them: the output is byte for byte what the template wrote itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from flask import current_app
from markupsafe import Markup

from portal.billing.models import Invoice
from portal.formatting import day, money
from portal.i18n import PageText, html_lang
from portal.web import invoice_url


@dataclass(frozen=True, slots=True)
class InvoiceRow:
    invoice: Invoice
    overdue: bool
    href: str | None
    title: Markup
    amount: Markup
    meta: Markup
    badge: Markup
    # The foot's icon and its sentence, with the whitespace the page always had between them.
    foot: Markup


def due_phrase(due_date: date, today: date, overdue: bool, text: PageText | None = None) -> Markup:
    """When a payable invoice is due, said from today ("Due Oct 21, 2026 · in 3 days"); the
    one definition (templates/_ui.html's due_phrase macro prints this)."""
    t = text or PageText()
    _ = t.gettext
    ngettext = t.ngettext
    days = (due_date - today).days
    if overdue:
        return ngettext(
            'Was due %(date)s <span aria-hidden="true">·</span> <strong>%(num)d day overdue</strong>',  # noqa: E501 (one msgid)
            'Was due %(date)s <span aria-hidden="true">·</span> <strong>%(num)d days overdue</strong>',  # noqa: E501
            -days,
            date=day(due_date),
        )
    if days == 0:
        return Markup("<strong>%s</strong>") % _("Due today")
    if days == 1:
        return _("Due tomorrow, %(date)s", date=day(due_date))
    if days > 1:
        return ngettext(
            'Due %(date)s <span aria-hidden="true">·</span> in %(num)d day',
            'Due %(date)s <span aria-hidden="true">·</span> in %(num)d days',
            days,
            date=day(due_date),
        )
    return _("Due %(date)s", date=day(due_date))


def invoice_rows(invoices: Iterable[Invoice], today: date) -> list[InvoiceRow]:
    """The invoice list's rows (templates/billing/_invoice_rows.html prints them)."""
    t = PageText()
    _ = t.gettext
    template_globals = current_app.jinja_env.globals
    icon = template_globals["cached_icon"]
    badge = template_globals["cached_badge"]
    language = html_lang()
    rows = []
    for inv in invoices:
        overdue = inv.is_overdue(today)
        unpaid = inv.status in ("open", "uncollectible") and inv.amount_due_minor > 0
        issued = day(inv.issue_date)
        if unpaid:
            amount = _(
                '<span class="visually-hidden">Amount due: </span>%(amount)s',
                amount=money(inv.amount_due),
            )
        else:
            amount = _(
                '<span class="visually-hidden">Total: </span>%(amount)s', amount=money(inv.total)
            )
        if unpaid and inv.amount_due_minor != inv.total_minor:
            meta = _(
                'Issued %(date)s <span aria-hidden="true">·</span> %(total)s total',
                date=issued,
                total=money(inv.total),
            )
        else:
            meta = _("Issued %(date)s", date=issued)
        if unpaid and inv.due_date:
            foot = Markup("\n      %s\n      <span>%s</span>") % (
                icon("alert" if overdue else "clock", "icon icon--sm"),
                due_phrase(inv.due_date, today, overdue, t),
            )
        elif inv.status == "paid":
            said = _("Paid on %(date)s", date=day(inv.paid_at)) if inv.paid_at else _("Paid")
            foot = Markup("\n      %s<span>%s</span>") % (
                icon("check-circle", "icon icon--sm"),
                said,
            )
        elif inv.status == "void":
            said = (
                _("Voided on %(date)s; nothing is owed", date=day(inv.voided_at))
                if inv.voided_at
                else _("Voided; nothing is owed")
            )
            foot = Markup("\n      %s<span>%s</span>") % (icon("x-circle", "icon icon--sm"), said)
        else:
            foot = Markup("\n      %s<span>%s</span>") % (
                icon("receipt", "icon icon--sm"),
                _("%(total)s total", total=money(inv.total)),
            )
        rows.append(
            InvoiceRow(
                invoice=inv,
                overdue=overdue,
                href=invoice_url(inv.number),
                title=_(
                    '<span class="visually-hidden">Invoice </span>%(number)s', number=inv.number
                ),
                amount=amount,
                meta=meta,
                badge=badge("overdue" if overdue else inv.status, language),
                foot=foot,
            )
        )
    return rows
