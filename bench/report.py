"""The generated part of BENCHMARKS.md from one `make bench` run (`bench.run`)."""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bench import profile, seed
from bench.inprocess import PAGES

if TYPE_CHECKING:
    from bench.run import BackendRun, Measured, Settings

MIN_RATIO = 0.5
MAX_P99_MS = 50.0
MAX_SQL = 8
MAX_GROWTH = 1.5
MAX_PDF_MS = 150.0

PORTAL_KEYS = [key for key, *_ in PAGES]
LABELS = {key: label for key, label, *_ in PAGES}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "**FAIL**"


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """The median, then the lowest and highest in brackets (a dash without values)."""
    if not values:
        return "–"
    middle = fmt.format(statistics.median(values))
    if len(values) == 1:
        return middle
    return f"{middle} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def load_text(load: tuple[float, float, float]) -> str:
    return " / ".join(f"{v:.2f}" for v in load)


@dataclass
class PageSummary:
    """One URL over every round of a backend's load session."""

    key: str
    label: str
    path: str
    runs: list[Measured]

    @property
    def results(self) -> list[Any]:
        return [m.result for m in self.runs if m.result and not m.failure]

    @property
    def ratios(self) -> list[float]:
        return [m.ratio for m in self.runs if m.ratio is not None]

    @property
    def p99s(self) -> list[float]:
        return [r.p99_ms for r in self.results]

    @property
    def rps(self) -> list[float]:
        return [r.rps for r in self.results]

    @property
    def cpu(self) -> list[float]:
        return [r.cpu_ms_per_request for r in self.results if r.requests]

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.results)

    @property
    def failures(self) -> list[str]:
        return [m.failure for m in self.runs if m.failure]

    def noisy(self, max_foreign: float) -> int:
        return sum(1 for m in self.runs if m.noisy_share > max_foreign)

    def passes(self) -> bool:
        """The issue's target, judged on the medians over the rounds."""
        return (
            bool(self.ratios)
            and not self.failures
            and statistics.median(self.ratios) >= MIN_RATIO
            and statistics.median(self.p99s) < MAX_P99_MS
            and self.errors == 0
        )

    def rounds_passing(self) -> int:
        return sum(
            1
            for m in self.runs
            if m.result
            and m.ratio is not None
            and m.ratio >= MIN_RATIO
            and m.result.p99_ms < MAX_P99_MS
            and m.result.errors == 0
        )


def summaries(run: BackendRun) -> list[PageSummary]:
    session = run.session
    if session is None:
        return []
    from bench.run import REFERENCE

    out = []
    for target in [REFERENCE, *session.targets]:
        runs = [m for m in session.runs if m.key == target.key]
        out.append(PageSummary(target.key, target.label, target.path, runs))
    return out


def machine_was_quiet(runs: list[BackendRun], settings: Settings) -> bool:
    for run in runs:
        session = run.session
        if session is None or not session.quiet_at_start:
            return False
        if any(m.noisy_share > settings.max_foreign for m in session.runs):
            return False
    return True


