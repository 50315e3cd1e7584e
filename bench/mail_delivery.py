"""Mail delivery benchmark (issue 12; by hand, and `bench_part` for `make bench`):

    .venv/bin/python -m bench.mail_delivery [--emails 2000] [--logins 100] [--backend both]

1. Outbox delivery rate: EMAILS rows are written to the outbox, then one or two real worker
   processes (`flask --app wsgi portal worker --workers 1`) deliver them over SMTP to a local
   aiosmtpd server; emails per second from the first enqueued job to the last row marked sent.
2. Sign-in latency: with gunicorn and one worker running, LOGINS sign-in links are asked for with
   `POST /login` (one at a time, each for another user); the time until the message is at the
   SMTP server, p50 and p99.

Prints a Markdown section for BENCHMARKS.md (with the load average: the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import TICKS, process_ticks  # noqa: E402

PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Smtp:
    """aiosmtpd in this process: counts messages and notes when each address's arrived."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.count = 0
        self.arrived: dict[str, float] = {}
        self.lock = threading.Lock()
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.monotonic()
        with self.lock:
            self.count += 1
            for rcpt in envelope.rcpt_tos:
                self.arrived.setdefault(rcpt.lower(), now)
        return "250 OK"


@contextmanager
def database(backend: str, folder: Path) -> Iterator[str]:
    """A migrated database of its own (a SQLite file or a PostgreSQL schema)."""
    from portal import create_app
    from portal.extensions import db

    folder.mkdir(parents=True, exist_ok=True)
    if backend == "sqlite":
        url = f"sqlite:///{folder / 'bench-mail.sqlite3'}"
    else:
        schema = f"bench_mail_{os.getpid()}"
        engine = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        engine.dispose()
        url = (
            sa.engine.make_url(PG_URL)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "TESTING": True, "SECRET_KEY": "bench"})
    with app.app_context():
        from flask_migrate import upgrade

        upgrade()
        db.engine.dispose()
    try:
        yield url
    finally:
        if backend != "sqlite":
            engine = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            engine.dispose()


def environment(url: str, smtp: Smtp, queue: str, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "SECRET_KEY": "bench-secret-key",
        "MAIL_SERVER": "127.0.0.1",
        "MAIL_PORT": str(smtp.port),
        "JOB_QUEUE_URL": queue,
        "STRIPE_API_BASE": "http://127.0.0.1:9",
        **extra,
    }
    for name in ("billing_run", "reminders", "card_retries", "reconcile", "pdf_prerender", "purge"):
        env[f"WORKER_SCHEDULE_{name.upper()}"] = "off"
    return env


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise SystemExit(f"timed out: {what}")


WORKER = [sys.executable, "-m", "flask", "--app", "wsgi", "portal", "worker", "--workers", "1"]


def fill_outbox(url: str, n: int) -> None:
    engine = sa.create_engine(url)
    now = datetime.now(UTC).replace(tzinfo=None)
    rows = [
        {
            "mid": f"<bench-{i}-{secrets.token_hex(6)}@example.com>",
            "to": f"reader{i}@example.com",
            "subject": f"Invoice {i} is ready",
            "text": "Your invoice is ready.\n" * 20,
            "html": "<p>Your invoice is ready.</p>" * 20,
            "now": now,
        }
        for i in range(n)
    ]
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO outbox_emails (message_id, to_address, subject, text_body, html_body, "
                "template, status, attempts, next_attempt_at, last_error, created_at, "
                "is_essential) VALUES (:mid, :to, :subject, :text, :html, 'bench', 'pending', 0, "
                ":now, '', :now, true)"
            ),
            rows,
        )
    engine.dispose()


def unsent(url: str) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        left = conn.execute(
            sa.text("SELECT count(*) FROM outbox_emails WHERE status <> 'sent'")
        ).scalar_one()
    engine.dispose()
    return int(left)


def _tagged(url: str, name: str) -> str:
    """The URL with an application_name on PostgreSQL, so its backends can be found."""
    if not url.startswith("postgresql"):
        return url
    return (
        sa.engine.make_url(url)
        .update_query_dict({"application_name": name})
        .render_as_string(hide_password=False)
    )


