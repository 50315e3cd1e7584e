"""The background worker: one Huey queue runs every job the portal has (`flask --app wsgi portal
worker`).

Why Huey: it has both storages the portal runs on, SQLite for the embedded default (a file beside
the database, nothing to install or start) and Redis in production, and it brings periodic tasks,
retries, task locks and several consumers on several machines in one small dependency.
procrastinate needs PostgreSQL, RQ needs Redis even for the demo, Celery is far more than this.

The queue only says "there is work"; the database stays the source of truth. Outbox rows are
written in the transaction that causes them, and after commit a delivery job is enqueued for
them (`portal.mail.queue_email`), so a sign-in link leaves within a second; a periodic sweep
delivers whatever a lost job, an unreachable queue or a killed worker left behind. Every job
calls the same idempotent function its CLI command calls, so running one twice changes nothing.

Settings (all optional):
- `JOB_QUEUE_URL`: `redis://…` for Redis, `sqlite:///path` for a SQLite file, `memory://` for an
  in-process queue (what tests use); unset = `huey.sqlite3` beside the SQLite database (or in
  the instance folder when the database is PostgreSQL).
- `WORKER_SCHEDULE_<JOB>`: a cron line (minute hour day month weekday, in UTC) per periodic job,
  or `off`; see SCHEDULES for the jobs and their defaults.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from flask import Flask, current_app
from huey import Huey, MemoryHuey, RedisHuey, SqliteHuey, crontab

from portal.mail import DELIVER_SOON

log = logging.getLogger(__name__)

EXTENSION = "portal.jobs"

# The periodic jobs and their default schedules (cron lines in UTC). An operator changes one with
# WORKER_SCHEDULE_<NAME> (e.g. WORKER_SCHEDULE_BILLING_RUN="30 1 * * *"), or turns it off.
SCHEDULES: dict[str, str] = {
    "outbox_sweep": "* * * * *",  # every minute: anything a lost delivery job left behind
    "billing_run": "10 * * * *",  # hourly: subscriptions whose period has ended
    "reminders": "0 8 * * *",  # daily: payment reminders before and after the due date
    "card_retries": "0 9 * * *",  # daily: scheduled retries of failed card payments
    "reconcile": "*/10 * * * *",  # every 10 minutes: attempts left unknown, lost webhooks
    "pdf_prerender": "*/15 * * * *",  # finalized invoices without a stored PDF
    "purge": "30 3 * * *",  # daily: ended sessions and expired sign-in links
}

# How long a periodic job's lock lives: a worker killed mid-job frees it after this.
LOCK_TTL_SECONDS = 3600
STAMP = "%Y%m%dT%H%M%S"  # sortable as text


def schedule_for(config: Any, name: str) -> str | None:
    """The cron line of a periodic job from configuration; None when it is turned off."""
    key = f"WORKER_SCHEDULE_{name.upper()}"
    raw = str(config.get(key) or os.environ.get(key) or SCHEDULES[name]).strip()
    return None if raw.lower() in {"off", "none", "never", ""} else raw


def parse_cron(line: str) -> Callable[[Any], bool]:
    """Huey's crontab from a five-field cron line; a malformed line is refused at start."""
    fields = line.split()
    if len(fields) != 5:
        raise ValueError(f"a schedule needs five fields (minute hour day month weekday): {line!r}")
    minute, hour, day, month, weekday = fields
    return crontab(minute=minute, hour=hour, day=day, month=month, day_of_week=weekday)


def queue_url(app: Flask) -> str:
    """Where the queue lives (see the module docstring)."""
    url = str(app.config.get("JOB_QUEUE_URL") or os.environ.get("JOB_QUEUE_URL") or "").strip()
    if url:
        return url
    if app.testing:
        return "memory://"
    database = str(app.config.get("SQLALCHEMY_DATABASE_URI", ""))
    if database.startswith("sqlite:///") and len(database) > len("sqlite:///"):
        folder = Path(database[len("sqlite:///") :].split("?", 1)[0]).parent
    else:
        folder = Path(app.instance_path)
    return f"sqlite:///{folder / 'huey.sqlite3'}"