def render(
    runs: list[BackendRun],
    described: dict[str, str],
    settings: Settings,
    *,
    started_at: datetime,
    elapsed_s: float,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
    skipped: list[str],
) -> str:
    out: list[str] = []
    w = out.append
    first = runs[0]
    big = first.counts
    quiet = machine_was_quiet(runs, settings)
    noisy_runs = sum(
        1
        for run in runs
        if run.session
        for m in run.session.runs
        if m.noisy_share > settings.max_foreign
    )
    all_runs = sum(len(run.session.runs) for run in runs if run.session)
    w(
        f"## Results of `make bench`, {started_at:%Y-%m-%d %H:%M} UTC"
        f"{' (QUICK MODE: 1-second runs, not a measurement)' if settings.quick else ''}"
    )
    w("")
    if quiet:
        w(
            f"**Machine: quiet.** Load average (1 / 5 / 15 min) {load_text(load_before)} at the"
            f" start, {load_text(load_after)} at the end; every load session began at a 1-minute"
            f" load average ≤ {settings.max_load} and in no run did other processes use more than"
            f" {settings.max_foreign:.0%} of the machine's CPU."
        )
    else:
        w(
            f"**Machine: NOISY: these numbers are not a measurement of the portal.** Load"
            f" average (1 / 5 / 15 min) {load_text(load_before)} at the start,"
            f" {load_text(load_after)} at the end; {noisy_runs} of {all_runs} runs had other"
            f" processes using more than {settings.max_foreign:.0%} of the machine's CPU"
            " (per-run figures below). Ratios measured minutes apart on a busy machine move with"
            " the neighbours; re-run on a quiet machine (see *Method*)."
        )
    w("")
    w(
        f"{len(runs)} backend(s), {settings.rounds} round(s) of `wrk -t2 -c16"
        f" -d{settings.seconds}s --latency` per URL after a {settings.warmup}-second wrk warm-up,"
        f" {elapsed_s / 60:.1f} minutes in all."
    )
    w("")
    _throughput(w, runs, settings)
    _runs_log(w, runs, settings)
    w("### Machine")
    w("")
    w("| | |")
    w("|---|---|")
    for key, value in described.items():
        w(f"| {key} | {value} |")
    w(f"| Date | {started_at:%Y-%m-%d} |")
    w("")
    w("### Dataset")
    w("")
    w(
        f"- {big.get('accounts', 0):,} accounts, {big.get('invoices', 0):,} invoices,"
        f" {big.get('invoice_lines', 0):,} invoice lines, {big.get('payments', 0):,} payments,"
        f" {big.get('ledger_entries', 0):,} ledger entries (same on both backends), seeded by"
        " `bench/seed.py`."
    )
    w(
        f"- The big account (`{seed.BIG_EMAIL}`, prefix {seed.BIG_PREFIX}) has"
        f" {big.get('big_invoices', 0):,} invoices (daily, the newest 40 open); the small"
        f" account (`{seed.SMALL_EMAIL}`) has {big.get('small_invoices', 0)}. Invoice"
        f" {seed.BIG_PREFIX}-{seed.LONG_INVOICE_SEQUENCE:04d} has {seed.LONG_INVOICE_LINES}"
        " lines (the multi-page PDF)."
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
    _sql(w, runs)
    _profiles(w, runs)
    _pdf(w, first)
    _growth(w, runs)
    _targets(w, runs, settings)
    return "\n".join(out) + "\n"


def _throughput(w: Any, runs: list[BackendRun], settings: Settings) -> None:
    w("### Throughput and p99 against the reference (gunicorn, 2 sync workers, 16 connections)")
    w("")
    w(
        "Each cell is the median over the rounds, with the lowest and highest in brackets."
        " *× reference* is a run's req/s over the mean of the two reference runs just before and"
        " after it. *Server CPU ms/req* is what the gunicorn workers used per request (database"
        " server not included), which neighbours disturb less than req/s; *× reference by CPU*"
        " is the reference's CPU per request over the page's. Target: × reference ≥"
        f" {MIN_RATIO} and p99 < {MAX_P99_MS:.0f} ms (medians), no errors; *rounds* counts the"
        " rounds in which that run alone met it."
    )
    w("")
    for run in runs:
        pages = summaries(run)
        if not pages:
            continue
        session = run.session
        w(
            f"#### {run.name} (load average {load_text(session.load_at_start)} at the start"
            f" of its load session, {load_text(session.load_at_end)} at its end)"
        )
        w("")
        w(
            "| Page | Path | × reference | p99 ms | req/s | p50 ms | server CPU ms/req"
            " | × reference by CPU | errors | noisy runs | rounds | target |"
        )
        w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        reference = pages[0]
        ref_cpu = statistics.median(reference.cpu) if reference.cpu else 0.0
        for page in pages:
            is_target = page.key in PORTAL_KEYS
            cpu_ratios = [ref_cpu / c for c in page.cpu if c]
            if page.failures and not page.results:
                cells = ["–"] * 6
            else:
                cells = [
                    spread(page.ratios) if page.key != "reference" else "1",
                    spread(page.p99s, "{:.1f}"),
                    spread(page.rps, "{:,.0f}"),
                    spread([r.p50_ms for r in page.results], "{:.1f}"),
                    spread(page.cpu),
                    spread(cpu_ratios) if page.key != "reference" else "1",
                ]
            errors = f"{page.errors}" + (f"; {', '.join(page.failures)}" if page.failures else "")
            target = (
                verdict(page.passes())
                if is_target
                else "reference"
                if page.key == "reference"
                else "context"
            )
            rounds = f"{page.rounds_passing()}/{len(page.runs)}" if is_target else ""
            w(
                f"| {page.label} | `{page.path}` | {' | '.join(cells)} | {errors}"
                f" | {page.noisy(settings.max_foreign)}/{len(page.runs)} | {rounds} | {target} |"
            )
        first_ms = session.warmup_first_ms
        if "pdf" in first_ms:
            w("")
            w(
                f"The first request of the stored PDF (render and store) took"
                f" {first_ms['pdf']:.0f} ms, in the warm-up, outside every measured window."
            )
        w("")


def _runs_log(w: Any, runs: list[BackendRun], settings: Settings) -> None:
    w("<details><summary>Every run: load average before and after, other processes' CPU</summary>")
    w("")
    w(
        "*Others' CPU* is the share of the whole machine's CPU (all cores) used during the run by"
        " processes that are not this run's (its gunicorn servers, wrk, the harness, its"
        " PostgreSQL backends); *steal* is CPU the hypervisor gave to other machines. The load"
        " average counts our own gunicorn and wrk too, so it rises during every run."
        f" Runs above {settings.max_foreign:.0%} are marked noisy."
    )
    w("")
    w(
        "| Backend | Round | # | URL | req/s | p99 ms | × reference | load before | load after"
        " | others' CPU | steal | |"
    )
    w("|---|---:|---:|---|---:|---:|---:|---|---|---:|---:|---|")
    for run in runs:
        if run.session is None:
            continue
        for m in run.session.runs:
            r = m.result
            window = r.window if r else None
            if r is None or window is None:
                w(
                    f"| {run.name} | {m.round + 1} | {m.position + 1} | {m.key} |"
                    f"{' – |' * 7} {m.failure} |"
                )
                continue
            ratio = f"{m.ratio:.2f}" if m.ratio is not None else ""
            flag = "noisy" if window.foreign > settings.max_foreign else ""
            w(
                f"| {run.name} | {m.round + 1} | {m.position + 1} | {m.key} | {r.rps:,.0f}"
                f" | {r.p99_ms:.1f} | {ratio} | {load_text(window.load_before)}"
                f" | {load_text(window.load_after)} | {window.foreign:.0%} | {window.steal:.0%}"
                f" | {flag} |"
            )
    w("")
    w("</details>")
    w("")


def _profiles(w: Any, runs: list[BackendRun]) -> None:
    w("### Where the time goes (in-process profile, `bench/profile.py`)")
    w("")
    w(profile.__doc__.split("\n\n", 1)[1].strip().replace("\n", " "))
    w("")
    for run in runs:
        if run.profiles:
            w(profile.render_markdown(run.name, run.profiles))


def _targets(w: Any, runs: list[BackendRun], settings: Settings) -> None:
    w("### Targets (from the issue)")
    w("")
    w("| Target | Backend | Result | |")
    w("|---|---|---|---|")
    for run in runs:
        pages = [p for p in summaries(run) if p.key in PORTAL_KEYS]
        failing = [p for p in pages if not p.passes()]
        detail = "; ".join(
            f"{p.label} {statistics.median(p.ratios):.2f}×, p99"
            f" {statistics.median(p.p99s):.0f} ms, {p.errors} errors"
            if p.ratios
            else f"{p.label}: {', '.join(p.failures) or 'no result'}"
            for p in (failing or pages)
        )
        w(
            f"| Each signed-in page ≥ {MIN_RATIO}× the reference, p99 < {MAX_P99_MS:.0f} ms at"
            f" 16 connections, zero errors (medians of {settings.rounds} rounds) | {run.name}"
            f" | {'failing: ' if failing else 'all pages: '}{detail}"
            f" | {verdict(not failing and bool(pages))} |"
        )
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
        by_key = {p.key: p for p in summaries(run)}
        static, stored = by_key.get("static"), by_key.get("pdf")
        if static and stored and static.rps and stored.rps:
            ratio = statistics.median(stored.rps) / statistics.median(static.rps)
            w(
                "| A stored PDF served at static-file speed (read here as: ≥ 50% of the"
                " throughput of a static file from the same gunicorn) |"
                f" {run.name} | {statistics.median(stored.rps):,.0f} vs"
                f" {statistics.median(static.rps):,.0f} req/s ({ratio:.2f}×)"
                f" | {verdict(ratio >= MIN_RATIO)} |"
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


def _sql(w: Any, runs: list[BackendRun]) -> None:
    w("### SQL statements per page")
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


def _pdf(w: Any, run: BackendRun) -> None:
    pdf = run.pdf
    if not pdf:
        return
    w("### Invoice PDF first render")
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
    w("### The 10,000-invoice account against the 10-invoice account")
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
