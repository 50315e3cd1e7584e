"""Request-level helpers: page-or-partial rendering, safe redirects, response headers."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Flask,
    Response,
    current_app,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf.csrf import generate_csrf
from markupsafe import Markup

from portal import db as unit_of_work
from portal.contextlocals import current_flask_app, current_request, g_get
from portal.errors import ValidationFailed
from portal.extensions import db, htmx
from portal.forms import text_field_renderer
from portal.i18n import html_lang
from portal.templating import PortalEnvironment


class PortalFlask(Flask):
    """Flask with one unit of work per request: the view (and the before-request hooks) only
    flush; the request boundary commits once after the view returned, then runs the side
    effects registered with portal.db.after_commit. A commit that fails (a conflict, the
    database gone) goes to the error handlers like any error of the view, and an error
    handler rolls back, so an error response never carries half a change."""

    # Jinja's environment with cheaper printing and calls (portal.templating).
    jinja_environment = PortalEnvironment

    def preprocess_request(self) -> ResponseReturnValue | None:
        answer = super().preprocess_request()
        if answer is not None:
            unit_of_work.end_request(db.session, read_only=not _in_write_request())
        return answer

    def dispatch_request(self) -> ResponseReturnValue:
        answer = super().dispatch_request()
        unit_of_work.end_request(db.session, read_only=not _in_write_request())
        return answer

    _known_sync: set[Callable[..., Any]]

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        # NOTE: Flask asks inspect.iscoroutinefunction() about every hook, context processor
        # and view of every request (18 on a page, ~3 µs each); whether a function is a
        # coroutine function never changes, so each is asked once.
        known = self.__dict__.setdefault("_known_sync", set())
        if func in known:
            return func
        answer = super().ensure_sync(func)
        if answer is func and len(known) < 1024:
            known.add(func)
        return answer


_ACCEPTED_FILES = "portal_accepted_files"
ViewFunction = Callable[..., Any]


def accepts_files(*field_names: str) -> Callable[[ViewFunction], ViewFunction]:
    """Mark a view that takes uploads in the named fields; every other view refuses files."""

    def mark(view: ViewFunction) -> ViewFunction:
        setattr(view, _ACCEPTED_FILES, frozenset(field_names))
        return view

    return mark


def refuse_unexpected_files() -> None:
    """A file where text is expected is refused before any view sees it (a form would try to
    measure or parse the upload as if it were typed text)."""
    if not request.files:
        return
    view = current_app.view_functions.get(request.endpoint or "")
    accepted = getattr(view, _ACCEPTED_FILES, frozenset())
    unexpected = sorted(name for name in request.files if name not in accepted)
    if unexpected:
        raise ValidationFailed(
            _(
                "This form takes typed text, not files (a file was sent as “%(field)s”). "
                "Please type the value instead.",
                field=unexpected[0][:40],
            )
        )


def init_request_guards(app: Flask) -> None:
    app.before_request(refuse_unexpected_files)
    # NOTE: portal.db begins SQLite transactions of state-changing requests IMMEDIATE; it asks
    # this question instead of importing Flask itself.
    unit_of_work.set_write_request_probe(_in_write_request)


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _in_write_request() -> bool:
    found = current_request()
    return found is not None and found.method not in _SAFE_METHODS


def wants_partial() -> bool:
    """True for a real HTMX swap; boosted links and history restores get the full page."""
    return bool(htmx) and not htmx.boosted and not htmx.history_restore_request


def render_page(page: str, partial: str | None = None, **context: Any) -> Response:
    """Render the full page, or only `partial` for an HTMX swap of the same URL."""
    template = partial if partial and wants_partial() else page
    response = Response(render_template(template, **context))
    if partial:
        response.vary.add("HX-Request")
    return response


def see_other(location: str) -> Response:
    """Redirect after a POST (303), and tell HTMX to follow it as a full navigation."""
    response = redirect(location, code=303)
    if htmx:
        response.headers["HX-Redirect"] = location
    return response


def is_safe_next(target: str | None) -> bool:
    """Only same-site relative paths are followed after sign-in (no open redirects)."""
    if not target:
        return False
    parts = urlsplit(target)
    return not parts.scheme and not parts.netloc and target.startswith("/") and "\\" not in target


def csp_nonce() -> str:
    """The nonce of this response's Content-Security-Policy (one per request)."""
    environ = request.environ if (found := current_request()) is None else found.environ
    nonce = environ.get("portal.csp_nonce")
    if nonce is None:
        nonce = environ["portal.csp_nonce"] = secrets.token_urlsafe(16)
    return nonce


