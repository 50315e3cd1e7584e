"""Operator commands: `flask --app wsgi portal …` and `flask --app wsgi billing …`."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from flask_babel import gettext as _
from sqlalchemy import func, select

from portal.accounts.models import User
from portal.extensions import db

if TYPE_CHECKING:
    from portal.subscriptions.billing_run import BillingRunSummary

portal_cli = AppGroup("portal", help="Portal administration.")
billing_cli = AppGroup("billing", help="Billing runs, reminders and reconciliation.")


@portal_cli.command("seed-demo")
def seed_demo_command() -> None:
    """Load the demo accounts, users, plans and a year of history (idempotent). When
    STRIPE_API_BASE names a Stripe simulator, the demo's saved card is made real there too."""
    from portal.db import begin_write
    from portal.demo import seed_demo
    from portal.payments.demo_sync import simulator_configured

    # NOTE: seeding reads what exists, then writes; `make demo` runs the worker (which writes)
    # at the same time. Beginning as a writer waits for its lock instead of failing on SQLite.
    begin_write(db.session)
    created = seed_demo(db.session, current_app.config["SELLER"])
    db.session.commit()
    if not created:
        click.echo(_("Demo data is already present; nothing changed."))
    for line in created:
        click.echo(_("created %(what)s", what=line))
    if not simulator_configured(current_app.config):
        # NOTE: never against Stripe itself: its card would be a real customer's test object.
        click.echo(
            _(
                "STRIPE_API_BASE is Stripe's own (%(base)s): the demo's saved card stays a "
                "placeholder until `portal sync-demo-stripe` runs against a Stripe simulator.",
                base=current_app.config["STRIPE_API_BASE"],
            )
        )
        return
    # NOTE: the data above is committed first, so an unreachable simulator leaves it in place
    # and `portal sync-demo-stripe` (or seeding again) finishes the job later.
    _sync_demo_stripe()


@portal_cli.command("login-link")
@click.argument("email")
def login_link_command(email: str) -> None:
    """Print a one-time sign-in link for EMAIL."""
    from portal.auth.routes import login_link
    from portal.db import begin_write, commit

    # NOTE: this command reads, then writes: on SQLite its transaction takes the write lock up
    # front, so it waits for another writer instead of failing with "database is locked".
    begin_write(db.session)
    user = db.session.scalar(select(User).where(func.lower(User.email) == email.strip().lower()))
    if user is None or user.is_disabled:
        raise click.ClickException(f"no active user with the email {email}")
    with current_app.test_request_context(base_url=current_app.config["BASE_URL"]):
        link = login_link(user)
    commit(db.session)
    click.echo(link)


@portal_cli.command("send-mail")
@click.option("--loop", is_flag=True, help="Keep delivering until stopped (Ctrl-C).")
@click.option(
    "--interval",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds between rounds with --loop.",
)
def send_mail_command(loop: bool, interval: float) -> None:  # money-safe: seconds
    """Deliver the email outbox (SMTP, or instance/mail/ without MAIL_SERVER), with retries."""
    import time

    from sqlalchemy.exc import SQLAlchemyError

    from portal.notifications.delivery import deliver_due

    config = current_app.config
    announced = False
    while True:
        try:
            report = deliver_due(db.session, config)
        except SQLAlchemyError as error:
            if not loop:
                raise
            # NOTE: a busy or briefly unreachable database must not end the loop: the rows
            # stay due and the next round delivers them.
            click.echo(
                _("outbox delivery failed (%(error)s); retrying", error=type(error).__name__),
                err=True,
            )
            report = None
        finally:
            db.session.remove()
        if report is not None and (report.sent or report.failed or not loop):
            click.echo(
                _("sent %(sent)s, will retry %(failed)s", sent=report.sent, failed=report.failed)
            )
        if not loop:
            return
        if not announced and report is not None:
            # NOTE: said once, after a first round went through: `make demo` waits for it.
            if config.get("MAIL_SERVER"):
                target = f"{config['MAIL_SERVER']}:{config['MAIL_PORT']}"
            else:
                target = str(config["MAIL_DIR"])
            click.echo(
                _(
                    "delivering the outbox every %(seconds)s s to %(target)s (Ctrl-C stops)",
                    seconds=f"{interval:g}",
                    target=target,
                )
            )
            announced = True
        try:
            time.sleep(interval)
        except KeyboardInterrupt:
            return


