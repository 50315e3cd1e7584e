"""Latency of the subscription change preview (issue 10, benchmark): the HTMX partial beside the
bare reference page, in the same run, on SQLite and PostgreSQL. Not part of the test suite.

    .venv/bin/python -m bench.preview [--rounds 3] [--seconds 6] [--backends sqlite,postgresql]

The pieces are bench/run.py's (not edited): the seeded data set of `make bench` (bench.seed;
on PostgreSQL cloned into databases of this module's own, so that a `make bench` running at
the same time keeps its own), the same gunicorn command for the portal and for the reference
(bench.load.start_server: 2 sync workers), the real sign-in (bench.load.sign_in) and wrk
(bench.load.wrk: -t2 -c16, bench/report.lua counting every answer that is not a 200).

What is measured: `GET /subscriptions/<id>/change?plan=..&interval=..&quantity=..` with
`HX-Request: true`, as the change page's hx-get sends it (hx-params: plan, interval, quantity,
timing) when a person picks another plan: the live preview partial (a GET: no write lock on
SQLite, no CSRF token). It reads the catalog, prices the change
(proration) and renders the partial; it changes nothing (checked: the subscription's version
is the same after the runs). The runs are interleaved ref, preview, ref, preview, ..., ref and
each preview run is compared with the mean of the two reference runs beside it. The machine is
shared: every run carries the load average before and after it and the web tier's CPU time
per request (gunicorn master and workers, from /proc), which the neighbours do not change.

`bench_part(quick)` (INTERFACES.md) returns the Markdown section (quick: one round of 1-second
runs on both backends).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import load, seed  # noqa: E402

# NOTE: databases of this module's own (bench/run.py uses bench_seed and bench_run).
PG_SEED_DB = "run_speed_preview_seed"
PG_RUN_DB = "run_speed_preview_run"


def load_average() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def database(backend: str, admin_url: str, log: Any) -> str:
    if backend == "sqlite":
        url, _ = seed.sqlite_database(log)
        return url
    saved = seed.PG_SEED_DB, seed.PG_RUN_DB
    seed.PG_SEED_DB, seed.PG_RUN_DB = PG_SEED_DB, PG_RUN_DB
    try:
        url, _ = seed.postgres_database(admin_url, log)
    finally:
        seed.PG_SEED_DB, seed.PG_RUN_DB = saved
    return url


def drop(backend: str, admin_url: str) -> None:
    if backend != "postgresql":
        return
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {PG_RUN_DB} WITH (FORCE)"))
    finally:
        admin.dispose()


def subscription_of(url: str, email: str) -> tuple[str, int]:
    """The public id and version of the account's active subscription."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT s.public_id, s.version FROM subscriptions s"
                    " JOIN accounts a ON a.id = s.account_id"
                    " WHERE a.billing_email = :email AND s.status = 'active'"
                    " ORDER BY s.id LIMIT 1"
                ),
                {"email": email},
            ).one()
    finally:
        engine.dispose()
    return str(row[0]), int(row[1])


