"""BENCHMARKS.md from one run's results."""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bench import seed
from bench.inprocess import PAGES

if TYPE_CHECKING:
    from bench.run import BackendRun, PageLoad

MIN_RATIO = 0.5
MAX_P99_MS = 50.0
MAX_SQL = 8
MAX_GROWTH = 1.5
MAX_PDF_MS = 150.0

PORTAL_KEYS = [key for key, *_ in PAGES]
LABELS = {key: label for key, label, *_ in PAGES}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "**FAIL**"


def reference_rps(run: BackendRun) -> float:
    rows = [p.result.rps for p in run.loads if p.key.startswith("bare_rows") and p.result]
    return sum(rows) / len(rows) if rows else 0.0


def reference_cpu(run: BackendRun) -> float:
    rows = [
        p.result.cpu_ms_per_request
        for p in run.loads
        if p.key.startswith("bare_rows") and p.result and p.result.requests
    ]
    return sum(rows) / len(rows) if rows else 0.0


def page_passes(page: PageLoad, reference: float) -> bool:
    r = page.result
    return (
        r is not None
        and reference > 0
        and r.rps / reference >= MIN_RATIO
        and r.p99_ms < MAX_P99_MS
        and r.errors == 0
    )


_PARAM = re.compile(r"%\(\w+\)s(?:::[A-Z]+(?:\(\d+\))?)?")


def _top_level(text: str, word: str, start: int = 0) -> int:
    """Index of the first `word` outside parentheses at or after `start`, or -1."""
    depth = 0
    pattern = re.compile(rf"\b{word}\b", re.I)
    for index in range(start, len(text)):
        char = text[index]
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif depth == 0 and pattern.match(text, index):
            return index
    return -1


def _short_sql(statement: str) -> str:
    """`SELECT … FROM prices WHERE prices.id = ?`: enough to recognise a statement."""
    text = _PARAM.sub("?", " ".join(statement.split()))
    verb = text.split(" ", 1)[0].upper()
    seen: list[str] = []
    for table in re.findall(r"\b(?:FROM|JOIN|UPDATE|INTO)\s+([a-z_]+)", text, re.I):
        if table not in seen:
            seen.append(table)
    condition = ""
    where = _top_level(text, "WHERE", max(_top_level(text, "FROM"), 0))
    if where >= 0:
        ends = [_top_level(text, w, where) for w in ("GROUP BY", "ORDER BY", "LIMIT")]
        end = min([e for e in ends if e >= 0], default=len(text))
        condition = text[where + len("WHERE") : end].strip()
        condition = condition if len(condition) <= 90 else condition[:87] + "..."
    suffix = f" WHERE {condition}" if condition else ""
    note = ""
    if re.fullmatch(r"\w+\.id = \?", condition) and verb == "SELECT":
        note = " (one row by primary key: a relationship lazy load)"
    return f"{verb} … FROM {', '.join(seen)}{suffix}{note}"