@portal_cli.command("worker")
@click.option(
    "--workers",
    default=2,
    show_default=True,
    type=click.IntRange(min=1, max=64),
    help="Worker threads in this process (run more processes, on more machines, for more).",
)
def worker_command(workers: int) -> None:
    """Run every background job: mail, billing run, reminders, card retries, reconcile, PDF
    pre-rendering and clean-up (on the job queue of JOB_QUEUE_URL; Ctrl-C stops)."""
    import logging

    from portal.worker import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run_worker(
        current_app._get_current_object(),  # type: ignore[attr-defined]
        workers=workers,
        announce=lambda line: click.echo(line, err=False),
    )


@portal_cli.command("create-staff")
@click.argument("email")
@click.option("--role", type=click.Choice(["support", "admin"]), required=True)
@click.option("--name", default="", help="The staff member's name.")
def create_staff_command(email: str, role: str, name: str) -> None:
    """Create a staff user (or change an existing user's staff role)."""
    from portal.db import commit
    from portal.errors import ValidationFailed
    from portal.staff.services import set_staff_role

    try:
        user, created = set_staff_role(db.session, email, role, name)
    except ValidationFailed as error:
        raise click.ClickException(error.message) from error
    address = user.email
    commit(db.session)
    verb = "created" if created else "updated"
    click.echo(f"{verb} {role} {address}; two-factor setup starts at the first sign-in")


@portal_cli.command("sync-demo-stripe")
def sync_demo_stripe_command() -> None:
    """Give the demo accounts real customers and cards in the Stripe simulator (idempotent;
    refuses real Stripe). `portal seed-demo` does this by itself when a simulator is set."""
    _sync_demo_stripe()


def _sync_demo_stripe() -> None:
    from portal.errors import DomainError, ServiceUnavailable
    from portal.payments.demo_sync import RealStripeRefused, sync_demo_stripe
    from portal.payments.gateway import gateway

    try:
        report = sync_demo_stripe(
            db.session, gateway(), current_app.config, commit=db.session.commit
        )
    except RealStripeRefused as refused:
        raise click.ClickException(str(refused)) from refused
    except DomainError as error:
        base = current_app.config["STRIPE_API_BASE"]
        said = "" if isinstance(error, ServiceUnavailable) else f" ({error.message})"
        raise click.ClickException(
            f"{error.title} at {base}{said}. Is the simulator running there? "
            "`make demo` starts it and sets STRIPE_API_BASE."
        ) from error
    for line in report.lines():
        click.echo(line)


@billing_cli.command("reconcile")
@click.option("--min-age-minutes", default=5, show_default=True, help="Skip younger attempts.")
@click.option(
    "--compare-all",
    is_flag=True,
    help="Also ask Stripe about every payment of the last 30 days (one call each: an audit).",
)
def reconcile_command(min_age_minutes: int, compare_all: bool) -> None:
    """Settle payments left unknown or processing, record lost webhooks, report mismatches."""
    from datetime import timedelta

    from portal.db import commit
    from portal.payments.gateway import gateway
    from portal.payments.reconcile import reconcile

    report = reconcile(
        db.session,
        gateway(),
        commit=lambda: commit(db.session),
        min_age=timedelta(minutes=min_age_minutes),
        compare_all=compare_all,
    )
    for line in report.lines():
        click.echo(line)


# -- dunning (issue 12) --------------------------------------------------------------------------


def _as_of(value: str | None) -> object:
    from datetime import date

    from portal import clock

    if not value:
        return clock.today(current_app.config.get("PORTAL_TIMEZONE", "UTC"))
    try:
        return date.fromisoformat(value)
    except ValueError as error:
        raise click.BadParameter(_("Please give a date as YYYY-MM-DD.")) from error


