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
from markupsafe import Markup, escape

from portal.billing.models import Invoice
from portal.formatting import current_locale, current_timezone, day, money
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


def due_phrase(
    due_date: date,
    today: date,
    overdue: bool,
    text: PageText | None = None,
    locale: str | None = None,
) -> Markup:
    """When a payable invoice is due, said from today ("Due Oct 21, 2026 · in 3 days"); the
    one definition (templates/_ui.html's due_phrase macro prints this)."""
    t = text or PageText()
    _ = t.gettext
    ngettext = t.ngettext
    days = (due_date - today).days
    due = day(due_date, locale=locale)
    if overdue:
        return ngettext(
            'Was due %(date)s <span aria-hidden="true">·</span> <strong>%(num)d day overdue</strong>',  # noqa: E501 (one msgid)
            'Was due %(date)s <span aria-hidden="true">·</span> <strong>%(num)d days overdue</strong>',  # noqa: E501
            -days,
            date=due,
        )
    if days == 0:
        return Markup("<strong>%s</strong>") % _("Due today")
    if days == 1:
        return _("Due tomorrow, %(date)s", date=due)
    if days > 1:
        return ngettext(
            'Due %(date)s <span aria-hidden="true">·</span> in %(num)d day',
            'Due %(date)s <span aria-hidden="true">·</span> in %(num)d days',
            days,
            date=due,
        )
    return _("Due %(date)s", date=due)


def _foot(icon: Markup, sentence: Markup, between: str = "") -> Markup:
    """A row's foot: its icon and sentence (both markup already), as the template spaced them."""
    return Markup(f"\n      {escape(icon)}{between}<span>{escape(sentence)}</span>")


def invoice_rows(invoices: Iterable[Invoice], today: date) -> list[InvoiceRow]:
    """The invoice list's rows (templates/billing/_invoice_rows.html prints them)."""
    t = PageText()
    _ = t.gettext
    template_globals = current_app.jinja_env.globals
    icon = template_globals["cached_icon"]
    badge = template_globals["cached_badge"]
    language = html_lang()
    # NOTE: the locale and time zone of the page, asked once (each is a look-up in `g`), not
    # for each of a row's days and amounts.
    locale = current_locale()
    zone = current_timezone()
    rows = []
    for inv in invoices:
        overdue = inv.is_overdue(today)
        due = inv.amount_due  # NOTE: read once: each read is a hybrid property's computation
        unpaid = inv.status in ("open", "uncollectible") and due.minor > 0
        issued = day(inv.issue_date, locale=locale)
        if unpaid:
            amount = _(
                '<span class="visually-hidden">Amount due: </span>%(amount)s',
                amount=money(due, locale),
            )
        else:
            amount = _(
                '<span class="visually-hidden">Total: </span>%(amount)s',
                amount=money(inv.total, locale),
            )
        if unpaid and due.minor != inv.total_minor:
            meta = _(
                'Issued %(date)s <span aria-hidden="true">·</span> %(total)s total',
                date=issued,
                total=money(inv.total, locale),
            )
        else:
            meta = _("Issued %(date)s", date=issued)
        if unpaid and inv.due_date:
            foot = _foot(
                icon("alert" if overdue else "clock", "icon icon--sm"),
                due_phrase(inv.due_date, today, overdue, t, locale),
                "\n      ",
            )
        elif inv.status == "paid":
            said = (
                _("Paid on %(date)s", date=day(inv.paid_at, locale=locale, zone=zone))
                if inv.paid_at
                else _("Paid")
            )
            foot = _foot(icon("check-circle", "icon icon--sm"), said)
        elif inv.status == "void":
            said = (
                _(
                    "Voided on %(date)s; nothing is owed",
                    date=day(inv.voided_at, locale=locale, zone=zone),
                )
                if inv.voided_at
                else _("Voided; nothing is owed")
            )
            foot = _foot(icon("x-circle", "icon icon--sm"), said)
        else:
            foot = _foot(
                icon("receipt", "icon icon--sm"),
                _("%(total)s total", total=money(inv.total, locale)),
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
