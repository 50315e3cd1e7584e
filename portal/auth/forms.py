"""Forms of the sign-in pages."""

from __future__ import annotations

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import EmailField
from wtforms.validators import DataRequired, Email, Length


class LoginForm(FlaskForm):
    # NOTE: phone keyboards add a trailing space after autocomplete; it is not a mistake.
    email = EmailField(
        _l("Email address"),
        filters=[lambda value: value.strip() if isinstance(value, str) else value],
        validators=[
            DataRequired(_l("Please enter your email address.")),
            Length(max=254, message=_l("That email address is too long.")),
            Email(
                _l("Please enter an email address like name@example.com."),
                check_deliverability=False,
            ),
        ],
    )
