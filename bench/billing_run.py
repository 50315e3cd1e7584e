"""Benchmark of the billing run (issue 10): invoices per second on SQLite and PostgreSQL, and
two workers at once on PostgreSQL (no invoice twice). Not part of the test suite.

    .venv/bin/python -m bench.billing_run --n 10000 [--n 100000] [--backends sqlite,postgresql]

Each measurement seeds a fresh database (a SQLite file under /tmp, or a PostgreSQL schema of its
own on TEST_DATABASE_URL's server): N accounts, each with one per-seat subscription (tax 19%)
whose period ended the day before, bulk-inserted with Core. Then `run_billing` bills them all
(no card collection: that is Stripe's time, not ours) and the wall time is taken. The machine is
shared: the load average is printed with every result.
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
    if backend == "sqlite":
        path = Path("/tmp") / f"bench-billing-{name}-{os.getpid()}.sqlite3"
        for suffix in ("", "-wal", "-shm", ".billing-run.lock"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        return f"sqlite:///{path}"
    schema = f"bench_billing_{name}_{os.getpid()}"
    engine = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    url = sa.engine.make_url(PG_URL)
    return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )


def drop(url: str) -> None:
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        for suffix in ("", "-wal", "-shm", ".billing-run.lock"):
            Path(path + suffix).unlink(missing_ok=True)
        return
    schema = url.split("search_path%3D")[-1] if "%3D" in url else url.split("search_path=")[-1]
    engine = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


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


def bill(url: str, label: str = "") -> dict[str, Any]:
    """One billing run over the database; its summary numbers."""
    from portal import clock, create_app
    from portal.extensions import db
    from portal.subscriptions.billing_run import run_billing

    clock.set_source(lambda: datetime(2026, 12, 21, 9, tzinfo=UTC))
    app = create_app(_config(url))
    with app.app_context():
        started = time.perf_counter()
        summary = run_billing(db.session, AS_OF, seller=app.config["SELLER"])
        seconds = time.perf_counter() - started
        db.session.remove()
        db.engine.dispose()
    return {
        "label": label,
        "invoices": summary.invoices,
        "seconds": seconds,
        "skipped_busy": summary.skipped_busy,
        "skipped_done": summary.skipped_done,
        "failed": summary.failed,
    }


def _worker(url: str, label: str, queue: Any, barrier: Any) -> None:
    barrier.wait()
    queue.put(bill(url, label))


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, action="append", help="subscriptions (repeatable)")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--workers", type=int, default=2, help="PostgreSQL workers at once")
    args = parser.parse_args()
    sizes = args.n or [10_000]
    rows = []
    for n in sizes:
        for backend in args.backends.split(","):
            url = fresh_url(backend, f"one{n}")
            seeded = seed(url, n)
            before = load()
            result = bill(url, "1 worker")
            counts = check(url)
            rows.append((backend, n, "1 worker", result, counts, before, seeded))
            print(_row(*rows[-1]), flush=True)
            again = bill(url, "second run")
            assert again["invoices"] == 0, again
            print(
                f"  second run for the same date: {again['invoices']} invoices in "
                f"{again['seconds']:.2f} s",
                flush=True,
            )
            drop(url)
            if backend == "postgresql" and args.workers > 1:
                url = fresh_url(backend, f"two{n}")
                seed(url, n)
                before = load()
                queue: Any = multiprocessing.Queue()
                barrier: Any = multiprocessing.Barrier(args.workers)
                procs = [
                    multiprocessing.Process(target=_worker, args=(url, f"w{i}", queue, barrier))
                    for i in range(args.workers)
                ]
                started = time.perf_counter()
                for proc in procs:
                    proc.start()
                results = [queue.get() for _ in procs]
                for proc in procs:
                    proc.join()
                wall = time.perf_counter() - started
                counts = check(url)
                merged = {
                    "invoices": sum(r["invoices"] for r in results),
                    "seconds": wall,
                    "skipped_busy": sum(r["skipped_busy"] for r in results),
                    "skipped_done": sum(r["skipped_done"] for r in results),
                    "failed": sum(r["failed"] for r in results),
                    "split": "/".join(str(r["invoices"]) for r in results),
                }
                label = f"{args.workers} workers"
                rows.append((backend, n, label, merged, counts, before, 0.0))
                print(_row(*rows[-1]), flush=True)
                drop(url)
    print()
    print(
        "| Backend | Subscriptions | Run | Invoices | Wall s | Invoices/s | Skipped (held/done) "
        "| Failed | Invoices twice | Load average (1/5/15 min) before |"
    )
    print("|---|---:|---|---:|---:|---:|---|---:|---:|---|")
    for row in rows:
        print(_row(*row))


def _row(backend, n, label, result, counts, before, seeded) -> str:  # type: ignore[no-untyped-def]
    rate = result["invoices"] / result["seconds"] if result["seconds"] else 0
    split = f" ({result['split']})" if "split" in result else ""
    return (
        f"| {backend} | {n:,} | {label} | {result['invoices']:,}{split} | "
        f"{result['seconds']:.1f} | {rate:,.0f} | {result['skipped_busy']}/"
        f"{result['skipped_done']} | {result['failed']} | {counts['doubled']} | {before} |"
    )


if __name__ == "__main__":
    main()
