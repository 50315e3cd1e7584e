"""Where a signed-in page's time goes, in-process (`python -m bench.profile [DATABASE_URL]`).

For each page of the 10,000-invoice account: the page's wall and CPU time without a profiler
(median), its SQL statements and their time, then cProfile over the same requests with every
function's *own* time (tottime) put in one bucket by the file it lives in (Jinja, SQLAlchemy,
the database driver, Babel, Werkzeug routing, the session cookie, ...). Own times add up to the
whole request, so the buckets rank where the time goes without double counting; cumulative
times of a few named functions (render_template, load_user, url_for, the commit) say which
step of the request spends it. The profiler slows Python code more than C code, so the buckets
are shares, not milliseconds to subtract; the unprofiled median is the page's real cost.
"""

from __future__ import annotations

import cProfile
import json
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from bench import inprocess, seed

# (bucket, substrings of the code's file name or function, checked in order; first match wins)
BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("database driver (sqlite3 / psycopg)", ("sqlite3", "psycopg", "<method 'execute'")),
    ("Jinja templates (our template code)", ("/templates/",)),
    ("Jinja runtime", ("/jinja2/",)),
    ("MarkupSafe escaping", ("/markupsafe/", "markupsafe")),
    ("SQLAlchemy ORM", ("/sqlalchemy/orm/",)),
    ("SQLAlchemy Core / engine", ("/sqlalchemy/",)),
    ("Babel / Flask-Babel (formatting, gettext)", ("/babel/", "/flask_babel/", "gettext")),
    ("portal/formatting.py", ("/portal/formatting.py",)),
    ("portal/auth (session, user load)", ("/portal/auth/",)),
    ("portal/billing (queries, views)", ("/portal/billing/",)),
    ("portal/payments", ("/portal/payments/",)),
    ("portal/web.py (render, headers, url cache)", ("/portal/web.py",)),
    ("portal/db.py (unit of work)", ("/portal/db.py",)),
    ("portal (other)", ("/portal/",)),
    ("Werkzeug routing (url building, matching)", ("/werkzeug/routing/",)),
    ("Werkzeug (request, response, headers)", ("/werkzeug/",)),
    ("Flask-Login", ("/flask_login/",)),
    ("Flask-WTF (CSRF)", ("/flask_wtf/", "/wtforms/")),
    ("itsdangerous / hmac / hashlib (cookie)", ("/itsdangerous/", "hmac", "hashlib", "_hashlib")),
    ("Flask", ("/flask/", "/flask_htmx/", "/flask_limiter/", "/limits/")),
    ("Python stdlib / builtins", ("/lib/python3", "<built-in", "<method", "~")),
)

# Named steps: cumulative ms per request of the functions whose name ends with these.
STEPS: tuple[tuple[str, str], ...] = (
    ("render_template (whole template)", "flask/templating.py:render_template"),
    ("load_user (session row + user)", "portal/auth/sessions.py:load_user"),
    ("session cookie open/save", "flask/sessions.py:open_session"),
    ("url_for", "flask/helpers.py:url_for"),
    ("gettext / lazy strings", "flask_babel/__init__.py:gettext"),
    ("format_decimal / money", "portal/formatting.py:money"),
    ("day()", "portal/formatting.py:day"),
    ("security_headers (CSP)", "portal/web.py:security_headers"),
    ("commit of the unit of work", "portal/db.py:commit"),
    ("Session.execute / scalars", "sqlalchemy/orm/session.py:execute"),
    ("cursor.execute (driver)", "sqlalchemy/engine/default.py:do_execute"),
)


PHASES: tuple[tuple[str, str], ...] = (
    ("request", "whole request (Flask wsgi_app)"),
    ("open_session", "session cookie: open"),
    ("before", "before_request hooks"),
    ("load_user", "load_user (its query included)"),
    ("render", "template render"),
    ("commit", "unit-of-work commit"),
    ("after", "after_request hooks + cookie save"),
)


