"""The portal's Jinja environment prints exactly what Jinja's own would (portal.templating)."""

from __future__ import annotations

from typing import Any

import jinja2
import pytest
from flask import Flask
from hypothesis import given
from hypothesis import strategies as st
from jinja2 import pass_context, pass_environment, pass_eval_context
from markupsafe import Markup, escape

from portal.templating import PortalEnvironment, escape_for_output

TEMPLATES = {
    "_layout.html": "<main>{% block body %}{% endblock %}</main>",
    "_macros.html": (
        "{% macro badge(text, tone='plain') %}<b class='{{ tone }}'>{{ text }}</b>{% endmacro %}"
        "{% macro box() %}<div>{{ caller() }}</div>{% endmacro %}"
    ),
    "_row.html": "<td>{{ row.name }}</td><td>{{ row.amount }}</td>",
    "child.html": (
        "{% extends '_layout.html' %}"
        "{% block body %}{% set inner = 'x' %}{{ plain(inner) }}{{ with_context() }}"
        "{% import '_macros.html' as ui %}"
        "{% for row in rows %}{% set seen = row.name %}{{ with_context() }}{{ plain(seen) }}"
        "{{ with_eval_context() }}{{ with_environment() }}{{ ui.badge(seen) }}"
        "{% endfor %}{% endblock %}"
    ),
    "page.html": (
        "{% import '_macros.html' as ui %}"
        "<p title='{{ title }}'>{{ title }} {{ title|upper }} {{ safe }} {{ number }} {{ nothing }}"
        " {{ missing_name }} {{ html_object }}</p>"
        "{{ ui.badge(title) }}{{ ui.badge(safe, tone=title) }}"
        "{% call ui.box() %}{{ title }}{% endcall %}"
        "{% set kept %}<i>{{ title }}</i>{% endset %}{{ kept }}{{ kept|length }}"
        "{% for row in rows %}{% include '_row.html' %}{{ loop.cycle('odd', 'even') }}"
        "{{ plain(row.name) }}{{ with_context() }}{{ plain(text=row.name) }}{% endfor %}"
        "{{ title ~ safe }}{{ '%s and %s'|format(title, safe) }}{{ [title, safe]|join(', ') }}"
        "{% filter lower %}{{ title }}{% endfilter %}"
        "{{ plain(title) }}{{ with_context() }}{{ with_environment() }}{{ with_eval_context() }}"
        "{{ stops() }}{% autoescape false %}{{ title }}{% endautoescape %}"
    ),
}


class HtmlObject:
    def __html__(self) -> str:
        return "<em>already safe</em>"


def _render(environment: jinja2.Environment) -> str:
    @pass_context
    def with_context(context: Any) -> str:
        return f"<ctx {context['title']} {context.get('seen')}>"

    @pass_environment
    def with_environment(env: jinja2.Environment) -> str:
        return f"<env {env.autoescape is not False}>"

    @pass_eval_context
    def with_eval_context(eval_ctx: Any) -> str:
        return f"<eval {eval_ctx.autoescape}>"

    def stops() -> str:
        raise StopIteration

    templates = [environment.get_template(name) for name in ("page.html", "child.html")]
    values = {
        "title": 'Tom & Jerry\'s <"deal">',
        "safe": Markup("<strong>safe</strong>"),
        "number": 1234,
        "nothing": None,
        "html_object": HtmlObject(),
        "rows": [{"name": "<a>", "amount": 5}, {"name": "b&c", "amount": -1}],
        "plain": lambda text: f"[{text}]",
        "with_context": with_context,
        "with_environment": with_environment,
        "with_eval_context": with_eval_context,
        "stops": stops,
    }
    # Twice: the second time, the functions' answers about the context come from the cache.
    first = "\n".join(template.render(values) for template in templates)
    assert "\n".join(template.render(values) for template in templates) == first
    return first


def test_pages_print_exactly_what_jinjas_own_environment_prints() -> None:
    loader = jinja2.DictLoader(TEMPLATES)
    ours = PortalEnvironment(Flask(__name__), loader=loader, autoescape=True)
    jinjas = jinja2.Environment(loader=loader, autoescape=True)
    printed = _render(ours)
    assert printed == _render(jinjas)
    # What the comparison relies on: escaping happened, and the functions got what they asked.
    assert "Tom &amp; Jerry&#39;s &lt;&#34;deal&#34;&gt;" in printed
    assert "&lt;ctx Tom" in printed and "&lt;env True&gt;" in printed
    # A function that takes the context sees what the loop set; a plain one gets only its own
    # arguments (Jinja adds the loop's variables to every call in a loop, for the former).
    assert "&#39;s &lt;&#34;deal&#34;&gt; b&amp;c&gt;[b&amp;c]" in printed
    assert "[x]" in printed
    assert "&lt;eval True&gt;" in printed
    assert "<strong>safe</strong>" in printed and "<em>already safe</em>" in printed


def test_the_compiled_templates_print_through_escape_for_output() -> None:
    environment = PortalEnvironment(Flask(__name__), autoescape=True)
    source = environment.compile("{{ value }}", raw=True)
    assert source.rstrip().endswith("from portal.templating import escape_for_output as escape")


@given(st.text())
def test_escape_for_output_escapes_text_as_markupsafe_does(text: str) -> None:
    assert escape_for_output(text) == str(escape(text))
    assert type(escape_for_output(text)) is str


@pytest.mark.parametrize(
    "value",
    [None, 0, -12, 3.5, Markup("<b>&amp;</b>"), HtmlObject(), ["<a>"], ("&",), jinja2.Undefined()],
)
def test_escape_for_output_treats_other_values_as_markupsafe_does(value: Any) -> None:
    assert escape_for_output(value) == str(escape(value))


def test_a_lazy_translated_string_prints_as_markupsafe_prints_it(app: Flask) -> None:
    from flask_babel import lazy_gettext

    with app.test_request_context():
        lazy = lazy_gettext("Tom & Jerry")
        # Flask-Babel's lazy strings answer __html__ (translated text counts as markup).
        assert escape_for_output(lazy) == str(escape(lazy)) == "Tom & Jerry"
