"""A short, human summary of a browser's User-Agent header ("Safari on iPhone")."""

from __future__ import annotations

from flask_babel import gettext as _

# NOTE: order matters: Edge and Opera also say "Chrome", Chrome also says "Safari", an iPhone
# also says "Mac OS X", and Android also says "Linux".
_BROWSERS = (
    ("Edg", "Edge"),
    ("OPR/", "Opera"),
    ("SamsungBrowser/", "Samsung Internet"),
    ("Firefox/", "Firefox"),
    ("FxiOS/", "Firefox"),
    ("CriOS/", "Chrome"),
    ("Chrome/", "Chrome"),
    ("Safari/", "Safari"),
)
_SYSTEMS = (
    ("iPhone", "iPhone"),
    ("iPad", "iPad"),
    ("Android", "Android"),
    ("CrOS", "ChromeOS"),
    ("Windows", "Windows"),
    ("Macintosh", "Mac"),
    ("Mac OS X", "Mac"),
    ("Linux", "Linux"),
)
UNKNOWN = "Unknown browser"
MAX_LENGTH = 100


def _first(user_agent: str, table: tuple[tuple[str, str], ...]) -> str | None:
    return next((name for marker, name in table if marker in user_agent), None)


def describe_user_agent(user_agent: str | None) -> str:
    """E.g. "Chrome on Android", "Firefox", "iPad"; "Unknown browser" when nothing matches."""
    user_agent = (user_agent or "")[:1000]
    browser = _first(user_agent, _BROWSERS)
    system = _first(user_agent, _SYSTEMS)
    summary = f"{browser} on {system}" if browser and system else browser or system or UNKNOWN
    return summary[:MAX_LENGTH]


def device_label(stored: str | None) -> str:
    """A stored summary in the page's language. NOTE: the stored value stays English (audit
    events quote it); only its words are translated here, the names of browsers are names."""
    if not stored or stored == UNKNOWN:
        return _("Unknown browser")
    browser, joiner, system = stored.partition(" on ")
    if joiner and browser and system:
        return _("%(browser)s on %(system)s", browser=browser, system=system)
    return stored
