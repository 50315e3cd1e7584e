"""Forms of the staff area: the second factor, lookups and filters, dispute work."""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal
from typing import Any

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import StringField, TextAreaField
from wtforms.validators import DataRequired, Length, Optional, Regexp, ValidationError

from portal.billing.money import exponent
from portal.disputes.models import MAX_DISPUTE_MINOR
from portal.errors import ValidationFailed
from portal.forms import PlainText
from portal.staff.queries import AuditFilters
from portal.staff.queue import (
    AGE_FILTERS,
    SORTS,
    SOURCE_FILTERS,
    STATUS_ACTIVE,
    STATUS_FILTERS,
    QueueFilters,
)

# NOTE: only ASCII: other scripts' digits ("١٢٣٤٥٦", full-width) look right but are not what an
# authenticator app's code is, and would otherwise reach the comparison as text it refuses.
_SIX_DIGITS = r"^\s*(?:[0-9]\s*){6}$"
_CODE_CHARACTERS = r"^[0-9A-Za-z \-]+$"


class SecondFactorForm(FlaskForm):
    """The check at sign-in: a six-digit code or a recovery code (xxxxx-xxxxx)."""

    code = StringField(
        _l("Code"),
        validators=[
            DataRequired(_l("Please enter the code from your authenticator app.")),
            Length(max=32, message=_l("That code is too long.")),
            Regexp(
                _CODE_CHARACTERS,
                message=_l(
                    "Please type the code with the digits 0 to 9 (a recovery code also has the "
                    "letters a to f)."
                ),
            ),
        ],
    )


class EnrolmentForm(FlaskForm):
    """The first code from the app, proving it holds the new secret."""

    code = StringField(
        _l("Six-digit code"),
        validators=[
            DataRequired(_l("Please enter the code from your authenticator app.")),
            Length(max=32, message=_l("That code is too long.")),
            Regexp(
                _SIX_DIGITS,
                message=_l("Please type the six digits the app shows, using the digits 0 to 9."),
            ),
        ],
    )


class _GetForm(FlaskForm):
    class Meta:
        csrf = False  # a GET form that changes nothing

    def first_error(self) -> str:
        for errors in self.errors.values():
            if errors:
                return str(errors[0])
        return ""


class CustomerSearchForm(_GetForm):
    """Find an account by name, email, invoice number or payment reference."""

    q = StringField(
        _l("Name, email, invoice number or payment reference"),
        validators=[
            PlainText(),
            Optional(),
            Length(max=200, message=_l("Please search with at most 200 characters.")),
        ],
    )


def _date_text(value: str | None) -> date | None:
    text = (value or "").strip()
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValidationError(_l("Please enter a date like 2026-12-01.")) from None


class AuditFilterForm(_GetForm):
    """Who, which account, which action, which days."""

    actor = StringField(
        _l("Actor email"), validators=[PlainText(joiners=False), Optional(), Length(max=254)]
    )
    account = StringField(_l("Account"), validators=[PlainText(), Optional(), Length(max=200)])
    action = StringField(
        _l("Action"),
        validators=[
            PlainText(joiners=False),
            Optional(),
            Length(max=64),
            Regexp(
                r"^[a-z0-9_.]*\Z",
                message=_l("Actions look like dispute.resolved or staff. (a prefix)."),
            ),
        ],
    )
    start = StringField(_l("From"), validators=[PlainText(joiners=False), Optional()])
    end = StringField(_l("To (included)"), validators=[PlainText(joiners=False), Optional()])

    def validate_start(self, field: StringField) -> None:
        _date_text(field.data)

    def validate_end(self, field: StringField) -> None:
        end = _date_text(field.data)
        start = _date_text(self.start.data) if not self.start.errors else None
        if start and end and end < start:
            raise ValidationError(_l("The end date is before the start date."))

    def filters(self) -> AuditFilters:
        return AuditFilters(
            actor=(self.actor.data or "").strip().lower(),
            account=(self.account.data or "").strip(),
            action=(self.action.data or "").strip(),
            start=_date_text(self.start.data),
            end=_date_text(self.end.data),
        )


def page_number(raw: str | None) -> int:
    """?page=N as a number from 1; anything else is the first page."""
    text = (raw or "").strip()
    if not (0 < len(text) <= 5 and text.isascii() and text.isdigit()):
        return 1
    return max(int(text), 1)


# -- the dispute queue ----------------------------------------------------------------------


_AMOUNT = re.compile(r"^[0-9]{1,13}(?:[.,][0-9]{1,3})?\Z")


def parse_major(text: str | None) -> Decimal | None:
    """ "12.50" -> Decimal("12.50"); empty -> None; anything else raises ValidationError."""
    value = (text or "").strip().replace("\u00a0", "").replace(" ", "")
    if not value:
        return None
    if not _AMOUNT.match(value):
        raise ValidationError(
            _l("Type an amount with digits, like 12.50 (no signs, no more than 3 decimals).")
        )
    return Decimal(value.replace(",", "."))


def to_minor(amount: Decimal, currency: str) -> int:
    """Major units to minor units of `currency`, refusing more decimals than it has."""
    digits = exponent(currency)
    scaled = amount * 10**digits
    if scaled != scaled.to_integral_value():
        raise ValidationFailed(
            _(
                "%(currency)s amounts have at most %(digits)d decimals.",
                currency=currency,
                digits=digits,
            )
        )
    minor = int(scaled)
    if minor <= 0:
        raise ValidationFailed(_("The amount must be more than zero."))
    if minor > MAX_DISPUTE_MINOR:
        raise ValidationFailed(_("That amount is far too large."))
    return minor


