"""Forms of the invoice list and the statement page: GET forms, read from the query string."""

from __future__ import annotations

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import StringField
from wtforms.validators import Length, Optional, Regexp, ValidationError

from portal.billing.queries import INVOICE_FILTERS, InvoiceFilters
from portal.forms import PlainText

STATUS_CHOICES = [
    ("", _l("All invoices")),
    ("open", _l("Open (unpaid)")),
    ("overdue", _l("Overdue")),
    ("paid", _l("Paid")),
    ("void", _l("Void")),
]


class InvoiceFilterForm(FlaskForm):
    """Status, year and number search. Bad values are reported, never guessed at."""

    class Meta:
        csrf = False  # a GET form that changes nothing

    status = StringField(_l("Status"), validators=[PlainText(joiners=False), Optional()])
    year = StringField(
        _l("Year"),
        validators=[
            Optional(),
            PlainText(joiners=False),
            # NOTE: ASCII digits: \d would also take other scripts' digits.
            Regexp(r"^(19|20|21)[0-9]{2}\Z", message=_l("Choose a year like 2026.")),
        ],
    )
    q = StringField(
        _l("Invoice number"),
        validators=[
            PlainText(joiners=False),
            Optional(),
            Length(max=40, message=_l("Invoice numbers are at most 40 characters.")),
            Regexp(
                r"^[A-Za-z0-9\- ]*\Z",
                message=_l("Invoice numbers have only letters, digits and dashes, like ALS-0012."),
            ),
        ],
    )

    def validate_status(self, field: StringField) -> None:
        if field.data and field.data not in INVOICE_FILTERS:
            raise ValidationError(_l("Choose open, overdue, paid or void."))

    def filters(self) -> InvoiceFilters:
        return InvoiceFilters(
            status=self.status.data or "",
            year=int(year) if (year := (self.year.data or "").strip()) else None,
            search=(self.q.data or "").strip(),
        )

    def first_error(self) -> str:
        for errors in self.errors.values():
            if errors:
                return str(errors[0])
        return ""


class StatementPeriodForm(FlaskForm):
    """The period: a preset or custom dates. Checked by statements.parse_period."""

    class Meta:
        csrf = False

    period = StringField(_l("Period"))
    start = StringField(_l("From"))
    end = StringField(_l("To (included)"))