class _ChangeForm(HTMLParser):
    """The fields of the change page's form as a person's browser would send them, with the
    first plan that is not the current one chosen."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}
        self.other_plans: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ("input", "option"):
            return
        a = {k: v or "" for k, v in attrs}
        name, value, kind = a.get("name", ""), a.get("value", ""), a.get("type", "text")
        if not name or kind in ("submit", "button"):
            return
        if kind == "radio":
            if "checked" in a:
                self.fields[name] = value
            elif name == "plan":
                self.other_plans.append(value)
            return
        self.fields.setdefault(name, value)


def preview_body(server: load.Server, public_id: str, cookie: str) -> tuple[str, str, str]:
    """The form-encoded body of a preview of another plan, the plan it picks, and the session
    cookie that goes with its CSRF token (the page's answer may have renewed it: the token's
    secret lives in the session)."""
    page = requests.get(
        f"{server.base_url}/subscriptions/{public_id}/change",
        headers={"Cookie": cookie},
        timeout=30,
    )
    page.raise_for_status()
    form = _ChangeForm()
    form.feed(page.text)
    if "csrf_token" not in form.fields or not form.other_plans:
        raise RuntimeError("the change page has no CSRF token or no other plan to preview")
    # NOTE: only what hx-params sends (plan, interval, quantity, timing), as a query string.
    fields = {
        name: value
        for name, value in {**form.fields, "plan": form.other_plans[0]}.items()
        if name in ("plan", "interval", "quantity", "timing")
    }
    renewed = page.cookies.get("portal_session")
    cookie = f"portal_session={renewed}" if renewed else cookie
    return urllib.parse.urlencode(fields), form.other_plans[0], cookie


def lua_for_get() -> Path:
    """bench/report.lua preceded by the request wrk repeats: this GET, as HTMX sends it."""
    script = (
        'wrk.method = "GET"\nwrk.headers["HX-Request"] = "true"\n' + load.WRK_SCRIPT.read_text()
    )
    handle, name = tempfile.mkstemp(prefix="bench-preview-", suffix=".lua")
    with os.fdopen(handle, "w") as out:
        out.write(script)
    return Path(name)


def check_preview(server: load.Server, url: str, cookie: str) -> str:
    """Why the preview's answer makes the runs meaningless ("" when it is a real preview)."""
    answer = requests.get(
        url,
        headers={"Cookie": cookie, "HX-Request": "true"},
        allow_redirects=False,
        timeout=30,
    )
    if answer.status_code != 200:
        return f"answered {answer.status_code}"
    if "<html" in answer.text.lower():
        return "answered a whole page, not the partial"
    if "preview-error" in answer.text or "preview-same" in answer.text:
        return "the preview shows an error or no change"
    return ""


@dataclass
class Run:
    target: str  # "reference" or "preview"
    round: int
    result: load.WrkResult
    load_before: str
    load_after: str
    ratio: float | None = None  # preview p50 / mean of the neighbouring references' p50


def measure(
    backend: str, rounds: int, seconds: int, admin_url: str, log: Any = print
) -> dict[str, Any]:
    url = database(backend, admin_url, log)
    portal = load.start_server(f"preview-portal-{backend}", "wsgi:app", url, "/healthz")
    bare = load.start_server(f"preview-bare-{backend}", "bench.bare:app", url, "/hello")
    script: Path | None = None
    saved_script = load.WRK_SCRIPT
    runs: list[Run] = []
    try:
        cookie = load.sign_in(portal, seed.BIG_EMAIL)
        public_id, version_before = subscription_of(url, seed.BIG_EMAIL)
        body, plan, cookie = preview_body(portal, public_id, cookie)
        preview_url = f"{portal.base_url}/subscriptions/{public_id}/change?{body}"
        reference_url = bare.base_url + "/rows"
        problem = check_preview(portal, preview_url, cookie)
        if problem:
            raise RuntimeError(f"{backend}: the preview {problem}")
        script = lua_for_get()

        def one(target: str, round_index: int) -> Run:
            nonlocal cookie
            before = load_average()
            if target == "preview":
                # NOTE: a cookie inside the portal's renewal minute (as in bench/run.py).
                cookie = load.fresh_cookie(portal, preview_url, cookie, seconds + 4, seed.BIG_EMAIL)
                load.WRK_SCRIPT = script  # type: ignore[assignment]
                try:
                    load.wrk(preview_url, cookie, 1)  # warm-up
                    result = load.wrk(preview_url, cookie, seconds, portal)
                finally:
                    load.WRK_SCRIPT = saved_script
            else:
                load.wrk(reference_url, None, 1)
                result = load.wrk(reference_url, None, seconds, bare)
            run = Run(target, round_index, result, before, load_average())
            log(
                f"  {backend} round {round_index + 1} {target}: p50 {result.p50_ms:.1f} ms, "
                f"p99 {result.p99_ms:.1f} ms, {result.rps:.0f} req/s, "
                f"{result.cpu_ms_per_request:.2f} ms CPU/request, not 200: {result.errors}, "
                f"load {before} -> {run.load_after}"
            )
            return run

        for round_index in range(rounds):
            runs.append(one("reference", round_index))
            runs.append(one("preview", round_index))
        runs.append(one("reference", rounds - 1))
        for index, run in enumerate(runs):
            if run.target == "preview":
                refs = [runs[index - 1].result.p50_ms, runs[index + 1].result.p50_ms]
                run.ratio = run.result.p50_ms / statistics.mean(refs)
        _, version_after = subscription_of(url, seed.BIG_EMAIL)
        if version_after != version_before:
            raise RuntimeError(f"{backend}: the preview changed the subscription")
    finally:
        load.WRK_SCRIPT = saved_script
        load.stop_server(portal)
        load.stop_server(bare)
        if script is not None:
            script.unlink(missing_ok=True)
        drop(backend, admin_url)
    return {"backend": backend, "plan": plan, "runs": runs}


