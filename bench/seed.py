"""A large, consistent dataset, seeded fast into a fresh SQLite file or PostgreSQL database.

The demo data goes in through the real services (`portal.demo.seed_demo`); the bulk (2,000
accounts, 200,000 finalized invoices) goes in through Core `insert()` executemany with explicit
ids, row for row what the services would have written: gapless numbers with their series
counters, lines whose amounts and per-line tax add up to the invoice totals, payments with their
allocations, voids, and one ledger entry per invoice, payment and void (the account_balances rows
recomputed from the ledger afterwards), so balances, statements and aging are right. Seeded
databases are cached (a SQLite file, a PostgreSQL template database) under a fingerprint of the
schema, this file, the demo and the day.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import secrets
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

BULK_ACCOUNTS = 2_000
TOTAL_INVOICES = 200_000
BIG_INVOICES = 10_000
SMALL_INVOICES = 10
BIG_EMAIL = "big@bench.example.com"
SMALL_EMAIL = "small@bench.example.com"
BIG_PREFIX = "BIG"
SMALL_PREFIX = "SML"
# One paid invoice of the big account carries this many lines: the multi-page PDF.
LONG_INVOICE_SEQUENCE = 5_000
LONG_INVOICE_LINES = 175
SECRET_KEY = "bench-secret-key-not-for-production"

# currency, locale, time zone, country, seat price, GB price, tax rate (bp), tax name
PROFILES = (
    ("USD", "en_US", "America/New_York", "US", 1500, 25, 0, ""),
    ("EUR", "de_DE", "Europe/Berlin", "DE", 1400, 25, 1900, "VAT 19%"),
    ("JPY", "ja_JP", "Asia/Tokyo", "JP", 2200, 4, 1000, "Consumption tax 10%"),
)


@dataclass(frozen=True)
class Plan:
    """Who and what the bulk accounts are: (prefix, email, invoices, cadence, profile index)."""

    prefix: str
    email: str
    name: str
    invoices: int
    cadence: str  # "monthly" or "daily"
    profile: int


def plans() -> list[Plan]:
    """The big account (daily invoices), the small one, and 1,998 monthly-billed ones."""
    result = [
        Plan(BIG_PREFIX, BIG_EMAIL, "Bigcorp Logistics Inc.", BIG_INVOICES, "daily", 0),
        Plan(SMALL_PREFIX, SMALL_EMAIL, "Small Bakery LLC", SMALL_INVOICES, "monthly", 0),
    ]
    rest = BULK_ACCOUNTS - len(result)
    remaining = TOTAL_INVOICES - BIG_INVOICES - SMALL_INVOICES
    each, extra = divmod(remaining, rest)
    for index in range(rest):
        result.append(
            Plan(
                f"B{index + 1:04d}",
                f"customer{index + 1:04d}@bench.example.com",
                f"Customer {index + 1:04d} Ltd.",
                each + (1 if index < extra else 0),
                "monthly",
                index % len(PROFILES),
            )
        )
    return result


# NOTE: bump when what `generate` writes changes; the cached seeds are rebuilt.
SEED_VERSION = "3"


def fingerprint() -> str:
    """What a cached seed depends on: the schema, the seed version, the demo and today's date."""
    digest = hashlib.sha256(SEED_VERSION.encode())
    for path in sorted((ROOT / "migrations" / "versions").glob("*.py")):
        digest.update(path.read_bytes())
    digest.update((ROOT / "portal" / "demo.py").read_bytes())
    digest.update(date.today().isoformat().encode())
    return digest.hexdigest()[:12]


def add_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    return date(year, month + 1, min(day.day, calendar.monthrange(year, month + 1)[1]))


def _tax(amount: int, rate_bp: int) -> int:
    # Half up, as Money.basis_points does, for the non-negative amounts seeded here.
    return (amount * rate_bp + 5_000) // 10_000


class Ids:
    """Explicit primary keys, continuing after whatever the demo seed created."""

    def __init__(self, conn: sa.Connection, tables: list[str]) -> None:
        self.next = {
            t: int(conn.execute(sa.text(f"SELECT coalesce(max(id), 0) FROM {t}")).scalar() or 0) + 1
            for t in tables
        }

    def take(self, table: str) -> int:
        value = self.next[table]
        self.next[table] = value + 1
        return value


