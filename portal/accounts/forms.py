"""The account details form: only the fields a customer may change, each validated."""

from __future__ import annotations

from typing import Any

from babel import Locale
from email_validator import EmailNotValidError, validate_email
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField, SelectChoice, SelectField, StringField, TextAreaField
from wtforms.validators import DataRequired, Email, Length, Optional, Regexp, ValidationError

from portal.accounts.services import EDITABLE_FIELDS
from portal.forms import PlainText, normalize_text

LANGUAGES = (
    ("en_US", "English (United States)"),
    ("en_GB", "English (United Kingdom)"),
    ("de_DE", "Deutsch (Deutschland)"),
    ("fr_FR", "Français (France)"),
    ("es_ES", "Español (España)"),
    ("it_IT", "Italiano (Italia)"),
    ("nl_NL", "Nederlands (Nederland)"),
    ("ja_JP", "日本語 (日本)"),
)


def _country_choices() -> list[tuple[str, str]]:
    territories = Locale("en").territories
    codes = sorted(
        (code, name) for code, name in territories.items() if len(code) == 2 and code.isalpha()
    )
    return sorted(codes, key=lambda item: item[1])


COUNTRIES = _country_choices()


class AccountDetailsForm(FlaskForm):
    class Meta:
        # Field values are stripped and composed (NFC) before validation, so "  " counts as
        # empty and the same name typed on two keyboards is stored the same way.
        def bind_field(self, form: Any, unbound_field: Any, options: dict[str, Any]) -> Any:
            filters = [*unbound_field.kwargs.get("filters", []), normalize_text]
            return unbound_field.bind(form=form, filters=filters, **options)

    name = StringField(
        _l("Company or your name"),
        validators=[
            PlainText(),
            DataRequired(_l("Please enter the name your invoices are made out to.")),
            Length(max=200, message=_l("Please keep the name under 200 characters.")),
        ],
    )
    billing_email = EmailField(
        _l("Billing email"),
        validators=[
            PlainText(joiners=False),
            DataRequired(_l("Please enter the address your invoices are sent to.")),
            Length(max=254, message=_l("That email address is too long.")),
            Email(
                _l("Please enter an email address like name@example.com."),
                check_deliverability=False,
            ),
        ],
    )
    address_line1 = StringField(
        _l("Address"),
        validators=[
            PlainText(),
            Optional(),
            Length(max=200, message=_l("Please shorten this line.")),
        ],
    )
    address_line2 = StringField(
        _l("Address line 2 (optional)"),
        validators=[
            PlainText(),
            Optional(),
            Length(max=200, message=_l("Please shorten this line.")),
        ],
    )
    city = StringField(
        _l("City"),
        validators=[
            PlainText(),
            Optional(),
            Length(max=100, message=_l("Please shorten the city.")),
        ],
    )
    postal_code = StringField(
        _l("Postal code"),
        validators=[
            PlainText(joiners=False),
            Optional(),
            Length(max=20, message=_l("A postal code has at most 20 characters.")),
            Regexp(
                r"^[A-Za-z0-9 \-]+$", message=_l("Use only letters, digits, spaces and dashes.")
            ),
        ],
    )
    region = StringField(
        _l("State or region (optional)"),
        validators=[
            PlainText(),
            Optional(),
            Length(max=100, message=_l("Please shorten the region.")),
        ],
    )
    country = SelectField(
        _l("Country"),
        choices=[SelectChoice(c, n) for c, n in COUNTRIES],
        validators=[PlainText(joiners=False)],
        validate_choice=False,
    )
    tax_id = StringField(
        _l("Tax id (optional)"),
        description=_l("Your VAT or sales tax number, as it should appear on invoices."),
        validators=[
            PlainText(joiners=False),
            Optional(),
            Length(max=50, message=_l("A tax id has at most 50 characters.")),
            Regexp(
                r"^[A-Za-z0-9][A-Za-z0-9 .\-/]*$",
                message=_l("Use only letters, digits, spaces, dots, dashes and slashes."),
            ),
        ],
    )
    locale = SelectField(
        _l("Language of invoices and emails"),
        choices=[SelectChoice(c, n) for c, n in LANGUAGES],
        validators=[PlainText(joiners=False)],
        validate_choice=False,
    )

    def validate_country(self, field: Any) -> None:
        if field.data not in dict(COUNTRIES):
            raise ValidationError(_l("Please choose a country from the list."))

    def validate_locale(self, field: Any) -> None:
        if field.data not in dict(LANGUAGES):
            raise ValidationError(_l("Please choose a language from the list."))

    def values(self) -> dict[str, Any]:
        """The submitted editable values, normalised (only EDITABLE_FIELDS, nothing else)."""
        values = {name: getattr(self, name).data or "" for name in EDITABLE_FIELDS}
        values["billing_email"] = values["billing_email"].lower()
        values["tax_id"] = values["tax_id"].upper()
        values["postal_code"] = values["postal_code"].upper()
        return values

    def first_error(self) -> str:
        for errors in self.errors.values():
            if errors:
                return str(errors[0])
        return ""


# -- email preferences (issue 12) ---------------------------------------------------------------


def split_addresses(text: str | None) -> list[str]:
    """Addresses typed one per line, or separated by commas or semicolons."""
    if not text:
        return []
    for separator in (",", ";"):
        text = text.replace(separator, "\n")
    return [part.strip().lower() for part in text.splitlines() if part.strip()]


class EmailPreferencesForm(FlaskForm):
    extra_recipients = TextAreaField(
        _l("Also send billing emails to"),
        validators=[
            PlainText(joiners=False, newlines=True),
            Length(max=1000, message=_l("Please keep the list under 1,000 characters.")),
        ],
    )
    remind_before_due = BooleanField(_l("Reminders a few days before an invoice is due"))
    card_expiry = BooleanField(_l("A note when my saved card is about to expire"))

    def validate_extra_recipients(self, field: Any) -> None:
        from portal.notifications.preferences import MAX_EXTRA_RECIPIENTS

        addresses = split_addresses(field.data)
        if len(set(addresses)) > MAX_EXTRA_RECIPIENTS:
            raise ValidationError(
                _l("Please list at most %(count)s addresses.", count=MAX_EXTRA_RECIPIENTS)
            )
        for address in addresses:
            try:
                validate_email(address, check_deliverability=False)
            except EmailNotValidError as error:
                raise ValidationError(
                    _l(
                        "“%(address)s” is not an email address like name@example.com.",
                        address=address,
                    )
                ) from error
            if len(address) > 254:
                raise ValidationError(_l("That email address is too long."))