def make_huey(url: str) -> Huey:
    """The Huey instance for a queue URL (results are not kept: the database holds outcomes)."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        # NOTE: short timeouts: an unreachable Redis must not hold a request that enqueues.
        from redis import ConnectionPool

        pool = ConnectionPool.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        return RedisHuey("portal", connection_pool=pool, results=False)
    if url.startswith("memory://"):
        return MemoryHuey("portal", results=False)
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteHuey("portal", filename=str(path), results=False, timeout=10)
    raise ValueError(f"JOB_QUEUE_URL must be redis://…, sqlite:///… or memory://, not {url!r}")


class Jobs:
    """The app's queue and its tasks. `jobs(app).deliver_outbox([ids])` enqueues a job."""

    def __init__(self, app: Flask, huey: Huey) -> None:
        self.app = app
        self.huey = huey
        task = huey.task
        self.deliver_outbox = task(name="deliver_outbox")(self._deliver_outbox)
        self.billing_run = task(name="billing_run", retries=2, retry_delay=300)(self._billing_run)
        self.reminders = task(name="reminders", retries=2, retry_delay=300)(self._reminders)
        self.card_retries = task(name="card_retries", retries=2, retry_delay=300)(
            self._card_retries
        )
        self.reconcile = task(name="reconcile", retries=1, retry_delay=120)(self._reconcile)
        self.pdf_prerender = task(name="pdf_prerender")(self._pdf_prerender)
        self.purge = task(name="purge")(self._purge)
        self.periodic: dict[str, Any] = {}
        jobs = {
            "outbox_sweep": self._outbox_sweep,
            "billing_run": self._billing_run,
            "reminders": self._reminders,
            "card_retries": self._card_retries,
            "reconcile": self._reconcile,
            "pdf_prerender": self._pdf_prerender,
            "purge": self._purge,
        }
        for name, function in jobs.items():
            line = schedule_for(app.config, name)
            if line is None:
                continue
            self.periodic[name] = huey.periodic_task(parse_cron(line), name=f"every_{name}")(
                self._once_per_tick(name, function)
            )

    # -- plumbing ----------------------------------------------------------------------------

    @contextmanager
    def _unit_of_work(self) -> Iterator[Any]:
        """An app context with a request context for url_for/gettext, and a clean session."""
        from portal.extensions import db

        # NOTE: a request context (it brings its own app context) built from BASE_URL, as the
        # CLI's login-link does: links in emails and PDFs never come from a Host header.
        with self.app.test_request_context(base_url=self.app.config["BASE_URL"]):
            try:
                yield db.session
            finally:
                db.session.remove()

    @contextmanager
    def _exclusive(self, name: str) -> Iterator[bool]:
        """True when this worker holds the job's lease (another worker runs it otherwise). A
        worker killed mid-job leaves a lease that runs out after LOCK_TTL_SECONDS."""
        from portal.clock import now

        key = f"worker.lock.{name}"
        until = (now() + timedelta(seconds=LOCK_TTL_SECONDS)).strftime(STAMP)
        if not self._advance(key, until, below=now().strftime(STAMP)):
            log.info("job %s is already running on another worker; skipped", name)
            yield False
            return
        try:
            yield True
        finally:
            self._advance(key, "", below="~")  # released ("" is below every stamp)

    def _once_per_tick(self, name: str, function: Callable[[], Any]) -> Callable[[], Any]:
        """Each worker's scheduler enqueues the periodic jobs; with several workers the first to
        run a job for a given minute runs it, the others see its mark and do nothing."""

        def run() -> Any:
            from portal.clock import now

            tick = now().strftime(STAMP)[:13]  # to the minute
            if not self._advance(f"worker.tick.{name}", tick, below=tick):
                log.info("periodic job %s already ran for %s on another worker", name, tick)
                return None
            return function()

        run.__name__ = function.__name__
        return run

    def _advance(self, name: str, value: str, *, below: str) -> bool:
        """Set the sync cursor `name` to `value` if it is missing or holds less than `below`, in
        one short transaction of its own; True when this call did it (an atomic compare-and-set
        in the portal's database, which every worker shares whatever the queue's storage)."""
        from sqlalchemy import insert, update
        from sqlalchemy.exc import IntegrityError

        from portal.clock import now
        from portal.extensions import db
        from portal.notifications.models import SyncCursor

        table = SyncCursor.__table__
        with self.app.app_context():
            engine = db.engine
            connection = engine.connect().execution_options(sqlite_begin="IMMEDIATE")
            with connection as conn, conn.begin():
                changed = conn.execute(
                    update(table)
                    .where(table.c.name == name, table.c.value < below)
                    .values(value=value, updated_at=now())
                ).rowcount
                if changed:
                    return True
                try:
                    with conn.begin_nested():
                        conn.execute(insert(table).values(name=name, value=value, updated_at=now()))
                except IntegrityError:
                    return False  # NOTE: the row exists and holds `below` or more
                return True

    def _as_of(self) -> date:
        from portal.clock import today

        return today(self.app.config.get("PORTAL_TIMEZONE", "UTC"))

    # -- the jobs -----------------------------------------------------------------------------

    def _deliver_outbox(self, ids: Sequence[int] | None = None) -> int:
        if ids is not None and not ids:
            return 0  # a rehearsal's job (see portal.mail.rehearse_delivery)
        from portal.notifications.delivery import deliver_due

        with self._unit_of_work() as session:
            report = deliver_due(session, self.app.config, ids=ids)
        return report.sent

    def _outbox_sweep(self) -> int:
        return self._deliver_outbox(None)

    def _billing_run(self) -> None:
        from portal.payments.gateway import gateway
        from portal.subscriptions.billing_run import run_billing

        with self._exclusive("billing_run") as mine, self._unit_of_work() as session:
            if mine:
                summary = run_billing(session, self._as_of(), gateway=gateway())
                log.info("billing run: %s", summary)

    def _reminders(self) -> None:
        from portal.notifications.dunning import send_reminders, warn_expiring_cards
        from portal.notifications.subscription_notices import (
            warn_resuming_soon,
            warn_trials_ending,
        )

        with self._exclusive("reminders") as mine, self._unit_of_work() as session:
            if mine:
                day = self._as_of()
                log.info("reminders sent: %s", send_reminders(session, day))
                log.info("expiring-card notices: %s", warn_expiring_cards(session, day))
                log.info("trial-ending notices: %s", warn_trials_ending(session, day))
                log.info("resuming-soon notices: %s", warn_resuming_soon(session, day))

    def _card_retries(self) -> None:
        from portal.notifications.dunning import retry_failed_payments
        from portal.payments.gateway import gateway

        with self._exclusive("card_retries") as mine, self._unit_of_work() as session:
            if mine:
                done = retry_failed_payments(session, self._as_of(), gateway())
                log.info("card retries made: %s", done)

    def _reconcile(self) -> None:
        from portal.db import commit
        from portal.payments.gateway import gateway
        from portal.payments.reconcile import reconcile

        with self._exclusive("reconcile") as mine, self._unit_of_work() as session:
            if mine:
                report = reconcile(session, gateway(), commit=lambda: commit(session))
                for line in report.lines():
                    log.info("reconcile: %s", line)

    def _pdf_prerender(self) -> int:
        from portal.billing.prerender import prerender_invoice_pdfs

        with self._exclusive("pdf_prerender") as mine, self._unit_of_work() as session:
            return prerender_invoice_pdfs(session) if mine else 0

    def _purge(self) -> int:
        from portal.auth.purge import purge_ended_sessions_and_tokens

        with self._exclusive("purge") as mine, self._unit_of_work() as session:
            return purge_ended_sessions_and_tokens(session) if mine else 0

    # -- enqueueing ----------------------------------------------------------------------------

    def enqueue_delivery(self, ids: Sequence[int] | None) -> bool:
        """Ask a worker to deliver these outbox rows now; False when the queue is unreachable
        (nothing is lost: the rows are in the outbox and the sweep sends them)."""
        try:
            # NOTE: None asks for a sweep; a list (even empty) only for those rows.
            self.deliver_outbox(None if ids is None else list(ids))
        except Exception as error:  # noqa: BLE001 - any queue failure: the sweep delivers later
            log.warning("job queue unreachable (%s); the outbox sweep will deliver", error)
            return False
        return True


