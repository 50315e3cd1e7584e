"""Benchmark of the billing run (issue 10): invoices per second on SQLite and PostgreSQL, and
two workers at once on PostgreSQL (no invoice twice). Not part of the test suite.

    .venv/bin/python -m bench.billing_run --n 10000 [--n 100000] [--backends sqlite,postgresql]

Each measurement seeds a fresh database (a SQLite file under /tmp, or a PostgreSQL schema of its
own on TEST_DATABASE_URL's server): N accounts, each with one per-seat subscription (tax 19%)
whose period ended the day before, bulk-inserted with Core. Then `run_billing` bills them all
(no card collection: that is Stripe's time, not ours) and the wall time is taken. The machine is
shared: the load average is printed with every result, and so is the CPU time per invoice of
the runner process (time.process_time) and of its PostgreSQL backend (/proc/<pid>/stat of
pg_backend_pid(), which works because the server runs on this machine), and the SQL statements
per invoice (an executemany counts once).

`bench_part(quick)` (INTERFACES.md) returns the Markdown section: quick=True bills 300
subscriptions per backend, else 10,000.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import databases  # noqa: E402
from bench.databases import drop  # noqa: E402

AS_OF = date(2026, 12, 21)
PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _config(url: str) -> dict[str, Any]:
    return {
        "SQLALCHEMY_DATABASE_URI": url,
        "SECRET_KEY": "bench",
        "SECRET_KEYS": ["bench"],
        "SECRET_KEY_FALLBACKS": [],
        "BASE_URL": "http://bench.test",
        "RATELIMIT_ENABLED": False,
        "TESTING": False,
    }


def fresh_url(backend: str, name: str) -> str:
    """A fresh database of this bench's own (bench.databases), named bench-billing-<name>-<pid>."""
    return databases.fresh_url(backend, f"billing-{name}")


def seed(url: str, n: int) -> float:
    """Migrate and bulk-insert N due subscriptions; returns the seconds it took."""
    from flask_migrate import upgrade

    from portal import create_app
    from portal.extensions import db
    from portal.models import Account, Plan, Price, Subscription, TaxRate

    started = time.perf_counter()
    app = create_app(_config(url))
    with app.app_context():
        upgrade()
        session = db.session
        rate = TaxRate(name="VAT 19%", rate_bp=1900, country="ALL")
        plan = Plan(code="team", name="Team", rank=1)
        session.add_all([rate, plan])
        session.flush()
        price = Price(
            plan_id=plan.id,
            currency="USD",
            pricing_model="per_unit",
            unit_amount_minor=1500,
            unit_label="seat",
            tax_rate_id=rate.id,
        )
        session.add(price)
        session.commit()
        price_id = price.id
        now = datetime.now(UTC)
        start = datetime(2026, 11, 21, 5, tzinfo=UTC)
        end = datetime(2026, 12, 21, 5, tzinfo=UTC)
        with db.engine.begin() as conn:
            for offset in range(0, n, 10_000):
                size = min(10_000, n - offset)
                conn.execute(
                    sa.insert(Account.__table__),
                    [
                        {
                            "id": offset + i + 1,
                            "public_id": secrets.token_urlsafe(12),
                            "name": f"Bench customer {offset + i + 1}",
                            "billing_email": f"b{offset + i + 1}@bench.example.com",
                            "currency": "USD",
                            "country": "US",
                            "timezone": "America/New_York",
                            "invoice_prefix": f"B{offset + i + 1:07d}",
                            "created_at": now,
                            "updated_at": now,
                        }
                        for i in range(size)
                    ],
                )
                conn.execute(
                    sa.insert(Subscription.__table__),
                    [
                        {
                            "id": offset + i + 1,
                            "public_id": secrets.token_urlsafe(12),
                            "account_id": offset + i + 1,
                            "price_id": price_id,
                            "quantity": 1 + (offset + i) % 20,
                            "status": "active",
                            "started_at": start,
                            "current_period_start": start,
                            "current_period_end": end,
                            "created_at": now,
                            "updated_at": now,
                        }
                        for i in range(size)
                    ],
                )
            if conn.dialect.name == "postgresql":
                for table in ("accounts", "subscriptions"):
                    conn.execute(
                        sa.text(
                            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                            f" (SELECT max(id) FROM {table}))"
                        )
                    )
                conn.execute(sa.text("ANALYZE"))
        db.session.remove()
        db.engine.dispose()
    return time.perf_counter() - started


