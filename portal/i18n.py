"""Translation groundwork (Flask-Babel): which language a page is written in.

Text is written in English and marked for translation (`_()` in Python, `{% trans %}` / `_()`
in templates). A page is shown in the account's language only where a compiled catalog for it
exists under `translations/`; otherwise it stays English, and `<html lang>` says "en", so a
screen reader never reads English with a German voice. Amounts and dates keep the account's
own locale (portal.formatting) inside sentences of the page's language.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import flask_babel
from babel import Locale
from flask import (
    Flask,
    before_render_template,
    current_app,
    g,
    has_app_context,
)
from jinja2 import pass_eval_context
from jinja2.nodes import EvalContext
from markupsafe import Markup

from portal.contextlocals import current_flask_app, current_request, g_get
from portal.extensions import babel
from portal.templating import escape_for_output

SOURCE_LANGUAGE = "en"


@cache
def _available(directory: str) -> frozenset[str]:
    """Languages with a compiled catalog (plus the source language)."""
    root = Path(directory)
    found = {SOURCE_LANGUAGE}
    if root.is_dir():
        for catalog in root.glob("*/LC_MESSAGES/messages.mo"):
            found.add(catalog.parent.parent.name)
    return frozenset(found)


def available_languages() -> frozenset[str]:
    app = current_flask_app() or current_app
    directories = app.config.get("BABEL_TRANSLATION_DIRECTORIES", "translations")
    root = Path(app.root_path).parent
    return frozenset().union(
        *(_available(str(root / part)) for part in str(directories).split(";"))
    )


def _account_key() -> tuple[object, object] | None:
    account = g_get("account")
    if account is None:
        return None
    return getattr(account, "id", None), getattr(account, "locale", None)


def page_language() -> str:
    """The language this request's text is written in (a catalog's name, e.g. "de" or "en").

    NOTE: chosen again once the signed-in account is known: text translated before that (a
    request's first gettext may come before `current_account()`) would otherwise fix the
    visitor's browser language for a page whose account has its own.
    """
    key = _account_key()
    cached = g_get("_page_language")
    if cached is not None and cached[0] == key:
        return cached[1]
    languages = available_languages()
    chosen = SOURCE_LANGUAGE
    account = g_get("account")
    wanted = getattr(account, "locale", None) if account is not None else None
    visitor = current_request()
    if wanted:
        chosen = language_for(wanted)
    elif visitor is not None:
        chosen = visitor.accept_languages.best_match(sorted(languages)) or SOURCE_LANGUAGE
    g._page_language = (key, chosen)
    return chosen


def language_for(locale: str | None) -> str:
    """The language text for an account with this locale is written in: its catalog if one
    exists, else English. For mail and PDFs made outside the account's own request:
    `with flask_babel.force_locale(language_for(account.locale)): render(...)`."""
    if not locale:
        return SOURCE_LANGUAGE
    return _match(locale, available_languages()) or SOURCE_LANGUAGE


def _follow_account(*_args: object, **_kwargs: object) -> None:
    """Before a template renders: if the account became known (or changed) since Flask-Babel
    chose its translations, let it choose again."""
    cached = g_get("_page_language")
    if cached is not None and cached[0] != _account_key():
        flask_babel.refresh()
        g.pop("_page_language", None)


def _match(identifier: str, languages: frozenset[str]) -> str | None:
    """The catalog for a locale like "de_DE": itself, else its language ("de")."""
    if identifier in languages:
        return identifier
    try:
        language = Locale.parse(identifier).language
    except (ValueError, TypeError):
        return None
    return language if language in languages else None


def html_lang() -> str:
    """`<html lang>`: the language the text is really in, as a BCP 47 tag; inside
    `flask_babel.force_locale(...)` (an email, a PDF) the forced language."""
    context = g_get("_flask_babel")
    locale = getattr(context, "babel_locale", None) if context is not None else None
    if locale is not None:
        # NOTE: a page asks once per status badge; the tag is kept beside the locale object it
        # was made from (refresh() and force_locale() replace that object).
        kept = getattr(context, "portal_lang", None)
        if kept is not None and kept[0] is locale:
            return kept[1]
        tag = str(locale).replace("_", "-")
        context.portal_lang = (locale, tag)
        return tag
    locale = flask_babel.get_locale() if has_app_context() else None
    return (str(locale) if locale is not None else page_language()).replace("_", "-")


def _translations() -> Any:
    """This request's translations, as flask_babel.get_translations() answers, looked up once
    per (locale, domain) in the request instead of on every string.

    NOTE: Flask-Babel's own template gettext finds the domain, the context, the locale and the
    catalog again on each call (~20 µs; a page marks a hundred strings). The answer is kept in
    Flask-Babel's per-request context next to the locale it belongs to: flask_babel.refresh()
    (the account became known) and force_locale() (a mail, a PDF) replace that locale object,
    and then the catalog is looked up again.
    """
    # Outside an app context there is none, and Flask-Babel answers NullTranslations.
    context = g_get("_flask_babel")
    if context is not None:
        kept = getattr(context, "portal_translations", None)
        if (
            kept is not None
            and kept[0] is getattr(context, "babel_locale", None)
            and kept[1] is getattr(context, "babel_domain", None)
        ):
            return kept[2]
    translations = flask_babel.get_translations()
    context = g_get("_flask_babel")
    locale = getattr(context, "babel_locale", None) if context is not None else None
    if locale is not None:
        context.portal_translations = (  # type: ignore[union-attr]
            locale,
            getattr(context, "babel_domain", None),
            translations,
        )
    return translations


def translations() -> Any:
    """This request's translations (`ugettext`, `ungettext`, ...), as the templates' `_()` uses
    them: for Python code that formats many strings of a page (see PageText)."""
    return _translations()


class PageText:
    """`gettext` / `ngettext` exactly as a page template's `_()` / `ngettext()` (autoescaped):
    the translation is markup and its parameters are escaped into it. For the read models that
    format a list's rows in Python (portal.billing.rows); bind the methods to `_` and
    `ngettext` so the messages are extracted."""

    def __init__(self) -> None:
        found = _translations()
        self._gettext = found.ugettext
        self._ngettext = found.ungettext

    def gettext(self, message: str, **params: Any) -> Markup:
        return markup_format(self._gettext(message), params)

    def ngettext(self, singular: str, plural: str, num: int, **params: Any) -> Markup:
        params.setdefault("num", num)
        return markup_format(self._ngettext(singular, plural, num), params)


def markup_format(template: str, params: dict[str, Any]) -> Markup:
    """`Markup(template) % params`, with the same result: the template is markup, each
    parameter is escaped into it (numbers are formatted as numbers).

    NOTE: Markup's `%` wraps the parameters in an escaping helper whose methods run for each
    placeholder (~5 µs a string here); a list page formats five strings per row. Escaping the
    values first and formatting plain text does the same in C. tests/test_i18n.py compares.
    """
    if not params:
        return Markup(template % params)
    escaped = {
        key: value if isinstance(value, (int, float)) else escape_for_output(value)
        for key, value in params.items()
    }
    return Markup(template % escaped)


def _install_gettext(app: Flask) -> None:
    app.jinja_env.install_gettext_callables(  # type: ignore[attr-defined]
        gettext=lambda s: _translations().ugettext(s),
        ngettext=lambda s, p, n: _translations().ungettext(s, p, n),
        pgettext=lambda c, s: _translations().upgettext(c, s),
        npgettext=lambda c, s, p, n: _translations().unpgettext(c, s, p, n),
        newstyle=True,
    )
    # NOTE: Jinja's `_()` resolves "gettext" and calls it through the context, which calls the
    # function above through the context again: three calls and two look-ups per string, a
    # quarter of a page's render. These do what that chain does (newstyle: the translation is
    # markup under autoescape, its parameters escaped into it; a text template gets text).
    app.jinja_env.globals.update(_=_template_gettext, gettext=_template_gettext)
    app.jinja_env.globals["ngettext"] = _template_ngettext


# Most strings a page marks have no parameters: their markup is kept per catalog and message.
_MARKUP_KEPT = 8192


def _plain_markup(translations: Any, message: str) -> Markup:
    kept: dict[str, Markup] | None = getattr(translations, "portal_markup", None)
    if kept is None:
        kept = translations.portal_markup = {}
    found = kept.get(message)
    if found is None:
        found = markup_format(translations.ugettext(message), {})
        if len(kept) < _MARKUP_KEPT:
            kept[message] = found
    return found


@pass_eval_context
def _template_gettext(eval_ctx: EvalContext, message: str, /, **variables: Any) -> str:
    if not variables and eval_ctx.autoescape:
        return _plain_markup(_translations(), message)
    translated = _translations().ugettext(message)
    if eval_ctx.autoescape:
        return markup_format(translated, variables)
    return translated % variables  # type: ignore[no-any-return]


@pass_eval_context
def _template_ngettext(
    eval_ctx: EvalContext, singular: str, plural: str, num: int, /, **variables: Any
) -> str:
    variables.setdefault("num", num)
    translated = _translations().ungettext(singular, plural, num)
    if eval_ctx.autoescape:
        return markup_format(translated, variables)
    return translated % variables  # type: ignore[no-any-return]


def init_app(app: Flask) -> None:
    app.config.setdefault("BABEL_DEFAULT_LOCALE", SOURCE_LANGUAGE)
    app.config.setdefault(
        "BABEL_TRANSLATION_DIRECTORIES", str(Path(app.root_path).parent / "translations")
    )
    babel.init_app(app, locale_selector=page_language)
    _install_gettext(app)
    app.add_template_global(html_lang, "page_lang")
    before_render_template.connect(_follow_account, app)