@billing_cli.command("remind")
@click.option("--as-of", "as_of", default=None, help="The day to remind for (YYYY-MM-DD).")
def remind_command(as_of: str | None) -> None:
    """Send the payment reminders due on a day (and the expiring-card, trial-ending and
    resuming-soon notices); never twice."""
    from portal.notifications.dunning import send_reminders, warn_expiring_cards

    day = _as_of(as_of)
    sent = send_reminders(db.session, day)  # type: ignore[arg-type]
    click.echo(_("%(count)s reminders sent.", count=sent))
    told = warn_expiring_cards(db.session, day)  # type: ignore[arg-type]
    click.echo(_("%(count)s expiring-card notices sent.", count=told))
    from portal.notifications.subscription_notices import warn_resuming_soon, warn_trials_ending

    trials = warn_trials_ending(db.session, day)  # type: ignore[arg-type]
    click.echo(_("%(count)s trial-ending notices sent.", count=trials))
    resuming = warn_resuming_soon(db.session, day)  # type: ignore[arg-type]
    click.echo(_("%(count)s resuming-soon notices sent.", count=resuming))


@billing_cli.command("retry-payments")
@click.option("--as-of", "as_of", default=None, help="The day to retry for (YYYY-MM-DD).")
def retry_payments_command(as_of: str | None) -> None:
    """Retry the failed card payments due on a day (each through the saved-card collection)."""
    from portal.notifications.dunning import retry_failed_payments
    from portal.payments.gateway import gateway

    charged = retry_failed_payments(db.session, _as_of(as_of), gateway())  # type: ignore[arg-type]
    click.echo(_("%(count)s card payments retried.", count=charged))


# --- issue 10: the billing run and one-off invoices (sub-engine) -----------------------------


class _RunProgress:
    """The billing run's terminal progress bar: done / total and the rate, opened on first use."""

    def __init__(self) -> None:
        import time

        self._clock = time.perf_counter
        self._started = self._clock()
        self._bar: Any = None
        self.done = self.total = 0

    def _label(self, _item: object) -> str:
        seconds = max(self._clock() - self._started, 1e-6)  # money-safe: seconds
        return f"{self.done}/{self.total}, {self.done / seconds:.0f}/s"  # money-safe: a rate

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = click.progressbar(
                length=total, label=_("Billing"), item_show_func=self._label, show_eta=True
            )
            self._bar.__enter__()
        self.done, self.total = done, total
        self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


def run_billing_in_processes(
    config: dict[str, Any], as_of: date, processes: int, *, collect: bool
) -> BillingRunSummary:
    """`run_billing` in several processes at once on PostgreSQL: each builds the app from
    `config` (plain values: the database URL, the seller, the gateway's settings, ...) and bills
    what it claims; SKIP LOCKED shares the work, so no subscription is billed twice. The
    summary adds theirs up (each runner's "skipped" counts are its view of the others' share).

    NOTE: processes, not threads: a runner spends most of its time in Python, and one
    interpreter runs one thread of Python at a time. SQLite has one writer: the caller runs
    one runner there.
    """
    import multiprocessing
    import time

    from portal.subscriptions.billing_run import BillingRunSummary

    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        parts = pool.starmap(_billing_part, [(config, as_of, collect)] * processes)
    summary = BillingRunSummary(as_of=as_of)
    for part in parts:
        summary.add(part)
    summary.seconds = time.perf_counter() - started
    return summary


def _billing_part(config: dict[str, Any], as_of: date, collect: bool) -> BillingRunSummary:
    """One process of run_billing_in_processes (module level: the pool pickles it by name)."""
    from portal import create_app
    from portal.subscriptions.billing_run import run_billing

    app = create_app(config)
    with app.app_context():
        gateway = None
        if collect:
            from portal.payments.gateway import gateway as make_gateway

            gateway = make_gateway()
        try:
            return run_billing(db.session, as_of, gateway=gateway, seller=app.config["SELLER"])
        finally:
            db.session.remove()
            db.engine.dispose()


def plain_config(config: Any) -> dict[str, Any]:
    """The settings another process needs to build the same app: the plain values only."""
    plain = (str, int, float, bool, type(None))

    def is_plain(value: Any) -> bool:
        if isinstance(value, plain):
            return True
        if isinstance(value, (list, tuple)):
            return all(is_plain(item) for item in value)
        if isinstance(value, dict):
            return all(isinstance(k, str) and is_plain(v) for k, v in value.items())
        return False

    return {key: value for key, value in config.items() if is_plain(value)}


