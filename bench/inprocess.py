"""In-process measurements through the Flask test client: SQL statements per page (counted by a
`before_cursor_execute` listener), and the time of the invoice list and the statement of the
10,000-invoice account against the 10-invoice account."""

from __future__ import annotations

import re
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, select

from bench.seed import BIG_EMAIL, SMALL_EMAIL, app_config

# page key -> (label, endpoint that must exist, path template; {number} = the account's newest)
PAGES: tuple[tuple[str, str, str, str], ...] = (
    ("dashboard", "Dashboard", "billing.dashboard", "/"),
    ("invoices", "Invoice list", "billing.invoices", "/invoices"),
    ("invoice", "Invoice page", "billing.invoice_detail", "/invoices/{number}"),
    ("statement", "Statement (this month)", "billing.statements", "/statements"),
    ("pdf", "Invoice PDF (stored)", "billing.invoice_pdf", "/invoices/{number}/pdf"),
    ("payments", "Payments", "payments.history", "/payments"),
    ("methods", "Payment methods", "checkout.payment_methods", "/payment-methods"),
    ("account", "Account", "accounts.details", "/account"),
)
EXPECTED_ENDPOINTS = {key: endpoint for key, _, endpoint, _ in PAGES}


def make_app(url: str) -> Flask:
    from portal import create_app

    return create_app(app_config(url, WTF_CSRF_ENABLED=False, RATELIMIT_ENABLED=False))


def available_pages(app: Flask) -> dict[str, str]:
    """Page key -> the endpoint serving it, for the pages that exist in this tree right now."""
    endpoints = {rule.rule: rule.endpoint for rule in app.url_map.iter_rules()}
    found = {}
    for key, _, endpoint, path in PAGES:
        rule = path.replace("{number}", "<number>")
        if endpoint in app.view_functions or rule in endpoints:
            found[key] = endpoints.get(rule, endpoint)
    return found


def newest_number(app: Flask, email: str) -> str:
    from portal.accounts.models import Account, Membership, User
    from portal.billing.models import Invoice
    from portal.extensions import db

    with app.app_context():
        number = db.session.scalar(
            select(Invoice.number)
            .join(Membership, Membership.account_id == Invoice.account_id)
            .join(User, User.id == Membership.user_id)
            .join(Account, Account.id == Invoice.account_id)
            .where(User.email == email, Invoice.number.is_not(None))
            .order_by(Invoice.issue_date.desc(), Invoice.id.desc())
            .limit(1)
        )
        db.session.remove()
    if number is None:
        raise RuntimeError(f"{email} has no invoices")
    return number


def page_paths(pages: dict[str, str], number: str) -> dict[str, str]:
    return {key: path.format(number=number) for key, _, _, path in PAGES if key in pages}


def signed_in_client(app: Flask, email: str) -> FlaskClient:
    """A test client signed in through the real token flow (CSRF is off in-process only)."""
    from portal.accounts.models import User
    from portal.auth.services import TokenSigner, issue_login_token
    from portal.extensions import db

    client = app.test_client()
    with app.app_context():
        user = db.session.scalar(select(User).where(User.email == email))
        token = issue_login_token(
            db.session,
            TokenSigner(app.config["SECRET_KEYS"]),
            user,
            lifetime=timedelta(minutes=10),
        )
        db.session.commit()
        db.session.remove()
    response = client.post(f"/login/{token}")
    if response.status_code != 303:
        raise RuntimeError(f"in-process sign-in answered {response.status_code}")
    return client


@contextmanager
def counting(app: Flask) -> Iterator[list[tuple[str, float]]]:
    """Every statement sent while the block runs, with its execution time in milliseconds."""
    from portal.extensions import db

    with app.app_context():
        engine = db.engine
    statements: list[tuple[str, float]] = []
    started: list[float] = []

    def before(_conn: Any, _cursor: Any, _statement: str, *_args: Any) -> None:
        started.append(time.perf_counter())

    def after(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append((statement, (time.perf_counter() - started.pop()) * 1000))

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)


_NOISE = re.compile(r"^\s*(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE|PRAGMA)\b", re.I)


@dataclass
class PageSql:
    status: int
    timed: list[tuple[str, float]]

    @property
    def statements(self) -> list[str]:
        return [statement for statement, _ in self.timed]

    def slowest(self, limit: int = 2) -> list[tuple[str, float]]:
        """The statements that took longest in the counted request (one sample: indicative)."""
        timed = [(s, ms) for s, ms in self.timed if not _NOISE.match(s)]
        return sorted(timed, key=lambda item: -item[1])[:limit]

    @property
    def count(self) -> int:
        """Statements sent to the database, without transaction control (BEGIN/COMMIT)."""
        return len([s for s in self.statements if not _NOISE.match(s)])

    def sent(self) -> list[str]:
        """The statements counted, whitespace normalised, in the order they were sent."""
        return [" ".join(s.split()) for s in self.statements if not _NOISE.match(s)]

    def repeats(self) -> list[tuple[str, int]]:
        """Statements sent more than once in the request (the N+1 signature)."""
        return [(text, n) for text, n in Counter(self.sent()).most_common() if n > 1]


