"""Every word a customer reads is marked for translation: a pseudo catalog proves it.

The messages are extracted from the code and templates the way `pybabel extract -F babel.cfg`
does (Babel's Python API), every msgstr becomes an accented, bracketed copy of its msgid
("Invoices" -> "⟦Ìñṽöîçéš⟧", placeholders and HTML kept), and the catalog is compiled under the
name "de": a German account (de_DE, Europe/Berlin, EUR) then takes exactly the path Grace's
takes once a real German catalog lands, and German formats (01.12.2026, 75,00 €) keep dates and
amounts free of letters. Each page is rendered with the catalog active, and any visible text
without a pseudo marker is a string nobody marked.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import write_mo
from babel.messages.pofile import write_po
from flask import Flask, g, render_template, render_template_string
from flask.testing import FlaskClient
from flask_babel import force_locale, gettext
from markupsafe import Markup
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal import i18n
from portal.accounts.forms import LANGUAGES
from portal.formatting import countries
from portal.payments.models import PaymentMethod
from portal.subscriptions.models import Subscription
from tests.conftest import login_as
from tests.factories import make_account, make_invoice, make_price, make_user

ROOT = Path(__file__).resolve().parent.parent
PSEUDO_LANGUAGE = "de"
OPEN, CLOSE = "⟦", "⟧"
_ACCENTS = dict(
    zip(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "àƀçðéƒĝĥîĵķļɱñöþǫŕšţûṽŵẋýžÀßÇÐÉƑĜĤÎĴĶĻṀÑÖÞǪŔŠŢÛṼŴẊÝŽ",
        strict=True,
    )
)
MARKERS = frozenset(_ACCENTS.values()) | {OPEN, CLOSE}
# Placeholders, HTML tags and entities stay as they are; only words are dressed up.
_KEEP = re.compile(r"(%\([A-Za-z_]\w*\)[sdif]|%[sdif%]|<[^>]*>|&#?\w+;)")
IPHONE_SAFARI = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"
)


def pseudo(text: str) -> str:
    """ "Due %(date)s" -> "⟦Ðûé %(date)s⟧": every letter outside placeholders and tags accented."""
    parts = _KEEP.split(text)
    dressed = [
        part if index % 2 else "".join(_ACCENTS.get(ch, ch) for ch in part)
        for index, part in enumerate(parts)
    ]
    return OPEN + "".join(dressed) + CLOSE


def extract_catalog() -> Catalog:
    """What `pybabel extract -F babel.cfg -k _ -k lazy_gettext .` collects."""
    with (ROOT / "babel.cfg").open() as config:
        method_map, options_map = parse_mapping_cfg(config)
    keywords = {**DEFAULT_KEYWORDS, "lazy_gettext": None, "lazy_ngettext": (1, 2), "_l": None}
    catalog = Catalog(locale=PSEUDO_LANGUAGE, project="billing-portal")
    for filename, lineno, message, comments, context in extract_from_dir(
        str(ROOT), method_map, options_map, keywords=keywords
    ):
        catalog.add(message, None, [(filename, lineno)], auto_comments=comments, context=context)
    return catalog


@pytest.fixture(scope="session")
def pseudo_translations(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A compiled pseudo catalog in a directory of its own (translations/ is left alone)."""
    catalog = extract_catalog()
    assert len(catalog) > 100, "extraction found almost nothing: is babel.cfg read?"
    for message in catalog:
        if not message.id:
            continue
        if isinstance(message.id, tuple | list):
            message.string = tuple(pseudo(part) for part in message.id)
        else:
            message.string = pseudo(message.id)
    root = tmp_path_factory.mktemp("translations")
    folder = root / PSEUDO_LANGUAGE / "LC_MESSAGES"
    folder.mkdir(parents=True)
    with (folder / "messages.po").open("wb") as po:
        write_po(po, catalog)
    with (folder / "messages.mo").open("wb") as mo:
        write_mo(mo, catalog)
    return root


@pytest.fixture()
def pseudo_app(app: Flask, pseudo_translations: Path, monkeypatch: pytest.MonkeyPatch) -> Flask:
    """The suite's app with the pseudo catalog as its only translations, for one test."""
    babel_config = app.extensions["babel"]
    monkeypatch.setitem(app.config, "BABEL_TRANSLATION_DIRECTORIES", str(pseudo_translations))
    monkeypatch.setattr(babel_config, "translation_directories", [str(pseudo_translations)])
    with app.app_context():
        cache = babel_config.instance.domain_instance.cache
    cache.clear()
    yield app
    cache.clear()


