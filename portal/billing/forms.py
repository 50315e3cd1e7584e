"""Forms of the invoice list and the statement page: GET forms, read from the query string."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import StringField
from wtforms.validators import Length, Optional, Regexp, ValidationError

from portal.billing.queries import INVOICE_FILTERS, InvoiceFilters

STATUS_CHOICES = [
    ("", "All invoices"),
    ("open", "Open (unpaid)"),
    ("overdue", "Overdue"),
    ("paid", "Paid"),
    ("void", "Void"),
]


class InvoiceFilterForm(FlaskForm):
    """Status, year and number search. Bad values are reported, never guessed at."""

    class Meta:
        csrf = False  # a GET form that changes nothing

    status = StringField("Status", validators=[Optional()])
    year = StringField(
        "Year",
        validators=[
            Optional(),
            Regexp(r"^(19|20|21)\d\d$", message="Choose a year like 2026."),
        ],
    )
    q = StringField(
        "Invoice number",
        validators=[
            Optional(),
            Length(max=40, message="Invoice numbers are at most 40 characters."),
            Regexp(
                r"^[A-Za-z0-9\- ]*$",
                message="Invoice numbers have only letters, digits and dashes, like ALS-0012.",
            ),
        ],
    )

    def validate_status(self, field: StringField) -> None:
        if field.data and field.data not in INVOICE_FILTERS:
            raise ValidationError("Choose open, overdue, paid or void.")

    def filters(self) -> InvoiceFilters:
        return InvoiceFilters(
            status=self.status.data or "",
            year=int(self.year.data) if self.year.data else None,
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

    period = StringField("Period")
    start = StringField("From")
    end = StringField("To (included)")