TABLES = (
    "users",
    "accounts",
    "memberships",
    "subscriptions",
    "payment_methods",
    "number_series",
    "invoices",
    "invoice_lines",
    "payments",
    "payment_allocations",
    "ledger_entries",
)


def _at(day: date, hour: int, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, clock_time(hour), zone).astimezone(UTC)


def generate(
    conn: sa.Connection, seller: dict[str, Any], prices: dict[str, int], now: datetime
) -> dict[str, list[dict[str, Any]]]:
    """Every bulk row, by table, consistent with what the billing services would have written."""
    ids = Ids(conn, list(TABLES))
    rows: dict[str, list[dict[str, Any]]] = {t: [] for t in TABLES}
    for plan in plans():
        _account_rows(plan, ids, rows, seller, prices, now)
    return rows


def _account_rows(
    plan: Plan,
    ids: Ids,
    rows: dict[str, list[dict[str, Any]]],
    seller: dict[str, Any],
    prices: dict[str, int],
    now: datetime,
) -> None:
    currency, locale, tz, country, seat, per_gb, rate, tax_name = PROFILES[plan.profile]
    zone = ZoneInfo(tz)
    today = now.astimezone(zone).date()
    account_id = ids.take("accounts")
    user_id = ids.take("users")
    latest = today - timedelta(days=10) if plan.cadence == "monthly" else today
    first_issue = (
        add_months(latest, 1 - plan.invoices)
        if plan.cadence == "monthly"
        else latest - timedelta(days=plan.invoices - 1)
    )
    created = _at(first_issue - timedelta(days=5), 8, zone)
    address = {"line1": f"{account_id} Benchmark Avenue", "city": "Springfield", "postal": "12345"}
    rows["users"].append(
        {
            "id": user_id,
            "public_id": secrets.token_urlsafe(12),
            "email": plan.email,
            "name": f"Owner of {plan.name}",
            "session_epoch": 0,
            "created_at": created,
        }
    )
    rows["accounts"].append(
        {
            "id": account_id,
            "public_id": secrets.token_urlsafe(12),
            "name": plan.name,
            "billing_email": plan.email,
            "address_line1": address["line1"],
            "address_line2": "",
            "city": address["city"],
            "postal_code": address["postal"],
            "region": "",
            "country": country,
            "tax_id": "",
            "currency": currency,
            "locale": locale,
            "timezone": tz,
            "invoice_prefix": plan.prefix,
            "payment_terms_days": 30,
            "created_at": created,
            "updated_at": created,
        }
    )
    rows["memberships"].append(
        {
            "id": ids.take("memberships"),
            "user_id": user_id,
            "account_id": account_id,
            "role": "owner",
            "created_at": created,
        }
    )
    seats = 1 + account_id % 9
    period_start = _at(today - timedelta(days=10), 0, zone)
    rows["subscriptions"].append(
        {
            "id": ids.take("subscriptions"),
            "public_id": secrets.token_urlsafe(12),
            "account_id": account_id,
            "price_id": prices[currency],
            "quantity": seats,
            "status": "active",
            "collection_method": "charge_automatically",
            "started_at": created,
            "current_period_start": period_start,
            "current_period_end": _at(add_months(today - timedelta(days=10), 1), 0, zone),
            "cancel_at_period_end": False,
            "cancellation_reason": "",
            "created_at": created,
            "updated_at": created,
        }
    )
    if currency == "USD":
        rows["payment_methods"].append(
            {
                "id": ids.take("payment_methods"),
                "public_id": secrets.token_urlsafe(12),
                "account_id": account_id,
                "stripe_payment_method_id": f"pm_bench_{plan.prefix.lower()}",
                "brand": "visa",
                "last4": "4242",
                "exp_month": 12,
                "exp_year": today.year + 2,
                "is_default": True,
                "created_at": created,
            }
        )
    series_key = f"invoice:{plan.prefix}"
    rows["number_series"].append(
        {"id": ids.take("number_series"), "key": series_key, "next_value": plan.invoices + 1}
    )
    buyer = {
        "name": plan.name,
        "email": plan.email,
        "address": [address["line1"], f"{address['postal']} {address['city']}", country],
        "tax_id": "",
    }
    open_tail = 40 if plan.cadence == "daily" else 2
    method = "Visa •••• 4242" if currency == "USD" else "Bank transfer"
    for index in range(plan.invoices):
        sequence = index + 1
        back = plan.invoices - 1 - index
        if plan.cadence == "monthly":
            issue = add_months(latest, -back)
            end = add_months(issue, 1)
        else:
            issue = latest - timedelta(days=back)
            end = issue + timedelta(days=1)
        invoice_id = ids.take("invoices")
        lines = _lines(plan, sequence, seats, seat, per_gb, rate, tax_name, issue, end)
        for position, line in enumerate(lines, start=1):
            line.update(id=ids.take("invoice_lines"), invoice_id=invoice_id, position=position)
            rows["invoice_lines"].append(line)
        subtotal = sum(line["amount_minor"] for line in lines)
        tax = sum(line["tax_minor"] for line in lines)
        total = subtotal + tax
        finalized = _at(issue, 9, zone)
        number = f"{plan.prefix}-{sequence:04d}"
        paid_at = _at(issue + timedelta(days=3), 10, zone)
        voided_at = _at(issue + timedelta(days=5), 12, zone)
        if back < open_tail or paid_at > now:
            status = "open"
        elif sequence % 53 == 7 and sequence != LONG_INVOICE_SEQUENCE:
            status = "void"
        else:
            status = "paid"
        rows["invoices"].append(
            {
                "id": invoice_id,
                "public_id": secrets.token_urlsafe(12),
                "account_id": account_id,
                "number": number,
                "series_key": series_key,
                "sequence": sequence,
                "status": status,
                "currency": currency,
                "issue_date": issue,
                "due_date": issue + timedelta(days=30),
                "period_start": issue,
                "period_end": end,
                "subtotal_minor": subtotal,
                "discount_minor": 0,
                "tax_minor": tax,
                "total_minor": total,
                "amount_paid_minor": total if status == "paid" else 0,
                "amount_credited_minor": 0,
                "seller": seller,
                "buyer": buyer,
                "memo": "",
                "finalized_at": finalized,
                "paid_at": paid_at if status == "paid" else None,
                "voided_at": voided_at if status == "void" else None,
                "created_at": finalized,
            }
        )
        rows["ledger_entries"].append(
            {
                "id": ids.take("ledger_entries"),
                "account_id": account_id,
                "currency": currency,
                "kind": "invoice",
                "amount_minor": total,
                "effective_at": finalized,
                "description": f"Invoice {number}",
                "source_ref": f"invoice:{invoice_id}",
                "invoice_id": invoice_id,
                "created_at": finalized,
            }
        )
        if status == "void":
            rows["ledger_entries"].append(
                {
                    "id": ids.take("ledger_entries"),
                    "account_id": account_id,
                    "currency": currency,
                    "kind": "invoice_void",
                    "amount_minor": -total,
                    "effective_at": voided_at,
                    "description": f"Invoice {number} voided",
                    "source_ref": f"invoice_void:{invoice_id}",
                    "invoice_id": invoice_id,
                    "created_at": voided_at,
                }
            )
        elif status == "paid":
            payment_id = ids.take("payments")
            rows["payments"].append(
                {
                    "id": payment_id,
                    "public_id": secrets.token_urlsafe(12),
                    "account_id": account_id,
                    "currency": currency,
                    "amount_minor": total,
                    "amount_refunded_minor": 0,
                    "method_description": method,
                    "received_at": paid_at,
                    "created_at": paid_at,
                }
            )
            rows["payment_allocations"].append(
                {
                    "id": ids.take("payment_allocations"),
                    "payment_id": payment_id,
                    "invoice_id": invoice_id,
                    "amount_minor": total,
                }
            )
            rows["ledger_entries"].append(
                {
                    "id": ids.take("ledger_entries"),
                    "account_id": account_id,
                    "currency": currency,
                    "kind": "payment",
                    "amount_minor": -total,
                    "effective_at": paid_at,
                    "description": f"Payment {method}",
                    "source_ref": f"payment:{payment_id}",
                    "invoice_id": None,
                    "created_at": paid_at,
                }
            )