def render(
    runs: list[BackendRun],
    described: dict[str, str],
    *,
    started_at: datetime,
    elapsed_s: float,
    load_before: str,
    load_after: str,
    seconds: int,
    warmup: int,
    skipped: list[str],
) -> str:
    out: list[str] = []
    w = out.append
    first = runs[0]
    big = first.counts
    w("# Benchmarks")
    w("")
    w(
        f"Numbers from **one run of `make bench`** (`python -m bench`), started"
        f" {started_at:%Y-%m-%d %H:%M} UTC, {elapsed_s / 60:.1f} minutes in all. The harness is"
        " `bench/` (see the module docstrings); the tests never run it."
    )
    w("")
    w(
        "**Noise warning.** This machine has 2 cores, and other people's test suites were running"
        f" on it during the run (load average {load_before} at the start, {load_after} at the"
        " end). Absolute numbers are therefore low and jumpy; compare only the ratios measured in"
        " the same run (each page against the bare 50-row page served by the same gunicorn"
        " configuration minutes apart, the big account against the small one in the same"
        " process). In-process times also give CPU time, which the neighbours disturb less."
    )
    w("")
    w("## Machine")
    w("")
    w("| | |")
    w("|---|---|")
    for key, value in described.items():
        w(f"| {key} | {value} |")
    w(f"| Date | {started_at:%Y-%m-%d} |")
    w("")
    w("## Dataset")
    w("")
    w(
        "Seeded by `bench/seed.py`: the demo data through the real services, then bulk Core"
        " inserts (COPY on PostgreSQL) of consistent rows: finalized invoices with gapless numbers"
        " and their series counters, lines with per-line tax adding up to the totals, payments"
        " with allocations, voids, and one ledger entry per invoice, payment and void."
    )
    w("")
    w(
        f"- {big.get('accounts', 0):,} accounts, {big.get('invoices', 0):,} invoices,"
        f" {big.get('invoice_lines', 0):,} invoice lines, {big.get('payments', 0):,} payments,"
        f" {big.get('ledger_entries', 0):,} ledger entries (same on both backends)."
    )
    w(
        f"- The big account (`{seed.BIG_EMAIL}`, prefix {seed.BIG_PREFIX}) has"
        f" {big.get('big_invoices', 0):,} invoices, one a day going back 10,000 days (a"
        " daily-billed customer), the newest 40 open; the small account"
        f" (`{seed.SMALL_EMAIL}`) has {big.get('small_invoices', 0)} monthly invoices. 1,998"
        " more accounts (USD, EUR with 19% VAT, JPY) have about 95 monthly invoices each."
    )
    w(
        f"- Invoice {seed.BIG_PREFIX}-{seed.LONG_INVOICE_SEQUENCE:04d} has"
        f" {seed.LONG_INVOICE_LINES} lines (the multi-page PDF)."
    )
    for run in runs:
        w(
            f"- {run.name}: prepared in {run.seconds_to_prepare:.0f} s"
            f" ({'seeded in this run' if run.seeded_now else 'copied from the cached seed'});"
            f" consistency check (ledger balance = open invoices, per account):"
            f" {'; '.join(run.consistency)}."
        )
    for reason in skipped:
        w(f"- **Not measured:** {reason}")
    missing = sorted({m for run in runs for m in run.missing})
    if missing:
        w(f"- **Pages missing from the tree during this run:** {', '.join(missing)}.")
    w("")
    _throughput(w, runs, seconds, warmup)
    _sql(w, runs)
    _pdf(w, first)
    _growth(w, runs)
    _targets(w, runs)
    return "\n".join(out) + "\n"


def _throughput(w: Any, runs: list[BackendRun], seconds: int, warmup: int) -> None:
    w("## Throughput and latency (gunicorn, wrk at concurrency 16)")
    w("")
    w(
        f"`gunicorn -w 2 -b 127.0.0.1:<port> wsgi:app` (sync workers) for the portal and the "
        f"same command with `bench.bare:app` for the reference pages, both on the backend's "
        f"database. `wrk -t2 -c16 -d{seconds}s --latency` with the signed-in session cookie of "
        f"the big account (a real magic-link sign-in over HTTP, CSRF token from the confirm "
        f"page), after a {warmup}-second warm-up. Errors are responses other than 200 (counted "
        f"by `bench/report.lua`, so a redirect to sign-in would count) plus socket errors. The "
        f"bare 50-row page loads 50 invoices as ORM objects and renders them with Jinja; it ran "
        f"before and after the portal pages and the ratio uses the mean of the two runs. *Web "
        f"CPU ms/req* is the CPU time the gunicorn master and workers used during the run "
        f"divided by the requests served (read from /proc; the database server's own CPU is not "
        f"in it): it is what a page costs whatever the neighbours do, and *× bare 50-row by CPU*"
        f" (the reference's CPU per request over the page's) is the throughput ratio this "
        f"machine would show without them. The target column judges the measured req/s and p99, "
        f"as the issue asks."
    )
    w("")
    for run in runs:
        ref = reference_rps(run)
        w(f"### {run.name}")
        w("")
        ref_cpu = reference_cpu(run)
        w(
            "| Page | Path | req/s | p50 ms | p95 ms | p99 ms | errors | × bare 50-row"
            " | web CPU ms/req | × bare 50-row by CPU | target |"
        )
        w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for page in run.loads:
            path = page.path
            if page.result is None:
                w(
                    f"| {page.label} | `{path}` | – | – | – | – | {page.failure} | – | – | –"
                    " | **FAIL** |"
                )
                continue
            r = page.result
            ratio = r.rps / ref if ref else 0.0
            is_portal = page.server == "portal" and page.key != "static"
            target = verdict(page_passes(page, ref)) if is_portal else "reference"
            cpu = r.cpu_ms_per_request
            cpu_ratio = ref_cpu / cpu if cpu else 0.0
            w(
                f"| {page.label} | `{path}` | {r.rps:,.0f} | {r.p50_ms:.1f} | {r.p95_ms:.1f}"
                f" | {r.p99_ms:.1f} | {r.errors} | {ratio:.2f} | {cpu:.2f} | {cpu_ratio:.2f}"
                f" | {target} |"
            )
        w("")