class _VisibleText(HTMLParser):
    """Text a person sees or hears: text nodes outside <script>/<style>, and the attributes a
    screen reader or the page shows (aria-label, placeholder, alt, title)."""

    SPOKEN = ("aria-label", "placeholder", "alt", "title")

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.texts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "template"):
            self._hidden += 1
        for name, value in attrs:
            if name in self.SPOKEN and value and value.strip():
                self.texts.append(value.strip())

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "template") and self._hidden:
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden and data.strip():
            self.texts.append(" ".join(data.split()))


def unmarked_text(html: str, data: set[str]) -> list[str]:
    """The visible texts with no pseudo marker that hold a word which is not data (names,
    numbers, emails, invoice numbers; German dates and amounts have no letters)."""
    parser = _VisibleText()
    parser.feed(html)
    found = []
    for text in parser.texts:
        if MARKERS.intersection(text):
            continue
        rest = text
        for value in sorted(data, key=len, reverse=True):
            rest = rest.replace(value, " ")
        if re.search(r"[^\W\d_]", rest):
            found.append(text)
    return found


def _brand_data(app: Flask) -> set[str]:
    seller = app.config.get("SELLER") or {}
    return {
        app.config["BRAND_NAME"],
        str(seller.get("name") or ""),
        str(seller.get("email") or ""),
        *str(seller.get("address") or "").splitlines(),
        "Billing",
    } - {""}


class World:
    def __init__(self, session: Session) -> None:
        self.account = make_account(
            session,
            currency="EUR",
            locale="de_DE",
            timezone="Europe/Berlin",
            name="Hopper Consulting GmbH",
            billing_email="grace@example.com",
            address_line1="Friedrichstraße 68",
            city="Berlin",
            postal_code="10117",
            country="DE",
        )
        self.user = make_user(session, email="grace@example.com", account=self.account)
        self.overdue = make_invoice(session, self.account, (7500,), issue_date=date(2026, 9, 1))
        self.open = make_invoice(session, self.account, (9900,))
        price = make_price(session, currency="EUR", flat_amount_minor=4900)
        start = datetime(2026, 11, 1, tzinfo=UTC)
        session.add(
            Subscription(
                account_id=self.account.id,
                price_id=price.id,
                quantity=1,
                status="active",
                current_period_start=start,
                current_period_end=start + timedelta(days=30),
            )
        )
        session.add(
            PaymentMethod(
                account_id=self.account.id,
                stripe_payment_method_id="pm_pseudo_1",
                brand="visa",
                last4="4242",
                exp_month=12,
                exp_year=2031,
                is_default=True,
            )
        )
        session.flush()
        self.plan = price.plan.name

    def data(self, app: Flask) -> set[str]:
        names = {name for _, name in countries(PSEUDO_LANGUAGE)} | {n for _, n in LANGUAGES}
        return (
            _brand_data(app)
            | names
            | {
                self.account.name,
                self.account.billing_email,
                self.user.email,
                self.user.name,
                # NOTE: the avatar shows the name's initial.
                self.user.name[:1].upper(),
                self.overdue.number,
                self.open.number,
                self.plan,
                "Friedrichstraße 68",
                "Berlin",
                # NOTE: browser and system names (portal/auth/devices.py) are names.
                "Safari",
                "iPhone",
                "Visa",
                "EUR",
                # NOTE: the account's country code, and the factory's invoice line description.
                self.account.country,
                "Item 1",
            }
        )


def _signed_in(client: FlaskClient, world: World) -> FlaskClient:
    client.environ_base["HTTP_USER_AGENT"] = IPHONE_SAFARI
    login_as(client, world.user)
    return client


def _page(client: FlaskClient, world: World, path: str) -> str:
    response = client.get(path, headers={"Accept-Language": "de-DE,de;q=0.9"})
    assert response.status_code in (200, 404), (path, response.status_code)
    return response.get_data(as_text=True)


def _login_pages(client: FlaskClient, world: World) -> dict[str, Callable[[], str]]:
    from portal.auth.services import TokenSigner, issue_login_token
    from portal.extensions import db

    headers = {"Accept-Language": "de-DE,de;q=0.9"}

    def confirm() -> str:
        app = client.application
        token = issue_login_token(
            db.session,
            TokenSigner(app.config["SECRET_KEYS"]),
            world.user,
            lifetime=timedelta(minutes=10),
        )
        return client.get(f"/login/{token}", headers=headers).get_data(as_text=True)

    def check_email() -> str:
        response = client.post(
            "/login", data={"email": world.user.email}, headers=headers, follow_redirects=True
        )
        return response.get_data(as_text=True)

    return {
        "login": lambda: client.get("/login", headers=headers).get_data(as_text=True),
        "check email": check_email,
        "confirm": confirm,
    }


