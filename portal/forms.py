"""What every form of the portal shares: free text is typed text, in NFC, without control
characters or invisible direction marks.

`PlainText` is the one validator of free-text fields (names, addresses, emails, codes): put it
first in a field's validators, before `Length` or `Email`, so a value that is not text (a file
sent where text was expected) stops there with a message instead of reaching them.
`normalize_text` is the matching filter (strip, then NFC).
"""

from __future__ import annotations

import functools
import unicodedata
from typing import Any

from flask_babel import gettext as _
from markupsafe import Markup
from wtforms import Field, Form
from wtforms.validators import StopValidation, ValidationError
from wtforms.widgets.core import Input, clean_key

from portal.templating import escape_for_output

# NOTE: direction overrides and isolates reorder what follows them: "\u202eFDP.exe" shows as
# "exe.PDF" on a page or a PDF. Marks and zero-width characters hide text or make two values
# that look alike differ. None of them belongs in a name, an address or an email.
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f"  # Arabic letter mark, left-to-right and right-to-left marks
    "\u202a\u202b\u202c\u202d\u202e"  # embeddings and overrides
    "\u2066\u2067\u2068\u2069"  # isolates
)
INVISIBLES = frozenset(
    "\u00ad\u180e\u200b\u2060\u2061\u2062\u2063\u2064\ufeff"  # soft hyphen, zero-width spaces
)
# NOTE: the zero-width (non-)joiner is part of how Persian, Indic scripts and emoji sequences
# are written, so names and addresses keep it; emails, codes and numbers never need it.
JOINERS = frozenset("\u200c\u200d")


def normalize_text(value: Any) -> Any:
    """Strip surrounding white space and compose to NFC (what people type on different
    keyboards compares equal); anything that is not text is left for the validator."""
    if not isinstance(value, str):
        return value
    return unicodedata.normalize("NFC", value.strip())


def forbidden_character(text: str, *, joiners: bool = True, newlines: bool = False) -> str | None:
    """The first character free text may not hold, or None."""
    for char in text:
        if newlines and char in "\n\r":
            continue
        if unicodedata.category(char) in ("Cc", "Cs") or char in BIDI_CONTROLS:
            return char
        if char in INVISIBLES or (not joiners and char in JOINERS):
            return char
        if 0x2028 <= ord(char) <= 0x2029:  # line and paragraph separators
            return char
    return None


def describe_character(char: str) -> str:
    """How a message names a character nobody can see: its code point and Unicode name."""
    name = unicodedata.name(char, "")
    return f"U+{ord(char):04X} {name}".strip()


def field_label(field: Field) -> str:
    return str(field.label.text) if field.label is not None else str(field.name)


class PlainText:
    """Refuse what is not typed text, and control or invisible formatting characters.

    `joiners=False` also refuses the zero-width (non-)joiner (emails, codes, numbers);
    `newlines=True` lets a multi-line text field keep its line breaks.
    """

    field_flags = {}

    def __init__(self, *, joiners: bool = True, newlines: bool = False) -> None:
        self.joiners = joiners
        self.newlines = newlines

    def __call__(self, form: Form, field: Field) -> None:
        data = field.data
        if data is None or data == "":
            return
        if not isinstance(data, str):
            raise StopValidation(
                _("%(field)s must be typed in, not sent as a file.", field=field_label(field))
            )
        bad = forbidden_character(data, joiners=self.joiners, newlines=self.newlines)
        if bad is not None:
            raise ValidationError(
                _(
                    "%(field)s contains an invisible or control character (%(char)s). "
                    "Please remove it and type the text again.",
                    field=field_label(field),
                    char=describe_character(bad),
                )
            )


# --- Rendering -------------------------------------------------------------------------------


def html_params(**kwargs: Any) -> Markup:
    """WTForms' `html_params`, byte for byte, without `Markup.format` per attribute.

    NOTE: WTForms formats every attribute of every input through string.Formatter (~10 µs
    each); the account form's inputs cost 2 ms of its page that way. The pieces are joined as
    plain text and marked safe once (each Markup operation costs a microsecond or more). Input
    widgets take this function through their `html_params` hook (below); tests/test_forms.py
    compares the two.
    """
    params = []
    for key, value in sorted(kwargs.items()):
        key = escape_for_output(clean_key(key))
        if value is True:
            params.append(key)
        elif value is False:
            continue
        else:
            # NOTE: str(): a Markup value comes back as itself, and Markup.replace would escape
            # the "&quot;" it is given.
            quoted = str(escape_for_output(value)).replace('"', "&quot;")
            params.append(f'{key}="{quoted}"')
    return Markup(" ".join(params))


Input.html_params = staticmethod(html_params)  # type: ignore[assignment,method-assign]


def text_field_html(
    field: Field,
    label: str,
    hint: str = "",
    autocomplete: str = "",
    inputmode: str = "",
    type: str = "text",
    *,
    disabled: bool = False,
    error_icon: str = "",
) -> Markup:
    """A labelled text input with its error and hint, tied together by id for screen readers
    (aria-invalid, aria-describedby): the account form's fields.

    NOTE: this was a Jinja macro; its dict updates and nested macro call cost about as much as
    the input itself, eight times per account page. The markup is the macro's, byte for byte
    (tests/accounts/test_routes.py renders both); the input is still WTForms' own rendering.
    """
    field_id = field.id
    errors = field.errors
    describedby = ((field_id + "-error ") if errors else "") + (
        (field_id + "-hint") if hint else ""
    )
    attrs = {"aria-invalid": "true" if errors else "false"}
    if describedby.strip():
        attrs["aria-describedby"] = describedby.strip()
    if autocomplete:
        attrs["autocomplete"] = autocomplete
    if inputmode:
        attrs["inputmode"] = inputmode
    safe_id = escape_for_output(field_id)
    error = (
        f'\n<p class="field__error" id="{safe_id}-error">{escape_for_output(error_icon)}'
        f"<span>{escape_for_output(errors[0])}</span></p>"
        if errors
        else ""
    )
    hint_html = (
        f'\n  <p class="field__hint" id="{safe_id}-hint">{escape_for_output(hint)}</p>'
        if hint
        else ""
    )
    return Markup(
        f'\n<div class="field{" field--invalid" if errors else ""}">\n'
        f'  <label class="field__label" for="{safe_id}">{escape_for_output(label)}</label>\n'
        f"  {error}\n"
        f"  {field(class_='input', type=type, disabled=disabled, **attrs)}"
        f"{hint_html}\n</div>"
    )


def text_field_renderer(*, disabled: bool, error_icon: str) -> Any:
    """text_field_html with the page's fixed arguments bound (the template calls it per field)."""
    return functools.partial(text_field_html, disabled=disabled, error_icon=error_icon)
