"""Operator commands: `flask --app wsgi portal …` and `flask --app wsgi billing …`."""

from __future__ import annotations

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from sqlalchemy import func, select

from portal.accounts.models import User
from portal.extensions import db

portal_cli = AppGroup("portal", help="Portal administration.")
billing_cli = AppGroup("billing", help="Billing runs, reminders and reconciliation.")


@portal_cli.command("seed-demo")
def seed_demo_command() -> None:
    """Load the demo accounts, users, plans and a year of history (idempotent)."""
    from portal.demo import seed_demo

    created = seed_demo(db.session, current_app.config["SELLER"])
    db.session.commit()
    if not created:
        click.echo("Demo data is already present; nothing changed.")
    for line in created:
        click.echo(f"created {line}")


@portal_cli.command("login-link")
@click.argument("email")
def login_link_command(email: str) -> None:
    """Print a one-time sign-in link for EMAIL."""
    from portal.auth.routes import login_link

    user = db.session.scalar(select(User).where(func.lower(User.email) == email.strip().lower()))
    if user is None or user.is_disabled:
        raise click.ClickException(f"no active user with the email {email}")
    with current_app.test_request_context(base_url=current_app.config["BASE_URL"]):
        link = login_link(user)
    db.session.commit()
    click.echo(link)


@portal_cli.command("send-mail")
@click.option("--loop", is_flag=True, help="Keep delivering until stopped (Ctrl-C).")
@click.option("--interval", default=5.0, show_default=True, help="Seconds between rounds.")
def send_mail_command(loop: bool, interval: float) -> None:  # money-safe: seconds
    """Deliver the email outbox (SMTP, or instance/mail/ without MAIL_SERVER), with retries."""
    import time

    from portal.notifications.delivery import deliver_due

    while True:
        report = deliver_due(db.session, current_app.config)
        db.session.remove()
        if report.sent or report.failed or not loop:
            click.echo(f"sent {report.sent}, will retry {report.failed}")
        if not loop:
            return
        try:
            time.sleep(interval)
        except KeyboardInterrupt:
            return


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
    refuses real Stripe)."""
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
def reconcile_command(min_age_minutes: int) -> None:
    """Settle payments left unknown or processing, record lost webhooks, report mismatches."""
    from datetime import timedelta

    from portal.payments.gateway import gateway
    from portal.payments.reconcile import reconcile

    report = reconcile(
        db.session,
        gateway(),
        commit=db.session.commit,
        min_age=timedelta(minutes=min_age_minutes),
    )
    for line in report.lines():
        click.echo(line)


def init_app(app: Flask) -> None:
    app.cli.add_command(portal_cli)
    app.cli.add_command(billing_cli)