@billing_cli.command("run")
@click.option(
    "--as-of",
    "as_of",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help="Bill what is due on this day (YYYY-MM-DD, in each account's time zone); default today.",
)
@click.option("--no-collect", is_flag=True, help="Leave new invoices open; charge no card.")
@click.option(
    "--workers",
    type=click.IntRange(1, 16),
    default=1,
    show_default=True,
    help="Runners at once, each its own process (PostgreSQL; SQLite bills with one).",
)
def billing_run_command(as_of, no_collect: bool, workers: int) -> None:  # type: ignore[no-untyped-def]
    """Bill every subscription whose period ended, trial ended or scheduled change is due.
    Running it twice for the same date changes nothing."""
    from portal import clock
    from portal.errors import DomainError
    from portal.subscriptions.billing_run import run_billing

    day = as_of.date() if as_of is not None else clock.today()
    if workers > 1 and db.engine.dialect.name != "postgresql":
        click.echo(_("SQLite has one writer: billing with one runner."))
        workers = 1
    if workers > 1:
        click.echo(_("Billing with %(count)d runners at once…", count=workers))
        try:
            summary = run_billing_in_processes(
                plain_config(current_app.config), day, workers, collect=not no_collect
            )
        except DomainError as error:
            raise click.ClickException(error.message) from error
        for line in summary.lines():
            click.echo(line)
        if summary.failed:
            raise SystemExit(1)
        return
    gw = None
    if not no_collect:
        from portal.payments.gateway import gateway

        gw = gateway()
    progress = _RunProgress()
    try:
        summary = run_billing(
            db.session, day, gateway=gw, progress=progress, seller=current_app.config["SELLER"]
        )
    except DomainError as error:
        raise click.ClickException(error.message) from error
    finally:
        progress.close()
    for line in summary.lines():
        click.echo(line)
    if summary.failed:
        raise SystemExit(1)


@billing_cli.command("invoice-once")
@click.argument("account_ref", metavar="ACCOUNT")
@click.option("--description", required=True, help="What is billed (one line).")
@click.option("--amount", required=True, help="Amount before tax in major units, e.g. 1250.00.")
@click.option("--currency", default=None, help="Must be the account's currency (a check).")
@click.option("--quantity", default=1, show_default=True, type=int)
@click.option("--tax-rate", "tax_rate_ref", default=None, help="A tax rate's id or exact name.")
@click.option("--memo", default="", help="A note printed on the invoice.")
def invoice_once_command(
    account_ref: str,
    description: str,
    amount: str,
    currency: str | None,
    quantity: int,
    tax_rate_ref: str | None,
    memo: str,
) -> None:
    """Bill a one-off line or a project milestone to ACCOUNT (public id, invoice prefix or
    billing email) through the normal finalization."""
    from portal.billing import one_off
    from portal.db import begin_write, commit
    from portal.errors import DomainError

    try:
        begin_write(db.session)
        account = one_off.find_account(db.session, account_ref)
        if currency is not None and currency.strip().upper() != account.currency:
            raise click.ClickException(
                f"{account.name} is billed in {account.currency}, not {currency.strip().upper()}"
            )
        money = one_off.parse_amount(amount, account.currency)
        rate = one_off.find_tax_rate(db.session, tax_rate_ref, account) if tax_rate_ref else None
        invoice = one_off.invoice_once(
            db.session,
            account,
            description=description,
            amount=money,
            quantity=quantity,
            tax_rate=rate,
            memo=memo,
            seller=current_app.config["SELLER"],
        )
        number, total, code = invoice.number, invoice.total, invoice.currency
        commit(db.session)
    except DomainError as error:
        db.session.rollback()
        raise click.ClickException(error.message) from error
    except click.ClickException:
        db.session.rollback()
        raise
    click.echo(f"issued invoice {number} for {total.to_decimal()} {code}")


def init_app(app: Flask) -> None:
    app.cli.add_command(portal_cli)
    app.cli.add_command(billing_cli)