HEADER = (
    "| Backend | Page | Runs | p50 ms (median of runs) | p99 ms (max of runs) | Requests/s "
    "| Web CPU ms/request | p50 / reference p50 beside it | Not 200 | Load before -> after |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
)


def rows_of(measured: dict[str, Any]) -> list[str]:
    out = []
    runs: list[Run] = measured["runs"]
    for target, label in (
        ("reference", "Reference: 50 invoices (ORM + Jinja), `bench.bare` /rows"),
        ("preview", f"Preview partial (GET change, HX-Request, plan {measured['plan']})"),
    ):
        mine = [r for r in runs if r.target == target]
        ratios = [r.ratio for r in mine if r.ratio is not None]
        out.append(
            f"| {measured['backend']} | {label} | {len(mine)} | "
            f"{statistics.median(r.result.p50_ms for r in mine):.1f} | "
            f"{max(r.result.p99_ms for r in mine):.1f} | "
            f"{statistics.median(r.result.rps for r in mine):.0f} | "
            f"{statistics.median(r.result.cpu_ms_per_request for r in mine):.2f} | "
            + (f"{statistics.median(ratios):.2f}x" if ratios else "-")
            + f" | {sum(r.result.errors for r in mine)} | "
            f"{mine[0].load_before} -> {mine[-1].load_after} |"
        )
    return out


def section(results: list[dict[str, Any]], rounds: int, seconds: int, before: str) -> str:
    lines = [
        "## Subscription preview latency",
        "",
        f"`bench/preview.py`: {rounds} round(s) of {seconds}-second wrk runs (-t2 -c16), "
        "interleaved ref, preview, ..., ref; 2 sync gunicorn workers each.",
        f"Load average before: {before}; after: {load_average()} (1/5/15 min, 2 cores shared).",
        "",
        HEADER,
    ]
    for measured in results:
        lines += rows_of(measured)
    return "\n".join(lines) + "\n"


def bench_part(quick: bool) -> str:
    """The Markdown section for `make bench` (INTERFACES.md)."""
    rounds, seconds = (1, 1) if quick else (3, 6)
    before = load_average()
    results = [
        measure(backend, rounds, seconds, seed.PG_ADMIN_URL, log=lambda _line: None)
        for backend in ("sqlite", "postgresql")
    ]
    return section(results, rounds, seconds, before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--admin-url", default=seed.PG_ADMIN_URL)
    args = parser.parse_args()
    before = load_average()
    started = time.perf_counter()
    results = [
        measure(backend, args.rounds, args.seconds, args.admin_url)
        for backend in args.backends.split(",")
    ]
    print()
    print(section(results, args.rounds, args.seconds, before))
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
