"""portal.forms: the one validator of free text, used by every form."""

from __future__ import annotations

import pytest
from werkzeug.datastructures import FileStorage, MultiDict
from wtforms import Form, StringField

from portal.forms import PlainText, forbidden_character, normalize_text


class _Form(Form):
    text = StringField("Your text", filters=[normalize_text], validators=[PlainText()])
    code = StringField("Code", validators=[PlainText(joiners=False)])
    note = StringField("Note", validators=[PlainText(newlines=True)])


@pytest.mark.parametrize(
    "char",
    [
        "\x00",
        "\x07",
        "\x1b",
        "\x7f",
        "\x85",
        "\u202a",
        "\u202e",
        "\u2066",
        "\u2069",
        "\u200f",
        "\u061c",
        "\u200b",
        "\ufeff",
        "\u2028",
        "\u00ad",
        "\n",
        "\t",
    ],
)
def test_control_and_invisible_characters_are_refused(char: str) -> None:
    assert forbidden_character(f"a{char}b") == char
    form = _Form(MultiDict({"text": f"a{char}b"}))
    assert not form.validate()
    assert form.errors["text"][0].startswith("Your text contains an invisible")


def test_plain_text_passes_and_is_composed() -> None:
    form = _Form(MultiDict({"text": "  Zoë 山田 O'Brien-Smith  ", "code": "AB-12"}))
    assert form.validate(), form.errors
    assert form.text.data == "Zoë 山田 O'Brien-Smith"
    assert normalize_text("e\u0301") == "\u00e9"


def test_joiners_are_refused_only_where_they_make_no_sense() -> None:
    assert forbidden_character("a\u200db") is None
    assert forbidden_character("a\u200db", joiners=False) == "\u200d"


def test_multi_line_text_keeps_its_line_breaks_only() -> None:
    form = _Form(MultiDict({"note": "one\r\ntwo"}))
    assert form.validate(), form.errors
    assert not _Form(MultiDict({"note": "one\x1btwo"})).validate()


def test_a_file_is_not_text() -> None:
    upload = FileStorage(filename="x.txt", stream=None)
    form = _Form(MultiDict({"text": upload}))
    assert not form.validate()
    assert form.errors["text"] == ["Your text must be typed in, not sent as a file."]