def init_app(app: Flask) -> None:
    """Give portal.mail the way to ask for a delivery after commit (the queue is made on first
    use: a web process that queues no mail never opens it)."""
    app.extensions[DELIVER_SOON] = lambda ids: jobs(app).enqueue_delivery(ids)


def jobs(app: Flask | None = None) -> Jobs:
    """The app's Jobs, made on first use (the web process only enqueues; the worker runs them)."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    found = app.extensions.get(EXTENSION)
    if found is None:
        found = app.extensions[EXTENSION] = Jobs(app, make_huey(queue_url(app)))
    return found  # type: ignore[no-any-return]


def run_worker(app: Flask, *, workers: int, announce: Callable[[str], None]) -> None:
    """Run the consumer until SIGINT/SIGTERM: every job, and the periodic ones on schedule."""
    queue = jobs(app)
    consumer = queue.huey.create_consumer(
        workers=workers,
        worker_type="thread",
        periodic=True,
        # NOTE: the SQLite storage is polled; at most half a second between looks keeps a
        # sign-in link's way out under a second (Redis storage blocks and answers at once).
        initial_delay=0.05,
        backoff=1.15,
        max_delay=0.5,
        check_worker_health=True,
    )
    # NOTE: what a killed worker left claimed or undelivered goes out as soon as one starts.
    queue.enqueue_delivery(None)
    where = queue_url(app)
    announce(
        f"worker started: {workers} threads on {redact(where)}; periodic jobs: "
        + ", ".join(f"{name} ({schedule_for(app.config, name)})" for name in queue.periodic)
    )
    consumer.run()


def redact(url: str) -> str:
    """A queue URL without its password, for logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://…@{rest.rsplit('@', 1)[1]}"
    return url