def _sql(w: Any, runs: list[BackendRun]) -> None:
    w("## SQL statements per page")
    w("")
    w(
        "Counted in-process (Flask test client, signed in through the token flow) with a"
        " SQLAlchemy `before_cursor_execute` listener, on the second request of each page (the"
        " first one may render and store the PDF). BEGIN/COMMIT are not counted. Target: the same"
        f" for the 10-invoice and the 10,000-invoice account, and at most {MAX_SQL}."
    )
    w("")
    header = "| Page |"
    rule = "|---|"
    for run in runs:
        header += f" {run.name}: 10 invoices | {run.name}: 10,000 invoices |"
        rule += "---:|---:|"
    w(header + " target |")
    w(rule + "---|")
    over: dict[str, list[str]] = {}
    for key in PORTAL_KEYS:
        cells = []
        ok = True
        present = False
        for run in runs:
            accounts = run.inprocess["accounts"]
            small, big = accounts["small"].sql.get(key), accounts["big"].sql.get(key)
            if small is None or big is None:
                cells += ["missing", "missing"]
                ok = False
                continue
            present = True
            cells += [str(small.count), str(big.count)]
            if small.count != big.count or big.count > MAX_SQL or small.count > MAX_SQL:
                ok = False
                over.setdefault(key, [_short_sql(s) for s in big.sent()])
        w(f"| {LABELS[key]} | {' | '.join(cells)} | {verdict(ok and present)} |")
    w("")
    w(
        "Where the time goes: the slowest statement of each page for the 10,000-invoice account"
        " and for the 10-invoice account (one request each, so indicative only):"
    )
    w("")
    w(
        "| Backend | Page | slowest statement (10,000 invoices) | ms"
        " | same statement, 10 invoices ms |"
    )
    w("|---|---|---|---:|---:|")
    for run in runs:
        accounts = run.inprocess["accounts"]
        for key in PORTAL_KEYS:
            big, small = accounts["big"].sql.get(key), accounts["small"].sql.get(key)
            if big is None or small is None or not big.slowest(1):
                continue
            statement, ms = big.slowest(1)[0]
            twin = next((t for s, t in small.timed if _short_sql(s) == _short_sql(statement)), 0)
            w(f"| {run.name} | {LABELS[key]} | `{_short_sql(statement)}` | {ms:.1f} | {twin:.1f} |")
    w("")
    _profiles(w, runs)
    for key, shapes in over.items():
        w(f"**{LABELS[key]}** sends these statements (10,000-invoice account):")
        w("")
        for n, shape in enumerate(shapes, start=1):
            w(f"{n}. `{shape}`")
        w("")
        repeats = {
            run.name: run.inprocess["accounts"]["big"].sql[key].repeats()
            for run in runs
            if key in run.inprocess["accounts"]["big"].sql
        }
        if any(repeats.values()):
            for name, items in repeats.items():
                for shape, n in items:
                    w(f"- {name}: repeated {n}×: `{_short_sql(shape)}`")
        else:
            w("No statement repeats: the count is fixed, just above the limit.")
        w("")


