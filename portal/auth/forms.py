"""Forms of the sign-in pages."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import EmailField
from wtforms.validators import DataRequired, Email, Length


class LoginForm(FlaskForm):
    # NOTE: phone keyboards add a trailing space after autocomplete; it is not a mistake.
    email = EmailField(
        "Email address",
        filters=[lambda value: value.strip() if isinstance(value, str) else value],
        validators=[
            DataRequired("Please enter your email address."),
            Length(max=254, message="That email address is too long."),
            Email(
                "Please enter an email address like name@example.com.", check_deliverability=False
            ),
        ],
    )