def _backend_cpu(pid: int | None) -> float:
    """Seconds of CPU (user + system) the PostgreSQL backend with this pid has used."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Stop(Exception):
    """Raised from the progress callback to end a run after so many subscriptions."""


def bill(
    url: str,
    label: str = "",
    profile: str | None = None,
    barrier: Any = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """One billing run over the database; its summary numbers and what it cost. With
    `stop_after` the run is ended once that many subscriptions are done (their batches
    committed): the cost per invoice of a run over a large database, in less time."""
    from portal import clock, create_app
    from portal.extensions import db
    from portal.subscriptions.billing_run import run_billing

    clock.set_source(lambda: datetime(2026, 12, 21, 9, tzinfo=UTC))
    app = create_app(_config(url))
    with app.app_context():
        statements = [0]

        def count(*_args: Any) -> None:
            statements[0] += 1

        pid = None
        if db.engine.dialect.name == "postgresql":
            pid = db.session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        db.session.commit()
        sa.event.listen(db.engine, "before_cursor_execute", count)
        if barrier is not None:
            barrier.wait()  # several workers start billing together (their apps are ready)
        began = time.time()
        backend_before = _backend_cpu(pid)
        cpu_before = time.process_time()
        started = time.perf_counter()
        profiler = None
        if profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()

        def progress(done: int, _total: int) -> None:
            if stop_after is not None and done >= stop_after:
                raise _Stop()

        try:
            summary = run_billing(db.session, AS_OF, seller=app.config["SELLER"], progress=progress)
            invoices, skipped = summary.invoices, (summary.skipped_busy, summary.skipped_done)
            failed, retried = summary.failed, summary.batches_retried
        except _Stop:
            db.session.rollback()
            invoices = db.session.execute(sa.text("SELECT count(*) FROM invoices")).scalar_one()
            skipped, failed, retried = (0, 0), 0, 0
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile)
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu_before
        backend = _backend_cpu(pid) - backend_before
        sa.event.remove(db.engine, "before_cursor_execute", count)
        db.session.remove()
        db.engine.dispose()
    return {
        "label": label,
        "invoices": invoices,
        "seconds": seconds,
        "cpu": cpu,
        "backend_cpu": backend,
        "statements": statements[0],
        "skipped_busy": skipped[0],
        "skipped_done": skipped[1],
        "failed": failed,
        "retried": retried,
        "began": began,
        "ended": began + seconds,
    }


def _worker(url: str, label: str, queue: Any, barrier: Any) -> None:
    queue.put(bill(url, label, barrier=barrier))


def check(url: str) -> dict[str, int]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        invoices = conn.execute(sa.text("SELECT count(*) FROM invoices")).scalar_one()
        doubled = conn.execute(
            sa.text(
                "SELECT count(*) FROM (SELECT subscription_id FROM invoices"
                " GROUP BY subscription_id, billing_period_start HAVING count(*) > 1) d"
            )
        ).scalar_one()
        entries = conn.execute(sa.text("SELECT count(*) FROM ledger_entries")).scalar_one()
        mails = conn.execute(sa.text("SELECT count(*) FROM outbox_emails")).scalar_one()
    engine.dispose()
    return {"invoices": invoices, "doubled": doubled, "ledger": entries, "emails": mails}


def load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def measure(
    sizes: list[int],
    backends: list[str],
    workers: int = 2,
    log: Any = print,
    stop_after: int | None = None,
) -> list[dict[str, Any]]:
    """Seed, bill once (and a second time: it must find nothing), and with PostgreSQL bill a
    fresh copy with `workers` processes at once; one row per measurement."""
    rows: list[dict[str, Any]] = []
    for n in sizes:
        for backend in backends:
            url = fresh_url(backend, f"one{n}")
            seed(url, n)
            before = load()
            partial = stop_after is not None and stop_after < n
            result = bill(url, "1 worker", stop_after=stop_after if partial else None)
            if partial:
                result["label"] = f"1 worker, stopped after {stop_after:,}"
            counts = check(url)
            rows.append(
                {
                    **result,
                    "backend": backend,
                    "n": n,
                    "counts": counts,
                    "load": before,
                    "load_after": load(),
                }
            )
            log(_row(rows[-1]))
            if partial:
                drop(url)
                continue
            again = bill(url, "second run")
            assert again["invoices"] == 0, again
            rows.append(
                {
                    **again,
                    "backend": backend,
                    "n": n,
                    "label": "second run, same date",
                    "counts": check(url),
                    "load": load(),
                    "load_after": load(),
                }
            )
            log(_row(rows[-1]))
            drop(url)
            if backend == "postgresql" and workers > 1:
                rows.append(_parallel(n, workers))
                log(_row(rows[-1]))
    return rows


def _parallel(n: int, workers: int) -> dict[str, Any]:
    url = fresh_url("postgresql", f"two{n}")
    seed(url, n)
    before = load()
    queue: Any = multiprocessing.Queue()
    barrier: Any = multiprocessing.Barrier(workers)
    procs = [
        multiprocessing.Process(target=_worker, args=(url, f"w{i}", queue, barrier))
        for i in range(workers)
    ]
    for proc in procs:
        proc.start()
    results = [queue.get() for _ in procs]
    for proc in procs:
        proc.join()
    # NOTE: from the first worker's start of billing to the last one's end (app start-up of
    # each process is not billing, as it is not in the one-worker row either).
    wall = max(r["ended"] for r in results) - min(r["began"] for r in results)
    counts = check(url)
    drop(url)
    return {
        "backend": "postgresql",
        "n": n,
        "label": f"{workers} workers at once",
        "invoices": sum(r["invoices"] for r in results),
        "seconds": wall,
        "cpu": sum(r["cpu"] for r in results),
        "backend_cpu": sum(r["backend_cpu"] for r in results),
        "statements": sum(r["statements"] for r in results),
        "skipped_busy": sum(r["skipped_busy"] for r in results),
        "skipped_done": sum(r["skipped_done"] for r in results),
        "failed": sum(r["failed"] for r in results),
        "retried": sum(r["retried"] for r in results),
        "split": "/".join(str(r["invoices"]) for r in results),
        "worker_seconds": "/".join(f"{r['seconds']:.1f}" for r in results),
        "counts": counts,
        "load": before,
        "load_after": load(),
    }


HEADER = (
    "| Backend | Subscriptions | Run | Invoices | Wall s | Invoices/s | CPU ms/invoice runner "
    "| CPU ms/invoice PG backend | SQL statements/invoice | Skipped (held/done) | Failed "
    "| Invoices twice | Emails in the outbox | Load before | Load after |\n"
    "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---|"
)


def _row(row: dict[str, Any]) -> str:
    invoices = row["invoices"]
    rate = invoices / row["seconds"] if row["seconds"] and invoices else 0
    split = f" ({row['split']})" if "split" in row else ""

    def per(value: float) -> str:
        return f"{1000 * value / invoices:.2f}" if invoices else "-"

    backend_cpu = per(row["backend_cpu"]) if row["backend"] == "postgresql" else "-"
    statements = f"{row['statements'] / invoices:.2f}" if invoices else str(row["statements"])
    return (
        f"| {row['backend']} | {row['n']:,} | {row['label']} | {invoices:,}{split} | "
        f"{row['seconds']:.1f} | {rate:,.0f} | {per(row['cpu'])} | {backend_cpu} | {statements} | "
        f"{row['skipped_busy']}/{row['skipped_done']} | {row['failed']} | "
        f"{row['counts']['doubled']} | {row['counts']['emails']:,} | {row['load']} | "
        f"{row['load_after']} |"
    )


def summarize(rows: list[dict[str, Any]]) -> list[str]:
    """Growth 10k -> 100k and the speed-up of several workers, from the rows measured."""
    out = []
    ones = {(r["backend"], r["n"]): r for r in rows if r["label"].startswith("1 worker")}
    for backend in sorted({b for b, _ in ones}):
        sizes = sorted(n for b, n in ones if b == backend)
        if len(sizes) > 1:
            small, big = ones[(backend, sizes[0])], ones[(backend, sizes[-1])]
            cpu_small = small["cpu"] / small["invoices"]
            cpu_big = big["cpu"] / big["invoices"]
            wall_small = small["seconds"] / small["invoices"]
            wall_big = big["seconds"] / big["invoices"]
            out.append(
                f"- {backend}: {sizes[0]:,} -> {sizes[-1]:,} subscriptions "
                f"({small['invoices']:,} and {big['invoices']:,} invoices billed): runner CPU "
                f"per invoice {1000 * cpu_small:.2f} -> {1000 * cpu_big:.2f} ms "
                f"(x{cpu_big / cpu_small:.2f}; 1.00 is linear growth), wall per invoice "
                f"{1000 * wall_small:.1f} -> {1000 * wall_big:.1f} ms (load-dependent)."
            )
    for row in rows:
        if "split" in row:
            one = ones.get((row["backend"], row["n"]))
            if one:
                speedup = (row["invoices"] / row["seconds"]) / (one["invoices"] / one["seconds"])
                out.append(
                    f"- {row['n']:,} on PostgreSQL, {row['label']}: {speedup:.2f}x the rate of one"
                    f" worker (split {row['split']}, worker walls {row['worker_seconds']} s), "
                    f"{row['counts']['doubled']} invoices made twice, {row['retried']} batches "
                    "retried."
                )
    return out


def bench_part(quick: bool) -> str:
    """The Markdown section for `make bench` (INTERFACES.md)."""
    sizes = [300] if quick else [10_000]
    before = load()
    rows = measure(sizes, ["sqlite", "postgresql"], log=lambda _line: None)
    lines = [
        "## Billing run (`bench/billing_run.py`)",
        "",
        f"Load average before: {before}; after: {load()} (1/5/15 min, 2 cores shared).",
        "",
        HEADER,
        *(_row(row) for row in rows),
        "",
        *summarize(rows),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, action="append", help="subscriptions (repeatable)")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--workers", type=int, default=2, help="PostgreSQL workers at once")
    parser.add_argument("--profile", help="cProfile one run (the first backend) into this file")
    parser.add_argument(
        "--stop-after", type=int, help="end each one-worker run after this many subscriptions"
    )
    args = parser.parse_args()
    sizes = args.n or [10_000]
    backends = args.backends.split(",")
    if args.profile:
        url = fresh_url(backends[0], "profile")
        seed(url, sizes[0])
        result = bill(url, "profiled", profile=args.profile)
        drop(url)
        print(result)
        return
    print(HEADER, flush=True)
    rows = measure(
        sizes,
        backends,
        args.workers,
        log=lambda line: print(line, flush=True),
        stop_after=args.stop_after,
    )
    print()
    print(HEADER)
    for row in rows:
        print(_row(row))
    print()
    print("\n".join(summarize(rows)))


if __name__ == "__main__":
    main()
