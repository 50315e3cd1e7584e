"""The customer's dispute forms: what they question, how much, why; a message; evidence."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from babel.numbers import NumberFormatError, parse_decimal
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from flask_wtf.file import MultipleFileField
from wtforms import RadioField, SelectChoice, SelectMultipleField, StringField, TextAreaField
from wtforms.validators import DataRequired, InputRequired, Length, ValidationError
from wtforms.widgets import CheckboxInput, ListWidget

from portal.billing.money import Money, exponent
from portal.disputes.models import MAX_DISPUTE_MINOR, DisputeReason
from portal.disputes.services import MAX_DESCRIPTION, MAX_MESSAGE
from portal.forms import PlainText, normalize_text

# The reasons as the customer reads them (stored by value).
REASON_LABELS = {
    DisputeReason.NOT_RECOGNIZED.value: _l("I do not recognise this charge"),
    DisputeReason.WRONG_AMOUNT.value: _l("The amount is wrong"),
    DisputeReason.DUPLICATE.value: _l("I was charged twice"),
    DisputeReason.SERVICE_NOT_RECEIVED.value: _l("I did not receive the service"),
    DisputeReason.CANCELED_BUT_CHARGED.value: _l("I cancelled but was still charged"),
    DisputeReason.OTHER.value: _l("Something else"),
}


class _Normalized(FlaskForm):
    class Meta:
        def bind_field(self, form: Any, unbound_field: Any, options: dict[str, Any]) -> Any:
            filters = [*unbound_field.kwargs.get("filters", [])]
            if unbound_field.field_class in (StringField, TextAreaField):
                filters.append(normalize_text)
            return unbound_field.bind(form=form, filters=filters, **options)

    def first_error(self) -> str:
        for errors in self.errors.values():
            if errors:
                return str(errors[0])
        return ""


class CheckboxList(SelectMultipleField):
    widget = ListWidget(prefix_label=False)
    option_widget = CheckboxInput()


def parse_amount(text: str, currency: str, locale: str) -> Money | None:
    """An amount as a person types it in their locale ("12.50", "12,50", "1,200"), exactly
    (never rounded: "12.345" dollars is a typo, not 12.35), or None."""
    text = (text or "").strip().replace("\u00a0", " ")
    for symbol in ("$", "€", "£", "¥", currency):
        text = text.replace(symbol, "")
    text = text.strip()
    if not text or len(text) > 32:
        return None
    try:
        value = parse_decimal(text, locale=locale.replace("-", "_"), strict=False)
    except (NumberFormatError, InvalidOperation, ValueError):
        try:
            value = Decimal(text)
        except (InvalidOperation, ValueError):
            return None
    if not value.is_finite():
        return None
    scaled = value.scaleb(exponent(currency))
    if scaled != scaled.to_integral_value():
        return None
    if abs(scaled) > MAX_DISPUTE_MINOR * 10:
        return None
    return Money(int(scaled), currency)


class NewDisputeForm(_Normalized):
    scope = RadioField(
        _l("What do you want to question?"),
        choices=[
            SelectChoice("lines", _l("Some lines")),
            SelectChoice("whole", _l("The whole invoice")),
        ],
        default="lines",
        validators=[InputRequired(_l("Please choose the whole invoice or some lines."))],
    )
    lines = CheckboxList(_l("Lines"), coerce=int, validate_choice=False)
    amount = StringField(
        _l("Amount you question"),
        validators=[
            PlainText(joiners=False),
            DataRequired(_l("Please enter the amount you question.")),
            Length(max=32, message=_l("Please enter an amount like 12.50.")),
        ],
    )
    reason = RadioField(
        _l("Why?"),
        choices=[SelectChoice(value, label) for value, label in REASON_LABELS.items()],
        validators=[InputRequired(_l("Please choose a reason."))],
    )
    description = TextAreaField(
        _l("Tell us what is wrong"),
        validators=[
            PlainText(newlines=True),
            DataRequired(_l("Please tell us what is wrong.")),
            Length(
                max=MAX_DESCRIPTION,
                message=_l("Please keep it under %(max)d characters.", max=MAX_DESCRIPTION),
            ),
        ],
    )
    evidence = MultipleFileField(_l("Evidence (optional)"))

    def validate_lines(self, field: Any) -> None:
        if self.scope.data == "lines":
            if not field.data:
                raise ValidationError(_l("Please choose at least one line."))
            allowed = {choice.value for choice in field.choices or []}
            if any(value not in allowed for value in field.data):
                raise ValidationError(_l("Please choose lines of this invoice."))

    def money(self, currency: str, locale: str) -> Money | None:
        amount = parse_amount(self.amount.data or "", currency, locale)
        if amount is None:
            self.amount.errors = [
                *self.amount.errors,
                str(_l("Please enter an amount like 12.50.")),
            ]
        return amount


class MessageForm(_Normalized):
    body = TextAreaField(
        _l("Your message"),
        validators=[
            PlainText(newlines=True),
            DataRequired(_l("Please write a message.")),
            Length(
                max=MAX_MESSAGE,
                message=_l("Please keep it under %(max)d characters.", max=MAX_MESSAGE),
            ),
        ],
    )
    evidence = MultipleFileField(_l("Add files (optional)"))


class WithdrawForm(_Normalized):
    """Nothing to fill in: the button, with its CSRF token."""