def backend_seconds(url: str, name: str) -> float:
    """CPU seconds so far of the PostgreSQL backends serving connections tagged `name`."""
    if not url.startswith("postgresql"):
        return 0.0
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        pids = conn.execute(
            sa.text("SELECT pid FROM pg_stat_activity WHERE application_name = :name"),
            {"name": name},
        ).scalars()
        total = sum(process_ticks(int(pid)) for pid in pids)
    engine.dispose()
    return total / TICKS


def delivery_rate(backend: str, emails: int, workers: int, folder: Path) -> dict[str, Any]:
    from flask import Flask

    from portal.worker import Jobs, make_huey

    smtp = Smtp()
    smtp.controller.start()
    queue = f"sqlite:///{folder / f'huey-{backend}-{workers}.sqlite3'}"
    log = folder / f"workers-{backend}-{workers}.log"
    tag = f"bench_mail_{os.getpid()}_{workers}"
    try:
        with database(backend, folder / f"{backend}-{workers}") as url:
            env = environment(_tagged(url, tag), smtp, queue)
            processes = [start(WORKER, env, log) for _ in range(workers)]
            try:
                wait_for(lambda: log.read_text().count("worker started") >= workers, 60, "workers")
                time.sleep(1.0)  # the start-up sweeps are done
                fill_outbox(url, emails)
                app = Flask("bench")
                app.config.update(BASE_URL="http://127.0.0.1")
                jobs = Jobs(app, make_huey(queue))
                load_before = os.getloadavg()
                cpu_before = sum(process_ticks(p.pid) for p in processes) / TICKS
                pg_before = backend_seconds(url, tag)
                began = time.monotonic()
                for _ in range(workers):
                    jobs.deliver_outbox(None)
                wait_for(lambda: unsent(url) == 0, 600, "every email sent")
                took = time.monotonic() - began
                cpu = sum(process_ticks(p.pid) for p in processes) / TICKS - cpu_before
                pg = backend_seconds(url, tag) - pg_before
                load_after = os.getloadavg()
            finally:
                for process in processes:
                    stop(process)
    finally:
        smtp.controller.stop()
    return {
        "backend": backend,
        "workers": workers,
        "emails": emails,
        "seconds": took,
        "rate": emails / took,
        "received": smtp.count,
        "cpu_ms": 1000 * cpu / emails,
        "pg_ms": 1000 * pg / emails if backend != "sqlite" else None,
        "load_before": load_before,
        "load_after": load_after,
    }


def make_users(url: str, n: int) -> list[str]:
    from portal import create_app
    from portal.accounts.models import Account, Membership, User
    from portal.extensions import db

    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "TESTING": True, "SECRET_KEY": "bench"})
    emails = [f"signin{i}@example.com" for i in range(n)]
    with app.app_context():
        for i, email in enumerate(emails):
            account = Account(
                name=f"Reader {i}", billing_email=email, currency="USD", invoice_prefix=f"BM{i}"
            )
            user = User(email=email, name=f"Reader {i}")
            db.session.add_all([account, user])
            db.session.flush()
            db.session.add(Membership(user_id=user.id, account_id=account.id, role="owner"))
        db.session.commit()
        db.engine.dispose()
    return emails


