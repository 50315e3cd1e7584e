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
