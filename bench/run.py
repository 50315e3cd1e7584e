"""`python -m bench`: one run of everything, on SQLite and PostgreSQL, written to BENCHMARKS.md.

Environment: BENCH_SECONDS (wrk duration per page, default 10), BENCH_WARMUP (default 2),
BENCH_PG_ADMIN_URL (a PostgreSQL database to connect to for CREATE DATABASE; default the local
`test` database), BENCH_BACKENDS (default "sqlite,postgresql").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from bench import inprocess, load, machine, report, seed

ROOT = seed.ROOT


@dataclass
class PageLoad:
    key: str
    label: str
    path: str
    server: str  # "portal" or "bare"
    check: tuple[int, str, int] | None = None
    result: load.WrkResult | None = None
    failure: str = ""


@dataclass
class BackendRun:
    name: str
    url: str
    seeded_now: bool
    seconds_to_prepare: float
    counts: dict[str, int] = field(default_factory=dict)
    consistency: list[str] = field(default_factory=list)
    inprocess: dict[str, Any] = field(default_factory=dict)
    pdf: dict[str, Any] = field(default_factory=dict)
    loads: list[PageLoad] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def log(message: str) -> None:
    print(message, flush=True)


def prepare(backend: str, admin_url: str) -> tuple[str, bool]:
    if backend == "sqlite":
        url, counts = seed.sqlite_database(log)
    else:
        url, counts = seed.postgres_database(admin_url, log)
    return url, counts is not None


def consistency(url: str) -> list[str]:
    """Problems with the seeded data (none expected): per account and currency, the ledger
    balance must equal what its open invoices still ask for (the bulk has no unapplied cash)."""
    engine = sa.create_engine(url)
    problems = []
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT a.invoice_prefix,"
                    " (SELECT coalesce(sum(amount_minor), 0) FROM ledger_entries l"
                    "   WHERE l.account_id = a.id),"
                    " (SELECT coalesce(sum(total_minor - amount_paid_minor"
                    "   - amount_credited_minor), 0) FROM invoices i"
                    "   WHERE i.account_id = a.id AND i.status IN ('open', 'uncollectible'))"
                    " FROM accounts a WHERE a.invoice_prefix IN (:big, :small)"
                    " OR a.invoice_prefix LIKE 'B%'"
                ),
                {"big": seed.BIG_PREFIX, "small": seed.SMALL_PREFIX},
            ).all()
            for prefix, balance, due in rows:
                if int(balance) != int(due):
                    problems.append(f"{prefix}: ledger {balance} != open invoices {due}")
            problems.insert(0, f"checked {len(rows)} accounts")
    finally:
        engine.dispose()
    return problems


def pdf_times(url: str) -> dict[str, Any]:
    output = subprocess.run(
        [sys.executable, "-m", "bench.pdftimes", url],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def load_pages(run: BackendRun, seconds: int, warmup: int) -> None:
    pages = run.inprocess["pages"]
    number = run.inprocess["accounts"]["big"].number
    paths = inprocess.page_paths(pages, number)
    labels = {key: label for key, label, _, _ in inprocess.PAGES}
    portal = load.start_server(f"portal-{run.name}", "wsgi:app", run.url, "/healthz")
    bare = load.start_server(f"bare-{run.name}", "bench.bare:app", run.url, "/hello")
    try:
        cookie = load.sign_in(portal, seed.BIG_EMAIL)
        plan = [
            PageLoad("bare_hello", "Bare Flask page", "/hello", "bare"),
            PageLoad("bare_rows", "Bare 50-row page", "/rows", "bare"),
            *(PageLoad(key, labels[key], path, "portal") for key, path in paths.items()),
            PageLoad("static", "Static file (portal.css)", "/static/css/portal.css", "portal"),
            PageLoad("bare_rows_again", "Bare 50-row page (again)", "/rows", "bare"),
        ]
        for page in plan:
            server = portal if page.server == "portal" else bare
            needs_cookie = page.server == "portal" and page.key != "static"
            url = server.base_url + page.path
            page_cookie = cookie if needs_cookie else None
            page.check = load.check_page(url, page_cookie)
            if page.check[0] != 200:
                page.failure = f"answered {page.check[0]} before the load run"
                log(f"  {run.name} {page.key}: {page.failure}")
                run.loads.append(page)
                continue
            if warmup:
                load.wrk(url, page_cookie, warmup)
            page.result = load.wrk(url, page_cookie, seconds, server)
            r = page.result
            log(
                f"  {run.name} {page.key}: {r.rps:.0f} req/s, p50 {r.p50_ms:.1f} ms,"
                f" p99 {r.p99_ms:.1f} ms, errors {r.errors},"
                f" {r.cpu_ms_per_request:.2f} CPU ms/request"
            )
            run.loads.append(page)
    finally:
        load.stop_server(portal)
        load.stop_server(bare)


def main() -> int:
    started_at = datetime.now(UTC)
    started = time.monotonic()
    seconds = int(os.environ.get("BENCH_SECONDS", "10"))
    warmup = int(os.environ.get("BENCH_WARMUP", "2"))
    admin_url = os.environ.get("BENCH_PG_ADMIN_URL", seed.PG_ADMIN_URL)
    backends = [b.strip() for b in os.environ.get("BENCH_BACKENDS", "sqlite,postgresql").split(",")]
    load_before = machine.load_average()
    runs: list[BackendRun] = []
    skipped: list[str] = []
    postgres_url = None
    for backend in backends:
        log(f"== {backend}")
        t0 = time.monotonic()
        try:
            url, seeded_now = prepare(backend, admin_url)
        except sa.exc.OperationalError as error:
            reason = str(error.orig or error).strip().splitlines()[0]
            log(f"  {backend} is not available, skipped: {reason}")
            skipped.append(f"{backend}: {reason}")
            continue
        run = BackendRun(backend, url, seeded_now, time.monotonic() - t0)
        if backend == "postgresql":
            postgres_url = url
        run.counts = seed.dataset_counts(url)
        run.consistency = consistency(url)
        log(f"  dataset {run.counts}; consistency: {'; '.join(run.consistency)}")
        run.inprocess = inprocess.measure(url, log=log)
        expected = inprocess.EXPECTED_ENDPOINTS
        run.missing = [f"{k} ({expected[k]})" for k in expected if k not in run.inprocess["pages"]]
        if not runs:
            log("  timing PDF renders in a fresh process")
            run.pdf = pdf_times(url)
            log(f"  PDF: {run.pdf}")
        load_pages(run, seconds, warmup)
        runs.append(run)
    described = machine.describe(postgres_url)
    load_after = machine.load_average()
    if postgres_url:
        seed.drop_postgres_run(admin_url)
    elapsed = time.monotonic() - started
    if not runs:
        log("no backend could be measured")
        return 1
    text = report.render(
        runs,
        described,
        started_at=started_at,
        elapsed_s=elapsed,
        load_before=load_before,
        load_after=load_after,
        seconds=seconds,
        warmup=warmup,
        skipped=skipped,
    )
    (ROOT / "BENCHMARKS.md").write_text(text, encoding="utf-8")
    log(f"wrote BENCHMARKS.md in {elapsed:.0f} s")
    return 0