SIGNED_IN_PAGES = [
    pytest.param("dashboard", "/", id="dashboard"),
    pytest.param("invoices", "/invoices", id="invoices"),
    pytest.param("invoices, filtered", "/invoices?status=overdue", id="invoices-filtered"),
    pytest.param("account", "/account", id="account"),
    pytest.param(
        "invoice",
        "invoice",
        id="invoice",
    ),
    pytest.param("statements", "/statements", id="statements"),
    pytest.param(
        "payments",
        "/payments",
        id="payments",
    ),
    pytest.param(
        "payment methods",
        "/payment-methods",
        id="payment-methods",
    ),
    # NOTE: the error page's own words are ours (test_error_page_template_is_marked); its
    # title and message come from portal/http_errors.py.
    pytest.param("error 404", "/no-such-page", id="error-404"),
    # Subscriptions (issue 10): "subscription:<page>" is the world's subscription's page.
    pytest.param("subscriptions", "/subscriptions", id="subscriptions"),
    pytest.param("subscription", "subscription:", id="subscription"),
    pytest.param("subscription change", "subscription:/change", id="subscription-change"),
    pytest.param("subscription cancel", "subscription:/cancel", id="subscription-cancel"),
    # Disputes (issue 11)
    pytest.param("disputes", "/disputes", id="disputes"),
    pytest.param("question a charge", "dispute-new", id="dispute-new"),
    pytest.param("dispute", "dispute", id="dispute"),
]


@pytest.mark.parametrize(("name", "path"), SIGNED_IN_PAGES)
def test_every_word_on_the_page_is_marked(
    pseudo_app: Flask, client: FlaskClient, session: Session, clock: Any, name: str, path: str
) -> None:
    world = World(session)
    _signed_in(client, world)
    if path == "invoice":
        path = f"/invoices/{world.overdue.number}"
    if path.startswith("subscription:"):
        public_id = session.scalar(
            select(Subscription.public_id).where(Subscription.account_id == world.account.id)
        )
        path = f"/subscriptions/{public_id}{path.removeprefix('subscription:')}"
    if path == "dispute-new":
        path = f"/disputes/new?invoice={world.open.number}"
    if path == "dispute":
        from tests.factories import make_dispute

        dispute = make_dispute(session, world.account, world.open, 500, description="Item 1")
        session.commit()
        path = f"/disputes/{dispute.public_id}"
    html = _page(client, world, path)
    assert 'lang="de"' in html, "the page should be written in the pseudo language"
    assert unmarked_text(html, world.data(pseudo_app)) == [], f"unmarked text on {name}"


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("login"),
        pytest.param("check email"),
        pytest.param("confirm"),
    ],
)
def test_every_word_on_the_sign_in_pages_is_marked(
    pseudo_app: Flask, client: FlaskClient, session: Session, clock: Any, name: str
) -> None:
    world = World(session)
    html = _login_pages(client, world)[name]()
    assert unmarked_text(html, world.data(pseudo_app)) == [], f"unmarked text on {name}"


@pytest.mark.parametrize("status", [404, 503])
def test_error_page_template_is_marked(pseudo_app: Flask, status: int) -> None:
    """The error page's own words (its title and message are the caller's)."""
    with pseudo_app.test_request_context("/somewhere", headers={"Accept-Language": "de"}):
        html = render_template(
            "errors/error.html", status=status, title=pseudo("Gone"), message=pseudo("Sorry")
        )
    assert 'lang="de"' in html
    assert unmarked_text(html, _brand_data(pseudo_app)) == []


def test_the_checker_finds_an_unmarked_word() -> None:
    html = (
        "<p>⟦Ðûé⟧</p><p>Due</p><script>var x = 'Due';</script>"
        '<p>01.12.2026</p><p>75,00 €</p><p>Ada</p><input placeholder="Search">'
    )
    assert unmarked_text(html, {"Ada"}) == ["Due", "Search"]


def test_pseudo_keeps_placeholders_and_html() -> None:
    assert pseudo('Was due %(date)s <span aria-hidden="true">·</span> %(num)d') == (
        '⟦Ŵàš ðûé %(date)s <span aria-hidden="true">·</span> %(num)d⟧'
    )


