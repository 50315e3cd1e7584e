"""The account details form: only the fields a customer may change, each validated."""

from __future__ import annotations

from typing import Any

from babel import Locale
from flask_wtf import FlaskForm
from wtforms import EmailField, SelectChoice, SelectField, StringField
from wtforms.validators import DataRequired, Email, Length, Optional, Regexp, ValidationError

from portal.accounts.services import EDITABLE_FIELDS

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


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


class AccountDetailsForm(FlaskForm):
    class Meta:
        # Field values are stripped before validation, so "  " counts as empty.
        def bind_field(self, form: Any, unbound_field: Any, options: dict[str, Any]) -> Any:
            filters = [*unbound_field.kwargs.get("filters", []), _strip]
            return unbound_field.bind(form=form, filters=filters, **options)

    name = StringField(
        "Company or your name",
        validators=[
            DataRequired("Please enter the name your invoices are made out to."),
            Length(max=200, message="Please keep the name under 200 characters."),
        ],
    )
    billing_email = EmailField(
        "Billing email",
        validators=[
            DataRequired("Please enter the address your invoices are sent to."),
            Length(max=254, message="That email address is too long."),
            Email(
                "Please enter an email address like name@example.com.", check_deliverability=False
            ),
        ],
    )
    address_line1 = StringField(
        "Address", validators=[Optional(), Length(max=200, message="Please shorten this line.")]
    )
    address_line2 = StringField(
        "Address line 2 (optional)",
        validators=[Optional(), Length(max=200, message="Please shorten this line.")],
    )
    city = StringField(
        "City", validators=[Optional(), Length(max=100, message="Please shorten the city.")]
    )
    postal_code = StringField(
        "Postal code",
        validators=[
            Optional(),
            Length(max=20, message="A postal code has at most 20 characters."),
            Regexp(r"^[A-Za-z0-9 \-]+$", message="Use only letters, digits, spaces and dashes."),
        ],
    )
    region = StringField(
        "State or region (optional)",
        validators=[Optional(), Length(max=100, message="Please shorten the region.")],
    )
    country = SelectField(
        "Country", choices=[SelectChoice(c, n) for c, n in COUNTRIES], validate_choice=False
    )
    tax_id = StringField(
        "Tax id (optional)",
        description="Your VAT or sales tax number, as it should appear on invoices.",
        validators=[
            Optional(),
            Length(max=50, message="A tax id has at most 50 characters."),
            Regexp(
                r"^[A-Za-z0-9][A-Za-z0-9 .\-/]*$",
                message="Use only letters, digits, spaces, dots, dashes and slashes.",
            ),
        ],
    )
    locale = SelectField(
        "Language of invoices and emails",
        choices=[SelectChoice(c, n) for c, n in LANGUAGES],
        validate_choice=False,
    )

    def validate_country(self, field: Any) -> None:
        if field.data not in dict(COUNTRIES):
            raise ValidationError("Please choose a country from the list.")

    def validate_locale(self, field: Any) -> None:
        if field.data not in dict(LANGUAGES):
            raise ValidationError("Please choose a language from the list.")

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