def sql_for(app: Flask, client: FlaskClient, path: str) -> PageSql:
    client.get(path)  # warm: first-request work (a PDF's first render) is not the steady state
    with counting(app) as statements:
        response = client.get(path)
    return PageSql(response.status_code, list(statements))


@dataclass(frozen=True)
class Timing:
    """Median wall and CPU milliseconds of one request through the test client."""

    wall_ms: float
    cpu_ms: float


def median_ms(client: FlaskClient, path: str, runs: int) -> Timing:
    for _ in range(2):
        client.get(path)
    walls, cpus = [], []
    for _ in range(runs):
        started, cpu = time.perf_counter(), time.process_time()
        response = client.get(path)
        walls.append((time.perf_counter() - started) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{path} answered {response.status_code}")
    return Timing(statistics.median(walls), statistics.median(cpus))


def profile(
    client: FlaskClient, path: str, runs: int = 15, top: int = 5
) -> list[tuple[str, float]]:
    """Where a page's time goes: the portal functions and templates with the most cumulative
    time per request (cProfile; the view function itself and its wrappers left out)."""
    import cProfile
    import pstats

    from bench.seed import ROOT

    for _ in range(2):
        client.get(path)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(runs):
        client.get(path)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    ours = []
    roots = (str(ROOT / "portal"), str(ROOT / "templates"))
    for (filename, line, name), (_cc, _nc, _tt, cumulative, _callers) in stats.items():
        if filename.startswith(roots):
            label = f"{filename[len(str(ROOT)) + 1 :]}:{line} {name}"
            if name != "root":  # a template's whole body: the block functions say more
                ours.append((label, cumulative * 1000 / runs))
    if not ours:
        return []
    ours.sort(key=lambda item: -item[1])
    whole = ours[0][1]
    # NOTE: the view and the outermost templates take (nearly) all of it: not informative.
    inner = [item for item in ours if item[1] < 0.8 * whole]
    return [("whole view", whole), *inner[:top]]


@dataclass
class AccountResult:
    email: str
    number: str
    sql: dict[str, PageSql] = field(default_factory=dict)
    times_ms: dict[str, Timing] = field(default_factory=dict)
    statement_rows: dict[str, int] = field(default_factory=dict)
    profiles: dict[str, list[tuple[str, float]]] = field(default_factory=dict)


def _statement_rows(app: Flask, email: str, period_args: dict[str, str]) -> int:
    """How many ledger rows the statement shows for that period (for the report)."""
    from portal import clock
    from portal.accounts.models import Account, Membership, User
    from portal.billing.statements import parse_period, statement_view
    from portal.extensions import db

    with app.app_context():
        account = db.session.scalar(
            select(Account)
            .join(Membership, Membership.account_id == Account.id)
            .join(User, User.id == Membership.user_id)
            .where(User.email == email)
        )
        today = clock.today(account.timezone)
        period = parse_period(
            today, period_args.get("period"), period_args.get("start"), period_args.get("end")
        )
        rows = len(statement_view(db.session, account, period).rows)
        db.session.remove()
    return rows


def measure(url: str, runs: int = 25, log: Any = print) -> dict[str, Any]:
    """SQL per page and in-process page times for the big and the small account."""
    app = make_app(url)
    pages = available_pages(app)
    yesterday_args = _yesterday_args(app, BIG_EMAIL)
    results: dict[str, AccountResult] = {}
    for label, email in (("big", BIG_EMAIL), ("small", SMALL_EMAIL)):
        number = newest_number(app, email)
        client = signed_in_client(app, email)
        result = AccountResult(email, number)
        for key, path in page_paths(pages, number).items():
            result.sql[key] = sql_for(app, client, path)
        for key in ("invoices", "statement"):
            if key in pages:
                path = page_paths(pages, number)[key]
                result.times_ms[key] = median_ms(client, path, runs)
        if label == "big":
            for key, path in page_paths(pages, number).items():
                result.profiles[key] = profile(client, path)
        if "statement" in pages:
            one_day = "/statements?" + "&".join(f"{k}={v}" for k, v in yesterday_args.items())
            result.times_ms["statement_one_day"] = median_ms(client, one_day, runs)
            result.statement_rows["this_month"] = _statement_rows(app, email, {})
            result.statement_rows["one_day"] = _statement_rows(app, email, yesterday_args)
        results[label] = result
        counts = ", ".join(f"{k} {v.count} SQL" for k, v in result.sql.items())
        log(f"  in-process {label}: {counts}")
    from portal.extensions import db

    with app.app_context():
        db.engine.dispose()
    return {"pages": pages, "accounts": results, "one_day": yesterday_args}


def _yesterday_args(app: Flask, email: str) -> dict[str, str]:
    from portal import clock

    day = clock.today("UTC") - timedelta(days=1)
    return {"period": "custom", "start": day.isoformat(), "end": day.isoformat()}
