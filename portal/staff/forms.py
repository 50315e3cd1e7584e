"""Forms of the staff second factor."""

from __future__ import annotations

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import StringField
from wtforms.validators import DataRequired, Length, Regexp

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