def _lines(
    plan: Plan,
    sequence: int,
    seats: int,
    seat: int,
    per_gb: int,
    rate: int,
    tax_name: str,
    start: date,
    end: date,
) -> list[dict[str, Any]]:
    def line(kind: str, description: str, quantity: int, unit: int) -> dict[str, Any]:
        amount = quantity * unit
        return {
            "kind": kind,
            "description": description,
            "period_start": start,
            "period_end": end,
            "quantity": quantity,
            "unit_amount_minor": unit,
            "amount_minor": amount,
            "tax_rate_bp": rate,
            "tax_name": tax_name,
            "tax_minor": _tax(amount, rate),
        }

    lines = [line("subscription", f"Team plan ({seats} seats)", seats, seat)]
    if sequence % 3 == 0:
        lines.append(line("usage", "Data processed (GB)", 10 + sequence % 50, per_gb))
    if plan.prefix == BIG_PREFIX and sequence == LONG_INVOICE_SEQUENCE:
        for n in range(LONG_INVOICE_LINES - len(lines)):
            lines.append(
                line("usage", f"Shipment label batch {n + 1:03d}: zone {n % 7 + 1}", n % 11 + 1, 35)
            )
    return lines


def _insert(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Core executemany in chunks; on PostgreSQL, COPY (the same rows, ten times faster)."""
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        for chunk in _chunks(rows):
            conn.execute(sa.insert(table), chunk)
        return
    columns = list(rows[0])
    raw = conn.connection.driver_connection
    sql = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
    with raw.cursor() as cursor, cursor.copy(sql) as copy:
        for row in rows:
            copy.write_row(
                [json.dumps(v) if isinstance(v, dict) else v for v in (row[c] for c in columns)]
            )


def _chunks(items: list[dict[str, Any]], size: int = 20_000) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def seed_into(url: str, log: Any = print) -> dict[str, int]:
    """Migrate an empty database to head, seed the demo, then bulk-insert the rest."""
    from flask_migrate import upgrade

    from portal import clock, create_app
    from portal.demo import seed_demo
    from portal.extensions import db
    from portal.models import Base  # noqa: F401  (every table, for metadata)

    app = create_app(app_config(url))
    started = time.perf_counter()
    with app.app_context():
        upgrade()
        seed_demo(db.session, app.config["SELLER"])
        db.session.commit()
        log(f"  migrated and seeded the demo in {time.perf_counter() - started:.1f} s")
        metadata = db.metadata
        with db.engine.begin() as conn:
            prices = {
                currency: int(price_id)
                for currency, price_id in conn.execute(
                    sa.text(
                        "SELECT p.currency, p.id FROM prices p JOIN plans pl ON pl.id = p.plan_id"
                        " WHERE pl.code = 'team'"
                    )
                )
            }
            rows = generate(conn, app.config["SELLER"], prices, clock.now())
            log(f"  generated rows in {time.perf_counter() - started:.1f} s")
            for table in TABLES:
                _insert(conn, metadata.tables[table], rows[table])
            log(f"  inserted rows in {time.perf_counter() - started:.1f} s")
            # NOTE: ledger.post keeps account_balances equal to the ledger's sums; the bulk rows
            # bypass it, so the balances are recomputed from the ledger (the demo's included).
            conn.execute(sa.text("DELETE FROM account_balances"))
            conn.execute(
                sa.text(
                    "INSERT INTO account_balances (account_id, currency, balance_minor)"
                    " SELECT account_id, currency, sum(amount_minor) FROM ledger_entries"
                    " GROUP BY account_id, currency"
                )
            )
            if conn.dialect.name == "postgresql":
                for table in TABLES:
                    conn.execute(
                        sa.text(
                            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                            f" (SELECT max(id) FROM {table}))"
                        )
                    )
        counts = {table: len(rows[table]) for table in TABLES}
        _analyze(db.engine)
        db.engine.dispose()
    log(f"  seeded in {time.perf_counter() - started:.1f} s")
    return counts


def _analyze(engine: sa.Engine) -> None:
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
    else:
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")


def app_config(url: str, **overrides: Any) -> dict[str, Any]:
    config = {
        "SQLALCHEMY_DATABASE_URI": url,
        "SECRET_KEY": SECRET_KEY,
        "SECRET_KEY_FALLBACKS": [],
        "SECRET_KEYS": [SECRET_KEY],
    }
    config.update(overrides)
    return config


# --- SQLite: a cached file, copied for each run -----------------------------------------------


def sqlite_database(log: Any = print) -> tuple[str, dict[str, int] | None]:
    """A fresh copy of the seeded SQLite file (seeding it first when the cache is stale)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    cached = RESULTS / f"seed-{fingerprint()}.sqlite3"
    counts = None
    if not cached.exists():
        for old in RESULTS.glob("seed-*.sqlite3*"):
            old.unlink()
        building = RESULTS / "seed-building.sqlite3"
        for stale in RESULTS.glob("seed-building.sqlite3*"):
            stale.unlink()
        log(f"seeding SQLite into {building.name} (cached afterwards as {cached.name})")
        counts = seed_into(f"sqlite:///{building}", log)
        _close_sqlite(building)
        building.rename(cached)
    else:
        log(f"SQLite: using the cached seed {cached.name}")
    run = RESULTS / "run.sqlite3"
    for old in RESULTS.glob("run.sqlite3*"):
        old.unlink()
    shutil.copyfile(cached, run)
    return f"sqlite:///{run}", counts


def _close_sqlite(path: Path) -> None:
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.execute("PRAGMA journal_mode = DELETE")
    connection.close()


# --- PostgreSQL: a cached template database, cloned for each run ------------------------------

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PG_SEED_DB = "bench_seed"
PG_RUN_DB = "bench_run"


def postgres_database(admin_url: str, log: Any = print) -> tuple[str, dict[str, int] | None]:
    """A clone of the seeded template database (seeding it first when the cache is stale)."""
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    base = sa.engine.make_url(admin_url)
    wanted = fingerprint()
    counts = None
    try:
        with admin.connect() as conn:
            comment = conn.execute(
                sa.text(
                    "SELECT shobj_description(oid, 'pg_database') FROM pg_database"
                    " WHERE datname = :name"
                ),
                {"name": PG_SEED_DB},
            ).scalar()
            if comment != wanted:
                log(f"seeding PostgreSQL into database {PG_SEED_DB} (kept as a template)")
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS {PG_SEED_DB} WITH (FORCE)"))
                conn.execute(sa.text(f"CREATE DATABASE {PG_SEED_DB}"))
                seed_url = base.set(database=PG_SEED_DB).render_as_string(hide_password=False)
                counts = seed_into(seed_url, log)
                conn.execute(sa.text(f"COMMENT ON DATABASE {PG_SEED_DB} IS '{wanted}'"))
            else:
                log(f"PostgreSQL: using the cached template database {PG_SEED_DB}")
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {PG_RUN_DB} WITH (FORCE)"))
            conn.execute(sa.text(f"CREATE DATABASE {PG_RUN_DB} TEMPLATE {PG_SEED_DB}"))
    finally:
        admin.dispose()
    return base.set(database=PG_RUN_DB).render_as_string(hide_password=False), counts


def drop_postgres_run(admin_url: str) -> None:
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {PG_RUN_DB} WITH (FORCE)"))
    finally:
        admin.dispose()


def dataset_counts(url: str) -> dict[str, int]:
    """Row counts of the seeded database (what the report states about the dataset)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            counts = {
                t: int(conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar() or 0)
                for t in ("accounts", "invoices", "invoice_lines", "payments", "ledger_entries")
            }
            for label, prefix in (("big", BIG_PREFIX), ("small", SMALL_PREFIX)):
                counts[f"{label}_invoices"] = int(
                    conn.execute(
                        sa.text(
                            "SELECT count(*) FROM invoices i JOIN accounts a ON a.id = i.account_id"
                            " WHERE a.invoice_prefix = :p"
                        ),
                        {"p": prefix},
                    ).scalar()
                    or 0
                )
    finally:
        engine.dispose()
    return counts