class QueueFilterForm(_GetForm):
    status = StringField(_l("Status"), validators=[PlainText(joiners=False), Optional()])
    age = StringField(_l("Age"), validators=[PlainText(joiners=False), Optional()])
    assignee = StringField(
        _l("Assigned to"), validators=[PlainText(joiners=False), Optional(), Length(max=24)]
    )
    source = StringField(_l("Kind"), validators=[PlainText(joiners=False), Optional()])
    amount_min = StringField(_l("Amount from"), validators=[PlainText(joiners=False), Optional()])
    amount_max = StringField(_l("Amount up to"), validators=[PlainText(joiners=False), Optional()])
    sort = StringField(_l("Sort by"), validators=[PlainText(joiners=False), Optional()])

    def validate_status(self, field: StringField) -> None:
        if field.data and field.data not in STATUS_FILTERS:
            raise ValidationError(_l("Choose a status from the list."))

    def validate_age(self, field: StringField) -> None:
        if field.data and field.data not in AGE_FILTERS:
            raise ValidationError(_l("Choose an age from the list."))

    def validate_source(self, field: StringField) -> None:
        if field.data and field.data not in SOURCE_FILTERS:
            raise ValidationError(_l("Choose customer disputes or card chargebacks."))

    def validate_sort(self, field: StringField) -> None:
        if field.data and field.data not in SORTS:
            raise ValidationError(_l("Choose a sort order from the list."))

    def validate_amount_min(self, field: StringField) -> None:
        parse_major(field.data)

    def validate_amount_max(self, field: StringField) -> None:
        high = parse_major(field.data)
        low = parse_major(self.amount_min.data) if not self.amount_min.errors else None
        if low is not None and high is not None and high < low:
            raise ValidationError(_l("The upper amount is below the lower one."))

    def filters(self) -> QueueFilters:
        return QueueFilters(
            status=self.status.data or STATUS_ACTIVE,
            age=self.age.data or "",
            assignee=(self.assignee.data or "").strip(),
            source=self.source.data or "",
            amount_min=parse_major(self.amount_min.data),
            amount_max=parse_major(self.amount_max.data),
            sort=self.sort.data or "due",
        )


# -- working a dispute ----------------------------------------------------------------------


class MessageForm(FlaskForm):
    """A reply to the customer, or an internal note."""

    body = TextAreaField(
        _l("Message"),
        validators=[
            PlainText(newlines=True),
            DataRequired(_l("Please write the message first.")),
            Length(max=4000, message=_l("Please keep it under 4,000 characters.")),
        ],
    )


class AssignForm(FlaskForm):
    assignee = StringField(
        _l("Assign to"), validators=[PlainText(joiners=False), Optional(), Length(max=24)]
    )


class StatusForm(FlaskForm):
    status = StringField(
        _l("Status"), validators=[PlainText(joiners=False), DataRequired(), Length(max=24)]
    )


class CreditForm(FlaskForm):
    """The whole credit, or amounts per invoice line (fields line_<id>, read by line_amounts)."""

    amount = StringField(
        _l("Credit for the whole"), validators=[PlainText(joiners=False), Optional()]
    )
    memo = TextAreaField(
        _l("Note on the credit note"),
        validators=[PlainText(newlines=True), Optional(), Length(max=1000)],
    )

    def validate_amount(self, field: StringField) -> None:
        parse_major(field.data)


def line_amounts(formdata: Any, line_ids: list[int], currency: str) -> dict[int, int]:
    """The per-line credit amounts typed in (line_<id> fields), in minor units."""
    amounts: dict[int, int] = {}
    for line_id in line_ids:
        raw = formdata.get(f"line_{line_id}", "")
        if not isinstance(raw, str) or not raw.strip():
            continue
        try:
            major = parse_major(raw[:40])
        except ValidationError as error:
            raise ValidationFailed(str(error)) from None
        if major is not None and major != 0:
            amounts[line_id] = to_minor(major, currency)
    return amounts


class RefundForm(FlaskForm):
    payment = StringField(
        _l("Payment"),
        validators=[
            PlainText(joiners=False),
            DataRequired(_l("Choose the payment to refund.")),
            Length(max=24),
        ],
    )
    amount = StringField(
        _l("Amount to refund"),
        validators=[PlainText(joiners=False), DataRequired(_l("Enter the amount to refund."))],
    )
    note = TextAreaField(
        _l("Note for the customer"),
        validators=[PlainText(newlines=True), Optional(), Length(max=1000)],
    )

    def validate_amount(self, field: StringField) -> None:
        parse_major(field.data)


class RejectForm(FlaskForm):
    explanation = TextAreaField(
        _l("Explanation for the customer"),
        validators=[
            PlainText(newlines=True),
            DataRequired(_l("Explain the decision to the customer.")),
            Length(min=10, max=4000, message=_l("Write between 10 and 4,000 characters.")),
        ],
    )


class DecisionForm(FlaskForm):
    note = TextAreaField(
        _l("Note (optional)"), validators=[PlainText(newlines=True), Optional(), Length(max=2000)]
    )


def first_error(form: FlaskForm) -> str:
    for errors in form.errors.values():
        if errors:
            return str(errors[0])
    return ""