def _csp_template(stripe_js_url: str, stripe_api_base: str) -> tuple[str, str]:
    """The Content-Security-Policy around its nonce (the rest depends only on the config)."""
    stripe_origin = _origin(stripe_js_url)
    stripe_api = _origin(stripe_api_base)
    before = "default-src 'self'; script-src 'self' 'nonce-"
    after = "; ".join(
        [
            f"' {stripe_origin}",
            "style-src 'self'",
            "img-src 'self' data:",
            f"connect-src 'self' {stripe_api} {stripe_origin}",
            f"frame-src {stripe_origin}",
            "font-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )
    return before, after


def init_security_headers(app: Flask) -> None:
    csp_parts: dict[tuple[str, str], tuple[str, str]] = {}

    @app.after_request
    def security_headers(response: Response) -> Response:
        origins = (app.config["STRIPE_JS_URL"], app.config["STRIPE_API_BASE"])
        parts = csp_parts.get(origins)
        if parts is None:
            parts = csp_parts[origins] = _csp_template(*origins)
        response.headers["Content-Security-Policy"] = parts[0] + csp_nonce() + parts[1]
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
        response.headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
        if app.config["BASE_URL"].startswith("https://"):
            response.headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
        if request.endpoint != "static" and "Cache-Control" not in response.headers:
            # NOTE: billing pages must never sit in a shared or back-button cache.
            response.headers["Cache-Control"] = "no-store"
        return response


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


_NAVIGATION = (
    ("billing.dashboard", _l("Overview")),
    ("billing.invoices", _l("Invoices")),
    ("billing.statements", _l("Statements")),
    ("payments.history", _l("Payments")),
    ("checkout.payment_methods", _l("Payment methods")),
    ("subscriptions.index", _l("Subscriptions")),
    ("disputes.index", _l("Disputes")),
    ("accounts.details", _l("Account")),
)


def _cached_macro(app: Flask, macro: str) -> Callable[..., Markup]:
    """A macro of templates/_ui.html whose output depends only on its arguments, rendered once
    per distinct arguments (icons and badges are drawn for every row of a list)."""
    cache: dict[tuple[Any, ...], Markup] = {}

    def call(*args: Any) -> Markup:
        key = args
        found = cache.get(key)
        if found is None:
            found = Markup(getattr(app.jinja_env.get_template("_ui.html").module, macro)(*args))
            # NOTE: when templates reload (debug), an edited macro must show: no caching then.
            if not app.jinja_env.auto_reload and len(cache) < 512:
                cache[key] = found
        return found

    return call


# Path segments that URL building leaves as they are (invoice numbers, public ids).
_PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")


def _cached_path(endpoint: str, argument: str) -> Callable[[str], str]:
    """url_for(endpoint, **{argument: value}) for plain values, with the URL built once per
    request and the value appended (Werkzeug's URL building costs more than the row it links)."""

    key = f"portal.prefix.{endpoint}"

    def build(value: str) -> str:
        found = current_request()
        if found is None or not _PLAIN_SEGMENT.fullmatch(value):
            return url_for(endpoint, **{argument: value})
        prefix = found.environ.get(key)
        if prefix is None:
            prefix = found.environ[key] = url_for(endpoint, **{argument: "0"})[:-1]
        return prefix + value

    return build


def _cached_url(app: Flask) -> Callable[..., str]:
    """url_for(endpoint) or url_for("static", filename=...) built once per app (and script root):
    the page shell links the same few places on every page."""
    cache: dict[tuple[str, str, str], str] = {}

    def build(endpoint: str, filename: str | None = None) -> str:
        arguments = {} if filename is None else {"filename": filename}
        # NOTE: url_defaults functions may add per-request values: no caching when any exist.
        found = current_request()
        if found is None or app.url_default_functions:
            return url_for(endpoint, **arguments)
        key = (found.script_root, endpoint, filename or "")
        found = cache.get(key)
        if found is None:
            found = url_for(endpoint, **arguments)
            if len(cache) < 256:
                cache[key] = found
        return found

    return build


def _site_nav(app: Flask, app_url: Callable[..., str]) -> Callable[..., Markup]:
    """The main navigation (templates/_site_nav.html) for this request, its markup rendered once
    per (language, current item, places, script root). NOTE: base.html drew it on every page:
    the current-item loop, eight translated labels, icons and links cost about a fifth of a
    small page's render."""
    cache: dict[tuple[Any, ...], Markup] = {}

    def site_nav(items: Iterable[tuple[str, Any]]) -> Markup:
        items = tuple(items)
        endpoint, path = request.endpoint, request.path
        # The current item: this page's own, else the one whose address starts this page's
        # (an invoice and its pay page are under Invoices).
        current, length = None, 0
        for item, _label in items:
            href = app_url(item)
            if item == endpoint:
                current = item
                break
            if href != "/" and path.startswith(href + "/") and len(href) > length:
                current, length = item, len(href)
        # NOTE: the page's language is part of the key: a German page never shows the English
        # navigation. The labels are the template's words for each place (or a place's fixed
        # lazy label), so the language and the places determine them.
        key = (html_lang(), current, request.script_root, tuple(e for e, _n in items))
        found = cache.get(key)
        if found is None:
            template = app.jinja_env.get_template("_site_nav.html")
            found = Markup(template.render(items=items, current=current))
            # NOTE: when templates reload (debug), an edited template must show: no caching.
            if not app.jinja_env.auto_reload and len(cache) < 512:
                cache[key] = found
        return found

    return site_nav


_OPTION = Markup('\n    <option value="%s"%s>%s</option>')
_SELECTED = Markup(" selected")


def _options_markup(choices: tuple[tuple[Any, Any], ...], current: Any) -> Markup:
    parts = []
    # A value stored before the list was narrowed stays visible (and is re-checked on save).
    if current and current not in [value for value, _name in choices]:
        parts.append(_OPTION % (current, _SELECTED, current))
    for value, name in choices:
        parts.append(_OPTION % (value, _SELECTED if value == current else "", name))
    return Markup("").join(parts)


_cached_options = lru_cache(maxsize=256)(_options_markup)


def select_options(choices: Iterable[tuple[Any, Any]], current: Any) -> Markup:
    """The <option>s of a select whose choices are (value, name) in display order, `current`
    selected. NOTE: the country list has 249 options, and printing them in the template cost
    more than the rest of the account page: the markup is built once per (choices, current)
    when every piece is a plain string (a lazy string's text depends on the request)."""
    plain = _plain_choices.get(id(choices))
    if plain is None or plain[0] is not choices:
        kept = choices if type(choices) is tuple else None
        choices = tuple(choices)
        plain = (
            choices,
            all(type(value) is str and type(name) is str for value, name in choices),
        )
        # NOTE: a tuple kept by its maker (formatting.country_choices) is checked once: the
        # check walked all 249 countries on every account page.
        if kept is not None and len(_plain_choices) < 64:
            _plain_choices[id(kept)] = plain
    choices = plain[0]
    if type(current) is str and plain[1]:
        return _cached_options(choices, current)
    return _options_markup(choices, current)


# id(choices) -> (the same tuple, whether every value and name is a plain string)
_plain_choices: dict[int, tuple[tuple[tuple[Any, Any], ...], bool]] = {}


_invoice_path = _cached_path("billing.invoice_detail", "number")


def invoice_url(number: str) -> str | None:
    """The invoice's page (None where the app has no invoice pages)."""
    app = current_flask_app() or current_app
    if "billing.invoice_detail" not in app.view_functions:
        return None
    return _invoice_path(number)


def page_csrf_token() -> str:
    """Flask-WTF's `csrf_token()` for templates: the token this request already made, else
    generate_csrf(). NOTE: generate_csrf() reads the config, `g` and the session through seven
    context look-ups even when its answer is cached in `g`; the account page asks 17 times."""
    app = current_flask_app()
    if app is not None:
        found = g_get(app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token"))
        if found is not None:
            return str(found)
    return str(generate_csrf())


def init_template_globals(app: Flask) -> None:
    app.add_template_global(page_csrf_token, "csrf_token")

    app.add_template_global(_cached_macro(app, "svg_icon"), "cached_icon")
    cached_badge = _cached_macro(app, "status_badge")
    app.add_template_global(cached_badge, "cached_badge")

    def page_badge(status: str) -> Markup:
        # NOTE: the page's language is part of the key: a badge cached in English must not be
        # shown on a German page. A plain function (not a macro): pages draw one per row.
        return cached_badge(status, html_lang())

    app.add_template_global(page_badge, "page_badge")
    app.add_template_global(_cached_path("payments.receipt", "public_id"), "receipt_url")
    app_url = _cached_url(app)
    app.add_template_global(app_url, "app_url")
    app.add_template_global(_site_nav(app, app_url), "site_nav")
    app.add_template_global(select_options, "select_options")
    app.add_template_global(text_field_renderer, "text_field_renderer")

    @app.context_processor
    def portal_globals() -> dict[str, Any]:
        return {
            "nav_items": [(e, label) for e, label in _NAVIGATION if e in app.view_functions],
            "invoice_url": invoice_url,
            "csp_nonce": csp_nonce,
            "brand_name": app.config["BRAND_NAME"],
            "brand_color": app.config["BRAND_COLOR"],
            "brand_logo": app.config["BRAND_LOGO"],
        }