def _profiles(w: Any, runs: list[BackendRun]) -> None:
    w(
        "Where the time goes in Python (cProfile over 15 in-process requests of the"
        " 10,000-invoice account; cumulative milliseconds per request of the portal's own"
        " functions and templates, profiler overhead included, so compare within a page):"
    )
    w("")
    w("| Backend | Page | whole view ms | biggest parts (ms per request) |")
    w("|---|---|---:|---|")
    for run in runs:
        big = run.inprocess["accounts"]["big"]
        for key in PORTAL_KEYS:
            parts = big.profiles.get(key)
            if not parts:
                continue
            whole = parts[0][1]
            detail = "; ".join(f"`{label}` {ms:.1f}" for label, ms in parts[1:])
            w(f"| {run.name} | {LABELS[key]} | {whole:.1f} | {detail} |")
    w("")


def _pdf(w: Any, run: BackendRun) -> None:
    pdf = run.pdf
    if not pdf:
        return
    w("## Invoice PDF first render")
    w("")
    w(
        "Measured in a fresh process (`python -m bench.pdftimes`) calling"
        " `portal.billing.pdf.invoice_pdf` directly (A4), on the"
        f" {run.name} database. Wall time, with the process's CPU time beside it."
    )
    w("")
    w("| Render | pages | wall ms | CPU ms |")
    w("|---|---:|---:|---:|")
    w(
        f"| First PDF of a cold process (imports WeasyPrint, loads fonts), 1-page invoice"
        f" | {pdf['cold_pages']} | {pdf['cold_ms']:.0f} | {pdf['cold_cpu_ms']:.0f} |"
    )
    w(
        "| First render of a 1-page invoice, warm process (median of 7 invoices never rendered"
        f" before) | {pdf['one_page_pages']} | {pdf['one_page_ms']:.0f}"
        f" | {pdf['one_page_cpu_ms']:.0f} |"
    )
    w(
        f"| First render of {pdf['long_number']} ({pdf['long_lines']} lines), warm process"
        f" | {pdf['long_pages']} | {pdf['long_ms']:.0f} | {pdf['long_cpu_ms']:.0f} |"
    )
    w("")


def _growth(w: Any, runs: list[BackendRun]) -> None:
    w("## The 10,000-invoice account against the 10-invoice account")
    w("")
    w(
        "Median of 25 in-process requests each (after 2 warm-ups), wall and CPU milliseconds."
        " The statement's default period is this month; the big account bills daily, so its"
        " statement shows more rows in the same period (row counts in the table). The one-day"
        " statement (yesterday, custom period) shows one row or none for either account, so it"
        f" isolates the cost of the history itself. Target: at most {MAX_GROWTH}× for the"
        " invoice list and the statement."
    )
    w("")
    w(
        "| Backend | Page | 10 invoices ms (CPU) | 10,000 invoices ms (CPU) | ratio wall"
        " | ratio CPU | rows shown (10 / 10,000) | target |"
    )
    w("|---|---|---:|---:|---:|---:|---|---|")
    for run in runs:
        accounts = run.inprocess["accounts"]
        small, big = accounts["small"], accounts["big"]
        for key, label, rows_key in (
            ("invoices", "Invoice list", None),
            ("statement", "Statement, this month", "this_month"),
            ("statement_one_day", "Statement, one day", "one_day"),
        ):
            if key not in small.times_ms or key not in big.times_ms:
                continue
            s, b = small.times_ms[key], big.times_ms[key]
            ratio = b.wall_ms / s.wall_ms if s.wall_ms else 0.0
            ratio_cpu = b.cpu_ms / s.cpu_ms if s.cpu_ms else 0.0
            rows = (
                f"{small.statement_rows.get(rows_key, 0)} / {big.statement_rows.get(rows_key, 0)}"
                if rows_key
                else "20 / 20"
            )
            w(
                f"| {run.name} | {label} | {s.wall_ms:.1f} ({s.cpu_ms:.1f}) | {b.wall_ms:.1f}"
                f" ({b.cpu_ms:.1f}) | {ratio:.2f} | {ratio_cpu:.2f} | {rows}"
                f" | {verdict(ratio <= MAX_GROWTH)} |"
            )
    w("")


