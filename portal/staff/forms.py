"""Forms of the staff second factor."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import StringField
from wtforms.validators import DataRequired, Length


class SecondFactorForm(FlaskForm):
    code = StringField(
        "Code",
        validators=[
            DataRequired("Please enter the code from your authenticator app."),
            Length(max=32, message="That code is too long."),
        ],
    )
