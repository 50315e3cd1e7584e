"""Forms of the staff area: the second factor, lookups and filters, dispute work."""

from __future__ import annotations

from datetime import date

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import StringField
from wtforms.validators import DataRequired, Length, Optional, Regexp, ValidationError

from portal.forms import PlainText
from portal.staff.queries import AuditFilters

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
