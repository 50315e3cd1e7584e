"""portal.forms: the one validator of free text, used by every form."""

from __future__ import annotations

import pytest
from markupsafe import Markup
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


# --- Rendering (portal.forms.html_params, performance work of issue 9) ------------------------


@pytest.mark.parametrize(
    "attributes",
    [
        {},
        {"name": "text1", "id": "f", "class_": "text"},
        {"checked": True, "readonly": False, "name": "text1", "abc": "hello"},
        {"data_attr": "user.name", "aria_labeledby": "name", "aria_invalid": "false"},
        {"value": 'a "quoted" <b>&amp;</b> value', "placeholder": "e.g. BIG-0012"},
        {"maxlength": 200, "required": True, "disabled": False, "for_": "x"},
        {"value": Markup("<i>kept</i>"), "title": "Ünïcode ⟦text⟧"},
        {"value": Markup('<i class="x">kept "as is"</i>'), "data_n": 0, "aria_x": "'single'"},
    ],
)
def test_html_params_writes_what_wtforms_writes(attributes: dict[str, object]) -> None:
    from wtforms.widgets.core import html_params as wtforms_html_params

    from portal.forms import html_params

    assert html_params(**attributes) == wtforms_html_params(**attributes)
    assert isinstance(html_params(**attributes), Markup)


def test_inputs_render_through_the_fast_html_params() -> None:
    from wtforms.widgets.core import Input

    from portal.forms import html_params

    assert Input.html_params is html_params
    field = _Form(MultiDict({"text": 'Say "hi" <now>'})).text
    assert str(field(class_="input", aria_invalid="false", autocomplete="name")) == (
        '<input aria-invalid="false" autocomplete="name" class="input" id="text" name="text"'
        ' type="text" value="Say &#34;hi&#34; &lt;now&gt;">'
    )