@contextmanager
def timing_phases(app: Flask) -> Iterator[dict[str, list[float]]]:
    """CPU milliseconds spent in each phase of every request made inside the block (inclusive;
    load_user and the render run inside the view, the rest of the view is what remains)."""
    import flask.templating

    from portal import db as unit_of_work
    from portal.extensions import login_manager

    spent: dict[str, list[float]] = {key: [] for key, _ in PHASES}
    current: dict[str, float] = {}

    def timed(key: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                current[key] = current.get(key, 0.0) + (time.process_time() - started) * 1000

        return wrapper

    def whole(environ: Any, start_response: Any) -> Any:
        current.clear()
        started = time.process_time()
        try:
            return original["wsgi_app"](environ, start_response)
        finally:
            current["request"] = (time.process_time() - started) * 1000
            for key, _ in PHASES:
                spent[key].append(current.get(key, 0.0))

    interface = app.session_interface
    original = {
        "wsgi_app": app.wsgi_app,
        "preprocess_request": app.preprocess_request,
        "process_response": app.process_response,
        "open_session": interface.open_session,
        "user_callback": login_manager._user_callback,
        "render": flask.templating._render,
        "commit": unit_of_work.commit,
    }
    app.wsgi_app = whole  # type: ignore[method-assign]
    app.preprocess_request = timed("before", original["preprocess_request"])  # type: ignore[method-assign]
    app.process_response = timed("after", original["process_response"])  # type: ignore[method-assign]
    interface.open_session = timed("open_session", original["open_session"])  # type: ignore[method-assign]
    login_manager._user_callback = timed("load_user", original["user_callback"])
    flask.templating._render = timed("render", original["render"])
    unit_of_work.commit = timed("commit", original["commit"])
    try:
        yield spent
    finally:
        del app.wsgi_app, app.preprocess_request, app.process_response
        del interface.open_session
        login_manager._user_callback = original["user_callback"]
        flask.templating._render = original["render"]
        unit_of_work.commit = original["commit"]


@dataclass
class PageProfile:
    key: str
    label: str
    path: str
    status: int
    body_bytes: int
    wall_ms: float
    cpu_ms: float
    sql_count: int
    sql_ms: float
    profiled_ms: float
    phases: dict[str, float] = field(default_factory=dict)
    buckets: list[tuple[str, float]] = field(default_factory=list)
    steps: list[tuple[str, float, int]] = field(default_factory=list)
    top: list[tuple[str, float, float, int]] = field(default_factory=list)


def _bucket(filename: str, name: str) -> str:
    text = f"{filename}:{name}"
    for bucket, needles in BUCKETS:
        if any(needle in text for needle in needles):
            return bucket
    return "other"


def _short(filename: str) -> str:
    for marker in ("/site-packages/", str(seed.ROOT) + "/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def profile_page(
    app: Flask, client: FlaskClient, key: str, label: str, path: str, runs: int
) -> PageProfile:
    for _ in range(3):
        response = client.get(path)
    walls, cpus = [], []
    for _ in range(runs):
        started, cpu = time.perf_counter(), time.process_time()
        response = client.get(path)
        walls.append((time.perf_counter() - started) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    with timing_phases(app) as spent:
        for _ in range(runs):
            client.get(path)
    phases = {key: statistics.median(values) for key, values in spent.items() if values}
    with inprocess.counting(app) as statements:
        client.get(path)
    sql = [(s, ms) for s, ms in statements if not inprocess._NOISE.match(s)]
    # NOTE: CPU time, not wall time: on a busy machine a wall-clock profile charges the
    # time the process waited for a core to whatever function it was preempted in.
    profiler = cProfile.Profile(time.process_time)
    started = time.perf_counter()
    profiler.enable()
    for _ in range(runs):
        client.get(path)
    profiler.disable()
    profiled_ms = (time.perf_counter() - started) * 1000 / runs
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    own: dict[str, float] = {}
    total_own = 0.0
    for (filename, _line, name), (_cc, _nc, tottime, _cum, _callers) in stats.items():
        bucket = _bucket(filename, name)
        own[bucket] = own.get(bucket, 0.0) + tottime
        total_own += tottime
    buckets = sorted(
        ((bucket, seconds / total_own * 100) for bucket, seconds in own.items()),
        key=lambda item: -item[1],
    )
    steps = []
    for step, suffix in STEPS:
        cumulative, calls = 0.0, 0
        for (filename, _line, name), (_cc, nc, _tt, cum, _callers) in stats.items():
            if f"{filename}:{name}".endswith(suffix):
                cumulative += cum
                calls += nc
        if calls:
            steps.append((step, cumulative * 1000 / runs, calls // runs))
    top = sorted(
        (
            (f"{_short(filename)}:{line} {name}", tt * 1000 / runs, cum * 1000 / runs, nc // runs)
            for (filename, line, name), (_cc, nc, tt, cum, _callers) in stats.items()
        ),
        key=lambda item: -item[1],
    )[:15]
    return PageProfile(
        key=key,
        label=label,
        path=path,
        status=response.status_code,
        body_bytes=len(response.data),
        wall_ms=statistics.median(walls),
        cpu_ms=statistics.median(cpus),
        sql_count=len(sql),
        sql_ms=sum(ms for _, ms in sql),
        profiled_ms=profiled_ms,
        phases=phases,
        buckets=buckets,
        steps=steps,
        top=top,
    )


def reference_profile(url: str, runs: int) -> PageProfile:
    """The same measurement of the bare 50-row reference page (bench.bare), for scale."""
    from bench.bare import create_bare_app

    app = create_bare_app(url)
    client = app.test_client()
    for _ in range(3):
        client.get("/rows")
    walls, cpus = [], []
    for _ in range(runs):
        started, cpu = time.perf_counter(), time.process_time()
        response = client.get("/rows")
        walls.append((time.perf_counter() - started) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    return PageProfile(
        key="reference",
        label="Bare 50-row page",
        path="/rows",
        status=response.status_code,
        body_bytes=len(response.data),
        wall_ms=statistics.median(walls),
        cpu_ms=statistics.median(cpus),
        sql_count=1,
        sql_ms=0.0,
        profiled_ms=0.0,
    )


def measure(url: str, runs: int = 30, log: Any = print) -> list[PageProfile]:
    app = inprocess.make_app(url)
    pages = inprocess.available_pages(app)
    number = inprocess.newest_number(app, seed.BIG_EMAIL)
    client = inprocess.signed_in_client(app, seed.BIG_EMAIL)
    labels = {key: label for key, label, _, _ in inprocess.PAGES}
    results = [reference_profile(url, runs)]
    for key, path in inprocess.page_paths(pages, number).items():
        result = profile_page(app, client, key, labels[key], path, runs)
        log(
            f"  profile {key}: {result.wall_ms:.1f} ms wall, {result.cpu_ms:.1f} ms CPU,"
            f" {result.sql_count} SQL ({result.sql_ms:.1f} ms)"
        )
        results.append(result)
    from portal.extensions import db

    with app.app_context():
        db.engine.dispose()
    return results


def render_markdown(backend: str, results: list[PageProfile]) -> str:
    out: list[str] = []
    w = out.append
    reference = results[0]
    w(f"#### {backend}: cost per request, in-process (median of the unprofiled runs)")
    w("")
    w("| Page | wall ms | CPU ms | × reference CPU | SQL statements | SQL ms | body KiB |")
    w("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        ratio = r.cpu_ms / reference.cpu_ms if reference.cpu_ms else 0.0
        w(
            f"| {r.label} | {r.wall_ms:.2f} | {r.cpu_ms:.2f} | {ratio:.2f} | {r.sql_count}"
            f" | {r.sql_ms:.2f} | {r.body_bytes / 1024:.1f} |"
        )
    w("")
    w(f"#### {backend}: CPU ms per request by phase (median, no profiler)")
    w("")
    w(
        "*view, rest* is the whole request minus every other column: the view's own queries"
        " and Python, plus Flask's and Werkzeug's per-request work."
    )
    w("")
    names = [label for key, label in PHASES if key != "request"]
    w(f"| Page | whole request | {' | '.join(names)} | view, rest |")
    w("|---|" + "---:|" * (len(names) + 2))
    for r in results[1:]:
        if not r.phases:
            continue
        p = r.phases
        parts = [p.get(key, 0.0) for key, _ in PHASES if key != "request"]
        rest = p.get("request", 0.0) - sum(parts)
        cells = " | ".join(f"{v:.2f}" for v in parts)
        w(f"| {r.label} | {p.get('request', 0.0):.2f} | {cells} | {rest:.2f} |")
    w("")
    w(f"#### {backend}: where the time goes (share of own time under cProfile)")
    w("")
    for r in results[1:]:
        parts = "; ".join(f"{name} {share:.0f}%" for name, share in r.buckets[:7] if share >= 2)
        steps = "; ".join(f"{name} {ms:.2f} ms ({calls}×)" for name, ms, calls in r.steps)
        w(f"- **{r.label}** (`{r.path}`): {parts}.  ")
        w(f"  Steps (cumulative ms per request, profiled): {steps}.")
    w("")
    return "\n".join(out) + "\n"


def main() -> int:
    url = sys.argv[1] if len(sys.argv) > 1 else f"sqlite:///{seed.RESULTS / 'run.sqlite3'}"
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    results = measure(url, runs)
    backend = "postgresql" if url.startswith("postgresql") else "sqlite"
    print(render_markdown(backend, results))
    out = seed.RESULTS / f"profile-{backend}.json"
    out.write_text(json.dumps([asdict(r) for r in results], indent=1), encoding="utf-8")
    for r in results[1:]:
        print(f"\n{r.label}: top functions by own time (ms/request profiled, cumulative, calls)")
        for name, own, cum, calls in r.top:
            print(f"  {own:6.3f} {cum:7.3f} {calls:5d}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