def _targets(w: Any, runs: list[BackendRun]) -> None:
    w("## Targets (from the issue)")
    w("")
    w("| Target | Backend | Result | |")
    w("|---|---|---|---|")
    for run in runs:
        ref = reference_rps(run)
        portal_pages = [p for p in run.loads if p.server == "portal" and p.key != "static"]
        failing = [p for p in portal_pages if not page_passes(p, ref)]
        detail = "; ".join(
            f"{p.label} {p.result.rps / ref:.2f}×, p99 {p.result.p99_ms:.0f} ms,"
            f" {p.result.errors} errors"
            if p.result and ref
            else f"{p.label}: {p.failure or 'no result'}"
            for p in (failing or portal_pages)
        )
        w(
            f"| Each signed-in page ≥ {MIN_RATIO:.0%} of the bare 50-row page's throughput, p99 <"
            f" {MAX_P99_MS:.0f} ms at concurrency 16, zero errors | {run.name}"
            f" | {'failing: ' if failing else 'all pages: '}{detail}"
            f" | {verdict(not failing and bool(portal_pages))} |"
        )
        errors = sum(p.result.errors for p in portal_pages if p.result)
        w(f"| Zero errors | {run.name} | {errors} errors | {verdict(errors == 0)} |")
        accounts = run.inprocess["accounts"]
        bad_sql = []
        for key in PORTAL_KEYS:
            small, big = accounts["small"].sql.get(key), accounts["big"].sql.get(key)
            if small is None or big is None:
                continue
            if small.count != big.count or max(small.count, big.count) > MAX_SQL:
                bad_sql.append(f"{LABELS[key]} {small.count}/{big.count}")
        w(
            f"| SQL statements per page the same for 10 and 10,000 invoices, at most {MAX_SQL}"
            f" | {run.name} | {'; '.join(bad_sql) or 'all pages within'}"
            f" | {verdict(not bad_sql)} |"
        )
        for key, label in (("invoices", "Invoice list"), ("statement", "Statement")):
            s, b = accounts["small"].times_ms.get(key), accounts["big"].times_ms.get(key)
            if s is None or b is None:
                continue
            ratio = b.wall_ms / s.wall_ms
            w(
                f"| {label} of the 10,000-invoice account within {MAX_GROWTH}× of the 10-invoice"
                f" account | {run.name} | {ratio:.2f}× wall ({b.cpu_ms / s.cpu_ms:.2f}× CPU)"
                f" | {verdict(ratio <= MAX_GROWTH)} |"
            )
        static = next((p for p in run.loads if p.key == "static" and p.result), None)
        stored = next((p for p in run.loads if p.key == "pdf" and p.result), None)
        if static and stored:
            ratio = stored.result.rps / static.result.rps
            w(
                "| A stored PDF served at static-file speed (read here as: ≥ 50% of the"
                " throughput of a static file from the same gunicorn) |"
                f" {run.name} | {stored.result.rps:,.0f} vs {static.result.rps:,.0f} req/s"
                f" ({ratio:.2f}×), p99 {stored.result.p99_ms:.0f} vs"
                f" {static.result.p99_ms:.0f} ms | {verdict(ratio >= MIN_RATIO)} |"
            )
    pdf = runs[0].pdf
    if pdf:
        w(
            f"| First render of a 1-page invoice PDF under {MAX_PDF_MS:.0f} ms (warm process) |"
            f" {runs[0].name} | {pdf['one_page_ms']:.0f} ms wall, {pdf['one_page_cpu_ms']:.0f} ms"
            f" CPU (cold process: {pdf['cold_ms']:.0f} ms)"
            f" | {verdict(pdf['one_page_ms'] < MAX_PDF_MS)} |"
        )
    w("")