def test_the_page_language_follows_the_account_once_known(
    pseudo_app: Flask, session: Session
) -> None:
    """Text translated before the account is known (browser language) must not fix the page's
    language: once the account is, the page is in the account's language."""
    account = make_account(session, locale="de_DE")
    english = make_account(session, locale="en_US")
    with pseudo_app.test_request_context("/", headers={"Accept-Language": "en"}):
        assert gettext("Invoices") == "Invoices"
        g.account = account
        assert render_template_string("{{ page_lang() }} {{ _('Invoices') }}") == (
            "de " + pseudo("Invoices")
        )
    with pseudo_app.test_request_context("/", headers={"Accept-Language": "de"}):
        g.account = english
        assert render_template_string("{{ page_lang() }} {{ _('Invoices') }}") == "en Invoices"


def test_without_a_catalog_the_page_stays_english(app: Flask, session: Session) -> None:
    """No translations/de yet: a German account reads English under lang="en"."""
    account = make_account(session, locale="de_DE")
    with app.test_request_context("/", headers={"Accept-Language": "de"}):
        g.account = account
        assert i18n.html_lang() == "en"
        assert render_template_string("{{ _('Invoices') }}") == "Invoices"


def test_a_badge_is_cached_per_language(pseudo_app: Flask, session: Session, clock: Any) -> None:
    """The badge macro is cached per process: an English badge must not reach a German page."""
    english = make_account(session, locale="en_US")
    german = make_account(session, locale="de_DE")
    template = "{% import '_ui.html' as ui %}{{ ui.badge('overdue') }}"
    with pseudo_app.test_request_context("/"):
        g.account = english
        assert ">Overdue<" in render_template_string(template)
    with pseudo_app.test_request_context("/"):
        g.account = german
        assert pseudo("Overdue") in render_template_string(template)


def test_the_navigation_is_cached_per_language_and_current_item(
    pseudo_app: Flask, session: Session
) -> None:
    """portal.web.site_nav keeps the navigation's markup per process: an English navigation must
    not reach a German page, nor one page's current item another's."""
    english = make_account(session, locale="en_US")
    german = make_account(session, locale="de_DE")
    template = "{{ site_nav(nav_items) }}"
    with pseudo_app.test_request_context("/invoices"):
        g.account = english
        nav = render_template_string(template)
        assert ">Invoices<" in nav and 'href="/invoices" aria-current="page"' in nav
    with pseudo_app.test_request_context("/invoices"):
        g.account = german
        nav = render_template_string(template)
        assert pseudo("Invoices") in nav and ">Invoices<" not in nav
    with pseudo_app.test_request_context("/payments"):
        g.account = german
        nav = render_template_string(template)
        assert 'href="/payments" aria-current="page"' in nav
        assert 'href="/invoices" aria-current' not in nav


def _iter_open_invoices(session: Session, account: Any, count: int, overdue: int) -> Iterator[Any]:
    for n in range(count):
        issue = date(2026, 8, 1) + timedelta(days=n) if n < overdue else None
        yield make_invoice(session, account, (1000 + n,), issue_date=issue)


@pytest.mark.parametrize(
    ("overdue", "expected"),
    [
        (5, "Showing the 5 invoices that are overdue the longest."),
        (2, "Showing the 5 oldest open invoices: 2 overdue, then the next due."),
        (0, "Showing the 5 invoices that are due soonest."),
    ],
)
def test_the_dashboard_says_what_its_list_holds(
    client: FlaskClient, session: Session, clock: Any, overdue: int, expected: str
) -> None:
    account = make_account(session)
    user = make_user(session, account=account)
    list(_iter_open_invoices(session, account, 6, overdue))
    login_as(client, user)
    html = client.get("/").get_data(as_text=True)
    note = re.search(r'data-testid="open-invoices-note">\s*(.*?)\s*</p>', html, re.S)
    assert note is not None
    assert note.group(1) == expected


def test_web_pages_do_not_ask_to_reply_to_an_email(
    client: FlaskClient, session: Session, clock: Any
) -> None:
    account = make_account(session)
    user = make_user(session, account=account)
    make_invoice(session, account, (1000,))
    login_as(client, user)
    for path in ("/", "/invoices", "/account"):
        assert "reply to this email" not in client.get(path).get_data(as_text=True), path


