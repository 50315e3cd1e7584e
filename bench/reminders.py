"""Reminder run benchmark (issue 12): `send_reminders` over many open invoices, on SQLite and
PostgreSQL. Not part of the test suite.

    .venv/bin/python -m bench.reminders --n 100000 [--backends sqlite,postgresql] [--profile]

Each backend gets a fresh database (a SQLite file under /tmp, or a PostgreSQL schema of its own
on TEST_DATABASE_URL's server), migrated, then bulk-inserted with Core: N invoices over N/5
accounts (each with its owner as a member, so every reminder carries a deep link; one account in
ten with an accounts-payable address, one in twenty opted out of reminders before the due date,
one in five German, one in ten French), due dates spread evenly over the 120 days around the run's
date, one invoice in ten paid and one in ten partly paid, one in a hundred with an open dispute
and one in a hundred with a card payment in flight. Then three runs of the real job:

1. catch-up: the first run ever on AS_OF, every invoice inside the schedule gets its latest step;
2. again on AS_OF: must queue nothing (never the same reminder twice);
3. daily: the next day, what a daily run really sends (the steps that come due that day).

For each: wall seconds, CPU seconds of this process and (PostgreSQL) of the backends this run's
connections are served by (/proc/<pid>/stat), reminders queued (and outbox rows: extra
recipients get their own), reminders per second, SQL statements. The machine is shared: the load
average is printed with every result.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import resource
import secrets
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.databases import drop, fresh_url  # noqa: E402
from bench.machine import TICKS, load_averages, process_ticks  # noqa: E402

AS_OF = date(2026, 12, 21)
INVOICES_PER_ACCOUNT = 5
SPREAD_DAYS = 120  # due dates from AS_OF - 90 to AS_OF + 29
CHUNK = 10_000


def _config(url: str) -> dict[str, Any]:
    return {
        "SQLALCHEMY_DATABASE_URI": url,
        "SECRET_KEY": "bench",
        "SECRET_KEYS": ["bench"],
        "SECRET_KEY_FALLBACKS": [],
        "BASE_URL": "https://bench.test",
        "RATELIMIT_ENABLED": False,
        "TESTING": False,
    }


def _locale(i: int) -> str:
    return "de_DE" if i % 5 == 1 else "fr_FR" if i % 10 == 2 else "en_US"


def seed(url: str, n: int) -> dict[str, Any]:
    """Migrate and bulk-insert N invoices over N/5 accounts; what was made, and how long."""
    from flask_migrate import upgrade

    from portal import create_app
    from portal.extensions import db
    from portal.models import Account, Invoice, Membership, User
    from portal.notifications.models import EmailPreference

    started = time.perf_counter()
    app = create_app(_config(url))
    accounts = max(1, n // INVOICES_PER_ACCOUNT)
    now = datetime.now(UTC)
    first_due = AS_OF - timedelta(days=90)
    with app.app_context():
        upgrade()
        engine = db.engine
        with engine.begin() as conn:
            for start in range(0, accounts, CHUNK):
                ids = range(start + 1, min(start + CHUNK, accounts) + 1)
                conn.execute(
                    sa.insert(Account.__table__),
                    [
                        {
                            "id": i,
                            "public_id": secrets.token_urlsafe(12),
                            "name": f"Bench customer {i}",
                            "billing_email": f"billing{i}@bench.example.com",
                            "currency": _currency(i),
                            "country": "US",
                            "locale": _locale(i),
                            "timezone": "UTC",
                            "invoice_prefix": f"B{i:07d}",
                            "created_at": now,
                            "updated_at": now,
                        }
                        for i in ids
                    ],
                )
                conn.execute(
                    sa.insert(User.__table__),
                    [
                        {
                            "id": i,
                            "public_id": secrets.token_urlsafe(12),
                            "email": f"billing{i}@bench.example.com",
                            "name": f"Owner {i}",
                            "session_epoch": 0,
                            "created_at": now,
                        }
                        for i in ids
                    ],
                )
                conn.execute(
                    sa.insert(Membership.__table__),
                    [
                        {"user_id": i, "account_id": i, "role": "owner", "created_at": now}
                        for i in ids
                    ],
                )
                prefs = [
                    {
                        "account_id": i,
                        "extra_recipients": f"ap{i}@bench.example.com" if i % 10 == 3 else "",
                        "opt_out_reminders": i % 20 == 7,
                        "opt_out_card_expiry": False,
                        "updated_at": now,
                    }
                    for i in ids
                    if i % 10 == 3 or i % 20 == 7
                ]
                if prefs:
                    conn.execute(sa.insert(EmailPreference.__table__), prefs)
            for start in range(0, n, CHUNK):
                rows = []
                for i in range(start + 1, min(start + CHUNK, n) + 1):
                    account_id = (i - 1) % accounts + 1
                    due = first_due + timedelta(days=(i * 7919) % SPREAD_DAYS)
                    total = 1000 + (i * 37) % 90_000
                    paid = total if i % 10 == 4 else total // 3 if i % 10 == 5 else 0
                    rows.append(
                        {
                            "id": i,
                            "public_id": secrets.token_urlsafe(12),
                            "account_id": account_id,
                            "number": f"B{account_id:07d}-{i:07d}",
                            "status": "paid" if paid == total else "open",
                            "currency": _currency(account_id),
                            "issue_date": due - timedelta(days=30),
                            "due_date": due,
                            "subtotal_minor": total,
                            "discount_minor": 0,
                            "tax_minor": 0,
                            "total_minor": total,
                            "amount_paid_minor": paid,
                            "amount_credited_minor": 0,
                            "memo": "",
                            "finalized_at": now,
                            "paid_at": now if paid == total else None,
                            "created_at": now,
                        }
                    )
                conn.execute(sa.insert(Invoice.__table__), rows)
            disputed = [i for i in range(1, n + 1) if i % 100 == 11]
            in_flight = [i for i in range(1, n + 1) if i % 100 == 21]
            if disputed:
                _seed_disputes(conn, disputed, accounts, now)
            if in_flight:
                _seed_in_flight(conn, in_flight, accounts, now)
            if conn.dialect.name == "postgresql":
                for table in ("accounts", "users", "invoices", "payment_attempts"):
                    conn.execute(
                        sa.text(
                            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                            f" (SELECT max(id) FROM {table}))"
                        )
                    )
                conn.execute(sa.text("ANALYZE"))
        db.session.remove()
        db.engine.dispose()
    return {"accounts": accounts, "invoices": n, "seconds": time.perf_counter() - started}


def _currency(account_id: int) -> str:
    return "EUR" if _locale(account_id) != "en_US" else "USD"


def _seed_disputes(conn: Any, ids: list[int], accounts: int, now: datetime) -> None:
    """Open disputes holding half of each invoice (the reminder asks for the rest)."""
    from portal.disputes.models import Dispute

    conn.execute(
        sa.insert(Dispute.__table__),
        [
            {
                "public_id": secrets.token_urlsafe(12),
                "account_id": (i - 1) % accounts + 1,
                "invoice_id": i,
                "amount_minor": (1000 + (i * 37) % 90_000) // 2,
                "currency": _currency((i - 1) % accounts + 1),
                "status": "open",
                "source": "customer",
                "reason": "other",
                "description": "Bench dispute",
                "resolution_note": "",
                "fee_minor": 0,
                "created_at": now,
                "updated_at": now,
            }
            for i in ids
        ],
    )


def _seed_in_flight(conn: Any, ids: list[int], accounts: int, now: datetime) -> None:
    """A card payment still processing for each (no reminder while it is in flight)."""
    from portal.payments.models import PaymentAttempt, PaymentAttemptItem

    conn.execute(
        sa.insert(PaymentAttempt.__table__),
        [
            {
                "id": number,
                "public_id": secrets.token_urlsafe(12),
                "account_id": (i - 1) % accounts + 1,
                "idempotency_key": f"bench_{i}",
                "amount_minor": 1000 + (i * 37) % 90_000,
                "currency": _currency((i - 1) % accounts + 1),
                "status": "processing",
                "failure_code": "",
                "failure_message": "",
                "created_at": now,
                "updated_at": now,
            }
            for number, i in enumerate(ids, start=1)
        ],
    )
    conn.execute(
        sa.insert(PaymentAttemptItem.__table__),
        [
            {
                "attempt_id": number,
                "invoice_id": i,
                "amount_minor": 1000 + (i * 37) % 90_000,
                "is_live": True,
            }
            for number, i in enumerate(ids, start=1)
        ],
    )


class Counter:
    """SQL statements sent, and the PostgreSQL backends that served them."""

    def __init__(self, engine: sa.Engine) -> None:
        self.statements = 0
        self.backends: set[int] = set()
        sa.event.listen(engine, "before_cursor_execute", self._count)
        if engine.dialect.name == "postgresql":
            sa.event.listen(engine, "connect", self._backend)
            engine.dispose()  # every connection from now on is seen connecting

    def _count(self, *_args: Any) -> None:
        self.statements += 1

    def _backend(self, dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("SELECT pg_backend_pid()")
        self.backends.add(int(cursor.fetchone()[0]))
        cursor.close()

    def backend_seconds(self) -> float:
        return sum(process_ticks(pid) for pid in self.backends) / TICKS


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def remind(url: str, as_of: date, label: str, profile: Path | None = None) -> dict[str, Any]:
    """One `send_reminders` run as the worker's job runs it; what it did and what it cost."""
    from portal import clock, create_app
    from portal.extensions import db
    from portal.notifications.dunning import send_reminders

    clock.set_source(lambda: datetime.combine(as_of, datetime.min.time(), UTC) + timedelta(hours=6))
    app = create_app(_config(url))
    with app.app_context():
        counter = Counter(db.engine)
        with db.engine.connect() as conn:
            outbox_before = conn.execute(sa.text("SELECT count(*) FROM outbox_emails")).scalar_one()
        # NOTE: the first connection's backend is known once it is open: count from there.
        backend_before = counter.backend_seconds()
        statements_before = counter.statements
        load_before = load_averages()
        cpu_before = _cpu()
        profiler = cProfile.Profile() if profile else None
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        sent = send_reminders(db.session, as_of)
        if profiler:
            profiler.disable()
        seconds = time.perf_counter() - started
        cpu = _cpu() - cpu_before
        backend = counter.backend_seconds() - backend_before
        statements = counter.statements - statements_before
        load_after = load_averages()
        db.session.remove()
        with db.engine.connect() as conn:
            outbox_after = conn.execute(sa.text("SELECT count(*) FROM outbox_emails")).scalar_one()
        db.engine.dispose()
    if profiler and profile:
        profiler.dump_stats(str(profile))
        pstats.Stats(str(profile)).sort_stats("cumulative").print_stats(40)
    return {
        "label": label,
        "as_of": as_of,
        "sent": sent,
        "emails": outbox_after - outbox_before,
        "seconds": seconds,
        "cpu": cpu,
        "backend_cpu": backend if url.startswith("postgresql") else None,
        "statements": statements,
        "load_before": load_before,
        "load_after": load_after,
    }