def signin_latency(backend: str, logins: int, folder: Path) -> dict[str, Any]:
    smtp = Smtp()
    smtp.controller.start()
    port = free_port()
    queue = f"sqlite:///{folder / f'huey-login-{backend}.sqlite3'}"
    log = folder / f"login-{backend}.log"
    samples: list[float] = []
    try:
        with database(backend, folder / f"login-{backend}") as url:
            emails = make_users(url, logins)
            env = environment(
                url,
                smtp,
                queue,
                BASE_URL=f"http://127.0.0.1:{port}",
                LOGIN_IP_RATE_LIMIT="100000 per minute",
            )
            worker = start(WORKER, env, log)
            web = start(
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "--bind",
                    f"127.0.0.1:{port}",
                    "--workers",
                    "1",
                    "--threads",
                    "4",
                    "wsgi:app",
                ],
                env,
                folder / f"gunicorn-{backend}.log",
            )
            try:
                wait_for(lambda: "worker started" in log.read_text(), 60, "the worker")
                base = f"http://127.0.0.1:{port}"

                def up() -> bool:
                    try:
                        return requests.get(f"{base}/healthz", timeout=1).status_code == 200
                    except requests.RequestException:
                        return False

                wait_for(up, 60, "gunicorn")
                time.sleep(1.0)
                for email in emails:
                    browser = requests.Session()
                    page = browser.get(f"{base}/login", timeout=10).text
                    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
                    assert token, "no CSRF token on /login"
                    asked = time.monotonic()
                    answer = browser.post(
                        f"{base}/login",
                        data={"email": email, "csrf_token": token.group(1)},
                        timeout=10,
                    )
                    assert answer.status_code == 200, answer.status_code
                    wait_for(lambda e=email: e in smtp.arrived, 30, f"mail for {email}")
                    samples.append(smtp.arrived[email] - asked)
            finally:
                stop(web)
                stop(worker)
    finally:
        smtp.controller.stop()
    ordered = sorted(samples)
    return {
        "backend": backend,
        "logins": len(samples),
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
        "max": ordered[-1],
    }


def _load(values: tuple[float, float, float]) -> str:
    return " / ".join(f"{x:.2f}" for x in values)


def measure(
    emails: int, logins: int, backends: list[str], log: Callable[..., None] = print
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rates, latencies = [], []
    with tempfile.TemporaryDirectory(prefix="bench-mail-") as tmp:
        folder = Path(tmp)
        for backend in backends:
            for workers in (1, 2):
                result = delivery_rate(backend, emails, workers, folder)
                log(result)
                if result["received"] != emails:
                    raise SystemExit(f"{backend}: {result['received']} of {emails} arrived")
                rates.append(result)
            result = signin_latency(backend, logins, folder)
            log(result)
            latencies.append(result)
    return rates, latencies


def section(
    rates: list[dict[str, Any]],
    latencies: list[dict[str, Any]],
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> str:
    lines = [
        "## Mail delivery (issue 12, `bench/mail_delivery.py`)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `python -m bench.mail_delivery` on "
        f"this shared 2-core machine: load average {_load(load_before)} at the start, "
        f"{_load(load_after)} at the end. CPU per email: the worker processes' CPU (all their "
        "threads) and, on PostgreSQL, their backends', over the delivery window, divided by the "
        "emails (the benchmark's own SMTP server is not counted).",
        "",
        "| Backend | Worker processes (1 thread each) | Emails | Arrived | Seconds | Emails/s "
        "| Worker CPU ms/email | PG backend CPU ms/email | Load before | Load after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rates:
        pg = f"{r['pg_ms']:.2f}" if r["pg_ms"] is not None else "–"
        lines.append(
            f"| {r['backend']} | {r['workers']} | {r['emails']} | {r['received']} | "
            f"{r['seconds']:.1f} | {r['rate']:.0f} | {r['cpu_ms']:.2f} | {pg} | "
            f"{_load(r['load_before'])} | {_load(r['load_after'])} |"
        )
    lines += [
        "",
        "| Backend | POST /login to SMTP server: samples | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in latencies:
        lines.append(
            f"| {r['backend']} | {r['logins']} | {r['p50'] * 1000:.0f} | {r['p99'] * 1000:.0f} | "
            f"{r['max'] * 1000:.0f} |"
        )
    return "\n".join(lines) + "\n"


def bench_part(quick: bool) -> str:
    """The Markdown section for `make bench` (quick: 100 emails and 10 sign-ins per backend)."""
    emails, logins = (100, 10) if quick else (2000, 100)
    before = os.getloadavg()
    rates, latencies = measure(emails, logins, ["sqlite", "postgresql"], log=lambda *_: None)
    return section(rates, latencies, before, os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=2000)
    parser.add_argument("--logins", type=int, default=100)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args(argv)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    load_before = os.getloadavg()
    rates, latencies = measure(args.emails, args.logins, backends)
    print()
    print(section(rates, latencies, load_before, os.getloadavg()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