def test_mail_and_pdfs_name_the_language_they_are_written_in(
    pseudo_app: Flask, session: Session
) -> None:
    """Outside the account's own request (a job renders a receipt), the sender forces the
    account's language; `page_lang()` then names that language, not the visitor's."""
    german = make_account(session, locale="de_DE")
    japanese = make_account(session, locale="ja_JP")
    assert (i18n.language_for(german.locale), i18n.language_for(japanese.locale)) == ("de", "en")
    with pseudo_app.app_context():
        with force_locale(i18n.language_for(german.locale)):
            rendered = render_template_string("{{ page_lang() }} {{ _('Invoices') }}")
        assert rendered == "de " + pseudo("Invoices")
        with force_locale(i18n.language_for(japanese.locale)):
            assert render_template_string("{{ page_lang() }} {{ _('Invoices') }}") == (
                "en Invoices"
            )


# --- The templates' gettext (portal.i18n._template_gettext, performance work of issue 9) ------


def test_template_gettext_escapes_into_html_and_leaves_text_templates_alone(app: Flask) -> None:
    with app.test_request_context("/"):
        html = app.jinja_env.overlay(autoescape=True).from_string(
            '{{ _("Hi %(name)s", name=who) }}|{{ gettext("Hi %(name)s", name=who) }}|'
            '{{ ngettext("%(num)d item for %(name)s", "%(num)d items for %(name)s", 2, name=who) }}'
            "|{% trans %}Plain{% endtrans %}|{{ _('100%% sure') }}"
        )
        assert html.render(who="<b>") == (
            "Hi &lt;b&gt;|Hi &lt;b&gt;|2 items for &lt;b&gt;|Plain|100% sure"
        )
        text = app.jinja_env.overlay(autoescape=False).from_string(
            '{{ _("Hi %(name)s", name=who) }} {{ ngettext("%(num)d day", "%(num)d days", 1) }}'
        )
        assert text.render(who="<b>") == "Hi <b> 1 day"


def test_template_gettext_follows_the_page_language(app: Flask) -> None:
    translations = i18n._translations
    with app.test_request_context("/"):
        template = app.jinja_env.from_string('{{ _("Invoices") }}')
        assert template.render() == "Invoices"

        class Pseudo:
            def ugettext(self, message: str) -> str:
                return pseudo(message)

        i18n._translations = lambda: Pseudo()  # type: ignore[assignment]
        try:
            assert template.render() == pseudo("Invoices")
        finally:
            i18n._translations = translations


@pytest.mark.parametrize(
    ("template", "params"),
    [
        ("Hi %(name)s", {"name": "<b>Tom & Jerry</b>"}),
        ("Hi %(name)s", {"name": Markup("<b>kept</b>")}),
        ("%(num)d days, %(amount)s", {"num": 3, "amount": "1.234,50\xa0€"}),
        ("%(share).2f%% of %(what)s", {"share": 12.5, "what": '"quoted"'}),
        ("%(none)s/%(flag)s/%(n)s", {"none": None, "flag": True, "n": 7}),
        ("No placeholders, 100%% sure", {}),
        ('<span class="x">%(a)s</span> %(a)s', {"a": "'single' <i>"}),
    ],
)
def test_markup_format_is_markup_percent(template: str, params: dict[str, Any]) -> None:
    # NOTE: performance work of issue 9: PageText formats a list's rows with markup_format,
    # which must give exactly what Markup(template) % params gives.
    expected = Markup(template) % params
    found = i18n.markup_format(template, dict(params))
    assert found == expected and isinstance(found, Markup)


def test_markup_format_escapes_a_lazy_string(app: Flask) -> None:
    from flask_babel import lazy_gettext

    with app.test_request_context("/"):
        lazy = lazy_gettext("Tom & <Jerry>")
        assert i18n.markup_format("Hi %(x)s", {"x": lazy}) == Markup("Hi %(x)s") % {"x": lazy}


def test_a_translated_string_without_parameters_is_kept_per_catalog(
    pseudo_app: Flask, session: Session
) -> None:
    """portal.i18n keeps the markup of `_('…')` without parameters per catalog: an English
    string must not reach a German page, and `%%` still prints one percent sign."""
    english = make_account(session, locale="en_US")
    german = make_account(session, locale="de_DE")
    template = "{{ _('Invoices') }}|{{ _('100%% of it') }}|{{ _('<b>%(n)s</b>', n='&') }}"
    for account, expected in [
        (english, "Invoices|100% of it|<b>&amp;</b>"),
        (german, pseudo("Invoices") + "|"),
        (english, "Invoices|100% of it|<b>&amp;</b>"),
    ]:
        with pseudo_app.test_request_context("/"):
            g.account = account
            assert render_template_string(template).startswith(expected)
    with pseudo_app.test_request_context("/"):
        g.account = english
        printed = render_template_string("{{ _('Invoices') ~ '<' }}")
        assert printed == "Invoices&lt;", "the kept string must still be markup"