def check(url: str) -> dict[str, int]:
    """Never the same reminder twice: duplicates of (invoice, step) and of outbox dedupe keys."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        reminders = conn.execute(sa.text("SELECT count(*) FROM payment_reminders")).scalar_one()
        doubled = conn.execute(
            sa.text(
                "SELECT count(*) FROM (SELECT invoice_id, step FROM payment_reminders"
                " GROUP BY invoice_id, step HAVING count(*) > 1) d"
            )
        ).scalar_one()
        paid = conn.execute(
            sa.text(
                "SELECT count(*) FROM payment_reminders r JOIN invoices i ON i.id = r.invoice_id"
                " WHERE i.status = 'paid'"
            )
        ).scalar_one()
    engine.dispose()
    return {"reminders": int(reminders), "doubled": int(doubled), "paid_reminded": int(paid)}


def _load(values: tuple[float, float, float]) -> str:
    return " / ".join(f"{x:.2f}" for x in values)


def measure(backend: str, n: int, profile: bool = False, log: Any = print) -> list[dict[str, Any]]:
    url = fresh_url(backend, "reminders")
    try:
        seeded = seed(url, n)
        log(
            f"{backend}: seeded {seeded['invoices']} invoices over {seeded['accounts']} accounts "
            f"in {seeded['seconds']:.1f} s"
        )
        results = []
        runs = (
            ("catch-up (first run)", AS_OF),
            ("same day again", AS_OF),
            ("next day (daily run)", AS_OF + timedelta(days=1)),
        )
        for number, (label, as_of) in enumerate(runs):
            out = Path("/tmp") / f"bench-reminders-{backend}-{number}.prof" if profile else None
            result = remind(url, as_of, label, out)
            result.update(backend=backend, n=n, **check(url))
            log(result)
            results.append(result)
        if results[1]["sent"] or results[1]["emails"]:
            raise SystemExit(f"{backend}: the second run on {AS_OF} queued something")
        if any(r["doubled"] or r["paid_reminded"] for r in results):
            raise SystemExit(f"{backend}: a reminder went twice, or to a paid invoice")
        return results
    finally:
        drop(url)


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| Backend | Invoices | Run | Reminders | Outbox rows | Wall s | CPU s (process) "
        "| CPU s (PG backend) | Reminders/s | Reminders/CPU s | SQL statements | Load before "
        "| Load after |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        backend_cpu = f"{r['backend_cpu']:.2f}" if r["backend_cpu"] is not None else "–"
        cpu_total = r["cpu"] + (r["backend_cpu"] or 0.0)
        per_s = f"{r['sent'] / r['seconds']:.0f}" if r["sent"] else "–"
        per_cpu = f"{r['sent'] / cpu_total:.0f}" if r["sent"] and cpu_total else "–"
        lines.append(
            f"| {r['backend']} | {r['n']} | {r['label']} | {r['sent']} | {r['emails']} | "
            f"{r['seconds']:.2f} | {r['cpu']:.2f} | {backend_cpu} | {per_s} | {per_cpu} | "
            f"{r['statements']} | {_load(r['load_before'])} | {_load(r['load_after'])} |"
        )
    return "\n".join(lines)


def section(results: list[dict[str, Any]], load_before: Any, load_after: Any) -> str:
    n = results[0]["n"] if results else 0
    return "\n".join(
        [
            "## Reminder run (issue 12, `bench/reminders.py`)",
            "",
            f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `python -m bench.reminders "
            f"--n {n}` on this shared 2-core machine: load average {_load(load_before)} at the "
            f"start, {_load(load_after)} at the end. Reminders/CPU s counts this process and "
            "(PostgreSQL) its backend.",
            "",
            table(results),
            "",
        ]
    )


def bench_part(quick: bool) -> str:
    """The Markdown section for `make bench` (quick: 2,000 invoices; else 100,000)."""
    n = 2_000 if quick else 100_000
    before = load_averages()
    results: list[dict[str, Any]] = []
    for backend in ("sqlite", "postgresql"):
        results += measure(backend, n, log=lambda *_: None)
    return section(results, before, load_averages())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--profile", action="store_true", help="cProfile each run to /tmp")
    args = parser.parse_args(argv)
    before = load_averages()
    results: list[dict[str, Any]] = []
    for backend in args.backends.split(","):
        results += measure(backend.strip(), args.n, args.profile)
    print()
    print(section(results, before, load_averages()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
